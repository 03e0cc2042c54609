"""Convolution layers on pylops-mpi: a layer split over MPI ranks.

- :func:`Conv2D` (and :func:`ConvND`): one constructor, five splits of a
  layer, each a ``pylops_mpi`` operator on ``DistributedArray`` s:
  ``"out_channels"`` (an ``MPIVStack`` of row blocks), ``"in_channels"``
  (an ``MPIHStack`` of column blocks) and ``"batch"`` (an ``MPIBlockDiag``
  of the same layer on each rank's images), ``"rows"`` (blocks of image
  rows, with a halo exchange of the padding rows) and ``"tiles"`` (the same
  on a 2-D grid of ranks, halos along both axes).
- :func:`distribute` and :func:`gather`: arrays to and from the layout a
  split expects.
- :func:`circular_singular_values`: a periodic layer's whole spectrum, the
  frequencies split over the ranks; :func:`replicated`: a serial view of a
  distributed layer, so that ``structops.opnorm(replicated(op))`` is the
  certified sigma_max with the products split.
- :func:`data_parallel` and :func:`minimize`: training with the batch split
  over the ranks, losses and gradients all-reduced (the local objectives
  :func:`layer_least_squares`, :func:`kernel_least_squares` and, for the
  extended layer's per-pixel weights, :func:`extended_least_squares`), and
  variable projection with the rows
  split, :func:`varpro` (:func:`varpro_objective`).

mpi4py and pylops-mpi are the optional ``[mpi]`` extra, imported only when a
distributed operator is built.
"""

from .layers import ConvND, Conv2D, distribute, gather, local_slice
from .spectra import circular_singular_values, replicated
from .training import (data_parallel, extended_least_squares, kernel_least_squares, layer_least_squares, minimize,
                       varpro, varpro_objective)

__all__ = ["ConvND", "Conv2D", "distribute", "gather", "local_slice", "circular_singular_values", "replicated",
           "data_parallel", "minimize", "layer_least_squares", "kernel_least_squares",
           "extended_least_squares", "varpro_objective", "varpro"]

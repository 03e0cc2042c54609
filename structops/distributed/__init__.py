"""Convolution layers on pylops-mpi: a layer split over MPI ranks.

- :func:`Conv2D` (and :func:`ConvND`): one constructor, three splits of a
  layer, each a ``pylops_mpi`` operator on ``DistributedArray`` s:
  ``"out_channels"`` (an ``MPIVStack`` of row blocks), ``"in_channels"``
  (an ``MPIHStack`` of column blocks) and ``"batch"`` (an ``MPIBlockDiag``
  of the same layer on each rank's images).
- :func:`distribute` and :func:`gather`: arrays to and from the layout a
  split expects.

mpi4py and pylops-mpi are the optional ``[mpi]`` extra, imported only when a
distributed operator is built.
"""

from .layers import ConvND, Conv2D, distribute, gather, local_slice

__all__ = ["ConvND", "Conv2D", "distribute", "gather", "local_slice"]

"""Spectra of distributed layers: the circular spectrum split over frequencies, sigma_max through the layer."""

from __future__ import annotations

import numpy as np

from .._backend import to_numpy
from .layers import _mpi, distribute, gather, local_slice

__all__ = ["circular_singular_values", "replicated"]


def circular_singular_values(op, comm=None, per_frequency="auto"):
    """Every singular value of a periodic layer, the frequencies split over the ranks of ``comm``.

    Parameters
    ----------
    op : structops.ConvND or Circulant
        A serial periodic layer (``padding="circular"``), the same on every
        rank.
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.
    per_frequency : {"auto", "svd", "gram"}
        As in :func:`structops.singular_values`.

    Returns
    -------
    values : ndarray
        All singular values, descending, on every rank (equal to the serial
        spectrum: each frequency's matrix is decomposed by one rank with the
        serial code).
    error_bound : float
        The largest of the ranks' error bounds.

    Notes
    -----
    The per-frequency channel matrices ``P(omega)`` are independent: rank
    ``r`` decomposes its block of frequencies (``numpy.array_split``) and the
    values are all-gathered, ``min(c_out, c_in s)`` floats per frequency.
    """
    MPI, _ = _mpi()
    from ..linalg.circular import symbol_of

    comm = MPI.COMM_WORLD if comm is None else comm
    sym = symbol_of(op)
    if sym is None:
        raise ValueError("circular_singular_values needs a periodic, ungrouped layer whose stride divides the image")
    P = sym.matrices()
    sl = local_slice(P.shape[0], comm)
    sym._P = P[sl]
    local = sym.values_per_frequency(per_frequency) if sl.stop > sl.start else np.zeros((0, min(P.shape[1:])))
    bound = comm.allreduce(float(getattr(sym, "error_bound", 0.0)), op=MPI.MAX)
    sym._P = P
    S = np.concatenate(comm.allgather(to_numpy(local)), axis=0)
    values = np.repeat(S, sym.weights(), axis=0).reshape(-1)
    return np.sort(values)[::-1], bound


def replicated(op):
    """A serial ``pylops.LinearOperator`` view of a distributed layer, on every rank.

    Its vectors are whole (the same on every rank); each product distributes
    them, applies ``op`` across the ranks and gathers the result. Serial
    algorithms that are deterministic (structops' residual-checked Lanczos in
    :func:`structops.opnorm`, SciPy's solvers) then run identically on every
    rank, with the layer's work split: ``structops.opnorm(replicated(op))``
    is the certified sigma_max of the whole layer.
    """
    import pylops

    class _Replicated(pylops.LinearOperator):
        def __init__(self):
            super().__init__(dtype=np.dtype(op.dtype), shape=op.shape, explicit=False)

        def _matvec(self, x):
            return gather(op @ distribute(x, op, "model"), op)

        def _rmatvec(self, y):
            return gather(op.H @ distribute(y, op, "data"), op)

    return _Replicated()

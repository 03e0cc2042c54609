"""Options, errors and small helpers shared by the spectrum modules of :mod:`structops.linalg`."""

from __future__ import annotations

import os
import warnings

import numpy as np

from .._validate import as_int, as_real
from ..operators.conv import ConvND

_DEFAULT_TOL = 1e-10


class SpectrumNotConvergedError(RuntimeError):
    """An iterative spectral computation did not reach the requested accuracy.

    Attributes
    ----------
    values : ndarray or None
        The estimates at the point of failure (NaN where nothing converged).
    residual : float or None
        The residual bound reached, relative to ``sigma_max``.
    """

    __module__ = "structops.linalg.spectra"  # its public home

    def __init__(self, message, values=None, residual=None):
        super().__init__(message)
        self.values = values
        self.residual = residual


class SpectrumNotConvergedWarning(RuntimeWarning):
    """Issued instead of :class:`SpectrumNotConvergedError` when ``strict=False``."""

    __module__ = "structops.linalg.spectra"


# ---------------------------------------------------------------- options, checks
class _Opts:
    __slots__ = ("tol", "maxiter", "strict", "dense", "per_frequency")

    def __init__(self, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
        self.tol = _DEFAULT_TOL if tol is None else as_real(tol, "tol")
        if not 0 < self.tol < 1:
            raise ValueError(f"tol must be in (0, 1); got {tol!r}")
        self.maxiter = None if maxiter is None else as_int(maxiter, "maxiter", minimum=1)
        self.strict = bool(strict)
        if dense not in (None, True, False):
            raise ValueError(f"dense must be None (automatic), True or False; got {dense!r}")
        self.dense = dense
        if per_frequency not in ("auto", "svd", "gram"):
            raise ValueError(f"per_frequency must be 'auto', 'svd' or 'gram'; got {per_frequency!r}")
        self.per_frequency = per_frequency

    def strict_copy(self) -> "_Opts":
        """The same options with ``strict=True`` (a failure raises, for a fallback to catch)."""
        out = self._copy()
        out.strict = True
        return out

    def _copy(self) -> "_Opts":
        out = _Opts.__new__(_Opts)
        for name in self.__slots__:
            setattr(out, name, getattr(self, name))
        return out

    def allow_dense(self) -> "_Opts":
        """The same options with the dense SVD allowed by size (for blocks that need all their values)."""
        out = self._copy()
        out.dense = None if self.dense is False else self.dense
        return out


def shape_of(op):
    shape = getattr(op, "shape", None)
    if shape is None or len(shape) != 2:
        raise TypeError(
            f"expected a linear operator or a 2-D array; got {type(op).__module__}.{type(op).__name__}"
        )
    return int(shape[0]), int(shape[1])


def select(s, k, which):
    """``s`` descending -> the k largest or smallest, still descending."""
    if k is None:
        return s
    return s[:k] if which == "largest" else s[len(s) - k :]


def workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def not_converged(msg, opts, values=None, residual=None):
    if opts.strict:
        raise SpectrumNotConvergedError(msg, values=values, residual=residual)
    warnings.warn(msg + " (strict=False: the values are returned as they are)", SpectrumNotConvergedWarning, stacklevel=3)


def conv64(op: ConvND) -> ConvND:
    """The same layer with a double-precision kernel (the layer itself if it has one)."""
    K = op.kernel
    if K.dtype in (np.float64, np.complex128):
        return op
    return op.with_kernel(K.astype(np.complex128 if K.dtype.kind == "c" else np.float64))

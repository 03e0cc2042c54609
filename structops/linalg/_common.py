"""Options, errors and small helpers shared by the spectrum modules of :mod:`structops.linalg`."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from .._threads import usable_cpus
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
@dataclass(frozen=True)
class SpectrumInfo:
    """How singular values were computed, and how far they may be from the true ones.

    Attributes
    ----------
    error_bound : float
        Every returned value lies within this (absolute) distance of a
        singular value of the operator; ``inf`` when some value is not
        certified (``strict=False``).
    methods : tuple of (str, float)
        Each method that produced values, with its own bound, in order.
    reductions : tuple of str
        The exact structural reductions applied (empty for none).
    seconds : float
    certified : bool
        ``error_bound`` is finite: every value passed its check.
    """

    __module__ = "structops.linalg.spectra"

    error_bound: float
    methods: tuple
    reductions: tuple
    seconds: float
    certified: bool

    @classmethod
    def from_log(cls, log, seconds):
        methods = tuple((m, b) for m, b in log if not m.startswith("reduction: "))
        reductions = tuple(m[len("reduction: "):] for m, _ in log if m.startswith("reduction: "))
        perturbation = sum(b for m, b in log if m.startswith("reduction: "))
        bound = max((b for _, b in methods), default=0.0) + perturbation
        return cls(error_bound=bound, methods=methods, reductions=reductions, seconds=seconds,
                   certified=math.isfinite(bound))


class _Opts:
    __slots__ = ("tol", "maxiter", "strict", "dense", "per_frequency", "log")

    def __init__(self, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto", log=None):
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
        self.log = log  # a list collecting (method, absolute error bound) for return_info, or None

    def note(self, method: str, bound: float) -> None:
        """Record that ``method`` produced values within ``bound`` of singular values."""
        if self.log is not None:
            self.log.append((method, float(bound)))

    def replace(self, **changes) -> "_Opts":
        """A copy with some options changed (already checked values: no checks again)."""
        out = _Opts.__new__(_Opts)
        for name in self.__slots__:
            setattr(out, name, changes.pop(name, getattr(self, name)))
        if changes:
            raise TypeError(f"unknown options {sorted(changes)}")
        return out


def shape_of(op):
    shape = getattr(op, "shape", None)
    if shape is None or len(shape) != 2:
        raise TypeError(
            f"expected a linear operator or a 2-D array; got {type(op).__module__}.{type(op).__name__}"
        )
    return int(shape[0]), int(shape[1])


EPS64 = float(np.finfo(np.float64).eps)


def product_eps(dtype) -> float:
    """The unit roundoff of products in ``dtype``: single precision's for float32/complex64, else double's."""
    dtype = np.dtype(dtype)
    return float(np.finfo(dtype).eps) if dtype.kind in "fc" else EPS64


def rounding_floor(sigma_max, n, eps=EPS64) -> float:
    """``10 sqrt(n) eps sigma_max``: the rounding level of a backward-stable method on an ``n``-dimensional operator.

    ``eps`` is the unit roundoff of the operator's products (:func:`product_eps`).
    """
    return 10.0 * math.sqrt(max(int(n), 1)) * float(eps) * float(sigma_max)


def certified(s, bound, sigma_max, tol, n=1, eps=EPS64) -> bool:
    """The one meaning of ``tol``: every ``bound_i <= max(tol s_i, 10 sqrt(n) eps sigma_max)``.

    ``bound_i`` bounds the distance from ``s_i`` to a singular value; the
    floor (:func:`rounding_floor`, ``n = max(M, N)``) is the rounding level of
    a backward-stable method, below which no value can be resolved: in double
    precision, or in single where the operator's products are (``eps``).
    """
    s, bound = np.asarray(s, dtype=float), np.asarray(bound, dtype=float)
    return bool(np.all(bound <= np.maximum(tol * np.abs(s), rounding_floor(sigma_max, n, eps))))


def select(s, k, which):
    """``s`` descending -> the k largest or smallest, still descending."""
    if k is None:
        return s
    return s[:k] if which == "largest" else s[len(s) - k :]


def workers() -> int:
    return min(usable_cpus(), 8)


def not_converged(msg, opts, values=None, residual=None):
    opts.note("not certified: " + msg, math.inf)
    if opts.strict:
        raise SpectrumNotConvergedError(msg, values=values, residual=residual)
    warnings.warn(msg + " (strict=False: the values are returned as they are)", SpectrumNotConvergedWarning, stacklevel=3)


def scale_exponent(K, limit: float, small: bool = True) -> int:
    """``e`` with ``max |K| / 2**e`` in ``[1, 2)`` where ``max |K|`` is past ``2**limit`` (or, with ``small``,
    nonzero below ``2**-limit``), else 0: the kernel ``np.ldexp(K, -e)`` is ``K`` scaled exactly.

    ``K``: a NumPy or CuPy array (real or complex).
    """
    a = float(abs(K).max()) if K.size else 0.0
    if a == 0.0 or a <= 2.0**limit and (a >= 2.0**-limit or not small):
        return 0
    return math.frexp(a)[1] - 1


def has_kernel(op) -> bool:
    """Whether ``op`` is a layer given by its kernel (``kernel`` and ``with_kernel``: :class:`ConvND`,
    :class:`~structops.PaddedConvND`), which can be rescaled or moved to double precision through it."""
    return hasattr(op, "with_kernel") and hasattr(op, "kernel")


def conv64(op):
    """The same layer with a double-precision kernel (the layer itself if it has one; see :func:`has_kernel`).

    The spectrum of a layer is that of its kernel's values: its products in single precision would carry
    single precision's rounding (``1e-7 sigma_max``) into every residual.
    """
    K = op.kernel
    if K.dtype in (np.float64, np.complex128):
        return op
    return op.with_kernel(K.astype(np.complex128 if K.dtype.kind == "c" else np.float64))

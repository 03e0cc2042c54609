"""Array backends: NumPy on the CPU, CuPy on a GPU.

Every kernel routine starts with ``xp = get_xp(x, self.kernel)``: NumPy arrays
in give NumPy arrays out, CuPy arrays in give CuPy arrays out. This is the only
module of the package that imports CuPy.
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np
import scipy.fft as _sp_fft

try:  # pragma: no cover - exercised on GPU machines only
    import cupy as _cupy
    import cupyx.scipy.fft as _cp_fft
except Exception:  # ImportError, or a CuPy that cannot find CUDA
    _cupy = None
    _cp_fft = None

__all__ = [
    "get_xp",
    "get_fft",
    "is_cupy",
    "cupy_available",
    "to_numpy",
    "asarray_like",
    "check_finite",
    "real_dtype",
    "complex_dtype",
    "set_blas_threads",
    "blas_threads",
    "device_constant",
]


def cupy_available() -> bool:
    """Whether CuPy imports and sees a CUDA device."""
    if _cupy is None:
        return False
    try:  # pragma: no cover - GPU only
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # pragma: no cover
        return False


def is_cupy(a) -> bool:
    """Whether ``a`` is a CuPy array."""
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def _kind(a) -> str | None:
    if a is None or isinstance(a, (numbers.Number, np.generic)):
        return None
    if is_cupy(a):
        return "cupy"
    if isinstance(a, np.ndarray):
        return "numpy"
    return None


def get_xp(*arrays):
    """Array module (``numpy`` or ``cupy``) shared by ``arrays``.

    Scalars, ``None`` and non-array objects are ignored.

    Raises
    ------
    TypeError
        If NumPy and CuPy arrays are mixed.
    """
    kinds = {k for k in map(_kind, arrays) if k is not None}
    if len(kinds) > 1:
        names = ", ".join(
            f"{type(a).__module__}.{type(a).__name__}{getattr(a, 'shape', '')}"
            for a in arrays
            if _kind(a) is not None
        )
        raise TypeError(
            "cannot mix NumPy and CuPy arrays in one operation (got "
            f"{names}); move them to one device first, e.g. with cupy.asarray "
            "or cupy.asnumpy"
        )
    if kinds == {"cupy"}:
        return _cupy
    return np


def get_fft(xp):
    """FFT module for ``xp``: ``scipy.fft`` (keeps float32) or ``cupyx.scipy.fft``."""
    if xp is np:
        return _sp_fft
    return _cp_fft  # pragma: no cover - GPU only


def to_numpy(a):
    """Host copy of ``a`` (a no-op for NumPy arrays)."""
    if is_cupy(a):  # pragma: no cover - GPU only
        return _cupy.asnumpy(a)
    return np.asarray(a)


def asarray_like(a, like):
    """``a`` as an array of the same backend as ``like`` (no copy if it already is)."""
    xp = get_xp(like)
    if get_xp(a) is not xp and _kind(a) is not None:
        raise TypeError(
            f"array of type {type(a).__module__}.{type(a).__name__} given where a "
            f"{xp.__name__} array is expected"
        )
    return xp.asarray(a)


def check_finite(a, name: str) -> None:
    """Raise ``ValueError`` if ``a`` has NaN or Inf entries."""
    xp = get_xp(a)
    if not bool(xp.isfinite(a).all()):
        raise ValueError(f"{name} has NaN or Inf entries; expected finite values")


def real_dtype(dtype) -> np.dtype:
    """Real dtype of the same precision (float32 for complex64, ...)."""
    return np.empty(0, dtype=dtype).real.dtype


def complex_dtype(dtype) -> np.dtype:
    """Complex dtype of the same precision (complex64 for float32, ...)."""
    return np.result_type(dtype, np.complex64)


# -- BLAS threads ------------------------------------------------------------------
# Multi-threaded BLAS on a small machine can make a product 100x slower: worker
# threads that spin after each call compete with other threads (another GEMM,
# PyTorch's OpenMP pool, another process) for the few cores. structops' products
# are written as a few large GEMMs that do well on one thread, so by default they
# run with one BLAS thread and restore the caller's setting afterwards.
_blas_threads: int | None = 1
_blas_libs = None


def set_blas_threads(n: int | None) -> None:
    """Number of BLAS threads used inside structops' products.

    Parameters
    ----------
    n : int or None
        ``1`` (default) runs every product single-threaded, which is robust on
        small machines; ``None`` leaves the BLAS library's own setting alone.
    """
    global _blas_threads
    if n is not None and int(n) < 1:
        raise ValueError(f"number of BLAS threads must be >= 1 or None; got {n}")
    _blas_threads = None if n is None else int(n)


def _blas_controllers():
    global _blas_libs
    if _blas_libs is None:
        try:
            from threadpoolctl import ThreadpoolController

            _blas_libs = ThreadpoolController().select(user_api="blas").lib_controllers
        except Exception:  # threadpoolctl missing or unusable: leave BLAS alone
            _blas_libs = []
    return _blas_libs


_SETTING = object()


@contextlib.contextmanager
def blas_threads(n=_SETTING):
    """Context in which BLAS uses ``n`` threads (default: :func:`set_blas_threads`'s count).

    ``n=None`` leaves the BLAS library's setting alone.
    """
    if n is _SETTING:
        n = _blas_threads
    libs = _blas_controllers() if n is not None else []
    old = [lib.num_threads for lib in libs]
    changed = [(lib, o) for lib, o in zip(libs, old) if o != n]
    for lib, _ in changed:
        lib.set_num_threads(n)
    try:
        yield
    finally:
        for lib, o in changed:
            lib.set_num_threads(o)


# -- constants on a device ------------------------------------------------------------
# Small index arrays and masks copied to a device, by (backend, device, key): the
# products index device arrays with them, and a host array there would be copied
# to the device on every call.
_DEVICE_CONSTANTS: dict = {}
_MAX_DEVICE_CONSTANTS = 1024


def _device_id(xp):
    """Current device of a GPU array module (``None`` for NumPy or without one)."""
    try:
        return int(xp.cuda.Device().id)
    except Exception:
        return None


def device_constant(xp, key, make, cache=None):
    """The host array ``make()`` as an array of ``xp``, copied to a device once per ``key``.

    Parameters
    ----------
    xp : module
        ``numpy`` (``make()`` is returned as it is) or ``cupy``.
    key : hashable
        Identifies the constant (e.g. the geometry it was derived from).
    make : callable
        ``make() -> numpy.ndarray``; called once per backend, device and key.
    cache : dict, optional
        Where the copies are kept (default: a module-wide cache, cleared when
        it holds too many); an object can keep its own constants with it.

    Returns
    -------
    array
        Treat it as read-only: it is shared by every caller with the same key.
    """
    if xp is np:
        return make()
    shared = cache is None
    if shared:
        cache = _DEVICE_CONSTANTS
    k = (xp.__name__, id(xp), _device_id(xp), key)
    arr = cache.get(k)
    if arr is None:
        if shared and len(cache) >= _MAX_DEVICE_CONSTANTS:
            cache.clear()
        arr = cache[k] = xp.asarray(make())
    return arr



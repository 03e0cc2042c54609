"""Input checks shared by the operators; every error says what was given and what is expected."""

from __future__ import annotations

import numpy as np

from ._backend import check_finite, get_xp

__all__ = ["as_param_array", "result_dtype"]


def as_param_array(a, name: str, ndim=None, min_ndim: int = 1):
    """Validate a parameter array (kernel, defining vector) without copying it.

    Integer and boolean arrays are converted to float64; float32/float64 and
    complex arrays are kept as they are. NaN/Inf entries are rejected.
    """
    xp = get_xp(a)
    if not hasattr(a, "dtype"):
        a = np.asarray(a)
        xp = np
    a = xp.asarray(a)
    if a.dtype.kind in "biu":
        a = a.astype(np.float64)
    elif a.dtype.kind not in "fc":
        raise TypeError(f"{name} has dtype {a.dtype}; expected a real or complex floating array")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} has {a.ndim} dimensions (shape {tuple(a.shape)}); expected {ndim}")
    if a.ndim < min_ndim:
        raise ValueError(f"{name} has shape {tuple(a.shape)}; expected at least {min_ndim} dimension(s)")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(a.shape)})")
    check_finite(a, name)
    return a


def result_dtype(*arrays) -> np.dtype:
    """Floating dtype of a product of ``arrays`` (float32 stays float32)."""
    dt = np.result_type(*[a.dtype for a in arrays])
    if dt.kind not in "fc":
        dt = np.result_type(dt, np.float64)
    return dt

"""Argument checks shared by every module; each error says what was given and what is expected.

One checker per kind of argument: parameter arrays (:func:`as_param_array`),
data arrays (:func:`as_data_array`), integers and integer tuples
(:func:`as_int`, :func:`int_tuple`), real scalars (:func:`as_real`), and
sizes: :func:`check_size` refuses operators whose dimensions overflow, and
:func:`check_memory` refuses an allocation larger than the memory limit
(:func:`set_memory_limit`) before it is attempted.
"""

from __future__ import annotations

import math
import numbers
import operator
import os

import numpy as np

from ._backend import check_finite, get_xp

__all__ = [
    "as_param_array",
    "as_data_array",
    "result_dtype",
    "as_int",
    "int_tuple",
    "as_real",
    "check_size",
    "check_memory",
    "set_memory_limit",
    "get_memory_limit",
    "MemoryLimitError",
]


class MemoryLimitError(MemoryError):
    """An operation would allocate more than :func:`get_memory_limit` bytes.

    Raised before the allocation; the message gives the estimate and the limit.
    """


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 16 * 2**30


_memory_limit: int | None = None


def set_memory_limit(nbytes) -> None:
    """Largest allocation (in bytes) that one structops operation may attempt.

    Parameters
    ----------
    nbytes : int or None
        ``None`` restores the default: the ``STRUCTOPS_MEMORY_LIMIT``
        environment variable (bytes) if set, else 80% of the physical memory.
    """
    global _memory_limit
    _memory_limit = None if nbytes is None else as_int(nbytes, "memory limit", minimum=1)


def get_memory_limit() -> int:
    """The current memory limit in bytes (see :func:`set_memory_limit`)."""
    if _memory_limit is not None:
        return _memory_limit
    env = os.environ.get("STRUCTOPS_MEMORY_LIMIT")
    if env:
        try:
            return as_int(int(env), "STRUCTOPS_MEMORY_LIMIT", minimum=1)
        except ValueError:
            raise ValueError(f"STRUCTOPS_MEMORY_LIMIT={env!r}; expected a positive number of bytes") from None
    return int(0.8 * _physical_memory())


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_memory(nbytes, what: str) -> None:
    """Raise :class:`MemoryLimitError` if ``nbytes`` exceeds the memory limit.

    Parameters
    ----------
    nbytes : int or float
        Estimated size of the allocation(s) about to be made.
    what : str
        What would be allocated (goes into the message).
    """
    limit = get_memory_limit()
    if nbytes > limit:
        raise MemoryLimitError(
            f"{what} needs about {_fmt_bytes(nbytes)}, above the memory limit of {_fmt_bytes(limit)}; "
            "use a smaller problem or raise the limit with structops.set_memory_limit(nbytes)"
        )


# Largest number of entries of an operator's input or output (int64 indexing
# with room for a batch axis).
_MAX_ENTRIES = 2**62


def check_size(shape, what: str) -> int:
    """``prod(shape)`` in exact integer arithmetic; ``ValueError`` if it overflows int64 indexing."""
    n = math.prod(int(v) for v in shape)
    if n >= _MAX_ENTRIES:
        raise ValueError(f"{what} {tuple(shape)} has {n} entries; at most 2**62 can be indexed")
    return n


def as_int(value, name: str, minimum: int | None = None) -> int:
    """``value`` as a Python int: ints and NumPy integers only (no floats, strings or booleans)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer; got the boolean {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer; got {value!r} of type {type(value).__name__}") from None
    if minimum is not None and v < minimum:
        kind = {0: "a non-negative int (>= 0)", 1: "a positive int (>= 1)"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"{name} must be {kind}; got {v}")
    return v


def int_tuple(value, D: int, name: str, minimum: int = 1) -> tuple:
    """One integer per axis: an int (repeated ``D`` times) or a sequence of ``D`` ints."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an int or a tuple of {D} ints; got the string {value!r}")
    if isinstance(value, numbers.Integral) or (isinstance(value, np.ndarray) and value.ndim == 0):
        value = (value,) * D
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of {D} ints; got {value!r}") from None
    if len(items) != D:
        raise ValueError(f"{name} has {len(items)} entries {items}; expected {D} (one per spatial axis)")
    out = []
    for v in items:
        try:
            out.append(as_int(v, name))
        except TypeError:
            raise TypeError(f"{name} must be an int or a tuple of {D} ints; got {value!r}") from None
    if any(v < minimum for v in out):
        raise ValueError(f"{name} must be >= {minimum} on every axis; got {tuple(out)}")
    return tuple(out)


def as_real(value, name: str, *, positive: bool = False, nonnegative: bool = False, finite: bool = True) -> float:
    """``value`` as a float: a real number, not NaN (nor Inf unless ``finite=False``), with an optional sign."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        if not (hasattr(value, "ndim") and value.ndim == 0 and getattr(value, "dtype", np.dtype("O")).kind in "fiu"):
            raise TypeError(f"{name} must be a real number; got {value!r} of type {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or (finite and math.isinf(v)):
        raise ValueError(f"{name} must be a finite real number; got {v}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be positive (> 0); got {v}")
    if nonnegative and not v >= 0:
        raise ValueError(f"{name} must be non-negative (>= 0); got {v}")
    return v


def as_param_array(a, name: str, ndim=None, min_ndim: int = 1):
    """A validated, owned, read-only copy of a parameter array (kernel, defining vector).

    Integer and boolean arrays are converted to float64; float32/float64 and
    complex arrays keep their precision. NaN/Inf entries are rejected. The
    result never aliases the caller's array, so later changes to it do not
    reach the operator (NumPy copies are marked read-only).
    """
    xp = get_xp(a)
    if not hasattr(a, "dtype"):
        a = np.asarray(a)
        xp = np
    a = xp.array(a, copy=True)
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
    if isinstance(a, np.ndarray):
        a.setflags(write=False)
    return a


def as_data_array(x, name: str = "x"):
    """An input vector or batch as an array of its own backend (lists become NumPy arrays).

    Raises ``TypeError`` for objects that are not numeric array-likes.
    """
    if hasattr(x, "__array_namespace__") or hasattr(x, "__cuda_array_interface__") or isinstance(x, np.ndarray):
        if getattr(x, "dtype", None) is not None and x.dtype.kind not in "biufc":
            raise TypeError(f"{name} has dtype {x.dtype}; expected a numeric array")
        return x
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists, odd objects
        raise TypeError(f"{name} of type {type(x).__name__} is not an array-like: {exc}") from None
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"{name} of type {type(x).__name__} is not a numeric array-like (dtype {arr.dtype})")
    return arr


def result_dtype(*arrays) -> np.dtype:
    """Floating dtype of a product of ``arrays`` (float32 stays float32)."""
    dt = np.result_type(*[a.dtype for a in arrays])
    if dt.kind not in "fc":
        dt = np.result_type(dt, np.float64)
    return dt


def as_real_kernel(kernel, name: str = "kernel"):
    """``(kernel, xp)``: a real, finite, non-empty ``(c_out, c_in, *k)`` kernel on its backend.

    Integer kernels become float64; complex and non-numeric ones are a
    ``TypeError``. No copy is made of a float32/float64 array.
    """
    if not hasattr(kernel, "dtype"):
        kernel = np.asarray(kernel)
    xp = get_xp(kernel)
    kernel = xp.asarray(kernel)
    if kernel.dtype.kind in "biu":
        kernel = kernel.astype(np.float64)
    if kernel.dtype.kind == "c":
        raise TypeError(f"{name} is complex ({kernel.dtype}); expected a real float32 or float64 kernel")
    if kernel.dtype.kind != "f":
        raise TypeError(f"{name} has dtype {kernel.dtype}; expected a real float32 or float64 kernel")
    if kernel.ndim < 3:
        raise ValueError(
            f"{name} has shape {tuple(kernel.shape)}; expected (c_out, c_in, k_1, ..., k_D) with D >= 1"
        )
    if kernel.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(kernel.shape)})")
    if not bool(xp.isfinite(kernel).all()):
        raise ValueError(f"{name} has NaN or Inf entries; expected finite values")
    return kernel, xp

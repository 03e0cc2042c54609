"""A CPU stand-in for CuPy that refuses NumPy-only calls on "device" data.

``fake`` is a module-like namespace that mirrors the part of CuPy's API the
library uses: its functions (``fake.zeros``, ``fake.concatenate``,
``fake.einsum``, ``fake.linalg.norm``, ``fake.random.default_rng``, ...) call
NumPy on host views of their inputs and return :class:`DeviceArray`
results, ``fake.ndarray`` is :class:`DeviceArray`, ``fake.asnumpy`` copies
to the host and ``fake_fft`` wraps :mod:`scipy.fft` the same way (the
stand-in for ``cupyx.scipy.fft``). The :func:`use_fake_device` context (or
the ``fake_device`` fixture of the tests) installs them as the CuPy of
:mod:`structops._backend`, so ``get_xp`` returns ``fake`` for
:class:`DeviceArray` inputs and ``to_numpy`` uses ``fake.asnumpy``.

What it catches
---------------
* A NumPy *function* called on a device array (``np.concatenate``,
  ``np.where``, ``np.vdot``, ``np.linalg.norm``, ``np.array_equal``, ...):
  ``TypeError``. CuPy forwards some of these to its own implementation, but
  others fail, and the library's convention is to call ``xp.<name>``.
* Host and device arrays mixed in one operation (``dev * host``, a NumPy
  mask or index array indexing a device array, a NumPy array assigned into
  a device array, a NumPy array given to a ``fake`` function other than
  ``asarray``/``array``/``asanyarray``): ``TypeError``, as in CuPy (which
  either raises or silently copies to the device).
* Device results that come back as host arrays: test for
  ``isinstance(out, DeviceArray)``.

What it cannot catch
--------------------
* ``np.asarray(dev)``, ``np.array(dev)`` and SciPy routines that coerce
  their input with them: NumPy converts an ``ndarray`` subclass without
  asking it (CuPy raises here). The result is a plain ``ndarray``, so the
  error only shows when it meets device data again, or in a type check.
* NumPy *ufuncs* called directly (``np.sqrt(dev)``): they cannot be told
  apart from the array's own operators (``dev + dev`` is ``np.add``) and are
  let through (CuPy supports them too).
* Zero-dimensional NumPy arrays and NumPy scalars mixed with device arrays
  are allowed (as CuPy allows scalars).
* Anything about performance, streams, memory or the GPU itself.
"""

from __future__ import annotations

import contextlib
import types

import numpy as np
import scipy.fft

__all__ = ["DeviceArray", "fake", "fake_fft", "use_fake_device", "to_device"]


def _is_host(a) -> bool:
    """A NumPy array (not a device array) with at least one dimension."""
    return isinstance(a, np.ndarray) and not isinstance(a, DeviceArray) and a.ndim > 0


def _host_inputs(obj) -> bool:
    if _is_host(obj):
        return True
    if isinstance(obj, (list, tuple)):
        return any(_host_inputs(o) for o in obj)
    if isinstance(obj, dict):
        return any(_host_inputs(o) for o in obj.values())
    return False


def _unwrap(obj):
    if isinstance(obj, DeviceArray):
        return obj.view(np.ndarray)
    if isinstance(obj, list):
        return [_unwrap(o) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrap(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _wrap(obj):
    if isinstance(obj, DeviceArray):
        return obj
    if isinstance(obj, np.ndarray):
        return obj.view(DeviceArray)
    if isinstance(obj, np.generic):  # CuPy returns 0-d arrays, not scalars
        return np.asarray(obj).view(DeviceArray)
    if isinstance(obj, np.random.Generator):
        return _Namespace(obj, "fake.random.Generator")
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
    return obj


def _describe(a) -> str:
    return f"{type(a).__module__}.{type(a).__name__}{getattr(a, 'shape', '')}"


class DeviceArray(np.ndarray):
    """An array that lives on the fake device (a view of host memory).

    Its methods and operators work and return device arrays; NumPy functions
    on it and host arrays mixed with it raise ``TypeError``.
    """

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(
            f"NumPy function numpy.{func.__name__} called on a device array; call it through the "
            "array module of the data (xp = get_xp(...); xp." + func.__name__ + ") or copy to the host "
            "explicitly with to_numpy"
        )

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        outs = kwargs.get("out", ())
        hosts = [a for a in inputs + tuple(outs) if _is_host(a)]
        if hosts:
            raise TypeError(
                f"{ufunc.__name__} mixes device and host arrays ({', '.join(_describe(a) for a in hosts)}); "
                "move them to one device first"
            )
        if outs:
            kwargs["out"] = tuple(_unwrap(o) for o in outs)
        result = getattr(ufunc, method)(*_unwrap(inputs), **kwargs)
        if outs:
            return outs[0] if len(outs) == 1 else tuple(outs)
        return _wrap(result)

    @staticmethod
    def _check_key(key):
        keys = key if isinstance(key, tuple) else (key,)
        for k in keys:
            if _is_host(k):
                raise TypeError(
                    f"a host array {_describe(k)} indexes a device array; index with a device array "
                    "(xp.asarray once, then reuse it)"
                )

    def __getitem__(self, key):
        self._check_key(key)
        return super().__getitem__(_unwrap(key))

    def __setitem__(self, key, value):
        self._check_key(key)
        if _is_host(value):
            raise TypeError(
                f"a host array {_describe(value)} is assigned into a device array; move it to the "
                "device explicitly (xp.asarray)"
            )
        super().__setitem__(_unwrap(key), _unwrap(value))

    def nonzero(self):
        return tuple(i.view(DeviceArray) for i in self.view(np.ndarray).nonzero())

    def get(self):
        """Host copy (``cupy.ndarray.get``)."""
        return np.array(self.view(np.ndarray))


_HOST_OK = {"asarray", "array", "asanyarray"}


class _Namespace:
    """Wraps a module (or object): callables take device arrays and return device arrays."""

    def __init__(self, target, name):
        self._target = target
        self.__name__ = name

    def __repr__(self):
        return f"<fake device module {self.__name__}>"

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if isinstance(attr, types.ModuleType):
            return _Namespace(attr, f"{self.__name__}.{name}")
        if isinstance(attr, type) or not callable(attr):
            return attr  # dtypes (fake.float64 is numpy.float64, as in CuPy), constants

        def call(*args, **kwargs):
            if name not in _HOST_OK and _host_inputs((args, kwargs)):
                raise TypeError(
                    f"{self.__name__}.{name} was given a host array; move it to the device first"
                )
            return _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))

        call.__name__ = name
        return call


class _FakeCuPy(_Namespace):
    """The ``cupy`` stand-in."""

    ndarray = DeviceArray

    def __init__(self):
        super().__init__(np, "fake_device")

    @staticmethod
    def asnumpy(a):
        """Host copy of a device array (``cupy.asnumpy``)."""
        return np.array(a.view(np.ndarray) if isinstance(a, DeviceArray) else a)

    def get_array_module(self, *args):
        return self if any(isinstance(a, DeviceArray) for a in args) else np


fake = _FakeCuPy()
fake_fft = _Namespace(scipy.fft, "fake_device.fft")


def to_device(a):
    """A device copy of a host array (``cupy.asarray``)."""
    return fake.array(a)


@contextlib.contextmanager
def use_fake_device():
    """Install ``fake`` as the CuPy of :mod:`structops._backend` for the duration."""
    from structops import _backend

    old = _backend._cupy, _backend._cp_fft
    _backend._cupy, _backend._cp_fft = fake, fake_fft
    try:
        yield fake
    finally:
        _backend._cupy, _backend._cp_fft = old

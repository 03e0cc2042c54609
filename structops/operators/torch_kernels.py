"""PyTorch's CPU convolution kernels for the products of a :class:`~structops.ConvND` (optional).

With torch installed, ``ConvND(method="torch")`` computes its products with
``torch.nn.functional.conv{1,2,3}d`` (forward) and ``conv_transpose{1,2,3}d``
(adjoint) on zero-copy ``torch.from_numpy`` views of the NumPy columns;
``method="auto"`` does so for float32 products on the host, where torch's
kernels measured faster than the library's own (see
``benchmarks/bench_conv.py``). Zero padding (asymmetric too, by ``F.pad``) and
circular padding (``F.pad(mode="circular")``, the adjoint folding the borders
back) are covered; the kernel Jacobians keep the library's algorithms.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np

__all__ = ["available", "forward", "adjoint"]

# "auto" hands float32 host products to torch when it is installed
AUTO_FLOAT32 = True


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether torch can be imported (without importing it); looked up once, every layer construction asks."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # pragma: no cover - a broken installation
        return False


def _F():
    import torch

    return torch, torch.nn.functional


def _tensor(torch, a):
    """``torch.from_numpy(a)`` without the warning for read-only arrays (torch only reads them here)."""
    import warnings

    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def _weight(torch, layer, dtype):
    """The layer's kernel as a tensor of ``dtype``, made once per layer and dtype."""
    cache = layer.__dict__.setdefault("_torch_weights", {})
    key = np.dtype(dtype).str
    if key not in cache:
        cache[key] = _tensor(torch, np.ascontiguousarray(layer.kernel, dtype=dtype))
    return cache[key]


def _flat(pairs):
    out = []
    for lo, hi in reversed(pairs):
        out += [lo, hi]
    return out


def forward(layer, X):
    """``layer @ X`` for host ``X`` of shape ``(N, B)``, via ``conv{D}d``: ``(M, B)``."""
    torch, F = _F()
    geo, B = layer.geometry, X.shape[1]
    conv = getattr(F, f"conv{geo.ndim}d")
    x = _tensor(torch, X.T).reshape((B, geo.c_in) + geo.in_shape)
    pad = geo.padding
    if geo.circular:
        x, pad_arg = F.pad(x, _flat(pad), mode="circular"), 0
    elif all(lo == hi for lo, hi in pad):
        pad_arg = tuple(lo for lo, _ in pad)
    else:
        x, pad_arg = F.pad(x, _flat(pad)), 0
    w = _weight(torch, layer, X.dtype)
    with torch.inference_mode():
        y = conv(x, w, stride=geo.stride, padding=pad_arg, dilation=geo.dilation, groups=geo.groups)
    return y.reshape(B, -1).numpy().T


def adjoint(layer, Y):
    """``layer.H @ Y`` for host ``Y`` of shape ``(M, B)``, via ``conv_transpose{D}d``: ``(N, B)``."""
    torch, F = _F()
    geo, B = layer.geometry, Y.shape[1]
    convt = getattr(F, f"conv_transpose{geo.ndim}d")
    y = _tensor(torch, Y.T).reshape((B, geo.c_out) + geo.out_shape)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(geo.in_shape, geo.padding))
    # the transposed product onto the whole padded grid, then the image cut out (or the borders folded back)
    opad = tuple(P - ((m - 1) * s + d * (k - 1) + 1)
                 for P, m, s, d, k in zip(padded, geo.out_shape, geo.stride, geo.dilation, geo.kernel_size))
    w = _weight(torch, layer, Y.dtype)
    with torch.inference_mode():
        xx = convt(y, w.conj() if w.is_complex() else w, stride=geo.stride, padding=0, output_padding=opad,
                   dilation=geo.dilation, groups=geo.groups)
    xx = xx.numpy()
    if geo.circular:
        from .pad import Pad

        P = Pad(geo.in_shape, geo.c_in, geo.padding, "circular", dtype=xx.dtype)
        return P._backward(xx.reshape(B, -1).T)
    cut = (slice(None), slice(None)) + tuple(slice(lo, lo + n) for n, (lo, _) in zip(geo.in_shape, geo.padding))
    return xx[cut].reshape(B, -1).T

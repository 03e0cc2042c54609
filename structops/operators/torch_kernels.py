"""PyTorch's CPU convolution kernels for the products of a :class:`~structops.ConvND` (optional).

With torch installed, ``ConvND(method="torch")`` computes its products with
``torch.nn.functional.conv{1,2,3}d`` (forward) and ``conv_transpose{1,2,3}d``
(adjoint; a ``conv{1,2,3}d`` with the flipped kernel for stride 1 and zero
padding with ``lo = hi <= e - 1``, which ran faster: :func:`flipped_adjoint`)
on zero-copy ``torch.from_numpy`` views of the NumPy columns;
``method="auto"`` does so for float32 products on the host, and for float64
single vectors of 2-D layers (not depthwise) where torch's unfolding of the
input pays (:func:`float64_vectors_faster`, each direction on its own): there
torch's kernels measured faster than the library's own (see
``benchmarks/bench_conv.py`` and :class:`~structops.ConvND`). Zero padding
(asymmetric too, by ``F.pad``) and circular padding
(``F.pad(mode="circular")``, the adjoint folding the borders back) are
covered; the kernel Jacobians keep the library's algorithms.

Notes
-----
The library stores a batch as columns, ``(N, B)``: in memory
``(c, *spatial, B)``, the batch axis last. Torch wants it first. Rather than
transposing (a copy of every input and output, which took 3 to 4 times the
product itself for 16 channels on 64x64 with batch 32), a 1-D or 2-D layer with
a batch multiplies as a ``conv{D+1}d`` whose last spatial axis is the batch,
with a kernel of size 1 and no padding along it: the same numbers, read and
written in place. Depthwise layers keep the transposes (torch's depthwise
kernels are for 2-D images only), as do 3-D layers (there is no ``conv4d``).
The adjoint of a stride-1 layer with zero padding ``lo = hi <= e - 1`` is a
convolution with the flipped kernel, for one image (``conv_transpose2d`` took
up to 1.9x as long in float64) as for a batch on the extra axis
(``conv_transpose{D+1}d`` took 1.2x as long).
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import numpy as np

__all__ = ["available", "forward", "adjoint", "vector_call", "vector"]

# "auto" hands float32 host products to torch when it is installed
AUTO_FLOAT32 = True
# ... and the float64 single-vector products of 2-D layers (not depthwise) where torch's unfolding pays
# (float64_vectors_faster): at least this many outputs per group of its matrix product ...
FLOAT64_OUTPUTS_PER_GROUP = 32
# ... or at most this many entries of the unfolded input
FLOAT64_SMALL_UNFOLD = 2**19


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
    """``torch.from_numpy(a)`` without the warning for read-only arrays (torch only reads them here), and of a
    contiguous copy where ``a`` has a negative stride (a reversed input: torch views none)."""
    if a.ndim and min(a.strides) < 0:
        a = np.ascontiguousarray(a)
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def _unfolding(geo, adjoint: bool, flipped: bool):
    """``(outputs per group, unfolded entries)`` of torch's float64 product for one vector.

    Torch's float64 kernels unfold their input (im2col: ``c_in prod(k)``
    entries per output pixel; none for a 1x1 stride-1 convolution, read as it
    is) and multiply it by the kernel once. The forward is a convolution, the
    adjoint one with the flipped kernel (``flipped``) or a transposed
    convolution, which unfolds the same ``c_in prod(k)`` entries per output
    pixel of the layer, multiplied from its ``c_out / g`` channels.
    """
    taps, g = int(np.prod(geo.kernel_size)), geo.groups
    P_in, P_out = int(np.prod(geo.in_shape)), int(np.prod(geo.out_shape))
    if adjoint and flipped:
        return geo.c_in // g, (0 if taps == 1 else geo.c_out * taps * P_in)
    one = taps == 1 and all(s == 1 for s in geo.stride) and not any(lo or hi for lo, hi in geo.padding)
    return geo.c_out // g, (0 if one and not adjoint else geo.c_in * taps * P_out)


def _unfolding_pays(q: int, entries: int) -> bool:
    return q >= FLOAT64_OUTPUTS_PER_GROUP or entries <= FLOAT64_SMALL_UNFOLD


def flipped_adjoint(geo, dtype) -> bool:
    """Whether torch computes the adjoint as a convolution with the flipped kernel (else transposed).

    Where :func:`adjoint_is_a_conv`; in float64 not where only the
    transposed convolution's unfolding pays (64 -> 3 channels 3x3 on 64x64:
    9.5 ms flipped, 0.8 ms transposed).
    """
    if not adjoint_is_a_conv(geo):
        return False
    if np.dtype(dtype) != np.float64:
        return True
    return _unfolding_pays(*_unfolding(geo, True, True)) or not _unfolding_pays(*_unfolding(geo, True, False))


def float64_vectors_faster(geo, adjoint: bool) -> bool:
    """Whether torch's kernels beat the library's for a float64 single vector of a 2-D layer, not depthwise.

    Where the unfolding pays (:func:`_unfolding`): at least
    :data:`FLOAT64_OUTPUTS_PER_GROUP` outputs per group of torch's matrix
    product, or at most :data:`FLOAT64_SMALL_UNFOLD` unfolded entries.
    Measured one product at a time on 2 threads (library / torch): the ResNet-18
    layers at 224x224 1.0x to 2.7x, its 3 -> 64 7x7 layer 1.5x and 1.3x; the
    ungrouped 1x1 layers of MobileNetV2 1.2x to 3.1x; 16 -> 16 channels 3x3
    on 32x32 2.2x, on 64x64 (590k unfolded entries, 16 outputs) 0.96x and
    0.84x; 64 -> 16 on 64x64 forward 0.8x; 64 -> 1 forward 0.3x.
    """
    if geo.ndim != 2 or (geo.groups > 1 and geo.c_in == geo.groups):
        return False
    if not adjoint:
        return _unfolding_pays(*_unfolding(geo, False, False))
    return _unfolding_pays(*_unfolding(geo, True, flipped_adjoint(geo, np.float64)))


def batch_as_axis(geo, B: int) -> bool:
    """Whether a batch of ``B`` columns is multiplied as one more spatial axis (see the Notes above)."""
    return B > 1 and geo.ndim < 3 and geo.c_in // geo.groups > 1


def _call(layer, make, dtype, batch_axis: bool):
    """``make(layer.geometry, batch_axis, dtype)[:-1] + (weight,)``, worked out once and kept on the layer.

    ``weight`` is the layer's kernel as a tensor of ``dtype`` (with a trailing
    axis of size 1 for the batch axis), mapped by the last entry of what
    ``make`` returns when that is not ``None``. The cache (dropped on pickling) is keyed
    by the function, the dtype object and the layout: one dictionary look-up a
    product, where a single-image product is a few hundred microseconds and
    each microsecond of bookkeeping shows (``np.dtype(...).str`` as a key cost
    about 3).
    """
    cache = layer.__dict__.get("_torch_weights")
    if cache is None:
        cache = layer.__dict__["_torch_weights"] = {}
    key = (make, dtype, batch_axis)
    found = cache.get(key)
    if found is None:
        torch, _ = _F()
        *call, kernel_map = make(layer.geometry, batch_axis, dtype)
        K = layer.kernel if kernel_map is None else kernel_map(layer.kernel)
        w = _tensor(torch, np.ascontiguousarray(K, dtype=dtype))
        found = cache[key] = tuple(call) + (w[..., None] if batch_axis else w,)
    return found


def _flat(pairs):
    out = []
    for lo, hi in reversed(pairs):
        out += [lo, hi]
    return out


def _forward_call(geo, batch_axis: bool, dtype=None):
    """``(conv, (pre_pad, mode), kwargs)`` of the forward product for a geometry, worked out once.

    ``pre_pad`` is the ``F.pad`` argument applied first (``None`` when torch's
    symmetric ``padding=`` covers it): a single-image product takes a few
    hundred microseconds, and working these out on every call was a tenth of it.
    """
    torch, F = _F()
    pad, extra = list(geo.padding), 0
    stride, dilation = tuple(geo.stride), tuple(geo.dilation)
    if batch_axis:
        pad, extra = pad + [(0, 0)], 1
        stride, dilation = stride + (1,), dilation + (1,)
    mode = "constant"
    if geo.circular:
        pre, pad_arg, mode = _flat(pad), 0, "circular"
    elif all(lo == hi for lo, hi in pad):
        pre, pad_arg = None, tuple(lo for lo, _ in pad)
    else:
        pre, pad_arg = _flat(pad), 0
    kwargs = dict(stride=stride, padding=pad_arg, dilation=dilation, groups=geo.groups)
    return getattr(F, f"conv{geo.ndim + extra}d"), (pre, mode), kwargs, None


def forward(layer, X):
    """``layer @ X`` for host ``X`` of shape ``(N, B)``, via ``conv{D}d``: ``(M, B)``.

    Tensors made from NumPy arrays record no gradients, so no
    ``inference_mode`` context is needed (it costs about 4 us a call).
    """
    torch, F = _F()
    geo, B = layer.geometry, X.shape[1]
    axis = batch_as_axis(geo, B)
    conv, (pre, mode), kwargs, weight = _call(layer, _forward_call, X.dtype, axis)
    # reshaped on the NumPy side (a view where torch's reshape would be one too, at a tenth of its cost)
    if axis:
        x = _tensor(torch, X.reshape((1, geo.c_in) + geo.in_shape + (B,)))
    else:
        x = _tensor(torch, X.T.reshape((B, geo.c_in) + geo.in_shape))
    if pre is not None:
        x = F.pad(x, pre, mode=mode)
    y = conv(x, weight, **kwargs).numpy()
    return y.reshape(-1, B) if axis else y.reshape(B, -1).T


def vector_call(layer, dtype, adjoint: bool = False):
    """What :func:`vector` needs for flat vectors of ``dtype``, worked out once; ``None`` where they take
    :func:`forward` / :func:`adjoint` (a padding or border of its own before or after torch's call)."""
    torch, _ = _F()
    geo = layer.geometry
    if adjoint:
        conv, kwargs, cut, weight = _call(layer, _adjoint_call, dtype, False)
        if cut is not None or geo.circular:
            return None
        return (layer.shape[0],), (1, geo.c_out) + geo.out_shape, torch.from_numpy, conv, weight, kwargs
    conv, (pre, _), kwargs, weight = _call(layer, _forward_call, dtype, False)
    if pre is not None:
        return None
    return (layer.shape[1],), (1, geo.c_in) + geo.in_shape, torch.from_numpy, conv, weight, kwargs


def vector(call, x):
    """The product of one flat host vector ``x`` (of the dtype of ``call``, from :func:`vector_call`).

    :func:`forward` and :func:`adjoint` for ``B = 1`` with their layout worked
    out once. A single image of 16 -> 16 channels 3x3 on 64x64 in float32 is
    about 170 us in torch's kernel, and each Python step around it costs three
    to four times what it does after a tiny product (the kernel has had the
    caches): measured call by call, interleaved, ``op.matvec`` took 9.5 us
    more than torch's call with its ``from_numpy`` and ``.numpy()`` through
    the general path, and 3 to 5 us more this way.
    """
    _, shape, from_numpy, conv, weight, kwargs = call
    x = x.reshape(shape)
    # (a flat vector's view has strides of one sign: the last says whether torch can view it)
    t = from_numpy(x) if x.flags.writeable and x.strides[-1] > 0 else _tensor(_F()[0], x)
    return conv(t, weight, **kwargs).numpy().reshape(-1)


def adjoint_is_a_conv(geo) -> bool:
    """Whether the adjoint can run as a convolution with the flipped kernel (:func:`_adjoint_conv_call`;
    :func:`flipped_adjoint` says whether it does)."""
    return (not geo.circular and all(s == 1 for s in geo.stride)
            and all(lo == hi <= d * (k - 1) for (lo, hi), d, k in zip(geo.padding, geo.dilation, geo.kernel_size)))


def _adjoint_call(geo, batch_axis: bool, dtype):
    """``(conv, kwargs, cut, kernel_map)`` of the adjoint product for a geometry, worked out once.

    A convolution with the flipped kernel where :func:`flipped_adjoint`
    (:func:`_adjoint_conv_call`), else a transposed convolution
    (:func:`_adjoint_transposed_call`); ``cut`` (or ``None``) takes the image
    out of the grid the call returns.
    """
    if flipped_adjoint(geo, dtype):
        return _adjoint_conv_call(geo, batch_axis)
    return _adjoint_transposed_call(geo, batch_axis)


def _adjoint_transposed_call(geo, batch_axis: bool):
    """``(conv_transpose, kwargs, cut, None)``: the adjoint as torch's transposed convolution.

    The transposed product covers the whole padded grid (``output_padding``,
    always below the stride, makes up the rows no output reads). Torch drops a
    symmetric zero padding itself (``padding=``, ``cut`` is ``None``); otherwise
    ``cut`` takes the image out of the padded grid.
    """
    torch, F = _F()
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(geo.in_shape, geo.padding))
    opad = tuple(P - ((m - 1) * s + d * (k - 1) + 1)
                 for P, m, s, d, k in zip(padded, geo.out_shape, geo.stride, geo.dilation, geo.kernel_size))
    stride, dilation = tuple(geo.stride), tuple(geo.dilation)
    symmetric = not geo.circular and all(lo == hi for lo, hi in geo.padding)
    pad = tuple(lo for lo, _ in geo.padding) if symmetric else (0,) * geo.ndim
    cut = None if symmetric else (
        (slice(None), slice(None)) + tuple(slice(lo, lo + n) for n, (lo, _) in zip(geo.in_shape, geo.padding)))
    if batch_axis:
        opad, stride, dilation, pad = opad + (0,), stride + (1,), dilation + (1,), pad + (0,)
        cut = None if cut is None else cut + (slice(None),)
    kwargs = dict(stride=stride, padding=pad, output_padding=opad, dilation=dilation, groups=geo.groups)
    return getattr(F, f"conv_transpose{geo.ndim + batch_axis}d"), kwargs, cut, None


def _adjoint_conv_call(geo, batch_axis: bool):
    """``(conv, kwargs, None, kernel_map)``: the adjoint of a stride-1 zero-padded layer as a convolution.

    ``x*[q] = sum_d K[d]^T y[q - d delta + lo] = sum_d K'[d] y[q + d delta - lo']`` with ``K'``
    the kernel flipped along every spatial axis and with each group's channel
    block transposed, and ``lo' = e - 1 - lo``. Torch's ``conv2d`` ran faster
    than its ``conv_transpose2d`` for one image: float64, 16 -> 16 3x3 on
    64x64, 1.8 ms against 3.4 ms, 64 -> 64 on 56x56 6.6 against 10.4 ms;
    float32 16 -> 16 0.39 to 0.44 against 0.43 to 0.56 ms, and the same for
    64 and 128 channels (depthwise layers: the same within noise). On the
    batch axis ``conv3d`` measured as fast as the batch-first
    ``conv_transpose2d`` (16 -> 16 3x3 on 64x64, batch 32), where
    ``conv_transpose3d`` took 1.2x that.
    """
    torch, F = _F()
    g, D = geo.groups, geo.ndim
    pad = tuple(d * (k - 1) - lo for (lo, _), d, k in zip(geo.padding, geo.dilation, geo.kernel_size))
    dilation = tuple(geo.dilation)
    if batch_axis:
        pad, dilation = pad + (0,), dilation + (1,)

    def flipped(K):
        co, cig = K.shape[:2]
        Kt = K.reshape((g, co // g, cig) + K.shape[2:]).swapaxes(1, 2).reshape((g * cig, co // g) + K.shape[2:])
        return Kt[(slice(None), slice(None)) + (slice(None, None, -1),) * D].copy()  # torch takes no negative strides

    kwargs = dict(stride=1, padding=pad, dilation=dilation, groups=g)
    return getattr(F, f"conv{D + batch_axis}d"), kwargs, None, flipped


def adjoint(layer, Y):
    """``layer.H @ Y`` for host ``Y`` of shape ``(M, B)``, via ``conv{D}d`` or ``conv_transpose{D}d``: ``(N, B)``."""
    torch, F = _F()
    geo, B = layer.geometry, Y.shape[1]
    axis = batch_as_axis(geo, B)
    conv, kwargs, cut, weight = _call(layer, _adjoint_call, Y.dtype, axis)
    if axis:
        y = _tensor(torch, Y.reshape((1, geo.c_out) + geo.out_shape + (B,)))
    else:
        y = _tensor(torch, Y.T.reshape((B, geo.c_out) + geo.out_shape))
    xx = conv(y, weight, **kwargs).numpy()
    if geo.circular:  # the borders folded back onto the image
        from .pad import Pad

        P = Pad(geo.in_shape, geo.c_in, geo.padding, "circular", dtype=xx.dtype)
        if axis:  # (1, c, *padded, B): the batch already last
            return P._backward(xx.reshape(-1, B))
        return P._backward(xx.reshape(B, -1).T)
    if cut is not None:
        xx = xx[cut]
    return xx.reshape(-1, B) if axis else xx.reshape(B, -1).T

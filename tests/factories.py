"""Registry of small operator instances for the generic contract tests.

Every factory ``make_*(xp, rng, dtype) -> Case`` builds an operator on the
array backend ``xp`` with parameters of ``dtype`` drawn from ``rng``, together
with its dense matrix from the independent builders of :mod:`dense`. Operators
with a parameter Jacobian also give their current parameter array ``param``
and ``rebuild(theta)``, the operator for other parameters, so a generic test
can check ``op.jacobian(x)`` against ``theta -> rebuild(theta) @ x``.

Dense matrices stay small (at most a few hundred rows and columns).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import structops
from structops._backend import to_numpy

from dense import dense_circulant_nd, dense_conv, dense_extended, dense_toeplitz, out_shape, padding_pairs

REAL = (np.float64, np.float32)
COMPLEX = (np.complex128,)

FACTORIES: dict[str, Callable] = {}
DTYPES: dict[str, tuple] = {}


@dataclass
class Case:
    """One operator instance with everything a generic test needs."""

    op: object
    dense: np.ndarray
    param: object = None  # current parameters (array of the op's backend), or None
    rebuild: Callable | None = None  # theta -> operator of the same family
    family: str = ""  # "toeplitz", "circulant" or "conv"
    torch_apply: Callable | None = None  # (theta_t, X_t (N, B)) -> (M, B), torch tensors
    info: dict = field(default_factory=dict)

    @property
    def has_jacobian(self) -> bool:
        return self.param is not None


def register(dtypes=REAL):
    """Decorator: add ``make_<name>`` to :data:`FACTORIES` under ``<name>``."""

    def deco(fn):
        name = fn.__name__.removeprefix("make_")
        if name in FACTORIES:
            raise RuntimeError(f"duplicate factory {name}")
        FACTORIES[name] = fn
        DTYPES[name] = tuple(np.dtype(d) for d in dtypes)
        return fn

    return deco


def cases():
    """``(name, dtype)`` pairs of every registered factory."""
    return [(name, dt) for name in FACTORIES for dt in DTYPES[name]]


def random_array(rng, shape, dtype):
    """Standard normal array (complex if ``dtype`` is), on the host."""
    dtype = np.dtype(dtype)
    a = rng.standard_normal(shape)
    if dtype.kind == "c":
        a = a + 1j * rng.standard_normal(shape)
    return a.astype(dtype)


# ---------------------------------------------------------------- Toeplitz


def _toeplitz_index(m, n):
    """``idx[i, j]`` into ``theta = concat(c, r[1:])``."""
    idx = np.empty((m, n), dtype=np.int64)
    for i in range(m):
        for j in range(n):
            idx[i, j] = i - j if i >= j else m + (j - i) - 1
    return idx


def _toeplitz_case(xp, rng, dtype, m, n):
    c = random_array(rng, m, dtype)
    r = random_array(rng, n, dtype)
    r[0] = c[0]
    op = structops.Toeplitz(xp.asarray(c), xp.asarray(r))

    def rebuild(theta):
        r_new = xp.concatenate([theta[:1], theta[m:]])
        return structops.Toeplitz(theta[:m], r_new)

    idx = _toeplitz_index(m, n)

    def torch_apply(theta, X):
        return theta[idx] @ X

    theta = xp.asarray(np.concatenate([c, r[1:]]))
    return Case(op, dense_toeplitz(c, r), theta, rebuild, "toeplitz", torch_apply)


@register(REAL + COMPLEX)
def make_toeplitz_square(xp, rng, dtype):
    return _toeplitz_case(xp, rng, dtype, 7, 7)


@register(REAL)
def make_toeplitz_wide(xp, rng, dtype):
    return _toeplitz_case(xp, rng, dtype, 4, 9)


@register(REAL)
def make_toeplitz_tall(xp, rng, dtype):
    return _toeplitz_case(xp, rng, dtype, 9, 4)


@register(COMPLEX)
def make_toeplitz_complex_rect(xp, rng, dtype):
    return _toeplitz_case(xp, rng, dtype, 5, 8)


@register(REAL)
def make_toeplitz_symmetric(xp, rng, dtype):
    """``r=None``: symmetric Toeplitz, parameters are ``c`` alone."""
    m = 6
    c = random_array(rng, m, dtype)
    op = structops.Toeplitz(xp.asarray(c))
    idx = np.abs(np.subtract.outer(np.arange(m), np.arange(m)))

    def torch_apply(theta, X):
        return theta[idx] @ X

    return Case(
        op, dense_toeplitz(c, None), xp.asarray(c), structops.Toeplitz, "toeplitz", torch_apply
    )


@register(COMPLEX)
def make_toeplitz_hermitian(xp, rng, dtype):
    """Complex ``c`` with ``r=None``: Hermitian Toeplitz (no Jacobian)."""
    c = random_array(rng, 6, dtype)
    return Case(structops.Toeplitz(xp.asarray(c)), dense_toeplitz(c, None), family="toeplitz")


# --------------------------------------------------------------- Circulant


def _circulant_index(shape):
    shape = tuple(shape)
    pos = np.array(list(np.ndindex(*shape))).reshape(-1, len(shape))
    diff = (pos[:, None, :] - pos[None, :, :]) % np.array(shape)
    return np.ravel_multi_index(tuple(diff[..., a] for a in range(len(shape))), shape)


def _circulant_case(xp, rng, dtype, shape):
    c = random_array(rng, shape, dtype)
    op = structops.Circulant(xp.asarray(c))
    idx = _circulant_index(shape)

    def torch_apply(theta, X):
        return theta.reshape(-1)[idx] @ X

    return Case(
        op, dense_circulant_nd(c), xp.asarray(c), structops.Circulant, "circulant", torch_apply
    )


@register(REAL)
def make_circulant_1d(xp, rng, dtype):
    return _circulant_case(xp, rng, dtype, (8,))


@register(COMPLEX)
def make_circulant_1d_complex(xp, rng, dtype):
    return _circulant_case(xp, rng, dtype, (6,))


@register(REAL + COMPLEX)
def make_circulant_2d(xp, rng, dtype):
    return _circulant_case(xp, rng, dtype, (4, 5))


@register(REAL)
def make_circulant_3d(xp, rng, dtype):
    return _circulant_case(xp, rng, dtype, (3, 4, 2))


# ------------------------------------------------------------ convolutions


def torch_conv(K, X, in_shape, stride, pairs, dilation, circular):
    """Reference layer in PyTorch: explicit ``F.pad`` then an unpadded conv.

    ``K`` is ``(c_out, c_in, *k)``, ``X`` is ``(N, B)`` (columns are flattened
    ``(c_in, *in_shape)`` images); returns ``(M, B)``.
    """
    import torch.nn.functional as F

    D = K.ndim - 2
    B = X.shape[1]
    x = X.T.reshape(B, K.shape[1], *in_shape)
    pad = []
    for lo, hi in reversed(pairs):
        pad += [lo, hi]
    x = F.pad(x, pad, mode="circular" if circular else "constant")
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[D]
    y = conv(x, K, stride=tuple(stride), dilation=tuple(dilation))
    return y.reshape(B, -1).T


def conv_case(xp, rng, dtype, kshape, in_shape, stride=1, padding="same", dilation=1,
              method="auto", cls="nd"):
    """Case for a conv layer; ``cls`` is ``"1d"``, ``"2d"``, ``"3d"`` or ``"nd"``."""
    in_shape = tuple(in_shape)
    D = len(kshape) - 2
    K = random_array(rng, kshape, dtype)
    kw = dict(stride=stride, padding=padding, dilation=dilation, method=method)

    def build(kernel):
        if cls == "1d":
            return structops.Conv1D(kernel, in_shape[0], **kw)
        if cls == "2d":
            return structops.Conv2D(kernel, in_shape, **kw)
        if cls == "3d":
            return structops.Conv3D(kernel, in_shape, **kw)
        return structops.ConvND(kernel, in_shape, **kw)

    op = build(xp.asarray(K))
    pairs = padding_pairs(padding, kshape[2:], dilation, in_shape)
    s = (stride,) * D if isinstance(stride, int) else tuple(stride)
    dil = (dilation,) * D if isinstance(dilation, int) else tuple(dilation)
    circular = padding == "circular"
    dense = dense_conv(K, in_shape, s, pairs, dil, circular)

    def torch_apply(theta, X):
        return torch_conv(theta, X, in_shape, s, pairs, dil, circular)

    info = dict(in_shape=in_shape, stride=s, dilation=dil, pairs=pairs, circular=circular,
                padding=padding, method=method)
    return Case(op, dense, xp.asarray(K), build, "conv", torch_apply, info)


def _conv(name, kshape, in_shape, cls, dtypes=REAL, **kw):
    def make(xp, rng, dtype):
        return conv_case(xp, rng, dtype, kshape, in_shape, cls=cls, **kw)

    make.__name__ = "make_" + name
    register(dtypes)(make)


# Conv1D
_conv("conv1d_same", (2, 2, 3), (10,), "1d")
_conv("conv1d_valid", (2, 1, 4), (9,), "1d", padding="valid")
_conv("conv1d_full", (1, 2, 4), (7,), "1d", padding="full")
_conv("conv1d_circular", (2, 2, 5), (8,), "1d", padding="circular")
_conv("conv1d_int_padding", (2, 2, 3), (8,), "1d", padding=2)
_conv("conv1d_stride2", (2, 2, 3), (11,), "1d", stride=2)
_conv("conv1d_dilation2", (2, 2, 3), (12,), "1d", dilation=2)
_conv("conv1d_channels", (4, 2, 3), (9,), "1d", padding="valid")
_conv("conv1d_circular_stride_dilation", (2, 3, 3), (10,), "1d", padding="circular",
      stride=2, dilation=2)
_conv("conv1d_pair_padding_fft", (3, 2, 4), (9,), "1d", padding=((2, 1),), method="fft")
_conv("conv1d_full_direct", (2, 2, 5), (6,), "1d", padding="full", method="direct")
# Conv2D
_conv("conv2d_same3x3", (2, 2, 3, 3), (6, 6), "2d")
_conv("conv2d_circular3x3", (2, 2, 3, 3), (5, 6), "2d", padding="circular")
_conv("conv2d_valid_stride2", (2, 2, 3, 3), (7, 8), "2d", padding="valid", stride=2)
_conv("conv2d_full", (1, 2, 3, 2), (5, 4), "2d", padding="full")
_conv("conv2d_dilation2", (2, 1, 3, 3), (7, 7), "2d", dilation=2)
_conv("conv2d_tuple_padding", (2, 2, 3, 3), (5, 6), "2d", padding=((1, 0), (2, 1)))
_conv("conv2d_nonsquare", (2, 2, 3, 3), (4, 9), "2d")
_conv("conv2d_channels", (5, 3, 3, 3), (5, 5), "2d")
_conv("conv2d_1x1", (4, 3, 1, 1), (5, 6), "2d", padding="valid")
_conv("conv2d_5x3", (2, 2, 5, 3), (7, 6), "2d")
_conv("conv2d_mixed", (2, 2, 3, 2), (7, 6), "2d", stride=(2, 1), dilation=(1, 2),
      padding=(1, (0, 2)))
_conv("conv2d_same_fft", (2, 2, 3, 3), (6, 7), "2d", method="fft")
_conv("conv2d_same_direct", (2, 2, 3, 3), (6, 7), "2d", method="direct")
_conv("conv2d_circular_fft", (2, 2, 3, 5), (5, 6), "2d", padding="circular", method="fft")
_conv("conv2d_circular_direct", (2, 2, 3, 5), (5, 6), "2d", padding="circular",
      method="direct")
_conv("conv2d_strided_fft", (2, 3, 3, 3), (8, 7), "2d", padding="valid", stride=(2, 3),
      dilation=(1, 2), method="fft")
_conv("conv2d_strided_direct", (2, 3, 3, 3), (8, 7), "2d", padding="valid", stride=(2, 3),
      dilation=(1, 2), method="direct")
_conv("conv2d_full_fft", (2, 1, 2, 3), (4, 5), "2d", padding="full", method="fft")
# Conv3D
_conv("conv3d_same", (2, 2, 3, 3, 3), (4, 4, 4), "3d")
_conv("conv3d_valid_stride", (2, 1, 2, 3, 2), (5, 4, 4), "3d", padding="valid",
      stride=(2, 1, 2))
_conv("conv3d_circular", (1, 2, 3, 1, 3), (3, 4, 5), "3d", padding="circular")
_conv("conv3d_full_fft", (1, 1, 2, 2, 2), (3, 3, 2), "3d", padding="full", method="fft")
# ConvND used directly
_conv("convnd_1d", (2, 3, 3), (7,), "nd", padding=1, stride=2)
_conv("convnd_2d", (3, 2, 3, 3), (5, 4), "nd", padding="circular", dilation=(1, 1))


# ExtendedConv: per-pixel kernels; the parameters are the per-pixel weights
def extended_case(xp, rng, dtype, kshape, in_shape, stride=1, padding="same", dilation=1):
    in_shape = tuple(in_shape)
    D = len(in_shape)
    pairs = padding_pairs(padding, kshape[2:], dilation, in_shape)
    s = (stride,) * D if isinstance(stride, int) else tuple(stride)
    dil = (dilation,) * D if isinstance(dilation, int) else tuple(dilation)
    oshape = out_shape(in_shape, kshape[2:], s, pairs, dil)
    w = random_array(rng, tuple(kshape) + tuple(oshape), dtype)
    circular = padding == "circular"

    def build(weights):
        return structops.ExtendedConvND(weights, in_shape, stride=stride, padding=padding, dilation=dilation)

    dense = dense_extended(w, in_shape, s, pairs, dil, circular)

    def torch_apply(theta, X):
        return torch_extended(theta, X, in_shape, s, pairs, dil, circular)

    return Case(build(xp.asarray(w)), dense, xp.asarray(w), build, "extended", torch_apply,
                dict(in_shape=in_shape, stride=s, dilation=dil, pairs=pairs, circular=circular))


def torch_extended(w, X, in_shape, stride, pairs, dilation, circular):
    """Reference extended layer in PyTorch by gathering the pixel each tap reads.

    ``w`` is ``(c_out, c_in, *k, *out)``, ``X`` is ``(N, B)``; returns ``(M, B)``.
    """
    import torch

    D = len(in_shape)
    c_out, c_in = w.shape[:2]
    k, oshape = tuple(w.shape[2:2 + D]), tuple(w.shape[2 + D:])
    taps = list(itertools.product(*(range(kk) for kk in k)))
    pix = list(itertools.product(*(range(m) for m in oshape)))
    idx = np.full((len(taps), len(pix)), -1)
    for t, d in enumerate(taps):
        for j, p in enumerate(pix):
            q = [p[a] * stride[a] + d[a] * dilation[a] - pairs[a][0] for a in range(D)]
            if circular:
                q = [qa % n for qa, n in zip(q, in_shape)]
            if all(0 <= qa < n for qa, n in zip(q, in_shape)):
                idx[t, j] = np.ravel_multi_index(q, in_shape)
    B = X.shape[1]
    x = X.T.reshape(B, c_in, -1)
    x = torch.cat([x, torch.zeros(B, c_in, 1, dtype=x.dtype)], dim=2)  # index -1: a zero
    xg = x[:, :, torch.as_tensor(idx)]  # (B, c_in, T, P)
    y = torch.einsum("oitp,bitp->bop", w.reshape(c_out, c_in, len(taps), len(pix)), xg)
    return y.reshape(B, -1).T


def _extended(name, kshape, in_shape, **kw):
    def make(xp, rng, dtype):
        return extended_case(xp, rng, dtype, kshape, in_shape, **kw)

    make.__name__ = "make_" + name
    register(REAL)(make)


_extended("extended2d_same", (1, 1, 3, 3), (6, 5))
_extended("extended2d_channels", (3, 2, 3, 3), (5, 5))
_extended("extended2d_circular", (2, 2, 3, 3), (5, 6), padding="circular")
_extended("extended2d_valid_stride2", (2, 1, 3, 2), (7, 6), padding="valid", stride=2)
_extended("extended2d_dilation", (1, 2, 3, 3), (7, 7), dilation=(2, 1), padding=((2, 1), (1, 1)))
_extended("extended1d_full", (2, 2, 3), (6,), padding="full")


def host(a):
    """Host (NumPy) copy."""
    return np.asarray(to_numpy(a))

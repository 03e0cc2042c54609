"""Convolution layers against PyTorch, the reference of the kernel convention.

``torch.nn.functional.conv1d/2d/3d`` is cross-correlation with kernels
``(c_out, c_in, *k)``: exactly the layer's definition. Circular padding goes
through ``F.pad(mode="circular")``; the adjoint is checked against
``conv_transpose`` and autograd, the Jacobian adjoint against the autograd
weight gradient. Double precision throughout.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import structops  # noqa: E402

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
CLS = {1: structops.Conv1D, 2: structops.Conv2D, 3: structops.Conv3D}


def layer(K, in_shape, **kw):
    D = K.ndim - 2
    if D == 1:
        return structops.Conv1D(K, in_shape[0], **kw)
    return CLS[D](K, tuple(in_shape), **kw)


def to_batch(X, c, in_shape):
    """``(N, B)`` columns -> torch ``(B, c, *in_shape)``."""
    return torch.from_numpy(np.ascontiguousarray(X.T)).reshape(X.shape[1], c, *in_shape)


def from_batch(y):
    """torch ``(B, c, *shape)`` -> ``(M, B)`` columns."""
    return y.reshape(y.shape[0], -1).T.numpy()


def torch_layer(K, x, padding, stride, dilation):
    """Torch reference; ``padding`` is an int, 'same', 'valid' or 'circular'."""
    D = K.ndim - 2
    Kt = torch.from_numpy(K)
    if padding == "circular":
        e = [dilation * (k - 1) + 1 for k in K.shape[2:]]
        pad = []
        for ea in reversed(e):
            pad += [(ea - 1) // 2] * 2
        x = F.pad(x, pad, mode="circular")
        padding = 0
    return CONV[D](x, Kt, stride=stride, padding=padding, dilation=dilation)


# (kernel shape, input shape, padding, stride, dilation); torch's 'same' needs stride 1
CONFIGS = [
    ((2, 3, 3), (11,), 1, 1, 1),
    ((2, 3, 3), (11,), "same", 1, 1),
    ((3, 2, 5), (12,), "valid", 2, 1),
    ((2, 2, 3), (10,), 2, 3, 2),
    ((2, 2, 3), (10,), "circular", 1, 2),
    ((2, 2, 3), (10,), "circular", 2, 1),
    ((2, 3, 3, 3), (6, 7), 1, 1, 1),
    ((2, 3, 3, 3), (6, 7), "same", 1, 1),
    ((3, 2, 3, 5), (6, 7), "same", 1, 1),
    ((3, 2, 3, 3), (7, 8), "valid", 2, 1),
    ((2, 2, 3, 3), (8, 8), 2, 2, 2),
    ((2, 2, 3, 3), (8, 7), "same", 1, 2),
    ((2, 2, 3, 3), (5, 6), "circular", 1, 1),
    ((2, 2, 3, 3), (7, 6), "circular", 2, 1),
    ((2, 2, 3, 3, 3), (4, 5, 4), 1, 1, 1),
    ((2, 1, 3, 3, 3), (5, 5, 5), "valid", 2, 1),
    ((1, 2, 3, 1, 3), (3, 4, 5), "circular", 1, 1),
    # zero padding wider than 'full' (pad > e - 1): outputs that see only zeros
    ((2, 1, 3), (7,), 3, 1, 1),
    ((2, 2, 1, 3), (4, 5), 2, 1, 1),
]
IDS = [f"{len(k) - 2}d-{p}-s{s}-d{d}" for k, _, p, s, d in CONFIGS]
METHODS = ["auto", "direct", "fft"]


@pytest.fixture(params=CONFIGS, ids=IDS)
def config(request):
    return request.param


@pytest.mark.parametrize("method", METHODS)
def test_forward_matches_torch_batched(config, method, rng):
    kshape, in_shape, padding, stride, dilation = config
    K = rng.standard_normal(kshape)
    op = layer(K, in_shape, padding=padding, stride=stride, dilation=dilation, method=method)
    B = 3
    X = rng.standard_normal((op.shape[1], B))
    want = from_batch(torch_layer(K, to_batch(X, kshape[1], in_shape), padding, stride,
                                  dilation))
    assert op.shape[0] == want.shape[0]
    np.testing.assert_allclose(op.matmat(X), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(op.matvec(X[:, 1]), want[:, 1], rtol=1e-10, atol=1e-12)
    # the N-D form: (*dims, B) in, (*dimsd, B) out
    Y = op @ X.reshape(*op.dims, B)
    np.testing.assert_allclose(Y.reshape(-1, B), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_adjoint_matches_autograd(config, method, rng):
    kshape, in_shape, padding, stride, dilation = config
    K = rng.standard_normal(kshape)
    op = layer(K, in_shape, padding=padding, stride=stride, dilation=dilation, method=method)
    B = 2
    Y = rng.standard_normal((op.shape[0], B))
    x = torch.zeros(B, kshape[1], *in_shape, dtype=torch.float64, requires_grad=True)
    out = torch_layer(K, x, padding, stride, dilation)
    (out * torch.from_numpy(np.ascontiguousarray(Y.T)).reshape(out.shape)).sum().backward()
    want = x.grad.reshape(B, -1).T.numpy()
    np.testing.assert_allclose(op.rmatmat(Y), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_jacobian_adjoint_matches_weight_grad(config, method, rng):
    kshape, in_shape, padding, stride, dilation = config
    K = rng.standard_normal(kshape)
    op = layer(K, in_shape, padding=padding, stride=stride, dilation=dilation, method=method)
    B = 3
    X = rng.standard_normal((op.shape[1], B))
    W = rng.standard_normal((op.shape[0], B))
    Kt = torch.from_numpy(K.copy()).requires_grad_(True)
    xt = to_batch(X, kshape[1], in_shape)
    D = len(kshape) - 2
    if padding == "circular":
        pad = []
        for k in reversed(kshape[2:]):
            pad += [(dilation * (k - 1)) // 2] * 2
        out = CONV[D](F.pad(xt, pad, mode="circular"), Kt, stride=stride, dilation=dilation)
    else:
        out = CONV[D](xt, Kt, stride=stride, padding=padding, dilation=dilation)
    (out * torch.from_numpy(np.ascontiguousarray(W.T)).reshape(out.shape)).sum().backward()
    want = Kt.grad.numpy()
    # batched Jacobian: gradient summed over the batch
    got = op.jacobian(X).rmatvec(W.ravel()).reshape(kshape)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # single sample
    Kt.grad = None
    out = CONV[D](F.pad(xt[:1], pad, mode="circular") if padding == "circular" else xt[:1],
                  Kt, stride=stride, dilation=dilation,
                  padding=0 if padding == "circular" else padding)
    (out * torch.from_numpy(np.ascontiguousarray(W[:, 0])).reshape(out.shape)).sum().backward()
    got1 = op.jacobian(X[:, 0]).rmatvec(W[:, 0]).reshape(kshape)
    np.testing.assert_allclose(got1, Kt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "kshape,in_shape,padding,stride,dilation",
    [
        ((3, 2, 3, 3), (7, 8), 1, 2, 1),
        ((2, 3, 3, 3), (10, 11), 0, 3, 1),
        ((2, 2, 3, 3), (8, 7), 2, 1, 2),
        ((2, 3, 5), (12,), 2, 2, 1),
        ((2, 2, 3, 3, 3), (5, 4, 5), 1, 2, 1),
    ],
)
def test_adjoint_is_conv_transpose(kshape, in_shape, padding, stride, dilation, rng):
    """For zero padding the adjoint is torch's transposed convolution."""
    K = rng.standard_normal(kshape)
    D = len(kshape) - 2
    op = layer(K, in_shape, padding=padding, stride=stride, dilation=dilation)
    # rows of the input that no output reads come back through output_padding
    output_padding = tuple(
        n - ((m - 1) * stride - 2 * padding + dilation * (k - 1) + 1)
        for n, m, k in zip(in_shape, op.dimsd[1:], kshape[2:])
    )
    B = 2
    Y = rng.standard_normal((op.shape[0], B))
    yt = torch.from_numpy(np.ascontiguousarray(Y.T)).reshape(B, *op.dimsd)
    xt = CONVT[D](yt, torch.from_numpy(K), stride=stride, padding=padding,
                  output_padding=output_padding, dilation=dilation)
    assert tuple(xt.shape[1:]) == tuple(op.dims)
    np.testing.assert_allclose(op.rmatmat(Y), from_batch(xt), rtol=1e-10, atol=1e-12)


def test_float32_matches_torch_float32(rng):
    K = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    op = structops.Conv2D(K, (9, 8), padding=1, stride=2)
    X = rng.standard_normal((op.shape[1], 2)).astype(np.float32)
    got = op.matmat(X)
    assert got.dtype == np.float32
    want = from_batch(F.conv2d(to_batch(X, 2, (9, 8)), torch.from_numpy(K), stride=2, padding=1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

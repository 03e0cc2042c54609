"""Grouped convolutions (``groups=g``, depthwise when ``g = c_in``) against PyTorch and dense matrices.

The kernel is ``(c_out, c_in / g, *k)`` exactly as ``torch.nn.functional.conv2d(groups=g)``;
products, adjoints, the kernel Jacobian and the spectra are checked on
hypothesis-drawn shapes, with the direct and the FFT algorithm.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import structops
from structops.testing import assert_adjoint, assert_matches_dense, check_operator, taylor_test

torch = pytest.importorskip("torch")
F = torch.nn.functional
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@st.composite
def grouped_configs(draw):
    D = draw(st.sampled_from([1, 2, 3]))
    g = draw(st.integers(1, 4))
    cig, cog = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 3)) for _ in range(D))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(D))
    e = [d * (kk - 1) + 1 for kk, d in zip(k, dil)]
    nmax = {1: 12, 2: 7, 3: 4}[D]
    in_shape = tuple(draw(st.integers(ea, ea + nmax)) for ea in e)
    stride = tuple(draw(st.integers(1, 3)) for _ in range(D))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(D))
    return dict(D=D, g=g, c_in=g * cig, c_out=g * cog, k=k, dilation=dil, in_shape=in_shape, stride=stride,
                padding=pad, seed=draw(st.integers(0, 2**31 - 1)), method=draw(st.sampled_from(["direct", "fft"])))


def _torch(K, X, cfg):
    """``torch.conv{D}d(groups=g)`` of the columns of ``X``, as columns."""
    B = X.shape[1]
    x = torch.from_numpy(np.ascontiguousarray(X.T)).reshape(B, cfg["c_in"], *cfg["in_shape"])
    y = CONV[cfg["D"]](x, torch.from_numpy(K), stride=cfg["stride"], padding=cfg["padding"],
                       dilation=cfg["dilation"], groups=cfg["g"])
    return y.reshape(B, -1).T.numpy()


def _layer(K, cfg):
    return structops.ConvND(K, cfg["in_shape"], stride=cfg["stride"], padding=cfg["padding"],
                            dilation=cfg["dilation"], groups=cfg["g"], method=cfg["method"])


@settings(max_examples=60, deadline=None)
@given(cfg=grouped_configs())
def test_grouped_layer_matches_torch_and_the_contract(cfg):
    rng = np.random.default_rng(cfg["seed"])
    K = rng.standard_normal((cfg["c_out"], cfg["c_in"] // cfg["g"], *cfg["k"]))
    op = _layer(K, cfg)
    assert op.groups == cfg["g"] and op.dims[0] == cfg["c_in"] and op.dimsd[0] == cfg["c_out"]
    X = rng.standard_normal((op.shape[1], 3))
    ref = _torch(K, X, cfg)
    np.testing.assert_allclose(op @ X, ref, rtol=0, atol=1e-12 * max(1.0, np.abs(ref).max()))
    if op.tosparse().nnz == 0:  # every output reads padding only: the zero map (relative dot tests are meaningless)
        return
    # the adjoint is torch's gradient of <y, w> in x
    W = rng.standard_normal((op.shape[0], 3))
    x = torch.from_numpy(np.ascontiguousarray(X.T)).reshape(3, cfg["c_in"], *cfg["in_shape"]).requires_grad_()
    y = CONV[cfg["D"]](x, torch.from_numpy(K), stride=cfg["stride"], padding=cfg["padding"],
                       dilation=cfg["dilation"], groups=cfg["g"])
    (y.reshape(3, -1) * torch.from_numpy(np.ascontiguousarray(W.T))).sum().backward()
    grad = x.grad.reshape(3, -1).T.numpy()
    np.testing.assert_allclose(op.H @ W, grad, rtol=0, atol=1e-12 * max(1.0, np.abs(grad).max()))
    assert_adjoint(op, rng=rng)
    assert_matches_dense(op, op.tosparse().toarray(), rng=rng)
    # the kernel Jacobian: J dK = conv(x, dK), its adjoint the weight gradient
    J = op.jacobian(X)
    assert_adjoint(J, rng=rng)
    dK = rng.standard_normal(K.shape)
    np.testing.assert_allclose((J @ dK.ravel()).reshape(op.shape[0], 3), _torch(dK, X, cfg), rtol=0,
                               atol=1e-12 * max(1.0, np.abs(ref).max()))


def test_grouped_layer_passes_the_operator_contract():
    K = np.random.default_rng(0).standard_normal((6, 2, 3, 3))
    op = structops.Conv2D(K, (7, 6), stride=(1, 2), groups=3)
    check_operator(op, op.tosparse().toarray())


def test_taylor_of_a_nonlinear_map_through_a_grouped_layer():
    rng = np.random.default_rng(1)
    K = rng.standard_normal((4, 1, 3, 3))
    op = structops.Conv2D(K, (6, 6), groups=4)
    x = rng.standard_normal(op.shape[1])
    y0 = op @ x

    def f(k):
        return (op.with_kernel(k.reshape(K.shape)) @ x) ** 2

    def jac(v):
        return 2 * y0 * (op.jacobian(x) @ v.ravel())

    taylor_test(f, jac, K.ravel(), rng=rng)


@pytest.mark.parametrize("g, cig, cog", [(2, 2, 3), (4, 1, 1), (4, 1, 2), (3, 2, 1)])
@pytest.mark.parametrize("padding", ["same", "valid", "circular"])
def test_grouped_spectrum_is_the_union_of_the_groups(g, cig, cog, padding):
    K = np.random.default_rng(g + cig).standard_normal((g * cog, cig, 3, 3))
    op = structops.Conv2D(K, (8, 7) if padding != "circular" else (8, 8), padding=padding, groups=g)
    ref = np.linalg.svd(op.tosparse().toarray(), compute_uv=False)
    s, info = structops.singular_values(op, return_info=True)
    np.testing.assert_allclose(s, ref, rtol=0, atol=1e-12 * ref[0])
    assert info.certified and any("groups" in r for r in info.reductions)
    assert structops.opnorm(op) == pytest.approx(ref[0], rel=1e-12)
    k = 2
    low = structops.singular_values(op, k=k, which="smallest", dense=False)
    np.testing.assert_allclose(np.sort(low), ref[-k:][::-1], rtol=0, atol=1e-10 * ref[0])
    union = np.sort(np.concatenate([np.linalg.svd(b.todense(), compute_uv=False) for b in op.group_layers()]))[::-1]
    np.testing.assert_allclose(union, ref, rtol=0, atol=1e-12 * ref[0])


def test_groups_are_checked():
    K = np.ones((4, 2, 3, 3))
    with pytest.raises(ValueError, match="groups=3 does not divide"):
        structops.Conv2D(K, (6, 6), groups=3)
    with pytest.raises(ValueError, match="positive"):
        structops.Conv2D(K, (6, 6), groups=0)
    with pytest.raises(TypeError):
        structops.Conv2D(K, (6, 6), groups=2.0)
    op = structops.Conv2D(K, (6, 6), groups=2)
    assert op.dims == (4, 6, 6) and "groups 2" in op.geometry.describe()
    with pytest.raises(NotImplementedError, match="group_layers"):
        structops.linalg.normal.smallest_singular_values(op)
    with pytest.raises(NotImplementedError, match="group_layers"):
        structops.ExtendedConvND.from_conv(op)


def test_grouped_float32_and_empty_batch():
    rng = np.random.default_rng(2)
    K = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    op = structops.Conv2D(K, (8, 8), groups=6)
    X = rng.standard_normal((op.shape[1], 2)).astype(np.float32)
    Y = op @ X
    assert Y.dtype == np.float32
    Y64 = op.with_kernel(K.astype(np.float64)) @ X.astype(np.float64)
    np.testing.assert_allclose(Y, Y64, rtol=1e-5, atol=1e-5)
    assert (op @ np.zeros((op.shape[1], 0), np.float32)).shape == (op.shape[0], 0)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_largest_values_of_many_groups_skip_blocks_by_their_symbol_bound(k):
    rng = np.random.default_rng(k)
    K = rng.standard_normal((40, 1, 3, 3))
    K[5] *= 3  # one group dominates
    op = structops.Conv2D(K, (9, 8), groups=40, stride=(1, 2))
    ref = np.linalg.svd(op.tosparse().toarray(), compute_uv=False)
    s, info = structops.singular_values(op, k=k, return_info=True)
    np.testing.assert_allclose(s, ref[:k], rtol=0, atol=1e-10 * ref[0])
    assert any("blocks skipped" in r for r in info.reductions)
    # the bound itself: above every group's norm
    from structops.linalg.spectra import _norm_upper_bound

    for b in op.group_layers():
        assert _norm_upper_bound(b) >= np.linalg.svd(b.todense(), compute_uv=False)[0]

"""Reflect / replicate / circular / zero padding (``Pad``) and convolutions after it (``PaddedConvND``) against torch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import structops
from structops.testing import assert_adjoint, assert_matches_dense, check_operator, taylor_test

torch = pytest.importorskip("torch")
F = torch.nn.functional
TORCH_MODE = {"reflect": "reflect", "replicate": "replicate", "circular": "circular", "zeros": "constant"}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@st.composite
def pad_configs(draw):
    D = draw(st.sampled_from([1, 2, 3]))
    mode = draw(st.sampled_from(list(TORCH_MODE)))
    nmax = {1: 9, 2: 6, 3: 4}[D]
    in_shape = tuple(draw(st.integers(1, nmax)) for _ in range(D))
    limit = {"reflect": [n - 1 for n in in_shape], "circular": in_shape}.get(mode, [3] * D)
    pairs = tuple((draw(st.integers(0, min(3, m))), draw(st.integers(0, min(3, m)))) for m in limit)
    return dict(D=D, mode=mode, in_shape=in_shape, pairs=pairs, c=draw(st.integers(1, 3)),
                seed=draw(st.integers(0, 2**31 - 1)))


def _torch_pad(x, pairs, mode):
    flat = []
    for lo, hi in reversed(pairs):
        flat += [lo, hi]
    return F.pad(x, flat, mode=TORCH_MODE[mode])


@settings(max_examples=80, deadline=None)
@given(cfg=pad_configs())
def test_pad_matches_torch(cfg):
    rng = np.random.default_rng(cfg["seed"])
    P = structops.Pad(cfg["in_shape"], cfg["c"], cfg["pairs"], cfg["mode"])
    x = rng.standard_normal((2, cfg["c"]) + cfg["in_shape"])
    want = _torch_pad(torch.from_numpy(x), cfg["pairs"], cfg["mode"]).numpy()
    got = P @ x.reshape(2, -1).T
    np.testing.assert_array_equal(got.T.reshape(want.shape), want)
    assert_adjoint(P, rng=rng)
    assert_matches_dense(P, P.tosparse().toarray(), rng=rng)


@st.composite
def padded_conv_configs(draw):
    D = draw(st.sampled_from([1, 2]))
    mode = draw(st.sampled_from(["reflect", "replicate", "circular", "zeros"]))
    g = draw(st.integers(1, 2))
    k = tuple(draw(st.integers(1, 4)) for _ in range(D))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(D))
    in_shape = tuple(draw(st.integers(3, 8 if D == 1 else 6)) for _ in range(D))
    pad = tuple(draw(st.integers(0, min(2, n - 1))) for n in in_shape)
    stride = tuple(draw(st.integers(1, 2)) for _ in range(D))
    return dict(D=D, mode=mode, g=g, c_in=g * draw(st.integers(1, 2)), c_out=g * draw(st.integers(1, 2)), k=k,
                dilation=dil, in_shape=in_shape, padding=pad, stride=stride, seed=draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=60, deadline=None)
@given(cfg=padded_conv_configs())
def test_padded_conv_matches_torch_conv_with_padding_mode(cfg):
    rng = np.random.default_rng(cfg["seed"])
    K = rng.standard_normal((cfg["c_out"], cfg["c_in"] // cfg["g"]) + cfg["k"])
    padded = [n + 2 * p for n, p in zip(cfg["in_shape"], cfg["padding"])]
    if any(d * (k - 1) + 1 > n for d, k, n in zip(cfg["dilation"], cfg["k"], padded)):
        with pytest.raises(ValueError):
            structops.PaddedConvND(K, cfg["in_shape"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["g"],
                                   cfg["mode"])
        return
    op = structops.PaddedConvND(K, cfg["in_shape"], stride=cfg["stride"], padding=cfg["padding"],
                                dilation=cfg["dilation"], groups=cfg["g"], padding_mode=cfg["mode"])
    x = rng.standard_normal((2, cfg["c_in"]) + cfg["in_shape"])
    xp = _torch_pad(torch.from_numpy(x), tuple((p, p) for p in cfg["padding"]), cfg["mode"])
    want = CONV[cfg["D"]](xp, torch.from_numpy(K), stride=cfg["stride"], dilation=cfg["dilation"],
                          groups=cfg["g"]).numpy()
    got = op @ x.reshape(2, -1).T
    np.testing.assert_allclose(got.T.reshape(want.shape), want, rtol=0, atol=1e-12 * max(1.0, np.abs(want).max()))
    assert_adjoint(op, rng=rng)
    assert_matches_dense(op, op.tosparse().toarray(), rng=rng)
    J = op.jacobian(x.reshape(2, -1).T)
    assert_adjoint(J, rng=rng)
    dK = rng.standard_normal(K.shape)
    wantJ = CONV[cfg["D"]](xp, torch.from_numpy(dK), stride=cfg["stride"], dilation=cfg["dilation"],
                           groups=cfg["g"]).numpy()
    np.testing.assert_allclose((J @ dK.ravel()).reshape(op.shape[0], 2).T.reshape(wantJ.shape), wantJ, rtol=0,
                               atol=1e-12 * max(1.0, np.abs(wantJ).max()))


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_torch_module_with_padding_mode(mode):
    rng = np.random.default_rng(3)
    m = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode, bias=False).double()
    K = m.weight.detach().numpy()
    op = structops.PaddedConvND(K, (7, 6), padding=1, padding_mode=mode)
    x = rng.standard_normal((1, 3, 7, 6))
    np.testing.assert_allclose(op @ x.ravel(), m(torch.from_numpy(x)).detach().numpy().ravel(), rtol=0, atol=1e-13)
    check_operator(op, op.tosparse().toarray())


def test_same_padding_with_torch_asymmetric_rule_for_even_kernels():
    rng = np.random.default_rng(4)
    K = rng.standard_normal((2, 2, 4, 3))
    op = structops.PaddedConvND(K, (7, 6), padding="same", padding_mode="reflect")
    assert op.padding == ((1, 2), (1, 1)) and op.out_shape == (7, 6)
    m = torch.nn.Conv2d(2, 2, (4, 3), padding="same", padding_mode="reflect", bias=False).double()
    m.weight.data = torch.from_numpy(K)
    x = rng.standard_normal((1, 2, 7, 6))
    np.testing.assert_allclose(op @ x.ravel(), m(torch.from_numpy(x)).detach().numpy().ravel(), rtol=0, atol=1e-13)


def test_taylor_through_a_reflect_padded_layer():
    rng = np.random.default_rng(5)
    K = rng.standard_normal((2, 2, 3, 3))
    op = structops.PaddedConvND(K, (6, 6), padding=1, padding_mode="reflect")
    x = rng.standard_normal(op.shape[1])
    y0 = op @ x

    def f(k):
        return (op.with_kernel(k.reshape(K.shape)) @ x) ** 2

    def jac(v):
        return 2 * y0 * (op.jacobian(x) @ v.ravel())

    taylor_test(f, jac, K.ravel(), rng=rng)


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_spectrum_of_a_padded_layer(mode):
    K = np.random.default_rng(6).standard_normal((3, 2, 3, 3))
    op = structops.PaddedConvND(K, (8, 7), padding=1, padding_mode=mode)
    ref = np.linalg.svd(op.tosparse().toarray(), compute_uv=False)
    s, info = structops.singular_values(op, return_info=True)
    np.testing.assert_allclose(s, ref, rtol=0, atol=1e-12 * ref[0])
    assert info.certified
    big = structops.PaddedConvND(np.random.default_rng(7).standard_normal((4, 4, 3, 3)), (40, 40), padding=1,
                                 padding_mode=mode)
    s2, info2 = structops.singular_values(big, k=2, dense=False, return_info=True)
    assert info2.certified
    # the largest values through the generic certified route: checked against a dense SVD of the small one
    assert structops.opnorm(op, dense=False) == pytest.approx(ref[0], rel=1e-9)


def test_bad_padding():
    with pytest.raises(ValueError, match="reflect padding"):
        structops.Pad((3, 3), 1, 3, "reflect")
    with pytest.raises(ValueError, match="padding mode"):
        structops.Pad((3, 3), 1, 1, "mirror")
    with pytest.raises(ValueError, match="stride 1"):
        structops.PaddedConvND(np.ones((1, 1, 3, 3)), (5, 5), stride=2, padding="same")

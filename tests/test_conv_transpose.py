"""Transposed convolutions against ``torch.nn.functional.conv_transpose{1,2,3}d`` and dense matrices."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import structops
from structops.testing import assert_adjoint, assert_matches_dense, check_operator

torch = pytest.importorskip("torch")
F = torch.nn.functional
CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@st.composite
def transposed_configs(draw):
    D = draw(st.sampled_from([1, 2, 3]))
    g = draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 4)) for _ in range(D))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(D))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(D))
    out_pad = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dil))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(D))
    nmax = {1: 8, 2: 5, 3: 3}[D]
    in_shape = tuple(draw(st.integers(1, nmax)) for _ in range(D))
    return dict(D=D, g=g, c_in=g * draw(st.integers(1, 2)), c_out=g * draw(st.integers(1, 2)), k=k, stride=stride,
                dilation=dil, output_padding=out_pad, padding=pad, in_shape=in_shape,
                seed=draw(st.integers(0, 2**31 - 1)), method=draw(st.sampled_from(["direct", "fft"])))


def _out_shape(cfg):
    return tuple((n - 1) * s - 2 * p + d * (k - 1) + o + 1 for n, s, p, d, k, o in
                 zip(cfg["in_shape"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["k"], cfg["output_padding"]))


def _torch(W, X, cfg):
    B = X.shape[1]
    x = torch.from_numpy(np.ascontiguousarray(X.T)).reshape(B, cfg["c_in"], *cfg["in_shape"])
    y = CONVT[cfg["D"]](x, torch.from_numpy(W), stride=cfg["stride"], padding=cfg["padding"],
                        output_padding=cfg["output_padding"], dilation=cfg["dilation"], groups=cfg["g"])
    return y.reshape(B, -1).T.numpy()


@settings(max_examples=60, deadline=None)
@given(cfg=transposed_configs())
def test_transposed_layer_matches_torch_or_rejects(cfg):
    rng = np.random.default_rng(cfg["seed"])
    W = rng.standard_normal((cfg["c_in"], cfg["c_out"] // cfg["g"], *cfg["k"]))
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], output_padding=cfg["output_padding"],
              dilation=cfg["dilation"], groups=cfg["g"], method=cfg["method"])
    if min(_out_shape(cfg)) < 1:
        with pytest.raises(ValueError, match="too large"):
            structops.ConvTransposeND(W, cfg["in_shape"], **kw)
        return
    written = [m - max(0, o - p) for m, o, p in zip(_out_shape(cfg), cfg["output_padding"], cfg["padding"])]
    if min(written) < 1:  # torch returns zeros: every contribution is cut by the padding
        with pytest.raises(ValueError, match="no output entry written"):
            structops.ConvTransposeND(W, cfg["in_shape"], **kw)
        return
    op = structops.ConvTransposeND(W, cfg["in_shape"], **kw)
    assert op.dimsd == (cfg["c_out"],) + _out_shape(cfg)
    X = rng.standard_normal((op.shape[1], 2))
    ref = _torch(W, X, cfg)
    np.testing.assert_allclose(op @ X, ref, rtol=0, atol=1e-12 * max(1.0, np.abs(ref).max()))
    if op.tosparse().nnz == 0:  # the zero map
        return
    assert_adjoint(op, rng=rng)
    assert_matches_dense(op, op.tosparse().toarray(), rng=rng)
    J = op.jacobian(X)
    assert_adjoint(J, rng=rng)
    dW = rng.standard_normal(W.shape)
    np.testing.assert_allclose((J @ dW.ravel()).reshape(op.shape[0], 2), _torch(dW, X, cfg), rtol=0,
                               atol=1e-12 * max(1.0, np.abs(ref).max()))


def test_transposed_layer_is_the_adjoint_of_the_convolution():
    W = np.random.default_rng(0).standard_normal((4, 3, 3, 3))
    op = structops.ConvTranspose2D(W, (6, 7), stride=2, padding=1, output_padding=1)
    conv = structops.Conv2D(W, op.out_shape, stride=2, padding=1)
    assert conv.out_shape == (6, 7)
    np.testing.assert_allclose(op.tosparse().toarray(), conv.todense().T, rtol=0, atol=1e-14)
    check_operator(op, op.tosparse().toarray())


def test_complex_weights_give_the_transpose_as_torch():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((2, 3, 3)) + 1j * rng.standard_normal((2, 3, 3))
    op = structops.ConvTranspose1D(W, 9, stride=2, padding=1)
    x = rng.standard_normal((1, 2, 9)) + 1j * rng.standard_normal((1, 2, 9))
    y = F.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(W), stride=2, padding=1).numpy()
    np.testing.assert_allclose(op @ x.ravel(), y.ravel(), rtol=0, atol=1e-13)
    assert_adjoint(op)
    assert_adjoint(op.jacobian(x.ravel()))


@pytest.mark.parametrize("stride, output_padding", [(1, 0), (2, 1), (3, 2)])
def test_spectrum_of_a_transposed_layer_is_that_of_the_layer(stride, output_padding):
    W = np.random.default_rng(stride).standard_normal((3, 2, 3, 3))
    op = structops.ConvTranspose2D(W, (5, 6), stride=stride, padding=1, output_padding=output_padding)
    ref = np.linalg.svd(op.tosparse().toarray(), compute_uv=False)
    r = min(op.shape)
    np.testing.assert_allclose(structops.singular_values(op)[:r], ref[:r], rtol=0, atol=1e-12 * ref[0])
    assert structops.opnorm(op) == pytest.approx(ref[0], rel=1e-12)
    s, U, V = structops.singular_vectors(op, k=2)
    np.testing.assert_allclose(op @ V, U * s, rtol=0, atol=1e-10 * ref[0])
    np.testing.assert_allclose(op.H @ U, V * s, rtol=0, atol=1e-10 * ref[0])


def test_bad_arguments():
    W = np.ones((2, 2, 3, 3))
    with pytest.raises(ValueError, match="output_padding"):
        structops.ConvTranspose2D(W, (4, 4), stride=2, output_padding=2)
    with pytest.raises(ValueError, match="integer paddings"):
        structops.ConvTranspose2D(W, (4, 4), padding="same")
    with pytest.raises(ValueError, match="too large"):
        structops.ConvTranspose2D(W, (1, 1), padding=2)
    with pytest.raises(ValueError, match="ConvTranspose2D needs"):
        structops.ConvTranspose2D(np.ones((2, 2, 3)), (4, 4))
    with pytest.raises(ValueError, match="groups"):
        structops.ConvTranspose2D(np.ones((3, 2, 3, 3)), (4, 4), groups=2)


def test_output_padding_beyond_the_padding_leaves_zero_rows():
    # output_padding > padding: the last rows of the output are never written
    rng = np.random.default_rng(4)
    W = rng.standard_normal((3, 2, 3, 3))
    op = structops.ConvTranspose2D(W, (4, 5), stride=1, padding=0, output_padding=1, dilation=2)
    x = rng.standard_normal((1, 3, 4, 5))
    y = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(W), padding=0, output_padding=1, dilation=2)
    np.testing.assert_allclose(op @ x.ravel(), y.numpy().ravel(), rtol=0, atol=1e-13)
    A = op.tosparse().toarray()
    assert not A.reshape(op.dimsd + (-1,))[:, -1].any() and not A.reshape(op.dimsd + (-1,))[:, :, -1].any()
    check_operator(op, A)
    ref = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(structops.singular_values(op), ref, rtol=0, atol=1e-12 * ref[0])
    small = structops.singular_values(op, k=3, which="smallest")
    np.testing.assert_allclose(small, ref[-3:], rtol=0, atol=1e-12 * ref[0])
    s, U, V = structops.singular_vectors(op, k=2)
    np.testing.assert_allclose(op @ V, U * s, rtol=0, atol=1e-10 * ref[0])

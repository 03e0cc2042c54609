"""Extended convolution (one kernel per output pixel): conventional limit, penalty, mask."""

import numpy as np
import pytest

import structops
from dense import dense_conv, dense_extended
from structops.testing import assert_matches_dense, taylor_test

LAYERS = [
    dict(k=(2, 3, 3, 3), n=(6, 7), padding="same"),
    dict(k=(2, 2, 3, 3), n=(6, 6), padding="circular"),
    dict(k=(3, 2, 3, 2), n=(7, 6), padding="valid", stride=2),
    dict(k=(1, 1, 3, 3), n=(9, 8), padding="same", dilation=2),
    dict(k=(2, 1, 5), n=(11,), padding=2, stride=3, dilation=2),
]


def _conv(rng, spec):
    K = rng.standard_normal(spec["k"])
    kw = {key: spec[key] for key in ("padding", "stride", "dilation") if key in spec}
    return K, structops.ConvND(K, spec["n"], **kw), kw


@pytest.mark.parametrize("spec", LAYERS)
def test_constant_weights_equal_conventional_layer(spec):
    rng = np.random.default_rng(0)
    K, conv, _ = _conv(rng, spec)
    ext = structops.ExtendedConvND.from_conv(conv)
    assert ext.weights.shape == K.shape + conv.out_shape
    X = rng.standard_normal((conv.shape[1], 4))
    Y = rng.standard_normal((conv.shape[0], 4))
    np.testing.assert_allclose(ext.matmat(X), conv.matmat(X), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ext.rmatmat(Y), conv.rmatmat(Y), rtol=1e-12, atol=1e-12)
    # and the per-pixel Jacobian summed over pixels is the kernel Jacobian's adjoint
    g_ext = ext.jacobian(X).rmatvec(Y.ravel()).reshape(ext.weights.shape)
    g_conv = conv.jacobian(X).rmatvec(Y.ravel()).reshape(K.shape)
    D = len(spec["n"])
    np.testing.assert_allclose(g_ext.sum(axis=tuple(range(2 + D, 2 + 2 * D))), g_conv, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spec", LAYERS)
def test_penalty_is_the_matrix_frobenius_distance(spec):
    rng = np.random.default_rng(1)
    K, conv, kw = _conv(rng, spec)
    w = rng.standard_normal(K.shape + conv.out_shape)
    ext = structops.ExtendedConvND(w, spec["n"], **kw)
    args = (spec["n"], ext.stride, ext.padding, ext.dilation, ext.circular)
    A_ext, A = dense_extended(w, *args), dense_conv(K, *args)
    lam = 0.3
    value, gw, gk = structops.extension_penalty(ext, K, lam=lam)
    assert value == pytest.approx(0.5 * lam**2 * np.linalg.norm(A_ext - A) ** 2, rel=1e-12)

    # gradients: Taylor tests in w and in K
    def f_w(ww):
        return np.atleast_1d(structops.extension_penalty(structops.ExtendedConvND(ww, spec["n"], **kw), K, lam)[0])

    taylor_test(f_w, lambda v: np.atleast_1d(np.vdot(gw, v)), w, rng=2)

    def f_k(KK):
        return np.atleast_1d(structops.extension_penalty(ext, KK, lam)[0])

    taylor_test(f_k, lambda v: np.atleast_1d(np.vdot(gk, v)), K, rng=3)


@pytest.mark.parametrize("spec", LAYERS)
def test_kernel_average_is_the_frobenius_projection(spec):
    """The masked average minimises ||A_ext - A(K)||_F over K: checked by dense least squares."""
    rng = np.random.default_rng(4)
    K, conv, kw = _conv(rng, spec)
    w = rng.standard_normal(K.shape + conv.out_shape)
    ext = structops.ExtendedConvND(w, spec["n"], **kw)
    args = (spec["n"], ext.stride, ext.padding, ext.dilation, ext.circular)
    A_ext = dense_extended(w, *args)
    basis = np.stack([dense_conv(e.reshape(K.shape), *args).ravel() for e in np.eye(K.size)], axis=1)
    K_ls = np.linalg.lstsq(basis, A_ext.ravel(), rcond=None)[0].reshape(K.shape)
    # taps that never land inside the image are free in the least-squares problem: compare the rest
    used = np.linalg.norm(basis, axis=0).reshape(K.shape) > 0
    np.testing.assert_allclose(ext.kernel_average()[used], K_ls[used], rtol=1e-10, atol=1e-12)
    assert np.all(ext.kernel_average()[~used] == 0)


@pytest.mark.parametrize("spec", LAYERS)
def test_border_mask_marks_the_matrix_entries(spec):
    rng = np.random.default_rng(5)
    K, conv, kw = _conv(rng, spec)
    ext = structops.ExtendedConvND.from_conv(conv)
    mask = ext.border_mask()
    D = len(spec["n"])
    assert mask.shape == conv.kernel_size + conv.out_shape
    args = (spec["n"], ext.stride, ext.padding, ext.dilation, ext.circular)
    for idx in np.ndindex(mask.shape):
        w = np.zeros((1, 1) + mask.shape)
        w[(0, 0) + idx] = 1.0
        exists = np.any(dense_extended(w, *args) != 0)
        assert exists == mask[idx], (idx, D)


def test_errors_name_what_was_given():
    with pytest.raises(ValueError, match=r"output axes \(5, 5\)"):
        structops.ExtendedConv2D(np.ones((1, 1, 3, 3, 5, 5)), (6, 6))
    with pytest.raises(ValueError, match="ExtendedConv2D needs weights"):
        structops.ExtendedConv2D(np.ones((1, 1, 3, 3)), (6, 6))
    with pytest.raises(ValueError, match="NaN or Inf"):
        structops.ExtendedConv2D(np.full((1, 1, 3, 3, 6, 6), np.nan), (6, 6))
    ext = structops.ExtendedConv2D(np.ones((1, 1, 3, 3, 6, 6)), (6, 6))
    with pytest.raises(ValueError, match=r"kernel has shape \(1, 1, 3\)"):
        structops.extension_penalty(ext, np.ones((1, 1, 3)))


def test_float32_stays_float32():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((2, 2, 3, 3, 5, 5)).astype(np.float32)
    ext = structops.ExtendedConv2D(w, (5, 5))
    x = rng.standard_normal(50).astype(np.float32)
    assert (ext @ x).dtype == np.float32 and ext.rmatvec(ext @ x).dtype == np.float32
    assert_matches_dense(ext, dense_extended(w, (5, 5), (1, 1), ((1, 1), (1, 1)), (1, 1), False), rtol=1e-5)

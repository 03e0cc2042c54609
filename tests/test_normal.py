"""Banded normal matrix and certified smallest singular values of zero-padded layers.

References are dense matrices built by loops (``tests/dense.py``) and LAPACK's
dense SVD.
"""

from __future__ import annotations

import numpy as np
import pytest

from dense import dense_conv

import structops
from structops.linalg.normal import band as _band
from structops.linalg.normal import multifrontal as _multifrontal
from structops.linalg.normal import normal_matrix_banded, sigma_min, smallest_singular_values

# (kernel shape, in_shape, stride, padding, dilation)
CASES = [
    ((3, 2, 3, 3), (6, 7), 1, "same", 1),
    ((2, 3, 3, 3), (6, 7), 2, "same", 1),
    ((3, 3, 3, 3), (7, 6), 1, "valid", 1),
    ((3, 3, 3, 3), (6, 6), 1, "valid", 1),
    ((2, 2, 3, 3), (6, 5), 1, "full", 1),
    ((3, 2, 3, 3), (9, 8), 1, 2, 2),
    ((2, 3, 3, 2), (7, 6), (2, 1), ((1, 0), (0, 1)), 1),
    ((2, 3, 5), (11,), 2, 1, 1),
    ((4, 2, 3), (10,), 1, "same", 2),
    ((1, 1, 3), (9,), 1, "valid", 1),
    ((2, 2, 3, 3, 3), (4, 3, 5), 1, "same", 1),
]
IDS = [f"k{c[0]}-n{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}" for c in CASES]


def _layer(case, seed=0):
    ks, shape, stride, padding, dilation = case
    K = np.random.default_rng(seed).standard_normal(ks)
    op = structops.ConvND(K, shape, stride=stride, padding=padding, dilation=dilation)
    A = dense_conv(K, shape, op.stride, op.padding, op.dilation, False)
    return op, A


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("side", ["input", "output"])
def test_banded_normal_matrix_matches_dense(case, side):
    op, A = _layer(case)
    G = A.T @ A if side == "input" else A @ A.T
    Gb = normal_matrix_banded(op, side)
    assert Gb.side == side
    assert Gb.ab.shape == (Gb.kd + 1, G.shape[0])
    assert Gb.ab.flags.f_contiguous
    np.testing.assert_allclose(Gb.toarray(), G, rtol=0, atol=1e-12 * np.abs(G).max())
    # band ordering: G_band = G[perm][:, perm], and nothing outside the band
    Gband = G[np.ix_(Gb.perm, Gb.perm)]
    np.testing.assert_allclose(Gb.toarray(order="band"), Gband, atol=1e-12 * np.abs(G).max())
    i, j = np.nonzero(np.abs(Gband) > 0)
    assert np.all(np.abs(i - j) <= Gb.kd)


def test_banded_auto_side_and_axis_order():
    rng = np.random.default_rng(1)
    # wide layer (c_out < c_in): M M^T is the smaller matrix
    op = structops.Conv2D(rng.standard_normal((2, 5, 3, 3)), (6, 6))
    assert normal_matrix_banded(op).side == "output"
    # tall layer
    op = structops.Conv2D(rng.standard_normal((5, 2, 3, 3)), (6, 6))
    assert normal_matrix_banded(op).side == "input"
    # rectangular image: the shorter axis innermost, bandwidth 2 * 5 + 2 pixels
    c = 3
    op = structops.Conv2D(rng.standard_normal((c, c, 3, 3)), (12, 5))
    Gb = normal_matrix_banded(op, "input")
    assert Gb.axes == (0, 1)
    assert Gb.kd == (2 * 5 + 2) * c + c - 1
    op = structops.Conv2D(rng.standard_normal((c, c, 3, 3)), (5, 12))
    Gb = normal_matrix_banded(op, "input")
    assert Gb.axes == (1, 0)
    assert Gb.kd == (2 * 5 + 2) * c + c - 1


@pytest.mark.parametrize("method", ["band", "nd"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_smallest_singular_values_vs_dense_svd(case, method):
    op, A = _layer(case, seed=2)
    sv = np.sort(np.linalg.svd(A, compute_uv=False))
    k = min(3, sv.size - 1)
    s, info = smallest_singular_values(op, k=k, method=method)
    assert info["converged"], info
    assert info["method"] == method
    np.testing.assert_allclose(s, sv[:k], rtol=1e-8, atol=20 * np.finfo(float).eps * sv[-1])
    for key in ("n_solves", "residual", "factor_bytes", "seconds"):
        assert key in info
    assert info["residual"] < 1e-5
    # the returned vectors are singular triplets of the layer
    v, u = info["right"], info["left"]
    # residuals of [[0, A], [A^T, 0]] at [u; v] / sqrt(2): each relation within sqrt(2) of them
    res = np.sqrt(2) * info["residuals"] * 1.001 + 1e-12 * sv[-1]
    assert np.all(np.linalg.norm(A @ v - u * s, axis=0) <= res)
    assert np.all(np.linalg.norm(A.T @ u - v * s, axis=0) <= res)
    np.testing.assert_allclose(np.linalg.norm(v, axis=0), 1.0)
    np.testing.assert_allclose(np.linalg.norm(u, axis=0), 1.0)


def test_k1_sigma_min():
    op, A = _layer(CASES[0], seed=3)
    sv = np.linalg.svd(A, compute_uv=False)
    assert sigma_min(op) == pytest.approx(sv.min(), rel=1e-10)
    s, info = smallest_singular_values(op, k=1)
    assert s.shape == (1,) and info["converged"]


def _ill_conditioned(eps, c=3, shape=(8, 9), seed=4):
    """Channel matrices ``K_d (I - (1 - eps) w w^T)``: a singular-value cluster ~ eps."""
    rng = np.random.default_rng(seed)
    K = rng.standard_normal((c, c, 3, 3))
    w = rng.standard_normal(c)
    w /= np.linalg.norm(w)
    P = np.eye(c) - (1 - eps) * np.outer(w, w)
    K = np.einsum("oikl,ij->ojkl", K, P)
    op = structops.Conv2D(K, shape)
    A = dense_conv(K, shape, op.stride, op.padding, op.dilation, False)
    return op, A


@pytest.mark.parametrize("method", ["band", "nd"])
def test_ill_conditioned_cond_1e6(method):
    op, A = _ill_conditioned(5e-4)
    sv = np.sort(np.linalg.svd(A, compute_uv=False))
    cond = sv[-1] / sv[0]
    assert 3e5 < cond < 1e7
    # the error bounds charge every product its worst-case rounding, gamma ||A|| with gamma ~ 100 eps:
    # a relative 1.2e-7 here (cond 1e6), below the rounding floor, while the values are right to ~1e-11.
    # The test asks for the values, a bound 5x above the measured one, and a bound that really bounds.
    s, info = smallest_singular_values(op, k=3, method=method)
    np.testing.assert_allclose(s, sv[:3], rtol=1e-8)
    assert np.all(info["error_bound"] < 6e-7)
    assert np.all(np.abs(s - sv[:3]) <= info["error_bound"])


def test_singular_layer_gives_zero():
    # stride 2, 'valid', 1-tap kernel: odd pixels are never read, so M^T M is singular
    K = np.random.default_rng(5).standard_normal((3, 1, 1))
    op = structops.Conv1D(K, 8, stride=2, padding="valid")
    A = dense_conv(K, (8,), op.stride, op.padding, op.dilation, False)
    assert A.shape[0] > A.shape[1]
    s, info = smallest_singular_values(op, k=2)
    assert info["converged"]
    assert info["shift"] > 0
    assert np.all(np.abs(s) < 1e-12 * np.linalg.norm(A, 2))


def test_garbage_solves_are_not_certified(monkeypatch):
    op, A = _layer(CASES[0], seed=6)
    rng = np.random.default_rng(0)

    def garbage(self, X):
        return rng.standard_normal(X.shape)

    monkeypatch.setattr(_multifrontal.NDFactor, "solve", garbage)
    monkeypatch.setattr(_band.BandFactor, "solve", garbage)
    s, info = smallest_singular_values(op, k=2, maxiter=5)
    assert not info["converged"]
    assert np.all(info["error_bound"] > 1e-10)
    with pytest.raises(RuntimeError, match="not certified"):
        sigma_min(op, maxiter=5)


@pytest.mark.parametrize("maxiter", [1, 2, 3])
def test_converged_flag_is_honest(maxiter):
    op, A = _ill_conditioned(1e-4, c=4, shape=(9, 9), seed=7)
    sv = np.sort(np.linalg.svd(A, compute_uv=False))
    s, info = smallest_singular_values(op, k=3, maxiter=maxiter, block=3)
    err = np.abs(s - sv[:3]) / sv[:3]
    if info["converged"]:
        assert np.all(err <= 1e-9)
        assert np.all(err <= np.maximum(info["error_bound"] * 1.01, 1e-13))
    else:
        assert np.any(info["error_bound"] > 1e-10)
    # what holds before convergence too: each value is within its bound of some singular value, and
    # the i-th value is an upper bound of the i-th smallest singular value (interlacing)
    near = np.min(np.abs(s[:, None] - sv[None, :]), axis=1)
    assert np.all(near <= info["absolute_error_bound"] * 1.01 + 1e-13 * sv[-1])
    assert np.all(s >= sv[:3] * (1 - 1e-12))


def test_errors():
    K = np.random.default_rng(0).standard_normal((2, 2, 3, 3))
    with pytest.raises(ValueError, match="circular"):
        smallest_singular_values(structops.Conv2D(K, (6, 6), padding="circular"))
    with pytest.raises(ValueError, match="k="):
        smallest_singular_values(structops.Conv2D(K, (3, 3)), k=18)
    with pytest.raises(TypeError, match="ConvND"):
        smallest_singular_values(np.eye(3))
    with pytest.raises(ValueError, match="side"):
        normal_matrix_banded(structops.Conv2D(K, (4, 4)), side="left-ish")


def test_float32_kernel_is_computed_in_float64():
    op64, A = _layer(CASES[0], seed=8)
    op32 = structops.Conv2D(op64.kernel.astype(np.float32), op64.in_shape)
    A32 = dense_conv(op32.kernel.astype(np.float64), op32.in_shape, 1, op32.padding, 1, False)
    s, info = smallest_singular_values(op32, k=2)
    np.testing.assert_allclose(s, np.sort(np.linalg.svd(A32, compute_uv=False))[:2], rtol=1e-8)


@pytest.mark.slow
def test_16_channels_16x16():
    """The small version of the 64 -> 64, 32x32 case: 16 -> 16 channels on 16x16 (N = 4096)."""
    K = np.random.default_rng(0).standard_normal((16, 16, 3, 3)) / 12
    op = structops.Conv2D(K, (16, 16))
    s, info = smallest_singular_values(op, k=3)
    assert info["converged"]
    assert np.all(info["error_bound"] < 1e-8)
    A = dense_conv(K, (16, 16), 1, op.padding, 1, False)
    sv = np.sort(np.linalg.svd(A, compute_uv=False))
    np.testing.assert_allclose(s, sv[:3], rtol=1e-8)


@pytest.mark.slow
def test_64_channels_32x32():
    """The acceptance case: 64 -> 64 channels, 3x3, 'same', 32x32 (M = N = 65536)."""
    K = np.random.default_rng(0).standard_normal((64, 64, 3, 3)) / 24
    op = structops.Conv2D(K, (32, 32))
    s, info = smallest_singular_values(op, k=1)
    assert info["converged"]
    # the bound (rounding of the products included, gamma ||A||) is below the floor 10 sqrt(N) eps ||A||
    assert info["absolute_error_bound"][0] <= 10 * np.sqrt(op.shape[1]) * np.finfo(float).eps * info["norm_bound"]
    assert info["error_bound"][0] < 2e-6
    assert 1e-6 < s[0] < 1e-3
    assert info["factor_bytes"] < 4e9
    # an independent a-posteriori check of the returned triplet with the operator
    v, u = info["right"][:, 0], info["left"][:, 0]
    assert np.linalg.norm(op @ v - s[0] * u) < 1e-12
    assert np.linalg.norm(op.H @ u - s[0] * v) < 1e-9


def test_rank_deficient_layer_gives_certified_numerical_zero():
    # this 2 -> 3 'valid' layer on 7x7 (75 x 98) has rank 74: sigma_min is 0
    K = np.random.default_rng(3).standard_normal((3, 2, 3, 3))
    op = structops.Conv2D(K, (7, 7), padding="valid")
    A = dense_conv(K, (7, 7), (1, 1), ((0, 0), (0, 0)), (1, 1), False)
    s_dense = np.linalg.svd(A, compute_uv=False)
    assert s_dense[-1] < 1e-13 * s_dense[0]
    s, info = smallest_singular_values(op, k=2)
    assert info["converged"]
    assert s[0] <= 1e-13 * s_dense[0]
    assert s[1] == pytest.approx(s_dense[-2], rel=1e-8)


def test_clustered_smallest_values_converge():
    """A wide 6 -> 3 layer whose smallest singular values cluster: block inverse iteration
    alone stalls; the switch to Lanczos on the inverse certifies the value."""
    rng = np.random.default_rng(0)
    K = rng.standard_normal((3, 6, 3, 3))
    op = structops.Conv2D(K, (20, 20))
    s, info = smallest_singular_values(op, k=2)
    assert info["converged"]
    A = dense_conv(K, (20, 20), (1, 1), ((1, 1), (1, 1)), (1, 1), False)
    s_dense = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(s, s_dense[::-1][:2], rtol=1e-9)

"""Parametric models K(theta) = K0 + mat(Q theta): slides' matrices, dottests, Taylor tests."""

from __future__ import annotations

import numpy as np
import pytest

from structops import ConvND, parametric as P
from structops.testing import assert_adjoint, assert_matches_dense, taylor_test

T6 = np.arange(1.0, 7.0)  # theta_1 .. theta_6


def test_mmatrix3_is_the_slides_matrix():
    t1, t2, t3, t4, t5, t6 = T6
    want = np.array([[t1 + t2, -t1, -t2],
                     [-t3, t3 + t4, -t4],
                     [-t5, -t6, t5 + t6]])
    model = P.mmatrix(3)
    assert model.num_params == 6
    np.testing.assert_array_equal(model.matrix(T6), want)
    np.testing.assert_array_equal(model.matrix(T6).sum(axis=1), 0)
    # the slides' Q (column-major vec)
    Q = np.array([[1, 1, 0, 0, 0, 0],
                  [0, 0, -1, 0, 0, 0],
                  [0, 0, 0, 0, -1, 0],
                  [-1, 0, 0, 0, 0, 0],
                  [0, 0, 1, 1, 0, 0],
                  [0, 0, 0, 0, 0, -1],
                  [0, -1, 0, 0, 0, 0],
                  [0, 0, 0, -1, 0, 0],
                  [0, 0, 0, 0, 1, 1]], dtype=float)
    np.testing.assert_array_equal(model.dense_basis(), Q)
    np.testing.assert_array_equal((Q @ T6).reshape(3, 3, order="F"), want)


def test_antisymmetric3_is_the_slides_matrix():
    t1, t2, t3 = T6[:3]
    want = np.array([[0, t1, t2],
                     [-t1, 0, t3],
                     [-t2, -t3, 0]])
    model = P.antisymmetric(3)
    assert model.num_params == 3
    K = model.matrix(T6[:3])
    np.testing.assert_array_equal(K, want)
    np.testing.assert_allclose(np.linalg.eigvals(K).real, 0, atol=1e-12)


def test_diagonal3_is_the_slides_matrix():
    want = np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]])
    np.testing.assert_array_equal(P.diagonal(3).matrix(T6[:3]), want)
    np.testing.assert_array_equal(P.diagonal(3).operator(T6[:3]) @ np.ones(3), [1.0, 2.0, 3.0])


@pytest.mark.parametrize("n", [2, 4, 7])
def test_general_n_counts_and_structure(n, rng):
    a, m = P.antisymmetric(n), P.mmatrix(n)
    assert a.num_params == n * (n - 1) // 2 and m.num_params == n * (n - 1)
    Ka = a.matrix(rng.standard_normal(a.num_params))
    np.testing.assert_allclose(Ka, -Ka.T)
    th = rng.uniform(0, 1, m.num_params)
    Km = m.matrix(th)
    np.testing.assert_allclose(Km.sum(axis=1), 0, atol=1e-12)
    assert (Km - np.diag(np.diag(Km)) <= 0).all() and (np.diag(Km) >= 0).all()


def _models(rng):
    Q = rng.standard_normal((12, 5))
    return {
        "diagonal": P.diagonal(5),
        "antisymmetric": P.antisymmetric(5),
        "mmatrix": P.mmatrix(4),
        "full": P.full(3, 5),
        "basis_F": P.from_basis(Q, (3, 4)),
        "basis_C_offset": P.from_basis(Q, (4, 3), offset=rng.standard_normal((4, 3)), order="C"),
        "conv_identity": P.conv((2, 1, 3, 3), (5, 6)),
        "conv_basis_offset": P.conv((2, 2, 3, 3), (5, 4), basis=rng.standard_normal((36, 7)),
                                   offset=rng.standard_normal((2, 2, 3, 3)), padding="circular"),
        "conv1d_strided": P.conv((3, 2, 3), (9,), stride=2, padding="valid"),
    }


MODEL_NAMES = list(_models(np.random.default_rng(0)))


@pytest.fixture
def model_of(rng):
    return lambda name: _models(np.random.default_rng(7))[name]


def _tol(dtype):
    return 1e-4 if dtype == np.float32 else None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_operator_and_jacobians(model_of, rng, name, dtype):
    model = model_of(name)
    theta = rng.standard_normal(model.num_params).astype(dtype)
    op = model.operator(theta)
    assert np.dtype(op.dtype) == np.dtype(dtype) or model_offset_is_double(model)
    assert_adjoint(op, rtol=_tol(dtype), rng=rng)
    for B in (None, 3):
        X = rng.standard_normal((op.shape[1],) if B is None else (op.shape[1], B)).astype(dtype)
        J = op.jacobian(X)
        assert J.shape == (op.shape[0] * (B or 1), model.num_params)
        assert_adjoint(J, rtol=_tol(dtype), rng=rng)
        if dtype == np.float64:
            taylor_test(lambda t: model.operator(t) @ X, J, theta, rng=rng)
        Yd = rng.standard_normal((op.shape[0],) if B is None else (op.shape[0], B)).astype(dtype)
        JH = op.adjoint_jacobian(Yd)
        assert_adjoint(JH, rtol=_tol(dtype), rng=rng)
        if dtype == np.float64:
            taylor_test(lambda t: model.operator(t).H @ Yd, JH, theta, rng=rng)


def model_offset_is_double(model):
    return getattr(model, "offset", None) is not None


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_jacobian_matches_dense_columns(model_of, rng, name):
    """``J e_k = (K(e_k) - K(0)) x``: the Jacobian's dense matrix from the model itself."""
    model = model_of(name)
    theta = rng.standard_normal(model.num_params)
    op = model.operator(theta)
    x = rng.standard_normal(op.shape[1])
    base = model.operator(np.zeros(model.num_params)) @ x
    cols = [model.operator(e) @ x - base for e in np.eye(model.num_params)]
    assert_matches_dense(op.jacobian(x), np.stack([c.ravel() for c in cols], axis=1), rng=rng)


def test_matrix_models_match_dense_basis(rng):
    for model in (P.mmatrix(4), P.antisymmetric(4), P.diagonal(4), P.full(3, 4)):
        theta = rng.standard_normal(model.num_params)
        Q = model.dense_basis()
        K = (Q @ theta).reshape(model.shape, order="F")
        assert_matches_dense(model.operator(theta), K, rng=rng)
        # J^T w = Q^T vec(w x^T)
        x, w = rng.standard_normal(model.shape[1]), rng.standard_normal(model.shape[0])
        np.testing.assert_allclose(model.operator(theta).jacobian(x).rmatvec(w),
                                   Q.T @ np.outer(w, x).ravel(order="F"), rtol=1e-12, atol=1e-12)


def test_conv_model_is_a_conv_layer(rng):
    model = P.conv((2, 3, 3, 3), (6, 5), padding="same")
    theta = rng.standard_normal(model.num_params)
    op = model.operator(theta)
    assert isinstance(op, ConvND)
    ref = ConvND(theta.reshape(2, 3, 3, 3), (6, 5))
    x = rng.standard_normal(op.shape[1])
    np.testing.assert_allclose(op @ x, ref @ x, rtol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="expected 6"):
        P.mmatrix(3).operator(np.ones(5))
    with pytest.raises(ValueError, match="positive int"):
        P.antisymmetric(0)
    with pytest.raises(ValueError, match=r"expected \(12, p\)"):
        P.from_basis(np.ones((10, 2)), (3, 4))
    with pytest.raises(ValueError, match="must be 'F' or 'C'"):
        P.from_basis(np.ones((12, 2)), (3, 4), order="X")
    with pytest.raises(ValueError, match="basis has shape"):
        P.conv((2, 1, 3, 3), (5, 5), basis=np.ones((17, 3)))
    with pytest.raises(ValueError, match="NaN"):
        P.full(2).operator(np.array([1.0, np.nan, 0, 0]))
    with pytest.raises(ValueError, match="mismatch|parameter direction"):
        P.full(2).operator(np.ones(4)).jacobian(np.ones(2)).matmat(np.ones((3, 2)))

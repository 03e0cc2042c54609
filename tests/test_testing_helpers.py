"""The public test helpers must be able to fail, and pass on correct inputs."""

from __future__ import annotations

import numpy as np
import pylops
import pytest

from structops.testing import assert_adjoint, assert_matches_dense, taylor_test


class WrongAdjoint(pylops.LinearOperator):
    """``A`` forward, but a perturbed ``A^T`` backward."""

    def __init__(self, A, eps=1e-6, batched_only=False):
        self.A = A
        self.eps = eps
        self.batched_only = batched_only
        super().__init__(dtype=A.dtype, shape=A.shape)

    def _matvec(self, x):
        return self.A @ x

    def _rmatvec(self, y):
        if self.batched_only:
            return self.A.conj().T @ y
        return self.A.conj().T @ y + self.eps * y[0]

    def _matmat(self, X):
        return self.A @ X

    def _rmatmat(self, Y):
        return self.A.conj().T @ Y + self.eps * Y[:1, :]


@pytest.fixture
def A(rng):
    return rng.standard_normal((6, 4))


def test_assert_adjoint_passes_on_correct_operator(A, rng):
    err = assert_adjoint(pylops.MatrixMult(A), rng=rng)
    assert 0 <= err <= 1e-12


def test_assert_adjoint_passes_complex(rng):
    A = rng.standard_normal((5, 3)) + 1j * rng.standard_normal((5, 3))
    assert_adjoint(pylops.MatrixMult(A, dtype=A.dtype), rng=rng)


def test_assert_adjoint_detects_wrong_rmatvec(A, rng):
    with pytest.raises(AssertionError, match="dot test"):
        assert_adjoint(WrongAdjoint(A, eps=1e-6), rng=rng)


def test_assert_adjoint_detects_wrong_batched_adjoint(A, rng):
    op = WrongAdjoint(A, eps=1e-6, batched_only=True)
    assert_adjoint(op, nbatch=0, rng=rng)  # single vectors are right
    with pytest.raises(AssertionError):
        assert_adjoint(op, rng=rng)


def test_assert_adjoint_detects_transpose_instead_of_conjugate_transpose(rng):
    A = rng.standard_normal((4, 4)) + 1j * rng.standard_normal((4, 4))

    class NoConj(pylops.LinearOperator):
        def __init__(self):
            super().__init__(dtype=A.dtype, shape=A.shape)

        def _matvec(self, x):
            return A @ x

        def _rmatvec(self, y):
            return A.T @ y  # missing conj

    with pytest.raises(AssertionError):
        assert_adjoint(NoConj(), nbatch=0, rng=rng)


def test_assert_adjoint_detects_wrong_output_shape(A, rng):
    class Short(pylops.LinearOperator):
        def __init__(self):
            super().__init__(dtype=A.dtype, shape=A.shape)

        def _matvec(self, x):
            return (A @ x)[:-1]

        def _rmatvec(self, y):
            return A.T @ y

    with pytest.raises((AssertionError, ValueError)):
        assert_adjoint(Short(), nbatch=0, rng=rng)


def test_assert_adjoint_single_precision_tolerance(A, rng):
    op = pylops.MatrixMult(A.astype(np.float32), dtype=np.float32)
    assert assert_adjoint(op, rng=rng) <= 2e-5
    with pytest.raises(AssertionError):
        assert_adjoint(WrongAdjoint(A.astype(np.float32), eps=1e-2), rng=rng)


def test_assert_matches_dense_passes(A, rng):
    assert assert_matches_dense(pylops.MatrixMult(A), A, rng=rng) <= 1e-12


def test_assert_matches_dense_detects_one_wrong_entry(A, rng):
    B = A.copy()
    B[2, 1] += 1e-6
    with pytest.raises(AssertionError, match="dense"):
        assert_matches_dense(pylops.MatrixMult(A), B, rng=rng)


def test_assert_matches_dense_detects_wrong_adjoint_only(A, rng):
    """A right forward and a wrong adjoint is still a mismatch (rmatvec checked)."""
    with pytest.raises(AssertionError, match="rmatvec"):
        assert_matches_dense(WrongAdjoint(A, eps=1e-3), A, rng=rng)


def test_assert_matches_dense_detects_transposed_matrix(rng):
    A = rng.standard_normal((4, 4))
    with pytest.raises(AssertionError):
        assert_matches_dense(pylops.MatrixMult(A), A.T, rng=rng)


def test_assert_matches_dense_shape_mismatch(A, rng):
    with pytest.raises(AssertionError, match="shape"):
        assert_matches_dense(pylops.MatrixMult(A), A[:, :-1], rng=rng)


def cube(x):
    return x**3


def test_taylor_test_passes_on_correct_jacobian(rng):
    x = rng.standard_normal(7)
    table = taylor_test(cube, lambda v: 3 * x**2 * v, x, h0=0.1, rng=rng)
    h, E0, E1 = table.T
    np.testing.assert_allclose(h, 0.1 / 2.0 ** np.arange(10))
    # first order for E0, second order for E1 (ratios of consecutive halvings)
    assert np.all(np.abs(E0[1:] / E0[:-1] - 0.5) < 0.1)
    assert np.all(np.abs(E1[1:] / E1[:-1] - 0.25) < 0.05)


def test_taylor_test_accepts_operator_jacobian(rng):
    x = rng.standard_normal(5)
    J = pylops.Diagonal(3 * x**2)
    taylor_test(cube, J, x, h0=0.1, rng=rng)


def test_taylor_test_default_step_tolerates_preasymptotic_start(rng):
    """With the default ``h0 = 1`` the first halvings of a cubic are not yet
    second order (the ``h^3`` term is as large as the ``h^2`` one); a correct
    Jacobian must still pass once ``E1`` settles into ``O(h^2)``."""
    for seed in range(10):
        g = np.random.default_rng(seed)
        x = g.standard_normal(5)
        taylor_test(cube, lambda v: 3 * x**2 * v, x, rng=g)


@pytest.mark.parametrize(
    "wrong",
    [
        lambda x, v: 3.01 * x**2 * v,  # slightly scaled
        lambda x, v: 2 * x**2 * v,  # wrong power rule
        lambda x, v: 3 * x**2 * v[::-1],  # wrong direction
        lambda x, v: 0 * v,  # zero Jacobian of a non-constant map
    ],
    ids=["scaled", "wrong-derivative", "permuted", "zero"],
)
def test_taylor_test_detects_wrong_jacobian(wrong, rng):
    x = rng.standard_normal(7) + 0.5
    with pytest.raises(AssertionError, match="Taylor"):
        taylor_test(cube, lambda v: wrong(x, v), x, h0=0.1, rng=rng)


def test_taylor_test_linear_map_is_at_rounding_level(A, rng):
    x = rng.standard_normal(4)
    table = taylor_test(lambda z: A @ z, pylops.MatrixMult(A), x, rng=rng)
    assert table[:, 2].max() <= 1e-12 * table[:, 1].max()
    with pytest.raises(AssertionError):
        taylor_test(lambda z: A @ z, pylops.MatrixMult(1.001 * A), x, rng=rng)


def test_taylor_test_nonzero_jacobian_of_constant_map(rng):
    x = rng.standard_normal(3)
    with pytest.raises(AssertionError):
        taylor_test(lambda z: np.ones(3), lambda v: v, x, rng=rng)

"""Toeplitz and Circulant against SciPy, the dense loops, and their spectra."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
from scipy.optimize import linear_sum_assignment

import structops
from structops._backend import to_numpy
from structops.testing import assert_matches_dense

from dense import dense_circulant_nd, dense_conv, dense_toeplitz, padding_pairs
from factories import random_array


def as_matrix(op, xp=np):
    """Apply ``op`` to the identity (one batched product)."""
    return np.asarray(to_numpy(op.matmat(xp.eye(op.shape[1], dtype=op.dtype))))


def assert_same_multiset(a, b, tol):
    """``a`` and ``b`` are equal as multisets (optimal one-to-one matching)."""
    a, b = np.ravel(a), np.ravel(b)
    assert a.shape == b.shape
    cost = np.abs(a[:, None] - b[None, :])
    rows, cols = linear_sum_assignment(cost)
    worst = cost[rows, cols].max()
    assert worst <= tol * max(1.0, np.abs(b).max()), f"eigenvalues differ by {worst:.2e}"


# ----------------------------------------------------------------- builders


@pytest.mark.parametrize("m,n", [(1, 1), (5, 5), (3, 7), (7, 3)])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_dense_toeplitz_builder_is_scipy(m, n, dtype, rng):
    c, r = random_array(rng, m, dtype), random_array(rng, n, dtype)
    np.testing.assert_array_equal(dense_toeplitz(c, r), sla.toeplitz(c, r))
    np.testing.assert_array_equal(dense_toeplitz(c), sla.toeplitz(c))


@pytest.mark.parametrize("n", [1, 2, 7])
def test_dense_circulant_builder_is_scipy(n, rng):
    c = random_array(rng, n, np.complex128)
    np.testing.assert_array_equal(dense_circulant_nd(c), sla.circulant(c))


def test_dense_conv_builder_on_a_hand_example():
    """1-D, one channel, kernel [1, 2, 3], 'same' on n = 4: tridiagonal by hand."""
    K = np.array([[[1.0, 2.0, 3.0]]])
    want = np.array([[2, 3, 0, 0], [1, 2, 3, 0], [0, 1, 2, 3], [0, 0, 1, 2]], float)
    got = dense_conv(K, (4,), (1,), padding_pairs("same", (3,), 1, (4,)), (1,), False)
    np.testing.assert_array_equal(got, want)
    # circular: the corners wrap
    want[0, 3], want[3, 0] = 1, 3
    got = dense_conv(K, (4,), (1,), padding_pairs("circular", (3,), 1, (4,)), (1,), True)
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------- Toeplitz


@pytest.mark.parametrize("m,n", [(1, 1), (6, 6), (4, 9), (9, 4)])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128, np.float32])
def test_toeplitz_is_scipy_toeplitz(m, n, dtype, rng, xp):
    c, r = random_array(rng, m, dtype), random_array(rng, n, dtype)
    op = structops.Toeplitz(xp.asarray(c), xp.asarray(r))
    assert op.shape == (m, n)
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(as_matrix(op, xp), sla.toeplitz(c, r), rtol=rtol, atol=rtol)
    assert_matches_dense(op, sla.toeplitz(c, r), rtol=1e-4 if dtype == np.float32 else None)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_toeplitz_without_r_is_hermitian(dtype, rng, xp):
    c = random_array(rng, 7, dtype)
    op = structops.Toeplitz(xp.asarray(c))
    T = as_matrix(op, xp)
    np.testing.assert_allclose(T, sla.toeplitz(c), rtol=1e-13, atol=1e-13)
    # Hermitian once the diagonal c[0] is real (scipy keeps c[0] on the diagonal)
    c[0] = c[0].real
    T = as_matrix(structops.Toeplitz(xp.asarray(c)), xp)
    np.testing.assert_allclose(T, T.conj().T, rtol=1e-13, atol=1e-13)


def test_toeplitz_ignores_r0(rng):
    c, r = rng.standard_normal(5), rng.standard_normal(6)
    r2 = r.copy()
    r2[0] = 1e3
    np.testing.assert_array_equal(
        as_matrix(structops.Toeplitz(c, r)), as_matrix(structops.Toeplitz(c, r2))
    )
    np.testing.assert_allclose(as_matrix(structops.Toeplitz(c, r2)), sla.toeplitz(c, r2))


def test_toeplitz_params(rng):
    c, r = rng.standard_normal(4), rng.standard_normal(6)
    np.testing.assert_array_equal(
        to_numpy(structops.Toeplitz(c, r).params), np.concatenate([c, r[1:]])
    )
    np.testing.assert_array_equal(to_numpy(structops.Toeplitz(c).params), c)


def test_toeplitz_jacobian_columns(rng):
    """Column j of the Jacobian is ``toeplitz(e_j-part) @ x`` (explicit, small)."""
    m, n = 3, 4
    c, r = rng.standard_normal(m), rng.standard_normal(n)
    x = rng.standard_normal(n)
    J = as_matrix(structops.Toeplitz(c, r).jacobian(x))
    assert J.shape == (m, m + n - 1)
    for j in range(m + n - 1):
        theta = np.zeros(m + n - 1)
        theta[j] = 1
        dc, dr = theta[:m], np.concatenate([[theta[0]], theta[m:]])
        np.testing.assert_allclose(J[:, j], sla.toeplitz(dc, dr) @ x, atol=1e-14)
    # symmetric case: parameters are c alone
    Js = as_matrix(structops.Toeplitz(c[:3]).jacobian(x[:3]))
    for j in range(3):
        e = np.eye(3)[j]
        np.testing.assert_allclose(Js[:, j], sla.toeplitz(e) @ x[:3], atol=1e-14)


# ---------------------------------------------------------------- Circulant


@pytest.mark.parametrize("n", [1, 2, 5, 8])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_circulant_is_scipy_circulant(n, dtype, rng, xp):
    c = random_array(rng, n, dtype)
    op = structops.Circulant(xp.asarray(c))
    assert op.dims == (n,) and op.dimsd == (n,)
    np.testing.assert_allclose(as_matrix(op, xp), sla.circulant(c), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4), (1, 5)])
def test_circulant_nd_dims_and_dense(shape, rng, xp):
    c = rng.standard_normal(shape)
    op = structops.Circulant(xp.asarray(c))
    assert tuple(op.dims) == shape and tuple(op.dimsd) == shape
    np.testing.assert_allclose(as_matrix(op, xp), dense_circulant_nd(c), rtol=1e-13,
                               atol=1e-13)


def test_circulant_2d_is_periodic_convolution_by_hand():
    """A shift kernel: c = delta at (1, 2) shifts the image by (1, 2) periodically."""
    c = np.zeros((3, 4))
    c[1, 2] = 1
    x = np.arange(12.0).reshape(3, 4)
    got = structops.Circulant(c) @ x
    np.testing.assert_allclose(got, np.roll(x, (1, 2), axis=(0, 1)), atol=1e-14)


@pytest.mark.parametrize("shape", [(7,), (6,), (3, 4), (2, 3, 3)])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_circulant_eigenvalues(shape, dtype, rng, xp):
    c = random_array(rng, shape, dtype)
    op = structops.Circulant(xp.asarray(c))
    lam = np.asarray(to_numpy(op.eigenvalues()))
    assert lam.shape == shape
    np.testing.assert_allclose(lam, np.fft.fftn(c), rtol=1e-12, atol=1e-12)
    C = dense_circulant_nd(c)
    assert_same_multiset(lam, np.linalg.eigvals(C), 1e-10)
    # position-wise: the Fourier mode exp(+2 pi i k.p / n) has eigenvalue lam[k]
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    for k in [(0,) * len(shape), tuple(n - 1 for n in shape), tuple(n // 2 for n in shape)]:
        phase = sum(ka * g / n for ka, g, n in zip(k, grids, shape))
        f = np.exp(2j * np.pi * phase).ravel()
        np.testing.assert_allclose(C @ f, lam[k] * f, atol=1e-11 * np.abs(lam).max())


@pytest.mark.parametrize("shape", [(8,), (4, 5), (2, 3, 3)])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_circulant_solve(shape, dtype, rng, xp):
    c = random_array(rng, shape, dtype)
    c.flat[0] += 3 * np.prod(shape) ** 0.5  # well conditioned
    op = structops.Circulant(xp.asarray(c))
    N = int(np.prod(shape))
    C = dense_circulant_nd(c)
    b = random_array(rng, N, dtype)
    x = op.solve(xp.asarray(b))
    assert x.shape == (N,)
    np.testing.assert_allclose(to_numpy(x), np.linalg.solve(C, b), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_numpy(op @ x), b, rtol=1e-10, atol=1e-12)
    # dims-shaped right-hand side
    xs = op.solve(xp.asarray(b.reshape(shape)))
    assert xs.shape == shape
    np.testing.assert_allclose(to_numpy(xs).ravel(), to_numpy(x), rtol=1e-12, atol=1e-13)
    # a batch of right-hand sides
    Bm = random_array(rng, (N, 3), dtype)
    X = op.solve(xp.asarray(Bm))
    assert X.shape == (N, 3)
    np.testing.assert_allclose(to_numpy(X), np.linalg.solve(C, Bm), rtol=1e-10, atol=1e-12)


def test_circulant_solve_float32(rng):
    c = rng.standard_normal(9).astype(np.float32)
    c[0] += 10
    op = structops.Circulant(c)
    b = rng.standard_normal(9).astype(np.float32)
    x = op.solve(b)
    assert x.dtype == np.float32
    np.testing.assert_allclose(op @ x, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "c",
    [
        np.ones(5),  # eigenvalues (5, 0, 0, 0, 0)
        np.array([1.0, -1.0, 0.0, 0.0]),  # zero sum: eigenvalue 0 at k = 0
        np.array([1.0, 1.0, 1.0, 1.0]).reshape(2, 2),  # multilevel
        np.fft.ifft(np.array([1.0, 2.0, 1e-19, 3.0])),  # numerically singular
        np.zeros(3),
    ],
    ids=["ones", "zero-sum", "2d-ones", "tiny-eigenvalue", "zero"],
)
def test_singular_circulant_solve_raises(c):
    op = structops.Circulant(c)
    with pytest.raises(np.linalg.LinAlgError):
        op.solve(np.ones(c.shape).ravel())


def test_nearly_singular_but_invertible_circulant_solves(rng):
    """An eigenvalue 1e-6 of max 3 is small but far above eps: solve works."""
    lam = np.array([1.0, 2.0, 1e-6, 3.0])
    op = structops.Circulant(np.fft.ifft(lam))
    b = np.fft.ifft(np.array([0.0, 0.0, 1.0, 0.0]))  # the eigenvector of 1e-6
    x = op.solve(b)
    np.testing.assert_allclose(x, b / 1e-6, rtol=1e-6)


# ------------------------------------------------ Circulant vs ConvND circular


@pytest.mark.parametrize("shape", [(7,), (5, 3), (3, 3, 5)])
def test_circulant_equals_circular_conv(shape, rng, xp):
    """``C(c) x = ConvND(K, padding='circular') x`` with ``K[d] = c[(h - d) mod n]``.

    With ``h = (n-1)/2`` (odd n) the layer computes
    ``y[p] = sum_d K[d] x[(p + d - h) mod n]``; substituting ``q = p + d - h``,
    ``y[p] = sum_q K[q - p + h] x[q]``, which is the circulant
    ``c[(p - q) mod n]`` exactly when ``K[d] = c[(h - d) mod n]``.
    """
    c = rng.standard_normal(shape)
    idx = [((n - 1) // 2 - np.arange(n)) % n for n in shape]
    K = c[np.ix_(*idx)][None, None]
    circ = structops.Circulant(xp.asarray(c))
    conv = structops.ConvND(xp.asarray(K), shape, padding="circular")
    assert conv.shape == circ.shape
    np.testing.assert_allclose(as_matrix(conv, xp), as_matrix(circ, xp), rtol=1e-12,
                               atol=1e-12)
    X = xp.asarray(rng.standard_normal((circ.shape[1], 2)))
    np.testing.assert_allclose(to_numpy(conv.matmat(X)), to_numpy(circ.matmat(X)), rtol=1e-12,
                               atol=1e-12)

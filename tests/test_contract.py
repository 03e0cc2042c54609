"""The operator contract, run over every factory of the registry.

For every registered operator, dtype and array backend: the adjoint (dot) test,
products against the independent dense matrix, batched against single products,
N-D shaped inputs, dtype and backend preservation, no mutation of inputs, and,
for operators with parameters, the parameter Jacobian (dot test, Taylor test,
dense columns, batched form, and its adjoint as a gradient).
"""

from __future__ import annotations

import numpy as np
import pytest

from structops._backend import to_numpy
from structops.testing import (
    assert_adjoint,
    assert_matches_dense,
    random_like_op,
    taylor_test,
)

from factories import FACTORIES, cases

CASES = [pytest.param(name, dt, id=f"{name}-{dt.name}") for name, dt in cases()]
DOUBLE_CASES = [
    pytest.param(name, dt, id=f"{name}-{dt.name}")
    for name, dt in cases()
    if dt in (np.float64, np.complex128)
]
CONV_CASES = [
    pytest.param(name, dt, id=f"{name}-{dt.name}")
    for name, dt in cases()
    if name.startswith("conv")
]


def tol(dtype):
    """Relative tolerance: the helpers' 1e-12 in double, looser in single."""
    return 1e-4 if np.dtype(dtype) in (np.float32, np.complex64) else None


def close_tol(dtype):
    return 1e-4 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-11


def assert_close(got, want, dtype, what=""):
    got, want = np.asarray(to_numpy(got)), np.asarray(to_numpy(want))
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    scale = max(np.linalg.norm(want), np.finfo(float).tiny)
    err = np.linalg.norm(got - want) / scale
    assert err <= close_tol(dtype), f"{what}: relative error {err:.3e}"


@pytest.fixture
def make(xp, rng):
    def _make(name, dtype):
        return FACTORIES[name](xp, rng, dtype)

    return _make


def needs_jacobian(case):
    if not case.has_jacobian:
        pytest.skip("operator without a parameter Jacobian")


# ------------------------------------------------------------------ products


@pytest.mark.parametrize("name,dtype", CASES)
def test_shape_and_attributes(make, xp, name, dtype):
    case = make(name, dtype)
    op = case.op
    assert tuple(op.shape) == case.dense.shape
    assert op.shape == (int(np.prod(op.dimsd)), int(np.prod(op.dims)))
    assert np.dtype(op.dtype) == np.dtype(dtype)
    assert op.xp is xp


@pytest.mark.parametrize("name,dtype", CASES)
def test_adjoint(make, rng, name, dtype):
    case = make(name, dtype)
    assert_adjoint(case.op, rtol=tol(dtype), rng=rng)


@pytest.mark.parametrize("name,dtype", CASES)
def test_matches_dense(make, rng, name, dtype):
    case = make(name, dtype)
    assert_matches_dense(case.op, case.dense, rtol=tol(dtype), rng=rng)


@pytest.mark.parametrize("name,dtype", CASES)
def test_batched_equals_columns(make, rng, name, dtype):
    case = make(name, dtype)
    op = case.op
    B = 4
    X = random_like_op(op, "model", B, rng=rng)
    Y = random_like_op(op, "data", B, rng=rng)
    AX, AHY = op.matmat(X), op.rmatmat(Y)
    assert AX.shape == (op.shape[0], B) and AHY.shape == (op.shape[1], B)
    for b in range(B):
        assert_close(AX[:, b], op.matvec(X[:, b]), dtype, f"matmat column {b}")
        assert_close(AHY[:, b], op.rmatvec(Y[:, b]), dtype, f"rmatmat column {b}")
    # op @ X and op.H @ Y take the same route
    assert_close(op @ X, AX, dtype, "op @ X")
    assert_close(op.H @ Y, AHY, dtype, "op.H @ Y")
    assert_close(op.H.matvec(Y[:, 0]), op.rmatvec(Y[:, 0]), dtype, "op.H.matvec")


@pytest.mark.parametrize("name,dtype", CASES)
def test_nd_shaped_input(make, rng, name, dtype):
    case = make(name, dtype)
    op = case.op
    x = random_like_op(op, "model", rng=rng)
    y = random_like_op(op, "data", rng=rng)
    out = op @ x.reshape(op.dims)
    assert out.shape == tuple(op.dimsd)
    assert_close(out.ravel(), op.matvec(x), dtype, "op @ x (dims-shaped)")
    back = op.H @ y.reshape(op.dimsd)
    assert back.shape == tuple(op.dims)
    assert_close(back.ravel(), op.rmatvec(y), dtype, "op.H @ y (dimsd-shaped)")
    B = 2
    X = random_like_op(op, "model", B, rng=rng)
    outB = op @ X.reshape(*op.dims, B)
    assert outB.shape == (*op.dimsd, B)
    assert_close(outB.reshape(-1, B), op.matmat(X), dtype, "op @ X (dims-shaped batch)")


@pytest.mark.parametrize("name,dtype", CASES)
def test_dtype_and_backend_preserved(make, rng, xp, name, dtype):
    case = make(name, dtype)
    op = case.op
    x = random_like_op(op, "model", rng=rng)
    y = random_like_op(op, "data", rng=rng)
    X = random_like_op(op, "model", 3, rng=rng)
    Y = random_like_op(op, "data", 3, rng=rng)
    for what, out in [
        ("matvec", op.matvec(x)),
        ("rmatvec", op.rmatvec(y)),
        ("matmat", op.matmat(X)),
        ("rmatmat", op.rmatmat(Y)),
    ]:
        assert out.dtype == np.dtype(dtype), f"{what} returned {out.dtype} for {dtype}"
        assert isinstance(out, xp.ndarray), f"{what} returned {type(out)}"


@pytest.mark.parametrize("name,dtype", CASES)
def test_products_do_not_mutate(make, rng, name, dtype):
    case = make(name, dtype)
    op = case.op
    x = random_like_op(op, "model", 2, rng=rng)
    y = random_like_op(op, "data", 2, rng=rng)
    x0, y0 = to_numpy(x).copy(), to_numpy(y).copy()
    p0 = None if case.param is None else to_numpy(case.param).copy()
    first = to_numpy(op.matvec(x[:, 0])).copy()
    op.matvec(x[:, 0]), op.rmatvec(y[:, 0]), op.matmat(x), op.rmatmat(y)
    np.testing.assert_array_equal(to_numpy(x), x0)
    np.testing.assert_array_equal(to_numpy(y), y0)
    if p0 is not None:
        np.testing.assert_array_equal(to_numpy(case.param), p0)
    # a repeated product gives the same answer (no hidden state)
    np.testing.assert_array_equal(to_numpy(op.matvec(x[:, 0])), first)


# ------------------------------------------------------------------ Jacobian


@pytest.mark.parametrize("name,dtype", CASES)
def test_rebuild_reproduces_operator(make, rng, name, dtype):
    """``rebuild(param)`` is the operator itself (the Jacobian tests rely on it)."""
    case = make(name, dtype)
    needs_jacobian(case)
    assert_matches_dense(case.rebuild(case.param), case.dense, rtol=tol(dtype), rng=rng)


@pytest.mark.parametrize("name,dtype", CASES)
def test_jacobian_shape_and_adjoint(make, rng, xp, name, dtype):
    case = make(name, dtype)
    needs_jacobian(case)
    op = case.op
    x = random_like_op(op, "model", rng=rng)
    J = op.jacobian(x)
    P = int(np.prod(case.param.shape))
    assert tuple(J.shape) == (op.shape[0], P)
    assert int(np.prod(J.dims)) == P
    if case.family in ("conv", "circulant", "extended"):
        assert tuple(J.dims) == tuple(case.param.shape)
        assert tuple(J.dimsd) == tuple(op.dimsd)
    assert np.dtype(J.dtype) == np.dtype(dtype)
    assert_adjoint(J, rtol=tol(dtype), rng=rng, xp=xp)


@pytest.mark.parametrize("name,dtype", CASES)
def test_jacobian_taylor(make, rng, xp, name, dtype):
    case = make(name, dtype)
    needs_jacobian(case)
    op = case.op
    x = random_like_op(op, "model", rng=rng)
    J = op.jacobian(x)

    def f(theta):
        return case.rebuild(theta) @ x

    table = taylor_test(f, J, case.param, rng=rng)
    # the map is linear in theta: E1 is at rounding level relative to E0
    assert table[:, 2].max() <= 1e-3 * table[:, 1].max()


@pytest.mark.parametrize("name,dtype", CASES)
def test_jacobian_matches_dense(make, rng, xp, name, dtype):
    case = make(name, dtype)
    needs_jacobian(case)
    op = case.op
    x = random_like_op(op, "model", rng=rng)
    shape = tuple(case.param.shape)
    P = int(np.prod(shape))
    cols = []
    for j in range(P):
        e = np.zeros(P, dtype=dtype)
        e[j] = 1
        cols.append(to_numpy(case.rebuild(xp.asarray(e.reshape(shape))) @ x))
    Jdense = np.stack(cols, axis=1)
    assert_matches_dense(op.jacobian(x), Jdense, rtol=tol(dtype), rng=rng, xp=xp)
    # a dims-shaped x gives the same Jacobian
    assert_matches_dense(
        op.jacobian(x.reshape(op.dims)), Jdense, rtol=tol(dtype), rng=rng, xp=xp
    )


@pytest.mark.parametrize("name,dtype", CONV_CASES)
def test_jacobian_batched(make, rng, xp, name, dtype):
    """``jacobian(X)`` for ``X`` of shape ``(N, B)``: one Jacobian per column, stacked."""
    case = make(name, dtype)
    assert case.family == "conv"
    op = case.op
    B = 3
    X = random_like_op(op, "model", B, rng=rng)
    Jb = op.jacobian(X)
    assert tuple(Jb.dims) == tuple(case.param.shape)
    assert tuple(Jb.dimsd) == (*op.dimsd, B)
    assert_adjoint(Jb, rtol=tol(dtype), rng=rng, xp=xp)
    dK = xp.asarray(np.asarray(rng.standard_normal(case.param.shape), dtype=dtype))
    out = Jb.matvec(dK.ravel()).reshape(-1, B)
    W = random_like_op(Jb, "data", rng=rng, xp=xp).reshape(-1, B)
    grad = Jb.rmatvec(W.reshape(-1))
    grad_sum = 0
    for b in range(B):
        Jcol = op.jacobian(X[:, b])
        assert_close(out[:, b], Jcol.matvec(dK.ravel()), dtype, f"batch column {b}")
        grad_sum = grad_sum + to_numpy(Jcol.rmatvec(xp.ascontiguousarray(W[:, b])))
    assert_close(grad, grad_sum, dtype, "batched adjoint = sum of per-column adjoints")
    # (*dims, B) input is the same batch
    Jb2 = op.jacobian(X.reshape(*op.dims, B))
    assert_close(Jb2.matvec(dK.ravel()), out.reshape(-1), dtype, "(*dims, B) input")


@pytest.mark.parametrize("name,dtype", DOUBLE_CASES)
def test_jacobian_adjoint_is_gradient(make, rng, xp, name, dtype):
    """``J^H (A x - y)`` is the gradient of ``0.5 ||A(theta) x - y||^2`` (torch autograd)."""
    torch = pytest.importorskip("torch")
    case = make(name, dtype)
    needs_jacobian(case)
    op = case.op
    x = random_like_op(op, "model", rng=rng)
    y = random_like_op(op, "data", rng=rng)
    grad = to_numpy(op.jacobian(x).rmatvec(op.matvec(x) - y)).reshape(case.param.shape)

    theta = torch.tensor(to_numpy(case.param), requires_grad=True)
    xt = torch.tensor(to_numpy(x)).reshape(-1, 1)
    yt = torch.tensor(to_numpy(y)).reshape(-1, 1)
    r = case.torch_apply(theta, xt) - yt
    loss = 0.5 * (r.abs() ** 2).sum()
    loss.backward()
    want = theta.grad.numpy()
    np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())

"""Assertions for operators: adjoint (dot) tests, dense comparisons, Taylor tests.

The package's own test suite uses these; they are public so that users can
check operators of their own the same way.
"""

from __future__ import annotations

import numpy as np

from .._backend import get_xp, to_numpy

__all__ = ["assert_adjoint", "assert_matches_dense", "taylor_test", "random_like_op"]


def default_rtol(dtype) -> float:
    return 1e-12 if np.finfo(np.dtype(dtype)).eps < 1e-10 else 2e-5


def op_xp(op, xp):
    if xp is not None:
        return xp
    return getattr(op, "xp", np)


def random_like_op(op, side: str, nbatch: int | None = None, rng=None, xp=None):
    """Random array for ``op``'s model (``side="model"``) or data (``"data"``) space.

    Real for real operators, complex for complex ones; ``(n,)`` or ``(n, nbatch)``.
    """
    xp = op_xp(op, xp)
    rng = np.random.default_rng(rng)
    n = op.shape[1] if side == "model" else op.shape[0]
    shape = (n,) if nbatch is None else (n, nbatch)
    a = rng.standard_normal(shape)
    if np.iscomplexobj(np.empty(0, dtype=op.dtype)):
        a = a + 1j * rng.standard_normal(shape)
    return xp.asarray(a.astype(op.dtype))


def _vdot(xp, a, b):
    return complex(to_numpy(xp.vdot(a.ravel(), b.ravel())))


def assert_adjoint(op, rtol: float | None = None, nbatch: int = 3, rng=None, xp=None):
    """Dot test: ``<A u, v> == <u, A^H v>`` for random ``u``, ``v``.

    Runs the test for single vectors (``matvec``/``rmatvec``) and for a batch of
    ``nbatch`` vectors (``matmat``/``rmatmat``). The error is measured relative
    to ``||A u|| ||v||``, which is scale invariant and immune to cancellation.

    Parameters
    ----------
    op : pylops.LinearOperator
    rtol : float, optional
        Default ``1e-12`` for double precision, ``2e-5`` for single.
    nbatch : int
        Batch size of the ``matmat`` test (0 skips it).
    rng : seed or Generator, optional
    xp : module, optional
        Array module of the inputs; defaults to ``op.xp`` or NumPy.

    Returns
    -------
    err : float
        The largest relative mismatch seen.
    """
    xp = op_xp(op, xp)
    rtol = default_rtol(op.dtype) if rtol is None else rtol
    rng = np.random.default_rng(rng)
    errs = []
    u = random_like_op(op, "model", rng=rng, xp=xp)
    v = random_like_op(op, "data", rng=rng, xp=xp)
    Au, AHv = op.matvec(u), op.rmatvec(v)
    if Au.shape != (op.shape[0],) or AHv.shape != (op.shape[1],):
        raise AssertionError(f"products have shapes {Au.shape}, {AHv.shape}; expected {op.shape[::-1]}")
    scale = float(xp.linalg.norm(Au) * xp.linalg.norm(v)) + float(
        xp.linalg.norm(AHv) * xp.linalg.norm(u)
    )
    errs.append(abs(_vdot(xp, v, Au) - _vdot(xp, AHv, u)) / max(scale, np.finfo(float).tiny))
    if nbatch:
        U = random_like_op(op, "model", nbatch, rng=rng, xp=xp)
        V = random_like_op(op, "data", nbatch, rng=rng, xp=xp)
        AU, AHV = op.matmat(U), op.rmatmat(V)
        if AU.shape != (op.shape[0], nbatch) or AHV.shape != (op.shape[1], nbatch):
            raise AssertionError(f"batched products have shapes {AU.shape}, {AHV.shape}")
        for j in range(nbatch):
            scale = float(xp.linalg.norm(AU[:, j]) * xp.linalg.norm(V[:, j])) + float(
                xp.linalg.norm(AHV[:, j]) * xp.linalg.norm(U[:, j])
            )
            d = abs(_vdot(xp, V[:, j], AU[:, j]) - _vdot(xp, AHV[:, j], U[:, j]))
            errs.append(d / max(scale, np.finfo(float).tiny))
    err = max(errs)
    if not err <= rtol:
        raise AssertionError(f"dot test failed for {op!r}: relative mismatch {err:.3e} > rtol {rtol:.1e}")
    return err


def assert_matches_dense(op, dense, rtol: float | None = None, nbatch: int = 3, rng=None, xp=None):
    """Compare ``op``'s products (single, batched, adjoint) with a dense matrix.

    Parameters
    ----------
    op : pylops.LinearOperator, shape ``(M, N)``
    dense : array, shape ``(M, N)``
        The matrix, built independently of ``op`` (NumPy or the op's backend).
    rtol : float, optional
        Relative to ``||dense||_F ||x||``; default ``1e-12`` (double) or
        ``2e-5`` (single precision).

    Returns
    -------
    err : float
        The largest relative error seen.
    """
    xp = op_xp(op, xp)
    dense = np.asarray(to_numpy(dense))
    if dense.shape != tuple(op.shape):
        raise AssertionError(f"dense matrix has shape {dense.shape}; operator has {op.shape}")
    rtol = default_rtol(op.dtype) if rtol is None else rtol
    rng = np.random.default_rng(rng)
    norm = max(np.linalg.norm(dense), np.finfo(float).tiny)
    errs = {}
    x = random_like_op(op, "model", rng=rng, xp=xp)
    y = random_like_op(op, "data", rng=rng, xp=xp)
    X = random_like_op(op, "model", nbatch, rng=rng, xp=xp)
    Y = random_like_op(op, "data", nbatch, rng=rng, xp=xp)
    xh, yh, Xh, Yh = (to_numpy(a).astype(np.result_type(a.dtype, np.float64)) for a in (x, y, X, Y))
    D = dense.astype(np.result_type(dense.dtype, np.float64))
    checks = {
        "matvec": (op.matvec(x), D @ xh, np.linalg.norm(xh)),
        "rmatvec": (op.rmatvec(y), D.conj().T @ yh, np.linalg.norm(yh)),
        "matmat": (op.matmat(X), D @ Xh, np.linalg.norm(Xh)),
        "rmatmat": (op.rmatmat(Y), D.conj().T @ Yh, np.linalg.norm(Yh)),
    }
    for name, (got, want, nx) in checks.items():
        got = to_numpy(got)
        if got.shape != want.shape:
            raise AssertionError(f"{name} returned shape {got.shape}; expected {want.shape}")
        errs[name] = np.linalg.norm(got - want) / (norm * max(nx, np.finfo(float).tiny))
    err = max(errs.values())
    if not err <= rtol:
        detail = ", ".join(f"{k}: {v:.2e}" for k, v in errs.items())
        raise AssertionError(f"{op!r} differs from the dense matrix ({detail}; rtol {rtol:.1e})")
    return err


def taylor_test(f, jac, x, v=None, h0: float = 1.0, nsteps: int = 10, rng=None):
    """Taylor test of a Jacobian: first-order remainder must shrink like ``h^2``.

    With ``E0(h) = ||f(x + h v) - f(x)||`` and
    ``E1(h) = ||f(x + h v) - f(x) - h J v||``, a correct Jacobian gives
    ``E0 = O(h)`` and ``E1 = O(h^2)`` (or ``E1`` at rounding level when ``f``
    is linear along ``v``). The test halves ``h`` ``nsteps`` times.

    Parameters
    ----------
    f : callable
        ``f(x) -> array``.
    jac : LinearOperator or callable
        The Jacobian at ``x``, applied as ``jac @ v`` (operator) or ``jac(v)``.
    x : array
        The point (any shape accepted by ``f``).
    v : array, optional
        Direction, same shape as ``x``; random by default.
    h0 : float
        First step.

    Returns
    -------
    table : ndarray, shape ``(nsteps, 3)``
        Columns ``h``, ``E0``, ``E1``.

    Raises
    ------
    AssertionError
        If ``E1`` neither decays at second order over the last three halvings
        (outside rounding level) nor sits at rounding level.
    """
    xp = get_xp(x)
    rng = np.random.default_rng(rng)
    if v is None:
        v = rng.standard_normal(x.shape)
        if np.iscomplexobj(x):
            v = v + 1j * rng.standard_normal(x.shape)
        v = xp.asarray(v.astype(x.dtype))
    fx = f(x)
    Jv = jac(v) if callable(jac) and not hasattr(jac, "matvec") else jac @ v.ravel()
    Jv = Jv.reshape(fx.shape)
    eps = np.finfo(np.result_type(fx.dtype, np.float32)).eps
    rows = []
    h = h0
    for _ in range(nsteps):
        fh = f(x + h * v)
        d = fh - fx
        rows.append((h, float(xp.linalg.norm(d)), float(xp.linalg.norm(d - h * Jv))))
        h /= 2
    table = np.array(rows)
    scale = float(xp.linalg.norm(fx)) + table[:, 1].max()
    noise = 1e3 * eps * max(scale, np.finfo(float).tiny)
    E1 = table[:, 2]
    # ratios E1(h/2)/E1(h) outside the rounding regime (f linear along v, or h tiny);
    # second order gives 0.25. Large steps may be pre-asymptotic, so the last
    # three such ratios (the smallest steps) decide.
    ratios = [E1[k + 1] / E1[k] for k in range(nsteps - 1) if E1[k] > noise and E1[k + 1] > noise]
    ok = all(r <= 0.35 for r in ratios[-3:])
    if table[:, 1].max() == 0.0 and float(xp.linalg.norm(Jv)) > noise:
        ok = False
    if not ok:
        lines = "\n".join(f"  h={r[0]:.3e}  E0={r[1]:.3e}  E1={r[2]:.3e}" for r in rows)
        raise AssertionError("Taylor test failed: E1 does not decay like h^2\n" + lines)
    return table

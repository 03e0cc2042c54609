r"""Variable projection for separable nonlinear least squares.

Solves

.. math::

    \min_{\theta, w}\ \tfrac12 \|W(\Phi(\theta) w - y)\|^2
    + \tfrac{\lambda}{2} \|L w\|^2 + \tfrac{\alpha}{2} \|\theta\|^2

by eliminating the linear coefficients ``w``: for fixed ``theta`` the problem is
a linear least-squares problem with solution ``w(theta)``, and the reduced
(projected) problem in ``theta`` alone is solved by Gauss-Newton /
Levenberg-Marquardt (SciPy ``least_squares``) with the exact Golub-Pereyra
Jacobian of the reduced residual or Kaufman's approximation.

The inner problem is solved exactly (SVD) when ``Phi(theta)`` is small, and
matrix-free when it is large: PyLops ``cgls`` warm-started from the previous
coefficients, and a block conjugate-gradient solve (all ``p`` parameter
directions in one batched product per iteration) for the projections in the
Jacobian. ``phi(theta)`` may be a dense array or any linear operator; a
structops operator that carries ``jacobian(x)`` (and ``adjoint_jacobian(y)``)
needs no derivative callable, e.g. a parametric convolution layer from
:mod:`structops.parametric`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from pylops import LinearOperator
from pylops.optimization.basic import cgls
from scipy.optimize import least_squares

from .._backend import blas_threads, get_xp, to_numpy
from .._validate import as_int, as_real
from ..linalg.preconditioners import conv_preconditioner, normal_preconditioner
from ._optim import Result, check_callback, stops

__all__ = ["varpro", "VarProResult", "reduced_jacobian", "conv_preconditioner", "normal_preconditioner"]

_METHODS = ("golub-pereyra", "kaufman")


@dataclass(frozen=True)
class VarProResult(Result):
    """Result of :func:`varpro` (all arrays on the host, float64).

    Attributes
    ----------
    x : ndarray, shape ``(p,)``
        Nonlinear parameters ``theta`` (also readable as ``theta``).
    fun : float
        Value of the full objective (with both regularisation terms).
    success, message, seconds
        As in :class:`~structops.solvers.Result`.
    nit : int
        Outer iterations: Jacobian evaluations of the reduced problem (the
        first at ``theta0``).
    nfev : int
        Evaluations of the reduced residual.
    history : dict of ndarray
        ``"fun"``: the objective at every Jacobian evaluation (the accepted
        iterates; ``nit`` entries).
    coef : ndarray, shape ``(n,)`` or ``(n, q)``
        Linear coefficients ``w(theta)``.
    residual_norm : float
        Weighted data residual norm ``||W(Phi w - y)||`` (``wresid_norm`` of
        ``varpro.m``).
    wresid : ndarray
        Weighted residual ``W(Phi w - y)``, the shape of ``y``. (``varpro.m``
        reports ``W(y - Phi w)``, the negative.)
    y_est : ndarray
        Model values ``Phi(theta) w``.
    njev : int
        Jacobian evaluations.
    inner_iterations : int
        Total Krylov iterations of the inner solves (0 for the exact solver).
    status : int
        SciPy ``least_squares`` status, or ``-2`` when the callback stopped the run.
    method : str
        ``"golub-pereyra"`` or ``"kaufman"``.
    inner : str
        ``"exact"`` or ``"krylov"``.
    sigma : float
        Regression standard deviation ``residual_norm / sqrt(dof)``,
        ``dof = (number of data) - (number of parameters)`` (NaN if ``dof <= 0``).
    cov_theta, std_theta : ndarray
        Covariance ``sigma^2 (J^T J)^+`` of ``theta`` and standard errors, from
        Kaufman's Jacobian at the solution (the ``theta`` block of the full
        covariance by the Schur complement).
    covariance : ndarray or None
        Covariance of all parameters ``(coef, theta)`` (linear first, as in
        ``varpro.m``); computed for a single right-hand side when the number of
        parameters is at most ``stats_max``.
    std_coef : ndarray or None
    correlation : ndarray or None
        Correlation matrix of ``covariance`` (or of ``cov_theta`` alone).
    """

    coef: np.ndarray
    residual_norm: float
    wresid: np.ndarray
    y_est: np.ndarray
    njev: int
    inner_iterations: int
    status: int
    method: str
    inner: str
    sigma: float
    cov_theta: np.ndarray
    std_theta: np.ndarray
    covariance: np.ndarray | None = None
    std_coef: np.ndarray | None = None
    correlation: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    _renamed: ClassVar[dict] = {"objective": "fun", "time": "seconds"}

    @property
    def theta(self):
        """The nonlinear parameters (``x``)."""
        return self.x


class _Stop(Exception):
    """Raised inside ``least_squares`` when the callback asks to stop."""


# ---------------------------------------------------------------- helpers
def _mm(A, X):
    """``A @ X`` for arrays, sparse matrices and (SciPy or PyLops) operators, ``X`` 2-D."""
    if hasattr(A, "matmat") and not isinstance(A, np.ndarray):
        return A.matmat(X)
    return A @ X


def _rmm(A, Y):
    if hasattr(A, "rmatmat") and not isinstance(A, np.ndarray):
        return A.rmatmat(Y)
    return A.conj().T @ Y


def _is_dense(A) -> bool:
    return hasattr(A, "ndim") and hasattr(A, "dtype") and not hasattr(A, "matvec") and A.ndim == 2 \
        and not hasattr(A, "tocsr")


class _Augmented(LinearOperator):
    """``A = [diag(wt) Phi; sqrt(lam) L]`` as a PyLops operator (``L = I`` when ``None``)."""

    def __init__(self, Phi, wt, slam, L, n, dtype):
        self.Phi, self.wt, self.slam, self.L = Phi, wt, slam, L
        self.m = Phi.shape[0]
        self.reg = slam > 0
        nl = (n if L is None else L.shape[0]) if self.reg else 0
        self.nl = nl
        super().__init__(dtype=np.dtype(dtype), shape=(self.m + nl, n))

    def _matmat(self, X):
        xp = get_xp(X)
        top = _mm(self.Phi, X)
        if self.wt is not None:
            top = self.wt[:, None] * top
        if not self.reg:
            return top
        bot = X if self.L is None else _mm(self.L, X)
        return xp.concatenate([top, self.slam * bot], axis=0)

    def _rmatmat(self, Y):
        top = Y[: self.m]
        if self.wt is not None:
            top = self.wt[:, None] * top
        out = _rmm(self.Phi, top)
        if self.reg:
            bot = Y[self.m:]
            out = out + self.slam * (bot if self.L is None else _rmm(self.L, bot))
        return out

    def _matvec(self, x):
        return self._matmat(x.reshape(-1, 1)).reshape(-1)

    def _rmatvec(self, y):
        return self._rmatmat(y.reshape(-1, 1)).reshape(-1)


def _block_cg(apply_N, Z, X0, tol, maxiter, M=None):
    """(Preconditioned) conjugate gradients for ``N X = Z`` (``N`` s.p.d.), all columns at once.

    Columns are independent systems sharing one batched product per
    iteration; a column stops when its residual is below ``tol ||z_j||``.
    ``M(R)`` applies a preconditioner (an s.p.d. approximation of ``N^{-1}``).
    Returns ``X`` and the number of iterations.
    """
    xp = get_xp(Z)
    if X0 is None:
        X = xp.zeros_like(Z)
        R = Z.copy()
    else:
        X = X0.copy()
        R = Z - apply_N(X)
    S = R if M is None else M(R)
    P = S.copy()
    rs = (R * S).sum(axis=0)
    rr = (R * R).sum(axis=0)
    target = (tol * xp.sqrt((Z * Z).sum(axis=0))) ** 2
    it = 0
    while it < maxiter:
        active = rr > target
        if not bool(active.any()):
            break
        Q = apply_N(P)
        pq = (P * Q).sum(axis=0)
        alpha = xp.where(active & (pq > 0), rs / xp.where(pq > 0, pq, 1), 0)
        X += alpha * P
        R -= alpha * Q
        S = R if M is None else M(R)
        rs_new = (R * S).sum(axis=0)
        rr = xp.where(active, (R * R).sum(axis=0), rr)
        beta = xp.where(active, rs_new / xp.where(rs > 0, rs, 1), 0)
        P = S + beta * P
        rs = xp.where(active, rs_new, rs)
        it += 1
    return X, it


def _unit(p, dtype, xp):
    return xp.eye(p, dtype=dtype)


def _F_from_op(op, rw, q, p, dtype, xp):
    """``F[:, j, k] = dPhi_k^T rw_j`` (``n x q x p``) from a structops operator."""
    n = op.shape[1]
    target = rw[:, 0] if q == 1 else rw
    if hasattr(op, "adjoint_jacobian"):
        F = op.adjoint_jacobian(target).matmat(_unit(p, dtype, xp))
        return F.reshape(n, q, p)
    from ..operators.conv import ConvND, require_ungrouped
    from ..operators.parametric import conv as conv_model

    if isinstance(op, ConvND):
        require_ungrouped(op, "method='golub-pereyra' with a ConvND layer")
        model = conv_model(op.kernel.shape, op.in_shape, stride=op.stride,
                           padding=op.padding if not op.circular else "circular",
                           dilation=op.dilation, method=op.method)
        return _F_from_op(model.operator(op.kernel.reshape(-1)), rw, q, p, dtype, xp)
    if n > 4000:
        raise ValueError(
            f"method='golub-pereyra' needs dPhi_k^T r for the {n} columns of phi(theta), and "
            f"{type(op).__name__} has no adjoint_jacobian(y); give dphi, add adjoint_jacobian, "
            "or use method='kaufman'"
        )
    # F^T x = J_x^H r: one Jacobian per unit vector (small problems only)
    F = xp.zeros((n, q, p), dtype=dtype)
    for i in range(n):
        e = xp.zeros(n, dtype=dtype)
        e[i] = 1
        J = op.jacobian(e)
        for j in range(q):
            F[i, j] = J.rmatvec(rw[:, j])
    return F


# ---------------------------------------------------------------- the problem
class _Reduced:
    """Reduced residual and Jacobian of the separable problem, with a cache."""

    def __init__(self, phi, dphi, y, weights, tikhonov, L, theta_reg, method, inner,
                 inner_tol, inner_maxiter, jac_tol, p, preconditioner=None):
        self.phi, self.dphi = phi, dphi
        self.preconditioner = preconditioner
        xp = get_xp(y)
        self.xp = xp
        self.vector = y.ndim == 1
        Y = y.reshape(-1, 1) if self.vector else y
        self.m, self.q = Y.shape
        self.dtype = np.float64
        self.Y = Y.astype(self.dtype)
        self.wt = None if weights is None else xp.asarray(weights, dtype=self.dtype)
        self.lam, self.slam = float(tikhonov), float(np.sqrt(tikhonov))
        self.L = L
        self.alpha, self.salpha = float(theta_reg), float(np.sqrt(theta_reg))
        self.method, self.inner = method, inner
        self.inner_tol, self.inner_maxiter, self.jac_tol = inner_tol, inner_maxiter, jac_tol
        self.p = p
        self.nfev = self.njev = self.inner_iterations = 0
        self.history = []
        self._cache = None
        self._w_prev = None
        self._U_prev = None
        self.n = None

    # -- linear solve ------------------------------------------------------------
    def _weighted(self, Y):
        return Y if self.wt is None else self.wt[:, None] * Y

    def _solve(self, theta):
        xp = self.xp
        Phi = self.phi(theta)
        if len(Phi.shape) != 2 or Phi.shape[0] != self.m:
            raise ValueError(f"phi(theta) has shape {tuple(Phi.shape)}; expected ({self.m}, n)")
        n = Phi.shape[1]
        if self.n is None:
            self.n = n
            if self.inner == "auto":
                self.inner = "exact" if (_is_dense(Phi) or n <= 400) else "krylov"
        st = {"theta": theta.copy(), "Phi": Phi}
        b_top = self._weighted(self.Y)
        if self.inner == "exact":
            D = Phi if _is_dense(Phi) else _mm(Phi, xp.eye(n, dtype=self.dtype))
            D = xp.asarray(D, dtype=self.dtype)
            A = self._weighted(D)
            if self.lam > 0:
                Lm = xp.eye(n, dtype=self.dtype) if self.L is None else (
                    self.L if _is_dense(self.L) else _mm(self.L, xp.eye(n, dtype=self.dtype)))
                A = xp.concatenate([A, self.slam * xp.asarray(Lm, dtype=self.dtype)], axis=0)
            U, s, Vt = xp.linalg.svd(A, full_matrices=False)
            tol = max(A.shape) * np.finfo(self.dtype).eps * (float(s[0]) if s.size else 0.0)
            r = int((s > tol).sum())
            U, s, Vt = U[:, :r], s[:r], Vt[:r]
            b = xp.zeros((A.shape[0], self.q), dtype=self.dtype)
            b[: self.m] = b_top
            w = Vt.T @ ((U.T @ b) / s[:, None])
            st.update(dense=D, A=A, U=U, s=s, Vt=Vt)
            res = A @ w - b
        else:
            Aop = _Augmented(Phi, self.wt, self.slam, self.L, n, self.dtype)
            b = xp.zeros((Aop.shape[0], self.q), dtype=self.dtype)
            b[: self.m] = b_top
            M = self._precond(theta, Phi)
            st["M"] = M
            w = xp.zeros((n, self.q), dtype=self.dtype)
            if M is not None:  # preconditioned CG on the normal equations, all columns at once
                w, it = _block_cg(lambda X: Aop.rmatmat(Aop.matmat(X)), Aop.rmatmat(b), self._w_prev,
                                  self.inner_tol, self.inner_maxiter, M)
                self.inner_iterations += it
            for j in range(self.q if M is None else 0):
                x0 = None if self._w_prev is None else self._w_prev[:, j].copy()
                atb = float(xp.linalg.norm(Aop.rmatvec(b[:, j])))
                wj, _, iit, *_ = cgls(Aop, b[:, j], x0=x0, niter=self.inner_maxiter,
                                      tol=(self.inner_tol * atb) ** 2)
                w[:, j] = wj
                self.inner_iterations += int(iit)
            st["Aop"] = Aop
            res = Aop.matmat(w) - b
        self._w_prev = w
        st.update(w=w, res=res)
        rfull = res.reshape(-1)
        if self.alpha > 0:
            rfull = xp.concatenate([rfull, self.salpha * xp.asarray(theta, dtype=self.dtype)])
        st["rfull"] = rfull
        st["objective"] = 0.5 * float(rfull @ rfull)
        self._cache = st
        return st

    def _precond(self, theta, Phi):
        pc = self.preconditioner
        if pc is None:
            return None
        if isinstance(pc, str):
            if pc not in ("circulant", "normal"):
                raise ValueError(f"unknown preconditioner {pc!r}; expected 'circulant', 'normal', a callable or None")
            scale = 1.0 if self.wt is None else float((self.wt**2).mean())
            damp2 = self.lam if self.L is None else 0.0
            if pc == "normal":
                return normal_preconditioner(Phi, damp2=damp2, scale=scale)
            return conv_preconditioner(Phi, damp2=damp2, scale=scale)
        return pc(theta, Phi)

    def state(self, theta):
        c = self._cache
        if c is not None and c["theta"].shape == theta.shape and np.array_equal(c["theta"], theta):
            return c
        return self._solve(theta)

    # -- derivatives ---------------------------------------------------------------
    def _derivatives(self, st, need_F):
        """``E[:, j, k] = dPhi_k w_j`` (``m x q x p``) and ``F[:, j, k] = dPhi_k^T rw_j``."""
        xp, p, q = self.xp, self.p, self.q
        theta, Phi, w = st["theta"], st["Phi"], st["w"]
        rw = self._weighted(st["res"][: self.m])  # dPhi_k^T W r
        if self.dphi is not None:
            D = xp.asarray(self.dphi(theta), dtype=self.dtype)
            if D.shape != (self.m, self.n, p):
                raise ValueError(f"dphi(theta) has shape {tuple(D.shape)}; expected {(self.m, self.n, p)}")
            E = xp.einsum("mnp,nq->mqp", D, w)
            F = xp.einsum("mnp,mq->nqp", D, rw) if need_F else None
            return E, F
        if not hasattr(Phi, "jacobian"):
            raise TypeError(
                f"phi(theta) returned {type(Phi).__name__}, which has no .jacobian(x); "
                "give dphi(theta), the (m, n, p) derivative array"
            )
        J = Phi.jacobian(w[:, 0] if q == 1 else w)
        if J.shape != (self.m * q, p):
            raise ValueError(f"phi(theta).jacobian(w) has shape {J.shape}; expected {(self.m * q, p)}")
        E = xp.asarray(J.matmat(_unit(p, self.dtype, xp)), dtype=self.dtype).reshape(self.m, q, p)
        F = _F_from_op(Phi, rw, q, p, self.dtype, xp) if need_F else None
        return E, (None if F is None else xp.asarray(F, dtype=self.dtype))

    def jacobian(self, theta, method=None):
        """Jacobian of the reduced residual at ``theta``, ``(len(rfull), p)``."""
        xp, p, q = self.xp, self.p, self.q
        method = self.method if method is None else method
        st = self.state(theta)
        gp = method == "golub-pereyra"
        E, F = self._derivatives(st, gp)
        E = self._weighted(E.reshape(self.m, q * p)).reshape(self.m, q, p)
        m_aug = st["res"].shape[0]
        if self.inner == "exact":
            U, s, Vt = st["U"], st["s"], st["Vt"]
            Eaug = xp.zeros((m_aug, q * p), dtype=self.dtype)
            Eaug[: self.m] = E.reshape(self.m, q * p)
            Jr = Eaug - U @ (U.T @ Eaug)
            if gp:
                Jr -= U @ ((Vt @ F.reshape(self.n, q * p)) / s[:, None])
        else:
            Aop = st["Aop"]
            Eaug = xp.zeros((m_aug, q * p), dtype=self.dtype)
            Eaug[: self.m] = E.reshape(self.m, q * p)
            Z = Aop.rmatmat(Eaug)
            if gp:
                Z = Z + F.reshape(self.n, q * p)
            U0 = self._U_prev if (self._U_prev is not None and self._U_prev.shape == Z.shape) else None
            Uc, it = _block_cg(lambda X: Aop.rmatmat(Aop.matmat(X)), Z, U0, self.jac_tol, self.inner_maxiter,
                               st.get("M"))
            self.inner_iterations += it
            self._U_prev = Uc
            Jr = Eaug - Aop.matmat(Uc)
        # rows ordered like res.reshape(-1): (row, column j), columns k
        Jr = Jr.reshape(m_aug, q, p).reshape(m_aug * q, p)
        if self.alpha > 0:
            Jr = xp.concatenate([Jr, self.salpha * xp.eye(p, dtype=self.dtype)], axis=0)
        return Jr


def reduced_jacobian(phi, y, theta, *, dphi=None, weights=None, tikhonov=0.0, L=None,
                     theta_reg=0.0, method="golub-pereyra", inner="auto", inner_tol=1e-10,
                     inner_maxiter=1000, preconditioner=None):
    """Reduced residual and its Jacobian at ``theta`` (for tests and diagnostics).

    Same arguments as :func:`varpro`.

    Returns
    -------
    r : ndarray
        The reduced residual ``[W(Phi w(theta) - y); sqrt(tikhonov) L w;
        sqrt(theta_reg) theta]`` (flattened).
    J : ndarray, shape ``(len(r), p)``
    w : ndarray
        ``w(theta)``.
    """
    prob = _setup(phi, y, theta, dphi, weights, tikhonov, L, theta_reg, method, inner,
                  inner_tol, inner_maxiter, inner_tol, preconditioner)
    theta = np.asarray(to_numpy(theta), dtype=np.float64).reshape(-1)
    st = prob.state(theta)
    J = prob.jacobian(theta)
    w = st["w"][:, 0] if prob.vector else st["w"]
    return to_numpy(st["rfull"]), to_numpy(J), to_numpy(w)


def _setup(phi, y, theta0, dphi, weights, tikhonov, L, theta_reg, method, inner, inner_tol,
           inner_maxiter, jac_tol, preconditioner=None):
    if not callable(phi):
        raise TypeError(f"phi must be callable, theta -> array or LinearOperator; got {type(phi).__name__}")
    if dphi is not None and not callable(dphi):
        raise TypeError(f"dphi must be callable or None; got {type(dphi).__name__}")
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {_METHODS}")
    if inner not in ("auto", "exact", "krylov"):
        raise ValueError(f"unknown inner solver {inner!r}; expected 'auto', 'exact' or 'krylov'")
    if not hasattr(y, "ndim") or y.ndim not in (1, 2):
        raise ValueError(f"y must be a 1-D array (m,) or a 2-D array (m, q); got {getattr(y, 'shape', y)!r}")
    tikhonov = as_real(tikhonov, "tikhonov", nonnegative=True)
    theta_reg = as_real(theta_reg, "theta_reg", nonnegative=True)
    inner_tol = as_real(inner_tol, "inner_tol", positive=True)
    if not inner_tol < 1:
        raise ValueError(f"inner_tol must be in (0, 1): a relative residual tolerance; got {inner_tol}")
    inner_maxiter = as_int(inner_maxiter, "inner_maxiter", minimum=1)
    if jac_tol is not None:
        jac_tol = as_real(jac_tol, "jac_tol", positive=True)
    if L is not None and tikhonov == 0:
        raise ValueError("L is given but tikhonov == 0; set tikhonov > 0 to use L")
    xp = get_xp(y)
    if not bool(xp.isfinite(y).all()):
        raise ValueError("y has NaN or Inf entries; expected finite values")
    if weights is not None:
        weights = xp.asarray(weights)
        if weights.shape != (y.shape[0],):
            raise ValueError(f"weights has shape {tuple(weights.shape)}; expected ({y.shape[0]},), one per row of y")
    p = int(np.size(theta0))
    if p == 0:
        raise ValueError("theta0 is empty; expected at least one nonlinear parameter")
    return _Reduced(phi, dphi, y, weights, tikhonov, L, theta_reg, method, inner, inner_tol,
                    inner_maxiter, jac_tol, p, preconditioner)


def varpro(phi, y, theta0, *, dphi=None, weights=None, tikhonov=0.0, L=None, theta_reg=0.0,
           method="golub-pereyra", inner="auto", outer="trf", bounds=None, xtol=1e-10,
           ftol=1e-10, gtol=1e-10, max_nfev=None, inner_tol=1e-10, inner_maxiter=1000,
           jac_tol=None, preconditioner=None, x_scale=1.0, callback=None, stats=True, stats_max=500,
           verbose=0):
    r"""Separable nonlinear least squares by variable projection.

    Parameters
    ----------
    phi : callable
        ``phi(theta)`` returns ``Phi(theta)``, shape ``(m, n)``: a NumPy/CuPy
        array, a SciPy sparse matrix or a linear operator (PyLops, SciPy).
    y : array, shape ``(m,)`` or ``(m, q)``
        Data; ``q`` columns are ``q`` right-hand sides sharing ``Phi`` (e.g. the
        classes of a network's last linear layer), ``w`` then has shape ``(n, q)``.
    theta0 : array, shape ``(p,)``
        Starting nonlinear parameters.
    dphi : callable, optional
        ``dphi(theta)`` returns the ``(m, n, p)`` array ``dPhi/dtheta_k``. May
        be omitted when ``phi(theta)`` has ``.jacobian(x)`` (``v -> dPhi(v) x``,
        every structops parametric operator); the Golub-Pereyra Jacobian also
        uses ``.adjoint_jacobian(y)`` (``v -> dPhi(v)^T y``) when present.
    weights : array, shape ``(m,)``, optional
        Diagonal of ``W``.
    tikhonov : float
        ``lambda >= 0`` of the term ``lambda/2 ||L w||^2``.
    L : array or LinearOperator, shape ``(k, n)``, optional
        Regulariser of ``w``; the identity when omitted.
    theta_reg : float
        ``alpha >= 0`` of the term ``alpha/2 ||theta||^2``.
    method : {"golub-pereyra", "kaufman"}
        Full Jacobian of the reduced residual, or Kaufman's approximation
        (drops the second term; cheaper, often as many iterations).
    inner : {"auto", "exact", "krylov"}
        Inner linear solver: SVD of the dense ``[W Phi; sqrt(lambda) L]``, or
        matrix-free (``cgls`` for ``w``, block CG for the Jacobian's
        projections), warm-started. ``"auto"``: exact for arrays and
        ``n <= 400``.
    outer : {"trf", "lm", "dogbox"}
        SciPy ``least_squares`` method of the reduced problem (``"lm"``:
        MINPACK Levenberg-Marquardt, as ``varpro.m``; no bounds).
    bounds : (lower, upper), optional
        Bounds on ``theta`` (``"trf"`` / ``"dogbox"``).
    xtol, ftol, gtol, max_nfev, x_scale
        Passed to ``least_squares``.
    inner_tol, inner_maxiter : float, int
        Relative tolerance (normal-equation residual) and iteration cap of the
        Krylov solves of ``w``.
    jac_tol : float, optional
        Relative tolerance of the block CG in the Jacobian (default
        ``inner_tol``).
    preconditioner : None, "circulant", "normal" or callable, optional
        Krylov path only. ``"circulant"``: :func:`conv_preconditioner` of
        ``phi(theta)`` (a stride-1 :class:`~structops.ConvND`; exact for
        circular padding). ``"normal"``: :func:`normal_preconditioner`, the
        sparse Cholesky factor of the banded normal matrix of a zero-padded
        layer (exact without row weights). A callable ``preconditioner(theta, Phi)`` returns
        ``M(X)`` approximating ``(A^T A)^{-1} X`` for ``X (n, k)``. With a
        preconditioner, ``w`` is computed by preconditioned block CG on the
        normal equations instead of ``cgls``.
    callback : callable, optional
        ``callback(k, theta, objective)`` at every Jacobian evaluation
        (``k = 0`` at ``theta0``), with a copy of ``theta``; returning
        ``True`` stops the run at that ``theta``.
    stats : bool
        Compute the regression statistics (covariance, standard errors); off
        saves one Jacobian evaluation (and a dense factorisation).
    stats_max : int
        Largest number of parameters for which the full covariance of
        ``(coef, theta)`` is formed (otherwise that of ``theta`` alone).
    verbose : int
        Passed to ``least_squares``.

    Returns
    -------
    VarProResult
        Frozen result: ``theta``, ``coef``, ``residual_norm``, iterations,
        history, covariance and standard errors.

    Notes
    -----
    Write ``A(theta) = [W Phi(theta); sqrt(lambda) L]``, ``b = [W y; 0]``,
    ``w(theta) = A^+ b`` and ``r(theta) = A w - b = -P^\perp b``, with
    ``P^\perp = I - A A^+``. With ``D_k = dA/dtheta_k = [W dPhi_k; 0]``, the
    Jacobian of the reduced residual has columns

    .. math::

        \frac{\partial r}{\partial \theta_k}
        = P^\perp D_k w - (A^+)^T D_k^T r
        \quad\text{(Golub-Pereyra)}, \qquad
        \frac{\partial r}{\partial \theta_k} \approx P^\perp D_k w
        \quad\text{(Kaufman)}.

    With the SVD ``A = U S V^T``: ``P^\perp x = x - U U^T x`` and
    ``(A^+)^T z = U S^{-1} V^T z``. Matrix-free, both terms share one solve:
    ``J = E - A (A^T A)^{-1} (A^T E + F)`` with ``E_k = D_k w`` and
    ``F_k = D_k^T r`` (``F = 0`` for Kaufman), the ``p`` (times ``q``)
    right-hand sides solved together by block CG. The residual returned to
    the outer solver appends ``sqrt(alpha) theta``, whose Jacobian is
    ``sqrt(alpha) I``. All computations are in float64; float32 data and
    operators are accepted.

    Statistics follow ``varpro.m``: ``sigma = ||W r|| / sqrt(m q - n q - p)``,
    covariance ``sigma^2 (J^T J)^+`` with ``J = [W Phi, E]`` the Jacobian of
    the full problem in ``(w, theta)`` (regularisation rows included when
    present).

    Examples
    --------
    Two exponentials, ``y = 2 e^{-t} + e^{-3 t}``:

    >>> import numpy as np
    >>> t = np.linspace(0, 3, 30)
    >>> y = 2 * np.exp(-t) + np.exp(-3 * t)
    >>> phi = lambda a: np.exp(-np.outer(t, a))
    >>> def dphi(a):
    ...     D = np.zeros((t.size, 2, 2))
    ...     D[:, 0, 0] = -t * np.exp(-a[0] * t)
    ...     D[:, 1, 1] = -t * np.exp(-a[1] * t)
    ...     return D
    >>> res = varpro(phi, y, np.array([0.5, 2.0]), dphi=dphi)
    >>> np.round(res.theta, 6), np.round(res.coef, 6)
    (array([1., 3.]), array([2., 1.]))
    """
    t0 = time.perf_counter()
    check_callback(callback)
    jac_tol = inner_tol if jac_tol is None else jac_tol
    prob = _setup(phi, y, theta0, dphi, weights, tikhonov, L, theta_reg, method, inner, inner_tol,
                  inner_maxiter, jac_tol, preconditioner)
    theta0 = np.asarray(to_numpy(theta0), dtype=np.float64).reshape(-1)
    if not np.isfinite(theta0).all():
        raise ValueError("theta0 has NaN or Inf entries; expected finite values")
    if outer not in ("trf", "lm", "dogbox"):
        raise ValueError(f"unknown outer method {outer!r}; expected 'trf', 'lm' or 'dogbox'")
    if outer == "lm" and bounds is not None:
        raise ValueError("outer='lm' does not support bounds; use outer='trf'")

    def fun(theta):
        prob.nfev += 1
        return np.asarray(to_numpy(prob.state(theta)["rfull"]))

    accepted = {}

    def jac(theta):
        prob.njev += 1
        J = np.asarray(to_numpy(prob.jacobian(theta)))
        obj = prob.state(theta)["objective"]
        prob.history.append(obj)
        accepted["theta"] = theta.copy()
        if callback is not None and stops(callback(prob.njev - 1, theta.copy(), obj)):
            raise _Stop
        return J

    kw = dict(method=outer, xtol=xtol, ftol=ftol, gtol=gtol, max_nfev=max_nfev, x_scale=x_scale,
              verbose=verbose)
    if bounds is not None:
        kw["bounds"] = bounds
    with blas_threads():  # small dense factorisations: one BLAS thread is fastest and robust
        try:
            sol = least_squares(fun, theta0, jac=jac, **kw)
            theta = np.asarray(sol.x, dtype=np.float64)
            success, status, message = bool(sol.success), int(sol.status), str(sol.message)
        except _Stop:
            theta = accepted["theta"]
            success, status = False, -2
            message = f"stopped by the callback after {prob.njev} Jacobian evaluations"
        if stats:
            st_out = _statistics(prob, theta, stats_max)
        else:
            nan = np.full(prob.p, np.nan)
            st_out = {"sigma": float("nan"), "cov_theta": np.full((prob.p, prob.p), np.nan),
                      "std_theta": nan}
    st = prob.state(theta)
    xp = prob.xp
    w = st["w"]
    res_top = st["res"][: prob.m]
    Phi = st["Phi"]
    y_est = _mm(Phi, w) if not _is_dense(Phi) else Phi @ w
    if prob.vector:
        w, res_top, y_est = w[:, 0], res_top[:, 0], y_est[:, 0]
    rnorm = float(xp.linalg.norm(res_top))
    return VarProResult(
        x=theta,
        fun=float(st["objective"]),
        success=success,
        nit=prob.njev,
        nfev=prob.nfev,
        message=message,
        history={"fun": np.asarray(prob.history, dtype=float)},
        seconds=time.perf_counter() - t0,
        coef=np.asarray(to_numpy(w)),
        residual_norm=rnorm,
        wresid=np.asarray(to_numpy(res_top)),
        y_est=np.asarray(to_numpy(y_est), dtype=np.float64),
        njev=prob.njev,
        inner_iterations=prob.inner_iterations,
        status=status,
        method=method,
        inner=prob.inner,
        **st_out,
    )


def _pinv_gram(J):
    """``(J^T J)^+`` from the SVD of ``J`` (no squaring of the condition number)."""
    _, s, Vt = np.linalg.svd(J, full_matrices=False)
    keep = s > max(J.shape) * np.finfo(float).eps * (s[0] if s.size else 0.0)
    V = Vt[keep].T
    return (V / s[keep] ** 2) @ V.T


def _statistics(prob: _Reduced, theta, stats_max):
    """``varpro.m``-style regression statistics at the solution."""
    xp = prob.xp
    st = prob.state(theta)
    n, q, p, m = prob.n, prob.q, prob.p, prob.m
    rnorm2 = float(xp.sum(st["res"][:m] ** 2))
    dof = m * q - n * q - p
    sigma = float(np.sqrt(rnorm2 / dof)) if dof > 0 else float("nan")
    s2 = sigma**2 if dof > 0 else float("nan")
    out = {"sigma": sigma, "covariance": None, "std_coef": None, "correlation": None}
    if q == 1 and n + p <= stats_max and (prob.inner == "exact" or n <= stats_max):
        # full Jacobian in (w, theta) of [W(Phi w - y); sqrt(lam) L w; sqrt(alpha) theta]
        E, _ = prob._derivatives(st, False)
        E = prob._weighted(E.reshape(m, p))
        D = st.get("dense")
        if D is None:
            D = _mm(st["Phi"], xp.eye(n, dtype=prob.dtype))
        A = prob._weighted(xp.asarray(D, dtype=prob.dtype))
        rows = [xp.concatenate([A, E], axis=1)]
        if prob.lam > 0:
            Lm = st["A"][m:] / prob.slam if "A" in st else (
                xp.eye(n) if prob.L is None else xp.asarray(_mm(prob.L, xp.eye(n, dtype=prob.dtype))))
            rows.append(xp.concatenate([prob.slam * Lm, xp.zeros((Lm.shape[0], p))], axis=1))
        if prob.alpha > 0:
            rows.append(xp.concatenate([xp.zeros((p, n)), prob.salpha * xp.eye(p)], axis=1))
        Jf = np.asarray(to_numpy(xp.concatenate(rows, axis=0)))
        cov = s2 * _pinv_gram(Jf)
        std = np.sqrt(np.abs(np.diag(cov)))
        with np.errstate(invalid="ignore", divide="ignore"):
            cor = cov / np.outer(std, std)
        out.update(covariance=cov, std_coef=std[:n], correlation=cor, cov_theta=cov[n:, n:],
                   std_theta=std[n:])
        return out
    Jk = np.asarray(to_numpy(prob.jacobian(theta, method="kaufman")))
    cov = s2 * _pinv_gram(Jk)
    std = np.sqrt(np.abs(np.diag(cov)))
    with np.errstate(invalid="ignore", divide="ignore"):
        cor = cov / np.outer(std, std)
    out.update(cov_theta=cov, std_theta=std, correlation=cor)
    return out

"""A primal barrier method for small group-lasso programs with polyhedral cones.

The restricted programs of the two-layer CNNs (a working set of groups) are
small and ill-conditioned, where first-order methods crawl to high accuracy.
This module solves

.. math::

    \\min_{c_j} \\tfrac12 \\|\\textstyle\\sum_j B_j c_j - y\\|^2 + \\beta \\textstyle\\sum_j \\|c_j\\|
    \\quad \\text{s.t.} \\quad G_j c_j \\ge 0

by Newton's method on the logarithmic barrier of the epigraph form
(``t_j >= ||c_j||``), to a central-path gap ``N / tau`` below a relative
tolerance, on the host in float64 (the systems are ``m h`` unknowns, with
``m`` groups of ``h`` entries).
"""

from __future__ import annotations

from dataclasses import dataclass

import os

import numpy as np

from .._backend import blas_threads
from .fista import power_norm2

__all__ = ["BarrierResult", "DenseBlocks", "barrier_group_program", "interior_direction"]


@dataclass
class BarrierResult:
    """``C`` (``(m, h)``), Newton steps taken, the final gap and whether it met the tolerance.

    The gap is the central path's ``N / tau``, or, without cones, the
    certified ``f(C) - lower bound`` of the residual's dual point where smaller.
    """

    C: np.ndarray
    newton_steps: int
    gap: float
    converged: bool


def interior_direction(G, hint=None):
    """A unit vector ``c`` with ``G c > 0`` (strictly inside the cone), or ``None`` if the cone has no interior.

    ``hint`` (e.g. the gate's generator) is returned, normalised, when it is
    strictly inside; otherwise a linear program maximises the smallest row
    ``min_i (G c)_i`` over ``||c||_inf <= 1``.
    """
    if G is None or G.shape[0] == 0:
        c = np.asarray(hint, dtype=float) if hint is not None else np.ones(1)
        return c / np.linalg.norm(c)
    if hint is not None:
        c = np.asarray(hint, dtype=float)
        nc = np.linalg.norm(c)
        if nc > 0 and (G @ c).min() > 1e-12 * nc * np.abs(G).max():
            return c / nc
    from scipy.optimize import linprog

    R, h = G.shape
    scale = np.linalg.norm(G, axis=1)
    Gs = G / scale[:, None]
    # max s  s.t.  Gs c >= s,  -1 <= c <= 1,  s <= 1
    res = linprog(np.r_[np.zeros(h), -1.0], A_ub=np.c_[-Gs, np.ones(R)], b_ub=np.zeros(R),
                  bounds=[(-1, 1)] * h + [(None, 1.0)], method="highs")
    if res.status != 0 or -res.fun <= 1e-9:
        return None
    c = res.x[:h]
    return c / np.linalg.norm(c)


_FULL_SYSTEM_UNKNOWNS = 6000  # a Newton system falls back to its dense (m h)^2 form up to this size (288 MB)


class DenseBlocks:
    """The blocks ``B_j`` (``n x h`` each) of a barrier program as one ``(n, m h)`` matrix ``[B_1, ..., B_m]``.

    The barrier method reaches the blocks only through this interface, which
    structured blocks implement without forming the matrix:

    - ``matvec(C)``: ``sum_j B_j c_j``, ``(m, h) -> (n,)``;
    - ``rmatvec(v)``: ``(B_j^T v)_j``, ``(n,) -> (m, h)``;
    - ``columns(U)``: ``[B_1 u_1, ..., B_m u_m]``, ``(m, h) -> (n, m)``;
    - ``gram(w)``: ``sum_j w_j B_j B_j^T``, ``(m,) -> (n, n)``;
    - ``dense()``: the ``(n, m h)`` matrix;

    and the attributes ``m``, ``n`` and ``h``.
    """

    def __init__(self, Bf, m: int, h: int):
        self.Bf = Bf
        self.n, self.m, self.h = Bf.shape[0], m, h

    @classmethod
    def from_blocks(cls, B):
        """From the blocks stacked as ``(m, n, h)``."""
        m, n, h = B.shape
        return cls(B.transpose(1, 0, 2).reshape(n, m * h), m, h)

    def matvec(self, C):
        return self.Bf @ C.reshape(-1)

    def rmatvec(self, v):
        return (self.Bf.T @ v).reshape(self.m, self.h)

    def columns(self, U):
        return np.einsum("nmh,mh->nm", self.Bf.reshape(self.n, self.m, self.h), U)

    def gram(self, w):
        with blas_threads(os.cpu_count() or 1):  # the step's one large product (n^2 m h flops): every core
            return (self.Bf * np.repeat(w, self.h)) @ self.Bf.T

    def dense(self):
        return self.Bf


def _newton_solve(tau, blocks, BtB, Hb, g, woodbury, inverse=None):
    """``(tau B^T B + blockdiag(Hb))^{-1} g``: directly, or by Woodbury's identity through ``n x n``.

    ``blocks`` as :class:`DenseBlocks`; ``BtB`` is ``B^T B`` for the direct
    route (``None``: formed here). ``inverse=(w, U)`` gives the blocks'
    inverses in closed form, ``Hb_j^{-1} = w_j I + u_j u_j^T``, for the Woodbury route.
    """
    m, h = Hb.shape[:2]
    x = None
    if woodbury:
        try:
            # Woodbury's identity loses digits when the blocks' scales spread far (large tau, cone rows near
            # their boundary): iterative refinement against the matrix-free product restores them, until it
            # stagnates; where it does not, the full system. Without cones (closed-form inverses) the merit is
            # smooth everywhere and an inexact Newton step to 1e-4 serves as well: at the last barrier
            # parameters of a 1e-10 solve, refinement stops between 1e-7 and 1e-5, and the full system of
            # 4000 unknowns took 1 s a step where Woodbury's takes 10 ms
            def H_times(x):
                X = x.reshape(m, h)
                return tau * blocks.rmatvec(blocks.matvec(X)).reshape(-1) + _batched_matvec(Hb, X).reshape(-1)

            solve = _woodbury_factor(tau, blocks, Hb, inverse)
            x = solve(g)
            gnorm = np.linalg.norm(g)
            best, bnorm, last = x, np.inf, np.inf
            for _ in range(8):
                rnorm = np.linalg.norm(res := g - H_times(x))
                if rnorm < bnorm:
                    best, bnorm = x, rnorm
                if rnorm <= 1e-13 * gnorm or rnorm > 0.5 * last:
                    break
                last = rnorm
                x = x + solve(res)
            x = best
            if bnorm <= (1e-8 if inverse is None else 1e-4) * gnorm:
                return x
        except np.linalg.LinAlgError:  # a block too ill-conditioned to invert alone
            pass
        if m * h > _FULL_SYSTEM_UNKNOWNS:  # the full system would not fit: the refined step as it is
            if x is None:
                raise np.linalg.LinAlgError("the Woodbury system is singular to working precision")
            return x
        BtB = None
    if BtB is None:  # the full system
        Bf = blocks.dense()
        BtB = Bf.T @ Bf
    H = tau * BtB
    H.reshape(m, h, m, h)[np.arange(m), :, np.arange(m), :] += Hb
    from scipy.linalg import cho_factor, cho_solve

    try:
        return cho_solve(cho_factor(H, check_finite=False), g, check_finite=False)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(H, g, rcond=None)[0]


def _inverse_factors(Hb, floor: float | None = None):
    """``(F, F^T)`` as functions on ``(m, p, q)``, with ``F_j^T F_j = Hb_j^{-1}``, for symmetric positive definite blocks.

    ``F_j = L_j^{-1}`` applied by triangular solves with the Cholesky factor
    (forming ``L_j^{-1}`` and multiplying by it took 2 to 5 times as long).
    Blocks that are not positive definite in rounding raise
    :class:`numpy.linalg.LinAlgError`, or with ``floor`` go through their
    eigenvalues floored at ``floor`` times the largest
    (``F = diag(lambda)^{-1/2} V^T``): positive definite by construction, an
    approximation for a refinement to correct.
    """
    from scipy.linalg import solve_triangular

    try:
        L = np.linalg.cholesky(Hb)
    except np.linalg.LinAlgError:
        if floor is None:
            raise
        lam, V = np.linalg.eigh(Hb)
        lam = np.maximum(lam, floor * np.maximum(lam.max(axis=1, keepdims=True), np.finfo(float).tiny))
        Ft = V / np.sqrt(lam)[:, None, :]  # F^T
        return (lambda X: np.swapaxes(Ft, 1, 2) @ X), (lambda X: Ft @ X)
    return (lambda X: solve_triangular(L, X, lower=True, check_finite=False),
            lambda X: solve_triangular(L, X, lower=True, trans="T", check_finite=False))


def _woodbury_factor(tau, blocks, Hb, inverse=None, floor=None):
    """A solver of ``(tau B^T B + blockdiag(Hb)) x = g`` through the ``n x n`` matrix ``I / tau + B Hb^{-1} B^T``.

    ``blocks`` and ``inverse`` as in :func:`_newton_solve`; without ``inverse``
    the blocks' inverse Cholesky factors ``F_j`` (:func:`_inverse_factors`, with
    its ``floor``) give ``W_j = F_j B_j^T`` and ``B Hb^{-1} B^T = W^T W``
    (``n^2 m h`` flops), positive semidefinite by construction.
    """
    m, h = Hb.shape[:2]
    n = blocks.n
    from scipy.linalg import cho_factor, cho_solve

    if inverse is None:
        F, Ft = _inverse_factors(Hb, floor)
        W = F(blocks.dense().reshape(n, m, h).transpose(1, 2, 0))  # (m, h, n)
        Wf = W.reshape(m * h, n)
        with blas_threads(os.cpu_count() or 1):  # the step's one large product (n^2 m h flops): every core
            S = Wf.T @ Wf
        S[np.diag_indices(n)] += 1.0 / tau
        factor = cho_factor(S, check_finite=False)  # scipy's LinAlgError is numpy's

        def solve(g):  # Hb^{-1} = F^T F: x = F^T (y - W S^{-1} W^T y), y = F g
            y = F(g.reshape(m, h, 1))[:, :, 0]
            z = cho_solve(factor, Wf.T @ y.reshape(-1), check_finite=False)
            return Ft((y - W @ z)[:, :, None]).reshape(-1)

        return solve
    w, U = inverse

    def apply(V):
        return w[:, None] * V + U * (U * V).sum(axis=1)[:, None]

    BU = blocks.columns(U)  # the columns B_j u_j
    S = blocks.gram(w)
    S += BU @ BU.T
    S[np.diag_indices(n)] += 1.0 / tau
    factor = cho_factor(S, check_finite=False)

    def solve(g):
        Mg = apply(g.reshape(m, h))
        z = cho_solve(factor, blocks.matvec(Mg), check_finite=False)
        return (Mg - apply(blocks.rmatvec(z))).reshape(-1)

    return solve


def _batched_matvec(A, V):
    """``(A_j v_j)_j``: ``(m, p, q), (m, q) -> (m, p)`` (batched BLAS, not einsum)."""
    return (A @ V[:, :, None])[:, :, 0]


def barrier_group_program(blocks, rows, y, beta, C0, directions, gap_tol=1e-10, mu=20.0,
                          max_newton=600) -> BarrierResult:
    """Solve the cone-constrained group lasso of the module's Notes by a barrier method.

    Parameters
    ----------
    blocks : array, shape ``(m, n, h)``, or :class:`DenseBlocks`
        ``B_j``; or an object with :class:`DenseBlocks`' interface that
        computes their products from their structure (the gated programs of
        few patch positions: ``n h m`` flops a product from the patches and
        gates, instead of streaming the ``n x m h`` matrix).
    rows : array, shape ``(m, R, h)``, or ``None``
        The cone rows ``G_j`` (none: the gated program, no cones), without
        zero rows.
    y : array, shape ``(n,)``
    beta : float
    C0 : array, shape ``(m, h)``
        A warm start in the cones (closed); it is moved into their interior
        along ``directions``.
    directions : array, shape ``(m, h)``
        Unit vectors strictly inside each cone (:func:`interior_direction`).
    gap_tol : float
        Stop when the central-path gap ``N / tau`` (``N`` the barrier's
        degree) is below ``gap_tol`` times the objective; without cones, also
        when the certified gap of the residual's dual point is.
    mu : float
        Growth of ``tau`` between centerings.
    max_newton : int

    Returns
    -------
    BarrierResult

    Notes
    -----
    The barrier of the epigraph form is ``tau (||B c - y||^2 / 2 + beta sum_j t_j)
    - sum_j log(t_j^2 - ||c_j||^2) - sum_j sum_i log (G_j c_j)_i``, of
    degree ``N = 2 m + sum_j R_j``. Its minimum over each ``t_j`` is explicit:
    with ``a = tau beta`` and ``s_j = sqrt(1 + a^2 ||c_j||^2)`` it leaves
    ``s_j - log(1 + s_j)`` (up to a constant), smooth at ``c_j = 0`` and free
    of the cancellation in ``t_j^2 - ||c_j||^2`` near the optimum, whose
    gradient is ``a^2 c_j / (1 + s_j)``. Each Newton system is a dense ``m h``
    one: ``tau B^T B`` plus a block-diagonal barrier Hessian. Without cone
    rows its blocks ``a^2/(1+s_j) I - a^4/(s_j (1+s_j)^2) c_j c_j^T`` have the
    inverses ``(1+s_j)/a^2 I + c_j c_j^T``, and with more unknowns than
    samples the system goes through ``n x n`` by Woodbury's identity.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    ops = blocks if hasattr(blocks, "matvec") else DenseBlocks.from_blocks(np.asarray(blocks, dtype=float))
    m, n, h = ops.m, ops.n, ops.h
    y = np.asarray(y, dtype=float)
    G = None if rows is None else np.asarray(rows, dtype=float).reshape(m, -1, h)
    N = 2 * m + (G.shape[0] * G.shape[1] if G is not None else 0)
    if G is not None and G.shape[1] == 0:
        G = None  # no cone rows: the gated program
    C = np.array(C0, dtype=float).reshape(m, h)
    start = C.copy()  # the warm start (in the closed cones): never returned worse
    dirs = np.asarray(directions, dtype=float).reshape(m, h)
    # a scale, not a bound: power iteration (an exact 2-norm was an SVD per call); 1 for empty or zero blocks
    bnorm = np.sqrt(power_norm2(lambda v: ops.matvec(v.reshape(m, h)), lambda w: ops.rmatvec(w).reshape(-1),
                                (m * h,), iters=20)) if m * n * h else 0.0
    bnorm = bnorm or 1.0
    sigma = 1e-3 * max(float(np.sqrt((C * C).sum(axis=1)).max(initial=0.0)), np.linalg.norm(y) / max(bnorm, 1e-300))
    C = C + sigma * dirs
    if G is not None:  # a warm start outside its cone (a first-order solve's rounding) restarts
        outside = _batched_matvec(G, C).min(axis=1) <= 0
        C[outside] = sigma * dirs[outside]
    # more unknowns than samples: an n x n system (refined; with cone rows near their boundary the blocks can be
    # too ill-conditioned for it, and those steps fall back to the full system)
    woodbury = m * h > 1.5 * n
    BtB = None if woodbury else ops.dense().T @ ops.dense()
    Bty = None if woodbury else ops.rmatvec(y).reshape(-1)

    def f_of(C):
        r = ops.matvec(C) - y
        return 0.5 * float(r @ r) + beta * float(np.sqrt((C * C).sum(axis=1)).sum())

    def merit_change(C, Cn, dC, step, tau, r, Bd, g, gd):
        """``merit(Cn) - merit(C)`` for ``Cn = C + step dC``, without the cancellation of two large values.

        The merit is ``tau/2 ||B c - y||^2 + sum_j (s_j - log(1 + s_j)) -
        sum log(G c)`` (``inf`` outside the cones); ``g = G c`` and ``gd = G dC``
        (``None`` without cone rows). At large ``tau`` it is ``~ tau f``, and its changes near the
        centre are far below its rounding: the difference is formed term by
        term (``s_n - s = a^2 (|c_n|^2 - |c|^2) / (s_n + s)`` etc.).
        """
        a = tau * beta
        n0, n1 = (C * C).sum(axis=1), (Cn * Cn).sum(axis=1)
        s0, s1 = np.sqrt(1.0 + a * a * n0), np.sqrt(1.0 + a * a * n1)
        ds = a * a * (step * (2.0 * (C * dC).sum(axis=1) + step * (dC * dC).sum(axis=1))) / (s0 + s1)
        val = tau * step * (float(r @ Bd) + 0.5 * step * float(Bd @ Bd))
        val += float((ds - np.log1p(ds / (1.0 + s0))).sum())
        if g is not None:
            ratio = step * gd / g
            if (ratio <= -1.0).any():
                return np.inf
            val -= float(np.log1p(ratio).sum())
        return val

    if G is not None and not (_batched_matvec(G, C) > 0).all():
        raise ValueError("the start is not strictly inside the cones")
    tau = _first_barrier_parameter(N, f_of(C), beta, y, bnorm)
    g_next = None  # the cone rows at C when the last step computed them
    steps = 0
    converged = False
    gap = N / tau
    eye = np.eye(h)
    while steps < max_newton:
        # centering (to a Newton decrement far below the barrier's degree: the gap is then N / tau to a few digits)
        for _ in range(60):
            if steps >= max_newton:
                break
            steps += 1
            a = tau * beta
            s = np.sqrt(1.0 + a * a * (C * C).sum(axis=1))  # (m,)
            r = ops.matvec(C) - y  # the residual, for the gradient and the line search
            fit = ops.rmatvec(r) if woodbury else (BtB @ C.reshape(-1) - Bty).reshape(m, h)  # B^T r
            grad = tau * fit + (a * a / (1.0 + s))[:, None] * C
            Hb = ((a * a / (1.0 + s))[:, None, None] * eye
                  - (a ** 4 / (s * (1.0 + s) ** 2))[:, None, None] * (C[:, :, None] * C[:, None, :]))
            g = gd = None
            if G is not None:
                g = _batched_matvec(G, C) if g_next is None else g_next  # the cone rows at C, all > 0
                inv = 1.0 / g
                grad -= _batched_matvec(np.swapaxes(G, 1, 2), inv)
                Gw = G * inv[:, :, None]
                Hb += np.swapaxes(Gw, 1, 2) @ Gw
            grad = grad.reshape(-1)
            inverse = None if G is not None else ((1.0 + s) / (a * a), C)
            try:
                d = -_newton_solve(tau, ops, BtB, Hb, grad, woodbury, inverse)
            except np.linalg.LinAlgError:  # past what float64 resolves (large systems only): stop here
                return _safe_result(C, start, f_of, steps, N / tau)
            dec = -float(grad @ d)  # the squared Newton decrement (the merit is dimensionless)
            if not np.isfinite(dec) or dec < -1e-6:
                # not a descent direction: the Newton system is past what float64 resolves here
                return _safe_result(C, start, f_of, steps, N / tau)
            if dec <= 1e-8:
                break
            dC = d.reshape(m, h)
            # the largest step that keeps the cone rows positive, then backtracking
            step = 1.0
            if G is not None:
                gd = _batched_matvec(G, dC)
                neg = gd < 0
                if neg.any():
                    step = min(step, 0.99 * float((-g[neg] / gd[neg]).min()))
            Bd = ops.matvec(dC)
            while step > 1e-12:
                Cn = C + step * dC
                # the cone rows recomputed at Cn must stay positive too: near the boundary, G Cn in
                # rounding can vanish where g + step gd does not
                if merit_change(C, Cn, dC, step, tau, r, Bd, g, gd) <= -0.25 * step * dec:
                    g_next = None if G is None else _batched_matvec(G, Cn)
                    if g_next is None or (g_next > 0).all():
                        break
                step *= 0.5
            else:  # no step makes progress in rounding: as centered as it gets
                g_next = None
                if dec > 1e-2:
                    return _safe_result(C, start, f_of, steps, N / tau)
                break
            C = Cn
        # N / tau bounds the gap at central points, and (1 + sqrt(dec)) N / tau near them (Newton decrement
        # below 0.1); farther out (the 60 steps spent), centre on at this tau
        if dec > 1e-2:
            continue
        f = f_of(C)
        gap = N / tau * (1.0 + np.sqrt(max(dec, 0.0)))
        if G is None:  # weak duality at the residual (the gated program): often far below N / tau
            gap = min(gap, f - _residual_bound(ops, y, beta, C))
        if gap <= gap_tol * max(f, 1e-300):
            converged = True
            break
        tau *= mu
    if not converged:
        return _safe_result(C, start, f_of, steps, gap)
    return BarrierResult(C=C, newton_steps=steps, gap=gap, converged=True)


def _first_barrier_parameter(N: int, f: float, beta: float, y, bnorm: float) -> float:
    """The first ``tau`` of a barrier method of degree ``N`` started where the objective is ``f``.

    ``N / f``, and at least ``1 / (beta |c|)`` for the natural size ``|c| =
    |y| / |B|`` of a group (``bnorm = |B|``). Below it the norms' barrier is
    too weak against the cones' logarithms, whose central points run off to
    norms ``~ R / (tau beta)``: with ``beta = 1e-8`` the two-layer path went
    through norms of ``1e12``, where the Newton systems lose every digit (the
    objective grew from 0.42 to 6e4).
    """
    scale = np.linalg.norm(y) / bnorm if bnorm > 0 else 0.0
    return max(N / max(f, 1e-300), 1.0 / (beta * scale) if scale > 0 else 0.0)


def _safe_result(C, start, f_of, steps, gap) -> BarrierResult:
    """An unconverged barrier run's result: its last point, or the warm start where that is better."""
    if not f_of(C) <= f_of(start):
        return BarrierResult(C=start, newton_steps=steps, gap=np.inf, converged=False)
    return BarrierResult(C=C, newton_steps=steps, gap=gap, converged=False)


def _residual_bound(ops, y, beta, C) -> float:
    """The dual bound of the program without cones at ``C``: the residual ``v = y - B c`` scaled by
    ``t = min(1, beta / max_j ||B_j^T v||)`` into the dual set gives ``t v^T y - t^2 ||v||^2 / 2``."""
    v = y - ops.matvec(C)
    return _dual_bound_t(v, y, beta, float(np.sqrt((ops.rmatvec(v) ** 2).sum(axis=1)).max(initial=0.0)))


def _dual_bound_t(r, y, beta, worst) -> float:
    """Weak duality ``t <r, y> - t^2 ||r||^2 / 2`` with ``t = min(1, beta / worst)`` (``worst = max_j ||B_j^T r||``)."""
    t = 1.0 if worst <= beta else beta / worst
    return t * float(r @ y) - 0.5 * t * t * float(r @ r)

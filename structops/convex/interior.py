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

__all__ = ["BarrierResult", "barrier_group_program", "interior_direction"]


@dataclass
class BarrierResult:
    """``C`` (``(m, h)``), Newton steps taken, the final central-path gap ``N / tau``, and whether it met the tolerance."""

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


def _newton_solve(tau, Bf, BtB, Hb, g, woodbury, inverse=None, gram=None):
    """``(tau B^T B + blockdiag(Hb))^{-1} g``: directly, or by Woodbury's identity through ``n x n``.

    ``inverse=(w, U)`` gives the blocks' inverses in closed form,
    ``Hb_j^{-1} = w_j I + u_j u_j^T``, and ``gram(w)`` (optional) computes
    ``sum_j w_j B_j B_j^T`` from the blocks' structure; both for the Woodbury route.
    """
    m, h = Hb.shape[:2]
    if woodbury:
        try:
            # Woodbury's identity loses digits when the blocks' scales spread far (large tau, cone rows near
            # their boundary): iterative refinement against the matrix-free product restores them; where it does not,
            # the full system
            def H_times(x):
                X = x.reshape(m, h)
                return tau * (Bf.T @ (Bf @ x)) + _batched_matvec(Hb, X).reshape(-1)

            solve = _woodbury_factor(tau, Bf, Hb, inverse, gram)
            x = solve(g)
            gnorm = np.linalg.norm(g)
            for _ in range(8):
                res = g - H_times(x)
                if np.linalg.norm(res) <= 1e-13 * gnorm:
                    break
                x = x + solve(res)
            if np.linalg.norm(g - H_times(x)) <= 1e-8 * gnorm:
                return x
        except np.linalg.LinAlgError:  # a block too ill-conditioned to invert alone
            pass
        BtB = Bf.T @ Bf  # the full system
    H = tau * BtB
    H.reshape(m, h, m, h)[np.arange(m), :, np.arange(m), :] += Hb
    from scipy.linalg import cho_factor, cho_solve

    try:
        return cho_solve(cho_factor(H, check_finite=False), g, check_finite=False)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(H, g, rcond=None)[0]


def _woodbury_factor(tau, Bf, Hb, inverse=None, gram=None):
    """A solver of ``(tau B^T B + blockdiag(Hb)) x = g`` through the ``n x n`` matrix ``I / tau + B Hb^{-1} B^T``.

    ``inverse`` and ``gram`` as in :func:`_newton_solve`; without them the
    blocks are inverted one by one and ``B Hb^{-1} B^T`` costs ``n^2 m h``.
    """
    m, h = Hb.shape[:2]
    n = Bf.shape[0]
    from scipy.linalg import cho_factor, cho_solve

    if inverse is None:
        np.linalg.cholesky(Hb)  # every block positive definite, or LinAlgError
        Minv = np.linalg.inv(Hb)  # (m, h, h): small blocks, inverted once (the refinement absorbs their rounding)

        def apply(V):  # blockdiag(Hb)^{-1}, on (m, h)
            return _batched_matvec(Minv, V)

        MBt = (Minv @ Bf.reshape(n, m, h).transpose(1, 2, 0)).reshape(m * h, n)  # blockdiag(Hb)^{-1} B^T
        with blas_threads(os.cpu_count() or 1):  # the step's one large product (n^2 m h flops): every core
            S = Bf @ MBt
    else:
        w, U = inverse

        def apply(V):
            return w[:, None] * V + U * (U * V).sum(axis=1)[:, None]

        BU = np.einsum("nmh,mh->nm", Bf.reshape(n, m, h), U)  # the columns B_j u_j
        if gram is not None:
            S = gram(w)
        else:
            with blas_threads(os.cpu_count() or 1):
                S = (Bf * np.repeat(w, h)) @ Bf.T
        S += BU @ BU.T
    S[np.diag_indices(n)] += 1.0 / tau
    factor = cho_factor(S, check_finite=False)  # scipy's LinAlgError is numpy's

    def solve(g):
        Mg = apply(g.reshape(m, h)).reshape(-1)
        z = cho_solve(factor, Bf @ Mg, check_finite=False)
        return Mg - apply((Bf.T @ z).reshape(m, h)).reshape(-1)

    return solve


def _batched_matvec(A, V):
    """``(A_j v_j)_j``: ``(m, p, q), (m, q) -> (m, p)`` (batched BLAS, not einsum)."""
    return (A @ V[:, :, None])[:, :, 0]


def barrier_group_program(blocks, rows, y, beta, C0, directions, gap_tol=1e-10, mu=20.0,
                          max_newton=600, gram=None) -> BarrierResult:
    """Solve the cone-constrained group lasso of the module's Notes by a barrier method.

    Parameters
    ----------
    blocks : array, shape ``(m, n, h)``
        ``B_j``.
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
        degree) is below ``gap_tol`` times the objective.
    mu : float
        Growth of ``tau`` between centerings.
    max_newton : int
    gram : callable, optional
        ``gram(w)`` returns ``sum_j w_j B_j B_j^T`` (``(n, n)``) for weights
        ``w`` of shape ``(m,)``, from the blocks' structure (for the gated
        program's Woodbury systems; without it ``n^2 m h`` flops a step).

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
    B = np.asarray(blocks, dtype=float)
    m, n, h = B.shape
    y = np.asarray(y, dtype=float)
    Bf = B.transpose(1, 0, 2).reshape(n, m * h)
    G = None if rows is None else np.asarray(rows, dtype=float).reshape(m, -1, h)
    N = 2 * m + (G.shape[0] * G.shape[1] if G is not None else 0)
    if G is not None and G.shape[1] == 0:
        G = None  # no cone rows: the gated program
    C = np.array(C0, dtype=float).reshape(m, h)
    dirs = np.asarray(directions, dtype=float).reshape(m, h)
    # a scale, not a bound: power iteration (an exact 2-norm was an SVD per call); 1 for empty or zero blocks
    bnorm = np.sqrt(power_norm2(lambda v: Bf @ v, lambda w: Bf.T @ w, (m * h,), iters=20)) if Bf.size else 0.0
    bnorm = bnorm or 1.0
    sigma = 1e-3 * max(float(np.sqrt((C * C).sum(axis=1)).max(initial=0.0)), np.linalg.norm(y) / max(bnorm, 1e-300))
    C = C + sigma * dirs
    if G is not None:  # a warm start outside its cone (a first-order solve's rounding) restarts
        outside = _batched_matvec(G, C).min(axis=1) <= 0
        C[outside] = sigma * dirs[outside]
    # more unknowns than samples: an n x n system (refined; with cone rows near their boundary the blocks can be
    # too ill-conditioned for it, and those steps fall back to the full system)
    woodbury = m * h > 1.5 * n
    BtB = None if woodbury else Bf.T @ Bf
    Bty = Bf.T @ y

    def f_of(C):
        r = Bf @ C.reshape(-1) - y
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
    tau = N / max(f_of(C), 1e-300)
    g_next = None  # the cone rows at C when the last step computed them
    steps = 0
    converged = False
    eye = np.eye(h)
    while steps < max_newton:
        # centering (to a Newton decrement far below the barrier's degree: the gap is then N / tau to a few digits)
        for _ in range(60):
            if steps >= max_newton:
                break
            steps += 1
            a = tau * beta
            s = np.sqrt(1.0 + a * a * (C * C).sum(axis=1))  # (m,)
            BtBc = Bf.T @ (Bf @ C.reshape(-1)) if woodbury else BtB @ C.reshape(-1)
            grad = (tau * (BtBc - Bty)).reshape(m, h) + (a * a / (1.0 + s))[:, None] * C
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
            d = -_newton_solve(tau, Bf, BtB, Hb, grad, woodbury, inverse, gram)
            dec = -float(grad @ d)
            if not np.isfinite(dec) or dec <= 1e-8:
                break
            dC = d.reshape(m, h)
            # the largest step that keeps the cone rows positive, then backtracking
            step = 1.0
            if G is not None:
                gd = _batched_matvec(G, dC)
                neg = gd < 0
                if neg.any():
                    step = min(step, 0.99 * float((-g[neg] / gd[neg]).min()))
            r = Bf @ C.reshape(-1) - y
            Bd = Bf @ d
            while step > 1e-12:
                Cn = C + step * dC
                # the cone rows recomputed at Cn must stay positive too: near the boundary, G Cn in
                # rounding can vanish where g + step gd does not
                if merit_change(C, Cn, dC, step, tau, r, Bd, g, gd) <= -0.25 * step * dec:
                    g_next = None if G is None else _batched_matvec(G, Cn)
                    if g_next is None or (g_next > 0).all():
                        break
                step *= 0.5
            else:
                g_next = None
                break
            C = Cn
        if N / tau <= gap_tol * max(f_of(C), 1e-300):
            converged = True
            break
        tau *= mu
    return BarrierResult(C=C, newton_steps=steps, gap=N / tau, converged=converged)

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

import numpy as np

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


def barrier_group_program(blocks, rows, y, beta, C0, directions, gap_tol=1e-10, mu=20.0,
                          max_newton=600) -> BarrierResult:
    """Solve the cone-constrained group lasso of the module's Notes by a barrier method.

    Parameters
    ----------
    blocks : array, shape ``(m, n, h)``
        ``B_j``.
    rows : list of ``m`` arrays of shape ``(R_j, h)``, or ``None``
        The cone rows ``G_j`` (none: the gated program, no cones); zero rows
        must have been removed.
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
    one: ``tau B^T B`` plus a block-diagonal barrier Hessian.
    """
    B = np.asarray(blocks, dtype=float)
    m, n, h = B.shape
    y = np.asarray(y, dtype=float)
    Bf = B.transpose(1, 0, 2).reshape(n, m * h)
    has_rows = rows is not None
    Gs = list(rows) if has_rows else [None] * m
    N = 2 * m + (sum(G.shape[0] for G in Gs) if has_rows else 0)
    C = np.array(C0, dtype=float).reshape(m, h)
    dirs = np.asarray(directions, dtype=float).reshape(m, h)
    bnorm = np.linalg.norm(Bf, 2) if Bf.size else 1.0
    sigma = 1e-3 * max(float(np.sqrt((C * C).sum(axis=1)).max(initial=0.0)), np.linalg.norm(y) / max(bnorm, 1e-300))
    C = C + sigma * dirs
    if has_rows:  # a warm start outside its cone (a first-order solve's rounding) restarts from the direction
        for j, G in enumerate(Gs):
            if G.shape[0] and (G @ C[j]).min() <= 0:
                C[j] = sigma * dirs[j]
    BtB = Bf.T @ Bf
    Bty = Bf.T @ y

    def f_of(C):
        r = Bf @ C.reshape(-1) - y
        return 0.5 * float(r @ r) + beta * float(np.sqrt((C * C).sum(axis=1)).sum())

    def merit(C, tau):
        """``tau/2 ||B c - y||^2 + sum_j (s_j - log(1 + s_j)) - sum log(G c)``, ``inf`` outside the cones."""
        r = Bf @ C.reshape(-1) - y
        a = tau * beta
        s = np.sqrt(1.0 + a * a * (C * C).sum(axis=1))
        val = 0.5 * tau * float(r @ r) + float((s - np.log1p(s)).sum())
        if has_rows:
            for j, G in enumerate(Gs):
                g = G @ C[j]
                if (g <= 0).any():
                    return np.inf
                val -= float(np.log(g).sum())
        return val

    f0 = f_of(C)
    tau = N / max(f0, 1e-300)
    if not np.isfinite(merit(C, tau)):
        raise ValueError("the start is not strictly inside the cones")
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
            grad = tau * (BtB @ C.reshape(-1) - Bty)
            H = tau * BtB
            for j in range(m):
                sl = slice(j * h, (j + 1) * h)
                cj = C[j]
                sj = np.sqrt(1.0 + a * a * (cj @ cj))
                grad[sl] += (a * a / (1.0 + sj)) * cj
                H[sl, sl] += (a * a / (1.0 + sj)) * eye - (a ** 4 / (sj * (1.0 + sj) ** 2)) * np.outer(cj, cj)
                if has_rows:
                    G = Gs[j]
                    inv = 1.0 / (G @ cj)
                    grad[sl] -= G.T @ inv
                    H[sl, sl] += (G * (inv * inv)[:, None]).T @ G
            try:
                L = np.linalg.cholesky(H)
                d = -np.linalg.solve(L.T, np.linalg.solve(L, grad))
            except np.linalg.LinAlgError:
                d = -np.linalg.lstsq(H, grad, rcond=None)[0]
            dec = -float(grad @ d)
            if not np.isfinite(dec) or dec <= 1e-8:
                break
            dC = d.reshape(m, h)
            # the largest step that keeps the cone rows positive, then backtracking
            step = 1.0
            if has_rows:
                for j, G in enumerate(Gs):
                    gd = G @ dC[j]
                    neg = gd < 0
                    if neg.any():
                        step = min(step, 0.99 * float((-(G[neg] @ C[j]) / gd[neg]).min()))
            F0 = merit(C, tau)
            while step > 1e-12:
                Cn = C + step * dC
                if merit(Cn, tau) <= F0 - 0.25 * step * dec:
                    break
                step *= 0.5
            else:
                break
            C = Cn
        if N / tau <= gap_tol * max(f_of(C), 1e-300):
            converged = True
            break
        tau *= mu
    return BarrierResult(C=C, newton_steps=steps, gap=N / tau, converged=converged)

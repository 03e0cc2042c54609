"""FISTA with adaptive restarts for ``phi(A x) + beta * sum_g ||x_g||_2`` (group lasso).

The smooth part is a function ``phi`` of a linear image ``A x``; the iterates'
images are combined linearly instead of recomputed, so an iteration costs one
product with ``A`` (at the new point) and one with ``A^T`` (the gradient at the
extrapolated point), backtracking included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._backend import get_xp

__all__ = ["group_fista", "group_prox", "power_norm2", "FistaResult"]


def group_prox(X, t):
    """Block soft thresholding: ``argmin_Z t sum_j ||z_j|| + ||Z - X||^2 / 2`` for rows ``x_j`` of ``X``."""
    xp = get_xp(X)
    norms = xp.sqrt((X * X).sum(axis=1, keepdims=True))
    scale = xp.maximum(1.0 - t / xp.maximum(norms, np.finfo(X.dtype).tiny), 0.0)
    return X * scale


@dataclass
class FistaResult:
    """Outcome of :func:`group_fista`."""

    x: object
    image: tuple
    iterations: int
    L: float
    converged: bool


def _comb(a, b, s):
    """``a + s (a - b)`` for tuples of arrays (images)."""
    return tuple(ai + s * (ai - bi) for ai, bi in zip(a, b))


def _dot(a, b):
    return float(sum(float((ai * bi).sum()) for ai, bi in zip(a, b)))


def group_fista(A, AT, phi, x0, beta, L0, max_iter=5000, tol=1e-9, stop=None, check_every=10,
                image0=None) -> FistaResult:
    """Minimise ``phi(A x) + beta sum_j ||x_j||`` over ``x`` of shape ``(P, h)`` (rows are groups).

    Parameters
    ----------
    A : callable
        ``x -> image``, a tuple of arrays, linear in ``x``.
    AT : callable
        ``image-shaped tuple -> (P, h)``, the adjoint of ``A``.
    phi : callable
        ``image -> (value, gradient image)``; its gradient must be Lipschitz.
    x0 : array, shape ``(P, h)``
    beta : float
        Weight of the group norm (``>= 0``).
    L0 : float
        First Lipschitz estimate of ``x -> A^T grad phi(A x)``; doubled by
        backtracking while the sufficient-decrease test fails.
    max_iter : int
    tol : float
        Stop when the gradient mapping ``L ||y - x_+||`` is below
        ``tol * (1 + L ||x_+||)`` (used when ``stop`` is not given).
    stop : callable, optional
        ``(x, image, iteration) -> bool``, asked every ``check_every``
        iterations instead of the gradient-mapping test (e.g. a duality gap).
    image0 : tuple, optional
        ``A x0`` if already known.

    Returns
    -------
    FistaResult

    Notes
    -----
    Beck and Teboulle (2009) with the gradient restart of O'Donoghue and
    Candès (2015): momentum is reset when ``<y - x_+, x_+ - x> > 0``.
    Backtracking checks ``phi(A x_+) <= phi(A y) + <g, x_+ - y> + L/2 ||x_+ - y||^2``
    with ``A x_+`` the only new product.
    """
    x = x0
    Ax = A(x) if image0 is None else image0
    x_old, Ax_old = x, Ax
    L = float(L0)
    t = 1.0
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        mom = (t - 1.0) / t_next
        y = x + mom * (x - x_old)
        Ay = _comb(Ax, Ax_old, mom) if mom else Ax
        fy, gimg = phi(Ay)
        g = AT(gimg)
        while True:
            xn = group_prox(y - g / L, beta / L)
            Axn = A(xn)
            fxn, _ = phi(Axn)
            d = xn - y
            dd = float((d * d).sum())
            if fxn <= fy + float((g * d).sum()) + 0.5 * L * dd + 1e-12 * abs(fy) or dd == 0.0:
                break
            L *= 2.0
        restart = float(((y - xn) * (xn - x)).sum()) > 0.0
        x_old, Ax_old, x, Ax = x, Ax, xn, Axn
        t = 1.0 if restart else t_next
        if restart:
            x_old, Ax_old = x, Ax
        if stop is not None:
            if it % check_every == 0 and stop(x, Ax, it):
                converged = True
                break
        else:
            gm = L * np.sqrt(dd)
            if gm <= tol * (1.0 + L * float(np.sqrt((x * x).sum()))):
                converged = True
                break
    return FistaResult(x=x, image=Ax, iterations=it, L=L, converged=converged)


def power_norm2(A, AT, shape, xp=np, iters=30, seed=0):
    """An estimate of ``||A||^2`` by power iteration on ``A^T A`` (a lower bound; callers add a margin)."""
    rng = np.random.default_rng(seed)
    v = xp.asarray(rng.standard_normal(shape))
    lam = 0.0
    for _ in range(iters):
        nv = float(xp.sqrt((v * v).sum()))
        if nv == 0.0:
            return 0.0
        v = v / nv
        w = AT(A(v))
        lam = float((v * w).sum())
        v = w
    return lam

"""Three-layer ReLU CNNs with two ReLU levels (Ergen and Pilanci 2021), by a certified convex relaxation.

The network ``f(X) = sum_j (sum_k (X_k u_j)_+ w1_jk)_+ w2_j`` (a filter bank,
ReLU, a fully connected layer over the ``K`` patch positions for each filter,
ReLU, a linear output) has the training problem

.. math::

    p^* = \\min_{\\|u_j\\| \\le 1,\\ w1_j,\\ w2_j} \\tfrac12 \\|f(X) - y\\|^2
          + \\tfrac\\beta2 \\textstyle\\sum_j (\\|w1_j\\|^2 + w2_j^2).

A neuron is linear on the set where its patterns are fixed: the first-level
gates ``D1_k = diag(1[X_k u >= 0])``, the signs ``s_k = sign(w1_k)`` and the
second-level gate ``D2 = diag(1[sum_k (X_k u)_+ w1_k >= 0])``. There its
output is ``D2 sum_k D1_k X_k c_k`` with ``c_k = u w1_k |w2|``, i.e. a linear
function of the rank-one matrix ``C = u (|w2| w1)^T`` (``h x K``), whose
weight decay is ``beta ||u|| ||w1|| |w2| = beta ||C||_*``. Over sampled
patterns ``(D1, s, D2)_l`` and both output signs this gives the convex program

.. math::

    \\min_{C_{l\\pm} \\in \\mathcal K_l} \\tfrac12 \\|\\textstyle\\sum_l D2_l \\sum_k D1_{lk} X_k
          (c^+_{lk} - c^-_{lk}) - y\\|^2 + \\beta \\textstyle\\sum_l (\\|C^+_l\\|_* + \\|C^-_l\\|_*),

    \\mathcal K_l = \\{C : s_{lk} (2 D1_{lk} - I) X_k c_k \\ge 0\\ \\forall k,\\
          (2 D2_l - I) \\textstyle\\sum_k D1_{lk} X_k c_k \\ge 0\\}.

Every network whose neurons' patterns are among the sampled ones maps to a
feasible point with the same objective, so the program's optimum is a lower
bound of the training objective of all such networks; it is tight when the
optimal ``C`` are rank one, and a neuron ``(u, w1, w2) = (b, sqrt(sigma) a,
+-sqrt(sigma))`` is read off each group's leading singular triple
``sigma a b^T``. Otherwise the recovered network, polished by a local
(L-BFGS) descent, is an upper bound, and the fit reports both.
Ergen and Pilanci (2021) state the program with Frobenius norms
``||C_l||_F`` (``penalty="frobenius"``): a weaker relaxation
(``||C||_F <= ||C||_*``), whose solutions are rarely rank one.

The program is solved on the host in float64 by a barrier method on the
cones, with the nuclear norms smoothed as ``sum_i (sqrt(sigma_i^2 + eps^2) - eps)``
(``eps`` shrinking with the barrier parameter), and certified by weak duality:
for the residual ``v`` and cone multipliers ``lambda >= 0``, scaled until
``||A_l^T v + G_l^T lambda_l||_2 <= beta`` (spectral norm) for every group,
``v^T y - ||v||^2 / 2`` is a lower bound.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .._backend import blas_threads, check_finite, to_numpy
from .fista import power_norm2
from .interior import DenseBlocks, _batched_matvec, _dual_bound_t, _woodbury_factor, _first_barrier_parameter
from .patches import PatchOperator, patch_tensor

__all__ = ["ThreeLayerPatterns", "sample_three_layer_patterns", "ThreeLayerCNN", "ThreeLayerFit",
           "three_layer_cnn", "network_patterns", "train_three_layer_sgd",
           "smoothed_nuclear", "smoothed_norm"]


# --------------------------------------------------------------------------------------------------------------
# patterns


@dataclass
class ThreeLayerPatterns:
    """Sampled activation patterns of three-layer neurons on a batch.

    Attributes
    ----------
    filters : array, shape ``(P, h)``
        The generating filters ``u_l`` (unit norm).
    first : array, shape ``(P, K)``
        The generating first-layer weights ``w1_l``.
    d1 : bool array, shape ``(P, K, n)``
        ``(X_k u_l)_i >= 0``.
    signs : array, shape ``(P, K)``
        ``sign(w1_lk)`` (``+-1``).
    d2 : bool array, shape ``(P, n)``
        ``(sum_k (X_k u_l)_+ w1_lk)_i >= 0``.
    sampled : int
        Generators drawn (``P`` of them gave distinct patterns strictly inside
        their cones, with a non-zero second-level gate).
    """

    filters: np.ndarray
    first: np.ndarray
    d1: np.ndarray
    signs: np.ndarray
    d2: np.ndarray
    sampled: int

    @property
    def P(self) -> int:
        return int(self.d2.shape[0])


def _patches_of(patches: PatchOperator):
    """The patch tensor ``(K, n, h)`` on the host, float64."""
    if not isinstance(patches, PatchOperator):
        raise TypeError(f"patches must be a PatchOperator; got {type(patches).__name__}")
    T = patch_tensor(patches.data, patches.geometry)
    return np.asarray(to_numpy(T), dtype=np.float64)


def _neuron_patterns(T, U, W1):
    """Patterns ``(d1 (m, K, n), signs (m, K), d2 (m, n))`` and the pre-activations of neurons ``(U, W1)``."""
    Z = np.einsum("knh,mh->mkn", T, U)
    A = np.einsum("mkn,mk->mn", np.maximum(Z, 0.0), W1)
    return Z >= 0, np.where(W1 >= 0, 1.0, -1.0), A >= 0, Z, A


def sample_three_layer_patterns(patches: PatchOperator, n_samples: int, kind: str = "gaussian",
                                seed=None) -> ThreeLayerPatterns:
    """Sample patterns ``(D1, s, D2)`` of three-layer neurons from random ``(u, w1)``.

    Parameters
    ----------
    patches : PatchOperator
        The patches ``X_k`` of the ``n`` training images.
    n_samples : int
        Generators ``(u, w1)`` to draw: ``w1 ~ N(0, I_K)``; ``u ~ N(0, I_h)``
        (``kind="gaussian"``) or a centred data patch plus noise
        (``"patches"``), or half of each (``"mixed"``).
    seed : int or numpy.random.Generator, optional

    Returns
    -------
    ThreeLayerPatterns
        Each distinct pattern once, kept only if its generator lies strictly
        inside its cone (every non-zero constraint row positive) and its
        second-level gate is not all zero.
    """
    from .arrangements import draw_generators

    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1; got {n_samples}")
    T = _patches_of(patches)
    K, n, h = T.shape
    if n == 0 or K == 0:
        raise ValueError(f"no patches to gate: {n} images, {K} patch positions")
    rng = np.random.default_rng(seed)
    U = draw_generators(patches, n_samples, kind, rng)
    U /= np.maximum(np.linalg.norm(U, axis=1, keepdims=True), np.finfo(float).tiny)
    W1 = rng.standard_normal((n_samples, K))
    return _distinct_patterns(T, U, W1, sampled=n_samples)


def _distinct_patterns(T, U, W1, sampled, seen=None):
    """The distinct patterns of neurons ``(U, W1)`` whose generator is strictly inside its cone."""
    keep, seen = [], set() if seen is None else seen
    live1 = np.abs(T).max(axis=2) > 0  # (K, n): zero rows are no constraint
    for a in range(0, U.shape[0], 256):
        d1, s, d2, Z, A = _neuron_patterns(T, U[a:a + 256], W1[a:a + 256])
        for j in range(d1.shape[0]):
            if not d2[j].any():
                continue
            tol = 1e-12 * max(float(np.abs(Z[j]).max()), 1e-300)
            if (np.abs(Z[j])[live1] <= tol).any():
                continue  # on a hyperplane: not strictly inside
            active = (d1[j][:, :, None] * T).any(axis=(0, 2))  # samples with a non-zero second-level row
            if (active & (np.abs(A[j]) <= tol)).any():
                continue
            key = (np.packbits(d1[j]).tobytes(), np.packbits(s[j] > 0).tobytes(), np.packbits(d2[j]).tobytes())
            if key not in seen:
                seen.add(key)
                keep.append(a + j)
    if not keep:
        raise ValueError(f"none of {U.shape[0]} generators gave a usable pattern (on a hyperplane, or a zero "
                         "second-level gate)")
    U, W1 = U[keep], W1[keep]
    d1, s, d2, _, _ = _neuron_patterns(T, U, W1)
    return ThreeLayerPatterns(filters=U, first=W1, d1=d1, signs=s, d2=d2, sampled=int(sampled))


def network_patterns(patches: PatchOperator, net: "ThreeLayerCNN", also: ThreeLayerPatterns | None = None):
    """The patterns of a network's neurons (those strictly inside their cones), optionally added to ``also``.

    With them, the relaxation's optimum is at most the network's objective:
    the network itself is a feasible point.
    """
    T = _patches_of(patches)
    net._check(T)
    U = net.filters / np.maximum(np.linalg.norm(net.filters, axis=1, keepdims=True), np.finfo(float).tiny)
    if also is None:
        return _distinct_patterns(T, U, net.first, sampled=U.shape[0])
    seen = {(np.packbits(also.d1[j]).tobytes(), np.packbits(also.signs[j] > 0).tobytes(),
             np.packbits(also.d2[j]).tobytes()) for j in range(also.P)}
    try:
        new = _distinct_patterns(T, U, net.first, sampled=U.shape[0], seen=seen)
    except ValueError:
        return also
    return ThreeLayerPatterns(*(np.concatenate([getattr(also, f), getattr(new, f)])
                                for f in ("filters", "first", "d1", "signs", "d2")),
                              sampled=also.sampled + new.sampled)


# --------------------------------------------------------------------------------------------------------------
# the smoothed group penalty


def smoothed_nuclear(C, eps: float, hessian: bool = True):
    """``phi(C) = sum_i (sqrt(sigma_i^2 + eps^2) - eps)`` of a batch of matrices, its gradient and Hessian.

    Parameters
    ----------
    C : array, shape ``(m, K, h)``
    eps : float
        ``> 0``; ``||C||_* - min(K, h) eps <= phi(C) <= ||C||_*``.
    hessian : bool

    Returns
    -------
    value : array, shape ``(m,)``
    grad : array, shape ``(m, K, h)``
        ``C M^{-1/2}`` with ``M = C^T C + eps^2 I``.
    hess : array, shape ``(m, K h, K h)`` or ``None``
        In the row-major flattening of ``(K, h)``.

    Notes
    -----
    With ``M = Q diag(mu) Q^T`` and ``C~ = C Q``, the derivative of
    ``C M^{-1/2}`` along ``E`` is ``E M^{-1/2} + C Q (Gamma o Q^T (E^T C + C^T E) Q) Q^T``,
    with the divided differences of ``x^{-1/2}``,
    ``Gamma_ab = -1 / (sqrt(mu_a mu_b) (sqrt(mu_a) + sqrt(mu_b)))`` (Daleckii-Krein).
    The Hessian is therefore ``I_K kron M^{-1/2}`` plus a term of rank at most
    ``h^2``, ``U W U^T`` with the columns ``u_ac = C~[:, c] kron Q[:, a]`` and
    ``W = diag(g) (I + S)``, ``g_(a,c) = Gamma_ac`` and ``S`` the swap
    ``(a, c) -> (c, a)``: ``K^2 h^4`` flops a matrix, one batched product.
    """
    C = np.asarray(C, dtype=float)
    m, K, h = C.shape
    # from the SVD of C (not the eigenvalues of C^T C + eps^2 I, which lose eps^2 below rounding)
    _, sig, Vt = np.linalg.svd(C, full_matrices=True)  # Vt: (m, h, h), a complete basis
    s2 = np.zeros((m, h))
    s2[:, :sig.shape[1]] = sig * sig
    Q = Vt.transpose(0, 2, 1)
    r = np.sqrt(s2 + eps * eps)
    value = (r - eps).sum(axis=1)
    grad = C @ ((Q / r[:, None, :]) @ Q.transpose(0, 2, 1))
    if not hessian:
        return value, grad, None
    # H = I_K kron M^{-1/2} + U W U^T, with the columns u_ac = Ct[:, c] kron Q[:, a] of U (K h x h^2) and
    # W = Gam'(I + swap): the rotated Hessian's two coupling terms, Ct_kc Gam_ca Ct_la and
    # delta_ac sum_b Ct_kb Gam_ba Ct_lb, rotated back (Notes)
    Ct = C @ Q  # (m, K, h) in the eigenbasis
    Gam = -1.0 / (r[:, :, None] * r[:, None, :] * (r[:, :, None] + r[:, None, :]))  # (m, h, h), symmetric
    U = (Ct[:, :, None, None, :] * Q[:, None, :, :, None]).reshape(m, K * h, h * h)  # [k, x, a, c]
    g = Gam.reshape(m, h * h)  # g[(a, c)] = Gam_ac
    UW = U * g[:, None, :] + (U * g[:, None, :]).reshape(m, K * h, h, h).transpose(0, 1, 3, 2).reshape(m, K * h, h * h)
    H = UW @ U.transpose(0, 2, 1)
    R = (Q / r[:, None, :]) @ Q.transpose(0, 2, 1)  # M^{-1/2}
    H.reshape(m, K, h, K, h)[:, np.arange(K), :, np.arange(K), :] += R[None]
    return value, grad, 0.5 * (H + H.transpose(0, 2, 1))


def smoothed_norm(C, eps: float, hessian: bool = True):
    """:func:`smoothed_nuclear` of vectors, ``sqrt(||c||^2 + eps^2) - eps``, for ``C`` of shape ``(m, p)``.

    Gradient ``c / s`` and Hessian ``I / s - c c^T / s^3`` with ``s = sqrt(||c||^2 + eps^2)``.
    """
    C = np.asarray(C, dtype=float)
    s = np.sqrt((C * C).sum(axis=1) + eps * eps)
    grad = C / s[:, None]
    if not hessian:
        return s - eps, grad, None
    p = C.shape[1]
    H = np.eye(p)[None] / s[:, None, None] - (grad[:, :, None] * grad[:, None, :]) / s[:, None, None]
    return s - eps, grad, H


def _group_penalty(C, penalty):
    """Exact ``||C_g||_*`` (or ``||C_g||_F``) of ``(m, K, h)``."""
    if penalty == "frobenius":
        return np.sqrt((C * C).sum(axis=(1, 2)))
    return np.linalg.svd(C, compute_uv=False).sum(axis=1)


def _group_dual_norm(Z, penalty):
    """The dual norms ``||Z_g||_2`` (spectral) or ``||Z_g||_F`` of ``(m, K, h)``."""
    if penalty == "frobenius":
        return np.sqrt((Z * Z).sum(axis=(1, 2)))
    return np.linalg.svd(Z, compute_uv=False)[:, 0] if Z.shape[0] else np.zeros(0)


# --------------------------------------------------------------------------------------------------------------
# the cone rows


class _ConeRows:
    """The constraint rows of every group, structured.

    First level: row ``(k, i)`` of group ``g`` is ``sign1[g, r] X_k[i]`` acting on
    column ``c_k`` only (``R1`` non-zero patch rows, shared by all groups).
    Second level: ``E[g, i] = (2 D2 - 1)_i [D1_1 X_1, ..., D1_K X_K]_i`` on all of
    ``vec(C)``, kept where non-zero (``live2``).
    """

    def __init__(self, T, d1, signs, d2):
        K, n, h = T.shape
        live = np.abs(T).max(axis=2) > 0  # (K, n)
        self.kk, self.ii = np.nonzero(live)
        self.Xv = T[self.kk, self.ii]  # (R1, h)
        R1 = len(self.kk)
        self.S1 = sp.csr_matrix((np.ones(R1), (self.kk, np.arange(R1))), shape=(K, R1))
        # sign1[g, r] = s_gk (2 D1_gki - 1)
        self.sign1 = signs[:, self.kk] * (2.0 * d1[:, self.kk, self.ii] - 1.0)
        DX = d1[:, :, :, None] * T[None]  # (m, K, n, h)
        self.E = ((2.0 * d2 - 1.0)[:, :, None, None] * DX.transpose(0, 2, 1, 3)).reshape(d2.shape[0], n, K * h)
        self.live2 = np.abs(self.E).max(axis=2) > 0  # (m, n)
        self.K, self.h, self.n = K, h, n

    @property
    def degree(self) -> int:
        return int(self.sign1.size + self.live2.sum())

    def values(self, C):
        """``(g1 (m, R1), g2 (m, n))``; ``g2`` is 1 where the row is zero (no constraint)."""
        g1 = self.sign1 * np.einsum("rh,mrh->mr", self.Xv, C[:, self.kk, :])
        g2 = (self.E @ C.reshape(C.shape[0], -1, 1))[:, :, 0]
        return g1, np.where(self.live2, g2, 1.0)

    def transpose(self, w1, w2):
        """``G^T w``: ``(m, R1), (m, n) -> (m, K, h)`` (``w2`` ignored off the live rows)."""
        m = w1.shape[0]
        W = (w1 * self.sign1)[:, :, None] * self.Xv[None]  # (m, R1, h)
        out = (self.S1 @ W.transpose(1, 0, 2).reshape(len(self.kk), -1)).reshape(self.K, m, self.h)
        out = out.transpose(1, 0, 2).copy()
        out += (np.where(self.live2, w2, 0.0)[:, None, :] @ self.E).reshape(m, self.K, self.h)
        return out

    def gram(self, w1, w2):
        """``G^T diag(w^2) G``: ``(m, K h, K h)``."""
        m, K, h = w1.shape[0], self.K, self.h
        XX = (self.Xv[:, :, None] * self.Xv[:, None, :]).reshape(-1, h * h)  # (R1, h^2)
        blocks = np.empty((m, K, h, h))
        step = max(1, int(2**24 // max(1, XX.size)))
        for a in range(0, m, step):
            W = (w1[a:a + step] ** 2).T[:, :, None] * XX[:, None, :]  # (R1, m', h^2)
            blocks[a:a + step] = (self.S1 @ W.reshape(len(self.kk), -1)).reshape(K, -1, h, h).transpose(1, 0, 2, 3)
        Ew = self.E * np.where(self.live2, w2, 0.0)[:, :, None]
        H = Ew.transpose(0, 2, 1) @ Ew
        H.reshape(m, K, h, K, h)[:, np.arange(K), :, np.arange(K), :] += blocks.transpose(1, 0, 2, 3)
        return H


# --------------------------------------------------------------------------------------------------------------
# the barrier method


def _solve_newton(tau, Bf, Hb, g):
    """``(tau B^T B + blockdiag(Hb)) x = g`` by Woodbury's identity, refined by preconditioned CG.

    The blocks go through their inverse Cholesky factors, or, where rounding
    makes one indefinite (the barrier's blocks reach condition numbers near
    ``1 / eps``), through their eigenvalues floored at ``1e-13`` of the
    largest, so that the preconditioner stays symmetric positive definite;
    conjugate gradients remove its error.
    """
    m, p = Hb.shape[:2]

    def H_times(x):
        return tau * (Bf.T @ (Bf @ x)) + _batched_matvec(Hb, x.reshape(m, p)).reshape(-1)

    solve = _woodbury_factor(tau, DenseBlocks(Bf, m, p), Hb, floor=1e-13)
    x = solve(g)
    r = g - H_times(x)
    gnorm = np.linalg.norm(g)
    z = solve(r)
    d = z.copy()
    rz = float(r @ z)
    for _ in range(50):  # the factor is the exact inverse up to rounding: CG on its residual
        if np.linalg.norm(r) <= 1e-12 * gnorm or rz <= 0:
            break
        Hd = H_times(d)
        alpha = rz / float(d @ Hd)
        x += alpha * d
        r -= alpha * Hd
        z = solve(r)
        rz_new = float(r @ z)
        d = z + (rz_new / rz) * d
        rz = rz_new
    return x


def _barrier(B, rows: _ConeRows, y, beta, C0, penalty, tol, mu=10.0, max_newton=400):
    """Minimise the relaxation over ``C`` (``(m, K, h)``) from ``C0`` strictly inside the cones.

    Returns ``C``, the certified lower bound, the Newton steps and whether the
    relative gap met ``tol``.
    """
    m, n, p = B.shape
    K, h = rows.K, rows.h
    Bf = B.transpose(1, 0, 2).reshape(n, m * p)
    shape = (m, 1, K * h) if penalty == "frobenius" else (m, K, h)
    rank = 1 if penalty == "frobenius" else min(K, h)
    N = rows.degree + m

    def smoothed(C, eps, hessian=True):
        if penalty == "frobenius":
            return smoothed_norm(C.reshape(m, -1), eps, hessian)
        return smoothed_nuclear(C.reshape(m, K, h), eps, hessian)
    C = np.array(C0, dtype=float)

    def fit(C):
        r = Bf @ C.reshape(-1) - y
        return r, 0.5 * float(r @ r)

    def objective(C):
        return fit(C)[1] + beta * float(_group_penalty(C.reshape(shape), penalty).sum())

    def newton(C, tau, eps):
        """The merit's pieces at ``C`` and the Newton direction."""
        r = Bf @ C.reshape(-1) - y
        val, gphi, Hphi = smoothed(C, eps)
        g1, g2 = rows.values(C)
        grad = tau * (Bf.T @ r).reshape(m, K, h) + tau * beta * gphi.reshape(m, K, h)
        grad -= rows.transpose(1.0 / g1, 1.0 / g2)
        Hb = tau * beta * Hphi.reshape(m, K * h, K * h) + rows.gram(1.0 / g1, 1.0 / g2)
        gflat = grad.reshape(-1)
        with blas_threads(os.cpu_count() or 1):
            d = -_solve_newton(tau, Bf, Hb, gflat)
        return r, val, g1, g2, d, -float(gflat @ d)

    def certificate(C, tau, g1, g2, d):
        """Weak duality at the Newton point ``C + d``: the residual there and the multipliers linearised,
        ``lambda = (1 - G d / g)_+ / (tau g)`` (first-order exact, unlike ``1 / (tau g)`` at an inexact centre)."""
        v = y - Bf @ (C.reshape(-1) + d)
        e1, e2 = rows.values(d.reshape(m, K, h))
        lam1 = np.maximum(1.0 - e1 / g1, 0.0) / (tau * g1)
        lam2 = np.maximum(1.0 - e2 / g2, 0.0) / (tau * g2)
        Z = (Bf.T @ v).reshape(m, K, h) + rows.transpose(lam1, lam2)
        worst = float(_group_dual_norm(Z.reshape(shape), penalty).max()) if m else 0.0
        return _dual_bound_t(v, y, beta, worst)

    f0 = objective(C)
    bnorm = float(np.sqrt(power_norm2(lambda v: Bf @ v, lambda w: Bf.T @ w, (m * p,), iters=20))) if Bf.size else 0.0
    tau = _first_barrier_parameter(N, f0, beta, y, bnorm)
    steps = 0
    best_lb = -np.inf
    converged = False
    stalled = 0
    while steps < max_newton:
        eps = N / (tau * beta * max(m, 1) * rank)
        try:
            for _ in range(80):
                if steps >= max_newton:
                    break
                steps += 1
                r, val, g1, g2, d, dec = newton(C, tau, eps)
                if not np.isfinite(dec) or dec <= 1e-7:
                    break  # centred: the merit is within dec / 2 of its minimum
                dC = d.reshape(m, K, h)
                d1, d2 = rows.values(dC)
                d2 = np.where(rows.live2, d2, 0.0)
                step = 1.0
                for g, gd in ((g1, d1), (g2, d2)):
                    neg = gd < 0
                    if neg.any():
                        step = min(step, 0.99 * float((-g[neg] / gd[neg]).min()))
                Bd = Bf @ d
                while step > 1e-6:  # below, the changes are rounding
                    Cn = C + step * dC
                    dval = smoothed(Cn, eps, hessian=False)[0] - val
                    change = tau * (step * float(r @ Bd) + 0.5 * step * step * float(Bd @ Bd))
                    change += tau * beta * float(dval.sum())
                    change -= float(np.log1p(step * d1 / g1).sum() + np.log1p(step * d2 / g2).sum())
                    if np.isfinite(change) and change <= -0.25 * step * dec:
                        break
                    step *= 0.5
                else:
                    break
                C = Cn
            _, _, g1, g2, d, _ = newton(C, tau, eps)
        except np.linalg.LinAlgError:  # the systems past what float64 resolves: stop with the last certificate
            break
        if np.isfinite(d).all():
            lb = certificate(C, tau, g1, g2, d)
            stalled = stalled + 1 if lb <= best_lb else 0
            best_lb = max(best_lb, lb)
        f = objective(C)
        if f - best_lb <= tol * max(abs(f), 1e-300):
            converged = True
            break
        if N / tau < 1e-15 * max(abs(f), 1e-300) or stalled >= 3:
            break  # the Newton systems resolve no more (their condition grows with tau)
        tau *= mu
    return C, best_lb, steps, converged


# --------------------------------------------------------------------------------------------------------------
# the network


class ThreeLayerCNN:
    """The non-convex three-layer CNN ``f(X) = sum_j (sum_k (X_k u_j)_+ w1_jk)_+ w2_j``.

    Parameters
    ----------
    filters : array, shape ``(m, h)``
        ``u_j`` (``||u_j|| <= 1`` in the training problem).
    first : array, shape ``(m, K)``
        ``w1_j``.
    second : array, shape ``(m,)``
        ``w2_j``.
    """

    def __init__(self, filters, first, second):
        self.filters = np.asarray(to_numpy(filters), dtype=float)
        self.first = np.asarray(to_numpy(first), dtype=float)
        self.second = np.asarray(to_numpy(second), dtype=float).reshape(-1)
        m = self.second.shape[0]
        if self.filters.ndim != 2 or self.first.ndim != 2 or self.filters.shape[0] != m or self.first.shape[0] != m:
            raise ValueError(f"filters {self.filters.shape}, first {self.first.shape} and second {self.second.shape} "
                             "do not match: expected (m, h), (m, K) and (m,)")

    def _check(self, T):
        if self.filters.shape[1] != T.shape[2] or self.first.shape[1] != T.shape[0]:
            raise ValueError(f"the network has h={self.filters.shape[1]}, K={self.first.shape[1]}; "
                             f"the patches have h={T.shape[2]}, K={T.shape[0]}")

    def predict(self, patches: PatchOperator):
        """``f`` on the images of ``patches``: ``(n,)``."""
        T = _patches_of(patches)
        self._check(T)
        return _forward(T, self.filters, self.first, self.second)[0]

    def objective(self, patches: PatchOperator, y, beta: float) -> float:
        """``1/2 ||f - y||^2 + beta/2 sum_j (||w1_j||^2 + w2_j^2)``; filters must have ``||u_j|| <= 1``."""
        norms = np.linalg.norm(self.filters, axis=1)
        if (norms > 1.0 + 1e-12).any():
            raise ValueError(f"filters of norm up to {norms.max():.6g}: the training problem has ||u_j|| <= 1")
        r = self.predict(patches) - np.asarray(to_numpy(y), dtype=float).reshape(-1)
        return 0.5 * float(r @ r) + 0.5 * beta * (float((self.first ** 2).sum()) + float((self.second ** 2).sum()))

    def value_and_grad(self, patches: PatchOperator, y, beta: float):
        """The objective with the filters normalised, ``u_j / ||u_j||``, and its gradients ``(dU, dW1, dw2)``.

        At unit filters it is :meth:`objective`; ``dU`` is the gradient through
        the normalisation (tangent to the sphere).
        """
        T = _patches_of(patches)
        self._check(T)
        return _value_and_grad(T, np.asarray(to_numpy(y), dtype=float).reshape(-1), beta,
                               self.filters, self.first, self.second)


def _forward(T, U, W1, w2):
    Z = np.einsum("knh,mh->mkn", T, U)
    A = np.einsum("mkn,mk->mn", np.maximum(Z, 0.0), W1)
    return np.maximum(A, 0.0).T @ w2, Z, A


def _value_and_grad(T, y, beta, U, W1, w2):
    nu = np.maximum(np.linalg.norm(U, axis=1, keepdims=True), np.finfo(float).tiny)
    Uh = U / nu
    f, Z, A = _forward(T, Uh, W1, w2)
    r = f - y
    val = 0.5 * float(r @ r) + 0.5 * beta * (float((W1 ** 2).sum()) + float((w2 ** 2).sum()))
    Ap = np.maximum(A, 0.0)  # (m, n)
    dw2 = Ap @ r + beta * w2
    dA = (A > 0) * (w2[:, None] * r[None, :])  # (m, n)
    dW1 = np.einsum("mkn,mn->mk", np.maximum(Z, 0.0), dA) + beta * W1
    dZ = (Z > 0) * (W1[:, :, None] * dA[:, None, :])  # (m, K, n)
    dUh = np.einsum("mkn,knh->mh", dZ, T)
    dU = (dUh - (dUh * Uh).sum(axis=1, keepdims=True) * Uh) / nu
    return val, dU, dW1, dw2


def _polish(T, y, beta, net: ThreeLayerCNN, max_iter=2000):
    """A local L-BFGS descent of the training objective from ``net`` (filters kept on the unit sphere)."""
    from scipy.optimize import minimize

    m, h = net.filters.shape
    K = net.first.shape[1]
    if m == 0:
        return net

    def unpack(z):
        return z[:m * h].reshape(m, h), z[m * h:m * h + m * K].reshape(m, K), z[m * h + m * K:]

    def fun(z):
        val, dU, dW1, dw2 = _value_and_grad(T, y, beta, *unpack(z))
        return val, np.concatenate([dU.ravel(), dW1.ravel(), dw2])

    z0 = np.concatenate([net.filters.ravel(), net.first.ravel(), net.second])
    res = minimize(fun, z0, jac=True, method="L-BFGS-B", options=dict(maxiter=max_iter, ftol=1e-15, gtol=1e-12))
    U, W1, w2 = unpack(res.x)
    U = U / np.maximum(np.linalg.norm(U, axis=1, keepdims=True), np.finfo(float).tiny)
    polished = ThreeLayerCNN(U, W1, w2)
    f0 = _value_and_grad(T, y, beta, net.filters, net.first, net.second)[0]
    return polished if _value_and_grad(T, y, beta, U, W1, w2)[0] <= f0 else net


# --------------------------------------------------------------------------------------------------------------
# the solver


@dataclass
class ThreeLayerFit:
    """A solved convex relaxation of a three-layer CNN and the networks read from it.

    Attributes
    ----------
    penalty : {"nuclear", "frobenius"}
    patterns : ThreeLayerPatterns
    beta : float
    groups : array, shape ``(2, P, h, K)``
        ``C^+_l`` and ``C^-_l``.
    objective : float
        The relaxation's objective at ``groups`` (exact norms; ``groups`` are
        strictly feasible).
    lower_bound : float
        A certified lower bound of the relaxation's optimum, hence of the
        training objective of every network whose neurons' patterns are among
        ``patterns``.
    rank_ratio : float
        ``max sigma_2 / sigma_1`` over the non-zero groups (0: all rank one).
    network, network_objective
        The rank-one neurons read off the groups, and their training
        objective (an upper bound of ``p*``).
    polished, polished_objective
        ``network`` after a local descent of the training objective.
    newton_steps, seconds, converged
    """

    penalty: str
    patterns: ThreeLayerPatterns
    beta: float
    groups: np.ndarray
    objective: float
    lower_bound: float
    rank_ratio: float
    network: ThreeLayerCNN
    network_objective: float
    polished: ThreeLayerCNN
    polished_objective: float
    newton_steps: int
    seconds: float
    converged: bool

    @property
    def relative_gap(self) -> float:
        """The relaxation's certified gap ``(objective - lower_bound) / objective``."""
        return (self.objective - self.lower_bound) / max(abs(self.objective), np.finfo(float).tiny)

    @property
    def network_gap(self) -> float:
        """``(polished_objective - lower_bound) / polished_objective``: how far the best network found can be from
        the best network with the sampled patterns."""
        return (self.polished_objective - self.lower_bound) / max(abs(self.polished_objective), np.finfo(float).tiny)

    def report(self) -> dict:
        """The numbers, JSON-ready."""
        return dict(penalty=self.penalty, beta=self.beta, patterns=self.patterns.P, objective=self.objective,
                    lower_bound=self.lower_bound, relative_gap=self.relative_gap, rank_ratio=self.rank_ratio,
                    neurons=int(self.network.second.shape[0]), network_objective=self.network_objective,
                    polished_objective=self.polished_objective, network_gap=self.network_gap,
                    newton_steps=self.newton_steps, seconds=self.seconds, converged=self.converged)


def _recover(C, signs, penalty, rel: float = 1e-8):
    """Rank-one neurons of groups ``C`` (``(2, P, K, h)``): ``(u, w1, w2) = (b, sqrt(s) a, +-sqrt(s))``.

    Groups whose norm is below ``rel`` of the largest (the barrier's interior
    keeps every group slightly non-zero) are left out.
    """
    U, W1, w2 = [], [], []
    ratio = 0.0
    norms = _group_penalty(C.reshape(-1, *C.shape[2:]), penalty).reshape(C.shape[:2])
    cut = rel * max(float(norms.max(initial=0.0)), np.finfo(float).tiny)
    for o, sign in ((0, 1.0), (1, -1.0)):
        for l in range(C.shape[1]):
            G = C[o, l]
            if norms[o, l] <= cut:
                continue
            a, s, bt = np.linalg.svd(G, full_matrices=False)
            if s[0] <= 0:
                continue
            ratio = max(ratio, float(s[1] / s[0]) if len(s) > 1 else 0.0)
            vec_a, vec_b = a[:, 0], bt[0]
            if float(signs[l] @ vec_a) < 0:  # the sign that puts u in the pattern's cone
                vec_a, vec_b = -vec_a, -vec_b
            U.append(vec_b)
            W1.append(np.sqrt(s[0]) * vec_a)
            w2.append(sign * np.sqrt(s[0]))
    h, K = C.shape[3], C.shape[2]
    return ThreeLayerCNN(np.array(U).reshape(-1, h), np.array(W1).reshape(-1, K), np.array(w2)), ratio


def three_layer_cnn(patches: PatchOperator, y, beta: float, patterns: ThreeLayerPatterns,
                    penalty: str = "nuclear", tol: float = 1e-6, polish: bool = True,
                    max_newton: int = 400) -> ThreeLayerFit:
    """Solve the convex relaxation of a three-layer ReLU CNN (module Notes) and read networks off it.

    Parameters
    ----------
    patches : PatchOperator
        The patches of the ``n`` training images (any padding; ``"circular"``
        for the circular architecture).
    y : array, shape ``(n,)``
    beta : float
        Weight decay, ``> 0``.
    patterns : ThreeLayerPatterns
        From :func:`sample_three_layer_patterns` on the same patches.
    penalty : {"nuclear", "frobenius"}
        ``||C||_*`` (the tight relaxation) or ``||C||_F`` (as printed by
        Ergen and Pilanci 2021).
    tol : float
        Relative certified gap of the relaxation.
    polish : bool
        Descend the training objective locally from the recovered network.
    max_newton : int

    Returns
    -------
    ThreeLayerFit

    Notes
    -----
    The Newton systems have ``2 P K h`` unknowns and are solved through
    Woodbury's identity on the ``n x n`` data coupling, refined by
    preconditioned conjugate gradients; the barrier's Hessian blocks are
    ``K h x K h`` per group. Memory is ``O(P (n K h + (K h)^2))``.
    """
    t0 = time.perf_counter()
    if penalty not in ("nuclear", "frobenius"):
        raise ValueError(f"penalty must be 'nuclear' or 'frobenius'; got {penalty!r}")
    T = _patches_of(patches)
    K, n, h = T.shape
    if n == 0:
        raise ValueError("no training images: the program is empty")
    y = np.asarray(to_numpy(y), dtype=float).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} entries; the patches have {n} images")
    check_finite(y, "y")
    check_finite(T, "the images")
    if not beta > 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    if not isinstance(patterns, ThreeLayerPatterns):
        raise TypeError(f"patterns must be ThreeLayerPatterns; got {type(patterns).__name__}")
    if patterns.d1.shape[1:] != (K, n) or patterns.filters.shape[1] != h:
        raise ValueError(f"patterns of shape {patterns.d1.shape[1:]} (h={patterns.filters.shape[1]}) do not match "
                         f"the patches ({K} positions, {n} images, h={h})")
    P = patterns.P
    d1 = np.concatenate([patterns.d1, patterns.d1])
    signs = np.concatenate([patterns.signs, patterns.signs])
    d2 = np.concatenate([patterns.d2, patterns.d2])
    rows = _ConeRows(T, d1, signs, d2)
    DX = (d1[:, :, :, None] * T[None]).transpose(0, 2, 1, 3).reshape(2 * P, n, K * h)
    out_sign = np.r_[np.ones(P), -np.ones(P)]
    B = DX * (d2[:, :, None] * out_sign[:, None, None])
    # start: each group's generator u w1^T (strictly inside its cone), scaled to a small share of y
    C0 = np.einsum("pk,ph->pkh", patterns.first, patterns.filters)
    C0 = np.concatenate([C0, C0])
    pred = np.einsum("mnp,mp->mn", B, C0.reshape(2 * P, -1))
    scale = 1e-2 * np.linalg.norm(y) / max(float(np.linalg.norm(pred, axis=1).max()), 1e-300)
    if np.linalg.norm(y) == 0:
        scale = 1e-6
    C, lb, steps, converged = _barrier(B, rows, y, float(beta), scale * C0, penalty, tol, max_newton=max_newton)
    r = y - np.einsum("mnp,mp->n", B, C.reshape(2 * P, -1))
    shape = (2 * P, 1, K * h) if penalty == "frobenius" else (2 * P, K, h)
    obj = 0.5 * float(r @ r) + beta * float(_group_penalty(C.reshape(shape), penalty).sum())
    lb = min(lb, obj)
    groups = C.reshape(2, P, K, h)
    net, ratio = _recover(groups, patterns.signs, penalty)
    net_obj = net.objective(patches, y, beta)
    best = _polish(T, y, float(beta), net) if polish else net
    return ThreeLayerFit(penalty=penalty, patterns=patterns, beta=float(beta), groups=groups.transpose(0, 1, 3, 2),
                         objective=obj, lower_bound=lb, rank_ratio=ratio, network=net, network_objective=net_obj,
                         polished=best, polished_objective=best.objective(patches, y, beta), newton_steps=steps,
                         seconds=time.perf_counter() - t0, converged=converged)


def train_three_layer_sgd(patches: PatchOperator, y, beta: float, width: int, epochs: int = 2000,
                          lr: float | None = None, momentum: float = 0.9, seed=None):
    """Train the three-layer CNN by (full-batch) gradient descent with momentum, filters on the unit sphere.

    Parameters
    ----------
    patches : PatchOperator
    y : array, shape ``(n,)``
    beta : float
    width : int
        Neurons ``m``.
    epochs : int
    lr : float, optional
        Step size (default ``3 / (K max_i ||x_i||^2 + beta)``: the best of 0.2, 1, 3 and 10 on the digits).
    momentum : float
    seed : int or numpy.random.Generator, optional

    Returns
    -------
    model : ThreeLayerCNN
    history : list of ``(seconds, objective)``
        After every epoch (training time only).
    """
    T = _patches_of(patches)
    K, n, h = T.shape
    y = np.asarray(to_numpy(y), dtype=float).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} entries; the patches have {n} images")
    if width < 1 or epochs < 0:
        raise ValueError(f"width must be >= 1 and epochs >= 0; got {width} and {epochs}")
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((width, h))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    W1 = rng.standard_normal((width, K)) * np.sqrt(2.0 / K)
    w2 = rng.standard_normal(width) / np.sqrt(width)
    if lr is None:
        lr = 3.0 / (K * float((T ** 2).sum(axis=(0, 2)).max()) + beta)
    vel = [np.zeros_like(U), np.zeros_like(W1), np.zeros_like(w2)]
    history, clock = [], 0.0
    for _ in range(int(epochs)):
        t0 = time.perf_counter()
        _, *grads = _value_and_grad(T, y, beta, U, W1, w2)
        for v, g in zip(vel, grads):
            v *= momentum
            v -= lr * g
        U, W1, w2 = U + vel[0], W1 + vel[1], w2 + vel[2]
        U /= np.maximum(np.linalg.norm(U, axis=1, keepdims=True), np.finfo(float).tiny)
        clock += time.perf_counter() - t0
        history.append((clock, _value_and_grad(T, y, beta, U, W1, w2)[0]))
    return ThreeLayerCNN(U, W1, w2), history

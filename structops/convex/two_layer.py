"""Convex training of two-layer ReLU CNNs (Ergen and Pilanci 2021).

The network ``f(X) = sum_j sum_k (X_k u_j)_+ w_j`` (one filter bank, ReLU,
sum over patch positions, a linear output) with weight decay ``beta`` has the
training problem

.. math::

    p^* = \\min_{u_j, w_j} \\tfrac12 \\|\\textstyle\\sum_j \\sum_k (X_k u_j)_+ w_j - y\\|^2
          + \\tfrac\\beta2 \\textstyle\\sum_j (\\|u_j\\|^2 + w_j^2).

Over the gate patterns ``D_jk = diag(1[X_k g_j >= 0])`` it is the convex program

.. math::

    \\min_{v_j, w_j \\in \\mathcal K_j} \\tfrac12 \\|\\textstyle\\sum_j \\sum_k D_{jk} X_k (v_j - w_j) - y\\|^2
          + \\beta \\textstyle\\sum_j (\\|v_j\\| + \\|w_j\\|),
    \\qquad \\mathcal K_j = \\{c : (2 D_{jk} - I) X_k c \\ge 0 \\ \\forall k\\},

exact when every pattern is present, and the neurons are recovered as
``(v_j / sqrt||v_j||, sqrt||v_j||)`` and ``(w_j / sqrt||w_j||, -sqrt||w_j||)``.
Without the cones it is the gated-ReLU program (a group lasso), whose network
gates each neuron by its generator ``g_j`` instead of its own filter.

Every product is a patch operator (:class:`~structops.convex.PatchOperator`):
``sum_j sum_k D_jk X_k c_j`` is a ``P``-filter convolution of the data, a 0/1
mask and a sum; its adjoint is the convolution's weight gradient.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .._backend import blas_threads, check_finite, get_xp, to_numpy
from .._validate import check_memory
from .arrangements import Gates
from .fista import group_fista, power_norm2
from .interior import _dual_bound_t, barrier_group_program, interior_direction
from .patches import PatchOperator

__all__ = ["ConvexCNNFit", "gated_relu_cnn", "relu_cnn", "TwoLayerCNN", "recover_network", "merge_parallel_neurons"]

_CHUNK_BYTES = 64 * 2**20


class _GatedSum:
    """``C -> sum_j s_j sum_k D_jk X_k c_j`` and its pieces, for groups ``C`` of shape ``(P, h)``.

    ``masks`` (bool ``(K, n, P)``) are the gates, ``signs`` (``(P,)``, ``+1``
    or ``-1``) the output signs of the groups.
    """

    def __init__(self, patches: PatchOperator, masks, signs):
        self.patches, self.xp = patches, patches.xp
        self.D = self.xp.asarray(masks, dtype=bool)  # (K, n, P): 1 byte a gate entry, not 8
        self.s = self.xp.asarray(signs, dtype=patches.dtype)
        self.P = int(self.D.shape[-1])
        self.step = max(1, int(_CHUNK_BYTES // max(1, 8 * patches.K * patches.n)))

    def responses(self, C):
        """``Z[k, i, j] = (X_k c_j)_i``: ``(K, n, P)``."""
        return self.patches.responses(C)

    def combine(self, Z, a=0, b=None):
        """``sum_{k, j} s_j D[k, i, j] Z[k, i, j]`` for the gates ``a:b``: ``(n,)``."""
        b = self.P if b is None else b
        return ((self.D[..., a:b] * Z).sum(axis=0)) @ self.s[a:b]

    def spread(self, r, a=0, b=None):
        """Adjoint of :meth:`combine`: ``(n,)`` -> ``(K, n, b - a)``."""
        b = self.P if b is None else b
        return self.D[..., a:b] * (r[None, :, None] * self.s[a:b])

    def predict(self, C):
        """``(n,)``, gates taken in chunks (the responses of all gates at once may not fit)."""
        out = self.xp.zeros(self.patches.n, dtype=self.patches.dtype)
        for a in range(0, self.P, self.step):
            b = min(a + self.step, self.P)
            out += self.combine(self.responses(C[a:b]), a, b)
        return out

    def predict_and_violation(self, C):
        """``(predict(C), max_jk max (-(2 D_jk - I) X_k c_j)_+, max |X_k c_j|)``, in chunks of gates."""
        out = self.xp.zeros(self.patches.n, dtype=self.patches.dtype)
        viol, scale = 0.0, 0.0
        for a in range(0, self.P, self.step):
            b = min(a + self.step, self.P)
            Z = self.responses(C[a:b])
            out += self.combine(Z, a, b)
            if Z.size:
                viol = max(viol, float(self.xp.maximum(-(2.0 * self.D[..., a:b] - 1.0) * Z, 0.0).max()))
                scale = max(scale, float(self.xp.abs(Z).max()))
        return out, viol, scale

    def predict_T(self, r):
        """Adjoint of :meth:`predict`: ``(n,)`` -> ``(P, h)``."""
        parts = [self.patches.gradients(self.spread(r, a, min(a + self.step, self.P)))
                 for a in range(0, self.P, self.step)]
        return self.xp.concatenate(parts, axis=0)


@dataclass
class ConvexCNNFit:
    """A solved convex program of a two-layer CNN.

    Attributes
    ----------
    formulation : {"gated_relu", "relu"}
    V, W : arrays, shape ``(P, h)``
        The groups of positive (``V``) and negative (``W``) output sign; the
        gated-ReLU program has ``V`` only (``W`` is ``None``).
    gates : Gates
    beta : float
    objective : float
        The convex objective at ``V, W``.
    lower_bound : float
        A certified lower bound of the program's optimum (weak duality, from
        a scaled residual and, for ``"relu"``, the cone multipliers).
    max_violation : float
        ``max (-(2 D_jk - I) X_k c)_+`` over every group (0 for gated ReLU).
    filters, weights : arrays, shapes ``(m, h)`` and ``(m,)``
        The recovered ReLU network (``"relu"``; for ``"gated_relu"`` the
        neurons of the gated network, gated by ``gates.generators[neurons]``).
    neurons : int array
        Which groups of the stacked ``[V; W]`` the recovered neurons come from
        (for ``"relu"``, neurons of parallel filters and one output sign are
        merged into one, listed by its first group).
    nonconvex_objective : float
        The training objective of the recovered network (``"relu"``: the
        ReLU network's, an upper bound of ``p*``; ``"gated_relu"``: the gated
        network's, equal to ``objective``).
    iterations, seconds, converged, history
        Solver statistics: ``iterations`` counts Newton steps of the barrier
        method and first-order iterations together; ``history`` lists
        ``(seconds, objective, lower_bound, working-set size)`` per round.
    """

    formulation: str
    V: object
    W: object
    gates: Gates
    beta: float
    objective: float
    lower_bound: float
    max_violation: float
    filters: object
    weights: object
    neurons: object
    nonconvex_objective: float
    iterations: int
    seconds: float
    converged: bool
    history: list = field(default_factory=list)

    @property
    def gap(self) -> float:
        """``objective - lower_bound`` (``>= 0`` up to rounding at an exact solution)."""
        return self.objective - self.lower_bound

    @property
    def relative_gap(self) -> float:
        return self.gap / max(abs(self.objective), np.finfo(float).tiny)

    def report(self) -> dict:
        """The optimality report as plain numbers (JSON-ready)."""
        return dict(formulation=self.formulation, beta=self.beta, gates=self.gates.P,
                    objective=self.objective, lower_bound=self.lower_bound, gap=self.gap,
                    relative_gap=self.relative_gap, max_violation=self.max_violation,
                    neurons=int(len(self.weights)), nonconvex_objective=self.nonconvex_objective,
                    iterations=self.iterations, seconds=self.seconds, converged=self.converged)


def _check_problem(patches, y, beta, gates):
    if not isinstance(patches, PatchOperator):
        raise TypeError(f"patches must be a PatchOperator; got {type(patches).__name__}")
    xp = patches.xp
    y = xp.asarray(y, dtype=patches.dtype).reshape(-1)
    if y.shape[0] != patches.n:
        raise ValueError(f"y has {y.shape[0]} entries; the patches have {patches.n} images")
    if patches.n == 0:
        raise ValueError("no training images: the program is empty")
    check_finite(y, "y")
    check_finite(patches.data, "the images")
    if not beta > 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    if gates.masks.shape[:2] != (patches.K, patches.n):
        raise ValueError(f"gates of shape {tuple(gates.masks.shape[:2])} do not match the patches "
                         f"({patches.K} positions, {patches.n} images)")
    return y


def _dual_bound(r, y, beta, grads):
    """Weak-duality bound ``t <r, y> - t^2 ||r||^2 / 2`` with ``t = min(1, beta / max_j ||grads_j||)``."""
    return _dual_bound_t(r, y, beta, float(_group_norms(grads).max()) if grads.shape[0] else 0.0)


def _group_norms(C):
    xp = get_xp(C)
    return xp.sqrt((C * C).sum(axis=1))


def _convex_objective(r, C, beta) -> float:
    """``||r||^2 / 2 + beta sum_j ||c_j||``: the convex programs' objective at residual ``r`` and groups ``C``."""
    return 0.5 * float(r @ r) + beta * float(_group_norms(C).sum())


class _GatedBlocks:
    """The blocks ``B_j = s_j sum_k D_jk X_k`` of gated groups, from the patches and the gates (never formed).

    The interface of :class:`~structops.convex.interior.DenseBlocks`, for few
    patch positions ``K``: a product is ``K`` matrix products ``X_k C^T``
    (``n x h`` by ``h x m``) and a mask, where the formed ``n x m h`` matrix
    streams ``n m h`` numbers from memory; ``sum_j w_j B_j B_j^T`` is
    ``sum_{k,l} (X_k X_l^T) o (D_k diag(w) D_l^T)`` (``s_j^2 = 1``),
    ``K^2 n^2 (m + h)`` flops instead of ``n^2 m h``.

    Parameters
    ----------
    T : array, shape ``(K, n, h)``
        The patches ``X_k``.
    D : array, shape ``(K, n, m)``
        The groups' gates ``D_jk`` (0/1).
    s : array, shape ``(m,)``
        The groups' signs.
    XX : array, shape ``(K, K, n, n)``
        ``X_k X_l^T``.
    """

    def __init__(self, T, D, s, XX):
        self.T, self.D, self.s, self.XX = T, D, s, XX
        self.K, self.n, self.h = T.shape
        self.m = D.shape[2]

    def matvec(self, C):
        Cs = C * self.s[:, None]
        return sum(((self.T[k] @ Cs.T) * self.D[k]).sum(axis=1) for k in range(self.K))

    def rmatvec(self, v):
        return self.s[:, None] * sum((self.D[k] * v[:, None]).T @ self.T[k] for k in range(self.K))

    def columns(self, U):
        return sum(self.D[k] * (self.T[k] @ U.T) for k in range(self.K)) * self.s

    def gram(self, w):
        Dw = self.D * w
        return sum(self.XX[k, l] * (Dw[k] @ self.D[l].T) for k in range(self.K) for l in range(self.K))

    def dense(self):
        B = sum(self.D[k][:, :, None] * self.T[k][:, None, :] for k in range(self.K)) * self.s[:, None]
        return B.reshape(self.n, self.m * self.h)


class _Problem:
    """The groups of a two-layer program: gate ``gate[j]`` with output sign ``sign[j]`` for each group ``j``."""

    def __init__(self, patches, y, beta, gates, relu: bool):
        self.patches, self.y, self.beta, self.gates, self.relu = patches, y, float(beta), gates, relu
        self.xp = patches.xp
        P = gates.P
        self.gate = np.r_[np.arange(P), np.arange(P)] if relu else np.arange(P)
        self.sign = np.r_[np.ones(P), -np.ones(P)] if relu else np.ones(P)
        self.full = _GatedSum(patches, gates.masks, np.ones(P))
        self._rows = None
        self._gram = None
        self._barrier = {}
        self._double = None

    def in_double(self):
        """This program on double-precision copies of the images and targets (itself if it has them).

        Its objectives and bounds are the certificates: from single-precision
        residuals the dual bound carries their rounding (a relative gap of
        ``4e-6`` where the objective was within ``4e-8`` of the optimum).
        """
        dtype = np.dtype(self.patches.dtype)
        if dtype in (np.float64, np.complex128):
            return self
        if self._double is None:
            double = np.complex128 if dtype.kind == "c" else np.float64
            patches = self.patches.on(self.patches.data.astype(double))
            self._double = _Problem(patches, self.y.astype(double), self.beta, self.gates, self.relu)
        return self._double

    @property
    def n_groups(self) -> int:
        return len(self.gate)

    def restricted(self, groups):
        """The model of the groups ``groups`` only."""
        g = self.xp.asarray(self.gate[groups])
        return _GatedSum(self.patches, self.gates.masks[..., g], self.sign[groups])

    def correlations(self, r):
        """``a_j = s_j sum_k X_k^T D_jk r`` for every group: ``(n_groups, h)``."""
        a = self.full.predict_T(r)
        return self.xp.concatenate([a, -a]) if self.relu else a

    def cone_rows(self, gate):
        """The rows ``(2 D_jk - I) X_k`` of gate ``gate``'s cone ``{c : rows c >= 0}``: ``(K n, h)`` on the host."""
        S = 2.0 * to_numpy(self.gates.masks[..., gate]).reshape(-1) - 1.0
        return S[:, None] * self.cone_rows_base()

    def cone_rows_base(self):
        """The patch rows ``X_k`` stacked, ``(K n, h)`` on the host (formed once)."""
        if self._rows is None:
            T = self.patches._T if self.patches.method == "patches" else None
            if T is None:
                from .patches import patch_tensor

                check_memory(float(self.patches.K) * self.patches.n * self.patches.h * 8, "the patch tensor")
                T = patch_tensor(self.patches.data, self.patches.geometry).reshape(-1, self.patches.h)
            self._rows = to_numpy(T)
        return self._rows

    def scores(self, r, need: float = 0.0):
        """``d_j``, the group's distance from optimality at residual ``r``, for every group.

        Gated ReLU: ``||a_j||``. ReLU: ``||Pi_{K_j}(a_j)||``, the norm of the
        projection onto the group's cone (``min_{lambda >= 0} ||a_j + G_j^T lambda||``,
        a non-negative least-squares problem), evaluated in decreasing order of
        ``||a_j||`` (an upper bound of it) and only while that bound exceeds
        ``need`` and the largest value found so far (the others are returned as
        their bounds capped at it).
        """
        a = to_numpy(self.correlations(r))
        bound = np.sqrt((a * a).sum(axis=1))
        if not self.relu:
            return bound
        from scipy.optimize import nnls

        out = bound.copy()
        best = 0.0
        for j in np.argsort(-bound):
            if bound[j] <= max(best, need):
                out[j] = min(bound[j], max(best, need))
                continue
            M = self.cone_rows(self.gate[j]).T
            _, dist = nnls(M, -a[j])
            out[j] = dist
            best = max(best, dist)
        return out

    def barrier_data(self, group):
        """``(B_j, G_j, d_j)`` of a group on the host (cached): its signed gated patch sum ``(n, h)``, its
        non-zero cone rows (``None`` for gated ReLU) and a unit direction strictly inside its cone (``None``
        if the cone has no interior, when the barrier method cannot be used)."""
        if group not in self._barrier:
            T = self.cone_rows_base()
            K, n, h = self.patches.K, self.patches.n, self.patches.h
            gate = self.gate[group]
            Dm = to_numpy(self.gates.masks[..., gate]).reshape(-1).astype(float)
            Bj = self.sign[group] * (Dm[:, None] * T).reshape(K, n, h).sum(axis=0)
            hint = to_numpy(self.gates.generators[gate]).astype(float)
            if self.relu:
                G = self.cone_rows(gate)
                G = G[np.abs(G).max(axis=1) > 0]
                d = interior_direction(G, hint)
            else:
                G, d = None, self.direction(group)
            self._barrier[group] = None if d is None else (Bj, G, d)
        return self._barrier[group]

    def direction(self, group):
        """A unit vector strictly inside group ``group``'s cone (gated ReLU: no cone, its gate's generator)."""
        if self.relu:
            data = self.barrier_data(group)
            return None if data is None else data[2]
        hint = to_numpy(self.gates.generators[self.gate[group]]).astype(float)
        return interior_direction(None, hint if np.any(hint) else np.ones(len(hint)))

    def structured(self, m: int) -> bool:
        """Whether :meth:`blocks` of ``m`` groups are structured: a gated program with few patch positions."""
        K, n, h = self.patches.K, self.patches.n, self.patches.h
        return not self.relu and 2 * K * K * (m + h) <= m * h and 8.0 * K * K * n * n <= _CHUNK_BYTES

    def blocks(self, groups):
        """The gated program's blocks on ``groups`` from their structure (:class:`_GatedBlocks`), or ``None``
        where forming ``B`` is as cheap (many patch positions) or the program has cones."""
        K, n, h = self.patches.K, self.patches.n, self.patches.h
        if not self.structured(len(groups)):
            return None
        T = self.cone_rows_base().reshape(K, n, h)
        if self._gram is None:
            self._gram = np.einsum("kah,lbh->klab", T, T)  # X_k X_l^T
        D = to_numpy(self.gates.masks[..., self.gate[groups]]).astype(float)  # (K, n, m)
        return _GatedBlocks(T, D, self.sign[groups].astype(float), self._gram)

    def project(self, c, group):
        """``c`` projected onto the group's cone (Moreau: ``c + G^T lambda`` with ``lambda`` from NNLS)."""
        from scipy.optimize import nnls

        G = self.cone_rows(self.gate[group])
        c = to_numpy(c)
        lam, _ = nnls(G.T, -c)
        return c + G.T @ lam

    def lower_bound(self, r, scores) -> float:
        return _dual_bound_t(r, self.y, self.beta, float(np.max(scores)) if len(scores) else 0.0)


def _solve_gated(model: _GatedSum, y, beta, C0, tol, max_iter):
    """The gated program on the groups of ``model`` (FISTA, stopped at a relative gap ``tol``)."""
    patches = model.patches
    A = lambda C: (model.predict(C),)  # noqa: E731
    AT = lambda img: model.predict_T(img[0])  # noqa: E731

    def phi(img):
        r = img[0] - y
        return 0.5 * float(r @ r), (r,)

    def stop(C, img, it):
        r = y - img[0]
        obj = _convex_objective(r, C, beta)
        lb = _dual_bound(r, y, beta, model.predict_T(r))
        return obj - lb <= tol * max(abs(obj), np.finfo(float).tiny)

    L0 = 1.1 * power_norm2(A, AT, (model.P, patches.h), patches.xp) + np.finfo(float).tiny
    return group_fista(A, AT, phi, C0, beta, L0, max_iter=max_iter, stop=stop, check_every=10)


def _solve_relu(model: _GatedSum, y, beta, C0, tol, feas_tol, max_outer, max_inner, rho=None):
    """The ReLU program (cone constraints) on the groups of ``model`` by an augmented Lagrangian.

    Returns ``(C, iterations)``; stops when the violation is below
    ``feas_tol * max(1, max |X_k c|)`` and the restricted relative gap (from
    the multipliers) below ``tol``.
    """
    patches, xp = model.patches, model.patches.xp
    K, n, P = patches.K, patches.n, model.P
    S = 2.0 * model.D - 1.0
    A = lambda C: (model.responses(C),)  # noqa: E731
    AT = lambda img: patches.gradients(img[0])  # noqa: E731
    nA = power_norm2(lambda C: (model.predict(C),), lambda im: model.predict_T(im[0]), (P, patches.h), xp)
    nX = power_norm2(A, AT, (P, patches.h), xp)
    pen = {"rho": float(rho) if rho is not None else max(nA / max(nX, np.finfo(float).tiny), 1e-8)}
    lam = xp.zeros((K, n, P), dtype=patches.dtype)

    def phi(img):
        Z = img[0]
        r = model.combine(Z) - y
        q = xp.maximum(lam - pen["rho"] * S * Z, 0.0)
        val = 0.5 * float(r @ r) + (float((q * q).sum()) - float((lam * lam).sum())) / (2 * pen["rho"])
        return val, (model.spread(r) - S * q,)

    C, img = C0, A(C0)
    L = 1.1 * (nA + pen["rho"] * nX) + np.finfo(float).tiny
    its, prev_viol, inner_tol = 0, np.inf, 1e-6
    for _ in range(max_outer):
        res = group_fista(A, AT, phi, C, beta, L, max_iter=max_inner, tol=inner_tol, image0=img)
        C, img, its, L = res.x, res.image, its + res.iterations, res.L
        Z = img[0]
        lam = xp.maximum(lam - pen["rho"] * S * Z, 0.0)
        viol = float(xp.maximum(-S * Z, 0.0).max()) if Z.size else 0.0
        feasible = viol <= feas_tol * max(1.0, float(xp.abs(Z).max()) if Z.size else 1.0)
        r = y - model.combine(Z)
        obj = _convex_objective(r, C, beta)
        lb = _dual_bound(r, y, beta, patches.gradients(model.spread(r) + S * lam))
        if feasible and obj - lb <= tol * max(abs(obj), np.finfo(float).tiny):
            break
        if not feasible and viol > 0.25 * prev_viol:
            pen["rho"] *= 4.0
            L *= 4.0
        prev_viol = viol
        inner_tol = max(inner_tol * 0.1, 1e-14)
    return C, its


def _objective(prob, groups, C):
    """The program's objective on the groups ``groups`` (and the largest cone violation, relative), in double
    precision (:meth:`_Problem.in_double`)."""
    prob = prob.in_double()
    C = C.astype(prob.patches.dtype, copy=False)
    model = prob.restricted(groups)
    pred, viol, scale = model.predict_and_violation(C) if prob.relu else (model.predict(C), 0.0, 1.0)
    r = prob.y - pred
    obj = _convex_objective(r, C, prob.beta)
    return obj, viol / max(1.0, scale)


def _polish(prob, groups, C, active_tol: float = 1e-6, steps: int = 30):
    """Newton's method on the support and active cone faces of an approximate solution; kept if it is better.

    With the non-zero groups ``c_j`` and, for ReLU, the cone rows that are
    (nearly) zero at ``c_j`` fixed, each group moves in the null space ``N_j``
    of its active rows: ``c_j = N_j z_j``, and
    ``1/2 ||sum_j A_j N_j z_j - y||^2 + beta sum_j ||z_j||`` is smooth there,
    so a few damped Newton steps reach the restricted optimum to rounding
    (first-order methods crawl on these small, ill-conditioned problems). The
    result replaces ``C`` only if it stays in the cones and lowers the objective.
    """
    xp = prob.xp
    Ch = to_numpy(C)
    norms = np.sqrt((Ch * Ch).sum(axis=1))
    if not norms.size or norms.max() == 0:
        return C
    keep = np.nonzero(norms > 1e-9 * norms.max())[0]
    T = prob.cone_rows_base()  # (K n, h), unsigned patch rows
    K, n, h = prob.patches.K, prob.patches.n, prob.patches.h
    blocks, bases = [], []
    for j in keep:
        g = prob.gate[groups[j]]
        Dm = to_numpy(prob.gates.masks[..., g]).reshape(-1).astype(float)  # (K n,)
        Aj = prob.sign[groups[j]] * (Dm[:, None] * T).reshape(K, n, h).sum(axis=0)  # (n, h)
        N = np.eye(h)
        if prob.relu:
            G = (2.0 * Dm - 1.0)[:, None] * T
            v = G @ Ch[j]
            act = np.abs(v) <= active_tol * max(1.0, np.abs(v).max())
            if act.any():
                _, sv, Vt = np.linalg.svd(G[act], full_matrices=True)
                rank = int((sv > 1e-10 * max(1.0, sv.max())).sum())
                N = Vt[rank:].T
        if N.shape[1] == 0:
            continue
        blocks.append(Aj @ N)
        bases.append((j, N))
    if not bases:
        return C
    y = to_numpy(prob.y)
    beta = prob.beta
    sizes = [N.shape[1] for _, N in bases]
    cuts = np.cumsum([0] + sizes)
    B = np.concatenate(blocks, axis=1)
    z = np.concatenate([N.T @ Ch[j] for j, N in bases])

    def f(z):
        r = B @ z - y
        return 0.5 * r @ r + beta * sum(np.linalg.norm(z[a:b]) for a, b in zip(cuts[:-1], cuts[1:]))

    fz = f(z)
    for _ in range(steps):
        r = B @ z - y
        g = B.T @ r
        H = B.T @ B
        for a, b in zip(cuts[:-1], cuts[1:]):
            nz = np.linalg.norm(z[a:b])
            if nz == 0:
                continue
            u = z[a:b] / nz
            g[a:b] += beta * u
            H[a:b, a:b] += beta * (np.eye(b - a) - np.outer(u, u)) / nz
        try:
            dz = -np.linalg.solve(H + 1e-14 * np.trace(H) / len(z) * np.eye(len(z)), g)
        except np.linalg.LinAlgError:
            break
        step, improved = 1.0, False
        while step > 1e-8:
            cand = z + step * dz
            fc = f(cand)
            if fc <= fz:
                improved = fc < fz
                z, fz = cand, fc
                break
            step *= 0.5
        if not improved or abs(g @ dz) <= 1e-30:
            break
    Cn = Ch.copy()
    for (j, N), a, b in zip(bases, cuts[:-1], cuts[1:]):
        Cn[j] = N @ z[a:b]
    Cn = xp.asarray(Cn, dtype=C.dtype)
    old, _ = _objective(prob, groups, C)
    new, viol = _objective(prob, groups, Cn)
    return Cn if new < old and viol <= 1e-12 else C


_BARRIER_UNKNOWNS = 3000  # restricted programs up to this many unknowns go to the barrier method
_BARRIER_BYTES = 256 * 2**20  # ... and up to this much memory in their cone rows
_WOODBURY_UNKNOWNS = 40000  # or, gated with structured blocks and more unknowns than samples, up to this many
_WOODBURY_SAMPLES = 2000  # ... and samples (each Newton step factors an n x n matrix)


def _barrier_takes(prob, m: int) -> bool:
    """Whether the program restricted to ``m`` groups goes to the barrier method (by its memory and step cost)."""
    K, n, h = prob.patches.K, prob.patches.n, prob.patches.h
    if m * h <= _BARRIER_UNKNOWNS:
        return not prob.relu or 8.0 * m * K * n * h <= _BARRIER_BYTES  # the cone rows
    # Woodbury's n x n systems: the memory is n^2 + m h^2, not (m h)^2
    return prob.structured(m) and 1.5 * n < m * h <= _WOODBURY_UNKNOWNS and n <= _WOODBURY_SAMPLES


def _prune(prob, groups, C, tol):
    """``C`` with its negligible groups set to zero, if that costs at most ``tol / 10`` of the objective.

    A barrier method ends strictly inside the cones: the groups that are zero
    at the optimum are left at ``O(gap)`` instead, each one a spurious neuron.
    """
    norms = to_numpy(_group_norms(C))
    if not norms.size or norms.max() == 0:
        return C
    old, _ = _objective(prob, groups, C)
    for rel in (1e-4, 1e-6, 1e-8):
        small = norms <= rel * norms.max()
        if not small.any():
            continue
        Cp = C.copy()
        Cp[prob.xp.asarray(np.nonzero(small)[0])] = 0
        new, _ = _objective(prob, groups, Cp)
        if new <= old + 0.1 * tol * abs(old):
            return Cp
    return C


def _solve_restricted(prob, groups, C0, inner_tol, first_order):
    """The program on ``groups``: by the barrier method when small, else by ``first_order`` and a Newton polish.

    Returns ``(C, iterations)`` (Newton steps or first-order iterations); ``C`` from the barrier is in double
    precision, as it solved them.
    """
    xp = prob.xp
    if _barrier_takes(prob, len(groups)):
        blocks = prob.blocks(groups)
        data = None if blocks is not None else [prob.barrier_data(int(j)) for j in groups]
        if data is None or all(d is not None for d in data):
            if data is None:
                rows, dirs = None, np.stack([prob.direction(int(j)) for j in groups])
            else:
                blocks, dirs = np.stack([d[0] for d in data]), np.stack([d[2] for d in data])
                rows = np.stack([d[1] for d in data]) if prob.relu else None
            with blas_threads():  # dense systems of a few hundred unknowns: one BLAS thread is fastest
                res = barrier_group_program(blocks, rows, to_numpy(prob.y), prob.beta, to_numpy(C0), dirs,
                                            gap_tol=max(inner_tol, 1e-13))
            return xp.asarray(res.C, dtype=prob.in_double().patches.dtype), res.newton_steps  # as solved
    C, k = first_order(prob.restricted(groups), C0, inner_tol)
    return _polish(prob, groups, C), k


def _working_set(prob: _Problem, tol, solve, start: int = 8, grow: int = 8, max_rounds: int = 200, t0=None,
                 max_seconds=None, geometric=True):
    """Solve a two-layer program by growing a working set of groups.

    Each round solves the program restricted to the working set (``solve``,
    warm-started), then scores every group at the new residual
    (:meth:`_Problem.scores`): the largest score gives the certified lower
    bound, and the ``grow`` groups that violate optimality most join the set.
    Returns ``(C_full, objective, lower_bound, rounds, iterations, converged, history)``.
    """
    xp, beta = prob.xp, prob.beta
    cert = prob.in_double()  # the residuals, scores and bounds in double precision; the solves in the data's
    y = cert.y
    h = prob.patches.h
    t0 = time.perf_counter() if t0 is None else t0
    sc = cert.scores(y, need=beta)
    ws = [int(j) for j in np.argsort(-sc)[:start] if sc[j] > beta]
    C_ws = xp.zeros((len(ws), h), dtype=prob.patches.dtype)
    history, its, converged = [], 0, False
    obj = 0.5 * float(y @ y)
    lb = cert.lower_bound(y, sc)
    floor = max(tol * 1e-2, 1e-14)
    # early sets are provisional: solved loosely, then tighter with the gap; a start from every violating group
    # is expected to be the last set, solved to the tolerance (the barrier's certificate is then the program's)
    inner_tol = max(tol, floor) if start >= prob.n_groups else max(1e-4, floor)
    rounds, stalled, last_lb = 0, 0, lb
    for rounds in range(1, max_rounds + 1):
        if ws:
            groups = np.asarray(ws)
            solved, k = _solve_restricted(prob, groups, C_ws, inner_tol, solve)
            C_ws = solved.astype(prob.patches.dtype, copy=False)  # the groups returned, in the data's precision
            its += k
            C64 = C_ws.astype(y.dtype, copy=False)
            model = cert.restricted(groups)
            pred = model.predict(C64)
            # any residual gives a valid bound: that of the solve's own groups where they are in double precision
            # (those rounded to single precision move it by their rounding, 3e-5 relative at beta = 1e-3)
            r_dual = y - (model.predict(solved) if solved.dtype != C_ws.dtype else pred)
        else:
            C64, pred, r_dual = C_ws.astype(y.dtype, copy=False), xp.zeros_like(y), y
        r = y - pred
        obj = _convex_objective(r, C64, beta)
        sc = cert.scores(r_dual, need=beta)
        lb = max(lb, cert.lower_bound(r_dual, sc))
        history.append((time.perf_counter() - t0, obj, lb, len(ws)))
        rel = (obj - lb) / max(abs(obj), np.finfo(float).tiny)
        if rel <= tol:
            converged = True
            break
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
        inner_tol = max(min(inner_tol, 1e-2 * rel), floor)
        inside = set(ws)
        new = [int(j) for j in np.argsort(-sc) if sc[j] > beta * (1 + 1e-12) and int(j) not in inside]
        new = new[:max(grow, len(ws) // 2) if geometric else grow]  # a dense support: a few rounds, not n / grow
        if new:
            ws += new
            C_ws = xp.concatenate([C_ws, xp.zeros((len(new), h), dtype=C_ws.dtype)])
        else:
            inner_tol = max(inner_tol * 0.01, 1e-15)  # no violator outside: solve the set more exactly
            floor = min(floor, inner_tol)
            stalled = stalled + 1 if lb <= last_lb + 1e-3 * (obj - last_lb) else 0
            if stalled >= 3:  # the restricted solves are as accurate as they get: stop with the bounds
                break
        last_lb = lb
    C = xp.zeros((prob.n_groups, h), dtype=prob.patches.dtype)
    if ws:
        C_ws = _prune(prob, np.asarray(ws), C_ws, tol)
        obj, _ = _objective(prob, np.asarray(ws), C_ws)
        C[xp.asarray(np.asarray(ws))] = C_ws
    return C, obj, lb, rounds, its, converged, history


def gated_relu_cnn(patches: PatchOperator, y, beta: float, gates: Gates, tol: float = 1e-9,
                   max_iter: int = 20000, max_seconds=None) -> ConvexCNNFit:
    """Solve the gated-ReLU convex program (a group lasso) with a certified duality gap.

    Parameters
    ----------
    patches : PatchOperator
        The patches ``X_k`` of the ``n`` training images.
    y : array, shape ``(n,)``
    beta : float
        Weight decay of the network (the group-lasso weight).
    gates : Gates
        From :func:`~structops.convex.sample_gates` on the same patches.
    tol : float
        Stop at a relative duality gap ``(objective - lower_bound) / objective <= tol``.
    max_iter : int
        FISTA iterations per restricted solve (large working sets).
    max_seconds : float, optional
        Stop after the first round that ends past this time; the result
        then has ``converged=False`` and its certified ``lower_bound`` (the
        gap says how far it may be from the optimum).

    Returns
    -------
    ConvexCNNFit

    Notes
    -----
    ``min_C 1/2 ||sum_j D_j c_j - y||^2 + beta sum_j ||c_j||`` with
    ``D_j c = sum_k D_jk X_k c``. Its dual is
    ``max_v <v, y> - ||v||^2 / 2`` over ``||D_j^T v|| <= beta``: the residual
    scaled into that set bounds the optimum from below. The solution has few
    non-zero groups (at most ``n + 1`` are needed), so the program is solved on
    a working set grown from the groups whose dual constraint the residual
    violates most; one product with every gate per round gives the bound.
    Working sets of up to 3000 unknowns are solved by a barrier method
    (:func:`~structops.convex.interior.barrier_group_program`: Newton steps,
    accurate to rounding), larger ones by restarted FISTA
    (:func:`~structops.convex.group_fista`) and a Newton polish on the support.
    """
    y = _check_problem(patches, y, beta, gates)
    t0 = time.perf_counter()
    prob = _Problem(patches, y, beta, gates, relu=False)

    def solve(model, C0, inner_tol):  # first-order path of large working sets
        res = _solve_gated(model, y, beta, C0, inner_tol, max_iter)
        return res.x, res.iterations

    # every group at once where its barrier's step costs about its n x n factorisation (the Gram matrix
    # K^2 n^2 P flops): one barrier solve, instead of one per working set
    K = patches.K
    start = prob.n_groups if _barrier_takes(prob, prob.n_groups) and prob.n_groups * K * K <= patches.n else 8
    C, obj, lb, rounds, its, converged, history = _working_set(prob, tol, solve, start=start, t0=t0,
                                                               max_seconds=max_seconds)
    filters, weights, neurons = recover_network(C)
    return ConvexCNNFit(formulation="gated_relu", V=C, W=None, gates=gates, beta=float(beta), objective=obj,
                        lower_bound=lb, max_violation=0.0, filters=filters, weights=weights, neurons=neurons,
                        nonconvex_objective=obj, iterations=its, seconds=time.perf_counter() - t0,
                        converged=converged, history=history)


def relu_cnn(patches: PatchOperator, y, beta: float, gates: Gates, tol: float = 1e-8, feas_tol: float = 1e-9,
             max_outer: int = 12, max_inner: int = 2000, max_seconds=None) -> ConvexCNNFit:
    """Solve the exact convex program of a two-layer ReLU CNN (cone constraints), certified.

    Parameters
    ----------
    patches : PatchOperator
    y : array, shape ``(n,)``
    beta : float
    gates : Gates
    tol : float
        Stop at a relative gap ``(objective - lower_bound) / objective <= tol``.
    feas_tol : float
        Cone violation ``max (-(2 D - I) X_k c)_+`` accepted in the restricted
        solves, relative to ``max(1, max |X_k c|)``; the returned groups are
        then projected onto their cones, so the recovered network has exactly
        the gate patterns of its groups (to rounding).
    max_outer, max_inner : int
        Augmented-Lagrangian steps and FISTA iterations per step (large
        working sets).
    max_seconds : float, optional
        Stop after this long (``converged=False``, with the certified bound).

    Returns
    -------
    ConvexCNNFit
        With the recovered ReLU network and its own training objective.

    Notes
    -----
    Restricted to a working set of groups (as in :func:`gated_relu_cnn`), the
    program is solved by the barrier method up to 3000 unknowns (the cones'
    rows are linear constraints of the barrier; its iterates stay strictly
    inside the cones) and beyond that by an augmented Lagrangian, which
    reaches a relative gap near ``1e-5`` on hard sets and may stall there
    (bound it with ``max_seconds``): for ``min F(C)`` over
    ``G(C) = (2 D - I) X C >= 0`` each step minimises
    ``F(C) + (||(lambda - rho G(C))_+||^2 - ||lambda||^2) / (2 rho)`` by FISTA
    and sets ``lambda <- (lambda - rho G(C))_+``. The certificate: for any
    ``v``, ``<v, y> - ||v||^2 / 2`` is a lower bound when every group has
    ``min_{lambda_j >= 0} ||s_j D_j^T v + G_j^T lambda_j|| <= beta``; that
    minimum is the norm of the projection of ``s_j D_j^T v`` onto the group's
    cone (Moreau), a small non-negative least-squares problem. The residual,
    scaled into the set, gives ``lower_bound``; at the optimum it is tight.
    """
    y = _check_problem(patches, y, beta, gates)
    t0 = time.perf_counter()
    prob = _Problem(patches, y, beta, gates, relu=True)

    def solve(model, C0, inner_tol):
        return _solve_relu(model, y, beta, C0, max(inner_tol, 1e-13), feas_tol, max_outer, max_inner)

    C, obj, lb, rounds, its, converged, history = _working_set(prob, tol, solve, t0=t0,
                                                               max_seconds=max_seconds, geometric=False)
    # exact feasibility: every non-zero group onto its cone, then the objective and the bound once more
    xp = patches.xp
    for j in np.nonzero(to_numpy(_group_norms(C)) > 0)[0]:
        C[j] = xp.asarray(prob.project(C[j], j), dtype=C.dtype)
    P = gates.P
    V, W = C[:P], C[P:]
    nz = np.nonzero(to_numpy(_group_norms(C)) > 0)[0]
    cert = prob.in_double()  # the objectives in double precision, as the bound
    C64 = C.astype(cert.y.dtype, copy=False)
    if len(nz):
        pred, viol, _ = cert.restricted(nz).predict_and_violation(C64[xp.asarray(nz)])
        r = cert.y - pred
    else:
        r, viol = cert.y, 0.0
    obj = _convex_objective(r, C64, beta)
    lb = min(lb, obj)
    filters, weights, neurons = recover_network(V, W)
    net = TwoLayerCNN(filters, weights)
    # gates sharing an optimal direction split its weight (the barrier's analytic centre): one neuron per direction
    mf, mw, first = merge_parallel_neurons(filters, weights)
    if len(mw) < len(weights):
        merged = TwoLayerCNN(mf, mw)
        before = net.objective(cert.patches, cert.y, beta)
        if merged.objective(cert.patches, cert.y, beta) <= before + 1e-12 * max(abs(before), np.finfo(float).tiny):
            filters, weights, neurons, net = mf, mw, neurons[first], merged
    return ConvexCNNFit(formulation="relu", V=V, W=W, gates=gates, beta=float(beta), objective=obj,
                        lower_bound=lb, max_violation=viol, filters=filters, weights=weights, neurons=neurons,
                        nonconvex_objective=net.objective(cert.patches, cert.y, beta), iterations=its,
                        seconds=time.perf_counter() - t0, converged=converged, history=history)


def recover_network(V, W=None):
    """The ReLU neurons of a convex solution: ``(u, w) = (c / sqrt||c||, +-sqrt||c||)`` for each non-zero group.

    Parameters
    ----------
    V, W : arrays, shape ``(P, h)``
        Groups of positive and negative output sign (``W`` may be ``None``).

    Returns
    -------
    filters : array, shape ``(m, h)``
    weights : array, shape ``(m,)``
    neurons : int array, shape ``(m,)``
        Indices into the stacked ``[V; W]``.
    """
    xp = get_xp(V)
    C = V if W is None else xp.concatenate([V, W])
    sign = np.ones(C.shape[0])
    if W is not None:
        sign[V.shape[0]:] = -1.0
    norms = to_numpy(_group_norms(C))
    idx = np.nonzero(norms > 0)[0]
    root = np.sqrt(norms[idx])
    filters = C[xp.asarray(idx)] / xp.asarray(root, dtype=C.dtype)[:, None]
    return filters, xp.asarray(sign[idx] * root, dtype=C.dtype), idx


def merge_parallel_neurons(filters, weights, tol: float = 1e-6):
    """Merge ReLU neurons whose filters point the same way and whose output weights share a sign.

    ``(X u)_+ w`` is positively homogeneous, so neurons ``c_i = |w_i| u_i``
    along one direction ``d`` add up to one, ``c = sum_i c_i``: the same
    function, and weight decay ``||c|| = sum_i ||c_i||`` (it can only drop).

    Parameters
    ----------
    filters : array, shape ``(m, h)``
    weights : array, shape ``(m,)``
    tol : float
        Directions within ``tol`` (Euclidean distance of the unit vectors) are
        one direction; the caller checks the objective when ``tol > 0``
        merges directions that are not exactly equal.

    Returns
    -------
    filters, weights
        The merged neurons, in the order of their first members, balanced as
        ``(c / sqrt||c||, +-sqrt||c||)``.
    first : int array
        The index of each merged neuron's first member.
    """
    xp = get_xp(filters)
    U = np.asarray(to_numpy(filters), dtype=float)
    w = np.asarray(to_numpy(weights), dtype=float).reshape(-1)
    C = U * np.abs(w)[:, None]
    norms = np.linalg.norm(C, axis=1)
    reps, sums, first = [], [], []
    for i in np.nonzero(norms > 0)[0]:
        d = C[i] / norms[i]
        for j, (rep, sign) in enumerate(reps):
            if sign == (w[i] > 0) and np.linalg.norm(d - rep) <= tol:
                sums[j] += C[i]
                break
        else:
            reps.append((d, w[i] > 0))
            sums.append(C[i].copy())
            first.append(i)
    S = np.array(sums).reshape(-1, U.shape[1])
    root = np.sqrt(np.linalg.norm(S, axis=1))
    signs = np.array([1.0 if pos else -1.0 for _, pos in reps])
    return (xp.asarray(S / np.maximum(root, np.finfo(float).tiny)[:, None], dtype=filters.dtype),
            xp.asarray(signs * root, dtype=filters.dtype), np.array(first, dtype=int))


class TwoLayerCNN:
    """The non-convex two-layer CNN ``f(X) = sum_j sum_k (X_k u_j)_+ w_j``.

    Parameters
    ----------
    filters : array, shape ``(m, h)``
        ``u_j`` in the kernel layout ``(c, *kernel_size)``, flattened.
    weights : array, shape ``(m,)``
    """

    def __init__(self, filters, weights):
        xp = get_xp(filters)
        self.filters = xp.asarray(filters)
        self.weights = xp.asarray(weights).reshape(-1)
        if self.filters.ndim != 2 or self.filters.shape[0] != self.weights.shape[0]:
            raise ValueError(f"filters {tuple(self.filters.shape)} and weights {tuple(self.weights.shape)} "
                             "do not match: expected (m, h) and (m,)")

    def predict(self, patches: PatchOperator):
        """``f`` on the images of ``patches``: ``(n,)``."""
        if self.filters.shape[0] == 0:
            return patches.xp.zeros(patches.n, dtype=patches.dtype)
        Z = patches.responses(self.filters)
        return patches.xp.maximum(Z, 0.0).sum(axis=0) @ self.weights

    def objective(self, patches: PatchOperator, y, beta: float) -> float:
        """``1/2 ||f - y||^2 + beta/2 sum_j (||u_j||^2 + w_j^2)``."""
        r = self.predict(patches) - patches.xp.asarray(y).reshape(-1)
        return 0.5 * float(r @ r) + self._weight_decay(beta)

    def _weight_decay(self, beta: float) -> float:
        return 0.5 * beta * (float((self.filters ** 2).sum()) + float((self.weights ** 2).sum()))

    def value_and_grad(self, patches: PatchOperator, y, beta: float):
        """``(objective, d/d filters, d/d weights)`` on the images of ``patches``."""
        xp = patches.xp
        Z = patches.responses(self.filters)  # (K, n, m)
        Apos = xp.maximum(Z, 0.0)
        S = Apos.sum(axis=0)  # (n, m)
        r = S @ self.weights - xp.asarray(y).reshape(-1)
        val = 0.5 * float(r @ r) + self._weight_decay(beta)
        dw = S.T @ r + beta * self.weights
        R = (Z > 0) * (r[None, :, None] * self.weights[None, None, :])
        dU = patches.gradients(R) + beta * self.filters
        return val, dU, dw

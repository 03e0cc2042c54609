r"""Extreme singular triplets of any linear operator by Lanczos (ARPACK), every result residual-checked.

For a computed triplet ``(s, u, v)`` the residuals ``r_1 = ||A v - s u||`` and
``r_2 = ||A^H u - s v||`` bound the distance from ``s`` to a singular value of
``A`` by ``sqrt((r_1^2 + r_2^2) / 2)``; a result is accepted only when that
bound is at most ``max(tol * s, 10 sqrt(max(M, N)) eps sigma_max)``. Otherwise
:class:`~structops.SpectrumNotConvergedError` is raised (or, with
``strict=False``, a :class:`~structops.linalg.spectra.SpectrumNotConvergedWarning`
is issued and unconverged values are NaN).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg as spla

from .._backend import blas_threads, to_numpy
from .._validate import check_memory
from ..operators.conv import ConvND
from ._common import SpectrumNotConvergedError, certified, conv64, not_converged, shape_of

__all__ = ["lanczos_svd", "block_krylov_svd", "largest_svd"]


class _Products:
    """Host float64 products of an operator (casts single precision, moves device arrays)."""

    def __init__(self, op):
        if isinstance(op, ConvND):
            op = conv64(op)
        if isinstance(op, np.ndarray) or (hasattr(op, "__array__") and not hasattr(op, "matvec")):
            A = np.asarray(to_numpy(op))
            op = spla.aslinearoperator(A.astype(np.complex128 if np.iscomplexobj(A) else np.float64))
        self.op = op
        self.M, self.N = shape_of(op)
        self.complex = np.dtype(getattr(op, "dtype", np.float64)).kind == "c"
        self.dtype = np.dtype(np.complex128 if self.complex else np.float64)
        self.xp = getattr(op, "xp", np)
        self.opdtype = np.dtype(getattr(op, "dtype", np.float64))

    def _in(self, x):
        return self.xp.asarray(x.astype(self.opdtype, copy=False))

    def _out(self, y):
        return np.asarray(to_numpy(y)).astype(self.dtype, copy=False)

    def matvec(self, x):
        return self._out(self.op.matvec(self._in(x))).reshape(-1)

    def rmatvec(self, y):
        return self._out(self.op.rmatvec(self._in(y))).reshape(-1)

    def matmat(self, X):
        return self._out(self.op.matmat(self._in(X))).reshape(self.M, -1)

    def rmatmat(self, Y):
        return self._out(self.op.rmatmat(self._in(Y))).reshape(self.N, -1)


def _triplets(P, X, side):
    """Singular triplets from orthonormal Ritz vectors ``X`` of the normal operator on ``side``.

    Returns ``(s, U, V, bound)`` sorted by descending ``s``, with the other
    side by one product and ``bound = sqrt((r_1^2 + r_2^2) / 2)`` the distance
    from each ``s`` to some singular value.
    """
    if side == "in":
        V = X
        AV = P.matmat(V)
        s = np.linalg.norm(AV, axis=0)
        U = AV / np.where(s > 0, s, 1)
        R1 = np.zeros(V.shape[1])
        R2 = np.linalg.norm(P.rmatmat(U) - V * s, axis=0)
    else:
        U = X
        AhU = P.rmatmat(U)
        s = np.linalg.norm(AhU, axis=0)
        V = AhU / np.where(s > 0, s, 1)
        R2 = np.zeros(U.shape[1])
        R1 = np.linalg.norm(P.matmat(V) - U * s, axis=0)
    bound = np.sqrt((R1**2 + R2**2) / 2)
    order = np.argsort(-s, kind="stable")
    return s[order], U[:, order], V[:, order], bound[order]


def lanczos_svd(op, k, which, opts, vectors, v0=None, v0_side=None, sigma_max=None):
    """k extreme singular triplets by ARPACK on the smaller normal operator, residual-checked.

    Returns ``(s, U, V)`` with ``s`` descending (``U``, ``V`` None unless ``vectors``).
    """
    P = _Products(op)
    M, N = P.M, P.N
    side = "in" if N <= M else "out"  # the normal operator without a forced null space
    n = min(M, N)
    # ARPACK's basis (ncv vectors) and a few work vectors of both lengths, plus the operator's own buffers
    ncv = min(n, max(2 * k + 1, 20))
    check_memory(8.0 * (ncv + 4) * (min(M, N) + 2 * max(M, N)) * (2 if P.complex else 1),
                 f"Lanczos on this {M} x {N} operator")
    if k >= n:
        raise ValueError(
            f"Lanczos needs k < min(M, N) = {n}; got k = {k}: use the dense fallback (dense=True) for this operator"
        )
    if side == "in":
        mv = lambda x: P.rmatvec(P.matvec(x))  # noqa: E731
    else:
        mv = lambda x: P.matvec(P.rmatvec(x))  # noqa: E731
    G = spla.LinearOperator((n, n), matvec=mv, rmatvec=mv, dtype=P.dtype)
    if v0 is not None and v0_side != side:
        v0 = None
    if v0 is not None:
        v0 = np.asarray(v0, dtype=P.dtype).reshape(-1)
    ncv = min(n, max(2 * k + 1, 20))
    maxiter = opts.maxiter
    if maxiter is None and which == "smallest":
        maxiter = 300  # restarts; smallest singular values of ill-conditioned operators may never converge
    arpack_which = "LA" if which == "largest" else "SA"
    converged = True
    arpack_error = None
    with blas_threads():
        try:
            lam, X = spla.eigsh(G, k=k, which=arpack_which, tol=opts.tol / 4, maxiter=maxiter, v0=v0, ncv=ncv)
        except spla.ArpackNoConvergence as e:
            converged = False
            lam, X = e.eigenvalues, e.eigenvectors
        except spla.ArpackError as e:  # e.g. no shifts could be applied: nothing usable
            converged = False
            lam, X = np.zeros(0), np.zeros((n, 0), dtype=P.dtype)
            arpack_error = str(e)
        if not converged:
            vals = np.full(k, np.nan)
            got = np.sort(np.sqrt(np.maximum(np.asarray(lam, dtype=float), 0)))[::-1]
            if which == "largest":
                vals[: len(got)] = got
            else:
                vals[k - len(got) :] = got
            not_converged(
                f"Lanczos (ARPACK) found {len(got)} of the {k} {which} singular values of a {M} x {N} "
                f"{type(op).__name__} within maxiter={maxiter}; raise maxiter or tol"
                + (f" ({arpack_error})" if arpack_error else ""),
                opts,
                values=vals,
            )
            if not vectors:
                return vals, None, None
            if len(got) == 0:
                return vals, np.full((M, k), np.nan, P.dtype), np.full((N, k), np.nan, P.dtype)
        s, U, V, bound = _triplets(P, X, side)
    if which == "largest":
        ref = float(s[0])
    else:
        ref = sigma_max if sigma_max is not None else float(lanczos_svd(op, 1, "largest", opts, False)[0][0])
    if converged:
        worst = float(bound.max()) / max(ref, np.finfo(float).tiny)
        if certified(s, bound, ref, opts.tol, max(M, N)):
            opts.note("Lanczos (ARPACK), residual-checked", float(bound.max()))
        else:
            not_converged(
                f"the {which} singular values of a {M} x {N} {type(op).__name__} by Lanczos have residual "
                f"bounds up to {worst:.1e} x sigma_max, above tol={opts.tol:.1e} times the values; raise maxiter "
                "or tol",
                opts,
                values=s,
                residual=worst,
            )
    if len(s) < k:  # strict=False after a failure: unconverged entries are NaN
        pad = k - len(s)
        s = np.concatenate([s, np.full(pad, np.nan)])
        U = np.concatenate([U, np.full((M, pad), np.nan, U.dtype)], axis=1)
        V = np.concatenate([V, np.full((N, pad), np.nan, V.dtype)], axis=1)
    if vectors:
        return s, U, V
    return s, None, None


def _orthonormal_block(W, basis, rng, complex_):
    """``W`` orthogonalised twice against ``basis`` and orthonormalised; directions lost to rounding refilled at random.

    A column that orthogonalisation shrinks by more than ``1e-8`` lies in
    ``span(basis)`` to working precision (an invariant subspace was found);
    it is replaced by a random direction orthogonal to everything so far.
    """
    norms0 = np.linalg.norm(W, axis=0)
    for _ in range(2):
        if basis.shape[1]:
            W = W - basis @ (basis.conj().T @ W)
    small = np.linalg.norm(W, axis=0) <= 1e-8 * np.maximum(norms0, np.finfo(float).tiny)
    if small.any():
        Z = rng.standard_normal((W.shape[0], int(small.sum())))
        if complex_:
            Z = Z + 1j * rng.standard_normal(Z.shape)
        W = W.copy()
        W[:, small] = Z
        for _ in range(2):
            if basis.shape[1]:
                W = W - basis @ (basis.conj().T @ W)
    Q, _ = np.linalg.qr(W)
    if basis.shape[1]:  # once more: QR of nearly dependent columns loses orthogonality to the basis
        Q = Q - basis @ (basis.conj().T @ Q)
        Q, _ = np.linalg.qr(Q)
    return Q


def block_krylov_svd(op, k, opts, vectors, v0=None, v0_side=None, *, block=None, depth=10, seed=0):
    """The ``k`` largest singular triplets by restarted block Lanczos on the smaller normal operator.

    Parameters
    ----------
    op : linear operator or array, shape ``(M, N)``
    k : int
        ``1 <= k < min(M, N)``.
    opts : _Opts
        ``tol`` (the residual bound relative to ``sigma_max``), ``maxiter``
        (restarts, default 100) and ``strict``.
    vectors : bool
    v0 : ndarray, optional
        A start vector on ``v0_side`` (``"in"`` or ``"out"``), the first
        column of the start block; the others are Gaussian.
    block : int, optional
        Block size; default ``max(k + 8, 2 k)``: larger than any multiplicity
        up to ``block - k + 1`` among the wanted values.
    depth : int
        Blocks per restart cycle.
    seed : int
        Of the random start block (reproducible results).

    Returns
    -------
    (s, U, V)
        ``s`` descending; ``U``, ``V`` None unless ``vectors``.

    Notes
    -----
    A single start vector spans one direction of each eigenspace, so a Krylov
    method started from it cannot see repeated singular values, and it never
    leaves an invariant subspace its start lies in. A random block of ``b``
    vectors has, with probability one, a component in every eigenspace of
    dimension up to ``b``; each cycle builds ``[Q, G Q, ..., G^{depth-1} Q]``
    (full reorthogonalisation, invariant subspaces refilled with random
    directions), takes Rayleigh-Ritz values, and restarts from the top ``b``
    Ritz vectors until the top ``k`` pass the residual check of
    :func:`lanczos_svd`.
    """
    P = _Products(op)
    M, N = P.M, P.N
    side = "in" if N <= M else "out"
    n = min(M, N)
    if not 1 <= k < n:
        raise ValueError(f"block Lanczos needs 1 <= k < min(M, N) = {n}; got k = {k}")
    b = int(min(n, max(k + 8, 2 * k) if block is None else block))
    m_max = int(min(n, max(b * depth, k + 3 * b)))
    check_memory(16.0 * n * (m_max + b) * (2 if P.complex else 1) + 8.0 * (M + N) * b,
                 f"block Lanczos on this {M} x {N} operator")
    if side == "in":
        G = lambda X: P.rmatmat(P.matmat(X))  # noqa: E731
    else:
        G = lambda X: P.matmat(P.rmatmat(X))  # noqa: E731
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, b))
    if P.complex:
        X = X + 1j * rng.standard_normal((n, b))
    if v0 is not None and v0_side == side:
        X[:, 0] = np.asarray(v0, dtype=P.dtype).reshape(-1)
    empty = np.zeros((n, 0), dtype=P.dtype)
    X = _orthonormal_block(X.astype(P.dtype, copy=False), empty, rng, P.complex)
    restarts = 100 if opts.maxiter is None else opts.maxiter
    keep = int(min(n, k + b))  # Ritz vectors kept at a restart (thick restart)
    converged = False
    with blas_threads():
        V, GV = X, G(X)
        GX, nxt = None, None
        for cycle in range(restarts + 1):
            if nxt is not None:  # thick restart: the Ritz vectors and the next Krylov block
                V, GV = np.concatenate([X, nxt], axis=1), np.concatenate([GX, G(nxt)], axis=1)
            while V.shape[1] < m_max:
                Q = _orthonormal_block(GV[:, -b:], V, rng, P.complex)[:, : m_max - V.shape[1]]
                V, GV = np.concatenate([V, Q], axis=1), np.concatenate([GV, G(Q)], axis=1)
            H = V.conj().T @ GV
            theta, Z = np.linalg.eigh((H + H.conj().T) / 2)
            Z = Z[:, ::-1][:, :keep]
            theta = theta[::-1][:keep]
            X, GX = V @ Z, GV @ Z
            sv = np.sqrt(np.maximum(theta[:k], 0.0))
            r = np.linalg.norm(GX[:, :k] - X[:, :k] * theta[:k], axis=0) / np.maximum(sv, np.finfo(float).tiny)
            if m_max == n or certified(sv, 4.0 * r, float(sv[0]), opts.tol, max(M, N)):
                converged = True
                break
            # the block that continues the Krylov space: every residual G x - theta x lies in its span
            nxt = _orthonormal_block(GV[:, -b:], V, rng, P.complex)
        s, U, Vv, bound = _triplets(P, X[:, :k], side)
    worst = float(bound.max()) / max(float(s[0]), np.finfo(float).tiny)
    if converged and certified(s, bound, float(s[0]), opts.tol, max(M, N)):
        opts.note("block Lanczos, residual-checked", float(bound.max()))
    else:
        not_converged(
            f"the {k} largest singular values of a {M} x {N} {type(op).__name__} by block Lanczos have "
            f"residual bounds up to {worst:.1e} x sigma_max after {cycle} restarts, above tol={opts.tol:.1e} "
            "times the values; "
            "raise maxiter or tol",
            opts,
            values=s,
            residual=worst,
        )
    return (s, U, Vv) if vectors else (s, None, None)


def largest_svd(op, k, opts, vectors, v0=None, v0_side=None, *, extra=None, seed=0):
    """The ``k`` largest singular triplets: Lanczos for ``k + extra`` of them, block Lanczos if it fails.

    Asking ARPACK for ``extra`` more values than wanted (default 8 for
    ``k >= 2``, none for ``k = 1``, where a repeated top value is still the
    norm), from a start vector with a component in every direction (a random
    vector, plus ``v0`` if given), lets it resolve values repeated up to
    ``extra + 1`` times among the wanted ones; when its residual check fails,
    :func:`block_krylov_svd` (slower, robust to multiplicities up to its
    block size) takes over.
    """
    extra = (0 if k == 1 else 8) if extra is None else int(extra)
    M, N = shape_of(op)
    n = min(M, N)
    side = "in" if N <= M else "out"
    kk = int(min(k + extra, n - 1))
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(n)
    if v0 is not None and v0_side == side:
        v = np.asarray(v0).reshape(-1).real
        start = v / max(np.linalg.norm(v), np.finfo(float).tiny) + 0.5 * start / np.linalg.norm(start)
    strict = opts.replace(strict=True, log=[])  # a failure here is not the caller's: its notes are dropped
    try:
        s, U, V = lanczos_svd(op, kk, "largest", strict, vectors, v0=start, v0_side=side)
    except SpectrumNotConvergedError:
        return block_krylov_svd(op, k, opts, vectors, v0=v0, v0_side=v0_side, seed=seed)
    for method, bound in strict.log:
        opts.note(method, bound)
    return s[:k], (U[:, :k] if vectors else None), (V[:, :k] if vectors else None)


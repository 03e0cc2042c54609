r"""Extreme singular triplets of any linear operator by Lanczos (ARPACK), every result residual-checked.

For a computed triplet ``(s, u, v)`` the residuals ``r_1 = ||A v - s u||`` and
``r_2 = ||A^H u - s v||`` bound the distance from ``s`` to a singular value of
``A`` by ``sqrt((r_1^2 + r_2^2) / 2)``; a result is accepted only when that
bound is at most ``max(tol * s, 10 sqrt(max(M, N)) eps sigma_max)``, ``eps`` the unit roundoff of
the operator's products (single precision's for a float32 operator). Otherwise
:class:`~structops.SpectrumNotConvergedError` is raised (or, with
``strict=False``, a :class:`~structops.linalg.spectra.SpectrumNotConvergedWarning`
is issued and unconverged values are NaN).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg as spla

from .._backend import blas_threads, to_numpy
from .._validate import check_memory
from ._common import (EPS64, SpectrumNotConvergedError, certified, conv64, has_kernel, not_converged, product_eps,
                      rounding_floor, shape_of)

__all__ = ["lanczos_svd", "block_krylov_svd", "largest_svd"]


class _Products:
    """Host float64 products of an operator (casts single precision, moves device arrays).

    ``eps`` is the unit roundoff of the operator's own products: single
    precision's for a float32 operator, whose products no method can resolve
    beyond it.
    """

    def __init__(self, op):
        if has_kernel(op):
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
        self.eps = product_eps(self.opdtype)

    def charged(self, bound, sigma_max) -> float:
        """``bound`` as reported: plus the rounding floor of the products (:func:`rounding_floor` at ``eps``).

        A residual is computed with the operator's own products, whose
        rounding (the input's cast included) it does not see. Near
        convergence that rounding is as large as the residual: in single
        precision a bound left without it was exceeded (an error of
        ``9.1e-8 sigma_max`` against a bound of ``8.2e-8``); the dense SVD is
        charged the same floor.
        """
        return float(bound) + rounding_floor(sigma_max, max(self.M, self.N), self.eps)

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


def _gaussian(n, dtype, seed):
    """A standard normal vector of length ``n`` drawn from ``seed``, complex for a complex ``dtype``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    if dtype.kind == "c":
        x = x + 1j * rng.standard_normal(n)
    return x.astype(dtype, copy=False)


def _arpack(G, k, which, tol, maxiter, v0, ncv, seed=0, eps=EPS64):
    """``eigsh`` of ``G``: ``(lam, X, converged, error)``; partial results where ARPACK did not converge.

    Without ``v0`` the start is a random vector drawn from ``seed``: ARPACK's
    own comes from LAPACK's process-wide seed, so its results would depend on
    what ran before. Runs that must see directions an earlier run did not
    (the copies check) take their own ``seed``. ``eps``: the unit roundoff of
    ``G``'s products, for the check of ARPACK's convergence.
    """
    drawn = v0 is None
    if drawn:
        v0 = _gaussian(G.shape[0], np.dtype(G.dtype), seed)
    try:
        lam, X = spla.eigsh(G, k=k, which="LA" if which == "largest" else "SA", tol=tol, maxiter=maxiter,
                            v0=v0, ncv=ncv)
    except spla.ArpackNoConvergence as e:  # (a complex operator's partial eigenvalues come back complex)
        return np.real(e.eigenvalues), e.eigenvectors, False, None
    except spla.ArpackError as e:  # e.g. no shifts could be applied: nothing usable
        if not drawn or np.any(G.matvec(v0)):
            return np.zeros(0), np.zeros((G.shape[0], 0), dtype=G.dtype), False, str(e)
        # G v0 = 0 ("starting vector is zero"): a random start lies in a proper null space with probability 0, so
        # G = 0 (the zero operator, or a copies check on its complement); any orthonormal vectors are eigenvectors
        extra = [_gaussian(G.shape[0], np.dtype(G.dtype), seed + 1 + j) for j in range(k - 1)]
        X, _ = np.linalg.qr(np.stack([v0, *extra], axis=1))
        lam = np.zeros(k)
    # ARPACK's convergence test is on Ritz estimates, which a start close to an eigenvector can make far too
    # small (a residual of 5e-8 reported below 5e-15): the true residuals are checked (above: G X = 0 exactly)
    residual = np.linalg.norm(G.matmat(X) - X * lam, axis=0)
    size = float(np.abs(lam).max()) if len(lam) else 0.0
    slack = 10.0 * (tol * np.abs(lam) + np.sqrt(G.shape[0]) * eps * size)
    return lam, X, bool(np.all(residual <= slack)), None


def _nudged(x, seed):
    """``x / ||x||`` plus a random vector of norm 0.1 drawn from ``seed``: a start near ``x`` for ARPACK.

    Started at a near-eigenvector itself, ARPACK's Krylov space is nearly
    invariant from the first step and its runs stall or misreport convergence.
    """
    noise = _gaussian(x.shape[0], x.dtype, seed)
    start = x / max(np.linalg.norm(x), np.finfo(float).tiny) + 0.1 * noise / np.linalg.norm(noise)
    return start.astype(x.dtype, copy=False)


def _tight(G, k, which, tol, maxiter, v0, ncv, eps=EPS64):
    """:func:`_arpack` at ``tol``, at least ``8 eps``; where ARPACK cannot get there (near rounding), at ``64 eps``."""
    result = _arpack(G, k, which, max(tol, 8 * eps), maxiter, v0, ncv, eps=eps)
    if not result[2] and tol < 64 * eps:
        result = _arpack(G, k, which, 64 * eps, maxiter, v0, ncv, eps=eps)
    return result


def _wanted(P, X, side, k, which):
    """The ``k`` wanted triplets ``(s, U, V, bound, residual)`` of the Ritz vectors ``X``, descending.

    ``residual`` is the triplet residual of :func:`_triplets`, the bound the
    vectors meet; ``bound`` bounds the values. For the smallest values it is
    also at most ``max(s_j, t_j)``, with
    ``t_1 >= ... >= t_k`` the singular values of ``A V`` (``A^H U`` on the
    ``out`` side): by Courant-Fischer the ``j``-th of the ``k`` smallest
    singular values lies in ``[0, t_j]`` for any orthonormal ``V``. Near zero
    this is the sharp bound, where ``r / s`` from the residuals is not.
    """
    s, U, V, residual = _triplets(P, X, side)
    if which == "largest":
        return s[:k], U[:, :k], V[:, :k], residual[:k], residual[:k]
    s, U, V, residual = s[-k:], U[:, -k:], V[:, -k:], residual[-k:]
    bound = residual
    if len(s):
        B = P.matmat(V) if side == "in" else P.rmatmat(U)
        t = np.linalg.svd(B, compute_uv=False)
        bound = np.minimum(residual, np.maximum(s, t))
    return s, U, V, bound, residual


def _normal(P, side, shift=0.0):
    """The smaller normal operator, ``A^H A`` (``in``) or ``A A^H`` (``out``), plus ``shift I``."""
    n = P.N if side == "in" else P.M
    # single vectors through the operator's vector products (ARPACK's hot path), blocks through its batched ones
    if side == "in":
        vec, mat = (lambda x: P.rmatvec(P.matvec(x))), (lambda X: P.rmatmat(P.matmat(X)))  # noqa: E731
    else:
        vec, mat = (lambda x: P.matvec(P.rmatvec(x))), (lambda X: P.matmat(P.rmatmat(X)))  # noqa: E731
    if shift:
        mv, mm = (lambda x: vec(x) + shift * x.reshape(-1)), (lambda X: mat(X) + shift * X)  # noqa: E731
    else:
        mv, mm = vec, mat
    return spla.LinearOperator((n, n), matvec=mv, rmatvec=mv, matmat=mm, rmatmat=mm, dtype=P.dtype)


def _ritz(P, side, W):
    """Orthonormal Ritz vectors of the span of ``W`` on ``side``: the right singular vectors of ``A B`` (``A^H B``).

    ``B`` an orthonormal basis of ``W``. The singular values of ``A B`` resolve
    a small value to ``eps sigma_max``, where the eigenvalues of ``B^H G B``,
    ``G`` shifted by ``sigma_max^2``, would not tell values below
    ``sqrt(eps) sigma_max`` apart: a slightly inaccurate direction in the span
    would then mix into every Ritz vector of a null space.
    """
    B, _ = np.linalg.qr(W)
    _, _, Zh = np.linalg.svd(P.matmat(B) if side == "in" else P.rmatmat(B), full_matrices=False)
    return B @ Zh.conj().T


def _deflated(G, Q, far):
    """``G`` on the complement of the orthonormal columns ``Q``, which it moves to ``far`` (0: to zero)."""

    def product(x):
        inside = Q @ (Q.conj().T @ x)
        y = G.matvec(x - inside)
        y = y - Q @ (Q.conj().T @ y)
        return y + far * inside if far else y

    return spla.LinearOperator(G.shape, matvec=product, rmatvec=product, dtype=G.dtype)


def _complete(P, side, G, X, k, which, shift, opts, maxiter, wanted=None):
    """Ritz vectors ``X`` of ``G`` whose ``k`` wanted values miss no copy of a repeated value.

    A Krylov method from one start vector sees one direction of each
    eigenspace, so a value repeated more often than rounding happens to
    reveal is returned fewer times than it occurs, and the residual check
    cannot tell (each returned value is a singular value). With ``Q`` the
    wanted Ritz vectors, one more Lanczos run on ``G`` restricted to the
    complement of ``Q`` (``Q`` moved to the far end of the spectrum) finds the
    next value; a value beyond the wanted ones there is a missed copy: it
    joins the basis, a Rayleigh-Ritz step on ``[X, y]`` follows, and the
    check repeats (at most ``k + 2`` times). ``wanted`` is :func:`_wanted` of
    ``X`` where the caller has it. Returns ``(X, wanted, checked)``, ``wanted``
    that of the returned ``X`` (or None) and ``checked`` False where a check
    run did not converge.
    """
    n = G.shape[0]
    eps = P.eps
    for round_ in range(k + 2):
        wanted = _wanted(P, X, side, k, which) if wanted is None else wanted
        s, U, V, bound, _ = wanted
        Q = V if side == "in" else U
        far = 3.0 * shift if which == "smallest" else 0.0

        D = _deflated(G, Q, far)
        edge = float(s.max() if which == "smallest" else s.min())
        tol = opts.tol / 4
        if which == "smallest" and shift:
            tol = tol * edge * edge / (edge * edge + shift)
        # a start of its own: in each eigenspace, the first run's start (seed 0) points where that run already saw
        lam, Y, converged, _ = _arpack(D, 1, which, max(tol, 8 * eps), maxiter, None, min(n, 20), 1 + round_, eps)
        if not converged:
            return X, wanted, False
        nxt = float(np.sqrt(max(float(lam[0]) - shift, 0.0)))
        top = np.sqrt(shift) if shift else max(float(s.max()), nxt)  # sigma_max
        margin = float(bound.max()) + rounding_floor(top, max(P.M, P.N), eps)
        if (nxt >= edge - margin) if which == "smallest" else (nxt <= edge + margin):
            return X, wanted, True
        if which == "smallest" and shift:  # a missed copy: first as accurate as its own value needs
            tol_y = opts.tol / 4 * nxt * nxt / (nxt * nxt + shift)
            if tol_y < tol:
                start = _nudged(Y[:, 0], 1 + round_)
                _, Y2, refined, _ = _tight(D, 1, which, tol_y, maxiter, start, min(n, 20), eps)
                Y = Y2 if refined else Y
        X, wanted = _ritz(P, side, np.concatenate([X, Y], axis=1)), None  # then Rayleigh-Ritz on [X, y]
    return X, None, False


def _partners(P, side, s, U, V, residual, sigma_max, opts, maxiter):
    """The other side's vectors where one product does not determine them: ``(U, V, residual)``.

    On the ``in`` side a left vector is ``u = A v / s``. At a value at rounding
    level that is rounding noise, and where ``A v = 0`` exactly, a zero vector;
    ``u`` must instead be a unit vector in (near) the null space of ``A^H``,
    orthogonal to the determined left vectors. Those are the smallest
    eigenvectors of ``A A^H + sigma_max^2 I`` on the complement of the
    determined vectors, by ARPACK, resolved by :func:`_ritz`; a two-sided
    Rayleigh-Ritz step, the SVD ``W^H A V_b = Y S Z^H``, pairs them with the
    right vectors ``V_b`` (``U_b = W Y``, ``V_b Z``). The ``out`` side likewise
    with the sides swapped. The triplets' residuals are then worked out again
    for every column, so a pairing that failed shows in them; where no vectors
    were found the inputs come back, a zero vector with residual ``sigma_max``.
    """
    M, N = P.M, P.N
    floor = rounding_floor(sigma_max, max(M, N), P.eps)
    lost = (s == 0) | (residual > np.maximum(opts.tol * np.abs(s), floor))
    residual = np.where(s == 0, np.maximum(residual, sigma_max), residual)  # the zero vector is no unit vector
    c = int(lost.sum())
    other = "out" if side == "in" else "in"
    mine, theirs = (V, U) if side == "in" else (U, V)
    known = theirs[:, ~lost]
    n = M if other == "out" else N
    if c and sigma_max == 0:  # the zero operator (every s lost): any orthonormal vectors are singular vectors
        theirs = np.eye(n, c, dtype=theirs.dtype)
        return (theirs, mine, np.zeros_like(residual)) if side == "in" else (mine, theirs, np.zeros_like(residual))
    if c == 0 or c + known.shape[1] >= n - 1:
        return U, V, residual
    shift = sigma_max * sigma_max
    G = _deflated(_normal(P, other, shift), known, 3.0 * shift)
    kk = min(c + 8, n - known.shape[1] - 1)  # more Ritz vectors than wanted: the span resolves small values better
    _, W, found, _ = _tight(G, kk, "smallest", 0.0, maxiter, None, min(n, max(2 * kk + 1, 20)), P.eps)
    if not found or W.shape[1] < c:
        return U, V, residual
    W = _ritz(P, other, W - known @ (known.conj().T @ W))
    if c >= 2:  # a Krylov run sees one direction of the null space: the copies check finds the others
        W, wanted, found = _complete(P, other, G, W, c, "smallest", shift, opts, maxiter)
        if not found:
            return U, V, residual
        W = wanted[2] if other == "in" else wanted[1]
    else:
        W = W[:, -1:]  # descending: the smallest last
    lost_mine = mine[:, lost]
    image = P.matmat(lost_mine) if side == "in" else P.rmatmat(lost_mine)
    Y, _, Zh = np.linalg.svd(W.conj().T @ image)
    mine, theirs = mine.copy(), theirs.copy()
    mine[:, lost], theirs[:, lost] = lost_mine @ Zh.conj().T, W @ Y
    U, V = (theirs, mine) if side == "in" else (mine, theirs)
    R1 = np.linalg.norm(P.matmat(V) - U * s, axis=0)
    R2 = np.linalg.norm(P.rmatmat(U) - V * s, axis=0)
    return U, V, np.sqrt((R1**2 + R2**2) / 2)


def _checked_vectors(P, side, op, which, s, U, V, residual, sigma_max, opts, maxiter, method):
    """Vectors of certified values, with :func:`_partners` where needed: ``(U, V, refused)``.

    The values' bound near zero is Courant-Fischer's, which says nothing of
    the other side's vectors: they are held to their own triplet residual,
    and refused (:func:`not_converged`) where they fail it.
    """
    M, N = P.M, P.N
    with blas_threads():
        U, V, residual = _partners(P, side, s, U, V, residual, sigma_max, opts, maxiter)
    if certified(s, residual, sigma_max, opts.tol, max(M, N), P.eps):
        return U, V, False
    pair = float(residual.max()) / max(sigma_max, np.finfo(float).tiny)
    other = "left" if side == "in" else "right"
    not_converged(
        f"the {len(s)} {which} singular values of a {M} x {N} {type(op).__name__} by {method} are certified, but not "
        f"their {other} vectors (a triplet residual up to {pair:.1e} x sigma_max): near zero, the product of a "
        f"{'right' if side == 'in' else 'left'} vector does not determine the {other} one, and no vectors on its "
        "side were found that do; dense=True gives them for operators that fit in memory",
        opts,
        values=s,
        residual=pair,
    )
    return U, V, True


def lanczos_svd(op, k, which, opts, vectors, v0=None, v0_side=None, sigma_max=None):
    """k extreme singular triplets by ARPACK on the smaller normal operator, residual-checked.

    Returns ``(s, U, V)`` with ``s`` descending (``U``, ``V`` None unless ``vectors``).

    Notes
    -----
    ARPACK forces its start vector into the range of its operator (``dgetv0``
    applies it once), so on a singular normal matrix ``G`` it never sees the
    null space: asked for the smallest eigenvalues of ``G`` it returns the
    smallest nonzero ones, with residuals that pass the check (a rank-deficient
    layer's ``sigma_min = 0`` came back as the least positive value). The
    smallest values are therefore the smallest eigenvalues of
    ``G + sigma_max^2 I`` (the same eigenvectors, no null space), for
    ``k >= 2`` with 8 more values than wanted, as :func:`largest_svd` asks,
    so that repeated values are resolved. ARPACK's stopping test is relative to
    the shifted eigenvalues; where the first run's values miss the requested
    accuracy, a second run, started from its Ritz vectors, asks for the
    accuracy they need. For ``k >= 2`` (either end) :func:`_complete` then
    looks for copies of repeated values that the run missed.
    """
    P = _Products(op)
    M, N = P.M, P.N
    side = "in" if N <= M else "out"  # the normal operator without a forced null space
    n = min(M, N)
    if k >= n:
        raise ValueError(
            f"Lanczos needs k < min(M, N) = {n}; got k = {k}: use the dense fallback (dense=True) for this operator"
        )
    kk = k if which == "largest" or k == 1 else min(k + 8, n - 1)
    # ARPACK's basis (ncv vectors) and a few work vectors of both lengths, plus the operator's own buffers
    ncv = min(n, max(2 * kk + 1, 20))
    check_memory(8.0 * (ncv + 4) * (min(M, N) + 2 * max(M, N)) * (2 if P.complex else 1),
                 f"Lanczos on this {M} x {N} operator")
    shift = 0.0
    if which == "largest":
        ref = None
    else:
        ref = sigma_max if sigma_max is not None else float(largest_svd(op, 1, opts, False)[0][0])
        if ref == 0:  # sigma_max = 0 (certified): the zero operator, every singular value is 0
            opts.note("zero operator (sigma_max = 0)", 0.0)
            s = np.zeros(k)
            if not vectors:
                return s, None, None
            return s, np.eye(M, k, dtype=P.dtype), np.eye(N, k, dtype=P.dtype)
        if np.isfinite(ref):
            shift = ref * ref
    G = _normal(P, side, shift)
    if v0 is not None and v0_side != side:
        v0 = None
    if v0 is not None:
        v0 = np.asarray(v0, dtype=P.dtype).reshape(-1)
    maxiter = opts.maxiter
    if maxiter is None and which == "smallest":
        maxiter = 300  # restarts; smallest singular values of ill-conditioned operators may never converge
    with blas_threads():
        # (ARPACK cannot resolve single-precision products beyond a few of their eps)
        lam, X, converged, arpack_error = _arpack(G, kk, which, max(opts.tol / 4, 8 * P.eps), maxiter, v0, ncv,
                                                  eps=P.eps)
        wanted = None  # _wanted of X, once worked out
        if converged and shift:
            X = _ritz(P, side, X)  # ARPACK's Ritz vectors of G + sigma_max^2 I mix values below sqrt(eps) sigma_max
            wanted = _wanted(P, X, side, k, which)
            s, U, V, bound, _ = wanted
            if not certified(s, bound, ref, opts.tol, max(M, N), P.eps):
                # ARPACK stopped at tol / 4 of the shifted values, s^2 + sigma_max^2: ask for tol / 4 of s^2
                least = float(s.min())
                tol2 = opts.tol / 4 * least * least / (least * least + shift)
                start = _nudged(X.sum(axis=1), 0)
                # (near a null space the accuracy asked for is below rounding: ARPACK's own floor, a few eps)
                lam2, X2, converged2, _ = _tight(G, kk, which, tol2, maxiter, start, ncv, P.eps)
                if converged2:  # else the first run's vectors stay, and the certificate says what they are worth
                    lam, X, wanted = lam2, _ritz(P, side, X2), None
        if not converged:
            vals = np.full(k, np.nan)
            got = np.sort(np.sqrt(np.maximum(np.asarray(lam, dtype=float) - shift, 0)))[::-1]
            got = got[:k] if which == "largest" else got[-k:]
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
        checked = True
        if converged and k >= 2 and (which == "largest" or shift):
            X, wanted, checked = _complete(P, side, G, X, k, which, shift, opts, maxiter, wanted)
        s, U, V, bound, residual = _wanted(P, X, side, min(k, X.shape[1]), which) if wanted is None else wanted
    if which == "largest":
        ref = float(s[0])
    if converged:
        worst = float(bound.max()) / max(ref, np.finfo(float).tiny)
        if not checked:
            not_converged(
                f"the {k} {which} singular values of a {M} x {N} {type(op).__name__} by Lanczos pass the residual "
                f"check, but the run that looks for copies of repeated values they may miss did not converge "
                f"within maxiter={maxiter}; raise maxiter or tol",
                opts,
                values=s,
                residual=worst,
            )
        elif not certified(s, bound, ref, opts.tol, max(M, N), P.eps):
            not_converged(
                f"the {which} singular values of a {M} x {N} {type(op).__name__} by Lanczos have residual "
                f"bounds up to {worst:.1e} x sigma_max, above tol={opts.tol:.1e} times the values; raise maxiter "
                "or tol",
                opts,
                values=s,
                residual=worst,
            )
        else:
            if vectors:
                U, V, refused = _checked_vectors(P, side, op, which, s, U, V, residual, ref, opts, maxiter, "Lanczos")
            if not (vectors and refused):
                opts.note("Lanczos (ARPACK), residual-checked", P.charged(bound.max(), ref))
    if len(s) < k:  # strict=False after a failure: unconverged entries are NaN
        pad = k - len(s)
        first = which == "smallest"  # the missing values are the larger ones: NaN first, as the values above

        def padded(a, rows):
            nan = np.full((rows, pad), np.nan, a.dtype) if rows else np.full(pad, np.nan)
            return np.concatenate([nan, a] if first else [a, nan], axis=-1)

        s, U, V = padded(s, 0), padded(U, M), padded(V, N)
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
    normal = _normal(P, side)
    G = normal.matmat
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
            if m_max == n or certified(sv, 4.0 * r, float(sv[0]), opts.tol, max(M, N), P.eps):
                converged = True
                break
            # the block that continues the Krylov space: every residual G x - theta x lies in its span
            nxt = _orthonormal_block(GV[:, -b:], V, rng, P.complex)
        checked, wanted = True, None
        if converged and k >= 2 and m_max < n:  # a multiplicity above the block size: see _complete
            X, wanted, checked = _complete(P, side, normal, X, k, "largest", 0.0, opts, opts.maxiter)
        s, U, Vv, bound, residual = _wanted(P, X, side, k, "largest") if wanted is None else wanted
    worst = float(bound.max()) / max(float(s[0]), np.finfo(float).tiny)
    if converged and checked and certified(s, bound, float(s[0]), opts.tol, max(M, N), P.eps):
        if vectors:
            U, Vv, refused = _checked_vectors(P, side, op, "largest", s, U, Vv, residual, float(s[0]), opts,
                                              opts.maxiter, "block Lanczos")
        if not (vectors and refused):
            opts.note("block Lanczos, residual-checked", P.charged(bound.max(), float(s[0])))
    elif not checked:
        not_converged(
            f"the {k} largest singular values of a {M} x {N} {type(op).__name__} by block Lanczos pass the residual "
            "check, but the run that looks for copies of repeated values they may miss did not converge; raise "
            "maxiter or tol",
            opts,
            values=s,
            residual=worst,
        )
    else:
        not_converged(
            f"the {k} largest singular values of a {M} x {N} {type(op).__name__} by block Lanczos have "
            f"residual bounds up to {worst:.1e} x sigma_max after {cycle} restarts, above tol={opts.tol:.1e} "
            "times the values; raise maxiter or tol",
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


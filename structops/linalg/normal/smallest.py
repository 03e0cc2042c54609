"""Smallest singular values of zero-padded layers by inverse subspace iteration with the normal-matrix factor."""

from __future__ import annotations

import math
import time

import numpy as np

from .band import band_flops, band_perm, BandFactor
from .gram import EPS, check_op, gram_for, Gram, host_op, resolve_side
from .lu import LayerLU, lu_affordable
from .multifrontal import NDFactor, NDPlan

def _factorize(gram, method, shift=0.0):
    if method == "auto":
        nd_flops = NDPlan(gram.grid, gram.reach, gram.c).best(tuple(0 for _ in gram.grid), tuple(gram.grid))[0]
        method = "nd" if nd_flops < 0.8 * band_flops(gram) else "band"
    if method == "band":
        return BandFactor(gram, shift)
    if method == "nd":
        return NDFactor(gram, shift)
    raise ValueError(f"method={method!r}; expected 'auto', 'band' or 'nd'")


def normal_solver(op, shift: float = 0.0, method: str = "auto"):
    """Exact solves with ``A^T A + shift I`` for a zero-padded layer ``A``.

    The banded normal matrix is assembled from the kernel and factorised once
    (sparse Cholesky, see the module notes); every call is then two triangular
    solves. Used e.g. as the exact inner solver of least-squares problems in the
    layer's input (``shift`` > 0 for Tikhonov damping).

    Parameters
    ----------
    op : ConvND
        Zero padding, real kernel.
    shift : float
        Added to the diagonal; must make the matrix positive definite.
    method : {"auto", "nd", "band"}

    Returns
    -------
    callable
        ``solve(X)`` for ``X`` of shape ``(N,)`` or ``(N, r)`` (host arrays), the
        same shape back.

    Raises
    ------
    numpy.linalg.LinAlgError
        If ``A^T A + shift I`` is not numerically positive definite.
    """
    gram, _ = gram_for(op, "input")
    fac = _factorize(gram, method, float(shift))

    def solve(X):
        X = np.asarray(X, dtype=np.float64)
        Y = fac.solve(X.reshape(X.shape[0], -1))
        return Y.reshape(X.shape)

    return solve


def _norm_bound(K):
    """``sqrt(||A||_1 ||A||_inf) >= ||A||_2`` from the kernel (each tap reads one pixel per output)."""
    a = np.abs(K.reshape(K.shape[0], K.shape[1], -1))
    return float(math.sqrt(a.sum(axis=(1, 2)).max() * a.sum(axis=(0, 2)).max()))


def smallest_singular_values(op, k=1, tol=1e-10, maxiter=None, *, method="auto", block=None, seed=0):
    """The ``k`` smallest singular values of a zero-padded convolution layer, certified.

    Parameters
    ----------
    op : ConvND
        Zero padding (``'same'``, ``'valid'``, ``'full'`` or integers), any
        stride, dilation and channel counts, 1-D, 2-D or N-D. Real kernels;
        float32 or CuPy kernels are copied to float64 on the host.
    k : int
        Number of values, ``1 <= k < min(M, N)``.
    tol : float
        Relative accuracy to certify: converged when every value has an error
        bound (see Notes) below ``tol * s``, or below the rounding level
        ``10 sqrt(max(M, N)) eps ||A||`` (numerically zero singular values).
    maxiter : int, optional
        Iterations of inverse subspace iteration (default 50).
    method : {"auto", "nd", "band"}
        Sparse-direct factorisation of the normal matrix: multifrontal
        nested dissection or LAPACK band Cholesky; ``"auto"`` picks the one
        with fewer flops.
    block : int, optional
        Subspace size (default ``max(2k, k + 6)``).
    seed : int
        Seed of the random starting block.

    Returns
    -------
    s : ndarray, shape ``(k,)``
        Ascending.
    info : dict
        ``converged`` (bool), ``method``, ``side`` (``"input"``: ``M^T M``),
        ``methods`` (the factorisations of each stage: ``"band"``, ``"nd"`` or
        ``"lu"``), ``two_sided`` (whether the second stage ran), ``n_solves``
        (block solves times block size), ``iterations``, ``residuals``
        (absolute, per value: ``sqrt((||A v - s u||^2 + ||A^T u - s v||^2) / 2)``
        plus the rounding of its evaluation), ``residual`` (the largest over
        ``||A||``, replaced by the upper bound ``sqrt(||A||_1 ||A||_inf)``),
        ``error_bound`` (relative, per value), ``absolute_error_bound``,
        ``factor_bytes``, ``factor_flops``, ``seconds``, ``seconds_factor``,
        ``shift`` (diagonal shift used when the normal matrix was numerically
        singular), ``right``, ``left`` (singular vectors as columns:
        ``A v = s u``).

    Notes
    -----
    The computed values are upper bounds of the true ones (Cauchy interlacing
    for ``A Q`` with orthonormal ``Q``), so a value at rounding level is
    certified as a numerical zero. Each other triplet is checked with the
    matrix-free layer (``_Run.certify``): some singular value lies within the
    residual ``r`` of the symmetric ``[[0, A], [A^T, 0]]`` at ``[u; v]`` of
    ``s``, and within ``r^2 / g`` with ``g`` the distance to the rest of its
    spectrum (the other computed values, reduced by their residuals, and
    their mirrors ``-s_j``). The gap uses the computed part of the spectrum:
    the inverse iteration converges to the smallest values from a random
    start, so a value below them would have to be missed by the whole block.

    Square layers have a second stage when the first stalls. The factorised
    normal matrix squares the condition number: for ``cond(A) >~ 1e7`` the
    left vectors ``u = A v / s`` lose ``eps cond(A)`` of accuracy and the
    residuals stall near ``eps ||A||^2 / s``. The second stage iterates on
    both sides (``A^T A`` and ``A A^T``), projects the layer two-sided
    (``U^T A V``) and evaluates the residuals in long double: the error
    bounds fall to about ``1e-17 ||A||`` (a relative ``1e-8`` at
    ``cond = 1e9``). When the normal matrix is singular to working precision
    (a shifted factor), small layers use a sparse LU of the layer itself
    (:mod:`~structops.linalg.normal.lu`), which resolves singular values
    down to rounding level. Non-square layers have the first stage only;
    when it cannot certify, ``info["converged"]`` is False and ``s`` remains
    a certified upper bound, within ``info["residuals"]`` of a singular value.
    """
    t0 = time.perf_counter()
    K = check_op(op)
    M, N = op.shape
    n_small = min(M, N)
    k = int(k)
    if not 1 <= k < n_small:
        raise ValueError(f"k={k}; expected 1 <= k < min(M, N) = {n_small}")
    maxiter = 50 if maxiter is None else int(maxiter)
    p = min(n_small, block if block is not None else max(2 * k, k + 6))
    if p < k:
        raise ValueError(f"block={block} is smaller than k={k}")
    A = host_op(op, K)
    side = resolve_side(op, "auto")
    square = side is None
    if square:  # the side with the narrower band first
        grams = {sd: Gram(K, op.in_shape, op.out_shape, op.stride, op.dilation, op.padding, sd)
                 for sd in ("input", "output")}
        side = min(grams, key=lambda sd: band_perm(grams[sd])[1])
    else:
        grams = {side: Gram(K, op.in_shape, op.out_shape, op.stride, op.dilation, op.padding, side)}
    other = "output" if side == "input" else "input"
    # B is the layer on the factorised side: G = B^T B
    B = _Side(A.matmat, A.rmatmat) if side == "input" else _Side(A.rmatmat, A.matmat)
    anorm = _norm_bound(K)
    floor = 10 * math.sqrt(max(M, N)) * EPS * anorm  # the rounding level of a backward-stable method
    # rounding of the residuals: each product entry sums at most c taps (direct) or is an FFT of the grid
    c_max = max(op.c_out, op.c_in) * int(np.prod(op.kernel_size))
    gamma = (c_max + 10 * math.log2(max(M, N) + 1) + 10) * EPS
    state = _Run(k=k, tol=tol, anorm=anorm, floor=floor, gamma=gamma, square=square)
    tf = time.perf_counter()
    fac, shift = _factorize_or_shift(grams[side], method, anorm, op)
    t_factor = time.perf_counter() - tf
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((grams[side].n, p))
    # square layers have a second stage: leave the first when it stalls
    state.iterate(fac, None, B, V, None, maxiter, stall=_STALL if square else None)
    methods = [fac.method]
    if not state.converged and square and state.s is not None:
        # ill-conditioned: the left vectors u = B v / s lose eps cond(A) of accuracy. Iterate on both
        # sides (B^T B and B B^T) and project the layer two-sided, U^T B V: residuals at rounding level of ||A||
        tf = time.perf_counter()
        fac2 = None
        if shift > 0 and lu_affordable(op):
            # numerically singular: the shifted normal matrix cannot resolve values below
            # sqrt(shift); a sparse LU of the layer itself can
            try:
                fac = LayerLU(op, transposed=side == "output")
                fac2 = fac.other()
            except np.linalg.LinAlgError:
                fac2 = None
        if fac2 is None:
            # (a shifted factor, G + delta I, has the same eigenvectors: the certificate does not use it)
            fac2, _ = _factorize_or_shift(grams[other], method, anorm, op)
        t_factor += time.perf_counter() - tf
        methods.append(fac2.method)
        Bs = A.tosparse("csr")
        state.extended = (Bs if side == "input" else Bs.T.tocsr()).astype(np.longdouble)
        state.iterate(fac, fac2, B, state.V, state.U, maxiter)
    s, r, bound, U, V = state.s, state.r, state.bound, state.U, state.V
    seconds = time.perf_counter() - t0
    if s is None:
        s = np.full(k, np.nan)
        r = np.full(k, np.inf)
        bound = np.full(k, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = bound / s[:k]
    info = {
        "converged": bool(state.converged),
        "method": methods[0],
        "methods": tuple(methods),
        "two_sided": len(methods) > 1,
        "side": side,
        "n_solves": int(state.n_solves),
        "iterations": state.iterations,
        "residual": float(np.max(r[:k]) / anorm) if anorm > 0 else float("inf"),
        "residuals": np.asarray(r[:k], dtype=float),
        "error_bound": np.asarray(rel, dtype=float),
        "absolute_error_bound": np.asarray(bound[:k], dtype=float),
        "factor_bytes": int(fac.nbytes),
        "factor_flops": float(fac.flops),
        "seconds": seconds,
        "seconds_factor": t_factor,
        "shift": shift,
        "norm_bound": anorm,
        "right": None if U is None else (V[:, :k] if side == "input" else U[:, :k]),
        "left": None if U is None else (U[:, :k] if side == "input" else V[:, :k]),
    }
    return s[:k].copy(), info


class _Side:
    """``B`` and ``B^T`` as block products."""

    def __init__(self, mat, rmat):
        self.mat, self.rmat = mat, rmat


def _factorize_or_shift(gram, method, anorm, op):
    """The factor of ``G`` and the diagonal shift used (a tiny one when ``G`` is numerically singular)."""
    try:
        return _factorize(gram, method), 0.0
    except np.linalg.LinAlgError:
        pass
    shift = 64 * EPS * anorm**2 * max(1, int(np.prod(op.kernel_size)))
    return _factorize(gram, method, shift), shift


class _Run:
    """Block inverse subspace iteration with the certificate of its Ritz triplets.

    One-sided: ``V <- orth(G^{-1} V)``, ``B V = U S`` by an SVD of ``B V``.
    Two-sided (square layers): also ``U <- orth((B B^T)^{-1} U)``, and the
    Ritz triplets of ``U^T B V``. See :meth:`certify` for the error bounds.
    """

    def __init__(self, k, tol, anorm, floor, gamma, square):
        self.k, self.tol, self.anorm, self.floor, self.gamma, self.square = k, tol, anorm, floor, gamma, square
        self.s = self.r = self.bound = self.U = self.V = None
        self.converged = False
        self.iterations = self.n_solves = 0
        self.extended = None  # B as a long double sparse matrix, for the residuals of the two-sided stage

    def iterate(self, fac, fac2, B, V, U, maxiter, stall=None):
        """Iterate until certified, ``maxiter``, or (with ``stall = m``) no halving of the bounds in ``m`` steps."""
        p = V.shape[1]
        n = V.shape[0]
        best, since = np.inf, 0
        for it in range(1, maxiter + 1):
            self.iterations += 1
            if fac2 is None and it == _LANCZOS_AFTER and p < n:
                # slow subspace iteration (clustered smallest values): Lanczos on the
                # inverse, started from the current best vector, gives a better subspace
                V, m = _lanczos_inverse(fac, n, p, V[:, 0])
                self.n_solves += m
            X = fac.solve(V)
            self.n_solves += p
            if not np.all(np.isfinite(X)):
                return
            Q, _ = np.linalg.qr(X)
            W = B.mat(Q)
            if fac2 is None:
                Uw, sw, Zt = np.linalg.svd(W, full_matrices=False)
            else:
                Xu = fac2.solve(U)
                self.n_solves += p
                if not np.all(np.isfinite(Xu)):
                    return
                P, _ = np.linalg.qr(Xu)
                Y, sw, Zt = np.linalg.svd(P.T @ W)
            order = np.argsort(sw)
            s = sw[order]
            V = Q @ Zt[order].T
            U = Uw[:, order] if fac2 is None else P @ Y[:, order]
            s, U, V, r, bound = self.certify(s, U, V, B, W @ Zt[order].T, one_sided=fac2 is None)
            k = self.k
            # certified: the error bound below tol (or the rounding level), and the
            # residual itself small enough that the gap-based bound is meaningful
            ok = ((bound <= self.tol * s[:k]) | (bound <= self.floor)) & (r[:k] <= math.sqrt(self.tol) * self.anorm)
            # a computed value at rounding level is certified as a numerical zero: the
            # Ritz values s_i = sigma_i(B Q) are upper bounds of the true ones (interlacing)
            zero = s[:k] <= self.floor
            bound[zero] = np.minimum(bound[zero], s[:k][zero] + self.gamma * self.anorm)
            ok |= zero
            self.s, self.r, self.bound, self.U, self.V = s, r, bound, U, V
            if np.all(ok) and np.all(np.isfinite(s[:k])):
                self.converged = True
                return
            worst = float(np.max(bound))
            if worst <= 0.5 * best:
                best, since = worst, 0
            else:
                since += 1
                if stall is not None and since >= stall:
                    return

    def certify(self, s, U, V, B, BV, one_sided):
        """Values, vectors, residual radii and error bounds of the ``k`` smallest Ritz triplets.

        Notes
        -----
        With unit ``u, v`` and ``z = [u; v] / sqrt(2)``, the symmetric
        ``H = [[0, B], [B^T, 0]]`` (eigenvalues ``+-sigma_i``, and zeros when
        ``B`` is not square) has the Rayleigh quotient ``rho = u^T B v`` and the
        residual ``r = ||H z - rho z|| = sqrt((||B v - rho u||^2 + ||B^T u - rho v||^2) / 2)``:
        some ``sigma`` lies within ``r`` of ``rho``, and within ``r^2 / g`` when
        the rest of the spectrum of ``H`` is at least ``g`` away (the other
        values' intervals, their mirrors ``-s_j`` and, for non-square ``B``,
        ``0``; the top value of the block has no gap above it and keeps ``r``). One-sided triplets (``u = B v / ||B v||`` up to rounding) also
        have the bound of ``G = B^T B``: with ``rho_G = ||B v||^2`` and
        ``g_G`` the distance from ``rho_G`` to the rest of the spectrum of ``G``,
        ``|sigma^2 - rho_G| <= ||(G - rho_G) v||^2 / g_G``, which does not lose
        the mirror gap ``2 s`` of tiny values. Every product is charged its
        rounding error ``gamma ||A||`` (``gamma ~ (c taps + 10 log2 n) eps``;
        ``eps`` of long double for the two-sided stage's products).
        """
        k = self.k
        if self.extended is not None:
            Bx = self.extended
            ld = np.longdouble
            Ux, Vx = U.astype(ld), V.astype(ld)
            Ux /= np.sqrt(np.sum(Ux * Ux, axis=0))
            Vx /= np.sqrt(np.sum(Vx * Vx, axis=0))
            BVx, BtUx = Bx @ Vx, Bx.T @ Ux
            rho = np.sum(Ux * BVx, axis=0)
            sign = np.where(rho < 0, -1.0, 1.0)  # u -> -u makes the Rayleigh quotient a singular value (>= 0)
            Ux *= sign.astype(ld)
            U = U * sign
            rho = np.abs(rho)
            r1 = np.sqrt(np.sum((BVx - Ux * rho) ** 2, axis=0)).astype(np.float64)
            r2 = np.sqrt(np.sum((BtUx - Vx * rho) ** 2, axis=0)).astype(np.float64)
            err = 3 * self.gamma * float(np.finfo(ld).eps / EPS) * self.anorm
            order = np.argsort(rho.astype(np.float64))
            s = rho.astype(np.float64)[order]
            U, V, r1, r2 = U[:, order], V[:, order], r1[order], r2[order]
            shift = err + EPS * np.abs(s)  # the Rayleigh quotient's rounding, and to float64
        else:
            err = self.gamma * self.anorm
            r1 = np.linalg.norm(BV - U * s, axis=0)
            r2 = np.linalg.norm(B.rmat(U) - V * s, axis=0)
            shift = r1 + err  # |u^T B v - s| <= ||B v - s u||
        r = np.sqrt((r1**2 + r2**2) / 2) + 2 * err
        bound = np.empty(k)
        for i in range(k):
            if i == s.size - 1:  # the top of the block: the values above it are not computed, no gap
                bound[i] = r[i] + shift[i]
                continue
            others = np.delete(np.arange(s.size), i)
            gap = np.min(np.abs(s[others] - s[i]) - r[others]) if others.size else np.inf
            gap = min(gap, (2 * s[i] - r[i]) if self.square else s[i])  # the mirrors -sigma_j (and 0)
            bound[i] = min(r[i], r[i] ** 2 / gap if gap > r[i] else np.inf) + shift[i]
            if one_sided and s[i] > 0:
                # the bound of G = B^T B: ||(G - rho_G) v|| <= s r2 + 2 ||B|| (r1 + 3 err) + s err
                res_g = s[i] * r2[i] + 2 * self.anorm * (r1[i] + 3 * err) + s[i] * err
                lo, hi = np.maximum(s[others] - r[others], 0.0), s[others] + r[others]
                below, above = hi < s[i], lo > s[i]
                if np.all(below | above):
                    g = min(np.min(s[i] ** 2 - hi[below] ** 2, initial=np.inf),
                            np.min(lo[above] ** 2 - s[i] ** 2, initial=np.inf))
                    if g > res_g:
                        bound[i] = min(bound[i], res_g**2 / (g * s[i]) + r1[i] + 2 * err)
        return s, U, V, r, bound


# Iterations without a halving of the error bounds after which the one-sided stage
# of a square layer gives way to the two-sided one.
_STALL = 8

# Iterations of block inverse iteration before switching to Lanczos on the inverse.
_LANCZOS_AFTER = 6


def _lanczos_inverse(fac, n: int, p: int, v0):
    """``p`` leading eigenvectors of ``G^{-1}`` (ARPACK), ``(n, p)``, and the solves used."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

    count = [0]

    def apply(v):
        count[0] += 1
        return fac.solve(v.reshape(-1, 1)).ravel()

    Ginv = LinearOperator((n, n), matvec=apply, dtype=np.float64)
    ncv = min(n, max(2 * p + 1, 20))
    try:
        _, V = eigsh(Ginv, k=p, which="LA", v0=v0, ncv=ncv, tol=1e-12, maxiter=100 * n)
    except ArpackNoConvergence as e:  # keep what converged, fill up with the start block
        V = e.eigenvectors if e.eigenvectors is not None and e.eigenvectors.shape[1] else v0.reshape(-1, 1)
        if V.shape[1] < p:
            V = np.hstack([V, np.random.default_rng(0).standard_normal((n, p - V.shape[1]))])
    except ArpackError:  # e.g. no shifts for a spectrum of few distinct values: go on with the start block
        V = np.hstack([v0.reshape(-1, 1), np.random.default_rng(0).standard_normal((n, p - 1))])
    return V, count[0]


def sigma_min(op, tol=1e-10, **kwargs):
    """The smallest singular value of a zero-padded layer (certified, or an error).

    Raises
    ------
    RuntimeError
        When :func:`smallest_singular_values` cannot certify the value.
    """
    s, info = smallest_singular_values(op, k=1, tol=tol, **kwargs)
    if not info["converged"]:
        raise RuntimeError(
            f"sigma_min not certified: value {s[0]:.6e}, relative error bound "
            f"{info['error_bound'][0]:.2e} > tol {tol:.1e} after {info['iterations']} iterations"
        )
    return float(s[0])


def smallest_singular_values_lu(A, k=1, tol=1e-10, maxiter=None, *, block=None, seed=0):
    """The ``k`` smallest singular values of a square sparse matrix, by inverse iteration on its sparse LU.

    Parameters
    ----------
    A : scipy.sparse matrix, shape ``(n, n)``
        Real; a layer assembled from its taps (e.g.
        :meth:`~structops.PaddedConvND.tosparse` of a reflect- or
        replicate-padded layer, whose normal matrix has no kernel formula).
    k, tol, maxiter, block, seed
        As in :func:`smallest_singular_values`.

    Returns
    -------
    s : ndarray, shape ``(k,)``
        Ascending.
    info : dict
        ``converged``, ``absolute_error_bound`` (per value), ``residuals``,
        ``iterations``, ``n_solves``, ``factor_bytes``, ``seconds``.

    Raises
    ------
    numpy.linalg.LinAlgError
        When SuperLU finds the matrix exactly singular.

    Notes
    -----
    The second stage of :func:`smallest_singular_values` from the start:
    ``P_r A P_c = L U`` (SuperLU) gives ``(A^T A)^{-1} = A^{-1} A^{-T}`` and
    ``(A A^T)^{-1}``, backward stable in ``A`` itself, so the two-sided
    iteration resolves singular values down to rounding level of ``||A||``;
    the triplets of ``U^T A V`` are certified by :meth:`_Run.certify`, with
    residuals in long double and every product charged
    ``gamma = (m + 10 log2 n + 10) eps``, ``m`` the most nonzeros of a row or
    a column of ``A``, and ``||A|| <= sqrt(||A||_1 ||A||_inf)``.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    t0 = time.perf_counter()
    A = sp.csc_matrix(A, dtype=np.float64)
    n = A.shape[0]
    if A.shape != (n, n):
        raise ValueError(f"the sparse LU route needs a square matrix; got {A.shape}")
    k = int(k)
    if not 1 <= k < n:
        raise ValueError(f"k={k}; expected 1 <= k < n = {n}")
    maxiter = 50 if maxiter is None else int(maxiter)
    p = min(n, block if block is not None else max(2 * k, k + 6))
    A.eliminate_zeros()
    rows = A.tocsr()
    per_column, per_row = np.diff(A.indptr), np.diff(rows.indptr)
    if (per_column == 0).any() or (per_row == 0).any():
        # an empty row or column (a zero filter, an unread input): SuperLU's factorisation fails on it, and its
        # BLAS prints illegal-argument messages on the way
        raise np.linalg.LinAlgError("the matrix has an empty row or column: it is singular")
    try:
        lu = splu(A, permc_spec="COLAMD")
    except RuntimeError as e:  # "Factor is exactly singular"
        raise np.linalg.LinAlgError(f"sparse LU failed: {e}") from None
    fac = LayerLU(None, False, lu)
    absA = abs(A)
    anorm = float(math.sqrt(absA.sum(axis=0).max() * absA.sum(axis=1).max())) if A.nnz else 0.0
    gamma = (int(max(per_column.max(), per_row.max())) + 10 * math.log2(n + 1) + 10) * EPS
    state = _Run(k=k, tol=tol, anorm=anorm, floor=10 * math.sqrt(n) * EPS * anorm, gamma=gamma, square=True)
    state.extended = rows.astype(np.longdouble)
    V = np.random.default_rng(seed).standard_normal((n, p))
    B = _Side(lambda X: A @ X, lambda Y: A.T @ Y)
    # U = A V: the two iterations then span A's image of the same subspace (A (A^T A)^{-1} = (A A^T)^{-1} A), and
    # U^T A V is a projection of one subspace's singular triplets; from two independent starts their blocks could
    # hold different copies of a repeated value at the block's edge (a circular layer: 0.0008 for 0.0050)
    state.iterate(fac, fac.other(), B, V, A @ V, maxiter)
    s = state.s[:k].copy() if state.s is not None else np.full(k, np.nan)
    bound = state.bound[:k].copy() if state.bound is not None else np.full(k, np.inf)
    return s, {
        "converged": bool(state.converged),
        "absolute_error_bound": np.asarray(bound, dtype=float),
        "residuals": None if state.r is None else np.asarray(state.r[:k], dtype=float),
        "iterations": state.iterations,
        "n_solves": int(state.n_solves),
        "factor_bytes": int(fac.nbytes),
        "seconds": time.perf_counter() - t0,
    }

"""Smallest singular values of zero-padded layers by inverse subspace iteration with the normal-matrix factor."""

from __future__ import annotations

import math
import time

import numpy as np

from .band import band_flops, band_perm, BandFactor
from .gram import EPS, check_op, gram_for, Gram, host_op, resolve_side
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
        ``n_solves`` (block solves times block size), ``iterations``,
        ``residual`` (largest ``||A^T u - s v|| / ||A||``, ``||A||`` replaced by
        the upper bound ``sqrt(||A||_1 ||A||_inf)``), ``residuals`` (absolute,
        per value), ``error_bound`` (relative, per value), ``absolute_error_bound``, ``factor_bytes``,
        ``factor_flops``, ``seconds``, ``seconds_factor``, ``shift`` (diagonal
        shift used when the normal matrix was numerically singular),
        ``right``, ``left`` (singular vectors as columns: ``A v = s u``).

    Notes
    -----
    The computed values are upper bounds of the true ones (Cauchy interlacing
    for ``A Q`` with orthonormal ``Q``), so a value at rounding level is
    certified as a numerical zero. Each other triplet is checked with the
    matrix-free layer: ``u = A v / s``, ``r = ||A^T u - s v||``. Some singular
    value lies in ``[s - r, s + r]``;
    with ``g`` the distance from ``s`` to the other computed values (reduced by
    their residuals) the error is at most ``r^2 / g``. The gap uses the
    computed part of the spectrum: the inverse iteration converges to the
    smallest values from a random start, so a value below them would have to
    be missed by the whole block.

    The factorised normal matrix squares the condition number: once
    ``cond(A)^2`` approaches ``1 / eps`` (``cond(A) >~ 1e7``), the residuals
    stall near ``eps ||A||^2 / s`` and the value cannot be certified to a
    relative ``tol``; ``info["converged"]`` is then False and ``s`` remains a
    certified upper bound, within ``info["residuals"]`` of a singular value.
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
    if side is None:  # square: the side with the narrower band
        grams = [
            Gram(K, op.in_shape, op.out_shape, op.stride, op.dilation, op.padding, sd) for sd in ("input", "output")
        ]
        gram = min(grams, key=lambda g: band_perm(g)[1])
        side = gram.side
    else:
        gram = Gram(K, op.in_shape, op.out_shape, op.stride, op.dilation, op.padding, side)
    if side == "input":
        Bop, BopT = A.matmat, A.rmatmat
    else:
        Bop, BopT = A.rmatmat, A.matmat
    anorm = _norm_bound(K)
    # factorise (a tiny shift if the matrix is numerically singular)
    shift = 0.0
    tf = time.perf_counter()
    try:
        fac = _factorize(gram, method)
    except np.linalg.LinAlgError:
        shift = 64 * EPS * anorm**2 * max(1, int(np.prod(op.kernel_size)))
        fac = _factorize(gram, method, shift)
    t_factor = time.perf_counter() - tf
    # block inverse subspace iteration, Rayleigh-Ritz on the layer itself
    rng = np.random.default_rng(seed)
    n = gram.n
    V = rng.standard_normal((n, p))
    n_solves = 0
    floor = 10 * math.sqrt(max(M, N)) * EPS * anorm  # the rounding level of a backward-stable method
    converged = False
    s = r = bound = U = None
    it = 0
    for it in range(1, maxiter + 1):
        if it == _LANCZOS_AFTER and p < n:
            # slow subspace iteration (clustered smallest values): Lanczos on the
            # inverse, started from the current best vector, gives a better subspace
            V, m = _lanczos_inverse(fac, n, p, V[:, 0])
            n_solves += m
        X = fac.solve(V)
        n_solves += p
        if not np.all(np.isfinite(X)):
            break
        Q, _ = np.linalg.qr(X)
        W = Bop(Q)
        Uw, sw, Zt = np.linalg.svd(W, full_matrices=False)
        order = np.argsort(sw)
        s = sw[order]
        V = Q @ Zt[order].T
        U = Uw[:, order]
        R = BopT(U) - V * s
        r = np.linalg.norm(R, axis=0)
        # gaps to the other computed values, reduced by their residuals
        bound = np.empty(k)
        for i in range(k):
            others = np.delete(np.arange(p), i)
            gap = np.min(np.abs(s[others] - s[i]) - r[others]) if others.size else np.inf
            lin = r[i]
            quad = r[i] ** 2 / gap if gap > r[i] else np.inf
            bound[i] = min(lin, quad)
        # certified: the error bound below tol (or the rounding level), and the
        # residual itself small enough that the gap-based bound is meaningful
        ok = ((bound <= tol * s[:k]) | (bound <= floor)) & (r[:k] <= math.sqrt(tol) * anorm)
        # a computed value at rounding level is certified as a numerical zero: the
        # Ritz values s_i = sigma_i(B Q) are upper bounds of the true ones (interlacing)
        zero = s[:k] <= floor
        bound[zero] = np.minimum(bound[zero], s[:k][zero])
        ok |= zero
        if np.all(ok) and np.all(np.isfinite(s[:k])):
            converged = True
            break
    seconds = time.perf_counter() - t0
    if s is None:
        s = np.full(k, np.nan)
        r = np.full(k, np.inf)
        bound = np.full(k, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = bound / s[:k]
    info = {
        "converged": bool(converged),
        "method": fac.method,
        "side": side,
        "n_solves": int(n_solves),
        "iterations": it,
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

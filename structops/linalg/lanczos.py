r"""Extreme singular triplets of any linear operator by Lanczos (ARPACK), every result residual-checked.

For a computed triplet ``(s, u, v)`` the residuals ``r_1 = ||A v - s u||`` and
``r_2 = ||A^H u - s v||`` bound the distance from ``s`` to a singular value of
``A`` by ``sqrt((r_1^2 + r_2^2) / 2)``; a result is accepted only when that
bound is at most ``tol * sigma_max``. Otherwise
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
from ._common import conv64, not_converged, shape_of

__all__ = ["lanczos_svd"]


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
    with blas_threads():
        try:
            lam, X = spla.eigsh(G, k=k, which=arpack_which, tol=opts.tol / 4, maxiter=maxiter, v0=v0, ncv=ncv)
        except spla.ArpackNoConvergence as e:
            converged = False
            lam, X = e.eigenvalues, e.eigenvectors
        if not converged:
            vals = np.full(k, np.nan)
            got = np.sort(np.sqrt(np.maximum(np.asarray(lam, dtype=float), 0)))[::-1]
            if which == "largest":
                vals[: len(got)] = got
            else:
                vals[k - len(got) :] = got
            not_converged(
                f"Lanczos (ARPACK) found {len(got)} of the {k} {which} singular values of a {M} x {N} "
                f"{type(op).__name__} within maxiter={maxiter}; raise maxiter or tol",
                opts,
                values=vals,
            )
            if not vectors:
                return vals, None, None
            if len(got) == 0:
                return vals, np.full((M, k), np.nan, P.dtype), np.full((N, k), np.nan, P.dtype)
        # singular triplets from the Ritz vectors: the other side by one product
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
    s, U, V, bound = s[order], U[:, order], V[:, order], bound[order]
    if which == "largest":
        ref = float(s[0])
    else:
        ref = sigma_max if sigma_max is not None else float(lanczos_svd(op, 1, "largest", opts, False)[0][0])
    if converged:
        worst = float(bound.max()) / max(ref, np.finfo(float).tiny)
        if not worst <= opts.tol:
            not_converged(
                f"the {which} singular values of a {M} x {N} {type(op).__name__} by Lanczos have a residual "
                f"bound of {worst:.1e} x sigma_max, above tol={opts.tol:.1e}; raise maxiter or tol",
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

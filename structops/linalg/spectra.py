r"""Singular values, norms and condition numbers of operators, dispatched on structure.

The headline question about a convolution layer is "what are its singular
values, and what is its condition number?". The functions here answer it with
an exact rule where the structure gives one and an iterative or dense fallback
elsewhere, so that they accept structops operators, plain PyLops and SciPy
operators and NumPy arrays alike:

=====================================  ==========================================================
operator                               rule
=====================================  ==========================================================
:class:`~structops.Circulant`          ``|fftn(c)|``
:class:`~structops.ConvND`, circular,  batched SVD of ``c_out x (prod(stride) c_in)`` channel
stride dividing the input size         matrices, one per frequency of the ``n / stride`` grid
                                       (polyphase form; stride 1 is the block-circulant case)
:class:`~structops.ConvND`, zero       largest: Lanczos (ARPACK) on the normal operator, started
padding (or circular with a stride     from the circular layer's top singular vector, every
that does not divide the input)        result checked by its residual; smallest: the banded
                                       factorisation of the normal matrix where available,
                                       otherwise a dense SVD for small layers
anything else                          dense SVD when small; Lanczos with a residual check
=====================================  ==========================================================

Every function returns host (NumPy) float64 arrays and works in double
precision for single-precision operators. ``singular_values`` and
``singular_vectors`` are :func:`functools.singledispatch` functions: a new
structure gets its own exact rule with ``singular_values.register(MyOperator)``.

Notes
-----
**Circular layers.** With the taps placed on the periodic input grid,
``q_d = (d \cdot \delta - lo) \bmod n`` per axis, a circular layer with stride
``s`` (``s`` dividing ``n``) reads ``x[i, p s + q_d]``. Splitting the input into
its ``prod(s)`` polyphase components ``x_\phi[i, r] = x[i, s r + \phi]`` on the
grid of size ``m = n / s`` and writing ``q_d = s a_d + \phi_d``,

.. math::

    y[o, p] = \sum_{i, \phi} \sum_a c[o, i, \phi, a]\, x_\phi[i, (p + a) \bmod m],
    \qquad c[o, i, \phi, a] = \sum_{d:\, q_d = s a + \phi} K[o, i, d],

a sum of ``m``-periodic correlations. A Fourier mode ``x_\phi[i, r] = v[i, \phi]
e^{2 \pi i \omega \cdot r / m}`` is mapped to ``y[o, p] = (P(\omega) v)[o]
e^{2 \pi i \omega \cdot p / m}`` with the ``c_out x (c_in prod(s))`` matrix
``P(\omega) = \sum_a c[\cdot, \cdot, \cdot, a] e^{2 \pi i \omega \cdot a / m}``.
The modes are orthonormal in input and output space and the polyphase split is
a permutation, so the singular values of the layer are those of all
``P(\omega)`` together, and its singular vectors are Fourier modes times the
singular vectors of ``P(\omega)``. For real kernels ``P(-\omega) =
\overline{P(\omega)}`` has the same singular values: the half grid of a real
FFT carries the spectrum, every frequency whose partner ``-\omega`` lies
outside it counted twice (the last axis away from ``0`` and the Nyquist
index ``m/2``); the real and imaginary parts of the complex modes are real
singular vectors.

**Gram matrices.** The singular values of ``P`` are the square roots of the
eigenvalues of ``P P^H`` (or ``P^H P``). This is faster for rectangular ``P``
but loses small singular values: the error is about ``eps ||P||^2 / sigma``.
``per_frequency="auto"`` uses it only for matrices at least twice as wide as
tall (for square ones the batched SVD is as fast, measured) and recomputes
with the SVD every frequency whose error estimate
``8 sqrt(k) eps ||P||^2 / sigma_min(P)`` (``k`` the inner dimension of the
product) exceeds ``1e-12 sigma_max`` of the layer. This estimate is an error
model with a safety factor (observed errors stay 5x or more below it), not a
rigorous bound; ``per_frequency="svd"`` is backward stable throughout.

**Iterative results** come with a residual check. For a computed triplet
``(s, u, v)`` the residuals ``r_1 = ||A v - s u||`` and ``r_2 = ||A^H u - s v||``
bound the distance from ``s`` to a singular value of ``A`` by
``sqrt((r_1^2 + r_2^2) / 2)``; a result is accepted only when that bound is at
most ``tol * sigma_max``. Otherwise :class:`SpectrumNotConvergedError` is
raised (or, with ``strict=False``, a :class:`SpectrumNotConvergedWarning` is
issued and unconverged values are NaN). Lanczos finds extreme singular values
reliably when started well, but like every Krylov method it can in principle
miss one that its start vector does not see.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse.linalg as spla

from .._backend import blas_threads, get_fft, to_numpy
from .._validate import as_int, as_real, check_memory
from ..operators.circulant import Circulant
from ..operators.conv import ConvND

__all__ = [
    "singular_values",
    "singular_vectors",
    "opnorm",
    "cond",
    "SpectrumNotConvergedError",
    "SpectrumNotConvergedWarning",
]

# Dense fallback: at most this many matrix entries (or a narrow matrix below the
# second limit); the dense SVD of a 4000 x 4000 matrix takes tens of seconds.
_DENSE_MAX_ENTRIES = 2 * 10**7
_DENSE_MAX_NARROW = 2048
_DENSE_MAX_NARROW_ENTRIES = 10**8
# Below this min(M, N) a dense SVD beats Lanczos for the few largest values.
_DENSE_PREFERRED = 400
# Gram matrices: accepted error relative to sigma_max, safety factor of the model.
_GRAM_RTOL = 1e-12
_GRAM_SAFETY = 8.0
_DEFAULT_TOL = 1e-10


class SpectrumNotConvergedError(RuntimeError):
    """An iterative spectral computation did not reach the requested accuracy.

    Attributes
    ----------
    values : ndarray or None
        The estimates at the point of failure (NaN where nothing converged).
    residual : float or None
        The residual bound reached, relative to ``sigma_max``.
    """

    def __init__(self, message, values=None, residual=None):
        super().__init__(message)
        self.values = values
        self.residual = residual


class SpectrumNotConvergedWarning(RuntimeWarning):
    """Issued instead of :class:`SpectrumNotConvergedError` when ``strict=False``."""


# ---------------------------------------------------------------- options, checks
class _Opts:
    __slots__ = ("tol", "maxiter", "strict", "dense", "per_frequency")

    def __init__(self, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
        self.tol = _DEFAULT_TOL if tol is None else as_real(tol, "tol")
        if not 0 < self.tol < 1:
            raise ValueError(f"tol must be in (0, 1); got {tol!r}")
        self.maxiter = None if maxiter is None else as_int(maxiter, "maxiter", minimum=1)
        self.strict = bool(strict)
        if dense not in (None, True, False):
            raise ValueError(f"dense must be None (automatic), True or False; got {dense!r}")
        self.dense = dense
        if per_frequency not in ("auto", "svd", "gram"):
            raise ValueError(f"per_frequency must be 'auto', 'svd' or 'gram'; got {per_frequency!r}")
        self.per_frequency = per_frequency


def _shape_of(op):
    shape = getattr(op, "shape", None)
    if shape is None or len(shape) != 2:
        raise TypeError(
            f"expected a linear operator or a 2-D array; got {type(op).__module__}.{type(op).__name__}"
        )
    return int(shape[0]), int(shape[1])


def _check_k(op, k, which, default_k=None):
    M, N = _shape_of(op)
    r = min(M, N)
    if which not in ("largest", "smallest"):
        raise ValueError(f"which must be 'largest' or 'smallest'; got {which!r}")
    if k is None:
        k = default_k
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int or None; got {k!r}")
        k = int(k)
        if not 1 <= k <= r:
            raise ValueError(
                f"k = {k} is out of range for a {M} x {N} operator; expected 1 <= k <= min(M, N) = {r}"
            )
    return M, N, k


def _dense_ok(M, N, opts):
    if opts.dense is not None:
        return opts.dense
    return M * N <= _DENSE_MAX_ENTRIES or (min(M, N) <= _DENSE_MAX_NARROW and M * N <= _DENSE_MAX_NARROW_ENTRIES)


def _too_large(op, what):
    M, N = _shape_of(op)
    return ValueError(
        f"{what} of this {M} x {N} {type(op).__name__} has no structured rule and the operator is "
        f"too large for the dense fallback (at most {_DENSE_MAX_ENTRIES:.0e} entries, or min(M, N) <= "
        f"{_DENSE_MAX_NARROW}); ask for a few values with k=..., or pass dense=True to force a dense SVD"
    )


def _select(s, k, which):
    """``s`` descending -> the k largest or smallest, still descending."""
    if k is None:
        return s
    return s[:k] if which == "largest" else s[len(s) - k :]


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


# ---------------------------------------------------------------- dense fallback
def _dense_matrix(op):
    """Dense float64/complex128 host matrix of ``op`` (an array or a linear operator)."""
    M, N = _shape_of(op)
    # the matrix, a copy for the SVD and its workspace
    check_memory(3.0 * M * N * (16 if np.dtype(getattr(op, "dtype", np.float64)).kind == "c" else 8),
                 f"the dense SVD of this {M} x {N} operator")
    if isinstance(op, ConvND):
        op = _conv64(op)
    if hasattr(op, "__array__") and not hasattr(op, "matvec"):
        A = to_numpy(op)
    else:
        M, N = _shape_of(op)
        dtype = np.dtype(getattr(op, "dtype", np.float64))
        xp = getattr(op, "xp", np)
        cols = []
        step = max(1, min(N, 2**22 // max(M, 1)))
        with blas_threads():
            for j0 in range(0, N, step):
                E = np.zeros((N, min(step, N - j0)), dtype=dtype)
                E[np.arange(j0, j0 + E.shape[1]), np.arange(E.shape[1])] = 1
                cols.append(to_numpy(op.matmat(xp.asarray(E))).reshape(M, -1))
        A = np.concatenate(cols, axis=1)
    A = np.asarray(A)
    return A.astype(np.complex128 if np.iscomplexobj(A) else np.float64, copy=False)


def _dense_svd(op, k, which, vectors):
    A = _dense_matrix(op)
    with blas_threads():
        if not vectors:
            return _select(np.linalg.svd(A, compute_uv=False), k, which)
        U, s, Vh = np.linalg.svd(A, full_matrices=False)
    sl = slice(0, k) if which == "largest" else slice(len(s) - k, len(s))
    return s[sl], U[:, sl], Vh[sl].conj().T


# ---------------------------------------------------------------- Lanczos fallback
class _Products:
    """Host float64 products of an operator (casts single precision, moves device arrays)."""

    def __init__(self, op):
        if isinstance(op, ConvND):
            op = _conv64(op)
        if isinstance(op, np.ndarray) or (hasattr(op, "__array__") and not hasattr(op, "matvec")):
            A = np.asarray(to_numpy(op))
            op = spla.aslinearoperator(A.astype(np.complex128 if np.iscomplexobj(A) else np.float64))
        self.op = op
        self.M, self.N = _shape_of(op)
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


def _not_converged(msg, opts, values=None, residual=None):
    if opts.strict:
        raise SpectrumNotConvergedError(msg, values=values, residual=residual)
    warnings.warn(msg + " (strict=False: the values are returned as they are)", SpectrumNotConvergedWarning, stacklevel=3)


def _lanczos(op, k, which, opts, vectors, v0=None, v0_side=None, sigma_max=None):
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
            _not_converged(
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
        ref = sigma_max if sigma_max is not None else float(_lanczos(op, 1, "largest", opts, False)[0][0])
    if converged:
        worst = float(bound.max()) / max(ref, np.finfo(float).tiny)
        if not worst <= opts.tol:
            _not_converged(
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


# ---------------------------------------------------------------- circular layers: the symbol
def _conv64(op: ConvND) -> ConvND:
    """The same layer with a double-precision kernel (the layer itself if it has one)."""
    K = op.kernel
    if K.dtype in (np.float64, np.complex128):
        return op
    return op.with_kernel(K.astype(np.complex128 if K.dtype.kind == "c" else np.float64))


class _Symbol:
    """Per-frequency channel matrices ``P(omega)`` of a periodic (block circulant, polyphase) operator.

    Built from ``c[o, i, phi, *a]``, the correlation taps of each polyphase
    component on the grid ``m = n / s`` (see the module notes).
    """

    def __init__(self, c, n, s, xp, pos=None):
        self.xp = xp
        # c: (c_out, c_in, nphase, *m) on the whole grid, or (..., *L) at the positions ``pos``
        self.c = c
        self.pos = pos
        self.n, self.s = tuple(n), tuple(s)
        self.m = tuple(a // b for a, b in zip(n, s))
        self.D = len(n)
        self.real = c.dtype.kind == "f"
        self.c_out, self.c_in, self.nphase = c.shape[:3]
        self._P = None

    @classmethod
    def from_conv(cls, op: ConvND):
        xp = op.xp
        K = op.kernel
        K = K.astype(np.complex128 if K.dtype.kind == "c" else np.float64)
        n, s = op.in_shape, op.stride
        co, ci = op.c_out, op.c_in
        # tap d sits at q_d = (d * dilation - lo) mod n = s * a_d + phi_d on each axis
        q = op.geometry.periodic_taps(n, form="correlation")
        pos = [np.unique(qa // sa) for qa, sa in zip(q, s)]
        c = xp.zeros((co, ci, int(np.prod(s))) + tuple(len(p) for p in pos), dtype=K.dtype)
        for d in np.ndindex(*op.kernel_size):
            qd = [int(qa[da]) for qa, da in zip(q, d)]
            phi = int(np.ravel_multi_index(tuple(x % sa for x, sa in zip(qd, s)), s))
            j = tuple(int(np.searchsorted(p, x // sa)) for p, x, sa in zip(pos, qd, s))
            c[(slice(None), slice(None), phi) + j] += K[(slice(None), slice(None)) + d]
        return cls(c, n, s, xp, pos=pos)

    @classmethod
    def from_circulant(cls, op: Circulant):
        xp = op.xp
        c = op.c.astype(np.complex128 if op.c.dtype.kind == "c" else np.float64)
        # C x = c (*) x is the correlation with c[-a]
        cc = xp.roll(xp.flip(c, axis=tuple(range(c.ndim))), 1, axis=tuple(range(c.ndim)))
        return cls(cc.reshape((1, 1, 1) + c.shape), c.shape, (1,) * c.ndim, xp)

    # -- frequency grid ------------------------------------------------------------
    @property
    def grid(self):
        """Shape of the frequency grid (the last axis halved for real symbols)."""
        if self.real:
            return self.m[:-1] + (self.m[-1] // 2 + 1,)
        return self.m

    def weights(self):
        """Multiplicity of each grid frequency in the full spectrum (2 where the partner is off the half grid)."""
        grid = self.grid
        if not self.real:
            return np.ones(int(np.prod(grid)), dtype=np.int64)
        ml = self.m[-1]
        j = np.arange(grid[-1])
        wl = np.where((j > 0) & (2 * j != ml), 2, 1)
        return np.broadcast_to(wl, grid).reshape(-1).astype(np.int64)

    def _dense_taps(self):
        """``c`` on the whole ``m`` grid."""
        if self.pos is None:
            return self.c
        xp = self.xp
        full = xp.zeros(self.c.shape[:3] + self.m, dtype=self.c.dtype)
        full[(slice(None),) * 3 + np.ix_(*self.pos)] = self.c
        return full

    def matrices(self):
        """``P(omega)`` for every grid frequency: ``(n_freq, c_out, c_in * nphase)``, complex128."""
        if self._P is not None:
            return self._P
        xp = self.xp
        F = int(np.prod(self.grid))
        ch = self.c_out * self.c_in * self.nphase
        L = int(np.prod(self.c.shape[3:])) if self.pos is not None else None
        check_memory(16.0 * F * (2 * ch + (L or 0)), "the per-frequency channel matrices of the symbol")
        if L is not None and L <= 2 * math.log2(max(F, 2)) + 8:
            # few taps: P = E c with the (n_freq, L) matrix E[omega, a] = exp(2 pi i omega . a / m),
            # one GEMM straight into the frequency-first layout (cheaper than FFTs of a mostly-zero grid)
            E = np.ones((1, 1), dtype=np.complex128)
            for g, mm, p in zip(self.grid, self.m, self.pos):
                Ea = np.exp(2j * np.pi * np.outer(np.arange(g), p) / mm)
                E = (E[:, None, :, None] * Ea[None, :, None, :]).reshape(E.shape[0] * g, -1)
            E = xp.asarray(E)
            C = xp.moveaxis(self.c.reshape(ch, L), 0, 1)  # (L, ch)
            with blas_threads():
                if self.real:
                    P = xp.empty((F, ch), dtype=np.complex128)
                    P.real[...] = E.real @ C
                    P.imag[...] = E.imag @ C
                else:
                    P = E @ C
            self._P = P.reshape(F, self.c_out, self.c_in * self.nphase)
            return self._P
        fft = get_fft(xp)
        c = self._dense_taps()
        axes = tuple(range(3, 3 + self.D))
        if self.real:
            Hh = fft.rfftn(c, axes=axes).conj()
        else:
            Hh = fft.ifftn(c, axes=axes) * float(np.prod(self.m))
        Hh = Hh.reshape(self.c_out, self.c_in * self.nphase, F)
        self._P = xp.ascontiguousarray(xp.moveaxis(Hh, -1, 0))
        return self._P

    # -- singular values -------------------------------------------------------------
    def values_per_frequency(self, per_frequency="auto"):
        """``(n_freq, r)`` singular values per frequency, each row descending; host float64."""
        P = self.matrices()
        xp = self.xp
        F, a, b = P.shape
        if min(a, b) == 1:
            return to_numpy(xp.sqrt(xp.sum(xp.abs(P) ** 2, axis=(1, 2))))[:, None]
        use_gram = per_frequency == "gram" or (per_frequency == "auto" and max(a, b) >= 2 * min(a, b))
        if not use_gram:
            return _batched(xp, _svdvals, P)
        lam = _batched(xp, _gram_eigvalsh, P)  # ascending
        S = np.sqrt(np.maximum(lam, 0))[:, ::-1]
        if per_frequency == "gram":
            return S
        # recompute the frequencies the Gram model cannot vouch for
        eps = np.finfo(np.float64).eps
        kin = max(a, b)
        lmax = np.maximum(lam[:, -1], 0)
        smax = math.sqrt(float(lmax.max())) if lmax.size else 0.0
        est = _GRAM_SAFETY * math.sqrt(kin) * eps * lmax / np.maximum(S[:, -1], np.finfo(float).tiny)
        bad = np.flatnonzero(est > _GRAM_RTOL * smax)
        if bad.size:
            S[bad] = _batched(xp, _svdvals, P[xp.asarray(bad)] if xp is not np else P[bad])
        return S

    def values(self, per_frequency="auto"):
        S = self.values_per_frequency(per_frequency)
        s = np.repeat(S, self.weights(), axis=0).reshape(-1)
        return np.sort(s)[::-1]

    # -- singular vectors -------------------------------------------------------------
    def _partner(self, f):
        """Flat grid index of the frequency ``-omega`` (full grid, or the half grid when it lies there)."""
        w = np.unravel_index(f, self.grid)
        p = tuple((-wi) % mi for wi, mi in zip(w, self.m))
        if p[-1] >= self.grid[-1]:
            return None
        return int(np.ravel_multi_index(p, self.grid))

    def vectors(self, k, which, per_frequency="auto"):
        """``k`` extreme singular triplets ``(s, U, V)``, ``s`` descending; real vectors for real symbols."""
        S = self.values_per_frequency(per_frequency)
        F, r = S.shape
        w = self.weights()
        # one entry per singular value of the full spectrum: (value, frequency, column, copy)
        f_idx = np.repeat(np.arange(F), w * r)
        rep = np.repeat(w, w * r)
        within = np.arange(len(f_idx)) - np.repeat(np.cumsum(w * r) - w * r, w * r)
        col = within // rep
        copy = within % rep
        vals = np.repeat(S.reshape(-1), np.repeat(w, r))
        order = np.argsort(-vals, kind="stable")
        chosen = order[:k] if which == "largest" else order[len(order) - k :]
        P = self.matrices()
        Mtot = self.c_out * int(np.prod(self.m))
        Ntot = self.c_in * int(np.prod(self.n))
        cdt = np.float64 if self.real else np.complex128
        U = np.empty((Mtot, k), dtype=cdt)
        V = np.empty((Ntot, k), dtype=cdt)
        s = np.empty(k)
        cache = {}
        for t, e in enumerate(chosen):
            f, j, cp = int(f_idx[e]), int(col[e]), int(copy[e])
            part = "complex"
            if self.real:
                partner = self._partner(f)
                if partner == f:
                    part = "real"
                elif w[f] == 2:
                    part = "re" if cp == 0 else "im"
                else:  # both f and -f on the half grid: the smaller index carries the vectors
                    if partner < f:
                        f, part = partner, "im"
                    else:
                        part = "re"
            if f not in cache:
                Pf = to_numpy(P[f])
                if part == "real":
                    Pf = Pf.real
                Uf, sf, Vhf = np.linalg.svd(Pf)
                cache[f] = (Uf, sf, Vhf.conj().T)
            Uf, sf, Vf = cache[f]
            s[t] = sf[j]
            u_mode, v_mode = self._modes(f, part == "real")
            u = np.multiply.outer(Uf[:, j], u_mode).reshape(-1)
            # input: x[i, s r + phi] = v[i, phi] e(omega . r)
            v = self._input_vector(Vf[:, j], v_mode)
            if part == "re":
                u, v = math.sqrt(2) * u.real, math.sqrt(2) * v.real
            elif part == "im":
                u, v = math.sqrt(2) * u.imag, math.sqrt(2) * v.imag
            elif part == "real":
                u, v = u.real, v.real
            U[:, t], V[:, t] = u, v
        o = np.argsort(-s, kind="stable")
        return s[o], U[:, o], V[:, o]

    def _modes(self, f, real):
        w = np.unravel_index(f, self.grid)
        mode = np.ones((), dtype=np.complex128)
        for wi, mi in zip(w, self.m):
            mode = np.multiply.outer(mode, np.exp(2j * np.pi * wi * np.arange(mi) / mi))
        mode = mode / math.sqrt(float(np.prod(self.m)))
        if real:
            mode = mode.real.astype(np.complex128)
        return mode, mode

    def _input_vector(self, vcol, mode):
        D = self.D
        v = vcol.reshape((self.c_in,) + self.s)  # (c_in, s1, .., sD)
        x = np.multiply.outer(v, mode)  # (c_in, s1..sD, m1..mD)
        perm = (0,) + tuple(v for a in range(D) for v in (1 + D + a, 1 + a))
        return x.transpose(perm).reshape(-1)


def _svdvals(xp, P):
    return xp.linalg.svd(P, compute_uv=False)


def _gram_eigvalsh(xp, P):
    if P.shape[1] <= P.shape[2]:
        G = xp.matmul(P, P.conj().transpose(0, 2, 1))
    else:
        G = xp.matmul(P.conj().transpose(0, 2, 1), P)
    return xp.linalg.eigvalsh(G)


def _batched(xp, fn, P):
    """``fn`` on a stack of small matrices, split over threads on the CPU; host float64 result."""
    F = P.shape[0]
    work = F * P.shape[1] * P.shape[2] * min(P.shape[1:])
    nw = _workers() if xp is np else 1
    if nw == 1 or F < 2 * nw or work < 2e6:
        with blas_threads():
            return np.asarray(to_numpy(fn(xp, P)), dtype=np.float64)
    chunks = np.array_split(np.arange(F), nw)
    with blas_threads(), ThreadPoolExecutor(nw) as ex:
        parts = list(ex.map(lambda ix: fn(xp, P[ix[0] : ix[-1] + 1]), chunks))
    return np.concatenate(parts, axis=0).astype(np.float64, copy=False)


def _symbol_of(op):
    """The exact periodic symbol of ``op``, or None when it has none."""
    if isinstance(op, Circulant):
        return _Symbol.from_circulant(op)
    if isinstance(op, ConvND) and op.circular and all(n % s == 0 for n, s in zip(op.in_shape, op.stride)):
        return _Symbol.from_conv(op)
    return None


def _circular_start_vector(op: ConvND):
    """Top right singular vector of the circular layer with the same kernel (or None), a Lanczos start."""
    if op.circular or any(s != 1 for s in op.stride):
        return None, None
    try:
        circ = ConvND(op.kernel, op.in_shape, padding="circular", dilation=op.dilation)
    except ValueError:  # even effective size or kernel larger than the image
        return None, None
    sym = _Symbol.from_conv(circ)
    P = sym.matrices()
    xp = sym.xp
    # a few frequencies of largest Frobenius norm, then the best of them exactly
    fro = to_numpy(xp.sum(xp.abs(P) ** 2, axis=(1, 2)))
    cand = np.argsort(-fro)[:8]
    best, bf = -1.0, None
    for f in cand:
        sf = np.linalg.svd(to_numpy(P[int(f)]), compute_uv=False)[0]
        if sf > best:
            best, bf = sf, int(f)
    partner = sym._partner(bf) if sym.real else None
    Pf = to_numpy(P[bf])
    real_mode = sym.real and partner == bf
    Uf, _, Vhf = np.linalg.svd(Pf.real if real_mode else Pf)
    u_mode, v_mode = sym._modes(bf, real_mode)
    v = sym._input_vector(Vhf[0].conj(), v_mode)
    u = np.multiply.outer(Uf[:, 0], u_mode).reshape(-1)
    if sym.real:
        v, u = v.real, u.real
    side_in = v if np.linalg.norm(v) > 0 else None
    side_out = u if tuple(circ.out_shape) == tuple(op.out_shape) and np.linalg.norm(u) > 0 else None
    return side_in, side_out


# ---------------------------------------------------------------- singular_values
@functools.singledispatch
def singular_values(op, k=None, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
    """Singular values of a linear operator, by the exact rule of its structure where there is one.

    Parameters
    ----------
    op : pylops.LinearOperator, scipy.sparse.linalg.LinearOperator or array, shape ``(M, N)``
    k : int, optional
        ``None`` (default): all ``min(M, N)`` singular values. Otherwise the
        ``k`` largest (``which="largest"``) or smallest (``which="smallest"``).
    which : {"largest", "smallest"}
        "smallest" means the smallest of the ``min(M, N)`` singular values, not
        the zeros of a null space.
    tol : float, optional
        Accuracy of iterative results relative to ``sigma_max`` (default ``1e-10``).
    maxiter : int, optional
        Restarts of the Lanczos method (ARPACK); default: ARPACK's own for the
        largest values, 300 for the smallest.
    strict : bool
        Raise :class:`SpectrumNotConvergedError` if an iterative result does
        not pass its residual check (default); with ``False`` warn instead.
    dense : bool, optional
        Force (``True``) or forbid (``False``) the dense SVD fallback; default
        by size.
    per_frequency : {"auto", "svd", "gram"}
        Batched solver of the per-frequency channel matrices of circular
        layers (see the module notes).

    Returns
    -------
    s : ndarray of float64, shape ``(min(M, N),)`` or ``(k,)``
        Descending in every case: ``singular_values(op, k, "smallest")`` equals
        the last ``k`` entries of ``singular_values(op)``.

    Raises
    ------
    SpectrumNotConvergedError
        An iterative result did not reach ``tol``.
    ValueError
        ``k`` or ``which`` invalid; or no structured rule and the operator is
        too large for a dense SVD.

    Examples
    --------
    >>> import numpy as np, structops
    >>> K = np.random.default_rng(0).standard_normal((4, 3, 3, 3))
    >>> op = structops.Conv2D(K, (8, 8), padding="circular")
    >>> s = structops.singular_values(op)
    >>> s.shape
    (192,)
    >>> A = op.todense()
    >>> bool(np.allclose(s, np.linalg.svd(A, compute_uv=False)))
    True
    """
    opts = _Opts(tol, maxiter, strict, dense, per_frequency)
    return _generic_values(op, k, which, opts)


def _generic_values(op, k, which, opts):
    M, N, k = _check_k(op, k, which)
    if k is None:
        if not _dense_ok(M, N, opts):
            raise _too_large(op, "the full spectrum")
        return _dense_svd(op, None, which, False)
    dense_auto = opts.dense is None and min(M, N) <= _DENSE_PREFERRED
    if opts.dense or dense_auto or k >= min(M, N) - 1:
        if not _dense_ok(M, N, opts) and opts.dense is not True:
            raise _too_large(op, f"the {k} {which} singular values")
        return _dense_svd(op, k, which, False)
    return _lanczos(op, k, which, opts, False)[0]


@singular_values.register(np.ndarray)
def _(op, k=None, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
    if op.ndim != 2:
        raise ValueError(f"expected a 2-D array; got shape {op.shape}")
    opts = _Opts(tol, maxiter, strict, dense, per_frequency)
    return _generic_values(op, k, which, opts)


@singular_values.register(Circulant)
def _(op, k=None, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
    _, _, k = _check_k(op, k, which)
    xp = op.xp
    s = np.sort(to_numpy(xp.abs(op.eigenvalues().astype(np.complex128))).reshape(-1))[::-1]
    return _select(s.astype(np.float64), k, which)


@singular_values.register(ConvND)
def _(op, k=None, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
    opts = _Opts(tol, maxiter, strict, dense, per_frequency)
    M, N, k = _check_k(op, k, which)
    sym = _symbol_of(op)
    if sym is not None:
        return _select(sym.values(opts.per_frequency), k, which)
    return _zero_padded_values(op, k, which, opts)


def _zero_padded_values(op, k, which, opts):
    M, N = op.shape
    if k is None:
        return _generic_values(op, None, which, opts)
    if which == "smallest":
        return _smallest_zero_padded(op, k, opts)
    dense_auto = opts.dense is None and min(M, N) <= _DENSE_PREFERRED
    if opts.dense or dense_auto or k >= min(M, N) - 1:
        return _generic_values(op, k, which, opts)
    vin, vout = _circular_start_vector(op)
    side = "in" if N <= M else "out"
    v0 = vin if side == "in" else vout
    return _lanczos(op, k, which, opts, False, v0=v0, v0_side=side)[0]


def _normal_smallest(op, k, opts, vectors):
    """The banded normal-matrix solver for the k smallest triplets: ``((s, U, V), None)`` or ``(None, reason)``."""
    M, N = op.shape
    if op.kernel.dtype.kind == "c":
        return None, "the banded normal-matrix solver takes real kernels only"
    if k >= min(M, N):
        return None, f"the banded normal-matrix solver needs k < min(M, N) = {min(M, N)}"
    try:
        from .normal import smallest_singular_values
    except ImportError:
        return None, "the banded normal-matrix solver is not available"
    try:
        vals, info = smallest_singular_values(_conv64(op), k=k, tol=opts.tol, maxiter=opts.maxiter)
    except (NotImplementedError, ValueError, TypeError) as e:
        return None, f"the banded normal-matrix solver does not cover it ({e})"
    vals = np.asarray(to_numpy(vals), dtype=np.float64).reshape(-1)
    order = np.argsort(-vals, kind="stable")
    vals = vals[order]
    if not info.get("converged", False):
        _not_converged(
            f"the {k} smallest singular values of a {M} x {N} zero-padded layer did not reach tol={opts.tol:.1e} "
            f"(error bounds {info.get('error_bound')}, iterations {info.get('iterations')})",
            opts,
            values=vals,
            residual=info.get("residual"),
        )
    if not vectors:
        return (vals, None, None), None
    U, V = info.get("left"), info.get("right")
    if U is None or V is None:
        return None, "the banded normal-matrix solver returned no singular vectors"
    U = np.asarray(to_numpy(U), dtype=np.float64).reshape(M, -1)[:, order]
    V = np.asarray(to_numpy(V), dtype=np.float64).reshape(N, -1)[:, order]
    res = info.get("residual")
    if res is None or not res <= opts.tol:
        # certified values, but vectors with a residual above tol (relative to ||A||)
        return (vals, U, V), (
            f"the smallest singular vectors of a {M} x {N} zero-padded layer by the banded normal-matrix "
            f"solver have a residual of {res} x ||A||, above tol={opts.tol:.1e}"
        )
    return (vals, U, V), None


def _smallest_zero_padded(op, k, opts, vectors=False):
    M, N = op.shape
    if opts.dense is True or (vectors and opts.dense is None and min(M, N) <= _DENSE_PREFERRED):
        return _dense_svd(op, k, "smallest", vectors)
    res, reason = _normal_smallest(op, k, opts, vectors)
    if res is not None and reason is None:
        return res if vectors else res[0]
    if res is not None:  # values certified, vectors not accurate enough
        if opts.dense is None and _dense_ok(M, N, opts):
            return _dense_svd(op, k, "smallest", vectors)
        _not_converged(reason, opts, values=res[0])
        return res
    if opts.dense is False or not _dense_ok(M, N, opts):
        kind = "circular" if op.circular else "zero-padded"
        why = "dense=False forbids a dense SVD" if opts.dense is False else (
            f"the layer is too large for a dense SVD (at most {_DENSE_MAX_ENTRIES:.0e} entries)"
        )
        raise NotImplementedError(
            f"the {k} smallest singular values of a {M} x {N} {kind} {type(op).__name__}: {reason}, "
            f"and {why}. Krylov "
            "methods do not converge reliably for the smallest singular values of zero-padded layers; "
            "pass dense=True to force a dense SVD"
        )
    return _dense_svd(op, k, "smallest", vectors)


# ---------------------------------------------------------------- singular_vectors
@functools.singledispatch
def singular_vectors(op, k=1, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
    """The ``k`` largest or smallest singular triplets ``A v = s u``, ``A^H u = s v``.

    Parameters
    ----------
    op, which, tol, maxiter, strict, dense, per_frequency
        As in :func:`singular_values`.
    k : int
        Number of triplets, ``1 <= k <= min(M, N)`` (default 1).

    Returns
    -------
    s : ndarray of float64, shape ``(k,)``
        Descending.
    U : ndarray, shape ``(M, k)``
        Output-space (left) singular vectors, orthonormal columns.
    V : ndarray, shape ``(N, k)``
        Input-space (right) singular vectors: ``V[:, 0]`` is the input the
        operator amplifies most (``which="largest"``). Real for real
        operators (for degenerate singular values, any orthonormal basis of
        the singular subspace may be returned).

    Examples
    --------
    >>> import numpy as np, structops
    >>> K = np.random.default_rng(0).standard_normal((4, 3, 3, 3))
    >>> op = structops.Conv2D(K, (8, 8), padding="circular")
    >>> s, U, V = structops.singular_vectors(op, k=2)
    >>> bool(np.allclose(op @ V, U * s))
    True
    """
    opts = _Opts(tol, maxiter, strict, dense, per_frequency)
    return _generic_vectors(op, k, which, opts)


def _generic_vectors(op, k, which, opts, v0=None, v0_side=None):
    M, N, k = _check_k(op, k, which, default_k=1)
    dense_auto = opts.dense is None and min(M, N) <= _DENSE_PREFERRED
    if opts.dense or dense_auto or k >= min(M, N) - 1:
        if not _dense_ok(M, N, opts) and opts.dense is not True:
            raise _too_large(op, f"the {k} {which} singular vectors")
        return _dense_svd(op, k, which, True)
    return _lanczos(op, k, which, opts, True, v0=v0, v0_side=v0_side)


@singular_vectors.register(np.ndarray)
def _(op, k=1, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
    if op.ndim != 2:
        raise ValueError(f"expected a 2-D array; got shape {op.shape}")
    return _generic_vectors(op, k, which, _Opts(tol, maxiter, strict, dense, per_frequency))


def _structured_vectors(op, k, which, opts):
    _, _, k = _check_k(op, k, which, default_k=1)
    sym = _symbol_of(op)
    if sym is not None:
        return sym.vectors(k, which, opts.per_frequency)
    M, N = op.shape
    if which == "smallest":
        return _smallest_zero_padded(op, k, opts, vectors=True)
    vin, vout = _circular_start_vector(op) if which == "largest" else (None, None)
    side = "in" if N <= M else "out"
    return _generic_vectors(op, k, which, opts, v0=vin if side == "in" else vout, v0_side=side)


@singular_vectors.register(Circulant)
def _(op, k=1, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
    return _structured_vectors(op, k, which, _Opts(tol, maxiter, strict, dense, per_frequency))


@singular_vectors.register(ConvND)
def _(op, k=1, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
    return _structured_vectors(op, k, which, _Opts(tol, maxiter, strict, dense, per_frequency))


# ---------------------------------------------------------------- norms, condition numbers
def opnorm(op, **kwargs) -> float:
    """Spectral norm ``sigma_max`` of ``op``; keyword arguments as in :func:`singular_values`."""
    return float(singular_values(op, 1, "largest", **kwargs)[0])


@functools.singledispatch
def cond(op, **kwargs) -> float:
    """2-norm condition number ``sigma_max / sigma_min`` over the ``min(M, N)`` singular values.

    Returns ``inf`` when ``sigma_min`` is zero. Keyword arguments as in
    :func:`singular_values`. Operators with a periodic symbol compute their
    whole spectrum once; others compute the two extremes through
    :func:`singular_values`, so a rule registered there serves ``cond`` too.
    ``cond`` is itself a :func:`functools.singledispatch` function.
    """
    if _symbol_of(op) is not None:
        s = singular_values(op, **kwargs)
        smax, smin = float(s[0]), float(s[-1])
    else:
        smax = float(singular_values(op, 1, "largest", **kwargs)[0])
        smin = float(singular_values(op, 1, "smallest", **kwargs)[0])
    return math.inf if smin == 0 else smax / smin

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
:class:`~structops.ConvND`, any        first the exact structural reductions (independent
                                       channel groups, channel rank, independent parts along
                                       the axes); then, for each part:
:class:`~structops.ConvND`, circular,  batched SVD of ``c_out x (prod(stride) c_in)`` channel
stride dividing the input size         matrices, one per frequency of the ``n / stride`` grid
                                       (polyphase form; stride 1 is the block-circulant case)
:class:`~structops.ConvND`, zero       largest: Lanczos (ARPACK) on the normal operator for
padding (or circular with a stride     ``k + 8`` values, started from the circular layer's top
that does not divide the input)        singular vector plus a random one, block Lanczos when
                                       that fails, every result checked by its residual;
                                       smallest: the banded factorisation of the normal
                                       matrix, a dense SVD for small layers
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

**Structure first.** A layer whose channels split into independent groups,
whose channel matrix is rank deficient, or whose axes split into independent
parts (dilation sub-lattices, non-overlapping windows) is reduced exactly to
smaller layers (:mod:`structops.linalg.structure`): repeated values and
structural zeros are then counted, not searched for.

**Iterative results** come with a residual check. For a computed triplet
``(s, u, v)`` the residuals ``r_1 = ||A v - s u||`` and ``r_2 = ||A^H u - s v||``
bound the distance from ``s`` to a singular value of ``A`` by
``sqrt((r_1^2 + r_2^2) / 2)``; a result is accepted only when that bound is at
most ``tol * s`` (or ``10 sqrt(n) eps sigma_max``). Otherwise :class:`SpectrumNotConvergedError` is
raised (or, with ``strict=False``, a :class:`SpectrumNotConvergedWarning` is
issued and unconverged values are NaN). Lanczos finds extreme singular values
reliably when started well, but like every Krylov method it can in principle
miss one that its start vector does not see.
"""

from __future__ import annotations

import functools
import math
import time
import warnings

import numpy as np

from .._backend import blas_threads, to_numpy
from .._validate import check_memory
from ..operators.circulant import Circulant
from ..operators.conv import ConvND
from ..operators.conv_transpose import ConvTransposeND
from ._common import (
    SpectrumInfo,
    SpectrumNotConvergedError,
    SpectrumNotConvergedWarning,
    _Opts,
    conv64,
    has_kernel,
    not_converged,
    rounding_floor,
    scale_exponent,
    select,
    shape_of,
)
from .circular import circular_start_vector, symbol_of
from .lanczos import largest_svd, lanczos_svd
from .structure import reduce_layer

__all__ = [
    "singular_values",
    "singular_vectors",
    "opnorm",
    "cond",
    "SpectrumNotConvergedError",
    "SpectrumNotConvergedWarning",
    "SpectrumInfo",
]

# Dense fallback: at most this many matrix entries (or a narrow matrix below the
# second limit); the dense SVD of a 4000 x 4000 matrix takes tens of seconds.
_DENSE_MAX_ENTRIES = 2 * 10**7
_DENSE_MAX_NARROW = 2048
_DENSE_MAX_NARROW_ENTRIES = 10**8
# From this min(M, N) on, a dense SVD uses the BLAS library's threads.
_DENSE_THREADED = 1000
# Below this min(M, N) a dense SVD beats Lanczos for the few largest values.
_DENSE_PREFERRED = 400


def _check_k(op, k, which, default_k=None):
    M, N = shape_of(op)
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
    M, N = shape_of(op)
    return ValueError(
        f"{what} of this {M} x {N} {type(op).__name__} has no structured rule and the operator is "
        f"too large for the dense fallback (at most {_DENSE_MAX_ENTRIES:.0e} entries, or min(M, N) <= "
        f"{_DENSE_MAX_NARROW}); ask for a few values with k=..., or pass dense=True to force a dense SVD"
    )


# ---------------------------------------------------------------- dense fallback
def _dense_matrix(op):
    """Dense float64/complex128 host matrix of ``op`` (an array or a linear operator)."""
    M, N = shape_of(op)
    # the matrix, a copy for the SVD and its workspace
    check_memory(3.0 * M * N * (16 if np.dtype(getattr(op, "dtype", np.float64)).kind == "c" else 8),
                 f"the dense SVD of this {M} x {N} operator")
    if has_kernel(op):
        op = conv64(op)
    if hasattr(op, "__array__") and not hasattr(op, "matvec"):
        A = to_numpy(op)
    else:
        M, N = shape_of(op)
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


def _dense_svd(op, k, which, vectors, opts=None):
    A = _dense_matrix(op)
    # small SVDs on the package's BLAS setting (set_blas_threads; threading overhead dominates), large
    # ones on the library's own (a 3136 x 3136 SVD: 13.0 s on one thread, 8.5 s on two, measured)
    with blas_threads(None) if min(A.shape) >= _DENSE_THREADED else blas_threads():
        if not vectors:
            s = np.linalg.svd(A, compute_uv=False)
            if opts is not None:  # backward stable: within the rounding floor
                opts.note("dense SVD", rounding_floor(float(s[0]) if s.size else 0.0, max(A.shape)))
            return select(s, k, which)
        U, s, Vh = np.linalg.svd(A, full_matrices=False)
    sl = slice(0, k) if which == "largest" else slice(len(s) - k, len(s))
    return s[sl], U[:, sl], Vh[sl].conj().T


# ---------------------------------------------------------------- singular_values
@functools.singledispatch
def singular_values(op, k=None, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto",
                    return_info=False):
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
        Accuracy of iterative results (default ``1e-10``): each returned
        ``s_i`` lies within ``max(tol * s_i, 10 sqrt(n) eps sigma_max)`` (``n = max(M, N)``) of a singular
        value (relative to itself, with the rounding level of a
        backward-stable method as the floor). Exact rules (the symbol of
        circular layers, the dense SVD) are accurate to that floor.
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
    return_info : bool
        Also return the certificate: a :class:`SpectrumInfo` with the error
        bound of the values, the methods and structural reductions used and
        the time.

    Returns
    -------
    s : ndarray of float64, shape ``(min(M, N),)`` or ``(k,)``
        Descending in every case: ``singular_values(op, k, "smallest")`` equals
        the last ``k`` entries of ``singular_values(op)``.
    info : SpectrumInfo
        Only with ``return_info=True``.

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
    opts, t0 = _Opts(tol, maxiter, strict, dense, per_frequency, log=[] if return_info else None), time.perf_counter()
    return _finish(_generic_values(op, k, which, opts), opts, t0)


def _on_unit_kernel(op, opts, compute):
    """``(compute(op', opts'), scale)`` with ``op = scale op'`` and ``max |K'|`` in ``[1, 2)`` (:func:`_scaled`),
    the bounds of the notes ``compute`` makes scaled back into ``opts``.

    A power of two, so exact: the normal operator squares the layer, and a kernel of 1e-150 underflowed
    there (block Lanczos refused a reflect-padded layer's sigma_max with a residual of 0.4 sigma_max).
    """
    scaled, scale = _scaled(op)
    if scale == 1.0:
        return compute(op, opts), 1.0
    inner = opts.replace(log=[] if opts.log is not None else None)
    out = compute(scaled, inner)
    for method, bound in inner.log or ():
        opts.note(method, bound * scale)
    return out, scale


def _generic_values(op, k, which, opts):
    if has_kernel(op):
        s, scale = _on_unit_kernel(op, opts, lambda o, inner: _lanczos_or_dense_values(o, k, which, inner))
        return s * scale if scale != 1.0 else s
    return _lanczos_or_dense_values(op, k, which, opts)


def _lanczos_or_dense_values(op, k, which, opts):
    M, N, k = _check_k(op, k, which)
    if k is None:
        if not _dense_ok(M, N, opts):
            raise _too_large(op, "the full spectrum")
        return _dense_svd(op, None, which, False, opts)
    dense_auto = opts.dense is None and min(M, N) <= _DENSE_PREFERRED
    if opts.dense or dense_auto or k >= min(M, N) - 1:
        if opts.dense is False:
            raise ValueError(f"dense=False forbids the dense SVD, the only method for k = {k} >= min(M, N) - 1 "
                             f"of this {M} x {N} {type(op).__name__}; ask for fewer values or allow it")
        if not _dense_ok(M, N, opts) and opts.dense is not True:
            raise _too_large(op, f"the {k} {which} singular values")
        return _dense_svd(op, k, which, False, opts)
    if which == "largest":
        return largest_svd(op, k, opts, False)[0]
    # Lanczos first (0.2 s on a well-conditioned 8 -> 8 layer on 32x32, where the LU's inverse iteration on
    # clustered values took 10 s); where it cannot certify, the sparse LU of a square padded layer
    first = opts.replace(strict=True, log=[] if opts.log is not None else None)
    try:
        s = lanczos_svd(op, k, which, first, False)[0]
    except SpectrumNotConvergedError as e:
        s = _sparse_lu_values(op, k, opts)
        if s is not None:
            return s
        for method, bound in first.log or ():
            if not method.startswith("not certified"):  # (the refusal is noted once, below)
                opts.note(method, bound)
        not_converged(str(e), opts, values=e.values, residual=e.residual)
        return e.values
    for method, bound in first.log or ():
        opts.note(method, bound)
    return s


def _sparse_lu_values(op, k, opts):
    """The ``k`` smallest values of a square padded layer by the sparse LU of its matrix, or None.

    Reflect and replicate padding leave the normal matrix without a kernel
    formula, but the layer's matrix, assembled from its taps, is as sparse as
    a zero-padded one's: its LU resolves the smallest values to rounding
    level (:func:`~structops.linalg.normal.smallest.smallest_singular_values_lu`),
    where Lanczos on products alone did not converge (a random reflect-padded
    8 -> 8 layer on 24x24, cond 1.4e6: refused after 4 s; by the LU, certified
    in 0.6 s). None (Lanczos's refusal then) for other operators, complex
    kernels, layers past :data:`~structops.linalg.normal.lu.LU_MAX_NNZ`, an
    exactly singular matrix, or no certificate.
    """
    from ..operators.pad import PaddedConvND
    from .normal.lu import LU_MAX_NNZ
    from .normal.smallest import smallest_singular_values_lu

    M, N = op.shape
    if not isinstance(op, PaddedConvND) or M != N or np.dtype(op.dtype).kind == "c":
        return None
    if float(M) * int(np.prod(op.kernel.shape[1:])) > LU_MAX_NNZ:
        return None
    try:
        s, info = smallest_singular_values_lu(conv64(op).tosparse("csc"), k=k, tol=opts.tol)
    except np.linalg.LinAlgError:  # exactly singular: Lanczos sees null spaces
        return None
    if not info["converged"]:
        return None
    opts.note("sparse LU of the layer, two-sided inverse iteration", float(info["absolute_error_bound"].max()))
    return s[::-1].copy()


@singular_values.register(np.ndarray)
def _(op, k=None, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto",
      return_info=False):
    if op.ndim != 2:
        raise ValueError(f"expected a 2-D array; got shape {op.shape}")
    opts, t0 = _Opts(tol, maxiter, strict, dense, per_frequency, log=[] if return_info else None), time.perf_counter()
    return _finish(_generic_values(op, k, which, opts), opts, t0)


@singular_values.register(Circulant)
def _(op, k=None, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto",
      return_info=False):
    opts, t0 = _Opts(tol, maxiter, strict, dense, per_frequency, log=[] if return_info else None), time.perf_counter()
    _, _, k = _check_k(op, k, which)
    xp = op.xp
    s = np.sort(to_numpy(xp.abs(op.eigenvalues().astype(np.complex128))).reshape(-1))[::-1]
    opts.note("exact: |fft(c)|", 4 * s.size * np.finfo(np.float64).eps * float(s[0] if s.size else 0.0))
    return _finish(select(s.astype(np.float64), k, which), opts, t0)


@singular_values.register(ConvND)
def _(op, k=None, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto",
      return_info=False):
    opts, t0 = _Opts(tol, maxiter, strict, dense, per_frequency, log=[] if return_info else None), time.perf_counter()
    M, N, k = _check_k(op, k, which)
    red = reduce_layer(op)
    if red is not None:
        return _finish(_reduced_values(red, k, which, opts), opts, t0)
    return _finish(_conv_values(op, k, which, opts), opts, t0)


def _finish(s, opts, t0):
    """``s``, or ``(s, SpectrumInfo)`` when the call asked for the certificate."""
    if opts.log is None:
        return s
    return s, SpectrumInfo.from_log(opts.log, time.perf_counter() - t0)


def _scaled(op):
    """``(op', scale)`` with ``op = scale op'`` and ``max |K'|`` in ``[1, 2)`` (exact: a power of two), for an
    operator with ``kernel`` and ``with_kernel`` (:class:`ConvND`, :class:`~structops.PaddedConvND`)."""
    K = to_numpy(op.kernel)
    e = scale_exponent(K, 20)
    if e == 0:
        return op, 1.0
    if K.dtype.kind == "c":  # ldexp is exact (no overflow of 2**-e for subnormal kernels); real and imaginary parts
        K = np.ldexp(K.real.astype(np.float64), -e) + 1j * np.ldexp(K.imag.astype(np.float64), -e)
    else:
        K = np.ldexp(np.asarray(K, dtype=np.float64), -e)
    return op.with_kernel(K), math.ldexp(1.0, e)


def _conv_values(op, k, which, opts):
    """Singular values of an irreducible layer, computed on its kernel scaled to unit size."""

    def values(op, opts):
        sym = symbol_of(op, memo=True)
        if sym is not None:
            s = select(sym.values(opts.per_frequency), k, which)
            opts.note("exact per-frequency symbol", sym.error_bound)
            return s
        return _zero_padded_values(op, k, which, opts)

    s, scale = _on_unit_kernel(op, opts, values)
    return s * scale if scale != 1.0 else s


def _reduced_values(red, k, which, opts):
    """The union of the blocks' values (with multiplicities) and the structural zeros."""
    for step in red.steps:
        opts.note("reduction: " + step, 0.0)
    if red.perturbation:
        opts.note("reduction: channel-rank truncation", red.perturbation)
    if k is None:
        check_memory(16.0 * (red.zeros + red.count()), "the singular values")
    parts = [np.zeros(red.zeros if k is None else min(red.zeros, k))]  # the zeros that can be selected
    # ``dense`` speaks of the layer as given: its blocks take the method their size calls for
    bopts = opts.replace(dense=None if opts.dense is False else opts.dense)
    blocks = list(red.blocks)
    pruning = which == "largest" and k is not None and len(blocks) > 2
    if pruning:  # the blocks in decreasing order of a rigorous upper bound of their norm
        bounds = [_norm_upper_bound(b) for b, _ in blocks]
        order = np.argsort(bounds)[::-1]
        blocks, bounds = [blocks[i] for i in order], [bounds[i] for i in order]
    found, skipped = [], 0
    for j, (block, mult) in enumerate(blocks):
        if pruning and len(found) >= k:
            kth = np.sort(np.concatenate(found))[::-1][k - 1]
            if bounds[j] < kth * (1 - 1e-9):
                # this block and the rest (smaller bounds) cannot hold any of the k largest values
                skipped = len(blocks) - j
                break
        r = min(block.shape)
        if k is None:
            kb = None
        elif which == "largest":
            kb = min(k, r)
        else:
            kb = min(k - red.zeros, r)
            if kb <= 0:
                continue
        vals = np.repeat(_conv_values(block, kb, which, bopts), mult if k is None else min(mult, k))
        parts.append(vals)
        found.append(vals)
    if skipped:
        opts.note(f"reduction: {skipped} of {len(blocks)} blocks skipped (their norm bound is below the values found)",
                  0.0)
    s = np.sort(np.concatenate(parts))[::-1]
    if k is None:
        return s
    return s[:k] if which == "largest" else s[len(s) - k :]


def _norm_upper_bound(op) -> float:
    """A rigorous upper bound of ``||op||`` for a zero-padded layer (``inf`` for others).

    The layer is a submatrix of the circular layer on its padded input grid
    ``F = n + lo + hi`` (no read wraps around there), whose norm is the
    largest 2-norm of its per-frequency channel matrices on that grid;
    Frobenius norms bound those from above when both channel counts exceed
    one. A relative ``1e-12`` covers the FFT's rounding.
    """
    if not isinstance(op, ConvND) or op.circular:
        return math.inf
    F = tuple(n + lo + hi for n, (lo, hi) in zip(op.in_shape, op.padding))
    scaled, scale = _scaled(op)  # a power of two: no overflow or underflow in the squares
    K = np.asarray(to_numpy(scaled.kernel))
    K = K.astype(np.complex128 if K.dtype.kind == "c" else np.float64)
    H = op.geometry.symbol(K, grid=F, real=False)
    fro = float(np.sqrt(np.max(np.sum(np.abs(H) ** 2, axis=(1, 2))))) if H.size else 0.0
    return fro * (1 + 1e-12) * scale


def _zero_padded_values(op, k, which, opts):
    M, N = op.shape
    if k is None:
        return _generic_values(op, None, which, opts)
    if which == "smallest":
        return _smallest_zero_padded(op, k, opts)
    dense_auto = opts.dense is None and min(M, N) <= _DENSE_PREFERRED
    if opts.dense or dense_auto or k >= min(M, N) - 1:
        return _generic_values(op, k, which, opts)
    vin, vout = circular_start_vector(op)
    side = "in" if N <= M else "out"
    v0 = vin if side == "in" else vout
    return largest_svd(op, k, opts, False, v0=v0, v0_side=side)[0]


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
        vals, info = smallest_singular_values(conv64(op), k=k, tol=opts.tol, maxiter=opts.maxiter)
    except (NotImplementedError, ValueError, TypeError) as e:
        return None, f"the banded normal-matrix solver does not cover it ({e})"
    vals = np.asarray(to_numpy(vals), dtype=np.float64).reshape(-1)
    order = np.argsort(-vals, kind="stable")
    vals = vals[order]
    eb = info.get("absolute_error_bound")
    if info.get("converged", False):
        name = "normal-matrix inverse iteration" + (" (two-sided)" if info.get("two_sided") else "")
        opts.note(name, float(np.max(eb)) if eb is not None else math.inf)
    if not info.get("converged", False):
        return (vals, None, None), (
            f"the {k} smallest singular values of a {M} x {N} zero-padded layer did not reach tol={opts.tol:.1e} "
            f"(error bounds {info.get('error_bound')}, iterations {info.get('iterations')})"
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
        return _dense_svd(op, k, "smallest", vectors, opts)
    res, reason = _normal_smallest(op, k, opts, vectors)
    if res is not None and reason is None:
        return res if vectors else res[0]
    if res is not None:  # values not certified, or vectors not accurate enough: a dense SVD where affordable
        if opts.dense is None and _dense_ok(M, N, opts):
            return _dense_svd(op, k, "smallest", vectors, opts)
        not_converged(reason, opts, values=res[0])
        return res if vectors else res[0]
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
    return _dense_svd(op, k, "smallest", vectors, opts)


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

    Notes
    -----
    Off the exact routes, the products do not determine the other side's
    vectors of values at rounding level: on an operator with a null space,
    ``A v = 0`` leaves the left vector free (it must lie in the null space of
    ``A^H``), and ``u = A v / s`` would be rounding noise. Those vectors are
    found on their own side, as the smallest eigenvectors of ``A A^H``
    orthogonal to the determined ones, and paired with ``V`` by the SVD of
    ``U^H A V``. Every triplet is held to the residual test of the values;
    where it fails, the vectors are refused and the values stay certified
    (:func:`singular_values`).

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
    if has_kernel(op):
        (s, U, V), scale = _on_unit_kernel(
            op, opts, lambda o, inner: _lanczos_or_dense_vectors(o, k, which, inner, v0, v0_side))
        return (s * scale if scale != 1.0 else s), U, V
    return _lanczos_or_dense_vectors(op, k, which, opts, v0, v0_side)


def _lanczos_or_dense_vectors(op, k, which, opts, v0=None, v0_side=None):
    M, N, k = _check_k(op, k, which, default_k=1)
    dense_auto = opts.dense is None and min(M, N) <= _DENSE_PREFERRED
    if opts.dense or dense_auto or k >= min(M, N) - 1:
        if not _dense_ok(M, N, opts) and opts.dense is not True:
            raise _too_large(op, f"the {k} {which} singular vectors")
        return _dense_svd(op, k, which, True, opts)
    if which == "largest":
        return largest_svd(op, k, opts, True, v0=v0, v0_side=v0_side)
    return lanczos_svd(op, k, which, opts, True, v0=v0, v0_side=v0_side)


@singular_vectors.register(np.ndarray)
def _(op, k=1, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
    if op.ndim != 2:
        raise ValueError(f"expected a 2-D array; got shape {op.shape}")
    return _generic_vectors(op, k, which, _Opts(tol, maxiter, strict, dense, per_frequency))


def _structured_vectors(op, k, which, opts):
    _, _, k = _check_k(op, k, which, default_k=1)
    if isinstance(op, ConvND) and reduce_layer(op) is not None:
        return _checked_vectors(op, k, which, opts)
    return _vectors_of_part(op, k, which, opts)


def _checked_vectors(op, k, which, opts):
    """Triplets of a reducible layer by the whole-layer route, their values checked against the certified ones.

    The structural reductions give the values exactly; the vectors come from
    the layer itself (its repeated values as an orthonormal basis of their
    subspace), and are returned only when their values agree with the
    certified ones, so a value the vector route missed is an error, never a
    wrong triplet.
    """
    want, info = singular_values(op, k, which, tol=opts.tol, maxiter=opts.maxiter, strict=True,
                                 dense=opts.dense, per_frequency=opts.per_frequency, return_info=True)
    s, U, V = _vectors_of_part(op, k, which, opts)
    allowed = info.error_bound + max(opts.tol * float(want[0]), rounding_floor(float(want[0]), 1)) + opts.tol * np.abs(want)
    if not np.all(np.abs(np.asarray(s) - want) <= allowed):
        not_converged(
            f"the {k} {which} singular vectors of this {op.shape[0]} x {op.shape[1]} layer: the whole-layer route "
            f"found the values {np.asarray(s)}, not the certified {want} (a block or repeated spectrum it did not "
            "resolve); ask for the values, or for vectors of fewer values",
            opts, values=want)
    return s, U, V


def _vectors_of_part(op, k, which, opts):
    sym = symbol_of(op, memo=True)
    if sym is not None:
        return sym.vectors(k, which, opts.per_frequency)
    M, N = op.shape
    if which == "smallest":
        return _smallest_zero_padded(op, k, opts, vectors=True)
    vin, vout = circular_start_vector(op) if which == "largest" else (None, None)
    side = "in" if N <= M else "out"
    return _generic_vectors(op, k, which, opts, v0=vin if side == "in" else vout, v0_side=side)


@singular_vectors.register(Circulant)
def _(op, k=1, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
    return _structured_vectors(op, k, which, _Opts(tol, maxiter, strict, dense, per_frequency))


@singular_vectors.register(ConvND)
def _(op, k=1, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
    return _structured_vectors(op, k, which, _Opts(tol, maxiter, strict, dense, per_frequency))


# ---------------------------------------------------------------- norms, condition numbers
@singular_values.register(ConvTransposeND)
def _(op, k=None, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto",
      return_info=False):
    # op is the transpose of op.conv (conjugated kernel) with zero rows for the output padding: the same
    # nonzero singular values, and zeros up to min(op.shape)
    M, N, k = _check_k(op, k, which)
    extra = min(op.shape) - min(op.conv.shape)
    kc = None if k is None else (min(k, min(op.conv.shape)) if which == "largest" else k - min(k, extra))
    zeros = (extra if k is None else (max(0, k - kc) if which == "largest" else min(k, extra)))
    kw = dict(tol=tol, maxiter=maxiter, strict=strict, dense=dense, per_frequency=per_frequency,
              return_info=return_info)
    if kc == 0:
        s, info = np.zeros(0), None
    else:
        out = singular_values(op.conv, kc, which, **kw)
        s, info = out if return_info else (out, None)
    s = np.concatenate([np.asarray(s, dtype=np.float64), np.zeros(zeros)])
    if not return_info:
        return s
    if info is None:
        info = SpectrumInfo(error_bound=0.0, methods=(("zero by structure", 0.0),), reductions=(), seconds=0.0,
                            certified=True)
    return s, info


@singular_vectors.register(ConvTransposeND)
def _(op, k=1, which="largest", *, tol=None, maxiter=None, strict=True, dense=None, per_frequency="auto"):
    # op = conv^H (then zero rows): conv v = s u  <=>  op u = s v; the roles of U and V swap
    if which == "smallest" and min(op.shape) > min(op.conv.shape):
        raise NotImplementedError(
            "the smallest singular vectors of a transposed layer whose output padding adds zero singular values"
        )
    s, U, V = singular_vectors(op.conv, k, which, tol=tol, maxiter=maxiter, strict=strict, dense=dense,
                               per_frequency=per_frequency)
    rows = op.written_rows()
    if rows is not None:
        left = np.zeros((op.shape[0], V.shape[1]), dtype=V.dtype)
        left[rows] = V
        V = left
    return s, V, U


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

    Where ``sigma_min`` is within its certified error bound ``e`` of zero
    (a layer singular to working precision: ``e`` is about ``10 sqrt(n)
    eps sigma_max``), ``sigma_max / sigma_min`` is an estimate only: a
    ``RuntimeWarning`` gives the certified lower bound ``(sigma_max -
    e_max) / (sigma_min + e)`` alongside.
    """
    kwargs.pop("return_info", None)
    if symbol_of(op) is not None:
        s, err = _values_and_bound(op, None, "largest", kwargs)
        smax, smin, err_max, err_min = float(s[0]), float(s[-1]), err, err
    else:
        s, err_max = _values_and_bound(op, 1, "largest", kwargs)
        smax = float(s[0])
        s, err_min = _values_and_bound(op, 1, "smallest", kwargs)
        smin = float(s[0])
    value = math.inf if smin == 0 else smax / smin
    if smax > 0 and err_min > 0 and smin <= err_min:
        lower = max(smax - err_max, 0.0) / (smin + err_min)
        warnings.warn(f"sigma_min = {smin:.3g} is within its error bound {err_min:.2g} of zero: the condition "
                      f"number is only known to be >= {lower:.3g} ({value:.3g} returned)", RuntimeWarning, stacklevel=3)
    return value


def _values_and_bound(op, k, which, kwargs):
    """``singular_values(op, k, which)`` and its certified error bound (0 for a rule that gives none)."""
    got = singular_values(op, k, which, return_info=True, **kwargs)
    if isinstance(got, tuple) and len(got) == 2 and isinstance(got[1], SpectrumInfo):
        return got[0], float(got[1].error_bound)
    return got, 0.0  # a registered rule without certificates

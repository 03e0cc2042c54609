"""Exact smallest singular values of zero-padded convolution layers.

The normal matrix of a zero-padded layer ``A`` (``A^T A`` on the input side,
``A A^T`` on the output side) has entries that are masked kernel
autocorrelations: with unknowns ordered pixel-major, channels innermost,

.. math::

    (A^T A)[(q, i), (q', i')] = \\sum_{d, d':\\ (d - d')\\delta = q - q'}
        [\\text{tap pair } (d, d') \\text{ valid at } q']\\,
        (K_d^T K_{d'})[i, i'],

where ``K_d = K[:, :, d]`` is the ``(c_out, c_in)`` channel matrix of tap
``d`` and a tap pair is valid at column pixel ``q'`` when both pixels read by
one output position lie inside the image (a per-axis condition). The matrix is
assembled directly from these blocks, never from a sparse product, in one of
two sparse-direct forms:

* ``"band"``: LAPACK lower band storage (``scipy.linalg.cholesky_banded``
  layout), pixels flattened with the axis order that minimises the bandwidth;
  factorised by ``dpbtrf``. Cost ``~ n kd^2``.
* ``"nd"``: geometric nested dissection of the pixel grid (separators are
  slabs as wide as the coupling reach) and a multifrontal Cholesky with dense
  fronts (``dpotrf``/``dtrsm``/``dsyrk``). Fewer flops than the band for 2-D and
  N-D images; the default when the operation count says so.

The smallest eigenpairs of the normal matrix are found by block inverse
subspace iteration with the factor, with a Rayleigh-Ritz step on the layer
itself (an SVD of ``A Q``, so the condition number is not squared in the
values), and each singular triplet is checked with the matrix-free operator:
``r = ||A^T u - s v||`` with ``u = A v / s``. Some singular value lies within
``r`` of ``s``; with the gap ``g`` to the rest of the computed spectrum the
error is at most ``r^2 / g``.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import blas as _blas
from scipy.linalg import lapack as _lapack

from .._backend import blas_threads, to_numpy

__all__ = [
    "BandedNormal",
    "normal_matrix_banded",
    "normal_solver",
    "smallest_singular_values",
    "sigma_min",
]

_EPS = np.finfo(np.float64).eps

# BLAS threads for the factorisation and the solves. On small machines the
# single-threaded OpenBLAS band/dense routines measured fastest (a 65536 x 65536
# band factorisation: 22 s on one thread, 71 s on two); ``None`` leaves the
# library's own setting alone.
FACTOR_THREADS: int | None = 1


# ---------------------------------------------------------------------------
# Geometry of the normal matrix: tap pairs, offsets, per-axis masks, blocks
# ---------------------------------------------------------------------------
class _Gram:
    """Entries of the normal matrix of a zero-padded layer, grouped by pixel offset.

    ``side="input"``: ``A^T A`` on the input grid, ``c = c_in``;
    ``side="output"``: ``A A^T`` on the output grid, ``c = c_out``.
    ``groups`` maps an offset vector ``delta`` (row pixel minus column pixel)
    to ``(W, C)``: ``W`` a list of per-pair per-axis 0/1 masks over the column
    pixel coordinates, ``C`` the stacked ``(n_pairs, c, c)`` channel blocks.
    """

    def __init__(self, kernel, in_shape, out_shape, stride, dilation, padding, side):
        K = np.asarray(kernel, dtype=np.float64)
        co, ci = K.shape[:2]
        ks = K.shape[2:]
        D = len(ks)
        T = int(np.prod(ks))
        self.side, self.D = side, D
        Kt = K.reshape(co, ci, T)
        if side == "input":
            self.grid, self.c = tuple(in_shape), ci
            Km = Kt.transpose(0, 2, 1).reshape(co, T * ci)  # column (t, i)
            Cfull = (Km.T @ Km).reshape(T, ci, T, ci)
        else:
            self.grid, self.c = tuple(out_shape), co
            Km = Kt.transpose(2, 0, 1).reshape(T * co, ci)  # row (t, o)
            Cfull = (Km @ Km.T).reshape(T, co, T, co)
        # per axis: (d, d') -> (offset, mask over the column grid) or None
        axis_pairs = []
        for ax in range(D):
            n, m, s, dl, lo = in_shape[ax], out_shape[ax], stride[ax], dilation[ax], padding[ax][0]
            table = {}
            for d in range(ks[ax]):
                for dp in range(ks[ax]):
                    if side == "input":
                        off = (d - dp) * dl
                        qp = np.arange(n)
                        sh = qp + lo - dp * dl
                        mask = (sh % s == 0) & (sh >= 0) & (sh // s < m) & (qp + off >= 0) & (qp + off < n)
                    else:
                        if ((dp - d) * dl) % s:
                            table[d, dp] = None
                            continue
                        off = (dp - d) * dl // s
                        pp = np.arange(m)
                        q = pp * s + dp * dl - lo
                        mask = (q >= 0) & (q < n) & (pp + off >= 0) & (pp + off < m)
                    table[d, dp] = (off, mask) if mask.any() else None
            axis_pairs.append(table)
        taps = list(itertools.product(*[range(k) for k in ks]))
        groups = {}
        for t, d in enumerate(taps):
            for tp, dp in enumerate(taps):
                per = [axis_pairs[ax][d[ax], dp[ax]] for ax in range(D)]
                if any(p is None for p in per):
                    continue
                delta = tuple(p[0] for p in per)
                g = groups.setdefault(delta, ([], []))
                g[0].append([p[1] for p in per])
                g[1].append(Cfull[t, :, tp, :])
        self.groups = {dl: (W, np.ascontiguousarray(np.array(C))) for dl, (W, C) in groups.items()}
        self.reach = tuple(max(abs(dl[ax]) for dl in self.groups) for ax in range(D)) if self.groups else (0,) * D
        self.npix = int(np.prod(self.grid))
        self.n = self.npix * self.c

    def blocks(self, delta, coords):
        """Channel blocks ``(len, c, c)`` at column pixels ``coords`` (tuple of D index arrays)."""
        W, C = self.groups[delta]
        w = np.empty((len(W), coords[0].shape[0]))
        for j, masks in enumerate(W):
            v = masks[0][coords[0]].astype(np.float64)
            for ax in range(1, self.D):
                v *= masks[ax][coords[ax]]
            w[j] = v
        return (w.T @ C.reshape(len(W), -1)).reshape(-1, self.c, self.c), w.any(axis=0)


def _resolve_side(op, side):
    M, N = op.shape
    if side in ("input", "ata", "AtA"):
        return "input"
    if side in ("output", "aat", "AAt"):
        return "output"
    if side != "auto":
        raise ValueError(f"side={side!r}; expected 'auto', 'input' (M^T M) or 'output' (M M^T)")
    if N < M:
        return "input"
    if M < N:
        return "output"
    return None  # square: decided by the bandwidth


def _check_op(op):
    from ..operators.conv import ConvND

    if not isinstance(op, ConvND):
        raise TypeError(f"expected a structops ConvND layer; got {type(op).__name__}")
    if op.circular:
        raise ValueError(
            "padding='circular' gives a block circulant layer whose singular values follow from the "
            "FFT of the kernel; this routine is for zero padding"
        )
    K = to_numpy(op.kernel)
    if np.iscomplexobj(K):
        raise ValueError("complex kernels are not supported here; expected a real kernel")
    return np.asarray(K, dtype=np.float64)


def _gram(op, side):
    K = _check_op(op)
    return _Gram(K, op.in_shape, op.out_shape, op.stride, op.dilation, op.padding, side), K


def _host_op(op, K):
    """A float64 NumPy copy of the layer for the checks (same geometry)."""
    if K is op.kernel and op.kernel.dtype == np.float64:
        return op
    return op.with_kernel(K)


# ---------------------------------------------------------------------------
# Band storage
# ---------------------------------------------------------------------------
def _band_perm(gram):
    """Axis order (slowest first) minimising the bandwidth, and the bandwidth ``kd``."""
    best = None
    for perm in itertools.permutations(range(gram.D)):
        sizes = [gram.grid[a] for a in perm]
        strides = [int(np.prod(sizes[j + 1 :], dtype=np.int64)) for j in range(gram.D)]
        f = max((abs(sum(dl[a] * st for a, st in zip(perm, strides))) for dl in gram.groups), default=0)
        kd = f * gram.c + gram.c - 1
        if best is None or kd < best[1]:
            best = (perm, kd)
    return best


@dataclass
class BandedNormal:
    """Normal matrix of a zero-padded layer in LAPACK lower band storage.

    Attributes
    ----------
    ab : ndarray, shape ``(kd + 1, n)``, Fortran order
        ``ab[r - c, c] = G[r, c]`` for ``c <= r <= c + kd`` (the layout of
        ``scipy.linalg.cholesky_banded(ab, lower=True)``), in the band ordering.
    kd : int
        Number of sub-diagonals.
    side : {"input", "output"}
        ``"input"``: ``G = M^T M`` (``n = N``); ``"output"``: ``G = M M^T``.
    perm : ndarray of int, shape ``(n,)``
        ``perm[j]`` is the operator-space index (C order of ``dims`` or
        ``dimsd``) of band unknown ``j``: ``G_band = G_op[perm][:, perm]``.
    axes : tuple of int
        Spatial axes of the flattening, slowest first.
    """

    ab: np.ndarray
    kd: int
    side: str
    perm: np.ndarray
    axes: tuple = field(default=())

    @property
    def n(self) -> int:
        return self.ab.shape[1]

    def toarray(self, order: str = "operator") -> np.ndarray:
        """Dense symmetric ``(n, n)`` matrix, in the operator's ordering (``order="band"``: band ordering)."""
        n, kd = self.n, self.kd
        G = np.zeros((n, n))
        for r in range(kd + 1):
            j = np.arange(n - r)
            G[j + r, j] = self.ab[r, : n - r]
            G[j, j + r] = self.ab[r, : n - r]
        if order == "band":
            return G
        out = np.empty_like(G)
        out[np.ix_(self.perm, self.perm)] = G
        return out


def _assemble_band(gram, perm, kd, pad=0):
    """Lower band storage of ``G`` in the ordering ``perm`` (plus ``pad`` identity columns)."""
    c, npix = gram.c, gram.npix
    sizes = [gram.grid[a] for a in perm]
    strides = [int(np.prod(sizes[j + 1 :], dtype=np.int64)) for j in range(gram.D)]
    # band-ordered pixels -> natural coordinates
    bc = np.unravel_index(np.arange(npix), sizes)
    coords = [None] * gram.D
    for j, a in enumerate(perm):
        coords[a] = bc[j]
    coords = tuple(coords)
    n = npix * c
    ab = np.zeros((kd + 1, n + pad), order="F")
    ab3 = ab[:, :n].reshape((kd + 1, c, npix), order="F")  # ab3[r, i', q'] = ab[r, q' c + i']
    # (two offsets may share a flat offset when 2 * reach >= an axis length; their
    # masks are then disjoint, so the blocks are accumulated)
    for delta in gram.groups:
        f = sum(delta[a] * st for a, st in zip(perm, strides))
        if f < 0:
            continue
        B, _ = gram.blocks(delta, coords)  # (npix, c_row, c_col)
        if f == 0:
            for ip in range(c):
                ab3[0 : c - ip, ip, :] += B[:, ip:, ip].T
        else:
            for ip in range(c):
                ab3[f * c - ip : f * c - ip + c, ip, :] += B[:, :, ip].T
    if pad:
        ab[0, n:] = 1.0
    # operator index of band unknown j = (band pixel p, channel i): i * npix + natural_flat(p)
    nat = np.ravel_multi_index(coords, gram.grid)
    permv = (np.arange(c)[None, :] * npix + nat[:, None]).reshape(-1)
    return ab, permv


def normal_matrix_banded(op, side="auto"):
    """The normal matrix of a zero-padded layer, assembled directly in band storage.

    Parameters
    ----------
    op : ConvND
        Zero padding (any stride, dilation, channels, 1-D/2-D/N-D).
    side : {"auto", "input", "output"}
        ``"input"``: ``M^T M`` (``N x N``); ``"output"``: ``M M^T`` (``M x M``);
        ``"auto"``: the smaller one (for a square layer, the narrower band).

    Returns
    -------
    BandedNormal
        Unknowns ordered pixel-major with channels innermost, the image
        flattened with the axis order of smallest bandwidth; ``perm`` maps
        back to the operator's ordering.

    Examples
    --------
    >>> import numpy as np, structops
    >>> from structops.linalg.normal import normal_matrix_banded
    >>> op = structops.Conv2D(np.ones((2, 3, 3, 3)), (5, 7))
    >>> G = normal_matrix_banded(op)
    >>> G.side, G.kd, G.ab.shape
    ('output', 25, (26, 70))
    """
    s = _resolve_side(op, side)
    sides = [s] if s else ["input", "output"]
    best = None
    for sd in sides:
        gram, _ = _gram(op, sd)
        perm, kd = _band_perm(gram)
        if best is None or kd < best[2]:
            best = (gram, perm, kd)
    gram, perm, kd = best
    ab, permv = _assemble_band(gram, perm, kd)
    return BandedNormal(ab=ab, kd=kd, side=gram.side, perm=permv, axes=tuple(perm))


class _BandFactor:
    """Cholesky factor of the band normal matrix (LAPACK ``dpbtrf``)."""

    method = "band"

    def __init__(self, gram, shift=0.0):
        perm, kd = _band_perm(gram)
        ab, self.perm = _assemble_band(gram, perm, kd)
        if shift:
            ab[0] += shift
        self.kd = kd
        with blas_threads(FACTOR_THREADS):
            cb, info = _lapack.dpbtrf(ab, lower=1, overwrite_ab=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"band Cholesky failed at column {info}")
        self.cb = cb
        self.nbytes = cb.nbytes
        self.flops = float(gram.n) * kd * kd

    def solve(self, X):
        """``G^{-1} X`` for ``X`` ``(n, r)`` in the operator ordering."""
        Xb = np.asfortranarray(X[self.perm])
        with blas_threads(FACTOR_THREADS):
            Y, info = _lapack.dpbtrs(self.cb, Xb, lower=1, overwrite_b=1)
        out = np.empty_like(Y)
        out[self.perm] = Y
        return out


# ---------------------------------------------------------------------------
# Nested dissection, multifrontal Cholesky
# ---------------------------------------------------------------------------
def _front_cost(s, b):
    return s**3 / 3.0 + b * s * s + b * b * s


class _NDPlan:
    """Geometric nested dissection of the pixel grid, chosen to minimise flops."""

    def __init__(self, grid, reach, c, leaf=256):
        self.grid, self.reach, self.c = tuple(grid), tuple(max(r, 1) for r in reach), c
        self.leaf = leaf
        self._memo = {}

    def halo(self, lo, hi):
        hlo = tuple(max(0, l - r) for l, r in zip(lo, self.reach))
        hhi = tuple(min(n, h + r) for h, r, n in zip(hi, self.reach, self.grid))
        return hlo, hhi

    def _size(self, lo, hi):
        return int(np.prod([h - l for l, h in zip(lo, hi)]))

    def best(self, lo, hi):
        key = (lo, hi)
        if key in self._memo:
            return self._memo[key]
        c = self.c
        npix = self._size(lo, hi)
        hlo, hhi = self.halo(lo, hi)
        nb = (self._size(hlo, hhi) - npix) * c
        opts = []
        if npix * c <= self.leaf:
            opts.append((_front_cost(npix * c, nb), None))
        else:
            for ax in range(len(self.grid)):
                e, r = hi[ax] - lo[ax], self.reach[ax]
                if e < r + 2:
                    continue
                mid = lo[ax] + (e - r) // 2
                for m in sorted({mid - 1, mid, mid + 1}):
                    if m <= lo[ax] or m + r >= hi[ax]:
                        continue
                    hi1 = hi[:ax] + (m,) + hi[ax + 1 :]
                    lo2 = lo[:ax] + (m + r,) + lo[ax + 1 :]
                    s = npix // e * r * c
                    cost = self.best(lo, hi1)[0] + self.best(lo2, hi)[0] + _front_cost(s, nb)
                    opts.append((cost, (ax, m)))
            if not opts:
                opts.append((_front_cost(npix * c, nb), None))
        res = min(opts, key=lambda t: t[0])
        self._memo[key] = res
        return res


def _box_pixels(lo, hi, grid):
    """Natural flat indices and coordinates of the pixels of a box (C order)."""
    rng = [np.arange(l, h) for l, h in zip(lo, hi)]
    mesh = np.meshgrid(*rng, indexing="ij")
    coords = tuple(m.reshape(-1) for m in mesh)
    return np.ravel_multi_index(coords, grid), coords


class _NDFactor:
    """Multifrontal Cholesky of the normal matrix with a geometric nested dissection.

    Unknown ``p * c + i`` is channel ``i`` of natural-order pixel ``p``. Each
    front holds its separator pixels ``S`` and the halo ``B`` of its region
    (the ancestors it couples to); it stores ``L_SS`` and ``L_BS``.
    """

    method = "nd"

    def __init__(self, gram, shift=0.0, leaf=256):
        self.gram, self.shift = gram, shift
        self.c = gram.c
        self.plan = _NDPlan(gram.grid, gram.reach, gram.c, leaf)
        root = (tuple(0 for _ in gram.grid), tuple(gram.grid))
        self.flops = self.plan.best(*root)[0]
        self.nodes = []
        self._where = np.full(gram.npix, -1, dtype=np.int64)
        self._deltas = list(gram.groups)
        with blas_threads(FACTOR_THREADS):
            self._factor(*root)
        self.nbytes = sum(L.nbytes + LB.nbytes for _, _, L, LB in self.nodes)
        self._where = None
        # operator ordering (channel-major) <-> internal (pixel-major)
        npix, c = gram.npix, gram.c
        self.perm = (np.arange(c)[None, :] * npix + np.arange(npix)[:, None]).reshape(-1)

    def _front_sets(self, lo, hi):
        """Separator pixels (with coordinates), halo pixels and the split of a box."""
        gram = self.gram
        split = self.plan.best(lo, hi)[1]
        if split is None:
            S_pix, S_coords = _box_pixels(lo, hi, gram.grid)
        else:
            ax, m = split
            r = self.plan.reach[ax]
            S_pix, S_coords = _box_pixels(lo[:ax] + (m,) + lo[ax + 1 :], hi[:ax] + (m + r,) + hi[ax + 1 :], gram.grid)
        hlo, hhi = self.plan.halo(lo, hi)
        H_pix, _ = _box_pixels(hlo, hhi, gram.grid)
        hc = np.unravel_index(H_pix, gram.grid)
        inbox = np.ones(H_pix.shape[0], dtype=bool)
        for ax in range(gram.D):
            inbox &= (hc[ax] >= lo[ax]) & (hc[ax] < hi[ax])
        return split, S_pix, S_coords, H_pix[~inbox]

    def _factor(self, lo, hi, B_pix=None):
        """Factor the subtree of box ``[lo, hi)``; ``B_pix`` its halo, ordered as in the parent front.

        Returns the update matrix (lower triangle; the strict upper triangle is
        zero) on ``B_pix``, Fortran order.
        """
        gram, c = self.gram, self.c
        split, S_pix, S_coords, B0 = self._front_sets(lo, hi)
        if B_pix is None:
            B_pix = B0
        front_pix = np.concatenate([S_pix, B_pix])
        ns_p, nb_p = S_pix.shape[0], B_pix.shape[0]
        nf_p = ns_p + nb_p
        # children first; their halos ordered by position in this front, so that
        # lower triangles map to lower triangles
        updates = []
        if split is not None:
            ax, m = split
            r = self.plan.reach[ax]
            rank = np.full(gram.npix, -1, dtype=np.int64)
            rank[front_pix] = np.arange(nf_p)
            for clo, chi in ((lo, hi[:ax] + (m,) + hi[ax + 1 :]), (lo[:ax] + (m + r,) + lo[ax + 1 :], hi)):
                cB = self._front_sets(clo, chi)[3]
                cpos = rank[cB]
                if np.any(cpos < 0):  # pragma: no cover - a geometry bug
                    raise AssertionError("child halo outside the parent front")
                o = np.argsort(cpos, kind="stable")
                U = self._factor(clo, chi, cB[o])
                updates.append((cpos[o], U))
            del rank
        ns, nb = ns_p * c, nb_p * c
        # the front in three Fortran-ordered pieces [[FSS, .], [FBS, FBB]]; each
        # becomes L_SS, L_BS and the update matrix in place. Their transposes are
        # C-ordered and indexed [col pixel, ., row pixel, .].
        FSS = np.zeros((ns, ns), order="F")
        FBS = np.zeros((nb, ns), order="F")
        FBB = np.zeros((nb, nb), order="F")
        tSS = FSS.T.reshape(ns_p, c, ns_p, c)
        tBS = FBS.T.reshape(ns_p, c, nb_p, c)
        where = self._where
        where[front_pix] = np.arange(nf_p)
        for delta in self._deltas:  # original entries: columns S, rows S and B
            blocks, nz = gram.blocks(delta, S_coords)
            if not nz.any():
                continue
            rc = [S_coords[ax] + delta[ax] for ax in range(gram.D)]
            ok = nz.copy()
            for ax in range(gram.D):
                ok &= (rc[ax] >= 0) & (rc[ax] < gram.grid[ax])
            idx = np.nonzero(ok)[0]
            rpos = where[np.ravel_multi_index(tuple(x[idx] for x in rc), gram.grid)]
            v = (rpos >= 0) & (rpos < ns_p)
            tSS[idx[v], :, rpos[v], :] = blocks[idx[v]].transpose(0, 2, 1)
            v = rpos >= ns_p
            tBS[idx[v], :, rpos[v] - ns_p, :] = blocks[idx[v]].transpose(0, 2, 1)
        where[front_pix] = -1
        del tSS, tBS
        if self.shift:
            d = np.arange(ns)
            FSS[d, d] += self.shift
        while updates:  # extend-add by contiguous runs, freeing each update as it goes
            pos, Uc = updates.pop()
            cut = np.nonzero((np.diff(pos) != 1) | (pos[1:] == ns_p))[0] + 1
            runs = [(a * c, b * c, pos[a] * c) for a, b in zip(np.r_[0, cut], np.r_[cut, pos.shape[0]])]
            for a0, a1, p0 in runs:  # columns
                if p0 < ns:
                    for b0, b1, q0 in runs:  # rows
                        if b1 <= a0:  # strictly upper: zero
                            continue
                        if q0 < ns:
                            FSS[q0 : q0 + b1 - b0, p0 : p0 + a1 - a0] += Uc[b0:b1, a0:a1]
                        else:
                            FBS[q0 - ns : q0 - ns + b1 - b0, p0 : p0 + a1 - a0] += Uc[b0:b1, a0:a1]
                else:
                    for b0, b1, q0 in runs:
                        if b1 <= a0:
                            continue
                        FBB[q0 - ns : q0 - ns + b1 - b0, p0 - ns : p0 - ns + a1 - a0] += Uc[b0:b1, a0:a1]
            del Uc
        L, info = _lapack.dpotrf(FSS, lower=1, clean=1, overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"front Cholesky failed (pivot {info})")
        S_idx = (S_pix[:, None] * c + np.arange(c)[None, :]).reshape(-1)
        B_idx = (B_pix[:, None] * c + np.arange(c)[None, :]).reshape(-1)
        if nb:
            LB = _blas.dtrsm(1.0, L, FBS, side=1, lower=1, trans_a=1, overwrite_b=1)
            U = _blas.dsyrk(-1.0, LB, beta=1.0, c=FBB, lower=1, overwrite_c=1)
        else:
            LB, U = FBS, None
        self.nodes.append((S_idx, B_idx, L, LB))
        return U

    def solve_internal(self, X):
        """``G^{-1} X`` in the internal (pixel-major) ordering; ``X`` ``(n, r)``, overwritten."""
        for S, B, L, LB in self.nodes:
            y = _blas.dtrsm(1.0, L, np.asfortranarray(X[S]), lower=1)
            X[S] = y
            if B.shape[0]:
                X[B] -= LB @ y
        for S, B, L, LB in reversed(self.nodes):
            z = X[S]
            if B.shape[0]:
                z = z - LB.T @ X[B]
            X[S] = _blas.dtrsm(1.0, L, np.asfortranarray(z), lower=1, trans_a=1)
        return X

    def solve(self, X):
        """``G^{-1} X`` for ``X`` ``(n, r)`` in the operator ordering."""
        with blas_threads(FACTOR_THREADS):
            Y = self.solve_internal(np.ascontiguousarray(X[self.perm]))
        out = np.empty_like(Y)
        out[self.perm] = Y
        return out


def _band_flops(gram):
    _, kd = _band_perm(gram)
    n = gram.n
    return float(n) * min(kd, n) ** 2


def _factorize(gram, method, shift=0.0):
    if method == "auto":
        nd_flops = _NDPlan(gram.grid, gram.reach, gram.c).best(tuple(0 for _ in gram.grid), tuple(gram.grid))[0]
        method = "nd" if nd_flops < 0.8 * _band_flops(gram) else "band"
    if method == "band":
        return _BandFactor(gram, shift)
    if method == "nd":
        return _NDFactor(gram, shift)
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
    gram, _ = _gram(op, "input")
    fac = _factorize(gram, method, float(shift))

    def solve(X):
        X = np.asarray(X, dtype=np.float64)
        Y = fac.solve(X.reshape(X.shape[0], -1))
        return Y.reshape(X.shape)

    return solve


# ---------------------------------------------------------------------------
# Smallest singular values
# ---------------------------------------------------------------------------
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
        ``10 eps ||A||`` (numerically zero singular values).
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
        per value), ``error_bound`` (relative, per value), ``factor_bytes``,
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
    K = _check_op(op)
    M, N = op.shape
    n_small = min(M, N)
    k = int(k)
    if not 1 <= k < n_small:
        raise ValueError(f"k={k}; expected 1 <= k < min(M, N) = {n_small}")
    maxiter = 50 if maxiter is None else int(maxiter)
    p = min(n_small, block if block is not None else max(2 * k, k + 6))
    if p < k:
        raise ValueError(f"block={block} is smaller than k={k}")
    A = _host_op(op, K)
    side = _resolve_side(op, "auto")
    if side is None:  # square: the side with the narrower band
        grams = [
            _Gram(K, op.in_shape, op.out_shape, op.stride, op.dilation, op.padding, sd) for sd in ("input", "output")
        ]
        gram = min(grams, key=lambda g: _band_perm(g)[1])
        side = gram.side
    else:
        gram = _Gram(K, op.in_shape, op.out_shape, op.stride, op.dilation, op.padding, side)
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
        shift = 64 * _EPS * anorm**2 * max(1, int(np.prod(op.kernel_size)))
        fac = _factorize(gram, method, shift)
    t_factor = time.perf_counter() - tf
    # block inverse subspace iteration, Rayleigh-Ritz on the layer itself
    rng = np.random.default_rng(seed)
    n = gram.n
    V = rng.standard_normal((n, p))
    n_solves = 0
    floor = 10 * _EPS * anorm  # the rounding level of any backward-stable method
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
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

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

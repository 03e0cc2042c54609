"""Geometric nested dissection of the pixel grid and a multifrontal Cholesky factor with dense fronts."""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas as _blas
from scipy.linalg import lapack as _lapack

from ..._backend import blas_threads
from . import gram as _gram_mod


def _front_cost(s, b):
    return s**3 / 3.0 + b * s * s + b * b * s


class NDPlan:
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


class NDFactor:
    """Multifrontal Cholesky of the normal matrix with a geometric nested dissection.

    Unknown ``p * c + i`` is channel ``i`` of natural-order pixel ``p``. Each
    front holds its separator pixels ``S`` and the halo ``B`` of its region
    (the ancestors it couples to); it stores ``L_SS`` and ``L_BS``.
    """

    method = "nd"

    def __init__(self, gram, shift=0.0, leaf=256):
        self.gram, self.shift = gram, shift
        self.c = gram.c
        self.plan = NDPlan(gram.grid, gram.reach, gram.c, leaf)
        root = (tuple(0 for _ in gram.grid), tuple(gram.grid))
        self.flops = self.plan.best(*root)[0]
        self.nodes = []
        self._where = np.full(gram.npix, -1, dtype=np.int64)
        self._deltas = list(gram.groups)
        # threads pay off on large fronts only (small BLAS calls lose to the threading overhead)
        big = self.flops >= _gram_mod.FRONT_THREADS_MIN_FLOPS
        with blas_threads(_gram_mod.FRONT_THREADS if big else _gram_mod.FACTOR_THREADS):
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
        with blas_threads(_gram_mod.FACTOR_THREADS):
            Y = self.solve_internal(np.ascontiguousarray(X[self.perm]))
        out = np.empty_like(Y)
        out[self.perm] = Y
        return out

"""LAPACK band storage of the normal matrix (axis order of least bandwidth) and its banded Cholesky factor."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import lapack as _lapack

from ..._backend import blas_threads
from . import gram as _gram_mod
from .gram import gram_for, resolve_side


def band_perm(gram):
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
    s = resolve_side(op, side)
    sides = [s] if s else ["input", "output"]
    best = None
    for sd in sides:
        gram, _ = gram_for(op, sd)
        perm, kd = band_perm(gram)
        if best is None or kd < best[2]:
            best = (gram, perm, kd)
    gram, perm, kd = best
    ab, permv = _assemble_band(gram, perm, kd)
    return BandedNormal(ab=ab, kd=kd, side=gram.side, perm=permv, axes=tuple(perm))


class BandFactor:
    """Cholesky factor of the band normal matrix (LAPACK ``dpbtrf``)."""

    method = "band"

    def __init__(self, gram, shift=0.0):
        perm, kd = band_perm(gram)
        ab, self.perm = _assemble_band(gram, perm, kd)
        if shift:
            ab[0] += shift
        self.kd = kd
        with blas_threads(_gram_mod.FACTOR_THREADS):
            cb, info = _lapack.dpbtrf(ab, lower=1, overwrite_ab=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"band Cholesky failed at column {info}")
        self.cb = cb
        self.nbytes = cb.nbytes
        self.flops = float(gram.n) * kd * kd

    def solve(self, X):
        """``G^{-1} X`` for ``X`` ``(n, r)`` in the operator ordering."""
        Xb = np.asfortranarray(X[self.perm])
        with blas_threads(_gram_mod.FACTOR_THREADS):
            Y, info = _lapack.dpbtrs(self.cb, Xb, lower=1, overwrite_b=1)
        out = np.empty_like(Y)
        out[self.perm] = Y
        return out


def band_flops(gram):
    _, kd = band_perm(gram)
    n = gram.n
    return float(n) * min(kd, n) ** 2

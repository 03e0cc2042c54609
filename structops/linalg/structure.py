r"""Exact reductions of a convolution layer into smaller, independent layers.

Each reduction is a change of basis of the input and output spaces by
permutations and orthogonal matrices, so the layer's singular values are the
union of those of the smaller layers, plus zeros:

0. **Dead taps.** Kernel taps that read only padding (a 3x3 kernel on a
   1x1 image) are cut away, the padding shifted: the same matrix.
   **Groups.** A grouped layer (``groups = g``) is the direct sum of its
   ``g`` groups, each an ungrouped layer.
1. **Channel components.** The bipartite graph of output and input channels
   with an edge where ``K[o, i]`` has a nonzero tap splits into connected
   components (depthwise and grouped layers written as a full kernel, block
   diagonal channel mixing); each component is a layer of its own, and
   channels without any edge contribute zeros.
2. **Channel rank.** With ``K`` reshaped to ``(c_out, c_in T)`` of rank
   ``r < c_out``, ``K = U [S V^T; 0]`` and ``(U^T \otimes I) M`` is the layer
   with the ``r`` output channels of ``S V^T`` stacked on zero rows; the same
   on the input side with ``K`` reshaped to ``(c_in, c_out T)``. Singular
   values of the channel matrix at or below ``max(c_out, c_in T) eps
   sigma_1`` count as zero (the dropped part changes no singular value of
   the layer by more than ``sqrt(T)`` times it: rounding level).
3. **Dilation sub-lattices.** Along an axis with stride 1 and dilation
   ``d > 1``, output ``p`` reads only inputs ``i = p + j d - lo``, so the
   inputs of residue ``c`` (mod ``d``) meet only the outputs of residue
   ``(c + lo) mod d``: ``d`` independent layers with dilation 1 on the
   sub-grids, with paddings ``(lo', hi')`` that follow from the geometry.
   Sub-layers with the same geometry are computed once (a multiplicity).

Repeated singular values (multiplicities from identical sub-lattices, or
equal blocks), which a Krylov method with one start vector cannot resolve, and
block spectra that a start vector confined to one block cannot see, become
explicit. Every reduction is exact in exact arithmetic.
"""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .._backend import to_numpy
from ..operators.conv import ConvND

__all__ = ["Reduction", "reduce_layer"]


@dataclass(frozen=True)
class Reduction:
    """A layer written as independent smaller layers.

    Attributes
    ----------
    blocks : tuple of (ConvND, int)
        The smaller layers and how many times each occurs.
    zeros : int
        Singular values of the layer that are zero by structure (of its
        ``min(M, N)``).
    steps : tuple of str
        The reductions applied, in order, for reports.
    perturbation : float
        How far any singular value may move by the channel-rank truncation
        (``sqrt(T)`` times the Frobenius norm of the dropped part; 0 when no
        rank was dropped).
    """

    blocks: tuple
    zeros: int
    steps: tuple
    perturbation: float = 0.0

    def count(self) -> int:
        """Singular values the blocks carry, multiplicities included."""
        return _carried(self.blocks)


def _carried(blocks) -> int:
    return sum(m * min(b.shape) for b, m in blocks)


def _layer(op: ConvND, kernel) -> ConvND:
    """A layer with the grid, stride, padding and dilation of ``op`` and a kernel with other channel counts."""
    return ConvND(kernel, op.in_shape, stride=op.stride, padding="circular" if op.circular else op.padding,
                  dilation=op.dilation)


def _components(K):
    """Connected components of the channel graph: list of (output indices, input indices)."""
    co, ci = K.shape[:2]
    A = np.abs(K).reshape(co, ci, -1).max(axis=2) > 0
    o, i = np.nonzero(A)
    G = coo_matrix((np.ones(o.size), (o, co + i)), shape=(co + ci, co + ci))
    n, labels = connected_components(G, directed=False)
    out = []
    for c in range(n):
        oo = np.flatnonzero(labels[:co] == c)
        ii = np.flatnonzero(labels[co:] == c)
        if oo.size and ii.size:
            out.append((oo, ii))
    return out


def _rank_reduced(K):
    """``K`` with output and input channels rotated onto the channel matrix's row and column spaces.

    Returns ``(K', changed, dropped)``; ``K'`` has ``r_out <= c_out`` output
    and ``r_in <= c_in`` input channels (possibly zero of either), ``dropped``
    a bound of the Frobenius norm of the channel-matrix part treated as zero
    (the computed values plus the SVD's backward error).
    """
    changed = False
    dropped = 0.0
    for side in ("out", "in"):
        co, ci = K.shape[:2]
        Km = K.reshape(co, -1) if side == "out" else np.moveaxis(K, 1, 0).reshape(ci, -1)
        if Km.shape[0] == 0:
            return K, changed, dropped
        U, s, Vt = np.linalg.svd(Km, full_matrices=False)
        tol = max(Km.shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)
        r = int(np.count_nonzero(s > tol))
        if r == Km.shape[0]:
            continue
        changed = True
        # the computed small values are the SVD's, each within its backward error (about tol) of the exact
        # ones: 7.7e-17 was dropped where the channel matrix's singular value is 9.4e-17, so tol is added
        dropped = math.hypot(dropped, float(np.linalg.norm(s[r:])) + tol)
        R = (s[:r, None] * Vt[:r])  # (r, other * T)
        if side == "out":
            K = R.reshape((r,) + K.shape[1:])
        else:
            K = np.moveaxis(R.reshape((r, co) + K.shape[2:]), 0, 1)
    return K, changed, dropped


def _axis_parts(n, lo, hi, k, s, d):
    """Independent parts of one axis: ``[((n', (lo', hi'), s', d'), count), ...]``, or None (connected).

    The outputs ``p`` of the axis read the inputs ``q = p s + j d - lo``
    (``0 <= j < k``, ``0 <= q < n``):

    - with ``g = gcd(s, d) > 1`` only the inputs ``q = r + g q'`` (``r = -lo
      mod g``) are read: stride ``s / g`` and dilation ``d / g`` on that
      sub-grid (the other inputs are zero columns);
    - with stride 1 and ``d > 1``, the inputs of residue ``c`` meet only the
      outputs of residue ``(c + lo) mod d``: ``d`` layers with dilation 1;
    - with ``s`` at least the effective size ``e = d (k - 1) + 1`` the
      windows of the outputs do not overlap: one layer per output.
    """
    e = d * (k - 1) + 1
    m = (n + lo + hi - e) // s + 1
    if m < 1:
        return None
    g = math.gcd(s, d)
    if g > 1:
        r = (-lo) % g
        n2, lo2, s2, d2 = len(range(r, n, g)), (lo + r) // g, s // g, d // g
        e2 = d2 * (k - 1) + 1
        hi2 = (m - 1) * s2 + e2 - n2 - lo2  # exactly m outputs
        if n2 < 1:
            return None
        if hi2 < 0:  # trailing inputs no output reads: zero columns
            n2, hi2 = n2 + hi2, 0
        parts = _axis_parts(n2, lo2, hi2, k, s2, d2)
        return parts if parts is not None else [((n2, (lo2, hi2), s2, d2), 1)]
    parts = {}
    if s == 1 and d > 1:
        for c in range(d):
            r = (c + lo) % d
            n_c, m_r = len(range(c, n, d)), len(range(r, m, d))
            if n_c == 0 or m_r == 0:
                continue  # zero rows or columns only
            lo2 = -((r - lo - c) // d)
            hi2 = m_r - n_c - lo2 + k - 1
            if hi2 < 0:
                n_c, hi2 = n_c + hi2, 0
            if n_c < 1:
                continue
            key = (n_c, (lo2, hi2), 1, 1)
            parts[key] = parts.get(key, 0) + 1
    elif s >= e and m > 1:
        for p in range(m):
            a, b = p * s - lo, p * s - lo + e - 1  # the window, in input coordinates
            a2, b2 = max(a, 0), min(b, n - 1)
            if b2 < a2:
                continue  # a window entirely in the padding: a zero row
            key = (b2 - a2 + 1, (a2 - a, b - b2), 1, d)
            parts[key] = parts.get(key, 0) + 1
    else:
        return None
    return list(parts.items())


def _lattices(op: ConvND, K):
    """The independent parts of a zero-padded layer along its axes: list of (layer, multiplicity), or None."""
    if op.circular:
        return None
    per_axis, split = [], False
    for a in range(len(op.in_shape)):
        (lo, hi), n, k = op.padding[a], op.in_shape[a], op.kernel_size[a]
        s, d = op.stride[a], op.dilation[a]
        parts = _axis_parts(n, lo, hi, k, s, d)
        if parts is None:
            parts = [((n, (lo, hi), s, d), 1)]
        else:
            split = True
        per_axis.append(parts)
    if not split:
        return None
    out = []
    for combo in itertools.product(*per_axis):
        shape = tuple(part[0][0] for part in combo)
        pad = tuple(part[0][1] for part in combo)
        stride = tuple(part[0][2] for part in combo)
        dil = tuple(part[0][3] for part in combo)
        mult = int(np.prod([part[1] for part in combo]))
        out.append((ConvND(K, shape, stride=stride, padding=pad, dilation=dil), mult))
    return out


def _live_taps(op: ConvND):
    """The layer with the kernel taps that read no image pixel cut away (zero padding), or None.

    Along an axis, tap ``d`` is live when some output ``p`` reads an input
    ``p s + d delta - lo`` inside the image; the live taps form a range
    ``[d_lo, d_hi]`` and the layer equals the one with that part of the
    kernel and the padding shifted by ``d_lo delta`` (where the new padding
    stays non-negative). ``()`` when some axis has no live tap: the layer is zero.
    """
    if op.circular:
        return None
    cut, pads = [], []
    for n, m, s, dl, (lo, hi), k in zip(op.in_shape, op.out_shape, op.stride, op.dilation, op.padding,
                                       op.kernel_size):
        p = np.arange(m)
        live = [d for d in range(k) if np.any((p * s + d * dl - lo >= 0) & (p * s + d * dl - lo < n))]
        if not live:
            return ()
        d_lo, d_hi = live[0], live[-1]
        lo2 = lo - d_lo * dl
        hi2 = (m - 1) * s + d_hi * dl - lo + 1 - n  # the last output's last live tap ends the padded input
        if (d_lo, d_hi) == (0, k - 1) or lo2 < 0 or hi2 < 0:
            cut.append(slice(0, k))
            pads.append((lo, hi))
        else:
            cut.append(slice(d_lo, d_hi + 1))
            pads.append((lo2, hi2))
    if all(c == slice(0, k) for c, k in zip(cut, op.kernel_size)):
        return None
    K = op.kernel[(slice(None), slice(None)) + tuple(cut)]
    new = ConvND(K, op.in_shape, stride=op.stride, padding=tuple(pads), dilation=op.dilation, groups=op.groups)
    if new.out_shape != op.out_shape:  # pragma: no cover - the padding above keeps the output grid
        raise AssertionError(f"cutting dead taps changed the output grid {op.out_shape} -> {new.out_shape}")
    return new


# One reduction per layer object: layers own read-only kernels, so it cannot go stale, and the
# channel-rank SVDs (2 s for a 512 -> 512 3x3 kernel) are not repeated by cond(), which asks for
# both ends of the spectrum, or by a report that asks again.
_REDUCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def reduce_layer(op: ConvND) -> Reduction | None:
    """The exact reductions of ``op`` (module docstring), or None when none applies.

    Parameters
    ----------
    op : ConvND

    Returns
    -------
    Reduction or None
        The blocks are layers with float64 (or complex128) kernels on the
        host; their singular values, each repeated by its multiplicity,
        together with ``zeros`` zeros, are those of ``op``.
    """
    if op in _REDUCTIONS:
        return _REDUCTIONS[op]
    red = _reduce(op)
    _REDUCTIONS[op] = red
    return red


def _reduce(op: ConvND) -> Reduction | None:
    """:func:`reduce_layer` without the per-layer memo."""
    steps = []
    live = _live_taps(op)
    if live == ():
        return Reduction(blocks=(), zeros=min(op.shape), steps=("no kernel tap reads the image: the zero layer",))
    if live is not None:
        steps.append(f"kernel taps that read only padding cut: {op.kernel_size} -> {live.kernel_size}")
        op = live
    K = np.asarray(to_numpy(op.kernel))
    K = K.astype(np.complex128 if K.dtype.kind == "c" else np.float64, copy=False)
    g = op.groups
    if g > 1:
        steps.append(f"{g} channel groups")
    cog = op.c_out // g
    # the groups' kernels, each split into its channel components
    comps = [(K[j * cog : (j + 1) * cog], oo, ii) for j in range(g) for oo, ii in _components(K[j * cog : (j + 1) * cog])]
    if len(comps) != g or any(oo.size != cog or ii.size != op.c_in // g for _, oo, ii in comps):
        steps.append(f"{len(comps)} channel component(s)")
    kernels = []
    perturbation = 0.0
    taps = math.prod(op.kernel_size)
    for Kg, oo, ii in comps:
        Kc = Kg[np.ix_(oo, ii)]
        Kr, changed, dropped = _rank_reduced(Kc)
        perturbation = max(perturbation, math.sqrt(taps) * dropped)  # the blocks are independent
        if changed:
            steps.append(f"channel rank {Kr.shape[0]} x {Kr.shape[1]} of {Kc.shape[0]} x {Kc.shape[1]}")
        if Kr.shape[0] and Kr.shape[1]:
            kernels.append(Kr)
    blocks = []
    split = False
    for Kb in kernels:
        lat = _lattices(op, Kb)
        if lat is not None:
            split = True
            blocks.extend(lat)
        else:
            blocks.append((_layer(op, Kb), 1))
    if split:
        steps.append("independent parts along the axes (dilation sub-lattices, strides sharing a factor with "
                     "the dilation, non-overlapping windows)")
    if not steps:
        return None
    merged = {}
    for b, mult in blocks:  # equal blocks once, with their multiplicities added
        key = (b.geometry, b.kernel.tobytes())
        merged[key] = (b, merged.get(key, (b, 0))[1] + mult)
    blocks = tuple(merged.values())
    zeros = min(op.shape) - _carried(blocks)
    if zeros < 0:  # pragma: no cover - a reduction that loses rows or columns is a bug
        raise AssertionError(f"structural reduction of {op!r} carries {_carried(blocks)} > min(M, N) values")
    return Reduction(blocks=blocks, zeros=zeros, steps=tuple(steps), perturbation=perturbation)

"""Convolutional hyperplane arrangements: the 0/1 gates ``D_jk = diag(1[X_k g_j >= 0])``.

A ReLU neuron with filter ``u`` is linear on each cone where the sign pattern
``1[X_k u >= 0]`` of all its patch responses is fixed (Ergen and Pilanci 2021).
The convex programs of :mod:`structops.convex.two_layer` have one group of
variables per such pattern; here they are sampled from generator filters
``g_j`` (Gaussian, or patches of the data) and kept once each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._backend import get_xp, to_numpy
from .patches import PatchOperator

__all__ = ["Gates", "sample_gates"]

_CHUNK_BYTES = 64 * 2**20


@dataclass
class Gates:
    """Sampled gates of a batch of images.

    Attributes
    ----------
    generators : array, shape ``(P, h)``
        One generator filter per distinct pattern: ``masks[..., j]`` is
        ``1[X_k g_j >= 0]``, and the same filter gives the gate of new data.
    masks : bool array, shape ``(K, n, P)``
        ``masks[k, i, j] = (X_k g_j)_i >= 0``.
    sampled : int
        How many generators were drawn (``P`` of them gave distinct, non-zero
        patterns).
    """

    generators: object
    masks: object
    sampled: int

    @property
    def P(self) -> int:
        return int(self.masks.shape[-1])

    def on(self, patches: PatchOperator):
        """The gates of the same generators on other data (``patches`` of the new images): ``(K, n', P)``."""
        return gate_masks(patches, self.generators)


def gate_masks(patches: PatchOperator, G):
    """``1[X_k g_j >= 0]`` for generators ``G`` of shape ``(P, h)``: bool ``(K, n, P)``, in chunks of gates."""
    xp = patches.xp
    G = xp.asarray(G)
    out = xp.empty((patches.K, patches.n, G.shape[0]), dtype=bool)
    step = max(1, int(_CHUNK_BYTES // max(1, patches.K * patches.n * 8)))
    for a in range(0, G.shape[0], step):
        out[..., a:a + step] = patches.responses(G[a:a + step]) >= 0
    return out


def sample_gates(patches: PatchOperator, n_samples: int, kind: str = "gaussian", seed=None,
                 dedup: bool = True) -> Gates:
    """Sample gate patterns ``1[X_k g >= 0]`` of a batch.

    Parameters
    ----------
    patches : PatchOperator
        The patches ``X_k`` of the training images.
    n_samples : int
        Generators to draw.
    kind : {"gaussian", "patches", "mixed"}
        ``"gaussian"``: ``g ~ N(0, I)``; ``"patches"``: ``g`` is a patch of a
        random training image at a random position, centred, plus a little
        Gaussian noise (the patterns data-driven filters produce); ``"mixed"``:
        half of each.
    seed : int or numpy.random.Generator, optional
    dedup : bool
        Keep each distinct pattern once (and drop the all-zero pattern, whose
        group contributes nothing).

    Returns
    -------
    Gates
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1; got {n_samples}")
    if patches.n == 0 or patches.K == 0:
        raise ValueError(f"no patches to gate: {patches.n} images, {patches.K} patch positions")
    if kind not in ("gaussian", "patches", "mixed"):
        raise ValueError(f"kind must be 'gaussian', 'patches' or 'mixed'; got {kind!r}")
    G = draw_generators(patches, n_samples, kind, np.random.default_rng(seed))
    xp = patches.xp
    G = xp.asarray(G, dtype=patches.dtype if patches.dtype.kind == "f" else np.float64)
    masks = gate_masks(patches, G)
    if dedup:
        keep = xp.asarray(_distinct_patterns(masks))
        G, masks = G[keep], masks[..., keep]
    return Gates(generators=G, masks=masks, sampled=int(n_samples))


def draw_generators(patches: PatchOperator, n_samples: int, kind: str, rng):
    """``n_samples`` generator filters ``(n_samples, h)``: Gaussian, centred data patches plus noise, or half of each."""
    if kind not in ("gaussian", "patches", "mixed"):
        raise ValueError(f"kind must be 'gaussian', 'patches' or 'mixed'; got {kind!r}")
    if kind == "gaussian":
        return rng.standard_normal((n_samples, patches.h))
    m = n_samples if kind == "patches" else n_samples // 2
    G = _patch_generators(patches, m, rng)
    if kind == "mixed":
        G = np.concatenate([G, rng.standard_normal((n_samples - m, patches.h))])
    return G


def _patch_generators(patches: PatchOperator, m: int, rng):
    """``m`` centred data patches plus 10% noise, as generators ``(m, h)``."""
    img = rng.integers(0, patches.n, m)
    pos = rng.integers(0, patches.K, m)
    G = np.empty((m, patches.h))
    for i in np.unique(img):  # the patches of one image at a time
        sel = np.nonzero(img == i)[0]
        one = patches.rows(slice(int(i), int(i) + 1))
        E = np.eye(one.K)[:, pos[sel]]  # (K, len(sel)) position selectors, read through the adjoint
        G[sel] = to_numpy(one.rmatmat(get_xp(one.data).asarray(E, dtype=one.dtype))).T
    G -= G.mean(axis=1, keepdims=True)
    scale = np.linalg.norm(G, axis=1, keepdims=True)
    scale[scale == 0] = 1.0
    return G / scale + 0.1 * rng.standard_normal(G.shape) / np.sqrt(patches.h)


def _distinct_patterns(masks):
    """Indices of the first occurrence of each distinct, non-zero pattern ``masks[..., j]`` (sorted)."""
    m = to_numpy(masks).reshape(-1, masks.shape[-1]).T  # (P, K n)
    packed = np.packbits(m, axis=1)
    _, first = np.unique(packed, axis=0, return_index=True)
    first = np.sort(first)
    return first[m[first].any(axis=1)]

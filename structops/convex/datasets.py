"""Small image-classification sets built in-repo from scikit-learn's digits (8x8), with variations.

The variations follow those of the MNIST benchmarks of Larochelle et al.
(2007) that Zhang, Liang and Wainwright (2017) report on: ``"rand"`` puts
uniform noise in the background, ``"rot"`` rotates each digit by a random
angle. scikit-learn is the optional ``[convex]`` extra.
"""

from __future__ import annotations

import numpy as np

__all__ = ["VARIATIONS", "digits", "vary"]

VARIATIONS = ("basic", "rand", "rot")


def digits():
    """scikit-learn's 1797 digits: images ``(1797, 1, 8, 8)`` in ``[0, 1]`` and labels ``(1797,)``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits need scikit-learn: pip install 'structops[convex]'") from exc
    d = load_digits()
    return (d.images / 16.0)[:, None].astype(float), d.target.astype(int)


def vary(images, kind: str, seed=None):
    """A variation of images ``(n, 1, H, W)`` in ``[0, 1]``: ``"basic"``, ``"rand"`` or ``"rot"``.

    ``"rand"``: background pixels (below 0.1) replaced by ``U[0, 1]`` noise;
    ``"rot"``: each image rotated by an angle ``U[0, 360)`` degrees about its
    centre (bilinear, zero outside), clipped to ``[0, 1]``.
    """
    rng = np.random.default_rng(seed)
    X = np.array(images, dtype=float, copy=True)
    if kind == "basic":
        return X
    if kind == "rand":
        bg = X < 0.1
        X[bg] = rng.uniform(0.0, 1.0, size=int(bg.sum()))
        return X
    if kind == "rot":
        from scipy.ndimage import rotate

        for i in range(X.shape[0]):
            X[i, 0] = rotate(X[i, 0], rng.uniform(0.0, 360.0), reshape=False, order=1, mode="constant")
        return np.clip(X, 0.0, 1.0)
    raise ValueError(f"kind must be one of {VARIATIONS}; got {kind!r}")

"""The baseline the convex programs replace: (stochastic) gradient descent on the non-convex CNN."""

from __future__ import annotations

import time

import numpy as np

from .patches import PatchOperator
from .two_layer import TwoLayerCNN

__all__ = ["train_two_layer_sgd"]


def train_two_layer_sgd(patches: PatchOperator, y, beta: float, width: int, epochs: int = 2000,
                        lr: float | None = None, batch_size: int | None = None, momentum: float = 0.9,
                        seed=None, init_scale: float | None = None):
    """Train ``f(X) = sum_j sum_k (X_k u_j)_+ w_j`` with weight decay by SGD with momentum.

    Parameters
    ----------
    patches : PatchOperator
        The patches of the ``n`` training images.
    y : array, shape ``(n,)``
    beta : float
        Weight decay (the objective of :class:`TwoLayerCNN.objective`).
    width : int
        Number of neurons ``m``.
    epochs : int
    lr : float, optional
        Step size; default ``0.5 / (K ||X||_2^2 / n_batches + beta)``-like: ``0.1 / (K max_i ||x_i||^2 + beta)``.
    batch_size : int, optional
        Images per step (default all: gradient descent with momentum).
    momentum : float
    seed : int or numpy.random.Generator, optional
    init_scale : float, optional
        Standard deviation of the Kaiming-like initialisation (default
        ``sqrt(2 / h)`` for filters, ``1 / sqrt(m)`` for output weights).

    Returns
    -------
    model : TwoLayerCNN
    history : list of ``(seconds, objective)``
        After every epoch; ``seconds`` counts training time only (the full
        objective is evaluated outside the clock).
    """
    rng = np.random.default_rng(seed)
    xp = patches.xp
    y = xp.asarray(y, dtype=patches.dtype).reshape(-1)
    n, h = patches.n, patches.h
    bs = n if batch_size is None else int(batch_size)
    if not 1 <= bs <= n:
        raise ValueError(f"batch_size must be in [1, {n}]; got {batch_size}")
    su = np.sqrt(2.0 / h) if init_scale is None else init_scale
    sw = 1.0 / np.sqrt(width) if init_scale is None else init_scale
    model = TwoLayerCNN(xp.asarray(su * rng.standard_normal((width, h)), dtype=patches.dtype),
                        xp.asarray(sw * rng.standard_normal(width), dtype=patches.dtype))
    if lr is None:
        sq = float((patches.data.reshape(n, -1) ** 2).sum(axis=1).max())
        lr = 0.1 / (patches.K * sq + beta)
    batches = [slice(None)] if bs == n else None
    subs = {}
    vU = xp.zeros_like(model.filters)
    vw = xp.zeros_like(model.weights)
    history = []
    clock = 0.0
    for _ in range(int(epochs)):
        t0 = time.perf_counter()
        order = batches if batches is not None else [np.sort(b) for b in np.array_split(rng.permutation(n),
                                                                                          max(1, n // bs))]
        for idx in order:
            if isinstance(idx, slice):
                sub, yb, scale = patches, y, 1.0
            else:
                key = idx.tobytes()
                sub = subs.get(key)
                if sub is None:
                    sub = patches.rows(idx)
                    if len(subs) < 64:
                        subs[key] = sub
                yb, scale = y[idx], n / len(idx)
            _, dU, dw = model.value_and_grad(sub, yb, beta / scale)
            vU = momentum * vU - lr * scale * dU
            vw = momentum * vw - lr * scale * dw
            model.filters = model.filters + vU
            model.weights = model.weights + vw
        clock += time.perf_counter() - t0
        history.append((clock, model.objective(patches, y, beta)))
    return model, history

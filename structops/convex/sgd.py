"""The baselines the convex programs replace: (stochastic) gradient descent on non-convex CNNs."""

from __future__ import annotations

import time

import numpy as np

from .._backend import to_numpy
from .patches import PatchOperator, average_pooling_matrix, patch_tensor
from .two_layer import TwoLayerCNN

__all__ = ["train_two_layer_sgd", "CNNClassifier", "train_cnn_classifier"]


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


def check_classification(X, labels, n_classes):
    """Images ``(n, c, *spatial)`` as float64 on the host and labels ``(n,)`` as int in ``[0, n_classes)``, or a
    ValueError. The classifiers (CCNN, CNN-1) run on the host: CuPy images are copied there here, once."""
    X = np.asarray(to_numpy(X), dtype=float)
    labels = np.asarray(to_numpy(labels)).reshape(-1)
    if X.ndim < 3:
        raise ValueError(f"images must have shape (n, c, *spatial); got {X.shape}")
    if labels.shape[0] != X.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {X.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes or not np.all(labels == np.round(labels))):
        raise ValueError(f"labels must be integers in [0, {n_classes})")
    return X, labels.astype(int)


def softmax(S):
    """Row-wise softmax of scores ``(n, C)``."""
    S = S - S.max(axis=1, keepdims=True)
    E = np.exp(S)
    return E / E.sum(axis=1, keepdims=True)


class CNNClassifier:
    """CNN-1: a convolution with ``r`` filters (ReLU), average pooling, a linear map and softmax.

    Parameters
    ----------
    filters : array, shape ``(r, h)``
    W : array, shape ``(K' r, C)``
    bias : array, shape ``(C,)``
    kernel_size, padding, pool : the layer's geometry (stride 1)
    """

    def __init__(self, filters, W, bias, kernel_size, padding, pool):
        self.filters, self.W, self.bias = filters, W, bias
        self.kernel_size, self.padding, self.pool = kernel_size, padding, pool

    def patches(self, X):
        """``(K, n, h)`` patch tensor of images ``X`` and the pooling matrix ``(K', K)``."""
        A = PatchOperator(X, self.kernel_size, padding=self.padding, method="conv")
        Q, _ = average_pooling_matrix(A.geometry.out_shape, (self.pool,) * len(A.geometry.out_shape))
        return patch_tensor(A.data, A.geometry), Q

    def forward(self, T, Q):
        """Scores ``(n, C)`` and the intermediate ``(Z, pooled features)`` from patches ``T`` ``(K, n, h)``."""
        Z = T @ self.filters.T  # (K, n, r)
        F = np.einsum("qk,knr->nqr", Q, np.maximum(Z, 0.0)).reshape(T.shape[1], -1)
        return F @ self.W + self.bias, Z, F

    def loss_and_grads(self, T, Q, Y, weight_decay=0.0):
        """Mean softmax cross-entropy (plus ``weight_decay / 2`` times the squared weights) and its gradients.

        ``T`` ``(K, n, h)`` and ``Q`` from :meth:`patches`, ``Y`` one-hot ``(n, C)``; returns
        ``(loss, [d filters, d W, d bias])``.
        """
        n = T.shape[1]
        S, Z, F = self.forward(T, Q)
        Pr = softmax(S)
        loss = -float((Y * np.log(np.maximum(Pr, 1e-300))).sum()) / n
        loss += 0.5 * weight_decay * (float((self.filters ** 2).sum()) + float((self.W ** 2).sum()))
        dS = (Pr - Y) / n
        dW = F.T @ dS + weight_decay * self.W
        dF = (dS @ self.W.T).reshape(n, Q.shape[0], -1)
        dZ = np.einsum("qk,nqr->knr", Q, dF) * (Z > 0)
        dU = np.einsum("knr,knh->rh", dZ, T) + weight_decay * self.filters
        return loss, [dU, dW, dS.sum(axis=0)]

    def predict(self, X):
        """Class labels ``(n,)`` (on the host) of images ``X`` (CuPy images are copied to the host)."""
        T, Q = self.patches(np.asarray(to_numpy(X), dtype=float))
        return self.forward(T, Q)[0].argmax(axis=1)

    def error(self, X, labels) -> float:
        return float((self.predict(X) != np.asarray(to_numpy(labels)).reshape(-1)).mean())


def train_cnn_classifier(X, labels, n_classes, filters=16, kernel_size=3, padding=1, pool=2, epochs=30,
                         lr=0.05, batch_size=64, momentum=0.9, weight_decay=1e-4, seed=None) -> CNNClassifier:
    """Train CNN-1 (:class:`CNNClassifier`) on the softmax loss by SGD with momentum.

    Parameters
    ----------
    X : array, shape ``(n, c, *spatial)``
    labels : int array, shape ``(n,)``
    n_classes, filters, kernel_size, padding, pool
        The network (``filters`` is ``r``).
    epochs, lr, batch_size, momentum, weight_decay, seed
        The optimiser (He initialisation; ``lr / sqrt(epoch)``).
    """
    rng = np.random.default_rng(seed)
    X, labels = check_classification(X, labels, n_classes)
    n = X.shape[0]
    net = CNNClassifier(None, None, None, kernel_size, padding, pool)
    T, Q = net.patches(X)
    h = T.shape[-1]
    Kq = Q.shape[0]
    net.filters = rng.normal(0.0, np.sqrt(2.0 / h), size=(filters, h))
    net.W = rng.normal(0.0, np.sqrt(1.0 / (Kq * filters)), size=(Kq * filters, n_classes))
    net.bias = np.zeros(n_classes)
    Y = np.eye(n_classes)[labels]
    params = [net.filters, net.W, net.bias]
    vel = [np.zeros_like(p) for p in params]
    for epoch in range(1, int(epochs) + 1):
        step = lr / np.sqrt(epoch)
        for b in np.array_split(rng.permutation(n), max(1, n // batch_size)):
            _, grads = net.loss_and_grads(T[:, b], Q, Y[b], weight_decay)
            for p, v, g in zip(params, vel, grads):
                v *= momentum
                v -= step * g
                p += v
    return net

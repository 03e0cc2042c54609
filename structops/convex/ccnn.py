"""Convexified convolutional neural networks (Zhang, Liang and Wainwright 2017).

A one-layer CNN ``H(x)_c = sum_j sum_p alpha_{c,j,p} sigma(w_j^T z_p(x))`` over
the patches ``z_p(x)`` of an image is, with the nonlinearity moved into a
kernel ``k(z, z') = <phi(z), phi(z')>``, linear in the feature matrix
``Phi(x)`` (row ``p`` is ``phi(z_p(x))``): ``H(x)_c = tr(Phi(x)^T A_c)``.
The ``r`` filters are a rank constraint on ``A = [A_1, ..., A_C]``; CCNN
replaces it by the nuclear-norm ball ``||A||_* <= R`` and learns ``A`` by
projected stochastic gradient on the softmax loss, a convex program. Deeper
networks are built layer by layer: the top ``r`` left singular vectors of the
learned ``A`` are the layer's filters in feature space, and their responses
are the next layer's input images.

Here the kernel is the Gaussian (RBF) kernel, approximated by random Fourier
features (Rahimi and Recht 2007), and the features are average-pooled over
the patch grid before the linear map, as in the paper. The layers run on
the host (NumPy); CuPy images are copied there once, on entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._backend import to_numpy
from .patches import PatchOperator, average_pooling_matrix, patch_tensor
from .sgd import check_classification, softmax

__all__ = ["RandomFourierFeatures", "nuclear_ball_projection", "CCNNLayer", "CCNN", "train_ccnn_layer", "train_ccnn"]


class RandomFourierFeatures:
    """``phi(z) = sqrt(2 / m) cos(W z + b)``, so that ``<phi(z), phi(z')> ~ exp(-gamma ||z - z'||^2)``.

    Parameters
    ----------
    h : int
        Input dimension (a patch).
    m : int
        Number of features.
    gamma : float
        RBF width.
    seed : int or numpy.random.Generator, optional

    Notes
    -----
    ``W`` has i.i.d. ``N(0, 2 gamma)`` entries, ``b ~ U[0, 2 pi)``
    (Rahimi and Recht 2007): ``E[phi(z)^T phi(z')] = exp(-gamma ||z - z'||^2)``.
    """

    def __init__(self, h: int, m: int, gamma: float, seed=None):
        if not (int(h) >= 1 and int(m) >= 1 and gamma > 0):
            raise ValueError(f"need h >= 1, m >= 1 and gamma > 0; got h={h}, m={m}, gamma={gamma}")
        rng = np.random.default_rng(seed)
        self.h, self.m, self.gamma = int(h), int(m), float(gamma)
        self.W = rng.normal(0.0, np.sqrt(2.0 * gamma), size=(self.h, self.m))
        self.b = rng.uniform(0.0, 2.0 * np.pi, size=self.m)

    def __call__(self, Z):
        """Features of patches ``Z`` of shape ``(..., h)``: ``(..., m)``."""
        Z = np.asarray(Z, dtype=float)
        if Z.shape[-1] != self.h:
            raise ValueError(f"patches of length {Z.shape[-1]}; the features were drawn for {self.h}")
        return np.sqrt(2.0 / self.m) * np.cos(Z @ self.W + self.b)


def nuclear_ball_projection(A, radius: float):
    """Euclidean projection of a matrix onto ``{A : ||A||_* <= radius}``.

    Returns ``(projected, singular values after projection)``: the singular
    values are projected onto the ``l1`` ball (a soft threshold ``theta`` with
    ``sum_i (s_i - theta)_+ = radius``), the singular vectors kept.
    """
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    if s.sum() <= radius:
        return A, s
    # the threshold of the l1-ball projection of the (sorted, non-negative) singular values
    cs = np.cumsum(s)
    k = np.arange(1, len(s) + 1)
    rho = np.nonzero(s - (cs - radius) / k > 0)[0][-1]
    theta = (cs[rho] - radius) / (rho + 1)
    s = np.maximum(s - theta, 0.0)
    return (U * s) @ Vt, s


def _as_weights(A, Kq):
    """The map ``A`` ``(m, K' C)`` as the weights ``(K' m, C)`` of the flattened pooled features ``(n, K' m)``."""
    m, C = A.shape[0], A.shape[1] // Kq
    return A.reshape(m, Kq, C).transpose(1, 0, 2).reshape(Kq * m, C)


def _as_map(W, Kq):
    """Inverse of :func:`_as_weights`: ``(K' m, C)`` -> ``(m, K' C)``."""
    m, C = W.shape[0] // Kq, W.shape[1]
    return W.reshape(Kq, m, C).transpose(1, 0, 2).reshape(m, Kq * C)


@dataclass
class CCNNLayer:
    """One convexified layer: patches, random features, pooling and a nuclear-norm-bounded linear map.

    Attributes
    ----------
    kernel_size, padding : patch geometry (stride 1)
    features : RandomFourierFeatures
    pool : tuple of int
    A : array, shape ``(m, K' C)``
        The learned map (``m`` features, ``K'`` pooled positions, ``C`` classes).
    radius : float
        The nuclear-norm bound.
    history : list of ``(epoch, loss, train_error)``
    """

    kernel_size: tuple
    padding: int
    features: RandomFourierFeatures
    pool: tuple
    A: np.ndarray
    radius: float
    history: list = field(default_factory=list)

    def patch_features(self, X):
        """``Phi``: ``(n, K, m)`` features of every patch of images ``X`` ``(n, c, *spatial)``; and the grid."""
        P = PatchOperator(X, self.kernel_size, padding=self.padding, method="conv")
        T = patch_tensor(P.data, P.geometry)  # (K, n, h)
        return self.features(np.transpose(T, (1, 0, 2))), P.geometry.out_shape

    def pooled(self, X):
        """Average-pooled features ``(n, K', m)``."""
        Phi, grid = self.patch_features(X)
        Q, _ = average_pooling_matrix(grid, self.pool)
        return np.einsum("qk,nkm->nqm", Q, Phi)

    def scores(self, Psi):
        """``(n, C)`` from pooled features ``(n, K', m)``."""
        n, Kq, m = Psi.shape
        return Psi.reshape(n, Kq * m) @ _as_weights(self.A, Kq)

    def filters(self, r: int):
        """The top ``r`` left singular vectors of ``A``: the layer's ``r`` filters in feature space ``(m, r)``."""
        U, s, _ = np.linalg.svd(self.A, full_matrices=False)
        return U[:, :r] * np.sqrt(s[:r])

    def outputs(self, X, r: int):
        """The layer's ``r`` output channels on images ``X``: ``(n, r, *grid)`` (the next layer's input)."""
        Phi, grid = self.patch_features(X)
        H = Phi @ self.filters(r)  # (n, K, r)
        return np.transpose(H, (0, 2, 1)).reshape((X.shape[0], r) + tuple(grid))


def train_ccnn_layer(X, labels, n_classes, kernel_size=3, padding=1, features=256, gamma=None, pool=2,
                     radius=10.0, epochs=30, lr=0.5, batch_size=64, seed=None) -> CCNNLayer:
    """Train one convexified layer by projected stochastic gradient on the softmax loss.

    Parameters
    ----------
    X : array, shape ``(n, c, *spatial)``
    labels : int array, shape ``(n,)``
    n_classes : int
    kernel_size, padding : patch geometry (stride 1)
    features : int
        Random Fourier features per patch.
    gamma : float, optional
        RBF width; default ``1 / median ||z_p - z_q||^2`` over a sample of patches.
    pool : int
        Average-pooling window on the patch grid.
    radius : float
        Nuclear-norm bound ``R`` of the linear map.
    epochs, lr, batch_size, seed
        Projected SGD: ``A <- Pi_R(A - lr * grad)``, with ``lr / sqrt(epoch)``.

    Returns
    -------
    CCNNLayer
    """
    rng = np.random.default_rng(seed)
    X, labels = check_classification(X, labels, n_classes)
    n = X.shape[0]
    if not radius > 0:
        raise ValueError(f"radius must be > 0; got {radius}")
    spatial = X.shape[2:]
    k = (int(kernel_size),) * len(spatial) if np.isscalar(kernel_size) else tuple(kernel_size)
    pool_t = (int(pool),) * len(spatial)
    probe = PatchOperator(X[: min(n, 200)], k, padding=padding, method="conv")
    T = patch_tensor(probe.data, probe.geometry).reshape(-1, probe.h)
    if gamma is None:
        idx = rng.choice(T.shape[0], size=(min(2000, T.shape[0]), 2))
        d2 = ((T[idx[:, 0]] - T[idx[:, 1]]) ** 2).sum(axis=1)
        gamma = 1.0 / max(float(np.median(d2[d2 > 0])) if (d2 > 0).any() else 1.0, 1e-12)
    rff = RandomFourierFeatures(probe.h, features, gamma, seed=rng)
    layer = CCNNLayer(kernel_size=k, padding=padding, features=rff, pool=pool_t, A=np.zeros((features, 0)),
                      radius=float(radius))
    Psi = layer.pooled(X)  # (n, K', m)
    Kq = Psi.shape[1]
    Y = np.eye(n_classes)[labels]
    F = Psi.reshape(n, Kq * features)
    W = np.zeros((Kq * features, n_classes))

    for epoch in range(1, int(epochs) + 1):
        step = lr / np.sqrt(epoch)
        for b in np.array_split(rng.permutation(n), max(1, n // batch_size)):
            G = F[b].T @ (softmax(F[b] @ W) - Y[b]) / len(b)
            A, _ = nuclear_ball_projection(_as_map(W - step * G, Kq), radius)
            W = _as_weights(A, Kq)
        Pr = softmax(F @ W)
        loss = -float(np.log(np.maximum(Pr[np.arange(n), labels], 1e-300)).mean())
        layer.history.append((epoch, loss, float((Pr.argmax(axis=1) != labels).mean())))
    layer.A = _as_map(W, Kq)
    return layer


class CCNN:
    """A stack of convexified layers; the last one classifies.

    Parameters
    ----------
    layers : list of CCNNLayer
    ranks : list of int
        Output channels ``r`` of every layer but the last.
    scales : list of float, optional
        The divisor of each of those layers' outputs (set in training).
    """

    def __init__(self, layers, ranks, scales=None):
        if len(ranks) != len(layers) - 1:
            raise ValueError(f"{len(layers)} layers need {len(layers) - 1} ranks; got {len(ranks)}")
        self.layers, self.ranks = list(layers), [int(r) for r in ranks]
        self.scales = [1.0] * len(self.ranks) if scales is None else [float(s) for s in scales]

    def predict(self, X):
        """Class labels ``(n,)``, on the host, of images ``X`` ``(n, c, *spatial)`` (CuPy ones are copied there)."""
        H = np.asarray(to_numpy(X), dtype=float)
        for layer, r, scale in zip(self.layers[:-1], self.ranks, self.scales):
            H = layer.outputs(H, r) / scale
        return self.layers[-1].scores(self.layers[-1].pooled(H)).argmax(axis=1)

    def error(self, X, labels) -> float:
        return float((self.predict(X) != np.asarray(to_numpy(labels)).reshape(-1)).mean())


def train_ccnn(X, labels, n_classes, n_layers=1, ranks=(16,), layer_options=None, seed=None) -> CCNN:
    """Train a CCNN layer by layer (:func:`train_ccnn_layer`); ``layer_options`` is one dict per layer."""
    rng = np.random.default_rng(seed)
    opts = list(layer_options) if layer_options is not None else [{} for _ in range(n_layers)]
    if len(opts) != n_layers:
        raise ValueError(f"{n_layers} layers need {n_layers} option dicts; got {len(opts)}")
    layers, scales, H = [], [], np.asarray(to_numpy(X), dtype=float)
    for i in range(n_layers):
        layer = train_ccnn_layer(H, labels, n_classes, seed=rng, **opts[i])
        layers.append(layer)
        if i < n_layers - 1:
            H = layer.outputs(H, ranks[i])
            scales.append(max(float(np.abs(H).max()), 1e-300))  # the next layer sees outputs in [-1, 1]
            H = H / scales[-1]
    return CCNN(layers, list(ranks)[: n_layers - 1], scales)

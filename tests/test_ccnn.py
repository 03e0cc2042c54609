"""Convexified CNNs (Zhang, Liang and Wainwright 2017), the CNN-1 baseline and the digit variations."""

from __future__ import annotations

import numpy as np
import pytest

from structops.convex.ccnn import CCNN, RandomFourierFeatures, nuclear_ball_projection, train_ccnn, train_ccnn_layer
from structops.convex.patches import average_pooling_matrix
from structops.convex.sgd import CNNClassifier, train_cnn_classifier


def test_random_fourier_features_approximate_the_rbf_kernel():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((6, 5)) * 0.5
    phi = RandomFourierFeatures(5, 40000, gamma=0.3, seed=1)(Z)
    K = np.exp(-0.3 * ((Z[:, None] - Z[None]) ** 2).sum(-1))
    # the error is about sqrt(2 / m) ~ 0.007 per entry: 0.03 is four of those
    assert np.abs(phi @ phi.T - K).max() < 0.03
    with pytest.raises(ValueError, match="patches of length"):
        RandomFourierFeatures(5, 10, 1.0)(np.ones((2, 4)))
    with pytest.raises(ValueError, match="gamma"):
        RandomFourierFeatures(5, 10, 0.0)


def test_nuclear_ball_projection_is_the_euclidean_projection():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((7, 4)) * 3
    s = np.linalg.svd(A, compute_uv=False)
    P, sp = nuclear_ball_projection(A, 0.5 * s.sum())
    assert abs(np.linalg.svd(P, compute_uv=False).sum() - 0.5 * s.sum()) < 1e-10 * s.sum()
    np.testing.assert_allclose(np.sort(sp)[::-1], np.linalg.svd(P, compute_uv=False), atol=1e-10)
    # the variational inequality of a projection onto a convex set: <A - P, B - P> <= 0 for B in the ball
    for _ in range(20):
        B = rng.standard_normal(A.shape)
        B *= 0.5 * s.sum() / np.linalg.svd(B, compute_uv=False).sum() * rng.uniform(0, 1)
        assert float(((A - P) * (B - P)).sum()) <= 1e-9
    same, _ = nuclear_ball_projection(A, 2 * s.sum())
    np.testing.assert_array_equal(same, A)


def test_average_pooling_matrix_takes_partial_windows_at_the_edges():
    Q, out = average_pooling_matrix((3, 3), (2, 2))
    assert out == (2, 2) and Q.shape == (4, 9)
    np.testing.assert_allclose(Q.sum(axis=1), 1.0)
    np.testing.assert_allclose(Q @ np.arange(9.0), [(0 + 1 + 3 + 4) / 4, (2 + 5) / 2, (6 + 7) / 2, 8])


def _blobs(n=120, seed=0):
    """Two classes of 6x6 images: a bright left or right half, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    X = 0.3 * rng.standard_normal((n, 1, 6, 6))
    X[labels == 0, :, :, :3] += 1.0
    X[labels == 1, :, :, 3:] += 1.0
    return X, labels


def test_ccnn_layers_learn_within_their_nuclear_norm_ball():
    X, y = _blobs()
    layer = train_ccnn_layer(X, y, 2, features=64, radius=5.0, epochs=10, lr=1.0, seed=0)
    assert np.linalg.svd(layer.A, compute_uv=False).sum() <= 5.0 * (1 + 1e-9)
    assert layer.history[-1][2] <= 0.05  # training error on a separable problem
    net = train_ccnn(X, y, 2, n_layers=2, ranks=(4,), seed=0,
                     layer_options=[dict(features=64, radius=5.0, epochs=8, lr=1.0, pool=1),
                                    dict(features=64, radius=5.0, epochs=8, lr=1.0)])
    Xt, yt = _blobs(60, seed=1)
    assert net.predict(Xt).shape == (60,) and net.error(Xt, yt) <= 0.1
    assert net.layers[0].outputs(Xt, 4).shape == (60, 4, 6, 6)
    with pytest.raises(ValueError, match="labels"):
        train_ccnn_layer(X, y[:5], 2)
    with pytest.raises(ValueError, match="integers in"):
        train_ccnn_layer(X, y + 5, 2)
    with pytest.raises(ValueError, match="shape"):
        train_ccnn_layer(X[:, 0, 0], y, 2)
    with pytest.raises(ValueError, match="radius"):
        train_ccnn_layer(X, y, 2, radius=0.0)
    with pytest.raises(ValueError, match="ranks"):
        CCNN(net.layers, [])


def test_cnn_baseline_gradients_match_finite_differences():
    X, y = _blobs(20)
    rng = np.random.default_rng(3)
    net = CNNClassifier(rng.standard_normal((3, 9)), None, rng.standard_normal(2), 3, 1, 2)
    T, Q = net.patches(X)
    net.W = rng.standard_normal((Q.shape[0] * 3, 2))
    Y = np.eye(2)[y]
    _, grads = net.loss_and_grads(T, Q, Y, weight_decay=0.01)
    params = [net.filters, net.W, net.bias]
    dirs = [rng.standard_normal(p.shape) for p in params]
    slope = sum(float((g * d).sum()) for g, d in zip(grads, dirs))
    errs = []
    for eps in (1e-3, 1e-4, 1e-5):
        vals = []
        for sign in (1, -1):
            for p, d in zip(params, dirs):
                p += sign * eps * d
            vals.append(net.loss_and_grads(T, Q, Y, weight_decay=0.01)[0])
            for p, d in zip(params, dirs):
                p -= sign * eps * d
        errs.append(abs((vals[0] - vals[1]) / (2 * eps) - slope))
    # central differences: O(eps^2) until ReLU kinks or rounding
    assert min(errs) <= 1e-6 * max(1.0, abs(slope))


def test_cnn_baseline_learns_a_separable_problem():
    X, y = _blobs()
    net = train_cnn_classifier(X, y, 2, filters=4, epochs=10, lr=0.05, seed=0)
    Xt, yt = _blobs(60, seed=1)
    assert net.error(Xt, yt) <= 0.1


def test_digit_variations():
    pytest.importorskip("sklearn")
    from structops.convex.datasets import digits, vary

    X, y = digits()
    assert X.shape == (1797, 1, 8, 8) and y.shape == (1797,) and 0 <= X.min() and X.max() <= 1
    Xs = X[:20]
    np.testing.assert_array_equal(vary(Xs, "basic"), Xs)
    R = vary(Xs, "rand", seed=0)
    fg = Xs >= 0.1
    np.testing.assert_array_equal(R[fg], Xs[fg])
    assert (R[~fg] != Xs[~fg]).mean() > 0.9 and 0 <= R.min() and R.max() <= 1
    Rot = vary(Xs, "rot", seed=0)
    assert Rot.shape == Xs.shape and 0 <= Rot.min() and Rot.max() <= 1 and not np.allclose(Rot, Xs)
    with pytest.raises(ValueError, match="kind"):
        vary(Xs, "img")

"""Extended-convolution networks and their variable-projection training.

Jacobian products of the extended layers by dottest and Taylor test, the
conventional limit, the reduced gradient against finite differences of the
reduced objective, and the training loops.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import structops
from structops import parametric as P
from structops.nn import Network, SingleLayer
from structops.nn.extended import ExtendedNetwork, ExtendedSingleLayer
from structops.solvers.extended import (
    ExtendedTrainResult, adam, data_objective, inner_solve, joint_objective, lbfgs, reduced_objective,
    train_extended, train_joint,
)
from structops.testing import assert_adjoint, taylor_test


def _net(act="sigmoid"):
    return ExtendedNetwork([
        ExtendedSingleLayer((2, 1, 3, 3), (5, 4), act),
        ExtendedSingleLayer((1, 2, 3, 3), (5, 4), act, padding="circular"),
        ExtendedSingleLayer((1, 1, 3, 3), (5, 4), act, bias=False, padding="valid"),
    ])


def _point(net, rng):
    primary = rng.standard_normal(net.num_primary)
    theta = net.expand(primary) + 0.3 * rng.standard_normal(net.num_params)
    X = rng.standard_normal((net.n_in, 3))
    return primary, theta, X


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_extended_network_jacobians_dottest_and_taylor(act):
    rng = np.random.default_rng(0)
    net = _net(act)
    _, theta, X = _point(net, rng)
    Jt, Jy = net.param_jacobian(theta, X), net.input_jacobian(theta, X)
    assert_adjoint(Jt, rng=1)
    assert_adjoint(Jy, rng=2)
    taylor_test(lambda t: net(t, X), Jt, theta, rng=3, h0=0.5)
    taylor_test(lambda x: net(theta, x.reshape(X.shape)), Jy, X.ravel(), rng=4, h0=0.5)
    # batched directions agree with single ones
    V = rng.standard_normal((net.num_params, 2))
    st = net.forward(theta, X)[1]
    both = net.jvp(theta, st, dtheta=V)
    np.testing.assert_allclose(both[:, :, 1], net.jvp(theta, st, dtheta=V[:, 1]), rtol=1e-12, atol=1e-12)


def test_single_layer_taylor_in_weights_and_bias():
    rng = np.random.default_rng(5)
    lay = ExtendedSingleLayer((2, 2, 3, 3), (6, 5), "sigmoid", stride=2)
    theta = lay.init_params(rng) + 0.2 * rng.standard_normal(lay.num_params)
    X = rng.standard_normal((lay.n_in, 2))
    assert_adjoint(lay.param_jacobian(theta, X), rng=6)
    taylor_test(lambda t: lay(t, X), lay.param_jacobian(theta, X), theta, rng=7)


def test_constant_weights_reproduce_the_conventional_network_exactly():
    rng = np.random.default_rng(1)
    net = _net()
    conv = net.conventional()
    primary = rng.standard_normal(net.num_primary)
    X = rng.standard_normal((net.n_in, 4))
    theta = net.expand(primary)
    Z, st = net.forward(theta, X)
    Zc, stc = conv.forward(primary, X)
    np.testing.assert_allclose(Z, Zc, rtol=1e-13, atol=1e-14)
    # the per-pixel gradient summed over pixels is the conventional kernel gradient
    dZ = rng.standard_normal(Z.shape)
    g, gY = net.vjp(theta, st, dZ)
    gc, gYc = conv.vjp(primary, stc, dZ)
    np.testing.assert_allclose(gY, gYc, rtol=1e-12, atol=1e-13)
    summed = np.concatenate([
        np.concatenate([t[: lay.pK].reshape(lay.kernel_shape + (-1,)).sum(-1).ravel(), t[lay.pK:]])
        for lay, t in zip(net.layers, net.split(g))])
    np.testing.assert_allclose(summed, gc, rtol=1e-11, atol=1e-12)
    # round trip, and the network built from a conventional one
    np.testing.assert_allclose(net.project(theta), primary, rtol=1e-13, atol=1e-14)
    conv2 = Network([SingleLayer(P.conv((1, 1, 3, 3), (6, 6)), "sigmoid") for _ in range(2)])
    ext2 = ExtendedNetwork.from_network(conv2)
    w = conv2.init_params(3)
    Xs = rng.standard_normal((36, 2))
    np.testing.assert_allclose(ext2(ext2.expand(w), Xs), conv2(w, Xs), rtol=1e-13, atol=1e-14)


def test_network_penalty_is_the_sum_of_layer_penalties():
    rng = np.random.default_rng(2)
    net = _net()
    primary, theta, _ = _point(net, rng)
    lam = 0.7
    val, gt, gp = net.penalty(theta, primary, lam)
    want = sum(structops.extension_penalty(lay.operator(t), p[: lay.num_kernel].reshape(lay.kernel_shape), lam)[0]
               for lay, t, p in zip(net.layers, net.split(theta), net.split_primary(primary)))
    assert val == pytest.approx(want, rel=1e-12)
    assert net.penalty(net.expand(primary), primary, lam)[0] == 0.0
    # biases carry no penalty; masked-out weights carry none either
    ti, pi = net.bias_index
    assert np.all(gt[ti] == 0) and np.all(gp[pi] == 0)
    assert np.all(gt[~net.aux_mask] == 0)
    taylor_test(lambda t: np.atleast_1d(net.penalty(t, primary, lam)[0]), lambda v: np.atleast_1d(gt @ v), theta,
                rng=3)
    taylor_test(lambda p: np.atleast_1d(net.penalty(theta, p, lam)[0]), lambda v: np.atleast_1d(gp @ v), primary,
                rng=4)


def _tiny(seed=0, lam=0.3):
    rng = np.random.default_rng(seed)
    net = ExtendedNetwork([ExtendedSingleLayer((1, 1, 3, 3), (5, 5), "sigmoid") for _ in range(2)])
    w_star = rng.uniform(-0.6, 0.6, net.num_primary)
    X = rng.standard_normal((net.n_in, 1))
    Y = net.conventional()(w_star, X)
    return net, w_star, X, Y, lam


def test_joint_objective_gradients():
    net, w_star, X, Y, lam = _tiny(1)
    rng = np.random.default_rng(3)
    primary = w_star + 0.3 * rng.standard_normal(w_star.size)
    theta = net.expand(primary) + 0.3 * rng.standard_normal(net.num_params) * net.aux_mask
    val, gt, gp, (mis, pen) = joint_objective(net, theta, primary, X, Y, lam)
    assert val == pytest.approx(mis + pen)
    taylor_test(lambda t: np.atleast_1d(joint_objective(net, t, primary, X, Y, lam)[0]),
                lambda v: np.atleast_1d(gt @ v), theta, v=rng.standard_normal(theta.size) * net.aux_mask, rng=4)
    taylor_test(lambda p: np.atleast_1d(joint_objective(net, theta, p, X, Y, lam)[0]),
                lambda v: np.atleast_1d(gp @ v), primary, rng=5)


def test_inner_solve_reaches_a_stationary_point_below_the_conventional_loss():
    net, w_star, X, Y, lam = _tiny(2)
    primary = w_star + 0.5 * np.random.default_rng(0).standard_normal(w_star.size)
    res = inner_solve(net, primary, X, Y, lam, maxiter=3000, gtol=1e-14)
    conv_loss = data_objective(net.conventional(), primary, X, Y)[0]
    assert res.fun < conv_loss
    assert res.fun == pytest.approx(res.misfit + res.penalty)
    _, gt, _, _ = joint_objective(net, res.theta, primary, X, Y, lam)
    assert np.linalg.norm(gt) < 1e-7 * max(1.0, np.linalg.norm(net.penalty(res.theta, primary, lam)[1]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.fun = 0.0


def test_reduced_gradient_matches_finite_differences():
    net, w_star, X, Y, lam = _tiny(3)
    rng = np.random.default_rng(4)
    primary = w_star + 0.4 * rng.standard_normal(w_star.size)
    tight = dict(maxiter=5000, gtol=1e-14, ftol=1e-16)
    val, g, res = reduced_objective(net, primary, X, Y, lam, **tight)
    v = rng.standard_normal(primary.size)
    h = 1e-4
    fp = reduced_objective(net, primary + h * v, X, Y, lam, res.theta, **tight)[0]
    fm = reduced_objective(net, primary - h * v, X, Y, lam, res.theta, **tight)[0]
    fd = (fp - fm) / (2 * h)
    assert g @ v == pytest.approx(fd, rel=1e-5, abs=1e-10)
    # and the bias components are not just the penalty's (which is zero there)
    ti, pi = net.bias_index
    assert np.all(np.abs(g[pi]) > 0)


@pytest.mark.parametrize("method", ["adam", "lbfgs", "gradient", "average"])
def test_varpro_training_decreases_the_reduced_objective(method):
    net, w_star, X, Y, lam = _tiny(5, lam=0.2)
    rng = np.random.default_rng(6)
    p0 = w_star + 0.8 * rng.standard_normal(w_star.size)
    seen = []
    res = train_extended(net, p0, X, Y, lam=lam, method=method, maxiter=8, lr=0.05, inner_maxiter=30,
                         callback=lambda k, p, v, inner: seen.append(k) and False)
    assert isinstance(res, ExtendedTrainResult)
    h = res.history
    assert len(h["fun"]) == len(h["misfit"]) == len(h["penalty"]) == res.nit + 1 == len(seen)
    assert h["fun"][-1] < h["fun"][0]
    np.testing.assert_allclose(h["fun"], h["misfit"] + h["penalty"], rtol=1e-12)
    assert res.theta.shape == (net.num_params,) and res.primary.shape == (net.num_primary,)


def test_varpro_random_aux_init_and_callback_stop():
    net, w_star, X, Y, lam = _tiny(7)
    res = train_extended(net, w_star + 0.3, X, Y, lam=lam, method="adam", maxiter=50, aux_init="random", rng=0,
                         inner_maxiter=10, callback=lambda k, p, v, inner: k >= 2)
    assert res.nit == 2 and res.message.startswith("stopped by the callback")
    with pytest.raises(ValueError, match="method"):
        train_extended(net, w_star, X, Y, method="newton")
    with pytest.raises(TypeError, match="ExtendedNetwork"):
        inner_solve(net.conventional(), w_star, X, Y, 0.1)
    for train in (train_extended, train_joint):
        with pytest.raises(ValueError, match="aux_init"):
            train(net, w_star, X, Y, aux_init="zeros")


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_joint_training_decreases_the_joint_objective(method):
    net, w_star, X, Y, lam = _tiny(8)
    p0 = w_star + 0.5 * np.random.default_rng(9).standard_normal(w_star.size)
    res = train_joint(net, p0, X, Y, lam=lam, method=method, maxiter=15)
    assert res.history["fun"][-1] < res.history["fun"][0]
    assert len(res.history["misfit"]) == len(res.history["fun"])
    val = joint_objective(net, res.theta, res.primary, X, Y, lam)[0]
    assert val == pytest.approx(res.fun, rel=1e-10)


def test_adam_and_lbfgs_on_a_quadratic():
    A = np.diag([1.0, 10.0, 100.0])
    b = np.ones(3)

    def f(x):
        r = A @ x - b
        return 0.5 * r @ r, A.T @ r

    x_star = np.linalg.solve(A, b)
    r1 = adam(f, np.zeros(3), lr=0.01, maxiter=3000)
    assert len(r1.history["fun"]) == 3001 and np.allclose(r1.x, x_star, atol=1e-3)
    r2 = lbfgs(f, np.zeros(3), maxiter=50, gtol=1e-12)
    assert np.allclose(r2.x, x_star, atol=1e-8) and r2.history["fun"][0] == pytest.approx(1.5)


def test_float32_stays_float32():
    net, w_star, X, Y, lam = _tiny(10)
    p0 = (w_star + 0.3).astype(np.float32)
    X32, Y32 = X.astype(np.float32), Y.astype(np.float32)
    for method in ("adam", "lbfgs"):
        res = train_extended(net, p0, X32, Y32, lam=lam, method=method, maxiter=2, inner_maxiter=5)
        assert res.primary.dtype == res.theta.dtype == np.float32
        res = train_joint(net, p0, X32, Y32, lam=lam, method=method, maxiter=2)
        assert res.primary.dtype == res.theta.dtype == np.float32
    assert inner_solve(net, p0, X32, Y32, lam, maxiter=3).theta.dtype == np.float32
    # float64 data keeps float64 parameters, whatever the starting point's dtype
    assert train_extended(net, p0, X, Y, lam=lam, maxiter=1, inner_maxiter=3).primary.dtype == np.float64

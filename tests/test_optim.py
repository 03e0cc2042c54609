"""The shared optimisers, the one Result vocabulary and the one callback rule of structops.solvers."""

import dataclasses

import numpy as np
import pytest

import structops
from structops import solvers
from structops.nn.extended import ExtendedSingleLayer
from structops.solvers import OptimResult, Result, adam, gd, lbfgs

A = np.diag([1.0, 10.0, 100.0])
B = np.ones(3)
X_STAR = np.linalg.solve(A, B)


def quadratic(x):
    r = A @ x - B
    return 0.5 * float(r @ r), A.T @ r


def rosenbrock(x):
    f = float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))
    g = np.zeros_like(x)
    g[:-1] = -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    return f, g


OPTIMISERS = {
    "adam": lambda fun, x0, **kw: adam(fun, x0, lr=0.01, **kw),
    "lbfgs": lambda fun, x0, **kw: lbfgs(fun, x0, **kw),
    "gd": lambda fun, x0, **kw: gd(fun, x0, step=1.0 / 100.0**2, **kw),
    "gd-armijo": lambda fun, x0, **kw: gd(fun, x0, line_search=True, **kw),
}

VOCABULARY = ("x", "fun", "success", "nit", "nfev", "message", "history", "seconds")


@pytest.mark.parametrize("name", OPTIMISERS)
def test_gtol_means_the_same_for_every_optimiser(name):
    res = OPTIMISERS[name](quadratic, np.zeros(3), maxiter=100000, gtol=1e-6)
    g0 = np.linalg.norm(quadratic(np.zeros(3))[1])
    gk = np.linalg.norm(quadratic(res.x)[1])
    assert isinstance(res, OptimResult) and res.success and res.status == "converged", res.message
    assert gk <= 1e-6 * max(1.0, g0)
    assert res.history["grad_norm"][-1] == pytest.approx(gk, rel=1e-12)
    assert len(res.history["fun"]) == len(res.history["grad_norm"]) == len(res.history["step_norm"]) == res.nit + 1
    assert res.history["fun"][0] == pytest.approx(1.5) and res.fun == pytest.approx(quadratic(res.x)[0])
    assert res.nfev >= res.nit + (name != "lbfgs")  # one evaluation per step at least (L-BFGS reuses x0's)
    assert res.seconds >= 0.0


@pytest.mark.parametrize("name", OPTIMISERS)
def test_ftol_stops_on_a_small_relative_decrease(name):
    res = OPTIMISERS[name](quadratic, np.array([-1.2, 1.0, 3.0]), maxiter=100000, ftol=1e-9)
    f = res.history["fun"]
    assert res.status == "converged" and res.success, res.message
    dec = (f[-2] - f[-1]) / max(abs(f[-2]), abs(f[-1]), 1.0)
    assert dec <= 1e-9 + 1e-15
    assert np.all((f[:-2] - f[1:-1]) / np.maximum(np.maximum(abs(f[:-2]), abs(f[1:-1])), 1.0) > 1e-9) or name == "lbfgs"


@pytest.mark.parametrize("name", OPTIMISERS)
def test_zero_tolerances_run_maxiter_iterations(name):
    res = OPTIMISERS[name](quadratic, np.zeros(3), maxiter=7)
    assert res.nit == 7 and res.status == "maxiter" and not res.success


@pytest.mark.parametrize("name", OPTIMISERS)
@pytest.mark.parametrize("ret, stops", [(True, True), (np.True_, True), (1, False), (None, False), (False, False),
                                        ("yes", False)])
def test_only_true_stops(name, ret, stops):
    seen = []

    def cb(k, x, f):
        seen.append(k)
        return ret if k == 2 else None

    res = OPTIMISERS[name](quadratic, np.zeros(3), maxiter=6, callback=cb)
    assert seen[0] == 0 and seen == list(range(len(seen)))
    if stops:
        assert res.nit == 2 and res.status == "callback" and not res.success and "callback" in res.message
    else:
        assert res.nit == 6 and seen == list(range(7))


@pytest.mark.parametrize("name", OPTIMISERS)
def test_callbacks_get_a_copy(name):
    def cb(k, x, f):
        x[...] = np.nan

    res = OPTIMISERS[name](quadratic, np.zeros(3), maxiter=3, callback=cb)
    assert np.isfinite(res.x).all() and res.nit == 3


@pytest.mark.parametrize("name", ["adam", "gd"])
def test_divergence_keeps_the_last_finite_iterate(name):
    def fun(x):
        if x[0] > 2.5:
            return np.inf, np.ones_like(x)
        return -float(x[0]), -np.ones_like(x)

    run = adam if name == "adam" else (lambda f, x0, **kw: gd(f, x0, step=1.0, **kw))
    res = run(fun, np.zeros(1), maxiter=100) if name == "gd" else run(fun, np.zeros(1), lr=1.0, maxiter=100)
    assert res.status == "diverged" and not res.success and "not finite" in res.message
    assert np.isfinite(res.fun) and res.x[0] <= 2.5 and np.isfinite(res.history["fun"]).all()


def test_shapes_dtypes_and_the_start_are_kept():
    def fun(x):  # x of shape (2, 3)
        r = x - 1.0
        return 0.5 * float((r * r).sum()), r

    for run in (lambda: lbfgs(fun, np.zeros((2, 3), dtype=np.float32), maxiter=20),
                lambda: adam(fun, np.zeros((2, 3), dtype=np.float32), maxiter=20),
                lambda: gd(fun, np.zeros((2, 3), dtype=np.float32), step=0.5, maxiter=20)):
        res = run()
        assert res.x.shape == (2, 3) and res.x.dtype == np.float32
    x0 = np.zeros((2, 3))
    lbfgs(fun, x0, maxiter=5)
    assert not x0.any()  # the start is not modified
    res = lbfgs(fun, np.zeros(3, dtype=np.int64), maxiter=5)
    assert res.x.dtype == np.float64


def test_gd_schedules_and_line_search():
    res = gd(quadratic, np.zeros(3), step=lambda k: 1e-4 * k, maxiter=5)
    np.testing.assert_allclose(res.history["step"][1:], 1e-4 * np.arange(1, 6))
    ls = gd(quadratic, np.zeros(3), line_search=True, maxiter=50)
    assert np.all(np.diff(ls.history["fun"]) <= 0)  # Armijo: monotone
    with pytest.raises(ValueError, match="step"):
        gd(quadratic, np.zeros(3))
    with pytest.raises(ValueError, match="step"):
        gd(quadratic, np.zeros(3), step=-1.0)


@pytest.mark.parametrize("kwargs, exc", [({"maxiter": -1}, ValueError), ({"maxiter": 2.0}, TypeError),
                                         ({"gtol": -1.0}, ValueError), ({"ftol": np.nan}, ValueError),
                                         ({"callback": 3}, TypeError)])
def test_options_are_checked(kwargs, exc):
    for run in (adam, lbfgs, lambda f, x0, **kw: gd(f, x0, step=0.1, **kw)):
        with pytest.raises(exc):
            run(quadratic, np.zeros(3), **kwargs)
    with pytest.raises(ValueError, match="memory"):
        lbfgs(quadratic, np.zeros(3), memory=0)


def test_results_are_frozen_and_old_names_warn():
    res = lbfgs(quadratic, np.zeros(3), maxiter=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.nit = 0
    with pytest.raises(AttributeError, match="no attribute 'converged'"):
        res.converged  # noqa: B018  (OptimResult never had it)
    K = np.random.default_rng(0).standard_normal((2, 2, 3, 3))
    reg = solvers.regularize_spectrum(K, (6, 6), maxiter=3)
    for old, new in [("converged", "success"), ("n_iter", "nit"), ("n_evals", "nfev"), ("penalty", "fun")]:
        with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; use .{new}"):
            assert getattr(reg, old) == getattr(reg, new)
    assert reg.kernel is reg.x


def _separable_problem():
    t = np.linspace(0, 3, 30)
    y = 2 * np.exp(-t) + np.exp(-3 * t)

    def phi(a):
        return np.exp(-np.outer(t, a))

    def dphi(a):
        D = np.zeros((t.size, 2, 2))
        D[:, 0, 0] = -t * np.exp(-a[0] * t)
        D[:, 1, 1] = -t * np.exp(-a[1] * t)
        return D

    return phi, dphi, y


def _tiny_net():
    rng = np.random.default_rng(3)
    net = ExtendedSingleLayer((1, 1, 3, 3), (5, 5))
    net = structops.nn.extended.ExtendedNetwork([net])
    p = rng.standard_normal(net.num_primary) * 0.3
    X = rng.standard_normal((net.n_in, 4))
    Y = rng.standard_normal((net.n_out, 4))
    return net, p, X, Y


def _solvers():
    """One short run of every solver of structops.solvers, as ``name -> run(callback)``."""
    phi, dphi, y = _separable_problem()
    net, p, X, Y = _tiny_net()
    K = np.random.default_rng(1).standard_normal((2, 2, 3, 3)) / 3
    return {
        "regularize": lambda cb: solvers.regularize_spectrum(K, (6, 6), maxiter=8, callback=cb),
        "varpro": lambda cb: solvers.varpro(phi, y, np.array([0.5, 2.0]), dphi=dphi, callback=cb),
        "train_extended": lambda cb: solvers.train_extended(net, p, X, Y, maxiter=8, inner_maxiter=5,
                                                            callback=lambda k, x, f, inner: cb(k, x, f)),
        "train_joint": lambda cb: solvers.train_joint(net, p, X, Y, maxiter=8, callback=cb),
        "adam": lambda cb: adam(quadratic, np.zeros(3), maxiter=8, callback=cb),
        "lbfgs": lambda cb: lbfgs(quadratic, np.zeros(3), maxiter=8, callback=cb),
        "gd": lambda cb: gd(quadratic, np.zeros(3), step=1e-4, maxiter=8, callback=cb),
    }


@pytest.mark.parametrize("name", list(_solvers()))
def test_every_solver_speaks_the_same_vocabulary(name):
    seen = []
    res = _solvers()[name](lambda k, x, f: seen.append((k, f)))
    assert isinstance(res, Result)
    for attr in VOCABULARY:
        assert hasattr(res, attr), attr
    assert isinstance(res.history, dict) and "fun" in res.history
    assert all(isinstance(v, np.ndarray) for v in res.history.values())
    assert res.fun == pytest.approx(res.history["fun"][-1], rel=1e-9, abs=1e-12)
    assert res.nfev >= res.nit >= 1 and res.seconds > 0 and res.message
    assert [k for k, _ in seen] == list(range(len(seen))) and seen[0][0] == 0  # the start, then every iteration
    assert seen[-1][1] == pytest.approx(res.fun, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", list(_solvers()))
def test_every_solver_stops_when_the_callback_returns_true(name):
    seen = []

    def cb(k, x, f):
        seen.append(k)
        return k == 2

    res = _solvers()[name](cb)
    assert seen == [0, 1, 2]
    assert "callback" in res.message and not res.success, res.message
    assert res.nit == 2 or name == "varpro"  # varpro counts Jacobian evaluations: 3 at the stop
    assert len(res.history["fun"]) == len(seen)


def test_lbfgs_solves_rosenbrock():
    res = lbfgs(rosenbrock, np.array([-1.2, 1.0]), maxiter=1000, gtol=1e-10)
    assert res.success and np.allclose(res.x, 1.0, atol=1e-7), res.message


@pytest.mark.parametrize("name", OPTIMISERS)
def test_a_start_that_meets_gtol_is_converged(name):
    x0 = X_STAR + 1e-11  # ||g_0|| ~ 1e-7 < 1e-6 < 1: the test gtol * max(1, ||g_0||) holds at the start
    assert np.linalg.norm(quadratic(x0)[1]) < 1e-6
    res = OPTIMISERS[name](quadratic, x0, maxiter=50, gtol=1e-6)
    assert res.nit == 0 and res.status == "converged" and res.success and "at the start" in res.message

"""The device (CuPy) path of the extended-convolution layers, networks and training loops.

Every test runs the same computation on NumPy and on a device array module
and compares the two: on the fake device of :mod:`fake_device` (always; it
turns NumPy-only calls on device data into ``TypeError``) and on CuPy where a
GPU is present (marker ``gpu``). Results must come back as device arrays of
the input precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import structops
from fake_device import DeviceArray, fake, fake_fft
from structops import _backend
from structops.nn import Network, SingleLayer
from structops.nn.extended import ExtendedNetwork, ExtendedSingleLayer
from structops import parametric as P
from structops.solvers.extended import (
    adam, data_objective, inner_solve, joint_objective, lbfgs, reduced_objective, train_extended, train_joint,
)


@dataclass
class Device:
    name: str
    xp: object
    exact: bool  # the fake computes with NumPy: the same numbers up to summation order

    def put(self, a):
        """Device copy of a host array."""
        return self.xp.array(a)

    def tol(self, dtype, loop: bool = False) -> float:
        if np.dtype(dtype) == np.float32:
            return 2e-4 if (self.exact or not loop) else 2e-2
        return 1e-12 if (self.exact or not loop) else 1e-7


@pytest.fixture
def fake_device(monkeypatch):
    """Install the fake device as the CuPy of structops._backend."""
    monkeypatch.setattr(_backend, "_cupy", fake)
    monkeypatch.setattr(_backend, "_cp_fft", fake_fft)
    return fake


@pytest.fixture(params=["fake", pytest.param("cupy", marks=pytest.mark.gpu)])
def device(request, monkeypatch):
    """The fake device, and CuPy where a GPU is present."""
    if request.param == "fake":
        monkeypatch.setattr(_backend, "_cupy", fake)
        monkeypatch.setattr(_backend, "_cp_fft", fake_fft)
        return Device("fake", fake, exact=True)
    if not _backend.cupy_available():
        pytest.skip("CuPy with a CUDA device is not available")
    import cupy  # pragma: no cover - GPU only

    return Device("cupy", cupy, exact=False)  # pragma: no cover - GPU only


@pytest.fixture(params=[np.float64, np.float32], ids=["f64", "f32"])
def dtype(request):
    return np.dtype(request.param)


def assert_device_close(got, want, dev: Device, dtype, loop: bool = False):
    """``got`` is a device array of ``dtype`` equal to the NumPy result ``want``."""
    assert isinstance(got, dev.xp.ndarray), type(got)
    assert got.dtype == dtype, (got.dtype, dtype)
    host = _backend.to_numpy(got)
    assert type(host) is np.ndarray
    want = np.asarray(want)
    tol = dev.tol(dtype, loop)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(host, want, rtol=tol, atol=tol * scale)


def assert_float_close(got, want, dev: Device, dtype, loop: bool = False):
    assert isinstance(got, float)
    tol = dev.tol(dtype, loop)
    assert got == pytest.approx(want, rel=tol, abs=tol * 1e-3)


# ------------------------------------------------------------------ the fake itself
def test_fake_device_refuses_numpy_calls_and_host_arrays(fake_device):
    d = fake.arange(6.0)
    assert _backend.get_xp(d) is fake and _backend.is_cupy(d)
    for ok in (d + d, 2.0 * d, d.sum(), d @ d, d.T, d.reshape(2, 3), d[1:], d[fake.asarray([0, 2])],
               d[d > 2], fake.concatenate([d, d]), fake_fft.rfft(d), fake.linalg.norm(d), np.sqrt(d)):
        assert isinstance(ok, DeviceArray)
    assert type(_backend.to_numpy(d)) is np.ndarray
    host = np.ones(6)
    for bad in (lambda: np.concatenate([d, d]), lambda: np.vdot(d, d), lambda: np.where(d > 0, d, 0),
                lambda: d * host, lambda: d[np.array([0, 1])], lambda: d.__setitem__(slice(None), host),
                lambda: fake.concatenate([d, host]), lambda: np.linalg.norm(d)):
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(TypeError, match="(?i)numpy.*cupy"):
        _backend.get_xp(d, host)


# ------------------------------------------------------------------ ExtendedConvND
_GEOMETRIES = [
    dict(w=(2, 3, 3, 3), in_shape=(5, 4), kw={}),
    dict(w=(2, 1, 3, 3), in_shape=(6, 5), kw=dict(stride=2, padding=1)),
    dict(w=(1, 2, 3, 3), in_shape=(5, 4), kw=dict(padding="circular")),
    dict(w=(2, 2, 3), in_shape=(9,), kw=dict(padding="valid", dilation=2)),
]


@pytest.mark.parametrize("geo", _GEOMETRIES, ids=["same", "stride2", "circular", "1d-valid-dil"])
def test_extended_conv_products(device, dtype, geo):
    rng = np.random.default_rng(0)
    out_shape = structops.ConvND(np.ones(geo["w"]), geo["in_shape"], **geo["kw"]).out_shape
    w = rng.standard_normal(geo["w"] + tuple(out_shape)).astype(dtype)
    ref = structops.ExtendedConvND(w, geo["in_shape"], **geo["kw"])
    op = structops.ExtendedConvND(device.put(w), geo["in_shape"], **geo["kw"])
    x = rng.standard_normal(op.shape[1]).astype(dtype)
    y = rng.standard_normal(op.shape[0]).astype(dtype)
    X = rng.standard_normal((op.shape[1], 3)).astype(dtype)
    Y = rng.standard_normal((op.shape[0], 3)).astype(dtype)
    assert_device_close(op @ device.put(x), ref @ x, device, dtype)
    assert_device_close(op.rmatvec(device.put(y)), ref.rmatvec(y), device, dtype)
    assert_device_close(op.matmat(device.put(X)), ref.matmat(X), device, dtype)
    assert_device_close(op.rmatmat(device.put(Y)), ref.rmatmat(Y), device, dtype)
    assert_device_close(op.kernel_average(), ref.kernel_average(), device, dtype)
    # per-pixel weight Jacobian of a batch, one and several directions
    J, Jr = op.jacobian(device.put(X)), ref.jacobian(X)
    dw = rng.standard_normal((J.shape[1], 2)).astype(dtype)
    r = rng.standard_normal((J.shape[0], 2)).astype(dtype)
    assert_device_close(J.matvec(device.put(dw[:, 0])), Jr.matvec(dw[:, 0]), device, dtype)
    assert_device_close(J.rmatvec(device.put(r[:, 0])), Jr.rmatvec(r[:, 0]), device, dtype)
    assert_device_close(J.matmat(device.put(dw)), Jr.matmat(dw), device, dtype)
    assert_device_close(J.rmatmat(device.put(r)), Jr.rmatmat(r), device, dtype)
    # penalty against a kernel
    K = rng.standard_normal(geo["w"]).astype(dtype)
    v, gw, gk = structops.extension_penalty(op, device.put(K), 0.7)
    vr, gwr, gkr = structops.extension_penalty(ref, K, 0.7)
    assert_float_close(v, vr, device, dtype)
    assert_device_close(gw, gwr, device, dtype)
    assert_device_close(gk, gkr, device, dtype)


# ------------------------------------------------------------------ networks
def _net(act="sigmoid"):
    return ExtendedNetwork([
        ExtendedSingleLayer((2, 1, 3, 3), (5, 4), act),
        ExtendedSingleLayer((1, 2, 3, 3), (5, 4), act, padding="circular"),
        ExtendedSingleLayer((1, 1, 3, 3), (5, 4), act, bias=False, padding="valid"),
    ])


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_extended_network_forward_jvp_vjp(device, dtype, act):
    rng = np.random.default_rng(1)
    net = _net(act)
    primary = rng.standard_normal(net.num_primary).astype(dtype)
    theta = (net.expand(primary) + 0.3 * rng.standard_normal(net.num_params)).astype(dtype)
    X = rng.standard_normal((net.n_in, 3)).astype(dtype)
    th, Xd = device.put(theta), device.put(X)
    Z, st = net.forward(th, Xd)
    Zr, str_ = net.forward(theta, X)
    assert_device_close(Z, Zr, device, dtype)
    V = rng.standard_normal((net.num_params, 2)).astype(dtype)
    dY = rng.standard_normal(X.shape).astype(dtype)
    assert_device_close(net.jvp(th, st, dtheta=device.put(V[:, 0])), net.jvp(theta, str_, dtheta=V[:, 0]),
                        device, dtype)
    assert_device_close(net.jvp(th, st, dtheta=device.put(V), dY=device.put(dY)),
                        net.jvp(theta, str_, dtheta=V, dY=dY), device, dtype)
    dZ = rng.standard_normal(Zr.shape).astype(dtype)
    g, gY = net.vjp(th, st, device.put(dZ))
    gr, gYr = net.vjp(theta, str_, dZ)
    assert_device_close(g, gr, device, dtype)
    assert_device_close(gY, gYr, device, dtype)
    # parameter maps and penalty
    assert_device_close(net.expand(device.put(primary)), net.expand(primary), device, dtype)
    assert_device_close(net.project(th), net.project(theta), device, dtype)
    v, gt, gp = net.penalty(th, device.put(primary), 0.4)
    vr, gtr, gpr = net.penalty(theta, primary, 0.4)
    assert_float_close(v, vr, device, dtype)
    assert_device_close(gt, gtr, device, dtype)
    assert_device_close(gp, gpr, device, dtype)
    # the Jacobians are operators on the device too
    Jt = net.param_jacobian(th, Xd)
    assert_device_close(Jt.rmatvec(device.put(dZ.ravel())), gr, device, dtype)


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_conventional_network_on_the_device(device, dtype, method):
    rng = np.random.default_rng(2)
    net = Network([SingleLayer(P.conv((2, 1, 3, 3), (6, 5), method=method), "tanh"),
                   SingleLayer(P.conv((1, 2, 3, 3), (6, 5), stride=2, method=method), "sigmoid")])
    w = net.init_params(0).astype(dtype)
    X = rng.standard_normal((net.n_in, 2)).astype(dtype)
    Y = rng.standard_normal((net.n_out, 2)).astype(dtype)
    v, g = data_objective(net, device.put(w), device.put(X), device.put(Y))
    vr, gr = data_objective(net, w, X, Y)
    assert_float_close(v, vr, device, dtype)
    assert_device_close(g, gr, device, dtype)


# ------------------------------------------------------------------ objectives and training
def _tiny(dtype, seed=0):
    rng = np.random.default_rng(seed)
    net = ExtendedNetwork([ExtendedSingleLayer((1, 1, 3, 3), (5, 5), "sigmoid") for _ in range(2)])
    w_star = rng.uniform(-0.6, 0.6, net.num_primary)
    X = rng.standard_normal((net.n_in, 2))
    Y = net.conventional()(w_star, X)
    p0 = w_star + 0.5 * rng.standard_normal(w_star.size)
    return net, p0.astype(dtype), X.astype(dtype), Y.astype(dtype)


def test_objectives_and_inner_solve(device, dtype):
    net, p0, X, Y = _tiny(dtype, 1)
    lam = 0.3
    rng = np.random.default_rng(3)
    theta = (net.expand(p0) + 0.2 * rng.standard_normal(net.num_params)).astype(dtype)
    pd, Xd, Yd, thd = (device.put(a) for a in (p0, X, Y, theta))
    v, g = data_objective(net, thd, Xd, Yd)
    vr, gr = data_objective(net, theta, X, Y)
    assert_float_close(v, vr, device, dtype)
    assert_device_close(g, gr, device, dtype)
    v, gt, gp, parts = joint_objective(net, thd, pd, Xd, Yd, lam)
    vr, gtr, gpr, partsr = joint_objective(net, theta, p0, X, Y, lam)
    assert_float_close(v, vr, device, dtype)
    assert_device_close(gt, gtr, device, dtype)
    assert_device_close(gp, gpr, device, dtype)
    res = inner_solve(net, pd, Xd, Yd, lam, thd, maxiter=20)
    resr = inner_solve(net, p0, X, Y, lam, theta, maxiter=20)
    assert_device_close(res.theta, resr.theta, device, dtype, loop=True)
    assert_float_close(res.fun, resr.fun, device, dtype, loop=True)
    if device.exact:
        assert res.nit == resr.nit
    v, g, res = reduced_objective(net, pd, Xd, Yd, lam, maxiter=20)
    vr, gr, resr = reduced_objective(net, p0, X, Y, lam, maxiter=20)
    assert_float_close(v, vr, device, dtype, loop=True)
    assert_device_close(g, gr, device, dtype, loop=True)


def _assert_same_training(res, ref, device, dtype):
    """A device training result against the NumPy one (iteration counts only where exact)."""
    if device.exact:
        assert res.nit == ref.nit and res.message == ref.message
    assert_device_close(res.primary, ref.primary, device, dtype, loop=True)
    assert_device_close(res.theta, ref.theta, device, dtype, loop=True)
    assert_float_close(res.fun, ref.fun, device, dtype, loop=True)


@pytest.mark.parametrize("method", ["adam", "lbfgs", "gradient", "average"])
def test_train_extended(device, dtype, method):
    net, p0, X, Y = _tiny(dtype, 5)
    kw = dict(lam=0.2, method=method, maxiter=3, lr=0.05, inner_maxiter=15)
    res = train_extended(net, device.put(p0), device.put(X), device.put(Y), **kw)
    ref = train_extended(net, p0, X, Y, **kw)
    _assert_same_training(res, ref, device, dtype)
    for key in ("fun", "misfit", "penalty", "grad_norm"):
        assert type(res.history[key]) is np.ndarray
        np.testing.assert_allclose(res.history[key], ref.history[key], rtol=device.tol(dtype, True))
    assert res.history["fun"][-1] < res.history["fun"][0]


def test_train_extended_random_aux_init_and_callback(device):
    net, p0, X, Y = _tiny(np.float64, 7)
    seen = []

    def cb(k, p, v, inner):
        seen.append((type(p), type(inner.theta)))
        return k >= 2

    kw = dict(lam=0.3, method="adam", maxiter=10, aux_init="random", rng=0, inner_maxiter=10)
    res = train_extended(net, device.put(p0), device.put(X), device.put(Y), callback=cb, **kw)
    ref = train_extended(net, p0, X, Y, **kw, callback=lambda k, p, v, inner: k >= 2)
    assert res.nit == 2 and res.message.startswith("stopped by the callback")
    assert all(t == (device.xp.ndarray, device.xp.ndarray) for t in seen)
    assert_device_close(res.theta, ref.theta, device, np.float64, loop=True)
    with pytest.raises(TypeError, match="(?i)numpy.*cupy"):
        train_extended(net, device.put(p0), X, Y, maxiter=1)


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_train_joint(device, dtype, method):
    net, p0, X, Y = _tiny(dtype, 8)
    kw = dict(lam=0.3, method=method, maxiter=5)
    res = train_joint(net, device.put(p0), device.put(X), device.put(Y), **kw)
    ref = train_joint(net, p0, X, Y, **kw)
    _assert_same_training(res, ref, device, dtype)
    assert res.history["fun"][-1] < res.history["fun"][0]


@pytest.mark.parametrize("opt", ["adam", "lbfgs"])
def test_optimisers_keep_the_iterates_on_the_device(device, dtype, opt):
    A = np.diag([1.0, 10.0, 100.0]).astype(dtype)
    b = np.ones(3, dtype=dtype)

    def f(x):
        xp = _backend.get_xp(x)
        Ax = xp.asarray(A) if xp is not np else A
        r = Ax @ x - (xp.asarray(b) if xp is not np else b)
        return 0.5 * float(r @ r), Ax.T @ r

    seen = []

    def cb(k, x, v):
        seen.append(type(x))
        return False

    run = (lambda fun, x0, **kw: adam(fun, x0, lr=0.01, maxiter=20, **kw)) if opt == "adam" else \
        (lambda fun, x0, **kw: lbfgs(fun, x0, maxiter=10, gtol=1e-12, **kw))
    res = run(f, device.put(np.zeros(3, dtype=dtype)), callback=cb)
    ref = run(f, np.zeros(3, dtype=dtype))
    assert set(seen) == {device.xp.ndarray}
    assert_device_close(res.x, ref.x, device, dtype, loop=True)
    np.testing.assert_allclose(res.history["fun"], ref.history["fun"], rtol=device.tol(dtype, True))

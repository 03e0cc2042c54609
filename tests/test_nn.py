"""Layers and networks: Jacobian-vector / vector-Jacobian products by dottest and Taylor test,
batched directions, the conditioning and Peaks reproductions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from structops import parametric as P
from structops.nn import ACTIVATIONS, Network, ResidualLayer, SingleLayer, dense, get_activation
from structops.testing import assert_adjoint, taylor_test

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

ACTS = ["tanh", "sigmoid", "relu", "sin"]


def _layers(act):
    return {
        "single_full": SingleLayer(P.full(4, 3), act),
        "single_conv": SingleLayer(P.conv((2, 1, 3, 3), (5, 4)), act),
        "residual_antisym": ResidualLayer(P.antisymmetric(5), act, h=0.5),
        "residual_mmatrix": ResidualLayer(P.mmatrix(4), act, bias=False),
        "residual_conv": ResidualLayer(P.conv((2, 2, 3, 3), (4, 4), padding="circular"), act),
        "network": Network([SingleLayer(P.conv((2, 1, 3, 3), (4, 4)), act),
                            ResidualLayer(P.conv((2, 2, 3, 3), (4, 4)), act),
                            ResidualLayer(P.diagonal(32), act), dense(32, 3, bias=True)]),
    }


LAYER_NAMES = list(_layers("tanh"))


def _point(layer, rng, dtype):
    theta = layer.init_params(rng, dtype=dtype)
    theta = theta + dtype(0.3) * rng.standard_normal(theta.size).astype(dtype)
    Y = rng.standard_normal((layer.n_in, 3)).astype(dtype)
    return theta, Y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("name", LAYER_NAMES)
def test_jacobians_dottest_and_taylor(rng, name, act, dtype):
    layer = _layers(act)[name]
    theta, Y = _point(layer, rng, dtype)
    Jt = layer.param_jacobian(theta, Y)
    Jy = layer.input_jacobian(theta, Y)
    assert Jt.shape == (layer.n_out * 3, layer.num_params)
    assert Jy.shape == (layer.n_out * 3, layer.n_in * 3)
    rtol = 1e-4 if dtype == np.float32 else None
    assert_adjoint(Jt, rtol=rtol, rng=rng)
    assert_adjoint(Jy, rtol=rtol, rng=rng)
    if dtype == np.float32:
        assert layer(theta, Y).dtype == np.float32
        return
    # ReLU is piecewise linear: steps small enough not to cross a kink
    h0 = 1e-7 if act == "relu" else 1.0
    taylor_test(lambda t: layer(t, Y), Jt, theta, h0=h0, rng=rng)
    taylor_test(lambda y: layer(theta, y.reshape(Y.shape)), Jy, Y.ravel(), h0=h0, rng=rng)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_taylor_fails_for_a_wrong_jacobian(rng, name):
    """The tests can fail: a Jacobian with a perturbed activation derivative is caught."""
    act = get_activation("tanh")
    wrong = type(act)("tanh-wrong", act.f, lambda A: act.df(A) * 1.01)
    layer = _layers(wrong)[name]
    theta, Y = _point(layer, rng, np.float64)
    with pytest.raises(AssertionError):
        taylor_test(lambda t: layer(t, Y), layer.param_jacobian(theta, Y), theta, rng=rng)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_batched_directions_equal_single(rng, name):
    layer = _layers("sin")[name]
    theta, Y = _point(layer, rng, np.float64)
    Z, st = layer.forward(theta, Y)
    k = 3
    dT = rng.standard_normal((layer.num_params, k))
    dY = rng.standard_normal((layer.n_in, Y.shape[1], k))
    dZ = layer.jvp(theta, st, dtheta=dT, dY=dY)
    assert dZ.shape == (layer.n_out, Y.shape[1], k)
    W = rng.standard_normal((layer.n_out, Y.shape[1], k))
    gT, gY = layer.vjp(theta, st, W)
    for j in range(k):
        np.testing.assert_allclose(dZ[:, :, j], layer.jvp(theta, st, dtheta=dT[:, j], dY=dY[:, :, j]),
                                   rtol=1e-12, atol=1e-12)
        g1, g2 = layer.vjp(theta, st, W[:, :, j])
        np.testing.assert_allclose(gT[:, j], g1, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(gY[:, :, j], g2, rtol=1e-11, atol=1e-12)


def test_vjp_is_torch_gradient(rng):
    torch = pytest.importorskip("torch")
    m, d, s = 5, 3, 7
    net = Network([SingleLayer(P.full(m, d), "tanh"), dense(m, 2, bias=True)])
    theta = net.init_params(rng)
    Y = rng.standard_normal((d, s))
    C = rng.standard_normal((2, s))
    Z, st = net.forward(theta, Y)
    g = net.vjp(theta, st, Z - C)[0]
    t = torch.tensor(theta, requires_grad=True)
    K, b = t[: m * d].reshape(m, d), t[m * d: m * d + m]
    W, c = t[m * d + m: m * d + m + 2 * m].reshape(2, m), t[-2:]
    Zt = W @ torch.tanh(K @ torch.tensor(Y) + b[:, None]) + c[:, None]
    (0.5 * ((Zt - torch.tensor(C)) ** 2).sum()).backward()
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_activations_derivatives(rng):
    A = rng.standard_normal(50) * 3
    for name, act in ACTIVATIONS.items():
        h = 1e-6
        fd = (act.f(A + h) - act.f(A - h)) / (2 * h)
        np.testing.assert_allclose(act.df(A), fd, atol=1e-6, err_msg=name)
    assert np.isfinite(get_activation("sigmoid").f(np.array([-800.0, 800.0]))).all()
    with pytest.raises(ValueError, match="unknown activation"):
        get_activation("softplus")


def test_errors(rng):
    with pytest.raises(ValueError, match="equal input and output"):
        ResidualLayer(P.full(3, 4))
    with pytest.raises(TypeError, match="parametric model"):
        SingleLayer(np.eye(3))
    layer = SingleLayer(P.full(4, 3))
    with pytest.raises(ValueError, match=r"expected \(3, B\)"):
        layer(layer.init_params(0), np.ones((4, 2)))
    with pytest.raises(ValueError, match="does not match"):
        Network([dense(3, 4), dense(5, 2)])


# ---------------------------------------------------------------- reproductions
def test_conditioning_jacobian_is_the_kronecker_formula():
    import conditioning

    m, s, d = 6, 20, 3
    sv, J = conditioning.jacobian_singular_values(m, s=s, seed=3)
    # rebuild with the lecture's formulas from the same random draws
    rng = np.random.default_rng(3)
    Y = rng.uniform(-1, 1, size=(d, s))
    theta = rng.standard_normal(m * d + m)
    K, W = theta[: m * d].reshape(m, d), theta[m * d:].reshape(1, m)
    A = K @ Y
    JW = np.kron(np.tanh(A).T, np.eye(1))
    JK = np.kron(np.eye(s), W) @ np.diag((1 - np.tanh(A) ** 2).ravel(order="F")) @ np.kron(Y.T, np.eye(m))
    # J_K above is for vec(K) column-major; our theta is row-major
    perm = np.arange(m * d).reshape(m, d).ravel(order="F")
    JK_rowmajor = np.empty_like(JK)
    JK_rowmajor[:, perm] = JK
    np.testing.assert_allclose(J, np.hstack([JK_rowmajor, JW]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sv, np.linalg.svd(J, compute_uv=False))


def test_conditioning_script_quick(tmp_path):
    import conditioning

    out = conditioning.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "conditioning.json").exists() and (tmp_path / "conditioning.png").exists()
    for m, r in out["results"].items():
        assert len(r["singular_values"]) == min(100, 4 * int(m))
        assert r["cond"] > 1e2  # ill-conditioned, as in the lecture


def test_peaks_script_quick(tmp_path):
    import peaks_single_layer

    out = peaks_single_layer.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "peaks.json").exists() and (tmp_path / "peaks.png").exists()
    res = out["methods"]
    assert set(res) == {"varpro", "sgd", "gauss-newton"}
    assert res["varpro"]["train_acc"] > 0.6
    assert res["varpro"]["train_loss"] <= res["sgd"]["train_loss"]


@pytest.mark.slow
def test_peaks_full(tmp_path):
    """The full Peaks experiment (2000 points, width 32): VarPro reaches > 85 % validation accuracy."""
    import peaks_single_layer

    out = peaks_single_layer.main(["--out", str(tmp_path)])
    assert out["methods"]["varpro"]["val_acc"] > 0.85

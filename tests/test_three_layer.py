"""The three-layer convex relaxation (two ReLU levels): derivatives, certificates, cvxpy, bounds, recovery, errors."""

import numpy as np
import pytest

from structops.convex import PatchOperator
from structops.convex.three_layer import (ThreeLayerCNN, network_patterns, sample_three_layer_patterns,
                                          smoothed_norm, smoothed_nuclear, three_layer_cnn, train_three_layer_sgd,
                                          _patches_of)


def _problem(seed=0, n=5, d=4, h=3, samples=60):
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((n, d)), rng.standard_normal(n)
    A = PatchOperator(X, h, padding="circular")
    return A, y, sample_three_layer_patterns(A, samples, seed=seed)


@pytest.mark.parametrize("shape", [(3, 5, 3), (2, 2, 4)])
@pytest.mark.parametrize("kind", ["random", "rank-one", "repeated", "zero"])
def test_smoothed_nuclear_derivatives(shape, kind):
    rng = np.random.default_rng(1)
    C = rng.standard_normal(shape)
    if kind == "rank-one":
        C = rng.standard_normal(shape[:2])[:, :, None] * rng.standard_normal((shape[0], 1, shape[2]))
    elif kind == "repeated":  # equal singular values
        Q = np.linalg.qr(rng.standard_normal((max(shape[1:]), max(shape[1:]))))[0]
        C = np.broadcast_to(Q[:shape[1], :shape[2]], shape).copy()
    elif kind == "zero":
        C = np.zeros(shape)
    eps = 0.2
    v, g, H = smoothed_nuclear(C, eps)
    nuc = np.linalg.svd(C, compute_uv=False).sum(axis=1)
    assert np.all(v <= nuc + 1e-12) and np.all(v >= nuc - min(shape[1:]) * eps - 1e-12)
    E = rng.standard_normal(shape)
    t = 1e-6
    vp, gp, _ = smoothed_nuclear(C + t * E, eps)
    vm, gm, _ = smoothed_nuclear(C - t * E, eps)
    assert np.allclose((vp - vm) / (2 * t), (g * E).sum(axis=(1, 2)), atol=1e-7)
    HE = np.einsum("mpq,mq->mp", H, E.reshape(shape[0], -1))
    assert np.allclose(((gp - gm) / (2 * t)).reshape(shape[0], -1), HE, atol=1e-6)
    assert np.linalg.eigvalsh(H).min() >= -1e-10  # convex


def test_smoothed_norm_matches_the_one_row_nuclear_norm():
    rng = np.random.default_rng(2)
    C = rng.standard_normal((4, 6))
    v, g, H = smoothed_norm(C, 0.3)
    vn, gn, Hn = smoothed_nuclear(C[:, None, :], 0.3)
    assert np.allclose(v, vn) and np.allclose(g, gn[:, 0]) and np.allclose(H, Hn, atol=1e-12)


def test_patterns_are_distinct_and_strictly_inside():
    A, y, pat = _problem(samples=200)
    T = _patches_of(A)
    keys = {(pat.d1[j].tobytes(), pat.signs[j].tobytes(), pat.d2[j].tobytes()) for j in range(pat.P)}
    assert len(keys) == pat.P and pat.sampled == 200
    for j in range(pat.P):
        Z = np.einsum("knh,h->kn", T, pat.filters[j])
        assert np.array_equal(Z >= 0, pat.d1[j]) and pat.d2[j].any()
        s = np.where(pat.first[j] >= 0, 1.0, -1.0)
        assert np.array_equal(s, pat.signs[j])


@pytest.mark.parametrize("tol", [1e-6, 1e-9])
@pytest.mark.parametrize("penalty", ["nuclear", "frobenius"])
def test_agrees_with_cvxpy(penalty, tol):
    cp = pytest.importorskip("cvxpy")
    A, y, pat = _problem(seed=3, samples=40)
    beta = 0.05
    fit = three_layer_cnn(A, y, beta, pat, penalty=penalty, polish=False, tol=tol)
    assert fit.lower_bound <= fit.objective
    assert fit.converged == (fit.relative_gap <= tol)
    # the nuclear certificate stops near 1e-8 (6e-9 to 1.4e-8 over four seeds at tol=1e-9: past it the smoothed
    # Newton systems resolve no more); the Frobenius one reaches the tolerance
    assert fit.relative_gap <= (tol if tol >= 1e-6 or penalty == "frobenius" else 5e-8)
    # the same program written independently, as dense matrices
    T = _patches_of(A)
    K, n, h = T.shape
    pred, pen, cons = 0, 0, []
    for l in range(pat.P):
        D1, s, D2 = pat.d1[l], pat.signs[l], pat.d2[l]
        M = np.concatenate([D1[k][:, None] * T[k] for k in range(K)], axis=1)
        G1 = np.zeros((K * n, K * h))
        for k in range(K):
            G1[k * n:(k + 1) * n, k * h:(k + 1) * h] = s[k] * (2 * D1[k] - 1)[:, None] * T[k]
        for o in (1, -1):
            C = cp.Variable((K, h))
            v = cp.vec(C, order="C")
            cons += [G1 @ v >= 0, cp.multiply(2 * D2 - 1, M @ v) >= 0]
            pred = pred + o * cp.multiply(D2.astype(float), M @ v)
            pen = pen + (cp.normNuc(C) if penalty == "nuclear" else cp.norm(v))
    ref = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(pred - y) + beta * pen), cons)
    ref.solve(solver="CLARABEL", tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    # measured: 1.3e-7 and 1.5e-7 above cvxpy at tol=1e-6 (inside the gap), 1e-10 at tol=1e-9
    assert abs(fit.objective - ref.value) <= (1e-6 if tol >= 1e-6 else 2e-8) * ref.value
    assert fit.lower_bound <= ref.value * (1 + 1e-9)


def test_relaxation_is_at_most_every_network_with_its_patterns():
    A, y, pat = _problem(seed=4, samples=30)
    rng = np.random.default_rng(4)
    beta = 0.1
    T = _patches_of(A)
    K, n, h = T.shape
    U = rng.standard_normal((3, h))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    net = ThreeLayerCNN(U, rng.standard_normal((3, K)), rng.standard_normal(3))
    both = network_patterns(A, net, also=pat)
    assert both.P >= pat.P and both.P <= pat.P + 3
    fit = three_layer_cnn(A, y, beta, both)
    assert fit.lower_bound <= fit.objective <= net.objective(A, y, beta) * (1 + 1e-7)
    # the read-off network and its polish are real networks: their objectives are what they report
    assert fit.polished_objective <= fit.network_objective + 1e-12
    assert fit.polished.objective(A, y, beta) == pytest.approx(fit.polished_objective)


def test_one_patch_is_rank_one_and_exact():
    # K = 1: every group is h x 1, rank one, so the read-off network attains the relaxation's optimum
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((6, 4)), rng.standard_normal(6)
    A = PatchOperator(X, 4)
    pat = sample_three_layer_patterns(A, 300, seed=5)
    fit = three_layer_cnn(A, y, 0.05, pat, polish=False)
    assert fit.converged and fit.rank_ratio == 0.0
    assert fit.network_objective == pytest.approx(fit.objective, rel=1e-6)


def test_zero_targets_give_the_zero_network():
    A, _, pat = _problem(seed=6, samples=20)
    fit = three_layer_cnn(A, np.zeros(A.n), 0.1, pat)
    assert fit.objective <= 1e-8 and fit.lower_bound <= fit.objective
    assert fit.polished_objective <= 1e-8


def test_bad_arguments_are_refused():
    A, y, pat = _problem(samples=20)
    with pytest.raises(ValueError, match="beta"):
        three_layer_cnn(A, y, 0.0, pat)
    with pytest.raises(ValueError, match="entries"):
        three_layer_cnn(A, y[:-1], 0.1, pat)
    with pytest.raises(ValueError, match="penalty"):
        three_layer_cnn(A, y, 0.1, pat, penalty="trace")
    with pytest.raises(ValueError):
        three_layer_cnn(A, np.full_like(y, np.nan), 0.1, pat)
    with pytest.raises(ValueError, match="do not match"):
        three_layer_cnn(A.rows(slice(0, 3)), y[:3], 0.1, pat)
    with pytest.raises(TypeError):
        three_layer_cnn(A, y, 0.1, "patterns")
    with pytest.raises(ValueError, match="n_samples"):
        sample_three_layer_patterns(A, 0)
    with pytest.raises(ValueError, match="kind"):
        sample_three_layer_patterns(A, 5, kind="uniform")
    with pytest.raises(ValueError, match="norm"):
        ThreeLayerCNN(2 * np.ones((1, A.h)), np.ones((1, A.K)), np.ones(1)).objective(A, y, 0.1)
    with pytest.raises(ValueError, match="do not match"):
        ThreeLayerCNN(np.ones((2, A.h)), np.ones((1, A.K)), np.ones(2))


def test_network_gradient_by_finite_differences():
    A, y, _ = _problem(seed=7, samples=5)
    rng = np.random.default_rng(7)
    net = ThreeLayerCNN(rng.standard_normal((3, A.h)), rng.standard_normal((3, A.K)), rng.standard_normal(3))
    val, dU, dW1, dw2 = net.value_and_grad(A, y, 0.1)
    T = _patches_of(A)
    from structops.convex.three_layer import _value_and_grad

    t = 1e-6
    for P, dP, i in ((net.filters, dU, 0), (net.first, dW1, 1), (net.second, dw2, 2)):
        E = rng.standard_normal(P.shape)
        args = [net.filters, net.first, net.second]
        args[i] = P + t * E
        fp = _value_and_grad(T, y, 0.1, *args)[0]
        args[i] = P - t * E
        fm = _value_and_grad(T, y, 0.1, *args)[0]
        assert (fp - fm) / (2 * t) == pytest.approx(float((dP * E).sum()), rel=1e-5, abs=1e-8)


def test_sgd_descends_and_keeps_unit_filters():
    A, y, _ = _problem(seed=8, samples=5)
    net, hist = train_three_layer_sgd(A, y, 0.1, width=4, epochs=200, seed=8)
    assert hist[-1][1] < hist[0][1]
    assert np.allclose(np.linalg.norm(net.filters, axis=1), 1.0)
    assert net.objective(A, y, 0.1) == pytest.approx(hist[-1][1])


@pytest.mark.parametrize("penalty", ["nuclear", "frobenius"])
def test_small_weight_decay_reaches_the_interpolation_regime(penalty):
    """Near beta = 0 the relaxation's optimum is beta times the least penalty of an interpolating point.

    The barrier started at ``tau = N / f`` ran, at beta = 1e-7, through
    groups of enormous norm and stopped at 0.0019 for an optimum of 1.7e-7.
    """
    A, y, pat = _problem()
    per_beta = []
    for beta in (1e-5, 1e-7):
        fit = three_layer_cnn(A, y, beta, pat, penalty=penalty, polish=False)
        assert fit.converged and fit.lower_bound <= fit.objective <= 0.5 * float(y @ y)
        per_beta.append(fit.objective / beta)
    np.testing.assert_allclose(per_beta[1], per_beta[0], rtol=1e-4)  # measured 1e-5

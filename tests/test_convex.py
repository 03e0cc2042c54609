"""structops.convex: patch operators, gates, the two-layer convex programs and their certificates."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from structops.convex import (
    PatchOperator,
    TwoLayerCNN,
    gated_relu_cnn,
    group_prox,
    recover_network,
    relu_cnn,
    sample_gates,
    train_two_layer_sgd,
)
from structops.testing import assert_adjoint, assert_matches_dense


def dense_patches(X, k, stride, pad, dil, circular=False):
    """The patch matrices by loops over positions and taps: ``(K, n, h)``."""
    n, c = X.shape[:2]
    sp = X.shape[2:]
    D = len(sp)
    mode = "wrap" if circular else "constant"
    Xp = np.pad(X, [(0, 0), (0, 0)] + list(pad), mode=mode)
    out = [(sp[a] + pad[a][0] + pad[a][1] - dil[a] * (k[a] - 1) - 1) // stride[a] + 1 for a in range(D)]
    rows = []
    for pos in np.ndindex(*out):
        patch = np.empty((n, c) + tuple(k))
        for tap in np.ndindex(*k):
            idx = tuple(pos[a] * stride[a] + tap[a] * dil[a] for a in range(D))
            patch[(slice(None), slice(None)) + tap] = Xp[(slice(None), slice(None)) + idx]
        rows.append(patch.reshape(n, -1))
    return np.stack(rows)


@st.composite
def patch_cases(draw):
    D = draw(st.sampled_from([1, 2]))
    k = tuple(draw(st.integers(1, 3)) for _ in range(D))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(D))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(D))
    pad = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(D))
    e = [d * (kk - 1) + 1 for kk, d in zip(k, dil)]
    sp = tuple(draw(st.integers(max(1, ea - lo - hi), ea + 5)) for ea, (lo, hi) in zip(e, pad))
    return dict(n=draw(st.integers(1, 4)), c=draw(st.integers(1, 2)), k=k, dil=dil, stride=stride, pad=pad, sp=sp,
                seed=draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=40, deadline=None)
@given(case=patch_cases())
def test_patch_operator_equals_the_patch_matrices(case):
    rng = np.random.default_rng(case["seed"])
    X = rng.standard_normal((case["n"], case["c"]) + case["sp"])
    T = dense_patches(X, case["k"], case["stride"], case["pad"], case["dil"])
    dense = T.reshape(-1, T.shape[-1])
    for method in ("patches", "conv"):
        A = PatchOperator(X, case["k"], stride=case["stride"], padding=case["pad"], dilation=case["dil"],
                          method=method)
        assert A.dimsd == (T.shape[0], case["n"]) and A.h == T.shape[-1]
        assert_matches_dense(A, dense, rng=rng)
        assert_adjoint(A, rng=rng)


def test_circular_patches_and_one_dimensional_signals():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3, 2, 5, 6))
    T = dense_patches(X, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), circular=True)
    for method in ("patches", "conv"):
        A = PatchOperator(X, 3, padding="circular", method=method)
        assert_matches_dense(A, T.reshape(-1, T.shape[-1]), rng=rng)
    S = rng.standard_normal((4, 15))
    A = PatchOperator(S, 10, stride=5)
    np.testing.assert_array_equal(A._T.reshape(2, 4, 10)[1], S[:, 5:15])


def test_responses_and_gradients_are_adjoint_batches():
    rng = np.random.default_rng(2)
    A = PatchOperator(rng.standard_normal((5, 1, 7, 7)), 3, stride=2)
    C = rng.standard_normal((4, A.h))
    R = rng.standard_normal((A.K, A.n, 4))
    Z = A.responses(C)
    assert Z.shape == (A.K, A.n, 4)
    np.testing.assert_allclose(float((Z * R).sum()), float((C * A.gradients(R)).sum()), rtol=1e-12)
    np.testing.assert_allclose(A.rows([0, 3]).responses(C), Z[:, [0, 3]], rtol=1e-14)


def test_patch_operator_refuses_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        PatchOperator(np.ones((2, 1, 5, 5)), (3,))
    with pytest.raises(ValueError, match="method"):
        PatchOperator(np.ones((2, 5)), 3, method="im2col")
    with pytest.raises(ValueError, match="shape"):
        PatchOperator(np.ones(5), 3)


def test_gates_are_distinct_nonzero_and_reproducible_from_their_generators():
    rng = np.random.default_rng(3)
    A = PatchOperator(rng.standard_normal((6, 15)), 10, stride=5)
    for kind in ("gaussian", "patches", "mixed"):
        g = sample_gates(A, 3000, kind=kind, seed=0)
        flat = g.masks.reshape(-1, g.P).T
        assert len({row.tobytes() for row in flat}) == g.P and flat.any(axis=1).all()
        np.testing.assert_array_equal(g.on(A), g.masks)
        assert g.P <= 2 * sum(__import__("math").comb(11, i) for i in range(10))  # regions of 12 planes in R^10
    with pytest.raises(ValueError, match="kind"):
        sample_gates(A, 10, kind="uniform")


def test_group_prox_is_block_soft_thresholding():
    X = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    np.testing.assert_allclose(group_prox(X, 1.0), [[2.4, 3.2], [0.0, 0.0], [0.0, 0.0]])


def synthetic(seed, n=6, d=15):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.standard_normal(n)


@pytest.mark.parametrize("seed", [0, 1])
def test_relu_program_certificate_recovery_and_sgd(seed):
    """The certified convex optimum is below SGD's runs, and the recovered ReLU network attains it."""
    X, y = synthetic(seed)
    A = PatchOperator(X, 10, stride=5)
    gates = sample_gates(A, 2000, kind="mixed", seed=seed)
    beta = 1e-2
    fit = relu_cnn(A, y, beta, gates, tol=1e-7)
    assert fit.converged and fit.relative_gap <= 1e-7 and fit.lower_bound <= fit.objective
    assert fit.max_violation <= 1e-12
    # the recovered network reproduces the convex objective (its gates are its groups' gates)
    assert abs(fit.nonconvex_objective - fit.objective) <= 1e-9 * fit.objective
    net = TwoLayerCNN(fit.filters, fit.weights)
    assert abs(net.objective(A, y, beta) - fit.objective) <= 1e-9 * fit.objective
    best = min(train_two_layer_sgd(A, y, beta, width=10, epochs=300, seed=s)[1][-1][1] for s in range(3))
    assert fit.objective <= best * (1 + 1e-9)
    gated = gated_relu_cnn(A, y, beta, gates, tol=1e-9)
    # the gated program relaxes the ReLU one over the same gates
    assert gated.lower_bound <= fit.objective * (1 + 1e-9)


def test_nonconvex_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    A = PatchOperator(rng.standard_normal((4, 2, 6, 6)), 3, stride=1, padding=1)
    y = rng.standard_normal(4)
    net = TwoLayerCNN(rng.standard_normal((3, A.h)), rng.standard_normal(3))
    _, dU, dw = net.value_and_grad(A, y, 0.1)
    dU0, dw0 = rng.standard_normal(dU.shape), rng.standard_normal(dw.shape)
    slope = float((dU * dU0).sum() + dw @ dw0)
    errs = []
    for eps in (1e-2, 1e-3, 1e-4):
        fp = TwoLayerCNN(net.filters + eps * dU0, net.weights + eps * dw0).objective(A, y, 0.1)
        fm = TwoLayerCNN(net.filters - eps * dU0, net.weights - eps * dw0).objective(A, y, 0.1)
        errs.append(abs((fp - fm) / (2 * eps) - slope))
    assert errs[-1] <= 1e-6 * max(1.0, abs(slope)) or errs[-1] < errs[0] / 50


def test_recover_network_signs_and_scales():
    V = np.array([[3.0, 4.0], [0.0, 0.0]])
    W = np.array([[0.0, 0.0], [0.0, 9.0]])
    U, w, idx = recover_network(V, W)
    np.testing.assert_allclose(w, [np.sqrt(5.0), -3.0])
    np.testing.assert_allclose(U, [[3 / np.sqrt(5), 4 / np.sqrt(5)], [0.0, 3.0]])
    np.testing.assert_array_equal(idx, [0, 3])


def test_programs_refuse_bad_arguments():
    X, y = synthetic(0)
    A = PatchOperator(X, 10, stride=5)
    g = sample_gates(A, 50, seed=0)
    with pytest.raises(ValueError, match="beta"):
        gated_relu_cnn(A, y, 0.0, g)
    with pytest.raises(ValueError, match="entries"):
        relu_cnn(A, y[:3], 0.1, g)
    with pytest.raises(TypeError, match="PatchOperator"):
        gated_relu_cnn(X, y, 0.1, g)
    other = sample_gates(PatchOperator(X, 5, stride=5), 20, seed=0)
    with pytest.raises(ValueError, match="do not match"):
        gated_relu_cnn(A, y, 0.1, other)


# ------------------------------------------------------------------ exact small-scale solves (cvxpy)


def _cvxpy_solve(A, y, beta, gates, relu):
    cvxpy = pytest.importorskip("cvxpy")
    T = A._T.reshape(A.K, A.n, A.h)
    D = gates.masks.astype(float)
    P = gates.P
    V = cvxpy.Variable((P, A.h))
    W = cvxpy.Variable((P, A.h)) if relu else None
    pred = 0
    cons = []
    for j in range(P):
        Mj = sum(D[k, :, j][:, None] * T[k] for k in range(A.K))  # (n, h)
        pred = pred + Mj @ (V[j] - W[j] if relu else V[j])
        if relu:
            for k in range(A.K):
                Gk = (2 * D[k, :, j] - 1)[:, None] * T[k]
                cons += [Gk @ V[j] >= 0, Gk @ W[j] >= 0]
    reg = sum(cvxpy.norm(V[j], 2) for j in range(P)) + (sum(cvxpy.norm(W[j], 2) for j in range(P)) if relu else 0)
    prob = cvxpy.Problem(cvxpy.Minimize(0.5 * cvxpy.sum_squares(pred - y) + beta * reg), cons)
    with warnings.catch_warnings():  # Clarabel calls these tolerances "inaccurate"; measured 1e-11 relative
        warnings.simplefilter("ignore", UserWarning)
        prob.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert prob.status in ("optimal", "optimal_inaccurate")
    return prob.value


def _small_problem(seed):
    """5 images 4x4, 2x2 patches with stride 2 (h = 4, K = 4), 40 mixed generators."""
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((5, 1, 4, 4)), rng.standard_normal(5)
    A = PatchOperator(X, 2, stride=2)
    return A, y, sample_gates(A, 40, kind="mixed", seed=seed)


@pytest.mark.parametrize("seed, beta", [(0, 0.05), (1, 0.2), (2, 0.01), (3, 0.1), (4, 0.02)])
def test_solvers_agree_with_cvxpy(seed, beta):
    A, y, gates = _small_problem(seed)
    for relu, solve in ((False, gated_relu_cnn), (True, relu_cnn)):
        ref = _cvxpy_solve(A, y, beta, gates, relu)
        fit = solve(A, y, beta, gates, tol=1e-9)
        assert fit.converged
        assert abs(fit.objective - ref) <= 1e-6 * ref, (relu, fit.objective, ref)
        assert fit.lower_bound <= ref * (1 + 1e-8) and fit.objective >= ref * (1 - 1e-8)


@pytest.mark.parametrize("tol", [1e-5, 1e-10])
def test_gated_program_from_every_group_at_once_agrees_with_cvxpy(tol):
    """Fully connected with more samples than gates: one barrier solve on every group (structured blocks, Woodbury
    systems), stopped by its certificate; the optimum and a certified gap within the tolerance."""
    rng = np.random.default_rng(8)
    X = rng.standard_normal((80, 6))
    y = np.maximum(X @ rng.standard_normal(6), 0) + 0.1 * rng.standard_normal(80)
    A = PatchOperator(X, 6)
    gates = sample_gates(A, 30, seed=2)
    ref = _cvxpy_solve(A, y, 2.0, gates, False)
    fit = gated_relu_cnn(A, y, 2.0, gates, tol=tol)
    assert fit.converged and len(fit.history) == 1 and fit.history[0][3] > 0.5 * gates.P  # one set, most groups
    assert fit.relative_gap <= tol and fit.lower_bound <= ref * (1 + 1e-8) <= fit.objective * (1 + 2e-8)
    assert fit.objective <= ref * (1 + tol + 1e-8)


def test_cvxpy_reference_problems_with_the_first_order_path(monkeypatch):
    """Working sets past the barrier's size go to FISTA / the augmented Lagrangian: same optimum."""
    import structops.convex.two_layer as two_layer

    monkeypatch.setattr(two_layer, "_BARRIER_UNKNOWNS", 0)
    A, y, gates = _small_problem(0)
    for relu, solve in ((False, gated_relu_cnn), (True, relu_cnn)):
        ref = _cvxpy_solve(A, y, 0.05, gates, relu)
        fit = solve(A, y, 0.05, gates, tol=1e-8, max_seconds=60)
        assert fit.converged and abs(fit.objective - ref) <= 1e-6 * ref


def test_a_stopped_solve_reports_certified_bounds(monkeypatch):
    """Stopped early (here the first-order path on a set where it crawls), the result brackets the optimum."""
    import structops.convex.two_layer as two_layer

    monkeypatch.setattr(two_layer, "_BARRIER_UNKNOWNS", 0)
    A, y, gates = _small_problem(2)
    ref = _cvxpy_solve(A, y, 0.01, gates, True)
    fit = relu_cnn(A, y, 0.01, gates, tol=1e-12, max_seconds=0.5, max_inner=200)
    assert not fit.converged and fit.gap > 0
    assert fit.lower_bound <= ref * (1 + 1e-9) and fit.objective >= ref * (1 - 1e-9)
    assert fit.max_violation <= 1e-12


# ------------------------------------------------------------------ the barrier method of the restricted programs


def _cone_program(seed, m, n, h, R):
    """``(B, y, rows, dirs)``: random blocks and data, and ``m`` random cones of ``R`` rows with a unit interior direction."""
    from structops.convex.interior import interior_direction

    rng = np.random.default_rng(seed)
    B = rng.standard_normal((m, n, h))
    y = rng.standard_normal(n)
    rows, dirs = [], []
    for _ in range(m):
        G = rng.standard_normal((R, h))
        d = rng.standard_normal(h)
        G *= np.sign(G @ d)[:, None]  # d strictly inside
        rows.append(G)
        dirs.append(interior_direction(G, d))
    return B, y, rows, dirs


def test_barrier_method_matches_cvxpy_on_a_cone_constrained_group_lasso():
    cvxpy = pytest.importorskip("cvxpy")
    from structops.convex.interior import barrier_group_program

    m, n, h, R = 4, 7, 3, 6
    B, y, rows, dirs = _cone_program(5, m, n, h, R)
    for G, d in zip(rows, dirs):
        assert (G @ d > 0).all() and abs(np.linalg.norm(d) - 1) < 1e-12
    beta = 0.3
    res = barrier_group_program(B, rows, y, beta, np.zeros((m, h)), np.array(dirs), gap_tol=1e-11)
    assert res.converged and all((G @ c > 0).all() for G, c in zip(rows, res.C))
    Cv = cvxpy.Variable((m, h))
    obj = 0.5 * cvxpy.sum_squares(sum(B[j] @ Cv[j] for j in range(m)) - y) + beta * sum(
        cvxpy.norm(Cv[j], 2) for j in range(m))
    ref = cvxpy.Problem(cvxpy.Minimize(obj), [rows[j] @ Cv[j] >= 0 for j in range(m)]).solve(solver="CLARABEL")
    r = sum(B[j] @ res.C[j] for j in range(m)) - y
    val = 0.5 * r @ r + beta * np.linalg.norm(res.C, axis=1).sum()
    assert abs(val - ref) <= 1e-7 * ref


def test_small_weight_decay_reaches_the_interpolation_regime():
    """Near beta = 0 the optimum is beta times the least group norm of an interpolating network.

    The barrier's central path at a small parameter ran through norms of
    1e12 there (the objective grew past that of the zero network, 1e10 at
    beta = 1e-8, and "converged" was claimed for the restricted programs).
    """
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 1, 15)), rng.standard_normal(6)
    A = PatchOperator(X, (3,))
    gates = sample_gates(A, 20, seed=0)
    per_beta = []
    for beta in (1e-6, 1e-8, 1e-10):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fit = relu_cnn(A, y, beta, gates)
        assert fit.lower_bound <= fit.objective <= 0.5 * float(y @ y)
        assert fit.relative_gap <= 1e-3  # measured 2e-5 to 3e-4
        assert fit.max_violation == 0
        per_beta.append(fit.objective / beta)
    np.testing.assert_allclose(per_beta, per_beta[0], rtol=1e-3)  # measured 1e-6


def test_an_unconverged_barrier_run_is_never_worse_than_its_warm_start():
    from structops.convex.interior import barrier_group_program

    B, y, rows, dirs = _cone_program(2, 3, 5, 3, 4)
    C0 = 0.5 * np.array(dirs)  # a warm start inside the cones

    def f(C):
        r = np.einsum("jnh,jh->n", B, C) - y
        return 0.5 * r @ r + 0.1 * np.linalg.norm(C, axis=1).sum()

    for budget in (1, 3, 10, 600):
        res = barrier_group_program(B, rows, y, 0.1, C0, np.array(dirs), max_newton=budget)
        assert f(res.C) <= f(C0) + 1e-15
        assert all((G @ c >= 0).all() for G, c in zip(rows, res.C))
        assert res.converged == (budget == 600)
        assert not res.converged or res.gap <= 1e-10 * f(res.C)


def test_interior_direction_finds_one_or_says_there_is_none():
    from structops.convex.interior import interior_direction

    G = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -2.0]])
    d = interior_direction(G, hint=np.array([-1.0, 0.0]))  # the hint is outside: a linear program
    assert d is not None and (G @ d > 0).all()
    flat = np.array([[1.0, 0.0], [-1.0, 0.0]])  # c_0 >= 0 and c_0 <= 0: no interior
    assert interior_direction(flat, hint=np.array([0.0, 1.0])) is None


def test_float32_data_give_float32_groups_and_the_same_optimum():
    """The certificate is evaluated in float64: the objective of the returned float32 groups, the bound from the
    barrier's own float64 groups. In float32 the objective was 1.7e-7 below the optimum (no upper bound) and the
    relative gap stopped at 1.5e-5; measured now, the gated program's objective is 1e-12 above it and both
    programs reach tol = 1e-9 (gaps 7e-12 and 1.8e-9, the ReLU one at a cone violation of 4e-9)."""
    X, y = synthetic(0)
    X, y = X.astype(np.float32), y.astype(np.float32)
    A64 = PatchOperator(X.astype(np.float64), 10, stride=5)  # the same data, in float64: the same optimum
    A32 = PatchOperator(X, 10, stride=5)
    g = sample_gates(A64, 500, kind="mixed", seed=0)
    for solve in (relu_cnn, gated_relu_cnn):
        ref = solve(A64, y.astype(np.float64), 1e-2, g, tol=1e-10).objective  # (measured gaps 2e-11, 7e-12)
        fit = solve(A32, y, 1e-2, g, tol=1e-9)
        assert fit.V.dtype == np.float32 and fit.converged, (solve, fit.relative_gap)
        assert fit.lower_bound <= ref * (1 + 1e-12) and abs(fit.objective - ref) <= 1e-8 * ref
        if solve is gated_relu_cnn:  # no cones: the objective of any groups is an upper bound
            assert fit.objective >= ref * (1 - 1e-12)
        # (the ReLU groups are projected onto their cones after the last round, which moves its gap to 1.8e-9)
        assert fit.relative_gap <= (1e-8 if solve is relu_cnn else 1e-9) and fit.max_violation <= 1e-7


def test_degenerate_problems_have_exact_certified_answers():
    """Zero targets, zero data, a huge weight decay: the zero network, certified; one image; duplicated images."""
    X, y = synthetic(0)
    A = PatchOperator(X, 10, stride=5)
    g = sample_gates(A, 300, kind="mixed", seed=0)
    for solve in (gated_relu_cnn, relu_cnn):
        fit = solve(A, np.zeros(6), 0.01, g)
        assert fit.converged and fit.objective == 0 and len(fit.weights) == 0
        fit = solve(A, y, 1e6, g)  # beta above every correlation: the zero network is optimal
        assert fit.converged and fit.objective == pytest.approx(0.5 * y @ y, rel=1e-14) and len(fit.weights) == 0
        Z = PatchOperator(np.zeros_like(X), 10, stride=5)
        fit = solve(Z, y, 0.01, sample_gates(Z, 20, seed=0))
        assert fit.converged and fit.objective == pytest.approx(0.5 * y @ y, rel=1e-14)
        one = PatchOperator(X[:1], 10, stride=5)
        fit = solve(one, y[:1], 0.01, sample_gates(one, 50, seed=0))
        assert fit.converged and fit.relative_gap <= 1e-8 and fit.objective < 0.5 * y[0] ** 2
        dup = PatchOperator(np.vstack([X[:3], X[:3]]), 10, stride=5)
        fit = solve(dup, y, 0.01, sample_gates(dup, 300, kind="mixed", seed=0))
        assert fit.converged and fit.lower_bound <= fit.objective


def test_programs_refuse_empty_batches_and_non_finite_values():
    X, y = synthetic(0)
    A = PatchOperator(X, 10, stride=5)
    g = sample_gates(A, 50, seed=0)
    with pytest.raises(ValueError, match="no patches"):
        sample_gates(PatchOperator(np.zeros((0, 15)), 10, stride=5), 10)
    bad = y.copy()
    bad[2] = np.nan
    for solve in (gated_relu_cnn, relu_cnn):
        with pytest.raises(ValueError, match="NaN"):
            solve(A, bad, 0.01, g)


def test_patch_operator_of_an_empty_batch():
    A = PatchOperator(np.zeros((0, 15)), 10, stride=5)
    assert A.dimsd == (2, 0)
    assert A.responses(np.ones((3, 10))).shape == (2, 0, 3)
    np.testing.assert_array_equal(A.gradients(np.ones((2, 0, 3))), np.zeros((3, 10)))


def test_barrier_newton_systems_by_woodbury_match_the_direct_solve_at_large_tau():
    """More unknowns than samples: the n x n route, refined, equals the full system's solution."""
    from structops.convex.interior import DenseBlocks, _newton_solve

    rng = np.random.default_rng(7)
    m, h, n = 30, 4, 10
    Bf = rng.standard_normal((n, m * h))
    for tau, spread in ((1.0, 1.0), (1e6, 1e6)):  # the second: blocks over 6 decades, H's condition ~4e9
        Q = rng.standard_normal((m, h, h))
        Hb = Q @ np.swapaxes(Q, 1, 2) * np.logspace(0, np.log10(spread), m)[:, None, None] + 1e-3 * np.eye(h)
        g = rng.standard_normal(m * h)
        x = _newton_solve(tau, DenseBlocks(Bf, m, h), None, Hb, g, woodbury=True)
        y = _newton_solve(tau, DenseBlocks(Bf, m, h), Bf.T @ Bf, Hb, g, woodbury=False)
        H = tau * Bf.T @ Bf
        H.reshape(m, h, m, h)[np.arange(m), :, np.arange(m), :] += Hb
        for z in (x, y):  # backward errors at rounding level (measured: ~1e-17)
            assert np.linalg.norm(H @ z - g) <= 1e-13 * np.linalg.norm(H, 2) * np.linalg.norm(z)
        assert np.linalg.norm(x - y) <= 1e-6 * np.linalg.norm(y)  # measured 2e-9


def test_merge_parallel_neurons_keeps_the_function():
    from structops.convex import merge_parallel_neurons

    rng = np.random.default_rng(11)
    d = rng.standard_normal(4)
    e = rng.standard_normal(4)
    # three neurons along d with positive output, one along d with negative output, one along e
    U = np.array([d, 2 * d, 0.5 * d, d, e])
    w = np.array([1.0, 0.5, 3.0, -1.0, 2.0])
    mf, mw, first = merge_parallel_neurons(U, w)
    assert list(first) == [0, 3, 4] and len(mw) == 3
    X = rng.standard_normal((7, 8))
    A = PatchOperator(X, 4, stride=2)
    before, after = TwoLayerCNN(U, w), TwoLayerCNN(mf, mw)
    assert np.allclose(before.predict(A), after.predict(A), rtol=1e-12, atol=1e-12)
    # balanced: |u| = |w|, and the weight decay is the sum of |u_i| |w_i| along each direction
    assert np.allclose(np.linalg.norm(mf, axis=1), np.abs(mw))
    assert after._weight_decay(1.0) <= before._weight_decay(1.0) + 1e-12


def test_relu_program_lists_one_neuron_per_direction():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 15)), rng.standard_normal(6)
    A = PatchOperator(X, 10, stride=5)
    gates = sample_gates(A, 2000, kind="mixed", seed=0)
    fit = relu_cnn(A, y, 0.01, gates, tol=1e-9)
    U = fit.filters / np.linalg.norm(fit.filters, axis=1, keepdims=True)
    s = np.sign(fit.weights)
    for i in range(len(s)):
        for j in range(i):
            assert s[i] != s[j] or np.linalg.norm(U[i] - U[j]) > 1e-6
    assert fit.nonconvex_objective == pytest.approx(fit.objective, rel=1e-6)


def test_gated_newton_systems_through_closed_form_block_inverses_and_the_structured_blocks():
    """The gated barrier's blocks ``a^2/(1+s) I - a^4/(s (1+s)^2) c c^T`` are inverted in closed form, and the
    products with ``B`` and ``sum_j w_j B_j B_j^T`` come from the gates and the patches: the same Newton step as
    the full system."""
    from structops.convex.interior import DenseBlocks, _newton_solve
    from structops.convex.two_layer import _Problem

    rng = np.random.default_rng(3)
    X = rng.standard_normal((12, 40))
    A = PatchOperator(X, 20, stride=20)  # K = 2 positions of h = 20
    gates = sample_gates(A, 40, kind="mixed", seed=1)
    prob = _Problem(A, rng.standard_normal(12), 0.1, gates, relu=False)
    groups = np.arange(min(gates.P, 30))
    m, h, n = len(groups), A.h, A.n
    B = np.stack([prob.barrier_data(int(j))[0] for j in groups])  # (m, n, h)
    ops = prob.blocks(groups)
    assert ops is not None and (ops.m, ops.n, ops.h) == (m, n, h)
    dense = DenseBlocks.from_blocks(B)
    w = rng.uniform(0.1, 3.0, m)
    np.testing.assert_allclose(ops.gram(w), np.einsum("m,mah,mbh->ab", w, B, B), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dense.gram(w), np.einsum("m,mah,mbh->ab", w, B, B), rtol=1e-12, atol=1e-12)
    Bf = B.transpose(1, 0, 2).reshape(n, m * h)
    np.testing.assert_array_equal(ops.dense(), Bf)
    U, v = rng.standard_normal((m, h)), rng.standard_normal(n)
    for got in (ops, dense):  # every product against the stacked blocks
        np.testing.assert_allclose(got.matvec(U), np.einsum("mah,mh->a", B, U), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got.rmatvec(v), np.einsum("mah,a->mh", B, v), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got.columns(U), np.einsum("mah,mh->am", B, U), rtol=1e-12, atol=1e-12)
    C = rng.standard_normal((m, h)) * np.logspace(-6, 1, m)[:, None]
    C[:3] = 0  # zero groups: s = 1
    for tau, beta in ((1.0, 0.5), (1e7, 0.5)):
        a = tau * beta
        s = np.sqrt(1 + a * a * (C * C).sum(axis=1))
        Hb = ((a * a / (1 + s))[:, None, None] * np.eye(h)
              - (a ** 4 / (s * (1 + s) ** 2))[:, None, None] * (C[:, :, None] * C[:, None, :]))
        np.testing.assert_allclose(np.linalg.inv(Hb[5]), (1 + s[5]) / a ** 2 * np.eye(h) + np.outer(C[5], C[5]),
                                   rtol=1e-8, atol=1e-14 * np.abs(np.linalg.inv(Hb[5])).max())
        g = rng.standard_normal(m * h)
        x = _newton_solve(tau, ops, None, Hb, g, True, ((1 + s) / a ** 2, C))
        H = tau * Bf.T @ Bf
        H.reshape(m, h, m, h)[np.arange(m), :, np.arange(m), :] += Hb
        assert np.linalg.norm(H @ x - g) <= 1e-12 * np.linalg.norm(H, 2) * np.linalg.norm(x)
    from structops.convex.interior import barrier_group_program

    with pytest.raises(ValueError, match="beta"):  # the closed-form inverses need a = tau beta > 0
        barrier_group_program(B, None, prob.y, 0.0, np.zeros((m, h)), np.ones((m, h)) / np.sqrt(h))
    many = PatchOperator(rng.standard_normal((12, 30)), 3)  # K = 28 positions: forming B is cheaper
    assert _Problem(many, np.zeros(12), 0.1, sample_gates(many, 10, seed=0), relu=False).blocks(np.arange(5)) is None
    # the barrier on the structured blocks and on the stacked ones: the same program, the same answer
    dirs = np.stack([prob.direction(int(j)) for j in groups])
    runs = [barrier_group_program(b, None, prob.y, 0.3, np.zeros((m, h)), dirs, gap_tol=1e-12) for b in (ops, B)]
    assert runs[0].newton_steps == runs[1].newton_steps
    np.testing.assert_allclose(runs[0].C, runs[1].C, rtol=0, atol=1e-9 * np.abs(runs[1].C).max())

    def f(C):
        r = ops.matvec(C) - prob.y
        return 0.5 * r @ r + 0.3 * np.linalg.norm(C, axis=1).sum()
    # a loose solve's gap is a certificate: its objective minus the gap is below the tight solve's objective
    loose = barrier_group_program(ops, None, prob.y, 0.3, np.zeros((m, h)), dirs, gap_tol=1e-3)
    assert loose.converged and 0 <= loose.gap <= 1e-3 * f(loose.C) and loose.newton_steps < runs[0].newton_steps
    assert f(loose.C) - loose.gap <= f(runs[0].C) * (1 + 1e-12)


def test_barrier_stops_with_its_iterate_where_the_woodbury_system_fails_and_the_full_one_is_too_large(monkeypatch):
    """No silent fallback to an (m h)^2 system past its memory: the barrier returns what it has, unconverged."""
    import structops.convex.interior as interior

    rng = np.random.default_rng(5)
    m, h, n = 20, 3, 10
    B = rng.standard_normal((m, n, h))

    class Failing(interior.DenseBlocks):
        calls = 0

        def gram(self, w):
            Failing.calls += 1
            if Failing.calls > 3:
                raise np.linalg.LinAlgError("singular")
            return super().gram(w)
    monkeypatch.setattr(interior, "_FULL_SYSTEM_UNKNOWNS", 0)
    dirs = np.ones((m, h)) / np.sqrt(h)
    res = interior.barrier_group_program(Failing.from_blocks(B), None, rng.standard_normal(n), 0.1,
                                         np.zeros((m, h)), dirs, gap_tol=1e-12)
    assert not res.converged and res.newton_steps == 4 and np.isfinite(res.C).all()

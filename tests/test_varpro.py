"""Variable projection: truth recovery, Jacobians (Taylor, Golub-Pereyra vs finite differences),
exact vs matrix-free inner solves, adaex, regularisation, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from structops import ConvND, parametric as P
from structops.solvers.varpro import VarProResult, conv_preconditioner, normal_preconditioner, reduced_jacobian, varpro

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


# -------------------------------------------------------------- exponentials
T = np.linspace(0, 4, 40)
A_TRUE, C_TRUE = np.array([0.7, 2.5]), np.array([3.0, -1.5])


def phi_exp(a):
    return np.exp(-np.outer(T, a))


def dphi_exp(a):
    D = np.zeros((T.size, 2, 2))
    for k in range(2):
        D[:, k, k] = -T * np.exp(-a[k] * T)
    return D


@pytest.mark.parametrize("method", ["golub-pereyra", "kaufman"])
@pytest.mark.parametrize("outer", ["trf", "lm"])
def test_recovers_truth_noise_free(method, outer):
    y = phi_exp(A_TRUE) @ C_TRUE
    res = varpro(phi_exp, y, np.array([0.5, 2.0]), dphi=dphi_exp, method=method, outer=outer)
    assert isinstance(res, VarProResult)
    np.testing.assert_allclose(res.theta, A_TRUE, rtol=1e-8)
    np.testing.assert_allclose(res.coef, C_TRUE, rtol=1e-8)
    assert res.residual_norm < 1e-9 and res.success
    assert res.inner == "exact" and res.njev == len(res.history["fun"]) and res.nit == res.njev
    assert res.history["fun"][-1] <= res.history["fun"][0]
    with pytest.raises(Exception):
        res.theta = None  # frozen


@pytest.mark.parametrize("method", ["golub-pereyra", "kaufman"])
def test_reduced_jacobian_taylor(method, rng):
    """The Golub-Pereyra Jacobian is exact (second-order Taylor remainder); Kaufman's is not."""
    y = phi_exp(A_TRUE) @ C_TRUE + 0.3 * rng.standard_normal(T.size)  # large residual
    a = np.array([0.5, 1.7])
    wts = rng.uniform(0.5, 1.5, T.size)

    def r(th):
        return reduced_jacobian(phi_exp, y, th, dphi=dphi_exp, weights=wts, tikhonov=0.1,
                                theta_reg=0.05)[0]

    J = reduced_jacobian(phi_exp, y, a, dphi=dphi_exp, weights=wts, tikhonov=0.1, theta_reg=0.05,
                         method=method)[1]
    if method == "golub-pereyra":
        from structops.testing import taylor_test

        taylor_test(r, lambda v: J @ v, a, h0=0.1, rng=rng)
    else:  # Kaufman drops a term that is O(residual): close, not equal
        h = 1e-6
        Jfd = np.stack([(r(a + h * e) - r(a - h * e)) / (2 * h) for e in np.eye(2)], axis=1)
        err = np.linalg.norm(J - Jfd) / np.linalg.norm(Jfd)
        assert 1e-6 < err < 0.5


def test_regularised_objective_is_minimised(rng):
    """At the VarPro solution the gradient of the full objective in (w, theta) vanishes."""
    y = phi_exp(A_TRUE) @ C_TRUE + 0.05 * rng.standard_normal(T.size)
    lam, alpha = 0.2, 0.01
    L = np.array([[1.0, 0.5]])
    res = varpro(phi_exp, y, np.array([0.5, 2.0]), dphi=dphi_exp, tikhonov=lam, L=L, theta_reg=alpha,
                 xtol=1e-15, ftol=1e-15, gtol=1e-15)
    a, c = res.theta, res.coef

    def f(a, c):
        r = phi_exp(a) @ c - y
        return 0.5 * r @ r + 0.5 * lam * (L @ c) @ (L @ c) + 0.5 * alpha * a @ a

    h = 1e-6
    g = [(f(a + h * e, c) - f(a - h * e, c)) / (2 * h) for e in np.eye(2)]
    g += [(f(a, c + h * e) - f(a, c - h * e)) / (2 * h) for e in np.eye(2)]
    assert np.max(np.abs(g)) < 1e-6
    np.testing.assert_allclose(res.fun, f(a, c), rtol=1e-10)


def test_multiple_right_hand_sides(rng):
    C = np.stack([C_TRUE, [0.5, 2.0], [-1.0, 1.0]], axis=1)  # (2, 3)
    Y = phi_exp(A_TRUE) @ C
    res = varpro(phi_exp, Y, np.array([0.4, 1.5]), dphi=dphi_exp)
    np.testing.assert_allclose(res.theta, A_TRUE, rtol=1e-8)
    np.testing.assert_allclose(res.coef, C, rtol=1e-8, atol=1e-10)
    assert res.wresid.shape == Y.shape and res.covariance is None and res.std_theta.shape == (2,)


# -------------------------------------------------------------- conv (matrix-free)
def _blind_deconv(H=8, padding="same", seed=0):
    r = np.random.default_rng(seed)
    ks = (2, 1, 3, 3)
    offset = np.zeros(ks)
    offset[0, 0, 1, 1] = 1.0
    Q = np.delete(np.eye(18), 4, axis=1)
    model = P.conv(ks, (H, H), basis=Q, offset=offset, padding=padding)
    theta = 0.3 * r.standard_normal(17)
    w = r.standard_normal(H * H)
    return model, theta, w, model.operator(theta) @ w, theta + 0.1 * r.standard_normal(17)


@pytest.mark.parametrize("method", ["golub-pereyra", "kaufman"])
def test_matrix_free_inner_agrees_with_dense(method):
    model, theta, w, y, theta0 = _blind_deconv(seed=1)
    y = y + 0.01 * np.random.default_rng(3).standard_normal(y.size)  # nonzero residual
    kw = dict(method=method, tikhonov=1e-3, inner_tol=1e-12)
    r_e, J_e, w_e = reduced_jacobian(model.operator, y, theta0, inner="exact", **kw)
    r_k, J_k, w_k = reduced_jacobian(model.operator, y, theta0, inner="krylov", **kw)
    np.testing.assert_allclose(w_k, w_e, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(r_k, r_e, atol=1e-8 * np.linalg.norm(r_e))
    assert np.linalg.norm(J_k - J_e) <= 1e-6 * np.linalg.norm(J_e)
    # the same with the circulant preconditioner
    r_p, J_p, w_p = reduced_jacobian(model.operator, y, theta0, inner="krylov",
                                     preconditioner="circulant", **kw)
    assert np.linalg.norm(J_p - J_e) <= 1e-6 * np.linalg.norm(J_e)
    # whole solves agree
    a = varpro(model.operator, y, theta0, inner="exact", **kw)
    b = varpro(model.operator, y, theta0, inner="krylov", jac_tol=1e-8, **kw)
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b.coef, a.coef, rtol=1e-6, atol=1e-7)
    assert a.inner == "exact" and b.inner == "krylov" and b.inner_iterations > 0


def test_conv_recovers_truth_matrix_free():
    model, theta, w, y, theta0 = _blind_deconv(H=12, padding="circular", seed=2)
    res = varpro(model.operator, y, theta0, inner="krylov", preconditioner="circulant", stats=False)
    np.testing.assert_allclose(res.theta, theta, atol=1e-8)
    np.testing.assert_allclose(res.coef, w, atol=1e-7)


def test_plain_convnd_and_dense_dphi_paths_agree(rng):
    """phi returning a plain ConvND (kernel = theta) vs the same problem with a dense dphi."""
    ks, n = (2, 1, 3), (7,)
    K0 = rng.standard_normal(ks)
    x = rng.standard_normal(7)
    y = ConvND(K0, n) @ x + 0.1 * rng.standard_normal(14)

    def phi(th):
        return ConvND(th.reshape(ks), n)

    def dphi(th):
        return np.stack([ConvND(e.reshape(ks), n).todense() for e in np.eye(6)], axis=2)

    th = K0.ravel() + 0.1
    ra, Ja, _ = reduced_jacobian(phi, y, th, tikhonov=0.01)
    rb, Jb, _ = reduced_jacobian(lambda t: phi(t).todense(), y, th, dphi=dphi, tikhonov=0.01)
    np.testing.assert_allclose(ra, rb, atol=1e-12)
    np.testing.assert_allclose(Ja, Jb, atol=1e-10)


def test_conv_preconditioner_is_exact_for_circular(rng):
    op = ConvND(rng.standard_normal((3, 2, 3, 3)), (5, 6), padding="circular")
    M = conv_preconditioner(op, damp2=0.3)
    X = rng.standard_normal((op.shape[1], 2))
    np.testing.assert_allclose(M(op.rmatmat(op.matmat(X)) + 0.3 * X), X, atol=1e-10)


@pytest.mark.parametrize("padding,stride", [("same", 1), ("valid", 1), (1, 2)])
def test_normal_preconditioner_is_exact_for_zero_padding(rng, padding, stride):
    op = ConvND(rng.standard_normal((3, 2, 3, 3)), (7, 6), padding=padding, stride=stride)
    M = normal_preconditioner(op, damp2=0.3, scale=2.0)
    X = rng.standard_normal((op.shape[1], 2))
    np.testing.assert_allclose(M(2.0 * op.rmatmat(op.matmat(X)) + 0.3 * X), X, atol=1e-10)


def test_zero_padded_problem_with_exact_normal_preconditioner():
    """With the exact inverse normal matrix, block CG needs about one iteration per solve."""
    model, theta, w, y, theta0 = _blind_deconv(H=12, padding="same", seed=2)
    res = varpro(model.operator, y, theta0, inner="krylov", preconditioner="normal", stats=False)
    np.testing.assert_allclose(res.theta, theta, atol=1e-8)
    np.testing.assert_allclose(res.coef, w, atol=1e-7)
    assert res.inner_iterations <= 3 * res.nfev


# -------------------------------------------------------------- adaex
def test_adaex_published_optimum():
    import adaex

    out = adaex.run()
    pub = adaex.PUBLISHED
    for method, f in out["fits"].items():
        # the published point is a stopped MATLAB iterate: agreement to 1e-5 relative
        np.testing.assert_allclose(f["theta"], pub["theta"], rtol=1e-5)
        np.testing.assert_allclose(f["coef"], pub["coef"], rtol=1e-5)
        np.testing.assert_allclose(f["wresid_norm2"], pub["wresid_norm2"], rtol=1e-5)
        assert f["jacobian_evaluations"] < 20
    # both methods reach the same optimum, at least as good as the published point
    g, k = out["fits"]["golub-pereyra"], out["fits"]["kaufman"]
    np.testing.assert_allclose(g["theta"], k["theta"], rtol=1e-7)
    at = out["reduced_at"]
    assert at["structops"]["wresid_norm2"] <= at["published"]["wresid_norm2"]
    assert at["structops"]["gradient_norm"] < 1e-9


def test_adaex_statistics_match_varpro_m():
    import adaex

    res = varpro(adaex.phi, adaex.Y, adaex.A0, dphi=adaex.dphi, weights=adaex.WEIGHTS)
    # varpro.m's weighted residuals W (y - Phi c), to the 5 digits it prints
    want = np.array([-1.1211e-03, 3.1751e-03, -2.7656e-03, -1.4600e-03, 1.2081e-03,
                     2.2586e-03, -1.1101e-03, -2.2554e-03, 1.3257e-03, 1.4716e-03])
    np.testing.assert_allclose(-res.wresid, want, atol=2e-7)
    assert res.covariance.shape == (5, 5)
    np.testing.assert_allclose(np.diag(res.correlation), 1)
    np.testing.assert_allclose(res.sigma, res.residual_norm / np.sqrt(10 - 5))


# -------------------------------------------------------------- errors
def test_errors():
    y = phi_exp(A_TRUE) @ C_TRUE
    with pytest.raises(ValueError, match="unknown method"):
        varpro(phi_exp, y, A_TRUE, dphi=dphi_exp, method="newton")
    with pytest.raises(TypeError, match="no .jacobian"):
        varpro(phi_exp, y, A_TRUE)
    with pytest.raises(ValueError, match="weights has shape"):
        varpro(phi_exp, y, A_TRUE, dphi=dphi_exp, weights=np.ones(3))
    with pytest.raises(ValueError, match="tikhonov == 0"):
        varpro(phi_exp, y, A_TRUE, dphi=dphi_exp, L=np.eye(2))
    with pytest.raises(ValueError, match="dphi"):
        varpro(phi_exp, y, A_TRUE, dphi=lambda a: np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="bounds"):
        varpro(phi_exp, y, A_TRUE, dphi=dphi_exp, outer="lm", bounds=([0, 0], [5, 5]))
    with pytest.raises(ValueError, match="NaN"):
        varpro(phi_exp, y * np.nan, A_TRUE, dphi=dphi_exp)


def test_adaex_script_quick(tmp_path):
    import adaex

    adaex.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "adaex.json").exists() and (tmp_path / "adaex.png").exists()


def test_benchmark_quick_runs(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_varpro

    bench_varpro.main(["--size", "12", "--repeat", "1", "--padding", "circular"])
    out = capsys.readouterr().out
    assert "joint / varpro kaufman" in out and "WARNING" not in out


@pytest.mark.slow
def test_benchmark_full(capsys):
    """The 64x64 benchmark: VarPro recovers the truth with fewer outer iterations than the joint solve."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_varpro

    bench_varpro.main(["--repeat", "1", "--padding", "circular"])
    out = capsys.readouterr().out
    assert "WARNING" not in out

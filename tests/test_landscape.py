"""The landscape experiments: directions, landscapes, trajectories and the command's output."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from structops.apps.landscape import main as landscape_main
from structops.solvers import landscape as LS


@pytest.fixture(scope="module")
def tiny():
    return LS.toy_problem(n_layers=2, image=(6, 6), lam=0.1, seed=3)


def test_toy_problem_matches_the_reference_settings():
    prob = LS.toy_problem()
    assert len(prob.ext.layers) == 4 and prob.lam == 0.04
    assert prob.z.shape == (256, 1) and prob.y.shape == (256, 1)
    assert all(lay.kernel_shape == (1, 1, 3, 3) and lay.act.name == "sigmoid" for lay in prob.ext.layers)
    ti, pi = prob.ext.bias_index
    assert np.all(prob.w_star[pi] == 0)
    np.testing.assert_allclose(prob.conv(prob.w_star, prob.z), prob.y)


def test_filter_normalized_direction(tiny):
    d = LS.filter_normalized_direction(tiny.ext, tiny.w_star, rng=0)
    for lay, dp, wp in zip(tiny.ext.layers, tiny.ext.split_primary(d), tiny.ext.split_primary(tiny.w_star)):
        Dk = dp[: lay.num_kernel].reshape(lay.kernel_shape[0], -1)
        Wk = wp[: lay.num_kernel].reshape(lay.kernel_shape[0], -1)
        np.testing.assert_allclose(np.linalg.norm(Dk, axis=1), np.linalg.norm(Wk, axis=1), rtol=1e-12)
        assert np.all(dp[lay.num_kernel:] == 0)


def test_tiny_landscapes_have_their_zero_minimum_at_the_origin(tiny):
    rng = np.random.default_rng(1)
    d1 = LS.filter_normalized_direction(tiny.ext, tiny.w_star, rng)
    d2 = LS.filter_normalized_direction(tiny.ext, tiny.w_star, rng)
    grid = np.linspace(-2, 2, 5)
    Lc = LS.landscape_conventional(tiny, d1, d2, grid, grid)
    Le = LS.landscape_extended(tiny, d1, d2, grid, grid, maxiter=30, init="primary")
    for L in (Lc, Le):
        assert L.shape == (5, 5)
        assert np.unravel_index(np.argmin(L), L.shape) == (2, 2)
        assert L[2, 2] == pytest.approx(0.0, abs=1e-20)
        assert np.all(L[np.arange(25).reshape(5, 5) != 12] > 0)
    # the inner problem starts from the conventional layers: never above
    assert np.all(Le <= Lc * (1 + 1e-12) + 1e-20)
    assert Le.max() < Lc.max()


def test_random_inner_start_is_reproducible_and_finds_the_minimum(tiny):
    rng = np.random.default_rng(1)
    d1 = LS.filter_normalized_direction(tiny.ext, tiny.w_star, rng)
    d2 = LS.filter_normalized_direction(tiny.ext, tiny.w_star, rng)
    grid = np.linspace(-2, 2, 3)
    La = LS.landscape_extended(tiny, d1, d2, grid, grid, maxiter=200, init="random", seed=5)
    Lb = LS.landscape_extended(tiny, d1, d2, grid, grid, maxiter=200, init="random", seed=5)
    Lp = LS.landscape_extended(tiny, d1, d2, grid, grid, maxiter=200, init="primary")
    np.testing.assert_array_equal(La, Lb)
    Lc = LS.landscape_extended(tiny, d1, d2, grid, grid, maxiter=3, init="random", seed=6)
    assert not np.allclose(Lc, La)  # a different draw, stopped early, lands elsewhere
    # from a random start the inner solve still reaches the global minimum at w*
    assert La[1, 1] < 1e-6 * La.max()
    assert np.unravel_index(np.argmin(La), La.shape) == (1, 1)
    # away from w*, both starts find inner minima of the same size
    np.testing.assert_allclose(La, Lp, rtol=0.5, atol=1e-6 * Lp.max())
    with pytest.raises(ValueError, match="init"):
        LS.landscape_extended(tiny, d1, d2, grid, grid, init="zeros")


def test_trajectories_are_normalized_and_decrease(tiny):
    d1 = LS.filter_normalized_direction(tiny.ext, tiny.w_star, rng=2)
    w0 = tiny.w_star + 2 * d1
    for kind in ("conv", "ext"):
        for method in ("adam", "lbfgs"):
            run = LS.trajectory(tiny, w0, kind, method, maxiter=5, inner_maxiter=10)
            assert run["loss"][0] == 1.0 and run["loss"][-1] < 1.0
            assert len(run["raw"]) == len(run["loss"]) <= 6


def test_basin_fraction_and_progress_bar():
    L = np.array([[0.0, 0.5], [1.0, 2.0]])
    assert LS.basin_fraction(L) == 0.25
    assert LS.basin_fraction(L, threshold=0.3) == 0.5
    assert LS.basin_fraction(L, scale=100.0) == 1.0
    # a bowl with a plateau far from the centre: the plateau counts in the area, not in the radius
    a = np.linspace(-4, 4, 9)
    A, B = np.meshgrid(a, a, indexing="ij")
    bowl = np.hypot(A, B) ** 2
    assert LS.basin_radius(bowl, a, a) == pytest.approx(2.0)  # r^2 >= 0.1 * 32 first at (2, 0)
    assert LS.basin_radius(bowl, a, a, threshold=0.2) == pytest.approx(np.sqrt(8.0))
    plateau = np.where(A > 2.5, 0.0, bowl)
    assert LS.basin_fraction(plateau) > LS.basin_fraction(bowl)
    assert LS.basin_radius(plateau, a, a) == LS.basin_radius(bowl, a, a)
    assert LS.basin_radius(bowl, a, a, center=(1.0, 0.0)) == pytest.approx(1.0)
    assert LS.basin_radius(np.zeros((9, 9)) + 1.0, a, a) == np.inf
    with pytest.raises(ValueError, match="shape"):
        LS.basin_radius(bowl[:5], a, a)
    s = io.StringIO()
    bar = LS.ProgressBar(2, "x", stream=s)
    bar.update()
    bar.update()
    assert "2/2" in s.getvalue() and s.getvalue().endswith("\n")


def test_command_writes_json_and_figures(tmp_path, capsys):
    out = tmp_path / "run"
    rc = landscape_main(["--out", str(out), "--grid", "3", "--pairs", "2", "--iters", "2", "--inner-iters", "3",
                  "--image", "5", "--layers", "2", "--jobs", "1"])
    assert rc == 0
    data = json.loads((out / "landscape.json").read_text())
    for key in ("alpha", "beta", "conventional", "extended", "trajectories", "final_normalized_loss", "pairs"):
        assert key in data
    assert data["alpha"] == [-4.0, 0.0, 4.0] and data["beta"] == [-4.0, 0.0, 4.0]
    assert np.asarray(data["conventional"]).shape == (3, 3)
    assert np.asarray(data["extended"]).shape == (3, 3)
    assert len(data["pairs"]) == 2
    wider = data["extended_basin_wider"]
    assert wider["pairs"] == 2
    assert all(0 <= wider[k] <= 2 for k in ("area_own_scale", "area_conventional_scale", "radius_own_scale"))
    for p in data["pairs"]:
        assert set(p["basin_radius"]) == {"conventional", "extended"}
    assert data["settings"]["inner_init"] == "random"
    assert set(data["trajectories"]) == {"(-2, 2)", "(2, 2)", "(2, -2)"}
    for runs in data["trajectories"].values():
        assert set(runs) == {"conv_adam", "conv_lbfgs", "ext_adam", "ext_lbfgs"}
        assert all(r["loss"][0] == 1.0 for r in runs.values())
    assert (out / "landscapes.png").stat().st_size > 0 and (out / "trajectories.png").stat().st_size > 0
    text = capsys.readouterr()
    assert "final normalised loss" in text.out and "[" in text.err


def test_command_rejects_bad_arguments(tmp_path):
    assert landscape_main(["--out", str(tmp_path), "--grid", "1"]) == 2
    assert landscape_main(["--bogus"]) == 2


@pytest.mark.slow
def test_quick_command_runs(tmp_path):
    assert landscape_main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "landscape.json").read_text())
    assert np.asarray(data["extended"]).shape == (7, 7)

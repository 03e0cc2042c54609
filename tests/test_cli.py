"""The command line: ``structops demo`` and ``structops spectrum``, checked against dense SVDs."""

import re
import subprocess
import sys

import numpy as np
import pytest

from dense import dense_conv, padding_pairs
from structops.apps.cli import main


def _value(text, name):
    m = re.search(rf"{name}\s*[:=]\s*(?:[<>]=\s*)?([0-9.eE+-]+)", text)
    assert m, f"{name} not in output:\n{text}"
    return float(m.group(1))


@pytest.mark.parametrize("padding", ["same", "circular", "valid"])
def test_spectrum_matches_dense_svd(tmp_path, capsys, padding):
    rng = np.random.default_rng(3)
    K = rng.standard_normal((3, 2, 3, 3))
    path = tmp_path / "k.npy"
    np.save(path, K)
    png = tmp_path / "s.png"
    status = main(["spectrum", "--kernel", str(path), "--size", "7", "--padding", padding, "--out", str(png)])
    out = capsys.readouterr().out
    assert status == 0
    A = dense_conv(K, (7, 7), (1, 1), padding_pairs(padding, (3, 3), (1, 1), (7, 7)), (1, 1), padding == "circular")
    s = np.linalg.svd(A, compute_uv=False)
    assert _value(out, "sigma_max") == pytest.approx(s[0], rel=1e-8)
    if s[-1] > 1e-10 * s[0]:
        assert _value(out, "sigma_min") == pytest.approx(s[-1], rel=1e-6)
        assert _value(out, "cond") == pytest.approx(s[0] / s[-1], rel=1e-5)
    else:  # a rank-deficient layer (this 'valid' one is): sigma_min is a numerical zero
        assert _value(out, "sigma_min") <= 1e-12 * s[0]
        assert _value(out, "cond") >= 1e11
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spectrum_large_zero_padded_layer_plots_circular_surrogate(tmp_path, capsys):
    png = tmp_path / "s.png"
    assert main(["spectrum", "--c-in", "4", "--c-out", "4", "--size", "48", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "circular layer" in out and png.stat().st_size > 1000
    assert _value(out, "sigma_min") < _value(out, "sigma_max")


def test_demo_runs_and_reports_speedup(capsys):
    assert main(["demo", "--channels", "2", "--size", "16", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "passed" in out and "speed-up" in out
    rng = np.random.default_rng(0)
    K = rng.standard_normal((2, 2, 3, 3)) / (3 * np.sqrt(2))  # the demo's kernel for seed 0
    A = dense_conv(K, (16, 16), (1, 1), ((1, 1), (1, 1)), (1, 1), False)
    assert _value(out, "sigma_max") == pytest.approx(np.linalg.norm(A, 2), rel=1e-8)


@pytest.mark.parametrize(
    "argv",
    [
        ["spectrum", "--padding", "diagonal"],
        ["spectrum", "--kernel", "/nonexistent/k.npy"],
        ["spectrum", "--kernel-size", "4", "--padding", "same"],
        ["demo", "--channels", "0"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        status = main(argv)
        raise SystemExit(status)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "structops", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "spectrum" in res.stdout and "demo" in res.stdout


def test_regularize_subcommand_is_delegated(tmp_path, capsys):
    status = main(["regularize", "--quick", "--iterations", "30", "--size", "6", "--out", str(tmp_path)])
    assert status in (0, 1)  # 1: 30 iterations may not reach the band; the figures are written either way
    out = capsys.readouterr().out
    assert "L-BFGS" in out and "Guo schedule" in out
    assert len(list(tmp_path.glob("*.png"))) == 4


def test_landscape_subcommand_is_delegated(tmp_path, capsys):
    import json

    status = main(["landscape", "--grid", "3", "--pairs", "1", "--iters", "2", "--inner-iters", "3",
                   "--image", "6", "--out", str(tmp_path)])
    assert status == 0
    data = json.loads((tmp_path / "landscape.json").read_text())
    assert len(data["alpha"]) == len(data["beta"]) == 3
    assert len(data["conventional"]) == 3 and len(data["extended"][0]) == 3


def test_convex_subcommand_is_delegated(tmp_path, capsys):
    import json

    status = main(["convex", "--quick", "--part", "two-layer", "--epochs", "50", "--samples", "300", "--runs", "2",
                   "--out", str(tmp_path)])
    assert status == 0  # certified, and below both SGD runs
    out = capsys.readouterr().out
    assert "certified bound" in out and "SGD run 2" in out
    data = json.loads((tmp_path / "two_layer_convex_vs_sgd.json").read_text())
    assert data["convex"]["converged"] and len(data["sgd"]) == 2
    assert data["convex"]["objective"] <= min(r["final"] for r in data["sgd"])
    assert (tmp_path / "two_layer_convex_vs_sgd.png").stat().st_size > 0


def test_convex_subcommand_three_layer(tmp_path, capsys):
    import json

    pytest.importorskip("sklearn")
    status = main(["convex", "--quick", "--part", "three-layer", "--epochs", "30", "--samples", "2", "--runs", "2",
                   "--out", str(tmp_path)])
    assert status == 0  # certified, and the relaxation below both SGD runs (their patterns are in it)
    out = capsys.readouterr().out
    assert "certified bound" in out and "polished" in out and "SGD run 2" in out
    data = json.loads((tmp_path / "three_layer_digits.json").read_text())
    c = data["convex"]
    assert c["converged"] and c["relative_gap"] <= 1e-6 and len(data["sgd"]) == 2
    assert c["lower_bound"] <= c["objective"] <= min(r["final"] for r in data["sgd"]) * (1 + 1e-7)
    assert c["polished_objective"] <= c["network_objective"] + 1e-12
    assert (tmp_path / "three_layer_digits.png").stat().st_size > 0


def test_convex_subcommand_ccnn_table(tmp_path, capsys):
    import json

    pytest.importorskip("sklearn")
    assert main(["convex", "--quick", "--part", "ccnn", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "CCNN-2" in out and "rot" in out
    data = json.loads((tmp_path / "ccnn_digits.json").read_text())
    errors = data["errors"]
    assert set(errors) == {"CNN-1 (ReLU)", "CCNN-1", "CCNN-2"}
    # far better than chance (90% error) on every variation, even in the quick setting
    assert all(0 <= e < 0.7 for row in errors.values() for e in row.values())
    assert errors["CCNN-1"]["basic"] < 0.1


def test_median_times_fills_short_samples_and_keeps_the_order():
    """Fast functions are called several times per sample (their mean is the sample); slow ones once."""
    import time

    from structops.apps.benchtools import median_times

    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(3e-3)

    fast_t, slow_t = median_times([fast, slow], repeat=3, warmup=1, min_sample=2e-3)
    assert calls["slow"] == 1 + 1 + 3  # the warm-up, the sizing call, then one call a sample
    assert calls["fast"] > 2 + 3 * 10  # a sub-microsecond call fills a 2 ms sample many times over
    assert 0 < fast_t < 1e-3 <= 3e-3 <= slow_t


def test_the_conv_benchmark_times_a_case_of_short_calls_call_by_call(monkeypatch):
    """bench_conv.case_times: one call a sample over many rounds where every call is under a millisecond,
    the filled samples of median_times otherwise."""
    import sys
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_conv

    timed = []  # (repeat, warmup, min_sample) of each median_times call
    real = bench_conv.median_times

    def median_times(funcs, repeat, warmup, sync=None, min_sample=1e-2):
        timed.append((repeat, warmup, min_sample))
        return real(funcs, repeat, warmup, sync, min_sample)

    monkeypatch.setattr(bench_conv, "median_times", median_times)

    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1
        time.sleep(2e-4)

    def slow():
        calls["slow"] += 1
        time.sleep(2e-3)

    ts = bench_conv.case_times([fast, fast], repeat=2, warmup=1)
    # 1 warm-up and 1 sizing round, then about 0.3 s of rounds of two calls of at least 0.2 ms each
    assert 2 * 2 + 2 * 20 < calls["fast"] < 2 * 2 + 2 * 0.3 / 4e-4 + 2
    assert all(2e-4 <= t < 2e-2 for t in ts)
    assert timed[0] == (1, 1, 0) and timed[1][1:] == (0, 0) and timed[1][0] * 2 + 4 == calls["fast"]
    calls["fast"], timed[:] = 0, []
    fast_t, slow_t = bench_conv.case_times([fast, slow], repeat=3, warmup=1)
    # one round, then median_times' own filled samples (its sizing is tested above): 10 ms of calls of 2 ms
    # or more, at most 5 a sample, besides a warm-up and the sizing call
    assert timed == [(1, 1, 0), (3, 1, 1e-2)]
    assert calls["slow"] <= 2 + 2 + 3 * 5
    assert 2e-4 <= fast_t < 2e-3 <= slow_t


def test_median_times_vary_which_function_runs_first_and_after_which():
    from structops.apps.benchtools import median_times

    seq = []
    funcs = [lambda i=i: seq.append(i) for i in range(4)]
    median_times(funcs, repeat=12, warmup=0, min_sample=0)
    rounds = [seq[4 * r : 4 * r + 4] for r in range(12)]
    assert all(sorted(r) == [0, 1, 2, 3] for r in rounds)  # every function once a round
    assert len({r[0] for r in rounds}) > 1
    for f in range(4):  # no function always follows the same one
        before = {seq[k - 1] for k in range(1, len(seq)) if seq[k] == f}
        assert len(before) > 1


@pytest.mark.parametrize("warmup", [0, 2])
def test_median_time_calls_once_a_run_after_its_warm_up(warmup):
    from structops.apps.benchtools import median_time

    calls = []
    assert median_time(lambda: calls.append(1), repeat=5, warmup=warmup) >= 0
    assert len(calls) == warmup + 5

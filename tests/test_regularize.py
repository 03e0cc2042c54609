"""Spectrum regularisation: exact Frobenius penalty, 2-norm penalty, clipping, solvers, CLI.

Reference values come from dense layer matrices built by loops (tests/dense.py),
never from the code under test.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from dense import dense_conv

from structops.operators.geometry import resolve_padding
from structops.solvers.regularize import (
    RegularizeResult,
    clip_singular_values,
    extreme_singular_values,
    frobenius_penalty,
    guo_schedule,
    regularize_spectrum,
    spectral_penalty,
)
from structops.testing import taylor_test


def _dense(K, in_shape, padding="same", stride=1, dilation=1):
    D = K.ndim - 2
    st = (stride,) * D if np.isscalar(stride) else tuple(stride)
    dl = (dilation,) * D if np.isscalar(dilation) else tuple(dilation)
    pairs, circ = resolve_padding(padding, K.shape[2:], dl, tuple(in_shape))
    return dense_conv(K, tuple(in_shape), st, pairs, dl, circ)


def _dense_penalty(A, alpha, gram="input"):
    G = A.T @ A if gram == "input" else A @ A.T
    return float(np.sum((G - alpha * np.eye(G.shape[0])) ** 2))


# (c_out, c_in, kernel size, image) for 'same' padding; images down to 3x3 and 4x4, below 4r+1 = 5
SAME_CASES = [
    (1, 1, (3, 3), (5, 5)),
    (1, 3, (3, 3), (4, 4)),
    (3, 1, (3, 3), (3, 5)),
    (6, 3, (3, 3), (6, 7)),
    (3, 6, (3, 3), (4, 3)),
    (2, 2, (5, 5), (6, 9)),
    (2, 3, (5, 3), (4, 4)),
]


@pytest.mark.parametrize("co, ci, k, n", SAME_CASES)
@pytest.mark.parametrize("alpha", [1.0, 0.37])
@pytest.mark.parametrize("gram", ["input", "output"])
def test_same_value_matches_dense(co, ci, k, n, alpha, gram, rng):
    K = rng.standard_normal((co, ci) + k)
    f, g = frobenius_penalty(K, n, alpha, gram=gram)
    want = _dense_penalty(_dense(K, n), alpha, gram)
    assert abs(f - want) <= 1e-10 * want
    assert g.shape == K.shape and g.dtype == K.dtype


GEOMETRIES = [
    # (c_out, c_in, k, n, padding, stride, dilation)
    (2, 3, (3, 3), (7, 6), "valid", 2, 1),
    (2, 2, (3, 3), (8, 8), "full", (2, 1), (1, 2)),
    (3, 2, (3, 3), (6, 7), ((1, 2), (0, 1)), (2, 3), 1),
    (2, 2, (3, 3), (9, 9), "same", 2, 2),
    (2, 3, (5,), (11,), "same", 3, 1),
    (2, 2, (3, 3, 3), (4, 5, 3), "same", 1, 1),
    (1, 2, (4, 2), (6, 5), 1, 1, 1),
]


@pytest.mark.parametrize("co, ci, k, n, padding, stride, dilation", GEOMETRIES)
def test_other_zero_paddings_match_dense(co, ci, k, n, padding, stride, dilation, rng):
    K = rng.standard_normal((co, ci) + k)
    A = _dense(K, n, padding, stride, dilation)
    for gram in ("input", "output"):
        f, _ = frobenius_penalty(K, n, 0.8, padding, stride, dilation, gram=gram)
        want = _dense_penalty(A, 0.8, gram)
        assert abs(f - want) <= 1e-10 * want, (gram, f, want)


CIRCULAR = [
    # (c_out, c_in, k, n, stride): strides dividing n and not, images small enough for taps to alias
    (3, 2, (3, 3), (6, 6), 1),
    (3, 2, (3, 3), (6, 6), 2),
    (2, 3, (3, 3), (5, 7), 2),
    (2, 2, (3, 3), (3, 3), 1),
    (2, 2, (3,), (4,), 1),
    (2, 2, (5, 5), (5, 6), 1),
    (2, 2, (3, 3), (9, 9), 3),
]


@pytest.mark.parametrize("co, ci, k, n, stride", CIRCULAR)
def test_circular_and_stride_match_dense(co, ci, k, n, stride, rng):
    K = rng.standard_normal((co, ci) + k)
    A = _dense(K, n, "circular", stride)
    for alpha in (1.0, 2.5):
        f, _ = frobenius_penalty(K, n, alpha, "circular", stride)
        want = _dense_penalty(A, alpha)
        assert abs(f - want) <= 1e-10 * want


def test_circular_stride_is_scaled_kernel_residual(rng):
    """Circular, stride s dividing n: F - alpha^2 N = (n/s)^2 * (a kernel-space residual) for n >= 2e - 1."""
    K = rng.standard_normal((4, 3, 3, 3))
    vals = []
    for n in (10, 14, 20):
        f, _ = frobenius_penalty(K, (n, n), 1.0, "circular", 2)
        vals.append((f - 3 * n * n) / (n // 2) ** 2)
    assert np.allclose(vals, vals[0], rtol=1e-12, atol=0)


def test_same_is_quadratic_in_n_with_circular_leading_term(rng):
    """'same': F(n) = n^2 L_circ + n B + C for n >= 4r + 1, with L_circ = F_circ(n) / n^2."""
    K = rng.standard_normal((3, 6, 3, 3))
    F = [frobenius_penalty(K, (n, n), 0.9)[0] for n in range(5, 9)]
    assert abs(F[3] - 3 * F[2] + 3 * F[1] - F[0]) <= 1e-10 * F[3]  # third difference
    L = (F[2] - 2 * F[1] + F[0]) / 2
    Lc = frobenius_penalty(K, (11, 11), 0.9, "circular")[0] / 121
    assert abs(L - Lc) <= 1e-10 * abs(Lc)
    # the circular surrogate is not exact: O(1/n) off at n = 20
    f20, fc20 = frobenius_penalty(K, (20, 20), 0.9)[0], Lc * 400
    assert abs(f20 - fc20) > 1e-3 * f20


def test_orientation_identity(rng):
    K = rng.standard_normal((5, 2, 3, 3))
    n = (7, 6)
    fi, gi = frobenius_penalty(K, n, 1.3, gram="input")
    fo, go = frobenius_penalty(K, n, 1.3, gram="output")
    assert abs((fi - fo) - 1.3**2 * (2 - 5) * 42) <= 1e-10 * fi
    assert np.allclose(gi, go, rtol=1e-12, atol=1e-12 * np.abs(gi).max())


@pytest.mark.parametrize(
    "co, ci, k, n, padding, stride, dilation",
    [(6, 3, (3, 3), (5, 6), "same", 1, 1), (2, 3, (3, 3), (7, 6), "valid", 2, 1), (2, 2, (3, 3), (6, 6), "circular", 2, 1),
     (3, 2, (3, 3), (5, 7), "circular", 2, 1), (2, 2, (3, 3), (9, 9), "same", 2, 2)],
)
def test_sparse_route_matches_kernel_space(co, ci, k, n, padding, stride, dilation, rng):
    K = rng.standard_normal((co, ci) + k)
    for gram in ("input", "output"):
        f1, g1 = frobenius_penalty(K, n, 0.6, padding, stride, dilation, gram=gram)
        f2, g2 = frobenius_penalty(K, n, 0.6, padding, stride, dilation, gram=gram, method="sparse")
        assert abs(f1 - f2) <= 1e-12 * f2
        assert np.linalg.norm(g1 - g2) <= 1e-12 * np.linalg.norm(g2)


def test_gradient_matches_dense_formula(rng):
    """grad = 4 * adjoint of the structure map applied to M (M^T M - a I), from the dense matrix."""
    K = rng.standard_normal((2, 3, 3, 3))
    n = (4, 5)
    A = _dense(K, n)
    Z = 4 * A @ (A.T @ A - 0.7 * np.eye(A.shape[1]))
    want = np.zeros_like(K)
    for idx in np.ndindex(K.shape):
        E = np.zeros_like(K)
        E[idx] = 1
        want[idx] = np.sum(Z * _dense(E, n))
    _, g = frobenius_penalty(K, n, 0.7)
    assert np.linalg.norm(g - want) <= 1e-10 * np.linalg.norm(want)


@pytest.mark.parametrize(
    "shape, n, padding, stride",
    [((3, 6, 3, 3), (6, 6), "same", 1), ((6, 3, 3, 3), (4, 4), "same", 1), ((2, 2, 3, 3), (8, 8), "circular", 2),
     ((2, 3, 5, 3), (7, 6), "valid", 2)],
)
def test_frobenius_gradient_taylor(shape, n, padding, stride, rng):
    K = rng.standard_normal(shape)
    f = lambda x: np.array([frobenius_penalty(x, n, 0.8, padding, stride)[0]])  # noqa: E731
    g = frobenius_penalty(K, n, 0.8, padding, stride)[1]
    taylor_test(f, lambda v: np.array([np.sum(g * v)]), K, rng=rng, h0=0.1)


def test_gradient_check_can_fail(rng):
    """The Taylor test rejects a wrong gradient (here: half of it, the paper's (3.2))."""
    K = rng.standard_normal((3, 2, 3, 3))
    f = lambda x: np.array([frobenius_penalty(x, (5, 5))[0]])  # noqa: E731
    g = frobenius_penalty(K, (5, 5))[1] / 2
    with pytest.raises(AssertionError):
        taylor_test(f, lambda v: np.array([np.sum(g * v)]), K, rng=rng, h0=0.1)


def test_float32(rng):
    K = rng.standard_normal((3, 6, 3, 3))
    f64, g64 = frobenius_penalty(K, (9, 9))
    f32, g32 = frobenius_penalty(K.astype(np.float32), (9, 9))
    assert g32.dtype == np.float32
    assert abs(f32 - f64) <= 1e-6 * f64
    assert np.linalg.norm(g32 - g64) <= 1e-6 * np.linalg.norm(g64)


def test_extreme_kernel_scales_overflow_to_inf_not_nan(rng):
    """Past 2**200 the kernel is scaled by a power of two: the value is exact where it fits, inf where it overflows."""
    K = rng.standard_normal((2, 2, 3, 3))
    f0, g0 = frobenius_penalty(K, (6, 6), alpha=0.0)
    s = 2.0 ** 210
    f, g = frobenius_penalty(K * s, (6, 6), alpha=1.0)  # alpha^2 N is far below the rounding of s^4 f0
    assert f == pytest.approx(f0 * s ** 4, rel=1e-13)
    np.testing.assert_allclose(g, g0 * s ** 3, rtol=1e-13)
    for s in (2.0 ** 300, 1e300):
        f, g = frobenius_penalty(K * s, (6, 6), alpha=1.0)
        assert f == np.inf and not np.isnan(g).any()


def test_extreme_singular_values_at_extreme_kernel_scales(rng):
    """The normal matrix of a kernel past 2**100 (or below 2**-100) is formed from the kernel scaled by a power of two."""
    K = rng.standard_normal((2, 2, 3, 3))
    smax, smin = extreme_singular_values(K, (6, 6))
    for e in (150, 600, -150, -600):
        got = extreme_singular_values(np.ldexp(K, e), (6, 6))
        assert got == (np.ldexp(smax, e), np.ldexp(smin, e))  # exactly: powers of two
        value, grad = spectral_penalty(np.ldexp(K, e), (6, 6), form="max", target=1.0)
        assert np.isfinite(value) and np.isfinite(grad).all()


def test_cost_independent_of_image(rng):
    """Same work for 8x8 and 4096x4096 images: the value scales like n^2, computed in microseconds."""
    import time

    K = rng.standard_normal((4, 4, 3, 3))
    t0 = time.perf_counter()
    f, _ = frobenius_penalty(K, (4096, 4096))
    assert time.perf_counter() - t0 < 1.0
    assert np.isfinite(f) and f > 0


# ------------------------------------------------------------------ extreme values, spectral penalty
@pytest.mark.parametrize("shape, n, padding", [((3, 6, 3, 3), (5, 5), "same"), ((6, 3, 3, 3), (4, 5), "same"),
                                               ((2, 3, 3, 3), (6, 6), "circular")])
def test_extreme_singular_values(shape, n, padding, rng):
    K = rng.standard_normal(shape)
    s = np.linalg.svd(_dense(K, n, padding), compute_uv=False)
    smax, smin = extreme_singular_values(K, n, padding)
    assert abs(smax - s[0]) <= 1e-10 * s[0]
    assert abs(smin - s[-1]) <= 1e-9 * s[0]  # s[-1]: the min(M, N)-th value


@pytest.mark.parametrize("form", ["squares", "max", "gram"])
def test_spectral_penalty_value(form, rng):
    K = rng.standard_normal((2, 3, 3, 3))
    s = np.linalg.svd(_dense(K, (5, 5)), compute_uv=False)
    want = {
        "squares": (s[0] - 1) ** 2 + (s[-1] - 1) ** 2,
        "max": max(abs(s[0] - 1), abs(s[-1] - 1)),
        "gram": max(abs(s[0] ** 2 - 1), abs(s[-1] ** 2 - 1)),
    }[form]
    f, g = spectral_penalty(K, (5, 5), form=form)
    assert abs(f - want) <= 1e-9 * want and g.shape == K.shape


@pytest.mark.parametrize("shape, n, padding", [((3, 2, 3, 3), (5, 5), "same"), ((2, 2, 3, 3), (6, 6), "circular")])
def test_spectral_penalty_taylor(shape, n, padding, rng):
    K = rng.standard_normal(shape)
    f = lambda x: np.array([spectral_penalty(x, n, padding)[0]])  # noqa: E731
    g = spectral_penalty(K, n, padding)[1]
    taylor_test(f, lambda v: np.array([np.sum(g * v)]), K, rng=rng, h0=1e-2)


# ------------------------------------------------------------------ clipping
def _periodic_dense(h):
    """Dense layer y[o, p] = sum_{i, t} h[o, i, t] x[i, (p + t) mod n] by loops."""
    co, ci = h.shape[:2]
    n = h.shape[2:]
    P = int(np.prod(n))
    A = np.zeros((co * P, ci * P))
    pos = list(np.ndindex(*n))
    for o in range(co):
        for i in range(ci):
            for a, p in enumerate(pos):
                for t in pos:
                    q = tuple((pp + tt) % nn for pp, tt, nn in zip(p, t, n))
                    A[o * P + a, i * P + np.ravel_multi_index(q, n)] += h[(o, i) + t]
    return A


def test_clip_full_is_exact_projection(rng):
    K = rng.standard_normal((3, 2, 3, 3))
    n = (5, 6)
    s = np.linalg.svd(_dense(K, n, "circular"), compute_uv=False)
    lo, hi = np.quantile(s, 0.3), np.quantile(s, 0.8)
    h = clip_singular_values(K, n, lo, hi, full=True)
    assert h.shape == (3, 2, 5, 6)
    sc = np.linalg.svd(_periodic_dense(h), compute_uv=False)
    assert np.allclose(np.sort(sc), np.sort(np.clip(s, lo, hi)), rtol=0, atol=1e-10 * s[0])
    # the crop back to the 3x3 support is a kernel whose spectrum leaves [lo, hi] again
    Kc = clip_singular_values(K, n, lo, hi)
    assert Kc.shape == K.shape
    s2 = np.linalg.svd(_dense(Kc, n, "circular"), compute_uv=False)
    assert s2.max() > hi * (1 + 1e-6) or s2.min() < lo * (1 - 1e-6)


def test_clip_identity_when_inside(rng):
    K = rng.standard_normal((2, 2, 3, 3))
    Kc = clip_singular_values(K, (6, 6), 0.0, None)
    assert np.allclose(Kc, K, rtol=0, atol=1e-12 * np.abs(K).max())


def test_clip_errors(rng):
    K = rng.standard_normal((2, 2, 3, 3))
    with pytest.raises(ValueError, match="larger than hi"):
        clip_singular_values(K, (6, 6), 2.0, 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        clip_singular_values(K, (6, 6), -1.0, 1.0)


# ------------------------------------------------------------------ solvers
def test_regularize_lbfgs_small(rng):
    K = rng.standard_normal((3, 2, 3, 3))
    res = regularize_spectrum(K, (10, 10), maxiter=400)
    assert isinstance(res, RegularizeResult) and res.success, res.message
    assert 0.98 <= res.sigma_min <= res.sigma_max <= 1.02
    h = res.history
    assert len(h["fun"]) == res.nit + 1 and h["iteration"][-1] == res.nit
    assert np.all(np.diff(h["fun"]) <= 1e-12 * h["fun"][0])  # monotone with a line search
    s = np.linalg.svd(_dense(res.kernel, (10, 10)), compute_uv=False)
    assert abs(res.sigma_max - s[0]) < 1e-9 and abs(res.sigma_min - s[-1]) < 1e-9
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.nit = 3


def test_regularize_gd_and_guo(rng):
    K = rng.standard_normal((1, 3, 3, 3))
    gd = regularize_spectrum(K, (8, 8), method="gd", maxiter=50, history_every=10)
    assert gd.nit == 50 and gd.history["fun"][-1] < gd.history["fun"][0]
    assert np.isnan(gd.history["sigma_max"][5]) and np.isfinite(gd.history["sigma_max"][10])
    steps = []
    guo = regularize_spectrum(K, (8, 8), method="guo", maxiter=25, callback=lambda it, k, f: steps.append(it))
    assert steps == list(range(0, 26))  # the start, then every iteration
    assert np.allclose(guo.history["step"][1:], [guo_schedule(i) for i in range(1, 26)])


def test_regularize_spectral_penalty(rng):
    K = rng.standard_normal((2, 2, 3, 3)) * 0.4
    res = regularize_spectrum(K, (6, 6), penalty="spectral", method="gd", maxiter=60)
    h = res.history
    assert h["fun"][-1] < 0.5 * h["fun"][0]
    assert np.all(np.isfinite(h["sigma_max"]))


def test_regularize_callback_stops_and_float32(rng):
    K = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    res = regularize_spectrum(K, (6, 6), maxiter=100, callback=lambda it, k, f: it >= 3)
    assert res.nit == 3 and "callback" in res.message and res.kernel.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [({"penalty": "nuclear"}, ValueError, "penalty"), ({"method": "adam"}, ValueError, "method"),
     ({"alpha": -1.0}, ValueError, "positive"), ({"maxiter": -1}, ValueError, "maxiter"),
     ({"callback": 3}, TypeError, "callable"), ({"history_every": "often"}, ValueError, "history_every")],
)
def test_regularize_errors(kwargs, exc, match, rng):
    with pytest.raises(exc, match=match):
        regularize_spectrum(rng.standard_normal((2, 2, 3, 3)), (6, 6), **kwargs)


def test_penalty_errors(rng):
    K = rng.standard_normal((2, 2, 3, 3))
    with pytest.raises(ValueError, match="gram"):
        frobenius_penalty(K, (6, 6), gram="both")
    with pytest.raises(ValueError, match="method"):
        frobenius_penalty(K, (6, 6), method="dense")
    with pytest.raises(ValueError, match="finite"):
        frobenius_penalty(K, (6, 6), alpha=float("nan"))
    with pytest.raises(TypeError, match="complex"):
        frobenius_penalty(K + 1j, (6, 6))
    with pytest.raises(ValueError, match="spatial axes"):
        frobenius_penalty(K, (6, 6, 6))
    with pytest.raises(ValueError, match="odd effective kernel"):
        frobenius_penalty(rng.standard_normal((2, 2, 2, 2)), (6, 6))
    with pytest.raises(ValueError, match="form"):
        spectral_penalty(K, (6, 6), form="nuclear")


# ------------------------------------------------------------------ reproduction (CLI)
def test_cli_quick(tmp_path, capsys):
    from structops.apps.regularize import main

    rc = main(["--quick", "--iterations", "150", "--size", "10", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "guo_fig4_1_1x3.png", "guo_fig4_1_3x1.png", "guo_fig4_1_3x6.png", "guo_fig4_1_6x3.png"
    ]
    assert "L-BFGS" in out and "Guo schedule" in out


def test_cli_layers_above_the_monitoring_threshold(tmp_path, capsys):
    # 3x6 channels on 15x15: 675 rows in the smaller normal matrix, where the solver's own monitoring is opt-in
    from structops.apps.regularize import main

    main(["--iterations", "4", "--size", "15", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip().startswith("3x3x")]
    assert len(rows) == 8, out
    for line in rows:  # sigma_max, sigma_min and the seconds are numbers
        assert "nan" not in line and len(re.findall(r"\d+\.\d+", line)) == 3, line


def test_reproduction_figure_4_1():
    """All four cases of Figure 4.1 (20x20, up to 1000 iterations): L-BFGS ends within [0.98, 1.02] (< 1 s)."""
    for ci, co in ((3, 1), (1, 3), (3, 6), (6, 3)):
        K = np.random.default_rng([0, ci, co]).standard_normal((co, ci, 3, 3))
        res = regularize_spectrum(K, (20, 20), maxiter=1000, history_every=0)
        assert 0.98 <= res.sigma_min <= res.sigma_max <= 1.02, (ci, co, res)


# ------------------------------------------------------------------ GPU
@pytest.mark.gpu
def test_cupy_penalty_and_solver(cupy, rng):
    K = rng.standard_normal((3, 6, 3, 3))
    f, g = frobenius_penalty(K, (9, 9))
    fc, gc = frobenius_penalty(cupy.asarray(K), (9, 9))
    assert isinstance(gc, cupy.ndarray)
    assert abs(fc - f) <= 1e-12 * f and np.allclose(cupy.asnumpy(gc), g, rtol=1e-12, atol=1e-12 * np.abs(g).max())
    Kc = clip_singular_values(cupy.asarray(K), (6, 6), 0.5, 1.5)
    assert np.allclose(cupy.asnumpy(Kc), clip_singular_values(K, (6, 6), 0.5, 1.5), atol=1e-10)
    res = regularize_spectrum(cupy.asarray(K[:2, :1]), (8, 8), maxiter=200)
    assert isinstance(res.kernel, cupy.ndarray) and 0.95 < res.sigma_min <= res.sigma_max < 1.05

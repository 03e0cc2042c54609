"""Singular values that are right or refused: the structural reductions, reproducers of wrong values and a sweep.

Every reference is a dense SVD of a matrix built here from the convolution
rules (vectorised scatter of the taps, independent of the library's products).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import structops
from structops.linalg.structure import reduce_layer

from dense import out_shape, padding_pairs


def dense_matrix(K, in_shape, stride=1, padding="same", dilation=1):
    """Dense ``(M, N)`` matrix of a layer, by scattering every tap at every output pixel."""
    K = np.asarray(K)
    co, ci = K.shape[:2]
    k = K.shape[2:]
    D = len(k)
    s = (stride,) * D if np.isscalar(stride) else tuple(stride)
    dl = (dilation,) * D if np.isscalar(dilation) else tuple(dilation)
    circular = padding == "circular"
    pairs = padding_pairs(padding, k, dl, in_shape)
    oshape = out_shape(in_shape, k, s, pairs, dl)
    P = np.stack(np.meshgrid(*[np.arange(m) for m in oshape], indexing="ij"), -1).reshape(-1, D)
    A = np.zeros((co * P.shape[0], ci * int(np.prod(in_shape))), dtype=np.result_type(K.dtype, np.float64))
    rows = np.arange(P.shape[0])
    for d in itertools.product(*[range(x) for x in k]):
        q = P * np.array(s) + np.array(d) * np.array(dl) - np.array([lo for lo, _ in pairs])
        if circular:
            q %= np.array(in_shape)
            ok = np.ones(len(q), bool)
        else:
            ok = np.all((q >= 0) & (q < np.array(in_shape)), axis=1)
        cols = np.ravel_multi_index(tuple(q[ok].T), in_shape) if ok.any() else np.zeros(0, int)
        for o in range(co):
            for i in range(ci):
                np.add.at(A, (o * P.shape[0] + rows[ok], i * int(np.prod(in_shape)) + cols), K[(o, i) + d])
    return A


def svd(A):
    return np.linalg.svd(A, compute_uv=False)


# ---------------------------------------------------------------- the reproducers
def test_block_diagonal_channels_sigma_max():
    K = np.zeros((2, 2, 5, 5))
    K[0, 0] = 1.0
    K[1, 1, 2, 2] = 24.6
    op = structops.Conv2D(K, (24, 24))
    ref = svd(dense_matrix(K, (24, 24)))
    assert structops.opnorm(op) == pytest.approx(24.6, rel=1e-12) == pytest.approx(ref[0], rel=1e-12)
    np.testing.assert_allclose(structops.singular_values(op, k=3), ref[:3], rtol=1e-10)


def test_depthwise_kaiming_layers():
    rng = np.random.default_rng(0)
    for trial in range(6):
        c = 4
        K = np.zeros((c, c, 3, 3))
        for j in range(c):
            K[j, j] = rng.standard_normal((3, 3)) * np.sqrt(2 / 9)
        op = structops.Conv2D(K, (20, 20))
        ref = svd(dense_matrix(K, (20, 20)))
        np.testing.assert_allclose(structops.singular_values(op, k=4), ref[:4], rtol=1e-10)
        # some random 3x3 filters are nearly singular on 20x20 (sigma_min ~ 1e-12): absolute accuracy
        np.testing.assert_allclose(structops.singular_values(op, k=2, which="smallest"), ref[-2:], rtol=0,
                                   atol=1e-10 * ref[0])


def test_dilation_repeated_largest_values():
    K = np.random.default_rng(0).standard_normal((8, 8, 3, 3)) / 8
    op = structops.Conv2D(K, (16, 16), dilation=2)
    ref = svd(dense_matrix(K, (16, 16), dilation=2))
    s = structops.singular_values(op, k=2)
    np.testing.assert_allclose(s, ref[:2], rtol=1e-10)
    assert s[0] == pytest.approx(s[1], rel=1e-12)  # multiplicity 4 of the sub-lattices


def test_dilation_repeated_smallest_values():
    K = np.random.default_rng(1).standard_normal((1, 1, 3, 3))
    op = structops.Conv2D(K, (8, 14), padding="valid", dilation=2)
    ref = svd(dense_matrix(K, (8, 14), padding="valid", dilation=2))
    np.testing.assert_allclose(structops.singular_values(op, k=4, which="smallest"), ref[-4:], rtol=1e-9)
    np.testing.assert_allclose(ref[-4:], 1.4924282, rtol=1e-7)


@pytest.mark.parametrize("scale", [0.0, 1e-300, 1e300])
def test_zero_and_extreme_scales(scale):
    K0 = np.random.default_rng(2).standard_normal((2, 2, 3, 3))
    op1 = structops.Conv2D(K0, (32, 32))
    op = structops.Conv2D(K0 * scale, (32, 32))
    if scale == 0.0:
        assert structops.opnorm(op) == 0.0 and structops.cond(op) == np.inf
        assert not structops.singular_values(op, k=3, which="smallest").any()
        return
    assert structops.opnorm(op) == pytest.approx(scale * structops.opnorm(op1), rel=1e-12)
    assert structops.cond(op) == pytest.approx(structops.cond(op1), rel=1e-8)


def test_complex_kernels_near_the_underflow_threshold():
    # the power-of-two rescaling must not overflow (2**1030 is inf) for subnormal-size complex kernels
    K = np.random.default_rng(9).standard_normal((2, 2, 3, 3)) + 1j * np.random.default_rng(10).standard_normal((2, 2, 3, 3))
    ref = structops.opnorm(structops.Conv2D(K, (12, 12)))
    s = structops.opnorm(structops.Conv2D(K * 1e-310, (12, 12)))
    assert np.isfinite(s) and s == pytest.approx(1e-310 * ref, rel=1e-9)


def test_rank_deficient_channel_mixing_is_exactly_singular():
    K = np.random.default_rng(3).standard_normal((1, 3, 3, 3))
    K = np.concatenate([K, -2.0 * K], axis=0)  # two output channels, one direction
    op = structops.Conv2D(K, (20, 20))
    with pytest.warns(RuntimeWarning, match="only known to be >="):  # rank 1 in rounding: the SVD's error is said
        assert structops.cond(op) == np.inf
    assert not structops.singular_values(op, k=3, which="smallest").any()
    ref = svd(dense_matrix(K, (20, 20)))
    np.testing.assert_allclose(structops.singular_values(op, k=3), ref[:3], rtol=1e-10)
    red = reduce_layer(op)
    assert red.zeros == 400 and any("rank" in s for s in red.steps)


def test_reductions_are_exact_on_the_whole_spectrum():
    rng = np.random.default_rng(4)
    K = np.zeros((4, 3, 3, 3))
    K[:2, :2] = rng.standard_normal((2, 2, 3, 3))
    K[3, 2] = rng.standard_normal((3, 3))  # output channel 2 is empty
    for padding, dilation in [("same", 1), ("valid", 2), ("same", 2), ("full", 3), ("circular", 1)]:
        op = structops.Conv2D(K, (9, 10), padding=padding, dilation=dilation)
        ref = svd(dense_matrix(K, (9, 10), padding=padding, dilation=dilation))
        np.testing.assert_allclose(structops.singular_values(op), ref, rtol=1e-10, atol=1e-12 * ref[0])


@pytest.mark.parametrize("kshape, in_shape, stride, padding, dilation", [
    ((3, 1, 5, 1), (15, 9), (2, 3), ((4, 4), (0, 0)), (1, 2)),  # windows of one column, three apart
    ((1, 6, 3, 2), (15, 12), (2, 3), ((4, 2), (0, 0)), (2, 2)),  # stride and dilation share a factor
    ((2, 2, 3), (20,), (4,), "same", (1,)),  # stride above the window: one block per output
    ((2, 3, 3), (21,), (1,), "valid", (3,)),  # three sub-lattices
])
def test_independent_parts_along_an_axis(kshape, in_shape, stride, padding, dilation):
    K = np.random.default_rng(6).standard_normal(kshape)
    op = structops.ConvND(K, in_shape, stride=stride, padding=padding, dilation=dilation)
    red = reduce_layer(op)
    assert red is not None and any("parts" in s for s in red.steps)
    ref = svd(dense_matrix(K, in_shape, stride, padding, dilation))
    np.testing.assert_allclose(structops.singular_values(op), ref, rtol=1e-10, atol=1e-12 * ref[0])
    k = min(4, ref.size - 2)
    np.testing.assert_allclose(structops.singular_values(op, k=k, dense=False), ref[:k], rtol=1e-10)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_singular_vectors_of_reducible_layers(which):
    K = np.zeros((3, 3, 3, 3))
    K[0, 0] = np.random.default_rng(7).standard_normal((3, 3))
    K[1:, 1:] = np.random.default_rng(8).standard_normal((2, 2, 3, 3))
    for op in (structops.Conv2D(K, (14, 14)), structops.Conv2D(K, (14, 14), dilation=2)):
        A = op.todense()
        ref = svd(A)
        s, U, V = structops.singular_vectors(op, k=3, which=which)
        want = ref[:3] if which == "largest" else ref[-3:]
        np.testing.assert_allclose(s, want, rtol=1e-9, atol=1e-12 * ref[0])
        np.testing.assert_allclose(A @ V, U * s, atol=1e-9 * ref[0])
        np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-9)


def test_the_certificate():
    K = np.zeros((2, 2, 5, 5))
    K[0, 0] = 1.0
    K[1, 1, 2, 2] = 24.6
    s, info = structops.singular_values(structops.Conv2D(K, (24, 24)), k=2, return_info=True)
    assert isinstance(info, structops.linalg.spectra.SpectrumInfo) and info.certified
    assert info.reductions and "component" in info.reductions[0]
    assert 0 < info.error_bound < 1e-9 * s[0] and info.seconds > 0 and info.methods
    A = np.random.default_rng(0).standard_normal((30, 20))
    s, info = structops.singular_values(A, return_info=True)
    assert info.methods[0][0] == "dense SVD" and info.error_bound < 1e-12
    assert np.max(np.abs(s - svd(A))) <= info.error_bound
    # strict=False after a failure: the certificate says so
    op = structops.Conv2D(np.random.default_rng(1).standard_normal((3, 3, 3, 3)), (24, 24))
    with pytest.warns(structops.linalg.spectra.SpectrumNotConvergedWarning):
        s, info = structops.singular_values(op, k=2, dense=False, tol=1e-15, maxiter=1, strict=False,
                                            return_info=True)
    assert not info.certified and info.error_bound == np.inf


def test_tol_is_relative_to_each_value_with_a_rounding_floor():
    from structops.linalg._common import certified

    eps = np.finfo(float).eps
    assert certified([2.0, 1e-3], [1e-11, 1e-14], 2.0, 1e-10)
    assert not certified([2.0, 1e-3], [1e-11, 1e-12], 2.0, 1e-10)  # 1e-12 > 1e-10 * 1e-3: not relative to sigma_max
    assert certified([2.0, 1e-17], [1e-11, 5 * eps], 2.0, 1e-10)  # below the floor 10 eps sigma_max (n = 1)
    assert certified([2.0, 1e-17], [1e-11, 150 * eps], 2.0, 1e-10, n=100)  # floor 10 sqrt(n) eps sigma_max
    assert not certified([2.0, 1e-17], [1e-11, 250 * eps], 2.0, 1e-10, n=100)


def test_numerically_singular_depthwise_filters_are_certified_without_a_dense_svd():
    # Kaiming 3x3 filters on 56x56 are singular to working precision: the Ritz upper bound certifies them
    K = np.random.default_rng(1).standard_normal((1, 1, 3, 3)) * np.sqrt(2 / 9)
    op = structops.Conv2D(K, (56, 56))
    s, info = structops.singular_values(op, k=1, which="smallest", return_info=True)
    assert info.certified and [m for m, _ in info.methods] == ["normal-matrix inverse iteration"]
    assert s[0] <= info.error_bound <= 1e-12 * structops.opnorm(op)


def test_dilation_2_same_layer_is_certified_fast():
    K = np.random.default_rng(0).standard_normal((16, 16, 3, 3)) / 12
    op = structops.Conv2D(K, (32, 32), dilation=2)
    s, info = structops.singular_values(op, k=1, which="smallest", return_info=True)
    assert info.certified and info.seconds < 20 and info.reductions
    smax = structops.opnorm(op)
    assert np.isfinite(structops.cond(op)) and structops.cond(op) == pytest.approx(smax / s[0], rel=1e-8)


def test_no_reduction_for_a_dense_kernel():
    K = np.random.default_rng(5).standard_normal((3, 2, 3, 3))
    assert reduce_layer(structops.Conv2D(K, (8, 8))) is None


# ---------------------------------------------------------------- the sweep
STRUCTURES = ("gaussian", "block", "rank1", "single_tap", "mean_free", "depthwise", "scaled")


def _random_layer(rng):
    D = int(rng.integers(1, 4))
    co, ci = int(rng.integers(1, 7)), int(rng.integers(1, 7))
    k = tuple(int(rng.integers(1, 6 if D < 3 else 4)) for _ in range(D))
    stride = tuple(int(rng.integers(1, 4)) for _ in range(D))
    dil = tuple(int(rng.integers(1, 4)) for _ in range(D))
    e = [d * (kk - 1) + 1 for kk, d in zip(k, dil)]
    side = {1: 40, 2: 11, 3: 5}[D]
    in_shape = tuple(int(rng.integers(max(ea, 2), max(ea, 2) + side)) for ea in e)
    padding = rng.choice(["same", "valid", "full", "circular", "explicit"])
    if padding in ("same", "circular") and any(ea % 2 == 0 for ea in e):
        padding = "valid"
    if padding == "circular":
        stride = tuple(1 if n % s else s for n, s in zip(in_shape, stride))
    if padding == "explicit":
        padding = tuple((int(rng.integers(0, ea)), int(rng.integers(0, ea))) for ea in e)
    kind = STRUCTURES[int(rng.integers(len(STRUCTURES)))]
    K = rng.standard_normal((co, ci) + k)
    if kind == "block":
        cut_o, cut_i = int(rng.integers(0, co + 1)), int(rng.integers(0, ci + 1))
        K[:cut_o, cut_i:] = 0
        K[cut_o:, :cut_i] = 0
    elif kind == "rank1":
        K = np.einsum("o,i,...->oi...", rng.standard_normal(co), rng.standard_normal(ci), rng.standard_normal(k))
    elif kind == "single_tap":
        K = np.zeros_like(K)
        K[(slice(None), slice(None)) + tuple(int(rng.integers(kk)) for kk in k)] = rng.standard_normal((co, ci))
    elif kind == "mean_free":
        K -= K.mean(axis=tuple(range(2, 2 + D)), keepdims=True)
    elif kind == "depthwise":
        c = min(co, ci)
        K = np.zeros((c, c) + k)
        for j in range(c):
            K[j, j] = rng.standard_normal(k)
    elif kind == "scaled":
        K *= 10.0 ** int(rng.integers(-200, 200))
    return K, in_shape, stride, padding, dil, kind


def _sweep(n, seed):
    rng = np.random.default_rng(seed)
    done = wrong = refused = 0
    report = []
    while done < n:
        K, in_shape, stride, padding, dil, kind = _random_layer(rng)
        pairs = padding_pairs(padding, K.shape[2:], dil, in_shape)
        if min(out_shape(in_shape, K.shape[2:], stride, pairs, dil)) < 1:
            continue
        try:
            op = structops.ConvND(K, in_shape, stride=stride, padding=padding, dilation=dil)
        except ValueError:
            continue
        if op.shape[0] * op.shape[1] > 3e5:
            continue
        ref = svd(dense_matrix(K, in_shape, stride, padding, dil))
        r = ref.size
        smax = ref[0]
        cond = smax / ref[-1] if ref[-1] > 0 else np.inf
        done += 1
        k = min(1 if done % 2 else 3, r)
        for which, dense in (("largest", None), ("largest", False), ("smallest", None), ("smallest", False)):
            if dense is False and k >= r - 1:
                continue
            try:
                s, info = structops.singular_values(op, k=k, which=which, dense=dense, return_info=True)
            except (structops.SpectrumNotConvergedError, NotImplementedError) as exc:
                refused += 1
                if cond < 1e9:
                    report.append(("refused", kind, op, which, dense, cond, str(exc)[:120]))
                continue
            want = ref[:k] if which == "largest" else ref[r - k:]
            # certified values: within tol * sigma_max (1e-10 by default), with a margin for the dense reference
            if not np.allclose(s, want, rtol=0, atol=1e-8 * smax + 1e-300):
                wrong += 1
                report.append(("wrong", kind, op, which, dense, cond, s, want))
            # the certificate holds: no value further from the (dense, rounding-level) reference than its bound
            slack = 100 * np.finfo(float).eps * smax * np.sqrt(max(op.shape))
            if not (info.certified and np.max(np.abs(s - want)) <= info.error_bound + slack):
                report.append(("bound", kind, op, which, dense, cond, s, want, info))
    return done, wrong, refused, report


def test_sweep_of_random_layers():
    """1000 random layers, each asked for its 1 or 3 largest and smallest values by every route: none wrong.

    Refusals are allowed only above cond 1e9 (counted, not reported); every
    answer's certificate must bound its distance to the dense reference.
    """
    done, wrong, refused, report = _sweep(1000, seed=12)
    assert done == 1000
    assert not report, report[:5]  # no wrong value, no certificate violated, no refusal below cond 1e9
    assert wrong == 0


# ---------------------------------------------------------------- ill-conditioned layers
def _ill_conditioned(cond, c=3, n=12, seed=0):
    """A square 'same' layer with ``sigma_max / sigma_min`` about ``cond``: a symmetric layer shifted by an eigenvalue."""
    rng = np.random.default_rng(seed)
    K = rng.standard_normal((c, c, 3, 3)) / 3
    K = K + np.flip(K.transpose(1, 0, 2, 3), axis=(2, 3))  # A = A^T
    lam = np.linalg.eigvalsh(dense_matrix(K, (n, n)))
    i = np.argmin(np.abs(lam))
    K[np.arange(c), np.arange(c), 1, 1] -= lam[i] - np.sign(lam[i]) * np.abs(lam).max() / cond
    return K


@pytest.mark.parametrize("cond", [1e5, 1e7, 1e8, 1e9])
def test_ill_conditioned_square_layers_are_certified_to_1e_6(cond):
    K = _ill_conditioned(cond)
    op = structops.Conv2D(K, (12, 12))
    ref = svd(dense_matrix(K, (12, 12)))
    assert 0.5 * cond < ref[0] / ref[-1] < 2 * cond
    s, info = structops.singular_values(op, k=1, which="smallest", dense=False, tol=1e-6, return_info=True)
    assert info.certified and info.error_bound <= 1e-6 * s[0]
    # the dense reference is itself only accurate to about eps ||A||
    assert abs(s[0] - ref[-1]) <= info.error_bound + 50 * np.finfo(float).eps * ref[0]
    assert structops.cond(op, dense=False, tol=1e-6) == pytest.approx(ref[0] / ref[-1], rel=1e-5)


def test_ill_conditioned_layer_refines_on_both_sides():
    from structops.linalg.normal import smallest_singular_values

    K = _ill_conditioned(1e9, c=2, n=16, seed=3)
    ref = svd(dense_matrix(K, (16, 16)))
    s, info = smallest_singular_values(structops.Conv2D(K, (16, 16)), k=2, tol=1e-6)
    assert info["converged"] and info["two_sided"]
    assert np.all(info["absolute_error_bound"] <= 1e-6 * s)
    assert np.all(np.abs(s - ref[-2:][::-1]) <= info["absolute_error_bound"] + 50 * np.finfo(float).eps * ref[0])
    # the vectors: A v = s u at rounding level of ||A|| (not eps ||A|| cond(A))
    A = dense_matrix(K, (16, 16))
    U, V = info["left"], info["right"]
    assert np.linalg.norm(A @ V - U * s) <= 1e-13 * ref[0]
    assert np.linalg.norm(A.T @ U - V * s) <= 1e-13 * ref[0]


def test_beyond_cond_1e9_the_certificate_still_holds():
    # cond 1e11: the normal matrices are singular to working precision (shifted factors), the
    # two-sided residuals in long double still bound the error, below the rounding floor
    K = _ill_conditioned(1e11)
    ref = svd(dense_matrix(K, (12, 12)))
    s, info = structops.singular_values(structops.Conv2D(K, (12, 12)), k=1, which="smallest", dense=False,
                                        return_info=True)
    assert info.certified and info.error_bound <= 10 * np.sqrt(432) * np.finfo(float).eps * ref[0]
    assert abs(s[0] - ref[-1]) <= info.error_bound + 50 * np.finfo(float).eps * ref[0]


@pytest.mark.parametrize("shape, padding, stride, dilation", [
    ((1, 1), "same", 1, 1), ((2, 1), "same", 1, 1), ((1, 3), ((2, 2), (1, 1)), 1, 1), ((2, 2), "full", 1, 2),
    ((3, 2), ((3, 3), (2, 0)), 2, 1)])
def test_taps_that_read_only_padding_are_cut(shape, padding, stride, dilation):
    K = np.random.default_rng(11).standard_normal((3, 2, 3, 3))
    op = structops.Conv2D(K, shape, padding=padding, stride=stride, dilation=dilation)
    ref = svd(op.todense())
    s, info = structops.singular_values(op, return_info=True)
    np.testing.assert_allclose(s, ref, rtol=0, atol=1e-13 * max(ref[0], 1))
    assert structops.opnorm(op) == pytest.approx(ref[0], rel=1e-12)


def test_a_layer_whose_taps_all_read_padding_is_zero():
    K = np.ones((2, 2, 3))
    op = structops.Conv1D(K, 2, padding=((4, 4),), dilation=1)  # outputs 0-1 and 6-7 read padding only ...
    red = reduce_layer(op)
    assert red is None or red.count() + red.zeros == min(op.shape)
    op0 = structops.Conv1D(np.ones((2, 2, 2)), 1, padding=((3, 3),), dilation=5)  # taps at -3 and 2: never inside
    assert not op0.todense().any()
    assert reduce_layer(op0).zeros == min(op0.shape)
    assert structops.opnorm(op0) == 0.0 and structops.cond(op0) == np.inf


def test_the_reduction_of_a_layer_is_computed_once():
    op = structops.Conv2D(np.random.default_rng(12).standard_normal((4, 4, 3, 3)), (6, 6), dilation=2)
    red = reduce_layer(op)
    assert red is not None and reduce_layer(op) is red
    other = op.with_kernel(2 * op.kernel)  # another layer object: its own reduction
    assert reduce_layer(other) is not red


@pytest.mark.parametrize("seed", range(6))
def test_channel_rank_truncation_bound_covers_the_svd_s_own_rounding(seed):
    """A channel singular value at the rounding level is dropped; the bound holds for the exact one.

    The computed value dropped (7.7e-17) was below the channel matrix's own
    (9.4e-17, to 50 digits) by more than the bound said, before the SVD's
    backward error was added to it.
    """
    mpmath = pytest.importorskip("mpmath")
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    V, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    A = U @ np.diag([1.0, 1e-8, 1e-16]) @ V.T
    op = structops.Conv2D(A.reshape(3, 3, 1, 1), (5, 5))
    s, info = structops.singular_values(op, 1, "smallest", return_info=True)
    mpmath.mp.dps = 50
    exact = float(min(mpmath.svd_r(mpmath.matrix(A.tolist()), compute_uv=False)))
    assert abs(float(s[0]) - exact) <= info.error_bound


# ---------------------------------------------------------------- generic operators: null spaces, repeated values
def _operator_with_values(sigma, M, seed=0):
    """A matrix-free ``M x N`` operator ``U diag(sigma) V^T`` (random orthonormal ``U``, ``V``): its exact spectrum."""
    import scipy.sparse.linalg as spla

    rng = np.random.default_rng(seed)
    N = len(sigma)
    U, _ = np.linalg.qr(rng.standard_normal((M, N)))
    V, _ = np.linalg.qr(rng.standard_normal((N, N)))
    A = (U * np.asarray(sigma, dtype=float)) @ V.T
    return spla.aslinearoperator(A)


@pytest.mark.parametrize("wide", [False, True])
def test_lanczos_sees_the_null_space_of_a_rank_deficient_operator(wide):
    """ARPACK forces its start into the range of its operator: unshifted, it returned the least positive value."""
    sigma = np.concatenate([np.zeros(40), np.linspace(0.1, 1.0, 210)])
    op = _operator_with_values(sigma, 300)
    op = op.H if wide else op
    for k in (1, 5):
        s, info = structops.singular_values(op, k=k, which="smallest", dense=False, return_info=True)
        bound = info.methods[-1][1]  # the smallest values' own (the first note is sigma_max's)
        assert info.certified and np.all(s <= bound) and bound < 3e-13, (k, s, info)


def test_lanczos_finds_every_copy_of_a_repeated_value():
    """Values repeated 12 times: single-vector Lanczos returned other values in place of missed copies."""
    top = np.concatenate([np.ones(12), np.linspace(0.1, 0.9, 238)])
    s, info = structops.singular_values(_operator_with_values(top, 260), k=10, dense=False, return_info=True)
    assert info.certified
    np.testing.assert_allclose(s, 1.0, rtol=0, atol=1e-12)
    low = np.concatenate([np.full(12, 1e-2), np.linspace(0.1, 1.0, 238)])
    s, info = structops.singular_values(_operator_with_values(low, 260, seed=1), k=10, which="smallest", dense=False,
                                        return_info=True)
    assert info.certified
    np.testing.assert_allclose(s, 1e-2, rtol=1e-9, atol=0)


def test_block_lanczos_finds_copies_beyond_its_block():
    from structops.linalg._common import _Opts
    from structops.linalg.lanczos import block_krylov_svd

    # 24 identical depthwise channels: every value 24 times (a block of 4 returned 0.27 too little)
    K = np.repeat(np.random.default_rng(0).standard_normal((1, 1, 3, 3)), 24, axis=0)
    op = structops.PaddedConvND(K, (10, 10), padding=1, padding_mode="reflect", groups=24)
    ref = np.linalg.svd(op.tosparse().toarray(), compute_uv=False)
    opts = _Opts(log=[])
    s, _, _ = block_krylov_svd(op, 12, opts, False, block=4)
    np.testing.assert_allclose(s, ref[:12], rtol=0, atol=1e-12)
    assert opts.log[-1][0] == "block Lanczos, residual-checked"


def test_the_smallest_values_of_a_zero_generic_operator_are_zero():
    op = structops.PaddedConvND(np.zeros((2, 2, 3, 3)), (16, 16), padding=1, padding_mode="reflect")
    s, info = structops.singular_values(op, k=2, which="smallest", dense=False, return_info=True)
    assert info.certified and np.array_equal(s, np.zeros(2))
    s, U, V = structops.singular_vectors(op, k=2, which="smallest", dense=False)
    assert np.array_equal(s, np.zeros(2)) and np.allclose(U.T @ U, np.eye(2)) and np.allclose(V.T @ V, np.eye(2))


def test_the_largest_values_of_a_zero_generic_operator_are_zero_with_unit_vectors():
    """Its k = 1 left vector was the zero vector (u = A v / s with A v = 0, a zero residual), and k >= 2 was
    refused (ARPACK cannot start the copies check on the zero operator: its start vector maps to zero)."""
    import pylops

    for op in (structops.PaddedConvND(np.zeros((2, 2, 3, 3)), (16, 16), padding=1, padding_mode="reflect"),
               pylops.MatrixMult(np.zeros((30, 20)))):
        for k in (1, 3):
            s, info = structops.singular_values(op, k=k, dense=False, return_info=True)
            assert info.certified and np.array_equal(s, np.zeros(k))
            s, U, V = structops.singular_vectors(op, k=k, dense=False)
            assert np.array_equal(s, np.zeros(k))
            assert np.allclose(U.T @ U, np.eye(k), atol=1e-14) and np.allclose(V.T @ V, np.eye(k), atol=1e-14)


def test_a_padded_depthwise_layer_with_zero_channels_is_singular():
    """Circular padding wider than the kernel, two of three depthwise filters zero: sigma_min = 0, 90 times."""
    op = _zero_channel_layer()  # |1 + z / 2 + z^2 / 4| >= 1 / 4 on the unit circle: the third channel is well posed
    ref = np.linalg.svd(op.tosparse().toarray(), compute_uv=False)  # assembled from the taps
    assert np.all(ref[-90:] < 1e-14) and ref[-91] > 0.2
    for k in (1, 12):
        s, info = structops.singular_values(op, k=k, which="smallest", dense=False, return_info=True)
        bound = info.methods[-1][1]  # the smallest values' own (the first note is sigma_max's)
        assert info.certified and np.all(s <= bound) and bound < 3e-13, (k, s, info)


def _zero_channel_layer():
    K = np.zeros((3, 1, 3))
    K[2, 0] = [1.0, 0.5, 0.25]
    return structops.PaddedConvND(K, (45,), padding=2, padding_mode="circular", groups=3)


def _assert_triplets(A, s, U, V, atol):
    """Each triplet's bound ``sqrt((||A v - s u||^2 + ||A^H u - s v||^2) / 2)`` within ``1e-10 s + atol
    sigma_max`` (the certificate at the default tol, ``atol`` for the rounding floor); ``U``, ``V`` orthonormal."""
    sigma_max = np.linalg.norm(A, 2)
    r1, r2 = np.linalg.norm(A @ V - U * s, axis=0), np.linalg.norm(A.conj().T @ U - V * s, axis=0)
    bound = np.sqrt((r1**2 + r2**2) / 2)
    assert np.all(bound <= 1e-10 * s + atol * sigma_max), bound / sigma_max
    for X in (U, V):
        assert np.abs(X.conj().T @ X - np.eye(len(s))).max() < 1e-12


@pytest.mark.parametrize("adjoint", [False, True], ids=["tall", "wide"])
def test_vectors_of_zero_values_are_found_on_their_own_side(adjoint):
    """Tall with a null space: A v = 0 leaves the left vector u free (it must lie in the null space of A^T), and
    u = A v / s was rounding noise (A^T u - s v of 0.4 sigma_max, U not orthonormal); the left vectors are the
    null vectors of A A^T (wide: the right vectors those of A^T A). Measured: residuals up to 2.9e-14 sigma_max."""
    op = _zero_channel_layer()
    A = op.tosparse().toarray()
    op, A = (op.H, A.T) if adjoint else (op, A)
    for k in (1, 5, 12):
        s, U, V = structops.singular_vectors(op, k=k, which="smallest", dense=False)
        assert np.all(s < 1e-13)
        _assert_triplets(A, s, U, V, 1e-12)
    s, U, V = structops.singular_vectors(op, k=5, dense=False)  # the largest were always determined
    _assert_triplets(A, s, U, V, 1e-12)


def _singular_square(complex_):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 40)) + (1j * rng.standard_normal((40, 40)) if complex_ else 0)
    A[[1, 4], :] = 0
    A[:, [2, 5]] = 0
    return A


@pytest.mark.parametrize(
    "A",
    [np.diag(np.where(np.isin(np.arange(40), [3, 7, 11]), 0.0, np.arange(1.0, 41.0))), _singular_square(False),
     _singular_square(True)],
    ids=["diagonal", "square", "complex"],
)
def test_vectors_of_a_square_singular_operator(A):
    """Square with exact zeros: the left null vectors were refused (a triplet residual of 0.3 sigma_max);
    measured now, residuals of the zero values up to 7.5e-15 sigma_max, for k up to one more than the nullity."""
    import pylops

    op = pylops.MatrixMult(A, dtype=A.dtype)
    for k in (1, 2, 3):
        s, U, V = structops.singular_vectors(op, k=k, which="smallest", dense=False)
        assert U.dtype == A.dtype and np.all(s[-2:] < 1e-12)
        _assert_triplets(A, s, U, V, 1e-12)


def test_vectors_no_other_side_run_can_find_are_refused(monkeypatch):
    from structops.linalg import SpectrumNotConvergedError, lanczos

    monkeypatch.setattr(lanczos, "_partners", lambda P, side, s, U, V, residual, *args: (U, V, residual))
    op = _zero_channel_layer()
    with pytest.raises(SpectrumNotConvergedError, match="not their left vectors"):
        structops.singular_vectors(op, k=5, which="smallest", dense=False)
    s = structops.singular_values(op, k=5, which="smallest", dense=False)  # the values stay certified
    assert np.all(s < 1e-13)


def test_the_null_space_certificate_holds_from_any_start_vector():
    """The 12 smallest of the layer above from 20 random ARPACK starts: every one 0, certified below 3e-13
    (measured: 9.4e-14, the rounding floor 10 sqrt(n) eps sigma_max = 5.6e-14 of the products included).
    (One inaccurate copy had mixed into every null vector through a Rayleigh-Ritz step on the shifted normal
    matrix, which cannot tell values below sqrt(eps) sigma_max apart: 4 of these starts were refused.)"""
    from structops.linalg._common import _Opts
    from structops.linalg.lanczos import lanczos_svd

    op = _zero_channel_layer()
    sigma_max = float(structops.singular_values(op, k=1, dense=False)[0])
    for seed in range(100, 120):
        v0 = np.random.default_rng(seed).standard_normal(op.shape[1])
        opts = _Opts(log=[])
        s, _, _ = lanczos_svd(op, 12, "smallest", opts, False, v0=v0, v0_side="in", sigma_max=sigma_max)
        assert opts.log[-1][0] == "Lanczos (ARPACK), residual-checked", (seed, opts.log)
        assert opts.log[-1][1] < 3e-13 and np.all(s <= opts.log[-1][1]), (seed, s, opts.log)


def test_generic_spectra_do_not_depend_on_what_ran_before():
    """ARPACK's own start vector comes from a process-wide LAPACK seed; the library's starts are seeded."""
    import scipy.sparse.linalg as spla

    op = _zero_channel_layer()
    first = structops.singular_values(op, k=5, which="smallest", dense=False)
    spla.eigsh(np.diag(np.arange(1.0, 31.0)), k=2)  # moves LAPACK's seed on
    again = structops.singular_values(op, k=5, which="smallest", dense=False)
    assert np.array_equal(first, again)


def test_the_copies_check_starts_where_the_first_run_did_not():
    """An input channel no filter reads: 132 zeros. The first run sees a few of them; a copies check started from
    the same vector finds nothing new in the null space (its start lies where the first run saw) and had passed
    values of 0.07 among the 6 smallest, certified (5 of 20 filters; these three among them)."""
    for seed in (4, 6, 8):
        K = np.zeros((4, 1, 3, 3))
        K[3, 0] = np.random.default_rng(seed).standard_normal((3, 3)) / 3
        op = structops.PaddedConvND(K, (11, 12), padding=1, padding_mode="circular", groups=2)
        s, info = structops.singular_values(op, k=6, which="smallest", dense=False, return_info=True)
        bound = info.methods[-1][1]  # the smallest values' own
        assert info.certified and np.all(s <= bound) and bound < 3e-13, (seed, s, info)


def test_sweep_of_random_padded_layers_on_the_generic_routes():
    """Reflect, replicate and circular padding (the generic Lanczos routes, dense=False), adversarial kernels:
    zero filters, identical depthwise channels (repeated values), a rank-one channel mixing. Every answer is
    within its bound of the dense SVD of the matrix assembled from the taps; refusals are counted, not wrong."""
    from structops.linalg import SpectrumNotConvergedError

    rng = np.random.default_rng(7)
    answered = refused = 0
    for trial in range(24):
        groups = int(rng.choice([1, 2, 4]))
        c_in = groups * int(rng.integers(1, 3))
        c_out = groups * int(rng.integers(1, 3))
        n = tuple(int(v) for v in rng.integers(8, 14, 2))
        K = rng.standard_normal((c_out, c_in // groups, 3, 3)) / 3
        kind = trial % 4
        if kind == 1:
            K[: c_out // 2 + 1] = 0  # zero filters: a null space
        elif kind == 2:
            K[:] = K[:1]  # identical filters: every value repeated
        elif kind == 3:
            K = np.einsum("o,i...->oi...", rng.standard_normal(c_out), K[0])  # rank one across channels
        mode = ("reflect", "replicate", "circular")[trial % 3]
        stride = int(rng.choice([1, 1, 2]))
        op = structops.PaddedConvND(K, n, padding=1, padding_mode=mode, stride=stride, groups=groups)
        ref = np.linalg.svd(op.tosparse().toarray(), compute_uv=False)
        r = min(op.shape)
        for which in ("largest", "smallest"):
            for k in (1, 3):
                if k >= r - 1:
                    continue
                try:
                    s, info = structops.singular_values(op, k=k, which=which, dense=False, return_info=True)
                except SpectrumNotConvergedError:
                    refused += 1
                    continue
                want = ref[:k] if which == "largest" else ref[r - k:r]
                slack = 1e-12 * ref[0] + 1e-300
                assert np.all(np.abs(s - want) <= info.error_bound + slack), (trial, which, k, s, want, info)
                answered += 1
    assert answered >= 60, (answered, refused)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_a_single_precision_operator_is_certified_to_its_own_rounding(dtype):
    """A float32 operator's products carry single-precision rounding (residuals of 1e-7 sigma_max), which no
    method resolves: at the default tol its values were refused, after 100 block Lanczos restarts; the floor
    is now that of the products' precision. Measured: errors at most 6e-4 of the reported bound."""
    import pylops

    rng = np.random.default_rng(0)
    A = rng.standard_normal((300, 200)) + (1j * rng.standard_normal((300, 200)) if dtype == np.complex64 else 0)
    A = A.astype(dtype)
    op = pylops.MatrixMult(A, dtype=dtype)
    A64 = A.astype(np.complex128 if dtype == np.complex64 else np.float64)
    ref = np.linalg.svd(A64, compute_uv=False)
    floor = 10 * np.sqrt(300) * np.finfo(np.float32).eps * ref[0]
    for which, k in itertools.product(("largest", "smallest"), (1, 3)):
        s, info = structops.singular_values(op, k=k, which=which, dense=False, return_info=True)
        want = ref[:k] if which == "largest" else ref[-k:]
        assert info.certified and info.error_bound <= 2 * floor, (which, k, info)  # the residual's, plus the floor
        assert np.all(np.abs(s - want) <= info.error_bound), (which, k, s - want, info.error_bound)
    # a double-precision operator keeps double's floor: the same matrix in float64 is certified far below it
    s, info = structops.singular_values(pylops.MatrixMult(A64, dtype=A64.dtype), k=3, dense=False, return_info=True)
    assert info.certified and info.error_bound < 1e-9 * ref[0]


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_a_single_precision_layer_has_the_spectrum_of_its_kernel_values(mode):
    """A float32 PaddedConvND went through the generic route in float32 products (ConvND's routes take its
    kernel to float64): its largest values were refused after 100 block Lanczos restarts (residuals 7e-8
    sigma_max). The products are now in double precision, as for ConvND: the values of the float32 kernel's
    values, to the certificate of double precision."""
    K = np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32)
    ops = [structops.PaddedConvND(K.astype(dtype), (16, 16), padding=1, padding_mode=mode)
           for dtype in (np.float32, np.float64)]
    s32, info = structops.singular_values(ops[0], k=3, dense=False, return_info=True)
    s64 = structops.singular_values(ops[1], k=3, dense=False)
    assert info.certified and info.error_bound < 1e-9 * s64[0]
    np.testing.assert_allclose(s32, s64, rtol=1e-12)
    s, U, V = structops.singular_vectors(ops[0], k=3, dense=False)
    A = ops[1].tosparse().toarray()
    _assert_triplets(A, s, U, V, 1e-12)


def test_reported_bounds_charge_the_rounding_of_the_products():
    """A residual computed with the operator's own products does not see their rounding: on float32 matrices with
    graded columns the error of sigma_max exceeded the residual bound in 2 of 40 (9.1e-8 against 8.2e-8
    sigma_max). The reported bound adds the rounding floor 10 sqrt(n) eps sigma_max: measured errors at most
    0.009 of it."""
    import pylops

    for seed in range(40):
        rng = np.random.default_rng(seed)
        A = (rng.standard_normal((98, 107)) * np.logspace(0, -6, 107)).astype(np.float32)
        ref = np.linalg.svd(A.astype(np.float64), compute_uv=False)
        s, info = structops.singular_values(pylops.MatrixMult(A, dtype=np.float32), k=1, dense=False,
                                            return_info=True)
        assert info.certified and abs(s[0] - ref[0]) <= info.error_bound, (seed, s[0] - ref[0], info)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_the_smallest_values_of_a_square_padded_layer_come_from_its_sparse_lu(mode):
    """A random 8 -> 8 layer (on 24x24, cond 1.4e6 reflect, 1.7e6 replicate): Lanczos on products alone did not
    converge in 300 restarts (refused after 4 to 30 s). The layer's matrix from its taps is factorised by
    SuperLU; two-sided inverse iteration certifies the values (measured errors 3e-17, bounds below 1e-12)."""
    K = np.random.default_rng(0).standard_normal((8, 8, 3, 3)) / np.sqrt(72)
    op = structops.PaddedConvND(K, (14, 14), padding=1, padding_mode=mode)
    ref = np.linalg.svd(op.tosparse().toarray(), compute_uv=False)
    for k in (1, 3):
        s, info = structops.singular_values(op, k=k, which="smallest", dense=False, return_info=True)
        method, bound = info.methods[-1]
        assert info.certified and method.startswith("sparse LU") and bound < 1e-11, info
        np.testing.assert_allclose(s, ref[-k:], rtol=0, atol=bound)


def test_the_sparse_lu_route_hands_singular_layers_to_lanczos():
    """A zero filter leaves an empty row: SuperLU fails on it (printing BLAS argument errors); the route steps
    aside before the factorisation, and Lanczos certifies the zeros."""
    from structops.linalg.normal.smallest import smallest_singular_values_lu

    K = np.random.default_rng(1).standard_normal((4, 4, 3, 3)) / 6
    K[1] = 0
    op = structops.PaddedConvND(K, (12, 12), padding=1, padding_mode="reflect")
    with pytest.raises(np.linalg.LinAlgError, match="empty row"):
        smallest_singular_values_lu(op.tosparse(), k=1)
    s, info = structops.singular_values(op, k=2, which="smallest", dense=False, return_info=True)
    assert info.certified and np.all(s <= info.methods[-1][1]) and info.methods[-1][0].startswith("Lanczos")

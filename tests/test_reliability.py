"""Bad input, aliasing, pickling, size guards, solvers that did not solve, and the command line.

Each test reproduces a failure users hit: an empty batch, a Python list, a
float where an integer belongs, a kernel changed after the operator was built,
an operator sent to a worker process, an allocation of terabytes.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import structops
from structops._backend import to_numpy

from factories import FACTORIES, cases

ROOT = Path(__file__).resolve().parents[1]
CASES = [pytest.param(name, dt, id=f"{name}-{dt.name}") for name, dt in cases()]


def _case(name, dtype, seed=0):
    return FACTORIES[name](np, np.random.default_rng(seed), np.dtype(dtype))


# ---------------------------------------------------------------- 1. empty batches
@pytest.mark.parametrize("name,dtype", CASES)
def test_empty_batch_gives_empty_result(name, dtype):
    op = _case(name, dtype).op
    M, N = op.shape
    Y = op @ np.zeros((N, 0), dtype=dtype)
    X = op.H @ np.zeros((M, 0), dtype=dtype)
    assert Y.shape == (M, 0) and X.shape == (N, 0)
    assert op.matmat(np.zeros((N, 0), dtype=dtype)).shape == (M, 0)
    assert op.rmatmat(np.zeros((M, 0), dtype=dtype)).shape == (N, 0)


# ---------------------------------------------------------------- 2. array-likes
def test_lists_are_accepted_as_numpy_does():
    K = np.random.default_rng(0).standard_normal((2, 1, 3, 3))
    op = structops.Conv2D(K, (4, 4))
    x = np.arange(16.0)
    want = op @ x
    np.testing.assert_allclose(op @ x.tolist(), want)
    np.testing.assert_allclose(op.matvec(x.tolist()), want)
    np.testing.assert_allclose(op.matmat(x[:, None].tolist())[:, 0], want)
    np.testing.assert_allclose(op.rmatvec(want.tolist()), op.rmatvec(want))
    np.testing.assert_allclose(op.jacobian(x.tolist()) @ K.ravel(), want)
    C = structops.Circulant(np.array([4.0, 1.0, 0.0, 1.0]))
    b = [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose(C @ C.solve(b), b)
    T = structops.Toeplitz(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(T @ [1, 0, 0], [1.0, 2.0, 3.0])


def test_non_numeric_input_is_a_type_error():
    op = structops.Conv1D(np.ones((1, 1, 3)), 4)
    with pytest.raises(TypeError, match="numeric"):
        op @ ["a", "b", "c", "d"]
    with pytest.raises(TypeError):
        op.matvec(object())


class _Subclass(np.ndarray):
    """An ndarray subclass (it takes pylops' own matvec)."""


def test_flat_vector_products_keep_pylops_shapes_counts_and_errors():
    """matvec / rmatvec of a flat NumPy vector skip pylops' wrappers: the same shapes, counts and errors."""
    K = np.random.default_rng(0).standard_normal((3, 2, 3, 3))
    op = structops.Conv2D(K, (5, 4), stride=(2, 1))
    M, N = op.shape
    x, y = np.arange(N, dtype=float), np.arange(M, dtype=float)
    dense = op.todense()
    assert op.matvec(x).shape == (M,) and op.rmatvec(y).shape == (N,)
    assert op.matvec(x[:, None]).shape == (M, 1) and op.rmatvec(y[:, None]).shape == (N, 1)
    np.testing.assert_allclose(op.matvec(x), dense @ x, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(op.rmatvec(y), dense.T @ y, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(op.matvec(np.arange(N)), dense @ x, rtol=1e-13, atol=1e-12)  # integers
    assert op.matvec(np.arange(N) > 3).shape == (M,)  # booleans, as pylops takes them
    np.testing.assert_allclose(np.asarray(op.matvec(x.view(_Subclass))), dense @ x, rtol=1e-13, atol=1e-12)
    op.reset_count()
    op.matvec(x), op.matvec(x[:, None]), op.rmatvec(y), op.rmatvec(y), op.rmatvec(y[:, None])
    assert (op.matvec_count, op.rmatvec_count) == (2, 3)
    for bad in (x[:-1], x.reshape(1, N), np.zeros((N, 2))):
        with pytest.raises(ValueError):
            op.matvec(bad)
    with pytest.raises(ValueError):
        op.rmatvec(x if N != M else x[:-1])
    with pytest.raises(TypeError, match="numeric"):
        op.matvec(np.array(["a"] * N))


def test_nn_layers_take_lists():
    from structops.nn import SingleLayer
    from structops.operators.parametric import full

    layer = SingleLayer(full(3, 2), activation="tanh")
    theta = np.linspace(-1, 1, layer.num_params)
    X = np.array([[0.5, -1.0], [2.0, 0.1]])
    np.testing.assert_allclose(layer(theta.tolist(), X.tolist()), layer(theta, X))


# ---------------------------------------------------------------- 3. no silent coercion
K3 = np.ones((1, 1, 3, 3))


@pytest.mark.parametrize("in_shape", [(8.5, 8), "88", (True, True), (8.0, 8), None])
def test_in_shape_must_be_integers(in_shape):
    with pytest.raises((TypeError, ValueError)):
        structops.Conv2D(K3, in_shape)


@pytest.mark.parametrize("padding", [((1.9, 1.9), 1), 1.5, (True, 1), ((1, 2, 3), 1)])
def test_padding_must_be_integers(padding):
    with pytest.raises((TypeError, ValueError), match="padding"):
        structops.Conv2D(K3, (8, 8), padding=padding)


@pytest.mark.parametrize("bad", [1.5, 2.0, True, "2"])
def test_stride_and_dilation_must_be_integers(bad):
    with pytest.raises(TypeError, match="stride"):
        structops.Conv2D(K3, (8, 8), stride=bad)
    with pytest.raises(TypeError, match="dilation"):
        structops.Conv2D(K3, (8, 8), dilation=bad)


def test_conv1d_length_must_be_an_integer():
    with pytest.raises(TypeError):
        structops.Conv1D(np.ones((1, 1, 3)), 8.5)


def test_maxiter_must_be_an_integer():
    op = structops.Conv2D(np.random.default_rng(0).standard_normal((2, 2, 3, 3)), (12, 12))
    with pytest.raises(TypeError, match="maxiter"):
        structops.singular_values(op, 1, maxiter=1.5)
    with pytest.raises(TypeError, match="maxiter"):  # the one integer check of every module
        structops.solvers.regularize_spectrum(np.ones((1, 1, 3, 3)), (8, 8), maxiter=1.5)


def test_sizes_that_overflow_are_errors():
    with pytest.raises(ValueError, match="2\\*\\*62"):
        structops.Conv2D(np.ones((1, 1, 3, 3)), (2**32, 2**32))
    with pytest.raises(ValueError, match="2\\*\\*62"):
        structops.ConvGeometry((1, 1, 1), (2**63,))


# ---------------------------------------------------------------- 4. operators own their parameters
def test_conv_does_not_alias_the_callers_kernel():
    rng = np.random.default_rng(1)
    Kc = rng.standard_normal((3, 2, 3, 3))
    op = structops.Conv2D(Kc, (8, 8), method="fft")
    x = rng.standard_normal(op.shape[1])
    y0, yc0, s0 = op @ x, op @ (x + 1j * x), structops.opnorm(op)
    Kc *= 2
    np.testing.assert_array_equal(op @ x, y0)
    np.testing.assert_array_equal(op @ (x + 1j * x), yc0)
    assert structops.opnorm(op) == s0
    with pytest.raises(ValueError):
        op.kernel[0, 0, 0, 0] = 5.0  # read-only


def test_toeplitz_and_circulant_do_not_alias():
    c = np.array([1.0, 2.0, 3.0])
    T, C = structops.Toeplitz(c), structops.Circulant(c)
    x = np.array([1.0, -1.0, 0.5])
    yT, yC = T @ x, C @ x
    c *= 10
    np.testing.assert_array_equal(T @ x, yT)
    np.testing.assert_array_equal(C @ x, yC)


def _operators_with_fixed_parameters():
    rng = np.random.default_rng(11)
    K = rng.standard_normal((2, 3, 3, 3))
    conv = structops.Conv2D(K, (6, 5))
    yield conv, "kernel"
    yield structops.Conv2D(K, (6, 5), method="fft"), "kernel"
    yield structops.ConvTranspose2D(rng.standard_normal((3, 2, 3, 3)), (4, 5), stride=2), "kernel"
    yield structops.Circulant(rng.standard_normal(5)), "c"
    toeplitz = structops.Toeplitz(rng.standard_normal(5), rng.standard_normal(4))
    yield toeplitz, "c"
    yield toeplitz, "r"
    yield structops.ExtendedConv2D.from_conv(conv), "weights"
    from structops.operators.parametric import ConvModel, ParametricConvND

    model = ConvModel((2, 3, 3, 3), (6, 5))
    yield ParametricConvND(model, rng.standard_normal(model.num_params)), "theta"


@pytest.mark.parametrize("op, name", list(_operators_with_fixed_parameters()),
                         ids=["conv", "conv-fft", "transposed", "circulant", "toeplitz-c", "toeplitz-r", "extended",
                              "parametric"])
def test_a_parameter_cannot_be_reassigned_after_the_products_kept_data_from_it(op, name):
    """Assigning a new kernel to a made layer would reach some products and not others: it raises."""
    x = np.random.default_rng(12).standard_normal(op.shape[1])
    y = op @ x
    old = getattr(op, name)
    with pytest.raises(AttributeError, match=f"{name} is fixed"):
        setattr(op, name, np.zeros_like(old))
    with pytest.raises(AttributeError, match="fixed"):
        delattr(op, name)
    assert getattr(op, name) is old
    np.testing.assert_array_equal(op @ x, y)
    if hasattr(op, "geometry"):  # the geometry too
        with pytest.raises(AttributeError, match="stride is fixed"):
            op.stride = (3, 3)
        with pytest.raises(AttributeError, match="in_shape is fixed"):
            op.in_shape = (9, 9)
    for other in (pickle.loads(pickle.dumps(op)), copy.deepcopy(op), copy.copy(op)):
        np.testing.assert_array_equal(getattr(other, name), old)
        np.testing.assert_array_equal(other @ x, y)


def test_with_kernel_gives_the_same_layer_with_another_kernel():
    rng = np.random.default_rng(2)
    K = rng.standard_normal((2, 3, 3, 3))
    op = structops.Conv2D(K, (9, 7), stride=2, padding=((1, 0), 2), dilation=(1, 2))
    op2 = op.with_kernel(-K)
    assert (op2.stride, op2.padding, op2.dilation, op2.shape) == (op.stride, op.padding, op.dilation, op.shape)
    x = rng.standard_normal(op.shape[1])
    np.testing.assert_allclose(op2 @ x, -(op @ x))
    with pytest.raises(ValueError, match="shape"):
        op.with_kernel(np.ones((2, 3, 5, 5)))


# ---------------------------------------------------------------- 5. pickling, copies, processes
def _apply(args):
    op, x = args
    return op @ x


@pytest.mark.parametrize("name,dtype", CASES)
def test_operators_pickle_and_deepcopy(name, dtype):
    case = _case(name, dtype)
    op = case.op
    x = np.random.default_rng(3).standard_normal(op.shape[1]).astype(dtype)
    y = op @ x
    for other in (pickle.loads(pickle.dumps(op)), copy.deepcopy(op)):
        np.testing.assert_array_equal(other @ x, y)


@pytest.mark.parametrize("shape, groups", [((6, 4, 3, 3), 1), ((4, 6, 3, 2), 1), ((6, 4, 3, 3), 2), ((4, 1, 3, 3), 4)])
def test_a_layer_lays_out_its_kernel_once_and_not_into_its_pickle(monkeypatch, shape, groups):
    """The kernel laid out for the products is made on the first product each way, kept, and not pickled."""
    from structops.operators import conv

    made = []
    real = conv._tap_matrices
    monkeypatch.setattr(conv, "_tap_matrices", lambda *a, **k: made.append(k["adjoint"]) or real(*a, **k))
    rng = np.random.default_rng(8)
    K = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)  # the adjoint's layout is conjugated
    op = structops.Conv2D(K, (7, 6), stride=(2, 1), padding=1, groups=groups, method="direct")
    dense = op.tosparse().toarray()
    x, y = rng.standard_normal(op.shape[1]), rng.standard_normal((op.shape[0], 2))
    for _ in range(3):
        np.testing.assert_allclose(op @ x, dense @ x, rtol=0, atol=1e-13)
        np.testing.assert_allclose(op.H @ y, dense.conj().T @ y, rtol=0, atol=1e-13)
        np.testing.assert_allclose(op.H @ y[:, 0], dense.conj().T @ y[:, 0], rtol=0, atol=1e-13)
    assert sorted(made) == [False, True]
    data = pickle.dumps(op)
    assert len(data) < 4 * K.nbytes + 4096
    for other in (pickle.loads(data), copy.deepcopy(op)):
        np.testing.assert_array_equal(other @ x, op @ x)
    state = op.__getstate__()
    del state["_tap_mats"]  # a layer pickled before the layouts were kept
    old = conv.ConvND.__new__(conv.ConvND)
    old.__setstate__(state)
    np.testing.assert_array_equal(old.H @ y, op.H @ y)


@pytest.mark.parametrize("shape, groups, stride", [((6, 4, 3, 3), 1, 1), ((4, 6, 3, 2), 1, 2), ((6, 4, 3, 3), 2, (2, 1)),
                                                   ((3, 5, 2, 3), 1, 1), ((2, 4, 3, 3), 2, 1)])
@pytest.mark.parametrize("B", [1, 3])
def test_direct_products_in_many_column_chunks_equal_the_matrix(monkeypatch, shape, groups, stride, B):
    """The matrix products of the direct algorithm in chunks of 256 columns, one buffer reused for all of them."""
    from structops.operators import geometry

    monkeypatch.setattr(geometry, "CHUNK_BYTES", 1)
    rng = np.random.default_rng(9)
    K = rng.standard_normal(shape)
    op = structops.Conv2D(K, (50, 41), stride=stride, padding=1, groups=groups, method="direct")
    assert len(list(op.geometry.chunks(B * op.geometry.cell - op.geometry.max_off, 1, 8))) > 2
    S = op.tosparse()  # assembled from the taps, not by the products
    x, y = rng.standard_normal((op.shape[1], B)), rng.standard_normal((op.shape[0], B))
    np.testing.assert_allclose(op @ x, S @ x, rtol=0, atol=1e-13 * abs(S).sum())
    np.testing.assert_allclose(op.H @ y, S.T @ y, rtol=0, atol=1e-13 * abs(S).sum())


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_operators_go_through_multiprocessing(method):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    rng = np.random.default_rng(4)
    ops = [structops.Conv2D(rng.standard_normal((2, 2, 3, 3)), (6, 6), method="fft"),
           structops.Toeplitz(rng.standard_normal(5), rng.standard_normal(4)),
           structops.Circulant(rng.standard_normal((4, 3))),
           structops.ExtendedConv2D.from_conv(structops.Conv2D(rng.standard_normal((1, 1, 3, 3)), (5, 5)))]
    xs = [rng.standard_normal(op.shape[1]) for op in ops]
    with mp.get_context(method).Pool(1) as pool:
        got = pool.map(_apply, list(zip(ops, xs)))
    for op, x, y in zip(ops, xs, got):
        np.testing.assert_array_equal(y, op @ x)


# ---------------------------------------------------------------- 6. mixed precision
def test_float32_parameters_with_float64_data_compute_in_float64():
    rng = np.random.default_rng(5)
    c32 = rng.standard_normal(64).astype(np.float32)
    r32 = rng.standard_normal(48).astype(np.float32)
    x = rng.standard_normal(48)
    for op32, op64, xin in (
        (structops.Toeplitz(c32, r32), structops.Toeplitz(c32.astype(float), r32.astype(float)), x),
        (structops.Circulant(c32), structops.Circulant(c32.astype(float)), x[:1].repeat(64) + np.arange(64.0)),
    ):
        y = op32 @ xin
        assert y.dtype == np.float64
        want = op64 @ xin
        assert np.linalg.norm(y - want) <= 1e-13 * np.linalg.norm(want)


def test_integer_vectors_give_no_warning():
    T = structops.Toeplitz(np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.5]))
    C = structops.Circulant(np.array([1.0, 2.0, 3.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(T @ np.array([1, 2]), T @ np.array([1.0, 2.0]))
        np.testing.assert_allclose(C @ np.array([1, 2, 3]), C @ np.array([1.0, 2.0, 3.0]))
        np.testing.assert_allclose(C.H @ np.array([1, 2, 3]), C.H @ np.array([1.0, 2.0, 3.0]))


# ---------------------------------------------------------------- 7. size guards
def test_opnorm_of_a_huge_layer_refuses_before_allocating():
    op = structops.Conv2D(np.ones((16, 16, 3, 3)), (100000, 100000))
    t0 = time.perf_counter()
    with pytest.raises(structops.MemoryLimitError, match="memory limit"):
        structops.opnorm(op)
    assert time.perf_counter() - t0 < 5


def test_dense_svd_of_a_huge_operator_refuses():
    op = structops.Conv2D(np.ones((1, 1, 3, 3)), (283, 283))  # 80089 x 80089
    with pytest.raises(structops.MemoryLimitError, match="dense SVD"):
        structops.singular_values(op, dense=True)


def test_huge_padding_refuses_in_the_product():
    op = structops.Conv2D(np.ones((2, 2, 3, 3)), (4, 4), padding=10**6)
    with pytest.raises(structops.MemoryLimitError):
        op @ np.ones(op.shape[1])


def test_memory_limit_is_configurable():
    op = structops.Conv2D(np.ones((2, 2, 3, 3)), (64, 64), method="direct")
    x = np.ones(op.shape[1])
    try:
        structops.set_memory_limit(1000)
        assert structops.get_memory_limit() == 1000
        with pytest.raises(structops.MemoryLimitError, match="1000 B"):
            op @ x
    finally:
        structops.set_memory_limit(None)
    assert (op @ x).shape == (op.shape[0],)


# ---------------------------------------------------------------- 8. solvers that cannot solve say so
def _varpro_problem():
    t = np.linspace(0, 1, 30)

    def phi(theta):
        return np.exp(-np.outer(t, np.atleast_1d(theta)))

    y = 2.0 * np.exp(-1.5 * t)
    return phi, y


@pytest.mark.parametrize("opts", [dict(inner_maxiter=0), dict(inner_tol=float("nan")), dict(inner_tol=-1.0),
                                  dict(inner_tol=2.0), dict(tikhonov=float("nan")), dict(inner_maxiter=1.5)])
def test_varpro_rejects_options_it_cannot_honour(opts):
    phi, y = _varpro_problem()
    with pytest.raises((ValueError, TypeError)):
        structops.solvers.varpro(phi, y, np.array([1.0]), **opts)


def _extended_problem():
    from structops.solvers import landscape as LS

    p = LS.toy_problem(n_layers=1, image=(5, 5))
    return p


@pytest.mark.parametrize("opts", [dict(maxiter=-1), dict(lr=-1.0), dict(lam=-1.0), dict(lr=float("nan")),
                                  dict(maxiter=2.5)])
def test_train_extended_rejects_bad_options(opts):
    p = _extended_problem()
    with pytest.raises((ValueError, TypeError)):
        structops.solvers.train_extended(p.ext, p.w_star, p.z, p.y, **opts)
    with pytest.raises((ValueError, TypeError)):
        structops.solvers.train_joint(p.ext, p.w_star, p.z, p.y, **opts)


def test_train_extended_names_the_argument_with_nan():
    p = _extended_problem()
    z = p.z.copy()
    z[0, 0] = np.nan
    with pytest.raises(ValueError, match="^X has NaN"):
        structops.solvers.train_extended(p.ext, p.w_star, z, p.y, maxiter=1)
    y = p.y.copy()
    y[0, 0] = np.nan
    with pytest.raises(ValueError, match="^Y has NaN"):
        structops.solvers.train_extended(p.ext, p.w_star, p.z, y, maxiter=1)


def test_regularize_callback_gets_a_copy_and_monitoring_is_cheap():
    K = np.random.default_rng(6).standard_normal((2, 2, 3, 3)) / 3
    seen = []

    def cb(it, k, f):
        seen.append(k)
        k[...] = 0.0  # must not reach the solver

    res = structops.solvers.regularize_spectrum(K, (8, 8), maxiter=5, callback=cb)
    assert len(seen) == res.nit + 1 and np.abs(res.kernel).max() > 0
    # a large layer: the penalty is O(1) in the image size, and the exact spectrum is not computed by default
    t0 = time.perf_counter()
    big = structops.solvers.regularize_spectrum(K, (256, 256), maxiter=3)
    assert time.perf_counter() - t0 < 10
    assert np.isnan(big.sigma_min) and not big.success and big.nit == 3


# ---------------------------------------------------------------- 9. the command line
def _cli(*argv, timeout=120, cwd=None):
    return subprocess.run([sys.executable, "-m", "structops", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


@pytest.mark.parametrize("argv", [
    ("demo", "--seed", "-1"),
    ("spectrum", "--seed", "-3"),
    ("landscape", "--image", "0"),
    ("landscape", "--layers", "0"),
    ("landscape", "--lam", "nan"),
    ("landscape", "--grid", "0"),
    ("landscape", "--pairs", "0"),
    ("landscape", "--jobs", "0"),
    ("regularize", "--seed", "-1"),
])
def test_bad_arguments_exit_2_with_one_line(argv, tmp_path):
    r = _cli(*argv, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "error:" in r.stderr


@pytest.mark.parametrize("name", ["landscape", "convex", "regularize", "layers"])
def test_a_usage_error_leaves_no_output_folder_behind(name, tmp_path):
    r = _cli(name, "--no-such-option", cwd=tmp_path)
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr
    assert list(tmp_path.iterdir()) == []  # argparse converts a string default before it reports the extra argument


def test_output_folders_are_created_once_the_arguments_are_read(tmp_path):
    from structops.apps.args import parse
    from structops.apps.regularize import build_parser

    args, status = parse(build_parser(), ["--out", str(tmp_path / "a" / "b"), "--quick"])
    assert status is None and (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    args, status = parse(build_parser(), ["--out", str(tmp_path / "file")])
    assert args is None and status == 2


def test_spectrum_checks_the_output_path_first(tmp_path):
    t0 = time.perf_counter()
    r = _cli("spectrum", "--size", "64", "--out", str(tmp_path / "missing" / "s.png"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == "" and time.perf_counter() - t0 < 30


def test_spectrum_of_a_strided_layer_on_an_odd_image(tmp_path):
    r = _cli("spectrum", "--stride", "2", "--size", "33", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "plot           : skipped" in r.stdout and "cond" in r.stdout
    r = _cli("spectrum", "--stride", "2", "--size", "34", cwd=tmp_path)  # the circular surrogate exists
    assert r.returncode == 0, r.stderr
    assert "circular layer" in r.stdout and (tmp_path / "spectrum.png").stat().st_size > 0


def test_too_large_a_layer_is_one_line(tmp_path):
    r = _cli("demo", "--size", "100000", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "memory limit" in r.stderr


# ---------------------------------------------------------------- 10. workers exit with their parent
def test_landscape_workers_exit_with_their_parent(tmp_path):
    pidfile = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import os, time
        from structops.solvers.landscape import parallel_map

        def work(i):
            with open({str(pidfile)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(60)

        parallel_map(work, range(2), 2, None)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and (not pidfile.exists() or len(pidfile.read_text().split()) < 2):
        time.sleep(0.1)
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper has exited
            return f.read().split()[2] != "Z"

    deadline = time.time() + 20
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


# ---------------------------------------------------------------- 11. terms a newcomer can resolve
def test_no_unnamed_sources_in_package_docs_and_help():
    pattern = re.compile(r"\bthe seed\b|\bseed'?s?\b (equation|figure|table|experiment|claim)|seed equations|"
                         r"lecture slides|\bthe seeds\b|extended-conv(olution)? seed", re.I)
    files = [*ROOT.joinpath("structops").rglob("*.py"), *ROOT.joinpath("docs").rglob("*.rst"),
             ROOT / "README.md", *ROOT.joinpath("benchmarks").rglob("*.py"), *ROOT.joinpath("examples").rglob("*.py")]
    bad = []
    for f in files:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if pattern.search(line):
                bad.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- cond goes through the dispatch
def test_cond_uses_a_registered_singular_value_rule():
    class Scaled(structops.StructuredOperator):
        def __init__(self):
            super().__init__(dims=(3,), dimsd=(3,), dtype=np.float64)

        def _forward(self, X):
            return X * np.array([[1.0], [2.0], [4.0]])

        _backward = _forward

    calls = []

    @structops.singular_values.register(Scaled)
    def _(op, k=None, which="largest", **kw):
        calls.append((k, which))
        s = np.array([4.0, 2.0, 1.0])
        return s if k is None else (s[:k] if which == "largest" else s[-k:])

    assert structops.cond(Scaled()) == 4.0 and calls
    assert structops.opnorm(Scaled()) == 4.0


def test_check_operator_catches_a_wrong_adjoint():
    class Wrong(structops.StructuredOperator):
        def __init__(self):
            super().__init__(dims=(3,), dimsd=(2,), dtype=np.float64)

        def _forward(self, X):
            return X[:2] + X[1:]

        def _backward(self, Y):
            return np.vstack([Y, np.zeros((1, Y.shape[1]))])

    with pytest.raises(AssertionError, match="dot test"):
        structops.testing.check_operator(Wrong())


@pytest.mark.parametrize("name,dtype", [c for c in CASES if c.values[0].startswith("conv")][:6])
def test_check_operator_passes_on_the_registry(name, dtype):
    case = _case(name, dtype)
    tol = 1e-4 if np.dtype(dtype) == np.float32 else None
    report = structops.testing.check_operator(case.op, to_numpy(case.dense), rtol=tol, spectra=dtype == np.float64)
    assert {"adjoint", "batched", "empty batch", "dense", "jacobian adjoint", "jacobian taylor"} <= set(report)

"""ConvND products through PyTorch's CPU kernels (``method="torch"``, and float32 under ``"auto"``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import structops
from structops.testing import assert_adjoint, assert_matches_dense

torch = pytest.importorskip("torch")


@st.composite
def configs(draw):
    D = draw(st.sampled_from([1, 2, 3]))
    g = draw(st.integers(1, 2))
    k = tuple(draw(st.integers(1, 3)) for _ in range(D))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(D))
    e = [d * (kk - 1) + 1 for kk, d in zip(k, dil)]
    nmax = {1: 9, 2: 6, 3: 4}[D]
    in_shape = tuple(draw(st.integers(ea, ea + nmax)) for ea in e)
    circular = draw(st.booleans()) and all(ea % 2 for ea in e)
    if circular:
        padding, stride = "circular", (1,) * D
    else:
        padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(D))
        stride = tuple(draw(st.integers(1, 3)) for _ in range(D))
    return dict(K=(g * draw(st.integers(1, 2)), draw(st.integers(1, 2))) + k, in_shape=in_shape, g=g,
                padding=padding, stride=stride, dilation=dil, seed=draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=60, deadline=None)
@given(cfg=configs())
def test_torch_products_equal_the_direct_ones(cfg):
    rng = np.random.default_rng(cfg["seed"])
    K = rng.standard_normal(cfg["K"])
    kw = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"], groups=cfg["g"])
    op = structops.ConvND(K, cfg["in_shape"], method="torch", **kw)
    ref = structops.ConvND(K, cfg["in_shape"], method="direct", **kw)
    X = rng.standard_normal((op.shape[1], 3))
    Y = rng.standard_normal((op.shape[0], 3))
    np.testing.assert_allclose(op @ X, ref @ X, rtol=0, atol=1e-12 * max(1, np.abs(ref @ X).max()))
    np.testing.assert_allclose(op.H @ Y, ref.H @ Y, rtol=0, atol=1e-12 * max(1, np.abs(ref.H @ Y).max()))
    if ref.tosparse().nnz:
        assert_adjoint(op, rng=rng)
        assert_matches_dense(op, ref.tosparse().toarray(), rng=rng)


def test_float32_auto_uses_torch_and_agrees():
    rng = np.random.default_rng(1)
    K = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    op = structops.Conv2D(K, (12, 11), stride=(2, 1))
    assert op._uses_torch(np.zeros((1, 1), np.float32), np.dtype(np.float32))
    ref = structops.Conv2D(K.astype(np.float64), (12, 11), stride=(2, 1), method="direct")
    X = rng.standard_normal((op.shape[1], 4)).astype(np.float32)
    Y = rng.standard_normal((op.shape[0], 4)).astype(np.float32)
    assert (op @ X).dtype == np.float32 and (op.H @ Y).dtype == np.float32
    np.testing.assert_allclose(op @ X, ref @ X.astype(np.float64), rtol=0, atol=1e-5)
    np.testing.assert_allclose(op.H @ Y, ref.H @ Y.astype(np.float64), rtol=0, atol=1e-5)
    assert (op @ np.zeros((op.shape[1], 0), np.float32)).shape == (op.shape[0], 0)
    # single vectors take the direct route to torch: the same values, shapes and dtypes
    x, y = X[:, 1].copy(), Y[:, 2].copy()
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    for got, want in ((op.matvec(x), ref.matvec(x64)), (op.rmatvec(y), ref.rmatvec(y64)), (op @ x, ref @ x64)):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    xs, ys = X[:, 1], Y[:, 2]  # strided views, and read-only ones
    ro = x.copy()
    ro.flags.writeable = False
    for got, want in ((op.matvec(xs), ref.matvec(x64)), (op.rmatvec(ys), ref.rmatvec(y64)), (op @ ro, ref @ x64)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    x16 = x.astype(np.float16)  # a smaller float: promoted to the kernel's float32 on the way in
    assert op.matvec(x16).dtype == np.float32
    with pytest.raises(ValueError):
        op.matvec(x[:-1])
    # float64 products keep the library's algorithms
    assert not op.with_kernel(K.astype(np.float64))._uses_torch(np.zeros((1, 1)), np.dtype(np.float64))


def test_torch_method_refuses_complex_kernels():
    with pytest.raises(ValueError, match="real NumPy"):
        structops.Conv2D(np.ones((1, 1, 3, 3)) * 1j, (5, 5), method="torch")


def test_a_used_float32_layer_pickles_without_its_tensor_cache():
    import pickle

    K = np.random.default_rng(2).standard_normal((3, 2, 3, 3)).astype(np.float32)
    op = structops.Conv2D(K, (6, 6))
    x = np.ones(op.shape[1], np.float32)
    y = op @ x
    op2 = pickle.loads(pickle.dumps(op))
    assert "_torch_weights" not in op2.__dict__
    np.testing.assert_array_equal(op2 @ x, y)


@pytest.mark.parametrize("padding, lean", [(1, (True, True)), (((0, 2), (1, 0)), (False, False)),
                                            ("circular", (False, False)), (0, (True, True))])
def test_single_float32_vectors_go_straight_to_torch_and_agree_with_the_batch_path(monkeypatch, padding, lean):
    """matvec, rmatvec, ``@`` and ``dot`` of one flat vector call torch_kernels.vector (its layout worked out
    once per dtype and direction) where torch needs no padding or border of its own, else the general path."""
    import pickle
    import warnings

    rng = np.random.default_rng(12)
    K = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    op = structops.Conv2D(K, (7, 6), padding=padding)
    ref = structops.Conv2D(K, (7, 6), padding=padding, method="direct")
    calls = _spy_torch(monkeypatch)
    x, y = rng.standard_normal(op.shape[1]).astype(np.float32), rng.standard_normal(op.shape[0]).astype(np.float32)
    want_x, want_y = op @ x[:, None], op.H @ y[:, None]  # the batch path, as one column
    calls.clear()
    counts = op.matvec_count, op.rmatvec_count
    for got in (op.matvec(x), op @ x, op.dot(x), op._matvec(x)):
        assert got.dtype == np.float32 and got.shape == (op.shape[0],)
        np.testing.assert_array_equal(got, want_x[:, 0])
    for got in (op.rmatvec(y), op.H @ y, op._rmatvec(y)):
        assert got.dtype == np.float32 and got.shape == (op.shape[1],)
        np.testing.assert_array_equal(got, want_y[:, 0])
    # counted as pylops counts them (op.H @ y on the adjoint operator, _matvec not at all)
    assert (op.matvec_count, op.rmatvec_count) == (counts[0] + 3, counts[1] + 1)
    np.testing.assert_allclose(want_x[:, 0], ref @ x, rtol=0, atol=1e-5 * np.abs(ref @ x).max())
    assert calls == ["forward"] * 4 + ["adjoint"] * 3
    assert [op._vector_call(v, a) is not None for v, a in ((x, False), (y, True))] == list(lean)
    # a read-only vector: the same numbers, no warning from torch
    ro = x.copy()
    ro.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(op.matvec(ro), want_x[:, 0])
    # a reversed view (negative stride, which torch cannot view): copied
    np.testing.assert_array_equal(op.matvec(x[::-1].copy()[::-1]), want_x[:, 0])
    np.testing.assert_array_equal(op.rmatvec(y[::-1].copy()[::-1]), want_y[:, 0])
    # another dtype, a wrong length, a 2-D column: not the vector path
    assert op._vector_call(x.astype(np.float64)) is None
    np.testing.assert_allclose(op.matvec(x.astype(np.float64)), ref @ x.astype(np.float64), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        op.matvec(x[:-1])
    assert op._vector_call(x[:-1]) is None and op._vector_call(x[:, None]) is None
    # the calls hold torch tensors: never pickled, worked out again after loading
    op2 = pickle.loads(pickle.dumps(op))
    assert op2._vector_calls == ({}, {})
    np.testing.assert_array_equal(op2.matvec(x), want_x[:, 0])
    np.testing.assert_array_equal(op2.rmatvec(y), want_y[:, 0])


def test_a_complex_layer_s_real_vectors_never_take_torch_s_vector_path():
    """``np.dtype(...) == None`` is True (None reads as float64): the route check must not compare that way."""
    rng = np.random.default_rng(13)
    K = rng.standard_normal((3, 2, 3, 3)) * (1 + 1j)
    op = structops.Conv2D(K, (5, 5), method="direct")
    x = rng.standard_normal(op.shape[1])
    assert op._vector_call(x) is None
    np.testing.assert_allclose(op.matvec(x), op.tosparse() @ x, rtol=0, atol=1e-12)


def test_a_float32_layer_unpickled_where_torch_is_missing_keeps_the_library_s_kernels(monkeypatch):
    import pickle

    from structops.operators import torch_kernels

    K = np.random.default_rng(3).standard_normal((3, 2, 3, 3)).astype(np.float32)
    op = structops.Conv2D(K, (6, 6))
    x = np.random.default_rng(4).standard_normal((op.shape[1], 2)).astype(np.float32)
    y = op @ x
    data = pickle.dumps(op)
    assert pickle.loads(pickle.dumps(structops.Conv2D(K, (6, 6), method="torch"))).method == "torch"
    monkeypatch.setattr(torch_kernels, "available", lambda: False)  # a worker without torch
    op2 = pickle.loads(data)
    assert not op2._uses_torch(x, np.dtype(np.float32))
    np.testing.assert_allclose(op2 @ x, y, rtol=0, atol=1e-5 * np.abs(y).max())
    exact = structops.Conv2D(K.astype(np.float64), (6, 6), method="direct") @ x.astype(np.float64)
    np.testing.assert_allclose(op2 @ x, exact, rtol=0, atol=1e-5 * np.abs(y).max())


@pytest.mark.parametrize("shape, g, padding", [((6, 4, 3, 3), 1, "same"), ((6, 4, 3), 2, ((2, 0),)),
                                               ((4, 2, 3, 3), 1, "circular"), ((4, 4, 3, 3), 4, "same")])
def test_batches_in_any_memory_layout_agree(shape, g, padding):
    """C-ordered, Fortran-ordered, strided and reversed batches and vectors, one column and many, on both
    torch routes (torch views no negative stride: a reversed input is copied)."""
    from structops.operators import torch_kernels

    rng = np.random.default_rng(3)
    K = rng.standard_normal(shape)
    in_shape = (7, 6)[: len(shape) - 2]
    kw = dict(padding=padding, groups=g)
    op = structops.ConvND(K, in_shape, method="torch", **kw)
    ref = structops.ConvND(K, in_shape, method="direct", **kw)
    assert torch_kernels.batch_as_axis(op.geometry, 5) == (shape[1] > 1)
    X = rng.standard_normal((op.shape[1], 10))
    Y = rng.standard_normal((op.shape[0], 10))
    for x, y in ((X, Y), (np.asfortranarray(X), np.asfortranarray(Y)), (X[:, ::2], Y[:, ::2]), (X[:, :1], Y[:, :1]),
                 (X[::-1], Y[::-1]), (X[::-1, ::-3], Y[::-1, ::-3]), (X[::-1, :1], Y[::-1, :1])):
        np.testing.assert_allclose(op @ x, ref @ x, rtol=0, atol=1e-12 * np.abs(ref @ x).max())
        np.testing.assert_allclose(op.H @ y, ref.H @ y, rtol=0, atol=1e-12 * np.abs(ref.H @ y).max())
    x, y = X[:, 0], Y[:, 0]
    xx, yy = np.concatenate([x, x]), np.concatenate([y, y])
    vectors = [(x, y), (x[::-1], y[::-1]), (xx[::2], yy[::2]), (xx[::-2], yy[::-2])]
    for x, y in vectors + [(x.astype(np.float32), y.astype(np.float32)) for x, y in vectors]:
        for got, want in ((op @ x, ref @ x), (op.matvec(x), ref @ x), (op.H @ y, ref.H @ y), (op.rmatvec(y), ref.H @ y)):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_depthwise_float32_auto_sends_single_vectors_to_torch_and_keeps_batches():
    rng = np.random.default_rng(4)
    K = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    op = structops.Conv2D(K, (9, 8), groups=6)
    ref = structops.Conv2D(K.astype(np.float64), (9, 8), groups=6, method="direct")
    x = rng.standard_normal(op.shape[1]).astype(np.float32)
    X = rng.standard_normal((op.shape[1], 3)).astype(np.float32)
    assert op._torch_dtype(x[:, None]) == np.float32 and op._torch_dtype(X) is None
    for v in (x, X):
        np.testing.assert_allclose(op @ v, ref @ v.astype(np.float64), rtol=0, atol=1e-5)
        w = op @ v
        np.testing.assert_allclose(op.H @ w, ref.H @ w.astype(np.float64), rtol=0, atol=1e-4)


@pytest.mark.parametrize("shape, g, padding, dilation", [
    ((6, 4, 3, 3), 1, 1, 1), ((6, 2, 3, 5), 2, (1, 2), 1), ((4, 3, 3, 3), 1, 2, 2), ((6, 4, 2, 3), 2, (0, 1), 1),
    ((4, 4, 5), 2, 1, 2), ((3, 2, 1, 1), 1, 0, 1), ((1, 2, 1), 1, 0, 1)])
@pytest.mark.parametrize("batch", [1, 4])
def test_adjoint_as_a_flipped_convolution(shape, g, padding, dilation, batch):
    """Stride 1, zero padding with lo = hi <= e - 1: the adjoint is a convolution with the flipped kernel."""
    from structops.operators import torch_kernels

    rng = np.random.default_rng(len(shape) + g)
    K = rng.standard_normal(shape)
    in_shape = (7, 6)[: len(shape) - 2]
    op = structops.ConvND(K, in_shape, padding=padding, dilation=dilation, groups=g, method="torch")
    axis = torch_kernels.batch_as_axis(op.geometry, batch)
    assert torch_kernels.adjoint_is_a_conv(op.geometry) and axis == (batch > 1 and shape[1] > 1)
    conv = torch_kernels._adjoint_call(op.geometry, axis, np.dtype(np.float64))[0]
    assert conv.__name__ == f"conv{len(shape) - 2 + axis}d"
    ref = structops.ConvND(K, in_shape, padding=padding, dilation=dilation, groups=g, method="direct")
    Y = rng.standard_normal((op.shape[0], batch))
    if batch == 1:
        Y = Y[:, 0]
    np.testing.assert_allclose(op.H @ Y, ref.H @ Y, rtol=0, atol=1e-12 * np.abs(ref.H @ Y).max())
    op32 = structops.ConvND(K.astype(np.float32), in_shape, padding=padding, dilation=dilation, groups=g)
    got = op32.H @ Y.astype(np.float32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref.H @ Y, rtol=0, atol=1e-5 * np.abs(ref.H @ Y).max())
    assert_adjoint(op, rng=rng)


def test_the_jacobian_benchmark_agrees_with_torch_s_weight_gradient():
    """bench_conv's section (f) on a small depthwise layer: both products checked against torch, then timed."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_conv

    bench_conv.ROWS.clear()
    bench_conv.FAILURES.clear()
    rng = np.random.default_rng(0)
    for dt in (np.float64, np.float32):
        bench_conv.jacobian_case("(f) test", rng.standard_normal((6, 1, 3, 3)).astype(dt), 7, 3, 1, 0, torch, rng, 6)
    assert bench_conv.FAILURES == []
    rows = [(r["op"], r["impl"]) for r in bench_conv.ROWS]
    assert rows.count(("J^T W", "torch grad.conv2d_weight (CPU)")) == 2 and len(rows) == 8
    assert all(r["t"] > 0 for r in bench_conv.ROWS)


def _spy_torch(monkeypatch):
    """Count the products torch_kernels computes."""
    from structops.operators import torch_kernels

    calls, direction = [], {}
    for name in ("forward", "adjoint"):
        real = getattr(torch_kernels, name)
        monkeypatch.setattr(torch_kernels, name, lambda layer, X, real=real, name=name: calls.append(name) or real(layer, X))
    # a single vector's product: vector(call, x), with the call worked out once by vector_call
    real_call, real_vector = torch_kernels.vector_call, torch_kernels.vector

    def vector_call(layer, dtype, adjoint=False):
        call = real_call(layer, dtype, adjoint)
        direction[id(call)] = "adjoint" if adjoint else "forward"
        return call

    def vector(call, x):
        calls.append(direction[id(call)])
        return real_vector(call, x)

    monkeypatch.setattr(torch_kernels, "vector_call", vector_call)
    monkeypatch.setattr(torch_kernels, "vector", vector)
    return calls


@pytest.mark.parametrize("kw, in_shape", [
    (dict(), (6, 5)), (dict(stride=2), (7, 6)), (dict(stride=(2, 1), padding=((0, 2), (1, 0))), (7, 6)),
    (dict(padding="circular"), (56, 48)), (dict(dilation=2, padding=2), (7, 7)), (dict(padding=0), (3, 4))])
def test_float64_single_vectors_of_wide_layers_go_to_torch_and_agree(monkeypatch, kw, in_shape):
    rng = np.random.default_rng(5)
    K = rng.standard_normal((32, 33, 3, 3))
    op = structops.Conv2D(K, in_shape, **kw)
    ref = structops.Conv2D(K, in_shape, method="direct", **kw)
    calls = _spy_torch(monkeypatch)
    x, y = rng.standard_normal(op.shape[1]), rng.standard_normal(op.shape[0])
    for got, want in ((op.matvec(x), ref.matvec(x)), (op.rmatvec(y), ref.rmatvec(y)), (op @ x, ref @ x),
                      (op.H @ y, ref.H @ y), (op @ x[:, None], ref @ x[:, None])):
        assert got.dtype == np.float64 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())
    assert len(calls) == 5
    # batches keep the library's algorithms (float64 batches measured faster there)
    X = rng.standard_normal((op.shape[1], 3))
    np.testing.assert_array_equal(op @ X, ref @ X)
    assert len(calls) == 5
    # a float32 vector on a float64 layer is a float64 product; a float32 layer with a float64 vector too
    np.testing.assert_allclose(op @ x.astype(np.float32), ref @ x.astype(np.float32), rtol=0, atol=1e-12 * np.abs(ref @ x).max())
    op32 = structops.Conv2D(K.astype(np.float32), in_shape, **kw)
    ref32 = structops.Conv2D(K.astype(np.float32), in_shape, method="direct", **kw)
    assert (op32 @ x).dtype == np.float64
    np.testing.assert_allclose(op32 @ x, ref32 @ x, rtol=0, atol=1e-12 * np.abs(ref32 @ x).max())
    assert len(calls) == 8
    assert_adjoint(op, rng=rng)


@pytest.mark.parametrize("shape, in_shape, kw, routes, flipped", [
    ((64, 64, 3, 3), (56, 56), {}, (True, True), True),  # a ResNet-18 layer
    ((64, 3, 7, 7), (224, 224), dict(stride=2, padding=3), (True, True), False),  # its first layer
    ((16, 96, 1, 1), (112, 112), dict(padding=0), (True, True), True),  # 1x1: nothing unfolded
    ((16, 16, 3, 3), (32, 32), {}, (True, True), True),  # few unfolded entries
    ((16, 16, 3, 3), (64, 64), {}, (False, False), True),  # many, for 16 outputs
    ((1, 64, 3, 3), (64, 64), {}, (False, True), True),  # one output channel: the adjoint has 64
    ((64, 3, 3, 3), (64, 64), {}, (True, True), False),  # the transposed adjoint unfolds 3 channels
    ((64, 16, 3, 3), (64, 64), {}, (True, True), False),
    ((32, 16, 3, 3), (32, 32), dict(groups=2), (True, True), True),  # grouped
    ((64, 1, 3, 3), (64, 64), dict(groups=64), (False, False), True),  # depthwise stays here
])
def test_float64_single_vectors_go_where_torch_s_unfolding_pays(monkeypatch, shape, in_shape, kw, routes, flipped):
    """The cost model of torch_kernels.float64_vectors_faster, per direction, and products that agree."""
    from structops.operators import torch_kernels

    rng = np.random.default_rng(6)
    K = rng.standard_normal(shape)
    op = structops.Conv2D(K, in_shape, **kw)
    assert op._torch_vectors == routes
    assert torch_kernels.flipped_adjoint(op.geometry, np.float64) == flipped
    calls = _spy_torch(monkeypatch)
    ref = structops.Conv2D(K, in_shape, method="direct", **kw)
    x, y = rng.standard_normal(op.shape[1]), rng.standard_normal(op.shape[0])
    np.testing.assert_allclose(op @ x, ref @ x, rtol=0, atol=1e-12 * np.abs(ref @ x).max())
    np.testing.assert_allclose(op.H @ y, ref.H @ y, rtol=0, atol=1e-12 * np.abs(ref.H @ y).max())
    assert calls == [name for name, r in zip(("forward", "adjoint"), routes) if r]


def test_float64_vectors_stay_with_the_library_where_it_measured_faster():
    rng = np.random.default_rng(6)
    routed = lambda op: any(op._torch_vectors)  # noqa: E731
    c = 32
    assert routed(structops.Conv2D(rng.standard_normal((c, c, 3, 3)), (6, 6)))
    assert not routed(structops.Conv2D(rng.standard_normal((2 * c, 1, 3, 3)), (6, 6), groups=2 * c))  # depthwise
    assert not routed(structops.Conv1D(rng.standard_normal((c, c, 3)), 9))
    assert not routed(structops.Conv3D(rng.standard_normal((c, c, 1, 1, 1)), (2, 2, 2)))
    assert not routed(structops.Conv2D(rng.standard_normal((c, c, 3, 3)), (6, 6), method="direct"))
    assert not routed(structops.Conv2D(rng.standard_normal((c, c, 3, 3)), (6, 6), method="fft"))
    wide = structops.Conv2D(rng.standard_normal((c, c, 3, 3)) * (1 + 1j), (6, 6))
    assert wide._torch_dtype(np.zeros((wide.shape[1], 1))) is None  # complex products
    assert wide._torch_dtype(np.zeros((wide.shape[0], 1)), adjoint=True) is None


def test_a_float64_wide_layer_pickles_with_its_route(monkeypatch):
    import pickle

    from structops.operators import torch_kernels

    rng = np.random.default_rng(7)
    c = 32
    op = structops.Conv2D(rng.standard_normal((c, c, 3, 3)), (5, 5))
    x = rng.standard_normal(op.shape[1])
    y = op @ x
    op2 = pickle.loads(pickle.dumps(op))
    assert op2._torch_dtype(x[:, None]) == np.float64
    np.testing.assert_array_equal(op2 @ x, y)
    monkeypatch.setattr(torch_kernels, "available", lambda: False)  # a worker without torch
    op3 = pickle.loads(pickle.dumps(op))
    assert op3._torch_dtype(x[:, None]) is None
    np.testing.assert_allclose(op3 @ x, y, rtol=0, atol=1e-12 * np.abs(y).max())


@pytest.mark.parametrize("method", ["auto", "torch"])
def test_a_layer_pickled_by_an_older_version_works_out_its_torch_routes_again(method):
    """Routes and their per-dtype cache kept in an older layout (a bool, 2-tuples) are rebuilt on loading."""
    from structops.operators import conv

    rng = np.random.default_rng(8)
    K = rng.standard_normal((32, 32, 3, 3))
    op = structops.Conv2D(K, (6, 5), method=method)
    x = rng.standard_normal(op.shape[1])
    y = op @ x
    state = op.__getstate__()
    assert state["_torch_for"] == {}
    state["_torch_vectors"] = True  # as an older version kept them
    state["_torch_for"] = {np.dtype(np.float64): (np.dtype(np.float64), False)}
    del state["_vector_calls"]  # an older version had none
    old = conv.ConvND.__new__(conv.ConvND)
    old.__setstate__(state)
    assert old._torch_vectors == op._torch_vectors and old._torch_for == {}
    np.testing.assert_allclose(old @ x, y, rtol=0, atol=1e-12 * np.abs(y).max())
    np.testing.assert_allclose(old.H @ y, op.H @ y, rtol=0, atol=1e-12 * np.abs(op.H @ y).max())

"""Worker threads over blocks of channel groups (structops._threads)."""

from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np
import pytest

import structops
from structops import _threads
from structops.operators import conv as conv_module


@pytest.fixture
def split_always(monkeypatch):
    """Every product with several groups splits, whatever its size; returns a setter of the thread count."""
    monkeypatch.setattr(_threads, "MIN_BLOCK_WORK", 1)

    def threads(n):
        monkeypatch.setattr(_threads, "_threads", n)

    return threads


@pytest.mark.parametrize("n, work, threads, blocks", [
    (10, 100, 3, 3), (2, 100, 4, 2), (7, 2, 4, 2), (5, 0, 4, 1), (1, 100, 4, 1), (9, 100, 1, 1)])
def test_blocks_cover_the_range_once_on_their_own_threads(split_always, n, work, threads, blocks):
    split_always(threads)
    seen, lock = [], threading.Lock()

    def fn(i0, i1):
        with lock:
            seen.append((i0, i1, threading.current_thread().name))

    before = threading.active_count()
    _threads.run_blocks(n, _threads.block_count(n, work), fn)
    assert threading.active_count() == before  # no worker outlives the call
    seen.sort()
    assert len(seen) == blocks
    assert [s[0] for s in seen] == [0] + [s[1] for s in seen[:-1]] and seen[-1][1] == n
    assert all(i1 > i0 for i0, i1, _ in seen)
    assert len({name for *_, name in seen}) == blocks  # one thread each, the caller's among them
    assert threading.current_thread().name in {name for *_, name in seen}


def test_small_work_stays_on_the_calling_thread(monkeypatch):
    monkeypatch.setattr(_threads, "_threads", 4)
    names = []
    assert _threads.block_count(64, 3 * _threads.MIN_BLOCK_WORK - 1) == 2  # two whole blocks' worth of work
    _threads.run_blocks(64, 2, lambda i0, i1: names.append((i0, i1)))
    assert sorted(names) == [(0, 32), (32, 64)]
    assert _threads.block_count(64, _threads.MIN_BLOCK_WORK - 1) == 1
    names.clear()
    _threads.run_blocks(64, 1, lambda i0, i1: names.append((i0, i1)))
    assert names == [(0, 64)]
    monkeypatch.setattr(_threads, "_threads", 1)
    assert _threads.block_count(64, 100 * _threads.MIN_BLOCK_WORK) == 1


def test_an_error_in_a_block_is_raised_after_every_block_has_finished(split_always):
    split_always(4)
    done = []
    release = threading.Event()

    def fn(i0, i1):
        if i0 == 0:
            raise ArithmeticError("first block")
        release.wait(5)
        done.append(i0)

    timer = threading.Timer(0.2, release.set)
    timer.start()
    with pytest.raises(ArithmeticError, match="first block"):
        _threads.run_blocks(8, 4, fn)
    assert sorted(done) == [2, 4, 6]  # the other blocks had finished when the error came out
    timer.join()


def test_blocks_inside_a_block_run_on_its_thread(split_always):
    split_always(3)
    inner = []

    def fn(i0, i1):
        assert _threads.block_count(6, 6) == 1
        inner.append(threading.current_thread().name)

    _threads.run_blocks(3, _threads.block_count(3, 3), fn)
    assert len(set(inner)) == 3
    assert _threads.block_count(6, 6) == 3  # and on the calling thread again after the blocks


def test_thread_count_setting(monkeypatch):
    monkeypatch.setattr(_threads, "_threads", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert structops.get_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert structops.get_threads() >= 1
    assert structops.set_threads(2) is None
    assert structops.get_threads() == 2
    assert structops.set_threads(5) == 2 and structops.set_threads(2) == 5
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises((ValueError, TypeError)):
            structops.set_threads(bad)
    assert structops.get_threads() == 2
    structops.set_threads(None)
    assert _threads._threads is None


def _layers():
    rng = np.random.default_rng(3)
    yield structops.Conv2D(rng.standard_normal((16, 1, 3, 3)), (12, 11), padding=1, groups=16, method="direct")
    yield structops.Conv2D(rng.standard_normal((12, 2, 3, 2)), (9, 10), stride=2, dilation=(2, 1), padding=((2, 2), (0, 1)),
                           groups=4, method="direct")
    yield structops.Conv2D(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), (10, 10), padding="circular",
                           groups=4, method="direct")
    yield structops.Conv1D(rng.standard_normal((6, 1, 5)) + 1j * rng.standard_normal((6, 1, 5)), (17,),
                           padding=((1, 3),), groups=6, method="direct")
    yield structops.ConvTranspose2D(rng.standard_normal((6, 2, 3, 3)), (7, 8), stride=2, padding=1,
                                    output_padding=1, groups=3, method="direct")


def _ungrouped_layers():
    """Ungrouped layers: split over their output channels (forward) and input channels (adjoint)."""
    rng = np.random.default_rng(4)
    yield structops.Conv2D(rng.standard_normal((7, 5, 3, 3)), (9, 8), stride=(2, 1), dilation=(1, 2),
                           padding=((1, 2), (2, 1)), method="direct")
    yield structops.Conv2D(rng.standard_normal((9, 3, 5, 5)).astype(np.float32), (11, 10), stride=2, padding=2,
                           method="direct")  # fewer inputs than outputs
    yield structops.Conv1D(rng.standard_normal((4, 6, 3)) + 1j * rng.standard_normal((4, 6, 3)), (13,),
                           padding="circular", method="direct")
    yield structops.ConvTranspose2D(rng.standard_normal((4, 6, 3, 3)), (6, 7), stride=2, padding=1,
                                    output_padding=(1, 0), method="direct")


@pytest.mark.parametrize("layer", list(_layers()) + list(_ungrouped_layers()),
                         ids=["depthwise", "grouped-strided-dilated", "float32-circular", "complex-1d", "transposed",
                              "ungrouped-strided-dilated", "ungrouped-float32-wide", "ungrouped-complex-circular",
                              "ungrouped-transposed"])
@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("pass_bytes", [None, 1], ids=["one-pass-a-thread", "one-group-a-pass"])
def test_threaded_products_equal_the_serial_ones_and_the_matrix(split_always, monkeypatch, layer, B, pass_bytes):
    calls = []
    real = conv_module.run_blocks

    def spy(n, blocks, fn):
        def block(i0, i1):
            calls.append((i0, i1, threading.current_thread().name))
            fn(i0, i1)
        real(n, blocks, block)

    monkeypatch.setattr(conv_module, "run_blocks", spy)
    rng = np.random.default_rng(B)
    X = rng.standard_normal((layer.shape[1], B)).astype(layer.dtype)
    Y = rng.standard_normal((layer.shape[0], B)).astype(layer.dtype)
    split_always(1)
    want = layer @ X, layer.H @ Y
    assert calls == []  # one pass on one thread: the product as it was
    if pass_bytes is not None:
        monkeypatch.setattr(conv_module, "GROUP_PASS_BYTES", pass_bytes)
        got = layer @ X, layer.H @ Y
        # passes on one thread (an ungrouped layer's channels share one padded copy: one pass)
        assert {name for *_, name in calls} == ({threading.current_thread().name} if layer.groups > 1 else set())
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
        calls.clear()
    split_always(3)
    got = layer @ X, layer.H @ Y
    assert len({name for *_, name in calls}) == 3  # both products were split over three threads
    A = layer.todense()
    atol = 1e-5 if layer.dtype == np.float32 else 1e-12
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.flags.c_contiguous
        if layer.groups > 1:
            np.testing.assert_array_equal(g, w)  # the same arithmetic for every entry, in the same order
        else:  # the same sums, in matrix products of fewer rows (BLAS may round them otherwise)
            np.testing.assert_allclose(g, w, rtol=0, atol=atol / 10 * np.abs(A).sum())
    np.testing.assert_allclose(got[0], A @ X, rtol=0, atol=atol * np.abs(A).sum())
    np.testing.assert_allclose(got[1], A.conj().T @ Y, rtol=0, atol=atol * np.abs(A).sum())


@pytest.mark.parametrize("layer", list(_layers()),
                         ids=["depthwise", "grouped-strided-dilated", "float32-circular", "complex-1d", "transposed"])
@pytest.mark.parametrize("B, nd", [(1, 1), (5, 1), (4, 3)])
def test_threaded_kernel_jacobians_equal_the_serial_ones_and_the_layer(split_always, monkeypatch, layer, B, nd):
    """The kernel Jacobian's products (directions stacked as channels) in passes and on threads."""
    names = set()
    real = conv_module.run_blocks

    def spy(n, blocks, fn):
        def block(i0, i1):
            names.add(threading.current_thread().name)
            fn(i0, i1)
        real(n, blocks, block)

    monkeypatch.setattr(conv_module, "run_blocks", spy)
    rng = np.random.default_rng(10 * B + nd)
    X = rng.standard_normal((layer.shape[1], B)).astype(layer.dtype)
    K = layer.kernel
    dK = rng.standard_normal((K.size, nd)).astype(layer.dtype)
    split_always(1)
    J = layer.jacobian(X)
    W = rng.standard_normal((J.shape[0], nd)).astype(layer.dtype)
    want = J.matmat(dK), J.rmatmat(W)
    monkeypatch.setattr(conv_module, "GROUP_PASS_BYTES", 1)  # one group a pass
    passes = J.matmat(dK), J.rmatmat(W)
    split_always(3)
    names.clear()
    threaded = J.matmat(dK), J.rmatmat(W)
    assert len(names) == 3
    for got in (passes, threaded):
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)
    # independently: J dK = K(dK) x, the layer's own product with the direction as its kernel
    scale = np.abs(X).sum() * np.abs(dK).sum()
    atol = (1e-5 if layer.dtype == np.float32 else 1e-12) * scale
    for j in range(nd):
        direct = layer.with_kernel(dK[:, j].reshape(K.shape)) @ X
        np.testing.assert_allclose(threaded[0][:, j], direct.reshape(-1), rtol=0, atol=atol)
    lhs = np.vdot(W, threaded[0])  # the adjoint: <J dK, W> = <dK, J^H W>
    rhs = np.vdot(threaded[1], dK)
    assert abs(lhs - rhs) <= atol * np.abs(W).sum()


def _product_in_child(queue):
    rng = np.random.default_rng(0)
    op = structops.Conv2D(rng.standard_normal((8, 1, 3, 3)), (9, 9), padding=1, groups=8, method="direct")
    queue.put(op @ rng.standard_normal((op.shape[1], 3)))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_a_forked_child_splits_products_too(split_always):
    split_always(2)
    rng = np.random.default_rng(0)
    op = structops.Conv2D(rng.standard_normal((8, 1, 3, 3)), (9, 9), padding=1, groups=8, method="direct")
    want = op @ rng.standard_normal((op.shape[1], 3))  # threads were started and joined in the parent
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_product_in_child, args=(queue,))
    child.start()
    got = queue.get(timeout=60)
    child.join(60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, want)


def test_the_memory_limit_covers_the_output_of_a_product_in_passes(monkeypatch):
    monkeypatch.setattr(conv_module, "GROUP_PASS_BYTES", 1)  # every pass small, the output not
    op = structops.Conv2D(np.ones((64, 1, 3, 3)), (16, 16), padding=1, groups=64, method="direct")
    X = np.ones((op.shape[1], 64))
    old = structops.get_memory_limit()
    structops.set_memory_limit(4 * 2**20)
    try:
        with pytest.raises(structops.MemoryLimitError, match="output"):
            op @ X
        assert (op @ X[:, :4]).shape == (op.shape[0], 4)  # 0.5 MB: within the limit
    finally:
        structops.set_memory_limit(old)

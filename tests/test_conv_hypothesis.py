"""Property tests of the convolution layers over drawn shapes and options.

Hypothesis draws the number of spatial axes, channels, sizes, kernel sizes,
strides, dilations and paddings. Validity is computed here from the rules of
the layer (even effective kernel with 'same'/'circular', circular wrap larger
than the input, empty output); construction must raise ``ValueError`` exactly
for the invalid draws, and the valid layers must match the dense loops and
pass the dot test, with both the direct and the FFT method.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import structops
from structops.operators import conv as conv_module
from structops.testing import assert_adjoint, assert_matches_dense

from dense import as_tuple, dense_conv, out_shape, padding_pairs


def per_axis(D, elem):
    """An int, or a tuple of D ints."""
    return st.one_of(elem, st.tuples(*([elem] * D)))


def padding_spec(D):
    pair = st.tuples(st.integers(0, 3), st.integers(0, 3))
    entry = st.one_of(st.integers(0, 3), pair)
    return st.one_of(
        st.sampled_from(["same", "valid", "full", "circular"]),
        st.integers(0, 3),
        st.tuples(*([entry] * D)),
    )


@st.composite
def conv_configs(draw):
    D = draw(st.sampled_from([1, 2]))
    nmax = 10 if D == 1 else 6
    return dict(
        D=D,
        c_in=draw(st.integers(1, 3)),
        c_out=draw(st.integers(1, 3)),
        in_shape=tuple(draw(st.integers(1, nmax)) for _ in range(D)),
        k=tuple(draw(st.integers(1, 4)) for _ in range(D)),
        stride=draw(per_axis(D, st.integers(1, 3))),
        dilation=draw(per_axis(D, st.integers(1, 2))),
        padding=draw(padding_spec(D)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def expected_layout(cfg):
    """``(pairs, out_shape)`` from the rules, or ``None`` when the layer is invalid."""
    try:
        pairs = padding_pairs(cfg["padding"], cfg["k"], cfg["dilation"], cfg["in_shape"])
    except ValueError:
        return None
    out = out_shape(cfg["in_shape"], cfg["k"], cfg["stride"], pairs, cfg["dilation"])
    if min(out) < 1:
        return None
    return pairs, out


@pytest.mark.parametrize("method", ["direct", "fft"])
@given(cfg=conv_configs())
def test_conv_matches_dense_or_rejects(cfg, method):
    rng = np.random.default_rng(cfg["seed"])
    K = rng.standard_normal((cfg["c_out"], cfg["c_in"], *cfg["k"]))
    args = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"],
                method=method)
    layout = expected_layout(cfg)
    event("invalid layer" if layout is None else "valid layer")
    if layout is None:
        with pytest.raises(ValueError):
            structops.ConvND(K, cfg["in_shape"], **args)
        return
    pairs, out = layout
    op = structops.ConvND(K, cfg["in_shape"], **args)
    D = cfg["D"]
    s, dil = as_tuple(cfg["stride"], D), as_tuple(cfg["dilation"], D)
    circular = cfg["padding"] == "circular"
    assert tuple(op.out_shape) == out
    assert tuple(op.dims) == (cfg["c_in"], *cfg["in_shape"])
    assert tuple(op.dimsd) == (cfg["c_out"], *out)
    assert tuple(op.stride) == s
    assert tuple(op.dilation) == dil
    assert tuple(tuple(p) for p in op.padding) == pairs
    assert bool(op.circular) is circular
    dense = dense_conv(K, cfg["in_shape"], s, pairs, dil, circular)
    if not dense.any():
        # every output reads padding only (e.g. an even dilated kernel skipping the
        # centre of a 1-pixel axis): the layer is the zero map. Relative checks are
        # meaningless there (FFT round-off against a zero reference); check absolutely.
        x = rng.standard_normal(op.shape[1])
        y = rng.standard_normal(op.shape[0])
        assert np.abs(op.matvec(x)).max() <= 1e-12 * np.abs(K).sum() * np.abs(x).max()
        assert np.abs(op.rmatvec(y)).max() <= 1e-12 * np.abs(K).sum() * np.abs(y).max()
        return
    assert_matches_dense(op, dense, rng=rng)
    assert_adjoint(op, rng=rng)
    # parameter Jacobian: J dK = K(dK) x, checked with the dense loops for dK
    x = rng.standard_normal(op.shape[1])
    J = op.jacobian(x)
    assert tuple(J.dims) == K.shape
    assert_adjoint(J, rng=rng)
    dK = rng.standard_normal(K.shape)
    want = dense_conv(dK, cfg["in_shape"], s, pairs, dil, circular) @ x
    np.testing.assert_allclose(J.matvec(dK.ravel()), want, rtol=1e-10,
                               atol=1e-12 * max(1.0, np.abs(want).max()))


@given(cfg=conv_configs(), B=st.sampled_from([1, 3]))
def test_conv_split_over_threads_matches_dense(cfg, B):
    """Every direct product split over three threads (output channels forward, input channels adjoint)."""
    from structops import _threads

    layout = expected_layout(cfg)
    if layout is None:
        return
    pairs, out = layout
    rng = np.random.default_rng(cfg["seed"])
    K = rng.standard_normal((cfg["c_out"], cfg["c_in"], *cfg["k"]))
    D = cfg["D"]
    s, dil = as_tuple(cfg["stride"], D), as_tuple(cfg["dilation"], D)
    dense = dense_conv(K, cfg["in_shape"], s, pairs, dil, cfg["padding"] == "circular")
    X = rng.standard_normal((dense.shape[1], B))
    Y = rng.standard_normal((dense.shape[0], B))
    atol = 1e-12 * max(1.0, np.abs(K).sum()) * 10
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_threads, "MIN_BLOCK_WORK", 1)
        mp.setattr(_threads, "_threads", 3)
        op = structops.ConvND(K, cfg["in_shape"], stride=cfg["stride"], padding=cfg["padding"],
                              dilation=cfg["dilation"], method="direct")
        np.testing.assert_allclose(op.matmat(X), dense @ X, rtol=0, atol=atol * np.abs(X).max())
        np.testing.assert_allclose(op.rmatmat(Y), dense.T @ Y, rtol=0, atol=atol * np.abs(Y).max())


@given(cfg=conv_configs())
def test_conv_wrappers_agree_with_convnd(cfg):
    """Conv1D / Conv2D are ConvND with one / two spatial axes."""
    if expected_layout(cfg) is None:
        return
    rng = np.random.default_rng(cfg["seed"])
    K = rng.standard_normal((cfg["c_out"], cfg["c_in"], *cfg["k"]))
    args = dict(stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"])
    ref = structops.ConvND(K, cfg["in_shape"], **args)
    if cfg["D"] == 1:
        op = structops.Conv1D(K, cfg["in_shape"][0], **args)
    else:
        op = structops.Conv2D(K, cfg["in_shape"], **args)
    assert op.shape == ref.shape
    X = rng.standard_normal((op.shape[1], 2))
    Y = rng.standard_normal((op.shape[0], 2))
    np.testing.assert_allclose(op.matmat(X), ref.matmat(X), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.rmatmat(Y), ref.rmatmat(Y), rtol=1e-12, atol=1e-12)


def test_todense_of_a_large_layer_uses_sparse_identity_columns():
    """PyLops' ``todense`` applies operators above 1000 columns to a scipy.sparse identity."""
    from dense import dense_conv

    rng = np.random.default_rng(0)
    K = rng.standard_normal((2, 3, 3, 3))
    op = structops.Conv2D(K, (19, 19))  # 1083 inputs, 722 outputs
    np.testing.assert_allclose(op.todense(), dense_conv(K, (19, 19), (1, 1), ((1, 1), (1, 1)), (1, 1), False),
                               atol=1e-13)
    np.testing.assert_allclose(op.H.todense(), op.todense().T, atol=1e-13)


@given(cfg=conv_configs(), complex_kernel=st.booleans(), sparsity=st.floats(0, 1))
def test_sparse_matrix_is_the_dense_loops(cfg, complex_kernel, sparsity):
    """``tosparse`` assembles the same matrix as the dense loops (zero kernel entries not stored)."""
    layout = expected_layout(cfg)
    if layout is None:
        return
    pairs, _ = layout
    rng = np.random.default_rng(cfg["seed"])
    shape = (cfg["c_out"], cfg["c_in"], *cfg["k"])
    K = rng.standard_normal(shape) + (1j * rng.standard_normal(shape) if complex_kernel else 0)
    K[rng.random(shape) < sparsity] = 0
    op = structops.ConvND(K, cfg["in_shape"], stride=cfg["stride"], padding=cfg["padding"],
                          dilation=cfg["dilation"])
    D = cfg["D"]
    dense = dense_conv(K, cfg["in_shape"], as_tuple(cfg["stride"], D), pairs, as_tuple(cfg["dilation"], D),
                       cfg["padding"] == "circular")
    A = op.tosparse()
    assert A.shape == op.shape and A.dtype == K.dtype and A.format == "csr"
    assert A.nnz <= np.count_nonzero(K) * int(np.prod(op.out_shape))
    np.testing.assert_allclose(A.toarray(), dense, rtol=0, atol=1e-14 * max(1.0, np.abs(K).sum()))
    assert op.tosparse("csc").format == "csc"


# The direct products keep a batch in the columns' order, (c, *space, B): the tap offsets are B
# times the one-image ones; a depthwise batch is one einsum a phase (the adjoint a gather), a single
# depthwise image is written by its first tap, and a polyphase component that no tap reads is zeroed. Each kind of channel product, against the sparse
# matrix built from the kernel taps, on a batch of 4 and on single columns; with threads=3 every product
# with several groups is split over threads (structops._threads), in passes of one group each.
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("groups, cig, cog", [(3, 1, 1), (2, 1, 3), (1, 2, 5), (1, 4, 4), (2, 3, 1)])
@pytest.mark.parametrize("k, stride, dilation, padding", [
    (3, 1, 1, 1), (1, 2, 1, 0), (2, 3, 1, (0, 2)), (3, 2, 2, "circular"), (3, (1, 2), 1, "same")])
def test_direct_batches_in_the_columns_order(groups, cig, cog, k, stride, dilation, padding, threads, monkeypatch):
    monkeypatch.setattr(structops._threads, "MIN_BLOCK_WORK", 1)
    monkeypatch.setattr(structops._threads, "_threads", threads)
    if threads > 1:
        monkeypatch.setattr(conv_module, "GROUP_PASS_BYTES", 1)
    rng = np.random.default_rng(7 * groups + cig + k)
    K = rng.standard_normal((groups * cog, cig, k, k))
    op = structops.Conv2D(K, (9, 8), stride=stride, padding=padding, dilation=dilation, groups=groups,
                          method="direct")
    A = op.tosparse().toarray()
    X = rng.standard_normal((op.shape[1], 4))
    Y = rng.standard_normal((op.shape[0], 4))
    np.testing.assert_allclose(op @ X, A @ X, rtol=0, atol=1e-12 * np.abs(A).sum())
    np.testing.assert_allclose(op.H @ Y, A.T @ Y, rtol=0, atol=1e-12 * np.abs(A).sum())
    np.testing.assert_allclose(op @ X[:, 1], A @ X[:, 1], rtol=0, atol=1e-12 * np.abs(A).sum())
    np.testing.assert_allclose(op.H @ Y[:, 1], A.T @ Y[:, 1], rtol=0, atol=1e-12 * np.abs(A).sum())
    J = op.jacobian(X)
    dK = rng.standard_normal((K.size, 2))
    want = np.stack([(op.with_kernel(d.reshape(K.shape)) @ X).ravel() for d in dK.T], axis=1)
    np.testing.assert_allclose(J @ dK, want, rtol=0, atol=1e-12 * np.abs(want).max())
    assert_adjoint(J, rng=rng)
    op32 = op.with_kernel(K.astype(np.float32))
    got = op32.H @ Y.astype(np.float32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, A.T @ Y, rtol=0, atol=1e-5 * np.abs(A).sum())
    Kc = K + 1j * rng.standard_normal(K.shape)  # complex: the adjoint conjugates the taps
    opc = op.with_kernel(Kc)
    Ac = opc.tosparse().toarray()
    Zc = Y + 1j * rng.standard_normal(Y.shape)
    np.testing.assert_allclose(opc.H @ Zc, Ac.conj().T @ Zc, rtol=0, atol=1e-12 * np.abs(Ac).sum())
    np.testing.assert_allclose(opc @ X, Ac @ X, rtol=0, atol=1e-12 * np.abs(Ac).sum())


def test_leading_zeros_of_the_output_grid_are_for_the_columns_order_only():
    geo = structops.Conv2D(np.ones((1, 1, 3, 3)), (4, 4)).geometry
    grid = geo.to_cells(np.ones((16, 2)), 1, np.float64, batch_last=True, lead=3)
    assert grid.shape == (1, 3 + 2 * geo.cell) and not grid[:, :3].any() and grid.sum() == 32
    with pytest.raises(ValueError, match="batch_last"):
        geo.to_cells(np.ones((16, 2)), 1, np.float64, lead=3)

"""Bad input raises ValueError / TypeError with a message naming what was given."""

from __future__ import annotations

import numpy as np
import pytest

import structops


def k(*shape):
    return np.ones(shape)


# ------------------------------------------------------------- conv layers


@pytest.mark.parametrize(
    "build,match",
    [  # the message names the kernel and the shape that was given
        (lambda: structops.Conv2D(k(2, 2, 3), (5, 5)), r"(?i)kernel.*\(2, 2, 3\)"),
        (lambda: structops.Conv1D(k(2, 2, 3, 3), 5), r"(?i)kernel.*\(2, 2, 3, 3\)"),
        (lambda: structops.Conv3D(k(1, 1, 3, 3), (4, 4, 4)), r"(?i)kernel.*\(1, 1, 3, 3\)"),
        (lambda: structops.ConvND(k(3), (5,)), r"(?i)kernel.*\(3,\)"),  # no channel axes
    ],
    ids=["conv2d-3d-kernel", "conv1d-4d-kernel", "conv3d-4d-kernel", "convnd-1d-kernel"],
)
def test_wrong_kernel_rank(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "kernel,in_shape,kw",
    [
        (k(1, 1, 5), (3,), dict(padding="valid")),
        (k(1, 1, 4, 2), (3, 5), dict(padding="valid")),
        (k(1, 1, 3), (3,), dict(padding="valid", dilation=2)),  # e = 5 > 3
        (k(1, 1, 7), (2,), dict(padding=1)),  # 2 + 2 < 7
        (k(1, 1, 3, 3), (2, 8), dict(padding=((0, 0), (1, 1)))),
    ],
    ids=["1d", "2d", "dilated", "int-padding", "tuple-padding"],
)
def test_kernel_larger_than_padded_input(kernel, in_shape, kw):
    with pytest.raises(ValueError, match=r"(?i)kernel|input|output|larger|padd"):
        structops.ConvND(kernel, in_shape, **kw)


@pytest.mark.parametrize("padding", ["same", "circular"])
@pytest.mark.parametrize(
    "kernel,in_shape,kw",
    [
        (k(1, 1, 4), (9,), {}),
        (k(2, 1, 3, 2), (6, 6), {}),
        (k(1, 1, 2, 3, 3), (5, 5, 5), {}),
    ],
    ids=["1d-k4", "2d-k3x2", "3d-k2x3x3"],
)
def test_even_kernel_with_same_or_circular(kernel, in_shape, kw, padding):
    with pytest.raises(ValueError, match=r"(?i)even|odd|" + padding):
        structops.ConvND(kernel, in_shape, padding=padding, **kw)


def test_even_effective_size_only_counts():
    """Even k with dilation 2 has odd e = 2k - 1: 'same' is fine then."""
    op = structops.Conv1D(k(1, 1, 2), 6, padding="same", dilation=2)  # e = 3
    assert op.out_shape == (6,)
    assert tuple(op.padding) == ((1, 1),)


def test_circular_wrap_larger_than_input():
    with pytest.raises(ValueError, match=r"(?i)circular|larger|input|kernel"):
        structops.Conv1D(k(1, 1, 5), 3, padding="circular")
    with pytest.raises(ValueError, match=r"(?i)circular|larger|input|kernel"):
        structops.Conv2D(k(1, 1, 3, 3), (5, 6), padding="circular", dilation=(1, 4))  # e = 9


@pytest.mark.parametrize("bad", ["reflect", "SAME!", ""])
def test_unknown_padding_string(bad):
    import re

    with pytest.raises(ValueError, match=re.escape(repr(bad)) + "|" + (re.escape(bad) or "'")):
        structops.Conv2D(k(1, 1, 3, 3), (5, 5), padding=bad)


@pytest.mark.parametrize(
    "padding",
    [(1, 2, 3), ((1, 2, 3),), -1, (1, -2)],
    ids=["too-many-axes", "triple", "negative", "negative-in-tuple"],
)
def test_bad_padding_values(padding):
    with pytest.raises((ValueError, TypeError), match=r"(?i)padd"):
        structops.Conv2D(k(1, 1, 3, 3), (5, 5), padding=padding)


@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize("value", [0, -1, (1, 0), (2, -3)])
def test_nonpositive_stride_or_dilation(name, value):
    with pytest.raises(ValueError, match=name):
        structops.Conv2D(k(1, 1, 3, 3), (6, 6), padding="valid", **{name: value})


@pytest.mark.parametrize("name", ["stride", "dilation"])
def test_stride_or_dilation_of_wrong_length(name):
    with pytest.raises(ValueError, match=name):
        structops.Conv2D(k(1, 1, 3, 3), (6, 6), padding="valid", **{name: (1, 1, 1)})


@pytest.mark.parametrize(
    "build",
    [
        lambda: structops.Conv2D(k(1, 1, 3, 3), (5,)),
        lambda: structops.Conv2D(k(1, 1, 3, 3), (5, 5, 5)),
        lambda: structops.ConvND(k(1, 1, 3), (5, 5)),
        lambda: structops.Conv3D(k(1, 1, 3, 3, 3), (5, 5)),
    ],
    ids=["2d-len1", "2d-len3", "nd-1d-len2", "3d-len2"],
)
def test_in_shape_of_wrong_length(build):
    with pytest.raises(ValueError, match=r"(?i)in_shape|shape|spatial|axes"):
        build()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_kernel(bad):
    K = k(2, 1, 3, 3)
    K[1, 0, 2, 1] = bad
    with pytest.raises(ValueError, match=r"(?i)nan|inf|finite"):
        structops.Conv2D(K, (5, 5))


def test_unknown_method():
    with pytest.raises(ValueError, match="bogus"):
        structops.Conv1D(k(1, 1, 3), 8, method="bogus")


def test_wrong_vector_length():
    op = structops.Conv2D(k(2, 3, 3, 3), (4, 5))
    with pytest.raises(ValueError):
        op.matvec(np.ones(op.shape[1] + 1))
    with pytest.raises(ValueError):
        op.rmatvec(np.ones(op.shape[0] - 1))
    with pytest.raises(ValueError):
        op.matmat(np.ones((op.shape[1] + 2, 3)))


def test_jacobian_with_wrong_input_shape():
    op = structops.Conv1D(k(2, 1, 3), 8)
    with pytest.raises(ValueError, match=r"\(7,\)|7"):
        op.jacobian(np.ones(7))


def test_wrong_dtype_kinds_raise():
    with pytest.raises((TypeError, ValueError)):
        structops.Conv1D(np.array([[["a", "b", "c"]]]), 5)


# ----------------------------------------------------- Toeplitz / Circulant


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_toeplitz_parameters(bad):
    c, r = np.ones(4), np.ones(5)
    c[2] = bad
    with pytest.raises(ValueError, match=r"(?i)nan|inf|finite"):
        structops.Toeplitz(c, r)
    c[2], r[3] = 1.0, bad
    with pytest.raises(ValueError, match=r"(?i)nan|inf|finite"):
        structops.Toeplitz(c, r)


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_nonfinite_circulant(bad):
    c = np.ones((3, 4))
    c[1, 1] = bad
    with pytest.raises(ValueError, match=r"(?i)nan|inf|finite"):
        structops.Circulant(c)


def test_toeplitz_complex_without_r_has_no_jacobian():
    op = structops.Toeplitz(np.array([1.0 + 1j, 2.0, 3.0 - 1j]))
    with pytest.raises(ValueError, match=r"(?i)complex|r=None|\br\b"):
        op.jacobian(np.ones(3, dtype=complex))


def test_toeplitz_wrong_vector_length():
    op = structops.Toeplitz(np.ones(3), np.ones(5))
    with pytest.raises(ValueError):
        op.matvec(np.ones(3))
    with pytest.raises(ValueError):
        op.rmatvec(np.ones(5))


def test_circulant_wrong_vector_length():
    op = structops.Circulant(np.ones((3, 4)))
    with pytest.raises(ValueError):
        op.matvec(np.ones(13))
    with pytest.raises(ValueError):
        op.solve(np.ones(11))


@pytest.mark.parametrize("c", [np.ones(0), np.ones((2, 0))], ids=["empty-1d", "empty-2d"])
def test_empty_parameters(c):
    with pytest.raises(ValueError):
        structops.Circulant(c)


# ------------------------------------------------------------------ backends


@pytest.mark.gpu
def test_mixing_numpy_and_cupy_raises(cupy):  # pragma: no cover - GPU only
    op = structops.Conv2D(cupy.ones((2, 2, 3, 3)), (4, 4))
    x = np.ones(op.shape[1])
    with pytest.raises(TypeError, match=r"(?i)numpy.*cupy|cupy.*numpy"):
        op.matvec(x)
    with pytest.raises(TypeError, match=r"(?i)numpy.*cupy|cupy.*numpy"):
        op.rmatvec(np.ones(op.shape[0]))
    with pytest.raises(TypeError):
        op.jacobian(x)
    circ = structops.Circulant(cupy.ones(4) + cupy.arange(4))
    with pytest.raises(TypeError):
        circ.matvec(np.ones(4))
    with pytest.raises(TypeError):
        circ.solve(np.ones(4))
    top = structops.Toeplitz(cupy.ones(3), cupy.ones(4))
    with pytest.raises(TypeError):
        top.matvec(np.ones(4))
    with pytest.raises(TypeError):
        structops.Toeplitz(cupy.ones(3), np.ones(4))


@pytest.mark.gpu
def test_cupy_in_cupy_out(cupy):  # pragma: no cover - GPU only
    K = cupy.asarray(np.random.default_rng(0).standard_normal((2, 2, 3, 3)))
    op = structops.Conv2D(K, (5, 5))
    y = op.matvec(cupy.ones(op.shape[1]))
    assert isinstance(y, cupy.ndarray)
    want = structops.Conv2D(cupy.asnumpy(K), (5, 5)).matvec(np.ones(op.shape[1]))
    np.testing.assert_allclose(cupy.asnumpy(y), want, rtol=1e-12, atol=1e-12)

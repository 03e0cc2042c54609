"""Padding of multi-channel images as an operator, and convolutions after it (reflect / replicate padding).

:class:`Pad` extends every channel of an image by ``(lo, hi)`` entries per
axis with ``torch.nn.functional.pad`` semantics:

* ``"reflect"``: mirrored about the edge entry, which is not repeated
  (``x[2], x[1] | x[0], x[1], ...``); needs ``lo, hi < n``;
* ``"replicate"``: the edge entry repeated;
* ``"circular"``: periodic; needs ``lo, hi <= n``;
* ``"zeros"``: zeros.

The axes are padded one after another (the operator is the Kronecker
product of the per-axis ones); the adjoint folds each border back onto the
entries it copies. :class:`PaddedConvND` is ``ConvND(K, padding="valid") @
Pad``: a ``torch.nn.Conv{1,2,3}d`` with ``padding_mode="reflect"`` or
``"replicate"``.
"""

from __future__ import annotations

import numpy as np

from .._backend import get_xp
from .._validate import as_param_array, int_tuple
from .base import StructuredOperator, split_batch
from .conv import ConvND

__all__ = ["Pad", "PaddedConvND"]

MODES = ("reflect", "replicate", "circular", "zeros")


def _pairs(padding, D: int):
    """``padding`` as ``((lo, hi), ...)``: an int, one int per axis, or one pair per axis."""
    if isinstance(padding, (int, np.integer)):
        return ((int(padding), int(padding)),) * D
    items = tuple(padding)
    if len(items) != D:
        raise ValueError(f"padding {padding!r} has {len(items)} entries; expected {D} (one per axis)")
    out = []
    for p in items:
        lo, hi = (p, p) if isinstance(p, (int, np.integer)) else tuple(p)
        out.append(int_tuple((lo, hi), 2, "padding", minimum=0))
    return tuple(out)


def _axis_index(n: int, lo: int, hi: int, mode: str):
    """Source index of every padded entry along one axis (-1 for a zero)."""
    j = np.arange(-lo, n + hi)
    if mode == "reflect":
        return np.abs(np.where(j >= n, 2 * (n - 1) - j, j))
    if mode == "replicate":
        return np.clip(j, 0, n - 1)
    if mode == "circular":
        return j % n
    return np.where((j >= 0) & (j < n), j, -1)


class Pad(StructuredOperator):
    """Padding of a ``(c, n_1, ..., n_D)`` image: ``(c, n_1 + lo_1 + hi_1, ...)``.

    Parameters
    ----------
    in_shape : tuple of int
        Spatial shape ``(n_1, ..., n_D)``.
    channels : int
    padding : int, tuple of int or tuple of (int, int)
        ``(lo, hi)`` per axis (an int: the same on both sides of every axis).
    mode : {"reflect", "replicate", "circular", "zeros"}
    dtype : dtype
        Of the products (the operator itself has 0/1 entries).
    xp : module
        ``numpy`` or ``cupy``.
    """

    def __init__(self, in_shape, channels, padding, mode="reflect", dtype=np.float64, xp=np):
        shape = (in_shape,) if isinstance(in_shape, (int, np.integer)) else tuple(in_shape)
        in_shape = int_tuple(shape, len(shape), "in_shape")
        D = len(in_shape)
        if mode not in MODES:
            raise ValueError(f"padding mode {mode!r}; expected one of {MODES}")
        self.pairs = _pairs(padding, D)
        for n, (lo, hi) in zip(in_shape, self.pairs):
            if mode == "reflect" and max(lo, hi) >= n:
                raise ValueError(f"reflect padding {self.pairs} needs lo, hi < n on every axis; input {in_shape}")
            if mode == "circular" and max(lo, hi) > n:
                raise ValueError(f"circular padding {self.pairs} needs lo, hi <= n on every axis; input {in_shape}")
        self.mode, self.in_shape, self.channels, self._xp = mode, in_shape, int(channels), xp
        self.out_shape = tuple(n + lo + hi for n, (lo, hi) in zip(in_shape, self.pairs))
        self._index = [_axis_index(n, lo, hi, mode) for n, (lo, hi) in zip(in_shape, self.pairs)]
        super().__init__(dims=(self.channels,) + in_shape, dimsd=(self.channels,) + self.out_shape, dtype=dtype,
                         name="P")

    @property
    def xp(self):
        return self._xp

    def _forward(self, X):
        xp = get_xp(X)
        B = X.shape[1]
        x = X.reshape((self.channels,) + self.in_shape + (B,))
        for a, ((lo, hi), idx) in enumerate(zip(self.pairs, self._index)):
            if lo == hi == 0:
                continue
            if self.mode == "zeros":
                width = [(0, 0)] * x.ndim
                width[a + 1] = (lo, hi)
                x = xp.pad(x, width)
            else:
                x = xp.take(x, xp.asarray(idx), axis=a + 1)
        return xp.ascontiguousarray(x).reshape(-1, B)

    def _backward(self, Y):
        xp = get_xp(Y)
        B = Y.shape[1]
        y = Y.reshape((self.channels,) + self.out_shape + (B,))
        for a in reversed(range(len(self.in_shape))):
            (lo, hi), n = self.pairs[a], self.in_shape[a]
            if lo == hi == 0:
                continue
            ax = a + 1
            sl = [slice(None)] * y.ndim

            def part(start, stop):
                s = list(sl)
                s[ax] = slice(start, stop)
                return tuple(s)

            out = y[part(lo, lo + n)].copy()
            if self.mode == "reflect":  # padded j < 0 reads -j; j >= n reads 2(n - 1) - j
                if lo:
                    out[part(1, lo + 1)] += xp.flip(y[part(0, lo)], axis=ax)
                if hi:
                    out[part(n - 1 - hi, n - 1)] += xp.flip(y[part(lo + n, lo + n + hi)], axis=ax)
            elif self.mode == "replicate":
                if lo:
                    out[part(0, 1)] += y[part(0, lo)].sum(axis=ax, keepdims=True)
                if hi:
                    out[part(n - 1, n)] += y[part(lo + n, lo + n + hi)].sum(axis=ax, keepdims=True)
            elif self.mode == "circular":
                if lo:
                    out[part(n - lo, n)] += y[part(0, lo)]
                if hi:
                    out[part(0, hi)] += y[part(lo + n, lo + n + hi)]
            y = out
        return xp.ascontiguousarray(y).reshape(-1, B)

    def tosparse(self, format: str = "csr"):
        """The 0/1 padding matrix, ``(prod(dimsd), prod(dims))``, in a SciPy sparse format."""
        import scipy.sparse as sp

        A = sp.identity(self.channels, format="csr")
        for n, idx in zip(self.in_shape, self._index):
            ok = idx >= 0
            Ea = sp.csr_matrix((np.ones(int(ok.sum())), (np.flatnonzero(ok), idx[ok])), shape=(idx.size, n))
            A = sp.kron(A, Ea, format="csr")
        return A.asformat(format)


class PaddedConvND(StructuredOperator):
    """A convolution layer after a reflect / replicate / circular / zero padding of its input.

    ``torch.nn.Conv{1,2,3}d(..., padding=p, padding_mode=mode)``: the input is
    padded by :class:`Pad` and the layer is ``ConvND(K, padding="valid")`` on
    the padded grid.

    Parameters
    ----------
    kernel : array, shape ``(c_out, c_in / groups, *k)``
    in_shape : tuple of int
    stride, dilation, groups, method
        As in :class:`ConvND`.
    padding : int, tuple of int or tuple of (int, int)
        ``(lo, hi)`` per axis, or ``"same"`` (stride 1: torch's rule, the
        extra entry of an even effective kernel at the end).
    padding_mode : {"reflect", "replicate", "circular", "zeros"}

    Attributes
    ----------
    pad : Pad
    conv : ConvND
        ``padding="valid"`` on ``pad.out_shape``.

    Notes
    -----
    ``y = C (P x)`` with the 0/1 padding matrix ``P``: the adjoint is
    ``P^T C^H`` and the kernel Jacobian at ``x`` is ``C``'s at ``P x``. The
    spectrum has no closed form (``P`` is not orthogonal); it is computed
    by the generic certified routes.
    """

    def __init__(self, kernel, in_shape, stride=1, padding=0, dilation=1, groups=1, padding_mode="reflect",
                 method="auto"):
        kernel = as_param_array(kernel, "kernel", min_ndim=3)
        D = kernel.ndim - 2
        in_shape = int_tuple((in_shape,) if isinstance(in_shape, (int, np.integer)) else in_shape, D, "in_shape")
        dil = int_tuple(dilation, D, "dilation")
        if isinstance(padding, str):
            if padding != "same":
                raise ValueError(f"padding={padding!r}; expected 'same', an int or (lo, hi) pairs")
            if any(s != 1 for s in int_tuple(stride, D, "stride")):
                raise ValueError("padding='same' needs stride 1 (as torch)")
            pairs = []
            for k, d in zip(kernel.shape[2:], dil):
                total = d * (k - 1)
                pairs.append((total // 2, total - total // 2))
            padding = tuple(pairs)
        xp = get_xp(kernel)
        groups_in = kernel.shape[1] * int(groups)
        self.pad = Pad(in_shape, groups_in, padding, padding_mode, dtype=kernel.dtype, xp=xp)
        self.conv = ConvND(kernel, self.pad.out_shape, stride=stride, padding="valid", dilation=dilation,
                           groups=groups, method=method)
        self.kernel, self.padding_mode, self.in_shape = kernel, padding_mode, in_shape
        self.padding = self.pad.pairs
        self.out_shape = self.conv.out_shape
        super().__init__(dims=(groups_in,) + in_shape, dimsd=self.conv.dimsd, dtype=kernel.dtype, name="C")

    @property
    def xp(self):
        return self.conv.xp

    def with_kernel(self, kernel):
        """The same layer with another kernel of the same shape."""
        return PaddedConvND(kernel, self.in_shape, stride=self.conv.stride, padding=self.padding,
                            dilation=self.conv.dilation, groups=self.conv.groups, padding_mode=self.padding_mode,
                            method=self.conv.method)

    def _forward(self, X):
        return self.conv._forward(self.pad._forward(X))

    def _backward(self, Y):
        return self.pad._backward(self.conv._backward(Y))

    def tosparse(self, format: str = "csr"):
        """``C P`` as a SciPy sparse matrix."""
        return (self.conv.tosparse("csr") @ self.pad.tosparse("csr")).asformat(format)

    def jacobian(self, x):
        """Jacobian of ``K -> C(K) P x``: the convolution's at the padded input (see :meth:`ConvND.jacobian`)."""
        X, batched = split_batch(x, self.dims, self.shape[1], "x")
        PX = self.pad._forward(X)
        return self.conv.jacobian(PX if batched else PX[:, 0])

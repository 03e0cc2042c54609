"""Extended (non-stationary) convolution: one kernel per output pixel.

An extended layer replaces the kernel of a convolution layer by a kernel per
output position, ``W = sum_d diag(w_d) T_d``: the same diagonals ``T_d`` (one per
kernel tap and channel pair) as the conventional layer, each weighted pixel by
pixel. The products reuse the conventional layer's index machinery (padding,
stride, dilation, polyphase flat layout), with the per-tap channel matrices
replaced by per-pixel ones.
"""

from __future__ import annotations


import numpy as np

from .._backend import device_constant, get_xp
from .base import StructuredOperator, fixed_parameters, split_batch
from .._validate import as_param_array, result_dtype
from .conv import ConvND, require_ungrouped
from .geometry import ConvGeometry

__all__ = ["ExtendedConvND", "ExtendedConv1D", "ExtendedConv2D", "extension_penalty"]


@fixed_parameters("weights", "geometry", "c_in", "c_out", "kernel_size", "in_shape", "out_shape", "stride",
                  "dilation", "padding", "circular")
class ExtendedConvND(StructuredOperator):
    r"""N-D extended convolution: a ``(c_out, c_in)`` kernel for every output pixel.

    Parameters
    ----------
    weights : array, shape ``(c_out, c_in, *k, *out_shape)``
        ``weights[o, i, d, p]`` is tap ``d`` of the kernel used at output pixel
        ``p``; ``out_shape`` must be the layer's output shape.
    in_shape : tuple of int
    padding, stride, dilation
        As in :class:`~structops.ConvND` (keywords).

    Notes
    -----
    .. math::

        y[o, p] = \sum_{i, d} w[o, i, d, p]\, x[i, p \cdot s + d \cdot \delta - lo],
        \qquad W = \sum_{o, i, d} \operatorname{diag}(w_{o, i, d})\, T_{o, i, d},

    with ``x`` zero outside the image (or periodic for ``"circular"``). The
    adjoint scatters ``w[o, i, d, p] y[o, p]`` back to the input pixel read by
    tap ``d``. With ``w[o, i, d, p] = K[o, i, d]`` for all ``p`` it is the
    conventional layer (:meth:`from_conv`). Under zero padding the matrix
    entry of tap ``d`` at pixel ``p`` exists only where the pixel it reads lies
    inside the image (:meth:`border_mask`); the other weights have no effect.

    :meth:`jacobian` is the derivative with respect to the per-pixel weights,
    ``dw -> W(dw) x``; its adjoint is the per-pixel weight gradient
    ``g[o, i, d, p] = y[o, p] x[i, p s + d delta - lo]``.

    Examples
    --------
    >>> import numpy as np, structops
    >>> K = np.random.default_rng(0).standard_normal((2, 1, 3, 3))
    >>> conv = structops.Conv2D(K, (8, 8))
    >>> ext = structops.ExtendedConv2D.from_conv(conv)
    >>> ext.weights.shape
    (2, 1, 3, 3, 8, 8)
    >>> x = np.ones(64)
    >>> np.allclose(ext @ x, conv @ x)
    True
    """

    def __init__(self, weights, in_shape, *, padding="same", stride=1, dilation=1):
        weights = as_param_array(weights, "weights", min_ndim=4)
        D = (weights.ndim - 2) // 2
        if weights.ndim != 2 + 2 * D or D < 1:
            raise ValueError(
                f"weights of shape {tuple(weights.shape)}; expected (c_out, c_in, *k, *out_shape) "
                "with as many kernel as output axes"
            )
        geo = ConvGeometry(weights.shape[: 2 + D], in_shape, stride=stride, padding=padding, dilation=dilation)
        out = geo.out_shape
        if tuple(weights.shape[2 + D :]) != out:
            raise ValueError(
                f"weights have output axes {tuple(weights.shape[2 + D:])}; the layer's output shape is {out} "
                f"(input {geo.in_shape}, kernel {geo.kernel_size}, stride {geo.stride}, padding {geo.padding})"
            )
        self.weights = weights
        self.geometry = self._geo = geo
        self.c_out, self.c_in = geo.c_out, geo.c_in
        self.kernel_size = geo.kernel_size
        self.in_shape = in_shape = geo.in_shape
        self.stride, self.dilation = geo.stride, geo.dilation
        self.padding, self.circular = geo.padding, geo.circular
        self.out_shape = out
        self._cells = self._to_cell_layout(weights)
        super().__init__(
            dims=(self.c_in,) + in_shape, dimsd=(self.c_out,) + out, dtype=weights.dtype, name="E"
        )

    @classmethod
    def from_conv(cls, conv: ConvND):
        """The extended layer whose per-pixel kernels all equal ``conv.kernel``."""
        require_ungrouped(conv, "ExtendedConvND.from_conv")
        xp = conv.xp
        D = len(conv.in_shape)
        K = conv.kernel.reshape(conv.kernel.shape + (1,) * D)
        weights = xp.ascontiguousarray(xp.broadcast_to(K, conv.kernel.shape + tuple(conv.out_shape)))
        return cls(
            weights, conv.in_shape, padding=conv.padding if not conv.circular else "circular",
            stride=conv.stride, dilation=conv.dilation,
        )

    # -- layout ------------------------------------------------------------------
    def _to_cell_layout(self, w):
        """``(c, c_in, *k, *out)`` -> ``(c, c_in, T, cell)`` on the output grid of the flat layout."""
        geo = self._geo
        xp = get_xp(w)
        c = w.shape[0]
        cells = xp.zeros((c, self.c_in, geo.taps) + geo.Q, dtype=w.dtype)
        valid = tuple(slice(0, o) for o in self.out_shape)
        cells[(slice(None),) * 3 + valid] = w.reshape((c, self.c_in, geo.taps) + self.out_shape)
        return cells.reshape(c, self.c_in, geo.taps, geo.cell)

    def _from_cell_layout(self, cells):
        """Inverse of :meth:`_to_cell_layout` (valid output pixels only)."""
        geo = self._geo
        c = cells.shape[0]
        valid = tuple(slice(0, o) for o in self.out_shape)
        w = cells.reshape((c, self.c_in, geo.taps) + geo.Q)[(slice(None),) * 3 + valid]
        return w.reshape((c, self.c_in) + self.kernel_size + self.out_shape)

    @property
    def xp(self):
        """Array module of the weights (``numpy`` or ``cupy``)."""
        return get_xp(self.weights)

    def border_mask(self):
        """Which weights are entries of the matrix: ``(*k, *out_shape)`` booleans.

        Tap ``d`` at output pixel ``p`` reads input pixel ``p s + d delta - lo``;
        under zero padding the entry exists only when that pixel is inside the
        image. All entries exist for circular padding. A NumPy array (a new
        copy on every call); see :meth:`ConvGeometry.border_mask`.
        """
        return self.geometry.border_mask().copy()

    def _border_mask(self):
        """:meth:`border_mask` on the backend of the weights (built once per geometry; read-only)."""
        geo = self.geometry
        return device_constant(self.xp, ("border_mask",) + geo.key(), geo.border_mask)

    def kernel_average(self):
        """The conventional kernel nearest in Frobenius norm: the masked average over pixels.

        ``argmin_K ||W_ext - W(K)||_F`` over the entries that exist, ``K[o, i,
        d] = sum_p m[d, p] w[o, i, d, p] / sum_p m[d, p]`` (0 for a tap that
        never lands inside the image). Shape ``(c_out, c_in, *k)``.
        """
        xp = self.xp
        D = len(self.in_shape)
        m = self._border_mask().astype(self.weights.dtype)
        axes = tuple(range(2 + D, 2 + 2 * D))
        count = m.sum(axis=tuple(range(D, 2 * D)))
        total = (self.weights * m).sum(axis=axes)
        return xp.where(count > 0, total / xp.maximum(count, 1), 0)

    # -- products --------------------------------------------------------------------
    def _forward(self, X):
        self._check_input(X, self.shape[1], self.weights)
        dtype = result_dtype(self.weights, X)
        phases = self._geo.to_phases(X, self.c_in, dtype)
        return _extended_forward(self._geo, self._cells, phases, X.shape[1])

    def _backward(self, Y):
        self._check_input(Y, self.shape[0], self.weights)
        geo = self._geo
        dtype = result_dtype(self.weights, Y)
        B = Y.shape[1]
        y = geo.to_cells(Y, self.c_out, dtype).reshape(self.c_out, B, geo.cell)
        nv = geo.cell - geo.max_off
        G = self.xp.zeros((geo.nphase, self.c_in, B * geo.cell), dtype=dtype)
        cells = self._cells.conj() if self.dtype.kind == "c" else self._cells
        for ph, taps, offs in geo.phases:
            g = G[ph].reshape(self.c_in, B, geo.cell)
            for t, off in zip(taps, offs):
                acc = g[:, :, off : off + nv]
                for o in range(self.c_out):  # per-pixel channel matrices: broadcast products, one per channel
                    acc += cells[o, :, t, None, :nv] * y[o, None, :, :nv]
        return geo.from_phases(G, self.c_in, B)

    def jacobian(self, x):
        """Jacobian with respect to the per-pixel weights: ``dw -> W(dw) x``.

        Parameters
        ----------
        x : array, ``(N,)``, ``dims``, ``(N, B)`` or ``(*dims, B)``

        Returns
        -------
        LinearOperator
            ``dims = weights.shape``, ``dimsd = self.dimsd`` (or
            ``(*self.dimsd, B)``); the adjoint is the per-pixel weight gradient.
        """
        get_xp(x, self.weights)
        X, batched = split_batch(x, self.dims, self.shape[1], "x")
        return _ExtendedWeightJacobian(self, X, batched)


def _extended_forward(geo, cells, phases, B: int):
    """Per-pixel weights ``cells`` ``(c_out, c_in, T, cell)`` applied to a polyphase buffer."""
    xp = get_xp(cells, phases)
    co, ci = cells.shape[:2]
    nv = geo.cell - geo.max_off
    out = xp.zeros((co, B, geo.cell), dtype=np.result_type(cells.dtype, phases.dtype))
    acc = out[:, :, :nv]
    for ph, taps, offs in geo.phases:
        x = phases[ph].reshape(ci, B, geo.cell)
        for t, off in zip(taps, offs):
            for i in range(ci):  # per-pixel channel matrices: broadcast products, one per channel
                acc += cells[:, i, t, None, :nv] * x[i, None, :, off : off + nv]
    return geo.from_cells(out.reshape(co, -1), co, B)


class _ExtendedWeightJacobian(StructuredOperator):
    """``dw -> W(dw) X`` for a fixed input batch ``X``; directions stacked as output channels."""

    def __init__(self, layer: ExtendedConvND, X, batched: bool):
        self.layer = layer
        self.xp = layer.xp
        self.B = X.shape[1]
        dtype = result_dtype(layer.weights, X)
        self._phases = layer._geo.to_phases(X, layer.c_in, dtype)
        dimsd = layer.dimsd + ((self.B,) if batched else ())
        super().__init__(dims=layer.weights.shape, dimsd=dimsd, dtype=dtype, name="J")

    def _forward(self, dW):
        layer = self.layer
        nd = dW.shape[1]
        W = self.xp.moveaxis(dW.reshape(layer.weights.shape + (nd,)), -1, 0)
        W = W.reshape((nd * layer.c_out,) + layer.weights.shape[1:]).astype(self.dtype, copy=False)
        Y = _extended_forward(layer._geo, layer._to_cell_layout(W), self._phases, self.B)
        return Y.reshape(nd, -1).T

    def _backward(self, R):
        layer, geo = self.layer, self.layer._geo
        nd = R.shape[1]
        co = nd * layer.c_out
        y = geo.to_cells(R.T.reshape(-1, self.B), co, self.dtype).reshape(co, self.B, geo.cell)
        nv = geo.cell - geo.max_off
        cells = self.xp.zeros((co, layer.c_in, geo.taps, geo.cell), dtype=self.dtype)
        for ph, taps, offs in geo.phases:
            x = self._phases[ph].reshape(layer.c_in, self.B, geo.cell)
            for t, off in zip(taps, offs):
                cells[:, :, t, :nv] = self.xp.einsum("obj,ibj->oij", y[:, :, :nv], x[:, :, off : off + nv].conj())
        return layer._from_cell_layout(cells).reshape(nd, -1).T


def extension_penalty(layer: ExtendedConvND, kernel, lam: float = 1.0):
    r"""The penalty ``lam^2 / 2 ||W_ext - W(K)||_F^2`` and its gradients.

    The Frobenius norm is that of the difference of the two matrices, so only
    the entries that exist count (:meth:`ExtendedConvND.border_mask`).

    Parameters
    ----------
    layer : ExtendedConvND
        The per-pixel weights ``w``, shape ``(c_out, c_in, *k, *out)``.
    kernel : array, shape ``(c_out, c_in, *k)``
        The primary (conventional) kernel ``K``.
    lam : float

    Returns
    -------
    value : float
    grad_weights : array, shape of ``layer.weights``
        ``lam^2 m (w - K)``.
    grad_kernel : array, shape of ``kernel``
        ``-lam^2 sum_p m (w - K)``.

    Notes
    -----
    .. math::

        \frac{\lambda^2}{2} \|W_{ext} - W\|_F^2
        = \frac{\lambda^2}{2} \sum_{o, i, d, p} m[d, p]\, (w[o, i, d, p] - K[o, i, d])^2,

    since tap ``d`` of output pixel ``p`` is one matrix entry (distinct taps
    read distinct pixels). Its minimiser over ``K`` is
    :meth:`ExtendedConvND.kernel_average`.
    """
    xp = get_xp(layer.weights, kernel)
    D = len(layer.in_shape)
    if tuple(kernel.shape) != tuple(layer.weights.shape[: 2 + D]):
        raise ValueError(f"kernel has shape {tuple(kernel.shape)}; expected {tuple(layer.weights.shape[:2 + D])}")
    m = layer._border_mask()
    diff = (layer.weights - kernel.reshape(kernel.shape + (1,) * D)) * m
    value = 0.5 * lam**2 * float(xp.vdot(diff.ravel(), diff.ravel()).real)
    grad_w = lam**2 * diff
    grad_k = -(lam**2) * diff.sum(axis=tuple(range(2 + D, 2 + 2 * D)))
    return value, grad_w, grad_k


class ExtendedConv1D(ExtendedConvND):
    """1-D extended convolution: weights ``(c_out, c_in, k, n_out)``; see :class:`ExtendedConvND`."""

    def __init__(self, weights, n, *, padding="same", stride=1, dilation=1):
        if hasattr(weights, "ndim") and weights.ndim != 4:
            raise ValueError(f"ExtendedConv1D needs weights (c_out, c_in, k, n_out); got shape {tuple(weights.shape)}")
        n = (int(n),) if isinstance(n, (int, np.integer)) else tuple(n)
        super().__init__(weights, n, padding=padding, stride=stride, dilation=dilation)


class ExtendedConv2D(ExtendedConvND):
    """2-D extended convolution: weights ``(c_out, c_in, kh, kw, H_out, W_out)``; see :class:`ExtendedConvND`."""

    def __init__(self, weights, in_shape, *, padding="same", stride=1, dilation=1):
        if hasattr(weights, "ndim") and weights.ndim != 6:
            raise ValueError(
                f"ExtendedConv2D needs weights (c_out, c_in, kh, kw, H_out, W_out); got shape {tuple(weights.shape)}"
            )
        super().__init__(weights, in_shape, padding=padding, stride=stride, dilation=dilation)

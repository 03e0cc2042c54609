r"""Transposed convolution layers (decoders' upsampling layers), with PyTorch's semantics.

``ConvTransposeND(W, in_shape, stride, padding, output_padding, dilation, groups)``
is ``torch.nn.functional.conv_transpose{1,2,3}d``: the weight ``W`` has shape
``(c_in, c_out / groups, *k)`` and the output size per axis is

.. math::

    m = (n - 1) s - 2 p + \delta (k - 1) + p_{out} + 1 .

It is the transpose of the convolution layer ``ConvND(W, m, stride, p,
dilation, groups)`` that maps ``c_out`` channels of size ``m`` to ``c_in``
channels of size ``n`` (the gradient of ``conv`` in its input): its adjoint
is that convolution, and its singular values are the convolution's. Complex
weights give the transpose, not the conjugate transpose, as torch does.
"""

from __future__ import annotations

import numpy as np

from .._backend import get_xp
from .._validate import as_int, as_param_array, int_tuple, result_dtype
from .base import StructuredOperator, fixed_parameters, split_batch
from .conv import ConvND

__all__ = ["ConvTransposeND", "ConvTranspose1D", "ConvTranspose2D", "ConvTranspose3D"]


@fixed_parameters("kernel", "c_in", "c_out", "groups", "kernel_size", "in_shape", "out_shape", "stride",
                  "dilation", "padding", "output_padding")
class ConvTransposeND(StructuredOperator):
    r"""N-D transposed convolution layer, as ``torch.nn.ConvTranspose{1,2,3}d``.

    Parameters
    ----------
    kernel : array, shape ``(c_in, c_out / groups, k_1, ..., k_D)``
        torch's ``ConvTranspose`` weight layout. Real or complex, NumPy or
        CuPy; float32 stays float32.
    in_shape : tuple of int
        Spatial shape ``(n_1, ..., n_D)`` of one input channel.
    stride : int or tuple of int
    padding : int or tuple of int
        torch's ``p >= 0``: the output loses ``p`` rows at both ends of every
        axis (the convolution it transposes pads its input by ``p``).
    output_padding : int or tuple of int
        Extra rows at the end of every axis, ``0 <= output_padding <
        max(stride, dilation)`` (torch's rule).
    dilation : int or tuple of int
    groups : int
    method : {"auto", "direct", "fft"}
        The algorithm of the underlying convolution.

    Attributes
    ----------
    conv : ConvND
        The convolution whose transpose this is (``c_out -> c_in`` channels).
    dims, dimsd : tuple
        ``(c_in, *in_shape)`` and ``(c_out, *out_shape)``.

    Notes
    -----
    ``y = conv(conj(W))^H x``: output pixel ``q`` of channel ``o`` (group
    ``g``) collects ``sum_{i in g, d, p: p s + d delta - p_pad = q} W[i, o', d] x[i, p]``.

    Examples
    --------
    >>> import numpy as np, structops
    >>> W = np.ones((4, 2, 3, 3))                       # 4 -> 2 channels
    >>> op = structops.ConvTranspose2D(W, (8, 8), stride=2, padding=1, output_padding=1)
    >>> op.dims, op.dimsd
    ((4, 8, 8), (2, 16, 16))
    """

    def __init__(self, kernel, in_shape, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                 method="auto"):
        kernel = as_param_array(kernel, "kernel", min_ndim=3)
        D = kernel.ndim - 2
        in_shape = int_tuple((in_shape,) if isinstance(in_shape, int) else in_shape, D, "in_shape")
        stride = int_tuple(stride, D, "stride")
        dilation = int_tuple(dilation, D, "dilation")
        if isinstance(padding, str):
            raise ValueError(f"padding={padding!r}: transposed layers take integer paddings, as torch does")
        pad = int_tuple(padding, D, "padding", minimum=0)
        out_pad = int_tuple(output_padding, D, "output_padding", minimum=0)
        groups = as_int(groups, "groups", minimum=1)
        for a in range(D):
            if out_pad[a] >= max(stride[a], dilation[a]):
                raise ValueError(
                    f"output_padding {out_pad} must be smaller than stride {stride} or dilation {dilation} "
                    "on every axis"
                )
        k = kernel.shape[2:]
        out_shape = tuple((n - 1) * s - 2 * p + d * (kk - 1) + op + 1
                          for n, s, p, d, kk, op in zip(in_shape, stride, pad, dilation, k, out_pad))
        if min(out_shape) < 1:
            raise ValueError(f"the output would have shape {out_shape}; padding {pad} is too large")
        self.kernel = kernel
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.padding, self.output_padding = pad, out_pad
        self.in_shape, self.out_shape = in_shape, out_shape
        self.kernel_size = tuple(k)
        self.c_in = kernel.shape[0]
        self.c_out = kernel.shape[1] * groups
        conj = kernel.conj() if kernel.dtype.kind == "c" else kernel
        # the convolution reads a padding (p, p - output_padding) of the output grid; where output_padding
        # exceeds p, the last output_padding - p rows are never written: the convolution's grid stops short
        self._zeros = tuple(max(0, o - p) for o, p in zip(out_pad, pad))
        grid = tuple(m - z for m, z in zip(out_shape, self._zeros))
        if min(grid) < 1:
            raise ValueError(
                f"padding {pad} with output_padding {out_pad} leaves no output entry written (torch returns "
                f"zeros of shape {out_shape}); the zero map is not built as a transposed layer"
            )
        self.conv = ConvND(conj, grid, stride=stride, padding=tuple((p, max(0, p - o)) for p, o in zip(pad, out_pad)),
                           dilation=dilation, groups=groups, method=method)
        if tuple(self.conv.out_shape) != in_shape:  # pragma: no cover - the size formula guarantees it
            raise AssertionError(f"transposed layer: conv output {self.conv.out_shape} != input {in_shape}")
        super().__init__(dims=(self.c_in,) + in_shape, dimsd=(self.c_out,) + out_shape, dtype=kernel.dtype,
                         name="T")

    @property
    def xp(self):
        return self.conv.xp

    def with_kernel(self, kernel):
        """The same layer with another weight of the same shape."""
        return ConvTransposeND(kernel, self.in_shape, stride=self.stride, padding=self.padding,
                               output_padding=self.output_padding, dilation=self.dilation, groups=self.groups,
                               method=self.conv.method)

    def written_rows(self):
        """Flat indices of the output entries the layer can write (the convolution's grid), or None for all of them."""
        if not any(self._zeros):
            return None
        idx = np.arange(self.shape[0]).reshape(self.dimsd)
        return idx[(slice(None),) + tuple(slice(0, m) for m in self.conv.in_shape)].ravel()

    def tosparse(self, format: str = "csr"):
        """The layer as a SciPy sparse matrix (the transpose of the convolution's, zero rows for output padding)."""
        import scipy.sparse as sp

        A = self.conv.geometry.sparse_matrix(self.conv.kernel).T.conj().tocoo()
        rows = self.written_rows()
        if rows is not None:
            A = sp.coo_matrix((A.data, (rows[A.row], A.col)), shape=self.shape)
        return A.asformat(format)

    def _forward(self, X):
        Y = self.conv._backward(X)
        if not any(self._zeros):
            return Y
        xp = get_xp(Y)
        out = xp.zeros(self.dimsd + (Y.shape[1],), dtype=Y.dtype)
        out[(slice(None),) + tuple(slice(0, m) for m in self.conv.in_shape)] = Y.reshape(
            (self.c_out,) + self.conv.in_shape + (Y.shape[1],))
        return out.reshape(self.shape[0], -1)

    def _backward(self, Y):
        if any(self._zeros):
            Yg = Y.reshape(self.dimsd + (Y.shape[1],))[(slice(None),) + tuple(slice(0, m) for m in self.conv.in_shape)]
            Y = get_xp(Y).ascontiguousarray(Yg).reshape(-1, Y.shape[1])
        return self.conv._forward(Y)

    def jacobian(self, x):
        """Jacobian of ``W -> T(W) x``: ``dW -> T(dW) x``, a linear operator on ``kernel.shape``.

        Its adjoint is the weight gradient: for the convolution ``A`` of
        this layer, ``<T(dW) x, y> = <dW, G>`` with ``G`` the weight gradient
        of ``A`` at the input ``y`` and output-space direction ``x``
        (``conv.jacobian(y).H @ x``, conjugated for complex weights).
        """
        X, batched = split_batch(x, self.dims, self.shape[1], "x")
        return _TransposeKernelJacobian(self, X, batched)


class _TransposeKernelJacobian(StructuredOperator):
    """``dW -> ConvTransposeND(dW) X`` for a fixed input batch ``X``."""

    def __init__(self, layer: ConvTransposeND, X, batched: bool):
        self.layer, self.X, self.batched = layer, X, batched
        self.B = X.shape[1]
        dtype = result_dtype(layer.kernel, X)
        dimsd = layer.dimsd + ((self.B,) if batched else ())
        super().__init__(dims=layer.kernel.shape, dimsd=dimsd, dtype=dtype, name="J")

    @property
    def xp(self):
        return self.layer.xp

    def _forward(self, dW):
        xp, layer = self.xp, self.layer
        cols = []
        for j in range(dW.shape[1]):
            Y = layer.with_kernel(dW[:, j].reshape(layer.kernel.shape)) @ self.X
            cols.append(Y.reshape(-1))
        return xp.stack(cols, axis=1) if cols else xp.zeros((self.shape[0], 0), dtype=self.dtype)

    def _backward(self, W):
        xp, layer = self.xp, self.layer
        cols = []
        for j in range(W.shape[1]):
            Yj = W[:, j].reshape(layer.shape[0], self.B)
            if any(layer._zeros):  # the rows the layer never writes
                Yj = xp.ascontiguousarray(Yj.reshape(layer.dimsd + (self.B,))[
                    (slice(None),) + tuple(slice(0, m) for m in layer.conv.in_shape)]).reshape(-1, self.B)
            # <T(dW) x, y> = <x, conv(conj dW) y> = <conv.jacobian(y) dW', x>, dW' = conj(dW)
            G = layer.conv.jacobian(Yj).H @ self.X.reshape(-1)
            cols.append(G.conj() if G.dtype.kind == "c" else G)
        return xp.stack(cols, axis=1) if cols else xp.zeros((self.shape[1], 0), dtype=self.dtype)


class ConvTranspose1D(ConvTransposeND):
    """1-D transposed convolution: weight ``(c_in, c_out / groups, k)``, input ``(c_in, n)``.

    See :class:`ConvTransposeND`.
    """

    def __init__(self, kernel, n, stride=1, padding=0, output_padding=0, dilation=1, groups=1, method="auto"):
        if hasattr(kernel, "ndim") and kernel.ndim != 3:
            raise ValueError(f"ConvTranspose1D needs a kernel of shape (c_in, c_out / groups, k); got {kernel.shape}")
        super().__init__(kernel, (n,) if isinstance(n, int) else n, stride, padding, output_padding, dilation,
                         groups, method)


class ConvTranspose2D(ConvTransposeND):
    """2-D transposed convolution: weight ``(c_in, c_out / groups, kh, kw)``, input ``(c_in, H, W)``.

    See :class:`ConvTransposeND`.
    """

    def __init__(self, kernel, in_shape, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                 method="auto"):
        if hasattr(kernel, "ndim") and kernel.ndim != 4:
            raise ValueError(f"ConvTranspose2D needs a kernel of shape (c_in, c_out / groups, kh, kw); got {kernel.shape}")
        super().__init__(kernel, in_shape, stride, padding, output_padding, dilation, groups, method)


class ConvTranspose3D(ConvTransposeND):
    """3-D transposed convolution: weight ``(c_in, c_out / groups, kd, kh, kw)``.

    See :class:`ConvTransposeND`.
    """

    def __init__(self, kernel, in_shape, stride=1, padding=0, output_padding=0, dilation=1, groups=1,
                 method="auto"):
        if hasattr(kernel, "ndim") and kernel.ndim != 5:
            raise ValueError(f"ConvTranspose3D needs a kernel of shape (c_in, c_out / groups, kd, kh, kw); got {kernel.shape}")
        super().__init__(kernel, in_shape, stride, padding, output_padding, dilation, groups, method)

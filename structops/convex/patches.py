"""Patch operators: ``u -> (X_1 u, ..., X_K u)`` for a batch of images.

The patch matrix ``X_k`` of a batch holds, row ``i``, the pixels of image ``i``
that a filter at position ``k`` reads. Stacking ``X_k u`` over positions is a
convolution of the data with the one-channel filter ``u``, so the operator is the
kernel Jacobian of a :class:`~structops.ConvND` at the data (matrix-free), or,
when it fits the memory budget, one product with the explicit patch tensor.
"""

from __future__ import annotations

import numpy as np

from .._backend import get_xp
from .._validate import as_data_array, check_memory, result_dtype
from ..operators.base import StructuredOperator
from ..operators.conv import ConvND
from ..operators.geometry import ConvGeometry

__all__ = ["PatchOperator", "PATCH_TENSOR_BYTES", "patch_tensor", "average_pooling_matrix"]

# the explicit patch tensor is formed when it takes at most this many bytes
PATCH_TENSOR_BYTES = 256 * 2**20


class PatchOperator(StructuredOperator):
    """``u -> [X_1 u; ...; X_K u]``: a filter's responses at every patch of every image.

    Parameters
    ----------
    X : array, shape ``(n, c, *spatial)`` or ``(n, d)``
        ``n`` images with ``c`` channels (NumPy or CuPy); ``(n, d)`` is ``n``
        one-channel signals of length ``d``.
    kernel_size : int or tuple of int
        The filter's spatial size (an int is used along every axis).
    stride, padding, dilation
        As in :class:`~structops.ConvND`; ``padding`` defaults to ``0`` (patches
        inside the images, as in Ergen and Pilanci 2021).
    method : {"auto", "patches", "conv"}
        ``"patches"`` forms the patch tensor ``(K, n, h)`` once and multiplies by
        it; ``"conv"`` is matrix-free (the kernel Jacobian of a convolution at
        the data); ``"auto"`` takes ``"patches"`` when the tensor needs at most
        :data:`PATCH_TENSOR_BYTES`.

    Notes
    -----
    ``dims = (c, *kernel_size)`` (``h`` entries, a filter in the kernel layout
    of :class:`~structops.ConvND`), ``dimsd = (K, n)``: row ``k`` of the output
    is ``X_k u`` with ``K = prod(out_shape)`` patch positions in C order. A
    batch of ``P`` filters (``matmat`` of ``(h, P)``) is one product: a
    ``P``-channel convolution. The adjoint maps responses back to filter
    gradients, ``R -> sum_k X_k^T R_k``.

    Examples
    --------
    >>> import numpy as np, structops
    >>> X = np.arange(12.0).reshape(2, 6)            # two signals of length 6
    >>> A = structops.convex.PatchOperator(X, 3, stride=3)
    >>> A.dimsd                                      # 2 patches, 2 signals
    (2, 2)
    >>> (A @ np.array([1.0, 0.0, 0.0])).reshape(A.dimsd)   # first pixel of each patch
    array([[0., 6.],
           [3., 9.]])
    """

    def __init__(self, X, kernel_size, stride=1, padding=0, dilation=1, method="auto"):
        X = as_data_array(X, "X")
        if X.dtype.kind not in "fc":
            X = X.astype(np.float64)
        if X.ndim == 2:
            X = X[:, None, :]
        if X.ndim < 3:
            raise ValueError(f"X needs shape (n, c, *spatial) or (n, d); got {tuple(X.shape)}")
        n, c, spatial = X.shape[0], X.shape[1], tuple(X.shape[2:])
        D = len(spatial)
        k = (int(kernel_size),) * D if np.isscalar(kernel_size) else tuple(int(v) for v in kernel_size)
        if len(k) != D:
            raise ValueError(f"kernel_size {kernel_size} has {len(k)} axes; the images have {D}")
        if method not in ("auto", "patches", "conv"):
            raise ValueError(f"method must be 'auto', 'patches' or 'conv'; got {method!r}")
        self.xp = get_xp(X)
        self.geometry = ConvGeometry((1, c) + k, spatial, stride=stride, padding=padding, dilation=dilation)
        self.n, self.c, self.kernel_size, self.in_shape = n, c, k, spatial
        self._padding = padding
        self.out_shape = self.geometry.out_shape
        self.K = int(np.prod(self.out_shape))
        self.h = c * int(np.prod(k))
        nbytes = float(self.K) * n * self.h * X.dtype.itemsize
        if method == "auto":
            method = "patches" if nbytes <= PATCH_TENSOR_BYTES else "conv"
        self.method = method
        self.data = X
        if method == "patches":
            check_memory(nbytes, "the patch tensor")
            self._T = patch_tensor(X, self.geometry).reshape(self.K * n, self.h)
        else:
            self._layer = ConvND(self.xp.zeros((1, c) + k, dtype=X.dtype), spatial, stride=self.geometry.stride,
                                 padding=padding, dilation=self.geometry.dilation, method="direct")
            self._J = self._layer.jacobian(X.reshape(n, -1).T)
        super().__init__(dims=(c,) + k, dimsd=(self.K, n), dtype=X.dtype, name="X")

    def on(self, X, method=None):
        """The patch operator of other images ``X`` with the same filter geometry (``method``: this one's)."""
        geo = self.geometry
        return PatchOperator(X, self.kernel_size, stride=geo.stride, padding=self._padding, dilation=geo.dilation,
                             method=self.method if method is None else method)

    def rows(self, index):
        """The patch operator of the images ``X[index]``."""
        return self.on(self.data[index])

    def _forward(self, U):
        self._check_input(U, self.h, self.data)
        if self.method == "patches":
            return self._T @ U.astype(result_dtype(self._T, U), copy=False)
        return self._J.matmat(U)

    def _backward(self, R):
        self._check_input(R, self.K * self.n, self.data)
        if self.method == "patches":
            T = self._T.conj() if self._T.dtype.kind == "c" else self._T
            return T.T @ R.astype(result_dtype(self._T, R), copy=False)
        return self._J.rmatmat(R)

    def responses(self, C):
        """``Z[k, i, j] = (X_k c_j)_i`` for filters ``C`` of shape ``(P, h)`` (or ``(P, c, *k)``): ``(K, n, P)``."""
        C = self.xp.asarray(C).reshape(-1, self.h)
        return self.matmat(C.T).reshape(self.K, self.n, C.shape[0])

    def gradients(self, R):
        """Adjoint of :meth:`responses`: ``(K, n, P)`` -> ``(P, h)``, ``G_j = sum_k X_k^T R[k, :, j]``."""
        P = R.shape[-1]
        return self.rmatmat(R.reshape(self.K * self.n, P)).T


def patch_tensor(X, geo: ConvGeometry):
    """The patches of every image, ``(K, n, h)``, built directly from strided windows of the padded data.

    Parameters
    ----------
    X : array, shape ``(n, c, *spatial)``
    geo : ConvGeometry
        The one-output-channel geometry of the patches.

    Returns
    -------
    array, shape ``(K, n, h)``
        ``T[k, i] =`` the pixels of image ``i`` under position ``k``, in the
        order ``(c, *kernel_size)`` of a filter.
    """
    xp = get_xp(X)
    n, c = X.shape[:2]
    D = geo.ndim
    pad = [(0, 0), (0, 0)] + [tuple(p) for p in geo.padding]
    Xp = xp.pad(X, pad, mode="wrap" if geo.circular else "constant")
    extent = tuple(d * (k - 1) + 1 for k, d in zip(geo.kernel_size, geo.dilation))
    W = xp.lib.stride_tricks.sliding_window_view(Xp, extent, axis=tuple(range(2, 2 + D)))
    # W: (n, c, *positions, *extent) -> strided positions, dilated taps
    sl = (slice(None), slice(None))
    sl += tuple(slice(0, o * s, s) for o, s in zip(geo.out_shape, geo.stride))
    sl += tuple(slice(None, None, d) for d in geo.dilation)
    W = W[sl]
    perm = tuple(range(2, 2 + D)) + (0, 1) + tuple(range(2 + D, 2 + 2 * D))
    h = c * int(np.prod(geo.kernel_size))
    return xp.ascontiguousarray(W.transpose(perm)).reshape(int(np.prod(geo.out_shape)), n, h)


def average_pooling_matrix(grid, pool):
    """Average pooling of a grid by non-overlapping windows: ``(Q, pooled grid)``, ``Q`` of shape ``(K', K)``.

    ``grid`` and ``pool`` are tuples of sizes; windows at the far edges may be
    partial (their mean is over the cells they hold).
    """
    grid, pool = tuple(int(g) for g in grid), tuple(int(p) for p in pool)
    out = tuple(-(-g // p) for g, p in zip(grid, pool))
    Q = np.zeros((int(np.prod(out)), int(np.prod(grid))))
    for idx in np.ndindex(*grid):
        o = np.ravel_multi_index(tuple(i // p for i, p in zip(idx, pool)), out)
        Q[o, np.ravel_multi_index(idx, grid)] = 1.0
    return Q / Q.sum(axis=1, keepdims=True), out

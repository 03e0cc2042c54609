"""Preconditioners for the normal equations ``(A^T A + damp2 I) x = b`` of convolution layers.

Each function returns ``M(X)``, an approximation (exact in the cases named)
of ``(scale A^T A + damp2 I)^{-1} X`` for a block ``X`` of shape ``(N, k)``:

- :func:`conv_preconditioner`: the block-circulant inverse through the
  layer's periodic symbol (exact for circular padding, stride 1);
- :func:`normal_preconditioner`: the sparse Cholesky factor of the banded
  normal matrix of a zero-padded layer (exact).
"""

from __future__ import annotations

import numpy as np

from .._backend import get_fft, get_xp, to_numpy
from ..operators.conv import ConvND, require_ungrouped
from .normal import normal_solver

__all__ = ["conv_preconditioner", "normal_preconditioner"]


def conv_preconditioner(op, damp2: float = 0.0, scale: float = 1.0):
    r"""Circulant approximation of ``(scale K^T K + damp2 I)^{-1}`` for a stride-1 conv layer.

    Parameters
    ----------
    op : structops.ConvND
        Stride 1, any padding; exact inverse for ``padding="circular"``.
    damp2 : float
        ``lambda`` of a Tikhonov term ``lambda ||w||^2`` (must be > 0 if the
        kernel symbol vanishes somewhere).
    scale : float
        Row weight of the data term (e.g. the mean squared weight).

    Returns
    -------
    callable
        ``M(X)`` for ``X`` of shape ``(c_in * N, k)``.

    Notes
    -----
    With the taps placed at ``(lo - d \cdot dilation) mod n`` of the periodic
    input grid, the circular layer is ``y_o = sum_i g_{oi} * x_i`` and its
    symbol ``H(xi) = fft(g)(xi)`` is a ``c_out x c_in`` matrix per frequency;
    ``M`` solves ``(scale H^H H + damp2 I) z = x`` frequency by frequency.
    """

    if not isinstance(op, ConvND) or any(s != 1 for s in op.stride):
        raise TypeError("conv_preconditioner needs a structops ConvND with stride 1")
    require_ungrouped(op, "conv_preconditioner")
    xp = get_xp(op.kernel)
    fft = get_fft(xp)
    n = tuple(op.in_shape)
    D = len(n)
    K = op.kernel
    # the layer's symbol on the periodic input grid; taps that wrap onto one slot are summed
    H = op.geometry.symbol(K.astype(np.result_type(K.dtype, np.float64), copy=False), real=False)  # (F, co, ci)
    G = scale * xp.matmul(H.conj().transpose(0, 2, 1), H) + damp2 * xp.eye(K.shape[1])
    tiny = 1e-12 * float(xp.abs(G).max())
    Ginv = xp.linalg.inv(G + tiny * xp.eye(K.shape[1]))
    ci = K.shape[1]

    def M(X):
        k = X.shape[1]
        x = xp.moveaxis(X.reshape((ci,) + n + (k,)), -1, 1)  # (ci, k, *n)
        Xf = fft.fftn(x, axes=tuple(range(2, 2 + D))).reshape(ci, k, -1).transpose(2, 0, 1)  # (F, ci, k)
        Zf = xp.matmul(Ginv, Xf).transpose(1, 2, 0).reshape((ci, k) + n)
        z = fft.ifftn(Zf, axes=tuple(range(2, 2 + D))).real
        return xp.moveaxis(z, 1, -1).reshape(ci * int(np.prod(n)), k).astype(X.dtype, copy=False)

    return M


def normal_preconditioner(op, damp2: float = 0.0, scale: float = 1.0):
    r"""Exact ``(scale K^T K + damp2 I)^{-1}`` for a zero-padded conv layer, by sparse Cholesky.

    The banded normal matrix of the layer is assembled from the kernel and
    factorised (see :func:`structops.linalg.normal.normal_solver`): for unweighted
    problems with ``L = I`` the preconditioned CG converges in one iteration;
    with row weights (``scale`` their mean square) it is an approximation.

    Parameters
    ----------
    op : structops.ConvND
        Zero padding, real kernel, any stride and dilation.
    damp2, scale : float
        As in :func:`conv_preconditioner`.

    Returns
    -------
    callable
        ``M(X)`` for ``X`` of shape ``(c_in * N, k)``.
    """

    require_ungrouped(op, "normal_preconditioner")
    xp = get_xp(op.kernel)
    solve = normal_solver(op, shift=damp2 / scale)

    def M(X):
        return xp.asarray(solve(to_numpy(X)) / scale, dtype=X.dtype)

    return M

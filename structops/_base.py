"""Base class of every structops operator.

A structured operator implements two batched products on 2-D arrays,
``_forward(X)`` with ``X`` of shape ``(N, B)`` and ``_backward(Y)`` with ``Y`` of
shape ``(M, B)`` (the adjoint); matrix-vector products are the ``B = 1`` case,
so a batch of images is always one vectorised call.
"""

from __future__ import annotations

import numpy as np
from pylops import LinearOperator
from scipy.sparse import issparse

from ._backend import blas_threads, get_xp

__all__ = ["StructuredOperator", "split_batch"]


def split_batch(x, dims, n: int, what: str = "x"):
    """Interpret ``x`` as one vector or as a batch of vectors of length ``n``.

    Parameters
    ----------
    x : array
        ``(n,)``, ``dims``, ``(n, B)`` or ``(*dims, B)``.
    dims : tuple of int
        Shape of one vector as an N-D array.
    n : int
        ``prod(dims)``.

    Returns
    -------
    X : array, shape ``(n, B)``
        A view of ``x`` where possible.
    batched : bool
        Whether ``x`` carried a batch axis.
    """
    shape = tuple(x.shape)
    if shape == (n,) or shape == tuple(dims):
        return x.reshape(n, 1), False
    if x.ndim == 2 and shape[0] == n:
        return x, True
    if x.ndim == len(dims) + 1 and shape[:-1] == tuple(dims):
        return x.reshape(n, shape[-1]), True
    raise ValueError(
        f"{what} has shape {shape}; expected ({n},), {tuple(dims)}, ({n}, B) "
        f"or {tuple(dims) + ('B',)}"
    )


def _dense(X):
    """A scipy.sparse block (e.g. the identity of ``todense()``) as a dense array."""
    return X.toarray() if issparse(X) else X


class StructuredOperator(LinearOperator):
    """A ``pylops.LinearOperator`` with vectorised batched products.

    Subclasses call ``super().__init__(dims=..., dimsd=..., dtype=...)`` and
    implement ``_forward(X)`` and ``_backward(Y)`` on 2-D arrays (one column per
    vector). They may implement ``jacobian(x)``.
    """

    def __init__(self, dims, dimsd, dtype, name: str = "S"):
        super().__init__(dtype=np.dtype(dtype), dims=tuple(dims), dimsd=tuple(dimsd), name=name)

    # -- the two products every subclass implements -------------------------
    def _forward(self, X):  # pragma: no cover - abstract
        raise NotImplementedError

    def _backward(self, Y):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- pylops plumbing ----------------------------------------------------
    def _matvec(self, x):
        with blas_threads():
            return self._forward(x.reshape(-1, 1)).reshape(-1)

    def _rmatvec(self, y):
        with blas_threads():
            return self._backward(y.reshape(-1, 1)).reshape(-1)

    def _matmat(self, X):
        with blas_threads():
            return self._forward(_dense(X))

    def _rmatmat(self, Y):
        with blas_threads():
            return self._backward(_dense(Y))

    def _check_input(self, X, n: int, *params):
        """Common checks on a 2-D input: backend agreement and length."""
        get_xp(X, *params)
        if X.ndim != 2 or X.shape[0] != n:
            raise ValueError(f"input has shape {tuple(X.shape)}; expected ({n}, B)")

    def jacobian(self, x):
        """Jacobian of ``theta -> A(theta) x`` with respect to the parameters.

        Returns a ``LinearOperator`` from parameter space to output space; its
        adjoint maps an output-space vector to the parameter gradient.
        """
        raise NotImplementedError(f"{type(self).__name__} has no parameter Jacobian")

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__}: {self.shape[0]}x{self.shape[1]}, dims={self.dims}, "
            f"dimsd={self.dimsd}, dtype={self.dtype}>"
        )

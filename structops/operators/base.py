"""Base class of every structops operator.

A structured operator implements two batched products on 2-D arrays,
``_forward(X)`` with ``X`` of shape ``(N, B)`` and ``_backward(Y)`` with ``Y`` of
shape ``(M, B)`` (the adjoint); matrix-vector products are the ``B = 1`` case,
so a batch of images is always one vectorised call.
"""

from __future__ import annotations

import importlib
import types

import numpy as np
from pylops import LinearOperator, get_ndarray_multiplication
from scipy.sparse import issparse

from .._backend import blas_threads, get_xp
from .._validate import as_data_array, result_dtype

__all__ = ["StructuredOperator", "FunctionOperator", "FixedParameter", "fixed_parameters", "split_batch"]


class FixedParameter:
    """An operator's parameter (a layer's kernel, a circulant's column), set once, when the operator is made.

    Operators keep data derived from their parameters (the kernel laid out for
    the products, spectra, torch tensors), so a later assignment would reach
    some products and not others: it raises ``AttributeError`` instead. A new
    operator takes the new value (``op.with_kernel(K)`` for a layer).

    Examples
    --------
    >>> import numpy as np, structops
    >>> op = structops.Circulant(np.array([1.0, 2.0, 3.0]))
    >>> op.c = np.zeros(3)
    Traceback (most recent call last):
    ...
    AttributeError: Circulant.c is fixed when the operator is made (its products keep data derived from it): make a new operator with the new value
    """

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute {self.name!r}") from None

    def __set__(self, obj, value):
        if self.name in obj.__dict__:
            hint = "; op.with_kernel(K) gives the layer with another kernel" if self.name == "kernel" else ""
            raise AttributeError(
                f"{type(obj).__name__}.{self.name} is fixed when the operator is made (its products keep data "
                f"derived from it): make a new operator with the new value{hint}"
            )
        obj.__dict__[self.name] = value

    def __delete__(self, obj):
        raise AttributeError(f"{type(obj).__name__}.{self.name} is fixed when the operator is made")


def fixed_parameters(*names: str):
    """Class decorator: the attributes ``names`` are :class:`FixedParameter` s of the class."""

    def decorate(cls):
        for name in names:
            descriptor = FixedParameter()
            descriptor.__set_name__(cls, name)
            setattr(cls, name, descriptor)
        return cls

    return decorate


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
    x = as_data_array(x, what)
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
    def _threads(self, X, adjoint: bool = False):
        """The context a product (``adjoint``: the adjoint) with ``X`` runs in: the package's BLAS thread count
        (:func:`set_blas_threads`).

        Subclasses whose product does not call BLAS for ``X`` may return a
        ``contextlib.nullcontext()`` (setting the count costs about 15 us).
        """
        return blas_threads()

    def _matvec(self, x):
        with self._threads(x):
            return self._forward(x.reshape(-1, 1)).reshape(-1)

    def _rmatvec(self, y):
        with self._threads(y, True):
            return self._backward(y.reshape(-1, 1)).reshape(-1)

    def _matmat(self, X):
        X = _dense(X)
        if X.shape[1] == 0:
            return self._empty(X, self.shape[0])
        with self._threads(X):
            return self._forward(X)

    def _rmatmat(self, Y):
        Y = _dense(Y)
        if Y.shape[1] == 0:
            return self._empty(Y, self.shape[1])
        with self._threads(Y, True):
            return self._backward(Y)

    def _empty(self, X, rows: int):
        """The ``(rows, 0)`` result of a product with an empty batch."""
        xp = get_xp(X)
        return xp.zeros((rows, 0), dtype=result_dtype(np.empty(0, self.dtype), X))

    # -- array-likes in: converted once, as NumPy would ------------------------
    def matvec(self, x):
        if type(x) is np.ndarray and x.shape == (self.shape[1],) and x.dtype.kind in "biufc":
            # pylops' matvec for a flat NumPy vector, without its wrappers (a few microseconds, against a
            # product of a hundred or two for a small layer)
            y = self._matvec(x).reshape(self.shape[0])
            self.matvec_count += 1
            return y
        return super().matvec(as_data_array(x, "x"))

    def rmatvec(self, y):
        if type(y) is np.ndarray and y.shape == (self.shape[0],) and y.dtype.kind in "biufc":
            x = self._rmatvec(y).reshape(self.shape[1])
            self.rmatvec_count += 1
            return x
        return super().rmatvec(as_data_array(y, "y"))

    def matmat(self, X):
        return super().matmat(X if issparse(X) else as_data_array(X, "X"))

    def rmatmat(self, Y):
        return super().rmatmat(Y if issparse(Y) else as_data_array(Y, "Y"))

    def dot(self, x):
        if type(x) is np.ndarray and x.ndim == 1 and x.shape[0] == self.shape[1] and len(self.dims) > 1:
            # a flat vector (never dims-shaped here): what pylops' dot and matvec do, without their
            # dispatch, which is tens of microseconds against a few hundred for a small layer's product
            if x.dtype.kind not in "biufc":
                raise TypeError(f"x has dtype {x.dtype}; expected a numeric array")
            self.matvec_count += 1
            return self._matvec(x).reshape(self.shape[0])
        if not (isinstance(x, LinearOperator) or np.isscalar(x) or issparse(x) or hasattr(x, "matvec")):
            x = as_data_array(x, "x")
            nd = get_ndarray_multiplication()
            if x.shape[-1:] == (0,) and x.shape[:-1] in ((self.shape[1],), tuple(self.dims)) and (x.ndim == 2 or nd):
                # an empty batch, which pylops cannot reshape; shaped as pylops shapes a batch
                Y = self.matmat(x.reshape(self.shape[1], 0))
                return Y.reshape(tuple(self.dimsd) + (0,)) if x.ndim > 2 and nd and not self.forceflat else Y
        return super().dot(x)

    def _adjoint(self):
        return _AdjointOperator(self)

    # -- pickling: array modules travel by name --------------------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_symbol_values", None)  # the spectra's memo (structops.linalg.circular.symbol_of)
        for k, v in state.items():
            if isinstance(v, types.ModuleType):
                state[k] = _ModuleRef(v.__name__)
        return state

    def __setstate__(self, state):
        self.__dict__.update({k: importlib.import_module(v.name) if isinstance(v, _ModuleRef) else v
                              for k, v in state.items()})

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


class _ModuleRef:
    """A module in a pickled operator's state, by name."""

    def __init__(self, name: str):
        self.name = name


class _AdjointOperator(StructuredOperator):
    """``op.H`` of a structured operator: the same batched products, swapped (and the same input handling)."""

    def __init__(self, op: StructuredOperator):
        self.op = op
        super().__init__(dims=op.dimsd, dimsd=op.dims, dtype=op.dtype, name=f"{op.name}^H")

    @property
    def xp(self):
        return getattr(self.op, "xp", np)

    def _forward(self, X):
        return self.op._backward(X)

    def _backward(self, Y):
        return self.op._forward(Y)

    def _adjoint(self):
        return self.op


class FunctionOperator(StructuredOperator):
    """A structured operator from two batched callables.

    Parameters
    ----------
    forward, backward : callable
        ``forward(X)`` maps ``(N, k)`` to ``(M, k)``; ``backward(Y)`` maps
        ``(M, k)`` to ``(N, k)`` and must be the adjoint of ``forward``.
    dims, dimsd : tuple of int
    dtype : dtype
    xp : module, optional
        Array module of the products (for the testing helpers).
    """

    def __init__(self, forward, backward, dims, dimsd, dtype, xp=np, name="F"):
        self._f, self._b = forward, backward
        self.xp = xp
        super().__init__(dims=dims, dimsd=dimsd, dtype=dtype, name=name)

    def _forward(self, X):
        return self._f(X)

    def _backward(self, Y):
        return self._b(Y)

r"""Linear parametric models ``K(theta) = mat(Q theta)`` (and their affine shifts).

A parametric model maps a parameter vector ``theta`` of length ``p`` to a
linear operator ``K(theta)``. Every model here is linear (or affine, with a
fixed ``offset``) in ``theta``,

.. math::

    K(\theta) = K_0 + \operatorname{mat}(Q \theta),

so the derivative of ``K(theta) x`` with respect to ``theta`` does not depend on
``theta``: it is ``v -> mat(Q v) x``, and its adjoint is
``w -> Q^T vec(w x^T)``. The matrix ``Q`` is never formed unless asked for
(:meth:`ParametricModel.dense_basis`): each model applies ``mat(Q v)`` and
``Q^T vec(G)`` by its structure.

Models
------
:func:`diagonal`
    ``K = diag(theta)``, ``p = n``.
:func:`antisymmetric`
    ``K = -K^T``, the strict upper triangle row by row, ``p = n (n - 1) / 2``.
:func:`mmatrix`
    Off-diagonal entries ``-theta``, row by row, diagonal the row sums, so rows
    sum to zero; an M-matrix (a graph Laplacian) for ``theta >= 0``,
    ``p = n (n - 1)``.
:func:`full`
    ``K = mat(theta)``, ``Q = I`` (a dense layer).
:func:`from_basis`
    A user ``Q`` (dense array, SciPy sparse matrix or LinearOperator).
:func:`conv`
    A convolution layer whose kernel is ``offset + reshape(Q theta)``
    (``Q = I`` by default): :class:`~structops.ConvND` products, Jacobian by
    the layer's weight gradient.

Every ``model.operator(theta)`` is a :class:`~structops.StructuredOperator`
with batched products, ``jacobian(x)`` (``v -> mat(Q v) x``, an operator from
parameter space to output space, for ``x`` of shape ``(n,)`` or a batch
``(n, B)``) and ``adjoint_jacobian(y)`` (``v -> mat(Q v)^H y``), the second
derivative piece variable projection needs.

Conventions
-----------
``vec`` stacks columns (column-major, as in the lecture notes "Residual CNNs and their relation to PDEs" this module
follows), so that ``mmatrix(3).dense_basis()`` is the notes' ``9 x 6`` matrix;
pass ``order="C"`` for row-major stacking. Matrices act on vectors ``x`` of
length ``n`` or batches ``X`` of shape ``(n, B)``.
"""

from __future__ import annotations

import numpy as np
from pylops import LinearOperator

from .._backend import get_xp
from .._validate import as_int, as_param_array, result_dtype
from .base import FunctionOperator, StructuredOperator, fixed_parameters, split_batch
from .conv import ConvND, resolve_method
from .geometry import ConvGeometry

__all__ = [
    "ParametricModel",
    "MatrixModel",
    "ConvModel",
    "MatrixModelOperator",
    "ParametricConvND",
    "diagonal",
    "antisymmetric",
    "mmatrix",
    "full",
    "from_basis",
    "conv",
]


# ---------------------------------------------------------------- helpers
def _as_theta(theta, p: int, name: str = "theta"):
    theta = as_param_array(theta, name)
    if theta.size != p:
        raise ValueError(f"{name} has {theta.size} entries (shape {tuple(theta.shape)}); expected {p}")
    return theta.reshape(p)


def _check_dirs(V, p: int, what: str = "parameter direction"):
    if V.ndim != 2 or V.shape[0] != p:
        raise ValueError(f"{what} has shape {tuple(V.shape)}; expected ({p}, k)")


class ParametricModel:
    """Base class: a map ``theta -> K(theta)`` that is affine in ``theta``.

    Attributes
    ----------
    num_params : int
        ``p``, the length of ``theta``.
    dims, dimsd : tuple of int
        Shapes of one input and one output of ``K(theta)``.
    """

    num_params: int
    dims: tuple
    dimsd: tuple

    def operator(self, theta):  # pragma: no cover - abstract
        """``K(theta)`` as a :class:`~structops.StructuredOperator`."""
        raise NotImplementedError

    def init_params(self, rng=None, scale: float = 1.0, dtype=np.float64, xp=np):
        """Random ``theta``: ``scale / sqrt(fan_in)`` times standard normal entries."""
        rng = np.random.default_rng(rng)
        fan_in = max(int(np.prod(self.dims)) if not hasattr(self, "fan_in") else self.fan_in, 1)
        t = rng.standard_normal(self.num_params) * (scale / np.sqrt(fan_in))
        return xp.asarray(t.astype(dtype))

    def dense_basis(self, order: str = "F", dtype=np.float64):
        """The matrix ``Q`` with ``vec(K(theta) - K_0) = Q theta`` (formed densely: small models only).

        Parameters
        ----------
        order : {"F", "C"}
            Column-major (``"F"``, the notes' ``vec``) or row-major stacking.

        Returns
        -------
        Q : ndarray, shape ``(M * N, p)``
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: p={self.num_params}, dims={self.dims}, dimsd={self.dimsd}>"


# ------------------------------------------------------------ matrix models
class MatrixModel(ParametricModel):
    r"""A model ``K(theta) = K_0 + mat(Q theta)`` of ``(m, n)`` matrices.

    Subclasses implement two structured maps (never forming ``Q``):

    * :meth:`assemble`: directions ``V`` of shape ``(p, k)`` to the matrices
      ``mat(Q v_j)``, shape ``(k, m, n)``;
    * :meth:`contract`: matrices ``G`` of shape ``(k, m, n)`` to
      ``Q^T vec(G_j)``, shape ``(p, k)`` (the adjoint of :meth:`assemble`).

    Notes
    -----
    With ``X`` of shape ``(n, B)``, the Jacobian of ``theta -> K(theta) X`` and
    its adjoint are

    .. math::

        J v = \operatorname{mat}(Q v) X, \qquad J^H W = Q^T \operatorname{vec}(W X^H),

    and the derivative of ``theta -> K(theta)^H Y`` is
    ``v -> mat(Q v)^H Y`` with adjoint ``Z -> Q^T vec(Y Z^H)``.
    """

    def __init__(self, shape, num_params: int, offset=None):
        m, n = (int(s) for s in shape)
        self.shape = (m, n)
        self.num_params = int(num_params)
        self.dims, self.dimsd = (n,), (m,)
        self.fan_in = n
        if offset is not None:
            offset = as_param_array(offset, "offset", ndim=2)
            if tuple(offset.shape) != self.shape:
                raise ValueError(f"offset has shape {tuple(offset.shape)}; expected {self.shape}")
        self.offset = offset

    def assemble(self, V):  # pragma: no cover - abstract
        raise NotImplementedError

    def contract(self, G):  # pragma: no cover - abstract
        raise NotImplementedError

    def matrix(self, theta):
        """``K(theta)`` as a dense ``(m, n)`` array (the operator, not ``Q``)."""
        theta = _as_theta(theta, self.num_params)
        K = self.assemble(theta.reshape(-1, 1))[0]
        if self.offset is not None:
            K = K + self.offset
        return K

    def operator(self, theta):
        """``K(theta)`` as a :class:`MatrixModelOperator` (``dims=(n,)``, ``dimsd=(m,)``)."""
        return MatrixModelOperator(self, _as_theta(theta, self.num_params))

    def dense_basis(self, order: str = "F", dtype=np.float64):
        if order not in ("F", "C"):
            raise ValueError(f"order must be 'F' or 'C'; got {order!r}")
        mats = self.assemble(np.eye(self.num_params, dtype=dtype))  # (p, m, n)
        if order == "F":
            mats = mats.transpose(0, 2, 1)
        return np.ascontiguousarray(mats.reshape(self.num_params, -1).T)

    # products used by the operator; subclasses may specialise them
    def _apply(self, K, theta, X, adjoint: bool):
        return (K.conj().T if adjoint else K) @ X

    def _jac_forward(self, V, X):
        """``mat(Q v_j) X`` for directions ``V (p, k)``: ``(m * B, k)``."""
        xp = get_xp(V, X)
        M = self.assemble(V)  # (k, m, n)
        out = xp.matmul(M, X)  # (k, m, B)
        return out.reshape(V.shape[1], -1).T

    def _jac_adjoint(self, W, X):
        """``Q^T vec(W_j X^H)`` for ``W (m * B, k)``: ``(p, k)``."""
        xp = get_xp(W, X)
        k = W.shape[1]
        Wk = W.T.reshape(k, self.shape[0], X.shape[1])
        G = xp.matmul(Wk, X.conj().T)  # (k, m, n)
        return self.contract(G)

    def _ajac_forward(self, V, Y):
        """``mat(Q v_j)^H Y`` for ``Y (m, B)``: ``(n * B, k)``."""
        xp = get_xp(V, Y)
        M = self.assemble(V)
        out = xp.matmul(M.conj().transpose(0, 2, 1), Y)  # (k, n, B)
        return out.reshape(V.shape[1], -1).T

    def _ajac_adjoint(self, Z, Y):
        """Adjoint of :meth:`_ajac_forward`: ``Q^T vec(Y Z_j^H)``, ``(p, k)``."""
        xp = get_xp(Z, Y)
        k = Z.shape[1]
        Zk = Z.T.reshape(k, self.shape[1], Y.shape[1])
        G = xp.matmul(Y, Zk.conj().transpose(0, 2, 1))  # (k, m, n)
        return self.contract(G)


@fixed_parameters("model", "theta")
class MatrixModelOperator(StructuredOperator):
    """``K(theta)`` of a :class:`MatrixModel`: ``(n,)`` or ``(n, B)`` in, ``(m,)`` or ``(m, B)`` out.

    The dense ``(m, n)`` matrix ``K`` is stored (except for diagonal models,
    which store the diagonal); ``Q`` is not.
    """

    def __init__(self, model: MatrixModel, theta):
        self.model, self.theta = model, theta
        self.xp = get_xp(theta)
        self._K = None if isinstance(model, _Diagonal) else model.matrix(theta)
        dtype = result_dtype(theta) if model.offset is None else result_dtype(theta, model.offset)
        m, n = model.shape
        super().__init__(dims=(n,), dimsd=(m,), dtype=dtype, name="K")

    @property
    def matrix(self):
        """The dense ``(m, n)`` matrix ``K(theta)``."""
        return self.model.matrix(self.theta) if self._K is None else self._K

    def _forward(self, X):
        self._check_input(X, self.shape[1], self.theta)
        return self.model._apply(self._K, self.theta, X.astype(self.dtype, copy=False), False)

    def _backward(self, Y):
        self._check_input(Y, self.shape[0], self.theta)
        return self.model._apply(self._K, self.theta, Y.astype(self.dtype, copy=False), True)

    def jacobian(self, x):
        """Jacobian of ``theta -> K(theta) x``: ``v -> mat(Q v) x``.

        Parameters
        ----------
        x : array, shape ``(n,)`` or ``(n, B)``

        Returns
        -------
        StructuredOperator
            ``dims=(p,)``, ``dimsd=(m,)`` or ``(m, B)``; the adjoint is
            ``w -> Q^T vec(w x^H)``.
        """
        get_xp(x, self.theta)
        model = self.model
        X, batched = split_batch(x, self.dims, self.shape[1], "x")
        dtype = result_dtype(self.theta, X)
        X = X.astype(dtype, copy=False)
        p = model.num_params
        dimsd = (model.shape[0],) + ((X.shape[1],) if batched else ())

        def fwd(V):
            _check_dirs(V, p)
            return model._jac_forward(V.astype(dtype, copy=False), X)

        def bwd(W):
            return model._jac_adjoint(W.astype(dtype, copy=False), X)

        return FunctionOperator(fwd, bwd, (p,), dimsd, dtype, xp=self.xp, name="J")

    def adjoint_jacobian(self, y):
        """Jacobian of ``theta -> K(theta)^H y``: ``v -> mat(Q v)^H y`` (real models).

        Parameters
        ----------
        y : array, shape ``(m,)`` or ``(m, B)``

        Returns
        -------
        StructuredOperator
            ``dims=(p,)``, ``dimsd=(n,)`` or ``(n, B)``.
        """
        get_xp(y, self.theta)
        model = self.model
        Y, batched = split_batch(y, self.dimsd, self.shape[0], "y")
        dtype = result_dtype(self.theta, Y)
        Y = Y.astype(dtype, copy=False)
        p = model.num_params
        dimsd = (model.shape[1],) + ((Y.shape[1],) if batched else ())

        def fwd(V):
            _check_dirs(V, p)
            return model._ajac_forward(V.astype(dtype, copy=False), Y)

        def bwd(Z):
            return model._ajac_adjoint(Z.astype(dtype, copy=False), Y)

        return FunctionOperator(fwd, bwd, (p,), dimsd, dtype, xp=self.xp, name="JH")


class _Diagonal(MatrixModel):
    def __init__(self, n, offset=None):
        super().__init__((n, n), n, offset)
        self.fan_in = 1

    def assemble(self, V):
        xp = get_xp(V)
        n, k = self.shape[0], V.shape[1]
        M = xp.zeros((k, n, n), dtype=V.dtype)
        idx = xp.arange(n)
        M[:, idx, idx] = V.T
        return M

    def contract(self, G):
        return G.diagonal(axis1=1, axis2=2).T

    def _diag(self, theta):
        d = theta
        if self.offset is not None:
            d = d + self.offset.diagonal()
        return d

    def _apply(self, K, theta, X, adjoint):
        d = self._diag(theta)
        return (d.conj() if adjoint else d)[:, None] * X

    def _jac_forward(self, V, X):
        # (n, 1, k) * (n, B, 1) -> (n, B, k)
        return (V[:, None, :] * X[:, :, None]).reshape(-1, V.shape[1])

    def _jac_adjoint(self, W, X):
        Wk = W.reshape(X.shape[0], X.shape[1], -1)
        return (Wk * X.conj()[:, :, None]).sum(axis=1)

    def _ajac_forward(self, V, Y):
        return (V.conj()[:, None, :] * Y[:, :, None]).reshape(-1, V.shape[1])

    def _ajac_adjoint(self, Z, Y):
        Zk = Z.reshape(Y.shape[0], Y.shape[1], -1)
        return (Y[:, :, None] * Zk.conj()).sum(axis=1)


def _pairs_antisymmetric(n):
    iu = np.triu_indices(n, 1)  # row by row: (0,1), (0,2), ..., (1,2), ...
    return iu[0], iu[1]


class _Antisymmetric(MatrixModel):
    def __init__(self, n, offset=None):
        super().__init__((n, n), n * (n - 1) // 2, offset)
        self._i, self._j = _pairs_antisymmetric(n)

    def assemble(self, V):
        xp = get_xp(V)
        n, k = self.shape[0], V.shape[1]
        M = xp.zeros((k, n, n), dtype=V.dtype)
        i, j = xp.asarray(self._i), xp.asarray(self._j)
        M[:, i, j] = V.T
        M[:, j, i] = -V.T
        return M

    def contract(self, G):
        xp = get_xp(G)
        i, j = xp.asarray(self._i), xp.asarray(self._j)
        return (G[:, i, j] - G[:, j, i]).T


class _MMatrix(MatrixModel):
    def __init__(self, n, offset=None):
        super().__init__((n, n), n * (n - 1), offset)
        rows, cols = np.nonzero(~np.eye(n, dtype=bool))  # row by row, columns ascending
        self._i, self._j = rows, cols

    def assemble(self, V):
        xp = get_xp(V)
        n, k = self.shape[0], V.shape[1]
        M = xp.zeros((k, n, n), dtype=V.dtype)
        i, j = xp.asarray(self._i), xp.asarray(self._j)
        M[:, i, j] = -V.T
        idx = xp.arange(n)
        M[:, idx, idx] = V.T.reshape(k, n, n - 1).sum(axis=2)
        return M

    def contract(self, G):
        xp = get_xp(G)
        i, j = xp.asarray(self._i), xp.asarray(self._j)
        return (G[:, i, i] - G[:, i, j]).T


class _Full(MatrixModel):
    def __init__(self, m, n, offset=None):
        super().__init__((m, n), m * n, offset)

    def assemble(self, V):
        return V.T.reshape((V.shape[1],) + self.shape)

    def contract(self, G):
        return G.reshape(G.shape[0], -1).T


class _Basis(MatrixModel):
    def __init__(self, Q, shape, offset=None, order="F"):
        if order not in ("F", "C"):
            raise ValueError(f"order must be 'F' or 'C'; got {order!r}")
        m, n = (int(s) for s in shape)
        if len(Q.shape) != 2 or Q.shape[0] != m * n:
            raise ValueError(
                f"Q has shape {tuple(Q.shape)}; expected ({m * n}, p) for matrices of shape {(m, n)}"
            )
        if isinstance(Q, np.ndarray) or hasattr(Q, "__cuda_array_interface__"):
            Q = as_param_array(Q, "Q", ndim=2)
        super().__init__((m, n), Q.shape[1], offset)
        self.Q, self.order = Q, order

    def assemble(self, V):
        k = V.shape[1]
        cols = self.Q @ V  # (m n, k)
        cols = cols.toarray() if hasattr(cols, "toarray") else cols
        m, n = self.shape
        if self.order == "F":
            return cols.T.reshape(k, n, m).transpose(0, 2, 1)
        return cols.T.reshape(k, m, n)

    def contract(self, G):
        k = G.shape[0]
        if self.order == "F":
            G = G.transpose(0, 2, 1)
        vecs = G.reshape(k, -1).T
        out = self.Q.T @ vecs if not isinstance(self.Q, LinearOperator) else self.Q.H @ vecs
        return out.toarray() if hasattr(out, "toarray") else out

    def dense_basis(self, order: str = "F", dtype=np.float64):
        if order == self.order and not isinstance(self.Q, LinearOperator):
            Q = self.Q.toarray() if hasattr(self.Q, "toarray") else np.asarray(self.Q)
            return Q.astype(dtype)
        return super().dense_basis(order, dtype)


def diagonal(n: int, offset=None) -> MatrixModel:
    """Diagonal scaling ``K(theta) = diag(theta)``, ``theta`` of length ``n``.

    Examples
    --------
    >>> import numpy as np
    >>> diagonal(3).matrix(np.array([1.0, 2.0, 3.0]))
    array([[1., 0., 0.],
           [0., 2., 0.],
           [0., 0., 3.]])
    """
    n = as_int(n, "n", minimum=1)
    return _Diagonal(n, offset)


def antisymmetric(n: int, offset=None) -> MatrixModel:
    """Antisymmetric ``K(theta) = -K(theta)^T``, ``p = n (n - 1) / 2``.

    ``theta`` fills the strict upper triangle row by row
    (``K[0, 1], K[0, 2], ..., K[1, 2], ...``); the eigenvalues are imaginary.

    Examples
    --------
    >>> import numpy as np
    >>> antisymmetric(3).matrix(np.array([1.0, 2.0, 3.0]))
    array([[ 0.,  1.,  2.],
           [-1.,  0.,  3.],
           [-2., -3.,  0.]])
    """
    n = as_int(n, "n", minimum=1)
    return _Antisymmetric(n, offset)


def mmatrix(n: int, offset=None) -> MatrixModel:
    """M-matrix (graph Laplacian) model, ``p = n (n - 1)``.

    Row ``i`` has off-diagonal entries ``-theta`` (columns ascending, skipping
    ``i``) and the diagonal entry their negated sum, so every row sums to zero;
    for ``theta >= 0`` the matrix is an M-matrix, like a discretised
    differential operator.

    Examples
    --------
    >>> import numpy as np
    >>> mmatrix(3).matrix(np.arange(1.0, 7.0))
    array([[ 3., -1., -2.],
           [-3.,  7., -4.],
           [-5., -6., 11.]])
    """
    n = as_int(n, "n", minimum=1)
    if n < 2:
        raise ValueError(f"mmatrix needs n >= 2; got {n}")
    return _MMatrix(n, offset)


def full(m: int, n: int | None = None, offset=None) -> MatrixModel:
    """Unstructured ``(m, n)`` matrix, ``K = mat(theta)`` in row-major order (``Q = I``).

    A dense (fully connected) layer.
    """
    m = as_int(m, "m", minimum=1)
    n = m if n is None else as_int(n, "n", minimum=1)
    return _Full(m, n, offset)


def from_basis(Q, shape, offset=None, order: str = "F") -> MatrixModel:
    """User model ``K(theta) = offset + mat(Q theta)``.

    Parameters
    ----------
    Q : array, SciPy sparse matrix or LinearOperator, shape ``(m * n, p)``
    shape : (int, int)
        ``(m, n)``.
    offset : array, shape ``(m, n)``, optional
    order : {"F", "C"}
        How ``mat`` unstacks a vector: by columns (``"F"``, default, as in the
        lecture) or by rows.
    """
    return _Basis(Q, shape, offset, order)


# ---------------------------------------------------------------- conv model
class ConvModel(ParametricModel):
    r"""A convolution layer as a parametric model: ``kernel(theta) = offset + reshape(Q theta)``.

    Parameters
    ----------
    kernel_shape : tuple of int
        ``(c_out, c_in, *k)``.
    in_shape : tuple of int
        Spatial shape of one input channel.
    basis : array or LinearOperator, shape ``(prod(kernel_shape), p)``, optional
        ``Q``; default the identity (``theta`` is the kernel, C order).
    offset : array of shape ``kernel_shape``, optional
        ``K_0``: e.g. fixes one tap to remove a scale ambiguity.
    stride, padding, dilation, method
        As for :class:`~structops.ConvND`.

    Notes
    -----
    ``K(theta) x`` is bilinear in (kernel, ``x``), so the Jacobian with respect
    to ``theta`` is the layer's kernel Jacobian composed with ``Q``:
    ``v -> ConvND(reshape(Q v)) x``, adjoint ``w -> Q^T G(x, w)`` with ``G`` the
    weight gradient. ``Q`` is never formed.
    """

    def __init__(self, kernel_shape, in_shape, basis=None, offset=None, stride=1, padding="same",
                 dilation=1, method="auto"):
        self.kernel_shape = tuple(int(k) for k in kernel_shape)
        if len(self.kernel_shape) < 3:
            raise ValueError(f"kernel_shape {kernel_shape!r}; expected (c_out, c_in, *k)")
        nk = int(np.prod(self.kernel_shape))
        if basis is not None and (len(basis.shape) != 2 or basis.shape[0] != nk):
            raise ValueError(f"basis has shape {tuple(basis.shape)}; expected ({nk}, p)")
        self.basis = basis
        if offset is not None:
            offset = as_param_array(offset, "offset")
            if tuple(offset.shape) != self.kernel_shape:
                raise ValueError(f"offset has shape {tuple(offset.shape)}; expected {self.kernel_shape}")
        self.offset = offset
        self.num_params = nk if basis is None else int(basis.shape[1])
        self.conv_kwargs = dict(stride=stride, padding=padding, dilation=dilation, method=method)
        self.geometry = geo = ConvGeometry(self.kernel_shape, in_shape, stride=stride, padding=padding,
                                           dilation=dilation)
        self.in_shape = geo.in_shape
        self.dims, self.dimsd = (geo.c_in,) + geo.in_shape, (geo.c_out,) + geo.out_shape
        self.fan_in = int(np.prod(self.kernel_shape[1:]))
        # fix the algorithm once, so every operator of the model agrees
        self.conv_kwargs["method"] = resolve_method(geo, method)

    def kernel(self, theta):
        """Kernel array ``offset + reshape(Q theta)`` of shape ``kernel_shape``."""
        theta = _as_theta(theta, self.num_params)
        return self._kernel_lin(theta.reshape(-1, 1), offset=True)[0]

    def _kernel_lin(self, V, offset=False):
        """Kernels of directions ``V (p, k)``: ``(k, *kernel_shape)``."""
        k = V.shape[1]
        if self.basis is None:
            K = V.T.reshape((k,) + self.kernel_shape)
        else:
            cols = self.basis @ V
            K = cols.T.reshape((k,) + self.kernel_shape)
        if offset and self.offset is not None:
            K = K + self.offset
        return K

    def _kernel_contract(self, G):
        """``Q^T`` applied to kernel gradients ``G (nk, k)``."""
        if self.basis is None:
            return G
        B = self.basis
        return B.H @ G if isinstance(B, LinearOperator) else B.T @ G

    def operator(self, theta):
        """``K(theta)`` as a :class:`ParametricConvND` (a :class:`~structops.ConvND`)."""
        theta = _as_theta(theta, self.num_params)
        return ParametricConvND(self, theta)

    def dense_basis(self, order: str = "C", dtype=np.float64):
        """``Q`` mapping ``theta`` to the C-ordered kernel (the identity if no basis)."""
        if self.basis is None:
            return np.eye(self.num_params, dtype=dtype)
        B = self.basis
        return np.asarray(B @ np.eye(self.num_params, dtype=dtype)).astype(dtype)


@fixed_parameters("model", "theta")
class ParametricConvND(ConvND):
    """A :class:`~structops.ConvND` whose :meth:`jacobian` is with respect to ``theta``.

    With ``basis=None`` and no offset the Jacobian is the layer's kernel
    Jacobian itself.
    """

    def __init__(self, model: ConvModel, theta):
        self.model, self.theta = model, theta
        super().__init__(model.kernel(theta), model.in_shape, **model.conv_kwargs)

    def jacobian(self, x):
        """Jacobian of ``theta -> K(theta) x``, ``x`` of shape ``(N,)`` or ``(N, B)``.

        Returns
        -------
        StructuredOperator
            ``dims=(p,)``, ``dimsd=self.dimsd`` (or ``(*self.dimsd, B)``).
        """
        J = super().jacobian(x)
        model = self.model
        if model.basis is None:
            return J
        p = model.num_params

        def fwd(V):
            _check_dirs(V, p)
            return J.matmat(model.basis @ V.astype(J.dtype, copy=False))

        def bwd(W):
            return model._kernel_contract(J.rmatmat(W))

        return FunctionOperator(fwd, bwd, (p,), J.dimsd, J.dtype, xp=self.xp, name="J")

    def adjoint_jacobian(self, y):
        """Jacobian of ``theta -> K(theta)^H y``: ``v -> ConvND(reshape(Q v))^H y``.

        Costs one adjoint convolution per direction. For real parameters (for
        complex ones the map is conjugate-linear).

        Parameters
        ----------
        y : array, shape ``(M,)`` or ``(M, B)``

        Returns
        -------
        StructuredOperator
            ``dims=(p,)``, ``dimsd=self.dims`` (or ``(*self.dims, B)``).
        """
        get_xp(y, self.kernel)
        Y, batched = split_batch(y, self.dimsd, self.shape[0], "y")
        model = self.model
        dtype = result_dtype(self.kernel, Y)
        Y = Y.astype(dtype, copy=False)
        p = model.num_params
        xp = self.xp
        dimsd = tuple(self.dims) + ((Y.shape[1],) if batched else ())

        def fwd(V):
            _check_dirs(V, p)
            Ks = model._kernel_lin(V.astype(dtype, copy=False))
            cols = [ConvND(Ks[j], self.in_shape, **model.conv_kwargs).rmatmat(Y).reshape(-1)
                    for j in range(V.shape[1])]
            return xp.stack(cols, axis=1)

        def bwd(Z):
            # <ConvND(dK)^H Y, Z> = <dK, G(Z, Y)>: the weight gradient with input Z, output Y
            k = Z.shape[1]
            Zk = Z.reshape(-1, Y.shape[1], k)
            G = xp.stack([super(ParametricConvND, self).jacobian(Zk[:, :, j]).rmatvec(Y.reshape(-1))
                          for j in range(k)], axis=1)
            return model._kernel_contract(G)

        return FunctionOperator(fwd, bwd, (p,), dimsd, dtype, xp=xp, name="JH")


def conv(kernel_shape, in_shape, basis=None, offset=None, stride=1, padding="same", dilation=1,
         method="auto") -> ConvModel:
    """Convolution layer as a parametric model (see :class:`ConvModel`).

    Examples
    --------
    >>> import numpy as np
    >>> model = conv((2, 1, 3, 3), (8, 8))
    >>> model.num_params, model.dims, model.dimsd
    (18, (1, 8, 8), (2, 8, 8))
    >>> op = model.operator(np.ones(18))
    >>> op.jacobian(np.ones(64)).shape
    (128, 18)
    """
    return ConvModel(kernel_shape, in_shape, basis=basis, offset=offset, stride=stride,
                     padding=padding, dilation=dilation, method=method)

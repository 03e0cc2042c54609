r"""Layers and networks with Jacobian-vector and vector-Jacobian products.

The layer protocol
------------------
A layer maps a batch ``Y`` of shape ``(n_in, B)`` (one example per column) to
``Z`` of shape ``(n_out, B)`` and has a flat parameter vector ``theta`` of
length ``num_params``. It implements three methods:

``forward(theta, Y) -> (Z, state)``
    The output and an opaque ``state`` (what the derivatives need).
``jvp(theta, state, dtheta=None, dY=None) -> dZ``
    Directional derivative ``dZ = J_theta dtheta + J_Y dY``. ``dtheta`` is
    ``(p,)`` or ``(p, k)``, ``dY`` is ``(n_in, B)`` or ``(n_in, B, k)``; with a
    trailing ``k`` the result is ``(n_out, B, k)`` (``k`` directions in one
    call), otherwise ``(n_out, B)``. Either may be ``None`` (zero).
``vjp(theta, state, dZ) -> (dtheta, dY)``
    The adjoint: ``dtheta = J_theta^T dZ`` (summed over the batch) and
    ``dY = J_Y^T dZ``, with the same optional trailing ``k``.

and the attributes ``in_dims``, ``out_dims`` (shapes of one example) and
``num_params``. The base class :class:`Layer` derives everything else from
these three methods: ``__call__``, :meth:`Layer.param_jacobian` and
:meth:`Layer.input_jacobian` (both :class:`~structops.StructuredOperator`, so
dottests, Krylov solvers, Gauss-Newton and variable projection use them
unchanged), and :meth:`Layer.init_params`. Any layer that follows the
protocol (for instance one built on extended convolutions) can be stacked in
a :class:`Network`.

The layers here are built from a parametric model ``K(theta_K)`` of
:mod:`structops.parametric` (dense, structured or convolutional), whose
operator gives the products ``K Y``, ``K^T Z`` and the parameter Jacobian.
"""

from __future__ import annotations

import numpy as np

from .._backend import get_xp
from .._validate import as_data_array
from ..operators.parametric import FunctionOperator, ParametricModel, full
from .activations import get_activation

__all__ = ["Layer", "SingleLayer", "ResidualLayer", "Network", "dense"]


def _dirs(a, ndim_plain):
    """Add a trailing direction axis if absent; return (array, had_axis)."""
    if a is None:
        return None, False
    if a.ndim == ndim_plain:
        return a[..., None], False
    if a.ndim == ndim_plain + 1:
        return a, True
    raise ValueError(f"array of shape {tuple(a.shape)}; expected {ndim_plain} or {ndim_plain + 1} dimensions")


class Layer:
    """Base class of the layer protocol (see the module docstring).

    Subclasses set ``in_dims``, ``out_dims``, ``num_params`` and implement
    :meth:`forward`, :meth:`jvp`, :meth:`vjp` and :meth:`init_params`.
    """

    in_dims: tuple
    out_dims: tuple
    num_params: int

    @property
    def n_in(self) -> int:
        """Length of one input example."""
        return int(np.prod(self.in_dims))

    @property
    def n_out(self) -> int:
        """Length of one output example."""
        return int(np.prod(self.out_dims))

    def forward(self, theta, Y):  # pragma: no cover - abstract
        raise NotImplementedError

    def jvp(self, theta, state, dtheta=None, dY=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def vjp(self, theta, state, dZ):  # pragma: no cover - abstract
        raise NotImplementedError

    def init_params(self, rng=None, dtype=np.float64, xp=np):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- derived ---------------------------------------------------------------
    def _check(self, theta, Y):
        """``(theta, Y)`` as arrays (lists are converted as NumPy does), with their shapes checked."""
        theta, Y = as_data_array(theta, "theta"), as_data_array(Y, "Y")
        if theta.ndim != 1 or theta.shape[0] != self.num_params:
            raise ValueError(f"theta has shape {tuple(theta.shape)}; expected ({self.num_params},)")
        if Y.ndim != 2 or Y.shape[0] != self.n_in:
            raise ValueError(f"Y has shape {tuple(Y.shape)}; expected ({self.n_in}, B), one example per column")
        return theta, Y

    def __call__(self, theta, Y):
        """The output ``Z`` of shape ``(n_out, B)``."""
        return self.forward(theta, Y)[0]

    def param_jacobian(self, theta, Y, state=None):
        """Jacobian of ``theta -> Z`` at ``(theta, Y)``: an operator ``(p,) -> (n_out, B)``."""
        state = self.forward(theta, Y)[1] if state is None else state
        B = Y.shape[1]
        dtype = np.result_type(theta.dtype, Y.dtype)

        def fwd(V):
            return self.jvp(theta, state, dtheta=V).reshape(self.n_out * B, V.shape[1])

        def bwd(W):
            k = W.shape[1]
            return self.vjp(theta, state, W.reshape(self.n_out, B, k))[0]

        return FunctionOperator(fwd, bwd, (self.num_params,), (self.n_out, B), dtype, xp=get_xp(theta, Y),
                                name="Jt")

    def input_jacobian(self, theta, Y, state=None):
        """Jacobian of ``Y -> Z`` at ``(theta, Y)``: an operator ``(n_in, B) -> (n_out, B)``."""
        state = self.forward(theta, Y)[1] if state is None else state
        B = Y.shape[1]
        dtype = np.result_type(theta.dtype, Y.dtype)

        def fwd(V):
            k = V.shape[1]
            return self.jvp(theta, state, dY=V.reshape(self.n_in, B, k)).reshape(self.n_out * B, k)

        def bwd(W):
            k = W.shape[1]
            return self.vjp(theta, state, W.reshape(self.n_out, B, k))[1].reshape(self.n_in * B, k)

        return FunctionOperator(fwd, bwd, (self.n_in, B), (self.n_out, B), dtype, xp=get_xp(theta, Y),
                                name="Jy")


class SingleLayer(Layer):
    r"""``Z = sigma(K(theta_K) Y + b)``.

    Parameters
    ----------
    model : ParametricModel
        ``K(theta_K)``: e.g. :func:`structops.parametric.full`,
        :func:`~structops.parametric.antisymmetric`, :func:`~structops.parametric.conv`.
    activation : str or Activation
        ``"tanh"``, ``"sigmoid"``, ``"relu"``, ``"sin"`` or ``"identity"``.
    bias : bool
        One bias per output channel (the first axis of ``model.dimsd``),
        shared over the spatial positions.

    Notes
    -----
    ``theta = [theta_K, b]``. With ``A = K Y + b`` and ``S = sigma'(A)``,

    .. math::

        dZ = S \odot (K(d\theta_K) Y + db + K\, dY), \qquad
        d\theta_K = J_K^T (S \odot dZ),\ db = \textstyle\sum (S \odot dZ),\
        dY = K^T (S \odot dZ),

    ``J_K`` the parameter Jacobian of the model (``v -> K(v) Y``), applied to
    the whole batch in one product.

    Examples
    --------
    >>> import numpy as np
    >>> from structops.parametric import full
    >>> layer = SingleLayer(full(4, 3), "tanh")
    >>> theta = layer.init_params(0)
    >>> Y = np.ones((3, 5))
    >>> layer(theta, Y).shape, layer.param_jacobian(theta, Y).shape
    ((4, 5), (20, 16))
    """

    def __init__(self, model: ParametricModel, activation="tanh", bias: bool = True):
        if not isinstance(model, ParametricModel):
            raise TypeError(f"model must be a structops.parametric model; got {type(model).__name__}")
        self.model = model
        self.act = get_activation(activation)
        self.bias = bool(bias)
        self.in_dims, self.out_dims = tuple(model.dims), tuple(model.dimsd)
        self.channels = int(model.dimsd[0])
        self.spatial = int(np.prod(model.dimsd[1:]))
        self.pK = model.num_params
        self.num_params = self.pK + (self.channels if self.bias else 0)

    def init_params(self, rng=None, dtype=np.float64, xp=np):
        """``theta_K`` scaled by ``1/sqrt(fan_in)``, bias zero."""
        tK = self.model.init_params(rng, dtype=dtype, xp=xp)
        if not self.bias:
            return tK
        return xp.concatenate([tK, xp.zeros(self.channels, dtype=dtype)])

    def forward(self, theta, Y):
        theta, Y = self._check(theta, Y)
        op = self.model.operator(theta[: self.pK])
        A = op.matmat(Y)
        if self.bias:
            B = Y.shape[1]
            A = (A.reshape(self.channels, self.spatial, B) + theta[self.pK:, None, None]).reshape(-1, B)
        return self.act.f(A), (op, Y, A)

    def jvp(self, theta, state, dtheta=None, dY=None):
        op, Y, A = state
        N, B = Y.shape
        dtheta, k1 = _dirs(dtheta, 1)
        dY, k2 = _dirs(dY, 2)
        M = A.shape[0]
        xp = get_xp(A)
        dA = xp.zeros((M, B, 1), dtype=A.dtype)
        if dtheta is not None:  # parameter part, k_t directions
            kt = dtheta.shape[1]
            dA = dA + op.jacobian(Y).matmat(dtheta[: self.pK]).reshape(M, B, kt)
            if self.bias:
                dA = dA + xp.repeat(dtheta[self.pK:], self.spatial, axis=0)[:, None, :]
        if dY is not None:  # input part, k_y directions (broadcast against k_t)
            ky = dY.shape[2]
            dA = dA + op.matmat(dY.reshape(N, B * ky)).reshape(M, B, ky)
        dZ = self.act.df(A)[:, :, None] * dA
        return dZ if (k1 or k2) else dZ[:, :, 0]

    def vjp(self, theta, state, dZ):
        op, Y, A = state
        N, B = Y.shape
        dZ, kk = _dirs(dZ, 2)
        k = dZ.shape[2]
        xp = get_xp(A)
        dA = self.act.df(A)[:, :, None] * dZ
        gK = op.jacobian(Y).rmatmat(dA.reshape(-1, k))
        if self.bias:
            gb = dA.reshape(self.channels, self.spatial * B, k).sum(axis=1)
            gK = xp.concatenate([gK, gb], axis=0)
        gY = op.rmatmat(dA.reshape(A.shape[0], B * k)).reshape(N, B, k)
        return (gK, gY) if kk else (gK[:, 0], gY[:, :, 0])


class ResidualLayer(Layer):
    r"""``Z = Y + h sigma(K(theta_K) Y + b)`` (``K`` square: ``dims == dimsd``).

    Parameters
    ----------
    model, activation, bias
        As for :class:`SingleLayer`.
    h : float
        Step size (the forward-Euler step of the ResNet-as-ODE view).
    """

    def __init__(self, model: ParametricModel, activation="tanh", bias: bool = True, h: float = 1.0):
        if tuple(model.dims) != tuple(model.dimsd):
            raise ValueError(
                f"a residual layer needs K with equal input and output shapes; got dims {tuple(model.dims)} "
                f"and dimsd {tuple(model.dimsd)}"
            )
        self.inner = SingleLayer(model, activation, bias)
        self.h = float(h)
        self.in_dims = self.out_dims = tuple(model.dims)
        self.num_params = self.inner.num_params

    def init_params(self, rng=None, dtype=np.float64, xp=np):
        return self.inner.init_params(rng, dtype, xp)

    def forward(self, theta, Y):
        F, st = self.inner.forward(theta, Y)
        return Y + self.h * F, st

    def jvp(self, theta, state, dtheta=None, dY=None):
        dF = self.inner.jvp(theta, state, dtheta, dY)
        if dY is None:
            return self.h * dF
        if dF.ndim == 3 and dY.ndim == 2:
            dY = dY[:, :, None]
        return dY + self.h * dF

    def vjp(self, theta, state, dZ):
        gt, gY = self.inner.vjp(theta, state, dZ)
        return self.h * gt, dZ + self.h * gY


class Network(Layer):
    """A stack of layers, ``Z = f_L(f_{L-1}(...(f_1(Y))))``; ``theta`` concatenates theirs.

    Parameters
    ----------
    layers : sequence of Layer
        Consecutive layers (``out_dims`` of one = ``in_dims`` of the next, in size).
    """

    def __init__(self, layers):
        layers = list(layers)
        if not layers:
            raise ValueError("a Network needs at least one layer")
        for a, b in zip(layers[:-1], layers[1:]):
            if a.n_out != b.n_in:
                raise ValueError(f"layer output size {a.n_out} does not match the next layer's input size {b.n_in}")
        self.layers = layers
        self.in_dims, self.out_dims = tuple(layers[0].in_dims), tuple(layers[-1].out_dims)
        sizes = [lay.num_params for lay in layers]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.num_params = int(self.offsets[-1])

    def split(self, theta):
        """Per-layer parameter views of ``theta`` (first axis)."""
        return [theta[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def init_params(self, rng=None, dtype=np.float64, xp=np):
        rng = np.random.default_rng(rng)
        return xp.concatenate([lay.init_params(rng, dtype, xp) for lay in self.layers])

    def forward(self, theta, Y):
        theta, Y = self._check(theta, Y)
        states = []
        Z = Y
        for lay, t in zip(self.layers, self.split(theta)):
            Z, st = lay.forward(t, Z)
            states.append(st)
        return Z, states

    def jvp(self, theta, state, dtheta=None, dY=None):
        ts = self.split(theta)
        dts = self.split(dtheta) if dtheta is not None else [None] * len(self.layers)
        dZ = dY
        for lay, t, st, dt in zip(self.layers, ts, state, dts):
            if dZ is not None and dt is not None and dt.ndim == 2 and dZ.ndim == 2:
                dZ = dZ[:, :, None]
            dZ = lay.jvp(t, st, dt, dZ)
        return dZ

    def vjp(self, theta, state, dZ):
        ts = self.split(theta)
        grads = []
        for lay, t, st in reversed(list(zip(self.layers, ts, state))):
            g, dZ = lay.vjp(t, st, dZ)
            grads.append(g)
        xp = get_xp(dZ)
        return xp.concatenate(grads[::-1], axis=0), dZ


def dense(n_in: int, n_out: int, activation="identity", bias: bool = False) -> SingleLayer:
    """Fully connected layer ``Z = sigma(W Y + b)`` with ``W`` of shape ``(n_out, n_in)`` (row-major in theta)."""
    return SingleLayer(full(n_out, n_in), activation, bias)

r"""Layers and networks of extended (per-pixel) convolutions.

An extended layer is a conventional convolution layer whose kernel is
replaced by one kernel per output pixel (:class:`~structops.ExtendedConvND`),

.. math::

    Z = \sigma(\underline{W} Y + b), \qquad
    \underline{W} = \sum_d \operatorname{diag}(\underline{w}_d)\, T_d,

with the per-pixel weights ``w`` (the auxiliary variables of the extended
layer) as its parameters ``theta = [vec(w), b]``. It follows the layer
protocol of :mod:`structops.nn.layers` (``forward``, ``jvp``, ``vjp``), so
extended layers stack in a :class:`~structops.nn.Network` and their Jacobians
are operators.

Each extended layer also knows its *primary* parameters, those of the
conventional layer it extends: ``primary = [vec(K), b]`` with ``K`` of shape
``(c_out, c_in, *k)`` (C order), the layout of a
:class:`~structops.nn.SingleLayer` built on :func:`structops.parametric.conv`.
:class:`ExtendedNetwork` collects these per layer, so that one flat
``primary`` vector is the parameter vector of the conventional network
(:meth:`ExtendedNetwork.conventional`) and one flat ``theta`` that of the
extended network.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._backend import get_xp
from .._backend import device_constant
from ..operators.extended import ExtendedConvND, extension_penalty
from ..operators.geometry import ConvGeometry
from ..operators.parametric import ConvModel, ParametricModel
from .layers import Network, SingleLayer

__all__ = ["ExtendedConvModel", "ExtendedSingleLayer", "ExtendedNetwork", "ParameterIndex"]


class ParameterIndex(NamedTuple):
    """Masks and index arrays of an :class:`ExtendedNetwork`'s parameter vectors, on one backend.

    Attributes
    ----------
    aux_mask : bool array, shape ``(num_params,)``
        The per-pixel weights that are matrix entries (the auxiliary variables).
    aux_index : int array, shape ``(n_aux,)``
        Their positions in ``theta`` (``flatnonzero(aux_mask)``).
    bias_theta, bias_primary : int arrays, shape ``(n_bias,)``
        Positions of the biases in ``theta`` and in ``primary``.
    kernel_mask : bool array, shape ``(num_primary,)``
        The kernel entries of ``primary`` (``False`` on the biases).
    """

    aux_mask: object
    aux_index: object
    bias_theta: object
    bias_primary: object
    kernel_mask: object


class ExtendedConvModel(ParametricModel):
    """Per-pixel convolution weights as a parametric model: ``theta = vec(w)``.

    Parameters
    ----------
    kernel_shape : tuple of int
        ``(c_out, c_in, *k)``.
    in_shape : tuple of int
        Spatial shape of one input channel.
    padding, stride, dilation
        As for :class:`~structops.ConvND`.

    Notes
    -----
    ``operator(theta)`` is the :class:`~structops.ExtendedConvND` with weights
    ``theta.reshape(c_out, c_in, *k, *out_shape)``; its ``jacobian(X)`` is with
    respect to those weights, so ``Q = I``.
    """

    def __init__(self, kernel_shape, in_shape, padding="same", stride=1, dilation=1):
        self.kernel_shape = tuple(int(k) for k in kernel_shape)
        if len(self.kernel_shape) < 3:
            raise ValueError(f"kernel_shape {kernel_shape!r}; expected (c_out, c_in, *k)")
        self.conv_kwargs = dict(padding=padding, stride=stride, dilation=dilation)
        geo = ConvGeometry(self.kernel_shape, in_shape, **self.conv_kwargs)
        self.in_shape = geo.in_shape
        self.out_shape = geo.out_shape
        self.weight_shape = self.kernel_shape + self.out_shape
        self.dims, self.dimsd = (geo.c_in,) + geo.in_shape, (geo.c_out,) + geo.out_shape
        self.num_params = int(np.prod(self.weight_shape))
        self.fan_in = int(np.prod(self.kernel_shape[1:]))
        D = len(self.in_shape)
        #: which weights are matrix entries, shape ``weight_shape`` (zero padding masks the border)
        border = geo.border_mask()
        self.mask = np.broadcast_to(border.reshape((1, 1) + border.shape), self.weight_shape).copy()
        self._D = D

    def operator(self, theta):
        """``W_ext(theta)``: an :class:`~structops.ExtendedConvND`."""
        theta = theta.reshape(-1)
        if theta.size != self.num_params:
            raise ValueError(f"theta has {theta.size} entries; expected {self.num_params} "
                             f"(weights of shape {self.weight_shape})")
        return ExtendedConvND(theta.reshape(self.weight_shape), self.in_shape, **self.conv_kwargs)

    def init_params(self, rng=None, scale: float = 1.0, dtype=np.float64, xp=np):
        """A random kernel ``scale / sqrt(fan_in) N(0, 1)`` copied to every pixel."""
        rng = np.random.default_rng(rng)
        K = rng.standard_normal(self.kernel_shape) * (scale / np.sqrt(self.fan_in))
        return xp.asarray(self.expand(K).astype(dtype))

    def expand(self, kernel):
        """Per-pixel weights (flat, length ``num_params``) all equal to ``kernel``."""
        xp = get_xp(kernel)
        K = kernel.reshape(self.kernel_shape + (1,) * self._D)
        return xp.ascontiguousarray(xp.broadcast_to(K, self.weight_shape)).reshape(-1)


class ExtendedSingleLayer(SingleLayer):
    r"""``Z = sigma(W_ext(w) Y + b)``: an extended convolution layer.

    Parameters
    ----------
    kernel_shape : tuple of int
        ``(c_out, c_in, *k)`` of the conventional layer it extends.
    in_shape : tuple of int
        Spatial shape of one input channel, e.g. ``(H, W)``.
    activation : str or Activation
        Default ``"sigmoid"`` (the toy network of Siahkoohi, Louboutin and Herrmann).
    bias : bool
        One bias per output channel.
    padding, stride, dilation
        As for :class:`~structops.ConvND`.

    Notes
    -----
    ``theta = [vec(w), b]`` with ``w`` of shape ``(c_out, c_in, *k, *out_shape)``;
    ``primary = [vec(K), b]`` with ``K`` of shape ``(c_out, c_in, *k)``. With
    ``A = W_ext Y + b`` and ``S = sigma'(A)`` the products are those of
    :class:`~structops.nn.SingleLayer`:

    .. math::

        dZ = S \odot (W_{ext}(dw) Y + db + W_{ext} dY), \quad
        dw = J_w^T (S \odot dZ), \quad dY = W_{ext}^T (S \odot dZ),

    with ``J_w`` the per-pixel weight Jacobian of
    :meth:`~structops.ExtendedConvND.jacobian`. With ``w = expand(K)`` the layer
    equals the conventional one exactly.

    Examples
    --------
    >>> import numpy as np
    >>> layer = ExtendedSingleLayer((1, 1, 3, 3), (6, 6))
    >>> layer.num_params, layer.num_primary
    (325, 10)
    >>> theta = layer.expand(np.arange(10.0))
    >>> np.allclose(layer.project(theta), np.arange(10.0))
    True
    """

    def __init__(self, kernel_shape, in_shape, activation="sigmoid", bias: bool = True, padding="same",
                 stride=1, dilation=1):
        model = ExtendedConvModel(kernel_shape, in_shape, padding=padding, stride=stride, dilation=dilation)
        super().__init__(model, activation, bias)
        self.kernel_shape = model.kernel_shape
        self.weight_shape = model.weight_shape
        self.num_kernel = int(np.prod(self.kernel_shape))
        self.num_primary = self.num_kernel + (self.channels if self.bias else 0)

    @classmethod
    def from_layer(cls, layer: SingleLayer) -> "ExtendedSingleLayer":
        """The extended version of a conventional :class:`~structops.nn.SingleLayer` on
        :func:`structops.parametric.conv` (no basis, no offset)."""
        m = getattr(layer, "model", None)
        if not isinstance(layer, SingleLayer) or not isinstance(m, ConvModel) or m.basis is not None \
                or m.offset is not None:
            raise TypeError("from_layer needs a SingleLayer on structops.parametric.conv(...) without basis "
                            f"or offset; got {layer!r}")
        kw = {k: v for k, v in m.conv_kwargs.items() if k != "method"}
        return cls(m.kernel_shape, m.in_shape, layer.act, layer.bias, **kw)

    def conventional(self) -> SingleLayer:
        """The conventional layer whose parameters are this layer's ``primary``."""
        from ..operators.parametric import conv

        m = self.model
        return SingleLayer(conv(self.kernel_shape, m.in_shape, **m.conv_kwargs), self.act, self.bias)

    @property
    def mask(self):
        """Boolean ``(num_params,)``: the per-pixel weights that are matrix entries (biases False)."""
        xp_mask = self.model.mask.reshape(-1)
        return np.concatenate([xp_mask, np.zeros(self.num_params - self.pK, dtype=bool)])

    def expand(self, primary):
        """``theta`` with every pixel's kernel equal to the primary kernel (``(num_primary,) -> (num_params,)``)."""
        xp = get_xp(primary)
        w = self.model.expand(primary[: self.num_kernel])
        return xp.concatenate([w, primary[self.num_kernel:]])

    def operator(self, theta):
        """``W_ext`` of ``theta``: an :class:`~structops.ExtendedConvND`."""
        return self.model.operator(theta[: self.pK])

    def project(self, theta):
        """The nearest primary parameters: masked pixel average of the kernels (Frobenius
        projection, :meth:`~structops.ExtendedConvND.kernel_average`) and the same bias."""
        xp = get_xp(theta)
        K = self.operator(theta).kernel_average().reshape(-1)
        return xp.concatenate([K, theta[self.pK:]])

    def penalty(self, theta, primary, lam: float):
        r"""``lam^2/2 ||W_ext(w) - W(K)||_F^2`` and its gradients in ``theta`` and ``primary``.

        Returns
        -------
        value : float
        grad_theta : array, shape ``(num_params,)`` (zero on the bias)
        grad_primary : array, shape ``(num_primary,)`` (zero on the bias)
        """
        xp = get_xp(theta, primary)
        K = primary[: self.num_kernel].reshape(self.kernel_shape)
        val, gw, gk = extension_penalty(self.operator(theta), K, lam)
        nb = self.num_params - self.pK
        zb = xp.zeros(nb, dtype=theta.dtype)
        return val, xp.concatenate([gw.reshape(-1), zb]), xp.concatenate([gk.reshape(-1), zb])


class ExtendedNetwork(Network):
    r"""A stack of :class:`ExtendedSingleLayer` with primary (conventional) parameters.

    Parameters
    ----------
    layers : sequence of ExtendedSingleLayer

    Notes
    -----
    ``theta`` (length ``num_params``) concatenates the layers' ``[vec(w_l), b_l]``;
    ``primary`` (length ``num_primary``) concatenates ``[vec(K_l), b_l]``, the
    parameter vector of :meth:`conventional`. The penalty is summed over layers,

    .. math::

        P(\theta, \mathrm{primary}) = \frac{\lambda^2}{2}
        \sum_l \|\underline{W}_l(w_l) - W_l(K_l)\|_F^2 .

    Examples
    --------
    >>> import numpy as np
    >>> net = ExtendedNetwork([ExtendedSingleLayer((1, 1, 3, 3), (5, 5)) for _ in range(2)])
    >>> primary = np.random.default_rng(0).standard_normal(net.num_primary)
    >>> X = np.ones((25, 1))
    >>> np.allclose(net(net.expand(primary), X), net.conventional()(primary, X))
    True
    """

    def __init__(self, layers):
        layers = list(layers)
        for lay in layers:
            if not isinstance(lay, ExtendedSingleLayer):
                raise TypeError(f"ExtendedNetwork layers must be ExtendedSingleLayer; got {type(lay).__name__}")
        super().__init__(layers)
        sizes = [lay.num_primary for lay in layers]
        self.primary_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.num_primary = int(self.primary_offsets[-1])
        self._index_cache = {}

    @classmethod
    def from_network(cls, net: Network) -> "ExtendedNetwork":
        """The extended version of a :class:`~structops.nn.Network` of conventional conv
        :class:`~structops.nn.SingleLayer` (its ``theta`` becomes our ``primary``)."""
        return cls([ExtendedSingleLayer.from_layer(lay) for lay in net.layers])

    def conventional(self) -> Network:
        """The conventional network; its ``theta`` is our ``primary``."""
        return Network([lay.conventional() for lay in self.layers])

    def split_primary(self, primary):
        """Per-layer views of ``primary``."""
        if primary.shape[0] != self.num_primary:
            raise ValueError(f"primary has length {primary.shape[0]}; expected {self.num_primary}")
        return [primary[a:b] for a, b in zip(self.primary_offsets[:-1], self.primary_offsets[1:])]

    def expand(self, primary):
        """``theta`` with every per-pixel kernel equal to its layer's primary kernel."""
        xp = get_xp(primary)
        return xp.concatenate([lay.expand(p) for lay, p in zip(self.layers, self.split_primary(primary))])

    def project(self, theta):
        """Masked pixel averages of the kernels (and the biases): ``(num_params,) -> (num_primary,)``."""
        xp = get_xp(theta)
        return xp.concatenate([lay.project(t) for lay, t in zip(self.layers, self.split(theta))])

    @property
    def aux_mask(self):
        """Boolean ``(num_params,)``: the per-pixel weights that exist (the auxiliary variables)."""
        return self.index_arrays().aux_mask.copy()

    @property
    def bias_index(self):
        """``(theta_index, primary_index)``: integer positions of the biases in both vectors."""
        ix = self.index_arrays()
        return ix.bias_theta.copy(), ix.bias_primary.copy()

    def index_arrays(self, xp=np) -> ParameterIndex:
        """The masks and index arrays of the parameter vectors as arrays of ``xp``.

        Built once per backend (and device) and cached, so that indexing
        device arrays with them copies nothing between host and device.

        Parameters
        ----------
        xp : module
            ``numpy`` (default) or ``cupy``, e.g. ``get_xp(theta)``.

        Returns
        -------
        ParameterIndex
            Shared, read-only arrays: copy them before modifying.

        Examples
        --------
        >>> net = ExtendedNetwork([ExtendedSingleLayer((1, 1, 3, 3), (4, 4))])
        >>> ix = net.index_arrays()
        >>> net.num_params, int(ix.aux_mask.sum()), ix.bias_theta.tolist(), ix.bias_primary.tolist()
        (145, 100, [144], [9])
        """
        host = self._index_cache.get("host")
        if host is None:
            host = self._index_cache["host"] = self._host_index()
        if xp is np:
            return host
        return ParameterIndex(*(device_constant(xp, name, lambda a=a: a, cache=self._index_cache)
                                for name, a in zip(ParameterIndex._fields, host)))

    def _host_index(self) -> ParameterIndex:
        aux = np.concatenate([lay.mask for lay in self.layers])
        ti, pi = [np.zeros(0, dtype=np.intp)], [np.zeros(0, dtype=np.intp)]
        for lay, a, b in zip(self.layers, self.offsets[:-1], self.primary_offsets[:-1]):
            nb = lay.num_params - lay.pK
            ti.append(np.arange(a + lay.pK, a + lay.pK + nb))
            pi.append(np.arange(b + lay.num_kernel, b + lay.num_kernel + nb))
        ti, pi = np.concatenate(ti).astype(int), np.concatenate(pi).astype(int)
        kern = np.ones(self.num_primary, dtype=bool)
        kern[pi] = False
        out = ParameterIndex(aux, np.flatnonzero(aux), ti, pi, kern)
        for a in out:
            a.setflags(write=False)
        return out

    def penalty(self, theta, primary, lam: float):
        """Summed :meth:`ExtendedSingleLayer.penalty`: ``(value, grad_theta, grad_primary)``."""
        xp = get_xp(theta, primary)
        val, gt, gp = 0.0, [], []
        for lay, t, p in zip(self.layers, self.split(theta), self.split_primary(primary)):
            v, a, b = lay.penalty(t, p, lam)
            val += v
            gt.append(a)
            gp.append(b)
        return val, xp.concatenate(gt), xp.concatenate(gp)

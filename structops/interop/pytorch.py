"""Layers from PyTorch modules: convolutions, transposed ones, ``nn.Linear``, batch norms, average pools.

:func:`layer_operator` turns one module into the structops operator of its
linear part (biases and batch-norm shifts are offsets, not part of it), for
an input of a given shape; :func:`from_torch` chains a whole
``nn.Sequential`` of such modules into one PyLops operator. torch is
imported only here (the ``[torch]`` extra); weights are copied to float64
NumPy arrays (``dtype=`` to keep float32).

Notes
-----
* ``nn.Conv*d``: every ``padding_mode`` (``"zeros"``: :class:`ConvND`;
  ``"reflect"``, ``"replicate"``, ``"circular"``: :class:`PaddedConvND`), an
  integer, per-axis or ``"same"`` / ``"valid"`` padding (``"same"`` with
  torch's rule: the extra entry of an even effective kernel at the end),
  stride, dilation, groups.
* ``nn.ConvTranspose*d``: :class:`ConvTransposeND` (torch allows zero
  padding only).
* ``nn.Linear``: the weight matrix (a :class:`pylops.MatrixMult`) on a 1-D
  input (put ``nn.Flatten`` before it).
* ``nn.BatchNorm*d`` in eval mode: the per-channel scaling
  ``gamma / sqrt(running_var + eps)`` (a :class:`pylops.Diagonal`), or fused
  into the preceding convolution's kernel (``fuse_batchnorm=True``).
* ``nn.AvgPool*d``: a depthwise strided convolution with the kernel
  ``1 / prod(k)`` (``count_include_pad=False``: the mean over the entries
  inside the image, a diagonal scaling after it); with ``ceil_mode=True``
  the exact sparse matrix of torch's windows (the last ones partial).
* ``nn.AdaptiveAvgPool*d``: the same strided convolution where every
  output size divides the input size (torch's windows are then the
  ``n / m`` blocks), else the exact sparse matrix of torch's windows
  ``[floor(i n / m), ceil((i + 1) n / m))`` (a :class:`pylops.MatrixMult`).
* ``nn.Flatten`` (all but the batch axis), ``nn.Identity``, ``nn.Dropout``
  in eval mode: the identity.
"""

from __future__ import annotations

import numpy as np

__all__ = ["from_torch", "layer_operator", "torch_padding_pairs", "LINEAR_MODULES"]

#: The module classes (by name) :func:`layer_operator` converts.
LINEAR_MODULES = (
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
    "Flatten", "Identity", "Dropout",
)


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without torch
        raise ImportError("structops.from_torch needs PyTorch: pip install 'structops[torch]'") from None
    return torch


def _weight(t, dtype):
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(dtype, copy=False))


def torch_padding_pairs(padding, kernel_size, dilation):
    """torch's ``padding`` argument (int, tuple, ``"same"``, ``"valid"``) as ``((lo, hi), ...)`` per axis."""
    D = len(kernel_size)
    if padding == "valid":
        return ((0, 0),) * D
    if padding == "same":
        pairs = []
        for k, d in zip(kernel_size, dilation):
            total = d * (k - 1)
            pairs.append((total // 2, total - total // 2))
        return tuple(pairs)
    if isinstance(padding, int):
        return ((padding, padding),) * D
    return tuple((int(p), int(p)) for p in padding)


def _shape_out(op):
    return tuple(op.dimsd)


def layer_operator(module, input_shape, *, dtype=np.float64):
    """The operator of one module's linear part for an input of shape ``input_shape``.

    Parameters
    ----------
    module : torch.nn.Module
        One of :data:`LINEAR_MODULES`.
    input_shape : tuple of int
        One sample, without the batch axis: ``(c, *spatial)`` or ``(features,)``.
    dtype : dtype
        Of the copied weights.

    Returns
    -------
    op : pylops.LinearOperator or None
        None for the identity modules.
    out_shape : tuple of int
        The shape of the module's output (as torch computes it).

    Raises
    ------
    NotImplementedError
        For modules that are not linear maps of this list, naming the module.
    """
    import pylops

    from ..operators import ConvND, ConvTransposeND, PaddedConvND

    torch = _torch()
    nn = torch.nn
    name = type(module).__name__
    shape = tuple(int(v) for v in input_shape)
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError(f"{name} has no weights yet (a lazy module): run the model on an input first")
    if isinstance(module, (nn.Identity, nn.Dropout)):
        if isinstance(module, nn.Dropout) and module.training:
            raise NotImplementedError(f"{name} in training mode is random, not a linear map: call model.eval()")
        return None, shape
    if isinstance(module, nn.Flatten):
        if module.start_dim not in (1, -len(shape) - 1) or module.end_dim != -1:
            raise NotImplementedError(f"{name}(start_dim={module.start_dim}, end_dim={module.end_dim}): only "
                                      "the flattening of all but the batch axis is supported")
        return None, (int(np.prod(shape)),)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        _check_input(name, shape, module.in_channels, "in_channels")
        K = _weight(module.weight, dtype)
        spatial = shape[1:]
        pairs = torch_padding_pairs(module.padding, module.kernel_size, module.dilation)
        kw = dict(stride=module.stride, dilation=module.dilation, groups=module.groups)
        if module.padding_mode == "zeros":
            op = ConvND(K, spatial, padding=pairs, **kw)
        else:
            op = PaddedConvND(K, spatial, padding=pairs, padding_mode=module.padding_mode, **kw)
        return op, _shape_out(op)
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        if module.padding_mode != "zeros":  # pragma: no cover - torch refuses it too
            raise NotImplementedError(f"{name} with padding_mode={module.padding_mode!r}")
        _check_input(name, shape, module.in_channels, "in_channels")
        op = ConvTransposeND(_weight(module.weight, dtype), shape[1:], stride=module.stride, padding=module.padding,
                             output_padding=module.output_padding, dilation=module.dilation, groups=module.groups)
        return op, _shape_out(op)
    if isinstance(module, nn.Linear):
        if len(shape) != 1:
            raise NotImplementedError(f"{name} on an input of shape {shape}: put nn.Flatten before it")
        _check_input(name, shape, module.in_features, "in_features")
        W = _weight(module.weight, dtype)
        return pylops.MatrixMult(W, dtype=W.dtype), (W.shape[0],)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        if module.training:
            raise NotImplementedError(f"{name} in training mode normalises by the batch: call model.eval()")
        if module.running_var is None:
            raise NotImplementedError(f"{name}(track_running_stats=False) normalises by the batch in eval mode too: "
                                      "not a linear map of one sample")
        _check_input(name, shape, module.num_features, "num_features")
        scale = _bn_scale(module, dtype)
        d = np.repeat(scale, int(np.prod(shape[1:])) if len(shape) > 1 else 1)
        return pylops.Diagonal(d, dtype=d.dtype), shape
    if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        return _avgpool(module, shape, dtype)
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        return _adaptive_avgpool(module, shape, dtype)
    raise NotImplementedError(
        f"{name} is not one of the linear modules structops converts ({', '.join(LINEAR_MODULES)}, "
        "nn.Sequential of them)"
    )


def _check_input(name: str, shape: tuple, channels: int, what: str):
    """Refuse, naming the module, an input whose channels (or features) are not the module's."""
    D = int(name[-2]) if name[-2:-1].isdigit() and name.endswith("d") else None  # Conv2d -> 2, Linear -> None
    axes = {None: "(features,)", 1: "(c, n) or (c,)" if name.startswith("BatchNorm") else "(c, n)",
            2: "(c, h, w)", 3: "(c, d, h, w)"}
    ok_axes = (len(shape) == 1 if D is None else
               len(shape) in (1, 2) if name == "BatchNorm1d" else len(shape) == D + 1)
    if not ok_axes:
        raise ValueError(f"{name} takes one sample of shape {axes[D]}; got input shape {shape}")
    if shape[0] != channels:
        raise ValueError(f"{name} has {what}={channels}; the input shape {shape} has {shape[0]}")


def _bn_scale(module, dtype):
    var = module.running_var.detach().cpu().numpy().astype(np.float64)
    scale = 1.0 / np.sqrt(var + module.eps)
    if module.affine:
        scale = scale * module.weight.detach().cpu().numpy().astype(np.float64)
    return scale.astype(dtype)


def _avgpool(module, shape, dtype):
    import pylops

    from ..operators import ConvND

    D = len(shape) - 1
    tup = (lambda v: (v,) * D if isinstance(v, int) else tuple(v))
    k, s, p = tup(module.kernel_size), tup(module.stride if module.stride is not None else module.kernel_size), \
        tup(module.padding)
    c = shape[0]
    div = getattr(module, "divisor_override", None)
    if module.ceil_mode:  # partial windows at the end: torch's windows, exactly
        windows = [_pool_windows(n, kd, sd, pd, module.count_include_pad or bool(div))
                   for n, kd, sd, pd in zip(shape[1:], k, s, p)]
        return _window_average(c, shape[1:], windows, dtype, 1.0 / div if div else None)
    K = np.full((c, 1) + k, 1.0 / (div if div else int(np.prod(k))), dtype=dtype)
    op = ConvND(K, shape[1:], stride=s, padding=tuple((q, q) for q in p), groups=c)
    if not module.count_include_pad and any(p) and not div:
        # the mean over the entries inside the image: divide by their count instead of prod(k)
        ones = ConvND(np.ones((1, 1) + k), shape[1:], stride=s, padding=tuple((q, q) for q in p))
        count = ones @ np.ones(int(np.prod(shape[1:])))
        d = np.tile(np.prod(k) / count, c).astype(dtype)
        op = pylops.Diagonal(d, dtype=d.dtype) * op
        return op, (c,) + tuple(ones.out_shape)
    return op, tuple(op.dimsd)


def _pool_windows(n: int, k: int, s: int, p: int, count_padding: bool):
    """torch's average-pooling windows of an axis with ``ceil_mode=True``: ``(lo, hi, count)`` per output.

    ``[lo, hi)`` is the window clipped to the image; ``count`` the divisor's
    factor on this axis: the window clipped to the padded axis
    (``count_include_pad``) or to the image. The last window starts inside
    the image or its left padding, as torch's output size rule has it.
    """
    if n + 2 * p < k:
        raise ValueError(f"an average pool of window {k} on an axis of {n} entries padded by {p} on each side")
    m = -(-(n + 2 * p - k) // s) + 1
    if (m - 1) * s >= n + p:
        m -= 1
    out = []
    for i in range(m):
        start = i * s - p
        end = min(start + k, n + p)
        lo, hi = max(start, 0), min(end, n)
        out.append((lo, hi, end - start if count_padding else hi - lo))
    return out


def _adaptive_windows(n: int, m: int):
    """torch's adaptive pooling windows of an axis of ``n`` entries into ``m``: ``[floor(i n / m), ceil((i + 1) n / m))``."""
    bounds = [((i * n) // m, -((-(i + 1) * n) // m)) for i in range(m)]
    return [(lo, hi, hi - lo) for lo, hi in bounds]


def _window_average(c: int, n: tuple, windows, dtype, scale=None):
    """The sparse matrix of a separable average over windows, per channel: ``(op, out_shape)``.

    ``windows[d]`` lists ``(lo, hi, count)`` per output on axis ``d``: the
    entries ``lo <= i < hi`` weighted ``1 / count``. With ``scale`` every
    weight is ``scale`` instead (``divisor_override``).
    """
    import pylops
    import scipy.sparse as sp

    A = sp.identity(c, format="csr", dtype=dtype)
    for nd, win in zip(n, windows):  # C order: the channel, then the axes in turn
        rows, cols, vals = [], [], []
        for i, (lo, hi, count) in enumerate(win):
            if hi <= lo:  # a window of padding only: torch writes 0
                continue
            rows += [i] * (hi - lo)
            cols += range(lo, hi)
            vals += [1.0 if scale is not None else 1.0 / count] * (hi - lo)
        A = sp.kron(A, sp.csr_matrix((vals, (rows, cols)), shape=(len(win), nd), dtype=dtype), format="csr")
    if scale is not None:
        A = (A * scale).astype(dtype)
    return pylops.MatrixMult(A, dtype=A.dtype), (c,) + tuple(len(w) for w in windows)


def _adaptive_avgpool(module, shape, dtype):
    from ..operators import ConvND

    c, n = shape[0], shape[1:]
    D = len(n)
    size = module.output_size
    size = (size,) * D if isinstance(size, int) or size is None else tuple(size)
    if len(size) != D:
        raise ValueError(f"{type(module).__name__}(output_size={module.output_size}) on an input of shape {shape}")
    m = tuple(nd if s is None else int(s) for s, nd in zip(size, n))
    if any(md < 1 for md in m):
        raise ValueError(f"{type(module).__name__}: output size {m} must be positive")
    if all(nd % md == 0 for nd, md in zip(n, m)):  # windows of n / m entries, n / m apart: a strided convolution
        k = tuple(nd // md for nd, md in zip(n, m))
        op = ConvND(np.full((c, 1) + k, 1.0 / int(np.prod(k)), dtype=dtype), n, stride=k, padding="valid", groups=c)
        return op, tuple(op.dimsd)
    return _window_average(c, n, [_adaptive_windows(nd, md) for nd, md in zip(n, m)], dtype)


def from_torch(module, input_shape, *, fuse_batchnorm: bool = False, dtype=np.float64):
    """The linear part of a PyTorch module (or ``nn.Sequential`` of them) as one PyLops operator.

    Parameters
    ----------
    module : torch.nn.Module
        A module of :data:`LINEAR_MODULES` or an ``nn.Sequential`` (nested
        ones too) of them.
    input_shape : tuple of int
        One sample without the batch axis, e.g. ``(3, 32, 32)``.
    fuse_batchnorm : bool
        Fold every eval-mode batch norm into the convolution before it
        (its kernel scaled per output channel) instead of a diagonal.
    dtype : dtype
        Of the copied weights (default float64).

    Returns
    -------
    pylops.LinearOperator
        ``x -> model(x) - model(0)`` on flattened samples (C order), the
        product of the layers' operators; ``op.dims`` / ``op.dimsd`` are
        the input and output shapes.

    Examples
    --------
    With torch installed (not a doctest: the test suite runs without torch too)::

        import torch, structops
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.AvgPool2d(2)).double()
        op = structops.from_torch(m, (3, 16, 16))
        op.shape  # (512, 768)
    """
    import pylops

    ops, shape = [], tuple(int(v) for v in input_shape)
    for m in _leaves(module):
        op, out = layer_operator(m, shape, dtype=dtype)
        if fuse_batchnorm and type(m).__name__.startswith("BatchNorm") and ops and _fusable(ops[-1]):
            prev = ops.pop()
            scale = _bn_scale(m, dtype)
            ops.append(prev.with_kernel(prev.kernel * scale.reshape((-1,) + (1,) * (prev.kernel.ndim - 1))))
        elif op is not None:
            ops.append(op)
        shape = out
    if not ops:
        n = int(np.prod(input_shape))
        return pylops.Identity(n, dtype=dtype)
    dims = tuple(int(v) for v in input_shape)
    if len(ops) == 1:
        op = ops[0]
        if (tuple(op.dims), tuple(op.dimsd)) == (dims, shape):
            return op
        # one operator between flattenings: the model's shapes on a wrapper, the operator's own kept (a
        # diagonal multiplies by its dims)
        return pylops.LinearOperator(Op=op, dims=dims, dimsd=shape)
    chain = ops[0]
    for op in ops[1:]:
        chain = op @ chain
    chain.dims, chain.dimsd = dims, shape  # a product's own attributes: its factors keep theirs
    return chain


def _fusable(op):
    from ..operators import ConvND, PaddedConvND

    return isinstance(op, (ConvND, PaddedConvND))


def _leaves(module):
    """The modules of a (nested) ``nn.Sequential`` in order; any other module as itself."""
    nn = _torch().nn
    if isinstance(module, nn.Sequential):
        for m in module:
            yield from _leaves(m)
    else:
        yield module

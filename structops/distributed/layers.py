"""Distributed convolution layers: output-channel, input-channel and batch splits over MPI ranks."""

from __future__ import annotations

import numpy as np

from .._backend import get_xp, is_cupy, to_numpy
from .._validate import as_data_array

__all__ = ["ConvND", "Conv2D", "distribute", "gather", "local_slice"]

SPLITS = ("out_channels", "in_channels", "batch", "rows")


def _mpi():
    try:
        import pylops_mpi
        from mpi4py import MPI
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("distributed layers need mpi4py and pylops-mpi: pip install 'structops[mpi]'") from exc
    return MPI, pylops_mpi


def local_slice(total: int, comm) -> slice:
    """The block of ``range(total)`` that rank ``comm.rank`` holds (``numpy.array_split``'s blocks)."""
    sizes = [len(b) for b in np.array_split(np.arange(total), comm.size)]
    start = int(np.sum(sizes[: comm.rank]))
    return slice(start, start + sizes[comm.rank])


def ConvND(kernel, in_shape, split: str = "out_channels", comm=None, batch: int = 1, **conv_options):
    """A convolution layer split over the ranks of ``comm``, as a ``pylops_mpi.MPILinearOperator``.

    Parameters
    ----------
    kernel : array, shape ``(c_out, c_in, *k)``
        The whole kernel (every rank passes the same one; each keeps its block).
    in_shape : tuple of int
        Spatial input shape.
    split : {"out_channels", "in_channels", "batch"}
        ``"out_channels"``: rank ``r`` applies the rows of its output channels;
        the input is broadcast (``Partition.BROADCAST``), the output scattered
        by channel blocks. ``"in_channels"``: rank ``r`` applies the columns of
        its input channels to its block of the input; the partial outputs are
        summed (the output is broadcast). ``"batch"``: every rank applies the
        whole layer to its block of ``batch`` images (block-diagonal).
        ``"rows"`` (2-D zero-padded layers of stride 1 along the rows whose
        output has the input's height, e.g. ``padding="same"``): rank ``r``
        holds a block of image rows of every channel, receives the
        ``padding`` rows it needs from its neighbours (a halo exchange), and
        returns the same block of output rows.
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.
    batch : int
        Images of a ``"batch"`` split (the other splits take one image).
    **conv_options
        ``stride``, ``padding``, ``dilation``, ``groups``, ... of
        :class:`structops.ConvND`.

    Returns
    -------
    pylops_mpi.MPILinearOperator
        Its ``local_op`` attribute is this rank's structops operator.

    Notes
    -----
    Inputs and outputs are flattened in the serial layer's order
    (``(c_in, *in_shape)`` per image, images one after another), so
    ``gather(op @ distribute(x, op, "model"))`` equals the serial product.
    Per product, the output-channel split moves nothing but needs the whole
    input on every rank; the input-channel split all-reduces one output
    (``c_out prod(out_shape)`` values); the batch split moves nothing; the
    row split sends ``c_in W`` values per padding row to each neighbour.
    """
    MPI, pylops_mpi = _mpi()
    from ..operators.conv import ConvND as SerialConv

    comm = MPI.COMM_WORLD if comm is None else comm
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    kernel = kernel if is_cupy(kernel) else np.asarray(kernel)
    c_out, c_in = kernel.shape[:2]
    if conv_options.get("groups", 1) != 1 and split not in ("batch", "rows"):
        raise ValueError("grouped layers are split by batch only (their channel blocks are already independent)")
    if split == "out_channels":
        if comm.size > c_out:
            raise ValueError(f"{comm.size} ranks for {c_out} output channels: at most one rank per channel")
        local = SerialConv(kernel[local_slice(c_out, comm)], in_shape, **conv_options)
        op = pylops_mpi.MPIVStack([local], base_comm=comm)
    elif split == "in_channels":
        if comm.size > c_in:
            raise ValueError(f"{comm.size} ranks for {c_in} input channels: at most one rank per channel")
        local = SerialConv(kernel[:, local_slice(c_in, comm)], in_shape, **conv_options)
        op = pylops_mpi.MPIHStack([local], base_comm=comm)
    elif split == "rows":
        op = _row_split(kernel, in_shape, comm, conv_options)
        return op
    else:
        if comm.size > batch:
            raise ValueError(f"{comm.size} ranks for a batch of {batch}: at most one rank per image")
        layer = SerialConv(kernel, in_shape, **conv_options)
        mine = local_slice(batch, comm)
        op = pylops_mpi.MPIBlockDiag([layer] * (mine.stop - mine.start), base_comm=comm)
        local = layer
    op.local_op, op.split = local, split
    return op


def Conv2D(kernel, in_shape, split: str = "out_channels", comm=None, batch: int = 1, **conv_options):
    """:func:`ConvND` for 2-D layers (``kernel`` of shape ``(c_out, c_in, kh, kw)``)."""
    if np.ndim(kernel) != 4:
        raise ValueError(f"Conv2D needs a 4-D kernel (c_out, c_in, kh, kw); got shape {np.shape(kernel)}")
    return ConvND(kernel, in_shape, split=split, comm=comm, batch=batch, **conv_options)


def distribute(x, op, side: str = "model", base_comm_nccl=None):
    """The global vector ``x`` as the ``DistributedArray`` that ``op`` takes (``"model"``) or returns (``"data"``).

    Every rank passes the same ``x``; each keeps its block (or all of it, when
    the layout is broadcast). A CuPy ``x`` gives a CuPy-engine array (the
    layer's products then run on each rank's GPU); ``base_comm_nccl`` (a
    ``cupy.cuda.nccl.NcclCommunicator``, e.g. from
    ``pylops_mpi.utils._nccl.initialize_nccl_comm()``) makes pylops-mpi's
    collectives on it go through NCCL.
    """
    _mpi()  # a clear error when the extra is missing
    from pylops_mpi import Partition

    comm = op.base_comm
    x = as_data_array(x, "x").reshape(-1)  # NumPy or CuPy, as given (lists become NumPy)
    if op.split == "rows":
        c, w = (op.c_in, op.width) if side == "model" else (op.c_out, op.width_out)
        return _scattered(x.reshape(c, op.height, w)[:, op.rows].ravel(), comm, base_comm_nccl=base_comm_nccl)
    local = op.local_op
    broadcast = (op.split == "out_channels" and side == "model") or (op.split == "in_channels" and side == "data")
    if broadcast:
        d = _distributed_array(x.size, comm, Partition.BROADCAST, x, base_comm_nccl)
        d[:] = x
        return d
    size = (local.shape[1] if side == "model" else local.shape[0]) * (len(op.ops) if op.split == "batch" else 1)
    sizes = comm.allgather(size)
    start = int(np.sum(sizes[: comm.rank]))
    return _scattered(x[start:start + size], comm, sizes, base_comm_nccl)


def gather(d, op=None):
    """The global vector of a ``DistributedArray`` on every rank, in the serial layer's order.

    ``op`` is needed for the ``"rows"`` split only (its blocks are rows of
    every channel, not contiguous pieces of the flattened image). The result
    is on the array's engine (NumPy or CuPy).
    """
    if op is None or getattr(op, "split", None) != "rows":
        return d.asarray()
    xp = get_xp(d.local_array)
    blocks = [xp.asarray(b) for b in op.base_comm.allgather(to_numpy(d.local_array))]
    data = sum(b.size for b in blocks) != op.shape[1]
    c, w = (op.c_out, op.width_out) if data else (op.c_in, op.width)
    return xp.concatenate([b.reshape(c, -1, w) for b in blocks], axis=1).ravel()


def _distributed_array(size, comm, partition, like, base_comm_nccl=None, local_shapes=None):
    """An empty ``DistributedArray`` on ``like``'s engine (NumPy or CuPy) and dtype."""
    from pylops_mpi import DistributedArray

    return DistributedArray(global_shape=int(size), base_comm=comm, base_comm_nccl=base_comm_nccl,
                            partition=partition, local_shapes=local_shapes,
                            engine="cupy" if is_cupy(like) else "numpy", dtype=like.dtype)


def _scattered(local, comm, sizes=None, base_comm_nccl=None):
    """A ``DistributedArray`` (SCATTER) whose block on this rank is ``local`` (``sizes``: every rank's, if known)."""
    from pylops_mpi import Partition

    sizes = comm.allgather(int(local.size)) if sizes is None else sizes
    d = _distributed_array(np.sum(sizes), comm, Partition.SCATTER, local, base_comm_nccl, [(s,) for s in sizes])
    d[:] = local
    return d


def _row_split(kernel, in_shape, comm, conv_options):
    """The ``"rows"`` split: a pylops-mpi operator with a halo exchange of the padding rows."""
    MPI, pylops_mpi = _mpi()
    from ..operators.conv import ConvND as SerialConv

    if len(in_shape) != 2:
        raise ValueError(f"the rows split is for 2-D layers; got in_shape {tuple(in_shape)}")
    serial = SerialConv(kernel, in_shape, **conv_options)
    geo = serial.geometry
    (pt, pb), (pl, pr) = geo.padding
    H, W = in_shape
    if geo.circular or geo.stride[0] != 1 or geo.out_shape[0] != H:
        raise ValueError("the rows split needs zero padding, stride 1 along the rows and an output as tall as "
                         "the input (e.g. padding='same')")
    rows = local_slice(H, comm)
    h = rows.stop - rows.start
    if comm.allreduce(h, op=MPI.MIN) < max(pt, pb, 1):
        raise ValueError(f"{comm.size} ranks leave a block of fewer than {max(pt, pb, 1)} rows: use fewer ranks")
    opts = dict(conv_options)
    opts["padding"] = ((0, 0), (pl, pr))
    local = SerialConv(kernel, (h + pt + pb, W), **opts)
    up = comm.rank - 1 if comm.rank > 0 else MPI.PROC_NULL
    down = comm.rank + 1 if comm.rank < comm.size - 1 else MPI.PROC_NULL
    c_in, c_out, W_out = serial.c_in, serial.c_out, geo.out_shape[1]

    def exchange(send, dest, source, shape, dtype):
        """``send`` to ``dest``, the same shape from ``source`` (zeros from ``PROC_NULL``); CuPy halos go
        through the host (``c_in`` rows of ``W`` values: no CUDA-aware MPI needed)."""
        recv = np.zeros(shape, dtype=dtype)
        comm.Sendrecv(np.ascontiguousarray(to_numpy(send)), dest=dest, recvbuf=recv, source=source)
        return get_xp(send).asarray(recv)

    class RowSplitConv(pylops_mpi.MPILinearOperator):
        def _matvec(self, x):
            X = x.local_array.reshape(c_in, h, W)
            xp, dt = get_xp(X), X.dtype
            top = exchange(X[:, h - pt:], down, up, (c_in, pt, W), dt) if pt else X[:, :0]
            bottom = exchange(X[:, :pb], up, down, (c_in, pb, W), dt) if pb else X[:, :0]
            ext = xp.concatenate([top, X, bottom], axis=1)
            return _scattered(local.matvec(ext.ravel()), comm, base_comm_nccl=x.base_comm_nccl)

        def _rmatvec(self, y):
            E = local.rmatvec(y.local_array).reshape(c_in, h + pt + pb, W)
            G = E[:, pt:pt + h].copy()
            if pt:  # the rows above this block belong to the rank above: theirs to add
                G[:, h - pt:] += exchange(E[:, :pt], up, down, (c_in, pt, W), G.dtype)
            if pb:
                G[:, :pb] += exchange(E[:, pt + h:], down, up, (c_in, pb, W), G.dtype)
            return _scattered(G.ravel(), comm, base_comm_nccl=y.base_comm_nccl)

    op = RowSplitConv(shape=serial.shape, dtype=serial.dtype, base_comm=comm)
    op.local_op, op.split, op.rows = local, "rows", rows
    op.c_in, op.c_out, op.height, op.width, op.width_out = c_in, c_out, H, W, W_out
    return op

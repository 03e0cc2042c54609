"""Distributed convolution layers: output-channel, input-channel and batch splits over MPI ranks."""

from __future__ import annotations

import numpy as np

from .._backend import get_xp, is_cupy, to_numpy
from .._validate import as_data_array

__all__ = ["ConvND", "Conv2D", "distribute", "gather", "local_slice"]

SPLITS = ("out_channels", "in_channels", "batch", "rows", "tiles")


def _mpi():
    try:
        import pylops_mpi
        from mpi4py import MPI
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("distributed layers need mpi4py and pylops-mpi: pip install 'structops[mpi]'") from exc
    return MPI, pylops_mpi


def _block(total: int, parts: int, k: int) -> slice:
    """Block ``k`` of ``range(total)`` in ``parts`` blocks, as ``numpy.array_split`` cuts it."""
    sizes = [len(b) for b in np.array_split(np.arange(total), parts)]
    start = int(np.sum(sizes[:k]))
    return slice(start, start + sizes[k])


def local_slice(total: int, comm) -> slice:
    """The block of ``range(total)`` that rank ``comm.rank`` holds (``numpy.array_split``'s blocks)."""
    return _block(total, comm.size, comm.rank)


def ConvND(kernel, in_shape, split: str = "out_channels", comm=None, batch: int = 1, grid=None, **conv_options):
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
        returns the same block of output rows. ``"tiles"``: the same on a 2-D
        grid of ranks (``grid``), each holding a tile of rows and columns of
        every channel, the halos exchanged along both axes (the corners with
        them); stride 1 and an output of the input's size along every axis the
        grid splits.
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.
    batch : int
        Images of a ``"batch"`` split (the other splits take one image).
    grid : tuple of int, optional
        ``(ranks along the rows, ranks along the columns)`` of the
        ``"tiles"`` split, their product ``comm.size`` (default
        ``MPI.Compute_dims``: as square as the rank count allows). Rank
        ``r`` holds tile ``divmod(r, grid[1])``.
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
    row split sends ``c_in W`` values per padding row to each neighbour; a
    tile of ``h x w`` pixels sends ``c_in`` times ``w`` values per padding row
    and ``h`` plus the padding rows per padding column: ``c_in (p_r w + p_c h)``
    per neighbour pair instead of ``c_in p_r W``, less on many ranks.
    """
    MPI, pylops_mpi = _mpi()
    from ..operators.conv import ConvND as SerialConv

    comm = MPI.COMM_WORLD if comm is None else comm
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if grid is not None and split not in ("rows", "tiles"):
        raise ValueError(f"grid is for the tiles split; got split={split!r}")
    kernel = kernel if is_cupy(kernel) else np.asarray(kernel)
    c_out, c_in = kernel.shape[:2]
    if conv_options.get("groups", 1) != 1 and split not in ("batch", "rows", "tiles"):
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
    elif split in ("rows", "tiles"):
        if grid is not None and split == "rows":
            raise ValueError("grid is for the tiles split; the rows split is the grid (comm.size, 1)")
        if split == "rows":
            grid = (comm.size, 1)
        elif grid is None:
            grid = tuple(MPI.Compute_dims(comm.size, 2))
        return _tile_split(kernel, in_shape, comm, tuple(int(g) for g in grid), split, conv_options)
    else:
        if comm.size > batch:
            raise ValueError(f"{comm.size} ranks for a batch of {batch}: at most one rank per image")
        layer = SerialConv(kernel, in_shape, **conv_options)
        mine = local_slice(batch, comm)
        op = pylops_mpi.MPIBlockDiag([layer] * (mine.stop - mine.start), base_comm=comm)
        local = layer
    op.local_op, op.split = local, split
    return op


def Conv2D(kernel, in_shape, split: str = "out_channels", comm=None, batch: int = 1, grid=None, **conv_options):
    """:func:`ConvND` for 2-D layers (``kernel`` of shape ``(c_out, c_in, kh, kw)``)."""
    if np.ndim(kernel) != 4:
        raise ValueError(f"Conv2D needs a 4-D kernel (c_out, c_in, kh, kw); got shape {np.shape(kernel)}")
    return ConvND(kernel, in_shape, split=split, comm=comm, batch=batch, grid=grid, **conv_options)


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
    if op.split in ("rows", "tiles"):
        c, w, cols = (op.c_in, op.width, op.cols) if side == "model" else (op.c_out, op.width_out, op.cols_out)
        return _scattered(x.reshape(c, op.height, w)[:, op.rows, cols].ravel(), comm, base_comm_nccl=base_comm_nccl)
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

    ``op`` is needed for the ``"rows"`` and ``"tiles"`` splits only (their
    blocks are tiles of every channel, not contiguous pieces of the flattened
    image). The result is on the array's engine (NumPy or CuPy).
    """
    if op is None or getattr(op, "split", None) not in ("rows", "tiles"):
        return d.asarray()
    xp = get_xp(d.local_array)
    blocks = op.base_comm.allgather(to_numpy(d.local_array))
    data = sum(b.size for b in blocks) != op.shape[1]
    c, w = (op.c_out, op.width_out) if data else (op.c_in, op.width)
    out = np.empty((c, op.height, w), dtype=blocks[0].dtype)
    for rank, b in enumerate(blocks):
        rows, cols = _tile(op.height, op.width, op.grid, rank)
        cols = cols if not data or op.grid[1] > 1 else slice(None)
        out[:, rows, cols] = b.reshape(c, rows.stop - rows.start, -1)
    return xp.asarray(out.ravel())


def _tile(H: int, W: int, grid, rank: int):
    """The ``(rows, cols)`` slices of rank ``rank``'s tile (``numpy.array_split``'s blocks along each axis)."""
    i, j = divmod(rank, grid[1])
    return _block(H, grid[0], i), _block(W, grid[1], j)


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


def _tile_split(kernel, in_shape, comm, grid, split, conv_options):
    """The ``"rows"`` and ``"tiles"`` splits: a pylops-mpi operator with a halo exchange along both axes."""
    MPI, pylops_mpi = _mpi()
    from ..operators.conv import ConvND as SerialConv

    if len(in_shape) != 2:
        raise ValueError(f"the {split} split is for 2-D layers; got in_shape {tuple(in_shape)}")
    if len(grid) != 2 or min(grid) < 1 or grid[0] * grid[1] != comm.size:
        raise ValueError(f"grid {grid} does not hold the {comm.size} ranks (two positive counts, their product)")
    serial = SerialConv(kernel, in_shape, **conv_options)
    geo = serial.geometry
    (pt, pb), (pl, pr) = geo.padding
    H, W = in_shape
    for axis, name in ((0, "rows"), (1, "columns")):
        if axis == 0 or grid[1] > 1:  # the columns of a rows split are the local layer's own
            if geo.circular or geo.stride[axis] != 1 or geo.out_shape[axis] != in_shape[axis]:
                raise ValueError(f"the {split} split needs zero padding, stride 1 along the {name} and an output "
                                 f"as {'tall' if axis == 0 else 'wide'} as the input (e.g. padding='same')")
    rows, cols = _tile(H, W, grid, comm.rank)
    h, w = rows.stop - rows.start, cols.stop - cols.start
    if grid[1] == 1:  # whole rows: the columns padded by the local layer
        halo_l = halo_r = 0
        local_padding = ((0, 0), (pl, pr))
    else:
        halo_l, halo_r = pl, pr
        local_padding = ((0, 0), (0, 0))
    short = comm.allreduce((h < max(pt, pb, 1)) or (w < max(halo_l, halo_r, 1)), op=MPI.LOR)
    if short:
        raise ValueError(f"{comm.size} ranks on a {grid[0]} x {grid[1]} grid leave a tile smaller than its halo "
                         f"({max(pt, pb, 1)} rows, {max(halo_l, halo_r, 1)} columns): use fewer ranks")
    opts = dict(conv_options)
    opts["padding"] = local_padding
    local = SerialConv(kernel, (h + pt + pb, w + halo_l + halo_r), **opts)
    i, j = divmod(comm.rank, grid[1])

    def neighbour(di, dj):
        a, b = i + di, j + dj
        return a * grid[1] + b if 0 <= a < grid[0] and 0 <= b < grid[1] else MPI.PROC_NULL

    up, down, left, right = neighbour(-1, 0), neighbour(1, 0), neighbour(0, -1), neighbour(0, 1)
    c_in, c_out, W_out = serial.c_in, serial.c_out, geo.out_shape[1]

    def exchange(send, dest, source, shape, dtype):
        """``send`` to ``dest``, the same shape from ``source`` (zeros from ``PROC_NULL``); CuPy halos go
        through the host (a few rows or columns: no CUDA-aware MPI needed)."""
        recv = np.zeros(shape, dtype=dtype)
        comm.Sendrecv(np.ascontiguousarray(to_numpy(send)), dest=dest, recvbuf=recv, source=source)
        return get_xp(send).asarray(recv)

    def grow(X, axis, lo, hi, before, after):
        """``X`` with ``lo`` slices from ``before`` and ``hi`` from ``after`` along ``axis`` (1: rows, 2: columns)."""
        if not (lo or hi):
            return X
        n, take = X.shape[axis], (lambda a, b: X[(slice(None),) * axis + (slice(a, b),)])
        shape = lambda k: X.shape[:axis] + (k,) + X.shape[axis + 1:]  # noqa: E731
        parts = [exchange(take(n - lo, n), after, before, shape(lo), X.dtype)] if lo else []
        parts += [X] + ([exchange(take(0, hi), before, after, shape(hi), X.dtype)] if hi else [])
        return get_xp(X).concatenate(parts, axis=axis)

    def fold(E, axis, lo, hi, before, after):
        """The adjoint of :func:`grow`: the halos sent back and added where they came from."""
        if not (lo or hi):
            return E
        n = E.shape[axis] - lo - hi
        take = lambda a, b: E[(slice(None),) * axis + (slice(a, b),)]  # noqa: E731
        G = take(lo, lo + n).copy()
        at = lambda a, b: (slice(None),) * axis + (slice(a, b),)  # noqa: E731
        if lo:  # the slices before this block are the neighbour's before: theirs to add
            G[at(n - lo, n)] += exchange(take(0, lo), before, after, G[at(n - lo, n)].shape, G.dtype)
        if hi:
            G[at(0, hi)] += exchange(take(lo + n, lo + n + hi), after, before, G[at(0, hi)].shape, G.dtype)
        return G

    class TileSplitConv(pylops_mpi.MPILinearOperator):
        def _matvec(self, x):
            X = x.local_array.reshape(c_in, h, w)
            ext = grow(grow(X, 1, pt, pb, up, down), 2, halo_l, halo_r, left, right)
            return _scattered(local.matvec(ext.ravel()), comm, base_comm_nccl=x.base_comm_nccl)

        def _rmatvec(self, y):
            E = local.rmatvec(y.local_array).reshape(c_in, h + pt + pb, w + halo_l + halo_r)
            G = fold(fold(E, 2, halo_l, halo_r, left, right), 1, pt, pb, up, down)
            return _scattered(G.ravel(), comm, base_comm_nccl=y.base_comm_nccl)

    op = TileSplitConv(shape=serial.shape, dtype=serial.dtype, base_comm=comm)
    op.local_op, op.split, op.rows, op.cols, op.grid = local, split, rows, cols, grid
    op.cols_out = cols if grid[1] > 1 else slice(None)
    op.c_in, op.c_out, op.height, op.width, op.width_out = c_in, c_out, H, W, W_out
    return op

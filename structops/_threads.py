"""Worker threads for structops' own NumPy passes over blocks of channel groups.

A grouped layer's product is independent across its channel groups, and its
passes (padding copies, elementwise ``einsum`` of the taps, crops) are NumPy
calls that release the GIL; so is an ungrouped layer's across the channels it
writes. :func:`run_blocks` splits such a product into contiguous blocks of
groups (or channels) and runs them on threads started for the call and
joined before it returns. This is not the BLAS threading the package
keeps at one thread (:func:`set_blas_threads`): no worker outlives a product,
so none spins between calls or is alive when a process forks, and a product
is split only when each block has at least :data:`MIN_BLOCK_WORK`
multiply-adds, so small products never pay for starting a thread (about
0.1 ms).
"""

from __future__ import annotations

import os
import threading

__all__ = ["set_threads", "get_threads", "usable_cpus", "block_count", "run_blocks", "MIN_BLOCK_WORK"]

# Multiply-adds a block must have before a product is split over threads: about 0.5 ms of
# one core's work, against the 0.1 ms or so it costs to start a thread and join it here.
MIN_BLOCK_WORK = 2**21

_threads: int | None = None  # None: OMP_NUM_THREADS if set, else the CPUs this process may run on
_local = threading.local()  # .inside: this thread is running a block (blocks run nested work serially)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask on Linux, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "")
    try:
        n = int(env.split(",")[0])
        if n >= 1:
            return n
    except ValueError:
        pass
    return usable_cpus()


def set_threads(n: int | None) -> int | None:
    """Number of threads structops' own NumPy passes may use.

    Parameters
    ----------
    n : int or None
        ``1`` runs every product on the calling thread; ``None`` (default)
        takes ``OMP_NUM_THREADS`` where it is set (as under ``mpiexec``
        launches that set it to 1), else the CPUs this process may run on.

    Returns
    -------
    int or None
        The setting before the call, to restore it with.

    Notes
    -----
    Only products that split into blocks of at least :data:`MIN_BLOCK_WORK`
    multiply-adds use more than one thread: the grouped and depthwise
    convolutions (direct method, NumPy arrays) across their channel groups.
    BLAS keeps its own setting, :func:`set_blas_threads`.
    """
    global _threads
    if n is not None:
        if isinstance(n, bool) or int(n) != n or int(n) < 1:
            raise ValueError(f"number of threads must be an integer >= 1 or None; got {n!r}")
        n = int(n)
    old, _threads = _threads, n
    return old


def get_threads() -> int:
    """The number of threads :func:`run_blocks` may use (see :func:`set_threads`)."""
    return _threads if _threads is not None else _default_threads()


def _run_inside(fn, i0, i1, errors, b):
    _local.inside = True
    try:
        fn(i0, i1)
    except BaseException as exc:  # raised by run_blocks on the calling thread
        errors[b] = exc
    finally:
        _local.inside = False


def block_count(n: int, work: float, min_work: float | None = None) -> int:
    """Blocks :func:`run_blocks` should split ``n`` items of ``work`` multiply-adds in all into.

    At most :func:`get_threads` and ``n``, each of at least ``min_work``
    (default :data:`MIN_BLOCK_WORK`); 1 on a thread that is running a block already.
    """
    if getattr(_local, "inside", False):
        return 1
    min_work = MIN_BLOCK_WORK if min_work is None else min_work
    return max(1, min(get_threads(), n, int(work // max(min_work, 1))))


def run_blocks(n: int, blocks: int, fn) -> None:
    """Call ``fn(i0, i1)`` on ``blocks`` contiguous blocks that cover ``range(n)``, one thread each.

    Parameters
    ----------
    n : int
        Number of independent items (channel groups).
    blocks : int
        Number of blocks (see :func:`block_count`); the calling thread runs
        the first, each other block gets a thread started for it.
    fn : callable
        ``fn(i0, i1)`` does items ``i0 <= i < i1``; blocks must write disjoint
        outputs. Its return value is ignored; an exception in any block is
        raised here, after every block has finished.
    """
    blocks = max(1, min(blocks, n))
    if blocks == 1:
        fn(0, n)
        return
    bounds = [n * b // blocks for b in range(blocks + 1)]
    errors = [None] * blocks
    workers = [threading.Thread(target=_run_inside, args=(fn, bounds[b], bounds[b + 1], errors, b),
                                name=f"structops-block-{b}", daemon=True) for b in range(1, blocks)]
    for w in workers:
        w.start()
    _run_inside(fn, bounds[0], bounds[1], errors, 0)
    for w in workers:  # every block finishes before this returns or raises: they write the caller's arrays
        w.join()
    error = next((e for e in errors if e is not None), None)
    if error is not None:
        raise error

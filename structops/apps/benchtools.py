"""Helpers shared by the command line and the benchmarks: timing and baselines.

Timings are medians of repeated wall-clock runs after warm-up runs; a ``sync``
callable (e.g. ``cupy.cuda.Device().synchronize``) waits for a GPU before each
clock reading. The baselines are what a user would write without structops.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["median_time", "format_time", "pylops_conv2d_block"]


def median_time(func, repeat: int = 5, warmup: int = 1, sync=None) -> float:
    """Median wall time of ``func()`` in seconds over ``repeat`` runs after ``warmup`` runs (one call a run)."""
    return median_times([func], repeat, warmup, sync, min_sample=0.0)[0]


def median_times(funcs, repeat: int = 5, warmup: int = 1, sync=None, min_sample: float = 1e-2) -> list:
    """Median wall times of several ``funcs`` timed in turn, round after round.

    Each round times every function once, so a drift of the machine
    (frequency, other load, memory) over the run reaches all of them alike;
    timing one function's runs and then the next's can swing a ratio by half
    on a small shared machine. Each round takes the functions in a random
    order (seeded: the same every run), so none always runs first or always
    right after the same function: torch's OpenMP workers spin for some
    milliseconds after a product, and with a fixed cyclic order the function
    listed after torch's always ran on cores they held (a two-thread product
    measured 8 ms alone and 10 to 18 ms right after torch's).

    A function faster than ``min_sample`` seconds (timed on one call after its
    ``warmup`` calls) is called as many times per sample as fill it and the
    sample is their mean: single calls of a few hundred microseconds are at
    the mercy of one interrupt. Sizing the samples on the first call instead
    (which pays one-time set-up, a few milliseconds for a torch kernel) gave
    that function a few calls a sample, each the first after another
    function's, and measured it up to 30% slower. ``min_sample=0`` times one
    call a sample (no sizing call).
    """
    number = []
    for f in funcs:
        for _ in range(warmup):
            f()
        if sync is not None:
            sync()
        if min_sample <= 0:
            number.append(1)
            continue
        t0 = time.perf_counter()
        f()
        if sync is not None:
            sync()
        once = time.perf_counter() - t0
        number.append(int(min(1000, max(1, np.ceil(min_sample / max(once, 1e-9))))))
    times = [[] for _ in funcs]
    n = len(funcs)
    order = np.random.default_rng(0)
    for _ in range(repeat):
        for j in order.permutation(n):
            t0 = time.perf_counter()
            for _ in range(number[j]):
                funcs[j]()
            if sync is not None:
                sync()
            times[j].append((time.perf_counter() - t0) / number[j])
    return [float(np.median(ts)) for ts in times]


def format_time(seconds: float) -> str:
    """``'412.3 us'``, ``'12.34 ms'`` or ``'1.234 s'``; ``'-'`` for NaN (not timed)."""
    if seconds != seconds:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def pylops_conv2d_block(kernel, in_shape):
    """The multi-channel 'same', stride-1 layer as a PyLops user writes it today.

    ``pylops.signalprocessing.Convolve2D`` is a true (flipped) convolution of
    one channel with an ``offset`` giving the centre of the filter, so the
    cross-correlation layer ``y[o] = sum_i K[o, i] * x[i]`` is the
    ``pylops.Block`` of ``Convolve2D(in_shape, h=K[o, i, ::-1, ::-1],
    offset=((kh-1)//2, (kw-1)//2))``: ``c_out * c_in`` operators.

    Parameters
    ----------
    kernel : ndarray, shape ``(c_out, c_in, kh, kw)``, odd ``kh``, ``kw``
    in_shape : tuple of int, ``(H, W)``

    Returns
    -------
    pylops.Block
    """
    import pylops

    c_out, c_in, kh, kw = kernel.shape
    offset = ((kh - 1) // 2, (kw - 1) // 2)
    return pylops.Block(
        [
            [
                pylops.signalprocessing.Convolve2D(
                    tuple(in_shape), h=kernel[o, i, ::-1, ::-1], offset=offset, method="fft", dtype=kernel.dtype
                )
                for i in range(c_in)
            ]
            for o in range(c_out)
        ]
    )

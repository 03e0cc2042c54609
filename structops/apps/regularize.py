"""``structops regularize``: reproduce Figure 4.1 of Guo (2019) with the exact Frobenius penalty.

Four random normal 3x3 kernels, ``(c_in, c_out) = (3, 1), (1, 3), (3, 6), (6, 3)``,
on 20x20 inputs ('same' zero padding, stride 1), regularised by minimising
``||M^T M - I||_F^2`` for 1000 iterations twice: with the paper's fixed step
schedule (``1e-5``, ``1e-4``, then ``1e-3``) and with L-BFGS and a
backtracking line search. For each case a PNG shows ``sigma_max`` (left axis)
and ``sigma_min`` (right axis, the ``min(m, n)``-th singular value) against
the iteration for both methods side by side, and a table reports the final
values, the first iteration at which each enters ``[0.95, 1.05]`` and the time.

Usage::

    structops regularize [--out DIR] [--quick] [--iterations N] [--seed S]
    python -m structops regularize ...
"""

from __future__ import annotations

import argparse
import math
import os
import time

from ..plotting import plot_regularization
from .args import parse, int_at_least, output_dir, positive_int

__all__ = ["main", "build_parser", "CASES"]

#: ``(c_in, c_out)`` of Figure 4.1 of Guo (2019).
CASES = ((3, 1), (1, 3), (3, 6), (6, 3))
BAND = (0.95, 1.05)
TARGET = (0.98, 1.02)


def build_parser(prog: str = "structops regularize") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Reproduce Figure 4.1 of Guo (2019): sigma_max and sigma_min of four random 3x3 "
            "conv layers on 20x20 inputs while minimising ||M^T M - I||_F^2, with the paper's "
            "fixed step schedule and with L-BFGS side by side; writes one PNG per case."
        ),
    )
    p.add_argument("--out", type=output_dir, default="regularize-figures", help="folder for the PNGs (default ./regularize-figures)")
    p.add_argument("--quick", action="store_true", help="12x12 inputs and at most 300 iterations (a few seconds)")
    p.add_argument("--iterations", type=positive_int, default=None, help="iterations per method (default 1000; 300 with --quick)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the random kernels (default 0)")
    p.add_argument("--size", type=positive_int, default=None, help="image side (default 20; 12 with --quick)")
    return p


def _first_in_band(values, iterations, lo, hi):
    for it, v in zip(iterations, values):
        if lo <= v <= hi:
            return int(it)
    return None


def _entry_iterations(res, kernels, geo_args):
    """Iterations from which sigma_max, sigma_min, both stay in BAND to the end (None: they end outside).

    Gaps between monitored iterations are refined from the stored kernels.
    """
    import numpy as np

    from ..solvers.regularize import extreme_singular_values

    h = res.history
    its, smax, smin = h["iteration"], h["sigma_max"].copy(), h["sigma_min"].copy()
    cache = {}

    def sig(it):
        if it not in cache:
            k = np.isfinite(smax) & (its == it)
            if k.any():
                cache[it] = (float(smax[k][0]), float(smin[k][0]))
            else:
                cache[it] = extreme_singular_values(kernels[it], *geo_args)
        return cache[it]

    mon = its[np.isfinite(smax)]
    if mon.size == 0:  # nothing monitored: every stored kernel is measured
        mon = np.asarray(sorted(kernels))
    out = []
    for which in (0, 1, 2):
        def inside(it):
            a, b = sig(it)
            if which == 0:
                return BAND[0] <= a <= BAND[1]
            if which == 1:
                return BAND[0] <= b <= BAND[1]
            return BAND[0] <= a <= BAND[1] and BAND[0] <= b <= BAND[1]

        outside = [int(it) for it in mon if not inside(int(it))]
        if outside and outside[-1] == int(mon[-1]):
            first = None  # ends outside the band
        else:
            last_out = outside[-1] if outside else -1
            first = int(mon[mon > last_out][0])
            # refine inside the gap between the last monitored iteration outside and the first inside
            it = first - 1
            while it > last_out and it in kernels and inside(it):
                first = it
                it -= 1
        out.append(first)
    return out


def _fmt(v):
    return "-" if v is None else str(v)


def main(argv=None) -> int:
    """Run the reproduction; returns 0 when every L-BFGS run ends with both sigmas in [0.98, 1.02]."""
    args, status = parse(build_parser(), argv)
    if args is None:
        return status
    import numpy as np

    from ..solvers.regularize import MONITORED_ROWS, regularize_spectrum

    size = args.size or (12 if args.quick else 20)
    iterations = args.iterations or (300 if args.quick else 1000)
    print(
        f"Guo (2019) Figure 4.1: ||M^T M - I||_F^2, 3x3 kernels ~ N(0, 1), {size}x{size} inputs, 'same' zero "
        f"padding, {iterations} iterations, seed {args.seed}"
    )
    print("sigma_min is the min(m, n)-th singular value; 'it ...' = iteration from which it stays in [0.95, 1.05]\n")
    header = (
        f"{'kernel':>12} {'method':>12} {'sigma_max':>10} {'sigma_min':>10} {'it smax':>8} {'it smin':>8} "
        f"{'it both':>8} {'iters':>6} {'seconds':>8}"
    )
    print(header)
    print("-" * len(header))
    all_ok = True
    for ci, co in CASES:
        rng = np.random.default_rng([args.seed, ci, co])
        K = rng.standard_normal((co, ci, 3, 3))
        runs = []
        for label, method in (("Guo schedule", "guo"), ("L-BFGS", "lbfgs")):
            kernels = {0: K}

            def keep(it, k, f, kernels=kernels):
                kernels[it] = k.copy()

            t0 = time.perf_counter()
            # the sigmas along the run, as in the figure (the solver monitors large layers only when asked):
            # every iteration of small layers, every 5th of larger ones, the entries refined from the kernels
            every = 1 if min(co, ci) * size * size <= MONITORED_ROWS else 5
            res = regularize_spectrum(K, (size, size), method=method, maxiter=iterations, callback=keep,
                                      history_every=every)
            entry = _entry_iterations(res, kernels, ((size, size),))
            seconds = time.perf_counter() - t0
            runs.append((label, res))
            name = f"3x3x{ci}x{co}"
            print(
                f"{name:>12} {label:>12} {res.sigma_max:10.4f} {res.sigma_min:10.4f} {_fmt(entry[0]):>8} "
                f"{_fmt(entry[1]):>8} {_fmt(entry[2]):>8} {res.nit:6d} {seconds:8.2f}"
            )
            if method == "lbfgs":
                ok = all(TARGET[0] <= v <= TARGET[1] for v in (res.sigma_max, res.sigma_min))
                all_ok &= ok and math.isfinite(res.fun)
        path = os.path.join(args.out, f"guo_fig4_1_{ci}x{co}.png")
        plot_regularization(path, f"3 x 3 x {ci} x {co} kernel, {size}x{size} input", runs, iterations)
    print(f"\nfigures written to {os.path.abspath(args.out)}")
    print(
        "L-BFGS: both sigmas in [0.98, 1.02] for every case"
        if all_ok
        else "L-BFGS: some case did NOT end with both sigmas in [0.98, 1.02]"
    )
    return 0 if all_ok else 1

"""Certified extreme singular values of structured layers: structural reductions against the plain route.

Run from the repository root::

    python benchmarks/bench_certified.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench_certified.py --quick    # small versions of every case

Cases
-----
(a) 64 -> 64 channels, 3x3, dilation 2, 'same' zero padding, 32x32 (16 -> 16 with
    ``--quick``): sigma_max and sigma_min certified (the four dilation sub-lattices are
    one 16x16 layer with multiplicity 4).
(b) depthwise 256 channels written as a full ``(256, 256, 3, 3)`` kernel, 56x56 (32
    channels with ``--quick``): sigma_max and cond; the channel components are 256
    independent single-channel layers. Compared with the plain route on the full
    layer (one Lanczos run on the whole operator, no reduction), which is timed and
    checked against the certified value.

Each line prints the value, its certified error bound, the methods, the reductions
and the wall time (``time.perf_counter``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import structops
from structops.linalg import spectra
from structops.linalg._common import _Opts


def _line(name, s, info):
    red = f"; reduced: {', '.join(info.reductions)}" if info.reductions else ""
    methods = ", ".join(sorted({m for m, _ in info.methods}))
    print(f"    {name:<28} {s:.10g}  +- {info.error_bound:.1e}  {info.seconds:7.2f} s   [{methods}{red}]")


def dilated(c, n):
    K = np.random.default_rng(0).standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)
    op = structops.Conv2D(K, (n, n), dilation=2)
    print(f"(a) {c} -> {c}, 3x3, dilation 2, 'same', {n}x{n}: {op.shape[0]} x {op.shape[1]}")
    s, info = structops.singular_values(op, k=1, return_info=True)
    _line("sigma_max", s[0], info)
    s2, info2 = structops.singular_values(op, k=1, which="smallest", return_info=True)
    _line("sigma_min", s2[0], info2)
    print(f"    cond = {s[0] / s2[0]:.6g}, total {info.seconds + info2.seconds:.2f} s")


def depthwise(c, n):
    rng = np.random.default_rng(1)
    K = np.zeros((c, c, 3, 3))
    for j in range(c):
        K[j, j] = rng.standard_normal((3, 3)) * np.sqrt(2 / 9)  # Kaiming
    op = structops.Conv2D(K, (n, n))
    print(f"(b) depthwise {c} channels as a full kernel, 3x3, 'same', {n}x{n}: {op.shape[0]} x {op.shape[1]}")
    s, info = structops.singular_values(op, k=1, return_info=True)
    _line("sigma_max (reduced)", s[0], info)
    t0 = time.perf_counter()
    plain = spectra._conv_values(op, 1, "largest", _Opts())[0]  # the whole layer, no reduction
    t_plain = time.perf_counter() - t0
    ok = abs(plain - s[0]) <= 1e-9 * s[0]
    print(f"    {'sigma_max (plain route)':<28} {plain:.10g}  {'right' if ok else 'WRONG'}           {t_plain:7.2f} s"
          f"   ratio {t_plain / info.seconds:.2f}x")
    s2, info2 = structops.singular_values(op, k=1, which="smallest", return_info=True)
    _line("sigma_min (reduced)", s2[0], info2)
    print(f"    cond = {s[0] / s2[0]:.6g}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small versions of every case")
    args = ap.parse_args(argv)
    print(f"structops {structops.__version__}, numpy {np.__version__}")
    if args.quick:
        dilated(16, 32)
        depthwise(32, 32)
    else:
        dilated(64, 32)
        depthwise(256, 56)


if __name__ == "__main__":
    main()

"""Extended (per-pixel) convolution: structops vs PyLops ``NonStationaryConvolve2D``.

Run from the repository root::

    python benchmarks/bench_extended.py            # full run
    python benchmarks/bench_extended.py --quick    # fewer repetitions

One 3x3 filter per pixel on a 256x256 image is the extended layer of Siahkoohi, Louboutin and Herrmann
``W = sum_i diag(w_i) T_i``; PyLops writes the same operator as the adjoint of
``NonStationaryConvolve2D(dims, hs, ihx=range(nx), ihz=range(nz))`` with a
filter at every pixel (no interpolation). Both are compared before timing.
The multi-channel case (16 -> 16 channels, 64x64) compares with a
``pylops.Block`` of those single-channel operators, what a PyLops user would
have to write. Ratios are ``time(PyLops) / time(structops)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform

import numpy as np
import pylops

import structops
from structops.apps.benchtools import format_time, median_time


def pylops_extended(weights, engine):
    """``W = NonStationaryConvolve2D(...).H`` per channel pair, as a Block when there are several."""
    c_out, c_in, kh, kw, nx, nz = weights.shape
    hs = weights.transpose(0, 1, 4, 5, 2, 3)  # (c_out, c_in, nx, nz, kh, kw)

    def one(o, i):
        return pylops.signalprocessing.NonStationaryConvolve2D(
            (nx, nz), np.ascontiguousarray(hs[o, i]), ihx=tuple(range(nx)), ihz=tuple(range(nz)), engine=engine
        ).H

    if c_out == c_in == 1:
        return one(0, 0)
    return pylops.Block([[one(o, i) for i in range(c_in)] for o in range(c_out)])


def case(name, weights, repeat, engine, rng):
    c_out, c_in, kh, kw, nx, nz = weights.shape
    ours = structops.ExtendedConv2D(weights, (nx, nz))
    ref = pylops_extended(weights, engine)
    x = rng.standard_normal(ours.shape[1])
    y = rng.standard_normal(ours.shape[0])
    rel_f = np.linalg.norm(ref.matvec(x) - ours.matvec(x)) / np.linalg.norm(ours.matvec(x))
    rel_a = np.linalg.norm(ref.rmatvec(y) - ours.rmatvec(y)) / np.linalg.norm(ours.rmatvec(y))
    if max(rel_f, rel_a) > 1e-12:
        raise SystemExit(f"{name}: PyLops and structops differ ({rel_f:.1e}, {rel_a:.1e})")
    print(f"{name}: same operator to {max(rel_f, rel_a):.1e}")
    for what, f_ours, f_ref in (
        ("forward", lambda: ours.matvec(x), lambda: ref.matvec(x)),
        ("adjoint", lambda: ours.rmatvec(y), lambda: ref.rmatvec(y)),
    ):
        t_ours = median_time(f_ours, repeat, 2)
        t_ref = median_time(f_ref, repeat, 2)
        label = f"PyLops NonStationaryConvolve2D({engine}).H" + (f" Block({c_out * c_in})" if c_out * c_in > 1 else "")
        print(f"    {what:<8} structops {format_time(t_ours):>10}   {label} {format_time(t_ref):>10}   ratio {t_ref / t_ours:6.1f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--engine", default="numba", choices=["numba", "numpy"])
    args = ap.parse_args(argv)
    engine = args.engine
    if engine == "numba" and importlib.util.find_spec("numba") is None:
        engine = "numpy"
        print("numba is not installed: comparing with PyLops' numpy engine (pip install numba for the fast one)")
    repeat = 5 if args.quick else 15
    rng = np.random.default_rng(0)
    print(f"python {platform.python_version()}, numpy {np.__version__}, pylops {pylops.__version__}; median of {repeat}")
    case("1 -> 1 channel, one 3x3 filter per pixel, 256x256", rng.standard_normal((1, 1, 3, 3, 256, 256)), repeat, engine, rng)
    case("16 -> 16 channels, 3x3 per pixel, 64x64", rng.standard_normal((16, 16, 3, 3, 64, 64)), max(3, repeat // 3), engine, rng)


if __name__ == "__main__":
    main()

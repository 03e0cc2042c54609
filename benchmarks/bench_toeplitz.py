"""Toeplitz matrix-vector products: structops vs SciPy.

Run from the repository root::

    python benchmarks/bench_toeplitz.py [--quick]

For n = 1,000 and 10,000 and a random real Toeplitz matrix ``T = toeplitz(c, r)``
this times ``structops.Toeplitz(c, r).matvec(x)`` (FFT through a circulant
embedding), ``scipy.linalg.matmul_toeplitz((c, r), x)`` (also FFT based, with no
setup kept between calls) and, for n = 1,000 only, the dense product
``scipy.linalg.toeplitz(c, r) @ x`` (matrix built outside the timed region).
Results are checked against each other before timing. The ratio column is
``time / time(structops)``: above 1 means structops is faster.
"""

from __future__ import annotations

import argparse
import platform
import sys

import numpy as np
import scipy
import scipy.linalg

import structops
from structops.apps.benchtools import format_time, median_time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Toeplitz matvec: structops vs SciPy")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args(argv)
    repeat = args.repeat or (5 if args.quick else 25)

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"structops {structops.__version__}; median of {repeat}\n"
    )
    rng = np.random.default_rng(0)
    rows, failures = [], []
    for n in (1_000, 10_000):
        c = rng.standard_normal(n)
        r = rng.standard_normal(n)
        r[0] = c[0]
        x = rng.standard_normal(n)
        op = structops.Toeplitz(c, r)
        want = op.matvec(x)
        t_ours = median_time(lambda: op.matvec(x), repeat)
        rows.append((n, "structops Toeplitz.matvec", t_ours, None))

        cands = [("scipy.linalg.matmul_toeplitz", lambda: scipy.linalg.matmul_toeplitz((c, r), x))]
        if n <= 1_000:
            T = scipy.linalg.toeplitz(c, r)
            cands.append(("dense toeplitz(c, r) @ x", lambda: T @ x))
        for name, f in cands:
            got = f()
            err = float(np.linalg.norm(got - want) / np.linalg.norm(got))
            if not err < 1e-12:
                failures.append(f"n={n} {name}: relative difference {err:.2e}")
                rows.append((n, name, float("nan"), err))
                continue
            rows.append((n, name, median_time(f, repeat), err))

    base = {n: t for n, name, t, _ in rows if name.startswith("structops")}
    header = ("n", "implementation", "median", "ratio", "rel. diff")
    lines = [
        (
            f"{n:,}",
            name,
            format_time(t),
            "-" if t != t else f"{t / base[n]:.2f}x",
            "(reference)" if err is None else f"{err:.1e}",
        )
        for n, name, t, err in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in lines:
        cells = (v.rjust(w) if i in (0, 2, 3) else v.ljust(w)
                 for i, (v, w) in enumerate(zip(row, widths)))
        print("  ".join(cells).rstrip())
    print("\nratio = time / time(structops) (> 1: structops is faster)")
    if failures:
        print("\nFAILED agreement checks:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

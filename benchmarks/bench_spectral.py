"""Singular values of convolution layers: structops vs the published recipe vs PyLops.

Run from the repository root::

    python benchmarks/bench_spectral.py            # full run (about a minute; the 224x224 recipe alone ~20 s)
    python benchmarks/bench_spectral.py --quick    # small version, no 224x224 case

All competitors run side by side in one process. Before anything is timed, the
results are compared (a mismatch is reported and makes the script exit with
status 1). Times are medians of ``--repeat`` runs (single runs for the slow
cases), measured with ``time.perf_counter``. The ratio is
``time(competitor) / time(structops)``: above 1 means structops is faster.

Sections
--------
(a) Full spectrum of a circular 64 -> 64 layer, 3x3 kernel, 32x32 images,
    float64: ``structops.singular_values`` vs the published recipe
    ``np.linalg.svd(np.fft.fft2(K, (n, n), axes=(2, 3)).transpose(2, 3, 0, 1),
    compute_uv=False)`` (Sedghi, Gupta and Long, 2019). Sorted values must agree
    to 1e-12 relative to sigma_max. Without ``--quick`` also on 224x224.
(b) sigma_max of the zero-padded ('same') 16 -> 16 layer, 3x3 kernel, 64x64
    images: ``structops.opnorm`` (Lanczos on the normal operator, started from
    the circular layer, residual-checked to 1e-10) vs ``(B.H @ B).eigs(1)`` on
    the ``pylops.Block`` of 256 ``Convolve2D`` a PyLops user would write. The
    block is checked against the structops layer on a random input first.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import pylops
import scipy

import structops
from structops.apps.benchtools import pylops_conv2d_block
from structops.linalg.spectra import opnorm, singular_values

FAILURES: list = []


def timed(func, repeat: int):
    """(median seconds, last result) of ``repeat`` runs of ``func()``."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def recipe(K, n):
    return np.linalg.svd(np.fft.fft2(K, (n, n), axes=(2, 3)).transpose(2, 3, 0, 1), compute_uv=False)


def section_a(n: int, c: int, repeat: int, rng):
    K = rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)
    op = structops.Conv2D(K, (n, n), padding="circular")
    singular_values(op)  # warm-up (imports, thread pool)
    t_ours, s_ours = timed(lambda: singular_values(op), repeat)
    t_rec, s_rec = timed(lambda: recipe(K, n), repeat)
    s_rec = np.sort(s_rec.ravel())[::-1]
    err = float(np.abs(s_ours - s_rec).max() / s_rec[0]) if s_ours.shape == s_rec.shape else np.inf
    ok = err <= 1e-12
    if not ok:
        FAILURES.append(f"(a) {c}->{c} {n}x{n}: spectra differ by {err:.2e} x sigma_max")
    print(
        f"(a) circular {c}->{c}, 3x3, {n}x{n}, float64, {s_ours.size} singular values "
        f"(sigma_max {s_ours[0]:.6f}, sigma_min {s_ours[-1]:.3e})"
    )
    print(f"    max |ours - recipe| / sigma_max = {err:.2e}  [{'ok' if ok else 'MISMATCH'}: <= 1e-12]")
    print(f"    {'structops.singular_values':<38s} {t_ours * 1e3:10.1f} ms")
    print(f"    {'recipe (fft2 + batched svd)':<38s} {t_rec * 1e3:10.1f} ms   ratio {t_rec / t_ours:6.2f}x  (target >= 2x)")
    return t_rec / t_ours


def section_b(rng, pylops_kwargs):
    n, c = 64, 16
    K = rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)
    op = structops.Conv2D(K, (n, n))  # 'same' zero padding
    B = pylops_conv2d_block(K, (n, n))
    x = rng.standard_normal(op.shape[1])
    y_ref, y_pl = op.matvec(x), B.matvec(x)
    rel = float(np.linalg.norm(y_pl - y_ref) / np.linalg.norm(y_ref))
    z = rng.standard_normal(op.shape[0])
    rel_adj = float(np.linalg.norm(B.rmatvec(z) - op.rmatvec(z)) / np.linalg.norm(op.rmatvec(z)))
    ok = max(rel, rel_adj) < 1e-12
    print(f"(b) zero-padded 'same' {c}->{c}, 3x3, {n}x{n}, float64: sigma_max")
    print(
        f"    pylops.Block of {c * c} Convolve2D vs structops layer: forward {rel:.1e}, adjoint {rel_adj:.1e} "
        f"[{'ok' if ok else 'MISMATCH'}]"
    )
    if not ok:
        FAILURES.append(f"(b) the PyLops block differs from the layer by {max(rel, rel_adj):.1e}")
    t_ours, s_ours = timed(lambda: opnorm(op), 3)
    BB = B.H @ B
    t0 = time.perf_counter()
    lam = BB.eigs(1, **pylops_kwargs)
    t_pl = time.perf_counter() - t0
    s_pl = float(np.sqrt(np.abs(lam[0])))
    err = abs(s_pl - s_ours) / s_ours
    ok = err <= 1e-9
    if not ok:
        FAILURES.append(f"(b) sigma_max differs: structops {s_ours!r}, PyLops {s_pl!r}")
    kw = ", ".join(f"{k}={v!r}" for k, v in pylops_kwargs.items())
    print(f"    sigma_max: structops {s_ours:.12f}, PyLops {s_pl:.12f}, relative difference {err:.1e} [{'ok' if ok else 'MISMATCH'}]")
    print(f"    {'structops.opnorm (tol 1e-10)':<38s} {t_ours * 1e3:10.1f} ms")
    label = f"(B.H @ B).eigs(1{', ' + kw if kw else ''})"
    print(f"    {label:<38s} {t_pl * 1e3:10.1f} ms   ratio {t_pl / t_ours:6.2f}x  (target >= 20x)")
    return t_pl / t_ours


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small version: no 224x224 case, fewer repetitions")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per fast case (default 3 quick, 5 full)")
    args = ap.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 5)
    rng = np.random.default_rng(0)
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"pylops {pylops.__version__}, structops {structops.__version__}; {platform.machine()}, "
        f"{len(__import__('os').sched_getaffinity(0))} CPUs"
    )
    print()
    section_a(32, 64, repeat, rng)
    if not args.quick:
        print()
        section_a(224, 64, 1, rng)
    print()
    # PyLops' default asks ARPACK for machine precision; the quick run matches our 1e-10
    section_b(rng, {"tol": 1e-10} if args.quick else {})
    print()
    if FAILURES:
        print("FAILURES:")
        for f in FAILURES:
            print("  " + f)
        return 1
    print("all results agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Exact Frobenius penalty ||M^T M - I||_F^2 + gradient: kernel space vs the sparse-matrix route.

Run from the repository root::

    python benchmarks/bench_regularize.py            # 7 repetitions; about 3 minutes (sparse route of (c))
    python benchmarks/bench_regularize.py --quick    # 3 repetitions, no sparse row in (c); about 15 s

All rows run in one process. Before timing, every competitor's value and
gradient are compared with the structops kernel-space result (a mismatch above
1e-10 relative is reported and makes the script exit with status 1). Times are
medians of ``--repeat`` runs after one warm-up, ``time.perf_counter``, one
BLAS thread.

Sections
--------
(a) n-independence: 16 -> 16 channels, 3x3 kernel, 'same' zero padding, on
    16x16 and 256x256 images; ratio time(256) / time(16) (should be ~1).
(b) vs the sparse route at 48x48 (16 -> 16, 3x3): ``M`` assembled in
    ``scipy.sparse`` as ``sum_d K_d (x) E_d``, ``G = M^T M``, value
    ``||G||^2 - 2 tr G + N`` and gradient gathered from ``4 M (G - I)`` on the
    pattern of each tap: what a user would write without the kernel-space
    formula. Ratio time(sparse) / time(structops).
(c) 64 -> 64 channels, 3x3, on 32x32 images, both routes.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import scipy
import scipy.sparse as sp

from structops._backend import blas_threads
from structops.solvers.regularize import frobenius_penalty

FAILURES: list = []


def timed(func, repeat: int):
    func()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def sparse_route(K, n):
    """Value and gradient of ||M^T M - I||_F^2 through scipy.sparse ('same', stride 1)."""
    co, ci, kh, kw = K.shape
    P = n * n

    def shift(j, k):  # E_j of one axis: p -> p + j - (k - 1) / 2, zero outside
        p = np.arange(n)
        q = p + j - (k - 1) // 2
        ok = (q >= 0) & (q < n)
        return sp.csr_matrix((np.ones(ok.sum()), (p[ok], q[ok])), shape=(n, n))

    E = [sp.kron(shift(a, kh), shift(b, kw), format="csr") for a in range(kh) for b in range(kw)]
    Kt = K.reshape(co, ci, -1)
    M = sp.csr_matrix((co * P, ci * P))
    for t, Et in enumerate(E):
        M = M + sp.kron(sp.csr_matrix(Kt[:, :, t]), Et, format="csr")
    G = (M.T @ M).tocsr()
    value = float(np.sum(G.data**2) - 2 * G.diagonal().sum() + G.shape[0])
    Z = (4 * (M @ G - M)).tocsr()
    grad = np.empty_like(Kt)
    oo, ii = np.meshgrid(np.arange(co), np.arange(ci), indexing="ij")
    for t, Et in enumerate(E):
        p, q = Et.nonzero()
        rows = (oo[:, :, None] * P + p).reshape(-1)
        cols = (ii[:, :, None] * P + q).reshape(-1)
        grad[:, :, t] = np.asarray(Z[rows, cols]).reshape(co, ci, -1).sum(axis=2)
    return value, grad.reshape(K.shape)


def once(func):
    """(seconds, result) of a single run: for the slow sparse route, whose check and timing share one run."""
    t0 = time.perf_counter()
    out = func()
    return time.perf_counter() - t0, out


def check(name, got, ref):
    (f1, g1), (f0, g0) = got, ref
    err = max(abs(f1 - f0) / abs(f0), np.linalg.norm(g1 - g0) / np.linalg.norm(g0))
    if not err <= 1e-10:
        FAILURES.append(f"{name}: relative difference {err:.2e}")
    return err


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repetitions instead of 7")
    ap.add_argument("--repeat", type=int, default=None)
    args = ap.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 7)
    rng = np.random.default_rng(0)
    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"{platform.machine()}, one BLAS thread, median of {repeat} runs (sparse route: one run)")
    print("penalty ||M^T M - I||_F^2 and its gradient, 3x3 kernel, 'same' zero padding, float64\n")
    fmt = "{:<34} {:>12} {:>12} {:>10} {:>10}"
    print(fmt.format("case", "structops", "other", "ratio", "rel.diff"))
    print("-" * 82)
    with blas_threads(1):
        # (a) n-independence
        K = rng.standard_normal((16, 16, 3, 3))
        t16 = timed(lambda: frobenius_penalty(K, (16, 16)), repeat)
        t256 = timed(lambda: frobenius_penalty(K, (256, 256)), repeat)
        err = check("16x16 vs sparse", frobenius_penalty(K, (16, 16)), sparse_route(K, 16))
        print(fmt.format("(a) 16->16 on 16x16", f"{t16 * 1e3:.3f} ms", "-", "-", f"{err:.1e}"))
        print(fmt.format("(a) 16->16 on 256x256", f"{t256 * 1e3:.3f} ms", "-", "-", "-"))
        print(fmt.format("    ratio time(256x256)/time(16x16)", "", "", f"{t256 / t16:.2f}x", ""))
        # (b) vs the sparse route at 48x48
        ref = frobenius_penalty(K, (48, 48))
        tsp, out = once(lambda: sparse_route(K, 48))
        err = check("48x48 sparse", out, ref)
        ts = timed(lambda: frobenius_penalty(K, (48, 48)), repeat)
        print(fmt.format("(b) 16->16 on 48x48, scipy.sparse", f"{ts * 1e3:.3f} ms", f"{tsp * 1e3:.1f} ms",
                         f"{tsp / ts:.0f}x", f"{err:.1e}"))
        # (c) 64 -> 64 on 32x32
        K64 = rng.standard_normal((64, 64, 3, 3))
        tk = timed(lambda: frobenius_penalty(K64, (32, 32)), repeat)
        if args.quick:
            print(fmt.format("(c) 64->64 on 32x32", f"{tk * 1e3:.3f} ms", "skipped", "-", "-"))
        else:
            ref = frobenius_penalty(K64, (32, 32))
            tsp, out = once(lambda: sparse_route(K64, 32))  # about 2.5 minutes
            err = check("64 32x32 sparse", out, ref)
            print(fmt.format("(c) 64->64 on 32x32, scipy.sparse", f"{tk * 1e3:.3f} ms", f"{tsp * 1e3:.1f} ms",
                             f"{tsp / tk:.0f}x", f"{err:.1e}"))
    print("\nratio = time(other) / time(structops) (above 1: structops faster); rel.diff vs structops")
    if FAILURES:
        print("FAILED agreement checks:\n  " + "\n  ".join(FAILURES))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Strong scaling of distributed layers: 1 -> N MPI ranks for products, cgls and the circular spectrum.

Run from the repository root (needs mpi4py, pylops-mpi and an ``mpiexec``)::

    python benchmarks/bench_distributed.py --ranks 1 2          # spawns mpiexec -n 1 and -n 2, prints the table
    python benchmarks/bench_distributed.py --ranks 1 2 --quick  # smaller layers

Each configuration runs in its own ``mpiexec`` job; rank 0 reports the median
of ``--repeat`` timings (after a warm-up) of: a forward and an adjoint
product of a 64 -> 64 channel 3x3 layer on 128x128 images for each split
(rows: a halo exchange of one row; batch split: 8 images), 20 ``pylops_mpi.cgls`` iterations on the
output-channel split, and the whole circular spectrum of a 64 -> 64 layer on
64x64 images split over frequencies. Parallel efficiency is
``t(1) / (N t(N))``. Every rank runs one BLAS thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _worker(quick: bool, repeat: int):
    import numpy as np
    import pylops_mpi
    from mpi4py import MPI

    import structops
    from structops import distributed as dist

    comm = MPI.COMM_WORLD
    c, n = (32, 64) if quick else (64, 128)
    rng = np.random.default_rng(0)
    K = rng.standard_normal((c, c, 3, 3)) / (3 * np.sqrt(c))
    out = {}

    def timed(name, fn):
        fn()
        ts = []
        for _ in range(repeat):
            comm.Barrier()
            t0 = time.perf_counter()
            fn()
            comm.Barrier()
            ts.append(time.perf_counter() - t0)
        out[name] = float(np.median(ts))

    for split in ("out_channels", "in_channels"):
        op = dist.Conv2D(K, (n, n), split=split, padding=1)
        x = dist.distribute(rng.standard_normal(op.shape[1]), op, "model")
        y = dist.distribute(rng.standard_normal(op.shape[0]), op, "data")
        timed(f"{split} forward", lambda: op @ x)
        timed(f"{split} adjoint", lambda: op.H @ y)
    op = dist.Conv2D(K, (n, n), split="rows", padding=1)
    x = dist.distribute(rng.standard_normal(op.shape[1]), op, "model")
    y = dist.distribute(rng.standard_normal(op.shape[0]), op, "data")
    timed("rows (halo) forward", lambda: op @ x)
    timed("rows (halo) adjoint", lambda: op.H @ y)
    op = dist.Conv2D(K, (n, n), split="tiles", grid=(1, comm.size), padding=1)  # the columns' halo path
    x = dist.distribute(rng.standard_normal(op.shape[1]), op, "model")
    y = dist.distribute(rng.standard_normal(op.shape[0]), op, "data")
    timed("tiles 1 x p (halo) forward", lambda: op @ x)
    timed("tiles 1 x p (halo) adjoint", lambda: op.H @ y)
    B = 8
    op = dist.Conv2D(K, (n, n), split="batch", batch=B, padding=1)
    xb = dist.distribute(rng.standard_normal(op.shape[1]), op, "model")
    timed("batch forward (8 images)", lambda: op @ xb)
    op = dist.Conv2D(K, (n, n), split="out_channels", padding=1)
    data = dist.distribute(rng.standard_normal(op.shape[0]), op, "data")
    x0 = dist.distribute(np.zeros(op.shape[1]), op, "model")
    timed("cgls, 20 iterations", lambda: pylops_mpi.cgls(op, data, x0=x0, niter=20, tol=0.0))
    m = n // 2
    circ = structops.Conv2D(K, (m, m), padding="circular")
    timed(f"circular spectrum {c}x{c}, {m}x{m}", lambda: dist.circular_singular_values(circ))
    if comm.rank == 0:
        print(json.dumps(out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args.quick, args.repeat)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    results = {}
    for r in args.ranks:
        cmd = ["mpiexec", "-n", str(r), sys.executable, __file__, "--worker", "--repeat", str(args.repeat)]
        cmd += ["--quick"] if args.quick else []
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if res.returncode != 0:
            print(res.stdout, res.stderr, file=sys.stderr)
            return 1
        results[r] = json.loads(res.stdout.strip().splitlines()[-1])
    names = list(results[args.ranks[0]])
    base = args.ranks[0]
    header = f"{'case':>36}" + "".join(f"{f'{r} rank(s)':>13}" for r in args.ranks) + "   efficiency"
    print(header)
    print("-" * len(header))
    for name in names:
        row = f"{name:>36}" + "".join(f"{results[r][name] * 1e3:10.1f} ms" for r in args.ranks)
        last = args.ranks[-1]
        eff = results[base][name] * base / (last * results[last][name])
        print(row + f"   {eff:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

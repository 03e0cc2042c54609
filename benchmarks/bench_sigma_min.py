"""Exact sigma_min (and cond) of a zero-padded 64 -> 64-channel 3x3 layer on 32x32.

Run from the repository root::

    python benchmarks/bench_sigma_min.py             # 64 -> 64, 32x32 (M = N = 65536)
    python benchmarks/bench_sigma_min.py --quick     # 16 -> 16, 16x16, checked against a dense SVD
    python benchmarks/bench_sigma_min.py --compare   # also the sparse LU shift-invert route (minutes, ~12 GB)

Each measurement runs in a fresh subprocess, so that its peak resident memory
(``ru_maxrss``) is its own. structops' route: the normal matrix assembled
directly from masked kernel autocorrelations, a sparse Cholesky (nested
dissection, multifrontal; or LAPACK band), inverse subspace iteration, and a
Rayleigh-Ritz step and residual check with the matrix-free layer. sigma_max
comes from ``scipy.sparse.linalg.svds(op, k=1)`` on the operator.

The ``--compare`` route is what one would write with SciPy alone: the layer as
a ``scipy.sparse`` matrix, ``M^T M`` by a sparse product, and
``eigsh(M^T M, k=1, sigma=0)`` (shift-invert through SuperLU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def make_layer(c, n, seed=0):
    import structops

    K = np.random.default_rng(seed).standard_normal((c, c, 3, 3)) / (3 * np.sqrt(c))
    return structops.Conv2D(K, (n, n), padding="same")


def _peak_gb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _child_structops(c, n, method):
    from structops.linalg.normal import smallest_singular_values

    op = make_layer(c, n)
    t = time.perf_counter()
    s, info = smallest_singular_values(op, k=1, method=method)
    sec = time.perf_counter() - t
    return {
        "sigma_min": float(s[0]),
        "seconds": sec,
        "seconds_factor": info["seconds_factor"],
        "peak_gb": _peak_gb(),
        "converged": info["converged"],
        "method": info["method"],
        "error_bound": float(info["error_bound"][0]),
        "residual": info["residual"],
        "n_solves": info["n_solves"],
        "iterations": info["iterations"],
        "factor_gb": info["factor_bytes"] / 1e9,
        "factor_gflop": info["factor_flops"] / 1e9,
    }


def sparse_layer(op):
    """The layer as a ``scipy.sparse.csr_matrix`` (rows ``(c_out, *out)``, columns ``(c_in, *in)``)."""
    import scipy.sparse as sp

    K = np.asarray(op.kernel)
    co, ci = op.c_out, op.c_in
    H, W = op.in_shape
    Ho, Wo = op.out_shape
    (lh, _), (lw, _) = op.padding
    sh, sw = op.stride
    dh, dw = op.dilation
    rows, cols, vals = [], [], []
    ph, pw = np.meshgrid(np.arange(Ho), np.arange(Wo), indexing="ij")
    o, i = np.meshgrid(np.arange(co), np.arange(ci), indexing="ij")
    for a in range(K.shape[2]):
        for b in range(K.shape[3]):
            qh, qw = ph * sh + a * dh - lh, pw * sw + b * dw - lw
            ok = (qh >= 0) & (qh < H) & (qw >= 0) & (qw < W)
            p = (ph * Wo + pw)[ok]
            q = (qh * W + qw)[ok]
            rows.append((o.reshape(-1, 1) * (Ho * Wo) + p[None, :]).ravel())
            cols.append((i.reshape(-1, 1) * (H * W) + q[None, :]).ravel())
            vals.append(np.repeat(K[:, :, a, b].reshape(-1), p.size))
    M, N = op.shape
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(M, N))


def _child_sparse_lu(c, n):
    from scipy.sparse.linalg import eigsh

    op = make_layer(c, n)
    t = time.perf_counter()
    A = sparse_layer(op)
    G = (A.T @ A).tocsc()
    t_form = time.perf_counter() - t
    lam = eigsh(G, k=1, sigma=0, which="LM", return_eigenvectors=False)
    sec = time.perf_counter() - t
    return {"sigma_min": float(np.sqrt(lam[0])), "seconds": sec, "seconds_form": t_form, "peak_gb": _peak_gb()}


def _child_sigma_max(c, n):
    from scipy.sparse.linalg import svds

    op = make_layer(c, n)
    t = time.perf_counter()
    s = svds(op, k=1, return_singular_vectors=False, random_state=0)
    return {"sigma_max": float(s[0]), "seconds": time.perf_counter() - t, "peak_gb": _peak_gb()}


def run_child(what, c, n, method="auto"):
    code = (
        "import json, sys; sys.path.insert(0, %r); sys.path.insert(0, %r); import bench_sigma_min as b; "
        "print('RESULT' + json.dumps(b._child_%s(%d, %d%s)))"
        % (ROOT, HERE, what, c, n, (", %r" % method) if what == "structops" else "")
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[6:])
    raise RuntimeError(f"subprocess for {what} failed:\n{out.stdout}\n{out.stderr}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 -> 16 channels on 16x16, checked against a dense SVD")
    ap.add_argument("--compare", action="store_true", help="also run the sparse LU shift-invert route (slow)")
    ap.add_argument("--method", default="auto", choices=["auto", "nd", "band"])
    args = ap.parse_args(argv)
    c, n = (16, 16) if args.quick else (64, 32)
    import platform

    import scipy

    print(f"# python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"{os.cpu_count()} CPUs")
    print(f"# layer: {c} -> {c} channels, 3x3, 'same' zero padding, {n}x{n}, M = N = {c * n * n}")
    r = run_child("structops", c, n, args.method)
    m = run_child("sigma_max", c, n)
    cond = m["sigma_max"] / r["sigma_min"]
    print(f"structops sigma_min  = {r['sigma_min']:.12e}   (certified relative error <= {r['error_bound']:.1e}, "
          f"converged={r['converged']})")
    print(f"svds      sigma_max  = {m['sigma_max']:.12e}   ({m['seconds']:.2f} s)")
    print(f"cond                 = {cond:.6e}")
    print(f"structops seconds    = {r['seconds']:.2f}  (factorisation {r['seconds_factor']:.2f} s, "
          f"{r['factor_gflop']:.0f} GFLOP, method {r['method']}; {r['iterations']} iterations, "
          f"{r['n_solves']} solves)")
    print(f"structops peak mem   = {r['peak_gb']:.2f} GB  (factor {r['factor_gb']:.2f} GB)")
    print(f"relative residual    = {r['residual']:.1e}")
    status = 0 if r["converged"] else 1
    if args.quick:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from dense import dense_conv

        op = make_layer(c, n)
        A = dense_conv(np.asarray(op.kernel), op.in_shape, 1, op.padding, 1, False)
        t = time.perf_counter()
        sv = np.linalg.svd(A, compute_uv=False)
        td = time.perf_counter() - t
        err = abs(r["sigma_min"] - sv.min()) / sv.min()
        print(f"dense SVD sigma_min  = {sv.min():.12e}  ({td:.2f} s); relative difference {err:.1e}; "
              f"dense cond {sv.max() / sv.min():.6e}")
        if err > 1e-8:
            print("MISMATCH with the dense SVD")
            status = 1
    if args.compare:
        s = run_child("sparse_lu", c, n)
        print(f"sparse LU shift-invert: sigma_min = {s['sigma_min']:.12e}, {s['seconds']:.1f} s "
              f"(M^T M formed in {s['seconds_form']:.1f} s), peak {s['peak_gb']:.2f} GB")
        print(f"ratio (sparse LU / structops): time {s['seconds'] / r['seconds']:.1f}x, "
              f"memory {s['peak_gb'] / r['peak_gb']:.1f}x; relative difference "
              f"{abs(s['sigma_min'] - r['sigma_min']) / r['sigma_min']:.1e}")
    return status


if __name__ == "__main__":
    sys.exit(main())

"""The gated-ReLU convex program: structops vs pyscnn, and a convolutional case pyscnn cannot express.

Run from the repository root::

    python benchmarks/bench_convex.py            # full run
    python benchmarks/bench_convex.py --quick    # smaller problems

(a) Fully connected (one patch per sample: the whole vector), the problem
    ``pyscnn`` (Mishkin, Sahiner and Pilanci 2022) solves: the same data, the
    same gate vectors, the same regularisation. pyscnn minimises
    ``||r||^2 / (2 n) + lam sum_j ||v_j||``; structops ``||r||^2 / 2 + beta
    sum_j ||v_j||``, so ``beta = n lam`` and the objectives differ by the
    factor ``n``. pyscnn's R-FISTA runs with its own tolerance lowered until
    its objective stops moving; both objectives are evaluated by the same
    formula here, and structops' certified lower bound is printed beside them.
(b) Convolutional: 28x28 images, 3x3 patches (``K = 784`` positions), gates
    ``D_jk = diag(1[X_k g_j >= 0])`` per patch position, which pyscnn's gates
    (one per sample) cannot express. The peak memory of the solve
    (``tracemalloc``) is printed beside the size of the explicit matrices
    ``sum_k D_jk X_k`` and of the patch matrices ``D_jk X_k`` that a
    formulation through dense matrices (e.g. cvxpy) forms.

pyscnn is optional (``pip install pyscnn``; it needs torch); without it (a)
prints structops alone.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from structops.convex import PatchOperator, gated_relu_cnn, sample_gates


def objective(X, y, G, V, beta):
    """``||sum_j diag(1[X g_j >= 0]) X v_j - y||^2 / 2 + beta sum_j ||v_j||`` (the fully connected program)."""
    D = (X @ G >= 0).astype(float)  # (n, P)
    pred = ((X @ V.T) * D).sum(axis=1)
    r = pred - y
    return 0.5 * r @ r + beta * np.linalg.norm(V, axis=1).sum()


def fully_connected(n, d, samples, lam, seed, tol=1e-10):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = rng.standard_normal((d, 4))
    y = np.maximum(X @ w, 0) @ rng.standard_normal(4) + 0.1 * rng.standard_normal(n)
    A = PatchOperator(X, d)  # one patch: the whole vector
    gates = sample_gates(A, samples, kind="gaussian", seed=seed)
    beta = n * lam
    t0 = time.perf_counter()
    fit = gated_relu_cnn(A, y, beta, gates, tol=tol)
    t_so = time.perf_counter() - t0
    G = np.asarray(gates.generators).T  # (d, P)
    f_so = objective(X, y, G, np.asarray(fit.V), beta)
    print(f"(a) fully connected: n = {n}, d = {d}, {gates.P} gates, lam = {lam:g} (beta = n lam = {beta:g})")
    print(f"    structops gated_relu_cnn   objective {f_so:.10g}   certified bound {fit.lower_bound:.10g}   "
          f"{t_so:8.2f} s   (tol {tol:.0e})")
    try:
        from scnn.metrics import Metrics
        from scnn.models import ConvexGatedReLU
        from scnn.optimize import optimize_model
        from scnn.regularizers import NeuronGL1
        from scnn.solvers import RFISTA
    except ImportError:
        print("    pyscnn not installed: skipped")
        return None
    rows = []
    for tol in (1e-6, 1e-8, 1e-10):
        model = ConvexGatedReLU(G)
        t0 = time.perf_counter()
        model, _ = optimize_model(model, RFISTA(model, max_iters=100000, tol=tol), Metrics(), X, y,
                                  regularizer=NeuronGL1(lam), unitize_data=False, dtype="float64",
                                  return_convex=True)
        t = time.perf_counter() - t0
        V = np.asarray(model.parameters[0]).reshape(-1, d)  # pyscnn drops gates it finds redundant
        f = objective(X, y, np.asarray(model.G), V, beta)
        rows.append((tol, f, t))
        print(f"    pyscnn RFISTA tol {tol:.0e}      objective {f:.10g}   relative to structops "
              f"{(f - f_so) / f_so:+.1e}   {t:8.2f} s   ({t / t_so:.1f}x structops' time)")
    return rows


def convolutional(n, samples, beta, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 1, 28, 28))
    y = rng.standard_normal(n)
    tracemalloc.start()
    t0 = time.perf_counter()
    A = PatchOperator(X, 3, padding=1)
    gates = sample_gates(A, samples, kind="mixed", seed=seed)
    fit = gated_relu_cnn(A, y, beta, gates, tol=1e-8)
    t = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    K, h, P = A.K, A.h, gates.P
    print(f"\n(b) convolutional: n = {n} images 28x28, 3x3 patches (K = {K}, h = {h}), {P} gate patterns, "
          f"beta = {beta:g}")
    print(f"    structops gated_relu_cnn   objective {fit.objective:.10g}   relative gap {fit.relative_gap:.1e}   "
          f"{t:.2f} s   {len(fit.weights)} neurons")
    print(f"    peak memory {peak / 2**20:.1f} MiB; the patch tensor K n h is {K * n * h * 8 / 2**20:.1f} MiB, the "
          f"matrices sum_k D_jk X_k {P * n * h * 8 / 2**20:.1f} MiB, all D_jk X_k {P * K * n * h * 8 / 2**30:.1f} GiB")
    return fit


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        fully_connected(n=100, d=10, samples=50, lam=1e-3, seed=0, tol=1e-5)
        convolutional(n=50, samples=100, beta=1.0, seed=0)
    else:
        for lam in (1e-3, 1e-2, 3e-2):  # larger weight decays: sparser solutions, where R-FISTA is fastest
            fully_connected(n=500, d=20, samples=200, lam=lam, seed=0, tol=1e-5)
        fully_connected(n=500, d=20, samples=200, lam=1e-3, seed=0, tol=1e-10)
        convolutional(n=500, samples=500, beta=1.0, seed=0)


if __name__ == "__main__":
    main()

"""Variable projection vs the joint (theta, w) problem, side by side in one process.

The separable problem is multichannel blind deconvolution: one unknown image
``w`` (``H x H`` pixels, the linear coefficients) is seen through ``c_out``
unknown ``3 x 3`` convolution kernels,

    y = K(theta) w,    K(theta) = ConvND(offset + reshape(Q theta)),

with one tap fixed to 1 (``offset``) to remove the scale ambiguity, so
``theta`` holds the other ``9 c_out - 1`` taps. ``K(theta)`` is a
:func:`structops.parametric.conv` model: matrix-free products and Jacobians.

Competitors, from the same starting kernel ``theta0`` (a perturbed truth):

* VarPro: :func:`structops.solvers.varpro.varpro` on ``theta`` alone, inner
  solves matrix-free (``cgls`` + block CG), Golub-Pereyra and Kaufman;
* joint: SciPy ``least_squares`` (``trf``, ``tr_solver="lsmr"``, Jacobian
  ``[dK(.) w, K(theta)]`` as a LinearOperator) on ``(theta, w)``, started
  from ``(theta0, w(theta0))``, the exact least-squares image for ``theta0``
  (computed outside the timing, in the joint solver's favour).

Every run must recover the truth (noise-free data) before anything is
timed; the table reports outer iterations (Jacobian evaluations), residual
evaluations, inner Krylov iterations, median wall time over ``--repeat`` runs
(interleaved), and the ratios joint / VarPro.

Run: ``python benchmarks/bench_varpro.py [--quick] [--size H] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from pylops.optimization.basic import cgls
from scipy.optimize import least_squares
from scipy.sparse.linalg import LinearOperator as SpLinOp

from structops import parametric
from structops._backend import blas_threads
from structops.solvers.varpro import varpro


def make_problem(H, c_out=2, k=3, seed=0, perturb=0.1, padding="same"):
    rng = np.random.default_rng(seed)
    ks = (c_out, 1, k, k)
    nk = int(np.prod(ks))
    c = k // 2
    offset = np.zeros(ks)
    offset[0, 0, c, c] = 1.0
    Q = np.delete(np.eye(nk), np.ravel_multi_index((0, 0, c, c), ks), axis=1)
    model = parametric.conv(ks, (H, H), basis=Q, offset=offset, padding=padding)
    theta = 0.3 * rng.standard_normal(model.num_params)
    w = rng.standard_normal(H * H)
    y = model.operator(theta) @ w
    theta0 = theta + perturb * rng.standard_normal(theta.size)
    return model, theta, w, y, theta0


def run_varpro(model, y, theta0, method, padding):
    # exact inner solves: FFT for circular padding, sparse Cholesky of the banded normal matrix for zero padding
    pc = "circulant" if padding == "circular" else "normal"
    res = varpro(model.operator, y, theta0, method=method, inner="krylov", preconditioner=pc,
                 inner_tol=1e-10, jac_tol=1e-6, xtol=1e-12, ftol=1e-12, gtol=1e-10, stats=False)
    return dict(theta=res.theta, w=res.coef, njev=res.njev, nfev=res.nfev, inner=res.inner_iterations,
                rnorm=res.residual_norm)


def run_joint(model, y, theta0, w0):
    p = model.num_params
    cache = {}

    def split(x):
        return x[:p], x[p:]

    def fun(x):
        th, w = split(x)
        op = model.operator(th)
        cache["x"], cache["op"] = x.copy(), op
        return op @ w - y

    counts = {"lsmr": 0}

    def jac(x):
        th, w = split(x)
        op = cache["op"] if np.array_equal(cache.get("x"), x) else model.operator(th)
        J = op.jacobian(w)

        def mv(v):
            counts["lsmr"] += 1
            v = np.ravel(v)
            return J.matvec(v[:p]) + op.matvec(v[p:])

        def rmv(u):
            u = np.ravel(u)
            return np.concatenate([J.rmatvec(u), op.rmatvec(u)])

        return SpLinOp((y.size, p + w.size), matvec=mv, rmatvec=rmv, dtype=np.float64)

    sol = least_squares(fun, np.concatenate([theta0, w0]), jac=jac, method="trf", tr_solver="lsmr",
                        xtol=1e-12, ftol=1e-12, gtol=1e-10, max_nfev=500)
    th, w = split(sol.x)
    return dict(theta=th, w=w, njev=sol.njev, nfev=sol.nfev, inner=counts["lsmr"],
                rnorm=float(np.linalg.norm(sol.fun)))


def section(H, channels, padding, perturb, R):
    model, theta, w, y, theta0 = make_problem(H, c_out=channels, perturb=perturb, padding=padding)
    n, p = w.size, theta.size
    w0 = np.ravel(cgls(model.operator(theta0), y, niter=2000, tol=1e-20 * float(y @ y))[0])
    print(f"\n== padding={padding!r}: image {H}x{H} (n = {n} linear coefficients), {channels} channels "
          f"of 3x3 taps (p = {p} nonlinear), m = {y.size} data, noise-free, theta0 = truth + "
          f"{perturb} N(0, 1)")
    runs = {
        "varpro golub-pereyra": lambda: run_varpro(model, y, theta0, "golub-pereyra", padding),
        "varpro kaufman": lambda: run_varpro(model, y, theta0, "kaufman", padding),
        "joint least_squares": lambda: run_joint(model, y, theta0, w0),
    }
    times = {k: [] for k in runs}
    out = {}
    with blas_threads(1):  # the same BLAS setting for every competitor
        for rep in range(R):
            order = list(runs) if rep % 2 == 0 else list(runs)[::-1]
            for name in order:
                t0 = time.perf_counter()
                out[name] = runs[name]()
                times[name].append(time.perf_counter() - t0)
    hdr = (f"{'method':24s} {'outer its':>9s} {'nfev':>5s} {'inner its':>9s} {'time [s]':>9s} "
           f"{'|theta err|':>11s} {'|w err|/|w|':>11s} {'resid':>9s}")
    print(hdr)
    print("-" * len(hdr))
    med = {}
    for name, o in out.items():
        med[name] = float(np.median(times[name]))
        et = np.abs(o["theta"] - theta).max()
        ew = np.linalg.norm(o["w"] - w) / np.linalg.norm(w)
        if et > 1e-6 or ew > 1e-6:
            print(f"WARNING: {name} did not recover the truth")
        print(f"{name:24s} {o['njev']:9d} {o['nfev']:5d} {o['inner']:9d} {med[name]:9.3f} "
              f"{et:11.2e} {ew:11.2e} {o['rnorm']:9.2e}")
    j = out["joint least_squares"]
    for name in ("varpro golub-pereyra", "varpro kaufman"):
        print(f"joint / {name}: outer iterations {j['njev'] / out[name]['njev']:.2f}x, "
              f"time {med['joint least_squares'] / med[name]:.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32x32 image, 2 repetitions")
    ap.add_argument("--size", type=int, default=None, help="image side H (default 64; 32 with --quick)")
    ap.add_argument("--channels", type=int, default=2)
    ap.add_argument("--perturb", type=float, default=0.3)
    ap.add_argument("--padding", nargs="+", default=["circular", "same"])
    ap.add_argument("--repeat", type=int, default=None)
    args = ap.parse_args(argv)
    H = args.size or (32 if args.quick else 64)
    R = args.repeat or (2 if args.quick else 3)
    print("multichannel blind deconvolution y = K(theta) w: VarPro vs joint least_squares on (theta, w)")
    for padding in args.padding:
        section(H, args.channels, padding, args.perturb, R)
    print(f"\n(median of {R} interleaved runs, one BLAS thread; outer its = Jacobian evaluations; inner "
          "its: block-CG iterations for VarPro (p columns per iteration, preconditioned by the exact inverse "
          "normal matrix: FFT for circular padding, sparse Cholesky for zero padding), lsmr iterations for joint)")


if __name__ == "__main__":
    main()

"""The lecture's Peaks experiment for one layer: VarPro vs SGD vs Gauss-Newton.

Data: points ``y`` drawn from ``U([-3, 3]^2)``, labelled by the level of
MATLAB's ``peaks`` function in 5 classes (equal-count bins of the training
values). Model: one ``tanh`` layer and a linear classifier,
``C ~ W tanh(K Y + b)``, ``K (m, 2)``, ``b (m,)``, ``W (5, m)``, trained on the
least-squares loss

    0.5 ||W tanh(K Y + b) - C||_F^2 + 0.5 lambda ||W||_F^2

(one-hot ``C``; prediction = argmax). Three solvers, same data, same start
``(K, b)``:

* VarPro: ``W`` eliminated (exact regularised least squares), Gauss-Newton /
  Levenberg-Marquardt on ``theta = (K, b)`` with the Golub-Pereyra Jacobian
  (:func:`structops.solvers.varpro.varpro`);
* SGD: mini-batch stochastic gradient descent with momentum on ``(K, b, W)``,
  gradients by the network's vector-Jacobian products, ``W`` started at 0;
* Gauss-Newton: SciPy ``least_squares`` (trust-region Gauss-Newton) on the
  joint ``(K, b, W)``, Jacobian from Jacobian-vector products, ``W`` started at 0.

Work is reported as wall time and as passes over the training set (one pass
= one forward or one Jacobian/adjoint product of the whole layer with one
direction).

Run: ``python examples/peaks_single_layer.py [--quick] [--out DIR]`` (writes
``peaks.json`` and ``peaks.png``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from structops._backend import blas_threads
from structops.nn import Network, SingleLayer, dense
from structops.parametric import full
from structops.solvers.varpro import varpro


def peaks(x, y):
    """MATLAB's ``peaks`` function."""
    return (3 * (1 - x) ** 2 * np.exp(-x**2 - (y + 1) ** 2)
            - 10 * (x / 5 - x**3 - y**5) * np.exp(-x**2 - y**2)
            - np.exp(-(x + 1) ** 2 - y**2) / 3)


def make_data(n_train, n_val, n_classes=5, seed=0):
    """Points ``(2, n)`` and one-hot labels ``(n_classes, n)`` for training and validation."""
    rng = np.random.default_rng(seed)
    Yt = rng.uniform(-3, 3, (2, n_train))
    Yv = rng.uniform(-3, 3, (2, n_val))
    ft, fv = peaks(*Yt), peaks(*Yv)
    edges = np.quantile(ft, np.linspace(0, 1, n_classes + 1)[1:-1])
    lt, lv = np.searchsorted(edges, ft), np.searchsorted(edges, fv)
    return Yt, np.eye(n_classes)[:, lt], Yv, np.eye(n_classes)[:, lv]


class Problem:
    """The single-layer model and its loss on a data set."""

    def __init__(self, Y, C, width, lam):
        self.Y, self.C, self.lam = Y, C, lam
        self.nc, self.s = C.shape
        self.layer = SingleLayer(full(width, Y.shape[0]), "tanh", bias=True)
        self.out = dense(width, self.nc)
        self.net = Network([self.layer, self.out])
        self.p = self.layer.num_params
        self.passes = 0

    def features(self, theta, Y=None):
        return self.layer(theta, self.Y if Y is None else Y)

    def loss(self, theta, W, Y=None, C=None):
        Y = self.Y if Y is None else Y
        C = self.C if C is None else C
        R = W @ self.features(theta, Y) - C
        return 0.5 * float((R * R).sum()) / C.shape[1]

    def accuracy(self, theta, W, Y=None, C=None):
        Y = self.Y if Y is None else Y
        C = self.C if C is None else C
        return float((np.argmax(W @ self.features(theta, Y), 0) == np.argmax(C, 0)).mean())

    def best_W(self, theta):
        F = self.features(theta)
        m = F.shape[0]
        return np.linalg.solve(F @ F.T + self.lam * np.eye(m), F @ self.C.T).T


def run_varpro(P, theta0, max_nfev):
    def phi(theta):
        P.passes += 1
        return P.features(theta).T  # (s, m)

    def dphi(theta):
        P.passes += P.p
        J = P.layer.param_jacobian(theta, P.Y).matmat(np.eye(P.p))  # (m s, p)
        return J.reshape(-1, P.s, P.p).transpose(1, 0, 2)

    trace = []
    t0 = time.perf_counter()

    def cb(k, theta, obj):
        W = P.best_W(theta)
        trace.append((time.perf_counter() - t0, P.passes, P.loss(theta, W), P.accuracy(theta, W)))

    res = varpro(phi, P.C.T, theta0, dphi=dphi, tikhonov=P.lam, method="golub-pereyra",
                 inner="exact", max_nfev=max_nfev, callback=cb, stats=False, xtol=1e-8, ftol=1e-8, gtol=1e-8)
    return res.theta, res.coef.T, res.njev, trace


def run_sgd(P, theta0, epochs, batch=32, lr=0.05, momentum=0.9, seed=1):
    rng = np.random.default_rng(seed)
    net = P.net
    x = np.concatenate([theta0, np.zeros(P.nc * P.layer.out_dims[0])])
    v = np.zeros_like(x)
    trace = []
    t0 = time.perf_counter()
    for ep in range(epochs):
        perm = rng.permutation(P.s)
        for i in range(0, P.s, batch):
            idx = perm[i:i + batch]
            Yb, Cb = P.Y[:, idx], P.C[:, idx]
            Z, st = net.forward(x, Yb)
            g = net.vjp(x, st, (Z - Cb) / len(idx))[0]
            g[P.p:] += P.lam * x[P.p:] / P.s
            v = momentum * v - lr * g
            x = x + v
        P.passes += 2  # one forward and one adjoint pass over the data per epoch
        th, W = x[:P.p], x[P.p:].reshape(P.nc, -1)
        trace.append((time.perf_counter() - t0, P.passes, P.loss(th, W), P.accuracy(th, W)))
    return x[:P.p], x[P.p:].reshape(P.nc, -1), epochs, trace


def run_gauss_newton(P, theta0, max_nfev):
    net = P.net
    n = net.num_params
    sl = np.sqrt(P.lam)
    x0 = np.concatenate([theta0, np.zeros(P.nc * P.layer.out_dims[0])])
    trace = []
    t0 = time.perf_counter()

    def fun(x):
        P.passes += 1
        R = net(x, P.Y) - P.C
        return np.concatenate([R.ravel(), sl * x[P.p:]])

    def jac(x):
        P.passes += n
        J = net.param_jacobian(x, P.Y).matmat(np.eye(n))
        Jr = np.vstack([J, np.hstack([np.zeros((n - P.p, P.p)), sl * np.eye(n - P.p)])])
        th, W = x[:P.p], x[P.p:].reshape(P.nc, -1)
        trace.append((time.perf_counter() - t0, P.passes, P.loss(th, W), P.accuracy(th, W)))
        return Jr

    sol = least_squares(fun, x0, jac=jac, method="trf", max_nfev=max_nfev, xtol=1e-8, ftol=1e-8, gtol=1e-8)
    return sol.x[:P.p], sol.x[P.p:].reshape(P.nc, -1), sol.njev, trace


def run(n_train=2000, n_val=2000, width=32, lam=1e-3, iters=60, epochs=500, seed=0):
    Yt, Ct, Yv, Cv = make_data(n_train, n_val, seed=seed)
    out = {"n_train": n_train, "n_val": n_val, "width": width, "lambda": lam, "methods": {}}
    theta0 = None
    for name in ("varpro", "sgd", "gauss-newton"):
        P = Problem(Yt, Ct, width, lam)
        if theta0 is None:
            theta0 = P.layer.init_params(np.random.default_rng(seed + 1))
            theta0[: 2 * width] *= 2.0  # (K, b): spread the tanh units over the domain
        t0 = time.perf_counter()
        with blas_threads(1):
            if name == "varpro":
                th, W, its, trace = run_varpro(P, theta0.copy(), iters)
            elif name == "sgd":
                th, W, its, trace = run_sgd(P, theta0.copy(), epochs)
            else:
                th, W, its, trace = run_gauss_newton(P, theta0.copy(), iters)
        elapsed = time.perf_counter() - t0
        out["methods"][name] = {
            "iterations": int(its),
            "time_s": elapsed,
            "passes": int(P.passes),
            "train_loss": P.loss(th, W),
            "train_acc": P.accuracy(th, W),
            "val_loss": P.loss(th, W, Yv, Cv),
            "val_acc": P.accuracy(th, W, Yv, Cv),
            "trace": [list(map(float, t)) for t in trace],
        }
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="500 points, width 16, few iterations")
    ap.add_argument("--out", default="peaks_out")
    args = ap.parse_args(argv)
    if args.quick:
        out = run(n_train=500, n_val=500, width=16, iters=15, epochs=15)
    else:
        out = run()
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    print(f"Peaks, single tanh layer: {out['n_train']} training / {out['n_val']} validation points, "
          f"width {out['width']}, lambda {out['lambda']}")
    print(f"{'method':14s} {'iters':>6s} {'passes':>7s} {'time [s]':>9s} {'train loss':>11s} "
          f"{'train acc':>9s} {'val loss':>9s} {'val acc':>8s}")
    for name, r in out["methods"].items():
        print(f"{name:14s} {r['iterations']:6d} {r['passes']:7d} {r['time_s']:9.2f} {r['train_loss']:11.4f} "
              f"{r['train_acc']:9.3f} {r['val_loss']:9.4f} {r['val_acc']:8.3f}")
    print("(iters: outer iterations (Jacobian evaluations) or epochs for SGD; passes: layer products "
          "over the training set)")
    (outdir / "peaks.json").write_text(json.dumps(out, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for name, r in out["methods"].items():
            tr = np.array(r["trace"])
            if tr.size:
                axes[0].semilogy(tr[:, 0], tr[:, 2], ".-", label=name)
                axes[1].plot(tr[:, 0], tr[:, 3], ".-", label=name)
        axes[0].set_xlabel("time [s]")
        axes[0].set_ylabel("training loss")
        axes[1].set_xlabel("time [s]")
        axes[1].set_ylabel("training accuracy")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(outdir / "peaks.png", dpi=120)
        plt.close(fig)
    except ImportError:  # pragma: no cover
        pass
    return out


if __name__ == "__main__":
    main()

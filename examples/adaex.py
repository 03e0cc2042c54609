"""The ``adaex`` example of O'Leary and Rust's ``varpro.m``, with both Jacobians.

Model ``eta(a, t) = c1 exp(-a2 t) cos(a3 t) + c2 exp(-a1 t) cos(a2 t)``:
three nonlinear parameters ``a``, two linear ``c``, ten weighted data.
Fits by :func:`structops.solvers.varpro.varpro` with the Golub-Pereyra
Jacobian and with Kaufman's approximation, and compares with the published
optimum.

Run: ``python examples/adaex.py [--quick] [--out DIR]`` (writes ``adaex.json``
and ``adaex.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from structops.solvers.varpro import reduced_jacobian, varpro

T = np.array([0, 0.1, 0.22, 0.31, 0.46, 0.50, 0.63, 0.78, 0.85, 0.97])
Y = np.array([6.9842, 5.1851, 2.8907, 1.4199, -0.2473, -0.5243, -1.0156, -1.0260, -0.9165, -0.6805])
WEIGHTS = np.array([1, 1, 1, 0.5, 0.5, 1, 0.5, 1, 0.5, 0.5])
A0 = np.array([0.5, 2.0, 3.0])
PUBLISHED = {
    "theta": [1.0132255, 2.4968675, 4.0625148],
    "coef": [5.8416357, 1.1436854],
    "wresid_norm2": 3.79208e-05,
}


def phi(a, t=T):
    """``Phi(a)``, shape ``(m, 2)``."""
    return np.stack([np.exp(-a[1] * t) * np.cos(a[2] * t), np.exp(-a[0] * t) * np.cos(a[1] * t)], axis=1)


def dphi(a, t=T):
    """``dPhi/da``, shape ``(m, 2, 3)``."""
    D = np.zeros((t.size, 2, 3))
    D[:, 0, 1] = -t * np.exp(-a[1] * t) * np.cos(a[2] * t)
    D[:, 0, 2] = -t * np.exp(-a[1] * t) * np.sin(a[2] * t)
    D[:, 1, 0] = -t * np.exp(-a[0] * t) * np.cos(a[1] * t)
    D[:, 1, 1] = -t * np.exp(-a[0] * t) * np.sin(a[1] * t)
    return D


def run():
    """Fit with both Jacobians; return a JSON-ready dict."""
    out = {"published": PUBLISHED, "fits": {}}
    for method in ("golub-pereyra", "kaufman"):
        res = varpro(phi, Y, A0, dphi=dphi, weights=WEIGHTS, method=method)
        out["fits"][method] = {
            "theta": res.theta.tolist(),
            "coef": res.coef.tolist(),
            "wresid_norm": res.residual_norm,
            "wresid_norm2": res.residual_norm**2,
            "jacobian_evaluations": res.njev,
            "function_evaluations": res.nfev,
            "sigma": res.sigma,
            "std_theta": res.std_theta.tolist(),
            "std_coef": res.std_coef.tolist(),
            "max_rel_diff_theta_vs_published": float(
                np.max(np.abs(res.theta - PUBLISHED["theta"]) / np.abs(PUBLISHED["theta"]))),
            "max_rel_diff_coef_vs_published": float(
                np.max(np.abs(res.coef - PUBLISHED["coef"]) / np.abs(PUBLISHED["coef"]))),
            "message": res.message,
        }
    # the reduced problem at the published point: objective and gradient
    for name, a in (("published", np.array(PUBLISHED["theta"])),
                    ("structops", np.array(out["fits"]["golub-pereyra"]["theta"]))):
        r, J, _ = reduced_jacobian(phi, Y, a, dphi=dphi, weights=WEIGHTS)
        out.setdefault("reduced_at", {})[name] = {"wresid_norm2": float(r @ r),
                                                  "gradient_norm": float(np.linalg.norm(J.T @ r))}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="same run (the example is small)")
    ap.add_argument("--out", default="adaex_out", help="output folder")
    args = ap.parse_args(argv)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    out = run()
    print(f"{'':16s} {'a1':>10s} {'a2':>10s} {'a3':>10s} {'c1':>10s} {'c2':>10s} {'||Wr||^2':>12s} {'Jac evals':>9s}")
    p = PUBLISHED
    print(f"{'published':16s} " + " ".join(f"{v:10.7f}" for v in p["theta"] + p["coef"])
          + f" {p['wresid_norm2']:12.6e} {'':>9s}")
    for method, f in out["fits"].items():
        print(f"{method:16s} " + " ".join(f"{v:10.7f}" for v in f["theta"] + f["coef"])
              + f" {f['wresid_norm2']:12.6e} {f['jacobian_evaluations']:9d}")
    for name, d in out["reduced_at"].items():
        print(f"reduced problem at the {name} a: ||Wr||^2 = {d['wresid_norm2']:.10e}, "
              f"||J^T r|| = {d['gradient_norm']:.2e}")
    (outdir / "adaex.json").write_text(json.dumps(out, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        f = out["fits"]["golub-pereyra"]
        tt = np.linspace(0, 1, 200)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(T, Y, "o", label="data")
        ax.plot(tt, phi(np.array(f["theta"]), tt) @ np.array(f["coef"]), label="VarPro fit")
        ax.set_xlabel("t")
        ax.set_ylabel("y")
        ax.legend()
        ax.set_title("varpro.m adaex")
        fig.tight_layout()
        fig.savefig(outdir / "adaex.png", dpi=120)
        plt.close(fig)
    except ImportError:  # pragma: no cover
        pass
    print(f"wrote {outdir / 'adaex.json'}")
    return out


if __name__ == "__main__":
    main()

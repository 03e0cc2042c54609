"""Conditioning of single-layer training: singular values of ``J = [J_W J_K]``.

The lecture's example: regression ``R(W, K) = W tanh(K Y) - C`` with
``d = 3`` input features, ``1`` output, ``s = 100`` examples drawn from
``U([-1, 1]^3)`` and widths ``m = 8, 16, 32``. ``J`` is the Jacobian of
``vec(R)`` with respect to ``(K, W)``, ``J_W = tanh(K Y)^T (x) I`` and
``J_K = (I (x) W) diag(tanh'(K Y)) (Y^T (x) I)``; here it is assembled
column by column from the parameter Jacobian of a two-layer
:class:`structops.nn.Network` (``tanh`` layer without bias, then a linear
layer), i.e. from Jacobian-vector products. ``K`` and ``W`` are standard
normal.

Run: ``python examples/conditioning.py [--quick] [--out DIR]`` (writes
``conditioning.json`` and ``conditioning.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from structops.nn import Network, SingleLayer, dense
from structops.parametric import full


def jacobian_singular_values(m: int, s: int = 100, d: int = 3, seed: int = 0):
    """Singular values (descending) of ``J = [J_W J_K]`` for width ``m``.

    Returns
    -------
    sv : ndarray, shape ``(min(s, 4 m),)``
    J : ndarray, shape ``(s, m d + m)``
        Columns: ``K`` (row-major) then ``W``.
    """
    rng = np.random.default_rng(seed)
    Y = rng.uniform(-1, 1, size=(d, s))
    net = Network([SingleLayer(full(m, d), "tanh", bias=False), dense(m, 1)])
    theta = rng.standard_normal(net.num_params)
    J = net.param_jacobian(theta, Y).matmat(np.eye(net.num_params))
    return np.linalg.svd(J, compute_uv=False), J


def run(widths=(8, 16, 32), s=100, seed=0):
    out = {"s": s, "d": 3, "widths": list(widths), "results": {}}
    for m in widths:
        sv, J = jacobian_singular_values(m, s=s, seed=seed)
        out["results"][str(m)] = {
            "shape": list(J.shape),
            "singular_values": sv.tolist(),
            "sigma_max": float(sv[0]),
            "sigma_min": float(sv[-1]),
            "cond": float(sv[0] / sv[-1]),
            "numerical_rank": int((sv > sv[0] * max(J.shape) * np.finfo(float).eps).sum()),
        }
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="widths 8 and 16 only")
    ap.add_argument("--out", default="conditioning_out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    widths = (8, 16) if args.quick else (8, 16, 32)
    out = run(widths, seed=args.seed)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    print(f"{'m':>4s} {'J shape':>10s} {'sigma_max':>10s} {'sigma_min':>10s} {'cond(J)':>10s} {'rank':>5s}")
    for m, r in out["results"].items():
        print(f"{m:>4s} {str(tuple(r['shape'])):>10s} {r['sigma_max']:10.3e} {r['sigma_min']:10.3e} "
              f"{r['cond']:10.3e} {r['numerical_rank']:5d}")
    (outdir / "conditioning.json").write_text(json.dumps(out, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(widths), figsize=(4 * len(widths), 3.2))
        for ax, (m, r) in zip(np.atleast_1d(axes), out["results"].items()):
            ax.semilogy(np.arange(1, len(r["singular_values"]) + 1), r["singular_values"], ".")
            ax.set_title(f"sing. vals. m = {m}")
            ax.set_xlabel("index")
        fig.tight_layout()
        fig.savefig(outdir / "conditioning.png", dpi=120)
        plt.close(fig)
    except ImportError:  # pragma: no cover
        pass
    return out


if __name__ == "__main__":
    main()

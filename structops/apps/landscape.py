"""``structops landscape``: loss landscapes and trajectories of conventional vs extended networks.

Argument parsing, printing and files only; the experiments are in
:mod:`structops.solvers.landscape`.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from ..plotting import plot_landscapes, plot_trajectories
from ..solvers.landscape import (
    REFERENCE_TABLE,
    ProgressBar,
    basin_measures,
    extended_wider,
    filter_normalized_direction,
    landscape_conventional,
    landscape_extended,
    normalized_loss,
    toy_problem,
    trajectory_task,
    parallel_map,
)
from .args import parse, finite_float, int_at_least, output_dir

__all__ = ["build_parser", "main"]


def _radius_text(v) -> str:
    return "inf" if v is None else f"{v:.2f}"


def build_parser(prog: str = "structops landscape") -> argparse.ArgumentParser:
    """The argument parser of the ``landscape`` command."""
    p = argparse.ArgumentParser(prog=prog, description=(
        "Loss landscapes (equations 9 and 10 of Siahkoohi, Louboutin and Herrmann) and training trajectories of a 4-layer sigmoid CNN "
        "with conventional vs extended convolutions; writes PNG figures and landscape.json into --out."))
    p.add_argument("--quick", action="store_true", help="coarse 7x7 grid, one direction pair, short runs")
    p.add_argument("--out", type=output_dir, default="landscape_out", help="output folder (default: landscape_out)")
    p.add_argument("--grid", type=int_at_least(2), default=None, help="grid points per axis (default 21; quick 7)")
    p.add_argument("--pairs", type=int_at_least(1), default=None, help="direction pairs (default 4; quick 1)")
    p.add_argument("--iters", type=int_at_least(1), default=None, help="trajectory iterations (default 200; quick 40)")
    p.add_argument("--inner-iters", type=int_at_least(1), default=None, help="inner L-BFGS iterations (default 100; quick 50)")
    p.add_argument("--image", type=int_at_least(3, at_most=1024), default=16, help="image side (default 16)")
    p.add_argument("--layers", type=int_at_least(1, at_most=64), default=4, help="number of layers (default 4)")
    p.add_argument("--lam", type=finite_float(nonnegative=True), default=0.04, help="penalty weight lambda (default 0.04)")
    p.add_argument("--aux-init", choices=("random", "primary"), default="random",
                   help="initial per-pixel weights of the trajectories (default random, as Siahkoohi, Louboutin and Herrmann)")
    p.add_argument("--inner-init", choices=("random", "primary"), default="random",
                   help="start of the inner problem at every landscape point: standard normal per-pixel weights "
                        "(default, as in the reference code) or the conventional layers")
    p.add_argument("--no-trajectories", action="store_true", help="landscapes only")
    p.add_argument("--jobs", type=int_at_least(1), default=None, help="worker processes (default: all cores, at most 16)")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    return p


def _default(value, default):
    return default if value is None else value


def main(argv=None) -> int:
    """Run the landscape experiments; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after ``landscape`` (default ``sys.argv[1:]``).
    """
    args, status = parse(build_parser(), argv)
    if args is None:
        return status
    quick = args.quick
    n = _default(args.grid, 7 if quick else 21)
    npairs = _default(args.pairs, 1 if quick else 4)
    iters = _default(args.iters, 40 if quick else 200)
    inner = _default(args.inner_iters, 50 if quick else 100)
    jobs = _default(args.jobs, min(os.cpu_count() or 1, 16))
    t0 = time.perf_counter()
    prob = toy_problem(n_layers=args.layers, image=(args.image, args.image), lam=args.lam, seed=args.seed)
    alphas = np.linspace(-4, 4, n)
    betas = np.linspace(-4, 4, n)
    rng = np.random.default_rng(args.seed + 1)
    dirs = [(filter_normalized_direction(prob.ext, prob.w_star, rng),
             filter_normalized_direction(prob.ext, prob.w_star, rng)) for _ in range(npairs)]

    pairs = []
    for k, (d1, d2) in enumerate(dirs):
        Lc = landscape_conventional(prob, d1, d2, alphas, betas)
        bar = ProgressBar(n * n, f"extended landscape {k + 1}/{npairs}")
        Le = landscape_extended(prob, d1, d2, alphas, betas, maxiter=inner, init=args.inner_init,
                                seed=args.seed + 1000 * (k + 1), jobs=jobs, progress=bar)
        pairs.append({"conventional": Lc.tolist(), "extended": Le.tolist(),
                      **basin_measures(Lc, Le, alphas, betas)})
    t_land = time.perf_counter() - t0
    wider = {
        "area_own_scale": sum(p["basin_fraction"]["extended"] > p["basin_fraction"]["conventional"] for p in pairs),
        "area_conventional_scale": sum(p["basin_fraction"]["extended_on_conventional_scale"]
                                       > p["basin_fraction"]["conventional"] for p in pairs),
        "radius_own_scale": sum(extended_wider(p["basin_radius"]["extended"], p["basin_radius"]["conventional"])
                                for p in pairs),
        "pairs": npairs,
    }

    traj, table = {}, {}
    if not args.no_trajectories:
        starts = [(-2.0, 2.0), (2.0, 2.0), (2.0, -2.0)]
        d1, d2 = dirs[0]
        opts_c = dict(maxiter=iters, lr=0.05, memory=100)
        opts_e = dict(opts_c, inner_maxiter=inner, aux_init=args.aux_init, seed=args.seed)
        tasks, keys = [], []
        for a, b in starts:
            w0 = prob.w_star + a * d1 + b * d2
            s = f"({a:g}, {b:g})"
            for kind in ("ext", "conv"):  # the long runs first
                for method in ("adam", "lbfgs"):
                    tasks.append((prob, w0, kind, method, opts_e if kind == "ext" else opts_c))
                    keys.append((s, f"{kind}_{method}"))
        bar = ProgressBar(len(tasks), "trajectories")
        runs = parallel_map(trajectory_task, tasks, jobs, bar)
        for (s, key), run in zip(keys, runs):
            traj.setdefault(s, {})[key] = run
        for s in traj:
            traj[s] = {k: traj[s][k] for k in ("conv_adam", "conv_lbfgs", "ext_adam", "ext_lbfgs")}
            table[s] = {k: v["loss"][-1] for k, v in traj[s].items()}
    t_total = time.perf_counter() - t0

    out = {
        "alpha": alphas.tolist(),
        "beta": betas.tolist(),
        "conventional": pairs[0]["conventional"],
        "extended": pairs[0]["extended"],
        "pairs": pairs,
        "extended_basin_wider": wider,
        "trajectories": traj,
        "final_normalized_loss": table,
        "reference_final_normalized_loss": REFERENCE_TABLE,
        "settings": {"quick": quick, "grid": n, "pairs": npairs, "iterations": iters, "inner_iterations": inner,
                     "lambda": args.lam, "layers": args.layers, "image": args.image, "aux_init": args.aux_init,
                     "inner_init": args.inner_init,
                     "seed": args.seed, "adam_lr": 0.05, "lbfgs_memory": 100},
        "seconds": {"landscapes": t_land, "total": t_total},
    }
    with open(os.path.join(args.out, "landscape.json"), "w") as f:
        json.dump(out, f)
    plot_landscapes(os.path.join(args.out, "landscapes.png"), alphas, betas, pairs, normalized_loss)
    if traj:
        plot_trajectories(os.path.join(args.out, "trajectories.png"), traj)

    print(f"landscapes: {n}x{n} grid, {npairs} direction pair(s); basin: normalised loss < 0.1, "
          "area fraction and valley radius around w* (conventional / extended):")
    for k, p in enumerate(pairs):
        bf, br = p["basin_fraction"], p["basin_radius"]
        print(f"  pair {k + 1}: area {bf['conventional']:.3f} / {bf['extended']:.3f} "
              f"(extended on the conventional scale {bf['extended_on_conventional_scale']:.3f}), "
              f"radius {_radius_text(br['conventional'])} / {_radius_text(br['extended'])}")
    print(f"  extended basin wider in area: {wider['area_own_scale']} of {npairs} pair(s) (each landscape on its "
          f"own scale), {wider['area_conventional_scale']} of {npairs} (common scale); "
          f"valley radius wider: {wider['radius_own_scale']} of {npairs}")
    if table:
        cols = ("conv_adam", "conv_lbfgs", "ext_adam", "ext_lbfgs")
        print(f"final normalised loss after {iters} iterations (ours | reference):")
        print(f"  {'start':<9s}" + "".join(f"{c:>22s}" for c in cols))
        for s in table:
            ref = REFERENCE_TABLE.get(s, {})
            print(f"  {s:<9s}" + "".join(f"{table[s][c]:>11.1e} | {ref.get(c, float('nan')):<8.1e}" for c in cols))
    print(f"wrote {args.out}/landscape.json, landscapes.png" + (", trajectories.png" if traj else "")
          + f" in {t_total:.1f} s")
    return 0

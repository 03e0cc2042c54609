"""``structops convex``: the two-layer convex CNN program against SGD (Ergen and Pilanci 2021, Figure 2).

Synthetic data as in the paper's figure: ``n = 6`` signals of length
``d = 15``, filters of size ``h = 10`` with stride 5 (``K = 2`` patches),
responses ``y ~ N(0, 1)``. The exact convex program of the ReLU CNN (cone
constraints) is solved over sampled gate patterns with a certified duality gap,
its ReLU network is recovered, and SGD on the non-convex network runs from 5
initialisations; the objective against time goes to a PNG, the numbers to
JSON.

Usage::

    structops convex [--out DIR] [--quick] [--beta B] [--width M] [--epochs E] [--samples S] [--seed S]
    python -m structops convex ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .args import finite_float, int_at_least, output_dir, parse, positive_int

__all__ = ["main", "build_parser", "two_layer_experiment"]


def build_parser(prog: str = "structops convex") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Ergen and Pilanci (2021), Figure 2: the certified convex optimum of a two-layer ReLU CNN "
            "(n = 6, d = 15, h = 10, stride 5) against SGD from 5 initialisations; objective vs time."
        ),
    )
    p.add_argument("--out", type=output_dir, default="convex-figures", help="folder for the PNG and JSON (default ./convex-figures)")
    p.add_argument("--quick", action="store_true", help="fewer gate samples and SGD epochs (a few seconds)")
    p.add_argument("--beta", type=finite_float(positive=True), default=1e-2, help="weight decay (default 0.01)")
    p.add_argument("--width", type=positive_int, default=10, help="neurons of the SGD networks (default 10)")
    p.add_argument("--epochs", type=positive_int, default=None, help="SGD epochs (default 20000; 3000 with --quick)")
    p.add_argument("--samples", type=positive_int, default=None,
                   help="generators drawn for the gate patterns (default 20000; 2000 with --quick)")
    p.add_argument("--runs", type=int_at_least(1), default=5, help="SGD initialisations (default 5)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the data, gates and SGD (default 0)")
    return p


def two_layer_experiment(beta=1e-2, width=10, epochs=20000, samples=20000, runs=5, seed=0):
    """The figure's numbers: the convex fit's report and each SGD run's history ``[(seconds, objective)]``."""
    import numpy as np

    from ..convex import PatchOperator, relu_cnn, sample_gates, train_two_layer_sgd

    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((6, 15)), rng.standard_normal(6)
    A = PatchOperator(X, 10, stride=5)
    import time

    t0 = time.perf_counter()
    gates = sample_gates(A, samples, kind="mixed", seed=seed)
    fit = relu_cnn(A, y, beta, gates, tol=1e-9)
    report = fit.report()
    report["seconds"] = time.perf_counter() - t0  # gates included
    sgd = []
    for s in range(runs):
        _, hist = train_two_layer_sgd(A, y, beta, width=width, epochs=epochs, seed=[seed, s])
        sgd.append(hist)
    return report, sgd


def main(argv=None) -> int:
    """Run the experiment; returns 0 when the convex optimum is certified and at or below every SGD run."""
    args, status = parse(build_parser(), argv)
    if args is None:
        return status
    epochs = args.epochs or (3000 if args.quick else 20000)
    samples = args.samples or (2000 if args.quick else 20000)
    print(f"Ergen and Pilanci (2021) Figure 2: two-layer ReLU CNN, n = 6, d = 15, h = 10, stride 5, "
          f"beta = {args.beta:g}; {samples} generators sampled; SGD width {args.width}, {epochs} epochs, "
          f"{args.runs} initialisations, seed {args.seed}\n")
    report, sgd = two_layer_experiment(args.beta, args.width, epochs, samples, args.runs, args.seed)
    header = f"{'method':>22} {'objective':>14} {'seconds':>9}"
    print(header)
    print("-" * len(header))
    print(f"{'convex (ReLU program)':>22} {report['objective']:14.8g} {report['seconds']:9.2f}")
    print(f"{'  certified bound':>22} {report['lower_bound']:14.8g}   (relative gap {report['relative_gap']:.1e}, "
          f"{report['gates']} gate patterns, {report['neurons']} neurons)")
    print(f"{'  recovered network':>22} {report['nonconvex_objective']:14.8g}")
    for i, hist in enumerate(sgd):
        print(f"{f'SGD run {i + 1}':>22} {hist[-1][1]:14.8g} {hist[-1][0]:9.2f}")
    best = min(h[-1][1] for h in sgd)
    ok = report["converged"] and report["objective"] <= best * (1 + 1e-9)
    print(f"\nconvex optimum {'<=' if report['objective'] <= best else '>'} best SGD run "
          f"({report['objective']:.6g} vs {best:.6g}): {'ok' if ok else 'NOT MET'}")
    from ..plotting import plot_convex_training

    png = os.path.join(args.out, "two_layer_convex_vs_sgd.png")
    step = max(1, epochs // 400)
    thin = [h[::step] + ([h[-1]] if (len(h) - 1) % step else []) for h in sgd]
    plot_convex_training(png, f"two-layer ReLU CNN, n = 6, d = 15, h = 10, stride 5, beta = {args.beta:g}",
                         [(f"SGD run {i + 1}", h) for i, h in enumerate(thin)], report)
    out = os.path.join(args.out, "two_layer_convex_vs_sgd.json")
    with open(out, "w") as fh:
        json.dump(dict(setup=dict(n=6, d=15, h=10, stride=5, beta=args.beta, width=args.width, epochs=epochs,
                                  samples=samples, seed=args.seed),
                       convex=report, sgd=[dict(final=h[-1][1], seconds=h[-1][0], history=t)
                                           for h, t in zip(sgd, thin)]), fh, indent=1)
    print(f"wrote {png} and {out}")
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

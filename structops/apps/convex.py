"""``structops convex``: convex CNN training against SGD (Ergen and Pilanci 2021; Zhang, Liang and Wainwright 2017).

Synthetic data as in the paper's figure: ``n = 6`` signals of length
``d = 15``, filters of size ``h = 10`` with stride 5 (``K = 2`` patches),
responses ``y ~ N(0, 1)``. The exact convex program of the ReLU CNN (cone
constraints) is solved over sampled gate patterns with a certified duality gap,
its ReLU network is recovered, and SGD on the non-convex network runs from 5
initialisations; the objective against time goes to a PNG, the numbers to
JSON. The three-layer circular CNN with two ReLU levels is trained on
scikit-learn's digits (n = 99, even vs odd) by SGD from 5 initialisations and
by its certified convex relaxation, whose network is read off and polished.
Then convexified CNNs (CCNN-1, CCNN-2) and a ReLU CNN-1 trained by SGD
are compared by their test error on scikit-learn's digits and two variations
made in-repo (noise background, random rotation), in the format of Table 1 of
Zhang, Liang and Wainwright (2017).

Usage::

    structops convex [--out DIR] [--quick] [--part all|two-layer|three-layer|ccnn] [--beta B] [--width M] [--epochs E]
                     [--samples S] [--runs R] [--seed S]
    python -m structops convex ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .args import finite_float, int_at_least, output_dir, parse, positive_int

__all__ = ["main", "build_parser", "two_layer_experiment", "three_layer_experiment"]


def build_parser(prog: str = "structops convex") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Ergen and Pilanci (2021), Figure 2: the certified convex optimum of a two-layer ReLU CNN "
            "(n = 6, d = 15, h = 10, stride 5) against SGD from 5 initialisations; objective vs time. "
            "The three-layer circular CNN (two ReLU levels) on the digits, n = 99, by its certified relaxation. "
            "Zhang, Liang and Wainwright (2017), Table 1: CCNN vs CNN test errors on the digits."
        ),
    )
    p.add_argument("--out", type=output_dir, default="convex-figures", help="folder for the PNG and JSON (default ./convex-figures)")
    p.add_argument("--quick", action="store_true", help="fewer gate samples, features and epochs (well under a minute)")
    p.add_argument("--beta", type=finite_float(positive=True), default=1e-2, help="weight decay (default 0.01)")
    p.add_argument("--width", type=positive_int, default=10, help="neurons of the SGD networks (default 10)")
    p.add_argument("--epochs", type=positive_int, default=None, help="SGD epochs (default 20000; 3000 with --quick)")
    p.add_argument("--samples", type=positive_int, default=None,
                   help="generators drawn for the gate patterns (default 20000; 2000 with --quick); with "
                        "--part three-layer, the three-layer patterns sampled (default 20; 5 with --quick)")
    p.add_argument("--runs", type=int_at_least(1), default=5, help="SGD initialisations (default 5)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the data, gates and SGD (default 0)")
    p.add_argument("--part", choices=("all", "two-layer", "three-layer", "ccnn"), default="all",
                   help="the two-layer figure, the three-layer digits experiment, the CCNN table, or all (default)")
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


#: The three-layer digits experiment (Ergen and Pilanci 2021, Figure 3's setup on scikit-learn's digits).
THREE_LAYER_SETUP = dict(n=99, beta=0.1, width=20, h=3, epochs=2000, samples=20, quick_epochs=300, quick_width=10,
                         quick_samples=5)


def three_layer_experiment(beta=0.1, width=20, epochs=2000, samples=20, runs=5, seed=0, n=99):
    """Three-layer circular CNNs on the digits (even vs odd, ``y = +-1``), SGD against the convex relaxation.

    The images are signals of length ``d = 64`` (rows of the 8x8 digits end to
    end) with circular patches of ``h = 3`` at stride 1 (``K = 64``), ``n``
    training images and the rest of the digits for testing. ``runs`` SGD
    trainings of width ``width``; the relaxation over ``samples`` sampled
    patterns plus those of the best SGD network (so its optimum is at most
    that network's objective), the network read off it and polished.

    Returns a dict: ``setup``, ``sgd`` (per run: final objective, test
    accuracy, seconds, history) and ``convex`` (the fit's report, with the
    polished network's test accuracy and the seconds of patterns, solve and
    polish together).
    """
    import time

    import numpy as np
    from sklearn.datasets import load_digits

    from ..convex import PatchOperator
    from ..convex.three_layer import network_patterns, sample_three_layer_patterns, three_layer_cnn, \
        train_three_layer_sgd

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    tr, te = order[:n], order[n:]
    X = digits.data / 16.0
    y = np.where(digits.target % 2 == 0, 1.0, -1.0)
    A = PatchOperator(X[tr], 3, padding="circular")
    At = PatchOperator(X[te], 3, padding="circular")

    def accuracy(net):
        return float(np.mean(np.sign(net.predict(At)) == y[te]))

    sgd, best = [], None
    for s in range(runs):
        net, hist = train_three_layer_sgd(A, y[tr], beta, width, epochs, seed=[seed, s])
        obj = net.objective(A, y[tr], beta)
        sgd.append(dict(final=obj, test_accuracy=accuracy(net), seconds=hist[-1][0] if hist else 0.0, history=hist))
        if best is None or obj < best[0]:
            best = (obj, net)
    t0 = time.perf_counter()
    patterns = sample_three_layer_patterns(A, samples, seed=seed)
    patterns = network_patterns(A, best[1], also=patterns)
    fit = three_layer_cnn(A, y[tr], beta, patterns)
    report = fit.report()
    report["seconds"] = time.perf_counter() - t0
    report["test_accuracy"] = accuracy(fit.polished)
    report["best_sgd_in_patterns"] = best[0]
    setup = dict(n=n, n_test=len(te), d=64, h=3, stride=1, padding="circular", beta=beta, width=width,
                 epochs=epochs, samples=samples, runs=runs, seed=seed, target="even (+1) vs odd (-1) digit")
    return dict(setup=setup, sgd=sgd, convex=report)


#: The networks of the CCNN table: CNN-1 by SGD, CCNN-1 and CCNN-2 (Zhang, Liang and Wainwright 2017).
CCNN_SETUP = dict(
    cnn=dict(filters=32, epochs=30, lr=0.05),
    ccnn1=[dict(features=256, radius=300.0, epochs=20, lr=4.0, pool=2)],
    ccnn2=[dict(features=256, radius=300.0, epochs=20, lr=4.0, pool=1),
           dict(features=256, radius=300.0, epochs=20, lr=4.0, pool=2)],
    rank=16,
    n_train=1000,
)


def ccnn_table(quick=False, seed=0):
    """Test errors of CNN-1, CCNN-1 and CCNN-2 on the digits and their variations: ``{model: {variation: error}}``."""
    import copy
    import time

    import numpy as np

    from ..convex.ccnn import train_ccnn
    from ..convex.datasets import VARIATIONS, digits, vary
    from ..convex.sgd import train_cnn_classifier

    setup = copy.deepcopy(CCNN_SETUP)
    if quick:  # fewer features and epochs
        for opts in setup["ccnn1"] + setup["ccnn2"]:
            opts.update(features=128, epochs=8)
        setup["cnn"].update(epochs=10)
    images, labels = digits()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    train, test = perm[: setup["n_train"]], perm[setup["n_train"]:]
    table, seconds = {"CNN-1 (ReLU)": {}, "CCNN-1": {}, "CCNN-2": {}}, {}
    for v, kind in enumerate(VARIATIONS):
        X = vary(images, kind, seed=[seed, v])
        t0 = time.perf_counter()
        cnn = train_cnn_classifier(X[train], labels[train], 10, seed=seed, **setup["cnn"])
        table["CNN-1 (ReLU)"][kind] = cnn.error(X[test], labels[test])
        t1 = time.perf_counter()
        c1 = train_ccnn(X[train], labels[train], 10, n_layers=1, layer_options=setup["ccnn1"], seed=seed)
        table["CCNN-1"][kind] = c1.error(X[test], labels[test])
        t2 = time.perf_counter()
        c2 = train_ccnn(X[train], labels[train], 10, n_layers=2, ranks=(setup["rank"],),
                        layer_options=setup["ccnn2"], seed=seed)
        table["CCNN-2"][kind] = c2.error(X[test], labels[test])
        seconds[kind] = dict(cnn=t1 - t0, ccnn1=t2 - t1, ccnn2=time.perf_counter() - t2)
    return dict(errors=table, seconds=seconds, setup=setup, n_test=int(len(test)))


def main(argv=None) -> int:
    """Run the experiments; returns 0 when the convex optimum is certified and at or below every SGD run."""
    args, status = parse(build_parser(), argv)
    if args is None:
        return status
    ok = True
    if args.part in ("all", "two-layer"):
        ok = _two_layer_part(args) and ok
    if args.part in ("all", "three-layer"):
        ok = _three_layer_part(args) and ok
    if args.part in ("all", "ccnn"):
        ok = _ccnn_part(args) and ok
    return 0 if ok else 1


def _ccnn_part(args) -> bool:
    """The CCNN vs CNN table on the digits and their variations; True when it ran."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("\nCCNN table skipped: it needs scikit-learn's digits (pip install 'structops[convex]')")
        return True
    from ..convex.datasets import VARIATIONS

    print(f"\nZhang, Liang and Wainwright (2017), Table 1 on scikit-learn's digits (8x8; "
          f"{CCNN_SETUP['n_train']} training images, the rest for testing): test error")
    res = ccnn_table(args.quick, args.seed)
    header = f"{'':>14}" + "".join(f"{k:>9}" for k in VARIATIONS)
    print(header)
    print("-" * len(header))
    for name, row in res["errors"].items():
        print(f"{name:>14}" + "".join(f"{100 * row[k]:8.2f}%" for k in VARIATIONS))
    total = sum(sum(t.values()) for t in res["seconds"].values())
    print(f"({res['n_test']} test images; {total:.1f} s)")
    out = os.path.join(args.out, "ccnn_digits.json")
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"wrote {out}")
    return True


def _two_layer_part(args) -> bool:
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
    return ok


def _three_layer_part(args) -> bool:
    """The three-layer digits experiment; True when the relaxation is certified and at or below every SGD run."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("\nthree-layer experiment skipped: it needs scikit-learn's digits (pip install 'structops[convex]')")
        return True
    S = THREE_LAYER_SETUP
    epochs = args.epochs or (S["quick_epochs"] if args.quick else S["epochs"])
    width = S["quick_width"] if args.quick else S["width"]
    samples = args.samples if args.samples and args.part == "three-layer" else (
        S["quick_samples"] if args.quick else S["samples"])
    print(f"\nErgen and Pilanci (2021), three-layer circular CNN (two ReLU levels) on scikit-learn's digits: "
          f"n = {S['n']}, d = 64, h = 3, stride 1, beta = {S['beta']:g}, even vs odd; SGD width {width}, "
          f"{epochs} epochs, {args.runs} initialisations; the relaxation over {samples} sampled patterns and the "
          f"best SGD network's\n")
    res = three_layer_experiment(S["beta"], width, epochs, samples, args.runs, args.seed, S["n"])
    c = res["convex"]
    header = f"{'method':>24} {'objective':>12} {'test acc':>9} {'seconds':>9}"
    print(header)
    print("-" * len(header))
    print(f"{'convex relaxation':>24} {c['objective']:12.6g} {'':>9} {c['seconds']:9.2f}")
    print(f"{'  certified bound':>24} {c['lower_bound']:12.6g}   (relative gap {c['relative_gap']:.1e}, "
          f"{c['patterns']} patterns)")
    print(f"{'  network read off':>24} {c['network_objective']:12.6g}   (rank ratio {c['rank_ratio']:.2g})")
    print(f"{'  polished':>24} {c['polished_objective']:12.6g} {100 * c['test_accuracy']:8.1f}%")
    for i, r in enumerate(res["sgd"]):
        print(f"{f'SGD run {i + 1}':>24} {r['final']:12.6g} {100 * r['test_accuracy']:8.1f}% {r['seconds']:9.2f}")
    best = min(r["final"] for r in res["sgd"])
    ok = c["converged"] and c["lower_bound"] <= best * (1 + 1e-9)
    print(f"\nrelaxation <= best SGD run ({c['objective']:.6g} vs {best:.6g}): {'ok' if ok else 'NOT MET'}; "
          f"polished network {'<=' if c['polished_objective'] <= best else '>'} best SGD run")
    from ..plotting import plot_convex_training

    png = os.path.join(args.out, "three_layer_digits.png")
    step = max(1, epochs // 400)
    thin = [r["history"][::step] + r["history"][-1:] for r in res["sgd"]]
    for r, t in zip(res["sgd"], thin):
        r["history"] = t
    plot_convex_training(png, f"three-layer circular CNN, digits n = {S['n']}, d = 64, h = 3, beta = {S['beta']:g}",
                         [(f"SGD run {i + 1}", t) for i, t in enumerate(thin)],
                         dict(objective=c["objective"], seconds=c["seconds"], nonconvex_objective=c["polished_objective"]),
                         convex_label="convex relaxation (certified)", network_label="network read off, polished")
    out = os.path.join(args.out, "three_layer_digits.json")
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"wrote {png} and {out}")
    return ok


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

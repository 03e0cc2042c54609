"""The ``structops`` command line.

Usage::

    structops demo [--channels 16] [--size 64] [--kernel-size 3] [--padding same]
                   [--seed 0] [--batch 1] [--repeat 5]
    python -m structops demo ...

Each subcommand is one function decorated with :func:`command`, which declares
its name, help text and arguments; :func:`main` builds the parser from the
registry. Heavy modules (NumPy, SciPy, PyLops) are imported inside the
subcommand functions, so ``structops --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main", "build_parser", "command", "arg"]

#: name -> (help, arguments, function); filled by the ``@command`` decorator.
_COMMANDS: dict = {}


class CommandError(Exception):
    """An error meant for the user: printed without a traceback, exit status 2."""


def arg(*flags, **kwargs):
    """An ``argparse`` argument specification for :func:`command`."""
    return flags, kwargs


def command(name: str, help: str, *arguments):
    """Register ``func(args) -> int | None`` as the subcommand ``name``.

    ``arguments`` are :func:`arg` specifications passed to
    ``ArgumentParser.add_argument``.
    """

    def decorate(func):
        _COMMANDS[name] = (help, arguments, func)
        return func

    return decorate


def _padding(text: str):
    """``--padding`` values: a mode name or a non-negative integer."""
    modes = ("same", "valid", "full", "circular")
    if text in modes:
        return text
    try:
        p = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid padding {text!r}; expected one of {', '.join(modes)} "
            "or a non-negative integer"
        ) from None
    if p < 0:
        raise argparse.ArgumentTypeError(f"padding must be non-negative; got {p}")
    return p


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {v}")
    return v


def _fmt_time_col(seconds: float) -> str:
    """:func:`~structops.benchtools.format_time` right-aligned for the demo's table."""
    from .benchtools import format_time

    return f"{format_time(seconds):>11}"


def _fmt_bytes(nbytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1000.0
    return f"{nbytes:.3g} PB"  # pragma: no cover


@command(
    "demo",
    "build a multi-channel Conv2D layer, report its shapes, 2-norm and dot test, "
    "and time it against the equivalent PyLops operator",
    arg("--channels", type=_positive_int, default=16,
        help="input and output channels (default 16)"),
    arg("--size", type=_positive_int, default=64,
        help="image side, the input is SIZE x SIZE (default 64)"),
    arg("--kernel-size", type=_positive_int, default=3, help="kernel side (default 3)"),
    arg(
        "--padding",
        type=_padding,
        default="same",
        help="same, valid, full, circular or an integer (default same)",
    ),
    arg("--seed", type=int, default=0, help="seed of the random kernel and inputs (default 0)"),
    arg("--batch", type=_positive_int, default=1,
        help="images per product in the timing (default 1)"),
    arg("--repeat", type=_positive_int, default=5,
        help="timed repetitions, median reported (default 5)"),
)
def demo(args) -> int:
    import numpy as np

    import structops
    from structops.benchtools import median_time, pylops_conv2d_block
    from structops.testing import assert_adjoint

    c, n, k, b = args.channels, args.size, args.kernel_size, args.batch
    rng = np.random.default_rng(args.seed)
    kernel = rng.standard_normal((c, c, k, k)) / (k * np.sqrt(c))
    try:
        op = structops.Conv2D(kernel, (n, n), padding=args.padding)
    except (ValueError, TypeError) as exc:
        raise CommandError(str(exc)) from None

    rows, cols = op.shape
    print(
        f"structops {structops.__version__} demo: Conv2D {c} -> {c} channels, {k}x{k} kernel, "
        f"padding={args.padding!r}, {n}x{n} float64 input, seed {args.seed}"
    )
    print(f"  dims  (input)  : {tuple(op.dims)}")
    print(f"  dimsd (output) : {tuple(op.dimsd)}")
    print(
        f"  matrix         : {rows} x {cols} ({rows * cols:.3g} entries, "
        f"{_fmt_bytes(8.0 * rows * cols)} if dense); kernel: {kernel.size} numbers"
    )

    t0 = time.perf_counter()
    smax = structops.opnorm(op)
    how = "per-frequency SVD, exact" if op.circular else "Lanczos, residual-checked to 1e-10"
    print(f"  2-norm         : sigma_max = {smax:.10g}  ({how}, {time.perf_counter() - t0:.2f} s)")

    try:
        err = assert_adjoint(op, rng=args.seed)
        print(f"  dot test       : <A u, v> = <u, A^H v> to {err:.1e} (relative)  passed")
        dot_ok = True
    except AssertionError as exc:
        print(f"  dot test       : FAILED: {exc}")
        dot_ok = False

    X = rng.standard_normal((cols, b)) if b > 1 else rng.standard_normal(cols)
    Y = rng.standard_normal((rows, b)) if b > 1 else rng.standard_normal(rows)

    def products(A):
        if b > 1:
            return lambda: (A.matmat(X), A.rmatmat(Y))
        return lambda: (A.matvec(X), A.rmatvec(Y))

    label = f"batch of {b} images" if b > 1 else "one image"
    print(f"  timing         : forward + adjoint, {label}, median of {args.repeat}")
    t_ours = median_time(products(op), args.repeat)
    print(f"    structops Conv2D                      {_fmt_time_col(t_ours)}")

    same = args.padding == "same" or (k % 2 == 1 and args.padding == (k - 1) // 2)
    if not same:
        print(f"    {'PyLops route':<38}skipped: Convolve2D has 'same' zero padding only")
        return 0 if dot_ok else 1

    ref = pylops_conv2d_block(kernel, (n, n))
    fwd, adj = products(op)(), products(ref)()
    rel = max(
        float(np.linalg.norm(fwd[0] - adj[0]) / np.linalg.norm(adj[0])),
        float(np.linalg.norm(fwd[1] - adj[1]) / np.linalg.norm(adj[1])),
    )
    if not rel < 1e-10:
        print(f"    {'PyLops route':<38}DISAGREES with structops (relative difference {rel:.1e})")
        return 1
    t_ref = median_time(products(ref), args.repeat)
    name = f"PyLops Block of {c * c} Convolve2D(fft)"
    print(f"    {name:<38}{_fmt_time_col(t_ref)}   (same result to {rel:.1e})")
    print(f"    speed-up                              {t_ref / t_ours:8.1f}x")
    return 0 if dot_ok else 1


#: name -> (help, module): subcommands whose module parses its own arguments (``module.main(argv)``).
_DELEGATED = {
    "regularize": (
        "reproduce Guo (2019) Figure 4.1: exact Frobenius spectrum regularisation vs the paper's schedule",
        "structops.solvers.regularize_cli",
    ),
    "landscape": (
        "extended vs conventional convolution: loss landscapes and training trajectories (the extended-conv seed)",
        "structops.landscape",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``structops`` argument parser, one subparser per registered command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="structops",
        description="Convolution layers as matrix-free structured linear operators.",
    )
    parser.add_argument("--version", action="version", version=f"structops {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, arguments, func) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        for flags, kwargs in arguments:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(_func=func)
    for name, (help_text, _) in _DELEGATED.items():  # listed here, parsed by their own module
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv=None) -> int:
    """Entry point of ``structops`` and ``python -m structops``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _DELEGATED:
        import importlib

        return int(importlib.import_module(_DELEGATED[argv[0]][1]).main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "_func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        status = func(args)
    except CommandError as exc:
        print(f"structops {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0 if status is None else int(status)



@command(
    "spectrum",
    "singular values of a Conv2D layer: sigma_max, sigma_min, condition number and a PNG of the spectrum",
    arg("--c-in", type=_positive_int, default=16, help="input channels (default 16)"),
    arg("--c-out", type=_positive_int, default=16, help="output channels (default 16)"),
    arg("--size", type=_positive_int, default=32, help="image side, the input is SIZE x SIZE (default 32)"),
    arg("--kernel-size", type=_positive_int, default=3, help="kernel side (default 3)"),
    arg("--padding", type=_padding, default="same", help="same, valid, full, circular or an integer (default same)"),
    arg("--stride", type=_positive_int, default=1, help="stride (default 1)"),
    arg("--seed", type=int, default=0, help="seed of the random normal kernel (default 0)"),
    arg("--kernel", metavar="FILE.npy", default=None,
        help="kernel of shape (c_out, c_in, kh, kw) from a .npy file, instead of a random one"),
    arg("--out", metavar="FILE.png", default="spectrum.png", help="where to write the plot (default spectrum.png)"),
)
def spectrum(args) -> int:
    import numpy as np

    import structops

    if args.kernel is not None:
        try:
            kernel = np.load(args.kernel)
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read kernel file {args.kernel!r}: {exc}") from None
        if kernel.ndim != 4:
            raise CommandError(f"kernel file holds shape {kernel.shape}; expected (c_out, c_in, kh, kw)")
        source = f"kernel {args.kernel}"
    else:
        c_in, c_out, k = args.c_in, args.c_out, args.kernel_size
        rng = np.random.default_rng(args.seed)
        kernel = rng.standard_normal((c_out, c_in, k, k)) / (k * np.sqrt(c_in))
        source = f"random normal kernel, seed {args.seed}"
    n = args.size
    try:
        op = structops.Conv2D(kernel, (n, n), stride=args.stride, padding=args.padding)
    except (ValueError, TypeError) as exc:
        raise CommandError(str(exc)) from None
    c_out, c_in, kh, kw = kernel.shape
    print(
        f"structops {structops.__version__} spectrum: Conv2D {c_in} -> {c_out} channels, {kh}x{kw} kernel, "
        f"{n}x{n} input, padding={args.padding!r}, stride {args.stride} ({source})"
    )
    print(f"  matrix         : {op.shape[0]} x {op.shape[1]}, {min(op.shape)} singular values")

    t0 = time.perf_counter()
    smax = structops.opnorm(op)
    t_max = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        smin = float(structops.singular_values(op, k=1, which="smallest")[0])
        bound, note = "", ""
    except structops.SpectrumNotConvergedError as exc:
        # the computed value is an upper bound of sigma_min that could not be certified
        smin = float(np.asarray(exc.values)[-1])
        bound, note = "<= ", f"   (not certified: {exc})"
    t_min = time.perf_counter() - t0
    cnd = smax / smin if smin > 0 else float("inf")
    print(f"  sigma_max      : {smax:.10g}   ({t_max:.2f} s)")
    print(f"  sigma_min      : {bound}{smin:.10g}   ({t_min:.2f} s){note}")
    print(f"  cond           : {'>= ' if bound else ''}{cnd:.6g}")

    # the plot: the exact full spectrum where a structured rule or a dense SVD gives it,
    # otherwise the circular layer of the same kernel, with this layer's exact extremes marked
    t0 = time.perf_counter()
    try:
        s = structops.singular_values(op)
        title = f"Conv2D {c_in}->{c_out}, {kh}x{kw}, {n}x{n}, padding={args.padding!r}: exact spectrum"
        marks = None
    except (NotImplementedError, ValueError):
        circ = structops.Conv2D(kernel, (n, n), stride=args.stride, padding="circular") if kh % 2 and kw % 2 else None
        if circ is None:
            print("  plot           : skipped (no full spectrum for this layer, and no circular surrogate)")
            return 0
        s = structops.singular_values(circ)
        print(
            f"  circular layer : sigma_max {s[0]:.10g}, sigma_min {s[-1]:.4g}, cond {s[0] / s[-1]:.6g} "
            "(same kernel, periodic padding)"
        )
        title = (
            f"Conv2D {c_in}->{c_out}, {kh}x{kw}, {n}x{n}: spectrum of the circular layer, "
            f"exact extremes of padding={args.padding!r} dashed"
        )
        marks = {"sigma_max": smax, "sigma_min": smin}
    structops.plot_spectrum(s, args.out, title=title, marks=marks)
    print(f"  plot           : {args.out}  ({s.size} values, {time.perf_counter() - t0:.2f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

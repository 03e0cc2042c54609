"""``structops demo``: a layer's shapes, 2-norm and dot test, timed against PyLops' ``Convolve2D``."""

from __future__ import annotations

import time

from .args import CommandError, arg, command, int_at_least, padding_arg, positive_int


def _fmt_time_col(seconds: float) -> str:
    """:func:`~structops.apps.benchtools.format_time` right-aligned for the demo's table."""
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
    arg("--channels", type=positive_int, default=16,
        help="input and output channels (default 16)"),
    arg("--size", type=int_at_least(1, at_most=2**20), default=64,
        help="image side, the input is SIZE x SIZE (default 64)"),
    arg("--kernel-size", type=positive_int, default=3, help="kernel side (default 3)"),
    arg(
        "--padding",
        type=padding_arg,
        default="same",
        help="same, valid, full, circular or an integer (default same)",
    ),
    arg("--seed", type=int_at_least(0), default=0, help="seed of the random kernel and inputs (default 0)"),
    arg("--batch", type=positive_int, default=1,
        help="images per product in the timing (default 1)"),
    arg("--repeat", type=positive_int, default=5,
        help="timed repetitions, median reported (default 5)"),
)
def demo(args) -> int:
    import numpy as np

    import structops
    from .benchtools import median_time, pylops_conv2d_block
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

"""``structops spectrum``: sigma_max, sigma_min and the condition number of a Conv2D layer, and a PNG of its spectrum."""

from __future__ import annotations

import time

from .args import CommandError, arg, command, int_at_least, output_file, padding_arg, positive_int



def _how(info) -> str:
    """The methods and reductions of a certificate, in a few words."""
    methods = sorted({m for m, _ in info.methods})
    red = f"; reduced: {', '.join(info.reductions)}" if info.reductions else ""
    return ", ".join(methods) + red


@command(
    "spectrum",
    "singular values of a Conv2D layer: sigma_max, sigma_min, condition number and a PNG of the spectrum",
    arg("--c-in", type=positive_int, default=16, help="input channels (default 16)"),
    arg("--c-out", type=positive_int, default=16, help="output channels (default 16)"),
    arg("--size", type=int_at_least(1, at_most=2**20), default=32, help="image side, the input is SIZE x SIZE (default 32)"),
    arg("--kernel-size", type=positive_int, default=3, help="kernel side (default 3)"),
    arg("--padding", type=padding_arg, default="same", help="same, valid, full, circular or an integer (default same)"),
    arg("--stride", type=positive_int, default=1, help="stride (default 1)"),
    arg("--seed", type=int_at_least(0), default=0, help="seed of the random normal kernel (default 0)"),
    arg("--kernel", metavar="FILE.npy", default=None,
        help="kernel of shape (c_out, c_in, kh, kw) from a .npy file, instead of a random one"),
    arg("--out", metavar="FILE.png", type=output_file, default="spectrum.png", help="where to write the plot (default spectrum.png)"),
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

    s_max, info_max = structops.singular_values(op, k=1, return_info=True)
    smax = float(s_max[0])
    try:
        s_min, info_min = structops.singular_values(op, k=1, which="smallest", return_info=True)
        smin = float(s_min[0])
        bound, note = "", f"   +- {info_min.error_bound:.1e}, {_how(info_min)}"
        t_min = info_min.seconds
    except structops.SpectrumNotConvergedError as exc:
        # the computed value is an upper bound of sigma_min that could not be certified
        smin = float(np.asarray(exc.values)[-1])
        bound, note, t_min = "<= ", f"   (not certified: {exc})", float("nan")
    cnd = smax / smin if smin > 0 else float("inf")
    print(f"  sigma_max      : {smax:.10g}   ({info_max.seconds:.2f} s)   +- {info_max.error_bound:.1e}, "
          f"{_how(info_max)}")
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
        # the circular layer has an exact per-frequency spectrum when the kernel is odd and the stride divides n
        exact_circular = kh % 2 and kw % 2 and n % args.stride == 0 and max(kh, kw) <= n
        circ = structops.Conv2D(kernel, (n, n), stride=args.stride, padding="circular") if exact_circular else None
        if circ is None:
            print("  plot           : skipped (no full spectrum for this layer, and no exact circular surrogate: "
                  "it needs an odd kernel and a stride that divides the image size)")
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

"""Multi-channel 2-D convolution layers: structops vs PyLops vs PyTorch (vs cuDNN).

Run from the repository root::

    python benchmarks/bench_conv.py            # full run
    python benchmarks/bench_conv.py --quick    # fewer repetitions

All implementations run side by side in one process. Before anything is timed,
each competitor's output is compared with structops' output on the same input
(relative 2-norm difference); a mismatch is reported and makes the script exit
with status 1. Times are medians of ``--repeat`` runs after ``--warmup`` runs,
measured with ``time.perf_counter``; the implementations of one case are timed
in turn, round after round, each round in a random order, so that a drift of the
machine reaches them alike (calls under 10 ms are repeated within a sample,
their mean the sample). A case whose calls all take under a millisecond (one
image in float32) is timed one call at a time instead, over as many rounds as
fill about ``0.15 * repeat`` seconds: on this shared 2-core machine a sample of
10 ms in a row caught the machine's slow spells for one implementation and not
the next, and the one-image float32 forward ratio spread from 0.84x to 0.94x
over four runs of samples, 0.91x to 0.92x over the same four call by call
(adjoint 0.96x to 1.05x and 1.07x to 1.09x). The ratio column is
``time(implementation) / time(structops)`` for the same case and operation:
above 1 means structops is faster.

Sections
--------
(a) 16 -> 16 channels, 3x3 kernel, 'same' padding, 64x64 image, float64, one
    image: forward and adjoint of structops ``Conv2D``, of the ``pylops.Block``
    of 256 ``Convolve2D(method="fft")`` a PyLops user would write, and of
    ``torch.nn.functional.conv2d`` / ``conv_transpose2d`` (CPU).
(b) the same on a batch of 32 images (structops ``matmat`` on ``(N, 32)``,
    the PyLops block's ``matmat``, torch with batch 32).
(c) float32: structops vs torch, one image and a batch of 32.
(e) depthwise 256 channels (``groups=256``), 3x3, 56x56: structops grouped (on
    ``structops.get_threads()`` threads, and on one) vs the same layer with a
    dense ``(256, 256)`` channel kernel vs torch ``groups=256``.
(f) the kernel Jacobian of the depthwise layer of (e) at a batch of 8:
    ``J dK`` (the layer with the kernel ``dK``, applied to the batch) and the
    weight gradient ``J^T W``, structops ``Conv2D.jacobian(X)`` vs torch
    ``conv2d(groups=256)`` and ``torch.nn.grad.conv2d_weight``.
(d) GPU, when CuPy and a CUDA build of torch see a device: 64 -> 64 channels,
    3x3, 64x64, batch 64, float32 and float64, structops on CuPy arrays vs
    cuDNN ``conv2d`` / ``conv_transpose2d``.

Large outputs (the depthwise batch: 25 MB an array) cost page faults when the
allocator hands out fresh memory for them, and glibc does or does not, after
its own history in the process (its mmap and trim thresholds adapt): torch's
depthwise product measured 5 to 8 ms with reused memory and 28 to 38 ms with
fresh pages, in the same run of this script. ``--steady-malloc`` (glibc only)
keeps freed memory in the process for every implementation alike, the steady
state of a long-running solver.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import pylops
import scipy

import structops
from structops.apps.benchtools import format_time, median_time, median_times, pylops_conv2d_block

ROWS: list = []
FAILURES: list = []
# a case whose calls all take less than this is timed call by call (see above)
CALL_BY_CALL_BELOW = 1e-3


# ---------------------------------------------------------------- helpers
def rel_diff(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(float).tiny))


def agree(case: str, what: str, got, want, dtype) -> bool:
    """Compare ``got`` (a competitor) with ``want`` (structops) before timing."""
    tol = 1e-10 if np.dtype(dtype) == np.float64 else 1e-4
    err = rel_diff(got, want)
    if not err <= tol:
        FAILURES.append(f"{case} / {what}: relative difference {err:.2e} > {tol:.0e}")
        print(f"  MISMATCH {case} / {what}: relative difference {err:.2e} (tolerance {tol:.0e})")
        return False
    return True


def record(case: str, op: str, impl: str, t: float, err: float | None = None):
    ROWS.append({"case": case, "op": op, "impl": impl, "t": t, "err": err})


def print_table():
    header = ("case", "operation", "implementation", "median", "ratio", "rel. diff")
    lines = []
    base = {}
    reference = ("structops Conv2D", "structops Conv2D (CuPy)", "structops Conv2D.jacobian")
    for r in ROWS:
        if r["impl"] in reference:
            base[(r["case"], r["op"])] = r["t"]
    for r in ROWS:
        b = base.get((r["case"], r["op"]))
        ratio = "-" if b is None or r["t"] != r["t"] else f"{r['t'] / b:.2f}x"
        err = "(reference)" if r["impl"] in reference else (
            "-" if r["err"] is None else f"{r['err']:.1e}"
        )
        lines.append((r["case"], r["op"], r["impl"], format_time(r["t"]), ratio, err))
    widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(header)]
    sep = "  "
    print(sep.join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    print(sep.join("-" * w for w in widths))
    prev = None
    for row in lines:
        if prev is not None and row[0] != prev:
            print()
        prev = row[0]
        cells = (v.rjust(w) if i in (3, 4) else v.ljust(w)
                 for i, (v, w) in enumerate(zip(row, widths)))
        print(sep.join(cells).rstrip())
    print("\nratio = time / time(structops) for the same case and operation "
          "(> 1: structops is faster);")
    print("rel. diff = ||result - structops result|| / ||structops result||, "
          "checked before timing.")


def steady_malloc():
    """glibc's ``mallopt``: large blocks from the heap, never trimmed, so freed memory is reused without page faults."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 1 << 30) and libc.mallopt(-1, (1 << 31) - 1)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        ok = False
    print("malloc: freed memory kept in the process (--steady-malloc)" if ok
          else "malloc: --steady-malloc needs glibc; allocator left as it is")


def environment(torch):
    print("environment")
    print(f"  python      {platform.python_version()} ({platform.machine()}, {platform.system()})")
    print(f"  structops   {structops.__version__} (threads over blocks of groups: {structops.get_threads()})")
    print(f"  numpy       {np.__version__}")
    print(f"  scipy       {scipy.__version__}")
    print(f"  pylops      {pylops.__version__}")
    if torch is not None:
        print(f"  torch       {torch.__version__} (intra-op threads: {torch.get_num_threads()})")
    else:
        print("  torch       not installed: torch rows skipped")
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        print("  BLAS        threadpoolctl not installed: thread counts not shown")
    else:
        for info in threadpool_info():
            print(
                f"  {info.get('user_api', '?'):<11} {info.get('internal_api', '?')} "
                f"{info.get('version', '')} threads={info.get('num_threads', '?')} "
                f"({info.get('prefix', '')})"
            )
    print()


# ---------------------------------------------------------------- sections
def case_times(funcs, repeat: int, warmup: int) -> list:
    """Median times of one case's functions: :func:`median_times`, call by call where every call is short."""
    once = median_times(funcs, 1, warmup, min_sample=0)
    if max(once) < CALL_BY_CALL_BELOW:
        rounds = int(np.clip(0.15 * repeat / max(sum(once), 1e-9), repeat, 20000))
        return median_times(funcs, rounds, 0, min_sample=0)
    return median_times(funcs, repeat, warmup)


def cpu_case(case, kernel, n, batch, repeat, warmup, torch, with_pylops, rng, groups=1):
    """Forward and adjoint of one layer on the CPU, every implementation.

    With ``groups > 1`` the layer is also timed as the same layer written with a
    dense ``(c_out, c_in)`` kernel (zeros outside the groups' blocks).
    """
    dtype = kernel.dtype
    c_out, c_in, kh, kw = kernel.shape
    c_in *= groups
    op = structops.Conv2D(kernel, (n, n), padding="same", groups=groups)
    N, M = op.shape[1], op.shape[0]
    if batch == 1:
        x = rng.standard_normal(N).astype(dtype)
        y = rng.standard_normal(M).astype(dtype)
        fwd, adj = (lambda: op.matvec(x)), (lambda: op.rmatvec(y))
    else:
        x = rng.standard_normal((N, batch)).astype(dtype)
        y = rng.standard_normal((M, batch)).astype(dtype)
        fwd, adj = (lambda: op.matmat(x)), (lambda: op.rmatmat(y))
    want_f, want_a = fwd(), adj()
    if want_f.dtype != dtype:
        FAILURES.append(f"{case}: structops returned {want_f.dtype} for {dtype} input")
    # (operation, implementation, function, relative difference): checked first, then timed in turn
    timed = [("forward", "structops Conv2D", fwd, None), ("adjoint", "structops Conv2D", adj, None)]

    def check(name, what, f, want):
        got = f()
        if agree(case, f"{name} {what}", got, want, dtype):
            timed.append((what, name, f, rel_diff(got, want)))
        else:
            record(case, what, name, float("nan"), rel_diff(got, want))

    if groups > 1:
        full = np.zeros((c_out, c_in, kh, kw), dtype=dtype)
        cog, cig = c_out // groups, c_in // groups
        for j in range(groups):
            full[j * cog:(j + 1) * cog, j * cig:(j + 1) * cig] = kernel[j * cog:(j + 1) * cog]
        opf = structops.Conv2D(full, (n, n), padding="same")
        if batch == 1:
            ff, fa = (lambda: opf.matvec(x)), (lambda: opf.rmatvec(y))
        else:
            ff, fa = (lambda: opf.matmat(x)), (lambda: opf.rmatmat(y))
        check("structops Conv2D, dense-channel kernel", "forward", ff, want_f)
        check("structops Conv2D, dense-channel kernel", "adjoint", fa, want_a)

        def one_thread(f):  # the grouped layer with its blocks of groups on the calling thread only
            def g():
                old = structops.set_threads(1)
                try:
                    return f()
                finally:
                    structops.set_threads(old)
            return g

        check("structops Conv2D, one thread", "forward", one_thread(fwd), want_f)
        check("structops Conv2D, one thread", "adjoint", one_thread(adj), want_a)

    if with_pylops:
        P = pylops_conv2d_block(kernel, (n, n))
        if batch == 1:
            pf, pa = (lambda: P.matvec(x)), (lambda: P.rmatvec(y))
        else:
            pf, pa = (lambda: P.matmat(x)), (lambda: P.rmatmat(y))
        check(f"PyLops Block({c_out * c_in} Convolve2D)", "forward", pf, want_f)
        check(f"PyLops Block({c_out * c_in} Convolve2D)", "adjoint", pa, want_a)

    if torch is not None:
        F = torch.nn.functional
        w = torch.from_numpy(np.ascontiguousarray(kernel))
        pad = ((kh - 1) // 2, (kw - 1) // 2)
        # torch is batch-first (B, C, H, W); structops stores one image per column.
        # The layout change is done once, outside the timed region.
        xt = torch.from_numpy(
            np.ascontiguousarray(x.reshape(N, batch).T.reshape(batch, c_in, n, n))
        )
        yt = torch.from_numpy(
            np.ascontiguousarray(y.reshape(M, batch).T.reshape(batch, c_out, n, n))
        )

        def back(f, rows):
            def g():
                out = f().numpy().reshape(batch, rows).T
                return out.reshape((rows,) if batch == 1 else (rows, batch))
            return g

        tf = lambda: F.conv2d(xt, w, padding=pad, groups=groups)  # noqa: E731
        ta = lambda: F.conv_transpose2d(yt, w, padding=pad, groups=groups)  # noqa: E731
        # tensors made from NumPy record no gradients: no inference_mode needed, for torch as for structops
        for what, f, g, want in (("forward", tf, back(tf, M), want_f), ("adjoint", ta, back(ta, N), want_a)):
            name = "torch conv2d (CPU)" if what == "forward" else "torch conv_transpose2d (CPU)"
            before = len(timed)
            check(name, what, g, want)
            if len(timed) > before:  # time torch's call itself, not the check's layout change
                timed[-1] = (what, name, f, timed[-1][3])
    ts = case_times([f for _, _, f, _ in timed], repeat, warmup)
    for (what, name, _, err), t in zip(timed, ts):
        record(case, what, name, t, err)


def jacobian_case(case, kernel, n, batch, repeat, warmup, torch, rng, groups):
    """The kernel Jacobian of a grouped layer at a batch: ``J dK`` and ``J^T W`` against torch."""
    dtype = kernel.dtype
    c_out = kernel.shape[0]
    c_in = kernel.shape[1] * groups
    op = structops.Conv2D(kernel, (n, n), padding="same", groups=groups)
    X = rng.standard_normal((op.shape[1], batch)).astype(dtype)
    J = op.jacobian(X)
    dK = rng.standard_normal(kernel.size).astype(dtype)
    W = rng.standard_normal(J.shape[0]).astype(dtype)
    fwd, adj = (lambda: J.matvec(dK)), (lambda: J.rmatvec(W))
    want_f, want_a = fwd(), adj()
    timed = [("J dK", "structops Conv2D.jacobian", fwd, None), ("J^T W", "structops Conv2D.jacobian", adj, None)]
    if torch is not None:
        F = torch.nn.functional
        kh, kw = kernel.shape[2:]
        pad = ((kh - 1) // 2, (kw - 1) // 2)
        xt = torch.from_numpy(np.ascontiguousarray(X.T.reshape(batch, c_in, n, n)))
        dKt = torch.from_numpy(dK.reshape(kernel.shape))
        # structops' outputs are (c_out * n * n, batch) columns flattened: W as torch's (batch, c_out, n, n)
        Wt = torch.from_numpy(np.ascontiguousarray(W.reshape(c_out * n * n, batch).T.reshape(batch, c_out, n, n)))
        tf = lambda: F.conv2d(xt, dKt, padding=pad, groups=groups)  # noqa: E731
        ta = lambda: torch.nn.grad.conv2d_weight(xt, kernel.shape, Wt, padding=pad, groups=groups)  # noqa: E731
        got_f = tf().numpy().reshape(batch, -1).T.reshape(-1)
        got_a = ta().numpy().reshape(-1)
        for what, name, f, got, want in (("J dK", "torch conv2d (CPU)", tf, got_f, want_f),
                                         ("J^T W", "torch grad.conv2d_weight (CPU)", ta, got_a, want_a)):
            if agree(case, f"{name} {what}", got, want, dtype):
                timed.append((what, name, f, rel_diff(got, want)))
            else:
                record(case, what, name, float("nan"), rel_diff(got, want))
    ts = median_times([f for _, _, f, _ in timed], repeat, warmup)
    for (what, name, _, err), t in zip(timed, ts):
        record(case, what, name, t, err)


def gpu_case(case, dtype, c, n, batch, repeat, warmup, torch):
    import cupy as cp

    rng = np.random.default_rng(3)
    kernel = (rng.standard_normal((c, c, 3, 3)) / (3 * np.sqrt(c))).astype(dtype)
    op = structops.Conv2D(cp.asarray(kernel), (n, n), padding="same")
    N, M = op.shape[1], op.shape[0]
    x = cp.asarray(rng.standard_normal((N, batch)).astype(dtype))
    y = cp.asarray(rng.standard_normal((M, batch)).astype(dtype))
    sync_cp = cp.cuda.Device().synchronize
    fwd, adj = (lambda: op.matmat(x)), (lambda: op.rmatmat(y))
    want_f, want_a = cp.asnumpy(fwd()), cp.asnumpy(adj())
    record(case, "forward", "structops Conv2D (CuPy)", median_time(fwd, repeat, warmup, sync_cp))
    record(case, "adjoint", "structops Conv2D (CuPy)", median_time(adj, repeat, warmup, sync_cp))

    F = torch.nn.functional
    dev = torch.device("cuda")
    w = torch.from_numpy(kernel).to(dev)
    xt = torch.from_numpy(np.ascontiguousarray(cp.asnumpy(x).T.reshape(batch, c, n, n))).to(dev)
    yt = torch.from_numpy(np.ascontiguousarray(cp.asnumpy(y).T.reshape(batch, c, n, n))).to(dev)
    with torch.inference_mode():
        tf = lambda: F.conv2d(xt, w, padding=1)  # noqa: E731
        ta = lambda: F.conv_transpose2d(yt, w, padding=1)  # noqa: E731
        for what, f, want, rows, tname in (
            ("forward", tf, want_f, M, "cuDNN conv2d"),
            ("adjoint", ta, want_a, N, "cuDNN conv_transpose2d"),
        ):
            got = f().cpu().numpy().reshape(batch, rows).T
            ok = agree(case, tname, got, want, dtype)
            t = median_time(f, repeat, warmup, torch.cuda.synchronize) if ok else float("nan")
            record(case, what, tname, t, rel_diff(got, want))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 repetitions instead of 7 (a rough run)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs before timing (default 1)")
    parser.add_argument("--no-pylops", action="store_true", help="skip the (slow) PyLops rows")
    parser.add_argument("--steady-malloc", action="store_true",
                        help="glibc: keep freed memory in the process (no page faults on fresh arrays; see above)")
    args = parser.parse_args(argv)
    if args.steady_malloc:
        steady_malloc()
    repeat = args.repeat or (3 if args.quick else 7)

    try:
        import torch
    except ImportError:
        torch = None
    environment(torch)

    rng = np.random.default_rng(0)
    c, n, k = 16, 64, 3
    kernel64 = rng.standard_normal((c, c, k, k)) / (k * np.sqrt(c))
    kernel32 = kernel64.astype(np.float32)
    print(f"layer: {c} -> {c} channels, {k}x{k} kernel, 'same' padding, {n}x{n} images; "
          f"median of {repeat} after {args.warmup} warm-up run(s)\n")

    t0 = time.perf_counter()
    pyl = not args.no_pylops
    cpu_case("(a) float64, 1 image", kernel64, n, 1, repeat, args.warmup, torch, pyl, rng)
    cpu_case("(b) float64, batch 32", kernel64, n, 32, repeat, args.warmup, torch, pyl, rng)
    cpu_case("(c) float32, 1 image", kernel32, n, 1, repeat, args.warmup, torch, False, rng)
    cpu_case("(c) float32, batch 32", kernel32, n, 32, repeat, args.warmup, torch, False, rng)
    dw = (rng.standard_normal((256, 1, 3, 3)) * np.sqrt(2 / 9))
    cpu_case("(e) depthwise 256 ch 56x56, float64", dw, 56, 1, repeat, args.warmup, torch, False, rng, groups=256)
    cpu_case("(e) depthwise 256 ch 56x56, float32, batch 8", dw.astype(np.float32), 56, 8, repeat, args.warmup,
             torch, False, rng, groups=256)
    for dt in (np.float64, np.float32):
        jacobian_case(f"(f) depthwise kernel Jacobian, {np.dtype(dt).name}, batch 8", dw.astype(dt), 56, 8, repeat,
                      args.warmup, torch, rng, groups=256)

    gpu = structops.cupy_available() and torch is not None and torch.cuda.is_available()
    if gpu:
        torch.backends.cudnn.benchmark = False
        # true float32 arithmetic in cuDNN (no TF32), as in the CPU rows
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        print(f"GPU: {torch.cuda.get_device_name(0)}, cuDNN {torch.backends.cudnn.version()}")
        for dt in (np.float32, np.float64):
            name = np.dtype(dt).name
            gpu_case(f"(d) GPU {name}, 64 ch, batch 64", dt, 64, 64, 64, max(repeat, 10), 3, torch)
    else:
        why = "CuPy sees no CUDA device" if not structops.cupy_available() else "torch has no CUDA"
        print(f"(d) GPU section skipped: {why}")
    print(f"\n(total benchmark time {time.perf_counter() - t0:.1f} s)\n")

    print_table()
    if FAILURES:
        print("\nFAILED agreement checks:")
        for f in FAILURES:
            print("  " + f)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The spectrum of every layer of a PyTorch network: ``layer_spectra`` and its report.

The model is run once on a zero batch with forward hooks on its leaf
``nn.Conv*d``, ``nn.ConvTranspose*d`` and ``nn.Linear`` modules, so every
layer sees the input shape torch gives it (residual and branching
architectures included). Each layer becomes its structops operator
(:func:`~structops.interop.pytorch.layer_operator`) and gets

* ``sigma_max``, certified (:func:`structops.singular_values`);
* ``sigma_min`` and ``cond``, certified when the layer has at most
  ``smallest_limit`` unknowns (or its exact reductions leave distinct blocks
  with at most 4096 values in all: 1x1 and strided shortcuts), otherwise the certified upper bound
  ``sigma_min <= ||A v||`` at the circular layer's smallest right singular
  vector ``v`` (``||A^H u||`` at its left one for wide layers; so
  ``cond >= sigma_max / ||A v||``), with the reason; a certified ``sigma_min``
  within its error bound ``e`` of zero (a layer singular to working
  precision) leaves ``cond >= (sigma_max - e_max) / (sigma_min + e)`` only;
* the circular layer's extreme values beside them (same kernel, periodic
  padding, exact per-frequency spectrum), where it exists.

The product of the layers' ``sigma_max`` bounds the Lipschitz constant of a
chain of these layers with 1-Lipschitz activations; it is not a bound for
residual connections (a block ``x + f(x)`` has ``1 + Lip(f)``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import time

import numpy as np

__all__ = ["LayerReport", "NetworkReport", "layer_spectra"]


@dataclasses.dataclass
class LayerReport:
    """One layer's row of the report (see :func:`layer_spectra`)."""

    name: str
    kind: str
    in_shape: tuple
    out_shape: tuple
    kernel: tuple
    stride: tuple
    padding: str
    groups: int
    sigma_max: float
    sigma_max_error: float
    sigma_min: float
    sigma_min_error: float
    sigma_min_status: str  # "certified" or "upper bound: <why>"
    cond: float
    cond_status: str  # "certified" or "lower bound"
    circular_sigma_max: float
    circular_sigma_min: float
    seconds: float
    seconds_sigma_max: float
    methods: str


@dataclasses.dataclass
class NetworkReport:
    """Every layer's :class:`LayerReport` and the product of their norms."""

    input_shape: tuple
    layers: list
    seconds: float

    @property
    def lipschitz_bound(self) -> float:
        """``prod sigma_max``: a Lipschitz bound of the chain of layers (not of residual connections)."""
        return float(np.prod([r.sigma_max for r in self.layers])) if self.layers else 1.0

    def to_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "seconds": self.seconds,
                "lipschitz_bound_product_of_norms": self.lipschitz_bound,
                "layers": [_jsonable(dataclasses.asdict(r)) for r in self.layers]}

    def write_json(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    def write_csv(self, path):
        fields = [f.name for f in dataclasses.fields(LayerReport)]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in self.layers:
                w.writerow({k: (" x ".join(map(str, v)) if isinstance(v, tuple) else v)
                            for k, v in dataclasses.asdict(r).items()})

    def table(self) -> str:
        """The report as a fixed-width text table."""
        head = (f"{'layer':<28} {'kind':<16} {'in':>14} {'k/s/g':>11} {'sigma_max':>11} {'sigma_min':>11} "
                f"{'cond':>10} {'circ max':>9} {'circ min':>9} {'s':>6}")
        lines = [head, "-" * len(head)]
        for r in self.layers:
            ks = f"{'x'.join(map(str, r.kernel))}/{max(r.stride) if r.stride else 1}/{r.groups}"
            smin = f"{r.sigma_min:.4e}" if r.sigma_min_status == "certified" else f"<={r.sigma_min:.3e}"
            cnd = f"{r.cond:.3e}" if r.cond_status == "certified" else f">={r.cond:.2e}"
            lines.append(
                f"{r.name[:28]:<28} {r.kind[:16]:<16} {'x'.join(map(str, r.in_shape)):>14} {ks:>11} "
                f"{r.sigma_max:>11.6g} {smin:>11} {cnd:>10} {_fmt(r.circular_sigma_max):>9} "
                f"{_fmt(r.circular_sigma_min):>9} {r.seconds:>6.2f}"
            )
        lines.append(f"product of the layers' sigma_max (Lipschitz bound of the chain): {self.lipschitz_bound:.6g}")
        lines.append(f"time: sigma_max of every layer {sum(r.seconds_sigma_max for r in self.layers):.1f} s, "
                     f"the whole report {self.seconds:.1f} s")
        return "\n".join(lines)

    def plot(self, path):
        """Per-layer sigma_max, sigma_min (bounds hollow) and cond on a log scale, as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = np.arange(len(self.layers))
        fig, (a, b) = plt.subplots(2, 1, figsize=(max(6, 0.35 * len(x) + 2), 6), sharex=True)
        smax = [r.sigma_max for r in self.layers]
        a.semilogy(x, smax, "o-", label="sigma_max")
        cert = [i for i, r in enumerate(self.layers) if r.sigma_min_status == "certified"]
        bnd = [i for i, r in enumerate(self.layers) if r.sigma_min_status != "certified"]
        smin = np.array([r.sigma_min if r.sigma_min > 0 else np.nan for r in self.layers])
        if cert:
            a.semilogy(cert, smin[cert], "s", label="sigma_min (certified)")
        if bnd:
            a.semilogy(bnd, smin[bnd], "s", mfc="none", label="sigma_min upper bound")
        zero = [i for i, r in enumerate(self.layers) if r.sigma_min == 0]
        if zero:  # exactly singular layers: on the bottom edge
            floor = np.nanmin(smin) if np.isfinite(smin).any() else min(smax)
            a.semilogy(zero, [floor] * len(zero), "kx", label="sigma_min = 0")
        a.legend(fontsize=8)
        a.set_ylabel("singular value")
        cond = np.array([r.cond if math.isfinite(r.cond) else np.nan for r in self.layers])
        b.semilogy(x, cond, "-", color="0.6", lw=0.8)
        lower = np.array([r.cond_status != "certified" for r in self.layers])
        if (~lower).any():
            b.semilogy(x[~lower], cond[~lower], "d", color="C0", label="cond (certified)")
        if lower.any():
            b.semilogy(x[lower], cond[lower], "d", color="C0", mfc="none", label="cond lower bound")
        inf = [i for i, r in enumerate(self.layers) if not math.isfinite(r.cond)]
        if inf:  # exactly singular layers: marked on the top edge
            b.plot(inf, [np.nanmax(cond) if np.isfinite(cond).any() else 1.0] * len(inf), "kx", label="cond = inf")
        b.legend(fontsize=8)
        b.set_ylabel("condition number")
        b.set_xticks(x)
        b.set_xticklabels([r.name for r in self.layers], rotation=90, fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _fmt(v):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _jsonable(d):
    out = {}
    for k, v in d.items():
        if isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, float) and not math.isfinite(v):
            v = str(v)
        out[k] = v
    return out


def _hooked_layers(model, input_shape):
    """``[(name, module, input shape)]`` of the leaf conv / linear modules, in call order."""
    import torch

    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d,
             torch.nn.ConvTranspose3d, torch.nn.Linear)
    found, handles = [], []
    for name, m in model.named_modules():
        if isinstance(m, kinds):
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: found.append((name, mod, tuple(inp[0].shape[1:])))))
    try:
        p = next(model.parameters(), None)
        dt = p.dtype if p is not None else torch.float64
        dev = p.device if p is not None else "cpu"
        with torch.no_grad():
            model(torch.zeros((2,) + tuple(input_shape), dtype=dt, device=dev))
    finally:
        for h in handles:
            h.remove()
    return found


def _circular_surrogate(op):
    """The layer with periodic padding on the same grid, or None."""
    from ..operators import ConvND

    if not isinstance(op, ConvND) or op.circular:
        return None
    try:
        return ConvND(op.kernel, op.in_shape, stride=op.stride, padding="circular", dilation=op.dilation,
                      groups=op.groups)
    except ValueError:
        return None


def _reduces_to_small_blocks(op, limit: int = 4096) -> bool:
    """Whether the exact reductions leave distinct blocks with at most ``limit`` values in all (a cheap sigma_min)."""
    from ..linalg.structure import reduce_layer
    from ..operators import ConvND

    if not isinstance(op, ConvND):
        return False
    red = reduce_layer(op)
    return red is not None and sum(min(b.shape) for b, _ in red.blocks) <= limit


def layer_spectra(model, input_shape, *, smallest_limit: int = 20000, tol=None, progress: bool = True,
                  file=None) -> NetworkReport:
    """Certified extreme singular values of every conv / linear layer of a PyTorch model.

    Parameters
    ----------
    model : torch.nn.Module
    input_shape : tuple of int
        One sample without the batch axis, e.g. ``(3, 224, 224)``.
    smallest_limit : int
        Layers with at most this many unknowns (``min(M, N)``) get a
        certified ``sigma_min``; larger ones the certified upper bound of
        the module notes (0: bounds only).
    tol : float, optional
        As in :func:`structops.singular_values`.
    progress : bool
        A progress line per layer on ``file`` (default stderr).

    Returns
    -------
    NetworkReport
    """
    import structops

    from ..linalg import SpectrumNotConvergedError
    from .pytorch import layer_operator

    file = sys.stderr if file is None else file
    t_all = time.perf_counter()
    layers = _hooked_layers(model, input_shape)
    rows = []
    for j, (name, module, shape) in enumerate(layers):
        t0 = time.perf_counter()
        if progress:
            print(f"\r[{j + 1}/{len(layers)}] {name:<40}", end="", file=file, flush=True)
        op, out = layer_operator(module, shape)
        s, info = structops.singular_values(op, k=1, tol=tol, return_info=True)
        smax, smax_err = float(s[0]), float(info.error_bound)
        t_smax = time.perf_counter() - t0
        methods = {m for m, _ in info.methods}
        circ = _circular_surrogate(op)
        cmax = cmin = float("nan")
        if circ is not None:
            cs = structops.singular_values(circ)
            cmax, cmin = float(cs[0]), float(cs[-1])
        n_small = min(op.shape)
        status, smin, smin_err = None, float("nan"), float("inf")
        if n_small <= smallest_limit or _reduces_to_small_blocks(op):
            try:
                s2, info2 = structops.singular_values(op, k=1, which="smallest", tol=tol, return_info=True)
                smin, smin_err, status = float(s2[0]), float(info2.error_bound), "certified"
                methods |= {m for m, _ in info2.methods}
            except (SpectrumNotConvergedError, NotImplementedError) as exc:
                status = f"upper bound: {str(exc).splitlines()[0][:80]}"
        else:
            status = f"upper bound: {n_small} unknowns > smallest_limit={smallest_limit}"
        if status != "certified":
            # sigma_min <= ||A v|| for any unit v when N <= M (||A^H u|| for unit u when M < N):
            # the circular layer's smallest singular vectors
            tall = op.shape[1] <= op.shape[0]
            w = None
            if circ is not None and circ.shape == op.shape:
                try:
                    _, U, V = structops.singular_vectors(circ, k=1, which="smallest")
                    w = np.asarray((V if tall else U)[:, 0])
                except (SpectrumNotConvergedError, NotImplementedError):
                    w = None
            if w is None:
                w = np.random.default_rng(0).standard_normal(op.shape[1] if tall else op.shape[0])
                w /= np.linalg.norm(w)
            smin, smin_err = float(np.linalg.norm(op @ w if tall else op.H @ w)), 0.0
        cond = smax / smin if smin > 0 else math.inf
        cond_status = "certified" if status == "certified" else "lower bound"
        if status == "certified" and smax > 0 and 0 < smin_err and smin <= smin_err:
            # sigma_min within its error bound of zero (singular to working precision): only a lower bound
            cond, cond_status = max(smax - smax_err, 0.0) / (smin + smin_err), "lower bound"
        rows.append(LayerReport(
            name=name, kind=type(module).__name__, in_shape=tuple(shape), out_shape=tuple(out),
            kernel=tuple(getattr(module, "kernel_size", ())), stride=tuple(getattr(module, "stride", ())),
            padding=str(getattr(module, "padding", "")) + (f" {module.padding_mode}" if hasattr(module, "padding_mode")
                                                          else ""),
            groups=int(getattr(module, "groups", 1)), sigma_max=smax, sigma_max_error=smax_err, sigma_min=smin,
            sigma_min_error=smin_err, sigma_min_status=status,
            cond=cond, cond_status=cond_status,
            circular_sigma_max=cmax, circular_sigma_min=cmin, seconds=time.perf_counter() - t0, seconds_sigma_max=t_smax,
            methods=", ".join(sorted(methods)),
        ))
    if progress and layers:
        print(file=file)
    return NetworkReport(input_shape=tuple(input_shape), layers=rows, seconds=time.perf_counter() - t_all)

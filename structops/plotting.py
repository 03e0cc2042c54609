"""Every figure of structops, drawn on a :class:`matplotlib.figure.Figure` with an Agg canvas.

No function here touches pyplot's global state, so figures can be made from
threads, worker processes and servers without a display.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ._backend import to_numpy

__all__ = ["new_figure", "save", "plot_spectrum", "plot_regularization", "plot_landscapes", "plot_trajectories"]


def new_figure(size):
    """A matplotlib ``Figure`` of ``size`` inches with its own Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def save(fig, path, dpi: int = 100) -> None:
    """Write ``fig`` to ``path`` as PNG."""
    fig.savefig(os.fspath(path), format="png", dpi=dpi)


def plot_spectrum(s_or_op, path, *, bins=50, title=None, logy=True, marks=None, **kwargs):
    """Histogram and sorted plot of a spectrum, written to a PNG file.

    Parameters
    ----------
    s_or_op : array_like or operator
        Singular values, or an operator whose full spectrum
        :func:`singular_values` computes (``kwargs`` are passed on).
    path : str or path-like
        Output file (PNG).
    bins : int
        Histogram bins.
    title : str, optional
    logy : bool
        Logarithmic axis for the sorted values (default).
    marks : dict of str to float, optional
        Reference values drawn as labelled horizontal lines on the sorted
        values (e.g. the exact extremes of a related operator).

    Returns
    -------
    s : ndarray
        The plotted singular values, descending.
    """
    from .linalg.spectra import singular_values

    if isinstance(s_or_op, (list, tuple)) or (isinstance(s_or_op, np.ndarray) and s_or_op.ndim == 1):
        s = np.sort(np.asarray(to_numpy(np.asarray(s_or_op)), dtype=np.float64).reshape(-1))[::-1]
    else:
        s = singular_values(s_or_op, **kwargs)
    if s.size == 0:
        raise ValueError("no singular values to plot")
    fig = new_figure((10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.hist(s, bins=bins, color="C0")
    ax1.set_xlabel("singular value")
    ax1.set_ylabel("count")
    ax1.set_title("histogram")
    pos = s[s > 0]
    ax2.plot(np.arange(1, s.size + 1), s, color="C1")
    if logy and pos.size:
        ax2.set_yscale("log")
        low = min([float(pos.min())] + [float(v) for v in (marks or {}).values() if v > 0])
        ax2.set_ylim(bottom=max(low / 2, float(s[0]) * 1e-17))
    for i, (label, value) in enumerate((marks or {}).items()):
        ax2.axhline(value, color=f"C{i + 2}", linestyle="--", linewidth=1, label=f"{label} = {value:.4g}")
    if marks:
        ax2.legend(fontsize="small")
    ax2.set_xlabel("index")
    ax2.set_ylabel("singular value")
    smin = float(s[-1])
    cnd = math.inf if smin == 0 else float(s[0]) / smin
    ax2.set_title(f"sorted: max {s[0]:.4g}, min {smin:.3g}, cond {cnd:.3g}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save(fig, path, dpi=100)
    return s


def plot_regularization(path, title, runs, iterations):
    """sigma_max and sigma_min against the iteration, one panel per run ``(label, RegularizeResult)``."""
    fig = new_figure((11, 4))
    axes = fig.subplots(1, len(runs))
    for ax, (label, res) in zip(axes, runs):
        h = res.history
        ok = np.isfinite(h["sigma_max"])
        it = h["iteration"][ok]
        ax.plot(it, h["sigma_max"][ok], color="tab:blue", label=r"$\sigma_{max}(M)$")
        ax.set_xlabel("iteration steps")
        ax.set_ylabel(r"$\sigma_{max}(M)$", color="tab:blue")
        ax.set_xlim(0, iterations)
        ax2 = ax.twinx()
        ax2.plot(it, h["sigma_min"][ok], color="tab:red", label=r"$\sigma_{min}(M)$")
        ax2.set_ylabel(r"$\sigma_{min}(M)$", color="tab:red")
        for a in (ax, ax2):
            a.axhline(1.0, color="0.6", lw=0.6, ls=":")
        ax.set_title(f"{label}: final {res.sigma_max:.3f} / {res.sigma_min:.3f}", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path, dpi=110)


def plot_landscapes(path, alphas, betas, pairs, normalized):
    """Contours of the normalised conventional and extended landscapes, one column per direction pair."""
    n = len(pairs)
    fig = new_figure((3.6 * n, 6.6))
    axes = fig.subplots(2, n, squeeze=False)
    A, B = np.meshgrid(alphas, betas, indexing="ij")
    for j, pair in enumerate(pairs):
        for i, key in enumerate(("conventional", "extended")):
            Ln = normalized(pair[key], None)
            ax = axes[i, j]
            cs = ax.contourf(A, B, Ln, levels=20, cmap="jet")
            ax.contour(A, B, Ln, levels=[0.1], colors="w", linewidths=1)
            ax.plot(0, 0, "*", color="darkred", ms=12)
            ax.set_title(f"{key}, pair {j + 1}", fontsize=9)
            ax.set_xlabel(r"$\alpha$")
            ax.set_ylabel(r"$\beta$")
            fig.colorbar(cs, ax=ax, fraction=0.046)
    fig.tight_layout()
    save(fig, path, dpi=110)


def plot_trajectories(path, traj):
    """Normalised training loss against the iteration, one panel per start."""
    starts = list(traj)
    fig = new_figure((4.2 * len(starts), 3.6))
    axes = fig.subplots(1, len(starts), squeeze=False)
    styles = {"conv_adam": ("C0", "-"), "conv_lbfgs": ("C1", "-"), "ext_adam": ("C0", "--"),
              "ext_lbfgs": ("C1", "--")}
    for ax, s in zip(axes[0], starts):
        for key, run in traj[s].items():
            c, ls = styles[key]
            ax.semilogy(np.maximum(run["loss"], 1e-16), color=c, ls=ls, label=key)
        ax.set_title(f"start {s}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("normalised loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path, dpi=110)


def plot_convex_training(path, title, sgd_runs, convex, convex_label="convex optimum (certified)",
                         network_label="recovered ReLU network"):
    """Objective against time: SGD runs ``[(label, [(seconds, objective), ...]), ...]`` and the convex optimum.

    ``convex`` is a dict with ``objective``, ``seconds`` and
    ``nonconvex_objective`` (the recovered network's objective).
    """
    fig = new_figure((6.4, 4.2))
    ax = fig.subplots()
    palette = ["C0", "C1", "C4", "C5", "C6", "C7", "C8", "C9"]  # green and red mark the convex lines
    for i, (label, hist) in enumerate(sgd_runs):
        t, f = np.asarray(hist, dtype=float).T
        color = palette[i % len(palette)]
        ax.plot(t, f, color=color, lw=1.1, label=label)
        ax.plot(t[-1], f[-1], "o", color=color, ms=4)
    ax.axhline(convex["objective"], color="tab:green", lw=1.6, label=convex_label)
    ax.axhline(convex["nonconvex_objective"], color="tab:red", lw=1.0, ls="--", label=network_label)
    ax.plot(convex["seconds"], convex["objective"], "*", color="tab:green", ms=12, label="convex solve done")
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("training objective")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path, dpi=110)

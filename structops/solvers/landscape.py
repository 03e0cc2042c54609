r"""Loss landscapes and training trajectories of conventional vs extended conv networks.

The experiments of Siahkoohi, Louboutin and Herrmann (extended convolutional layers) on their toy network: four
3x3, one-channel, stride-1, ``'same'``-padded convolution layers, each
followed by a sigmoid, on a 16x16 image. A target is simulated from a fixed
input ``z = 0.01 N(0, I)`` and a fixed "global minimum" ``w*``:
``y = G(z; w*)``.

* Landscapes (their equations 9 and 10). With two filter-normalised
  random directions ``delta``, ``eta`` (Li et al., 2018) and
  ``w = w* + alpha delta + beta eta``,

  .. math::

      L(\alpha, \beta) = \tfrac12 \|y - G(z; w)\|^2, \qquad
      L_{ext}(\alpha, \beta) = \min_{\underline w}
      \tfrac12 \|y - G_{ext}(z; \underline w, b)\|^2
      + \tfrac{\lambda^2}{2} \sum_l \|\underline W_l - W_l\|_F^2,

  the inner minimum by L-BFGS (memory 100, 100 iterations) started, as in the
  reference code, from standard normal per-pixel weights at every grid point
  (or, with ``init="primary"``, from the conventional layers, which gives
  ``L_ext <= L``). Both landscapes vanish at ``(0, 0)``. Each is shown
  normalised by its own maximum, ``(L - min L) / max L``, and the low-loss
  basin is where that is below 0.1: its area (:func:`basin_fraction`) and
  the width of the valley around ``w*`` (:func:`basin_radius`).
* Trajectories: from ``(alpha, beta) = (-2, 2), (2, 2), (2, -2)``, 200
  iterations of Adam (lr 0.05) and L-BFGS (memory 100) on ``L`` (conventional)
  and on the reduced objective ``L_ext`` by variable projection
  (:func:`structops.solvers.extended.train_extended`); losses divided by
  their first value.

The command ``structops landscape [--quick] [--out DIR]`` (in
:mod:`structops.apps.landscape`) runs them and writes PNG figures and
``landscape.json``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..nn.extended import ExtendedNetwork, ExtendedSingleLayer
from ..nn.layers import Network
from .extended import adam, data_objective, inner_solve, lbfgs, train_extended

__all__ = [
    "ToyProblem",
    "toy_problem",
    "filter_normalized_direction",
    "landscape_conventional",
    "landscape_extended",
    "trajectory",
    "basin_fraction",
    "basin_radius",
    "basin_measures",
    "normalized_loss",
    "ProgressBar",
    "REFERENCE_TABLE",
]

#: the reference table (final normalised losses read off Figure 4 of Siahkoohi, Louboutin and Herrmann)
REFERENCE_TABLE = {
    "(-2, 2)": {"conv_adam": 5e-3, "conv_lbfgs": 3e-6, "ext_adam": 1.3e-3, "ext_lbfgs": 5e-7},
    "(2, 2)": {"conv_adam": 2.5e-3, "conv_lbfgs": 7e-6, "ext_adam": 3e-3, "ext_lbfgs": 1e-5},
    "(2, -2)": {"conv_adam": 1.4e-2, "conv_lbfgs": 6e-3, "ext_adam": 6.5e-4, "ext_lbfgs": 3e-6},
}


@dataclass(frozen=True)
class ToyProblem:
    """The toy regression problem of Siahkoohi, Louboutin and Herrmann.

    Attributes
    ----------
    ext : ExtendedNetwork
        The extended network; ``ext.conventional()`` is ``conv``.
    conv : Network
        The conventional network (its ``theta`` is ``ext``'s ``primary``).
    w_star : ndarray, shape ``(num_primary,)``
        The artificial global minimum (kernels, biases).
    z : ndarray, shape ``(n_in, 1)``
        The input.
    y : ndarray, shape ``(n_out, 1)``
        ``G(z; w*)``.
    lam : float
        Penalty weight ``lambda``.
    """

    ext: ExtendedNetwork
    conv: Network
    w_star: np.ndarray
    z: np.ndarray
    y: np.ndarray
    lam: float


def toy_problem(n_layers: int = 4, image=(16, 16), kernel_size: int = 3, channels: int = 1,
                lam: float = 0.04, activation="sigmoid", padding="same", seed=0) -> ToyProblem:
    """Build the toy problem: ``n_layers`` conv layers with a sigmoid after each.

    ``w*`` has Glorot-uniform kernels (limit ``sqrt(6 / (fan_in + fan_out))``)
    and zero biases (the deep-learning defaults of the reference code);
    ``z = 0.01 N(0, I)``, ``y = G(z; w*)``.

    Parameters
    ----------
    n_layers : int
    image : tuple of int
        Spatial shape ``(H, W)``.
    kernel_size, channels : int
        Square kernels; the same number of channels in every layer.
    lam : float
    activation : str
    padding : str or int
    seed : int
    """
    rng = np.random.default_rng(seed)
    k = (channels, channels, kernel_size, kernel_size)
    layers = [ExtendedSingleLayer(k, image, activation, True, padding=padding) for _ in range(n_layers)]
    # a 'valid' stack shrinks the image: rebuild with the right input shapes
    if padding != "same":
        layers, shape = [], tuple(image)
        for _ in range(n_layers):
            lay = ExtendedSingleLayer(k, shape, activation, True, padding=padding)
            layers.append(lay)
            shape = lay.model.out_shape
    ext = ExtendedNetwork(layers)
    conv = ext.conventional()
    fan = channels * kernel_size**2
    limit = np.sqrt(6.0 / (2 * fan))
    parts = []
    for lay in ext.layers:
        parts.append(rng.uniform(-limit, limit, lay.num_kernel))
        parts.append(np.zeros(lay.num_primary - lay.num_kernel))
    w_star = np.concatenate(parts)
    z = 0.01 * rng.standard_normal((ext.n_in, 1))
    y = conv(w_star, z)
    return ToyProblem(ext, conv, w_star, z, y, float(lam))


def filter_normalized_direction(ext: ExtendedNetwork, w, rng=None):
    r"""A random direction normalised filter by filter (Li et al., 2018).

    Parameters
    ----------
    ext : ExtendedNetwork
        Gives the layer layout of ``w`` (its ``primary``).
    w : ndarray, shape ``(num_primary,)``
    rng : seed or Generator

    Returns
    -------
    d : ndarray, shape ``(num_primary,)``
        For every layer and output filter ``o``:
        ``d[o] <- d[o] ||w[o]|| / ||d[o]||`` with ``d[o]`` standard normal;
        bias entries zero.
    """
    rng = np.random.default_rng(rng)
    out = []
    for lay, p in zip(ext.layers, ext.split_primary(w)):
        K = p[: lay.num_kernel].reshape(lay.kernel_shape[0], -1)
        D = rng.standard_normal(K.shape)
        nd = np.linalg.norm(D, axis=1, keepdims=True)
        D = D * np.linalg.norm(K, axis=1, keepdims=True) / np.where(nd > 0, nd, 1)
        out.append(D.reshape(-1))
        out.append(np.zeros(lay.num_primary - lay.num_kernel))
    return np.concatenate(out)


class ProgressBar:
    """A text progress bar on a stream (stderr by default).

    Parameters
    ----------
    total : int
    label : str
    stream : file, optional
    width : int
    """

    def __init__(self, total: int, label: str = "", stream=None, width: int = 30):
        self.total, self.label, self.width = max(int(total), 1), label, width
        self.stream = sys.stderr if stream is None else stream
        self.n = 0
        self.t0 = time.perf_counter()

    def update(self, k: int = 1):
        """Advance by ``k`` and redraw."""
        self.n = min(self.n + k, self.total)
        frac = self.n / self.total
        fill = int(round(self.width * frac))
        el = time.perf_counter() - self.t0
        eta = el / frac - el if frac > 0 else 0.0
        self.stream.write(f"\r{self.label:<28s} [{'#' * fill}{'.' * (self.width - fill)}] "
                          f"{self.n}/{self.total} {el:6.1f}s eta {eta:6.1f}s")
        if self.n == self.total:
            self.stream.write("\n")
        self.stream.flush()


def _conv_loss(problem: ToyProblem, w):
    Z = problem.conv(w, problem.z)
    r = Z - problem.y
    return 0.5 * float(np.vdot(r, r))


def landscape_conventional(problem: ToyProblem, d1, d2, alphas, betas, progress=None):
    """Equation 9 on the grid: ``L[i, j] = 0.5 ||y - G(z; w* + alphas[i] d1 + betas[j] d2)||^2``.

    Returns
    -------
    L : ndarray, shape ``(len(alphas), len(betas))``
    """
    L = np.empty((len(alphas), len(betas)))
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            L[i, j] = _conv_loss(problem, problem.w_star + a * d1 + b * d2)
        if progress is not None:
            progress.update(len(betas))
    return L


def _ext_point(args):
    problem, w, start_seed, opts = args  # start_seed None: start from the conventional layers
    theta0 = None if start_seed is None else \
        np.random.default_rng(start_seed).standard_normal(problem.ext.num_params)
    return inner_solve(problem.ext, w, problem.z, problem.y, problem.lam, theta0, **opts).fun


def parallel_map(fn, items, jobs, progress):
    """``[fn(x) for x in items]``, over ``jobs`` processes, updating ``progress``."""
    out = []
    if jobs <= 1:
        for it in items:
            out.append(fn(it))
            if progress is not None:
                progress.update()
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_exit_with_parent,
                             initargs=(os.getpid(),)) as ex:
        for r in ex.map(fn, items, chunksize=1):
            out.append(r)
            if progress is not None:
                progress.update()
    return out


def _exit_with_parent(parent_pid: int, poll: float = 0.5):
    """Worker start-up: end this process when the parent that started it is gone (killed, timed out)."""
    try:  # Linux: the kernel sends SIGTERM when the parent dies
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - other systems: the watchdog below
        pass
    if os.getppid() != parent_pid:  # the parent died before the signal was set up
        os._exit(1)

    def watch():
        while True:
            time.sleep(poll)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def landscape_extended(problem: ToyProblem, d1, d2, alphas, betas, *, maxiter: int = 100, memory: int = 100,
                       init: str = "random", seed=0, jobs: int = 1, progress=None):
    """Equation 10 on the grid: the inner minimum at every ``w = w* + alpha d1 + beta d2``.

    Parameters
    ----------
    problem : ToyProblem
    d1, d2 : ndarray, shape ``(num_primary,)``
    alphas, betas : 1-D arrays
    maxiter, memory : int
        Inner L-BFGS iterations and memory.
    init : {"random", "primary"}
        Start of the inner problem at every grid point: standard normal
        per-pixel weights drawn afresh for every point (as the reference code
        does), or the conventional layers ``ext.expand(w)``, which makes the
        landscape deterministic in the optimiser and never above the
        conventional one (``L_ext <= L``).
    seed : int
        With ``init="random"``, point ``(i, j)`` draws from
        ``default_rng([seed, i, j])``.
    jobs : int
        Worker processes (grid points are independent).
    progress : ProgressBar, optional

    Returns
    -------
    L : ndarray, shape ``(len(alphas), len(betas))``
    """
    if init not in ("random", "primary"):
        raise ValueError(f"init must be 'random' or 'primary'; got {init!r}")
    opts = dict(maxiter=maxiter, memory=memory)
    items = [(problem, problem.w_star + a * d1 + b * d2, None if init == "primary" else [seed, i, j], opts)
             for i, a in enumerate(alphas) for j, b in enumerate(betas)]
    vals = parallel_map(_ext_point, items, jobs, progress)
    return np.asarray(vals).reshape(len(alphas), len(betas))


def trajectory(problem: ToyProblem, w0, kind: str, method: str, *, maxiter: int = 200, lr: float = 0.05,
               memory: int = 100, inner_maxiter: int = 100, aux_init: str = "random", seed=0):
    """Losses along one optimisation run, divided by the first.

    Parameters
    ----------
    problem : ToyProblem
    w0 : ndarray, shape ``(num_primary,)``
        Starting primary (conventional) parameters.
    kind : {"conv", "ext"}
        Equation 9 (conventional network, all parameters) or the reduced
        objective of equation 10 (variable projection).
    method : {"adam", "lbfgs"}
    maxiter, lr, memory : outer optimiser options
    inner_maxiter : int
        Inner L-BFGS iterations (``kind="ext"``).
    aux_init : {"random", "primary"}
        Initial per-pixel weights (``kind="ext"``): standard normal (as Siahkoohi, Louboutin and Herrmann)
        or the starting kernels.
    seed : int

    Returns
    -------
    dict
        ``"loss"`` (normalised, list), ``"raw"`` (list), and for ``"ext"``
        ``"misfit"`` (normalised by the first loss).
    """
    if kind == "conv":
        def fun(w):
            return data_objective(problem.conv, w, problem.z, problem.y)

        res = adam(fun, w0, lr=lr, maxiter=maxiter) if method == "adam" else \
            lbfgs(fun, w0, maxiter=maxiter, memory=memory)
        raw = res.history["fun"]
        return {"loss": (raw / raw[0]).tolist(), "raw": raw.tolist(), "message": res.message}
    if kind == "ext":
        res = train_extended(problem.ext, w0, problem.z, problem.y, lam=problem.lam, method=method,
                             maxiter=maxiter, lr=lr, memory=memory, aux_init=aux_init, rng=seed,
                             inner_maxiter=inner_maxiter)
        raw = res.history["fun"]
        return {"loss": (raw / raw[0]).tolist(), "raw": raw.tolist(),
                "misfit": (res.history["misfit"] / raw[0]).tolist(), "message": res.message}
    raise ValueError(f"kind must be 'conv' or 'ext'; got {kind!r}")


def trajectory_task(args):
    problem, w0, kind, method, opts = args
    return trajectory(problem, w0, kind, method, **opts)


def normalized_loss(L, scale=None):
    """``(L - min L) / scale`` (``scale`` defaults to ``L.max()``)."""
    L = np.asarray(L, dtype=float)
    return (L - L.min()) / (float(L.max()) if scale is None else float(scale))


def basin_fraction(L, threshold: float = 0.1, scale=None) -> float:
    """Fraction of the grid where the normalised loss ``(L - min) / scale`` is below ``threshold``.

    ``scale`` defaults to ``L.max()`` (each landscape normalised by itself, as
    in the figures of Siahkoohi, Louboutin and Herrmann); pass the conventional landscape's maximum to
    compare both on one scale.
    """
    return float(np.mean(normalized_loss(L, scale) < threshold))


def basin_radius(L, alphas, betas, threshold: float = 0.1, scale=None, center=(0.0, 0.0)) -> float:
    """Width of the valley around ``w*``: distance from ``center`` to the nearest grid point outside the basin.

    The basin is where ``(L - min) / scale < threshold`` (see
    :func:`basin_fraction`); the result is the smallest ``hypot(alpha - a0,
    beta - b0)`` over the grid points where the normalised loss is at least
    ``threshold`` (``inf`` if there are none). Unlike the area fraction, low
    regions far from ``w*`` (e.g. saturation plateaus of a sigmoid network)
    do not count.

    Parameters
    ----------
    L : array, shape ``(len(alphas), len(betas))``
    alphas, betas : 1-D arrays
    threshold : float
    scale : float, optional
        Default ``L.max()``.
    center : (float, float)
        ``(alpha, beta)`` of ``w*``.
    """
    N = normalized_loss(L, scale)
    A, B = np.meshgrid(np.asarray(alphas, dtype=float) - center[0], np.asarray(betas, dtype=float) - center[1],
                       indexing="ij")
    if A.shape != N.shape:
        raise ValueError(f"L has shape {N.shape}; expected {A.shape} (len(alphas), len(betas))")
    outside = N >= threshold
    return float(np.hypot(A, B)[outside].min()) if outside.any() else float("inf")


def basin_measures(Lc, Le, alphas, betas) -> dict:
    """Area fractions and valley radii of the two landscapes (own scales, and ``Le`` on ``Lc``'s scale)."""
    return {
        "basin_fraction": {"conventional": basin_fraction(Lc), "extended": basin_fraction(Le),
                           "extended_on_conventional_scale": basin_fraction(Le, scale=Lc.max())},
        "basin_radius": {key: _finite_or_none(basin_radius(L, alphas, betas))
                         for key, L in (("conventional", Lc), ("extended", Le))},
    }


def _finite_or_none(v: float):
    """``v``, or ``None`` for an infinite value (JSON has no infinity)."""
    return None if np.isinf(v) else v


def extended_wider(ext, conv) -> bool:
    """``ext > conv`` for basin measures where ``None`` stands for infinity."""
    ext, conv = (np.inf if v is None else v for v in (ext, conv))
    return ext > conv



r"""Variable-projection training of networks of extended convolution layers.

The extended network ``G_ext(X; theta)`` (:class:`~structops.nn.extended.ExtendedNetwork`)
has auxiliary per-pixel weights ``w`` (in ``theta``) and primary parameters
``primary = [K, b]`` (kernels and biases of the conventional network). The
training objective (equation 5 of Siahkoohi, Louboutin and Herrmann) is

.. math::

    \Phi(w, K, b) = \tfrac12 \|Y - G_{ext}(X; w, b)\|^2
    + \tfrac{\lambda^2}{2} \sum_l \|\underline{W}_l(w_l) - W_l(K_l)\|_F^2 .

Variable projection eliminates the auxiliary weights (equation 6),

.. math::

    \bar\Phi(K, b) = \min_w \Phi(w, K, b), \qquad
    \nabla_K \bar\Phi = \nabla_K P(\hat w, K), \quad
    \nabla_b \bar\Phi = \nabla_b \tfrac12\|Y - G_{ext}(X; \hat w, b)\|^2,

(the envelope theorem: at the inner minimiser ``w_hat`` the derivative through
``w_hat`` vanishes), so the gradient of the reduced objective with respect to
the kernels is the gradient of the penalty at ``w_hat`` (the step of Siahkoohi, Louboutin and Herrmann,
equation 7). The inner problem is solved over the per-pixel weights that are
matrix entries (the border mask) with SciPy's L-BFGS-B, warm-started from the
previous outer iteration.

Backends: the arrays (``primary``, ``X``, ``Y``, ``theta``) may be NumPy or
CuPy arrays; results come back in the same array type and floating precision
(float32 stays float32). The networks' products and Adam run on the device
of the data; SciPy's L-BFGS-B, which only takes host arrays, runs on float64
host copies of the parameter vector alone (one copy each way per objective
evaluation, ``O(num_params)``).

Functions
---------
:func:`inner_solve`
    Equation 6 at fixed primary parameters.
:func:`reduced_objective`
    ``(value, gradient, inner result)`` of the reduced objective.
:func:`joint_objective`
    ``Phi`` and its gradients in both blocks (for comparison).
:func:`train_extended`
    Outer loop: Adam, L-BFGS, the gradient step of Siahkoohi, Louboutin and Herrmann or the closed-form
    kernel average.
:func:`train_joint`
    Joint minimisation of ``Phi`` over ``(w, K, b)`` (L-BFGS or Adam).
:func:`adam`, :func:`lbfgs`
    The two generic outer optimisers, also used for conventional networks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .._backend import check_finite, get_xp
from .._validate import as_int, as_real
from ..nn.extended import ExtendedNetwork
from ._optim import OptimResult, Result, Run, adam, check_callback, gd, lbfgs, start

__all__ = [
    "InnerResult",
    "ExtendedTrainResult",
    "OptimResult",
    "inner_solve",
    "reduced_objective",
    "joint_objective",
    "data_objective",
    "train_extended",
    "train_joint",
    "adam",
    "lbfgs",
]


# ------------------------------------------------------------------ results
@dataclass(frozen=True)
class InnerResult(Result):
    """Result of :func:`inner_solve`.

    Attributes
    ----------
    x : ndarray, shape ``(num_params,)``
        Extended-network parameters at the inner minimiser (biases = primary
        biases), on the backend (NumPy or CuPy) and in the precision of the
        inputs; also readable as ``theta``.
    fun : float
        ``misfit + penalty``.
    success, nit, nfev, message, seconds
        Of the L-BFGS run (:class:`~structops.solvers.Result`).
    history : dict of ndarray
        ``"fun"``, ``"grad_norm"``, ``"step_norm"`` per L-BFGS iteration.
    misfit : float
        ``0.5 ||Y - G_ext(X; theta)||^2``.
    penalty : float
        ``lam^2/2 sum_l ||W_ext,l - W_l||_F^2``.
    """

    misfit: float
    penalty: float

    _renamed: ClassVar[dict] = {"value": "fun"}

    @property
    def theta(self):
        """The per-pixel parameters at the minimiser (``x``)."""
        return self.x


@dataclass(frozen=True)
class ExtendedTrainResult(Result):
    """Result of :func:`train_extended` and :func:`train_joint`.

    Attributes
    ----------
    x : ndarray, shape ``(num_primary,)``
        Final primary parameters (kernels, biases); also readable as ``primary``.
    fun : float
        Final objective (reduced for VarPro, joint for :func:`train_joint`).
    success, nit, nfev, message, seconds
        As in :class:`~structops.solvers.Result`: outer iterations, objective
        evaluations (inner solves for VarPro).
    history : dict of str to ndarray
        Per outer iteration (first entry: the starting point): ``"fun"``,
        ``"misfit"``, ``"penalty"`` and, for VarPro, ``"grad_norm"`` and
        ``"inner_nit"`` (NumPy arrays).
    theta : ndarray, shape ``(num_params,)``
        Final auxiliary (per-pixel) parameters of the extended network. Both
        on the backend (NumPy or CuPy) and in the precision of the inputs.
    method : str
    """

    theta: np.ndarray
    method: str

    _renamed: ClassVar[dict] = {"loss": "fun"}

    @property
    def primary(self):
        """The final primary parameters (``x``)."""
        return self.x


# ---------------------------------------------------------------- objectives
def _check(net, X, Y):
    if not isinstance(net, ExtendedNetwork):
        raise TypeError(f"net must be a structops.nn.extended.ExtendedNetwork; got {type(net).__name__}")
    if X.ndim != 2 or X.shape[0] != net.n_in:
        raise ValueError(f"X has shape {tuple(X.shape)}; expected ({net.n_in}, B), one example per column")
    if Y.shape != (net.n_out, X.shape[1]):
        raise ValueError(f"Y has shape {tuple(Y.shape)}; expected ({net.n_out}, {X.shape[1]})")
    check_finite(X, "X")
    check_finite(Y, "Y")


def _check_options(*, lam, maxiter, lr, memory, inner_maxiter=1, inner_memory=1):
    """Reject option values a run cannot honour (before any work is done)."""
    as_real(lam, "lam", nonnegative=True)
    as_int(maxiter, "maxiter", minimum=0)
    as_real(lr, "lr", positive=True)
    as_int(memory, "memory", minimum=1)
    as_int(inner_maxiter, "inner_maxiter", minimum=1)
    as_int(inner_memory, "inner_memory", minimum=1)


def _float_dtype(*arrays) -> np.dtype:
    """Floating dtype of the parameters: that of the arrays (float32 stays float32), else float64."""
    dts = [a.dtype for a in arrays if hasattr(a, "dtype")]
    dt = np.result_type(*dts) if dts else np.dtype(np.float64)
    return dt if dt.kind == "f" else np.dtype(np.float64)


def _training_start(net, primary0, X, Y, theta0, aux_init, rng):
    """Backend and copies (in the data's floating precision) of the starting ``primary`` and ``theta``.

    ``theta0`` (if given) wins over ``aux_init``: ``"primary"`` expands the
    starting kernels, ``"random"`` draws standard normal per-pixel weights on
    the host (the same numbers on every backend) and copies them once.
    """
    _check(net, X, Y)
    xp = get_xp(primary0, X, Y, theta0)
    dtype = _float_dtype(primary0, X, Y)
    primary0 = start(xp.asarray(primary0), dtype)
    if theta0 is None:
        if aux_init == "primary":
            theta0 = net.expand(primary0)
        elif aux_init == "random":
            theta0 = xp.asarray(np.random.default_rng(rng).standard_normal(net.num_params), dtype=dtype)
        else:
            raise ValueError(f"aux_init must be 'primary' or 'random'; got {aux_init!r}")
    return xp, primary0, start(theta0, dtype)


def data_objective(net, theta, X, Y):
    """``0.5 ||G(X; theta) - Y||^2`` and its gradient in ``theta`` (any protocol network).

    Parameters
    ----------
    net : Layer
        A network of the layer protocol.
    theta : ndarray, shape ``(net.num_params,)``
    X : ndarray, shape ``(n_in, B)``
    Y : ndarray, shape ``(n_out, B)``

    Returns
    -------
    value : float
    grad : ndarray, shape ``(net.num_params,)``
        On the backend of ``theta`` and ``X``.
    """
    Z, st = net.forward(theta, X)
    xp = get_xp(Z, Y)
    R = Z - Y
    g, _ = net.vjp(theta, st, R)
    r = R.ravel()
    return 0.5 * float(xp.vdot(r, r).real), g


def joint_objective(net: ExtendedNetwork, theta, primary, X, Y, lam: float):
    r"""The joint objective (equation 5) and its gradients.

    ``Phi = 0.5 ||Y - G_ext(X; w, b)||^2 + lam^2/2 sum_l ||W_ext,l - W_l||_F^2``,
    with ``w`` from ``theta`` and the biases ``b`` from ``primary`` (the biases
    in ``theta`` are ignored).

    Parameters
    ----------
    net : ExtendedNetwork
    theta : ndarray, shape ``(num_params,)``
    primary : ndarray, shape ``(num_primary,)``
    X, Y : ndarray, shapes ``(n_in, B)``, ``(n_out, B)``
    lam : float

    Returns
    -------
    value : float
    grad_theta : ndarray, shape ``(num_params,)``
        Zero on the biases and on the weights outside the border mask.
    grad_primary : ndarray, shape ``(num_primary,)``
        ``-lam^2 sum_p m (w - K)`` on the kernels, the misfit gradient on the biases.
    parts : tuple of float
        ``(misfit, penalty)``.
    """
    _check(net, X, Y)
    ix = net.index_arrays(get_xp(theta, primary, X, Y))
    theta = theta.copy()
    theta[ix.bias_theta] = primary[ix.bias_primary]
    mis, gd = data_objective(net, theta, X, Y)
    pen, gt, gp = net.penalty(theta, primary, lam)
    gp = gp.copy()
    gp[ix.bias_primary] = gd[ix.bias_theta]
    g_theta = (gd + gt) * ix.aux_mask
    return mis + pen, g_theta, gp, (mis, pen)


def inner_solve(net: ExtendedNetwork, primary, X, Y, lam: float, theta0=None, *, maxiter: int = 100,
                memory: int = 100, ftol: float = 1e-15, gtol: float = 1e-12) -> InnerResult:
    r"""Minimise the joint objective over the per-pixel weights (equation 6).

    Parameters
    ----------
    net : ExtendedNetwork
    primary : ndarray, shape ``(num_primary,)``
        Fixed kernels and biases.
    X, Y : ndarray, shapes ``(n_in, B)``, ``(n_out, B)``
    lam : float
    theta0 : ndarray, shape ``(num_params,)``, optional
        Warm start; default ``net.expand(primary)`` (penalty zero, misfit that
        of the conventional network).
    maxiter, memory : int
        L-BFGS iterations and memory (``maxcor``).
    ftol, gtol : float
        SciPy L-BFGS-B stopping tolerances.

    Returns
    -------
    InnerResult

    Notes
    -----
    The unknowns are the entries of ``w`` that exist in the matrices
    (``net.aux_mask``); the others do not affect the objective and keep their
    starting values.

    ``theta`` is on the backend of ``primary`` and ``X`` (NumPy or CuPy) with
    their floating precision. SciPy's L-BFGS-B works on float64 host copies
    of the unknowns only: every evaluation copies them to the device and the
    gradient back (``O(num_params)`` each way); the network's products stay on
    the device.
    """
    _check(net, X, Y)
    xp = get_xp(primary, X, Y, theta0)
    dtype = _float_dtype(primary, X, Y)
    primary = xp.asarray(primary, dtype=dtype)
    theta = net.expand(primary) if theta0 is None else start(theta0, dtype)
    ix = net.index_arrays(xp)
    theta[ix.bias_theta] = primary[ix.bias_primary]
    idx = ix.aux_index
    parts = {}

    def fg(u):
        th = theta.copy()
        th[idx] = u
        mis, g_data = data_objective(net, th, X, Y)
        pen, g_pen, _ = net.penalty(th, primary, lam)
        parts["u"], parts["parts"] = u, (mis, pen)
        return mis + pen, (g_data + g_pen)[idx]

    out = lbfgs(fg, theta[idx], maxiter=maxiter, memory=memory, ftol=ftol, gtol=gtol)
    theta[idx] = out.x
    if parts["u"] is not out.x and not bool(xp.array_equal(parts["u"], out.x)):
        fg(out.x)
    mis, pen = parts["parts"]
    return InnerResult(x=theta, fun=float(mis + pen), success=out.success, nit=out.nit, nfev=out.nfev,
                       message=out.message, history=out.history, seconds=out.seconds, misfit=float(mis),
                       penalty=float(pen))


def reduced_objective(net: ExtendedNetwork, primary, X, Y, lam: float, theta0=None, **inner):
    r"""The reduced objective ``min_w Phi(w, K, b)`` and its gradient in ``primary``.

    Parameters
    ----------
    net, primary, X, Y, lam, theta0
        As for :func:`inner_solve`.
    **inner
        Options of :func:`inner_solve` (``maxiter``, ``memory``, ``ftol``, ``gtol``).

    Returns
    -------
    value : float
    grad : ndarray, shape ``(num_primary,)``
    inner : InnerResult

    Notes
    -----
    With ``w_hat`` the inner minimiser, ``grad_K = -lam^2 sum_p m (w_hat - K)``
    (the gradient of the penalty, equation 7) and ``grad_b`` the misfit
    gradient in the biases; exact when the inner problem is solved exactly.
    """
    res = inner_solve(net, primary, X, Y, lam, theta0, **inner)
    xp = get_xp(res.theta)
    ix = net.index_arrays(xp)
    _, gt, gp = net.penalty(res.theta, xp.asarray(primary, dtype=res.theta.dtype), lam)
    gp = gp.copy()
    if ix.bias_theta.size:
        _, gd = data_objective(net, res.theta, X, Y)
        gp[ix.bias_primary] = gd[ix.bias_theta]
    return res.fun, gp, res


# --------------------------------------------------------------- training loops
def train_extended(net: ExtendedNetwork, primary0, X, Y, *, lam: float = 0.04, method: str = "adam",
                   maxiter: int = 200, lr: float = 0.05, memory: int = 100, theta0=None, aux_init="primary",
                   rng=None, inner_maxiter: int = 100, inner_memory: int = 100, inner_ftol: float = 1e-15,
                   inner_gtol: float = 1e-12, callback=None) -> ExtendedTrainResult:
    r"""Variable-projection training of an extended network (equations 5-7).

    Each outer iteration solves the inner problem (equation 6) over the
    per-pixel weights, warm-started from the previous inner solution, and
    updates the primary parameters with the gradient of the reduced objective.

    Parameters
    ----------
    net : ExtendedNetwork
    primary0 : ndarray, shape ``(num_primary,)``
    X, Y : ndarray, shapes ``(n_in, B)``, ``(n_out, B)``
    lam : float
        Penalty weight ``lambda`` (the penalty is ``lam^2/2 ||.||_F^2``).
    method : {"adam", "lbfgs", "gradient", "average"}
        Outer update: Adam (step ``lr``) or L-BFGS (memory ``memory``) on the
        reduced objective; ``"gradient"``: the step of Siahkoohi, Louboutin and Herrmann (equation 7),
        ``primary <- primary - lr grad``; ``"average"``: the closed-form
        minimiser of the penalty over the kernels (the masked pixel average
        of ``w_hat``), the biases by a gradient step.
    maxiter : int
        Outer iterations.
    theta0 : ndarray, optional
        Initial per-pixel weights (overrides ``aux_init``).
    aux_init : {"primary", "random"}
        ``"primary"``: ``net.expand(primary0)``; ``"random"``: standard normal
        entries (the trajectories of Siahkoohi, Louboutin and Herrmann).
    rng : seed or Generator, optional
        For ``aux_init="random"``.
    inner_maxiter, inner_memory, inner_ftol, inner_gtol
        Options of :func:`inner_solve`.
    callback : callable, optional
        ``callback(k, primary, value, inner)`` after each evaluation; return
        ``True`` to stop.

    Returns
    -------
    ExtendedTrainResult

    Notes
    -----
    The reduced gradient is (envelope theorem)
    ``grad_K = -lam^2 sum_p m (w_hat - K)``, ``grad_b = J_b^T (G_ext - Y)``;
    the reduced objective is ``Phi(w_hat, K, b)``.

    ``primary`` and ``theta`` are on the backend of the data (NumPy or CuPy)
    in its floating precision. Adam, the gradient and the average steps run
    on the device; the inner solves and ``method="lbfgs"`` use SciPy's
    L-BFGS-B on float64 host copies of the parameter vectors only
    (``O(num_params)`` copies per evaluation, see :func:`inner_solve` and
    :func:`lbfgs`). ``aux_init="random"`` draws on the host (the same numbers
    on every backend) and copies the weights to the device once.
    """
    t0 = time.perf_counter()
    _check_options(lam=lam, maxiter=maxiter, lr=lr, memory=memory, inner_maxiter=inner_maxiter,
                   inner_memory=inner_memory)
    check_callback(callback)
    xp, primary0, theta = _training_start(net, primary0, X, Y, theta0, aux_init, rng)
    state = {"theta": theta, "inner": None}
    hist = {"misfit": [], "penalty": [], "grad_norm": [], "inner_nit": []}
    opts = dict(maxiter=inner_maxiter, memory=inner_memory, ftol=inner_ftol, gtol=inner_gtol)
    nfev = [0]

    def fun(p):
        val, g, res = reduced_objective(net, p, X, Y, lam, state["theta"], **opts)
        state["theta"], state["inner"], state["p"] = res.theta, res, p
        nfev[0] += 1
        return val, g

    def record(k, p, val):  # called at every accepted iterate, right after its evaluation
        res = state["inner"]
        hist["misfit"].append(res.misfit)
        hist["penalty"].append(res.penalty)
        hist["inner_nit"].append(res.nit)
        _, g, _ = net.penalty(res.theta, p, lam)
        hist["grad_norm"].append(float(xp.linalg.norm(g)))
        return callback(k, p, val, res) if callback is not None else None

    if method == "adam":
        out = adam(fun, primary0, lr=lr, maxiter=maxiter, callback=record)
    elif method == "lbfgs":
        out = lbfgs(fun, primary0, maxiter=maxiter, memory=memory, callback=record)
    elif method == "gradient":
        out = gd(fun, primary0, step=lr, maxiter=maxiter, callback=record)
    elif method == "average":
        kern = net.index_arrays(xp).kernel_mask
        val, g = fun(primary0)
        run = Run(primary0, val, float(xp.linalg.norm(g)), 0.0, 0.0, record)
        if not run.first():
            p = primary0
            for _ in range(maxiter):
                p = xp.where(kern, net.project(state["theta"]), p - lr * g)
                val, g = fun(p)
                if run.step(p, val, float(xp.linalg.norm(g))):
                    break
        out = run.result(nfev[0], maxiter)
    else:
        raise ValueError(f"method must be 'adam', 'lbfgs', 'gradient' or 'average'; got {method!r}")
    n = out.nit + 1
    history = {"fun": out.history["fun"], **{k: np.asarray(v[:n]) for k, v in hist.items()}}
    final = state["inner"]
    if not bool(xp.array_equal(out.x, state["p"])):  # make theta consistent with the final primary
        _, _, final = reduced_objective(net, out.x, X, Y, lam, state["theta"], **opts)
    return ExtendedTrainResult(x=out.x, fun=float(final.fun), success=out.success, nit=out.nit, nfev=nfev[0],
                               message=out.message, history=history, seconds=time.perf_counter() - t0,
                               theta=final.theta, method=f"varpro-{method}")


def train_joint(net: ExtendedNetwork, primary0, X, Y, *, lam: float = 0.04, method: str = "lbfgs",
                maxiter: int = 200, lr: float = 0.05, memory: int = 100, theta0=None, aux_init="primary",
                rng=None, callback=None) -> ExtendedTrainResult:
    """Joint minimisation of equation 5 over the per-pixel weights and the primary parameters.

    Parameters
    ----------
    net, primary0, X, Y, lam, theta0, aux_init, rng
        As for :func:`train_extended`.
    method : {"lbfgs", "adam"}
    maxiter, lr, memory
        Optimiser options.
    callback : callable, optional
        ``callback(k, x, value)``; ``x = [w (existing entries), primary]``.

    Returns
    -------
    ExtendedTrainResult

    Notes
    -----
    The arrays stay on the backend of the data (NumPy or CuPy) in its
    floating precision; Adam runs on the device, L-BFGS on a float64 host
    copy of ``x`` (``O(num_params)`` copies per evaluation, see :func:`lbfgs`).
    """
    t0 = time.perf_counter()
    _check_options(lam=lam, maxiter=maxiter, lr=lr, memory=memory)
    check_callback(callback)
    xp, primary0, theta = _training_start(net, primary0, X, Y, theta0, aux_init, rng)
    ix = net.index_arrays(xp)
    idx = ix.aux_index
    n = int(idx.size)
    parts = {}

    def fun(x):
        th = theta.copy()
        th[idx] = x[:n]
        val, gt, gp, pp = joint_objective(net, th, x[n:], X, Y, lam)
        parts["last"] = pp
        return val, xp.concatenate([gt[idx], gp])

    hist = {"misfit": [], "penalty": []}

    def cb(k, x, v):  # called right after the evaluation at x
        hist["misfit"].append(parts["last"][0])
        hist["penalty"].append(parts["last"][1])
        return callback(k, x, v) if callback is not None else None

    x0 = xp.concatenate([theta[idx], primary0])
    if method == "lbfgs":
        out = lbfgs(fun, x0, maxiter=maxiter, memory=memory, callback=cb)
    elif method == "adam":
        out = adam(fun, x0, lr=lr, maxiter=maxiter, callback=cb)
    else:
        raise ValueError(f"method must be 'lbfgs' or 'adam'; got {method!r}")
    theta[idx] = out.x[:n]
    primary = out.x[n:]
    theta[ix.bias_theta] = primary[ix.bias_primary]
    m = out.nit + 1
    history = {"fun": out.history["fun"], **{k: np.asarray(v[:m]) for k, v in hist.items()}}
    return ExtendedTrainResult(x=primary, fun=out.fun, success=out.success, nit=out.nit, nfev=out.nfev,
                               message=out.message, history=history, seconds=time.perf_counter() - t0,
                               theta=theta, method=f"joint-{method}")

r"""The optimisers and the result type every solver of :mod:`structops.solvers` shares.

One vocabulary, one callback rule, three first-order methods:

- every solver returns a :class:`Result` (a frozen dataclass) with ``x``,
  ``fun``, ``success``, ``nit``, ``nfev``, ``message``, ``history`` and
  ``seconds``, and adds its own fields after them;
- every ``callback`` is called as ``callback(k, x, fun, ...)`` at the start
  (``k = 0``) and after every iteration ``k``, with a copy of the iterate;
  returning ``True`` stops the solver (``status = "callback"``);
- :func:`adam`, :func:`lbfgs` and :func:`gd` minimise ``fun(x) -> (value,
  gradient)`` for ``x`` of any shape, on NumPy or CuPy arrays.

``ftol`` and ``gtol`` mean the same in each: the run has converged when
``||g_k||_2 <= gtol * max(1, ||g_0||_2)`` or when the relative decrease
``(f_{k-1} - f_k) / max(|f_{k-1}|, |f_k|, 1) <= ftol``; a tolerance of 0
switches its test off.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy.optimize import minimize

from .._backend import get_xp, to_numpy
from .._validate import as_int, as_real

__all__ = ["Result", "OptimResult", "adam", "lbfgs", "gd"]


@dataclass(frozen=True)
class Result:
    """What every solver returns.

    Attributes
    ----------
    x : array
        The final iterate, on the backend (NumPy or CuPy) and in the
        precision of the starting point.
    fun : float
        The objective at ``x``.
    success : bool
        Whether the run met its convergence test.
    nit : int
        Iterations (updates of ``x``) done.
    nfev : int
        Objective (+ gradient) evaluations, line-search trials included.
    message : str
        Why the run stopped.
    history : dict of str to ndarray
        One entry per iteration, the first at the starting point: always
        ``"fun"``; each solver documents its other keys.
    seconds : float
        Wall-clock time of the run.
    """

    x: object
    fun: float
    success: bool
    nit: int
    nfev: int
    message: str
    history: dict = field(repr=False)
    seconds: float

    #: Earlier attribute names, still readable with a DeprecationWarning.
    _renamed: ClassVar[dict] = {}

    def __getattr__(self, name):  # only reached when the attribute does not exist
        new = type(self)._renamed.get(name)
        if new is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        warnings.warn(f"{type(self).__name__}.{name} is deprecated; use .{new}", DeprecationWarning, stacklevel=2)
        return getattr(self, new)


@dataclass(frozen=True)
class OptimResult(Result):
    """Result of :func:`adam`, :func:`lbfgs` and :func:`gd`.

    Attributes
    ----------
    x, fun, success, nit, nfev, message, history, seconds
        As in :class:`Result`; ``history`` has ``"fun"``, ``"grad_norm"``
        (``||g||_2``) and ``"step_norm"`` (``||x_k - x_{k-1}||_2``, 0 at the
        start), and for :func:`gd` ``"step"`` (the step length ``t`` of
        ``x_k = x_{k-1} - t g_{k-1}``).
    status : str
        ``"converged"`` (``gtol`` or ``ftol`` met), ``"maxiter"``,
        ``"callback"``, ``"line_search"`` (no decrease found along the
        search direction) or ``"diverged"`` (the objective is not finite).
    """

    status: str = "maxiter"


def stops(ret) -> bool:
    """The callback rule: a return value of ``True`` (Python's or NumPy's) stops the solver."""
    return ret is True or (isinstance(ret, np.bool_) and bool(ret))


def check_callback(callback):
    """``callback`` itself if it is ``None`` or callable, else a ``TypeError``."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable; got {type(callback).__name__}")
    return callback


def start(x0, dtype=None):
    """A copy of ``x0`` on its own backend, as a floating array (float32 stays float32)."""
    xp = get_xp(x0)
    x = xp.array(x0, copy=True)
    dt = np.dtype(dtype) if dtype is not None else (x.dtype if x.dtype.kind == "f" else np.dtype(np.float64))
    return x.astype(dt, copy=False)


def host(a):
    """Float64 host copy of a parameter array (for SciPy; no copy for a float64 NumPy array)."""
    return np.asarray(to_numpy(a), dtype=np.float64)


def _norm(xp, a) -> float:
    return math.sqrt(float(xp.sum(a * a)))


def _decrease(f_old, f_new) -> float:
    return (f_old - f_new) / max(abs(f_old), abs(f_new), 1.0)


def _check(maxiter, ftol, gtol, callback):
    as_int(maxiter, "maxiter", minimum=0)
    as_real(ftol, "ftol", nonnegative=True)
    as_real(gtol, "gtol", nonnegative=True)
    check_callback(callback)


class Run:
    """Book-keeping shared by the three optimisers: history, tests, callback, result."""

    def __init__(self, x0, f0, gnorm0, ftol, gtol, callback, keys=()):
        self.t0 = time.perf_counter()
        self.xp = get_xp(x0)
        self.ftol, self.gtol, self.callback = ftol, gtol, callback
        self.x, self.f = x0, float(f0)
        self.gnorm0 = float(gnorm0)
        self.hist = {"fun": [self.f], "grad_norm": [self.gnorm0], "step_norm": [0.0], **{k: [0.0] for k in keys}}
        self.nit, self.status, self.message = 0, None, ""

    def _converged(self, gnorm, f_old):
        if self.gtol > 0 and gnorm <= self.gtol * max(1.0, self.gnorm0):
            return f"gradient norm {gnorm:.3e} <= gtol * max(1, ||g_0||)"
        if f_old is not None and self.ftol > 0 and _decrease(f_old, self.f) <= self.ftol:
            return "relative decrease of the objective <= ftol"
        return None

    def first(self):
        """Callback and tests at the starting point; ``True`` when the run is over before it starts."""
        if not math.isfinite(self.f):
            self.status, self.message = "diverged", "the objective is not finite at the starting point"
            return True
        stop = self.callback is not None and stops(self.callback(0, self.x.copy(), self.f))
        if self._converged(self.gnorm0, None) is not None:
            self.status, self.message = "converged", "gradient norm below gtol at the start"
        elif stop:
            self.status, self.message = "callback", "stopped by the callback at the start"
        return self.status is not None

    def step(self, x, f, gnorm, **extra):
        """Accept ``x`` as iteration ``nit + 1``; ``True`` when the run must stop.

        A non-finite objective is not accepted: the run stops at the last
        finite iterate with ``status = "diverged"``.
        """
        if not math.isfinite(float(f)):
            self.status = "diverged"
            self.message = f"the objective is not finite at iteration {self.nit + 1} (the last finite iterate is kept)"
            return True
        f_old = self.f
        self.hist["step_norm"].append(_norm(self.xp, x - self.x))
        self.nit += 1
        self.x, self.f = x, float(f)
        self.hist["fun"].append(self.f)
        self.hist["grad_norm"].append(gnorm)
        for k, v in extra.items():
            self.hist[k].append(v)
        why = self._converged(gnorm, f_old)
        stop = self.callback is not None and stops(self.callback(self.nit, x.copy(), self.f))
        if why is not None:
            self.status, self.message = "converged", f"{why} after {self.nit} iterations"
        elif stop:
            self.status, self.message = "callback", f"stopped by the callback after {self.nit} iterations"
        return why is not None or stop

    def result(self, nfev, maxiter):
        if self.status is None:
            self.status, self.message = "maxiter", f"maxiter = {maxiter} reached"
        history = {k: np.asarray(v, dtype=float) for k, v in self.hist.items()}
        return OptimResult(x=self.x, fun=self.f, success=self.status == "converged", nit=self.nit, nfev=int(nfev),
                           message=self.message, history=history, seconds=time.perf_counter() - self.t0,
                           status=self.status)


def adam(fun, x0, *, lr: float = 0.05, maxiter: int = 200, betas=(0.9, 0.999), eps: float = 1e-8,
         ftol: float = 0.0, gtol: float = 0.0, callback=None) -> OptimResult:
    r"""Adam (Kingma and Ba, 2014) on ``fun(x) -> (value, grad)``.

    Parameters
    ----------
    fun : callable
        ``fun(x) -> (float, array)``; ``x`` and the gradient of the shape and
        on the backend of ``x0``.
    x0 : array
        NumPy or CuPy, any shape; float32 stays float32, other dtypes become float64.
    lr : float
        Step size.
    maxiter : int
        Steps; ``maxiter + 1`` evaluations (the last at the final iterate).
    betas : (float, float)
        Moment decay rates.
    eps : float
    ftol, gtol : float
        Convergence tests (module docstring); 0 runs ``maxiter`` steps.
    callback : callable, optional
        ``callback(k, x, value)`` after each evaluation; ``True`` stops.

    Returns
    -------
    OptimResult

    Notes
    -----
    ``m <- b1 m + (1-b1) g``, ``v <- b2 v + (1-b2) g^2``,
    ``x <- x - lr (m / (1-b1^k)) / (sqrt(v / (1-b2^k)) + eps)``.
    The iterates and moments stay on the backend of ``x0`` (no host copies).
    """
    _check(maxiter, ftol, gtol, callback)
    lr = as_real(lr, "lr", positive=True)
    b1, b2 = betas
    x = start(x0)
    xp = get_xp(x)
    f, g = fun(x)
    run = Run(x, f, _norm(xp, g), ftol, gtol, callback)
    nfev = 1
    if not run.first():
        m = xp.zeros_like(x)
        v = xp.zeros_like(x)
        for k in range(1, maxiter + 1):
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            x = x - lr * (m / (1 - b1**k)) / (xp.sqrt(v / (1 - b2**k)) + eps)
            f, g = fun(x)
            nfev += 1
            if run.step(x, f, _norm(xp, g)):
                break
    return run.result(nfev, maxiter)


def gd(fun, x0, *, step=None, maxiter: int = 200, line_search: bool = False, ftol: float = 0.0,
       gtol: float = 0.0, callback=None) -> OptimResult:
    """Gradient descent ``x <- x - t g`` with fixed steps, a step schedule or a backtracking line search.

    Parameters
    ----------
    fun : callable
        ``fun(x) -> (float, array)``, as for :func:`adam`.
    x0 : array
    step : float or callable, optional
        The step ``t``: a number, or ``step(k) -> t`` for iteration ``k = 1,
        2, ...``. With ``line_search`` it is the first trial step (default
        ``1 / ||g_0||``); later trials start at twice the last accepted step.
    maxiter : int
    line_search : bool
        Backtracking (Armijo, ``c1 = 1e-4``, halving up to 60 times).
    ftol, gtol : float
        Convergence tests (module docstring).
    callback : callable, optional
        ``callback(k, x, value)``; ``True`` stops.

    Returns
    -------
    OptimResult
        ``history["step"]`` holds the accepted steps ``t``.
    """
    _check(maxiter, ftol, gtol, callback)
    if step is None and not line_search:
        raise ValueError("gd needs a step (a number or step(k) -> t) unless line_search=True")
    if step is not None and not callable(step):
        step = as_real(step, "step", positive=True)
    x = start(x0)
    xp = get_xp(x)
    f, g = fun(x)
    nfev = 1
    run = Run(x, f, _norm(xp, g), ftol, gtol, callback, keys=("step",))
    if run.first():
        return run.result(nfev, maxiter)
    gnorm = run.gnorm0
    trial = (1.0 / max(gnorm, 1e-300)) if step is None else None
    for k in range(1, maxiter + 1):
        t = float(step(k)) if callable(step) else (step if trial is None else trial)
        if line_search:
            for _ in range(60):
                xn = x - t * g
                fn, gn = fun(xn)
                nfev += 1
                if math.isfinite(float(fn)) and float(fn) <= f - 1e-4 * t * gnorm**2:
                    break
                t *= 0.5
            else:
                run.status = "line_search"
                run.message = "the line search found no decrease (the objective is at rounding level of a minimiser)"
                break
            trial = 2.0 * t
        else:
            xn = x - t * g
            fn, gn = fun(xn)
            nfev += 1
        x, f, g = xn, float(fn), gn
        gnorm = _norm(xp, g)
        if run.step(x, f, gnorm, step=t):
            break
    return run.result(nfev, maxiter)


def lbfgs(fun, x0, *, maxiter: int = 200, memory: int = 100, ftol: float = 0.0, gtol: float = 0.0,
          callback=None) -> OptimResult:
    """Limited-memory BFGS (SciPy's L-BFGS-B, unbounded) on ``fun(x) -> (value, grad)``.

    Parameters
    ----------
    fun : callable
        ``fun(x) -> (float, array)``, as for :func:`adam`.
    x0 : array
        NumPy or CuPy, any shape; float32 stays float32, other dtypes become float64.
    maxiter, memory : int
        Iterations and the number of correction pairs kept (``maxcor``).
    ftol, gtol : float
        Convergence tests (module docstring); 0 runs ``maxiter`` iterations
        unless the line search fails.
    callback : callable, optional
        ``callback(k, x, value)`` at ``x0`` and after each iteration; ``True`` stops.

    Returns
    -------
    OptimResult
        ``x`` on the backend and in the precision of ``x0``.

    Notes
    -----
    SciPy's L-BFGS-B (strong Wolfe line search) takes host arrays only: it
    runs on a flat float64 host copy of the parameters, and every evaluation
    copies the iterate to the backend of ``x0`` and the gradient back
    (``O(num_params)`` each way), so ``fun`` itself runs on the device. The
    ``ftol`` test is SciPy's own (the same formula); ``gtol`` is tested here
    (SciPy's is an absolute bound on the largest entry).
    """
    _check(maxiter, ftol, gtol, callback)
    memory = as_int(memory, "memory", minimum=1)
    x0 = start(x0)
    xp, dtype, shape = get_xp(x0), x0.dtype, x0.shape
    last = {}
    nfev = [0]

    def evaluate(u):
        if "u" not in last or not np.array_equal(last["u"], u):
            x = xp.asarray(u.reshape(shape), dtype=dtype)
            f, g = fun(x)
            nfev[0] += 1
            g = host(g).reshape(-1)
            last.update(u=u.copy(), x=x, f=float(f), g=g, gnorm=float(np.linalg.norm(g)))
        return last["f"], last["g"]

    u0 = host(x0).reshape(-1)
    evaluate(u0)
    run = Run(x0, last["f"], last["gnorm"], ftol, gtol, callback)
    if run.first():
        return run.result(nfev[0], maxiter)

    def cb(intermediate_result):
        u = np.asarray(intermediate_result.x)
        if np.array_equal(last["u"], u):
            x, gnorm = last["x"], last["gnorm"]
        else:  # SciPy reports the point it last evaluated; kept for safety
            x, gnorm = xp.asarray(u.reshape(shape), dtype=dtype), math.nan
        if run.step(x, float(intermediate_result.fun), gnorm):
            raise StopIteration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in a line-search trial is handled by SciPy
        res = minimize(evaluate, u0, jac=True, method="L-BFGS-B", callback=cb,
                       options=dict(maxcor=memory, maxiter=maxiter, maxfun=max(15000, 20 * maxiter + 20),
                                    ftol=ftol, gtol=0.0))
    if run.status is None and res.status == 0:  # SciPy's ftol test (or a zero gradient)
        run.status, run.message = "converged", f"{res.message} after {run.nit} iterations"
    elif run.status is None and res.status != 1:  # 1: maxiter or maxfun
        run.status, run.message = "line_search", f"the line search found no decrease ({res.message})"
    return run.result(nfev[0], maxiter)

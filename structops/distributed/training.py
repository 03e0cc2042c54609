"""Data-parallel training: a batch split over ranks, losses and gradients all-reduced."""

from __future__ import annotations

import numpy as np

from .._backend import get_xp, to_numpy
from .layers import _mpi

__all__ = ["data_parallel", "minimize", "layer_least_squares", "kernel_least_squares", "extended_least_squares",
           "varpro_objective", "varpro"]


def _allreduce_sum(comm, a):
    """The sum over the ranks of ``comm`` of the float64 array ``a`` (one ``Allreduce``), on every rank."""
    MPI, _ = _mpi()
    a = np.ascontiguousarray(a, dtype=np.float64)
    out = np.empty_like(a)
    comm.Allreduce(a, out, op=MPI.SUM)
    return out


def data_parallel(fun, comm=None):
    """``theta -> (sum_r f_r(theta), sum_r grad f_r(theta))`` from a local ``fun`` on this rank's data.

    Parameters
    ----------
    fun : callable
        ``theta -> (loss, gradient)`` on this rank's share of the data; every
        rank calls it with the same ``theta``.
    comm : mpi4py communicator, optional

    Returns
    -------
    callable
        The global ``(loss, gradient)``, the same on every rank (one
        all-reduce of ``1 + theta.size`` values per call).
    """
    MPI, _ = _mpi()
    comm = MPI.COMM_WORLD if comm is None else comm

    def total(theta):
        f, g = fun(theta)
        out = _allreduce_sum(comm, np.concatenate([[float(f)], to_numpy(g).astype(np.float64).reshape(-1)]))
        return float(out[0]), out[1:]

    return total


def minimize(fun, x0, comm=None, **options):
    """``scipy.optimize.minimize`` of the all-reduced objective (``jac=True``), identically on every rank.

    ``fun`` is the local ``(loss, gradient)`` (:func:`data_parallel`); the
    ``options`` go to SciPy (``method`` defaults to ``"L-BFGS-B"``). Every
    rank takes the same steps, so the result is the same everywhere.
    """
    from scipy.optimize import minimize as scipy_minimize

    options.setdefault("method", "L-BFGS-B")
    return scipy_minimize(data_parallel(fun, comm), np.asarray(x0, dtype=float).reshape(-1), jac=True, **options)


def layer_least_squares(make_layer, X, Y, size: int):
    """The local objective ``theta -> 1/2 sum_i ||L(theta) x_i - y_i||^2`` over this rank's images, with its gradient.

    Parameters
    ----------
    make_layer : callable
        ``theta (array of shape (size,)) -> layer``: a structops operator with
        ``matmat`` and a parameter ``jacobian(X)`` whose input is ``theta``'s
        layout (a ``ConvND`` of the kernel, an ``ExtendedConvND`` of the
        per-pixel weights, a parametric operator of its parameters).
    X : array, shape ``(N_in, B_r)``
        This rank's input images (flattened), one per column; NumPy or CuPy
        (the products then run on this rank's GPU, and only the loss and
        gradient come to the host).
    Y : array, shape ``(N_out, B_r)``
        Their targets.
    size : int
        ``theta``'s length.

    Returns
    -------
    callable
        ``theta -> (loss, gradient)``, the gradient the adjoint of the layer's
        parameter Jacobian at ``X`` applied to the residual; a rank without
        images returns ``(0, 0)``.
    """
    xp = get_xp(X, Y)
    X, Y = xp.asarray(X, dtype=xp.float64), xp.asarray(Y, dtype=xp.float64)

    def fun(theta):
        theta = xp.asarray(theta, dtype=xp.float64).reshape(-1)
        if theta.size != size:
            raise ValueError(f"theta has {theta.size} entries; the layer has {size} parameters")
        if X.shape[1] == 0:
            return 0.0, np.zeros(size)
        layer = make_layer(theta)
        R = layer.matmat(X) - Y
        g = layer.jacobian(X).rmatvec(R.reshape(-1))
        return 0.5 * float((R * R).sum()), to_numpy(g).reshape(-1)

    return fun


def kernel_least_squares(X, Y, kernel_shape, in_shape, **conv_options):
    """:func:`layer_least_squares` of a convolution's kernel ``(c_out, c_in, *k)`` (``theta`` flattened).

    ``conv_options`` go to :class:`structops.ConvND`.
    """
    from ..operators.conv import ConvND

    kernel_shape = tuple(kernel_shape)
    return layer_least_squares(lambda K: ConvND(K.reshape(kernel_shape), in_shape, **conv_options), X, Y,
                               int(np.prod(kernel_shape)))


def extended_least_squares(X, Y, weights_shape, in_shape, **conv_options):
    """:func:`layer_least_squares` of an extended layer's per-pixel weights ``(c_out, c_in, *k, *out_shape)``.

    Extended-layer training with the batch split: each rank holds its images,
    :func:`minimize` all-reduces the loss and the ``prod(weights_shape)``
    gradient entries. ``conv_options`` go to :class:`structops.ExtendedConvND`.
    """
    from ..operators.extended import ExtendedConvND

    weights_shape = tuple(weights_shape)
    return layer_least_squares(lambda w: ExtendedConvND(w.reshape(weights_shape), in_shape, **conv_options), X, Y,
                               int(np.prod(weights_shape)))


def _local_matrix(Phi):
    """``Phi`` as a dense ``(m_r, n)`` array (an operator is applied to the identity once)."""
    if hasattr(Phi, "matmat") and not isinstance(Phi, np.ndarray):
        n = Phi.shape[1]
        return np.asarray(Phi.matmat(np.eye(n, dtype=Phi.dtype)), dtype=float)
    return np.asarray(Phi.toarray() if hasattr(Phi, "toarray") else Phi, dtype=float)


def varpro_objective(phi, y, dphi=None, tikhonov: float = 0.0, comm=None):
    """The reduced objective of separable least squares with the rows split over the ranks, and its gradient.

    Parameters
    ----------
    phi : callable
        ``phi(theta)``: this rank's rows ``Phi_r(theta)``, shape ``(m_r, n)``
        (an array or a linear operator; ``n`` small: its ``n x n`` Gram matrix
        is all-reduced).
    y : array, shape ``(m_r,)``
        This rank's data.
    dphi : callable, optional
        ``dphi(theta)``: the ``(m_r, n, p)`` array ``dPhi_r / dtheta``; without
        it, ``phi(theta).jacobian(w)`` (``v -> dPhi(v) w``, every structops
        parametric operator) gives the gradient.
    tikhonov : float
        ``lambda >= 0`` of ``lambda/2 ||w||^2``.
    comm : mpi4py communicator, optional

    Returns
    -------
    callable
        ``theta -> (f, grad)``, the same on every rank, with
        ``f(theta) = min_w 1/2 sum_r ||Phi_r(theta) w - y_r||^2 + lambda/2 ||w||^2``;
        its attribute ``coef(theta)`` gives the minimiser ``w``.

    Notes
    -----
    ``w(theta)`` solves the normal equations ``(sum_r Phi_r^T Phi_r + lambda I) w
    = sum_r Phi_r^T y_r``: one all-reduce of ``n^2 + n`` values. Because ``w``
    minimises the objective, the reduced gradient is the partial gradient at
    ``w`` (Golub and Pereyra 1973), ``sum_r (dPhi_r w)^T r_r``: a second
    all-reduce of ``1 + p`` values.
    """
    MPI, _ = _mpi()
    comm = MPI.COMM_WORLD if comm is None else comm
    y = np.asarray(y, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"y must be this rank's data vector (m_r,); got shape {y.shape}")
    if not tikhonov >= 0:
        raise ValueError(f"tikhonov must be >= 0; got {tikhonov}")

    def normal(theta):
        """``(Phi_r, A_r, w, G)``: this rank's rows, as an operator and dense, the coefficients and ``G = sum Phi^T Phi + lambda I``."""
        Phi = phi(theta)
        A = _local_matrix(Phi)
        if A.shape[0] != y.shape[0]:
            raise ValueError(f"phi(theta) has {A.shape[0]} rows on rank {comm.rank}; y has {y.shape[0]}")
        n = A.shape[1]
        out = _allreduce_sum(comm, np.concatenate([(A.T @ A).reshape(-1), A.T @ y]))
        G, b = out[:n * n].reshape(n, n), out[n * n:]
        G[np.diag_indices(n)] += tikhonov
        from scipy.linalg import lstsq

        return Phi, A, lstsq(G, b, check_finite=False)[0], G  # minimum-norm when G is singular

    def coef(theta):
        return normal(theta)[:3]

    def derivative(theta, Phi, w):
        """This rank's ``dPhi_r(theta) w``: ``(m_r, p)``."""
        if dphi is not None:
            return np.einsum("mnp,n->mp", np.asarray(dphi(theta), dtype=float), w)
        J = Phi.jacobian(w)
        return np.asarray(to_numpy(J.matmat(np.eye(J.shape[1], dtype=float))), dtype=float).reshape(y.shape[0], -1)

    def local(theta):
        theta = np.asarray(theta, dtype=float).reshape(-1)
        Phi, A, w = coef(theta)
        r = A @ w - y
        if dphi is not None:
            g = derivative(theta, Phi, w).T @ r
        else:  # the Jacobian's adjoint, not its p columns
            g = np.asarray(Phi.jacobian(w).rmatvec(r), dtype=float).reshape(-1)
        f = 0.5 * float(r @ r) + (0.5 * tikhonov * float(w @ w)) / comm.size  # the w term once in the sum
        return f, g

    total = data_parallel(local, comm)
    total.coef = lambda theta: coef(np.asarray(theta, dtype=float).reshape(-1))[2]
    total.normal, total.derivative, total.comm = normal, derivative, comm
    return total


def varpro(phi, y, theta0, dphi=None, tikhonov: float = 0.0, comm=None, method: str = "gauss-newton",
           max_iter: int = 200, xtol: float = 1e-10, gtol: float = 1e-12, **options):
    """Variable projection with the rows (e.g. a batch of images) split over the ranks.

    Parameters
    ----------
    phi, y, dphi, tikhonov, comm
        As in :func:`varpro_objective`.
    theta0 : array, shape ``(p,)``
    method : str
        ``"gauss-newton"`` (default): Levenberg-Marquardt steps on the reduced
        residual with Kaufman's Jacobian (Notes); or a method of
        ``scipy.optimize.minimize`` (e.g. ``"L-BFGS-B"``) on the reduced
        objective and its gradient, with ``options`` passed to it.
    max_iter, xtol, gtol
        Gauss-Newton: at most ``max_iter`` steps; stop when a step changes
        ``theta`` by at most ``xtol (||theta|| + xtol)`` or the gradient's
        largest entry is at most ``gtol`` times the objective.

    Returns
    -------
    theta, w, result
        ``result`` is a SciPy ``OptimizeResult`` (``x``, ``fun``, ``jac``,
        ``nit``, ``success``, ``message``), the same on every rank.

    Notes
    -----
    The reduced residual is ``r(theta) = P_perp(theta) y`` (with Tikhonov, of
    the stacked system ``[Phi; sqrt(lambda) I] w ~ [y; 0]``). Kaufman's
    Jacobian is ``J = P_perp [dPhi w; 0]``: with ``Z = G^{-1} sum_r Phi_r^T
    D_r`` (``D_r = dPhi_r w``, one all-reduce of ``n p`` values) its rows on
    rank ``r`` are ``D_r - Phi_r Z``, plus the replicated ``-sqrt(lambda) Z``.
    ``J^T J`` and the gradient ``J^T r = sum_r D_r^T r_r`` (exact: the
    normal equations make ``Phi^T r + lambda w`` vanish) are one all-reduce of
    ``p^2 + p``: a step costs ``n (n + 1) + n p + p (p + 1)`` values
    communicated, however many rows each rank holds, and converges like the
    serial solver (:func:`structops.solvers.varpro`), where a quasi-Newton
    method on the scalar objective needs many more steps.
    """
    fun = varpro_objective(phi, y, dphi=dphi, tikhonov=tikhonov, comm=comm)
    theta = np.asarray(theta0, dtype=float).reshape(-1)
    from scipy.optimize import OptimizeResult

    if method != "gauss-newton":
        from scipy.optimize import minimize as scipy_minimize

        res = scipy_minimize(fun, theta, jac=True, method=method, **options)
        return res.x, fun.coef(res.x), res
    if options:
        raise TypeError(f"method='gauss-newton' takes no options {sorted(options)}")
    if int(max_iter) != max_iter or max_iter < 0 or not (xtol >= 0 and gtol >= 0):
        raise ValueError(f"max_iter must be an integer >= 0 and xtol, gtol >= 0; got {max_iter}, {xtol}, {gtol}")
    comm = fun.comm
    y = np.asarray(y, dtype=float)

    def allreduce(a):
        return _allreduce_sum(comm, a)

    def state(theta):
        Phi, A, w, G = fun.normal(theta)
        r = A @ w - y
        f = float(allreduce(np.array([0.5 * float(r @ r)]))[0]) + 0.5 * tikhonov * float(w @ w)
        return Phi, A, w, G, r, f

    from scipy.linalg import lstsq, solve

    Phi, A, w, G, r, f = state(theta)
    mu, nit, message, success = None, 0, "the maximum number of steps", False
    g = None  # the gradient at theta, once computed
    while nit < max_iter:
        D = fun.derivative(theta, Phi, w)
        p = D.shape[1]
        if D.shape[0] != y.shape[0]:
            raise ValueError(f"dPhi w has {D.shape[0]} rows on rank {comm.rank}; y has {y.shape[0]}")
        Z = lstsq(G, allreduce(A.T @ D), check_finite=False)[0]  # (n, p)
        J = D - A @ Z
        both = allreduce(np.concatenate([(J.T @ J).reshape(-1), D.T @ r]))
        H = both[:p * p].reshape(p, p) + tikhonov * (Z.T @ Z)
        g = both[p * p:]
        if np.abs(g).max(initial=0.0) <= gtol * max(f, np.finfo(float).tiny):
            message, success = "the gradient vanishes", True
            break
        scale = np.maximum(np.diag(H), np.finfo(float).tiny * max(1.0, float(np.diag(H).max(initial=0.0))))
        mu = 1e-3 if mu is None else mu
        while True:  # Levenberg-Marquardt: the damping grows until the step decreases the objective
            step = solve(H + mu * np.diag(scale), -g, assume_a="sym", check_finite=False)
            trial = theta + step
            new = state(trial)
            if new[5] <= f:
                break
            mu *= 4.0
            if mu > 1e16:
                step = np.zeros_like(theta)
                break
        nit += 1
        if not step.any():
            message, success = "no step decreases the objective", True
            break
        theta, g = trial, None
        Phi, A, w, G, r, f = new
        mu = max(mu / 3.0, 1e-12)
        if np.linalg.norm(step) <= xtol * (np.linalg.norm(theta) + xtol):
            message, success = "the step is below xtol", True
            break
    if g is None:  # the last step moved theta: its gradient
        g = allreduce(fun.derivative(theta, Phi, w).T @ r)
    return theta, w, OptimizeResult(x=theta, fun=f, jac=g, nit=nit, success=success, message=message)

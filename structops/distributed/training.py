"""Data-parallel training: a batch split over ranks, losses and gradients all-reduced."""

from __future__ import annotations

import numpy as np

from .layers import _mpi

__all__ = ["data_parallel", "minimize", "kernel_least_squares"]


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
        g = np.ascontiguousarray(np.asarray(g, dtype=np.float64).reshape(-1))
        buf = np.concatenate([[float(f)], g])
        out = np.empty_like(buf)
        comm.Allreduce(buf, out, op=MPI.SUM)
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


def kernel_least_squares(X, Y, kernel_shape, in_shape, **conv_options):
    """The local objective ``K -> 1/2 sum_i ||conv(K) x_i - y_i||^2`` over this rank's images, with its gradient.

    Parameters
    ----------
    X : array, shape ``(N_in, B_r)``
        This rank's input images (flattened ``(c_in, *in_shape)``), one per column.
    Y : array, shape ``(N_out, B_r)``
        Their targets.
    kernel_shape : tuple
        ``(c_out, c_in, *k)``.
    in_shape : tuple
    **conv_options
        Of :class:`structops.ConvND`.

    Returns
    -------
    callable
        ``theta -> (loss, gradient)`` with ``theta`` the flattened kernel; the
        gradient is the adjoint of the layer's kernel Jacobian at ``X``
        applied to the residual.
    """
    from ..operators.conv import ConvND

    X, Y = np.asarray(X, dtype=float), np.asarray(Y, dtype=float)
    kernel_shape = tuple(kernel_shape)

    def fun(theta):
        K = np.asarray(theta, dtype=float).reshape(kernel_shape)
        if X.shape[1] == 0:
            return 0.0, np.zeros(K.size)
        layer = ConvND(K, in_shape, **conv_options)
        R = layer.matmat(X) - Y
        g = layer.jacobian(X).rmatvec(R.reshape(-1))
        return 0.5 * float((R * R).sum()), np.asarray(g).reshape(-1)

    return fun

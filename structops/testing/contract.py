"""``check_operator``: the contract every structops operator passes, for users' own operators too."""

from __future__ import annotations

import numpy as np

from .._backend import to_numpy
from .asserts import default_rtol, op_xp, assert_adjoint, assert_matches_dense, random_like_op, taylor_test

__all__ = ["check_operator"]


def _dense_of(op, xp):
    """The matrix of ``op``, column by column from ``matmat`` on the identity (host array)."""
    eye = xp.asarray(np.eye(op.shape[1], dtype=op.dtype))
    return np.asarray(to_numpy(op.matmat(eye)))


def check_operator(op, dense=None, *, rebuild=None, theta=None, spectra: bool = True, nbatch: int = 3,
                   rtol: float | None = None, rng=0, max_dense: int = 2000):
    """Run the operator contract on ``op``: products, adjoint, batches, Jacobian, spectra.

    Parameters
    ----------
    op : pylops.LinearOperator
        Any operator; a :class:`~structops.StructuredOperator` gets the whole contract.
    dense : array, shape ``op.shape``, optional
        The matrix of ``op`` built independently (e.g. by loops over its
        definition). Without it, the products are compared with the matrix
        assembled from ``op.matmat`` on the identity (when ``op`` has at most
        ``max_dense`` columns), which checks consistency but not correctness.
    rebuild : callable, optional
        ``rebuild(theta) -> operator`` at other parameters, for the Taylor test
        of ``op.jacobian``; default ``op.with_kernel`` and ``op.kernel`` for
        convolution layers.
    theta : array, optional
        The parameters of ``op`` in the layout of ``rebuild``.
    spectra : bool
        Compare :func:`structops.singular_values` (largest and smallest) with
        the SVD of the dense matrix.
    nbatch : int
        Batch size of the batched checks.
    rtol : float, optional
        Default ``1e-12`` (double) or ``2e-5`` (single precision).
    rng : seed or Generator

    Returns
    -------
    dict
        The checks run and the largest relative error each saw.

    Raises
    ------
    AssertionError
        When a check fails; the message names the check.

    Examples
    --------
    A user-defined operator: a weighted first difference ``y_i = w_i (x_{i+1} - x_i)``.

    >>> import numpy as np, structops
    >>> class WeightedDiff(structops.StructuredOperator):
    ...     def __init__(self, w):
    ...         self.w = np.array(w, dtype=float)
    ...         super().__init__(dims=(self.w.size + 1,), dimsd=(self.w.size,), dtype=self.w.dtype)
    ...     def _forward(self, X):                      # X: (n + 1, B)
    ...         return self.w[:, None] * (X[1:] - X[:-1])
    ...     def _backward(self, Y):                     # Y: (n, B)
    ...         WY = self.w[:, None] * Y
    ...         X = np.zeros((Y.shape[0] + 1, Y.shape[1]))
    ...         X[1:] += WY
    ...         X[:-1] -= WY
    ...         return X
    >>> w = np.linspace(1, 2, 6)
    >>> D = np.diag(w) @ (np.eye(6, 7, 1) - np.eye(6, 7))   # built independently
    >>> report = structops.testing.check_operator(WeightedDiff(w), D)
    >>> sorted(report)
    ['adjoint', 'batched', 'dense', 'empty batch', 'spectra']
    """
    xp = op_xp(op, None)
    rng = np.random.default_rng(rng)
    rtol = default_rtol(op.dtype) if rtol is None else rtol
    report = {"adjoint": assert_adjoint(op, rtol=rtol, nbatch=nbatch, rng=rng, xp=xp)}

    # batched products are the single products, column by column
    X = random_like_op(op, "model", nbatch, rng=rng, xp=xp)
    Y = random_like_op(op, "data", nbatch, rng=rng, xp=xp)
    err = 0.0
    for batch, single, Z in ((op.matmat, op.matvec, X), (op.rmatmat, op.rmatvec, Y)):
        B = to_numpy(batch(Z))
        for j in range(nbatch):
            s = to_numpy(single(Z[:, j]))
            err = max(err, float(np.linalg.norm(B[:, j] - s) / max(np.linalg.norm(s), np.finfo(float).tiny)))
    if not err <= rtol:
        raise AssertionError(f"batched products differ from single products by {err:.2e} (rtol {rtol:.1e})")
    report["batched"] = err

    E = xp.zeros((op.shape[1], 0), dtype=op.dtype)
    if op.matmat(E).shape != (op.shape[0], 0) or op.rmatmat(xp.zeros((op.shape[0], 0), op.dtype)).shape != (
        op.shape[1], 0
    ):
        raise AssertionError("an empty batch (N, 0) does not give an (M, 0) result")
    report["empty batch"] = 0.0

    if dense is None and op.shape[1] <= max_dense:
        dense = _dense_of(op, xp)
    if dense is not None:
        report["dense"] = assert_matches_dense(op, dense, rtol=rtol, nbatch=nbatch, rng=rng, xp=xp)

    if hasattr(op, "jacobian"):
        x = random_like_op(op, "model", rng=rng, xp=xp)
        try:
            J = op.jacobian(x)
        except NotImplementedError:
            J = None
        if J is not None:
            report["jacobian adjoint"] = assert_adjoint(J, rtol=rtol, nbatch=nbatch, rng=rng, xp=xp)
            if rebuild is None and hasattr(op, "with_kernel"):
                rebuild, theta = op.with_kernel, op.kernel
            if rebuild is not None:
                shape = theta.shape
                table = taylor_test(lambda t: rebuild(t.reshape(shape)) @ x, J, theta, rng=rng)
                report["jacobian taylor"] = float(table[-1, 2])

    if spectra and dense is not None:
        from ..linalg.spectra import singular_values

        s_dense = np.linalg.svd(np.asarray(dense, dtype=np.result_type(dense.dtype, np.float64)), compute_uv=False)
        k = min(3, s_dense.size)
        scale = max(float(s_dense[0]), np.finfo(float).tiny)
        tol = max(1e-8, 100 * rtol)
        got = np.concatenate([singular_values(op, k, "largest"), singular_values(op, 1, "smallest")])
        want = np.concatenate([s_dense[:k], s_dense[-1:]])
        err = float(np.max(np.abs(got - want)) / scale)
        if not err <= tol:
            raise AssertionError(f"singular values {got} differ from the dense SVD {want} by {err:.2e} x sigma_max")
        report["spectra"] = err
    return report

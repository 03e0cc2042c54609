"""Solves with ``B^T B`` from a sparse LU of a square layer ``B`` itself, for numerically singular layers.

When the layer is singular to working precision, the factorised normal
matrix needs a diagonal shift ``delta ~ eps ||B||^2`` to stay positive
definite, and inverse iteration with ``B^T B + delta I`` cannot tell apart
singular values below ``sqrt(delta) ~ 1e-8 ||B||``. A sparse LU
``P_r B P_c = L U`` (SuperLU, partial pivoting) of the square layer is
backward stable in ``B`` itself: ``(B^T B)^{-1} x = B^{-1} (B^{-T} x)``
amplifies the directions of the smallest singular values down to rounding
level of ``||B||``. The fill of a 2-D layer's LU grows fast with the channel
count, so it is used for small layers only (:func:`lu_affordable`).
"""

from __future__ import annotations

import numpy as np

# The LU is tried when c_in * taps * N (the layer's nonzeros) is at most this:
# a 16 -> 16 3x3 layer on 32x32 (2.4e6) factorises in about 6 s here.
LU_MAX_NNZ = 2.5e6


def lu_affordable(op) -> bool:
    """Whether the sparse LU of the square layer ``op`` is cheap enough to try."""
    M, N = op.shape
    return M == N and float(N) * op.c_out * int(np.prod(op.kernel_size)) <= LU_MAX_NNZ


class LayerLU:
    """``(B^T B)^{-1}`` from a sparse LU of a square ``B`` (``B = A`` or ``B = A^T``).

    Parameters
    ----------
    op : ConvND
        A square zero-padded layer, real kernel.
    transposed : bool
        ``B = A^T`` (solves with ``A A^T``) instead of ``B = A``.
    lu : scipy.sparse.linalg.SuperLU, optional
        An LU of ``A`` to share (the two sides of one layer).

    Raises
    ------
    numpy.linalg.LinAlgError
        When SuperLU finds the matrix exactly singular.
    """

    method = "lu"

    def __init__(self, op, transposed: bool = False, lu=None):
        from scipy.sparse.linalg import splu

        if lu is None:
            A = op.tosparse("csc").astype(np.float64)
            if A.shape[0] != A.shape[1]:
                raise ValueError(f"the sparse LU route needs a square layer; got {A.shape}")
            try:
                lu = splu(A, permc_spec="COLAMD")
            except RuntimeError as e:  # "Factor is exactly singular"
                raise np.linalg.LinAlgError(f"sparse LU of the layer failed: {e}") from None
        self.lu, self.transposed = lu, transposed
        self.nbytes = int((lu.L.nnz + lu.U.nnz) * 12)
        self.flops = float((lu.L.nnz + lu.U.nnz) ** 2 / lu.shape[0])

    def other(self):
        """The solves with ``B B^T`` from the same LU."""
        return LayerLU(None, not self.transposed, self.lu)

    def solve(self, X):
        """``(B^T B)^{-1} X`` for ``X`` of shape ``(n, r)`` (host float64)."""
        X = np.asarray(X, dtype=np.float64)
        first, second = ("N", "T") if self.transposed else ("T", "N")
        # B = A: A^{-1} A^{-T} X; B = A^T: A^{-T} A^{-1} X
        return self.lu.solve(self.lu.solve(X, trans=first), trans=second)

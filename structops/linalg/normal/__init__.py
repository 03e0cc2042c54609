"""Exact smallest singular values of zero-padded convolution layers.

The normal matrix of a zero-padded layer ``A`` (``A^T A`` on the input side,
``A A^T`` on the output side) has entries that are masked kernel
autocorrelations: with unknowns ordered pixel-major, channels innermost,

.. math::

    (A^T A)[(q, i), (q', i')] = \\sum_{d, d':\\ (d - d')\\delta = q - q'}
        [\\text{tap pair } (d, d') \\text{ valid at } q']\\,
        (K_d^T K_{d'})[i, i'],

where ``K_d = K[:, :, d]`` is the ``(c_out, c_in)`` channel matrix of tap
``d`` and a tap pair is valid at column pixel ``q'`` when both pixels read by
one output position lie inside the image (a per-axis condition). The matrix is
assembled directly from these blocks, never from a sparse product, in one of
two sparse-direct forms:

* ``"band"``: LAPACK lower band storage (``scipy.linalg.cholesky_banded``
  layout), pixels flattened with the axis order that minimises the bandwidth;
  factorised by ``dpbtrf``. Cost ``~ n kd^2``.
* ``"nd"``: geometric nested dissection of the pixel grid (separators are
  slabs as wide as the coupling reach) and a multifrontal Cholesky with dense
  fronts (``dpotrf``/``dtrsm``/``dsyrk``). Fewer flops than the band for 2-D and
  N-D images; the default when the operation count says so.

The smallest eigenpairs of the normal matrix are found by block inverse
subspace iteration with the factor, with a Rayleigh-Ritz step on the layer
itself (an SVD of ``A Q``, so the condition number is not squared in the
values), and each singular triplet is checked with the matrix-free operator:
``r = ||A^T u - s v||`` with ``u = A v / s``. Some singular value lies within
``r`` of ``s``; with the gap ``g`` to the rest of the computed spectrum the
error is at most ``r^2 / g``.
"""

from .band import BandedNormal, normal_matrix_banded
from .smallest import normal_solver, sigma_min, smallest_singular_values

__all__ = [
    "BandedNormal",
    "normal_matrix_banded",
    "normal_solver",
    "smallest_singular_values",
    "sigma_min",
]

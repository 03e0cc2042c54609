r"""Spectrum regularisation of convolution kernels: exact penalties, clipping, solvers.

A convolution layer with kernel ``K`` of shape ``(c_out, c_in, *k)`` is a
structured matrix ``M(K)``. Keeping its singular values near 1 (no exploding
or vanishing gradients through the layer) is done here in two ways:

* :func:`frobenius_penalty`: the penalty ``||M^T M - alpha I||_F^2`` of Guo
  (2019) and its gradient, computed exactly in kernel space at a cost that
  does not depend on the image size;
* :func:`spectral_penalty`: a 2-norm alternative built from ``sigma_max`` and
  ``sigma_min`` with gradients from the singular vectors;

and minimised by :func:`regularize_spectrum` (Guo's fixed step schedule,
gradient descent with backtracking, or L-BFGS). :func:`clip_singular_values`
is the per-frequency projection of circular layers (Sedghi, Gupta and Long,
2019).

Notes
-----
**Kronecker form.** With the taps ``d`` of the kernel and ``K_d = K[:, :, d]``
(a ``c_out x c_in`` matrix), every layer handled by
:class:`~structops.ConvND` (zero or circular padding, any stride and
dilation, 1-D, 2-D, N-D) is

.. math::

    M = \sum_d K_d \otimes E_d, \qquad E_d = E^{(1)}_{d_1} \otimes \cdots \otimes E^{(D)}_{d_D},

where ``E^{(a)}_j`` is the 0/1 matrix (``m_a x n_a``) of one axis that sends
output position ``p`` to input position ``p s + j \delta - lo`` (dropped
outside the image for zero padding, taken modulo ``n`` for circular padding).
Hence ``M^T M = \sum_{d, d'} (K_d^T K_{d'}) \otimes (E_d^T E_{d'})`` and

.. math::

    \|M^T M - \alpha I\|_F^2 = \sum_{d, d', e, e'} w(d, d', e, e')\,
        \langle K_d^T K_{d'}, K_e^T K_{e'} \rangle
      - 2 \alpha \sum_{d, d'} v(d, d')\, \langle K_d, K_{d'} \rangle + \alpha^2 N,

with the geometric weights ``w = \prod_a \langle E^{(a)T}_{d_a} E^{(a)}_{d'_a},
E^{(a)T}_{e_a} E^{(a)}_{e'_a} \rangle_F`` and ``v = \prod_a \langle
E^{(a)}_{d_a}, E^{(a)}_{d'_a} \rangle_F`` (``N`` the number of columns). Each
per-axis weight counts output pairs ``(p, \tilde p)`` with ``p s + d \delta =
\tilde p s + e \delta`` and ``p s + d' \delta = \tilde p s + e' \delta`` whose
input positions lie in the image: for zero padding it is the length of an
intersection of integer intervals (``d - e = d' - e'`` and ``s`` dividing
``(d - e) \delta``), for circular padding with ``s`` dividing ``n`` it is
``m`` or 0 (congruences modulo ``n``, which also covers images so small that
taps alias). Either way it costs ``O(1)``, so the penalty costs
``O(T^2 c^2 (T^2 + c'))`` (``T = prod(k)`` taps, ``c`` the smaller and ``c'``
the larger channel count), independent of the image size. The identity
``\langle K_d^T K_{d'}, K_e^T K_{e'} \rangle = \langle K_d K_e^T, K_{d'}
K_{e'}^T \rangle`` lets the quartic term be formed with ``c_in x c_in`` or
``c_out x c_out`` blocks, whichever is smaller (``||M^T M||_F = ||M M^T||_F``);
only the last two terms depend on the orientation, and
``||M^T M - \alpha I||^2 - ||M M^T - \alpha I||^2 = \alpha^2 (N - M_{rows})``.

For ``'same'`` zero padding on an ``n x n`` image every per-axis weight is
``n`` minus a constant once ``n >= 4r + 1`` (``r`` the kernel radius), so the
penalty is the polynomial ``n^2 L_{circ}(K) + n B(K) + C(K)``: the interior
(circular) term plus border corrections. The formula above evaluates it
exactly for every ``n``, also below ``4r + 1``.

**Gradient.** With ``R_{dd'} = \sum_{e, e'} w(d, d', e, e') K_e^T K_{e'}``
(symmetric weights: ``w(d, d', e, e') = w(e, e', d, d') = w(d', d, e', e)``),

.. math::

    \frac{\partial F}{\partial K_d} = 4 \sum_{d'} K_{d'} R_{d d'}^T - 4 \alpha \sum_{d'} v(d, d') K_{d'}.

**Circular padding with stride** ``s`` dividing ``n``: every weight is ``m =
n / s`` per axis or zero, so the penalty is ``(n/s)^D`` times a kernel-space
autocorrelation residual plus the constant ``alpha^2 N``, the form of Achour,
Malgouyres and Mamalet (2022) and Wang et al. (2020).

References
----------
P.-C. Guo, "A Frobenius norm regularization method for convolutional kernels
to avoid unstable gradient problem", arXiv:1907.11235, 2019.
H. Sedghi, V. Gupta, P. M. Long, "The singular values of convolutional
layers", ICLR 2019.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from itertools import product
from typing import Callable, ClassVar

import numpy as np

from .._backend import blas_threads, get_fft, to_numpy
from .._validate import as_int, as_real, as_real_kernel
from ..linalg._common import scale_exponent
from ..operators.conv import ConvND
from ..operators.geometry import ConvGeometry
from ._optim import Result, check_callback, gd, lbfgs

__all__ = [
    "frobenius_penalty",
    "spectral_penalty",
    "clip_singular_values",
    "extreme_singular_values",
    "regularize_spectrum",
    "guo_schedule",
    "RegularizeResult",
]

# history_every="auto" monitors sigma_max / sigma_min of layers whose smaller
# normal matrix has at most this many rows (cheap dense eigenvalues).
MONITORED_ROWS = 600

# Dense eigen-decomposition of the smaller normal matrix for the monitored
# singular values up to this size (about 50 ms at 1200 on one core).
_DENSE_GRAM_MAX = 2500


# ---------------------------------------------------------------------------
# Input checks and geometry
# ---------------------------------------------------------------------------
def _geometry(kernel_shape, in_shape, padding, stride, dilation) -> ConvGeometry:
    """The layer's geometry; an int ``in_shape`` is the side of a square (cubic) input."""
    D = len(kernel_shape) - 2
    if isinstance(in_shape, (int, np.integer)) and not isinstance(in_shape, bool):
        in_shape = (in_shape,) * D
    return ConvGeometry(kernel_shape, in_shape, stride=stride, padding=padding, dilation=dilation)


# ---------------------------------------------------------------------------
# Per-axis weights of the Kronecker form
# ---------------------------------------------------------------------------
def _zero_interval(n, m, s, dl, lo, d):
    """Output positions ``p`` in ``[0, m)`` with ``0 <= p s + d dl - lo < n``: ``(a, b)`` inclusive."""
    a = max(0, -((d * dl - lo) // s))  # ceil((lo - d dl) / s)
    b = min(m - 1, (n - 1 + lo - d * dl) // s)
    return a, b


def _axis_weights(n, m, s, dl, lo, k, circular):
    """``(v, w)``: ``v[d, d'] = <E_d, E_d'>``, ``w[d, d', e, e'] = <E_d^T E_d', E_e^T E_e'>`` on one axis."""
    v = np.zeros((k, k))
    w = np.zeros((k, k, k, k))
    if not circular:
        iv = [_zero_interval(n, m, s, dl, lo, d) for d in range(k)]
        for d in range(k):
            v[d, d] = max(0, iv[d][1] - iv[d][0] + 1)
        for d, dp, e in product(range(k), repeat=3):
            ep = dp - (d - e)
            if not 0 <= ep < k or ((d - e) * dl) % s:
                continue
            j = (d - e) * dl // s  # p~ = p + j
            a = max(iv[d][0], iv[dp][0], -j, 0)
            b = min(iv[d][1], iv[dp][1], m - 1 - j, m - 1)
            w[d, dp, e, ep] = max(0, b - a + 1)
        return v, w
    if n % s == 0:
        for d, dp in product(range(k), repeat=2):
            if ((d - dp) * dl) % n == 0:
                v[d, dp] = m
        for d, dp, e, ep in product(range(k), repeat=4):
            de, dep = (d - e) * dl, (dp - ep) * dl
            if (de - dep) % n == 0 and de % s == 0:
                w[d, dp, e, ep] = m
        return v, w
    # circular with a stride that does not divide n: count the pairs (p, p~) directly, O(k^4 m^2)
    p = np.arange(m)
    hit = {}
    for d in range(k):
        for e in range(k):
            hit[d, e] = ((p[:, None] * s + d * dl) - (p[None, :] * s + e * dl)) % n == 0
    for d, dp in product(range(k), repeat=2):
        v[d, dp] = np.count_nonzero(np.diag(hit[d, dp]))
    for d, dp, e, ep in product(range(k), repeat=4):
        w[d, dp, e, ep] = np.count_nonzero(hit[d, e] & hit[dp, ep])
    return v, w


def _weights(geo: ConvGeometry):
    """Tap weights ``V`` ``(T, T)`` and ``W`` ``(T, T, T, T)`` (indices ``d, d', e, e'``), float64."""
    V = np.ones((1, 1))
    W = np.ones((1, 1, 1, 1))
    for ax in range(geo.ndim):
        v, w = _axis_weights(geo.in_shape[ax], geo.out_shape[ax], geo.stride[ax], geo.dilation[ax], geo.padding[ax][0], geo.kernel_size[ax], geo.circular)
        V = np.einsum("ab,cd->acbd", V, v).reshape(V.shape[0] * v.shape[0], -1)
        a, b, c, d = W.shape
        k = v.shape[0]
        W = np.einsum("abcd,efgh->aebfcgdh", W, w).reshape(a * k, b * k, c * k, d * k)
    return V, W


# ---------------------------------------------------------------------------
# Frobenius penalty
# ---------------------------------------------------------------------------
def _frobenius_kernel_space(K, geo: ConvGeometry, alpha, gram, xp):
    T = geo.taps
    co, ci = geo.c_out, geo.c_in
    V, W = _weights(geo)
    Kd = xp.ascontiguousarray(K.reshape(co, ci, T).transpose(2, 0, 1))  # (T, co, ci): K_d
    if ci <= co:  # blocks C[d, e] = K_d^T K_e (c_in x c_in), one GEMM
        A = xp.ascontiguousarray(Kd.transpose(1, 0, 2)).reshape(co, T * ci)  # columns (e, j)
        C = (A.T @ A).reshape(T, ci, T, ci).transpose(0, 2, 1, 3).reshape(T * T, ci * ci)
        R = (xp.asarray(W.reshape(T * T, T * T)) @ C).reshape(T, T, ci, ci)  # R[d, e, i, j]
        quartic = float(xp.sum(C * R.reshape(T * T, ci * ci)))
        # grad[d][o, i] = 4 sum_{e, j} K_e[o, j] R[d, e, i, j]
        gq = 4.0 * (A @ R.transpose(1, 3, 0, 2).reshape(T * ci, T * ci)).reshape(co, T, ci).transpose(1, 0, 2)
    else:  # blocks C[d, e] = K_d K_e^T (c_out x c_out), one GEMM
        B = Kd.reshape(T * co, ci)  # rows (e, p)
        C = (B @ B.T).reshape(T, co, T, co).transpose(0, 2, 1, 3).reshape(T * T, co * co)
        Wp = W.transpose(0, 2, 1, 3).reshape(T * T, T * T)
        S = (xp.asarray(Wp) @ C).reshape(T, T, co, co)  # S[d, e, o, p]
        quartic = float(xp.sum(C * S.reshape(T * T, co * co)))
        # grad[d][o, i] = 4 sum_{e, p} S[d, e, o, p] K_e[p, i]
        gq = 4.0 * (S.transpose(0, 2, 1, 3).reshape(T * co, T * co) @ B).reshape(T, co, ci)
    Vx = xp.asarray(V)
    Kf = Kd.reshape(T, co * ci)
    lin = float(xp.sum(Vx * (Kf @ Kf.T)))
    glin = (Vx @ Kf).reshape(T, co, ci)
    size = geo.n_in if gram == "input" else geo.n_out
    value = quartic - 2.0 * alpha * lin + alpha**2 * size
    grad = (gq - 4.0 * alpha * glin).transpose(1, 2, 0).reshape(K.shape)
    return value, grad


def _frobenius_sparse(K, geo: ConvGeometry, alpha, gram):
    """The explicit route: ``M = sum_d K_d (x) E_d`` in ``scipy.sparse``, ``M^T M``, gradient from ``M (M^T M - a I)``."""
    K = np.asarray(to_numpy(K), dtype=np.float64)
    co, ci, T = geo.c_out, geo.c_in, geo.taps
    Mmat = geo.sparse_matrix(K)
    if gram == "input":
        G = (Mmat.T @ Mmat).tocsr()
        Z = (Mmat @ G - alpha * Mmat).tocsr()  # M (M^T M - a I)
    else:
        G = (Mmat @ Mmat.T).tocsr()
        Z = (G @ Mmat - alpha * Mmat).tocsr()  # (M M^T - a I) M
    size = G.shape[0]
    value = float(np.sum(G.data**2) - 2.0 * alpha * G.diagonal().sum() + alpha**2 * size)
    Pm, Pn = int(np.prod(geo.out_shape)), int(np.prod(geo.in_shape))
    grad = np.empty((co, ci, T))
    oo, ii = np.meshgrid(np.arange(co), np.arange(ci), indexing="ij")
    for t, (p, q) in enumerate(geo.tap_pixels()):
        rows = (oo[:, :, None] * Pm + p[None, None, :]).reshape(-1)
        cols = (ii[:, :, None] * Pn + q[None, None, :]).reshape(-1)
        vals = np.asarray(Z[rows, cols]).reshape(co, ci, -1)
        grad[:, :, t] = 4.0 * vals.sum(axis=2)
    return value, grad.reshape(K.shape)


def frobenius_penalty(kernel, in_shape, alpha=1.0, padding="same", stride=1, dilation=1, *, gram="input", method="auto"):
    r"""Exact Frobenius penalty ``||M^T M - alpha I||_F^2`` of a layer and its gradient in the kernel.

    Parameters
    ----------
    kernel : array, shape ``(c_out, c_in, k_1, ..., k_D)``
        Real, float32 or float64, NumPy or CuPy.
    in_shape : tuple of int, ``(n_1, ..., n_D)``
        Spatial shape of one input channel.
    alpha : float
        Target of the squared singular values.
    padding, stride, dilation
        As in :class:`~structops.ConvND` (``'same'``, ``'valid'``,
        ``'full'``, ``'circular'``, integers or ``(lo, hi)`` pairs).
    gram : {"input", "output"}
        ``"input"``: ``||M^T M - alpha I||^2`` (Guo's penalty, ``N x N``);
        ``"output"``: ``||M M^T - alpha I||^2``. They differ by the constant
        ``alpha^2 (N - M_rows)``.
    method : {"auto", "kernel", "sparse"}
        ``"kernel"`` (``"auto"``): the kernel-space formula of the module
        notes, exact for every padding, stride and dilation, at a cost
        independent of the image size. ``"sparse"``: the explicit route
        (``M`` assembled in ``scipy.sparse``, ``M^T M`` formed, gradient
        gathered from ``M (M^T M - alpha I)``), exact but growing with the
        image; host only, a reference.

    Returns
    -------
    value : float
    gradient : array, the kernel's shape, dtype and backend
        ``d value / d kernel``.

    Notes
    -----
    See the module notes for the formula. The value is assembled as
    ``||M^T M||^2 - 2 alpha ||M||_F^2 + alpha^2 N`` in float64 (also for
    float32 kernels), so its absolute error is about ``1e-16`` times
    ``||M^T M||_F^2``: near an exact minimiser with a tiny penalty the
    relative error of the value grows accordingly (the gradient does not
    suffer from this cancellation as much).

    Examples
    --------
    >>> import numpy as np
    >>> from structops.solvers.regularize import frobenius_penalty
    >>> K = np.random.default_rng(0).standard_normal((6, 3, 3, 3))
    >>> f, g = frobenius_penalty(K, (20, 20))
    >>> f2, _ = frobenius_penalty(K, (20, 20), method="sparse")
    >>> bool(abs(f - f2) <= 1e-12 * f), g.shape
    (True, (6, 3, 3, 3))
    """
    K, xp = as_real_kernel(kernel)
    alpha = as_real(alpha, "alpha")
    if gram not in ("input", "output"):
        raise ValueError(f"gram={gram!r}; expected 'input' (M^T M) or 'output' (M M^T)")
    if method not in ("auto", "kernel", "sparse"):
        raise ValueError(f"method={method!r}; expected 'auto', 'kernel' or 'sparse'")
    geo = _geometry(K.shape, in_shape, padding, stride, dilation)
    if method == "sparse":
        value, grad = _frobenius_sparse(K, geo, alpha, gram)
        return value, xp.asarray(grad.astype(K.dtype, copy=False))
    K64 = K.astype(np.float64, copy=False)
    # entries past 2**200: M^T M's squares overflow in float64 (inf - inf gave NaN); the kernel scaled by a power
    # of two, the value scales by its fourth power (inf where it overflows), the gradient by its third
    e = scale_exponent(K64, 200, small=False)
    with blas_threads():
        value, grad = _frobenius_kernel_space(np.ldexp(K64, -e) if e else K64, geo, alpha * 2.0 ** (-2 * e), gram, xp)
    if e:
        with np.errstate(over="ignore"):
            value, grad = float(np.ldexp(value, 4 * e)), np.ldexp(grad, 3 * e)
    return value, grad.astype(K.dtype, copy=False)


# ---------------------------------------------------------------------------
# Extreme singular values, 2-norm penalty
# ---------------------------------------------------------------------------
def _extremes(geo: ConvGeometry, K, vectors: bool):
    """``(smax, smin, triplets)``: host float64; triplets = ((u, v) largest, (u, v) smallest) or None."""
    from ..linalg.spectra import singular_values, singular_vectors

    K = np.asarray(to_numpy(K), dtype=np.float64)
    e = scale_exponent(K, 100)
    if e:  # the normal matrix's entries would overflow (or underflow): the kernel scaled by a power of two, exactly
        smax, smin, trip = _extremes(geo, np.ldexp(K, -e), vectors)
        return float(np.ldexp(smax, e)), float(np.ldexp(smin, e)), trip
    op = ConvND.from_geometry(K, geo)
    small = min(geo.n_out, geo.n_in)
    if not geo.circular and small <= _DENSE_GRAM_MAX:
        import scipy.linalg as sl

        from ..linalg.normal import normal_matrix_banded

        B = normal_matrix_banded(op)
        G = B.toarray()
        with blas_threads():
            if not vectors:
                lam = sl.eigvalsh(G)
                return math.sqrt(max(lam[-1], 0.0)), math.sqrt(max(lam[0], 0.0)), None
            lam, X = sl.eigh(G)
        out = []
        for j in (-1, 0):
            s = math.sqrt(max(lam[j], 0.0))
            x = X[:, j]
            if B.side == "input":
                y = op.matvec(x)
                u, v = y / max(np.linalg.norm(y), 1e-300), x
            else:
                y = op.rmatvec(x)
                u, v = x, y / max(np.linalg.norm(y), 1e-300)
            out.append((s, u, v))
        return out[0][0], out[1][0], ((out[0][1], out[0][2]), (out[1][1], out[1][2]))
    if not vectors:
        smax = float(singular_values(op, 1, "largest", tol=1e-10, strict=False)[0])
        smin = float(singular_values(op, 1, "smallest", tol=1e-8, strict=False)[0])
        return smax, smin, None
    s1, U1, V1 = singular_vectors(op, 1, "largest", tol=1e-10, strict=False)
    s2, U2, V2 = singular_vectors(op, 1, "smallest", tol=1e-8, strict=False)
    return float(s1[0]), float(s2[0]), ((U1[:, 0], V1[:, 0]), (U2[:, 0], V2[:, 0]))


def extreme_singular_values(kernel, in_shape, padding="same", stride=1, dilation=1):
    """``(sigma_max, sigma_min)`` of a layer; ``sigma_min`` is the ``min(M, N)``-th singular value.

    Parameters
    ----------
    kernel : array, shape ``(c_out, c_in, *k)``
    in_shape, padding, stride, dilation
        As in :class:`~structops.ConvND`.

    Returns
    -------
    (float, float)

    Notes
    -----
    Zero-padded layers whose smaller normal matrix has at most 2500 rows use
    its dense eigenvalues (the smallest is ``sigma_min^2``, with absolute
    error about ``eps sigma_max^2 / sigma_min``); others go through
    :func:`structops.singular_values` (exact FFT rule for circular layers,
    Lanczos and the banded factorisation otherwise).
    """
    K, _ = as_real_kernel(kernel)
    geo = _geometry(K.shape, in_shape, padding, stride, dilation)
    smax, smin, _ = _extremes(geo, K, vectors=False)
    return smax, smin


def _sigma_grad(geo, K64, u, v):
    """``d sigma / d K = J(v)^T u`` for the triplet ``M v = sigma u``."""
    op = ConvND.from_geometry(K64, geo)
    return np.asarray(op.jacobian(v).rmatvec(u)).reshape(K64.shape)


def spectral_penalty(kernel, in_shape, padding="same", stride=1, dilation=1, *, form="squares", target=1.0):
    r"""2-norm penalty from ``sigma_max`` and ``sigma_min`` of the layer, and its gradient.

    Parameters
    ----------
    kernel : array, shape ``(c_out, c_in, *k)``
        Real; float32/float64; NumPy or CuPy (the singular triplets are
        computed on the host in float64, the gradient is returned on the
        kernel's backend and dtype).
    in_shape, padding, stride, dilation
        As in :class:`~structops.ConvND`.
    form : {"squares", "max", "gram"}
        ``"squares"``: ``(sigma_max - t)^2 + (sigma_min - t)^2`` (smooth where
        both are simple); ``"max"``: ``max(|sigma_max - t|, |sigma_min - t|)``,
        equation (1.1) of Guo (2019); ``"gram"``: ``max(|sigma_max^2 - t^2|,
        |sigma_min^2 - t^2|)``, the spectral norm of ``G - t^2 I`` for the
        smaller normal matrix ``G``. The last two are non-smooth where the
        two terms are equal; the gradient of the active term is returned.
    target : float
        ``t``, default 1.

    Returns
    -------
    value : float
    gradient : array, the kernel's shape

    Notes
    -----
    ``sigma_min`` is the ``min(M, N)``-th singular value. For a simple
    singular value with ``M v = sigma u``, ``d sigma = u^T dM v``, so
    ``d sigma / d K = J(v)^T u`` with ``J(v)`` the kernel Jacobian of the layer
    at the input ``v`` (:meth:`structops.ConvND.jacobian`): the weight
    gradient of output ``u`` for input ``v``. At a multiple singular value
    this is one element of the subdifferential.

    Examples
    --------
    >>> import numpy as np
    >>> from structops.solvers.regularize import spectral_penalty
    >>> K = np.random.default_rng(0).standard_normal((2, 2, 3, 3))
    >>> f, g = spectral_penalty(K, (8, 8))
    >>> g.shape
    (2, 2, 3, 3)
    """
    K, xp = as_real_kernel(kernel)
    target = as_real(target, "target", positive=True)
    if form not in ("squares", "max", "gram"):
        raise ValueError(f"form={form!r}; expected 'squares', 'max' or 'gram'")
    geo = _geometry(K.shape, in_shape, padding, stride, dilation)
    value, grad, _ = _spectral_value_grad(geo, K, form, target)
    return value, xp.asarray(grad.astype(K.dtype, copy=False))


def _spectral_value_grad(geo, K, form, t):
    K64 = np.asarray(to_numpy(K), dtype=np.float64)
    smax, smin, trip = _extremes(geo, K64, vectors=True)
    (u1, v1), (u2, v2) = trip
    g1 = _sigma_grad(geo, K64, u1, v1)
    g2 = _sigma_grad(geo, K64, u2, v2)
    if form == "squares":
        value = (smax - t) ** 2 + (smin - t) ** 2
        grad = 2 * (smax - t) * g1 + 2 * (smin - t) * g2
    elif form == "max":
        a, b = abs(smax - t), abs(smin - t)
        value = max(a, b)
        grad = np.sign(smax - t) * g1 if a >= b else np.sign(smin - t) * g2
    else:
        a, b = abs(smax**2 - t**2), abs(smin**2 - t**2)
        value = max(a, b)
        grad = 2 * smax * np.sign(smax**2 - t**2) * g1 if a >= b else 2 * smin * np.sign(smin**2 - t**2) * g2
    return float(value), grad, (smax, smin)


# ---------------------------------------------------------------------------
# Clipping (circular layers)
# ---------------------------------------------------------------------------
def clip_singular_values(kernel, in_shape, lo, hi, *, dilation=1, full=False):
    r"""Clip the singular values of a circular, stride-1 layer to ``[lo, hi]`` frequency by frequency.

    Parameters
    ----------
    kernel : array, shape ``(c_out, c_in, *k)``
        Real, NumPy or CuPy. The layer is ``ConvND(kernel, in_shape,
        padding="circular", dilation=dilation)``.
    in_shape : tuple of int
    lo, hi : float
        ``0 <= lo <= hi``; ``None`` leaves that side open.
    dilation : int or tuple of int
    full : bool
        ``False`` (default): return the kernel cropped back to its support.
        ``True``: return the exact projection as a periodic filter ``h`` of
        shape ``(c_out, c_in, *in_shape)``, the layer
        ``y[o, p] = sum_{i, t} h[o, i, t] x[i, (p + t) mod n]``.

    Returns
    -------
    array
        The cropped kernel (same shape as ``kernel``) or the full filter.

    Notes
    -----
    The circular layer is block diagonalised by the Fourier modes: at each
    frequency ``omega`` it acts as the ``c_out x c_in`` matrix ``P(omega) =
    sum_t h[t] e^{2 pi i omega . t / n}``, and its singular values are those of
    all ``P(omega)`` together (Sedghi, Gupta and Long, 2019). Replacing every
    ``P = U diag(s) V^H`` by ``U diag(clip(s, lo, hi)) V^H`` and transforming
    back gives the layer nearest to the original, in the Frobenius (and
    spectral) norm, among all block circulant layers with singular values in
    ``[lo, hi]``: that is the exact projection, returned with ``full=True``.
    For real kernels ``P(-omega) = conj(P(omega))`` is preserved, so the
    filter is real.

    The projected filter is in general supported on the whole ``n``-periodic
    grid. Cropping it back to the ``k`` taps of the kernel is the Frobenius
    projection onto layers with the original support (``||M||_F^2 = n^D
    sum_t ||h_t||^2``), but the two projections do not commute: the cropped
    kernel's singular values can leave ``[lo, hi]`` again, and the crop
    loses the energy of the filter outside the support. Alternating the two
    (as in Sedghi et al.) converges slowly; exact only for ``full=True``.

    Examples
    --------
    >>> import numpy as np, structops
    >>> from structops.solvers.regularize import clip_singular_values
    >>> K = np.random.default_rng(0).standard_normal((3, 3, 3, 3))
    >>> h = clip_singular_values(K, (8, 8), 0.5, 1.0, full=True)
    >>> h.shape
    (3, 3, 8, 8)
    """
    K, xp = as_real_kernel(kernel)
    geo = _geometry(K.shape, in_shape, "circular", 1, dilation)
    lo = None if lo is None else as_real(lo, "lo", nonnegative=True)
    hi = None if hi is None else as_real(hi, "hi", nonnegative=True)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"lo = {lo} is larger than hi = {hi}; expected 0 <= lo <= hi")
    fft = get_fft(xp)
    D = geo.ndim
    # the correlation form c[t] = h[-t] on the periodic grid: F = rfftn(c) = conj(H), same singular values
    idx = geo.periodic_taps(form="correlation")
    h = geo.periodic_filter(K, form="correlation", dtype=np.float64)
    axes = tuple(range(2, 2 + D))
    F = fft.rfftn(h, axes=axes)  # F(omega) = conj(P(omega)): same singular values and vectors up to conj
    shp = F.shape
    Fm = xp.moveaxis(F.reshape(shp[:2] + (-1,)), -1, 0)  # (n_freq, c_out, c_in)
    U, s, Vh = xp.linalg.svd(Fm, full_matrices=False)
    s = xp.clip(s, lo, hi) if (lo is not None or hi is not None) else s
    Fc = xp.matmul(U * s[:, None, :], Vh)
    Fc = xp.moveaxis(Fc, 0, -1).reshape(shp)
    hc = fft.irfftn(Fc, s=geo.in_shape, axes=axes)
    if full:
        return hc.astype(K.dtype, copy=False)
    return xp.ascontiguousarray(hc[(slice(None), slice(None)) + np.ix_(*idx)]).astype(K.dtype, copy=False)


# ---------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------
def guo_schedule(iteration: int) -> float:
    """Guo's (2019) step sizes: ``1e-5`` for iterations 1-9, ``1e-4`` for 10-19, ``1e-3`` after."""
    if iteration < 10:
        return 1e-5
    if iteration < 20:
        return 1e-4
    return 1e-3


@dataclass(frozen=True)
class RegularizeResult(Result):
    """Result of :func:`regularize_spectrum`.

    Attributes
    ----------
    x : array
        The final kernel, shape, dtype and backend of the initial one (also
        readable as ``kernel``).
    fun : float
        Final penalty value.
    success : bool
        ``||grad||_F <= gtol * max(1, ||grad_0||_F)`` met (or, when the line
        search finds no decrease, ``<= 1e-4 * max(1, ||grad_0||_F)``).
    nit, nfev, message, seconds
        As in :class:`~structops.solvers.Result` (``nfev`` counts line-search
        trials; ``seconds`` includes the monitoring).
    history : dict of ndarray
        ``iteration`` (0 = the start), ``fun`` (the penalty), ``grad_norm``,
        ``step_norm`` (``||K_k - K_{k-1}||_F``) and for ``"gd"``/``"guo"``
        ``step`` (the step length) per iteration; ``sigma_max`` and
        ``sigma_min`` where monitored (NaN elsewhere, see ``history_every``).
    sigma_max, sigma_min : float
        Of the final layer (``sigma_min`` the ``min(M, N)``-th singular value).
    """

    sigma_max: float
    sigma_min: float

    _renamed: ClassVar[dict] = {"converged": "success", "n_iter": "nit", "n_evals": "nfev", "penalty": "fun"}

    @property
    def kernel(self):
        """The final kernel (``x``)."""
        return self.x


def _monitor_plan(history_every, geo, maxiter):
    """Set of iterations at which sigma_max / sigma_min are recorded (the last one always)."""
    if history_every == "auto":
        if min(geo.n_out, geo.n_in) <= MONITORED_ROWS:
            return None  # every iteration
        return set()  # large layers: monitoring is opt-in (an exact sigma_min can cost far more than the penalty)
    if isinstance(history_every, bool) or not isinstance(history_every, (int, np.integer)) or history_every < 0:
        raise ValueError(f"history_every={history_every!r}; expected 'auto' or a non-negative int")
    if history_every == 0:
        return {0}
    if history_every == 1:
        return None
    return set(range(0, maxiter + 1, int(history_every)))


def regularize_spectrum(
    kernel,
    in_shape,
    penalty="frobenius",
    alpha=1.0,
    method="lbfgs",
    maxiter=1000,
    callback=None,
    *,
    padding="same",
    stride=1,
    dilation=1,
    form="squares",
    gtol=1e-7,
    schedule: Callable[[int], float] | None = None,
    memory=10,
    history_every="auto",
):
    r"""Move the singular values of a convolution layer towards ``sqrt(alpha)`` by changing its kernel.

    Parameters
    ----------
    kernel : array, shape ``(c_out, c_in, *k)``
        Initial kernel (real; float32/float64; NumPy or CuPy: the iterates
        stay on its backend and in its dtype, arithmetic in float64).
    in_shape : tuple of int
    penalty : {"frobenius", "spectral"}
        ``"frobenius"``: :func:`frobenius_penalty` (``||M^T M - alpha I||^2``);
        ``"spectral"``: :func:`spectral_penalty` with ``form`` and target
        ``sqrt(alpha)``.
    alpha : float
        Positive.
    method : {"lbfgs", "gd", "guo"}
        ``"lbfgs"`` (default): limited-memory BFGS with a backtracking
        (Armijo) line search; ``"gd"``: gradient descent with backtracking
        and step growth; ``"guo"``: fixed steps ``schedule(it)`` without
        line search (Guo's schedule :func:`guo_schedule` by default).
    maxiter : int
    callback : callable, optional
        ``callback(iteration, kernel, penalty)`` at the start (iteration 0)
        and after every iteration, with a copy of the iterate in the dtype of
        ``kernel``; a return value of ``True`` stops the solver.
    padding, stride, dilation
        As in :class:`~structops.ConvND` (default ``'same'``, 1, 1).
    form : str
        The spectral penalty's form (see :func:`spectral_penalty`).
    gtol : float
        Converged when ``||grad||_F <= gtol * max(1, ||grad_0||_F)``.
    schedule : callable, optional
        Step sizes of ``method="guo"``.
    memory : int
        L-BFGS memory.
    history_every : "auto" or int
        Iterations at which ``sigma_max`` and ``sigma_min`` are recorded:
        every ``history_every``-th (1: all, 0: start and end only);
        ``"auto"``: all for layers whose smaller normal matrix has at most
        600 rows (cheap dense eigenvalues); larger layers record none, and
        the result's ``sigma_max``/``sigma_min`` are NaN unless an integer
        asks for them (an exact ``sigma_min`` of a large zero-padded layer
        costs far more than the penalty). The spectral penalty computes them
        anyway.

    Returns
    -------
    RegularizeResult

    Notes
    -----
    Guo's schedule is given for the gradient of ``||M^T M - I||_F^2``
    (Algorithm 3.1; the paper's (3.2) is half of it). With the exact
    gradient the fixed steps are too long for random normal kernels once
    ``sigma_min`` must move (the penalty oscillates and stalls), while a
    line search converges; ``structops regularize`` shows both.

    Examples
    --------
    >>> import numpy as np
    >>> from structops.solvers.regularize import regularize_spectrum
    >>> K = np.random.default_rng(1).standard_normal((3, 1, 3, 3))
    >>> res = regularize_spectrum(K, (12, 12), maxiter=300)
    >>> res.success, bool(0.95 < res.sigma_min <= res.sigma_max < 1.05)
    (True, True)
    """
    t0 = time.perf_counter()
    K0, xp = as_real_kernel(kernel)
    alpha = as_real(alpha, "alpha", positive=True)
    if penalty not in ("frobenius", "spectral"):
        raise ValueError(f"penalty={penalty!r}; expected 'frobenius' or 'spectral'")
    if method not in ("lbfgs", "gd", "guo"):
        raise ValueError(f"method={method!r}; expected 'lbfgs', 'gd' or 'guo'")
    maxiter = as_int(maxiter, "maxiter", minimum=0)
    check_callback(callback)
    gtol = as_real(gtol, "gtol", nonnegative=True)
    memory = as_int(memory, "memory", minimum=1)
    if form not in ("squares", "max", "gram"):
        raise ValueError(f"form={form!r}; expected 'squares', 'max' or 'gram'")
    schedule = guo_schedule if schedule is None else schedule
    if not callable(schedule):
        raise TypeError(f"schedule must be callable (iteration -> step); got {type(schedule).__name__}")
    geo = _geometry(K0.shape, in_shape, padding, stride, dilation)
    plan = _monitor_plan(history_every, geo, maxiter)
    target = math.sqrt(alpha)
    dtype = K0.dtype
    last_sig = {}  # the spectral penalty's own sigmas at the last evaluated kernel

    def known_sigmas(x):
        if "x" in last_sig and last_sig["x"].shape == x.shape and bool(xp.array_equal(last_sig["x"], x)):
            return last_sig["s"]
        return None

    def fg(x):
        if penalty == "frobenius":
            with blas_threads():
                return _frobenius_kernel_space(x, geo, alpha, "input", xp)
        f, g, sig = _spectral_value_grad(geo, x, form, target)
        last_sig.update(x=x, s=sig)
        return f, xp.asarray(g)

    def sigmas(x, it, force=False):
        known = known_sigmas(x)
        if known is not None:
            return known
        if force or plan is None or it in plan:
            smax, smin, _ = _extremes(geo, x, vectors=False)
            return smax, smin
        return (math.nan, math.nan)

    monitored = {"sigma_max": [], "sigma_min": []}

    def record(it, x):
        s = sigmas(x, it, force=it == 0 and (plan is None or bool(plan) or penalty == "spectral"))
        monitored["sigma_max"].append(s[0])
        monitored["sigma_min"].append(s[1])

    def monitor(it, x, f):
        record(it, x)
        return callback(it, x.astype(dtype, copy=False), f) if callback is not None else None

    x0 = K0.astype(np.float64)
    opts = dict(maxiter=maxiter, gtol=gtol, callback=monitor)
    if method == "lbfgs":
        out = lbfgs(fg, x0, memory=memory, **opts)
    elif method == "gd":
        out = gd(fg, x0, line_search=True, **opts)
    else:
        out = gd(fg, x0, step=schedule, **opts)
    if not monitored["sigma_max"]:  # the run ended at the start, before any callback
        record(0, out.x)
    x = out.x
    success = out.success
    if out.status == "line_search":
        success = out.history["grad_norm"][-1] <= 1e-4 * max(1.0, out.history["grad_norm"][0])
    known = known_sigmas(x)
    if known is not None:
        smax, smin = known
    elif plan is None or plan or penalty == "spectral":
        smax, smin, _ = _extremes(geo, x, vectors=False)
    else:  # not monitored: the caller asks for the spectrum when wanted
        smax = smin = math.nan
    last_sig.clear()
    history = dict(out.history)
    history["iteration"] = np.arange(out.nit + 1)
    for key, values in monitored.items():
        values = np.asarray(values[: out.nit + 1], dtype=float)
        if math.isnan(values[-1]) or out.status in ("diverged", "callback"):
            values[-1] = smax if key == "sigma_max" else smin
        history[key] = values
    message = out.message
    if out.status == "diverged" and method == "guo":
        message = f"{message}, with the fixed steps of the schedule"
    return RegularizeResult(
        x=x.astype(dtype, copy=False),
        fun=float(out.fun),
        success=bool(success),
        nit=out.nit,
        nfev=out.nfev,
        message=message,
        history=history,
        seconds=time.perf_counter() - t0,
        sigma_max=smax,
        sigma_min=smin,
    )

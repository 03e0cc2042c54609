"""Circulant and multilevel circulant operators (periodic convolution) via the FFT."""

from __future__ import annotations

import numpy as np

from .._backend import get_fft, get_xp
from .base import StructuredOperator, fixed_parameters, split_batch
from .._validate import as_data_array, as_param_array, result_dtype

__all__ = ["Circulant", "periodic_convolve"]


def periodic_convolve(c_hat, X, shape, real: bool, conj: bool = False, inverse: bool = False):
    """Periodic N-D convolution of a batch with a kernel given by its spectrum.

    Parameters
    ----------
    c_hat : array
        ``rfftn(c)`` (``real=True``, last axis halved) or ``fftn(c)``, shape
        ``shape`` (or the half shape), optionally with trailing batch axes that
        broadcast against ``X``'s.
    X : array, shape ``(prod(shape), B)``
    shape : tuple of int
    real : bool
        Use real FFTs (``c`` and ``X`` real).
    conj : bool
        Use ``conj(c_hat)``: the adjoint.
    inverse : bool
        Divide by ``c_hat`` instead of multiplying: the inverse.

    Returns
    -------
    Y : array, shape ``(prod(shape), B)``
    """
    xp = get_xp(X, c_hat)
    fft = get_fft(xp)
    D = len(shape)
    axes = tuple(range(D))
    Xs = X.reshape(*shape, X.shape[-1])
    s = c_hat if not conj else c_hat.conj()
    s = s.reshape(s.shape + (1,) * (Xs.ndim - s.ndim))
    if real:
        Xh = fft.rfftn(Xs, axes=axes)
        Xh = Xh / s if inverse else Xh * s
        Y = fft.irfftn(Xh, s=shape, axes=axes)
    else:
        Xh = fft.fftn(Xs, axes=axes)
        Xh = Xh / s if inverse else Xh * s
        Y = fft.ifftn(Xh, axes=axes)
    return Y.reshape(X.shape)


@fixed_parameters("c")
class Circulant(StructuredOperator):
    r"""Circulant (1-D) or multilevel circulant (N-D) operator.

    For a 1-D defining vector ``c`` this is the matrix
    ``scipy.linalg.circulant(c)``, ``C[i, j] = c[(i - j) mod n]``. For an N-D
    array ``c`` it is the periodic N-D convolution acting on arrays of
    ``c.shape``.

    Parameters
    ----------
    c : array, shape ``(n_1, ..., n_D)``
        First column (1-D) or convolution kernel on the periodic grid (N-D).
        Real or complex; NumPy or CuPy.

    Notes
    -----
    Forward and adjoint:

    .. math::

        (C x)[p] = \sum_q c[(p - q) \bmod n]\, x[q], \qquad
        (C^H y)[q] = \sum_p \overline{c[(p - q) \bmod n]}\, y[p].

    The DFT diagonalises ``C``: :math:`C = F^{-1} \operatorname{diag}(\hat c) F`
    with :math:`\hat c = F c`, so the eigenvalues are ``fftn(c)`` and every
    product costs ``O(N log N)``. Real ``c`` uses real FFTs (half the spectrum).

    Examples
    --------
    >>> import numpy as np, scipy.linalg, structops
    >>> c = np.array([4.0, -1.0, 0.0, -1.0])
    >>> C = structops.Circulant(c)
    >>> x = np.arange(4.0)
    >>> np.allclose(C @ x, scipy.linalg.circulant(c) @ x)
    True
    >>> np.round(C.eigenvalues().real, 12)
    array([2., 4., 6., 4.])
    >>> np.allclose(C @ C.solve(x), x)
    True
    """

    def __init__(self, c):
        c = as_param_array(c, "c")
        self.c = c
        self.xp = get_xp(c)
        self._real = c.dtype.kind == "f"
        self._hat = {}
        super().__init__(dims=c.shape, dimsd=c.shape, dtype=c.dtype, name="C")

    @property
    def spectrum_(self):
        """Cached ``rfftn(c)`` (real ``c``) or ``fftn(c)``."""
        return self._spectrum(self.c.dtype, self._real)

    def _spectrum(self, dtype, real: bool):
        """``rfftn`` or ``fftn`` of ``c`` in the precision ``dtype`` of a product, cached."""
        key = (np.dtype(dtype), real)
        if key not in self._hat:
            fft = get_fft(self.xp)
            c = self.c.astype(dtype, copy=False)
            self._hat[key] = fft.rfftn(c) if real else fft.fftn(c)
        return self._hat[key]

    def eigenvalues(self):
        """Eigenvalues of ``C`` as an array of ``c.shape``: ``fftn(c)``.

        Returns
        -------
        lam : complex array, shape ``c.shape``
            ``lam[k]`` belongs to the Fourier mode ``exp(2 pi i k.p / n)``.
        """
        return get_fft(self.xp).fftn(self.c)

    def _apply(self, X, conj=False, inverse=False):
        self._check_input(X, self.shape[1], self.c)
        dt = result_dtype(self.c, X)
        X = X.astype(dt, copy=False)
        real = dt.kind == "f"
        hat = self._spectrum(dt, real)  # complex input and real c: the full spectrum
        Y = periodic_convolve(hat, X, self.dims, real, conj=conj, inverse=inverse)
        return Y.astype(dt, copy=False)

    def _forward(self, X):
        return self._apply(X)

    def _backward(self, Y):
        return self._apply(Y, conj=True)

    def solve(self, b, rtol: float | None = None):
        """Exact solution of ``C x = b`` through the FFT.

        Parameters
        ----------
        b : array
            ``(N,)``, ``c.shape``, ``(N, B)`` or ``(*c.shape, B)``.
        rtol : float, optional
            ``C`` is declared singular when ``min |lam| <= rtol * max |lam|``;
            default ``N * eps``.

        Returns
        -------
        x : array, same shape as ``b``

        Raises
        ------
        numpy.linalg.LinAlgError
            If ``C`` is singular to working precision.
        """
        b = as_data_array(b, "b")
        xp = get_xp(b, self.c)
        X, _ = split_batch(b, self.dims, self.shape[1], "b")
        lam = xp.abs(self.spectrum_)
        lmax, lmin = float(lam.max()), float(lam.min())
        if rtol is None:
            rtol = self.shape[0] * np.finfo(result_dtype(self.c, b)).eps
        if not lmin > rtol * lmax:
            raise np.linalg.LinAlgError(
                f"circulant matrix is singular: smallest |eigenvalue| {lmin:.3e} <= "
                f"{rtol:.1e} * largest {lmax:.3e}"
            )
        return self._apply(X, inverse=True).reshape(b.shape)

    def jacobian(self, x):
        """Jacobian of ``c -> C(c) x``: the operator ``dc -> C(dc) x``.

        Since periodic convolution commutes, ``C(dc) x = C(x) dc``: for one
        vector the Jacobian is ``Circulant(x)``.

        Parameters
        ----------
        x : array, ``(N,)``, ``c.shape``, ``(N, B)`` or ``(*c.shape, B)``

        Returns
        -------
        LinearOperator
            ``dims = c.shape``, ``dimsd = c.shape`` (or ``(*c.shape, B)``).
        """
        get_xp(x, self.c)
        X, batched = split_batch(x, self.dims, self.shape[1], "x")
        if not batched:
            return Circulant(X.reshape(self.dims).astype(result_dtype(self.c, X), copy=False))
        return _CirculantBatchJacobian(X, self.dims, result_dtype(self.c, X))


class _CirculantBatchJacobian(StructuredOperator):
    """``dc -> [C(dc) x_1, ..., C(dc) x_B]`` for a batch ``X`` of shape ``(N, B)``."""

    def __init__(self, X, shape, dtype):
        self.xp = get_xp(X)
        self.X = X
        self._shape_c = tuple(shape)
        self._real = np.dtype(dtype).kind == "f"
        fft = get_fft(self.xp)
        axes = tuple(range(len(shape)))
        Xs = X.reshape(*shape, X.shape[1]).astype(dtype, copy=False)
        self._hat = fft.rfftn(Xs, axes=axes) if self._real else fft.fftn(Xs, axes=axes)
        super().__init__(dims=shape, dimsd=(*shape, X.shape[1]), dtype=dtype, name="J")

    def _forward(self, dC):
        # one (N, K) block of directions -> (N * B, K)
        B = self.X.shape[1]
        N = int(np.prod(self._shape_c))
        K = dC.shape[1]
        # C(x_b) dc for all b and k: the batch spectrum broadcasts against the directions
        fft = get_fft(self.xp)
        axes = tuple(range(len(self._shape_c)))
        Ds = dC.reshape(*self._shape_c, 1, K)
        if self._real:
            Dh = fft.rfftn(Ds, axes=axes)
            Y = fft.irfftn(Dh * self._hat[..., None], s=self._shape_c, axes=axes)
        else:
            Dh = fft.fftn(Ds, axes=axes)
            Y = fft.ifftn(Dh * self._hat[..., None], axes=axes)
        return Y.reshape(N * B, K).astype(self.dtype, copy=False)

    def _backward(self, W):
        B = self.X.shape[1]
        N = int(np.prod(self._shape_c))
        K = W.shape[1]
        fft = get_fft(self.xp)
        axes = tuple(range(len(self._shape_c)))
        Ws = W.reshape(*self._shape_c, B, K)
        if self._real:
            Wh = fft.rfftn(Ws, axes=axes)
            G = fft.irfftn((Wh * self._hat.conj()[..., None]).sum(axis=-2), s=self._shape_c, axes=axes)
        else:
            Wh = fft.fftn(Ws, axes=axes)
            G = fft.ifftn((Wh * self._hat.conj()[..., None]).sum(axis=-2), axes=axes)
        return G.reshape(N, K).astype(self.dtype, copy=False)

"""Toeplitz operators with FFT products by circulant embedding."""

from __future__ import annotations

import scipy.fft as _sp_fft

from .._backend import get_fft, get_xp
from .base import StructuredOperator, fixed_parameters, split_batch
from .._validate import as_param_array, result_dtype

__all__ = ["Toeplitz", "linear_convolve_segment"]


def linear_convolve_segment(a, B, start: int, length: int, a_hat=None, nfft: int | None = None):
    """Entries ``start:start+length`` of the full linear convolution ``a * B[:, j]``.

    Parameters
    ----------
    a : array, shape ``(La,)`` or ``(La, K)``
    B : array, shape ``(Lb, J)``
        Every column is convolved with ``a`` (with every column of ``a`` if 2-D,
        giving a result of shape ``(length, J, K)``).
    start, length : int
    a_hat : array, optional
        Precomputed ``rfft``/``fft`` of ``a`` of size ``nfft``.
    nfft : int, optional
        FFT size, at least ``La + Lb - 1`` (default: next fast length).

    Returns
    -------
    array, shape ``(length, J)`` or ``(length, J, K)``
    """
    xp = get_xp(a, B)
    fft = get_fft(xp)
    real = a.dtype.kind == "f" and B.dtype.kind == "f"
    if nfft is None:
        nfft = _sp_fft.next_fast_len(a.shape[0] + B.shape[0] - 1, real=real)
    if a_hat is None:
        a_hat = fft.rfft(a, nfft, axis=0) if real else fft.fft(a, nfft, axis=0)
    if a_hat.ndim == 2:
        a_hat = a_hat[:, None, :]
        B = B[:, :, None]
    else:
        a_hat = a_hat[:, None]
    if real:
        full = fft.irfft(fft.rfft(B, nfft, axis=0) * a_hat, nfft, axis=0)
    else:
        full = fft.ifft(fft.fft(B, nfft, axis=0) * a_hat, axis=0)
    return full[start : start + length]


@fixed_parameters("c", "r")
class Toeplitz(StructuredOperator):
    r"""Toeplitz operator, the matrix ``scipy.linalg.toeplitz(c, r)``.

    Parameters
    ----------
    c : array, shape ``(m,)``
        First column.
    r : array, shape ``(n,)``, optional
        First row; ``r[0]`` is ignored (``c[0]`` is the diagonal). Default
        ``conj(c)``, a Hermitian Toeplitz matrix.

    Notes
    -----
    With the diagonals ``t = (r[n-1], ..., r[1], c[0], ..., c[m-1])``,
    ``T[i, j] = t[i - j + n - 1]``, so

    .. math::

        (T x)_i = (t * x)_{i + n - 1}, \qquad
        (T^H y)_j = (\tilde t * y)_{j + m - 1}, \quad
        \tilde t_k = \overline{t_{m + n - 2 - k}},

    segments of linear convolutions, computed by FFTs of length
    ``>= m + 2n - 2`` (a circulant embedding): ``O((m + n) log(m + n))``.

    The parameters of :meth:`jacobian` are ``theta = (c, r[1:])`` (length
    ``m + n - 1``), or ``c`` alone when ``r`` is omitted.

    Examples
    --------
    >>> import numpy as np, scipy.linalg, structops
    >>> c, r = np.array([1.0, 2.0, 3.0]), np.array([1.0, 4.0, 5.0, 6.0])
    >>> T = structops.Toeplitz(c, r)
    >>> x = np.ones(4)
    >>> np.allclose(T @ x, scipy.linalg.toeplitz(c, r) @ x)
    True
    """

    def __init__(self, c, r=None):
        c = as_param_array(c, "c", ndim=1)
        self.symmetric = r is None
        if r is None:
            r = c.conj()
        else:
            r = as_param_array(r, "r", ndim=1)
            get_xp(c, r)
        self.c, self.r = c, r
        self.xp = get_xp(c)
        m, n = c.shape[0], r.shape[0]
        dtype = result_dtype(c, r)
        self.diagonals = self.xp.concatenate([r[:0:-1], c]).astype(dtype, copy=False)
        self._hat = {}
        super().__init__(dims=(n,), dimsd=(m,), dtype=dtype, name="T")

    @property
    def params(self):
        """The parameter vector of :meth:`jacobian`: ``(c, r[1:])`` or ``c``."""
        if self.symmetric:
            return self.c
        return self.xp.concatenate([self.c, self.r[1:]]).astype(self.dtype, copy=False)

    def _spectrum(self, adjoint: bool, dtype, nfft: int):
        """FFT of the diagonals in the precision of the product (a float32 ``T`` times float64 data is float64)."""
        real = dtype.kind == "f"
        key = (adjoint, dtype, nfft)
        if key not in self._hat:
            fft = get_fft(self.xp)
            t = self.diagonals[::-1].conj() if adjoint else self.diagonals
            t = t.astype(dtype, copy=False)
            self._hat[key] = fft.rfft(t, nfft) if real else fft.fft(t, nfft)
        return self._hat[key]

    def _apply(self, X, adjoint: bool):
        m, n = self.shape
        nin, nout = (m, n) if adjoint else (n, m)
        self._check_input(X, nin, self.diagonals)
        dtype = result_dtype(self.diagonals, X)
        X = X.astype(dtype, copy=False)
        nfft = _sp_fft.next_fast_len(m + n - 1 + nin - 1, real=dtype.kind == "f")
        t_hat = self._spectrum(adjoint, dtype, nfft)
        Y = linear_convolve_segment(self.diagonals.astype(dtype, copy=False), X, nin - 1, nout, a_hat=t_hat,
                                    nfft=nfft)
        return Y.astype(dtype, copy=False)

    def _forward(self, X):
        return self._apply(X, adjoint=False)

    def _backward(self, Y):
        return self._apply(Y, adjoint=True)

    def jacobian(self, x):
        """Jacobian of ``theta -> T(theta) x`` with ``theta = params``.

        Parameters
        ----------
        x : array, ``(n,)`` or a batch ``(n, B)``

        Returns
        -------
        LinearOperator
            From ``R^p`` (``p = m + n - 1``, or ``m`` for a symmetric ``T``) to
            ``R^m`` (or ``R^{m x B}``): ``dtheta -> T(dtheta) x``.
        """
        get_xp(x, self.c)
        if self.symmetric and self.dtype.kind == "c":
            raise ValueError(
                "the Jacobian of a Hermitian Toeplitz(c) with complex c is not complex-linear "
                "(T depends on conj(c)); pass r explicitly"
            )
        X, batched = split_batch(x, (self.shape[1],), self.shape[1], "x")
        return _ToeplitzJacobian(X, self.shape[0], self.symmetric, result_dtype(self.c, X), batched)


class _ToeplitzJacobian(StructuredOperator):
    """``theta -> T(theta) X`` for fixed ``X`` of shape ``(n, B)``."""

    def __init__(self, X, m: int, symmetric: bool, dtype, batched: bool):
        self.xp = get_xp(X)
        n, B = X.shape
        self.X, self.m, self.n, self.symmetric = X.astype(dtype, copy=False), m, n, symmetric
        p = m if symmetric else m + n - 1
        dimsd = (m, B) if batched else (m,)
        super().__init__(dims=(p,), dimsd=dimsd, dtype=dtype, name="J")

    def _diagonals(self, Theta):
        """Map parameter columns ``(p, K)`` to diagonal columns ``(m + n - 1, K)``."""
        m, n = self.m, self.n
        c = Theta[:m]
        if self.symmetric:
            r1 = c[1:n].conj()
        else:
            r1 = Theta[m:]
        return self.xp.concatenate([r1[::-1], c], axis=0)

    def _forward(self, Theta):
        m, n = self.m, self.n
        T = self._diagonals(Theta)  # (m + n - 1, K)
        Y = linear_convolve_segment(T, self.X, n - 1, m)  # (m, B, K)
        return Y.reshape(-1, Theta.shape[1]).astype(self.dtype, copy=False)

    def _backward(self, W):
        m, n = self.m, self.n
        B = self.X.shape[1]
        K = W.shape[1]
        Ws = W.reshape(m, B, K)
        # g_t[k] = sum_{i,b} conj(x_b[i - k + n - 1]) w_b[i] = sum_b (xr_b * w_b)[k],
        # xr_b the reversed conjugate of x_b: one batched FFT product summed over b
        xp = self.xp
        fft = get_fft(xp)
        real = self.dtype.kind == "f"
        nfft = _sp_fft.next_fast_len(m + n - 1, real=real)
        Xr = self.X[::-1].conj()
        if real:
            Gh = (fft.rfft(Xr, nfft, axis=0)[:, :, None] * fft.rfft(Ws, nfft, axis=0)).sum(axis=1)
            G = fft.irfft(Gh, nfft, axis=0)[: m + n - 1]
        else:
            Gh = (fft.fft(Xr, nfft, axis=0)[:, :, None] * fft.fft(Ws, nfft, axis=0)).sum(axis=1)
            G = fft.ifft(Gh, axis=0)[: m + n - 1]
        gc = G[n - 1 :]
        gr = G[n - 2 :: -1] if n > 1 else G[:0]
        if self.symmetric:
            gc = gc.copy()
            gc[1:n] += gr.conj() if self.dtype.kind == "c" else gr
            return gc.astype(self.dtype, copy=False)
        return self.xp.concatenate([gc, gr], axis=0).astype(self.dtype, copy=False)

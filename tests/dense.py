"""Independent dense reference matrices, built by explicit loops from the formulas.

Nothing here calls the operators under test, nor scipy.signal: each builder is
a direct transcription of the defining sum, so that a disagreement points at
the operator, not at a shared helper.

Conventions (C-order flattening everywhere):

* convolution layer, kernel ``(c_out, c_in, *k)``, cross-correlation::

      y[o, p] = sum_{i, d} K[o, i, d] * x[i, p*stride + d*dilation - pad_lo]

  with ``x`` zero outside ``[0, n)`` (zero padding) or taken modulo ``n``
  (circular padding); rows index ``(c_out, *out_shape)``, columns
  ``(c_in, *in_shape)``.
* Toeplitz: ``T[i, j] = c[i - j]`` for ``i >= j`` and ``r[j - i]`` for ``i < j``.
* multilevel circulant: ``C[p, q] = c[(p - q) mod shape]``.
"""

from __future__ import annotations

import itertools
import numbers

import numpy as np

__all__ = [
    "as_tuple",
    "effective_size",
    "padding_pairs",
    "out_shape",
    "dense_conv",
    "dense_toeplitz",
    "dense_circulant_nd",
]


def as_tuple(v, D: int) -> tuple:
    """``v`` (int or length-D sequence) as a length-D tuple of ints."""
    if isinstance(v, numbers.Integral):
        return (int(v),) * D
    v = tuple(int(a) for a in v)
    if len(v) != D:
        raise ValueError(f"expected {D} entries, got {v}")
    return v


def effective_size(k, dilation) -> tuple:
    """Per-axis effective kernel size ``e = dilation*(k-1)+1``."""
    k = tuple(k)
    dil = as_tuple(dilation, len(k))
    return tuple(d * (kk - 1) + 1 for kk, d in zip(k, dil))


def padding_pairs(padding, k, dilation, in_shape) -> tuple:
    """Resolve a padding spec into per-axis ``(lo, hi)`` pairs, from the rules.

    Raises ``ValueError`` where the rules say the spec is invalid (even
    effective size with ``'same'``/``'circular'``, circular wrap larger than the
    input, unknown string, wrong tuple length). It does not check that the
    output is non-empty: see :func:`out_shape`.
    """
    k = tuple(k)
    D = len(k)
    in_shape = tuple(in_shape)
    e = effective_size(k, dilation)
    if isinstance(padding, str):
        if padding in ("same", "circular"):
            pairs = []
            for a in range(D):
                if e[a] % 2 == 0:
                    raise ValueError(f"even effective kernel size {e[a]} with {padding!r}")
                if padding == "circular" and e[a] > in_shape[a]:
                    raise ValueError(f"circular wrap {e[a]} larger than input {in_shape[a]}")
                pairs.append(((e[a] - 1) // 2, (e[a] - 1) // 2))
            return tuple(pairs)
        if padding == "valid":
            return ((0, 0),) * D
        if padding == "full":
            return tuple((ea - 1, ea - 1) for ea in e)
        raise ValueError(f"unknown padding {padding!r}")
    if isinstance(padding, numbers.Integral):
        return ((int(padding), int(padding)),) * D
    padding = tuple(padding)
    if len(padding) != D:
        raise ValueError(f"padding {padding} has {len(padding)} entries, expected {D}")
    pairs = []
    for p in padding:
        if isinstance(p, numbers.Integral):
            pairs.append((int(p), int(p)))
        else:
            lo, hi = p
            pairs.append((int(lo), int(hi)))
    return tuple(pairs)


def out_shape(in_shape, k, stride, pairs, dilation) -> tuple:
    """Per-axis ``floor((n + lo + hi - e)/stride) + 1`` (may be < 1: invalid)."""
    D = len(k)
    s = as_tuple(stride, D)
    e = effective_size(k, dilation)
    return tuple(
        (n + lo + hi - ea) // sa + 1 for n, (lo, hi), ea, sa in zip(in_shape, pairs, e, s)
    )


def dense_conv(kernel, in_shape, stride, padding_pairs, dilation, circular) -> np.ndarray:
    """Dense ``(M, N)`` matrix of the convolution layer, by loops over o, i, p, d."""
    K = np.asarray(kernel)
    return _dense_layer(lambda o, i, d, p: K[(o, i, *d)], K.shape[:2], K.shape[2:], K.dtype,
                        in_shape, stride, padding_pairs, dilation, circular)


def dense_extended(weights, in_shape, stride, padding_pairs, dilation, circular) -> np.ndarray:
    """Dense matrix of the extended layer: weights ``(c_out, c_in, *k, *out)``, tap d of pixel p."""
    w = np.asarray(weights)
    D = len(tuple(in_shape))
    return _dense_layer(lambda o, i, d, p: w[(o, i, *d, *p)], w.shape[:2], w.shape[2:2 + D], w.dtype,
                        in_shape, stride, padding_pairs, dilation, circular)


def _dense_layer(value, channels, k, dtype, in_shape, stride, padding_pairs, dilation, circular):
    """Loops over o, i, p, d; ``value(o, i, d, p)`` is the weight of tap d at output pixel p."""
    c_out, c_in = channels
    k = tuple(k)
    D = len(k)
    in_shape = tuple(in_shape)
    s = as_tuple(stride, D)
    dil = as_tuple(dilation, D)
    pairs = tuple(tuple(p) for p in padding_pairs)
    oshape = out_shape(in_shape, k, s, pairs, dil)
    if min(oshape) < 1:
        raise ValueError(f"empty output {oshape}")
    M = c_out * int(np.prod(oshape))
    N = c_in * int(np.prod(in_shape))
    A = np.zeros((M, N), dtype=np.result_type(dtype, np.float64))
    out_positions = list(itertools.product(*(range(m) for m in oshape)))
    offsets = list(itertools.product(*(range(kk) for kk in k)))
    for o in range(c_out):
        for i in range(c_in):
            for p in out_positions:
                row = np.ravel_multi_index((o, *p), (c_out, *oshape))
                for d in offsets:
                    idx = []
                    inside = True
                    for a in range(D):
                        j = p[a] * s[a] + d[a] * dil[a] - pairs[a][0]
                        if circular:
                            j %= in_shape[a]
                        elif not 0 <= j < in_shape[a]:
                            inside = False
                            break
                        idx.append(j)
                    if not inside:
                        continue
                    col = np.ravel_multi_index((i, *idx), (c_in, *in_shape))
                    A[row, col] += value(o, i, d, p)
    return A


def dense_toeplitz(c, r=None) -> np.ndarray:
    """``T[i, j] = c[i-j]`` (i >= j), ``r[j-i]`` (i < j); ``r=None`` means ``conj(c)``."""
    c = np.asarray(c).ravel()
    r = np.conj(c) if r is None else np.asarray(r).ravel()
    m, n = len(c), len(r)
    T = np.zeros((m, n), dtype=np.result_type(c.dtype, r.dtype, np.float64))
    for i in range(m):
        for j in range(n):
            T[i, j] = c[i - j] if i >= j else r[j - i]
    return T


def dense_circulant_nd(c) -> np.ndarray:
    """Multilevel circulant ``C[p, q] = c[(p - q) mod shape]``, loops over p and q."""
    c = np.asarray(c)
    shape = c.shape
    N = int(np.prod(shape))
    C = np.zeros((N, N), dtype=np.result_type(c.dtype, np.float64))
    positions = list(itertools.product(*(range(n) for n in shape)))
    for row, p in enumerate(positions):
        for col, q in enumerate(positions):
            C[row, col] = c[tuple((pa - qa) % n for pa, qa, n in zip(p, q, shape))]
    return C

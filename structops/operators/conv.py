"""Convolution layers of CNNs (1-D, 2-D, 3-D, multi-channel) as structured operators.

A layer with zero padding is a (doubly, triply) block Toeplitz matrix; with
``padding="circular"`` it is block circulant. Two algorithms compute the same
products:

* ``"direct"``: shifted matrix products. The padded input is split into
  ``prod(stride)`` polyphase components laid out flat, so that every kernel tap
  is a plain offset into one contiguous array; one GEMM per phase multiplies all
  taps by the channel matrices and the taps are summed by shifted adds. Cost
  ``O(c_out c_in prod(k) N)``, in large BLAS calls (no per-tap small GEMMs,
  which multi-threaded BLAS handles badly on small machines). A batch keeps
  the columns' own order, ``(c, *space, B)``: neighbouring pixels are ``B``
  entries apart and the offsets scale by ``B``, so the inputs and outputs are
  padded and cropped but never transposed (the transposes took 10 to 40% of a
  product). A layer with one input channel per group (depthwise) multiplies
  elementwise, on NumPy one ``einsum`` a phase over a strided view of its taps.
* ``"fft"``: products on the periodic grid of the padded input, with the
  channel mixing done frequency by frequency. Cost
  ``O((c_in + c_out) N log N + c_in c_out N)``, independent of the kernel size.

``method="auto"`` picks the cheaper one from an operation count.
"""

from __future__ import annotations

import contextlib

import math

import numpy as np
import scipy.fft as _sp_fft

from .._backend import device_constant, get_fft, get_xp
from .. import _threads
from .._threads import block_count, run_blocks
from .base import StructuredOperator, fixed_parameters, split_batch
from .._validate import as_param_array, check_memory, result_dtype
from . import torch_kernels
from .geometry import ConvGeometry, batch_last, batch_second

__all__ = ["ConvND", "Conv1D", "Conv2D", "Conv3D", "require_ungrouped"]


def require_ungrouped(op, what: str):
    """Raise ``NotImplementedError`` for a grouped layer where ``what`` takes ungrouped ones only."""
    g = getattr(op, "groups", 1)
    if g > 1:
        raise NotImplementedError(
            f"{what} takes ungrouped layers; this one has groups={g}: apply it to each of op.group_layers()"
        )

def _take_taps(Kt, taps):
    """``Kt[:, :, taps]`` with the tap indices on the backend of ``Kt``."""
    xp = get_xp(Kt)
    if xp is np:
        return Kt[:, :, taps]
    key = ("taps",) + tuple(int(t) for t in taps)
    return Kt[:, :, device_constant(xp, key, lambda: np.asarray(taps, dtype=np.intp))]


# -- direct algorithm -----------------------------------------------------------
# Grouped layers (``groups = g``): the kernel is ``(c_out, c_in / g, T)`` and the
# channel products are batched over the groups, ``(g, ., .)`` matrices; a
# depthwise-like layer (one input channel per group) multiplies elementwise.
# Bytes of the three rows (input, product, sum) a block of groups keeps in cache in the
# elementwise (depthwise) products: 32 groups of a 58x58 image measured fastest here.
GROUP_BLOCK_BYTES = 2.5 * 2**20


def _group_block(row: int, itemsize: int, g: int) -> int:
    """Groups per block of the elementwise products: ``3 x rows x row`` entries within the budget."""
    return int(min(g, max(1, GROUP_BLOCK_BYTES // (3 * row * itemsize))))


# On NumPy, the elementwise products of a phase are one ``einsum`` over a strided view of all
# its taps: a multiply-add per tap in one pass, where a product and an add take two (1.6x
# faster for 256 depthwise channels on 56x56). The adjoint gathers (``x[q] = sum_t K_t y[q -
# off_t]``) from an output grid with ``max_off`` leading zeros, so it writes every entry once.
_TAP_AXES = "abcdefhiklmnprstuvwxyz"  # the tap axes, no clash with g, j, o, q


def _einsum_taps(geo: ConvGeometry, xp, step: int) -> bool:
    """Whether the elementwise products of this layer run as ``einsum`` over tap views.

    Only for batches (``step = B > 1``): for one image the last tap axis has
    the pixels' own stride, and ``einsum``'s iterator, with the tie, ran the
    taps innermost (27 ms against 5.5 ms for 256 depthwise channels on 56x56).
    """
    return xp is np and step > 1 and geo.c_in == geo.groups and all(gr is not None for gr in geo.tap_grids)


def _tap_view(a, start: int, shape: tuple, strides, length: int):
    """Read-only view ``v[..., *k, j] = a[..., start + k . strides + j]`` (strides in entries, may be negative)."""
    it = a.itemsize
    return np.lib.stride_tricks.as_strided(
        a[..., start:], shape=a.shape[:-1] + tuple(shape) + (length,),
        strides=a.strides[:-1] + tuple(st * it for st in strides) + (it,), writeable=False)


def _tap_matrices(geo: ConvGeometry, Kt, g: int, adjoint: bool) -> list:
    """Per phase, the taps of ``Kt`` (``(c_out, c_in / g, T)``) laid out for :func:`_direct_forward`'s
    products: ``(g, c_out / g, T_ph, c_in / g)``; or, ``adjoint``, conjugated for
    :func:`_direct_adjoint`'s: ``(g, c_in / g, T_ph, c_out / g)``.

    Contiguous, groups first and then the channels a product writes, so that
    ``m[g0:g1]`` serves a block of groups and ``m[:, c0:c1]`` a block of an
    ungrouped layer's output (forward) or input (adjoint) channels, both views.
    A layer keeps its own (:meth:`ConvND._prepared_taps`): laying out the
    kernel is a copy of it, and on small images it was most of a product (512 ->
    512 channels, 3x3, on 2x2: the forward 10.3 ms a product, 4.6 ms with the
    layout kept).
    """
    xp = get_xp(Kt)
    co, cig = Kt.shape[0], Kt.shape[1]
    cog = co // g
    mats = []
    for ph, taps, offs in geo.scaled_phases(1)[0]:
        Kg = _take_taps(Kt, taps).reshape(g, cog, cig, len(taps))
        if adjoint:
            Kg = Kg.conj() if Kg.dtype.kind == "c" else Kg
            mats.append(xp.ascontiguousarray(Kg.transpose(0, 2, 3, 1)))
        else:
            mats.append(xp.ascontiguousarray(Kg.transpose(0, 1, 3, 2)))
    return mats


def _chunk_buffers(xp, chunks, shape: tuple, dtype):
    """``(j0, j1, b)`` for each chunk, ``b`` a ``shape + (j1 - j0,)`` view of one buffer made for the first.

    A fresh temporary a chunk was a fresh mapping a chunk (16 -> 16 channels
    3x3 on 64x64, float64 batch 2: 2000 page faults and 6.5 to 7.3 ms a
    product, 1.8 ms with the buffer). Uninitialised.
    """
    buf = None
    rows = int(np.prod(shape))
    for j0, j1 in chunks:
        if buf is None:  # the first chunk is the longest
            buf = xp.empty(rows * (j1 - j0), dtype=dtype)
        yield j0, j1, buf[: rows * (j1 - j0)].reshape(tuple(shape) + (j1 - j0,))


def _chunk_products(xp, A, X, chunks, dtype):
    """``(j0, j1, A @ X[:, :, j0:j1])`` for each chunk, all written into one buffer (:func:`_chunk_buffers`).

    ``A``: ``(g, r, k)``; ``X``: ``(g, k, L)``.
    """
    for j0, j1, b in _chunk_buffers(xp, chunks, A.shape[:2], dtype):
        yield j0, j1, xp.matmul(A, X[:, :, j0:j1], out=b)


def _direct_forward(geo: ConvGeometry, Kt, phases, co: int, step: int = 1, mats=None):
    """``Kt``: ``(c_out, c_in / g, T)`` taps; ``phases``: ``(nphase, c_in, L)`` -> ``(c_out, L)``.

    ``step``: entries between neighbouring cells (``B`` for ``batch_last`` buffers, else 1);
    ``mats``: :func:`_tap_matrices` of ``Kt`` if the caller keeps them.
    """
    xp = get_xp(phases, Kt)
    L = phases.shape[2]
    tap_phases, max_off = geo.scaled_phases(step)
    n_valid = L - max_off
    dtype = np.result_type(Kt.dtype, phases.dtype)
    g, cig = phases.shape[1] // Kt.shape[1], Kt.shape[1]
    cog = co // g
    if cig == 1:  # the first tap writes the outputs: only the tail past the valid range needs zeros
        out = xp.empty((co, L), dtype=dtype)
        out[:, n_valid:] = 0
    else:
        out = xp.zeros((co, L), dtype=dtype)
    og = out.reshape(g, cog, L)
    einsum = cig == 1 and _einsum_taps(geo, xp, step)
    if mats is None:
        mats = _tap_matrices(geo, Kt, g, adjoint=False)
    for n_ph, (ph, taps, offs) in enumerate(tap_phases):
        Kg = mats[n_ph]  # (g, cog, T_ph, cig)
        x = phases[ph].reshape(g, cig, L)
        if einsum:  # y[o, j] = sum_k K[o, k] x[start + k . strides + j], groups in cache-sized blocks
            shape, strides = geo.tap_grids[n_ph]
            spec = f"go{_TAP_AXES[:geo.ndim]},g{_TAP_AXES[:geo.ndim]}j->goj"
            Kk = Kg.reshape((g, cog) + shape)
            r = _group_block(L * cog, dtype.itemsize, g)
            for i0 in range(0, g, r):
                i1 = min(g, i0 + r)
                v = _tap_view(x[i0:i1, 0], offs[0], shape, [st * step for st in strides], n_valid)
                if n_ph == 0:
                    np.einsum(spec, Kk[i0:i1], v, out=og[i0:i1, :, :n_valid])
                else:
                    og[i0:i1, :, :n_valid] += np.einsum(spec, Kk[i0:i1], v)
            continue
        if cig == 1:  # one input channel per group: no channel sum, groups in cache-sized blocks
            r = _group_block(L * cog, dtype.itemsize, g)
            buf = xp.empty((r, cog, n_valid), dtype=dtype)
            for i0 in range(0, g, r):
                i1 = min(g, i0 + r)
                b, o = buf[: i1 - i0], og[i0:i1, :, :n_valid]
                for t, off in enumerate(offs):
                    if n_ph == 0 and t == 0:
                        xp.multiply(Kg[i0:i1, :, t], x[i0:i1, :, off : off + n_valid], out=o)
                        continue
                    xp.multiply(Kg[i0:i1, :, t], x[i0:i1, :, off : off + n_valid], out=b)
                    o += b
            continue
        if cig < cog:
            # fewer inputs than outputs: copy the shifted inputs (taps x c_in rows) and mix them in one
            # product, instead of shifting and adding taps x c_out rows of products
            chunks = geo.chunks(n_valid, g * len(taps) * cig, dtype.itemsize)
            for j0, j1, cols in _chunk_buffers(xp, chunks, (g, len(taps), cig), x.dtype):  # written whole
                for t, off in enumerate(offs):
                    cols[:, t] = x[:, :, j0 + off : j1 + off]
                og[:, :, j0:j1] += xp.matmul(Kg.reshape(g, cog, len(taps) * cig), cols.reshape(g, len(taps) * cig, j1 - j0))
            continue
        # every tap's product of a chunk of inputs at once, added to the outputs it reaches (p = j - off)
        Kr = Kg.reshape(g, cog * len(taps), cig)
        for j0, j1, Z in _chunk_products(xp, Kr, x, geo.chunks(L, g * Kr.shape[1], dtype.itemsize), dtype):
            Z = Z.reshape(g, cog, len(taps), -1)
            for t, off in enumerate(offs):
                p0, p1 = max(j0 - off, 0), min(j1 - off, n_valid)
                if p0 < p1:
                    og[:, :, p0:p1] += Z[:, :, t, p0 + off - j0 : p1 + off - j0]
    return out


def _phase_buffer(xp, geo: ConvGeometry, tap_phases, ci: int, L: int, dtype):
    """``(nphase, ci, L)``, uninitialised but for the phases no tap reads (zeros): the others are written whole."""
    G = xp.empty((geo.nphase, ci, L), dtype=dtype)
    read = {ph for ph, _, _ in tap_phases}
    for ph in range(geo.nphase):
        if ph not in read:
            G[ph] = 0
    return G


def _direct_adjoint(geo: ConvGeometry, Kt, ext, ci: int, step: int = 1, mats=None, elementwise=None):
    """Adjoint of :func:`_direct_forward`: ``(c_out, L)`` -> ``(nphase, c_in, L)``.

    ``mats``: :func:`_tap_matrices` of ``Kt`` (``adjoint=True``) if the caller keeps them;
    ``elementwise``: multiply elementwise, for one input channel per group (the
    default when ``Kt`` has one): not for a block of one input channel of an
    ungrouped layer, whose taps and outputs are many (64 -> 3 channels, 7x7:
    2.8x slower elementwise).
    """
    xp = get_xp(ext, Kt)
    L = ext.shape[1]
    tap_phases, max_off = geo.scaled_phases(step)
    n_valid = L - max_off
    dtype = np.result_type(Kt.dtype, ext.dtype)
    cig = Kt.shape[1]
    g = ci // cig
    cog = Kt.shape[0] // g
    eg = ext.reshape(g, cog, L)
    elementwise = cig == 1 if elementwise is None else elementwise
    if elementwise:  # each phase's first tap writes its window, with zeros around it
        G = _phase_buffer(xp, geo, tap_phases, ci, L, dtype)
    else:
        G = xp.zeros((geo.nphase, ci, L), dtype=dtype)
    if mats is None:
        mats = _tap_matrices(geo, Kt, g, adjoint=True)
    for (ph, taps, offs), Kg in zip(tap_phases, mats):  # Kg: (g, cig, T_ph, cog)
        gg = G[ph].reshape(g, cig, L)
        if elementwise:
            gg[:, :, : offs[0]] = 0
            gg[:, :, offs[0] + n_valid :] = 0
            r = _group_block(L * cog, dtype.itemsize, g)
            buf = xp.empty((r, cog, n_valid), dtype=dtype)
            for i0 in range(0, g, r):
                i1 = min(g, i0 + r)
                b = buf[: i1 - i0]
                for t, off in enumerate(offs):
                    o = gg[i0:i1, 0, off : off + n_valid]
                    if t == 0 and cog == 1:
                        xp.multiply(Kg[i0:i1, 0, t], eg[i0:i1, 0, :n_valid], out=o)
                        continue
                    xp.multiply(Kg[i0:i1, 0, t, :, None], eg[i0:i1, :, :n_valid], out=b)
                    if t == 0:
                        xp.sum(b, axis=1, out=o)
                    else:
                        o += b.sum(axis=1) if cog > 1 else b[:, 0]
            continue
        if len(taps) > 1 and 4 * cog <= cig:
            # a quarter as many outputs as inputs or fewer: copy the shifted outputs (taps x c_out rows) and mix
            # them in one product, instead of taps x c_in rows of products shifted and added (float64 on
            # 64x64: 1 <- 64 channels 3x3, 6 to 10 ms a product that way and 0.4 to 0.6 ms this way; 3 <- 64
            # 7x7, 21 to 28 and 4 to 6 ms; 16 <- 64 about the same, 4 to 6 ms). At half as many (32 <- 64 on
            # 32x32, batch 8: 8.3 against 11.2 ms) and for single taps the shifted adds were faster
            T = len(taps)
            KH = Kg.reshape(g, cig, T * cog)
            chunks = geo.chunks(L, g * T * cog, eg.dtype.itemsize)
            for j0, j1, cols in _chunk_buffers(xp, chunks, (g, T, cog), eg.dtype):
                for t, off in enumerate(offs):  # cols[:, t, :, q - j0] = y[:, :, q - off], zero elsewhere
                    a, b = min(max(off - j0, 0), j1 - j0), max(min(n_valid + off - j0, j1 - j0), 0)
                    cols[:, t, :, :a] = 0
                    cols[:, t, :, b:] = 0
                    if a < b:
                        cols[:, t, :, a:b] = eg[:, :, a + j0 - off : b + j0 - off]
                if xp is np:  # BLAS writes the strided rows in place
                    np.matmul(KH, cols.reshape(g, T * cog, j1 - j0), out=gg[:, :, j0:j1])
                else:  # CuPy's matmul takes no strided out (its copy-back is not documented)
                    gg[:, :, j0:j1] = xp.matmul(KH, cols.reshape(g, T * cog, j1 - j0))
            continue
        KrH = Kg.reshape(g, cig * len(taps), cog)
        chunks = geo.chunks(n_valid, g * KrH.shape[1], dtype.itemsize)
        for j0, j1, Z in _chunk_products(xp, KrH, eg, chunks, dtype):  # products land shifted
            Z = Z.reshape(g, cig, len(taps), -1)
            for t, off in enumerate(offs):
                gg[:, :, j0 + off : j1 + off] += Z[:, :, t]
    return G


def _gather_adjoint(geo: ConvGeometry, Kt, eh, step: int, lead: int):
    """``G[ph][i, q] = sum_{o, k} conj(K[o, k]) y[o, q - start - k . strides]`` for one input channel per group.

    The adjoint of :func:`_direct_forward` for :func:`_einsum_taps` layers.
    ``eh``: ``(g, c_out / g, lead + L)``, the output cells after ``lead >=
    max_off`` zeros per channel; every phase a tap reads is written whole.
    """
    g, cog = eh.shape[0], eh.shape[1]
    L = eh.shape[2] - lead
    dtype = np.result_type(Kt.dtype, eh.dtype)
    tap_phases, _ = geo.scaled_phases(step)
    G = _phase_buffer(np, geo, tap_phases, g, L, dtype)
    r = _group_block((lead + L) * cog, np.dtype(dtype).itemsize, g)
    for (ph, taps, offs), (shape, strides) in zip(tap_phases, geo.tap_grids):
        Kk = _take_taps(Kt, taps).conj().reshape((g, cog) + shape)
        spec = f"go{_TAP_AXES[:geo.ndim]},go{_TAP_AXES[:geo.ndim]}q->gq"
        for i0 in range(0, g, r):
            i1 = min(g, i0 + r)
            v = _tap_view(eh[i0:i1], lead - offs[0], shape, [-st * step for st in strides], L)
            np.einsum(spec, Kk[i0:i1], v, out=G[ph, i0:i1])
    return G


def _direct_kernel_grad(geo: ConvGeometry, phases, ext, co: int, ci: int, step: int = 1):
    """``G[o, i, t] = sum_j conj(x_t[i, j]) w[o, j]``: the adjoint in the kernel, ``(c_out, c_in / g, T)``.

    ``ci`` is the channel count per group (``c_in`` for ungrouped layers).
    """
    xp = get_xp(phases, ext)
    L = ext.shape[1]
    tap_phases, max_off = geo.scaled_phases(step)
    n_valid = L - max_off
    dtype = np.result_type(phases.dtype, ext.dtype)
    g = phases.shape[1] // ci
    cog = co // g
    G = xp.empty((co, ci, geo.taps), dtype=dtype)
    Gg = G.reshape(g, cog, ci, geo.taps)
    w = ext[:, :n_valid].reshape(g, cog, n_valid)
    for ph, taps, offs in tap_phases:
        x = phases[ph].reshape(g, ci, L)
        for t, off in zip(taps, offs):
            Gg[:, :, :, t] = xp.matmul(w, x[:, :, off : off + n_valid].conj().transpose(0, 2, 1))
    return G


# -- FFT algorithm -----------------------------------------------------------------
class _FFTPlan:
    """Periodic-grid form of a layer: ``z = h (*) xx`` on a grid of size ``F``, ``y = z[::stride]``.

    ``xx`` is the input zero-extended to ``F`` (or ``F = n`` for circular
    padding), and ``h[(lo - d * dilation) mod F] = K[:, :, d]``, so that
    ``z[m] = sum_d K[d] xx[(m + d * dilation - lo) mod F]``. Spectra are kept
    frequency-first, ``(n_freq, channels, B)``, so that the channel mixing is
    one batched matrix product over frequencies.
    """

    def __init__(self, geo: ConvGeometry, real: bool):
        self.geo, self.real = geo, real
        if geo.circular:
            self.F = tuple(geo.in_shape)
        else:
            # the padded length: no read wraps into the image, no two taps share a
            # slot, and every output position has its own slot
            self.F = tuple(
                _sp_fft.next_fast_len(n + lo + hi, real=real) for n, (lo, hi) in zip(geo.in_shape, geo.padding)
            )
        self.Fh = self.F[:-1] + (self.F[-1] // 2 + 1,) if real else self.F
        self.axes = tuple(range(2, 2 + geo.ndim))
        check_memory(float(np.prod(self.F)) * 16 * (geo.c_in + geo.c_out + geo.c_in * geo.c_out),
                     "the FFT grid of the layer")
        self.idx = geo.periodic_taps(self.F)

    def _ix(self, xp):
        """Open mesh of the tap positions ``idx`` (``np.ix_``) on the backend ``xp``."""
        if xp is np:
            return np.ix_(*self.idx)
        D = len(self.idx)
        return tuple(
            device_constant(xp, ("ix", tuple(int(v) for v in i), ax, D),
                            lambda i=i, ax=ax: i.reshape((-1,) + (1,) * (D - 1 - ax)))
            for ax, i in enumerate(self.idx)
        )

    def _fft(self, a):
        """``(c, B, *space)`` -> frequency-first ``(n_freq, c, B)`` (zero-extended to ``F``)."""
        xp = get_xp(a)
        fft = get_fft(xp)
        A = fft.rfftn(a, s=self.F, axes=self.axes) if self.real else fft.fftn(a, s=self.F, axes=self.axes)
        return xp.ascontiguousarray(xp.moveaxis(A.reshape(A.shape[:2] + (-1,)), -1, 0))

    def _ifft(self, A):
        """Frequency-first ``(n_freq, c, B)`` -> ``(c, B, *F)``."""
        xp = get_xp(A)
        fft = get_fft(xp)
        a = xp.moveaxis(A, 0, -1).reshape(A.shape[1:] + self.Fh)
        return fft.irfftn(a, s=self.F, axes=self.axes) if self.real else fft.ifftn(a, s=self.F, axes=self.axes)

    def kernel_spectrum(self, K):
        """``(c_out, c_in, *k)`` kernel -> ``(n_freq, c_out, c_in)``: the symbol of the layer on the grid ``F``.

        Equal to ``geo.symbol(K, F)`` (see :mod:`structops.operators.geometry`);
        the taps are placed with a device copy of the index mesh. They never
        share a slot here: the grid is at least the padded input (zero padding)
        or the input with ``e <= n`` (circular padding).
        """
        xp = get_xp(K)
        h = xp.zeros(K.shape[:2] + self.F, dtype=K.dtype)
        h[(slice(None), slice(None)) + self._ix(xp)] = K
        return self._fft(h)

    def input_spectrum(self, X, c: int):
        """``(c * N, B)`` -> ``(n_freq, c, B)``."""
        x = batch_second(X.reshape((c,) + self.geo.in_shape + (X.shape[1],)))
        return self._fft(x)

    def _subsample(self):
        return (slice(None), slice(None)) + tuple(
            slice(0, s * (o - 1) + 1, s) for s, o in zip(self.geo.stride, self.geo.out_shape)
        )

    def output_spectrum(self, Y, c: int):
        """``(c * M, B)`` -> spectrum of the zero-upsampled output, ``(n_freq, c, B)``."""
        xp = get_xp(Y)
        B = Y.shape[1]
        z = xp.zeros((c, B) + self.F, dtype=Y.dtype)
        z[self._subsample()] = batch_second(Y.reshape((c,) + self.geo.out_shape + (B,)))
        return self._fft(z)

    @staticmethod
    def mix(H, Xf, adjoint: bool, groups: int = 1):
        """Per-frequency channel mixing ``Z = H X`` (or ``H^H X``), all ``(n_freq, ., .)``.

        ``H`` is ``(n_freq, c_out, c_in / groups)``: for ``groups > 1`` the
        stack of the groups' diagonal blocks.
        """
        xp = get_xp(H, Xf)
        nf, co, cig = H.shape
        g = groups
        if g > 1:
            Hg = H.reshape(nf, g, co // g, cig)
            Xg = Xf.reshape(nf, g, -1, Xf.shape[2])
            if Hg.shape[2] == 1 and Hg.shape[3] == 1:  # depthwise: elementwise
                Z = (Hg.conj() if adjoint else Hg) * Xg
            elif adjoint:
                Z = xp.matmul(Hg.transpose(0, 1, 3, 2), Xg.conj()).conj()
            else:
                Z = xp.matmul(Hg, Xg)
            return Z.reshape(nf, -1, Xf.shape[2])
        if co * cig <= 16:  # few channels: broadcast products beat tiny GEMMs
            if adjoint:
                H = H.conj().transpose(0, 2, 1)
            Z = H[:, :, 0, None] * Xf[:, None, 0, :]
            for i in range(1, H.shape[2]):
                Z += H[:, :, i, None] * Xf[:, None, i, :]
            return Z
        if adjoint:  # H^H X = conj(H^T conj(X)); the transpose is a free BLAS flag
            return xp.matmul(H.transpose(0, 2, 1), Xf.conj()).conj()
        return xp.matmul(H, Xf)

    def forward(self, H, Xf):
        """Output ``(c_out * M, B)`` from kernel and input spectra."""
        y = self._ifft(self.mix(H, Xf, adjoint=False, groups=self.geo.groups))[self._subsample()]
        return batch_last(y).reshape(-1, y.shape[1])

    def adjoint(self, H, Zf):
        """Input-space ``(c_in * N, B)`` from the kernel spectrum and an output spectrum."""
        xx = self._ifft(self.mix(H, Zf, adjoint=True, groups=self.geo.groups))
        x = xx[(slice(None), slice(None)) + tuple(slice(0, n) for n in self.geo.in_shape)]
        return batch_last(x).reshape(-1, x.shape[1])

    def kernel_grad(self, Xf, Zf):
        """``G[o, i, d] = sum_p conj(xx[i, p s + d dil - lo]) w[o, p]``, shape ``(c_out, c_in, *k)``."""
        xp = get_xp(Xf, Zf)
        g = self.geo.groups
        if g > 1:  # the groups' diagonal blocks only: (n_freq, c_out, c_in / g)
            nf, co, B = Zf.shape
            S = xp.matmul(Zf.reshape(nf, g, co // g, B), Xf.reshape(nf, g, -1, B).conj().transpose(0, 1, 3, 2))
            S = S.reshape(nf, co, -1)
        else:
            S = xp.matmul(Zf, Xf.conj().transpose(0, 2, 1))  # (n_freq, c_out, c_in), summed over B
        corr = self._ifft(S)  # corr[o, i, t] = sum_m w_up[o, m] conj(xx[i, m - t]); t = lo - d dil
        return corr[(slice(None), slice(None)) + self._ix(xp)]


def _fft_cheaper(geo: ConvGeometry, co: int, ci: int) -> bool:
    """Choose between the direct and the FFT algorithm from a time model.

    Times per image in nanoseconds, fitted on a 2-core x86 machine with one
    BLAS thread: the direct algorithm costs ``T * cell * (0.9 + 0.23 c_out +
    0.038 c_out c_in)`` (shifted adds, GEMM), the FFT one
    ``0.2 (c_in + c_out) F log2 F + 0.8 c_out c_in F / 2`` (transforms,
    per-frequency channel mixing), ``F`` the periodic grid size.
    """
    direct = geo.taps * geo.cell * (0.9 + 0.23 * co + 0.038 * co * ci)
    F = 1.0
    for n, (lo, hi) in zip(geo.in_shape, geo.padding):
        F *= n if geo.circular else n + lo + hi
    fft = 0.2 * (co + ci) * F * math.log2(max(F, 2.0)) + 0.8 * co * ci * F / 2
    return fft < direct


def resolve_method(geometry: ConvGeometry, method: str = "auto") -> str:
    """The product algorithm of a layer: ``"direct"``, ``"fft"`` or ``"torch"``; ``"auto"`` picks direct or fft by operation count."""
    if method not in ("auto", "direct", "fft", "torch"):
        raise ValueError(f"unknown method {method!r}; expected 'auto', 'direct', 'fft' or 'torch'")
    if method == "torch" and not torch_kernels.available():
        raise ValueError("method='torch' needs PyTorch: pip install 'structops[torch]'")
    if method == "auto":
        return "fft" if _fft_cheaper(geometry, geometry.c_out, geometry.c_in) else "direct"
    return method


@fixed_parameters("kernel", "geometry", "method", "c_in", "c_out", "groups", "kernel_size", "in_shape",
                  "out_shape", "stride", "dilation", "padding", "circular")
class ConvND(StructuredOperator):
    r"""N-D multi-channel convolution layer (cross-correlation, as in PyTorch).

    Parameters
    ----------
    kernel : array, shape ``(c_out, c_in, k_1, ..., k_D)``
        Real or complex, NumPy or CuPy; float32 stays float32.
    in_shape : tuple of int, ``(n_1, ..., n_D)``
        Spatial shape of one input channel.
    stride : int or tuple of int
    padding : str, int or tuple
        ``"same"``, ``"valid"``, ``"full"``, ``"circular"``, an int (zeros on
        both sides) or one int / ``(lo, hi)`` pair per axis.
    dilation : int or tuple of int
    method : {"auto", "direct", "fft", "torch"}
        Algorithm for the products; ``"auto"`` picks the cheaper of direct
        and fft, and hands float32 host products, and the float64 single
        vectors of 2-D layers where torch's kernels measured faster, to
        PyTorch's CPU kernels when torch is installed
        (:mod:`structops.operators.torch_kernels`); ``"torch"`` uses them for
        every host product.
    groups : int
        Channel groups, as ``torch.nn.functional.conv2d(groups=)``: the
        kernel is ``(c_out, c_in / groups, *k)``, output channel ``o`` reads
        only the input channels of its group ``o // (c_out / groups)``;
        ``groups = c_in`` is a depthwise layer. The products batch the groups'
        channel matrices (the dense ``(c_out, c_in)`` kernel is never formed),
        and the spectra are the union of the groups' (see
        :meth:`group_layers`).

    Attributes
    ----------
    dims : tuple
        ``(c_in, n_1, ..., n_D)``.
    dimsd : tuple
        ``(c_out, m_1, ..., m_D)``, ``m = floor((n + lo + hi - e) / stride) + 1``.
    padding : tuple of (int, int)
        The resolved padding per axis.

    Notes
    -----
    With effective kernel size ``e = dilation (k - 1) + 1`` and padding
    ``(lo, hi)`` per axis, the forward and adjoint products are

    .. math::

        y[o, p] = \sum_{i, d} K[o, i, d]\, x[i, p \cdot s + d \cdot \delta - lo],
        \qquad
        x^*[i, q] = \sum_{o, p, d:\ p s + d \delta - lo = q} \overline{K[o, i, d]}\, y[o, p],

    where ``x`` is zero outside the image (zero padding: block Toeplitz
    structure) or periodic (``"circular"``: block circulant for stride 1).
    :meth:`jacobian` gives ``dK -> K(dK) x``; its adjoint is the weight gradient
    ``G[o, i, d] = sum_p y[o, p] conj(x[i, p s + d delta - lo])``.

    Examples
    --------
    >>> import numpy as np, structops
    >>> K = np.random.default_rng(0).standard_normal((4, 3, 3, 3))
    >>> op = structops.Conv2D(K, (8, 8))
    >>> op.dims, op.dimsd
    ((3, 8, 8), (4, 8, 8))
    >>> X = np.ones((op.shape[1], 5))  # a batch of 5 images, one call
    >>> (op @ X).shape
    (256, 5)
    """

    def __init__(self, kernel, in_shape, stride=1, padding="same", dilation=1, method="auto", groups=1):
        kernel = as_param_array(kernel, "kernel", min_ndim=3)
        self._setup(kernel, ConvGeometry(kernel.shape, in_shape, stride=stride, padding=padding, dilation=dilation,
                                         groups=groups), method)

    def _setup(self, kernel, geometry: ConvGeometry, method):
        self.kernel = kernel
        self.geometry = self._geo = geometry
        self.c_out, self.c_in = geometry.c_out, geometry.c_in
        self.groups = geometry.groups
        self.kernel_size = geometry.kernel_size
        self.in_shape = geometry.in_shape
        self.stride, self.dilation = geometry.stride, geometry.dilation
        self.padding, self.circular = geometry.padding, geometry.circular
        self.out_shape = geometry.out_shape
        self.method = resolve_method(geometry, method)
        host_real = get_xp(kernel) is np and kernel.dtype.kind == "f"
        if self.method == "torch" and not host_real:
            raise ValueError("method='torch' takes real NumPy kernels")
        # torch's CPU kernels: always for method="torch", for float32 host products with "auto"; with one
        # input channel per group only for single vectors (a batch needs torch's layout: 256 depthwise
        # channels on 56x56, batch 8, the library's elementwise products took 14 to 18 ms against 23 to 44 ms
        # for torch with the transposes while the allocator hands out fresh pages, 14 to 16 ms against 8 to
        # 12 ms when it reuses them; one image: 0.6 ms against 2.5 ms)
        self._torch = self.method == "torch" or (
            method == "auto" and host_real and torch_kernels.AUTO_FLOAT32 and torch_kernels.available())
        self._torch_batches = self.method == "torch" or not (
            geometry.groups > 1 and geometry.c_in == geometry.groups)
        self._torch_vectors = self._float64_vector_routes()
        # an input's dtype -> (the dtype torch multiplies it in, or None; whether batches, whether single
        # vectors go to torch, each (forward, adjoint))
        self._torch_for = {}
        self._vector_calls = ({}, {})  # (forward, adjoint): an input's dtype -> torch_kernels.vector_call or None
        self._taps = kernel.reshape(self.c_out, self.c_in // self.groups, -1)
        self._plans = {}
        self._H = {}
        self._tap_mats = {}  # adjoint -> _tap_matrices of the kernel (_prepared_taps)
        StructuredOperator.__init__(self, dims=(self.c_in,) + self.in_shape, dimsd=(self.c_out,) + self.out_shape,
                                    dtype=kernel.dtype, name="K")

    @property
    def xp(self):
        """Array module of the kernel (``numpy`` or ``cupy``)."""
        return get_xp(self.kernel)

    @classmethod
    def from_geometry(cls, kernel, geometry: ConvGeometry, method="auto"):
        """The layer with ``geometry`` and ``kernel`` (of shape ``geometry.kernel_shape``)."""
        kernel = as_param_array(kernel, "kernel", min_ndim=3)
        if tuple(kernel.shape) != geometry.kernel_shape:
            raise ValueError(f"kernel has shape {tuple(kernel.shape)}; the geometry needs {geometry.kernel_shape}")
        op = cls.__new__(cls)
        ConvND._setup(op, kernel, geometry, method)
        return op

    def with_kernel(self, kernel):
        """The same layer (geometry and algorithm) with another kernel of the same shape.

        Examples
        --------
        >>> import numpy as np, structops
        >>> op = structops.Conv2D(np.ones((2, 1, 3, 3)), (8, 8), stride=2)
        >>> op2 = op.with_kernel(2 * op.kernel)
        >>> op2.stride, np.allclose(op2 @ np.ones(64), 2 * (op @ np.ones(64)))
        ((2, 2), True)
        """
        cls = type(self) if type(self) in (ConvND, Conv1D, Conv2D, Conv3D) else ConvND
        return cls.from_geometry(kernel, self.geometry, method=self.method)

    def tosparse(self, format: str = "csr"):
        """The layer as a SciPy sparse matrix, assembled from the kernel taps (host copy).

        ``nnz <= c_out c_in taps prod(out_shape)``; the kernel's dtype is kept.
        See :meth:`ConvGeometry.sparse_matrix <structops.operators.geometry.ConvGeometry.sparse_matrix>`.

        Examples
        --------
        >>> import numpy as np, structops
        >>> op = structops.Conv2D(np.ones((2, 3, 3, 3)), (8, 8))
        >>> A = op.tosparse()
        >>> A.shape, np.allclose(A @ np.ones(op.shape[1]), op @ np.ones(op.shape[1]))
        ((128, 192), True)
        """
        return self.geometry.sparse_matrix(self.kernel, format)

    def group_layers(self):
        """The groups as independent ungrouped layers: a list of ``groups`` :class:`ConvND`.

        Group ``j`` maps input channels ``j c_in / g ...`` to output channels
        ``j c_out / g ...`` with the kernel ``kernel[j c_out / g : (j + 1) c_out / g]``;
        the layer is their direct sum (block diagonal after the channel
        permutation, none for this channel ordering), so its singular values
        are the union of theirs. ``[self]`` when ``groups == 1``.
        """
        if self.groups == 1:
            return [self]
        geo = self.geometry
        cog = self.c_out // self.groups
        return [ConvND(self.kernel[j * cog : (j + 1) * cog], self.in_shape, stride=self.stride,
                       padding=geo.padding_spec, dilation=self.dilation, method=self.method)
                for j in range(self.groups)]

    # -- FFT pieces, built on first use -------------------------------------------
    def _plan(self, real: bool) -> _FFTPlan:
        if real not in self._plans:
            self._plans[real] = _FFTPlan(self._geo, real)
        return self._plans[real]

    def _prepared_taps(self, adjoint: bool) -> list:
        """:func:`_tap_matrices` of the layer's kernel, laid out once (a copy of the kernel each way)."""
        mats = self._tap_mats.get(adjoint)
        if mats is None:
            mats = self._tap_mats[adjoint] = _tap_matrices(self._geo, self._taps, self.groups, adjoint=adjoint)
        return mats

    def _spectrum(self, dtype):
        dtype = np.dtype(dtype)
        if dtype not in self._H:
            self._H[dtype] = self._plan(dtype.kind == "f").kernel_spectrum(self.kernel.astype(dtype, copy=False))
        return self._H[dtype]

    # -- products -------------------------------------------------------------------
    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_torch_weights", None)  # a cache of torch tensors (see torch_kernels)
        state["_tap_mats"] = {}  # the kernel laid out for the products: made again on the first one
        state["_torch_for"] = {}  # the routes per input dtype: worked out again on the first product
        state["_vector_calls"] = ({}, {})  # and the single vectors' torch calls
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("_tap_mats", {})
        if self.method != "torch" and self.__dict__.get("_torch"):
            # "auto" handed float32 host products to torch where the layer was made: here only if torch is here
            self._torch = torch_kernels.available()
        # worked out here, with this version's rules (a pickle from an older one may hold others)
        self._torch_vectors = self._float64_vector_routes()
        self._torch_for = {}
        self._vector_calls = ({}, {})

    def _float64_vector_routes(self):
        """``(forward, adjoint)``: whether ``"auto"`` hands float64 single vectors to torch.

        These are the Lanczos products of the spectra. Torch goes where its
        unfolding pays (:func:`~structops.operators.torch_kernels.float64_vectors_faster`):
        the 20 conv layers of ResNet-18 at 224x224, one forward and one adjoint
        product each, took 155 to 199 ms this way against 220 to 245 ms in the
        library's kernel (24 against 45 to 53 ms at 32x32). Depthwise layers
        and float64 batches stay with the library (16 -> 16 on 64x64, batch 32:
        2.3x faster here).
        """
        if not (self.__dict__.get("_torch") and self.method == "direct"):
            return (False, False)
        return tuple(torch_kernels.float64_vectors_faster(self._geo, adjoint) for adjoint in (False, True))

    def _torch_takes(self, dtype) -> bool:
        """Whether torch computes host products of ``dtype``."""
        return self._torch and dtype.kind == "f" and (
            self.method == "torch" or (dtype == np.float32 and self.kernel.dtype == np.float32))

    def _uses_torch(self, X, dtype) -> bool:
        return get_xp(X) is np and self._torch_takes(dtype)

    def _torch_dtype(self, X, adjoint: bool = False):
        """The product's dtype when torch computes it for ``X``, else ``None`` (cheap: asked on every product)."""
        if not self._torch or type(X) is not np.ndarray:
            return None
        found = self._torch_for.get(X.dtype)
        if found is None:  # the first product with this dtype: X is a NumPy array here
            dtype = result_dtype(self.kernel, X)
            if self._torch_takes(dtype):
                found = (dtype, (self._torch_batches,) * 2, (True, True))
            elif dtype == np.float64 and any(self._torch_vectors):
                found = (dtype, (False, False), self._torch_vectors)
            else:
                found = (None, None, None)
            self._torch_for[X.dtype] = found
        dtype, batches, vectors = found
        if dtype is None or not (batches if X.ndim == 2 and X.shape[1] > 1 else vectors)[adjoint]:
            return None
        return dtype

    def _threads(self, X, adjoint: bool = False):
        if self._torch_dtype(X, adjoint) is not None:
            return contextlib.nullcontext()  # torch's kernels run on torch's own threads
        return super()._threads(X, adjoint)

    def _vector_call(self, x, adjoint: bool = False):
        """:func:`~structops.operators.torch_kernels.vector_call` for ``x`` when it is a flat NumPy vector of
        the right length that torch multiplies in its own dtype, else ``None`` (cheap: asked on every one)."""
        if type(x) is not np.ndarray or x.ndim != 1:
            return None
        calls = self._vector_calls[adjoint]
        call = calls.get(x.dtype, False)
        if call is False:
            dtype = self._torch_dtype(x, adjoint)  # None checked first: np.dtype(...) == None is True for float64
            call = calls[x.dtype] = (torch_kernels.vector_call(self, x.dtype, adjoint)
                                     if dtype is not None and dtype == x.dtype else None)
        return call if call is not None and x.shape == call[0] else None

    # one flat NumPy vector through torch's kernels: straight there, without pylops' or the package's wrappers
    # or the threads context (torch's kernels run on torch's threads); see torch_kernels.vector
    def matvec(self, x):
        call = self._vector_call(x)
        if call is None:
            return super().matvec(x)
        self.matvec_count += 1
        return torch_kernels.vector(call, x)

    def rmatvec(self, y):
        call = self._vector_call(y, True)
        if call is None:
            return super().rmatvec(y)
        self.rmatvec_count += 1
        return torch_kernels.vector(call, y)

    def _matvec(self, x):
        call = self._vector_call(x)
        if call is None:  # the general path (_forward: torch's route with its casts and paddings, or the library's)
            return super()._matvec(x)
        return torch_kernels.vector(call, x)

    def _rmatvec(self, y):
        call = self._vector_call(y, True)
        if call is None:
            return super()._rmatvec(y)
        return torch_kernels.vector(call, y)

    def _forward(self, X):
        dtype = self._torch_dtype(X)
        if dtype is not None:
            if X.ndim != 2 or X.shape[0] != self.shape[1]:
                self._check_input(X, self.shape[1], self.kernel)
            return torch_kernels.forward(self, X.astype(dtype, copy=False))
        self._check_input(X, self.shape[1], self.kernel)
        return _conv_forward(self, self.kernel, X, result_dtype(self.kernel, X))

    def _backward(self, Y):
        dtype = self._torch_dtype(Y, True)
        if dtype is not None:
            if Y.ndim != 2 or Y.shape[0] != self.shape[0]:
                self._check_input(Y, self.shape[0], self.kernel)
            return torch_kernels.adjoint(self, Y.astype(dtype, copy=False))
        self._check_input(Y, self.shape[0], self.kernel)
        dtype = result_dtype(self.kernel, Y)
        geo = self._geo
        B = Y.shape[1]
        if self.method == "fft":
            real = dtype.kind == "f"
            plan = self._plan(real)
            return plan.adjoint(self._spectrum(dtype), plan.output_spectrum(Y.astype(dtype, copy=False), self.c_out)).astype(dtype, copy=False)
        xp = get_xp(Y)
        gather = _einsum_taps(geo, xp, B)  # a gather from cells after max_off leading zeros
        lead = geo.max_off * B if gather else 0
        cog, cig = self.c_out // self.groups, self.c_in // self.groups
        M = self.shape[0] // self.c_out

        mats = None if gather else self._prepared_taps(adjoint=True)
        if self.groups == 1 and not gather:  # blocks of input channels, from one output grid
            ext = geo.to_cells(Y, self.c_out, dtype, batch_last=True)

            def block(i0, i1, out=None):  # input channels i0 <= i < i1
                G = _direct_adjoint(geo, self._taps[:, i0:i1], ext, i1 - i0, step=B, mats=[m[:, i0:i1] for m in mats],
                                    elementwise=self.c_in == 1)
                return geo.from_phases(G, i1 - i0, B, batch_last=True, out=out)

            return _over_group_blocks(xp, geo, B, block, self.shape[1], dtype, units=self.c_in)

        def block(g0, g1, out=None):  # the adjoint of groups g0 <= g < g1
            Yb, Kb = Y[g0 * cog * M : g1 * cog * M], self._taps[g0 * cog : g1 * cog]
            ext = geo.to_cells(Yb, (g1 - g0) * cog, dtype, batch_last=True, lead=lead)
            if gather:
                G = _gather_adjoint(geo, Kb, ext.reshape(g1 - g0, cog, -1), B, lead)
            else:
                G = _direct_adjoint(geo, Kb, ext, (g1 - g0) * cig, step=B, mats=[m[g0:g1] for m in mats])
            return geo.from_phases(G, (g1 - g0) * cig, B, batch_last=True, out=out)

        return _over_group_blocks(xp, geo, B, block, self.shape[1], dtype)

    def jacobian(self, x):
        """Jacobian of ``K -> K x``: the operator ``dK -> ConvND(dK, ...) x``.

        Parameters
        ----------
        x : array
            ``(N,)``, ``dims``, or a batch ``(N, B)`` / ``(*dims, B)``.

        Returns
        -------
        LinearOperator
            ``dims = kernel.shape``, ``dimsd = self.dimsd`` (or
            ``(*self.dimsd, B)`` for a batch); the adjoint is the weight
            gradient.
        """
        get_xp(x, self.kernel)
        X, batched = split_batch(x, self.dims, self.shape[1], "x")
        return _ConvKernelJacobian(self, X, batched)


def _conv_forward(layer: ConvND, K, X, dtype):
    """``K x`` for the layer geometry of ``layer`` and any kernel ``K`` of the same shape."""
    geo = layer._geo
    B = X.shape[1]
    co = K.shape[0]
    if layer.method == "fft":
        real = dtype.kind == "f"
        plan = layer._plan(real)
        H = layer._spectrum(dtype) if K is layer.kernel else plan.kernel_spectrum(K.astype(dtype, copy=False))
        return plan.forward(H, plan.input_spectrum(X.astype(dtype, copy=False), layer.c_in)).astype(dtype, copy=False)
    g, cig = layer.groups, K.shape[1]
    cog = co // g
    N, M = X.shape[0] // layer.c_in, geo.n_out // geo.c_out
    Kt = K.reshape(co, cig, -1)
    mats = layer._prepared_taps(adjoint=False) if K is layer.kernel else _tap_matrices(geo, Kt, g, adjoint=False)
    xp = get_xp(X, K)
    if g == 1:  # blocks of output channels, from one padded input
        phases = geo.to_phases(X, cig, dtype, batch_last=True)

        def block(o0, o1, out=None):  # output channels o0 <= o < o1
            ext = _direct_forward(geo, Kt[o0:o1], phases, o1 - o0, step=B, mats=[m[:, o0:o1] for m in mats])
            return geo.from_cells(ext, o1 - o0, B, batch_last=True, out=out)

        return _over_group_blocks(xp, geo, B, block, co * M, dtype, units=co)

    def block(g0, g1, out=None):  # the outputs of groups g0 <= g < g1
        phases = geo.to_phases(X[g0 * cig * N : g1 * cig * N], (g1 - g0) * cig, dtype, batch_last=True)
        ext = _direct_forward(geo, Kt[g0 * cog : g1 * cog], phases, (g1 - g0) * cog, step=B,
                              mats=[m[g0:g1] for m in mats])
        return geo.from_cells(ext, (g1 - g0) * cog, B, batch_last=True, out=out)

    return _over_group_blocks(xp, geo, B, block, co * M, dtype)


# Multiply-adds a block of an ungrouped layer's channels must have before its product is split over
# threads: its matrix products and shifted adds run at several times the rate of the elementwise
# passes of grouped layers, and both threads read the whole input. With freed memory reused, 16 -> 16
# channels 3x3 on 64x64 took 1.3 ms on two threads against 1.0 on one for one image (9.4M
# multiply-adds), 3.4 against 3.8 ms for four (37.7M); 128 -> 128 on 28x28, one image (116M), 5.5
# against 9.2 ms. Scaled by the tests like MIN_BLOCK_WORK.
CHANNEL_BLOCK_WORK_FACTOR = 8


# Bytes of input and output rows one pass of a NumPy product over a block of groups handles: each
# pass allocates its own padded copy and output grid, so a large grouped product never allocates
# (and page-faults on) whole-size intermediates. 256 depthwise channels on 56x56, float32 batch 8:
# 10-13 ms a product in passes of 4 MiB against 15-17 ms in one pass (2 threads, fresh pages).
GROUP_PASS_BYTES = 4 * 2**20


def _over_group_blocks(xp, geo: ConvGeometry, B: int, block, rows: int, dtype, copies: int = 1, cols: int | None = None,
                       units: int | None = None):
    """A grouped product of ``B`` columns by blocks of channel groups, on threads for large NumPy products.

    ``block(g0, g1, out=None)`` computes the ``(rows, cols)`` result's rows of
    groups ``g0 <= g < g1`` (the same number per group; ``cols = B`` by
    default), into ``out`` if given, and returns them. ``units`` other than
    the groups (an ungrouped product's output or input channels, read from
    one shared padded copy) are split over threads the same way, in one pass
    each. The layer's
    multiply-adds, ``copies`` times (the kernel Jacobian's directions), set
    how many threads (:mod:`structops._threads`), a group's input and output
    rows how many groups a pass (:data:`GROUP_PASS_BYTES`). A product that
    is one pass on one thread, or on CuPy, is ``block(0, groups)`` itself (a
    view where it can be: no copy into a result array).
    """
    groups = geo.groups if units is None else units
    if xp is not np:
        return block(0, groups)
    cols = B if cols is None else cols
    work = geo.n_out * B * (geo.c_in // geo.groups) * geo.taps * copies
    if units is None:
        group_bytes = (geo.n_in + copies * geo.n_out) // groups * B * np.dtype(dtype).itemsize
        per_pass = max(1, int(GROUP_PASS_BYTES // max(group_bytes, 1)))
        blocks = block_count(groups, work)
    else:  # the channels share one padded copy: one pass
        per_pass = groups
        blocks = block_count(groups, work, CHANNEL_BLOCK_WORK_FACTOR * _threads.MIN_BLOCK_WORK)
    if blocks == 1 and per_pass >= groups:
        return block(0, groups)
    check_memory(float(rows) * cols * np.dtype(dtype).itemsize, "the product's output")
    out = np.empty((rows, cols), dtype=dtype)
    per_group = rows // groups

    def passes(g0, g1):
        for p0 in range(g0, g1, per_pass):
            p1 = min(g1, p0 + per_pass)
            block(p0, p1, out[p0 * per_group : p1 * per_group])

    run_blocks(groups, blocks, passes)
    return out


class _ConvKernelJacobian(StructuredOperator):
    """``dK -> K(dK) X`` for a fixed input batch ``X``; adjoint = weight gradient.

    Several directions (columns of a ``matmat``) are stacked along the output
    channels, so they are one product too.
    """

    def __init__(self, layer: ConvND, X, batched: bool):
        self.layer = layer
        self.xp = layer.xp
        self.B = X.shape[1]
        dtype = result_dtype(layer.kernel, X)
        self._dtype = dtype
        geo = layer._geo
        if layer.method == "fft":
            self._plan = layer._plan(dtype.kind == "f")
            self._Xh = self._plan.input_spectrum(X.astype(dtype, copy=False), layer.c_in)
        else:
            self._phases = geo.to_phases(X, layer.c_in, dtype, batch_last=True)
        dimsd = layer.dimsd + ((self.B,) if batched else ())
        super().__init__(dims=layer.kernel.shape, dimsd=dimsd, dtype=dtype, name="J")

    def _forward(self, dK):
        layer, geo = self.layer, self.layer._geo
        nd = dK.shape[1]
        co, g = layer.c_out, layer.groups
        ci = layer.c_in // g
        # directions stacked as extra output channels of every group: kernel (g * nd * c_out / g, c_in / g, ...)
        Ks = self.xp.moveaxis(dK.reshape(g, co // g, ci, -1, nd), -1, 1).reshape(nd * co, ci, -1)
        if layer.method == "fft":
            H = self._plan.kernel_spectrum(Ks.reshape((nd * co, ci) + layer.kernel_size).astype(self._dtype, copy=False))
            Y = self._plan.forward(H, self._Xh)
        else:
            B, rows = self.B, nd * (co // g)  # output channels of a group, every direction

            def block(g0, g1, out=None):  # the outputs of groups g0 <= g < g1
                ext = _direct_forward(geo, Ks[g0 * rows : g1 * rows], self._phases[:, g0 * ci : g1 * ci],
                                      (g1 - g0) * rows, step=B)
                return geo.from_cells(ext, (g1 - g0) * rows, B, batch_last=True, out=out)

            Y = _over_group_blocks(self.xp, geo, B, block, g * rows * (geo.n_out // co), self._dtype, copies=nd)
        # (g * nd * c_out / g * M, B) -> (c_out * M * B, nd)
        Y = self.xp.moveaxis(Y.reshape(g, nd, -1), 1, 0).reshape(nd, -1)
        return Y.T.astype(self.dtype, copy=False)

    def _backward(self, W):
        layer, geo = self.layer, self.layer._geo
        nd = W.shape[1]
        co, g = layer.c_out, layer.groups
        ci = layer.c_in // g
        # (c_out * M * B, nd) -> outputs of a layer with nd * c_out channels (group-major), batch B
        Wc = self.xp.moveaxis(W.T.reshape(nd, g, -1), 1, 0).reshape(nd * co * int(np.prod(layer.out_shape)), self.B)
        if layer.method == "fft":
            Zh = self._plan.output_spectrum(Wc.astype(self._dtype, copy=False), nd * co)
            G = self._plan.kernel_grad(self._Xh, Zh)
        else:
            B, rows, M = self.B, nd * (co // g), geo.n_out // co

            def block(g0, g1, out=None):  # the gradient rows of groups g0 <= g < g1
                ext = geo.to_cells(Wc[g0 * rows * M : g1 * rows * M], (g1 - g0) * rows, self._dtype, batch_last=True)
                Gb = _direct_kernel_grad(geo, self._phases[:, g0 * ci : g1 * ci], ext, (g1 - g0) * rows, ci, step=B)
                if out is None:
                    return Gb.reshape(-1, 1)
                out[:, 0] = Gb.reshape(-1)
                return out

            G = _over_group_blocks(self.xp, geo, B, block, g * rows * ci * geo.taps, self._dtype, copies=nd, cols=1)
        G = self.xp.moveaxis(G.reshape(g, nd, -1), 1, 0).reshape(nd, -1)
        return G.T.astype(self.dtype, copy=False)


class Conv1D(ConvND):
    """1-D convolution layer: kernel ``(c_out, c_in, k)`` on inputs ``(c_in, n)``.

    See :class:`ConvND` for the parameters and the maths.

    Examples
    --------
    >>> import numpy as np, structops
    >>> op = structops.Conv1D(np.ones((2, 1, 3)), 10, padding="valid")
    >>> op.dimsd
    (2, 8)
    """

    def __init__(self, kernel, n, stride=1, padding="same", dilation=1, method="auto", groups=1):
        if hasattr(kernel, "ndim") and kernel.ndim != 3:
            raise ValueError(f"Conv1D needs a kernel of shape (c_out, c_in, k); got shape {tuple(kernel.shape)}")
        super().__init__(kernel, (n,) if isinstance(n, (int, np.integer)) else n, stride=stride, padding=padding, dilation=dilation, method=method,
                         groups=groups)


class Conv2D(ConvND):
    """2-D convolution layer: kernel ``(c_out, c_in, kh, kw)`` on inputs ``(c_in, H, W)``.

    See :class:`ConvND` for the parameters and the maths.

    Examples
    --------
    >>> import numpy as np, structops
    >>> op = structops.Conv2D(np.ones((16, 3, 3, 3)), (32, 32), stride=2)
    >>> op.dimsd
    (16, 16, 16)
    """

    def __init__(self, kernel, in_shape, stride=1, padding="same", dilation=1, method="auto", groups=1):
        if hasattr(kernel, "ndim") and kernel.ndim != 4:
            raise ValueError(f"Conv2D needs a kernel of shape (c_out, c_in, kh, kw); got shape {tuple(kernel.shape)}")
        super().__init__(kernel, in_shape, stride=stride, padding=padding, dilation=dilation, method=method,
                         groups=groups)


class Conv3D(ConvND):
    """3-D convolution layer: kernel ``(c_out, c_in, kd, kh, kw)`` on inputs ``(c_in, D, H, W)``.

    See :class:`ConvND` for the parameters and the maths.
    """

    def __init__(self, kernel, in_shape, stride=1, padding="same", dilation=1, method="auto", groups=1):
        if hasattr(kernel, "ndim") and kernel.ndim != 5:
            raise ValueError(f"Conv3D needs a kernel of shape (c_out, c_in, kd, kh, kw); got shape {tuple(kernel.shape)}")
        super().__init__(kernel, in_shape, stride=stride, padding=padding, dilation=dilation, method=method,
                         groups=groups)

r"""The exact spectra of periodic layers: per-frequency channel matrices of circular convolutions.

See the notes of :mod:`structops.linalg.spectra` (circular layers, Gram
matrices) for the mathematics.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._backend import blas_threads, get_fft, to_numpy
from .._validate import check_memory
from ..operators.circulant import Circulant
from ..operators.conv import ConvND, require_ungrouped
from ._common import workers

# Gram matrices: accepted error relative to sigma_max, safety factor of the model.
_GRAM_RTOL = 1e-12
_GRAM_SAFETY = 8.0


class Symbol:
    """Per-frequency channel matrices ``P(omega)`` of a periodic (block circulant, polyphase) operator.

    Built from ``c[o, i, phi, *a]``, the correlation taps of each polyphase
    component on the grid ``m = n / s`` (see the module notes).
    """

    def __init__(self, c, n, s, xp, pos=None):
        self.xp = xp
        # c: (c_out, c_in, nphase, *m) on the whole grid, or (..., *L) at the positions ``pos``
        self.c = c
        self.pos = pos
        self.n, self.s = tuple(n), tuple(s)
        self.m = tuple(a // b for a, b in zip(n, s))
        self.D = len(n)
        self.real = c.dtype.kind == "f"
        self.c_out, self.c_in, self.nphase = c.shape[:3]
        self._P = None
        self.error_bound = math.nan  # of the last values computed
        self._memo = None  # per_frequency -> (values per frequency, error bound), kept by the operator

    @classmethod
    def from_conv(cls, op: ConvND):
        require_ungrouped(op, "Symbol.from_conv")
        xp = op.xp
        K = op.kernel
        K = K.astype(np.complex128 if K.dtype.kind == "c" else np.float64)
        n, s = op.in_shape, op.stride
        co, ci = op.c_out, op.c_in
        # tap d sits at q_d = (d * dilation - lo) mod n = s * a_d + phi_d on each axis
        q = op.geometry.periodic_taps(n, form="correlation")
        pos = [np.unique(qa // sa) for qa, sa in zip(q, s)]
        c = xp.zeros((co, ci, int(np.prod(s))) + tuple(len(p) for p in pos), dtype=K.dtype)
        for d in np.ndindex(*op.kernel_size):
            qd = [int(qa[da]) for qa, da in zip(q, d)]
            phi = int(np.ravel_multi_index(tuple(x % sa for x, sa in zip(qd, s)), s))
            j = tuple(int(np.searchsorted(p, x // sa)) for p, x, sa in zip(pos, qd, s))
            c[(slice(None), slice(None), phi) + j] += K[(slice(None), slice(None)) + d]
        return cls(c, n, s, xp, pos=pos)

    @classmethod
    def from_circulant(cls, op: Circulant):
        xp = op.xp
        c = op.c.astype(np.complex128 if op.c.dtype.kind == "c" else np.float64)
        # C x = c (*) x is the correlation with c[-a]
        cc = xp.roll(xp.flip(c, axis=tuple(range(c.ndim))), 1, axis=tuple(range(c.ndim)))
        return cls(cc.reshape((1, 1, 1) + c.shape), c.shape, (1,) * c.ndim, xp)

    # -- frequency grid ------------------------------------------------------------
    @property
    def grid(self):
        """Shape of the frequency grid (the last axis halved for real symbols)."""
        if self.real:
            return self.m[:-1] + (self.m[-1] // 2 + 1,)
        return self.m

    def weights(self):
        """Multiplicity of each grid frequency in the full spectrum (2 where the partner is off the half grid)."""
        grid = self.grid
        if not self.real:
            return np.ones(int(np.prod(grid)), dtype=np.int64)
        ml = self.m[-1]
        j = np.arange(grid[-1])
        wl = np.where((j > 0) & (2 * j != ml), 2, 1)
        return np.broadcast_to(wl, grid).reshape(-1).astype(np.int64)

    def _dense_taps(self):
        """``c`` on the whole ``m`` grid."""
        if self.pos is None:
            return self.c
        xp = self.xp
        full = xp.zeros(self.c.shape[:3] + self.m, dtype=self.c.dtype)
        full[(slice(None),) * 3 + np.ix_(*self.pos)] = self.c
        return full

    def matrices(self):
        """``P(omega)`` for every grid frequency: ``(n_freq, c_out, c_in * nphase)``, complex128."""
        if self._P is not None:
            return self._P
        xp = self.xp
        F = int(np.prod(self.grid))
        ch = self.c_out * self.c_in * self.nphase
        L = int(np.prod(self.c.shape[3:])) if self.pos is not None else None
        check_memory(16.0 * F * (2 * ch + (L or 0)), "the per-frequency channel matrices of the symbol")
        if L is not None and L <= 2 * math.log2(max(F, 2)) + 8:
            # few taps: P = E c with the (n_freq, L) matrix E[omega, a] = exp(2 pi i omega . a / m),
            # one GEMM straight into the frequency-first layout (cheaper than FFTs of a mostly-zero grid)
            E = np.ones((1, 1), dtype=np.complex128)
            for g, mm, p in zip(self.grid, self.m, self.pos):
                Ea = np.exp(2j * np.pi * np.outer(np.arange(g), p) / mm)
                E = (E[:, None, :, None] * Ea[None, :, None, :]).reshape(E.shape[0] * g, -1)
            E = xp.asarray(E)
            C = xp.moveaxis(self.c.reshape(ch, L), 0, 1)  # (L, ch)
            with blas_threads():
                if self.real:
                    P = xp.empty((F, ch), dtype=np.complex128)
                    P.real[...] = E.real @ C
                    P.imag[...] = E.imag @ C
                else:
                    P = E @ C
            self._P = P.reshape(F, self.c_out, self.c_in * self.nphase)
            return self._P
        fft = get_fft(xp)
        c = self._dense_taps()
        axes = tuple(range(3, 3 + self.D))
        if self.real:
            Hh = fft.rfftn(c, axes=axes).conj()
        else:
            Hh = fft.ifftn(c, axes=axes) * float(np.prod(self.m))
        Hh = Hh.reshape(self.c_out, self.c_in * self.nphase, F)
        self._P = xp.ascontiguousarray(xp.moveaxis(Hh, -1, 0))
        return self._P

    # -- singular values -------------------------------------------------------------
    def values_per_frequency(self, per_frequency="auto"):
        """``(n_freq, r)`` singular values per frequency, each row descending; host float64 (read-only).

        With a memo (:func:`symbol_of` with ``memo=True``) the values are
        computed once per operator: the values and then the vectors of a
        512 -> 512 channel layer on 7x7 are two passes of per-frequency SVDs
        otherwise (3.6 s and 1.4 s).
        """
        found = self._memo.get(per_frequency) if self._memo is not None else None
        if found is None:
            S = self._values_per_frequency(per_frequency)
            S.flags.writeable = False
            found = (S, self.error_bound)
            if self._memo is not None:
                self._memo[per_frequency] = found
        S, self.error_bound = found
        return S

    def _values_per_frequency(self, per_frequency):
        P = self.matrices()
        xp = self.xp
        F, a, b = P.shape
        eps = np.finfo(np.float64).eps
        kin = max(a, b)
        use_gram = per_frequency == "gram" or (per_frequency == "auto" and kin >= 2 * min(a, b))
        if min(a, b) == 1:
            S = to_numpy(xp.sqrt(xp.sum(xp.abs(P) ** 2, axis=(1, 2))))[:, None]
        elif not use_gram:
            S = _batched(xp, _svdvals, P)
        else:
            lam = _batched(xp, _gram_eigvalsh, P)  # ascending
            S = np.sqrt(np.maximum(lam, 0))[:, ::-1]
            lmax = np.maximum(lam[:, -1], 0)
            est = _GRAM_SAFETY * math.sqrt(kin) * eps * lmax / np.maximum(S[:, -1], np.finfo(float).tiny)
            if per_frequency == "gram":
                self.error_bound = float(est.max(initial=0.0))
                return S
            # recompute the frequencies the Gram model cannot vouch for
            smax = math.sqrt(float(lmax.max())) if lmax.size else 0.0
            bad = np.flatnonzero(est > _GRAM_RTOL * smax)
            if bad.size:
                S[bad] = _batched(xp, _svdvals, P[xp.asarray(bad)] if xp is not np else P[bad])
            self.error_bound = max(_GRAM_RTOL * smax, 4 * kin * eps * smax)  # the error model's acceptance level
            return S
        self.error_bound = 4 * kin * eps * float(S.max(initial=0.0))  # backward stable per frequency
        return S

    def values(self, per_frequency="auto"):
        S = self.values_per_frequency(per_frequency)
        s = np.repeat(S, self.weights(), axis=0).reshape(-1)
        return np.sort(s)[::-1]

    # -- singular vectors -------------------------------------------------------------
    def _partner(self, f):
        """Flat grid index of the frequency ``-omega`` (full grid, or the half grid when it lies there)."""
        w = np.unravel_index(f, self.grid)
        p = tuple((-wi) % mi for wi, mi in zip(w, self.m))
        if p[-1] >= self.grid[-1]:
            return None
        return int(np.ravel_multi_index(p, self.grid))

    def vectors(self, k, which, per_frequency="auto"):
        """``k`` extreme singular triplets ``(s, U, V)``, ``s`` descending; real vectors for real symbols."""
        S = self.values_per_frequency(per_frequency)
        F, r = S.shape
        w = self.weights()
        # one entry per singular value of the full spectrum: (value, frequency, column, copy)
        f_idx = np.repeat(np.arange(F), w * r)
        rep = np.repeat(w, w * r)
        within = np.arange(len(f_idx)) - np.repeat(np.cumsum(w * r) - w * r, w * r)
        col = within // rep
        copy = within % rep
        vals = np.repeat(S.reshape(-1), np.repeat(w, r))
        order = np.argsort(-vals, kind="stable")
        chosen = order[:k] if which == "largest" else order[len(order) - k :]
        P = self.matrices()
        Mtot = self.c_out * int(np.prod(self.m))
        Ntot = self.c_in * int(np.prod(self.n))
        cdt = np.float64 if self.real else np.complex128
        U = np.empty((Mtot, k), dtype=cdt)
        V = np.empty((Ntot, k), dtype=cdt)
        s = np.empty(k)
        cache = {}
        for t, e in enumerate(chosen):
            f, j, cp = int(f_idx[e]), int(col[e]), int(copy[e])
            part = "complex"
            if self.real:
                partner = self._partner(f)
                if partner == f:
                    part = "real"
                elif w[f] == 2:
                    part = "re" if cp == 0 else "im"
                else:  # both f and -f on the half grid: the smaller index carries the vectors
                    if partner < f:
                        f, part = partner, "im"
                    else:
                        part = "re"
            if f not in cache:
                Pf = to_numpy(P[f])
                if part == "real":
                    Pf = Pf.real
                Uf, sf, Vhf = np.linalg.svd(Pf)
                cache[f] = (Uf, sf, Vhf.conj().T)
            Uf, sf, Vf = cache[f]
            s[t] = sf[j]
            u_mode, v_mode = self._modes(f, part == "real")
            u = np.multiply.outer(Uf[:, j], u_mode).reshape(-1)
            # input: x[i, s r + phi] = v[i, phi] e(omega . r)
            v = self._input_vector(Vf[:, j], v_mode)
            if part == "re":
                u, v = math.sqrt(2) * u.real, math.sqrt(2) * v.real
            elif part == "im":
                u, v = math.sqrt(2) * u.imag, math.sqrt(2) * v.imag
            elif part == "real":
                u, v = u.real, v.real
            U[:, t], V[:, t] = u, v
        o = np.argsort(-s, kind="stable")
        return s[o], U[:, o], V[:, o]

    def _modes(self, f, real):
        w = np.unravel_index(f, self.grid)
        mode = np.ones((), dtype=np.complex128)
        for wi, mi in zip(w, self.m):
            mode = np.multiply.outer(mode, np.exp(2j * np.pi * wi * np.arange(mi) / mi))
        mode = mode / math.sqrt(float(np.prod(self.m)))
        if real:
            mode = mode.real.astype(np.complex128)
        return mode, mode

    def _input_vector(self, vcol, mode):
        D = self.D
        v = vcol.reshape((self.c_in,) + self.s)  # (c_in, s1, .., sD)
        x = np.multiply.outer(v, mode)  # (c_in, s1..sD, m1..mD)
        perm = (0,) + tuple(v for a in range(D) for v in (1 + D + a, 1 + a))
        return x.transpose(perm).reshape(-1)


def _svdvals(xp, P):
    return xp.linalg.svd(P, compute_uv=False)


def _gram_eigvalsh(xp, P):
    if P.shape[1] <= P.shape[2]:
        G = xp.matmul(P, P.conj().transpose(0, 2, 1))
    else:
        G = xp.matmul(P.conj().transpose(0, 2, 1), P)
    return xp.linalg.eigvalsh(G)


def _batched(xp, fn, P):
    """``fn`` on a stack of small matrices, split over threads on the CPU; host float64 result."""
    F = P.shape[0]
    work = F * P.shape[1] * P.shape[2] * min(P.shape[1:])
    nw = workers() if xp is np else 1
    if nw == 1 or F < 2 * nw or work < 2e6:
        with blas_threads():
            return np.asarray(to_numpy(fn(xp, P)), dtype=np.float64)
    chunks = np.array_split(np.arange(F), nw)
    with blas_threads(), ThreadPoolExecutor(nw) as ex:
        parts = list(ex.map(lambda ix: fn(xp, P[ix[0] : ix[-1] + 1]), chunks))
    return np.concatenate(parts, axis=0).astype(np.float64, copy=False)


def symbol_of(op, memo: bool = False):
    """The exact periodic symbol of ``op``, or None when it has none (or is grouped: see ``group_layers``).

    ``memo``: the symbol's values per frequency are kept by ``op`` (its
    parameters are read-only and cannot be reassigned) and shared by every
    symbol made from it this way; they are not pickled.
    """
    if getattr(op, "groups", 1) > 1:
        return None
    if isinstance(op, Circulant):
        sym = Symbol.from_circulant(op)
    elif isinstance(op, ConvND) and op.circular and all(n % s == 0 for n, s in zip(op.in_shape, op.stride)):
        sym = Symbol.from_conv(op)
    else:
        return None
    if memo:
        sym._memo = op.__dict__.setdefault("_symbol_values", {})
    return sym


def circular_start_vector(op: ConvND):
    """Top right singular vector of the circular layer with the same kernel (or None), a Lanczos start."""
    if op.circular or any(n % s for n, s in zip(op.in_shape, op.stride)) or op.groups > 1:
        return None, None
    try:
        # strided: the circular layer's polyphase symbol (the stride divides the image)
        circ = ConvND(op.kernel, op.in_shape, stride=op.stride, padding="circular", dilation=op.dilation)
    except ValueError:  # even effective size or kernel larger than the image
        return None, None
    sym = Symbol.from_conv(circ)
    P = sym.matrices()
    xp = sym.xp
    # a few frequencies of largest Frobenius norm, then the best of them exactly
    fro = to_numpy(xp.sum(xp.abs(P) ** 2, axis=(1, 2)))
    cand = np.argsort(-fro)[:8]
    best, bf = -1.0, None
    for f in cand:
        sf = np.linalg.svd(to_numpy(P[int(f)]), compute_uv=False)[0]
        if sf > best:
            best, bf = sf, int(f)
    partner = sym._partner(bf) if sym.real else None
    Pf = to_numpy(P[bf])
    real_mode = sym.real and partner == bf
    Uf, _, Vhf = np.linalg.svd(Pf.real if real_mode else Pf)
    u_mode, v_mode = sym._modes(bf, real_mode)
    v = sym._input_vector(Vhf[0].conj(), v_mode)
    u = np.multiply.outer(Uf[:, 0], u_mode).reshape(-1)
    if sym.real:
        v, u = v.real, u.real
    side_in = v if np.linalg.norm(v) > 0 else None
    side_out = u if tuple(circ.out_shape) == tuple(op.out_shape) and np.linalg.norm(u) > 0 else None
    return side_in, side_out

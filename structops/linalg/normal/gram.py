"""The normal matrix of a zero-padded layer as offset blocks: tap pairs, per-axis masks, the host copy."""

from __future__ import annotations

import itertools

import numpy as np

from ..._backend import to_numpy

EPS = np.finfo(np.float64).eps

# BLAS threads for the factorisations and the solves (band and multifrontal).
# On small machines the single-threaded OpenBLAS band routines and the solves
# measured fastest (a 65536 x 65536 band factorisation: 22 s on one thread, 71 s
# on two); ``None`` leaves the library's own setting alone.
FACTOR_THREADS: int | None = 1
# The multifrontal factorisation's large dense fronts gain from the library's
# threads (the 64 -> 64, 32x32 layer: 28.0 s on one thread, 20.9 s on two).
FRONT_THREADS: int | None = None
FRONT_THREADS_MIN_FLOPS = 1e10  # below this operation count the factorisation stays on FACTOR_THREADS

class Gram:
    """Entries of the normal matrix of a zero-padded layer, grouped by pixel offset.

    ``side="input"``: ``A^T A`` on the input grid, ``c = c_in``;
    ``side="output"``: ``A A^T`` on the output grid, ``c = c_out``.
    ``groups`` maps an offset vector ``delta`` (row pixel minus column pixel)
    to ``(W, C)``: ``W`` a list of per-pair per-axis 0/1 masks over the column
    pixel coordinates, ``C`` the stacked ``(n_pairs, c, c)`` channel blocks.
    """

    def __init__(self, kernel, in_shape, out_shape, stride, dilation, padding, side):
        K = np.asarray(kernel, dtype=np.float64)
        co, ci = K.shape[:2]
        ks = K.shape[2:]
        D = len(ks)
        T = int(np.prod(ks))
        self.side, self.D = side, D
        Kt = K.reshape(co, ci, T)
        if side == "input":
            self.grid, self.c = tuple(in_shape), ci
            Km = Kt.transpose(0, 2, 1).reshape(co, T * ci)  # column (t, i)
            Cfull = (Km.T @ Km).reshape(T, ci, T, ci)
        else:
            self.grid, self.c = tuple(out_shape), co
            Km = Kt.transpose(2, 0, 1).reshape(T * co, ci)  # row (t, o)
            Cfull = (Km @ Km.T).reshape(T, co, T, co)
        # per axis: (d, d') -> (offset, mask over the column grid) or None
        axis_pairs = []
        for ax in range(D):
            n, m, s, dl, lo = in_shape[ax], out_shape[ax], stride[ax], dilation[ax], padding[ax][0]
            table = {}
            for d in range(ks[ax]):
                for dp in range(ks[ax]):
                    if side == "input":
                        off = (d - dp) * dl
                        qp = np.arange(n)
                        sh = qp + lo - dp * dl
                        mask = (sh % s == 0) & (sh >= 0) & (sh // s < m) & (qp + off >= 0) & (qp + off < n)
                    else:
                        if ((dp - d) * dl) % s:
                            table[d, dp] = None
                            continue
                        off = (dp - d) * dl // s
                        pp = np.arange(m)
                        q = pp * s + dp * dl - lo
                        mask = (q >= 0) & (q < n) & (pp + off >= 0) & (pp + off < m)
                    table[d, dp] = (off, mask) if mask.any() else None
            axis_pairs.append(table)
        taps = list(itertools.product(*[range(k) for k in ks]))
        groups = {}
        for t, d in enumerate(taps):
            for tp, dp in enumerate(taps):
                per = [axis_pairs[ax][d[ax], dp[ax]] for ax in range(D)]
                if any(p is None for p in per):
                    continue
                delta = tuple(p[0] for p in per)
                g = groups.setdefault(delta, ([], []))
                g[0].append([p[1] for p in per])
                g[1].append(Cfull[t, :, tp, :])
        self.groups = {dl: (W, np.ascontiguousarray(np.array(C))) for dl, (W, C) in groups.items()}
        self.reach = tuple(max(abs(dl[ax]) for dl in self.groups) for ax in range(D)) if self.groups else (0,) * D
        self.npix = int(np.prod(self.grid))
        self.n = self.npix * self.c

    def blocks(self, delta, coords):
        """Channel blocks ``(len, c, c)`` at column pixels ``coords`` (tuple of D index arrays)."""
        W, C = self.groups[delta]
        w = np.empty((len(W), coords[0].shape[0]))
        for j, masks in enumerate(W):
            v = masks[0][coords[0]].astype(np.float64)
            for ax in range(1, self.D):
                v *= masks[ax][coords[ax]]
            w[j] = v
        return (w.T @ C.reshape(len(W), -1)).reshape(-1, self.c, self.c), w.any(axis=0)


def resolve_side(op, side):
    M, N = op.shape
    if side in ("input", "ata", "AtA"):
        return "input"
    if side in ("output", "aat", "AAt"):
        return "output"
    if side != "auto":
        raise ValueError(f"side={side!r}; expected 'auto', 'input' (M^T M) or 'output' (M M^T)")
    if N < M:
        return "input"
    if M < N:
        return "output"
    return None  # square: decided by the bandwidth


def check_op(op):
    from ...operators.conv import ConvND, require_ungrouped

    if not isinstance(op, ConvND):
        raise TypeError(f"expected a structops ConvND layer; got {type(op).__name__}")
    require_ungrouped(op, "the normal-matrix solvers")
    if op.circular:
        raise ValueError(
            "padding='circular' gives a block circulant layer whose singular values follow from the "
            "FFT of the kernel; this routine is for zero padding"
        )
    K = to_numpy(op.kernel)
    if np.iscomplexobj(K):
        raise ValueError("complex kernels are not supported here; expected a real kernel")
    return np.asarray(K, dtype=np.float64)


def gram_for(op, side):
    K = check_op(op)
    return Gram(K, op.in_shape, op.out_shape, op.stride, op.dilation, op.padding, side), K


def host_op(op, K):
    """A float64 NumPy copy of the layer for the checks (same geometry)."""
    if K is op.kernel and op.kernel.dtype == np.float64:
        return op
    return op.with_kernel(K)

r"""The geometry of a convolution layer, and its symbol on a periodic grid.

:class:`ConvGeometry` is everything about a layer except its kernel values:
channels, kernel size, input and output shapes, resolved padding, stride and
dilation, the polyphase layout the direct products use, the border mask of
the per-pixel (extended) layers, and the placement of the kernel taps on a
periodic grid, from which the per-frequency symbol of the layer is computed.
Every module that needs "the layer without its kernel" uses this class.

Notes
-----
On a periodic grid of size ``F`` per axis, tap ``d`` of the kernel sits at
position ``t_d = (lo - d \delta) mod F`` (the *convolution form*
``h[o, i, t_d] = K[o, i, d]``), so that the layer on the grid is the
circular convolution ``z = h \circledast x``:
``z[m] = sum_d K[d] x[(m + d \delta - lo) mod F]``. Its symbol is the
``c_out x c_in`` matrix per frequency

.. math::

    H(\omega) = \sum_t h[t]\, e^{-2\pi i\, \omega \cdot t / F}
              = \sum_d K[d]\, e^{-2\pi i\, \omega \cdot (lo - d\delta) / F},

``H = fft(h)``. For ``padding="circular"`` and ``F = n`` the singular values
of the layer are those of all ``H(omega)`` together (Sedghi, Gupta and Long,
2019). The *correlation form* ``c[(d \delta - lo) mod F] = K[d]``, i.e.
``c[t] = h[-t]``, writes the same layer as ``z[m] = sum_t c[t] x[m + t]``.
"""

from __future__ import annotations

import functools
from itertools import product

import numpy as np

from .._backend import get_fft, get_xp, to_numpy
from .._validate import as_int, check_memory, check_size, int_tuple

__all__ = ["ConvGeometry", "resolve_padding", "conv_output_shape", "PADDING_NAMES"]

PADDING_NAMES = ("same", "valid", "full", "circular")
# Largest temporary of a chunk of the direct algorithm, in bytes.
CHUNK_BYTES = 4 * 2**20


def _int_pair(p, padding):
    try:
        if isinstance(p, (tuple, list)):
            if len(p) != 2:
                raise ValueError
            return (as_int(p[0], "padding"), as_int(p[1], "padding"))
        return (as_int(p, "padding"),) * 2
    except (TypeError, ValueError):
        raise ValueError(f"padding entry {p!r} in {padding!r}; expected an int or a (lo, hi) pair of ints") from None


def resolve_padding(padding, kernel_size, dilation, in_shape):
    """Resolve a padding spec into ``((lo, hi), ...)`` per axis and a circular flag.

    Parameters
    ----------
    padding : str, int or tuple
        ``"same"``, ``"valid"``, ``"full"``, ``"circular"``, an int (both sides
        of every axis) or a tuple with one int or ``(lo, hi)`` pair per axis.
    kernel_size, dilation, in_shape : tuple of int

    Returns
    -------
    pairs : tuple of (int, int)
    circular : bool
    """
    D = len(kernel_size)
    e = tuple(d * (k - 1) + 1 for k, d in zip(kernel_size, dilation))
    if isinstance(padding, str):
        name = padding.lower()
        if name not in PADDING_NAMES:
            raise ValueError(f"unknown padding {padding!r}; expected one of {PADDING_NAMES}, an int or a tuple")
        if name in ("same", "circular"):
            even = [ax for ax in range(D) if e[ax] % 2 == 0]
            if even:
                raise ValueError(
                    f"padding={name!r} needs an odd effective kernel size dilation*(k-1)+1 on every "
                    f"axis to pad symmetrically; got {e} (kernel {tuple(kernel_size)}, dilation "
                    f"{tuple(dilation)}); pass explicit (lo, hi) pairs instead"
                )
        if name == "circular":
            big = [ax for ax in range(D) if e[ax] > in_shape[ax]]
            if big:
                raise ValueError(
                    f"padding='circular' needs the effective kernel size {e} to be at most the "
                    f"input size {tuple(in_shape)} on every axis"
                )
        if name in ("same", "circular"):
            return tuple(((x - 1) // 2, (x - 1) // 2) for x in e), name == "circular"
        if name == "valid":
            return ((0, 0),) * D, False
        return tuple((x - 1, x - 1) for x in e), False
    if isinstance(padding, (tuple, list)):
        if len(padding) != D:
            raise ValueError(f"padding {padding!r} has {len(padding)} entries; expected {D} (one per spatial axis)")
        pairs = tuple(_int_pair(p, padding) for p in padding)
    else:
        try:
            p = as_int(padding, "padding")
        except TypeError:
            raise TypeError(
                f"padding {padding!r} of type {type(padding).__name__}; expected a str, an int or a tuple"
            ) from None
        pairs = ((p, p),) * D
    if min(min(p) for p in pairs) < 0:
        raise ValueError(f"padding must be non-negative; got {padding!r}")
    return pairs, False


def conv_output_shape(in_shape, kernel_size, stride, padding_pairs, dilation) -> tuple:
    """Output size per axis: ``floor((n + lo + hi - e) / stride) + 1``.

    Raises ``ValueError`` when the effective kernel is larger than the padded input.
    """
    out = []
    for n, k, s, (lo, hi), d in zip(in_shape, kernel_size, stride, padding_pairs, dilation):
        e = d * (k - 1) + 1
        if n + lo + hi < e:
            raise ValueError(
                f"kernel {tuple(kernel_size)} (effective size {e} with dilation {d}) is larger than the "
                f"padded input: size {n} + padding ({lo}, {hi}) = {n + lo + hi} on an axis; expected "
                f"at least {e}"
            )
        out.append((n + lo + hi - e) // s + 1)
    return tuple(out)


def _in_shape(in_shape, D):
    if isinstance(in_shape, (str, bytes)):
        raise TypeError(f"in_shape must be a tuple of {D} ints; got the string {in_shape!r}")
    try:
        n = len(in_shape)
    except TypeError:
        n = 1
    if n != D:
        raise ValueError(
            f"in_shape {in_shape!r} has {n} axes but the kernel has {D} spatial axes; expected kernel "
            "(c_out, c_in, *k) with len(k) == len(in_shape)"
        )
    return int_tuple(in_shape, D, "in_shape")


def batch_second(a):
    """``(c, *space, B)`` -> ``(c, B, *space)``: ``moveaxis(a, -1, 1)`` without its argument checks (a hot path)."""
    return a.transpose((0, a.ndim - 1) + tuple(range(1, a.ndim - 1)))


def batch_last(a):
    """``(c, B, *space)`` -> ``(c, *space, B)``: the inverse of :func:`batch_second`."""
    return a.transpose((0,) + tuple(range(2, a.ndim)) + (1,))


_move_batch_last = batch_last  # for the methods whose ``batch_last`` argument shadows the function


def _write(img, B: int, out):
    """``img`` ``(c, *space, B)`` as ``(c * N, B)``: a reshape (a copy unless contiguous), or copied into ``out``."""
    if out is None:
        return img.reshape(-1, B)
    if not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous array")
    out.reshape(img.shape)[...] = img  # out is C-contiguous: its reshape is a view
    return out


def _embed(xp, img, grid: tuple, box: tuple, dtype, batch_last: bool, lead: int = 0):
    """Zeros of ``(c, *grid, B)`` (``(c, B, *grid)`` unless ``batch_last``) with ``img`` ``(c, *space, B)`` in ``box``.

    ``lead > 0`` (``batch_last`` only): the flat ``(c, lead + prod(grid) B)``
    array, ``lead`` zeros before each channel's grid.
    """
    c, B = img.shape[0], img.shape[-1]
    if lead:
        flat = xp.empty((c, lead + int(np.prod(grid)) * B), dtype=dtype)
        flat[:, :lead] = 0
        _fill_box(flat[:, lead:].reshape((c,) + tuple(grid) + (B,)), 1, box, img)
        return flat
    if batch_last:
        buf = xp.empty((c,) + tuple(grid) + (B,), dtype=dtype)
        _fill_box(buf, 1, box, img)
    else:
        buf = xp.empty((c, B) + tuple(grid), dtype=dtype)
        _fill_box(buf, 2, box, batch_second(img))
    return buf


def _fill_box(buf, a0: int, box: tuple, img) -> None:
    """``buf[..., box, ...] = img`` (``box`` on axes ``a0, a0 + 1, ...``) and zeros around it, each entry written once."""
    inner = [slice(None)] * buf.ndim
    for ax, sl in enumerate(box):  # the slabs before and after the box along each axis, within the box's earlier axes
        a = a0 + ax
        lo, hi = sl.start or 0, buf.shape[a] if sl.stop is None else sl.stop
        if lo > 0:
            buf[tuple(inner[:a]) + (slice(0, lo),)] = 0
        if hi < buf.shape[a]:
            buf[tuple(inner[:a]) + (slice(hi, None),)] = 0
        inner[a] = slice(lo, hi)
    buf[tuple(inner)] = img


class ConvGeometry:
    """Everything about a convolution layer but its kernel values.

    Parameters
    ----------
    kernel_shape : tuple of int
        ``(c_out, c_in / groups, k_1, ..., k_D)``.
    in_shape : int or tuple of int
        ``(n_1, ..., n_D)``, the spatial shape of one input channel (an int
        for ``D = 1``).
    stride, dilation : int or tuple of int
    padding : str, int or tuple
        As in :class:`structops.ConvND`.
    groups : int
        Channel groups as in ``torch.nn.Conv2d``: output channel ``o`` reads
        the inputs ``g c_in / groups ... (g + 1) c_in / groups - 1`` of its
        group ``g = o // (c_out / groups)``.

    Attributes
    ----------
    c_out, c_in : int
        All channels (``c_in = groups * kernel_shape[1]``).
    groups : int
    kernel_size, in_shape, out_shape, stride, dilation : tuple of int
    padding : tuple of (int, int)
        Resolved ``(lo, hi)`` per axis.
    circular : bool
    ndim : int
        ``D``, the number of spatial axes.
    taps : int
        ``prod(kernel_size)``.
    n_in, n_out : int
        ``c_in prod(in_shape)`` and ``c_out prod(out_shape)``: the operator is ``n_out x n_in``.

    Examples
    --------
    >>> from structops.operators.geometry import ConvGeometry
    >>> g = ConvGeometry((8, 3, 3, 3), (32, 32), stride=2)
    >>> g.out_shape, g.padding, g.n_out
    ((16, 16), ((1, 1), (1, 1)), 2048)
    """

    def __init__(self, kernel_shape, in_shape, stride=1, padding="same", dilation=1, groups=1):
        kernel_shape = int_tuple(kernel_shape, len(kernel_shape), "kernel shape")
        if len(kernel_shape) < 3:
            raise ValueError(f"kernel shape {kernel_shape}; expected (c_out, c_in, k_1, ..., k_D) with D >= 1")
        D = len(kernel_shape) - 2
        self.ndim = D
        self.groups = as_int(groups, "groups", minimum=1)
        if kernel_shape[0] % self.groups:
            raise ValueError(f"groups={self.groups} does not divide the {kernel_shape[0]} output channels")
        self.c_out, self.c_in = kernel_shape[0], kernel_shape[1] * self.groups
        self.kernel_size = kernel_shape[2:]
        self.in_shape = _in_shape(in_shape, D)
        self.stride = int_tuple(stride, D, "stride")
        self.dilation = int_tuple(dilation, D, "dilation")
        self.padding, self.circular = resolve_padding(padding, self.kernel_size, self.dilation, self.in_shape)
        self.out_shape = conv_output_shape(self.in_shape, self.kernel_size, self.stride, self.padding, self.dilation)
        self.n_in = check_size((self.c_in,) + self.in_shape, "the layer's input")
        self.n_out = check_size((self.c_out,) + self.out_shape, "the layer's output")
        self.taps = check_size(self.kernel_size, "the kernel")
        check_size([n + lo + hi for n, (lo, hi) in zip(self.in_shape, self.padding)], "the padded input")

    # -- description --------------------------------------------------------------------
    @property
    def kernel_shape(self) -> tuple:
        return (self.c_out, self.c_in // self.groups) + self.kernel_size

    @property
    def padding_spec(self):
        """``"circular"`` or the resolved pairs: a ``padding`` argument that rebuilds this geometry."""
        return "circular" if self.circular else self.padding

    def key(self) -> tuple:
        """A hashable summary (equal geometries have equal keys)."""
        return (self.kernel_shape, self.in_shape, self.stride, self.dilation, self.padding, self.circular, self.groups)

    def __eq__(self, other):
        return isinstance(other, ConvGeometry) and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())

    def __repr__(self) -> str:
        return f"ConvGeometry({self.describe()})"

    def describe(self) -> str:
        return (
            f"{self.c_in} -> {self.c_out} channels, kernel {self.kernel_size}, input {self.in_shape}, "
            f"stride {self.stride}, dilation {self.dilation}, padding {self.padding_spec}"
            + (f", groups {self.groups}" if self.groups > 1 else "")
        )

    # -- the periodic grid and the symbol ---------------------------------------------
    def periodic_taps(self, grid=None, form: str = "convolution"):
        """Position of every tap on a periodic grid, per axis.

        Parameters
        ----------
        grid : tuple of int, optional
            Grid size per axis (default: ``in_shape``, the circular layer's grid).
        form : {"convolution", "correlation"}
            ``(lo - d dilation) mod F`` or ``(d dilation - lo) mod F`` (see the module notes).

        Returns
        -------
        tuple of ndarray
            One integer array of length ``k_a`` per axis.
        """
        grid = self.in_shape if grid is None else tuple(grid)
        if form not in ("convolution", "correlation"):
            raise ValueError(f"form={form!r}; expected 'convolution' or 'correlation'")
        sign = 1 if form == "convolution" else -1
        return tuple(
            np.array([(sign * (lo - d * dl)) % F for d in range(k)], dtype=np.intp)
            for (lo, _), k, dl, F in zip(self.padding, self.kernel_size, self.dilation, grid)
        )

    def taps_distinct(self, grid=None) -> bool:
        """Whether no two taps share a slot of the periodic grid (effective kernel size <= grid)."""
        grid = self.in_shape if grid is None else tuple(grid)
        return all(dl * (k - 1) < F for k, dl, F in zip(self.kernel_size, self.dilation, grid))

    def periodic_filter(self, kernel, grid=None, form: str = "convolution", dtype=None):
        """The kernel placed on a periodic grid, ``(c_out, c_in, *grid)``.

        Taps that fall on the same slot (an effective kernel larger than the
        grid) are summed, as the periodic layer sums them.
        """
        xp = get_xp(kernel)
        grid = self.in_shape if grid is None else tuple(grid)
        check_memory(self.c_out * self.c_in * check_size(grid, "grid") * np.dtype(dtype or kernel.dtype).itemsize,
                     "the periodic filter")
        h = xp.zeros(kernel.shape[:2] + grid, dtype=dtype or kernel.dtype)
        idx = self.periodic_taps(grid, form)
        if self.taps_distinct(grid):
            h[(slice(None), slice(None)) + np.ix_(*idx)] = kernel
        else:
            for d in np.ndindex(*self.kernel_size):
                pos = tuple(int(i[a]) for i, a in zip(idx, d))
                h[(slice(None), slice(None)) + pos] += kernel[(slice(None), slice(None)) + d]
        return h

    def symbol(self, kernel, grid=None, real: bool | None = None):
        """The per-frequency channel matrices ``H(omega)``, frequency first: ``(n_freq, c_out, c_in)``.

        Parameters
        ----------
        kernel : array, shape ``(c_out, c_in, *k)``
        grid : tuple of int, optional
            Default ``in_shape``.
        real : bool, optional
            Half grid (``rfftn``; the other half is the complex conjugate) for
            real kernels; default: whether the kernel is real.
        """
        xp = get_xp(kernel)
        fft = get_fft(xp)
        real = kernel.dtype.kind == "f" if real is None else real
        h = self.periodic_filter(kernel, grid)
        axes = tuple(range(2, 2 + self.ndim))
        Hf = fft.rfftn(h, axes=axes) if real else fft.fftn(h, axes=axes)
        return xp.ascontiguousarray(xp.moveaxis(Hf.reshape(Hf.shape[:2] + (-1,)), -1, 0))

    def tap_pixels(self):
        """For every tap ``d`` (C order): the output and input pixels it connects.

        Returns
        -------
        list of (ndarray, ndarray)
            ``(P, Q)``: flat output pixels ``p`` and the flat input pixels
            ``q = p s + d delta - lo`` they read (modulo the grid for circular
            padding; pairs outside the image are left out under zero padding).
        """
        axes = []
        for n, m, s, dl, (lo, _), k in zip(self.in_shape, self.out_shape, self.stride, self.dilation, self.padding,
                                           self.kernel_size):
            per = []
            for j in range(k):
                p = np.arange(m)
                q = p * s + j * dl - lo
                if self.circular:
                    q = q % n
                else:
                    p, q = p[(q >= 0) & (q < n)], q[(q >= 0) & (q < n)]
                per.append((p, q))
            axes.append(per)
        pairs = []
        for d in np.ndindex(*self.kernel_size):
            parts = [axes[a][d[a]] for a in range(self.ndim)]
            P = np.ravel_multi_index(np.meshgrid(*[p for p, _ in parts], indexing="ij"), self.out_shape).ravel()
            Q = np.ravel_multi_index(np.meshgrid(*[q for _, q in parts], indexing="ij"), self.in_shape).ravel()
            pairs.append((P, Q))
        return pairs

    def sparse_matrix(self, kernel, format: str = "csr"):
        """The layer as a SciPy sparse matrix, ``(n_out, n_in)``, assembled from the taps.

        Row ``(o, p)`` and column ``(i, q)`` in the operator's (C) order; the
        entry of tap ``d`` is ``K[o, i, d]`` where output pixel ``p`` reads input
        pixel ``q = p s + d delta - lo`` (taps falling on the same pixel of a
        periodic grid are summed). Zero kernel entries are not stored.

        Parameters
        ----------
        kernel : array, shape ``kernel_shape``
            NumPy or CuPy (copied to the host); its dtype is kept.
        format : str
            A SciPy sparse format name (``"csr"``, ``"csc"``, ``"coo"``).

        Returns
        -------
        scipy.sparse matrix
            ``nnz <= c_out c_in taps prod(out_shape)``.
        """
        import scipy.sparse as sp

        K = np.asarray(to_numpy(kernel))
        if tuple(K.shape) != self.kernel_shape:
            raise ValueError(f"kernel has shape {tuple(K.shape)}; the geometry needs {self.kernel_shape}")
        npo, npi = self.n_out // self.c_out, self.n_in // self.c_in
        cog, cig = self.c_out // self.groups, self.c_in // self.groups
        check_memory(16 * np.count_nonzero(K) * npo, "the sparse matrix")
        rows, cols, vals = [], [], []
        for d, (P, Q) in zip(np.ndindex(*self.kernel_size), self.tap_pixels()):
            Kd = K[(slice(None), slice(None)) + d]
            o, i = np.nonzero(Kd)
            if not o.size or not P.size:
                continue
            rows.append((o[:, None] * npo + P).ravel())
            cols.append((((o // cog) * cig + i)[:, None] * npi + Q).ravel())
            vals.append(np.repeat(Kd[o, i], P.size))
        cat = (lambda a, dt: np.concatenate(a) if a else np.zeros(0, dtype=dt))
        A = sp.coo_matrix((cat(vals, K.dtype), (cat(rows, np.intp), cat(cols, np.intp))),
                          shape=(self.n_out, self.n_in))
        return A.asformat(format)

    def border_mask(self):
        """Which per-pixel weights are matrix entries: read-only booleans ``(*k, *out_shape)``.

        Tap ``d`` at output pixel ``p`` reads input pixel ``p s + d delta - lo``;
        under zero padding the entry exists only when that pixel is inside the
        image. All entries exist for circular padding.
        """
        return _border_mask(self.in_shape, self.kernel_size, self.stride, self.dilation, self.padding, self.circular)

    # -- polyphase layout of the direct products ---------------------------------------
    @functools.cached_property
    def _layout(self):
        return _polyphase_layout(self.in_shape, self.kernel_size, self.stride, self.dilation, self.padding)

    @property
    def Q(self) -> tuple:
        """Polyphase cells per axis: ``ceil((n + lo + hi) / stride)``."""
        return self._layout[0]

    @property
    def P(self) -> tuple:
        """Padded extent per axis, rounded up to whole polyphase cells."""
        return self._layout[1]

    @property
    def phases(self):
        """``[(phase, tap indices, flat offsets), ...]``: the taps grouped by polyphase component."""
        return self._layout[2]

    @property
    def nphase(self) -> int:
        return self._layout[3]

    @property
    def cell(self) -> int:
        return self._layout[4]

    @property
    def max_off(self) -> int:
        return self._layout[5]

    def padded_input(self, X, c: int, dtype, batch_last: bool = False):
        """``(c * N, B)`` input -> the padded grid ``(c, B, *P)`` (``(c, *P, B)`` with ``batch_last``).

        Zeros around the image, or its periodic continuation for circular
        padding; ``P`` is rounded up to whole polyphase cells (zeros there).
        """
        xp = get_xp(X)
        B = X.shape[1]
        check_memory(c * B * int(np.prod(self.P, dtype=np.float64)) * np.dtype(dtype).itemsize * 2,
                     "the padded input buffer")
        inner = tuple(slice(lo, lo + n) for (lo, _), n in zip(self.padding, self.in_shape))
        buf = _embed(xp, X.reshape((c,) + self.in_shape + (B,)), self.P, inner, dtype, batch_last)
        if self.circular:
            a0 = 1 if batch_last else 2  # the first spatial axis of buf
            for ax in range(self.ndim):
                lo, hi = self.padding[ax]
                n = self.in_shape[ax]
                _sl = _axis_slicer(buf.ndim, a0 + ax)
                if lo:
                    buf[_sl(0, lo)] = buf[_sl(n, n + lo)]
                if hi:
                    buf[_sl(lo + n, lo + n + hi)] = buf[_sl(lo, lo + hi)]
        return buf

    def unpad(self, buf, B: int, batch_last: bool = False, out=None):
        """Adjoint of :meth:`padded_input`: the padded grid -> ``(c * N, B)``.

        Circular padding folds the borders back onto the image; zero padding
        drops them. ``buf`` is written to in the circular case. ``out``: a
        C-contiguous ``(c * N, B)`` array to write the result to (returned).
        """
        if self.circular:
            a0 = 1 if batch_last else 2
            for ax in reversed(range(self.ndim)):
                lo, hi = self.padding[ax]
                n = self.in_shape[ax]
                _sl = _axis_slicer(buf.ndim, a0 + ax)
                if hi:
                    buf[_sl(lo, lo + hi)] += buf[_sl(lo + n, lo + n + hi)]
                if lo:
                    buf[_sl(n, n + lo)] += buf[_sl(0, lo)]
        inner = tuple(slice(lo, lo + n) for (lo, _), n in zip(self.padding, self.in_shape))
        if batch_last:
            img = buf[(slice(None),) + inner]
        else:
            img = _move_batch_last(buf[(slice(None), slice(None)) + inner])
        return _write(img, B, out)

    def to_phases(self, X, c: int, dtype, batch_last: bool = False):
        """``(c * N, B)`` input -> ``(nphase, c, B * cell)`` padded polyphase buffer.

        Each phase holds ``(c, B, *Q)`` (one image after the other), or with
        ``batch_last`` ``(c, *Q, B)``: the columns' own order, so the input is
        not transposed, and a tap's flat offset is ``B`` times larger (see
        :meth:`scaled_phases`).
        """
        xp = get_xp(X)
        B = X.shape[1]
        D = self.ndim
        buf = self.padded_input(X, c, dtype, batch_last)
        if self.nphase == 1:
            return buf.reshape(1, c, -1)
        cells = tuple(v for q, s in zip(self.Q, self.stride) for v in (q, s))
        if batch_last:  # (c, Q_1, s_1, ..., B) -> (s_1, ..., c, Q_1, ..., B)
            split = (c,) + cells + (B,)
            perm = tuple(2 + 2 * ax for ax in range(D)) + (0,) + tuple(1 + 2 * ax for ax in range(D)) + (2 * D + 1,)
        else:  # (c, B, Q_1, s_1, ...) -> (s_1, ..., c, B, Q_1, ...)
            split = (c, B) + cells
            perm = tuple(3 + 2 * ax for ax in range(D)) + (0, 1) + tuple(2 + 2 * ax for ax in range(D))
        ph = xp.ascontiguousarray(buf.reshape(split).transpose(perm))
        return ph.reshape(self.nphase, c, -1)

    @functools.cached_property
    def _phase_windows(self) -> tuple:
        """Per phase ``r`` (a tuple of residues, one per axis) of a zero-padded grid: ``(r, box, src)``.

        ``box``: the slices of the phase's cells ``q`` that hold input pixels
        (``q s + r - lo`` within the image; ``None`` if none do), ``src``: those
        pixels' strided slices of the image. Every pixel is in one phase's
        window, once (``q = (i + lo) // s < Q`` since the grid covers ``lo + n``).

        :meth:`from_phases` copies each window into its view of the image: one
        pass, where transposing the phases back and cutting the image out of
        the padded grid took two copies (the adjoint of 64 -> 64 channels 3x3
        stride 2 on 56x56, float64, batch 16: 24 ms against 31 to 35; 3 -> 32
        on 224x224, batch 8: 19 to 22 ms against 28 to 31). :meth:`to_phases`
        keeps its two copies, a contiguous one and a transposing one: the four
        strided reads of this way measured slower for one image and for 64
        channels in a batch of 16. Worked out once (10 us a product otherwise).
        """
        windows = []
        for r in np.ndindex(*self.stride):
            box, src = [], []
            for ax in range(self.ndim):
                st, (lo, _), n, Q = self.stride[ax], self.padding[ax], self.in_shape[ax], self.Q[ax]
                q0 = max(0, -((r[ax] - lo) // st))  # the first cell with q st + r - lo >= 0
                q1 = min(Q, (n - 1 + lo - r[ax]) // st + 1) if n - 1 + lo - r[ax] >= 0 else 0
                if q0 >= q1:
                    box = None
                    break
                box.append(slice(q0, q1))
                src.append(slice(q0 * st + r[ax] - lo, (q1 - 1) * st + r[ax] - lo + 1, st))
            windows.append((r, None if box is None else tuple(box), None if box is None else tuple(src)))
        return tuple(windows)

    def from_phases(self, G, c: int, B: int, batch_last: bool = False, out=None):
        """Adjoint of :meth:`to_phases`: ``(nphase, c, B * cell)`` -> ``(c * N, B)`` (into ``out`` if given)."""
        D = self.ndim
        if self.nphase > 1 and not self.circular:  # each phase's window copied into its strided view of the image
            if out is None:
                out = get_xp(G).empty((c * int(np.prod(self.in_shape)), B), dtype=G.dtype)
            elif not out.flags.c_contiguous:
                raise ValueError("out must be a C-contiguous array")
            img = out.reshape((c,) + self.in_shape + (B,))  # a view: every pixel is written once below
            if batch_last:
                ph, lead = G.reshape(tuple(self.stride) + (c,) + self.Q + (B,)), (slice(None),)
            else:
                ph, lead, img = G.reshape(tuple(self.stride) + (c, B) + self.Q), (slice(None),) * 2, batch_second(img)
            for r, box, src in self._phase_windows:
                if box is not None:
                    img[lead + src] = ph[r][lead + box]
            return out
        if self.nphase == 1:
            buf = G.reshape(((c,) + self.P + (B,)) if batch_last else ((c, B) + self.P))
        elif batch_last:  # (s_1, ..., c, Q_1, ..., B) -> (c, Q_1, s_1, ..., B)
            ph = G.reshape(tuple(self.stride) + (c,) + self.Q + (B,))
            perm = (D,) + tuple(v for ax in range(D) for v in (D + 1 + ax, ax)) + (2 * D + 1,)
            buf = ph.transpose(perm).reshape((c,) + self.P + (B,))
        else:
            ph = G.reshape(tuple(self.stride) + (c, B) + self.Q)
            perm = (D, D + 1) + tuple(v for ax in range(D) for v in (D + 2 + ax, ax))
            buf = ph.transpose(perm).reshape((c, B) + self.P)
        return self.unpad(buf, B, batch_last, out)

    def to_cells(self, Y, c: int, dtype, batch_last: bool = False, lead: int = 0):
        """``(c * M, B)`` output -> ``(c, B * cell)`` zero-filled output grid (``(c, *Q, B)`` with ``batch_last``).

        ``lead`` (``batch_last`` only): that many more zeros before each channel, ``(c, lead + B * cell)``.
        """
        if lead and not batch_last:
            raise ValueError("leading zeros (lead > 0) are for batch_last grids only")
        xp = get_xp(Y)
        B = Y.shape[1]
        valid = tuple(slice(0, o) for o in self.out_shape)
        grid = _embed(xp, Y.reshape((c,) + self.out_shape + (B,)), self.Q, valid, dtype, batch_last, lead)
        return grid.reshape(c, -1)

    def from_cells(self, ext, c: int, B: int, batch_last: bool = False, out=None):
        """``(c, B * cell)`` output grid -> ``(c * M, B)`` (valid entries only; into ``out`` if given)."""
        valid = tuple(slice(0, o) for o in self.out_shape)
        if batch_last:
            y = ext.reshape((c,) + self.Q + (B,))[(slice(None),) + valid]
        else:
            y = _move_batch_last(ext.reshape((c, B) + self.Q)[(slice(None), slice(None)) + valid])
        return _write(y, B, out)

    def scaled_phases(self, step: int):
        """:attr:`phases` and :attr:`max_off` with the flat offsets times ``step``.

        ``step = B`` for the ``batch_last`` buffers of :meth:`to_phases` and
        :meth:`to_cells`, where neighbouring cells are ``B`` entries apart.
        """
        if step == 1:
            return self.phases, self.max_off
        return [(ph, taps, [off * step for off in offs]) for ph, taps, offs in self.phases], self.max_off * step

    @functools.cached_property
    def tap_grids(self):
        """Per entry of :attr:`phases`: ``(shape, strides)`` of its taps as a grid, or ``None``.

        The taps of a phase are a product of arithmetic progressions, one per
        axis (``d`` with ``d delta = r mod s``), enumerated row-major, so that
        tap ``k`` (grid index) sits at the flat offset ``offs[0] + k . strides``.
        ``None`` where that does not hold (never, for these layers; checked).
        """
        grids = []
        for _, taps, offs in self.phases:
            d = np.array(np.unravel_index(np.asarray(taps), self.kernel_size)).reshape(self.ndim, -1)
            shape = tuple(int(np.unique(d[ax]).size) for ax in range(self.ndim))
            if int(np.prod(shape)) != len(taps):
                grids.append(None)
                continue
            # grid point e_ax (one step along axis ax) is tap number prod(shape[ax + 1:]) of the phase
            strides = tuple(offs[int(np.prod(shape[ax + 1:]))] - offs[0] if shape[ax] > 1 else 0
                            for ax in range(self.ndim))
            k = np.array(np.unravel_index(np.arange(len(taps)), shape)).reshape(self.ndim, -1)
            ok = np.array_equal(offs[0] + np.asarray(strides) @ k, np.asarray(offs))
            grids.append((shape, strides) if ok else None)
        return grids

    def chunks(self, length: int, rows: int, itemsize: int):
        """Split ``range(length)`` into chunks whose ``rows x chunk`` temporaries fit the budget (at least 256 long)."""
        size = max(CHUNK_BYTES // max(rows * itemsize, 1), 256)
        for j0 in range(0, length, size):
            yield j0, min(length, j0 + size)


@functools.lru_cache(maxsize=256)
def _polyphase_layout(in_shape, kernel_size, stride, dilation, padding):
    """``(Q, P, phases, nphase, cell, max_off)`` of the direct products (cached per geometry; treat as read-only)."""
    D = len(in_shape)
    padded = [n + lo + hi for n, (lo, hi) in zip(in_shape, padding)]
    Q = tuple(-(-p // s) for p, s in zip(padded, stride))
    P = tuple(q * s for q, s in zip(Q, stride))
    fs = [int(np.prod(Q[ax + 1 :], dtype=np.int64)) for ax in range(D)]
    groups = {}
    for t, d in enumerate(product(*[range(k) for k in kernel_size])):
        r = tuple((di * dl) % s for di, dl, s in zip(d, dilation, stride))
        off = sum(((di * dl) // s) * f for di, dl, s, f in zip(d, dilation, stride, fs))
        groups.setdefault(r, ([], []))
        groups[r][0].append(t)
        groups[r][1].append(off)
    phases = [(int(np.ravel_multi_index(r, stride)), np.array(ti), offs) for r, (ti, offs) in groups.items()]
    max_off = max(max(offs) for _, _, offs in phases)
    return Q, P, phases, int(np.prod(stride)), int(np.prod(Q)), max_off


def _axis_slicer(ndim, axis):
    def sl(a, b):
        idx = [slice(None)] * ndim
        idx[axis] = slice(a, b)
        return tuple(idx)

    return sl


@functools.lru_cache(maxsize=256)
def _border_mask(in_shape, kernel_size, stride, dilation, padding, circular):
    D = len(in_shape)
    out_shape = conv_output_shape(in_shape, kernel_size, stride, padding, dilation)
    if circular:
        mask = np.ones(kernel_size + out_shape, dtype=bool)
    else:
        mask = np.ones((1,) * (2 * D), dtype=bool)
        for ax, (n, k, s, dl, (lo, _), o) in enumerate(zip(in_shape, kernel_size, stride, dilation, padding,
                                                           out_shape)):
            q = np.arange(o)[None, :] * s + np.arange(k)[:, None] * dl - lo  # (k, o)
            inside = (q >= 0) & (q < n)
            shape = [1] * (2 * D)
            shape[ax], shape[D + ax] = k, o
            mask = mask & inside.reshape(shape)
    mask.setflags(write=False)
    return mask

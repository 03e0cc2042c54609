"""Singular values, vectors, norms and condition numbers against dense SVDs.

The reference matrices come from ``tests/dense.py`` (loops over the defining
sum), never from the operators under test, so a wrong structure rule (a wrong
polyphase form, a wrong multiplicity on the half frequency grid) shows up as a
mismatch with ``np.linalg.svd``.
"""

from __future__ import annotations

import re
import sys
import types
import warnings

import numpy as np
import pylops
import pytest
import scipy.sparse.linalg as spla
from dense import dense_circulant_nd, dense_conv
from hypothesis import given, settings
from hypothesis import strategies as st

import structops
from structops.linalg import lanczos
from structops.linalg import spectra as spectral
from structops.plotting import plot_spectrum
from structops.linalg.spectra import (
    SpectrumNotConvergedError,
    SpectrumNotConvergedWarning,
    cond,
    opnorm,
    singular_values,
    singular_vectors,
)

RTOL = 1e-9

# (kernel shape, in_shape, stride, padding, dilation)
CIRCULAR = [
    ((3, 2, 3, 3), (6, 7), 1, "circular", 1),  # c_out > c_in, even x odd
    ((2, 3, 3, 3), (8, 8), 1, "circular", 2),  # c_out < c_in, dilation 2
    ((2, 3, 3, 3), (8, 6), 2, "circular", 1),  # stride 2: 2 x 12 polyphase matrices
    ((5, 1, 3, 3), (8, 8), 2, "circular", 1),  # c_out > prod(stride) c_in
    ((2, 3, 3, 3), (6, 8), (2, 1), "circular", 1),  # stride on one axis only
    ((3, 3, 3, 3), (5, 5), 1, "circular", 1),  # square channels, odd sizes
    ((2, 2, 3), (9,), 3, "circular", 1),  # 1-D, odd, stride 3
    ((3, 2, 3), (10,), 2, "circular", 2),  # 1-D, stride and dilation
    ((2, 3, 5), (7,), 1, "circular", 1),  # 1-D, odd size, wide kernel
    ((2, 2, 5, 5), (6, 6), 1, "circular", 1),  # many taps on a small grid: the FFT route
]
ZERO = [
    ((3, 2, 3, 3), (7, 6), 1, "same", 1),
    ((2, 3, 3, 3), (8, 7), 2, "same", 2),  # stride 2 and dilation 2
    ((2, 3, 3, 3), (6, 6), 1, "valid", 1),  # fewer outputs than inputs
    ((2, 2, 3), (9,), 2, "valid", 1),
    ((3, 2, 3), (10,), 1, "full", 1),
    ((3, 2, 3, 3), (6, 6), 3, "circular", 1),  # circular, stride not dividing n: no exact rule
]


def _ids(cases):
    return [f"{k}-{n}-s{s}-{p}-d{d}" for k, n, s, p, d in cases]


def _kernel(rng, shape, complex_=False, dtype=np.float64):
    K = rng.standard_normal(shape)
    if complex_:
        K = K + 1j * rng.standard_normal(shape)
    return K.astype(dtype if not complex_ else np.complex128)


def _layer_and_dense(rng, case, complex_=False, dtype=np.float64):
    ks, n, s, p, d = case
    K = _kernel(rng, ks, complex_, dtype)
    op = structops.ConvND(K, n, stride=s, padding=p, dilation=d)
    A = dense_conv(K.astype(np.complex128 if complex_ else np.float64), n, s, op.padding, d, op.circular)
    return op, A


def _svd(A):
    return np.linalg.svd(A, compute_uv=False)


def _assert_spectrum(got, ref, rtol=RTOL, scale=None):
    """``got`` descending float64 and equal to ``ref`` to ``rtol * scale`` (default ``ref[0]``)."""
    assert got.dtype == np.float64
    assert isinstance(got, np.ndarray)
    assert got.shape == ref.shape
    assert np.all(np.diff(got) <= 0), "not descending"
    scale = ref[0] if scale is None else scale
    np.testing.assert_allclose(got, ref, rtol=0, atol=rtol * scale)


def _assert_triplets(A, s, U, V, rtol=RTOL):
    k = len(s)
    assert U.shape == (A.shape[0], k) and V.shape == (A.shape[1], k)
    scale = np.linalg.norm(A, 2)
    np.testing.assert_allclose(A @ V, U * s, rtol=0, atol=rtol * scale)
    np.testing.assert_allclose(A.conj().T @ U, V * s, rtol=0, atol=rtol * scale)
    np.testing.assert_allclose(U.conj().T @ U, np.eye(k), rtol=0, atol=1e-10)
    np.testing.assert_allclose(V.conj().T @ V, np.eye(k), rtol=0, atol=1e-10)


# ---------------------------------------------------------------- full spectra
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("case", CIRCULAR, ids=_ids(CIRCULAR))
def test_circular_full_spectrum(rng, case, complex_):
    op, A = _layer_and_dense(rng, case, complex_)
    _assert_spectrum(singular_values(op), _svd(A), rtol=1e-12)


@pytest.mark.parametrize("case", ZERO, ids=_ids(ZERO))
def test_zero_padded_full_spectrum(rng, case):
    op, A = _layer_and_dense(rng, case)
    _assert_spectrum(singular_values(op), _svd(A))


@pytest.mark.parametrize("per_frequency", ["svd", "gram", "auto"])
def test_per_frequency_solvers_agree(rng, per_frequency):
    # stride 2: 2 x 12 matrices per frequency, where "auto" takes the Gram route
    op, A = _layer_and_dense(rng, ((2, 3, 3, 3), (8, 6), 2, "circular", 1))
    _assert_spectrum(singular_values(op, per_frequency=per_frequency), _svd(A), rtol=1e-12)


def test_gram_route_recomputes_ill_conditioned_frequencies(rng):
    # nearly rank-deficient channel matrices: sigma ~ 1e-7 is where the Gram
    # matrix loses ~9 digits; "auto" must hand those frequencies to the SVD
    W = rng.standard_normal((2, 4))
    u, _, vh = np.linalg.svd(W, full_matrices=False)
    K = np.zeros((2, 4, 3, 3))
    K[:, :, 1, 1] = u @ np.diag([1.0, 3e-7]) @ vh
    K += 1e-9 * rng.standard_normal(K.shape)
    op = structops.Conv2D(K, (6, 6), padding="circular")
    ref = _svd(dense_conv(K, (6, 6), 1, op.padding, 1, True))
    _assert_spectrum(singular_values(op), ref, rtol=1e-13)
    _assert_spectrum(singular_values(op, per_frequency="svd"), ref, rtol=1e-13)
    # Gram alone is visibly worse on the small singular values, but not wrong to 1e-6
    gram = singular_values(op, per_frequency="gram")
    np.testing.assert_allclose(gram, ref, rtol=0, atol=1e-6 * ref[0])


@settings(max_examples=25, deadline=None)
@given(
    D=st.integers(1, 2),
    c_out=st.integers(1, 3),
    c_in=st.integers(1, 3),
    k=st.sampled_from([1, 3]),
    dil=st.integers(1, 2),
    stride=st.integers(1, 3),
    m=st.integers(2, 4),
    extra=st.integers(0, 1),
    seed=st.integers(0, 2**31 - 1),
)
def test_circular_spectrum_hypothesis(D, c_out, c_in, k, dil, stride, m, extra, seed):
    """Random circular layers, stride dividing the size: exact rule vs dense SVD."""
    rng = np.random.default_rng(seed)
    n = (stride * m + extra * stride,) * D if D == 1 else (stride * m, stride * (m + extra))
    e = dil * (k - 1) + 1
    if any(e > nn for nn in n):
        return
    K = rng.standard_normal((c_out, c_in) + (k,) * D)
    op = structops.ConvND(K, n, stride=stride, padding="circular", dilation=dil)
    ref = _svd(dense_conv(K, n, stride, op.padding, dil, True))
    _assert_spectrum(singular_values(op), ref, rtol=1e-12)


# ---------------------------------------------------------------- k largest / smallest
@pytest.mark.parametrize("case", CIRCULAR[:4] + ZERO[:3], ids=_ids(CIRCULAR[:4] + ZERO[:3]))
def test_k_largest_and_smallest(rng, case):
    op, A = _layer_and_dense(rng, case)
    ref = _svd(A)
    _assert_spectrum(singular_values(op, k=3), ref[:3])
    _assert_spectrum(singular_values(op, k=2, which="smallest"), ref[-2:], scale=ref[0])
    assert opnorm(op) == pytest.approx(ref[0], rel=RTOL)
    assert cond(op) == pytest.approx(ref[0] / ref[-1], rel=1e-8)


@pytest.mark.parametrize("case", ZERO[:5], ids=_ids(ZERO[:5]))
def test_zero_padded_largest_by_lanczos(rng, case):
    op, A = _layer_and_dense(rng, case)
    ref = _svd(A)
    _assert_spectrum(singular_values(op, k=3, dense=False), ref[:3])
    assert opnorm(op, dense=False) == pytest.approx(ref[0], rel=RTOL)


def test_zero_padded_lanczos_larger_layer(rng):
    # big enough that the default route is Lanczos, started from the circular layer
    K = rng.standard_normal((3, 3, 3, 3))
    op = structops.Conv2D(K, (12, 12))
    assert min(op.shape) > spectral._DENSE_PREFERRED
    ref = _svd(dense_conv(K, (12, 12), 1, op.padding, 1, False))
    _assert_spectrum(singular_values(op, k=4), ref[:4])


def test_smallest_zero_padded_without_normal_solver(rng, monkeypatch):
    monkeypatch.setitem(sys.modules, "structops.linalg.normal", None)  # import fails
    op, A = _layer_and_dense(rng, ZERO[0])
    ref = _svd(A)
    _assert_spectrum(singular_values(op, k=2, which="smallest"), ref[-2:], scale=ref[0])
    s, U, V = singular_vectors(op, k=2, which="smallest")
    _assert_triplets(A, s, U, V)
    monkeypatch.setattr(spectral, "_DENSE_MAX_ENTRIES", 10)
    monkeypatch.setattr(spectral, "_DENSE_MAX_NARROW", 1)
    with pytest.raises(NotImplementedError, match="smallest singular values"):
        singular_values(op, k=1, which="smallest")
    with pytest.raises(ValueError, match="too large for the dense fallback"):
        singular_values(op)


def test_smallest_zero_padded_reports_solver_failure(rng, monkeypatch):
    fake = types.ModuleType("structops.linalg.normal")
    fake.smallest_singular_values = lambda op, k=1, tol=1e-10, **kw: (np.arange(1.0, k + 1), {"converged": False})
    monkeypatch.setitem(sys.modules, "structops.linalg.normal", fake)
    op, A = _layer_and_dense(rng, ZERO[0])
    # a small layer falls back to the dense SVD: the right values, not the solver's
    _assert_spectrum(singular_values(op, k=2, which="smallest"), _svd(A)[-2:], scale=_svd(A)[0])
    with pytest.raises(SpectrumNotConvergedError):
        singular_values(op, k=2, which="smallest", dense=False)
    with pytest.warns(SpectrumNotConvergedWarning):
        s = singular_values(op, k=2, which="smallest", strict=False, dense=False)
    np.testing.assert_array_equal(s, [2.0, 1.0])  # descending


# ---------------------------------------------------------------- singular vectors
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("case", CIRCULAR, ids=_ids(CIRCULAR))
def test_circular_singular_vectors(rng, case, complex_):
    op, A = _layer_and_dense(rng, case, complex_)
    ref = _svd(A)
    r = min(A.shape)
    for which, k in (("largest", min(5, r)), ("smallest", min(3, r))):
        s, U, V = singular_vectors(op, k=k, which=which)
        _assert_triplets(A, s, U, V)
        _assert_spectrum(s, ref[:k] if which == "largest" else ref[r - k :], scale=ref[0])
        assert np.iscomplexobj(V) == complex_  # real layers get real vectors


@pytest.mark.parametrize("case", CIRCULAR[:3], ids=_ids(CIRCULAR[:3]))
def test_circular_all_singular_vectors_orthonormal(rng, case):
    # every frequency pair (including both on the half grid) gives orthogonal real vectors
    op, A = _layer_and_dense(rng, case)
    r = min(A.shape)
    s, U, V = singular_vectors(op, k=r)
    _assert_triplets(A, s, U, V)


@pytest.mark.parametrize("case", ZERO[:3], ids=_ids(ZERO[:3]))
@pytest.mark.parametrize("dense", [None, False])
def test_zero_padded_singular_vectors(rng, case, dense):
    op, A = _layer_and_dense(rng, case)
    s, U, V = singular_vectors(op, k=3, dense=dense)
    _assert_triplets(A, s, U, V)
    _assert_spectrum(s, _svd(A)[:3])
    if dense is None:
        s, U, V = singular_vectors(op, k=2, which="smallest")
        _assert_triplets(A, s, U, V)
        _assert_spectrum(s, _svd(A)[-2:], scale=_svd(A)[0])


def test_zero_padded_smallest_vectors_structured(rng):
    # large enough that the dense SVD is not preferred: the normal-matrix solver, residual-checked
    pytest.importorskip("structops.linalg.normal")
    op, A = _layer_and_dense(rng, ((4, 4, 3, 3), (12, 12), 1, "same", 1))
    assert min(op.shape) > spectral._DENSE_PREFERRED
    ref = _svd(A)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectrumNotConvergedWarning)
        s, U, V = singular_vectors(op, k=2, which="smallest", dense=False, strict=False)
    _assert_spectrum(s, ref[-2:], scale=ref[0])
    _assert_triplets(A, s, U, V, rtol=1e-7)  # vectors: residual-checked against tol, loosely here
    try:  # strict: accurate to tol, or an honest refusal
        s, U, V = singular_vectors(op, k=2, which="smallest", dense=False)
    except SpectrumNotConvergedError as e:
        assert "residual" in str(e)
    else:
        _assert_triplets(A, s, U, V)
    _assert_spectrum(singular_values(op, k=2, which="smallest", dense=False), ref[-2:], scale=ref[0])


# ---------------------------------------------------------------- Circulant
@pytest.mark.parametrize("shape", [(7,), (8,), (4, 6), (5, 3)])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_circulant(rng, shape, complex_):
    c = _kernel(rng, shape, complex_)
    op = structops.Circulant(c)
    A = dense_circulant_nd(c)
    ref = _svd(A)
    _assert_spectrum(singular_values(op), ref, rtol=1e-12)
    _assert_spectrum(singular_values(op, k=2, which="smallest"), ref[-2:], rtol=1e-12, scale=ref[0])
    s, U, V = singular_vectors(op, k=3)
    _assert_triplets(A, s, U, V)
    assert cond(op) == pytest.approx(ref[0] / ref[-1], rel=1e-10)


# ---------------------------------------------------------------- generic operators
@pytest.mark.parametrize("wrap", ["pylops", "scipy", "ndarray"])
@pytest.mark.parametrize("shape", [(60, 40), (30, 50)])
def test_generic_operators(rng, wrap, shape):
    B = rng.standard_normal(shape)
    op = {"pylops": pylops.MatrixMult(B), "scipy": spla.aslinearoperator(B), "ndarray": B}[wrap]
    ref = _svd(B)
    _assert_spectrum(singular_values(op), ref)
    _assert_spectrum(singular_values(op, k=3, dense=False), ref[:3])
    _assert_spectrum(singular_values(op, k=2, which="smallest", dense=False), ref[-2:], scale=ref[0])
    s, U, V = singular_vectors(op, k=2, dense=False)
    _assert_triplets(B, s, U, V)
    assert cond(op) == pytest.approx(ref[0] / ref[-1], rel=1e-8)


def test_generic_complex_operator(rng):
    B = rng.standard_normal((40, 30)) + 1j * rng.standard_normal((40, 30))
    ref = _svd(B)
    op = pylops.MatrixMult(B, dtype="complex128")
    _assert_spectrum(singular_values(op, k=2, dense=False), ref[:2])
    s, U, V = singular_vectors(op, k=2, which="smallest")
    _assert_triplets(B, s, U, V)


def test_generic_operator_too_large_for_dense(rng, monkeypatch):
    monkeypatch.setattr(spectral, "_DENSE_MAX_ENTRIES", 10)
    monkeypatch.setattr(spectral, "_DENSE_MAX_NARROW", 1)
    with pytest.raises(ValueError, match="too large for the dense fallback"):
        singular_values(pylops.MatrixMult(rng.standard_normal((30, 20))))


# ---------------------------------------------------------------- convergence
NONCONV = ((3, 3, 3, 3), (12, 12), 1, "same", 1)  # 432 x 432: one ARPACK restart is not enough


def test_non_convergence_raises(rng):
    op, A = _layer_and_dense(rng, NONCONV)
    with pytest.raises(SpectrumNotConvergedError):
        singular_values(op, k=2, dense=False, maxiter=1)
    with pytest.raises(SpectrumNotConvergedError):
        singular_vectors(op, k=2, dense=False, maxiter=1)
    with pytest.raises(SpectrumNotConvergedError):
        singular_values(pylops.MatrixMult(A), k=2, which="smallest", dense=False, maxiter=1)


def test_smallest_zero_padded_non_convergence(rng):
    pytest.importorskip("structops.linalg.normal")
    op, A = _layer_and_dense(rng, NONCONV)
    with pytest.raises(SpectrumNotConvergedError):  # no dense fallback: the solver's failure is reported
        singular_values(op, k=3, which="smallest", maxiter=1, tol=1e-14, dense=False)
    # with the fallback allowed, a small layer gets the dense SVD's values instead of a refusal
    _assert_spectrum(singular_values(op, k=3, which="smallest", maxiter=1, tol=1e-14), _svd(A)[-3:],
                     scale=_svd(A)[0])


def test_non_convergence_warns_when_not_strict(rng):
    op, A = _layer_and_dense(rng, NONCONV)
    with pytest.warns(SpectrumNotConvergedWarning):
        s = singular_values(op, k=2, dense=False, maxiter=1, strict=False)
    assert s.shape == (2,)
    # whatever is returned is either right or NaN, never silently wrong
    ref = _svd(A)[:2]
    ok = np.isnan(s) | np.isclose(s, ref, rtol=1e-6)
    assert ok.all()


def _no_restarts(opts):
    return opts.replace(strict=True, maxiter=0)


def test_residual_check_rejects_loose_results(rng, monkeypatch):
    # ARPACK told to stop early (tol passed to it is huge) must fail our residual check
    op, _ = _layer_and_dense(rng, ZERO[0])
    real_eigsh = spla.eigsh

    def sloppy(*args, **kwargs):
        kwargs["tol"] = 0.5
        kwargs["maxiter"] = 1
        try:
            return real_eigsh(*args, **kwargs)
        except spla.ArpackNoConvergence as e:
            return e.eigenvalues, e.eigenvectors

    monkeypatch.setattr(lanczos.spla, "eigsh", sloppy)
    fallbacks = []
    block = lanczos.block_krylov_svd

    def counted(*args, **kwargs):
        fallbacks.append(1)
        return block(*args, **kwargs)

    monkeypatch.setattr(lanczos, "block_krylov_svd", counted)
    s = singular_values(op, k=1, dense=False, tol=1e-12)
    assert fallbacks == [1]  # the loose Lanczos result was rejected; block Lanczos answered
    np.testing.assert_allclose(s, _svd(op.todense())[:1], rtol=1e-11)
    def failing(op, k, opts, vectors, **kwargs):  # no restarts, a shallow space: cannot reach tol=1e-12
        return block(op, k, _no_restarts(opts), vectors, **kwargs, depth=3, block=k + 1)

    monkeypatch.setattr(lanczos, "block_krylov_svd", failing)  # a fallback that cannot converge either
    with pytest.raises(SpectrumNotConvergedError):
        singular_values(op, k=1, dense=False, tol=1e-12)


# ---------------------------------------------------------------- precision, arguments
@pytest.mark.parametrize("case", [CIRCULAR[0], CIRCULAR[2], ZERO[0], ZERO[1]], ids=_ids([CIRCULAR[0], CIRCULAR[2], ZERO[0], ZERO[1]]))
def test_float32_layers_in_double(rng, case):
    op, A = _layer_and_dense(rng, case, dtype=np.float32)
    assert op.dtype == np.float32
    ref = _svd(A)  # of the float32 kernel's exact values
    _assert_spectrum(singular_values(op), ref)
    _assert_spectrum(singular_values(op, k=2, dense=False) if not op.circular else singular_values(op, k=2), ref[:2])
    s, U, V = singular_vectors(op, k=2)
    assert s.dtype == np.float64 and V.dtype == np.float64
    _assert_triplets(A, s, U, V)


def test_argument_errors(rng):
    op, _ = _layer_and_dense(rng, CIRCULAR[0])
    r = min(op.shape)
    with pytest.raises(ValueError, match="out of range"):
        singular_values(op, k=0)
    with pytest.raises(ValueError, match="out of range"):
        singular_values(op, k=r + 1)
    with pytest.raises(ValueError, match="which"):
        singular_values(op, k=1, which="middle")
    with pytest.raises(TypeError, match="k must be an int"):
        singular_values(op, k=1.5)
    with pytest.raises(ValueError, match="tol"):
        singular_values(op, k=1, tol=2.0)
    with pytest.raises(ValueError, match="per_frequency"):
        singular_values(op, per_frequency="qr")
    with pytest.raises(TypeError, match="linear operator"):
        singular_values("not an operator")


def test_cond_of_singular_layer_is_inf():
    K = np.zeros((2, 2, 3, 3))
    K[0, 0, 1, 1] = 1.0  # second output channel is zero
    with pytest.warns(RuntimeWarning, match="only known to be >="):
        assert cond(structops.Conv2D(K, (4, 4), padding="circular")) == np.inf


@pytest.mark.parametrize("padding", ["same", "circular"])
def test_cond_of_a_layer_singular_to_working_precision_warns_with_its_lower_bound(padding):
    """sigma_min below its error bound: the estimate is returned, the certified lower bound said beside it."""
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    V, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    K = np.zeros((3, 3, 3, 3))
    K[:, :, 1, 1] = U @ np.diag([1.0, 1e-3, 1e-17]) @ V.T  # cond 1e17 and more with the taps below
    K[:, :, 0, 1] = 0.1 * K[:, :, 1, 1]
    op = structops.Conv2D(K, (5, 5), padding=padding)
    with pytest.warns(RuntimeWarning, match="only known to be >=") as rec:
        cond(op)
    lower = float(re.search(r">= ([0-9.e+]+)", str(rec[0].message)).group(1))
    assert 1e13 <= lower <= 1.1e17
    K[:, :, 1, 1] = U @ np.diag([1.0, 1e-3, 1e-6]) @ V.T  # resolved: no warning
    K[:, :, 0, 1] = 0.1 * K[:, :, 1, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = cond(structops.Conv2D(K, (5, 5), padding=padding))
    A = structops.Conv2D(K, (5, 5), padding=padding).todense()
    s = np.linalg.svd(A, compute_uv=False)
    assert c == pytest.approx(s[0] / s[-1], rel=1e-6)


# ---------------------------------------------------------------- plots
def test_plot_spectrum_writes_png(rng, tmp_path):
    op, _ = _layer_and_dense(rng, CIRCULAR[0])
    path = tmp_path / "spectrum.png"
    s = plot_spectrum(op, path, title="circular layer")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    _assert_spectrum(s, singular_values(op))
    path2 = tmp_path / "from_values.png"
    plot_spectrum(np.array([3.0, 0.0, 1.0]), path2)
    assert path2.stat().st_size > 1000


def test_no_warnings_on_the_exact_path(rng):
    op, _ = _layer_and_dense(rng, CIRCULAR[2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        singular_values(op)
        singular_vectors(op, k=2)


def test_a_periodic_layer_s_values_per_frequency_are_computed_once_and_not_pickled(monkeypatch):
    """singular_values then singular_vectors of one circular layer: one pass of per-frequency SVDs."""
    import pickle

    from structops.linalg import circular

    calls = []
    real = circular.Symbol._values_per_frequency
    monkeypatch.setattr(circular.Symbol, "_values_per_frequency",
                        lambda self, pf: calls.append(pf) or real(self, pf))
    rng = np.random.default_rng(3)
    op = structops.Conv2D(rng.standard_normal((4, 3, 3, 3)), (8, 6), stride=2, padding="circular")
    s = structops.singular_values(op)
    s_small, U, V = structops.singular_vectors(op, k=1, which="smallest")
    s_large, _, _ = structops.singular_vectors(op, k=2)
    assert calls == ["auto"]
    dense = np.linalg.svd(op.todense(), compute_uv=False)
    np.testing.assert_allclose(s, dense, rtol=0, atol=1e-13 * dense[0])
    np.testing.assert_allclose(s_small, dense[-1:], rtol=0, atol=1e-13 * dense[0])
    np.testing.assert_allclose(s_large, dense[:2], rtol=0, atol=1e-13 * dense[0])
    np.testing.assert_allclose(np.linalg.norm(op @ V[:, 0]), dense[-1], rtol=1e-12)
    structops.singular_values(op, per_frequency="svd")  # another mode: computed for it
    assert calls == ["auto", "svd"]
    assert "_symbol_values" in op.__dict__
    op2 = pickle.loads(pickle.dumps(op))
    assert "_symbol_values" not in op2.__dict__
    np.testing.assert_array_equal(structops.singular_values(op2), s)
    assert calls == ["auto", "svd", "auto"]

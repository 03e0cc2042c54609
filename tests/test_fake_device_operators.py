"""The device (CuPy) path of the core operators, over the whole factory registry.

Every factory of :mod:`factories` is built twice from the same random
parameters: once on NumPy and once on a device array module (the factory's
``xp`` argument copies the host parameters there with ``xp.asarray``). The
device operator's products (``matvec``, ``rmatvec``, ``matmat``,
``rmatmat``) and, where it has one, its parameter Jacobian (single and
batched input, one and several directions) must come back as device arrays
of the operator's dtype equal to the NumPy results. The device is the fake of
:mod:`fake_device` (always; it turns NumPy-only calls on device data into
``TypeError``) and CuPy where a GPU is present (marker ``gpu``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import structops
from fake_device import DeviceArray, fake, fake_fft
from structops import _backend

from factories import FACTORIES, cases, random_array

CASES = [pytest.param(name, dt, id=f"{name}-{dt.name}") for name, dt in cases()]
SEED = 20240917
BATCH = 3


@dataclass
class Device:
    name: str
    xp: object

    def put(self, a):
        """Device copy of a host array."""
        return self.xp.array(a)


@pytest.fixture(params=["fake", pytest.param("cupy", marks=pytest.mark.gpu)])
def device(request, monkeypatch):
    """The fake device, and CuPy where a GPU is present."""
    if request.param == "fake":
        monkeypatch.setattr(_backend, "_cupy", fake)
        monkeypatch.setattr(_backend, "_cp_fft", fake_fft)
        return Device("fake", fake)
    if not _backend.cupy_available():
        pytest.skip("CuPy with a CUDA device is not available")
    import cupy  # pragma: no cover - GPU only

    return Device("cupy", cupy)  # pragma: no cover - GPU only


def tol(dtype) -> float:
    """Relative tolerance: 1e-12 in double precision, 1e-4 in single."""
    return 1e-4 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-12


def assert_on_device(got, want, dev: Device, dtype, what: str = ""):
    """``got`` is a device array of ``dtype`` and shape of ``want``, equal to it in relative norm."""
    assert isinstance(got, dev.xp.ndarray), f"{what}: returned {type(got)}, expected a device array"
    if dev.name == "fake":
        assert isinstance(got, DeviceArray)
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    host = _backend.to_numpy(got)
    assert type(host) is np.ndarray
    want = np.asarray(want)
    assert host.shape == want.shape, f"{what}: shape {host.shape}, expected {want.shape}"
    scale = max(float(np.linalg.norm(want)), np.finfo(np.float64).tiny)
    err = float(np.linalg.norm(host - want)) / scale
    assert err <= tol(dtype), f"{what}: relative error {err:.3e} > {tol(dtype):.0e}"


def check_operator(op, ref, dev: Device, dtype, rng):
    """Single and batched products of a device operator against its NumPy twin."""
    M, N = ref.shape
    x, y = random_array(rng, N, dtype), random_array(rng, M, dtype)
    X, Y = random_array(rng, (N, BATCH), dtype), random_array(rng, (M, BATCH), dtype)
    assert tuple(op.shape) == (M, N) and np.dtype(op.dtype) == np.dtype(ref.dtype)
    assert op.xp is dev.xp
    assert_on_device(op.matvec(dev.put(x)), ref.matvec(x), dev, dtype, "matvec")
    assert_on_device(op.rmatvec(dev.put(y)), ref.rmatvec(y), dev, dtype, "rmatvec")
    assert_on_device(op.matmat(dev.put(X)), ref.matmat(X), dev, dtype, "matmat")
    assert_on_device(op.rmatmat(dev.put(Y)), ref.rmatmat(Y), dev, dtype, "rmatmat")
    assert_on_device(op @ dev.put(X), ref @ X, dev, dtype, "op @ X")
    assert_on_device(op.H @ dev.put(y), ref.H @ y, dev, dtype, "op.H @ y")
    # N-D shaped input and output, and a PyLops composite (normal operator) of the device operator
    assert_on_device(op @ dev.put(x.reshape(op.dims)), ref @ x.reshape(ref.dims), dev, dtype, "op @ x (dims)")
    assert_on_device((op.H @ op).matvec(dev.put(x)), (ref.H @ ref).matvec(x), dev, dtype, "(op.H @ op) x")
    # single-precision parameters applied to double-precision data give double precision
    if np.dtype(dtype) == np.float32:
        X64 = random_array(rng, (N, 2), np.float64)
        Y64 = random_array(rng, (M, 2), np.float64)
        assert_on_device(op.matmat(dev.put(X64)), ref.matmat(X64), dev, np.float64, "float64 data")
        assert_on_device(op.rmatmat(dev.put(Y64)), ref.rmatmat(Y64), dev, np.float64, "float64 data (adjoint)")


def check_jacobian(J, Jr, dev: Device, dtype, rng, what: str):
    """Jacobian forward and adjoint products, one and several directions."""
    P, M = Jr.shape[1], Jr.shape[0]
    assert tuple(J.shape) == tuple(Jr.shape) and np.dtype(J.dtype) == np.dtype(Jr.dtype)
    dth, r = random_array(rng, P, dtype), random_array(rng, M, dtype)
    Dth, R = random_array(rng, (P, 2), dtype), random_array(rng, (M, 2), dtype)
    assert_on_device(J.matvec(dev.put(dth)), Jr.matvec(dth), dev, dtype, f"{what} matvec")
    assert_on_device(J.rmatvec(dev.put(r)), Jr.rmatvec(r), dev, dtype, f"{what} rmatvec")
    assert_on_device(J.matmat(dev.put(Dth)), Jr.matmat(Dth), dev, dtype, f"{what} matmat")
    assert_on_device(J.rmatmat(dev.put(R)), Jr.rmatmat(R), dev, dtype, f"{what} rmatmat")


# ------------------------------------------------------------------ every factory
@pytest.mark.parametrize("name,dtype", CASES)
def test_factory_operator_on_device(device, name, dtype):
    ref = FACTORIES[name](np, np.random.default_rng(SEED), dtype)
    case = FACTORIES[name](device.xp, np.random.default_rng(SEED), dtype)
    rng = np.random.default_rng(1)
    check_operator(case.op, ref.op, device, dtype, rng)
    if not ref.has_jacobian:
        return
    assert isinstance(case.param, device.xp.ndarray)
    # the family rebuilt from device parameters is the same operator
    check_operator(case.rebuild(case.param), ref.op, device, dtype, rng)
    N = ref.op.shape[1]
    x = random_array(rng, N, dtype)
    X = random_array(rng, (N, BATCH), dtype)
    Jr = ref.op.jacobian(x)
    check_jacobian(case.op.jacobian(device.put(x)), Jr, device, dtype, rng, "J(x)")
    check_jacobian(case.op.jacobian(device.put(x.reshape(ref.op.dims))), Jr, device, dtype, rng,
                   "J(x dims-shaped)")
    check_jacobian(case.op.jacobian(device.put(X)), ref.op.jacobian(X), device, dtype, rng, "J(X)")


# ------------------------------------------------------------------ Conv2D, both algorithms
_CONV2D = [
    dict(k=(3, 2, 3, 3), n=(7, 6), kw={}),
    dict(k=(2, 3, 3, 2), n=(8, 7), kw=dict(stride=(2, 1), dilation=(1, 2), padding=(1, (0, 2)))),
    dict(k=(2, 2, 3, 5), n=(5, 6), kw=dict(padding="circular")),
    dict(k=(2, 1, 2, 3), n=(4, 5), kw=dict(padding="full", stride=2)),
    dict(k=(6, 5, 3, 3), n=(5, 5), kw=dict(padding="valid")),  # enough channels for batched GEMMs
    dict(k=(6, 2, 3, 3), n=(6, 5), kw=dict(groups=2)),  # grouped: batched channel products
    dict(k=(8, 1, 3, 3), n=(6, 6), kw=dict(groups=4, stride=2)),  # depthwise with a channel multiplier
    dict(k=(1, 5, 3, 3), n=(6, 5), kw={}),  # few outputs: the adjoint mixes shifted copies of them
]


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("geo", _CONV2D, ids=["same", "mixed", "circular", "full-stride2", "channels", "groups",
                                                "depthwise", "few-outputs"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128], ids=["f64", "f32", "c128"])
def test_conv2d_methods_on_device(device, method, geo, dtype):
    rng = np.random.default_rng(3)
    K = random_array(rng, geo["k"], dtype)
    ref = structops.Conv2D(K, geo["n"], method=method, **geo["kw"])
    op = structops.Conv2D(device.put(K), geo["n"], method=method, **geo["kw"])
    assert op.method == method
    check_operator(op, ref, device, dtype, rng)
    N = ref.shape[1]
    x = random_array(rng, N, dtype)
    X = random_array(rng, (N, BATCH), dtype)
    check_jacobian(op.jacobian(device.put(x)), ref.jacobian(x), device, dtype, rng, "J(x)")
    check_jacobian(op.jacobian(device.put(X)), ref.jacobian(X), device, dtype, rng, "J(X)")
    # a real kernel applied to complex data, and a float32 kernel to float64 data
    if np.dtype(dtype).kind == "f":
        z = random_array(rng, (N, 2), np.complex128)
        assert_on_device(op.matmat(device.put(z)), ref.matmat(z), device,
                         np.result_type(dtype, np.complex128), "real kernel, complex data")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kshape, groups", [((2, 2, 3, 3), 1), ((4, 1, 3, 3), 1), ((4, 2, 3, 3), 2),
                                            ((1, 4, 3, 3), 1)],
                         ids=["square", "few-inputs", "grouped", "few-outputs"])
def test_conv2d_direct_chunked_on_device(device, monkeypatch, stride, kshape, groups):
    """The direct algorithm split into several column chunks (a tiny temporary budget)."""
    from structops.operators import geometry as conv

    monkeypatch.setattr(conv, "CHUNK_BYTES", 1)
    rng = np.random.default_rng(6)
    K = random_array(rng, kshape, np.float64)
    ref = structops.Conv2D(K, (24, 23), stride=stride, method="direct", groups=groups)
    op = structops.Conv2D(device.put(K), (24, 23), stride=stride, method="direct", groups=groups)
    geo = ref._geo
    assert len(list(geo.chunks(BATCH * geo.cell - geo.max_off, 18, 8))) > 1
    check_operator(op, ref, device, np.float64, rng)
    X = random_array(rng, (ref.shape[1], BATCH), np.float64)
    check_jacobian(op.jacobian(device.put(X)), ref.jacobian(X), device, np.float64, rng, "J(X)")


# ------------------------------------------------------------------ other methods
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128], ids=["f64", "f32", "c128"])
def test_circulant_spectrum_and_solve_on_device(device, dtype):
    rng = np.random.default_rng(4)
    c = random_array(rng, (4, 5), dtype)
    c[0, 0] += 20.0  # well conditioned
    ref, op = structops.Circulant(c), structops.Circulant(device.put(c))
    lam = op.eigenvalues()
    assert_on_device(lam, ref.eigenvalues(), device, lam.dtype, "eigenvalues")
    b = random_array(rng, (20, 2), dtype)
    assert_on_device(op.solve(device.put(b)), ref.solve(b), device, dtype, "solve")
    assert_on_device(op.solve(device.put(b[:, 0])), ref.solve(b[:, 0]), device, dtype, "solve (vector)")
    # a complex vector through a real circulant takes the full spectrum
    if np.dtype(dtype).kind == "f":
        z = random_array(rng, 20, np.complex128)
        assert_on_device(op.matvec(device.put(z)), ref.matvec(z), device, np.complex128, "complex input")
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        structops.Circulant(device.put(np.ones((4, 5), dtype=dtype))).solve(device.put(b))


def test_toeplitz_params_and_integer_input_on_device(device):
    rng = np.random.default_rng(5)
    c, r = rng.standard_normal(5), rng.standard_normal(4)
    ref, op = structops.Toeplitz(c, r), structops.Toeplitz(device.put(c), device.put(r))
    assert_on_device(op.params, ref.params, device, np.float64, "params")
    # integer parameters become float64 on the device they are on
    ci = np.arange(1, 6)
    op_i, ref_i = structops.Toeplitz(device.put(ci)), structops.Toeplitz(ci)
    assert np.dtype(op_i.dtype) == np.float64
    x = rng.standard_normal(5)
    assert_on_device(op_i @ device.put(x), ref_i @ x, device, np.float64, "integer c")
    K = np.arange(2 * 2 * 3).reshape(2, 2, 3)
    assert_on_device(structops.Conv1D(device.put(K), 6) @ device.put(np.ones(12)),
                     structops.Conv1D(K, 6) @ np.ones(12), device, np.float64, "integer kernel")


def test_device_errors(device):
    K = np.ones((2, 2, 3, 3))
    bad = K.copy()
    bad[0, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        structops.Conv2D(device.put(bad), (5, 5))
    with pytest.raises(ValueError, match="NaN"):
        structops.Circulant(device.put(np.array([1.0, np.inf])))
    op = structops.Conv2D(device.put(K), (5, 5))
    with pytest.raises(TypeError, match="(?i)numpy.*cupy"):
        op.matvec(np.ones(op.shape[1]))
    with pytest.raises(TypeError, match="(?i)numpy.*cupy"):
        op.jacobian(np.ones(op.shape[1]))
    with pytest.raises(TypeError, match="(?i)numpy.*cupy"):
        structops.Toeplitz(device.put(np.ones(3)), np.ones(4))

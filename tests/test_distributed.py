"""structops.distributed: layers split over MPI ranks equal the serial layer (run under ``mpiexec -n 2``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mpi4py")
pytest.importorskip("pylops_mpi")

import structops  # noqa: E402
from structops import distributed as dist  # noqa: E402

pytestmark = pytest.mark.mpi


def _comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _layer(seed=0, c_out=5, c_in=3, shape=(6, 7), **options):
    rng = np.random.default_rng(seed)  # the same on every rank
    K = rng.standard_normal((c_out, c_in, 3, 3))
    return K, shape, structops.Conv2D(K, shape, **options), rng


def _equals_serial(op, serial, x, v, tiled=False):
    """Forward and adjoint equal the serial layer's to 1e-12, and the dot test with distributed inner products."""
    y = dist.gather(op @ dist.distribute(x, op, "model"), op if tiled else None)
    z = dist.gather(op.H @ dist.distribute(v, op, "data"), op if tiled else None)
    np.testing.assert_allclose(y, serial @ x, rtol=1e-12, atol=1e-12 * np.abs(serial @ x).max())
    np.testing.assert_allclose(z, serial.H @ v, rtol=1e-12, atol=1e-12 * np.abs(serial.H @ v).max())
    lhs = (op @ dist.distribute(x, op, "model")).dot(dist.distribute(v, op, "data"))
    rhs = dist.distribute(x, op, "model").dot(op.H @ dist.distribute(v, op, "data"))
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0)


@pytest.mark.parametrize("split", ["out_channels", "in_channels"])
@pytest.mark.parametrize("options", [dict(padding=1), dict(stride=2), dict(padding="circular")])
def test_channel_splits_equal_the_serial_layer(split, options):
    K, shape, serial, rng = _layer(**options)
    x, v = rng.standard_normal(serial.shape[1]), rng.standard_normal(serial.shape[0])
    _equals_serial(dist.Conv2D(K, shape, split=split, **options), serial, x, v)


def test_batch_split_is_the_layer_on_each_rank_s_images():
    K, shape, serial, rng = _layer(padding=1)
    B = 2 * _comm().size + 1
    X = rng.standard_normal((B, serial.shape[1]))
    op = dist.Conv2D(K, shape, split="batch", batch=B, padding=1)
    y = dist.gather(op @ dist.distribute(X.reshape(-1), op, "model"))
    np.testing.assert_allclose(y.reshape(B, -1), (serial @ X.T).T, rtol=1e-12, atol=1e-12)


def test_distributed_cgls_takes_the_serial_iterates():
    import pylops
    import pylops_mpi

    K, shape, serial, rng = _layer(c_out=6, c_in=2, padding=1)
    y = serial @ rng.standard_normal(serial.shape[1])
    op = dist.Conv2D(K, shape, split="out_channels", padding=1)
    x0 = dist.distribute(np.zeros(serial.shape[1]), op, "model")
    xd = pylops_mpi.cgls(op, dist.distribute(y, op, "data"), x0=x0, niter=15, tol=0.0)[0]
    xs = pylops.optimization.basic.cgls(serial, y, x0=np.zeros(serial.shape[1]), niter=15, tol=0.0)[0]
    np.testing.assert_allclose(dist.gather(xd), xs, rtol=1e-9, atol=1e-9 * np.abs(xs).max())


def test_distributed_layers_refuse_bad_arguments():
    K, shape, _, _ = _layer()
    with pytest.raises(ValueError, match="split"):
        dist.Conv2D(K, shape, split="columns")
    with pytest.raises(ValueError, match="4-D"):
        dist.Conv2D(K[0], shape)
    with pytest.raises(ValueError, match="grouped"):
        dist.Conv2D(np.ones((4, 1, 3, 3)), shape, split="out_channels", groups=2)
    if _comm().size > 1:
        with pytest.raises(ValueError, match="at most one rank"):
            dist.Conv2D(K[:1], shape, split="out_channels")


def test_circular_spectrum_split_over_frequencies_equals_the_serial_one():
    rng = np.random.default_rng(4)
    for stride in (1, 2):
        serial = structops.Conv2D(rng.standard_normal((4, 3, 3, 3)), (8, 6), padding="circular", stride=stride)
        values, bound = dist.circular_singular_values(serial)
        ref = structops.singular_values(serial)  # the serial exact spectrum of a periodic layer
        assert values.shape == ref.shape
        np.testing.assert_allclose(values, ref, rtol=0, atol=1e-12 * ref.max())
        assert 0 <= bound <= 1e-10 * ref.max()
    with pytest.raises(ValueError, match="periodic"):
        dist.circular_singular_values(structops.Conv2D(np.ones((1, 1, 3, 3)), (5, 5), padding=1))


@pytest.mark.parametrize("split", ["out_channels", "in_channels"])
def test_sigma_max_through_the_distributed_layer_is_the_serial_certified_value(split):
    K, shape, serial, _ = _layer(seed=5, c_out=4, c_in=3, padding=1)
    op = dist.Conv2D(K, shape, split=split, padding=1)
    s_dist = structops.opnorm(dist.replicated(op))
    s_serial = structops.opnorm(serial)
    assert abs(s_dist - s_serial) <= 1e-12 * s_serial


@pytest.mark.parametrize("kernel_size, options", [
    (3, dict(padding=1)),
    (5, dict(padding="same", dilation=(1, 2))),
    (4, dict(padding=((1, 2), (2, 1)))),  # even kernel, asymmetric padding
    (3, dict(padding=((1, 1), (0, 0)), stride=(1, 2))),
])
def test_row_split_with_halo_exchange_equals_the_serial_layer(kernel_size, options):
    rng = np.random.default_rng(6)
    K = rng.standard_normal((3, 2, kernel_size, kernel_size))
    shape = (9, 8)
    serial = structops.Conv2D(K, shape, **options)
    x, v = rng.standard_normal(serial.shape[1]), rng.standard_normal(serial.shape[0])
    op = dist.Conv2D(K, shape, split="rows", **options)
    _equals_serial(op, serial, x, v, tiled=True)
    assert abs(structops.opnorm(dist.replicated(op)) - structops.opnorm(serial)) <= 1e-12 * structops.opnorm(serial)


def _grids(size):
    return [(a, size // a) for a in range(1, size + 1) if size % a == 0]


@pytest.mark.parametrize("kernel_size, options", [
    (3, dict(padding=1)),
    (5, dict(padding="same", dilation=(1, 2))),
    (4, dict(padding=((1, 2), (2, 1)))),  # even kernel, asymmetric padding
    (3, dict(padding="same", groups=2)),
])
def test_tile_split_on_every_grid_equals_the_serial_layer(kernel_size, options):
    """Tiles of rows and columns with halos along both axes (the corners through the two exchanges in turn)."""
    comm = _comm()
    rng = np.random.default_rng(16)
    K = rng.standard_normal((4, 4 // options.get("groups", 1), kernel_size, kernel_size))
    shape = (9, 16)  # tiles of at least 4 columns (the dilated kernel's halo) on up to 4 ranks
    serial = structops.Conv2D(K, shape, **options)
    x, v = rng.standard_normal(serial.shape[1]), rng.standard_normal(serial.shape[0])
    for grid in _grids(comm.size) + [None]:
        op = dist.Conv2D(K, shape, split="tiles", grid=grid, **options)
        assert op.grid[0] * op.grid[1] == comm.size
        _equals_serial(op, serial, x, v, tiled=True)
    # the certified sigma_max through the tiled products (the default grid's operator) is the serial one
    assert abs(structops.opnorm(dist.replicated(op)) - structops.opnorm(serial)) <= 1e-12 * structops.opnorm(serial)


def test_tile_split_refuses_what_it_cannot_split():
    comm = _comm()
    K = np.ones((2, 2, 3, 3))
    with pytest.raises(ValueError, match="grid"):
        dist.Conv2D(K, (8, 8), split="tiles", grid=(comm.size + 1, 1))
    with pytest.raises(ValueError, match="grid"):
        dist.Conv2D(K, (8, 8), split="out_channels", grid=(comm.size, 1))
    with pytest.raises(ValueError, match="grid"):
        dist.Conv2D(K, (8, 8), split="rows", grid=(comm.size, 1))
    if comm.size > 1:
        with pytest.raises(ValueError, match="columns"):  # split along the columns, strided along them
            dist.Conv2D(K, (8, 8), split="tiles", grid=(1, comm.size), padding=1, stride=(1, 2))
        with pytest.raises(ValueError, match="halo"):  # tiles of one column against a halo of two
            dist.Conv2D(np.ones((2, 2, 5, 5)), (8, comm.size), split="tiles", grid=(1, comm.size), padding=2)


def test_row_split_refuses_layers_it_cannot_split():
    K = np.ones((2, 2, 3, 3))
    with pytest.raises(ValueError, match="rows split"):
        dist.Conv2D(K, (8, 8), split="rows", padding=0)  # the output is shorter than the input
    with pytest.raises(ValueError, match="rows split"):
        dist.Conv2D(K, (8, 8), split="rows", padding="circular")


def test_data_parallel_training_reaches_the_serial_fit():
    """A kernel fitted to images split over the ranks (gradients all-reduced) equals the serial fit."""
    rng = np.random.default_rng(8)
    comm = _comm()
    shape, kshape = (6, 6), (2, 2, 3, 3)
    K_true = rng.standard_normal(kshape)
    layer = structops.Conv2D(K_true, shape, padding=1)
    B = 5
    X = rng.standard_normal((layer.shape[1], B))
    Y = layer.matmat(X) + 0.01 * rng.standard_normal((layer.shape[0], B))
    mine = dist.local_slice(B, comm)
    local = dist.kernel_least_squares(X[:, mine], Y[:, mine], kshape, shape, padding=1)
    full = dist.kernel_least_squares(X, Y, kshape, shape, padding=1)
    theta = rng.standard_normal(K_true.size)
    f_all, g_all = dist.data_parallel(local, comm)(theta)
    f_ser, g_ser = full(theta)
    assert abs(f_all - f_ser) <= 1e-12 * f_ser
    np.testing.assert_allclose(g_all, g_ser, rtol=1e-11, atol=1e-12 * np.abs(g_ser).max())
    opts = dict(options=dict(maxiter=500, gtol=1e-12, ftol=1e-15))
    res = dist.minimize(local, np.zeros(K_true.size), comm, **opts)
    from scipy.optimize import minimize as scipy_minimize

    ref = scipy_minimize(full, np.zeros(K_true.size), jac=True, method="L-BFGS-B", **opts)
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-7, atol=1e-7)
    # the same result on every rank
    assert np.allclose(comm.allgather(res.x)[0], res.x, rtol=0, atol=0)
    # the kernel Jacobian's adjoint is the gradient: a Taylor test of the local objective
    d = rng.standard_normal(theta.size)
    f0, g0 = full(theta)
    errs = [abs(full(theta + e * d)[0] - f0 - e * g0 @ d) for e in (1e-2, 1e-3)]
    assert errs[1] <= errs[0] / 50  # second order


def test_extended_layer_training_with_the_batch_split_reaches_the_serial_fit():
    """Per-pixel weights of an extended layer fitted to images split over the ranks equal the serial fit."""
    rng = np.random.default_rng(12)
    comm = _comm()
    shape = (5, 5)
    ext = structops.ExtendedConv2D.from_conv(structops.Conv2D(rng.standard_normal((2, 1, 3, 3)), shape, padding=1))
    W_true = np.asarray(ext.weights) * (1 + 0.3 * rng.standard_normal(ext.weights.shape))
    true = structops.ExtendedConv2D(W_true, shape, padding=1)
    B = 30  # 1500 equations for 450 weights (those the border cannot use stay at zero): one minimiser
    X = rng.standard_normal((true.shape[1], B))
    Y = true.matmat(X) + 0.01 * rng.standard_normal((true.shape[0], B))
    mine = dist.local_slice(B, comm)
    local = dist.extended_least_squares(X[:, mine], Y[:, mine], W_true.shape, shape, padding=1)
    full = dist.extended_least_squares(X, Y, W_true.shape, shape, padding=1)
    theta = rng.standard_normal(W_true.size)
    f_all, g_all = dist.data_parallel(local, comm)(theta)
    f_ser, g_ser = full(theta)
    assert abs(f_all - f_ser) <= 1e-12 * f_ser
    np.testing.assert_allclose(g_all, g_ser, rtol=1e-11, atol=1e-12 * np.abs(g_ser).max())
    d = rng.standard_normal(theta.size)  # the weight Jacobian's adjoint is the gradient: second-order Taylor
    errs = [abs(full(theta + e * d)[0] - f_ser - e * g_ser @ d) for e in (1e-2, 1e-3)]
    assert errs[1] <= errs[0] / 50
    opts = dict(options=dict(maxiter=2000, gtol=1e-12, ftol=1e-15))
    res = dist.minimize(local, np.zeros(W_true.size), comm, **opts)
    from scipy.optimize import minimize as scipy_minimize

    ref = scipy_minimize(full, np.zeros(W_true.size), jac=True, method="L-BFGS-B", **opts)
    assert abs(res.fun - ref.fun) <= 1e-8 * ref.fun
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="parameters"):
        local(theta[:-1])


def _exp_fit(seed=9, m=40):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 3.0, m)
    y = np.exp(-np.outer(t, [0.7, 2.5])) @ np.array([3.0, -1.5]) + 0.01 * rng.standard_normal(m)

    def phi(t):
        return lambda a: np.exp(-np.outer(t, a))

    def dphi(t):
        def d(a):
            D = np.zeros((t.size, 2, 2))
            for k in range(2):
                D[:, k, k] = -t * np.exp(-a[k] * t)
            return D
        return d

    return t, y, phi, dphi


@pytest.mark.parametrize("tikhonov", [0.0, 1e-3])
def test_varpro_with_rows_split_reaches_the_serial_fit(tikhonov):
    from mpi4py import MPI

    comm = _comm()
    t, y, phi, dphi = _exp_fit()
    mine = dist.local_slice(t.size, comm)
    fun = dist.varpro_objective(phi(t[mine]), y[mine], dphi=dphi(t[mine]), tikhonov=tikhonov, comm=comm)
    alone = dist.varpro_objective(phi(t), y, dphi=dphi(t), tikhonov=tikhonov, comm=MPI.COMM_SELF)
    a = np.array([0.5, 2.0])
    (f, g), (f1, g1) = fun(a), alone(a)
    assert abs(f - f1) <= 1e-12 * f1
    np.testing.assert_allclose(g, g1, rtol=1e-10, atol=1e-12 * np.abs(g1).max())
    # the reduced gradient is the derivative of the reduced objective (Golub and Pereyra)
    e = 1e-6
    fd = [(alone(a + e * d)[0] - alone(a - e * d)[0]) / (2 * e) for d in np.eye(2)]
    np.testing.assert_allclose(g1, fd, rtol=1e-6)
    from structops.solvers import varpro as serial_varpro

    ref = serial_varpro(lambda x: np.exp(-np.outer(t, x)), y, a, dphi=dphi(t), tikhonov=tikhonov)
    theta, w, res = dist.varpro(phi(t[mine]), y[mine], a, dphi=dphi(t[mine]), tikhonov=tikhonov, comm=comm,
                                method="L-BFGS-B", options=dict(gtol=1e-12, ftol=1e-15, maxiter=1000))
    np.testing.assert_allclose(theta, ref.theta, rtol=1e-5)
    np.testing.assert_allclose(w, ref.coef, rtol=1e-5)
    assert np.allclose(comm.allgather(theta)[0], theta, rtol=0, atol=0)  # every rank the same
    # Gauss-Newton across ranks (Kaufman's Jacobian), in a few steps: at least as good as the serial fit (measured:
    # 9 and 17 steps, gradients 3e-14 and 6e-12 where the serial solver stops at 2e-10 and 7e-8)
    theta, w, res = dist.varpro(phi(t[mine]), y[mine], a, dphi=dphi(t[mine]), tikhonov=tikhonov, comm=comm)
    assert res.success and res.nit <= 40, (res.nit, res.message)
    np.testing.assert_allclose(theta, ref.theta, rtol=1e-5)
    np.testing.assert_allclose(w, ref.coef, rtol=1e-5)
    f_gn, g_gn = fun(theta)
    assert res.fun == pytest.approx(f_gn, rel=1e-12) and np.allclose(res.jac, g_gn, rtol=1e-8, atol=1e-14)
    assert f_gn <= fun(ref.theta)[0] * (1 + 1e-12)
    assert np.abs(g_gn).max() <= 1e-9
    assert np.allclose(comm.allgather(theta)[0], theta, rtol=0, atol=0)


def test_varpro_objective_through_a_parametric_operator():
    from mpi4py import MPI

    from structops.operators import parametric as P

    rng = np.random.default_rng(10)
    ks = (2, 1, 3, 3)
    offset = np.zeros(ks)
    offset[0, 0, 1, 1] = 1.0
    model = P.conv(ks, (5, 5), basis=np.delete(np.eye(18), 4, axis=1), offset=offset, padding="same")
    theta = 0.3 * rng.standard_normal(17)
    y = model.operator(theta) @ rng.standard_normal(25) + 0.01 * rng.standard_normal(50)
    fun = dist.varpro_objective(model.operator, y, tikhonov=1e-3, comm=MPI.COMM_SELF)
    f, g = fun(theta)
    d = rng.standard_normal(17)
    e = 1e-6
    fd = (fun(theta + e * d)[0] - fun(theta - e * d)[0]) / (2 * e)
    assert fd == pytest.approx(float(g @ d), rel=1e-6)
    # Gauss-Newton through the operator's jacobian (no dphi): every step decreases, and it ends stationary
    theta1, w1, res = dist.varpro(model.operator, y, theta, tikhonov=1e-3, comm=MPI.COMM_SELF, max_iter=50)
    assert res.fun < f and res.success, res.message
    assert np.abs(fun(theta1)[1]).max() <= 1e-6 * max(1.0, res.fun)
    np.testing.assert_allclose(w1, fun.coef(theta1), rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="options"):
        dist.varpro(model.operator, y, theta, comm=MPI.COMM_SELF, options=dict(maxiter=3))
    with pytest.raises(ValueError, match="max_iter"):
        dist.varpro(model.operator, y, theta, comm=MPI.COMM_SELF, max_iter=-1)
    with pytest.raises(ValueError, match="xtol"):
        dist.varpro(model.operator, y, theta, comm=MPI.COMM_SELF, xtol=float("nan"))
    theta0, w0, res0 = dist.varpro(model.operator, y, theta, comm=MPI.COMM_SELF, max_iter=0)  # no step: the start
    assert np.array_equal(theta0, theta) and res0.nit == 0 and not res0.success
    assert res0.fun == pytest.approx(dist.varpro_objective(model.operator, y, comm=MPI.COMM_SELF)(theta)[0], rel=1e-12)
    with pytest.raises(ValueError, match="rows"):
        dist.varpro_objective(model.operator, y[:-1], comm=MPI.COMM_SELF)(theta)
    with pytest.raises(ValueError, match="tikhonov"):
        dist.varpro_objective(model.operator, y, tikhonov=-1.0)


def test_layer_least_squares_keeps_device_images_on_the_device():
    """Images on a device array module (the fake CuPy, which refuses NumPy-only calls on its arrays): the
    products run there, and the loss and gradient come back to the host equal to the NumPy ones."""
    from fake_device import DeviceArray, to_device, use_fake_device

    rng = np.random.default_rng(13)
    shape, kshape = (5, 6), (2, 3, 3, 3)
    layer = structops.Conv2D(rng.standard_normal(kshape), shape, padding=1)
    X = rng.standard_normal((layer.shape[1], 4))
    Y = rng.standard_normal((layer.shape[0], 4))
    theta = rng.standard_normal(int(np.prod(kshape)))
    f_host, g_host = dist.kernel_least_squares(X, Y, kshape, shape, padding=1)(theta)
    ext_shape = (2, 3, 3, 3, *shape)
    w = rng.standard_normal(int(np.prod(ext_shape)))
    e_host, h_host = dist.extended_least_squares(X, Y, ext_shape, shape, padding=1)(w)
    with use_fake_device():
        Xd, Yd = to_device(X), to_device(Y)
        f_dev, g_dev = dist.kernel_least_squares(Xd, Yd, kshape, shape, padding=1)(theta)
        e_dev, h_dev = dist.extended_least_squares(Xd, Yd, ext_shape, shape, padding=1)(w)
        seen = []

        def make(K):  # the parameters reach the layer on the device, and so do its products
            conv = structops.Conv2D(K.reshape(kshape), shape, padding=1)
            seen.append((type(K), type(conv.matmat(Xd))))
            return conv

        dist.layer_least_squares(make, Xd, Yd, theta.size)(theta)
        assert seen == [(DeviceArray, DeviceArray)]
    for (f, g), (fd, gd) in (((f_host, g_host), (f_dev, g_dev)), ((e_host, h_host), (e_dev, h_dev))):
        assert type(gd) is np.ndarray and not isinstance(gd, DeviceArray)  # the gradient is on the host
        assert fd == pytest.approx(f, rel=1e-13)
        np.testing.assert_allclose(gd, g, rtol=1e-12, atol=1e-13 * np.abs(g).max())

"""The device (CuPy) path of structops.convex on the fake device: the same results as NumPy, arrays kept there.

The fake device (:mod:`fake_device`) turns NumPy-only calls on device arrays
(and indexing a device array by a host array) into ``TypeError``, so a host
round trip hidden in a solver fails here.
"""

from __future__ import annotations

import numpy as np
import pytest

from fake_device import DeviceArray, to_device, use_fake_device
from structops.convex import (PatchOperator, gated_relu_cnn, relu_cnn, sample_gates, sample_three_layer_patterns,
                              three_layer_cnn, train_two_layer_sgd)
from structops.convex.ccnn import train_ccnn


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((6, 15)), rng.standard_normal(6)


@pytest.mark.parametrize("solve", [gated_relu_cnn, relu_cnn])
def test_two_layer_programs_on_the_device(solve):
    X, y = _data()
    host = solve(PatchOperator(X, 10, stride=5), y, 0.05, sample_gates(PatchOperator(X, 10, stride=5), 100,
                                                                        kind="mixed", seed=0))
    with use_fake_device():
        A = PatchOperator(to_device(X), 10, stride=5)
        fit = solve(A, to_device(y), 0.05, sample_gates(A, 100, kind="mixed", seed=0))
    assert isinstance(fit.V, DeviceArray) and isinstance(fit.filters, DeviceArray)
    assert fit.converged and fit.objective == pytest.approx(host.objective, rel=1e-9)
    assert fit.lower_bound <= host.objective * (1 + 1e-9)


def test_three_layer_relaxation_and_sgd_on_the_device():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((5, 4)), rng.standard_normal(5)
    A = PatchOperator(X, 3, padding="circular")
    host = three_layer_cnn(A, y, 0.1, sample_three_layer_patterns(A, 60, seed=0))
    _, h_hist = train_two_layer_sgd(A, y, 0.1, 4, epochs=30, seed=0)
    with use_fake_device():
        Ad = PatchOperator(to_device(X), 3, padding="circular")
        fit = three_layer_cnn(Ad, to_device(y), 0.1, sample_three_layer_patterns(Ad, 60, seed=0))
        _, d_hist = train_two_layer_sgd(Ad, to_device(y), 0.1, 4, epochs=30, seed=0)
    assert fit.objective == pytest.approx(host.objective, rel=1e-9) and fit.lower_bound <= host.objective * (1 + 1e-9)
    # the same objectives epoch by epoch (the first column is the clock)
    np.testing.assert_allclose(np.asarray(d_hist)[:, 1], np.asarray(h_hist)[:, 1], rtol=1e-10)


def test_ccnn_takes_device_images_and_runs_on_the_host():
    rng = np.random.default_rng(2)
    X, labels = rng.standard_normal((20, 1, 8, 8)), rng.integers(0, 3, 20)
    host = train_ccnn(X, labels, 3, seed=0)
    with use_fake_device():
        Xd = to_device(X)
        model = train_ccnn(Xd, labels, 3, seed=0)
        pred = model.predict(Xd)
        err = model.error(Xd, to_device(labels))
    assert type(pred) is np.ndarray  # documented: the classifiers run on the host
    np.testing.assert_array_equal(pred, host.predict(X))
    assert err == host.error(X, labels)

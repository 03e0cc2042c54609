"""Shared fixtures: array backends, a seeded RNG, hypothesis profiles."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# Make the package importable from a plain checkout (no install needed), and
# make the helper modules of this folder (dense.py, factories.py) importable.
_HERE = Path(__file__).resolve().parent
for _p in (str(_HERE.parent), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    settings = None

if settings is not None:
    settings.register_profile(
        "ci",
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    settings.register_profile(
        "dev",
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _cupy_available() -> bool:
    try:
        from structops._backend import cupy_available
    except Exception:
        return False
    return bool(cupy_available())


CUPY = _cupy_available()

_XP_PARAMS = [pytest.param("numpy", id="numpy")]
if CUPY:  # pragma: no cover - GPU machines only
    _XP_PARAMS.append(pytest.param("cupy", id="cupy", marks=pytest.mark.gpu))


@pytest.fixture(params=_XP_PARAMS)
def xp(request):
    """Array module under test: NumPy, and CuPy where a GPU is present."""
    if request.param == "cupy":  # pragma: no cover - GPU only
        return pytest.importorskip("cupy")
    return np


@pytest.fixture
def rng():
    """A freshly seeded generator: every test sees the same numbers."""
    return np.random.default_rng(20240917)


@pytest.fixture
def cupy():
    """The CuPy module, or a clean skip without a GPU."""
    if not CUPY:
        pytest.skip("CuPy with a CUDA device is not available")
    return pytest.importorskip("cupy")  # pragma: no cover - GPU only

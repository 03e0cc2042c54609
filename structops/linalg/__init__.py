"""Exact linear algebra on structured operators: singular values, norms, condition numbers.

Modules
-------
:mod:`~structops.linalg.spectra`
    ``singular_values``, ``singular_vectors``, ``opnorm``, ``cond``:
    dispatched on the structure of an operator, with the dense fallback.
:mod:`~structops.linalg.structure`
    Exact reductions of a layer into smaller independent layers.
:mod:`~structops.linalg.circular`
    The exact per-frequency spectra of circular layers and circulants.
:mod:`~structops.linalg.lanczos`
    Residual-checked Lanczos (ARPACK) for any operator.
:mod:`~structops.linalg.normal`
    The banded normal matrix ``M^T M`` of zero-padded layers: assembly
    (``gram``), band and multifrontal Cholesky factors (``band``,
    ``multifrontal``) and the smallest singular values (``smallest``).
:mod:`~structops.linalg.preconditioners`
    Exact or circulant preconditioners of the normal equations of a layer.
"""

from . import normal
from .preconditioners import conv_preconditioner, normal_preconditioner
from .spectra import (
    SpectrumInfo,
    SpectrumNotConvergedError,
    SpectrumNotConvergedWarning,
    cond,
    opnorm,
    singular_values,
    singular_vectors,
)

__all__ = [
    "singular_values",
    "singular_vectors",
    "opnorm",
    "cond",
    "SpectrumNotConvergedError",
    "SpectrumNotConvergedWarning",
    "SpectrumInfo",
    "conv_preconditioner",
    "normal_preconditioner",
    "normal",
]

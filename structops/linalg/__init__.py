"""Exact linear algebra on structured operators: singular values, norms, condition numbers.

:mod:`~structops.linalg.spectra` dispatches on the structure of an operator;
:mod:`~structops.linalg.normal` assembles, factorises and inverts the banded
normal matrix ``M^T M`` of zero-padded convolution layers (the smallest
singular values and the exact preconditioner of variable projection).
"""

from . import normal
from .spectra import SpectrumNotConvergedError, SpectrumNotConvergedWarning, cond, opnorm, singular_values, singular_vectors

__all__ = [
    "singular_values",
    "singular_vectors",
    "opnorm",
    "cond",
    "SpectrumNotConvergedError",
    "SpectrumNotConvergedWarning",
    "normal",
]

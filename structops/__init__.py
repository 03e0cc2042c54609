"""structops: convolution layers as matrix-free structured linear operators.

Every operator is a :class:`pylops.LinearOperator` that knows its structure
(Toeplitz, doubly block Toeplitz, circulant, channel blocks) and uses it for
fast batched products and parameter Jacobians, on NumPy or CuPy arrays.
"""

from . import nn, parametric, solvers, testing
from ._backend import cupy_available, get_xp, set_blas_threads
from ._base import StructuredOperator
from .circulant import Circulant
from .conv import Conv1D, Conv2D, Conv3D, ConvND
from .extended import ExtendedConv1D, ExtendedConv2D, ExtendedConvND, extension_penalty
from .spectral import cond, opnorm, plot_spectrum, singular_values, singular_vectors, SpectrumNotConvergedError
from .toeplitz import Toeplitz

__version__ = "0.1.0"

__all__ = [
    "StructuredOperator",
    "Toeplitz",
    "Circulant",
    "ConvND",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "ExtendedConvND",
    "ExtendedConv1D",
    "ExtendedConv2D",
    "extension_penalty",
    "singular_values",
    "singular_vectors",
    "opnorm",
    "cond",
    "plot_spectrum",
    "SpectrumNotConvergedError",
    "get_xp",
    "cupy_available",
    "set_blas_threads",
    "testing",
    "parametric",
    "nn",
    "solvers",
    "__version__",
]

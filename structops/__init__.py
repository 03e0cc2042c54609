"""structops: convolution layers as matrix-free structured linear operators.

Every operator is a :class:`pylops.LinearOperator` that knows its structure
(Toeplitz, doubly block Toeplitz, circulant, channel blocks) and uses it for
fast batched products and parameter Jacobians, on NumPy or CuPy arrays.

The package is layered (see the architecture page of the documentation):
:mod:`structops.operators` (the operators and their geometry),
:mod:`structops.linalg` (spectra), :mod:`structops.solvers`, :mod:`structops.nn`,
:mod:`structops.testing`, :mod:`structops.plotting` and the command line in
:mod:`structops.apps`. This module re-exports the public names.
"""

import sys as _sys

from . import convex, distributed, interop, linalg, nn, operators, solvers, testing
from ._backend import cupy_available, get_xp, set_blas_threads
from ._threads import get_threads, set_threads
from ._validate import MemoryLimitError, get_memory_limit, set_memory_limit
from .linalg import SpectrumNotConvergedError, cond, opnorm, singular_values, singular_vectors
from .operators import (
    Circulant,
    Conv1D,
    Conv2D,
    Conv3D,
    ConvGeometry,
    ConvND,
    ConvTranspose1D,
    ConvTranspose2D,
    ConvTranspose3D,
    ConvTransposeND,
    ExtendedConv1D,
    ExtendedConv2D,
    ExtendedConvND,
    FunctionOperator,
    Pad,
    PaddedConvND,
    StructuredOperator,
    Toeplitz,
    extension_penalty,
    parametric,
)
from .interop import from_torch, layer_spectra
from .plotting import plot_spectrum

__version__ = "0.1.0"

# ``structops.parametric`` stays importable by that name (its home is structops.operators.parametric)
_sys.modules[__name__ + ".parametric"] = parametric

__all__ = [
    "StructuredOperator",
    "FunctionOperator",
    "ConvGeometry",
    "Toeplitz",
    "Circulant",
    "ConvND",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "ConvTransposeND",
    "ConvTranspose1D",
    "ConvTranspose2D",
    "ConvTranspose3D",
    "Pad",
    "PaddedConvND",
    "ExtendedConvND",
    "ExtendedConv1D",
    "ExtendedConv2D",
    "extension_penalty",
    "from_torch",
    "layer_spectra",
    "singular_values",
    "singular_vectors",
    "opnorm",
    "cond",
    "plot_spectrum",
    "SpectrumNotConvergedError",
    "MemoryLimitError",
    "set_memory_limit",
    "get_memory_limit",
    "get_xp",
    "cupy_available",
    "set_blas_threads",
    "set_threads",
    "get_threads",
    "testing",
    "parametric",
    "operators",
    "linalg",
    "nn",
    "solvers",
    "convex",
    "distributed",
    "interop",
    "__version__",
]

"""Structured linear operators: convolution layers, Toeplitz, circulant, extended and parametric layers.

Every operator is a :class:`StructuredOperator` (a ``pylops.LinearOperator``
with vectorised batched products). :class:`ConvGeometry` holds a layer's
shapes, padding and periodic symbol without its kernel.
"""

from . import parametric
from .base import FunctionOperator, StructuredOperator, split_batch
from .circulant import Circulant
from .conv import Conv1D, Conv2D, Conv3D, ConvND
from .conv_transpose import ConvTranspose1D, ConvTranspose2D, ConvTranspose3D, ConvTransposeND
from .extended import ExtendedConv1D, ExtendedConv2D, ExtendedConvND, extension_penalty
from .pad import Pad, PaddedConvND
from .geometry import ConvGeometry, conv_output_shape, resolve_padding
from .toeplitz import Toeplitz

__all__ = [
    "StructuredOperator",
    "FunctionOperator",
    "split_batch",
    "ConvGeometry",
    "resolve_padding",
    "conv_output_shape",
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
    "parametric",
]

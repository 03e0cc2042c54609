"""Small networks built from structops operators, with Jacobian products.

See :mod:`structops.nn.layers` for the layer protocol (``forward``, ``jvp``,
``vjp``) that every layer follows.
"""

from .activations import ACTIVATIONS, Activation, get_activation
from .layers import Layer, Network, ResidualLayer, SingleLayer, dense
from .extended import ExtendedConvModel, ExtendedNetwork, ExtendedSingleLayer, ParameterIndex

__all__ = [
    "Activation",
    "ACTIVATIONS",
    "get_activation",
    "Layer",
    "SingleLayer",
    "ResidualLayer",
    "Network",
    "dense",
    "ExtendedConvModel",
    "ExtendedSingleLayer",
    "ExtendedNetwork",
    "ParameterIndex",
]

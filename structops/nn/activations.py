"""Element-wise activations with their derivatives, on NumPy or CuPy arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .._backend import get_xp

__all__ = ["Activation", "get_activation", "ACTIVATIONS"]


@dataclass(frozen=True)
class Activation:
    """An activation ``sigma`` and its derivative ``dsigma``, both element-wise.

    Attributes
    ----------
    name : str
    f : callable
        ``f(A) -> sigma(A)``.
    df : callable
        ``df(A) -> sigma'(A)``.
    """

    name: str
    f: Callable
    df: Callable

    def __call__(self, A):
        return self.f(A)


def _tanh(A):
    return get_xp(A).tanh(A)


def _dtanh(A):
    t = get_xp(A).tanh(A)
    return 1 - t * t


def _sigmoid(A):
    xp = get_xp(A)
    # 0.5 (1 + tanh(A / 2)): no overflow for large |A|
    return 0.5 * (1 + xp.tanh(0.5 * A))


def _dsigmoid(A):
    s = _sigmoid(A)
    return s * (1 - s)


def _relu(A):
    return get_xp(A).maximum(A, 0)


def _drelu(A):
    return (A > 0).astype(A.dtype)


def _sin(A):
    return get_xp(A).sin(A)


def _dsin(A):
    return get_xp(A).cos(A)


def _identity(A):
    return A


def _didentity(A):
    return get_xp(A).ones_like(A)


ACTIVATIONS = {
    "tanh": Activation("tanh", _tanh, _dtanh),
    "sigmoid": Activation("sigmoid", _sigmoid, _dsigmoid),
    "relu": Activation("relu", _relu, _drelu),
    "sin": Activation("sin", _sin, _dsin),
    "identity": Activation("identity", _identity, _didentity),
}


def get_activation(act) -> Activation:
    """An :class:`Activation` from its name (``"tanh"``, ``"sigmoid"``, ``"relu"``,
    ``"sin"``, ``"identity"``) or an :class:`Activation` itself."""
    if isinstance(act, Activation):
        return act
    if isinstance(act, str) and act.lower() in ACTIVATIONS:
        return ACTIVATIONS[act.lower()]
    raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)} or an Activation")

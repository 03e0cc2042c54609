"""Solvers on structured operators: functions returning frozen results.

Options are keyword arguments. Every solver returns a :class:`Result`
(``x, fun, success, nit, nfev, message, history, seconds`` and its own
fields) and reports through ``callback(k, x, fun, ...)``, which stops the run
by returning ``True``.
"""

from ._optim import OptimResult, Result, adam, gd, lbfgs

from .extended import (
    ExtendedTrainResult,
    InnerResult,
    inner_solve,
    joint_objective,
    reduced_objective,
    train_extended,
    train_joint,
)
from .regularize import (
    RegularizeResult,
    clip_singular_values,
    extreme_singular_values,
    frobenius_penalty,
    guo_schedule,
    regularize_spectrum,
    spectral_penalty,
)
from .varpro import VarProResult, conv_preconditioner, normal_preconditioner, reduced_jacobian, varpro

__all__ = [
    "Result",
    "OptimResult",
    "adam",
    "lbfgs",
    "gd",
    "varpro",
    "VarProResult",
    "reduced_jacobian",
    "conv_preconditioner",
    "normal_preconditioner",
    "frobenius_penalty",
    "spectral_penalty",
    "clip_singular_values",
    "extreme_singular_values",
    "regularize_spectrum",
    "guo_schedule",
    "RegularizeResult",
    "train_extended",
    "train_joint",
    "inner_solve",
    "reduced_objective",
    "joint_objective",
    "ExtendedTrainResult",
    "InnerResult",
]

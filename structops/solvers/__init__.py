"""Solvers on structured operators: functions returning frozen results.

Options are keyword arguments; long runs report through a ``callback``.
"""

from .varpro import VarProResult, conv_preconditioner, reduced_jacobian, varpro

__all__ = ["varpro", "VarProResult", "reduced_jacobian", "conv_preconditioner"]

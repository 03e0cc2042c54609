"""Public test helpers: the operator contract and the assertions it is built from.

:func:`check_operator` runs the whole contract (dot test, batched and empty
products, dense comparison, Jacobian dot and Taylor tests, spectra against a
dense SVD) on any operator; the package's own suite uses the same pieces.
"""

from .asserts import assert_adjoint, assert_matches_dense, random_like_op, taylor_test
from .contract import check_operator

__all__ = ["check_operator", "assert_adjoint", "assert_matches_dense", "taylor_test", "random_like_op"]

"""Exact objectives and gradients of small SBNs by enumeration (SPEC §2).

:mod:`~sbn_bench.reference.chain` is the reference (a layer-wise chain of transfer matrices);
:mod:`~sbn_bench.reference.naive` enumerates joint paths and serves as its test oracle.
"""

from sbn_bench.reference.chain import (
    DEFAULT_MAX_BYTES,
    ReferenceCost,
    ReferenceTooLarge,
    check_size,
    estimate_cost,
    exact_gradient,
    gradient_json,
    leaf_params,
    objective,
    objective_per_point,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ReferenceCost",
    "ReferenceTooLarge",
    "check_size",
    "estimate_cost",
    "exact_gradient",
    "gradient_json",
    "leaf_params",
    "objective",
    "objective_per_point",
]

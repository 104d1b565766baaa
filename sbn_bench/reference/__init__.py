"""Exact objectives and gradients of small SBNs by enumeration (SPEC §2).

:mod:`~sbn_bench.reference.chain` is the reference (a layer-wise chain of transfer matrices);
:mod:`~sbn_bench.reference.paths` enumerates joint paths with their probabilities (exact
expectations of path estimators); :mod:`~sbn_bench.reference.naive` sums over joint paths the plain
way and serves as the test oracle of both.
"""

from sbn_bench.reference.chain import (
    DEFAULT_MAX_BYTES,
    ReferenceCost,
    ReferenceNotFinite,
    ReferenceTooLarge,
    check_shape,
    check_size,
    estimate_cost,
    exact_gradient,
    gradient_json,
    leaf_params,
    objective,
    objective_per_point,
)
from sbn_bench.reference.paths import MAX_PATHS, enumerate_paths, num_paths, path_log_probs

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_PATHS",
    "ReferenceCost",
    "ReferenceNotFinite",
    "ReferenceTooLarge",
    "check_shape",
    "check_size",
    "enumerate_paths",
    "estimate_cost",
    "exact_gradient",
    "gradient_json",
    "leaf_params",
    "num_paths",
    "objective",
    "objective_per_point",
    "path_log_probs",
]

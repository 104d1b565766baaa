"""Estimator plugin API and the built-in library (SPEC §3–4; README "Writing an estimator")."""

from sbn_bench.estimators.base import (
    RANDOMNESS,
    ContractError,
    Estimator,
    PathSurrogateFn,
    Randomness,
    SurrogateFn,
    UnsupportedProblem,
    estimate,
    estimate_on_paths,
    from_path,
)
from sbn_bench.estimators.registry import (
    GROUP,
    EstimatorSpecError,
    PluginError,
    Registry,
    check_factory,
    load_plugin_file,
    load_registry,
    split_specs,
)

__all__ = [
    "GROUP",
    "RANDOMNESS",
    "ContractError",
    "Estimator",
    "EstimatorSpecError",
    "PathSurrogateFn",
    "PluginError",
    "Randomness",
    "Registry",
    "SurrogateFn",
    "UnsupportedProblem",
    "check_factory",
    "estimate",
    "estimate_on_paths",
    "from_path",
    "load_plugin_file",
    "load_registry",
    "split_specs",
]

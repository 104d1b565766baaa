"""Estimator plugin API and the built-in library (SPEC §3–4; README "Writing an estimator").

* :mod:`~sbn_bench.estimators.base`: the contract (:class:`Estimator`, :class:`SurrogateFn`,
  :func:`estimate`, and :func:`adapt_estimator` for estimators that learn before they estimate);
* :mod:`~sbn_bench.estimators.kernel`: the path kernel estimators are built from;
* :mod:`~sbn_bench.estimators.builtin`: the built-ins, one module per family;
* :mod:`~sbn_bench.estimators.registry`: the registry, filled from the entry-point group
  ``sbn_bench.estimators`` and plugin files;
* :mod:`~sbn_bench.estimators.testing`: the conformance kit (:func:`check_estimator`) that every
  built-in passes, for plugin authors' own tests.
"""

from sbn_bench.estimators.base import (
    ADAPT_SAMPLES,
    DEFAULT_ADAPT_STEPS,
    FAMILIES,
    RANDOMNESS,
    ContractError,
    Estimator,
    PathSurrogateFn,
    Randomness,
    SurrogateFn,
    UnsupportedProblem,
    adapt_estimator,
    check_states,
    default_bytes_per_sample,
    estimate,
    estimate_on_paths,
    from_path,
)
from sbn_bench.estimators.registry import (
    GROUP,
    EstimatorSpecError,
    PluginError,
    PluginFileError,
    PluginSource,
    Registry,
    check_factory,
    load_plugin_file,
    load_plugin_source,
    load_plugins,
    load_registry,
    split_specs,
)

__all__ = [
    "ADAPT_SAMPLES",
    "DEFAULT_ADAPT_STEPS",
    "FAMILIES",
    "GROUP",
    "RANDOMNESS",
    "ContractError",
    "Estimator",
    "EstimatorSpecError",
    "PathSurrogateFn",
    "PluginError",
    "PluginFileError",
    "PluginSource",
    "Randomness",
    "Registry",
    "SurrogateFn",
    "UnsupportedProblem",
    "adapt_estimator",
    "check_states",
    "check_factory",
    "default_bytes_per_sample",
    "estimate",
    "estimate_on_paths",
    "from_path",
    "load_plugin_file",
    "load_plugin_source",
    "load_plugins",
    "load_registry",
    "split_specs",
]

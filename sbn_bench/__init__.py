"""sbn-bench: accuracy and speed of gradient estimators for stochastic binary networks.

Public API (re-exported on purpose, imported on first use so that ``import sbn_bench`` stays light):

* problems: :class:`Problem`, :func:`random_problem`, :func:`paper_problem`, :func:`preset_problem`,
  :func:`load_problem`, :func:`save_problem` (``sbn-bench problem``), :class:`ProblemError`;
* the exact reference: :func:`exact_gradient`, :func:`exact_objective` (``sbn-bench exact``),
  :class:`ReferenceTooLarge`;
* estimators: :class:`Estimator`, :func:`estimate`, :func:`estimate_on_paths`,
  :func:`load_registry` (its ``describe()`` is ``sbn-bench list --json``);
* runs and reports: :class:`RunConfig`, :class:`ProblemSpec`, :class:`ThroughputConfig`,
  :func:`load_config`, :func:`run` (``sbn-bench run``), :class:`RunResult`, :func:`resume_config`
  (``sbn-bench run --out DIR --resume``), :func:`write_report` (``sbn-bench report``, with
  ``compare_dir`` for ``--compare``), :func:`run_paper` (``sbn-bench run --preset paper``);
  training is :func:`sbn_bench.train.train` and :func:`sbn_bench.train_study.run_study`
  (``sbn-bench train``);
* errors: :class:`SbnBenchError`, the base of every error caused by the user's input.

Training is :func:`sbn_bench.train.train` (not re-exported: it would hide the module's name).

The package is layered (README, "Architecture"): model and problems → reference → estimators →
metrics → runner → reports → experiments (paper, training) → cli; a module imports only from its
own layer and the layers before it.

References:
    Shekhovtsov, Yanush, Flach. "Path Sample-Analytic Gradient Estimators for Stochastic Binary
    Networks". NeurIPS 2020.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sbn_bench.version import __version__

_EXPORTS = {
    "Estimator": "sbn_bench.estimators",
    "Problem": "sbn_bench.problems",
    "ProblemError": "sbn_bench.problems",
    "ProblemSpec": "sbn_bench.config",
    "ReferenceTooLarge": "sbn_bench.reference",
    "RunConfig": "sbn_bench.config",
    "RunResult": "sbn_bench.runner",
    "ThroughputConfig": "sbn_bench.config",
    "SbnBenchError": "sbn_bench.errors",
    "estimate": "sbn_bench.estimators",
    "estimate_on_paths": "sbn_bench.estimators",
    "exact_gradient": "sbn_bench.reference",
    "exact_objective": ("sbn_bench.reference", "objective"),
    "load_config": "sbn_bench.config",
    "load_problem": "sbn_bench.problems",
    "load_registry": "sbn_bench.estimators",
    "paper_problem": "sbn_bench.problems",
    "preset_problem": "sbn_bench.problems",
    "random_problem": "sbn_bench.problems",
    "resume_config": "sbn_bench.runner",
    "run": "sbn_bench.runner",
    "run_paper": "sbn_bench.paper",
    "save_problem": "sbn_bench.problems",
    "write_report": "sbn_bench.reports",
}

__all__ = [
    "Estimator", "Problem", "ProblemError", "ProblemSpec", "ReferenceTooLarge", "RunConfig",
    "RunResult", "SbnBenchError", "ThroughputConfig", "__version__", "estimate",
    "estimate_on_paths", "exact_gradient", "exact_objective", "load_config", "load_problem",
    "load_registry", "paper_problem", "preset_problem", "random_problem", "resume_config", "run",
    "run_paper", "save_problem", "write_report",
]


def __getattr__(name: str) -> Any:
    """The re-exported names, imported from their modules on first use (PEP 562)."""
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'sbn_bench' has no attribute {name!r}")
    module, attr = (target, name) if isinstance(target, str) else target
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from sbn_bench.config import ProblemSpec, RunConfig, ThroughputConfig, load_config
    from sbn_bench.errors import SbnBenchError
    from sbn_bench.estimators import Estimator, estimate, estimate_on_paths, load_registry
    from sbn_bench.paper import run_paper
    from sbn_bench.problems import (
        Problem,
        ProblemError,
        load_problem,
        paper_problem,
        preset_problem,
        random_problem,
        save_problem,
    )
    from sbn_bench.reference import ReferenceTooLarge, exact_gradient
    from sbn_bench.reference import objective as exact_objective
    from sbn_bench.reports import write_report
    from sbn_bench.runner import RunResult, resume_config, run

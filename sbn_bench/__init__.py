"""sbn-bench: accuracy and speed of gradient estimators for stochastic binary networks.

Public API (re-exported on purpose):

* problems: :class:`Problem`, :func:`random_problem`, :func:`paper_problem`, :func:`preset_problem`,
  :func:`load_problem`, :func:`save_problem`;
* the exact reference: :func:`exact_gradient`, :func:`exact_objective`;
* estimators: :class:`Estimator`, :func:`estimate`, :func:`load_registry`;
* runs and reports: :class:`RunConfig`, :class:`ProblemSpec`, :func:`load_config`, :func:`run`,
  :func:`write_report`, :func:`run_paper` (``sbn-bench run --preset paper``).

Training is :func:`sbn_bench.train.train` (not re-exported: it would hide the module's name).

References:
    Shekhovtsov, Yanush, Flach. "Path Sample-Analytic Gradient Estimators for Stochastic Binary
    Networks". NeurIPS 2020.
"""

__version__ = "0.1.0"

from sbn_bench.config import ProblemSpec, RunConfig, load_config
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
from sbn_bench.runner import RunResult, run

__all__ = [
    "Estimator",
    "Problem",
    "ProblemError",
    "ProblemSpec",
    "ReferenceTooLarge",
    "RunConfig",
    "RunResult",
    "__version__",
    "estimate",
    "estimate_on_paths",
    "exact_gradient",
    "exact_objective",
    "load_config",
    "load_problem",
    "load_registry",
    "paper_problem",
    "preset_problem",
    "random_problem",
    "run",
    "run_paper",
    "save_problem",
    "write_report",
]

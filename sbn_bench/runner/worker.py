"""The worker side of the parallel executors (STYLE 15: the manager plans and writes, a worker
measures).

What travels to a worker for one cell: the :class:`~sbn_bench.runner.cells.Cell`, the problem
checkpoint (its tensors), its reference gradient (computed once by the manager; none for a
throughput cell), the run's :class:`~sbn_bench.config.RunConfig` and a :class:`Recipe` for the
cell's estimator (for a throughput cell: for every estimator of its group, measured together).
Estimators are made of closures, which the standard pickle cannot carry, so they do not travel: the
recipe holds each estimator's spec and version, the text of the run's plugin files (so that the
files need not exist on the worker's file system) and the versions of sbn-bench and torch the
manager runs. The worker rebuilds the registry from its entry points and those plugin texts,
creates each estimator by its spec exactly as the manager did, checks that its version is the
manager's, and calls the pure :func:`~sbn_bench.runner.cells.measure_cell` (with the run's
``threads`` torch threads). Registries and estimators are cached per worker process, so a plugin is
imported once per worker, not once per cell.

A cell whose estimator cannot be rebuilt (a version or package that differs on the worker, a
plugin that fails to import there) is a recorded failure of stage ``worker`` naming the
difference; the run goes on.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from sbn_bench.config import RunConfig
from sbn_bench.estimators import Estimator, PluginSource, Registry, load_plugin_source, load_registry
from sbn_bench.problems import Problem
from sbn_bench.runner.cells import (
    Cell,
    CellContext,
    CellResult,
    JobFn,
    Reference,
    failure_row,
    failure_stage,
    measure_cell,
)
from sbn_bench.version import __version__

WORKER_STAGE = "worker"
"""The ``failures.csv`` stage of a cell lost to its worker: the worker died (twice: a cell is retried
once), or could not rebuild the cell's estimator."""


@dataclass(frozen=True)
class Recipe:
    """How a worker rebuilds a cell's estimator (see the module docstring): its ``spec`` and
    ``version``, the run's plugin files' text, and the versions of sbn-bench and torch that the
    manager runs (a worker with others would measure something else). A throughput cell's recipe
    has ``group``, the ``(spec, version)`` of every estimator it measures together, and
    ``spec``/``version`` empty."""

    spec: str
    version: str
    plugins: tuple[PluginSource, ...]
    sbn_bench: str = __version__
    torch: str = torch.__version__
    group: tuple[tuple[str, str], ...] = ()
    job: JobFn | None = None
    """A job cell's function (:data:`~sbn_bench.runner.cells.JobFn`), pickled by reference."""


def recipe_of(context: CellContext) -> Recipe:
    """The recipe of a task's estimator, or of its throughput group's estimators."""
    if context.estimator is None:
        return Recipe("", "", context.plugins,
                      group=tuple((e.spec, e.version) for e in context.group))
    return Recipe(context.estimator.spec, context.estimator.version, context.plugins,
                  job=context.job)


_REGISTRIES: dict[tuple[PluginSource, ...], Registry] = {}
_ESTIMATORS: dict[tuple[tuple[PluginSource, ...], str], Estimator] = {}


def worker_registry(plugins: tuple[PluginSource, ...]) -> Registry:
    """The registry of entry points and the given plugin texts (cached per process)."""
    reg = _REGISTRIES.get(plugins)
    if reg is None:
        reg = load_registry()
        for source in plugins:
            load_plugin_source(reg, source)
        _REGISTRIES[plugins] = reg
    return reg


def _check_versions(recipe: Recipe) -> None:
    here = (__version__, torch.__version__)
    if here != (recipe.sbn_bench, recipe.torch):
        raise RuntimeError(f"this worker runs sbn-bench {here[0]} with torch {here[1]}, the run's "
                           f"manager sbn-bench {recipe.sbn_bench} with torch {recipe.torch}; install "
                           "the same versions on the workers")


def _rebuild_one(plugins: tuple[PluginSource, ...], spec: str, version: str) -> Estimator:
    key = (plugins, spec)
    est = _ESTIMATORS.get(key)
    if est is None:
        est = worker_registry(plugins).create(spec)
        _ESTIMATORS[key] = est
    if est.version != version:
        raise RuntimeError(f"estimator {spec!r} has version {est.version!r} on this worker, "
                           f"{version!r} in the run's manager; install the same packages on "
                           "the workers")
    return est


def rebuild(recipe: Recipe) -> Estimator:
    """The estimator a recipe names, built here as the manager built it (cached per process).

    Raises:
        RuntimeError: this process runs other versions of sbn-bench or torch, or builds another
            version of the estimator, than the manager (the message names both).
        EstimatorSpecError, ContractError: the spec or a plugin does not load here.
    """
    _check_versions(recipe)
    return _rebuild_one(recipe.plugins, recipe.spec, recipe.version)


def rebuild_group(recipe: Recipe) -> tuple[Estimator, ...]:
    """The estimators of a throughput cell's recipe (``recipe.group``), built here as the manager
    built them (cached per process); raises as :func:`rebuild`."""
    _check_versions(recipe)
    return tuple(_rebuild_one(recipe.plugins, spec, version) for spec, version in recipe.group)


def measure_shipped(cell: Cell, problem: Problem, reference: Reference | None, config: RunConfig,
                    recipe: Recipe, *, debug: bool = False) -> CellResult:
    """Measure one cell in a worker: rebuild its estimator (:func:`rebuild`; a throughput cell's
    estimators, :func:`rebuild_group`), then :func:`~sbn_bench.runner.cells.measure_cell` with
    ``config.threads`` torch threads. An estimator that cannot be rebuilt is a failure of stage
    ``worker`` (of the whole cell: for a throughput cell, of its whole group); a
    ``KeyboardInterrupt`` the cell raises is its failure (a worker never gets Ctrl-C: the manager
    does)."""
    torch.set_num_threads(config.threads)  # once for the process: concurrent cells never reset it
    try:
        if recipe.group:
            est, group = None, rebuild_group(recipe)
        else:
            est, group = rebuild(recipe), ()
    except (Exception, SystemExit) as e:  # noqa: BLE001 - recorded: a plugin may raise anything
        if debug:
            raise
        what = "estimators" if recipe.group else "estimator"
        return CellResult(cell, "failure", [failure_row(
            cell, WORKER_STAGE, f"the worker could not rebuild the {what}: {type(e).__name__}: "
                                f"{e}")])
    try:
        return measure_cell(cell, CellContext(problem, est, reference, config, group=group,
                                              plugins=recipe.plugins, job=recipe.job), debug=debug)
    except KeyboardInterrupt as e:
        # a worker ignores Ctrl-C (the manager's to handle): this one was raised by the code it ran
        if debug:
            raise
        return CellResult(cell, "failure", [failure_row(
            cell, failure_stage(cell),
            f"KeyboardInterrupt: {e} (raised by the estimator in a worker process, where Ctrl-C "
            "does not reach; with executor 'serial' it stops the run as Ctrl-C does)")])


def default_workers() -> int:
    """The CPUs this process may use (its affinity where known, else the CPU count): the default
    number of workers of the parallel executors."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def main_allows_processes() -> bool:
    """Whether worker processes may start from this program without surprises: they import its
    main module, which re-runs a Python script that lacks an ``if __name__ == "__main__":`` guard.
    True for the ``sbn-bench`` command (its entry-point script, or a module of the package run as
    the main one) and for interactive sessions (no main file); False for any other script, which
    can ask for ``processes`` itself."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None:
        return True
    spec = getattr(main, "__spec__", None)
    return (getattr(spec, "name", None) or "").startswith("sbn_bench") \
        or Path(path).name in ("sbn-bench", "sbn-bench.exe", "sbn-bench-script.py")

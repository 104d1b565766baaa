"""The runner: problems × checkpoints × estimators × seeds → tidy metrics, throughput, failures.

:func:`run` is the Python API behind ``sbn-bench run`` (the CLI only parses and calls it)::

    from sbn_bench.config import RunConfig, ProblemSpec
    from sbn_bench.runner import run
    result = run(RunConfig(problems=(ProblemSpec(preset="quick"),), out="runs/quick"))
    result.metrics        # pandas DataFrame, schema.METRICS_COLUMNS

The manager (this module) plans the run (:mod:`~sbn_bench.runner.plan`: every check before any
work, the cells, the manifest), hands ``(cell, context)`` tasks to an executor
(:mod:`~sbn_bench.runner.executors`), which measures each with the pure function
:func:`~sbn_bench.runner.cells.measure_cell`, and writes each result to its own part file
atomically (:mod:`sbn_bench.storage`). The reference gradient of a problem checkpoint is computed
once, by the manager, when its first statistics cell is due, and passed to every cell that needs it:
the exact one, or (``config.reference``, SPEC §8) a Monte-Carlo one
(:mod:`~sbn_bench.runner.mcref`), whose estimator and sample count are chosen before any work
(:func:`plan_mc_references`: a reference its time budget cannot bring to its ε is refused there).

Cells: for each problem and checkpoint, one statistics cell per estimator and seed, and its
throughput cell when it is the first of its network shape (unless disabled: every estimator of it,
their rounds interleaved). The statistics cells run first (in parallel with a parallel executor),
then the throughput cells one at a time, each alone on the executor, so that no other cell disturbs
its timing. Every cell, wherever it runs, computes with
``config.threads`` torch threads, and so do the manager's exact references. ``resume=True`` skips
the cells already written (failed cells are tried again) and refuses a folder whose manifest
differs. A cell whose estimator raises, or returns NaN/Inf, is recorded in ``failures.csv`` with
its message, and the run goes on (what the configuration alone makes impossible is refused before
any work instead).

``timed_metrics.csv`` (time to accuracy: ``samples_to_accuracy`` × the measured seconds per
sample) is derived from ``metrics.csv`` and ``throughput.csv`` whenever the tables are assembled,
never from state kept in the process. The manifest records the configuration, the working
directory and the plugin files' hashes: :func:`config_from_manifest` rebuilds the
:class:`~sbn_bench.config.RunConfig` and :func:`rerun` repeats a run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
import time
import warnings as warnings_mod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pandas as pd

from sbn_bench import malloc
from sbn_bench.config import ConfigError, RunConfig, named_m_grid, parse_reference
from sbn_bench.errors import SbnBenchError, check_path
from sbn_bench.estimators import Registry
from sbn_bench.estimators.registry import plugin_paths
from sbn_bench.metrics import sort_layers, timed_rows
from sbn_bench.metrics.scalars import is_resolved
from sbn_bench.problems import Problem
from sbn_bench.provenance import file_sha256
from sbn_bench.reference import num_paths
from sbn_bench.runner.cells import (
    Cell,
    CellContext,
    CellResult,
    Reference,
    exact_path_moments,
    exact_reference,
    measure_cell,
    network_key,
    stable_seed,
    stats_cell_rows,
    torch_threads,
)
from sbn_bench.runner.executors import (
    EXECUTORS,
    Executor,
    SerialExecutor,
    Task,
    make_executor,
    parse_executor,
    resolve_auto,
)
from sbn_bench.runner.mcref import ReferencePlan, mc_reference, plan_reference
from sbn_bench.runner.memory import (
    CellFailure,
    ExactImpossible,
    RunError,
    check_memory,
    choose_mode,
    chunk_size,
    exact_enumeration_bytes,
)
from sbn_bench.runner.plan import Plan, build_manifest, check_combinations, prepare
from sbn_bench.schema import THROUGHPUT_CONFIDENCE
from sbn_bench.storage import TABLES, RunDirError, RunStore
from sbn_bench.throughput import rounds_for_level

ASSEMBLE_EVERY_S = 10.0
"""The tables are re-assembled from the part files at most this often during a run, and at its end."""

__all__ = [
    "ASSEMBLE_EVERY_S", "Cell", "CellContext", "CellFailure", "CellResult", "ExactImpossible",
    "Executor", "Plan", "Reference", "RunError", "RunResult", "SerialExecutor", "Task",
    "EXECUTORS", "build_manifest", "check_combinations", "check_memory", "choose_mode",
    "chunk_size", "config_from_manifest", "eta_seconds", "exact_enumeration_bytes",
    "exact_path_moments", "exact_reference", "make_executor", "mc_reference", "measure_cell",
    "monte_carlo_reference", "plan_mc_references", "plan_reference", "prepare",
    "reference_cache_dir", "rerun", "resume_config", "run", "stable_seed", "stats_cell_rows",
    "throughput_seconds", "timed_table",
]


@dataclass
class RunResult:
    """What :func:`run` returns (everything is also in ``out``).

    Attributes:
        out: the output folder.
        metrics / throughput / failures: the assembled tables (schema columns).
        manifest: the manifest as written.
        cells_run / cells_skipped / cells_failed: counts of this invocation.
        timed_metrics: ``timed_metrics.csv`` (``time_to_accuracy_s`` rows, metrics columns).
        warnings: plugin factories that failed to load (estimators not requested by this run).
    """

    out: Path
    metrics: pd.DataFrame
    throughput: pd.DataFrame
    failures: pd.DataFrame
    manifest: dict[str, Any]
    cells_run: int = 0
    cells_skipped: int = 0
    cells_failed: int = 0
    timed_metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    warnings: list[str] = field(default_factory=list)

    @property
    def all_failed(self) -> bool:
        """Every statistics cell of the run failed (no accuracy was measured, whatever the
        throughput cells measured), or every cell: the command exits non-zero."""
        if not self.metrics.empty or self.failures.empty:
            return False
        stats_failed = (self.failures["stage"].astype(str) != "throughput").any()
        return bool(stats_failed or self.throughput.empty)

    def summary(self, m: int = 1) -> pd.DataFrame:
        """``rrmse`` at ``M = m`` per (problem, checkpoint, estimator) and layer (mean over seeds).

        Columns: layers ``1 … L`` (the deepest problem's), ``out``, ``all``; NaN where a problem
        has fewer layers than the deepest one.
        """
        df = self.metrics
        df = df[(df["metric"] == "rrmse") & (df["M"] == m)]
        if df.empty:
            return pd.DataFrame()
        tab = df.pivot_table(index=["problem", "checkpoint", "estimator"], columns="layer",
                             values="value", aggfunc="mean", sort=False)
        return tab.reindex(columns=sort_layers(df["layer"]))

    def unresolved(self, m: int = 1) -> pd.DataFrame:
        """Where :meth:`summary` is not resolved: True where a seed's ``rrmse`` at ``M = m`` has a
        standard error at least its value (e.g. a layer measured against a coarse Monte-Carlo
        reference, or ``± ∞``), or is a Monte-Carlo value whose error is unknown (NaN) or a clipped
        zero: not resolved by :func:`~sbn_bench.metrics.scalars.is_resolved`, the rule of the
        report's heatmap and ranking; the same index and columns as :meth:`summary`."""
        df = self.metrics
        df = df[(df["metric"] == "rrmse") & (df["M"] == m)]
        if df.empty:
            return pd.DataFrame()
        flag = df.assign(flag=[  # a missing value is not flagged
            math.isfinite(v) and not is_resolved(v, se, str(mode))
            for v, se, mode in zip(df["value"].astype(float), df["stderr"].astype(float),
                                   df["mode"])])
        tab = flag.pivot_table(index=["problem", "checkpoint", "estimator"], columns="layer",
                               values="flag", aggfunc="any", sort=False)
        return tab.reindex(columns=sort_layers(df["layer"])).fillna(False).astype(bool)


ProgressFn = Callable[[int, int, Cell, str, float | None], None]
"""``progress(done, total, cell, status, eta)``; status ``"done"``, ``"skipped"`` or ``"failed"``;
``eta`` the estimated seconds left (:func:`eta_seconds`), None until a cell has been measured."""


def eta_seconds(cell_seconds: list[float], remaining: int, workers: int, alone: float = 0.0
                ) -> float | None:
    """Seconds left: the mean time of the statistics cells measured so far × those remaining ÷ the
    cells that run at once (the executor's workers), plus ``alone``, the estimated seconds of the
    throughput cells still to run (each alone: :func:`throughput_seconds`); None while statistics
    cells remain and none was measured."""
    if remaining == 0:
        return alone
    if not cell_seconds:
        return None
    return (sum(cell_seconds) / len(cell_seconds) * remaining / max(1, min(workers, remaining))
            + alone)


def throughput_seconds(config: RunConfig, members: int) -> float:
    """A throughput cell's expected seconds: ``members`` estimators × ``rounds`` rounds of at
    least ``min_round_s``, and a fifth more for calibration and rounds that last longer (the
    interleaved method needs at least the first part; more rounds when an interval is wide)."""
    tp = config.throughput
    rounds = max(tp.rounds, min(tp.max_rounds, rounds_for_level(THROUGHPUT_CONFIDENCE)))
    return 1.2 * members * rounds * tp.min_round_s


def interval_stderr(lo: float, hi: float, level: float) -> float:
    """The standard error a confidence interval ``[lo, hi]`` of the median at ``level`` stands for:
    its half-width over the normal quantile of that level (``level`` 0.984, 7 rounds: 2.41; NaN, a
    run without ``ci_level``: 95%, 1.96); ``∞`` for an interval of no confidence (one round)."""
    if not math.isfinite(level):
        level = THROUGHPUT_CONFIDENCE
    if not 0 < level < 1:
        return math.inf
    return (hi - lo) / (2 * NormalDist().inv_cdf((1 + level) / 2))


def timed_table(metrics: pd.DataFrame, throughput: pd.DataFrame,
                networks: Mapping[tuple[str, str], str]) -> list[dict[str, Any]]:
    """The rows of ``timed_metrics.csv``: for every statistics cell whose estimator has a measured
    throughput on its network (``networks``: (problem, checkpoint) → network key),
    :func:`~sbn_bench.metrics.timed_rows` of its rows with the median seconds per sample and its
    confidence interval. In the order of ``metrics``."""
    if metrics.empty or throughput.empty:
        return []
    levels = throughput["ci_level"] if "ci_level" in throughput.columns else [math.nan] * len(throughput)
    spp = {(n, e): (float(s), float(lo), float(hi), float(c)) for n, e, s, lo, hi, c in zip(
        throughput["network"], throughput["estimator"], throughput["seconds_per_sample"],
        throughput["seconds_per_sample_lo"], throughput["seconds_per_sample_hi"], levels)}
    rows: list[dict[str, Any]] = []
    for (p, c, e), group in metrics.groupby(["problem", "checkpoint", "estimator"], sort=False):
        s, lo, hi, level = spp.get((networks.get((p, c), ""), e), (math.nan,) * 4)
        if math.isnan(s):
            continue
        records = group.astype(object).where(group.notna(), None).to_dict("records")
        for r in records:
            for col in ("value", "stderr"):
                r[col] = math.nan if r[col] is None else float(r[col])
        rows += timed_rows(records, s, interval_stderr(lo, hi, level))
    return rows


def _warn(messages: list[str], warn: Callable[[str], None] | None) -> None:
    for w in messages:
        if warn is not None:
            warn(w)
        else:
            warnings_mod.warn(w, stacklevel=3)


def run(config: RunConfig, *, progress: ProgressFn | None = None,
        on_cell_done: Callable[[Cell], None] | None = None,
        warn: Callable[[str], None] | None = None,
        executor: Executor | None = None) -> RunResult:
    """Run (or resume) the configured grid and write it to ``config.out``.

    Args:
        config: what to measure (``config.out`` is required).
        progress: called after every cell (see :data:`ProgressFn`).
        on_cell_done: called after every cell has been written (a test hook: raising from it
            stops the run there, as a kill would).
        warn: called with each warning before any work (plugin factories that failed to load but
            are not requested); default: :func:`warnings.warn`. Also in ``RunResult.warnings``.
        executor: where the cells run (default: :func:`make_executor` of ``config.executor``, with
            ``auto`` resolved by :func:`executor_spec`,
            started after every check and before the output folder is touched, so a scheduler
            that cannot be reached leaves nothing behind); it is closed at the end.

    Returns:
        :class:`RunResult`.

    Raises:
        RunError, ConfigError, EstimatorSpecError, ProblemError, RunDirError: bad input, before
            any work and before anything is written.
        storage.WriteError: a result file could not be written (full disk, read-only folder): the files
            written before are intact, and ``resume=True`` continues once the cause is fixed.
    """
    if not isinstance(config, RunConfig):
        raise RunError(f"argument config is a {type(config).__name__}, expected a RunConfig (RunConfig(...) "
                       "or load_config(path))", argument="config", value=config, expected="a RunConfig")
    if config.out is None:
        raise RunError("config.out is not set; give an output folder (out=…, --out DIR)",
                       argument="out", value=None, expected="an output folder")
    config = _recorded_budget(config)
    malloc.keep_freed_memory()  # the allocator's policy cells are measured under (recorded)
    plan = prepare(config)
    _warn(plan.warnings, warn)
    plan_mc_references(config, plan)
    manifest = build_manifest(config, plan)
    debug = bool(os.environ.get("SBN_BENCH_DEBUG"))
    executor = executor or make_executor(executor_spec(config, plan), debug=debug)
    out = Path(config.out)
    if config.resume and (not out.exists() or out.is_dir() and not any(out.iterdir())):
        # a typo in --out would otherwise restart a long run from nothing without a word
        fresh = (f"resume: {str(config.out)!r} holds no run to resume (it is empty or "
                 "missing); starting a new run there")
        plan.warnings.append(fresh)
        _warn([fresh], warn)
    untimed = config.resume and _throughput_was_off(out)
    try:
        store = RunStore.open(config.out, manifest, config.resume)
    except BaseException:
        executor.close()
        raise
    try:
        if untimed and config.throughput.enabled:
            # throughput off before: its settings were free to change, so a figure from still
            # earlier (under other settings) is measured again rather than reused
            for cell in plan.cells:
                if cell.kind == "throughput":
                    store.remove_part(cell.id, cell.kind)
        if config.resume:
            for left in (_left_out(store, plan), _timing_left_out(store, plan, config)):
                if left:
                    plan.warnings.append(left)
                    _warn([left], warn)
        return _run(config, plan, store, progress, on_cell_done, executor)
    finally:
        store.close()


def _left_out(store: RunStore, plan: Plan) -> str | None:
    """A warning naming the finished cells of the run folder that this resume's grid leaves out
    (an earlier session's estimators, seeds, problems or checkpoints not named again), or None."""
    parts = store.parts_outside(c.id for c in plan.cells)
    # statistics cells only (a throughput cell's id changes with its group, which is remeasured)
    rows = parts.get("metrics", []) + [r for r in parts.get("failure", []) if r.get("seed")]
    if not rows:
        return None
    what = {"estimator": sorted({r.get("estimator", "") for r in rows} - {""}),
            "seed": sorted({r.get("seed", "") for r in rows} - {""}, key=lambda v: (len(v), v)),
            "problem/checkpoint": sorted({f"{r.get('problem')}/{r.get('checkpoint')}" for r in rows})}
    shown = "; ".join(f"{k} {', '.join(v[:6])}{', …' if len(v) > 6 else ''}"
                      for k, v in what.items() if v)
    return (f"{len(rows)} finished cell(s) in {str(store.out)!r} are not in this run's grid ({shown}): "
            "their part files stay in cells/, but metrics.csv and the report leave them out; name "
            "them again (--estimators, --seeds, problems) to keep them in the tables")


def _recorded_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the run in ``out`` as recorded, or ``{}`` where it is missing or
    unreadable (:class:`RunStore` says why when it opens the folder)."""
    try:
        manifest = json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _throughput_was_off(out: Path) -> bool:
    """Whether the run in ``out`` was last configured without throughput (False where its
    manifest is missing or unreadable)."""
    try:
        return _recorded_manifest(out)["config"]["throughput"].get("enabled") is False
    except (KeyError, TypeError, AttributeError):
        return False


def _timing_left_out(store: RunStore, plan: Plan, config: RunConfig) -> str | None:
    """A warning when a resume without throughput leaves out figures measured before, or None."""
    if config.throughput.enabled or not store.parts_outside(c.id for c in plan.cells).get("throughput"):
        return None
    return (f"the throughput measured earlier in {str(store.out)!r} is left out of throughput.csv, "
            "timed_metrics.csv and the report (throughput is off in this resume); its part files "
            "stay in cells/; resume with --throughput to measure it again")


EXACT_PATH_COST = 8
"""An exact-mode path estimate's cost in sampled estimates (float64, one data point per call:
measured about 8 times a float32 sample's time per data point and parameter on the paper net)."""


def executor_spec(config: RunConfig, plan: Plan) -> str:
    """``config.executor``, with ``auto`` resolved for this run
    (:func:`~sbn_bench.runner.executors.resolve_auto`: worker processes when there are several
    CPUs and enough work in the statistics cells, counted as estimates × data points ×
    parameters, every path of an exact-mode cell :data:`EXACT_PATH_COST` estimates; ``serial`` on
    a GPU, which processes would only contend for)."""
    if parse_executor(config.executor)[0].name != "auto":
        return config.executor
    if config.device != "cpu":
        return "serial"  # one accelerator: processes would only contend for it
    stats = [c for c in plan.cells if c.kind == "metrics"]
    return resolve_auto(sum(cell_work(config, plan, c) for c in stats), len(stats))


def cell_work(config: RunConfig, plan: Plan, cell: Cell) -> int:
    """A statistics cell's work, roughly proportional to its time: estimates × data points ×
    parameters, each path of an exact-mode cell :data:`EXACT_PATH_COST` estimates."""
    p = plan.problem(cell.problem, cell.checkpoint)
    est = plan.estimator(cell.estimator)
    try:
        mode = choose_mode(est, p, config.mode, config.max_paths,
                           memory_budget=config.memory_budget)
    except Exception:  # noqa: BLE001 - such a cell fails when it runs; count it as sampling
        mode = "mc"
    if mode == "exact":  # every path, in float64, one data point per call
        estimates = 1 if est.randomness == "none" else EXACT_PATH_COST * num_paths(p.widths)
    else:
        estimates = config.samples
    return estimates * p.num_data * sum(t.numel() for t in p.params.values())


def part_key(cell: Cell) -> dict[str, Any]:
    """The columns a cell's part file must hold: its problem, checkpoint, estimator and seed (a
    throughput cell's rows name each estimator of its group)."""
    key: dict[str, Any] = {"problem": cell.problem, "checkpoint": cell.checkpoint}
    if cell.kind == "metrics":
        key.update(estimator=cell.estimator, seed=cell.seed)
    return key


def _run(config: RunConfig, plan: Plan, store: RunStore, progress: ProgressFn | None,
         on_cell_done: Callable[[Cell], None] | None, executor: Executor) -> RunResult:
    total = len(plan.cells)
    ids = [c.id for c in plan.cells]
    done = n_run = n_fail = 0
    pending: list[Cell] = []
    for cell in plan.cells:
        if store.check_part(cell.id, cell.kind, part_key(cell)) is None:
            done += 1
            if progress:
                progress(done, total, cell, "skipped", None)
        else:  # missing, or a part that is empty, truncated, corrupt or another cell's: run it
            store.remove_part(cell.id, cell.kind)
            pending.append(cell)
    n_skip = done
    references: dict[tuple[str, str], Reference] = {}
    reached: dict[tuple[str, str], Reference] = {}
    plugins = tuple(plan.registry.sources)
    cell_seconds: list[float] = []  # of the statistics cells run so far
    alone = {c.id: throughput_seconds(config, len(plan.group(c)))  # throughput cells still to run
             for c in pending if c.kind == "throughput"}

    def tasks(cells: list[Cell]) -> Iterator[Task]:
        for cell in cells:
            store.remove_part(cell.id, "failure")
            problem = plan.problem(cell.problem, cell.checkpoint)
            if cell.kind == "throughput":
                yield cell, CellContext(problem, None, None, config, group=plan.group(cell),
                                        plugins=plugins)
                continue
            key = (cell.problem, cell.checkpoint)
            if key not in references:  # once per problem checkpoint, shipped with its cells
                with torch_threads(config.threads):
                    if plan.references.get(key, "exact") == "exact":
                        references[key] = exact_reference(problem, config.max_exact_bytes)
                    else:
                        references[key] = monte_carlo_reference(problem, config,
                                                                plan.mc_plans[key], plan.registry)
                        reached[key] = references[key]
            yield cell, CellContext(problem, plan.estimator(cell.estimator), references[key],
                                    config, plugins=plugins)

    def results() -> Iterator[CellResult]:
        stats = [c for c in pending if c.kind != "throughput"]
        if executor.workers > 1:  # the costliest first, so that the workers finish together
            work = {c.id: cell_work(config, plan, c) if c.kind == "metrics" else 0 for c in stats}
            stats.sort(key=lambda c: -work[c.id])  # stable: plan order among equals
        yield from executor.map(tasks(stats))
        for cell in pending:  # timed alone: no other cell runs on the machine meanwhile
            if cell.kind == "throughput":
                yield from executor.map(tasks([cell]))

    ran_on = {"name": executor.name, "workers": executor.workers}  # the manifest's record
    last_assemble = time.monotonic()

    def counts() -> dict[str, int]:
        return {"total": total, "run": n_run, "skipped": n_skip, "failed": n_fail}

    try:
        try:
            for result in results():
                # storage errors are not the estimator's: they propagate (WriteError) and stop the run
                if result.failures:  # members of a throughput group that failed, written first
                    store.write_part(result.cell.id, "failure", result.failures)
                store.write_part(result.cell.id, result.kind, result.rows)
                done += 1
                n_run += 1
                n_fail += result.failed
                if result.cell.kind == "throughput":
                    alone.pop(result.cell.id, None)
                else:
                    cell_seconds.append(result.seconds)
                if progress:
                    eta = eta_seconds(cell_seconds, total - done - len(alone), executor.workers,
                                      sum(alone.values()))
                    progress(done, total, result.cell, "failed" if result.failed else "done", eta)
                if on_cell_done:
                    on_cell_done(result.cell)
                if time.monotonic() - last_assemble > ASSEMBLE_EVERY_S:
                    _assemble(store, ids, plan)
                    last_assemble = time.monotonic()
        finally:
            executor.close()
        tables = _assemble(store, ids, plan)
        done_all = all(store.check_part(c.id, c.kind, part_key(c)) is None
                       or store.check_part(c.id, "failure", part_key(c)) is None for c in plan.cells)
        manifest = {**store.manifest, "status": "complete" if done_all else "incomplete",
                    "executor": ran_on,
                    "references": [_reached(r, reached) for r in store.manifest.get("references", [])],
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "cells": counts(),
                    # what the tables were when written: a report notices one damaged or edited since
                    "tables": {name: file_sha256(store.out / name) for name, _ in TABLES.values()
                               if (store.out / name).is_file()}}
    except BaseException as e:
        # anywhere up to the final manifest (the cells, closing the executor, the last assembly):
        # keep the tables as complete as the part files and say why the run stopped, without
        # hiding the cause; a second Ctrl-C meanwhile would leave the manifest "running"
        with _signals_held(isinstance(e, KeyboardInterrupt)):
            try:
                _assemble(store, ids, plan)
            except (OSError, SbnBenchError):
                pass
            try:
                status = "interrupted" if isinstance(e, KeyboardInterrupt) else "incomplete"
                store.write_manifest({**store.manifest, "status": status, "executor": ran_on,
                                      "cells": counts()})
            except (OSError, SbnBenchError):
                pass
        raise
    if plan.warnings:
        manifest["warnings"] = plan.warnings
    store.write_manifest(manifest)
    return RunResult(store.out, tables["metrics"], tables["throughput"], tables["failure"],
                     manifest, n_run, n_skip, n_fail, timed_metrics=tables["timed"],
                     warnings=list(plan.warnings))


@contextlib.contextmanager
def _signals_held(active: bool) -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM are ignored (when ``active``, on the main thread):
    the clean-up after a first interruption (tables assembled, the manifest marked) finishes
    however often the user presses Ctrl-C; the handlers before are put back after."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in before:
        signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def reference_cache_dir(config: RunConfig) -> Path:
    """Where Monte-Carlo references are cached: ``config.reference_cache``, else
    ``$SBN_BENCH_CACHE``, else ``~/.cache/sbn-bench`` (the same root as trained checkpoints)."""
    if config.reference_cache is not None:
        return Path(config.reference_cache)
    env = os.environ.get("SBN_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sbn-bench"


def _check_cache_dir(cache: Path, default: bool) -> None:
    """Refuse, before any work, a reference cache that cannot be a folder to write in (a file, a
    device, a read-only place): every cell failed with the cause in ``failures.csv`` only."""
    probe = cache / "mcref"
    try:
        probe.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".write-check-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        where = " (from $SBN_BENCH_CACHE or the default)" if default else ""
        raise RunError(f"reference_cache={str(cache)!r}{where}: cannot write there "
                       f"({e.strerror or e}); give a folder this user can write in",
                       argument="reference_cache", value=str(cache),
                       expected="a writable folder") from None


def plan_mc_references(config: RunConfig, plan: Plan) -> None:
    """Choose R and N of every Monte-Carlo reference of the run (``plan.mc_plans``), before any
    work: the pilots run here (or are read from the cache), and a reference that the time budget
    cannot bring to ``config.reference_rel_error`` is refused here
    (:class:`~sbn_bench.runner.mcref.McReferenceError`, with the estimate)."""
    _, est, n = parse_reference(config.reference)
    previous = _previous_plans(config)
    if any(plan.references.get((pname, label)) == "mc" for pname, label, _ in plan.problems):
        _check_cache_dir(reference_cache_dir(config), config.reference_cache is None)
    for pname, label, prob in plan.problems:
        if plan.references.get((pname, label)) != "mc":
            continue
        old = previous.get((pname, label, prob.fingerprint()))
        if old is not None:  # resuming: the finished cells used this R and N
            plan.mc_plans[(pname, label)] = old
            continue
        with torch_threads(config.threads):
            plan.mc_plans[(pname, label)] = plan_reference(
                prob, estimator=est, samples=n, rel_error=config.reference_rel_error,
                target=config.reference_target, seed=config.reference_seed,
                time_budget_s=config.reference_time_budget,
                device=config.device, dtype=config.dtype, memory_budget=config.memory_budget,
                registry=plan.registry, cache_dir=reference_cache_dir(config))


def _recorded_budget(config: RunConfig) -> RunConfig:
    """Resuming with the default memory budget: the run's recorded budget instead. The default
    follows the device (:func:`sbn_bench.config.default_memory_budget`), so on another card, or
    for a run made before it did, it would differ, and the finished cells would refuse the resume
    for a setting nobody gave."""
    if not (config.resume and config.out is not None and config.budget_defaulted):
        return config
    try:
        recorded = _recorded_manifest(config.out)["config"]["memory_budget"]
    except (KeyError, TypeError):
        return config  # no run there yet, or a manifest that the resume itself refuses
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1:
        return config.with_(memory_budget=recorded)
    return config


def _previous_plans(config: RunConfig) -> dict[tuple[str, str, str], ReferencePlan]:
    """Resuming: the Monte-Carlo references' R and N recorded in the run's manifest, by
    (problem, checkpoint, fingerprint), so that the new cells use the reference the finished ones
    did (a pilot run again could choose another R, its timings varying)."""
    if not config.resume or config.out is None:
        return {}
    try:
        manifest = _recorded_manifest(config.out)
        prints = {(p["problem"], p["checkpoint"]): p["sha256"] for p in manifest["problems"]}
        out = {}
        for r in manifest.get("references") or []:
            if r.get("kind") != "mc":
                continue
            key = (r["problem"], r["checkpoint"], prints[(r["problem"], r["checkpoint"])])
            out[key] = ReferencePlan(str(r["estimator"]), int(r["samples"]), r["target_rel_error"],
                                     float(r.get("seconds_per_sample", math.nan)),
                                     target=str(r.get("target", "network")),
                                     group=str(r.get("set_by_group", "all")))
        return out
    except (ValueError, KeyError, TypeError):
        return {}


def monte_carlo_reference(problem: Problem, config: RunConfig, mc_plan: ReferencePlan,
                          registry: Registry | None = None) -> Reference:
    """The Monte-Carlo reference of a problem checkpoint (:func:`~sbn_bench.runner.mcref.mc_reference`
    with the run's seed, device, dtype, memory budget and cache), as a :class:`Reference`; a
    failure is returned with its message (every statistics cell of the problem records it)."""
    try:
        ref = mc_reference(problem, plan=mc_plan, seed=config.reference_seed, device=config.device,
                           dtype=config.dtype, memory_budget=config.memory_budget,
                           cache_dir=reference_cache_dir(config), registry=registry)
    except Exception as e:  # noqa: BLE001 - recorded for every cell of this problem
        return Reference(None, f"the Monte-Carlo reference gradient failed, so no metrics for this "
                               f"problem: {type(e).__name__}: {e}")
    return Reference(ref.gradient, spec=ref.spec, noise=ref.noise,
                     record={"rel_error": ref.rel_error, "group_rel_errors": ref.group_rel_errors(),
                             "seconds": ref.seconds, "from_cache": ref.from_cache})


def _reached(record: Any, reached: Mapping[tuple[str, str], Reference]) -> Any:
    """A manifest reference record with what its computation reached (ε, seconds, cache)."""
    if not isinstance(record, dict):
        return record
    ref = reached.get((record.get("problem"), record.get("checkpoint")))
    if ref is None or ref.record is None:
        return record
    return {**record, "reference": ref.spec, **ref.record}


def _assemble(store: RunStore, ids: list[str], plan: Plan) -> dict[str, pd.DataFrame]:
    """Assemble the part-file tables, derive ``timed_metrics.csv``, return all four tables."""
    store.assemble(ids)
    tables = store.tables(("metrics", "throughput", "failure"))
    networks = {(n, c): network_key(p) for n, c, p in plan.problems}
    store.write_table("timed", timed_table(tables["metrics"], tables["throughput"], networks))
    tables["timed"] = store.tables(("timed",))["timed"]
    return tables


def config_from_manifest(manifest: dict[str, Any] | str | os.PathLike[str], *,
                         out: str | os.PathLike[str] | None = None) -> RunConfig:
    """The :class:`RunConfig` a run was made with, from its manifest (a dict, a ``manifest.json``
    or a run folder), with relative paths resolved against the run's working directory.

    Args:
        out: the output folder of the new run (default: the recorded one, which then holds the
            results: pass a new folder to repeat a run elsewhere).

    Raises:
        ConfigError: the manifest has no usable ``config`` (the message says what is wrong).
    """
    if not isinstance(manifest, dict):
        path = Path(manifest)
        path = path / "manifest.json" if path.is_dir() else path
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the manifest {str(path)!r}: {e}",
                              argument=str(path)) from None
        if not isinstance(manifest, dict):
            raise ConfigError(f"manifest {str(path)!r} is not a JSON object", argument=str(path),
                              expected="a JSON object written by sbn-bench run")
    d = manifest.get("config")
    if not isinstance(d, dict):
        raise ConfigError("the manifest has no 'config' object (not written by sbn-bench run)",
                          argument="config", expected="a 'config' object")
    return RunConfig.from_dict(d, base=manifest.get("cwd"), out=None if out is None else str(out))


def resume_config(out: str | os.PathLike[str], *, throughput: Mapping[str, Any] | None = None,
                  **overrides: Any) -> RunConfig:
    """The configuration to resume the run in the folder ``out`` with, from its manifest alone
    (``sbn-bench run --out DIR --resume``): the recorded configuration with ``resume=True``, and
    the settings given in place of its own.

    Args:
        out: the run's output folder (holding ``manifest.json``).
        throughput: :class:`~sbn_bench.config.ThroughputConfig` fields to change; the others keep
            the run's values.
        overrides: :class:`RunConfig` fields to change. ``plugins`` are added to the run's own
            (a resume may add estimators, never drop those of finished cells); ``M`` may be
            ``"paper"`` or ``"default"`` (that grid up to the samples).

    Raises:
        RunDirError: ``out`` has no readable manifest, or holds a ``--preset paper`` run (whose
            training is not part of its configuration: resume it with
            :func:`sbn_bench.paper.run_paper` and ``resume=True``).
        ConfigError: the manifest has no usable configuration, or an override is invalid.
    """
    check_path(out, "out")
    folder = Path(out)
    path = folder / "manifest.json"
    if not path.is_file():
        raise RunDirError(f"there is no manifest.json in {str(folder)!r} to resume from",
                          argument="out", value=str(folder),
                          expected="the output folder of a run (with its manifest.json)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            kind = {list: "array", str: "string", type(None): "null", bool: "boolean"}.get(
                type(manifest), "number")
            raise ValueError(f"it holds a JSON {kind}, not an object")
    except (OSError, ValueError) as e:
        raise RunDirError(f"cannot resume {str(folder)!r} from its manifest.json ({e})",
                          argument="out", value=str(folder),
                          expected="a manifest.json written by sbn-bench run") from None
    experiment = manifest.get("experiment")
    if isinstance(experiment, dict) and experiment.get("name") == "paper":
        raise RunDirError(f"{str(folder)!r} holds a --preset paper run: resume it with the command "
                          "that started it (its training is not part of the run's configuration)",
                          argument="out", value=str(folder), expected="a run not made by --preset paper")
    try:
        base = config_from_manifest(manifest)
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError
        raise ConfigError(f"cannot resume {str(folder)!r} from its manifest.json ({e})",
                          argument="out", value=str(folder)) from None
    if "plugins" in overrides:  # one file or a list, as RunConfig takes them
        try:
            overrides["plugins"] = plugin_paths(overrides["plugins"])
        except SbnBenchError as e:
            raise ConfigError(str(e), argument="plugins", value=overrides["plugins"],
                              expected=e.expected) from None
    base = _moved_plugins(base, manifest, overrides.get("plugins", ()))
    if "plugins" in overrides:  # the run's files and these (RunConfig keeps each file once)
        overrides["plugins"] = (*base.plugins, *overrides["plugins"])
    if throughput:
        overrides["throughput"] = replace(base.throughput, **throughput)
    if "M" in overrides:
        overrides["M"] = named_m_grid(overrides["M"], overrides.get("samples", base.samples))
    return base.with_(**{**overrides, "resume": True, "out": str(folder)})


def _moved_plugins(base: RunConfig, manifest: Mapping[str, Any],
                   given: Sequence[str | os.PathLike[str]]) -> RunConfig:
    """``base`` without the run's plugin files that no longer exist where the manifest recorded
    them but are among the files ``given`` under another path (the same SHA-256: the finished
    cells stay valid).

    Raises:
        RunDirError: a recorded plugin file is missing and none of ``given`` has its content.
    """
    records = manifest.get("plugins") if isinstance(manifest.get("plugins"), list) else []
    recorded = {str(r.get("path")): r.get("sha256") for r in records if isinstance(r, dict)}
    given_sha = {file_sha256(p) for p in given if Path(p).is_file()}
    kept = []
    for i, p in enumerate(base.plugins):
        # the manifest records the file's resolved path (through a link: its target, which may
        # be gone too); else the records pair with the configuration's files by position
        sha = recorded.get(str(Path(p).resolve()), recorded.get(str(p)))
        if sha is None and len(records) == len(base.plugins) and isinstance(records[i], dict):
            sha = records[i].get("sha256")
        if Path(p).exists():
            # edited since, with the recorded content given elsewhere: the copy stands for it (its
            # estimators would otherwise clash with the edited file's)
            if not (sha is not None and sha in given_sha and Path(p).is_file()
                    and file_sha256(p) != sha):
                kept.append(p)
            continue
        if sha is not None and sha in given_sha:
            continue  # moved: the copy given stands for it
        raise RunDirError(
            f"the run's plugin file {str(p)!r} (recorded in its manifest) does not exist: put it "
            "back, or give a file of the same content (SHA-256) wherever it is now with --plugin "
            "(plugins=…)", argument="plugins", value=str(p),
            expected="the run's plugin file, or a file of the same content")
    return base.with_(plugins=tuple(kept)) if len(kept) != len(base.plugins) else base


def rerun(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], **kw: Any) -> RunResult:
    """Repeat the run recorded in ``run_dir`` into the new folder ``out``: the same configuration,
    seeds and estimators (on the same device and library versions, ``metrics.csv`` is then
    byte-identical). Plugin files whose content changed since are refused.

    Raises:
        RunError: a plugin file changed or is missing; and whatever :func:`run` raises.
    """
    path = Path(run_dir)
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    cfg = config_from_manifest(manifest, out=out)
    for rec, p in zip(manifest.get("plugins") or [], cfg.plugins):
        if rec.get("sha256") and file_sha256(p) != rec["sha256"]:
            raise RunError(f"plugin file {p!r} differs from the one run {str(path)!r} used (its "
                           "SHA-256 changed, or it is missing): the rerun would not measure the same "
                           "estimators", argument=p, expected="the plugin file the run used")
    return run(cfg.with_(resume=False), **kw)

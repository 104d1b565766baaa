"""The runner: problems × checkpoints × estimators × seeds → tidy metrics, throughput, failures.

:func:`run` is the Python API behind ``sbn-bench run`` (the CLI only parses and calls it)::

    from sbn_bench.config import RunConfig, ProblemSpec
    from sbn_bench.runner import run
    result = run(RunConfig(problems=(ProblemSpec(preset="quick"),), out="runs/quick"))
    result.metrics        # pandas DataFrame, schema.METRICS_COLUMNS

A run is a list of *cells*, measured in this order: for each problem and checkpoint, for each
estimator, its throughput cell (unless disabled), then one statistics cell per seed. Each finished
cell is written to its own part file atomically (:mod:`sbn_bench.storage`); ``resume=True`` skips
the cells already written (failed cells are tried again) and refuses a folder whose manifest
differs. A cell whose estimator raises, or returns NaN/Inf, is recorded in ``failures.csv`` with
its message, and the run goes on.

Determinism: each cell's ``torch.Generator`` is seeded with a SHA-256 hash of
``(seed, problem, checkpoint, estimator)`` (never Python's salted ``hash()``), so a cell's numbers
do not depend on which other cells ran, and the same command gives a byte-identical
``metrics.csv`` on the CPU, resumed or not. The one exception is ``time_to_accuracy_s``, which
multiplies a deterministic sample count by the *measured* time per sample; with throughput
disabled it is NaN and the whole file is reproducible. The chunk size is part of the
configuration: a different chunk draws the noise in a different order.

Modes (``config.mode``): ``exact`` takes the expectations over every path (estimators with a
``path_surrogate``, problems with ``2^{Σ n_k} ≤ max_paths`` paths per data point) or, for
estimators without randomness, from one sample; ``mc`` estimates them from ``S`` samples;
``auto`` is exact where possible. Metrics and their errors: :mod:`sbn_bench.metrics`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from sbn_bench import model, schema
from sbn_bench.config import RunConfig
from sbn_bench.estimators import (
    Estimator,
    Registry,
    UnsupportedProblem,
    estimate,
    estimate_on_paths,
    load_registry,
)
from sbn_bench.metrics import (
    CosineAccumulator,
    Groups,
    MomentAccumulator,
    WeightedMoments,
    cosines,
    exact_group_stats,
    mc_group_stats,
    metric_rows,
)
from sbn_bench.problems import Problem
from sbn_bench.reference import exact_gradient
from sbn_bench.reference.naive import enumerate_paths
from sbn_bench.storage import RunStore, environment
from sbn_bench.throughput import measure

DTYPES = {"float32": torch.float32, "float64": torch.float64}
ASSEMBLE_EVERY_S = 10.0
"""The tables are re-assembled from the part files at most this often during a run, and at its end."""


class RunError(ValueError):
    """A run that cannot start (bad device, estimator or plugin); raised before any work."""


class CellFailure(Exception):
    """One cell failed; ``stage`` says where (``reference``, ``mode``, ``estimate``, ``exact``,
    ``throughput``)."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class Cell:
    """One unit of work: ``kind`` is ``"stats"`` (one seed) or ``"throughput"`` (seed None)."""

    kind: str
    problem: str
    checkpoint: str
    estimator: str
    seed: int | None = None

    @property
    def id(self) -> str:
        """A file-name-safe stable id (SHA-256 of the key)."""
        key = json.dumps([self.kind, self.problem, self.checkpoint, self.estimator, self.seed])
        return f"{self.kind}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"

    def __str__(self) -> str:
        s = f"{self.problem}/{self.checkpoint}/{self.estimator}"
        return s + (f" seed {self.seed}" if self.seed is not None else " throughput")


@dataclass
class RunResult:
    """What :func:`run` returns (everything is also in ``out``).

    Attributes:
        out: the output folder.
        metrics / throughput / failures: the assembled tables (schema columns).
        manifest: the manifest as written.
        cells_run / cells_skipped / cells_failed: counts of this invocation.
    """

    out: Path
    metrics: pd.DataFrame
    throughput: pd.DataFrame
    failures: pd.DataFrame
    manifest: dict[str, Any]
    cells_run: int = 0
    cells_skipped: int = 0
    cells_failed: int = 0

    def summary(self, m: int = 1) -> pd.DataFrame:
        """``rrmse`` at ``M = m`` per (problem, checkpoint, estimator) and layer (mean over seeds)."""
        df = self.metrics
        df = df[(df["metric"] == "rrmse") & (df["M"] == m)]
        if df.empty:
            return pd.DataFrame()
        layers = list(dict.fromkeys(df["layer"]))
        tab = df.pivot_table(index=["problem", "checkpoint", "estimator"], columns="layer",
                             values="value", aggfunc="mean", sort=False)
        return tab.reindex(columns=layers)


ProgressFn = Callable[[int, int, Cell, str], None]
"""``progress(done, total, cell, status)``; status ``"done"``, ``"skipped"`` or ``"failed"``."""


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from SHA-256 of the parts' JSON (stable across processes and platforms)."""
    h = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()
    return int(h[:16], 16) & (2**63 - 1)


# --------------------------------------------------------------------------------------------
# memory and modes


def bytes_per_sample(widths: Sequence[int], num_data: int, itemsize: int, evals: int) -> int:
    """A rough upper estimate of the memory one single-sample estimate takes inside
    ``estimate()`` (parameter replica and its gradient, per-data-point activations, PSA's
    ``[D, n_k, n_{k-1}]`` flip tables, ``evals`` loss evaluations, autograd's saved tensors)."""
    n_params = sum(widths[i + 1] * (widths[i] + 1) for i in range(len(widths) - 1))
    fan = sum(widths[i + 1] * widths[i] for i in range(len(widths) - 1))
    units = sum(widths[1:])
    per_data = 4 * fan + 8 * units + 4 * max(1, evals) * widths[-1] * (1 + widths[-2])
    return itemsize * (6 * n_params + 2 * num_data * per_data) + 8 * n_params


def chunk_size(config: RunConfig, widths: Sequence[int], num_data: int, itemsize: int, evals: int
               ) -> int:
    """Samples per ``estimate()`` call: ``config.chunk`` or what ``memory_budget`` allows."""
    if config.chunk is not None:
        return config.chunk
    return max(1, config.memory_budget // bytes_per_sample(widths, num_data, itemsize, evals))


def num_paths(problem: Problem) -> int:
    """Paths per data point, ``2^{Σ n_k}``."""
    return 2 ** sum(problem.widths[1:-1])


def choose_mode(estimator: Estimator, problem: Problem, mode: str, max_paths: int) -> str:
    """``"exact"`` or ``"mc"`` for this estimator and problem.

    Raises:
        CellFailure: ``mode == "exact"`` where exact mode is impossible (with the reason).
    """
    if mode == "mc":
        return "mc"
    if estimator.randomness == "none":
        return "exact"
    reason = None
    if estimator.path_surrogate is None:
        reason = (f"estimator {estimator.spec!r} has randomness {estimator.randomness!r} and no "
                  "path surrogate")
    elif num_paths(problem) > max_paths:
        reason = (f"problem {problem.name!r} has {num_paths(problem)} paths per data point, over "
                  f"max_paths={max_paths}")
    if reason is None:
        return "exact"
    if mode == "exact":
        raise CellFailure("mode", f"exact mode impossible: {reason} (use --mode auto or mc)")
    return "mc"


# --------------------------------------------------------------------------------------------
# the per-cell computations


def _check_finite(x: Tensor, groups: Groups, what: str) -> None:
    if torch.isfinite(x).all():
        return
    bad = ~torch.isfinite(x)
    col = int(bad.any(0).nonzero()[0])
    start = 0
    name = "?"
    for n, shape in zip(groups.params, groups.shapes):
        size = math.prod(shape)
        if col < start + size:
            name = n
            break
        start += size
    raise CellFailure("estimate", f"estimator returned NaN/Inf ({int(bad.sum())} of {x.numel()} "
                                  f"entries, first in {name}) in {what}")


def _sample_stream(estimator: Estimator, problem: Problem, num_samples: int, chunk: int,
                   generator: torch.Generator, groups: Groups, sinks: Sequence[Any]) -> None:
    """Draw ``num_samples`` estimates in chunks and feed each ``[c, P]`` float64 chunk to sinks."""
    done = 0
    while done < num_samples:
        c = min(chunk, num_samples - done)
        try:
            grads = estimate(estimator, problem, c, generator)
        except CellFailure:
            raise
        except Exception as e:
            raise CellFailure("estimate", f"{type(e).__name__}: {e}") from e
        x = groups.flatten(grads)
        _check_finite(x, groups, f"samples {done}..{done + c - 1}")
        for s in sinks:
            s.update(x)
        done += c


class _Last:
    """A sink that keeps the last chunk."""

    x: Tensor | None = None

    def update(self, x: Tensor) -> None:
        self.x = x


def path_log_probs_fast(problem: Problem, paths: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """``log p(path | x_d)`` split as ``first[d, i1(path)] + rest[path]`` (float64).

    Layer 1 depends on the data point, later layers only on the path: ``first [D, 2^{n_1}]``
    holds ``log p(x¹ | x_d)`` for every layer-1 state (index = the state read as a binary number,
    unit 0 the most significant bit, as in :func:`~sbn_bench.model.all_states`) and
    ``rest [P]`` the sum over layers ``k ≥ 2``. The path index's top ``n_1`` bits are its layer-1
    state, so ``i1 = index >> (Σ n_k − n_1)``. Equals
    :func:`sbn_bench.reference.naive.path_log_probs` (tested) at a fraction of its cost.

    Returns:
        ``(first [D, 2^{n_1}], rest [P])``.
    """
    params = {k: v.to(torch.float64) for k, v in problem.params.items()}
    noise = problem.noise_dist
    n1 = params["weight_1"].shape[0]
    states1 = model.all_states(n1, torch.float64, paths[0].device)
    a1 = model.preactivation(params, 1, problem.x.to(torch.float64))  # [D, n_1]
    first = model.state_log_prob(noise, a1.unsqueeze(1), states1.unsqueeze(0))  # [D, 2^{n_1}]
    rest = torch.zeros(paths[0].shape[0], dtype=torch.float64, device=paths[0].device)
    for k in range(2, len(paths) + 1):
        a = model.preactivation(params, k, paths[k - 2])  # [P, n_k]
        rest = rest + model.state_log_prob(noise, a, paths[k - 1])
    return first, rest


def exact_path_moments(estimator: Estimator, problem: Problem, dtype: torch.dtype,
                       device: torch.device, chunk: int, groups: Groups) -> tuple[Tensor, Tensor]:
    """Exact mean ``[P]`` and per-coordinate variance ``[P]`` of one single-sample estimate of a
    ``path`` estimator, by enumerating all ``2^{Σ n_k}`` paths for each data point.

    ``E ĝ = (1/D) Σ_d Σ_p p_d(p) ĝ_d(p)`` and ``Var ĝ_i = (1/D²) Σ_d Var_d ĝ_{d,i}``, where
    ``ĝ_d(p)`` is the estimate on the one-point problem ``(x_d, y_d)`` along path ``p`` (the noise
    of different data points is independent). Paths are processed ``chunk`` at a time; the
    estimates are evaluated in ``dtype``, the moments accumulated in float64.
    """
    paths = enumerate_paths(problem.widths, torch.float64, device)  # list of [P, n_k]
    P = paths[0].shape[0]
    n1, total = problem.widths[1], sum(problem.widths[1:-1])
    first, rest = path_log_probs_fast(problem.to(device), paths)
    idx1 = torch.arange(P, device=device) >> (total - n1)
    states = [p.to(dtype).unsqueeze(1) for p in paths]  # [P, 1, n_k]
    D = problem.num_data
    sum_mean = torch.zeros(groups.dim, dtype=torch.float64, device=device)
    sum_var = torch.zeros_like(sum_mean)
    for d in range(D):
        sub = Problem(problem.params, problem.x[d:d + 1], problem.y[d:d + 1], loss=problem.loss,
                      noise=problem.noise, name=problem.name).to(device, dtype)
        w = torch.exp(first[d, idx1] + rest)  # [P]
        acc = WeightedMoments()
        for i in range(0, P, chunk):
            try:
                grads = estimate_on_paths(estimator, sub, [s[i:i + chunk] for s in states])
            except Exception as e:
                raise CellFailure("exact", f"{type(e).__name__}: {e}") from e
            acc.update([grads[n] for n in groups.params], w[i:i + chunk])
        mean_d, var_d = acc.result()
        if not (torch.isfinite(mean_d).all() and torch.isfinite(var_d).all()):
            # NaN/Inf in any path's estimate propagates to the weighted sums (weights are > 0,
            # and 0·Inf is NaN), so checking the moments checks every path.
            _check_finite(torch.stack([mean_d, var_d]), groups,
                          f"exact enumeration over the paths of data point {d}")
        sum_mean += mean_d
        sum_var += var_d
    return sum_mean / D, sum_var / D**2


def stats_cell_rows(estimator: Estimator, problem: Problem, g: Tensor, config: RunConfig,
                    seed: int, checkpoint: str, seconds_per_sample: float = math.nan
                    ) -> list[dict[str, Any]]:
    """The metric rows of one statistics cell (schema.METRICS_COLUMNS).

    Args:
        problem: float64 on the CPU (moved to ``config.device``/``config.dtype`` here).
        g: ``[P]`` float64 exact gradient (flat, :class:`~sbn_bench.metrics.Groups` order).
        seconds_per_sample: for ``time_to_accuracy_s`` (NaN without a throughput measurement).

    Raises:
        CellFailure: the estimator raised or returned NaN/Inf, or exact mode is impossible.
    """
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    estimator.check_supports(problem)
    groups = Groups.of(problem.params)
    g = g.to(device)
    mode = choose_mode(estimator, problem, config.mode, config.max_paths)
    prob = problem.to(device, dtype)
    gen = torch.Generator(device=device)
    gen.manual_seed(stable_seed(seed, problem.name, checkpoint, estimator.spec))
    itemsize = torch.finfo(dtype).bits // 8
    evals = estimator.evals_per_sample(problem.widths)
    chunk = chunk_size(config, problem.widths, problem.num_data, itemsize, evals)
    S, grid = config.samples, config.m_grid
    samples = S
    cos_acc = CosineAccumulator(g, groups, grid, S, config.cosine_groups)
    if mode == "exact" and estimator.randomness == "none":
        last = _Last()
        _sample_stream(estimator, prob, 1, 1, gen, groups, [last])
        assert last.x is not None
        mean = last.x[0]
        gstats = exact_group_stats(mean, torch.zeros_like(mean), g, groups)
        c = cosines(mean.unsqueeze(0), g, groups).cpu().numpy()
        cos = {m: c for m in grid if m <= S}
        cos_mode, samples = "exact", 1
    elif mode == "exact":
        pchunk = config.chunk if config.chunk is not None else max(
            1, config.memory_budget // bytes_per_sample(problem.widths, 1, itemsize, evals))
        mean, var = exact_path_moments(estimator, problem, dtype, device, pchunk, groups)
        gstats = exact_group_stats(mean, var, g, groups)
        _sample_stream(estimator, prob, S, chunk, gen, groups, [cos_acc])
        cos, cos_mode = cos_acc.result(), "mc"
    else:
        mom = MomentAccumulator(S, groups.dim, config.stderr_batches, device)
        _sample_stream(estimator, prob, S, chunk, gen, groups, [mom, cos_acc])
        gstats = mc_group_stats(mom.result(), g, groups)
        cos, cos_mode = cos_acc.result(), "mc"
    rows = metric_rows(gstats, grid, cos, mode=mode, cosine_mode=cos_mode,
                       seconds_per_sample=seconds_per_sample, target_rrmse=config.target_rrmse)
    for r in rows:
        r.update(problem=problem.name, checkpoint=checkpoint, estimator=estimator.spec,
                 samples=samples, seed=seed, device=config.device, dtype=config.dtype)
    return rows


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class _Prepared:
    estimators: list[Estimator]
    registry: Registry
    problems: list[tuple[str, str, Problem]]  # (problem name, checkpoint label, problem)
    cells: list[Cell] = field(default_factory=list)


def _check_device(config: RunConfig) -> None:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device='cuda' was requested but CUDA is not available (torch "
                       f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use "
                       "--device cpu")


def prepare(config: RunConfig) -> _Prepared:
    """Everything checked before any work: device, plugins, estimators, problems, cell list.

    Raises:
        RunError / ConfigError / EstimatorSpecError / ProblemError: with the reason.
    """
    _check_device(config)
    reg = load_registry(config.plugins)
    for p in config.plugins:
        origin = f"plugin file {str(p)!r}"
        for e in reg.errors:
            if e.origin == origin and e.name == Path(p).stem:
                raise RunError(e.message)
    ests = [reg.create(s) for s in config.estimators]
    specs = [e.spec for e in ests]
    dup = sorted({s for s in specs if specs.count(s) > 1})
    if dup:
        raise RunError(f"estimators lists {', '.join(dup)} more than once")
    probs: list[tuple[str, str, Problem]] = []
    names: list[str] = []
    for spec in config.problems:
        loaded = spec.load()
        name = loaded[0][1].name
        if name in names:
            raise RunError(f"two problems are named {name!r}; give them distinct names")
        names.append(name)
        probs += [(name, label, p) for label, p in loaded]
    prep = _Prepared(ests, reg, probs)
    for pname, label, _ in probs:
        for e in ests:
            if config.throughput.enabled:
                prep.cells.append(Cell("throughput", pname, label, e.spec))
            prep.cells += [Cell("stats", pname, label, e.spec, s) for s in config.seeds]
    return prep


def fingerprint(problem: Problem) -> str:
    """SHA-256 over the problem's arrays (name, dtype, shape, bytes), loss and noise."""
    h = hashlib.sha256()
    arrays = {"x": problem.x, "y": problem.y, **problem.params}
    for k in sorted(arrays):
        a = arrays[k].detach().cpu().contiguous().numpy()
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(f"loss={problem.loss}|noise={problem.noise}".encode())
    return h.hexdigest()


def build_manifest(config: RunConfig, prep: _Prepared) -> dict[str, Any]:
    """The manifest (STYLE 7): schema version, config, seeds, versions, device, commit,
    estimator specs and versions, problem fingerprints."""
    env = environment()
    dev: dict[str, Any] = {"type": config.device, "dtype": config.dtype,
                           "torch_threads": torch.get_num_threads()}
    if config.device == "cuda":
        dev["name"] = torch.cuda.get_device_name(0)
        dev["cuda"] = torch.version.cuda
    else:
        import platform

        dev["name"] = platform.processor() or platform.machine()
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
        "config": config.to_dict(),
        "seeds": list(config.seeds),
        "packages": env["packages"],
        "python": env["python"],
        "platform": env["platform"],
        "git_commit": env["git_commit"],
        "device": dev,
        "estimators": [{"spec": e.spec, "name": e.name, "version": e.version,
                        "hyperparams": {k: v for k, v in e.hyperparams},
                        "unbiased": e.unbiased, "randomness": e.randomness,
                        "origin": prep.registry.origins.get(e.name)} for e in prep.estimators],
        "problems": [{"problem": n, "checkpoint": c, "arch": p.arch, "num_data": p.num_data,
                      "loss": p.loss, "noise": p.noise, "paths_per_point": num_paths(p),
                      "source": p.meta.get("source"), "sha256": fingerprint(p)}
                     for n, c, p in prep.problems],
    }


def _failure(cell: Cell, stage: str, message: str) -> dict[str, Any]:
    return {"problem": cell.problem, "checkpoint": cell.checkpoint, "estimator": cell.estimator,
            "stage": stage, "error": " ".join(str(message).split()), "seed": cell.seed}


def run(config: RunConfig, *, progress: ProgressFn | None = None,
        on_cell_done: Callable[[Cell], None] | None = None) -> RunResult:
    """Run (or resume) the configured grid and write it to ``config.out``.

    Args:
        config: what to measure (``config.out`` is required).
        progress: called after every cell (see :data:`ProgressFn`).
        on_cell_done: called after every cell has been written (a test hook: raising from it
            stops the run there, as a kill would).

    Returns:
        :class:`RunResult`.

    Raises:
        RunError, ConfigError, EstimatorSpecError, ProblemError, RunDirError: bad input, before
            any work and before anything is written.
    """
    if config.out is None:
        raise RunError("config.out is not set; give an output folder (--out DIR)")
    prep = prepare(config)
    manifest = build_manifest(config, prep)
    store = RunStore.open(config.out, manifest, config.resume)
    by_key = {(n, c): p for n, c, p in prep.problems}
    est_by_spec = {e.spec: e for e in prep.estimators}
    refs: dict[tuple[str, str], Tensor | CellFailure] = {}
    sec_per_sample: dict[tuple[str, str, str], float] = {}
    debug = bool(os.environ.get("SBN_BENCH_DEBUG"))
    total = len(prep.cells)
    n_run = n_skip = n_fail = 0
    last_assemble = time.monotonic()
    ids = [c.id for c in prep.cells]

    def reference(pname: str, ckpt: str) -> Tensor:
        key = (pname, ckpt)
        if key not in refs:
            prob = by_key[key]
            try:
                _, grad = exact_gradient(prob, max_bytes=config.max_exact_bytes)
                refs[key] = Groups.of(prob.params).flatten_one(grad)
            except Exception as e:
                if debug:
                    raise
                refs[key] = CellFailure("reference", f"the exact reference gradient failed, so "
                                                     f"no metrics for this problem: {e}")
        r = refs[key]
        if isinstance(r, CellFailure):
            raise r
        return r

    try:
        for i, cell in enumerate(prep.cells):
            kind = "throughput" if cell.kind == "throughput" else "metrics"
            tkey = (cell.problem, cell.checkpoint, cell.estimator)
            if store.has(cell.id, kind):
                n_skip += 1
                if cell.kind == "throughput":
                    df = store.read_part(cell.id, kind)
                    sec_per_sample[tkey] = float(df["seconds_per_sample"].iloc[0])
                if progress:
                    progress(i + 1, total, cell, "skipped")
                continue
            store.remove_part(cell.id, "failure")
            prob = by_key[(cell.problem, cell.checkpoint)]
            est = est_by_spec[cell.estimator]
            status = "done"
            try:
                if cell.kind == "throughput":
                    res = _throughput_cell(est, prob, config, cell)
                    sec_per_sample[tkey] = res["seconds_per_sample"]
                    store.write_part(cell.id, "throughput", [res])
                else:
                    assert cell.seed is not None
                    rows = stats_cell_rows(est, prob, reference(cell.problem, cell.checkpoint),
                                           config, cell.seed, cell.checkpoint,
                                           sec_per_sample.get(tkey, math.nan))
                    store.write_part(cell.id, "metrics", rows)
            except CellFailure as e:
                if debug:
                    raise
                store.write_part(cell.id, "failure", [_failure(cell, e.stage, str(e))])
                status = "failed"
            except UnsupportedProblem as e:
                store.write_part(cell.id, "failure", [_failure(cell, "supports", str(e))])
                status = "failed"
            except Exception as e:  # an estimator may raise anything; the run goes on
                if debug:
                    raise
                stage = "throughput" if cell.kind == "throughput" else "estimate"
                store.write_part(cell.id, "failure", [_failure(cell, stage,
                                                               f"{type(e).__name__}: {e}")])
                status = "failed"
            n_run += 1
            n_fail += status == "failed"
            if progress:
                progress(i + 1, total, cell, status)
            if on_cell_done:
                on_cell_done(cell)
            if time.monotonic() - last_assemble > ASSEMBLE_EVERY_S:
                store.assemble(ids)
                last_assemble = time.monotonic()
    finally:
        store.assemble(ids)
    done_all = all(store.has(c.id, "throughput" if c.kind == "throughput" else "metrics")
                   or store.has(c.id, "failure") for c in prep.cells)
    manifest = {**store.manifest, "status": "complete" if done_all else "incomplete",
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "cells": {"total": total, "run": n_run, "skipped": n_skip, "failed": n_fail}}
    store.write_manifest(manifest)
    tables = store.tables()
    return RunResult(store.out, tables["metrics"], tables["throughput"], tables["failure"],
                     manifest, n_run, n_skip, n_fail)


def _throughput_cell(est: Estimator, problem: Problem, config: RunConfig, cell: Cell
                     ) -> dict[str, Any]:
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    est.check_supports(problem)
    prob = problem.to(device, dtype)
    itemsize = torch.finfo(dtype).bits // 8
    evals = est.evals_per_sample(problem.widths)
    chunk = chunk_size(config, problem.widths, problem.num_data, itemsize, evals)
    batch = config.throughput.batch or min(config.samples, chunk, 200)
    gen = torch.Generator(device=device)
    gen.manual_seed(stable_seed("throughput", problem.name, cell.checkpoint, est.spec))
    try:
        r = measure(est, prob, batch=batch, rounds=config.throughput.rounds,
                    warmup=config.throughput.warmup, generator=gen)
    except Exception as e:
        raise CellFailure("throughput", f"{type(e).__name__}: {e}") from e
    return {"problem": problem.name, "checkpoint": cell.checkpoint, "estimator": est.spec,
            "device": config.device, "dtype": config.dtype, **r.__dict__}

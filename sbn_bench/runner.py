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
its message, and the run goes on (what the configuration alone makes impossible is refused
before any work instead: :func:`check_combinations`).

Determinism: each cell's ``torch.Generator`` is seeded with a SHA-256 hash of
``(seed, problem, checkpoint, estimator)`` (never Python's salted ``hash()``), so a cell's numbers
do not depend on which other cells ran, and the same command gives a byte-identical
``metrics.csv`` on the CPU, resumed or not. ``metrics.csv`` holds only deterministic values: the
one metric that multiplies a sample count (``samples_to_accuracy``) by the *measured* time per
sample, ``time_to_accuracy_s``, goes to ``timed_metrics.csv``. The chunk size is part of the
configuration: a different chunk draws the noise in a different order. The manifest records the
configuration, the working directory and the plugin files' hashes: :func:`config_from_manifest`
rebuilds the :class:`RunConfig` and :func:`rerun` repeats a run.

Memory (``config.memory_budget``, checked by :func:`check_memory` before any work): the samples
of a cell are drawn in chunks of ``chunk_size`` samples, each chunk's estimator tensors estimated
(:func:`bytes_per_sample`, an upper bound that the tests check against torch's profiler) to fit in
the budget. A request that cannot fit is refused before anything is written, with the numbers: one
sample larger than the budget, an explicit ``chunk`` or throughput ``batch`` over it. Exact mode's
enumeration of ``2^{Σ n_k}`` paths (:func:`exact_enumeration_bytes`) must fit as well: ``auto``
mode falls back to Monte Carlo, ``exact`` mode is refused before any work with the numbers. The
exact reference gradient has its own limit, ``max_exact_bytes``, also checked before any work.

Unsupported combinations are refused before any work (:func:`check_combinations`): an estimator
that does not support a problem's noise or loss, ``mode="exact"`` where exact mode is impossible,
a problem too large for the exact reference.

Numbers that cannot be trusted are never written silently: an estimator returning NaN/Inf, a
non-finite reference gradient, Monte-Carlo statistics from fewer than two samples, or any NaN value
that :data:`sbn_bench.metrics.NAN_VALUES` does not document make the cell a recorded failure.

Modes (``config.mode``): ``exact`` takes the expectations over every path (estimators with a
``path_surrogate``, problems with ``2^{Σ n_k} ≤ max_paths`` paths per data point) or, for
estimators without randomness, from one sample; ``mc`` estimates them from ``S`` samples;
``auto`` is exact where possible. Metrics and their errors: :mod:`sbn_bench.metrics`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from sbn_bench import model, schema
from sbn_bench.config import ConfigError, RunConfig
from sbn_bench.estimators import (
    Estimator,
    Registry,
    UnsupportedProblem,
    estimate,
    estimate_on_paths,
)
from sbn_bench.estimators.registry import load_plugins
from sbn_bench.metrics import (
    CosineAccumulator,
    Groups,
    MomentAccumulator,
    WeightedMoments,
    cosines,
    exact_group_stats,
    layer_scales,
    mc_group_stats,
    metric_rows,
    timed_rows,
    undocumented_nans,
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
    ``metrics``, ``throughput``)."""

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

    def summary(self, m: int = 1) -> pd.DataFrame:
        """``rrmse`` at ``M = m`` per (problem, checkpoint, estimator) and layer (mean over seeds).

        Columns: layers ``1 … L`` (the deepest problem's), ``out``, ``all``; NaN where a problem
        has fewer layers than the deepest one.
        """
        df = self.metrics
        df = df[(df["metric"] == "rrmse") & (df["M"] == m)]
        if df.empty:
            return pd.DataFrame()
        found = list(dict.fromkeys(df["layer"]))
        layers = sorted((x for x in found if str(x).isdigit()), key=int) + \
            [x for x in found if not str(x).isdigit()]
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
    """Samples per ``estimate()`` call: ``config.chunk`` or what ``memory_budget`` allows (at least
    one: :func:`check_memory` refuses a run in which one sample does not fit)."""
    if config.chunk is not None:
        return config.chunk
    return max(1, config.memory_budget // bytes_per_sample(widths, num_data, itemsize, evals))


def exact_enumeration_bytes(widths: Sequence[int], num_data: int, itemsize: int) -> int:
    """Memory that exact mode's path tables take besides the estimator's chunks: the ``P =
    2^{Σ n_k}`` paths in float64 and in the estimators' dtype, the preactivations and
    log-probabilities along them, their weights and indices, and layer 1's ``[D, 2^{n_1}]`` table."""
    units = sum(widths[1:-1])
    P = 2**units
    return P * (units * (16 + itemsize) + 32) + num_data * 2 ** widths[1] * 8


def format_bytes(n: float) -> str:
    """``"1.5 MiB (1,572,864 bytes)"``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit} ({int(n):,} bytes)"
    return f"{int(n):,} byte" + ("" if int(n) == 1 else "s")


def num_paths(problem: Problem) -> int:
    """Paths per data point, ``2^{Σ n_k}``."""
    return 2 ** sum(problem.widths[1:-1])


def choose_mode(estimator: Estimator, problem: Problem, mode: str, max_paths: int, *,
                memory_budget: int | None = None, itemsize: int = 8) -> str:
    """``"exact"`` or ``"mc"`` for this estimator and problem.

    Exact mode needs a path surrogate (or no randomness), at most ``max_paths`` paths per data
    point and, when ``memory_budget`` is given, path tables (:func:`exact_enumeration_bytes`) within
    it; ``auto`` falls back to ``mc`` otherwise.

    Raises:
        CellFailure: ``mode == "exact"`` where exact mode is impossible (with the reason and, for
            memory, the numbers).
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
    elif memory_budget is not None:
        need = exact_enumeration_bytes(problem.widths, problem.num_data, itemsize)
        if need > memory_budget:
            reason = (f"enumerating the {num_paths(problem)} paths of problem {problem.name!r} needs "
                      f"about {format_bytes(need)}, over memory_budget={format_bytes(memory_budget)}")
    if reason is None:
        return "exact"
    if mode == "exact":
        raise CellFailure("mode", f"exact mode impossible: {reason} (use --mode auto or mc)")
    return "mc"


def check_memory(config: RunConfig, probs: Sequence[tuple[str, str, Problem]],
                 estimators: Sequence[Estimator]) -> None:
    """Refuse, before any work, a run whose requests cannot fit in ``config.memory_budget``.

    For every problem and estimator (that supports it): one sample must fit
    (:func:`bytes_per_sample`), and so must an explicit ``config.chunk`` of samples and an explicit
    throughput ``batch``. (Without an explicit chunk the samples are chunked to fit.)

    Raises:
        RunError: listing each request, its estimated memory and the budget, and what to change.
    """
    budget = config.memory_budget
    itemsize = torch.finfo(DTYPES[config.dtype]).bits // 8
    problems: list[str] = []
    least = 0  # the smallest budget that would hold one sample of everything
    seen: set[tuple[tuple[int, ...], int, str]] = set()
    for pname, _, prob in probs:
        for est in estimators:
            key = (prob.widths, prob.num_data, est.spec)
            if key in seen or not est.supports(prob):
                continue
            seen.add(key)
            one = bytes_per_sample(prob.widths, prob.num_data, itemsize,
                                   est.evals_per_sample(prob.widths))
            where = f"{est.spec} on {pname} ({prob.arch}, D={prob.num_data}, {config.dtype})"
            if one > budget:
                problems.append(f"{where}: one sample needs about {format_bytes(one)}")
                least = max(least, one)
                continue
            fit = budget // one
            if config.chunk is not None and config.chunk * one > budget:
                problems.append(f"{where}: chunk={config.chunk} samples need about "
                                f"{format_bytes(config.chunk * one)} (at most {fit} fit)")
            tb = config.throughput.batch
            if config.throughput.enabled and tb is not None and tb * one > budget:
                problems.append(f"{where}: throughput batch={tb} samples need about "
                                f"{format_bytes(tb * one)} (at most {fit} fit)")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; … ({len(problems) - 3} more)" if len(problems) > 3
                                           else "")
        hint = (f"raise memory_budget to at least {format_bytes(least)}" if least else
                "lower chunk / throughput batch, or raise memory_budget")
        raise RunError(f"refused before any work: the request exceeds memory_budget="
                       f"{format_bytes(budget)} (estimated): {shown} ({hint})")


def check_combinations(config: RunConfig, probs: Sequence[tuple[str, str, Problem]],
                       estimators: Sequence[Estimator]) -> None:
    """Refuse, before any work, what the configuration already makes impossible (STYLE 3, SPEC §2).

    * a (problem/checkpoint, estimator) pair whose noise or loss the estimator does not support
      (:meth:`Estimator.check_supports`);
    * with ``config.mode == "exact"``, a pair for which exact mode is impossible
      (:func:`choose_mode`: no path surrogate, over ``max_paths``, path tables over the budget);
    * a problem too large for the exact reference (:func:`sbn_bench.reference.check_size` under
      ``config.max_exact_bytes``), with the estimated cost and the limit.

    What only the computation can tell (an estimator raising or returning NaN/Inf, a non-finite
    reference) stays a recorded failure of its cell.

    Raises:
        RunError: listing every refused pair or problem with its reason, and what to change.
    """
    from sbn_bench.reference import ReferenceTooLarge, check_size

    itemsize = torch.finfo(DTYPES[config.dtype]).bits // 8
    unsupported: list[str] = []
    no_exact: list[str] = []
    too_large: list[str] = []
    sized: set[tuple[tuple[int, ...], int]] = set()
    for pname, label, prob in probs:
        where = f"{pname}/{label}"
        key = (prob.widths, prob.num_data)
        if key not in sized:
            sized.add(key)
            try:
                check_size(prob, max_bytes=config.max_exact_bytes)
            except ReferenceTooLarge as e:
                too_large.append(str(e))
        for est in estimators:
            try:
                est.check_supports(prob)
            except UnsupportedProblem as e:
                unsupported.append(f"{where} × {est.spec}: {e}")
                continue
            if config.mode == "exact":
                try:
                    choose_mode(est, prob, "exact", config.max_paths,
                                memory_budget=config.memory_budget, itemsize=itemsize)
                except CellFailure as e:
                    reason = str(e).removeprefix("exact mode impossible: ")
                    reason = reason.removesuffix(" (use --mode auto or mc)")
                    no_exact.append(f"{where} × {est.spec}: {reason}")
    parts: list[str] = []
    if unsupported:
        parts.append(f"{len(unsupported)} (problem/checkpoint, estimator) pair(s) are not supported: "
                     + "; ".join(unsupported) + " (remove these estimators from --estimators, or "
                     "use a problem with a noise and loss they support; see sbn-bench list)")
    if no_exact:
        parts.append(f"--mode exact is impossible for {len(no_exact)} (problem/checkpoint, "
                     f"estimator) pair(s): " + "; ".join(no_exact)
                     + " (use --mode auto, which is exact where possible, or --mode mc)")
    if too_large:
        parts.append("; ".join(too_large) + " (SPEC §2: every metric needs the exact gradient)")
    if parts:
        raise RunError("refused before any work: " + ". ".join(parts))


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
                   generator: torch.Generator, groups: Groups) -> Iterator[Tensor]:
    """Draw ``num_samples`` estimates in chunks: each a checked (finite) ``[c, P]`` float64 chunk."""
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
        yield x
        done += c


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
                       device: torch.device, chunk: int, groups: Groups,
                       scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Exact mean ``[P]`` and per-coordinate variance ``[P]`` of one single-sample estimate of a
    ``path`` estimator, by enumerating all ``2^{Σ n_k}`` paths for each data point.

    ``E ĝ = (1/D) Σ_d Σ_p p_d(p) ĝ_d(p)`` and ``Var ĝ_i = (1/D²) Σ_d Var_d ĝ_{d,i}``, where
    ``ĝ_d(p)`` is the estimate on the one-point problem ``(x_d, y_d)`` along path ``p`` (the noise
    of different data points is independent). Paths are processed ``chunk`` at a time; the
    estimates are evaluated in ``dtype``, the moments accumulated in float64. With ``scale [P]``
    (:func:`~sbn_bench.metrics.layer_scales`) the estimates are divided by it first, and so are the
    mean (the variance by ``scale²``).
    """
    paths = enumerate_paths(problem.widths, torch.float64, device)  # list of [P, n_k]
    P = paths[0].shape[0]
    n1, total = problem.widths[1], sum(problem.widths[1:-1])
    first, rest = path_log_probs_fast(problem.to(device), paths)
    idx1 = torch.arange(P, device=device) >> (total - n1)
    states = [p.to(dtype).unsqueeze(1) for p in paths]  # [P, 1, n_k]
    D = problem.num_data
    div: dict[str, float] = {}
    if scale is not None:
        start = 0
        for n, shape in zip(groups.params, groups.shapes):
            div[n] = float(scale[start])  # constant on a parameter (one layer)
            start += math.prod(shape)
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
            acc.update([grads[n].to(torch.float64) / div[n] if div else grads[n]
                        for n in groups.params], w[i:i + chunk])
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
                    seed: int, checkpoint: str) -> list[dict[str, Any]]:
    """The metric rows of one statistics cell (schema.METRICS_COLUMNS, schema.METRICS: no timed
    values; see :func:`sbn_bench.metrics.timed_rows`).

    Args:
        problem: float64 on the CPU (moved to ``config.device``/``config.dtype`` here).
        g: ``[P]`` float64 exact gradient (flat, :class:`~sbn_bench.metrics.Groups` order).

    Raises:
        CellFailure: the estimator raised or returned NaN/Inf, exact mode is impossible,
            Monte-Carlo mode has fewer than two samples, or a statistic came out NaN where
            :data:`sbn_bench.metrics.NAN_VALUES` does not allow it.
    """
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    estimator.check_supports(problem)
    groups = Groups.of(problem.params)
    g = g.to(device)
    itemsize = torch.finfo(dtype).bits // 8
    mode = choose_mode(estimator, problem, config.mode, config.max_paths,
                       memory_budget=config.memory_budget, itemsize=itemsize)
    S, grid = config.samples, config.m_grid
    if mode == "mc" and S < 2:
        raise CellFailure("mode", f"Monte-Carlo statistics need samples ≥ 2 (got {S}): the variance "
                                  "of a single sample is undefined; use more samples or exact mode")
    prob = problem.to(device, dtype)
    gen = torch.Generator(device=device)
    gen.manual_seed(stable_seed(seed, problem.name, checkpoint, estimator.spec))
    evals = estimator.evals_per_sample(problem.widths)
    chunk = chunk_size(config, problem.widths, problem.num_data, itemsize, evals)
    samples = S
    if mode == "exact" and estimator.randomness == "none":
        x = next(_sample_stream(estimator, prob, 1, 1, gen, groups))
        scale = layer_scales(g, groups, x)
        gs, mean = g / scale, x[0] / scale
        gstats = exact_group_stats(mean, torch.zeros_like(mean), gs, groups, scale)
        c = cosines(mean.unsqueeze(0), gs, groups, scale / scale.max()).cpu().numpy()
        cos = {m: c for m in grid if m <= S}
        cos_mode, samples = "exact", 1
    else:
        # every value is divided by a power of two per layer (exact; see layer_scales) chosen from
        # the exact gradient and the first chunk, so that saturated nets' tiny gradients keep
        # their precision in sums of squares
        stream = _sample_stream(estimator, prob, S, chunk, gen, groups)
        first = next(stream)
        scale = layer_scales(g, groups, first)
        gs = g / scale
        cos_acc = CosineAccumulator(gs, groups, grid, S, config.cosine_groups,
                                    coord_scale=scale / scale.max())
        sinks: list[Any] = [cos_acc]
        mom = None
        if mode == "exact":
            pchunk = config.chunk if config.chunk is not None else max(
                1, config.memory_budget // bytes_per_sample(problem.widths, 1, itemsize, evals))
            mean, var = exact_path_moments(estimator, problem, dtype, device, pchunk, groups, scale)
            gstats = exact_group_stats(mean, var, gs, groups, scale)
        else:
            mom = MomentAccumulator(S, groups.dim, config.stderr_batches, device)
            sinks.append(mom)
        for x in itertools.chain([first], stream):
            x = x / scale
            for sink in sinks:
                sink.update(x)
        if mom is not None:
            gstats = mc_group_stats(mom.result(), gs, groups, scale)
        cos, cos_mode = cos_acc.result(), "mc"
    rows = metric_rows(gstats, grid, cos, mode=mode, cosine_mode=cos_mode,
                       target_rrmse=config.target_rrmse)
    bad = undocumented_nans(rows, gstats)
    if bad:
        raise CellFailure("metrics", f"statistics came out NaN in {len(bad)} row(s) ("
                                     f"{', '.join(bad[:4])}{', …' if len(bad) > 4 else ''}): the "
                                     "estimates are too large for float64 sums")
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
    warnings: list[str] = field(default_factory=list)


def _check_device(config: RunConfig) -> None:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device='cuda' was requested but CUDA is not available (torch "
                       f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use "
                       "--device cpu")


def prepare(config: RunConfig) -> _Prepared:
    """Everything checked before any work: device, plugins, estimators, problems, supported
    combinations and the reference's size (:func:`check_combinations`), memory, cells.

    Raises:
        RunError / ConfigError / EstimatorSpecError / ProblemError: with the reason.
    """
    _check_device(config)
    reg, warnings = load_plugins(config.plugins, [s.split(":")[0].strip() for s in config.estimators])
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
    check_combinations(config, probs, ests)
    check_memory(config, probs, ests)
    prep = _Prepared(ests, reg, probs, warnings=warnings)
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


def file_sha256(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of a file's bytes, or None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def build_manifest(config: RunConfig, prep: _Prepared) -> dict[str, Any]:
    """The manifest (STYLE 7): schema version, config, seeds, versions, device, commit,
    estimator specs and versions, problem fingerprints, and what a rerun needs (the working
    directory that relative paths in ``config`` refer to, the plugin files' hashes)."""
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
        "cwd": os.getcwd(),
        "seeds": list(config.seeds),
        "packages": env["packages"],
        "python": env["python"],
        "platform": env["platform"],
        "git_commit": env["git_commit"],
        "device": dev,
        "plugins": [{"path": str(Path(p).resolve()), "sha256": file_sha256(p)}
                    for p in config.plugins],
        "estimators": [{"spec": e.spec, "name": e.name, "version": e.version,
                        "hyperparams": {k: v for k, v in e.hyperparams},
                        "unbiased": e.unbiased, "randomness": e.randomness,
                        "origin": prep.registry.origins.get(e.name)} for e in prep.estimators],
        "problems": [{"problem": n, "checkpoint": c, "arch": p.arch, "num_data": p.num_data,
                      "loss": p.loss, "noise": p.noise, "paths_per_point": num_paths(p),
                      "source": p.meta.get("source"), "sha256": fingerprint(p)}
                     for n, c, p in prep.problems],
    }


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
            raise ConfigError(f"cannot read the manifest {str(path)!r}: {e}") from None
        if not isinstance(manifest, dict):
            raise ConfigError(f"manifest {str(path)!r} is not a JSON object")
    d = manifest.get("config")
    if not isinstance(d, dict):
        raise ConfigError("the manifest has no 'config' object (not written by sbn-bench run)")
    return RunConfig.from_dict(d, base=manifest.get("cwd"), out=None if out is None else str(out))


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
                           "estimators")
    return run(cfg.with_(resume=False), **kw)


def _failure(cell: Cell, stage: str, message: str) -> dict[str, Any]:
    return {"problem": cell.problem, "checkpoint": cell.checkpoint, "estimator": cell.estimator,
            "stage": stage, "error": " ".join(str(message).split()), "seed": cell.seed}


def run(config: RunConfig, *, progress: ProgressFn | None = None,
        on_cell_done: Callable[[Cell], None] | None = None,
        warn: Callable[[str], None] | None = None) -> RunResult:
    """Run (or resume) the configured grid and write it to ``config.out``.

    Args:
        config: what to measure (``config.out`` is required).
        progress: called after every cell (see :data:`ProgressFn`).
        on_cell_done: called after every cell has been written (a test hook: raising from it
            stops the run there, as a kill would).
        warn: called with each warning before any work (plugin factories that failed to load but
            are not requested); default: :func:`warnings.warn`. Also in ``RunResult.warnings``.

    Returns:
        :class:`RunResult`.

    Raises:
        RunError, ConfigError, EstimatorSpecError, ProblemError, RunDirError: bad input, before
            any work and before anything is written.
        storage.WriteError: a result file could not be written (full disk, read-only folder): the files
            written before are intact, and ``resume=True`` continues once the cause is fixed.
    """
    if config.out is None:
        raise RunError("config.out is not set; give an output folder (--out DIR)")
    prep = prepare(config)
    for w in prep.warnings:
        if warn is not None:
            warn(w)
        else:
            import warnings

            warnings.warn(w, stacklevel=2)
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
                flat = Groups.of(prob.params).flatten_one(grad)
                if not torch.isfinite(flat).all():
                    bad = [k for k, v in grad.items() if not torch.isfinite(v).all()]
                    raise ValueError(f"it is not finite (NaN/Inf in {', '.join(bad)}): the "
                                     "problem's values overflow float64")
                refs[key] = flat
            except Exception as e:
                if debug:
                    raise
                refs[key] = CellFailure("reference", f"the exact reference gradient failed, so "
                                                     f"no metrics for this problem: {e}")
        r = refs[key]
        if isinstance(r, CellFailure):
            raise r
        return r

    def measure_cell(cell: Cell) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
        """``(kind, rows, timed rows)``: the cell's result, or its failure (kind ``failure``)."""
        tkey = (cell.problem, cell.checkpoint, cell.estimator)
        prob = by_key[(cell.problem, cell.checkpoint)]
        est = est_by_spec[cell.estimator]
        try:
            if cell.kind == "throughput":
                res = _throughput_cell(est, prob, config, cell)
                sec_per_sample[tkey] = res["seconds_per_sample"]
                return "throughput", [res], []
            assert cell.seed is not None
            rows = stats_cell_rows(est, prob, reference(cell.problem, cell.checkpoint), config,
                                   cell.seed, cell.checkpoint)
            return "metrics", rows, timed_rows(rows, sec_per_sample.get(tkey, math.nan))
        except CellFailure as e:
            if debug:
                raise
            return "failure", [_failure(cell, e.stage, str(e))], []
        except UnsupportedProblem as e:
            return "failure", [_failure(cell, "supports", str(e))], []
        except Exception as e:  # an estimator may raise anything; the run goes on
            if debug:
                raise
            stage = "throughput" if cell.kind == "throughput" else "estimate"
            return "failure", [_failure(cell, stage, f"{type(e).__name__}: {e}")], []

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
            store.remove_part(cell.id, "timed")
            kind, rows, timed = measure_cell(cell)
            # storage errors are not the estimator's: they propagate (WriteError) and stop the run
            if timed:
                store.write_part(cell.id, "timed", timed)  # before the part that marks it done
            store.write_part(cell.id, kind, rows)
            status = "failed" if kind == "failure" else "done"
            n_run += 1
            n_fail += status == "failed"
            if progress:
                progress(i + 1, total, cell, status)
            if on_cell_done:
                on_cell_done(cell)
            if time.monotonic() - last_assemble > ASSEMBLE_EVERY_S:
                store.assemble(ids)
                last_assemble = time.monotonic()
    except BaseException:
        try:  # keep the tables as complete as the part files, without hiding the cause
            store.assemble(ids)
        except OSError:
            pass
        raise
    store.assemble(ids)
    done_all = all(store.has(c.id, "throughput" if c.kind == "throughput" else "metrics")
                   or store.has(c.id, "failure") for c in prep.cells)
    manifest = {**store.manifest, "status": "complete" if done_all else "incomplete",
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "cells": {"total": total, "run": n_run, "skipped": n_skip, "failed": n_fail}}
    if prep.warnings:
        manifest["warnings"] = prep.warnings
    store.write_manifest(manifest)
    tables = store.tables()
    return RunResult(store.out, tables["metrics"], tables["throughput"], tables["failure"],
                     manifest, n_run, n_skip, n_fail, timed_metrics=tables["timed"],
                     warnings=list(prep.warnings))


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

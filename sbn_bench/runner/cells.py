"""One cell of a run, measured by a pure function (STYLE 15): ``measure_cell(cell, context) ->
CellResult``, with everything it needs passed in.

A :class:`Cell` is the key of one unit of work: a statistics cell (``kind="metrics"``: one
estimator on one problem checkpoint with one sampling seed), a throughput cell
(``kind="throughput"``, no seed: every estimator on one network shape, their rounds interleaved; its
``estimator`` is the comma-joined list) or a job cell (``kind="job"``: a picklable function of a
higher layer, ``context.job(cell, problem, estimator) -> rows``, e.g. one training run of
:mod:`sbn_bench.train_study`; the function travels to a worker by reference, as pickle does).
A :class:`CellContext` holds what measuring it takes: the problem,
the estimator, the reference gradient and the run's settings. Nothing a cell needs lives in a
closure or in the process: an executor may run it anywhere (:mod:`sbn_bench.runner.executors`).

Determinism: each cell's ``torch.Generator`` is seeded with :func:`stable_seed` of ``(seed,
problem, checkpoint, estimator)`` (SHA-256, never Python's salted ``hash()``), so a cell's numbers
do not depend on which other cells ran, and the same command gives a byte-identical
``metrics.csv`` on the CPU, resumed or not. The chunk size is part of the configuration: a
different chunk draws the noise in a different order.

Numbers that cannot be trusted are never written silently: an estimator returning NaN/Inf, a
non-finite reference gradient, Monte-Carlo statistics from fewer than two samples, or any NaN value
that :data:`sbn_bench.metrics.NAN_VALUES` does not document make the cell a recorded failure.

Modes (``config.mode``): ``exact`` takes the expectations over every path (estimators with a
``path_surrogate``, problems with ``2^{Σ n_k} ≤ max_paths`` paths per data point) or, for
estimators without randomness, from one sample; ``mc`` estimates them from ``S`` samples;
``auto`` is exact where possible. Metrics and their errors: :mod:`sbn_bench.metrics`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from sbn_bench import malloc
from sbn_bench.config import DTYPES, RunConfig
from sbn_bench.estimators import (
    DEFAULT_ADAPT_STEPS,
    Estimator,
    PluginSource,
    UnsupportedProblem,
    adapt_estimator,
    check_states,
    estimate,
    estimate_on_paths,
)
from sbn_bench.metrics import (
    CosineAccumulator,
    Groups,
    MomentAccumulator,
    ReferenceNoise,
    WeightedMoments,
    cosines,
    exact_group_stats,
    layer_scales,
    mc_group_stats,
    metric_rows,
    undocumented_nans,
)
from sbn_bench.problems import Problem
from sbn_bench.reference import enumerate_paths, exact_gradient, path_log_probs
from sbn_bench.reference.paths import first_layer_index
from sbn_bench.runner.memory import CellFailure, choose_mode, chunk_size
from sbn_bench.throughput import MemberFailed, ThroughputSettings, measure_group

CellKind = Literal["metrics", "throughput", "job"]


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from SHA-256 of the parts' JSON (stable across processes and platforms)."""
    h = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()
    return int(h[:16], 16) & (2**63 - 1)


@dataclass(frozen=True)
class Cell:
    """One unit of work: ``kind`` ``"metrics"`` (one seed) or ``"throughput"`` (seed None).

    Its rows go to the table of the same kind; a failed cell's row goes to ``failures.csv``.
    """

    kind: CellKind
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


@dataclass(frozen=True)
class Reference:
    """The reference gradient of a problem checkpoint: ``gradient [P]`` (float64, flat in
    :class:`~sbn_bench.metrics.Groups` order), or why there is none (``error``: the cells that need
    it fail with that message).

    ``spec`` names it in the rows (``exact``, or ``mc:ESTIMATOR:N`` for a Monte-Carlo reference,
    :mod:`sbn_bench.runner.mcref`), whose noise ``noise`` the metrics correct for (SPEC §8)."""

    gradient: Tensor | None
    error: str | None = None
    spec: str = "exact"
    noise: ReferenceNoise | None = None
    record: dict[str, Any] | None = field(default=None, compare=False)
    """For the manifest: what computing it reached (ε, seconds, read from the cache)."""


def exact_reference(problem: Problem, max_bytes: int) -> Reference:
    """The exact reference gradient of ``problem`` (SPEC §2), checked finite; a failure is returned
    as a :class:`Reference` with its message (every statistics cell of the problem records it)."""
    try:
        _, grad = exact_gradient(problem, max_bytes=max_bytes)
    except Exception as e:  # noqa: BLE001 - recorded for every cell of this problem
        return Reference(None, f"the exact reference gradient failed, so no metrics for this "
                               f"problem: {e}")
    flat = Groups.of(problem.params).flatten_one(grad)
    if not torch.isfinite(flat).all():
        bad = [k for k, v in grad.items() if not torch.isfinite(v).all()]
        return Reference(None, "the exact reference gradient failed, so no metrics for this "
                               f"problem: it is not finite (NaN/Inf in {', '.join(bad)}): the "
                               "problem's values overflow float64")
    return Reference(flat)


def network_key(problem: Problem) -> str:
    """What a throughput figure holds for: the network's shape, data points, loss and noise
    (``"2-5-5-5-1/D200/logistic/logistic"``); the weights do not change an estimator's cost."""
    return f"{problem.arch}/D{problem.num_data}/{problem.loss}/{problem.noise}"


@dataclass(frozen=True)
class CellContext:
    """Everything :func:`measure_cell` needs: the problem checkpoint (float64, on the CPU), the
    estimator (for a throughput cell: None, and ``group``, every estimator measured together), the
    reference (None for throughput cells) and the run's settings; and the text of the plugin files
    the run loaded (``plugins``), from which a worker elsewhere rebuilds the estimators by their
    specs (:mod:`sbn_bench.runner.worker`)."""

    problem: Problem
    estimator: Estimator | None
    reference: Reference | None
    config: RunConfig
    group: tuple[Estimator, ...] = ()
    plugins: tuple[PluginSource, ...] = ()
    job: JobFn | None = None


JobFn = Callable[["Cell", Problem, "Estimator | None"], list[dict[str, Any]]]
"""A job cell's work: ``job(cell, problem, estimator) -> rows`` (a module-level function or a
:func:`functools.partial` of one, so that it pickles by reference to any executor's worker)."""

Task = tuple[Cell, CellContext]
"""What an executor runs: a cell and everything measuring it takes."""


@dataclass(frozen=True)
class CellResult:
    """A measured cell: ``kind`` is the cell's table (``"metrics"``, ``"throughput"``) or
    ``"failure"``; ``rows`` its rows in that table's columns (:mod:`sbn_bench.schema`);
    ``failures``: rows of ``failures.csv`` besides (estimators of a throughput group that failed
    while the others were measured); ``seconds`` the cell's wall time where it ran (for progress
    and ETA only: never in a table)."""

    cell: Cell
    kind: str
    rows: list[dict[str, Any]]
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.kind == "failure"


def failure_row(cell: Cell, stage: str, message: str, estimator: str | None = None
                ) -> dict[str, Any]:
    """The ``failures.csv`` row of a cell that failed at ``stage`` (``estimator``: one member of
    a throughput group)."""
    return {"problem": cell.problem, "checkpoint": cell.checkpoint,
            "estimator": cell.estimator if estimator is None else estimator,
            "stage": stage, "error": " ".join(str(message).split()), "seed": cell.seed}


class CellTimeout(BaseException):
    """A cell ran past ``config.cell_timeout`` (a ``BaseException``, so that no ``except
    Exception`` inside an estimator or the statistics swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`CellTimeout` in this thread after ``seconds`` (``SIGALRM``): it interrupts
    Python code and sleeps, which is what a hung plugin does. Without ``SIGALRM`` (Windows) or off
    the main thread (executors' worker threads, which enforce their own limit), no limit."""
    usable = (seconds is not None and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise CellTimeout(f"the cell ran past its time limit of {seconds:g} s (cell_timeout)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count: every
    executor measures a cell with the run's ``config.threads``, so that the numbers (whose
    floating-point sums may be split between threads) do not depend on where the cell ran."""
    previous = torch.get_num_threads()
    if previous != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def seed_global_rngs(*parts: object) -> None:
    """Seed Python's, NumPy's and torch's global generators from the cell's key, so that an
    estimator that draws from them (against the contract, which gives it a generator) still gives
    the same numbers for the same command."""
    seed = stable_seed("global", *parts)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def failure_stage(cell: Cell) -> str:
    """The ``failures.csv`` stage of whatever a cell's estimator raised: ``throughput`` or ``job``
    for those cells, ``estimate`` for a statistics cell."""
    return {"throughput": "throughput", "job": "job"}.get(cell.kind, "estimate")


def modified_problem(stage: str, who: str) -> CellFailure:
    """The failure of a cell whose estimator modified the problem it was given."""
    return CellFailure(stage, f"{who} modified the problem it was given (its data or parameters) "
                              "in place; its numbers are not trusted")


def measure_cell(cell: Cell, context: CellContext, *, debug: bool = False) -> CellResult:
    """Measure one cell: its rows, or its failure (an estimator may raise anything, even
    ``SystemExit``; the run goes on). Pure: the result depends on the cell and the context only.

    The estimator gets a private copy of the problem (a plugin that modifies it in place cannot
    change another cell's numbers, and is recorded as failed); the global random generators are
    seeded from the cell's key (:func:`seed_global_rngs`); the cell runs with ``config.threads``
    torch threads (:func:`torch_threads`) and under ``config.cell_timeout`` (:func:`time_limit`;
    executors whose cells run off the main thread or in C code enforce it themselves).

    Args:
        debug: re-raise an estimator's exception instead of recording it (``SBN_BENCH_DEBUG``).
    """
    malloc.keep_freed_memory()  # once per process: freed blocks reused without page faults
    start = time.perf_counter()
    with torch_threads(context.config.threads):
        result = _measure(cell, context, debug)
    return dataclasses.replace(result, seconds=time.perf_counter() - start)


def _measure(cell: Cell, context: CellContext, debug: bool) -> CellResult:
    seed_global_rngs(cell.kind, cell.problem, cell.checkpoint, cell.estimator, cell.seed)
    problem = context.problem.copy()
    try:
        with time_limit(context.config.cell_timeout):
            if cell.kind == "job":
                if context.job is None:
                    raise CellFailure("job", "a job cell without a job function")
                return CellResult(cell, "job", context.job(cell, problem, context.estimator))
            if cell.kind == "throughput":  # each member's changes to the problem: its failure
                rows, failed = throughput_rows(cell, context, problem)
                return CellResult(cell, "throughput" if rows else "failure",
                                  rows or failed, failed if rows else [])
            else:
                assert cell.seed is not None and context.reference is not None
                if context.reference.gradient is None:
                    raise CellFailure("reference", str(context.reference.error))
                rows = stats_cell_rows(context.estimator, problem, context.reference.gradient,
                                       context.config, cell.seed, cell.checkpoint,
                                       reference=context.reference)
        if problem.fingerprint() != context.problem.fingerprint():
            raise modified_problem("estimate", f"estimator {cell.estimator!r}")
        return CellResult(cell, cell.kind, rows)
    except UnsupportedProblem as e:
        return CellResult(cell, "failure", [failure_row(cell, "supports", str(e))])
    except CellTimeout as e:
        return CellResult(cell, "failure", [failure_row(cell, "timeout", str(e))])
    except CellFailure as e:
        if debug:
            raise
        return CellResult(cell, "failure", [failure_row(cell, e.stage, str(e))])
    except (Exception, SystemExit) as e:  # noqa: BLE001 - an estimator may raise anything
        if debug:
            raise
        return CellResult(cell, "failure", [failure_row(cell, failure_stage(cell),
                                                        f"{type(e).__name__}: {e}")])


# --------------------------------------------------------------------------------------------
# throughput


def adapted(estimator: Estimator, problem: Problem, *seed_parts: object) -> tuple[Estimator, float]:
    """An adaptive estimator tuned on a copy of ``problem`` (SPEC §3b): :func:`~sbn_bench.
    estimators.adapt_estimator` with the default budget :data:`~sbn_bench.estimators.
    DEFAULT_ADAPT_STEPS`, seeded from ``seed_parts`` (a rerun tunes it bit-identically), and the
    seconds it took; any other estimator as it is, after 0 s.

    Raises:
        CellFailure: the adaptation raised or modified the problem (stage ``adapt``).
    """
    if estimator.adapt is None:
        return estimator, 0.0
    private = problem.copy()  # tuned on a copy: a tuning that writes into it changes nothing else
    witness = private.fingerprint()
    try:
        tuned = adapt_estimator(estimator, private, DEFAULT_ADAPT_STEPS,
                                seed=stable_seed("adapt", estimator.spec, *seed_parts))
    except UnsupportedProblem:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a plugin may raise anything
        raise CellFailure("adapt", f"{type(e).__name__}: {e}") from e
    if private.fingerprint() != witness:
        raise CellFailure("adapt", f"estimator {estimator.spec!r} modified the problem it was "
                                   "tuned on (a tuning must treat the problem as read-only)")
    return tuned


def throughput_rows(cell: Cell, context: CellContext, problem: Problem
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``throughput.csv`` rows of a throughput cell (:func:`sbn_bench.throughput.measure_group`:
    every estimator of the group on ``problem``, rounds interleaved), and a failure row for each
    estimator that raised (the others are measured again without it)."""
    config = context.config
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    prob = problem.copy().to(device, dtype)  # its own tensors, whatever the device and dtype
    witness = prob.fingerprint()
    tp = config.throughput
    settings = ThroughputSettings(warmup=tp.warmup, min_round_s=tp.min_round_s,
                                  min_rounds=tp.rounds, max_rounds=tp.max_rounds,
                                  max_seconds=tp.max_seconds, rel_width=tp.rel_width,
                                  batch=tp.batch)
    members: list[Estimator] = []
    specs: list[str] = []  # the members' specs as the cell names them (tuned ones may differ)
    adapt_s: dict[str, float] = {}  # adaptive members: the seconds their tuning took
    failed: list[dict[str, Any]] = []
    for e in context.group:  # the figure is the tuned estimator's; its tuning time apart
        try:
            tuned, secs = adapted(e, prob, "throughput", network_key(problem))
        except (CellFailure, UnsupportedProblem) as err:
            failed.append(failure_row(cell, "adapt", str(err), estimator=e.spec))
            continue
        members.append(tuned)
        specs.append(e.spec)
        if e.adapt is not None:
            adapt_s[e.spec] = secs

    def drop(i: int, why: str) -> None:
        """Record member ``i`` as failed (``why`` its error) and measure the others without it."""
        members.pop(i)
        spec = specs.pop(i)
        failed.append(failure_row(cell, "throughput", why, estimator=spec))

    while members:
        gens = []
        for spec in specs:
            g = torch.Generator(device=device)
            g.manual_seed(stable_seed("throughput", network_key(problem), spec))
            gens.append(g)
        try:
            results = measure_group(members, prob, generators=gens, settings=settings,
                                    max_batch=[min(chunk_size(config, e, problem), config.samples)
                                               for e in members])
        except MemberFailed as m:
            drop(m.index, f"{type(m.error).__name__}: {m.error}")
            continue
        rows = [{"network": network_key(problem), "problem": cell.problem,
                 "checkpoint": cell.checkpoint, "estimator": spec, "device": config.device,
                 "dtype": config.dtype, "threads": torch.get_num_threads(), **r.__dict__,
                 "adapt_s": adapt_s.get(spec, math.nan)}
                for spec, r in zip(specs, results)]
        if prob.fingerprint() != witness:
            # which member? each called once on a copy of its own; the others measured again
            culprits = modifiers(members, problem, device, dtype)
            if not culprits:  # none does it in one call: the whole group is not trusted
                raise modified_problem("throughput", "an estimator")
            for i in reversed(culprits):
                drop(i, str(modified_problem("throughput", f"estimator {specs[i]!r}")))
            prob = problem.copy().to(device, dtype)
            continue
        return rows, failed
    return [], failed


def modifiers(members: Sequence[Estimator], problem: Problem, device: torch.device,
              dtype: torch.dtype) -> list[int]:
    """The indices of the ``members`` that modify the problem in one call of one sample, each
    called on a copy of its own of ``problem`` (which must be unmodified); a member that raises
    is not one of them."""
    found = []
    for i, e in enumerate(members):
        own = problem.copy().to(device, dtype)
        before = own.fingerprint()
        g = torch.Generator(device=device)
        g.manual_seed(0)
        try:
            estimate(e, own, 1, g)
        except (Exception, SystemExit):  # noqa: BLE001, S110 - raising is reported apart
            pass
        if own.fingerprint() != before:
            found.append(i)
    return found


# --------------------------------------------------------------------------------------------
# statistics


def check_finite(x: Tensor, groups: Groups, what: str) -> None:
    """Raise a :class:`CellFailure` naming the first parameter with a NaN/Inf in ``x [c, P]``."""
    if torch.isfinite(x).all():
        return
    bad = ~torch.isfinite(x)
    name = groups.param_of(int(bad.any(0).nonzero()[0]))
    raise CellFailure("estimate", f"estimator returned NaN/Inf ({int(bad.sum())} of {x.numel()} "
                                  f"entries, first in {name}) in {what}")


def sample_stream(estimator: Estimator, problem: Problem, num_samples: int, chunk: int,
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
        check_finite(x, groups, f"samples {done}..{done + c - 1}")
        yield x
        done += c


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
    first, rest = path_log_probs(problem.to(device), paths)
    idx1 = first_layer_index(problem.widths, P, device)
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
    whole = problem.to(device, dtype)  # validated once; its rows need no re-validation
    check_states(whole.with_rows(whole.x[:1], whole.y[:1]), states)  # once, not per call
    for d in range(D):
        sub = whole.with_rows(whole.x[d:d + 1], whole.y[d:d + 1])
        w = torch.exp(first[d, idx1] + rest)  # [P]
        acc = WeightedMoments()
        for i in range(0, P, chunk):
            try:
                grads = estimate_on_paths(estimator, sub, [s[i:i + chunk] for s in states],
                                          validate=False)
            except Exception as e:
                raise CellFailure("exact", f"{type(e).__name__}: {e}") from e
            acc.update([grads[n].to(torch.float64).div_(div[n]) if div else grads[n]
                        for n in groups.params], w[i:i + chunk])
        mean_d, var_d = acc.result()
        if not (torch.isfinite(mean_d).all() and torch.isfinite(var_d).all()):
            # NaN/Inf in any path's estimate propagates to the weighted sums (weights are > 0,
            # and 0·Inf is NaN), so checking the moments checks every path.
            check_finite(torch.stack([mean_d, var_d]), groups,
                         f"exact enumeration over the paths of data point {d}")
        sum_mean += mean_d
        sum_var += var_d
    return sum_mean / D, sum_var / D**2


def stats_cell_rows(estimator: Estimator, problem: Problem, g: Tensor, config: RunConfig,
                    seed: int, checkpoint: str, reference: Reference | None = None
                    ) -> list[dict[str, Any]]:
    """The metric rows of one statistics cell (:data:`sbn_bench.schema.METRICS_COLUMNS`, metrics
    :data:`sbn_bench.metrics.METRICS`: no timed values).

    Args:
        problem: float64 on the CPU (moved to ``config.device``/``config.dtype`` here).
        g: ``[P]`` float64 reference gradient (flat, :class:`~sbn_bench.metrics.Groups` order).
        reference: the reference ``g`` came from (its name for the rows and, for a Monte-Carlo
            reference, its noise, which the metrics correct for); None: the exact reference.

    Raises:
        CellFailure: the estimator raised or returned NaN/Inf, exact mode is impossible,
            Monte-Carlo mode has fewer than two samples, or a statistic came out NaN where
            :data:`sbn_bench.metrics.NAN_VALUES` does not allow it.
    """
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    estimator.check_supports(problem)
    spec = estimator.spec  # the cell's (a tuned estimator's hyperparameters may read otherwise)
    prob = problem.to(device, dtype)
    witness = prob.fingerprint()  # a converted copy: the caller's check would not see changes
    # an adaptive estimator is measured tuned on this checkpoint, in the sampling dtype (SPEC §3b)
    estimator, _ = adapted(estimator, prob, seed, problem.name, checkpoint)
    groups = Groups.of(problem.params)
    g = g.to(device)
    ref_noise = None if reference is None or reference.noise is None else reference.noise.to(device)
    mode = choose_mode(estimator, problem, config.mode, config.max_paths,
                       memory_budget=config.memory_budget)
    S, grid = config.samples, config.m_grid
    if mode == "mc" and S < 2:
        raise CellFailure("mode", f"Monte-Carlo statistics need samples ≥ 2 (got {S}): the variance "
                                  "of a single sample is undefined; use more samples or exact mode")
    gen = torch.Generator(device=device)
    gen.manual_seed(stable_seed(seed, problem.name, checkpoint, spec))
    chunk = chunk_size(config, estimator, problem)
    samples = S
    if mode == "exact" and estimator.randomness == "none":
        # exact: no sampling error, so no rounding either (float64 whatever the sampling dtype)
        x = next(sample_stream(estimator, problem.to(device, torch.float64), 1, 1, gen, groups))
        scale = layer_scales(g, groups, x)
        gs, mean = g / scale, x[0] / scale
        noise = None if ref_noise is None else ref_noise.scaled(1 / scale)
        gstats = exact_group_stats(mean, torch.zeros_like(mean), gs, groups, scale, noise)
        c = cosines(mean.unsqueeze(0), gs, groups, scale / scale.max()).cpu().numpy()
        cos = {m: c for m in grid if m <= S}
        cos_mode, samples = "exact", 1
    else:
        # every value is divided by a power of two per layer (exact; see layer_scales) chosen from
        # the exact gradient and the first chunk, so that saturated nets' tiny gradients keep
        # their precision in sums of squares
        stream = sample_stream(estimator, prob, S, chunk, gen, groups)
        first = next(stream)
        scale = layer_scales(g, groups, first)
        gs = g / scale
        noise = None if ref_noise is None else ref_noise.scaled(1 / scale)
        cos_acc = CosineAccumulator(gs, groups, grid, S, config.cosine_groups,
                                    coord_scale=scale / scale.max())
        sinks: list[Any] = [cos_acc]
        mom = None
        if mode == "exact":
            pchunk = chunk_size(config.with_(dtype="float64"), estimator, problem, num_data=1)
            # exact: enumerated in float64 whatever the sampling dtype (no rounding to report)
            mean, var = exact_path_moments(estimator, problem, torch.float64, device, pchunk,
                                           groups, scale)
            gstats = exact_group_stats(mean, var, gs, groups, scale, noise)
        else:
            mom = MomentAccumulator(S, groups.dim, config.stderr_batches, device)
            sinks.append(mom)
        for x in itertools.chain([first], stream):
            x = x / scale
            for sink in sinks:
                sink.update(x)
        if mom is not None:
            gstats = mc_group_stats(mom.result(), gs, groups, scale, noise)
        cos, cos_mode = cos_acc.result(), "mc"
    rows = metric_rows(gstats, grid, cos, mode=mode, cosine_mode=cos_mode,
                       target_rrmse=config.target_rrmse)
    bad = undocumented_nans(rows, gstats)
    if bad:
        raise CellFailure("metrics", f"statistics are not finite in {len(bad)} row(s) ("
                                     f"{', '.join(bad[:4])}{', …' if len(bad) > 4 else ''}): the "
                                     "estimates are too large for float64 sums")
    if prob.fingerprint() != witness:
        raise modified_problem("estimate", f"estimator {spec!r}")
    ref_spec = "exact" if reference is None else reference.spec
    for r in rows:
        r.update(problem=problem.name, checkpoint=checkpoint, estimator=spec,
                 samples=samples, seed=seed, device=config.device, dtype=config.dtype,
                 reference=ref_spec, reference_rel_error=gstats[str(r["layer"])].reference_rel_error)
    return rows

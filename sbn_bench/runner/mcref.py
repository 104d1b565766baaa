"""The Monte-Carlo reference gradient (SPEC §8), for networks beyond exact enumeration.

The reference ``ĝ`` is the mean of ``N`` single samples of an unbiased estimator R (one independent
noise draw per data point each, SPEC §1): ``E ĝ = g`` and ``E‖ĝ − g‖² = V_R / N``, so its relative
error is ``ε = √(V_R/N) / ‖g‖`` (``V_R`` the trace of R's covariance, whole network). From Python::

    from sbn_bench.problems import preset_problem
    from sbn_bench.runner.mcref import mc_reference
    ref = mc_reference(preset_problem("digits-mlp"), rel_error=0.02, cache_dir="~/.cache/sbn-bench")
    ref.grads()          # {name: tensor} float64, like exact_gradient's
    ref.rel_error        # the ε it reached; ref.samples (N), ref.estimator (R), ref.from_cache

How R and N are chosen (:func:`plan_reference`):

* **R**: the estimator given, or among :func:`candidate_estimators` (the registry's unbiased,
  non-adaptive, random estimators that support the problem) the one with the lowest
  ``V_R × seconds per sample`` in a short pilot (:data:`PILOT_SAMPLES` samples each, or as many as
  :data:`PILOT_SECONDS` allow, at least :data:`PILOT_MIN_SAMPLES`): the cost of reaching a given ε.
  A candidate whose first (warm-up) sample takes over :data:`PILOT_PRUNE` times the fastest's is
  left out (``leg`` on the digits nets: one sample per unit).
* **N**: the number given, or ``N = ⌈V_R / (ε² ‖g‖²)⌉`` (at least :data:`MIN_SAMPLES`) from a pilot
  of R grown (doubling) until its own relative error is below :data:`PILOT_MAX_REL_ERROR`, so that
  ``‖g‖² ≈ ‖m‖² − V̂_R/n`` is known to about ±30 %. ``target="network"`` (default, SPEC §8) applies
  ε to the whole network's gradient; ``target="layers"`` to every parameter group (each layer, the
  output layer, the whole network) that R estimates with noise, N set by the noisiest relative
  to its gradient. Either way every row reports its own group's ε. The pilot's samples are independent of the
  reference's (another seed) and are not reused: ``N`` does not depend on the samples it averages,
  so ``ĝ`` stays unbiased.
* **Budget**: if ``N ×`` R's seconds per sample exceeds ``time_budget_s``, :class:`McReferenceError`
  is raised before the ``N`` samples are drawn, with the estimate and the ε the budget would reach.

The ``N`` samples are drawn in chunks planned by the memory planner (``memory_budget``), on
``device`` in ``dtype``, and accumulated in float64 (:class:`~sbn_bench.metrics.MomentAccumulator`
with :data:`BATCHES` batches, whose batch means give the reference's covariance for the metrics'
standard errors, :class:`~sbn_bench.metrics.ReferenceNoise`).

Cache (``cache_dir``): the plan (R, N and the pilot's figures) is stored by problem fingerprint,
the candidates or R, ε, seed, device and dtype (pilot timings vary from run to run, so a rerun
reads the choice back instead of timing again); the reference itself by problem fingerprint, R
(with its version), N, seed, chunk, device and dtype. Files are written atomically; an unreadable or
mismatching file is recomputed. The same arguments give the same numbers, cached or not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sbn_bench import model
from sbn_bench.config import (
    DEFAULT_REFERENCE_REL_ERROR,
    DEFAULT_REFERENCE_TIME_BUDGET,
    DEVICES,
    DTYPES,
    default_memory_budget,
)
from sbn_bench.errors import check_seed, check_whole, short_repr
from sbn_bench.estimators import Estimator, Registry, estimate, load_registry
from sbn_bench.fileio import atomic_write_bytes, atomic_write_text
from sbn_bench.metrics import ALL, Groups, MomentAccumulator, ReferenceNoise, reference_rel_errors
from sbn_bench.problems import Problem, check_problem
from sbn_bench.runner.cells import stable_seed
from sbn_bench.runner.memory import RunError, itemsize, sample_bytes

DEFAULT_REL_ERROR = DEFAULT_REFERENCE_REL_ERROR
"""The target relative error ε of the reference (``--reference-rel-error``)."""
DEFAULT_TIME_BUDGET_S = DEFAULT_REFERENCE_TIME_BUDGET
"""Seconds the ``N`` samples of one reference may take (``--reference-time-budget``): five minutes,
a small part of a run's time on the digits presets (they need seconds at ε = 0.02)."""
PILOT_SAMPLES = 64
"""Samples per candidate in the pilot that chooses R."""
PILOT_MIN_SAMPLES = 8
PILOT_SECONDS = 5.0
"""Most seconds the pilot spends on one candidate (beyond :data:`PILOT_MIN_SAMPLES` samples)."""
PILOT_PRUNE = 20.0
"""A candidate whose first sample takes more than this many times the fastest candidate's is left
out of the pilot (it would need a variance that many times smaller to be chosen)."""
PILOT_MAX_REL_ERROR = 0.15
"""The pilot of R grows until ``√(V̂_R/n)/‖g‖`` is below this (``‖g‖²`` then known to about ±30 %)."""
PILOT_MAX_SHARE = 0.25
"""Most of ``time_budget_s`` the growing pilot may take."""
MIN_SAMPLES = 64
"""Fewest samples of a reference (two per batch at least)."""
MAX_SAMPLES = 1e15
"""Most samples of a chosen N (an ε that needs more is refused whatever the time budget: at a
nanosecond a sample that is still eleven days)."""
BATCHES = 32
"""Batches of the ``N`` samples kept for the reference's covariance (:class:`ReferenceNoise`)."""
CACHE_VERSION = 1


class McReferenceError(RunError):
    """A Monte-Carlo reference that cannot be computed as asked (no unbiased estimator supports the
    problem, the time budget cannot reach ε, a bad argument); raised before its samples are drawn."""


@dataclass(frozen=True)
class PilotResult:
    """One candidate's pilot: samples drawn, seconds per sample, ``V̂`` (whole network) and
    ``‖g‖²`` estimated as ``‖m‖² − V̂/n``; ``cost = V̂ × seconds per sample``."""

    estimator: str
    samples: int
    seconds_per_sample: float
    variance: float
    g_norm_sq: float

    @property
    def cost(self) -> float:
        return self.variance * self.seconds_per_sample


@dataclass(frozen=True)
class ReferencePlan:
    """R and N (:func:`plan_reference`), with the pilot's figures (empty when both were given)."""

    estimator: str
    samples: int
    target_rel_error: float | None
    seconds_per_sample: float = math.nan
    pilot: tuple[PilotResult, ...] = ()
    variance: float = math.nan
    """``V̂_R`` from R's grown pilot (the one that set N)."""
    g_norm_sq: float = math.nan
    """``‖g‖²`` from R's grown pilot (of the group that set N)."""
    target: str = "network"
    """What ε applies to (:data:`TARGETS`)."""
    group: str = ALL
    """The group that set N (the noisiest relative to its gradient, among the targeted)."""

    @property
    def seconds(self) -> float:
        """Estimated seconds for the ``N`` samples (NaN when not timed)."""
        return self.samples * self.seconds_per_sample


@dataclass(frozen=True)
class McReference:
    """A Monte-Carlo reference gradient (SPEC §8).

    Attributes:
        gradient: ``[P]`` float64 on the CPU, flat in :class:`~sbn_bench.metrics.Groups` order of
            ``params`` (``ĝ``, the mean of the ``N`` samples).
        noise: its noise (per-coordinate variance of one sample ``[P]``, ``B`` batch means), for
            the metrics' corrections.
        samples: ``N``; estimator: R's spec; seed: the seed it was drawn with.
        rel_error: ``ε = √(V̂_R/N) / ‖g‖`` reached, whole network, with ``‖g‖² ≈ ‖ĝ‖² − V̂_R/N``.
        target_rel_error: the ε asked for (None when N was given).
        seconds: wall time of the ``N`` samples when computed (as stored when read from the cache).
        from_cache: read from the cache (nothing was sampled).
        params: ``(name, shape)`` per parameter, in :class:`~sbn_bench.metrics.Groups` order.
        plan: how R and N were chosen.
    """

    gradient: Tensor
    noise: ReferenceNoise
    samples: int
    estimator: str
    seed: int
    rel_error: float
    target_rel_error: float | None
    seconds: float
    from_cache: bool
    params: tuple[tuple[str, tuple[int, ...]], ...]
    plan: ReferencePlan

    @property
    def spec(self) -> str:
        """How rows name it: ``mc:ESTIMATOR:N``."""
        return f"mc:{self.estimator}:{self.samples}"

    @property
    def variance(self) -> Tensor:
        """``[P]`` unbiased per-coordinate variance of one sample of R."""
        return self.noise.variance

    @property
    def variance_sum(self) -> float:
        """``V̂_R``, the summed variance of one sample of R (whole network)."""
        return float(self.noise.variance.sum())

    def grads(self) -> dict[str, Tensor]:
        """``{name: tensor}`` float64, shaped like the problem's parameters."""
        out, start = {}, 0
        for name, shape in self.params:
            n = math.prod(shape)
            out[name] = self.gradient[start:start + n].reshape(shape)
            start += n
        return out

    def group_rel_errors(self) -> dict[str, float]:
        """``ε = √(V̂_R/N) / ‖g‖`` per parameter group (``"1" … "L"``, ``"out"``, ``"all"``), with
        ``‖g‖² ≈ ‖ĝ‖² − V̂_R/N``, and ∞ where that is not significantly positive: the value the
        metrics' rows carry in ``reference_rel_error`` (:func:`sbn_bench.metrics.corrected_norm`;
        a finite ε there understated the true error of such a group several times)."""
        groups = Groups.of({n: torch.empty(s) for n, s in self.params})
        return dict(zip(groups.names, reference_rel_errors(self.gradient, self.noise, groups)))


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (0.0 if a == 0 else math.inf)


# --------------------------------------------------------------------------------------------
# the estimator spec of --reference


def candidate_estimators(problem: Problem, registry: Registry | None = None) -> list[Estimator]:
    """The estimators that may serve as R on ``problem``: unbiased, random (not the exact
    reference itself), not adaptive (their adaptation would be part of the reference), at their
    default hyperparameters, supporting the problem; in registry order."""
    reg = registry or load_registry()
    out = []
    for name in reg.names():
        try:
            e = reg.create(name)
        except Exception:  # noqa: BLE001, S112 - a plugin that cannot be built is no candidate
            continue
        if e.unbiased and e.randomness != "none" and e.adapt is None and e.supports(problem):
            out.append(e)
    return out


def reference_estimator(spec: str, problem: Problem | None = None,
                        registry: Registry | None = None) -> Estimator:
    """The estimator of spec ``spec`` if it can be a Monte-Carlo reference's R: known, unbiased,
    random (not the exact gradient itself), not adaptive and (given ``problem``) supporting the
    problem.

    Raises:
        McReferenceError: naming the spec and why (``argument="reference"``).
    """
    reg = registry or load_registry()
    if not isinstance(spec, str):
        shown = (f"{type(spec).__name__} {spec.spec!r}" if isinstance(spec, Estimator)
                 else short_repr(spec, 60))
        raise McReferenceError(f"reference estimator {shown} is not an estimator spec; expected a spec "
                               "string such as 'reinforce' or 'disarm' (an Estimator's .spec)",
                               argument="reference", value=spec,
                               expected="an unbiased estimator spec such as disarm")
    try:
        e = reg.create(spec)
    except Exception as err:
        raise McReferenceError(f"reference estimator {spec!r}: {err}", argument="reference",
                               value=spec, expected="an unbiased estimator spec") from None
    if not e.unbiased:
        raise McReferenceError(f"reference estimator {spec!r} is biased; a Monte-Carlo reference "
                               "needs an unbiased one (E ĝ = ∇J), e.g. reinforce, disarm",
                               argument="reference", value=spec, expected="an unbiased estimator")
    if e.randomness == "none":
        raise McReferenceError(f"reference estimator {spec!r} is not random (it computes the exact "
                               "gradient): it is no Monte-Carlo reference; use the exact reference "
                               "(--reference exact) where the network can be enumerated",
                               argument="reference", value=spec,
                               expected="a random unbiased estimator such as disarm")
    if e.adapt is not None:
        raise McReferenceError(f"reference estimator {spec!r} adapts before it estimates; choose a "
                               "non-adaptive unbiased estimator", argument="reference", value=spec,
                               expected="a non-adaptive unbiased estimator")
    why = None if problem is None else e.unsupported(problem)
    if why is not None:
        raise McReferenceError(f"reference estimator {spec!r}: {why}", argument="reference",
                               value=spec, expected="an estimator that supports the problem")
    return e


# --------------------------------------------------------------------------------------------
# sampling


def _chunk(estimator: Estimator, problem: Problem, dtype: str, memory_budget: int) -> int:
    return max(1, memory_budget // sample_bytes(estimator, problem, problem.num_data,
                                                itemsize(dtype)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _draw(estimator: Estimator, prob: Problem, n: int, chunk: int, gen: torch.Generator,
          groups: Groups, sink: Any) -> None:
    """Draw ``n`` samples in chunks, each checked finite, into ``sink.update([c, P] float64)``."""
    done = 0
    while done < n:
        c = min(chunk, n - done)
        x = groups.flatten(estimate(estimator, prob, c, gen)).to(torch.float64)
        if not torch.isfinite(x).all():
            raise McReferenceError(f"reference estimator {estimator.spec!r} returned NaN/Inf on "
                                   f"problem {prob.name!r}", argument="reference",
                                   value=estimator.spec, expected="finite estimates")
        sink.update(x)
        done += c


class _Moments:
    """Sum and sum of squares (float64) of streamed rows, for the pilot."""

    def __init__(self) -> None:
        self.n = 0
        self.s: Tensor | None = None
        self.q: Tensor | None = None

    def update(self, x: Tensor) -> None:
        s, q = x.sum(0), (x * x).sum(0)
        self.s = s if self.s is None else self.s + s
        self.q = q if self.q is None else self.q + q
        self.n += x.shape[0]

    def figures(self, groups: Groups | None = None) -> tuple[Tensor, Tensor]:
        """``(V̂, ‖m‖² − V̂/n)`` per group (``[G]`` each; without ``groups``, whole vector ``[1]``)."""
        assert self.s is not None and self.q is not None and self.n >= 2
        m = self.s / self.n
        var = ((self.q - self.n * m * m) / (self.n - 1)).clamp_min(0)
        if groups is None:
            V, msq = var.sum().reshape(1), (m * m).sum().reshape(1)
        else:
            V, msq = groups.sums(var), groups.sums(m * m)
        return V, msq - V / self.n


TARGETS = ("network", "layers")
"""What the target ε applies to: the whole network's gradient (SPEC §8's ``ε = √(V_R/N)/‖g‖``), or
every parameter group (each layer, the output layer and the whole network) that R estimates with
noise, which can cost far more: a layer with a small gradient needs many samples."""


def _worst(V: Tensor, gsq: Tensor) -> tuple[int, float]:
    """The group with the largest ``V/‖g‖²`` among those with noise (``V > 0``) and that ratio
    (``inf`` where ``‖g‖² ≤ 0``); ``(-1, 0)`` when no group has noise."""
    worst, ratio = -1, 0.0
    for j in range(V.numel()):
        v, g = float(V[j]), float(gsq[j])
        if v <= 0:
            continue
        r = v / g if g > 0 else math.inf
        if worst < 0 or r > ratio:
            worst, ratio = j, r
    return worst, ratio


def _pilot(estimator: Estimator, prob: Problem, chunk: int, seed: int, device: torch.device,
           min_samples: int, max_samples: int, seconds: float,
           acc: _Moments | None = None, spent: float = 0.0) -> tuple[_Moments, float]:
    """Grow ``acc`` with samples of ``estimator`` until ``min_samples`` and then until
    ``max_samples`` or ``seconds``; returns it and the seconds spent sampling."""
    groups = Groups.of(prob.params)
    acc = acc or _Moments()
    gen = torch.Generator(device=device)
    gen.manual_seed(stable_seed("mcref-pilot", seed, prob.fingerprint(), estimator.spec, acc.n))
    while acc.n < max_samples and (acc.n < min_samples or spent < seconds):
        c = min(chunk, max_samples - acc.n, max(1, acc.n or min_samples))
        _sync(device)
        t0 = time.perf_counter()
        _draw(estimator, prob, c, chunk, gen, groups, acc)
        _sync(device)
        spent += time.perf_counter() - t0
    return acc, spent


def plan_reference(problem: Problem, *, estimator: str | None = None, samples: int | None = None,
                   rel_error: float = DEFAULT_REL_ERROR, target: str = "network", seed: int = 0,
                   time_budget_s: float = DEFAULT_TIME_BUDGET_S, device: str = "cpu",
                   dtype: str = "float32", memory_budget: int | None = None,
                   registry: Registry | None = None, cache_dir: str | Path | None = None
                   ) -> ReferencePlan:
    """Choose R and N for ``problem`` (module docstring), or refuse.

    Raises:
        McReferenceError: no unbiased estimator supports the problem; the pilot cannot estimate
            ``‖g‖`` within its share of the budget; or ``N`` samples would take longer than
            ``time_budget_s`` (the message gives N, the seconds, and the ε the budget reaches).
    """
    check_problem(problem)
    _check_args(rel_error, time_budget_s, samples)
    memory_budget = _check_where(seed, device, dtype, memory_budget)
    if target not in TARGETS:
        raise McReferenceError(f"reference_target={target!r} is not one of {', '.join(TARGETS)}",
                               argument="reference_target", value=target,
                               expected=f"one of {', '.join(TARGETS)}")
    if estimator is not None and samples is not None:
        e = reference_estimator(estimator, problem, registry)
        chunk = _chunk(e, problem, dtype, memory_budget)
        key = _ref_key(problem, e, samples, seed, chunk, device, dtype)
        stored = cache_dir is not None and _reference_path(cache_dir, key).is_file()
        # not timed: without a budget, or when the reference is cached (nothing will be sampled)
        per = math.nan if math.isinf(time_budget_s) or stored else _seconds_per_sample(
            e, problem, samples, seed, device, dtype, chunk)
        cached = ReferencePlan(estimator, samples, None, per)
    else:
        # R's candidates, made once: they key the plan, check a cached one and enter the pilot
        cands = None if estimator is not None else candidate_estimators(problem, registry)
        key = _plan_key(problem, estimator, cands, samples, rel_error, seed, device, dtype,
                        registry, target)
        cached = _read_plan(cache_dir, key)
        if cached is not None and not _plan_fits(cached, estimator, cands, samples, rel_error,
                                                 target):
            cached = None  # edited or mismatching: made again
        if cached is None:
            cached = _make_plan(problem, estimator, cands, samples, rel_error, seed, time_budget_s,
                                device, dtype, memory_budget, registry, target)
            _write_plan(cache_dir, key, cached)
    if cached.seconds > time_budget_s:
        if samples is None:
            _too_costly(problem, cached, rel_error, time_budget_s)
        _given_n_too_costly(problem, cached, time_budget_s)
    return cached


TIMING_SECONDS = 0.05
"""A given ``N``'s cost is timed on batches of samples growing (×4) until one takes this long (or
reaches ``N`` or the memory planner's chunk), so that per-call overheads do not inflate it."""


def _seconds_per_sample(estimator: Estimator, problem: Problem, n: int, seed: int, device: str,
                        dtype: str, chunk: int) -> float:
    """Seconds per sample of ``estimator`` drawn in batches as the reference draws them (see
    :data:`TIMING_SECONDS`): one sample first (its time is the figure when it reaches
    ``TIMING_SECONDS``: overheads are then negligible), then batches of 4, 16, … samples, about
    ``5 × TIMING_SECONDS`` in all. NaN when R fails here (its failure is then recorded for the
    problem's cells where the reference is computed, as before). ``chunk``: the memory
    planner's, as the reference draws with."""
    dev = torch.device(device)
    prob = problem.to(dev, DTYPES[dtype])
    groups = Groups.of(prob.params)
    gen = torch.Generator(device=dev)
    gen.manual_seed(stable_seed("mcref-timing", seed, estimator.spec))
    c = 1
    try:
        while True:
            _sync(dev)
            t0 = time.perf_counter()
            _draw(estimator, prob, c, chunk, gen, groups, _Moments())
            _sync(dev)
            t = time.perf_counter() - t0
            if t >= TIMING_SECONDS or c >= min(chunk, n):
                return t / c
            c = min(4 * c, chunk, n)
    except Exception:  # noqa: BLE001 - NaN/Inf, an error: the reference itself will say so
        return math.nan


def _plan_fits(plan: ReferencePlan, estimator: str | None, cands: list[Estimator] | None,
               samples: int | None, rel_error: float, target: str) -> bool:
    """Whether a cached plan is one this request could have made, R being ``estimator`` or one of
    ``cands`` (a plan file edited by hand, with a biased R or too few samples, is made again
    rather than trusted)."""
    if samples is not None:
        n_ok = plan.samples == samples
    else:
        n_ok = plan.samples >= MIN_SAMPLES and plan.target_rel_error == rel_error
    if not n_ok or plan.target != target or not plan.seconds_per_sample > 0:
        return False
    if estimator is not None:
        return plan.estimator == estimator
    return plan.estimator in {e.spec for e in cands or ()}


def _check_where(seed: int, device: str | torch.device, dtype: str, memory_budget: int | None) -> int:
    """The arguments a reference and its plan share: refused here rather than by torch or a dict;
    returns ``memory_budget`` as an int (``1e9`` is a whole number of bytes; None: the run's
    default on ``device``, :func:`sbn_bench.config.default_memory_budget`)."""
    check_seed(seed, "seed", McReferenceError)
    try:
        kind = torch.device(device).type  # "cpu", "cuda", "cuda:0", torch.device(...)
    except (RuntimeError, TypeError, ValueError):
        kind = None
    if kind not in DEVICES:
        raise McReferenceError(f"device={device!r} is not one of {', '.join(DEVICES)}", argument="device",
                               value=device, expected=f"one of {', '.join(DEVICES)}")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise McReferenceError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}", argument="dtype",
                               value=dtype, expected=f"one of {', '.join(DTYPES)}")
    if memory_budget is None:
        return default_memory_budget(kind)
    return int(check_whole(memory_budget, "memory_budget", error=McReferenceError, unit="bytes"))


def _check_args(rel_error: float, time_budget_s: float, samples: int | None) -> None:
    if isinstance(rel_error, bool) or not isinstance(rel_error, (int, float)) \
            or not math.isfinite(rel_error) or not 0 < rel_error < 1:
        raise McReferenceError(f"reference_rel_error={rel_error!r} must be a number in (0, 1), "
                               "e.g. 0.02", argument="reference_rel_error", value=rel_error,
                               expected="a number in (0, 1)")
    if isinstance(time_budget_s, bool) or not isinstance(time_budget_s, (int, float)) \
            or not time_budget_s > 0:
        raise McReferenceError(f"reference_time_budget={time_budget_s!r} must be seconds > 0",
                               argument="reference_time_budget", value=time_budget_s,
                               expected="seconds > 0")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                or samples < 2):
        raise McReferenceError(f"samples={samples!r} must be an integer ≥ 2",
                               argument="samples", value=samples, expected="an integer ≥ 2")


def _given_n_too_costly(problem: Problem, plan: ReferencePlan, budget: float) -> None:
    t = plan.seconds_per_sample
    err = McReferenceError(
        f"the Monte-Carlo reference of problem {problem.name!r} with the given N={plan.samples} "
        f"samples of {plan.estimator} would take about {plan.seconds:.3g} s ({t * 1e3:.3g} ms "
        f"each), over the time budget of {budget:g} s (within it: N ≈ {max(1, int(budget / t))}); "
        f"give a smaller N (--reference mc:{plan.estimator}:N) or raise --reference-time-budget",
        argument="reference_time_budget", value=budget,
        expected=f"at least {math.ceil(plan.seconds)} s")
    err.blames = ("reference",)  # the given N shares the fault: on the command line, its usage error
    raise err


def _too_costly(problem: Problem, plan: ReferencePlan, rel_error: float, budget: float) -> None:
    t = plan.seconds_per_sample
    reach = math.inf
    if plan.g_norm_sq > 0:
        n_budget = max(1, int(budget / t))
        reach = math.sqrt(plan.variance / n_budget / plan.g_norm_sq)
    err = McReferenceError(
        f"the Monte-Carlo reference of problem {problem.name!r} needs about N={plan.samples} "
        f"samples of {plan.estimator} ({t * 1e3:.3g} ms each, about {plan.seconds:.3g} s) to reach "
        f"a relative error of {rel_error:g}, over the time budget of {budget:g} s (within it: "
        f"ε ≈ {reach:.3g}); raise --reference-time-budget or --reference-rel-error, or give N "
        f"(--reference mc:{plan.estimator}:N)", argument="reference_time_budget", value=budget,
        expected=f"at least {math.ceil(plan.seconds)} s")
    err.blames = ("reference_rel_error",)  # the target error shares the fault
    raise err


def _make_plan(problem: Problem, estimator: str | None, candidates: list[Estimator] | None,
               samples: int | None, rel_error: float, seed: int, budget: float, device: str,
               dtype: str, memory_budget: int, registry: Registry | None, target: str
               ) -> ReferencePlan:
    """R and N by the pilot: R is ``estimator``, or the best of ``candidates``
    (:func:`candidate_estimators`, given when ``estimator`` is None)."""
    dev = torch.device(device)
    prob = problem.to(dev, DTYPES[dtype])
    if estimator is not None:
        cands = [reference_estimator(estimator, problem, registry)]
    else:
        cands = list(candidates or ())
        if not cands:
            raise McReferenceError(f"no unbiased estimator supports problem {problem.name!r} "
                                   f"(noise {problem.noise}, loss {problem.loss}, layers "
                                   f"{', '.join(problem.layer_kinds)}): no Monte-Carlo reference",
                                   argument="reference", value="mc",
                                   expected="an unbiased estimator that supports the problem")
    results: list[PilotResult] = []
    accs: dict[str, tuple[_Moments, float]] = {}
    # warm-up: one sample of each (first-call allocations, lazy initialisation), timed: a
    # candidate far slower than the fastest is left out (it would need a variance that much
    # smaller to win, and its pilot alone would cost minutes on large nets)
    warm: dict[str, float] = {}
    for e in cands:
        gen = torch.Generator(device=dev)
        gen.manual_seed(stable_seed("mcref-warmup", seed, e.spec))
        _sync(dev)
        t0 = time.perf_counter()
        _draw(e, prob, 1, 1, gen, Groups.of(prob.params), _Moments())
        _sync(dev)
        warm[e.spec] = time.perf_counter() - t0
    fastest = min(warm.values())
    if len(cands) > 1:
        cands = [e for e in cands if warm[e.spec] <= PILOT_PRUNE * fastest]
    for e in cands:
        chunk = _chunk(e, problem, dtype, memory_budget)
        acc, spent = _pilot(e, prob, chunk, seed, dev, PILOT_MIN_SAMPLES, PILOT_SAMPLES,
                            PILOT_SECONDS)
        accs[e.spec] = (acc, spent)
        V, gsq = acc.figures()
        results.append(PilotResult(e.spec, acc.n, spent / acc.n, float(V[0]), float(gsq[0])))
    best = min(results, key=lambda r: (r.cost if math.isfinite(r.cost) else math.inf))
    e = next(c for c in cands if c.spec == best.estimator)
    if samples is not None:
        return ReferencePlan(e.spec, samples, None, best.seconds_per_sample, tuple(results),
                             target=target)
    # grow R's pilot until ‖g‖ (of every targeted group) is known well enough to set N
    groups = Groups.of(problem.params)
    names = groups.names if target == "layers" else [ALL]
    idx = [groups.names.index(n) for n in names]
    acc, spent = accs[e.spec]
    chunk = _chunk(e, problem, dtype, memory_budget)

    def worst() -> tuple[int, float, float, float]:
        V, gsq = acc.figures(groups)
        j, ratio = _worst(V[idx], gsq[idx])
        k = idx[j] if j >= 0 else groups.names.index(ALL)
        return k, ratio, float(V[k]), float(gsq[k])

    k, ratio, V, gsq = worst()
    while ratio / acc.n > PILOT_MAX_REL_ERROR**2:
        if 2 * spent > PILOT_MAX_SHARE * budget:
            eps = math.sqrt(ratio / acc.n)
            where = "" if target == "network" else f" of group {groups.names[k]!r}"
            raise McReferenceError(
                f"the pilot of the Monte-Carlo reference of problem {problem.name!r} cannot tell "
                f"‖g‖{where} from the noise of {e.spec} within {PILOT_MAX_SHARE:.0%} of the time "
                f"budget ({acc.n} samples in {spent:.0f} s, relative error still {eps:.3g}); raise "
                f"--reference-time-budget or give N (--reference mc:{e.spec}:N)",
                argument="reference_time_budget", value=budget, expected="a larger budget or N")
        acc, spent = _pilot(e, prob, chunk, seed, dev, 2 * acc.n, 2 * acc.n, math.inf, acc, spent)
        k, ratio, V, gsq = worst()
    need = ratio / rel_error / rel_error  # inf where ε² underflows (ε = 1e-300)
    if need > MAX_SAMPLES:
        raise McReferenceError(
            f"reference_rel_error={rel_error:g} is out of reach for problem {problem.name!r}: it "
            f"needs more than {MAX_SAMPLES:.3g} samples of {e.spec}"
            + (f" (about {need:.3g})" if math.isfinite(need) else "") + "; raise it",
            argument="reference_rel_error", value=rel_error,
            expected=f"at least {math.sqrt(ratio / MAX_SAMPLES):.3g}")
    n = max(MIN_SAMPLES, math.ceil(need))
    return ReferencePlan(e.spec, n, rel_error, spent / acc.n, tuple(results), V, gsq,
                         target, groups.names[k])


# --------------------------------------------------------------------------------------------
# the reference


def mc_reference(problem: Problem, *, estimator: str | None = None, samples: int | None = None,
                 rel_error: float = DEFAULT_REL_ERROR, target: str = "network", seed: int = 0,
                 time_budget_s: float = DEFAULT_TIME_BUDGET_S, cache_dir: str | Path | None = None,
                 device: str = "cpu", dtype: str = "float32", memory_budget: int | None = None,
                 registry: Registry | None = None, plan: ReferencePlan | None = None
                 ) -> McReference:
    """The Monte-Carlo reference gradient of ``problem`` (SPEC §8; module docstring).

    Args:
        problem: the problem (any device and dtype; it is not modified).
        estimator: R's spec (an unbiased estimator); None: chosen by the pilot.
        samples: ``N``; None: chosen to reach ``rel_error``.
        rel_error: the target ε (used when ``samples`` is None).
        target: what ε applies to (:data:`TARGETS`): ``"network"`` (the whole gradient, SPEC
            §8) or ``"layers"`` (every group R estimates with noise; the rows show each group's ε
            either way).
        seed: the seed of the samples (and of the pilot).
        time_budget_s: most seconds the ``N`` samples may take (refused beyond, before sampling;
            a given ``N`` is timed on a few batches of R first).
        cache_dir: where plans and references are cached (None: no cache).
        device, dtype: where and in which dtype the samples are drawn (accumulated in float64).
        memory_budget: bytes of the estimator's tensors per chunk (the runner's memory planner;
            None: the run's default on ``device``).
        registry: where estimators come from (default: built-ins and entry points).
        plan: R and N already chosen (:func:`plan_reference`); the other choice arguments are
            then not used.

    Returns:
        :class:`McReference`; with a given ``samples`` and ``estimator`` the cost is ``N``
        samples and a timing of R (about a quarter of a second, or one sample where one takes
        longer) that checks them against ``time_budget_s``; one file read when cached (no
        timing then, nor when ``time_budget_s`` is ``math.inf``).

    Raises:
        McReferenceError: see :func:`plan_reference`; R returned NaN/Inf.
    """
    check_problem(problem)
    memory_budget = _check_where(seed, device, dtype, memory_budget)
    if plan is None:
        plan = plan_reference(problem, estimator=estimator, samples=samples, rel_error=rel_error,
                              target=target, seed=seed, time_budget_s=time_budget_s,
                              device=device, dtype=dtype, memory_budget=memory_budget,
                              registry=registry, cache_dir=cache_dir)
    est = reference_estimator(plan.estimator, problem, registry)
    groups = Groups.of(problem.params)
    params = tuple((n, tuple(s)) for n, s in zip(groups.params, groups.shapes))
    chunk = _chunk(est, problem, dtype, memory_budget)
    key = _ref_key(problem, est, plan.samples, seed, chunk, device, dtype)
    hit = _read_reference(cache_dir, key, groups.dim)
    if hit is not None:
        grad, noise, seconds = hit
        return _result(grad, noise, plan, seed, seconds, True, params, groups)
    dev = torch.device(device)
    prob = problem.to(dev, DTYPES[dtype])
    gen = torch.Generator(device=dev)
    gen.manual_seed(stable_seed("mcref", seed, problem.fingerprint(), est.spec, plan.samples))
    acc = MomentAccumulator(plan.samples, groups.dim, BATCHES, dev)
    _sync(dev)
    t0 = time.perf_counter()
    _draw(est, prob, plan.samples, chunk, gen, groups, acc)
    _sync(dev)
    seconds = time.perf_counter() - t0
    st = acc.result()
    N = plan.samples
    grad = st.mean.cpu()
    var = (st.m2 / (N - 1)).cpu()
    bvar = (st.batch_m2 / (st.batch_n[:, None] - 1).clamp_min(1)).cpu()
    noise = ReferenceNoise(N, var, (st.batch_mean - st.mean).cpu(), bvar)
    _write_reference(cache_dir, key, grad, noise, seconds, plan)
    return _result(grad, noise, plan, seed, seconds, False, params, groups)


def _result(grad: Tensor, noise: ReferenceNoise, plan: ReferencePlan, seed: int, seconds: float,
            from_cache: bool, params: tuple[tuple[str, tuple[int, ...]], ...], groups: Groups
            ) -> McReference:
    j = groups.names.index(ALL)
    v = float(groups.sums(noise.variance)[j]) / noise.samples
    gsq = float(groups.sums(grad * grad)[j]) - v
    eps = _ratio(math.sqrt(v), math.sqrt(max(gsq, 0.0)))
    return McReference(grad, noise, noise.samples, plan.estimator, seed, eps, plan.target_rel_error,
                       seconds, from_cache, params, plan)


# --------------------------------------------------------------------------------------------
# cache


def _digest(parts: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:32]


def _plan_key(problem: Problem, estimator: str | None, candidates: list[Estimator] | None,
              samples: int | None, rel_error: float, seed: int, device: str, dtype: str,
              registry: Registry | None, target: str) -> str:
    if estimator is None:
        cands = [f"{e.spec}@{e.version}" for e in candidates or ()]
    else:
        reg = registry or load_registry()
        try:
            cands = [f"{estimator}@{reg.create(estimator).version}"]
        except Exception:  # noqa: BLE001 - an unknown name is refused where the plan is made
            cands = [estimator]
    return _digest(["plan", CACHE_VERSION, model.STREAM_VERSION, problem.fingerprint(), cands,
                    samples, rel_error, seed, torch.device(device).type, dtype, target])


def _ref_key(problem: Problem, est: Estimator, samples: int, seed: int, chunk: int, device: str,
             dtype: str) -> str:
    return _digest(["reference", CACHE_VERSION, model.STREAM_VERSION, problem.fingerprint(),
                    est.spec, est.version, samples, seed, chunk, BATCHES,
                    torch.device(device).type, dtype, torch.__version__])


def _folder(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / "mcref"


def _reference_path(cache_dir: str | Path, key: str) -> Path:
    return _folder(cache_dir) / f"reference-{key}.pt"


def _read_plan(cache_dir: str | Path | None, key: str) -> ReferencePlan | None:
    if cache_dir is None:
        return None
    path = _folder(cache_dir) / f"plan-{key}.json"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        pilot = tuple(PilotResult(**p) for p in d["pilot"])
        return ReferencePlan(str(d["estimator"]), int(d["samples"]), d["target_rel_error"],
                             float(d["seconds_per_sample"]), pilot, float(d["variance"]),
                             float(d["g_norm_sq"]), str(d["target"]), str(d["group"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_plan(cache_dir: str | Path | None, key: str, plan: ReferencePlan) -> None:
    if cache_dir is None:
        return
    d = dataclasses.asdict(plan)
    atomic_write_text(_folder(cache_dir) / f"plan-{key}.json",
                      json.dumps(d, indent=1, allow_nan=True) + "\n")


def _read_reference(cache_dir: str | Path | None, key: str, dim: int
                    ) -> tuple[Tensor, ReferenceNoise, float] | None:
    if cache_dir is None:
        return None
    path = _reference_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        grad, var, bdev, bvar = d["gradient"], d["variance"], d["batch_dev"], d["batch_variance"]
        n, seconds = int(d["samples"]), float(d["seconds"])
    except Exception:  # noqa: BLE001 - an unreadable cache file is recomputed
        return None
    ok = (grad.shape == (dim,) and var.shape == (dim,) and bdev.ndim == 2 and bdev.shape[1] == dim
          and bvar.shape == bdev.shape and grad.dtype == torch.float64
          and bool(torch.isfinite(grad).all()))
    if not ok:
        return None
    return grad, ReferenceNoise(n, var, bdev, bvar), seconds


def _write_reference(cache_dir: str | Path | None, key: str, grad: Tensor, noise: ReferenceNoise,
                     seconds: float, plan: ReferencePlan) -> None:
    if cache_dir is None:
        return
    buf = io.BytesIO()
    torch.save({"gradient": grad, "variance": noise.variance, "batch_dev": noise.batch_dev,
                "batch_variance": noise.batch_variance, "samples": noise.samples,
                "seconds": seconds, "estimator": plan.estimator}, buf)
    atomic_write_bytes(_reference_path(cache_dir, key), buf.getvalue())

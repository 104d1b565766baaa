"""Throughput of estimators, measured apart from the statistics (SPEC §5 "Cost", STYLE 8), in a way
that holds on a noisy machine.

A throughput figure is the number of single-sample estimates per second one
:func:`sbn_bench.estimators.estimate` call delivers (forward and backward, all ``S`` samples), on a
given network shape, device, dtype and thread count; it does not depend on the weights, so it is
measured once per (estimator, network shape, device, dtype), not per checkpoint. The method
(:func:`measure_group`):

1. **Calibration**: each estimator's round is made long enough to time reliably: the batch grows
   until one call lasts at least ``min_round_s`` (capped by the memory planner's chunk); when the
   cap stops it, a round is several calls.
2. **Interleaving**: rounds go round-robin over the estimators (A B C, B C A, C A B, …), so that a
   drift of the machine's speed (another process, frequency scaling) hits all alike.
3. **Rounds until the interval is narrow**: at least ``min_rounds``, then more (up to
   ``max_rounds`` or ``max_seconds``) until every estimator's confidence interval for its median is
   within ``rel_width`` of the median.
4. **Report** the median over rounds with a distribution-free confidence interval (order statistics
   of the rounds, coverage ``≥ confidence`` where the number of rounds allows: :func:`median_ci`;
   its level is ``ci_level``, e.g. 98.4% for 7 rounds); a figure whose interval is wider than
   ``rel_width``, or falls short of ``confidence`` (fewer rounds than that needs: 6 for 95%; the
   rounds go on to 6 where ``max_rounds`` and ``max_seconds`` allow), is marked ``wide`` (not
   trusted: reports never call it fastest).

On CUDA the device is synchronised around each timed call and the peak memory is
``torch.cuda.max_memory_allocated`` over the timed calls minus the memory allocated before them. On
the CPU the peak memory is NaN: neither ``tracemalloc`` (blind to torch's allocator) nor the
process's ``ru_maxrss`` (a high-water mark) would be an honest per-estimator figure.

For a stable figure: a quiet machine, and the thread count of the measurement (``--threads``,
default one thread per process: for the small networks benchmarked here, more threads mostly spin).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sbn_bench.errors import ArgumentError
from sbn_bench.estimators import Estimator, estimate
from sbn_bench.problems import Problem
from sbn_bench.schema import THROUGHPUT_CONFIDENCE


@dataclass(frozen=True)
class ThroughputSettings:
    """How throughput is measured (see the module docstring).

    Attributes:
        warmup: untimed calls per estimator before calibrating.
        min_round_s: a timed round lasts at least this long.
        min_rounds / max_rounds: rounds per estimator.
        max_seconds: the time the interleaved rounds of one group may take (beyond ``min_rounds``).
        rel_width: target relative width of the confidence interval (``(hi − lo) / median``).
        confidence: the confidence level of the interval.
        batch: samples per call (None: calibrated).
    """

    warmup: int = 1
    min_round_s: float = 0.2
    min_rounds: int = 7
    max_rounds: int = 30
    max_seconds: float = 20.0
    rel_width: float = 0.2
    confidence: float = THROUGHPUT_CONFIDENCE
    batch: int | None = None


@dataclass(frozen=True)
class ThroughputResult:
    """One estimator's figure; fields as in :data:`sbn_bench.schema.THROUGHPUT_COLUMNS`."""

    batch: int
    rounds: int
    samples_per_s: float
    samples_per_s_lo: float
    samples_per_s_hi: float
    seconds_per_sample: float
    seconds_per_sample_lo: float
    seconds_per_sample_hi: float
    ci_level: float
    wide: bool
    peak_memory_bytes: float
    evals_per_sample: int


def rounds_for_level(confidence: float) -> int:
    """The fewest rounds whose range covers the median at ``confidence``: the smallest ``n`` with
    ``1 − 2·2⁻ⁿ ≥ confidence`` (6 for 95%)."""
    if not 0 < confidence < 1:
        raise ArgumentError(f"confidence={confidence!r} must be in (0, 1)", argument="confidence",
                            value=confidence, expected="0 < confidence < 1")
    n = 1
    while 1 - 2 * 0.5**n < confidence:
        n += 1
    return n


def median_ci(values: Sequence[float], confidence: float = THROUGHPUT_CONFIDENCE
              ) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median of i.i.d. values: the order
    statistics ``(x_(j), x_(n+1−j))`` with the largest ``j`` whose coverage
    ``1 − 2·P(Bin(n, ½) < j)`` is at least ``confidence``; with too few values for that, the range
    ``(min, max)``. Returns ``(lo, hi, coverage)``."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan
    best = (1, 1.0 - 2 * 0.5**n)
    below = 0.0  # P(Bin(n, ½) < j)
    for j in range(1, n // 2 + 1):
        below += math.comb(n, j - 1) * 0.5**n
        coverage = 1.0 - 2.0 * below
        if coverage >= confidence:
            best = (j, coverage)
    j, coverage = best
    return float(x[j - 1]), float(x[n - j]), float(coverage)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MemberFailed(Exception):
    """An estimator of a group raised while being measured; ``index`` is its position in the
    group, ``error`` what it raised."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.index = index
        self.error = error


@dataclass
class _Timer:
    """One estimator's calibrated rounds."""

    estimator: Estimator
    batch: int
    calls: int
    generator: torch.Generator
    rates: list[float]

    def round(self, problem: Problem) -> None:
        device = problem.x.device
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(self.calls):
            estimate(self.estimator, problem, self.batch, self.generator)
        _sync(device)
        self.rates.append(self.batch * self.calls / (time.perf_counter() - t0))


def _calibrate(est: Estimator, problem: Problem, generator: torch.Generator, max_batch: int,
               settings: ThroughputSettings) -> _Timer:
    """The batch (up to ``max_batch``) and the calls per round that make a round last at least
    ``settings.min_round_s``."""
    device = problem.x.device
    batch = settings.batch or min(max_batch, 16)
    for _ in range(settings.warmup):
        estimate(est, problem, batch, generator)
    while True:
        _sync(device)
        t0 = time.perf_counter()
        estimate(est, problem, batch, generator)
        _sync(device)
        took = max(time.perf_counter() - t0, 1e-9)
        if settings.batch is not None or took >= settings.min_round_s or batch >= max_batch:
            break
        batch = min(max_batch, max(batch + 1, int(batch * min(8.0, 1.2 * settings.min_round_s / took))))
    calls = max(1, math.ceil(settings.min_round_s / took))
    return _Timer(est, batch, calls, generator, [])


def measure_group(estimators: Sequence[Estimator], problem: Problem, *, max_batch: Sequence[int],
                  generators: Sequence[torch.Generator],
                  settings: ThroughputSettings = ThroughputSettings()) -> list[ThroughputResult]:
    """Measure several estimators on one problem, interleaved (see the module docstring).

    Args:
        problem: on the device and dtype to measure (:meth:`Problem.to`).
        max_batch: per estimator, the most samples one call may take (the memory planner's chunk).
        generators: per estimator, its generator (on the problem's device).

    Raises:
        MemberFailed: an estimator raised (the caller records it as that estimator's failure and
            measures the others without it).
    """
    if not estimators:
        return []
    if settings.min_rounds < 1 or settings.max_rounds < settings.min_rounds:
        raise ArgumentError(f"throughput: min_rounds={settings.min_rounds} must be ≥ 1 and ≤ "
                            f"max_rounds={settings.max_rounds}", argument="rounds",
                            value=settings.min_rounds, expected="1 ≤ min_rounds ≤ max_rounds")
    device = problem.x.device
    timers = []
    for i, (e, g, mb) in enumerate(zip(estimators, generators, max_batch)):
        try:
            timers.append(_calibrate(e, problem, g, mb, settings))
        except (Exception, SystemExit) as err:  # noqa: BLE001 - the caller records it, measures the rest
            raise MemberFailed(i, err) from err
    cuda = device.type == "cuda"
    if cuda:
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    r = 0
    while True:
        k = r % len(timers)
        for i in [*range(k, len(timers)), *range(k)]:  # rotate the order every round
            try:
                timers[i].round(problem)
            except (Exception, SystemExit) as err:  # noqa: BLE001 - the caller records it, measures the rest
                raise MemberFailed(i, err) from err
        r += 1
        if r < settings.min_rounds:
            continue
        narrow = all(_settled(t.rates, settings) for t in timers)
        if narrow or r >= settings.max_rounds or time.perf_counter() - start > settings.max_seconds:
            break
    peak = float(torch.cuda.max_memory_allocated(device) - base) if cuda else math.nan
    return [_result(t, problem, settings, peak) for t in timers]


def _settled(rates: Sequence[float], settings: ThroughputSettings) -> bool:
    """The interval of the median reaches the confidence level (6 rounds for 95%) and is at most
    ``rel_width`` of the median wide."""
    lo, hi, coverage = median_ci(rates, settings.confidence)
    med = float(np.median(rates))
    return coverage >= settings.confidence and med > 0 and (hi - lo) / med <= settings.rel_width


def _result(t: _Timer, problem: Problem, settings: ThroughputSettings, peak: float
            ) -> ThroughputResult:
    rates = np.asarray(t.rates)
    med = float(np.median(rates))
    lo, hi, coverage = median_ci(rates, settings.confidence)
    return ThroughputResult(
        batch=t.batch * t.calls, rounds=len(rates), samples_per_s=med, samples_per_s_lo=lo,
        samples_per_s_hi=hi, seconds_per_sample=1.0 / med, seconds_per_sample_lo=1.0 / hi,
        seconds_per_sample_hi=1.0 / lo, ci_level=coverage,
        wide=not _settled(t.rates, settings), peak_memory_bytes=peak,
        evals_per_sample=t.estimator.evals(problem.widths))

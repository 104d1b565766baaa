"""Throughput of an estimator, measured apart from the statistics (SPEC §5 "Cost", STYLE 8).

``warmup`` untimed calls, then ``rounds`` timed calls of :func:`sbn_bench.estimators.estimate` on
``batch`` samples each (one call = ``batch`` single-sample estimates, forward and backward). Each
round gives ``batch / t`` samples/s and ``t / batch`` seconds per sample; we report the median and
the quartiles over rounds (never one number). On CUDA the device is synchronised before starting
and before stopping the clock, and the peak memory is ``torch.cuda.max_memory_allocated`` over the
timed rounds minus the memory allocated before them. On the CPU the peak memory is NaN:
``tracemalloc`` does not see torch's allocator, and the process's ``ru_maxrss`` is a high-water
mark that does not move once reached, so neither would be an honest per-estimator figure.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from sbn_bench.estimators import Estimator, estimate
from sbn_bench.problems import Problem


@dataclass(frozen=True)
class ThroughputResult:
    """Median and quartiles over rounds; fields as in :data:`sbn_bench.schema.THROUGHPUT_COLUMNS`."""

    batch: int
    rounds: int
    samples_per_s: float
    samples_per_s_q25: float
    samples_per_s_q75: float
    seconds_per_sample: float
    seconds_per_sample_q25: float
    seconds_per_sample_q75: float
    peak_memory_bytes: float
    evals_per_sample: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(estimator: Estimator, problem: Problem, *, batch: int, rounds: int = 5, warmup: int = 1,
            generator: torch.Generator) -> ThroughputResult:
    """Time ``estimate(estimator, problem, batch, generator)``.

    Args:
        problem: on the device and dtype to measure (:meth:`Problem.to`).
        batch: samples per call; rounds: timed calls; warmup: untimed calls first.
        generator: on the problem's device.

    Raises:
        whatever the estimator raises (the runner records it as a failure).
    """
    if batch < 1 or rounds < 1 or warmup < 0:
        raise ValueError(f"throughput: batch={batch}, rounds={rounds} must be ≥ 1 and "
                         f"warmup={warmup} ≥ 0")
    device = problem.x.device
    for _ in range(warmup):
        estimate(estimator, problem, batch, generator)
    cuda = device.type == "cuda"
    if cuda:
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        estimate(estimator, problem, batch, generator)
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = float(torch.cuda.max_memory_allocated(device) - base) if cuda else math.nan
    t = np.asarray(times, dtype=np.float64)
    sps = batch / t
    spp = t / batch
    return ThroughputResult(
        batch=batch, rounds=rounds,
        samples_per_s=float(np.median(sps)),
        samples_per_s_q25=float(np.quantile(sps, 0.25)),
        samples_per_s_q75=float(np.quantile(sps, 0.75)),
        seconds_per_sample=float(np.median(spp)),
        seconds_per_sample_q25=float(np.quantile(spp, 0.25)),
        seconds_per_sample_q75=float(np.quantile(spp, 0.75)),
        peak_memory_bytes=peak,
        evals_per_sample=estimator.evals(problem.widths),
    )

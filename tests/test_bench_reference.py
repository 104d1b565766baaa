"""Benchmarks of the exact reference: the computation only, problems built outside the timed call.

Targets (not asserted: speed is never a unit-test failure): the paper net under 5 ms; the 2-12-12-12-12-1
net (D = 100; naive enumeration of its 2^48 paths is impossible) under 2 s and 2 GiB on 2 CPU cores.

Run for real with ``python -m pytest tests/test_bench_reference.py --benchmark-enable``; the default run
(``--benchmark-disable``) executes each benchmarked call once, as a plain test.
"""

from __future__ import annotations

import math

import pytest
import torch

from sbn_bench.problems import Problem, random_problem
from sbn_bench.reference import exact_gradient


def _check(problem: Problem, result: tuple[float, dict[str, torch.Tensor]]) -> None:
    J, grad = result
    assert math.isfinite(J) and J > 0  # logistic loss is positive
    assert list(grad) == list(problem.params)
    for name, g in grad.items():
        assert g.shape == problem.params[name].shape and g.dtype == torch.float64, name
        assert torch.isfinite(g).all(), name


def test_bench_exact_gradient_paper(benchmark, paper: Problem) -> None:
    benchmark.group = "exact reference"
    benchmark.extra_info["arch"] = paper.arch
    _check(paper, benchmark(exact_gradient, paper))


@pytest.fixture(scope="module")
def deep12() -> Problem:
    return random_problem("2-12-12-12-12-1", 0, data_points=100)


def test_bench_exact_gradient_4x12(benchmark, deep12: Problem) -> None:
    benchmark.group = "exact reference"
    benchmark.extra_info["arch"] = deep12.arch
    # ~1 s a call: a fixed 5 rounds after one warm-up instead of pytest-benchmark's calibration
    # (when disabled, pedantic runs the call once)
    _check(deep12, benchmark.pedantic(exact_gradient, args=(deep12,), rounds=5, iterations=1,
                                      warmup_rounds=1))

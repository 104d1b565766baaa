"""Throughput of every built-in estimator on the paper's problem (SPEC §6: 2-5-5-5-1, D = 200), CPU,
``S = 100`` single-sample estimates per call, against the floor: a plain batched forward and backward
of the same network and batch (replicated parameters ``[S, *shape]``, deterministic forward
``x → F(a) → … → loss``, one backward pass).

Targets (read from the benchmark table, never asserted): every single-pass estimator
(``reinforce``, ``st``, ``st-identity``, ``concrete``, ``st-gumbel``, ``tanh``) within 2× of the
floor, ``psa`` within 4×. Run for real with::

    .venv/bin/python -m pytest tests/test_bench_estimators.py --benchmark-enable \\
        --benchmark-columns=min,median,iqr,rounds --benchmark-sort=name

The default run passes ``--benchmark-disable``: each benchmark then runs once as a plain test, which
checks that it works. The benchmarks run single-threaded (``torch.set_num_threads(1)``, restored
afterwards): the figures then compare across machines, and OpenMP threads busy-waiting on shared cores
cannot distort them (with 2 threads on 2 busy cores the floor was measured 40× slower).
"""

from __future__ import annotations

import pytest
import torch

from sbn_bench import model
from sbn_bench.estimators import estimate, load_registry
from sbn_bench.problems import Problem

S = 100
"""Single-sample estimates per call."""

REGISTRY = load_registry()
BUILTINS = ["exact", "reinforce", "reinforce-loo", "arm", "disarm", "concrete", "st-gumbel", "tanh",
            "st", "st-identity", "psa", "muprop", "nvil", "rebar", "relax", "leg", "arms", "gr-mc",
            "reinmax", "hard-st", "ap2", "local-reparam"]
"""Every built-in that takes the paper's net (``double-cv`` needs one stochastic layer)."""
SINGLE_PASS = {"reinforce", "st", "st-identity", "concrete", "st-gumbel", "tanh"}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def floor_step(problem: Problem, num_samples: int) -> list[torch.Tensor]:
    """The floor: ``S`` replicas, a deterministic forward ``x^k = F(a^k)`` and one backward pass."""
    reps = model.replicate(problem.params, num_samples)
    h = problem.x
    for k in range(1, problem.n_layers + 1):
        h = problem.noise_dist.cdf(model.preactivation(reps, k, h))  # [S, D, n_k]
    loss = problem.loss_values(model.output(reps, h)).mean(-1)  # [S]
    return list(torch.autograd.grad(loss.sum(), list(reps.values())))


@pytest.mark.benchmark(group="estimators-paper-S100")
def test_bench_floor(benchmark, paper: Problem) -> None:
    benchmark.extra_info.update(samples_per_call=S, problem=paper.name, arch=paper.arch,
                                torch_threads=torch.get_num_threads())
    grads = benchmark(floor_step, paper, S)
    assert [tuple(g.shape) for g in grads] == [(S, *p.shape) for p in paper.params.values()]


@pytest.mark.benchmark(group="estimators-paper-S100")
@pytest.mark.parametrize("spec", BUILTINS)
def test_bench_estimator(benchmark, paper: Problem, spec: str) -> None:
    est = REGISTRY.create(spec)
    gen = torch.Generator().manual_seed(0)
    benchmark.extra_info.update(samples_per_call=S, problem=paper.name, arch=paper.arch,
                                torch_threads=torch.get_num_threads(),
                                evals_per_sample=est.evals_per_sample(paper.widths),
                                target=("2x floor" if spec in SINGLE_PASS else
                                        "4x floor" if spec == "psa" else None))
    out = benchmark(estimate, est, paper, S, gen)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (S, *p.shape) for k, p in paper.params.items()}
    assert all(torch.isfinite(v).all() for v in out.values())


def test_floor_gradient_is_the_mean_field_gradient(paper: Problem) -> None:
    """The floor computes a real gradient: that of the deterministic mean-field net, i.e. ``tanh``'s
    estimate (same function, written independently), identical in every replica."""
    grads = floor_step(paper, 3)
    tanh = estimate(REGISTRY.create("tanh"), paper, 3, torch.Generator().manual_seed(0))
    for g, (name, t) in zip(grads, tanh.items()):
        torch.testing.assert_close(g, t, rtol=1e-12, atol=1e-14, msg=name)

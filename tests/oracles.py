"""Exact-enumeration oracles shared by the estimator tests (independent of the runner's code)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from sbn_bench.estimators import Estimator, estimate_on_paths
from sbn_bench.problems import Problem
from sbn_bench.reference.naive import enumerate_paths, path_log_probs


def path_expectation(est: Estimator, problem: Problem) -> dict[str, Tensor]:
    """``E ĝ = (1/D) Σ_d Σ_paths p(path | x⁰_d) ĝ_d(path)``, every joint path enumerated.

    The path surrogate averages over data points, so each data point gets its own one-point problem
    whose ``P`` "samples" are the ``P`` joint paths.
    """
    paths = enumerate_paths(problem.widths)  # per layer [P, n_k]
    logp = path_log_probs(problem, problem.params, paths)  # [P, D]
    total: dict[str, Tensor] = {}
    for d in range(problem.num_data):
        one = dataclasses.replace(problem, x=problem.x[d:d + 1], y=problem.y[d:d + 1])
        g = estimate_on_paths(est, one, [p.unsqueeze(1) for p in paths])  # [P, *shape]
        w = torch.exp(logp[:, d])
        assert abs(float(w.sum()) - 1) < 1e-12, f"path probabilities sum to {float(w.sum())}"
        for k, v in g.items():
            total[k] = total.get(k, 0) + torch.tensordot(w, v, dims=1) / problem.num_data
    return total

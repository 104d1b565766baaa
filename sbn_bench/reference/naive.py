"""Naive enumeration of all ``2^{Σ n_k}`` joint paths: the test oracle for the chain (SPEC §2).

Only for tiny networks: its cost is exponential in the total number of units. It computes every
path's probability the plain way (one product per path and data point), independently of the
chain and of :func:`sbn_bench.reference.paths.path_log_probs`, which the tests check against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbn_bench import model, network
from sbn_bench.errors import ArgumentError
from sbn_bench.model import Params
from sbn_bench.problems import Problem
from sbn_bench.reference.paths import MAX_PATHS, enumerate_paths, num_paths


def path_log_probs(problem: Problem, params: Params, paths: list[Tensor]) -> Tensor:
    """``log p(path | x⁰_d)`` for every path and data point: ``[P, D]``."""
    noise, net = problem.noise_dist, problem.net
    h = network.stochastic_input(net, params, problem.x.to(paths[0].dtype))  # [D, m]
    a1 = network.preactivation(net, params, 1, h)  # [D, n_1]
    s1 = paths[0].unsqueeze(1)  # [P, 1, n_1]
    logp = model.state_log_prob(noise, a1.unsqueeze(0), s1)  # [P, D]
    for k in range(2, len(paths) + 1):
        a = network.preactivation(net, params, k, paths[k - 2])  # [P, n_k]
        logp = logp + model.state_log_prob(noise, a, paths[k - 1]).unsqueeze(1)
    return logp


def objective(problem: Problem, params: Params | None = None, max_paths: int = MAX_PATHS
              ) -> Tensor:
    """``J`` by summing ``p(path) ℓ(path)`` over every joint path (0-d, differentiable)."""
    params = problem.params if params is None else params
    n_paths = num_paths(problem.widths)
    if n_paths > max_paths:
        raise ArgumentError(f"naive enumeration refused: {n_paths} joint paths > max_paths="
                            f"{max_paths}", argument="max_paths", value=max_paths,
                            expected=f"at least the {n_paths} joint paths")
    paths = enumerate_paths(problem.widths, params["weight_1"].dtype, params["weight_1"].device)
    logp = path_log_probs(problem, params, paths)  # [P, D]
    eta = network.output(problem.net, params, paths[-1])  # [P, n_out]
    eta = eta.unsqueeze(1).expand(eta.shape[0], problem.num_data, eta.shape[1])
    f = problem.loss_values(eta)  # [P, D]
    if problem.loss == "vae":  # KL = E_q[log q(z|x) − log p(z)], by enumeration too (z = x¹)
        c = params["prior_logits"]
        log_prior = (paths[0] * torch.nn.functional.logsigmoid(c)
                     + (1 - paths[0]) * torch.nn.functional.logsigmoid(-c)).sum(-1)  # [P]
        f = f + logp - log_prior.unsqueeze(1)
    return (torch.exp(logp) * f).sum(0).mean()

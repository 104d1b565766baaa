"""The score-function family: REINFORCE and its leave-one-out baseline (unbiased, path randomness).

References:
    Williams. "Simple statistical gradient-following algorithms for connectionist reinforcement
    learning". Machine Learning 8, 1992. Kool, van Hoof, Welling. "Buy 4 REINFORCE samples, get a
    baseline for free!" ICLR workshop 2019.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sbn_bench import network
from sbn_bench.estimators.base import ALL_LAYERS, Estimator
from sbn_bench.estimators.kernel import (
    check_count,
    forward,
    losses,
    path_pair,
    score,
    stochastic_input,
)
from sbn_bench.model import Params
from sbn_bench.problems import Problem

FAMILY = "score-function"


def _reinforce(problem: Problem, params: Params, states: Sequence[Tensor] | None,
               generator: torch.Generator | None) -> Tensor:
    layers = forward(problem, params, stochastic_input(problem, params), states, generator)
    f = losses(problem, params, layers[-1].x)  # [S, D]
    logp = sum(score(problem, layer) for layer in layers)  # [S, D]
    return (f + f.detach() * logp).mean(-1)


def reinforce() -> Estimator:
    """REINFORCE / score function: ``∇ℓ(x^L) + ℓ(x^L) ∇ Σ_k log p(x^k | x^{k-1})``.

    References:
        Williams. "Simple statistical gradient-following algorithms for connectionist
        reinforcement learning". Machine Learning 8, 1992.
    """
    surrogate, path = path_pair(_reinforce)
    return Estimator("reinforce", surrogate, unbiased=True, randomness="path", path_surrogate=path,
                     family=FAMILY, layers=ALL_LAYERS,
                     description="score function (Williams 1992), unbiased, high variance")


def reinforce_loo(*, k: int = 2) -> Estimator:
    """REINFORCE with ``K`` draws per data point and the leave-one-out baseline.

    ``ĝ = (1/K) Σ_i [∇ℓ_i + (ℓ_i − (1/(K−1)) Σ_{j≠i} ℓ_j) ∇ log p(path_i)]``. Its randomness is
    ``K`` paths per data point, so there is no single-path surrogate (exact mode would need
    ``2^{K Σ n_k}`` paths).

    References:
        Kool, van Hoof, Welling. "Buy 4 REINFORCE samples, get a baseline for free!" ICLR
        workshop 2019.
    """
    check_count("k", k, 2)

    def surrogate(problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
        S, D = params["weight_1"].shape[0], problem.num_data
        x_rep = problem.x.repeat(k, 1)  # [K·D, n0], draw i of point d at row i·D + d
        h0 = network.stochastic_input(problem.net, params, x_rep)  # through the body
        layers = forward(problem, params, h0, None, generator)  # [S, K·D, n_k]
        logp = sum(score(problem, layer) for layer in layers)  # [S, K·D]
        # the K draws as K·D data points (same memory layout and reductions as the draws)
        rows = problem.with_rows(x_rep, problem.y.repeat(k, *[1] * (problem.y.dim() - 1)))
        f = losses(rows, params, layers[-1].x).reshape(S, k, D)  # [S, K, D]
        baseline = (f.sum(1, keepdim=True) - f) / (k - 1)
        logp = logp.reshape(S, k, D)
        return (f + (f - baseline).detach() * logp).mean((1, 2))

    return Estimator("reinforce-loo", surrogate, hyperparams=(("k", k),), unbiased=True,
                     randomness="path", evals_per_sample=lambda w: k, family=FAMILY, layers=ALL_LAYERS,
                     description="REINFORCE, K draws, leave-one-out baseline (Kool et al. 2019)")


ESTIMATORS = {"reinforce": reinforce, "reinforce-loo": reinforce_loo}
"""This family's factories by registry name (the plugin-file format)."""

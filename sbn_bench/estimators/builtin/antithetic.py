"""The antithetic family: ARM and DisARM (unbiased for logistic noise, continuous randomness).

Per layer ``k``, one ``U ~ U(0, 1)`` per unit gives the antithetic pair ``b₁ = [U > F(−a)]``,
``b₂ = [U < F(a)]``; the downstream loss is evaluated from each with fresh samples
(:func:`~sbn_bench.estimators.kernel.downstream_loss`) and the path goes on from ``b₁``.

References:
    Yin, Zhou. "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks". ICLR 2019.
    Dong, Mnih, Tucker. "DisARM: An Antithetic Gradient Estimator for Binary Latent Variables".
    NeurIPS 2020.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbn_bench.estimators.base import Estimator
from sbn_bench.estimators.kernel import (
    downstream_loss,
    mean_loss,
    num_layers,
    preactivation,
    stochastic_layers,
    uniform,
)
from sbn_bench.model import Params
from sbn_bench.problems import Problem

FAMILY = "antithetic"


def antithetic_surrogate(problem: Problem, params: Params, generator: torch.Generator,
                         disarm: bool) -> Tensor:
    """ARM / DisARM surrogate: per layer the antithetic pair from one ``U``, downstream losses
    from fresh samples, and the path continuing from ``b₁``."""
    F = problem.noise_dist.cdf
    h: Tensor = problem.x
    total: Tensor | None = None
    for k in range(1, stochastic_layers(problem) + 1):
        a = preactivation(problem, params, k, h)  # [S, D, n_k]; h carries no gradient
        u = uniform(a.shape, a, generator)
        with torch.no_grad():
            fa = F(a)
            b1 = (u > 1 - fa).to(a.dtype)  # [U > F(−a)]
            b2 = (u < fa).to(a.dtype)  # [U < F(a)]
            pair = downstream_loss(problem, params, k, torch.stack([b1, b2]), generator)
            diff = pair[0] - pair[1]  # [S, D]
            if disarm:
                coef = 0.5 * diff.unsqueeze(-1) * (1 - 2 * b2) * (b1 != b2).to(a.dtype) \
                    * torch.sigmoid(a.abs())
            else:
                coef = diff.unsqueeze(-1) * (u - 0.5)
        term = (coef * a).sum(-1).mean(-1)  # [S]
        total = term if total is None else total + term
        h = b1
    assert total is not None
    return total + mean_loss(problem, params, h)


def arm() -> Estimator:
    """ARM, per layer: ``(ℓ(b₁) − ℓ(b₂)) ∇ Σ_j a_j (U_j − ½)`` with ``b₁ = [U > F(−a)]``,
    ``b₂ = [U < F(a)]``, downstream layers sampled afresh from each, the path going on from ``b₁``.
    Unbiased for logistic noise; ``2L`` loss evaluations per sample.

    References:
        Yin, Zhou. "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks".
        ICLR 2019.
    """
    return Estimator("arm", lambda p, q, g: antithetic_surrogate(p, q, g, disarm=False),
                     unbiased=True, randomness="continuous", family=FAMILY,
                     evals_per_sample=lambda w: 2 * num_layers(w), noises=frozenset({"logistic"}),
                     description="Augment-REINFORCE-Merge, antithetic pair per layer "
                                 "(Yin & Zhou 2019)")


def disarm() -> Estimator:
    """DisARM, per layer: ``½ (ℓ(b₁) − ℓ(b₂)) (−1)^{b₂_j} [b₁_j ≠ b₂_j] σ(|a_j|) ∇a_j`` with ARM's
    pair. Unbiased for logistic noise; ``2L`` loss evaluations per sample.

    References:
        Dong, Mnih, Tucker. "DisARM: An Antithetic Gradient Estimator for Binary Latent
        Variables". NeurIPS 2020.
    """
    return Estimator("disarm", lambda p, q, g: antithetic_surrogate(p, q, g, disarm=True),
                     unbiased=True, randomness="continuous", family=FAMILY,
                     evals_per_sample=lambda w: 2 * num_layers(w), noises=frozenset({"logistic"}),
                     description="ARM's pair with the antithetic DisARM weighting "
                                 "(Dong et al. 2020)")


ESTIMATORS = {"arm": arm, "disarm": disarm}
"""This family's factories by registry name (the plugin-file format)."""

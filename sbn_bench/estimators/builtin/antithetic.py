"""The antithetic family: ARM, DisARM and ARMS (unbiased for logistic noise, continuous
randomness).

Per layer ``k``, one ``U ~ U(0, 1)`` per unit gives the antithetic pair ``b₁ = [U > F(−a)]``,
``b₂ = [U < F(a)]``; the downstream loss is evaluated from each with fresh samples
(:func:`~sbn_bench.estimators.kernel.downstream_loss`) and the path goes on from ``b₁``. ARMS draws
``K`` antithetic states per unit through a copula instead (the Dirichlet copula by default) and
goes on from the first.

References:
    Yin, Zhou. "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks". ICLR 2019.
    Dong, Mnih, Tucker. "DisARM: An Antithetic Gradient Estimator for Binary Latent Variables".
    NeurIPS 2020. Dimitriev, Zhou. "ARMS: Antithetic-REINFORCE-Multi-Sample Gradient for Binary
    Variables". ICML 2021.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sbn_bench import model
from sbn_bench.estimators.base import ALL_LAYERS, Estimator
from sbn_bench.estimators.kernel import (
    check_count,
    downstream_loss,
    mean_loss,
    num_layers,
    preactivation,
    stochastic_input,
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
    h: Tensor = stochastic_input(problem, params)
    total: Tensor | None = None
    for k in range(1, stochastic_layers(problem) + 1):
        a = preactivation(problem, params, k, h)  # [S, D, n_k]; h carries no gradient
        u = uniform(a.shape, a, generator)
        with torch.no_grad():
            fa = F(a)
            states = model.units_major_empty((2, *a.shape), a)
            b1 = torch.gt(u, 1 - fa, out=states[0])  # [U > F(−a)]
            b2 = torch.lt(u, fa, out=states[1])  # [U < F(a)]
            pair = downstream_loss(problem, params, k, states, generator)
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
                     unbiased=True, randomness="continuous", family=FAMILY, layers=ALL_LAYERS,
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
                     unbiased=True, randomness="continuous", family=FAMILY, layers=ALL_LAYERS,
                     evals_per_sample=lambda w: 2 * num_layers(w), noises=frozenset({"logistic"}),
                     description="ARM's pair with the antithetic DisARM weighting "
                                 "(Dong et al. 2020)")


Copula = Callable[[int, Tensor, torch.Generator], Tensor]
"""``copula(K, p, generator) -> u [K, *p.shape]``: ``K`` uniforms per unit, each marginally
``U(0, 1)``, jointly antithetic, oriented for ``p`` (ARMS draws ``b_i = [u_i < p]``)."""


def dirichlet_copula(k: int, p: Tensor, generator: torch.Generator) -> Tensor:
    """ARMS's Dirichlet copula: ``K`` i.i.d. uniforms ``v``, ``e = −log v``, ``d = e / Σ e``
    (uniform on the simplex), ``c = (1 − d)^{K−1}`` (each ``U(0, 1)``, negatively dependent),
    oriented as ``u = c`` where ``p < ½`` and ``u = 1 − c`` elsewhere. For ``K = 2``, ``d₂ = 1 − d₁``
    so ``u₂ = 1 − u₁``: DisARM's antithetic pair. Shape ``[K, *p.shape]``."""
    e = -torch.log(uniform((k, *p.shape), p, generator))
    c = (1 - e / e.sum(0, keepdim=True)) ** (k - 1)
    return torch.where(p < 0.5, c, 1 - c)


def copula_joint(m: Tensor, k: int) -> Tensor:
    """``P(u_i < m, u_j < m)`` for two of the Dirichlet copula's uniforms, ``m ≤ ½``:
    ``max(2 m^{1/(K−1)} − 1, 0)^{K−1}`` (0 for ``K = 2``)."""
    return torch.clamp(2 * m ** (1 / (k - 1)) - 1, min=0) ** (k - 1)


def arms_surrogate(problem: Problem, params: Params, generator: torch.Generator, k: int,
                   copula: Copula = dirichlet_copula) -> Tensor:
    """ARMS surrogate: per layer, ``K`` states ``b_i = [u_i < p]`` from ``copula``, the downstream
    loss ``f_i`` from each with fresh samples, the leave-one-out REINFORCE term debiased for the
    copula's dependence, ``∂/∂a ≈ (1/(K−1)) Σ_i (f_i − f̄)(b_i − p) · p(1 − p)/(p − P(b_i = b_j = 1))``;
    the path goes on from ``b_1``.

    With ``m = min(p, 1 − p)`` the debiasing factor is ``m(1 − m)/(m − joint(m))`` for either
    orientation (``p ≥ ½``: ``P(b_i = b_j = 1) = 2p − 1 + joint(1 − p)``); where ``m − joint(m) = 0``
    (``p`` is 0 or 1) every ``b_i − p`` is 0 and the factor is set to 1.
    """
    F = problem.noise_dist.cdf
    h: Tensor = stochastic_input(problem, params)
    total: Tensor | None = None
    for j in range(1, stochastic_layers(problem) + 1):
        a = preactivation(problem, params, j, h)  # [S, D, n_j]; h carries no gradient
        with torch.no_grad():
            p = F(a)
            u = copula(k, p, generator)  # [K, S, D, n_j]
            b = (u < p).to(a.dtype)
            f = downstream_loss(problem, params, j, b, generator)  # [K, S, D]
            m = F(-a.abs())
            den = m - copula_joint(m, k)
            debias = torch.where(den > 0, m * (1 - m) / torch.where(den > 0, den, 1), 1)
            centred = (f - f.mean(0, keepdim=True)).unsqueeze(-1)  # [K, S, D, 1]
            coef = (centred * (b - p)).sum(0) * debias / (k - 1)  # [S, D, n_j]
        term = (coef * a).sum(-1).mean(-1)  # [S]
        total = term if total is None else total + term
        h = b[0]
    assert total is not None
    return total + mean_loss(problem, params, h)


def arms(*, k: int = 4) -> Estimator:
    """ARMS (Antithetic-REINFORCE-Multi-Sample) per layer: ``K ≥ 2`` antithetic states per unit from
    the Dirichlet copula, the leave-one-out REINFORCE estimator with the copula's debiasing factor;
    downstream layers sampled afresh from each state, the path going on from the first. Unbiased
    for logistic noise; ``K = 2`` is DisARM (:func:`disarm`) on the same uniforms; ``K·L`` loss
    evaluations per sample.

    Follows ``alekdimi/arms``, ``networks.py`` (``get_layer_grad_estimation``, ``grad_type ==
    'arms'``: the copula, ``bivariate`` and ``debias``), applied layer by layer as ARM and DisARM
    are here; the debiasing factor is computed exactly (theirs adds 1e-6 to its denominator).

    References:
        Dimitriev, Zhou. "ARMS: Antithetic-REINFORCE-Multi-Sample Gradient for Binary Variables".
        ICML 2021.
    """
    k = check_count("k", k, 2)
    return Estimator("arms", lambda p, q, g: arms_surrogate(p, q, g, k), hyperparams=(("k", k),),
                     unbiased=True, randomness="continuous", family=FAMILY, layers=ALL_LAYERS,
                     evals_per_sample=lambda w: k * num_layers(w), noises=frozenset({"logistic"}),
                     description="ARMS: K antithetic samples per layer through a Dirichlet copula "
                                 "(Dimitriev & Zhou 2021)")


ESTIMATORS = {"arm": arm, "disarm": disarm, "arms": arms}
"""This family's factories by registry name (the plugin-file format)."""

"""The relaxed family: continuous relaxations of the binary states (biased).

``concrete`` replaces the states by ``σ((a − Z)/τ)`` everywhere downstream; ``st-gumbel`` forwards
the binary sample and backpropagates through that relaxation; ``tanh`` is the deterministic mean
field ``x = F(a)``.

References:
    Maddison, Mnih, Teh. "The Concrete Distribution". ICLR 2017. Jang, Gu, Poole. "Categorical
    Reparameterization with Gumbel-Softmax". ICLR 2017. Shekhovtsov, Yanush, Flach. NeurIPS 2020,
    §5 (the "tanh" baseline).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbn_bench.estimators.base import Estimator
from sbn_bench.estimators.kernel import (
    check_positive,
    mean_loss,
    preactivation,
    stochastic_layers,
    uniform,
)
from sbn_bench.model import Params
from sbn_bench.problems import Problem

FAMILY = "relaxed"


class StraightThroughConcrete(torch.autograd.Function):
    """``[a − z ≥ 0]`` forward, ``∂/∂a σ((a − z)/τ) = σ'(t)/τ`` backward, ``t = (a − z)/τ``: the
    value and gradient of ``hard + (soft − soft.detach())`` in fewer elementwise passes."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: Tensor, z: Tensor, tau: float
                ) -> Tensor:
        d = a - z
        hard = (d >= 0).to(a.dtype)  # before dividing: (a − z)/τ may underflow to −0.0
        s = torch.sigmoid_(d.div_(tau))
        ctx.save_for_backward(s.sub_(s * s).div_(tau))  # σ(t)(1 − σ(t))/τ
        return hard

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor
                 ) -> tuple[Tensor, None, None]:
        (ds,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * ds, None, None


def relaxed_surrogate(problem: Problem, params: Params, generator: torch.Generator,
                      tau: float, straight_through: bool) -> Tensor:
    """Concrete (``straight_through=False``) or straight-through Concrete surrogate at ``tau``."""
    noise = problem.noise_dist
    h: Tensor = problem.x
    for k in range(1, stochastic_layers(problem) + 1):
        a = preactivation(problem, params, k, h)
        z = noise.icdf(uniform(a.shape, a, generator))
        if straight_through:
            h = StraightThroughConcrete.apply(a, z, tau)  # [a − Z ≥ 0], σ((a − Z)/τ) backward
        else:
            h = torch.sigmoid((a - z) / tau)
    return mean_loss(problem, params, h)


def concrete(*, tau: float = 1.0) -> Estimator:
    """Concrete / Gumbel-Softmax relaxation: ``x = σ((a − Z)/τ)`` everywhere downstream, loss on
    the relaxed values. Biased; continuous randomness.

    References:
        Maddison, Mnih, Teh. "The Concrete Distribution". ICLR 2017. Jang, Gu, Poole.
        "Categorical Reparameterization with Gumbel-Softmax". ICLR 2017.
    """
    tau = check_positive("tau", tau, "> 0 and finite (the relaxation temperature)")
    return Estimator("concrete", lambda p, q, g: relaxed_surrogate(p, q, g, tau, False),
                     hyperparams=(("tau", tau),), randomness="continuous", family=FAMILY,
                     description="Concrete relaxation at temperature tau (Maddison/Jang 2017)")


def st_gumbel(*, tau: float = 1.0) -> Estimator:
    """Straight-through Gumbel-Softmax: forward the binary sample ``[a − Z ≥ 0]``, backward
    through ``σ((a − Z)/τ)`` with the same ``Z``. Biased; continuous randomness.

    References:
        Jang, Gu, Poole. "Categorical Reparameterization with Gumbel-Softmax". ICLR 2017.
    """
    tau = check_positive("tau", tau, "> 0 and finite (the relaxation temperature)")
    return Estimator("st-gumbel", lambda p, q, g: relaxed_surrogate(p, q, g, tau, True),
                     hyperparams=(("tau", tau),), randomness="continuous", family=FAMILY,
                     description="straight-through Gumbel-Softmax: binary forward, Concrete "
                                 "backward")


def tanh() -> Estimator:
    """Deterministic mean field: ``x^k = F(a^k)`` through the network, the loss at the means
    (the paper's "tanh"/AP1 baseline). Biased; no randomness.

    References:
        Shekhovtsov, Yanush, Flach. NeurIPS 2020, §5 (baseline "tanh").
    """

    def surrogate(problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
        h: Tensor = problem.x
        for k in range(1, stochastic_layers(problem) + 1):
            h = problem.noise_dist.cdf(preactivation(problem, params, k, h))
        return mean_loss(problem, params, h)

    return Estimator("tanh", surrogate, randomness="none", family=FAMILY,
                     description="deterministic mean field x = F(a) (the paper's tanh/AP1)")


ESTIMATORS = {"concrete": concrete, "st-gumbel": st_gumbel, "tanh": tanh}
"""This family's factories by registry name (the plugin-file format)."""

"""The relaxed family: continuous relaxations of the binary states (biased).

``concrete`` replaces the states by ``σ((a − Z)/τ)`` everywhere downstream; ``st-gumbel`` forwards
the binary sample and backpropagates through that relaxation; ``gr-mc`` averages that backward over
``K`` noise draws conditioned on the sample (Gumbel-Rao); ``tanh`` is the deterministic mean field
``x = F(a)``; ``ap2`` propagates means and variances (pre-activations Gaussian by the CLT) and
``local-reparam`` samples the pre-activations from that Gaussian.

References:
    Maddison, Mnih, Teh. "The Concrete Distribution". ICLR 2017. Jang, Gu, Poole. "Categorical
    Reparameterization with Gumbel-Softmax". ICLR 2017. Paulus, Maddison, Krause. "Rao-Blackwellizing
    the Straight-Through Gumbel-Softmax Gradient Estimator". ICLR 2021. Shekhovtsov, Yanush, Flach.
    NeurIPS 2020, §5 (the "tanh" baseline) and its code (AP2, LocalReparam). Shekhovtsov, Flach.
    "Feed-forward Propagation in Probabilistic Neural Networks with Categorical and Max Layers".
    ICLR 2018 (AP2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sbn_bench.estimators.base import ALL_LAYERS, Estimator, default_bytes_per_sample
from sbn_bench.estimators.kernel import (
    check_count,
    check_positive,
    mean_loss,
    output_moments,
    preactivation,
    preactivation_moments,
    stochastic_input,
    stochastic_layers,
    uniform,
    with_slope,
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


class Concrete(torch.autograd.Function):
    """``σ((a − z)/τ)`` as one autograd node computed in place: the same operations in the same
    order as ``torch.sigmoid((a - z) / tau)`` (forward and backward, so the same bits), without two
    intermediate tensors and their graph nodes."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: Tensor, z: Tensor, tau: float
                ) -> Tensor:
        s = torch.sub(a, z).div_(tau).sigmoid_()
        ctx.save_for_backward(s)
        ctx.tau = tau  # type: ignore[attr-defined]
        return s

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor
                 ) -> tuple[Tensor, None, None]:
        (s,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return torch.ops.aten.sigmoid_backward(grad, s).div_(ctx.tau), None, None  # type: ignore[attr-defined]


def relaxed_surrogate(problem: Problem, params: Params, generator: torch.Generator,
                      tau: float, straight_through: bool) -> Tensor:
    """Concrete (``straight_through=False``) or straight-through Concrete surrogate at ``tau``."""
    noise = problem.noise_dist
    h: Tensor = stochastic_input(problem, params)
    for k in range(1, stochastic_layers(problem) + 1):
        a = preactivation(problem, params, k, h)
        u = uniform(a.shape, a, generator)
        z = u.logit_() if problem.noise == "logistic" else noise.icdf(u)  # in place: same values
        if straight_through:
            h = StraightThroughConcrete.apply(a, z, tau)  # [a − Z ≥ 0], σ((a − Z)/τ) backward
        else:
            h = Concrete.apply(a, z, tau)  # σ((a − Z)/τ)
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
                     hyperparams=(("tau", tau),), randomness="continuous", family=FAMILY, layers=ALL_LAYERS,
                     description="Concrete relaxation at temperature tau (Maddison/Jang 2017)")


def st_gumbel(*, tau: float = 1.0) -> Estimator:
    """Straight-through Gumbel-Softmax: forward the binary sample ``[a − Z ≥ 0]``, backward
    through ``σ((a − Z)/τ)`` with the same ``Z``. Biased; continuous randomness.

    References:
        Jang, Gu, Poole. "Categorical Reparameterization with Gumbel-Softmax". ICLR 2017.
    """
    tau = check_positive("tau", tau, "> 0 and finite (the relaxation temperature)")
    return Estimator("st-gumbel", lambda p, q, g: relaxed_surrogate(p, q, g, tau, True),
                     hyperparams=(("tau", tau),), randomness="continuous", family=FAMILY, layers=ALL_LAYERS,
                     description="straight-through Gumbel-Softmax: binary forward, Concrete "
                                 "backward")


def tanh() -> Estimator:
    """Deterministic mean field: ``x^k = F(a^k)`` through the network, the loss at the means
    (the paper's "tanh"/AP1 baseline). Biased; no randomness.

    References:
        Shekhovtsov, Yanush, Flach. NeurIPS 2020, §5 (baseline "tanh").
    """

    def surrogate(problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
        h: Tensor = stochastic_input(problem, params)
        for k in range(1, stochastic_layers(problem) + 1):
            h = problem.noise_dist.cdf(preactivation(problem, params, k, h))
        return mean_loss(problem, params, h)

    return Estimator("tanh", surrogate, randomness="none", family=FAMILY, layers=ALL_LAYERS,
                     description="deterministic mean field x = F(a) (the paper's tanh/AP1)")


# --------------------------------------------------------------------------------------------
# Gumbel-Rao


def conditional_noise(problem: Problem, a: Tensor, x: Tensor, v: Tensor) -> Tensor:
    """Noise ``Z ~ p(Z | x)`` given the state ``x = [a − Z ≥ 0]``, from uniforms ``v``
    (no gradient): ``Z = F⁻¹(v F(a))`` when ``x = 1`` (``Z ≤ a``), ``Z = −F⁻¹(v F(−a))`` when
    ``x = 0`` (``Z > a``, by the symmetry of ``F``); with ``s = 2x − 1`` both are
    ``s F⁻¹(v F(s a))``. ``v`` has extra leading dimensions (draws) before those of ``a`` and ``x``;
    it is overwritten."""
    noise = problem.noise_dist
    with torch.no_grad():
        sign = 2 * x - 1
        w = v.mul_(noise.cdf(sign * a.detach())).clamp_(min=torch.finfo(a.dtype).tiny)
        return noise.icdf(w).mul_(sign)


def gumbel_rao_surrogate(problem: Problem, params: Params, generator: torch.Generator, k: int,
                         tau: float) -> Tensor:
    """Forward the sample ``x = [a − Z ≥ 0]``; backward ``∂x/∂a := (1/K) Σ_i σ'(t_i)/τ``,
    ``t_i = (a − Z_i)/τ``, with ``Z_1 = Z`` (the noise that drew ``x``) and ``Z_2 … Z_K`` drawn from
    ``p(Z | x)``: the straight-through Concrete backward of ``st-gumbel`` averaged over ``K`` draws
    of the noise conditioned on the sampled state. ``Z`` is drawn exactly as ``st-gumbel`` draws it,
    so ``K = 1`` is ``st-gumbel`` on the same generator."""
    noise = problem.noise_dist
    h: Tensor = stochastic_input(problem, params)
    for j in range(1, stochastic_layers(problem) + 1):
        a = preactivation(problem, params, j, h)  # [S, D, n_j]
        z = noise.icdf(uniform(a.shape, a, generator))
        with torch.no_grad():
            x = (a - z >= 0).to(a.dtype)
            zs = z.unsqueeze(0)  # [K, S, D, n_j]
            if k > 1:
                v = uniform((k - 1, *a.shape), a, generator)
                zs = torch.cat([zs, conditional_noise(problem, a, x, v)])
            s = torch.sigmoid_(zs.neg_().add_(a.detach()).div_(tau))  # σ((a − Z_i)/τ)
            slope = s.sub_(s * s).mean(0).div_(tau)  # (1/K) Σ σ'(t_i)/τ
        h = with_slope(x, a, slope)
    return mean_loss(problem, params, h)


def gr_mc(*, k: int = 10, tau: float = 1.0) -> Estimator:
    """Gumbel-Rao Monte Carlo (GR-MCK): ``st-gumbel`` whose backward ``σ'((a − Z)/τ)/τ`` is averaged
    over ``K`` draws of the noise conditioned on the sampled state (Rao-Blackwellisation). Same
    mean as ``st-gumbel`` at the same ``τ`` (the backward is multilinear in independent per-unit
    factors, each replaced by an unbiased estimate of its conditional expectation), lower variance.
    Biased; continuous randomness; any noise.

    Follows ``rao_gumbel`` of ``LiyuanLucasLiu/ReinMax``, ``mnist_vae/model/basic.py`` (from
    ``chijames/GST``): forward the sample, backward through the relaxation at conditionally
    resampled noise, averaged over the draws; the binary case needs no exponential race, the
    conditional noise is an inverse CDF (:func:`conditional_noise`).

    References:
        Paulus, Maddison, Krause. "Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient
        Estimator". ICLR 2021.
    """
    k = check_count("k", k, 1)
    tau = check_positive("tau", tau, "> 0 and finite (the relaxation temperature)")

    def bytes_per_sample(widths: tuple[int, ...], num_data: int, itemsize: int) -> int:
        units = sum(widths[1:-1])
        return default_bytes_per_sample(widths, num_data, itemsize, 1) \
            + 4 * itemsize * k * num_data * units

    return Estimator("gr-mc", lambda p, q, g: gumbel_rao_surrogate(p, q, g, k, tau),
                     hyperparams=(("k", k), ("tau", tau)), randomness="continuous",
                     family=FAMILY, layers=ALL_LAYERS, bytes_per_sample=bytes_per_sample,
                     description="Gumbel-Rao: st-gumbel backward averaged over K conditional "
                                 "noise draws (Paulus et al. 2021)")


# --------------------------------------------------------------------------------------------
# moment propagation: AP2 and the local reparameterisation

NOISE_VARIANCE = {"logistic": math.pi ** 2 / 3, "gaussian": 1.0}
"""``Var Z`` of each noise: the logistic's ``π²/3`` (the PSA authors' ``V_S``), the Gaussian's 1."""

VARIANCE_FLOOR = 1e-16
"""Added to a variance before its square root (as the PSA authors' ``RandomVar.sample``): finite
gradients where the variance is exactly zero (the first layer's)."""


def moment_probability(problem: Problem, mean: Tensor, var: Tensor) -> Tensor:
    """``P(a − Z ≥ 0)`` for a Gaussian pre-activation ``a ~ N(mean, var)``: ``a − Z`` has variance
    ``var + s²`` (``s² = Var Z``), approximated by a noise of the same kind rescaled to that
    variance: ``F(mean · s / √(var + s²))``. For logistic noise this is the PSA authors'
    ``sign_bernoulli_AP2`` (``σ(μ / √(v + π²/3) · √(π²/3))``, ``Phi_approx``); for Gaussian noise it
    is exact. With ``var = 0`` it is ``F(mean)``, the mean field."""
    s2 = NOISE_VARIANCE[problem.noise]
    return problem.noise_dist.cdf(mean * math.sqrt(s2) / torch.sqrt(var + s2))


def moment_surrogate(problem: Problem, params: Params, generator: torch.Generator | None,
                     sample: bool) -> Tensor:
    """AP2 (``sample=False``) or the local reparameterisation (``sample=True``).

    Layer ``k``: the pre-activation's mean and variance ``(W m + b, (W∘W) v)`` from the input's
    (``x⁰`` with variance 0 for ``k = 1``); AP2 turns them into the firing probability
    :func:`moment_probability`; the local reparameterisation samples ``ã ~ N(mean, var)`` and fires
    with ``F(ã)``. The state's mean and variance are then ``(p, p(1 − p))``. The output: AP2 takes the
    loss at the mean ``V m + c``; the local reparameterisation samples ``η ~ N(V m + c, (V∘V) v)``."""
    m: Tensor = stochastic_input(problem, params)
    v = torch.zeros_like(m)
    for k in range(1, stochastic_layers(problem) + 1):
        mean, var = preactivation_moments(problem, params, k, m, v)  # [S, D, n_k]
        if sample:
            eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
            m = problem.noise_dist.cdf(mean + eps * torch.sqrt(var + VARIANCE_FLOOR))
        else:
            m = moment_probability(problem, mean, var)
        v = m * (1 - m)
    if not sample:
        return mean_loss(problem, params, m)
    mean, var = output_moments(problem, params, m, v)  # [S, D, n_out]
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return problem.loss_values(mean + eps * torch.sqrt(var + VARIANCE_FLOOR)).mean(-1)


def ap2() -> Estimator:
    """AP2: deterministic propagation of means and variances, pre-activations Gaussian by the
    CLT, ``P(x = 1) ≈ F(μ s/√(v + s²))`` (``σ(μ/√((v + π²/3)·3/π²))`` for logistic noise), the
    loss at the mean output. Equals ``tanh`` where the variances vanish (a network with one
    stochastic layer: its pre-activations have variance 0). Biased; no randomness.

    Follows the PSA authors' ``AP2Method`` (``shekhovt/PSA-Neurips2020``, ``models/methods.py``:
    ``linear`` and ``sign_bernoulli_AP2``) in {0,1} states (their ±1 moments ``(2p − 1, 4p(1 − p))``
    with weights ``W/2`` give the same pre-activation moments). Differences: the output layer is
    this problem's ``η = V x^L + c`` with the loss at its mean (theirs also passes the logits
    through the binary AP2 activation and samples them); Gaussian noise uses its exact ``Φ``.

    References:
        Shekhovtsov, Flach. "Feed-forward Propagation in Probabilistic Neural Networks with
        Categorical and Max Layers". ICLR 2018. Shekhovtsov, Yanush, Flach. NeurIPS 2020 (the AP2
        baseline).
    """
    return Estimator("ap2", lambda p, q, g: moment_surrogate(p, q, None, sample=False),
                     randomness="none", family=FAMILY, layers=ALL_LAYERS, noises=frozenset(NOISE_VARIANCE),
                     description="AP2: deterministic propagation of means and variances (CLT), "
                                 "the PSA authors' AP2")


def local_reparam() -> Estimator:
    """The local reparameterisation: as :func:`ap2`, but each pre-activation is sampled from its
    CLT Gaussian, ``ã = μ + √v ε``, fires with ``F(ã)`` (its state's moments ``(F(ã), F(ã)(1 −
    F(ã)))`` go on), and the output ``η`` is sampled from its Gaussian. Biased; continuous
    randomness.

    Follows the PSA authors' ``LocalReparamMethod`` (``shekhovt/PSA-Neurips2020``,
    ``models/methods.py``: ``AP2Method`` with ``sample_preactivations``, ``RandomVar.sample`` with
    ``√(v + 1e-16)``), in {0,1} states; the output logits are sampled without the binary
    activation their ``AP2Method.output`` adds.

    References:
        Kingma, Salimans, Welling. "Variational Dropout and the Local Reparameterization Trick".
        NeurIPS 2015. Shekhovtsov, Yanush, Flach. NeurIPS 2020 (the LocalReparam baseline).
    """
    return Estimator("local-reparam", lambda p, q, g: moment_surrogate(p, q, g, sample=True),
                     randomness="continuous", family=FAMILY, layers=ALL_LAYERS - {"head"},
                     description="AP2 with pre-activations sampled from their CLT Gaussian (local "
                                 "reparameterisation)")


ESTIMATORS = {"concrete": concrete, "st-gumbel": st_gumbel, "tanh": tanh, "gr-mc": gr_mc,
              "ap2": ap2, "local-reparam": local_reparam}
"""This family's factories by registry name (the plugin-file format)."""

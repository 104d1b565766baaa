"""The control-variates family: REINFORCE with control variates (unbiased).

* ``muprop``: a first-order Taylor expansion of the mean-field network as control variate, its
  expectation added analytically (path randomness);
* ``nvil``: per-layer input-dependent baselines learned in an adaptation phase (path randomness);
* ``rebar``: the Concrete relaxation as control variate, made unbiased with noise conditioned on
  the sample (continuous randomness; η tuned in closed form by its adaptation);
* ``relax``: REBAR's control variate plus a learned network ``c_φ`` (continuous randomness);
* ``double-cv``: ``K`` draws of one stochastic layer, the leave-one-out baseline and a Taylor
  control variate.

``rebar`` and ``relax`` are logistic-noise only and work layer by layer: for layer ``k`` the hard
path is kept up to layer ``k − 1``, layer ``k`` and everything after it are relaxed with the path's
own noise, and the control variate's gradient is taken with respect to layer ``k``'s own logits.

References:
    Gu, Levine, Sutskever, Mnih. "MuProp: Unbiased Backpropagation for Stochastic Neural
    Networks". ICLR 2016. Mnih, Gregor. "Neural Variational Inference and Learning in Belief
    Networks". ICML 2014. Tucker, Mnih, Maddison, Lawson, Sohl-Dickstein. "REBAR: Low-variance,
    unbiased gradient estimates for discrete latent variable models". NeurIPS 2017. Grathwohl,
    Choi, Wu, Roeder, Duvenaud. "Backpropagation through the Void: Optimizing control variates for
    black-box gradient estimation". ICLR 2018. Titsias, Shi. "Double Control Variates for Gradient
    Estimation in Discrete Latent Variable Models". AISTATS 2022.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from sbn_bench import model
from sbn_bench.estimators.base import ADAPT_SAMPLES, Estimator, default_bytes_per_sample
from sbn_bench.estimators.kernel import (
    Layer,
    check_count,
    check_finite,
    check_positive,
    forward,
    losses,
    num_layers,
    path_pair,
    preactivation,
    score,
    stochastic_layers,
    uniform,
)
from sbn_bench.model import Params
from sbn_bench.problems import Problem

FAMILY = "control-variates"

TUNED_VERSION = "2"
"""The version of the adaptive estimators (``nvil``, ``rebar``, ``relax``): 2 since a run measures
them tuned (2 December 2026; version 1's cells were measured untuned, so a resume does not mix
them)."""

ADAPT_LR = 0.01
"""Adam's initial learning rate for the learned baselines and control variates; it decays
linearly to 0 over the adaptation budget, so the last iterate does not jitter around the optimum
(the variance is sharply curved in REBAR's scale η)."""


def _fixed(params: Params) -> dict[str, Tensor]:
    """The parameters without gradient (for passes whose gradient is taken elsewhere)."""
    return {name: p.detach() for name, p in params.items()}


# --------------------------------------------------------------------------------------------
# MuProp


def mean_field_loss(problem: Problem, params: Params, k: int, mean: Tensor) -> Tensor:
    """``f_mf``: the loss of the mean-field network from layer ``k`` on, its states replaced by
    ``F(a)``: ``mean [..., S, D, n_k] → [..., S, D]``."""
    h = mean
    for j in range(k + 1, stochastic_layers(problem) + 1):
        h = problem.noise_dist.cdf(preactivation(problem, params, j, h))
    return losses(problem, params, h)


def muprop_surrogate(problem: Problem, params: Params, states: Sequence[Tensor] | None,
                     generator: torch.Generator | None) -> Tensor:
    """MuProp, SPEC §3b: per layer ``k``, with ``μ = F(a^k)`` on the sampled path and
    ``f̄(x) = f_mf(μ) + ∇f_mf(μ)·(x − μ)``, the term ``(ℓ(x) − f̄(x^k)) ∇log p(x^k | x^{k-1}) +
    ∇f_mf(μ)·∇F(a^k)``, only ``a^k`` carrying the gradient of the second (the mean-field network's
    own parameters are held fixed in it); the output layer pathwise.

    Unbiased: ``f̄`` is linear in ``x^k`` with coefficients that do not depend on ``x^k``, so
    ``E[f̄(x^k) ∇log p(x^k)] = ∇f_mf(μ)·∇E[x^k] = ∇f_mf(μ)·∇F(a^k)``, the term added back.
    ``∇f_mf(μ)`` is one backward pass of the mean-field network per layer (rows ``(s, d)`` are
    independent, so the gradient of the sum is each row's gradient).
    """
    layers = forward(problem, params, problem.x, states, generator)
    f = losses(problem, params, layers[-1].x)  # [S, D]
    fixed = _fixed(params)
    total = f
    for k, layer in enumerate(layers, start=1):
        with torch.enable_grad():
            mu = layer.fa.detach().requires_grad_(True)
            f_mf = mean_field_loss(problem, fixed, k, mu)  # [S, D]
            (slope,) = torch.autograd.grad(f_mf.sum(), mu)  # ∇f_mf(μ): [S, D, n_k]
        f_bar = f_mf.detach() + (slope * (layer.x - mu.detach())).sum(-1)
        total = total + (f.detach() - f_bar) * score(problem, layer) + (slope * layer.fa).sum(-1)
    return total.mean(-1)


def muprop() -> Estimator:
    """MuProp: REINFORCE per layer with the first-order Taylor expansion of the mean-field network
    around ``μ = F(a^k)`` as control variate, its mean added back analytically. Unbiased (exactly,
    by path enumeration); path randomness; any noise and loss; ``1 + L`` loss evaluations per
    sample (the path and one mean-field pass per layer).

    Follows ``tensorflow/models``, ``research/rebar/rebar.py`` (``get_muprop_gradient``: the
    Taylor term ``dfDiff`` in the learning signal and ``dfMu`` added back) with SPEC §3b's
    expansion point, the conditional mean ``F(a^k)`` of the sampled path (theirs: the global
    mean-field network's values), and without their learned scale factors and input-dependent
    baseline (scale 1, no baseline).

    References:
        Gu, Levine, Sutskever, Mnih. "MuProp: Unbiased Backpropagation for Stochastic Neural
        Networks". ICLR 2016.
    """
    surrogate, path = path_pair(muprop_surrogate)
    return Estimator("muprop", surrogate, unbiased=True, randomness="path", path_surrogate=path,
                     family=FAMILY, evals_per_sample=lambda w: 1 + num_layers(w),
                     description="MuProp: Taylor expansion of the mean-field net as control "
                                 "variate (Gu et al. 2016)")


# --------------------------------------------------------------------------------------------
# small learned networks (NVIL's baselines, RELAX's control variate)


@dataclass(frozen=True)
class Mlp:
    """``h ↦ tanh(h W₁ᵀ + b₁)·w₂ + b₂``: ``[..., n_in] → [...]``. The tensors are cast to the input's
    dtype and device when used (adaptation keeps them in float64)."""

    w1: Tensor  # [H, n_in]
    b1: Tensor  # [H]
    w2: Tensor  # [H]
    b2: Tensor  # []

    @staticmethod
    def init(n_in: int, hidden: int, generator: torch.Generator, like: Tensor) -> Mlp:
        """Hidden weights ``N(0, 1/n_in)`` from ``generator``, everything else 0 (so the network
        starts at 0: the untuned estimator), leaves requiring grad."""
        w1 = torch.randn((hidden, n_in), generator=generator, dtype=like.dtype, device=like.device)
        zeros = [torch.zeros(s, dtype=like.dtype, device=like.device) for s in [(hidden,), (hidden,), ()]]
        net = Mlp(w1 / math.sqrt(n_in), *zeros)
        for t in net.tensors():
            t.requires_grad_(True)
        return net

    def tensors(self) -> list[Tensor]:
        return [self.w1, self.b1, self.w2, self.b2]

    def frozen(self) -> Mlp:
        return Mlp(*(t.detach().clone() for t in self.tensors()))

    def __call__(self, h: Tensor) -> Tensor:
        w1, b1, w2, b2 = (t.to(h) for t in self.tensors())
        return torch.tanh(h @ w1.T + b1) @ w2 + b2


def features(problem: Problem, k: int, inputs: Tensor | None, shape: Sequence[int]) -> Tensor:
    """What a learned network sees at layer ``k``: the data point's input ``x⁰`` and, for
    ``k > 1``, the layer's input state ``x^{k-1}`` in ±1: ``[*shape, n0 (+ n_{k-1})]`` for
    ``shape = [..., S, D]``."""
    x0 = problem.x.expand(*shape, problem.x.shape[-1])
    if k == 1 or inputs is None:
        return x0
    return torch.cat([x0, (2 * inputs - 1).expand(*shape, inputs.shape[-1])], dim=-1)


class Tuned(NamedTuple):
    """Learned state of an adaptive estimator: the problem's widths it was learned for, a network
    per stochastic layer, and (``relax``) a control-variate scale per layer."""

    widths: tuple[int, ...]
    nets: tuple[Mlp, ...]
    etas: tuple[float, ...] = ()


def _applies(tuned: Tuned | None, problem: Problem) -> bool:
    """Learned networks apply to problems of the widths they were learned for; on others the
    estimator is the untuned one (still unbiased: any baseline or control variate is)."""
    return tuned is not None and tuned.widths == problem.widths


def _optimiser(leaves: list[Tensor], steps: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam at :data:`ADAPT_LR`, decaying linearly to 0 over ``steps`` steps."""
    opt = torch.optim.Adam(leaves, lr=ADAPT_LR)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / max(steps, 1))


def _nets_bytes(widths: tuple[int, ...], num_data: int, itemsize: int, hidden: int, evals: int,
                copies: int, factor: int, base: int | None = None) -> int:
    """A memory bound for an estimator that runs a learned network per stochastic layer, one layer
    at a time: ``base`` (else :func:`default_bytes_per_sample` for ``evals``) plus ``factor``
    tensors of one network's inputs and hidden units for each of ``copies`` evaluations per data
    point."""
    if base is None:
        base = default_bytes_per_sample(widths, num_data, itemsize, evals)
    width = hidden + 2 * max(widths[:-1]) + widths[0]
    return base + factor * itemsize * num_data * copies * width


def _sampling_params(problem: Problem, num_samples: int) -> dict[str, Tensor]:
    """The problem's parameters as ``S`` replicas without gradient (expanded, not copied)."""
    return {k: v.detach().expand(num_samples, *v.shape) for k, v in problem.params.items()}


# --------------------------------------------------------------------------------------------
# NVIL


def nvil_surrogate(problem: Problem, params: Params, states: Sequence[Tensor] | None,
                   generator: torch.Generator | None, tuned: Tuned | None) -> Tensor:
    """NVIL: ``∇ℓ(x^L) + Σ_k (ℓ(x^L) − b_k) ∇log p(x^k | x^{k-1})`` with the learned baseline
    ``b_k = b_ψ_k(x⁰, x^{k-1})`` (0 untuned: REINFORCE). Unbiased for any baseline, since ``b_k``
    does not depend on ``x^k`` or later states."""
    layers = forward(problem, params, problem.x, states, generator)
    f = losses(problem, params, layers[-1].x)  # [S, D]
    nets = tuned.nets if tuned is not None and _applies(tuned, problem) else None
    total = f
    for k, layer in enumerate(layers, start=1):
        signal = f.detach()
        if nets is not None:
            with torch.no_grad():
                prev = layers[k - 2].x if k > 1 else None
                signal = signal - nets[k - 1](features(problem, k, prev, f.shape))
        total = total + signal * score(problem, layer)
    return total.mean(-1)


def _nvil(hidden: int, tuned: Tuned | None) -> Estimator:
    surrogate, path = path_pair(lambda p, q, s, g: nvil_surrogate(p, q, s, g, tuned))

    def adapt(problem: Problem, generator: torch.Generator, steps: int) -> Estimator:
        p64 = problem.to(dtype=torch.float64)
        L, n0 = p64.n_layers, p64.widths[0]
        nets = [Mlp.init(n0 + (p64.widths[k - 1] if k > 1 else 0), hidden, generator, p64.x)
                for k in range(1, L + 1)]
        opt, schedule = _optimiser([t for net in nets for t in net.tensors()], steps)
        reps = _sampling_params(p64, ADAPT_SAMPLES)
        for _ in range(steps):
            with torch.no_grad():
                layers = forward(p64, reps, p64.x, None, generator)
                f = losses(p64, reps, layers[-1].x)  # [S, D]
            objective = sum(((f - net(features(p64, k, layers[k - 2].x if k > 1 else None, f.shape)))
                             ** 2).mean() for k, net in enumerate(nets, start=1))
            opt.zero_grad()
            objective.backward()
            opt.step()
            schedule.step()
        return _nvil(hidden, Tuned(p64.widths, tuple(net.frozen() for net in nets)))

    return Estimator("nvil", surrogate, hyperparams=(("hidden", hidden),), unbiased=True,
                     randomness="path", path_surrogate=path, family=FAMILY, adapt=adapt,
                     bytes_per_sample=lambda w, d, i: _nets_bytes(w, d, i, hidden, 1, 1, 4),
                     version=TUNED_VERSION,
                     description="REINFORCE per layer with learned input-dependent baselines "
                                 "(Mnih & Gregor 2014)")


def nvil(*, hidden: int = 16) -> Estimator:
    """NVIL: REINFORCE per layer with a learned input-dependent baseline
    ``b_ψ_k(x⁰, x^{k-1})`` (a tanh network with ``hidden`` units), trained by its adaptation phase
    to minimise the squared learning signal ``E(ℓ − b_k)²`` (Adam from :data:`ADAPT_LR`, one step per
    batch of :data:`~sbn_bench.estimators.base.ADAPT_SAMPLES` paths per data point). Untuned, the
    baselines are 0 (REINFORCE). No variance normalisation (it rescales the estimate). Unbiased;
    path randomness; any noise and loss; adaptive.

    Follows ``tensorflow/models``, ``research/rebar/rebar.py`` (``get_nvil_gradient`` and
    ``_create_baseline``: a tanh layer on the centred input, the squared learning signal as the
    baseline's loss), with one baseline per layer fed the layer's input state as well.

    References:
        Mnih, Gregor. "Neural Variational Inference and Learning in Belief Networks". ICML 2014.
    """
    return _nvil(check_count("hidden", hidden, 1), None)


# --------------------------------------------------------------------------------------------
# REBAR and RELAX


def conditional_logistic(a: Tensor, x: Tensor, u: Tensor, z: Tensor) -> Tensor:
    """The noise ``Z̃`` of the conditional reparameterisation, ``[S, D, n]``: value ``z = logit(u)``
    (the noise that drew ``x = [u < σ(a)]``), gradient that of ``logit(v(a))`` with the conditional
    uniform ``ṽ`` held fixed, ``v = ṽ σ(a)`` when ``x = 1`` and ``v = 1 − (1 − ṽ) σ(−a)`` when
    ``x = 0``: so ``a − Z̃ ~ p(z | x)`` and its derivative in ``a`` is the conditional one.

    With ``s = 2x − 1``, ``w = ṽ`` (``x = 1``) or ``1 − ṽ`` (``x = 0``) both cases are
    ``logit(v) = s G(w, s a)``, ``G(w, b) = log w + log σ(b) − log1p(−w σ(b))``: one expression,
    finite for saturated units. This is the tied randomness of ``tensorflow/models``
    ``research/rebar/rebar.py`` (``_u_to_v``, the value forced equal to ``u``)."""
    eps = torch.finfo(a.dtype).eps
    with torch.no_grad():
        sign = 2 * x - 1
        q = torch.sigmoid(sign * a)  # probability of the sampled state
        # w = ṽ for x = 1 (u = ṽ σ(a)); w = 1 − ṽ = (1 − u)/σ(−a) for x = 0
        w = torch.where(x > 0, u, 1 - u).div_(q.clamp(min=torch.finfo(a.dtype).tiny))
        w = w.clamp_(eps, 1 - eps)
    b = sign * a
    zt = sign * (torch.log(w) + torch.nn.functional.logsigmoid(b) - torch.log1p(-w * torch.sigmoid(b)))
    return zt + (z - zt).detach()


def relaxed_loss(problem: Problem, params: Params, k: int, r: Tensor, noise: Sequence[Tensor],
                 tau: float) -> Tensor:
    """The loss of the relaxed network from layer ``k`` on: ``r`` relaxed states of layer ``k``
    (``[..., S, D, n_k]``), every later layer ``σ((a^j − Z^j)/τ)`` with the path's own noise
    ``Z^j = noise[j-1]``: ``[..., S, D]``."""
    h = r
    for j in range(k + 1, stochastic_layers(problem) + 1):
        h = torch.sigmoid((preactivation(problem, params, j, h) - noise[j - 1]) / tau)
    return losses(problem, params, h)


class LayerTerms(NamedTuple):
    """Layer ``k``'s pieces of the REBAR/RELAX estimate of ``∂/∂a^k`` (all ``[S, D, n_k]`` but the
    values, ``[S, D]``): ``g = (f − η r_value − c_value)·score + η r_slope + c_slope``."""

    a: Tensor  # the layer's pre-activation, with gradient to its parameters
    score: Tensor  # x − σ(a): ∂ log p(x | a)/∂a
    r_value: Tensor  # ℓ of the relaxed network at z̃
    r_slope: Tensor  # ∂/∂a [ℓ_relaxed(z) − ℓ_relaxed(z̃)]
    c_value: Tensor | None  # c_φ at z̃ (RELAX)
    c_slope: Tensor | None  # ∂/∂a [c_φ(z) − c_φ(z̃)]


def rebar_terms(problem: Problem, params: Params, generator: torch.Generator, tau: float,
                nets: Sequence[Mlp] | None = None, create_graph: bool = False
                ) -> tuple[Tensor, list[LayerTerms]]:
    """The hard path and every layer's REBAR/RELAX pieces (:class:`LayerTerms`).

    Layer ``k``: ``a^k`` from the hard states, ``U`` uniform, ``x^k = [U < σ(a^k)]``, ``Z = logit U``
    (so ``z = a − Z`` is the logistic variable with ``x = [z ≥ 0]``), ``z̃ = a − Z̃`` with the same
    value (:func:`conditional_logistic`). For each layer the relaxed network is evaluated from
    ``σ(z/τ)`` and ``σ(z̃/τ)`` (one batched pass) with the later layers' own noise and the
    parameters held fixed, and differentiated with respect to a detached copy of ``a^k`` only.

    Args:
        nets: RELAX's ``c_φ`` per layer (fed :func:`features` and ``z``), or None.
        create_graph: keep ``c_value`` and ``c_slope`` differentiable in the networks (adaptation).

    Returns:
        ``(f, terms)``: the hard path's loss ``[S, D]`` (the output layer's parameters with
        gradient) and one :class:`LayerTerms` per layer.
    """
    fixed = _fixed(params)
    h: Tensor = problem.x
    hard = []
    for k in range(1, stochastic_layers(problem) + 1):
        a = preactivation(problem, params, k, h)  # [S, D, n_k]
        u = uniform(a.shape, a, generator)
        with torch.no_grad():
            x = (u < torch.sigmoid(a)).to(a.dtype)
        hard.append((a, u, x, torch.logit(u), h if k > 1 else None))
        h = x
    f = losses(problem, params, h)  # [S, D]
    noise = [z for _, _, _, z, _ in hard]
    terms = []
    for k, (a, u, x, z, inputs) in enumerate(hard, start=1):
        with torch.enable_grad():
            a_k = a.detach().requires_grad_(True)
            pair = torch.stack([a_k - z, a_k - conditional_logistic(a_k, x, u, z)])  # [2, S, D, n_k]
            r = relaxed_loss(problem, fixed, k, torch.sigmoid(pair / tau), noise, tau)  # [2, S, D]
            (r_slope,) = torch.autograd.grad((r[0] - r[1]).sum(), a_k, retain_graph=nets is not None)
            c_value = c_slope = None
            if nets is not None:
                feats = features(problem, k, inputs, r.shape)
                c = nets[k - 1](torch.cat([feats, pair], dim=-1))  # [2, S, D]
                (c_slope,) = torch.autograd.grad((c[0] - c[1]).sum(), a_k, create_graph=create_graph)
                c_value = c[1] if create_graph else c[1].detach()
        score_k = x - torch.sigmoid(a.detach())
        terms.append(LayerTerms(a, score_k, r[1].detach(), r_slope, c_value, c_slope))
    return f, terms


def layer_estimate(f: Tensor, t: LayerTerms, eta: float | Tensor) -> Tensor:
    """``∂/∂a^k ≈ (f − η ℓ_relaxed(z̃) − c_φ(z̃))·(x − σ(a)) + η ∂[ℓ_relaxed(z) − ℓ_relaxed(z̃)] +
    ∂[c_φ(z) − c_φ(z̃)]``: ``[S, D, n_k]``."""
    signal = f.detach() - eta * t.r_value
    slope = eta * t.r_slope
    if t.c_value is not None and t.c_slope is not None:
        signal = signal - t.c_value
        slope = slope + t.c_slope
    return signal.unsqueeze(-1) * t.score + slope


def rebar_surrogate(problem: Problem, params: Params, generator: torch.Generator, tau: float,
                    etas: Sequence[float] | float, tuned: Tuned | None = None) -> Tensor:
    """REBAR (``tuned`` None or not applicable: ``c_φ = 0``) or RELAX: the hard path's loss
    (the output layer pathwise) plus ``Σ_k ĝ_k · a^k``, ``ĝ_k`` = :func:`layer_estimate`."""
    L = stochastic_layers(problem)
    nets = None
    if tuned is not None and _applies(tuned, problem):
        nets, etas = tuned.nets, tuned.etas
    etas = [etas] * L if isinstance(etas, float) else list(etas)
    f, terms = rebar_terms(problem, params, generator, tau, nets)
    total = f
    for t, eta in zip(terms, etas):
        total = total + (layer_estimate(f, t, eta).detach() * t.a).sum(-1)
    return total.mean(-1)


def _rebar_bytes(widths: tuple[int, ...], num_data: int, itemsize: int) -> int:
    """The default bound for ``1 + 2L`` evaluations plus every layer's two relaxed passes through
    the later layers (kept for their backward)."""
    L = len(widths) - 2
    relaxed = sum(2 * sum(widths[k:]) for k in range(1, L + 1))
    return default_bytes_per_sample(widths, num_data, itemsize, 1 + 2 * L) \
        + 12 * itemsize * num_data * relaxed


def _flat_gradient(surrogate: Tensor, params: dict[str, Tensor], retain: bool) -> Tensor:
    """``[S, P]``: every sample's gradient of ``surrogate [S]``, flattened."""
    grads = torch.autograd.grad(surrogate.sum(), list(params.values()), retain_graph=retain,
                                allow_unused=True)
    return torch.cat([(torch.zeros_like(v) if g is None else g).flatten(1)
                      for v, g in zip(params.values(), grads)], dim=1)


def rebar(*, eta: float = 1.0, tau: float = 0.5) -> Estimator:
    """REBAR, layer by layer: for layer ``k``,
    ``[ℓ(b) − η ℓ(σ_τ(z̃))] ∇log p(b^k) + η ∇ℓ(σ_τ(z)) − η ∇ℓ(σ_τ(z̃))``, the relaxed terms
    differentiated through layer ``k``'s logits only (``z`` the logistic variable of the sample,
    ``z̃ ~ p(z | b)`` tied to the same uniform, later layers relaxed with their own noise); the
    output layer pathwise. Unbiased for any ``η`` and ``τ``; continuous randomness; logistic noise;
    ``1 + 2L`` loss evaluations per sample. ``τ`` is the relaxation's temperature (λ in Tucker et
    al. and SPEC §3b; ``tau`` as everywhere in this package).

    Its adaptation tunes ``η`` for the lowest total variance: the estimate is ``A + η B`` with
    ``B`` of mean zero, so ``η* = −Cov(A, B)/Var(B)`` (traces), computed from
    ``steps × ADAPT_SAMPLES`` pilot estimates; the tuned estimator is ``rebar(eta=η*, tau=tau)``.

    Follows ``tensorflow/models``, ``research/rebar/rebar.py`` (``_u_to_v``: the tied conditional
    noise; ``_create_gumbel_control_variate_quadratic``: the switch to the relaxation at each
    layer; temperature 0.5, η initialised at 1), with each layer's control variate differentiated
    through that layer's logits only, as ``duvenaud/relax``, ``binary_vae_multilayer_per_layer.py``
    does (``tf.gradients(f_z, cur_la_b)``), so that each term has mean zero; η is one scalar (theirs:
    one per parameter tensor), no input-dependent baseline, and the relaxation is ``σ(z/τ)``
    (without their ``muprop_relaxation`` shift).

    References:
        Tucker, Mnih, Maddison, Lawson, Sohl-Dickstein. "REBAR: Low-variance, unbiased gradient
        estimates for discrete latent variable models". NeurIPS 2017.
    """
    eta = check_finite("eta", eta, "a finite number (the control variate's scale)")
    tau = check_positive("tau", tau, "> 0 and finite (the relaxation temperature)")

    def adapt(problem: Problem, generator: torch.Generator, steps: int) -> Estimator:
        p64 = problem.to(dtype=torch.float64)
        cov = var = 0.0
        sums: list[Tensor] = []
        count = 0
        for _ in range(steps):
            reps = model.replicate(p64.params, ADAPT_SAMPLES)
            f, terms = rebar_terms(p64, reps, generator, tau)
            part_a = f + sum((layer_estimate(f, t, 0.0) * t.a).sum(-1) for t in terms)
            part_b = sum(((layer_estimate(f, t, 1.0) - layer_estimate(f, t, 0.0)) * t.a).sum(-1)
                         for t in terms)
            A = _flat_gradient(part_a.mean(-1), reps, retain=True)
            B = _flat_gradient(part_b.mean(-1), reps, retain=False)
            stats = [A.sum(0), B.sum(0)]
            sums = stats if not sums else [s + t for s, t in zip(sums, stats)]
            cov += float((A * B).sum())
            var += float((B * B).sum())
            count += A.shape[0]
        if count < 2:
            return rebar(eta=eta, tau=tau)
        cov -= float((sums[0] * sums[1]).sum()) / count
        var -= float((sums[1] * sums[1]).sum()) / count
        if not var > 0:
            return rebar(eta=eta, tau=tau)
        return rebar(eta=-cov / var, tau=tau)

    return Estimator("rebar", lambda p, q, g: rebar_surrogate(p, q, g, tau, eta),
                     hyperparams=(("eta", eta), ("tau", tau)), unbiased=True,
                     randomness="continuous", family=FAMILY, noises=frozenset({"logistic"}),
                     evals_per_sample=lambda w: 1 + 2 * num_layers(w), bytes_per_sample=_rebar_bytes,
                     adapt=adapt,
                     version=TUNED_VERSION,
                     description="REBAR: Concrete control variate with conditional noise, per layer "
                                 "(Tucker et al. 2017)")


def _relax(eta: float, tau: float, hidden: int, tuned: Tuned | None) -> Estimator:
    def adapt(problem: Problem, generator: torch.Generator, steps: int) -> Estimator:
        p64 = problem.to(dtype=torch.float64)
        L, ws = p64.n_layers, p64.widths
        nets = [Mlp.init(ws[0] + (ws[k - 1] if k > 1 else 0) + ws[k], hidden, generator, p64.x)
                for k in range(1, L + 1)]
        etas = torch.full((L,), eta, dtype=torch.float64, device=p64.x.device, requires_grad=True)
        leaves = [t for net in nets for t in net.tensors()]
        opt, schedule = _optimiser([*leaves, etas], steps)
        hidden_params = [f"{w}_{k}" for k in range(1, L + 1) for w in ("weight", "bias")]
        for _ in range(steps):
            reps = model.replicate(p64.params, ADAPT_SAMPLES)
            f, terms = rebar_terms(p64, reps, generator, tau, nets, create_graph=True)
            surr = sum((layer_estimate(f, t, etas[k]) * t.a).sum(-1).mean(-1)
                       for k, t in enumerate(terms))
            grads = torch.autograd.grad(surr.sum(), [reps[n] for n in hidden_params],
                                        create_graph=True)
            objective = sum((g * g).sum() for g in grads) / ADAPT_SAMPLES  # E‖ĝ‖², hidden layers
            opt.zero_grad()
            objective.backward(inputs=[*leaves, etas])
            opt.step()
            schedule.step()
        state = Tuned(ws, tuple(net.frozen() for net in nets), tuple(etas.detach().tolist()))
        return _relax(eta, tau, hidden, state)

    return Estimator("relax", lambda p, q, g: rebar_surrogate(p, q, g, tau, eta, tuned),
                     hyperparams=(("eta", eta), ("tau", tau), ("hidden", hidden)), unbiased=True,
                     randomness="continuous", family=FAMILY, noises=frozenset({"logistic"}),
                     evals_per_sample=lambda w: 1 + 2 * num_layers(w),
                     bytes_per_sample=lambda w, d, i: _nets_bytes(w, d, i, hidden, 1 + 2 * num_layers(w),
                                                                  2, 4, _rebar_bytes(w, d, i)),
                     adapt=adapt,
                     version=TUNED_VERSION,
                     description="RELAX: REBAR's control variate plus a learned network c_phi "
                                 "(Grathwohl et al. 2018)")


def relax(*, eta: float = 1.0, tau: float = 0.5, hidden: int = 16) -> Estimator:
    """RELAX, layer by layer: REBAR (:func:`rebar`) with the control variate
    ``c = η ℓ(σ_τ(·)) + c_φ(·)``, ``c_φ_k`` a tanh network with ``hidden`` units fed the data point's
    input, layer ``k``'s input state and ``z``. Its adaptation trains ``φ`` and a per-layer ``η``
    (starting at ``eta``) to minimise the estimate's second moment over the hidden layers'
    parameters, ``E‖ĝ‖²`` (the mean does not depend on them), by differentiating through the
    estimator (Adam from :data:`ADAPT_LR`). Untuned, ``c_φ = 0``: ``rebar(eta, tau)``. Unbiased;
    continuous randomness; logistic noise; adaptive.

    Follows ``duvenaud/relax``, ``binary_vae_multilayer_per_layer.py`` (``relaxation == "add"``:
    ``f_z + Q(x, z, b_<l)`` per layer, the variance objective ``Σ_l mean(rebar_l²)`` over η, τ and
    ``Q``) and ``relax-autograd/relax.py``; here the objective is taken in parameter space, τ is
    fixed, ``c_φ`` has one tanh layer (theirs two ReLU layers of 200) and sees the layer's input
    state only (theirs every earlier layer's).

    References:
        Grathwohl, Choi, Wu, Roeder, Duvenaud. "Backpropagation through the Void: Optimizing control
        variates for black-box gradient estimation". ICLR 2018.
    """
    eta = check_finite("eta", eta, "a finite number (the control variate's scale)")
    tau = check_positive("tau", tau, "> 0 and finite (the relaxation temperature)")
    return _relax(eta, tau, check_count("hidden", hidden, 1), None)


# --------------------------------------------------------------------------------------------
# double control variates


def double_cv_given(problem: Problem, params: Params, states: Tensor, alpha: float) -> Tensor:
    """The double-CV surrogate for ``K`` given states of the one stochastic layer,
    ``states [K, S, D, n]`` in {0,1}: ``[S]``.

    With ``f_i = ℓ(b_i)``, ``∇_i = ∂ℓ/∂b`` at ``b_i`` (the loss differentiated in the state),
    ``ḡ_{−i}`` the mean of the others' ``∇_j``, ``β_i = α ḡ_{−i}·(b_i − p)`` and
    ``d_i = (f_i + β_i) − mean_{j≠i}(f_j + β_j)``, the estimate of ``∂/∂a`` is
    ``(1/K) Σ_i d_i ∇log p(b_i) − α ḡ F'(a)`` (``ḡ`` the mean of all ``∇_i``); the output layer is
    pathwise, averaged over the ``K`` draws.

    Unbiased for any ``α``: ``ḡ_{−i}`` is independent of ``b_i``, so ``E[β_i ∇log p(b_i)] =
    E[ḡ_{−i}] F'(a)`` (the units are independent), while ``β_j`` (``j ≠ i``) has mean zero given
    everything but ``b_j`` and is uncorrelated with ``∇log p(b_i)``; the last term removes the
    former. With ``α = −1`` a loss linear in the state gives every ``d_i = 0``: the estimate is then
    exact.
    """
    k = states.shape[0]
    a = preactivation(problem, params, 1, problem.x)  # [S, D, n]
    fa = problem.noise_dist.cdf(a)
    with torch.enable_grad():
        b = states.detach().clone().requires_grad_(True)
        f = losses(problem, params, b)  # [K, S, D], the output layer's pathwise terms
        (grad_b,) = torch.autograd.grad(f.sum(), b, retain_graph=True)  # [K, S, D, n]
    with torch.no_grad():
        p = fa.detach()
        total_grad = grad_b.sum(0)
        others = (total_grad - grad_b) / (k - 1)  # ḡ_{−i}
        fb = f.detach() + alpha * (others * (states - p)).sum(-1)  # f_i + β_i
        diff = fb - (fb.sum(0) - fb) / (k - 1)  # [K, S, D]
    logp = score(problem, Layer(a, fa, states, states))  # [K, S, D]
    total = f.mean(0) + (diff * logp).mean(0) - alpha * ((total_grad / k) * fa).sum(-1)
    return total.mean(-1)


def double_cv(*, k: int = 4, alpha: float = -1.0) -> Estimator:
    """Double control variates: ``K`` draws of the one stochastic layer per data point, the
    leave-one-out baseline plus a second control variate from the first-order Taylor expansion of
    ℓ in the binary state, scaled by ``alpha`` (:func:`double_cv_given`). Unbiased for any
    ``alpha`` (exactly, by enumeration of the ``K`` draws); its randomness is ``K`` paths per data
    point, so there is no single-path surrogate (as ``reinforce-loo``); any noise and loss; networks
    with one stochastic layer; ``K`` loss evaluations per sample.

    Follows ``thjashin/double-cv``, ``src/networks.py`` (``get_grad_estimation``, ``grad_type ==
    'double_cv'``, written there for K = 2 and 4: ``g_k``, ``b_k = α g_k·(b_k − θ)``, ``diff_k`` and
    ``global_corr``) for any ``K`` and any noise; ``alpha`` is a fixed hyperparameter (the authors
    learn it, starting at 0), by default −1, the full Taylor term.

    References:
        Titsias, Shi. "Double Control Variates for Gradient Estimation in Discrete Latent Variable
        Models". AISTATS 2022.
    """
    k = check_count("k", k, 2)
    alpha = check_finite("alpha", alpha, "a finite number (the Taylor control variate's scale)")

    def surrogate(problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
        a = preactivation(problem, params, 1, problem.x)  # [S, D, n]
        fa = problem.noise_dist.cdf(a.detach())
        states = model.bernoulli(fa.expand(k, *fa.shape), generator)  # [K, S, D, n]
        return double_cv_given(problem, params, states, alpha)

    return Estimator("double-cv", surrogate, hyperparams=(("k", k), ("alpha", alpha)),
                     unbiased=True, randomness="path", single_layer=True, family=FAMILY,
                     evals_per_sample=lambda w: k,
                     description="RLOO plus a Taylor control variate in the binary state, one "
                                 "stochastic layer (Titsias & Shi 2022)")


ESTIMATORS = {"muprop": muprop, "nvil": nvil, "rebar": rebar, "relax": relax,
              "double-cv": double_cv}
"""This family's factories by registry name (the plugin-file format)."""

"""The path kernel: the pieces every estimator is built from, public so that a plugin does not
re-implement them.

* :func:`preactivation`, :func:`preactivation_moments`, :func:`output`, :func:`losses`: the
  network's pieces, for any network the problem describes;
* :func:`forward`: one pass through the stochastic layers along a sampled (or given) path, each
  layer's pre-activation with gradient, its firing probability and state, and what the next layer
  sees (the bare state, or the state plus a straight-through gradient);
* :func:`path_pair`: the sampling surrogate and the path surrogate of one function of the path, so
  that the runner can take exact expectations over every path;
* :func:`score`: a term whose gradient is ``∇ log p(x^k | x^{k-1})``;
* :func:`mean_loss`, :func:`downstream_loss`: the loss of a path, and of states propagated from a
  layer with fresh samples;
* :func:`uniform`: ``U(0, 1)`` noise kept away from 0 and 1; :func:`check_positive`,
  :func:`check_finite` and :func:`check_count` for hyperparameters.

Shapes: replicas ``[S, *shape]`` of every parameter, states ``[S, D, n_k]`` in {0,1}; extra leading
dimensions (flipped copies, antithetic pairs) go *before* ``S`` so that replicated parameters
broadcast. Every draw goes through :func:`sbn_bench.model.bernoulli`, layer by layer, so a
surrogate, its path surrogate and :func:`sbn_bench.model.sample_states` agree on one seed's states.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from sbn_bench import model, network
from sbn_bench.errors import ArgumentError
from sbn_bench.estimators.base import PathSurrogateFn, SurrogateFn
from sbn_bench.model import Params
from sbn_bench.problems import Problem


def num_layers(widths: Sequence[int]) -> int:
    """``L`` for ``widths = (n0, n_1, …, n_L, n_out)``."""
    return len(widths) - 2


def stochastic_layers(problem: Problem) -> int:
    """``L``, the number of stochastic layers of the problem's network."""
    return problem.n_layers


def stochastic_input(problem: Problem, params: Params) -> Tensor:
    """What stochastic layer 1 sees: the body applied to the data (``[S, D, m]`` with replicas),
    or the data ``x [D, n0]`` itself when the network has no body (:mod:`sbn_bench.network`). Every
    estimator starts its path here."""
    return network.stochastic_input(problem.net, params, problem.x)


def preactivation(problem: Problem, params: Params, k: int, h: Tensor) -> Tensor:
    """``a^k`` of stochastic layer ``k`` (1-based) from its input ``h`` (:func:`stochastic_input`
    for ``k = 1``, the states ``x^{k-1}`` otherwise): ``[..., S, D, n_{k-1}] → [..., S, D, n_k]``,
    with replicas ``[S, *shape]`` of the parameters. Every stochastic layer's units are a flat
    last dimension, whatever the layer's kind (dense or conv2d)."""
    return network.preactivation(problem.net, params, k, h)


def preactivation_moments(problem: Problem, params: Params, k: int, mean: Tensor, var: Tensor
                          ) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``a^k`` when the inputs of layer ``k`` are independent with the given
    means and variances (``[..., S, D, n_{k-1}]``): ``(W m + b, (W∘W) v)`` (deterministic
    propagation of means and variances, e.g. the PSA authors' AP2); for a conv2d layer the same
    with the convolution."""
    layer = problem.net.stochastic[k - 1]
    w, b = params[layer.weight], params[layer.bias]
    if layer.kind == "conv2d":
        return (network.conv2d(layer, w, b, mean),
                network.conv2d(layer, w * w, torch.zeros_like(b), var))
    return model.linear(w, b, mean), model.linear(w * w, torch.zeros_like(b), var)


def output_moments(problem: Problem, params: Params, mean: Tensor, var: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """Mean and variance of the output ``η`` when the last stochastic layer's units are independent
    with the given means and variances (``[..., S, D, n_L] → [..., S, D, n_out]`` each):
    ``(V m + c, (V∘V) v)``, as :func:`preactivation_moments` for the output layer. Needs a
    one-layer linear head (estimators that call it do not declare ``"head"`` support)."""
    if not problem.net.linear_head:
        raise ArgumentError(f"output moments need a one-layer linear head; problem {problem.name!r} "
                            f"has arch {problem.arch}", argument="problem", value=problem.arch,
                            expected="a linear head")
    v, c = params["weight_out"], params["bias_out"]
    return model.linear(v, c, mean), model.linear(v * v, torch.zeros_like(c), var)


def output(problem: Problem, params: Params, x_last: Tensor) -> Tensor:
    """The network's output ``η`` from the last stochastic layer's states (or relaxations), through
    the head: ``[..., S, D, n_L] → [..., S, D, n_out]``."""
    return network.output(problem.net, params, x_last)


def losses(problem: Problem, params: Params, x_last: Tensor) -> Tensor:
    """``ℓ(η(x^L), y)`` per data point: ``x_last [..., S, D, n_L] → [..., S, D]``.

    For the binary VAE with ``kl = "sampled"`` the loss also holds ``log q(z|x) − log p(z)`` at
    ``z = x_last`` (differentiable in the encoder and the prior's logits), so the estimator
    estimates the whole negative ELBO; with the default ``"analytic"`` the KL is added exactly by
    :func:`sbn_bench.estimators.estimate` instead."""
    f = problem.loss_values(output(problem, params, x_last))
    if problem.loss == "vae" and problem.kl == "sampled":
        noise = problem.noise_dist
        a = preactivation(problem, params, 1, stochastic_input(problem, params))
        c = params["prior_logits"]
        c = c.unsqueeze(-2) if c.dim() >= 2 else c
        logsig = torch.nn.functional.logsigmoid
        f = f + model.bernoulli_log_prob(x_last, noise.log_cdf(a), noise.log_cdf(-a)) \
            - model.bernoulli_log_prob(x_last, logsig(c), logsig(-c))
    return f


def mean_loss(problem: Problem, params: Params, x_last: Tensor) -> Tensor:
    """``ℓ(η(x^L), y)`` averaged over data points: ``x_last [..., S, D, n_L] → [..., S]``."""
    return losses(problem, params, x_last).mean(-1)


def uniform(shape: torch.Size | Sequence[int], like: Tensor, generator: torch.Generator) -> Tensor:
    """``U(0, 1)`` of ``like``'s dtype and device (:func:`sbn_bench.model.uniform`: drawn in one
    canonical order), kept away from 0 and 1 so that ``F⁻¹(U)`` is finite."""
    u = model.uniform(shape, like.dtype, like.device, generator)
    tiny = torch.finfo(like.dtype).eps
    return u.clamp_(tiny, 1 - tiny)


def check_positive(name: str, value: float, what: str) -> float:
    """``value`` as a float when it is finite and > 0, else an :class:`ArgumentError` naming the
    hyperparameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not (value > 0 and math.isfinite(value)):
        raise ArgumentError(f"hyperparameter {name}={value!r} must be {what}", argument=name,
                            value=value, expected=what)
    return float(value)


def check_finite(name: str, value: float, what: str) -> float:
    """``value`` as a float when it is a finite real number (e.g. a control-variate scale, which
    may be 0 or negative), else an :class:`ArgumentError` naming the hyperparameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArgumentError(f"hyperparameter {name}={value!r} must be {what}", argument=name,
                            value=value, expected=what)
    return float(value)


def check_count(name: str, value: int, minimum: int) -> int:
    """``value`` when it is an integer ``≥ minimum`` (a number of draws), else an
    :class:`ArgumentError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArgumentError(f"hyperparameter {name}={value!r} must be an integer ≥ {minimum}",
                            argument=name, value=value, expected=f"an integer ≥ {minimum}")
    return value


class _PassThrough(torch.autograd.Function):
    """Value ``x``, gradient flowing to ``proxy`` unchanged (``x + proxy − detach(proxy)`` in one
    pass, without its two elementwise operations)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, proxy: Tensor, x: Tensor
                ) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class _WithSlope(torch.autograd.Function):
    """Value ``x``, ``∂/∂a := slope`` (``x + slope · (a − detach(a))`` in one pass)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: Tensor, x: Tensor, slope: Tensor
                ) -> Tensor:
        ctx.save_for_backward(slope)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor
                 ) -> tuple[Tensor, None, None]:
        (slope,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * slope, None, None


def pass_through(x: Tensor, proxy: Tensor) -> Tensor:
    """``x`` in value, the gradient of ``proxy`` (same shape) in the backward pass: the
    straight-through ``x + (proxy − detach(proxy))`` without its two elementwise passes."""
    return _PassThrough.apply(proxy, x)


def with_slope(x: Tensor, a: Tensor, slope: Tensor) -> Tensor:
    """``x`` in value, ``∂/∂a := slope`` (detached, same shape) in the backward pass:
    ``x + slope · (a − detach(a))`` without its elementwise passes in the forward."""
    return _WithSlope.apply(a, x, slope.detach())


class Layer(NamedTuple):
    """One stochastic layer along a path: ``a`` the pre-activation (with gradient), ``fa = F(a)``,
    ``x`` the state in {0,1} (no gradient) and ``h`` what the next layer sees (``x``, or ``x`` plus a
    straight-through gradient). All ``[S, D, n_k]`` (or ``[S, K·D, n_k]``)."""

    a: Tensor
    fa: Tensor
    x: Tensor
    h: Tensor


Through = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(a, F(a), x) -> h``: the input the next layer sees."""


def states_only(a: Tensor, fa: Tensor, x: Tensor) -> Tensor:
    """The default :data:`Through`: the next layer sees the bare state."""
    return x


def forward(problem: Problem, params: Params, x0: Tensor, states: Sequence[Tensor] | None,
            generator: torch.Generator | None, through: Through = states_only) -> list[Layer]:
    """One pass through the stochastic layers for a path estimator.

    Layer ``k``: ``a^k = W^k h^{k-1} + b^k`` (with gradient) and ``F(a^k)``; the state ``x^k`` is
    ``states[k-1]`` when states are given, else :func:`sbn_bench.model.bernoulli` of ``F(a^k)``
    from ``generator``, layer by layer.

    Args:
        x0: ``[D, n0]`` (or ``[K·D, n0]``) real input.
        states: per layer ``[S, D, n_k]`` given states, or None to sample.
        through: ``h^k = through(a^k, F(a^k), x^k)``; the default passes the bare states.
    """
    F = problem.noise_dist.cdf
    h: Tensor = x0
    layers = []
    for k in range(1, stochastic_layers(problem) + 1):
        a = preactivation(problem, params, k, h)  # [S, D, n_k]
        fa = F(a)
        x = model.bernoulli(fa, generator) if states is None else states[k - 1]
        h = through(a, fa, x)
        layers.append(Layer(a, fa, x, h))
    return layers


PathFn = Callable[[Problem, Params, "Sequence[Tensor] | None", "torch.Generator | None"], Tensor]
"""``fn(problem, params, states | None, generator | None) -> [S]``: a path estimator's surrogate,
sampling the states when they are None."""


def path_pair(fn: PathFn) -> tuple[SurrogateFn, PathSurrogateFn]:
    """The sampling surrogate and the path surrogate of ``fn(problem, params, states, generator)``."""

    def surrogate(problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
        return fn(problem, params, None, generator)

    def path_surrogate(problem: Problem, params: Params, states: Sequence[Tensor]) -> Tensor:
        return fn(problem, params, states, None)

    return surrogate, path_surrogate


def score(problem: Problem, layer: Layer) -> Tensor:
    """A term whose gradient is ``∇ log p(x^k | x^{k-1})`` (``a`` is its only path to θ): ``[S, D]``.

    For logistic noise ``∂/∂a log F(±a) = x − F(a)``, so ``(x − F(a)) a`` with the factor detached
    (no log-sigmoid pass); other noises differentiate ``log F`` itself."""
    if problem.noise == "logistic":
        return ((layer.x - layer.fa).detach() * layer.a).sum(-1)
    return model.state_log_prob(problem.noise_dist, layer.a, layer.x)


def downstream_loss(problem: Problem, params: Params, k: int, start: Tensor,
                    generator: torch.Generator) -> Tensor:
    """Loss after propagating ``start`` (states of layer ``k``, ``[..., S, D, n_k]``) through
    layers ``k+1..L`` with fresh samples: ``[..., S, D]`` (no gradient)."""
    with torch.no_grad():
        h = start
        for j in range(k + 1, stochastic_layers(problem) + 1):
            a = preactivation(problem, params, j, h)
            # the firing probabilities in place for logistic noise (the same values, no new tensor)
            probs = a.sigmoid_() if problem.noise == "logistic" else problem.noise_dist.cdf(a)
            h = model.bernoulli(probs, generator)
        return losses(problem, params, h)

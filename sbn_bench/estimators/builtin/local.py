"""The local-expectation family: LEG, an exact sum over each unit's two states along one sampled
path (unbiased, continuous randomness).

References:
    Titsias, Lázaro-Gredilla. "Local Expectation Gradients for Black Box Variational Inference".
    NeurIPS 2015.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sbn_bench.estimators.base import ALL_LAYERS, Estimator, default_bytes_per_sample
from sbn_bench.estimators.kernel import losses, preactivation, stochastic_input, stochastic_layers
from sbn_bench.model import Params
from sbn_bench.problems import Problem

FAMILY = "local-expectation"


def leg_surrogate(problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
    """LEG: one path drawn as :func:`sbn_bench.model.sample_states` draws it (``x = [U < F(a)]``,
    one uniform per unit, kept); then, for every unit ``j`` of every layer ``k``, the path with
    ``x^k_j`` flipped is continued through layers ``k+1..L`` with the *same* uniforms, giving
    ``Δ_kj = ℓ(x^k_j = 1) − ℓ(x^k_j = 0)``. The estimate for layer ``k`` is
    ``Σ_j Δ_kj ∇F(a^k_j)``; the output layer is pathwise at the sample.

    Unbiased: the other units of layer ``k`` and the downstream uniforms are independent of
    ``x^k_j``, so ``E[Δ_kj | x^{k-1}] = E[ℓ | x^k_j = 1] − E[ℓ | x^k_j = 0]`` and
    ``∂E ℓ/∂a^k_j = F'(a^k_j)`` times that. The unflipped state continued with the same uniforms is
    the path itself, so the cost is ``1 + Σ_k n_k`` loss evaluations.
    """
    F = problem.noise_dist.cdf
    fixed = {name: p.detach() for name, p in params.items()}
    h: Tensor = stochastic_input(problem, params)
    probs, states, uniforms = [], [], []
    for k in range(1, stochastic_layers(problem) + 1):
        fa = F(preactivation(problem, params, k, h))  # [S, D, n_k], with gradient to layer k
        with torch.no_grad():
            u = torch.rand(fa.shape, generator=generator, dtype=fa.dtype, device=fa.device)
            h = (u < fa).to(fa.dtype)
        probs.append(fa)
        states.append(h)
        uniforms.append(u)
    f = losses(problem, params, h)  # [S, D]: the output layer's pathwise term
    total = f
    L = len(states)
    for k in range(1, L + 1):
        with torch.no_grad():
            x = states[k - 1]
            n = x.shape[-1]
            flip = torch.eye(n, dtype=x.dtype, device=x.device).view(n, *([1] * (x.dim() - 1)), n)
            g = x + (1 - 2 * x) * flip  # [n_k, S, D, n_k]: unit j flipped in copy j
            for j in range(k + 1, L + 1):
                g = (uniforms[j - 1] < F(preactivation(problem, fixed, j, g))).to(x.dtype)
            diff = (losses(problem, fixed, g) - f.detach()).movedim(0, -1)  # [S, D, n_k]
            delta = (1 - 2 * x) * diff  # ℓ(x_j = 1) − ℓ(x_j = 0)
        total = total + (delta * probs[k - 1]).sum(-1)
    return total.mean(-1)


def _leg_bytes(widths: tuple[int, ...], num_data: int, itemsize: int) -> int:
    """The default bound plus the flipped copies: ``n_k`` copies of every later layer's states,
    pre-activations and probabilities, and of the output."""
    L = len(widths) - 2
    copies = sum(widths[k] * (sum(widths[k:L + 1]) + widths[-1]) for k in range(1, L + 1))
    evals = 1 + sum(widths[1:-1])
    return default_bytes_per_sample(widths, num_data, itemsize, evals) \
        + 6 * itemsize * num_data * copies


def leg() -> Estimator:
    """Local expectation gradients: per unit ``j`` of layer ``k``, ``∇F(a^k_j) · (ℓ(x^k_j = 1) −
    ℓ(x^k_j = 0))``, both alternatives continued downstream with the path's own noise; the output
    layer pathwise. Unbiased; continuous randomness (the downstream noise is needed, not only the
    states); any noise and loss; ``1 + Σ_k n_k`` loss evaluations per sample.

    References:
        Titsias, Lázaro-Gredilla. "Local Expectation Gradients for Black Box Variational
        Inference". NeurIPS 2015.
    """
    return Estimator("leg", leg_surrogate, unbiased=True, randomness="continuous", family=FAMILY,
                     layers=ALL_LAYERS,
                     evals_per_sample=lambda w: 1 + sum(w[1:-1]), bytes_per_sample=_leg_bytes,
                     description="local expectation gradients: each unit's two states, common "
                                 "downstream noise (Titsias & Lazaro-Gredilla 2015)")


ESTIMATORS = {"leg": leg}
"""This family's factories by registry name (the plugin-file format)."""

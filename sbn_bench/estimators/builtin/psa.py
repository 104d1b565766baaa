"""The PSA family: Path Sample-Analytic, SPEC §4 (biased, except in the last stochastic layer and
the output layer; path randomness).

References:
    Shekhovtsov, Yanush, Flach. "Path Sample-Analytic Gradient Estimators for Stochastic Binary
    Networks". NeurIPS 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from sbn_bench import model
from sbn_bench.estimators.base import ALL_LAYERS, Estimator
from sbn_bench.estimators.kernel import forward, losses, path_pair, stochastic_input
from sbn_bench.model import Params
from sbn_bench.problems import Problem

FAMILY = "psa"


def psa_surrogate(problem: Problem, params: Params, states: Sequence[Tensor] | None,
         generator: torch.Generator | None) -> Tensor:
    """SPEC §4, in ±1 states ``s = 2x − 1``; with ``w = W/2``, flipping input ``i`` moves ``a_j`` by
    ``−2 w_ji s_i = −W_ji s_i``.

    ``Δ`` carries no gradient: it only ever multiplies ``q^{k-1}``, whose value is exactly zero. So
    ``q^L = Σ_k Δ^L ⋯ Δ^{k+1} d^k`` is linear in the ``d^k`` and the term ``Σ_i q^L_i (f(s_{↓i}) − f(s))``
    has the gradient of ``Σ_k λ^k · d^k`` with the adjoints ``λ^L = f(s_{↓·}) − f(s)`` and
    ``λ^{k-1} = Δ^{kᵀ} λ^k``, computed without gradient: one small batched mat-vec per layer instead of
    autograd's forward and backward through the ``q`` chain. Both terms are zero in value.
    """
    layers = forward(problem, params, stochastic_input(problem, params), states, generator)
    with torch.no_grad():
        neg_s = [layer.x.mul(-2).add_(1) for layer in layers]  # −s^k = 1 − 2x^k, [S, D, n_k]
    a, fa, x, _ = layers[-1]
    n = x.shape[-1]
    with torch.no_grad():  # probability of the sampled state of each last-layer unit
        p = torch.where(x > 0, fa, 1 - fa)
    net = problem.net
    if net.linear_head and not (problem.loss == "vae" and problem.kl == "sampled"):
        eta = model.output(params, x)  # [S, D, n_out]
        f = problem.loss_values(eta)  # [S, D]
        # η(x with unit i flipped) = η + V[:, i] (1 − 2 x_i): [S, D, n, n_out]
        V = params["weight_out"]  # [S, n_out, n]
        eta_flip = eta.unsqueeze(-2) + neg_s[-1].unsqueeze(-1) * V.transpose(-1, -2).unsqueeze(-3)
        f_flip = problem.loss_values(eta_flip.movedim(-2, 0)).movedim(0, -1)  # [S, D, n]
    else:  # a deeper head (or a loss that sees the states): evaluate it on every flipped state
        f = losses(problem, params, x)  # [S, D]
        f_flip = _flipped_losses(problem, params, x, neg_s[-1])  # [S, D, n]
    diff = f_flip - f.unsqueeze(-1)
    est = f + ((1 - p) / n * diff).sum(-1)  # [S, D]
    lam = diff.detach()  # λ^L: [S, D, n_L]
    for k in range(len(layers), 0, -1):
        fa = layers[k - 1].fa
        mu = neg_s[k - 1] * lam  # μ_j = −s_j λ^k_j (no gradient)
        term = (mu * fa).sum(-1)  # λ^k · d^k with d^k_j = −s_j F(a_j): [S, D]
        est = est + (term - term.detach())
        if k > 1 and net.stochastic[k - 1].kind == "conv2d":
            with torch.no_grad():
                lam = _conv_adjoint(problem, params, k, layers[k - 1].a.detach(), mu,
                                    neg_s[k - 2].neg())
        elif k > 1:
            with torch.no_grad():
                # λ^{k-1}_i = Σ_j Δ_ji λ^k_j, Δ_ji = −s_j (F(ã_ji) − F(a_j)), ã_ji = a_j − W_ji s_i:
                # λ^{k-1}_i = Σ_j μ_j F(ã_ji) − Σ_j μ_j F(a_j) (the second sum is the term's value).
                # Layout [n_k, n_{k-1}, S, D], units outermost as the layers' tensors are in memory
                # (sbn_bench.model.linear), computed in place: one large tensor.
                s_prev = _units_first(neg_s[k - 2]).neg()  # s^{k-1}: [n_{k-1}, S, D]
                W = params[f"weight_{k}"].detach().permute(1, 2, 0).unsqueeze(-1)  # [n_k, n_{k-1}, S, 1]
                a_flip = torch.addcmul(_units_first(layers[k - 1].a.detach()).unsqueeze(1), W, s_prev,
                                       value=-1)  # ã: [n_k, n_{k-1}, S, D]
                lam_t = _cdf_(problem, a_flip).mul_(_units_first(mu).unsqueeze(1)).sum(0)
                lam = lam_t.sub_(term.detach()).permute(1, 2, 0)  # [S, D, n_{k-1}]
    return est.mean(-1)


FLIP_BLOCK = 16
"""Most flipped states of the last stochastic layer whose deep-head activations PSA holds at once:
a wider layer's flips are evaluated in blocks of this many, each block's head recomputed in the
backward pass (activation checkpointing, one extra forward of the head), so that a sample's
memory does not grow with the layer's width (``digits-vae-nonlinear``, 200 latents and a
200-200-64 decoder, would need 4.3 GiB per sample otherwise)."""


def _flipped_losses(problem: Problem, params: Params, x: Tensor, neg_s: Tensor) -> Tensor:
    """``ℓ`` with unit ``i`` of the last stochastic layer flipped, for every ``i``: ``x, neg_s
    [S, D, n]`` (``neg_s = 1 − 2x``) → ``[S, D, n]``, in blocks of :data:`FLIP_BLOCK` flips."""
    n = x.shape[-1]
    eye = torch.eye(n, dtype=x.dtype, device=x.device).view(n, *([1] * (x.dim() - 1)), n)

    def block(lo: int, hi: int) -> Tensor:  # [hi − lo, S, D]
        x_flip = x + neg_s * eye[lo:hi]  # unit lo + c flipped in copy c
        return losses(problem, params, x_flip)

    if n <= FLIP_BLOCK:
        return block(0, n).movedim(0, -1)
    parts = [checkpoint(block, lo, min(lo + FLIP_BLOCK, n), use_reentrant=False,
                        preserve_rng_state=False)  # the head draws nothing
             for lo in range(0, n, FLIP_BLOCK)]
    return torch.cat(parts).movedim(0, -1)


def _conv_adjoint(problem: Problem, params: Params, k: int, a: Tensor, mu: Tensor,
                  s_prev: Tensor) -> Tensor:
    """``λ^{k-1}_i = Σ_{j ∋ i} μ_j (F(a_j − W_ji s_i) − F(a_j))`` for a conv2d layer ``k`` (SPEC §7):
    ``j`` runs over the output units whose receptive field holds input ``i``, ``W_ji`` is the
    kernel weight joining them. With ``unfold`` every output position sees its receptive field as a
    column; zero padding gives ``s = 0`` there, so a padded input contributes exactly 0; ``fold``
    sums the columns back onto the inputs. ``a, mu [S, D, n_k]``, ``s_prev [S, D, n_{k-1}]`` (±1);
    returns ``[S, D, n_{k-1}]``. Memory: ``S·D·C_out·C_in·k²·positions``."""
    layer = problem.net.stochastic[k - 1]
    S, D = a.shape[0], a.shape[1]
    c_out, (c_in, h, w), (_, oh, ow) = layer.out_shape[0], layer.in_shape, layer.out_shape
    kk = layer.kernel
    s_img = s_prev.reshape(S * D, c_in, h, w)
    cols = torch.nn.functional.unfold(s_img, kk, padding=layer.padding, stride=layer.stride)
    cols = cols.reshape(S, D, 1, c_in * kk * kk, oh * ow)  # s_i per (input in field, position)
    W = params[layer.weight].detach().reshape(-1, c_out, c_in * kk * kk)  # [S, C_out, C_in·k²]
    W = W.reshape(W.shape[0], 1, c_out, c_in * kk * kk, 1)
    a5 = a.reshape(S, D, c_out, 1, oh * ow)
    a_flip = torch.addcmul(a5, W, cols, value=-1)  # [S, D, C_out, C_in·k², P]
    t = _cdf_(problem, a_flip).sub_(problem.noise_dist.cdf(a5))
    t = t.mul_(mu.reshape(S, D, c_out, 1, oh * ow)).sum(2)  # [S, D, C_in·k², P]
    lam = torch.nn.functional.fold(t.reshape(S * D, c_in * kk * kk, oh * ow), (h, w), kk,
                                   padding=layer.padding, stride=layer.stride)
    return lam.reshape(S, D, c_in * h * w)


def _cdf_(problem: Problem, t: Tensor) -> Tensor:
    """``F(t)``, overwriting ``t`` (no large temporary) for the built-in noises."""
    if problem.noise == "logistic":
        return t.sigmoid_()
    if problem.noise == "gaussian":
        return torch.special.ndtr(t, out=t)
    return problem.noise_dist.cdf(t)


def _units_first(t: Tensor) -> Tensor:
    """``[S, D, n] → [n, S, D]`` (a view, contiguous when ``t`` is units-major in memory)."""
    return t.permute(2, 0, 1)


def psa() -> Estimator:
    """Path Sample-Analytic (PSA), SPEC §4: an analytic expectation over each unit's flip along one
    sampled path, propagated layer by layer by ``q^k = d + Δ q^{k-1}``. Unbiased for the output
    layer, the last stochastic layer and width-1 chains; biased by a few percent in earlier layers.
    Cost: one forward, ``n_{k-1}`` extra CDF evaluations per weight and ``n_L`` extra output
    evaluations.

    References:
        Shekhovtsov, Yanush, Flach. "Path Sample-Analytic Gradient Estimators for Stochastic Binary
        Networks". NeurIPS 2020.
    """
    surrogate, path = path_pair(psa_surrogate)
    return Estimator("psa", surrogate, randomness="path", path_surrogate=path, family=FAMILY,
                     layers=ALL_LAYERS,
                     evals_per_sample=lambda w: 1 + w[-2],
                     evals_held=lambda w: 1 + min(w[-2], FLIP_BLOCK),
                     description="Path Sample-Analytic (Shekhovtsov et al. 2020)")


ESTIMATORS = {"psa": psa}
"""This family's factories by registry name (the plugin-file format)."""

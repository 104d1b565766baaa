"""The straight-through family: forward the sampled states, backpropagate through a surrogate
derivative ``∂x/∂a`` (biased, path randomness).

``st`` uses ``F'(a)``, ``st-identity`` 1, ``hard-st`` the derivative of ``hardtanh`` (the PSA
authors' ``HardST``) and ``reinmax`` the Heun-method combination of ReinMax in its binary form.

References:
    Bengio, Léonard, Courville. "Estimating or Propagating Gradients Through Stochastic Neurons for
    Conditional Computation". arXiv:1308.3432, 2013. Shekhovtsov, Yanush, Flach. NeurIPS 2020, §4
    (ST as the linearisation of PSA). Liu, Zhao, Gao, He, Xiong, Wu. "Bridging Discrete and
    Backpropagation: Straight-Through and Beyond". NeurIPS 2023 (ReinMax).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sbn_bench.estimators.base import ALL_LAYERS, Estimator
from sbn_bench.estimators.kernel import (
    Through,
    forward,
    mean_loss,
    pass_through,
    path_pair,
    stochastic_input,
    with_slope,
)
from sbn_bench.model import Params
from sbn_bench.problems import Problem

FAMILY = "straight-through"


def straight_through(problem: Problem, params: Params, states: Sequence[Tensor] | None,
                     generator: torch.Generator | None, identity: bool) -> Tensor:
    """Forward the states; backward ``∂x/∂a := 1`` (``identity``) or ``F'(a)``. ``proxy −
    detach(proxy)`` is exactly zero in value, so the forward values are the states themselves."""
    def through(a: Tensor, fa: Tensor, x: Tensor) -> Tensor:
        return pass_through(x, a if identity else fa)

    return _through_path(problem, params, states, generator, through)


def _through_path(problem: Problem, params: Params, states: Sequence[Tensor] | None,
                  generator: torch.Generator | None, through: Through) -> Tensor:
    """The loss of one path whose layers pass ``through(a, F(a), x)`` on: ``[S]``."""
    layers = forward(problem, params, stochastic_input(problem, params), states, generator, through)
    return mean_loss(problem, params, layers[-1].h)


def hard_st_through(a: Tensor, fa: Tensor, x: Tensor) -> Tensor:
    """``x`` forward, ``∂x/∂a := ½ [|a| < 1]`` backward: the PSA authors' ``HardST`` (``s = ±1``
    forward, ``∂s/∂a := hardtanh'(a)``) in {0,1} states, ``x = (s + 1)/2``."""
    with torch.no_grad():
        slope = (a.abs() < 1).to(a.dtype).mul_(0.5)
    return with_slope(x, a, slope)


def reinmax_coefficient(fa: Tensor, x: Tensor) -> Tensor:
    """ReinMax's surrogate ``∂x/∂a`` in binary form (logistic noise), ``[S, D, n]``, no gradient.

    The categorical ReinMax backward (``LiyuanLucasLiu/ReinMax``, ``mnist_vae/model/basic.py``,
    ``reinmax`` with τ = 1) is ``2 J(π₁) − ½ J(π₀)`` with ``J(π) = diag(π) − ππᵀ`` the softmax
    Jacobian, ``π₀ = softmax(θ)`` and ``π₁ = (D + π₀)/2`` for the one-hot sample ``D``. A Bernoulli
    unit is the two-class softmax with logits ``(a, 0)``: ``π₀ = σ(a) = F(a)``, the one-hot sample
    is ``(x, 1 − x)``, and ``J(π)`` maps ``∂L/∂D`` to ``∂L/∂a = π(1 − π)(∂L/∂D₁ − ∂L/∂D₀) =
    π(1 − π) ∂L/∂x``. So ``∂x/∂a := 2 π₁(1 − π₁) − ½ π₀(1 − π₀)`` with ``π₁ = (x + F(a))/2``:
    ``π₁`` is differentiated "as a sigmoid of ``a``".

    It is exact in mean: ``x = 1`` (probability ``p``) gives ``π₁(1 − π₁) = (1 + p)(1 − p)/4``,
    ``x = 0`` gives ``p(2 − p)/4``, so ``E_x[2 π₁(1 − π₁)] = (3/2) p(1 − p)`` and
    ``E_x[∂x/∂a] = p(1 − p) = F'(a)``.
    """
    p = fa.detach()
    pi1 = 0.5 * (x + p)
    return 2 * pi1 * (1 - pi1) - 0.5 * p * (1 - p)


def reinmax_through(a: Tensor, fa: Tensor, x: Tensor) -> Tensor:
    """``x`` forward, ``∂x/∂a := reinmax_coefficient(F(a), x)`` backward."""
    return with_slope(x, a, reinmax_coefficient(fa, x))


def st() -> Estimator:
    """The paper's deep straight-through: forward the sample, backward ``∂x/∂a := F'(a)``
    in {0,1} states (``2F'(a)`` in ±1 states). Biased; path randomness.

    References:
        Shekhovtsov, Yanush, Flach. NeurIPS 2020, §4 (ST as the linearisation of PSA).
    """
    surrogate, path = path_pair(lambda p, q, s, g: straight_through(p, q, s, g, identity=False))
    return Estimator("st", surrogate, randomness="path", path_surrogate=path, family=FAMILY,
                     layers=ALL_LAYERS,
                     description="straight-through with dx/da := F'(a) (Shekhovtsov et al. 2020)")


def st_identity() -> Estimator:
    """Straight-through with identity backward ``∂x/∂a := 1``. Biased; path randomness.

    References:
        Bengio, Léonard, Courville. "Estimating or Propagating Gradients Through Stochastic
        Neurons for Conditional Computation". arXiv:1308.3432, 2013.
    """
    surrogate, path = path_pair(lambda p, q, s, g: straight_through(p, q, s, g, identity=True))
    return Estimator("st-identity", surrogate, randomness="path", path_surrogate=path,
                     family=FAMILY, layers=ALL_LAYERS,
                     description="straight-through with dx/da := 1 (Bengio et al. 2013)")


def hard_st() -> Estimator:
    """Straight-through with the derivative of ``hardtanh``: forward the sample (``s = ±1``),
    backward ``∂s/∂a := [|a| < 1]`` (``∂x/∂a := ½ [|a| < 1]`` in {0,1} states). Biased; path
    randomness; any noise (the backward does not use ``F``).

    Follows the PSA authors' ``HardSTMethod`` (``shekhovt/PSA-Neurips2020``,
    ``models/methods.py``): ``out = s + (hardtanh(a) − detach(hardtanh(a)))``.

    References:
        Shekhovtsov, Yanush, Flach. "Path Sample-Analytic Gradient Estimators for Stochastic
        Binary Networks". NeurIPS 2020 (the HardST baseline). Hubara, Courbariaux, Soudry,
        El-Yaniv, Bengio. "Binarized Neural Networks". NeurIPS 2016 (the clipped identity).
    """
    surrogate, path = path_pair(lambda p, q, s, g: _through_path(p, q, s, g, hard_st_through))
    return Estimator("hard-st", surrogate, randomness="path", path_surrogate=path, family=FAMILY,
                     layers=ALL_LAYERS,
                     description="straight-through with dx/da := hardtanh'(a) (the PSA authors' "
                                 "HardST)")


def reinmax() -> Estimator:
    """ReinMax in binary form: forward the sample, backward ``∂x/∂a := 2 π₁(1 − π₁) −
    ½ F'(a)`` with ``π₁ = (x + F(a))/2`` (:func:`reinmax_coefficient` derives it from the
    categorical Heun combination ``2·∂π₁/∂a − ½·∂π₀/∂a``). ``E_x[∂x/∂a] = F'(a)`` exactly;
    biased all the same (the loss is not linear in the states). Path randomness; logistic noise
    (``π₀ = σ(a)`` is the softmax of the two-class logits).

    Follows ``LiyuanLucasLiu/ReinMax``, ``mnist_vae/model/basic.py`` (``reinmax`` and
    ``Reinmax_CORE``), at temperature 1 as SPEC §3b writes it.

    References:
        Liu, Zhao, Gao, He, Xiong, Wu. "Bridging Discrete and Backpropagation: Straight-Through and
        Beyond". NeurIPS 2023.
    """
    surrogate, path = path_pair(lambda p, q, s, g: _through_path(p, q, s, g, reinmax_through))
    return Estimator("reinmax", surrogate, randomness="path", path_surrogate=path, family=FAMILY,
                     layers=ALL_LAYERS,
                     noises=frozenset({"logistic"}),
                     description="ReinMax in binary form: the sample forward, a Heun-method "
                                 "backward (Liu et al. 2023)")


ESTIMATORS = {"st": st, "st-identity": st_identity, "hard-st": hard_st, "reinmax": reinmax}
"""This family's factories by registry name (the plugin-file format)."""

"""The straight-through family: forward the sampled states, backpropagate through a surrogate
derivative ``∂x/∂a`` (biased, path randomness).

References:
    Bengio, Léonard, Courville. "Estimating or Propagating Gradients Through Stochastic Neurons for
    Conditional Computation". arXiv:1308.3432, 2013. Shekhovtsov, Yanush, Flach. NeurIPS 2020, §4
    (ST as the linearisation of PSA).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sbn_bench.estimators.base import Estimator
from sbn_bench.estimators.kernel import forward, mean_loss, path_pair
from sbn_bench.model import Params
from sbn_bench.problems import Problem

FAMILY = "straight-through"


def straight_through(problem: Problem, params: Params, states: Sequence[Tensor] | None,
                     generator: torch.Generator | None, identity: bool) -> Tensor:
    """Forward the states; backward ``∂x/∂a := 1`` (``identity``) or ``F'(a)``. ``proxy −
    detach(proxy)`` is exactly zero in value, so the forward values are the states themselves."""
    def through(a: Tensor, fa: Tensor, x: Tensor) -> Tensor:
        proxy = a if identity else fa
        return x + (proxy - proxy.detach())

    layers = forward(problem, params, problem.x, states, generator, through)
    return mean_loss(problem, params, layers[-1].h)


def st() -> Estimator:
    """The paper's deep straight-through: forward the sample, backward ``∂x/∂a := F'(a)``
    in {0,1} states (``2F'(a)`` in ±1 states). Biased; path randomness.

    References:
        Shekhovtsov, Yanush, Flach. NeurIPS 2020, §4 (ST as the linearisation of PSA).
    """
    surrogate, path = path_pair(lambda p, q, s, g: straight_through(p, q, s, g, identity=False))
    return Estimator("st", surrogate, randomness="path", path_surrogate=path, family=FAMILY,
                     description="straight-through with dx/da := F'(a) (Shekhovtsov et al. 2020)")


def st_identity() -> Estimator:
    """Straight-through with identity backward ``∂x/∂a := 1``. Biased; path randomness.

    References:
        Bengio, Léonard, Courville. "Estimating or Propagating Gradients Through Stochastic
        Neurons for Conditional Computation". arXiv:1308.3432, 2013.
    """
    surrogate, path = path_pair(lambda p, q, s, g: straight_through(p, q, s, g, identity=True))
    return Estimator("st-identity", surrogate, randomness="path", path_surrogate=path,
                     family=FAMILY,
                     description="straight-through with dx/da := 1 (Bengio et al. 2013)")


ESTIMATORS = {"st": st, "st-identity": st_identity}
"""This family's factories by registry name (the plugin-file format)."""

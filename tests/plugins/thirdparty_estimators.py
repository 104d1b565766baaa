"""A third-party estimator plugin, written only against the public API, as an outside user would.

Loaded in the tests with ``load_registry(plugins=["tests/plugins/thirdparty_estimators.py"])`` (the
same path as ``sbn-bench --plugin``). It defines two estimators:

* ``reinforce-cb`` (``baseline``): REINFORCE with a constant baseline ``b``,
  ``ĝ = ∇ℓ(x^L) + (ℓ(x^L) − b) ∇ Σ_k log p(x^k | x^{k-1})``. Unbiased for any constant ``b`` because
  ``E[∇ log p] = 0``; path randomness, so it also provides the path surrogate.
* ``mf-noise`` (``sigma``): mean field plus Gaussian noise, ``x^k = F(a^k) + σ ε``, ``ε ~ N(0, 1)``
  drawn from the generator; biased, continuous randomness. For illustration it declares that it has
  only been validated for the ``logistic`` and ``mse`` losses, so the runner must refuse ``softmax``.

References:
    Williams. "Simple statistical gradient-following algorithms for connectionist reinforcement
    learning". Machine Learning 8, 1992.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sbn_bench import model
from sbn_bench.estimators import Estimator, from_path, kernel
from sbn_bench.problems import Problem


def _reinforce_cb_path(baseline: float):
    def path(problem: Problem, params: model.Params, states: Sequence[Tensor]) -> Tensor:
        noise = problem.noise_dist
        inputs = [kernel.stochastic_input(problem, params), *states[:-1]]
        logp = sum(model.state_log_prob(noise, kernel.preactivation(problem, params, k + 1, h), x)
                   for k, (h, x) in enumerate(zip(inputs, states)))  # [S, D]
        f = kernel.losses(problem, params, states[-1])  # [S, D] (a VAE's sampled KL included)
        return (f + (f.detach() - baseline) * logp).mean(-1)  # [S]

    return path


def reinforce_cb(*, baseline: float = 0.5) -> Estimator:
    """REINFORCE with a constant baseline (Williams 1992). Unbiased; path randomness."""
    baseline = float(baseline)
    path = _reinforce_cb_path(baseline)
    return Estimator("reinforce-cb", from_path(path), hyperparams=(("baseline", baseline),),
                     unbiased=True, randomness="path", path_surrogate=path,
                     description="REINFORCE with a constant baseline (test plugin)")


def mf_noise(*, sigma: float = 0.1) -> Estimator:
    """Mean field plus Gaussian noise: ``x^k = F(a^k) + σ ε``. Biased; continuous randomness."""
    if not sigma >= 0:
        raise ValueError(f"hyperparameter sigma={sigma!r} must be ≥ 0")
    sigma = float(sigma)

    def surrogate(problem: Problem, params: model.Params, generator: torch.Generator) -> Tensor:
        h: Tensor = problem.x
        for k in range(1, model.n_layers(params) + 1):
            a = model.preactivation(params, k, h)  # [S, D, n_k]
            eps = torch.randn(a.shape, generator=generator, dtype=a.dtype, device=a.device)
            h = problem.noise_dist.cdf(a) + sigma * eps
        return problem.loss_values(model.output(params, h)).mean(-1)  # [S]

    return Estimator("mf-noise", surrogate, hyperparams=(("sigma", sigma),), randomness="continuous",
                     losses=frozenset({"logistic", "mse"}),
                     description="mean field plus Gaussian noise (test plugin)")


ESTIMATORS = {"reinforce-cb": reinforce_cb, "mf-noise": mf_noise}

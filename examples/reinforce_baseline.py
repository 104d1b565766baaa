"""An sbn-bench estimator plugin: REINFORCE with a constant baseline.

Use it with::

    sbn-bench list --plugin examples/reinforce_baseline.py
    sbn-bench run --arch 2-5-5-1 --plugin examples/reinforce_baseline.py \
        --estimators reinforce-baseline:baseline=0.7
"""

from collections.abc import Sequence

from torch import Tensor

from sbn_bench import model
from sbn_bench.estimators import Estimator, from_path, kernel
from sbn_bench.problems import Problem


def reinforce_baseline(*, baseline: float = 0.5) -> Estimator:
    """``∇ℓ(x^L) + (ℓ(x^L) − b) ∇ Σ_k log p(x^k | x^{k-1})``: unbiased for any constant ``b``.

    References:
        Williams. Machine Learning 8, 1992.
    """

    def path(problem: Problem, params: dict[str, Tensor], states: Sequence[Tensor]) -> Tensor:
        # params: replicas [S, *shape]; states: per layer [S, D, n_k] in {0,1}. The path kernel
        # (sbn_bench.estimators.kernel) handles every network: a body, conv layers, a head, the VAE.
        inputs = [kernel.stochastic_input(problem, params), *states[:-1]]
        logp = sum(model.state_log_prob(problem.noise_dist,
                                        kernel.preactivation(problem, params, k, h), x)
                   for k, (h, x) in enumerate(zip(inputs, states), start=1))  # [S, D]
        f = kernel.losses(problem, params, states[-1])  # [S, D], with a VAE's sampled KL
        return (f + (f.detach() - baseline) * logp).mean(-1)  # [S]: one surrogate per sample

    return Estimator("reinforce-baseline", from_path(path), hyperparams=(("baseline", baseline),),
                     unbiased=True, randomness="path", path_surrogate=path,
                     description="REINFORCE with a constant baseline (example plugin)")


ESTIMATORS = {"reinforce-baseline": reinforce_baseline}

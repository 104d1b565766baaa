"""The exact family: the reference itself as an estimator (zero bias, zero variance)."""

from __future__ import annotations

import torch
from torch import Tensor

from sbn_bench import network
from sbn_bench.estimators.base import ALL_LAYERS, Estimator, default_bytes_per_sample
from sbn_bench.model import Params
from sbn_bench.problems import Problem
from sbn_bench.reference import exact_gradient

FAMILY = "exact"


def exact() -> Estimator:
    """The exact gradient from :mod:`sbn_bench.reference` (zero bias, zero variance).

    Every one of the ``S`` samples is the exact float64 gradient at the replicas' values (all
    replicas hold the same parameters), cast to the run's dtype.

    References:
        SPEC §2 (the transfer-matrix chain).
    """

    def surrogate(problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
        _, grad = exact_gradient(problem.with_params({k: v[0] for k, v in params.items()}))
        terms = [(params[k] * g.to(params[k].dtype)).flatten(1).sum(1) for k, g in grad.items()]
        total = torch.stack(terms).sum(0)
        if problem.loss == "vae" and problem.kl == "analytic":
            # estimate() adds the analytic KL to every estimator; the exact gradient holds it already
            total = total - network.kl_per_point(problem.net, params, problem.x,
                                                 problem.noise_dist).mean(-1)
        return total

    return Estimator("exact", surrogate, unbiased=True, randomness="none",
                     evals_per_sample=lambda w: 2 ** w[-2], family=FAMILY, layers=ALL_LAYERS,
                     # the reference enumerates in chunks bounded by its own limit
                     # (--max-exact-bytes), once per call whatever S: a sample costs what a
                     # single pass's replicas and gradients take
                     bytes_per_sample=lambda w, d, isz: default_bytes_per_sample(w, d, isz, 1),
                     description="exact gradient by the transfer-matrix chain (the reference)")


ESTIMATORS = {"exact": exact}
"""This family's factories by registry name (the plugin-file format)."""

"""The unbiasedness check of the conformance kit has power, and the ``unbiased = False`` flags are
honest. (That every estimator flagged ``unbiased`` passes it is part of the conformance table,
``tests/test_estimators_conformance.py``: exactly by path enumeration for ``path`` estimators, a
seeded z-test for the others, on nets of depth 1–3 with every loss and both noises.)
"""

from __future__ import annotations

import pytest
import torch

from sbn_bench.estimators import estimate, load_registry
from sbn_bench.estimators import testing as kit

REGISTRY = load_registry()


@pytest.mark.parametrize("net", ["2-2-1/logistic", "2-2-2-2-1/mse"])
def test_the_z_test_detects_a_biased_estimator(net: str) -> None:
    """With the kit's number of samples the z-test rejects ``st``, whose bias on these nets is
    5–30 % of the gradient (its exact mean, by enumeration, differs)."""
    st = REGISTRY.create("st")
    problem = kit.unbiasedness_problem(net)
    exact = kit.exact_of(net)
    mean = kit.path_expectation(st, problem)
    assert max(float((mean[k] - exact[k]).abs().max()) for k in exact) > 1e-3
    samples = estimate(st, problem, kit.NUM_SAMPLES, torch.Generator().manual_seed(2024))
    passed, report = kit.z_test(samples, exact)
    assert not passed and "expected" in report, "the z-test did not detect st's bias"


@pytest.mark.parametrize("net", list(kit.UNBIASEDNESS_NETS))
def test_biased_path_estimators_are_really_biased(net: str) -> None:
    """The path estimators flagged biased have exact means that differ from the gradient in the
    first layer (PSA is exact in the last layer, so a 1-layer net is skipped for it)."""
    problem, exact = kit.unbiasedness_problem(net), kit.exact_of(net)
    for name in [n for n in REGISTRY.names() if REGISTRY.create(n).path_surrogate is not None
                 and not REGISTRY.create(n).unbiased]:
        if (name == "psa" and problem.n_layers == 1) or not REGISTRY.create(name).supports(problem):
            continue
        mean = kit.path_expectation(REGISTRY.create(name), problem)
        rel = float((mean["weight_1"] - exact["weight_1"]).norm() / exact["weight_1"].norm())
        assert rel > 1e-6, f"{name} on {net}: relative bias {rel:.3g} of weight_1"

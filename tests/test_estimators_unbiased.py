"""Every estimator flagged ``unbiased`` in the live registry has mean equal to the exact gradient
(:func:`sbn_bench.reference.exact_gradient`, the transfer-matrix chain of SPEC §2):

* ``path`` estimators with a path surrogate: exactly, by enumerating all ``2^{Σ n_k}`` paths of every
  data point and weighting each path's estimate by its probability (relative error ≤ 1e-10);
* ``none``: one sample is the gradient;
* the others (``arm``, ``disarm``, ``reinforce-loo``): a seeded per-coordinate z-test.

On random nets of depth 1–3, every loss, both noises where supported.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from statistics import NormalDist

import pytest
import torch
from oracles import path_expectation

from sbn_bench.estimators import estimate, load_registry
from sbn_bench.problems import Problem, random_problem
from sbn_bench.reference import exact_gradient

PLUGIN = Path(__file__).parent / "plugins" / "thirdparty_estimators.py"
REGISTRY = load_registry(plugins=[PLUGIN])

ALPHA = 1e-6
"""Failure rate of each statistical test when the estimator is unbiased: two-sided z-test per
coordinate, Bonferroni-corrected over the coordinates of the test (so the chance that a correct
estimator fails a given test is ≤ 1e-6; over the ≈ 20 such tests here, ≤ 2e-5)."""

NUM_SAMPLES = 20_000
"""Samples per statistical test: enough for the CLT (the estimates are bounded) and to detect a
bias of about 5 standard errors, i.e. ``≈ 0.035 sd`` per coordinate."""

EXACT_RTOL = 1e-10

# depth 1, 2, 3, 2; every loss; both noises
NETS = {
    "2-2-1/logistic": dict(arch="2-2-1", seed=11),
    "2-3-2-2/softmax": dict(arch="2-3-2-2", seed=12, loss="softmax"),
    "2-2-2-2-1/mse": dict(arch="2-2-2-2-1", seed=13, loss="mse"),
    "2-3-2-1/gaussian": dict(arch="2-3-2-1", seed=14, noise="gaussian"),
}


@functools.cache
def _problem(net: str) -> Problem:
    kw = dict(NETS[net])
    return random_problem(kw.pop("arch"), kw.pop("seed"), data_points=3, **kw)


@functools.cache
def _exact(net: str) -> dict[str, torch.Tensor]:
    return exact_gradient(_problem(net))[1]


UNBIASED_SPECS = [n for n in REGISTRY.names() if REGISTRY.create(n).unbiased]
UNBIASED_SPECS += ["reinforce-loo:k=4", "reinforce-cb:baseline=-2.0"]
CASES = [(s, net) for s in UNBIASED_SPECS for net in NETS
         if REGISTRY.create(s).supports(_problem(net))]


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


def z_test(samples: dict[str, torch.Tensor], exact: dict[str, torch.Tensor], alpha: float = ALPHA
           ) -> tuple[bool, str]:
    """Per-coordinate two-sided z-test of ``mean(samples) = exact`` with the sample standard
    deviation, Bonferroni over all coordinates. Returns ``(passed, report)``."""
    g = _flat(samples)  # [S, P]
    target = _flat({k: v.unsqueeze(0) for k, v in exact.items()})[0]
    n = g.shape[0]
    mean, se = g.mean(0), g.std(0) / n ** 0.5
    z = NormalDist().inv_cdf(1 - alpha / (2 * g.shape[1]))
    tol = z * se + 1e-12 * target.abs().max()  # a zero-variance coordinate must match to rounding
    bad = (mean - target).abs() > tol
    names = [f"{k}{list(i)}" for k, v in exact.items() for i in itertools.product(*map(range, v.shape))]
    report = "; ".join(f"{names[i]}: expected {target[i]:.6g}, mean {mean[i]:.6g}, tolerance "
                       f"{tol[i]:.3g} (z bound {z:.2f})" for i in torch.nonzero(bad).flatten().tolist())
    return not bad.any().item(), report


def test_the_unbiased_set_is_the_expected_one() -> None:
    """Guards against a flag silently changing the set the tests below run over."""
    assert set(UNBIASED_SPECS) >= {"exact", "reinforce", "reinforce-loo", "arm", "disarm",
                                   "reinforce-cb"}
    assert not ({"psa", "st", "st-identity", "concrete", "st-gumbel", "tanh"} & set(UNBIASED_SPECS))


@pytest.mark.parametrize(("spec", "net"), CASES)
def test_mean_is_the_exact_gradient(spec: str, net: str) -> None:
    est = REGISTRY.create(spec)
    problem, exact = _problem(net), _exact(net)
    if est.path_surrogate is not None:
        mean = path_expectation(est, problem)
        for k, g in exact.items():
            err = float((mean[k] - g).norm())
            assert err <= EXACT_RTOL * float(g.norm()) + 1e-15, (
                f"{spec} on {net}: {k}: E ĝ = {mean[k].tolist()}, exact {g.tolist()}, error {err:.3g} "
                f"> {EXACT_RTOL} × ‖g‖ = {EXACT_RTOL * float(g.norm()):.3g}")
    elif est.randomness == "none":
        one = estimate(est, problem, 2, torch.Generator().manual_seed(0))
        for k, g in exact.items():
            torch.testing.assert_close(one[k], g.expand_as(one[k]), rtol=EXACT_RTOL, atol=1e-15)
    else:
        samples = estimate(est, problem, NUM_SAMPLES, torch.Generator().manual_seed(2024))
        passed, report = z_test(samples, exact)
        assert passed, f"{spec} on {net} is biased: {report}"


@pytest.mark.parametrize("net", ["2-2-1/logistic", "2-2-2-2-1/mse"])
def test_the_z_test_detects_a_biased_estimator(net: str) -> None:
    """The statistical test has power: with the same number of samples it rejects ``st``, whose
    bias on these nets is 5–30 % of the gradient (its exact mean, by enumeration, differs)."""
    st = REGISTRY.create("st")
    problem, exact = _problem(net), _exact(net)
    bias = _flat({k: (v - exact[k]).unsqueeze(0) for k, v in path_expectation(st, problem).items()})
    assert bias.abs().max() > 1e-3
    samples = estimate(st, problem, NUM_SAMPLES, torch.Generator().manual_seed(2024))
    passed, _ = z_test(samples, exact)
    assert not passed, f"the z-test did not detect st's bias {bias.tolist()}"


@pytest.mark.parametrize("net", list(NETS))
def test_biased_path_estimators_are_really_biased(net: str) -> None:
    """The ``unbiased = False`` flags of the path estimators are honest: their exact means differ
    from the gradient in the first layer (PSA is exact in the last layer, so a 1-layer net is
    skipped for it)."""
    problem, exact = _problem(net), _exact(net)
    for name in ("st", "st-identity", "psa"):
        if name == "psa" and problem.n_layers == 1:
            continue
        mean = path_expectation(REGISTRY.create(name), problem)
        rel = float((mean["weight_1"] - exact["weight_1"]).norm() / exact["weight_1"].norm())
        assert rel > 1e-6, f"{name} on {net}: relative bias {rel:.3g} of weight_1"

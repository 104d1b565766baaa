"""Every estimator of the LIVE registry (built-ins from the entry points plus a third-party test
plugin, each with its defaults and with non-default hyperparameters) passes the conformance kit
:mod:`sbn_bench.estimators.testing`, the same table a plugin author runs. Plus: the kit catches
deliberately broken estimators (it can fail), and the built-ins' flags follow SPEC §3's table.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch
from oracles import path_expectation as naive_path_expectation

from sbn_bench import model
from sbn_bench.estimators import (
    FAMILIES,
    Estimator,
    UnsupportedProblem,
    estimate,
    from_path,
    load_registry,
)
from sbn_bench.estimators import testing as kit
from sbn_bench.estimators.builtin import BUILTINS
from sbn_bench.estimators.kernel import check_positive
from sbn_bench.problems import random_problem

PLUGIN = Path(__file__).parent / "plugins" / "thirdparty_estimators.py"
REGISTRY = load_registry(plugins=[PLUGIN])
PLUGIN_NAMES = {"reinforce-cb", "mf-noise"}


def _non_default_specs() -> list[str]:
    """One non-default spelling per estimator of the registry with hyperparameters, every numeric
    one changed at once: positive numbers halved, others moved down by 1.5, integers ≥ 2 plus one
    (so every value stays valid), so the table also covers hyperparameters other than the
    defaults."""
    specs = []
    for name in REGISTRY.names():
        est = REGISTRY.create(name)
        changed = []
        for key, value in est.hyperparams:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            new = value + 1 if isinstance(value, int) else (value * 0.5 if value > 0 else value - 1.5)
            changed.append(f"{key}={new}")
        if changed:
            specs.append(f"{name}:{','.join(changed)}")
    return specs


SPECS = [*REGISTRY.names(), *_non_default_specs()]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The checks run on tiny nets: one torch thread is as fast, and immune to OpenMP threads
    spinning on cores that other processes hold (shared CI machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
ESTIMATORS = [REGISTRY.create(s) for s in SPECS]


def test_live_registry_has_builtins_and_plugin() -> None:
    assert REGISTRY.errors == [], [str(e) for e in REGISTRY.errors]
    assert set(REGISTRY.names()) == set(BUILTINS) | PLUGIN_NAMES
    for name in PLUGIN_NAMES:
        assert REGISTRY.origins[name] == f"plugin file {str(PLUGIN)!r}"
    assert len(SPECS) > len(REGISTRY.names())  # non-default hyperparameters are covered too


@kit.parametrize_with_checks(ESTIMATORS)
def test_conformance(estimator: Estimator, check) -> None:
    check(estimator)


@pytest.mark.parametrize("spec", SPECS)
def test_spec_round_trips(spec: str) -> None:
    est = REGISTRY.create(spec)
    assert est.name == spec.split(":")[0]
    again = REGISTRY.create(est.spec)
    assert (again.spec, again.hyperparams) == (est.spec, est.hyperparams)


def test_builtin_flags_follow_spec_table() -> None:
    """SPEC §3 and §3b's tables: bias and randomness of each built-in; logistic noise only where
    the mathematics needs it; the evaluation counts; one stochastic layer for double-cv; the
    adaptive ones; every built-in names its family."""
    unbiased = {"exact", "reinforce", "reinforce-loo", "arm", "disarm", "muprop", "leg", "rebar",
                "relax", "nvil", "arms", "double-cv"}
    randomness = {"exact": "none", "tanh": "none", "ap2": "none", "arm": "continuous",
                  "disarm": "continuous", "concrete": "continuous", "st-gumbel": "continuous",
                  "leg": "continuous", "rebar": "continuous", "relax": "continuous",
                  "arms": "continuous", "gr-mc": "continuous", "local-reparam": "continuous"}
    logistic_only = {"arm", "disarm", "arms", "rebar", "relax", "reinmax"}
    adaptive = {"rebar", "relax", "nvil"}
    for name in BUILTINS:
        est = REGISTRY.create(name)
        assert est.unbiased == (name in unbiased), name
        assert est.randomness == randomness.get(name, "path"), name
        assert est.family in FAMILIES, (name, est.family)
        assert (est.noises == {"logistic"}) == (name in logistic_only), name
        assert (est.adapt is not None) == (name in adaptive), name
        assert est.single_layer == (name == "double-cv"), name
    for name in ("arm", "disarm"):
        est = REGISTRY.create(name)
        assert est.evals_per_sample((2, 5, 5, 5, 1)) == 6
        assert est.evals_per_sample((2, 3, 1)) == 2
    evals = {"psa": 5, "reinforce-loo:k=4": 4, "arms:k=3": 9, "leg": 15, "muprop": 4, "rebar": 7,
             "relax": 7, "double-cv:k=3": 3, "nvil": 1, "gr-mc": 1, "reinmax": 1}
    for spec, n in evals.items():
        assert REGISTRY.create(spec).evals_per_sample((2, 5, 5, 4, 1)) == n, spec


@pytest.mark.parametrize("name", ["arm", "disarm"])
def test_arm_disarm_refuse_gaussian_noise_with_a_clear_message(name: str) -> None:
    problem = random_problem("2-2-1", 0, data_points=3, noise="gaussian")
    with pytest.raises(UnsupportedProblem, match=rf"estimator '{name}' does not support noise "
                                                 r"'gaussian'.*supports noise logistic") as info:
        estimate(REGISTRY.create(name), problem, 2, torch.Generator().manual_seed(0))
    assert (info.value.argument, info.value.value) == ("noise", "gaussian")


def test_kit_path_expectation_equals_the_naive_oracle() -> None:
    """The kit's exact mean over every path (production path enumeration) equals the test oracle's
    (naive joint-path probabilities), for every path estimator."""
    problem = kit.check_problem("softmax-gaussian")
    for est in ESTIMATORS:
        if est.path_surrogate is None or not est.supports(problem):
            continue
        got, want = kit.path_expectation(est, problem), naive_path_expectation(est, problem)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# the kit can fail: deliberately broken estimators


def _counter_baseline() -> Estimator:
    """REINFORCE whose baseline is a running count of its calls: a stateful closure."""
    calls = itertools.count()

    def path(problem, params, states):
        b = float(next(calls))
        inputs = [problem.x, *states[:-1]]
        logp = sum(model.state_log_prob(problem.noise_dist, model.preactivation(params, k, h), x)
                   for k, (h, x) in enumerate(zip(inputs, states), start=1))
        f = problem.loss_values(model.output(params, states[-1]))
        return (f + (f.detach() - b) * logp).mean(-1)

    return Estimator("stateful", from_path(path), unbiased=True, randomness="path",
                     path_surrogate=path, description="stateful on purpose")


def _shared_noise() -> Estimator:
    """Mean field plus one noise draw shared by every sample: correlated samples."""
    def surrogate(problem, params, generator):
        S = params["weight_1"].shape[0]
        eps = torch.randn((1,), generator=generator, dtype=problem.x.dtype).expand(S)
        h = problem.x
        for k in range(1, model.n_layers(params) + 1):
            h = problem.noise_dist.cdf(model.preactivation(params, k, h))
        return problem.loss_values(model.output(params, h)).mean(-1) * (1 + 0.5 * eps)
    return Estimator("shared-noise", surrogate, randomness="continuous", description="correlated")


def _biased_but_claims_unbiased() -> Estimator:
    base = REGISTRY.create("st")
    return Estimator("st-claims-unbiased", base.surrogate, unbiased=True, randomness="path",
                     path_surrogate=base.path_surrogate, description="st flagged unbiased")


def _mixes_replicas() -> Estimator:
    """A surrogate whose entry s also reads replica s+1 (breaks sample independence)."""
    base = REGISTRY.create("tanh")

    def surrogate(problem, params, generator):
        out = base.surrogate(problem, params, generator)
        return out + 0.1 * out.roll(1, 0)
    return Estimator("mixes-replicas", surrogate, randomness="none", description="mixes replicas")


def _scalar_surrogate() -> Estimator:
    """Returns one scalar instead of ``[S]`` (breaks the contract's shape)."""
    base = REGISTRY.create("tanh")
    return Estimator("bad-shape", lambda p, q, g: base.surrogate(p, q, g).sum(), randomness="none",
                     description="returns a scalar")


def _adapts_with_the_global_generator() -> Estimator:
    """REINFORCE with a constant baseline that its adapt draws from torch's global generator
    instead of the one it is given: not reproducible from a seed."""
    def make(baseline: float) -> Estimator:
        def path(problem, params, states):
            inputs = [problem.x, *states[:-1]]
            logp = sum(model.state_log_prob(problem.noise_dist, model.preactivation(params, k, h), x)
                       for k, (h, x) in enumerate(zip(inputs, states), start=1))
            f = problem.loss_values(model.output(params, states[-1]))
            return (f + (f.detach() - baseline) * logp).mean(-1)

        return Estimator("global-rng", from_path(path), unbiased=True, randomness="path",
                         path_surrogate=path, description="adapts with the global generator",
                         adapt=lambda problem, generator, steps: make(float(torch.rand(()))))
    return make(0.0)


def _adapt_writes_into_the_problem() -> Estimator:
    """reinforce whose adapt adds 1 to the problem's first weights."""
    base = REGISTRY.create("reinforce")

    def adapt(problem, generator, steps):
        problem.params["weight_1"].add_(1.0)
        return base
    return dataclasses.replace(base, adapt=adapt)


def _adapt_renames() -> Estimator:
    base = REGISTRY.create("reinforce")
    return dataclasses.replace(base, name="renamed", adapt=lambda problem, generator, steps: base)


def _adapt_breaks_shapes() -> Estimator:
    """Tuned, it returns one scalar instead of ``[S]``."""
    broken = dataclasses.replace(_scalar_surrogate(), name="bad-tuning")
    return dataclasses.replace(REGISTRY.create("tanh"), name="bad-tuning",
                               adapt=lambda problem, generator, steps: broken)


def _batch_mean_baseline() -> Estimator:
    """REINFORCE whose baseline is the mean loss over the S samples: every gradient check passes
    (the baseline is detached) and exact enumeration sees no bias (all paths in one batch), but
    each sample depends on the others, and with S = 2 it is biased."""
    def path(problem, params, states):
        inputs = [problem.x, *states[:-1]]
        logp = sum(model.state_log_prob(problem.noise_dist, model.preactivation(params, k, h), x)
                   for k, (h, x) in enumerate(zip(inputs, states), start=1))
        f = problem.loss_values(model.output(params, states[-1]))
        return (f + (f.detach() - f.detach().mean(0)) * logp).mean(-1)

    return Estimator("batch-baseline", from_path(path), unbiased=True, randomness="path",
                     path_surrogate=path, description="baseline over the batch")


def _mutates_the_problem() -> Estimator:
    """st that scales the problem's data in place on every call."""
    base = REGISTRY.create("st")

    def surrogate(problem, params, generator):
        problem.x.mul_(1.01)
        return base.surrogate(problem, params, generator)
    return Estimator("mutator", surrogate, randomness="path", description="writes into x")


def _detached() -> Estimator:
    """tanh with its surrogate detached: every estimate is 0."""
    base = REGISTRY.create("tanh")
    return Estimator("detached", lambda p, q, g: base.surrogate(p, q, g).detach(),
                     randomness="none", description="no gradient")


@pytest.mark.parametrize(("make", "check"), [
    (_detached, kit.check_shapes),
    (_batch_mean_baseline, kit.check_path_surrogate),
    (_mutates_the_problem, kit.check_shapes),
    (_counter_baseline, kit.check_statelessness),
    (_shared_noise, kit.check_uncorrelated_samples),
    (_biased_but_claims_unbiased, kit.check_unbiasedness),
    (_mixes_replicas, kit.check_replica_independence),
    (_scalar_surrogate, kit.check_shapes),
    (_adapts_with_the_global_generator, kit.check_adapt),
    (_adapt_renames, kit.check_adapt),
    (_adapt_writes_into_the_problem, kit.check_adapt),
    (_adapt_breaks_shapes, kit.check_adapt),
])
def test_the_kit_catches_a_broken_estimator(make, check) -> None:
    est = make()
    with pytest.raises(kit.ConformanceError, match=check.__name__.removeprefix("check_")):
        check(est)
    with pytest.raises(kit.ConformanceError):
        kit.check_estimator(est)


def test_the_kit_names_an_estimator_that_modifies_its_problem_and_keeps_the_others_safe() -> None:
    """A problem written into is named as such (it failed as 'keeps state' or 'determinism'), and
    the problems later checks get are intact (a mutator checked first made a correct estimator
    fail 'unbiasedness' in the same process)."""
    with pytest.raises(kit.ConformanceError, match="modified the problem it was given in place"):
        kit.check_shapes(_mutates_the_problem())
    kit.check_unbiasedness(REGISTRY.create("reinforce"))
    assert kit.check_problem("logistic").fingerprint() == kit.check_problem("logistic").fingerprint()


def test_a_factory_that_raises_is_a_conformance_error() -> None:
    """Whatever a factory raises, check_estimator reports it as a ConformanceError (a raw
    exception broke the collection of a whole pytest module through parametrize_with_checks)."""
    def boom() -> Estimator:
        raise RuntimeError("boom in factory")

    def positional(tau) -> Estimator:  # hyperparameters must be keyword-only with defaults
        return REGISTRY.create("st")

    with pytest.raises(kit.ConformanceError, match="factory 'boom': RuntimeError: boom in factory"):
        kit.check_estimator(boom)
    with pytest.raises(kit.ConformanceError, match="factory 'positional'"):
        kit.check_estimator(positional)


def test_check_estimator_takes_a_factory_and_reports_skips() -> None:
    skipped = kit.check_estimator(BUILTINS["tanh"])
    assert any(s.startswith("check_unbiasedness") for s in skipped)
    assert any(s.startswith("check_adapt: not adaptive") for s in skipped)
    if not torch.cuda.is_available():
        assert any(s.startswith("check_cuda") for s in skipped)


def test_check_estimator_runs_the_factory_contract() -> None:
    def positional(tau):  # hyperparameters must be keyword-only
        return REGISTRY.create("concrete")
    with pytest.raises(Exception, match="keyword-only"):
        kit.check_estimator(positional)
    assert check_positive("tau", 2, "> 0") == 2.0


def test_a_nan_estimator_fails_shapes_alone() -> None:
    """NaN estimates are check_shapes' failure; the comparisons of determinism, statelessness and
    replica independence skip them (NaN ≠ NaN read as 'draws from a generator not given')."""
    def nan() -> Estimator:
        def surrogate(problem, params, generator):  # noqa: ANN001, ANN202
            w = next(iter(params.values()))
            return w.reshape(w.shape[0], -1).sum(-1) * float("nan")
        return Estimator("nan-est", surrogate, randomness="none", description="NaN")

    with pytest.raises(kit.ConformanceError) as e:
        kit.check_estimator(nan)
    assert str(e.value).startswith("1 conformance check(s) failed") and "'shapes'" in str(e.value)


def test_an_estimator_that_calls_sys_exit_fails_the_check() -> None:
    """A plugin's sys.exit escaped the kit (and would end the pytest session using it); it fails
    the check that met it, as any other exception does."""
    def quitter() -> Estimator:
        def surrogate(problem, params, generator):  # noqa: ANN001, ANN202
            raise SystemExit(3)
        return Estimator("quitter", surrogate, randomness="continuous", description="exits")

    with pytest.raises(kit.ConformanceError, match=r"'shapes'.*it raised SystemExit: 3"):
        kit.check_shapes(quitter())

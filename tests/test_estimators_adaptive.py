"""Adaptive estimators (``rebar`` with its tuned η, ``relax``, ``nvil``) and the adaptation contract
(:attr:`Estimator.adapt`, :func:`adapt_estimator`):

* adaptation is bit-identical for a seed and changes the estimator;
* untuned, ``nvil`` is ``reinforce`` and ``relax`` is ``rebar`` (their learned parts start at 0);
* tuned, ``nvil`` and ``relax`` have a lower variance on the problem they were tuned on, and
  ``rebar``'s η minimises the variance of its own pilot estimates;
* tuned, they stay unbiased (``nvil`` exactly, by path enumeration; ``relax`` by a z-test);
* learned networks apply only to problems of the widths they were learned for.

The training problem is small (2-3-2-1, 5 data points) and the budgets are a fraction of
:data:`~sbn_bench.estimators.DEFAULT_ADAPT_STEPS`. Statistical tests are seeded; each fails a
correct estimator with probability at most :data:`ALPHA` (one-sided for "lower variance").
"""

from __future__ import annotations

import functools
from statistics import NormalDist

import pytest
import torch
from torch import Tensor

from sbn_bench.errors import ArgumentError
from sbn_bench.estimators import (
    ADAPT_SAMPLES,
    ContractError,
    Estimator,
    UnsupportedProblem,
    adapt_estimator,
    estimate,
    load_registry,
)
from sbn_bench.estimators import testing as kit
from sbn_bench.problems import Problem, random_problem
from sbn_bench.reference import exact_gradient

REGISTRY = load_registry()
ALPHA = 1e-6
STEPS = 100
ADAPTIVE = ["rebar", "relax", "nvil"]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def training_problem() -> Problem:
    return random_problem("2-3-2-1", 1, data_points=5)


@functools.cache
def tuned(spec: str, steps: int = STEPS, seed: int = 0) -> Estimator:
    """``spec`` tuned on :func:`training_problem` (cached: adaptation is deterministic)."""
    est, seconds = adapt_estimator(REGISTRY.create(spec), training_problem(), steps, seed)
    assert seconds >= 0
    return est


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _flat(grads: dict[str, Tensor], hidden_only: bool = False) -> Tensor:
    return torch.cat([v.flatten(1) for k, v in grads.items()
                      if not (hidden_only and k.endswith("_out"))], dim=1)


def _same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------
# the contract


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptation_is_bit_identical_for_a_seed_and_depends_on_it(name: str) -> None:
    problem = training_problem()
    first, _ = adapt_estimator(REGISTRY.create(name), problem, 20, seed=3)
    again, _ = adapt_estimator(REGISTRY.create(name), problem, 20, seed=3)
    other, _ = adapt_estimator(REGISTRY.create(name), problem, 20, seed=4)
    assert first.name == again.name == name and first == again
    a, b, c = (estimate(e, problem, 8, _gen(5)) for e in (first, again, other))
    assert _same(a, b)
    assert not _same(a, c)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptation_changes_the_estimator(name: str) -> None:
    """``rebar``: η moves (a new hyperparameter value); ``nvil`` and ``relax``: the learned
    networks change the estimates on the same noise."""
    untuned, t = REGISTRY.create(name), tuned(name)
    if name == "rebar":
        assert dict(t.hyperparams)["eta"] != dict(untuned.hyperparams)["eta"]
        assert dict(t.hyperparams)["tau"] == dict(untuned.hyperparams)["tau"]
    else:
        assert t.hyperparams == untuned.hyperparams
    a, b = estimate(untuned, training_problem(), 8, _gen(5)), estimate(t, training_problem(), 8, _gen(5))
    assert float((_flat(a) - _flat(b)).abs().max()) > 1e-6


def test_adapt_estimator_leaves_other_estimators_alone_and_checks_its_arguments() -> None:
    problem = training_problem()
    psa = REGISTRY.create("psa")
    assert adapt_estimator(psa, problem, 10) == (psa, 0.0)
    for steps in (-1, 2.5, True):
        with pytest.raises(ArgumentError, match="steps") as info:
            adapt_estimator(REGISTRY.create("nvil"), problem, steps)  # type: ignore[arg-type]
        assert info.value.argument == "steps"
    gaussian = random_problem("2-2-1", 0, data_points=3, noise="gaussian")
    with pytest.raises(UnsupportedProblem, match="noise 'gaussian'"):
        adapt_estimator(REGISTRY.create("relax"), gaussian, 10)
    assert adapt_estimator(REGISTRY.create("nvil"), problem, 0)[0].name == "nvil"


def test_adapt_estimator_refuses_an_adapt_that_breaks_the_contract() -> None:
    reinforce = REGISTRY.create("reinforce")
    renames = Estimator("renames", reinforce.surrogate, randomness="path",
                        adapt=lambda p, g, s: reinforce)
    with pytest.raises(ContractError, match="adapt returned an estimator named 'reinforce'"):
        adapt_estimator(renames, training_problem(), 1)


# --------------------------------------------------------------------------------------------
# untuned and tuned estimates


@pytest.mark.parametrize(("name", "same_as"), [("nvil", "reinforce"), ("relax", "rebar")])
def test_untuned_estimators_start_from_their_base(name: str, same_as: str) -> None:
    """The learned baseline (``nvil``) and control variate ``c_φ`` (``relax``) start at 0."""
    for problem in (training_problem(), kit.check_problem("mse")):
        a = estimate(REGISTRY.create(name), problem, 16, _gen(2))
        b = estimate(REGISTRY.create(same_as), problem, 16, _gen(2))
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-14, msg=k)


def _total_variance_z(untuned: Estimator, tuned_est: Estimator, problem: Problem, n: int) -> float:
    """One-sided z statistic of "the tuned estimator's total variance over the hidden layers is
    lower": ``Y = ‖ĝ − ḡ‖²`` averaged over ``n`` samples of each (independent seeds)."""
    ys = []
    for est, seed in [(untuned, 11), (tuned_est, 12)]:
        g = _flat(estimate(est, problem, n, _gen(seed)), hidden_only=True).to(torch.float64)
        ys.append(((g - g.mean(0)) ** 2).sum(1))
    u, t = ys
    return float((u.mean() - t.mean()) / torch.sqrt(u.var() / n + t.var() / n))


@pytest.mark.parametrize("spec", ["nvil", "relax:eta=0.5", "rebar:eta=0.5"])
def test_tuned_estimators_have_lower_variance_on_their_problem(spec: str) -> None:
    """On the training problem, fresh noise. ``nvil`` starts from REINFORCE; ``relax`` and ``rebar``
    from a control variate at half its useful scale (at the defaults, η = 1 and τ = ½, REBAR's
    control variate is already within a few percent of the variance minimum on such small nets, and
    the learned ``c_φ`` adds little there). Measured gaps are 20–100 standard errors, so a correct
    adaptation fails this one-sided test at level :data:`ALPHA` with a far smaller probability."""
    z = _total_variance_z(REGISTRY.create(spec), tuned(spec), training_problem(), 4000)
    assert z > NormalDist().inv_cdf(1 - ALPHA), f"{spec}: z = {z:.2f}"


def test_rebar_eta_minimises_the_variance_of_its_pilot_estimates() -> None:
    """``η* = −Cov(A, B)/Var(B)``: on the very estimates adaptation used (the same generator, drawn
    again ``ADAPT_SAMPLES`` at a time), the total sample variance at ``η*`` is below that at
    ``η* ± 0.05`` and ``η* ± 0.5`` (exactly: the variance is a quadratic in η)."""
    problem, steps, seed = training_problem(), 10, 7
    eta = dict(adapt_estimator(REGISTRY.create("rebar"), problem, steps, seed)[0].hyperparams)["eta"]

    def pilot_variance(value: float) -> float:
        gen = torch.Generator(device=problem.x.device).manual_seed(seed)
        est = REGISTRY.create(f"rebar:eta={value!r}")
        g = torch.cat([_flat(estimate(est, problem, ADAPT_SAMPLES, gen)) for _ in range(steps)])
        return float(((g - g.mean(0)) ** 2).sum(1).mean())

    best = pilot_variance(eta)
    for delta in (-0.5, -0.05, 0.05, 0.5):
        assert best < pilot_variance(eta + delta), (eta, delta)


def test_tuned_nvil_stays_exactly_unbiased() -> None:
    """A tuned ``nvil`` is still a path estimator: its mean over every path is the exact gradient."""
    problem = training_problem()
    mean, exact = kit.path_expectation(tuned("nvil"), problem), exact_gradient(problem)[1]
    for k, g in exact.items():
        err = float((mean[k] - g).norm())
        assert err <= 1e-10 * float(g.norm()), (k, err)


def test_tuned_relax_stays_unbiased() -> None:
    """Per-coordinate z-test with the kit's sample size and failure rate."""
    problem = training_problem()
    samples = estimate(tuned("relax"), problem, kit.NUM_SAMPLES, _gen(2024))
    ok, report = kit.z_test(samples, exact_gradient(problem)[1], alpha=ALPHA)
    assert ok, report


@pytest.mark.parametrize("name", ["nvil", "relax"])
def test_learned_networks_apply_only_to_the_widths_they_were_learned_for(name: str) -> None:
    """On a problem of other widths the tuned estimator is the untuned one; on a problem of the
    same widths (other parameters, other data) the learned networks are used."""
    other = kit.check_problem("mse")
    assert other.widths != training_problem().widths
    assert _same(estimate(tuned(name), other, 8, _gen(3)), estimate(REGISTRY.create(name), other, 8, _gen(3)))
    same_widths = random_problem(training_problem().arch, 9, data_points=4)
    assert not _same(estimate(tuned(name), same_widths, 8, _gen(3)),
                     estimate(REGISTRY.create(name), same_widths, 8, _gen(3)))


@pytest.mark.parametrize("spec", ["nvil:hidden=1024", "relax:hidden=1024"])
def test_memory_bound_covers_the_learned_networks(spec: str) -> None:
    """The runner's memory planner reads ``memory_per_sample``: it must bound the tuned estimator
    (wide networks evaluated for every sample and data point; at this width the generic bound
    does not), measured as in ``tests/test_runner_memory.py``."""
    from test_runner_memory import peak_bytes

    problem = random_problem("2-5-5-5-1", 0, data_points=40)
    est, _ = adapt_estimator(REGISTRY.create(spec), problem, 1, seed=0)
    for dtype in (torch.float32, torch.float64):
        q = problem.to(dtype=dtype)
        got = peak_bytes(lambda q=q: estimate(est, q, 32, _gen(0)))
        bound = 32 * est.memory_per_sample(problem.widths, 40, torch.finfo(dtype).bits // 8)
        assert 0 < got <= bound, f"{spec} {dtype}: peak {got} B > bound {bound} B"


@pytest.mark.slow
def test_the_runner_measures_adaptive_estimators_tuned(tmp_path) -> None:
    """A run tunes each adaptive estimator before measuring it (SPEC §3b; the runner measured
    them untuned, so ``nvil`` gave REINFORCE's numbers to the last digit): its statistics are the
    tuned estimator's, bit-identical on a rerun, and its throughput row gives the tuning's
    seconds apart (``adapt_s``; empty for the others)."""
    import pandas as pd

    from sbn_bench import runner
    from sbn_bench.config import ProblemSpec, RunConfig, ThroughputConfig

    def config(out, throughput: bool) -> RunConfig:
        return RunConfig(problems=(ProblemSpec(arch="2-3-3-1", data_points=6),),
                         estimators=("nvil", "reinforce", "rebar"), samples=64, M=(1,),
                         throughput=ThroughputConfig(enabled=throughput, rounds=1, warmup=0,
                                                     batch=8),
                         executor="serial", out=str(out))

    a = runner.run(config(tmp_path / "a", True))
    b = runner.run(config(tmp_path / "b", False))
    rr = a.metrics.query("metric == 'rrmse' and M == 1 and layer == '1'").set_index("estimator")
    assert rr.loc["nvil:hidden=16", "mode"] == "exact" == rr.loc["reinforce", "mode"]
    # the learned baseline takes most of REINFORCE's variance away in the first layer
    assert rr.loc["nvil:hidden=16", "value"] < 0.5 * rr.loc["reinforce", "value"], rr["value"]
    # rebar is labelled as asked, not by its tuned eta
    assert set(a.metrics["estimator"]) == {"nvil:hidden=16", "reinforce", "rebar:eta=1.0,tau=0.5"}
    pd.testing.assert_frame_equal(a.metrics, b.metrics)  # reruns tune bit-identically
    tp = a.throughput.set_index("estimator")["adapt_s"]
    assert tp["nvil:hidden=16"] > 0 and tp["rebar:eta=1.0,tau=0.5"] > 0 and pd.isna(tp["reinforce"])
    from sbn_bench.reports import write_report
    md = write_report(tmp_path / "a", formats=("md",))["md"].read_text()
    assert "adaptive: timed after their tuning (the default budget), which took nvil:hidden=16 " in md


def test_a_tuning_that_fails_or_writes_into_the_problem_fails_its_cells_only(tmp_path) -> None:
    """A tuning that raises, or writes into the problem, is a failed cell at stage ``adapt`` in
    both the statistics and the throughput cells (whatever the dtype); the other estimators of
    the throughput group are still measured."""
    from sbn_bench import runner
    from sbn_bench.config import ProblemSpec, RunConfig, ThroughputConfig

    plug = tmp_path / "bad.py"
    plug.write_text(
        "import dataclasses\n"
        "from sbn_bench.estimators import load_registry\n"
        "def bad(*, mode: str = 'mutate'):\n"
        "    base = load_registry().create('reinforce')\n"
        "    def adapt(problem, generator, steps):\n"
        "        if mode == 'mutate':\n"
        "            problem.params['weight_1'].add_(1.0)\n"
        "        elif mode == 'exit':\n"
        "            raise SystemExit(7)\n"
        "        else:\n"
        "            raise RuntimeError('adapt exploded')\n"
        "        return dataclasses.replace(base, name='bad', adapt=adapt)\n"
        "    return dataclasses.replace(base, name='bad', adapt=adapt, hyperparams=(('mode', mode),))\n"
        "ESTIMATORS = {'bad': bad}\n")
    for spec, says, dtype in (("bad", "modified the problem it was tuned on", "float32"),
                              ("bad", "modified the problem it was tuned on", "float64"),
                              ("bad:mode=raise", "RuntimeError: adapt exploded", "float32"),
                              # it failed the whole throughput cell: psa lost its figure
                              ("bad:mode=exit", "SystemExit: 7", "float32")):
        out = tmp_path / f"run-{dtype}-{len(spec)}"
        cfg = RunConfig(problems=(ProblemSpec(arch="2-3-1", data_points=4),), plugins=(str(plug),),
                        estimators=("psa", spec), samples=32, M=(1,), dtype=dtype,
                        throughput=ThroughputConfig(rounds=1, warmup=0, batch=8),
                        executor="serial", out=str(out))
        res = runner.run(cfg)
        assert set(res.failures["stage"]) == {"adapt"} and len(res.failures) == 2, res.failures
        assert all(says in e for e in res.failures["error"])
        assert set(res.metrics["estimator"]) == {"psa"} and list(res.throughput["estimator"]) == ["psa"]

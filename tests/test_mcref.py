"""The Monte-Carlo reference (SPEC §8): its unbiasedness and stated error, the corrected metrics
against the exact ones on nets where both exist, biases resolved or bounded, the cache, and the
``--reference`` option's errors.

Statistical checks are seeded z-tests. Each test states its failure rate ``ALPHA`` (the chance that
a correct implementation fails it, were the standard errors exact) and splits it over its ``K``
comparisons (Bonferroni): ``|z| ≤ Φ⁻¹(1 − ALPHA/(2K))``. The standard errors are delta-method
approximations, so the tolerance is not loosened further.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import tempfile
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from sbn_bench import metrics as mt
from sbn_bench import runner, schema
from sbn_bench.cli import main
from sbn_bench.config import ConfigError, ProblemSpec, RunConfig, ThroughputConfig, parse_reference
from sbn_bench.estimators import estimate, load_registry
from sbn_bench.metrics import Groups
from sbn_bench.problems import Problem, digits_problem, paper_problem, random_problem
from sbn_bench.reference import exact_gradient
from sbn_bench.reports.ranking import Estimate
from sbn_bench.reports.tables import fmt_estimate
from sbn_bench.runner.cells import Reference, exact_reference, stats_cell_rows
from sbn_bench.runner.mcref import McReference, McReferenceError, mc_reference, plan_reference
from sbn_bench.train import train

ALPHA = 1e-3
"""Failure rate of each statistical test (all its comparisons together)."""

REGISTRY = load_registry()


def z_bound(k: int, alpha: float = ALPHA) -> float:
    """Two-sided Bonferroni bound for ``k`` comparisons at total failure rate ``alpha``."""
    return NormalDist().inv_cdf(1 - alpha / (2 * max(k, 1)))


def flat_exact(problem: Problem) -> torch.Tensor:
    _, g = exact_gradient(problem)
    return Groups.of(problem.params).flatten_one(g)


def as_reference(ref) -> Reference:
    return Reference(ref.gradient, spec=ref.spec, noise=ref.noise)


def cfg(**kw) -> RunConfig:
    base = dict(problems=(ProblemSpec(arch="2-2-1"),), samples=400, M=(1, 10),
                throughput=ThroughputConfig(enabled=False), stderr_batches=32)
    base.update(kw)
    return RunConfig(**base)


# --------------------------------------------------------------------------------------------
# the reference itself


def test_the_mc_reference_is_unbiased_with_the_stated_variance(tmp_path: Path) -> None:
    """E ĝ = g and Var ĝ_i = v_i/N: per coordinate z = (ĝ_i − g_i)/√(v̂_i/N), Bonferroni over P;
    and the whole-network error is what it says, E‖ĝ − g‖² = V_R/N. ‖ĝ − g‖² is a sum of
    squares of correlated normal coordinates (N = 4000: the central limit holds), Σ λ_k χ²₁ over
    the eigenvalues of Cov ĝ, which Satterthwaite's χ²_ν/ν approximates with
    ν = (Σλ)²/Σλ² = tr(C)²/tr(C²); ν is measured here on 4000 independent samples of R (their
    sampling noise lowers it: a wider band). The two checks share ALPHA. The χ² quantiles are
    Wilson and Hilferty's, ``ν (1 − 2/(9ν) + z √(2/(9ν)))³`` (scipy is not a dependency): for
    10 ≤ ν ≤ 40 at these tails it gives 0.89–0.99 times the exact lower quantile and 1.002–1.009
    times the upper one (compared with scipy.stats.chi2), a band at least as wide as the exact."""
    def chi2_ppf(q: float, dof: float) -> float:
        c = 2 / (9 * dof)
        return dof * (1 - c + NormalDist().inv_cdf(q) * math.sqrt(c)) ** 3

    p = random_problem("2-4-4-4-1", 0, data_points=20)
    g = flat_exact(p)
    ref = mc_reference(p, estimator="reinforce-loo:k=2", samples=4000, seed=3)
    assert ref.gradient.dtype == torch.float64 and ref.samples == 4000 and not ref.from_cache
    z = (ref.gradient - g) / (ref.variance / ref.samples).sqrt()
    bound = z_bound(z.numel(), ALPHA / 2)
    assert float(z.abs().max()) <= bound, f"max |z| {float(z.abs().max()):.2f} > {bound:.2f}"
    x = Groups.of(p.params).flatten(estimate(REGISTRY.create("reinforce-loo:k=2"), p, 4000,
                                             torch.Generator().manual_seed(99)))
    cov = torch.cov(x.T)
    nu = float(cov.trace()) ** 2 / float((cov * cov).sum())
    assert 10 < nu < z.numel(), nu  # correlated coordinates: fewer than P degrees of freedom
    lo, hi = chi2_ppf(ALPHA / 4, nu) / nu, chi2_ppf(1 - ALPHA / 4, nu) / nu
    ratio = float(((ref.gradient - g) ** 2).sum()) / (ref.variance_sum / ref.samples)
    assert lo < ratio < hi, (ratio, lo, hi, nu)
    assert set(ref.grads()) == set(p.params)
    assert all(ref.grads()[n].shape == p.params[n].shape for n in p.params)


def test_n_is_chosen_for_the_target_error_and_r_by_the_pilot(monkeypatch) -> None:
    """N = ⌈V̂_p/(ε² ‖g‖²_p)⌉ from the pilot's figures, which are within their errors of the truth:
    ‖g‖²_p against the exact ‖g‖², with Var ‖m‖²~ = 4gᵀC₁g/n + 2tr(C₁²)/n² ≤ 4‖g‖²V/n + 2V²/n²
    (C₁ one sample's covariance, V its trace, n the pilot's samples: all the noise along g, the
    worst case), and V̂_p against the reference's V̂_R (N samples), with the standard error of a
    variance over n samples from the reference's 32 batch variances. z-tests at ALPHA (the
    reached ε then follows: ε_reached² = ε² · (V̂_R/V̂_p) · (‖g‖²_p/‖g‖²_R) · N*/N)."""
    import sbn_bench.runner.mcref as mcref

    p = random_problem("2-4-4-4-1", 0, data_points=20)
    pilots: list[tuple[str, int]] = []
    real = mcref._pilot

    def pilot(est, *a, **kw):
        acc, spent = real(est, *a, **kw)
        pilots.append((est.spec, acc.n))
        return acc, spent

    monkeypatch.setattr(mcref, "_pilot", pilot)
    eps = 0.05
    plan = plan_reference(p, rel_error=eps, seed=0)
    monkeypatch.undo()
    names = {r.estimator for r in plan.pilot}
    assert {"reinforce", "disarm", "arm"} <= names and "psa" not in names and "exact" not in names
    best = min(plan.pilot, key=lambda r: r.cost)
    assert plan.estimator == best.estimator
    need = plan.variance / (eps * eps * plan.g_norm_sq)
    assert plan.samples == max(mcref.MIN_SAMPLES, math.ceil(need)) and plan.samples >= 64
    n = [k for spec, k in pilots if spec == plan.estimator][-1]
    assert plan.variance / n / plan.g_norm_sq <= mcref.PILOT_MAX_REL_ERROR**2  # its stopping rule
    ref = mc_reference(p, plan=plan, seed=0)
    g = flat_exact(p)
    gsq, V, N = float((g * g).sum()), ref.variance_sum, ref.samples
    bound = z_bound(2)
    sd_g = math.sqrt(4 * gsq * V / n + 2 * V * V / n / n)
    assert abs(plan.g_norm_sq - gsq) <= bound * sd_g, (plan.g_norm_sq, gsq, sd_g, n)
    vb = ref.noise.batch_variance.sum(1)  # each batch's V̂ over N/B samples
    sd_v = math.hypot(float(vb.std()) * math.sqrt(N / len(vb) / n), float(vb.std()) / math.sqrt(len(vb)))
    assert abs(plan.variance - V) <= bound * sd_v, (plan.variance, V, sd_v, n)
    # and the ε reached is what those figures make it (N rounded up from N*)
    reached = eps * math.sqrt(V / plan.variance * plan.g_norm_sq
                              / (float((ref.gradient**2).sum()) - V / N) * need / N)
    assert ref.rel_error == pytest.approx(reached, rel=1e-9)


def test_refused_up_front_when_the_budget_cannot_reach_epsilon() -> None:
    p = random_problem("2-4-4-4-1", 0, data_points=20)
    with pytest.raises(McReferenceError, match=r"needs about N=\d+ samples of reinforce .* over "
                                               r"the time budget of 30 s \(within it: ε ≈"):
        plan_reference(p, rel_error=0.0002, time_budget_s=30, estimator="reinforce")
    # a pilot that cannot even tell ‖g‖ from the noise within its share of the budget
    with pytest.raises(McReferenceError, match=r"cannot tell ‖g‖ from the noise of reinforce"):
        plan_reference(p, rel_error=0.01, time_budget_s=1e-4, estimator="reinforce")
    with pytest.raises(McReferenceError, match="is biased"):
        plan_reference(p, estimator="st", samples=100)
    with pytest.raises(McReferenceError, match="reference_rel_error=1.5"):
        plan_reference(p, rel_error=1.5)
    # an ε whose square underflows (it raised ZeroDivisionError)
    with pytest.raises(McReferenceError, match=r"1e-300 is out of reach .* more than 1e\+15 samples"):
        plan_reference(p, rel_error=1e-300, estimator="reinforce")
    with pytest.raises(McReferenceError, match=r"not random .* \(--reference exact\)"):
        plan_reference(p, estimator="exact", samples=100)


def test_plans_and_timings_are_not_repeated_nor_fatal(tmp_path: Path, monkeypatch) -> None:
    """mc::N with the layers target is read back from the cache (it was planned again on every
    run); a cached reference of a given R and N is not timed again; an R that fails while timed
    leaves the plan untimed (its failure is the reference's, recorded for the problem's cells,
    rather than aborting the run); an ε out of reach is refused even without a time budget."""
    import sbn_bench.runner.mcref as mcref

    p = random_problem("2-3-3-1", 0, data_points=10)
    first = plan_reference(p, samples=100, target="layers", cache_dir=tmp_path)
    monkeypatch.setattr(mcref, "_make_plan", lambda *a, **k: pytest.fail("planned again"))
    again = plan_reference(p, samples=100, target="layers", cache_dir=tmp_path)
    assert (again.estimator, again.samples, again.target) == (first.estimator, 100, "layers")
    mc_reference(p, estimator="reinforce", samples=100, cache_dir=tmp_path)
    with monkeypatch.context() as m:
        m.setattr(mcref, "_seconds_per_sample", lambda *a: pytest.fail("timed again"))
        assert mc_reference(p, estimator="reinforce", samples=100, cache_dir=tmp_path).from_cache

    def nan(*args, **kw):
        raise McReferenceError("reference estimator 'reinforce' returned NaN/Inf")
    monkeypatch.setattr(mcref, "_draw", nan)
    assert math.isnan(plan_reference(p, estimator="reinforce", samples=100).seconds_per_sample)
    monkeypatch.undo()
    with pytest.raises(McReferenceError, match=r"reference_rel_error=1e-300 is out of reach") as e:
        plan_reference(p, rel_error=1e-300, estimator="reinforce", time_budget_s=math.inf)
    assert e.value.argument == "reference_rel_error"


def test_a_plugin_estimator_can_be_the_reference(tmp_path: Path) -> None:
    """The reference was planned with the run's plugins but computed without them: every cell
    failed with "estimator 'reinforce-baseline' is unknown"."""
    example = Path(__file__).parents[1] / "examples" / "reinforce_baseline.py"
    res = runner.run(RunConfig(problems=(ProblemSpec(arch="2-3-1", data_points=5),),
                               estimators=("st",), samples=20, M=(1,), plugins=(str(example),),
                               reference="mc:reinforce-baseline:200", out=str(tmp_path / "r"),
                               throughput=ThroughputConfig(enabled=False)))
    assert res.failures.empty, res.failures
    assert set(res.metrics["reference"]) == {"mc:reinforce-baseline:200"}


def test_a_given_n_is_refused_when_it_would_exceed_the_budget(monkeypatch) -> None:
    """A given N is checked against the time budget before its samples (it was sampled for as
    long as it took): timed on a few batches of R when R is given, by the pilot when not."""
    import sbn_bench.runner.mcref as mcref

    p = random_problem("2-4-4-4-1", 0, data_points=20)
    drawn = []
    real = mcref._draw
    monkeypatch.setattr(mcref, "_draw", lambda e, prob, n, *a: (drawn.append(n), real(e, prob, n, *a)))
    with pytest.raises(McReferenceError, match=r"with the given N=10000000000 samples of reinforce "
                                               r"would take about .* over the time budget of 30 s "
                                               r"\(within it: N ≈ \d+\)") as err:
        mc_reference(p, estimator="reinforce", samples=10**10, time_budget_s=30)
    assert err.value.argument == "reference_time_budget"
    assert max(drawn) < 10**6, drawn  # timed on batches, not sampled
    with pytest.raises(McReferenceError, match=r"with the given N=10000000000 samples of "):
        plan_reference(p, samples=10**10, time_budget_s=30)  # R chosen by the pilot
    plan = plan_reference(p, estimator="reinforce", samples=100, time_budget_s=30)
    assert plan.samples == 100 and 0 < plan.seconds < 30
    unbounded = plan_reference(p, estimator="reinforce", samples=10**10, time_budget_s=math.inf)
    assert math.isnan(unbounded.seconds_per_sample)  # no budget: not timed (training probes)


# --------------------------------------------------------------------------------------------
# corrected metrics agree with the exact ones


def paper_trained() -> Problem:
    """The paper net after a few epochs of REINFORCE training (a second checkpoint, away from
    the initialisation's rescaled weights)."""
    with tempfile.TemporaryDirectory() as d:
        return train(paper_problem(0), "reinforce", epochs=5, out_dir=Path(d) / "t",
                     exact_log=False).problem


def vae_exact_subset() -> Problem:
    """``digits-vae-exact`` (16 latents) on its first 40 images: the exact reference is cheap."""
    p = digits_problem("digits-vae-exact", 0)
    return dataclasses.replace(p, x=p.x[:40], y=p.y[:40])


NETS = {
    "paper-init": lambda: paper_problem(0),
    "paper-trained": paper_trained,
    "random-3-layer": lambda: random_problem("2-4-4-4-1", 0, data_points=20),
    "digits-vae-exact": vae_exact_subset,
}


def compare(problem: Problem, estimators: tuple[str, ...], config: RunConfig, rel_error: float,
            ref_seed: int = 0, **ref_kw) -> tuple[pd.DataFrame, pd.DataFrame, McReference]:
    """Metric rows of each estimator against the exact and the Monte-Carlo reference (the same
    estimator samples), side by side (rows of both), the Monte-Carlo rows alone (with their
    ``reference_cosine`` rows, which the exact reference has not) and the reference.

    Checked on the way: against the exact reference a cell writes exactly
    ``EXACT_REFERENCE_METRICS``; against the Monte-Carlo one the same rows plus one
    ``reference_cosine`` row per group."""
    ex = exact_reference(problem, 2**32)
    mc = mc_reference(problem, rel_error=rel_error, seed=ref_seed, dtype="float64", **ref_kw)
    names = Groups.of(problem.params).names
    keys = ["estimator", "layer", "metric", "M"]
    out, mrows = [], []
    for spec in estimators:
        est = REGISTRY.create(spec)
        a = pd.DataFrame(stats_cell_rows(est, problem, ex.gradient, config, 0, "c"))
        b = pd.DataFrame(stats_cell_rows(est, problem, mc.gradient, config, 0, "c",
                                         reference=as_reference(mc)))
        assert set(a["metric"]) == set(schema.EXACT_REFERENCE_METRICS), (spec, set(a["metric"]))
        only_m = b.merge(a[keys], on=keys, how="left", indicator=True)
        only_m = only_m[only_m["_merge"] == "left_only"]
        assert set(only_m["metric"]) == {"reference_cosine"}, (spec, set(only_m["metric"]))
        assert sorted(only_m["layer"]) == sorted(names) and len(b) == len(a) + len(names), spec
        out.append(a.merge(b, on=keys, suffixes=("_x", "_m")))
        mrows.append(b)
    return pd.concat(out, ignore_index=True), pd.concat(mrows, ignore_index=True), mc


def check_reference_cosine(rows: pd.DataFrame, problem: Problem, mc: McReference) -> int:
    """The ``reference_cosine`` rows of Monte-Carlo rows ``rows``: one per estimator and group,
    ``1/√(1 + ε²)`` of the ε its group's rows report, and that ε is the reference's own,
    ``√(V̂_R/N)/‖g‖`` with ``‖g‖² = ‖ĝ‖² − V̂_R/N`` per group, computed here from ``mc`` (or ∞
    with value 0 where the reference does not resolve the group). Returns the number of
    resolved rows checked."""
    groups = Groups.of(problem.params)
    v = groups.sums(mc.noise.variance.double()) / mc.noise.samples
    sq = groups.sums(mc.gradient.double() ** 2) - v
    want = dict(zip(groups.names, (v / sq).sqrt().tolist()))
    rc = rows[rows["metric"] == "reference_cosine"]
    assert len(rc) == rows["estimator"].nunique() * len(groups.names) and rc["M"].isna().all()
    resolved = 0
    for _, r in rc.iterrows():
        eps = r["reference_rel_error"]
        group = rows[(rows["estimator"] == r["estimator"]) & (rows["layer"] == r["layer"])]
        assert (group["reference_rel_error"] == eps).all(), group  # one ε per group
        if math.isinf(eps):
            assert r["value"] == 0.0, r.to_dict()
            continue
        assert eps == pytest.approx(want[r["layer"]], rel=1e-9), (r.to_dict(), want)
        assert r["value"] == pytest.approx(1 / math.sqrt(1 + eps * eps), rel=1e-12, abs=0)
        assert r["stderr"] > 0, r.to_dict()
        resolved += 1
    # the whole network is resolved in every case here
    assert all(math.isfinite(e) for e in rc.loc[rc["layer"] == "all", "reference_rel_error"])
    return resolved


@pytest.mark.slow
@pytest.mark.parametrize("net", list(NETS))
def test_every_metric_agrees_with_the_exact_reference_within_its_error(net: str) -> None:
    problem = NETS[net]()
    mode = "auto" if net == "random-3-layer" else "mc"  # exact-mode rows on the small net
    config = cfg(mode=mode, samples=600, M=(1, 10, 100))
    # (compare() checks that the exact reference's rows are exactly EXACT_REFERENCE_METRICS)
    df, mrows, mc = compare(problem, ("psa", "st", "reinforce", "tanh"), config, rel_error=0.03)
    assert (df["reference_x"] == "exact").all() and (df["reference_rel_error_x"] == 0).all()
    assert df["reference_m"].str.match(r"mc:.+:\d+").all()
    # the comparable rows: finite values with a finite stated error on the Monte-Carlo side
    ok = df[df["value_x"].map(math.isfinite) & df["value_m"].map(math.isfinite)
            & df["stderr_m"].map(math.isfinite)]
    diff = (ok["value_m"] - ok["value_x"]).abs()
    # equal to round-off: variance and snr (no g in them), and groups the reference has exactly
    # (the VAE's prior logits: their KL gradient is analytic, R's variance there is 0)
    same = diff <= 1e-9 * ok["value_x"].abs() + 1e-12  # (the reports' ROUND_REL, ROUND_ABS)
    test = ok[~same]
    assert len(test) > 50, f"too few rows differ to test: {len(test)}"
    z = (test["value_m"] - test["value_x"]).abs() / test["stderr_m"]
    bound = z_bound(len(test))
    worst = test.assign(z=z).sort_values("z").tail(3)
    assert float(z.max()) <= bound, (f"{net}: max z {float(z.max()):.2f} > {bound:.2f}:\n"
                                     + worst[["estimator", "layer", "metric", "M", "value_x",
                                              "value_m", "stderr_m", "z"]].to_string())
    # the reference's resolution is reported next to the cosines, from the ε of its rows
    assert check_reference_cosine(mrows, problem, mc) >= 4


@pytest.mark.parametrize("ref", [{}, {"estimator": "reinforce", "samples": 40}],
                         ids=["epsilon-0.05", "coarse"])
def test_metrics_agree_on_the_random_net_quickly(ref) -> None:
    # the fast version of the test above: one net, exact-mode and Monte-Carlo rows; the coarse
    # reference (reinforce, N = 40: ε ≈ 0.5) is where the corrections matter (without the −V̂_R/N
    # terms the biases are off by several standard errors: disarm's bias_norm by 5.3 without the
    # one in mc_group_stats). st, reinforce and tanh have path surrogates, so "auto" takes them
    # through the exact-mode statistics; disarm has none: its rows are Monte-Carlo statistics
    # against a Monte-Carlo reference (the estimator's and the reference's noise both corrected
    # for, in mc_group_stats)
    problem = random_problem("2-4-4-4-1", 0, data_points=20)
    config = cfg(mode="auto", samples=400, M=(1, 10))
    df, mrows, mc = compare(problem, ("st", "reinforce", "tanh", "disarm"), config, rel_error=0.05,
                            **ref)
    modes = df[~df["metric"].str.startswith("cosine")].groupby("estimator")["mode_m"].agg(set)
    assert modes.to_dict() == {"st": {"exact"}, "reinforce": {"exact"}, "tanh": {"exact"},
                               "disarm": {"mc"}}, modes
    ok = df[df["value_x"].map(math.isfinite) & df["value_m"].map(math.isfinite)
            & df["stderr_m"].map(math.isfinite) & (df["value_x"] != df["value_m"])]
    z = (ok["value_m"] - ok["value_x"]).abs() / ok["stderr_m"]
    worst = ok.assign(z=z).sort_values("z").tail(3)
    assert len(ok) > 30 and (ok["estimator"] == "disarm").sum() > 10
    assert float(z.max()) <= z_bound(len(ok)), worst[["estimator", "layer", "metric", "M",
                                                      "value_x", "value_m", "stderr_m", "z"]]
    # rows against the Monte-Carlo reference carry its name, its ε per group and its resolution
    m = df[df["metric"] == "rrmse"]
    assert (m["reference_rel_error_m"] > 0).all() and (m["reference_rel_error_x"] == 0).all()
    assert check_reference_cosine(mrows, problem, mc) >= 4


def test_reference_cosine_is_the_expected_cosine_of_the_reference_with_g() -> None:
    """``reference_cosine`` = 1/√(1 + ε²) claims to be ``E cos(ĝ, g)``, the cosine of the reference
    with the exact gradient. Over K seeded references ĝ = g + n (disarm, N = 64), cos(ĝ, g) is
    taken from the exact g and compared with each reference's reported value.

    To second order in n, ``cos(ĝ, g) = 1 − (‖n‖² − u²)/(2‖g‖²)`` with ``u = n·g/‖g‖`` the part of
    the noise along g (which does not turn ĝ), while ``1/√(1 + ε²) = 1 − ε²/2`` with
    ``E ε² = E‖n‖²/‖g‖²``: the formula assumes the noise orthogonal to g on average (its
    docstring). So ``E[cos(ĝ, g) − value − u²/(2‖g‖²)] = 0`` up to higher-order terms (odd ones
    vanish on average for noise symmetric about 0; the fourth-order ones, ≈ ε⁴, nearly cancel
    between the two: over K = 1000 references the mean stayed within 1.1 of its standard errors
    of 0), checked as a z-test at failure rate ALPHA, Bonferroni over the groups
    every reference resolves; a halved ε or the formula 1/(1 + ε²) moved the mean by 20 and 24
    standard errors. Groups the reference does not resolve report 0 (a lower bound)."""
    p = random_problem("2-4-4-4-1", 0, data_points=20)
    groups = Groups.of(p.params)
    g = flat_exact(p)
    gn2 = groups.sums(g * g)
    zero = torch.zeros(groups.dim, dtype=torch.float64)
    K = 100
    d, values = [], []
    for k in range(K):
        ref = mc_reference(p, estimator="disarm", samples=64, seed=k, time_budget_s=math.inf)
        n = ref.gradient - g
        u2 = groups.sums(n * g) ** 2 / gn2  # (n·g/‖g‖)², per group
        cos = mt.cosines(ref.gradient.unsqueeze(0), g, groups)[0]
        st = mt.exact_group_stats(zero, zero, ref.gradient, groups, noise=ref.noise)
        value = torch.tensor([r["value"] for r in mt.metric_rows(
            st, [1], None, mode="exact", cosine_mode="exact", target_rrmse=0.1)
            if r["metric"] == "reference_cosine"], dtype=torch.float64)
        values.append(value)
        d.append(cos - value - u2 / gn2 / 2)
    values, d = torch.stack(values), torch.stack(d)
    resolved = (values > 0).all(0)
    assert resolved.sum() >= 2 and bool(resolved[-1]), values.min(0)  # "all" and the output layer
    assert (values[:, ~resolved] == 0).any(0).all()  # unresolved: 0, the ceiling ≥ 0 trivially
    mean, se = d[:, resolved].mean(0), d[:, resolved].std(0) / math.sqrt(K)
    z = mean / se
    bound = z_bound(int(resolved.sum()))
    assert float(z.abs().max()) <= bound, (z, mean, 1 - values[:, resolved].mean(0))
    # the test resolves the claim: the deficit 1 − value is many standard errors
    assert bool(((1 - values[:, resolved].mean(0)) > 8 * se).all())


# --------------------------------------------------------------------------------------------
# bias: consistent with zero, resolved, or bounded


def test_an_unbiased_estimator_is_not_found_biased_and_is_shown_as_a_bound() -> None:
    problem = random_problem("2-4-4-4-1", 0, data_points=20)
    ref = mc_reference(problem, rel_error=0.05, seed=1)
    for spec, mode in (("reinforce", "auto"), ("disarm", "mc")):  # exact-mode and sampled rows
        rows = pd.DataFrame(stats_cell_rows(REGISTRY.create(spec), problem, ref.gradient,
                                            cfg(mode=mode), 0, "c", reference=as_reference(ref)))
        rb = rows[rows["metric"] == "rel_bias"]
        z = rb["value"] / rb["stderr"]  # 0 where the reference does not resolve (stderr ∞)
        assert (rb["stderr"] > 0).all() and float(z.max()) <= z_bound(len(rb)), rb.to_string()
        # the reports show a bias that is not significantly above zero as an upper bound
        for v, se, md in zip(rb["value"], rb["stderr"], rb["mode"]):
            if v <= 2 * se and math.isfinite(se):  # (stderr ∞: shown as "± ∞", unresolved)
                assert fmt_estimate(Estimate(v, se, md), bound=True).startswith("≤ ")


def test_a_biased_estimator_is_resolved_once_epsilon_is_below_its_bias() -> None:
    problem = random_problem("2-4-4-4-1", 0, data_points=20)
    st = REGISTRY.create("st")
    exact_rows = stats_cell_rows(st, problem, exact_reference(problem, 2**32).gradient,
                                 cfg(), 0, "c")
    b = next(r["value"] for r in exact_rows if r["metric"] == "rel_bias" and r["layer"] == "all")
    assert b > 0.05  # st's relative bias on this net, exact (exact mode: no estimator noise)

    def rel_bias(ref) -> tuple[float, float]:
        rows = stats_cell_rows(st, problem, ref.gradient, cfg(), 0, "c", reference=as_reference(ref))
        r = next(r for r in rows if r["metric"] == "rel_bias" and r["layer"] == "all")
        return r["value"], r["stderr"]

    # two z-checks at ALPHA together. Resolved: |v − b| ≤ z·se, and v > 2·se (the reports' bound
    # threshold) follows from it wherever b ≥ (2 + z)·se, asserted first (no further failure rate)
    z = z_bound(2)
    fine = mc_reference(problem, rel_error=b / 5, seed=2)
    v, se = rel_bias(fine)
    assert fine.rel_error < b / 3 and b >= (2 + z) * se, (fine.rel_error, b, se)
    assert abs(v - b) <= z * se and v > 2 * se, (fine.rel_error, v, se)  # resolved
    assert not fmt_estimate(Estimate(v, se, "exact"), bound=True).startswith("≤")
    coarse = mc_reference(problem, estimator="reinforce", samples=40, seed=2)  # ε ≈ 0.5
    v, se = rel_bias(coarse)
    assert coarse.rel_error > b, coarse.rel_error
    # not resolved: near 0, se(‖β‖) = √se(‖β‖²) (norm_stderr), so v ≤ 2·se is ‖β‖²~ ≤ 4 se(‖β‖²~)
    # for the (normal) corrected ‖β‖²~ of mean b²‖g‖², which fails at rate ≤ ALPHA/2 wherever
    # 4 − (b/se)² ≥ z, asserted first
    assert (b / se) ** 2 <= 4 - z, (b, se)
    assert v <= 2 * se, (coarse.rel_error, v, se)  # an upper bound
    assert fmt_estimate(Estimate(v, se, "exact"), bound=True).startswith("≤ ")


# --------------------------------------------------------------------------------------------
# the cache


def test_the_cache_reuses_a_reference_and_not_a_changed_one(tmp_path: Path, monkeypatch) -> None:
    p = random_problem("2-3-3-1", 0, data_points=10)
    a = mc_reference(p, rel_error=0.1, seed=0, cache_dir=tmp_path)
    assert not a.from_cache
    import sbn_bench.runner.mcref as mcref

    def no_sampling(*args, **kw):
        raise AssertionError("the cached reference was recomputed")

    with monkeypatch.context() as m:
        m.setattr(mcref, "estimate", no_sampling)  # neither the pilot nor the samples may run
        b = mc_reference(p, rel_error=0.1, seed=0, cache_dir=tmp_path)
    assert b.from_cache and torch.equal(a.gradient, b.gradient) and b.samples == a.samples
    assert b.estimator == a.estimator and torch.equal(a.noise.batch_dev, b.noise.batch_dev)
    changed = p.with_params({k: v * 1.01 for k, v in p.params.items()})
    assert not mc_reference(changed, estimator=a.estimator, samples=a.samples, seed=0,
                            cache_dir=tmp_path).from_cache
    other = "reinforce" if a.estimator != "reinforce" else "disarm"
    c = mc_reference(p, estimator=other, samples=a.samples, seed=0, cache_dir=tmp_path)
    assert not c.from_cache and not torch.equal(c.gradient, a.gradient)
    assert not mc_reference(p, estimator=a.estimator, samples=a.samples, seed=1,
                            cache_dir=tmp_path).from_cache
    with monkeypatch.context() as m:  # another random stream: the same seed gives other samples
        from sbn_bench import model

        m.setattr(model, "STREAM_VERSION", model.STREAM_VERSION + 1)
        assert not mc_reference(p, estimator=a.estimator, samples=a.samples, seed=0,
                                cache_dir=tmp_path).from_cache
        planned = []  # nor is the plan (the pilot's choice of R and N) reused
        m.setattr(mcref, "_write_plan", lambda *args, **kw: planned.append(args))
        mc_reference(p, rel_error=0.1, seed=0, cache_dir=tmp_path)
        assert planned
    # a plan edited by hand (a biased R, too few samples) is made again, not trusted
    for f in (tmp_path / "mcref").glob("plan-*.json"):
        d = json.loads(f.read_text())
        f.write_text(json.dumps({**d, "estimator": "psa", "samples": 3}))
    again = plan_reference(p, rel_error=0.1, seed=0, cache_dir=tmp_path)
    # made again by a new pilot (whose timings may choose another R than the first)
    assert again.estimator in {e.spec for e in mcref.candidate_estimators(p)}
    assert again.samples >= 64 and again.pilot
    # a damaged file is recomputed, not trusted
    for f in (tmp_path / "mcref").glob("reference-*.pt"):
        f.write_bytes(b"not a tensor file")
    d = mc_reference(p, estimator=a.estimator, samples=a.samples, seed=0, cache_dir=tmp_path)
    assert not d.from_cache and torch.equal(d.gradient, a.gradient)


def test_a_run_with_the_mc_reference_reuses_it_the_second_time(tmp_path: Path) -> None:
    base = dict(problems=(ProblemSpec(arch="2-3-3-1", data_points=10),), estimators=("st", "arm"),
                samples=50, M=(1, 5), throughput=ThroughputConfig(enabled=False),
                reference="mc", reference_rel_error=0.1, reference_cache=str(tmp_path / "cache"))
    r1 = runner.run(RunConfig(**base, out=str(tmp_path / "a")))
    r2 = runner.run(RunConfig(**base, out=str(tmp_path / "b")))
    assert r1.failures.empty and not r1.metrics.empty
    rec1, rec2 = r1.manifest["references"][0], r2.manifest["references"][0]
    assert rec1["kind"] == "mc" and rec1["from_cache"] is False and rec2["from_cache"] is True
    assert rec1["reference"] == rec2["reference"] and math.isfinite(rec1["rel_error"])
    assert (Path(tmp_path / "a" / "metrics.csv").read_bytes()
            == Path(tmp_path / "b" / "metrics.csv").read_bytes())
    assert set(r1.metrics["reference"]) == {rec1["reference"]}


# --------------------------------------------------------------------------------------------
# the option, the schema


@pytest.mark.parametrize("text, parsed", [
    ("exact", ("exact", None, None)), ("auto", ("auto", None, None)), ("mc", ("mc", None, None)),
    ("mc:disarm", ("mc", "disarm", None)), ("mc:disarm:5000", ("mc", "disarm", 5000)),
    ("mc::300", ("mc", None, 300)), ("mc:reinforce-loo:k=4:20000", ("mc", "reinforce-loo:k=4", 20000)),
    ("mc:reinforce-loo:k=4", ("mc", "reinforce-loo:k=4", None)),
])
def test_reference_specs_parse(text, parsed) -> None:
    assert parse_reference(text) == parsed


@pytest.mark.parametrize("value, words", [
    ("exakt", ["'exakt' is not one of exact, auto, mc"]),
    ("mc:5000", ["is a number, not an estimator", "mc::5000"]),
    ("mc:disarm:1", ["N=1 samples"]),
    ("monte-carlo", ["is not one of"]),
    ("mc::\u00b2", ["is not an estimator spec"]),  # '²'.isdigit(): int() raised a raw ValueError
])
def test_bad_reference_values_are_refused(tmp_path: Path, value: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig(problems=(ProblemSpec(arch="2-2-1"),), reference=value)
    assert all(w in str(err.value) for w in words) and err.value.argument == "reference"
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", "--arch", "2-2-1", "--reference", value, "--out",
                                    str(out), "--no-report"], prog_name="sbn-bench")
    assert res.exit_code == 2 and "Invalid value for '--reference'" in res.output, res.output
    assert all(w in " ".join(res.output.split()) for w in words), res.output
    assert not out.exists()


def test_library_refusals_of_the_reference_are_one_line_errors(tmp_path: Path) -> None:
    small = ["run", "--arch", "2-2-1", "--data-points", "3", "--samples", "8", "--M", "1,2",
             "--no-throughput", "--no-report", "--quiet", "--reference-cache", str(tmp_path / "c")]
    for extra, words in ((["--reference", "mc:st"], ["is biased"]),
                         (["--reference", "mc:reinforce", "--reference-rel-error", "0.0001",
                           "--reference-time-budget", "1"], ["time budget", "mc:reinforce:N"])):
        out = tmp_path / "out"
        res = CliRunner().invoke(main, [*small, *extra, "--out", str(out)], prog_name="sbn-bench")
        # a value of --reference (or its budget) refused: that option's usage error
        assert res.exit_code == 2 and "Error: Invalid value for '--reference" in res.output, res.output
        text = " ".join(res.output.split())
        assert "Traceback" not in res.output and all(w in text for w in words), res.output
        assert not out.exists()


def test_the_schema_names_the_reference_and_old_runs_still_load(tmp_path: Path) -> None:
    assert schema.SCHEMA_VERSION == 3
    assert schema.METRICS_COLUMNS[-2:] == ["reference", "reference_rel_error"]
    assert "reference" in schema.TEXT_COLUMNS and "reference_cosine" in schema.METRICS
    # a version-2 metrics.csv (no reference columns) loads, as the exact reference
    from sbn_bench.reports.load import load_run

    old = Path(__file__).parent / "data" / "run_a"
    header = (old / "metrics.csv").read_text(encoding="utf-8").splitlines()[0]
    assert "reference" not in header
    run = load_run(old)
    assert set(run.metrics["reference"]) == {"exact"} and (run.metrics["reference_rel_error"] == 0).all()


def test_exact_reference_rows_are_unchanged_but_for_the_new_columns(tmp_path: Path) -> None:
    # --reference exact and auto on a small net: the same file, exact rows, ε = 0, and no
    # reference_cosine rows (byte-identical values to the schema-2 runner, see README)
    base = dict(problems=(ProblemSpec(arch="2-3-2-1", data_points=5),), estimators=("psa", "arm"),
                samples=40, M=(1, 4), throughput=ThroughputConfig(enabled=False))
    a = runner.run(RunConfig(**base, out=str(tmp_path / "a"), reference="exact"))
    runner.run(RunConfig(**base, out=str(tmp_path / "b")))
    assert ((tmp_path / "a" / "metrics.csv").read_bytes()
            == (tmp_path / "b" / "metrics.csv").read_bytes())
    assert set(a.metrics["reference"]) == {"exact"} and (a.metrics["reference_rel_error"] == 0).all()
    assert "reference_cosine" not in set(a.metrics["metric"])
    assert a.manifest["references"] == [{"problem": "arch-2-3-2-1-seed0", "checkpoint": "init",
                                         "kind": "exact"}]


def test_exact_reference_values_are_those_of_the_schema2_runner(tmp_path: Path) -> None:
    """tests/golden/exact_reference_schema2_metrics.csv was written by the runner before the
    Monte-Carlo reference existed (schema 2), with this configuration: the same rows once the two
    new columns are left out, byte for byte on the kind of processor that wrote it (an AMD EPYC);
    on another, torch's kernels round differently in the last bits (README, "Reproducible"), so
    the values agree to rounding: relative 1e-6 (measured on an Intel Xeon: 1.6e-9; standard
    errors 1e-4, measured 4.2e-6 for a percentile's), or 1e-14
    absolute for the round-off-level biases of unbiased layers (1e-15 there), where a change of
    the statistics or of the samples drawn moves them by percents."""
    golden = Path(__file__).parent / "golden" / "exact_reference_schema2_metrics.csv"
    cfg_ = RunConfig(problems=(ProblemSpec(arch="2-3-3-1", data_points=20),),
                     estimators=("psa", "arm", "tanh"), samples=100, M=(1, 10),
                     throughput=ThroughputConfig(enabled=False), out=str(tmp_path / "run"))
    runner.run(cfg_)
    lines = (tmp_path / "run" / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0].endswith(",reference,reference_rel_error")
    assert all(line.endswith(",exact,0.0") for line in lines[1:])
    stripped = [lines[0].removesuffix(",reference,reference_rel_error")]
    stripped += [line.removesuffix(",exact,0.0") for line in lines[1:]]
    want = golden.read_text(encoding="utf-8").splitlines()
    if stripped == want:
        return  # byte for byte (the processor kind that wrote the golden file)
    ours = pd.read_csv(io.StringIO("\n".join(stripped)))
    gold = pd.read_csv(golden)
    numeric = ["value", "stderr"]
    assert list(ours.columns) == list(gold.columns) and len(ours) == len(gold)
    text = [c for c in gold.columns if c not in numeric]
    assert ours[text].astype(str).equals(gold[text].astype(str))
    # the standard errors built on se(‖β‖²~) of Monte-Carlo rows changed on purpose on 4 December
    # 2026 (tr(C_b²) by an unbiased estimator, metrics.stats.tr_cov_sq): 1.4 % at most here
    sq_based = (gold["mode"] == "mc") & gold["metric"].isin(["bias_norm", "rel_bias", "mse", "rrmse",
                                                           "samples_to_accuracy"])
    for c, rtol in (("value", 1e-6), ("stderr", 1e-4)):  # a percentile's s.e. amplifies: 4e-6
        a, b = ours[c].to_numpy(float), gold[c].to_numpy(float)
        assert (np.isnan(a) == np.isnan(b)).all(), c
        tol = np.where(sq_based, 0.03, rtol) if c == "stderr" else rtol
        with np.errstate(invalid="ignore"):  # inf − inf
            ok = (a == b) | np.isnan(b) | (np.abs(a - b) <= tol * np.maximum(abs(a), abs(b)) + 1e-14)
        assert ok.all(), gold[~ok].assign(ours=a[~ok])


def test_the_recorded_group_epsilons_are_those_of_the_rows() -> None:
    """``group_rel_errors`` (the manifest's "ε reached" per group) gave a finite ε for a group
    whose corrected ‖g‖² was positive but not significantly so, where the rows say ∞; there the
    true error was several times the stated one. Both now follow :func:`corrected_norm`: a coarse
    REINFORCE reference (N = 50) leaves the hidden layers unresolved and resolves the output."""
    p = random_problem("2-4-4-4-1", 0, data_points=20)
    ref = mc_reference(p, estimator="reinforce", samples=50, seed=0)
    groups = Groups.of(p.params)
    acc = mt.MomentAccumulator(8, groups.dim, batches=4)
    acc.update(ref.gradient + torch.randn(8, groups.dim, dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(0)))
    rows = mt.mc_group_stats(acc.result(), ref.gradient, groups, noise=ref.noise)
    eps = ref.group_rel_errors()
    assert eps.keys() == rows.keys()
    for name, st in rows.items():
        assert eps[name] == pytest.approx(st.reference_rel_error, rel=1e-12), name
    assert math.isinf(eps["1"]) and math.isfinite(eps["out"]) and math.isfinite(eps["all"])


@pytest.mark.slow
def test_the_layers_target_brings_every_layer_to_epsilon() -> None:
    p = random_problem("2-4-4-4-1", 0, data_points=20)
    net = plan_reference(p, rel_error=0.1, estimator="disarm", seed=0)
    lay = plan_reference(p, rel_error=0.1, estimator="disarm", seed=0, target="layers")
    assert net.group == "all" and lay.group != "all" and lay.samples > net.samples
    ref = mc_reference(p, plan=lay, seed=0)
    eps = ref.group_rel_errors()
    # N was set from the pilot (±30 % on ‖g‖²): every group near or below the target
    assert max(eps.values()) < 0.1 * 1.6, eps
    with pytest.raises(McReferenceError, match="reference_target='each'"):
        plan_reference(p, target="each")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_mc_reference_on_cuda_agrees_with_the_cpu_within_its_error(tmp_path: Path) -> None:
    p = random_problem("2-4-4-4-1", 0, data_points=20)
    g = flat_exact(p)
    ref = mc_reference(p, estimator="disarm", samples=2000, seed=0, device="cuda",
                       cache_dir=tmp_path)
    assert ref.gradient.device.type == "cpu" and ref.gradient.dtype == torch.float64
    z = (ref.gradient - g) / (ref.variance / ref.samples).sqrt()
    assert float(z.abs().max()) <= z_bound(z.numel())
    res = runner.run(RunConfig(problems=(ProblemSpec(arch="2-4-4-4-1", data_points=20),),
                               estimators=("st", "arm"), samples=200, M=(1, 10), device="cuda",
                               reference="mc", reference_rel_error=0.05,
                               reference_cache=str(tmp_path / "c"),
                               throughput=ThroughputConfig(enabled=False),
                               out=str(tmp_path / "run")))
    assert res.failures.empty and res.metrics["reference"].str.startswith("mc:").all()


def test_a_resumed_run_keeps_its_reference(tmp_path: Path, monkeypatch) -> None:
    # the new cells of a resumed run use the R and N the finished ones did: no pilot runs again
    # (its timings could choose another R), even without the cache (another folder here)
    base = dict(problems=(ProblemSpec(arch="2-3-3-1", data_points=10),), estimators=("st", "arm"),
                seeds=(0, 1), samples=50, M=(1, 5), throughput=ThroughputConfig(enabled=False),
                reference="mc", reference_rel_error=0.1, out=str(tmp_path / "run"))

    class Stop(Exception):
        pass

    def stop(cell) -> None:
        raise Stop

    with pytest.raises(Stop):
        runner.run(RunConfig(**base, reference_cache=str(tmp_path / "c1")), on_cell_done=stop)
    first = pd.read_csv(next((tmp_path / "run" / "cells").glob("*.metrics.csv")), comment="#")
    def no_pilot(*args, **kw):
        raise AssertionError("the resumed run chose its reference again")

    monkeypatch.setattr(runner, "plan_reference", no_pilot)
    res = runner.run(RunConfig(**base, reference_cache=str(tmp_path / "c2"), resume=True))
    assert res.failures.empty and res.cells_skipped == 1 and res.cells_run == 3
    assert set(res.metrics["reference"]) == set(first["reference"])

"""Numerical robustness: saturated units, extreme logits and float32 give finite
results or a recorded failure, never a silent NaN in a table.

A *saturated* net has its weights and biases multiplied by 1000, so pre-activations reach
``|a| ~ 10³``: ``F(a)`` is 0 or 1 to machine precision, whole layers have an exact gradient of
exactly zero, and others one far below ``1e-154`` (whose square underflows float64).

Conventions checked here (``sbn_bench.metrics``): ``x/0 = ∞`` and ``0/0 = 0`` for the relative
errors, ``cos(0, g) = 0``, ``cos(·, 0)`` undefined (NaN); the only NaN values in ``metrics.csv`` are
those of :data:`sbn_bench.metrics.NAN_VALUES`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from sbn_bench import metrics as mt
from sbn_bench import problems, runner
from sbn_bench.config import ProblemSpec, RunConfig, ThroughputConfig
from sbn_bench.estimators import estimate, load_registry
from sbn_bench.estimators.builtin import BUILTINS
from sbn_bench.reference import exact_gradient
from sbn_bench.runner import cells

REG = load_registry()
LOSS_ARCH = {"logistic": "2-4-3-1", "softmax": "2-3-3-3", "mse": "2-3-3-2"}


def saturated(scale: float, noise: str, loss: str = "logistic", seed: int = 0) -> problems.Problem:
    p = problems.random_problem(LOSS_ARCH[loss], seed, data_points=6, loss=loss, noise=noise)
    return p.with_params({k: v * scale for k, v in p.params.items()})


def extreme_logits(noise: str, loss: str) -> problems.Problem:
    """Ordinary hidden layers, output weights and biases ×10⁴: |η| ~ 10⁴."""
    p = problems.random_problem(LOSS_ARCH[loss], 1, data_points=6, loss=loss, noise=noise)
    return p.with_params({k: v * (1e4 if k.endswith("_out") else 1.0) for k, v in p.params.items()})


CASES = [(f"sat{s:g}-{n}-{lo}", lambda s=s, n=n, lo=lo: saturated(s, n, lo))
         for s in (40.0, 1000.0) for n in ("logistic", "gaussian") for lo in LOSS_ARCH]
CASES += [(f"logits-{n}-{lo}", lambda n=n, lo=lo: extreme_logits(n, lo))
          for n in ("logistic", "gaussian") for lo in ("logistic", "softmax")]


@pytest.mark.parametrize("name, make", CASES, ids=[c[0] for c in CASES])
def test_every_builtin_estimate_and_the_reference_are_finite(name, make):
    p = make()
    J, grad = exact_gradient(p)
    assert math.isfinite(J)
    for k, v in grad.items():
        assert torch.isfinite(v).all(), f"reference gradient {k} not finite on {name}"
    checked = 0
    for est_name in BUILTINS:
        est = REG.create(est_name)
        if not est.supports(p):
            continue
        for dtype in (torch.float32, torch.float64):
            out = estimate(est, p.to(dtype=dtype), 16, torch.Generator().manual_seed(3))
            for k, v in out.items():
                bad = int((~torch.isfinite(v)).sum())
                assert bad == 0, f"{est_name} {dtype} on {name}: {bad} non-finite entries in {k}"
            checked += 1
    assert checked >= 18  # 9 estimators support gaussian noise, 11 logistic; two dtypes each


# --------------------------------------------------------------------------------------------
# runs on saturated nets: no undocumented NaN


def _layer_norms(p: problems.Problem) -> dict[str, float]:
    """‖g‖ per layer group by an independent, underflow-free computation (scaled by max |g|)."""
    _, grad = exact_gradient(p)
    out = {}
    for layer in [*map(str, range(1, p.n_layers + 1)), "out"]:
        v = torch.cat([grad[f"weight_{layer}"].flatten(), grad[f"bias_{layer}"].flatten()])
        m = float(v.abs().max())
        out[layer] = 0.0 if m == 0 else m * float((v / m).norm())
    return out


@pytest.mark.parametrize("noise, dtype", [  # one in the default run, the others with -m slow
    pytest.param("logistic", "float32", marks=pytest.mark.slow),
    pytest.param("logistic", "float64", marks=pytest.mark.slow),
    ("gaussian", "float32"), pytest.param("gaussian", "float64", marks=pytest.mark.slow)])
def test_saturated_run_writes_no_undocumented_nan(tmp_path, noise, dtype):
    p = saturated(1000.0, noise)
    path = problems.save_problem(p, tmp_path / "sat.npz")
    ests = tuple(n for n in BUILTINS if REG.create(n).supports(p))
    runner.run(RunConfig(problems=(ProblemSpec(file=str(path)),), estimators=ests, samples=32,
                         M=(1, 4), dtype=dtype, out=str(tmp_path / "run"),
                         throughput=ThroughputConfig(rounds=1, warmup=0, batch=4)))
    m = pd.read_csv(tmp_path / "run" / "metrics.csv", dtype={"layer": str})
    failed = set(pd.read_csv(tmp_path / "run" / "failures.csv")["estimator"])
    assert set(m["estimator"]) | failed == set(REG.create(e).spec for e in ests)
    norms = _layer_norms(p)
    # the case is what it claims: hidden layers' gradients vanish (exactly, for gaussian noise)
    assert min(norms.values()) < 1e-70 and max(norms.values()) > 0.1
    assert (min(norms.values()) == 0.0) == (noise == "gaussian")
    nan = m[m["value"].isna()]
    for _, r in nan.iterrows():
        assert r["metric"] in mt.NAN_VALUES, f"undocumented NaN: {r.to_dict()}"
        if r["metric"].startswith("cosine"):
            assert norms.get(r["layer"], 1.0) == 0.0, r.to_dict()
    # every cosine of a layer with ‖g‖ = 0 is NaN, every other one a number in [−1, 1]
    cos = m[m["metric"].str.startswith("cosine")]
    zero = cos["layer"].map(lambda lay: norms.get(lay) == 0.0)
    assert zero.any() == (noise == "gaussian") and (~zero).any()  # no vacuous half
    assert cos.loc[zero, "value"].isna().all()
    assert cos.loc[~zero, "value"].between(-1, 1).all()
    # relative errors where ‖g‖ = 0: 0 for an exactly right estimator, otherwise ∞
    rel = m[m["metric"].isin(["rrmse", "rel_bias"]) & m["layer"].map(lambda x: norms.get(x) == 0)]
    assert (len(rel) > 0) == (noise == "gaussian") and rel["value"].isin([0.0, math.inf]).all()
    # and where ‖g‖ is tiny but not zero, relative errors are numbers (1 for a zero estimate):
    # the logistic cases (gaussian noise has no such layer: its vanishing gradients are exactly 0,
    # checked above)
    tiny = m[(m["metric"] == "rrmse") & m["layer"].map(lambda x: 0 < norms.get(x, 1) < 1e-70)]
    assert (len(tiny) > 0) == (noise == "logistic"), tiny
    assert tiny["value"].notna().all()
    assert ((tiny["value"] > 0) | (tiny["estimator"] == "exact")).all()  # only exact has no error
    timed = pd.read_csv(tmp_path / "run" / "timed_metrics.csv")
    assert timed["value"].notna().all()


def test_tiny_nonzero_gradients_keep_their_relative_error(tmp_path):
    """Layer 1 of this chain is saturated at a = 400: its exact gradient is ~1e-174 (its square
    underflows). ``tanh`` is deterministic, so its rrmse is ‖ĝ − g‖/‖g‖, computed here with explicit
    scaling; the run must report the same (without scaling it reported 0 or ∞)."""
    p = problems.random_problem("1-1-1-1", 0, data_points=3)
    p = p.with_params({**p.params, "weight_1": torch.zeros(1, 1, dtype=torch.float64),
                       "bias_1": torch.full((1,), 400.0, dtype=torch.float64)})
    _, grad = exact_gradient(p)
    g1 = torch.cat([grad["weight_1"].flatten(), grad["bias_1"].flatten()])
    assert 0 < float(g1.abs().max()) < 1e-160
    est = estimate(REG.create("tanh"), p, 1, torch.Generator())
    e1 = torch.cat([est["weight_1"][0].flatten(), est["bias_1"][0].flatten()])
    s = 2.0**-570
    expected = float((e1 / s - g1 / s).norm() / (g1 / s).norm())
    res = runner.run(RunConfig(problems=(ProblemSpec(file=str(problems.save_problem(
        p, tmp_path / "chain.npz"))),), estimators=("tanh", "psa"), samples=64, M=(1,),
        throughput=ThroughputConfig(enabled=False), out=str(tmp_path / "run")))
    m = res.metrics.set_index(["estimator", "layer", "metric", "M"])["value"]
    assert m[("tanh", "1", "rrmse", 1)] == pytest.approx(expected, rel=1e-12)
    assert 0 < m[("tanh", "1", "rrmse", 1)] < math.inf
    assert math.isfinite(m[("psa", "1", "rrmse", 1)])  # a number, neither 0/0 nor ∞


# --------------------------------------------------------------------------------------------
# the metric functions


def test_relative_errors_of_zero_gradients():
    assert mt.rrmse(0.0, 0.0) == 0.0 and mt.rrmse(1e-300, 0.0) == math.inf
    assert mt.samples_to_accuracy(0.0, 0.0, 0.0, 0.1) == 0.0
    assert mt.samples_to_accuracy(0.0, 1.0, 0.0, 0.1) == math.inf
    assert math.isnan(mt.rrmse(math.nan, 1.0))  # NaN in, NaN out (the runner's guard sees it)
    gs = {"1": mt.GroupStats(0.0, 0.0, 0.0, 0.0, 0.0, math.nan, 0.0),
          "all": mt.GroupStats(0.0, 0.04, 0.0, 0.0, 0.0, 1.0, 0.0)}
    rows = {(r["layer"], r["metric"], r["M"]): r for r in
            mt.metric_rows(gs, [1], {1: np.array([[math.nan, math.nan]])}, mode="exact",
                           cosine_mode="exact", target_rrmse=0.1)}
    assert rows[("1", "rrmse", 1)]["value"] == 0.0 and rows[("1", "rel_bias", None)]["value"] == 0.0
    assert rows[("all", "rrmse", 1)]["value"] == math.inf
    assert rows[("all", "samples_to_accuracy", None)]["value"] == math.inf
    bad = mt.undocumented_nans(list(rows.values()), gs)
    assert bad == []  # NaN cosines where ‖g‖ = 0 and a NaN SNR are documented
    gs["all"] = mt.GroupStats(1.0, 0.04, 0.0, 0.0, 0.0, 1.0, 0.0)  # ‖g‖ ≠ 0: NaN cosine is not
    assert mt.undocumented_nans(list(rows.values()), gs) == ["cosine_mean NaN (layer all, M=1)",
                                                             "cosine_p15 NaN (layer all, M=1)",
                                                             "cosine_p85 NaN (layer all, M=1)"]


def _params_321() -> dict[str, torch.Tensor]:
    return {"weight_1": torch.zeros(3, 2), "bias_1": torch.zeros(3), "weight_2": torch.zeros(2, 3),
            "bias_2": torch.zeros(2), "weight_out": torch.zeros(1, 2), "bias_out": torch.zeros(1)}


def test_cosines_of_zero_and_extreme_vectors():
    groups = mt.Groups.of(_params_321())
    g = torch.linspace(-1, 1, groups.dim, dtype=torch.float64) + 0.01
    v = torch.stack([g, torch.zeros_like(g), -g * 1e300, g * 1e-300]).clone()
    c = mt.cosines(v, g, groups)
    torch.testing.assert_close(c[0], torch.ones_like(c[0]), rtol=0, atol=1e-15)
    assert (c[1] == 0).all()  # a zero estimate: no component along g
    torch.testing.assert_close(c[2], -torch.ones_like(c[2]), rtol=0, atol=1e-15)  # no overflow
    torch.testing.assert_close(c[3], torch.ones_like(c[3]), rtol=0, atol=1e-15)  # no underflow
    g0 = g.clone()
    g0[groups.slices[0]] = 0
    c0 = mt.cosines(v, g0, groups)
    assert c0[:, 0].isnan().all() and not c0[:, 1:].isnan().any()


def _stream_stats(x: torch.Tensor, g: torch.Tensor, groups: mt.Groups, scale=None):
    c = torch.ones_like(g) if scale is None else scale
    acc = mt.MomentAccumulator(x.shape[0], groups.dim, 4)
    acc.update(x / c)
    return mt.mc_group_stats(acc.result(), g / c, groups, scale)


def test_layer_scaling_is_exact_and_survives_underflow():
    """Scaling by powers of two per layer changes nothing in the normal range (bit for bit) and
    keeps every relative figure when the values are multiplied by 2^-600 (their squares, ~1e-361,
    underflow float64): without it, those figures are lost."""
    groups = mt.Groups.of(_params_321())
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(groups.dim, generator=gen, dtype=torch.float64)
    x = g + 0.7 * torch.randn(200, groups.dim, generator=gen, dtype=torch.float64)
    grid = [1, 10]

    def rows(x, g, scaled):
        scale = mt.layer_scales(g, groups, x) if scaled else None
        st = _stream_stats(x, g, groups, scale)
        return {(r["layer"], r["metric"], r["M"]): r["value"] for r in
                mt.metric_rows(st, grid, None, mode="mc", cosine_mode="mc", target_rrmse=0.1)}

    plain = rows(x, g, False)
    assert rows(x, g, True) == plain  # bit-identical in the normal range
    f = 2.0**-600
    tiny = rows(x * f, g * f, True)
    relative = ("rel_bias", "rrmse", "snr_median", "samples_to_accuracy")
    for k, v in plain.items():
        if k[1] in relative:
            assert tiny[k] == v, (k, tiny[k], v)
        elif k[1] == "bias_norm":
            assert tiny[k] == v * f, k
    naive = rows(x * f, g * f, False)
    assert any(naive[k] != plain[k] for k in plain if k[1] in relative)  # what scaling prevents


# --------------------------------------------------------------------------------------------
# the runner's guards


def _tiny_config(out, **kw) -> RunConfig:
    base = dict(problems=(ProblemSpec(arch="2-2-1", data_points=3),), estimators=("st", "arm"),
                samples=16, M=(1, 4), throughput=ThroughputConfig(enabled=False), out=str(out))
    base.update(kw)
    return RunConfig(**base)


def test_non_finite_reference_is_a_recorded_failure(tmp_path, monkeypatch):
    def nan_gradient(problem, max_bytes=None):
        J, grad = exact_gradient(problem)
        return J, {k: v * math.nan if k == "bias_1" else v for k, v in grad.items()}

    monkeypatch.setattr(cells, "exact_gradient", nan_gradient)
    res = runner.run(_tiny_config(tmp_path / "r"))
    assert res.metrics.empty
    assert set(res.failures["stage"]) == {"reference"}
    assert "not finite (NaN/Inf in bias_1)" in res.failures["error"].iloc[0]


def test_single_sample_monte_carlo_is_refused_up_front(tmp_path):
    with pytest.raises(runner.RunError, match=r"samples=1 but 1 .*× arm .*samples ≥ 2") as info:
        runner.run(_tiny_config(tmp_path / "r", samples=1, M=(1,), estimators=("arm", "tanh")))
    assert info.value.argument == "samples" and not (tmp_path / "r").exists()
    res = runner.run(_tiny_config(tmp_path / "t", samples=1, M=(1,), estimators=("tanh",)))
    assert set(res.metrics["estimator"]) == {"tanh"}  # exact with one sample: fine
    assert res.metrics["value"].notna().all()


def test_undocumented_nan_statistics_are_a_recorded_failure(tmp_path, monkeypatch):
    real = cells.metric_rows

    def poisoned(*a, **k):
        rows = real(*a, **k)
        rows[3]["value"] = math.nan  # the 4th row: layer 1's mse at M=1
        return rows

    monkeypatch.setattr(cells, "metric_rows", poisoned)
    res = runner.run(_tiny_config(tmp_path / "r", estimators=("st",)))
    assert res.metrics.empty
    (err,) = res.failures["error"]
    assert res.failures["stage"].item() == "metrics"
    assert "not finite in 1 row(s) (mse NaN (layer 1, M=1))" in err


def test_an_overflowing_variance_is_a_recorded_failure_not_inf(tmp_path):
    """Finite estimates near 1e200 have a variance near 1e400, beyond float64: the cell is a
    recorded failure (only relative errors, SNRs and sample counts may be infinite)."""
    from sbn_bench.estimators import Estimator

    huge = Estimator("huge", lambda p, q, g: (q["weight_1"].sum((1, 2)) * 1e200
                                             * (1 + torch.rand(q["weight_1"].shape[0],
                                                               generator=g, dtype=torch.float64))),
                     randomness="continuous", description="estimates near 1e200")
    problem = problems.random_problem("1-1-1", 0, data_points=2)
    g = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # weight_1, bias_1, weight_out, …
    with pytest.raises(cells.CellFailure, match=r"variance inf \(layer 1\)"):
        cells.stats_cell_rows(huge, problem, g, _tiny_config(tmp_path / "x", mode="mc", samples=8,
                                                             M=(1,), dtype="float64"), 0, "init")

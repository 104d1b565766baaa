"""The paper pipeline end to end on a reduced preset: training to checkpoints (cached), the run,
the manifest's timings, the report's claims section, and the claim logic on real results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from sbn_bench import paper, problems
from sbn_bench.reports import write_report

REDUCED = {**paper.TRAINING, "epochs": 6, "checkpoints": (1, 3, 6)}
ESTIMATORS = ["psa", "st", "reinforce", "arm", "tanh"]


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("run") / "paper"
    result = paper.run_paper(out=str(out), samples=200, estimators=ESTIMATORS, M=(1, 10, 100),
                             cache_dir=cache, training=REDUCED, mode="mc",
                             throughput=__import__("sbn_bench.config").config.ThroughputConfig(
                                 rounds=1, warmup=0))
    return out, cache, result


def test_pipeline_writes_results_training_and_timings(reduced_run) -> None:
    out, cache, result = reduced_run
    manifest = json.loads((out / "manifest.json").read_text())
    exp = manifest["experiment"]
    assert exp["name"] == "paper" and exp["training"]["epochs"] == 6
    assert exp["training"]["cached"] is False
    assert exp["timing"]["evaluation_s"] > 0 and exp["training"]["train_wall_s"] > 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["checkpoint"]) == {"epoch1", "epoch3", "epoch6"}
    assert set(metrics["estimator"]) == set(ESTIMATORS)
    assert (out / "training" / "train_log.csv").is_file()
    assert (out / "training" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the checkpoints are the trained parameters: epoch 6 differs from the initial problem
    ckpt = problems.load_problem(result.manifest["config"]["problems"][0]["checkpoints"][2][1])
    init = problems.paper_problem(0)
    assert any(not (ckpt.params[k] == init.params[k]).all() for k in init.params)


def test_second_run_reuses_cached_checkpoints(reduced_run, tmp_path: Path) -> None:
    _, cache, first = reduced_run
    again = paper.ensure_checkpoints(0, training=REDUCED, cache_dir=cache)
    assert again.cached is True
    assert [str(p) for p in again.paths.values()] == [
        c[1] for c in first.manifest["config"]["problems"][0]["checkpoints"]]
    # another training setting is another cache entry
    other = {**REDUCED, "lr": 0.01}
    assert paper._training_key(0, other) != paper._training_key(0, REDUCED)


def test_claims_are_decided_from_the_results(reduced_run) -> None:
    out, _, _ = reduced_run
    metrics = pd.read_csv(out / "metrics.csv")
    claims = paper.evaluate_claims(metrics)
    assert len(claims) == 7 and all(c.confirmed in (True, False, None) for c in claims)
    # every claim has enough data in this run to be decided
    assert all(c.confirmed is not None for c in claims), claims
    # the tanh verdict follows from the stored relative biases, recomputed here
    rb = metrics[(metrics.metric == "rel_bias") & (metrics.estimator == "tanh")
                 & metrics.layer.astype(str).str.isdigit()]
    first = rb[rb.checkpoint == "epoch1"].sort_values("layer")["value"].to_numpy()
    last = rb[rb.checkpoint == "epoch6"].sort_values("layer")["value"].to_numpy()
    assert claims[6].confirmed == bool((last >= paper.TANH_DEGRADE_RATIO * first).all())
    assert f"{first[0]:.3g}" in claims[6].evidence
    # psa-lowest: recompute the verdict by brute force over the table
    rr = metrics[(metrics.metric == "rrmse") & (metrics.M <= 100)
                 & metrics.layer.astype(str).str.isdigit()]
    beaten = False
    for _, g in rr.groupby(["checkpoint", "layer", "M"]):
        v = dict(zip(g.estimator, g.value))
        beaten |= any(x < v["psa"] for k, x in v.items() if k != "psa" and math.isfinite(x))
    assert claims[0].confirmed is (not beaten)


def test_report_has_claims_section(reduced_run) -> None:
    out, _, _ = reduced_run
    paths = write_report(out)
    md = paths["md"].read_text()
    assert "## The paper's claims" in md and "Where these checkpoints differ" in md
    assert md.count("| PSA has the lowest error") == 1
    html = paths["html"].read_text()
    assert "The paper&#x27;s claims" in html or "The paper's claims" in html
    assert "training loss curve" in html

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


def test_the_run_folder_keeps_its_checkpoints_and_the_report_links_inside(reduced_run) -> None:
    """The trained checkpoints are copied into the run's ``training/`` (the cache may be cleared),
    and ``report.md`` links only to files inside ``report/``."""
    import re

    out, _, _ = reduced_run
    for e in REDUCED["checkpoints"]:
        assert (out / "training" / f"checkpoint_epoch{e}.npz").is_file()
    md = write_report(out)["md"].read_text()
    links = re.findall(r"\]\(([^)]+)\)", md)
    assert links and all(not link.startswith(("..", "/")) for link in links), links


def test_a_damaged_training_cache_is_trained_again(reduced_run, tmp_path: Path) -> None:
    import shutil

    _, cache, _ = reduced_run
    mine = tmp_path / "cache"
    shutil.copytree(cache, mine)
    entry = next(p for p in mine.iterdir() if p.is_dir())
    (entry / "train_manifest.json").write_text("[1, 2]")  # valid JSON, not a training manifest
    notes: list[str] = []
    again = paper.ensure_checkpoints(0, training=REDUCED, cache_dir=mine, progress=notes.append)
    assert again.cached is False and any("damaged" in n for n in notes)
    assert json.loads((entry / "train_manifest.json").read_text())["kind"] == "sbn-bench train"


def test_ctrl_c_during_training_does_not_name_a_folder(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from sbn_bench.cli import main

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(paper, "ensure_checkpoints", interrupted)
    res = CliRunner().invoke(main, ["run", "--preset", "paper", "--out", str(tmp_path / "p")])
    assert res.exit_code == 130
    assert "before any result was written" in res.stderr and str(tmp_path / "p") not in res.stderr

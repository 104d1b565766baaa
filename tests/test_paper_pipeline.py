"""The paper pipeline end to end on a reduced preset: training to checkpoints (cached), the run,
the manifest's timings, the report's claims section, and the claim logic on real results."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from sbn_bench import paper, problems
from sbn_bench.config import ThroughputConfig
from sbn_bench.errors import ArgumentError
from sbn_bench.reports import load_run, write_report
from sbn_bench.reports.body import HeadlineSection
from sbn_bench.reports.markdown import render_blocks

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


def test_a_resume_adds_its_evaluation_time_to_the_earlier_sessions(reduced_run, tmp_path: Path
                                                                    ) -> None:
    """A resume that has nothing left to do keeps the evaluation time of the session that did the
    work (it was replaced by the resume's second or so)."""
    out, cache, _ = reduced_run
    copy = tmp_path / "paper"
    shutil.copytree(out, copy)
    before = json.loads((copy / "manifest.json").read_text())["experiment"]["timing"]
    res = paper.run_paper(out=str(copy), samples=200, estimators=ESTIMATORS, M=(1, 10, 100),
                          cache_dir=cache, training=REDUCED, mode="mc", resume=True, report=False,
                          throughput=ThroughputConfig(rounds=1, warmup=0))
    assert res.cells_run == 0 and res.cells_skipped > 0
    after = json.loads((copy / "manifest.json").read_text())["experiment"]["timing"]
    assert after["evaluation_s"] == pytest.approx(before["evaluation_s"]
                                                  + after["evaluation_s_this_run"], abs=2e-3)
    assert after["evaluation_s"] > before["evaluation_s"] > 0


def test_the_closing_line_says_a_cached_training_time_is_not_this_runs(reduced_run) -> None:
    from sbn_bench.cli.run import paper_timing_line

    out, _, _ = reduced_run
    exp = json.loads((out / "manifest.json").read_text())["experiment"]
    train_s, eval_s = exp["training"]["train_wall_s"], exp["timing"]["evaluation_s"]
    fresh = paper_timing_line(exp)
    assert fresh.startswith(f"wall time: training {train_s:.0f} s, evaluation {eval_s:.0f} s")
    cached = paper_timing_line({**exp, "training": {**exp["training"], "cached": True}})
    assert f"training cached (it took {train_s:.0f} s when made)" in cached
    runs = [{**exp["training"]["runs"][0], "cached": c} for c in (True, False, True)]
    mixed = paper_timing_line({**exp, "training": {**exp["training"], "runs": runs},
                               "timing": {**exp["timing"], "training_s_this_run": 41.2}})
    assert "training 41 s (2 of 3 trainings cached)" in mixed  # not the cached ones' old times
    resumed = paper_timing_line({**exp, "timing": {"evaluation_s": 90.0,
                                                   "evaluation_s_this_run": 30.0}})
    assert resumed.endswith("evaluation 90 s (30 s in this session)")


def test_second_run_reuses_cached_checkpoints(reduced_run, tmp_path: Path) -> None:
    _, cache, first = reduced_run
    again = paper.ensure_checkpoints(0, training=REDUCED, cache_dir=cache)
    assert again.cached is True
    assert [str(p) for p in again.paths.values()] == [
        c[1] for c in first.manifest["config"]["problems"][0]["checkpoints"]]
    # another training setting is another cache entry
    other = {**REDUCED, "lr": 0.01}
    assert paper._training_key(0, other) != paper._training_key(0, REDUCED)


def test_checkpoints_of_another_random_stream_are_not_reused(reduced_run, monkeypatch) -> None:
    """A cache entry holds what the code trained then: once the sampling kernel draws other
    numbers from the same seed (model.STREAM_VERSION), the same settings are trained afresh."""
    from sbn_bench import model

    _, cache, _ = reduced_run
    key = paper._training_key(0, REDUCED)
    monkeypatch.setattr(model, "STREAM_VERSION", model.STREAM_VERSION + 1)
    assert paper._training_key(0, REDUCED) != key
    assert not (cache / f"paper-seed0-{paper._training_key(0, REDUCED)}").exists()


def test_claims_are_decided_from_the_results(reduced_run) -> None:
    out, _, _ = reduced_run
    metrics = pd.read_csv(out / "metrics.csv")
    claims = paper.evaluate_claims(metrics)
    assert len(claims) == 7 and all(c.verdict in paper.VERDICTS for c in claims)
    # every claim has enough data in this run to be decided (mc mode: every value has an error)
    assert all(c.verdict != "no data" for c in claims), claims
    # the tanh verdict follows from the stored relative biases and their errors, recomputed here
    rb = metrics[(metrics.metric == "rel_bias") & (metrics.estimator == "tanh")
                 & metrics.layer.astype(str).str.isdigit()].sort_values("layer")
    first, last = rb[rb.checkpoint == "epoch1"], rb[rb.checkpoint == "epoch6"]
    lo, hi = [], []
    for (b0, s0), (b1, s1) in zip(zip(first["value"], first["stderr"]), zip(last["value"], last["stderr"])):
        r = b1 / b0
        se = abs(r) * math.hypot(s0 / b0 if b0 else 0.0, s1 / b1 if b1 else 0.0)
        lo.append(r - paper.Z * se)
        hi.append(r + paper.Z * se)
    want = ("confirmed" if min(lo) >= paper.TANH_DEGRADE_RATIO else
            "not confirmed" if min(hi) < paper.TANH_DEGRADE_RATIO else "inconclusive")
    assert claims[6].verdict == want, (claims[6], lo, hi)
    assert f"{first['value'].iloc[0]:.3g}" in claims[6].evidence
    # psa-lowest: recompute the verdict by brute force over the table
    rr = metrics[(metrics.metric == "rrmse") & (metrics.M <= 100)
                 & metrics.layer.astype(str).str.isdigit()
                 & metrics.estimator.isin(paper.PAPER_ESTIMATORS)]
    beaten, undecided = False, False
    for _, g in rr.groupby(["checkpoint", "layer", "M"]):
        v = {e: (x, s) for e, x, s in zip(g.estimator, g.value, g.stderr)}
        p, sp = v["psa"]
        for k, (x, s) in v.items():
            if k == "psa" or not math.isfinite(x):
                continue
            u = math.hypot(s, sp)
            beaten |= x - p < -paper.Z * u
            undecided |= abs(x - p) <= paper.Z * u
    want = "not confirmed" if beaten else "inconclusive" if undecided else "confirmed"
    assert claims[0].verdict == want


def test_report_has_claims_section(reduced_run) -> None:
    out, _, _ = reduced_run
    paths = write_report(out)
    md = paths["md"].read_text()
    assert "## The paper's claims" in md and "Where these checkpoints differ" in md
    assert md.count("| PSA has the lowest error") == 1
    # the headline comes first, before the claims
    assert md.index("## Headline") < md.index("## The paper's claims") < md.index("## Across checkpoints")
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
    entry = next(p for p in mine.iterdir() if p.is_dir() and p.name.startswith("paper-seed0-"))
    (entry / "train_manifest.json").write_text("[1, 2]")  # valid JSON, not a training manifest
    notes: list[str] = []
    again = paper.ensure_checkpoints(0, training=REDUCED, cache_dir=mine, progress=notes.append)
    assert again.cached is False and any("damaged" in n for n in notes)
    assert json.loads((entry / "train_manifest.json").read_text())["kind"] == "sbn-bench train"
    # a checkpoint that no longer loads (cut off, overwritten) is a damaged cache too: it was a
    # fatal "not a readable .npz archive" that did not say the file was a cache entry
    ck = sorted(entry.glob("checkpoint_epoch*.npz"))[-1]
    ck.write_bytes(ck.read_bytes()[:100])
    notes.clear()
    third = paper.ensure_checkpoints(0, training=REDUCED, cache_dir=mine, progress=notes.append)
    assert third.cached is False
    assert any("damaged" in n and ck.name in n for n in notes), notes
    assert paper.ensure_checkpoints(0, training=REDUCED, cache_dir=mine).cached is True


def test_ctrl_c_during_training_does_not_name_a_folder(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from sbn_bench.cli import main

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(paper, "ensure_checkpoints", interrupted)
    res = CliRunner().invoke(main, ["run", "--preset", "paper", "--out", str(tmp_path / "p")])
    assert res.exit_code == 130
    assert "before any result was written" in res.stderr and str(tmp_path / "p") not in res.stderr


@pytest.fixture(scope="module")
def seeds_run(reduced_run, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """Two training seeds (seed 0 reused from the cache of ``reduced_run``)."""
    _, cache, _ = reduced_run
    out = tmp_path_factory.mktemp("seeds") / "paper"
    result = paper.run_paper(out=str(out), samples=64, estimators=["psa", "st", "arm", "tanh"], M=(1, 10),
                             cache_dir=cache, training=REDUCED, mode="mc", train_seeds=(0, 1),
                             report=False,
                             throughput=__import__("sbn_bench.config").config.ThroughputConfig(
                                 enabled=False))
    return out, result


def test_training_seeds_are_problems_of_one_run(seeds_run, reduced_run) -> None:
    out, result = seeds_run
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(pd.unique(metrics["problem"])) == ["paper-train0", "paper-train1"]
    exp = json.loads((out / "manifest.json").read_text())["experiment"]
    assert exp["train_seeds"] == [0, 1]
    runs = {r["train_seed"]: r for r in exp["training"]["runs"]}
    assert runs[0]["cached"] is True and runs[1]["cached"] is False  # seed 0 trained by reduced_run
    assert runs[0]["cache_dir"] != runs[1]["cache_dir"]
    assert exp["timing"]["total_s_with_training"] >= exp["timing"]["evaluation_s"] > 0
    for s in (0, 1):
        assert (out / "training" / f"train{s}" / "train_log.csv").is_file()
    # each seed's checkpoints are its own training: different parameters at the same epoch
    specs = {p["name"]: p for p in result.manifest["config"]["problems"]}
    a = problems.load_problem(specs["paper-train0"]["checkpoints"][2][1])
    b = problems.load_problem(specs["paper-train1"]["checkpoints"][2][1])
    assert any(not (a.params[k] == b.params[k]).all() for k in a.params)
    # seed 0's checkpoints are the single-seed run's (the same cached training)
    single = {p["name"]: p for p in reduced_run[2].manifest["config"]["problems"]}["paper"]
    assert specs["paper-train0"]["checkpoints"] == single["checkpoints"]


def test_report_counts_verdicts_over_training_seeds(seeds_run) -> None:
    out, _ = seeds_run
    metrics = pd.read_csv(out / "metrics.csv")
    by = paper.evaluate_claims_by_problem(metrics)
    run = load_run(out)  # the sections' blocks, rendered without drawing their figures
    md = render_blocks(HeadlineSection().blocks(run) + paper.ClaimsSection().blocks(run), out)
    header = next(line for line in md.splitlines() if line.startswith("| paper's claim"))
    assert "paper-train0" in header and "paper-train1" in header and "across training seeds" in header
    for i, claim in enumerate(by["paper-train0"]):
        row = next(line for line in md.splitlines() if line.startswith(f"| {claim.claim}"))
        verdicts = [by[p][i].verdict for p in ("paper-train0", "paper-train1")]
        assert paper.verdict_count(verdicts) in row, row
    assert "### Evidence · paper-train1" in md or "#### Evidence · paper-train1" in md
    assert "J, paper-train0" in md and "J, paper-train1" in md
    # the headline compares the seeds: the best estimator of each (checkpoint, layer) per seed
    assert "most often best" in md


def test_train_seeds_are_checked() -> None:
    for bad in ([], [1, 1], [-1], [0.5]):
        with pytest.raises(ArgumentError, match="train_seeds"):
            paper.check_train_seeds(bad)
    assert paper.check_train_seeds(range(3)) == (0, 1, 2)


PUBLISHED = Path(__file__).resolve().parents[1] / "reports"


@pytest.mark.parametrize("name", ["paper-5-5-5", "paper-all-estimators"])
def test_a_published_run_ships_the_config_of_its_checkpoints(name: str) -> None:
    """``checkpoints.toml`` of a published run names exactly the networks it measured (the
    manifest's fingerprints), under the same problem and checkpoint names (which seed the samples),
    with its estimators, samples and M grid: a run of it on another processor repeats the
    published statistics (README, "Reproducible"), where a training from scratch would not."""
    from sbn_bench.config import load_config

    folder = PUBLISHED / name
    man = json.loads((folder / "manifest.json").read_text())
    cfg = load_config(folder / "checkpoints.toml")
    got = {(p.name, label): p.fingerprint() for spec in cfg.problems for label, p in spec.load()}
    assert got == {(r["problem"], r["checkpoint"]): r["sha256"] for r in man["problems"]}
    assert list(cfg.estimator_specs) == man["config"]["estimators"]
    assert cfg.samples == man["config"]["samples"] and list(cfg.m_grid) == man["config"]["m_grid"]
    assert list(cfg.seeds) == man["seeds"] and cfg.dtype == man["config"]["dtype"]


def test_the_published_checkpoints_give_the_published_exact_statistics(tmp_path: Path) -> None:
    """On the published networks, exact-mode statistics repeat the published ones to rounding on
    any processor (bit for bit on the processor kind that made them): st at epoch 1 of
    paper-all-estimators. The tolerances are far below any change of the networks or of the
    estimator's mathematics, far above rounding (measured across processors: 2.5e-15)."""
    import dataclasses

    from sbn_bench import runner
    from sbn_bench.config import ThroughputConfig, load_config

    folder = PUBLISHED / "paper-all-estimators"
    cfg = load_config(folder / "checkpoints.toml", estimators=("st",), samples=4, M=(1,),
                      out=str(tmp_path / "again"), throughput=ThroughputConfig(enabled=False))
    spec = cfg.problems[0]
    cfg = cfg.with_(problems=(dataclasses.replace(spec, checkpoints=spec.checkpoints[:1]),))
    runner.run(cfg)
    ours = pd.read_csv(tmp_path / "again" / "metrics.csv")
    pub = pd.read_csv(folder / "metrics.csv")
    key = ["problem", "checkpoint", "estimator", "layer", "metric"]
    pick = ["variance", "rel_bias"]
    a = pub[(pub["estimator"] == "st") & pub["metric"].isin(pick) & (pub["checkpoint"] == "epoch1")]
    b = ours[ours["metric"].isin(pick)]
    m = a.merge(b, on=key, suffixes=("_pub", "_ours"))
    assert len(m) == len(a) == len(b) == 2 * 5 and set(m["mode_ours"]) == {"exact"}
    var = m[m["metric"] == "variance"]
    assert (abs(var["value_ours"] / var["value_pub"] - 1) < 1e-12).all()
    bias = m[m["metric"] == "rel_bias"]
    assert (abs(bias["value_ours"] - bias["value_pub"]) < 1e-10).all()
    assert bias["value_pub"].abs().max() > 0.01  # st is biased: the comparison is not of zeros

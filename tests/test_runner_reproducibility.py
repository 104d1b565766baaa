"""Reproducibility of runs.

* The same command, seed and device give a byte-identical ``metrics.csv`` on the CPU, also across
  processes with different hash seeds and with the throughput measured: every value there is a
  deterministic function of the samples (``samples_to_accuracy``), and the one metric that uses
  measured time (``time_to_accuracy_s``) is in ``timed_metrics.csv``.
* The manifest records everything needed to rerun: :func:`sbn_bench.runner.config_from_manifest`
  rebuilds the :class:`RunConfig` (relative paths resolved against the recorded working directory)
  and :func:`sbn_bench.runner.rerun` repeats the run to a byte-identical ``metrics.csv``.
* ``sbn-bench report --compare`` refuses runs whose problems, estimator versions or devices differ,
  naming the differing field.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from sbn_bench import problems, runner, schema
from sbn_bench.cli import main
from sbn_bench.config import Checkpoint, ProblemSpec, RunConfig, ThroughputConfig
from sbn_bench.reports import IncomparableRuns, compare_runs, load_run

ARGS = ["run", "--arch", "2-3-2-1", "--data-points", "4", "--samples", "64", "--M", "1,8",
        "--estimators", "psa,arm,concrete:tau=0.5,tanh", "--seeds", "0,3", "--rounds", "2",
        "--warmup", "0", "--throughput-batch", "16", "--no-report", "--quiet"]


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repro") / "a"
    res = CliRunner().invoke(main, [*ARGS, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow
def test_same_command_gives_byte_identical_metrics_across_processes(first, tmp_path):
    out = tmp_path / "b"
    code = "import sys; from sbn_bench.cli import main; main(sys.argv[1:])"
    proc = subprocess.run([sys.executable, "-c", code, *ARGS, "--out", str(out)],
                          env={**os.environ, "PYTHONHASHSEED": "12345", "CI": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (first / "metrics.csv").read_bytes() == (out / "metrics.csv").read_bytes()
    assert (first / "failures.csv").read_bytes() == (out / "failures.csv").read_bytes()
    # the measured figures live apart, row for row
    a, b = pd.read_csv(first / "timed_metrics.csv"), pd.read_csv(out / "timed_metrics.csv")
    keys = ["problem", "checkpoint", "estimator", "seed", "layer", "metric"]
    assert a[keys].equals(b[keys]) and set(a["metric"]) == set(schema.TIMED_METRICS)


def test_metrics_csv_holds_no_measured_time(first):
    m = pd.read_csv(first / "metrics.csv")
    assert set(m["metric"]) == set(schema.EXACT_REFERENCE_METRICS)
    assert not set(m["metric"]) & set(schema.TIMED_METRICS)
    t = pd.read_csv(first / "timed_metrics.csv")
    assert list(t.columns) == schema.METRICS_COLUMNS


def test_samples_and_time_to_accuracy_follow_spec(first):
    """M* = V / (t²‖g‖² − ‖β‖²) from the other rows of the same cell (‖g‖ = bias_norm / rel_bias),
    and time_to_accuracy_s = max(1, ⌈M*⌉) · the median seconds per sample of throughput.csv."""
    m = pd.read_csv(first / "metrics.csv")
    t = pd.read_csv(first / "timed_metrics.csv")
    tp = pd.read_csv(first / "throughput.csv").set_index("estimator")["seconds_per_sample"]
    target = json.loads((first / "manifest.json").read_text())["config"]["target_rrmse"]
    cell = ["estimator", "seed", "layer"]
    wide = m[m["M"].isna()].pivot_table(index=cell, columns="metric", values="value")
    checked = 0
    for (est, seed, layer), r in wide.iterrows():
        if not (r["rel_bias"] > 0 and math.isfinite(r["rel_bias"])):
            continue
        g2 = (r["bias_norm"] / r["rel_bias"]) ** 2
        den = target**2 * g2 - r["bias_norm"] ** 2
        expected = r["variance"] / den if den > 0 else math.inf
        assert r["samples_to_accuracy"] == pytest.approx(expected, rel=1e-9), (est, layer)
        tt = t[(t["estimator"] == est) & (t["seed"] == seed) & (t["layer"] == layer)]["value"]
        want = max(1, math.ceil(expected - 1e-12)) * tp[est] if math.isfinite(expected) else math.inf
        assert tt.item() == pytest.approx(want, rel=1e-9), (est, layer)
        checked += 1
    assert checked >= 10


def test_report_still_shows_time_to_accuracy(first, tmp_path):
    run = load_run(first)
    assert set(run.metrics["metric"]) == (set(schema.EXACT_REFERENCE_METRICS)
                                           | set(schema.TIMED_METRICS))
    assert not run.warnings, run.warnings
    res = CliRunner().invoke(main, ["report", str(first), "--out", str(tmp_path / "rep"),
                                    "--format", "md"])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if "time to rrmse ≤ 0.100 (s)" in line)
    col = header.split("|").index(" time to rrmse ≤ 0.100 (s) ")
    rows = md.split(header, 1)[1].splitlines()[2:6]  # the first table's first layer
    values = [r.split("|")[col].strip().strip("*") for r in rows]
    assert any(v[0].isdigit() for v in values), values  # the timed values reached the table


# --------------------------------------------------------------------------------------------
# rerun from the manifest


PLUGIN = textwrap.dedent('''
    from sbn_bench.estimators import Estimator
    from sbn_bench.estimators.builtin.straight_through import st


    def half_st():
        base = st()
        return Estimator("half-st", lambda p, q, g: 0.5 * base.surrogate(p, q, g),
                         randomness="continuous", version="{version}")


    ESTIMATORS = {{"half-st": half_st}}
''')


@pytest.mark.slow
def test_rerun_from_the_manifest_is_byte_identical(tmp_path, monkeypatch):
    """A run with relative paths (problem file, checkpoint, plugin, out) made in one folder is
    rebuilt and rerun from another folder, from nothing but its manifest."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    p = problems.random_problem("2-2-2-1", 5, data_points=3)
    problems.save_problem(p, work / "data" / "p.npz")
    problems.save_problem(p.with_params({k: v * 2 for k, v in p.params.items()}),
                          work / "data" / "late.npz")
    (work / "est.py").write_text(PLUGIN.format(version="1"))
    monkeypatch.chdir(work)
    cfg = RunConfig(problems=(ProblemSpec(file="data/p.npz", name="mine", checkpoints=(
                        Checkpoint("init"), Checkpoint("late", "data/late.npz"))),),
                    estimators=("psa", "half-st", "tanh"), plugins=("est.py",), samples=40,
                    M=(1, 4), seeds=(2,), throughput=ThroughputConfig(rounds=1, batch=4),
                    out="runs/first")
    runner.run(cfg)
    first = work / "runs" / "first"
    man = json.loads((first / "manifest.json").read_text())
    assert man["cwd"] == str(work) and man["plugins"][0]["sha256"]
    monkeypatch.chdir(tmp_path)  # elsewhere: relative paths must resolve through the manifest
    rebuilt = runner.config_from_manifest(first, out=tmp_path / "again")
    assert rebuilt.problems[0].file == str(work / "data" / "p.npz")
    assert rebuilt.plugins == (str(work / "est.py"),)
    assert rebuilt.to_dict() | {"out": None, "problems": None, "plugins": None} == \
        man["config"] | {"out": None, "problems": None, "plugins": None}
    res = runner.rerun(first, tmp_path / "again")
    assert res.failures.empty
    assert (first / "metrics.csv").read_bytes() == (tmp_path / "again" / "metrics.csv").read_bytes()
    assert len(pd.read_csv(first / "metrics.csv")) > 0
    # a plugin whose code changed since is refused: the rerun would not measure the same thing
    (work / "est.py").write_text(PLUGIN.format(version="2"))
    with pytest.raises(runner.RunError, match="est.py.*differs"):
        runner.rerun(first, tmp_path / "third")
    assert not (tmp_path / "third").exists()


def test_config_round_trips_through_its_dict():
    cfg = RunConfig(problems=(ProblemSpec(arch="2-3-1", seed=4, data_points=7, loss="logistic",
                                          noise="gaussian", name="x",
                                          checkpoints=(Checkpoint("init"), Checkpoint("b", "/b.npz"))),
                              ProblemSpec(preset="quick")),
                    estimators=("psa", "concrete:tau=0.1"), samples=33, M=(1, 3), seeds=(1, 9),
                    dtype="float32", mode="mc", chunk=5, memory_budget=12345, target_rrmse=0.2,
                    stderr_batches=4, cosine_groups=7,
                    throughput=ThroughputConfig(enabled=False, warmup=2, rounds=3, batch=4),
                    out="/o")
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# --------------------------------------------------------------------------------------------
# comparing runs that measured different things


def _run(out: Path, version: str = "1", seed: int = 0, plugin_dir: Path | None = None) -> Path:
    assert plugin_dir is not None
    plugin = plugin_dir / f"est_v{version}.py"
    plugin.write_text(PLUGIN.format(version=version))
    runner.run(RunConfig(problems=(ProblemSpec(arch="2-2-1", seed=seed, data_points=3, name="p"),),
                         estimators=("half-st", "st"), plugins=(str(plugin),), samples=16, M=(1,),
                         throughput=ThroughputConfig(rounds=1, batch=4), out=str(out)))
    return out


@pytest.mark.slow
def test_compare_refuses_real_runs_that_differ_and_says_what(tmp_path):
    base = _run(tmp_path / "base", plugin_dir=tmp_path)
    same = _run(tmp_path / "same", plugin_dir=tmp_path)
    compare_runs(load_run(same), load_run(base))  # comparable: no error
    cases = {
        "problem": (_run(tmp_path / "prob", seed=1, plugin_dir=tmp_path),
                    ["problem 'p' at checkpoint 'init' differs: fingerprint"]),
        "version": (_run(tmp_path / "ver", version="2", plugin_dir=tmp_path),
                    ["estimator 'half-st' version 2 (run) vs 1 (baseline)"]),
    }
    dev = tmp_path / "dev"
    import shutil

    shutil.copytree(same, dev)
    m = json.loads((dev / "manifest.json").read_text())
    m["device"] = {**m["device"], "type": "cuda", "name": "NVIDIA H100"}
    (dev / "manifest.json").write_text(json.dumps(m))
    here = json.loads((base / "manifest.json").read_text())
    cases["device"] = (dev, [f"device cuda NVIDIA H100 (run) vs cpu {here['device']['name']} "
                             "(baseline)"])
    for what, (run_dir, words) in cases.items():
        with pytest.raises(IncomparableRuns) as e:
            compare_runs(load_run(run_dir), load_run(base))
        for w in words:
            assert w in str(e.value), (what, str(e.value))
        res = CliRunner().invoke(main, ["report", str(run_dir), "--compare", str(base),
                                        "--out", str(tmp_path / f"rep-{what}")])
        assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
        assert all(w in res.output for w in words) and "--force" in res.output
        assert not (tmp_path / f"rep-{what}").exists()

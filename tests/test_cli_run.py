"""``sbn-bench run`` through click's CliRunner: help, small runs, resume, config files, and bad
arguments that must give one line naming the argument (no traceback)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from sbn_bench.cli import main
from sbn_bench.schema import METRICS_COLUMNS

SMALL = ["run", "--arch", "2-2-2-1", "--data-points", "3", "--samples", "40", "--M", "1,4",
         "--estimators", "psa,arm", "--no-throughput", "--no-report"]


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_help_lists_the_options():
    res = invoke(["run", "--help"])
    assert res.exit_code == 0
    for opt in ("--preset", "--config", "--estimators", "--plugin", "--samples", "--M", "--seeds",
                "--device", "--dtype", "--mode", "--max-paths", "--chunk", "--target-rrmse",
                "--out", "--resume", "--no-throughput", "--quiet", "[cpu|cuda]",
                "[auto|exact|mc]", "psa,st,reinforce,arm,concrete:tau=0.1,tanh"):
        assert opt in res.output, opt


def test_small_run_prints_summary_and_writes_files(tmp_path):
    out = tmp_path / "run"
    res = invoke([*SMALL, "--seeds", "0,1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "rrmse at M=1" in res.output and "arch-2-2-2-1-seed0" in res.output
    assert "psa" in res.output and "arm" in res.output and str(out) in res.output
    assert "cells" not in res.output.split("rrmse")[0]  # no progress bar when not a terminal
    for name in ("manifest.json", "metrics.csv", "throughput.csv", "failures.csv"):
        assert (out / name).is_file(), name
    m = pd.read_csv(out / "metrics.csv")
    assert list(m.columns) == METRICS_COLUMNS and set(m["seed"]) == {0, 1}
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["estimators"] == ["psa", "arm"] and man["seeds"] == [0, 1]
    # run again: refused without --resume, skipped with it
    res = CliRunner().invoke(main, [*SMALL, "--seeds", "0,1", "--out", str(out)])
    assert res.exit_code == 1 and "--resume" in res.output and "Traceback" not in res.output
    res = invoke([*SMALL, "--seeds", "0,1", "--out", str(out), "--resume"])
    assert res.exit_code == 0 and "0 cell(s) run, 4 skipped" in res.output
    # a resumed run may add (or leave out) seeds; it may not change how cells are measured
    res = invoke([*SMALL, "--seeds", "0,1,2", "--out", str(out), "--resume"])
    assert res.exit_code == 0 and "2 cell(s) run, 4 skipped" in res.output, res.output
    assert set(pd.read_csv(out / "metrics.csv")["seed"]) == {0, 1, 2}
    res = CliRunner().invoke(main, [*SMALL, "--seeds", "0,1", "--samples", "31", "--out", str(out),
                                    "--resume"])
    assert res.exit_code == 1 and "config.samples" in res.output, res.output


def test_resume_needs_only_the_output_folder(tmp_path):
    """``--out DIR --resume`` alone takes the run's configuration from its manifest; options given
    beside it extend it (or are refused, as for any resume); a --preset paper run is sent back to
    its own command."""
    out = tmp_path / "run"
    assert invoke([*SMALL, "--out", str(out)]).exit_code == 0
    res = invoke(["run", "--out", str(out), "--resume", "--no-report"])
    assert res.exit_code == 0 and "0 cell(s) run, 2 skipped" in res.output, res.output
    res = invoke(["run", "--out", str(out), "--resume", "--estimators", "psa,arm,tanh", "--no-report"])
    assert res.exit_code == 0 and "1 cell(s) run, 2 skipped" in res.output, res.output
    assert set(pd.read_csv(out / "metrics.csv")["estimator"]) == {"psa", "arm", "tanh"}
    res = CliRunner().invoke(main, ["run", "--out", str(out), "--resume", "--samples", "31"])
    assert res.exit_code == 1 and "config.samples: 40 → 31" in res.output, res.output
    man = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**man, "experiment": {"name": "paper"}}))
    res = CliRunner().invoke(main, ["run", "--out", str(out), "--resume"])
    assert res.exit_code == 2 and "holds a --preset paper run" in res.output, res.output
    for bad, says in (("[]", "a JSON array, not an object"), ("null", "a JSON null"),
                      ('{"config": {"problems": "x"}}', "cannot resume"),
                      ('{"experiment": 5, "config": 3}', "no 'config' object")):
        (out / "manifest.json").write_text(bad)
        res = CliRunner().invoke(main, ["run", "--out", str(out), "--resume"])
        # the file's content is at fault (exit 1), and options cannot stand in for it
        assert res.exit_code == 1 and says in res.output and "Traceback" not in res.output, res.output
        assert "restore it" in res.output and "--problem" not in res.output, res.output
    # without a manifest there is nothing to resume from: the problem options are asked for
    (tmp_path / "none").mkdir()
    res = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "none"), "--resume"])
    assert res.exit_code == 2 and "no manifest.json in" in res.output and "--problem" in res.output
    # a folder of other files: the problem options would be refused there too, so they are not
    # asked for (the two hints contradicted each other: attacker review)
    (tmp_path / "none" / "metrics.csv").write_text("x\n")
    res = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "none"), "--resume"])
    assert res.exit_code == 2 and "not an sbn-bench run folder: choose another --out" in res.output
    assert "--problem" not in res.output, res.output
    (tmp_path / "none" / "cells").mkdir()  # a run whose manifest was lost
    res = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "none"), "--resume"])
    assert res.exit_code == 2 and "its manifest.json is missing: restore it" in res.output, res.output


@pytest.mark.slow
def test_resume_from_the_manifest_adds_plugins_and_keeps_unnamed_throughput_settings(tmp_path):
    """A --plugin beside --out DIR --resume is added to the run's plugin files (the recorded ones
    stay); one throughput option replaces that option only, not the run's whole throughput
    settings."""
    plug = Path(__file__).resolve().parents[1] / "examples" / "reinforce_baseline.py"
    out = tmp_path / "run"
    args = ["run", "--arch", "2-2-1", "--data-points", "3", "--samples", "24", "--M", "1,4",
            "--plugin", str(plug), "--estimators", "st,reinforce-baseline", "--rounds", "1",
            "--throughput-batch", "8", "--warmup", "0", "--no-report", "--out", str(out)]
    assert invoke(args).exit_code == 0
    other = tmp_path / "other.py"
    other.write_text("import dataclasses\n"
                     "from sbn_bench.estimators.builtin.straight_through import st\n"
                     "ESTIMATORS = {'st-copy': lambda: dataclasses.replace(st(), name='st-copy')}\n")
    res = invoke(["run", "--out", str(out), "--resume", "--warmup", "0", "--plugin", str(other),
                  "--estimators", "st,reinforce-baseline,st-copy", "--no-report"])
    assert res.exit_code == 0 and "cell(s) run, 2 skipped" in res.output, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["plugins"] == [str(plug), str(other)]
    assert man["config"]["throughput"]["rounds"] == 1 and man["config"]["throughput"]["batch"] == 8
    # the run's plugin given again, spelt otherwise, is the same file (it clashed with itself)
    again = str(plug.parent / "." / plug.name)
    res = invoke(["run", "--out", str(out), "--resume", "--warmup", "0", "--plugin", again,
                  "--estimators", "st,reinforce-baseline,st-copy", "--no-report"])
    assert res.exit_code == 0 and "0 cell(s) run" in res.output, res.output
    # a bad option beside --resume is refused as itself (exit 2), not as a manifest problem
    res = CliRunner().invoke(main, ["run", "--out", str(out), "--resume", "--M", "5000"])
    assert res.exit_code == 2 and "Invalid value for '--M': [5000] has values above" in res.output, res.output
    assert "--problem" not in res.output, res.output


def test_quiet_prints_nothing(tmp_path):
    res = invoke([*SMALL, "--quiet", "--out", str(tmp_path / "q")])
    assert res.exit_code == 0 and res.output == ""


def test_default_out_is_runs_problem_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke([*SMALL, "--quiet"])
    assert res.exit_code == 0
    assert (tmp_path / "runs/arch-2-2-2-1-seed0/metrics.csv").is_file()


def test_seed_sets_problem_and_sampling_seed(tmp_path):
    res = invoke([*SMALL, "--seed", "3", "--quiet", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert man["seeds"] == [3] and man["config"]["problems"][0]["seed"] == 3


@pytest.mark.parametrize("args, words", [
    (["--samples", "0"], ["--samples", "0"]),
    (["--M", "1,x"], ["--M", "'1,x'"]),
    (["--M", "0,1"], ["--M", "≥ 1"]),
    (["--seeds", "a"], ["--seeds", "'a'"]),
    (["--device", "gpu"], ["--device", "'gpu'", "cpu", "cuda"]),
    (["--dtype", "half"], ["--dtype", "float32"]),
    (["--mode", "fast"], ["--mode", "auto"]),
    (["--memory-budget", "lots"], ["--memory-budget", "'lots'"]),
    (["--target-rrmse", "0"], ["--target-rrmse"]),
])
def test_bad_arguments_name_the_option(tmp_path, args, words):
    res = CliRunner().invoke(main, [*SMALL, *args, "--out", str(tmp_path / "x")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output, (w, res.output)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, code, words", [
    # a value of an option refused by the library is that option's usage error, as click's are
    (["--estimators", "psa,nope"], 2, ["Invalid value for '--estimators'", "'nope' is unknown"]),
    (["--estimators", "concrete:tua=1"], 2, ["'--estimators'", "'tua'", "'tau'"]),
    # nan and inf pass a range check (comparisons with nan are false): refused by the option's type
    (["--cell-timeout", "nan"], 2, ["Invalid value for '--cell-timeout': nan is not a finite number"]),
    (["--cell-timeout", "inf"], 2, ["'--cell-timeout': inf is not a finite number"]),
    (["--target-rrmse", "nan"], 2, ["'--target-rrmse': nan is not a finite number"]),
    (["--reference-rel-error", "nan"], 2, ["'--reference-rel-error': nan is not a finite number"]),
    # the library's message without its own name of the setting (the option is named already)
    (["--reference", "mc::0"], 2, ["Invalid value for '--reference': 'mc::0': N=0 samples"]),
    (["--memory-budget", "0"], 2, ["Invalid value for '--memory-budget': '0' must be at least 1 byte"]),
    # a negative size is below one byte, not "not a size" (new-user review)
    (["--memory-budget", "-3"], 2, ["Invalid value for '--memory-budget': '-3' must be at least 1 byte"]),
    # a Monte-Carlo reference over its time budget is the fault of a given N or target error too
    (["--reference", "mc::1000000000000000"], 2, ["Invalid value for '--reference'", "the given N=",
                                                  "over the time budget of 300 s"]),
    (["--reference", "mc", "--reference-rel-error", "1e-6"], 2, [
        "Invalid value for '--reference-rel-error'", "to reach a relative error of 1e-06"]),
    # a file named by an option that does not exist is a refused value (exit 2), as a folder is;
    # one that exists and is broken is an error of that file (exit 1)
    (["--plugin", "missing_plugin.py"], 2, ["Invalid value for '--plugin'", "missing_plugin.py",
                                            "does not exist"]),
])
def test_bad_values_give_one_line_error(tmp_path, args, code, words):
    res = CliRunner().invoke(main, [*SMALL, *args, "--out", str(tmp_path / "x")])
    assert res.exit_code == code, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    if code == 1:
        assert res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
    else:  # no Python spelling (cell_timeout=…) where the option is named
        assert args[0].removeprefix("--").replace("-", "_") + "=" not in res.output, res.output
    for w in words:
        assert w in res.output, (w, res.output)
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_without_cuda_is_refused_before_work(tmp_path):
    res = CliRunner().invoke(main, [*SMALL, "--device", "cuda", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "CUDA is not available" in res.output and "'--device'" in res.output
    assert not (tmp_path / "x").exists()


def test_problem_selection_errors(tmp_path):
    res = CliRunner().invoke(main, ["run", "--samples", "10"])
    assert res.exit_code == 2 and "exactly one of --problem" in res.output
    cfg = tmp_path / "c.toml"
    cfg.write_text("[[problem]]\npreset = 'quick'\n")
    res = CliRunner().invoke(main, ["run", "--config", str(cfg), "--preset", "quick"])
    assert res.exit_code == 2 and "--config" in res.output and "--preset" in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[[problem]]\npreset = 'quick'\nsamples = [\n")
    res = CliRunner().invoke(main, ["run", "--config", str(bad)])
    assert res.exit_code == 1 and "bad.toml" in res.output and "line" in res.output
    assert "Traceback" not in res.output


def test_config_file_with_overrides(tmp_path, monkeypatch):
    cfg = tmp_path / "exp.toml"
    cfg.write_text(textwrap.dedent("""
        estimators = ["st", "tanh"]
        samples = 100
        M = [1, 2]
        [throughput]
        enabled = false
        [[problem]]
        name = "small"
        arch = "2-2-2-1"
        data_points = 3
    """))
    out = tmp_path / "o"
    res = invoke(["run", "--config", str(cfg), "--samples", "30", "--seeds", "4,5", "--no-report",
                  "--out", str(out)])
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["samples"] == 30 and man["seeds"] == [4, 5]
    assert man["config"]["M"] == [1, 2] and man["config"]["estimators"] == ["st", "tanh"]
    assert "small" in res.output
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["run", "--config", str(cfg), "--quiet", "--no-report"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs/exp/metrics.csv").is_file()


def test_report_is_written_after_the_run(tmp_path, monkeypatch):
    from sbn_bench import reports

    calls = []

    def fake(run_dir):
        calls.append(Path(run_dir))
        return {"md": Path(run_dir) / "report.md"}

    monkeypatch.setattr(reports, "write_report", fake)
    out = tmp_path / "r"
    res = invoke([a for a in SMALL if a != "--no-report"] + ["--out", str(out)])
    assert res.exit_code == 0, res.output
    assert calls == [out] and f"report: {out / 'report.md'}" in res.output


def test_failures_are_listed(tmp_path):
    plugin = tmp_path / "p.py"
    plugin.write_text(textwrap.dedent("""
        from sbn_bench.estimators import Estimator

        def boom():
            def surrogate(problem, params, generator):
                raise RuntimeError("kaput")
            return Estimator("boom", surrogate, randomness="continuous")

        ESTIMATORS = {"boom": boom}
    """))
    res = invoke([*SMALL[:-4], "--estimators", "st,boom", "--plugin", str(plugin),
                  "--no-throughput", "--no-report", "--out", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    assert "1 cell(s) failed" in res.output and "kaput" in res.output

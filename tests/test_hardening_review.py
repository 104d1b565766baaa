"""Fixes from the new-user review (items 1–11): each test failed before its fix.

1. softmax with one output is refused (it gave J ≡ 0 and zero gradients);
2. a run with only ``exact`` renders its report, and a report that fails leaves no half-written one;
3. unsupported combinations are refused before any work (not recorded as failure cells);
4. ``train`` refuses an ``--out`` holding a previous training (``overwrite`` removes it);
5. comparing runs with no problem/checkpoint in common is refused;
6. result files get the usual mode ``0o666 & ~umask`` (not mkstemp's 0600);
7. Ctrl-C during ``run`` says how to resume and exits 130;
8. the report of an unfinished run warns, at its top and on stderr;
9. ``--max-exact-bytes`` takes sizes such as ``4GiB``;
10. ``--estimators psa,,st`` is refused;
11. the console summary shows ``-`` for layers a problem does not have.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from sbn_bench import runner
from sbn_bench.cli import main
from sbn_bench.config import ConfigError, ProblemSpec, RunConfig, ThroughputConfig
from sbn_bench.estimators import EstimatorSpecError, split_specs
from sbn_bench.problems import Problem, ProblemError, load_problem, random_problem, save_problem
from sbn_bench.reports import IncomparableRuns, compare_runs, load_run, write_report
from sbn_bench.reports import markdown as md_module
from sbn_bench.reports.figures import bias_variance_frame
from sbn_bench.train import TrainArgumentError, train

cli_run = importlib.import_module("sbn_bench.cli.run")  # the module (sbn_bench.cli.run is the command)
DATA = Path(__file__).parent / "data"
RUN_A, RUN_B = DATA / "run_a", DATA / "run_b"


def invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def tiny_config(out: Path, **kw) -> RunConfig:
    base = dict(problems=(ProblemSpec(arch="2-2-1", data_points=3),), estimators=("psa",),
                samples=16, M=(1, 4), throughput=ThroughputConfig(enabled=False), out=str(out))
    base.update(kw)
    return RunConfig(**base)


# --------------------------------------------------------------------------------------------
# 1. softmax needs n_out ≥ 2


def test_softmax_with_one_output_is_refused_everywhere(tmp_path: Path) -> None:
    with pytest.raises(ProblemError, match=r"arch='2-3-1' .*weight_out n_out=1.*at least 2.*softmax"):
        random_problem("2-3-1", 0, data_points=4, loss="softmax")
    with pytest.raises(ConfigError, match=r"weight_out n_out=1.*softmax"):
        ProblemSpec(arch="2-3-1", loss="softmax")
    # a problem built from arrays (and a file) with one output and loss softmax: validate refuses it
    ok = random_problem("2-3-2", 0, data_points=4, loss="softmax")
    one = {**ok.params, "weight_out": ok.params["weight_out"][:1], "bias_out": ok.params["bias_out"][:1]}
    with pytest.raises(ProblemError, match=r"array 'weight_out' has 1 output, expected at least 2"):
        Problem(one, ok.x, torch.zeros(4, dtype=torch.int64), loss="softmax")
    f = tmp_path / "p.npz"
    np.savez(f, x=ok.x.numpy(), y=np.zeros(4), loss=np.array("softmax"),
             **{k: v.numpy() for k, v in one.items()})
    with pytest.raises(ProblemError, match=r"p\.npz.*'weight_out'.*at least 2.*softmax"):
        load_problem(f)
    r = invoke(["exact", "--arch", "2-3-1", "--loss", "softmax"])
    assert r.exit_code == 1 and r.output.startswith("Error: argument arch='2-3-1'"), r.output
    assert "softmax" in r.output and "weight_out" in r.output and "objective" not in r.output
    # two classes are fine
    assert random_problem("2-3-2", 0, data_points=4, loss="softmax").widths[-1] == 2


# --------------------------------------------------------------------------------------------
# 2. reports of exact-only runs; atomic reports


def test_bias_variance_frame_of_zero_error_rows_is_numeric() -> None:
    rows = pd.DataFrame({"layer": ["1"] * 4, "estimator": ["exact"] * 4,
                         "metric": ["variance", "bias_norm", "rel_bias", "rrmse"],
                         "M": [np.nan, np.nan, np.nan, 1.0], "value": [0.0, 0.0, 0.0, 0.0]})
    bv = bias_variance_frame(rows)  # ‖g‖ cannot be recovered from rrmse = 0: no point
    assert bv.empty and bv["rel_sd"].dtype == float and bv["rel_bias"].dtype == float


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exact") / "run"
    res = runner.run(tiny_config(out, problems=(ProblemSpec(arch="2-3-1", data_points=5),),
                                 estimators=("exact",), samples=50, M=(1, 10, 50),
                                 throughput=ThroughputConfig(rounds=2, warmup=0)))
    assert res.failures.empty and (res.metrics["value"][res.metrics["metric"] == "rrmse"] == 0).all()
    return out


def test_report_of_an_exact_only_run_renders(exact_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    written = write_report(exact_run, out_dir=out)
    md = written["md"].read_text(encoding="utf-8")
    assert "| exact" in md and "No results." not in md
    assert written["html"].is_file()
    assert sorted(p.name for p in out.iterdir()) == ["figures", "report.html", "report.md"]


def test_failed_report_leaves_the_previous_one_intact(exact_run: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "rep"

    def broken(*args, **kwargs):
        raise RuntimeError("rendering failed")

    # no previous report: nothing at all is left behind (no folder without report.md)
    monkeypatch.setattr(md_module, "render_report", broken)
    with pytest.raises(RuntimeError, match="rendering failed"):
        write_report(exact_run, out_dir=out)
    assert not out.exists(), list(out.rglob("*"))
    monkeypatch.undo()
    write_report(exact_run, out_dir=out)
    (out / "figures" / "mine.txt").write_text("a file of the user's")  # survives re-rendering
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(md_module, "render_report", broken)
    with pytest.raises(RuntimeError, match="rendering failed"):
        write_report(exact_run, out_dir=out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # same files, same bytes, no staging folder left
    monkeypatch.undo()
    write_report(exact_run, out_dir=out)
    assert (out / "figures" / "mine.txt").read_text() == "a file of the user's"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_cli_run_with_only_exact_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "r8"
    r = invoke(["run", "--arch", "2-3-1", "--data-points", "5", "--estimators", "exact",
                "--samples", "50", "--rounds", "1", "--out", out])
    assert r.exit_code == 0, r.output
    assert (out / "report" / "report.md").is_file() and (out / "report" / "report.html").is_file()
    r = invoke(["report", out])
    assert r.exit_code == 0 and "wrote" in r.output, r.output


# --------------------------------------------------------------------------------------------
# 3. unsupported combinations refused before any work


def test_cli_unsupported_noise_is_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "g"
    for extra in ([], ["-q"]):
        r = invoke(["run", "--arch", "2-3-1", "--data-points", "3", "--estimators", "arm,st,disarm",
                    "--noise", "gaussian", "--samples", "8", "--out", out, *extra])
        assert r.exit_code == 1, r.output
        assert r.output.startswith("Error: refused before any work: 2 (problem/checkpoint, "
                                   "estimator) pair(s) are not supported"), r.output
        for pair in ("arch-2-3-1-seed0/init × arm: estimator 'arm' does not support noise 'gaussian'",
                     "arch-2-3-1-seed0/init × disarm: estimator 'disarm' does not support noise"):
            assert pair in r.output, r.output
        assert not out.exists()


def test_prepare_refuses_exact_mode_without_path_surrogate_and_large_references(tmp_path: Path
                                                                                ) -> None:
    cfg = tiny_config(tmp_path / "x", estimators=("psa", "concrete:tau=0.1"), mode="exact")
    with pytest.raises(runner.RunError) as err:
        runner.prepare(cfg)
    msg = str(err.value)
    assert "--mode exact is impossible for 1 (problem/checkpoint, estimator) pair(s): " \
           "arch-2-2-1-seed0/init × concrete:tau=0.1: estimator 'concrete:tau=0.1' has randomness " \
           "'continuous' and no path surrogate" in msg, msg
    assert "use --mode auto" in msg and "× psa" not in msg, msg
    runner.prepare(cfg.with_(mode="auto"))  # auto: concrete goes Monte Carlo
    with pytest.raises(runner.RunError, match=r"exact reference refused for problem "
                                              r"'arch-2-2-1-seed0' \(arch 2-2-1, D=3\): .* limit"):
        runner.prepare(tiny_config(tmp_path / "y", max_exact_bytes=100))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# --------------------------------------------------------------------------------------------
# 4. train refuses an --out with a previous training


def test_train_refuses_a_folder_with_a_previous_training(tmp_path: Path) -> None:
    p = random_problem("2-2-1", 0, data_points=4)
    out = tmp_path / "t"
    train(p, "st", epochs=3, batch_size=4, checkpoints=(1, 2), out_dir=out, num_threads=None)
    assert (out / "checkpoint_epoch2.npz").is_file()
    with pytest.raises(TrainArgumentError, match=r"already holds the outputs of a training "
                                                 r"\(checkpoint_epoch0\.npz, checkpoint_epoch1\.npz, "
                                                 r"checkpoint_epoch2\.npz, checkpoint_epoch3\.npz, "
                                                 r"train_log\.csv, train_manifest\.json\).*--out") as e:
        train(p, "st", epochs=1, batch_size=4, out_dir=out, num_threads=None)
    assert e.value.argument == "out_dir"
    res = train(p, "st", epochs=1, batch_size=4, out_dir=out, num_threads=None, overwrite=True)
    left = sorted(f.name for f in out.iterdir())
    assert left == ["checkpoint_epoch0.npz", "checkpoint_epoch1.npz", "loss_curve.png",
                    "train_log.csv", "train_manifest.json"], left  # no stale epoch 2 and 3
    assert sorted(res.checkpoints) == [0, 1]
    # a folder with other files only is fine
    other = tmp_path / "o"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    train(p, "st", epochs=1, batch_size=4, out_dir=other, num_threads=None)


def test_cli_train_refuses_a_used_out_unless_overwrite(tmp_path: Path) -> None:
    args = ["train", "--arch", "2-2-1", "--data-points", "4", "--estimator", "st", "--epochs", "1",
            "--batch-size", "4", "--out", tmp_path / "t", "-q"]
    assert invoke(args).exit_code == 0
    r = invoke(args)
    assert r.exit_code == 2 and "Invalid value for '--out'" in r.output, r.output
    assert "checkpoint_epoch0.npz" in r.output and "--overwrite" in r.output, r.output
    r = invoke([*args, "--overwrite"])
    assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------------------------
# 5. comparing runs with nothing in common


def _renamed_copy(src: Path, dst: Path, old: str, new: str) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        if f.suffix in (".csv", ".json"):
            f.write_text(f.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return dst


def test_compare_refuses_runs_without_a_common_cell(tmp_path: Path) -> None:
    other = _renamed_copy(RUN_B, tmp_path / "b", "tiny-2-3-2-1", "another-problem")
    with pytest.raises(IncomparableRuns) as err:
        compare_runs(load_run(RUN_A), load_run(other), force=True)
    msg = str(err.value)
    assert "the runs have no problem/checkpoint in common" in msg, msg
    assert "the run has tiny-2-3-2-1 · checkpoint init, tiny-2-3-2-1 · checkpoint gd30" in msg, msg
    assert "the baseline has another-problem · checkpoint init" in msg, msg
    r = invoke(["report", RUN_A, "--compare", other, "--out", tmp_path / "rep", "--format", "md"])
    assert r.exit_code == 1 and r.output.startswith("Error: cannot compare"), r.output
    assert "no problem/checkpoint in common" in r.output and not (tmp_path / "rep").exists()


def test_compare_of_partly_shared_runs_notes_the_others(tmp_path: Path) -> None:
    base = tmp_path / "b"
    shutil.copytree(RUN_B, base)
    for name in ("metrics.csv", "throughput.csv", "failures.csv"):
        df = pd.read_csv(base / name, dtype=str, keep_default_na=False)
        df[df["checkpoint"] != "gd30"].to_csv(base / name, index=False)
    cmp = compare_runs(load_run(RUN_A), load_run(base))
    assert "tiny-2-3-2-1 · checkpoint gd30: not in the baseline, not compared" in cmp.notes
    assert any("checkpoint init" in t.title for t in cmp.tables)
    assert not any("gd30" in t.title for t in cmp.tables)


# --------------------------------------------------------------------------------------------
# 6. file modes


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_written_files_get_the_usual_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)  # a umask that neither 0600 nor 0644 satisfies: expect 0640
    try:
        res = runner.run(tiny_config(tmp_path / "run"))
        write_report(res.out, formats=("md",))
        train(random_problem("2-2-1", 0, data_points=4), "st", epochs=1, batch_size=4,
              out_dir=tmp_path / "train", num_threads=None)
        save_problem(random_problem("2-2-1", 0, data_points=4), tmp_path / "p.npz")
    finally:
        os.umask(old)
    files = [*(tmp_path / "run").rglob("*.csv"), tmp_path / "run" / "manifest.json",
             tmp_path / "run" / "report" / "report.md", *(tmp_path / "train").iterdir(),
             tmp_path / "p.npz"]
    modes = {str(f.relative_to(tmp_path)): oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert len(files) >= 10 and set(modes.values()) == {oct(0o640)}, modes


# --------------------------------------------------------------------------------------------
# 7, 8. Ctrl-C during run; the report of an unfinished run


def test_ctrl_c_says_how_to_resume_and_the_report_warns(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    args = ["run", "--arch", "2-2-1", "--data-points", "3", "--estimators", "psa,st", "--samples",
            "16", "--M", "1,4", "--seeds", "0,1", "--no-throughput", "--no-report", "--out", out]

    def interrupt(self, done, total, cell, status):
        if done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_run._Progress, "__call__", interrupt)
    r = invoke(args)
    assert r.exit_code == 130, (r.exit_code, r.output)
    assert "Interrupted: the finished cells are saved in" in r.stderr and "--resume" in r.stderr
    assert f"--out {out} --resume" in r.stderr, r.stderr
    assert "Aborted" not in r.output
    monkeypatch.undo()
    # the report of the interrupted run: 2 of 4 cells, said on stderr and at the top of the report
    r = invoke(["report", out, "--format", "md"])
    assert r.exit_code == 0, r.output
    assert "Warning: this run is incomplete: 2 of 4 cells done" in r.stderr, r.stderr
    md = (out / "report" / "report.md").read_text(encoding="utf-8")
    head = md.split("| run |")[0]
    assert "> **Warning:** this run is incomplete: 2 of 4 cells done" in head, head
    assert f"--out {out} --resume" in head
    # resumed to the end: no warning
    r = invoke([*args, "--resume", "-q"])
    assert r.exit_code == 0, r.output
    r = invoke(["report", out, "--format", "md"])
    assert r.exit_code == 0 and "incomplete" not in r.output, r.output
    assert "incomplete" not in (out / "report" / "report.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# 9. --max-exact-bytes takes sizes


def test_max_exact_bytes_takes_sizes(tmp_path: Path) -> None:
    base = ["exact", "--arch", "2-3-1", "--data-points", "100"]  # needs about 38 KB
    assert invoke([*base, "--max-exact-bytes", "1MiB"]).exit_code == 0
    assert invoke([*base, "--max-exact-bytes", "4GiB"]).exit_code == 0
    assert invoke([*base, "--max-exact-bytes", "1000000"]).exit_code == 0  # plain bytes still work
    r = invoke([*base, "--max-exact-bytes", "1KiB"])
    assert r.exit_code == 1 and "limit of" in r.output, r.output
    r = invoke([*base, "--max-exact-bytes", "4XB"])
    assert r.exit_code == 2 and "--max-exact-bytes" in r.output and "'4XB'" in r.output, r.output
    r = invoke(["run", "--arch", "2-2-1", "--data-points", "3", "--estimators", "psa", "--samples",
                "8", "--no-throughput", "--no-report", "-q", "--max-exact-bytes", "2GiB",
                "--out", tmp_path / "run"])
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert man["config"]["max_exact_bytes"] == 2 * 2**30
    r = invoke(["train", "--arch", "2-3-1", "--data-points", "100", "--epochs", "1", "--batch-size",
                "100", "--max-exact-bytes", "1KiB", "--out", tmp_path / "t"])
    assert r.exit_code == 0 and "exact objective not logged" in r.output, r.output
    assert "--max-exact-bytes SIZE" in invoke(["run", "--help"]).output


# --------------------------------------------------------------------------------------------
# 10. empty estimator items


def test_empty_estimator_items_are_refused(tmp_path: Path) -> None:
    for text in ("psa,,st", "psa,st,", ",psa", "psa, ,st"):
        with pytest.raises(EstimatorSpecError, match=r"argument estimators=.* has an empty item"):
            split_specs(text)
    assert split_specs("") == [] and split_specs("psa, concrete:tau=0.1,k=2") == [
        "psa", "concrete:tau=0.1,k=2"]
    r = invoke(["run", "--arch", "2-2-1", "--estimators", "psa,,st", "--out", tmp_path / "e"])
    assert r.exit_code == 1 and "estimators='psa,,st' has an empty item" in r.output, r.output
    assert not (tmp_path / "e").exists()


# --------------------------------------------------------------------------------------------
# 11. summary of problems of different depths


def test_summary_shows_a_dash_for_layers_a_problem_lacks(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('estimators = "psa"\nsamples = 8\nM = [1]\n[throughput]\nenabled = false\n'
                   '[[problem]]\narch = "2-2-1"\ndata_points = 3\n'
                   '[[problem]]\narch = "2-2-2-1"\ndata_points = 3\n')
    r = invoke(["run", "--config", cfg, "--no-report", "--out", tmp_path / "run"])
    assert r.exit_code == 0, r.output
    assert "nan" not in r.output.lower(), r.output
    lines = r.output.splitlines()
    header = next(x for x in lines if x.startswith("problem "))
    assert header.split()[3:] == ["1", "2", "out", "all"], header
    shallow = next(x for x in lines if x.startswith("arch-2-2-1-seed0 "))
    assert shallow.split()[4] == "-", shallow

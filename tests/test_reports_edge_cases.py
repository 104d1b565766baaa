"""Reports of unusual runs: only exact estimators, zero-error rows, a failing render that must leave
the previous report intact, and comparisons of runs with few or no cells in common.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from sbn_bench import runner
from sbn_bench.cli import main
from sbn_bench.config import ProblemSpec, RunConfig, ThroughputConfig
from sbn_bench.reports import IncomparableRuns, RunDirError, compare_runs, load_run, write_report
from sbn_bench.reports import markdown as md_module
from sbn_bench.reports.figures import bias_variance_frame

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


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exact") / "run"
    res = runner.run(tiny_config(out, problems=(ProblemSpec(arch="2-3-1", data_points=5),),
                                 estimators=("exact",), samples=50, M=(1, 10, 50),
                                 throughput=ThroughputConfig(rounds=2, warmup=0)))
    assert res.failures.empty and (res.metrics["value"][res.metrics["metric"] == "rrmse"] == 0).all()
    return out


def _renamed_copy(src: Path, dst: Path, old: str, new: str) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        if f.suffix in (".csv", ".json"):
            f.write_text(f.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return dst


def test_bias_variance_frame_of_zero_error_rows_is_numeric() -> None:
    rows = pd.DataFrame({"layer": ["1"] * 4, "estimator": ["exact"] * 4,
                         "metric": ["variance", "bias_norm", "rel_bias", "rrmse"],
                         "M": [np.nan, np.nan, np.nan, 1.0], "value": [0.0, 0.0, 0.0, 0.0]})
    bv = bias_variance_frame(rows)  # ‖g‖ cannot be recovered from rrmse = 0: no point
    assert bv.empty and bv["rel_sd"].dtype == float and bv["rel_bias"].dtype == float


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


def test_compare_names_estimators_and_timings_on_one_side_only(tmp_path: Path) -> None:
    """A baseline without arm, and without psa's throughput: both were left out silently ("0 of
    N compared values differ")."""
    base = tmp_path / "b"
    shutil.copytree(RUN_B, base)
    for name, drop in (("metrics.csv", {"arm"}), ("throughput.csv", {"arm", "psa"})):
        df = pd.read_csv(base / name, dtype=str, keep_default_na=False)
        df[~df["estimator"].isin(drop)].to_csv(base / name, index=False)
    cmp = compare_runs(load_run(RUN_A), load_run(base))
    assert "estimators only in the run, not compared: arm" in cmp.notes, cmp.notes
    timing = [n for n in cmp.notes if n.startswith("samples/s not compared")]
    assert len(timing) == 1 and "the baseline has no throughput figure for psa (" in timing[0], timing
    assert "arm" not in timing[0]  # said once, as an estimator not compared
    assert not any("only in the baseline" in n for n in cmp.notes)
    # an estimator whose every cell failed in the baseline: in both runs' lists, compared nowhere
    f = pd.read_csv(base / "failures.csv", dtype=str, keep_default_na=False)
    row = {c: "" for c in f.columns} | {"problem": "tiny-2-3-2-1", "checkpoint": "init",
                                        "estimator": "arm", "stage": "estimate", "error": "boom"}
    pd.concat([f, pd.DataFrame([row])]).to_csv(base / "failures.csv", index=False)
    notes = compare_runs(load_run(RUN_A), load_run(base)).notes
    assert "estimators with no results in the baseline (their cells failed), not compared: arm" \
        in notes, notes
    assert "estimators with no results in either run (their cells failed), not compared: " \
           "nan-plugin" in notes, notes  # run_a's and run_b's failing plugin, said once
    assert not [n for n in notes if n.startswith("samples/s") and "arm" in n], notes  # said once
    assert [n for n in compare_runs(load_run(RUN_A), load_run(RUN_B)).notes if "not compared" in n] \
        == ["estimators with no results in either run (their cells failed), not compared: nan-plugin"]


# --------------------------------------------------------------------------------------------
# damaged and unfinished runs, hostile names, stale staging folders


@pytest.fixture()
def small_run(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    runner.run(tiny_config(out, estimators=("psa", "st"), seeds=(0, 1)))
    return out


def test_a_cut_off_metrics_table_is_assembled_from_the_parts(small_run: Path) -> None:
    whole = load_run(small_run).metrics
    text = (small_run / "metrics.csv").read_text()
    (small_run / "metrics.csv").write_text(text[: len(text) // 2])  # killed mid-write
    run = load_run(small_run)
    assert any("cut off mid-row" in w for w in run.warnings)
    assert len(run.metrics) == len(whole)


def test_a_damaged_manifest_is_said_on_the_terminal_and_the_samples_stay_per_seed(
        small_run: Path) -> None:
    """Without a readable manifest the header's samples come from metrics.csv: per seed (they
    read as the sum over the two seeds combined), and the report's warning reaches ``warn`` (the
    terminal), not only report.md."""
    samples = tiny_config(small_run).samples
    (small_run / "manifest.json").write_text("{")
    said: list[str] = []
    written = write_report(small_run, formats=("md",), warn=said.append)
    assert any("manifest.json is not valid JSON" in w for w in said), said
    md = written["md"].read_text()
    assert f"| samples | {samples} |" in md and "| seeds combined | 2 per cell" in md
    # a row of one seed (the other's cell failed) is not halved
    metrics = pd.read_csv(small_run / "metrics.csv")
    metrics[~((metrics.estimator == "psa") & (metrics.seed == 1))].to_csv(
        small_run / "metrics.csv", index=False)
    md = write_report(small_run, formats=("md",))["md"].read_text()
    assert f"| samples | {samples} |" in md
    assert "| seeds combined | 1–2 (not every cell has every seed) per cell" in md  # not "2"
    # the baseline's own warnings reach the terminal too, naming it
    said.clear()
    write_report(small_run, small_run, formats=("md",), warn=said.append, force=True)
    assert any(w.startswith(f"the baseline run {str(small_run)!r}: manifest.json") for w in said), said


def test_a_table_cut_at_a_row_boundary_or_with_a_repeated_row_is_said(small_run: Path) -> None:
    """The manifest records each table's SHA-256: one cut off between rows (no mid-row cut to
    see) or edited is read as it is, with a warning; a row repeated (here with another value) is
    said apart, since it would be averaged as another seed's; a resume rewrites the tables."""
    assert load_run(small_run).warnings == []
    lines = (small_run / "metrics.csv").read_text().splitlines(keepends=True)
    (small_run / "metrics.csv").write_text("".join(lines[: len(lines) // 2]))
    run = load_run(small_run)
    assert [w for w in run.warnings if w.startswith("metrics.csv differs from the file the run wrote")]
    twice = lines + [lines[1].replace(lines[1].split(",")[6], "123.0", 1)]
    (small_run / "metrics.csv").write_text("".join(twice))
    assert any("2 rows that repeat another's" in w for w in load_run(small_run).warnings)
    runner.run(tiny_config(small_run, estimators=("psa", "st"), seeds=(0, 1), resume=True))
    assert load_run(small_run).warnings == []
    # a table the run wrote and that is gone: its rows would be absent without a word
    for name, what in (("failures.csv", "the failed estimators"),
                       ("throughput.csv", "the throughput figures")):
        (small_run / name).unlink()
        said = [w for w in load_run(small_run).warnings if w.startswith(f"{name} is missing")]
        assert len(said) == 1 and f"shows none of {what}" in said[0], load_run(small_run).warnings
    runner.run(tiny_config(small_run, estimators=("psa", "st"), seeds=(0, 1), resume=True))
    assert load_run(small_run).warnings == []


def test_a_report_is_not_written_among_a_runs_results(small_run: Path, exact_run: Path) -> None:
    """``out_dir`` inside the run's part files (which a resume reads) or in a run's own folder is
    refused before anything is written; the run's report/ or any folder outside is fine."""
    for bad, words in ((small_run / "cells", r"inside the part files \(cells/\) of the run in"),
                       (small_run / "cells" / "x", r"inside the part files \(cells/\) of the run in"),
                       (exact_run, "is a run's folder"), (small_run, "is a run's folder")):
        before = sorted(p.name for p in small_run.rglob("*"))
        with pytest.raises(RunDirError, match=words) as e:
            write_report(small_run, out_dir=bad)
        assert e.value.argument == "out_dir"
        assert sorted(p.name for p in small_run.rglob("*")) == before
    assert write_report(small_run, formats=("md",), out_dir=small_run / "report-2")["md"].is_file()
    study = small_run.parent / "study"
    (study / "cells").mkdir(parents=True)
    (study / "study.json").write_text('{"kind": "sbn-bench training study"}')
    with pytest.raises(RunDirError, match="is inside the part files .* of the training study in"):
        write_report(small_run, out_dir=study / "cells")
    web = small_run.parent / "web"  # another program's manifest.json is no run
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "app"}')
    assert write_report(small_run, formats=("md",), out_dir=web)["md"].is_file()


def test_a_cut_off_table_without_parts_is_refused(small_run: Path) -> None:
    from sbn_bench.schema import TableError

    shutil.rmtree(small_run / "cells")
    text = (small_run / "metrics.csv").read_text()
    (small_run / "metrics.csv").write_text(text[:-20])
    with pytest.raises(TableError, match="metrics.csv' is cut off mid-row"):
        load_run(small_run)


def test_a_run_killed_before_its_first_assembly_has_a_report(small_run: Path) -> None:
    for name in ("metrics.csv", "throughput.csv", "failures.csv", "timed_metrics.csv"):
        (small_run / name).unlink()
    manifest = json.loads((small_run / "manifest.json").read_text())
    total = manifest["cells"]["total"]
    assert total == 4 + manifest["config"]["throughput"]["enabled"]  # 2 x 2 (+ 1: one network)
    for cells in ({"total": total}, None):  # as written at the start; an older run's: none
        m = {**manifest, "status": "running"}
        m.pop("cells")
        if cells is not None:
            m["cells"] = cells
        (small_run / "manifest.json").write_text(json.dumps(m))
        res = invoke(["report", small_run, "--format", "md"])
        assert res.exit_code == 0, res.output
        md = (small_run / "report" / "report.md").read_text()
        assert "never assembled" in md and "psa" in md and f"{total} of {total} cells done" in md
        assert not (small_run / "metrics.csv").exists()  # the report does not write the tables
    # one damaged part: its cell is missing, and the warning says so (it dropped it silently)
    first = sorted((small_run / "cells").glob("metrics-*.csv"))[0]
    kept = first.read_text()
    first.write_text("garbage\n")
    res = invoke(["report", small_run, "--format", "md"])
    assert res.exit_code == 0, res.output
    for out in (res.output, (small_run / "report" / "report.md").read_text()):
        assert f"1 damaged part file(s) left out, their cells missing below ({first.name})" in out
        assert "--resume" in out
    first.write_text(kept)
    # every part cut off as well: nothing to report, said so (exit 1), not an empty report headed
    # "status complete" (attacker review)
    parts = sorted((small_run / "cells").glob("*.csv"))
    for part in parts:
        part.write_text(part.read_text()[:50])
    res = invoke(["report", small_run, "--format", "md"])
    assert res.exit_code == 1 and f"none of its {len(parts)} part file(s)" in res.output, res.output
    assert "--resume" in res.output


@pytest.mark.parametrize(("column", "value", "words"), [
    ("M", "-5", "M=-5 is not a valid value (expected an integer ≥ 1)"),
    ("mode", "/exact", "mode='/exact' is not a valid value"),
])
def test_impossible_values_in_a_metrics_table_are_refused(small_run: Path, column: str, value: str,
                                                          words: str) -> None:
    df = pd.read_csv(small_run / "metrics.csv", dtype=str, keep_default_na=False)
    row = df.index[df["M"] != ""][0] if column == "M" else 0
    df.loc[row, column] = value
    df.to_csv(small_run / "metrics.csv", index=False)
    res = invoke(["report", small_run])
    assert res.exit_code == 1 and f"line {row + 2}: {words}" in res.output, res.output
    assert res.output.count("\n") == 1


def test_markup_in_names_is_escaped_in_the_markdown(tmp_path: Path) -> None:
    out = tmp_path / "run"
    runner.run(tiny_config(out, problems=(ProblemSpec(arch="2-2-1", data_points=3,
                                                      name="<script>alert(1)"),)))
    write_report(out, formats=("md",))
    md = (out / "report" / "report.md").read_text()
    assert "<script>" not in md and "&lt;script>alert(1)" in md
    # only what could open markup is an entity: the criteria read "a > b", "x < 2" in the raw file
    from sbn_bench.reports.markdown import _esc, _esc_text

    assert _esc("|a − b| > 3·s.e. & x < 2") == "\\|a − b\\| > 3·s.e. & x < 2"
    assert _esc("&lt; <!-- x --> </b> <http://x>") == "&amp;lt; &lt;!-- x --> &lt;/b> &lt;http://x>"
    assert _esc_text("> not a quote `<kept>` <b>") == "\\> not a quote `<kept>` &lt;b>"


@pytest.mark.parametrize("names, words", [
    (("a/b",), "no '/'"), (("..",), "no leading '.'"), (("../evil",), "no '/'"),
    (("a b", "a-b"), "give the same file name in the report ('a-b')")])
def test_problem_names_that_would_clash_as_report_files_are_refused(tmp_path: Path, names, words) -> None:
    """A problem's name names the report's figure files: a path in it escaped the figures folder
    (or failed after the run), two names of one file showed one problem's figures for both."""
    from sbn_bench.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(words)):
        tiny_config(tmp_path / "run", problems=tuple(ProblemSpec(arch="2-2-1", data_points=3, name=n)
                                                     for n in names))
    assert not (tmp_path / "run").exists()


def test_arch_only_keys_on_a_preset_or_file_problem_are_refused() -> None:
    """As the command line refuses --noise with --preset: the preset or file fixes them, so a
    value there was ignored silently."""
    from sbn_bench.config import ConfigError

    for kw in ({"noise": "gaussian"}, {"loss": "mse"}, {"data_points": 5}, {"kl": "sampled"}):
        with pytest.raises(ConfigError, match="applies to arch problems only") as e:
            ProblemSpec(preset="quick", **kw)
        assert e.value.argument == next(iter(kw))
    with pytest.raises(ConfigError, match="file 'p.npz' fixes it"):
        ProblemSpec(file="p.npz", loss="mse")


def test_stale_staging_folders_of_killed_reports_are_removed(small_run: Path) -> None:
    stale = small_run / "report" / ".report-dead.tmp"
    stale.mkdir(parents=True)
    (stale / "half.png").write_bytes(b"x")
    write_report(small_run, formats=("md",))
    assert not stale.exists()


def test_compare_warns_when_the_dtypes_differ(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    runner.run(tiny_config(a, estimators=("psa",), samples=16, mode="mc", dtype="float64"))
    runner.run(tiny_config(b, estimators=("psa",), samples=16, mode="mc", dtype="float32"))
    cmp = compare_runs(load_run(a), load_run(b))
    assert any("float64 (run) and float32 (baseline)" in w for w in cmp.warnings)


def test_compare_with_a_run_without_manifest_does_not_invent_a_device_difference(
        tmp_path: Path) -> None:
    """Without its manifest a run's device is its tables' 'cpu', the baseline's the manifest's
    'cpu x86_64': the comparison was refused as 'device cpu (run) vs cpu x86_64 (baseline)' on one
    machine; it now compares the two at the tables' level and says the run's facts are unknown.
    A real difference of the tables' device is still refused."""
    a, b = tmp_path / "a", tmp_path / "b"
    runner.run(tiny_config(a, estimators=("psa",)))
    shutil.copytree(a, b)
    (a / "manifest.json").unlink()
    cmp = compare_runs(load_run(a), load_run(b))
    assert not any("device" in w and "vs" in w for w in cmp.warnings), cmp.warnings
    m = pd.read_csv(a / "metrics.csv")
    m.assign(device="cuda").to_csv(a / "metrics.csv", index=False)
    with pytest.raises(IncomparableRuns, match=r"device cuda \(run\) vs cpu \(baseline\)"):
        compare_runs(load_run(a), load_run(b))


def test_a_full_disk_while_writing_the_report_names_the_file(small_run: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    from sbn_bench.fileio import WriteError

    real = os.replace

    def full(src, dst):
        if str(dst).endswith("report.md"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(WriteError, match=r"report.md.*No space left on device"):
        write_report(small_run, formats=("md",))


def test_section_images_outside_the_report_are_copied_among_its_figures(small_run: Path) -> None:
    """Images of plug-in sections that live outside ``report/`` (e.g. the loss curves of several
    training seeds, all named ``loss_curve.png``, one inside a collapsible group) are copied into
    ``report/figures`` under distinct names: ``report.md`` links only inside its folder and the
    HTML embeds them."""
    import re

    from sbn_bench.reports.sections import Details, Image

    curves = []
    for s in (0, 1):
        d = small_run / "training" / f"train{s}"
        d.mkdir(parents=True)
        shutil.copyfile(_tiny_png(d / "src.png", s), d / "loss_curve.png")
        curves.append(d / "loss_curve.png")

    class Curves:
        name = "curves"

        def applies(self, run) -> bool:
            return True

        def blocks(self, run) -> list:
            return [Image(curves[0], "curve, seed 0"), Details("more", [Image(curves[1], "curve, seed 1")])]

    paths = write_report(small_run, sections=[Curves()])
    md = paths["md"].read_text()
    links = re.findall(r"\]\(([^)]+)\)", md)
    assert "figures/section_loss_curve.png" in links and "figures/section_loss_curve-2.png" in links
    assert all(not link.startswith(("..", "/")) for link in links), links
    figures = small_run / "report" / "figures"
    assert (figures / "section_loss_curve.png").read_bytes() == curves[0].read_bytes()
    assert (figures / "section_loss_curve-2.png").read_bytes() == curves[1].read_bytes()
    html = paths["html"].read_text()
    assert html.count("curve, seed") >= 2 and "training/train" not in html
    write_report(small_run, sections=[Curves()], formats=("md",))  # written again: replaced, not kept
    assert sorted(p.name for p in figures.glob("section_*")) == ["section_loss_curve-2.png",
                                                                 "section_loss_curve.png"]


def _tiny_png(path: Path, shade: int) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1), dpi=20, facecolor=(0.2 + 0.5 * shade, 0.5, 0.5))
    FigureCanvasAgg(fig)
    fig.savefig(path)
    return path


def test_a_training_study_folder_is_named_as_one(tmp_path: Path) -> None:
    """'sbn-bench report STUDY' said 'not a run directory (write one with: sbn-bench run --out
    STUDY)', inviting a run into the study's folder."""
    (tmp_path / "study.json").write_text("{}")
    r = invoke(["report", tmp_path])
    assert r.exit_code == 1 and "holds a training study, not a run" in r.output, r.output
    assert "sbn-bench run --out" not in r.output


def test_a_single_training_folder_is_named_as_one_by_report_and_run(tmp_path: Path) -> None:
    """'report' of a training's folder invited 'sbn-bench run --out' there, which 'run' then
    refused with 'resume that run', which --resume refused again: each now says what the folder
    holds and offers only what works."""
    (tmp_path / "train_manifest.json").write_text("{}")
    r = invoke(["report", tmp_path])
    assert r.exit_code == 1 and "holds a single training, not a run" in r.output, r.output
    assert f"--out {tmp_path}" not in r.output
    r = invoke(["run", "--arch", "2-2-1", "--out", tmp_path])
    assert r.exit_code == 1 and "it holds a training (train_manifest.json)" in r.output, r.output
    assert "resume" not in r.output
    # an interrupted training has no manifest yet, only its log and checkpoints (it said "no
    # metrics.csv: not a run directory")
    for name in ("train_log.csv", "checkpoint_epoch0.npz"):
        d = tmp_path.parent / f"{tmp_path.name}-{name.split('.')[0]}"
        d.mkdir()
        (d / name).write_text("x")
        r = invoke(["report", d])
        assert r.exit_code == 1 and "holds a single training, not a run" in r.output, r.output
    (tmp_path / "train_manifest.json").rename(tmp_path / "notes.txt")
    r = invoke(["run", "--arch", "2-2-1", "--out", tmp_path])
    assert r.exit_code == 1 and "it holds other files, not a run" in r.output
    assert "resume" not in r.output
    r = invoke(["report", tmp_path])
    assert r.exit_code == 1 and "not a run directory" in r.output and "--out " + str(tmp_path) \
        not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("scale", [1e20, 1e150])
def test_huge_finite_errors_are_drawn(small_run: Path, scale: float) -> None:
    """An estimator whose errors are huge but finite (a plugin scaled by 1e20) made the report
    fail: the bias-variance figure's axis thresholds were Python integers (10 ** 20 overflows
    numpy's int64 log), and values beyond 1e154 gave infinite axis limits (√(lo·hi))."""
    df = pd.read_csv(small_run / "metrics.csv")
    for metric, power in (("bias_norm", 1), ("rel_bias", 1), ("rrmse", 1), ("variance", 2),
                          ("mse", 2)):
        rows = df["metric"] == metric
        df.loc[rows, ["value", "stderr"]] *= scale ** power
    df.to_csv(small_run / "metrics.csv", index=False)
    written = write_report(small_run, formats=("md",))
    assert written["md"].exists() and list(written["figures"].glob("*bias_variance*.png"))
    for value in (1e300, 1e308):  # 1e308: the heatmap's colour range overflowed
        df.loc[df["metric"].isin(["rrmse", "rel_bias"]), "value"] = value
        df.to_csv(small_run / "metrics.csv", index=False)
        res = invoke(["report", small_run, "--format", "md"])
        assert res.exit_code == 0 and "Traceback" not in res.output, res.output


def test_the_incomplete_note_counts_only_complete_part_files(small_run: Path) -> None:
    """A damaged part file is left out of the tables, so it is not counted as a cell done."""
    manifest = json.loads((small_run / "manifest.json").read_text())
    (small_run / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    (small_run / "metrics.csv").unlink()
    part = sorted((small_run / "cells").glob("*.metrics.csv"))[0]
    part.write_text(part.read_text()[:-30])
    total = manifest["cells"]["total"]
    run = load_run(small_run)
    assert f"{total - 1} of {total} cells done" in run.incomplete, run.incomplete
    assert "1 more cell(s) with a damaged part file" in run.incomplete


def _timed_copy(src: Path, dst: Path, speed: dict[str, float], default: float = 1.0) -> Path:
    """A copy of ``src`` whose throughput rows read ``speed[estimator]`` (else ``default``) × 10⁵
    samples/s with a ±5% confidence interval (of a 7-round median, as the runner writes)."""
    shutil.copytree(src, dst)
    tp = pd.read_csv(dst / "throughput.csv")
    v = tp["estimator"].map(lambda e: speed.get(e, default) * 1e5)
    tp["samples_per_s"], tp["samples_per_s_lo"], tp["samples_per_s_hi"] = v, 0.95 * v, 1.05 * v
    tp["ci_level"] = 0.984
    tp.to_csv(dst / "throughput.csv", index=False)
    return dst


def test_compare_divides_throughput_by_the_ratio_common_to_all_estimators(tmp_path: Path) -> None:
    """A machine 20% slower for every estimator (the raw intervals all apart) is one difference,
    not one per estimator; an estimator whose own speed changed beyond both intervals is flagged
    relative to that common factor."""
    base = load_run(_timed_copy(RUN_A, tmp_path / "b", {}))
    slower = load_run(_timed_copy(RUN_A, tmp_path / "s", {}, default=0.8))
    cmp = compare_runs(slower, base)
    timing = [f for f in cmp.flagged if "samples/s" in f]
    assert len(timing) == 2 and all(" · all estimators · samples/s: median ratio 0.8000; the "
                                    "intervals of 5 of 5 estimators do not overlap" in f
                                    for f in timing), timing
    table = next(t for t in cmp.tables if t.title.startswith("Throughput"))
    assert "(common factor 0.8000, the median ratio of 5 estimators)" in table.title
    assert table.header[-1] == "ratio / common" and {r[-1].text for r in table.rows} == {"1.000"}
    # psa twice as fast besides: flagged alone, relative to the others' common 0.8
    psa = load_run(_timed_copy(RUN_A, tmp_path / "p", {"psa": 1.6}, default=0.8))
    flagged = [f for f in compare_runs(psa, base).flagged if "samples/s" in f]
    assert [f for f in flagged if "all estimators" not in f] == [
        f"tiny-2-3-2-1 · checkpoint {ck} · psa · samples/s: 160,000 vs 100,000 (ratio 1.600, 2.000 "
        "relative to the common 0.8000, their confidence intervals do not overlap once the run's is "
        "divided by the common factor)" for ck in ("init", "gd30")], flagged
    # a drift within the intervals for most estimators: nothing flagged, though one is apart raw
    drift = load_run(_timed_copy(RUN_A, tmp_path / "d", {"psa": 0.88}, default=0.95))
    cmp = compare_runs(drift, base)
    assert not [f for f in cmp.flagged if "samples/s" in f], cmp.flagged
    assert not [d for d in cmp.differences if d.quantity.startswith("samples/s")]


def test_compare_of_two_estimators_keeps_the_raw_intervals(tmp_path: Path) -> None:
    """Fewer than three estimators timed on both sides give no common factor: each raw interval
    counts (a common factor of two would hide any change of one of them)."""
    keep = {"psa", "st"}
    runs = []
    for name, speed in (("b", 1.0), ("s", 0.8)):
        d = _timed_copy(RUN_A, tmp_path / name, {}, default=speed)
        tp = pd.read_csv(d / "throughput.csv")
        tp[tp["estimator"].isin(keep)].to_csv(d / "throughput.csv", index=False)
        runs.append(load_run(d))
    cmp = compare_runs(runs[1], runs[0])
    timing = [f for f in cmp.flagged if "samples/s" in f]
    assert len(timing) == 4 and all("ratio 0.8000, their confidence intervals do not overlap)" in f
                                    for f in timing), timing
    assert all("common" not in t.title for t in cmp.tables)


def test_compare_with_an_unfinished_baseline_says_so(tmp_path: Path) -> None:
    """A baseline killed after 2 of 16 cells was compared with no word ("0 of 32 differ")."""
    base = tmp_path / "b"
    shutil.copytree(RUN_B, base)
    m = json.loads((base / "manifest.json").read_text())
    m["status"] = "running"
    (base / "manifest.json").write_text(json.dumps(m))
    cmp = compare_runs(load_run(RUN_A), load_run(base))
    said = [w for w in cmp.warnings if w.startswith("the baseline: this run is incomplete")]
    assert len(said) == 1, cmp.warnings
    assert not [w for w in compare_runs(load_run(RUN_A), load_run(RUN_B)).warnings
                if "incomplete" in w]


def test_a_curve_that_falls_into_range_is_drawn_not_left_off() -> None:
    """REINFORCE's rrmse(M) starts far above the others and falls into their range: judged by its
    largest value (M = 1) the whole curve was left off the accuracy figure; curves against M are
    judged by their value at the most samples, and the axis extends to them."""
    from sbn_bench.reports.figures import scale

    panel = {"a": np.array([1.0, 0.5, 0.3]), "b": np.array([2.0, 1.0, 0.5]),
             "c": np.array([1.5, 0.8, np.nan]), "reinforce": np.array([500.0, 20.0, 1.0])}
    off, lim = scale([panel])  # by the largest value: 500 > 100 × median(1, 2, 1.5, 500)
    assert off == {"reinforce"} and lim is not None and lim[1] < 500
    off, lim = scale([panel], by=np.nanmin)  # 1 < 100 × median(0.3, 0.5, 0.8, 1)
    assert off == set() and lim is not None and lim[1] >= 500
    far = {**panel, "st-identity": np.array([9e4, 3e3, 400.0])}  # still far at the most samples
    assert scale([far], by=np.nanmin)[0] == {"st-identity"}


def test_a_grid_without_m_1_says_why_there_is_no_headline(tmp_path: Path) -> None:
    """``--M 3,2``: the headline (rrmse at M = 1) and the closing summary were absent without a
    word; both now say that the grid does not hold 1."""
    out = tmp_path / "r"
    r = CliRunner().invoke(main, ["run", "--arch", "2-3-1", "--data-points", "5", "--estimators",
                                  "psa,st", "--no-throughput", "--samples", "10", "--M", "3,2",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "no summary of rrmse at M=1: the M grid (2, 3) does not hold 1" in r.stdout
    assert f"results in {out}/: metrics.csv" in r.stdout  # the rest of the summary still follows
    md = (out / "report" / "report.md").read_text(encoding="utf-8")
    head = md.split("## Headline", 1)[1].split("\n## ", 1)[0]
    assert "No headline: it ranks the estimators by rrmse at M = 1, and this run's M grid (2, 3) " \
           "does not hold 1" in head
    with_1 = tmp_path / "r1"
    runner.run(tiny_config(with_1, problems=(ProblemSpec(arch="2-3-1", data_points=5),),
                           samples=10, M=(1, 2)))
    assert "No headline" not in write_report(with_1, formats=("md",))["md"].read_text(encoding="utf-8")


def test_the_headline_says_when_a_biased_deterministic_estimator_leads(tmp_path: Path) -> None:
    """At M = 1 a biased estimator without randomness (tanh: one fixed gradient, rrmse = its
    relative bias at every M) often leads; a reader took it for the best estimator. The headline
    now says why, and only when such an estimator is among the leaders (st is biased but random)."""
    def headline(estimators: tuple[str, ...], name: str) -> str:
        out = tmp_path / name
        runner.run(RunConfig(problems=(ProblemSpec(arch="2-3-3-1", data_points=5),),
                             estimators=estimators, samples=20, M=(1, 2),
                             throughput=ThroughputConfig(enabled=False), out=str(out)))
        md = write_report(out, formats=("md",))["md"].read_text(encoding="utf-8")
        return md.split("## Headline", 1)[1].split("\n## ", 1)[0]

    with_tanh = headline(("reinforce", "tanh"), "tanh")
    assert "columns: **tanh** 4." in with_tanh  # it leads every column here: the case in question
    assert "**tanh** has no randomness and is biased: its rrmse is its relative bias at every M" \
        in with_tanh
    assert "no randomness" not in headline(("psa", "st"), "random")


def test_a_second_report_writer_waits_for_the_first(tmp_path: Path, monkeypatch) -> None:
    """Each report writer removed every ``.report-*.tmp`` staging folder it found, a live
    writer's too, which then failed with "No such file or directory … free space" (two
    `sbn-bench report` of one run, or one beside a resumed run). A writer now holds the report
    folder's own lock: a second waits, and removes only the staging folders of writers that are
    gone. Here the test holds the lock as a first writer would, with its staging folder."""
    import threading

    import sbn_bench.reports as reports_mod
    from sbn_bench.fileio import wait_lock

    out = tmp_path / "r"
    runner.run(tiny_config(out, problems=(ProblemSpec(arch="2-3-1", data_points=5),),
                           samples=10, M=(1, 2)))
    report = out / "report"
    report.mkdir()
    live = report / ".report-live.tmp"
    live.mkdir()
    fd = wait_lock(report, reports_mod.REPORT_LOCK)
    reached = threading.Event()
    real = reports_mod.wait_lock

    def waiting(*a, **k):  # the second writer has come to the lock
        reached.set()
        return real(*a, **k)

    monkeypatch.setattr(reports_mod, "wait_lock", waiting)
    result: dict[str, object] = {}
    second = threading.Thread(target=lambda: result.update(write_report(out, formats=("md",))))
    second.start()
    try:
        assert reached.wait(timeout=120), "the second writer took no lock"
        second.join(timeout=0.5)
        assert second.is_alive() and live.is_dir(), "the second writer did not wait"
    finally:
        os.close(fd)  # the first writer is done (and, here, left its staging folder behind)
        second.join()
    assert Path(str(result["md"])).is_file() and not live.exists()
    assert sorted(p.name for p in report.iterdir()) == ["figures", "report.md"]  # no lock file left


def test_the_exact_estimator_does_not_stretch_the_cosine_axis() -> None:
    """The exact estimator's 1 − cos at round-off (1e-16) took the shared cosine axis down to
    1e-16, squeezing every other curve into its top quarter; values below ROUND_OFF_ZERO no longer
    set the limits (the line is named "off scale", its value 0)."""
    from sbn_bench.reports.figures import ROUND_OFF_ZERO, accuracy_limits

    rows = pd.DataFrame([
        dict(checkpoint="init", estimator=e, layer="all", metric=metric, M=m, value=v, stderr=0.0,
             mode="mc")
        for e, gap in (("st", 0.3), ("psa", 0.05), ("exact", 1e-16))
        for m in (1.0, 10.0)
        for metric, v in (("rrmse", 10 * gap / m), ("cosine_mean", 1 - gap / m))])
    lo, hi = accuracy_limits(rows)["cosine"]
    assert ROUND_OFF_ZERO < lo < 0.005 and hi > 0.3
    # both its panels name it, its rrmse of 0 as its 1 − cos (the rrmse panels left it out
    # without a word; new-user review)
    from sbn_bench.reports.figures import accuracy_figure, draw, styles

    ests = ["st", "psa", "exact"]
    fig = draw(accuracy_figure, rows.assign(value=lambda d: d["value"].where(
        ~((d["estimator"] == "exact") & (d["metric"] == "rrmse")), 0.0)), ests,
        styles(ests, {"st": "straight-through", "psa": "psa", "exact": "exact"}), "t")
    notes = [t.get_text() for ax in fig.get_axes()[:2] for t in ax.texts]
    assert notes == ["off scale: exact (0)"] * 2, notes


def test_family_colours_are_darkened_for_text() -> None:
    """Tick labels in a family's pale colour (tanh light green) were hard to read on white."""
    from sbn_bench.reports.figures import legible

    for colour in ("#b8e186", "#cab2d6", "#ffffb3", "#1f78b4", "black"):  # dark ones stay
        r, g, b = legible(colour)
        assert 0.2126 * r + 0.7152 * g + 0.0722 * b <= 0.35 + 1e-12
    assert legible("#08306b") == pytest.approx(tuple(int("08306b"[i:i + 2], 16) / 255 for i in (0, 2, 4)))


def test_a_report_into_a_training_folder_is_refused(tmp_path: Path) -> None:
    """A training's folder was taken as a report folder: the report's files mixed with its
    checkpoints (a run's or a study's folder was already refused)."""
    out = tmp_path / "r"
    runner.run(tiny_config(out, problems=(ProblemSpec(arch="2-3-1", data_points=5),),
                           samples=10, M=(1, 2)))
    training = tmp_path / "t"
    training.mkdir()
    (training / "train_manifest.json").write_text('{"kind": "sbn-bench train"}')
    with pytest.raises(RunDirError, match="is a training's folder"):
        write_report(out, out_dir=training)
    assert sorted(p.name for p in training.iterdir()) == ["train_manifest.json"]


def test_the_figure_count_is_the_reports_own(tmp_path) -> None:
    """``report --out`` into a folder whose figures/ holds the user's own PNG keeps it and counts
    only the report's figures (it said one more)."""
    out = tmp_path / "rep"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "mine.png").write_bytes(b"x")
    r = invoke(["report", RUN_A, "--out", out])
    assert r.exit_code == 0, r.output
    ours = [f for f in (out / "figures").glob("*.png") if f.name != "mine.png"]
    assert ours and f"wrote {len(ours)} figure(s)" in r.output, r.output
    assert (out / "figures" / "mine.png").read_bytes() == b"x"


def test_a_manifest_that_is_not_utf8_is_a_warning_not_a_traceback(small_run: Path) -> None:
    """manifest.json holding bytes that are not UTF-8 raised UnicodeDecodeError out of
    ``sbn-bench report`` (attacker review); it is an unreadable manifest like invalid JSON."""
    (small_run / "manifest.json").write_bytes(b"\xff\xfe{}")
    run = load_run(small_run)
    assert any("manifest.json is not valid JSON" in w for w in run.warnings), run.warnings
    assert len(run.metrics)

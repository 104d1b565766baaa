"""Reports: golden Markdown tables, the self-contained HTML report, figures, run comparison, CLI.

Fixtures: ``tests/data/run_a`` and ``tests/data/run_b`` are small real runs built by
``tests/data/make_fixture.py`` (see its docstring: run_b has another seed and a deliberately
regressed ``st`` in layer 1).

Golden files (``tests/golden/*.md``) pin the rendered Markdown tables. After an intended change of
the tables (or after regenerating the fixture runs), regenerate them with

    SBN_BENCH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_reports.py -k golden

and review the diff before committing.
"""

from __future__ import annotations

import base64
import difflib
import json
import math
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from sbn_bench.cli import main
from sbn_bench.reports import IncomparableRuns, compare_runs, load_run, significant, write_report
from sbn_bench.reports.figures import (
    accuracy_figure,
    bias_variance_figure,
    bias_variance_frame,
    draw,
    heatmap_figure,
    story_figure,
    styles,
    throughput_figure,
)
from sbn_bench.reports.load import combine_seeds
from sbn_bench.reports.markdown import comparison_markdown, summary_markdown
from sbn_bench.reports.ranking import TIE_Z, Estimate, upper_bound
from sbn_bench.reports.tables import cell_rows, fmt_num, summary_table

DATA = Path(__file__).parent / "data"
GOLDEN = Path(__file__).parent / "golden"
RUN_A, RUN_B = DATA / "run_a", DATA / "run_b"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
UPDATE = bool(os.environ.get("SBN_BENCH_UPDATE_GOLDEN"))


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"golden file {path} is missing; create it with SBN_BENCH_UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"{name} (golden)", f"{name} (rendered)"))
        pytest.fail(f"rendered tables differ from {path}:\n{diff}")


@pytest.fixture(scope="module")
def run_a():
    return load_run(RUN_A)


@pytest.fixture(scope="module")
def run_b():
    return load_run(RUN_B)


# --------------------------------------------------------------------------------------------
# golden tables


def test_golden_summary_tables(run_a) -> None:
    check_golden("run_a_summary.md", summary_markdown(run_a))


def test_golden_comparison_tables(run_a, run_b) -> None:
    check_golden("compare_run_a_run_b.md", comparison_markdown(compare_runs(run_a, run_b)))


# --------------------------------------------------------------------------------------------
# table content against the raw rows


def _parse(text: str) -> float:
    """The number at the start of a table cell (``0.123 ± 0.004`` -> 0.123)."""
    head = text.split(" ± ")[0].replace(",", "").replace("∞", "inf")
    return float(head)


@pytest.mark.parametrize("checkpoint", ["init", "gd30"])
def test_best_and_tie_marks_follow_the_raw_values(run_a, checkpoint: str) -> None:
    """Every bold cell is the column's best resolved value within its layer and every italic one is
    within 2 standard errors of it, recomputed from metrics.csv; clipped zeros and values smaller
    than their standard error are never marked."""
    table = summary_table(run_a, "tiny-2-3-2-1", checkpoint)
    rows = cell_rows(run_a, "tiny-2-3-2-1", checkpoint)
    specs = {"rrmse M=1": ("rrmse", 1.0, 1), "rrmse M=100": ("rrmse", 100.0, 1),
             "rel. bias": ("rel_bias", None, 1), "cosine M=1": ("cosine_mean", 1.0, -1),
             "cosine M=100": ("cosine_mean", 100.0, -1)}
    checked = 0
    for header, (metric, m, sign) in specs.items():
        j = table.header.index(header)
        for layer in ("1", "2", "out", "all"):
            sel = rows[(rows["layer"] == layer) & (rows["metric"] == metric)]
            sel = sel[sel["M"].isna()] if m is None else sel[sel["M"] == m]
            se = sel["stderr"].fillna(0.0)
            resolved = (se == 0) | ((sel["value"] != 0) & (sel["value"].abs() > se))
            ok = sel[resolved]
            best = ok.loc[(sign * ok["value"]).idxmin()]
            u = (se[resolved] ** 2 + float(best["stderr"] or 0.0) ** 2) ** 0.5
            near = (ok["value"] - best["value"]).abs() <= TIE_Z * u + 1e-12 + 1e-9 * abs(best["value"])
            want_bold, want_tie = {best["estimator"]}, set(ok["estimator"][near]) - {best["estimator"]}
            bold = {r[1].text for r in table.rows if r[0].text == layer and r[j].strong}
            tie = {r[1].text for r in table.rows if r[0].text == layer and r[j].tie}
            assert (bold, tie) == (want_bold, want_tie), (checkpoint, layer, header, bold, tie)
            unresolved = set(sel["estimator"][~resolved])
            assert not unresolved & (bold | tie), (checkpoint, layer, header, unresolved)
            checked += 1
    assert checked == 20


def test_a_clipped_bias_is_an_upper_bound_and_never_best(run_a) -> None:
    """arm's layer-1 bias is 0 ± 0.19 (a clipped Monte-Carlo estimate): shown as ≤ 0.38, unmarked;
    reinforce's exact bias at round-off is ≈0."""
    table = summary_table(run_a, "tiny-2-3-2-1", "init")
    j = table.header.index("rel. bias")
    cells = {(r[0].text, r[1].text): r[j] for r in table.rows}
    arm = cells[("1", "arm")]
    assert arm.text == "≤ 0.38" and not arm.strong and not arm.tie
    assert cells[("1", "reinforce")].text == "≈0" and cells[("1", "reinforce")].strong


def test_summary_values_are_the_stored_values(run_a) -> None:
    table = summary_table(run_a, "tiny-2-3-2-1", "init")
    rows = cell_rows(run_a, "tiny-2-3-2-1", "init")
    j = table.header.index("rrmse M=1")
    for r in table.rows:
        est, layer = r[1].text, r[0].text
        stored = rows[(rows["estimator"] == est) & (rows["layer"] == layer) & (rows["metric"] == "rrmse")
                      & (rows["M"] == 1.0)]["value"].item()
        shown = _parse(r[j].text)
        assert shown == pytest.approx(stored, rel=5e-3), f"{est} layer {layer}: {shown} vs {stored}"


def test_missing_m_uses_nearest_smaller_m_and_says_so(run_a) -> None:
    """Without M=100 in the grid the M=100 columns show M=10 (the nearest M ≤ 100) and a note."""
    clipped = load_run(RUN_A)
    clipped.metrics = clipped.metrics[~(clipped.metrics["M"] == 100.0)]
    table = summary_table(clipped, "tiny-2-3-2-1", "init")
    assert "rrmse M=10" in table.header and "cosine M=10" in table.header
    assert "rrmse M=100" not in table.header
    assert any("M=100 is not in this run's M grid" in n and "M=10" in n for n in table.notes), table.notes
    full = summary_table(run_a, "tiny-2-3-2-1", "init")
    j_clip = table.header.index("rrmse M=10")
    rows = cell_rows(run_a, "tiny-2-3-2-1", "init")
    for r_clip, r_full in zip(table.rows, full.rows):
        est, layer = r_full[1].text, r_full[0].text
        m10 = rows[(rows["estimator"] == est) & (rows["layer"] == layer) & (rows["metric"] == "rrmse")
                   & (rows["M"] == 10.0)]["value"].item()
        assert _parse(r_clip[j_clip].text) == pytest.approx(m10, rel=5e-3)


def test_failed_cells_are_listed_with_their_messages(run_a) -> None:
    table = summary_table(run_a, "tiny-2-3-2-1", "init")
    msg = run_a.failures["error"].iloc[0]
    assert any(n.startswith("failed: nan-plugin (estimate)") and msg in n for n in table.notes), table.notes
    assert "nan-plugin" not in {r[1].text for r in table.rows}


def test_fmt_num() -> None:
    cases = {0.0: "0", 0.12345: "0.123", 12.345: "12.3", 123456.0: "123,456", 2.5e-7: "2.50e-07",
             float("inf"): "∞", float("nan"): "—", -0.5: "-0.500"}
    for v, want in cases.items():
        assert fmt_num(v) == want, f"fmt_num({v}) = {fmt_num(v)!r}, expected {want!r}"


def test_combine_seeds_mean_and_stderr() -> None:
    """Two seeds: mean of values; se = √(se₁² + se₂²)/2 (the mean of two independent estimates)."""
    base = {"problem": "p", "checkpoint": "c", "estimator": "e", "layer": "1", "metric": "rrmse",
            "M": 1.0, "mode": "mc", "samples": 100, "device": "cpu", "dtype": "float64"}
    df = pd.DataFrame([{**base, "value": 1.0, "stderr": 0.1, "seed": 0},
                       {**base, "value": 3.0, "stderr": 0.2, "seed": 1},
                       {**base, "metric": "rel_bias", "M": float("nan"), "value": 0.5,
                        "stderr": float("nan"), "seed": 0},
                       # one seed's error unknown (a cosine over one M-block): unknown combined,
                       # not the other seed's alone
                       {**base, "metric": "cosine_mean", "value": 0.9, "stderr": float("nan"), "seed": 0},
                       {**base, "metric": "cosine_mean", "value": 0.8, "stderr": 0.01, "seed": 1}])
    out, n = combine_seeds(df)
    assert n == 2 and len(out) == 3
    cos = out[out["metric"] == "cosine_mean"].iloc[0]
    assert cos["value"] == pytest.approx(0.85) and math.isnan(cos["stderr"])
    r = out[out["metric"] == "rrmse"].iloc[0]
    assert r["value"] == pytest.approx(2.0) and r["stderr"] == pytest.approx(math.sqrt(0.05) / 2)
    assert r["samples"] == 200
    assert math.isnan(out[out["metric"] == "rel_bias"]["stderr"].iloc[0])


# --------------------------------------------------------------------------------------------
# figures


def _legend_names(fig) -> list[str]:
    return [t.get_text().strip() for t in fig.legends[0].get_texts()]


def test_figures_are_labelled_log_scaled_with_complete_legends(run_a) -> None:
    rows = cell_rows(run_a, "tiny-2-3-2-1", "init")
    ests = run_a.estimators()
    sty = styles(ests, run_a.families())
    with_data = [e for e in ests if e in set(rows["estimator"])]
    fig = draw(accuracy_figure, rows, ests, sty, "tiny · init")
    axes = fig.get_axes()
    assert len(axes) == 2 * 3, "rrmse and 1 − cosine rows × layers 1, 2, all (not out)"
    assert [ax.get_title() for ax in axes[:3]] == ["layer 1 of 2", "layer 2 of 2", "all parameters"]
    for ax in axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert all(axes[k].get_ylabel() for k in (0, 3))
    assert set(with_data) <= set(_legend_names(fig))
    # the y axes of a row are shared: the same limits in every panel
    assert len({ax.get_ylim() for ax in axes[:3]}) == 1
    checkpoints = run_a.checkpoints("tiny-2-3-2-1")
    prob = run_a.metrics
    fig = draw(bias_variance_figure, prob, ests, sty, checkpoints, "tiny")
    axes = fig.get_axes()
    assert len(axes) == 2 * 3, "checkpoints × (layers 1, 2, all): the output layer is left out"
    assert [ax.get_title() for ax in axes[:3]] == ["layer 1 of 2", "layer 2 of 2", "all parameters"]
    assert all(ax.get_xscale() == "symlog" and ax.get_yscale() == "symlog" for ax in axes)
    assert len({(ax.get_xlim(), ax.get_ylim()) for ax in axes}) == 1
    fig = draw(story_figure, prob, ests, sty, checkpoints, "tiny")
    axes = fig.get_axes()
    assert len(axes) == 2 * 4 and axes[-1].get_xlabel() == "checkpoint (run order)"
    assert [t.get_text() for t in axes[-1].get_xticklabels()] == checkpoints
    fig = draw(heatmap_figure, prob, ests, sty, checkpoints, "tiny")
    # rows grouped by family, families in order of their first estimator in the run
    assert [t.get_text() for t in fig.get_axes()[0].get_yticklabels()] == \
        ["psa", "st", "reinforce", "arm", "concrete:tau=0.5"]
    tp = run_a.throughput[run_a.throughput["checkpoint"] == "init"]
    fig = draw(throughput_figure, tp, ests, sty, "tiny")
    ax = fig.get_axes()[0]
    assert ax.get_xlabel().startswith("samples/s")
    assert sorted(t.get_text() for t in ax.get_yticklabels()) == sorted(tp["estimator"])
    from matplotlib.collections import PathCollection

    bars = len(ax.patches)
    assert bars == len(tp) and ax.get_xscale() == "linear"
    # over more than 30×, a log axis: a dot per estimator, no bar (whose length would start at the
    # axis' arbitrary left edge; new-user review)
    import numpy as np

    wide = tp.assign(samples_per_s=tp["samples_per_s"] * np.geomspace(1, 100, len(tp)))
    wide = wide.assign(samples_per_s_lo=wide["samples_per_s"] * 0.9,
                       samples_per_s_hi=wide["samples_per_s"] * 1.1)
    ax = draw(throughput_figure, wide, ests, sty, "tiny").get_axes()[0]
    assert ax.get_xscale() == "log" and not ax.patches
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(dots) == 1 and len(dots[0].get_offsets()) == len(tp)


def test_bias_variance_frame_recovers_relative_sd(run_a) -> None:
    """√V/‖g‖ from the stored rows equals √(rrmse(1)² − rel_bias²) (SPEC §5: rrmse(1)² ‖g‖² = ‖β‖² + V)."""
    rows = cell_rows(run_a, "tiny-2-3-2-1", "init")
    bv = bias_variance_frame(rows)
    assert len(bv) == 4 * 5
    for _, r in bv.iterrows():
        sel = rows[(rows["estimator"] == r["estimator"]) & (rows["layer"] == r["layer"])]
        rr1 = sel[(sel["metric"] == "rrmse") & (sel["M"] == 1.0)]["value"].item()
        rb = sel[sel["metric"] == "rel_bias"]["value"].item()
        expected = math.sqrt(max(rr1**2 - rb**2, 0.0))
        # stored values have 6 significant digits: compare at 1e-4 relative
        assert r["rel_sd"] == pytest.approx(expected, rel=1e-4), (r["estimator"], r["layer"])
    # a Monte-Carlo bias not significantly above 0 (arm's layer 1: clipped, 0 ± 0.19), whose
    # tables show "≤ bound", is marked, drawn hollow; an exact zero (reinforce's, to round-off)
    # and a resolved bias are not
    rb = rows[rows["metric"] == "rel_bias"].set_index(["layer", "estimator"])
    want = {k for k, v, se in zip(rb.index, rb["value"], rb["stderr"])
            if se > 0 and upper_bound(Estimate(v, se, squared=True)) is not None}
    assert ("1", "arm") in want
    assert any(v > 0 for k, v in rb["value"].items() if k in want)  # not only clipped zeros
    assert {(r["layer"], r["estimator"]) for _, r in bv.iterrows() if r["unresolved"]} == want


# --------------------------------------------------------------------------------------------
# the written report (one render through the CLI, shared by the checks below)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.external: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if tag == "img" and k == "src":
                self.srcs.append(v or "")
            elif k in ("src", "href") and v and not v.startswith(("#", "data:")):
                self.external.append(f"<{tag} {k}={v}>")
        if tag == "link" or (tag == "script" and any(k == "src" for k, _ in attrs)):
            self.external.append(f"<{tag}>")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = CliRunner().invoke(main, ["report", str(RUN_A), "--compare", str(RUN_B), "--out", str(out)])
    return out, res


def test_cli_report_writes_and_prints_paths(rendered) -> None:
    out, res = rendered
    assert res.exit_code == 0, res.output
    assert f"wrote {out / 'report.md'}" in res.output
    assert f"wrote {out / 'report.html'}" in res.output
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    # CPU runs have no peak memory (CUDA only): the throughput table says why its column is empty
    assert "peak memory: measured on CUDA devices only" in (out / "report.md").read_text()


def test_html_report_is_self_contained_with_every_figure(rendered, run_a) -> None:
    out, _ = rendered
    parser = _Images()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    parser.close()
    # per problem: headline, story, bias vs std, throughput; per checkpoint: accuracy; and the two
    # headlines of the comparison
    expected = 4 + len(run_a.cells()) + 2
    assert len(parser.srcs) == expected, f"{len(parser.srcs)} images, expected {expected}"
    assert len(list((out / "figures").glob("*.png"))) == expected
    assert len(list((out / "figures").glob("*.svg"))) == expected
    prefix = "data:image/png;base64,"
    for src in parser.srcs:
        assert src.startswith(prefix), src[:40]
        assert base64.b64decode(src[len(prefix):], validate=True)[:8] == PNG_MAGIC
    assert parser.external == [], f"external resources: {parser.external}"
    assert "style" in parser.tags and "table" in parser.tags


def test_markdown_report_links_every_figure(rendered) -> None:
    out, _ = rendered
    md = (out / "report.md").read_text(encoding="utf-8")
    pngs = sorted((out / "figures").glob("*.png"))
    for png in pngs:
        assert f"](figures/{png.name})" in md
        assert f"([SVG](figures/{png.with_suffix('.svg').name}))" in md
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert png.with_suffix(".svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")
    for fact in ("sbn-bench version", "git commit", "device", "dtype", "samples", "date"):
        assert f"| {fact} |" in md
    assert "## Comparison with the baseline" in md and "Differences beyond their uncertainty" in md
    assert "Headline side by side" in md


# --------------------------------------------------------------------------------------------
# comparison


def test_significance_rule() -> None:
    # MC: se 0.01 each -> combined √2·0.01 = 0.01414; 0.05 apart is z = 3.54 > 3, 0.02 is z = 1.41.
    d = significant(1.0, 1.05, 0.01, 0.01)
    assert d.flagged and d.z == pytest.approx(0.05 / math.sqrt(2e-4))
    assert not significant(1.0, 1.02, 0.01, 0.01).flagged
    # exact (no stderr): beyond round-off is a real difference, round-off is not.
    assert significant(0.5, 0.5 * (1 + 1e-10), 0.0, float("nan")).flagged
    assert not significant(0.5, 0.5 * (1 + 1e-14), 0.0, 0.0).flagged
    assert not significant(3e-17, 1e-16, 0.0, 0.0).flagged  # both zero to working precision
    # one side MC: its error alone is the uncertainty.
    assert not significant(1.0, 1.02, 0.01, 0.0).flagged and significant(1.0, 1.04, 0.01, 0.0).flagged


def test_compare_flags_the_regression_and_not_the_noise(run_a, run_b) -> None:
    cmp = compare_runs(run_a, run_b)
    assert len(cmp.differences) == len(cmp.flagged) and 0 < len(cmp.differences) < cmp.compared
    flagged = [f for f in cmp.flagged if "samples/s" not in f]
    for ck in ("init", "gd30"):
        for metric in ("rrmse M=1", "rel. bias"):
            for layer in ("1", "all"):
                want = f"checkpoint {ck} · st · layer {layer} · {metric}:"
                assert any(want in f for f in flagged), f"missing flag {want!r} in {flagged}"
    # everything else is the same estimator with another seed: exact values are equal and the
    # Monte-Carlo ones (arm, concrete) differ by noise only.
    others = [f for f in flagged if " · st · layer 1 · " not in f and " · st · layer all · " not in f]
    assert others == [], others
    acc = [t for t in cmp.tables if t.title.startswith("Accuracy")]
    mc_rows = [r for t in acc for r in t.rows if r[1].text in ("arm", "concrete:tau=0.5")]
    assert len(mc_rows) == 2 * 4 * 2 and not any(c.strong for r in mc_rows for c in r)


def _copy_with_manifest(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _change_fingerprint(m: dict) -> None:
    m["problems"][0]["fingerprint"] = "0" * 16


def _change_version(m: dict) -> None:
    m["estimators"][0]["version"] = "2"


def _change_device(m: dict) -> None:
    m["device"] = "cuda"


@pytest.mark.parametrize("edit, words", [
    (_change_fingerprint, ["problem 'tiny-2-3-2-1' at checkpoint 'init'", "0000000000000000"]),
    (_change_version, ["estimator 'psa' version 1 (run) vs 2 (baseline)"]),
    (_change_device, ["device cpu (run) vs cuda (baseline)"]),
])
def test_compare_refuses_runs_that_differ(tmp_path, run_a, edit, words) -> None:
    other = load_run(_copy_with_manifest(RUN_B, tmp_path / "b", edit))
    with pytest.raises(IncomparableRuns) as err:
        compare_runs(run_a, other)
    for w in words:
        assert w in str(err.value), str(err.value)
    assert "--force" in str(err.value)
    forced = compare_runs(run_a, other, force=True)
    assert any(words[0] in w for w in forced.warnings), forced.warnings
    assert "**Warning:**" in comparison_markdown(forced)


# --------------------------------------------------------------------------------------------
# CLI errors and --force


def _small_run(src: Path, dst: Path, edit=None) -> Path:
    """A copy of ``src`` restricted to checkpoint init and two estimators (fast to render)."""
    dst.mkdir()
    for name in ("metrics.csv", "throughput.csv", "failures.csv"):
        df = pd.read_csv(src / name, dtype=str, keep_default_na=False)
        keep = (df["checkpoint"] == "init")
        if name != "failures.csv":
            keep &= df["estimator"].isin(["psa", "arm"])
        df[keep].to_csv(dst / name, index=False)
    m = json.loads((src / "manifest.json").read_text())
    if edit:
        edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_cli_compare_mismatch_is_one_line_error_unless_forced(tmp_path) -> None:
    a = _small_run(RUN_A, tmp_path / "a")
    b = _small_run(RUN_B, tmp_path / "b", _change_fingerprint)
    runner = CliRunner()
    res = runner.invoke(main, ["report", str(a), "--compare", str(b), "--format", "md"])
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: cannot compare") and res.output.count("\n") == 1, res.output
    assert not (a / "report").exists(), "nothing is written when the comparison is refused"
    res = runner.invoke(main, ["report", str(a), "--compare", str(b), "--force", "--format", "md"])
    assert res.exit_code == 0, res.output
    md = (a / "report" / "report.md").read_text(encoding="utf-8")
    assert "**Warning:**" in md and "compared despite: problem 'tiny-2-3-2-1'" in md
    assert not (a / "report" / "report.html").exists()


@pytest.mark.parametrize("make, words", [
    (lambda p: (p.mkdir(), p)[1], "is empty"),
    (lambda p: (p.mkdir(), (p / "manifest.json").write_text("{}"), p)[2], "no metrics.csv"),
    (lambda p: (p.mkdir(), (p / "metrics.csv").write_text(""), p)[2], "is empty: expected a CSV header"),
    (lambda p: (p.mkdir(), (p / "metrics.csv").write_text("problem,value\n"), p)[2], "lacks the column"),
])
def test_cli_bad_run_dir_is_a_one_line_error(tmp_path, make, words) -> None:
    d = make(tmp_path / "run")
    res = CliRunner().invoke(main, ["report", str(d)])
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
    assert words in res.output, res.output


def test_cli_run_dir_that_does_not_exist_is_a_refused_value(tmp_path) -> None:
    missing = CliRunner().invoke(main, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "Invalid value for 'DIR'" in missing.output  # a refused value
    assert "does not exist" in missing.output, missing.output


@pytest.mark.parametrize("args, words", [(["--force"], "--force applies"),
                                          (["--sigma", "2"], "--sigma applies"),
                                          (["--force", "--sigma", "2"], "--force and --sigma apply")])
def test_cli_comparison_options_without_compare_are_refused(tmp_path, args, words) -> None:
    """--force and --sigma were accepted without --compare and did nothing."""
    r = CliRunner().invoke(main, ["report", str(RUN_A), *args, "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and f"{words} only with --compare DIR2" in r.stderr, r.output
    assert not (tmp_path / "r").exists()


def test_write_report_rejects_unknown_format(tmp_path) -> None:
    with pytest.raises(ValueError, match="formats"):
        write_report(RUN_A, formats=("pdf",), out_dir=tmp_path)


def test_run_with_only_failures_reports_them(tmp_path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.csv").write_text((RUN_A / "metrics.csv").read_text().splitlines()[0] + "\n")
    shutil.copy(RUN_A / "failures.csv", d / "failures.csv")
    run = load_run(d)
    text = summary_markdown(run)
    msg = run.failures["error"].iloc[0]
    assert text.count("No results.") == 2 and text.count(msg) == 2, text


def test_figures_leave_out_round_off_layers_and_a_deep_nets_output_layer() -> None:
    import pandas as pd

    from sbn_bench.reports.figures import figure_layers

    def rows(values: dict[str, float]) -> pd.DataFrame:
        return pd.DataFrame([{"metric": "rrmse", "layer": lay, "M": m, "value": v / m ** 0.5}
                             for lay, v in values.items() for m in (1.0, 100.0)])

    vae = rows({"1": 0.1, "out": 0.12, "prior": 1.3e-7, "all": 0.08})  # the prior: the analytic KL's
    assert figure_layers(vae, ["1", "out", "prior", "all"]) == ["1", "out", "all"]
    sampled = rows({"1": 0.1, "out": 0.12, "prior": 0.3, "all": 0.08})  # a sampled KL is estimated
    assert figure_layers(sampled, ["1", "out", "prior", "all"]) == ["1", "out", "prior", "all"]
    paper = rows({"1": 0.5, "2": 0.4, "3": 0.2, "out": 0.1, "all": 0.2})
    assert figure_layers(paper, ["1", "2", "3", "out", "all"]) == ["1", "2", "3", "all"]


@pytest.mark.slow
def test_headline_counts_do_not_depend_on_the_process_hash_seed() -> None:
    """The headline's "best or tied" counts list ties in run order, the same in every process
    (the layers were iterated as a set, whose order follows PYTHONHASHSEED: the published
    digits-vae-exact report named other estimators after each render)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = ("from sbn_bench.reports import load_run\nfrom sbn_bench.reports.body import headline_blocks\n"
            "r = load_run('reports/digits-vae-exact')\n"
            "print([b.text for p in r.problems() for b in headline_blocks(r, p) if hasattr(b, 'text')])")
    outs = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True, timeout=120).stdout
            for seed in ("1", "2", "3")}
    assert len(outs) == 1, outs
    assert "**local-reparam** 2, **ap2** 1" in outs.pop()  # a tie of 1s in run order


def test_a_report_loads_no_torch(tmp_path) -> None:
    """``sbn-bench report`` reads tables and draws figures: it must not import torch (a second or
    two of a report's few seconds), nor the paper experiment's runner. The metrics it needs are the
    scalar ones (:mod:`sbn_bench.metrics.scalars`); the tensor reducers load on first use."""
    import subprocess
    import sys

    code = ("import sys; from sbn_bench.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in ('torch', 'sbn_bench.runner', 'sbn_bench.problems', "
            "'sbn_bench.metrics.stats') if m in sys.modules))")
    full = ["report", str(RUN_A), "--compare", str(RUN_B), "--out", str(tmp_path)]
    for args in (["report", "--help"], full):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                             env={**os.environ, "SBN_BENCH_REPORT_WORKERS": "1"}).stdout
        assert out.splitlines()[-1] == "[]", (args, out)
    assert (tmp_path / "report.html").is_file()
    import sbn_bench.metrics as mt

    assert mt.exact_group_stats.__module__ == "sbn_bench.metrics.stats"  # loaded on first use
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = mt.nope


@pytest.mark.parametrize("sigma", ["nan", "inf", "0"])
def test_report_sigma_must_be_a_finite_positive_number(tmp_path, sigma) -> None:
    res = CliRunner().invoke(main, ["report", str(RUN_A), "--sigma", sigma, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "Invalid value for '--sigma'" in res.output, res.output
    assert not (tmp_path / "r").exists()

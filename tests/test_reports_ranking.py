"""The rules behind the report's marks and figures: best and ties given the standard errors,
upper bounds, Monte-Carlo reference columns, estimator families and their colours, off-scale
outliers, sparse markers, label placement, checkpoint epochs, and the headline's best table.
"""

from __future__ import annotations

import colorsys
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sbn_bench.estimators import load_registry
from sbn_bench.reports import load_run
from sbn_bench.reports.body import best_table
from sbn_bench.reports.families import NAME_FAMILIES, estimator_families, panel_groups
from sbn_bench.reports.figures import (
    OUTLIER_FACTOR,
    _marker_indices,
    draw,
    label_points,
    scale,
    styles,
)
from sbn_bench.reports.load import checkpoint_axis, checkpoint_epoch
from sbn_bench.reports.markdown import summary_markdown
from sbn_bench.reports.ranking import Estimate, rank, upper_bound
from sbn_bench.reports.tables import summary_table

DATA = Path(__file__).parent / "data"
RUN_A = DATA / "run_a"


# --------------------------------------------------------------------------------------------
# best, ties, unresolved values


def test_best_is_never_a_clipped_or_noisy_value() -> None:
    values = [Estimate(0.0, 0.2, "mc"),      # a bias clipped at 0: unresolved (and within
              Estimate(0.02, 0.2, "mc"),     # 2 s.e. of the best); smaller than its s.e.: unresolved
              Estimate(0.30, 0.01, "mc"),
              Estimate(0.33, 0.01, "mc"),    # 0.03 from the best, 2·√2·0.01 = 0.028: not a tie
              Estimate(0.31, 0.01, "mc")]    # within 2 s.e.: a tie
    r = rank(values, "low")
    assert r.ranks == ["unresolved", "unresolved", "best", "", "tie"]
    assert r.best == 2 and r.runner_up == 3 and r.margin == pytest.approx(0.03 / math.sqrt(2e-4))


def test_an_unresolved_value_significantly_better_leaves_no_best() -> None:
    """An unbiased estimator's bias clipped at 0 ± 0.245 (bound ≤ 0.49) is below a biased one's
    0.689 ± 0.031 by 0.689/√(0.245² + 0.031²) = 2.8 > 2 standard errors: the resolved value is not
    the lowest, so nothing is named best; an unresolved value within 2 s.e. changes nothing."""
    clipped, noisy = Estimate(0.0, 0.245, "mc"), Estimate(0.0, 0.6, "mc")
    st, other = Estimate(0.689, 0.031, "mc"), Estimate(0.80, 0.02, "mc")
    r = rank([st, clipped, noisy, other], "low")
    assert r.best is None and r.beaten_by == (1,) and r.runner_up is None and r.margin is None
    assert r.ranks == ["", "unresolved", "unresolved", ""]
    r = rank([st, noisy, other], "low")  # 0.689/√(0.6² + 0.031²) = 1.1: st stays best
    assert r.best == 0 and r.beaten_by == () and r.ranks == ["best", "unresolved", ""]
    # for a metric where high is better, a significantly higher unresolved value (|v| ≤ s.e.)
    r = rank([Estimate(0.1, 0.01, "mc"), Estimate(-0.9, 1.0, "mc"), Estimate(0.9, 1.0, "mc")], "high")
    assert r.best == 0 and r.beaten_by == ()  # 0.8/√(1 + 1e-4) < 2
    r = rank([Estimate(-3.0, 0.01, "mc"), Estimate(0.5, 1.0, "mc")], "high")
    assert r.best is None and r.beaten_by == (1,)


def test_exact_values_tie_only_to_round_off() -> None:
    r = rank([Estimate(1.0, 0.0, "exact"), Estimate(1.0 + 1e-13, 0.0, "exact"),
              Estimate(1.001, 0.0, "exact")], "low")
    assert r.ranks == ["best", "tie", ""] and math.isinf(r.margin)
    assert rank([Estimate(0.9, 0.0, "exact"), Estimate(0.95, 0.0, "exact")], "high").best == 1
    assert rank([None, Estimate(float("nan"), 0.0, "exact")], "low").best is None


def test_a_bias_not_above_two_standard_errors_is_an_upper_bound() -> None:
    assert upper_bound(Estimate(0.0, 0.19, "mc")) == pytest.approx(0.38)
    assert upper_bound(Estimate(0.1, 0.06, "mc")) == pytest.approx(0.22)
    assert upper_bound(Estimate(0.2, 0.06, "mc")) is None      # 0.2 > 2·0.06: a real bias
    assert upper_bound(Estimate(1e-14, 0.0, "exact")) is None  # exact: the value itself


def test_a_bias_is_judged_on_its_square() -> None:
    """A bias v ± s (s the delta-method error of √x) is above zero when x = v² exceeds 2·se_x =
    2·2vs, i.e. v > 4s, and resolved (may be ranked) when v > 2s; other metrics keep v > 2s, v > s."""
    assert upper_bound(Estimate(0.2, 0.06, "mc", squared=True)) == pytest.approx(0.32)  # 0.2 < 0.24
    assert upper_bound(Estimate(0.25, 0.06, "mc", squared=True)) is None
    assert upper_bound(Estimate(0.0, 0.19, "mc", squared=True)) == pytest.approx(0.38)
    assert not Estimate(0.1, 0.06, "mc", squared=True).resolved
    assert Estimate(0.13, 0.06, "mc", squared=True).resolved
    assert Estimate(0.1, 0.06, "mc").resolved and Estimate(0.13, 0.06, "mc").significantly_positive()
    assert Estimate(1e-3, 0.0, "exact", squared=True).resolved  # exact values: no error to judge


def test_a_bound_is_not_the_lowest_bias_when_a_lower_bias_is_unresolved() -> None:
    """st 0.131 ± 0.034 (resolved, but a bound: not above 4 s.e.) was named the clear lowest bias
    while psa and reinforce, 0.051 ± 0.038, lower but unresolved, were left out (regression
    review): the data cannot order biases that may all be zero, so nothing is best."""
    psa, st = Estimate(0.0514, 0.0384, squared=True), Estimate(0.1306, 0.0335, squared=True)
    r = rank([psa, st, psa], "low")
    assert r.best is None and r.beaten_by == (0, 2)
    # a best bias significantly above zero keeps the usual rule (lower unresolved within 2 s.e.)
    r = rank([Estimate(0.0514, 0.0384, squared=True), Estimate(0.14, 0.03, squared=True)], "low")
    assert r.best == 1 and r.beaten_by == ()


def test_a_relative_bias_is_judged_by_its_bias_norm_row() -> None:
    """Against a Monte-Carlo reference rel_bias's stderr carries ‖g‖'s error too (e = 20 % here):
    judged by it, a bias with x = 3 se_x showed as a bound (and none with e ≥ 0.25 could ever be
    significant); its bias_norm row, whose x and se_x have no ‖g‖ term, decides (statistics
    review)."""
    from sbn_bench.metrics.scalars import norm_stderr
    from sbn_bench.reports.tables import metric_index

    x, se_x, G, e = 3.0, 1.0, 10.0, 0.2
    bn_v, bn_s = math.sqrt(x), norm_stderr(x, se_x)
    rb_v = bn_v / G
    rb_s = math.hypot(bn_s / G, rb_v * e)  # registry._relative_se
    rows = pd.DataFrame({"estimator": ["arm", "arm"], "layer": ["1", "1"],
                         "metric": ["bias_norm", "rel_bias"], "M": [math.nan, math.nan],
                         "value": [bn_v, rb_v], "stderr": [bn_s, rb_s], "mode": ["mc", "mc"],
                         "reference": ["mc:reinforce:1000"] * 2, "reference_rel_error": [0.2] * 2})
    idx = metric_index(rows)
    alone = Estimate(rb_v, rb_s, "mc", squared=True)
    assert not alone.significantly_positive() and upper_bound(alone) is not None
    rb = idx[("arm", "1", "rel_bias", None)]
    assert rb.significantly_positive() and upper_bound(rb) is None and rb.resolved
    assert idx[("arm", "1", "bias_norm", None)].significantly_positive()


def _with_mc_reference(tmp_path: Path) -> Path:
    """run_a with the reference columns of a Monte-Carlo reference on arm's and psa's rows."""
    d = tmp_path / "mcref"
    shutil.copytree(RUN_A, d)
    m = pd.read_csv(d / "metrics.csv", dtype=str, keep_default_na=False)
    mc = m["estimator"].isin(["arm", "psa"])
    m["reference"] = np.where(mc, "mc:reinforce:20000", "")
    m["reference_rel_error"] = np.where(mc, "0.021", "")
    m.to_csv(d / "metrics.csv", index=False)
    return d


def test_monte_carlo_reference_columns_are_read_and_shown(tmp_path: Path) -> None:
    run = load_run(_with_mc_reference(tmp_path))
    assert set(run.metrics["reference"]) == {"exact", "mc:reinforce:20000"}
    assert run.metrics.loc[run.metrics["reference"] == "exact", "reference_rel_error"].eq(0).all()
    table = summary_table(run, "tiny-2-3-2-1", "init")
    assert table.header[:5] == ["layer", "estimator", "family", "mode", "reference"]
    refs = {r[1].text: r[4].text for r in table.rows}
    assert refs["arm"] == "mc:reinforce:20000 (ε 0.021)" and refs["st"] == "exact"
    assert any("Monte-Carlo reference" in n for n in table.notes)
    # a run without the columns reads as measured against the exact reference
    plain = load_run(RUN_A)
    assert set(plain.metrics["reference"]) == {"exact"}
    assert "reference" not in summary_table(plain, "tiny-2-3-2-1", "init").header


def test_golden_summary_is_unchanged_by_exact_reference_columns(tmp_path: Path) -> None:
    """Writing the reference columns explicitly as exact changes nothing in the tables."""
    d = tmp_path / "exactref"
    shutil.copytree(RUN_A, d)
    m = pd.read_csv(d / "metrics.csv", dtype=str, keep_default_na=False)
    m["reference"], m["reference_rel_error"] = "exact", "0"
    m.to_csv(d / "metrics.csv", index=False)
    assert summary_markdown(load_run(d)) == summary_markdown(load_run(RUN_A))


def test_best_table_names_ties_and_never_a_clipped_bias() -> None:
    run = load_run(RUN_A)
    table = best_table(run, "tiny-2-3-2-1")
    head = table.header
    rows = {(r[0].text, r[1].text): r for r in table.rows}
    assert len(rows) == 2 * 4
    init1 = rows[("init", "1")]
    assert init1[head.index("best rrmse M=1")].text == "psa"
    # arm's layer-1 bias (0 ± 0.19, clipped) is never the lowest bias; reinforce's exact ≈0 is
    assert init1[head.index("lowest rel. bias")].text == "reinforce"
    assert init1[head.index("rel. bias")].text == "≈0"
    assert any("arm" in n and "not ranked" in n for n in table.notes)
    # layer 2: psa's and reinforce's exact biases are both at round-off: a tie
    assert rows[("init", "2")][head.index("bias ties")].text == "tie: reinforce"
    # the runner-up's relative gap is given, so that values equal at the table's precision do
    # not contradict a clear win (exact rows: z = ∞ however small the gap)
    for r in table.rows:
        nxt = r[head.index("next (margin)")].text
        best = float(r[head.index("rrmse")].sort)
        name = nxt.split(" (")[0]
        ru = run.metrics[(run.metrics["checkpoint"] == r[0].text) & (run.metrics["layer"] == r[1].text)
                         & (run.metrics["estimator"] == name) & (run.metrics["metric"] == "rrmse")
                         & (run.metrics["M"] == 1)]["value"].item()
        pct = 100 * (ru - best) / best
        assert f"(+{pct:,.0f}%, z = " in nxt if pct >= 100 else f"(+{pct:.2g}%, z = " in nxt, nxt
        assert "e+" not in nxt


def test_best_table_names_no_lowest_bias_when_an_unresolved_one_is_lower(tmp_path: Path) -> None:
    """run_a with its layer-1 biases at init made Monte-Carlo values 0.9 ± 0.02, except arm's
    clipped 0 ± 0.19 (bound ≤ 0.38): arm is lower beyond the errors, so no estimator is named the
    lowest; the cell says which unresolved one is lower."""
    run_dir = tmp_path / "run"
    shutil.copytree(RUN_A, run_dir)
    m = pd.read_csv(run_dir / "metrics.csv", keep_default_na=False, dtype=str)
    sel = ((m["checkpoint"] == "init") & (m["layer"] == "1") & (m["metric"] == "rel_bias")
           & (m["estimator"] != "arm"))
    m.loc[sel, "value"], m.loc[sel, "stderr"], m.loc[sel, "mode"] = "0.9", "0.02", "mc"
    m.to_csv(run_dir / "metrics.csv", index=False)
    table = best_table(load_run(run_dir), "tiny-2-3-2-1")
    head = table.header
    row = next(r for r in table.rows if (r[0].text, r[1].text) == ("init", "1"))
    assert row[head.index("lowest rel. bias")].text == "undecided"
    assert row[head.index("bias ties")].text == "lower, not resolved: arm ≤ 0.38"
    assert row[head.index("best rrmse M=1")].text == "psa"  # rrmse ranked as before
    # the unresolved biases of an undecided row are counted in the note too (it skipped them)
    arm = m[(m["estimator"] == "arm") & (m["metric"] == "rel_bias")]
    n = sum(not Estimate(float(v), float(se), md).resolved
            for v, se, md in zip(arm["value"], arm["stderr"], arm["mode"]))
    assert n >= 2 and f"arm ({n}×)" in " ".join(table.notes), (n, table.notes)


def _exact_bias_rows(rel_bias: float, rrmse_1: float) -> pd.DataFrame:
    """One exact-mode estimator's rel_bias, bias_norm (‖g‖ = 0.5) and rrmse(M=1) in one layer."""
    base = dict(problem="p", checkpoint="c", estimator="st", layer="out", mode="exact",
                stderr=0.0)
    return pd.DataFrame([{**base, "metric": "rel_bias", "M": math.nan, "value": rel_bias},
                         {**base, "metric": "bias_norm", "M": math.nan, "value": 0.5 * rel_bias},
                         {**base, "metric": "rrmse", "M": 1.0, "value": rrmse_1}])


@pytest.mark.parametrize(("rel_bias", "rrmse_1", "shown"), [
    (1.29e-12, 11.4, "≈0"),        # the paper run's epoch-2000 output layer: samples 11× ‖g‖
    (1.29e-12, 0.05, "1.29e-12"),  # small samples: 1.29e-12 is above their round-off
    (5.12e-11, 11.4, "5.12e-11"),  # above 1e-12 · (1 + 11.4): a bias, shown
    (8e-13, math.nan, "≈0"),       # no rrmse: the plain floor
])
def test_an_exact_bias_is_zero_to_the_round_off_of_its_samples(rel_bias: float, rrmse_1: float,
                                                               shown: str) -> None:
    """An exact-mode bias is a weighted sum over every path of estimates whose size is
    √E‖ĝ‖² ≤ ‖g‖(1 + rrmse(M=1)): its round-off floor grows with them. An unbiased estimator with
    samples 11× its gradient showed a "relative bias" of 1.29e-12, and was ranked by it, where a
    smaller estimator showed ≈0."""
    from sbn_bench.reports.tables import fmt_estimate, metric_index

    idx = metric_index(_exact_bias_rows(rel_bias, rrmse_1))
    for metric in ("rel_bias", "bias_norm"):
        est = idx[("st", "out", metric, None)]
        want = shown if shown == "≈0" or metric == "rel_bias" else f"{0.5 * rel_bias:.3g}"
        assert fmt_estimate(est, bound=True) == want, (metric, est)
        assert est.significantly_positive() == (shown != "≈0")
    # two round-off biases tie however their floors compare; a real bias is beaten by one
    tiny, other = idx[("st", "out", "rel_bias", None)], Estimate(0.0, 0.0, "exact")
    assert rank([other, tiny], "low").ranks == (["best", "tie"] if shown == "≈0" else ["best", ""])


# --------------------------------------------------------------------------------------------
# families and colours


def test_family_fallback_agrees_with_the_registry() -> None:
    reg = load_registry()
    for name in reg.names():
        est = reg.create(name)
        if est.family and name in NAME_FAMILIES:
            assert NAME_FAMILIES[name] == est.family, (name, est.family)


def test_manifest_families_win_over_the_name_map() -> None:
    manifest = {"estimators": [{"spec": "psa", "family": "my-family"}, {"spec": "arm"}]}
    fams = estimator_families(["psa", "arm", "plugin-x"], manifest)
    assert fams == {"psa": "my-family", "arm": "antithetic", "plugin-x": "other"}


def _hue(rgb: tuple[float, float, float]) -> float:
    return colorsys.rgb_to_hsv(*rgb)[0]


def test_colours_are_one_hue_per_family_and_distinct_within_it() -> None:
    ests = [f"reinforce-{i}" for i in range(4)] + ["psa", "st", "st-identity", "arm", "disarm"]
    fams = {**{e: "score-function" for e in ests[:4]}, "psa": "psa", "st": "straight-through",
            "st-identity": "straight-through", "arm": "antithetic", "disarm": "antithetic"}
    sty = styles(ests, fams)
    assert len({s.colour for s in sty.values()}) == len(ests)
    blues = [_hue(sty[e].colour) for e in ests[:4]]
    assert max(blues) - min(blues) < 0.05, blues  # shades of one hue
    # members of a family differ in marker and dash as well as shade
    assert len({(sty[e].marker, sty[e].dash) for e in ests[:4]}) == 4
    assert abs(_hue(sty["psa"].colour) - _hue(sty["reinforce-0"].colour)) > 0.2


def test_every_built_in_family_has_its_own_hue() -> None:
    """The registry's families (the zoo's control-variates and local-expectation included) each
    have a colormap of their own, of hues at least 0.05 apart (on the hue circle)."""
    from sbn_bench.reports.figures import FAMILY_CMAPS

    reg = load_registry()
    ests = [n for n in reg.names()]
    fams = {n: reg.create(n).family for n in ests}
    assert {"control-variates", "local-expectation"} <= set(fams.values())
    assert set(fams.values()) <= set(FAMILY_CMAPS), set(fams.values()) - set(FAMILY_CMAPS)
    sty = styles(ests, fams)
    assert len({s.colour for s in sty.values()}) == len(ests)
    hue = {f: _hue(sty[next(e for e in ests if fams[e] == f)].colour)
           for f in set(fams.values()) if f != "exact"}  # grey: no hue
    for a in hue:
        for b in hue:
            d = abs(hue[a] - hue[b])
            assert a == b or min(d, 1 - d) > 0.05, (a, b, hue[a], hue[b])


def test_twenty_five_estimators_are_cut_into_panels_of_whole_families() -> None:
    fams = {}
    for f, n in (("a", 5), ("b", 4), ("c", 6), ("d", 3), ("e", 7)):
        fams.update({f"{f}{i}": f for i in range(n)})
    groups = panel_groups(list(fams), fams, 12)
    assert sum(len(g) for g in groups) == 25 and all(len(g) <= 12 for g in groups)
    for g in groups:  # no family split across panels (none is larger than a panel)
        for f in {fams[e] for e in g}:
            assert all(e in g for e in fams if fams[e] == f)
    assert panel_groups(["x", "y"], {"x": "a", "y": "b"}) == [["x", "y"]]


def test_styles_of_a_run_come_from_its_manifest(tmp_path: Path) -> None:
    d = tmp_path / "run"
    shutil.copytree(RUN_A, d)
    m = json.loads((d / "manifest.json").read_text())
    for rec in m["estimators"]:
        rec["family"] = "shared"
    (d / "manifest.json").write_text(json.dumps(m))
    run = load_run(d)
    assert set(run.families().values()) == {"shared"}
    sty = styles(run.estimators(), run.families())
    hues = [_hue(s.colour) for s in sty.values()]
    assert max(hues) - min(hues) < 0.15  # one sequential colormap: its hue drifts a little


# --------------------------------------------------------------------------------------------
# figure helpers


def test_an_outlier_is_named_off_scale_and_left_out_of_the_limits() -> None:
    panels = [{"a": np.array([1.0, 0.5]), "b": np.array([2.0, 1.0]), "c": np.array([3.0]),
               "wild": np.array([2.0 * OUTLIER_FACTOR * 2, 500.0])},
              {"a": np.array([0.1]), "b": np.array([0.2]), "c": np.array([0.3]), "wild": np.array([0.2])}]
    off, (lo, hi) = scale(panels)
    assert off == {"wild"}
    assert lo < 0.1 and 3.0 < hi < 10.0


def test_markers_are_sparse_and_staggered() -> None:
    m = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200, 300,
                  400, 500, 600, 700, 800, 900, 1000, 2000], float)
    marks = [_marker_indices(m, i) for i in range(6)]
    assert all(1 <= len(x) <= 4 for x in marks)
    assert len({tuple(x) for x in marks}) > 1  # not every line marked at the same M
    assert _marker_indices(m[:3], 0) == [0, 1, 2]


def test_labels_do_not_overlap_and_leader_lines_join_the_moved_ones() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    xs = np.array([5.0, 5.05, 5.1, 5.0, 2.0])  # four points nearly on top of each other
    ys = np.array([5.0, 5.05, 4.95, 5.1, 2.0])
    names = ["concrete:tau=0.1", "concrete:tau=1.0", "st-gumbel:tau=1.0", "st", "psa"]
    boxes = label_points(ax, xs, ys, names, ["k"] * 5)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    leaders = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert leaders and len(leaders[0].get_segments()) >= 2  # the crowded ones are joined by lines
    assert [t.get_text() for t in ax.texts] and len(ax.texts) == 5


@pytest.mark.parametrize("labels, want", [
    (["epoch1", "epoch100", "epoch2000"], ([1.0, 100.0, 2000.0], "training epoch")),
    (["e5", "ep_10", "20"], ([5.0, 10.0, 20.0], "training epoch")),
    (["init", "gd30"], ([0.0, 1.0], "checkpoint (run order)")),
    (["init", "epoch1", "epoch10", "epoch20"], ([0.0, 1.0, 10.0, 20.0], "training epoch")),  # init: 0
    (["init", "epoch0"], ([0.0, 1.0], "checkpoint (run order)")),  # two at epoch 0
    (["epoch1", "final"], ([0.0, 1.0], "checkpoint (run order)")),
])
def test_checkpoint_labels_give_the_training_axis(labels, want) -> None:
    assert checkpoint_axis(labels) == want
    assert checkpoint_epoch("epoch100") == 100 and checkpoint_epoch("gd30-b") is None


def test_heatmap_boxes_the_best_and_dashes_the_ties() -> None:
    from matplotlib.patches import Rectangle

    from sbn_bench.reports.figures import heatmap_figure

    rows = pd.DataFrame({
        "checkpoint": ["c"] * 3, "layer": ["1"] * 3, "estimator": ["a", "b", "c"],
        "metric": ["rrmse"] * 3, "M": [1.0] * 3, "value": [1.0, 1.02, 3.0],
        "stderr": [0.01, 0.01, 0.01], "mode": ["mc"] * 3})
    sty = styles(["a", "b", "c"], {"a": "f", "b": "f", "c": "g"})
    fig = draw(heatmap_figure, rows, ["a", "b", "c"], sty, ["c"], "t")
    boxes = [p for p in fig.get_axes()[0].patches if isinstance(p, Rectangle)]
    assert len(boxes) == 2  # a (best) and b (within 2 s.e.: a tie), not c
    assert boxes[0].get_linestyle() != boxes[1].get_linestyle()  # one solid, one dashed
    assert {round(p.get_y() + p.get_height() / 2) for p in boxes} == {0, 1}


def test_heatmap_marks_values_smaller_than_their_error() -> None:
    """A value whose standard error exceeds it, or a Monte-Carlo value whose error is unknown
    (NaN: the ranking cannot rank it either), is written with a '?' in italics (never boxed as the
    best), as the CLI's summary marks it; the others, an exact value with no error included, are
    written plainly."""
    from sbn_bench.reports.figures import heatmap_figure, unresolved_cells

    rows = pd.DataFrame({
        "checkpoint": ["c"] * 4, "layer": ["1"] * 4, "estimator": ["a", "b", "c", "d"],
        "metric": ["rrmse"] * 4, "M": [1.0] * 4, "value": [0.02, 1.0, 3.0, 5.0],
        "stderr": [1.9, 0.01, float("nan"), float("nan")], "mode": ["mc"] * 3 + ["exact"]})
    sty = styles(["a", "b", "c", "d"], {"a": "f", "b": "f", "c": "g", "d": "g"})
    fig = draw(heatmap_figure, rows, ["a", "b", "c", "d"], sty, ["c"], "t")
    texts = {t.get_text(): t.get_fontstyle() for t in fig.get_axes()[0].texts if t.get_text() != "c"}
    assert texts == {"0.02?": "italic", "1": "normal", "3?": "italic", "5": "normal"}, texts
    assert unresolved_cells(rows) == 2


def _many_estimators(n_new: int) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """run_a's rows at checkpoint init plus ``n_new`` invented estimators (copies of arm's rows,
    scaled) in four more families."""
    run = load_run(RUN_A)
    rows = run.metrics[run.metrics["checkpoint"] == "init"]
    fams = run.families()
    extra = []
    for i in range(n_new):
        part = rows[rows["estimator"] == "arm"].copy()
        name = f"new-{i}"
        part["estimator"] = name
        part.loc[~part["metric"].str.startswith("cosine"), "value"] *= 1 + 0.05 * i
        extra.append(part)
        fams[name] = f"family-{i % 4}"
    ests = [*run.estimators(), *(f"new-{i}" for i in range(n_new))]
    return pd.concat([rows, *extra], ignore_index=True), ests, fams


def test_twenty_five_estimators_become_small_multiples_with_distinct_styles() -> None:
    from sbn_bench.reports.figures import MAX_LINES, accuracy_figure, bias_variance_figure

    rows, ests, fams = _many_estimators(19)
    present = [e for e in ests if e in set(rows["estimator"])]
    assert len(present) == 24
    sty = styles(ests, fams)
    assert len({(s.colour, s.marker, s.dash) for s in sty.values()}) == len(ests)
    groups = panel_groups(present, fams, MAX_LINES)
    assert len(groups) >= 2
    fig = draw(accuracy_figure, rows, ests, sty, "many")
    assert len(fig.get_axes()) == 2 * len(groups) * 3  # (rrmse, 1 − cos) × groups, × layers 1, 2, all
    for ax in fig.get_axes():  # no panel holds more than MAX_LINES lines
        assert len(ax.get_lines()) <= MAX_LINES
    # each group of rows says which families it holds, down the left edge beside its rows (the one
    # legend alone did not; new-user review), every family once
    labels = [t for t in fig.texts if t.get_rotation() == 90]
    assert len(labels) == len(groups)
    for t, group in zip(labels, groups):
        assert " ".join(t.get_text().split()) == " · ".join(dict.fromkeys(fams[e] for e in group))
    fig = draw(bias_variance_figure, rows, ests, sty, ["init"], "many")
    assert len(fig.get_axes()) == len(groups) * 3  # one row per group, layers 1, 2, all

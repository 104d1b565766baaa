"""The report's own sections, as format-neutral blocks (:mod:`~sbn_bench.reports.sections`):

* :class:`HeadlineSection` (first): per problem, the heatmap of rrmse at M=1 for estimators ×
  (checkpoint, layer) and the best estimator of each (checkpoint, layer) with its significance;
  across problems (e.g. training seeds), how often each estimator is best;
* :class:`StorySection`: rrmse at M=1 and relative bias against the training epoch;
* :class:`DetailsSection`: per problem and checkpoint (collapsible), the summary and throughput
  tables and the figures;
* :func:`comparison_blocks`: the headline of a run and of its baseline side by side, and the
  differences beyond their uncertainty only.

Plug-in sections (entry-point group ``sbn_bench.report_sections``, e.g. the paper's claims) go
between the headline and the story.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from functools import partial

import pandas as pd

from sbn_bench.metrics import layer_key
from sbn_bench.reports import figures as fg
from sbn_bench.reports.compare import Comparison, differences_table
from sbn_bench.reports.families import ranked
from sbn_bench.reports.load import Run, checkpoint_axis, is_init, m_grid_lacking_one
from sbn_bench.reports.ranking import TIE_Z, rank
from sbn_bench.reports.sections import Block, Bullets, Columns, Details, Heading, Plot, Text
from sbn_bench.reports.tables import (
    Table,
    TableCell,
    cell_failures,
    cell_index,
    cell_label,
    cell_rows,
    failure_lines,
    fmt_estimate,
    fmt_names,
    fmt_z,
    orphan_failures,
    slug,
    summary_table,
    throughput_rows_of,
    throughput_table,
)

HEADLINE_LEGEND = (
    "rrmse at M=1 is the relative RMSE √(‖β‖² + V)/‖g‖ of one gradient sample (SPEC §5); lower is "
    "better. In the heatmap the best estimator of each column is boxed, and the estimators that "
    f"cannot be told from it (within {TIE_Z:g} standard errors, or equal to round-off for exact "
    "values) are boxed with a dashed line. The table names them: **tie** means the data do not "
    "separate them; the margin is the best's lead over the next estimator in standard errors "
    "(∞ between exact values). A value clipped at zero or smaller than its standard error (a bias: "
    "twice it) is never called best; when such a value is better than the best resolved one by more "
    f"than {TIE_Z:g} standard errors, or is a lower bias than a best one that is itself not "
    "significantly above zero, the table says **undecided** and names it.")


def _problem_rows(run: Run, problem: str) -> pd.DataFrame:
    mt = run.metrics
    return mt[mt["problem"] == problem]


def _ranked_estimators(run: Run, idx: dict) -> list[str]:
    """The estimators with rows in ``idx`` that take part in "best" (not the exact reference)."""
    fams = run.families()
    present = {k[0] for k in idx}
    return [e for e in run.estimators() if e in present and ranked(e, fams)]


def _styles(run: Run) -> dict[str, fg.Style]:
    return fg.styles(run.estimators(), run.families())


# --------------------------------------------------------------------------------------------
# the headline


def _gap(best: float, runner_up: object) -> str:
    """How much higher the runner-up is, relative (``"+0.055%, "``), so that two values equal at
    the table's precision are not read as a contradiction of a clear win; ``""`` when unknown."""
    v = getattr(runner_up, "value", None)
    if v is None or not (math.isfinite(v) and math.isfinite(best)) or best <= 0:
        return ""
    pct = 100 * (v - best) / best
    return f"+{pct:,.0f}%, " if pct >= 100 else f"+{pct:.2g}%, "


def best_table(run: Run, problem: str, m: float = 1.0, *, compact: bool = False) -> Table:
    """The best estimator per (checkpoint, layer) of ``problem``: lowest rrmse at M=``m`` and
    lowest relative bias, each with its ties and its margin over the next (rules of
    :mod:`~sbn_bench.reports.ranking`); ``compact``: rrmse and its ties only (for side by side)."""
    rows: list[list[TableCell]] = []
    notes: list[str] = []
    unresolved: Counter[str] = Counter()
    for ck in run.checkpoints(problem):
        idx = cell_index(run, problem, ck)
        ests = _ranked_estimators(run, idx)
        layers = sorted({k[1] for k in idx}, key=layer_key)
        for layer in layers:
            row = [TableCell(ck, sort=float(run.checkpoints(problem).index(ck))),
                   TableCell(layer, sort=float(layer_key(layer)[0] * 1000 + layer_key(layer)[1]))]
            for metric, mm in (("rrmse", m), ("rel_bias", None)):
                values = [idx.get((e, layer, metric, mm)) for e in ests]
                r = rank(values, "low")
                if metric == "rel_bias":  # every row, also one with no best
                    unresolved.update(e for e, rk, v in zip(ests, r.ranks, values)
                                      if rk == "unresolved" and v is not None)
                if r.best is None:
                    beaten = [f"{ests[i]} {fmt_estimate(v, bound=metric == 'rel_bias')}"
                              for i in r.beaten_by if (v := values[i]) is not None]
                    row += [TableCell("undecided" if beaten else "—"), TableCell("—"),
                            TableCell("lower, not resolved: " + ", ".join(beaten) if beaten else "—")]
                    if metric == "rrmse":
                        row.append(TableCell("—"))
                    continue
                best = values[r.best]
                assert best is not None
                ties = [ests[i] for i in r.ties]
                row += [TableCell(ests[r.best], strong=not ties),
                        TableCell(fmt_estimate(best, bound=metric == "rel_bias"), sort=best.value),
                        TableCell("tie: " + fmt_names(ties) if ties else "clear", tie=bool(ties))]
                if metric == "rrmse":
                    nxt = "—" if r.runner_up is None else \
                        f"{ests[r.runner_up]} ({_gap(best.value, values[r.runner_up])}z = {fmt_z(r.margin)})"
                    row.append(TableCell(nxt, sort=r.margin if r.margin is not None
                                         and math.isfinite(r.margin) else None))
            rows.append(row[:5] if compact else row)
    if compact:
        return Table(title="", header=["checkpoint", "layer", f"best rrmse M={m:g}", "rrmse", "ties"],
                     rows=rows, anchor=slug("best", problem))
    if unresolved:
        notes.append("not ranked for bias (clipped at 0 or at most twice its standard error: "
                     "the run cannot resolve it): " + ", ".join(f"{e} ({n}×)" for e, n in unresolved.items()))
    return Table(title="", header=["checkpoint", "layer", f"best rrmse M={m:g}", "rrmse", "ties",
                                   "next (margin)", "lowest rel. bias", "rel. bias", "bias ties"],
                 rows=rows, notes=notes, anchor=slug("best", problem))


def best_counts(run: Run, problem: str, m: float = 1.0) -> Counter[str]:
    """How many (checkpoint, layer) columns each estimator is best in, or tied with the best, for
    rrmse at M=``m``."""
    counts: Counter[str] = Counter()
    for ck in run.checkpoints(problem):
        idx = cell_index(run, problem, ck)
        ests = _ranked_estimators(run, idx)
        for layer in dict.fromkeys(k[1] for k in idx):  # in row order (a set's order is per process)
            r = rank([idx.get((e, layer, "rrmse", m)) for e in ests], "low")
            counts.update(ests[i] for i, x in enumerate(r.ranks) if x in ("best", "tie"))
    return counts


def _columns(run: Run, problem: str) -> int:
    rr = _problem_rows(run, problem)
    rr = rr[(rr["metric"] == "rrmse") & (rr["M"] == 1.0)]
    return len(rr.drop_duplicates(["checkpoint", "layer"]))


def heatmap_plot(run: Run, problem: str, name: str | None = None) -> Plot:
    """The headline heatmap of ``problem`` as a :class:`Plot` block."""
    sty = _styles(run)
    rows = _problem_rows(run, problem)
    draw = partial(fg.draw, fg.heatmap_figure, rows, run.estimators(), sty,
                   run.checkpoints(problem), f"rrmse at M=1 — {problem}")
    vague = fg.unresolved_cells(rows)
    return Plot(name or f"{slug(problem)}_headline", draw,
                f"rrmse at M=1 per estimator (rows, grouped by family) and (checkpoint, layer) "
                f"(columns), {problem}; boxed: best; dashed: tied with the best"
                + (f"; ? (italics): a value smaller than its standard error (or whose error is "
                   f"unknown), not resolved "
                   f"({vague} of them)." if vague else "."))


def headline_blocks(run: Run, problem: str) -> list[Block]:
    """The heatmap, a one-line summary and the best-per-layer table of one problem."""
    counts = best_counts(run, problem)
    n = _columns(run, problem)
    out: list[Block] = [heatmap_plot(run, problem)]
    if counts and n:
        order = {e: i for i, e in enumerate(run.estimators())}
        top = sorted(counts.items(), key=lambda kv: (-kv[1], order.get(kv[0], len(order))))[:4]
        out.append(Text(f"Best or tied at M=1 in the {n} (checkpoint, layer) columns: "
                        + ", ".join(f"**{e}** {k}" for e, k in top)
                        + (" …" if len(counts) > 4 else "") + "."))
        fixed = biased_deterministic(run, list(counts))
        if fixed:
            one = len(fixed) == 1
            out.append(Text(
                f"{', '.join(f'**{e}**' for e in fixed)} {'has' if one else 'have'} no randomness "
                f"and {'is' if one else 'are'} biased: {'its' if one else 'their'} rrmse is "
                f"{'its' if one else 'their'} relative bias at every M, so {'it' if one else 'they'} "
                "may lead at M = 1 and gain nothing from more samples; the rrmse-against-M figures "
                "under Results by problem and checkpoint show where the others pass "
                f"{'it' if one else 'them'}."))
    out.append(best_table(run, problem))
    return out


def biased_deterministic(run: Run, estimators: Sequence[str]) -> list[str]:
    """Those of ``estimators`` that the manifest records as drawing no randomness and biased
    (``tanh``, ``ap2``, …: one fixed gradient, whose rrmse does not fall with M), in run order."""
    info = {e.get("spec"): e for e in run.manifest.get("estimators") or [] if isinstance(e, dict)}
    return [e for e in run.estimators() if e in estimators and e in info
            and info[e].get("randomness") == "none" and info[e].get("unbiased") is False]


def across_problems_table(run: Run, problems: Sequence[str], m: float = 1.0) -> Table | None:
    """When several problems share checkpoints and layers (e.g. training seeds): the best estimator
    of each (checkpoint, layer) in each problem, and how often each estimator is best."""
    keys: dict[tuple[str, str], dict[str, str]] = {}
    tally: Counter[str] = Counter()
    for p in problems:
        for ck in run.checkpoints(p):
            idx = cell_index(run, p, ck)
            ests = _ranked_estimators(run, idx)
            for layer in sorted({k[1] for k in idx}, key=layer_key):
                r = rank([idx.get((e, layer, "rrmse", m)) for e in ests], "low")
                if r.best is None:
                    continue
                ties = [ests[i] for i in r.ties]
                text = ests[r.best] + (f" (tie: {fmt_names(ties, 2)})" if ties else "")
                keys.setdefault((ck, layer), {})[p] = text
                tally[ests[r.best]] += 1
    if not keys:
        return None
    rows = []
    cks = list(dict.fromkeys(ck for ck, _ in keys))  # in order of first appearance
    for (ck, layer), by_p in sorted(keys.items(), key=lambda kv: (cks.index(kv[0][0]),
                                                                   layer_key(kv[0][1]))):
        winners = Counter(t.split(" (")[0] for t in by_p.values())
        top, k = winners.most_common(1)[0]
        rows.append([TableCell(ck), TableCell(layer)] + [TableCell(by_p.get(p, "—")) for p in problems]
                    + [TableCell(f"{top} in {k} of {len(by_p)}", strong=k == len(by_p))])
    notes = ["best overall (count of (checkpoint, layer) columns won, ties not counted): "
             + ", ".join(f"{e} {k}" for e, k in tally.most_common())]
    return Table(title="", header=["checkpoint", "layer", *problems, "most often best"], rows=rows,
                 notes=notes, anchor="best-across-problems")


class HeadlineSection:
    """The headline: the first section of every report."""

    name = "headline"

    def applies(self, run: Run) -> bool:
        return bool((run.metrics["metric"] == "rrmse").any())

    def blocks(self, run: Run) -> list[Block]:
        grid = m_grid_lacking_one(run.metrics)
        if grid is not None:  # a grid such as --M 2,3: say why there is no headline
            return [Heading("Headline"),
                    Text(f"No headline: it ranks the estimators by rrmse at M = 1, and this run's "
                         f"M grid ({grid}) does not hold 1. Run with M = 1 in the grid "
                         "(`--M 1,…`) to have it; the sections below show the M measured.")]
        problems = [p for p in run.problems() if not _problem_rows(run, p).empty]
        out: list[Block] = [Heading("Headline"), Text(HEADLINE_LEGEND)]
        if len(problems) > 1:
            table = across_problems_table(run, problems)
            if table is not None:
                out += [Text("The best estimator of each (checkpoint, layer) in each problem (rrmse "
                             "at M=1):"), table]
        for i, p in enumerate(problems):
            blocks = headline_blocks(run, p)
            if len(problems) == 1:
                out += blocks
            else:
                out.append(Details(f"Headline · {p}", blocks, level=3, open=i == 0))
        return out


# --------------------------------------------------------------------------------------------
# the story across checkpoints


class StorySection:
    """rrmse at M=1 and relative bias against the training epoch, for problems with several
    checkpoints."""

    name = "story"

    def applies(self, run: Run) -> bool:
        return any(len(run.checkpoints(p)) > 1 for p in run.problems())

    def blocks(self, run: Run) -> list[Block]:
        sty = _styles(run)
        problems = [p for p in run.problems() if len(run.checkpoints(p)) > 1]
        out: list[Block] = [Heading("Across checkpoints")]
        for i, p in enumerate(problems):
            cks = run.checkpoints(p)
            _, axis = checkpoint_axis(cks)
            how = ("x: checkpoints in run order (their labels carry no epoch)"
                   if axis != "training epoch" else "x: the training epoch each checkpoint label "
                   "carries" + (" (init: 0)" if any(map(is_init, cks)) else ""))
            plot = Plot(f"{slug(p)}_story",
                        partial(fg.draw, fg.story_figure, _problem_rows(run, p), run.estimators(), sty,
                                cks, f"rrmse at M=1 and relative bias across training — {p}"),
                        f"rrmse at M=1 (top) and relative bias (bottom) per layer against training, "
                        f"{p}; {how}; bars ±2 s.e. for Monte-Carlo values.")
            blocks: list[Block] = [Text(f"{', '.join(cks)}; {how}."), plot]
            if len(problems) == 1:
                out += blocks
            else:
                out.append(Details(f"Across checkpoints · {p}", blocks, level=3, open=i == 0))
        return out


# --------------------------------------------------------------------------------------------
# details per problem and checkpoint

SUMMARY_LEGEND = (
    "rrmse(M) = √MSE(M)/‖g‖ with MSE(M) = ‖β‖² + V/M; rel. bias = ‖β‖/‖g‖; cosine = mean of "
    "cos(ḡ_M, g) over independent M-sample means; samples/s = median over interleaved timed rounds, "
    "measured once per network shape (`(wide)`: its confidence interval is wider than the target or "
    "short of its level, so it is never called the fastest); time to accuracy = max(1, ⌈M\\*⌉)·(s/sample) "
    "with M\\* = V/(t²‖g‖² − ‖β‖²), "
    "∞ when the bias alone exceeds the target, its `±` including the timing's uncertainty (`± ∞`: "
    "the bias may reach the target within its errors, so no time is resolved) "
    "(SPEC §5). **Bold**: the best value of the column within the layer (lowest rrmse, bias and time; "
    f"highest cosine and samples/s); *italic*: within {TIE_Z:g} standard errors of it (a tie). A "
    "value clipped at zero or smaller than its standard error (a bias: twice it) is never marked, "
    f"and when such a value is better than the best resolved one by more than {TIE_Z:g} standard "
    "errors (a bias: is lower than a best one not significantly above zero), nothing is. `±`: one "
    "standard error (Monte-Carlo mode); `≤ x`: a bias not significantly above zero "
    f"(its bias-corrected square ‖β‖² within {TIE_Z:g} s.e. of zero: value ≤ "
    f"{2 * TIE_Z:g} s.e., since near zero the s.e. of a square root understates its spread), "
    f"x = value + {TIE_Z:g} s.e. Mode `exact`: mean and variance by enumerating every path (no "
    "sampling error in bias, variance and rrmse; the cosines come from sampled M-sample means and "
    "carry one).")


def checkpoint_blocks(run: Run, problem: str, checkpoint: str, limits: dict) -> list[Block]:
    """Summary table, throughput table and accuracy figure of one (problem, checkpoint)."""
    out: list[Block] = []
    if not cell_rows(run, problem, checkpoint).empty:
        table = summary_table(run, problem, checkpoint)
        out.append(Table("", table.header, table.rows, table.notes, table.anchor))
    else:
        lines = failure_lines(cell_failures(run, problem, checkpoint))
        out.append(Text("No results."))
        if lines:
            out.append(Bullets([f"failed: {x}" for x in lines]))
    rows = cell_rows(run, problem, checkpoint)
    if not rows.empty:
        out.append(Plot(f"{slug(problem, checkpoint)}_accuracy",
                        partial(fg.draw, fg.accuracy_figure, rows, run.estimators(), _styles(run),
                                f"rrmse and 1 − cosine vs M — {cell_label(problem, checkpoint)}",
                                limits),
                        f"rrmse(M) (top) and 1 − cos(ḡ_M, g) (bottom) per layer, log-log, "
                        f"{cell_label(problem, checkpoint)}; y axes shared by every checkpoint of "
                        f"{problem}."))
    # last, so that in Markdown (where it is a heading) nothing of the accuracy falls under it
    tp = throughput_table(run, problem, checkpoint)
    if tp is not None:
        out.append(Details(tp.title, [Table("", tp.header, tp.rows, tp.notes, tp.anchor)], level=5))
    return out


class DetailsSection:
    """Per problem and checkpoint: tables and figures, collapsible."""

    name = "details"

    def applies(self, run: Run) -> bool:
        return bool(run.cells())

    def blocks(self, run: Run) -> list[Block]:
        sty = _styles(run)
        out: list[Block] = [Heading("Results by problem and checkpoint"), Text(SUMMARY_LEGEND)]
        problems = run.problems()
        for i, p in enumerate(problems):
            rows = _problem_rows(run, p)
            limits = fg.accuracy_limits(rows) if not rows.empty else {}
            cks = run.checkpoints(p)
            inner: list[Block] = []
            for ck in cks:  # a single checkpoint is shown open: there is nothing else to pick
                inner.append(Details(cell_label(p, ck), checkpoint_blocks(run, p, ck, limits),
                                     level=4, open=len(cks) == 1))
            figures: list[Block] = []  # of every checkpoint: under a heading of their own
            if not rows.empty:
                figures.append(Plot(f"{slug(p)}_bias_variance",
                                    partial(fg.draw, fg.bias_variance_figure, rows, run.estimators(), sty,
                                            cks, f"Bias vs standard deviation of one sample — {p}"),
                                    f"Relative bias against relative standard deviation of one sample, "
                                    f"per checkpoint (rows) and layer (columns), {p}; labels joined to "
                                    f"their points by leader lines.", cost=0.7 * len(cks)))
            tp = throughput_rows_of(run, p)
            if not tp.empty:
                figures.append(Plot(f"{slug(p)}_throughput",
                                    partial(fg.draw, fg.throughput_figure, tp, run.estimators(), sty,
                                            f"Throughput — {p}"),
                                    f"Throughput, median samples/s per estimator with the "
                                    f"confidence interval of the median, {p}.", cost=0.2))
            if figures:
                inner.append(Details(f"Every checkpoint · {p}", figures, level=4, open=True))
            out.append(Details(p, inner, level=3, open=len(problems) == 1 or i == 0))
        orphans = orphan_failures(run)
        if not orphans.empty:
            out += [Heading("Failures without results", 3),
                    Bullets(failure_lines(orphans, with_checkpoint=True))]
        return out


# --------------------------------------------------------------------------------------------
# comparison


def comparison_blocks(cmp: Comparison) -> list[Block]:
    """The comparison with a baseline: warnings, the two headlines side by side (per problem in
    both), and only the differences beyond their uncertainty."""
    out: list[Block] = [Heading("Comparison with the baseline")]
    out.append(Text(f"Baseline: `{cmp.base.path}`. " + cmp.rule()))
    if cmp.warnings:
        out.append(Text("**Warning:** these runs did not measure the same thing:"))
        out.append(Bullets(cmp.warnings))
    shared = [p for p in cmp.run.problems() if p in set(cmp.base.problems())]
    for p in shared:
        out.append(Heading(f"Headline side by side · {p}", 3))
        out.append(Columns(["this run", "baseline"],
                           [[heatmap_plot(cmp.run, p, f"{slug(p)}_compare_run_headline"),
                             best_table(cmp.run, p, compact=True)],
                            [heatmap_plot(cmp.base, p, f"{slug(p)}_compare_base_headline"),
                             best_table(cmp.base, p, compact=True)]]))
    out.append(Heading("Differences beyond their uncertainty", 3))
    table = differences_table(cmp)
    if table.rows:
        out.append(table)
    else:
        out.append(Text("No difference beyond its uncertainty."))
    if cmp.notes:
        out.append(Bullets(cmp.notes))
    return out

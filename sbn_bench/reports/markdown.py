"""The Markdown report: ``report.md`` with its figures in ``figures/*.png`` beside it.

Tables are padded to aligned columns so that the raw text reads well and diffs cleanly (the golden
files of the tests are these tables).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sbn_bench.reports.compare import Comparison
from sbn_bench.reports.figures import FigureFile
from sbn_bench.reports.load import Run, run_facts
from sbn_bench.reports.sections import Block, Bullets, Heading, Image, Text
from sbn_bench.reports.tables import (
    Table,
    cell_failures,
    cell_label,
    cell_rows,
    failure_lines,
    orphan_failures,
    summary_table,
    throughput_table,
)

LEGEND = (
    "rrmse(M) = √MSE(M)/‖g‖ with MSE(M) = ‖β‖² + V/M; rel. bias = ‖β‖/‖g‖; cosine = mean of "
    "cos(ḡ_M, g) over independent M-sample means; samples/s = median over timed rounds; time to "
    "accuracy = M*·(s/sample) with M* = V/(t²‖g‖² − ‖β‖²), ∞ when the bias alone exceeds the target "
    "(SPEC §5). **Bold**: the best value of the column within the layer (lowest rrmse, bias and time; "
    "highest cosine and samples/s), by point estimate: read it with its uncertainty. `±`: one "
    "standard error (Monte-Carlo mode); exact-mode values have no sampling error. Mode `exact`: "
    "mean and variance by enumerating every path."
)


def _esc(text: str) -> str:
    """Text for a Markdown table cell or line: one line, ``|`` escaped, and HTML's ``&``, ``<``, ``>``
    as entities (a problem named ``<script>`` must not become markup where Markdown is rendered)."""
    text = " ".join(str(text).split())
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|"))


def render_table(table: Table) -> str:
    """A GitHub-flavoured Markdown table with padded columns; emphasised cells in bold."""
    cells = [[(f"**{_esc(c.text)}**" if c.strong and c.text not in ("", "—") else _esc(c.text))
              for c in row] for row in table.rows]
    header = [_esc(h) for h in table.header]
    widths = [max([len(header[j])] + [len(r[j]) for r in cells]) for j in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(lines)


def render_notes(notes: Sequence[str]) -> str:
    return "\n".join(f"- {_esc(n)}" for n in notes)


def _block(table: Table, level: str = "###") -> str:
    parts = [f"{level} {_esc(table.title)}", "", render_table(table) if table.rows else "_(no rows)_"]
    if table.notes:
        parts += ["", render_notes(table.notes)]
    return "\n".join(parts)


def summary_markdown(run: Run) -> str:
    """The summary and throughput tables of every (problem, checkpoint), with their notes
    (M substitutions, failed cells): the part of the report the golden tests pin down."""
    parts = []
    for p, c in run.cells():
        if not cell_rows(run, p, c).empty:
            parts.append(_block(summary_table(run, p, c)))
        else:
            lines = failure_lines(cell_failures(run, p, c))
            parts.append(f"### {_esc(cell_label(p, c))}\n\nNo results."
                         + ("\n\n" + render_notes([f"failed: {x}" for x in lines]) if lines else ""))
        tp = throughput_table(run, p, c)
        if tp is not None:
            parts.append(_block(tp, "####"))
    orphans = orphan_failures(run)
    if not orphans.empty:
        parts.append("### Failures without results\n\n"
                     + render_notes(failure_lines(orphans, with_checkpoint=True)))
    return "\n\n".join(parts) + "\n"


def comparison_markdown(cmp: Comparison) -> str:
    """The comparison section's body: warnings, flagged differences, ratio tables, notes."""
    parts = []
    if cmp.warnings:
        parts.append("**Warning:** these runs did not measure the same thing:\n\n"
                     + render_notes(cmp.warnings))
    rule = (f"Ratios are run / baseline. A difference is flagged (bold) only beyond its uncertainty: "
            f"|a − b| > {cmp.sigma:g}·√(se_a² + se_b²) for Monte-Carlo values, beyond float64 "
            f"round-off (1e-12) for exact values, when the confidence intervals do not overlap for "
            f"samples/s. "
            f"`≈1`: equal to working precision; `—`: undefined (baseline 0).")
    parts.append(rule)
    if cmp.flagged:
        parts.append(f"**{len(cmp.flagged)} flagged difference(s):**\n\n" + render_notes(cmp.flagged))
    else:
        parts.append("No difference beyond its uncertainty.")
    parts += [_block(t) for t in cmp.tables]
    if cmp.notes:
        parts.append(render_notes(cmp.notes))
    return "\n\n".join(parts) + "\n"


def header_markdown(run: Run, title: str) -> str:
    facts = run_facts(run)
    rows = "\n".join(f"| {_esc(k)} | {_esc(v)} |" for k, v in facts)
    out = f"# {_esc(title)}\n\n"
    if run.incomplete:
        out += f"> **Warning:** {_esc(run.incomplete)}\n\n"
    out += f"| run | `{run.path}` |\n|---|---|\n{rows}\n"
    if run.warnings:
        out += "\n" + render_notes([f"warning: {w}" for w in run.warnings]) + "\n"
    return out


def render_blocks(blocks: Sequence[Block], out_dir: Path) -> str:
    """Report-section blocks as Markdown; image links relative to ``out_dir``."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"{'#' * b.level} {_esc(b.text)}")
        elif isinstance(b, Text):
            parts.append(" ".join(b.text.split()))
        elif isinstance(b, Bullets):
            parts.append(render_notes(b.items))
        elif isinstance(b, Table):
            parts.append(_block(b) if b.title else render_table(b))
        elif isinstance(b, Image):
            rel = Path(os.path.relpath(b.path, out_dir)).as_posix()
            parts.append(f"![{_esc(b.caption)}]({rel})")
    return "\n\n".join(parts)


def render_report(run: Run, figures: Sequence[FigureFile], cmp: Comparison | None, out_dir: Path,
                  sections: Sequence[Block] = ()) -> str:
    """The whole Markdown report; figure links are relative to ``out_dir``; the ``sections``'
    blocks (report sections such as the paper's claims) go right after the header."""
    parts = [header_markdown(run, f"sbn-bench report: {run.path.name}")]
    if sections:
        parts.append(render_blocks(sections, out_dir))
    parts += ["## Summary", LEGEND,
             summary_markdown(run).rstrip("\n"), "## Figures"]
    if not figures:
        parts.append("No figures (no metric rows).")
    for p, c in run.cells():
        mine = [f for f in figures if (f.problem, f.checkpoint) == (p, c)]
        if not mine:
            continue
        parts.append(f"### {_esc(cell_label(p, c))}")
        for f in mine:
            rel = Path(os.path.relpath(f.path, out_dir)).as_posix()
            parts.append(f"![{_esc(f.caption)}]({rel})\n\n_{_esc(f.caption)}_")
    if cmp is not None:
        parts += [f"## Comparison with baseline `{cmp.base.path}`", comparison_markdown(cmp).rstrip("\n")]
    return "\n\n".join(parts) + "\n"

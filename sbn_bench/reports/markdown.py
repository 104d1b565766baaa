"""The Markdown report: ``report.md`` with its figures in ``figures/*.png`` (and ``*.svg``) beside it.

The report is a list of blocks (:mod:`~sbn_bench.reports.sections`) rendered after a header of run
facts and a table of contents whose links are the anchors GitHub gives the headings. Tables are
padded to aligned columns so that the raw text reads well and diffs cleanly (the golden files of
the tests are these tables). The best value of a column is **bold**, its ties *italic*.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from sbn_bench.reports.compare import Comparison, differences_table
from sbn_bench.reports.load import Run, run_facts
from sbn_bench.reports.sections import (
    Anchors,
    Block,
    Bullets,
    Columns,
    Details,
    Heading,
    Image,
    Plot,
    Text,
)
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

TOC_LEVELS = (2, 3, 4)
"""Heading levels listed in the table of contents."""


_MARKUP_LT = re.compile(r"<(?=[A-Za-z/!?])")
"""A ``<`` that can open markup in Markdown (a tag, a comment, an autolink): ``< 2`` cannot."""
_ENTITY_AMP = re.compile(r"&(?=#?[A-Za-z0-9]+;)")
"""An ``&`` that would be read as the start of an entity (``&lt;``)."""


def _no_html(text: str) -> str:
    """``text`` with what Markdown would read as HTML (a tag, an entity) made plain text; other
    ``<``, ``>`` and ``&`` stay as they are, so that the raw file reads ``|a − b| > 3``."""
    return _MARKUP_LT.sub("&lt;", _ENTITY_AMP.sub("&amp;", text))


def _no_markup(text: str) -> str:
    """:func:`_no_html` of a line, a line opening with ``>`` (a quote) escaped too."""
    text = _no_html(text)
    return "\\>" + text[1:] if text.startswith(">") else text


def _esc(text: str) -> str:
    """Text for a Markdown table cell or line: one line, ``|`` escaped, and what could become HTML
    markup as entities (a problem named ``<script>`` must not become markup where Markdown is
    rendered: :func:`_no_markup`)."""
    return _no_markup(" ".join(str(text).split())).replace("|", "\\|")


def _esc_text(text: str) -> str:
    """A paragraph on one line with its little inline Markdown kept (``**bold**``, ```code```), and
    what could become HTML markup as entities outside code spans (names in it, e.g. a checkpoint
    label, must not become markup; inside a code span they are shown as they are)."""
    parts = " ".join(str(text).split()).split("`")
    return "`".join(p if i % 2 else _no_markup(p) if i == 0 else _no_html(p)
                    for i, p in enumerate(parts))


def _cell(text: str, strong: bool, tie: bool) -> str:
    t = _esc(text)
    if t in ("", "—"):
        return t
    if strong:
        return f"**{t}**"
    if tie:
        return f"*{t}*"
    return t


def render_table(table: Table) -> str:
    """A GitHub-flavoured Markdown table with padded columns; the best cells bold, ties italic."""
    cells = [[_cell(c.text, c.strong, c.tie) for c in row] for row in table.rows]
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
    """The comparison's text and its table of differences beyond their uncertainty (golden)."""
    parts = []
    if cmp.warnings:
        parts.append("**Warning:** these runs did not measure the same thing:\n\n"
                     + render_notes(cmp.warnings))
    parts.append(cmp.rule())
    table = differences_table(cmp)
    parts.append(render_table(table) if table.rows else "No difference beyond its uncertainty.")
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


class _Renderer:
    """Renders blocks to Markdown, collecting the table of contents on the way."""

    def __init__(self, out_dir: Path, anchors: Anchors) -> None:
        self.out_dir = out_dir
        self.anchors = anchors
        self.toc: list[tuple[int, str, str]] = []

    def heading(self, level: int, text: str) -> str:
        anchor = self.anchors.take(text)
        if level in TOC_LEVELS:
            self.toc.append((level, text, anchor))
        return f"{'#' * min(level, 6)} {_esc(text)}"

    def image(self, b: Image) -> str:
        rel = Path(os.path.relpath(b.path, self.out_dir)).as_posix()
        out = f"![{_esc(b.caption)}]({rel})\n\n_{_esc(b.caption)}_"
        if b.svg is not None:
            out += f" ([SVG]({Path(os.path.relpath(b.svg, self.out_dir)).as_posix()}))"
        return out

    def blocks(self, blocks: Sequence[Block]) -> str:
        parts = []
        for b in blocks:
            if isinstance(b, Heading):
                parts.append(self.heading(b.level, b.text))
            elif isinstance(b, Text):
                parts.append(_esc_text(b.text))
            elif isinstance(b, Bullets):
                parts.append(render_notes(b.items))
            elif isinstance(b, Table):
                if b.title:
                    parts.append(self.heading(3, b.title))
                parts.append(render_table(b) if b.rows else "_(no rows)_")
                if b.notes:
                    parts.append(render_notes(b.notes))
            elif isinstance(b, Image):
                parts.append(self.image(b))
            elif isinstance(b, Plot):
                parts.append(f"_{_esc(b.caption)} (not drawn)_")
            elif isinstance(b, Details):
                parts.append(self.heading(b.level, b.title))
                parts.append(self.blocks(b.blocks))
            elif isinstance(b, Columns):
                for title, col in zip(b.titles, b.columns):
                    parts.append(f"**{_esc(title)}**")
                    parts.append(self.blocks(col))
        return "\n\n".join(p for p in parts if p)


def render_blocks(blocks: Sequence[Block], out_dir: Path) -> str:
    """Report blocks as Markdown; image links relative to ``out_dir``."""
    return _Renderer(out_dir, Anchors()).blocks(blocks)


def toc_markdown(toc: Sequence[tuple[int, str, str]]) -> str:
    low = min((lvl for lvl, _, _ in toc), default=2)
    return "\n".join(f"{'  ' * (lvl - low)}- [{_esc(text)}](#{anchor})" for lvl, text, anchor in toc)


def render_report(run: Run, blocks: Sequence[Block], out_dir: Path) -> str:
    """The whole Markdown report: header, table of contents, then ``blocks``; figure links are
    relative to ``out_dir``."""
    title = f"sbn-bench report: {run.path.name}"
    anchors = Anchors()
    anchors.take(title)
    anchors.take("Contents")
    r = _Renderer(out_dir, anchors)
    body = r.blocks(blocks)
    parts = [header_markdown(run, title).rstrip("\n")]
    if r.toc:
        parts += ["## Contents", toc_markdown(r.toc)]
    parts.append(body)
    return "\n\n".join(parts) + "\n"

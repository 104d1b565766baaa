"""The self-contained HTML report: ``report.html`` with inline CSS and every figure embedded as a
``data:image/png;base64`` URI, so the one file can be mailed or archived (no external resources)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from sbn_bench.reports.compare import Comparison
from sbn_bench.reports.figures import FigureFile
from sbn_bench.reports.load import Run, run_facts
from sbn_bench.reports.markdown import LEGEND
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

TEXT_COLUMNS = frozenset({"layer", "estimator", "mode", "device"})


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _inline_md(text: str) -> str:
    """The little Markdown used in legends (``**bold**``, ```code```), as HTML."""
    out, bold, code = [], False, False
    i = 0
    while i < len(text):
        if text.startswith("**", i) and not code:
            out.append("</strong>" if bold else "<strong>")
            bold, i = not bold, i + 2
        elif text[i] == "`":
            out.append("</code>" if code else "<code>")
            code, i = not code, i + 1
        else:
            out.append(_e(text[i]))
            i += 1
    return "".join(out)


def style() -> str:
    return resources.files("sbn_bench.reports").joinpath("style.css").read_text(encoding="utf-8")


def render_table(table: Table, css_class: str = "") -> str:
    left = [h in TEXT_COLUMNS for h in table.header]
    head = "".join(f'<th{" class=l" if lft else ""}>{_e(h)}</th>' for h, lft in zip(table.header, left))
    body = []
    prev = None
    for row in table.rows:
        first = row[0].text if table.header and table.header[0] == "layer" else None
        cls = ' class="group-start"' if first is not None and prev is not None and first != prev else ""
        prev = first
        tds = []
        for c, lft in zip(row, left):
            classes = " ".join(x for x in ("l" if lft else "", "strong" if c.strong else "") if x)
            attr = f' class="{classes}"' if classes else ""
            content = f"<strong>{_e(c.text)}</strong>" if c.strong else _e(c.text)
            tds.append(f"<td{attr}>{content}</td>")
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    cls_attr = f' class="{css_class}"' if css_class else ""
    return (f'<table id="{_e(table.anchor)}"{cls_attr}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    return '<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"


def _block(table: Table, level: int = 3, css_class: str = "") -> str:
    return (f"<h{level}>{_e(table.title)}</h{level}>" + render_table(table, css_class)
            + _notes(table.notes))


def _figure(f: FigureFile) -> str:
    return _image(f.path, f.caption)


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def render_blocks(blocks: Sequence[Block]) -> str:
    """Report-section blocks as HTML (images embedded)."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{_e(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            parts.append(f"<p>{_inline_md(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_e(x)}</li>" for x in b.items) + "</ul>")
        elif isinstance(b, Table):
            parts.append(_block(b) if b.title else render_table(b) + _notes(b.notes))
        elif isinstance(b, Image):
            parts.append(_image(b.path, b.caption))
    return "\n".join(parts)


def render_report(run: Run, figures: Sequence[FigureFile], cmp: Comparison | None,
                  sections: Sequence[Block] = ()) -> str:
    """The whole report as one HTML document; the ``sections``' blocks go right after the
    header."""
    title = f"sbn-bench report: {run.path.name}"
    facts = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in run_facts(run))
    parts = [f"<h1>{_e(title)}</h1>"]
    if run.incomplete:
        parts.append(f'<div class="warning"><strong>Warning:</strong> {_e(run.incomplete)}</div>')
    parts += [f'<table class="facts"><tbody><tr><th>run</th><td><code>{_e(run.path)}</code></td></tr>'
              f"{facts}</tbody></table>"]
    if run.warnings:
        parts.append('<div class="warning">' + _notes(run.warnings) + "</div>")
    if sections:
        parts.append(render_blocks(sections))
    parts += ["<h2>Summary</h2>", f'<p class="legend">{_inline_md(LEGEND)}</p>']
    for p, c in run.cells():
        if not cell_rows(run, p, c).empty:
            parts.append(_block(summary_table(run, p, c)))
        else:
            lines = failure_lines(cell_failures(run, p, c))
            parts.append(f"<h3>{_e(cell_label(p, c))}</h3><p>No results.</p>"
                         + _notes([f"failed: {x}" for x in lines]))
        tp = throughput_table(run, p, c)
        if tp is not None:
            parts.append(_block(tp, 4))
        mine = [f for f in figures if (f.problem, f.checkpoint) == (p, c)]
        parts += [_figure(f) for f in mine]
    orphans = orphan_failures(run)
    if not orphans.empty:
        parts.append("<h3>Failures without results</h3>"
                     + _notes(failure_lines(orphans, with_checkpoint=True)))
    if cmp is not None:
        parts.append(f"<h2>Comparison with baseline <code>{_e(cmp.base.path)}</code></h2>")
        if cmp.warnings:
            parts.append('<div class="warning"><strong>Warning:</strong> these runs did not measure '
                         "the same thing:" + _notes(cmp.warnings) + "</div>")
        parts.append(
            f'<p class="legend">Ratios are run / baseline. A difference is flagged (bold) only beyond '
            f"its uncertainty: |a − b| &gt; {cmp.sigma:g}·√(se_a² + se_b²) for Monte-Carlo values, "
            f"beyond float64 round-off (1e-12) for exact values, when the confidence intervals do not "
            f"overlap for "
            f"samples/s. <code>≈1</code>: equal to working precision; <code>—</code>: undefined "
            f"(baseline 0).</p>")
        if cmp.flagged:
            parts.append(f"<p><strong>{len(cmp.flagged)} flagged difference(s):</strong></p>"
                         + _notes(cmp.flagged))
        else:
            parts.append("<p>No difference beyond its uncertainty.</p>")
        parts += [_block(t, 3, "compare") for t in cmp.tables]
        parts.append(_notes(cmp.notes))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{_e(title)}</title>\n<style>\n{style()}</style>\n</head>\n<body>\n{body}\n"
            "</body>\n</html>\n")

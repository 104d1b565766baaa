"""The self-contained HTML report: ``report.html`` with inline CSS and script and every figure
embedded as a ``data:image/png;base64`` URI, so the one file can be mailed or archived (no
external resources, no network).

It has a table of contents, collapsible sections (``<details>``, opened by a link to anything
inside them), and sortable tables (click a header; numbers sort by value, the ``data-v`` of a
cell) with a filter box above long ones. Text cells wrap and a number stays on one line; a table
wider than the page scrolls inside its own box, so the page never grows wider than the window.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

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
from sbn_bench.reports.tables import Table

TEXT_COLUMNS = frozenset({"layer", "estimator", "mode", "device", "family", "checkpoint", "reference",
                          "where", "quantity", "paper's claim", "evidence", "criterion"})
"""Columns aligned left (the others hold numbers and are aligned right)."""
FILTER_ROWS = 8
"""Tables with more rows than this get a filter box."""
TOC_LEVELS = (2, 3, 4)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _inline_md(text: str) -> str:
    """The little Markdown used in legends (``**bold**``, ``*italic*``, ```code```, ``\\*`` for a
    literal star), as HTML."""
    out, bold, em, code = [], False, False, False
    i = 0
    while i < len(text):
        if text.startswith("\\", i) and i + 1 < len(text) and text[i + 1] in "*`\\_":
            out.append(_e(text[i + 1]))
            i += 2
        elif text.startswith("**", i) and not code:
            out.append("</strong>" if bold else "<strong>")
            bold, i = not bold, i + 2
        elif text[i] == "*" and not code and (em or (i + 1 < len(text) and not text[i + 1].isspace())):
            out.append("</em>" if em else "<em>")
            em, i = not em, i + 1
        elif text[i] == "`":
            out.append("</code>" if code else "<code>")
            code, i = not code, i + 1
        else:
            out.append(_e(text[i]))
            i += 1
    for flag, tag in ((code, "code"), (em, "em"), (bold, "strong")):
        if flag:  # an unclosed marker: close it rather than leave the document malformed
            out.append(f"</{tag}>")
    return "".join(out)


def style() -> str:
    return resources.files("sbn_bench.reports").joinpath("style.css").read_text(encoding="utf-8")


def script() -> str:
    return resources.files("sbn_bench.reports").joinpath("report.js").read_text(encoding="utf-8")


WIDE_MARK = " (wide)"
"""The mark of a throughput figure whose confidence interval is wider than the target
(:mod:`sbn_bench.reports.tables`); in HTML it goes under the number, so the column stays narrow."""


def _text_column(table: Table, j: int) -> bool:
    """A column of words (no sort key, no cell starting with a number): aligned left."""
    cells = [row[j] for row in table.rows if j < len(row)]
    return bool(cells) and all(c.sort is None and not c.text[:1].isdigit() and c.text[:2] not in ("≤ ", "≈0")
                               for c in cells if c.text not in ("", "—"))


def render_table(table: Table, css_class: str = "", anchors: Anchors | None = None) -> str:
    """A sortable table (with a filter box when it is long); best cells bold, ties italic."""
    left = [h in TEXT_COLUMNS or _text_column(table, j) for j, h in enumerate(table.header)]
    anchor = table.anchor or "table"
    tid = anchors.take(anchor) if anchors is not None else anchor
    head = "".join(f'<th{" class=l" if lft else ""} scope="col">{_e(h)}</th>'
                   for h, lft in zip(table.header, left))
    body = []
    prev = None
    for row in table.rows:
        first = row[0].text if table.header and table.header[0] in ("layer", "checkpoint") else None
        cls = ' class="group-start"' if first is not None and prev is not None and first != prev else ""
        prev = first
        tds = []
        for c, lft in zip(row, left):
            classes = " ".join(x for x in ("l" if lft else "n", "strong" if c.strong else "",
                                           "tie" if c.tie else "", f"tone-{c.tone}" if c.tone else "")
                               if x)
            attr = f' class="{classes}"' if classes else ""
            if c.sort is not None:
                attr += f' data-v="{c.sort!r}"'
            content = _e(c.text)
            if not lft and c.text.endswith(WIDE_MARK):  # the qualifier under the number, small
                content = f'{_e(c.text[:-len(WIDE_MARK)])}<span class="qual">{_e(WIDE_MARK.strip())}</span>'
            elif not lft and " ± " in c.text:  # the standard error smaller than the value
                value, se = c.text.split(" ± ", 1)
                content = f'{_e(value)} <span class="se">± {_e(se)}</span>'
            if c.strong:
                content = f"<strong>{content}</strong>"
            elif c.tie:
                content = f"<em>{content}</em>"
            tds.append(f"<td{attr}>{content}</td>")
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    classes = " ".join(x for x in ("sortable", css_class) if x)
    filt = ""
    if len(table.rows) > FILTER_ROWS:
        filt = (f'<input class="filter" type="search" data-table="{_e(tid)}" '
                f'placeholder="filter rows (e.g. an estimator, family or layer)" '
                f'aria-label="filter the rows of this table">')
    return (f'<div class="table-wrap">{filt}<table id="{_e(tid)}" class="{classes}">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    return '<ul class="notes">' + "".join(f"<li>{_inline_md(n)}</li>" for n in notes) + "</ul>"


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


class _Renderer:
    """Renders blocks to HTML, collecting the table of contents on the way."""

    def __init__(self, anchors: Anchors) -> None:
        self.anchors = anchors
        self.toc: list[tuple[int, str, str]] = []

    def heading_id(self, level: int, text: str) -> str:
        anchor = self.anchors.take(text)
        if level in TOC_LEVELS:
            self.toc.append((level, text, anchor))
        return anchor

    def blocks(self, blocks: Sequence[Block]) -> str:
        parts = []
        for b in blocks:
            if isinstance(b, Heading):
                lvl = min(b.level, 6)
                parts.append(f'<h{lvl} id="{_e(self.heading_id(b.level, b.text))}">{_e(b.text)}</h{lvl}>')
            elif isinstance(b, Text):
                parts.append(f"<p>{_inline_md(b.text)}</p>")
            elif isinstance(b, Bullets):
                parts.append("<ul>" + "".join(f"<li>{_inline_md(x)}</li>" for x in b.items) + "</ul>")
            elif isinstance(b, Table):
                if b.title:
                    parts.append(f'<h3 id="{_e(self.heading_id(3, b.title))}">{_e(b.title)}</h3>')
                parts.append(render_table(b, anchors=self.anchors) + _notes(b.notes))
            elif isinstance(b, Image):
                parts.append(_image(b.path, b.caption))
            elif isinstance(b, Plot):
                parts.append(f"<p><em>{_e(b.caption)} (not drawn)</em></p>")
            elif isinstance(b, Details):
                lvl = min(b.level, 6)
                anchor = self.heading_id(b.level, b.title)
                inner = self.blocks(b.blocks)
                parts.append(f'<details id="{_e(anchor)}" class="level{lvl}"{" open" if b.open else ""}>'
                             f"<summary><h{lvl}>{_e(b.title)}</h{lvl}></summary>"
                             f'<div class="details-body">{inner}</div></details>')
            elif isinstance(b, Columns):
                cols = "".join(f'<div class="column"><p class="column-title">{_e(t)}</p>'
                               f"{self.blocks(col)}</div>" for t, col in zip(b.titles, b.columns))
                parts.append(f'<div class="columns">{cols}</div>')
        return "\n".join(parts)


def render_blocks(blocks: Sequence[Block]) -> str:
    """Report blocks as HTML (images embedded)."""
    return _Renderer(Anchors()).blocks(blocks)


def _toc(toc: Sequence[tuple[int, str, str]]) -> str:
    """Nested lists of links, one level per heading level."""
    if not toc:
        return ""
    out = ['<nav class="toc" aria-label="contents"><p class="toc-title">Contents '
           '<button type="button" data-details="open">expand all</button> '
           '<button type="button" data-details="close">collapse all</button></p>']
    low = min(lvl for lvl, _, _ in toc)
    depth = low - 1
    for lvl, text, anchor in toc:
        if lvl > depth:
            out.append("<ul>" * (lvl - depth))
        elif lvl < depth:
            out.append("</li>" + "</ul></li>" * (depth - lvl))
        else:
            out.append("</li>")
        out.append(f'<li><a href="#{_e(anchor)}">{_e(text)}</a>')
        depth = lvl
    out.append("</li>" + "</ul></li>" * (depth - low) + "</ul></nav>")
    return "".join(out)


def render_report(run: Run, blocks: Sequence[Block]) -> str:
    """The whole report as one HTML document: header, table of contents, then ``blocks``."""
    title = f"sbn-bench report: {run.path.name}"
    facts = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in run_facts(run))
    anchors = Anchors()
    anchors.take(title)
    r = _Renderer(anchors)
    body = r.blocks(blocks)
    parts = [f"<h1>{_e(title)}</h1>"]
    if run.incomplete:
        parts.append(f'<div class="warning"><strong>Warning:</strong> {_e(run.incomplete)}</div>')
    parts.append(f'<div class="top"><table class="facts"><tbody><tr><th>run</th><td><code>'
                 f"{_e(run.path)}</code></td></tr>{facts}</tbody></table>{_toc(r.toc)}</div>")
    if run.warnings:
        parts.append('<div class="warning">' + _notes(run.warnings) + "</div>")
    parts.append(body)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>\n{style()}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + f"\n<script>\n{script()}</script>\n</body>\n</html>\n")

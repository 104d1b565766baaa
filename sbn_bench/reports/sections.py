"""Report sections as plug-ins (STYLE 14): a :class:`ReportSection` returns format-neutral blocks
(headings, paragraphs, bullet lists, :class:`~sbn_bench.reports.tables.Table` objects, images,
figures to draw, collapsible groups, columns);
the Markdown and HTML writers render them like the rest of the report, so a section is written once.

Sections come from the entry-point group ``sbn_bench.report_sections`` (an entry point names a
class or a factory taking no argument, or an instance); each one that :meth:`~ReportSection.applies`
to a run is rendered after the report's header. The paper's claims are such a section
(``sbn_bench.paper:ClaimsSection``, registered in sbn-bench's own ``pyproject.toml``); a third
party registers theirs the same way::

    [project.entry-points."sbn_bench.report_sections"]
    my-section = "my_package.report:MySection"

A section that fails to load or to render does not stop the report: it is replaced by a warning
naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sbn_bench.reports.load import Run
from sbn_bench.reports.tables import Table

GROUP = "sbn_bench.report_sections"


@dataclass(frozen=True)
class Heading:
    """A heading; ``level`` 2 is a section, 3 a subsection. Headings of level 2 and 3 are listed in
    the report's table of contents."""

    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    """A paragraph, with the little inline Markdown of legends (``**bold**``, ```code```)."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A bullet list of plain-text items."""

    items: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Image:
    """A PNG figure: embedded in the HTML, linked (relative to the report) in the Markdown; ``svg``
    the same figure as SVG, linked beside it when there is one."""

    path: Path
    caption: str
    svg: Path | None = None


@dataclass(frozen=True)
class Plot:
    """A figure drawn when the report is written: ``draw()`` returns a matplotlib figure (or None:
    nothing to show), saved as ``figures/<name>.png`` and ``.svg`` and then shown like an
    :class:`Image`. Sections thereby stay cheap to build and never write files themselves."""

    name: str
    draw: Callable[[], Any]
    caption: str
    cost: float = 1.0
    """A rough guess of the drawing time relative to other figures (panels, labels): the report
    starts the costliest first when it draws figures in parallel, so that none is left alone at
    the end. Only the order depends on it."""


@dataclass(frozen=True)
class Details:
    """A collapsible group of blocks (HTML ``<details>``; a heading of ``level`` in Markdown), open
    or closed when the page loads."""

    title: str
    blocks: list[Block]
    level: int = 3
    open: bool = False


@dataclass(frozen=True)
class Columns:
    """Blocks side by side (HTML: a grid of columns; Markdown: one after the other, each under its
    title)."""

    titles: list[str]
    columns: list[list[Block]]


Block = Heading | Text | Bullets | Table | Image | Plot | Details | Columns


class Anchors:
    """Link targets for headings, as GitHub makes them from a heading's text (lower case, spaces to
    hyphens, punctuation dropped, ``-1``, ``-2`` … appended to repeats), so that the Markdown
    table of contents links to GitHub's anchors and the HTML uses the same ids."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    @staticmethod
    def base(text: str) -> str:
        return re.sub(r"[^\w\- ]", "", str(text).strip().lower()).replace(" ", "-")

    def take(self, text: str) -> str:
        """The anchor of the next heading ``text``."""
        base = self.base(text) or "section"
        n = self.seen.get(base)
        self.seen[base] = 0 if n is None else n + 1
        return base if n is None else f"{base}-{n + 1}"


def walk(blocks: Sequence[Block]) -> Iterator[Block]:
    """Every block, depth first, including those inside :class:`Details` and :class:`Columns`."""
    for b in blocks:
        yield b
        if isinstance(b, Details):
            yield from walk(b.blocks)
        elif isinstance(b, Columns):
            for col in b.columns:
                yield from walk(col)


@runtime_checkable
class ReportSection(Protocol):
    """A report section: ``name`` identifies it in warnings; :meth:`applies` says whether the run
    has what it shows; :meth:`blocks` renders it."""

    name: str

    def applies(self, run: Run) -> bool:
        ...

    def blocks(self, run: Run) -> list[Block]:
        ...


@dataclass(frozen=True)
class LoadedSections:
    """The registered sections and the ones that failed to load (``"name: why"``)."""

    sections: list[ReportSection]
    errors: list[str]


def load_sections(extra: Sequence[ReportSection] = ()) -> LoadedSections:
    """The sections of the entry-point group ``sbn_bench.report_sections``, then ``extra``."""
    sections: list[ReportSection] = []
    errors: list[str] = []
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
            section = obj() if isinstance(obj, type) or not isinstance(obj, ReportSection) else obj
            if not isinstance(section, ReportSection):
                raise TypeError(f"{ep.value} is not a ReportSection (name, applies, blocks)")
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not stop the report
            errors.append(f"report section {ep.name!r} ({ep.value}) failed to load: "
                          f"{type(e).__name__}: {e}")
            continue
        sections.append(section)
    return LoadedSections([*sections, *extra], errors)


def render_sections(run: Run, sections: Sequence[ReportSection]) -> tuple[list[Block], list[str]]:
    """The blocks of every section that applies to ``run``, and a warning per section that failed."""
    blocks: list[Block] = []
    errors: list[str] = []
    for section in sections:
        try:
            if section.applies(run):
                blocks += section.blocks(run)
        except Exception as e:  # noqa: BLE001 - one broken section must not stop the report
            errors.append(f"report section {getattr(section, 'name', section)!r} failed: "
                          f"{type(e).__name__}: {e}")
    return blocks, errors

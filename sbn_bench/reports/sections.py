"""Report sections as plug-ins (STYLE 14): a :class:`ReportSection` returns format-neutral blocks
(headings, paragraphs, bullet lists, :class:`~sbn_bench.reports.tables.Table` objects, images);
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

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Protocol, runtime_checkable

from sbn_bench.reports.load import Run
from sbn_bench.reports.tables import Table

GROUP = "sbn_bench.report_sections"


@dataclass(frozen=True)
class Heading:
    """A heading; ``level`` 2 is a section, 3 a subsection."""

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
    """A PNG figure: embedded in the HTML, linked (relative to the report) in the Markdown."""

    path: Path
    caption: str


Block = Heading | Text | Bullets | Table | Image


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

"""Reports of a run directory: summary tables, seaborn figures, Markdown and self-contained HTML,
and the comparison of two runs (``sbn-bench report DIR [--compare DIR2]``).

From Python::

    from sbn_bench.reports import write_report
    paths = write_report("runs/paper", compare_dir="runs/baseline")
    print(paths["html"])

Modules: :mod:`.load` (reading a run), :mod:`.tables`, :mod:`.figures`, :mod:`.markdown`,
:mod:`.html`, :mod:`.compare`, :mod:`.sections` (report sections as plug-ins, entry-point group
``sbn_bench.report_sections``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from sbn_bench.errors import ArgumentError
from sbn_bench.fileio import WriteError, atomic_write_text
from sbn_bench.reports import html, markdown
from sbn_bench.reports.compare import (
    DEFAULT_SIGMA,
    Comparison,
    IncomparableRuns,
    compare_runs,
    significant,
)
from sbn_bench.reports.figures import FIGURE_KINDS, write_figures
from sbn_bench.reports.load import Run, RunDirError, load_run
from sbn_bench.reports.sections import (
    Block,
    Image,
    ReportSection,
    load_sections,
    render_sections,
)

FORMATS = ("md", "html")

__all__ = [
    "DEFAULT_SIGMA",
    "FORMATS",
    "Comparison",
    "IncomparableRuns",
    "ReportSection",
    "Run",
    "RunDirError",
    "compare_runs",
    "load_run",
    "significant",
    "write_report",
]


def _swap_in(staging: Path, out: Path, names: Sequence[str]) -> None:
    """Move the freshly written ``figures/`` and report files from ``staging`` into ``out``.

    The old ``figures/`` is moved aside first and put back if the new one cannot be moved in; the
    report files then replace the old ones one rename each (``os.replace``). Until this point
    nothing in ``out`` has changed, so a report that fails to render leaves the previous one intact.
    """
    old, new, final = staging / "figures.old", staging / "figures", out / "figures"
    if final.is_dir():
        # files in figures/ that no report wrote (not ``*_<kind>.png``) move over to the new folder
        ours = {p for kind in FIGURE_KINDS for p in final.glob(f"*_{kind}.png")}
        ours |= set(final.glob(f"{SECTION_IMAGE_PREFIX}*"))
        foreign = [p for p in final.iterdir() if p not in ours]
        if foreign:
            new.mkdir(exist_ok=True)
            for p in foreign:
                if p.is_dir():
                    shutil.copytree(p, new / p.name)
                else:
                    shutil.copy2(p, new / p.name)
        os.replace(final, old)
    try:
        if new.exists():
            os.replace(new, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    for name in names:
        os.replace(staging / name, out / name)


SECTION_IMAGE_PREFIX = "section_"


def _images_inside(blocks: Sequence[Block], staged: Path, final: Path
                   ) -> tuple[list[Block], list[Block]]:
    """Section images that live outside the report (e.g. a run's ``training/loss_curve.png``) are
    copied among its figures, so that ``report.md`` links only inside its own folder: the blocks
    with the staged copies (for the HTML, which embeds them now) and with their final paths."""
    at_stage: list[Block] = []
    at_final: list[Block] = []
    for b in blocks:
        if isinstance(b, Image):
            staged.mkdir(parents=True, exist_ok=True)
            name = f"{SECTION_IMAGE_PREFIX}{b.path.name}"
            shutil.copyfile(b.path, staged / name)
            at_stage.append(Image(staged / name, b.caption))
            at_final.append(Image(final / name, b.caption))
        else:
            at_stage.append(b)
            at_final.append(b)
    return at_stage, at_final


def write_report(
    run_dir: str | os.PathLike[str],
    compare_dir: str | os.PathLike[str] | None = None,
    formats: Sequence[str] = FORMATS,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    sigma: float = DEFAULT_SIGMA,
    warn: Callable[[str], None] | None = None,
    sections: Sequence[ReportSection] | None = None,
) -> dict[str, Path]:
    """Write the report of a run directory.

    Args:
        run_dir: a directory written by ``sbn-bench run`` (``metrics.csv`` at least).
        compare_dir: a baseline run; adds a comparison section (ratios run / baseline, flagged only
            beyond their uncertainty, see :mod:`sbn_bench.reports.compare`).
        formats: any of ``"md"`` (``report.md`` + ``figures/*.png``) and ``"html"`` (``report.html``,
            self-contained).
        out_dir: where to write; default ``run_dir/report``.
        force: compare runs even when their problems, estimator versions or devices differ (the
            report then warns).
        sigma: the ``z`` of the comparison's flagging rule for Monte-Carlo values.
        warn: called with a one-line warning when the run is unfinished (its manifest's status is
            ``running`` or ``incomplete``; the report then opens with the same warning), and for
            each report section that failed to load or render.
        sections: the report sections to render after the header (default: those registered in
            the entry-point group ``sbn_bench.report_sections``; each renders when it applies).

    Returns:
        ``{"md": path, "html": path, "figures": directory}`` for what was written.

    Raises:
        RunDirError: a directory is missing or has no ``metrics.csv``.
        IncomparableRuns: the runs differ (see ``force``).
        ValueError: an unknown format, or malformed result files.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ArgumentError(f"argument formats={list(formats)!r}: expected a non-empty subset of "
                            f"{', '.join(FORMATS)}", argument="formats", value=list(formats),
                            expected=f"a non-empty subset of {', '.join(FORMATS)}")
    if not sigma > 0:
        raise ArgumentError(f"argument sigma={sigma!r} must be > 0", argument="sigma", value=sigma,
                            expected="a number > 0")

    run = load_run(run_dir)
    cmp = compare_runs(run, load_run(compare_dir), force=force, sigma=sigma) if compare_dir else None
    if run.incomplete and warn is not None:
        warn(run.incomplete)
    if sections is None:
        loaded = load_sections()
        sections, section_errors = loaded.sections, loaded.errors
    else:
        section_errors = []
    blocks, render_errors = render_sections(run, sections)
    for w in [*section_errors, *render_errors]:
        run.warnings.append(w)
        if warn is not None:
            warn(w)
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".report-*.tmp"):  # staging folders of reports that were killed
            shutil.rmtree(stale, ignore_errors=True)
        # everything is written into a staging folder inside ``out`` and moved into place only once
        # the whole report has rendered: a failure leaves the previous report (or none) as it was
        staging = Path(tempfile.mkdtemp(prefix=".report-", suffix=".tmp", dir=out))
    except OSError as e:
        raise WriteError(out, e, "free space or fix the folder's permissions, then write the report "
                                 "again") from None
    try:
        staged = write_figures(run, staging / "figures")
        staged_blocks, final_blocks = _images_inside(blocks, staging / "figures", out / "figures")
        # the Markdown links and captions refer to where the figures will be
        figures = [replace(f, path=out / "figures" / f.path.name) for f in staged]
        written: dict[str, Path] = {}
        names = []
        if "md" in formats:
            written["md"] = out / "report.md"
            names.append("report.md")
            atomic_write_text(staging / "report.md", markdown.render_report(
                run, figures, cmp, out, sections=final_blocks))
        if "html" in formats:
            written["html"] = out / "report.html"
            names.append("report.html")
            atomic_write_text(staging / "report.html", html.render_report(  # embeds the staged PNGs
                run, staged, cmp, sections=staged_blocks))
        _swap_in(staging, out, names)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            where = Path(e.filename) if getattr(e, "filename", None) else staging
            raise WriteError(where, e, "free space or fix the folder's permissions, then write "
                                       "the report again") from None
        raise
    shutil.rmtree(staging, ignore_errors=True)
    if figures:
        written["figures"] = out / "figures"
    return written

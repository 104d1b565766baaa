"""Reports of a run directory: summary tables, seaborn figures, Markdown and self-contained HTML,
and the comparison of two runs (``sbn-bench report DIR [--compare DIR2]``).

From Python::

    from sbn_bench.reports import write_report
    paths = write_report("runs/paper", compare_dir="runs/baseline")
    print(paths["html"])

Modules: :mod:`.load` (reading a run), :mod:`.tables`, :mod:`.figures`, :mod:`.markdown`,
:mod:`.html`, :mod:`.compare`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sbn_bench.reports.compare import (
    DEFAULT_SIGMA,
    Comparison,
    IncomparableRuns,
    compare_runs,
    significant,
)
from sbn_bench.reports.load import Run, RunDirError, load_run

FORMATS = ("md", "html")

__all__ = [
    "DEFAULT_SIGMA",
    "FORMATS",
    "Comparison",
    "IncomparableRuns",
    "Run",
    "RunDirError",
    "compare_runs",
    "load_run",
    "significant",
    "write_report",
]


def _write_text(path: Path, text: str) -> None:
    """Write atomically (temporary file in the same directory, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_report(
    run_dir: str | os.PathLike[str],
    compare_dir: str | os.PathLike[str] | None = None,
    formats: Sequence[str] = FORMATS,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    sigma: float = DEFAULT_SIGMA,
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

    Returns:
        ``{"md": path, "html": path, "figures": directory}`` for what was written.

    Raises:
        RunDirError: a directory is missing or has no ``metrics.csv``.
        IncomparableRuns: the runs differ (see ``force``).
        ValueError: an unknown format, or malformed result files.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"argument formats={list(formats)!r}: expected a non-empty subset of "
                         f"{', '.join(FORMATS)}")
    if not sigma > 0:
        raise ValueError(f"argument sigma={sigma!r} must be > 0")
    from sbn_bench.reports import html, markdown
    from sbn_bench.reports.figures import FIGURE_KINDS, write_figures

    run = load_run(run_dir)
    cmp = compare_runs(run, load_run(compare_dir), force=force, sigma=sigma) if compare_dir else None
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    for kind in FIGURE_KINDS:  # figures of an earlier report in the same place
        for stale in (out / "figures").glob(f"*_{kind}.png"):
            stale.unlink()
    figures = write_figures(run, out / "figures")
    written: dict[str, Path] = {}
    from sbn_bench import paper

    extra = paper.is_paper_run(run.manifest)  # the paper's claims, for `sbn-bench run --preset paper`
    if "md" in formats:
        written["md"] = out / "report.md"
        _write_text(written["md"], markdown.render_report(
            run, figures, cmp, out, extra=paper.report_section_markdown(run, out) if extra else None))
    if "html" in formats:
        written["html"] = out / "report.html"
        _write_text(written["html"], html.render_report(
            run, figures, cmp, extra=paper.report_section_html(run) if extra else None))
    if figures:
        written["figures"] = out / "figures"
    return written

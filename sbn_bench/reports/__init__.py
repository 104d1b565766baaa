"""Reports of a run directory: a headline, the story across checkpoints, summary tables, figures,
Markdown and self-contained HTML, and the comparison of two runs (``sbn-bench report DIR
[--compare DIR2]``).

From Python::

    from sbn_bench.reports import write_report
    paths = write_report("runs/paper", compare_dir="runs/baseline")
    print(paths["html"])

Modules: :mod:`.load` (reading a run), :mod:`.families` (estimator families), :mod:`.ranking`
(best and ties given the standard errors), :mod:`.tables` (tables and the formatting of every number
and cell), :mod:`.figures`, :mod:`.body` (the report's own sections: headline, story, details,
comparison), :mod:`.markdown`, :mod:`.html`, :mod:`.compare`, :mod:`.sections` (blocks, and report
sections as plug-ins, entry-point group ``sbn_bench.report_sections``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import multiprocessing
import numbers
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

from sbn_bench.errors import EMPTY_FOLDER, ArgumentError, SbnBenchError, check_path
from sbn_bench.fileio import WriteError, atomic_write_text, wait_lock
from sbn_bench.reports import html, markdown
from sbn_bench.reports.body import DetailsSection, HeadlineSection, StorySection, comparison_blocks
from sbn_bench.reports.compare import (
    DEFAULT_SIGMA,
    Comparison,
    IncomparableRuns,
    compare_runs,
    significant,
)
from sbn_bench.reports.figures import FIGURE_KINDS, save
from sbn_bench.reports.load import Run, RunDirError, load_run
from sbn_bench.reports.sections import (
    Block,
    Columns,
    Details,
    Image,
    Plot,
    ReportSection,
    load_sections,
    render_sections,
    walk,
)
from sbn_bench.storage import MANIFEST, STUDY_MANIFEST, TRAINING_MANIFEST

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


REPORT_LOCK = ".report.lock"
"""The report writers' lock file in the report folder: their own, not the ``.lock`` of runs,
trainings and studies (a report into a folder one of them holds must not wait for it, nor take
its lock file away)."""


def _unlock(out: Path, lock: int) -> None:
    """Remove the report folder's lock file, then release it (a writer waiting on it takes the
    lock again on a new file: :func:`~sbn_bench.fileio.wait_lock`): the folder keeps only the
    report."""
    with contextlib.suppress(OSError):
        (out / REPORT_LOCK).unlink()
    os.close(lock)


def report_figures(folder: Path) -> set[Path]:
    """The files in a report's ``figures/`` folder that a report writes (``*_<kind>.png|svg`` of
    this or an earlier version, and the copies of section images), as opposed to the user's own."""
    ours = {p for kind in (*FIGURE_KINDS, *OLD_FIGURE_KINDS) for ext in ("png", "svg")
            for p in folder.glob(f"*_{kind}.{ext}")}
    return ours | set(folder.glob(f"{SECTION_IMAGE_PREFIX}*"))


def _swap_in(staging: Path, out: Path, names: Sequence[str]) -> None:
    """Move the freshly written ``figures/`` and report files from ``staging`` into ``out``.

    The old ``figures/`` is moved aside first and put back if the new one cannot be moved in; the
    report files then replace the old ones one rename each (``os.replace``). Until this point
    nothing in ``out`` has changed, so a report that fails to render leaves the previous one intact.
    """
    old, new, final = staging / "figures.old", staging / "figures", out / "figures"
    if final.is_dir():
        # files in figures/ that no report wrote (not ``*_<kind>.png|svg``, nor the copies of section
        # images) move over to the new folder
        ours = report_figures(final)
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
"""Prefix of the copies, among the report's figures, of section images that live outside the
report (e.g. a paper run's ``training/loss_curve.png``)."""


def _images_inside(blocks: Sequence[Block], staged: Path, taken: set[str] | None = None
                   ) -> list[Block]:
    """``blocks`` with every :class:`Image` that lives outside ``staged`` (e.g. a run's
    ``training/loss_curve.png``) copied into it as ``section_<name>`` (``-2``, ``-3`` … appended to
    a name already taken, e.g. the loss curves of several training seeds), so that ``report.md``
    links only inside its own folder and the HTML embeds the copy."""
    taken = set() if taken is None else taken

    def inside(p: Path) -> bool:
        try:
            p.resolve().relative_to(staged.resolve())
            return True
        except ValueError:
            return False

    def copy(p: Path) -> Path:
        staged.mkdir(parents=True, exist_ok=True)
        name, n = f"{SECTION_IMAGE_PREFIX}{p.name}", 1
        while name in taken:
            n += 1
            name = f"{SECTION_IMAGE_PREFIX}{p.stem}-{n}{p.suffix}"
        taken.add(name)
        shutil.copyfile(p, staged / name)
        return staged / name

    out: list[Block] = []
    for b in blocks:
        if isinstance(b, Image) and not inside(b.path):
            out.append(replace(b, path=copy(b.path),
                               svg=b.svg if b.svg is None or inside(b.svg) else copy(b.svg)))
        elif isinstance(b, Details):
            out.append(replace(b, blocks=_images_inside(b.blocks, staged, taken)))
        elif isinstance(b, Columns):
            out.append(replace(b, columns=[_images_inside(c, staged, taken) for c in b.columns]))
        else:
            out.append(b)
    return out


OLD_FIGURE_KINDS = ("rrmse", "cosine")
"""Figure kinds of earlier reports, replaced (not kept as the user's files) when a report is
written again."""


WORKERS_ENV = "SBN_BENCH_REPORT_WORKERS"
"""Environment variable: how many processes draw a report's figures (default: up to 2 forked
processes on Linux when a single Python thread runs; 1 draws them in this process)."""

_JOBS: list[tuple[Plot, Path]] = []
"""The figures being drawn by forked workers (inherited by them: nothing is pickled but indexes)."""


def _draw_one(plot: Plot, base: Path) -> tuple[Path, Path] | None:
    fig = plot.draw()
    return None if fig is None else save(fig, base)


def _draw_index(i: int) -> tuple[Path, Path] | None:
    return _draw_one(*_JOBS[i])


def _no_gc() -> None:
    """A figure worker's initializer: no cyclic garbage collection. Matplotlib builds many small
    objects, and each collection walks the whole heap (torch and pandas included): about a fifth
    of a figure's time. A worker lives for one report, so what it does not collect is bounded."""
    gc.disable()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (see :func:`_no_gc`), as it was after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _workers(n_jobs: int) -> int:
    """Processes to draw ``n_jobs`` figures with (see :data:`WORKERS_ENV`)."""
    given = os.environ.get(WORKERS_ENV, "").strip()
    if given:
        try:
            return max(1, min(int(given), n_jobs))
        except ValueError:
            raise ArgumentError(f"{WORKERS_ENV}={given!r} must be a whole number ≥ 1",
                                argument=WORKERS_ENV, value=given, expected="an integer ≥ 1") from None
    if not sys.platform.startswith("linux") or n_jobs < 2 or threading.active_count() != 1:
        return 1  # fork only where it is cheap and a single Python thread runs
    return max(1, min(2, os.cpu_count() or 1, n_jobs))


def _draw_all(jobs: list[tuple[Plot, Path]]) -> list[tuple[Path, Path] | None]:
    """Draw and save every figure (PNG and SVG), in forked worker processes when that is safe
    (:func:`_workers`): matplotlib's rendering is the largest part of a report's time."""
    global _JOBS
    workers = _workers(len(jobs))
    if workers > 1:
        _JOBS = jobs
        try:
            ctx = multiprocessing.get_context("fork")
            with warnings.catch_warnings():
                # Python ≥ 3.12 warns when forking beside native threads (numpy's BLAS pool): the
                # workers only draw with matplotlib and never use those pools
                warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
                # costliest first (longest-processing-time order): the last figures to finish
                # are then short ones, and the workers end together
                order = sorted(range(len(jobs)), key=lambda i: -jobs[i][0].cost)
                with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_no_gc) as pool:
                    drawn = dict(zip(order, pool.map(_draw_index, order)))
                return [drawn[i] for i in range(len(jobs))]
        except BrokenProcessPool:
            pass  # a worker died (e.g. killed): draw them here instead
        finally:
            _JOBS = []
    with _gc_paused():
        return [_draw_one(plot, base) for plot, base in jobs]


def _materialise(blocks: Sequence[Block], figures: Path, drawn: list[Path]) -> list[Block]:
    """``blocks`` with every :class:`Plot` drawn into ``figures`` (PNG and SVG) and replaced by an
    :class:`Image`, or dropped when it has nothing to draw."""
    jobs = [(b, figures / b.name) for b in walk(blocks) if isinstance(b, Plot)]
    done = {id(plot): paths for (plot, _), paths in zip(jobs, _draw_all(jobs))}
    drawn += [paths[0] for paths in done.values() if paths is not None]

    def swap(bs: Sequence[Block]) -> list[Block]:
        out: list[Block] = []
        for b in bs:
            if isinstance(b, Plot):
                paths = done[id(b)]
                if paths is not None:
                    out.append(Image(paths[0], b.caption, paths[1]))
            elif isinstance(b, Details):
                out.append(replace(b, blocks=swap(b.blocks)))
            elif isinstance(b, Columns):
                out.append(replace(b, columns=[swap(c) for c in b.columns]))
            else:
                out.append(b)
        return out

    return swap(blocks)


def _relink(blocks: Sequence[Block], old: Path, new: Path) -> list[Block]:
    """``blocks`` with image paths under ``old`` moved under ``new`` (where they will be)."""

    def move(p: Path | None) -> Path | None:
        if p is None:
            return None
        try:
            return new / p.relative_to(old)
        except ValueError:
            return p

    out: list[Block] = []
    for b in blocks:
        if isinstance(b, Image):
            out.append(replace(b, path=move(b.path), svg=move(b.svg)))
        elif isinstance(b, Details):
            out.append(replace(b, blocks=_relink(b.blocks, old, new)))
        elif isinstance(b, Columns):
            out.append(replace(b, columns=[_relink(c, old, new) for c in b.columns]))
        else:
            out.append(b)
    return out


def report_blocks(run: Run, sections: Sequence[ReportSection], cmp: Comparison | None = None
                  ) -> tuple[list[Block], list[str]]:
    """The blocks of a report, in order: the headline, the plug-in ``sections``, the story across
    checkpoints, the details per problem and checkpoint, the comparison; and a warning per
    plug-in section that failed."""
    blocks: list[Block] = []
    for own in (HeadlineSection(),):
        if own.applies(run):
            blocks += own.blocks(run)
    plugged, errors = render_sections(run, sections)
    blocks += plugged
    for own in (StorySection(), DetailsSection()):
        if own.applies(run):
            blocks += own.blocks(run)
    if cmp is not None:
        blocks += comparison_blocks(cmp)
    return blocks, errors


def _load_baseline(compare_dir: str | os.PathLike[str]) -> Run:
    """:func:`load_run` of the baseline, its refusals saying that the baseline is meant (the
    command line's ``--compare``)."""
    try:
        return load_run(compare_dir)
    except SbnBenchError as e:
        # the folder itself refused (missing, not a run) is the option's fault; a damaged file in
        # it keeps its own argument (the file: exit status 1 on the command line, as for DIR)
        folder = isinstance(e.argument, str) and Path(e.argument) == Path(compare_dir)
        raise type(e)(f"the baseline run (compare_dir, --compare): {e.message}",
                      argument="compare_dir" if folder or e.argument is None else e.argument,
                      value=str(compare_dir), expected=e.expected) from None


_RESULTS = ((MANIFEST, "run", "config"), (STUDY_MANIFEST, "training study", "kind"),
            (TRAINING_MANIFEST, "training", "kind"))
"""The file that makes a folder an sbn-bench run's, training study's or training's, and a key it
holds."""


def _results_of(folder: Path) -> str | None:
    """``"run"`` or ``"training study"`` when ``folder`` holds sbn-bench results (another program's
    ``manifest.json`` does not count), else None; None too when it cannot be read."""
    for name, what, key in _RESULTS:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and key in data:
            return what
    return None


def _check_out_dir(out: Path) -> None:
    """Refuse a report folder that is a run's or study's own folder, or lies inside its ``cells/``
    (the part files a resume reads): the report's files would mix with the results. A folder that
    cannot be examined is left to the writing (which names its error)."""
    try:
        where = out.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop, an unreadable parent
        return
    for folder in [where, *where.parents]:
        what = _results_of(folder)
        if what is None:
            continue
        if folder == where or (folder / "cells") in [where, *where.parents]:
            place = (f"a {what}'s folder" if folder == where
                     else f"inside the part files (cells/) of the {what} in {str(folder)!r}")
            raise RunDirError(
                f"argument out_dir={str(out)!r} is {place}: the report's files would mix with "
                "the results; write it to another folder (by default the run's own report/)",
                argument="out_dir", value=str(out),
                expected="a folder outside a run's files, such as RUN/report")
        return


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
        formats: any of ``"md"`` (``report.md`` + ``figures/*.png`` and ``*.svg``) and ``"html"``
            (``report.html``, self-contained).
        out_dir: where to write; default ``run_dir/report``.
        force: compare runs even when their problems, estimator versions or devices differ (the
            report then warns).
        sigma: the ``z`` of the comparison's flagging rule for Monte-Carlo values.
        warn: called with a one-line warning when the run is unfinished (its manifest's status is
            ``running`` or ``incomplete``; the report then opens with the same warning), and for
            each report section that failed to load or render.
        sections: the plug-in report sections, rendered after the headline (default: those
            registered in the entry-point group ``sbn_bench.report_sections``; each renders when it
            applies).

    Returns:
        ``{"md": path, "html": path, "figures": directory}`` for what was written.

    Raises:
        RunDirError: a directory is missing or has no ``metrics.csv``.
        IncomparableRuns: the runs differ (see ``force``).
        ValueError: an unknown format, or malformed result files.
    """
    check_path(run_dir, "run_dir")
    for name, value in (("compare_dir", compare_dir), ("out_dir", out_dir)):
        if value is not None:
            check_path(value, name)
    if isinstance(formats, (set, frozenset)):
        formats = tuple(f for f in FORMATS if f in formats) + tuple(sorted(
            (f for f in formats if f not in FORMATS), key=str))
    if isinstance(formats, str) or not isinstance(formats, (list, tuple)):
        raise ArgumentError(f"argument formats={formats!r} must be a list such as ['md', 'html']",
                            argument="formats", value=formats, expected="a list of formats")
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or math.isnan(sigma):
        raise ArgumentError(f"argument sigma={sigma!r} must be a number > 0", argument="sigma",
                            value=sigma, expected="a number > 0")
    sigma = float(sigma)  # numpy's numbers as Python's
    if sections is not None and not isinstance(sections, (list, tuple)):
        raise ArgumentError(f"argument sections={sections!r} must be a list of report sections or "
                            "None", argument="sections", value=sections,
                            expected="a list of ReportSection")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ArgumentError(f"argument formats={list(formats)!r}: expected a non-empty subset of "
                            f"{', '.join(FORMATS)}", argument="formats", value=list(formats),
                            expected=f"a non-empty subset of {', '.join(FORMATS)}")
    if not sigma > 0:
        raise ArgumentError(f"argument sigma={sigma!r} must be > 0", argument="sigma", value=sigma,
                            expected="a number > 0")

    if out_dir is not None:
        if os.fspath(out_dir) == "":  # pathlib reads '' as '.': the report would land here
            raise ArgumentError(f"argument out_dir={EMPTY_FOLDER}", argument="out_dir", value="",
                                expected="a folder path")
        _check_out_dir(Path(out_dir))
    run = load_run(run_dir)
    base = _load_baseline(compare_dir) if compare_dir else None
    cmp = compare_runs(run, base, force=force, sigma=sigma) if base is not None else None
    if warn is not None:  # what the report's header warns about is said on the terminal too
        for w in [*([run.incomplete] if run.incomplete else []), *run.warnings]:
            warn(w)
        for w in [] if base is None else [*([base.incomplete] if base.incomplete else []),
                                          *base.warnings]:
            warn(f"the baseline run {str(base.path)!r}: {w}")
    if sections is None:
        loaded = load_sections()
        sections, section_errors = loaded.sections, loaded.errors
    else:
        section_errors = []
    with _gc_paused():  # many small objects, little garbage: collections only cost time here
        blocks, render_errors = report_blocks(run, sections, cmp)
    for w in [*section_errors, *render_errors]:
        run.warnings.append(w)
        if warn is not None:
            warn(w)
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    lock: int | None = None
    try:
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        # one writer at a time: another report into ``out`` (a second `sbn-bench report`, a run
        # resumed meanwhile) is waited for; it removed no staging folder but those of killed writers
        lock = wait_lock(out, REPORT_LOCK)
        for stale in out.glob(".report-*.tmp"):  # staging folders of reports that were killed
            shutil.rmtree(stale, ignore_errors=True)
        # everything is written into a staging folder inside ``out`` and moved into place only once
        # the whole report has rendered: a failure leaves the previous report (or none) as it was
        staging = Path(tempfile.mkdtemp(prefix=".report-", suffix=".tmp", dir=out))
    except BaseException as e:
        if lock is not None:
            _unlock(out, lock)
        if isinstance(e, OSError):
            raise WriteError(out, e, "free space or fix the folder's permissions, then write the "
                                     "report again") from None
        raise
    try:
        drawn: list[Path] = []
        staged = _images_inside(_materialise(blocks, staging / "figures", drawn), staging / "figures")
        written: dict[str, Path] = {}
        names = []
        if "md" in formats:
            written["md"] = out / "report.md"
            names.append("report.md")
            # the Markdown links refer to where the figures will be
            atomic_write_text(staging / "report.md", markdown.render_report(
                run, _relink(staged, staging, out), out))
        if "html" in formats:
            written["html"] = out / "report.html"
            names.append("report.html")
            atomic_write_text(staging / "report.html", html.render_report(run, staged))  # embeds PNGs
        _swap_in(staging, out, names)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        _unlock(out, lock)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            where = Path(e.filename) if getattr(e, "filename", None) else staging
            raise WriteError(where, e, "free space or fix the folder's permissions, then write "
                                       "the report again") from None
        raise
    shutil.rmtree(staging, ignore_errors=True)
    _unlock(out, lock)
    if drawn or any(isinstance(b, Image) for b in walk(staged)):
        written["figures"] = out / "figures"
    return written

"""A run's output folder: manifest, per-cell part files written atomically, and the tidy tables.

Layout of ``--out DIR``::

    manifest.json        schema version, config, seeds, versions, device, commit, estimators, problems
    metrics.csv          schema.METRICS_COLUMNS, one row per (problem, checkpoint, estimator, seed,
                         layer, metric, M); deterministic values only (schema.METRICS)
    timed_metrics.csv    the same columns for the metrics that depend on measured time
                         (schema.TIMED_METRICS: time_to_accuracy_s), derived from metrics.csv and
                         throughput.csv when the tables are assembled
    throughput.csv       schema.THROUGHPUT_COLUMNS
    failures.csv         schema.FAILURES_COLUMNS
    cells/<id>.<kind>.csv  one part file per finished cell (kind: metrics, throughput, failure)

Every file is written to a temporary file in the same folder and renamed over the target
(``os.replace``), so a run killed at any moment leaves only complete files. The tables are
re-assembled from the part files, in the run's cell order, by concatenating their text: the same
cells give byte-identical tables however the run was interrupted and resumed. A cell's part file
marks it as done.

A write that fails (full disk, read-only folder, lost permissions) raises :class:`WriteError`, an
``OSError`` whose one-line message names the file, the reason and how to continue; the files
written before it are complete and untouched (the failed write's temporary file is removed).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sbn_bench import schema
from sbn_bench.errors import SbnBenchError, short_repr
from sbn_bench.fileio import LOCK as LOCK  # re-exported: a run folder's lock file
from sbn_bench.fileio import WriteError as WriteError  # re-exported: a run's write errors
from sbn_bench.fileio import atomic_write_text, make_folder, try_lock
from sbn_bench.provenance import processor_label
from sbn_bench.schema import parse_table, read_table, to_csv_text

MANIFEST = "manifest.json"
TRAINING_MANIFEST = "train_manifest.json"
"""The manifest of a single training (:mod:`sbn_bench.train`): its folder holds no run."""
STUDY_MANIFEST = "study.json"
"""The manifest of a training study (:mod:`sbn_bench.train_study`): its folder holds no run."""
TABLES = {kind: (schema.TABLE_FILES[kind], schema.COLUMNS[kind]) for kind in schema.TABLE_FILES}
PART_KINDS = ("metrics", "throughput", "failure")
"""The tables assembled from per-cell part files; ``timed`` is derived from two of them."""
CELLS = "cells"


class RunDirError(SbnBenchError, ValueError):
    """A folder that cannot be used as a run folder: an output folder that exists without
    ``--resume`` or resumes another run, or a folder to report on that is not a run
    (``argument`` is the folder). The folder's content is at fault, not an option's value: the
    command line exits with status 1 (``usage`` False)."""

    usage = False


def table_text(kind: str, rows: list[dict[str, Any]]) -> str:
    """The canonical CSV text of rows of a table kind (:data:`TABLES`): its columns in order,
    integer columns without a decimal point, floats as their shortest round-trip repr."""
    columns = TABLES[kind][1]
    df = pd.DataFrame(rows, columns=columns)
    for c in schema.INT_COLUMNS:
        if c in df.columns:
            df[c] = pd.array(df[c].tolist(), dtype="Int64")
    return to_csv_text(df, columns)


def comparable(config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a configuration (:meth:`sbn_bench.config.RunConfig.to_dict`) that must agree for
    ``--resume`` (all but ``out`` and ``resume``)."""
    return {k: v for k, v in config_dict.items() if k not in ("out", "resume")}


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> int:
    """The first index where two sequences differ (the shorter one's length if one starts the
    other)."""
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def diff_dicts(old: Any, new: Any, path: str = "") -> list[str]:
    """Human-readable differences ``key: old → new`` between two JSON-like values (lists of the
    same length compared item by item as ``key[i]``; long values shortened with ``…``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in old:
                out.append(f"{p}: (absent) → {short_repr(new[k])}")
            elif k not in new:
                out.append(f"{p}: {short_repr(old[k])} → (absent)")
            else:
                out += diff_dicts(old[k], new[k], p)
        return out
    if (isinstance(old, list) and isinstance(new, list) and len(old) == len(new)
            and any(isinstance(v, (dict, list)) for v in old)):
        return [d for i, (a, b) in enumerate(zip(old, new))
                for d in diff_dicts(a, b, f"{path or 'value'}[{i}]")]
    if old == new:
        return []
    a, b = short_repr(old), short_repr(new)
    if (isinstance(old, list) and isinstance(new, list)
            and (a.endswith("…") or b.endswith("…"))):  # shortened: show where they part
        i = _first_difference(old, new)
        x = short_repr(old[i]) if i < len(old) else "(absent)"
        y = short_repr(new[i]) if i < len(new) else "(absent)"
        size = f" ({len(old)} → {len(new)} items)" if len(old) != len(new) else ""
        return [f"{path or 'value'}[{i}]: {x} → {y}{size}"]
    if isinstance(old, str) and isinstance(new, str) and a == b:  # long, shortened alike
        i = _first_difference(old, new)
        return [f"{path or 'value'} from character {i}: {old[max(0, i - 10):i + 30]!r} → "
                f"{new[max(0, i - 10):i + 30]!r}"]
    return [f"{path or 'value'}: {a} → {b}"]


RUN_WIDE = ("schema_version", "config", "packages", "random_stream", "device")
"""Manifest entries that every cell depends on: they must agree for ``--resume`` (the config without
the lists that a resumed run may extend: problems, estimators, seeds, plugins)."""

EXTENSIBLE_CONFIG = ("problems", "estimators", "seeds", "plugins", "out", "resume", "executor",
                     "cell_timeout", "reference_time_budget", "reference_cache")
"""Configuration entries that a resumed run may change: it may add problems, checkpoints,
estimators, seeds and plugin files (the finished cells stay valid), run elsewhere or differently."""


def _run_wide(manifest: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: manifest.get(k) for k in RUN_WIDE}
    if out["random_stream"] is None:  # runs before it was recorded (2 December 2026)
        out["random_stream"] = "unrecorded"
    if isinstance(out["config"], dict):
        # the M grid the cells used decides (M = None and the same grid written out are one run);
        # M only where a manifest lacks the grid
        cfg = out["config"]
        drop = "M" if "m_grid" in cfg else "m_grid"
        out["config"] = {k: v for k, v in cfg.items() if k not in EXTENSIBLE_CONFIG and k != drop}
    if isinstance(out["packages"], dict):
        out["packages"] = {k: out["packages"].get(k) for k in ("sbn_bench", "torch")}
    if isinstance(out["device"], dict):
        dev = out["device"]
        out["device"] = {k: dev.get(k) for k in ("type", "name", "torch_threads")}
        # the C allocator's policy times the throughput cells (runs before it was recorded: system)
        out["device"]["malloc"] = dev.get("malloc", "system")
    return out


def _records(manifest: Mapping[str, Any], key: str, ident: tuple[str, ...], value: str
             ) -> dict[str, Any]:
    """``{identity: value}`` of a manifest list (estimators, problems, plugins), tolerant of
    malformed entries."""
    out: dict[str, Any] = {}
    items = manifest.get(key)
    for r in items if isinstance(items, list) else []:
        if isinstance(r, dict):
            out["/".join(str(r.get(k)) for k in ident)] = r.get(value)
    return out


def processor_text(device: Any) -> str | None:
    """A manifest's ``device`` entry's processor (:func:`sbn_bench.provenance.processor_label`),
    or None where not recorded (manifests before 2 December 2026)."""
    if not isinstance(device, dict) or not device.get("cpu"):
        return None
    return processor_label(str(device["cpu"]), device.get("cpu_capability"))


def _timed(run_wide: Mapping[str, Any]) -> bool:
    """Whether a manifest's configuration measures throughput (``throughput.enabled``; true
    where it cannot be read)."""
    cfg = run_wide.get("config")
    tp = cfg.get("throughput") if isinstance(cfg, dict) else None
    return not (isinstance(tp, dict) and tp.get("enabled") is False)


def resume_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What makes the finished cells of run ``old`` invalid for run ``new``, one line each: a
    run-wide setting that differs, an estimator whose version changed, a problem checkpoint whose
    arrays changed (fingerprint), a plugin file whose content changed (SHA-256). Additions (more
    problems, checkpoints, estimators, seeds or plugin files) are not differences, nor are the
    throughput settings where either run measures no throughput (a run without it may add it; a
    resume without it leaves the measured figures out of the tables, with a warning)."""
    wide_old, wide_new = _run_wide(old), _run_wide(new)
    if not (_timed(wide_old) and _timed(wide_new)):
        # no throughput cell was measured, or none will be: its settings concern no finished cell
        for w in (wide_old, wide_new):
            if isinstance(w["config"], dict):
                w["config"] = {k: v for k, v in w["config"].items() if k != "throughput"}
    diffs = diff_dicts(wide_old, wide_new)
    for key, ident, value, what in (
            ("estimators", ("spec",), "version", "estimator {} version"),
            ("problems", ("problem", "checkpoint"), "sha256", "problem {} (fingerprint)"),
            ("plugins", ("path",), "sha256", "plugin file {} (SHA-256)")):
        a, b = _records(old, key, ident, value), _records(new, key, ident, value)
        for name in sorted(set(a) & set(b)):
            if a[name] != b[name]:
                diffs.append(f"{what.format(repr(name))}: {short_repr(a[name])} → {short_repr(b[name])}")
    return diffs


PART_TRAILER = re.compile(r"#rows=(\d+) sha256=([0-9a-f]{64})")
"""The last line of a part file: its row count and the SHA-256 of everything before it."""


def part_text(kind: str, rows: list[dict[str, Any]]) -> str:
    """A part file's text: the table's header and rows (:func:`table_text`), then a trailer line
    ``#rows=N sha256=…`` that lets a reader tell a complete part from an empty, truncated or foreign
    one."""
    body = table_text(kind, rows)
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return f"{body}#rows={len(rows)} sha256={digest}\n"


def part_problem(text: str, kind: str, key: Mapping[str, Any] | None = None) -> str | None:
    """Why a part file's text is not a complete part of ``kind`` for the cell ``key`` (column →
    value, e.g. problem, checkpoint, estimator, seed), or None when it is."""
    if not text.endswith("\n"):
        return "it does not end with a newline (truncated)"
    body, _, last = text[:-1].rpartition("\n")
    m = PART_TRAILER.fullmatch(last)
    if m is None:
        return "it has no '#rows=N sha256=…' trailer (truncated, empty or not written by sbn-bench)"
    body += "\n"
    if hashlib.sha256(body.encode("utf-8")).hexdigest() != m.group(2):
        return "its SHA-256 does not match its content (corrupt)"
    lines = body.splitlines()
    header = ",".join(TABLES[kind][1])
    if not lines or lines[0] != header:
        return f"its header is not {header!r}"
    rows = list(csv.DictReader(io.StringIO(body)))
    if len(rows) != int(m.group(1)) or not rows:
        return f"it holds {len(rows)} rows, its trailer says {m.group(1)}"
    for col, want in (key or {}).items():
        got = rows[0].get(col)
        if got != ("" if want is None else str(want)):
            return f"its {col} is {got!r}, expected {want!r} (a part of another cell)"
    return None


MAX_DIFFERENCES_SHOWN = 40


class RunStore:
    """The output folder of one run (see the module docstring). Holds the folder's lock from
    :meth:`open` to :meth:`close`."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.cells = self.out / CELLS
        self._lock: int | None = None

    @classmethod
    def open(cls, out: str | os.PathLike[str], manifest: dict[str, Any], resume: bool
             ) -> RunStore:
        """Lock the folder, check it, and write (or, resuming, check and update) the manifest.

        Raises:
            RunDirError: another run holds the folder; ``out`` holds results and ``resume`` is
                false; or it holds a run whose finished cells this one cannot reuse (every
                difference is listed); or it is not a folder.
        """
        store = cls(Path(out))
        d = store.out
        if d.exists() and not d.is_dir():
            raise RunDirError(f"output {str(d)!r} exists and is not a folder; choose another output "
                              "folder (out=…, --out)", argument=str(d))
        text = json.dumps(manifest, indent=2, allow_nan=True) + "\n"  # serialisable before any write
        existed = d.is_dir()
        try:
            lock_existed = (d / LOCK).exists()  # an unsearchable folder: the OSError below
            make_folder(d)
            store._acquire()
            try:
                store._check(manifest, resume, existed)
            except RunDirError:  # a refused folder keeps no lock file of this run's making
                if not lock_existed:
                    (d / LOCK).unlink(missing_ok=True)  # still held: no other run took it
                raise
            if resume and (d / MANIFEST).is_file():
                manifest = store._resumed(manifest)
                text = json.dumps(manifest, indent=2, allow_nan=True) + "\n"
            store.cells.mkdir(exist_ok=True)
            atomic_write_text(d / MANIFEST, text)
        except RunDirError:
            store.close()
            raise
        except OSError as e:
            store.close()
            reason = e.strerror or str(e)
            code = errno.errorcode.get(e.errno or 0)
            raise RunDirError(f"cannot write in output folder {str(d)!r}: {reason}"
                              + (f" [{code}]" if code else "") + "; free space or fix the "
                              "folder's permissions and run the same command again, or choose "
                              "another output folder", argument=str(d)) from None
        store.manifest = manifest
        return store

    def _acquire(self) -> None:
        fd = try_lock(self.out)
        if fd is None:
            raise RunDirError(f"output folder {str(self.out)!r} is in use by another sbn-bench "
                              "process (a run, training or study holds the folder's lock); wait "
                              "for it to finish, or choose another output folder",
                              argument=str(self.out)) from None
        self._lock = fd

    def close(self) -> None:
        """Release the folder's lock."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _unstarted(self) -> list[Path] | None:
        """The temporary files of the first manifest's write when the folder holds only what a run
        leaves before that write succeeds (its lock, an empty ``cells/``, those files: a full disk
        or a kill at that moment), else None: such a folder is taken as empty, as the same command
        run again (or resumed) should start the run there."""
        strays = []
        for p in self.out.iterdir():
            if p.name == LOCK or (p.name == CELLS and p.is_dir() and not any(p.iterdir())):
                continue
            if p.is_file() and p.name.startswith(f".{MANIFEST}.") and p.name.endswith(".tmp"):
                strays.append(p)
                continue
            return None
        return strays

    def _check(self, manifest: dict[str, Any], resume: bool, existed: bool) -> None:
        d, mpath = self.out, self.out / MANIFEST
        has_any = existed and any(p.name != LOCK for p in d.iterdir())
        strays = self._unstarted() if has_any else None
        if strays is not None:
            for p in strays:
                p.unlink(missing_ok=True)
            has_any = False
        if has_any and not resume and mpath.exists():
            raise RunDirError(f"output folder {str(d)!r} is not empty (it holds a previous run); "
                              "resume that run (resume=True, --resume) or choose another output "
                              "folder (out=…, --out)", argument=str(d))
        if has_any and not resume:  # nothing to resume there: only another folder will do
            what = (f"a training ({TRAINING_MANIFEST})" if (d / TRAINING_MANIFEST).is_file()
                    else f"a training study ({STUDY_MANIFEST})" if (d / STUDY_MANIFEST).is_file()
                    else "other files, not a run")
            raise RunDirError(f"output folder {str(d)!r} is not empty (it holds {what}); choose "
                              "another output folder (out=…, --out)", argument=str(d))
        if has_any and resume and not mpath.is_file():
            raise RunDirError(f"cannot resume in {str(d)!r}: it has no {MANIFEST} (not an "
                              "sbn-bench run folder); choose another output folder",
                              argument=str(d))

    def _resumed(self, manifest: dict[str, Any]) -> dict[str, Any]:
        d, mpath = self.out, self.out / MANIFEST
        try:
            old = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunDirError(f"cannot resume in {str(d)!r}: {MANIFEST} is unreadable ({e}); the "
                              "finished cells cannot be checked against any settings without it: "
                              "restore it (e.g. from a backup), or run again in another folder",
                              argument=str(d)) from None
        if not isinstance(old, dict):
            raise RunDirError(f"cannot resume in {str(d)!r}: {MANIFEST} holds a JSON "
                              f"{type(old).__name__}, not an object (not written by sbn-bench "
                              "run)", argument=str(d), expected="a manifest object")
        diffs = resume_differences(old, manifest)
        if diffs:
            n = MAX_DIFFERENCES_SHOWN
            shown = "; ".join(diffs[:n]) + (f"; … ({len(diffs) - n} more)" if len(diffs) > n else "")
            stream = "" if old.get("random_stream") == manifest.get("random_stream") else (
                " The random stream (sbn_bench.model.STREAM_VERSION: what a seed draws) is this "
                "version's, not a setting: cells of two streams never mix, so run into another "
                "output folder (runs from before 2 December 2026 recorded none).")
            raise RunDirError(f"cannot resume in {str(d)!r}: its finished cells were measured "
                              f"differently ({len(diffs)} difference(s): {shown}). A resumed run "
                              "may add problems, checkpoints, estimators, seeds and plugin files; "
                              f"use the same settings otherwise, or another output folder.{stream}",
                              argument=str(d), value=diffs)
        for stray in [*d.glob(".*.tmp"), *self.cells.glob(".*.tmp")]:
            stray.unlink(missing_ok=True)  # temporary files of writes that were killed
        seen = old.get("processors")
        seen = [p for p in seen if isinstance(p, str)] if isinstance(seen, list) else []
        for m in (old, manifest):  # every session's processor, in order (the cells mix them)
            p = processor_text(m.get("device"))
            if p is not None and p not in seen:
                seen.append(p)
        return {**manifest, "started": old.get("started", manifest["started"]),
                "resumed": [*old.get("resumed", []), manifest["started"]],
                **({"processors": seen} if seen else {})}

    manifest: dict[str, Any]

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        atomic_write_text(self.out / MANIFEST, json.dumps(manifest, indent=2, allow_nan=True) + "\n")

    def part(self, cell_id: str, kind: str) -> Path:
        return self.cells / f"{cell_id}.{kind}.csv"

    def has(self, cell_id: str, kind: str) -> bool:
        return self.part(cell_id, kind).is_file()

    def write_part(self, cell_id: str, kind: str, rows: list[dict[str, Any]]) -> None:
        """Write one cell's rows (kind ``metrics``, ``throughput`` or ``failure``) atomically, with
        the trailer that validates it (:func:`part_text`)."""
        atomic_write_text(self.part(cell_id, kind), part_text(kind, rows))

    def check_part(self, cell_id: str, kind: str, key: Mapping[str, Any] | None = None
                   ) -> str | None:
        """Why the part file of a cell is not usable (missing, unreadable, incomplete, corrupt, of
        another cell), or None when it is complete."""
        p = self.part(cell_id, kind)
        if not p.is_file():
            return "missing"
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            return f"unreadable ({e})"
        return part_problem(text, kind, key)

    def write_table(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Write a whole table (e.g. the derived ``timed`` one) atomically."""
        atomic_write_text(self.out / TABLES[kind][0], table_text(kind, rows))

    def parts_outside(self, cell_ids: Iterable[str]) -> dict[str, list[dict[str, str]]]:
        """Complete part files of cells not in ``cell_ids`` (finished by an earlier session whose
        grid was larger), by kind: the first row of each (its problem, checkpoint, estimator,
        seed)."""
        keep = set(cell_ids)
        out: dict[str, list[dict[str, str]]] = {}
        for kind in PART_KINDS:
            for p in sorted(self.cells.glob(f"*.{kind}.csv")) if self.cells.is_dir() else []:
                if p.name[:-len(f".{kind}.csv")] in keep:
                    continue
                try:
                    text = p.read_text(encoding="utf-8")
                except OSError:
                    continue
                if part_problem(text, kind) is None:
                    out.setdefault(kind, []).append(next(csv.DictReader(io.StringIO(text))))
        return out

    def remove_part(self, cell_id: str, kind: str) -> None:
        self.part(cell_id, kind).unlink(missing_ok=True)

    def assemble(self, cell_ids: Iterable[str]) -> None:
        """Rewrite the tables (:data:`TABLES`) from the part files, in the order of ``cell_ids``
        (each table atomically)."""
        ids = list(cell_ids)
        for kind in PART_KINDS:
            fname, columns = TABLES[kind]
            header = ",".join(columns) + "\n"
            body = []
            for cid in ids:
                p = self.part(cid, kind)
                if p.is_file():
                    text = p.read_text(encoding="utf-8")
                    if part_problem(text, kind) is None:  # header, rows, trailer: keep the rows
                        body.append(text.split("\n", 1)[1].rsplit("#rows=", 1)[0])
            atomic_write_text(self.out / fname, header + "".join(body))

    def tables(self, kinds: Iterable[str] = tuple(TABLES)) -> dict[str, pd.DataFrame]:
        """The assembled tables of ``kinds`` (default: all) as DataFrames."""
        return {kind: read_table(self.out / TABLES[kind][0], TABLES[kind][1]) for kind in kinds}


def tables_from_parts(run_dir: str | os.PathLike[str]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The tables of a run folder assembled in memory from its complete part files (``cells/``),
    for a run whose tables were never written or were cut off (killed before its first assembly),
    and the names of the part files left out as incomplete (unreadable, cut off, another kind's);
    rows come in the parts' file-name order."""
    cells = Path(run_dir) / CELLS
    out = {}
    damaged: list[str] = []
    for kind in PART_KINDS:
        fname, columns = TABLES[kind]
        body = []
        for p in sorted(cells.glob(f"*.{kind}.csv")) if cells.is_dir() else []:
            try:
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                damaged.append(p.name)
                continue
            if part_problem(text, kind) is None:
                body.append(text.split("\n", 1)[1].rsplit("#rows=", 1)[0])
            else:
                damaged.append(p.name)
        buf = io.StringIO(",".join(columns) + "\n" + "".join(body))
        out[kind] = parse_table(buf, columns, name=f"{cells}/*.{kind}.csv")
    return out, damaged

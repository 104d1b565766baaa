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

import errno
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from sbn_bench import schema
from sbn_bench.errors import SbnBenchError
from sbn_bench.fileio import WriteError as WriteError  # re-exported: a run's write errors
from sbn_bench.fileio import atomic_write_text
from sbn_bench.schema import read_table, to_csv_text

MANIFEST = "manifest.json"
TABLES = {kind: (schema.TABLE_FILES[kind], schema.COLUMNS[kind]) for kind in schema.TABLE_FILES}
PART_KINDS = ("metrics", "throughput", "failure")
"""The tables assembled from per-cell part files; ``timed`` is derived from two of them."""
CELLS = "cells"


class RunDirError(SbnBenchError, ValueError):
    """A folder that cannot be used as a run folder: an output folder that exists without
    ``--resume`` or resumes another run, or a folder to report on that is not a run
    (``argument`` is the folder)."""


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


def _short(v: Any, limit: int = 80) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def diff_dicts(old: Any, new: Any, path: str = "") -> list[str]:
    """Human-readable differences ``key: old → new`` between two JSON-like values (lists of the
    same length compared item by item as ``key[i]``; long values shortened with ``…``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in old:
                out.append(f"{p}: (absent) → {_short(new[k])}")
            elif k not in new:
                out.append(f"{p}: {_short(old[k])} → (absent)")
            else:
                out += diff_dicts(old[k], new[k], p)
        return out
    if (isinstance(old, list) and isinstance(new, list) and len(old) == len(new)
            and any(isinstance(v, (dict, list)) for v in old)):
        return [d for i, (a, b) in enumerate(zip(old, new))
                for d in diff_dicts(a, b, f"{path or 'value'}[{i}]")]
    return [] if old == new else [f"{path or 'value'}: {_short(old)} → {_short(new)}"]


RESUME_KEYS = ("schema_version", "config", "estimators", "problems", "packages", "device")
"""Manifest entries that must agree for ``--resume`` (not: times, commit, python patch level)."""


def _identity(manifest: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: manifest.get(k) for k in RESUME_KEYS}
    if isinstance(out["config"], dict):
        out["config"] = comparable(out["config"])
    if isinstance(out["packages"], dict):
        out["packages"] = {k: out["packages"].get(k) for k in ("sbn_bench", "torch")}
    if isinstance(out["device"], dict):
        out["device"] = {k: out["device"].get(k) for k in ("type", "name")}
    return out


class RunStore:
    """The output folder of one run (see the module docstring)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.cells = self.out / CELLS

    @classmethod
    def open(cls, out: str | os.PathLike[str], manifest: dict[str, Any], resume: bool
             ) -> RunStore:
        """Check the folder and write (or, resuming, check and update) the manifest.

        Raises:
            RunDirError: ``out`` holds results and ``resume`` is false; or it holds another run's
                results (the differences are listed); or it is not a folder.
        """
        store = cls(Path(out))
        d = store.out
        if d.exists() and not d.is_dir():
            raise RunDirError(f"output {str(d)!r} exists and is not a folder; choose another --out",
                              argument=str(d))
        has_any = d.is_dir() and any(d.iterdir())
        mpath = d / MANIFEST
        if has_any and not resume:
            raise RunDirError(f"output folder {str(d)!r} is not empty (it holds "
                              f"{'a previous run' if mpath.exists() else 'other files'}); use "
                              "--resume to continue that run, or --out to choose another folder",
                              argument=str(d))
        if has_any and resume:
            if not mpath.is_file():
                raise RunDirError(f"cannot resume in {str(d)!r}: it has no {MANIFEST} (not an "
                                  "sbn-bench run folder); choose another --out", argument=str(d))
            try:
                old = json.loads(mpath.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise RunDirError(f"cannot resume in {str(d)!r}: {MANIFEST} is unreadable "
                                  f"({e})", argument=str(d)) from None
            diffs = diff_dicts(_identity(old), _identity(manifest))
            if diffs:
                shown = "; ".join(diffs[:8]) + (f"; … ({len(diffs) - 8} more)" if len(diffs) > 8
                                                else "")
                raise RunDirError(f"cannot resume in {str(d)!r}: its run differs from this one: "
                                  f"{shown}. Use the same settings, or --out to start a new run",
                                  argument=str(d))
            manifest = {**old, "resumed": [*old.get("resumed", []), manifest["started"]],
                        "status": "running", "environment_last": manifest.get("environment")}
            for stray in [*d.glob(".*.tmp"), *store.cells.glob(".*.tmp")]:
                stray.unlink(missing_ok=True)  # temporary files of writes that were killed
        try:
            store.cells.mkdir(parents=True, exist_ok=True)
            store.write_manifest(manifest)
        except OSError as e:
            reason = e.strerror or str(e)
            code = errno.errorcode.get(e.errno or 0)
            raise RunDirError(f"cannot write in output folder {str(d)!r}: {reason}"
                              + (f" [{code}]" if code else "") + "; choose another --out or fix "
                              "the folder's permissions", argument=str(d)) from None
        store.manifest = manifest
        return store

    manifest: dict[str, Any]

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        atomic_write_text(self.out / MANIFEST, json.dumps(manifest, indent=2, allow_nan=True) + "\n")

    def part(self, cell_id: str, kind: str) -> Path:
        return self.cells / f"{cell_id}.{kind}.csv"

    def has(self, cell_id: str, kind: str) -> bool:
        return self.part(cell_id, kind).is_file()

    def write_part(self, cell_id: str, kind: str, rows: list[dict[str, Any]]) -> None:
        """Write one cell's rows (kind ``metrics``, ``throughput`` or ``failure``) atomically."""
        atomic_write_text(self.part(cell_id, kind), table_text(kind, rows))

    def write_table(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Write a whole table (e.g. the derived ``timed`` one) atomically."""
        atomic_write_text(self.out / TABLES[kind][0], table_text(kind, rows))

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
                    body.append(text.split("\n", 1)[1] if "\n" in text else "")
            atomic_write_text(self.out / fname, header + "".join(body))

    def tables(self, kinds: Iterable[str] = tuple(TABLES)) -> dict[str, pd.DataFrame]:
        """The assembled tables of ``kinds`` (default: all) as DataFrames."""
        return {kind: read_table(self.out / TABLES[kind][0], TABLES[kind][1]) for kind in kinds}

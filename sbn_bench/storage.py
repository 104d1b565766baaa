"""A run's output folder: manifest, per-cell part files written atomically, and the tidy tables.

Layout of ``--out DIR``::

    manifest.json        schema version, config, seeds, versions, device, commit, estimators, problems
    metrics.csv          schema.METRICS_COLUMNS, one row per (problem, checkpoint, estimator, seed,
                         layer, metric, M); deterministic values only (schema.METRICS)
    timed_metrics.csv    the same columns for the metrics that depend on measured time
                         (schema.TIMED_METRICS: time_to_accuracy_s), cells with a throughput only
    throughput.csv       schema.THROUGHPUT_COLUMNS
    failures.csv         schema.FAILURES_COLUMNS
    cells/<id>.<kind>.csv  one part file per finished cell (kind: metrics, timed, throughput,
                         failure)

Every file is written to a temporary file in the same folder and renamed over the target
(``os.replace``), so a run killed at any moment leaves only complete files. The tables are
re-assembled from the part files, in the run's cell order, by concatenating their text: the same
cells give byte-identical tables however the run was interrupted and resumed. A statistics cell
writes its ``timed`` part before its ``metrics`` part, whose presence marks the cell as done.

A write that fails (full disk, read-only folder, lost permissions) raises :class:`WriteError`, an
``OSError`` whose one-line message names the file, the reason and how to continue; the files
written before it are complete and untouched (the failed write's temporary file is removed).
"""

from __future__ import annotations

import errno
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from sbn_bench import schema
from sbn_bench.config import diff_dicts
from sbn_bench.fileio import WriteError as WriteError  # re-exported: a run's write errors
from sbn_bench.fileio import atomic_write_text

MANIFEST = "manifest.json"
TABLES = {"metrics": (schema.TABLE_FILES["metrics"], schema.METRICS_COLUMNS),
          "timed": (schema.TABLE_FILES["timed"], schema.METRICS_COLUMNS),
          "throughput": (schema.TABLE_FILES["throughput"], schema.THROUGHPUT_COLUMNS),
          "failure": (schema.TABLE_FILES["failure"], schema.FAILURES_COLUMNS)}
CELLS = "cells"


class RunDirError(ValueError):
    """An output folder that cannot be used (exists without --resume, or resumes another run)."""


def to_csv_text(df: pd.DataFrame, columns: list[str]) -> str:
    """The canonical CSV text of a table (floats as shortest round-trip repr, NaN empty)."""
    return df.reindex(columns=columns).to_csv(index=False, lineterminator="\n")


def read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    """Read a table written by this module (exact float round trip; ``M`` as nullable int)."""
    dtypes: dict[str, Any] = {c: str for c in ("problem", "checkpoint", "estimator", "layer",
                                                "metric", "mode", "device", "dtype", "stage",
                                                "error") if c in columns}
    if "M" in columns:
        dtypes["M"] = "Int64"
    for c in ("seed", "samples"):
        if c in columns:
            dtypes[c] = "Int64"
    extra: dict[str, Any] = {}
    if int(pd.__version__.split(".")[0]) < 3:  # pandas ≥ 3 round-trips floats by default
        extra["float_precision"] = "round_trip"
    return pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""], **extra)


def git_commit(start: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the repository holding the package, or None."""
    where = start or Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                           text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = r.stdout.strip()
    return out if r.returncode == 0 and out else None


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    import sbn_bench

    out: dict[str, str | None] = {"sbn_bench": sbn_bench.__version__}
    for name in ("torch", "numpy", "pandas", "click"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict[str, Any]:
    """Python, platform and package versions for the manifest."""
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "packages": package_versions(),
            "git_commit": git_commit()}


RESUME_KEYS = ("schema_version", "config", "estimators", "problems", "packages", "device")
"""Manifest entries that must agree for ``--resume`` (not: times, commit, python patch level)."""


def _identity(manifest: Mapping[str, Any]) -> dict[str, Any]:
    from sbn_bench.config import comparable

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
            raise RunDirError(f"output {str(d)!r} exists and is not a folder; choose another --out")
        has_any = d.is_dir() and any(d.iterdir())
        mpath = d / MANIFEST
        if has_any and not resume:
            raise RunDirError(f"output folder {str(d)!r} is not empty (it holds "
                              f"{'a previous run' if mpath.exists() else 'other files'}); use "
                              "--resume to continue that run, or --out to choose another folder")
        if has_any and resume:
            if not mpath.is_file():
                raise RunDirError(f"cannot resume in {str(d)!r}: it has no {MANIFEST} (not an "
                                  "sbn-bench run folder); choose another --out")
            try:
                old = json.loads(mpath.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise RunDirError(f"cannot resume in {str(d)!r}: {MANIFEST} is unreadable "
                                  f"({e})") from None
            diffs = diff_dicts(_identity(old), _identity(manifest))
            if diffs:
                shown = "; ".join(diffs[:8]) + (f"; … ({len(diffs) - 8} more)" if len(diffs) > 8
                                                else "")
                raise RunDirError(f"cannot resume in {str(d)!r}: its run differs from this one: "
                                  f"{shown}. Use the same settings, or --out to start a new run")
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
                              "the folder's permissions") from None
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
        columns = TABLES[kind][1]
        df = pd.DataFrame(rows, columns=columns)
        for c in ("M", "seed", "samples"):
            if c in df.columns:
                df[c] = pd.array(df[c].tolist(), dtype="Int64")
        atomic_write_text(self.part(cell_id, kind), to_csv_text(df, columns))

    def remove_part(self, cell_id: str, kind: str) -> None:
        self.part(cell_id, kind).unlink(missing_ok=True)

    def read_part(self, cell_id: str, kind: str) -> pd.DataFrame:
        return read_table(self.part(cell_id, kind), TABLES[kind][1])

    def assemble(self, cell_ids: Iterable[str]) -> None:
        """Rewrite the tables (:data:`TABLES`) from the part files, in the order of ``cell_ids``
        (each table atomically)."""
        ids = list(cell_ids)
        for kind, (fname, columns) in TABLES.items():
            header = ",".join(columns) + "\n"
            body = []
            for cid in ids:
                p = self.part(cid, kind)
                if p.is_file():
                    text = p.read_text(encoding="utf-8")
                    body.append(text.split("\n", 1)[1] if "\n" in text else "")
            atomic_write_text(self.out / fname, header + "".join(body))

    def tables(self) -> dict[str, pd.DataFrame]:
        """The assembled tables as DataFrames."""
        return {kind: read_table(self.out / fname, cols) for kind, (fname, cols) in TABLES.items()}

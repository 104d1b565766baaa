"""Read a run directory (``manifest.json``, ``metrics.csv``, ``timed_metrics.csv``,
``throughput.csv``, ``failures.csv``).

``timed_metrics.csv`` (the metrics that depend on measured time, e.g. ``time_to_accuracy_s``; it
has the columns of ``metrics.csv``) is appended to :attr:`Run.metrics` when present, so the reports
show them beside the others; older runs kept those rows in ``metrics.csv`` itself.

The columns are fixed in :mod:`sbn_bench.schema`; the manifest is read tolerantly: a missing key is
reported as unknown, never as an error, so reports work on partial or older runs (STYLE 7).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sbn_bench import schema
from sbn_bench.provenance import file_sha256
from sbn_bench.reports.families import estimator_families
from sbn_bench.schema import TableError, read_table
from sbn_bench.storage import (
    STUDY_MANIFEST,
    TRAINING_MANIFEST,
    RunDirError,
    part_problem,
    processor_text,
    tables_from_parts,
)

__all__ = ["Run", "RunDirError", "TableError", "load_run"]

EXACT_REFERENCE = "exact"


@dataclass
class Run:
    """One run directory, loaded.

    Attributes:
        path: the directory.
        manifest: ``manifest.json`` as a dict (empty when absent).
        metrics: tidy rows, columns :data:`sbn_bench.schema.METRICS_COLUMNS` (``M`` float, NaN when the
            metric does not depend on it; ``layer``/``checkpoint`` strings) and the
            :data:`REFERENCE_COLUMNS` (filled with the exact reference when the file lacks them).
        throughput: columns :data:`sbn_bench.schema.THROUGHPUT_COLUMNS` (may have no rows).
        failures: columns :data:`sbn_bench.schema.FAILURES_COLUMNS` (may have no rows).
        warnings: problems found while reading (unknown manifest keys are not warnings).
    """

    path: Path
    manifest: dict[str, Any]
    metrics: pd.DataFrame
    throughput: pd.DataFrame
    failures: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    seeds_combined: int = 1
    incomplete: str | None = None
    """Set when the manifest says the run did not finish (status ``running`` or ``incomplete``):
    a one-line warning with the number of cells done (:func:`incomplete_note`)."""
    cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    """Derived lookups (cells, estimators, indexes), keyed by the tables they come from: assigning
    a new ``metrics``, ``throughput`` or ``failures`` table makes them be derived again."""

    def memo(self, name: str, *args: Any, make: Any) -> Any:
        """``make()``, computed once per ``(name, args)`` and per version of the run's tables."""
        key = (name, args, id(self.metrics), id(self.throughput), id(self.failures))
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def cells(self) -> list[tuple[str, str]]:
        """The (problem, checkpoint) pairs with results or failures, in run order."""
        return list(self.memo("cells", make=self._cells))

    def _cells(self) -> list[tuple[str, str]]:
        seen: dict[tuple[str, str], None] = {}
        for frame in (self.metrics, self.throughput):
            for p, c in zip(frame["problem"], frame["checkpoint"]):
                seen.setdefault((p, c), None)
        for p, c in zip(self.failures["problem"], self.failures["checkpoint"]):
            if c or not any(k[0] == p for k in seen):
                seen.setdefault((p, c), None)
        return list(seen)

    def estimators(self) -> list[str]:
        """Estimator specs in run order (first appearance; failures last)."""
        return list(self.memo("estimators", make=self._estimators))

    def _estimators(self) -> list[str]:
        out: dict[str, None] = {}
        for frame in (self.metrics, self.throughput, self.failures):
            for e in frame["estimator"]:
                out.setdefault(e, None)
        return list(out)

    def problems(self) -> list[str]:
        """Problem names in run order."""
        return list(dict.fromkeys(p for p, _ in self.cells()))

    def checkpoints(self, problem: str) -> list[str]:
        """The checkpoints of ``problem`` in run order."""
        return [c for p, c in self.cells() if p == problem]

    def families(self) -> dict[str, str]:
        """``{spec: family}`` for every estimator (:func:`~sbn_bench.reports.families.estimator_families`)."""
        return dict(self.memo("families", make=lambda: estimator_families(self.estimators(),
                                                                          self.manifest)))


REQUIRED = {
    "metrics.csv": ["problem", "checkpoint", "estimator", "layer", "metric", "M", "value", "stderr",
                    "mode"],
    "throughput.csv": ["problem", "estimator", "samples_per_s"],
    "timed_metrics.csv": ["problem", "checkpoint", "estimator", "layer", "metric", "M", "value",
                          "stderr", "mode"],
    "failures.csv": ["problem", "estimator", "error"],
}
"""The columns a report cannot do without; the other schema columns are optional and read as empty
when absent, so older or hand-made runs still render."""


def _read_csv(path: Path, columns: list[str], required: bool) -> pd.DataFrame:
    if not path.is_file():
        if required and (path.parent / STUDY_MANIFEST).is_file():
            raise RunDirError(f"{str(path.parent)!r} holds a training study, not a run: its report "
                              f"({str(path.parent / 'report.md')!r}) is written by sbn-bench train "
                              "when the study finishes (from Python: "
                              "sbn_bench.train_report.write_training_report)",
                              argument=str(path.parent), expected=f"a folder with {path.name}")
        if required and ((path.parent / TRAINING_MANIFEST).is_file()
                         or (path.parent / "train_log.csv").is_file()
                         or any(path.parent.glob("checkpoint_epoch*.npz"))):
            # (an interrupted training has its log and checkpoints but no manifest yet)
            raise RunDirError(f"{str(path.parent)!r} holds a single training, not a run: its "
                              "learning curve is train_log.csv (and, once it finishes, "
                              "loss_curve.png), and its "
                              "checkpoints can be measured with sbn-bench run --problem "
                              "CHECKPOINT.npz --out ANOTHER_FOLDER",
                              argument=str(path.parent), expected=f"a folder with {path.name}")
        if required:
            raise RunDirError(f"no {path.name} in {str(path.parent)!r}: not a run directory "
                              "(the folder sbn-bench run --out DIR writes)",
                              argument=str(path.parent), expected=f"a folder with {path.name}")
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    return read_table(path, columns, required=REQUIRED.get(path.name, columns))


def _tables_from_parts(path: Path) -> tuple[str, dict[str, pd.DataFrame]] | None:
    """The tables of an unfinished or damaged run, assembled from its part files, with a note
    saying why; None when its assembled tables are there and complete. A run killed before it
    first assembled its tables has only ``cells/``; a table cut off mid-row does not end with a
    newline."""
    tables = [path / name for name in ("metrics.csv", "throughput.csv", "failures.csv")]
    has_parts = (path / "cells").is_dir() and any((path / "cells").glob("*.csv"))
    if not has_parts:
        return None
    if not tables[0].is_file():
        why = "the run's tables were never assembled (it stopped before)"
    else:
        cut = [t.name for t in tables if t.is_file() and not schema.ends_with_newline(t)]
        if not cut:
            return None
        why = f"{', '.join(cut)} {'is' if len(cut) == 1 else 'are'} cut off mid-row"
    parts, damaged = tables_from_parts(path)
    if all(t.empty for t in parts.values()):  # nothing left to report: not an empty "complete" report
        files = len(list((path / "cells").glob("*.csv")))
        raise RunDirError(f"run directory {str(path)!r}: {why}, and none of its {files} part "
                          f"file(s) in {path / 'cells'} is complete (damaged or cut off); resume the "
                          f"run to compute them again (sbn-bench run --out {path} --resume)",
                          argument=str(path), expected="a run with complete results")
    left_out = "" if not damaged else (
        f"; {len(damaged)} damaged part file(s) left out, their cells missing below "
        f"({', '.join(damaged[:3])}{', …' if len(damaged) > 3 else ''}): resume the run to compute "
        f"them again (sbn-bench run --out {path} --resume)")
    return (f"{why}: the tables below are assembled from the complete part files in "
            f"{path / 'cells'}{left_out}", parts)


def load_run(run_dir: str | Path) -> Run:
    """Load a run directory written by ``sbn-bench run``.

    Raises:
        RunDirError: the directory does not exist, is not a directory, or has no ``metrics.csv``.
        TableError: a file is empty, not CSV, or lacks schema columns.
    """
    path = Path(run_dir)
    if not path.exists():
        raise RunDirError(f"run directory {str(path)!r} does not exist", argument=str(path),
                          expected="a run directory written by sbn-bench run")
    if not path.is_dir():
        raise RunDirError(f"{str(path)!r} is not a directory: expected a run directory "
                          "(with manifest.json and metrics.csv)", argument=str(path))
    if not any(path.iterdir()):
        raise RunDirError(f"run directory {str(path)!r} is empty: no metrics.csv (write one with: "
                          f"sbn-bench run --out {path})", argument=str(path))
    from_parts = _tables_from_parts(path)
    warnings: list[str] = []
    if from_parts is not None:
        note, tables = from_parts
        warnings.append(note)
        metrics, throughput, failures = tables["metrics"], tables["throughput"], tables["failure"]
    else:
        for name in ("metrics.csv", "throughput.csv", "failures.csv"):
            t = path / name
            if t.is_file() and not schema.ends_with_newline(t):
                raise TableError(f"{str(t)!r} is cut off mid-row (the run was killed while writing "
                                 "it, or the file was damaged) and the run has no part files to "
                                 "assemble it from; resume the run to rewrite it", argument=str(t),
                                 expected="a complete table")
        metrics = _read_csv(path / "metrics.csv", schema.METRICS_COLUMNS, required=True)
        throughput = _read_csv(path / "throughput.csv", schema.THROUGHPUT_COLUMNS, required=False)
        failures = _read_csv(path / "failures.csv", schema.FAILURES_COLUMNS, required=False)
    _check_metrics(metrics, "metrics", path / "metrics.csv")
    metrics = _with_reference(metrics)
    schema.check_table(throughput, "throughput", path / "throughput.csv")
    timed_path = path / "timed_metrics.csv"
    if from_parts is None and timed_path.is_file() and timed_path.stat().st_size > 0:
        timed = _read_csv(timed_path, schema.METRICS_COLUMNS, required=False)
        _check_metrics(timed, "timed", timed_path)
        timed = _with_reference(timed)
        if not timed.empty:
            timed = timed[list(metrics.columns)]
            metrics = (pd.concat([metrics, timed], ignore_index=True) if not metrics.empty
                       else timed.reset_index(drop=True))
    metrics["M"] = pd.to_numeric(metrics["M"], errors="coerce").astype(float)
    for c in ("value", "stderr"):
        metrics[c] = pd.to_numeric(metrics[c], errors="coerce").astype(float)
    for c in schema.THROUGHPUT_COLUMNS:
        if c not in schema.TEXT_COLUMNS:
            throughput[c] = pd.to_numeric(throughput[c], errors="coerce").astype(float)
    for what in ("samples_per_s", "seconds_per_sample"):  # schema 1: quartiles over rounds
        old = [f"{what}_q25", f"{what}_q75"]
        if all(c in throughput.columns for c in old) and throughput[f"{what}_lo"].isna().all():
            throughput[f"{what}_lo"] = pd.to_numeric(throughput[old[0]], errors="coerce")
            throughput[f"{what}_hi"] = pd.to_numeric(throughput[old[1]], errors="coerce")
    manifest: dict[str, Any] = {}
    mpath = path / "manifest.json"
    if mpath.is_file():
        try:
            loaded = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # JSON is UTF-8 text
            warnings.append(f"manifest.json is not valid JSON ({e}); run facts are unknown")
        else:
            if isinstance(loaded, dict):
                manifest = loaded
            else:
                warnings.append("manifest.json is not a JSON object; run facts are unknown")
    else:
        warnings.append("no manifest.json: run facts (version, commit, device) are unknown")
    warnings += _changed_tables(path, manifest) if from_parts is None else []
    unknown = sorted(set(metrics["metric"]) - set(schema.METRICS) - set(schema.TIMED_METRICS))
    if unknown:
        warnings.append(f"metrics.csv has metric names outside the schema, ignored: {', '.join(unknown)}")
    sv = manifest.get("schema_version")
    if sv is not None and sv != schema.SCHEMA_VERSION:
        warnings.append(f"manifest schema_version {sv} differs from this sbn-bench's "
                        f"{schema.SCHEMA_VERSION}; the report may misread it")
    dup = int(metrics.duplicated([*METRIC_KEY, "seed"], keep=False).sum())
    if dup:  # a seed's row twice would count as two seeds
        warnings.append(f"metrics.csv has {dup} rows that repeat another's (problem, checkpoint, "
                        "estimator, seed, layer, metric, M): the table was damaged or edited; "
                        "they are averaged as if they were other seeds")
    metrics, n_seeds = combine_seeds(metrics)
    throughput = _combine_throughput(throughput)
    return Run(path, manifest, metrics, throughput, failures, warnings, n_seeds,
               incomplete=incomplete_note(path, manifest))


def _changed_tables(path: Path, manifest: dict[str, Any]) -> list[str]:
    """A warning per table that differs from the one the run wrote (its SHA-256 in the manifest's
    ``tables``, recorded since 2 December 2026): cut off at a row boundary, rows duplicated,
    edited. Such a table is read as it is, so the report says so; and one per table the run wrote
    that is now missing (its rows would be absent without a word)."""
    recorded = manifest.get("tables")
    if not isinstance(recorded, dict):
        return []
    names = [name for name in recorded if isinstance(name, str) and "/" not in name]
    missing = [name for name in names if not (path / name).exists()]
    changed = [name for name in names if (path / name).is_file()
               and file_sha256(path / name) != recorded[name]]
    rows = {"failures.csv": "the failed estimators", "throughput.csv": "the throughput figures",
            "timed_metrics.csv": "the time-to-accuracy rows"}
    return [f"{name} is missing, though the run wrote it (its SHA-256 is in manifest.json): the "
            f"report shows none of {rows.get(name, 'its rows')}; rewrite it with sbn-bench run "
            f"--out {path} --resume" for name in missing] + [
            f"{name} differs from the file the run wrote (its SHA-256 in manifest.json): it was "
            "damaged or edited since, and the report shows it as it is; rewrite it with sbn-bench "
            f"run --out {path} --resume" for name in changed]


REFERENCE_COLUMNS = {"reference": EXACT_REFERENCE, "reference_rel_error": 0.0}
"""Optional columns of ``metrics.csv`` that say what a row was measured against (SPEC §8): the
reference gradient (``exact``, or a Monte-Carlo reference such as ``mc:reinforce:20000``) and the
reference's relative error ``ε`` (0 for the exact one). Absent or empty: the exact reference."""


def _check_metrics(frame: pd.DataFrame, kind: str, path: Path) -> None:
    """:func:`sbn_bench.schema.check_table` of a metrics table, whose optional ``reference`` column
    (:data:`REFERENCE_COLUMNS`) is text."""
    schema.check_table(frame.drop(columns=["reference"], errors="ignore"), kind, path)


def _with_reference(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the :data:`REFERENCE_COLUMNS`, empty cells filled with the exact reference."""
    if "reference" in frame.columns:
        ref = frame["reference"].astype(object).where(frame["reference"].notna(), "").astype(str)
        frame["reference"] = ref.where(~ref.isin(["", "nan", "None", "<NA>"]), EXACT_REFERENCE) \
            .astype(object)
    else:
        frame["reference"] = EXACT_REFERENCE
    err = pd.to_numeric(frame["reference_rel_error"], errors="coerce") \
        if "reference_rel_error" in frame.columns else pd.Series(0.0, index=frame.index)
    frame["reference_rel_error"] = err.where(frame["reference"] != EXACT_REFERENCE, 0.0).astype(float)
    return frame


def is_mc_reference(reference: object) -> bool:
    """A row measured against a Monte-Carlo reference (anything but ``exact``)."""
    return str(reference) not in (EXACT_REFERENCE, "", "nan")


_CELL_KINDS = ("metrics", "throughput", "failure")
"""Part files that mark a cell as done (``cells/<id>.<kind>.csv``; see :mod:`sbn_bench.storage`)."""


def _expected_cells(manifest: dict[str, Any]) -> int | None:
    """Cells the run was configured with: the recorded count (since 2 December 2026 recorded when
    the run starts), or for an older run killed before recording it, (problem, checkpoint) pairs ×
    estimators × seeds, plus one throughput cell per network shape."""
    recorded = _get(manifest, "cells", "total")
    if isinstance(recorded, int):
        return recorded
    probs, ests, seeds = (manifest.get(k) for k in ("problems", "estimators", "seeds"))
    if not (isinstance(probs, list) and isinstance(ests, list) and isinstance(seeds, list)):
        return None
    tp = _get(manifest, "config", "throughput", "enabled")
    shapes = {tuple(p.get(k) for k in ("arch", "num_data", "loss", "noise")) if isinstance(p, dict)
              else None for p in probs}
    return len(probs) * len(ests) * len(seeds) + (len(shapes) if tp is not False else 0)


def incomplete_note(path: Path, manifest: dict[str, Any]) -> str | None:
    """``"this run is incomplete: N of M cells; resume it with …"`` when the manifest's status is
    ``running`` (killed, or still going), ``interrupted`` (Ctrl-C) or ``incomplete``; None
    otherwise (``complete`` or unknown, e.g. older runs without a status)."""
    status = manifest.get("status")
    if status not in ("running", "interrupted", "incomplete"):
        return None
    cells = path / "cells"
    done: set[str] = set()
    damaged: set[str] = set()
    for kind in _CELL_KINDS:
        for f in sorted(cells.glob(f"*.{kind}.csv")) if cells.is_dir() else []:
            try:  # only a complete part counts (a damaged one is left out of the tables)
                ok = part_problem(f.read_text(encoding="utf-8"), kind) is None
            except (OSError, UnicodeDecodeError):
                ok = False
            (done if ok else damaged).add(f.name.split(".", 1)[0])
    damaged -= done
    total = _expected_cells(manifest)
    count = f"{len(done)} of {total} cells" if total is not None else f"{len(done)} cells"
    state = "status 'running': killed, or still going" if status == "running" else \
        f"status {status!r}"
    if damaged:
        state += f"; {len(damaged)} more cell(s) with a damaged part file, left out and run again " \
                 "by a resume"
    return (f"this run is incomplete: {count} done ({state}); the tables show only those. Resume it "
            f"with the command that started it plus --resume (sbn-bench run ... --out {path} "
            f"--resume), then write the report again")


METRIC_KEY = ["problem", "checkpoint", "estimator", "layer", "metric", "M"]


def combine_seeds(metrics: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per (problem, checkpoint, estimator, layer, metric, M) when a run has several
    sampling seeds: the mean over seeds, with standard error ``√(Σ se²)/n`` (independent seeds);
    NaN (unknown) when any seed's is unknown (e.g. a cosine over one M-block).

    Returns:
        ``(rows, n)``: ``n`` the largest number of rows combined into one (1: nothing to combine).
    """
    if metrics.empty:
        return metrics, 1
    grouped = metrics.groupby(METRIC_KEY, sort=False, dropna=False)
    n = int(grouped.size().max())
    if n == 1:
        return metrics, 1
    work = metrics.assign(_se2=metrics["stderr"] ** 2, _se_na=metrics["stderr"].isna(),
                          _seed=metrics["seed"].astype(str))
    named = {"value", "stderr", "mode", "seed", "samples", *METRIC_KEY}
    firsts = {c: (c, "first") for c in metrics.columns if c not in named}
    out = work.groupby(METRIC_KEY, sort=False, dropna=False).agg(
        value=("value", "mean"), _se2=("_se2", "sum"), _n=("value", "size"), _na=("_se_na", "sum"),
        mode=("mode", lambda x: "/".join(dict.fromkeys(x))), seed=("_seed", ",".join),
        samples=("samples", "sum"), **firsts,
    ).reset_index()
    out["stderr"] = (out["_se2"] ** 0.5 / out["_n"]).where(out["_na"] == 0)
    return out[list(metrics.columns)], n


def _combine_throughput(tp: pd.DataFrame) -> pd.DataFrame:
    """One throughput row per (problem, checkpoint, estimator): the median of repeated rows."""
    if tp.empty:
        return tp
    keys = ["problem", "checkpoint", "estimator"]
    if not tp.duplicated(keys).any():
        return tp
    num = [c for c in tp.columns if c not in keys and pd.api.types.is_numeric_dtype(tp[c])]
    other = [c for c in tp.columns if c not in keys and c not in num]
    agg = {**{c: "median" for c in num}, **{c: "first" for c in other}}
    return tp.groupby(keys, sort=False, as_index=False).agg(agg)[list(tp.columns)]


def is_wide(row: pd.Series | dict) -> bool:
    """A throughput figure not to trust: marked ``wide`` (interval wider than the target), or with
    an interval short of :data:`~sbn_bench.schema.THROUGHPUT_CONFIDENCE` (``ci_level``: runs made
    before such figures were marked, e.g. with ``--rounds 3``)."""
    if str(row.get("wide", False)).lower() in ("true", "1", "1.0"):
        return True
    level = pd.to_numeric(pd.Series([row.get("ci_level", math.nan)]), errors="coerce").iloc[0]
    return bool(math.isfinite(level) and level < schema.THROUGHPUT_CONFIDENCE - 1e-12)


def m_grid_lacking_one(metrics: pd.DataFrame) -> str | None:
    """The M grid of ``metrics``' ``rrmse`` rows (``"2, 3"``) when it has such rows and none at
    M = 1, else None: the headline and the closing summary rank by rrmse at M = 1, and say so
    when a grid such as ``--M 2,3`` does not hold it."""
    rrmse = metrics[metrics["metric"] == "rrmse"]
    if rrmse.empty or (rrmse["M"] == 1.0).any():
        return None
    return ", ".join(f"{m:g}" for m in sorted(float(m) for m in rrmse["M"].dropna().unique()))


def checkpoint_epoch(label: str) -> int | None:
    """The training epoch a checkpoint label carries (``epoch100``, ``epoch_100``, ``e100``,
    ``100``); None for labels such as ``init`` or ``gd30-b``."""
    m = re.fullmatch(r"(?:epoch|ep|e)?[_-]?(\d+)", str(label).strip().lower())
    return int(m.group(1)) if m else None


def is_init(label: str) -> bool:
    """The checkpoint ``init``: the untrained network, epoch 0 on a training axis."""
    return str(label).strip().lower() == "init"


def checkpoint_axis(labels: Sequence[str]) -> tuple[list[float], str]:
    """Positions of checkpoints on a training axis: their epochs when every label carries one
    (:func:`checkpoint_epoch`; ``init``, the untrained network, is epoch 0), else their order
    ``0, 1, 2, …``.

    Returns:
        ``(positions, axis label)``: ``"training epoch"`` or ``"checkpoint (run order)"``.
    """
    epochs = [0 if is_init(c) else checkpoint_epoch(c) for c in labels]
    if labels and all(e is not None for e in epochs) and len(set(epochs)) == len(epochs):
        return [float(e) for e in epochs], "training epoch"  # type: ignore[arg-type]
    return [float(i) for i in range(len(labels))], "checkpoint (run order)"


# --------------------------------------------------------------------------------------------
# manifest facts, read tolerantly


def _get(d: Any, *keys: str) -> Any:
    """``d[k1][k2]…`` or None."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _first(*values: Any) -> Any:
    for v in values:
        if v is not None and v != "":
            return v
    return None


def _unique(frame: pd.DataFrame, column: str) -> str | None:
    if column not in frame.columns or frame.empty:
        return None
    vals = [str(v) for v in pd.unique(frame[column].dropna()) if str(v) != ""]
    if not vals:
        return None
    return ", ".join(vals)


def _device_text(dev: Any, processor: bool = False) -> str | None:
    """The device as text; ``processor``: a CPU device by its processor's model and instruction
    set where the manifest records them (for the header; comparisons use the device's name, so
    that runs on two kinds of processor still compare)."""
    if dev is None:
        return None
    if isinstance(dev, dict):
        name = _first(dev.get("name"), dev.get("model"), dev.get("cpu"))
        kind = _first(dev.get("type"), dev.get("device"), dev.get("kind"))
        if processor and kind == "cpu":
            name = processor_text(dev) or name
        parts = [str(p) for p in (kind, name) if p is not None]
        return " ".join(parts) if parts else json.dumps(dev, sort_keys=True)
    return str(dev)


def run_facts(run: Run) -> list[tuple[str, str]]:
    """Header facts: sbn-bench version, commit, device, dtype, samples, seeds, date, schema version.

    Unknown facts are written ``unknown``. Device, dtype, samples and seed fall back to
    ``metrics.csv`` when the manifest lacks them.
    """
    m, cfg = run.manifest, run.manifest.get("config") or {}
    env = m.get("environment") if isinstance(m.get("environment"), dict) else {}
    pkgs = _first(m.get("packages"), m.get("package_versions"), m.get("versions"),
                  env.get("packages")) or {}
    version = _first(m.get("sbn_bench_version"), m.get("version"), _get(pkgs, "sbn-bench"),
                     _get(pkgs, "sbn_bench"))
    commit = _first(m.get("git_commit"), m.get("commit"), _get(m, "git", "commit"),
                    env.get("git_commit"))
    if isinstance(m.get("git"), str):
        commit = _first(commit, m.get("git"))
    dirty = _first(m.get("git_dirty"), _get(m, "git", "dirty"))
    device = _first(_device_text(m.get("device"), processor=True), _unique(run.metrics, "device"),
                    _unique(run.throughput, "device"))
    sessions = m.get("processors")
    if isinstance(sessions, list) and len(sessions) > 1:  # resumed on another processor
        device = f"{device}; its sessions ran on {'; '.join(map(str, sessions))}"
    dtype = _first(cfg.get("dtype") if isinstance(cfg, dict) else None, m.get("dtype"),
                   _unique(run.metrics, "dtype"))
    per_seed = _unique(run.metrics, "samples")  # summed over the seeds combined into a row
    if per_seed is not None and run.seeds_combined > 1 and "seed" in run.metrics.columns:
        frame = run.metrics.dropna(subset=["samples"])
        counts = frame["seed"].astype(str).str.count(",") + 1  # each row's own seeds ("0,2")
        per_seed = ", ".join(dict.fromkeys(
            str(int(n) // int(c)) for n, c in zip(frame["samples"], counts)))
    samples = _first(cfg.get("samples") if isinstance(cfg, dict) else None, m.get("samples"),
                     per_seed)
    seeds = _first(m.get("seeds"), cfg.get("seeds") if isinstance(cfg, dict) else None,
                   cfg.get("seed") if isinstance(cfg, dict) else None, m.get("seed"),
                   _unique(run.metrics, "seed"))
    if isinstance(seeds, (list, tuple)):
        seeds = ", ".join(str(s) for s in seeds)
    elif isinstance(seeds, dict):
        seeds = ", ".join(f"{k}={v}" for k, v in seeds.items())
    date = _first(m.get("created"), m.get("date"), m.get("timestamp"), m.get("started"),
                  m.get("finished"))
    status = m.get("status")
    torch_v = _first(_get(pkgs, "torch"), m.get("torch_version"))
    commit_text = None
    if commit is not None:
        commit_text = str(commit) + (" (uncommitted changes)" if dirty else "")
    facts = [
        ("sbn-bench version", version), ("git commit", commit_text), ("device", device),
        ("dtype", dtype), ("samples", samples), ("seeds", seeds), ("date", date),
        ("torch", torch_v), ("schema version", m.get("schema_version")),
    ]
    if status is not None:
        facts.append(("status", status))
    if run.seeds_combined > 1:
        fewest = run.seeds_combined
        if "seed" in run.metrics.columns and not run.metrics.empty:  # an interrupted run: some fewer
            fewest = int((run.metrics["seed"].astype(str).str.count(",") + 1).min())
        per_cell = (f"{run.seeds_combined}" if fewest == run.seeds_combined
                    else f"{fewest}–{run.seeds_combined} (not every cell has every seed)")
        facts.append(("seeds combined", f"{per_cell} per cell: values are means over seeds, "
                                        "stderr = √(Σ se²)/n"))
    return [(k, "unknown" if v is None else str(v)) for k, v in facts]


def _fp_text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, dict):
        v = _first(v.get("fingerprint"), v.get("sha256"), v.get("hash"), v.get("digest"))
        return None if v is None else str(v)
    return str(v)


def problem_fingerprints(manifest: dict[str, Any]) -> dict[str, str]:
    """``{"problem" or "problem@checkpoint": fingerprint}`` from the manifest (empty if absent).

    Accepts a ``problems`` list of ``{name, checkpoint?, fingerprint}`` records, a ``problems`` or
    ``fingerprints`` / ``problem_fingerprints`` mapping ``name -> fingerprint`` (or ``-> {fingerprint,
    checkpoints: {name: fingerprint}}``).
    """
    out: dict[str, str] = {}

    def add(name: str, ckpt: Any, value: Any) -> None:
        fp = _fp_text(value)
        if fp is not None:
            out[f"{name}@{ckpt}" if ckpt not in (None, "") else name] = fp

    for key in ("problems", "fingerprints", "problem_fingerprints"):
        block = manifest.get(key)
        if isinstance(block, list):
            for rec in block:
                if isinstance(rec, dict):
                    name = _first(rec.get("name"), rec.get("problem"))
                    if name is None:
                        continue
                    add(str(name), rec.get("checkpoint"), rec)
                    cks = rec.get("checkpoints")
                    if isinstance(cks, list):
                        for ck in cks:
                            if isinstance(ck, dict):
                                add(str(name), _first(ck.get("name"), ck.get("checkpoint")), ck)
                    elif isinstance(cks, dict):
                        for ck, v in cks.items():
                            add(str(name), ck, v)
        elif isinstance(block, dict):
            for name, v in block.items():
                add(str(name), None, v)
                if isinstance(v, dict) and isinstance(v.get("checkpoints"), dict):
                    for ck, cv in v["checkpoints"].items():
                        add(str(name), ck, cv)
    return out


def estimator_versions(manifest: dict[str, Any]) -> dict[str, str]:
    """``{spec: version}`` from the manifest's ``estimators`` (a list of ``{spec|name, version}``
    records or a mapping ``spec -> version | {version}``); also ``estimator_versions``."""
    out: dict[str, str] = {}
    for key in ("estimators", "estimator_versions"):
        block = manifest.get(key)
        if isinstance(block, list):
            for rec in block:
                if isinstance(rec, dict):
                    spec = _first(rec.get("spec"), rec.get("name"))
                    ver = rec.get("version")
                    if spec is not None and ver is not None:
                        out[str(spec)] = str(ver)
        elif isinstance(block, dict):
            for spec, v in block.items():
                ver = v.get("version") if isinstance(v, dict) else v
                if ver is not None and not isinstance(ver, (dict, list)):
                    out[str(spec)] = str(ver)
    return out


def network_of(run: Run, problem: str, checkpoint: str) -> str | None:
    """The network key of a problem checkpoint (architecture, data points, loss, noise: what a
    throughput figure holds for), from the manifest; None when it does not say."""
    for r in run.manifest.get("problems") or []:
        if isinstance(r, dict) and r.get("problem") == problem and r.get("checkpoint") == checkpoint:
            if all(k in r for k in ("arch", "num_data", "loss", "noise")):
                return f"{r['arch']}/D{r['num_data']}/{r['loss']}/{r['noise']}"
    return None


def device_of(run: Run) -> str | None:
    """The run's device as text (manifest first, then the tables)."""
    return _first(_device_text(run.manifest.get("device")), table_device(run))


def table_device(run: Run) -> str | None:
    """The device the run's tables name (``cpu``, ``cuda``): coarser than the manifest's (which
    adds the machine), what two runs compare by when one has no manifest."""
    return _first(_unique(run.metrics, "device"), _unique(run.throughput, "device"))


def target_rrmse(run: Run) -> float | None:
    """The target relative RMSE of ``time_to_accuracy_s``, when the manifest records it."""
    cfg = run.manifest.get("config") or {}
    for d in (cfg, run.manifest):
        if not isinstance(d, dict):
            continue
        for k in ("target_rrmse", "target", "accuracy_target", "time_to_accuracy_target"):
            v = d.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                return float(v)
    return None

"""The tidy result tables a run writes (STYLE 6–7): column names, metric names, schema version, and
the one reader of those tables.

One row per (problem, checkpoint, estimator, layer, metric, M). ``M`` is empty (NaN) for metrics
that do not depend on the number of averaged samples. ``layer`` is ``"1" … "L"``, ``"out"`` or
``"all"``. ``mode`` is ``"exact"`` (mean and variance by enumerating every path: no sampling
error) or ``"mc"`` (Monte Carlo, with ``stderr``). Estimator names are written as on the command
line (``concrete:tau=0.1``).

Files of a run folder: ``metrics.csv`` (:data:`METRICS_COLUMNS`, metrics :data:`METRICS`),
``timed_metrics.csv`` (the same columns, metrics :data:`TIMED_METRICS`), ``throughput.csv``
(:data:`THROUGHPUT_COLUMNS`), ``failures.csv`` (:data:`FAILURES_COLUMNS`) and ``manifest.json``.

The metric names come from :data:`sbn_bench.metrics.METRICS` (one object per metric). NaN values:
``value`` is a number (possibly ``inf``, e.g. a relative error when ``‖g‖ = 0``) except for the
cases listed in :data:`sbn_bench.metrics.NAN_VALUES`; a cell that would produce any other NaN is
recorded in ``failures.csv`` instead. ``stderr`` is NaN where it cannot be estimated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sbn_bench import metrics
from sbn_bench.errors import SbnBenchError

SCHEMA_VERSION = 1

TABLE_FILES = {"metrics": "metrics.csv", "timed": "timed_metrics.csv",
               "throughput": "throughput.csv", "failure": "failures.csv"}
"""The tables of a run folder by kind (see :mod:`sbn_bench.storage`)."""

METRICS_COLUMNS = [
    "problem", "checkpoint", "estimator", "layer", "metric", "M", "value", "stderr", "mode",
    "samples", "seed", "device", "dtype",
]

METRICS = [m.name for m in metrics.METRICS]
"""The metrics of ``metrics.csv`` (:data:`sbn_bench.metrics.METRICS`): each a deterministic function
of the sampled estimates, so the same command, seed and device give a byte-identical file."""

TIMED_METRICS = [m.name for m in metrics.TIMED_METRICS]
"""The metrics of ``timed_metrics.csv`` (same columns as ``metrics.csv``): they multiply a
deterministic figure by a *measured* time, so they change from run to run; derived from
``metrics.csv`` and ``throughput.csv`` when the tables are assembled."""

METRICS_WITH_M = tuple(m.name for m in metrics.METRICS if m.per_m)

THROUGHPUT_COLUMNS = [
    "problem", "checkpoint", "estimator", "device", "dtype", "batch", "rounds",
    "samples_per_s", "samples_per_s_q25", "samples_per_s_q75",
    "seconds_per_sample", "seconds_per_sample_q25", "seconds_per_sample_q75",
    "peak_memory_bytes", "evals_per_sample",
]

FAILURES_COLUMNS = ["problem", "checkpoint", "estimator", "stage", "error", "seed"]
"""``seed`` is empty for failures that do not depend on it (throughput)."""

COLUMNS = {"metrics": METRICS_COLUMNS, "timed": METRICS_COLUMNS,
           "throughput": THROUGHPUT_COLUMNS, "failure": FAILURES_COLUMNS}
"""The columns of each table kind."""

TEXT_COLUMNS = ("problem", "checkpoint", "estimator", "layer", "metric", "mode", "device", "dtype",
                "stage", "error")
"""Columns read as text (never as numbers: a checkpoint named ``1`` stays ``"1"``)."""

INT_COLUMNS = ("M", "seed", "samples")
"""Integer columns that may be empty (pandas ``Int64``)."""


class TableError(SbnBenchError, ValueError):
    """A result table that cannot be read: empty, not CSV, or without the columns it needs
    (``argument`` is the file)."""


def read_table(path: str | os.PathLike[str], columns: Sequence[str], *,
               required: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a result table with exact float round trip.

    Text columns stay text (empty cells are ``""``), :data:`INT_COLUMNS` are nullable integers,
    the rest floats (empty cells NaN). Columns of ``columns`` missing from the file are added empty
    when they are not in ``required`` (default: all of ``columns`` are required).

    Raises:
        TableError: the file is empty, not readable as CSV, or lacks a required column (the message
            names the file and the columns).
    """
    path = Path(path)
    need = list(columns if required is None else required)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise TableError(f"cannot read {str(path)!r}: {e.strerror or e}", argument=str(path)) \
            from None
    if size == 0:
        raise TableError(f"{str(path)!r} is empty: expected a CSV header with columns "
                         f"{', '.join(columns)}", argument=str(path),
                         expected=f"a CSV table with columns {', '.join(columns)}")
    dtypes: dict[str, Any] = {c: str for c in TEXT_COLUMNS if c in columns}
    dtypes.update({c: "Int64" for c in INT_COLUMNS if c in columns})
    extra: dict[str, Any] = {}
    if int(pd.__version__.split(".")[0]) < 3:  # pandas ≥ 3 round-trips floats by default
        extra["float_precision"] = "round_trip"
    try:
        frame = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""], **extra)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        detail = " ".join(str(e).split())
        raise TableError(f"{str(path)!r} is not a readable results table ({type(e).__name__}: "
                         f"{detail})", argument=str(path),
                         expected=f"a CSV table with columns {', '.join(columns)}") from None
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise TableError(f"{str(path)!r} lacks the column(s) {', '.join(missing)}; expected at least "
                         f"{', '.join(need)} (sbn_bench.schema)", argument=str(path),
                         value=missing, expected=", ".join(need))
    for c in columns:
        if c not in frame.columns:
            frame[c] = "" if c in TEXT_COLUMNS else (pd.array([pd.NA] * len(frame), dtype="Int64")
                                                     if c in INT_COLUMNS else float("nan"))
    for c in TEXT_COLUMNS:
        if c in frame.columns:
            frame[c] = frame[c].fillna("").astype(object)
    return frame


def to_csv_text(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """The canonical CSV text of a table (floats as shortest round-trip repr, NaN empty)."""
    return frame.reindex(columns=list(columns)).to_csv(index=False, lineterminator="\n")

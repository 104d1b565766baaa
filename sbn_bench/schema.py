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

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sbn_bench import metrics
from sbn_bench.errors import SbnBenchError

SCHEMA_VERSION = 3
"""Version 3: every metrics row names its reference gradient (``reference``: ``exact`` or a
Monte-Carlo reference ``mc:ESTIMATOR:N``, SPEC §8) and the reference's relative error in the row's
group (``reference_rel_error``, 0 for the exact one); a ``reference_cosine`` metric against a
Monte-Carlo reference. Version 2 runs (no such columns: the exact reference) are still readable.
Version 2: throughput is measured once per network shape (column ``network``), interleaved, with
a confidence interval for its median (``_lo``/``_hi``, ``ci_level``, ``wide``) and the thread count;
version 1 runs (quartiles ``_q25``/``_q75``) are still readable."""

TABLE_FILES = {"metrics": "metrics.csv", "timed": "timed_metrics.csv",
               "throughput": "throughput.csv", "failure": "failures.csv"}
"""The tables of a run folder by kind (see :mod:`sbn_bench.storage`)."""

METRICS_COLUMNS = [
    "problem", "checkpoint", "estimator", "layer", "metric", "M", "value", "stderr", "mode",
    "samples", "seed", "device", "dtype", "reference", "reference_rel_error",
]

METRICS = [m.name for m in metrics.METRICS]
"""The metrics of ``metrics.csv`` (:data:`sbn_bench.metrics.METRICS`): each a deterministic function
of the sampled estimates, so the same command, seed and device give a byte-identical file."""

EXACT_REFERENCE_METRICS = list(metrics.EXACT_REFERENCE_METRICS)
"""The metrics of a cell measured against the exact reference (``reference_cosine`` is written only
against a Monte-Carlo one)."""

TIMED_METRICS = [m.name for m in metrics.TIMED_METRICS]
"""The metrics of ``timed_metrics.csv`` (same columns as ``metrics.csv``): they multiply a
deterministic figure by a *measured* time, so they change from run to run; derived from
``metrics.csv`` and ``throughput.csv`` when the tables are assembled."""

METRICS_WITH_M = tuple(m.name for m in metrics.METRICS if m.per_m)

THROUGHPUT_CONFIDENCE = 0.95
"""The level a throughput figure's interval must reach (``ci_level``); one short of it (too few
rounds) is ``wide``, also when read from a run that did not mark it so."""

THROUGHPUT_COLUMNS = [
    "network", "problem", "checkpoint", "estimator", "device", "dtype", "threads", "batch",
    "rounds", "samples_per_s", "samples_per_s_lo", "samples_per_s_hi",
    "seconds_per_sample", "seconds_per_sample_lo", "seconds_per_sample_hi", "ci_level", "wide",
    "peak_memory_bytes", "evals_per_sample", "adapt_s",
]
"""One row per (network shape, estimator): ``network`` is the shape the figure holds for (its
architecture, data points, loss and noise; the weights do not matter), ``problem``/``checkpoint``
the problem it was measured on; the median samples/s over interleaved rounds with its confidence
interval ``[_lo, _hi]`` at level ``ci_level``; ``wide`` when that interval is wider than the target,
or its level below the target confidence (too few rounds): the figure is not trusted. ``adapt_s``:
for an adaptive estimator (SPEC §3b), the seconds its tuning took before it was timed (the figure
is the tuned estimator's); empty for the others."""

FAILURES_COLUMNS = ["problem", "checkpoint", "estimator", "stage", "error", "seed"]
"""``seed`` is empty for failures that do not depend on it (throughput)."""

COLUMNS = {"metrics": METRICS_COLUMNS, "timed": METRICS_COLUMNS,
           "throughput": THROUGHPUT_COLUMNS, "failure": FAILURES_COLUMNS}
"""The columns of each table kind."""

TEXT_COLUMNS = ("problem", "checkpoint", "estimator", "layer", "metric", "mode", "device", "dtype",
                "stage", "error", "network", "reference")
"""Columns read as text (never as numbers: a checkpoint named ``1`` stays ``"1"``)."""

INT_COLUMNS = ("M", "seed", "samples", "threads")
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
    try:
        size = path.stat().st_size
    except OSError as e:
        raise TableError(f"cannot read {str(path)!r}: {e.strerror or e}", argument=str(path)) \
            from None
    if size == 0:
        raise TableError(f"{str(path)!r} is empty: expected a CSV header with columns "
                         f"{', '.join(columns)}", argument=str(path),
                         expected=f"a CSV table with columns {', '.join(columns)}")
    return parse_table(path, columns, required=required, name=str(path))


def parse_table(source: str | os.PathLike[str] | io.StringIO, columns: Sequence[str], *,
                required: Sequence[str] | None = None, name: str = "table") -> pd.DataFrame:
    """:func:`read_table` of a file or a text buffer (``name`` in the messages)."""
    path = name
    need = list(columns if required is None else required)
    dtypes: dict[str, Any] = {c: str for c in TEXT_COLUMNS if c in columns}
    dtypes.update({c: "Int64" for c in INT_COLUMNS if c in columns})
    extra: dict[str, Any] = {}
    if int(pd.__version__.split(".")[0]) < 3:  # pandas ≥ 3 round-trips floats by default
        extra["float_precision"] = "round_trip"
    try:
        frame = pd.read_csv(source, dtype=dtypes, keep_default_na=False, na_values=[""], **extra)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        detail = " ".join(str(e).split())
        raise TableError(f"{path!r} is not a readable results table ({type(e).__name__}: "
                         f"{detail})", argument=path,
                         expected=f"a CSV table with columns {', '.join(columns)}") from None
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise TableError(f"{path!r} lacks the column(s) {', '.join(missing)}; expected at least "
                         f"{', '.join(need)} (sbn_bench.schema)", argument=path,
                         value=missing, expected=", ".join(need))
    for c in columns:
        if c not in frame.columns:
            frame[c] = "" if c in TEXT_COLUMNS else (pd.array([pd.NA] * len(frame), dtype="Int64")
                                                     if c in INT_COLUMNS else float("nan"))
    for c in TEXT_COLUMNS:
        if c in frame.columns:
            frame[c] = frame[c].fillna("").astype(object)
    return frame


MODES = ("exact", "mc")
"""The ``mode`` of a metric row."""


def check_table(frame: pd.DataFrame, kind: str, path: str | os.PathLike[str]) -> None:
    """Refuse a results table whose values cannot be what sbn-bench writes: a ``mode`` other than
    :data:`MODES`, ``M`` or ``samples`` below 1, a negative ``seed``, non-numeric values, a truncated
    last row (a missing value where the row has none). The message names the file, the line and
    the column.

    Raises:
        TableError: the first bad value.
    """
    def bad(i: int, col: str, value: object, expected: str) -> TableError:
        value = value.item() if hasattr(value, "item") else value  # numpy scalars as plain values
        return TableError(f"{str(path)!r}, line {i + 2}: {col}={value!r} is not a valid value "
                          f"(expected {expected}); the file is corrupt or was not written by "
                          "sbn-bench", argument=str(path), value=value, expected=expected)

    if kind in ("metrics", "timed"):
        for i, m in enumerate(frame["mode"]):
            if m not in MODES:
                raise bad(i, "mode", m, f"one of {', '.join(MODES)}")
        for i, metric in enumerate(frame["metric"]):
            if not metric:
                raise bad(i, "metric", metric, "a metric name")
    for col, lo in (("M", 1), ("samples", 1), ("seed", 0)):
        if col in frame.columns:
            values = frame[col]
            low = values.notna() & (values < lo)
            if low.any():
                i = int(low.to_numpy().nonzero()[0][0])
                raise bad(i, col, values.iloc[i], f"an integer ≥ {lo}")
    numeric = [c for c in frame.columns if c not in TEXT_COLUMNS and c not in INT_COLUMNS]
    for col in numeric:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            values = pd.to_numeric(frame[col], errors="coerce")
            wrong = values.isna() & frame[col].notna() & (frame[col].astype(str) != "")
            if wrong.any():
                i = int(wrong.to_numpy().nonzero()[0][0])
                raise bad(i, col, frame[col].iloc[i], "a number")


def ends_with_newline(path: str | os.PathLike[str]) -> bool:
    """Whether a non-empty file ends with a newline (a table cut off mid-row does not)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def to_csv_text(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """The canonical CSV text of a table (floats as shortest round-trip repr, NaN empty)."""
    return frame.reindex(columns=list(columns)).to_csv(index=False, lineterminator="\n")

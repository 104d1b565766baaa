"""Summary tables of a run, as format-neutral :class:`Table` objects (rendered by
:mod:`~sbn_bench.reports.markdown` and :mod:`~sbn_bench.reports.html`).

Per (problem, checkpoint): one table with a row per (layer, estimator) giving rrmse at M=1 and
M=100, relative bias, cosine mean at M=1 and M=100, samples/s and time-to-accuracy (SPEC §5), the
best value of each column within each layer marked; a throughput table; the failed cells with their
messages. A metric asked for at an M the run did not measure uses the nearest smaller M in the grid,
and the table says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from sbn_bench import metrics
from sbn_bench.metrics import layer_key
from sbn_bench.reports.load import Run, network_of, target_rrmse

Better = Literal["low", "high"]

M_TARGETS = (1, 100)
"""The sample counts of the summary columns: a single sample and the average of 100."""

TIE_REL = 1e-9
"""Values within ``TIE_REL`` (relative) or :data:`TIE_ABS` of the best are marked best too."""
TIE_ABS = 1e-12


@dataclass(frozen=True)
class TableCell:
    """One table cell: its text and whether it is emphasised (rendered bold): the best value of its
    column in a summary table, a flagged difference in a comparison table."""

    text: str
    strong: bool = False


@dataclass
class Table:
    """A rendered-format-neutral table: title, header, rows of cells and notes printed below it."""

    title: str
    header: list[str]
    rows: list[list[TableCell]]
    notes: list[str] = field(default_factory=list)
    anchor: str = ""


# --------------------------------------------------------------------------------------------
# number formatting


def fmt_num(v: float | None, sig: int = 3) -> str:
    """A number for a table: ``—`` for missing, ``∞``, ``1,234`` from 1000 up, ``sig`` significant
    digits in fixed notation down to 1e-3, scientific below."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    v = float(v)
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 1e-3:
        decimals = max(sig - 1 - math.floor(math.log10(a)), 0)
        return f"{v:.{decimals}f}"
    return f"{v:.{max(sig - 1, 0)}e}"


def fmt_m(m: float) -> str:
    """A sample count ``M`` (integral in practice)."""
    return str(int(m)) if float(m).is_integer() else fmt_num(m)


def fmt_int(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return fmt_num(v)
    return f"{int(round(v)):,}" if float(v).is_integer() else fmt_num(v)


def fmt_pm(v: float | None, se: float | None, sig: int = 3) -> str:
    """``value ± stderr`` when the standard error is positive, else the value alone."""
    s = fmt_num(v, sig)
    if se is not None and math.isfinite(se) and se > 0 and v is not None and math.isfinite(v):
        return f"{s} ± {fmt_num(se, 2)}"
    return s


def slug(*parts: str) -> str:
    """A file- and anchor-safe name: ``slug("paper-seed0", "epoch 1") == "paper-seed0_epoch-1"``."""
    out = []
    for p in parts:
        s = re.sub(r"[^A-Za-z0-9.=-]+", "-", str(p)).strip("-")
        out.append(s.replace("=", "") or "x")
    return "_".join(out)


def cell_label(problem: str, checkpoint: str) -> str:
    return f"{problem} · checkpoint {checkpoint}" if checkpoint else problem


# --------------------------------------------------------------------------------------------
# lookups


def nearest_m(available: Iterable[float], target: float) -> float | None:
    """The largest available ``M ≤ target`` (None when every M is larger)."""
    below = [m for m in available if math.isfinite(m) and m <= target]
    return max(below) if below else None


@dataclass(frozen=True)
class Value:
    value: float
    stderr: float
    mode: str


def metric_index(rows: pd.DataFrame) -> dict[tuple[str, str, str, float | None], Value]:
    """``{(estimator, layer, metric, M or None): Value}`` for the rows of one (problem, checkpoint)."""
    out: dict[tuple[str, str, str, float | None], Value] = {}
    for e, lay, met, m, v, se, mode in zip(rows["estimator"], rows["layer"], rows["metric"], rows["M"],
                                           rows["value"], rows["stderr"], rows["mode"]):
        key = (e, lay, met, None if (m is None or math.isnan(m)) else float(m))
        out[key] = Value(float(v), float(se), str(mode))
    return out


def throughput_row(run: Run, problem: str, checkpoint: str, estimator: str) -> pd.Series | None:
    """The throughput row of an estimator on a problem checkpoint: the figure of its network shape
    (measured once per shape), or, for runs that measured per checkpoint, at that checkpoint."""
    tp = run.throughput
    if tp.empty:
        return None
    network = network_of(run, problem, checkpoint)
    if network is not None and "network" in tp.columns:
        on = tp[(tp["network"] == network) & (tp["estimator"] == estimator)]
        if not on.empty:
            return on.iloc[0]
    same = tp[(tp["problem"] == problem) & (tp["estimator"] == estimator)]
    exact = same[same["checkpoint"] == checkpoint]
    pick = exact if not exact.empty else same
    return None if pick.empty else pick.iloc[0]


def _is_wide(row: pd.Series) -> bool:
    """A throughput figure whose confidence interval is wider than the target (not trusted)."""
    w = row.get("wide", False)
    return str(w).lower() in ("true", "1", "1.0")


def cell_rows(run: Run, problem: str, checkpoint: str) -> pd.DataFrame:
    mt = run.metrics
    return mt[(mt["problem"] == problem) & (mt["checkpoint"] == checkpoint)]


def cell_failures(run: Run, problem: str, checkpoint: str) -> pd.DataFrame:
    """Failures of a (problem, checkpoint), including those recorded for the problem as a whole."""
    f = run.failures
    return f[(f["problem"] == problem) & ((f["checkpoint"] == checkpoint) | (f["checkpoint"] == ""))]


def _mark_best(values: Sequence[float | None], better: Better) -> list[bool]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return [False] * len(values)
    best = min(finite) if better == "low" else max(finite)
    tol = TIE_ABS + TIE_REL * abs(best)
    return [v is not None and math.isfinite(v) and abs(v - best) <= tol for v in values]


# --------------------------------------------------------------------------------------------
# tables


def _better(metric: str) -> Better:
    """Which direction is better for a metric, from the metric registry."""
    b = metrics.better(metric)
    assert b is not None, metric
    return b


@dataclass(frozen=True)
class _Col:
    header: str
    better: Better


def summary_table(run: Run, problem: str, checkpoint: str,
                  m_targets: Sequence[int] = M_TARGETS) -> Table:
    """The per-layer summary of one (problem, checkpoint).

    Rows: each layer (``1 … L``, ``out``, ``all``) × each estimator with results. Columns: mode,
    rrmse(M) for each target M, relative bias, cosine mean at each target M, samples/s (median) and
    time to reach the target rrmse. MC values carry ``± stderr``; exact-mode values have none.
    """
    rows_df = cell_rows(run, problem, checkpoint)
    idx = metric_index(rows_df)
    notes: list[str] = []
    used_m: dict[tuple[str, int], float | None] = {}
    for metric in ("rrmse", "cosine_mean"):
        avail = sorted({m for (_, _, met, m) in idx if met == metric and m is not None})
        for t in m_targets:
            m = nearest_m(avail, t)
            used_m[(metric, t)] = m
            if not avail:
                continue
            if m is None:
                notes.append(f"{metric}: M={t} is below every M in this run's grid "
                             f"(smallest {fmt_m(min(avail))}); the column is empty.")
            elif m != t:
                notes.append(f"{metric}: M={t} is not in this run's M grid; the nearest M ≤ {t} is "
                             f"used (M={fmt_m(m)}).")

    def m_label(metric: str, t: int) -> str:
        m = used_m[(metric, t)]
        return f"M={fmt_m(m if m is not None else t)}"

    target = target_rrmse(run)
    cols: list[tuple[str, _Col, int | None]] = []
    for t in m_targets:
        cols.append(("rrmse", _Col(f"rrmse {m_label('rrmse', t)}", _better("rrmse")), t))
    cols.append(("rel_bias", _Col("rel. bias", _better("rel_bias")), None))
    for t in m_targets:
        cols.append(("cosine_mean", _Col(f"cosine {m_label('cosine_mean', t)}",
                                         _better("cosine_mean")), t))
    cols.append(("samples_per_s", _Col("samples/s", "high"), None))
    tta = f"time to rrmse ≤ {fmt_num(target)} (s)" if target is not None else "time to accuracy (s)"
    cols.append(("time_to_accuracy_s", _Col(tta, _better("time_to_accuracy_s")), None))

    estimators = [e for e in run.estimators() if e in set(rows_df["estimator"])]
    layers = sorted(set(rows_df["layer"]), key=layer_key)
    out_rows: list[list[TableCell]] = []
    for layer in layers:
        group: list[tuple[str, str, list[tuple[float | None, str]]]] = []
        for est in estimators:
            if not any(k[0] == est and k[1] == layer for k in idx):
                continue
            modes = sorted({v.mode for k, v in idx.items() if k[0] == est and k[1] == layer
                            and k[2] not in ("cosine_mean", "cosine_p15", "cosine_p85")} or
                           {v.mode for k, v in idx.items() if k[0] == est and k[1] == layer})
            vals: list[tuple[float | None, str]] = []
            for metric, _col, t in cols:
                if metric == "samples_per_s":
                    tr = throughput_row(run, problem, checkpoint, est)
                    v = None if tr is None else float(tr["samples_per_s"])
                    if tr is not None and _is_wide(tr):  # shown, never called the fastest
                        vals.append((None, f"{fmt_num(v)} (wide)"))
                    else:
                        vals.append((v, fmt_num(v)))
                    continue
                m = used_m.get((metric, t)) if t is not None else None
                if t is not None and m is None:
                    vals.append((None, "—"))
                    continue
                val = idx.get((est, layer, metric, m))
                if val is None:
                    vals.append((None, "—"))
                else:
                    vals.append((val.value, fmt_pm(val.value, val.stderr)))
            group.append((est, "/".join(modes), vals))
        best = [_mark_best([g[2][j][0] for g in group], cols[j][1].better) for j in range(len(cols))]
        for i, (est, mode, vals) in enumerate(group):
            out_rows.append([TableCell(layer), TableCell(est), TableCell(mode)]
                            + [TableCell(txt, best[j][i]) for j, (_, txt) in enumerate(vals)])
    notes += [f"failed: {line}" for line in failure_lines(cell_failures(run, problem, checkpoint))]
    return Table(title=cell_label(problem, checkpoint),
                 header=["layer", "estimator", "mode"] + [c[1].header for c in cols],
                 rows=out_rows, notes=notes, anchor=slug("summary", problem, checkpoint))


def throughput_table(run: Run, problem: str, checkpoint: str) -> Table | None:
    """Throughput of each estimator on a (problem, checkpoint): median samples/s with the
    confidence interval of the median over the interleaved rounds, seconds per sample, peak memory,
    loss evaluations per sample. None when the run measured none there."""
    tp = run.throughput
    if tp.empty:
        return None
    sub = tp[(tp["problem"] == problem) & (tp["checkpoint"] == checkpoint)]
    if sub.empty:
        sub = tp[(tp["problem"] == problem) & (tp["checkpoint"] == "")]
    if sub.empty:
        return None
    order = {e: i for i, e in enumerate(run.estimators())}
    sub = sub.sort_values("estimator", key=lambda s: s.map(order), kind="stable")
    best = _mark_best(list(sub["samples_per_s"]), "high")
    rows = []
    for b, (_, r) in zip(best, sub.iterrows()):
        mem = r["peak_memory_bytes"]
        mem_txt = "—" if not math.isfinite(mem) else fmt_num(mem / 2**20) + " MiB"
        rows.append([
            TableCell(r["estimator"]), TableCell(f"{r['device']} {r['dtype']}".strip()),
            TableCell(fmt_num(r["samples_per_s"]), b),
            TableCell(f"{fmt_num(r['samples_per_s_lo'])} – {fmt_num(r['samples_per_s_hi'])}"),
            TableCell(fmt_num(r["seconds_per_sample"])),
            TableCell(fmt_int(r["evals_per_sample"])),
            TableCell(fmt_int(r["batch"])), TableCell(fmt_int(r["rounds"])), TableCell(mem_txt),
        ])
    return Table(title=f"Throughput · {cell_label(problem, checkpoint)}",
                 header=["estimator", "device", "samples/s", "interval samples/s", "s/sample",
                         "evals/sample", "batch", "rounds", "peak memory"],
                 rows=rows, anchor=slug("throughput", problem, checkpoint))


def failure_lines(failures: pd.DataFrame, with_checkpoint: bool = False) -> list[str]:
    """``estimator (stage): message`` lines, one per distinct failure (the seeds it happened with
    are listed when there are several), messages on one line."""
    out: dict[tuple[str, ...], list[str]] = {}
    for _, r in failures.iterrows():
        msg = " ".join(str(r["error"]).split()) or "no message recorded"
        stage = f" ({r['stage']})" if r["stage"] else ""
        ck = f", {r['problem']} checkpoint {r['checkpoint']}" if with_checkpoint else ""
        seed = r.get("seed", "")
        seed = "" if seed is None or (isinstance(seed, float) and math.isnan(seed)) else str(seed)
        seeds = out.setdefault((r["estimator"] or "(all estimators)", stage, ck, msg), [])
        if seed and seed not in seeds:
            seeds.append(seed)
    lines = []
    for (est, stage, ck, msg), seeds in out.items():
        which = f" [seeds {', '.join(seeds)}]" if len(seeds) > 1 else ""
        lines.append(f"{est}{stage}{ck}{which}: {msg}")
    return lines


def orphan_failures(run: Run) -> pd.DataFrame:
    """Failures that no (problem, checkpoint) section lists (see :func:`cell_failures`)."""
    f = run.failures
    shown = pd.Series(False, index=f.index)
    for p, c in run.cells():
        shown |= (f["problem"] == p) & ((f["checkpoint"] == c) | (f["checkpoint"] == ""))
    return f[~shown]



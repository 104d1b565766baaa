"""Summary tables of a run, as format-neutral :class:`Table` objects (rendered by
:mod:`~sbn_bench.reports.markdown` and :mod:`~sbn_bench.reports.html`), and the formatting of
every number and cell of a report.

Per (problem, checkpoint): one table with a row per (layer, estimator) giving its family, rrmse at
M=1 and M=100, relative bias, cosine mean at M=1 and M=100, samples/s and time-to-accuracy
(SPEC §5); within each layer the best value of each column is marked, and the values that cannot be
told from it (within 2 standard errors) are marked as ties, by the rules of
:mod:`~sbn_bench.reports.ranking` (a clipped or noisy value is never best). A bias that is not
significantly above zero is shown as an upper bound ``≤ x``. Rows measured against a Monte-Carlo
reference (SPEC §8) get a ``reference`` column. Also: a throughput table; the failed cells with
their messages. A metric asked for at an M the run did not measure uses the nearest smaller M in
the grid, and the table says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import pandas as pd

from sbn_bench import metrics
from sbn_bench.fileio import slug
from sbn_bench.metrics import SQUARED_METRICS, layer_key, squared_scale
from sbn_bench.reports.families import ranked
from sbn_bench.reports.load import Run, is_mc_reference, is_wide, network_of, target_rrmse
from sbn_bench.reports.ranking import (
    ROUND_ABS,
    ROUND_REL,
    Better,
    Estimate,
    bias_roundoff,
    rank,
    upper_bound,
)

M_TARGETS = (1, 100)
"""The sample counts of the summary columns: a single sample and the average of 100."""

TIE_REL = 1e-9
"""Values within ``TIE_REL`` (relative) or :data:`TIE_ABS` of the best are marked best too."""
TIE_ABS = 1e-12


@dataclass(frozen=True)
class TableCell:
    """One table cell.

    Attributes:
        text: what is shown.
        strong: emphasised (bold): the best value of its column in a summary table, a flagged
            difference in a comparison table, a verdict that needs attention.
        tie: within the uncertainty of the best (rendered in italics).
        sort: the number a sortable table orders this cell by (None: its text).
        tone: ``"good"``, ``"bad"`` or ``"unsure"`` for cells that state a judgement (a verdict):
            coloured accordingly in HTML; ``""`` for none.
    """

    text: str
    strong: bool = False
    tie: bool = False
    sort: float | None = None
    tone: str = ""


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
    """``value ± stderr`` when the standard error is above round-off (e.g. not the ``1e-17`` of a
    deterministic estimator in Monte-Carlo mode), else the value alone."""
    s = fmt_num(v, sig)
    if (se is not None and math.isfinite(se) and v is not None and math.isfinite(v)
            and se > ROUND_REL * abs(v) + ROUND_ABS * 1e-3):
        return f"{s} ± {fmt_num(se, 2)}"
    if se is not None and math.isinf(se) and v is not None and math.isfinite(v):
        return f"{s} ± ∞"  # e.g. a group that a Monte-Carlo reference does not resolve
    return s


def fmt_estimate(est: Estimate, *, bound: bool = False) -> str:
    """An estimate as ``value ± stderr``; with ``bound`` (a non-negative quantity such as a bias),
    ``≤ x`` when the value is not significantly above zero
    (:func:`~sbn_bench.reports.ranking.upper_bound`) and ``≈0`` for an exact value at float64
    round-off (at most its ``roundoff``: :func:`~sbn_bench.reports.ranking.bias_roundoff`)."""
    if bound:
        if est.uncertainty == 0 and est.finite and abs(est.value) <= est.roundoff:
            return "≈0"
        ub = upper_bound(est)
        if ub is not None:
            return f"≤ {fmt_num(ub, 2)}"
    return fmt_pm(est.value, est.stderr)


def fmt_z(z: float | None) -> str:
    """A z-score for a table: ``∞`` between exact values, one decimal otherwise."""
    if z is None or math.isnan(z):
        return "—"
    return "∞" if math.isinf(z) else f"{z:.1f}"


def fmt_names(names: Sequence[str], limit: int = 4) -> str:
    """``a, b, c and 3 more``: a list of estimator names cut at ``limit``."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"


def fmt_reference(reference: str, rel_error: float) -> str:
    """The reference a row was measured against: ``exact`` or ``mc:reinforce:20000 (ε 0.020)``."""
    if not is_mc_reference(reference):
        return "exact"
    if rel_error is not None and math.isfinite(rel_error):
        return f"{reference} (ε {fmt_num(rel_error, 2)})"
    return str(reference)


def cell_label(problem: str, checkpoint: str) -> str:
    return f"{problem} · checkpoint {checkpoint}" if checkpoint else problem


# --------------------------------------------------------------------------------------------
# lookups


def nearest_m(available: Iterable[float], target: float) -> float | None:
    """The largest available ``M ≤ target`` (None when every M is larger)."""
    below = [m for m in available if math.isfinite(m) and m <= target]
    return max(below) if below else None


@dataclass(frozen=True)
class Value(Estimate):
    """A stored value (:class:`~sbn_bench.reports.ranking.Estimate`) with the reference it was
    measured against."""

    reference: str = "exact"
    reference_rel_error: float = 0.0


BOUNDED_METRICS = SQUARED_METRICS
"""Non-negative metrics shown as an upper bound ``≤ x`` when not significantly above zero (judged on
the squared scale: :attr:`~sbn_bench.reports.ranking.Estimate.squared`)."""


def metric_index(rows: pd.DataFrame) -> dict[tuple[str, str, str, float | None], Value]:
    """``{(estimator, layer, metric, M or None): Value}`` for the rows of one (problem, checkpoint)."""
    out: dict[tuple[str, str, str, float | None], Value] = {}
    refs = rows["reference"] if "reference" in rows.columns else ["exact"] * len(rows)
    errs = rows["reference_rel_error"] if "reference_rel_error" in rows.columns else [0.0] * len(rows)
    for e, lay, met, m, v, se, mode, ref, err in zip(
            rows["estimator"], rows["layer"], rows["metric"], rows["M"], rows["value"], rows["stderr"],
            rows["mode"], refs, errs):
        key = (e, lay, met, None if (m is None or math.isnan(m)) else float(m))
        out[key] = Value(float(v), float(se), str(mode), squared=met in SQUARED_METRICS,
                         reference=str(ref), reference_rel_error=float(err))
    for key, val in out.items():  # a relative bias is judged against zero by its bias_norm row's
        bn = out.get((key[0], key[1], "bias_norm", key[3])) if key[2] == "rel_bias" else None
        if bn is not None and bn.finite and 0 < bn.uncertainty < math.inf:
            out[key] = replace(val, test=squared_scale(bn.value, bn.uncertainty))
    for key, val in out.items():  # an exact bias: its round-off floor grows with the samples' size
        e, lay, met, _m = key
        if met not in BOUNDED_METRICS or val.uncertainty != 0:
            continue
        rr = out.get((e, lay, "rrmse", 1.0))
        rel = out.get((e, lay, "rel_bias", None))
        g = 1.0
        if met == "bias_norm":  # ‖g‖ = ‖β‖ / rel_bias where both are known
            if rel is None or not (rel.finite and rel.value > 0 and val.finite):
                continue
            g = val.value / rel.value
        out[key] = replace(val, roundoff=bias_roundoff(rr.value if rr is not None else None, g))
    return out


def _throughput_rows(run: Run) -> dict[tuple[str, str, str], pd.Series]:
    """``{(problem, checkpoint, estimator): row}``; checkpoint ``""`` holds the first row of the
    problem and estimator (for runs that measured throughput once per problem)."""
    out: dict[tuple[str, str, str], pd.Series] = {}
    for _, r in run.throughput.iterrows():
        out.setdefault((r["problem"], r["checkpoint"], r["estimator"]), r)
        out.setdefault((r["problem"], "", r["estimator"]), r)
    return out


def _throughput_by_network(run: Run) -> dict[tuple[str, str], pd.Series]:
    """``{(network, estimator): row}`` (schema 2: throughput is measured once per network shape)."""
    out: dict[tuple[str, str], pd.Series] = {}
    if "network" not in run.throughput.columns:
        return out
    for _, r in run.throughput.iterrows():
        if r["network"]:
            out.setdefault((r["network"], r["estimator"]), r)
    return out


def throughput_rows_of(run: Run, problem: str, checkpoint: str | None = None) -> pd.DataFrame:
    """The throughput rows that hold for a problem (at a checkpoint): those of its network shapes
    (schema 2: measured once per shape, perhaps on another problem of the same shape), else those
    measured on it (at the checkpoint, else the problem's rows without a checkpoint)."""
    tp = run.throughput
    if tp.empty:
        return tp
    cks = [checkpoint] if checkpoint is not None else run.checkpoints(problem)
    networks = {n for n in (run.memo("network_of", problem, c, make=lambda c=c: network_of(run, problem, c))
                            for c in cks) if n is not None}
    if networks and "network" in tp.columns:
        on = tp[tp["network"].isin(networks)]
        if not on.empty:
            return on
    mine = tp[tp["problem"] == problem]
    if checkpoint is None:
        return mine
    sub = mine[mine["checkpoint"] == checkpoint]
    return sub if not sub.empty else mine[mine["checkpoint"] == ""]


def throughput_row(run: Run, problem: str, checkpoint: str, estimator: str) -> pd.Series | None:
    """The throughput row of an estimator on a problem checkpoint: the figure of its network shape
    (measured once per shape), or, for runs that measured per problem or checkpoint (schema 1), at
    that checkpoint, else the problem's first."""
    if run.throughput.empty:
        return None
    network = run.memo("network_of", problem, checkpoint,
                       make=lambda: network_of(run, problem, checkpoint))
    if network is not None:
        by_network = run.memo("throughput_by_network", make=lambda: _throughput_by_network(run))
        row = by_network.get((network, estimator))
        if row is not None:
            return row
    rows = run.memo("throughput_rows", make=lambda: _throughput_rows(run))
    return rows.get((problem, checkpoint, estimator), rows.get((problem, "", estimator)))


def cell_rows(run: Run, problem: str, checkpoint: str) -> pd.DataFrame:
    """The metric rows of one (problem, checkpoint)."""
    def make() -> dict[tuple[str, str], pd.DataFrame]:
        mt = run.metrics
        return {k: g for k, g in mt.groupby(["problem", "checkpoint"], sort=False)}
    parts = run.memo("cell_rows", make=make)
    got = parts.get((problem, checkpoint))
    return got if got is not None else run.metrics.iloc[0:0]


def cell_index(run: Run, problem: str, checkpoint: str) -> dict[tuple[str, str, str, float | None], Value]:
    """:func:`metric_index` of one (problem, checkpoint), computed once per run."""
    return run.memo("cell_index", problem, checkpoint,
                    make=lambda: metric_index(cell_rows(run, problem, checkpoint)))


def cell_failures(run: Run, problem: str, checkpoint: str) -> pd.DataFrame:
    """Failures of a (problem, checkpoint), including those recorded for the problem as a whole."""
    f = run.failures
    return f[(f["problem"] == problem) & ((f["checkpoint"] == checkpoint) | (f["checkpoint"] == ""))]


def _mark_best(values: Sequence[float | None], better: Better) -> list[bool]:
    """The best of values without uncertainty (throughput medians), ties to round-off."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return [False] * len(values)
    best = min(finite) if better == "low" else max(finite)
    tol = TIE_ABS + TIE_REL * abs(best)
    return [v is not None and math.isfinite(v) and abs(v - best) <= tol for v in values]


def ranked_cells(estimates: Sequence[Estimate | None], better: Better, *,
                 bound: bool = False, rankable: Sequence[bool] | None = None) -> list[TableCell]:
    """One cell per estimate, the best bold and the ties italic (:func:`~sbn_bench.reports.ranking.rank`);
    estimates whose ``rankable`` is False are shown but take no part."""
    ok = rankable if rankable is not None else [True] * len(estimates)
    ranking = rank([e if r else None for e, r in zip(estimates, ok)], better)
    out = []
    for est, r in zip(estimates, ranking.ranks):
        if est is None:
            out.append(TableCell("—"))
            continue
        out.append(TableCell(fmt_estimate(est, bound=bound), r == "best", r == "tie",
                             est.value if math.isfinite(est.value) else None))
    return out


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
    idx = cell_index(run, problem, checkpoint)
    by_group: dict[tuple[str, str], dict[tuple[str, str, str, float | None], Value]] = {}
    for k, v in idx.items():
        by_group.setdefault((k[0], k[1]), {})[k] = v
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
    families = run.families()
    mc_ref = bool(rows_df["reference"].map(is_mc_reference).any()) if "reference" in rows_df else False
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
    wide: set[str] = set()  # estimators whose throughput interval is wider than the target
    for layer in layers:
        group: list[tuple[str, str, str, list[Estimate | None]]] = []
        for est in estimators:
            mine = by_group.get((est, layer), {})
            if not mine:
                continue
            modes = sorted({v.mode for k, v in mine.items()
                            if k[2] not in ("cosine_mean", "cosine_p15", "cosine_p85")}
                           or {v.mode for v in mine.values()})
            refs = sorted({fmt_reference(v.reference, v.reference_rel_error) for v in mine.values()})
            vals: list[Estimate | None] = []
            for metric, _col, t in cols:
                if metric == "samples_per_s":
                    tr = throughput_row(run, problem, checkpoint, est)
                    if tr is not None and is_wide(tr):  # shown, never called the fastest
                        wide.add(est)
                    vals.append(None if tr is None else Estimate(float(tr["samples_per_s"]), 0.0, "exact"))
                    continue
                m = used_m.get((metric, t)) if t is not None else None
                vals.append(None if t is not None and m is None else idx.get((est, layer, metric, m)))
            group.append((est, "/".join(modes), "; ".join(refs), vals))
        columns = []
        rankable = [ranked(g[0], families) for g in group]
        for j, (metric, col, _t) in enumerate(cols):
            estimates = [g[3][j] for g in group]
            if metric == "samples_per_s":  # medians over timed rounds: ranked as they are
                # a wide interval is marked and never called the fastest
                best = _mark_best([None if e is None or not r or g[0] in wide else e.value
                                   for e, r, g in zip(estimates, rankable, group)], "high")
                columns.append([TableCell("—") if e is None else
                                TableCell(fmt_num(e.value) + (" (wide)" if g[0] in wide else ""), b,
                                          sort=e.value)
                                for e, b, g in zip(estimates, best, group)])
            else:
                columns.append(ranked_cells(estimates, col.better, bound=metric in BOUNDED_METRICS,
                                            rankable=rankable))
        for i, (est, mode, ref, _vals) in enumerate(group):
            lead = [TableCell(layer, sort=float(layer_key(layer)[0] * 1000 + layer_key(layer)[1])),
                    TableCell(est), TableCell(families.get(est, "")), TableCell(mode)]
            if mc_ref:
                lead.append(TableCell(ref))
            out_rows.append(lead + [columns[j][i] for j in range(len(cols))])
    if mc_ref:
        notes.append("reference: the gradient each row is measured against; a Monte-Carlo reference "
                     "(SPEC §8) adds its own error ε to every standard error shown.")
    notes += [f"failed: {line}" for line in failure_lines(cell_failures(run, problem, checkpoint))]
    return Table(title=cell_label(problem, checkpoint),
                 header=["layer", "estimator", "family", "mode"] + (["reference"] if mc_ref else [])
                 + [c[1].header for c in cols],
                 rows=out_rows, notes=notes, anchor=slug("summary", problem, checkpoint))


def _rounds(n: float) -> str:
    """`` (7 rounds)``; empty when the count is not recorded."""
    return "" if not math.isfinite(n) else f" ({n:.0f} round{'' if n == 1 else 's'})"


def throughput_table(run: Run, problem: str, checkpoint: str) -> Table | None:
    """Throughput of each estimator on a (problem, checkpoint): median samples/s with the
    confidence interval of the median over the interleaved rounds, seconds per sample, peak memory,
    loss evaluations per sample. None when the run measured none there."""
    sub = throughput_rows_of(run, problem, checkpoint)
    if sub.empty:
        return None
    order = {e: i for i, e in enumerate(run.estimators())}
    sub = sub.sort_values("estimator", key=lambda s: s.map(order), kind="stable")
    wide = [is_wide(r) for _, r in sub.iterrows()]  # marked, never called the fastest
    best = _mark_best([None if w else v for v, w in zip(sub["samples_per_s"], wide)], "high")
    rows = []
    for b, w, (_, r) in zip(best, wide, sub.iterrows()):
        mem = r["peak_memory_bytes"]
        mem_txt = "—" if not math.isfinite(mem) else fmt_num(mem / 2**20) + " MiB"
        rows.append([
            TableCell(r["estimator"]), TableCell(f"{r['device']} {r['dtype']}".strip()),
            TableCell(fmt_num(r["samples_per_s"]) + (" (wide)" if w else ""), b),
            TableCell(f"{fmt_num(r['samples_per_s_lo'])} – {fmt_num(r['samples_per_s_hi'])}"),
            TableCell(fmt_num(r["seconds_per_sample"])),
            TableCell(fmt_int(r["evals_per_sample"])),
            TableCell(fmt_int(r["batch"])), TableCell(fmt_int(r["rounds"])), TableCell(mem_txt),
        ])
    notes = []
    where = {(n, p, c) for n, p, c in zip(sub.get("network", [""] * len(sub)), sub["problem"],
                                           sub["checkpoint"]) if n}
    for n, p, c in sorted(where - {(n, problem, checkpoint) for n, _, _ in where}):
        notes.append(f"measured once for the network shape {n} (on {cell_label(p, c)}): the figures "
                     "hold for every checkpoint of that shape.")
    levels = sorted({(float(c), _rounds(n)) for n, c in zip(
        pd.to_numeric(sub["rounds"], errors="coerce"), pd.to_numeric(
            sub.get("ci_level", pd.Series(math.nan, index=sub.index)), errors="coerce"))
        if math.isfinite(c)}, reverse=True)
    if levels:
        notes.append("interval: a distribution-free confidence interval of the median over the "
                     "interleaved rounds, at level " + ", ".join(
                         f"{100 * c:.3g}%{r}" for c, r in levels) + ".")
    if any(wide):
        notes.append("(wide): the confidence interval of the median is wider than the target, or "
                     "its level below the target (too few rounds); the figure is shown but never called "
                     "the fastest.")
    if not any(math.isfinite(float(m)) for m in sub["peak_memory_bytes"]):
        notes.append("peak memory: measured on CUDA devices only (torch's allocator statistics); "
                     "— on the CPU.")
    if "adapt_s" in sub.columns:  # adaptive estimators (SPEC §3b): tuned first, timed after
        tuned = [(r["estimator"], float(r["adapt_s"])) for _, r in sub.iterrows()
                 if pd.notna(r["adapt_s"])]
        if tuned:
            notes.append("adaptive: timed after their tuning (the default budget), which took "
                         + ", ".join(f"{e} {fmt_num(t)} s" for e, t in tuned)
                         + "; time to accuracy leaves it out.")
    return Table(title=f"Throughput · {cell_label(problem, checkpoint)}",
                 header=["estimator", "device", "samples/s", "interval samples/s", "s/sample",
                         "evals/sample", "batch", "rounds", "peak memory"],
                 rows=rows, notes=notes, anchor=slug("throughput", problem, checkpoint))


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



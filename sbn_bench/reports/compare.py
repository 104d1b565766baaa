"""Compare a run with a baseline run: ratios, and flags only where a difference exceeds its noise.

Compared per (problem, checkpoint, estimator, layer): rrmse at M=1 and the relative bias; per
(problem, checkpoint, estimator): samples/s. Ratios are run / baseline.

A difference ``a − b`` is flagged when

* Monte-Carlo values (standard errors ``s_a``, ``s_b``): ``|a − b| > z · √(s_a² + s_b²)`` with
  ``z =`` :data:`DEFAULT_SIGMA` (3: a two-sided false-flag rate of 0.27 % per comparison for
  Gaussian errors; with 2 about 5 % of equal cells would be flagged in a large table); a relative
  bias, the square root of an unbiased estimate, is compared by its square (its standard error
  taken back to that scale, :func:`~sbn_bench.metrics.scalars.squared_scale`), which is about
  Gaussian even where the bias is near zero;
* exact-mode values on both sides (no sampling error): ``|a − b| > 1e-12 · max(|a|, |b|) + 1e-12``,
  i.e. beyond float64 round-off of these quantities, which are relative to ``‖g‖`` and hence of
  order one;
* throughput (the median over interleaved rounds with a confidence interval): when the two
  intervals do not overlap once the run's is divided by the ratio common to the network's
  estimators (the median ratio, :func:`common_factor`: the machine's speed between two runs moves
  every estimator alike, which one run's intervals cannot cover); that common ratio is itself one
  difference when the raw intervals of more than half of the estimators are apart in its
  direction. With fewer than three estimators timed on both sides the raw intervals are compared.
  Schema-1 runs, which kept quartiles over rounds: ``|a − b| > √(IQR_a² + IQR_b²)``.

Runs with no (problem, checkpoint) or no estimator in common are refused (there is nothing to
compare); cells found in only one of the runs are listed in the report's notes as not compared.
Runs are only compared when they measured the same thing: the same problems (fingerprints), the same
estimator versions, the same device and result schema. Otherwise :class:`IncomparableRuns` says what
differs, unless ``force=True``; then the differences become warnings printed in the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sbn_bench.errors import SbnBenchError
from sbn_bench.metrics.scalars import SQUARED_METRICS, squared_scale
from sbn_bench.reports.load import (
    Run,
    device_of,
    estimator_versions,
    problem_fingerprints,
    table_device,
)
from sbn_bench.reports.tables import (
    Table,
    TableCell,
    Value,
    cell_label,
    cell_rows,
    fmt_names,
    fmt_num,
    fmt_pm,
    layer_key,
    metric_index,
    slug,
    throughput_row,
)

DEFAULT_SIGMA = 3.0
MIN_COMMON = 3
"""Estimators timed on both sides that a common throughput factor needs (:func:`common_factor`)."""
EXACT_REL = 1e-12
EXACT_ABS = 1e-12


class IncomparableRuns(SbnBenchError, ValueError):
    """Two runs that did not measure the same thing (problems, estimator versions, device)."""


@dataclass(frozen=True)
class Difference:
    """Whether ``a`` (run) and ``b`` (baseline) differ beyond their uncertainty.

    Attributes:
        flagged: ``|a − b|`` exceeds the threshold (see the module docstring).
        z: ``|a − b| / √(u_a² + u_b²)``; ``inf`` for a difference between exact values, 0 for none.
        exact: both values had no uncertainty.
    """

    flagged: bool
    z: float
    exact: bool


def _u(x: float | None) -> float:
    return float(x) if x is not None and math.isfinite(x) and x > 0 else 0.0


def significant(a: float, b: float, ua: float | None, ub: float | None,
                sigma: float = DEFAULT_SIGMA) -> Difference:
    """Test ``a`` against ``b`` with uncertainties ``ua``, ``ub`` (NaN/0/None: none, i.e. exact)."""
    u = math.hypot(_u(ua), _u(ub))
    d = abs(a - b)
    if not (math.isfinite(a) and math.isfinite(b)):
        same = a == b or (math.isnan(a) and math.isnan(b))
        return Difference(not same, 0.0 if same else math.inf, u == 0)
    if u > 0:
        return Difference(d > sigma * u, d / u, False)
    tol = EXACT_REL * max(abs(a), abs(b)) + EXACT_ABS
    return Difference(d > tol, math.inf if d > tol else 0.0, True)


def _significant(metric: str, a: Value, b: Value, sigma: float) -> Difference:
    """:func:`significant` for two stored values of ``metric``; a bias with a standard error on
    either side is compared on the squared scale (:func:`~sbn_bench.metrics.scalars.squared_scale`:
    near zero the standard error of a square root understates its spread, and an unbiased
    estimator's two biases, both noise, were flagged as different)."""
    if metric in SQUARED_METRICS and (a.uncertainty > 0 or b.uncertainty > 0):
        xa, sa = squared_scale(a.value, a.uncertainty) if a.uncertainty > 0 else (a.value**2, 0.0)
        xb, sb = squared_scale(b.value, b.uncertainty) if b.uncertainty > 0 else (b.value**2, 0.0)
        if math.isfinite(sa) and math.isfinite(sb):
            return significant(xa, xb, sa, sb, sigma)
    return significant(a.value, b.value, a.stderr, b.stderr, sigma)


def intervals_differ(a: tuple[float, float], b: tuple[float, float]) -> Difference:
    """Two measured figures differ when their confidence intervals ``(lo, hi)`` do not overlap
    (throughput: the interval of the median over interleaved rounds); unknown intervals (NaN) are
    never flagged."""
    if not all(math.isfinite(v) for v in (*a, *b)):
        return Difference(False, 0.0, False)
    apart = a[0] > b[1] or b[0] > a[1]
    return Difference(apart, math.nan if apart else 0.0, False)


def _cell_key(problem: str, checkpoint: str) -> list[str]:
    return [f"{problem}@{checkpoint}", problem] if checkpoint else [problem]


def check_comparable(run: Run, base: Run) -> tuple[list[str], list[str]]:
    """What makes two runs incomparable, and what could not be checked.

    Returns:
        ``(differences, unchecked)``: lines such as ``"problem 'p' at checkpoint 'c' differs:
        fingerprint … (run) vs … (baseline)"``; and lines naming facts missing from a manifest.
    """
    diffs: list[str] = []
    unchecked: list[str] = []
    fa, fb = problem_fingerprints(run.manifest), problem_fingerprints(base.manifest)
    shared_cells = [c for c in run.cells() if c in set(base.cells())]
    for p, c in shared_cells:
        ka = next((k for k in _cell_key(p, c) if k in fa), None)
        kb = next((k for k in _cell_key(p, c) if k in fb), None)
        where = f"problem {p!r}" + (f" at checkpoint {c!r}" if c else "")
        if ka is None or kb is None:
            unchecked.append(f"{where}: no fingerprint in the "
                             f"{'run' if ka is None else 'baseline'} manifest")
        elif fa[ka] != fb[kb]:
            diffs.append(f"{where} differs: fingerprint {fa[ka]} (run) vs {fb[kb]} (baseline)")
    va, vb = estimator_versions(run.manifest), estimator_versions(base.manifest)
    shared_est = [e for e in run.estimators() if e in set(base.estimators())]
    for e in shared_est:
        if e in va and e in vb:
            if va[e] != vb[e]:
                diffs.append(f"estimator {e!r} version {va[e]} (run) vs {vb[e]} (baseline)")
        else:
            unchecked.append(f"estimator {e!r}: no version in the "
                             f"{'run' if e not in va else 'baseline'} manifest")
    da, db = device_of(run), device_of(base)
    if (run.manifest.get("device") is None) != (base.manifest.get("device") is None):
        # one run's device is known only from its tables: compare at their level ('cpu' against
        # the other's 'cpu x86_64' is no difference)
        da, db = table_device(run), table_device(base)
    if da is not None and db is not None and da != db:
        diffs.append(f"device {da} (run) vs {db} (baseline)")
    elif da is None or db is None:
        unchecked.append("device unknown in " + ("the run" if da is None else "the baseline"))
    sa, sb = run.manifest.get("schema_version"), base.manifest.get("schema_version")
    if sa is not None and sb is not None and sa != sb:
        diffs.append(f"result schema version {sa} (run) vs {sb} (baseline)")
    return diffs, unchecked


@dataclass(frozen=True)
class Flagged:
    """One difference beyond its uncertainty: where, what, both values and the ratio."""

    problem: str
    checkpoint: str
    estimator: str
    layer: str
    quantity: str
    run: str
    base: str
    ratio: str
    z: float
    exact: bool


@dataclass
class Comparison:
    """The comparison of a run with a baseline.

    Attributes:
        tables: every compared value, as ratio tables (for Python use; the report shows only the
            flagged differences).
        flagged: one line per difference beyond its uncertainty.
        differences: the same, as :class:`Flagged` records.
        compared: how many values were compared.
    """

    run: Run
    base: Run
    sigma: float
    tables: list[Table] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    differences: list[Flagged] = field(default_factory=list)
    compared: int = 0

    def rule(self) -> str:
        """The flagging rule, in words."""
        return (f"Ratios are run / baseline. A difference is shown only beyond its uncertainty: "
                f"|a − b| > {self.sigma:g}·√(se_a² + se_b²) for Monte-Carlo values, beyond float64 "
                f"round-off (1e-12) for exact values, when the confidence intervals do not overlap "
                f"for samples/s once the run's is divided by the median ratio of all estimators "
                f"(the common factor: the machine's speed moves them alike; it is one difference "
                f"itself when most raw intervals are apart in its direction; beyond "
                f"√(IQR_a² + IQR_b²) for runs of schema 1, which kept quartiles); "
                f"z = |a − b|/√(se_a² + se_b²) (∞ between exact values, `apart` for "
                f"intervals that do not overlap). {len(self.differences)} of {self.compared} "
                f"compared values differ.")


def _z_cell(d: Flagged) -> TableCell:
    """The z of a flagged difference: ``exact`` (∞) between exact values, ``apart`` (sorted above
    every finite z) for throughput intervals that do not overlap."""
    if d.exact:
        return TableCell("exact", sort=math.inf)
    if math.isnan(d.z):
        return TableCell("apart", sort=math.inf)
    return TableCell(f"{d.z:.1f}", sort=d.z)


def differences_table(cmp: Comparison) -> Table:
    """The flagged differences only, one row each (sortable by z)."""
    rows = [[TableCell(cell_label(d.problem, d.checkpoint)), TableCell(d.estimator), TableCell(d.layer),
             TableCell(d.quantity), TableCell(d.run), TableCell(d.base), TableCell(d.ratio),
             _z_cell(d)]
            for d in cmp.differences]
    return Table(title="", header=["where", "estimator", "layer", "quantity", "run", "baseline",
                                   "ratio", "z"], rows=rows, anchor="compare-differences")


def _ratio(a: float, b: float, diff: Difference) -> str:
    if not diff.flagged and diff.exact:
        return "≈1" if math.isfinite(a) else "="
    if b == 0:  # undefined unless the difference is real
        return "∞" if diff.flagged else "—"
    return fmt_num(a / b, 4)


def _ratio_cell(a: float, b: float, diff: Difference) -> TableCell:
    text = _ratio(a, b, diff)
    if diff.flagged:
        text += (" (exact)" if diff.exact else " (intervals apart)" if math.isnan(diff.z)
                 else f" (z={diff.z:.1f})")
    return TableCell(text, diff.flagged)


def compare_runs(run: Run, base: Run, *, force: bool = False, sigma: float = DEFAULT_SIGMA) -> Comparison:
    """Compare ``run`` with ``base`` (the baseline).

    Raises:
        IncomparableRuns: the runs have no (problem, checkpoint), or no estimator, in common (even
            with ``force``: there is nothing to compare); or they differ in problems, estimator
            versions, device or schema, and ``force`` is false. The message lists every difference.
    """
    where = f"cannot compare {str(run.path)!r} with baseline {str(base.path)!r}"
    run_cells, base_cells_list = run.cells(), base.cells()
    shared = [c for c in run_cells if c in set(base_cells_list)]

    def listing(cells: list[tuple[str, str]]) -> str:
        return ", ".join(cell_label(p, c) for p, c in cells) or "none"

    if not shared:
        raise IncomparableRuns(f"{where}: the runs have no problem/checkpoint in common (the run has "
                               f"{listing(run_cells)}; the baseline has {listing(base_cells_list)}): "
                               "there is nothing to compare, even with --force")
    shared_est = [e for e in run.estimators() if e in set(base.estimators())]
    if not shared_est:
        raise IncomparableRuns(f"{where}: the runs have no estimator in common (the run has "
                               f"{', '.join(run.estimators()) or 'none'}; the baseline has "
                               f"{', '.join(base.estimators()) or 'none'}): there is nothing to "
                               "compare, even with --force")
    diffs, unchecked = check_comparable(run, base)
    if diffs and not force:
        raise IncomparableRuns(f"{where}: " + "; ".join(diffs) + " (pass --force to compare anyway)")
    cmp = Comparison(run, base, sigma)
    cmp.warnings += [f"compared despite: {d} (--force)" for d in diffs]
    if base.incomplete:  # the run's own state heads its report; the baseline's is said here
        cmp.warnings.append(f"the baseline: {base.incomplete}")
    dtypes = [", ".join(sorted({str(x) for x in r.metrics["dtype"] if str(x)})) or "unknown"
              for r in (run, base)]
    if dtypes[0] != dtypes[1]:
        cmp.warnings.append(f"the estimators ran in {dtypes[0]} (run) and {dtypes[1]} (baseline): "
                            "differences may be rounding as much as method")
    cmp.notes += [f"not checked: {u}" for u in unchecked]
    failed: dict[str, list[str]] = {}  # estimators of both lists with no results on one side
    for who, mine, other in (("run", run, base), ("baseline", base, run)):
        only = [e for e in mine.estimators() if e not in set(other.estimators())]
        if only:
            cmp.notes.append(f"estimators only in the {who}, not compared: {', '.join(only)}")
        failed[who] = [e for e in shared_est if e in set(mine.failures["estimator"])
                       and e not in set(mine.metrics["estimator"])]
    for who, names in (("either run", [e for e in failed["run"] if e in failed["baseline"]]),
                       ("the run", [e for e in failed["run"] if e not in failed["baseline"]]),
                       ("the baseline", [e for e in failed["baseline"] if e not in failed["run"]])):
        if names:
            cmp.notes.append(f"estimators with no results in {who} (their cells failed), not "
                             f"compared: {', '.join(names)}")
    no_timing: dict[str, list[str]] = {"run": [], "baseline": []}  # samples/s on one side only
    base_cells = set(base.cells())
    for p, c in run.cells():
        if (p, c) not in base_cells:
            cmp.notes.append(f"{cell_label(p, c)}: not in the baseline, not compared")
            continue
        ia, ib = metric_index(cell_rows(run, p, c)), metric_index(cell_rows(base, p, c))
        rows: list[list[TableCell]] = []
        keys = sorted({(e, lay) for (e, lay, _, _) in ia} & {(e, lay) for (e, lay, _, _) in ib},
                      key=lambda k: (layer_key(k[1]), run.estimators().index(k[0])))
        for est, layer in keys:
            row = [TableCell(layer), TableCell(est)]
            for metric, m, label in (("rrmse", 1.0, "rrmse M=1"), ("rel_bias", None, "rel. bias")):
                va, vb = ia.get((est, layer, metric, m)), ib.get((est, layer, metric, m))
                if va is None or vb is None:
                    row += [TableCell("—"), TableCell("—"), TableCell("—")]
                    continue
                cmp.compared += 1
                diff = _significant(metric, va, vb, sigma)
                row += [TableCell(fmt_pm(va.value, va.stderr)), TableCell(fmt_pm(vb.value, vb.stderr)),
                        _ratio_cell(va.value, vb.value, diff)]
                if diff.flagged:
                    how = "exact values" if diff.exact else f"z = {diff.z:.1f}"
                    cmp.differences.append(Flagged(
                        p, c, est, layer, label, fmt_pm(va.value, va.stderr),
                        fmt_pm(vb.value, vb.stderr), _ratio(va.value, vb.value, diff), diff.z, diff.exact))
                    cmp.flagged.append(
                        f"{cell_label(p, c)} · {est} · layer {layer} · {label}: "
                        f"{fmt_pm(va.value, va.stderr)} vs {fmt_pm(vb.value, vb.stderr)} "
                        f"(ratio {_ratio(va.value, vb.value, diff)}, {how})")
            rows.append(row)
        if rows:
            cmp.tables.append(Table(
                title=f"Accuracy: run / baseline · {cell_label(p, c)}",
                header=["layer", "estimator", "rrmse M=1 run", "baseline", "ratio",
                        "rel. bias run", "baseline", "ratio"],
                rows=rows, anchor=slug("compare", p, c)))
        _compare_throughput(cmp, p, c, shared_est, failed, no_timing)
    for who, missing in no_timing.items():
        if missing:
            cmp.notes.append(f"samples/s not compared: the {who} has no throughput figure for "
                             f"{fmt_names(missing)} (e.g. --no-throughput)")
    for p, c in base.cells():
        if (p, c) not in set(run.cells()):
            cmp.notes.append(f"{cell_label(p, c)}: only in the baseline, not compared")
    return cmp


def common_factor(ratios: Sequence[float]) -> float:
    """The throughput ratio (run / baseline) common to the estimators of one network: the median
    of their ratios (on a log scale: the geometric middle), or 1 for fewer than
    :data:`MIN_COMMON` estimators (too few to tell a common factor from one estimator's change)."""
    logs = sorted(math.log(r) for r in ratios if math.isfinite(r) and r > 0)
    if len(logs) < MIN_COMMON:
        return 1.0
    n = len(logs)
    return math.exp(logs[n // 2] if n % 2 else (logs[n // 2 - 1] + logs[n // 2]) / 2)


def _compare_throughput(cmp: Comparison, p: str, c: str, shared_est: list[str],
                        failed: dict[str, list[str]], no_timing: dict[str, list[str]]) -> None:
    """The samples/s of one (problem, checkpoint): each estimator relative to the ratio common to
    all (:func:`common_factor`), and that common ratio once when most intervals are apart with it.

    Rounds interleaved across estimators make drift within a run hit every estimator alike; between
    two runs the machine's speed (load, clock, memory) moves every estimator alike too, which the
    intervals of one run cannot cover. So the run's interval is divided by the common factor before
    it is compared with the baseline's: an estimator is flagged when its own speed changed beyond
    both intervals, and a change shared by all (the machine, or code they all run) is one
    difference, flagged when the raw intervals of more than half of the estimators are apart in
    its direction."""
    run, base = cmp.run, cmp.base
    pairs = []
    for est in run.estimators():
        ta, tb = throughput_row(run, p, c, est), throughput_row(base, p, c, est)
        if ta is None or tb is None:
            side = "run" if ta is None else "baseline"
            if (ta is None) != (tb is None) and est in shared_est and est not in failed[side]:
                no_timing[side].append(f"{est} ({cell_label(p, c)})")
            continue
        pairs.append((est, ta, tb))
    if not pairs:
        return

    def interval(t: Any) -> tuple[float, float]:
        return float(t["samples_per_s_lo"]), float(t["samples_per_s_hi"])

    def with_ci(t: Any) -> bool:
        return math.isfinite(float(t.get("ci_level", math.nan)))

    measured = [(float(ta["samples_per_s"]), float(tb["samples_per_s"])) for _, ta, tb in pairs
                if with_ci(ta) and with_ci(tb)]
    factor = common_factor([a / b for a, b in measured if b > 0])
    trows: list[list[TableCell]] = []
    apart = {1: 0, -1: 0}  # raw intervals apart, the run above (1) or below (-1) the baseline
    for est, ta, tb in pairs:
        a, b = float(ta["samples_per_s"]), float(tb["samples_per_s"])
        ia, ib = interval(ta), interval(tb)
        if with_ci(ta) and with_ci(tb):
            raw = intervals_differ(ia, ib)
            if raw.flagged:
                apart[1 if ia[0] > ib[1] else -1] += 1
            diff = intervals_differ((ia[0] / factor, ia[1] / factor), ib)
        else:  # schema-1 runs: quartiles over rounds, compared by √(IQR_a² + IQR_b²)
            diff = significant(a, b, ia[1] - ia[0], ib[1] - ib[0], sigma=1.0)
        cmp.compared += 1
        relative = (f", {fmt_num(a / b / factor, 4)} relative to the common {fmt_num(factor, 4)}"
                    if factor != 1.0 and b > 0 else "")
        if diff.flagged:
            cmp.differences.append(Flagged(p, c, est, "", "samples/s", fmt_num(a), fmt_num(b),
                                           _ratio(a, b, diff) + relative, diff.z, diff.exact))
            why = ("beyond their interquartile ranges" if not math.isnan(diff.z) else
                   "their confidence intervals do not overlap" + (
                       " once the run's is divided by the common factor" if relative else ""))
            cmp.flagged.append(f"{cell_label(p, c)} · {est} · samples/s: {fmt_num(a)} vs "
                               f"{fmt_num(b)} (ratio {_ratio(a, b, diff)}{relative}, {why})")
        row = [TableCell(est), TableCell(f"{fmt_num(a)} [{fmt_num(ia[0])}, {fmt_num(ia[1])}]"),
               TableCell(f"{fmt_num(b)} [{fmt_num(ib[0])}, {fmt_num(ib[1])}]"),
               _ratio_cell(a, b, diff)]
        if factor != 1.0:
            row.append(TableCell(fmt_num(a / b / factor, 4) if b > 0 else "—", diff.flagged))
        trows.append(row)
    header = ["estimator", "samples/s run", "baseline", "ratio"]
    title = f"Throughput: run / baseline · {cell_label(p, c)}"
    if factor != 1.0:
        header.append("ratio / common")
        title += f" (common factor {fmt_num(factor, 4)}, the median ratio of {len(measured)} estimators)"
        cmp.compared += 1
        direction = 1 if factor > 1 else -1
        if apart[direction] > len(measured) / 2:
            ratio = fmt_num(factor, 4)
            cmp.differences.append(Flagged(p, c, "all estimators", "", "samples/s (median ratio)",
                                           "", "", ratio, math.nan, False))
            cmp.flagged.append(
                f"{cell_label(p, c)} · all estimators · samples/s: median ratio {ratio}; the "
                f"intervals of {apart[direction]} of {len(measured)} estimators do not overlap, "
                f"all in that direction (the machine's speed, or code they all run)")
    cmp.tables.append(Table(title=title, header=header, rows=trows,
                            anchor=slug("compare-throughput", p, c)))

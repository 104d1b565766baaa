"""One object per metric (STYLE 14): its name, whether it depends on ``M``, which direction is
better, when a NaN value is allowed and how it is computed from a group's statistics.

The result schema (:data:`sbn_bench.schema.METRICS`), the NaN policy (:data:`NAN_VALUES`,
:func:`undocumented_nans`), the rows of a cell (:func:`metric_rows`) and the report's columns all
derive from :data:`METRICS`. A new metric is one :class:`Metric` added to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sbn_bench.metrics.scalars import (
    COSINE_QUANTILES,
    GroupStats,
    mean_stderr,
    mse,
    norm_stderr,
    quantile_stderr,
    rrmse,
    safe_ratio,
    samples_to_accuracy,
    time_to_accuracy,
)

Better = Literal["low", "high"]
Value = tuple[float, float]
"""``(value, stderr)`` in the group's own units (see :class:`GroupContext`)."""


@dataclass(frozen=True)
class GroupContext:
    """What the metrics of one parameter group are computed from.

    Attributes:
        stats: the group's figures (in units of ``stats.scale``, see
            :class:`~sbn_bench.metrics.scalars.GroupStats`).
        exact: exact mode (no sampling error: every stderr is 0).
        cosines: ``{M: [R]}`` cosines of ``R`` M-means of this group (None: no cosine rows).
        cosine_exact: the cosines are exact (a deterministic estimator: stderr 0).
        target_rrmse: the target ``t`` of ``samples_to_accuracy``.
    """

    stats: GroupStats
    exact: bool
    cosines: Mapping[int, np.ndarray] | None
    cosine_exact: bool
    target_rrmse: float

    @property
    def bias_sq(self) -> float:
        """``‖β‖²``, clipped at 0 (the corrected Monte-Carlo estimate can be negative)."""
        return max(self.stats.bias_sq, 0.0)

    @property
    def bias_norm_se(self) -> float:
        return 0.0 if self.exact else norm_stderr(self.bias_sq, self.stats.bias_sq_se)


@dataclass(frozen=True)
class Metric:
    """A metric of ``metrics.csv``.

    Attributes:
        name: the ``metric`` column's value.
        description: one line (units, definition).
        per_m: depends on the number ``M`` of averaged samples (one row per M).
        better: ``"low"`` or ``"high"`` (reports mark the best estimator), or None.
        units: ``"norm"`` (multiplied back by the group's scale), ``"square"`` (by its square) or
            ``"relative"`` (dimensionless, as computed).
        compute: ``(context, M or None) -> (value, stderr)``, or None for no row (e.g. a cosine at
            an M with no M-means).
        nan_when: when a NaN value is legitimate, in words (None: never).
        nan_allowed: ``GroupStats -> bool``, whether a NaN value is legitimate for that group.
        cosine: its mode is that of the cosines (sampled M-means) rather than the cell's.
        mc_reference_only: written only against a Monte-Carlo reference (``reference_cosine``).
        inf_allowed: an infinite value has a meaning (a relative error when ``‖g‖ = 0``, samples
            that no number of samples reaches); for the others (norms, variances) infinity only
            means float64 overflowed, and the cell is recorded as failed instead.
    """

    name: str
    description: str
    per_m: bool
    better: Better | None
    units: Literal["norm", "square", "relative"]
    compute: Callable[[GroupContext, int | None], Value | None]
    nan_when: str | None = None
    nan_allowed: Callable[[GroupStats], bool] | None = None
    cosine: bool = False
    inf_allowed: bool = False
    mc_reference_only: bool = False
    """Rows only against a Monte-Carlo reference (SPEC §8), none against the exact one."""


# --------------------------------------------------------------------------------------------
# the metrics


def _bias_norm(c: GroupContext, m: int | None) -> Value:
    return math.sqrt(c.bias_sq), c.bias_norm_se


def _relative_se(value: float, num_se: float, c: GroupContext) -> float:
    """Standard error of ``x / ‖g‖`` from that of ``x`` (``num_se``) and, against a Monte-Carlo
    reference, that of ``‖g‖`` (delta method, the two treated as uncorrelated)."""
    g, g_se = c.stats.g_norm, c.stats.g_norm_se
    if math.isinf(g_se):  # a group the Monte-Carlo reference does not resolve
        return math.inf
    se = safe_ratio(num_se, g)
    if g_se > 0 and math.isfinite(value):
        se = math.hypot(se, value * safe_ratio(g_se, g))
    return se


def _rel_bias(c: GroupContext, m: int | None) -> Value:
    g = c.stats.g_norm
    value = safe_ratio(math.sqrt(c.bias_sq), g)
    return value, 0.0 if c.exact else _relative_se(value, c.bias_norm_se, c)


def _variance(c: GroupContext, m: int | None) -> Value:
    return c.stats.variance, c.stats.variance_se


def _mse_se(c: GroupContext, m: int) -> float:
    return 0.0 if c.exact else math.hypot(c.stats.bias_sq_se, c.stats.variance_se / m)


def _mse(c: GroupContext, m: int | None) -> Value:
    assert m is not None
    return mse(c.bias_sq, c.stats.variance, m), _mse_se(c, m)


def _rrmse(c: GroupContext, m: int | None) -> Value:
    assert m is not None
    v, v_se, g = mse(c.bias_sq, c.stats.variance, m), _mse_se(c, m), c.stats.g_norm
    value = rrmse(v, g)
    if c.exact:
        se = 0.0
    elif v > 0:
        se = safe_ratio(v_se, 2 * math.sqrt(v) * g)
    else:  # √ is not differentiable at 0: its standard error is at most √se (norm_stderr)
        se = safe_ratio(norm_stderr(v, v_se), g)
    if c.stats.g_norm_se > 0:  # a Monte-Carlo reference's ‖g‖
        se = _relative_se(value, se * g, c)
    return value, se


def reference_resolution(rel_error: float) -> float:
    """The cosine a Monte-Carlo reference ``ĝ`` of relative error ``ε`` has with the exact gradient,
    ``E cos(ĝ, g) ≈ 1/√(1 + ε²)`` (``‖ĝ‖² ≈ ‖g‖²(1 + ε²)``, its noise orthogonal to ``g`` on
    average): the best cosine any estimate can show against it (SPEC §8)."""
    return 1.0 / math.sqrt(1.0 + rel_error * rel_error) if math.isfinite(rel_error) else 0.0


def _cosine_se(value: float, se: float, c: GroupContext) -> float:
    """A cosine's standard error; against a Monte-Carlo reference ``ĝ = g + n`` its effect is added
    in quadrature: to first order ``cos(v, ĝ) − cos(v, g) ≈ w·n/‖g‖`` with ``‖w‖ = sin θ``, whose
    standard deviation is at most ``sin θ · ε`` (``E‖n‖² = ε²‖g‖²``), and to second order the pull
    ``|cos| (1 − resolution)`` (a cosine to ``ĝ`` is about ``resolution`` times the cosine to ``g``).
    Unresolved groups (``ε = ∞``) get a standard error of at least 1."""
    if not c.stats.mc_reference or not math.isfinite(value):
        return se
    eps = c.stats.reference_rel_error
    if not math.isfinite(eps):
        return max(se, 1.0)
    sin = math.sqrt(max(1.0 - value * value, 0.0))
    return math.hypot(se, sin * eps, abs(value) * (1.0 - reference_resolution(eps)))


def _cosine_mean(c: GroupContext, m: int | None) -> Value | None:
    if c.cosines is None or m not in c.cosines:
        return None
    value, se = mean_stderr(c.cosines[m])
    return value, _cosine_se(value, 0.0 if c.cosine_exact else se, c)


def _cosine_quantile(q: float) -> Callable[[GroupContext, int | None], Value | None]:
    def compute(c: GroupContext, m: int | None) -> Value | None:
        if c.cosines is None or m not in c.cosines:
            return None
        x = c.cosines[m]
        finite = x[~np.isnan(x)]
        value = float(np.quantile(finite, q)) if finite.size else math.nan
        return value, _cosine_se(value, 0.0 if c.cosine_exact else quantile_stderr(x, q), c)
    return compute


def _reference_cosine(c: GroupContext, m: int | None) -> Value | None:
    if not c.stats.mc_reference:
        return None
    eps = c.stats.reference_rel_error
    value = reference_resolution(eps)
    # (1 + ε²)^(−1/2) has derivative −r³/2 in ε² (delta method; ε²'s error from both V̂_R/N and ‖ĝ‖²)
    se = value**3 * c.stats.reference_rel_error_sq_se / 2 if math.isfinite(eps) else math.nan
    return value, se


def _snr(c: GroupContext, m: int | None) -> Value:
    return c.stats.snr, c.stats.snr_se


RESOLVE_Z = 2.0
"""``samples_to_accuracy`` is unresolved (standard error ``∞``) when the relative bias plus this
many of its standard errors (the ``rel_bias`` row's) reaches the target ``t``: ``M*`` may then be
infinite."""


def _samples_to_accuracy(c: GroupContext, m: int | None) -> Value:
    st, t = c.stats, c.target_rrmse
    m_star = samples_to_accuracy(c.bias_sq, st.variance, st.g_norm, t)
    if c.exact:
        return m_star, 0.0
    if not math.isfinite(m_star):
        return m_star, math.nan
    se = 0.0  # M* = 0: no variance (a deterministic estimator)
    if m_star > 0:
        den = t**2 * st.g_norm**2 - c.bias_sq
        se = math.hypot(st.variance_se / den, st.variance * st.bias_sq_se / den**2)
        if math.isinf(st.g_norm_se):  # a group the Monte-Carlo reference does not resolve
            se = math.inf
        elif st.g_norm_se > 0:  # a Monte-Carlo reference: ∂M*/∂‖g‖ = −2 t² ‖g‖ V / den²
            se = math.hypot(se, 2 * t**2 * st.g_norm * st.variance * st.g_norm_se / den**2)
    rel_bias, rel_bias_se = _rel_bias(c, None)
    if not rel_bias + RESOLVE_Z * rel_bias_se < t:
        se = math.inf  # the bias may reach the target within its errors, and M* = V/den with it
        # (also M* = 0 of a deterministic estimator): no local (delta-method) error holds there
    return m_star, se


def _zero_gradient(st: GroupStats) -> bool:
    return st.g_norm == 0


_COSINE_NAN = "the group's exact gradient is zero (‖g‖ = 0): its direction is undefined"

METRICS: tuple[Metric, ...] = (
    Metric("bias_norm", "‖E ĝ − g‖ (bias-corrected in mc mode)", False, "low", "norm", _bias_norm),
    Metric("rel_bias", "‖E ĝ − g‖ / ‖g‖", False, "low", "relative", _rel_bias, inf_allowed=True),
    Metric("variance", "E‖ĝ − E ĝ‖² (trace of the covariance) of one single-sample estimate",
           False, "low", "square", _variance),
    Metric("mse", "‖β‖² + V/M", True, "low", "square", _mse),
    Metric("rrmse", "√mse / ‖g‖ (the paper's y-axis)", True, "low", "relative", _rrmse,
           inf_allowed=True),
    Metric("cosine_mean", "mean of cos(ḡ_M, g) over independent M-sample means", True, "high",
           "relative", _cosine_mean, nan_when=_COSINE_NAN, nan_allowed=_zero_gradient,
           cosine=True),
    Metric("cosine_p15", "15th percentile of cos(ḡ_M, g)", True, "high", "relative",
           _cosine_quantile(COSINE_QUANTILES[0]), nan_when="as cosine_mean",
           nan_allowed=_zero_gradient, cosine=True),
    Metric("cosine_p85", "85th percentile of cos(ḡ_M, g)", True, "high", "relative",
           _cosine_quantile(COSINE_QUANTILES[1]), nan_when="as cosine_mean",
           nan_allowed=_zero_gradient, cosine=True),
    Metric("snr_median", "median over coordinates of |E ĝ_i| / sd(ĝ_i)", False, "high",
           "relative", _snr,
           nan_when="every coordinate of the group has E ĝ_i = sd(ĝ_i) = 0 (the estimate is exactly "
                    "zero there): no coordinate has a defined ratio",
           nan_allowed=lambda st: True, inf_allowed=True),
    Metric("samples_to_accuracy", "M* = V / (t²‖g‖² − ‖β‖²): samples to reach the target rrmse t",
           False, "low", "relative", _samples_to_accuracy, inf_allowed=True),
    Metric("reference_cosine", "the Monte-Carlo reference's own resolution 1/√(1 + ε²), the "
           "expected cos(ĝ, g) of the reference ĝ with the exact g: the ceiling of cosine_* "
           "(rows only against a Monte-Carlo reference, SPEC §8)", False, None, "relative",
           _reference_cosine, mc_reference_only=True),
)
"""The metrics of ``metrics.csv``, in the order of its rows: each a deterministic function of the
sampled estimates, so the same command, seed and device give a byte-identical file."""

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}

EXACT_REFERENCE_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if not m.mc_reference_only)
"""The metrics a cell writes against the exact reference (all but :attr:`Metric.mc_reference_only`
ones)."""


@dataclass(frozen=True)
class TimedMetric:
    """A metric that multiplies a deterministic one by a *measured* time: it changes from run to
    run, so it is derived when the tables are assembled (``timed_metrics.csv``) from the stored
    throughput, never kept in ``metrics.csv``."""

    name: str
    description: str
    source: str
    better: Better


TIMED_METRICS: tuple[TimedMetric, ...] = (
    TimedMetric("time_to_accuracy_s", "seconds to reach the target rrmse: max(1, ⌈M*⌉) · seconds "
                                      "per sample", "samples_to_accuracy", "low"),
)

NAN_VALUES: dict[str, str] = {m.name: m.nan_when for m in METRICS if m.nan_when is not None}
"""The only NaN values a run writes to ``metrics.csv`` and when (every other metric is always a
number, possibly ``inf``)."""


def better(name: str) -> Better | None:
    """Which direction is better for a metric of :data:`METRICS` or :data:`TIMED_METRICS`."""
    if name in BY_NAME:
        return BY_NAME[name].better
    return next((t.better for t in TIMED_METRICS if t.name == name), None)


# --------------------------------------------------------------------------------------------
# rows


def metric_rows(gstats: Mapping[str, GroupStats], m_grid: Sequence[int],
                cos: Mapping[int, np.ndarray] | None, *, mode: str, cosine_mode: str,
                target_rrmse: float) -> list[dict[str, object]]:
    """Tidy rows ``{layer, metric, M, value, stderr, mode}`` for one cell, in a fixed order: per
    group (``"1" … "L", "out", "all"``), the metrics of :data:`METRICS` in order, M-dependent ones
    for each M (cosines only for the M present in ``cos``). Every value is a deterministic
    function of the samples (no timings: see :func:`timed_rows`).

    Args:
        gstats: per-group figures (:func:`~sbn_bench.metrics.stats.mc_group_stats` /
            :func:`~sbn_bench.metrics.stats.exact_group_stats`).
        cos: ``{M: [R, G]}`` cosines (``R = 1`` and ``cosine_mode == "exact"`` for deterministic
            estimators: stderr 0); None for no cosine rows.
        mode: ``"mc"`` or ``"exact"``, for every row but the cosine ones (``cosine_mode``).
        target_rrmse: the target ``t`` of ``samples_to_accuracy``.
    """
    rows: list[dict[str, object]] = []
    for j, (layer, st) in enumerate(gstats.items()):
        # against a Monte-Carlo reference nothing is exact: the reference has sampling error
        exact = mode == "exact" and not st.mc_reference
        ctx = GroupContext(st, exact, None if cos is None else {m: c[:, j] for m, c in cos.items()},
                           cosine_mode == "exact", target_rrmse)
        # values in units of st.scale (norms) and st.scale² (squares): relative figures as they
        # are, absolute ones multiplied back (exact: powers of two)
        factor = {"norm": st.scale, "square": st.scale * st.scale, "relative": 1.0}
        for metric in METRICS:
            md = cosine_mode if metric.cosine else mode
            for m in (m_grid if metric.per_m else (None,)):
                got = metric.compute(ctx, m)
                if got is None:
                    continue
                value, se = got
                f = factor[metric.units]
                value, se = value * f, se * f
                if math.isinf(value) and not exact:
                    se = math.nan
                rows.append({"layer": layer, "metric": metric.name, "M": m, "value": float(value),
                             "stderr": float(se), "mode": md})
    return rows


def timed_rows(rows: Sequence[Mapping[str, object]], seconds_per_sample: float,
               seconds_se: float = 0.0) -> list[dict[str, object]]:
    """The ``time_to_accuracy_s`` rows derived from a cell's ``samples_to_accuracy`` rows and the
    measured median seconds per sample: ``max(1, ⌈M*⌉) · seconds_per_sample`` with standard error
    ``√((se(M*) · s)² + (max(1, ⌈M*⌉) · se(s))²)``, ``se(s)`` the standard error of the seconds per
    sample (from its confidence interval), so the uncertainty of the timing is carried too.

    Returns:
        The same columns as ``rows`` (tidy, one per group); empty when ``seconds_per_sample`` is
        not a finite positive number (no throughput measurement: nothing to report).
    """
    if not (math.isfinite(seconds_per_sample) and seconds_per_sample > 0):
        return []
    out = []
    for timed in TIMED_METRICS:
        for r in rows:
            if r["metric"] != timed.source:
                continue
            m_star, se = float(r["value"]), float(r["stderr"])  # type: ignore[arg-type]
            tta = time_to_accuracy(m_star, seconds_per_sample)
            if math.isfinite(tta):
                samples = tta / seconds_per_sample
                se_tta = math.hypot(se * seconds_per_sample, samples * seconds_se) \
                    if not math.isnan(se) else math.nan  # ∞ stays ∞: M* unresolved
            else:
                se_tta = 0.0 if r["mode"] == "exact" else math.nan
            out.append({**r, "metric": timed.name, "value": tta, "stderr": se_tta})
    return out


def undocumented_nans(rows: Sequence[Mapping[str, object]], gstats: Mapping[str, GroupStats]
                      ) -> list[str]:
    """``"metric (layer L, M=…)"`` for every value of ``rows`` that its :class:`Metric` does not
    allow: a NaN where it is not documented for that group, an infinity where it can only mean an
    overflow. The runner records a cell with any as a failure."""
    bad = []
    for r in rows:
        value = float(r["value"])  # type: ignore[arg-type]
        if math.isfinite(value):
            continue
        metric, layer = str(r["metric"]), str(r["layer"])
        spec, st = BY_NAME.get(metric), gstats.get(layer)
        if math.isnan(value):
            if spec is not None and spec.nan_allowed is not None and st is not None \
                    and spec.nan_allowed(st):
                continue
        elif spec is not None and spec.inf_allowed:
            continue
        what = "NaN" if math.isnan(value) else "inf"
        bad.append(f"{metric} {what} (layer {layer}"
                   + (f", M={r['M']})" if r["M"] is not None else ")"))
    return bad

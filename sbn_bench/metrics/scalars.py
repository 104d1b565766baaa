"""The metrics' scalar arithmetic, without torch: the reducers of SPEC §5 on plain floats and
arrays (mse, rrmse, samples and time to accuracy, standard errors of means, quantiles, norms) and
:class:`GroupStats`, a group's figures before they become rows. :mod:`~sbn_bench.metrics.registry`
and the reports need only these, so reading a run's tables does not load torch;
:mod:`~sbn_bench.metrics.stats` re-exports them beside the tensor reducers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COSINE_QUANTILES = (0.15, 0.85)
"""The percentiles of ``cos(ḡ_M, g)`` reported beside its mean."""

# --------------------------------------------------------------------------------------------
# pure reducers (scalars; tested against hand-computed values)


def corrected_bias_sq(dist_sq: float, variance: float, num_samples: int) -> float:
    """Unbiased ``‖β‖²`` from ``‖m − g‖²`` of a mean of ``S`` samples: ``‖m − g‖² − V̂/S``.

    ``E‖m − g‖² = ‖β‖² + V/S`` and ``E V̂ = V``. The result can be negative (not clipped here).
    """
    return dist_sq - variance / num_samples


def mse(bias_sq: float, variance: float, m: int) -> float:
    """``MSE(M) = ‖β‖² + V/M`` (SPEC §5)."""
    return bias_sq + variance / m


def rrmse(mse_value: float, g_norm: float) -> float:
    """``√MSE / ‖g‖`` (``∞`` for ``‖g‖ = 0`` and ``MSE > 0``; 0 for ``MSE = ‖g‖ = 0``)."""
    return safe_ratio(math.sqrt(max(mse_value, 0.0)), g_norm)


def samples_to_accuracy(bias_sq: float, variance: float, g_norm: float, target: float) -> float:
    """``M* = V / (t²‖g‖² − ‖β‖²)``, the samples needed for ``rrmse(M*) = t`` (SPEC §5);
    ``∞`` when the bias alone reaches the target; 0 for an estimator without error (``V = 0`` and
    ``‖β‖ = 0``: any number of samples is exact, also when ``‖g‖ = 0``)."""
    if variance == 0 and bias_sq <= 0:
        return 0.0
    den = target**2 * g_norm**2 - bias_sq
    if den <= 0:
        return math.inf
    return variance / den


def time_to_accuracy(m_star: float, seconds_per_sample: float) -> float:
    """Seconds to reach the target: ``max(1, ⌈M*⌉)`` samples (at least one must be drawn)."""
    if math.isnan(seconds_per_sample) or math.isnan(m_star):
        return math.nan
    if math.isinf(m_star):
        return math.inf
    return max(1, math.ceil(m_star - 1e-12)) * seconds_per_sample


def quantile_stderr(values: Sequence[float] | np.ndarray, q: float) -> float:
    """Standard error of the ``q``-quantile of ``R`` i.i.d. values, distribution-free.

    The rank of the sample ``q``-quantile has standard deviation ``√(Rq(1−q))`` (binomial), so
    ``(x_(⌈qR + √(Rq(1−q))⌉) − x_(⌊qR − √(Rq(1−q))⌋)) / 2`` (1-based order statistics, clipped to
    ``1..R``) estimates one standard error. Where clipping leaves both ranks on one order statistic
    (few values and a quantile near an end: ``R = 2``, ``q = 0.15`` gave 0), the bracket takes the
    next one inwards, so that a spread of the values never reads as no error. NaN for ``R < 2``.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    x = x[~np.isnan(x)]
    R = x.size
    if R < 2:
        return math.nan
    h = math.sqrt(R * q * (1 - q))
    hi = min(R, max(1, math.ceil(q * R + h)))
    lo = min(R, max(1, math.floor(q * R - h)))
    if hi == lo:
        hi, lo = (hi + 1, lo) if hi < R else (hi, lo - 1)
    return float((x[hi - 1] - x[lo - 1]) / 2)


def mean_stderr(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """``(mean, sd/√R)`` of i.i.d. values (NaN values left out; stderr NaN for ``R < 2``)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan
    if x.size < 2:
        return float(x[0]), math.nan
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def jackknife_stderr(values: Sequence[float] | np.ndarray) -> float:
    """Delete-one-batch jackknife: ``√((B−1)/B Σ_b (θ_(b) − θ̄)²)``; NaN unless all finite."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2 or not np.isfinite(x).all():
        return math.nan
    B = x.size
    return float(math.sqrt((B - 1) / B * ((x - x.mean()) ** 2).sum()))


def norm_stderr(sq: float, se_sq: float) -> float:
    """Standard error of ``√x`` from that of ``x ≥ 0``: ``min(se/(2√x), √se)``."""
    if math.isnan(se_sq):
        return math.nan
    r = math.sqrt(max(sq, 0.0))
    bound = math.sqrt(se_sq)
    return bound if r == 0 else min(se_sq / (2 * r), bound)


SQUARED_METRICS = frozenset({"rel_bias", "bias_norm"})
"""Metrics that are the square root of an unbiased estimate clipped at 0 (``‖β‖ = √‖β‖²~``): their
significance is judged on the squared scale (:func:`squared_scale`)."""


def squared_scale(value: float, stderr: float) -> tuple[float, float]:
    """``(x, se_x)``: a bias ``v = √x`` and its standard error ``s`` (:func:`norm_stderr`'s
    ``min(se_x/(2v), √se_x)``) taken back to the squared scale, ``x = v²`` and ``se_x = max(2vs,
    s²)`` (exact where ``s`` came from :func:`norm_stderr`; the relative bias's ``‖g‖`` cancels).

    Near zero the square root's delta-method error ``se_x/(2v)`` is too small to test ``v`` against
    zero: ``v > 2s`` is ``x > se_x``, a one-standard-error test, which an unbiased estimator passes
    in up to one cell in six (2–13 % in simulations and real runs). Whether a bias is above zero is
    therefore judged as ``x > z·se_x`` (:class:`sbn_bench.reports.ranking.Estimate`'s ``resolved``
    with ``z = 1`` and ``significantly_positive``), where
    ``x = ‖β‖²~`` is unbiased (a centred weighted χ², skewed for few effective dimensions; ``se_x``
    errs high at ``β = 0``, which keeps the test's false-positive rate at or below the nominal
    2.3 %). A relative bias against a Monte-Carlo reference is judged by its ``bias_norm`` row
    (:attr:`sbn_bench.reports.ranking.Estimate.test`): its own error also carries ``‖g‖``'s."""
    v, se = abs(value), stderr
    return v * v, max(2.0 * v * se, se * se)


def uncertainty(stderr: float | None, mode: str) -> float:
    """The standard error a stored value is judged with: ``stderr`` when positive, ``inf`` when
    infinite (nothing known: a group a Monte-Carlo reference does not resolve, even where mode is
    exact), 0 when ``mode`` is ``"exact"`` or ``stderr`` is 0, else (an unknown, NaN, Monte-Carlo
    error) ``inf``."""
    se = stderr
    if se is not None and math.isfinite(se) and se > 0:
        return float(se)
    if se is not None and math.isinf(se):
        return math.inf
    if mode == "exact" or (se is not None and math.isfinite(se) and se == 0):
        return 0.0
    return math.inf


def is_resolved(value: float | None, stderr: float | None, mode: str) -> bool:
    """Finite, not a clipped Monte-Carlo zero (0 with a positive :func:`uncertainty`, e.g. a
    bias-corrected ``‖β‖²`` below 0), and exact or larger (in absolute value) than its standard
    error. The report's ranking and heatmap and the run's summary judge a value by this; a bias is
    judged on its square instead (:attr:`sbn_bench.reports.ranking.Estimate.resolved`)."""
    if value is None or not math.isfinite(value):
        return False
    u = uncertainty(stderr, mode)
    if value == 0 and u > 0:
        return False
    return u == 0 or abs(value) > u


def safe_ratio(a: float, b: float) -> float:
    """``a / b`` for a relative error: ``x/0 = ∞`` for ``x > 0`` and ``0/0 = 0`` (no error); NaN
    only for NaN inputs."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if b == 0:
        return 0.0 if a == 0 else math.inf
    return a / b


@dataclass(frozen=True)
class GroupStats:
    """Per-group figures (value, stderr) before they become rows.

    ``scale`` (a power of two): the norms (``g_norm``) are in units of ``scale`` and the squared
    figures (``bias_sq``, ``variance`` and their errors) in units of ``scale²``, so that tiny or huge
    gradients keep their precision (see :func:`layer_scales`); :func:`metric_rows` multiplies the
    absolute metrics back and takes the relative ones as they are.
    """

    g_norm: float
    bias_sq: float  # corrected in mc mode, unclipped
    bias_sq_se: float
    variance: float
    variance_se: float
    snr: float
    snr_se: float
    scale: float = 1.0
    g_norm_se: float = 0.0
    reference_rel_error: float = 0.0
    """``ε = √(V̂_R/N) / ‖g‖`` of a Monte-Carlo reference in this group (0: the exact reference)."""
    reference_rel_error_sq_se: float = 0.0
    """The standard error of ``ε²`` (:func:`~sbn_bench.metrics.stats.corrected_norm`)."""
    mc_reference: bool = False
    """Measured against a Monte-Carlo reference (SPEC §8): ``g_norm`` and ``bias_sq`` are corrected
    for its noise and their standard errors include it."""

"""The metrics of SPEC §5, per parameter group, from streamed estimates or from exact enumeration.

Modules: :mod:`~sbn_bench.metrics.groups` (parameter groups and their order),
:mod:`~sbn_bench.metrics.stats` (reducers, accumulators, per-group figures) and
:mod:`~sbn_bench.metrics.registry` (one :class:`~sbn_bench.metrics.registry.Metric` per metric: the
schema, the NaN policy and the report columns derive from it).

Notation: ``g`` the exact gradient, ``ĝ`` one single-sample estimate, ``ḡ_M`` the mean of ``M``
independent single-sample estimates; a *group* is one layer's ``W`` and ``b`` together (``"1" …
"L"``, ``"out"``) or the whole network (``"all"``); norms and traces are over the group's
coordinates.

* bias ``β = E ĝ − g``: ``bias_norm = ‖β‖``, ``rel_bias = ‖β‖/‖g‖``;
* ``variance V = E‖ĝ − E ĝ‖²`` (trace of the covariance of one single-sample estimate);
* ``mse(M) = ‖β‖² + V/M``, ``rrmse(M) = √mse(M) / ‖g‖``;
* ``cosine_mean / cosine_p15 / cosine_p85``: mean and 15th/85th percentiles (linear interpolation)
  of ``cos(ḡ_M, g)`` over ``R`` independent M-means;
* ``snr_median``: median over the group's coordinates of ``|E ĝ_i| / sd(ĝ_i)`` (coordinates with
  ``E ĝ_i = sd(ĝ_i) = 0`` are left out; ``x/0 = ∞``);
* ``samples_to_accuracy``: ``M* = V / (t²‖g‖² − ‖β‖²)``, the samples an average needs for
  ``rrmse(M*) = t`` (SPEC §5; ``∞`` when the bias alone reaches the target ``t``, 0 for an estimator
  without error); deterministic, in ``metrics.csv``;
* ``time_to_accuracy_s = max(1, ⌈M*⌉) · seconds_per_sample``: it multiplies ``M*`` by the *measured*
  time per sample, so it is not reproducible bit for bit and is written apart, to
  ``timed_metrics.csv`` (:func:`timed_rows`), only for cells whose throughput was measured.

**Zero gradients and undefined values** (a saturated unit has ``‖g‖ = 0`` exactly in its layer):
the relative metrics ``rel_bias`` and ``rrmse`` are ``x/0 = ∞`` for an error ``x > 0`` and ``0/0 =
0`` for an estimator that is exactly right (zero bias and zero variance: there is no error, relative
to anything). ``cos(v, g)`` is 0 for a zero estimate ``v = 0`` (it has no component along ``g``) and
undefined for ``g = 0``. The only NaN *values* a run writes are documented in :data:`NAN_VALUES`
(the runner records any other NaN as a failure of the cell, see :func:`undocumented_nans`); a
standard error is NaN where it cannot be estimated (fewer than two batches or M-means, an infinite
value, a jackknife over non-finite values).

**Monte-Carlo mode** (``S`` samples, streamed in chunks; everything accumulated in float64 with
Chan/Welford updates, so memory is ``O(B·P)`` for ``B`` batches and ``P`` parameters, whatever ``S``):
``E ĝ`` is estimated by the sample mean ``m`` and ``V`` by ``V̂ = Σ_i s_i²`` (unbiased per-coordinate
variances). Since ``E‖m − g‖² = ‖β‖² + V/S``, the reported bias is corrected:
``‖β‖²~ = ‖m − g‖² − V̂/S`` (unbiased), clipped at 0 for ``bias_norm`` and ``mse``.

Standard errors (column ``stderr``; documented choices):

The ``S`` samples are cut into ``B`` consecutive batches (``stderr_batches``, default 32).

* ``V̂``: *batch means*, ``V̂`` per batch and ``stderr = sd_b / √B``.
* ``snr_median``: delete-one-batch *jackknife* (``√((B−1)/B Σ_b (θ_(b) − θ̄)²)``); conservative
  when the median jumps between coordinates of similar SNR.
* ``‖β‖²~``: delta method, ``Var ≈ 4 βᵀ Cov(m) β + 2 tr(Cov(m)²)`` (exact for Gaussian estimates),
  with ``Cov(m) = C_b / B`` estimated from the batch means ``m_b`` (``C_b`` their covariance):
  ``βᵀC_bβ`` from the projections ``(m_b − m)·β̂`` minus the ``tr(Cov(m)²)`` that the noise of
  ``β̂`` adds, ``tr(C_b²)`` by the unbiased estimator of Chen, Zhang & Zhong (2010) over distinct
  quadruples of batch means (:func:`~sbn_bench.metrics.stats.tr_cov_sq`; until 4 December 2026 the
  U-statistic ``mean_{a≠b} ((m_a − m)·(m_b − m))²``, biased by about ``1 − 2/B + P_eff/B²`` for
  the effective dimension ``P_eff = (tr C)²/tr(C²)``: ``se`` ×1.38 at ``P_eff = 1000`` with
  ``B = 32``). On Gaussian test cases this is within about 10 % of the true spread, erring high
  when ``β = 0`` (the plug-in ``β̂ᵀCβ̂`` grows with the noise of ``β̂``).
  Then ``stderr(‖β‖) = min(se/(2‖β‖), √se)`` and ``stderr(rel_bias) = stderr(‖β‖)/‖g‖``.
* ``mse(M)``: ``√(se(‖β‖²)² + (se(V)/M)²)``, treating ``‖β‖²~`` and ``V̂`` as uncorrelated (they
  are independent for Gaussian estimates); ``rrmse`` by the delta method ``se/(2√mse ‖g‖)``.
* ``samples_to_accuracy``: delta method in ``(V, ‖β‖²)`` (and ``‖g‖`` against a Monte-Carlo
  reference) for the continuous ``M*``; ``∞`` (unresolved) when ``rel_bias + 2·stderr(rel_bias)``
  reaches the target ``t`` (:data:`~sbn_bench.metrics.registry.RESOLVE_Z`): the bias may reach the
  target within its errors, so ``M*`` may be infinite and no local error holds.
* ``time_to_accuracy_s``: that of ``M*`` times the seconds per sample, combined with the timing's
  own uncertainty (the seconds per sample's, from its confidence interval).
* cosine: the ``R`` M-means are the first ``R = min(cosine_groups, ⌊S/M⌋)`` disjoint blocks of ``M``
  consecutive samples of the same stream, hence independent; ``stderr(mean) = sd/√R`` and, for
  the percentiles, the distribution-free order-statistic interval ``(x_(⌈qR+√(Rq(1−q))⌉) −
  x_(⌊qR−√(Rq(1−q))⌋))/2``. M-means need ``M ≤ S``: larger M get ``mse`` and ``rrmse`` only.

**Against a Monte-Carlo reference** (SPEC §8; :class:`ReferenceNoise`: ``ĝ`` the mean of ``N``
samples of an unbiased estimator R, ``V̂_R`` its per-sample variance): every squared distance to
``ĝ`` is too large by ``V̂_R/N`` on average, so ``‖β‖² ≈ ‖m − ĝ‖² − V̂/S − V̂_R/N`` (exact mode:
``‖E ĝ_E − ĝ‖² − V̂_R/N``) and ``‖g‖² ≈ ‖ĝ‖² − V̂_R/N`` (clipped at 0); rrmse, relative bias and
``samples_to_accuracy`` are computed from these. Their standard errors include the reference's:
``‖m − ĝ‖²`` by :func:`dist_sq_stderr` over both sets of batch means (the reference keeps ``B``
batch means of its own), plus the error of ``V̂_R/N``; relative metrics add ``‖g‖``'s error by the
delta method. Nothing is exact then (``stderr > 0`` also for ``mode = "exact"`` rows). A bias that
is not significantly above zero is shown by the reports as an upper bound ``≤ value + 2 stderr``;
significance is judged on the squared scale, ``‖β‖²~ > 2 se(‖β‖²~)`` (``value > 4 stderr``: near zero
the delta-method error of the square root understates its spread;
:func:`~sbn_bench.metrics.scalars.squared_scale`). The cosines are taken to ``ĝ``: its noise pulls
them down by a factor of about ``1/√(1 + ε²)`` (``ε = √(V̂_R/N)/‖g‖``, the group's relative error
of the reference), which is reported as ``reference_cosine`` (its error from that of ``ε²``, both
``V̂_R/N``'s and ``‖ĝ‖²``'s: :func:`corrected_norm`) and added to the cosines' standard errors as
``|cos| (1 − reference_cosine)``.

**Exact mode** (``path`` estimators, small nets): for each data point ``d`` all paths ``p`` are
enumerated with their probabilities ``p_d(p)``; ``E ĝ = (1/D) Σ_d Σ_p p_d(p) ĝ_d(p)`` and, the
data points' noises being independent, per coordinate ``Var ĝ_i = (1/D²) Σ_d Var_d ĝ_{d,i}``.
There is no sampling error (``stderr = 0``) except for the cosine rows, which still come from
sampled M-means and are marked ``mode = "mc"``. Estimators with randomness ``none`` are exact with
one sample (``V = 0``, ``cos(ḡ_M, g) = cos(ĝ, g)`` for every M).

References:
    Shekhovtsov, Yanush, Flach. NeurIPS 2020, §5 (rrmse and cosine versus M). Chan, Golub, LeVeque.
    "Updating formulae and a pairwise algorithm for computing sample variances". 1979.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sbn_bench.metrics.groups import ALL, OUT, Groups, hidden_layers, layer_key, sort_layers
from sbn_bench.metrics.registry import (
    BY_NAME,
    EXACT_REFERENCE_METRICS,
    METRICS,
    NAN_VALUES,
    TIMED_METRICS,
    GroupContext,
    Metric,
    TimedMetric,
    better,
    metric_rows,
    reference_resolution,
    timed_rows,
    undocumented_nans,
)
from sbn_bench.metrics.scalars import (
    COSINE_QUANTILES,
    SQUARED_METRICS,
    GroupStats,
    corrected_bias_sq,
    jackknife_stderr,
    mean_stderr,
    mse,
    norm_stderr,
    quantile_stderr,
    rrmse,
    safe_ratio,
    samples_to_accuracy,
    squared_scale,
    time_to_accuracy,
)

if TYPE_CHECKING:
    from sbn_bench.metrics.stats import (
        CosineAccumulator,
        MomentAccumulator,
        MomentStats,
        ReferenceNoise,
        WeightedMoments,
        bias_sq_stderr,
        corrected_norm,
        cosines,
        dist_sq_stderr,
        exact_group_stats,
        layer_scales,
        leave_one_batch_out,
        mc_group_stats,
        reference_rel_errors,
        rescale_moments,
        snr_median,
        weighted_moments,
    )


def __getattr__(name: str) -> object:
    if name in _STATS or name == "stats":
        import importlib

        stats = importlib.import_module("sbn_bench.metrics.stats")  # (an import statement would
        return stats if name == "stats" else getattr(stats, name)   # look "stats" up here again)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALL", "BY_NAME", "COSINE_QUANTILES", "EXACT_REFERENCE_METRICS", "METRICS", "NAN_VALUES", "OUT",
    "SQUARED_METRICS", "TIMED_METRICS",
    "CosineAccumulator", "GroupContext", "GroupStats", "Groups", "Metric", "MomentAccumulator",
    "MomentStats", "ReferenceNoise", "TimedMetric", "WeightedMoments", "better", "bias_sq_stderr",
    "corrected_bias_sq", "corrected_norm", "cosines", "dist_sq_stderr", "exact_group_stats",
    "hidden_layers", "jackknife_stderr", "layer_key", "layer_scales", "leave_one_batch_out",
    "mc_group_stats", "mean_stderr", "metric_rows", "mse", "norm_stderr", "quantile_stderr",
    "reference_rel_errors", "reference_resolution", "rescale_moments", "rrmse", "safe_ratio",
    "samples_to_accuracy", "snr_median", "squared_scale",
    "sort_layers", "time_to_accuracy", "timed_rows", "undocumented_nans", "weighted_moments",
]

_STATS = frozenset(__all__) - globals().keys()
"""The names of :mod:`~sbn_bench.metrics.stats` (tensor reducers and accumulators): those of
``__all__`` not imported above, loaded on first use (reading a run's tables needs only the scalar
metrics, and no torch)."""


def __dir__() -> list[str]:
    return sorted({*globals(), *_STATS, "stats"})

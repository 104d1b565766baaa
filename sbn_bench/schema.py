"""The tidy result tables a run writes (STYLE 6–7): column names, metric names, schema version.

One row per (problem, checkpoint, estimator, layer, metric, M). ``M`` is empty (NaN) for metrics
that do not depend on the number of averaged samples. ``layer`` is ``"1" … "L"``, ``"out"`` or
``"all"``. ``mode`` is ``"exact"`` (mean and variance by enumerating every path: no sampling
error) or ``"mc"`` (Monte Carlo, with ``stderr``). Estimator names are written as on the command
line (``concrete:tau=0.1``).

Files of a run folder: ``metrics.csv`` (:data:`METRICS_COLUMNS`, metrics :data:`METRICS`),
``timed_metrics.csv`` (the same columns, metrics :data:`TIMED_METRICS`), ``throughput.csv``
(:data:`THROUGHPUT_COLUMNS`), ``failures.csv`` (:data:`FAILURES_COLUMNS`) and ``manifest.json``.

NaN values: ``value`` is a number (possibly ``inf``, e.g. a relative error when ``‖g‖ = 0``) except
for the cases listed in :data:`sbn_bench.metrics.NAN_VALUES` (cosines of a group whose exact gradient
is zero; an SNR with no defined coordinate); a cell that would produce any other NaN is recorded in
``failures.csv`` instead. ``stderr`` is NaN where it cannot be estimated.
"""


from __future__ import annotations

SCHEMA_VERSION = 1

TABLE_FILES = {"metrics": "metrics.csv", "timed": "timed_metrics.csv",
               "throughput": "throughput.csv", "failure": "failures.csv"}
"""The tables of a run folder by kind (see :mod:`sbn_bench.storage`)."""

METRICS_COLUMNS = [
    "problem", "checkpoint", "estimator", "layer", "metric", "M", "value", "stderr", "mode",
    "samples", "seed", "device", "dtype",
]

METRICS = [
    "bias_norm",  # ‖E ĝ − g‖ (bias-corrected in mc mode)
    "rel_bias",  # ‖E ĝ − g‖ / ‖g‖
    "variance",  # E‖ĝ − E ĝ‖² (trace of the covariance) of one single-sample estimate
    "mse",  # ‖β‖² + V/M
    "rrmse",  # √mse / ‖g‖ (the paper's y-axis)
    "cosine_mean",  # mean of cos(ḡ_M, g) over independent M-sample means
    "cosine_p15",  # 15th percentile of the same
    "cosine_p85",  # 85th percentile
    "snr_median",  # median over coordinates of |E ĝ_i| / sd(ĝ_i)
    "samples_to_accuracy",  # M* = V / (t²‖g‖² − ‖β‖²): samples to reach the target rrmse t
]
"""The metrics of ``metrics.csv``: each a deterministic function of the sampled estimates, so the
same command, seed and device give a byte-identical file."""

TIMED_METRICS = [
    "time_to_accuracy_s",  # seconds to reach the target rrmse: max(1, ⌈M*⌉) · seconds per sample
]
"""The metrics of ``timed_metrics.csv`` (same columns as ``metrics.csv``): they multiply a
deterministic figure by a *measured* time, so they change from run to run. Written only for cells
whose throughput was measured."""

METRICS_WITH_M = ("mse", "rrmse", "cosine_mean", "cosine_p15", "cosine_p85")

THROUGHPUT_COLUMNS = [
    "problem", "checkpoint", "estimator", "device", "dtype", "batch", "rounds",
    "samples_per_s", "samples_per_s_q25", "samples_per_s_q75",
    "seconds_per_sample", "seconds_per_sample_q25", "seconds_per_sample_q75",
    "peak_memory_bytes", "evals_per_sample",
]

FAILURES_COLUMNS = ["problem", "checkpoint", "estimator", "stage", "error", "seed"]
"""``seed`` is empty for failures that do not depend on it (throughput)."""

"""The tidy result tables a run writes (STYLE 6–7): column names, metric names, schema version.

One row per (problem, checkpoint, estimator, layer, metric, M). ``M`` is empty (NaN) for metrics
that do not depend on the number of averaged samples. ``layer`` is ``"1" … "L"``, ``"out"`` or
``"all"``. ``mode`` is ``"exact"`` (mean and variance by enumerating every path: no sampling
error) or ``"mc"`` (Monte Carlo, with ``stderr``). Estimator names are written as on the command
line (``concrete:tau=0.1``).
"""

from __future__ import annotations

SCHEMA_VERSION = 1

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
    "time_to_accuracy_s",  # seconds to reach the target rrmse: M* · seconds per sample
]

METRICS_WITH_M = ("mse", "rrmse", "cosine_mean", "cosine_p15", "cosine_p85")

THROUGHPUT_COLUMNS = [
    "problem", "checkpoint", "estimator", "device", "dtype", "batch", "rounds",
    "samples_per_s", "samples_per_s_q25", "samples_per_s_q75",
    "seconds_per_sample", "seconds_per_sample_q25", "seconds_per_sample_q75",
    "peak_memory_bytes", "evals_per_sample",
]

FAILURES_COLUMNS = ["problem", "checkpoint", "estimator", "stage", "error", "seed"]
"""``seed`` is empty for failures that do not depend on it (throughput)."""

"""Compare two runs' ``metrics.csv`` row by row: the same command on two devices (CUDA against
the CPU), two dtypes or two versions.

* exact-mode rows, which have no sampling error: the largest and median relative difference of
  every metric but the bias, and the largest absolute and relative bias of each estimator on
  each side (an unbiased estimator's is round-off);
* Monte-Carlo rows: per metric, ``z = (a − b) / √(se_a² + se_b²)`` and the share of rows with
  ``|z| > 3``, which is 0.27% for independent normal errors (rows of neighbouring M are
  correlated, so this is a rough guide).

Usage::

    python benchmarks/compare_metrics.py A/metrics.csv B/metrics.csv
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

KEY = ["problem", "checkpoint", "estimator", "layer", "metric", "M", "seed"]


def compare(a: pd.DataFrame, b: pd.DataFrame) -> str:
    lines = [f"rows: {len(a)} and {len(b)}"]
    ex = a[a["mode"] == "exact"].merge(b[b["mode"] == "exact"], on=KEY, suffixes=("_a", "_b"))
    if len(ex):
        nb = ex[~ex["metric"].isin(["bias_norm", "rel_bias"])]
        rel = (nb.value_a - nb.value_b).abs() / nb.value_b.abs().clip(lower=1e-300)
        lines.append(f"exact mode: {len(ex)} rows in both; metrics but the bias: largest relative "
                     f"difference {rel.max():.2g}, median {rel.median():.2g}")
        for est, g in ex.groupby("estimator"):
            bias, rb = g[g.metric == "bias_norm"], g[g.metric == "rel_bias"]
            lines.append(f"  {est}: bias_norm at most {bias.value_a.abs().max():.3g} / "
                         f"{bias.value_b.abs().max():.3g}, rel_bias at most {rb.value_a.abs().max():.3g} "
                         f"/ {rb.value_b.abs().max():.3g}")
    mc = a[a["mode"] == "mc"].merge(b[b["mode"] == "mc"], on=KEY, suffixes=("_a", "_b"))
    if len(mc):
        z = (mc.value_a - mc.value_b) / np.sqrt(mc.stderr_a**2 + mc.stderr_b**2)
        mc = mc.assign(z=z.replace([np.inf, -np.inf], np.nan)).dropna(subset=["z"])
        lines.append(f"Monte Carlo: {len(mc)} rows in both with a standard error; per metric, rows, "
                     "share with |z| > 3, standard deviation of z:")
        for metric, g in mc.groupby("metric"):
            lines.append(f"  {metric:20s} {len(g):6d}  {(g.z.abs() > 3).mean():6.1%}  {g.z.std():.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="a metrics.csv")
    ap.add_argument("b", help="the metrics.csv to compare it with")
    args = ap.parse_args(argv)
    try:
        a, b = pd.read_csv(args.a), pd.read_csv(args.b)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    need = [*KEY, "mode", "value", "stderr"]
    for path, df in ((args.a, a), (args.b, b)):
        missing = [c for c in need if c not in df.columns]
        if missing:  # failures.csv or throughput.csv given for a metrics.csv
            print(f"error: {path!r} is not a metrics.csv (no column {', '.join(missing)})",
                  file=sys.stderr)
            return 2
    print(compare(a, b))
    return 0


if __name__ == "__main__":
    sys.exit(main())

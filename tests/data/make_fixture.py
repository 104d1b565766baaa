"""Build the small committed run directories ``tests/data/run_a`` and ``tests/data/run_b``.

They are real (small) runs in the tidy format of :mod:`sbn_bench.schema`, computed here
independently of the runner so that the report tests do not depend on it:

* problem ``tiny-2-3-2-1`` (random, seed 3, 6 data points) at two checkpoints: ``init`` and ``gd30``
  (after 30 steps of exact gradient descent, lr 1.0);
* estimators ``psa``, ``st``, ``reinforce`` in exact mode (mean and variance by enumerating all
  2^5 paths per data point, SPEC §5) and ``arm``, ``concrete:tau=0.5`` in Monte-Carlo mode
  (S = 4000 samples, bias-corrected, standard errors by the delta method); cosines from 200
  resampled M-means of the S drawn samples (with replacement) in both modes;
* one estimator, ``nan-plugin``, that returns NaN: recorded in ``failures.csv``;
* throughput measured with a warm-up and 5 timed rounds of batch 256 (the committed runs are in
  the result schema's version 1: quartiles over rounds, read by the reports as the interval).

``run_b`` is the same configuration with another seed, **except** that its ``st`` is a deliberately
regressed copy whose layer-1 estimates are scaled by 1.25 (same name and version): the comparison
must flag st's layer-1 and ``all`` figures and nothing that differs only by Monte-Carlo noise.

Regenerate (then regenerate the goldens, see tests/test_reports.py):

    .venv/bin/python tests/data/make_fixture.py
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import platform
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import sbn_bench
from sbn_bench import schema
from sbn_bench.estimators import Estimator, estimate, estimate_on_paths, load_registry
from sbn_bench.problems import Problem, random_problem
from sbn_bench.reference import exact_gradient
from sbn_bench.reference.naive import enumerate_paths, path_log_probs

HERE = Path(__file__).resolve().parent
SPECS = ["psa", "st", "reinforce", "arm", "concrete:tau=0.5"]
M_GRID = [1, 10, 100]
SAMPLES = 4000
RESAMPLES = 200
TARGET = 0.1
ST_REGRESSION = 1.25


def checkpoints() -> dict[str, Problem]:
    base = random_problem("2-3-2-1", 3, data_points=6)
    base = Problem(base.params, base.x, base.y, base.loss, base.noise, name="tiny-2-3-2-1")
    params = {k: v.clone() for k, v in base.params.items()}
    for _ in range(30):
        _, g = exact_gradient(base.with_params(params))
        params = {k: params[k] - 1.0 * g[k] for k in params}
    return {"init": base, "gd30": base.with_params(params)}


def fingerprint(p: Problem) -> str:
    h = hashlib.sha256()
    for k in sorted(p.params):
        h.update(k.encode())
        h.update(p.params[k].detach().numpy().tobytes())
    for t in (p.x, p.y):
        h.update(t.detach().numpy().tobytes())
    h.update(f"{p.loss}/{p.noise}".encode())
    return h.hexdigest()[:16]


def groups(p: Problem) -> dict[str, list[str]]:
    """Parameter group -> parameter names: each layer (W and b together) and ``all``."""
    out = {str(k): [f"weight_{k}", f"bias_{k}"] for k in range(1, p.n_layers + 1)}
    out["out"] = ["weight_out", "bias_out"]
    out["all"] = [n for names in list(out.values()) for n in names]
    return out


def flat(d: dict[str, torch.Tensor], names: list[str], lead: int) -> torch.Tensor:
    """Concatenate the named tensors, keeping ``lead`` leading dims: ``[*lead, n_group]``."""
    return torch.cat([d[n].reshape(*d[n].shape[:lead], -1) for n in names], dim=-1)


def regressed(est: Estimator, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if est.spec == "st-regressed":
        return {k: v * ST_REGRESSION if k.endswith("_1") else v for k, v in grads.items()}
    return grads


def exact_moments(est: Estimator, p: Problem) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Exact mean and per-coordinate variance of a path estimator's single-sample estimate.

    The D data points draw independent paths, so with ``h_d(path)`` the estimate on the one-point
    problem ``d``: ``E ĝ = (1/D) Σ_d Σ_path π_d h_d`` and ``Var ĝ_i = (1/D²) Σ_d Var_d h_{d,i}``.
    """
    paths = enumerate_paths(p.widths)
    mean = {k: torch.zeros_like(v) for k, v in p.params.items()}
    var = {k: torch.zeros_like(v) for k, v in p.params.items()}
    D = p.num_data
    for d in range(D):
        pd_ = Problem(p.params, p.x[d:d + 1], p.y[d:d + 1], p.loss, p.noise, name=p.name)
        states = [s.unsqueeze(1) for s in paths]  # [P, 1, n_k]
        h = regressed(est, estimate_on_paths(est, pd_, states))  # {name: [P, *shape]}
        pi = path_log_probs(pd_, pd_.params, paths)[:, 0].exp()  # [P]
        for k, v in h.items():
            w = pi.reshape(-1, *[1] * (v.dim() - 1))
            m = (w * v).sum(0)
            mean[k] += m / D
            var[k] += (w * (v - m) ** 2).sum(0) / D**2
    return mean, var


def draw(est: Estimator, p: Problem, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return regressed(est, estimate(est, p, SAMPLES, gen))


def cosines(samples: torch.Tensor, g: torch.Tensor, gen: torch.Generator) -> dict[int, torch.Tensor]:
    """``cos(ḡ_M, g)`` for RESAMPLES means of M samples drawn with replacement: ``{M: [R]}``."""
    out = {}
    for M in M_GRID:
        idx = torch.randint(0, samples.shape[0], (RESAMPLES, M), generator=gen)
        means = samples[idx].mean(1)  # [R, n]
        out[M] = torch.nn.functional.cosine_similarity(means, g.unsqueeze(0), dim=1)
    return out


def throughput(est: Estimator, p: Problem, gen: torch.Generator, batch: int = 256, rounds: int = 5
               ) -> dict[str, float]:
    estimate(est, p, batch, gen)  # warm-up
    secs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        estimate(est, p, batch, gen)
        secs.append((time.perf_counter() - t0) / batch)
    s = np.asarray(secs)
    sps = 1.0 / s
    return {
        "batch": batch, "rounds": rounds,
        "samples_per_s": float(np.median(sps)), "samples_per_s_q25": float(np.percentile(sps, 25)),
        "samples_per_s_q75": float(np.percentile(sps, 75)), "seconds_per_sample": float(np.median(s)),
        "seconds_per_sample_q25": float(np.percentile(s, 25)),
        "seconds_per_sample_q75": float(np.percentile(s, 75)),
        "peak_memory_bytes": float("nan"), "evals_per_sample": est.evals_per_sample(p.widths),
    }


def metric_rows(est: Estimator, spec: str, p: Problem, ckpt: str, seed: int, spp: float
                ) -> list[dict[str, object]]:
    gen = torch.Generator().manual_seed(seed * 1000 + zlib.crc32(spec.encode()) % 997)
    _, g_full = exact_gradient(p)
    exact_mode = est.randomness == "path"
    samples = draw(est, p, gen)
    if exact_mode:
        mean_d, var_d = exact_moments(est, p)
    base = {"problem": p.name, "checkpoint": ckpt, "estimator": spec, "samples": SAMPLES,
            "seed": seed, "device": "cpu", "dtype": "float64"}
    rows: list[dict[str, object]] = []

    def add(layer: str, metric: str, value: float, stderr: float, mode: str, M: int | None = None) -> None:
        rows.append({**base, "layer": layer, "metric": metric, "M": M, "value": value,
                     "stderr": stderr, "mode": mode})

    for layer, names in groups(p).items():
        g = flat(g_full, names, 0)
        gn = float(g.norm())
        X = flat(samples, names, 1)  # [S, n]
        S = X.shape[0]
        if exact_mode:
            mu, var_i = flat(mean_d, names, 0), flat(var_d, names, 0)
            b2, V = float(((mu - g) ** 2).sum()), float(var_i.sum())
            se_b2 = se_V = 0.0
            mode = "exact"
        else:
            mu = X.mean(0)
            C = torch.cov(X.T).reshape(X.shape[1], X.shape[1])  # [n, n], unbiased
            var_i = C.diagonal()
            V = float(var_i.sum())
            d = mu - g
            # ‖mean − g‖² = ‖β‖² + V/S on average (SPEC §5): subtract it. Its variance is
            # 4 dᵀΣd/S + 2 tr(Σ²)/S² (Gaussian approximation of the mean).
            b2 = float((d**2).sum()) - V / S
            se_b2 = math.sqrt(max(4 * float(d @ C @ d) / S + 2 * float((C * C).sum()) / S**2, 0.0))
            # Var of the unbiased trace estimator ≈ Var(‖X − μ‖²)/S.
            se_V = float(((X - mu) ** 2).sum(1).std()) / math.sqrt(S)
            mode = "mc"
        bn = math.sqrt(max(b2, 0.0))
        se_bn = se_b2 / (2 * bn) if bn > 0 else math.sqrt(se_b2)
        add(layer, "bias_norm", bn, se_bn, mode)
        add(layer, "rel_bias", bn / gn, se_bn / gn, mode)
        add(layer, "variance", V, se_V, mode)
        sd = var_i.sqrt()
        snr = (mu.abs() / sd)[sd > 0]
        add(layer, "snr_median", float(snr.median()) if snr.numel() else float("inf"),
            0.0 if exact_mode else float("nan"), mode)
        for M in M_GRID:
            mse = max(b2, 0.0) + V / M
            se_mse = math.sqrt(se_b2**2 + (se_V / M) ** 2)
            add(layer, "mse", mse, se_mse, mode, M)
            add(layer, "rrmse", math.sqrt(mse) / gn, se_mse / (2 * math.sqrt(mse) * gn), mode, M)
        for M, cs in cosines(X, g, gen).items():
            R = cs.numel()
            add(layer, "cosine_mean", float(cs.mean()), float(cs.std()) / math.sqrt(R), "mc", M)
            add(layer, "cosine_p15", float(torch.quantile(cs, 0.15)), float("nan"), "mc", M)
            add(layer, "cosine_p85", float(torch.quantile(cs, 0.85)), float("nan"), "mc", M)
        denom = TARGET**2 * gn**2 - max(b2, 0.0)
        tta = V / denom * spp if denom > 0 else float("inf")
        add(layer, "time_to_accuracy_s", tta, float("nan"), mode)
    return rows


def nan_plugin() -> Estimator:
    def surrogate(problem: Problem, params: dict[str, torch.Tensor], generator: torch.Generator
                  ) -> torch.Tensor:
        return (params["weight_out"].sum((1, 2)) * float("nan"))

    return Estimator("nan-plugin", surrogate, randomness="none", description="returns NaN")


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=HERE).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_run(out: Path, seed: int, regress_st: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    reg = load_registry()
    ckpts = checkpoints()
    metrics: list[dict[str, object]] = []
    tput: list[dict[str, object]] = []
    fails: list[dict[str, object]] = []
    specs = [*SPECS, "nan-plugin"]
    for ckpt, p in ckpts.items():
        for spec in specs:
            est = nan_plugin() if spec == "nan-plugin" else reg.create(spec)
            if spec == "st" and regress_st:
                est = Estimator("st-regressed", est.surrogate, randomness="path",
                                path_surrogate=est.path_surrogate)
            gen = torch.Generator().manual_seed(seed)
            g = estimate(est, p, 8, gen)
            bad = sum(int((~torch.isfinite(v)).any(tuple(range(1, v.dim()))).sum()) for v in g.values())
            if bad:
                msg = (f"estimator {spec!r} returned non-finite estimates (NaN/Inf in {bad} "
                       "parameter-sample entries of 8 samples)")
                fails.append({"problem": p.name, "checkpoint": ckpt, "estimator": spec,
                              "stage": "estimate", "seed": seed, "error": msg})
                continue
            tp = throughput(est, p, gen)
            tput.append({"problem": p.name, "checkpoint": ckpt, "estimator": spec, "device": "cpu",
                         "dtype": "float64", **tp})
            metrics += metric_rows(est, spec, p, ckpt, seed, tp["seconds_per_sample"])
    pd.DataFrame(metrics, columns=schema.METRICS_COLUMNS).to_csv(
        out / "metrics.csv", index=False, float_format="%.6g")
    pd.DataFrame(tput, columns=schema.THROUGHPUT_COLUMNS).to_csv(
        out / "throughput.csv", index=False, float_format="%.6g")
    pd.DataFrame(fails, columns=schema.FAILURES_COLUMNS).to_csv(out / "failures.csv", index=False)
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "sbn_bench_version": sbn_bench.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "git_commit": git_commit(),
        "device": "cpu",
        "config": {"estimators": specs, "samples": SAMPLES, "M": M_GRID, "dtype": "float64",
                   "mode": "auto", "target_rrmse": TARGET, "seed": seed,
                   "problems": [{"arch": "2-3-2-1", "seed": 3, "data_points": 6}]},
        "seeds": [seed],
        "packages": {"sbn-bench": sbn_bench.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, "pandas": pd.__version__,
                     "python": platform.python_version()},
        "estimators": [{"spec": s, "name": s.split(":")[0], "version": "1"} for s in specs],
        "problems": [{"name": p.name, "checkpoint": c, "arch": p.arch, "fingerprint": fingerprint(p)}
                     for c, p in ckpts.items()],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(metrics)} metric rows, {len(tput)} throughput rows, {len(fails)} failures",
          file=sys.stderr)


if __name__ == "__main__":
    torch.set_num_threads(1)
    write_run(HERE / "run_a", seed=1, regress_st=False)
    write_run(HERE / "run_b", seed=2, regress_st=True)

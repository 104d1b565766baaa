"""The paper's gradient-accuracy experiment (SPEC §6): its settings and the evaluation of its claims.

The claims are decided from a run's tidy ``metrics.csv`` (never written by hand): each
:class:`Claim` says whether this run confirms it and gives the numbers that decide it.

References:
    Shekhovtsov, Yanush, Flach. "Path Sample-Analytic Gradient Estimators for Stochastic Binary
    Networks". NeurIPS 2020, §5 and Fig. 3.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sbn_bench import problems
from sbn_bench.config import Checkpoint, ProblemSpec, RunConfig, paper_m_grid
from sbn_bench.fileio import atomic_write_text, dir_mode
from sbn_bench.metrics import hidden_layers
from sbn_bench.reports import write_report
from sbn_bench.reports.load import Run
from sbn_bench.reports.sections import Block, Bullets, Heading, Image, Text
from sbn_bench.reports.tables import Table, TableCell
from sbn_bench.runner import RunResult, run
from sbn_bench.train import train
from sbn_bench.version import __version__

PAPER_ESTIMATORS = ["reinforce", "arm", "concrete:tau=0.1", "concrete:tau=1.0", "tanh", "st", "psa"]
"""The seven estimators of the paper's Fig. 3."""

EXTRA_ESTIMATORS = ["disarm", "reinforce-loo:k=2", "st-gumbel:tau=1.0", "st-identity"]
"""Added by sbn-bench to the paper's set."""

UNBIASED = ["reinforce", "arm", "disarm", "reinforce-loo:k=2"]

TRAINING = {"estimator": "reinforce", "optimizer": "sgd", "lr": 0.03, "momentum": 0.9,
            "batch_size": 10, "epochs": 2000, "checkpoints": (1, 100, 2000)}
"""SPEC §6: REINFORCE, one sample per point, batch 10, SGD lr 0.03, momentum 0.9, 2000 epochs."""

SAMPLES = 20_000

ST_CLOSE_RATIO = 1.5
""""ST is close to PSA at initialisation": rrmse(M=1) of ST at most this multiple of PSA's."""

TANH_DEGRADE_RATIO = 2.0
""""tanh degrades badly after training": its relative bias grows at least this much."""

TENS_OF_SAMPLES = 10
""""Tens of samples": an unbiased method needs at least this many to match one PSA sample."""


def checkpoint_label(epoch: int) -> str:
    return f"epoch{epoch}"


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims and what this run says about it.

    Attributes:
        claim: the claim, as the paper states it.
        confirmed: True / False, or None when the run lacks the data to decide.
        evidence: the numbers that decide it.
    """

    claim: str
    confirmed: bool | None
    evidence: str


def _values(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    return df[df["metric"] == metric]


def _hidden_layers(df: pd.DataFrame) -> list[str]:
    return hidden_layers(df["layer"])


def _ckpt_epoch(label: str) -> int | None:
    digits = "".join(ch for ch in str(label) if ch.isdigit())
    return int(digits) if digits else None


def _checkpoints(df: pd.DataFrame) -> list[str]:
    labels = sorted({str(c) for c in df["checkpoint"]},
                    key=lambda c: (_ckpt_epoch(c) is None, _ckpt_epoch(c) or 0, c))
    return labels


def _rrmse(df: pd.DataFrame, ckpt: str, est: str, layer: str, M: int) -> float:
    sel = df[(df["metric"] == "rrmse") & (df["checkpoint"].astype(str) == ckpt)
             & (df["estimator"] == est) & (df["layer"].astype(str) == layer) & (df["M"] == M)]
    return float(sel["value"].iloc[0]) if len(sel) else math.nan


def _scalar(df: pd.DataFrame, metric: str, ckpt: str, est: str, layer: str) -> float:
    sel = df[(df["metric"] == metric) & (df["checkpoint"].astype(str) == ckpt)
             & (df["estimator"] == est) & (df["layer"].astype(str) == layer)]
    return float(sel["value"].iloc[0]) if len(sel) else math.nan


def claim_psa_lowest(df: pd.DataFrame) -> Claim:
    """PSA has the lowest rrmse in every hidden layer for M ≤ 100, at every checkpoint, among the
    paper's seven estimators."""
    text = "PSA has the lowest error in every hidden layer for M ≤ 100"
    rr = _values(df, "rrmse")
    rr = rr[(rr["M"] <= 100) & rr["layer"].astype(str).str.isdigit()
            & rr["estimator"].isin(PAPER_ESTIMATORS)]
    if "psa" not in set(rr["estimator"]) or rr["estimator"].nunique() < 2:
        return Claim(text, None, "the run has no rrmse of psa and another estimator for M ≤ 100")
    losses = []
    worst = (math.inf, "")
    for (ckpt, layer, M), g in rr.groupby(["checkpoint", "layer", "M"]):
        vals = dict(zip(g["estimator"], g["value"]))
        if "psa" not in vals:
            continue
        others = {k: v for k, v in vals.items() if k != "psa" and np.isfinite(v)}
        if not others:
            continue
        best_other = min(others, key=others.get)  # type: ignore[arg-type]
        ratio = others[best_other] / vals["psa"]
        if ratio < worst[0]:
            worst = (ratio, f"{ckpt}, layer {layer}, M={M:g}: best other {best_other} "
                            f"{others[best_other]:.4g} vs psa {vals['psa']:.4g}")
        if vals["psa"] > others[best_other]:
            losses.append(f"{ckpt}/layer {layer}/M={M:g} ({best_other} {others[best_other]:.4g} "
                          f"< psa {vals['psa']:.4g})")
    if worst[0] is math.inf:
        return Claim(text, None, "no comparable cells")
    ok = not losses
    ev = (f"worst case for psa: {worst[1]} (best other / psa = {worst[0]:.3g}; the claim needs "
          f"≥ 1 everywhere)")
    if losses:
        ev += f"; psa is beaten in {len(losses)} cells, e.g. " + "; ".join(losses[:3])
    return Claim(text, ok, ev)


def _hidden_rel_bias(df: pd.DataFrame, ckpt: str, est: str, layers: list[str]) -> list[float]:
    return [_scalar(df, "rel_bias", ckpt, est, layer) for layer in layers]


def claim_st_close(df: pd.DataFrame) -> Claim:
    """ST's rrmse(M=1) is within :data:`ST_CLOSE_RATIO` of PSA's in every hidden layer at the first
    checkpoint."""
    text = "ST is close to PSA at initialisation"
    ckpts, layers = _checkpoints(df), _hidden_layers(df)
    if not ckpts or not layers or not {"st", "psa"} <= set(df["estimator"]):
        return Claim(text, None, "the run has no st and psa results")
    first = ckpts[0]
    ratios = [_rrmse(df, first, "st", layer, 1) / _rrmse(df, first, "psa", layer, 1)
              for layer in layers]
    ok = bool(all(r <= ST_CLOSE_RATIO for r in ratios)) if np.isfinite(ratios).all() else None
    return Claim(text, ok, f"rrmse(M=1) st/psa at {first}: "
                 + ", ".join(f"layer {layer} {r:.3g}" for layer, r in zip(layers, ratios))
                 + f" (close: ≤ {ST_CLOSE_RATIO} in every hidden layer)")


def claim_st_bias_depth(df: pd.DataFrame) -> Claim:
    """ST's relative bias does not decrease from the last hidden layer down to the first (the
    deepest from the output), at the last checkpoint."""
    text = "ST's bias grows with depth (from the last hidden layer down to the first)"
    ckpts, layers = _checkpoints(df), _hidden_layers(df)
    if not ckpts or len(layers) < 2 or "st" not in set(df["estimator"]):
        return Claim(text, None, "the run needs st in two or more hidden layers")
    parts, ok = [], True
    for c in (ckpts[0], ckpts[-1]) if len(ckpts) > 1 else (ckpts[0],):
        b = _hidden_rel_bias(df, c, "st", layers)
        parts.append(f"{c}: " + ", ".join(f"L{layer} {v:.3g}" for layer, v in zip(layers, b)))
        if c == ckpts[-1]:
            ok = all(x >= y for x, y in zip(b[:-1], b[1:]))
    return Claim(text, bool(ok), "st relative bias per hidden layer, " + "; ".join(parts)
                 + f" (judged at {ckpts[-1]}: each layer's bias must be at least that of the "
                   f"layer above it, from layer {layers[-1]} down to layer 1)")


def claim_st_bias_training(df: pd.DataFrame) -> Claim:
    """ST's mean hidden-layer relative bias is larger at the last checkpoint than at the first."""
    text = "ST's bias grows with training"
    ckpts, layers = _checkpoints(df), _hidden_layers(df)
    if len(ckpts) < 2 or not layers or "st" not in set(df["estimator"]):
        return Claim(text, None, "the run needs st at two checkpoints")
    means = [float(np.nanmean(_hidden_rel_bias(df, c, "st", layers))) for c in ckpts]
    return Claim(text, bool(means[-1] > means[0]),
                 "st relative bias, mean over hidden layers: "
                 + " → ".join(f"{m:.3g} ({c})" for m, c in zip(means, ckpts)))


def _unbiased_curves(df: pd.DataFrame, ckpt: str, layers: list[str]
                     ) -> list[tuple[str, str, pd.DataFrame]]:
    rr = _values(df, "rrmse")
    out = []
    for est in [e for e in UNBIASED if e in set(df["estimator"])]:
        for layer in layers:
            sel = rr[(rr["checkpoint"].astype(str) == ckpt) & (rr["estimator"] == est)
                     & (rr["layer"].astype(str) == layer)].sort_values("M")
            sel = sel[np.isfinite(sel["value"]) & (sel["value"] > 0)]
            if len(sel) >= 2:
                out.append((est, layer, sel))
    return out


def claim_unbiased_rate(df: pd.DataFrame) -> Claim:
    """The rrmse of unbiased estimators falls as M^(−1/2): log-log slopes within ±0.05 of −½."""
    text = "unbiased methods fall as M^(−1/2)"
    ckpts, layers = _checkpoints(df), _hidden_layers(df)
    curves = [c for ck in ckpts for c in _unbiased_curves(df, ck, layers)
              if c[0] in PAPER_ESTIMATORS]
    if not curves:
        return Claim(text, None, "no rrmse curves of unbiased estimators")
    slopes = [float(np.polyfit(np.log(s["M"].astype(float)), np.log(s["value"]), 1)[0])
              for _, _, s in curves]
    return Claim(text, bool(all(abs(x + 0.5) <= 0.05 for x in slopes)),
                 f"log-log slopes of rrmse vs M over {len(slopes)} curves (estimators "
                 f"{', '.join(sorted({e for e, _, _ in curves}))}, hidden layers, checkpoints): "
                 f"{min(slopes):.3f} … {max(slopes):.3f} (−0.5 ± 0.05 required)")


def claim_unbiased_tens(df: pd.DataFrame) -> Claim:
    """After training, the paper's unbiased estimators (reinforce, arm) need at least
    :data:`TENS_OF_SAMPLES` samples to reach PSA's one-sample rrmse, in every hidden layer."""
    text = "unbiased methods need tens of samples to match one PSA sample after training"
    ckpts, layers = _checkpoints(df), _hidden_layers(df)
    if not ckpts or "psa" not in set(df["estimator"]):
        return Claim(text, None, "the run lacks psa")
    last = ckpts[-1]
    needs = []
    for est, layer, sel in _unbiased_curves(df, last, layers):
        target = _rrmse(df, last, "psa", layer, 1)
        hit = sel[sel["value"] <= target]
        needs.append((est, layer, float(hit["M"].iloc[0]) if len(hit) else math.inf))
    judged = [n for n in needs if n[0] in PAPER_ESTIMATORS]
    if not judged:
        return Claim(text, None, "the run lacks the paper's unbiased estimators (reinforce, arm)")

    m_max = int(_values(df, "rrmse")["M"].max())

    def fmt(n: tuple[str, str, float]) -> str:
        return f"{n[0]} L{n[1]} {'>' + str(m_max) if math.isinf(n[2]) else f'{n[2]:g}'}"

    extra = [n for n in needs if n[0] not in PAPER_ESTIMATORS]
    ev = (f"samples M to reach psa's rrmse(M=1) at {last}: " + ", ".join(map(fmt, judged))
          + f" (judged: the paper's reinforce and arm, ≥ {TENS_OF_SAMPLES} in every hidden layer)")
    if extra:
        ev += "; for information, sbn-bench's extras: " + ", ".join(map(fmt, extra))
    return Claim(text, bool(all(m >= TENS_OF_SAMPLES for _, _, m in judged)), ev)


def claim_tanh_degrades(df: pd.DataFrame) -> Claim:
    """tanh's relative bias grows at least :data:`TANH_DEGRADE_RATIO`× from the first to the last
    checkpoint in every hidden layer."""
    text = "tanh degrades badly after training"
    ckpts, layers = _checkpoints(df), _hidden_layers(df)
    if len(ckpts) < 2 or not layers or "tanh" not in set(df["estimator"]):
        return Claim(text, None, "the run needs tanh at two checkpoints")
    first, last = ckpts[0], ckpts[-1]
    b0 = _hidden_rel_bias(df, first, "tanh", layers)
    b1 = _hidden_rel_bias(df, last, "tanh", layers)
    if not (np.isfinite(b0).all() and np.isfinite(b1).all()):
        return Claim(text, None, "tanh relative bias missing")
    ok = all(y >= TANH_DEGRADE_RATIO * x for x, y in zip(b0, b1))
    return Claim(text, bool(ok), f"tanh relative bias (= its rrmse) per hidden layer, {first} → "
                 f"{last}: " + ", ".join(f"L{layer} {x:.3g} → {y:.3g}"
                                         for layer, x, y in zip(layers, b0, b1))
                 + f" (degrading badly: ≥ {TANH_DEGRADE_RATIO}× in every hidden layer)")


def evaluate_claims(metrics: pd.DataFrame) -> list[Claim]:
    """Decide each of SPEC §6's claims from a run's tidy metrics table.

    SPEC §6's four sentences are split into seven checkable statements; each is judged on the
    paper's seven estimators (:data:`PAPER_ESTIMATORS`), whatever else the run measured, and its
    criterion is fixed in its function's docstring.
    """
    return [claim_psa_lowest(metrics), claim_st_close(metrics), claim_st_bias_depth(metrics),
            claim_st_bias_training(metrics), claim_unbiased_rate(metrics),
            claim_unbiased_tens(metrics), claim_tanh_degrades(metrics)]


# --------------------------------------------------------------------------------------------
# the end-to-end experiment: cached training checkpoints, then the run


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where trained checkpoints are cached: ``cache_dir``, else ``$SBN_BENCH_CACHE``, else
    ``~/.cache/sbn-bench``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SBN_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sbn-bench"


def _training_key(seed: int, training: dict[str, Any]) -> str:
    blob = json.dumps({"problem": problems.paper_problem(seed).fingerprint(), "seed": seed,
                       "training": {k: list(v) if isinstance(v, tuple) else v
                                    for k, v in training.items()},
                       "sbn_bench": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainedCheckpoints:
    """The paper's training checkpoints.

    Attributes:
        paths: ``{"epoch1": file, "epoch100": file, "epoch2000": file}`` problem files.
        directory: the cache folder holding them, ``train_log.csv`` and ``loss_curve.png``.
        cached: True when they were reused from an earlier run.
        train_wall_s: wall time of the training run that made them (measured then).
    """

    paths: dict[str, Path]
    directory: Path
    cached: bool
    train_wall_s: float


def ensure_checkpoints(seed: int = 0, *, training: dict[str, Any] | None = None,
                       cache_dir: str | os.PathLike[str] | None = None,
                       progress: Callable[[str], None] | None = None) -> TrainedCheckpoints:
    """Train the paper's network with REINFORCE (SPEC §6) to its checkpoints, or reuse the cache.

    The cache folder is keyed by the problem's fingerprint, the training settings, the seed and
    the sbn-bench version; training writes into a temporary folder renamed into place at the end,
    so an interrupted training leaves no half-written cache.
    """
    training = dict(TRAINING if training is None else training)
    epochs = tuple(training["checkpoints"])
    root = cache_root(cache_dir)
    final = root / f"paper-seed{seed}-{_training_key(seed, training)}"
    paths = {checkpoint_label(e): final / f"checkpoint_epoch{e}.npz" for e in epochs}
    manifest = final / "train_manifest.json"
    if manifest.is_file() and all(p.is_file() for p in paths.values()):
        wall = _cached_wall_time(manifest)
        if wall is not None:
            return TrainedCheckpoints(paths, final, True, wall)
        if progress:
            progress(f"the cached training in {final} is damaged ({manifest.name} is not a training "
                     "manifest); training again")
        shutil.rmtree(final, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", suffix=".tmp", dir=root))
    try:
        if progress:
            progress(f"training the paper net with REINFORCE for {training['epochs']} epochs "
                     f"(cached in {final} for later runs)")
        t0 = time.perf_counter()
        train(problems.paper_problem(seed), training["estimator"],
              optimizer=training["optimizer"], lr=training["lr"], momentum=training["momentum"],
              batch_size=training["batch_size"], epochs=training["epochs"], checkpoints=epochs,
              seed=seed, out_dir=tmp, log_every=max(1, training["epochs"] // 200))
        wall = time.perf_counter() - t0
        if final.exists():  # another process finished first: keep its result
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.chmod(tmp, dir_mode())  # mkdtemp makes 0700
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TrainedCheckpoints(paths, final, False, wall)


def _cached_wall_time(manifest: Path) -> float | None:
    """The training time a cached training manifest records, or None when the file is not a
    training manifest (unreadable, invalid JSON, not an object, no time)."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    wall = data.get("wall_s") if isinstance(data, dict) else None
    return float(wall) if isinstance(wall, (int, float)) and not isinstance(wall, bool) else None


def paper_config(checkpoints: TrainedCheckpoints, *, seed: int = 0, out: str,
                 samples: int = SAMPLES, estimators: Sequence[str] | None = None,
                 M: Sequence[int] | None = None, **settings: Any) -> RunConfig:
    """The :class:`~sbn_bench.config.RunConfig` of the paper's experiment at given checkpoints.

    Defaults: the paper's seven estimators plus :data:`EXTRA_ESTIMATORS`, ``S = 20 000``, the
    paper's M grid (up to ``S``). ``settings`` are passed on to ``RunConfig``.
    """
    spec = ProblemSpec(preset="paper", seed=seed, name="paper",
                       checkpoints=tuple(Checkpoint(label, str(path))
                                         for label, path in checkpoints.paths.items()))
    grid = tuple(M) if M is not None else paper_m_grid(samples)
    return RunConfig(problems=(spec,), estimators=tuple(estimators or PAPER_ESTIMATORS
                                                        + EXTRA_ESTIMATORS),
                     samples=samples, M=grid, seeds=(seed,), out=out, **settings)


def run_paper(*, seed: int = 0, out: str | os.PathLike[str], samples: int = SAMPLES,
              estimators: Sequence[str] | None = None, M: Sequence[int] | None = None,
              cache_dir: str | os.PathLike[str] | None = None, training: dict[str, Any] | None = None,
              progress: Any = None, message: Callable[[str], None] | None = None,
              warn: Callable[[str], None] | None = None, report: bool = True,
              **settings: Any) -> RunResult:
    """SPEC §6 end to end: train (or reuse) the checkpoints, run the estimators, record timings.

    The run folder gets ``training/`` (the checkpoints, training log, loss curve and manifest),
    the manifest an ``experiment`` entry with the training and evaluation wall times, and
    (``report=True``) the report, with the claims section (:func:`sbn_bench.reports.write_report`).

    Returns:
        The :class:`~sbn_bench.runner.RunResult`.
    """
    t0 = time.perf_counter()
    ckpts = ensure_checkpoints(seed, training=training, cache_dir=cache_dir, progress=message)
    t_train = time.perf_counter() - t0
    config = paper_config(ckpts, seed=seed, out=str(out), samples=samples,
                          estimators=estimators, M=M, **settings)
    t1 = time.perf_counter()
    result = run(config, progress=progress, warn=warn)
    t_eval = time.perf_counter() - t1
    train_dir = Path(out) / "training"
    train_dir.mkdir(parents=True, exist_ok=True)
    names = ["train_log.csv", "loss_curve.png", "train_manifest.json",
             *(p.name for p in ckpts.paths.values())]
    for name in names:  # the run folder holds its checkpoints: the cache may be cleared
        if (ckpts.directory / name).is_file():
            shutil.copyfile(ckpts.directory / name, train_dir / name)
    manifest_path = Path(out) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["experiment"] = {
        "name": "paper",
        "training": {**{k: list(v) if isinstance(v, tuple) else v
                        for k, v in (training or TRAINING).items()},
                     "seed": seed, "cached": ckpts.cached, "cache_dir": str(ckpts.directory),
                     "train_wall_s": round(ckpts.train_wall_s, 3)},
        "timing": {"training_s_this_run": round(t_train, 3),
                   "evaluation_s": round(t_eval, 3),
                   "total_s_this_run": round(t_train + t_eval, 3),
                   "total_s_with_training": round(ckpts.train_wall_s + t_eval, 3)},
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    result.manifest.update(manifest)
    if report:
        write_report(out, sections=[ClaimsSection()])
    return result


# --------------------------------------------------------------------------------------------
# the report section of a paper run


def _training_table(run_dir: Path, manifest: dict[str, Any]) -> list[tuple[str, str]]:
    log = run_dir / "training" / "train_log.csv"
    if not log.is_file():
        return []
    df = pd.read_csv(log)
    epochs = ((manifest.get("experiment") or {}).get("training") or {}).get(
        "checkpoints", TRAINING["checkpoints"])
    rows = []
    for e in [0, *epochs]:
        sel = df[df["epoch"] == e]
        if len(sel) and np.isfinite(sel["exact_objective"].iloc[0]):
            rows.append((f"epoch {e}", f"{float(sel['exact_objective'].iloc[0]):.4f}"))
    return rows


def _experiment_facts(manifest: dict[str, Any]) -> list[str]:
    exp = manifest.get("experiment") or {}
    tr, tm = exp.get("training") or {}, exp.get("timing") or {}
    facts = []
    if tm:
        facts.append(f"wall time on {manifest.get('device', {}).get('type', '?')}: training "
                     f"{tr.get('train_wall_s', math.nan):.0f} s"
                     f"{' (reused from the cache in this run)' if tr.get('cached') else ''}, "
                     f"evaluation {tm.get('evaluation_s', math.nan):.0f} s, total "
                     f"{tm.get('total_s_with_training', math.nan):.0f} s "
                     f"({manifest.get('device', {}).get('torch_threads', '?')} torch threads)")
    if tr:
        facts.append(f"training: {tr.get('estimator')} one sample per point, batch "
                     f"{tr.get('batch_size')}, {tr.get('optimizer')} lr {tr.get('lr')} momentum "
                     f"{tr.get('momentum')}, {tr.get('epochs')} epochs, seed {tr.get('seed')}")
    return facts


DIFFERENCES = (
    "The checkpoints come from our own REINFORCE training run, not the paper's: the data are a "
    "fresh draw from SPEC §6's distribution, the initial weights and the training noise come "
    "from our seeds, and the initial rescaling uses 100 sampled states per data point (README). "
    "The paper does not publish its objective values; ours are in the table below, so the "
    "trained networks, and with them every number of this report, differ from the paper's figure "
    "in detail. The claims are about orderings and trends, which is what this section checks.")


_VERDICT = {True: "confirmed", False: "not confirmed", None: "undecided"}


class ClaimsSection:
    """The report section of a paper run (``sbn-bench run --preset paper``): each claim's verdict
    with its evidence, where the checkpoints differ from the paper's, the training's objective and
    loss curve. Registered in the entry-point group ``sbn_bench.report_sections``."""

    name = "paper-claims"

    def applies(self, run: Run) -> bool:
        return is_paper_run(run.manifest)

    def blocks(self, run: Run) -> list[Block]:
        claims = evaluate_claims(run.metrics)
        rows = [[TableCell(c.claim), TableCell(_VERDICT[c.confirmed], c.confirmed is False),
                 TableCell(c.evidence)] for c in claims]
        out: list[Block] = [
            Heading("The paper's claims (SPEC §6)"),
            Text("Each verdict is computed from this run's `metrics.csv` by "
                 "`sbn_bench.paper.evaluate_claims`."),
            Table("", ["paper's claim", "this run", "evidence"], rows, anchor="paper-claims"),
            Heading("Where these checkpoints differ from the paper's", 3),
            Text(DIFFERENCES)]
        facts = _experiment_facts(run.manifest)
        if facts:
            out.append(Bullets(facts))
        trows = _training_table(run.path, run.manifest)
        if trows:
            out.append(Table("", ["checkpoint", "exact objective J"],
                             [[TableCell(a), TableCell(b)] for a, b in trows],
                             anchor="paper-training"))
        curve = run.path / "training" / "loss_curve.png"
        if curve.is_file():
            out.append(Image(curve, "training loss curve"))
        return out


def is_paper_run(manifest: dict[str, Any]) -> bool:
    return (manifest.get("experiment") or {}).get("name") == "paper"

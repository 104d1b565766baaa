"""The paper's gradient-accuracy experiment (SPEC §6): its settings and the evaluation of its claims.

The claims are decided from a run's tidy ``metrics.csv`` (never written by hand): each
:class:`Claim` says whether this run confirms it and gives the numbers that decide it.

References:
    Shekhovtsov, Yanush, Flach. "Path Sample-Analytic Gradient Estimators for Stochastic Binary
    Networks". NeurIPS 2020, §5 and Fig. 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

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


def m_grid() -> list[int]:
    """The paper's sample counts: 1..9, 10..90, 100..900, 1000..9000."""
    return [m * 10**e for e in range(4) for m in range(1, 10)]


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
    return sorted({str(x) for x in df["layer"] if str(x).isdigit()}, key=int)


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
    ev = f"closest case: {worst[1]} (ratio best-other/psa = {worst[0]:.3g})"
    if losses:
        ev += f"; psa is beaten in {len(losses)} cells, e.g. " + "; ".join(losses[:3])
    return Claim(text, ok, ev)


def claim_st_close_then_biased(df: pd.DataFrame) -> Claim:
    """ST is close to PSA at initialisation; its bias grows with depth and with training."""
    text = ("ST is close to PSA at initialisation, but its bias grows with depth and with "
            "training")
    ckpts = _checkpoints(df)
    layers = _hidden_layers(df)
    if not ckpts or not layers or "st" not in set(df["estimator"]):
        return Claim(text, None, "the run has no st results")
    first, last = ckpts[0], ckpts[-1]
    ratios = [_rrmse(df, first, "st", layer, 1) / _rrmse(df, first, "psa", layer, 1)
              for layer in layers]
    close = all(r <= ST_CLOSE_RATIO for r in ratios)
    bias_first = [_scalar(df, "rel_bias", first, "st", layer) for layer in layers]
    bias_last = [_scalar(df, "rel_bias", last, "st", layer) for layer in layers]
    # depth: the first hidden layer is the deepest from the output; bias should not decrease
    # going down the network (layer L → 1) at the last checkpoint
    deeper = all(a >= b for a, b in zip(bias_last[:-1], bias_last[1:]))
    trained = np.nanmean(bias_last) > np.nanmean(bias_first)
    ok = bool(close and deeper and trained) if len(ckpts) > 1 else None
    ev = (f"rrmse(M=1) st/psa at {first}: "
          + ", ".join(f"layer {layer} {r:.3g}" for layer, r in zip(layers, ratios))
          + f" (close means ≤ {ST_CLOSE_RATIO}); st relative bias at {last} from layer 1 to "
          + f"{layers[-1]}: " + ", ".join(f"{b:.3g}" for b in bias_last)
          + f"; mean over layers {np.nanmean(bias_first):.3g} at {first} → "
          + f"{np.nanmean(bias_last):.3g} at {last}")
    return Claim(text, ok, ev)


def claim_unbiased_slow(df: pd.DataFrame) -> Claim:
    """Unbiased methods fall as M^(−1/2) and need tens of samples to match one PSA sample after
    training."""
    text = ("unbiased methods fall as M^(−1/2) and need tens of samples to match one PSA sample "
            "after training")
    ckpts = _checkpoints(df)
    layers = _hidden_layers(df)
    present = [e for e in UNBIASED if e in set(df["estimator"])]
    if not ckpts or not present or "psa" not in set(df["estimator"]):
        return Claim(text, None, "the run lacks unbiased estimators or psa")
    last = ckpts[-1]
    rr = _values(df, "rrmse")
    slopes, needs = [], []
    for est in present:
        for layer in layers:
            sel = rr[(rr["checkpoint"].astype(str) == last) & (rr["estimator"] == est)
                     & (rr["layer"].astype(str) == layer)].sort_values("M")
            sel = sel[np.isfinite(sel["value"]) & (sel["value"] > 0)]
            if len(sel) < 2:
                continue
            slope = np.polyfit(np.log(sel["M"].astype(float)), np.log(sel["value"]), 1)[0]
            slopes.append(slope)
            target = _rrmse(df, last, "psa", layer, 1)
            hit = sel[sel["value"] <= target]
            m_star = float(hit["M"].iloc[0]) if len(hit) else math.inf
            needs.append((est, layer, m_star))
    if not slopes:
        return Claim(text, None, "no rrmse curves of unbiased estimators")
    slope_ok = all(abs(s + 0.5) <= 0.05 for s in slopes)
    tens_ok = all(m >= TENS_OF_SAMPLES for _, _, m in needs)
    ev = (f"log-log slopes of rrmse vs M at {last}: {min(slopes):.3f} … {max(slopes):.3f} "
          f"(−0.5 ± 0.05 required); samples needed to reach psa's rrmse at M=1: "
          + ", ".join(f"{e} L{layer} {'>' + str(max(m_grid())) if math.isinf(m) else f'{m:g}'}"
                      for e, layer, m in needs))
    return Claim(text, bool(slope_ok and tens_ok), ev)


def claim_tanh_degrades(df: pd.DataFrame) -> Claim:
    """tanh (mean field) degrades badly after training."""
    text = "tanh degrades badly after training"
    ckpts = _checkpoints(df)
    if len(ckpts) < 2 or "tanh" not in set(df["estimator"]):
        return Claim(text, None, "the run needs tanh at two checkpoints")
    first, last = ckpts[0], ckpts[-1]
    b0 = _scalar(df, "rel_bias", first, "tanh", "all")
    b1 = _scalar(df, "rel_bias", last, "tanh", "all")
    ok = bool(b1 >= TANH_DEGRADE_RATIO * b0) if np.isfinite(b0) and np.isfinite(b1) else None
    return Claim(text, ok, f"tanh relative bias (all parameters) {b0:.3g} at {first} → {b1:.3g} at "
                           f"{last} (degrading badly means ≥ {TANH_DEGRADE_RATIO}×)")


def evaluate_claims(metrics: pd.DataFrame) -> list[Claim]:
    """Decide each of SPEC §6's claims from a run's tidy metrics table."""
    return [claim_psa_lowest(metrics), claim_st_close_then_biased(metrics),
            claim_unbiased_slow(metrics), claim_tanh_degrades(metrics)]


def claims_markdown(claims: list[Claim]) -> str:
    """A Markdown table of the claims with verdicts and evidence."""
    verdict = {True: "confirmed", False: "**not confirmed**", None: "undecided"}
    lines = ["| paper's claim | this run | evidence |", "|---|---|---|"]
    lines += [f"| {c.claim} | {verdict[c.confirmed]} | {c.evidence} |" for c in claims]
    return "\n".join(lines) + "\n"

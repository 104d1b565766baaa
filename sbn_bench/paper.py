"""The paper's gradient-accuracy experiment (SPEC §6): its settings and the evaluation of its claims.

The claims are decided from a run's tidy ``metrics.csv`` (never written by hand) with the
standard errors of the values they compare: each :class:`Claim` is *confirmed*, *not confirmed* or
*inconclusive* (the uncertainty allows either answer), with the numbers that decide it and its
criterion. :func:`run_paper` with ``train_seeds`` repeats the experiment over independent trainings;
the report then counts each claim's verdicts over them. The published reproduction is regenerated
by :data:`REGENERATE`.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from sbn_bench.errors import ArgumentError
from sbn_bench.fileio import atomic_write_bytes, atomic_write_text, dir_mode
from sbn_bench.metrics import SQUARED_METRICS, hidden_layers
from sbn_bench.reports import write_report
from sbn_bench.reports.load import Run
from sbn_bench.reports.ranking import ROUND_ABS, ROUND_REL, TIE_Z, Estimate
from sbn_bench.reports.sections import Block, Bullets, Details, Heading, Image, Text
from sbn_bench.reports.tables import Table, TableCell
from sbn_bench.storage import TRAINING_MANIFEST
from sbn_bench.version import __version__

# The claims and the report section read tables only; the experiment's functions import the model,
# the problems, the runner and the training where they run (so a report does not load torch).
if TYPE_CHECKING:
    from sbn_bench.config import RunConfig
    from sbn_bench.runner import RunResult

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


# --------------------------------------------------------------------------------------------
# the claims, decided with their uncertainty

Verdict = Literal["confirmed", "not confirmed", "inconclusive", "no data"]
VERDICTS: tuple[Verdict, ...] = ("confirmed", "not confirmed", "inconclusive", "no data")
"""A claim is *confirmed* or *not confirmed* when the standard errors allow only one answer,
*inconclusive* when they allow either, and has *no data* when the run lacks what it needs."""

Z = TIE_Z
"""Standard errors of every verdict's interval (2: about 95 % two-sided for Gaussian errors)."""


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims and what this run says about it.

    Attributes:
        claim: the claim, as the paper states it.
        verdict: ``confirmed``, ``not confirmed``, ``inconclusive`` (the standard errors allow
            either) or ``no data``.
        evidence: the numbers that decide it.
        criterion: how it is decided, including how the uncertainty is used.
    """

    claim: str
    verdict: Verdict
    evidence: str
    criterion: str = ""

    @property
    def confirmed(self) -> bool | None:
        """True / False for a definite verdict, None when inconclusive or without data."""
        return {"confirmed": True, "not confirmed": False}.get(self.verdict)


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """The verdict of a claim that needs every part: not confirmed if any part is, confirmed if
    all are, inconclusive otherwise (``no data`` without parts)."""
    parts = [v for v in verdicts if v != "no data"]
    if not parts:
        return "no data"
    if "not confirmed" in parts:
        return "not confirmed"
    return "confirmed" if all(v == "confirmed" for v in parts) else "inconclusive"


def above(x: float, threshold: float, se: float) -> Verdict:
    """``x > threshold`` given the standard error ``se`` of ``x``: confirmed when the whole
    interval ``x ± Z·se`` lies above, not confirmed when it lies at or below, inconclusive when it
    straddles the threshold. Exact values (``se = 0``) are compared as they are (ties to
    round-off are inconclusive)."""
    if not (math.isfinite(x) and math.isfinite(threshold)):
        return "no data" if math.isnan(x) or math.isnan(threshold) else \
            ("confirmed" if x > threshold else "not confirmed")
    se = se if math.isfinite(se) and se > 0 else 0.0
    tol = ROUND_ABS + ROUND_REL * max(abs(x), abs(threshold)) if se == 0 else 0.0
    if x - Z * se > threshold + tol:
        return "confirmed"
    if x + Z * se < threshold - tol:
        return "not confirmed"
    return "inconclusive"  # the interval straddles the threshold (exact: equal to round-off)


def below(x: float, threshold: float, se: float) -> Verdict:
    """``x < threshold`` given the standard error of ``x`` (see :func:`above`)."""
    return above(-x, -threshold, se)


def _ratio_se(a: Estimate, b: Estimate) -> tuple[float, float]:
    """``a/b`` and its standard error by the delta method (independent errors)."""
    if b.value == 0:
        return math.inf, math.inf
    r = a.value / b.value
    rel = math.hypot(a.uncertainty / a.value if a.value else 0.0,
                     b.uncertainty / b.value if b.value else 0.0)
    return r, abs(r) * rel


def _fmt_se(x: float, se: float) -> str:
    return f"{x:.3g}" if not (math.isfinite(se) and se > 0) else f"{x:.3g} ± {se:.2g}"


class ClaimData:
    """The rows of one problem, indexed: ``(checkpoint, estimator, layer, metric, M or None) →
    Estimate``; built once and shared by every claim (:func:`evaluate_claims`)."""

    def __init__(self, df: pd.DataFrame) -> None:
        self.df = df
        self.values: dict[tuple[str, str, str, str, float | None], Estimate] = {}
        se = df["stderr"] if "stderr" in df.columns else pd.Series(0.0, index=df.index)
        mode = df["mode"] if "mode" in df.columns else pd.Series("exact", index=df.index)
        for c, e, lay, met, m, v, u, md in zip(df["checkpoint"].astype(str), df["estimator"],
                                               df["layer"].astype(str), df["metric"], df["M"],
                                               df["value"], se, mode):
            key = (c, e, lay, met, None if m is None or (isinstance(m, float) and math.isnan(m))
                   else float(m))
            self.values[key] = Estimate(float(v), float(u) if u == u else math.nan, str(md),
                                        squared=met in SQUARED_METRICS)
        self.checkpoints = _checkpoints(df)
        self.layers = _hidden_layers(df)
        self.estimators = set(df["estimator"])
        self.m_grid = sorted({k[4] for k in self.values if k[3] == "rrmse" and k[4] is not None})

    def get(self, ckpt: str, est: str, layer: str, metric: str, m: float | None = None
            ) -> Estimate | None:
        return self.values.get((ckpt, est, layer, metric, None if m is None else float(m)))

    def curve(self, ckpt: str, est: str, layer: str) -> list[tuple[float, Estimate]]:
        """``[(M, rrmse(M))]`` sorted by M."""
        out = [(m, self.values[(ckpt, est, layer, "rrmse", m)]) for m in self.m_grid
               if (ckpt, est, layer, "rrmse", m) in self.values]
        return [(m, v) for m, v in out if v.finite]


def _data(df: pd.DataFrame | ClaimData) -> ClaimData:
    return df if isinstance(df, ClaimData) else ClaimData(df)


def _hidden_layers(df: pd.DataFrame) -> list[str]:
    return hidden_layers(df["layer"].astype(str))


def _ckpt_epoch(label: str) -> int | None:
    digits = "".join(ch for ch in str(label) if ch.isdigit())
    return int(digits) if digits else None


def _checkpoints(df: pd.DataFrame) -> list[str]:
    labels = sorted({str(c) for c in df["checkpoint"]},
                    key=lambda c: (_ckpt_epoch(c) is None, _ckpt_epoch(c) or 0, c))
    return labels


def claim_psa_lowest(df: pd.DataFrame | ClaimData) -> Claim:
    """PSA has the lowest rrmse in every hidden layer for M ≤ 100, at every checkpoint, among the
    paper's seven estimators: in each (checkpoint, layer, M) psa must be below every other
    estimator by more than :data:`Z` combined standard errors. A run without some of the seven
    can refute the claim but not confirm it (inconclusive at best; the evidence names those
    missing)."""
    text = "PSA has the lowest error in every hidden layer for M ≤ 100"
    crit = (f"every (checkpoint, hidden layer, M ≤ 100): psa's rrmse below each other paper "
            f"estimator's by more than {Z:g}·√(se_psa² + se_other²); not confirmed if any is below "
            f"psa's by more than that; inconclusive otherwise")
    ix = _data(df)
    others = [e for e in PAPER_ESTIMATORS if e != "psa" and e in ix.estimators]
    if "psa" not in ix.estimators or not others:
        return Claim(text, "no data", "the run has no rrmse of psa and another estimator", crit)
    missing = [e for e in PAPER_ESTIMATORS if e != "psa" and e not in ix.estimators]
    cells: list[tuple[str, Verdict, float, str]] = []
    short: set[str] = set()  # cells where psa beat every estimator present, not all seven had a value
    for ck in ix.checkpoints:
        for layer in ix.layers:
            for m in [m for m in ix.m_grid if m <= 100]:
                p = ix.get(ck, "psa", layer, "rrmse", m)
                if p is None or not p.finite:
                    continue
                parts: list[Verdict] = []
                worst = (math.inf, "")
                absent = len(missing)
                for e in others:
                    o = ix.get(ck, e, layer, "rrmse", m)
                    if o is None or not o.finite:
                        absent += 1
                        continue
                    u = math.hypot(o.uncertainty, p.uncertainty)
                    parts.append(above(o.value - p.value, 0.0, u))
                    if o.value / p.value < worst[0]:
                        worst = (o.value / p.value, f"{e} {_fmt_se(o.value, o.uncertainty)}")
                if parts:
                    v = combine(parts)
                    if absent and v == "confirmed":  # beats those present, not all seven (one
                        v = "inconclusive"           # not run, or its cell failed)
                        short.add(f"{ck}/L{layer}/M={m:g}")
                    cells.append((f"{ck}/L{layer}/M={m:g}", v, worst[0],
                                  f"{ck}/L{layer}/M={m:g}: {worst[1]} vs psa "
                                  f"{_fmt_se(p.value, p.uncertainty)}"))
    if not cells:
        return Claim(text, "no data", "no comparable cells", crit)
    verdict = combine([c[1] for c in cells])
    worst = min(cells, key=lambda c: c[2])
    counts = {v: sum(1 for c in cells if c[1] == v) for v in VERDICTS}
    ev = f"psa lowest beyond the errors in {counts['confirmed']} of {len(cells)} cells"
    if short:  # counted as undecided: psa beat every estimator with a value, but not all seven had one
        ev += (f", lowest beyond the errors among those with a value in {len(short)} more (undecided: "
               f"not all seven have one)")
    ev += (f", beaten in {counts['not confirmed']}, undecided within the errors in "
           f"{counts['inconclusive'] - len(short)}; worst case {worst[3]} (best other / psa = "
           f"{worst[2]:.3g})")
    beaten = [c[3] for c in cells if c[1] == "not confirmed"]
    if beaten:
        ev += "; beaten e.g. " + "; ".join(beaten[:3])
    undecided = [c[3] for c in cells if c[1] == "inconclusive" and c[0] not in short]
    if undecided and not beaten:
        ev += "; undecided e.g. " + "; ".join(undecided[:2])
    if missing:  # lowest among the seven: a subset can refute the claim, never confirm it
        ev += (f"; compared with {', '.join(others)} only ({', '.join(missing)} not in the run)")
    elif short:
        ev += f"; in {len(short)} cell(s) some of the seven have no value (a failed cell)"
    return Claim(text, verdict, ev, crit)


def claim_st_close(df: pd.DataFrame | ClaimData) -> Claim:
    """ST's rrmse(M=1) is within :data:`ST_CLOSE_RATIO` of PSA's in every hidden layer at the first
    checkpoint: the ratio's interval ``r ± Z·se(r)`` (delta method) must lie at or below it."""
    text = "ST is close to PSA at initialisation"
    crit = (f"at the first checkpoint, every hidden layer: rrmse(M=1) st/psa = r with "
            f"r + {Z:g}·se(r) ≤ {ST_CLOSE_RATIO} (delta-method se); not confirmed if any "
            f"r − {Z:g}·se(r) > {ST_CLOSE_RATIO}")
    ix = _data(df)
    if not ix.checkpoints or not ix.layers or not {"st", "psa"} <= ix.estimators:
        return Claim(text, "no data", "the run has no st and psa results", crit)
    first = ix.checkpoints[0]
    parts, shown = [], []
    for layer in ix.layers:
        st, psa = ix.get(first, "st", layer, "rrmse", 1), ix.get(first, "psa", layer, "rrmse", 1)
        if st is None or psa is None or not (st.finite and psa.finite):
            continue
        r, se = _ratio_se(st, psa)
        parts.append(below(r, ST_CLOSE_RATIO, se) if r != ST_CLOSE_RATIO else "inconclusive")
        shown.append(f"layer {layer} {_fmt_se(r, se)}")
    if not parts:
        return Claim(text, "no data", f"no rrmse at M=1 of st and psa at {first}", crit)
    return Claim(text, combine(parts), f"rrmse(M=1) st/psa at {first}: " + ", ".join(shown), crit)


def _bias(ix: ClaimData, ck: str, est: str, layer: str) -> Estimate | None:
    b = ix.get(ck, est, layer, "rel_bias")
    return b if b is not None and b.finite else None


def claim_st_bias_depth(df: pd.DataFrame | ClaimData) -> Claim:
    """ST's relative bias grows from the last hidden layer down to the first (the deepest from the
    output), at the last checkpoint: each layer's bias above the next one's by more than
    :data:`Z` combined standard errors."""
    text = "ST's bias grows with depth (from the last hidden layer down to the first)"
    crit = (f"at the last checkpoint, each hidden layer k: st's rel. bias b_k − b_(k+1) > "
            f"{Z:g}·√(se_k² + se_(k+1)²); not confirmed if any difference is below −{Z:g}·√(…)")
    ix = _data(df)
    if not ix.checkpoints or len(ix.layers) < 2 or "st" not in ix.estimators:
        return Claim(text, "no data", "the run needs st in two or more hidden layers", crit)
    parts_txt = []
    for c in dict.fromkeys((ix.checkpoints[0], ix.checkpoints[-1])):
        bs = [_bias(ix, c, "st", layer) for layer in ix.layers]
        parts_txt.append(f"{c}: " + ", ".join(f"L{layer} {_fmt_se(b.value, b.uncertainty)}"
                                             if b else f"L{layer} —" for layer, b in zip(ix.layers, bs)))
    last = [_bias(ix, ix.checkpoints[-1], "st", layer) for layer in ix.layers]
    if any(b is None for b in last):
        return Claim(text, "no data", "st relative bias missing at the last checkpoint", crit)
    verdicts = [above(a.value - b.value, 0.0, math.hypot(a.uncertainty, b.uncertainty))  # type: ignore[union-attr]
                for a, b in zip(last[:-1], last[1:])]
    return Claim(text, combine(verdicts), "st relative bias per hidden layer, " + "; ".join(parts_txt)
                 + f" (judged at {ix.checkpoints[-1]})", crit)


def claim_st_bias_training(df: pd.DataFrame | ClaimData) -> Claim:
    """ST's mean hidden-layer relative bias is larger at the last checkpoint than at the first, by
    more than :data:`Z` standard errors of the difference."""
    text = "ST's bias grows with training"
    crit = (f"mean over hidden layers of st's rel. bias, last − first checkpoint > {Z:g} s.e. of "
            f"the difference; not confirmed if < −{Z:g} s.e.")
    ix = _data(df)
    if len(ix.checkpoints) < 2 or not ix.layers or "st" not in ix.estimators:
        return Claim(text, "no data", "the run needs st at two checkpoints", crit)
    means = []
    for c in ix.checkpoints:
        bs = [_bias(ix, c, "st", layer) for layer in ix.layers]
        bs = [b for b in bs if b is not None]
        if not bs:
            return Claim(text, "no data", f"st relative bias missing at {c}", crit)
        means.append((sum(b.value for b in bs) / len(bs),
                      math.sqrt(sum(b.uncertainty**2 for b in bs)) / len(bs)))
    d = means[-1][0] - means[0][0]
    se = math.hypot(means[-1][1], means[0][1])
    return Claim(text, above(d, 0.0, se), "st relative bias, mean over hidden layers: "
                 + " → ".join(f"{_fmt_se(m, u)} ({c})" for (m, u), c in zip(means, ix.checkpoints))
                 + f"; difference {_fmt_se(d, se)}", crit)


def _slope(ms: Sequence[float], ys: Sequence[float]) -> float:
    return float(np.polyfit(np.log(np.asarray(ms, float)), np.log(np.asarray(ys, float)), 1)[0])


def unbiased_slope(ix: ClaimData, ck: str, est: str, layer: str
                   ) -> tuple[float, float, float] | None:
    """The log-log slope of rrmse against M of one curve and its interval.

    The slope of ``rrmse(M) = √(b² + v/M)`` (SPEC §5, relative to ‖g‖) depends on the bias ``b``
    alone once ``v = rrmse(M₀)² − b²`` is fixed by the stored curve: the interval is the slope with
    ``b`` at its ``± Z`` standard-error limits (clipped at 0), the point the stored curve's fit.

    Returns:
        ``(slope, lowest, highest)`` or None without at least two points.
    """
    curve = [(m, v) for m, v in ix.curve(ck, est, layer) if v.value > 0]
    if len(curve) < 2:
        return None
    ms = [m for m, _ in curve]
    point = _slope(ms, [v.value for _, v in curve])
    b = _bias(ix, ck, est, layer)
    if b is None:
        return point, point, point
    m0, r0 = curve[0][0], curve[0][1].value
    v = max(m0 * (r0**2 - max(b.value, 0.0) ** 2), 0.0)
    u = b.uncertainty if math.isfinite(b.uncertainty) else 0.0

    def slope_at(bias: float) -> float:
        return _slope(ms, [math.sqrt(bias**2 + v / m) for m in ms]) if v > 0 or bias > 0 else point

    lo_b, hi_b = max(b.value - Z * u, 0.0), b.value + Z * u
    s_hi, s_lo = slope_at(lo_b), slope_at(hi_b)  # more bias: a flatter (higher) slope
    return point, min(s_lo, s_hi, point), max(s_lo, s_hi, point)


SLOPE_TOLERANCE = 0.05
"""``unbiased methods fall as M^(−1/2)``: a slope within ``−½ ± SLOPE_TOLERANCE``."""


def claim_unbiased_rate(df: pd.DataFrame | ClaimData) -> Claim:
    """The rrmse of the paper's unbiased estimators falls as M^(−1/2): each curve's slope interval
    (:func:`unbiased_slope`) inside ``−½ ± SLOPE_TOLERANCE``; not confirmed when an interval lies
    wholly outside it."""
    text = "unbiased methods fall as M^(−1/2)"
    lo_t, hi_t = -0.5 - SLOPE_TOLERANCE, -0.5 + SLOPE_TOLERANCE
    crit = (f"each rrmse-vs-M curve of reinforce and arm (hidden layers, every checkpoint): the "
            f"log-log slope with the bias at its ±{Z:g} s.e. limits lies in −0.5 ± "
            f"{SLOPE_TOLERANCE}; not confirmed if that slope interval lies wholly outside")
    ix = _data(df)
    judged: list[tuple[str, Verdict, tuple[float, float, float]]] = []
    for ck in ix.checkpoints:
        for est in [e for e in UNBIASED if e in PAPER_ESTIMATORS and e in ix.estimators]:
            for layer in ix.layers:
                s = unbiased_slope(ix, ck, est, layer)
                if s is None:
                    continue
                _, lo, hi = s
                if lo_t <= lo and hi <= hi_t:
                    verdict: Verdict = "confirmed"
                elif hi < lo_t or lo > hi_t:
                    verdict = "not confirmed"
                else:
                    verdict = "inconclusive"
                judged.append((f"{est} L{layer} {ck}", verdict, s))
    if not judged:
        return Claim(text, "no data", "no rrmse curves of the paper's unbiased estimators", crit)
    counts = {v: sum(1 for j in judged if j[1] == v) for v in VERDICTS}
    points = [j[2][0] for j in judged]
    ev = (f"{len(judged)} curves, point slopes {min(points):.3f} … {max(points):.3f}; within "
          f"−0.5 ± {SLOPE_TOLERANCE} given the bias's uncertainty in {counts['confirmed']}, outside in "
          f"{counts['not confirmed']}, undecided in {counts['inconclusive']}")
    off = [j for j in judged if j[1] != "confirmed"]
    if off:
        ev += "; e.g. " + "; ".join(f"{name} {s[0]:.3f} [{s[1]:.3f}, {s[2]:.3f}]"
                                   for name, _, s in sorted(off, key=lambda j: j[1])[:3])
    return Claim(text, *_all_unbiased(combine([j[1] for j in judged]), ev, ix), crit)


def _all_unbiased(verdict: Verdict, evidence: str, ix: ClaimData) -> tuple[Verdict, str]:
    """A claim about the paper's unbiased estimators (reinforce and arm) judged on a run without
    one of them: it can refute the claim, not confirm it (inconclusive at best); the evidence
    names the one missing."""
    missing = [e for e in UNBIASED if e in PAPER_ESTIMATORS and e not in ix.estimators]
    if not missing:
        return verdict, evidence
    evidence += (f"; {', '.join(missing)} not in the run (a claim about reinforce and arm: a run "
                 f"without one can refute it, not confirm it)")
    return ("inconclusive" if verdict == "confirmed" else verdict), evidence


def claim_unbiased_tens(df: pd.DataFrame | ClaimData) -> Claim:
    """After training, the paper's unbiased estimators (reinforce, arm) need at least
    :data:`TENS_OF_SAMPLES` samples to reach PSA's one-sample rrmse, in every hidden layer: with
    the largest M below that in the run's grid, their rrmse must still be above psa's rrmse(M=1)
    by more than :data:`Z` combined standard errors; not confirmed when some M below it is below
    psa's by more than that."""
    text = "unbiased methods need tens of samples to match one PSA sample after training"
    crit = (f"at the last checkpoint, each hidden layer, reinforce and arm: rrmse(M) − psa's "
            f"rrmse(1) > {Z:g}·√(se² + se_psa²) at the largest M < {TENS_OF_SAMPLES} of the grid; "
            f"not confirmed if it is < −{Z:g}·√(…) at some M < {TENS_OF_SAMPLES}")
    ix = _data(df)
    if not ix.checkpoints or "psa" not in ix.estimators:
        return Claim(text, "no data", "the run lacks psa", crit)
    last = ix.checkpoints[-1]
    below_tens = [m for m in ix.m_grid if m < TENS_OF_SAMPLES]
    if not below_tens:
        return Claim(text, "no data", f"the run's M grid has no M below {TENS_OF_SAMPLES}", crit)
    m_top = below_tens[-1]
    verdicts: list[Verdict] = []
    shown, extra = [], []
    for est in [e for e in UNBIASED if e in ix.estimators]:
        for layer in ix.layers:
            t = ix.get(last, "psa", layer, "rrmse", 1)
            curve = ix.curve(last, est, layer)
            if t is None or not t.finite or not curve:
                continue
            hit = [m for m, v in curve if v.value <= t.value]
            m_hit = f"{hit[0]:g}" if hit else f">{curve[-1][0]:g}"
            if est not in PAPER_ESTIMATORS:
                extra.append(f"{est} L{layer} {m_hit}")
                continue
            parts: list[Verdict] = []
            for m, v in curve:
                if m >= TENS_OF_SAMPLES:
                    continue
                u = math.hypot(v.uncertainty, t.uncertainty)
                if below(v.value, t.value, u) == "confirmed":
                    parts.append("not confirmed")  # matched psa with fewer than tens of samples
            at_top = dict(curve).get(m_top)
            if not parts and at_top is not None:
                # not significantly below psa at any M < tens (else "not confirmed" above): is it
                # still significantly above at the largest one?
                v = above(at_top.value, t.value, math.hypot(at_top.uncertainty, t.uncertainty))
                if v == "confirmed" and m_top < TENS_OF_SAMPLES - 1:
                    v = "inconclusive"  # the grid cannot tell M = m_top+1 … 9 apart
                parts.append(v)
            verdicts.append(combine(parts) if parts else "inconclusive")
            shown.append(f"{est} L{layer} {m_hit}")
    if not verdicts:
        return Claim(text, "no data", "the run lacks the paper's unbiased estimators (reinforce, arm)",
                     crit)
    ev = (f"first M in the grid where the rrmse falls to psa's rrmse(M=1) at {last}: "
          + ", ".join(shown) + f" (judged at M = {m_top:g})")
    if extra:
        ev += "; for information, sbn-bench's extras: " + ", ".join(extra)
    return Claim(text, *_all_unbiased(combine(verdicts), ev, ix), crit)


def claim_tanh_degrades(df: pd.DataFrame | ClaimData) -> Claim:
    """tanh's relative bias grows at least :data:`TANH_DEGRADE_RATIO`× from the first to the last
    checkpoint in every hidden layer: the ratio's interval ``r ± Z·se(r)`` at or above it."""
    text = "tanh degrades badly after training"
    crit = (f"every hidden layer: tanh's rel. bias last/first checkpoint = r with r − {Z:g}·se(r) "
            f"≥ {TANH_DEGRADE_RATIO} (delta-method se; tanh is deterministic, so se = 0 in exact "
            f"mode); not confirmed if any r + {Z:g}·se(r) < {TANH_DEGRADE_RATIO}")
    ix = _data(df)
    if len(ix.checkpoints) < 2 or not ix.layers or "tanh" not in ix.estimators:
        return Claim(text, "no data", "the run needs tanh at two checkpoints", crit)
    first, last = ix.checkpoints[0], ix.checkpoints[-1]
    parts: list[Verdict] = []
    shown = []
    for layer in ix.layers:
        b0, b1 = _bias(ix, first, "tanh", layer), _bias(ix, last, "tanh", layer)
        if b0 is None or b1 is None:
            return Claim(text, "no data", "tanh relative bias missing", crit)
        r, se = _ratio_se(b1, b0)
        v = above(r, TANH_DEGRADE_RATIO, se)
        parts.append("confirmed" if v == "inconclusive" and r == TANH_DEGRADE_RATIO and se == 0 else v)
        shown.append(f"L{layer} {b0.value:.3g} → {b1.value:.3g} (×{_fmt_se(r, se)})")
    return Claim(text, combine(parts), f"tanh relative bias (= its rrmse) per hidden layer, {first} → "
                 f"{last}: " + ", ".join(shown), crit)


CLAIMS: tuple[Callable[[pd.DataFrame | ClaimData], Claim], ...] = (
    claim_psa_lowest, claim_st_close, claim_st_bias_depth, claim_st_bias_training,
    claim_unbiased_rate, claim_unbiased_tens, claim_tanh_degrades)
"""SPEC §6's four sentences split into seven checkable statements, in the report's order."""


def evaluate_claims(metrics: pd.DataFrame) -> list[Claim]:
    """Decide each of SPEC §6's claims from the tidy metrics of **one** problem (one checkpoint
    set); :func:`evaluate_claims_by_problem` for a run with several (e.g. training seeds).

    Each is judged on the paper's seven estimators (:data:`PAPER_ESTIMATORS`), whatever else the
    run measured, with the standard errors of the values it uses (:data:`Z`); its criterion is
    fixed in its function's docstring and stated in :attr:`Claim.criterion`.

    Raises:
        ArgumentError: ``metrics`` holds more than one problem.
    """
    if "problem" in metrics.columns and metrics["problem"].nunique() > 1:
        names = ", ".join(map(str, pd.unique(metrics["problem"])))
        raise ArgumentError(f"metrics hold several problems ({names}): decide the claims per "
                            "problem with evaluate_claims_by_problem", argument="metrics",
                            value=names, expected="the rows of one problem")
    data = ClaimData(metrics)
    return [claim(data) for claim in CLAIMS]


def evaluate_claims_by_problem(metrics: pd.DataFrame) -> dict[str, list[Claim]]:
    """:func:`evaluate_claims` for each problem of a run, in run order."""
    return {str(p): evaluate_claims(g) for p, g in metrics.groupby("problem", sort=False)}


def verdict_count(verdicts: Sequence[Verdict]) -> str:
    """``"confirmed in 3 of 5, inconclusive in 1, not confirmed in 1"``."""
    n = len(verdicts)
    parts = [f"{v} in {sum(1 for x in verdicts if x == v)}" for v in VERDICTS
             if any(x == v for x in verdicts)]
    if not parts:
        return "no data"
    return f"{parts[0]} of {n}" + "".join(f", {p}" for p in parts[1:])


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
    from sbn_bench import model, problems

    blob = json.dumps({"problem": problems.paper_problem(seed).fingerprint(), "seed": seed,
                       "training": {k: list(v) if isinstance(v, tuple) else v
                                    for k, v in training.items()},
                       "sbn_bench": __version__, "stream": model.STREAM_VERSION},
                      sort_keys=True)
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


def paper_training(training: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The training settings: :data:`TRAINING` with the keys of ``training`` replaced.

    Raises:
        ArgumentError: ``training`` is not a mapping, or has a key :data:`TRAINING` does not.
    """
    expected = f"keys among {', '.join(TRAINING)}"
    if training is not None and not isinstance(training, Mapping):
        raise ArgumentError(f"argument training={training!r} must be a dict of training settings",
                            argument="training", value=training, expected=expected)
    unknown = sorted(set(training or {}) - set(TRAINING))
    if unknown:
        raise ArgumentError(f"argument training has unknown keys {unknown}; expected {expected} (the "
                            "others keep the paper's values)", argument="training", value=unknown,
                            expected=expected)
    return {**TRAINING, **(training or {})}


def ensure_checkpoints(seed: int = 0, *, training: dict[str, Any] | None = None,
                       cache_dir: str | os.PathLike[str] | None = None,
                       progress: Callable[[str], None] | None = None) -> TrainedCheckpoints:
    """Train the paper's network with REINFORCE (SPEC §6) to its checkpoints, or reuse the cache.

    The cache folder is keyed by the problem's fingerprint, the training settings, the seed, the
    sbn-bench version and the random stream's version (:data:`sbn_bench.model.STREAM_VERSION`:
    checkpoints trained from another stream are not reused); training writes into a temporary
    folder renamed into place at the end, so an interrupted training leaves no half-written cache.
    """
    from sbn_bench import problems
    from sbn_bench.train import train

    training = paper_training(training)
    epochs = tuple(training["checkpoints"])
    root = cache_root(cache_dir)
    final = root / f"paper-seed{seed}-{_training_key(seed, training)}"
    paths = {checkpoint_label(e): final / f"checkpoint_epoch{e}.npz" for e in epochs}
    manifest = final / TRAINING_MANIFEST
    if manifest.is_file() and all(p.is_file() for p in paths.values()):
        wall = _cached_wall_time(manifest)
        damaged = f"{manifest.name} is not a training manifest" if wall is None else \
            _unreadable_checkpoint(paths.values())
        if damaged is None:
            return TrainedCheckpoints(paths, final, True, wall)
        if progress:
            progress(f"the cached training in {final} is damaged ({damaged}); training again")
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


def _unreadable_checkpoint(paths: Iterable[Path]) -> str | None:
    """Why a cached checkpoint cannot be used (the first one that does not load as a problem
    file), or None when all load."""
    from sbn_bench import problems

    for p in paths:
        try:
            problems.load_problem(p)
        except problems.ProblemError as e:
            return f"{p.name}: {e}"
    return None


def _cached_wall_time(manifest: Path) -> float | None:
    """The training time a cached training manifest records, or None when the file is not a
    training manifest (unreadable, invalid JSON, not an object, no time)."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    wall = data.get("wall_s") if isinstance(data, dict) else None
    return float(wall) if isinstance(wall, (int, float)) and not isinstance(wall, bool) else None


REGENERATE = "sbn-bench run --preset paper --train-seeds 0-4 --out reports/paper-5-5-5"
"""The one command that regenerates the published reproduction ``reports/paper-5-5-5/``: five
independent training runs (seeds 0 … 4), each evaluated at its three checkpoints."""


def problem_name(train_seed: int | None) -> str:
    """The problem's name in a paper run: ``paper`` for the single default training,
    ``paper-train<seed>`` per training seed when ``train_seeds`` are given."""
    return "paper" if train_seed is None else f"paper-train{train_seed}"


def paper_config(checkpoints: TrainedCheckpoints | Mapping[int, TrainedCheckpoints], *,
                 seed: int = 0, out: str, samples: int = SAMPLES,
                 estimators: Sequence[str] | None = None, M: Sequence[int] | None = None,
                 **settings: Any) -> RunConfig:
    """The :class:`~sbn_bench.config.RunConfig` of the paper's experiment at given checkpoints.

    Args:
        checkpoints: one training's checkpoints (problem ``paper``), or ``{train_seed:
            checkpoints}`` (one problem ``paper-train<seed>`` each, :func:`problem_name`).
        seed: the sampling seed of the evaluation.

    Defaults: the paper's seven estimators plus :data:`EXTRA_ESTIMATORS`, ``S = 20 000``, the
    paper's M grid (up to ``S``). ``settings`` are passed on to ``RunConfig``.
    """
    from sbn_bench.config import Checkpoint, ProblemSpec, RunConfig, paper_m_grid

    sets: list[tuple[int | None, int, TrainedCheckpoints]] = (
        [(None, seed, checkpoints)] if isinstance(checkpoints, TrainedCheckpoints)
        else [(s, s, c) for s, c in checkpoints.items()])
    specs = tuple(ProblemSpec(preset="paper", seed=data_seed, name=problem_name(train_seed),
                              checkpoints=tuple(Checkpoint(label, str(path))
                                                for label, path in ck.paths.items()))
                  for train_seed, data_seed, ck in sets)
    grid = tuple(M) if M is not None else paper_m_grid(samples)
    return RunConfig(problems=specs, estimators=tuple(estimators or PAPER_ESTIMATORS
                                                      + EXTRA_ESTIMATORS),
                     samples=samples, M=grid, seeds=(seed,), out=out, **settings)


def check_train_seeds(train_seeds: Sequence[int]) -> tuple[int, ...]:
    """``train_seeds`` as a tuple, refused when empty, repeated or not whole numbers ≥ 0."""
    from sbn_bench.config import MAX_SEEDS, seed_tuple

    try:
        seeds = seed_tuple(train_seeds)
    except ValueError as e:
        raise ArgumentError(f"train_seeds {e}", argument="train_seeds",
                            expected=f"≤ {MAX_SEEDS} seeds") from None
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if not seeds or bad or len(set(seeds)) != len(seeds):
        raise ArgumentError(f"train_seeds={list(seeds)!r}: expected distinct whole numbers ≥ 0, "
                            "e.g. [0, 1, 2, 3, 4]", argument="train_seeds", value=list(seeds),
                            expected="distinct integers ≥ 0")
    return seeds


def run_paper(*, seed: int = 0, out: str | os.PathLike[str], samples: int = SAMPLES,
              estimators: Sequence[str] | None = None, M: Sequence[int] | None = None,
              cache_dir: str | os.PathLike[str] | None = None, training: dict[str, Any] | None = None,
              train_seeds: Sequence[int] | None = None,
              progress: Any = None, message: Callable[[str], None] | None = None,
              warn: Callable[[str], None] | None = None, report: bool = True,
              **settings: Any) -> RunResult:
    """SPEC §6 end to end: train (or reuse) the checkpoints, run the estimators, record timings.

    Args:
        seed: the data, initial weights and training noise of the single default training (problem
            ``paper``), and the evaluation's sampling seed.
        train_seeds: several independent trainings instead, one per seed (data, initial weights
            and training noise from that seed, each cached apart), evaluated in one run as problems
            ``paper-train<seed>`` (:func:`problem_name`); the report then gives each claim's
            verdict per training seed and their count.

    The run folder gets ``training/`` (per training seed ``training/train<seed>/``: the
    checkpoints, training log, loss curve and manifest), the manifest an ``experiment`` entry with
    the training and evaluation wall times, and (``report=True``) the report, with the claims
    section (:func:`sbn_bench.reports.write_report`).

    Returns:
        The :class:`~sbn_bench.runner.RunResult`.
    """
    from sbn_bench.runner import run

    seeds = None if train_seeds is None else check_train_seeds(train_seeds)
    training = paper_training(training)
    t0 = time.perf_counter()
    trained = {s: ensure_checkpoints(s, training=training, cache_dir=cache_dir, progress=message)
               for s in (seeds if seeds is not None else (seed,))}
    t_train = time.perf_counter() - t0
    config = paper_config(trained if seeds is not None else trained[seed], seed=seed, out=str(out),
                          samples=samples, estimators=estimators, M=M, **settings)
    earlier = _earlier_evaluation_s(Path(out)) if config.resume else 0.0
    t1 = time.perf_counter()
    result = run(config, progress=progress, warn=warn)
    t_eval = time.perf_counter() - t1
    records = []
    for s, ck in trained.items():
        sub = Path("training") if seeds is None else Path("training") / f"train{s}"
        (Path(out) / sub).mkdir(parents=True, exist_ok=True)
        names = ["train_log.csv", "loss_curve.png", TRAINING_MANIFEST,
                 *(p.name for p in ck.paths.values())]
        for name in names:  # the run folder holds its checkpoints: the cache may be cleared
            if (ck.directory / name).is_file():  # whole or not at all, as every file of a run
                atomic_write_bytes(Path(out) / sub / name, (ck.directory / name).read_bytes())
        records.append({"train_seed": s, "problem": problem_name(s if seeds is not None else None),
                        "cached": ck.cached, "cache_dir": str(ck.directory),
                        "train_wall_s": round(ck.train_wall_s, 3), "dir": sub.as_posix()})
    train_wall = sum(ck.train_wall_s for ck in trained.values())
    manifest_path = Path(out) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["experiment"] = {
        "name": "paper",
        "train_seeds": list(seeds) if seeds is not None else None,
        "training": {**{k: list(v) if isinstance(v, tuple) else v
                        for k, v in training.items()},
                     "seed": seed if seeds is None else None,
                     "cached": all(ck.cached for ck in trained.values()),
                     "cache_dir": str(trained[seed].directory) if seeds is None else None,
                     "train_wall_s": round(train_wall, 3), "runs": records},
        # evaluation_s: every session's (a resume adds its own, which is all it spent)
        "timing": {"training_s_this_run": round(t_train, 3),
                   "evaluation_s": round(earlier + t_eval, 3),
                   "evaluation_s_this_run": round(t_eval, 3),
                   "total_s_this_run": round(t_train + t_eval, 3),
                   "total_s_with_training": round(train_wall + earlier + t_eval, 3)},
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    result.manifest.update(manifest)
    if report:
        write_report(out, sections=[ClaimsSection()])
    return result


def _earlier_evaluation_s(out: Path) -> float:
    """The evaluation seconds an earlier session of the run in ``out`` recorded (0 if none)."""
    try:
        old = json.loads((out / "manifest.json").read_text())
        value = float(old["experiment"]["timing"]["evaluation_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
    return value if math.isfinite(value) and value >= 0 else 0.0


# --------------------------------------------------------------------------------------------
# the report section of a paper run


def training_runs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The trainings of a paper run (``{train_seed, problem, dir, cached, train_wall_s, …}``),
    also for runs written before training seeds existed (one training in ``training/``)."""
    tr = (manifest.get("experiment") or {}).get("training") or {}
    runs = tr.get("runs")
    if isinstance(runs, list) and runs:
        return [r for r in runs if isinstance(r, dict)]
    return [{"train_seed": tr.get("seed"), "problem": "paper", "dir": "training",
             "cached": tr.get("cached"), "train_wall_s": tr.get("train_wall_s")}]


def _objectives(run_dir: Path, manifest: dict[str, Any], sub: str) -> dict[int, float]:
    """``{epoch: exact objective}`` at epoch 0 and the checkpoints, from a training log."""
    log = run_dir / sub / "train_log.csv"
    if not log.is_file():
        return {}
    df = pd.read_csv(log)
    epochs = ((manifest.get("experiment") or {}).get("training") or {}).get(
        "checkpoints", TRAINING["checkpoints"])
    out = {}
    for e in [0, *epochs]:
        sel = df[df["epoch"] == e]
        if len(sel) and np.isfinite(sel["exact_objective"].iloc[0]):
            out[int(e)] = float(sel["exact_objective"].iloc[0])
    return out


def _training_table(run_dir: Path, manifest: dict[str, Any]) -> Table | None:
    """The exact objective J at epoch 0 and each checkpoint, one column per training."""
    runs = training_runs(manifest)
    cols = [(r.get("problem", "paper"), _objectives(run_dir, manifest, str(r.get("dir", "training"))))
            for r in runs]
    cols = [(name, obj) for name, obj in cols if obj]
    if not cols:
        return None
    epochs = sorted({e for _, obj in cols for e in obj})
    rows = [[TableCell(f"epoch {e}", sort=float(e))]
            + [TableCell(f"{obj[e]:.4f}" if e in obj else "—", sort=obj.get(e)) for _, obj in cols]
            for e in epochs]
    header = ["checkpoint"] + (["exact objective J"] if len(cols) == 1
                               else [f"J, {name}" for name, _ in cols])
    return Table("", header, rows, anchor="paper-training")


def _seconds(record: dict[str, Any]) -> float:
    w = record.get("train_wall_s")
    return float(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else math.nan


def _experiment_facts(manifest: dict[str, Any]) -> list[str]:
    exp = manifest.get("experiment") or {}
    tr, tm = exp.get("training") or {}, exp.get("timing") or {}
    device = manifest.get("device") if isinstance(manifest.get("device"), dict) else {}
    facts = []
    if tm:
        where = device.get("type", "?") + (f" ({device['cpu']})" if device.get("type") == "cpu"
                                           and device.get("cpu") else "")
        threads = device.get("torch_threads", "?")
        threads = f"{threads} torch thread{'' if threads == 1 else 's'}"
        runs = training_runs(manifest)
        now = [r for r in runs if not r.get("cached")]  # trained by this run: part of its time
        cached = [r for r in runs if r.get("cached")]  # trained by an earlier one: not
        evaluation = float(tm.get("evaluation_s", math.nan))
        parts = []
        if now:
            spent = sum(_seconds(r) for r in now)
            parts.append(f"training {spent:.0f} s" + (f" ({len(now)} trainings)" if len(now) > 1 else ""))
        parts.append(f"evaluation {evaluation:.0f} s")
        if now:
            parts.append(f"total {spent + evaluation:.0f} s")
        fact = f"wall time on {where}: " + ", ".join(parts) + f" ({threads})"
        if cached:
            which = ("the training" if len(runs) == 1 else f"{len(cached)} of the {len(runs)} trainings"
                     if now else f"the {len(runs)} trainings")
            fact += (f"; {which} came from the cache (made earlier, in "
                     + ", ".join(f"{_seconds(r):.0f} s" for r in cached) + ")")
        facts.append(fact)
    if tr:
        seeds = exp.get("train_seeds")
        which = (f"training seeds {', '.join(map(str, seeds))}" if seeds
                 else f"seed {tr.get('seed')}")
        facts.append(f"training: {tr.get('estimator')} one sample per point, batch "
                     f"{tr.get('batch_size')}, {tr.get('optimizer')} lr {tr.get('lr')} momentum "
                     f"{tr.get('momentum')}, {tr.get('epochs')} epochs, {which}")
    return facts


DIFFERENCES = (
    "The checkpoints come from our own REINFORCE training runs, not the paper's: the data are a "
    "fresh draw from SPEC §6's distribution, the initial weights and the training noise come "
    "from our seeds, and the initial rescaling uses 100 sampled states per data point (README). "
    "The paper does not publish its objective values; ours are in the table below, so the "
    "trained networks, and with them every number of this report, differ from the paper's figure "
    "in detail. The claims are about orderings and trends, which is what this section checks.")

VERDICT_LEGEND = (
    f"Verdicts use the standard errors of the values they compare ({Z:g} s.e., about 95 %): "
    "**confirmed** or **not confirmed** when the uncertainty allows only that answer, "
    "*inconclusive* when it allows either, `no data` when the run lacks the values. Exact-mode "
    "values have no sampling error. Each claim's criterion says how its uncertainty is used.")


_TONE = {"confirmed": "good", "not confirmed": "bad", "inconclusive": "unsure", "no data": ""}


def _verdict_cell(verdict: Verdict) -> TableCell:
    """A verdict: bold when not confirmed, italic when inconclusive (Markdown), coloured (HTML)."""
    return TableCell(verdict, strong=verdict == "not confirmed", tie=verdict == "inconclusive",
                     tone=_TONE[verdict])


class ClaimsSection:
    """The report section of a paper run (``sbn-bench run --preset paper``): each claim's verdict
    with its evidence and criterion (per training seed, with their count, when the run has several),
    where the checkpoints differ from the paper's, the trainings' objectives and loss curves.
    Registered in the entry-point group ``sbn_bench.report_sections``."""

    name = "paper-claims"

    def applies(self, run: Run) -> bool:
        return is_paper_run(run.manifest)

    def blocks(self, run: Run) -> list[Block]:
        by_problem = evaluate_claims_by_problem(run.metrics)
        problems = [p for p in run.problems() if p in by_problem]
        out: list[Block] = [
            Heading("The paper's claims (SPEC §6)"),
            Text("Each verdict is computed from this run's `metrics.csv` by "
                 "`sbn_bench.paper.evaluate_claims`. " + VERDICT_LEGEND)]
        if len(problems) == 1:
            claims = by_problem[problems[0]]
            out.append(Table("", ["paper's claim", "this run", "evidence", "criterion"],
                             [[TableCell(c.claim), _verdict_cell(c.verdict), TableCell(c.evidence),
                               TableCell(c.criterion)] for c in claims], anchor="paper-claims"))
        elif problems:
            first = by_problem[problems[0]]
            rows = []
            for i, c in enumerate(first):
                verdicts = [by_problem[p][i].verdict for p in problems]
                rows.append([TableCell(c.claim)] + [_verdict_cell(v) for v in verdicts]
                            + [TableCell(verdict_count(verdicts)), TableCell(c.criterion)])
            out += [Text(f"One column per independent training ({len(problems)} training seeds), "
                         "then the count over them."),
                    Table("", ["paper's claim", *problems, "across training seeds", "criterion"], rows,
                          anchor="paper-claims")]
            for p in problems:
                out.append(Details(f"Evidence · {p}", [Table(
                    "", ["paper's claim", "verdict", "evidence"],
                    [[TableCell(c.claim), _verdict_cell(c.verdict), TableCell(c.evidence)]
                     for c in by_problem[p]], anchor=f"paper-claims-{p}")], level=4))
        out += [Heading("Where these checkpoints differ from the paper's", 3), Text(DIFFERENCES)]
        facts = _experiment_facts(run.manifest)
        if facts:
            out.append(Bullets(facts))
        table = _training_table(run.path, run.manifest)
        if table is not None:
            out.append(table)
        curves = [(r.get("problem", "paper"), run.path / str(r.get("dir", "training")) / "loss_curve.png")
                  for r in training_runs(run.manifest)]
        images: list[Block] = [Image(path, f"training loss curve, {name}") for name, path in curves
                               if path.is_file()]
        if len(images) == 1:
            out += images
        elif images:
            out.append(Details("Training loss curves", images, level=4))
        return out


def is_paper_run(manifest: dict[str, Any]) -> bool:
    return (manifest.get("experiment") or {}).get("name") == "paper"

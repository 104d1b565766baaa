"""The claim-evaluation logic of the paper report, on synthetic tidy tables built from closed forms.

Each table is made from a bias and a variance per (checkpoint, estimator, layer), with
rrmse(M) = √(β² + V/M)/‖g‖ as SPEC §5 defines it, so every verdict can be worked out by hand.
Values are exact (standard error 0) unless a test gives them a Monte-Carlo standard error: then
a verdict is confirmed or not confirmed only when its interval (``paper.Z`` = 2 standard errors)
allows one answer, inconclusive otherwise.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sbn_bench import paper
from sbn_bench.config import paper_m_grid
from sbn_bench.errors import ArgumentError

LAYERS = ["1", "2", "3"]
CKPTS = ["epoch1", "epoch100", "epoch2000"]


def _table(spec: dict[tuple[str, str], tuple[float, float]], ckpts: list[str]) -> pd.DataFrame:
    """spec[(ckpt, est)] = (relative bias, relative variance) used for every layer, except that
    the bias of biased estimators is scaled by (4 − layer) so that deeper layers have more."""
    rows = []
    for (ckpt, est), (rb, rv) in spec.items():
        assert ckpt in ckpts
        for layer in [*LAYERS, "all"]:
            scale = (4 - int(layer)) if layer.isdigit() else 1
            b = rb * scale
            rows.append(dict(checkpoint=ckpt, estimator=est, layer=layer, metric="rel_bias",
                             M=math.nan, value=b, stderr=0.0, mode="exact"))
            for M in paper_m_grid():
                rows.append(dict(checkpoint=ckpt, estimator=est, layer=layer, metric="rrmse", M=M,
                                 value=math.sqrt(b**2 + rv / M), stderr=0.0, mode="exact"))
    df = pd.DataFrame(rows)
    df["problem"] = "paper"
    return df


def _paperlike(psa_bias: float = 0.01, tanh_late: float = 0.9) -> pd.DataFrame:
    spec = {}
    for c, late in zip(CKPTS, [0.0, 0.5, 1.0]):
        spec[(c, "psa")] = (psa_bias, 0.01)
        spec[(c, "st")] = (0.02 + 0.1 * late, 0.012)
        spec[(c, "reinforce")] = (0.0, 4.0)
        spec[(c, "arm")] = (0.0, 1.0)
        spec[(c, "tanh")] = (0.2 + late * (tanh_late - 0.2), 0.0)
        spec[(c, "concrete:tau=0.1")] = (0.05, 0.5)
        spec[(c, "concrete:tau=1.0")] = (0.04, 0.3)
    return _table(spec, CKPTS)


def _sel(df: pd.DataFrame, **where) -> pd.Series:
    sel = pd.Series(True, index=df.index)
    for k, v in where.items():
        sel &= df[k] == v
    return sel


def _mc(df: pd.DataFrame, sel: pd.Series, stderr: float) -> None:
    df.loc[sel, "stderr"] = stderr
    df.loc[sel, "mode"] = "mc"


def test_all_claims_confirmed_on_a_paperlike_table() -> None:
    claims = paper.evaluate_claims(_paperlike())
    assert [c.verdict for c in claims] == ["confirmed"] * 7, claims
    assert all(c.criterion for c in claims) and all(c.confirmed is True for c in claims)


def test_psa_lowest_needs_the_seven_estimators_to_be_confirmed() -> None:
    """Lowest among the paper's seven: a run with psa and st alone (``--estimators st,psa``) was
    "confirmed"; it is inconclusive and names those not run. A subset still refutes it."""
    full = _paperlike()
    pair = full[full.estimator.isin(["psa", "st"])]
    claim = paper.claim_psa_lowest(pair)
    assert claim.verdict == "inconclusive", claim
    assert "compared with st only (reinforce, arm, concrete:tau=0.1, concrete:tau=1.0, tanh not in " \
           "the run)" in claim.evidence
    assert "not in the run" not in paper.claim_psa_lowest(full).evidence
    worse = pair.copy()
    sel = (worse.estimator == "psa") & (worse.metric == "rrmse")
    worse.loc[sel, "value"] *= 10  # st far below psa
    assert paper.claim_psa_lowest(worse).verdict == "not confirmed"
    # one of the seven present but its cells at one checkpoint failed (no rows there)
    failed = full[~((full.estimator == "arm") & (full.checkpoint == "epoch100"))]
    claim = paper.claim_psa_lowest(failed)
    assert claim.verdict == "inconclusive" and "some of the seven have no value" in claim.evidence


def test_claims_on_reinforce_and_arm_need_both_to_be_confirmed() -> None:
    """A run without arm judged "unbiased methods fall as M^(−1/2)" and "tens of samples" on
    reinforce alone and confirmed them; they are inconclusive and name arm. A subset still refutes."""
    full = _paperlike()
    no_arm = full[full.estimator != "arm"]
    for claim in (paper.claim_unbiased_rate, paper.claim_unbiased_tens):
        assert claim(full).verdict == "confirmed" and "not in the run" not in claim(full).evidence
        c = claim(no_arm)
        assert c.verdict == "inconclusive" and "arm not in the run" in c.evidence, c
    refuted = paper.claim_unbiased_tens(_paperlike(psa_bias=0.3)[lambda d: d.estimator != "arm"])
    assert refuted.verdict in ("not confirmed", "inconclusive")  # never confirmed from a subset


def test_psa_lowest_among_those_run_is_counted_apart() -> None:
    """psa, st and reinforce only: every cell has psa lowest among those run; the evidence says so
    instead of "lowest in 0 of N, undecided in N"."""
    sub = _paperlike()[lambda d: d.estimator.isin(["psa", "st", "reinforce"])]
    c = paper.claim_psa_lowest(sub)
    n = int(c.evidence.split(" of ")[1].split(" cells")[0])
    assert c.verdict == "inconclusive"
    assert c.evidence.startswith(f"psa lowest beyond the errors in 0 of {n} cells, lowest beyond the "
                                 f"errors among those with a value in {n} more"), c.evidence
    assert "undecided within the errors in 0" in c.evidence
    assert "undecided e.g." not in c.evidence  # those cells are psa's wins among the three


def test_claims_without_data_say_so() -> None:
    empty = _paperlike()
    empty = empty[empty.estimator == "concrete:tau=0.1"]
    claims = paper.evaluate_claims(empty)
    assert [c.verdict for c in claims] == ["no data"] * 7
    assert all(c.confirmed is None for c in claims)


def test_verdict_rules() -> None:
    assert paper.above(1.0, 0.5, 0.2) == "confirmed"            # 1 − 2·0.2 = 0.6 > 0.5
    assert paper.above(1.0, 0.5, 0.3) == "inconclusive"         # 0.4 … 1.6 straddles 0.5
    assert paper.above(0.0, 0.5, 0.2) == "not confirmed"        # 0 + 0.4 < 0.5
    assert paper.above(0.5 + 1e-15, 0.5, 0.0) == "inconclusive"  # exact, equal to round-off
    assert paper.above(0.6, 0.5, 0.0) == "confirmed"
    assert paper.below(0.4, 0.5, 0.0) == "confirmed"
    assert paper.combine(["confirmed", "inconclusive"]) == "inconclusive"
    assert paper.combine(["confirmed", "inconclusive", "not confirmed"]) == "not confirmed"
    assert paper.combine(["confirmed", "no data"]) == "confirmed"
    assert paper.combine([]) == "no data"


def test_verdict_count_reads_as_a_sentence() -> None:
    vs = ["confirmed", "confirmed", "inconclusive", "not confirmed", "confirmed"]
    assert paper.verdict_count(vs) == "confirmed in 3 of 5, not confirmed in 1, inconclusive in 1"
    assert paper.verdict_count(["inconclusive"] * 2) == "inconclusive in 2 of 2"


def test_psa_lowest_fails_when_another_estimator_is_better() -> None:
    # psa bias 0.3 (× 3 in layer 1) exceeds arm's rrmse sqrt(1/M) already at M = 100? arm at
    # M=100: 0.1; psa layer 3: sqrt(0.09 + 0.01/100) ≈ 0.3 > 0.1, so psa is beaten.
    c = paper.claim_psa_lowest(_paperlike(psa_bias=0.3))
    assert c.verdict == "not confirmed" and "beaten in" in c.evidence


def test_psa_lowest_is_inconclusive_within_the_errors() -> None:
    # st's rrmse at epoch1, layer 3, M = 1 set 1 % above psa's, with a standard error of 2 %:
    # psa is not lower beyond 2 s.e. there, nor beaten
    df = _paperlike()
    psa = df.loc[_sel(df, estimator="psa", checkpoint="epoch1", layer="3", metric="rrmse", M=1.0),
                 "value"].item()
    sel = _sel(df, estimator="st", checkpoint="epoch1", layer="3", metric="rrmse", M=1.0)
    df.loc[sel, "value"] = psa * 1.01
    _mc(df, sel, 0.02 * psa)
    c = paper.claim_psa_lowest(df)
    assert c.verdict == "inconclusive" and "undecided within the errors in 1" in c.evidence, c


def test_tanh_claim_not_confirmed_without_degradation() -> None:
    c = paper.claim_tanh_degrades(_paperlike(tanh_late=0.3))
    assert c.verdict == "not confirmed", c


def test_tanh_claim_inconclusive_when_the_ratio_interval_straddles_the_threshold() -> None:
    # layer 3: bias 0.2 → 0.9 (ratio 4.5); with s.e. 0.35 on the last value the ratio's interval
    # is 4.5 ± 2·(0.35/0.2)… ≥ 2 is no longer certain
    df = _paperlike()
    sel = _sel(df, estimator="tanh", checkpoint="epoch2000", layer="3", metric="rel_bias")
    _mc(df, sel, 0.35)
    assert paper.claim_tanh_degrades(df).verdict == "inconclusive"
    _mc(df, sel, 0.05)  # ratio 4.5 ± 0.5: confirmed
    assert paper.claim_tanh_degrades(df).verdict == "confirmed"


def test_unbiased_claim_needs_tens_of_samples() -> None:
    # arm's rrmse sqrt(1/M) reaches psa's M=1 rrmse sqrt(0.01²+0.01)≈0.1005 at M=99 (≥ 10):
    # confirmed; with psa variance 0.5 it reaches it at M=2: not confirmed.
    assert paper.claim_unbiased_tens(_paperlike()).verdict == "confirmed"
    df = _paperlike()
    psa_m1 = math.sqrt(0.01**2 + 0.5)
    df.loc[_sel(df, estimator="psa", metric="rrmse", M=1.0), "value"] = psa_m1
    assert paper.claim_unbiased_tens(df).verdict == "not confirmed"


def test_unbiased_tens_is_inconclusive_when_the_errors_overlap() -> None:
    # psa's rrmse(1) made equal to arm's rrmse at M = 9 (1/3) with a standard error: neither
    # "still worse at 9 samples" nor "better with fewer than 10" holds beyond 2 s.e.
    df = _paperlike()
    sel = _sel(df, estimator="psa", metric="rrmse", M=1.0, checkpoint="epoch2000")
    df.loc[sel, "value"] = 1 / 3 * 0.98
    _mc(df, sel, 0.02)
    assert paper.claim_unbiased_tens(df).verdict == "inconclusive"


def test_st_depth_and_training_claims_follow_the_biases() -> None:
    df = _paperlike()
    assert paper.claim_st_bias_depth(df).verdict == "confirmed"
    assert paper.claim_st_bias_training(df).verdict == "confirmed"
    # reverse the depth order of st's bias at the last checkpoint: layer 3 now has the most
    sel = _sel(df, estimator="st", metric="rel_bias", checkpoint="epoch2000")
    for layer, scale in (("1", 1 / 3), ("3", 3.0)):
        df.loc[sel & (df.layer == layer), "value"] *= scale
    assert paper.claim_st_bias_depth(df).verdict == "not confirmed"


def test_st_depth_claim_is_inconclusive_within_the_errors() -> None:
    # st bias at epoch2000: 0.36, 0.24, 0.12 in layers 1–3; a standard error of 0.05 each makes
    # the differences 0.12 ± 2·0.071: not beyond the errors
    df = _paperlike()
    _mc(df, _sel(df, estimator="st", metric="rel_bias", checkpoint="epoch2000"), 0.05)
    assert paper.claim_st_bias_depth(df).verdict == "inconclusive"
    _mc(df, _sel(df, estimator="st", metric="rel_bias", checkpoint="epoch2000"), 0.01)
    assert paper.claim_st_bias_depth(df).verdict == "confirmed"


def test_st_training_claim_is_inconclusive_within_the_errors() -> None:
    # mean hidden bias 0.04 (epoch1) → 0.24 (epoch2000): a difference of 0.2; s.e. 0.2 per layer
    # gives the mean an s.e. of 0.115 and the difference 0.16: within 2 s.e. of 0
    df = _paperlike()
    _mc(df, _sel(df, estimator="st", metric="rel_bias", checkpoint="epoch2000"), 0.2)
    assert paper.claim_st_bias_training(df).verdict == "inconclusive"


def test_st_close_claim_uses_the_ratio_threshold() -> None:
    df = _paperlike()
    sel = _sel(df, estimator="st", metric="rrmse", checkpoint="epoch1", M=1.0)
    df.loc[sel & (df.layer == "2"), "value"] *= 2  # ratio ≈ 1.2 → 2.4 > 1.5
    c = paper.claim_st_close(df)
    assert c.verdict == "not confirmed" and "layer 2" in c.evidence


def test_st_close_claim_is_inconclusive_when_the_ratio_interval_crosses_the_threshold() -> None:
    df = _paperlike()
    sel = _sel(df, estimator="st", metric="rrmse", checkpoint="epoch1", M=1.0, layer="2")
    psa = df.loc[_sel(df, estimator="psa", metric="rrmse", checkpoint="epoch1", M=1.0, layer="2"),
                 "value"].item()
    df.loc[sel, "value"] = 1.4 * psa  # ratio 1.4 ± 2·0.1: 1.2 … 1.6
    _mc(df, sel, 0.1 * psa)
    assert paper.claim_st_close(df).verdict == "inconclusive"


def _with_arm_bias(bias: float, stderr: float) -> pd.DataFrame:
    """arm with relative bias ``bias`` (its rrmse curve √(bias² + 1/M) consistent with it) and
    that standard error on the bias."""
    df = _paperlike()
    for layer in [*LAYERS, "all"]:
        sel = _sel(df, estimator="arm", layer=layer)
        rb = sel & (df.metric == "rel_bias")
        df.loc[rb, "value"] = bias
        _mc(df, rb, stderr)
        rr = sel & (df.metric == "rrmse")
        df.loc[rr, "value"] = (bias**2 + 1.0 / df.loc[rr, "M"]) ** 0.5
    return df


def test_unbiased_rate_follows_the_bias_and_its_uncertainty() -> None:
    # a real bias floor (0.05, resolved): the curve flattens at large M, the slope interval lies
    # above −0.45: not confirmed
    assert paper.claim_unbiased_rate(_with_arm_bias(0.05, 0.001)).verdict == "not confirmed"
    # no bias with a tight error: the slope stays at −0.5
    assert paper.claim_unbiased_rate(_with_arm_bias(0.0, 1e-4)).verdict == "confirmed"
    # a bias clipped at 0 ± 0.05: the data allow a flat tail and a −½ slope alike
    c = paper.claim_unbiased_rate(_with_arm_bias(0.0, 0.05))
    assert c.verdict == "inconclusive" and "undecided in" in c.evidence, c


def test_claims_are_decided_per_problem() -> None:
    a, b = _paperlike(), _paperlike(tanh_late=0.3)
    a["problem"], b["problem"] = "paper-train0", "paper-train1"
    both = pd.concat([a, b], ignore_index=True)
    with pytest.raises(ArgumentError, match="several problems"):
        paper.evaluate_claims(both)
    by = paper.evaluate_claims_by_problem(both)
    assert list(by) == ["paper-train0", "paper-train1"]
    assert by["paper-train0"][6].verdict == "confirmed" and by["paper-train1"][6].verdict == "not confirmed"


def test_the_documented_regeneration_command_is_the_one_in_the_code() -> None:
    """README and ``sbn-bench run --help`` give the one command that regenerates the published
    reproduction with five training seeds."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert paper.REGENERATE in readme
    assert "--train-seeds 0-4" in paper.REGENERATE and "reports/paper-5-5-5" in paper.REGENERATE


def test_the_wall_time_fact_of_a_cached_training_is_not_a_total() -> None:
    """A run whose training came from the cache said "total 83 s" (the old training's 49 s plus
    this run's 34 s); it gives this run's time, and the cached trainings' apart, also when only some
    of several training seeds came from the cache."""
    def facts(runs: list[tuple[bool, float]], threads: int) -> str:
        records = [{"train_seed": i, "cached": c, "train_wall_s": w} for i, (c, w) in enumerate(runs)]
        manifest = {"device": {"type": "cpu", "cpu": "x", "torch_threads": threads},
                    "experiment": {"training": {"train_wall_s": sum(w for _, w in runs),
                                                "cached": all(c for c, _ in runs), "runs": records},
                                   "timing": {"evaluation_s": 34.0, "total_s_with_training": 83.0}}}
        return paper._experiment_facts(manifest)[0]
    cached = facts([(True, 49.0)], 1)
    assert cached == ("wall time on cpu (x): evaluation 34 s (1 torch thread); the training came "
                      "from the cache (made earlier, in 49 s)"), cached
    assert facts([(False, 49.0)], 2) == "wall time on cpu (x): training 49 s, evaluation 34 s, " \
                                        "total 83 s (2 torch threads)"
    mixed = facts([(True, 49.0), (False, 30.0), (False, 31.0)], 1)
    assert mixed == ("wall time on cpu (x): training 61 s (2 trainings), evaluation 34 s, total 95 s "
                     "(1 torch thread); 1 of the 3 trainings came from the cache (made earlier, in "
                     "49 s)"), mixed
    assert "the 2 trainings came from the cache (made earlier, in 49 s, 30 s)" in facts(
        [(True, 49.0), (True, 30.0)], 1)

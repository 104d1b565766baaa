"""Which estimator is best, with its uncertainty: the rules every report table and the headline use.

A value of a run is an :class:`Estimate`: the stored value, its standard error (``stderr``) and
its mode. Exact-mode values (every path enumerated) have no sampling error; Monte-Carlo values have
a standard error, and may have been clipped at zero (a bias-corrected ``‖β‖²`` is clipped at 0 in
the metrics, SPEC §5).

Rules (``z`` = :data:`TIE_Z` = 2):

* **resolved**: a value may be called best only when it is resolved: exact, or a Monte-Carlo value
  that is larger than its standard error (a bias: twice it, see below). A clipped zero
  (``0 ± 0.057``: the bias estimate fell below zero and was clipped) and a value whose standard
  error exceeds it are *unresolved*: they are never best, nor tied with the best; the tables say
  which values were not ranked.
* **best**: the best resolved value (lowest or highest, by the metric's ``better`` direction from
  the metric registry).
* **tie**: a resolved value within ``z`` standard errors of the best,
  ``|v − best| ≤ z·√(se_v² + se_best²)``, or within float64 round-off of it for exact values
  (:data:`ROUND_REL`, :data:`ROUND_ABS`): the data cannot tell it from the best.
* **margin** of the best over the first resolved runner-up that is not tied: its ``z``
  (``∞`` between exact values).
* **beaten by an unresolved value**: when an unresolved value with a standard error is better than
  the best resolved one by more than ``z`` combined standard errors (an unbiased estimator's bias
  clipped at ``0 ± 0.25`` against a biased one's ``0.69 ± 0.03``), there is no best: the data say
  the winner is a value the run cannot resolve (:attr:`Ranking.beaten_by`).

The same ``z = 2`` decides the paper's verdicts (:mod:`sbn_bench.paper`). A bias is the square
root of an unbiased estimate ``x = ‖β‖²~`` clipped at 0, and near zero its delta-method standard
error is too small to test it against zero (``value > 2·stderr`` is ``x > se_x``: an unbiased
estimator passes it in up to one cell in six); so a bias's rules are judged on the squared scale
(:attr:`Estimate.squared`): resolved when ``x > se_x``, significantly above zero when ``x > 2·se_x``
(``value > 4·stderr``). A bias that is not is shown as an upper bound ``≤ value + 2·stderr``
(:func:`upper_bound`; at least ``√(x + 2·se_x)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sbn_bench.metrics.scalars import is_resolved, squared_scale, uncertainty

Better = Literal["low", "high"]
Rank = Literal["best", "tie", "", "unresolved"]

TIE_Z = 2.0
"""Standard errors within which two Monte-Carlo values are not told apart."""

ROUND_REL = 1e-9
"""Exact values within this relative distance (or :data:`ROUND_ABS`) are equal to working
precision (float64 statistics of order one, computed by different summation orders)."""
ROUND_ABS = 1e-12


@dataclass(frozen=True)
class Estimate:
    """A stored value with its uncertainty.

    Attributes:
        value: the value as stored in ``metrics.csv``.
        stderr: its standard error (0 or NaN when exact).
        mode: ``"exact"`` or ``"mc"`` (or ``"exact/mc"`` for seeds combined across modes).
        roundoff: an exact value at most this large (in absolute value) is zero to working
            precision (:data:`ROUND_ABS` by default; a bias is summed from terms of the size of
            its estimator's samples, so its floor grows with them: :func:`bias_roundoff`).
        squared: the value is the square root of an unbiased estimate clipped at 0 (a bias,
            :data:`~sbn_bench.metrics.scalars.SQUARED_METRICS`): whether it is above zero is
            judged on the squared scale (:func:`~sbn_bench.metrics.scalars.squared_scale`).
        test: ``(x, se_x)`` to judge a :attr:`squared` value by instead of those its value and
            standard error imply: a relative bias's, taken from its ``bias_norm`` row (against a
            Monte-Carlo reference, ``rel_bias``'s standard error also carries ``‖g‖``'s, which
            has nothing to do with whether ``β = 0``).
    """

    value: float
    stderr: float
    mode: str = "mc"
    roundoff: float = ROUND_ABS
    squared: bool = False
    test: tuple[float, float] | None = None

    def _squared_test(self) -> tuple[float, float] | None:
        """``(x, se_x)`` of a :attr:`squared` Monte-Carlo value with a finite error, else None."""
        u = self.uncertainty
        if not self.squared or not self.finite or u == 0 or not math.isfinite(u):
            return None
        if self.test is not None and all(math.isfinite(t) for t in self.test) and self.test[1] > 0:
            return self.test
        return squared_scale(self.value, u)

    @property
    def uncertainty(self) -> float:
        """The standard error used by the rules: 0 when exact, ``inf`` for a Monte-Carlo value
        whose standard error is unknown (NaN)."""
        return uncertainty(self.stderr, self.mode)

    @property
    def finite(self) -> bool:
        return self.value is not None and math.isfinite(self.value)

    @property
    def clipped(self) -> bool:
        """A Monte-Carlo zero: an estimate clipped at 0 (e.g. a bias-corrected ``‖β‖²`` below 0)."""
        return self.value == 0 and self.uncertainty > 0

    @property
    def resolved(self) -> bool:
        """Finite, not :attr:`clipped`, and exact or larger (in absolute value) than its standard
        error (:func:`~sbn_bench.metrics.scalars.is_resolved`); a :attr:`squared` Monte-Carlo value
        not 0 and its square larger than the square's standard error."""
        test = self._squared_test()
        if test is not None:
            return self.value != 0 and test[0] > test[1]
        return is_resolved(self.value, self.stderr, self.mode)

    def significantly_positive(self, z: float = TIE_Z) -> bool:
        """``value > z·stderr`` (an exact value: ``value`` above round-off); for a :attr:`squared`
        value (a bias) ``x > z·se_x`` on the squared scale
        (:func:`~sbn_bench.metrics.scalars.squared_scale`: ``value > 2z·stderr``)."""
        if not self.finite:
            return False
        u = self.uncertainty
        if u == 0:
            return self.value > self.roundoff
        test = self._squared_test()
        if test is not None:
            return self.value > 0 and test[0] > z * test[1]
        return self.value > z * u


def upper_bound(est: Estimate, z: float = TIE_Z) -> float | None:
    """``value + z·stderr`` when a non-negative quantity (a bias) is not significantly above zero
    in Monte-Carlo mode; None when the value itself is the right thing to show."""
    if not est.finite or est.uncertainty == 0 or not math.isfinite(est.uncertainty):
        return None
    if est.significantly_positive(z):
        return None
    return max(est.value, 0.0) + z * est.uncertainty


def close(a: Estimate, b: Estimate, z: float = TIE_Z) -> bool:
    """``a`` and ``b`` cannot be told apart: within ``z`` combined standard errors (exact: within
    round-off)."""
    u = math.hypot(a.uncertainty, b.uncertainty)
    d = abs(a.value - b.value)
    if u == 0:
        return d <= _exact_tolerance(a, b)
    return d <= z * u


def _exact_tolerance(a: Estimate, b: Estimate) -> float:
    """How far two exact values may be apart and still be equal to working precision."""
    return max(a.roundoff, b.roundoff) + ROUND_REL * max(abs(a.value), abs(b.value))


def bias_roundoff(rrmse_1: float | None, grad_norm: float = 1.0) -> float:
    """The round-off floor of an exact bias (``rel_bias``, or ``bias_norm`` with ``grad_norm`` =
    ‖g‖): :data:`ROUND_ABS` × (‖g‖ + √MSE(1)) = ROUND_ABS · ‖g‖ · (1 + rrmse(M=1)).

    An exact-mode mean is a weighted sum over every path of every data point of single-sample
    estimates, whose size is √E‖ĝ‖² ≤ ‖g‖ + √MSE(1); its rounding error scales with them, not with
    ‖g‖: an unbiased estimator whose samples are 10× ‖g‖ (late in training, an output layer with
    a small gradient) shows a relative bias of 1e-12 that is rounding alone. ``rrmse_1`` None or
    not finite: the plain :data:`ROUND_ABS` (× ``grad_norm``)."""
    spread = rrmse_1 if rrmse_1 is not None and math.isfinite(rrmse_1) and rrmse_1 > 0 else 0.0
    g = grad_norm if math.isfinite(grad_norm) and grad_norm > 0 else 1.0
    return ROUND_ABS * g * (1.0 + spread)


def z_score(a: Estimate, b: Estimate) -> float:
    """``|a − b| / √(se_a² + se_b²)``; ``inf`` between different exact values, 0 for equal ones."""
    u = math.hypot(a.uncertainty, b.uncertainty)
    d = abs(a.value - b.value)
    if u == 0:
        return 0.0 if d <= _exact_tolerance(a, b) else math.inf
    return d / u


@dataclass(frozen=True)
class Ranking:
    """The ranks of a list of estimates (one per estimator) for one metric.

    Attributes:
        ranks: per estimate ``"best"``, ``"tie"`` (within ``z`` s.e. of the best), ``""`` (resolved,
            significantly worse) or ``"unresolved"`` (clipped, noisy or missing: not ranked).
        best: index of the best, or None when no estimate is resolved.
        runner_up: index of the best resolved estimate that is not tied, or None.
        margin: ``z`` of the best against the runner-up (``inf`` for exact values), or None.
        beaten_by: indices of unresolved estimates better than the best resolved one by more than
            ``z`` standard errors; when there are any, ``best`` is None and no estimate is
            ``"best"`` or ``"tie"``.
    """

    ranks: list[Rank]
    best: int | None
    runner_up: int | None
    margin: float | None
    beaten_by: tuple[int, ...] = ()

    @property
    def ties(self) -> list[int]:
        return [i for i, r in enumerate(self.ranks) if r == "tie"]


def rank(estimates: Sequence[Estimate | None], better: Better, z: float = TIE_Z) -> Ranking:
    """Rank ``estimates`` by the rules of this module (None: no value)."""
    ok = [i for i, e in enumerate(estimates) if e is not None and e.resolved]
    ranks: list[Rank] = ["unresolved"] * len(estimates)
    if not ok:
        return Ranking(ranks, None, None, None)
    sign = 1.0 if better == "low" else -1.0
    order = sorted(ok, key=lambda i: (sign * estimates[i].value, i))  # type: ignore[union-attr]
    best = order[0]
    b = estimates[best]
    assert b is not None
    # a best bias that is itself not significantly above zero (shown as a bound) is beaten by any
    # lower unresolved bias: both may be zero, and the data cannot order them
    loose = b.squared and b.uncertainty > 0 and not b.significantly_positive(z)
    beaten_by = tuple(i for i, e in enumerate(estimates)
                      if e is not None and not e.resolved and e.finite
                      and math.isfinite(e.uncertainty) and sign * (b.value - e.value) > 0
                      and (loose or not close(e, b, z)))
    if beaten_by:
        for i in ok:
            ranks[i] = ""
        return Ranking(ranks, None, None, None, beaten_by)
    runner_up = None
    for i in order:
        e = estimates[i]
        assert e is not None
        if i == best:
            ranks[i] = "best"
        elif close(e, b, z):
            ranks[i] = "tie"
        else:
            ranks[i] = ""
            if runner_up is None:
                runner_up = i
    margin = None
    if runner_up is not None:
        r = estimates[runner_up]
        assert r is not None
        margin = z_score(r, b)
    return Ranking(ranks, best, runner_up, margin)

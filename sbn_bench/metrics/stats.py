"""The statistics behind the metrics of SPEC §5: pure reducers, streaming accumulators (Monte-Carlo
moments, exact weighted moments, cosines of M-means) and per-group figures with standard errors.

See :mod:`sbn_bench.metrics` for the definitions, the bias correction and the standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from sbn_bench.metrics.groups import ALL, Groups
from sbn_bench.metrics.scalars import (  # noqa: F401 (re-exported)
    COSINE_QUANTILES,
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
    time_to_accuracy,
)

# --------------------------------------------------------------------------------------------
# reducers of tensors (the scalar ones are in sbn_bench.metrics.scalars)


def snr_median(mean: Tensor, var: Tensor) -> float:
    """Median over coordinates of ``|mean_i| / √var_i``; ``0/0`` left out, ``x/0 = ∞``; NaN when
    every coordinate is ``0/0``."""
    num = mean.abs().double()
    sd = var.clamp_min(0).double().sqrt()
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (num / sd).cpu().numpy()
    r = r[~np.isnan(r)]
    return float(np.median(r)) if r.size else math.nan


def _pow2_below(m: Tensor) -> Tensor:
    """``2^e`` with ``1 ≤ m / 2^e < 2`` elementwise for ``m > 0`` (1 where ``m`` is 0 or not finite)."""
    ok = (m > 0) & torch.isfinite(m)
    _, e = torch.frexp(torch.where(ok, m, torch.ones_like(m)))
    return torch.where(ok, torch.ldexp(torch.ones_like(m), e - 1), torch.ones_like(m))


def cosines(sums: Tensor, g: Tensor, groups: Groups, coord_scale: Tensor | None = None) -> Tensor:
    """``cos(v, g)`` per group for each row of ``sums [R, P]`` (any positive scale of M-means):
    ``[R, G]``, within ``[−1, 1]`` (a rounding beyond is clipped). 0 where ``v = 0`` in the group (a
    zero estimate has no component along ``g``), NaN where ``g = 0`` (undefined).

    Each vector is divided by a power of two near its largest entry first (exact), so that the
    squares of tiny or huge entries cannot underflow or overflow. ``coord_scale [P]``: when the
    values were divided per layer by :func:`layer_scales` ``c``, pass ``c / max(c)`` to bring them
    back to one scale for group "all" (the layer groups do not depend on their scale).
    """
    out = []
    sums = sums.to(torch.float64)
    g = g.to(torch.float64)
    last = len(groups.slices) - 1
    for j, sl in enumerate(groups.slices):
        v, r = sums[:, sl], g[sl]
        if j == last and coord_scale is not None:
            f = coord_scale[sl].to(v)
            v, r = v * f, r * f
        sv = _pow2_below(v.abs().amax(-1, keepdim=True))  # [R, 1]
        sr = _pow2_below(r.abs().max())
        vn, rn = v / sv, r / sr
        c = (vn * rn).sum(-1) / ((vn * vn).sum(-1).sqrt() * (rn * rn).sum().sqrt())
        c = c.clamp(-1.0, 1.0)  # rounding can take parallel vectors to 1 + 2^-52 (NaN stays NaN)
        c = torch.where((v == 0).all(-1), torch.zeros_like(c), c)
        out.append(c if bool((r != 0).any()) else torch.full_like(c, math.nan))
    return torch.stack(out, dim=-1)


def tr_cov_sq(u: Tensor) -> float:
    """An unbiased estimate of ``tr(C_b²)``, ``C_b`` the covariance of the rows of ``u [B, P]``
    (batch means, or their deviations from any common vector: the estimate is shift-invariant):
    the mean over distinct ``(a, b, c, d)`` of ``((u_a − u_b)·(u_c − u_d))² / 4`` (Chen, Zhang &
    Zhong 2010, "Tests for high-dimensional covariance matrices", JASA 105:810), computed from the
    Gram matrix ``G = u uᵀ`` in ``O(B²P)``: ``Y1/B₂ − 2 Y2/B₃ + Y3/B₄`` with ``Y1 = Σ_{a≠b} G_ab²``,
    ``Y2`` and ``Y3`` the sums of ``G_ab G_bc`` and ``G_ab G_cd`` over distinct indices and
    ``B_k = B!/(B−k)!``. The U-statistic ``mean_{a≠b} ((u_a − ū)·(u_b − ū))²`` used until 4 December
    2026 is biased by about ``1 − 2/B + P_eff/B²`` (×1.9 at ``P_eff = 1000`` with ``B = 32``,
    ``P_eff = (tr C_b)²/tr(C_b²)``; 5 % low at ``P_eff = 10``). Clipped at 0; for ``B < 4``, where
    no quadruple exists, that U-statistic of ``u`` as given (the callers pass deviations from the
    overall mean; NaN for ``B < 2``)."""
    B = u.shape[0]
    if B < 2:
        return math.nan
    G = u @ u.T
    if B < 4:  # u as given (the callers' deviations from the overall mean), summed as before
        o = G * G
        return max(float(o.sum() - o.diagonal().sum()) / (B * (B - 1)), 0.0)
    off = G - torch.diag(G.diagonal())
    sq = off * off
    y1 = float(sq.sum())  # Σ_{a≠b} G_ab²
    r = off.sum(1)
    y2 = float((r * r - sq.sum(1)).sum())  # Σ over distinct a, b, c of G_ab G_bc
    total = float(off.sum())
    y3 = total * total - 4.0 * y2 - 2.0 * y1  # Σ over distinct a, b, c, d of G_ab G_cd
    b2 = B * (B - 1)
    b3 = b2 * (B - 2)
    b4 = b3 * (B - 3)
    return max(y1 / b2 - 2.0 * y2 / b3 + y3 / b4, 0.0)


def bias_sq_stderr(beta: Tensor, batch_dev: Tensor) -> float:
    """Delta-method standard error of ``‖m − g‖²`` from ``B`` batch means (see module docstring).

    ``Var‖m − g‖² ≈ 4 βᵀCβ + 2 tr(C²)`` with ``C = Cov(m) = C_b / B``. Plugging in ``β̂ = m − g``
    overestimates ``βᵀCβ`` by ``E[(β̂ − β)ᵀC(β̂ − β)] = tr(C²)``, which is subtracted (the first
    term is then clipped at 0), so ``Var ≈ max(4(β̂ᵀCβ̂ − tr(C²)), 0) + 2 tr(C²)``, with
    ``tr(C²) = tr(C_b²)/B²`` by :func:`tr_cov_sq` (unbiased).

    Args:
        beta: ``[P]`` the estimated bias ``m − g``.
        batch_dev: ``[B, P]`` batch means minus the overall mean, ``m_b − m``.

    Returns:
        The standard error (NaN for ``B < 2``).
    """
    B = batch_dev.shape[0]
    if B < 2:
        return math.nan
    proj = batch_dev @ beta  # [B]
    bcb = float((proj * proj).sum()) / (B - 1) / B  # β̂ᵀ (C_b / B) β̂
    tr_c2 = tr_cov_sq(batch_dev) / B**2  # tr(Cov(m)²), unbiased
    return math.sqrt(max(4.0 * (bcb - tr_c2), 0.0) + 2.0 * tr_c2)


def dist_sq_stderr(beta: Tensor, batch_devs: Sequence[Tensor]) -> float:
    """Delta-method standard error of ``‖d‖²`` for ``d = Σ_i ± m_i`` a signed sum of *independent*
    means, each known by its ``B_i`` batch means (:func:`bias_sq_stderr` for one mean).

    With ``C = Σ_i C_i``, ``C_i = U_iᵀU_i / ((B_i − 1) B_i)`` (``U_i [B_i, P]`` the batch means minus
    the mean): ``Var‖d‖² ≈ 4 dᵀCd + 2 tr(C²)``, where ``tr(C²) = Σ_i tr(C_i²) + 2 Σ_{i<j} tr(C_i C_j)``
    (``tr(C_i²)`` by :func:`tr_cov_sq`, as in :func:`bias_sq_stderr`, ``tr(C_i C_j) = Σ_{a,b} (u_a·w_b)² /
    ((B_i−1) B_i (B_j−1) B_j)``, unbiased since the means are independent), and the noise that
    ``d̂`` adds to ``d̂ᵀCd̂`` (``tr(C²)``) is subtracted as there. Used for ``‖m − ĝ‖²`` (the
    estimator's mean against a Monte-Carlo reference ``ĝ``, SPEC §8) and ``‖ĝ‖²``.

    Args:
        beta: ``[P]`` the estimated ``d``.
        batch_devs: ``[B_i, P]`` per independent mean (every ``B_i ≥ 2``; an empty list gives 0).

    Returns:
        The standard error (NaN when some ``B_i < 2``).
    """
    if any(u.shape[0] < 2 for u in batch_devs):
        return math.nan
    dcd = 0.0
    tr_c2 = 0.0
    norms = []
    for u in batch_devs:
        B = u.shape[0]
        c = float(B - 1) * B
        norms.append(c)
        proj = u @ beta
        dcd += float((proj * proj).sum()) / c
        tr_c2 += tr_cov_sq(u) / B**2
    for i in range(len(batch_devs)):
        for j in range(i + 1, len(batch_devs)):
            cross = batch_devs[i] @ batch_devs[j].T
            tr_c2 += 2.0 * float((cross * cross).sum()) / (norms[i] * norms[j])
    return math.sqrt(max(4.0 * (dcd - tr_c2), 0.0) + 2.0 * tr_c2)


@dataclass(frozen=True)
class ReferenceNoise:
    """The sampling noise of a Monte-Carlo reference ``ĝ``, the mean of ``N`` single samples of an
    unbiased estimator (SPEC §8): what the metrics need to correct for it.

    Attributes:
        samples: ``N``.
        variance: ``[P]`` unbiased per-coordinate variance of one sample (``V_R`` is its sum over a
            group; ``E‖ĝ − g‖² = V_R / N``).
        batch_dev: ``[B, P]`` the means of ``B`` consecutive batches of the ``N`` samples minus
            ``ĝ`` (``Cov(ĝ) ≈ U^T U / ((B − 1) B)``, see :func:`dist_sq_stderr`).
        batch_variance: ``[B, P]`` the unbiased variances within each batch (the standard error
            of ``V̂_R`` by batch means).
    """

    samples: int
    variance: Tensor
    batch_dev: Tensor
    batch_variance: Tensor

    def scaled(self, factor: Tensor) -> ReferenceNoise:
        """The noise of ``ĝ · factor`` (per coordinate, ``factor [P]``)."""
        f = factor.to(self.variance)
        return ReferenceNoise(self.samples, self.variance * f * f, self.batch_dev * f,
                              self.batch_variance * f * f)

    def to(self, device: torch.device | str) -> ReferenceNoise:
        return ReferenceNoise(self.samples, self.variance.to(device), self.batch_dev.to(device),
                              self.batch_variance.to(device))


def _reference_terms(noise: ReferenceNoise, groups: Groups) -> tuple[Tensor, Tensor]:
    """Per group ``(V̂_R / N, its standard error)``: the excess ``E‖ĝ − g‖²`` that the reference's
    noise adds to every squared distance to it (``[G]`` each)."""
    N = noise.samples
    delta = groups.sums(noise.variance.to(torch.float64)) / N
    vb = groups.sums(noise.batch_variance.to(torch.float64))  # [B, G]
    B = vb.shape[0]
    se = vb.std(0, unbiased=True) / math.sqrt(B) / N if B >= 2 else torch.full_like(delta, math.nan)
    return delta, se


RESOLVED_Z = 2.0
"""A Monte-Carlo reference resolves a group when its corrected ``‖g‖²`` exceeds this many
standard errors (:func:`corrected_norm`)."""


def corrected_norm(g: Tensor, noise: ReferenceNoise, groups: Groups, j: int, sl: slice,
                   delta: float, delta_se: float) -> tuple[float, float, float, float]:
    """``(‖g‖, its standard error, ε, the standard error of ε²)`` of group ``j`` from a Monte-Carlo
    reference ``ĝ`` (SPEC §8): ``‖g‖² ≈ ‖ĝ‖² − V̂_R/N``, the error of ``‖ĝ‖²`` by
    :func:`dist_sq_stderr` combined with that of ``V̂_R/N``, and the reference's relative error
    ``ε = √(V̂_R/N) / ‖g‖``.

    ``ε² = δ / (r − δ)`` with ``r = ‖ĝ‖²`` and ``δ = V̂_R/N`` (``delta``, error ``delta_se``), so by
    the delta method ``se(ε²)² = ((δ se_r)² + (r se_δ)² − 2 δ r Cov(r, δ)) / (r − δ)⁴``. The term of
    ``δ``'s own error dominates when ``ε`` is small; it is large for heavy-tailed estimators such as
    REINFORCE, whose ``V̂_R`` is itself noisy. ``r`` and ``δ`` (a mean and a variance) are
    uncorrelated for symmetric noise only: ``Cov(r, δ) ≈ cov_b(2 ĝ·d_b, v_b) / (B N)`` over the
    reference's ``B`` batches (``d_b`` a batch mean's deviation, ``v_b`` its summed variance), as
    ``r − E r ≈ 2 g·(ĝ − g)`` and ``δ`` is the batches' mean ``v_b / N``.

    A group whose corrected ``‖g‖²`` is not significantly above zero (``≤`` :data:`RESOLVED_Z`
    standard errors: the reference's noise is about as large as its gradient) is not resolved:
    ``‖g‖`` may be anything up to about ``‖ĝ‖``, and no delta method describes ``1/‖g‖`` there.
    ``‖ĝ‖`` is then returned with an infinite standard error and ``ε = ∞``: the relative metrics
    stay finite (not bounds: they may lie above or below the true values) and say, by their
    errors, that they mean nothing."""
    gj = g[sl].to(torch.float64)
    raw = float((gj * gj).sum())
    sq = raw - delta
    dev = noise.batch_dev[:, sl].to(torch.float64)
    raw_se = dist_sq_stderr(gj, [dev])
    se_sq = math.hypot(raw_se, delta_se)
    if delta > 0 and not sq > RESOLVED_Z * se_sq:
        return math.sqrt(raw), math.inf, math.inf, math.inf
    norm = math.sqrt(max(sq, 0.0))
    var_eps_sq = (delta * raw_se) ** 2 + (raw * delta_se) ** 2 \
        - 2 * delta * raw * _raw_delta_cov(gj, dev, noise, sl)
    eps_sq_se = safe_ratio(math.sqrt(max(var_eps_sq, 0.0)), sq * sq)
    return (norm, norm_stderr(sq, se_sq), safe_ratio(math.sqrt(max(delta, 0.0)), norm),
            eps_sq_se)


def _raw_delta_cov(gj: Tensor, dev: Tensor, noise: ReferenceNoise, sl: slice) -> float:
    """``Cov(‖ĝ‖², V̂_R/N)`` of one group (``gj``, its batch means' deviations ``dev [B, n]``) from
    the reference's batches (:func:`corrected_norm`): ``cov_b(2 ĝ·d_b, v_b) / (B N)``; 0 with fewer
    than two batches."""
    B = dev.shape[0]
    if B < 2:
        return 0.0
    x = 2.0 * (dev @ gj)
    y = noise.batch_variance[:, sl].to(torch.float64).sum(1)
    cov = float(((x - x.mean()) * (y - y.mean())).sum()) / (B - 1)
    return cov / (B * noise.samples)


def reference_rel_errors(g: Tensor, noise: ReferenceNoise, groups: Groups) -> list[float]:
    """``ε`` of a Monte-Carlo reference ``g = ĝ`` per group of ``groups``, as the metrics' rows
    give it (:func:`corrected_norm`: ∞ where the corrected ``‖g‖²`` is not significantly
    positive, the group's gradient lost in the reference's noise)."""
    g = g.to(torch.float64)
    noise = noise.to(g.device)
    delta, delta_se = _reference_terms(noise, groups)
    return [corrected_norm(g, noise, groups, j, sl, float(delta[j]), float(delta_se[j]))[2]
            for j, sl in enumerate(groups.slices)]


def leave_one_batch_out(stats: MomentStats) -> tuple[Tensor, Tensor, Tensor]:
    """Means, unbiased variances and counts of the samples without batch ``b``, for every ``b``
    (Chan's update run backwards): ``([B, P], [B, P], [B])``."""
    S = stats.n
    n_b = stats.batch_n[:, None]
    n_r = S - n_b
    m_r = (S * stats.mean - n_b * stats.batch_mean) / n_r
    d = stats.batch_mean - m_r
    m2_r = stats.m2 - stats.batch_m2 - d * d * n_b * n_r / S
    return m_r, m2_r.clamp_min(0) / (n_r - 1).clamp_min(1), n_r[:, 0]


# --------------------------------------------------------------------------------------------
# streaming accumulators


def _chunk_moments(x: Tensor) -> tuple[int, Tensor, Tensor]:
    """``(n, mean, Σ (x − mean)²)`` over the rows of ``x [n, P]``."""
    mean = x.mean(0)
    dev = x - mean
    return x.shape[0], mean, (dev * dev).sum(0)


def _combine(na: int | float, ma: Tensor, m2a: Tensor, nb: int | float, mb: Tensor, m2b: Tensor
             ) -> tuple[float, Tensor, Tensor]:
    """Chan et al.'s pairwise update of (count or weight, mean, sum of squared deviations)."""
    n = na + nb
    if na == 0:
        return nb, mb, m2b
    if nb == 0:
        return na, ma, m2a
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + delta * delta * (na * nb / n)


@dataclass
class MomentStats:
    """Sufficient statistics of ``S`` single-sample estimates (Monte-Carlo mode), float64.

    Attributes:
        n: ``S``; mean: ``[P]``; m2: ``[P]`` sums of squared deviations;
        batch_n: ``[B]``; batch_mean: ``[B, P]``; batch_m2: ``[B, P]`` (consecutive batches).
    """

    n: int
    mean: Tensor
    m2: Tensor
    batch_n: Tensor
    batch_mean: Tensor
    batch_m2: Tensor


class MomentAccumulator:
    """Streams ``S`` estimates ``[c, P]`` chunk by chunk into per-batch means and squared
    deviations (Chan's update); memory ``O(B·P)``.

    Args:
        num_samples: ``S`` (all updates together must hold exactly ``S`` rows).
        dim: ``P``.
        batches: ``B`` for batch-means standard errors (reduced so each batch has ≥ 2 samples).
    """

    def __init__(self, num_samples: int, dim: int, batches: int = 32,
                 device: torch.device | str = "cpu") -> None:
        self.S = num_samples
        B = max(1, min(batches, num_samples // 2))
        self.bounds = [b * num_samples // B for b in range(B + 1)]
        self.count = 0
        self.n = [0] * B
        self.mean = torch.zeros(B, dim, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(B, dim, dtype=torch.float64, device=device)

    def update(self, x: Tensor) -> None:
        """Add the next rows ``x [c, P]`` (cast to float64)."""
        x = x.to(torch.float64)
        i = 0
        while i < x.shape[0]:
            pos = self.count + i
            if pos >= self.S:
                raise ValueError(f"MomentAccumulator: more than num_samples={self.S} rows")
            b = next(j for j in range(len(self.n)) if self.bounds[j] <= pos < self.bounds[j + 1])
            take = min(x.shape[0] - i, self.bounds[b + 1] - pos)
            nb, mb, m2b = _chunk_moments(x[i:i + take])
            n, m, m2 = _combine(self.n[b], self.mean[b], self.m2[b], nb, mb, m2b)
            self.n[b], self.mean[b], self.m2[b] = int(n), m, m2
            i += take
        self.count += x.shape[0]

    def result(self) -> MomentStats:
        if self.count != self.S:
            raise ValueError(f"MomentAccumulator: got {self.count} rows, expected {self.S}")
        bn = torch.tensor(self.n, dtype=torch.float64, device=self.mean.device)
        mean = (bn[:, None] * self.mean).sum(0) / self.S
        dev = self.mean - mean
        m2 = self.m2.sum(0) + (bn[:, None] * dev * dev).sum(0)
        return MomentStats(self.S, mean, m2, bn, self.mean.clone(), self.m2.clone())


def weighted_moments(parts: Sequence[Tensor], w: Tensor) -> tuple[float, Tensor, Tensor]:
    """``(Σ w, mean, Σ w (x − mean)²)`` of the rows of ``x = cat(parts, dim=1)`` under weights ``w``.

    Args:
        parts: ``[c, *shape_j]`` tensors (e.g. one per parameter; reduced one by one, which keeps
            the working set small and avoids concatenating the ``[c, P]`` matrix). Float64 parts
            are overwritten (centred and squared in place).
        w: ``[c]`` weights ``≥ 0``.

    Returns:
        ``(W, mean [P], m2 [P])`` in float64.
    """
    w = w.to(torch.float64)
    W = float(w.sum())
    sw = w.sqrt().unsqueeze(1)  # [c, 1]: Σ (√w (x − m))², so that a large deviation on a path of
    means, m2s = [], []        # tiny (or zero) probability cannot overflow its square first
    for t in parts:
        x = t.reshape(t.shape[0], -1).to(torch.float64)
        m = (w @ x) / W
        means.append(m)
        m2s.append(x.sub_(m).mul_(sw).square_().sum(0))
    return W, torch.cat(means), torch.cat(m2s)


class WeightedMoments:
    """Exact weighted moments of a finite distribution, streamed in chunks (weights need not be
    normalised): ``mean = Σ w x / Σ w``, ``var = Σ w (x − mean)² / Σ w``, per coordinate."""

    def __init__(self) -> None:
        self.w = 0.0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, x: Tensor | Sequence[Tensor], w: Tensor) -> None:
        """Add rows ``x [c, P]`` (or a list of ``[c, *shape]`` parts, see :func:`weighted_moments`)
        with weights ``w [c] ≥ 0``. Float64 inputs are overwritten."""
        parts = [x] if isinstance(x, Tensor) else list(x)
        if float(w.sum()) == 0:
            return
        wb, mb, m2b = weighted_moments(parts, w)
        if self.mean is None or self.m2 is None:
            self.w, self.mean, self.m2 = wb, mb, m2b
        else:
            self.w, self.mean, self.m2 = _combine(self.w, self.mean, self.m2, wb, mb, m2b)

    def result(self) -> tuple[Tensor, Tensor]:
        """``(mean [P], var [P])``."""
        if self.mean is None or self.m2 is None:
            raise ValueError("WeightedMoments: no weight was added")
        return self.mean, self.m2 / self.w


class CosineAccumulator:
    """Cosines ``cos(ḡ_M, g)`` per group of the first ``R_M = min(max_groups, ⌊S/M⌋)`` disjoint
    blocks of ``M`` consecutive samples, for every ``M ≤ S`` of the grid; memory ``O(|grid|·P)``.
    """

    def __init__(self, g: Tensor, groups: Groups, m_values: Sequence[int], num_samples: int,
                 max_groups: int = 1000, coord_scale: Tensor | None = None) -> None:
        self.g = g.to(torch.float64)
        self.groups = groups
        self.coord_scale = coord_scale  # see cosines()
        self.ms = [m for m in m_values if m <= num_samples]
        self.need = {m: min(max_groups, num_samples // m) * m for m in self.ms}
        self.used = dict.fromkeys(self.ms, 0)
        self.partial = {m: torch.zeros_like(self.g) for m in self.ms}
        self.cnt = dict.fromkeys(self.ms, 0)
        self.out: dict[int, list[Tensor]] = {m: [] for m in self.ms}

    def _emit(self, m: int, sums: Tensor) -> None:
        self.out[m].append(cosines(sums, self.g, self.groups, self.coord_scale).cpu())

    def update(self, x: Tensor) -> None:
        """Add the next rows ``x [c, P]`` of the sample stream."""
        x = x.to(torch.float64)
        for m in self.ms:
            rows = x[: max(0, self.need[m] - self.used[m])]
            self.used[m] += rows.shape[0]
            i = 0
            if self.cnt[m] and rows.shape[0]:
                k = min(m - self.cnt[m], rows.shape[0])
                self.partial[m] = self.partial[m] + rows[:k].sum(0)
                self.cnt[m] += k
                i = k
                if self.cnt[m] == m:
                    self._emit(m, self.partial[m].unsqueeze(0))
                    self.partial[m] = torch.zeros_like(self.g)
                    self.cnt[m] = 0
            full = (rows.shape[0] - i) // m
            if full:
                self._emit(m, rows[i:i + full * m].reshape(full, m, -1).sum(1))
                i += full * m
            if i < rows.shape[0]:
                self.partial[m] = rows[i:].sum(0)
                self.cnt[m] = rows.shape[0] - i

    def result(self) -> dict[int, np.ndarray]:
        """``{M: [R_M, G]}`` cosines."""
        return {m: (torch.cat(v).numpy() if v else np.zeros((0, len(self.groups.names))))
                for m, v in self.out.items()}


# --------------------------------------------------------------------------------------------
# from statistics to rows


def layer_scales(g: Tensor, groups: Groups, probe: Tensor | None = None) -> Tensor:
    """A power of two per layer group, ``[P]`` (constant on each layer's coordinates).

    Layer ``l`` gets ``c_l = 2^e`` with ``1 ≤ m_l / c_l < 2`` for ``m_l`` the largest ``|g_i|`` and
    ``|ĝ_i|`` of its coordinates (``probe [c, P]``: some estimates, e.g. the first chunk), or 1 when
    they are all zero. Dividing a layer's values by ``c_l`` is exact in floating point and scales
    every statistic by a power of two (exactly undone afterwards), but keeps sums of squares away
    from float64's underflow (``|x| < 1e-154``, e.g. through saturated units, ``|a| ≳ 350``) and
    overflow; in the normal range the results are bit-identical to unscaled ones.
    """
    g = g.to(torch.float64)
    c = torch.ones_like(g)
    for sl in groups.slices[:-1]:  # the layers; the last group is "all"
        m = float(g[sl].abs().max()) if g[sl].numel() else 0.0
        if probe is not None and probe.numel():
            pm = float(probe[:, sl].abs().max())
            m = max(m, pm) if math.isfinite(pm) else m
        if m > 0 and math.isfinite(m):
            c[sl] = math.ldexp(1.0, math.frexp(m)[1] - 1)
    return c


def rescale_moments(stats: MomentStats, factor: Tensor) -> MomentStats:
    """The statistics of ``x · factor`` (per coordinate, ``factor [P]``) from those of ``x``."""
    f2 = factor * factor
    return MomentStats(stats.n, stats.mean * factor, stats.m2 * f2, stats.batch_n,
                       stats.batch_mean * factor, stats.batch_m2 * f2)


def _mixed_scales(groups: Groups, scale: Tensor | None) -> tuple[list[float], float, Tensor | None]:
    """Per layer group its scale, the scale ``C`` of group "all" (the largest) and the factors
    ``c / C`` that bring every coordinate to it (None without scales)."""
    if scale is None:
        return [1.0] * (len(groups.slices) - 1), 1.0, None
    per = [float(scale[sl][0]) if scale[sl].numel() else 1.0 for sl in groups.slices[:-1]]
    C = max(per)
    return per, C, scale.to(torch.float64) / C


def mc_group_stats(stats: MomentStats, g: Tensor, groups: Groups, scale: Tensor | None = None,
                   noise: ReferenceNoise | None = None) -> dict[str, GroupStats]:
    """Per-group figures of Monte-Carlo statistics (module docstring: bias correction and errors).

    Args:
        stats, g: the statistics of the estimates and the reference gradient, both divided by
            ``scale [P]`` (:func:`layer_scales`; None: unscaled). Each layer's figures are taken in
            its own scale, those of "all" in the largest one.
        noise: for a Monte-Carlo reference ``g = ĝ``, its noise (divided by ``scale`` too):
            ``‖β‖² ≈ ‖m − ĝ‖² − V̂/S − V̂_R/N`` and ``‖g‖² ≈ ‖ĝ‖² − V̂_R/N`` (SPEC §8), standard
            errors including the reference's; None: ``g`` is exact.
    """
    per, C, factor = _mixed_scales(groups, scale)
    out = _mc_group_stats(stats, g, groups, noise=noise)
    for name, c in zip(groups.names[:-1], per):
        out[name] = replace(out[name], scale=c)
    if factor is not None:
        g = g.to(stats.mean.device, torch.float64)
        out[ALL] = replace(_mc_group_stats(rescale_moments(stats, factor), g * factor, groups,
                                           only_all=True,
                                           noise=None if noise is None else noise.scaled(factor)
                                           )[ALL], scale=C)
    return out


def _mc_group_stats(stats: MomentStats, g: Tensor, groups: Groups, only_all: bool = False,
                    noise: ReferenceNoise | None = None) -> dict[str, GroupStats]:
    S = stats.n
    g = g.to(stats.mean.device, torch.float64)
    # [P] unbiased per-coordinate variance (undefined for a single sample: NaN, and so are the
    # bias correction and everything built on V)
    var = stats.m2 / (S - 1) if S > 1 else torch.full_like(stats.m2, math.nan)
    beta = stats.mean - g
    B = stats.batch_n.shape[0]
    bvar = stats.batch_m2 / (stats.batch_n[:, None] - 1).clamp_min(1)  # [B, P]
    bdev = stats.batch_mean - stats.mean
    V = groups.sums(var)
    Vb = groups.sums(bvar)  # [B, G]
    dist = groups.sums(beta * beta)
    gn = groups.sums(g * g).sqrt()
    m_r, var_r, _ = leave_one_batch_out(stats)
    if noise is not None:
        noise = noise.to(stats.mean.device)
        delta, delta_se = _reference_terms(noise, groups)
    out = {}
    for j, (name, sl) in enumerate(zip(groups.names, groups.slices)):
        if only_all and name != ALL:
            continue
        V_j = float(V[j])
        V_se = mean_stderr(Vb[:, j].cpu().numpy())[1] if B >= 2 else math.nan
        snr_r = [snr_median(m_r[b, sl], var_r[b, sl]) for b in range(B)]
        st = GroupStats(
            g_norm=float(gn[j]),
            bias_sq=corrected_bias_sq(float(dist[j]), V_j, S),
            bias_sq_se=bias_sq_stderr(beta[sl], bdev[:, sl]),
            variance=V_j, variance_se=V_se,
            snr=snr_median(stats.mean[sl], var[sl]), snr_se=jackknife_stderr(snr_r))
        if noise is not None:
            d, d_se = float(delta[j]), float(delta_se[j])
            norm, norm_se, eps, eps_sq_se = corrected_norm(g, noise, groups, j, sl, d, d_se)
            se = dist_sq_stderr(beta[sl], [bdev[:, sl], noise.batch_dev[:, sl].to(torch.float64)])
            st = replace(st, bias_sq=st.bias_sq - d, bias_sq_se=math.hypot(se, d_se), g_norm=norm,
                         g_norm_se=norm_se, reference_rel_error=eps,
                         reference_rel_error_sq_se=eps_sq_se, mc_reference=True)
        out[name] = st
    return out


def exact_group_stats(mean: Tensor, var: Tensor, g: Tensor, groups: Groups,
                      scale: Tensor | None = None, noise: ReferenceNoise | None = None
                      ) -> dict[str, GroupStats]:
    """Per-group figures from the exact mean ``[P]`` and per-coordinate variance ``[P]`` of one
    single-sample estimate (no sampling error: stderr 0). ``mean``, ``g`` divided by ``scale``
    and ``var`` by ``scale²`` when given (as in :func:`mc_group_stats`). With ``noise`` (a
    Monte-Carlo reference ``g = ĝ``, divided by ``scale``): ``‖β‖² ≈ ‖E ĝ_E − ĝ‖² − V̂_R/N`` and
    ``‖g‖² ≈ ‖ĝ‖² − V̂_R/N``, whose standard errors are the reference's alone."""
    per, C, factor = _mixed_scales(groups, scale)
    out = _exact_group_stats(mean, var, g, groups, noise)
    for name, c in zip(groups.names[:-1], per):
        out[name] = replace(out[name], scale=c)
    if factor is not None:
        f = factor.to(mean.device)
        out[ALL] = replace(_exact_group_stats(mean.to(torch.float64) * f,
                                              var.to(torch.float64) * f * f,
                                              g.to(mean.device, torch.float64) * f, groups,
                                              None if noise is None else noise.scaled(f))[ALL],
                           scale=C)
    return out


def _exact_group_stats(mean: Tensor, var: Tensor, g: Tensor, groups: Groups,
                       noise: ReferenceNoise | None = None) -> dict[str, GroupStats]:
    g = g.to(mean.device, torch.float64)
    beta = mean.to(torch.float64) - g
    dist = groups.sums(beta * beta)
    V = groups.sums(var.to(torch.float64))
    gn = groups.sums(g * g).sqrt()
    out = {name: GroupStats(float(gn[j]), float(dist[j]), 0.0, float(V[j]), 0.0,
                            snr_median(mean[sl], var[sl]), 0.0)
           for j, (name, sl) in enumerate(zip(groups.names, groups.slices))}
    if noise is None:
        return out
    noise = noise.to(mean.device)
    delta, delta_se = _reference_terms(noise, groups)
    for j, (name, sl) in enumerate(zip(groups.names, groups.slices)):
        d, d_se = float(delta[j]), float(delta_se[j])
        norm, norm_se, eps, eps_sq_se = corrected_norm(g, noise, groups, j, sl, d, d_se)
        se = dist_sq_stderr(beta[sl], [noise.batch_dev[:, sl].to(torch.float64)])
        out[name] = replace(out[name], bias_sq=out[name].bias_sq - d, bias_sq_se=math.hypot(se, d_se),
                            g_norm=norm, g_norm_se=norm_se, reference_rel_error=eps,
                            reference_rel_error_sq_se=eps_sq_se, mc_reference=True)
    return out



"""Closed forms for one Bernoulli unit with a quadratic objective, derived here.

The net is ``1-1-1`` with the ``mse`` loss and one data point: input ``x0``, pre-activation
``a = w x0 + b``, state ``x ∈ {0, 1}`` with ``p = P(x = 1) = F(a)``, ``φ = F'(a)``, output
``η = v x + c`` and ``f(x) = (v x + c − y)²``. Write ``f1 = f(1) = (v + c − y)²``, ``f0 = f(0) = (c − y)²``,
``Δ = f1 − f0``. Then ``J = p f1 + (1 − p) f0`` and

    ∂J/∂a = φ Δ,  ∂J/∂w = x0 φ Δ,  ∂J/∂b = φ Δ,
    ∂J/∂v = 2 p (v + c − y),  ∂J/∂c = 2 [p (v + c − y) + (1 − p)(c − y)].

Every estimator gives ``ĝ_w = x0 ĝ_a`` and ``ĝ_b = ĝ_a`` (so ``Var ĝ_w = x0² Var ĝ_a``), and the output
layer's pathwise gradient at a state ``x ~ Bernoulli(p)``: ``ĝ_v = 2 (v x + c − y) x``,
``ĝ_c = 2 (v x + c − y)``. A two-point variable taking ``u1`` w.p. ``p`` and ``u0`` otherwise has mean
``p u1 + (1 − p) u0`` and variance ``p (1 − p)(u1 − u0)²``, so
``Var ĝ_v = 4 p (1 − p)(v + c − y)²`` and ``Var ĝ_c = 4 p (1 − p) v²``.

Hidden unit, per estimator:

* ``reinforce``: ``ĝ_a = f(x) ∂_a log p(x)``, i.e. ``f1 φ/p`` (x = 1) or ``−f0 φ/(1 − p)`` (x = 0):
  mean ``φ Δ``, variance ``p (1 − p) φ² (f1/p + f0/(1 − p))²``.
* ``st``: ``ĝ_a = f'(x) φ = 2 v (v x + c − y) φ``: mean ``2 v φ (v p + c − y)`` (biased unless
  ``p = ½``), variance ``p (1 − p)(2 v² φ)²``.
* ``st-identity``: ``∂x/∂a := 1``, so ``ĝ_a = 2 v (v x + c − y)``: mean ``2 v (v p + c − y)``,
  variance ``p (1 − p)(2 v²)²`` (``st`` without its factor ``φ``).
* ``arm`` (logistic, ``φ = p(1 − p)``): ``b₁ = [U > 1 − p]``, ``b₂ = [U < p]``,
  ``ĝ_a = (f(b₁) − f(b₂))(U − ½)``.
  With ``m = min(p, 1 − p)``: ``b₁ ≠ b₂`` only for ``U > 1 − m`` (``b₁ = 1``, difference ``Δ``) or
  ``U < m`` (``b₁ = 0``, difference ``−Δ``). So
  ``E ĝ_a = Δ [∫_{1−m}^1 (u − ½) du − ∫_0^m (u − ½) du] = Δ (¼ − (½ − m)²) = Δ m (1 − m) = φ Δ`` and
  ``E ĝ_a² = Δ² [∫_{1−m}^1 + ∫_0^m] (u − ½)² du = (2Δ²/3)(⅛ − (½ − m)³)``.
* ``disarm``: ``ĝ_a = ½ (f(b₁) − f(b₂)) (−1)^{b₂} [b₁ ≠ b₂] σ(|a|)``: in both cases above it equals
  ``½ Δ (1 − m)`` (``σ(|a|) = max(p, 1 − p) = 1 − m``), with probability ``2m``, else 0. So
  ``E ĝ_a = Δ m (1 − m)`` and ``Var ĝ_a = ½ Δ² m (1 − m)² − Δ² m² (1 − m)² = Δ² m (1 − m)² (½ − m)``.
  ARM and DisARM evaluate the output layer at ``b₁ ~ Bernoulli(p)``: the pathwise formulas above.

Path estimators are checked exactly (both states enumerated); ARM/DisARM by a quadrature over ``U``
of the formulas (checks the algebra) and by seeded Monte Carlo of the estimators (checks the code);
Concrete and straight-through Gumbel-Softmax by seeded Monte Carlo against their law written out
as a function of ``U`` (:func:`_relaxed_by_u`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import pytest
import torch

from sbn_bench.estimators import estimate, estimate_on_paths, load_registry
from sbn_bench.problems import Problem
from sbn_bench.reference import exact_gradient

REGISTRY = load_registry()
F64 = torch.float64
NAMES = ["weight_1", "bias_1", "weight_out", "bias_out"]

ALPHA = 1e-6
"""Failure rate of each Monte Carlo test when the estimator matches the closed forms: two-sided
z-bounds, Bonferroni over the 4 coordinates × (mean, variance)."""
Z = NormalDist().inv_cdf(1 - ALPHA / (2 * 8))
NUM_SAMPLES = 200_000


@dataclass(frozen=True)
class Unit:
    x0: float
    w: float
    b: float
    v: float
    c: float
    y: float

    def problem(self, noise: str) -> Problem:
        t = lambda *v: torch.tensor(v, dtype=F64)  # noqa: E731
        params = {"weight_1": t([self.w]), "bias_1": t(self.b), "weight_out": t([self.v]),
                  "bias_out": t(self.c)}
        return Problem(params, t([self.x0]), t(self.y), loss="mse", noise=noise, name="unit")

    def cdf_pdf(self, noise: str) -> tuple[float, float]:
        a = self.w * self.x0 + self.b
        if noise == "logistic":
            p = 1 / (1 + math.exp(-a))
            return p, p * (1 - p)
        return 0.5 * math.erfc(-a / math.sqrt(2)), math.exp(-a * a / 2) / math.sqrt(2 * math.pi)


UNITS = [Unit(0.7, 1.3, -0.4, 2.0, -0.5, 0.3),  # a = 0.51, p > ½
         Unit(-1.2, 0.8, -0.3, -1.5, 0.4, 1.0),  # a = −1.26, p < ½
         Unit(2.0, -0.6, 0.9, 0.7, 1.1, -0.2)]  # a = −0.3
UNIT_IDS = ["a=0.51", "a=-1.26", "a=-0.3"]


def _output_moments(u: Unit, p: float) -> dict[str, tuple[float, float]]:
    """Mean and variance of the pathwise output-layer gradient at ``x ~ Bernoulli(p)``."""
    r1, r0 = u.v + u.c - u.y, u.c - u.y
    return {"weight_out": (2 * p * r1, 4 * p * (1 - p) * r1 ** 2),
            "bias_out": (2 * (p * r1 + (1 - p) * r0), 4 * p * (1 - p) * u.v ** 2)}


def closed_form(name: str, u: Unit, noise: str) -> dict[str, tuple[float, float]]:
    """``{param: (mean, variance)}`` of the single-sample estimate, from the formulas above."""
    p, phi = u.cdf_pdf(noise)
    f1, f0 = (u.v + u.c - u.y) ** 2, (u.c - u.y) ** 2
    delta, m = f1 - f0, min(p, 1 - p)
    if name == "reinforce":
        mean, var = phi * delta, p * (1 - p) * phi ** 2 * (f1 / p + f0 / (1 - p)) ** 2
    elif name == "st":
        mean, var = 2 * u.v * phi * (u.v * p + u.c - u.y), p * (1 - p) * (2 * u.v ** 2 * phi) ** 2
    elif name == "st-identity":
        mean, var = 2 * u.v * (u.v * p + u.c - u.y), p * (1 - p) * (2 * u.v ** 2) ** 2
    elif name == "arm":
        mean = delta * m * (1 - m)
        var = 2 * delta ** 2 / 3 * (1 / 8 - (0.5 - m) ** 3) - mean ** 2
    elif name == "disarm":
        mean, var = delta * m * (1 - m), delta ** 2 * m * (1 - m) ** 2 * (0.5 - m)
    else:
        raise AssertionError(name)
    return {"weight_1": (u.x0 * mean, u.x0 ** 2 * var), "bias_1": (mean, var), **_output_moments(u, p)}


@pytest.mark.parametrize("noise", ["logistic", "gaussian"])
@pytest.mark.parametrize("u", UNITS, ids=UNIT_IDS)
def test_exact_gradient_formula(u: Unit, noise: str) -> None:
    """The unbiased means above are the reference's exact gradient (checks the derivation)."""
    _, g = exact_gradient(u.problem(noise))
    want = closed_form("reinforce", u, noise)
    for k in NAMES:
        assert math.isclose(float(g[k].flatten()[0]), want[k][0], rel_tol=1e-12, abs_tol=1e-15), \
            (k, float(g[k].flatten()[0]), want[k][0])


@pytest.mark.parametrize("noise", ["logistic", "gaussian"])
@pytest.mark.parametrize("name", ["reinforce", "st", "st-identity"])
@pytest.mark.parametrize("u", UNITS, ids=UNIT_IDS)
def test_path_estimators_exactly(name: str, u: Unit, noise: str) -> None:
    """Both states enumerated: mean ``(1 − p) ĝ(0) + p ĝ(1)``, variance ``p (1 − p)(ĝ(1) − ĝ(0))²``."""
    problem = u.problem(noise)
    p, _ = u.cdf_pdf(noise)
    g = estimate_on_paths(REGISTRY.create(name), problem, [torch.tensor([[[0.0]], [[1.0]]], dtype=F64)])
    want = closed_form(name, u, noise)
    for k in NAMES:
        g0, g1 = (float(v) for v in g[k].reshape(2))
        mean, var = (1 - p) * g0 + p * g1, p * (1 - p) * (g1 - g0) ** 2
        assert math.isclose(mean, want[k][0], rel_tol=1e-12, abs_tol=1e-15), (name, k, mean, want[k])
        assert math.isclose(var, want[k][1], rel_tol=1e-12, abs_tol=1e-15), (name, k, var, want[k])


def _arm_by_u(name: str, u: Unit, U: torch.Tensor) -> torch.Tensor:
    """ARM / DisARM's ``ĝ_a`` as a function of ``U`` (SPEC §3, written out for one unit)."""
    a = u.w * u.x0 + u.b
    p = 1 / (1 + math.exp(-a))
    f = lambda x: (u.v * x + u.c - u.y) ** 2  # noqa: E731
    b1, b2 = (U > 1 - p).to(F64), (U < p).to(F64)
    diff = f(b1) - f(b2)
    if name == "arm":
        return diff * (U - 0.5)
    return 0.5 * diff * (1 - 2 * b2) * (b1 != b2).to(F64) / (1 + math.exp(-abs(a)))


@pytest.mark.parametrize("name", ["arm", "disarm"])
@pytest.mark.parametrize("u", UNITS, ids=UNIT_IDS)
def test_arm_disarm_formulas_by_quadrature(name: str, u: Unit) -> None:
    """Midpoint rule over ``U`` on 10⁶ cells: the integrand jumps at ``m`` and ``1 − m`` only, so
    the error is below 2 cells' worth of its range (≈ 1e-5 relative)."""
    n = 1_000_000
    U = (torch.arange(n, dtype=F64) + 0.5) / n
    g = _arm_by_u(name, u, U)
    mean, var = closed_form(name, u, "logistic")["bias_1"]
    scale = float(g.abs().max())
    assert abs(float(g.mean()) - mean) <= 4 * scale / n, (float(g.mean()), mean)
    assert abs(float(g.var(correction=0)) - var) <= 4 * scale ** 2 / n, (float(g.var()), var)


def _assert_moments(what: str, x: torch.Tensor, mu: float, var: float, mu4: float) -> None:
    """``NUM_SAMPLES`` estimates ``x`` against their law's mean ``mu``, variance ``var`` and fourth
    central moment ``mu4``: ``|mean − μ| ≤ Z σ/√n``, ``|s² − σ²| ≤ Z √((μ₄ − σ⁴)/n)``."""
    m, s2 = float(x.mean()), float(x.var())
    tol_m = Z * math.sqrt(var / NUM_SAMPLES)
    tol_v = Z * math.sqrt(max(mu4 - var ** 2, 0.0) / NUM_SAMPLES)
    assert abs(m - mu) <= tol_m, f"{what}: mean {m:.6g}, expected {mu:.6g} ± {tol_m:.3g}"
    assert abs(s2 - var) <= tol_v, f"{what}: variance {s2:.6g}, expected {var:.6g} ± {tol_v:.3g}"


@pytest.mark.parametrize("name", ["arm", "disarm"])
@pytest.mark.parametrize("u", UNITS, ids=UNIT_IDS)
def test_arm_disarm_monte_carlo(name: str, u: Unit) -> None:
    """``NUM_SAMPLES`` seeded estimates against the closed forms. Mean: ``|mean − μ| ≤ Z σ/√n``.
    Variance: ``|s² − σ²| ≤ Z √((μ₄ − σ⁴)/n)``, the fourth central moment ``μ₄`` by quadrature over
    ``U`` (hidden layer) or of the two-point law (output layer)."""
    problem = u.problem("logistic")
    want = closed_form(name, u, "logistic")
    g = estimate(REGISTRY.create(name), problem, NUM_SAMPLES, torch.Generator().manual_seed(7))
    p, _ = u.cdf_pdf("logistic")
    U = (torch.arange(1_000_000, dtype=F64) + 0.5) / 1_000_000
    hidden = _arm_by_u(name, u, U)
    two_point = {"weight_out": 2 * (u.v + u.c - u.y), "bias_out": 2 * u.v}  # ĝ(1) − ĝ(0)
    for k in NAMES:
        mu, var = want[k]
        if k in two_point:  # central 4th moment of a two-point law: p(1−p)(1 − 3p(1−p)) d⁴
            mu4 = p * (1 - p) * (1 - 3 * p * (1 - p)) * two_point[k] ** 4
        else:
            scale = u.x0 if k == "weight_1" else 1.0
            mu4 = float(((scale * hidden - mu) ** 4).mean())
        _assert_moments(f"{name} {k}", g[k].flatten(), mu, var, mu4)


def _relaxed_by_u(name: str, u: Unit, tau: float, U: torch.Tensor) -> dict[str, torch.Tensor]:
    """Concrete and straight-through Gumbel-Softmax written out for one logistic unit as functions
    of ``U`` (``Z = logit U``, ``s = σ((a − Z)/τ)``, ``∂s/∂a = s (1 − s)/τ``). ``concrete`` feeds ``s``
    forward: ``r = v s + c − y``, ``ĝ_a = 2 v r s (1 − s)/τ``, ``ĝ_v = 2 r s``, ``ĝ_c = 2 r``.
    ``st-gumbel`` feeds ``x = [a − Z ≥ 0] = [U ≤ p]`` forward and backs through ``s``:
    ``r = v x + c − y``, ``ĝ_a = 2 v r s (1 − s)/τ``, ``ĝ_v = 2 r x``, ``ĝ_c = 2 r``."""
    a = u.w * u.x0 + u.b
    s = torch.sigmoid((a - torch.logit(U)) / tau)
    x = s if name == "concrete" else (a - torch.logit(U) >= 0).to(F64)
    r = u.v * x + u.c - u.y
    ga = 2 * u.v * r * s * (1 - s) / tau
    return {"weight_1": u.x0 * ga, "bias_1": ga, "weight_out": 2 * r * x, "bias_out": 2 * r}


@pytest.mark.parametrize("tau", [0.5, 1.0])
@pytest.mark.parametrize("name", ["concrete", "st-gumbel"])
@pytest.mark.parametrize("u", UNITS, ids=UNIT_IDS)
def test_relaxed_estimators_monte_carlo(name: str, u: Unit, tau: float) -> None:
    """``NUM_SAMPLES`` seeded estimates against their law written out above. Mean and variance by
    a midpoint rule over ``U`` on 10⁶ cells (error ≈ 1e-6 relative, far below the tolerances);
    ``|mean − μ| ≤ Z σ/√n`` and ``|s² − σ²| ≤ Z √((μ₄ − σ⁴)/n)`` (failure rate :data:`ALPHA`)."""
    problem = u.problem("logistic")
    g = estimate(REGISTRY.create(f"{name}:tau={tau}"), problem, NUM_SAMPLES,
                 torch.Generator().manual_seed(11))
    U = (torch.arange(1_000_000, dtype=F64) + 0.5) / 1_000_000
    law = _relaxed_by_u(name, u, tau, U)
    for k in NAMES:
        mu, var = float(law[k].mean()), float(law[k].var(correction=0))
        mu4 = float(((law[k] - mu) ** 4).mean())
        _assert_moments(f"{name} {k}", g[k].flatten(), mu, var, mu4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.1, 1.0, 3.0])
def test_the_concrete_node_is_the_plain_sigmoid_bit_for_bit(dtype: torch.dtype, tau: float) -> None:
    """``Concrete`` claims the same operations in the same order as ``torch.sigmoid((a − z)/τ)``:
    the same bits forward and backward (its docstring), here on values saturated and not."""
    from sbn_bench.estimators.builtin.relaxed import Concrete

    gen = torch.Generator().manual_seed(3)
    a0 = 4 * torch.randn(64, 5, generator=gen, dtype=dtype)
    z = torch.logit(torch.rand(64, 5, generator=gen, dtype=dtype).clamp(1e-6, 1 - 1e-6))
    up = torch.randn(64, 5, generator=gen, dtype=dtype)
    a1, a2 = a0.clone().requires_grad_(), a0.clone().requires_grad_()
    mine, plain = Concrete.apply(a1, z, tau), torch.sigmoid((a2 - z) / tau)
    assert torch.equal(mine, plain)
    (mine * up).sum().backward()
    (plain * up).sum().backward()
    assert torch.equal(a1.grad, a2.grad)

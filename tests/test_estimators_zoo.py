"""The properties SPEC §3b's last column asks of the second wave of estimators, beyond the
conformance table (which already checks every one of them, unbiasedness included: exactly by path
enumeration for ``muprop`` and ``nvil``, by seeded z-tests for ``leg``, ``rebar``, ``relax``,
``arms`` and ``double-cv``):

* ``arms`` with ``K = 2`` is ``disarm`` on the same uniforms; the Dirichlet copula's marginals and
  pairwise joint law are those its debiasing factor assumes;
* ``hard-st``, ``ap2``, ``local-reparam`` equal independent transcriptions of the PSA authors'
  ``HardSTMethod``, ``AP2Method`` and ``LocalReparamMethod`` (``shekhovt/PSA-Neurips2020``,
  ``models/methods.py``), written here in their ±1 states;
* ``ap2`` is ``tanh`` where the variances vanish;
* ``reinmax``: ``E_x[∂x/∂a] = F'(a)`` exactly, and the estimator backpropagates that derivative;
* ``gr-mc``: ``K = 1`` is ``st-gumbel`` on the same noise; same mean as ``st-gumbel``, lower
  variance;
* ``double-cv`` is exactly unbiased, every joint state of its ``K`` draws enumerated;
* ``leg`` is exact for a layer of one unit.

Statistical tests are seeded; each fails a correct estimator with probability at most
:data:`ALPHA` (two-sided, Bonferroni over the coordinates it looks at, unless said otherwise).
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import pytest
import torch
from torch import Tensor

from sbn_bench import model
from sbn_bench.estimators import Estimator, estimate, estimate_on_paths, load_registry
from sbn_bench.estimators import testing as kit
from sbn_bench.estimators.builtin import antithetic, control_variates, straight_through
from sbn_bench.estimators.kernel import uniform
from sbn_bench.problems import Problem, random_problem
from sbn_bench.reference import exact_gradient

REGISTRY = load_registry()
F64 = torch.float64
ALPHA = 1e-6
V_S = math.pi ** 2 / 3
"""The logistic noise's variance (the PSA authors' ``V_S``)."""


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_same(got: dict[str, Tensor], want: dict[str, Tensor], rtol: float = 1e-12) -> None:
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=1e-13, msg=k)


def _flat(grads: dict[str, Tensor], hidden_only: bool = False) -> Tensor:
    return torch.cat([v.flatten(1) for k, v in grads.items()
                      if not (hidden_only and k.endswith("_out"))], dim=1).to(F64)


NETS = [("2-3-2-1", "logistic", "logistic"), ("3-2-2-3", "softmax", "gaussian"),
        ("2-4-3-2", "mse", "logistic"), ("2-3-1", "logistic", "gaussian")]
NET_IDS = ["-".join(n) for n in NETS]


# --------------------------------------------------------------------------------------------
# arms


def _antithetic_pair(k: int, p: Tensor, generator: torch.Generator) -> Tensor:
    """DisARM's pair as a copula: one uniform ``U`` per unit, ``(1 − U, U)``, so that
    ``[1 − U < p] = [U > F(−a)]`` is DisARM's ``b₁`` and ``[U < p]`` its ``b₂``, in that order."""
    u = uniform(p.shape, p, generator)
    return torch.stack([1 - u, u])


@pytest.mark.parametrize(("arch", "loss"), [("2-3-1", "logistic"), ("2-3-2-2", "softmax"),
                                            ("3-2-3-2-2", "mse")])
def test_arms_with_two_draws_is_disarm_on_the_same_uniforms(arch: str, loss: str) -> None:
    """Fed one uniform per unit as DisARM draws it, ARMS with ``K = 2`` consumes the generator as
    DisARM does (the pair, then the fresh downstream samples of both states) and gives DisARM's
    estimate: its debiasing factor ``m(1 − m)/(m − 0) = 1 − m = σ(|a|)`` and ``(f₁ − f̄)(b₁ − p) +
    (f₂ − f̄)(b₂ − p) = ½ (f₁ − f₂)(b₁ − b₂)``."""
    p = random_problem(arch, 5, data_points=4, loss=loss)
    arms2 = Estimator("arms", lambda q, r, g: antithetic.arms_surrogate(q, r, g, 2, _antithetic_pair),
                      randomness="continuous", noises=frozenset({"logistic"}))
    got = estimate(arms2, p, 64, _gen(3))
    want = estimate(REGISTRY.create("disarm"), p, 64, _gen(3))
    assert float(want["weight_1"].abs().max()) > 1e-3  # a real comparison, not of zeros
    _assert_same(got, want)


def test_dirichlet_copula_with_two_draws_is_disarms_pair() -> None:
    """``K = 2``: ``d₂ = 1 − d₁``, so the copula's two uniforms are ``(c, 1 − c)`` (oriented for
    ``p``): the antithetic pair the test above feeds."""
    p = torch.rand(5000, generator=_gen(0), dtype=F64)
    u = antithetic.dirichlet_copula(2, p, _gen(1))
    torch.testing.assert_close(u[1], 1 - u[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [3, 4, 6])
def test_dirichlet_copula_has_the_marginals_and_joint_law_the_debiasing_assumes(k: int) -> None:
    """Each of the ``K`` uniforms is ``U(0, 1)`` (``P(u_i < m) = m``) and two of them fall below
    ``m ≤ ½`` together with probability :func:`~antithetic.copula_joint`, the formula of the
    debiasing factor. Binomial frequencies over ``n`` draws, z-bound over the 2 × 4 levels and the
    ``K`` (resp. ``K(K−1)/2``) pairs, failure rate :data:`ALPHA` in total."""
    n = 200_000
    levels = [0.05, 0.2, 0.35, 0.5]
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    z = NormalDist().inv_cdf(1 - ALPHA / (2 * len(levels) * (k + len(pairs))))
    for m in levels:
        p = torch.full((n,), m, dtype=F64)  # p < ½: no reorientation; p = ½: u = 1 − c
        u = antithetic.dirichlet_copula(k, p, _gen(int(100 * m) + k))
        below = (u < m).to(F64)  # [K, n]
        for i in range(k):
            freq = float(below[i].mean())
            assert abs(freq - m) <= z * math.sqrt(m * (1 - m) / n), (k, m, i, freq)
        joint = float(antithetic.copula_joint(torch.tensor(m, dtype=F64), k))
        for i, j in pairs:
            freq = float((below[i] * below[j]).mean())
            tol = z * math.sqrt(max(joint * (1 - joint), 1 / n) / n)
            assert abs(freq - joint) <= tol, (k, m, i, j, freq, joint, tol)


# --------------------------------------------------------------------------------------------
# transcriptions of the PSA authors' HardST, AP2 and LocalReparam (their ±1 states)


def _pm_layer(params: dict[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
    """Weights ``[S, out, in]`` and biases acting on ±1 states: ``W x + b = (W/2) s + (b + W·1/2)``
    (SPEC §1), as the authors' networks are parameterised."""
    w, b = params[f"weight_{name}"], params[f"bias_{name}"]
    return w / 2, b + w.sum(-1) / 2


def _affine(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return h @ w.transpose(-1, -2) + b.unsqueeze(-2)


def hard_st_transcription(problem: Problem, params: dict[str, Tensor], states: list[Tensor]) -> Tensor:
    """``HardSTMethod.linear``: ``a = A(x)``, ``out = sign_bernoulli(σ(a))``, ``out = out.detach() +
    (hardtanh(a) − hardtanh(a).detach())``, the first layer on the real input, the others on the ±1
    states; ``Method.output``: the loss of the last linear layer's logits. ``[S]``."""
    h: Tensor = problem.x
    for k, x in enumerate(states, start=1):
        w, b = (params[f"weight_{k}"], params[f"bias_{k}"]) if k == 1 else _pm_layer(params, str(k))
        a = _affine(h, w, b)
        out = 2 * x - 1  # the sampled ±1 state
        clip = torch.nn.functional.hardtanh(a)
        h = out.detach() + (clip - clip.detach())
    w, b = _pm_layer(params, "out")
    return problem.loss_values(_affine(h, w, b)).mean(-1)


def _sign_bernoulli_ap2(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """``sign_bernoulli_AP2``: ``p = Phi_approx(mean/√(var + V_S))``, ``Phi_approx(x) =
    σ(x √V_S)``; the ±1 state's moments ``(2p − 1, 4p(1 − p))``."""
    p = torch.sigmoid(mean / torch.sqrt(var + V_S) * math.sqrt(V_S))
    return 2 * p - 1, 4 * p * (1 - p)


def moments_transcription(problem: Problem, params: dict[str, Tensor],
                          generator: torch.Generator | None) -> Tensor:
    """``AP2Method`` (``generator`` None) or ``LocalReparamMethod``: ``preprocess_input`` gives
    ``RandomVar(x, 0)``; ``linear``: ``y.mean = A(x.mean)``, ``y.var = A_{W²}(x.var)`` (no bias);
    LocalReparam samples ``a = y.mean + n √(y.var + 1e-16)`` (``RandomVar.sample``) and passes
    ``RandomVar(a)`` (variance 0) on; then ``sign_bernoulli_AP2``. The output layer's moments as
    ``linear`` computes them; LocalReparam samples the logits from them, AP2 (this package's ``ap2``,
    see its docstring) takes the loss at their mean. ``[S]``."""
    m: Tensor = problem.x
    v = torch.zeros_like(m)
    for k in range(1, problem.n_layers + 1):
        w, b = (params[f"weight_{k}"], params[f"bias_{k}"]) if k == 1 else _pm_layer(params, str(k))
        mean, var = _affine(m, w, b), _affine(v, w * w, torch.zeros_like(b))
        if generator is not None:
            n = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            mean, var = mean + n * torch.sqrt(var + 1e-16), torch.zeros_like(var)
        m, v = _sign_bernoulli_ap2(mean, var)
    w, b = _pm_layer(params, "out")
    mean, var = _affine(m, w, b), _affine(v, w * w, torch.zeros_like(b))
    if generator is not None:
        n = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        mean = mean + n * torch.sqrt(var + 1e-16)
    return problem.loss_values(mean).mean(-1)


def _gradients(fn, problem: Problem, num_samples: int, *args) -> dict[str, Tensor]:
    reps = model.replicate(problem.params, num_samples)
    out = fn(problem, reps, *args)
    grads = torch.autograd.grad(out.sum(), list(reps.values()))
    return dict(zip(reps, grads))


@pytest.mark.parametrize(("arch", "loss", "noise"), NETS, ids=NET_IDS)
def test_hard_st_is_the_authors_hardst(arch: str, loss: str, noise: str) -> None:
    problem = random_problem(arch, 8, data_points=5, loss=loss, noise=noise)
    states, preacts = model.sample_states(problem.params, problem.x, problem.noise_dist, 40, _gen(2))
    assert any(bool((a.abs() < 1).any()) for a in preacts) and any(bool((a.abs() > 1).any())
                                                                      for a in preacts)
    got = estimate_on_paths(REGISTRY.create("hard-st"), problem, states)
    _assert_same(got, _gradients(hard_st_transcription, problem, 40, states))


@pytest.mark.parametrize(("arch", "loss"), [("2-3-2-1", "logistic"), ("3-2-2-3", "softmax"),
                                            ("2-4-3-2", "mse"), ("2-3-1", "logistic")])
def test_ap2_is_the_authors_ap2(arch: str, loss: str) -> None:
    problem = random_problem(arch, 9, data_points=5, loss=loss)
    got = estimate(REGISTRY.create("ap2"), problem, 3, _gen(0))
    _assert_same(got, _gradients(moments_transcription, problem, 3, None))


@pytest.mark.parametrize(("arch", "loss"), [("2-3-2-1", "logistic"), ("3-2-2-3", "softmax"),
                                            ("2-4-3-2", "mse")])
def test_local_reparam_is_the_authors_local_reparam(arch: str, loss: str) -> None:
    """The same normal draws (one per pre-activation, layer by layer, then one per logit, as
    both sample them) give the same estimates."""
    problem = random_problem(arch, 10, data_points=5, loss=loss)
    got = estimate(REGISTRY.create("local-reparam"), problem, 30, _gen(4))
    _assert_same(got, _gradients(moments_transcription, problem, 30, _gen(4)))


@pytest.mark.parametrize("noise", ["logistic", "gaussian"])
@pytest.mark.parametrize(("arch", "loss"), [("2-3-1", "logistic"), ("3-4-3", "softmax"),
                                            ("2-2-2", "mse")])
def test_ap2_is_tanh_with_one_stochastic_layer(arch: str, loss: str, noise: str) -> None:
    """The first layer's pre-activations have variance 0 (the input is deterministic), so AP2's
    ``F(μ s/√(0 + s²)) = F(μ)``: the mean field, and the loss at the mean output is ``tanh``'s."""
    problem = random_problem(arch, 11, data_points=5, loss=loss, noise=noise)
    _assert_same(estimate(REGISTRY.create("ap2"), problem, 2, _gen(0)),
                 estimate(REGISTRY.create("tanh"), problem, 2, _gen(0)))


@pytest.mark.parametrize("noise", ["logistic", "gaussian"])
def test_ap2_is_tanh_where_the_variances_vanish_in_a_deep_net(noise: str) -> None:
    """A 2-2-2-1 net whose second layer sees only a saturated unit: layer 1's unit 0 has bias 800
    (``F = 1``, variance ``p(1 − p) = 0`` in float64), layer 2's weights from unit 1 are 0. Layer 2's
    pre-activations then have variance ``W₂₀² · 0 + 0² · p₁(1 − p₁) = 0`` and its ``∂var/∂W₂₁ =
    2 W₂₁ p₁(1 − p₁) = 0``: AP2 and ``tanh`` agree on the value and on every gradient, which are not
    all zero (layer 2, its weight from the unsaturated unit, the output layer). With the variances
    back (a nonzero weight from unit 1), they differ."""
    base = random_problem("2-2-2-1", 12, data_points=5, noise=noise)
    params = {k: v.clone() for k, v in base.params.items()}
    params["bias_1"][0] = 800.0
    params["weight_1"][0] = 0.0
    params["weight_2"][:, 1] = 0.0
    problem = base.with_params(params)
    ap2 = estimate(REGISTRY.create("ap2"), problem, 2, _gen(0))
    tanh = estimate(REGISTRY.create("tanh"), problem, 2, _gen(0))
    _assert_same(ap2, tanh)
    for name in ("weight_2", "bias_2", "weight_out"):
        assert float(tanh[name].abs().max()) > 1e-3, name
    assert float(tanh["weight_2"][:, :, 1].abs().max()) > 1e-3
    params["weight_2"][:, 1] = 1.5
    problem = base.with_params(params)
    differs = estimate(REGISTRY.create("ap2"), problem, 2, _gen(0))
    mean_field = estimate(REGISTRY.create("tanh"), problem, 2, _gen(0))
    assert float((differs["bias_2"] - mean_field["bias_2"]).abs().max()) > 1e-6


# --------------------------------------------------------------------------------------------
# reinmax


def test_reinmax_derivative_is_exact_in_mean() -> None:
    """``E_x[∂x/∂a] = p·c(1) + (1 − p)·c(0) = F'(a) = p(1 − p)`` for every ``a`` (``x ~
    Bernoulli(p)``, ``p = σ(a)``), though neither state's derivative is ``F'(a)``: equal to float64
    rounding (``1 − p`` loses digits as ``p → 1``, hence the absolute tolerance of a few ulps of
    the largest term)."""
    a = torch.linspace(-12, 12, 2001, dtype=F64)
    p = torch.sigmoid(a)
    c1 = straight_through.reinmax_coefficient(p, torch.ones_like(p))
    c0 = straight_through.reinmax_coefficient(p, torch.zeros_like(p))
    eps = torch.finfo(F64).eps
    torch.testing.assert_close(p * c1 + (1 - p) * c0, p * (1 - p), rtol=1e-12, atol=4 * eps)
    assert float((c1 - c0).abs().max()) > 0.1


def test_reinmax_backpropagates_that_derivative() -> None:
    """One unit (``1-1-1``, mse): ``ĝ_b = c(x) ∂ℓ/∂x = c(x) · 2v(vx + c − y)`` and ``ĝ_w = x⁰ ĝ_b``
    for both states, and the mean over the two states weighted by ``p`` is ``F'(a) E[∂ℓ/∂x]`` only
    where ``∂ℓ/∂x`` does not depend on ``x`` (it does here: the estimator stays biased)."""
    x0, w, b, v, c, y = 0.7, 1.3, -0.4, 2.0, -0.5, 0.3
    t = lambda *vals: torch.tensor(vals, dtype=F64)  # noqa: E731
    problem = Problem({"weight_1": t([w]), "bias_1": t(b), "weight_out": t([v]), "bias_out": t(c)},
                      t([x0]), t(y), loss="mse", name="unit")
    g = estimate_on_paths(REGISTRY.create("reinmax"), problem, [t([[0.0]], [[1.0]])])
    p = torch.sigmoid(t(w * x0 + b))
    for i, x in enumerate((0.0, 1.0)):
        coef = float(straight_through.reinmax_coefficient(p, t(x)))
        want = coef * 2 * v * (v * x + c - y)
        assert math.isclose(float(g["bias_1"][i]), want, rel_tol=1e-12), (x, float(g["bias_1"][i]), want)
        assert math.isclose(float(g["weight_1"][i, 0, 0]), x0 * want, rel_tol=1e-12)


# --------------------------------------------------------------------------------------------
# gr-mc


@pytest.mark.parametrize("tau", [0.3, 1.0])
@pytest.mark.parametrize(("arch", "loss", "noise"), NETS, ids=NET_IDS)
def test_gumbel_rao_with_one_draw_is_st_gumbel(arch: str, loss: str, noise: str, tau: float) -> None:
    """``K = 1`` draws the noise as ``st-gumbel`` does and averages one backward: the same estimates
    (to rounding: ``σ(1 − σ)/τ`` is computed in another order)."""
    problem = random_problem(arch, 13, data_points=4, loss=loss, noise=noise)
    _assert_same(estimate(REGISTRY.create(f"gr-mc:k=1,tau={tau}"), problem, 50, _gen(6)),
                 estimate(REGISTRY.create(f"st-gumbel:tau={tau}"), problem, 50, _gen(6)), rtol=1e-10)


GR_PROBLEMS = ["logistic", "softmax-gaussian"]


@pytest.mark.parametrize("kind", GR_PROBLEMS)
def test_gumbel_rao_has_st_gumbels_mean(kind: str) -> None:
    """Two-sample z-test per coordinate (independent seeds, ``n`` samples each), Bonferroni over
    the coordinates: the conditional resampling does not move the mean."""
    problem = kit.check_problem(kind)
    n = 20_000
    a = _flat(estimate(REGISTRY.create("st-gumbel:tau=0.5"), problem, n, _gen(1)))
    b = _flat(estimate(REGISTRY.create("gr-mc:k=10,tau=0.5"), problem, n, _gen(2)))
    se = torch.sqrt(a.var(0) / n + b.var(0) / n)
    z = NormalDist().inv_cdf(1 - ALPHA / (2 * a.shape[1]))
    diff = (a.mean(0) - b.mean(0)).abs()
    assert bool((diff <= z * se + 1e-12).all()), f"means differ: max z = {float((diff / se).max()):.2f}"


@pytest.mark.parametrize("kind", GR_PROBLEMS)
def test_gumbel_rao_has_lower_variance_than_st_gumbel(kind: str) -> None:
    """The total variance of the hidden layers' estimates, ``E‖ĝ − Eĝ‖²``, estimated by the mean of
    ``Y = ‖ĝ − ḡ‖²`` over ``n`` samples of each (independent seeds); one-sided z-test of "not lower"
    at level :data:`ALPHA`. On these nets the gap is about 20–50 standard errors, so a correct
    estimator fails with a probability far below ``ALPHA``."""
    problem = kit.check_problem(kind)
    n = 4000
    ys = []
    for spec, seed in [("st-gumbel:tau=0.5", 1), ("gr-mc:k=10,tau=0.5", 2)]:
        g = _flat(estimate(REGISTRY.create(spec), problem, n, _gen(seed)), hidden_only=True)
        ys.append(((g - g.mean(0)) ** 2).sum(1))
    st, gr = ys
    z = float((st.mean() - gr.mean()) / torch.sqrt(st.var() / n + gr.var() / n))
    assert z > NormalDist().inv_cdf(1 - ALPHA), f"variance {float(gr.mean()):.4g} (gr-mc) vs " \
        f"{float(st.mean()):.4g} (st-gumbel): z = {z:.2f}"


# --------------------------------------------------------------------------------------------
# double-cv and leg


@pytest.mark.parametrize(("arch", "loss", "noise", "k", "alpha"), [
    ("2-2-1", "logistic", "logistic", 2, -1.0),
    ("2-2-3", "softmax", "gaussian", 3, -1.0),
    ("3-2-2", "mse", "logistic", 2, 0.7),
    ("2-3-1", "logistic", "gaussian", 2, 0.0),
])
def test_double_cv_is_exactly_unbiased(arch: str, loss: str, noise: str, k: int, alpha: float) -> None:
    """``E ĝ = (1/D) Σ_d Σ_{b_1..b_K} Π_i p(b_i | x⁰_d) ĝ_d(b_1..b_K)``, all ``2^{K n}`` joint states
    of the ``K`` draws enumerated (each given to the estimator as ``K`` states of one path), equals
    the exact gradient to 1e-10."""
    problem = random_problem(arch, 14, data_points=3, loss=loss, noise=noise)
    n = problem.widths[1]
    joint = model.all_states(k * n).view(-1, k, n)  # [P, K, n]
    states = joint.permute(1, 0, 2).unsqueeze(2)  # [K, P, 1, n]
    _, exact = exact_gradient(problem)
    total = {name: torch.zeros_like(g) for name, g in exact.items()}
    for d in range(problem.num_data):
        one = dataclasses.replace(problem, x=problem.x[d:d + 1], y=problem.y[d:d + 1])
        reps = model.replicate(one.params, joint.shape[0])
        surr = control_variates.double_cv_given(one, reps, states, alpha)
        grads = torch.autograd.grad(surr.sum(), list(reps.values()))
        p = one.noise_dist.cdf(model.preactivation(one.params, 1, one.x))[0]  # [n]
        weight = torch.where(joint > 0, p, 1 - p).prod(-1).prod(-1)  # [P]
        assert abs(float(weight.sum()) - 1) < 1e-12
        for name, g in zip(reps, grads):
            total[name] += torch.tensordot(weight, g, dims=1) / problem.num_data
    for name, g in exact.items():
        err, scale = float((total[name] - g).norm()), float(g.norm())
        assert err <= 1e-10 * scale + 1e-15, f"{name}: E ĝ = {total[name].tolist()}, exact {g.tolist()}"


def test_double_cv_is_refused_on_a_deep_net() -> None:
    from sbn_bench.estimators import UnsupportedProblem

    with pytest.raises(UnsupportedProblem, match="one stochastic layer only"):
        estimate(REGISTRY.create("double-cv"), random_problem("2-2-2-1", 0, data_points=3), 2, _gen(0))


@pytest.mark.parametrize(("loss", "noise"), [("logistic", "logistic"), ("mse", "gaussian"),
                                             ("softmax", "logistic")])
def test_leg_is_exact_for_a_layer_of_one_unit(loss: str, noise: str) -> None:
    """With one stochastic layer of one unit there is nothing else to sample: ``F'(a)(ℓ(1) − ℓ(0))``
    is ``∂J/∂a`` itself, so every sample of the hidden layer's estimate is the exact gradient."""
    arch = "2-1-3" if loss == "softmax" else "2-1-1"
    problem = random_problem(arch, 15, data_points=4, loss=loss, noise=noise)
    g = estimate(REGISTRY.create("leg"), problem, 20, _gen(0))
    _, exact = exact_gradient(problem)
    for name in ("weight_1", "bias_1"):
        torch.testing.assert_close(g[name], exact[name].expand_as(g[name]), rtol=1e-12, atol=1e-15)
    assert float(g["weight_out"].std(0).max()) > 0  # the output layer is still sampled


# --------------------------------------------------------------------------------------------
# rebar and relax: the conditional noise


def test_conditional_logistic_noise_has_the_sample_value_and_the_conditional_derivative() -> None:
    """``Z̃`` equals ``z = logit(u)`` and ``∂(a − Z̃)/∂a`` is the conditional reparameterisation's
    derivative, in closed form: with ``ṽ`` the conditional uniform, ``v = ṽ σ(a)`` (``x = 1``) has
    ``∂ logit(v)/∂a = σ(−a)/(1 − v)`` and ``v = 1 − (1 − ṽ) σ(−a)`` (``x = 0``) has ``σ(a)/v``."""
    a = torch.linspace(-6, 6, 41, dtype=F64).repeat(50)
    u = torch.rand(a.shape, generator=_gen(8), dtype=F64)
    x = (u < torch.sigmoid(a)).to(F64)
    assert 0 < float(x.mean()) < 1
    leaf = a.clone().requires_grad_(True)
    z = torch.logit(u)
    zt = control_variates.conditional_logistic(leaf, x, u, z)
    assert torch.equal(zt.detach(), z)
    (slope,) = torch.autograd.grad(zt.sum(), leaf)
    want = torch.where(x > 0, torch.sigmoid(-a) / (1 - u), torch.sigmoid(a) / u)
    torch.testing.assert_close(slope, want, rtol=1e-9, atol=1e-12)

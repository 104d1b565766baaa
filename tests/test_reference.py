"""The exact reference (SPEC §2): chain of transfer matrices vs naive enumeration, closed forms derived
by hand, central finite differences, log-space robustness, and the size guard."""

from __future__ import annotations

import math
import re
import resource

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbn_bench import model
from sbn_bench.problems import Problem, random_problem
from sbn_bench.reference import (
    DEFAULT_MAX_BYTES,
    ReferenceTooLarge,
    check_size,
    estimate_cost,
    exact_gradient,
    leaf_params,
    naive,
    objective,
    objective_per_point,
)
from sbn_bench.reference import chain as chain_module

F64 = torch.float64

RTOL = 1e-10
"""Agreement required between two exact methods (chain and naive enumeration), entry by entry."""


def _naive_gradient(problem: Problem) -> tuple[float, dict[str, torch.Tensor]]:
    leaves = leaf_params(problem)
    J = naive.objective(problem, leaves)
    grads = torch.autograd.grad(J, list(leaves.values()))
    return float(J.detach()), dict(zip(leaves, grads))


def _assert_grads_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rtol: float,
                        atol: float, what: str) -> None:
    """Every entry: ``|got − expected| ≤ rtol·|expected| + atol``; the message names the entry."""
    assert list(got) == list(expected), f"{what}: names {list(got)} vs {list(expected)}"
    for name in expected:
        g, e = got[name], expected[name]
        assert g.shape == e.shape and g.dtype == F64, f"{what} {name}: {g.shape}/{g.dtype} vs {e.shape}"
        err = (g - e).abs()
        tol = rtol * e.abs() + atol
        if not (err <= tol).all():
            i = int(torch.argmax(err - tol))
            raise AssertionError(
                f"{what} {name}[{i}]: expected {e.flatten()[i].item()!r}, actual {g.flatten()[i].item()!r}, "
                f"|diff| {err.flatten()[i].item():.3g} > tolerance {tol.flatten()[i].item():.3g} "
                f"(rtol {rtol:g}, atol {atol:.3g})")


def _scaled(problem: Problem, scale: float) -> Problem:
    return problem.with_params({k: v * scale for k, v in problem.params.items()})


# --------------------------------------------------------------------------------------------
# chain = naive enumeration (hypothesis)

LOSS_OUT = {"logistic": st.just(1), "softmax": st.integers(2, 3), "mse": st.integers(1, 2),
            "bernoulli": st.integers(1, 3)}


@st.composite
def small_problems(draw: st.DrawFn) -> Problem:
    """Random nets of 1–4 stochastic layers of 1–3 units (≤ 2^10 joint paths), 1–3 inputs, every loss
    and noise, 1–6 data points, parameters U(−1, 1) times a scale up to 8 (saturated units)."""
    depth = draw(st.integers(1, 4))
    hidden = draw(st.lists(st.integers(1, 3), min_size=depth, max_size=depth).filter(lambda h: sum(h) <= 10))
    loss = draw(st.sampled_from(sorted(LOSS_OUT)))  # the VAE: tests/test_networks.py
    widths = [draw(st.integers(1, 3)), *hidden, draw(LOSS_OUT[loss])]
    p = random_problem(widths, draw(st.integers(0, 2**31 - 1)), data_points=draw(st.integers(1, 6)),
                       loss=loss, noise=draw(st.sampled_from(model.NOISE_NAMES)))
    return _scaled(p, draw(st.sampled_from([0.1, 0.5, 1.0, 2.0, 4.0, 8.0])))


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_chain_equals_naive_enumeration(problem: Problem) -> None:
    J_chain, g_chain = exact_gradient(problem)
    J_naive, g_naive = _naive_gradient(problem)
    assert abs(J_chain - J_naive) <= RTOL * abs(J_naive), \
        f"{problem.arch} {problem.loss}/{problem.noise}: J expected {J_naive!r}, actual {J_chain!r}"
    # Entry-wise relative, with an absolute floor far below any entry that matters: an entry that is
    # a cancelling sum of O(‖g‖∞) terms is only known to ~1e-16·‖g‖∞ by either method.
    scale = max(float(v.abs().max()) for v in g_naive.values())
    _assert_grads_close(g_chain, g_naive, RTOL, 1e-13 * scale,
                        f"{problem.arch} {problem.loss}/{problem.noise}")


def test_chain_equals_naive_on_the_paper_net(paper: Problem) -> None:
    """The paper's 2-5-5-5-1 net (2^15 joint paths, 200 points): the widest case naive can do."""
    J_chain, g_chain = exact_gradient(paper)
    J_naive, g_naive = _naive_gradient(paper)
    assert abs(J_chain - J_naive) <= RTOL * J_naive, (J_chain, J_naive)
    scale = max(float(v.abs().max()) for v in g_naive.values())
    _assert_grads_close(g_chain, g_naive, RTOL, 1e-13 * scale, "paper")


@pytest.mark.parametrize("arch,loss,noise", [("2-5-1", "logistic", "gaussian"),
                                             ("1-7-2-3", "softmax", "logistic"),
                                             ("3-2-6-2", "mse", "gaussian")])
def test_chain_equals_naive_on_odd_and_wide_layers(arch: str, loss: str, noise: str) -> None:
    """Widths 5–7 exercise the recursive Kronecker split of unequal halves."""
    p = random_problem(arch, 11, data_points=7, loss=loss, noise=noise)
    J_chain, g_chain = exact_gradient(p)
    J_naive, g_naive = _naive_gradient(p)
    assert abs(J_chain - J_naive) <= RTOL * J_naive, (J_chain, J_naive)
    scale = max(float(v.abs().max()) for v in g_naive.values())
    _assert_grads_close(g_chain, g_naive, RTOL, 1e-13 * scale, arch)


def test_objective_per_point_and_mean(tiny: Problem) -> None:
    per_point = objective_per_point(tiny)
    assert per_point.shape == (tiny.num_data,) and per_point.dtype == F64
    torch.testing.assert_close(objective(tiny), per_point.mean(), rtol=1e-15, atol=0)
    for d in range(tiny.num_data):  # point d alone is a one-point problem
        one = Problem(tiny.params, tiny.x[d:d + 1], tiny.y[d:d + 1], loss=tiny.loss, noise=tiny.noise)
        torch.testing.assert_close(objective(one), per_point[d], rtol=1e-14, atol=0)
        torch.testing.assert_close(naive.objective(one), per_point[d], rtol=1e-12, atol=0)


def test_exact_gradient_shapes_and_float64(tiny: Problem) -> None:
    J, g = exact_gradient(tiny.to(dtype=torch.float32))
    assert isinstance(J, float)
    assert list(g) == list(tiny.params)
    for name, v in g.items():
        assert v.shape == tiny.params[name].shape and v.dtype == F64, name
    # float32 parameters are widened to float64, not computed in float32
    J64, g64 = exact_gradient(tiny.to(dtype=torch.float32).to(dtype=F64))
    assert J == J64 and all(torch.equal(g[k], g64[k]) for k in g)


def test_problem_is_not_modified(tiny: Problem) -> None:
    before = {k: v.clone() for k, v in tiny.params.items()}
    exact_gradient(tiny)
    assert all(torch.equal(before[k], tiny.params[k]) and not tiny.params[k].requires_grad for k in before)


def test_hidden_unit_permutation_invariance() -> None:
    """Relabelling the units of a hidden layer (rows of W_k, b_k, columns of W_{k+1}) leaves J unchanged
    and permutes the gradient: checks the state ordering of wide layers where naive is too slow."""
    p = random_problem("2-6-9-7-2", 5, data_points=12, loss="softmax", noise="gaussian")
    J, g = exact_gradient(p)
    perms = {k: torch.randperm(n, generator=torch.Generator().manual_seed(k))
             for k, n in zip((1, 2, 3), p.widths[1:-1])}

    def relabel(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(d)
        for k, perm in perms.items():
            nxt = f"weight_{k + 1}" if k < 3 else "weight_out"
            out[f"weight_{k}"], out[f"bias_{k}"] = out[f"weight_{k}"][perm], out[f"bias_{k}"][perm]
            out[nxt] = out[nxt][:, perm]
        return out

    Jp, gp = exact_gradient(p.with_params(relabel(p.params)))
    assert abs(Jp - J) <= 1e-13 * J, (J, Jp)
    expected = relabel(g)
    scale = max(float(v.abs().max()) for v in g.values())
    _assert_grads_close(gp, expected, 1e-11, 1e-14 * scale, "permuted")


def test_naive_enumeration_basics(tiny: Problem) -> None:
    paths = naive.enumerate_paths(tiny.widths)
    assert [t.shape for t in paths] == [(32, 3), (32, 2)]
    assert torch.unique(torch.cat(paths, dim=1), dim=0).shape[0] == 32
    logp = naive.path_log_probs(tiny, tiny.params, paths)
    assert logp.shape == (32, tiny.num_data)
    torch.testing.assert_close(torch.logsumexp(logp, 0), torch.zeros(tiny.num_data, dtype=F64),
                               rtol=0, atol=1e-14)
    big = random_problem("2-9-8-1", 0, data_points=1)
    with pytest.raises(ValueError, match="131072 joint paths"):
        naive.objective(big)


# --------------------------------------------------------------------------------------------
# closed forms derived by hand


def _F(noise: str, a: float) -> float:
    """F(a): sigmoid or Φ(a) = erfc(−a/√2)/2."""
    return 1 / (1 + math.exp(-a)) if noise == "logistic" else 0.5 * math.erfc(-a / math.sqrt(2))


def _dF(noise: str, a: float) -> float:
    """F'(a): σ(a)σ(−a) or φ(a) = exp(−a²/2)/√(2π)."""
    if noise == "logistic":
        return _F(noise, a) * _F(noise, -a)
    return math.exp(-a * a / 2) / math.sqrt(2 * math.pi)


def _ell(eta: float, y: float) -> float:
    """Logistic loss ℓ(η, y) = log(1 + e^{−yη})."""
    return math.log1p(math.exp(-y * eta))


def _dell(eta: float, y: float) -> float:
    """∂ℓ/∂η = −y e^{−yη}/(1 + e^{−yη}) = −y / (1 + e^{yη})."""
    return -y / (1 + math.exp(y * eta))


def _problem(params: dict[str, list], x: list, y: list, loss: str = "logistic", noise: str = "logistic"
             ) -> Problem:
    return Problem({k: torch.tensor(v, dtype=F64) for k, v in params.items()},
                   torch.tensor(x, dtype=F64), torch.tensor(y, dtype=F64), loss=loss, noise=noise)


@pytest.mark.parametrize("noise", model.NOISE_NAMES)
def test_closed_form_single_unit(noise: str) -> None:
    """Net 1-1-1, logistic loss. With ``a_d = W x_d + b`` and ``p_d = F(a_d)`` the unit is 1 w.p. p_d,
    then ``η = V + c``, else ``η = c``. Writing ``ℓ1_d = ℓ(V + c, y_d)``, ``ℓ0_d = ℓ(c, y_d)``:

        J      = (1/D) Σ_d [ p_d ℓ1_d + (1 − p_d) ℓ0_d ]
        ∂J/∂W  = (1/D) Σ_d F'(a_d) x_d (ℓ1_d − ℓ0_d)          (∂p_d/∂W = F'(a_d) x_d)
        ∂J/∂b  = (1/D) Σ_d F'(a_d) (ℓ1_d − ℓ0_d)
        ∂J/∂V  = (1/D) Σ_d p_d ℓ'(V + c, y_d)                 (only the x = 1 branch sees V)
        ∂J/∂c  = (1/D) Σ_d [ p_d ℓ'(V + c, y_d) + (1 − p_d) ℓ'(c, y_d) ]
    """
    W, b, V, c = 0.7, -0.3, 1.9, -0.4
    xs, ys = [-1.5, 0.2, 0.9, 2.5], [1.0, -1.0, -1.0, 1.0]
    p = _problem({"weight_1": [[W]], "bias_1": [b], "weight_out": [[V]], "bias_out": [c]},
                 [[x] for x in xs], ys, noise=noise)
    D = len(xs)
    J = gW = gb = gV = gc = 0.0
    for x, y in zip(xs, ys):
        a = W * x + b
        pr, dp = _F(noise, a), _dF(noise, a)
        l1, l0 = _ell(V + c, y), _ell(c, y)
        J += (pr * l1 + (1 - pr) * l0) / D
        gW += dp * x * (l1 - l0) / D
        gb += dp * (l1 - l0) / D
        gV += pr * _dell(V + c, y) / D
        gc += (pr * _dell(V + c, y) + (1 - pr) * _dell(c, y)) / D
    got_J, got = exact_gradient(p)
    assert math.isclose(got_J, J, rel_tol=1e-13), (J, got_J)
    expected = {"weight_1": torch.tensor([[gW]], dtype=F64), "bias_1": torch.tensor([gb], dtype=F64),
                "weight_out": torch.tensor([[gV]], dtype=F64), "bias_out": torch.tensor([gc], dtype=F64)}
    _assert_grads_close(got, expected, 1e-12, 1e-16, f"1-1-1 {noise}")


@pytest.mark.parametrize("noise", model.NOISE_NAMES)
def test_closed_form_two_unit_chain(noise: str) -> None:
    """Net 1-1-1-1 (two stochastic units in a chain), logistic loss, one data point x, label y.

    Unit 1 fires w.p. ``p1 = F(a1)``, ``a1 = W1 x + b1``. Given unit 1 in state s, unit 2 fires w.p.
    ``q_s = F(W2 s + b2)``: ``q0 = F(b2)``, ``q1 = F(W2 + b2)``. So unit 2 fires w.p.
    ``π = (1 − p1) q0 + p1 q1`` and, with ``Δ = ℓ(V + c) − ℓ(c)``,

        J       = π ℓ(V + c) + (1 − π) ℓ(c) = ℓ(c) + π Δ
        ∂J/∂W1  = F'(a1) x (q1 − q0) Δ,    ∂J/∂b1 = F'(a1) (q1 − q0) Δ
        ∂J/∂W2  = p1 F'(W2 + b2) Δ         (only s = 1 feels W2)
        ∂J/∂b2  = [(1 − p1) F'(b2) + p1 F'(W2 + b2)] Δ
        ∂J/∂V   = π ℓ'(V + c),             ∂J/∂c = π ℓ'(V + c) + (1 − π) ℓ'(c)
    """
    W1, b1, W2, b2, V, c, x, y = 1.3, 0.2, -2.1, 0.8, 2.4, -0.6, 0.75, -1.0
    p = _problem({"weight_1": [[W1]], "bias_1": [b1], "weight_2": [[W2]], "bias_2": [b2],
                  "weight_out": [[V]], "bias_out": [c]}, [[x]], [y], noise=noise)
    a1 = W1 * x + b1
    p1, q0, q1 = _F(noise, a1), _F(noise, b2), _F(noise, W2 + b2)
    pi = (1 - p1) * q0 + p1 * q1
    delta = _ell(V + c, y) - _ell(c, y)
    J = _ell(c, y) + pi * delta
    expected = {
        "weight_1": [[_dF(noise, a1) * x * (q1 - q0) * delta]],
        "bias_1": [_dF(noise, a1) * (q1 - q0) * delta],
        "weight_2": [[p1 * _dF(noise, W2 + b2) * delta]],
        "bias_2": [((1 - p1) * _dF(noise, b2) + p1 * _dF(noise, W2 + b2)) * delta],
        "weight_out": [[pi * _dell(V + c, y)]],
        "bias_out": [pi * _dell(V + c, y) + (1 - pi) * _dell(c, y)],
    }
    got_J, got = exact_gradient(p)
    assert math.isclose(got_J, J, rel_tol=1e-13), (J, got_J)
    _assert_grads_close(got, {k: torch.tensor(v, dtype=F64) for k, v in expected.items()}, 1e-12, 1e-16,
                        f"1-1-1-1 {noise}")


@pytest.mark.parametrize("noise", model.NOISE_NAMES)
def test_closed_form_one_layer_mse(noise: str) -> None:
    """One layer of n independent units with mse (here 3-2-2: a 2-unit layer, two outputs).

    The states ``x_j`` are independent Bernoulli(p_j), ``p = F(W x⁰ + b)``, and ``η = V x + c`` is
    linear in them, so by bias–variance (mean ``V p + c``, covariance ``V diag(p(1 − p)) Vᵀ``):

        E‖η − y‖² = ‖m‖² + Σ_j ‖V_{:j}‖² p_j (1 − p_j),      m = V p + c − y.

    Differentiating (per data point, then averaged over the D points):
        ∂/∂c = 2m,   ∂/∂V_ij = 2 m_i p_j + 2 V_ij p_j (1 − p_j),
        ∂/∂p_j = 2 (Vᵀm)_j + ‖V_{:j}‖² (1 − 2 p_j),   ∂/∂a_j = F'(a_j) ∂/∂p_j,
        ∂/∂W_jk = ∂/∂a_j x⁰_k,   ∂/∂b_j = ∂/∂a_j.
    """
    rng = np.random.default_rng(4)
    W, b = rng.uniform(-1, 1, (2, 3)), rng.uniform(-1, 1, 2)
    V, c = rng.uniform(-2, 2, (2, 2)), rng.uniform(-1, 1, 2)
    X, Y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    D = X.shape[0]
    J, gW, gb, gV, gc = 0.0, np.zeros_like(W), np.zeros_like(b), np.zeros_like(V), np.zeros_like(c)
    col2 = (V**2).sum(0)  # ‖V_{:j}‖²
    for x0, y in zip(X, Y):
        a = W @ x0 + b
        p = np.array([_F(noise, float(v)) for v in a])
        dp = np.array([_dF(noise, float(v)) for v in a])
        m = V @ p + c - y
        J += (m @ m + col2 @ (p * (1 - p))) / D
        gc += 2 * m / D
        gV += (2 * np.outer(m, p) + 2 * V * (p * (1 - p))[None, :]) / D
        ga = (2 * V.T @ m + col2 * (1 - 2 * p)) * dp
        gW += np.outer(ga, x0) / D
        gb += ga / D
    p = Problem({"weight_1": torch.tensor(W), "bias_1": torch.tensor(b), "weight_out": torch.tensor(V),
                 "bias_out": torch.tensor(c)}, torch.tensor(X), torch.tensor(Y), loss="mse", noise=noise)
    got_J, got = exact_gradient(p)
    assert math.isclose(got_J, J, rel_tol=1e-13), (J, got_J)
    expected = {"weight_1": gW, "bias_1": gb, "weight_out": gV, "bias_out": gc}
    _assert_grads_close(got, {k: torch.tensor(v) for k, v in expected.items()}, 1e-12, 1e-15,
                        f"3-2-2 mse {noise}")


def test_closed_form_softmax_single_unit() -> None:
    """Net 1-1-2, softmax loss, label k. ``η(s) = V[:, 0] s + c``, ``ℓ(η, k) = log Σ_i e^{η_i} − η_k``.
    J = p ℓ(V + c) + (1 − p) ℓ(c) with p = σ(W x + b); ∂ℓ/∂η = softmax(η) − e_k, hence
    ∂J/∂V[:, 0] = p (softmax(V + c) − e_k), ∂J/∂c = p (softmax(V+c) − e_k) + (1 − p)(softmax(c) − e_k),
    ∂J/∂b = σ'(a)(ℓ(V + c) − ℓ(c)), ∂J/∂W = ∂J/∂b · x."""
    W, b, V, c, x, k = -0.9, 0.4, np.array([1.5, -0.5]), np.array([0.2, 0.3]), 1.25, 1
    p = _F("logistic", W * x + b)
    dp = _dF("logistic", W * x + b)

    def ce(eta: np.ndarray) -> float:
        return math.log(np.exp(eta).sum()) - eta[k]

    def dce(eta: np.ndarray) -> np.ndarray:
        return np.exp(eta) / np.exp(eta).sum() - np.eye(2)[k]

    J = p * ce(V + c) + (1 - p) * ce(c)
    gb = dp * (ce(V + c) - ce(c))
    expected = {"weight_1": [[gb * x]], "bias_1": [gb], "weight_out": (p * dce(V + c))[:, None].tolist(),
                "bias_out": (p * dce(V + c) + (1 - p) * dce(c)).tolist()}
    prob = Problem({"weight_1": torch.tensor([[W]], dtype=F64), "bias_1": torch.tensor([b], dtype=F64),
                    "weight_out": torch.tensor(V[:, None]), "bias_out": torch.tensor(c)},
                   torch.tensor([[x]]), torch.tensor([k]), loss="softmax")
    got_J, got = exact_gradient(prob)
    assert math.isclose(got_J, J, rel_tol=1e-13), (J, got_J)
    _assert_grads_close(got, {k: torch.tensor(v, dtype=F64) for k, v in expected.items()}, 1e-12, 1e-16,
                        "1-1-2 softmax")


# --------------------------------------------------------------------------------------------
# finite differences


def _central_differences(problem: Problem, h: float = 1e-6) -> dict[str, torch.Tensor]:
    out = {}
    base = {k: v.clone() for k, v in problem.params.items()}
    for name, v in base.items():
        g = torch.zeros_like(v)
        for i in range(v.numel()):
            plus, minus = v.clone(), v.clone()
            plus.view(-1)[i] += h
            minus.view(-1)[i] -= h
            Jp = float(objective(problem, {**base, name: plus}))
            Jm = float(objective(problem, {**base, name: minus}))
            g.view(-1)[i] = (Jp - Jm) / (2 * h)
        out[name] = g
    return out


@pytest.mark.parametrize("arch,loss,noise,scale", [("2-3-2-1", "logistic", "logistic", 1.0),
                                                   ("1-2-3-2-3", "softmax", "gaussian", 1.0),
                                                   ("3-4-2", "mse", "logistic", 3.0),
                                                   ("2-5-4-1", "logistic", "gaussian", 2.0)])
def test_chain_equals_central_finite_differences(arch: str, loss: str, noise: str, scale: float) -> None:
    """Central differences with h = 1e-6 in float64: truncation error ~ h² J''' / 6 ≈ 1e-13 and
    rounding error ~ ε·|J| / h ≈ 2e-10·|J|; tolerance 1e-7·|g| + 1e-8·max(1, |J|) covers both with room."""
    p = _scaled(random_problem(arch, 2, data_points=6, loss=loss, noise=noise), scale)
    J, g = exact_gradient(p)
    _assert_grads_close(g, _central_differences(p), 1e-7, 1e-8 * max(1.0, J), f"FD {arch}")


# --------------------------------------------------------------------------------------------
# log space: saturated units


def test_saturated_units_match_naive_and_stay_finite() -> None:
    """Weights ×100: most F(±a) are below 1e-300 or exactly 1. The chain must stay finite and agree
    with naive enumeration (which sums exp(log p) per path)."""
    p = _scaled(random_problem("2-3-3-3-1", 8, data_points=10, noise="gaussian"), 100.0)
    J, g = exact_gradient(p)
    assert math.isfinite(J) and all(torch.isfinite(v).all() for v in g.values())
    Jn, gn = _naive_gradient(p)
    assert abs(J - Jn) <= RTOL * Jn, (J, Jn)
    scale = max(float(v.abs().max()) for v in gn.values())
    _assert_grads_close(g, gn, RTOL, 1e-13 * scale, "saturated")


@pytest.mark.parametrize("noise", model.NOISE_NAMES)
def test_deep_saturated_net_is_finite_and_bounded(noise: str) -> None:
    """2-10-10-10-1 with weights ×50 (too big for naive): J is an average of losses, so it lies between
    the smallest and largest output loss over all 2^10 last-layer states; the gradient is finite."""
    p = _scaled(random_problem("2-10-10-10-1", 3, data_points=20, noise=noise), 50.0)
    J, g = exact_gradient(p)
    eta = model.output(p.params, model.all_states(10))  # [1024, 1]
    f = p.loss_values(eta.unsqueeze(1).expand(-1, p.num_data, -1))  # [1024, D]
    lo, hi = float(f.min(0).values.mean()), float(f.max(0).values.mean())
    assert lo - 1e-12 <= J <= hi + 1e-12, (lo, J, hi)
    for name, v in g.items():
        assert torch.isfinite(v).all(), name


# --------------------------------------------------------------------------------------------
# size guard


def test_estimate_cost_formula() -> None:
    """SPEC §2: D·2^{n1} for p_1, 2^{n_{k-1}+n_k} per transfer matrix, D·2^{nL}·n_out for the losses."""
    cost = estimate_cost((2, 5, 6, 7, 3), 40)
    assert cost.states == 40 * 2**5 + 2**11 + 2**13 + 40 * 2**7 * 3
    assert cost.bytes > cost.states * 8  # at least one float64 per entry
    assert estimate_cost((2, 4, 1), 10).states == 10 * 16 + 10 * 16


def _gib(size: str) -> float:
    """A size as the messages write it ("4 GiB", "2.16 KiB (2,208 bytes)", "10 bytes") in GiB."""
    exact = re.search(r"([\d,]+) bytes?\)?$", size)
    if exact:
        return int(exact.group(1).replace(",", "")) / 2**30
    m = re.fullmatch(r"([\d.eE+-]+) GiB", size)
    assert m, size
    return float(m.group(1))


def _numbers(msg: str) -> tuple[float, float, float]:
    """(entries, memory in GiB, limit in GiB) of a size-guard message."""
    m = re.search(r"needs ([\d.eE+-]+) table entries, about (.+?) of memory, over the limit of "
                  r"(.+?) \((?:raise|use)", msg)
    assert m, f"message does not state entries, memory and limit: {msg}"
    return float(m.group(1)), _gib(m.group(2)), _gib(m.group(3))


def test_size_guard_message_states_the_numbers() -> None:
    p = random_problem("2-30-30-1", 0)
    cost = estimate_cost(p.widths, p.num_data)
    assert cost.states == 100 * 2**30 + 2**60 + 100 * 2**30
    with pytest.raises(ReferenceTooLarge) as info:
        exact_gradient(p)
    msg = str(info.value)
    entries, gib, limit = _numbers(msg)
    assert math.isclose(entries, cost.states, rel_tol=1e-3), (entries, cost.states)
    assert math.isclose(gib, cost.bytes / 2**30, rel_tol=1e-2), (gib, cost.bytes / 2**30)
    assert math.isclose(limit, DEFAULT_MAX_BYTES / 2**30, rel_tol=1e-2), limit
    assert "2-30-30-1" in msg and p.name in msg


def test_size_guard_limit_is_configurable_and_exact(tiny: Problem) -> None:
    cost = check_size(tiny, max_bytes=10**9)
    assert check_size(tiny, max_bytes=cost.bytes) == cost  # at the limit: allowed
    with pytest.raises(ReferenceTooLarge) as info:
        exact_gradient(tiny, max_bytes=cost.bytes - 1)
    entries, _, _ = _numbers(str(info.value))
    assert entries == cost.states
    with pytest.raises(ReferenceTooLarge):
        objective(tiny, max_bytes=cost.bytes - 1)


def test_size_guard_refuses_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """2-40-40-1 needs ~2^80 entries: nothing may be computed, let alone allocated. Any call into the
    model or the table builder fails the test; the peak RSS must not grow."""
    p = random_problem("2-40-40-1", 0)

    def forbidden(*args, **kwargs):
        raise AssertionError("the reference started computing before refusing the problem")

    monkeypatch.setattr(chain_module, "_prob_table", forbidden)
    monkeypatch.setattr(chain_module, "_kron_rows", forbidden)
    monkeypatch.setattr(model, "preactivation", forbidden)
    monkeypatch.setattr(model, "all_states", forbidden)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ReferenceTooLarge, match="2-40-40-1"):
        exact_gradient(p)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # Linux: KiB
    assert grown_kib < 64 * 1024, f"peak RSS grew by {grown_kib} KiB while refusing"


def test_production_path_log_probs_equal_the_naive_oracle():
    """:func:`sbn_bench.reference.path_log_probs` (layer 1 per data point, later layers per path)
    equals the oracle's plain product over every joint path."""
    from sbn_bench.reference import enumerate_paths, path_log_probs
    from sbn_bench.reference.paths import first_layer_index

    p = random_problem("3-2-3-2-1", 1, data_points=4, noise="gaussian")
    paths = enumerate_paths(p.widths)
    first, rest = path_log_probs(p, paths)
    idx1 = first_layer_index(p.widths, paths[0].shape[0])
    fast = (first[:, idx1] + rest).T  # [P, D]
    torch.testing.assert_close(fast, naive.path_log_probs(p, p.params, paths), rtol=0, atol=1e-12)


def test_the_exact_objective_of_a_float32_problem_is_float64() -> None:
    """The reference is float64 whatever the problem's dtype (``exact_objective`` of a float32
    problem computed in float32, unlike ``exact_gradient``)."""
    from sbn_bench import exact_objective
    from sbn_bench.problems import paper_problem

    p32 = paper_problem(0).to(dtype=torch.float32)
    j32 = exact_objective(p32)
    assert j32.dtype == torch.float64
    assert float(j32) == float(exact_objective(p32.to(dtype=torch.float64)))

"""The SBN model (SPEC §1): noises, losses, states, and per-sample parameter replicas."""

from __future__ import annotations

import math

import pytest
import torch

from sbn_bench import model
from sbn_bench.problems import random_problem

F64 = torch.float64


def _hand_cdf(noise: str, a: float) -> float:
    """``F(a)`` written out: the logistic sigmoid, or ``Φ(a) = erfc(−a/√2)/2`` (accurate in both tails)."""
    if noise == "logistic":
        return 1.0 / (1.0 + math.exp(-a))
    return 0.5 * math.erfc(-a / math.sqrt(2.0))


# --------------------------------------------------------------------------------------------
# noises


@pytest.mark.parametrize("name", model.NOISE_NAMES)
def test_noise_cdf_matches_hand_formula(name: str) -> None:
    noise = model.get_noise(name)
    a = torch.linspace(-6, 6, 49, dtype=F64)
    expected = torch.tensor([_hand_cdf(name, float(v)) for v in a], dtype=F64)
    torch.testing.assert_close(noise.cdf(a), expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name", model.NOISE_NAMES)
def test_noise_is_symmetric_and_consistent(name: str) -> None:
    noise = model.get_noise(name)
    a = torch.linspace(-8, 8, 65, dtype=F64)
    # symmetric noise: F(−a) = 1 − F(a)
    torch.testing.assert_close(noise.cdf(-a), 1 - noise.cdf(a), rtol=0, atol=1e-15)
    # log F is the log of F (absolute agreement here; relative accuracy in the tail: the next test)
    torch.testing.assert_close(torch.exp(noise.log_cdf(a)), noise.cdf(a), rtol=1e-13, atol=1e-15)
    # F⁻¹ inverts F (away from the saturated tails where F loses precision)
    u = torch.linspace(1e-6, 1 - 1e-6, 101, dtype=F64)
    torch.testing.assert_close(noise.cdf(noise.icdf(u)), u, rtol=1e-12, atol=1e-15)
    b = torch.linspace(-5, 5, 41, dtype=F64)
    torch.testing.assert_close(noise.icdf(noise.cdf(b)), b, rtol=1e-9, atol=1e-9)
    # pdf is the derivative of the CDF
    a_leaf = a.clone().requires_grad_(True)
    (dF,) = torch.autograd.grad(noise.cdf(a_leaf).sum(), a_leaf)
    torch.testing.assert_close(noise.pdf(a), dF, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["logistic", "gaussian"])
def test_cdf_has_relative_accuracy_in_the_lower_tail(name: str) -> None:
    """``F(a)`` for a → −∞ must be accurate relative to its (tiny) value, like ``exp(log F(a))``.

    Reference: ``1/(1 + e^{−a})`` and ``erfc(−a/√2)/2`` in Python's math module (both accurate to a
    few ulps in the lower tail).
    """
    noise = model.get_noise(name)
    a = torch.linspace(-30, -2, 57, dtype=F64)
    ref = torch.tensor([_hand_cdf(name, float(v)) for v in a], dtype=F64)
    torch.testing.assert_close(torch.exp(noise.log_cdf(a)), ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(noise.cdf(a), ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", model.NOISE_NAMES)
def test_log_cdf_is_finite_and_accurate_in_the_far_tail(name: str) -> None:
    """log F must not go through F (which underflows to 0 → −inf): compare with the asymptotics.

    Logistic: log σ(a) = −log(1 + e^{−a}) = a − log(1 + e^{a}) → a for a → −∞ (error e^{a}).
    Gaussian: log Φ(a) = −a²/2 − log(−a √(2π)) + log(1 − 1/a² + 3/a⁴ − …) (Mills ratio).
    """
    noise = model.get_noise(name)
    a = torch.tensor([-50.0, -200.0, -700.0], dtype=F64)
    got = noise.log_cdf(a)
    assert torch.isfinite(got).all(), f"log F({a.tolist()}) = {got.tolist()}"
    if name == "logistic":
        expected = a
    else:
        expected = -a * a / 2 - torch.log(-a * math.sqrt(2 * math.pi)) + torch.log1p(-1 / a**2 + 3 / a**4)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_unknown_noise_and_loss_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"noise 'uniform' is unknown.*logistic, gaussian"):
        model.get_noise("uniform")
    with pytest.raises(ValueError, match=r"loss 'hinge' is unknown.*logistic, softmax, mse"):
        model.check_loss_name("hinge")
    with pytest.raises(ValueError, match="hinge"):
        model.loss_fn("hinge", torch.zeros(2, 1, dtype=F64), torch.ones(2, dtype=F64))


# --------------------------------------------------------------------------------------------
# losses


def test_logistic_loss_matches_hand_formula() -> None:
    # ℓ(η, y) = log(1 + exp(−y η)), labels ±1
    eta = torch.tensor([[-3.0], [-0.5], [0.0], [0.7], [4.0]], dtype=F64)
    y = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0], dtype=F64)
    expected = torch.tensor([math.log1p(math.exp(-float(yi) * float(e)))
                             for e, yi in zip(eta[:, 0], y)], dtype=F64)
    torch.testing.assert_close(model.loss_fn("logistic", eta, y), expected, rtol=1e-14, atol=0)


def test_logistic_loss_is_stable_for_large_margins() -> None:
    # log(1 + e^{-m}) ≈ e^{-m} for large m; ≈ −m for very negative m: no overflow, no log(0)
    eta = torch.tensor([[800.0], [800.0]], dtype=F64)
    y = torch.tensor([1.0, -1.0], dtype=F64)
    got = model.loss_fn("logistic", eta, y)
    torch.testing.assert_close(got, torch.tensor([0.0, 800.0], dtype=F64), rtol=1e-15, atol=1e-300)


def test_softmax_loss_matches_hand_formula() -> None:
    # ℓ(η, y) = −η_y + log Σ_c exp η_c
    eta = torch.tensor([[0.1, -2.0, 3.0], [1.0, 1.0, 1.0], [-0.4, 0.25, 2.5]], dtype=F64)
    y = torch.tensor([2, 0, 1])
    expected = torch.tensor(
        [-float(row[int(c)]) + math.log(sum(math.exp(float(v)) for v in row))
         for row, c in zip(eta, y)], dtype=F64)
    torch.testing.assert_close(model.loss_fn("softmax", eta, y), expected, rtol=1e-14, atol=0)


def test_mse_loss_matches_hand_formula() -> None:
    # ℓ(η, y) = ‖η − y‖²; [D] targets are accepted when n_out = 1
    eta = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=F64)
    y = torch.tensor([[1.0, 1.0], [-1.0, 0.5]], dtype=F64)
    torch.testing.assert_close(model.loss_fn("mse", eta, y),
                               torch.tensor([0.25 + 4.0, 9.0 + 0.25], dtype=F64), rtol=1e-15, atol=0)
    eta1 = torch.tensor([[0.5], [2.0]], dtype=F64)
    y1 = torch.tensor([1.5, -1.0], dtype=F64)
    torch.testing.assert_close(model.loss_fn("mse", eta1, y1), torch.tensor([1.0, 9.0], dtype=F64))


@pytest.mark.parametrize("loss,n_out", [("logistic", 1), ("softmax", 3), ("mse", 2)])
def test_loss_broadcasts_over_leading_sample_dims(loss: str, n_out: int) -> None:
    p = random_problem(f"2-2-{n_out}", 0, data_points=4, loss=loss)
    eta = torch.randn(3, 5, 4, n_out, generator=torch.Generator().manual_seed(0), dtype=F64)
    got = p.loss_values(eta)
    assert got.shape == (3, 5, 4)
    for i in range(3):
        for j in range(5):
            torch.testing.assert_close(got[i, j], p.loss_values(eta[i, j]), rtol=1e-15, atol=1e-15)


# --------------------------------------------------------------------------------------------
# states, names, linear layers


def test_all_states_is_binary_counting_with_unit_0_most_significant() -> None:
    s = model.all_states(3)
    assert s.dtype == F64 and s.shape == (8, 3)
    for i in range(8):
        assert s[i].tolist() == [float((i >> 2) & 1), float((i >> 1) & 1), float(i & 1)]


def test_param_names_and_layer_count() -> None:
    names = model.param_names(2)
    assert names == ["weight_1", "bias_1", "weight_2", "bias_2", "weight_out", "bias_out"]
    p = random_problem("3-4-2-5-2", 0, data_points=2, loss="softmax")
    assert model.n_layers(p.params) == 3


def test_linear_with_and_without_replicas() -> None:
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(3, 2, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)
    x = torch.randn(4, 2, generator=g, dtype=F64)
    expected = torch.stack([w @ xi + b for xi in x])  # W x + b, one row per data point
    torch.testing.assert_close(model.linear(w, b, x), expected, rtol=1e-15, atol=1e-15)
    ws, bs = torch.stack([w, 2 * w]), torch.stack([b, -b])  # [S=2, 3, 2], [2, 3]
    got = model.linear(ws, bs, x)  # shared input, replicated parameters
    assert got.shape == (2, 4, 3)
    torch.testing.assert_close(got[1], torch.stack([2 * w @ xi - b for xi in x]))


def test_state_log_prob_matches_hand_product() -> None:
    # log p(x | a) = Σ_j [x_j log F(a_j) + (1 − x_j) log F(−a_j)]   (1 − F(a) = F(−a))
    a = torch.tensor([[0.3, -1.2, 2.0], [-0.1, 0.0, 5.0]], dtype=F64)
    s = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=F64)
    for name in model.NOISE_NAMES:
        expected = torch.tensor([
            sum(math.log(_hand_cdf(name, float(aj) if xj else -float(aj)))
                for aj, xj in zip(ar, sr)) for ar, sr in zip(a, s)], dtype=F64)
        torch.testing.assert_close(model.state_log_prob(model.get_noise(name), a, s), expected,
                                   rtol=1e-12, atol=0)


def test_sample_states_shapes_binary_and_reproducible() -> None:
    p = random_problem("2-3-4-1", 0, data_points=6)
    noise = p.noise_dist
    s1, a1 = model.sample_states(p.params, p.x, noise, 7, torch.Generator().manual_seed(5))
    s2, _ = model.sample_states(p.params, p.x, noise, 7, torch.Generator().manual_seed(5))
    assert [t.shape for t in s1] == [(7, 6, 3), (7, 6, 4)]
    assert [t.shape for t in a1] == [(7, 6, 3), (7, 6, 4)]
    for t, u in zip(s1, s2):
        assert set(t.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(t, u)
    # the layer-2 pre-activations are those of the sampled layer-1 states
    torch.testing.assert_close(a1[1], model.preactivation(p.params, 2, s1[0]))


# --------------------------------------------------------------------------------------------
# per-sample replicas


def _score_surrogate(params: model.Params, x: torch.Tensor, states: list[torch.Tensor], problem
                     ) -> torch.Tensor:
    """A REINFORCE-like surrogate summed over data points:

    ``Σ_d [ℓ(η(x^L_d)) (1 + Σ_k log p(x^k_d | x^{k-1}_d))]``: it touches every parameter (the
    stochastic layers through log p, the output layer through ℓ). Shapes follow ``states``:
    ``[S, D, n_k]`` gives ``[S]``, ``[D, n_k]`` gives ``[]``.
    """
    noise = problem.noise_dist
    h = x
    logp = 0.0
    for k, s in enumerate(states, start=1):
        a = model.preactivation(params, k, h)
        logp = logp + model.state_log_prob(noise, a, s)
        h = s
    f = problem.loss_values(model.output(params, h))
    return (f * (1 + logp)).sum(-1)


@pytest.mark.parametrize("loss,noise,arch", [("logistic", "logistic", "2-3-2-1"),
                                             ("softmax", "gaussian", "3-2-2-3"),
                                             ("mse", "logistic", "1-2-2")])
def test_replicas_give_independent_per_sample_gradients(loss: str, noise: str, arch: str) -> None:
    """One backward of ``surrogate.sum()`` over replicas [S, …] = S separate single-sample backwards."""
    p = random_problem(arch, 3, data_points=4, loss=loss, noise=noise)
    S = 5
    states, _ = model.sample_states(p.params, p.x, p.noise_dist, S, torch.Generator().manual_seed(9))
    reps = model.replicate(p.params, S)
    assert all(reps[k].shape == (S, *p.params[k].shape) and reps[k].is_leaf and reps[k].requires_grad
               for k in p.params)
    surr = _score_surrogate(reps, p.x, states, p)
    assert surr.shape == (S,)
    grads = torch.autograd.grad(surr.sum(), [reps[k] for k in p.param_names])
    for s in range(S):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in p.params.items()}
        single = _score_surrogate(leaves, p.x, [t[s] for t in states], p)
        assert single.shape == ()
        torch.testing.assert_close(single, surr[s].detach(), rtol=1e-14, atol=1e-14)
        expected = torch.autograd.grad(single, [leaves[k] for k in p.param_names])
        for name, g, e in zip(p.param_names, grads, expected):
            torch.testing.assert_close(g[s], e, rtol=1e-12, atol=1e-14,
                                       msg=lambda m, n=name, i=s: f"{n}, sample {i}: {m}")


def test_replicate_copies_are_detached_from_the_source() -> None:
    p = random_problem("2-2-1", 0, data_points=2)
    before = p.params["weight_1"].clone()
    reps = model.replicate(p.params, 3)
    assert reps["weight_1"].shape == (3, 2, 2) and reps["weight_1"].is_leaf
    with torch.no_grad():
        reps["weight_1"][0].add_(1.0)  # against the contract, but it cannot reach the problem
    torch.testing.assert_close(p.params["weight_1"], before)
    with pytest.raises(RuntimeError):  # the replicas are one expanded copy: never written whole
        with torch.no_grad():
            reps["bias_1"].add_(1.0)

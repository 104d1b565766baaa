"""The built-in estimators (SPEC §3–4), each a factory returning a frozen :class:`Estimator`.

All work on per-sample parameter replicas ``[S, *shape]`` and states ``[S, D, n_k]`` in {0,1},
vectorised over samples and data points (Python loops run over layers only). Extra leading
dimensions (flipped copies, antithetic pairs) go *before* ``S`` so that replicated parameters
broadcast. Output-layer parameters get the pathwise gradient at the sampled ``x^L`` unless said.
They are registered through the entry-point group ``sbn_bench.estimators`` in ``pyproject.toml``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sbn_bench import model
from sbn_bench.estimators.base import Estimator, from_path
from sbn_bench.model import Params
from sbn_bench.problems import Problem


def _n_layers(widths: tuple[int, ...]) -> int:
    return len(widths) - 2


def _mean_loss(problem: Problem, params: Params, x_last: Tensor) -> Tensor:
    """``ℓ(V x^L + c, y)`` averaged over data points: ``x_last [..., S, D, n_L] → [..., S]``."""
    return problem.loss_values(model.output(params, x_last)).mean(-1)


def _uniform(shape: torch.Size, like: Tensor, generator: torch.Generator) -> Tensor:
    """``U(0, 1)`` kept away from 0 and 1 so that ``F⁻¹(U)`` is finite."""
    u = torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)
    tiny = torch.finfo(like.dtype).eps
    return u.clamp(tiny, 1 - tiny)


def _check_positive(name: str, value: float, what: str) -> None:
    if not value > 0:
        raise ValueError(f"hyperparameter {name}={value!r} must be {what}")


# --------------------------------------------------------------------------------------------
# exact


def exact() -> Estimator:
    """The exact gradient from :mod:`sbn_bench.reference` (zero bias, zero variance).

    Every one of the ``S`` samples is the exact float64 gradient, cast to the run's dtype.
    References: SPEC §2.
    """

    def surrogate(problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
        from sbn_bench.reference import exact_gradient

        _, grad = exact_gradient(problem)
        terms = [(params[k] * g.to(params[k].dtype)).flatten(1).sum(1) for k, g in grad.items()]
        return torch.stack(terms).sum(0)

    return Estimator("exact", surrogate, unbiased=True, randomness="none",
                     evals_per_sample=lambda w: 2 ** w[-2],
                     description="exact gradient by the transfer-matrix chain (the reference)")


# --------------------------------------------------------------------------------------------
# score-function estimators


def _preacts_on_path(problem: Problem, params: Params, states: Sequence[Tensor]) -> list[Tensor]:
    """``a^k`` computed from the given states (states themselves carry no gradient)."""
    inputs = [problem.x, *states[:-1]]
    return [model.preactivation(params, k + 1, h) for k, h in enumerate(inputs)]


def _log_prob_path(problem: Problem, params: Params, states: Sequence[Tensor]) -> Tensor:
    """``Σ_k log p(x^k | x^{k-1})`` per sample and data point: ``[S, D]``."""
    noise = problem.noise_dist
    preacts = _preacts_on_path(problem, params, states)
    return sum(model.state_log_prob(noise, a, x) for a, x in zip(preacts, states))


def _reinforce_path(problem: Problem, params: Params, states: Sequence[Tensor]) -> Tensor:
    f = problem.loss_values(model.output(params, states[-1]))  # [S, D]
    logp = _log_prob_path(problem, params, states)  # [S, D]
    return (f + f.detach() * logp).mean(-1)


def reinforce() -> Estimator:
    """REINFORCE / score function: ``∇ℓ(x^L) + ℓ(x^L) ∇ Σ_k log p(x^k | x^{k-1})``.

    References:
        Williams. "Simple statistical gradient-following algorithms for connectionist
        reinforcement learning". Machine Learning 8, 1992.
    """
    return Estimator("reinforce", from_path(_reinforce_path), unbiased=True, randomness="path",
                     path_surrogate=_reinforce_path,
                     description="score function (Williams 1992), unbiased, high variance")


def reinforce_loo(*, k: int = 2) -> Estimator:
    """REINFORCE with ``K`` draws per data point and the leave-one-out baseline.

    ``ĝ = (1/K) Σ_i [∇ℓ_i + (ℓ_i − (1/(K−1)) Σ_{j≠i} ℓ_j) ∇ log p(path_i)]``. Its randomness is
    ``K`` paths per data point, so there is no single-path surrogate (exact mode would need
    ``2^{K Σ n_k}`` paths).

    References:
        Kool, van Hoof, Welling. "Buy 4 REINFORCE samples, get a baseline for free!" ICLR
        workshop 2019.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"hyperparameter k={k!r} must be an integer ≥ 2")

    def surrogate(problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
        S, D = params["weight_1"].shape[0], problem.num_data
        x_rep = problem.x.repeat(k, 1)  # [K·D, n0], draw i of point d at row i·D + d
        states, _ = model.sample_states(params, x_rep, problem.noise_dist, S, generator)
        noise = problem.noise_dist
        logp = sum(model.state_log_prob(noise, model.preactivation(params, j + 1, h), x)
                   for j, (h, x) in enumerate(zip([x_rep, *states[:-1]], states)))
        eta = model.output(params, states[-1]).reshape(S, k, D, -1)  # [S, K, D, n_out]
        f = problem.loss_values(eta)  # [S, K, D]
        baseline = (f.sum(1, keepdim=True) - f) / (k - 1)
        logp = logp.reshape(S, k, D)
        return (f + (f - baseline).detach() * logp).mean((1, 2))

    return Estimator("reinforce-loo", surrogate, hyperparams=(("k", k),), unbiased=True,
                     randomness="path", evals_per_sample=lambda w: k,
                     description="REINFORCE, K draws, leave-one-out baseline (Kool et al. 2019)")


# --------------------------------------------------------------------------------------------
# ARM / DisARM


def _downstream_loss(problem: Problem, params: Params, k: int, start: Tensor,
                     generator: torch.Generator) -> Tensor:
    """Loss after propagating ``start`` (states of layer ``k``, ``[..., S, D, n_k]``) through
    layers ``k+1..L`` with fresh samples: ``[..., S, D]`` (no gradient)."""
    with torch.no_grad():
        h = start
        for j in range(k + 1, model.n_layers(params) + 1):
            a = model.preactivation(params, j, h)
            u = torch.rand(a.shape, generator=generator, dtype=a.dtype, device=a.device)
            h = (u < problem.noise_dist.cdf(a)).to(a.dtype)
        return problem.loss_values(model.output(params, h))


def _antithetic_surrogate(problem: Problem, params: Params, generator: torch.Generator,
                          disarm: bool) -> Tensor:
    """ARM / DisARM surrogate: per layer the antithetic pair from one ``U``, downstream losses
    from fresh samples, and the path continuing from ``b₁``."""
    F = problem.noise_dist.cdf
    h: Tensor = problem.x
    total: Tensor | None = None
    L = model.n_layers(params)
    for k in range(1, L + 1):
        a = model.preactivation(params, k, h)  # [S, D, n_k]; h carries no gradient
        u = _uniform(a.shape, a, generator)
        with torch.no_grad():
            fa = F(a)
            b1 = (u > 1 - fa).to(a.dtype)  # [U > F(−a)]
            b2 = (u < fa).to(a.dtype)  # [U < F(a)]
            pair = _downstream_loss(problem, params, k, torch.stack([b1, b2]), generator)
            diff = pair[0] - pair[1]  # [S, D]
            if disarm:
                coef = 0.5 * diff.unsqueeze(-1) * (1 - 2 * b2) * (b1 != b2).to(a.dtype) \
                    * torch.sigmoid(a.abs())
            else:
                coef = diff.unsqueeze(-1) * (u - 0.5)
        term = (coef * a).sum(-1).mean(-1)  # [S]
        total = term if total is None else total + term
        h = b1
    assert total is not None
    return total + _mean_loss(problem, params, h)


def arm() -> Estimator:
    """ARM, per layer: ``(ℓ(b₁) − ℓ(b₂)) ∇ Σ_j a_j (U_j − ½)`` with ``b₁ = [U > F(−a)]``,
    ``b₂ = [U < F(a)]``, downstream layers sampled afresh from each, the path going on from ``b₁``.
    Unbiased for logistic noise; ``2L`` loss evaluations per sample.

    References:
        Yin, Zhou. "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks".
        ICLR 2019.
    """
    return Estimator("arm", lambda p, q, g: _antithetic_surrogate(p, q, g, disarm=False),
                     unbiased=True, randomness="continuous",
                     evals_per_sample=lambda w: 2 * _n_layers(w), noises=frozenset({"logistic"}),
                     description="Augment-REINFORCE-Merge, antithetic pair per layer "
                                 "(Yin & Zhou 2019)")


def disarm() -> Estimator:
    """DisARM, per layer: ``½ (ℓ(b₁) − ℓ(b₂)) (−1)^{b₂_j} [b₁_j ≠ b₂_j] σ(|a_j|) ∇a_j`` with ARM's
    pair. Unbiased for logistic noise; ``2L`` loss evaluations per sample.

    References:
        Dong, Mnih, Tucker. "DisARM: An Antithetic Gradient Estimator for Binary Latent
        Variables". NeurIPS 2020.
    """
    return Estimator("disarm", lambda p, q, g: _antithetic_surrogate(p, q, g, disarm=True),
                     unbiased=True, randomness="continuous",
                     evals_per_sample=lambda w: 2 * _n_layers(w), noises=frozenset({"logistic"}),
                     description="ARM's pair with the antithetic DisARM weighting "
                                 "(Dong et al. 2020)")


# --------------------------------------------------------------------------------------------
# relaxations


def _relaxed_surrogate(problem: Problem, params: Params, generator: torch.Generator,
                       tau: float, straight_through: bool) -> Tensor:
    noise = problem.noise_dist
    h: Tensor = problem.x
    for k in range(1, model.n_layers(params) + 1):
        a = model.preactivation(params, k, h)
        z = noise.icdf(_uniform(a.shape, a, generator))
        soft = torch.sigmoid((a - z) / tau)
        if straight_through:
            hard = (a.detach() - z >= 0).to(a.dtype)
            h = hard + (soft - soft.detach())
        else:
            h = soft
    return _mean_loss(problem, params, h)


def concrete(*, tau: float = 1.0) -> Estimator:
    """Concrete / Gumbel-Softmax relaxation: ``x = σ((a − Z)/τ)`` everywhere downstream, loss on
    the relaxed values. Biased; continuous randomness.

    References:
        Maddison, Mnih, Teh. "The Concrete Distribution". ICLR 2017. Jang, Gu, Poole.
        "Categorical Reparameterization with Gumbel-Softmax". ICLR 2017.
    """
    _check_positive("tau", tau, "> 0 (the relaxation temperature)")
    tau = float(tau)
    return Estimator("concrete", lambda p, q, g: _relaxed_surrogate(p, q, g, tau, False),
                     hyperparams=(("tau", tau),), randomness="continuous",
                     description="Concrete relaxation at temperature tau (Maddison/Jang 2017)")


def st_gumbel(*, tau: float = 1.0) -> Estimator:
    """Straight-through Gumbel-Softmax: forward the binary sample ``[a − Z ≥ 0]``, backward
    through ``σ((a − Z)/τ)`` with the same ``Z``. Biased; continuous randomness.

    References:
        Jang, Gu, Poole. "Categorical Reparameterization with Gumbel-Softmax". ICLR 2017.
    """
    _check_positive("tau", tau, "> 0 (the relaxation temperature)")
    tau = float(tau)
    return Estimator("st-gumbel", lambda p, q, g: _relaxed_surrogate(p, q, g, tau, True),
                     hyperparams=(("tau", tau),), randomness="continuous",
                     description="straight-through Gumbel-Softmax: binary forward, Concrete "
                                 "backward")


def tanh() -> Estimator:
    """Deterministic mean field: ``x^k = F(a^k)`` through the network, the loss at the means
    (the paper's "tanh"/AP1 baseline). Biased; no randomness.

    References:
        Shekhovtsov, Yanush, Flach. NeurIPS 2020, §5 (baseline "tanh").
    """

    def surrogate(problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
        h: Tensor = problem.x
        for k in range(1, model.n_layers(params) + 1):
            h = problem.noise_dist.cdf(model.preactivation(params, k, h))
        return _mean_loss(problem, params, h)

    return Estimator("tanh", surrogate, randomness="none",
                     description="deterministic mean field x = F(a) (the paper's tanh/AP1)")


# --------------------------------------------------------------------------------------------
# straight-through


def _st_path(problem: Problem, params: Params, states: Sequence[Tensor], identity: bool
             ) -> Tensor:
    F = problem.noise_dist.cdf
    h: Tensor = problem.x
    for k, x in enumerate(states, start=1):
        a = model.preactivation(params, k, h)
        proxy = a if identity else F(a)
        h = x + (proxy - proxy.detach())
    return _mean_loss(problem, params, h)


def st() -> Estimator:
    """The paper's deep straight-through: forward the sample, backward ``∂x/∂a := F'(a)``
    in {0,1} states (``2F'(a)`` in ±1 states). Biased; path randomness.

    References:
        Shekhovtsov, Yanush, Flach. NeurIPS 2020, §4 (ST as the linearisation of PSA).
    """

    def path(problem: Problem, params: Params, states: Sequence[Tensor]) -> Tensor:
        return _st_path(problem, params, states, identity=False)

    return Estimator("st", from_path(path), randomness="path", path_surrogate=path,
                     description="straight-through with dx/da := F'(a) (Shekhovtsov et al. 2020)")


def st_identity() -> Estimator:
    """Straight-through with identity backward ``∂x/∂a := 1``. Biased; path randomness.

    References:
        Bengio, Léonard, Courville. "Estimating or Propagating Gradients Through Stochastic
        Neurons for Conditional Computation". arXiv:1308.3432, 2013.
    """

    def path(problem: Problem, params: Params, states: Sequence[Tensor]) -> Tensor:
        return _st_path(problem, params, states, identity=True)

    return Estimator("st-identity", from_path(path), randomness="path", path_surrogate=path,
                     description="straight-through with dx/da := 1 (Bengio et al. 2013)")


# --------------------------------------------------------------------------------------------
# PSA


def flipped(x: Tensor) -> Tensor:
    """Every single-unit flip of ``x [..., n]``: ``[n, ..., n]``, copy ``i`` has unit ``i`` flipped."""
    n = x.shape[-1]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)  # [n(i), n]
    shape = (n,) + (1,) * (x.dim() - 1) + (n,)
    return x.unsqueeze(0) + (1 - 2 * x).unsqueeze(0) * eye.reshape(shape)


def _psa_path(problem: Problem, params: Params, states: Sequence[Tensor]) -> Tensor:
    """SPEC §4, in ±1 states ``s = 2x − 1``; ``w = W/2`` so flipping input ``i`` moves ``a_j`` by
    ``−2 w_ji s_i``. ``Δ`` is computed without gradient: it only ever multiplies ``q^{k-1}``,
    whose value is exactly zero, so its own gradient contributes nothing."""
    F = problem.noise_dist.cdf
    h: Tensor = problem.x
    s_prev: Tensor | None = None
    q: Tensor | None = None
    a: Tensor | None = None
    s: Tensor | None = None
    for k, x in enumerate(states, start=1):
        a = model.preactivation(params, k, h)  # [S, D, n_k] (= w s^{k-1} + b')
        s = 2 * x - 1
        d = -s * F(a)
        if s_prev is None or q is None:
            qk = d  # q⁰ = 0
        else:
            with torch.no_grad():
                w = params[f"weight_{k}"].detach() / 2  # [S, n_k, n_{k-1}]
                a_flip = a.unsqueeze(-1) - 2 * w.unsqueeze(1) * s_prev.unsqueeze(-2)
                delta = -s.unsqueeze(-1) * (F(a_flip) - F(a).unsqueeze(-1))  # [S, D, n_k, n_{k-1}]
            qk = d + (delta @ q.unsqueeze(-1)).squeeze(-1)
        q = qk - qk.detach()
        s_prev, h = s, x
    assert a is not None and s is not None and q is not None
    n = s.shape[-1]
    p = F(s * a).detach()  # probability of the sampled state of each last-layer unit
    f = problem.loss_values(model.output(params, states[-1]))  # [S, D]
    f_flip = problem.loss_values(model.output(params, flipped(states[-1])))  # [n, S, D]
    diff = f_flip.movedim(0, -1) - f.unsqueeze(-1)  # [S, D, n]
    est = f + (((1 - p) / n + q) * diff).sum(-1)
    return est.mean(-1)


def psa() -> Estimator:
    """Path Sample-Analytic (PSA), SPEC §4: an analytic expectation over each unit's flip along one
    sampled path, propagated layer by layer by ``q^k = d + Δ q^{k-1}``. Unbiased for the output
    layer, the last stochastic layer and width-1 chains; biased by a few percent in earlier layers.
    Cost: one forward, ``n_{k-1}`` extra CDF evaluations per weight and ``n_L`` extra output
    evaluations.

    References:
        Shekhovtsov, Yanush, Flach. "Path Sample-Analytic Gradient Estimators for Stochastic Binary
        Networks". NeurIPS 2020.
    """
    return Estimator("psa", from_path(_psa_path), randomness="path", path_surrogate=_psa_path,
                     evals_per_sample=lambda w: 1 + w[-2],
                     description="Path Sample-Analytic (Shekhovtsov et al. 2020)")


BUILTINS = {
    "exact": exact,
    "reinforce": reinforce,
    "reinforce-loo": reinforce_loo,
    "arm": arm,
    "disarm": disarm,
    "concrete": concrete,
    "st-gumbel": st_gumbel,
    "tanh": tanh,
    "st": st,
    "st-identity": st_identity,
    "psa": psa,
}
"""Name → factory, as registered in ``pyproject.toml``'s entry points (and the fallback when the
package is not installed)."""

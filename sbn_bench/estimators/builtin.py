"""The built-in estimators (SPEC §3–4), each a factory returning a frozen :class:`Estimator`.

All work on per-sample parameter replicas ``[S, *shape]`` and states ``[S, D, n_k]`` in {0,1},
vectorised over samples and data points (Python loops run over layers only). Extra leading
dimensions (flipped copies, antithetic pairs) go *before* ``S`` so that replicated parameters
broadcast. Output-layer parameters get the pathwise gradient at the sampled ``x^L`` unless said.
They are registered through the entry-point group ``sbn_bench.estimators`` in ``pyproject.toml``.

Path estimators run in one pass (:func:`_forward`): each layer's pre-activation is computed once,
with gradient, and the state is sampled from it (or taken as given, for the path surrogate), drawing
exactly as :func:`sbn_bench.model.sample_states` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from sbn_bench import model
from sbn_bench.estimators.base import Estimator, PathSurrogateFn, SurrogateFn
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
    return u.clamp_(tiny, 1 - tiny)


def _check_positive(name: str, value: float, what: str) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"hyperparameter {name}={value!r} must be {what}")


class _Layer(NamedTuple):
    """One stochastic layer along a path: ``a`` the pre-activation (with gradient), ``fa = F(a)``,
    ``x`` the state in {0,1} (no gradient) and ``h`` what the next layer sees (``x``, or ``x`` plus a
    straight-through gradient). All ``[S, D, n_k]`` (or ``[S, K·D, n_k]``)."""

    a: Tensor
    fa: Tensor
    x: Tensor
    h: Tensor


Through = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(a, F(a), x) -> h``: the input the next layer sees."""


def _states_only(a: Tensor, fa: Tensor, x: Tensor) -> Tensor:
    return x


def _forward(problem: Problem, params: Params, x0: Tensor, states: Sequence[Tensor] | None,
             generator: torch.Generator | None, through: Through = _states_only) -> list[_Layer]:
    """One pass through the stochastic layers for a path estimator.

    Layer ``k``: ``a^k = W^k h^{k-1} + b^k`` (with gradient) and ``F(a^k)``; the state ``x^k`` is
    ``states[k-1]`` when states are given, else ``[U < F(a^k)]`` with one ``U ~ U(0, 1)`` per unit
    from ``generator``, layer by layer, the same draws as :func:`sbn_bench.model.sample_states`; so
    a surrogate and its path surrogate agree on the states of one seed.

    Args:
        x0: ``[D, n0]`` (or ``[K·D, n0]``) real input.
        states: per layer ``[S, D, n_k]`` given states, or None to sample.
        through: ``h^k = through(a^k, F(a^k), x^k)``; the default passes the bare states.
    """
    F = problem.noise_dist.cdf
    h: Tensor = x0
    layers = []
    for k in range(1, model.n_layers(params) + 1):
        a = model.preactivation(params, k, h)  # [S, D, n_k]
        fa = F(a)
        if states is None:
            with torch.no_grad():
                u = torch.rand(a.shape, generator=generator, dtype=a.dtype, device=a.device)
                x = (u < fa).to(a.dtype)
        else:
            x = states[k - 1]
        h = through(a, fa, x)
        layers.append(_Layer(a, fa, x, h))
    return layers


PathFn = Callable[..., Tensor]
"""``fn(problem, params, states | None, generator | None) -> [S]``: a path estimator's surrogate."""


def _path_pair(fn: PathFn) -> tuple[SurrogateFn, PathSurrogateFn]:
    """The sampling surrogate and the path surrogate of ``fn(problem, params, states, generator)``."""

    def surrogate(problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
        return fn(problem, params, None, generator)

    def path_surrogate(problem: Problem, params: Params, states: Sequence[Tensor]) -> Tensor:
        return fn(problem, params, states, None)

    return surrogate, path_surrogate


# --------------------------------------------------------------------------------------------
# exact


def exact() -> Estimator:
    """The exact gradient from :mod:`sbn_bench.reference` (zero bias, zero variance).

    Every one of the ``S`` samples is the exact float64 gradient at the replicas' values (all
    replicas hold the same parameters), cast to the run's dtype. References: SPEC §2.
    """

    def surrogate(problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
        from sbn_bench.reference import exact_gradient

        _, grad = exact_gradient(problem.with_params({k: v[0] for k, v in params.items()}))
        terms = [(params[k] * g.to(params[k].dtype)).flatten(1).sum(1) for k, g in grad.items()]
        return torch.stack(terms).sum(0)

    return Estimator("exact", surrogate, unbiased=True, randomness="none",
                     evals_per_sample=lambda w: 2 ** w[-2],
                     description="exact gradient by the transfer-matrix chain (the reference)")


# --------------------------------------------------------------------------------------------
# score-function estimators


def _score(problem: Problem, layer: _Layer) -> Tensor:
    """A term whose gradient is ``∇ log p(x^k | x^{k-1})`` (``a`` is its only path to θ): ``[S, D]``.

    For logistic noise ``∂/∂a log F(±a) = x − F(a)``, so ``(x − F(a)) a`` with the factor detached
    (no log-sigmoid pass); other noises differentiate ``log F`` itself."""
    if problem.noise == "logistic":
        return ((layer.x - layer.fa).detach() * layer.a).sum(-1)
    return model.state_log_prob(problem.noise_dist, layer.a, layer.x)


def _reinforce(problem: Problem, params: Params, states: Sequence[Tensor] | None,
               generator: torch.Generator | None) -> Tensor:
    layers = _forward(problem, params, problem.x, states, generator)
    f = problem.loss_values(model.output(params, layers[-1].x))  # [S, D]
    score = sum(_score(problem, layer) for layer in layers)  # [S, D]
    return (f + f.detach() * score).mean(-1)


def reinforce() -> Estimator:
    """REINFORCE / score function: ``∇ℓ(x^L) + ℓ(x^L) ∇ Σ_k log p(x^k | x^{k-1})``.

    References:
        Williams. "Simple statistical gradient-following algorithms for connectionist
        reinforcement learning". Machine Learning 8, 1992.
    """
    surrogate, path = _path_pair(_reinforce)
    return Estimator("reinforce", surrogate, unbiased=True, randomness="path", path_surrogate=path,
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
        layers = _forward(problem, params, x_rep, None, generator)  # [S, K·D, n_k]
        logp = sum(_score(problem, layer) for layer in layers)  # [S, K·D]
        eta = model.output(params, layers[-1].x).reshape(S, k, D, -1)  # [S, K, D, n_out]
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


class _StraightThroughConcrete(torch.autograd.Function):
    """``[a − z ≥ 0]`` forward, ``∂/∂a σ((a − z)/τ) = σ'(t)/τ`` backward, ``t = (a − z)/τ``: the
    value and gradient of ``hard + (soft − soft.detach())`` in fewer elementwise passes."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: Tensor, z: Tensor, tau: float
                ) -> Tensor:
        d = a - z
        hard = (d >= 0).to(a.dtype)  # before dividing: (a − z)/τ may underflow to −0.0
        s = torch.sigmoid_(d.div_(tau))
        ctx.save_for_backward(s.sub_(s * s).div_(tau))  # σ(t)(1 − σ(t))/τ
        return hard

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor
                 ) -> tuple[Tensor, None, None]:
        (ds,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * ds, None, None


def _relaxed_surrogate(problem: Problem, params: Params, generator: torch.Generator,
                       tau: float, straight_through: bool) -> Tensor:
    noise = problem.noise_dist
    h: Tensor = problem.x
    for k in range(1, model.n_layers(params) + 1):
        a = model.preactivation(params, k, h)
        z = noise.icdf(_uniform(a.shape, a, generator))
        if straight_through:
            h = _StraightThroughConcrete.apply(a, z, tau)  # [a − Z ≥ 0], σ((a − Z)/τ) backward
        else:
            h = torch.sigmoid((a - z) / tau)
    return _mean_loss(problem, params, h)


def concrete(*, tau: float = 1.0) -> Estimator:
    """Concrete / Gumbel-Softmax relaxation: ``x = σ((a − Z)/τ)`` everywhere downstream, loss on
    the relaxed values. Biased; continuous randomness.

    References:
        Maddison, Mnih, Teh. "The Concrete Distribution". ICLR 2017. Jang, Gu, Poole.
        "Categorical Reparameterization with Gumbel-Softmax". ICLR 2017.
    """
    _check_positive("tau", tau, "> 0 and finite (the relaxation temperature)")
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
    _check_positive("tau", tau, "> 0 and finite (the relaxation temperature)")
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


def _st(problem: Problem, params: Params, states: Sequence[Tensor] | None,
        generator: torch.Generator | None, identity: bool) -> Tensor:
    """Forward the states; backward ``∂x/∂a := 1`` (``identity``) or ``F'(a)``. ``proxy − detach(proxy)``
    is exactly zero in value, so the forward values are the states themselves."""
    def through(a: Tensor, fa: Tensor, x: Tensor) -> Tensor:
        proxy = a if identity else fa
        return x + (proxy - proxy.detach())

    layers = _forward(problem, params, problem.x, states, generator, through)
    return _mean_loss(problem, params, layers[-1].h)


def st() -> Estimator:
    """The paper's deep straight-through: forward the sample, backward ``∂x/∂a := F'(a)``
    in {0,1} states (``2F'(a)`` in ±1 states). Biased; path randomness.

    References:
        Shekhovtsov, Yanush, Flach. NeurIPS 2020, §4 (ST as the linearisation of PSA).
    """

    surrogate, path = _path_pair(lambda p, q, s, g: _st(p, q, s, g, identity=False))
    return Estimator("st", surrogate, randomness="path", path_surrogate=path,
                     description="straight-through with dx/da := F'(a) (Shekhovtsov et al. 2020)")


def st_identity() -> Estimator:
    """Straight-through with identity backward ``∂x/∂a := 1``. Biased; path randomness.

    References:
        Bengio, Léonard, Courville. "Estimating or Propagating Gradients Through Stochastic
        Neurons for Conditional Computation". arXiv:1308.3432, 2013.
    """

    surrogate, path = _path_pair(lambda p, q, s, g: _st(p, q, s, g, identity=True))
    return Estimator("st-identity", surrogate, randomness="path", path_surrogate=path,
                     description="straight-through with dx/da := 1 (Bengio et al. 2013)")


# --------------------------------------------------------------------------------------------
# PSA


def _psa(problem: Problem, params: Params, states: Sequence[Tensor] | None,
         generator: torch.Generator | None) -> Tensor:
    """SPEC §4, in ±1 states ``s = 2x − 1``; with ``w = W/2``, flipping input ``i`` moves ``a_j`` by
    ``−2 w_ji s_i = −W_ji s_i``.

    ``Δ`` carries no gradient: it only ever multiplies ``q^{k-1}``, whose value is exactly zero. So
    ``q^L = Σ_k Δ^L ⋯ Δ^{k+1} d^k`` is linear in the ``d^k`` and the term ``Σ_i q^L_i (f(s_{↓i}) − f(s))``
    has the gradient of ``Σ_k λ^k · d^k`` with the adjoints ``λ^L = f(s_{↓·}) − f(s)`` and
    ``λ^{k-1} = Δ^{kᵀ} λ^k``, computed without gradient: one small batched mat-vec per layer instead of
    autograd's forward and backward through the ``q`` chain. Both terms are zero in value.
    """
    F = problem.noise_dist.cdf
    layers = _forward(problem, params, problem.x, states, generator)
    a, fa, x, _ = layers[-1]
    n = x.shape[-1]
    p = F((2 * x - 1) * a).detach()  # probability of the sampled state of each last-layer unit
    eta = model.output(params, x)  # [S, D, n_out]
    f = problem.loss_values(eta)  # [S, D]
    # η(x with unit i flipped) = η + V[:, i] (1 − 2 x_i): [S, D, n, n_out]
    V = params["weight_out"]  # [S, n_out, n]
    eta_flip = eta.unsqueeze(-2) + (1 - 2 * x).unsqueeze(-1) * V.transpose(-1, -2).unsqueeze(-3)
    f_flip = problem.loss_values(eta_flip.movedim(-2, 0)).movedim(0, -1)  # [S, D, n]
    diff = f_flip - f.unsqueeze(-1)
    est = f + ((1 - p) / n * diff).sum(-1)  # [S, D]
    lam = diff.detach()  # λ^L: [S, D, n_L]
    for k in range(len(layers), 0, -1):
        a, fa, x, _ = layers[k - 1]
        s = 2 * x - 1  # [S, D, n_k]
        term = (lam * (-s * fa)).sum(-1)  # λ^k · d^k, d^k_j = −s_j F(a_j)
        est = est + (term - term.detach())
        if k > 1:
            with torch.no_grad():
                # λ^{k-1}_i = Σ_j Δ_ji λ^k_j, Δ_ji = −s_j (F(ã_ji) − F(a_j)), ã_ji = a_j − W_ji s_i; with
                # μ_j = −s_j λ^k_j: λ^{k-1}_i = Σ_j μ_j F(ã_ji) − Σ_j μ_j F(a_j). Layout [S, n_k, n_{k-1}, D]
                # (D innermost keeps the elementwise loops long), computed in place: one large tensor.
                mu = _units_first(-s * lam)  # [S, n_k, D]
                s_prev = _units_first(2 * layers[k - 2].x - 1)  # [S, n_{k-1}, D]
                W = params[f"weight_{k}"].detach().unsqueeze(-1)  # [S, n_k, n_{k-1}, 1]
                a_flip = torch.addcmul(_units_first(a.detach()).unsqueeze(-2), W, s_prev.unsqueeze(-3),
                                       value=-1)  # ã: [S, n_k, n_{k-1}, D]
                lam_t = _cdf_(problem, a_flip).mul_(mu.unsqueeze(-2)).sum(-3)  # [S, n_{k-1}, D]
                lam = (lam_t - (mu * _units_first(fa.detach())).sum(-2, keepdim=True)).transpose(-1, -2)
    return est.mean(-1)


def _cdf_(problem: Problem, t: Tensor) -> Tensor:
    """``F(t)``, overwriting ``t`` (no large temporary) for the built-in noises."""
    if problem.noise == "logistic":
        return t.sigmoid_()
    if problem.noise == "gaussian":
        return torch.special.ndtr(t, out=t)
    return problem.noise_dist.cdf(t)


def _units_first(t: Tensor) -> Tensor:
    """``[S, D, n] → [S, n, D]``, contiguous."""
    return t.transpose(-1, -2).contiguous()


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
    surrogate, path = _path_pair(_psa)
    return Estimator("psa", surrogate, randomness="path", path_surrogate=path,
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

"""The stochastic binary network (SBN) of SPEC §1, written as pure functions over a parameter dict.

A network has real input ``x⁰ ∈ R^{n0}``, stochastic binary layers ``k = 1..L`` with ``n_k`` units in
{0,1} states, then a deterministic output layer ``η = V x^L + c`` and a loss ``ℓ(η, y)``.
Unit ``j`` of layer ``k`` fires iff ``a^k_j − Z^k_j ≥ 0`` with ``a^k = W^k x^{k-1} + b^k`` and noise
``Z`` of symmetric CDF ``F``, so ``P(x^k_j = 1 | x^{k-1}) = F(a^k_j)``.

Parameters live in a plain ``dict[str, Tensor]`` with the public names ``weight_1 … weight_L``,
``bias_1 … bias_L``, ``weight_out``, ``bias_out`` (``[out, in]`` weights, as ``torch.nn.Linear``).
Every function here accepts either *shared* parameters (``weight_k: [n_k, n_{k-1}]``) or *per-sample
replicas* with a leading sample dimension (``weight_k: [S, n_k, n_{k-1}]``, ``bias_k: [S, n_k]``).
With replicas, states are ``[S, D, n_k]`` and one backward pass of ``surrogate.sum()`` yields ``S``
independent per-sample gradients (each replica only sees its own sample): the estimators and the
runner rely on this.

References:
    Shekhovtsov, Yanush, Flach. "Path Sample-Analytic Gradient Estimators for Stochastic Binary
    Networks". NeurIPS 2020.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sbn_bench.errors import ArgumentError

Params = Mapping[str, Tensor]

NOISE_NAMES = ("logistic", "gaussian")
LOSS_NAMES = ("logistic", "softmax", "mse", "bernoulli", "vae")

_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class Noise:
    """A symmetric noise distribution ``Z`` with CDF ``F`` (SPEC §1).

    Attributes:
        name: ``"logistic"`` (``F = sigmoid``, the paper's) or ``"gaussian"`` (``F = Φ``).
        cdf: ``F(a)``, elementwise.
        log_cdf: ``log F(a)``, computed in log space so that saturated units (|a| ≫ 1) stay finite.
        pdf: ``F'(a)``.
        icdf: ``F⁻¹(u)`` for ``u ∈ (0, 1)``.
    """

    name: str
    cdf: Callable[[Tensor], Tensor]
    log_cdf: Callable[[Tensor], Tensor]
    pdf: Callable[[Tensor], Tensor]
    icdf: Callable[[Tensor], Tensor]


def _logistic_pdf(a: Tensor) -> Tensor:
    s = torch.sigmoid(a)
    return s * (1 - s)


def _gaussian_cdf(a: Tensor) -> Tensor:
    """``Φ(a) = ½ erfc(−a/√2)``: relative accuracy in the lower tail, where ``ndtr`` loses it."""
    return 0.5 * torch.special.erfc(-a / _SQRT2)


def _gaussian_pdf(a: Tensor) -> Tensor:
    return torch.exp(-0.5 * a * a - _LOG_SQRT_2PI)


NOISES: dict[str, Noise] = {
    "logistic": Noise("logistic", torch.sigmoid, torch.nn.functional.logsigmoid, _logistic_pdf,
                      torch.logit),
    "gaussian": Noise("gaussian", _gaussian_cdf, torch.special.log_ndtr, _gaussian_pdf,
                      torch.special.ndtri),
}


def get_noise(name: str) -> Noise:
    """Return the :class:`Noise` called ``name``.

    Raises:
        ArgumentError: an unknown name, listing the valid ones.
    """
    try:
        return NOISES[name]
    except KeyError:
        expected = f"one of {', '.join(NOISE_NAMES)}"
        raise ArgumentError(f"noise {name!r} is unknown; expected {expected}", argument="noise",
                            value=name, expected=expected) from None


def check_loss_name(name: str) -> str:
    """``name`` when it is a loss of :data:`LOSS_NAMES`, else an :class:`ArgumentError`."""
    if name not in LOSS_NAMES:
        expected = f"one of {', '.join(LOSS_NAMES)}"
        raise ArgumentError(f"loss {name!r} is unknown; expected {expected}", argument="loss",
                            value=name, expected=expected)
    return name


def loss_fn(loss: str, eta: Tensor, y: Tensor) -> Tensor:
    """Per-data-point loss ``ℓ(η, y)`` (SPEC §1).

    Args:
        loss: ``"logistic"`` (``log(1 + exp(−y η))``, labels ±1, ``n_out = 1``), ``"softmax"``
            (cross-entropy, integer labels), ``"mse"`` (``‖η − y‖²``), ``"bernoulli"`` or
            ``"vae"`` (``Σ_i softplus(−(2 y_i − 1) η_i)``, targets in {0,1}; the VAE's KL is added
            elsewhere, :func:`bernoulli_kl`).
        eta: ``[..., D, n_out]`` output-layer values (any leading dimensions).
        y: ``[D]`` labels (``[D, n_out]`` targets for mse), as stored in a ``Problem``.

    Returns:
        ``[..., D]`` losses.
    """
    if loss == "logistic":
        return torch.nn.functional.softplus(-y.to(eta.dtype) * eta[..., 0])
    if loss == "softmax":
        logp = torch.log_softmax(eta, dim=-1)
        idx = y.long().expand(*eta.shape[:-1]).unsqueeze(-1)
        return -torch.gather(logp, -1, idx).squeeze(-1)
    if loss == "mse":
        target = y.to(eta.dtype)
        target = target.unsqueeze(-1) if target.dim() == 1 else target
        return ((eta - target) ** 2).sum(-1)
    if loss in ("bernoulli", "vae"):
        # −log p(y | η) = Σ_i softplus(−(2 y_i − 1) η_i) (SPEC §7)
        return torch.nn.functional.softplus((1 - 2 * y.to(eta.dtype)) * eta).sum(-1)
    check_loss_name(loss)
    raise AssertionError("unreachable")


def bernoulli_kl(noise: Noise, a: Tensor, prior_logits: Tensor) -> Tensor:
    """``KL(q ‖ p)`` of factorised Bernoullis, ``q_j = F(a_j)``, ``p_j = σ(c_j)`` (SPEC §7), summed
    over the last dimension, in log space (saturated units stay finite):
    ``Σ_j q_j (log q_j − log σ(c_j)) + (1 − q_j)(log(1 − q_j) − log σ(−c_j))``.

    Args:
        a: ``[..., n]`` (or ``[..., S, D, n]`` with replicas); prior_logits: ``[n]`` (or
            replicas ``[S, n]``).

    Returns:
        ``[...]``.
    """
    log_q1, log_q0 = noise.log_cdf(a), noise.log_cdf(-a)
    logsig = torch.nn.functional.logsigmoid
    c = prior_logits.unsqueeze(-2) if prior_logits.dim() >= 2 else prior_logits  # replicas [S, n]
    return (log_q1.exp() * (log_q1 - logsig(c)) + log_q0.exp() * (log_q0 - logsig(-c))).sum(-1)


def bernoulli_log_prob(states: Tensor, log_p1: Tensor, log_p0: Tensor) -> Tensor:
    """``Σ_j [x_j log p_j + (1 − x_j) log(1 − p_j)]`` over the last dimension, for states in
    {0,1} or relaxed in [0, 1]."""
    return (states * log_p1 + (1 - states) * log_p0).sum(-1)


def n_layers(params: Params) -> int:
    """Number of stochastic layers ``L`` (read from the ``weight_k`` names)."""
    k = 0
    while f"weight_{k + 1}" in params:
        k += 1
    return k


def param_names(n_stochastic: int) -> list[str]:
    """Public parameter names in network order: ``weight_1, bias_1, …, weight_out, bias_out``."""
    names = []
    for k in range(1, n_stochastic + 1):
        names += [f"weight_{k}", f"bias_{k}"]
    return names + ["weight_out", "bias_out"]


def linear(weight: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    """``x Wᵀ + b`` with optional per-sample replicas.

    Args:
        weight: ``[n, m]`` (shared) or ``[S, n, m]`` (replicas).
        bias: ``[n]`` or ``[S, n]``.
        x: ``[D, m]`` or ``[S, D, m]``.

    Returns:
        ``[D, n]`` when everything is shared, else ``[S, D, n]``.
    """
    if weight.dim() == 3 and _shared_value(weight) and _shared_value(bias):
        return _ReplicatedLinear.apply(weight, bias, x)
    return torch.matmul(x, weight.transpose(-1, -2)) + bias.unsqueeze(-2)


def _shared_value(t: Tensor) -> bool:
    """Whether every replica ``t[s]`` equals ``t[0]`` (always so inside :func:`estimate` unless an
    estimator perturbs its replicas): a check over the parameters only, cheap next to the layer."""
    if t.stride(0) == 0:
        return True
    with torch.no_grad():
        return bool((t == t[:1]).all())


def _units_major_mm(w: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x wᵀ (+ bias)`` for ``x [..., m]`` (any leading dimensions) and one matrix ``w [n, m]``,
    computed as ``w @ x_flatᵀ`` (one GEMM with the long dimension last, about ten times faster
    than ``x_flat @ wᵀ`` for the narrow layers of SBNs) and returned as a view ``[..., n]`` whose
    units are the slowest dimension in memory; elementwise work downstream keeps that layout, so
    the next layer's ``x_flatᵀ`` is contiguous without a copy."""
    lead = x.shape[:-1]
    flat_t = x.reshape(-1, x.shape[-1]).T
    if not flat_t.is_contiguous():
        flat_t = flat_t.contiguous()
    out = w @ flat_t if bias is None else torch.addmm(bias.unsqueeze(-1), w, flat_t)
    return out.T.reshape(*lead, w.shape[0])


class _ReplicatedLinear(torch.autograd.Function):
    """``x Wᵀ + b`` for replicas ``W [S, n, m]``, ``b [S, n]`` of one value: the forward uses the
    shared value (one GEMM over all samples and data points instead of ``S`` small ones), the
    backward gives each replica its own gradient ``Σ_d δ[…, s, d]ᵀ x[…, s, d]`` and ``x`` its
    gradient through the shared weight. ``x`` is ``[D, m]`` (shared by the samples) or
    ``[..., S, D, m]``; the result is ``[..., S, D, n]``."""

    @staticmethod
    def forward(ctx, weight: Tensor, bias: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        w0 = weight[0]
        ctx.save_for_backward(w0, x)
        ctx.S = weight.shape[0]
        out = _units_major_mm(w0, x, bias[0])
        if x.dim() == 2:  # the same for every sample: materialised units-major, [n, S, D] in memory
            D, n = out.shape
            out = out.T.unsqueeze(1).expand(n, ctx.S, D).contiguous().permute(1, 2, 0)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        w0, x = ctx.saved_tensors
        gw = gb = gx = None
        lead = tuple(range(grad.dim() - 3))  # dimensions before [S, D, n]
        if ctx.needs_input_grad[0]:
            if x.dim() == 2:  # Σ_d g[s, d, j] x[d, i]: one GEMM [S·n, D] @ [D, m]
                g = grad.sum(lead) if lead else grad
                gw = torch.matmul(g.transpose(-1, -2), x)
            elif grad.dim() == 3 and grad.shape[-2] == 1:  # one data point (exact mode's paths)
                gw = grad.transpose(-1, -2) * x  # the outer product, elementwise
            elif grad.dim() == 3:
                gw = torch.bmm(grad.transpose(-1, -2), x)
            else:
                xe = x.expand(*grad.shape[:-1], x.shape[-1])
                gw = torch.einsum("lsdn,lsdm->snm", grad.reshape(-1, *grad.shape[-3:]),
                                  xe.reshape(-1, *xe.shape[-3:]))
        if ctx.needs_input_grad[1]:
            gb = grad.sum((*lead, -2))
        if ctx.needs_input_grad[2]:
            gx = _units_major_mm(w0.T, grad)
            if x.dim() == 2:
                gx = gx.reshape(-1, *x.shape).sum(0)
            elif gx.shape != x.shape:
                gx = gx.sum_to_size(x.shape)
        return gw, gb, gx


def preactivation(params: Params, k: int, x_prev: Tensor) -> Tensor:
    """``a^k = W^k x^{k-1} + b^k`` for stochastic layer ``k`` (1-based): ``[(S,) D, n_k]``."""
    return linear(params[f"weight_{k}"], params[f"bias_{k}"], x_prev)


class _ReplicatedConv2d(torch.autograd.Function):
    """A conv2d layer for replicas ``W [S, C_out, C_in, k, k]``, ``b [S, C_out]`` of one value, on
    flat states ``h [..., S, D, n_in]`` (or ``[D, n_in]`` shared by the samples): the forward is one
    convolution over every sample and data point with the shared value, the backward gives each
    replica its own gradient (``Σ`` over data points and positions of ``δ ⊗ unfold(h)``)."""

    @staticmethod
    def forward(ctx, weight: Tensor, bias: Tensor, h: Tensor, layer: object  # type: ignore[override]
                ) -> Tensor:
        w0, b0 = weight[0], bias[0]
        S = weight.shape[0]
        x = h.reshape(-1, *layer.in_shape)  # type: ignore[attr-defined]
        out = torch.nn.functional.conv2d(x, w0, b0, layer.stride, layer.padding)  # type: ignore[attr-defined]
        out = out.reshape(*h.shape[:-1], -1)
        if h.dim() == 2:
            out = out.unsqueeze(0).expand(S, *out.shape).contiguous()
        ctx.save_for_backward(w0, h)
        ctx.layer, ctx.S = layer, S
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        w0, h = ctx.saved_tensors
        layer, S = ctx.layer, ctx.S
        co, ci, k, _ = w0.shape
        oh, ow = layer.out_shape[1:]
        g = grad.reshape(-1, S, grad.shape[-2], co, oh * ow)  # [l, S, D, C_out, P]
        x = h.reshape(-1, *layer.in_shape)
        unf = torch.nn.functional.unfold(x, k, padding=layer.padding, stride=layer.stride)
        gw = gb = gx = None
        if ctx.needs_input_grad[0]:
            if h.dim() == 2:
                gw = torch.einsum("lsdcp,dkp->sck", g, unf)
            else:
                gw = torch.einsum("lsdcp,lsdkp->sck", g, unf.reshape(*g.shape[:3], *unf.shape[1:]))
            gw = gw.reshape(S, co, ci, k, k)
        if ctx.needs_input_grad[1]:
            gb = g.sum((0, 2, 4))
        if ctx.needs_input_grad[2]:
            gflat = grad.reshape(-1, co, oh, ow)
            if h.dim() == 2:
                gflat = grad.reshape(-1, h.shape[0], co, oh, ow).sum(0)
            gx = torch.nn.grad.conv2d_input(x.shape, w0, gflat, layer.stride, layer.padding)
            gx = gx.reshape(h.shape)
        return gw, gb, gx, None


def replicated_conv2d(weight: Tensor, bias: Tensor, h: Tensor, layer: object) -> Tensor:
    """A conv2d layer (:class:`sbn_bench.network.Layer`) with per-sample replicas ``weight
    [S, C_out, C_in, k, k]``, ``bias [S, C_out]`` on flat states ``h [..., S, D, n_in]`` or
    ``[D, n_in]``: ``[..., S, D, n_out]``. Replicas of one value (always so inside
    :func:`estimate`) take one convolution; others one per sample."""
    if _shared_value(weight) and _shared_value(bias):
        return _ReplicatedConv2d.apply(weight, bias, h, layer)
    S = weight.shape[0]
    outs = []
    for s in range(S):
        hs = h if h.dim() == 2 else h.select(-3, s)
        x = hs.reshape(-1, *layer.in_shape)  # type: ignore[attr-defined]
        o = torch.nn.functional.conv2d(x, weight[s], bias[s], layer.stride, layer.padding)  # type: ignore[attr-defined]
        outs.append(o.reshape(*hs.shape[:-1], -1))
    return torch.stack(outs, dim=-3)


def output(params: Params, x_last: Tensor) -> Tensor:
    """``η = V x^L + c``: ``[(S,) D, n_out]``."""
    return linear(params["weight_out"], params["bias_out"], x_last)


STREAM_VERSION = 2
"""Version of the random stream: what :func:`uniform` (the one sampling kernel) draws from a given
generator state. Bumped whenever the same seed gives other numbers, and part of the keys of the
caches that hold results computed from it (the paper's trained checkpoints, Monte-Carlo
references), so that a cache never serves numbers the code would no longer produce.
1: ``torch.rand`` (until 1 December 2026); 2: uniforms from 64-bit integers in the units-major
layout."""


def uniform(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str,
            generator: torch.Generator | None) -> Tensor:
    """``U ~ U(0, 1)`` in ``[0, 1)`` of the given shape, drawn from ``generator`` (no gradient).

    The values are drawn in one canonical order whatever the caller does with them: the last
    dimension (the units of a layer) slowest, the others in row-major order. The result has that
    memory layout too (:func:`_units_major_mm` gives pre-activations the same), so elementwise work
    on both is a plain loop. On the CPU the values are built from 64-bit integers of
    ``generator`` (``Tensor.random_``, the same Mersenne Twister) written into the mantissa of a
    float in ``[1, 2)``, minus one: two float32 per integer (23 random bits each) or one float64
    (52 bits), about twice as fast as ``torch.rand``; elsewhere ``torch.rand``.
    """
    shape = tuple(int(n) for n in shape)
    n = math.prod(shape)
    device = torch.device(device)
    with torch.no_grad():
        if device.type == "cpu" and dtype in (torch.float32, torch.float64):
            if dtype == torch.float32:
                bits = torch.empty((n + 1) // 2, dtype=torch.int64).random_(generator=generator)
                flat = bits.view(torch.int32)[:n]
                flat.bitwise_and_(0x7FFFFF).bitwise_or_(0x3F800000)  # 23 random mantissa bits
                flat = flat.view(torch.float32).sub_(1.0)
            else:
                flat = torch.empty(n, dtype=torch.int64).random_(generator=generator)
                flat.bitwise_and_(0xFFFFFFFFFFFFF).bitwise_or_(0x3FF0000000000000)  # 52 bits
                flat = flat.view(torch.float64).sub_(1.0)
        else:
            flat = torch.rand(n, generator=generator, dtype=dtype, device=device)
    if len(shape) < 2:
        return flat.view(shape)
    return flat.view(shape[-1], *shape[:-1]).movedim(0, -1)


def units_major_empty(shape: Sequence[int], like: Tensor) -> Tensor:
    """An uninitialised tensor of ``like``'s dtype and device whose last dimension (the units) is
    the slowest in memory, the layout :func:`uniform` and :func:`linear` give (write stacked states
    into it so that the next layer needs no copy)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < 2:
        return like.new_empty(shape)
    return like.new_empty((shape[-1], *shape[:-1])).movedim(0, -1)


def uniform_like(t: Tensor, generator: torch.Generator | None) -> Tensor:
    """:func:`uniform` with ``t``'s shape, dtype and device."""
    return uniform(t.shape, t.dtype, t.device, generator)


def bernoulli(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """States in {0,1} with ``P(x = 1) = probs``: ``[U < probs]`` with one ``U ~ U(0, 1)`` per entry
    drawn from ``generator`` (:func:`uniform_like`; no gradient). The one sampling kernel of the
    package: the model, the estimators and the problem constructors draw states through it, so that
    a surrogate, its path surrogate and :func:`sample_states` agree on the states of one seed.

    Args:
        probs: ``[...]`` firing probabilities ``F(a)`` (any dtype and device; a gradient is ignored).

    Returns:
        ``[...]`` states, same dtype and device as ``probs``.
    """
    with torch.no_grad():
        return uniform_like(probs.detach(), generator).lt_(probs)  # in place: 1.0 where U < p


def sample_states(
    params: Params,
    x: Tensor,
    noise: Noise,
    num_samples: int,
    generator: torch.Generator | None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Draw ``S`` independent paths per data point (no gradient).

    Args:
        params: shared or replicated parameters.
        x: ``[D, n0]`` real input.
        noise: the noise distribution.
        num_samples: ``S``.
        generator: the only source of randomness.

    Returns:
        ``(states, preacts)``: lists over layers of ``[S, D, n_k]`` tensors, states in {0,1}.
    """
    states, preacts = [], []
    h: Tensor = x
    with torch.no_grad():
        for k in range(1, n_layers(params) + 1):
            a = preactivation(params, k, h)
            if a.dim() == 2:
                a = a.expand(num_samples, *a.shape)
            h = bernoulli(noise.cdf(a), generator)
            states.append(h)
            preacts.append(a)
    return states, preacts


def state_log_prob(noise: Noise, a: Tensor, states: Tensor) -> Tensor:
    """``log p(x | a) = Σ_j log F(±a_j)`` summed over the last dimension, in log space.

    Args:
        a: ``[..., n]`` pre-activations; states: ``[..., n]`` in {0,1}.

    Returns:
        ``[...]`` log-probabilities.
    """
    s = 2 * states - 1
    return noise.log_cdf(s * a).sum(-1)


def replicate(params: Params, num_samples: int) -> dict[str, Tensor]:
    """Leaf replicas ``[S, *shape]`` of every parameter, with ``requires_grad``.

    The gradient of ``f.sum()`` with respect to replica ``s`` is the gradient of ``f[s]`` alone,
    so a surrogate of shape ``[S]`` yields ``S`` per-sample gradients in one backward pass. The
    replicas are one private copy expanded along ``S`` (no ``S``-fold copy; :func:`linear` then
    computes with the shared value): read them, never write them.
    """
    return {
        name: p.detach().clone().unsqueeze(0).expand(num_samples, *p.shape).requires_grad_(True)
        for name, p in params.items()
    }


def all_states(n: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
               ) -> Tensor:
    """All ``2^n`` binary states ``[2^n, n]`` in {0,1}; row ``i`` is ``i`` in binary, unit 0 the MSB."""
    idx = torch.arange(2 ** n, device=device)
    bits = (idx.unsqueeze(-1) >> torch.arange(n - 1, -1, -1, device=device)) & 1
    return bits.to(dtype)

"""Exact objective and gradient of an SBN by a chain of transfer matrices (SPEC §2).

For data point ``d``, ``p_1[d, :]`` is the product distribution of ``x¹`` over its ``2^{n_1}``
states, each later layer is a ``2^{n_{k-1}} × 2^{n_k}`` transition matrix ``T_k`` that does not
depend on the data point, and ``f_d[s] = ℓ(V s + c, y_d)``. Then

    E_d = p_1[d, :] · T_2 · … · T_L · f_d[:],      J = (1/D) Σ_d E_d,

at cost ``D·2^{n_1} + Σ_k 2^{n_{k-1}+n_k}`` instead of the ``2^{Σ n_k}`` joint paths. Every entry of
``p_1`` and ``T_k`` is a product of ``n_k`` Bernoulli probabilities: it is formed in log space
(a Kronecker product of per-unit factors ``F(±a_j)`` obtained from ``log F`` via ``logsigmoid`` /
``log_ndtr``), so saturated units give exact zeros rather than ``0 · ∞``; the chain carries
normalised distributions, which cannot underflow as a whole. Gradients come from autograd, in float64.

References:
    Shekhovtsov, Yanush, Flach. NeurIPS 2020, §5 (exact gradients of small networks by enumeration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sbn_bench import model
from sbn_bench.errors import SbnBenchError
from sbn_bench.model import Noise, Params
from sbn_bench.problems import Problem
from sbn_bench.units import format_count, format_gib

DEFAULT_MAX_BYTES = 4 * 2**30
"""Default memory limit of the exact reference (4 GiB); see :func:`check_size`."""

_BYTES_PER_ENTRY = 8 * 3
"""float64, times three: the table, the Kronecker intermediates kept for backward, its gradient."""


class ReferenceTooLarge(SbnBenchError, ValueError):
    """The exact reference would exceed its memory limit; raised before any allocation
    (``argument`` is ``max_bytes``, ``value`` the limit)."""


class ReferenceNotFinite(SbnBenchError, ValueError):
    """The exact objective or gradient is not finite: the problem's values overflow float64
    (``argument`` names the first non-finite array)."""


@dataclass(frozen=True)
class ReferenceCost:
    """Estimated size of an exact computation.

    Attributes:
        states: number of probability-table entries ``D·2^{n_1} + Σ_k 2^{n_{k-1}+n_k} + D·2^{n_L}``.
        bytes: estimated peak memory in bytes (float64 entries, forward and backward).
    """

    states: int | float
    bytes: int | float


_MAX_EXACT_EXPONENT = 4096
"""Beyond ``2^4096`` table entries the cost is reported as infinite: computing the integer itself
(``2**3_000_000_000`` for a layer of three billion units) would hang the size guard."""


def estimate_cost(widths: tuple[int, ...], num_data: int) -> ReferenceCost:
    """Cost of :func:`objective` for ``widths = (n0, n_1, …, n_L, n_out)`` and ``D = num_data``
    (``inf`` when the exponents exceed :data:`_MAX_EXACT_EXPONENT`)."""
    hidden = widths[1:-1]
    n_out = widths[-1]
    exponents = [hidden[0], *(a + b for a, b in zip(hidden[:-1], hidden[1:])), hidden[-1]]
    if max(exponents) > _MAX_EXACT_EXPONENT:
        return ReferenceCost(states=math.inf, bytes=math.inf)
    states = num_data * 2 ** hidden[0]
    states += sum(2 ** (a + b) for a, b in zip(hidden[:-1], hidden[1:]))
    states += num_data * 2 ** hidden[-1] * n_out
    return ReferenceCost(states=states, bytes=states * _BYTES_PER_ENTRY)


def check_shape(widths: tuple[int, ...], num_data: int, max_bytes: int = DEFAULT_MAX_BYTES,
                name: str = "problem") -> ReferenceCost:
    """Refuse a network shape too large for the exact reference, before the problem (its data and
    parameters) is even built.

    Raises:
        ReferenceTooLarge: with the estimated states and memory and the limit.
    """
    cost = estimate_cost(widths, num_data)
    if cost.bytes > max_bytes:
        arch = "-".join(map(str, widths))
        needs = (f"{format_count(cost.states)} table entries, about {format_gib(cost.bytes)} of "
                 "memory" if cost.bytes != math.inf else
                 f"more than 2^{_MAX_EXACT_EXPONENT} table entries, beyond any memory")
        raise ReferenceTooLarge(
            f"exact reference refused for problem {name!r} (arch {arch}, D={num_data}): it needs "
            f"{needs}, over the limit of {format_gib(max_bytes)} (raise it with max_bytes= / "
            "--max-exact-bytes, or use fewer units per layer)", argument="max_bytes",
            value=max_bytes, expected=f"at least {format_gib(cost.bytes)} for this problem")
    return cost


def check_size(problem: Problem, max_bytes: int = DEFAULT_MAX_BYTES) -> ReferenceCost:
    """Refuse a problem too large for the exact reference, before any work (:func:`check_shape`).

    Raises:
        ReferenceTooLarge: with the estimated states and memory and the limit.
    """
    return check_shape(problem.widths, problem.num_data, max_bytes, problem.name)


def _prob_table(noise: Noise, a: Tensor) -> Tensor:
    """``Π_j F(±a_j)`` for every row of ``a`` and every state, as a Kronecker product.

    Row ``r`` is the product distribution ``⊗_j [F(−a_rj), F(a_rj)]``, built one unit at a time,
    so its columns follow :func:`~sbn_bench.model.all_states` (unit 0 the most significant bit).
    The factors come from ``log F`` (``logsigmoid`` / ``log_ndtr``) so saturated units give exact
    zeros with zero gradient; a product of ``n`` factors underflows only when its true value is below
    float64's smallest normal, and since each row sums to one such an entry cannot change ``E_d``.

    Args:
        a: ``[R, n]`` pre-activations.

    Returns:
        ``[R, 2^n]`` probabilities of each state given each row.
    """
    q = torch.exp(torch.stack([noise.log_cdf(-a), noise.log_cdf(a)], dim=-1))  # [R, n, 2]
    return _kron_rows(q)


def _kron_rows(q: Tensor) -> Tensor:
    """Row-wise Kronecker product ``⊗_j q[:, j, :]``: ``[R, n, 2] → [R, 2^n]``.

    Split in two halves whose tables are joined by one batched outer product (``bmm``), so the
    full-size table is written once and its backward is two batched matrix-vector products.
    """
    R, n, _ = q.shape
    if n == 1:
        return q[:, 0, :]
    h = n // 2
    left, right = _kron_rows(q[:, :h]), _kron_rows(q[:, h:])  # [R, 2^h], [R, 2^{n-h}]
    return torch.bmm(left.unsqueeze(2), right.unsqueeze(1)).reshape(R, -1)


def objective_per_point(problem: Problem, params: Params | None = None,
                        max_bytes: int = DEFAULT_MAX_BYTES) -> Tensor:
    """``E_d = E_Z ℓ(η(x^L), y_d)`` for every data point: ``[D]``, differentiable in ``params``.

    Args:
        problem: the problem (its parameters are used when ``params`` is None).
        params: shared (non-replicated) float64 parameters, e.g. leaves with ``requires_grad``.
        max_bytes: memory limit, see :func:`check_size`.
    """
    check_size(problem, max_bytes)
    params = problem.params if params is None else params
    noise = problem.noise_dist
    L = model.n_layers(params)
    dtype, device = params["weight_1"].dtype, params["weight_1"].device
    a1 = model.preactivation(params, 1, problem.x.to(dtype))  # [D, n_1]
    v = _prob_table(noise, a1)  # [D, 2^{n_1}]
    prev_states = model.all_states(params["weight_1"].shape[0], dtype, device)
    for k in range(2, L + 1):
        a = model.preactivation(params, k, prev_states)  # [2^{n_{k-1}}, n_k]
        v = v @ _prob_table(noise, a)  # [D, 2^{n_k}]
        prev_states = model.all_states(params[f"weight_{k}"].shape[0], dtype, device)
    eta = model.output(params, prev_states)  # [2^{n_L}, n_out]
    eta = eta.unsqueeze(1).expand(eta.shape[0], problem.num_data, eta.shape[1])
    f = problem.loss_values(eta).T  # [D, 2^{n_L}]
    return (v * f).sum(-1)


def objective(problem: Problem, params: Params | None = None,
              max_bytes: int = DEFAULT_MAX_BYTES) -> Tensor:
    """The exact objective ``J = (1/D) Σ_d E_d`` (0-d tensor, differentiable in ``params``)."""
    return objective_per_point(problem, params, max_bytes).mean()


def leaf_params(problem: Problem) -> dict[str, Tensor]:
    """Float64 copies of the problem's parameters that require grad."""
    return {k: v.detach().to(torch.float64).clone().requires_grad_(True)
            for k, v in problem.params.items()}


def exact_gradient(problem: Problem, max_bytes: int = DEFAULT_MAX_BYTES
                   ) -> tuple[float, dict[str, Tensor]]:
    """Exact ``J`` and ``∇_θ J`` in float64.

    Returns:
        ``(objective, gradient)``: a float and a dict of tensors shaped like ``problem.params``.

    Raises:
        ReferenceTooLarge: over ``max_bytes``. ReferenceNotFinite: the result overflows float64.
    """
    leaves = leaf_params(problem.to(dtype=torch.float64))
    J = objective(problem.to(dtype=torch.float64), leaves, max_bytes)
    grads = torch.autograd.grad(J, list(leaves.values()))
    out = dict(zip(leaves, grads))
    bad = ([] if torch.isfinite(J) else ["objective"]) + \
        [k for k, v in out.items() if not torch.isfinite(v).all()]
    if bad:
        raise ReferenceNotFinite(
            f"the exact reference of problem {problem.name!r} is not finite (J = {float(J):g}; "
            f"NaN/Inf in {', '.join(bad)}): its values overflow float64 (scale its weights or "
            "inputs down)", argument=bad[0], expected="finite values")
    return float(J.detach()), out


def gradient_json(objective: float, gradient: dict[str, Tensor]) -> dict[str, object]:
    """The public JSON shape of ``sbn-bench exact --json``:
    ``{"objective": J, "gradient": {"weight_1": [[...]], "bias_1": [...], ...}}`` (biases 1-D)."""
    return {"objective": float(objective),
            "gradient": {k: v.detach().cpu().tolist() for k, v in gradient.items()}}

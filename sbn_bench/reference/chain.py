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
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sbn_bench import model, network
from sbn_bench.errors import ArgumentError, SbnBenchError, check_whole, is_integer
from sbn_bench.model import Noise, Params
from sbn_bench.problems import Problem, check_params, check_problem
from sbn_bench.units import format_bytes, format_count, format_gib

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


def estimate_cost(widths: tuple[int, ...], num_data: int, loss: str = "logistic",
                  head: Sequence[int] = ()) -> ReferenceCost:
    """Cost of :func:`objective` for ``widths = (n0, n_1, …, n_L, n_out)`` and ``D = num_data``
    (``inf`` when the exponents exceed :data:`_MAX_EXACT_EXPONENT`).

    ``states`` counts every table entry; ``bytes`` is the peak memory when the data points are
    processed in chunks (:func:`data_chunk`): the tables shared by all data points (the
    transition matrices, the head on all ``2^{n_L}`` states, whose hidden widths are ``head``) plus
    one chunk's rows. The ``bernoulli`` and ``vae`` losses take ``D·2^{n_L}`` entries for the loss
    table (a matrix product), the others ``D·2^{n_L}·n_out``.

    Raises:
        ArgumentError: ``widths`` not three or more integers ≥ 1, or ``num_data`` not an integer
            ≥ 1.
    """
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) < 3 \
            or not all(is_integer(w) and w >= 1 for w in widths):
        raise ArgumentError(f"argument widths={widths!r} must be a tuple of three or more integers "
                            "≥ 1 (input, stochastic layers, output), e.g. (2, 5, 5, 5, 1)",
                            argument="widths", value=widths, expected="integers ≥ 1")
    if not is_integer(num_data) or num_data < 1:
        raise ArgumentError(f"argument num_data={num_data!r} must be an integer ≥ 1",
                            argument="num_data", value=num_data, expected="an integer ≥ 1")
    hidden = widths[1:-1]
    exponents = [hidden[0], *(a + b for a, b in zip(hidden[:-1], hidden[1:])), hidden[-1]]
    if max(exponents) > _MAX_EXACT_EXPONENT:
        return ReferenceCost(states=math.inf, bytes=math.inf)
    shared, per_point = _table_sizes(widths, loss, head)
    states = shared + num_data * per_point
    peak = shared + min(num_data, data_chunk(widths, num_data, loss, head)) * per_point
    return ReferenceCost(states=states, bytes=peak * _BYTES_PER_ENTRY)


MAX_EXACT_STATES = 2**30
"""Most table entries the exact reference computes (about 1.1e9, a minute of work on two cores):
data points are processed in chunks, so memory alone would not stop a request for hours."""

CHUNK_BYTES = 512 * 2**20
"""The data points' rows of the exact reference are processed in chunks of about this many
bytes (512 MiB) when they do not fit at once; small problems are one chunk (as before chunking)."""


def _table_sizes(widths: Sequence[int], loss: str, head: Sequence[int]) -> tuple[int, int]:
    """Table entries shared by all data points, and entries per data point."""
    hidden = widths[1:-1]
    n_out = widths[-1]
    shared = sum(2 ** (a + b) for a, b in zip(hidden[:-1], hidden[1:]))
    shared += 2 ** hidden[-1] * sum(head)
    if loss in ("bernoulli", "vae"):
        shared += 2 ** hidden[-1] * n_out
        per_point = 2 ** hidden[0] + 2 ** hidden[-1]
    else:
        per_point = 2 ** hidden[0] + 2 ** hidden[-1] * n_out
    return shared, per_point


def data_chunk(widths: Sequence[int], num_data: int, loss: str = "logistic",
               head: Sequence[int] = ()) -> int:
    """How many data points the exact reference processes at once: all of them when their rows
    take at most :data:`CHUNK_BYTES`, else as many as fit (at least one)."""
    _, per_point = _table_sizes(widths, loss, head)
    if num_data * per_point * _BYTES_PER_ENTRY <= CHUNK_BYTES:
        return num_data
    return max(1, CHUNK_BYTES // (per_point * _BYTES_PER_ENTRY))


def _size(n: float) -> str:
    """A memory size for a message: in GiB from 1 GiB up (``"4 GiB"``), else in the unit that
    fits (``"10 bytes"``, ``"1.5 MiB (1,572,864 bytes)"``)."""
    return format_gib(n) if n >= 2**30 else format_bytes(n)


def check_shape(widths: tuple[int, ...], num_data: int, max_bytes: int = DEFAULT_MAX_BYTES,
                name: str = "problem", loss: str = "logistic", head: Sequence[int] = (),
                arch: str | None = None) -> ReferenceCost:
    """Refuse a network shape too large for the exact reference, before the problem (its data and
    parameters) is even built.

    ``arch``: the network as its grammar writes it, for the message (default: the widths; a
    convolutional net's are its flattened layer sizes).

    Raises:
        ReferenceTooLarge: with the estimated states and memory and the limit.
        ArgumentError: ``max_bytes`` is not a whole number ≥ 1 or ``inf`` (``nan`` turned the
            limit off).
    """
    max_bytes = check_whole(max_bytes, "max_bytes", unit="bytes", unlimited=True)
    cost = estimate_cost(widths, num_data, loss, head)
    arch = arch or "-".join(map(str, widths))
    where = f"exact reference refused for problem {name!r} (arch {arch}, D={num_data}): it needs"
    if cost.bytes > max_bytes:
        needs = (f"{format_count(cost.states)} table entries, about {_size(cost.bytes)} of "
                 "memory" if cost.bytes != math.inf else
                 f"more than 2^{_MAX_EXACT_EXPONENT} table entries, beyond any memory")
        # raising the limit helps only where the memory is there
        raise_it = ("raise it with max_bytes= / --max-exact-bytes, "
                    if cost.bytes <= _physical_memory() else "")
        raise ReferenceTooLarge(
            f"{where} {needs}, over the limit of {_size(max_bytes)} ({raise_it}use fewer units per "
            "layer, or a Monte-Carlo reference: sbn-bench run --reference mc)",
            argument="max_bytes", value=max_bytes,
            expected=f"at least {_size(cost.bytes)} for this problem")
    if cost.states > MAX_EXACT_STATES:
        raise ReferenceTooLarge(
            f"{where} {format_count(cost.states)} table entries, over the limit of "
            f"{format_count(MAX_EXACT_STATES)} entries that the exact reference computes (hours of "
            "work; use fewer data points or units, or a Monte-Carlo reference)",
            argument="num_data", value=num_data,
            expected=f"at most {format_count(MAX_EXACT_STATES)} table entries")
    return cost


def _physical_memory() -> float:
    """This machine's memory in bytes (``inf`` where the system does not say)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return math.inf


def _head_widths(problem: Problem) -> tuple[int, ...]:
    return tuple(layer.n_out for layer in problem.net.head[:-1] if layer.has_params)


def check_size(problem: Problem, max_bytes: int = DEFAULT_MAX_BYTES) -> ReferenceCost:
    """Refuse a problem too large for the exact reference, before any work (:func:`check_shape`).

    Raises:
        ReferenceTooLarge: with the estimated states and memory and the limit.
    """
    check_problem(problem)
    return check_shape(problem.widths, problem.num_data, max_bytes, problem.name, problem.loss,
                       _head_widths(problem), problem.arch)


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


def _loss_table(problem: Problem, eta: Tensor, rows: slice) -> Tensor:
    """``f_d[s] = ℓ(η_s, y_d)`` for the data points ``rows`` and every last-layer state:
    ``eta [2^{n_L}, n_out] → [d, 2^{n_L}]``. The ``bernoulli``/``vae`` loss is linear in the
    targets, ``Σ_i softplus(η_i) − y_i η_i``: one matrix product."""
    y = problem.y[rows]
    if problem.loss in ("bernoulli", "vae"):
        # softplus(−η) = softplus(η) − η: f_d[s] = Σ_i softplus(η_si) − Σ_i y_di η_si
        return torch.nn.functional.softplus(eta).sum(-1) - y.to(eta.dtype) @ eta.T
    eta = eta.unsqueeze(1).expand(eta.shape[0], y.shape[0], eta.shape[1])
    return model.loss_fn(problem.loss, eta, y).T


@dataclass
class _Shared:
    """The chain's tables that do not depend on the data point."""

    transitions: list[Tensor]  # T_2 … T_L
    eta: Tensor  # the head on every last-layer state, [2^{n_L}, n_out]


def _shared_tables(problem: Problem, params: Params) -> _Shared:
    net, noise = problem.net, problem.noise_dist
    dtype, device = params["weight_1"].dtype, params["weight_1"].device
    prev = model.all_states(net.stochastic[0].n_out, dtype, device)
    transitions = []
    for k in range(2, net.n_layers + 1):
        a = network.preactivation(net, params, k, prev)  # [2^{n_{k-1}}, n_k]
        transitions.append(_prob_table(noise, a))
        prev = model.all_states(net.stochastic[k - 1].n_out, dtype, device)
    return _Shared(transitions, network.output(net, params, prev))


def _rows_objective(problem: Problem, params: Params, shared: _Shared, rows: slice) -> Tensor:
    """``E_d`` for the data points ``rows``: ``[d]``."""
    net, noise = problem.net, problem.noise_dist
    dtype = params["weight_1"].dtype
    h = network.stochastic_input(net, params, problem.x[rows].to(dtype))  # the body, per point
    a1 = network.preactivation(net, params, 1, h)  # [d, n_1]
    v = _prob_table(noise, a1)  # [d, 2^{n_1}]
    for t in shared.transitions:
        v = v @ t  # [d, 2^{n_k}]
    E = (v * _loss_table(problem, shared.eta, rows)).sum(-1)
    if problem.loss == "vae":  # the analytic KL (the same J for kl="sampled")
        E = E + model.bernoulli_kl(noise, a1, params["prior_logits"])
    return E


def objective_per_point(problem: Problem, params: Params | None = None,
                        max_bytes: int = DEFAULT_MAX_BYTES) -> Tensor:
    """``E_d = E_Z ℓ(η(x^L), y_d)`` for every data point: ``[D]``, differentiable in ``params``
    (plus the analytic KL for the binary VAE, SPEC §7).

    Args:
        problem: the problem (its parameters, in float64 whatever the problem's dtype, are used
            when ``params`` is None).
        params: shared (non-replicated) float64 parameters, e.g. leaves with ``requires_grad``.
        max_bytes: memory limit, see :func:`check_size`.
    """
    check_size(problem, max_bytes)
    if params is None:  # the reference is float64 (a float32 problem computed in float32)
        problem = problem.to(dtype=torch.float64)
        params = problem.params
    else:
        check_params(problem, params)
    shared = _shared_tables(problem, params)
    D = problem.num_data
    c = data_chunk(problem.widths, D, problem.loss, _head_widths(problem))
    return torch.cat([_rows_objective(problem, params, shared, slice(i, i + c))
                      for i in range(0, D, c)])


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
    check_problem(problem)
    p64 = problem.to(dtype=torch.float64)
    leaves = leaf_params(p64)
    check_size(p64, max_bytes)
    D = p64.num_data
    c = data_chunk(p64.widths, D, p64.loss, _head_widths(p64))
    if c >= D:  # one chunk: J and its gradient in one pass
        J = objective(p64, leaves, max_bytes)
        grads = torch.autograd.grad(J, list(leaves.values()))
    else:  # chunks of data points, gradients accumulated (memory bounded by CHUNK_BYTES)
        shared = _shared_tables(p64, leaves)
        J = torch.zeros((), dtype=torch.float64)
        acc = [torch.zeros_like(v) for v in leaves.values()]
        for i in range(0, D, c):
            part = _rows_objective(p64, leaves, shared, slice(i, i + c)).sum() / D
            gs = torch.autograd.grad(part, list(leaves.values()), retain_graph=True,
                                     allow_unused=True)
            for a, g in zip(acc, gs):
                if g is not None:
                    a += g
            J = J + part.detach()
        grads = tuple(acc)
    out = dict(zip(leaves, grads))
    bad = ([] if torch.isfinite(J) else ["objective"]) + \
        [k for k, v in out.items() if not torch.isfinite(v).all()]
    if bad:
        raise ReferenceNotFinite(
            f"the exact reference of problem {problem.name!r} is not finite (J = {float(J.detach()):g}; "
            f"NaN/Inf in {', '.join(bad)}): its values overflow float64 (scale its weights or "
            "inputs down)", argument=bad[0], expected="finite values")
    return float(J.detach()), out


def gradient_json(objective: float, gradient: dict[str, Tensor]) -> dict[str, object]:
    """The public JSON shape of ``sbn-bench exact --json``:
    ``{"objective": J, "gradient": {"weight_1": [[...]], "bias_1": [...], ...}}`` (biases 1-D)."""
    return {"objective": float(objective),
            "gradient": {k: v.detach().cpu().tolist() for k, v in gradient.items()}}

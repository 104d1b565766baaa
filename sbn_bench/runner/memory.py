"""The memory planner and the choice of mode: how many samples one estimator call may take, whether
exact mode fits, and the up-front refusal of requests that cannot fit.

Memory (``config.memory_budget``): the samples of a cell are drawn in chunks of ``chunk_size``
samples, each chunk's estimator tensors estimated (:meth:`Estimator.memory_per_sample
<sbn_bench.estimators.Estimator.memory_per_sample>`, an upper bound that the tests check against
torch's profiler) to fit in the budget. A request that cannot fit is refused before anything is
written, with the numbers: one sample larger than the budget, an explicit ``chunk`` or throughput
``batch`` over it. Exact mode's enumeration of ``2^{Σ n_k}`` paths (:func:`exact_enumeration_bytes`)
must fit as well: ``auto`` mode falls back to Monte Carlo, ``exact`` mode is refused before any work
with the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sbn_bench.config import DTYPES, RunConfig
from sbn_bench.errors import SbnBenchError
from sbn_bench.estimators import Estimator
from sbn_bench.network import Network
from sbn_bench.problems import Problem
from sbn_bench.reference import num_paths
from sbn_bench.units import format_bytes


class RunError(SbnBenchError, ValueError):
    """A run that cannot start (bad device, estimator, plugin, or a request that cannot fit),
    raised before any work; or one that cannot go on (a Dask cluster left without workers), raised
    with the finished cells saved."""


class CellFailure(Exception):
    """One cell failed; ``stage`` says where (``reference``, ``mode``, ``estimate``, ``exact``,
    ``metrics``, ``throughput``). Recorded in ``failures.csv``; the run goes on."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class ExactImpossible(CellFailure):
    """Exact mode was requested where it is impossible; :attr:`reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__("mode", f"exact mode impossible: {reason} (use --mode auto or mc)")
        self.reason = reason


def itemsize(dtype: str) -> int:
    """Bytes per float of a dtype name (``"float32"`` → 4)."""
    return torch.finfo(DTYPES[dtype]).bits // 8


def chunk_size(config: RunConfig, estimator: Estimator, problem: Problem, num_data: int | None = None
               ) -> int:
    """Samples per ``estimate()`` call: ``config.chunk`` or what ``memory_budget`` allows for
    ``num_data`` data points (default: the problem's); at least one (:func:`check_memory` refuses
    a run in which one sample does not fit)."""
    if config.chunk is not None:
        return config.chunk
    D = problem.num_data if num_data is None else num_data
    return max(1, config.memory_budget // sample_bytes(estimator, problem, D, itemsize(config.dtype)))


def sample_bytes(estimator: Estimator, problem: Problem, num_data: int, itemsize: int) -> int:
    """Bytes one sample takes: the estimator's own estimate for the stochastic layers
    (:meth:`~sbn_bench.estimators.Estimator.memory_per_sample`) plus, for a network with a body,
    a deep head or conv layers (:mod:`sbn_bench.network`), their activations: every body unit once,
    every head unit once per loss evaluation, and a conv layer's unfolded receptive fields (PSA's
    flips), each with its gradient and autograd's saved copies."""
    one = estimator.memory_per_sample(problem.widths, num_data, itemsize)
    net = problem.net
    if net.is_plain:
        return one
    evals = estimator.evals_in_memory(problem.widths)
    units = sum(layer.n_out for layer in net.body)
    units += evals * sum(layer.n_out for layer in net.head[:-1])
    units += sum(layer.n_out * layer.in_shape[0] * layer.kernel ** 2
                 for layer in net.stochastic if layer.kind == "conv2d")
    return min(one + 6 * itemsize * num_data * units,
               network_sample_bytes(net, num_data, itemsize, evals))


def network_sample_bytes(net: Network, num_data: int, itemsize: int, evals: int) -> int:
    """An upper estimate of one sample's memory from the network's true structure (the estimators'
    own estimates see only the flattened widths, which treats a conv layer as dense and counts every
    loss evaluation as a whole output layer's gradient: 100-1000x too much on the digits nets).

    Per data point: the receptive fields of the stochastic units (PSA's flip tables, a conv layer's
    unfolded inputs: ``n_k × C_in K²``, dense ``n_k × n_{k-1}``), every unit's activation, and per
    loss evaluation the units above the first stochastic layer and the head; per sample the
    parameter replica and its gradients. Checked against torch's profiler for every built-in on
    small networks of each kind (``tests/test_runner_memory.py``)."""
    n_params = sum(math.prod(s) for s in net.param_shapes().values())
    fields = sum(layer.n_out * (layer.in_shape[0] * layer.kernel ** 2 if layer.kind == "conv2d"
                                else layer.n_in) for layer in net.stochastic)
    units = sum(layer.n_out for layer in (*net.body, *net.stochastic, *net.head))
    above = sum(layer.n_out for layer in (*net.stochastic[1:], *net.head))
    per_data = fields + 8 * units + 2 * max(1, evals) * above
    return itemsize * (6 * n_params + 2 * num_data * per_data) + 8 * n_params


def exact_enumeration_bytes(widths: Sequence[int], num_data: int, itemsize: int = 8) -> int:
    """Memory that exact mode's path tables take besides the estimator's chunks: the ``P =
    2^{Σ n_k}`` paths (exact mode always enumerates in float64, ``itemsize = 8``), the
    preactivations and log-probabilities along them, their weights and indices, and layer 1's
    ``[D, 2^{n_1}]`` table."""
    units = sum(widths[1:-1])
    P = 2**units
    return P * (units * (16 + itemsize) + 32) + num_data * 2 ** widths[1] * 8


AUTO_MAX_PATH_EVALS = 2**24
"""Most path estimates (paths × data points) ``--mode auto`` enumerates for one cell (about 16.8
million; the paper net takes 200 × 2^15 = 6.6 million): beyond it, sampling is cheaper than
enumeration, and auto mode samples."""


def choose_mode(estimator: Estimator, problem: Problem, mode: str, max_paths: int, *,
                memory_budget: int | None = None) -> str:
    """``"exact"`` or ``"mc"`` for this estimator and problem.

    Exact mode needs a path surrogate (or no randomness), at most ``max_paths`` paths per data
    point and, when ``memory_budget`` is given, path tables (:func:`exact_enumeration_bytes`) within
    it; ``auto`` falls back to ``mc`` otherwise, and also beyond :data:`AUTO_MAX_PATH_EVALS` path
    estimates.

    Raises:
        ExactImpossible: ``mode == "exact"`` where exact mode is impossible (with the reason and,
            for memory, the numbers).
    """
    if mode == "mc":
        return "mc"
    if estimator.randomness == "none":
        return "exact"
    reason = None
    paths = num_paths(problem.widths)
    if estimator.path_surrogate is None:
        reason = (f"estimator {estimator.spec!r} has randomness {estimator.randomness!r} and no "
                  "path surrogate")
    elif paths > max_paths:
        reason = (f"problem {problem.name!r} has {paths} paths per data point, over "
                  f"max_paths={max_paths}")
    elif memory_budget is not None:
        need = exact_enumeration_bytes(problem.widths, problem.num_data)
        if need > memory_budget:
            reason = (f"enumerating the {paths} paths of problem {problem.name!r} needs "
                      f"about {format_bytes(need)}, over memory_budget={format_bytes(memory_budget)}")
    if reason is None and mode == "auto" and paths * problem.num_data > AUTO_MAX_PATH_EVALS:
        reason = (f"problem {problem.name!r} has {paths} paths for each of its {problem.num_data} "
                  f"data points, over the {AUTO_MAX_PATH_EVALS:,} path estimates that --mode auto "
                  "enumerates (--mode exact enumerates them anyway)")
    if reason is None:
        return "exact"
    if mode == "exact":
        raise ExactImpossible(reason)
    return "mc"


BLAME_WORDS = {"chunk": "chunk", "throughput.batch": "throughput batch"}
"""How :func:`check_memory`'s message writes each setting it blames (:attr:`SbnBenchError.blames`
names them): the command line writes these words as its options (``--chunk``)."""


def check_memory(config: RunConfig, problems: Sequence[tuple[str, str, Problem]],
                 estimators: Sequence[Estimator]) -> None:
    """Refuse, before any work, a run whose requests cannot fit in ``config.memory_budget``.

    For every problem and estimator (that supports it): one sample must fit
    (:meth:`~sbn_bench.estimators.Estimator.memory_per_sample`), and so must an explicit
    ``config.chunk`` of samples and an explicit throughput ``batch``. (Without an explicit chunk the
    samples are chunked to fit.)

    Raises:
        RunError: listing each request, its estimated memory and the budget, and what to change.
    """
    budget = config.memory_budget
    size = itemsize(config.dtype)
    found: list[str] = []
    blames: set[str] = set()  # the settings whose requests do not fit
    least = 0  # the smallest budget that would hold one sample of everything
    seen: set[tuple[str, int, str]] = set()
    for pname, _, prob in problems:
        for est in estimators:
            key = (prob.arch, prob.num_data, est.spec)
            if key in seen or not est.supports(prob):
                continue
            seen.add(key)
            one = sample_bytes(est, prob, prob.num_data, size)
            where = f"{est.spec} on {pname} ({prob.arch}, D={prob.num_data}, {config.dtype})"
            if one > budget:
                found.append(f"{where}: one sample needs about {format_bytes(one)}")
                least = max(least, one)
                continue
            fit = budget // one
            if config.chunk is not None and config.chunk * one > budget:
                found.append(f"{where}: {BLAME_WORDS['chunk']}={config.chunk} samples need about "
                             f"{format_bytes(config.chunk * one)} (at most {fit} fit)")
                blames.add("chunk")
            tb = config.throughput.batch
            if config.throughput.enabled and tb is not None and tb * one > budget:
                found.append(f"{where}: {BLAME_WORDS['throughput.batch']}={tb} samples need about "
                             f"{format_bytes(tb * one)} (at most {fit} fit)")
                blames.add("throughput.batch")
    if found:
        shown = "; ".join(found[:3]) + (f"; … ({len(found) - 3} more)" if len(found) > 3 else "")
        hint = (f"raise memory_budget to at least {format_bytes(least)}" if least else
                f"lower {' / '.join(BLAME_WORDS[b] for b in sorted(blames))}, or raise "
                "memory_budget")
        err = RunError(f"refused before any work: the request exceeds memory_budget="
                       f"{format_bytes(budget)} (estimated): {shown} ({hint})",
                       argument="memory_budget", value=budget, expected=hint)
        err.blames = tuple(sorted(blames))
        raise err

"""The estimator contract: one immutable object per estimator, one surrogate function.

An estimator is made by a factory with keyword-only hyperparameters (``concrete(tau=0.1)``) and is a
frozen :class:`Estimator`: its name, hyperparameters, capability flags (``unbiased``,
``randomness``, loss evaluations per sample, supported noises and losses) and one function,
:class:`SurrogateFn`. The contract, stated once:

    ``surrogate(problem, params, generator) -> Tensor [S]``

    ``params`` are per-sample parameter replicas ``[S, *shape]`` (leaves with ``requires_grad``) and
    ``generator`` is the only source of randomness. Entry ``s`` of the result is a scalar whose
    gradient with respect to replica ``s`` is the ``s``-th independent single-sample estimate of
    ``∇_θ J`` (SPEC §1: one noise draw per data point, averaged over the ``D`` data points).
    Replica ``s`` must influence entry ``s`` only. One backward pass of ``surrogate.sum()`` thus
    gives all ``S`` estimates (:func:`estimate`).

Estimators with ``randomness == "path"`` (the estimate is a deterministic function of the sampled
binary states) also provide :class:`PathSurrogateFn`, the same surrogate for *given* states, so the
runner can take exact expectations over all ``2^{Σ n_k}`` paths.

*Adaptive* estimators (SPEC §3b: ``rebar`` with a tuned η, ``relax``, ``nvil``) learn something
before they estimate: :attr:`Estimator.adapt` ``(problem, generator, steps)`` returns a frozen, tuned
estimator of the same name whose learned state is held in its closures or hyperparameters; the
untuned estimator is itself a valid estimator. :func:`adapt_estimator` runs it with a seeded
generator and times it, so that every adaptive estimator gets the same documented budget
(:data:`DEFAULT_ADAPT_STEPS`) and a rerun is bit-identical.

References:
    The surrogate-loss convention follows Mohamed, Rosca, Figurnov, Mnih. "Monte Carlo Gradient
    Estimation in Machine Learning". JMLR 2020 (deepmind ``mc_gradients``).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from sbn_bench import model, network
from sbn_bench.errors import ArgumentError, SbnBenchError, is_out_of_memory, short_repr
from sbn_bench.model import LOSS_NAMES, NOISE_NAMES, Params
from sbn_bench.problems import Problem, check_problem

Randomness = Literal["path", "continuous", "none"]
RANDOMNESS = ("path", "continuous", "none")


class SurrogateFn(Protocol):
    def __call__(self, problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
        """Per-sample surrogate.

        Args:
            problem: data ``x [D, n0]``, labels, loss and noise (its own ``params`` are not used).
            params: replicas ``[S, *shape]`` of every parameter, requiring grad.
            generator: the only source of randomness.

        Returns:
            ``[S]``: the gradient of entry ``s`` w.r.t. replica ``s`` is the ``s``-th estimate.
        """
        ...


class PathSurrogateFn(Protocol):
    def __call__(self, problem: Problem, params: Params, states: Sequence[Tensor]) -> Tensor:
        """Per-sample surrogate for given sampled states.

        Args:
            problem: as in :class:`SurrogateFn`.
            params: replicas ``[S, *shape]``.
            states: per stochastic layer, ``[S, D, n_k]`` sampled states in {0,1}.

        Returns:
            ``[S]``, as in :class:`SurrogateFn`.
        """
        ...


class UnsupportedProblem(SbnBenchError, ValueError):
    """An estimator was asked for a noise or loss it does not support (refused before compute);
    ``argument`` is ``"noise"`` or ``"loss"``."""


class EstimateMemoryError(SbnBenchError, MemoryError):
    """:func:`estimate` ran out of memory for the samples asked (too many for this machine)."""


class ContractError(SbnBenchError, TypeError):
    """An estimator (typically a plugin) that breaks the contract; ``argument`` names it."""


LAYER_KINDS = ("dense", "conv2d", "body", "head")
"""What :attr:`Estimator.layers` may name: stochastic layer kinds (``dense``, ``conv2d``) and the
deterministic parts (``body``: a non-empty body before the stochastic layers; ``head``: a head
deeper than one linear layer), see :mod:`sbn_bench.network`."""
ALL_LAYERS = frozenset(LAYER_KINDS)
"""Every layer kind and part: the flag of estimators built only from the kernel's network pieces
(:func:`~sbn_bench.estimators.kernel.stochastic_input`, ``preactivation``, ``output``, ``losses``)."""

FAMILIES = ("exact", "score-function", "antithetic", "relaxed", "straight-through", "psa",
            "control-variates", "local-expectation")
"""The built-in estimator families (one module each in :mod:`sbn_bench.estimators.builtin`);
a plugin may declare any family name (reports group and colour estimators by it)."""


def _one(widths: tuple[int, ...]) -> int:
    return 1


DEFAULT_ADAPT_STEPS = 200
"""The adaptation budget every adaptive estimator gets by default: ``steps`` optimiser steps, each
on a batch of :data:`ADAPT_SAMPLES` single-sample estimates per data point (``rebar`` computes its
variance-minimising η in closed form from ``steps × ADAPT_SAMPLES`` pilot estimates instead)."""

ADAPT_SAMPLES = 16
"""Single-sample estimates per data point in one adaptation step."""


def default_bytes_per_sample(widths: Sequence[int], num_data: int, itemsize: int, evals: int) -> int:
    """A rough upper estimate of the memory one single-sample estimate takes inside
    :func:`estimate` (the parameter replica and its gradient, per-data-point activations, PSA's
    ``[D, n_k, n_{k-1}]`` flip tables, ``evals`` loss evaluations, autograd's saved tensors); the
    tests check it against torch's profiler for every built-in. An estimator that needs more
    declares :attr:`Estimator.bytes_per_sample`.

    Args:
        widths: ``(n0, n_1, …, n_L, n_out)``; num_data: ``D``; itemsize: bytes per float.
        evals: loss evaluations per sample (:attr:`Estimator.evals_per_sample`).
    """
    n_params = sum(widths[i + 1] * (widths[i] + 1) for i in range(len(widths) - 1))
    fan = sum(widths[i + 1] * widths[i] for i in range(len(widths) - 1))
    units = sum(widths[1:])
    per_data = 4 * fan + 8 * units + 4 * max(1, evals) * widths[-1] * (1 + widths[-2])
    return itemsize * (6 * n_params + 2 * num_data * per_data) + 8 * n_params


@dataclass(frozen=True)
class Estimator:
    """A gradient estimator: name, hyperparameters, capability flags and its surrogate.

    Attributes:
        name: registry name, e.g. ``"concrete"``.
        surrogate: the :class:`SurrogateFn`.
        hyperparams: ``(name, value)`` pairs, in the factory's order.
        unbiased: ``E ĝ = ∇J`` for every parameter.
        randomness: ``"path"`` (a function of the sampled binary states), ``"continuous"`` (needs
            the continuous noise itself) or ``"none"`` (deterministic).
        evals_per_sample: ``widths -> int``, loss evaluations per single-sample estimate for a net
            with ``widths = (n0, n_1, …, n_L, n_out)`` (1 for backprop-like estimators).
        noises: supported noise names.
        losses: supported loss names.
        description: one line for ``sbn-bench list``.
        path_surrogate: for ``path`` estimators, the surrogate for given states (or None).
        version: bumped when the estimator's numbers change; recorded in run manifests.
        family: the family it belongs to (:data:`FAMILIES` for the built-ins), for reports.
        layers: the layer kinds and network parts it supports (:data:`LAYER_KINDS`); the default
            ``{"dense"}`` (plain fully-connected networks) is safe for a plugin written before
            bodies, heads and conv layers existed.
        single_layer: it needs a network with exactly one stochastic layer.
        evals_held: ``widths -> int``, the loss evaluations whose activations are held in memory at
            once, for an estimator that evaluates them in blocks (PSA's flips); None: all
            :attr:`evals_per_sample` (:meth:`evals_in_memory`).
        bytes_per_sample: ``(widths, num_data, itemsize) -> bytes``, an upper estimate of the memory
            one sample takes inside :func:`estimate`, read by the runner's memory planner; None:
            :func:`default_bytes_per_sample` with :attr:`evals_per_sample`
            (:meth:`memory_per_sample`).
        adapt: for adaptive estimators, ``adapt(problem, generator, steps) -> Estimator``: a frozen,
            tuned estimator of the same name (its learned state in closures or hyperparameters),
            trained on ``problem`` for ``steps`` steps with ``generator`` as the only source of
            randomness; None for the others. Run it through :func:`adapt_estimator`.

    Two estimators are equal when their name, hyperparameters, flags and version are (the
    functions are not compared).
    """

    name: str
    surrogate: SurrogateFn = field(compare=False)
    hyperparams: tuple[tuple[str, Any], ...] = ()
    unbiased: bool = False
    randomness: Randomness = "path"
    evals_per_sample: Callable[[tuple[int, ...]], int] = field(default=_one, compare=False)
    noises: frozenset[str] = frozenset(NOISE_NAMES)
    losses: frozenset[str] = frozenset(LOSS_NAMES)
    description: str = ""
    path_surrogate: PathSurrogateFn | None = field(default=None, compare=False)
    version: str = "1"
    family: str = field(default="", compare=False)
    layers: frozenset[str] = frozenset({"dense"})
    single_layer: bool = False
    evals_held: Callable[[tuple[int, ...]], int] | None = field(default=None, compare=False)
    bytes_per_sample: Callable[[tuple[int, ...], int, int], int] | None = field(default=None,
                                                                               compare=False)
    adapt: Callable[[Problem, torch.Generator, int], Estimator] | None = field(default=None,
                                                                             compare=False)

    @property
    def spec(self) -> str:
        """The command-line spelling, e.g. ``concrete:tau=0.1`` (name alone without hyperparams)."""
        if not self.hyperparams:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                                          for k, v in self.hyperparams)

    def evals(self, widths: tuple[int, ...]) -> int:
        """:attr:`evals_per_sample` of ``widths``, checked: a plugin's function that raises or
        returns anything but an int ≥ 1 is a :class:`ContractError` naming the estimator."""
        return _positive_int(self, "evals_per_sample", lambda: self.evals_per_sample(widths), widths)

    def evals_in_memory(self, widths: tuple[int, ...]) -> int:
        """:attr:`evals_held` of ``widths`` (checked like :meth:`evals`), else :meth:`evals`."""
        fn = self.evals_held
        if fn is None:
            return self.evals(widths)
        return _positive_int(self, "evals_held", lambda: fn(widths), widths)

    def memory_per_sample(self, widths: tuple[int, ...], num_data: int, itemsize: int) -> int:
        """Bytes one sample takes inside :func:`estimate` (an upper estimate): the estimator's own
        :attr:`bytes_per_sample` (checked like :meth:`evals`), else :func:`default_bytes_per_sample`."""
        if self.bytes_per_sample is not None:
            fn = self.bytes_per_sample
            return _positive_int(self, "bytes_per_sample", lambda: fn(widths, num_data, itemsize),
                                 widths)
        return default_bytes_per_sample(widths, num_data, itemsize, self.evals(widths))

    def unsupported(self, problem: Problem) -> UnsupportedProblem | None:
        """Why this estimator cannot take ``problem`` (its noise, loss, a stochastic layer kind,
        more than one stochastic layer), or None when it can."""
        checks = [("noise", problem.noise, self.noises), ("loss", problem.loss, self.losses)]
        checks += [("layer", kind, self.layers) for kind in problem.layer_kinds]
        for what, value, supported in checks:
            if value not in supported:
                expected = f"{what} {', '.join(sorted(supported))}"
                return UnsupportedProblem(
                    f"estimator {self.spec!r} does not support {what} {value!r} (problem "
                    f"{problem.name!r}); it supports {expected}", argument=what, value=value,
                    expected=expected)
        if self.single_layer and problem.n_layers != 1:
            return UnsupportedProblem(
                f"estimator {self.spec!r} supports networks with one stochastic layer only (problem "
                f"{problem.name!r} has {problem.n_layers})", argument="layers",
                value=problem.n_layers, expected="one stochastic layer")
        return None

    def check_supports(self, problem: Problem) -> None:
        """Refuse an unsupported problem before any compute.

        Raises:
            UnsupportedProblem: naming the estimator, the value and the supported ones.
        """
        why = self.unsupported(problem)
        if why is not None:
            raise why

    def supports(self, problem: Problem) -> bool:
        return self.unsupported(problem) is None


def _positive_int(est: Estimator, what: str, fn: Callable[[], Any], widths: tuple[int, ...]
                  ) -> int:
    try:
        n = fn()
    except Exception as e:  # noqa: BLE001 - a plugin's function may raise anything
        raise ContractError(f"estimator {est.spec!r}: {what}({widths}) raised {type(e).__name__}: "
                            f"{e}", argument=est.spec, expected="an int ≥ 1") from None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ContractError(f"estimator {est.spec!r}: {what}({widths}) returned {n!r}, expected an "
                            "int ≥ 1", argument=est.spec, value=n, expected="an int ≥ 1")
    return n


def _check_estimator_and_problem(estimator: object, problem: object) -> None:
    """Refuse arguments of the wrong kind by name (not an ``AttributeError`` from inside)."""
    if not isinstance(estimator, Estimator):
        raise ArgumentError(f"argument estimator={short_repr(estimator, 60)} is a "
                            f"{type(estimator).__name__}, expected an Estimator "
                            "(load_registry().create('psa'))", argument="estimator",
                            value=estimator, expected="a sbn_bench.estimators.Estimator")
    check_problem(problem)


def adapt_estimator(estimator: Estimator, problem: Problem, steps: int = DEFAULT_ADAPT_STEPS,
                    seed: int = 0) -> tuple[Estimator, float]:
    """Tune an adaptive estimator on ``problem``: ``estimator.adapt(problem, generator, steps)``
    with a generator on the problem's device seeded with ``seed``, timed with a wall clock.

    The same seed gives a bit-identical tuned estimator (on the same device and dtype). A
    non-adaptive estimator is returned as is, after no time.

    Args:
        estimator: the (untuned) estimator.
        problem: the problem to tune on (its device and dtype are used).
        steps: the adaptation budget ``≥ 0`` (:data:`DEFAULT_ADAPT_STEPS` by default).
        seed: seeds the generator.

    Returns:
        ``(tuned, seconds)``.

    Raises:
        ArgumentError: ``steps`` is not an integer ``≥ 0``.
        UnsupportedProblem: the estimator cannot take the problem.
        ContractError: ``adapt`` returned something other than an estimator of the same name.
    """
    _check_estimator_and_problem(estimator, problem)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ArgumentError(f"argument steps={steps!r} must be an integer ≥ 0", argument="steps",
                            value=steps, expected="an integer ≥ 0")
    if estimator.adapt is None:
        return estimator, 0.0
    estimator.check_supports(problem)
    generator = torch.Generator(device=problem.x.device).manual_seed(seed)
    start = time.perf_counter()
    tuned = estimator.adapt(problem, generator, steps)
    seconds = time.perf_counter() - start
    if not isinstance(tuned, Estimator) or tuned.name != estimator.name:
        got = f"an estimator named {tuned.name!r}" if isinstance(tuned, Estimator) else \
            type(tuned).__name__
        raise ContractError(f"estimator {estimator.spec!r}: adapt returned {got}, expected an "
                            f"sbn_bench.Estimator named {estimator.name!r}",
                            argument=estimator.name, value=got,
                            expected=f"an Estimator named {estimator.name!r}")
    return tuned, seconds


def _gradients(surr: Tensor, reps: Mapping[str, Tensor], num_samples: int, who: str
               ) -> dict[str, Tensor]:
    if not isinstance(surr, Tensor) or surr.shape != (num_samples,):
        shape = tuple(surr.shape) if isinstance(surr, Tensor) else type(surr).__name__
        raise ContractError(f"estimator {who!r} returned a surrogate of shape {shape}, expected "
                            f"[S] = ({num_samples},)", argument=who, value=shape,
                            expected=f"a tensor of shape ({num_samples},)")
    if not surr.requires_grad:
        return {k: torch.zeros_like(v) for k, v in reps.items()}
    grads = torch.autograd.grad(surr.sum(), list(reps.values()), allow_unused=True)
    return {k: (torch.zeros_like(v) if g is None else g).detach()
            for (k, v), g in zip(reps.items(), grads)}


def _with_kl(surr: Tensor, problem: Problem, reps: Mapping[str, Tensor]) -> Tensor:
    """The surrogate plus, for the binary VAE with the analytic KL (SPEC §7), the exact KL term
    averaged over the data points: every estimator gets the KL and its gradient as they are and
    estimates only the reconstruction term."""
    if problem.loss != "vae" or problem.kl != "analytic" or not isinstance(surr, Tensor):
        return surr
    kl = network.kl_per_point(problem.net, reps, problem.x, problem.noise_dist).mean(-1)  # [S]
    return surr + kl if surr.shape == kl.shape else surr


def estimate(
    estimator: Estimator,
    problem: Problem,
    num_samples: int,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """``S`` independent single-sample gradient estimates in one backward pass.

    Args:
        estimator: the estimator.
        problem: the problem, already on the wanted device and dtype (see :meth:`Problem.to`).
        num_samples: ``S ≥ 1``.
        generator: the only source of randomness (on the problem's device).

    Returns:
        ``{name: [S, *shape]}`` for every parameter of the problem.
    """
    _check_estimator_arg(estimator)
    try:  # any integer type (numpy's, a 0-d integer tensor), not a float or a bool
        count = operator.index(num_samples) if not isinstance(num_samples, bool) else 0
    except TypeError:
        count = 0
    if count < 1:
        raise ArgumentError(f"argument num_samples={num_samples!r} must be an integer ≥ 1",
                            argument="num_samples", value=num_samples, expected="an integer ≥ 1")
    num_samples = count
    if not isinstance(generator, torch.Generator):
        raise ArgumentError(f"argument generator={generator!r} must be a torch.Generator (the "
                            "estimate's only source of randomness, for reproducible results)",
                            argument="generator", value=generator,
                            expected="a torch.Generator on the problem's device")
    _check_estimator_and_problem(estimator, problem)
    estimator.check_supports(problem)
    try:
        reps = model.replicate(problem.params, num_samples)
        with torch.enable_grad():
            surr = estimator.surrogate(problem, reps, generator)
            return _gradients(_with_kl(surr, problem, reps), reps, num_samples, estimator.spec)
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        text = " ".join(str(e).split())
        raise EstimateMemoryError(
            f"argument num_samples={num_samples}: the estimate of {estimator.spec!r} needs more "
            f"memory than this machine has ({text[:200] or 'MemoryError'}); take fewer samples per "
            "call (the runner splits them by memory_budget)", argument="num_samples",
            value=num_samples, expected="fewer samples per call") from e


def estimate_on_paths(
    estimator: Estimator,
    problem: Problem,
    states: Sequence[Tensor],
    *,
    validate: bool = True,
) -> dict[str, Tensor]:
    """The estimate for each given path (``path`` estimators only).

    Args:
        states: per layer, ``[S, D, n_k]`` states in {0,1}, in the problem's dtype and device.
        validate: check ``estimator`` and ``states`` (shapes, dtype, device, 0s and 1s); a caller
            that has checked them once (the runner's exact mode, over slices of the enumerated
            paths) passes False to save a pass over the states per call.

    Returns:
        ``{name: [S, *shape]}``: entry ``s`` is the estimate when the sampled states are ``states[:][s]``.
    """
    if validate:
        _check_estimator_arg(estimator)
        check_states(problem, states)
    if estimator.path_surrogate is None:
        raise ArgumentError(f"estimator {estimator.spec!r} has no path surrogate "
                            f"(randomness {estimator.randomness!r})", argument="estimator",
                            value=estimator.spec, expected="an estimator with a path surrogate")
    estimator.check_supports(problem)
    num_samples = states[0].shape[0]
    reps = model.replicate(problem.params, num_samples)
    with torch.enable_grad():
        surr = estimator.path_surrogate(problem, reps, states)
        return _gradients(_with_kl(surr, problem, reps), reps, num_samples, estimator.spec)


def _check_estimator_arg(estimator: object) -> None:
    if not isinstance(estimator, Estimator):
        raise ArgumentError(f"argument estimator={estimator!r} must be an sbn_bench.Estimator "
                            "(make one from a spec with load_registry().create('psa'))",
                            argument="estimator", value=estimator, expected="an Estimator")


def check_states(problem: Problem, states: Sequence[Tensor]) -> None:
    """Refuse ``states`` that are not one ``[S, D, n_k]`` tensor of 0s and 1s per stochastic layer,
    in the problem's dtype and on its device, with the same S (:func:`estimate_on_paths`'s check).

    Raises:
        ArgumentError: naming what was given and what was expected.
    """
    widths = problem.widths[1:-1]
    expected = (f"{len(widths)} tensor(s) [S, {problem.num_data}, n_k] of 0s and 1s for n_k = "
                f"{', '.join(map(str, widths))}, {problem.x.dtype}")
    ok = (isinstance(states, Sequence) and len(states) == len(widths)
          and all(isinstance(t, Tensor) for t in states))
    if ok:
        S = states[0].shape[0] if states[0].dim() == 3 else -1
        ok = S >= 1 and all(
            tuple(t.shape) == (S, problem.num_data, n) and t.dtype == problem.x.dtype
            and t.device == problem.x.device for t, n in zip(states, widths))
        ok = ok and all(bool(((t == 0) | (t == 1)).all()) for t in states)
    if not ok:
        got = [f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
               for t in states] if isinstance(states, Sequence) else type(states).__name__
        raise ArgumentError(f"argument states={got} must be {expected}", argument="states",
                            value=got, expected=expected)


def from_path(path_fn: PathSurrogateFn) -> SurrogateFn:
    """The :class:`SurrogateFn` that samples one path per replica and data point, then applies
    ``path_fn`` to it."""

    def surrogate(problem: Problem, params: Params, generator: torch.Generator) -> Tensor:
        num_samples = params["weight_1"].shape[0]
        states, _ = model.sample_states(params, problem.x, problem.noise_dist, num_samples,
                                        generator)
        return path_fn(problem, params, states)

    return surrogate

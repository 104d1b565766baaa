"""The conformance kit (STYLE 16): the table of checks every built-in estimator passes, shipped so
that a plugin author runs the same table in their own tests.

* :func:`check_estimator` runs every check on an estimator (or a factory) and raises
  :class:`ConformanceError` listing what failed, with expected, actual and tolerance;
* :func:`parametrize_with_checks` is a pytest decorator in the style of scikit-learn's, one test per
  (estimator, check)::

      from sbn_bench.estimators.testing import parametrize_with_checks
      from my_package.estimators import my_estimator

      @parametrize_with_checks([my_estimator(), my_estimator(k=4)])
      def test_conformance(estimator, check):
          check(estimator)

The checks (:data:`CHECKS`), on small random problems covering every loss and noise the estimator
supports:

=========================  =====================================================================
``contract``               flags: randomness, path surrogate only for ``path``, noises and losses
                           known, a one-line description, ``evals_per_sample`` and
                           ``memory_per_sample`` positive integers
``shapes``                 ``{name: [S, *shape]}`` in float64 and float32, on the problem's device,
                           finite, detached; the path surrogate likewise
``cuda``                   the same on a CUDA device (skipped without one)
``refusal``                an unsupported noise or loss (or a deep net, for ``single_layer``) is
                           refused before the generator is used
``determinism``            the same seed gives identical estimates; another seed different ones
                           (unless ``randomness == "none"``, which must not depend on it)
``statelessness``          results do not depend on earlier calls (another problem, another seed
                           in between): a stateful closure is caught
``replica_independence``   ``∂ surrogate[s] / ∂ replica[r] = 0`` for ``r ≠ s``, exactly
``uncorrelated_samples``   the ``S`` samples are uncorrelated (seeded test, failure rate
                           :data:`ALPHA`)
``path_surrogate``         ``path`` estimators: the path surrogate on the sampled states equals
                           the sampling surrogate, and the sampled mean matches the exact mean over
                           every path (seeded z-test)
``unbiasedness``           estimators flagged ``unbiased``: the exact mean by enumeration of every
                           path equals the exact gradient to 1e-10 (``path``); one sample is the
                           gradient (``none``); else a seeded per-coordinate z-test, on nets of
                           depth 1–3
``adapt``                  adaptive estimators: ``adapt`` (a small budget, :data:`ADAPT_STEPS`)
                           returns an estimator of the same name, bit-identical for one seed, that
                           passes ``shapes``
=========================  =====================================================================

Every other check runs on the estimator as given: an adaptive estimator untuned must itself be a
valid estimator.

Estimators flagged ``single_layer`` run on the one-layer check problems instead
(:data:`ONE_LAYER_PROBLEMS`).

Statistical checks are seeded and each fails a correct estimator with probability at most
:data:`ALPHA` (two-sided, Bonferroni over the coordinates it looks at).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

import torch
from torch import Tensor

from sbn_bench import model
from sbn_bench.estimators.base import (
    RANDOMNESS,
    Estimator,
    UnsupportedProblem,
    adapt_estimator,
    estimate,
    estimate_on_paths,
)
from sbn_bench.estimators.registry import check_factory, check_signature
from sbn_bench.model import LOSS_NAMES, NOISE_NAMES
from sbn_bench.problems import Problem, random_problem
from sbn_bench.reference import enumerate_paths, exact_gradient, path_log_probs
from sbn_bench.reference.paths import first_layer_index

ALPHA = 1e-6
"""Failure rate of each seeded statistical check when the estimator is correct."""

NUM_SAMPLES = 20_000
"""Samples of the unbiasedness z-test: enough to detect a bias of about 0.035 standard deviations
per coordinate."""

CORRELATION_SAMPLES = 4000
"""Samples of the uncorrelated-samples and path-expectation checks."""

EXACT_RTOL = 1e-10
"""Relative tolerance of exact comparisons by enumeration."""

ADAPT_STEPS = 3
"""Adaptation budget of the ``adapt`` check (it checks the contract, not the tuning)."""


class ConformanceError(AssertionError):
    """An estimator failed a conformance check; the message names the estimator and the check and
    gives expected, actual and the tolerance."""


class CheckSkipped(Exception):
    """A check that does not apply here (no CUDA device, an estimator without a path surrogate)."""


# --------------------------------------------------------------------------------------------
# problems


_PRISTINE: dict[tuple[str, str], tuple[Problem, str]] = {}
"""The check problems as made, with their fingerprints; each caller gets a private copy."""

_HANDED: list[tuple[Problem, str]] = []
"""The copies handed out during the current check, with the fingerprint they must keep."""

_DEPTH: list[str] = []
"""The checks running now, outermost first (a nested one leaves the outer one's copies alone)."""


def _private(key: tuple[str, str], make: Callable[[], Problem]) -> Problem:
    """A private copy of a check problem (made once): an estimator that modifies the problem it is
    given cannot change what later checks (of it or of another estimator) run on, and the check it
    did it in names it (:func:`_check`)."""
    if key not in _PRISTINE:
        made = make()
        _PRISTINE[key] = (made, made.fingerprint())
    pristine, fingerprint = _PRISTINE[key]
    copy = pristine.copy()
    _HANDED.append((copy, fingerprint))
    return copy


def check_problem(kind: str) -> Problem:
    """The small problems the checks run on (a private copy each call): ``logistic`` (2-3-2-1),
    ``softmax-gaussian`` (3-2-2-3), ``mse`` (2-2-3-2), ``mse-gaussian`` (2-2-2-1), and with one
    stochastic layer ``logistic-1`` (2-3-1), ``softmax-gaussian-1`` (3-3-3), ``mse-1`` (2-2-2)."""
    return _private(("check", kind), lambda: _make_check_problem(kind))


def _make_check_problem(kind: str) -> Problem:
    if kind == "logistic":
        return random_problem("2-3-2-1", 1, data_points=5)
    if kind == "softmax-gaussian":
        return random_problem("3-2-2-3", 2, data_points=4, loss="softmax", noise="gaussian")
    if kind == "mse":
        return random_problem("2-2-3-2", 3, data_points=4, loss="mse")
    if kind == "mse-gaussian":
        return random_problem("2-2-2-1", 4, data_points=3, loss="mse", noise="gaussian")
    if kind == "logistic-1":
        return random_problem("2-3-1", 5, data_points=5)
    if kind == "softmax-gaussian-1":
        return random_problem("3-3-3", 6, data_points=4, loss="softmax", noise="gaussian")
    if kind == "mse-1":
        return random_problem("2-2-2", 7, data_points=4, loss="mse")
    raise KeyError(kind)


CHECK_PROBLEMS = ("logistic", "softmax-gaussian", "mse", "mse-gaussian")
"""The check problems of every estimator that takes deep networks."""

ONE_LAYER_PROBLEMS = ("logistic-1", "softmax-gaussian-1", "mse-1")
"""The check problems of estimators that need one stochastic layer (``single_layer``)."""

UNBIASEDNESS_NETS = {
    "2-2-1/logistic": dict(arch="2-2-1", seed=11),
    "2-3-2-2/softmax": dict(arch="2-3-2-2", seed=12, loss="softmax"),
    "2-2-2-2-1/mse": dict(arch="2-2-2-2-1", seed=13, loss="mse"),
    "2-3-2-1/gaussian": dict(arch="2-3-2-1", seed=14, noise="gaussian"),
    "1x3x3-c2k2-d3:tanh-2/conv-head": dict(arch="1x3x3-c2k2-d3:tanh-2", seed=15, loss="bernoulli"),
    "4-3-4/vae": dict(arch="4-3-4", seed=16, loss="vae"),
    "4-3-4/vae-sampled-kl": dict(arch="4-3-4", seed=17, loss="vae", kl="sampled"),
}
"""Nets of depth 1–3 with every loss and both noises, a conv layer with a deep head, and the
binary VAE (analytic KL, and the KL sampled: the estimator estimates it too, so an estimator that
computes the loss without :func:`sbn_bench.estimators.kernel.losses` leaves it out), for the
unbiasedness check (each estimator on those it supports)."""


def unbiasedness_problem(net: str) -> Problem:
    """One of :data:`UNBIASEDNESS_NETS` (3 data points; a private copy each call)."""
    def make() -> Problem:
        kw: dict[str, Any] = dict(UNBIASEDNESS_NETS[net])
        return random_problem(kw.pop("arch"), kw.pop("seed"), data_points=3, **kw)
    return _private(("unbiasedness", net), make)


@functools.cache
def exact_of(net: str) -> dict[str, Tensor]:
    """The exact gradient of :func:`unbiasedness_problem` ``(net)`` (cached)."""
    return exact_gradient(unbiasedness_problem(net))[1]


def _supported(est: Estimator) -> list[Problem]:
    kinds = ONE_LAYER_PROBLEMS if est.single_layer else CHECK_PROBLEMS
    found = [check_problem(k) for k in kinds if est.supports(check_problem(k))]
    if not found:
        raise ConformanceError(f"estimator {est.spec!r} supports none of the check problems "
                               f"(noises {sorted(est.noises)}, losses {sorted(est.losses)})")
    return found


def _gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _flat(grads: dict[str, Tensor]) -> Tensor:
    """``{name: [S, *shape]} → [S, P]`` in parameter order."""
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


def _z_bound(num_tests: int, alpha: float = ALPHA) -> float:
    """Two-sided normal quantile for family-wise failure rate ``alpha`` over ``num_tests``."""
    return NormalDist().inv_cdf(1 - alpha / (2 * max(num_tests, 1)))


def _finite_or_skip(estimates: Mapping[str, Tensor]) -> None:
    """Skip a check whose comparisons NaN would confuse (NaN ≠ NaN, 0·NaN = NaN): non-finite
    estimates are :func:`check_shapes`' failure, reported there."""
    bad = [k for k, g in estimates.items() if not bool(torch.isfinite(g).all())]
    if bad:
        raise CheckSkipped(f"the estimates of {', '.join(bad)} are not finite (check_shapes fails)")


def _fail(est: Estimator, check: str, message: str) -> ConformanceError:
    return ConformanceError(f"estimator {est.spec!r} fails check {check!r}: {message}")


# --------------------------------------------------------------------------------------------
# exact expectations


def path_expectation(estimator: Estimator, problem: Problem) -> dict[str, Tensor]:
    """``E ĝ = (1/D) Σ_d Σ_paths p(path | x_d) ĝ_d(path)`` of a ``path`` estimator, every joint path
    enumerated (:mod:`sbn_bench.reference.paths`): ``{name: shape}`` in the problem's dtype."""
    paths = enumerate_paths(problem.widths, torch.float64, problem.x.device)
    first, rest = path_log_probs(problem, paths)
    idx = first_layer_index(problem.widths, paths[0].shape[0], problem.x.device)
    states = [p.to(problem.x.dtype).unsqueeze(1) for p in paths]  # [P, 1, n_k]
    total: dict[str, Tensor] = {}
    for d in range(problem.num_data):
        one = dataclasses.replace(problem, x=problem.x[d:d + 1], y=problem.y[d:d + 1])
        g = estimate_on_paths(estimator, one, states)  # [P, *shape]
        w = torch.exp(first[d, idx] + rest).to(problem.x.dtype)
        for k, v in g.items():
            total[k] = total.get(k, 0) + torch.tensordot(w, v, dims=1) / problem.num_data
    return total


def z_test(samples: dict[str, Tensor], target: dict[str, Tensor], alpha: float = ALPHA
           ) -> tuple[bool, str]:
    """Per-coordinate two-sided z-test of ``mean(samples) = target`` with the sample standard
    deviation, Bonferroni over the coordinates. Returns ``(passed, report of the failures)``."""
    g = _flat(samples).to(torch.float64)  # [S, P]
    t = _flat({k: v.unsqueeze(0) for k, v in target.items()})[0].to(torch.float64)
    n = g.shape[0]
    mean, se = g.mean(0), g.std(0) / n ** 0.5
    z = _z_bound(g.shape[1], alpha)
    tol = z * se + 1e-12 * t.abs().max()  # a zero-variance coordinate must match to rounding
    bad = (mean - t).abs() > tol
    names = [f"{k}{list(i)}" for k, v in target.items()
             for i in itertools.product(*map(range, v.shape))]
    report = "; ".join(f"{names[i]}: expected {t[i]:.6g}, mean {mean[i]:.6g}, tolerance "
                       f"{tol[i]:.3g} (z bound {z:.2f}, {n} samples)"
                       for i in torch.nonzero(bad).flatten().tolist())
    return not bool(bad.any()), report


# --------------------------------------------------------------------------------------------
# the checks


def _check(fn: Callable[[Estimator], None]) -> Callable[[Estimator], None]:
    """A check: an estimator that raises while being checked fails it (:class:`ConformanceError`
    naming the check and the exception)."""
    name = fn.__name__.removeprefix("check_")

    @functools.wraps(fn)
    def check(est: Estimator) -> None:
        outermost = not _DEPTH  # a check run inside another (check_adapt runs check_shapes)
        if outermost:           # leaves the problems handed out to the outer one to verify
            _HANDED.clear()
        _DEPTH.append(name)
        try:
            fn(est)
        except (ConformanceError, CheckSkipped):
            _check_untouched(est, name)  # a modified problem explains the failure: said first
            raise
        except (Exception, SystemExit) as e:  # noqa: BLE001 - whatever the estimator raised fails it
            _check_untouched(est, name)  # (SystemExit too: a plugin's sys.exit would end pytest)
            raise _fail(est, name, f"it raised {type(e).__name__}: {e}") from e
        finally:
            _DEPTH.pop()
        _check_untouched(est, name)
    return check



def _check_untouched(est: Estimator, name: str) -> None:
    """Fail ``name`` when a problem handed out during it was modified (the estimator wrote into
    the problem's parameters or data: a problem is read-only)."""
    for problem, fingerprint in _HANDED:
        if problem.fingerprint() != fingerprint:
            _HANDED.clear()
            raise _fail(est, name, "it modified the problem it was given in place (its parameters "
                                   "or data): an estimator must treat the problem as read-only "
                                   "(copy what it changes)")


@_check
def check_contract(est: Estimator) -> None:
    """The flags are consistent and well-typed."""
    name = "contract"
    if est.randomness not in RANDOMNESS:
        raise _fail(est, name, f"randomness {est.randomness!r}, expected one of {RANDOMNESS}")
    if not isinstance(est.unbiased, bool):
        raise _fail(est, name, f"unbiased is {est.unbiased!r}, expected a bool")
    if est.path_surrogate is not None and est.randomness != "path":
        raise _fail(est, name, f"path_surrogate given with randomness {est.randomness!r}")
    if not est.noises or not set(est.noises) <= set(NOISE_NAMES):
        raise _fail(est, name, f"noises {sorted(est.noises)}, expected a non-empty subset of "
                               f"{list(NOISE_NAMES)}")
    if not est.losses or not set(est.losses) <= set(LOSS_NAMES):
        raise _fail(est, name, f"losses {sorted(est.losses)}, expected a non-empty subset of "
                               f"{list(LOSS_NAMES)}")
    if not est.description or "\n" in est.description:
        raise _fail(est, name, f"description {est.description!r}, expected one non-empty line")
    for widths in [(2, 5, 5, 5, 1), (1, 1, 1), (3, 4, 2)]:
        n = est.evals_per_sample(widths)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise _fail(est, name, f"evals_per_sample{widths} = {n!r}, expected an int ≥ 1")
        b = est.memory_per_sample(widths, 10, 8)
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise _fail(est, name, f"memory_per_sample{widths} = {b!r}, expected an int ≥ 1")
        held = n if est.evals_held is None else est.evals_held(widths)
        if isinstance(held, bool) or not isinstance(held, int) or not 1 <= held <= n:
            raise _fail(est, name, f"evals_held{widths} = {held!r}, expected an int in 1..{n} "
                                   "(evals_per_sample)")


def _check_output(est: Estimator, check: str, problem: Problem, out: dict[str, Tensor], S: int,
                  dtype: torch.dtype, device: str) -> None:
    if list(out) != problem.param_names:
        raise _fail(est, check, f"returned parameters {list(out)}, expected {problem.param_names}")
    for pname, g in out.items():
        shape = (S, *problem.params[pname].shape)
        if tuple(g.shape) != shape:
            raise _fail(est, check, f"{pname} has shape {tuple(g.shape)}, expected {shape}")
        if g.dtype != dtype:
            raise _fail(est, check, f"{pname} has dtype {g.dtype}, expected {dtype}")
        if g.device.type != device:
            raise _fail(est, check, f"{pname} is on {g.device}, expected {device}")
        if g.requires_grad:
            raise _fail(est, check, f"{pname} requires grad, expected a detached tensor")
        if not torch.isfinite(g).all():
            raise _fail(est, check, f"{pname} has non-finite entries")
    if all(not bool(g.any()) for g in out.values()):
        raise _fail(est, check, "every estimate is 0: the surrogate does not depend on the "
                                "parameters (a detached tensor, or one built outside the replicas "
                                "it is given)")


def _check_shapes_on(est: Estimator, check: str, device: str, dtypes: Sequence[torch.dtype]) -> None:
    for problem in _supported(est):
        for dtype in dtypes:
            p = problem.to(device=device, dtype=dtype)
            _check_output(est, check, p, estimate(est, p, 3, _gen(0, device)), 3, dtype, device)
            if est.path_surrogate is not None:
                states, _ = model.sample_states(p.params, p.x, p.noise_dist, 3, _gen(1, device))
                _check_output(est, check, p, estimate_on_paths(est, p, states), 3, dtype, device)


@_check
def check_shapes(est: Estimator) -> None:
    """Shapes, dtypes (float64 and float32), device, finiteness; the path surrogate likewise."""
    _check_shapes_on(est, "shapes", "cpu", (torch.float64, torch.float32))


@_check
def check_cuda(est: Estimator) -> None:
    """The same on a CUDA device (float32); randomness-free estimators agree with the CPU."""
    if not torch.cuda.is_available():
        raise CheckSkipped("needs a CUDA device")
    _check_shapes_on(est, "cuda", "cuda", (torch.float32,))
    if est.randomness == "none":
        p = _supported(est)[0].to(dtype=torch.float32)
        gpu = estimate(est, p.to(device="cuda"), 3, _gen(0, "cuda"))
        cpu = estimate(est, p, 3, _gen(0))
        for k in cpu:
            if not torch.allclose(gpu[k].cpu(), cpu[k], rtol=1e-4, atol=1e-6):
                raise _fail(est, "cuda", f"{k} differs between CUDA and CPU beyond rtol 1e-4")


@_check
def check_refusal(est: Estimator) -> None:
    """Every unsupported noise or loss is refused with :class:`UnsupportedProblem` naming the
    estimator and the value, before the generator is used."""
    for noise, loss in itertools.product(NOISE_NAMES, LOSS_NAMES):
        if noise in est.noises and loss in est.losses:
            continue
        arch = {"softmax": "2-2-2-3", "vae": "2-2-2"}.get(loss, "2-2-2-1")
        problem = random_problem(arch, 0, data_points=3, loss=loss, noise=noise)
        gen = _gen(0)
        before = gen.get_state()
        try:
            estimate(est, problem, 2, gen)
        except UnsupportedProblem as e:
            what = noise if noise not in est.noises else loss
            if repr(est.spec) not in str(e) or repr(what) not in str(e):
                raise _fail(est, "refusal", f"message {str(e)!r} does not name {est.spec!r} and "
                                            f"{what!r}") from None
        else:
            raise _fail(est, "refusal", f"noise {noise!r}, loss {loss!r} is not supported but was "
                                        "not refused")
        if not torch.equal(gen.get_state(), before):
            raise _fail(est, "refusal", "the generator was used before the refusal")
    if est.single_layer:
        problem = _supported(est)[0]
        deep = random_problem(f"{problem.widths[0]}-2-{problem.arch.split('-', 1)[1]}", 0,
                              data_points=3, loss=problem.loss, noise=problem.noise)
        gen = _gen(0)
        before = gen.get_state()
        try:
            estimate(est, deep, 2, gen)
        except UnsupportedProblem as e:
            if repr(est.spec) not in str(e) or e.argument != "layers":
                raise _fail(est, "refusal", f"message {str(e)!r} (argument {e.argument!r}) does not "
                                            f"name {est.spec!r} and the layers") from None
        else:
            raise _fail(est, "refusal", f"single_layer, but a net with {deep.n_layers} stochastic "
                                        "layers was not refused")
        if not torch.equal(gen.get_state(), before):
            raise _fail(est, "refusal", "the generator was used before the refusal")


@_check
def check_determinism(est: Estimator) -> None:
    """The same seed gives identical estimates; another seed different ones, unless the estimator
    has no randomness (then it must not depend on the seed, and its samples are identical)."""
    problem = _supported(est)[0]
    a = estimate(est, problem, 4, _gen(123))
    _finite_or_skip(a)
    b = estimate(est, problem, 4, _gen(123))
    for k in a:
        if not torch.equal(a[k], b[k]):
            raise _fail(est, "determinism", f"{k} differs between two calls with seed 123: draw "
                                            "every random number from the generator given (not "
                                            "torch.rand without it, nor a generator of None)")
    c = estimate(est, problem, 4, _gen(124))
    same = all(torch.equal(a[k], c[k]) for k in a)
    if est.randomness == "none":
        if not same:
            raise _fail(est, "determinism", "randomness 'none' but the estimate depends on the seed")
        for k, g in a.items():  # equal up to rounding: batched kernels may round replicas apart
            if not torch.allclose(g, g[:1].expand_as(g), rtol=1e-12, atol=1e-14):
                raise _fail(est, "determinism", f"randomness 'none' but the samples of {k} differ")
    elif same:
        raise _fail(est, "determinism", "seeds 123 and 124 give identical estimates")


@_check
def check_statelessness(est: Estimator) -> None:
    """An estimate depends only on its arguments: calls on other problems and seeds in between do
    not change it (a stateful closure, e.g. a running baseline updated on every call, fails)."""
    problems = _supported(est)
    first = problems[0]
    ref = estimate(est, first, 4, _gen(7))
    _finite_or_skip(ref)
    for p in [*problems[1:], first, first]:
        estimate(est, p, 5, _gen(99))
    again = estimate(est, first, 4, _gen(7))
    for k in ref:
        if not torch.equal(ref[k], again[k]):
            diff = float((ref[k] - again[k]).abs().max())
            raise _fail(est, "statelessness", f"{k} changed after other calls (max difference "
                                              f"{diff:.3g}, expected 0): the estimator keeps state, "
                                              "or draws random numbers elsewhere than from the "
                                              "generator given")


@_check
def check_replica_independence(est: Estimator) -> None:
    """``∂ surrogate[s] / ∂ replica[r] = 0`` for ``r ≠ s`` (exactly), and each entry's gradient is
    the estimate :func:`estimate` returns (same seed)."""
    problem = _supported(est)[-1]
    S = 3
    reps = model.replicate(problem.params, S)
    surr = est.surrogate(problem, reps, _gen(5))
    if tuple(surr.shape) != (S,):
        raise _fail(est, "replica_independence", f"surrogate shape {tuple(surr.shape)}, "
                                                 f"expected ({S},)")
    batch = estimate(est, problem, S, _gen(5))
    _finite_or_skip(batch)
    if not surr.requires_grad:
        if not all((g == 0).all() for g in batch.values()):
            raise _fail(est, "replica_independence", "a constant surrogate gave non-zero estimates")
        return
    names = list(reps)
    for s in range(S):
        grads = torch.autograd.grad(surr[s], [reps[n] for n in names], retain_graph=True,
                                    allow_unused=True)
        for pname, g in zip(names, grads):
            if g is None:
                continue
            others = torch.cat([g[:s], g[s + 1:]])
            if (others != 0).any():
                raise _fail(est, "replica_independence",
                            f"surrogate[{s}] depends on other replicas of {pname}")
            if not torch.allclose(g[s], batch[pname][s], rtol=1e-12, atol=1e-14):
                raise _fail(est, "replica_independence",
                            f"the gradient of surrogate[{s}] is not estimate()'s sample {s}")


@_check
def check_uncorrelated_samples(est: Estimator) -> None:
    """Independent samples are uncorrelated: per coordinate, the Pearson correlation ``r`` over
    ``n`` pairs satisfies ``√n r → N(0, 1)`` for independent pairs. Pairs: neighbours
    ``(2t, 2t+1)`` and halves ``(t, t + S/2)``, which catch noise shared or repeated across the
    batch. Failure rate :data:`ALPHA` (Bonferroni over coordinates and both pairings)."""
    if est.randomness == "none":
        raise CheckSkipped("randomness 'none': the samples are identical by design")
    problem = _supported(est)[-1]
    S = CORRELATION_SAMPLES
    g = _flat(estimate(est, problem, S, _gen(11))).to(torch.float64)  # [S, P]
    sd = g.std(0)
    if not (sd > 0).any():
        raise _fail(est, "uncorrelated_samples", f"all {S} samples are identical")
    cols = sd > 1e-12 * g.abs().max()
    z = _z_bound(2 * int(cols.sum()))
    for label, (a, b) in {"neighbours": (g[0::2], g[1::2]),
                          "halves": (g[: S // 2], g[S // 2:])}.items():
        a, b = a[:, cols], b[:, cols]
        a, b = a - a.mean(0), b - b.mean(0)
        r = (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0))
        stat = r.abs().max().item() * (a.shape[0] ** 0.5)
        if stat > z:
            raise _fail(est, "uncorrelated_samples", f"samples correlated between {label}: max "
                                                     f"√n|r| = {stat:.2f} > bound {z:.2f}")


@_check
def check_path_surrogate(est: Estimator) -> None:
    """``path`` estimators: on the states :func:`sbn_bench.model.sample_states` draws from a seed,
    the path surrogate gives the sampling surrogate's estimates (to rounding: the contract's
    sampling surrogate draws its states as the kernel does, e.g. through
    :func:`~sbn_bench.estimators.from_path`), and the sampled mean matches the exact mean over every
    path (z-test, failure rate :data:`ALPHA`)."""
    if est.path_surrogate is None:
        raise CheckSkipped("no path surrogate")
    for problem in _supported(est)[:2]:
        S = 6
        states, _ = model.sample_states(problem.params, problem.x, problem.noise_dist, S, _gen(9))
        on_paths = estimate_on_paths(est, problem, states)
        sampled = estimate(est, problem, S, _gen(9))
        for k in sampled:
            if not torch.allclose(on_paths[k], sampled[k], rtol=1e-12, atol=1e-14):
                raise _fail(est, "path_surrogate", f"{k}: path surrogate on the sampled states "
                                                   f"differs from the sampling surrogate")
        # each path's estimate is a function of that path alone: the same on a sub-batch (a
        # baseline averaged over the S samples passes every gradient check but is biased, and
        # exact enumeration, which feeds all paths as one batch, would hide it)
        part = estimate_on_paths(est, problem, [s[:3] for s in states])
        for k in part:
            if not torch.allclose(part[k], on_paths[k][:3], rtol=1e-12, atol=1e-14):
                raise _fail(est, "path_surrogate", f"{k}: the estimate of a path changes with the "
                                                   f"other paths of the batch (the first 3 of {S} "
                                                   "states alone give other estimates): a sample "
                                                   "may use its own states only, e.g. no baseline "
                                                   "averaged over the samples")
    problem = _supported(est)[-1]
    exact_mean = path_expectation(est, problem)
    samples = estimate(est, problem, CORRELATION_SAMPLES, _gen(3))
    ok, report = z_test(samples, exact_mean)
    if not ok:
        raise _fail(est, "path_surrogate", f"sampled mean differs from the path expectation: "
                                           f"{report}")


@_check
def check_unbiasedness(est: Estimator) -> None:
    """Estimators flagged ``unbiased``: ``E ĝ = ∇J`` on nets of depth 1–3 (every loss, both noises
    where supported): exactly by path enumeration (``path``, relative error ≤ 1e-10), one sample
    (``none``), or a seeded per-coordinate z-test with :data:`NUM_SAMPLES` samples."""
    if not est.unbiased:
        raise CheckSkipped("not flagged unbiased")
    nets = [n for n in UNBIASEDNESS_NETS if est.supports(unbiasedness_problem(n))]
    if not nets:
        raise _fail(est, "unbiasedness", "supports none of the unbiasedness nets")
    for net in nets:
        problem, exact = unbiasedness_problem(net), exact_of(net)
        if est.path_surrogate is not None:
            mean = path_expectation(est, problem)
            for k, g in exact.items():
                err = float((mean[k] - g).norm())
                tol = EXACT_RTOL * float(g.norm()) + 1e-15
                if err > tol:
                    raise _fail(est, "unbiasedness", f"on {net}, {k}: E ĝ = {mean[k].tolist()}, "
                                                     f"exact {g.tolist()}, error {err:.3g} > {tol:.3g}")
        elif est.randomness == "none":
            one = estimate(est, problem, 2, _gen(0))
            for k, g in exact.items():
                if not torch.allclose(one[k], g.expand_as(one[k]), rtol=EXACT_RTOL, atol=1e-15):
                    raise _fail(est, "unbiasedness", f"on {net}, {k}: {one[k][0].tolist()} is not "
                                                     f"the exact gradient {g.tolist()}")
        else:
            samples = estimate(est, problem, NUM_SAMPLES, _gen(2024))
            ok, report = z_test(samples, exact)
            if not ok:
                raise _fail(est, "unbiasedness", f"biased on {net}: {report}")


@_check
def check_adapt(est: Estimator) -> None:
    """Adaptive estimators: :func:`~sbn_bench.estimators.base.adapt_estimator` with
    :data:`ADAPT_STEPS` steps on the first check problem returns an :class:`Estimator` of the same
    name; two runs with one seed give bit-identical estimates; the tuned estimator passes
    :func:`check_shapes` (on the problem it was tuned for and on the others)."""
    if est.adapt is None:
        raise CheckSkipped("not adaptive")
    if not callable(est.adapt):
        raise _fail(est, "adapt", f"adapt is {type(est.adapt).__name__}, expected a callable")
    problem = _supported(est)[0]
    tuned, _ = adapt_estimator(est, problem, ADAPT_STEPS, seed=17)
    again, _ = adapt_estimator(est, problem, ADAPT_STEPS, seed=17)
    _check_untouched(est, "adapt")  # the tuning itself must leave the problem as it was
    for t in (tuned, again):
        if not isinstance(t, Estimator) or t.name != est.name:
            raise _fail(est, "adapt", f"adapt returned {t!r}, expected an Estimator named {est.name!r}")
    a, b = estimate(tuned, problem, 4, _gen(5)), estimate(again, problem, 4, _gen(5))
    for k in a:
        if not torch.equal(a[k], b[k]):
            diff = float((a[k] - b[k]).abs().max())
            raise _fail(est, "adapt", f"{k}: two adaptations with seed 17 give estimates that differ "
                                      f"by up to {diff:.3g}, expected bit-identical")
    try:
        check_shapes(tuned)
    except ConformanceError as e:
        raise _fail(est, "adapt", f"the tuned estimator fails check 'shapes': {e}") from None


CHECKS: tuple[Callable[[Estimator], None], ...] = (
    check_contract, check_shapes, check_cuda, check_refusal, check_determinism,
    check_statelessness, check_replica_independence, check_uncorrelated_samples,
    check_path_surrogate, check_unbiasedness, check_adapt,
)
"""The conformance table, in the order :func:`check_estimator` runs it."""


def _as_estimator(obj: Estimator | Callable[..., Estimator]) -> Estimator:
    if isinstance(obj, Estimator):
        return obj
    if callable(obj):
        name = getattr(obj, "__name__", repr(obj))
        try:
            check_signature(name, obj)
            est = obj()
        except (Exception, SystemExit) as e:  # a factory may raise anything: one kind of failure
            raise ConformanceError(f"factory {name!r}: {type(e).__name__}: {e}") from e
        if not isinstance(est, Estimator):
            raise ConformanceError(f"factory {obj!r} returned {type(est).__name__}, expected an "
                                   "sbn_bench.Estimator")
        check_factory(est.name, obj)  # the registry's contract for factories
        return est
    raise ConformanceError(f"{obj!r} is neither an Estimator nor a factory")


def check_estimator(obj: Estimator | Callable[..., Estimator],
                    checks: Sequence[Callable[[Estimator], None]] = CHECKS) -> list[str]:
    """Run the conformance table on an estimator or a factory (called with its defaults, and
    checked like a registry entry).

    Returns:
        The names of the checks that were skipped (with why), e.g. ``"check_cuda: needs a CUDA
        device"``.

    Raises:
        ConformanceError: listing every failed check with expected, actual and tolerance.
    """
    est = _as_estimator(obj)
    failures, skipped = [], []
    for check in checks:
        try:
            check(est)
        except CheckSkipped as e:
            skipped.append(f"{check.__name__}: {e}")
        except ConformanceError as e:
            failures.append(str(e))
    if failures:
        raise ConformanceError(f"{len(failures)} conformance check(s) failed: "
                               + "; ".join(failures))
    return skipped


def parametrize_with_checks(estimators: Sequence[Estimator | Callable[..., Estimator]]
                            ) -> Any:
    """A pytest decorator: one test per (estimator, check), ids ``"spec-check_name"``; a skipped
    check is reported as a pytest skip. The decorated test takes ``estimator`` and ``check`` and
    calls ``check(estimator)`` (scikit-learn's ``parametrize_with_checks``)."""
    import pytest  # a test dependency: only needed when this decorator is used

    def runner(check: Callable[[Estimator], None]) -> Callable[[Estimator], None]:
        @functools.wraps(check)
        def run(est: Estimator) -> None:
            try:
                check(est)
            except CheckSkipped as e:
                pytest.skip(str(e))
        return run

    ests = [_as_estimator(e) for e in estimators]
    cases = [pytest.param(e, runner(c), id=f"{e.spec}-{c.__name__.removeprefix('check_')}")
             for e in ests for c in CHECKS]
    return pytest.mark.parametrize(("estimator", "check"), cases)

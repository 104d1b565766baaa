"""Conformance of every estimator in the LIVE registry (built-ins from the entry points plus a
third-party test plugin) to the contract of :mod:`sbn_bench.estimators.base`.

One table, as optax runs every optimizer through one test table: shapes, dtype, device,
determinism for a seeded generator, independence of the ``S`` samples, refusal of unsupported
noises and losses, and agreement of the path surrogate with the sampling surrogate.
"""

from __future__ import annotations

import functools
from pathlib import Path
from statistics import NormalDist

import pytest
import torch
from oracles import path_expectation as _path_expectation

from sbn_bench import model
from sbn_bench.estimators import (
    RANDOMNESS,
    Estimator,
    UnsupportedProblem,
    estimate,
    estimate_on_paths,
    load_registry,
)
from sbn_bench.model import LOSS_NAMES, NOISE_NAMES
from sbn_bench.problems import Problem, random_problem

PLUGIN = Path(__file__).parent / "plugins" / "thirdparty_estimators.py"
REGISTRY = load_registry(plugins=[PLUGIN])
BUILTIN_NAMES = {"exact", "reinforce", "reinforce-loo", "arm", "disarm", "concrete", "st-gumbel",
                 "tanh", "st", "st-identity", "psa"}
PLUGIN_NAMES = {"reinforce-cb", "mf-noise"}
# every registered name with its defaults, plus a few non-default hyperparameters
SPECS = [*REGISTRY.names(), "concrete:tau=0.1", "st-gumbel:tau=0.5", "reinforce-loo:k=4",
         "reinforce-cb:baseline=-1.5", "mf-noise:sigma=0.5"]

ALPHA = 1e-6
"""Failure rate of each seeded statistical check below when the implementation is correct
(two-sided, Bonferroni-corrected over the coordinates the check looks at)."""


def _z_bound(num_tests: int, alpha: float = ALPHA) -> float:
    """Two-sided normal quantile for family-wise failure rate ``alpha`` over ``num_tests``."""
    return NormalDist().inv_cdf(1 - alpha / (2 * num_tests))


@functools.cache
def _problem(kind: str) -> Problem:
    """Small problems covering every loss and noise (cached; treat as read-only)."""
    if kind == "logistic":
        return random_problem("2-3-2-1", 1, data_points=5)
    if kind == "softmax-gaussian":
        return random_problem("3-2-2-3", 2, data_points=4, loss="softmax", noise="gaussian")
    if kind == "mse":
        return random_problem("2-2-3-2", 3, data_points=4, loss="mse")
    if kind == "mse-gaussian":
        return random_problem("2-2-2-1", 4, data_points=3, loss="mse", noise="gaussian")
    raise AssertionError(kind)


PROBLEMS = ["logistic", "softmax-gaussian", "mse", "mse-gaussian"]


def _gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """``{name: [S, *shape]} → [S, P]`` in parameter order."""
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


# --------------------------------------------------------------------------------------------
# the registry the table runs over


def test_live_registry_has_builtins_and_plugin() -> None:
    assert REGISTRY.errors == [], [str(e) for e in REGISTRY.errors]
    assert set(REGISTRY.names()) == BUILTIN_NAMES | PLUGIN_NAMES
    for name in PLUGIN_NAMES:
        assert REGISTRY.origins[name] == f"plugin file {str(PLUGIN)!r}"


@pytest.mark.parametrize("spec", SPECS)
def test_flags_are_consistent(spec: str) -> None:
    est = REGISTRY.create(spec)
    assert est.name == spec.split(":")[0]
    again = REGISTRY.create(est.spec)
    assert (again.spec, again.hparams) == (est.spec, est.hparams), f"{est.spec!r} does not round-trip"
    assert est.randomness in RANDOMNESS
    assert isinstance(est.unbiased, bool)
    if est.path_surrogate is not None:
        assert est.randomness == "path"
    assert est.noises and est.noises <= set(NOISE_NAMES)
    assert est.losses and est.losses <= set(LOSS_NAMES)
    assert est.description and "\n" not in est.description
    for widths in [(2, 5, 5, 5, 1), (1, 1, 1), (3, 4, 2)]:
        n = est.evals_per_sample(widths)
        assert isinstance(n, int) and n >= 1, (spec, widths, n)


def test_builtin_flags_follow_spec_table() -> None:
    """SPEC §3's table: bias and randomness of each built-in; ARM/DisARM logistic only and cost
    ``2L``, PSA ``1 + n_L`` evaluations."""
    unbiased = {"exact", "reinforce", "reinforce-loo", "arm", "disarm"}
    randomness = {"exact": "none", "tanh": "none", "arm": "continuous", "disarm": "continuous",
                  "concrete": "continuous", "st-gumbel": "continuous"}
    for name in BUILTIN_NAMES:
        est = REGISTRY.create(name)
        assert est.unbiased == (name in unbiased), name
        assert est.randomness == randomness.get(name, "path"), name
    for name in ("arm", "disarm"):
        est = REGISTRY.create(name)
        assert est.noises == {"logistic"}
        assert est.evals_per_sample((2, 5, 5, 5, 1)) == 6
        assert est.evals_per_sample((2, 3, 1)) == 2
    assert REGISTRY.create("psa").evals_per_sample((2, 5, 5, 4, 1)) == 5
    assert REGISTRY.create("reinforce-loo:k=4").evals_per_sample((2, 5, 1)) == 4


# --------------------------------------------------------------------------------------------
# shapes, dtype, device


def _check_output(est: Estimator, problem: Problem, out: dict[str, torch.Tensor], S: int,
                  dtype: torch.dtype, device: str) -> None:
    assert list(out) == problem.param_names, (est.spec, list(out))
    for name, g in out.items():
        shape = (S, *problem.params[name].shape)
        assert tuple(g.shape) == shape, f"{est.spec}: {name} has shape {tuple(g.shape)}, expected {shape}"
        assert g.dtype == dtype, f"{est.spec}: {name} has dtype {g.dtype}, expected {dtype}"
        assert g.device.type == device, f"{est.spec}: {name} is on {g.device}, expected {device}"
        assert not g.requires_grad
        assert torch.isfinite(g).all(), f"{est.spec}: {name} has non-finite entries"


SUPPORTED = [(s, kind) for s in SPECS for kind in PROBLEMS if REGISTRY.create(s).supports(_problem(kind))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("spec", "kind"), SUPPORTED)
def test_shapes_dtype_device_cpu(spec: str, kind: str, dtype: torch.dtype) -> None:
    est = REGISTRY.create(spec)
    problem = _problem(kind).to(dtype=dtype)
    out = estimate(est, problem, 3, _gen(0))
    _check_output(est, problem, out, 3, dtype, "cpu")
    if est.path_surrogate is not None:
        states, _ = model.sample_states(problem.params, problem.x, problem.noise_dist, 3, _gen(1))
        _check_output(est, problem, estimate_on_paths(est, problem, states), 3, dtype, "cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("spec", SPECS)
def test_shapes_dtype_device_cuda(spec: str) -> None:
    est = REGISTRY.create(spec)
    problem = _problem("logistic").to(device="cuda", dtype=torch.float32)
    out = estimate(est, problem, 3, _gen(0, "cuda"))
    _check_output(est, problem, out, 3, torch.float32, "cuda")
    # GPU and CPU generators draw different streams, so only the randomness-free estimators can be
    # compared sample by sample (float32 on both, up to float32 rounding)
    if est.randomness == "none":
        cpu = estimate(est, _problem("logistic").to(dtype=torch.float32), 3, _gen(0))
        for name in out:
            torch.testing.assert_close(out[name].cpu(), cpu[name], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# determinism and randomness


@pytest.mark.parametrize("spec", SPECS)
def test_deterministic_for_a_seed(spec: str) -> None:
    est = REGISTRY.create(spec)
    problem = _problem("logistic")
    a = estimate(est, problem, 4, _gen(123))
    b = estimate(est, problem, 4, _gen(123))
    for name in a:
        assert torch.equal(a[name], b[name]), f"{spec}: {name} differs between two runs of seed 123"
    c = estimate(est, problem, 4, _gen(124))
    same = all(torch.equal(a[name], c[name]) for name in a)
    if est.randomness == "none":
        assert same, f"{spec} has randomness 'none' but depends on the generator seed"
    else:
        assert not same, f"{spec} gives identical estimates for seeds 123 and 124"


@pytest.mark.parametrize("spec", [s for s in SPECS if REGISTRY.create(s).randomness == "none"])
def test_randomness_none_gives_identical_samples(spec: str) -> None:
    est = REGISTRY.create(spec)
    out = estimate(est, _problem("mse"), 5, _gen(0))
    for name, g in out.items():
        assert torch.equal(g, g[:1].expand_as(g)), f"{spec}: samples of {name} differ"


@pytest.mark.parametrize("spec", SPECS)
def test_replica_s_influences_entry_s_only(spec: str) -> None:
    """The contract's independence in the gradient: ``∂ surrogate[s] / ∂ replica[r] = 0`` for
    ``r ≠ s`` (exactly), and replica ``s``'s gradient of entry ``s`` alone is the ``s``-th
    estimate that :func:`estimate` returns from one backward pass of the sum (same seed)."""
    est = REGISTRY.create(spec)
    problem = _problem("mse")  # n_out = 2, no restriction of noise for any estimator
    S = 3
    reps = model.replicate(problem.params, S)
    surr = est.surrogate(problem, reps, _gen(5))
    assert tuple(surr.shape) == (S,)
    batch = estimate(est, problem, S, _gen(5))
    if not surr.requires_grad:  # a constant surrogate: every estimate must then be zero
        assert all((g == 0).all() for g in batch.values())
        return
    names = list(reps)
    for s in range(S):
        grads = torch.autograd.grad(surr[s], [reps[n] for n in names], retain_graph=True,
                                    allow_unused=True)
        for name, g in zip(names, grads):
            if g is None:
                continue
            others = torch.cat([g[:s], g[s + 1:]])
            assert (others == 0).all(), f"{spec}: surrogate[{s}] depends on other replicas of {name}"
            torch.testing.assert_close(g[s], batch[name][s], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("spec", [s for s in SPECS if REGISTRY.create(s).randomness != "none"])
def test_samples_are_uncorrelated(spec: str) -> None:
    """Independent samples are uncorrelated: for each coordinate, the Pearson correlation ``r``
    over ``n`` pairs of samples satisfies ``√n r → N(0, 1)`` whenever the pair is independent
    (``Var(XY) = σ_X² σ_Y²`` then, whatever the distributions). Pairs: neighbours ``(2t, 2t+1)``
    and halves ``(t, t + S/2)``, which catch noise shared or repeated across the batch.
    Failure rate ``ALPHA`` (Bonferroni over coordinates and both pairings)."""
    est = REGISTRY.create(spec)
    problem = _problem("mse-gaussian")
    if not est.supports(problem):
        problem = random_problem("2-2-2-1", 4, data_points=3, loss="mse")
    S = 4000
    g = _flat(estimate(est, problem, S, _gen(11)))  # [S, P]
    sd = g.std(0)
    assert (sd > 0).any(), f"{spec}: all {S} samples are identical"
    cols = sd > 1e-12 * g.abs().max()
    pairs = {"neighbours": (g[0::2], g[1::2]), "halves": (g[: S // 2], g[S // 2:])}
    z = _z_bound(2 * int(cols.sum()))
    for label, (a, b) in pairs.items():
        a, b = a[:, cols], b[:, cols]
        a, b = a - a.mean(0), b - b.mean(0)
        r = (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0))
        stat = r.abs().max().item() * (a.shape[0] ** 0.5)
        assert stat <= z, (f"{spec}: samples correlated between {label}: max √n|r| = {stat:.2f} "
                           f"> bound {z:.2f} (r = {r.tolist()})")


# --------------------------------------------------------------------------------------------
# refusal of unsupported problems


UNSUPPORTED = [(s, noise, loss) for s in SPECS for noise in NOISE_NAMES for loss in LOSS_NAMES
               if noise not in REGISTRY.create(s).noises or loss not in REGISTRY.create(s).losses]


def test_some_combinations_are_unsupported() -> None:
    """The refusal table below is not empty: ARM/DisARM refuse gaussian noise, ``mf-noise`` softmax."""
    pairs = {(s.split(":")[0], n, lo) for s, n, lo in UNSUPPORTED}
    assert {("arm", "gaussian", "logistic"), ("disarm", "gaussian", "mse"),
            ("mf-noise", "logistic", "softmax")} <= pairs


@pytest.mark.parametrize(("spec", "noise", "loss"), UNSUPPORTED)
def test_refuses_unsupported(spec: str, noise: str, loss: str) -> None:
    est = REGISTRY.create(spec)
    arch = "2-2-2-3" if loss == "softmax" else "2-2-2-1"
    problem = random_problem(arch, 0, data_points=3, loss=loss, noise=noise)
    gen = _gen(0)
    before = gen.get_state()
    with pytest.raises(UnsupportedProblem) as info:
        estimate(est, problem, 2, gen)
    msg = str(info.value)
    what = noise if noise not in est.noises else loss
    assert repr(est.spec) in msg and repr(what) in msg, msg
    assert torch.equal(gen.get_state(), before), "the generator was used before the refusal"
    if est.path_surrogate is not None:
        states, _ = model.sample_states(problem.params, problem.x, problem.noise_dist, 2, _gen(1))
        with pytest.raises(UnsupportedProblem):
            estimate_on_paths(est, problem, states)


@pytest.mark.parametrize("name", ["arm", "disarm"])
def test_arm_disarm_refuse_gaussian_noise_with_a_clear_message(name: str) -> None:
    problem = random_problem("2-2-1", 0, data_points=3, noise="gaussian")
    with pytest.raises(UnsupportedProblem, match=rf"estimator '{name}' does not support noise "
                                                 r"'gaussian'.*supports noise logistic"):
        estimate(REGISTRY.create(name), problem, 2, _gen(0))


# --------------------------------------------------------------------------------------------
# path estimators: the path surrogate is the sampling surrogate on given states

PATH_SPECS = [s for s in SPECS if REGISTRY.create(s).path_surrogate is not None]


def test_path_specs_cover_the_path_builtins() -> None:
    assert {s.split(":")[0] for s in PATH_SPECS} >= {"reinforce", "st", "st-identity", "psa",
                                                     "reinforce-cb"}


@pytest.mark.parametrize("kind", ["logistic", "softmax-gaussian"])
@pytest.mark.parametrize("spec", PATH_SPECS)
def test_path_surrogate_equals_surrogate_on_the_same_states(spec: str, kind: str) -> None:
    """Every path estimator here (built-ins and the plugin) samples its states with
    :func:`model.sample_states` via :func:`from_path`, so with the same seed the sampled states are
    known and the two surrogates must agree to rounding. (A plugin that sampled differently would
    be covered by the distributional check below only.)"""
    est = REGISTRY.create(spec)
    problem = _problem(kind)
    S = 6
    states, _ = model.sample_states(problem.params, problem.x, problem.noise_dist, S, _gen(9))
    on_paths = estimate_on_paths(est, problem, states)
    sampled = estimate(est, problem, S, _gen(9))
    for name in sampled:
        torch.testing.assert_close(on_paths[name], sampled[name], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("spec", PATH_SPECS)
def test_sampled_estimates_have_the_path_expectation(spec: str) -> None:
    """In distribution: the mean of sampled estimates matches the exact mean of the path
    surrogate over all paths. Per-coordinate z-test with the sample standard deviation,
    failure rate ``ALPHA`` (Bonferroni over coordinates)."""
    est = REGISTRY.create(spec)
    problem = _problem("mse-gaussian")
    exact_mean = _flat({k: v.unsqueeze(0) for k, v in _path_expectation(est, problem).items()})[0]
    S = 4000
    g = _flat(estimate(est, problem, S, _gen(3)))
    mean, se = g.mean(0), g.std(0) / S ** 0.5
    z = _z_bound(g.shape[1])
    tol = z * se + 1e-12
    bad = (mean - exact_mean).abs() > tol
    assert not bad.any(), (f"{spec}: sampled mean {mean[bad].tolist()} vs path expectation "
                           f"{exact_mean[bad].tolist()}, tolerance {tol[bad].tolist()}")

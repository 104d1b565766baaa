"""``sbn-bench train`` and :func:`sbn_bench.train.train`.

Checked against closed forms (one SGD / SGD-with-momentum / Adam step on the exact gradient), against
:func:`sbn_bench.estimators.estimate` (the training fast path computes the same estimate), against
the exact reference (the logged objective of every checkpoint) and, for the sampled train loss, with
a seeded statistical test whose tolerance is a z-bound at a stated failure rate.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sbn_bench import model, problems, provenance, reference
from sbn_bench.cli import main
from sbn_bench.errors import SbnBenchError
from sbn_bench.estimators import Estimator, UnsupportedProblem, estimate, load_registry
from sbn_bench.problems import Problem, load_problem, random_problem, save_problem
from sbn_bench.reference import naive
from sbn_bench.train import (
    LOG_COLUMNS,
    EstimatorFailed,
    TrainArgumentError,
    TrainingDiverged,
    _rows,
    _step_gradient,
    train,
)

F64 = torch.float64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reg():
    return load_registry()


@pytest.fixture(scope="module")
def small() -> Problem:
    """2-3-2-1 with 12 random data points: 32 joint paths, cheap for every estimator."""
    return random_problem("2-3-2-1", 4, data_points=12)


@pytest.fixture(scope="module")
def learnable() -> Problem:
    """The paper's data (40 points) on a 2-3-2-1 net, rescaled as in SPEC §6: a learnable task."""
    gen = torch.Generator().manual_seed(3)
    x, y = problems.paper_data(gen, per_class=20)
    params = problems.rescale_layers(problems.random_params((2, 3, 2, 1), gen), x,
                                     model.NOISES["logistic"], gen)
    return Problem(params, x, y, name="learnable")


def _read_log(path: Path) -> tuple[list[str], list[dict[str, float]]]:
    with open(path, newline="") as f:
        r = csv.reader(f)
        header = next(r)
        rows = [dict(zip(header, map(float, line))) for line in r]
    return header, rows


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-12,
           atol: float = 1e-14) -> None:
    err = (actual - expected).abs().max().item()
    tol = atol + rtol * expected.abs().max().item()
    assert err <= tol, f"{what}: max |actual − expected| = {err:.3g} > tolerance {tol:.3g}\n" \
                       f"expected {expected}\nactual {actual}"


# --------------------------------------------------------------------------------------------
# the step: the fast path computes estimate()'s sample


@pytest.mark.parametrize("spec", ["reinforce", "psa", "st", "exact", "tanh", "arm",
                                  "concrete:tau=0.5", "reinforce-loo:k=3"])
def test_step_gradient_equals_estimate(small: Problem, reg, spec: str) -> None:
    """For the same generator state, the training step's gradient is ``estimate(est, sub, 1, g)[·][0]``
    on the minibatch problem (rows ``idx``), for path, continuous and deterministic estimators."""
    est = reg.create(spec)
    idx = torch.tensor([7, 2, 9, 0, 5])
    leaves = reference.leaf_params(small)
    live = {k: v.detach() for k, v in leaves.items()}
    views = {k: v.unsqueeze(0) for k, v in leaves.items()}
    sub = _rows(small, idx, live)
    g1, g_mon = torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)
    grads, losses = _step_gradient(est, sub, leaves, views, g1, g_mon)
    validated = Problem(small.params, small.x[idx], small.y[idx], loss=small.loss,
                        noise=small.noise, name="rows")
    expected = estimate(est, validated, 1, torch.Generator().manual_seed(11))
    for (name, g), got in zip(expected.items(), grads):
        _close(got, g[0], f"{spec} gradient of {name}")
    assert losses.shape == (5,)
    # the sampled losses are losses of some path of this minibatch: each is one of the 2^{n_L}
    # values ℓ(η(x^L), y_d) for its data point
    last = model.all_states(2, F64)  # [4, 2]
    possible = validated.loss_values(model.output(small.params, last).unsqueeze(1)
                                     .expand(4, 5, 1))  # [4, 5]
    assert ((possible - losses).abs().min(0).values < 1e-12).all(), (losses, possible)


def test_rows_selects_rows_without_touching_the_problem(small: Problem) -> None:
    idx = torch.tensor([3, 1])
    sub = _rows(small, idx, small.params)
    assert torch.equal(sub.x, small.x[idx]) and torch.equal(sub.y, small.y[idx])
    assert sub.loss == small.loss and sub.noise == small.noise and sub.num_data == 2
    assert small.num_data == 12


# --------------------------------------------------------------------------------------------
# optimiser wiring: closed forms on the exact full-batch gradient


def test_sgd_momentum_two_steps_closed_form(small: Problem, tmp_path: Path) -> None:
    """Full batch (``batch_size = D``), exact gradient ``g(θ) = ∇J(θ)``. torch's SGD with momentum
    μ and no dampening: ``v₁ = g(θ₀)``, ``θ₁ = θ₀ − lr v₁``; ``v₂ = μ v₁ + g(θ₁)``, ``θ₂ = θ₁ − lr v₂``.
    The data order of a full batch only permutes the terms of the mean (rounding-level change)."""
    lr, mu = 0.2, 0.7
    res = train(small, "exact", lr=lr, momentum=mu, batch_size=small.num_data, epochs=2,
                checkpoints=[1, 2], seed=5, out_dir=tmp_path)
    _, g0 = reference.exact_gradient(small)
    theta1 = {k: small.params[k] - lr * g0[k] for k in g0}
    _, g1 = reference.exact_gradient(small.with_params(theta1))
    theta2 = {k: theta1[k] - lr * (mu * g0[k] + g1[k]) for k in g0}
    p1 = load_problem(res.checkpoints[1]).params
    p2 = load_problem(res.checkpoints[2]).params
    for k in g0:
        _close(p1[k], theta1[k], f"θ₁ {k}")
        _close(p2[k], theta2[k], f"θ₂ {k}")
        _close(res.problem.params[k], theta2[k], f"final {k}")


def test_adam_first_step_closed_form(small: Problem, tmp_path: Path) -> None:
    """Adam's first step: ``m₁ = (1−β₁) g``, ``v₁ = (1−β₂) g²``, bias-corrected ``m̂ = g``,
    ``v̂ = g²``, so ``θ₁ = θ₀ − lr · g / (|g| + ε)`` with ε = 1e-8 (torch's default)."""
    lr = 0.01
    res = train(small, "exact", optimizer="adam", lr=lr, batch_size=small.num_data, epochs=1,
                out_dir=tmp_path)
    _, g = reference.exact_gradient(small)
    for k in g:
        expected = small.params[k] - lr * g[k] / (g[k].abs() + 1e-8)
        _close(res.problem.params[k], expected, f"Adam θ₁ {k}", rtol=1e-10)


def test_full_batch_gradient_descent_decreases_objective_every_epoch(learnable: Problem,
                                                                     tmp_path: Path) -> None:
    """Gradient descent with the exact gradient and a small step decreases a smooth J every step
    (descent lemma, lr < 2/L). The run is deterministic, so this either always or never passes."""
    res = train(learnable, "exact", lr=0.05, momentum=0.0, batch_size=learnable.num_data,
                epochs=25, out_dir=tmp_path)
    J = [r["exact_objective"] for r in res.history]
    assert all(b < a for a, b in zip(J, J[1:])), f"exact objective not decreasing: {J}"


def test_minibatch_sgd_with_exact_gradient_decreases_objective(learnable: Problem,
                                                               tmp_path: Path) -> None:
    res = train(learnable, "exact", lr=0.1, batch_size=10, epochs=40, checkpoints=[20],
                out_dir=tmp_path, log_every=5)
    J0, J = res.initial_objective, res.final_objective
    assert J < J0, f"SGD with exact minibatch gradients did not decrease J: {J0} -> {J}"
    assert J == pytest.approx(float(reference.objective(res.problem)), rel=1e-13)


# --------------------------------------------------------------------------------------------
# files: checkpoints, log, figure, manifest


def test_checkpoints_log_figure_manifest(small: Problem, tmp_path: Path) -> None:
    epochs, B = 7, 5  # D = 12: steps per epoch ⌈12/5⌉ = 3 (the last minibatch has 2 points)
    res = train(small, "reinforce", lr=0.05, batch_size=B, epochs=epochs, checkpoints=[2, 5, 2],
                seed=1, out_dir=tmp_path, log_every=3)
    assert sorted(res.checkpoints) == [0, 2, 5, 7]
    for e, path in res.checkpoints.items():
        assert path == tmp_path / f"checkpoint_epoch{e}.npz" and path.is_file()
        p = load_problem(path)
        assert p.arch == small.arch and p.loss == small.loss and p.noise == small.noise
        assert torch.equal(p.x, small.x) and torch.equal(p.y, small.y)
        # round trip: saving the loaded checkpoint again gives the same arrays
        again = load_problem(save_problem(p, tmp_path / "again" / path.name))
        for k in p.params:
            assert torch.equal(again.params[k], p.params[k]), k
    for k, v in load_problem(res.checkpoints[0]).params.items():
        assert torch.equal(v, small.params[k]), f"checkpoint 0 is not the initial {k}"
    for k, v in load_problem(res.checkpoints[7]).params.items():
        assert torch.equal(v, res.problem.params[k]), f"final checkpoint differs from result {k}"

    header, rows = _read_log(res.log_path)
    assert header == LOG_COLUMNS == ["epoch", "step", "train_loss", "exact_objective", "wall_s"]
    assert [int(r["epoch"]) for r in rows] == list(range(epochs + 1))
    assert [int(r["step"]) for r in rows] == [3 * e for e in range(epochs + 1)]
    assert math.isnan(rows[0]["train_loss"]) and all(math.isfinite(r["train_loss"]) for r in rows[1:])
    have_exact = [int(r["epoch"]) for r in rows if math.isfinite(r["exact_objective"])]
    assert have_exact == [0, 2, 3, 5, 6, 7]  # multiples of log_every=3, checkpoints, 0 and final
    walls = [r["wall_s"] for r in rows]
    assert walls == sorted(walls)
    by_epoch = {int(r["epoch"]): r for r in rows}
    for e, path in res.checkpoints.items():
        J = float(reference.objective(load_problem(path)))
        assert by_epoch[e]["exact_objective"] == pytest.approx(J, rel=1e-13, abs=1e-15), e
    assert res.history[-1]["exact_objective"] == res.final_objective

    data = res.curve_path.read_bytes()
    assert res.curve_path == tmp_path / "loss_curve.png" and data[:8] == PNG_MAGIC
    man = json.loads(res.manifest_path.read_text())
    assert man["config"]["checkpoints"] == [2, 5] and man["config"]["batch_size"] == B
    assert man["config"]["momentum"] == 0.9 and man["steps"] == 3 * epochs
    assert man["estimator"]["spec"] == "reinforce" and man["estimator"]["version"] == "1"
    assert man["final_objective"] == pytest.approx(res.final_objective, rel=1e-15)
    assert set(man["versions"]) >= {"torch", "numpy", "python", "sbn_bench", "cpu", "cpu_capability"}
    assert man["versions"]["cpu"] == provenance.cpu_model()
    assert man["checkpoints"] == {str(e): f"checkpoint_epoch{e}.npz" for e in (0, 2, 5, 7)}
    assert not list(tmp_path.glob("*.tmp"))


def test_same_seed_same_checkpoints_other_seed_differs(small: Problem, tmp_path: Path) -> None:
    kw = dict(lr=0.05, batch_size=4, epochs=3, checkpoints=[1, 3])
    a = train(small, "reinforce", seed=7, out_dir=tmp_path / "a", **kw)
    b = train(small, "reinforce", seed=7, out_dir=tmp_path / "b", **kw)
    c = train(small, "reinforce", seed=8, out_dir=tmp_path / "c", **kw)
    for e in (1, 3):
        pa, pb = load_problem(a.checkpoints[e]), load_problem(b.checkpoints[e])
        for k in pa.params:
            assert torch.equal(pa.params[k], pb.params[k]), f"epoch {e} {k} differs for one seed"
    assert [r["train_loss"] for r in a.history[1:]] == [r["train_loss"] for r in b.history[1:]]
    assert not torch.equal(a.problem.params["weight_1"], c.problem.params["weight_1"])


def test_reference_too_large_trains_without_exact_column(small: Problem, tmp_path: Path) -> None:
    res = train(small, "st", epochs=2, batch_size=6, out_dir=tmp_path, max_exact_bytes=1)
    assert res.exact_note is not None and "exact reference refused" in res.exact_note
    assert all(math.isnan(r["exact_objective"]) for r in res.history)
    man = json.loads(res.manifest_path.read_text())
    assert man["final_objective"] is None and "refused" in man["exact_objective_note"]
    assert res.curve_path.read_bytes()[:8] == PNG_MAGIC


def test_estimator_without_gradient_leaves_parameters_unchanged(small: Problem, tmp_path: Path
                                                                ) -> None:
    """A plugin surrogate that does not depend on the parameters gives a zero gradient."""
    plugin = tmp_path / "zero_est.py"
    plugin.write_text(
        "import torch\nfrom sbn_bench import Estimator\n\n"
        "def zero():\n"
        "    def surrogate(problem, params, generator):\n"
        "        return torch.zeros(params['weight_1'].shape[0], dtype=torch.float64)\n"
        "    return Estimator('zero', surrogate, randomness='none')\n\n"
        "ESTIMATORS = {'zero': zero}\n")
    est = load_registry([plugin]).create("zero")
    res = train(small, est, epochs=2, batch_size=5, out_dir=tmp_path / "out")
    for k, v in res.problem.params.items():
        assert torch.equal(v, small.params[k]), k
    assert res.history[1]["exact_objective"] == pytest.approx(res.initial_objective, rel=1e-15)


# --------------------------------------------------------------------------------------------
# the sampled train loss


def _loss_moments(problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """Per data point, the exact mean and variance of the sampled loss ``ℓ(η(x^L), y_d)`` by
    enumerating every joint path: ``([D], [D])``."""
    paths = naive.enumerate_paths(problem.widths)
    prob = naive.path_log_probs(problem, problem.params, paths).exp()  # [P, D]
    eta = model.output(problem.params, paths[-1])  # [P, n_out]
    f = problem.loss_values(eta.unsqueeze(1).expand(eta.shape[0], problem.num_data, 1))  # [P, D]
    mean = (prob * f).sum(0)
    return mean, (prob * f * f).sum(0) - mean ** 2


@pytest.mark.parametrize("spec", ["reinforce", "tanh"])
def test_train_loss_is_the_mean_sampled_loss(small: Problem, tmp_path: Path, spec: str) -> None:
    """With a negligible learning rate the parameters stay at θ₀ (to ~1e-10), so each epoch's
    ``train_loss`` is ``(1/D) Σ_d ℓ_d`` with one independent draw per point: mean ``J(θ₀)``,
    variance ``σ² = Σ_d Var ℓ_d / D²``; the mean over E epochs has variance ``σ²/E``. Tolerance
    z·σ/√E with z = 5.03 (two-sided failure rate 5e-7 per case, 1e-6 over the two cases), plus
    1e-8 for the parameter drift. ``reinforce`` reuses its gradient's draw; ``tanh`` (no path
    surrogate) takes an extra draw."""
    epochs = 200
    res = train(small, spec, lr=1e-10, momentum=0.0, batch_size=5, epochs=epochs, seed=3,
                out_dir=tmp_path, log_every=10**6)
    mean, var = _loss_moments(small)
    J, sigma = float(mean.mean()), math.sqrt(float(var.sum()) / small.num_data ** 2 / epochs)
    assert J == pytest.approx(res.initial_objective, rel=1e-12)
    got = sum(r["train_loss"] for r in res.history[1:]) / epochs
    tol = 5.03 * sigma + 1e-8
    assert abs(got - J) <= tol, f"mean train loss {got:.6g}, expected J = {J:.6g} ± {tol:.3g}"


# --------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("kwargs, argument", [
    (dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"), (dict(batch_size=0), "batch_size"),
    (dict(batch_size=13), "batch_size"), (dict(epochs=0), "epochs"),
    (dict(checkpoints=[0]), "checkpoints"), (dict(epochs=3, checkpoints=[4]), "checkpoints"),
    (dict(checkpoints="1,2"), "checkpoints"),
    (dict(momentum=1.0), "momentum"), (dict(optimizer="adam", momentum=0.9), "momentum"),
    (dict(optimizer="rmsprop"), "optimizer"), (dict(seed=-1), "seed"),
    (dict(log_every=0), "log_every"),
])
def test_bad_arguments_refused_before_any_work(small: Problem, tmp_path: Path, kwargs: dict,
                                               argument: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(TrainArgumentError, match=f"argument {argument}=") as e:
        train(small, "psa", out_dir=out, **{"epochs": 2, **kwargs})
    assert e.value.argument == argument
    assert not out.exists()


def test_unsupported_estimator_refused_before_any_work(tmp_path: Path) -> None:
    p = random_problem("2-2-1", 0, data_points=4, noise="gaussian")
    with pytest.raises(UnsupportedProblem, match="noise 'gaussian'"):
        train(p, "arm", epochs=1, batch_size=2, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_step_over_the_memory_budget_is_refused_before_any_file(tmp_path: Path) -> None:
    """One gradient sample per step must fit memory_budget (the runner's estimate for a minibatch):
    reinforce-loo with 10^8 loss evaluations was killed by the kernel after writing epoch 0's
    files; exact on a minibatch too large for the exact gradient wrote them before failing."""
    p = random_problem("2-3-1", 0, data_points=20)
    with pytest.raises(TrainArgumentError, match=r"refused before any work: one step's gradient "
                       r"sample of reinforce-loo:k=100000000 .* a minibatch of 10, float64\) needs "
                       r"about 238 GiB .* over memory_budget=") as e:
        train(p, "reinforce-loo:k=100000000", epochs=1, out_dir=tmp_path / "a")
    assert e.value.argument == "memory_budget" and not (tmp_path / "a").exists()
    with pytest.raises(TrainArgumentError, match="over memory_budget=1 KiB"):
        train(p, "reinforce-loo:k=1000", epochs=1, out_dir=tmp_path / "b", memory_budget="1KiB")
    assert not (tmp_path / "b").exists()
    train(p, "reinforce-loo:k=1000", epochs=1, out_dir=tmp_path / "c", exact_log=False,
          memory_budget="16MiB")  # fits: trains
    # the default (half the machine's memory) takes a full-batch digits step, estimated at 1.24 GiB
    # and really about 110 MB, which a 1 GiB default refused (attacker review)
    from sbn_bench.train import check_step_fits, train_memory_budget

    assert train_memory_budget("cpu") >= 2**30
    digits = problems.preset_problem("digits-mlp")
    check_step_fits(load_registry().create("psa"), digits, digits.num_data)
    with pytest.raises(TrainArgumentError, match="memory_budget"):
        check_step_fits(load_registry().create("psa"), digits, digits.num_data, memory_budget="1GiB")
    big = random_problem("2-30-30-1", 0, data_points=4)
    with pytest.raises(reference.ReferenceTooLarge, match="exact reference refused .* D=4"):
        train(big, "exact", epochs=1, batch_size=4, out_dir=tmp_path / "d")
    assert not (tmp_path / "d").exists()
    res = CliRunner().invoke(main, ["train", "--arch", "2-3-1", "--estimator",
                                    "reinforce-loo:k=100000000", "--epochs", "1",
                                    "--out", str(tmp_path / "e")])
    assert res.exit_code == 1 and "over --memory-budget=" in res.output, res.output
    res = CliRunner().invoke(main, ["train", "--arch", "2-3-1", "--estimator", "reinforce-loo:k=1000",
                                    "--epochs", "1", "--memory-budget", "1KiB",
                                    "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "Invalid value for '--memory-budget'" in res.output, res.output
    assert not (tmp_path / "e").exists()


def test_divergence_is_reported(small: Problem, tmp_path: Path) -> None:
    """An estimate with an infinite coordinate makes the parameters non-finite: refused at the end
    of that epoch, naming it, with the log so far written (no non-finite checkpoint)."""
    def surrogate(problem: Problem, params, generator) -> torch.Tensor:
        return params["weight_1"].sum((1, 2)) * math.inf

    est = Estimator("inf", surrogate, randomness="none")
    with pytest.raises(TrainingDiverged, match="diverged at epoch 1 .*weight_1") as e:
        train(small, est, batch_size=6, epochs=3, checkpoints=[1], out_dir=tmp_path)
    assert "lower the learning rate" in str(e.value)
    _, rows = _read_log(tmp_path / "train_log.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert not (tmp_path / "checkpoint_epoch1.npz").exists()


def test_parameters_beyond_float32_are_a_divergence(small: Problem, tmp_path: Path) -> None:
    """A learning rate of 1e300 took the objective from 0.76 to 2.3e298 (finite in float64) and
    exited 0 with checkpoints no float32 run can evaluate; a parameter beyond float32's range is
    now a divergence, while one just inside it trains on."""
    from sbn_bench.train import FLOAT32_MAX

    with pytest.raises(TrainingDiverged, match=r"diverged at epoch 1 .*: parameter \w+ reached "
                                               r".*beyond float32's range") as e:
        train(small, "reinforce", lr=1e300, batch_size=6, epochs=3, out_dir=tmp_path / "a")
    assert e.value.argument == "lr"
    assert not (tmp_path / "a" / "checkpoint_epoch3.npz").exists()

    def surrogate(scale: float):
        def f(problem: Problem, params, generator) -> torch.Tensor:
            return -params["weight_1"].sum((1, 2)) * scale  # every step adds `scale` to weight_1
        return f

    near = Estimator("near", surrogate(FLOAT32_MAX / 2), randomness="none")
    train(small, near, lr=1.0, momentum=0.0, batch_size=small.num_data, epochs=1,
          out_dir=tmp_path / "b")  # about FLOAT32_MAX / 2: trains on
    over = Estimator("over", surrogate(FLOAT32_MAX * 2), randomness="none")
    with pytest.raises(TrainingDiverged, match="weight_1 reached"):
        train(small, over, lr=1.0, momentum=0.0, batch_size=small.num_data, epochs=1,
              out_dir=tmp_path / "c")


def test_initial_parameters_beyond_float32_are_refused_before_any_work(small: Problem,
                                                                       tmp_path: Path) -> None:
    """A problem whose initial weights are beyond float32's range trained, then reported a
    divergence at epoch 1 blaming the learning rate; it is refused up front, naming the weight."""
    big = small.with_params({**small.params, "weight_1": small.params["weight_1"] * 1e300})
    with pytest.raises(TrainArgumentError, match=r"initial parameter weight_1 holds .*e\+29\d, "
                                                 r"beyond float32's range") as e:
        train(big, "st", epochs=1, out_dir=tmp_path / "o")
    assert e.value.argument == "problem" and not (tmp_path / "o").exists()
    # on the command line, a --problem file's content: exit 1, as for run (it was a usage error of
    # an option named 'problem')
    save_problem(big.with_params({**small.params, "weight_1": small.params["weight_1"] + 3.5e38}),
                 tmp_path / "big.npz")
    res = CliRunner().invoke(main, ["train", "--problem", str(tmp_path / "big.npz"), "--epochs", "1",
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and res.output.startswith("Error: ") and "Usage" not in res.output
    assert "beyond float32's range" in res.output and not (tmp_path / "o").exists()


def _misbehaving(kind: str) -> Estimator:
    base = load_registry().create("reinforce")

    def surrogate(problem: Problem, params, generator) -> torch.Tensor:
        if kind == "mutates-weights":
            problem.params["weight_1"].add_(1.0)  # the optimiser's parameters, written in place
        elif kind == "mutates-replicas":
            params["bias_1"].mul_(2.0)
        elif kind == "mutates-data":
            problem.x.zero_()
        elif kind == "raises":
            raise RuntimeError("boom")
        elif kind == "exits":
            raise SystemExit(3)
        return base.surrogate(problem, params, generator)

    return Estimator(kind, surrogate, randomness="discrete", description=kind)


@pytest.mark.parametrize("kind, words", [
    ("mutates-weights", "modified the problem it was given"),
    ("mutates-replicas", "in-place operation"),  # torch refuses it (a view of a leaf)
    ("mutates-data", "modified the problem it was given"),
    ("raises", "failed while estimating a training step's gradient: RuntimeError: boom"),
    ("exits", "failed while estimating a training step's gradient: SystemExit: 3"),
])
def test_an_estimator_that_fails_or_writes_into_the_problem_stops_the_training(
        small: Problem, tmp_path: Path, kind: str, words: str) -> None:
    """An estimator writing into the parameters trained on from values it wrote (+1 per step)
    and the training exited 0; one raising gave a raw traceback, and SystemExit ended the process
    with the plugin's status. Each is now EstimatorFailed, naming the estimator."""
    with pytest.raises(EstimatorFailed, match=words) as e:
        train(small, _misbehaving(kind), epochs=2, batch_size=6, out_dir=tmp_path / "o")
    assert e.value.argument == "estimator" and kind in str(e.value)
    assert not (tmp_path / "o" / "train_manifest.json").exists()


def test_an_estimator_replacing_entries_of_its_dicts_cannot_change_the_training(
        small: Problem, tmp_path: Path) -> None:
    """Replacing an entry of the dicts an estimator gets bumps no version counter of the old
    tensor: it wrote the live parameters (``problem.params["weight_1"] = w + 100`` ended in the
    checkpoint) or cut a replica from the optimiser (weight_1 never moved again). The estimator
    now gets copies of the dicts: a replaced entry of its problem is a modified problem (as
    ``run`` finds it), and a replaced replica changes nothing."""
    def replacing(kind: str) -> Estimator:
        base = load_registry().create("reinforce")

        def surrogate(problem: Problem, params, generator) -> torch.Tensor:
            out = base.surrogate(problem, params, generator)
            if kind == "problem":
                problem.params["weight_1"] = problem.params["weight_1"] + 100.0
            else:
                params["weight_1"] = params["weight_1"].detach().clone()
            return out

        return Estimator(f"replaces-{kind}", surrogate, randomness="discrete", description=kind)

    base = load_registry().create("reinforce")
    plain = Estimator("plain", base.surrogate, randomness="discrete", description="reinforce")
    want = train(small, plain, epochs=2, batch_size=6, seed=4, out_dir=tmp_path / "w").problem
    with pytest.raises(EstimatorFailed, match="'replaces-problem' modified the problem"):
        train(small, replacing("problem"), epochs=2, batch_size=6, seed=4, out_dir=tmp_path / "p")
    got = train(small, replacing("replica"), epochs=2, batch_size=6, seed=4,
                out_dir=tmp_path / "r").problem
    assert all(torch.equal(got.params[k], want.params[k]) for k in want.params)


def test_library_errors_in_a_step_keep_their_own_words(tmp_path: Path) -> None:
    """Training ``exact`` on a net too large to enumerate raised ReferenceTooLarge with its hint;
    wrapping every error of a step as the estimator's failure had hidden it."""
    from sbn_bench.reference import ReferenceTooLarge

    p = random_problem("2-40-1", 0, data_points=4)  # 2⁴⁰ paths: refused before any allocation
    with pytest.raises(ReferenceTooLarge, match="exact reference refused"):
        train(p, "exact", epochs=1, batch_size=4, out_dir=tmp_path / "o", exact_log=False)


def test_non_finite_hyperparameters_are_written_as_text(small: Problem, tmp_path: Path) -> None:
    """A plugin's float hyperparameter c=nan trained to the end, then the manifest's JSON writer
    raised (no manifest); it is written as the spec writes it."""
    plugin = tmp_path / "plug.py"
    plugin.write_text(
        "from sbn_bench.estimators.builtin.score_function import reinforce\n"
        "import dataclasses\n"
        "def good(*, c: float = 0.0):\n"
        "    return dataclasses.replace(reinforce(), name='good', hyperparams=(('c', c),))\n"
        "ESTIMATORS = {'good': good}\n", encoding="utf-8")
    res = train(small, "good:c=nan", epochs=1, batch_size=6, out_dir=tmp_path / "o",
                plugins=[str(plugin)])
    m = json.loads((tmp_path / "o" / "train_manifest.json").read_text(encoding="utf-8"))
    assert m["estimator"]["hyperparams"] == {"c": "nan"} and res.manifest == m
    r = _cli("--arch", "2-2-1", "--data-points", "12", "--epochs", "1", "--plugin", str(plugin),
             "--estimator", "good:c=inf", "--out", str(tmp_path / "cli"))
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "cli" / "train_manifest.json").read_text(encoding="utf-8"))
    assert m["estimator"]["hyperparams"] == {"c": "inf"}


@pytest.mark.parametrize("kwargs, argument", [(dict(plugins=5), "plugins"),
                                              (dict(plugins=b"plug.py"), "plugins"),
                                              (dict(progress=5), "progress")])
def test_wrong_types_are_refused_before_any_work(small: Problem, tmp_path: Path, kwargs: dict,
                                                 argument: str) -> None:
    """progress=5 raised TypeError after the first epoch, leaving files behind."""
    with pytest.raises(TrainArgumentError, match=f"argument {argument}=") as e:
        train(small, "st", epochs=1, out_dir=tmp_path / "o", **kwargs)
    assert e.value.argument == argument and not (tmp_path / "o").exists()


def test_a_failing_estimator_on_the_command_line_is_one_error_line(tmp_path: Path) -> None:
    plugin = tmp_path / "plug.py"
    plugin.write_text(
        "import sys\n"
        "from sbn_bench.estimators import Estimator\n"
        "def quitter():\n"
        "    def surrogate(problem, params, generator):\n"
        "        sys.exit(3)\n"
        "    return Estimator('quitter', surrogate, randomness='continuous', description='exits')\n"
        "ESTIMATORS = {'quitter': quitter}\n", encoding="utf-8")
    r = _cli("--arch", "2-2-1", "--data-points", "12", "--epochs", "1", "--plugin", str(plugin),
             "--estimator", "quitter", "--out", str(tmp_path / "t"))
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("Error: estimator 'quitter' failed while estimating a training "
                               "step's gradient: SystemExit: 3"), r.stderr
    assert "Traceback" not in r.output


def test_a_divergence_on_the_command_line_is_a_failure_not_a_refused_lr(tmp_path: Path) -> None:
    """The training ran and failed: exit status 1 with the library's message, as for a default
    learning rate; before, a typed --lr turned it into click's usage error (exit status 2)."""
    res = CliRunner().invoke(main, ["train", "--arch", "2-3-1", "--data-points", "20", "--lr",
                                    "1e308", "--epochs", "3", "--out", str(tmp_path / "t")])
    assert res.exit_code == 1, res.output
    assert "training diverged at epoch" in res.stderr and "Invalid value" not in res.stderr
    assert "Usage:" not in res.stderr


# --------------------------------------------------------------------------------------------
# command line


def _cli(*args: str):
    return CliRunner().invoke(main, ["train", *args])


@pytest.mark.parametrize("args, option, value", [
    (["--checkpoints", "0"], "--checkpoints", "0"),
    (["--epochs", "3", "--checkpoints", "1,4"], "--checkpoints", "4"),
    (["--checkpoints", "1,x"], "--checkpoints", "'x'"),
    (["--lr", "0"], "--lr", "0"),
    (["--lr", "-0.5"], "--lr", "-0.5"),
    (["--batch-size", "0"], "--batch-size", "0"),
    (["--batch-size", "101"], "--batch-size", "101"),
    (["--epochs", "0"], "--epochs", "0"),
    (["--momentum", "1.5"], "--momentum", "1.5"),
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum", "0.5"),
    (["--optimizer", "rmsprop"], "--optimizer", "rmsprop"),
    (["--train-seed", "-2"], "--train-seed", "-2"),
    (["--seed", "-3"], "--seed", "-3"),  # --seed also seeds training when --train-seed is absent
    (["--log-every", "0"], "--log-every", "0"),
])
def test_cli_refuses_bad_arguments(tmp_path: Path, args: list[str], option: str, value: str
                                   ) -> None:
    out = tmp_path / "out"
    r = _cli("--arch", "2-2-1", "--data-points", "100", "--epochs", "2", *args, "--out", str(out))
    assert r.exit_code == 2, r.output
    assert option in r.output and value in r.output, r.output
    assert not out.exists()


def test_cli_unknown_estimator_and_missing_problem(tmp_path: Path) -> None:
    r = _cli("--arch", "2-2-1", "--estimator", "psaa", "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "'psaa' is unknown" in r.output and "Traceback" not in r.output
    r = _cli("--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "--preset" in r.output


def test_cli_trains_and_writes_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = _cli("--arch", "2-3-1", "--data-points", "8", "--seed", "2", "--estimator",
             "concrete:tau=0.5", "--optimizer", "adam", "--lr", "0.01", "--batch-size", "3",
             "--epochs", "4", "--checkpoints", "2", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "concrete:tau=0.5" in r.output and "exact objective J" in r.output
    for e in (0, 2, 4):
        assert (out / f"checkpoint_epoch{e}.npz").is_file()
    man = json.loads((out / "train_manifest.json").read_text())
    assert man["config"]["optimizer"] == "adam" and man["config"]["momentum"] is None
    assert man["seeds"]["seed"] == 2 and man["steps"] == 4 * 3
    header, rows = _read_log(out / "train_log.csv")
    assert len(rows) == 5
    assert (out / "loss_curve.png").read_bytes()[:8] == PNG_MAGIC
    # a checkpoint is a problem file the other commands accept
    r = CliRunner().invoke(main, ["exact", "--problem", str(out / "checkpoint_epoch4.npz")])
    assert r.exit_code == 0, r.output
    printed = float(r.output.split("objective J = ")[1].split()[0])
    assert printed == pytest.approx(rows[-1]["exact_objective"], rel=1e-11), r.output
    r = _cli("--arch", "2-3-1", "--data-points", "8", "--epochs", "1", "--batch-size", "8",
             "--quiet", "--out", str(tmp_path / "quiet"))
    assert r.exit_code == 0 and r.output == ""


# --------------------------------------------------------------------------------------------
# speed (pytest-benchmark; a single plain run under the default --benchmark-disable)


def test_benchmark_paper_training_epochs(benchmark, paper: Problem, tmp_path: Path) -> None:
    """Two epochs (40 steps) of the paper's training; the manifest's seconds_per_step × 40 000
    estimates the 2000-epoch run."""
    res = benchmark(train, paper, "reinforce", epochs=2, out_dir=tmp_path, log_every=10**6)
    assert res.manifest["steps"] == 40


def test_training_with_an_adaptive_estimator_is_refused_before_any_work(tmp_path: Path) -> None:
    """``train`` with ``nvil`` trained untuned (REINFORCE) under nvil's name; it is refused naming
    the estimator and why, before any file is written."""
    from sbn_bench.train import TrainArgumentError, train

    p = problems.random_problem("2-3-1", 0, data_points=20)
    with pytest.raises(TrainArgumentError, match="'nvil:hidden=16' is adaptive") as e:
        train(p, "nvil", epochs=1, out_dir=tmp_path / "t")
    assert e.value.argument == "estimator" and not (tmp_path / "t").exists()
    res = CliRunner().invoke(main, ["train", "--arch", "2-3-1", "--estimator", "rebar", "--epochs",
                                    "1", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "Invalid value for '--estimator'" in res.output, res.output


@pytest.mark.parametrize(("text", "words"), [("1,1", "repeats an epoch"), ("1,", "an empty item"),
                                             ("1,,2", "an empty item"), ("x", "'x' is not an integer")])
def test_checkpoint_lists_are_refused_as_the_other_lists_are(text: str, words: str) -> None:
    """``--checkpoints 1,1`` and ``1,`` were accepted silently where --M and --seeds refuse them
    (attacker review); none given is the initial and last epoch only."""
    from sbn_bench.train import parse_checkpoints

    assert parse_checkpoints("") == [] and parse_checkpoints(" 1, 100 ") == [1, 100]
    with pytest.raises(TrainArgumentError, match=words):
        parse_checkpoints(text)


def test_one_plugin_path_is_that_file(small: Problem, tmp_path: Path) -> None:
    """plugins='file.py' is one file, as load_plugins reads it (it was read as one file per
    character, then refused): its estimator trains and the manifest records that one file."""
    plugin = tmp_path / "plug.py"
    plugin.write_text(
        "from sbn_bench.estimators.builtin.straight_through import st\n"
        "import dataclasses\n"
        "def mine():\n"
        "    return dataclasses.replace(st(), name='mine')\n"
        "ESTIMATORS = {'mine': mine}\n", encoding="utf-8")
    res = train(small, "mine", epochs=1, out_dir=tmp_path / "o", plugins=str(plugin))
    assert [r["path"] for r in res.manifest["plugins"]] == [str(plugin)]
    with pytest.raises(SbnBenchError, match="missing.py") as e:
        train(small, "st", epochs=1, out_dir=tmp_path / "m", plugins=str(tmp_path / "missing.py"))
    assert e.value.argument == "plugins" and not (tmp_path / "m").exists()

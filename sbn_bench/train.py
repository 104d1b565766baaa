"""Train a problem's network with a gradient estimator (``sbn-bench train``; SPEC §6 "Training").

Each optimisation step draws a minibatch of ``batch_size`` data points (the data are shuffled at the
start of every epoch; the last minibatch of an epoch is smaller when ``batch_size`` does not divide
``D``), takes **one** gradient sample of the estimator on the minibatch objective
``J_B(θ) = (1/|B|) Σ_{d∈B} E_Z ℓ(η(x^L(Z); x⁰_d), y_d)`` (SPEC §1: one independent noise draw per
data point), and applies one SGD (with momentum) or Adam step to float64 parameters. Any registered
estimator can train, ``exact`` included (the exact gradient of ``J_B``).

Files written to ``out_dir`` (all atomically: temp file + rename):

* ``checkpoint_epoch{E}.npz``: the problem with the parameters after epoch ``E``, in the public
  problem format (:func:`sbn_bench.problems.save_problem`). ``checkpoint_epoch0.npz`` (the initial
  parameters) and the final epoch are always written, besides the requested epochs.
* ``train_log.csv``: one row per epoch (:data:`LOG_COLUMNS`), row 0 being the initial parameters.
  ``train_loss`` is the mean sampled loss of the epoch, ``(1/D) Σ_d ℓ(η(x^L), y_d)`` with each data
  point's one noise draw taken at the parameters of its step (NaN at epoch 0), whatever the
  estimator: it is the SBN's loss, not a relaxation's. ``exact_objective`` is ``J(θ)`` on the full
  data by the exact reference, every ``log_every`` epochs and at every checkpoint (NaN elsewhere, and
  everywhere when the reference refuses the problem as too large). ``wall_s`` is the time since the
  start (row 0's: the set-up, with the first exact objective; later rows include it). The file is
  rewritten every few seconds during training, at checkpoints and at the end.
* ``loss_curve.png``: both losses against epochs, checkpoints marked.
* ``train_manifest.json``: configuration, seeds, estimator spec and version, problem fingerprint,
  package versions, final objective and timings.

Speed: a step does not go through :func:`sbn_bench.estimators.estimate` (which copies ``[S, *shape]``
replicas) nor build a validated :class:`~sbn_bench.problems.Problem`; it calls the estimator's
surrogate with ``S = 1`` *views* ``θ.unsqueeze(0)`` of the optimiser's leaf tensors (the contract's
``[1, *shape]`` replicas), on an unvalidated row subset of the already validated problem, so autograd
delivers the estimate straight onto the leaves. The estimate is the same as ``estimate(est, sub, 1,
generator)[·][0]`` for the same generator state.

Randomness: three independent streams derived from ``seed`` with :class:`numpy.random.SeedSequence`
(data order, estimator noise, and the extra draw that measures ``train_loss`` for estimators without
a path surrogate). A fixed seed gives identical checkpoints on the same machine and library versions.

References:
    Shekhovtsov, Yanush, Flach. "Path Sample-Analytic Gradient Estimators for Stochastic Binary
    Networks". NeurIPS 2020, §5 (training with REINFORCE, batch 10, SGD lr 0.03, momentum 0.9).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from sbn_bench import malloc, model, network
from sbn_bench.errors import EMPTY_FOLDER, SbnBenchError, is_out_of_memory, plain_int, short_repr
from sbn_bench.estimators import ContractError, Estimator, load_plugins, load_registry
from sbn_bench.estimators.registry import plugin_paths
from sbn_bench.fileio import WriteError, atomic_write_bytes, folder_lock
from sbn_bench.problems import Problem, save_problem
from sbn_bench.provenance import environment, file_record
from sbn_bench.reference import DEFAULT_MAX_BYTES, ReferenceTooLarge, check_size, objective
from sbn_bench.storage import CELLS, MANIFEST, STUDY_MANIFEST, TRAINING_MANIFEST
from sbn_bench.units import format_bytes

OPTIMIZERS = ("sgd", "adam")
MAX_EPOCHS = 10**6
"""Most epochs a training may ask for."""
DEFAULT_SGD_MOMENTUM = 0.9
LOG_COLUMNS = ["epoch", "step", "train_loss", "exact_objective", "wall_s"]
"""Columns of ``train_log.csv``: epoch (0 = initial parameters), optimiser steps so far, mean sampled
loss of the epoch, exact objective on the full data (or NaN), seconds since the start."""
MANIFEST_VERSION = 1
LOG_NAME = "train_log.csv"
CURVE_NAME = "loss_curve.png"
MANIFEST_NAME = TRAINING_MANIFEST
STUDY_NAME = STUDY_MANIFEST
"""A training study's manifest (:mod:`sbn_bench.train_study`): a folder holding one is not a
single training's."""
_FLUSH_SECONDS = 5.0

ProgressFn = Callable[[int, int, Mapping[str, float]], None]
"""``progress(epoch, epochs, row)``, called after every epoch with that epoch's log row."""


FLOAT32_MAX = float(torch.finfo(torch.float32).max)
"""A parameter beyond this is a diverged training (:meth:`_State.diverged`)."""


class TrainArgumentError(SbnBenchError, ValueError):
    """A training argument out of range; :attr:`argument` is its Python name (e.g. ``"lr"``)."""

    def __init__(self, argument: str, message: str, *, value: Any = SbnBenchError.UNSET,
                 expected: str | None = None) -> None:
        super().__init__(message, argument=argument, value=value, expected=expected)


def plugins_argument(plugins: object) -> tuple[str | os.PathLike[str], ...]:
    """``plugins`` as a tuple of plugin files, as :func:`~sbn_bench.estimators.load_plugins` reads
    it: one path (a string is one file, not its characters) or a list of paths.

    Raises:
        TrainArgumentError: naming ``plugins`` when it is neither.
    """
    try:
        return plugin_paths(plugins)
    except SbnBenchError:
        raise TrainArgumentError("plugins", f"argument plugins={short_repr(plugins, 60)} must be "
                                            "a plugin file's path or a list of them", value=plugins,
                                 expected="a path or a list of paths") from None


def check_out_argument(out: object, argument: str) -> None:
    """Refuse an output folder that is not a path, or is empty (pathlib reads ``''`` as ``.``:
    the files would land in the current folder unasked).

    Raises:
        TrainArgumentError: naming ``argument``.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise TrainArgumentError(argument, f"argument {argument}={out!r} must be a folder path "
                                           "(str or os.PathLike)")
    if os.fspath(out) == "":
        raise TrainArgumentError(argument, f"argument {argument}={EMPTY_FOLDER}")


def check_progress_argument(progress: object, call: str) -> None:
    """Refuse a ``progress`` that is neither None nor callable (it would raise after the first
    epoch or cell, with files written); ``call`` shows how it is called.

    Raises:
        TrainArgumentError: naming ``progress``.
    """
    if progress is not None and not callable(progress):
        raise TrainArgumentError("progress", f"argument progress={progress!r} must be a function "
                                             f"{call} or None")


def check_trainable(estimator: Estimator) -> None:
    """Refuse an adaptive estimator (``nvil``, ``rebar``, ``relax``): it tunes itself to fixed
    weights before it estimates (SPEC §3b), and training moves the weights at every step, so it
    would train untuned (``nvil`` as REINFORCE) under its own name.

    Raises:
        TrainArgumentError: naming the estimator.
    """
    if estimator.adapt is not None:
        raise TrainArgumentError("estimator", f"estimator {estimator.spec!r} is adaptive: it tunes "
                                              "itself to fixed weights before it estimates, and "
                                              "training moves them at every step, so it would "
                                              "train untuned under its name; training with "
                                              "adaptive estimators is not supported (measure them "
                                              "with sbn-bench run)")


class TrainingDiverged(SbnBenchError, ValueError):
    """A parameter became NaN or Inf, or grew beyond float32's range (:meth:`_State.diverged`;
    typically: learning rate too high). It names ``lr`` as
    the setting to change, but the training ran: on the command line it is a failure (exit status
    1), not a refused ``--lr`` (exit status 2), whatever the learning rate's origin."""

    usage = False


class EstimatorFailed(SbnBenchError, RuntimeError):
    """The estimator raised (anything, ``SystemExit`` included) while it estimated a step's
    gradient, or modified the problem or parameters it was given in place (the optimiser's
    parameters: the training would go on from values the estimator wrote). A failure of the
    estimator, not of an argument: exit status 1 on the command line; a training study records it
    as that cell's failure. ``argument`` is ``"estimator"``."""

    usage = False


def training_files(out_dir: str | os.PathLike[str]) -> list[Path]:
    """The files of a previous training in ``out_dir`` (checkpoints, log, manifest, loss curve),
    sorted; empty when there are none (or no such folder)."""
    d = Path(out_dir)
    if not d.is_dir():
        return []
    found = [p for p in d.glob("checkpoint_epoch*.npz")
             if p.name.removeprefix("checkpoint_epoch").removesuffix(".npz").isdigit()]
    found += [d / n for n in (LOG_NAME, MANIFEST_NAME, CURVE_NAME) if (d / n).exists()]
    return sorted(found)


def _check_out_dir(out_dir: str | os.PathLike[str], overwrite: bool) -> None:
    """Refuse an ``out_dir`` holding a previous training's outputs, or remove them (``overwrite``):
    stale checkpoints beside new ones would be mistaken for this run's. A training study's folder
    and an ``sbn-bench run`` folder are refused either way."""
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise TrainArgumentError("out_dir", f"argument out_dir={str(d)!r} exists and is not a "
                                            "folder; choose another output folder")
    if (d / STUDY_NAME).is_file():
        raise TrainArgumentError("out_dir", f"argument out_dir={str(d)!r} holds a training study "
                                            f"({STUDY_NAME}); choose another output folder")
    if (d / MANIFEST).is_file() or (d / CELLS).is_dir():
        raise TrainArgumentError("out_dir", f"argument out_dir={str(d)!r} holds an sbn-bench run "
                                            f"({MANIFEST}, {CELLS}/); choose another output folder")
    old = training_files(d)
    if not old:
        return
    if not overwrite:
        # the loss curve alone is not a training's mark (any figure may have that name)
        marks = [p.name for p in old if p.name != CURVE_NAME]
        if marks:
            shown = ", ".join(marks[:6]) + (f", … ({len(marks) - 6} more)" if len(marks) > 6 else "")
            raise TrainArgumentError(
                "out_dir", f"argument out_dir={str(d)!r} already holds the outputs of a training "
                           f"({shown}); choose another output folder (--out), or overwrite=True "
                           "(--overwrite) to remove them first")
        return
    for p in old:
        p.unlink(missing_ok=True)


def checkpoint_path(out_dir: str | os.PathLike[str], epoch: int) -> Path:
    """``out_dir/checkpoint_epoch{epoch}.npz``."""
    return Path(out_dir) / f"checkpoint_epoch{epoch}.npz"


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        out_dir: the output directory.
        problem: the problem with the final (trained) parameters.
        checkpoints: epoch → checkpoint file, epoch 0 (initial) and the final epoch included.
        log_path, curve_path, manifest_path: the training log, loss curve and manifest.
        history: the log rows (:data:`LOG_COLUMNS`), epoch 0 first.
        initial_objective, final_objective: exact ``J`` before and after training (NaN when the
            reference refuses the problem).
        wall_s: total seconds (steps, exact objectives, files); train_s: seconds in steps only.
        exact_note: why the exact objective is missing, or None.
    """

    out_dir: Path
    problem: Problem
    checkpoints: dict[int, Path]
    log_path: Path
    curve_path: Path
    manifest_path: Path
    history: list[dict[str, float]]
    initial_objective: float
    final_objective: float
    wall_s: float
    train_s: float
    exact_note: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)


# --------------------------------------------------------------------------------------------
# validation and helpers


def check_arguments(
    problem: Problem,
    *,
    optimizer: str,
    lr: float,
    momentum: float | None,
    batch_size: int,
    epochs: int,
    checkpoints: Iterable[int],
    seed: int,
    log_every: int,
    max_exact_bytes: int,
) -> list[int]:
    """Validate :func:`train`'s arguments before any work; return the sorted distinct checkpoints.

    Raises:
        TrainArgumentError: naming the argument, its value and what was expected.
    """
    def bad(arg: str, msg: str, value: Any, expected: str) -> TrainArgumentError:
        return TrainArgumentError(arg, f"argument {arg}={msg}", value=value, expected=expected)

    if not isinstance(problem, Problem):
        raise bad("problem", f"{type(problem).__name__} object, expected a Problem (random_problem, "
                             "preset_problem, load_problem)", problem, "a Problem")
    for k in problem.param_names:  # what _State.diverged would stop at after the first epoch
        big = _largest(problem.params[k])
        if not big <= FLOAT32_MAX:
            raise TrainArgumentError(
                "problem", f"argument problem ({problem.name!r}): its initial parameter {k} holds "
                           f"{big:.3g}, beyond float32's range (±{FLOAT32_MAX:.3g}); its checkpoints "
                           "could not be measured in float32, the default of sbn-bench run: give "
                           "initial weights within that range")
    if optimizer not in OPTIMIZERS:
        raise bad("optimizer", f"{optimizer!r} is unknown; expected one of {', '.join(OPTIMIZERS)}",
                  optimizer, f"one of {', '.join(OPTIMIZERS)}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise bad("lr", f"{lr!r} must be a finite number > 0", lr, "a finite number > 0")
    if momentum is not None:
        if optimizer != "sgd":
            raise bad("momentum", f"{momentum!r} applies to optimizer 'sgd' only (Adam uses its "
                                  "default betas (0.9, 0.999))", momentum, "None with Adam")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise bad("momentum", f"{momentum!r} must be in [0, 1)", momentum, "a number in [0, 1)")
    for arg, v in (("batch_size", batch_size), ("epochs", epochs), ("log_every", log_every),
                   ("max_exact_bytes", max_exact_bytes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad(arg, f"{v!r} must be an integer ≥ 1", v, "an integer ≥ 1")
    if epochs > MAX_EPOCHS:
        raise bad("epochs", f"{epochs!r} must be at most {MAX_EPOCHS:,} (a training that long would "
                            "not finish)", epochs, f"at most {MAX_EPOCHS:,}")
    if batch_size > problem.num_data:
        raise bad("batch_size", f"{batch_size} exceeds the {problem.num_data} data points of "
                                f"problem {problem.name!r}; use at most {problem.num_data} "
                                "(= full-batch training)", batch_size,
                  f"at most the {problem.num_data} data points")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise bad("seed", f"{seed!r} must be an integer ≥ 0", seed, "an integer ≥ 0")
    if isinstance(checkpoints, (str, bytes)):
        raise bad("checkpoints", f"{checkpoints!r} is a string; expected a sequence of epochs such "
                                 "as [1, 100] (the command line's text: parse_checkpoints)",
                  checkpoints, "a sequence of epochs")
    try:
        given = list(checkpoints)
    except TypeError:
        raise bad("checkpoints", f"{checkpoints!r} is not a sequence of epochs such as [1, 100]",
                  checkpoints, "a sequence of epochs") from None
    cps = []
    for c in given:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 1 <= c <= epochs:
            raise bad("checkpoints", f"{given!r}: epoch {c!r} is not within 1..{epochs} "
                                     f"(epochs={epochs})", given, f"epochs within 1..{epochs}")
        cps.append(int(c))
    return sorted(set(cps))


def parse_checkpoints(text: str) -> list[int]:
    """``"1,100,2000"`` → ``[1, 100, 2000]`` (the CLI spelling).

    Raises:
        TrainArgumentError: an item that is not an integer.
    """
    out: list[int] = []
    items = [s.strip() for s in text.split(",")]
    if items == [""]:  # none given: the initial and the last epoch only
        return out
    for item in items:
        try:
            out.append(int(item))
        except ValueError:
            what = "an empty item" if not item else f"{item!r} is not an integer epoch"
            raise TrainArgumentError("checkpoints", f"argument checkpoints={text!r}: {what} "
                                                    "(expected e.g. '1,100,2000')") from None
    if len(set(out)) != len(out):  # as --M and --seeds refuse a repeated value
        raise TrainArgumentError("checkpoints", f"argument checkpoints={text!r} repeats an epoch "
                                                "(expected distinct epochs, e.g. '1,100,2000')")
    return out


def _largest(v: Tensor) -> float:
    """The largest magnitude in ``v`` (0 when it is empty), to hold against float32's range."""
    return float(v.detach().abs().max()) if v.numel() else 0.0


def _stream_seeds(seed: int) -> dict[str, int]:
    """Independent 63-bit seeds for the data order, the estimator and the train-loss draws."""
    children = np.random.SeedSequence(seed).spawn(3)
    names = ("shuffle", "estimator", "monitor")
    return {n: int(c.generate_state(1, np.uint64)[0] >> np.uint64(1)) for n, c in zip(names, children)}


def _rows(problem: Problem, idx: Tensor, params: dict[str, Tensor]) -> Problem:
    """The minibatch problem: rows ``idx`` of ``x``/``y`` with ``params``, without re-validation
    (:meth:`Problem.with_rows`)."""
    return problem.with_rows(problem.x[idx], problem.y[idx], dict(params))  # (a copy: an
    # estimator replacing an entry of its problem's params must not replace the live values)


def _atomic_write(path: Path, data: bytes) -> None:
    """:func:`sbn_bench.fileio.atomic_write_bytes` with a hint for training: a failed write raises
    :class:`~sbn_bench.fileio.WriteError` naming ``path``, earlier files intact."""
    atomic_write_bytes(path, data, "free space or fix the folder's permissions, then train again")


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else repr(float(v))


def write_log(path: Path, history: Sequence[Mapping[str, float]]) -> None:
    """Write the training log CSV (:data:`LOG_COLUMNS`) atomically; NaN is written as ``nan``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LOG_COLUMNS)
    for row in history:
        w.writerow([int(row["epoch"]), int(row["step"]), _fmt(row["train_loss"]),
                    _fmt(row["exact_objective"]), f"{row['wall_s']:.4f}"])
    _atomic_write(path, buf.getvalue().encode())


def _versions() -> dict[str, Any]:
    """Package versions, platform, torch threads and commit (:mod:`sbn_bench.provenance`)."""
    env = environment()
    return {"sbn_bench": env["packages"]["sbn_bench"], "python": env["python"],
            "torch": env["packages"]["torch"], "numpy": env["packages"]["numpy"],
            "platform": env["platform"], "machine": env["machine"], "cpu": env["cpu"],
            "cpu_capability": env["cpu_capability"],
            "torch_threads": torch.get_num_threads(), "malloc": malloc.policy(),
            "stream": model.STREAM_VERSION, "commit": env["git_commit"]}


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


# --------------------------------------------------------------------------------------------
# the figure


def plot_loss_curve(history: Sequence[Mapping[str, float]], path: Path, *, title: str,
                    checkpoints: Sequence[int] = (), loss_name: str = "logistic") -> Path:
    """Loss against epochs: the epoch's mean sampled loss and the exact objective ``J``, with the
    checkpoint epochs marked. Written atomically as a PNG (matplotlib's Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ep = np.array([r["epoch"] for r in history], dtype=float)
    tl = np.array([r["train_loss"] for r in history], dtype=float)
    ex = np.array([r["exact_objective"] for r in history], dtype=float)
    fig = Figure(figsize=(8, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    m = np.isfinite(tl)
    if m.any():
        ax.plot(ep[m], tl[m], color="tab:blue", lw=0.8, alpha=0.55,
                label="train loss (mean sampled minibatch loss over the epoch)")
    m = np.isfinite(ex)
    if m.any():
        ax.plot(ep[m], ex[m], color="tab:red", lw=1.6, marker="o" if m.sum() <= 60 else None,
                ms=3, label="exact objective J (full data)")
    for i, c in enumerate(checkpoints):
        ax.axvline(c, color="0.4", ls=":", lw=1, label="checkpoints (epoch)" if i == 0 else None)
        ax.annotate(str(c), (c, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                    textcoords="offset points", fontsize=7, color="0.3")
    if len(ep) and ep.max() >= 100:
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(0, ep.max() * 1.25)  # room for the last checkpoint's label
    ax.set_xlabel("epoch" + (" (linear up to 10, then logarithmic)" if ax.get_xscale() == "symlog"
                             else ""))
    ax.set_ylabel(f"{loss_name} loss per data point")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _atomic_write(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------------------------
# training


def _make_optimizer(name: str, leaves: list[Tensor], lr: float, momentum: float | None
                    ) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(leaves, lr=lr,
                               momentum=DEFAULT_SGD_MOMENTUM if momentum is None else momentum)
    return torch.optim.Adam(leaves, lr=lr)


def sample_network_losses(problem: Problem, params: Mapping[str, Tensor], generator: torch.Generator
                          ) -> Tensor:
    """``[D]`` sampled losses of a network problem (:mod:`sbn_bench.network`: body, dense or conv2d
    stochastic layers, head), one noise draw per data point, with shared (not replicated)
    parameters; for the binary VAE with the analytic KL, plus ``KL(q(z|x_d) ‖ p(z))`` (the sampled
    negative ELBO; SPEC §7). No gradient."""
    net, noise = problem.net, problem.noise_dist
    with torch.no_grad():
        h = network.stochastic_input(net, params, problem.x)
        for k in range(1, net.n_layers + 1):
            a = network.preactivation(net, params, k, h)
            h = model.bernoulli(noise.cdf(a), generator)
        losses = problem.loss_values(network.output(net, params, h))
        if problem.loss == "vae" and problem.kl == "analytic":
            losses = losses + network.kl_per_point(net, params, problem.x, noise)
    return losses


def _write_counters(sub: Problem, leaves: Mapping[str, Tensor]) -> list[int]:
    """The version counters of a step's data and of the optimiser's parameters (their views, the
    replicas and ``sub.params``, share them): an in-place write anywhere in them bumps one. Reading
    them costs nothing, unlike the fingerprint ``run`` compares (SPEC: an estimator must not modify
    what it is given)."""
    return [sub.x._version, sub.y._version, *(v._version for v in leaves.values()),
            *(v._version for v in sub.params.values())]


def network_surrogate(estimator: Estimator, sub: Problem, views: Mapping[str, Tensor],
                      g_est: torch.Generator) -> Tensor:
    """The estimator's ``[1]`` surrogate on a network problem, with the binary VAE's analytic KL
    averaged over the data points added as :func:`sbn_bench.estimators.estimate` adds it (SPEC
    §7: every estimator gets the exact KL and estimates only the reconstruction term)."""
    surr = estimator.surrogate(sub, dict(views), g_est)
    if sub.loss == "vae" and sub.kl == "analytic" and isinstance(surr, Tensor):
        kl = network.kl_per_point(sub.net, dict(views), sub.x, sub.noise_dist).mean(-1)  # [1]
        surr = surr + kl if surr.shape == kl.shape else surr
    return surr


def _step_gradient(estimator: Estimator, sub: Problem, leaves: Mapping[str, Tensor],
                   views: Mapping[str, Tensor], g_est: torch.Generator, g_mon: torch.Generator,
                   monitor: bool = True) -> tuple[list[Tensor], Tensor | None]:
    """One gradient sample of the minibatch objective and the sampled losses of that step.

    Args:
        sub: the minibatch problem (``x [B, n0]``), its ``params`` the current values.
        leaves: the optimiser's parameters (float64 leaves with ``requires_grad``).
        views: ``leaf.unsqueeze(0)`` of every leaf: the contract's ``[1, *shape]`` replicas.
        g_est: the estimator's generator. g_mon: the generator of the extra forward draw that
            measures the loss for estimators without a path surrogate (and on networks beyond the
            plain fully-connected ones, for every estimator).
        monitor: measure the losses at all (False: None, and no extra draw).

    Returns:
        ``(grads, losses)``: a gradient shaped like each leaf (same order; zeros where the
        surrogate does not depend on it) and ``[B]`` sampled losses ``ℓ(η(x^L), y_d)`` (for the
        VAE, plus the KL: the sampled negative ELBO). On a plain network a path estimator's losses
        come from the very draw its gradient uses; its gradient equals
        ``estimate(estimator, sub, 1, g_est)[name][0]`` for the same generator state (on any
        network).
    """
    plain = sub.net.is_plain
    path_fn = estimator.path_surrogate if plain else None
    states = None
    witness = _write_counters(sub, leaves)
    try:
        with torch.enable_grad():
            if not plain:
                surr = network_surrogate(estimator, sub, views, g_est)
            elif path_fn is not None:  # (copies of the dict: see _rows)
                states, _ = model.sample_states(views, sub.x, sub.noise_dist, 1, g_est)
                surr = path_fn(sub, dict(views), states)
            else:
                surr = estimator.surrogate(sub, dict(views), g_est)
            if not isinstance(surr, Tensor) or surr.shape != (1,):
                shape = tuple(surr.shape) if isinstance(surr, Tensor) else type(surr).__name__
                raise ContractError(f"estimator {estimator.spec!r} returned a surrogate of shape "
                                    f"{shape}, expected [S] = (1,)")
            raw = (torch.autograd.grad(surr.sum(), list(leaves.values()), allow_unused=True)
                   if surr.requires_grad else (None,) * len(leaves))
    except (SbnBenchError, MemoryError, KeyboardInterrupt):  # said in their own words (Ctrl-C
        raise                                              # stops the training, as anywhere)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a plugin may raise anything
        if isinstance(e, RuntimeError) and is_out_of_memory(e):
            raise  # the machine's limit, not the estimator's fault (the command line's hint)
        raise EstimatorFailed(f"estimator {estimator.spec!r} failed while estimating a training "
                              f"step's gradient: {type(e).__name__}: {e}",
                              argument="estimator", value=estimator.spec) from e
    if _write_counters(sub, leaves) != witness:
        raise EstimatorFailed(f"estimator {estimator.spec!r} modified the problem it was given (its "
                              "data or parameters) in place; the training would go on from values "
                              "it wrote, so it was stopped", argument="estimator",
                              value=estimator.spec)
    grads = [torch.zeros_like(leaf) if g is None else g.detach()
             for leaf, g in zip(leaves.values(), raw)]
    if not monitor:
        return grads, None
    if not plain:
        return grads, sample_network_losses(sub, sub.params, g_mon)
    if states is None:
        states, _ = model.sample_states(sub.params, sub.x, sub.noise_dist, 1, g_mon)
    with torch.no_grad():
        losses = sub.loss_values(model.output(sub.params, states[-1]))[0]  # [B]
    return grads, losses


def train(
    problem: Problem,
    estimator: Estimator | str,
    *,
    optimizer: Literal["sgd", "adam"] = "sgd",
    lr: float = 0.03,
    momentum: float | None = None,
    batch_size: int = 10,
    epochs: int = 2000,
    checkpoints: Iterable[int] = (),
    seed: int = 0,
    out_dir: str | os.PathLike[str],
    log_every: int = 1,
    exact_log: bool = True,
    max_exact_bytes: int = DEFAULT_MAX_BYTES,
    progress: ProgressFn | None = None,
    num_threads: int | None = 1,
    overwrite: bool = False,
    plugins: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = (),
    memory_budget: int | str | None = None,
) -> TrainResult:
    """Train ``problem``'s network with one sample of ``estimator`` per minibatch step.

    The defaults are the paper's settings (SPEC §6: batch 10, SGD lr 0.03, momentum 0.9, 2000
    epochs); the paper's checkpoints are ``checkpoints=(1, 100, 2000)``.

    Args:
        problem: the problem; its parameters are the initial ones (cast to float64).
        estimator: an :class:`Estimator` or a spec such as ``"reinforce"`` or ``"concrete:tau=0.1"``
            (built-ins and installed entry points; build plugin estimators with
            :func:`~sbn_bench.estimators.load_registry` and pass the object).
        optimizer: ``"sgd"`` (with momentum) or ``"adam"`` (default betas).
        lr: learning rate, > 0.
        momentum: SGD momentum in [0, 1); None means 0.9 (the paper's). Must be None for Adam.
        batch_size: data points per step, 1..D (the last minibatch of an epoch may be smaller).
        epochs: passes over the data, ≥ 1; one epoch is ``ceil(D / batch_size)`` steps.
        checkpoints: epochs (each in 1..epochs) after which the parameters are saved; epoch 0 (the
            initial parameters) and the final epoch are always saved as well.
        seed: seeds the data order and the estimator's noise (see the module docstring).
        out_dir: directory for the checkpoints, log, figure and manifest (created if needed).
        log_every: compute the exact objective every this many epochs (and at every checkpoint).
            The paper net's exact objective costs about 0.5 ms, so 1 adds ~1 s to 2000 epochs.
        exact_log: compute the exact objective at all (False: the column is NaN).
        max_exact_bytes: memory limit of the exact reference; a larger problem trains anyway, with
            a NaN objective column and a note in the manifest.
        progress: called as ``progress(epoch, epochs, row)`` after every epoch.
        num_threads: torch intra-op threads while training (the previous setting is restored
            afterwards); None leaves it alone. A step's tensors are tiny (``[1, batch, n_k]``), so
            threads only add synchronisation: on a 2-core machine shared with other processes, 2
            threads made a paper-net step ~8-25x slower than 1 thread (measured).
        overwrite: when ``out_dir`` already holds a training's outputs (``checkpoint_epoch*.npz``,
            ``train_log.csv``, ``train_manifest.json``), remove them (and ``loss_curve.png``) before
            training; when False (default) such a folder is refused before any work.
        plugins: plugin files (``--plugin``; one path or a list): a spec ``estimator`` may name
            their estimators, and ``train_manifest.json`` records each file's path and SHA-256 (as
            a run's manifest does).
        memory_budget: bytes (or a size such as ``"2GiB"``) one step's gradient sample may take, by
            the runner's estimate (:func:`sbn_bench.runner.memory.sample_bytes` for a minibatch,
            an upper bound); None: :func:`train_memory_budget` (half the machine's memory on the
            CPU). A step over it is refused before any file is written, and so is
            ``estimator="exact"`` on a minibatch too large for the exact reference.

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainArgumentError: a bad argument, a step that does not fit ``memory_budget``, or
        ``out_dir`` holding a previous training's outputs without ``overwrite``, before any work.
        UnsupportedProblem: the estimator does
        not support the problem's noise or loss. TrainingDiverged: the parameters became non-finite
        (the log up to that epoch is written).
    """
    # NumPy integers are integers (as estimate takes them); the manifest's JSON needs Python's
    batch_size, epochs, seed, log_every, max_exact_bytes, num_threads = map(
        plain_int, (batch_size, epochs, seed, log_every, max_exact_bytes, num_threads))
    plugins = plugins_argument(plugins)
    check_out_argument(out_dir, "out_dir")
    check_progress_argument(progress, "progress(epoch, epochs, row)")
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        raise TrainArgumentError("num_threads", f"argument num_threads={num_threads!r} must be an "
                                                "integer ≥ 1 or None", value=num_threads,
                                 expected="an integer ≥ 1 or None")
    malloc.keep_freed_memory()
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train(problem, estimator, optimizer=optimizer, lr=lr, momentum=momentum,
                      batch_size=batch_size, epochs=epochs, checkpoints=checkpoints, seed=seed,
                      out_dir=out_dir, log_every=log_every, exact_log=exact_log,
                      max_exact_bytes=max_exact_bytes, progress=progress, overwrite=overwrite,
                      plugins=plugins, memory_budget=memory_budget)
    finally:
        torch.set_num_threads(previous_threads)


def train_memory_budget(device: torch.device | str) -> int:
    """``train``'s default ``memory_budget``: on the CPU half the machine's physical memory (at least
    1 GiB), on a GPU :func:`sbn_bench.config.default_memory_budget`'s. The runner's per-sample
    estimate is an upper bound several times the real footprint (8-10x for a full-batch digits
    step), so the run's 1 GiB chunk budget would refuse full-batch trainings that fit; the check is
    there to refuse what cannot fit at all before the kernel's OOM killer does."""
    from sbn_bench.config import default_memory_budget

    if torch.device(device).type != "cpu":
        return default_memory_budget(device)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not a POSIX system: the run's default
        return default_memory_budget(device)
    return max(2**30, total // 2)


def check_step_fits(estimator: Estimator, problem: Problem, batch_size: int,
                    memory_budget: int | str | None = None) -> None:
    """Refuse, before any work, a training step that cannot fit: one gradient sample on a minibatch
    of ``batch_size`` data points over ``memory_budget`` (the runner's estimate,
    :func:`~sbn_bench.runner.memory.sample_bytes`; None: :func:`train_memory_budget`), or the
    ``exact`` estimator on a minibatch too large for the exact reference.

    Raises:
        TrainArgumentError: naming ``memory_budget``, the need and the budget.
        ReferenceTooLarge: ``exact`` on a minibatch beyond the exact reference.
    """
    from sbn_bench.config import parse_size
    from sbn_bench.runner.memory import sample_bytes

    try:
        budget = train_memory_budget(problem.x.device) if memory_budget is None else \
            parse_size(memory_budget, "memory_budget")
    except SbnBenchError as e:
        raise TrainArgumentError("memory_budget", str(e)) from None
    rows = min(batch_size, problem.num_data)
    if estimator.name == "exact":  # ReferenceTooLarge, in its own words, before any file
        check_size(problem.with_rows(problem.x[:rows], problem.y[:rows]))
        return
    need = sample_bytes(estimator, problem, rows, 8)  # training runs in float64
    if need > budget:
        raise TrainArgumentError(
            "memory_budget", f"refused before any work: one step's gradient sample of "
            f"{estimator.spec} on {problem.name!r} ({problem.arch}, a minibatch of {rows}, float64) "
            f"needs about {format_bytes(need)}, over memory_budget={format_bytes(budget)} "
            f"(estimated; raise memory_budget to at least {format_bytes(need)}, or lower "
            "batch_size)")


class _ExactObjective:
    """``J(θ)`` of the live parameters on the full data by the exact reference (NaN when ``note``
    says why not), with the time it took in total."""

    def __init__(self, problem: Problem, live: Mapping[str, Tensor], max_bytes: int,
                 exact_log: bool) -> None:
        self.problem, self.live, self.max_bytes = problem, live, max_bytes
        self.note: str | None = None if exact_log else \
            "exact objective not requested (exact_log=False)"
        if exact_log:
            try:
                check_size(problem, max_bytes)
            except ReferenceTooLarge as e:
                self.note = str(e)
        self.seconds = 0.0

    def __call__(self) -> float:
        if self.note is not None:
            return math.nan
        t0 = time.perf_counter()
        with torch.no_grad():
            J = float(objective(self.problem, self.live, self.max_bytes))
        self.seconds += time.perf_counter() - t0
        return J


@dataclass
class _State:
    """The optimiser's parameters: ``leaves`` (float64, requiring grad), ``live`` (their current
    values, detached views) and ``views`` (the surrogate's ``[1, *shape]`` replicas)."""

    leaves: dict[str, Tensor]
    live: dict[str, Tensor]
    views: dict[str, Tensor]

    @classmethod
    def of(cls, problem: Problem) -> _State:
        leaves = {k: problem.params[k].detach().clone().requires_grad_(True)
                  for k in problem.param_names}
        return cls(leaves, {k: v.detach() for k, v in leaves.items()},
                   {k: v.unsqueeze(0) for k, v in leaves.items()})

    def diverged(self) -> tuple[str, str, str] | None:
        """The first parameter that became NaN or Inf, or grew beyond float32's range (a network
        that no float32 run, the default, can evaluate: the training has left every useful
        region): its name, what happened to it and what to do; None while all are usable."""
        for k, v in self.live.items():
            if not torch.isfinite(v).all():
                return (k, "became NaN or Inf", "lower the learning rate, or check the estimator "
                        "(one non-finite gradient sample makes the parameters NaN at once)")
            big = _largest(v)
            if big > FLOAT32_MAX:
                return (k, f"reached {big:.3g}, beyond float32's range (±{FLOAT32_MAX:.3g})",
                        "lower the learning rate")
        return None


def _epoch(problem: Problem, estimator: Estimator, state: _State, opt: torch.optim.Optimizer,
           batch_size: int, gens: Mapping[str, torch.Generator]) -> tuple[float, int]:
    """One pass over the shuffled data, one optimiser step per minibatch: ``(sum of the sampled
    losses, steps)``."""
    D, device = problem.num_data, problem.x.device
    perm = torch.randperm(D, generator=gens["shuffle"]).to(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    steps = 0
    for start in range(0, D, batch_size):
        sub = _rows(problem, perm[start:start + batch_size], state.live)
        grads, losses = _step_gradient(estimator, sub, state.leaves, state.views,
                                       gens["estimator"], gens["monitor"])
        for leaf, gr in zip(state.leaves.values(), grads):
            leaf.grad = gr
        assert losses is not None
        loss_sum += losses.sum()
        opt.step()
        steps += 1
    return float(loss_sum), steps


def _train(problem: Problem, estimator: Estimator | str, *, optimizer: str, lr: float,
           momentum: float | None, batch_size: int, epochs: int, checkpoints: Iterable[int],
           seed: int, out_dir: str | os.PathLike[str], log_every: int, exact_log: bool,
           max_exact_bytes: int, progress: ProgressFn | None, overwrite: bool = False,
           plugins: Sequence[str | os.PathLike[str]] = (),
           memory_budget: int | str | None = None) -> TrainResult:
    t_start = time.perf_counter()
    cps = check_arguments(problem, optimizer=optimizer, lr=lr, momentum=momentum,
                          batch_size=batch_size, epochs=epochs, checkpoints=checkpoints, seed=seed,
                          log_every=log_every, max_exact_bytes=max_exact_bytes)
    plugin_records = [file_record(p) for p in plugins]  # what was loaded, before any training
    if isinstance(estimator, str):
        reg = load_plugins(plugins, [estimator.split(":")[0].strip()])[0] if plugins else load_registry()
        estimator = reg.create(estimator)
    if not isinstance(estimator, Estimator):
        raise TrainArgumentError("estimator", f"argument estimator={type(estimator).__name__} object, "
                                              "expected a spec such as 'psa' or an Estimator")
    check_trainable(estimator)
    problem = problem.to(dtype=torch.float64)
    estimator.check_supports(problem)
    check_step_fits(estimator, problem, batch_size, memory_budget)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        _check_out_dir(out, overwrite)  # refused, in its words, before a lock is tried

    def busy() -> TrainArgumentError:
        return TrainArgumentError("out_dir", f"argument out_dir={str(out)!r} is in use by another "
                                             "sbn-bench process (a training, study or run holds "
                                             "the folder's lock); wait for it "
                                             "to finish, or choose another output folder")

    def cannot(e: OSError) -> WriteError:
        return WriteError(out, e, "choose another output folder: out_dir=… / --out")

    with folder_lock(out, busy, cannot):  # held until the training ends, however it ends
        # checked under the lock (a folder in use is refused as such first): the last check; it
        # removes old files when overwriting; a refusal leaves no lock file (folder_lock)
        _check_out_dir(out_dir, overwrite)
        save_epochs = sorted({0, *cps, epochs})
        state = _State.of(problem)
        exact_J = _ExactObjective(problem, state.live, max_exact_bytes, exact_log)
        opt = _make_optimizer(optimizer, list(state.leaves.values()), lr, momentum)
        seeds = _stream_seeds(seed)
        gens = {"shuffle": torch.Generator().manual_seed(seeds["shuffle"]),
                **{k: torch.Generator(device=problem.x.device).manual_seed(seeds[k])
                   for k in ("estimator", "monitor")}}

        def save(epoch: int) -> Path:
            return save_problem(problem.with_params(state.live, name=f"{problem.name}-epoch{epoch}"),
                                checkpoint_path(out, epoch))

        log_path = out / LOG_NAME
        written = {0: save(0)}
        history: list[dict[str, float]] = [{"epoch": 0, "step": 0, "train_loss": math.nan,
                                            "exact_objective": exact_J(),
                                            "wall_s": time.perf_counter() - t_start}]  # the set-up
        write_log(log_path, history)
        last_flush = time.perf_counter()
        t_train = 0.0
        step = 0
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            loss_sum, steps = _epoch(problem, estimator, state, opt, batch_size, gens)
            step += steps
            t_train += time.perf_counter() - t0
            bad = state.diverged()
            want_exact = epoch % log_every == 0 or epoch in save_epochs
            row = {"epoch": epoch, "step": step, "train_loss": loss_sum / problem.num_data,
                   "exact_objective": exact_J() if want_exact and not bad else math.nan,
                   "wall_s": time.perf_counter() - t_start}
            history.append(row)
            if bad:
                write_log(log_path, history)
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch} (step {step}): parameter {bad[0]} {bad[1]}, "
                    f"with estimator {estimator.spec!r}, optimizer {optimizer}, lr={lr}: {bad[2]} "
                    f"(log so far in {str(log_path)!r})", argument="lr",
                    value=lr, expected="a smaller learning rate, or an estimator with finite gradients")
            if epoch in save_epochs:
                written[epoch] = save(epoch)
            if epoch in save_epochs or time.perf_counter() - last_flush > _FLUSH_SECONDS:
                write_log(log_path, history)
                last_flush = time.perf_counter()
            if progress is not None:
                progress(epoch, epochs, row)

        write_log(log_path, history)
        mom = (DEFAULT_SGD_MOMENTUM if momentum is None else momentum) if optimizer == "sgd" else None
        title = (f"{problem.name} ({problem.arch}, D={problem.num_data}): {estimator.spec}, {optimizer} "
                 f"lr={lr:g}" + (f" momentum={mom:g}" if mom is not None else "")
                 + f", batch {batch_size}")
        plot_loss_curve(history, out / CURVE_NAME, title=title,
                        checkpoints=[c for c in save_epochs if c > 0], loss_name=problem.loss)
        wall = time.perf_counter() - t_start
        config = {"optimizer": optimizer, "lr": lr, "momentum": mom, "batch_size": batch_size,
                  "epochs": epochs, "checkpoints": cps, "seed": seed, "log_every": log_every,
                  "exact_log": exact_log, "max_exact_bytes": max_exact_bytes}
        timing = {"wall_s": wall, "train_s": t_train, "exact_objective_s": exact_J.seconds,
                  "seconds_per_step": t_train / max(step, 1)}
        manifest = _train_manifest(problem, estimator, config, {"seed": seed, **seeds}, history,
                                   step, exact_J.note, timing, written)
        manifest["plugins"] = plugin_records
        _atomic_write(out / MANIFEST_NAME,
                      (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode())
        final = problem.with_params(state.live, name=f"{problem.name}-epoch{epochs}")
        return TrainResult(out_dir=out, problem=final, checkpoints=written, log_path=log_path,
                           curve_path=out / CURVE_NAME, manifest_path=out / MANIFEST_NAME,
                           history=history, initial_objective=history[0]["exact_objective"],
                           final_objective=history[-1]["exact_objective"], wall_s=wall,
                           train_s=t_train, exact_note=exact_J.note, manifest=manifest)


def _json_value(v: Any) -> Any:
    """A hyperparameter's value as JSON holds it: a float that is not finite (a plugin's ``c=nan``,
    ``c=inf``) as its text, as the estimator's spec writes it; JSON has no NaN or infinity."""
    return repr(float(v)) if isinstance(v, float) and not math.isfinite(v) else v


def _train_manifest(problem: Problem, estimator: Estimator, config: dict[str, Any],
                    seeds: dict[str, int], history: Sequence[Mapping[str, float]], steps: int,
                    exact_note: str | None, timing: dict[str, float], written: Mapping[int, Path]
                    ) -> dict[str, Any]:
    """``train_manifest.json``: configuration, seeds, problem, estimator, objectives, timings,
    files and versions."""
    D = problem.num_data
    return {
        "kind": "sbn-bench train",
        "manifest_version": MANIFEST_VERSION,
        "config": config,
        "seeds": seeds,
        "problem": {"name": problem.name, "arch": problem.arch, "num_data": D,
                    "loss": problem.loss, "noise": problem.noise,
                    "fingerprint": problem.fingerprint()},
        "estimator": {"spec": estimator.spec, "name": estimator.name,
                      "version": estimator.version,
                      "hyperparams": {k: _json_value(v) for k, v in estimator.hyperparams},
                      "unbiased": estimator.unbiased, "randomness": estimator.randomness},
        "steps": steps,
        "steps_per_epoch": math.ceil(D / config["batch_size"]),
        "initial_objective": _finite_or_none(history[0]["exact_objective"]),
        "final_objective": _finite_or_none(history[-1]["exact_objective"]),
        "final_train_loss": _finite_or_none(history[-1]["train_loss"]),
        "exact_objective_note": exact_note,
        **timing,
        "checkpoints": {str(e): p.name for e, p in sorted(written.items())},
        "files": {"log": LOG_NAME, "curve": CURVE_NAME},
        "versions": _versions(),
        "device": str(problem.x.device),
    }

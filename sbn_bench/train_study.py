"""The training benchmark: estimators × seeds trained on a digits preset, judged by what they train.

``sbn-bench train --preset digits-vae --estimators psa,st,disarm --seeds 0-2`` (or
:func:`run_study`) trains one network per ``(estimator, seed)`` cell, each cell one job of the
executors (:mod:`sbn_bench.runner.executors`: serial, ``processes:N``, Dask), and records per epoch:

* the **train and test objective** with its standard error: the expected loss ``J`` (classifiers:
  softmax cross-entropy; the binary VAE: the negative ELBO, reconstruction estimated from
  ``eval_samples`` noise draws per image plus the exact KL), on the whole training split and on the
  test split of :mod:`sbn_bench.data`;
* classifiers: **accuracy** of the predictive distribution averaged over ``eval_samples`` draws;
* the VAE: the **multi-sample (IWAE) bound** on test, ``−log (1/K) Σ_k p(x, z_k)/q(z_k|x)`` with
  ``K = iwae_samples`` (Burda, Grosse, Salakhutdinov 2016), tighter than the ELBO;
* **seconds per epoch** (optimiser steps only) and the training seconds so far;
* at the ``probe_epochs``: **gradient-accuracy probes** of the estimator at the current parameters on
  a fixed probe batch: relative RMSE of one sample and relative bias against
  :func:`probe_reference` (SPEC §5 and §8's corrections), with the bias's noise floor.

The VAE follows the DisARM/ARMS protocol scaled to digits: dynamic binarisation (a fresh Bernoulli
draw of every training image each epoch, from the cell's data-order stream), Adam, 200 Bernoulli
latents, linear (``digits-vae``) and nonlinear (``digits-vae-nonlinear``) encoder and decoder. The
evaluation sets are one fixed binarisation of each split (seed :data:`EVAL_BINARISATION_SEED`),
the same for every cell.

Files in ``out`` (all written atomically): ``study.json`` (settings, estimators, seeds, versions,
status), ``cells/<estimator>-seed<k>.json`` (one per finished cell: written when the cell
finishes, so a killed study loses only the cells in flight; ``resume=True`` runs only the missing,
truncated or failed ones), then ``curves.csv``, ``probes.csv`` and ``failures.csv`` assembled from
the cells. The report is :func:`sbn_bench.train_report.write_training_report`.

Determinism: a cell's numbers depend on its estimator, seed and the settings only (the seed gives the
initial parameters, the data order and binarisation, and the estimator's noise, as in
:func:`sbn_bench.train.train`; evaluation and probe noise come from streams derived from the seed and
epoch); wall times are the exception.

References:
    Shekhovtsov, Yanush, Flach. "Path Sample-Analytic Gradient Estimators for Stochastic Binary
    Networks". NeurIPS 2020 (the claim that PSA and ST train deep conv nets better and more stably).
    Dong, Mnih, Tucker. "DisARM". NeurIPS 2020; Dimitriev, Zhou. "ARMS". NeurIPS 2021 (the binary
    VAE protocol: dynamic binarisation, Adam, 200 latents, ELBO and a multi-sample bound on test).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sbn_bench import data, malloc, model, network, problems
from sbn_bench.config import ProblemSpec, RunConfig, parse_seeds, seed_tuple
from sbn_bench.errors import SbnBenchError, check_path, is_integer, plain_int, short_repr
from sbn_bench.estimators import Estimator, Registry, estimate, load_plugins
from sbn_bench.fileio import WriteError, atomic_write_text, folder_lock
from sbn_bench.problems import Problem
from sbn_bench.provenance import environment, file_record, processor
from sbn_bench.reference import DEFAULT_MAX_BYTES, ReferenceTooLarge, check_size, exact_gradient
from sbn_bench.runner.cells import Cell, CellContext, CellResult, stable_seed
from sbn_bench.runner.executors import check_executor, make_executor, resolve_auto
from sbn_bench.runner.mcref import McReferenceError, mc_reference, reference_estimator
from sbn_bench.storage import diff_dicts
from sbn_bench.train import (
    CURVE_NAME,
    MAX_EPOCHS,
    OPTIMIZERS,
    STUDY_NAME,
    TrainArgumentError,
    TrainingDiverged,
    _make_optimizer,
    _State,
    _step_gradient,
    _stream_seeds,
    check_out_argument,
    check_progress_argument,
    check_trainable,
    plugins_argument,
    training_files,
)

EVAL_BINARISATION_SEED = 20_201
"""Seed of the one binarisation of each split that every VAE cell is evaluated on."""
STUDY_VERSION = 1
CELLS_DIR = "cells"
CURVES_NAME = "curves.csv"
PROBES_NAME = "probes.csv"
FAILURES_NAME = "failures.csv"

CURVE_COLUMNS = ["estimator", "seed", "epoch", "step", "epoch_s", "train_s",
                 "train_objective", "train_objective_se", "test_objective", "test_objective_se",
                 "train_accuracy", "test_accuracy", "test_iwae", "test_iwae_se"]
"""``curves.csv``: one row per cell and epoch (0 = the initial parameters). ``epoch_s``: seconds of
the epoch's optimiser steps; ``train_s``: their sum so far; objectives per data point with their
standard errors over the data points; accuracies (classifiers) and the IWAE bound (VAE) NaN where
they do not apply or were not evaluated that epoch."""
PROBE_COLUMNS = ["estimator", "seed", "epoch", "rrmse", "bias", "bias_floor", "grad_norm",
                 "reference", "reference_rel_se", "samples"]
"""``probes.csv``: one row per cell and probe epoch. ``rrmse``: relative RMSE of one sample
``√(‖β‖² + V)/‖g‖``; ``bias``: ``‖β‖/‖g‖`` (clipped at 0 before the root); ``bias_floor``: the
relative size of the noise in the bias estimate, ``√(V/S + V_R/N)/‖g‖`` (a bias below about twice
it is not resolved); ``reference``: ``exact`` or ``mc:<estimator>:N``; ``reference_rel_se``:
``√(V_R/N)/‖g‖`` (0 for exact)."""


class StudyError(SbnBenchError, ValueError):
    """A study that cannot run or resume (the message says why and what to do)."""


# --------------------------------------------------------------------------------------------
# settings and presets


@dataclass(frozen=True)
class StudySettings:
    """How every cell of a study trains and is measured.

    Attributes:
        preset: the digits preset (:data:`sbn_bench.problems.DIGITS_ARCHS`), e.g. ``digits-vae``.
        epochs: passes over the 1 438 training images.
        batch_size: images per optimiser step (one gradient sample per step).
        optimizer, lr: ``adam`` (default betas) or ``sgd`` (momentum 0.9), and the learning rate.
        eval_every: evaluate the objectives every this many epochs (and at 0, the last epoch and
            the probe epochs).
        eval_samples: noise draws per image for the objectives and accuracies.
        iwae_samples: ``K`` of the VAE's test multi-sample bound (0: not computed).
        probe_epochs: epochs (0..epochs) at which the gradient probes run.
        probe_batch: training images in the fixed probe batch.
        probe_samples: single-sample estimates ``S`` of the estimator per probe.
        reference_estimator, reference_samples: the Monte-Carlo reference of the probes when the
            exact one is too large (:func:`probe_reference`): an unbiased estimator and ``N``.
        max_exact_bytes: the exact reference's memory limit (above it: the Monte-Carlo one).
        threads: torch threads per cell.
    """

    preset: str
    epochs: int
    batch_size: int = 50
    optimizer: str = "adam"
    lr: float = 1e-3
    eval_every: int = 1
    eval_samples: int = 5
    iwae_samples: int = 50
    probe_epochs: tuple[int, ...] = ()
    probe_batch: int = 50
    probe_samples: int = 32
    reference_estimator: str = "disarm"
    reference_samples: int = 400
    max_exact_bytes: int = DEFAULT_MAX_BYTES
    threads: int = 1

    def __post_init__(self) -> None:
        import numpy as np

        for f in dataclasses.fields(self):  # numpy's numbers as Python's (train() takes them too)
            v = getattr(self, f.name)
            if isinstance(v, np.generic) and not isinstance(v, (np.str_, np.bytes_)):
                object.__setattr__(self, f.name, v.item())
        pe = self.probe_epochs
        if isinstance(pe, (np.ndarray, range)):
            pe = pe.tolist() if isinstance(pe, np.ndarray) else list(pe)
        if isinstance(pe, (str, bytes)) or not isinstance(pe, (list, tuple, set, frozenset)) \
                or not all(is_integer(e) for e in pe):
            raise TrainArgumentError("probe_epochs", f"argument probe_epochs={pe!r} must be a list "
                                                     "of epochs (integers), e.g. (0, 10, 50)")
        object.__setattr__(self, "probe_epochs", tuple(sorted({int(e) for e in pe})))

    @property
    def vae(self) -> bool:
        return self.preset.startswith("digits-vae")

    def check(self) -> StudySettings:
        """Validate every field before any work; return self.

        Raises:
            TrainArgumentError: naming the argument, its value and what was expected.
        """
        def bad(arg: str, msg: str, expected: str) -> TrainArgumentError:
            return TrainArgumentError(arg, f"argument {arg}={msg}", value=getattr(self, arg),
                                      expected=expected)

        if self.preset not in problems.DIGITS_ARCHS:
            raise bad("preset", f"{self.preset!r} is not a digits preset; expected one of "
                                f"{', '.join(problems.DIGITS_ARCHS)}",
                      f"one of {', '.join(problems.DIGITS_ARCHS)}")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"{self.optimizer!r} is unknown; expected one of "
                                   f"{', '.join(OPTIMIZERS)}", f"one of {', '.join(OPTIMIZERS)}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", f"{self.lr!r} must be a finite number > 0", "a finite number > 0")
        if isinstance(self.epochs, int) and self.epochs > MAX_EPOCHS:
            raise bad("epochs", f"{self.epochs!r} must be at most {MAX_EPOCHS:,}, as for a single "
                                "training", f"at most {MAX_EPOCHS:,}")
        for arg, lo in (("epochs", 1), ("batch_size", 1), ("eval_every", 1), ("eval_samples", 1),
                        ("iwae_samples", 0), ("probe_batch", 1), ("probe_samples", 2),
                        ("reference_samples", 2), ("max_exact_bytes", 1), ("threads", 1)):
            v = getattr(self, arg)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise bad(arg, f"{v!r} must be an integer ≥ {lo}", f"an integer ≥ {lo}")
        if self.batch_size > problems.DIGITS_TRAIN:
            raise bad("batch_size", f"{self.batch_size} exceeds the {problems.DIGITS_TRAIN} "
                                    "training images", f"at most {problems.DIGITS_TRAIN}")
        if self.probe_batch > problems.DIGITS_TRAIN:
            raise bad("probe_batch", f"{self.probe_batch} exceeds the {problems.DIGITS_TRAIN} "
                                     "training images", f"at most {problems.DIGITS_TRAIN}")
        for e in self.probe_epochs:
            if not 0 <= e <= self.epochs:
                raise bad("probe_epochs", f"{list(self.probe_epochs)!r}: epoch {e} is not within "
                                          f"0..{self.epochs} (epochs={self.epochs})",
                          f"epochs within 0..{self.epochs}")
        try:  # checked even where the exact reference serves: the settings record it
            reference_estimator(self.reference_estimator)  # type: ignore[arg-type]
        except McReferenceError as e:
            raise TrainArgumentError("reference_estimator", f"argument reference_estimator="
                                     f"{self.reference_estimator!r}: {e}") from None
        return self

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["probe_epochs"] = list(self.probe_epochs)
        return d


@dataclass(frozen=True)
class StudyPreset:
    """A study's defaults: the settings, the estimators, and what the README states they reach."""

    settings: StudySettings
    estimators: tuple[str, ...]
    description: str


STUDY_PRESETS: dict[str, StudyPreset] = {
    "digits-conv": StudyPreset(
        StudySettings("digits-conv", epochs=50, batch_size=50, optimizer="adam", lr=1e-2,
                      eval_every=2, eval_samples=5, probe_epochs=(0, 10, 50), probe_batch=50,
                      probe_samples=256, reference_samples=4000),
        ("psa", "st", "disarm", "reinmax", "concrete:tau=0.5"),
        "the paper's deep-conv claim scaled to digits: two stochastic conv layers (8 and 16 "
        "channels, 3×3, the second with stride 2) and a linear softmax head, Adam"),
    "digits-vae": StudyPreset(
        StudySettings("digits-vae", epochs=100, batch_size=50, optimizer="adam", lr=1e-3,
                      eval_every=4, eval_samples=5, iwae_samples=50, probe_epochs=(0, 25, 100),
                      probe_batch=50, probe_samples=32, reference_samples=400),
        ("psa", "st", "disarm", "arms:k=4", "concrete:tau=0.5"),
        "the DisARM/ARMS binary VAE scaled to digits: 64-200-64, linear encoder and decoder, "
        "dynamic binarisation, Adam"),
    "digits-vae-exact": StudyPreset(
        StudySettings("digits-vae-exact", epochs=60, batch_size=50, optimizer="adam", lr=1e-3,
                      eval_every=3, eval_samples=5, iwae_samples=50, probe_epochs=(0, 10, 30, 60),
                      probe_batch=50, probe_samples=512, reference_samples=400),
        ("psa", "st", "disarm", "arms:k=4", "concrete:tau=0.5"),
        "the binary VAE with 16 latents (64-16-64, linear), trained like digits-vae (dynamic "
        "binarisation, Adam): its 2^16 latent states are enumerated, so the probes' reference "
        "is the exact gradient and only the estimators' own samples limit the probes"),
    "digits-vae-nonlinear": StudyPreset(
        StudySettings("digits-vae-nonlinear", epochs=50, batch_size=50, optimizer="adam", lr=1e-3,
                      eval_every=5, eval_samples=3, iwae_samples=20, probe_epochs=(0, 25, 50),
                      probe_batch=20, probe_samples=16, reference_samples=200),
        ("psa", "st", "disarm", "arms:k=4", "concrete:tau=0.5"),
        "the nonlinear binary VAE: two LeakyReLU layers of 200 in the encoder and the decoder "
        "around 200 latents, dynamic binarisation, Adam (50 epochs: with fewer, every estimator "
        "still sits in the collapsed solution that ignores the latents, which ST leaves after "
        "about 28 epochs; PSA evaluates the decoder once per latent flip, about 30x ST's cost)"),
}
"""The training benchmark's presets (``sbn-bench train --preset NAME --seeds 0-2``)."""


_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(StudySettings))


def _check_setting_names(settings: Mapping[str, Any]) -> None:
    """Refuse a name that is not a :class:`StudySettings` field."""
    unknown = sorted(set(settings) - _SETTING_NAMES)
    if unknown:
        raise TrainArgumentError(unknown[0], f"argument {unknown[0]} is not a study setting; "
                                             f"expected one of {', '.join(sorted(_SETTING_NAMES))}")


def preset_settings(preset: str, **overrides: Any) -> StudySettings:
    """A preset's settings with some fields replaced (None values are ignored).

    Raises:
        TrainArgumentError: an unknown preset or field, or a bad value.
    """
    if preset not in STUDY_PRESETS:
        raise TrainArgumentError("preset", f"argument preset={preset!r} has no training study; "
                                           f"expected one of {', '.join(STUDY_PRESETS)}",
                                 value=preset, expected=f"one of {', '.join(STUDY_PRESETS)}")
    _check_setting_names(overrides)
    given = {k: v for k, v in overrides.items() if v is not None}
    base = STUDY_PRESETS[preset].settings
    if "epochs" in given and (isinstance(given["epochs"], bool) or not is_integer(given["epochs"])):
        raise TrainArgumentError("epochs", f"argument epochs={given['epochs']!r} must be an integer "
                                           "≥ 1")
    if "epochs" in given and "probe_epochs" not in given:  # keep the probes inside the training
        given["probe_epochs"] = tuple(sorted({min(e, given["epochs"]) for e in base.probe_epochs}
                                             | {given["epochs"]}))
    return dataclasses.replace(base, **given).check()


# --------------------------------------------------------------------------------------------
# data and evaluation


@dataclass(frozen=True)
class EvalSet:
    """One split as evaluated: inputs ``x [N, 64]`` and targets/labels ``y``."""

    x: Tensor
    y: Tensor


@functools.lru_cache(maxsize=4)
def eval_sets(vae: bool) -> tuple[EvalSet, EvalSet, Tensor, Tensor]:
    """``(train, test, train_grey, train_labels)``: the evaluation sets (VAE: one fixed binarisation
    per split, seed :data:`EVAL_BINARISATION_SEED`; classifiers: scaled pixels and labels) and the
    grey-level training images with their labels (for dynamic binarisation)."""
    grey = data.load_digits("train", "none")
    if vae:
        tr = data.load_digits("train", "dynamic", EVAL_BINARISATION_SEED).x
        te = data.load_digits("test", "dynamic", EVAL_BINARISATION_SEED + 1).x
        return EvalSet(tr, tr), EvalSet(te, te), grey.x, grey.labels
    test = data.load_digits("test", "none")
    return EvalSet(grey.x, grey.labels), EvalSet(test.x, test.labels), grey.x, grey.labels


def _sample_last(problem: Problem, params: Mapping[str, Tensor], x: Tensor,
                 generator: torch.Generator) -> Tensor:
    """States of the last stochastic layer for inputs ``x [N, n0]``, one draw per row."""
    net, noise = problem.net, problem.noise_dist
    h = network.stochastic_input(net, params, x)
    for k in range(1, net.n_layers + 1):
        h = model.bernoulli(noise.cdf(network.preactivation(net, params, k, h)), generator)
    return h


def _mean_se(v: Tensor) -> tuple[float, float]:
    n = v.numel()
    return float(v.mean()), float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan


def evaluate(problem: Problem, params: Mapping[str, Tensor], ev: EvalSet, samples: int,
             generator: torch.Generator, iwae_samples: int = 0) -> dict[str, float]:
    """The objective of ``params`` on ``ev`` (per data point, float64, no gradient).

    Returns:
        ``objective`` and ``objective_se``: the mean over the data points of each point's loss
        averaged over ``samples`` noise draws (VAE: plus the exact KL, i.e. the negative ELBO), and
        its standard error over the data points; classifiers: ``accuracy`` of the argmax of the
        predictive probabilities averaged over the draws; VAE with ``iwae_samples = K > 0``:
        ``iwae`` and ``iwae_se``, the K-sample bound ``−log (1/K) Σ_k p(x|z_k) p(z_k)/q(z_k|x)``
        per data point (an upper bound on ``−log p(x)``, below the negative ELBO in expectation).
    """
    N = ev.x.shape[0]
    out: dict[str, float] = {}
    with torch.no_grad():
        xs = ev.x.repeat(samples, 1)  # [samples·N, n0], draw-major
        z = _sample_last(problem, params, xs, generator)
        eta = network.output(problem.net, params, z)
        ys = ev.y.repeat(samples) if ev.y.dim() == 1 else ev.y.repeat(samples, 1)
        loss = model.loss_fn(problem.loss, eta, ys).reshape(samples, N).mean(0)  # [N]
        if problem.loss == "vae":
            loss = loss + network.kl_per_point(problem.net, params, ev.x, problem.noise_dist)
        else:
            probs = torch.softmax(eta, -1).reshape(samples, N, -1).mean(0)
            out["accuracy"] = float((probs.argmax(-1) == ev.y).to(torch.float64).mean())
        out["objective"], out["objective_se"] = _mean_se(loss)
        if problem.loss == "vae" and iwae_samples > 0:
            out["iwae"], out["iwae_se"] = _mean_se(_iwae(problem, params, ev.x, iwae_samples,
                                                         generator))
    return out


def _iwae(problem: Problem, params: Mapping[str, Tensor], x: Tensor, K: int,
          generator: torch.Generator) -> Tensor:
    """``[N]`` the K-sample bound of the binary VAE (one stochastic layer ``z``)."""
    net, noise = problem.net, problem.noise_dist
    N = x.shape[0]
    a = network.preactivation(net, params, 1, network.stochastic_input(net, params, x))  # [N, n]
    ak = a.repeat(K, 1)  # [K·N, n]
    z = model.bernoulli(noise.cdf(ak), generator)
    log_q = model.bernoulli_log_prob(z, noise.log_cdf(ak), noise.log_cdf(-ak))
    c = params["prior_logits"]
    logsig = torch.nn.functional.logsigmoid
    log_p = model.bernoulli_log_prob(z, logsig(c), logsig(-c))
    rec = model.loss_fn("vae", network.output(net, params, z), x.repeat(K, 1))  # −log p(x|z)
    log_w = (log_p - rec - log_q).reshape(K, N)
    return -(torch.logsumexp(log_w, 0) - math.log(K))


# --------------------------------------------------------------------------------------------
# gradient probes


@dataclass(frozen=True)
class ProbeReference:
    """The probes' reference gradient: ``gradient [P]`` (flat, ``problem.param_names`` order,
    float64), ``variance`` the total variance ``V_R/N`` of its error (0 when exact), and ``method``
    (``"exact"`` or ``"mc:<spec>:<N>"``)."""

    gradient: Tensor
    variance: float
    method: str

    @property
    def rel_se(self) -> float:
        """``√(V_R/N)/‖g‖``: the reference's own relative error (SPEC §8)."""
        g2 = float(self.gradient.square().sum()) - self.variance
        return math.sqrt(self.variance / g2) if g2 > 0 else math.inf


def _flat(problem: Problem, grads: Mapping[str, Tensor]) -> Tensor:
    """``{name: [S, *shape]} → [S, P]`` float64 in ``problem.param_names`` order."""
    return torch.cat([grads[n].reshape(grads[n].shape[0], -1).to(torch.float64)
                      for n in problem.param_names], dim=1)


def _samples(estimator: Estimator, problem: Problem, n: int, generator: torch.Generator,
             chunk: int = 32) -> Tensor:
    """``[n, P]`` single-sample estimates, ``chunk`` at a time."""
    parts = []
    for i in range(0, n, chunk):
        parts.append(_flat(problem, estimate(estimator, problem, min(chunk, n - i), generator)))
    return torch.cat(parts)


def probe_reference(problem: Problem, *, samples: int = 400, estimator: str = "disarm",
                    seed: int = 0, max_exact_bytes: int = DEFAULT_MAX_BYTES) -> ProbeReference:
    """The reference gradient of the probes: exact (:func:`sbn_bench.reference.exact_gradient`) when
    the size guard allows it, else the Monte-Carlo reference of SPEC §8
    (:func:`sbn_bench.runner.mcref.mc_reference`) with the given unbiased ``estimator`` and
    ``N = samples`` (no pilot, no cache: every probe is at new parameters), drawn in the problem's
    dtype with ``seed`` and the runner's memory planner; ``variance`` is ``V̂_R/N``.

    Raises:
        TrainArgumentError: ``estimator`` is unknown, biased, adaptive or does not support the
            problem; ``samples`` < 2.
    """
    try:
        check_size(problem, max_exact_bytes)
    except ReferenceTooLarge:
        pass
    else:
        _, grad = exact_gradient(problem, max_bytes=max_exact_bytes)
        return ProbeReference(_flat(problem, {k: v.unsqueeze(0) for k, v in grad.items()})[0], 0.0,
                              "exact")
    dtype = "float64" if problem.x.dtype == torch.float64 else "float32"
    try:
        ref = mc_reference(problem, estimator=estimator, samples=samples, seed=seed,
                           device=problem.x.device.type, dtype=dtype,
                           time_budget_s=math.inf)  # N is the study's setting: not timed
    except McReferenceError as e:
        if e.argument == "samples":
            raise TrainArgumentError("reference_samples", f"argument reference_samples={samples!r} "
                                     "must be an integer ≥ 2") from None
        if e.expected == "finite estimates":  # a numerical failure, not a bad argument
            raise
        raise TrainArgumentError("reference_estimator", f"argument reference_estimator="
                                 f"{estimator!r}: {e}") from None
    return ProbeReference(ref.gradient, float(ref.noise.variance.sum()) / ref.samples,
                          f"mc:{ref.estimator}:{ref.samples}")


def probe(estimator: Estimator, problem: Problem, reference: ProbeReference, samples: int,
          generator: torch.Generator, chunk: int = 32) -> dict[str, float]:
    """Relative RMSE and bias of one sample of ``estimator`` against ``reference`` (SPEC §5, with
    §8's corrections for both sample means): ``‖β‖² ≈ ‖m − ĝ‖² − V/S − V_R/N``,
    ``‖g‖² ≈ ‖ĝ‖² − V_R/N``, ``rrmse = √(max(‖β‖², 0) + V)/‖g‖``, ``bias = √max(‖β‖², 0)/‖g‖`` and
    ``bias_floor = √(V/S + V_R/N)/‖g‖``; ``V`` the total variance of one sample. ``chunk``: samples
    per :func:`~sbn_bench.estimators.estimate` call (memory against speed)."""
    g = _samples(estimator, problem, samples, generator, chunk)
    m = g.mean(0)
    V = float(g.var(0, unbiased=True).sum())
    g2 = float(reference.gradient.square().sum()) - reference.variance
    b2 = float((m - reference.gradient).square().sum()) - V / samples - reference.variance
    if g2 <= 0:
        return {"rrmse": math.nan, "bias": math.nan, "bias_floor": math.nan, "grad_norm": math.nan}
    return {"rrmse": math.sqrt(max(b2, 0.0) + V) / math.sqrt(g2),
            "bias": math.sqrt(max(b2, 0.0)) / math.sqrt(g2),
            "bias_floor": math.sqrt(V / samples + reference.variance) / math.sqrt(g2),
            "grad_norm": math.sqrt(g2)}


# --------------------------------------------------------------------------------------------
# one training cell


def _subproblem(problem: Problem, x: Tensor, y: Tensor, params: Mapping[str, Tensor]) -> Problem:
    """``problem`` with other rows and parameters, without re-validation
    (:meth:`Problem.with_rows`: the rows are valid data of the same kind)."""
    return problem.with_rows(x, y, dict(params))


def _gen(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(stable_seed(*parts))


def train_cell(cell: Cell, problem: Problem, estimator: Estimator | None, *,
               settings: StudySettings) -> list[dict[str, Any]]:
    """Train one cell (``estimator`` from the preset's problem of seed ``cell.seed``) and measure it.

    Returns:
        Rows with ``table`` ``"curve"`` (:data:`CURVE_COLUMNS`) or ``"probe"``
        (:data:`PROBE_COLUMNS`).

    Raises:
        TrainingDiverged: the parameters became non-finite. UnsupportedProblem: the estimator does
        not support the network.
    """
    assert estimator is not None and cell.seed is not None
    s, seed = settings, cell.seed
    problem = problem.to(dtype=torch.float64)
    estimator.check_supports(problem)
    train_ev, test_ev, grey, labels = eval_sets(s.vae)
    streams = _stream_seeds(seed)
    g_shuffle = torch.Generator().manual_seed(streams["shuffle"])
    g_est = torch.Generator().manual_seed(streams["estimator"])
    g_mon = torch.Generator().manual_seed(streams["monitor"])
    state = _State.of(problem)
    opt = _make_optimizer(s.optimizer, list(state.leaves.values()), s.lr, None)
    probe_rows = torch.randperm(grey.shape[0], generator=_gen("probe-batch"))[:s.probe_batch]
    rows: list[dict[str, Any]] = []
    step, train_s, epoch_s = 0, 0.0, 0.0

    def measure(epoch: int) -> None:
        row: dict[str, Any] = {"table": "curve", "estimator": cell.estimator, "seed": seed,
                               "epoch": epoch, "step": step, "epoch_s": epoch_s,
                               "train_s": train_s}
        for split, ev in (("train", train_ev), ("test", test_ev)):
            r = evaluate(problem, state.live, ev, s.eval_samples, _gen("eval", seed, epoch, split),
                         s.iwae_samples if split == "test" else 0)
            row[f"{split}_objective"], row[f"{split}_objective_se"] = r["objective"], r["objective_se"]
            row[f"{split}_accuracy"] = r.get("accuracy", math.nan)
            if split == "test":
                row["test_iwae"], row["test_iwae_se"] = r.get("iwae", math.nan), r.get("iwae_se",
                                                                                     math.nan)
        rows.append(row)

    def run_probe(epoch: int) -> None:
        sub = _subproblem(problem, train_ev.x[probe_rows], train_ev.y[probe_rows],
                          {k: v.clone() for k, v in state.live.items()})
        ref = probe_reference(sub, samples=s.reference_samples, estimator=s.reference_estimator,
                              seed=stable_seed("reference", seed, epoch, cell.estimator),
                              max_exact_bytes=s.max_exact_bytes)
        p = probe(estimator, sub, ref, s.probe_samples, _gen("probe", seed, epoch, cell.estimator))
        rows.append({"table": "probe", "estimator": cell.estimator, "seed": seed, "epoch": epoch,
                     **p, "reference": ref.method, "reference_rel_se": ref.rel_se,
                     "samples": s.probe_samples})

    measure(0)
    if 0 in s.probe_epochs:
        run_probe(0)
    D = grey.shape[0]
    for epoch in range(1, s.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(D, generator=g_shuffle)
        x_all = data.binarise(grey, "dynamic", g_shuffle) if s.vae else grey
        y_all = x_all if s.vae else labels
        for start in range(0, D, s.batch_size):
            idx = perm[start:start + s.batch_size]
            sub = _subproblem(problem, x_all[idx], y_all[idx], state.live)
            grads, _ = _step_gradient(estimator, sub, state.leaves, state.views, g_est, g_mon,
                                      monitor=False)
            for leaf, gr in zip(state.leaves.values(), grads):
                leaf.grad = gr
            opt.step()
            step += 1
        epoch_s = time.perf_counter() - t0
        train_s += epoch_s
        bad = state.diverged()
        if bad:
            raise TrainingDiverged(
                f"training diverged at epoch {epoch}: parameter {bad[0]} {bad[1]}, with "
                f"estimator {estimator.spec!r}, {s.optimizer} lr={s.lr}: {bad[2]}",
                argument="lr", value=s.lr,
                expected="a smaller learning rate, or an estimator with finite gradients")
        if epoch % s.eval_every == 0 or epoch == s.epochs or epoch in s.probe_epochs:
            measure(epoch)
        if epoch in s.probe_epochs:
            run_probe(epoch)
    return rows


# --------------------------------------------------------------------------------------------
# the study: cells through the executors, one atomic file per cell, resume


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` produced: the folder, the tables (lists of row dicts), the cells
    run now and those taken from an earlier run (``resumed``), failures and the wall time. The
    report is drawn from the folder afterwards (:func:`sbn_bench.train_report.write_training_report`)."""

    out: Path
    settings: StudySettings
    estimators: tuple[str, ...]
    seeds: tuple[int, ...]
    curves: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    ran: int
    resumed: int
    wall_s: float


def refuse_foreign_folder(d: Path, argument: str, what: str) -> None:
    """Refuse a folder ``d`` that holds an ``sbn-bench run`` or a single training (``what``, e.g.
    "a study", needs its own folder).

    Raises:
        StudyError: naming ``argument`` and what the folder holds.
    """
    from sbn_bench.storage import CELLS, MANIFEST, PART_KINDS

    # a study keeps cells/*.json; a run's marks are its manifest and its cells/*.KIND.csv parts
    if (d / MANIFEST).is_file() or any(next((d / CELLS).glob(f"*.{k}.csv"), None)
                                       for k in PART_KINDS):
        raise StudyError(f"argument {argument}={str(d)!r} holds an sbn-bench run ({MANIFEST}, "
                         f"{CELLS}/); {what} needs its own folder", argument=argument)
    single = [p.name for p in training_files(d) if p.name != CURVE_NAME]
    if single:
        raise StudyError(f"argument {argument}={str(d)!r} holds a single training "
                         f"({', '.join(single[:3])}{', …' if len(single) > 3 else ''}); {what} "
                         "needs its own folder", argument=argument)


def cell_file(out: Path, estimator: str, seed: int) -> Path:
    """``out/cells/<estimator, file-name-safe>-seed<k>.json``."""
    safe = re.sub(r"[^A-Za-z0-9.]+", "_", estimator).strip("_")
    return out / CELLS_DIR / f"{safe}-seed{seed}.json"


def _read_cell(path: Path, estimator: str, seed: int, fingerprint: str, version: str,
               settings: StudySettings) -> dict[str, Any] | None:
    """A finished cell's record, or None when missing, truncated, failed, from other settings, from
    another version of the estimator or another random stream (:data:`sbn_bench.model.STREAM_VERSION`),
    or without the curve rows of epoch 0 and the last epoch or the probe rows of every probe epoch
    (a record edited or damaged: it would have left its cell out of the tables silently)."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("status") != "ok" or rec.get("estimator") != estimator \
            or rec.get("seed") != seed or rec.get("settings_fingerprint") != fingerprint \
            or rec.get("estimator_version") != version or rec.get("stream") != model.STREAM_VERSION:
        return None
    curves, probes_ = rec.get("curves"), rec.get("probes")
    if not isinstance(curves, list) or not isinstance(probes_, list) \
            or not all(isinstance(r, dict) for r in [*curves, *probes_]):
        return None
    if not {0, settings.epochs} <= {r.get("epoch") for r in curves} \
            or not set(settings.probe_epochs) <= {r.get("epoch") for r in probes_}:
        return None
    if not all(r.get("estimator") == estimator and r.get("seed") == seed for r in [*curves, *probes_]) \
            or not all(set(CURVE_COLUMNS) <= r.keys() for r in curves) \
            or not all(set(PROBE_COLUMNS) <= r.keys() for r in probes_):
        return None  # rows of another cell, or without their columns
    return rec


def _fingerprint(settings: StudySettings) -> str:
    return f"{stable_seed('study', json.dumps(settings.to_json(), sort_keys=True)):016x}"


def _check_estimators(estimators: Sequence[str], reg: Registry) -> dict[str, str]:
    """``{canonical spec: version}`` of ``estimators``, in order; refused when empty, unknown,
    malformed or named twice."""
    out, versions = [], {}
    for spec in estimators:
        est = reg.create(spec)  # raises naming the spec when unknown or malformed
        try:
            check_trainable(est)
        except TrainArgumentError as e:  # the study's argument is the list
            raise TrainArgumentError("estimators", str(e)) from None
        out.append(est.spec)
        versions[est.spec] = est.version
    if not out:
        raise TrainArgumentError("estimators", "argument estimators=[] is empty; expected "
                                               "estimator specs such as psa,st,disarm")
    twice = sorted({e for e in out if out.count(e) > 1})
    if twice:
        raise TrainArgumentError("estimators", f"argument estimators={list(estimators)!r} names "
                                               f"{', '.join(twice)} twice")
    return versions


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["nan" if isinstance(r.get(c), float) and not math.isfinite(r[c])
                    else ("" if r.get(c) is None else r.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _from_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (math.nan if v is None and k not in ("reference",) else v) for k, v in row.items()}


ProgressFn = Callable[[int, int, str], None]
"""``progress(done, total, message)``, after each cell."""


def run_study(preset: str = "digits-vae", *, out: str | os.PathLike[str],
              estimators: Sequence[str] | None = None, seeds: Sequence[int] | str = (0, 1, 2),
              settings: StudySettings | None = None, executor: str = "auto",
              resume: bool = False, progress: ProgressFn | None = None,
              plugins: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = (),
              warn: Callable[[str], None] | None = None) -> StudyResult:
    """Train every ``(estimator, seed)`` cell of a study and write its files (``study.json``,
    ``cells/``, ``curves.csv``, ``probes.csv``, ``failures.csv``); its report is drawn from them
    afterwards by :func:`sbn_bench.train_report.write_training_report`, as ``sbn-bench train``
    does.

    Args:
        preset: a key of :data:`STUDY_PRESETS` (its settings and estimators are the defaults).
        out: the study's folder.
        estimators: estimator specs (default: the preset's).
        seeds: training seeds (initial parameters, data order, binarisation and noise), at most
            :data:`~sbn_bench.config.MAX_SEEDS`; a string takes ranges, as ``--seeds`` (``"0-2"``).
        settings: the training settings (default: the preset's; see :func:`preset_settings`).
        executor: ``auto`` (worker processes, one per CPU up to the cells to train, when there
            are two or more and the program is the ``sbn-bench`` command or an interactive
            session: :func:`~sbn_bench.runner.executors.resolve_auto`), ``serial``,
            ``processes[:N]`` or ``dask[:ADDRESS]``; one cell per job. The numbers do not depend
            on it; the manifest records the one that ran.
        resume: continue a study in ``out``: only the cells without a finished, valid result file
            run (a cell's file is written atomically when it finishes). Without it, a folder that
            holds a study is refused.
        progress: called after each cell.
        plugins: plugin files (``--plugin``; one path or a list) whose estimators ``estimators``
            may name; their text travels to the workers, their SHA-256 is recorded in
            ``study.json``, and a resume needs files of the same content (under any path).
        warn: called with each warning before any work (plugin estimators that failed to load,
            not requested).

    Raises:
        TrainArgumentError, StudyError, RunError: bad arguments, or a folder that holds another
        study (different settings, estimators or seeds: resume refuses rather than mix them),
        before any work.
    """
    t0 = time.perf_counter()
    malloc.keep_freed_memory()  # before any check or write: a bad $SBN_BENCH_MALLOC is refused here
    if settings is not None and not isinstance(settings, StudySettings):
        raise TrainArgumentError("settings", f"argument settings is a {type(settings).__name__}; expected "
                                             "StudySettings (preset_settings(preset, epochs=…) makes one)")
    s = (settings or preset_settings(preset)).check()
    if s.preset != preset:
        raise TrainArgumentError("settings", f"argument settings has preset {s.preset!r}, the "
                                             f"study {preset!r}")
    specs = STUDY_PRESETS[preset].estimators if estimators is None else estimators
    plugins = plugins_argument(plugins)
    check_out_argument(out, "out")
    if estimators is not None and not isinstance(estimators, (list, tuple)):  # a generator would
        # be used up by the plugins' names below, and then read as empty
        what = "not one string" if isinstance(estimators, (str, bytes)) else \
            f"not a {type(estimators).__name__}"
        raise TrainArgumentError("estimators", f"argument estimators={short_repr(estimators, 60)} "
                                               "must be a list of estimator specs such as "
                                               f"['st', 'psa'], {what}", value=estimators,
                                 expected="a list of estimator specs")
    check_progress_argument(progress, "progress(done, total, message)")
    # a plugin file that cannot be loaded is an error, a broken factory not requested a warning
    reg, warnings = load_plugins(plugins, [str(e).split(":")[0].strip() for e in specs])
    for w in warnings if warn is not None else ():
        warn(w)
    plugin_records = [file_record(p) for p in plugins]
    versions = _check_estimators(specs, reg)
    ests = tuple(versions)
    if isinstance(seeds, str):  # "0-2", as --seeds takes it
        try:
            seeds = parse_seeds(seeds)
        except ValueError as e:
            raise TrainArgumentError("seeds", f"argument seeds={seeds!r}: {e}") from None
    try:
        seeds = tuple(map(plain_int, seed_tuple(seeds)))
    except ValueError as e:
        raise TrainArgumentError("seeds", f"argument seeds {e}") from None
    except TypeError:
        raise TrainArgumentError("seeds", f"argument seeds={seeds!r} must be a list of seeds such as "
                                          "[0, 1, 2], or text such as '0-2'", value=seeds,
                                 expected="a list of seeds, or text such as '0-2'") from None
    for sd in seeds:
        if isinstance(sd, bool) or not isinstance(sd, int) or sd < 0:
            raise TrainArgumentError("seeds", f"argument seeds={list(seeds)!r}: {sd!r} is not an "
                                              "integer ≥ 0", value=list(seeds),
                                     expected="integers ≥ 0")
    if not seeds or len(set(seeds)) != len(seeds):
        raise TrainArgumentError("seeds", f"argument seeds={list(seeds)!r} must be non-empty "
                                          "and distinct", value=list(seeds),
                                 expected="distinct seeds, at least one")
    kind = check_executor(executor)
    # the data before any file: a missing scikit-learn (MissingExtra) or any other failure to
    # build the study's problem is refused with nothing written, not as an interrupted study
    # whose study.json then stands in the way of the same command
    problems.digits_problem(preset, seeds[0])
    d = Path(out)
    if resume and warn is not None and (not d.exists() or d.is_dir() and not any(d.iterdir())):
        # a typo in --out would otherwise start a long study over without a word, as for a run
        warn(f"resume: {str(d)!r} holds no study to resume (it is empty or missing); starting a "
             "new study there")
    fp = _fingerprint(s)
    manifest_path = d / STUDY_NAME
    old: dict[str, Any] = {}
    if d.exists() and not d.is_dir():
        raise StudyError(f"argument out={str(d)!r} exists and is not a folder; choose another output "
                         "folder", argument="out")

    def busy() -> StudyError:
        return StudyError(f"argument out={str(d)!r} is in use by another sbn-bench process (a "
                          "study, training or run holds the folder's lock); wait for it to "
                          "finish, or choose another folder", argument="out")

    def cannot(e: OSError) -> WriteError:
        return WriteError(d, e, "choose another output folder: out=… / --out")

    with folder_lock(d, busy, cannot):  # one process at a time checks and writes the study
        # (its report is written after, by the caller: a resume started then may rewrite the
        # tables it reads; the report is written again at that resume's end)
        refuse_foreign_folder(d, "out", "a study")
        if manifest_path.exists():
            if not resume:
                raise StudyError(f"argument out={str(d)!r} already holds a training study; pass "
                                 "resume=True (--resume) to finish it, or choose another folder",
                                 argument="out")
            old = _read_study(d)
            if old.get("settings_fingerprint") != fp:
                diff = diff_dicts(old.get("settings"), s.to_json())
                shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
                raise StudyError(f"cannot resume the study in {str(d)!r}: its settings differ from "
                                 f"these ({shown or 'its settings fingerprint differs'}); use the same "
                                 "settings, or another folder", argument="resume")
            old_versions = old.get("versions") if isinstance(old.get("versions"), dict) else {}
            stream = old_versions.get("stream")
            if stream != model.STREAM_VERSION:
                was = "not recorded (a study from before 2 December 2026)" if stream is None \
                    else repr(stream)
                raise StudyError(f"cannot resume the study in {str(d)!r}: its cells were drawn from "
                                 f"random stream {was}, this version draws stream "
                                 f"{model.STREAM_VERSION} (sbn_bench.model.STREAM_VERSION: the same "
                                 "seeds give other numbers); use another folder", argument="resume")
            given_sha = {r["sha256"] for r in plugin_records}
            missing = [r.get("path") for r in old.get("plugins") or []
                       if isinstance(r, dict) and r.get("sha256") not in given_sha]
            if missing:
                changed = missing[0] in {r["path"] for r in plugin_records}  # given again, edited
                why = ("whose content has changed since (SHA-256); restore that content"
                       if changed else "and no plugin file given now has its content (SHA-256); "
                       "give the same --plugin files")
                raise StudyError(f"cannot resume the study in {str(d)!r}: it was trained with plugin "
                                 f"file {missing[0]!r}, {why} (or use another folder)",
                                 argument="plugins", value=[str(p) for p in plugins],
                                 expected="the study's plugin files, unchanged")
            old_e = [e for e in old.get("estimators") or [] if isinstance(e, str)]
            old_s = [x for x in old.get("seeds") or [] if isinstance(x, int)]
            # those with a cell file: an interrupted extension that finished none of its cells of an
            # estimator (or seed) does not hold the study to it
            done_e = [e for e in old_e if any(cell_file(d, e, x).is_file() for x in old_s)]
            done_s = [x for x in old_s if any(cell_file(d, e, x).is_file() for e in old_e)]
            for what, given, had in (("estimators", ests, done_e), ("seeds", seeds, done_s)):
                dropped = [x for x in had if x not in given]
                if dropped:
                    raise StudyError(
                        f"cannot resume the study in {str(d)!r}: it has {what} "
                        f"{', '.join(map(str, had))}, and {', '.join(map(str, dropped))} would be left "
                        f"out of its tables and report; give them all (more extend the study), or use "
                        "another folder", argument=what, value=list(given),
                        expected=f"at least the study's {what}")
        cells = [(e, sd) for e in ests for sd in seeds]
        records: dict[tuple[str, int], dict[str, Any]] = {}
        todo = []
        for e, sd in cells:
            rec = _read_cell(cell_file(d, e, sd), e, sd, fp, versions[e], s) if resume else None
            if rec is not None:
                records[(e, sd)] = rec
            else:
                todo.append((e, sd))
        resumed = len(records)
        if kind == "auto":  # trainings are long: worker processes pay off from two cells on
            executor = resolve_auto(cells=len(todo))
        (d / CELLS_DIR).mkdir(parents=True, exist_ok=True)
        if resume:  # temporary files of the study's writes that were killed (as a run's resume
            # removes them); not the report's, which is written after the lock is released
            ours = (STUDY_NAME, CURVES_NAME, PROBES_NAME, FAILURES_NAME)
            for stray in [*(p for n in ours for p in d.glob(f".{n}.*.tmp")),
                          *(d / CELLS_DIR).glob(".*.tmp")]:
                stray.unlink(missing_ok=True)
        earlier_runs = [r for r in old.get("runs", []) if isinstance(r, dict)] if resume else []
        manifest: dict[str, Any] = {
            "kind": "sbn-bench training study", "study_version": STUDY_VERSION, "preset": preset,
            "description": STUDY_PRESETS[preset].description, "settings": s.to_json(),
            "settings_fingerprint": fp, "estimators": list(ests), "seeds": list(seeds),
            # the executor that trained the cells (a resume that trains none keeps the earlier one;
            # every invocation's is in "runs")
            "executor": executor if todo or not old.get("executor") else old["executor"],
            "status": "running", "versions": _versions(), "plugins": plugin_records,
            # the earlier invocations' records from the start: a session killed outright (SIGKILL)
            # must not lose them
            **({"runs": earlier_runs} if earlier_runs else {})}
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
        job = functools.partial(train_cell, settings=s)
        config = RunConfig(problems=(ProblemSpec(preset=preset),), threads=s.threads, cell_timeout=None)

        def tasks() -> Iterator[tuple[Cell, CellContext]]:
            for e, sd in todo:
                prob = problems.digits_problem(preset, sd)
                yield (Cell("job", preset, "train", e, sd),
                       CellContext(prob, reg.create(e), None, config, job=job,
                                   plugins=tuple(reg.sources)))

        def runs_so_far(wall_s: float, **extra: Any) -> list[dict[str, Any]]:
            """The earlier invocations' records (when resuming) and this one's."""
            return [*earlier_runs, {"wall_s": wall_s, "ran": done - resumed, "resumed": resumed,
                               "executor": executor, **extra}]

        done = resumed
        interrupted = True  # until the loop ends: Ctrl-C (or any error) leaves the study resumable
        ex = None
        try:
            ex = make_executor(executor)  # inside: a Ctrl-C while it starts is an interruption too
            for res in ex.map(tasks()):
                records[(res.cell.estimator, int(res.cell.seed or 0))] = rec = _record(
                    res, fp, versions[res.cell.estimator])
                atomic_write_text(cell_file(d, res.cell.estimator, int(res.cell.seed or 0)),
                                  json.dumps(_json_safe(rec)) + "\n")
                done += 1
                if progress is not None:
                    what = "failed" if res.failed else f"{res.seconds:.1f} s"
                    progress(done, len(cells), f"{res.cell.estimator} seed {res.cell.seed}: {what}")
            interrupted = False
        finally:
            if ex is not None:
                ex.close()
            if interrupted:  # say so in study.json, and count this invocation's cells and time
                manifest.update(status="interrupted",
                                runs=runs_so_far(time.perf_counter() - t0, interrupted=True))
                atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")

        curves, probes_, failures = [], [], []
        for e, sd in cells:
            rec = records[(e, sd)]
            if rec["status"] != "ok":
                failures.append({"estimator": e, "seed": sd, "stage": rec.get("stage", ""),
                                 "error": rec.get("error", "")})
                continue
            curves += [_from_json(r) for r in rec["curves"]]
            probes_ += [_from_json(r) for r in rec["probes"]]
        _write_csv(d / CURVES_NAME, CURVE_COLUMNS, curves)
        _write_csv(d / PROBES_NAME, PROBE_COLUMNS, probes_)
        _write_csv(d / FAILURES_NAME, ["estimator", "seed", "stage", "error"], failures)
        wall = time.perf_counter() - t0
        runs = runs_so_far(wall)
        manifest.update(status="complete" if not failures else "complete with failures",
                        cells=len(cells), ran=len(cells) - resumed, resumed=resumed,
                        failed=len(failures), wall_s=wall, runs=runs,
                        cell_seconds=sum(float(r.get("seconds") or 0.0) for r in records.values()))
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
        return StudyResult(d, s, ests, seeds, curves, probes_, failures, len(cells) - resumed, resumed,
                           wall)


def _record(res: CellResult, fp: str, version: str) -> dict[str, Any]:
    base = {"estimator": res.cell.estimator, "seed": res.cell.seed, "settings_fingerprint": fp,
            "estimator_version": version, "stream": model.STREAM_VERSION, "seconds": res.seconds,
            # the session's processor (a resumed study may mix them: README, "Reproducible")
            "processor": processor()}
    if res.failed:
        f = res.rows[0] if res.rows else {}
        return {**base, "status": "failed", "stage": f.get("stage", ""), "error": f.get("error", "")}
    curves = [{k: v for k, v in r.items() if k != "table"} for r in res.rows if r["table"] == "curve"]
    probes_ = [{k: v for k, v in r.items() if k != "table"} for r in res.rows if r["table"] == "probe"]
    return {**base, "status": "ok", "curves": curves, "probes": probes_}


def _versions() -> dict[str, Any]:
    env = environment()
    return {"sbn_bench": env["packages"]["sbn_bench"], "torch": env["packages"]["torch"],
            "python": env["python"], "platform": env["platform"], "commit": env["git_commit"],
            "cpus": os.cpu_count(), "cpu": env["cpu"], "cpu_capability": env["cpu_capability"],
            "malloc": malloc.policy(), "stream": model.STREAM_VERSION}


def _unreadable(d: Path, why: str, action: str = "resume") -> StudyError:
    return StudyError(f"cannot {action} the study in {str(d)!r}: its {STUDY_NAME} cannot be read "
                      f"({why}); use another folder (or remove this one to start over)",
                      argument="out", value=str(d / STUDY_NAME),
                      expected=f"a {STUDY_NAME} written by a training study")


def _read_study(d: Path, action: str = "resume") -> dict[str, Any]:
    """The study.json of the study in ``d`` (a JSON object).

    Raises:
        StudyError: it cannot be read or is not a JSON object (``cannot {action} the study``).
    """
    try:
        old = json.loads((d / STUDY_NAME).read_text(encoding="utf-8"))
        if not isinstance(old, dict):
            raise ValueError(f"it is a JSON {type(old).__name__}, not an object")
    except (OSError, ValueError) as e:
        raise _unreadable(d, str(e), action) from None
    return old


def resume_study(out: str | os.PathLike[str], *, estimators: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None,
                 plugins: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
                 executor: str = "auto", progress: ProgressFn | None = None,
                 warn: Callable[[str], None] | None = None, **settings: Any) -> StudyResult:
    """Continue the study in ``out`` with its own preset, settings, estimators, seeds and plugin
    files, as recorded in its ``study.json`` (``sbn-bench train --out DIR --resume``): only the
    cells without a finished result run. Given ``estimators`` or ``seeds`` replace the recorded
    ones (more extend the study; :func:`run_study` refuses fewer); given ``plugins`` replace the
    recorded files (files that moved: their content must be the same); ``settings``
    (:class:`StudySettings` fields) replace recorded ones, which :func:`run_study` refuses unless
    equal.

    Raises:
        StudyError: ``out`` holds no readable study, or a recorded plugin file is missing; and what
            :func:`run_study` raises.
        TrainArgumentError: a ``settings`` name that is not a study setting.
    """
    check_path(out, "out")
    d = Path(out)
    if not (d / STUDY_NAME).is_file():
        raise StudyError(f"argument out={str(d)!r} holds no training study ({STUDY_NAME}); start "
                         "one with sbn-bench train --preset NAME --seeds …", argument="out",
                         value=str(d), expected=f"a folder with a {STUDY_NAME}")
    old = _read_study(d)
    try:
        preset, recorded = old["preset"], dict(old["settings"])
        base = StudySettings(**{k: v for k, v in recorded.items() if k in _SETTING_NAMES})
    except (KeyError, TypeError, ValueError) as e:
        raise _unreadable(d, f"{type(e).__name__}: {e}") from None
    _check_setting_names(settings)
    if plugins is None:
        plugins = [r["path"] for r in old.get("plugins") or [] if isinstance(r, dict) and "path" in r]
        gone = [p for p in plugins if not Path(p).is_file()]
        if gone:
            raise StudyError(f"cannot resume the study in {str(d)!r}: its plugin file {gone[0]!r} "
                             "is missing; give the file (moved, under any path) with --plugin",
                             argument="plugins", value=gone[0], expected="an existing plugin file")
    return run_study(preset, out=d,
                     estimators=old.get("estimators") if estimators is None else estimators,
                     seeds=old.get("seeds") if seeds is None else seeds,
                     settings=dataclasses.replace(base, **settings), executor=executor,
                     resume=True, progress=progress, plugins=plugins, warn=warn)


def load_study(out: str | os.PathLike[str]) -> tuple[dict[str, Any], Any, Any]:
    """``(study.json, curves, probes)`` of a study folder, the tables as pandas DataFrames.

    Raises:
        StudyError: no study in ``out``.
    """
    check_path(out, "out")
    import pandas as pd

    d = Path(out)
    if not (d / STUDY_NAME).is_file() or not (d / CURVES_NAME).is_file():
        raise StudyError(f"argument out={str(d)!r} holds no finished training study "
                         f"({STUDY_NAME} and {CURVES_NAME}); run sbn-bench train --seeds first",
                         argument="out")
    again = f"sbn-bench train --out {str(d)!r} --resume writes it again from the study's cells"
    manifest = _read_study(d, "load")
    settings = manifest.get("settings")
    if not isinstance(manifest.get("preset"), str) or not isinstance(settings, dict) \
            or not is_integer(settings.get("epochs")) \
            or not isinstance(manifest.get("estimators"), list) \
            or not isinstance(manifest.get("seeds"), list) \
            or not all(is_integer(s) for s in manifest["seeds"]):
        raise StudyError(f"the study in {str(d)!r}: its {STUDY_NAME} is not a study's record (it "
                         "needs preset, settings with epochs, estimators and seeds)", argument="out")

    def table(name: str, columns: Sequence[str]) -> Any:
        path = d / name
        try:
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):  # a write cut short: rows are missing
                raise ValueError("cut off mid-row")
            df = pd.read_csv(io.BytesIO(data))
        except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise StudyError(f"the study in {str(d)!r}: its {name} cannot be read ({e}); {again}",
                             argument="out") from None
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise StudyError(f"the study in {str(d)!r}: its {name} has no column "
                             f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}; {again}",
                             argument="out")
        return df

    curves = table(CURVES_NAME, CURVE_COLUMNS)
    probes_ = table(PROBES_NAME, PROBE_COLUMNS) if (d / PROBES_NAME).is_file() else pd.DataFrame(
        columns=PROBE_COLUMNS)
    for name, df in ((CURVES_NAME, curves), (PROBES_NAME, probes_)):
        for col in ("seed", "epoch"):
            if not pd.api.types.is_integer_dtype(df[col]) and len(df):
                raise StudyError(f"the study in {str(d)!r}: its {name} has a {col} that is not an "
                                 f"integer; {again}", argument="out")
    if str(manifest.get("status", "")).startswith("complete"):
        # a finished study's tables hold every cell that did not fail (a file cut at a row boundary
        # reads as a shorter table)
        failed = set()
        if (d / FAILURES_NAME).is_file():
            with contextlib.suppress(OSError, ValueError, pd.errors.EmptyDataError, KeyError):
                f = pd.read_csv(d / FAILURES_NAME)
                failed = {(str(e), int(s)) for e, s in zip(f["estimator"], f["seed"])}
        have = {(str(e), int(s), int(ep)) for e, s, ep in zip(curves["estimator"], curves["seed"],
                                                              curves["epoch"])}
        last = int(settings["epochs"])
        lost = [f"{e} seed {s}" for e in manifest["estimators"] for s in manifest["seeds"]
                if (str(e), int(s)) not in failed
                and not {(str(e), int(s), 0), (str(e), int(s), last)} <= have]
        if lost:
            raise StudyError(f"the study in {str(d)!r}: its {CURVES_NAME} lacks the rows of "
                             f"{len(lost)} finished cell(s) ({', '.join(lost[:3])}"
                             f"{', …' if len(lost) > 3 else ''}); {again}", argument="out")
    return manifest, curves, probes_


__all__ = ["CURVE_COLUMNS", "EVAL_BINARISATION_SEED", "PROBE_COLUMNS", "STUDY_PRESETS", "EvalSet",
           "ProbeReference", "StudyError", "StudyPreset", "StudyResult", "StudySettings",
           "cell_file", "eval_sets", "evaluate", "load_study", "preset_settings", "probe",
           "probe_reference", "resume_study", "run_study", "train_cell"]

"""Planning a run before any work: the checks that refuse what cannot work, the list of cells and the
manifest (STYLE 7).

Unsupported combinations are refused before any work (:func:`check_combinations`): an estimator
that does not support a problem's noise or loss, ``mode="exact"`` where exact mode is impossible,
a problem too large for the exact reference. Requests that cannot fit in the memory budget are
refused by :func:`~sbn_bench.runner.memory.check_memory`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from sbn_bench import malloc, model, schema
from sbn_bench.config import DTYPES, RunConfig, parse_reference
from sbn_bench.estimators import Estimator, Registry, UnsupportedProblem, load_plugins
from sbn_bench.problems import Problem
from sbn_bench.provenance import environment, file_record
from sbn_bench.reference import ReferenceTooLarge, check_shape, check_size, num_paths
from sbn_bench.runner.cells import Cell, network_key
from sbn_bench.runner.executors import check_executor
from sbn_bench.runner.memory import ExactImpossible, RunError, check_memory, choose_mode
from sbn_bench.units import format_bytes

ProblemCheckpoint = tuple[str, str, Problem]
"""``(problem name, checkpoint label, problem)``."""


@dataclass
class Plan:
    """What a run will do, checked: the estimators, the registry they came from, the problem
    checkpoints, the cells in run order and the warnings to print."""

    estimators: list[Estimator]
    registry: Registry
    problems: list[ProblemCheckpoint]
    cells: list[Cell] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    """``(problem, checkpoint, estimator)`` pairs left out: a default estimator that does not
    support the problem."""
    groups: dict[tuple[str, str], tuple[Estimator, ...]] = field(default_factory=dict)
    """The estimators of each throughput cell, by its (problem, checkpoint)."""
    references: dict[tuple[str, str], str] = field(default_factory=dict)
    """The kind of reference gradient of each (problem, checkpoint): ``"exact"`` or ``"mc"``
    (``config.reference``; ``auto`` resolved by the size guard)."""
    mc_plans: dict[tuple[str, str], Any] = field(default_factory=dict)
    """The Monte-Carlo references' R and N (:class:`sbn_bench.runner.mcref.ReferencePlan`) by
    (problem, checkpoint), chosen before any work (:func:`sbn_bench.runner.mcref.plan_reference`)."""

    def problem(self, name: str, checkpoint: str) -> Problem:
        return next(p for n, c, p in self.problems if (n, c) == (name, checkpoint))

    def estimator(self, spec: str) -> Estimator:
        return next(e for e in self.estimators if e.spec == spec)

    def group(self, cell: Cell) -> tuple[Estimator, ...]:
        """The estimators a throughput cell measures together."""
        return self.groups[(cell.problem, cell.checkpoint)]


def check_device(config: RunConfig) -> None:
    """Refuse ``device="cuda"`` where CUDA is not available."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device='cuda' was requested but CUDA is not available (torch "
                       f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use "
                       "--device cpu", argument="device", value="cuda",
                       expected="'cpu' on a machine without CUDA")


def reference_kinds(config: RunConfig, problems: Sequence[ProblemCheckpoint]
                    ) -> dict[tuple[str, str], str]:
    """``"exact"`` or ``"mc"`` per (problem, checkpoint): ``config.reference`` with ``auto``
    resolved by the exact reference's size guard (:func:`sbn_bench.reference.check_size` under
    ``config.max_exact_bytes``): exact where it allows, Monte Carlo elsewhere (SPEC §8)."""
    kind = parse_reference(config.reference)[0]
    out: dict[tuple[str, str], str] = {}
    for pname, label, prob in problems:
        if kind != "auto":
            out[(pname, label)] = kind
            continue
        try:
            check_size(prob, max_bytes=config.max_exact_bytes)
            out[(pname, label)] = "exact"
        except ReferenceTooLarge:
            out[(pname, label)] = "mc"
    return out


def check_combinations(config: RunConfig, problems: Sequence[ProblemCheckpoint],
                       estimators: Sequence[Estimator],
                       skipped: Sequence[tuple[str, str, str]] = (),
                       references: dict[tuple[str, str], str] | None = None) -> None:
    """Refuse, before any work, what the configuration already makes impossible (STYLE 3, SPEC §2).

    * a (problem/checkpoint, estimator) pair whose noise or loss the estimator does not support
      (:meth:`Estimator.check_supports`);
    * with ``config.mode == "exact"``, a pair for which exact mode is impossible
      (:func:`~sbn_bench.runner.memory.choose_mode`: no path surrogate, over ``max_paths``, path
      tables over the budget);
    * a problem too large for the exact reference (:func:`sbn_bench.reference.check_size` under
      ``config.max_exact_bytes``), with the estimated cost and the limit, where the exact
      reference is used (``references``, :func:`reference_kinds`; default: everywhere);
    * ``samples < 2`` where a pair would be measured by Monte Carlo (the variance of one sample is
      undefined).

    What only the computation can tell (an estimator raising or returning NaN/Inf, a non-finite
    reference) stays a recorded failure of its cell. ``skipped`` pairs are left out.

    Raises:
        RunError: listing every refused pair or problem with its reason, and what to change.
    """
    unsupported: list[str] = []
    no_exact: list[str] = []
    too_large: list[str] = []
    one_sample: list[str] = []
    sized: set[tuple[tuple[int, ...], int]] = set()
    for pname, label, prob in problems:
        where = f"{pname}/{label}"
        key = (prob.widths, prob.num_data)
        exact_ref = references is None or references.get((pname, label)) == "exact"
        if exact_ref and key not in sized:
            sized.add(key)
            try:
                check_size(prob, max_bytes=config.max_exact_bytes)
            except ReferenceTooLarge as e:
                too_large.append(str(e))
        for est in estimators:
            if (pname, label, est.spec) in skipped:
                continue
            try:
                est.check_supports(prob)
            except UnsupportedProblem as e:
                unsupported.append(f"{where} × {est.spec}: {e}")
                continue
            try:
                mode = choose_mode(est, prob, config.mode, config.max_paths,
                                   memory_budget=config.memory_budget)
            except ExactImpossible as e:
                no_exact.append(f"{where} × {est.spec}: {e.reason}")
                continue
            if mode == "mc" and config.samples < 2:
                one_sample.append(f"{where} × {est.spec}")
    parts: list[str] = []
    if unsupported:
        parts.append(f"{len(unsupported)} (problem/checkpoint, estimator) pair(s) are not supported: "
                     + "; ".join(unsupported) + " (remove these estimators from --estimators, or "
                     "use a problem they support (its noise, loss, kind of network or number of stochastic "
                     "layers, as each reason says); see sbn-bench list)")
    if no_exact:
        parts.append(f"--mode exact is impossible for {len(no_exact)} (problem/checkpoint, "
                     f"estimator) pair(s): " + "; ".join(no_exact)
                     + " (use --mode auto, which is exact where possible, or --mode mc)")
    if too_large:
        parts.append("; ".join(too_large) + " (SPEC §2: with --reference exact every metric needs "
                     "the exact gradient; --reference auto uses a Monte-Carlo reference instead)")
    if one_sample:
        parts.append(f"samples={config.samples} but {len(one_sample)} (problem/checkpoint, "
                     f"estimator) pair(s) are measured by Monte Carlo, whose variance needs at least "
                     f"2 samples: {'; '.join(one_sample[:5])}"
                     + (f"; … ({len(one_sample) - 5} more)" if len(one_sample) > 5 else "")
                     + " (use samples ≥ 2)")
    if parts:
        argument = ("estimators" if unsupported else "mode" if no_exact else
                    "max_exact_bytes" if too_large else "samples")
        raise RunError("refused before any work: " + ". ".join(parts), argument=argument)


def check_distinct(estimators: Sequence[Estimator]) -> None:
    """Refuse an estimator listed twice (by its canonical spec: ``psa`` and ``psa:`` are one)."""
    specs = [e.spec for e in estimators]
    dup = sorted({s for s in specs if specs.count(s) > 1})
    if dup:
        raise RunError(f"estimators lists {', '.join(dup)} more than once", argument="estimators",
                       value=list(specs), expected="each estimator once")


def check_hyperparameters(estimators: Sequence[Estimator]) -> None:
    """Every hyperparameter must be JSON (the manifest records it, a rerun rebuilds it from there).

    Raises:
        RunError: naming the estimator, the hyperparameter and its type.
    """
    for e in estimators:
        for k, v in e.hyperparams:
            try:
                json.dumps(v, allow_nan=True)
            except (TypeError, ValueError):
                raise RunError(f"estimator {e.spec!r}: hyperparameter {k}={v!r} is a "
                               f"{type(v).__name__}, which a run manifest cannot record; use a "
                               "number, string or bool", argument=f"{e.name}:{k}", value=v,
                               expected="a JSON value (number, string, bool)") from None


def check_shapes(config: RunConfig) -> None:
    """Refuse, before any problem is built, a problem whose shape the exact reference cannot take
    (so that the refusal comes before the data are allocated)."""
    kind = parse_reference(config.reference)[0]
    for spec in config.problems:
        shape = spec.reference_shape()
        if shape is not None:
            try:
                check_shape(shape["widths"], shape["num_data"], config.max_exact_bytes,  # type: ignore[arg-type]
                            spec.label, loss=shape["loss"], head=shape["head"],  # type: ignore[arg-type]
                            arch=shape["arch"])  # type: ignore[arg-type]
            except ReferenceTooLarge as e:
                # a Monte-Carlo reference (auto, mc) takes it, unless its data alone are over the
                # limit (they would be allocated before anything else could refuse it)
                data_bytes = int(shape["num_data"]) * int(shape["widths"][0]) * 8  # type: ignore[index]
                if kind != "exact" and data_bytes <= config.max_exact_bytes:
                    continue
                if kind != "exact":
                    raise RunError(
                        f"refused before any work: problem {spec.label!r} (D={shape['num_data']}): "
                        f"its data alone take {format_bytes(data_bytes)} in float64, over "
                        f"max_exact_bytes={format_bytes(config.max_exact_bytes)} (the most a problem "
                        "may allocate before the Monte-Carlo reference can be sized); use fewer "
                        "data points or raise --max-exact-bytes", argument="max_exact_bytes",
                        value=config.max_exact_bytes,
                        expected=f"at least {format_bytes(data_bytes)}, or fewer data points") from None
                raise RunError(f"refused before any work: {e} (SPEC §2: with --reference exact "
                               "every metric needs the exact gradient; --reference auto uses a "
                               "Monte-Carlo reference instead)", argument="max_exact_bytes",
                               value=config.max_exact_bytes, expected=e.expected) from None


def check_dtype_range(config: RunConfig, problems: Sequence[ProblemCheckpoint]) -> None:
    """Refuse a problem whose finite values overflow the run's sampling dtype: in float32 a
    weight of 1e300 becomes Inf, and every cell would fail as if the file held Inf.

    Raises:
        RunError: naming the problem, checkpoint, array and largest value, and ``--dtype float64``.
    """
    if config.dtype == "float64":
        return
    dtype = DTYPES[config.dtype]
    top = torch.finfo(dtype).max
    for pname, label, prob in problems:
        arrays = {**prob.params, "x": prob.x}
        if prob.y.is_floating_point():
            arrays["y"] = prob.y
        for key, t in arrays.items():
            lost = torch.isfinite(t) & torch.isinf(t.to(dtype))  # finite here, Inf once converted
            if lost.any():
                big = t[lost].abs()
                raise RunError(f"problem {pname!r} (checkpoint {label!r}): array {key!r} holds "
                               f"{float(big.max()):.3g}, which becomes Inf in {config.dtype} (its largest "
                               f"value is ±{top:.3g}): the estimators would see Inf; use --dtype "
                               "float64 (dtype='float64')", argument="dtype", value=config.dtype,
                               expected="float64 for this problem")


def prepare(config: RunConfig) -> Plan:
    """Everything checked before any work: device, plugins, estimators, problem sizes (before the
    problems are built), supported combinations and the reference's size
    (:func:`check_combinations`), memory, cells.

    With the default estimators (``config.estimators`` None), an estimator that does not support a
    problem is left out of that problem with a warning; estimators asked for by name must support
    every problem.

    Raises:
        RunError / ConfigError / EstimatorSpecError / ProblemError: with the reason.
    """
    check_device(config)
    check_executor(config.executor)
    specs_in = config.estimator_specs
    reg, warnings = load_plugins(config.plugins, [s.split(":")[0].strip() for s in specs_in])
    ests = [reg.create(s) for s in specs_in]
    check_distinct(ests)
    check_hyperparameters(ests)
    check_shapes(config)
    problems: list[ProblemCheckpoint] = []
    names: list[str] = []
    for spec in config.problems:
        loaded = spec.load()
        name = loaded[0][1].name
        if name in names:
            raise RunError(f"two problems are named {name!r}; give them distinct names",
                           argument="problems", value=name, expected="distinct problem names")
        names.append(name)
        problems += [(name, label, p) for label, p in loaded]
    skipped: list[tuple[str, str, str]] = []
    if config.estimators is None:
        for pname, label, prob in problems:
            for e in ests:
                why = e.unsupported(prob)
                if why is not None:
                    skipped.append((pname, label, e.spec))
                    warnings.append(f"default estimator {e.spec!r} left out of {pname}/{label}: "
                                    f"{why}")
    check_dtype_range(config, problems)
    references = reference_kinds(config, problems)
    check_combinations(config, problems, ests, skipped, references)
    check_memory(config, problems, ests)
    plan = Plan(ests, reg, problems, warnings=warnings, skipped=skipped, references=references)
    measured: set[str] = set()
    for pname, label, prob in problems:
        mine = [e for e in ests if (pname, label, e.spec) not in skipped]
        key = network_key(prob)
        if config.throughput.enabled and key not in measured and mine:
            # one throughput cell per network shape: every estimator on it, rounds interleaved
            measured.add(key)
            plan.groups[(pname, label)] = tuple(mine)
            plan.cells.append(Cell("throughput", pname, label, ",".join(e.spec for e in mine)))
        for e in mine:
            plan.cells += [Cell("metrics", pname, label, e.spec, s) for s in config.seeds]
    return plan


def build_manifest(config: RunConfig, plan: Plan) -> dict[str, Any]:
    """The manifest (STYLE 7): schema version, config, seeds, versions (the random stream's too),
    device, commit, estimator specs and versions, problem fingerprints, and what a rerun needs
    (the working directory that relative paths in ``config`` refer to, the plugin files' hashes)."""
    env = environment()
    dev: dict[str, Any] = {"type": config.device, "dtype": config.dtype,
                           "torch_threads": config.threads, "malloc": malloc.policy(),
                           # the processor kind (a record, not part of the run's identity)
                           "cpu": env["cpu"], "cpu_capability": env["cpu_capability"]}
    if config.device == "cuda":
        dev["name"] = torch.cuda.get_device_name(0)
        dev["cuda"] = torch.version.cuda
    else:
        dev["name"] = env["processor"]
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
        "config": config.to_dict(),
        "cwd": os.getcwd(),
        "seeds": list(config.seeds),
        "packages": env["packages"],
        # what a seed draws (sbn_bench.model.STREAM_VERSION): cells of two streams never mix
        "random_stream": model.STREAM_VERSION,
        "python": env["python"],
        "platform": env["platform"],
        "git_commit": env["git_commit"],
        "device": dev,
        "plugins": [file_record(p) for p in config.plugins],
        "estimators": [{"spec": e.spec, "name": e.name, "version": e.version, "family": e.family,
                        "hyperparams": dict(e.hyperparams),
                        "unbiased": e.unbiased, "randomness": e.randomness,
                        "origin": plan.registry.origins.get(e.name)} for e in plan.estimators],
        "references": [_reference_record(plan, n, c) for n, c, _ in plan.problems],
        "problems": [{"problem": n, "checkpoint": c, "arch": p.arch, "num_data": p.num_data,
                      "loss": p.loss, "noise": p.noise, "paths_per_point": num_paths(p.widths),
                      "source": p.meta.get("source"), "sha256": p.fingerprint()}
                     for n, c, p in plan.problems],
        # the planned cells (a report of a run killed now counts against it); updated at the end
        "cells": {"total": len(plan.cells)},
    }


def _reference_record(plan: Plan, problem: str, checkpoint: str) -> dict[str, Any]:
    """The manifest's record of a problem checkpoint's reference: its kind and, for a Monte-Carlo
    one, R, N, the target ε and the pilot that chose them (the ε reached is added when computed)."""
    kind = plan.references.get((problem, checkpoint), "exact")
    rec: dict[str, Any] = {"problem": problem, "checkpoint": checkpoint, "kind": kind}
    mp = plan.mc_plans.get((problem, checkpoint))
    if mp is not None:
        rec.update(estimator=mp.estimator, samples=mp.samples, target_rel_error=mp.target_rel_error,
                   target=mp.target, set_by_group=mp.group, seconds_per_sample=mp.seconds_per_sample,
                   pilot=[dict(p.__dict__) for p in mp.pilot])
    return rec

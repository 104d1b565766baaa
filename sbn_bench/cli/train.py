"""``sbn-bench train``: train a problem's network with an estimator (:func:`sbn_bench.train.train`)."""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, cast

import click

from sbn_bench import train as training
from sbn_bench import train_report, train_study
from sbn_bench.cli.base import FolderPath, interrupted_status, options_only, without_name
from sbn_bench.cli.common import (
    build_problem,
    executor_callback,
    friendly_errors,
    given,
    plugin_option,
    problem_options,
    problem_spec,
    size_option,
    warn,
)
from sbn_bench.config import MAX_SEED, parse_seeds
from sbn_bench.errors import SbnBenchError
from sbn_bench.estimators import load_plugins, split_specs
from sbn_bench.reference import DEFAULT_MAX_BYTES

_OPTION_OF = {"optimizer": "--optimizer", "lr": "--lr", "momentum": "--momentum",
              "batch_size": "--batch-size", "epochs": "--epochs", "checkpoints": "--checkpoints",
              "seed": "--train-seed", "log_every": "--log-every",
              "max_exact_bytes": "--max-exact-bytes", "out_dir": "--out",
              "estimator": "--estimator", "memory_budget": "--memory-budget"}


def _bad(e: SbnBenchError, seed_option: str = "--train-seed") -> click.ClickException:
    """The library's refusal as click's ``Invalid value for '--option': …`` (exit status 2); a
    refused ``--out`` folder (what it holds: ``out_dir`` of a training, ``out`` of a study) is exit
    status 1, as for ``sbn-bench run``."""
    if e.argument in ("out_dir", "out"):
        return click.ClickException(f"--out {options_only(without_name(str(e), e.argument))}")
    if e.argument == "problem":  # the problem's content (a --problem file's weights): exit 1
        return click.ClickException(options_only(str(e)))
    ctx = click.get_current_context(silent=True)
    if e.argument == "memory_budget":
        text = str(e).replace("memory_budget", "--memory-budget").replace("batch_size", "--batch-size")
        if ctx is None or not given(ctx, "memory_budget"):
            # a step over the default budget: the request's fault, not a refused option (as for run)
            return click.ClickException(text)
        return click.BadParameter(text, param_hint="'--memory-budget'")
    option = seed_option if e.argument == "seed" else _OPTION_OF.get(e.argument, e.argument)
    return click.BadParameter(options_only(without_name(str(e), e.argument or "")),
                              param_hint=f"'{option}'")


@click.command()
@problem_options(command="train")
@plugin_option
@click.option("--estimator", "estimator_spec", default="reinforce", show_default=True,
              help="Estimator spec, e.g. psa, concrete:tau=0.1 or exact (see sbn-bench list).")
@click.option("--optimizer", type=click.Choice(training.OPTIMIZERS), default="sgd",
              help="SGD with momentum, or Adam (default betas) [default: sgd; a study: its "
                   "preset's].")
@click.option("--lr", type=float, default=0.03,
              help="Learning rate (> 0) [default: 0.03; a study: its preset's].")
@click.option("--momentum", type=float, default=None,
              help=f"SGD momentum in [0, 1) [default: {training.DEFAULT_SGD_MOMENTUM}]; "
                   "not allowed with --optimizer adam.")
@click.option("--batch-size", type=int, default=10,
              help="Data points per step, 1..D (larger than D is refused) [default: 10; a study: "
                   "its preset's].")
@click.option("--epochs", type=int, default=2000,
              help="Passes over the data [default: 2000; a study: its preset's].")
@click.option("--checkpoints", "checkpoints_text", default="", metavar="E1,E2,...",
              help="Epochs after which to save the parameters, each in 1..EPOCHS, e.g. 1,100,2000. "
                   "The initial parameters (epoch 0) and the last epoch are always saved.")
@click.option("--train-seed", type=click.IntRange(0, MAX_SEED), default=None,
              help="Seed of the data order and the estimator's noise [default: --seed].")
@click.option("--out", "out_dir", default=None,
              type=FolderPath(),
              help="Output directory: checkpoint_epoch{E}.npz, train_log.csv, loss_curve.png, "
                   "train_manifest.json; for a study (--estimators/--seeds): study.json, cells/, "
                   "curves.csv, probes.csv, report.md, report.html, figures/. Required, except "
                   "with --publish (its own folder).")
@click.option("--log-every", type=int, default=1, show_default=True,
              help="Compute the exact objective every this many epochs (and at checkpoints).")
@click.option("--overwrite", is_flag=True,
              help="Remove the files of a previous training in --out first (without it, such a "
                   "folder is refused).")
@size_option("--max-exact-bytes", DEFAULT_MAX_BYTES,
             "Memory limit of the exact reference; above it training still runs but the exact "
             "objective is not logged (NaN, with a note in the manifest).")
@size_option("--memory-budget", None,
             "Memory one step's gradient sample may take (estimated, an upper bound); a step over it "
             "is refused before any work.", default_text="half the machine's memory")
@click.option("--estimators", "estimators_text", default=None, metavar="SPEC,...",
              help="A training study: train each of these estimators (e.g. psa,st,arms:k=4) on a "
                   f"digits preset ({', '.join(train_study.STUDY_PRESETS)}), once per --seeds; "
                   "default: the preset's.")
@click.option("--seeds", "seeds_text", default=None, metavar="0-2",
              help="A training study's seeds (initial parameters, data order, noise), e.g. 0-4 "
                   "or 0,3 [default: 0-2].")
@click.option("--executor", default="auto", show_default=True, callback=executor_callback,
              help="Where a study's cells run: auto (a worker process per CPU for two or more "
                   "cells), serial, processes[:N] or dask[:ADDRESS|:N].")
@click.option("--resume", is_flag=True,
              help="Finish the study in --out: only the cells without a finished result run.")
@click.option("--publish", "publish_dir", default=None,
              type=FolderPath(),
              help="Run the published training benchmark (every study preset at its defaults, "
                   "seeds 0-2) into this folder, resuming, and write its index README.md.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but warnings and errors.")
@click.pass_context
@friendly_errors
def train(ctx: click.Context, problem_file: Path | None, arch: str | None, preset: str | None,
          seed: int,
          data_points: int, loss: str, noise: str, plugins: tuple[Path, ...], estimator_spec: str,
          optimizer: str, lr: float, momentum: float | None, batch_size: int, epochs: int,
          checkpoints_text: str, train_seed: int | None, out_dir: Path, log_every: int,
          overwrite: bool, max_exact_bytes: int, memory_budget: int | None,
          estimators_text: str | None,
          seeds_text: str | None, executor: str, resume: bool, publish_dir: Path | None,
          quiet: bool) -> None:
    """Train a problem's network with a gradient estimator; write checkpoints (problem files),
    a training log (CSV), a loss curve (PNG) and a manifest (JSON) to --out.

    Each step takes one gradient sample of the estimator on a minibatch (one noise draw per data
    point). The defaults are the paper's settings (SPEC §6): REINFORCE, batch 10, SGD lr 0.03,
    momentum 0.9, 2000 epochs. --seed selects the --arch/--preset problem and, unless
    --train-seed is given, also seeds training.

    Example: sbn-bench train --preset paper --checkpoints 1,100,2000 --out runs/paper-train

    With --estimators and/or --seeds: a training study on a digits preset, every estimator once
    per seed, through --executor, with per-epoch train/test objectives, accuracy or the VAE's
    IWAE bound, seconds per epoch and gradient probes, then a report with the paper's training
    claims (sbn_bench.train_study, sbn_bench.train_report). The preset's settings are the
    defaults; --epochs, --batch-size, --lr and --optimizer override them when given.

    Example: sbn-bench train --preset digits-vae --estimators psa,st,disarm --seeds 0-2
    --executor processes:2 --out runs/vae-study

    sbn-bench train --out runs/vae-study --resume continues a study with its own preset,
    settings, estimators, seeds and --plugin files (study.json): only missing cells train.
    """
    if publish_dir is not None or estimators_text is not None or seeds_text is not None or resume:
        _study(ctx, preset, publish_dir, out_dir, estimators_text, seeds_text, executor, resume,
               quiet, plugins, {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size),
                                         ("lr", lr), ("optimizer", optimizer)) if given(ctx, k)})
        return
    if out_dir is None:
        raise click.UsageError("Missing option '--out' (the output directory).")
    if resume or given(ctx, "executor"):
        raise click.UsageError("--resume and --executor are options of a training study "
                               "(--estimators / --seeds)")
    try:
        checkpoints = training.parse_checkpoints(checkpoints_text)
    except training.TrainArgumentError as e:
        raise _bad(e) from None
    # a --plugin file that cannot be loaded is an error before any work; broken factories in a
    # loadable file are warnings unless the one requested
    try:
        several = len(split_specs(estimator_spec)) > 1
    except SbnBenchError:
        several = False  # an empty item: the spec's own refusal below
    if several:
        raise click.BadParameter(f"{estimator_spec!r} is a list: --estimator trains one estimator "
                                 "(a spec such as psa or concrete:tau=0.1); --estimators "
                                 f"{estimator_spec} with a study --preset trains several",
                                 param_hint="'--estimator'")
    reg, warnings = load_plugins(plugins, [estimator_spec.split(":")[0].strip()])
    for w in warnings:
        warn(w)
    problem = build_problem(problem_spec(ctx, problem_file, arch, preset, seed, data_points, loss,
                                         noise, seed_has_other_use=True))
    estimator = reg.create(estimator_spec)
    show_progress = not quiet and sys.stderr.isatty()
    bar_ctx = (click.progressbar(length=epochs, label=f"training {estimator.spec}", file=sys.stderr,
                                 show_pos=True, show_eta=True)
               if show_progress else contextlib.nullcontext(None))
    with bar_ctx as bar:
        def progress(epoch: int, total: int, row: Mapping[str, float]) -> None:
            bar.update(1)

        try:
            result = training.train(
                problem, estimator, optimizer=cast(Literal["sgd", "adam"], optimizer), lr=lr,
                momentum=momentum, batch_size=batch_size, epochs=epochs, checkpoints=checkpoints,
                seed=seed if train_seed is None else train_seed, out_dir=out_dir,
                log_every=log_every, max_exact_bytes=max_exact_bytes,
                progress=progress if bar is not None else None, overwrite=overwrite,
                plugins=plugins, memory_budget=memory_budget)
        except training.TrainArgumentError as e:
            raise _bad(e, "--seed" if train_seed is None else "--train-seed") from None
        except KeyboardInterrupt:
            click.echo(f"\nInterrupted: the checkpoints and log written so far are in {out_dir} "
                       "(a single training does not resume: run it again with --overwrite)"
                       if training.training_files(out_dir) else
                       "\nInterrupted before the training wrote anything: nothing is saved",
                       err=True)
            ctx.exit(interrupted_status())
    if quiet:
        return
    J0, J = result.initial_objective, result.final_objective
    click.echo(f"trained {problem.name} ({problem.arch}, D={problem.num_data}) with "
               f"{estimator.spec}: {result.manifest['steps']} steps in {result.train_s:.3g} s "
               f"({result.manifest['seconds_per_step'] * 1e3:.3f} ms/step), total "
               f"{result.wall_s:.1f} s")
    if result.exact_note is None:
        click.echo(f"exact objective J: {J0:.6g} (epoch 0) -> {J:.6g} (epoch {epochs})")
    else:
        click.echo(f"exact objective not logged: {result.exact_note}")
    click.echo(f"final train loss (epoch mean of sampled losses): "
               f"{result.history[-1]['train_loss']:.6g}")
    click.echo("checkpoints: " + ", ".join(str(p) for _, p in sorted(result.checkpoints.items())))
    click.echo(f"log {result.log_path}, curve {result.curve_path}, manifest {result.manifest_path}")


_SINGLE_ONLY = ("problem_file", "arch", "seed", "momentum", "checkpoints_text", "train_seed", "log_every",
                "overwrite", "max_exact_bytes", "memory_budget", "estimator_spec", "data_points",
                "loss", "noise")


def _study(ctx: click.Context, preset: str | None, publish_dir: Path | None, out_dir: Path | None,
           estimators_text: str | None, seeds_text: str | None, executor: str, resume: bool,
           quiet: bool, plugins: tuple[Path, ...], overrides: dict[str, object]) -> None:
    """A training study (or the published benchmark): parse, call the library, print."""
    for name in _SINGLE_ONLY:
        if given(ctx, name):
            opt = next(p.opts[0] for p in ctx.command.params if p.name == name)
            raise click.UsageError(f"{opt} is an option of a single training, not of a training "
                                   "study (--estimators / --seeds / --publish)")
    try:
        given_seeds = parse_seeds(seeds_text) if seeds_text is not None else None
    except ValueError as e:
        raise click.BadParameter(f"{seeds_text!r}: {e}", param_hint="'--seeds'") from None
    seeds = (0, 1, 2) if given_seeds is None else given_seeds

    def progress(done: int, total: int, message: str) -> None:
        if not quiet:
            click.echo(f"[{done}/{total}] {message}", err=True)

    if publish_dir is not None:
        if preset is not None or estimators_text is not None or overrides or out_dir is not None \
                or plugins:
            raise click.UsageError("--publish runs every study preset at its defaults; it takes "
                                   "only --executor and --seeds")
        try:
            paths = train_report.publish(publish_dir, executor=executor, seeds=seeds,
                                         progress=progress)
        except train_study.StudyError as e:
            if e.argument != "out":
                raise
            # a refused folder is exit status 1, as a refused --out
            raise click.ClickException(f"--publish {options_only(without_name(str(e), 'out'))}") from None
        except KeyboardInterrupt:
            again = " ".join(shlex.quote(a) for a in [
                "sbn-bench", "train", "--publish", str(publish_dir), "--executor", executor,
                *(["--seeds", str(seeds_text)] if seeds_text is not None else [])])
            click.echo(f"\nInterrupted: the studies' finished cells are saved under {publish_dir}; "
                       f"continue with {again} (it resumes them)", err=True)
            ctx.exit(interrupted_status())
        if not quiet:
            click.echo(f"published training benchmark: {paths['md']} and {paths['html']}")
        failed = train_report.failed_studies(publish_dir)
        if failed:  # as a single study whose every cell failed
            tables = ", ".join(str(publish_dir / p / "failures.csv") for p in failed)
            raise click.ClickException(
                f"every cell of the published stud{'ies' if len(failed) > 1 else 'y'} "
                f"{', '.join(failed)} failed (see {tables})")
        return
    resume_own = resume and preset is None  # the study's own preset, settings, estimators, …
    if preset is None and not resume_own:
        raise click.UsageError(
            "a training study (--estimators / --seeds) needs --preset, one of "
            f"{', '.join(train_study.STUDY_PRESETS)} (or --out DIR --resume to continue one)")
    if preset not in train_study.STUDY_PRESETS and not resume_own:
        raise click.BadParameter(f"{preset!r} has no training study; expected one of "
                                 f"{', '.join(train_study.STUDY_PRESETS)}", param_hint="'--preset'")
    if out_dir is None:
        raise click.UsageError("Missing option '--out' (the study's folder).")
    estimators = None if estimators_text is None else split_specs(estimators_text)
    try:
        settings = None if resume_own else train_study.preset_settings(str(preset), **overrides)
    except training.TrainArgumentError as e:
        raise _bad(e) from None
    try:
        if resume_own:
            result = train_study.resume_study(out_dir, estimators=estimators, seeds=given_seeds,
                                              plugins=plugins or None, executor=executor,
                                              progress=progress, warn=warn, **overrides)
        else:
            result = train_study.run_study(str(preset), out=out_dir, estimators=estimators,
                                           seeds=seeds, settings=settings, executor=executor,
                                           resume=resume, progress=progress, plugins=plugins,
                                           warn=warn)
    except train_study.StudyError as e:
        if e.argument != "out":
            raise
        raise _bad(e) from None
    except KeyboardInterrupt:
        saved = out_dir / train_study.STUDY_NAME
        click.echo(f"\nInterrupted: the finished cells are saved in {out_dir}; continue with "
                   f"sbn-bench train --out {shlex.quote(str(out_dir))} --resume" if saved.is_file() else
                   "\nInterrupted before the study started: nothing is saved", err=True)
        ctx.exit(interrupted_status())
    paths = train_report.write_training_report(result.out)
    if not quiet:
        _study_summary(result, paths)
    if result.failures and len(result.failures) == len(result.estimators) * len(result.seeds):
        # as a run whose every statistics cell failed
        raise click.ClickException(f"every cell of the study failed ({len(result.failures)}: see "
                                   f"{result.out}/failures.csv); no cell finished")


def _study_summary(result: train_study.StudyResult, paths: Mapping[str, Path]) -> None:
    preset = result.settings.preset
    click.echo(f"training study {preset}: {len(result.estimators)} estimators x "
               f"{len(result.seeds)} seeds, {result.ran} cells run, {result.resumed} resumed, "
               f"{len(result.failures)} failed, {result.wall_s:.0f} s")
    for f in result.failures:
        click.echo(f"  FAILED {f['estimator']} seed {f['seed']} ({f['stage']}): {f['error']}")
    column, _, label = train_report.merit(preset)
    finals = train_report.final_values(result_frame(result.curves), column)
    for est in result.estimators:
        vals = list(finals.get(est, {}).values())
        if vals:
            click.echo(final_value_line(est, label, vals))
    click.echo(f"report {paths['md']} and {paths['html']}")


def final_value_line(estimator: str, label: str, values: list[float]) -> str:
    """A study summary's line for one estimator: its final value, the mean over its seeds."""
    mean = sum(values) / len(values)
    return f"  {estimator}: final {label} {mean:.4g} " + (
        f"(mean of {len(values)} seeds)" if len(values) > 1 else "(1 seed)")


def result_frame(rows: list[dict[str, object]]):  # noqa: ANN201 - a pandas DataFrame
    import pandas as pd

    return pd.DataFrame(rows)

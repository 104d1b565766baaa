"""``sbn-bench train``: train a problem's network with an estimator (:func:`sbn_bench.train.train`)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, cast

import click

from sbn_bench import train as training
from sbn_bench.cli.common import (
    build_problem,
    friendly_errors,
    plugin_option,
    problem_options,
    problem_spec,
    size_option,
    warn,
)
from sbn_bench.config import MAX_SEED
from sbn_bench.estimators import load_plugins
from sbn_bench.reference import DEFAULT_MAX_BYTES

_OPTION_OF = {"optimizer": "--optimizer", "lr": "--lr", "momentum": "--momentum",
              "batch_size": "--batch-size", "epochs": "--epochs", "checkpoints": "--checkpoints",
              "seed": "--train-seed", "log_every": "--log-every",
              "max_exact_bytes": "--max-exact-bytes", "out_dir": "--out"}


def _bad(e: training.TrainArgumentError, seed_option: str = "--train-seed") -> click.BadParameter:
    """The library's refusal as click's ``Invalid value for '--option': …`` (exit status 2)."""
    option = seed_option if e.argument == "seed" else _OPTION_OF.get(e.argument, e.argument)
    msg = str(e).removeprefix(f"argument {e.argument}=")
    return click.BadParameter(msg, param_hint=f"'{option}'")


@click.command()
@problem_options
@plugin_option
@click.option("--estimator", "estimator_spec", default="reinforce", show_default=True,
              help="Estimator spec, e.g. psa, concrete:tau=0.1 or exact (see sbn-bench list).")
@click.option("--optimizer", type=click.Choice(training.OPTIMIZERS), default="sgd",
              show_default=True, help="SGD with momentum, or Adam (default betas).")
@click.option("--lr", type=float, default=0.03, show_default=True, help="Learning rate (> 0).")
@click.option("--momentum", type=float, default=None,
              help=f"SGD momentum in [0, 1) [default: {training.DEFAULT_SGD_MOMENTUM}]; "
                   "not allowed with --optimizer adam.")
@click.option("--batch-size", type=int, default=10, show_default=True,
              help="Data points per step, 1..D (larger than D is refused).")
@click.option("--epochs", type=int, default=2000, show_default=True, help="Passes over the data.")
@click.option("--checkpoints", "checkpoints_text", default="", metavar="E1,E2,...",
              help="Epochs after which to save the parameters, each in 1..EPOCHS, e.g. 1,100,2000. "
                   "The initial parameters (epoch 0) and the last epoch are always saved.")
@click.option("--train-seed", type=click.IntRange(0, MAX_SEED), default=None,
              help="Seed of the data order and the estimator's noise [default: --seed].")
@click.option("--out", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Output directory: checkpoint_epoch{E}.npz, train_log.csv, loss_curve.png, "
                   "train_manifest.json.")
@click.option("--log-every", type=int, default=1, show_default=True,
              help="Compute the exact objective every this many epochs (and at checkpoints).")
@click.option("--overwrite", is_flag=True,
              help="Remove the files of a previous training in --out first (without it, such a "
                   "folder is refused).")
@size_option("--max-exact-bytes", DEFAULT_MAX_BYTES,
             "Memory limit of the exact reference; above it training still runs but the exact "
             "objective is not logged (NaN, with a note in the manifest).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
@click.pass_context
@friendly_errors
def train(ctx: click.Context, problem_file: Path | None, arch: str | None, preset: str | None,
          seed: int,
          data_points: int, loss: str, noise: str, plugins: tuple[Path, ...], estimator_spec: str,
          optimizer: str, lr: float, momentum: float | None, batch_size: int, epochs: int,
          checkpoints_text: str, train_seed: int | None, out_dir: Path, log_every: int,
          overwrite: bool, max_exact_bytes: int, quiet: bool) -> None:
    """Train a problem's network with a gradient estimator; write checkpoints (problem files),
    a training log (CSV), a loss curve (PNG) and a manifest (JSON) to --out.

    Each step takes one gradient sample of the estimator on a minibatch (one noise draw per data
    point). The defaults are the paper's settings (SPEC §6): REINFORCE, batch 10, SGD lr 0.03,
    momentum 0.9, 2000 epochs. --seed selects the --arch/--preset problem and, unless
    --train-seed is given, also seeds training.

    Example: sbn-bench train --preset paper --checkpoints 1,100,2000 --out runs/paper-train
    """
    try:
        checkpoints = training.parse_checkpoints(checkpoints_text)
    except training.TrainArgumentError as e:
        raise _bad(e) from None
    # a --plugin file that cannot be loaded is an error before any work; broken factories in a
    # loadable file are warnings unless the one requested
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
                progress=progress if bar is not None else None, overwrite=overwrite)
        except training.TrainArgumentError as e:
            raise _bad(e, "--seed" if train_seed is None else "--train-seed") from None
    if quiet:
        return
    J0, J = result.initial_objective, result.final_objective
    click.echo(f"trained {problem.name} ({problem.arch}, D={problem.num_data}) with "
               f"{estimator.spec}: {result.manifest['steps']} steps in {result.train_s:.1f} s "
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

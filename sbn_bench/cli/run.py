"""``sbn-bench run``: measure estimators' accuracy and speed; it parses, calls
:func:`sbn_bench.runner.run` and prints a summary."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from sbn_bench import runner as runner_mod
from sbn_bench.cli.base import FiniteFloatRange, FolderPath, interrupted_status, without_name
from sbn_bench.cli.common import (
    executor_callback,
    format_table,
    friendly_errors,
    given,
    plugin_option,
    problem_options,
    problem_spec,
    size_option,
    warn,
)
from sbn_bench.cli.core import max_bytes_option
from sbn_bench.config import (
    DEFAULT_CELL_TIMEOUT,
    DEFAULT_ESTIMATORS,
    DEFAULT_MAX_PATHS,
    DEFAULT_REFERENCE_REL_ERROR,
    DEFAULT_REFERENCE_TIME_BUDGET,
    DEVICES,
    DTYPES,
    MAX_SEED,
    MAX_SEEDS,
    MAX_THREADS,
    MODES,
    REFERENCE_TARGETS,
    ConfigError,
    RunConfig,
    ThroughputConfig,
    config_file_error,
    load_config,
    named_m_grid,
    parse_reference,
    parse_seeds,
    repeated,
)
from sbn_bench.errors import SbnBenchError
from sbn_bench.estimators import split_specs
from sbn_bench.problems import PRESET_SAMPLES
from sbn_bench.storage import RunDirError


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    example = "1,10,100" if param.name == "m_grid" else "0,1,2"
    if any(not v.strip() for v in value.split(",")) and value.strip():
        raise click.BadParameter(f"{value!r} has an empty item (two commas, or one at an end); "
                                 f"expected integers such as {example}")
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers "
                                 f"(e.g. {example})") from None
    if not out:
        raise click.BadParameter(f"{value!r} is empty; expected integers such as {example}")
    return out


def _seed_list(ctx: click.Context, param: click.Parameter, value: str | None
               ) -> tuple[int, ...] | None:
    """``--seeds``: a comma list of seeds and ranges (``0-4``, as ``train --seeds``) in
    ``0 … MAX_SEED`` (a usage error, as for --seed)."""
    ranged = value is not None and re.search(r"\d\s*-\s*\d", value) is not None
    out = _seed_ranges(ctx, param, value) if ranged else _int_list(ctx, param, value)
    if len(out or ()) > MAX_SEEDS:
        raise click.BadParameter(f"{len(out or ())} seeds; expected at most {MAX_SEEDS}")
    bad = [s for s in out or () if not 0 <= s <= MAX_SEED]
    if bad:
        raise click.BadParameter(f"{value!r}: seed {bad[0]} is out of range; expected integers "
                                 f"from 0 to {MAX_SEED}")
    twice = repeated(out or ())
    if twice:
        raise click.BadParameter(f"{value!r}: seed(s) {twice} given twice; expected distinct seeds")
    return out


def _seed_ranges(ctx: click.Context, param: click.Parameter, value: str | None
                 ) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return parse_seeds(value)
    except ValueError as e:
        raise click.BadParameter(f"{value!r}: {e}; expected seeds such as 0-4 or 0,2,5") from None


def _m_list(ctx: click.Context, param: click.Parameter, value: str | None
            ) -> tuple[int, ...] | str | None:
    if value is None or value in ("default", "paper"):
        return value
    out = _int_list(ctx, param, value)
    assert out is not None
    if min(out) < 1:
        raise click.BadParameter(f"{value!r}: every M must be ≥ 1")
    return out


def _reference(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_reference(value)
    except ConfigError as e:
        raise click.BadParameter(without_name(str(e), e.argument or "")) from None
    return value


class _Progress:
    """A progress bar on a terminal (stderr), nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, done: int, total: int, cell: runner_mod.Cell, status: str,
                 eta: float | None = None) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="cells", file=sys.stderr,
                                         show_pos=True, show_eta=False, item_show_func=lambda c: c)
            self.bar.__enter__()
        left = "" if eta is None else f", ETA {_duration(eta)}"
        self.bar.update(1, current_item=f"{cell} {status}{left}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@click.command()
@problem_options(command="run")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False,
                                                       path_type=Path),
              help="TOML file listing problems with checkpoints and settings (schema in the "
                   "README); options given here override it.")
@click.option("--estimators", default=None,
              help="Comma-separated estimator specs, e.g. psa,st,concrete:tau=0.1 (sbn-bench list "
                   f"shows them all). Default: {','.join(DEFAULT_ESTIMATORS)}, each on the problems "
                   "it supports.")
@plugin_option
@click.option("--samples", "-S", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Single-sample estimates S per cell (digits-vae, digits-vae-nonlinear: 500 and "
                   "digits-conv: 1500 by default, their cells being slow).")
@click.option("--M", "m_grid", callback=_m_list, default=None,
              help="Sample counts M for mse/rrmse/cosine: a comma list, 'default' "
                   "(1,2,5,...,1000 up to S) or 'paper' (1..9,10..90,...,9000 up to S).")
@click.option("--seeds", callback=_seed_list, default=None,
              help="Sampling seeds, e.g. 0,1,2 or 0-4 (one cell each); default: --seed.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Where the estimators run (cuda needs a CUDA build of torch and a GPU).")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True,
              help="dtype of the estimators' samples (the reference and exact-mode enumeration are "
                   "always float64).")
@click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
              help="exact: enumerate all paths (path estimators, small nets); mc: sample; "
                   "auto: exact where possible.")
@click.option("--max-paths", type=click.IntRange(min=1), default=DEFAULT_MAX_PATHS,
              show_default=True, help="Exact mode only with at most this many paths per data point.")
@click.option("--chunk", type=click.IntRange(min=1), default=None,
              help="Samples per estimator call (default: as many as --memory-budget allows).")
@size_option("--memory-budget", None, "Memory the estimator may use per chunk.",
             default_text="1GiB; on cuda a quarter of the GPU's memory, from 1GiB to 16GiB")
@max_bytes_option
@click.option("--target-rrmse", type=FiniteFloatRange(min=0, min_open=True), default=0.1,
              show_default=True, help="Target relative RMSE of time_to_accuracy_s.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Throughput: untimed calls per estimator first.")
@click.option("--rounds", type=click.IntRange(min=1), default=7, show_default=True,
              help="Throughput: at least this many interleaved rounds per estimator (more, up to "
                   "30, until the 95% interval of the median, which needs 6, is within 20%; a "
                   "figure that does not get there is marked wide).")
@click.option("--throughput-batch", type=click.IntRange(min=1), default=None,
              help="Throughput: samples per call (default: calibrated so a round lasts ≥ 0.2 s).")
@click.option("--no-throughput/--throughput", "no_throughput", default=False,
              help="Skip the throughput measurement (--throughput, the default: measure it; with "
                   "--resume it adds it to a run made without).")
@click.option("--out", type=FolderPath(), default=None,
              help="Output folder (default runs/<problem name or config name>).")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out, skipping finished cells; it may add problems, "
                   "checkpoints, estimators, seeds and plugin files. With --out and no problem "
                   "options, the run's configuration comes from its manifest.")
@click.option("--executor", default="auto", show_default=True, callback=executor_callback,
              help="Where cells run: auto (worker processes, one per CPU, when the run is large "
                   "enough to repay starting them, else this process), serial (this process), "
                   "processes[:N] (N worker processes, default one per CPU) or dask[:ADDRESS|:N] (the "
                   "Dask scheduler at ADDRESS, e.g. tcp://host:8786, or a local cluster of N workers; pip "
                   "install \"sbn-bench[dask]\"). The numbers are the same on every executor; "
                   "throughput cells run last, each alone.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=1, show_default=True,
              help="Torch threads of every cell (throughput cells too), whatever the executor; "
                   "one suits small networks (more mostly spin). Recorded in the manifest: the "
                   "numbers are reproducible for the same thread count, and --resume refuses "
                   "another.")
@click.option("--cell-timeout", type=FiniteFloatRange(min=0, min_open=True),
              default=DEFAULT_CELL_TIMEOUT, show_default=True,
              help="Seconds a cell may take; a cell past it is recorded as failed.")
@click.option("--reference", default="auto", show_default=True, callback=_reference,
              help="The reference gradient (SPEC §8): exact (enumeration; too large a problem is "
                   "refused), mc[:ESTIMATOR[:N]] (the mean of N samples of an unbiased estimator; "
                   "by default the cheapest for the target error in a short pilot, N to reach "
                   "--reference-rel-error) or auto (exact where the size guard allows, else mc).")
@click.option("--reference-rel-error", type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
              default=DEFAULT_REFERENCE_REL_ERROR, show_default=True,
              help="Monte-Carlo reference: the target relative error ε = √(V_R/N)/‖g‖.")
@click.option("--reference-target", type=click.Choice(REFERENCE_TARGETS), default="network",
              show_default=True,
              help="Monte-Carlo reference: ε of the whole network's gradient, or of every layer "
                   "(costlier: a layer with a small gradient needs many samples). Every row "
                   "reports its own layer's ε.")
@click.option("--reference-time-budget", type=FiniteFloatRange(min=0, min_open=True),
              default=DEFAULT_REFERENCE_TIME_BUDGET, show_default=True,
              help="Monte-Carlo reference: seconds its N samples may take; a reference that cannot "
                   "reach its ε within it is refused before any work, with the estimate.")
@click.option("--reference-cache", type=FolderPath(), default=None,
              help="Where Monte-Carlo references are cached (default $SBN_BENCH_CACHE or "
                   "~/.cache/sbn-bench).")
@click.option("--no-report", is_flag=True, help="Do not write the report (sbn-bench report DIR "
                                                "writes it later; not recorded: give it again with "
                                                "--resume).")
@click.option("--train-seeds", callback=_seed_ranges, default=None,
              help="--preset paper: train and evaluate one checkpoint set per training seed, e.g. "
                   "0-4 or 0,2,5 (problems paper-train<seed>; the report counts each claim's "
                   "verdicts over them). Default: one training with --seed.")
@click.option("--cache-dir", type=FolderPath(), default=None,
              help="--preset paper: where trained checkpoints are cached (default "
                   "$SBN_BENCH_CACHE or ~/.cache/sbn-bench).")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but warnings and errors.")
@click.pass_context
@friendly_errors
def run(ctx: click.Context, problem_file: Path | None, arch: str | None, preset: str | None,
        seed: int, data_points: int, loss: str, noise: str, config_file: Path | None,
        estimators: str, plugins: tuple[Path, ...], samples: int,
        m_grid: tuple[int, ...] | str | None, seeds: tuple[int, ...] | None, device: str,
        dtype: str, mode: str, max_paths: int, chunk: int | None, memory_budget: int | None,
        max_exact_bytes: int, target_rrmse: float, warmup: int, rounds: int,
        throughput_batch: int | None, no_throughput: bool, out: Path | None, resume: bool,
        no_report: bool, train_seeds: tuple[int, ...] | None, cache_dir: Path | None,
        quiet: bool, executor: str, cell_timeout: float, threads: int, reference: str,
        reference_rel_error: float, reference_target: str, reference_time_budget: float,
        reference_cache: Path | None) -> None:
    """Measure bias, variance, relative RMSE, cosine, SNR and throughput of estimators.

    --preset paper is the paper's whole experiment (SPEC §6): REINFORCE training to epochs
    1, 100 and 2000 (cached for later runs), then 11 estimators, 20 000 samples and the paper's
    M grid at each checkpoint, and a report that checks the paper's claims. --samples,
    --estimators and --M override its defaults; --train-seeds 0-4 repeats it over five
    independent trainings. --preset quick is a one-checkpoint smoke test.

    \b
    Examples:
      sbn-bench run --preset paper --out runs/paper
      sbn-bench run --preset paper --train-seeds 0-4 --out reports/paper-5-5-5
      sbn-bench run --preset quick
      sbn-bench run --arch 3-4-4-1 --estimators psa,st,arm --seeds 0,1,2 --out runs/small
      sbn-bench run --config experiment.toml --resume

    Writes manifest.json, metrics.csv, timed_metrics.csv (time to accuracy, which depends on
    measured time), throughput.csv and failures.csv to --out. metrics.csv is reproducible: the same
    command, seeds and device give a byte-identical file. A --plugin file that cannot be loaded is
    an error; its broken estimators are warnings unless requested. Requests over --memory-budget
    are refused before any work, with the estimate.
    """
    est_list = None if estimators is None else tuple(split_specs(estimators))
    if no_throughput:
        for name, opt in (("warmup", "--warmup"), ("rounds", "--rounds"),
                          ("throughput_batch", "--throughput-batch")):
            if given(ctx, name):
                raise click.UsageError(f"{opt} sets the throughput cells, which --no-throughput "
                                       "leaves out; give one or the other")
    tp = ThroughputConfig(enabled=not no_throughput, warmup=warmup, rounds=rounds,
                          batch=throughput_batch)
    settings: dict[str, Any] = dict(
        estimators=est_list, plugins=tuple(str(p) for p in plugins), samples=samples,
        device=device, dtype=dtype, mode=mode, max_paths=max_paths, chunk=chunk,
        memory_budget=memory_budget, max_exact_bytes=max_exact_bytes, target_rrmse=target_rrmse,
        throughput=tp, resume=resume, executor=executor, cell_timeout=cell_timeout,
        threads=threads, reference=reference, reference_rel_error=reference_rel_error,
        reference_target=reference_target,
        reference_time_budget=reference_time_budget,
        reference_cache=None if reference_cache is None else str(reference_cache))
    is_paper = (config_file is None and preset == "paper"
                and not any(given(ctx, n) for n in ("problem_file", "arch")))
    if train_seeds is not None and not is_paper:
        raise click.UsageError("--train-seeds is an option of --preset paper (one training per "
                               "seed); other runs take their checkpoints from --problem or --config")
    if cache_dir is not None and not is_paper:
        raise click.UsageError("--cache-dir is an option of --preset paper (where its trained "
                               "checkpoints are cached); other runs train nothing")
    if config_file is not None:
        clash = [f"--{n.replace('_', '-')}" for n in ("problem_file", "arch", "preset",
                                                        "data_points", "loss", "noise")
                 if given(ctx, n)]
        if clash:
            raise click.UsageError(f"--config lists its own problems; do not combine it with "
                                   f"{', '.join(o.replace('--problem-file', '--problem') for o in clash)}")
        overrides = _given_settings(ctx, settings, seeds, seed)
        if m_grid is not None:
            overrides["M"] = None if m_grid == "default" else m_grid  # "paper": up to S, below
        if out is not None:
            overrides["out"] = str(out)
        cfg = load_config(config_file, **overrides)
        if _throughput_given(ctx, tp):  # only the options given replace the file's
            cfg = cfg.with_(throughput=dataclasses.replace(cfg.throughput,
                                                           **_throughput_given(ctx, tp)))
        if "executor" not in overrides:  # the file's: refused naming the file and its line
            try:
                runner_mod.executors.check_executor(cfg.executor)
            except runner_mod.RunError as e:
                raise config_file_error(config_file, str(e), "executor") from None
        if cfg.out is None:
            cfg = cfg.with_(out=str(Path("runs") / config_file.stem))
    elif is_paper:
        from sbn_bench import paper  # imported when used: it loads the reports (seaborn)

        # the preset defines its own data, loss and noise: --data-points, --loss, --noise refused
        problem_spec(ctx, problem_file, arch, preset, seed, data_points, loss, noise)

        for k in ("estimators", "samples", "plugins"):
            settings.pop(k)
        kw = dict(seed=seed, out=str(out or Path("runs") / "paper"),
                  samples=samples if given(ctx, "samples") else paper.SAMPLES,
                  estimators=est_list,
                  plugins=tuple(str(p) for p in plugins), cache_dir=cache_dir,
                  train_seeds=train_seeds, **settings)
        if m_grid is not None:
            kw["M"] = _resolve_m({"M": m_grid, "samples": kw["samples"]})["M"]
        if seeds is not None and seeds != (seed,):
            raise click.UsageError("--preset paper uses one sampling seed (--seed); --seeds is not "
                                   "supported with it (--train-seeds repeats the training)")
        out_dir: str | None = kw["out"]

        def execute(progress: _Progress) -> runner_mod.RunResult:
            return paper.run_paper(progress=progress, message=None if quiet else click.echo,
                                   warn=warn, report=False, **kw)
    elif (resume and out is not None
          and not any(given(ctx, n) for n in ("problem_file", "arch", "preset", "data_points",
                                               "loss", "noise"))):
        # --out DIR --resume alone: the run's own configuration, from its manifest
        cfg = _from_manifest(out, _given_settings(ctx, settings, seeds, seed),
                             _throughput_given(ctx, tp), m_grid)
    else:
        if resume and out is None and not any(given(ctx, n) for n in ("problem_file", "arch", "preset")):
            raise click.UsageError("--resume continues the run in --out DIR (sbn-bench run --out DIR "
                                   "--resume); give --out, or a problem (--problem, --arch, --preset) "
                                   "or --config")
        spec = problem_spec(ctx, problem_file, arch, preset, seed, data_points, loss, noise,
                            seed_has_other_use=True)
        if preset in PRESET_SAMPLES and not given(ctx, "samples"):
            settings["samples"] = PRESET_SAMPLES[preset]
        settings.update(problems=(spec,), seeds=seeds or (seed,), M=m_grid,
                        out=str(out or Path("runs") / spec.label))
        cfg = RunConfig(**_resolve_m(settings))
    if not is_paper:
        out_dir = cfg.out

        def execute(progress: _Progress) -> runner_mod.RunResult:
            return runner_mod.run(cfg, progress=progress, warn=warn)

    progress = _Progress(not quiet and sys.stderr.isatty() and not os.environ.get("CI"))
    try:
        result = execute(progress)
    except KeyboardInterrupt:
        progress.close()
        _interrupted(ctx, out_dir)
    finally:
        progress.close()
    if not quiet:
        _print_summary(result)
        exp = result.manifest.get("experiment")
        if exp:  # --preset paper: training and evaluation times
            click.echo(paper_timing_line(exp))
    if not no_report:
        _write_report(result.out, quiet)
    if result.all_failed:
        raise click.ClickException(f"every statistics cell failed ({len(result.failures)} failure(s): "
                                   f"see {result.out}/failures.csv); no accuracy was measured")


def given_arguments(ctx: click.Context) -> list[str]:
    """The options of this command that were given on the command line, spelled again (flags,
    repeated options, values), in the command's order."""
    args: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None or not given(ctx, param.name):
            continue
        flag = param.opts[-1] if param.is_flag else max(param.opts, key=len)
        value = ctx.params[param.name]
        if param.is_flag:
            if value:
                args.append(flag)
        elif param.multiple:
            for v in value:
                args += [flag, str(v)]
        else:
            raw = value if not isinstance(value, (tuple, list)) else ",".join(map(str, value))
            args += [flag, str(raw)]
    return args


def paper_timing_line(experiment: dict[str, Any]) -> str:
    """The closing line of a ``--preset paper`` run: its training and evaluation wall times, from
    the manifest's ``experiment`` record (a cached training's time is that of the run that made
    it, so it is said so rather than added to this run's)."""
    tm, training = experiment["timing"], experiment["training"]
    this = tm.get("evaluation_s_this_run", tm["evaluation_s"])
    runs = training.get("runs") or []
    cached = sum(bool(r.get("cached")) for r in runs if isinstance(r, dict))
    if training["cached"]:
        train = f"cached (it took {training['train_wall_s']:.0f} s when made)"
    elif cached and "training_s_this_run" in tm:  # --train-seeds, some of them cached
        train = f"{tm['training_s_this_run']:.0f} s ({cached} of {len(runs)} trainings cached)"
    else:
        train = f"{training['train_wall_s']:.0f} s"
    return (f"wall time: training {train}, evaluation {tm['evaluation_s']:.0f} s"
            + (f" ({this:.0f} s in this session)" if this != tm["evaluation_s"] else ""))


def resume_command(ctx: click.Context, out: str | os.PathLike[str]) -> str:
    """The command that continues an interrupted run: the options given plus ``--out`` (the
    folder the run used) and ``--resume``, quoted for a POSIX shell."""
    args = [a for a in given_arguments(ctx)]
    if "--out" not in args:
        args += ["--out", str(out)]
    if "--resume" not in args:
        args.append("--resume")
    return " ".join(shlex.quote(a) for a in ["sbn-bench", ctx.info_name or "run", *args])


def _interrupted(ctx: click.Context, out: str | os.PathLike[str] | None) -> None:
    """After Ctrl-C (or SIGTERM): say what is saved and the command that continues; exit 130
    (143)."""
    if out is not None and (Path(out) / "manifest.json").is_file():
        click.echo(f"\nInterrupted: the finished cells are saved in {out}; continue with\n  "
                   f"{resume_command(ctx, out)}", err=True)
    else:
        click.echo("\nInterrupted before any result was written (nothing is saved; trained "
                   "checkpoints are cached only when their training finishes); run the same "
                   "command again.", err=True)
    ctx.exit(interrupted_status())


def _given_settings(ctx: click.Context, settings: dict[str, Any],
                    seeds: tuple[int, ...] | None, seed: int) -> dict[str, Any]:
    """The settings given on the command line (and ``resume``), to override those of a TOML file
    or of a run's manifest (the throughput options apart: :func:`_throughput_given`), ``--seeds``
    or else ``--seed``."""
    overrides = {k: v for k, v in settings.items()
                 if k != "throughput" and (k == "resume" or given(ctx, k))}
    if seeds is not None:
        overrides["seeds"] = seeds
    elif given(ctx, "seed"):
        overrides["seeds"] = (seed,)
    return overrides


def _throughput_given(ctx: click.Context, tp: ThroughputConfig) -> dict[str, Any]:
    """The throughput options given on the command line, as :class:`ThroughputConfig` fields (the
    others keep the file's or the manifest's values)."""
    fields = {"warmup": "warmup", "rounds": "rounds", "throughput_batch": "batch",
              "no_throughput": "enabled"}
    return {f: getattr(tp, f) for opt, f in fields.items() if given(ctx, opt)}


def _from_manifest(out: Path, overrides: dict[str, Any], throughput: dict[str, Any],
                   m_grid: tuple[int, ...] | str | None) -> RunConfig:
    """:func:`sbn_bench.runner.resume_config`, its refusals usage errors that say what else to
    give (a ``--preset paper`` run: the command that resumes it)."""
    if m_grid is not None:
        overrides["M"] = m_grid
    try:
        return runner_mod.resume_config(out, throughput=throughput, **overrides)
    except SbnBenchError as e:
        if e.argument != "out":  # an option given beside --resume: its own refusal, unchanged
            raise
        if e.expected == "a run not made by --preset paper":
            hint = (f"e.g. sbn-bench run --preset paper --out {shlex.quote(str(out))} --resume (and "
                    "its --samples, --estimators, --train-seeds …)")
        elif (out / "manifest.json").exists():  # there but unreadable: options cannot stand in
            raise RunDirError(f"{e.message}; the finished cells cannot be checked against any "
                              "settings without it: restore it (e.g. from a backup), or run again "
                              "in another folder", argument="out", value=str(out),
                              expected="a run folder with a readable manifest.json") from None
        elif (out / "cells").is_dir():  # a run whose manifest was lost
            hint = ("it holds a run's cells/ but its manifest.json is missing: restore it (e.g. from "
                    "a backup), or run again in another folder")
        elif out.is_dir() and any(out.iterdir()):  # files, none a run's: options would be refused too
            hint = "it holds other files, so it is not an sbn-bench run folder: choose another --out"
        else:
            hint = "give the run's problem options (--problem, --arch, --preset or --config)"
        raise click.UsageError(f"{e.message}; {hint}") from None


def _resolve_m(kw: dict[str, Any]) -> dict[str, Any]:
    """Turn ``M="paper"|"default"`` into a grid up to the samples (when known here)."""
    if "M" in kw:
        kw["M"] = named_m_grid(kw["M"], kw.get("samples", 2000))
    return kw


def _fmt(v: float) -> str:
    """A summary value; ``-`` for a missing one (a layer that this row's problem does not have)."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def _print_summary(result: runner_mod.RunResult) -> None:
    tab = result.summary(m=1)
    from sbn_bench.reports.load import m_grid_lacking_one  # loaded when a run has finished

    grid = m_grid_lacking_one(result.metrics)
    if grid is not None:
        click.echo(f"no summary of rrmse at M=1: the M grid ({grid}) does not hold 1 "
                   "(metrics.csv and the report give the M measured)")
    elif not tab.empty:
        seeds = result.metrics["seed"].nunique() if "seed" in result.metrics.columns else 1
        click.echo("rrmse at M=1 (relative RMSE of one sample" + ("; mean over seeds" if seeds > 1
                                                                  else "") + "), per layer:")
        loose = result.unresolved(m=1).reindex(index=tab.index, columns=tab.columns,
                                               fill_value=False).to_numpy(dtype=bool)
        rows = [[*map(str, idx), *(_fmt(v) + ("?" if u else "") for v, u in zip(r, flags))]
                for idx, r, flags in zip(tab.index, tab.to_numpy(), loose)]
        click.echo(format_table(["problem", "checkpoint", "estimator", *map(str, tab.columns)],
                                rows))
        if loose.any():
            click.echo("?: not resolved: its standard error is at least the value, or unknown "
                       "(e.g. measured against a coarse Monte-Carlo reference; metrics.csv and "
                       "the report give it)")
    n_fail = len(result.failures)
    if n_fail:
        click.echo(f"\n{n_fail} cell(s) failed:")
        for _, f in result.failures.head(10).iterrows():
            click.echo(f"  {f['problem']}/{f['checkpoint']}/{f['estimator']} [{f['stage']}]: "
                       f"{f['error'][:200]}")
    click.echo(f"\nresults in {result.out}/: metrics.csv, timed_metrics.csv, throughput.csv, "
               f"failures.csv, manifest.json ({result.cells_run} cell(s) run, "
               f"{result.cells_skipped} skipped)")


def _write_report(out: Path, quiet: bool) -> None:
    """Write the run's report (:func:`sbn_bench.reports.write_report`); a failure to render it is
    one line that says the results are safe and how to try again."""
    from sbn_bench.reports import write_report  # imported when used: seaborn is slow to load

    try:
        where = write_report(out)
    except Exception as e:
        raise click.ClickException(f"the results are in {out}, but the report could not be "
                                   f"written: {type(e).__name__}: {e} (try: sbn-bench report "
                                   f"{out})") from None
    if not quiet:
        click.echo("report: " + ", ".join(str(p) for p in where.values()))

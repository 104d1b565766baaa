"""Shared CLI pieces: problem selection options, plugin option, and error translation.

The CLI only parses arguments, calls the library and prints; every command has a Python
equivalent (README, "From Python").
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from sbn_bench import problems
from sbn_bench.config import MAX_SEED, ConfigFileError, ProblemSpec
from sbn_bench.errors import SbnBenchError
from sbn_bench.estimators import EstimatorSpecError
from sbn_bench.model import LOSS_NAMES, NOISE_NAMES
from sbn_bench.problems import Problem
from sbn_bench.reference import check_shape
from sbn_bench.runner.executors import parse_executor
from sbn_bench.runner.memory import RunError
from sbn_bench.units import parse_size, size_text

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn the library's :class:`~sbn_bench.errors.SbnBenchError` (the user's input: bad values,
    files, plugins, folders) into one ``Error: …`` line and exit status 1, without a traceback.
    Any other exception is a bug and shows its traceback. Running out of memory while allocating
    (a request too large for the machine) is also one line.

    Set ``SBN_BENCH_DEBUG=1`` to see the traceback of every error.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import os

        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except SbnBenchError as e:
            if os.environ.get("SBN_BENCH_DEBUG"):
                raise
            usage = _option_error(e)
            if usage is not None:
                raise usage from None
            raise click.ClickException(str(e) or type(e).__name__) from None
        except (MemoryError, RuntimeError) as e:
            # out of memory while allocating (torch raises RuntimeError "can't allocate memory"):
            # the request was too large for this machine, not a bug to show a traceback for
            text = " ".join(str(e).split())
            if os.environ.get("SBN_BENCH_DEBUG") or not (
                    isinstance(e, MemoryError) or "allocate" in text or "out of memory" in text):
                raise
            raise click.ClickException(f"out of memory: {text or 'MemoryError'} (use a smaller "
                                       "problem, or lower --memory-budget / --chunk)") from None

    return wrapper  # type: ignore[return-value]


_OPTION_OF = {"M": "m_grid", "batch": "throughput_batch"}
"""A setting's option where their names differ (``RunConfig.M`` is ``--M``, parameter ``m_grid``)."""


def _option_error(e: SbnBenchError) -> click.BadParameter | None:
    """The library's refusal of a value given on the command line, as that option's usage error
    (exit status 2, as click's own checks give): ``--cell-timeout nan`` is refused by
    :class:`~sbn_bench.config.RunConfig`, ``--cell-timeout 0`` by click. None when the error names
    no option of the running command that was given (a file's value, a default, a folder, …)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or not isinstance(e.argument, str) or isinstance(e, ConfigFileError) or not e.usage:
        return None
    name = e.argument.removeprefix("throughput.")
    # an estimator spec's error names the spec: it is the value of --estimators (--estimator)
    names = ("estimators", "estimators_text", "estimator_spec") if isinstance(e, EstimatorSpecError) else \
        (_OPTION_OF.get(name, name),)
    for param in ctx.command.params:
        if param.name in names and given(ctx, param.name):
            return click.BadParameter(str(e), ctx=ctx, param=param)
    return None


def problem_options(fn: F) -> F:
    """``--problem FILE | --arch A | --preset NAME`` with ``--seed``, ``--data-points``, ``--loss``,
    ``--noise`` (the last three for ``--arch`` only)."""
    opts = [
        click.option("--problem", "problem_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Problem file (.npz, the public format in the README)."),
        click.option("--arch", help="Random network, e.g. 2-5-5-5-1 (input-hidden...-output)."),
        click.option("--preset", type=click.Choice(sorted(problems.PRESETS)),
                     help="A named problem: 'paper' (SPEC §6), 'quick' (a small smoke test) or a digits "
                                  "preset (README: the digits presets)."),
        click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
                     help="Seed of an --arch or --preset problem (run and train: also the seed of "
                          "the sampling or training, unless given apart)."),
        click.option("--data-points", type=click.IntRange(min=1),
                     default=problems.DEFAULT_DATA_POINTS, show_default=True,
                     help="Data points of an --arch problem."),
        click.option("--loss", type=click.Choice(LOSS_NAMES), default="logistic",
                     show_default=True, help="Loss of an --arch problem."),
        click.option("--noise", type=click.Choice(NOISE_NAMES), default="logistic",
                     show_default=True, help="Noise of an --arch problem."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def given(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` was given on the command line (or in the environment), as
    opposed to taking its default."""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                              ParameterSource.ENVIRONMENT)


def problem_spec(ctx: click.Context, problem_file: Path | None, arch: str | None,
                 preset: str | None, seed: int, data_points: int, loss: str, noise: str, *,
                 seed_has_other_use: bool = False) -> ProblemSpec:
    """The one problem selected by exactly one of ``--problem``, ``--arch``, ``--preset``, as a
    :class:`~sbn_bench.config.ProblemSpec` (not built yet: size checks can run first).

    Options that do not apply to the chosen source are refused rather than ignored:
    ``--data-points``, ``--loss`` and ``--noise`` apply to ``--arch`` only, ``--seed`` to ``--arch``
    and ``--preset`` (and to ``--problem`` when the command also seeds with it:
    ``seed_has_other_use``).
    """
    chosen = [n for n, v in (("--problem", problem_file), ("--arch", arch), ("--preset", preset))
              if v is not None]
    if len(chosen) != 1:
        what = "none was given" if not chosen else f"got {' and '.join(chosen)}"
        raise click.UsageError(f"give exactly one of --problem FILE, --arch 2-5-5-5-1 or "
                               f"--preset paper ({what})")
    only_arch = [f"--{n.replace('_', '-')}" for n in ("data_points", "loss", "noise")
                 if given(ctx, n)]
    if arch is None and only_arch:
        verb = "applies" if len(only_arch) == 1 else "apply"
        raise click.UsageError(f"{', '.join(only_arch)} {verb} to --arch problems only, not to "
                               f"{chosen[0]} (a preset or a problem file defines its own data, "
                               "loss and noise)")
    if problem_file is not None and given(ctx, "seed") and not seed_has_other_use:
        raise click.UsageError("--seed does not apply to --problem FILE (a problem file holds its "
                               "own parameters and data)")
    return ProblemSpec(preset=preset, arch=arch,
                       file=str(problem_file) if problem_file is not None else None,
                       seed=seed, data_points=data_points, loss=loss, noise=noise)


def build_problem(spec: ProblemSpec, max_exact_bytes: int | None = None) -> Problem:
    """The problem of ``spec``; with ``max_exact_bytes``, a shape the exact reference cannot take
    is refused before the problem (its data) is built."""
    shape = spec.reference_shape()
    if max_exact_bytes is not None and shape is not None:
        check_shape(shape["widths"], shape["num_data"], max_exact_bytes, spec.label,  # type: ignore[arg-type]
                    loss=shape["loss"], head=shape["head"])  # type: ignore[arg-type]
    return spec.base_problem()


def plugin_option(fn: F) -> F:
    return click.option("--plugin", "plugins", multiple=True,
                        type=click.Path(dir_okay=False, path_type=Path),
                        help="Python file defining ESTIMATORS = {name: factory} (repeatable).")(fn)


def size_callback(ctx: click.Context | None, param: click.Parameter | None, value: str | int | None
                  ) -> int | None:
    """A click callback: bytes from ``"4GiB"``, ``"512MiB"``, ``"2GB"``, ``"1e9"`` or a plain
    integer (:func:`sbn_bench.units.parse_size`)."""
    if value is None:
        return None
    try:
        return parse_size(value, (param.name if param is not None else None) or "size")
    except SbnBenchError as e:
        raise click.BadParameter(str(e)) from None


def size_option(name: str, default: int, help: str) -> Callable[[F], F]:
    """A ``--name SIZE`` option in bytes or a size such as 4GiB, 512MiB, 2GB (the one spelling of
    every size option)."""
    return click.option(name, type=click.STRING, callback=size_callback, metavar="SIZE",
                        default=size_text(default), show_default=True,
                        help=help + " Bytes or a size such as 4GiB, 512MiB, 2GB.")


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    click.echo(f"Warning: {' '.join(message.split())}", err=True)


def echo_json(obj: Any) -> None:
    """Print ``obj`` as one line of JSON, all or nothing (it is serialised before printing)."""
    text = json.dumps(obj, indent=None, allow_nan=False)
    sys.stdout.write(text + "\n")


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def executor_callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--executor``: its spelling checked when parsed (a usage error naming the option); what
    it needs on this machine (Dask installed) is the run's to refuse."""
    try:
        parse_executor(value)
    except RunError as e:
        raise click.BadParameter(f"{value!r}{e.detail}" if e.detail else str(e)) from None
    return value

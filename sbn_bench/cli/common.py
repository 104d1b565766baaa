"""Shared CLI pieces: problem selection options, plugin option, and error translation.

The CLI only parses arguments, calls the library and prints; every command has a Python
equivalent (README, "From Python").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sbn_bench import problems
from sbn_bench.cli.base import F, echo_json, format_table, friendly_errors, given, warn, without_name  # noqa: F401 (re-exported)
from sbn_bench.config import MAX_SEED, ProblemSpec
from sbn_bench.errors import SbnBenchError
from sbn_bench.model import LOSS_NAMES, NOISE_NAMES
from sbn_bench.problems import Problem
from sbn_bench.reference import check_shape
from sbn_bench.runner.executors import parse_executor
from sbn_bench.runner.memory import RunError
from sbn_bench.units import parse_size, size_text

SEED_HELP = "Seed of an --arch or --preset problem."
SEED_ALSO = {
    "run": " Also the sampling seed, unless --seeds is given; with --config or --resume, the "
           "sampling seed only, replacing the file's or run's seeds.",
    "train": " Also the seed of the training (data order, noise), unless --train-seed is given.",
}


def problem_options(fn: F | None = None, *, command: str | None = None) -> Any:
    """``--problem FILE | --arch A | --preset NAME`` with ``--seed``, ``--data-points``, ``--loss``,
    ``--noise`` (the last three for ``--arch`` only); ``command`` (``run``, ``train``) adds what
    ``--seed`` also seeds there (:data:`SEED_ALSO`). As ``@problem_options`` or
    ``@problem_options(command="run")``."""
    if fn is None:
        return lambda f: problem_options(f, command=command)
    opts = [
        click.option("--problem", "problem_file",
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Problem file (.npz, the public format in the README)."),
        click.option("--arch", help="Random network, e.g. 2-5-5-5-1 (input-hidden...-output)."),
        click.option("--preset", type=click.Choice(sorted(problems.PRESETS)),
                     help="A named problem: 'paper' (SPEC §6), 'quick' (a small smoke test) or a digits "
                                  "preset (README: the digits presets)."),
        click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
                     help=SEED_HELP + SEED_ALSO.get(command or "", "")),
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
        if ctx.info_name == "run":  # run also takes a TOML file, or the folder of a run to resume
            raise click.UsageError(f"give exactly one of --problem FILE, --arch 2-5-5-5-1, "
                                   f"--preset paper or --config FILE ({what}), or --out DIR "
                                   "--resume to continue a run")
        raise click.UsageError(f"give exactly one of --problem FILE, --arch 2-5-5-5-1 or "
                               f"--preset paper ({what})")
    layers = problems.layer_list_file(arch)
    if layers is not None and not Path(layers).is_file():  # a missing file, as --problem's: exit 2
        raise click.BadParameter(f"{arch!r}: there is no layer list file {layers!r}"
                                 + (" (it is a folder)" if Path(layers).is_dir() else ""),
                                 param_hint="'--arch'")
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
                    loss=shape["loss"], head=shape["head"], arch=shape["arch"])  # type: ignore[arg-type]
    return spec.base_problem()


def plugin_option(fn: F) -> F:
    return click.option("--plugin", "plugins", multiple=True,
                        type=click.Path(exists=True, dir_okay=False, path_type=Path),
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
        raise click.BadParameter(without_name(str(e), e.argument or "")) from None


def size_option(name: str, default: int | None, help: str, default_text: str | None = None
                ) -> Callable[[F], F]:
    """A ``--name SIZE`` option in bytes or a size such as 4GiB, 512MiB, 2GB (the one spelling of
    every size option). ``default=None`` passes None on (the library chooses), shown as
    ``default_text``."""
    shown = f"  [default: {default_text}]" if default is None and default_text else ""
    return click.option(name, type=click.STRING, callback=size_callback, metavar="SIZE",
                        default=None if default is None else size_text(default),
                        show_default=default is not None,
                        help=help + " Bytes or a size such as 4GiB, 512MiB, 2GB." + shown)


def executor_callback(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--executor``: its spelling checked when parsed (a usage error naming the option); what
    it needs on this machine (Dask installed) is the run's to refuse."""
    try:
        parse_executor(value)
    except RunError as e:
        raise click.BadParameter(f"{value!r}{e.detail}" if e.detail else str(e)) from None
    return value

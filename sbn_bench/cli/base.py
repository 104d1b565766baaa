"""The CLI's pieces that every command shares and that need neither torch nor the problems:
error translation (:func:`friendly_errors`), warnings, JSON and table output. ``sbn-bench report``
imports only these, so it starts without loading torch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from sbn_bench.errors import EMPTY_FOLDER, SbnBenchError, is_out_of_memory

F = TypeVar("F", bound=Callable[..., Any])


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where Ctrl-C's :class:`KeyboardInterrupt` would be, so that
    every command's handling of Ctrl-C (save, mark the run interrupted, say how to resume) applies;
    the exit status is then 143 (128 + SIGTERM) rather than 130."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread; the handler before
    it is put back after. Left alone off the main thread, or where a handler other than the default
    is installed (the embedding program's)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def interrupted_status() -> int:
    """The exit status of a command stopped by the exception being handled: 143 after SIGTERM
    (:class:`Terminated`), else 130 (Ctrl-C), as shells report them."""
    return 143 if isinstance(sys.exc_info()[1], Terminated) else 130


def friendly_errors(fn: F) -> F:
    """Turn the library's :class:`~sbn_bench.errors.SbnBenchError` (the user's input: bad values,
    files, plugins, folders) into one ``Error: …`` line without a traceback: exit status 2 when it
    refuses the value of an option given on the command line (:func:`_option_error`), else 1.
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
            raise click.ClickException(_config_origin(e) + options_only(cli_names(str(e), e))
                                       or type(e).__name__) from None
        except (MemoryError, RuntimeError) as e:
            # out of memory while allocating (torch raises RuntimeError "can't allocate memory"):
            # the request was too large for this machine, not a bug to show a traceback for
            if os.environ.get("SBN_BENCH_DEBUG") or not is_out_of_memory(e):
                raise
            text = " ".join(str(e).split())
            raise click.ClickException(f"out of memory: {text or 'MemoryError'} (use a smaller "
                                       "problem, or lower --memory-budget / --chunk)") from None

    return wrapper  # type: ignore[return-value]


_OPTION_OF = {"M": "m_grid", "batch": "throughput_batch"}
"""A setting's option where their names differ (``RunConfig.M`` is ``--M``, parameter ``m_grid``)."""


def _setting(argument: str) -> tuple[str, str]:
    """The library's name of the setting an error's ``argument`` names (``throughput.batch`` is
    ``batch``) and the parameter of the command's option for it (``throughput_batch``)."""
    name = argument.removeprefix("throughput.")
    return name, _OPTION_OF.get(name, name)


def _option_error(e: SbnBenchError) -> click.BadParameter | None:
    """The library's refusal of a value given on the command line, as that option's usage error
    (exit status 2, as click's own checks give): ``--M 5000`` above ``--samples`` is refused by
    :class:`~sbn_bench.config.RunConfig`, ``--M 0`` by the option's callback. None when the error
    names no option of the running command that was given (a file's value, a default, a folder,
    …)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or not isinstance(e.argument, str) or not e.usage:
        return None
    name, pname = _setting(e.argument)
    # an estimator spec's error names the spec: it is the value of --estimators (--estimator)
    # (an option whose text the command parses itself is NAME_text: train's --estimators)
    names = ("estimators", "estimators_text", "estimator_spec") if _is_spec_error(e) else (
        pname, f"{pname}_text")
    params = [p for p in ctx.command.params if p.name in names and given(ctx, p.name)]
    # the settings that share the fault (a --chunk that exceeds the memory budget, whatever the
    # budget's origin), each named where given on the command line
    shared = {_setting(b)[1] for b in e.blames}
    params += [p for p in ctx.command.params if p.name in shared and given(ctx, p.name)]
    if not params:  # the value came from a file or a default: no option of this command is at fault
        return None
    return click.BadParameter(options_only(cli_names(without_name(str(e), e.argument), e)), ctx=ctx,
                              param_hint=" / ".join(p.get_error_hint(ctx) for p in params))


_FROM_CONFIG = ("estimators", "reference", "executor", "plugins")
"""Settings of a ``--config`` file that the library checks only when the run starts (after the
file is read): their errors cannot name the file's line, so the command line names the file."""


def _config_origin(e: SbnBenchError) -> str:
    """``"config file 'X': "`` when ``e`` refuses a value of :data:`_FROM_CONFIG` that the
    ``--config`` file sets (and the command line does not); else ``""``."""
    ctx = click.get_current_context(silent=True)
    cfg = None if ctx is None else ctx.params.get("config_file")
    if ctx is None or cfg is None or str(e).startswith("config file"):
        return ""
    if _is_spec_error(e):
        name = "estimators"
    elif e.argument in _FROM_CONFIG and not _is_folder_error(e):  # (a folder named plugins)
        name = str(e.argument)
    elif any(b in ("reference", "reference_rel_error") for b in e.blames):
        # a Monte-Carlo reference over its time budget: its N or target error from the file
        name = next(b for b in e.blames if b in ("reference", "reference_rel_error"))
    else:
        return ""
    if given(ctx, name):
        return ""
    from sbn_bench.config import tomllib  # loaded already: the run read the file with it

    try:
        keys = tomllib.loads(Path(str(cfg)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return f"config file {str(cfg)!r}: " if name in keys else ""


def _blamed_options(message: str, e: SbnBenchError, ctx: click.Context) -> str:
    """``message`` with the words that name a setting the error blames (``chunk=…``, ``lower
    chunk / throughput batch``: :data:`~sbn_bench.runner.memory.BLAME_WORDS`) written as the
    command's options where they were given on the command line (``--chunk=…``); a setting from a
    file or a default keeps its words (the file's keys are the library's names)."""
    if not e.blames:
        return message
    import re

    from sbn_bench.runner.memory import BLAME_WORDS

    for blamed in e.blames:
        word, pname = BLAME_WORDS.get(blamed), _setting(blamed)[1]
        opts = [o for p in ctx.command.params if p.name == pname and isinstance(p, click.Option)
                for o in p.opts if o.startswith("--")]
        if word is None or not opts or not given(ctx, pname):
            continue
        message = re.sub(rf"(?<![\w\-]){re.escape(word)}(?==| /|, )", max(opts, key=len), message)
    return message


def cli_names(message: str, e: SbnBenchError) -> str:
    """``message`` with the library's name of the refused setting (``memory_budget``) written as the
    running command's option (``--memory-budget``), so that a user of the command line reads the
    name to type. Left as it is where the value may come from a ``--config`` file (whose keys are
    the library's names) or, on ``--resume``, from the run's manifest (which the option could not
    change), inside quotes or a path (a problem named ``max_exact_bytes``), where the command has
    no such option, and for names without an underscore (``M``, ``batch``: words a message also
    uses in their own sense)."""
    import re

    ctx = click.get_current_context(silent=True)
    if ctx is None or not isinstance(e.argument, str):
        return message
    message = _blamed_options(message, e, ctx)
    name, pname = _setting(e.argument)
    from_file = ctx.params.get("config_file") is not None or bool(ctx.params.get("resume"))
    if "_" not in name or (from_file and not given(ctx, pname)):
        return message
    opts = [o for p in ctx.command.params if p.name == pname and isinstance(p, click.Option)
            for o in p.opts if o.startswith("--")]
    if not opts:
        return message
    option = max(opts, key=len)
    flag = re.escape(option)
    # "memory_budget=" → "--memory-budget="; "compare_dir, --compare" and the like → "--compare"
    return re.sub(rf"(?<![\w.\-/'\"]){re.escape(name)}(?:, {flag}| / {flag}| \({flag}\))?"
                  rf"(?![\w\-/'\"])", option, message)


_BOTH_NAMES = re.compile(r"(?<![\w.\-/'\"])(?:[a-z][a-z_]*=(?:True|…)?|[a-z]+_[a-z_]+)(?:, | / )"
                         r"(--[a-z][a-z-]*)")
"""A hint that names a setting both ways, the library's and the option (``resume=True, --resume``,
``out=…, --out``, ``max_bytes= / --max-exact-bytes``, ``compare_dir, --compare``)."""


_KEYWORD_THEN_OPTION = re.compile(r"(?<![\w.\-/'\"])[a-z][a-z_]*=(?:True|…) \((--[a-z][a-z-]*)\)")
"""The same hint with the option in parentheses (``pass overwrite=True (--overwrite)``)."""


def options_only(message: str) -> str:
    """``message`` with each hint that names a setting both as the library's keyword and as the
    command's option (``resume that run (resume=True, --resume)``, ``pass resume=True
    (--resume)``) naming the option alone: a user of the command line has no keyword to give."""
    return _KEYWORD_THEN_OPTION.sub(r"\1", _BOTH_NAMES.sub(r"\1", message))


def without_name(message: str, argument: str) -> str:
    """``message`` without a leading ``NAME=`` or ``argument NAME=`` (the library's name of the
    setting): click's message names the option already (``Invalid value for '--cell-timeout': nan
    must be …`` rather than ``… 'cell_timeout=nan must be …``)."""
    for prefix in (f"argument {argument}=", f"{argument}="):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


class FolderPath(click.Path):
    """A folder to write into, as a :class:`~pathlib.Path`; an empty value is refused (pathlib
    reads ``''`` as ``.``, so the results would land in the current folder unasked)."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value:
            self.fail(EMPTY_FOLDER, param, ctx)
        return super().convert(value, param, ctx)


class FiniteFloatRange(click.FloatRange):
    """:class:`click.FloatRange` that also refuses ``nan`` and ``inf`` (which a range check lets
    through: every comparison with ``nan`` is false), in click's words."""

    name = "float range"  # the metavar click shows (FLOAT RANGE), as before

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{rv} is not a finite number.", param, ctx)
        return rv


def given(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` was given on the command line (or in the environment), as
    opposed to taking its default."""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                              ParameterSource.ENVIRONMENT)


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


def _is_folder_error(e: SbnBenchError) -> bool:
    """Whether ``e`` is a :class:`~sbn_bench.storage.RunDirError` (its argument is a folder)."""
    storage = sys.modules.get("sbn_bench.storage")
    return storage is not None and isinstance(e, storage.RunDirError)


def _is_spec_error(e: SbnBenchError) -> bool:
    """Whether ``e`` is an :class:`~sbn_bench.estimators.EstimatorSpecError` (without importing the
    estimators, and torch with them, for commands that never load them)."""
    registry = sys.modules.get("sbn_bench.estimators.registry")
    return registry is not None and isinstance(e, registry.EstimatorSpecError)

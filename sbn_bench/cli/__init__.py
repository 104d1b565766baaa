"""The ``sbn-bench`` command line: it parses arguments, calls :mod:`sbn_bench` and prints."""

from __future__ import annotations

import importlib
from typing import Any

import click

from sbn_bench.version import __version__

_COMMANDS: dict[str, tuple[str, str, str]] = {
    "exact": ("sbn_bench.cli.core", "exact", "Exact objective and gradient by enumeration."),
    "list": ("sbn_bench.cli.core", "list_", "List the registered estimators and their flags."),
    "problem": ("sbn_bench.cli.core", "problem", "Write a problem to the public .npz format."),
    "report": ("sbn_bench.cli.report", "report", "Write a run's Markdown/HTML report (--compare DIR2)."),
    "run": ("sbn_bench.cli.run", "run", "Measure estimators' bias, variance, rrmse, cosine and speed."),
    "train": ("sbn_bench.cli.train", "train", "Train a network with an estimator; write checkpoints."),
}
"""Every command: ``name: (module, attribute, one-line help)``. A command's module (and with it
torch, pandas and matplotlib) is imported only when the command runs or shows its own help, so
that ``sbn-bench --help`` and ``--version`` answer at once."""


class _LazyGroup(click.Group):
    """A group that imports a command's module on first use (click's documented pattern,
    "Lazily Loading Subcommands")."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module, attribute, short = _COMMANDS[cmd_name]
        try:
            cmd = getattr(importlib.import_module(module), attribute)
        except KeyboardInterrupt:  # Ctrl-C while torch loads: nothing has started
            if ctx is None:  # imported from Python (module __getattr__), not run
                raise
            from sbn_bench.cli.base import interrupted_status

            click.echo(f"\ninterrupted while loading {cmd_name!r}: nothing was done", err=True)
            ctx.exit(interrupted_status())
        cmd.short_help = short
        globals()[attribute] = cmd  # sbn_bench.cli.run is the command, as when imported eagerly
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        # SIGTERM (kill, a batch system's time limit) stops a command as Ctrl-C does: a run is
        # marked interrupted with its finished cells saved, and the exit status is 143
        from sbn_bench.cli.base import interrupted_status, terminate_as_interrupt

        with terminate_as_interrupt():
            # Ctrl-C outside a command's own handling (e.g. while a finished run's summary
            # prints): exit 130 as everywhere else, not click's "Aborted!" with status 1
            try:
                return super().invoke(ctx)
            except KeyboardInterrupt:
                click.echo("\ninterrupted", err=True)
                ctx.exit(interrupted_status())

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in sorted(_COMMANDS.items())])


@click.group(cls=_LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sbn-bench")
def main() -> None:
    """Accuracy and speed of gradient estimators for stochastic binary networks.

    Exact gradients by enumeration, a library of estimators (PSA, ST, ARM, REINFORCE, ...),
    and a runner that measures bias, variance, relative RMSE, cosine and throughput.
    """


def __getattr__(name: str) -> click.Command:
    """``from sbn_bench.cli import run, exact, list_, …``: the commands, loaded when asked for."""
    for cmd_name, (_, attribute, _) in _COMMANDS.items():
        if attribute == name:
            cmd = main.get_command(None, cmd_name)
            assert cmd is not None
            return cmd
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

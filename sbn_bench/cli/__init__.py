"""The ``sbn-bench`` command line: it parses arguments, calls :mod:`sbn_bench` and prints."""

from __future__ import annotations

import click

from sbn_bench.cli.core import exact, list_, problem
from sbn_bench.cli.report import report
from sbn_bench.cli.run import run
from sbn_bench.cli.train import train
from sbn_bench.version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sbn-bench")
def main() -> None:
    """Accuracy and speed of gradient estimators for stochastic binary networks.

    Exact gradients by enumeration, a library of estimators (PSA, ST, ARM, REINFORCE, ...),
    and a runner that measures bias, variance, relative RMSE, cosine and throughput.
    """


_SHORT = {
    run: "Measure estimators' bias, variance, rrmse, cosine and speed.",
    exact: "Exact objective and gradient by enumeration.",
    list_: "List the registered estimators and their flags.",
    report: "Write a run's Markdown/HTML report (--compare DIR2).",
    train: "Train a network with an estimator; write checkpoints.",
    problem: "Write a problem to the public .npz format.",
}
for _cmd, _short in _SHORT.items():
    _cmd.short_help = _short
    main.add_command(_cmd)

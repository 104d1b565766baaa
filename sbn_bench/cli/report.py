"""``sbn-bench report``: the Markdown and HTML report of a run directory, optionally compared with a
baseline run. The work is done by :func:`sbn_bench.reports.write_report`."""

from __future__ import annotations

from pathlib import Path

import click

from sbn_bench.cli.common import friendly_errors, warn


@click.command()
@click.argument("run_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--compare", "compare_dir", metavar="DIR2", type=click.Path(path_type=Path),
              help="A baseline run: adds ratios run/baseline, flagging only differences beyond "
                   "their uncertainty.")
@click.option("--out", "out_dir", metavar="OUTDIR", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write report.md, report.html and figures/  [default: DIR/report]")
@click.option("--format", "formats", type=click.Choice(["md", "html"]), multiple=True,
              help="Write only this format (repeatable)  [default: md and html]")
@click.option("--force", is_flag=True,
              help="Compare even when the runs' problems, estimator versions or devices differ "
                   "(the report warns).")
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="Flag a Monte-Carlo difference when |a-b| > sigma * sqrt(se_a^2 + se_b^2).")
@friendly_errors
def report(run_dir: Path, compare_dir: Path | None, out_dir: Path | None, formats: tuple[str, ...],
           force: bool, sigma: float) -> None:
    """Write the report of a run directory DIR (written by sbn-bench run).

    Summary tables per problem, checkpoint and layer (rrmse at M=1 and M=100, relative bias, cosine,
    samples/s, time to accuracy; best values in bold), figures (rrmse and cosine vs M, bias vs
    standard deviation, throughput), as report.md with figures/*.png and a self-contained
    report.html.

    Example: sbn-bench report runs/paper --compare runs/baseline
    """
    from sbn_bench.reports import write_report  # imported when used: seaborn is slow to load

    written = write_report(run_dir, compare_dir, formats or ("md", "html"), out_dir=out_dir,
                           force=force, sigma=sigma, warn=warn)
    for key in ("md", "html"):
        if key in written:
            click.echo(f"wrote {written[key]}")
    if "figures" in written:
        n = len(list(written["figures"].glob("*.png")))
        click.echo(f"wrote {n} figure(s) in {written['figures']}")

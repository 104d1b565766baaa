"""``sbn-bench report``: the Markdown and HTML report of a run directory, optionally compared with a
baseline run. The work is done by :func:`sbn_bench.reports.write_report`."""

from __future__ import annotations

from pathlib import Path

import click

from sbn_bench.cli.base import FiniteFloatRange, FolderPath, friendly_errors, given, warn


@click.command()
@click.argument("run_dir", metavar="DIR", type=click.Path(exists=True, path_type=Path))
@click.option("--compare", "compare_dir", metavar="DIR2",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A baseline run: adds its headline beside this run's and the differences "
                   "beyond their uncertainty (ratios run/baseline).")
@click.option("--out", "out_dir", metavar="OUTDIR", type=FolderPath(),
              help="Where to write report.md, report.html and figures/  [default: DIR/report]")
@click.option("--format", "formats", type=click.Choice(["md", "html"]), multiple=True,
              help="Write only this format (repeatable)  [default: md and html]")
@click.option("--force", is_flag=True,
              help="Compare even when the runs' problems, estimator versions or devices differ "
                   "(the report warns).")
@click.option("--sigma", type=FiniteFloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="Flag a Monte-Carlo difference when |a-b| > sigma * sqrt(se_a^2 + se_b^2).")
@friendly_errors
def report(run_dir: Path, compare_dir: Path | None, out_dir: Path | None, formats: tuple[str, ...],
           force: bool, sigma: float) -> None:
    """Write the report of a run directory DIR (written by sbn-bench run).

    A headline per problem (heatmap of rrmse at M=1, the best estimator per checkpoint and layer
    with its ties given the standard errors), the story across checkpoints, then per problem and
    checkpoint the summary tables (best values in bold, ties in italics) and figures (rrmse and
    1 - cosine vs M, bias vs standard deviation, throughput), as report.md with figures/*.png and
    *.svg, and a self-contained report.html with a table of contents, collapsible sections and
    sortable tables. --compare shows both runs' headlines side by side and the differences beyond
    their uncertainty.

    Example: sbn-bench report runs/paper --compare runs/baseline
    """
    ctx = click.get_current_context()
    if compare_dir is None:
        alone = [f"--{n}" for n in ("force", "sigma") if given(ctx, n)]
        if alone:
            raise click.UsageError(f"{' and '.join(alone)} {'apply' if len(alone) > 1 else 'applies'} "
                                   "only with --compare DIR2 (the comparison with a baseline run)")
    from sbn_bench.reports import write_report  # imported when used: seaborn is slow to load

    written = write_report(run_dir, compare_dir, formats or ("md", "html"), out_dir=out_dir,
                           force=force, sigma=sigma, warn=warn)
    for key in ("md", "html"):
        if key in written:
            click.echo(f"wrote {written[key]}")
    if "figures" in written:
        from sbn_bench.reports import report_figures  # not other PNG files in an --out folder

        n = sum(1 for f in report_figures(written["figures"]) if f.suffix == ".png")
        click.echo(f"wrote {n} figure(s) in {written['figures']} (PNG and SVG)")

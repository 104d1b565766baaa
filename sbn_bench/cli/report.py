"""``sbn-bench report``: placeholder until its issue lands."""

import click


@click.command()
def report() -> None:
    """Not yet available."""
    raise click.ClickException("sbn-bench report is not implemented yet")

"""``sbn-bench run``: placeholder until its issue lands."""

import click


@click.command()
def run() -> None:
    """Not yet available."""
    raise click.ClickException("sbn-bench run is not implemented yet")

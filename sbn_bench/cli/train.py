"""``sbn-bench train``: placeholder until its issue lands."""

import click


@click.command()
def train() -> None:
    """Not yet available."""
    raise click.ClickException("sbn-bench train is not implemented yet")

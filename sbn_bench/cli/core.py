"""``sbn-bench exact``, ``sbn-bench list`` and ``sbn-bench problem``."""

from __future__ import annotations

import os
from pathlib import Path

import click
import torch

from sbn_bench import problems
from sbn_bench.cli.common import (
    build_problem,
    echo_json,
    format_table,
    friendly_errors,
    plugin_option,
    problem_options,
    problem_spec,
    size_option,
)
from sbn_bench.estimators import load_plugins
from sbn_bench.metrics.groups import Groups, group_of
from sbn_bench.reference import DEFAULT_MAX_BYTES, ReferenceTooLarge, exact_gradient, gradient_json

max_bytes_option = size_option(
    "--max-exact-bytes", DEFAULT_MAX_BYTES,
    "Memory limit of the exact reference; larger problems are refused before any work.")
"""``--max-exact-bytes SIZE`` (exact, run)."""


@click.command()
@problem_options
@max_bytes_option
@click.option("--json", "as_json", is_flag=True,
              help='Print {"objective": J, "gradient": {"weight_1": [[...]], ...}}.')
@click.pass_context
@friendly_errors
def exact(ctx: click.Context, problem_file: Path | None, arch: str | None, preset: str | None,
          seed: int, data_points: int, loss: str, noise: str, max_exact_bytes: int,
          as_json: bool) -> None:
    """Exact objective and gradient of a problem by enumeration (float64).

    Example: sbn-bench exact --preset paper
    """
    spec = problem_spec(ctx, problem_file, arch, preset, seed, data_points, loss, noise)
    try:
        problem = build_problem(spec, max_exact_bytes)
        J, grad = exact_gradient(problem, max_bytes=max_exact_bytes)
    except ReferenceTooLarge as e:
        if e.argument == "max_bytes":  # the reference's limit is this command's --max-exact-bytes
            e.argument = "max_exact_bytes"  # (a problem file's own size limit is not)
            e.message = e.message.replace("max_bytes= / --max-exact-bytes", "max_exact_bytes")
        raise
    if as_json:
        echo_json(gradient_json(J, grad))
        return
    click.echo(f"problem {problem.name}  arch {problem.arch}  D={problem.num_data}  "
               f"loss {problem.loss}  noise {problem.noise}")
    click.echo(f"objective J = {J:.12g}\n")
    click.echo(format_table(["layer", "|grad W|", "|grad b|", "|grad|"], gradient_norm_rows(grad)))


def gradient_norm_rows(grad: dict[str, torch.Tensor]) -> list[list[str]]:
    """The rows of ``exact``'s table: per parameter group (:class:`sbn_bench.metrics.Groups`:
    ``body``, the stochastic layers, ``head``, ``out``, ``prior``, ``all``) the norms of its
    weights' gradient, its biases' and the whole group's (so the groups' squares add up to
    ``all``'s); a group without weights or biases (the VAE's prior logits) leaves that cell empty."""
    groups = Groups.of(grad)
    sq = {n: float(grad[n].square().sum()) for n in groups.params}  # each parameter's once

    def norm(names: list[str]) -> str:
        return f"{sum(sq[n] for n in names) ** 0.5:.6g}" if names else ""

    rows = []
    for group in groups.names[:-1]:  # the last is "all"
        members = [n for n in groups.params if group_of(n) == group]
        rows.append([group, norm([n for n in members if "weight" in n]),
                     norm([n for n in members if "bias" in n]), norm(members)])
    return [*rows, ["all", "", "", norm(list(groups.params))]]


@click.command("list")
@plugin_option
@click.option("--json", "as_json", is_flag=True, help="Print the estimators as JSON.")
@friendly_errors
def list_(plugins: tuple[Path, ...], as_json: bool) -> None:
    """List every registered estimator with its flags (built-ins, entry points, --plugin files).

    Evaluations per sample are shown for the paper net 2-5-5-5-1; "layers" lists the stochastic
    layer kinds supported, with "(1 layer)" for estimators that need exactly one; "adaptive"
    estimators learn before they estimate.
    """
    reg, _ = load_plugins(plugins)  # a --plugin file that cannot be loaded is an error
    entries = reg.describe()
    if as_json:
        echo_json({"estimators": entries,
                   "errors": [{"name": e.name, "origin": e.origin, "message": e.message}
                              for e in reg.errors]})
    else:
        _echo_table(entries)
    for e in reg.errors:  # on stderr with --json too (the JSON's "errors" hold them as well)
        click.echo(f"failed to load: {e}", err=True)


def _echo_table(entries: list[dict]) -> None:
    rows = [[e["name"], e["family"] or "-", "yes" if e["unbiased"] else "no",
             e["randomness"] + (", adaptive" if e["adaptive"] else ""), str(e["evals_per_sample"]),
             ",".join(e["noises"]), ",".join(e["losses"]),
             ",".join(e["layers"]) + (" (1 layer)" if e["single_layer"] else ""),
             ",".join(f"{k}={v}" for k, v in e["hyperparams"].items()) or "-", e["description"]]
            for e in entries]
    click.echo(format_table(["name", "family", "unbiased", "randomness", "evals", "noises", "losses",
                             "layers", "hyperparams", "description"], rows))


def _file_out(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    """``--out`` of ``problem``: a file name (``""`` read as ``.``, and ``dir/`` as a file ``dir``)."""
    if not value:
        raise click.BadParameter("'' is empty; expected a file such as problem.npz")
    if value.endswith(("/", os.sep)) or Path(value).is_dir():
        what = "is a folder" if Path(value).is_dir() else "ends with a folder separator"
        raise click.BadParameter(f"{value!r} {what}; expected a file such as "
                                 f"{Path(value) / 'problem.npz'}")
    return Path(value)


@click.command()
@problem_options
@click.option("--out", "out", required=True, callback=_file_out, metavar="FILE",
              help="Where to write the problem (.npz).")
@click.option("--overwrite", is_flag=True,
              help="Replace --out if it exists (without it, an existing file is refused: it may "
                   "be a trained checkpoint).")
@click.pass_context
@friendly_errors
def problem(ctx: click.Context, problem_file: Path | None, arch: str | None, preset: str | None,
            seed: int, data_points: int, loss: str, noise: str, out: Path, overwrite: bool) -> None:
    """Write a problem to the public .npz format (e.g. to edit or share it).

    Example: sbn-bench problem --preset paper --out paper.npz
    """
    spec = problem_spec(ctx, problem_file, arch, preset, seed, data_points, loss, noise)  # checked
    if (out.exists() or out.is_symlink()) and not overwrite:  # before building the problem
        # exit status 1, as run's and train's --out that holds what they must not replace
        raise click.ClickException(f"--out {str(out)!r} exists; pass --overwrite to replace it, or "
                               "choose another file")
    p = build_problem(spec)
    problems.save_problem(p, out, overwrite=overwrite)
    click.echo(f"wrote {out} (arch {p.arch}, D={p.num_data}, {len(p.params)} parameter arrays)")

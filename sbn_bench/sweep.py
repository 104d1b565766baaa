"""Sweeps: one TOML table that expands a grid of problems, so that one file describes a study of
hundreds of cells (``sbn-bench run --config sweep.toml``)::

    [sweep]
    arch = ["2-5-5-1", "3-4-4-4-1"]   # architectures (one string or a list)
    noise = ["logistic", "gaussian"]  # default "logistic"        (arch problems)
    loss = ["logistic"]               # default "logistic"        (arch problems)
    data_points = 50                  # default 100, or a list    (arch problems)
    preset = ["paper"]                # preset problems (they fix their own noise, loss and data)
    seed = [0, 1, 2]                  # problem seeds: data and weights (default 0)

Every combination of arch × noise × loss × data_points × seed, then of preset × seed, becomes one
problem (:class:`SweepPoint`, a :class:`~sbn_bench.config.ProblemSpec` for the run), named after its
values: ``arch-2-5-5-1_noise-gaussian_loss-logistic_D50_seed1``, ``paper-seed0``. The names depend on
the values only, so a sweep extended with more values resumes with its finished cells. The run's
sampling seeds are the top-level ``seeds``, not the sweep's ``seed``.

A combination that cannot be built (a loss the output layer cannot take: ``logistic`` with several
outputs, ``softmax`` with one) is refused naming the combination, before any work; put such grids
in separate ``[[sweep]]`` tables (an array of sweeps is the union of their grids).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sbn_bench import problems
from sbn_bench.errors import SbnBenchError
from sbn_bench.model import LOSS_NAMES, NOISE_NAMES

SWEEP_KEYS = ("arch", "preset", "noise", "loss", "data_points", "seed")
"""The keys of a ``[sweep]`` table."""
ARCH_ONLY = ("noise", "loss", "data_points")
"""Keys that vary arch problems only (a preset fixes its own noise, loss and data)."""
MAX_SWEEP_PROBLEMS = 100_000
"""Most problems one sweep may expand to (a larger grid is a typo more often than a study)."""


class SweepError(SbnBenchError, ValueError):
    """A ``[sweep]`` table that cannot be expanded; ``argument`` is the key, or ``sweep`` for an
    impossible combination (``value`` then holds the combination)."""


@dataclass(frozen=True)
class SweepPoint:
    """One problem of a sweep: exactly one of ``arch`` and ``preset``, and its readable unique
    ``name`` (``noise``, ``loss`` and ``data_points`` are None for a preset, which fixes them)."""

    name: str
    arch: str | None
    preset: str | None
    noise: str | None
    loss: str | None
    data_points: int | None
    seed: int

    def problem_fields(self) -> dict[str, Any]:
        """The keyword arguments of the :class:`~sbn_bench.config.ProblemSpec` it names."""
        if self.preset is not None:
            return {"preset": self.preset, "seed": self.seed, "name": self.name}
        return {"arch": self.arch, "noise": self.noise, "loss": self.loss,
                "data_points": self.data_points, "seed": self.seed, "name": self.name}


def _values(table: Mapping[str, Any], key: str, kind: type, default: Sequence[Any]) -> list[Any]:
    """A key's values as a non-empty list without repeats (a scalar is a one-item list)."""
    raw = table.get(key, list(default))
    items = raw if isinstance(raw, list) else [raw]
    what = "strings" if kind is str else "integers"
    if not items:
        raise SweepError(f"sweep key {key}=[] is empty; expected one or more {what}", argument=key,
                         value=raw, expected=f"one or more {what}")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, kind):
            one = "a string" if kind is str else "an integer"
            raise SweepError(f"sweep key {key}={raw!r}: {v!r} is not {one}", argument=key,
                             value=raw, expected=what)
    dup = sorted({str(v) for v in items if items.count(v) > 1})
    if dup:
        raise SweepError(f"sweep key {key}={raw!r} repeats {', '.join(dup)}; give each value once",
                         argument=key, value=raw, expected="distinct values")
    return items


def _check_choice(key: str, values: Sequence[str], choices: Sequence[str]) -> None:
    bad = [v for v in values if v not in choices]
    if bad:
        raise SweepError(f"sweep key {key}: {', '.join(map(repr, bad))} is not one of "
                         f"{', '.join(choices)}", argument=key, value=bad[0],
                         expected=f"one of {', '.join(choices)}")


def arch_name(arch: str, noise: str, loss: str, data_points: int, seed: int) -> str:
    """The name of an arch problem of a sweep (its values, readable and unique)."""
    text = "-".join(map(str, problems.parse_arch(arch)))
    return f"arch-{text}_noise-{noise}_loss-{loss}_D{data_points}_seed{seed}"


def expand_sweep(table: Mapping[str, Any]) -> list[SweepPoint]:
    """The problems of one ``[sweep]`` table, in grid order (arch problems, then presets).

    Raises:
        SweepError: an unknown key, a value of the wrong type, an empty or repeated list, an unknown
            noise, loss or preset, a bad architecture, arch-only keys without ``arch``, a grid
            larger than :data:`MAX_SWEEP_PROBLEMS`, or a combination that cannot be built (naming
            it).
    """
    if not isinstance(table, Mapping):
        raise SweepError(f"sweep must be a table ([sweep] or [[sweep]]), got {table!r}",
                         argument="sweep", value=table, expected="a table")
    unknown = sorted(set(table) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"sweep has unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
                         f"{', '.join(SWEEP_KEYS)}", argument=unknown[0], value=unknown[0],
                         expected=f"one of {', '.join(SWEEP_KEYS)}")
    if "arch" not in table and "preset" not in table:
        raise SweepError("sweep needs arch = [...] or preset = [...] (the problems to vary)",
                         argument="sweep", value=dict(table), expected="an arch or preset key")
    if "arch" not in table:
        stray = [k for k in ARCH_ONLY if k in table]
        if stray:
            raise SweepError(f"sweep key {stray[0]} varies arch problems, but the sweep has no arch "
                             "(a preset fixes its own noise, loss and data)", argument=stray[0],
                             value=table[stray[0]], expected="an arch key beside it")
    archs = _values(table, "arch", str, []) if "arch" in table else []
    presets = _values(table, "preset", str, []) if "preset" in table else []
    noises = _values(table, "noise", str, ["logistic"])
    losses = _values(table, "loss", str, ["logistic"])
    data = _values(table, "data_points", int, [problems.DEFAULT_DATA_POINTS])
    seeds = _values(table, "seed", int, [0])
    _check_choice("noise", noises, NOISE_NAMES)
    _check_choice("loss", losses, LOSS_NAMES)
    _check_choice("preset", presets, sorted(problems.PRESETS))
    for key, vals, low in (("data_points", data, 1), ("seed", seeds, 0)):
        bad = [v for v in vals if v < low]
        if bad:
            raise SweepError(f"sweep key {key}: {bad[0]} is below {low}", argument=key,
                             value=bad[0], expected=f"integers ≥ {low}")
    for a in archs:
        try:
            problems.parse_arch(a)
        except problems.ProblemError as e:
            raise SweepError(f"sweep key arch: {e}", argument="arch", value=a,
                             expected=e.expected) from None
    count = len(archs) * len(noises) * len(losses) * len(data) * len(seeds) + len(presets) * len(seeds)
    if count > MAX_SWEEP_PROBLEMS:
        raise SweepError(f"sweep expands to {count} problems, over the limit of {MAX_SWEEP_PROBLEMS}"
                         f" ({' × '.join(str(len(v)) for v in (archs, noises, losses, data, seeds))}"
                         f" arch problems + {len(presets)} × {len(seeds)} presets)",
                         argument="sweep", value=count, expected=f"≤ {MAX_SWEEP_PROBLEMS} problems")
    return list(_points(archs, noises, losses, data, seeds, presets))


def _points(archs: list[str], noises: list[str], losses: list[str], data: list[int],
            seeds: list[int], presets: list[str]) -> Iterator[SweepPoint]:
    for arch, noise, loss, d, seed in itertools.product(archs, noises, losses, data, seeds):
        try:
            problems.check_arch_loss(arch, loss)
        except problems.ProblemError as e:
            combo = {"arch": arch, "noise": noise, "loss": loss, "data_points": d, "seed": seed}
            text = ", ".join(f"{k}={v!r}" for k, v in combo.items())
            raise SweepError(f"sweep combination {text} is impossible: {e} (put architectures with "
                             "different outputs in separate [[sweep]] tables, each with the losses "
                             "they can take)", argument="sweep", value=combo,
                             expected=e.expected or "a loss the output layer can take") from None
        yield SweepPoint(arch_name(arch, noise, loss, d, seed), arch, None, noise, loss, d, seed)
    for preset, seed in itertools.product(presets, seeds):
        yield SweepPoint(f"{preset}-seed{seed}", None, preset, None, None, None, seed)


def expand_sweeps(tables: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[SweepPoint]:
    """The problems of ``[sweep]`` (one table) or ``[[sweep]]`` (several: the union, in order).

    Raises:
        SweepError: see :func:`expand_sweep`; also two tables giving the same problem.
    """
    items = [tables] if isinstance(tables, Mapping) else list(tables)
    out: list[SweepPoint] = []
    seen: set[str] = set()
    for t in items:
        for p in expand_sweep(t):
            if p.name in seen:
                raise SweepError(f"sweep problem {p.name!r} comes from more than one sweep table; "
                                 "give each combination once", argument="sweep", value=p.name,
                                 expected="distinct combinations")
            seen.add(p.name)
            out.append(p)
    return out


__all__ = ["ARCH_ONLY", "MAX_SWEEP_PROBLEMS", "SWEEP_KEYS", "SweepError", "SweepPoint",
           "arch_name", "expand_sweep", "expand_sweeps"]

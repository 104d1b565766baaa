"""What a run measures: :class:`RunConfig` (Python) and its TOML form (``sbn-bench run --config``).

A run is the grid problems × checkpoints × estimators × seeds (SPEC §5). From Python::

    from sbn_bench.config import RunConfig, ProblemSpec
    from sbn_bench.runner import run

    cfg = RunConfig(problems=(ProblemSpec(preset="paper"),), estimators=("psa", "st"),
                    samples=2000, out="runs/paper")
    result = run(cfg)

TOML schema (every key optional unless marked; unknown keys are refused, with the file, the line
and the valid keys; relative paths are relative to the TOML file's folder)::

    estimators = ["psa", "st", "concrete:tau=0.1"]  # or one string "psa,st,concrete:tau=0.1"
    plugins = ["my_estimators.py"]                # plugin files (ESTIMATORS = {name: factory})
    samples = 2000                                # S single-sample estimates per cell (≥ 1)
    M = [1, 10, 100]                              # sample counts for mse/rrmse/cosine, or
                                                  # "default" (1,2,5,…,1000 up to S) or
                                                  # "paper" (1..9, 10..90, …, 1000..9000 up to S)
    seeds = [0, 1]                                # sampling seeds (one cell per seed)
    device = "cpu"                                # "cpu" | "cuda"
    dtype = "float32"                             # sampling dtype: "float32" | "float64"
    mode = "auto"                                 # "auto" | "exact" | "mc"
    max_paths = 65536                             # exact mode: most paths 2^(Σ n_k) per data point
    chunk = 500                                   # samples per chunk (default: from memory_budget)
    memory_budget = "1GiB"                        # bytes (int) or "512MiB", "2GB", … (see below)
    max_exact_bytes = "4GiB"                      # memory limit of the exact reference gradient
    target_rrmse = 0.1                            # target of samples_to_accuracy (M*)
    stderr_batches = 32                           # batches for batch-means standard errors
    cosine_groups = 1000                          # most independent M-means per M for cosine
    out = "runs/my-run"                           # output folder
    executor = "auto"                             # where cells run: "auto", "serial",
                                                  # "processes[:N]", "dask[:ADDRESS]"
                                                  # (sbn_bench.runner.executors)
    threads = 1                                   # torch threads of every cell, whatever the executor
                                                  # (throughput too; recorded in the manifest)
    cell_timeout = 3600                           # seconds a cell may take (recorded as failed)
    reference = "auto"                            # "exact" | "auto" | "mc[:ESTIMATOR[:N]]" (SPEC §8)
    reference_rel_error = 0.02                    # Monte-Carlo reference: target relative error ε
    reference_target = "network"                  # ε of the whole gradient, or "layers": of each
    reference_time_budget = 300                   # seconds its samples may take (refused beyond)
    reference_seed = 0                            # the seed of its samples
    reference_cache = "~/.cache/sbn-bench"        # where it is cached (default $SBN_BENCH_CACHE)

    [throughput]                                  # once per network shape, interleaved
    enabled = true
    warmup = 1                                    # untimed calls first
    rounds = 7                                    # at least this many timed rounds per estimator
    max_rounds = 30                               # more until the interval is narrow, at most these
    min_round_s = 0.2                             # a round lasts at least this long
    max_seconds = 20                              # time for the rounds beyond the first 7
    rel_width = 0.2                               # target width of the median's 95 % interval
    batch = 200                                   # samples per call (default: calibrated)

    [[problem]]                                   # one table per problem (or a [sweep], below)
    name = "paper"                                # label in the tables (default: from the source)
    preset = "paper"                              # exactly one of preset / arch / file
    seed = 0                                      # seed of a preset or arch problem
    # arch = "2-5-5-5-1"; data_points = 100; loss = "logistic"; noise = "logistic"  (arch only)
    # file = "problem.npz"
    checkpoints = { init = "init", epoch100 = "ckpt/epoch100.npz" }
                                                  # label = "init" (the problem itself) or a problem
                                                  # file used as it is (parameters, data, loss and
                                                  # noise); default { init = "init" }

    [sweep]                                       # a grid of problems (sbn_bench.sweep); with or
    arch = ["2-5-5-1", "3-4-4-4-1"]               # instead of [[problem]] tables; [[sweep]] for
    noise = ["logistic", "gaussian"]              # several grids
    loss = ["logistic"]
    seed = [0, 1, 2]
    data_points = 50

Options given on the command line override the TOML values.

Memory budget (``memory_budget``, ``--memory-budget``; default 1 GiB on the CPU, on a GPU a quarter
of its memory up to 16 GiB, :func:`default_memory_budget`): the most memory the
estimator's tensors may take in one ``estimate()`` call. The runner draws each cell's ``S`` samples
in chunks of ``⌊budget / bytes per sample⌋`` (``--chunk`` fixes the chunk instead), where the bytes
per sample are an upper estimate (:meth:`sbn_bench.estimators.Estimator.memory_per_sample`:
parameter replicas and their gradients, per-data-point activations, PSA's flip tables, every loss
evaluation, autograd's saved tensors: 1.3-1.7 MB for the paper's 2-5-5-5-1 net with 200 points in
float64, half that in float32, so the default budget takes about 600-800 samples per call). The
statistics are streamed, so a cell needs this much whatever ``S`` is. A request that cannot fit is
refused before any work, with the estimate: one sample larger than the budget, or an explicit
``chunk`` or throughput ``batch`` whose samples exceed it. Exact mode enumerates all ``2^{Σ n_k}``
paths, whose tables must fit in the budget too (``auto`` mode then uses Monte Carlo instead;
``exact`` mode records the cell as a failure with the numbers). The exact reference gradient has its
own limit, ``max_exact_bytes`` (default 4 GiB; larger problems are refused with the estimate). The
budget covers the estimator's tensors, not the Python process, the problem's data, or the statistics
accumulators (``O((stderr_batches + |M|) · P)`` floats for ``P`` parameters).
"""

from __future__ import annotations

import difflib
import itertools
import math
import operator
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from sbn_bench import problems, sweep, units
from sbn_bench.errors import EMPTY_FOLDER, ArgumentError, SbnBenchError, check_path, plain_int, short_repr
from sbn_bench.estimators import EstimatorSpecError, split_specs
from sbn_bench.estimators.registry import plugin_paths
from sbn_bench.fileio import slug
from sbn_bench.model import LOSS_NAMES, NOISE_NAMES
from sbn_bench.problems import Problem
from sbn_bench.reference import DEFAULT_MAX_BYTES, MAX_PATHS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DEFAULT_ESTIMATORS = ("psa", "st", "reinforce", "arm", "concrete:tau=0.1", "tanh")
"""The default estimators of ``sbn-bench run``: the paper's (SPEC §6) but ``concrete:tau=1``."""

DEFAULT_M = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
DEFAULT_MAX_PATHS = MAX_PATHS
DEFAULT_MEMORY_BUDGET = 2**30
"""The default ``memory_budget`` on the CPU (1 GiB)."""
MAX_DEFAULT_CUDA_MEMORY_BUDGET = 16 * 2**30
"""The most that the default ``memory_budget`` on a GPU takes (see :func:`default_memory_budget`)."""
DEFAULT_CELL_TIMEOUT = 3600.0
"""Seconds a cell may take by default (an hour: far above any built-in cell on the presets, which
take seconds); a cell past it is recorded as failed and the run goes on."""
MAX_CELL_TIMEOUT = 1e9
"""The longest ``cell_timeout`` (seconds, 31 years): the system's timers overflow near 9.2e9."""

MAX_TARGET_RRMSE = 1e100
"""The largest ``target_rrmse``: ``t²‖g‖²`` overflows float64 above about 1e154."""
MAX_SAMPLES = 10**9
"""Largest ``samples`` (and throughput batch): beyond it a run would not finish in any reasonable
time on any machine."""
MAX_ROUNDS = 10**6
MAX_THREADS = 1024
"""Largest ``threads`` (``--threads``): more torch threads than any machine this runs on has cores."""
MAX_SEED = 2**63 - 1
"""Largest seed: torch generators take 64-bit seeds (larger ones overflow)."""
MAX_SEEDS = 10_000
"""Most seeds in one list (``seeds``, ``--seeds 0-N``): each is a cell per problem, checkpoint and
estimator (or a training), so more would not finish; a longer list is refused before it is built."""
DEVICES = ("cpu", "cuda")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
"""The estimators' dtypes by name (the reference is always float64)."""
MODES = ("auto", "exact", "mc")
REFERENCES = ("auto", "exact", "mc")
REFERENCE_TARGETS = ("network", "layers")
"""What the Monte-Carlo reference's target ε applies to (:mod:`sbn_bench.runner.mcref`)."""
DEFAULT_REFERENCE_REL_ERROR = 0.02
DEFAULT_REFERENCE_TIME_BUDGET = 300.0


class ConfigError(SbnBenchError, ValueError):
    """A run configuration that cannot be used; the message names the key (and file, line), and
    ``argument`` is the key."""


class ConfigFileError(ConfigError):
    """A :class:`ConfigError` located in a TOML file: the message names the file and the line."""

    usage = False  # a file's content is at fault, not a command-line option (exit status 1)


def _decimal(text: str) -> bool:
    """``text`` (stripped) is a whole number that int() reads: ``str.isdigit`` also takes '²',
    which int() refused with a traceback."""
    return text.strip().isdecimal()


def parse_reference(text: object) -> tuple[str, str | None, int | None]:
    """``reference`` (``--reference``) as ``(kind, estimator, N)``: ``exact``, ``auto``, ``mc``,
    ``mc:ESTIMATOR``, ``mc:ESTIMATOR:N`` or ``mc::N`` (ESTIMATOR may carry hyperparameters,
    ``mc:reinforce-loo:k=4:20000``; N is the last field when it is an integer).

    Raises:
        ConfigError: naming the value and the accepted forms.
    """
    expected = "exact, auto, mc, mc:ESTIMATOR, mc:ESTIMATOR:N or mc::N (N an integer ≥ 2)"
    if not isinstance(text, str):
        raise ConfigError(f"reference={text!r} must be a string: {expected}",
                          argument="reference", value=text, expected=expected)
    t = text.strip()
    if t in REFERENCES:
        return t, None, None
    if not t.startswith("mc:"):
        raise ConfigError(f"reference={text!r} is not one of {expected}", argument="reference",
                          value=text, expected=expected)
    rest = t[3:]
    head, sep, last = rest.rpartition(":")
    n: int | None = None
    if sep and _decimal(last):
        n, rest = int(last), head
    elif not sep and _decimal(rest):
        raise ConfigError(f"reference={text!r}: {rest.strip()!r} is a number, not an estimator; "
                          f"write mc::{rest.strip()} for N samples of the default estimator",
                          argument="reference", value=text, expected=expected)
    est = rest.strip() or None
    if est is not None and (":" in est and "=" not in est.split(":", 1)[1]):
        raise ConfigError(f"reference={text!r}: {est!r} is not an estimator spec (N must be the "
                          "last field, an integer)", argument="reference", value=text,
                          expected=expected)
    if n is not None and n < 2:
        raise ConfigError(f"reference={text!r}: N={n} samples cannot estimate the reference's "
                          "variance (at least 2)", argument="reference", value=text,
                          expected=expected)
    return "mc", est, n


def paper_m_grid(max_m: int | None = None) -> tuple[int, ...]:
    """The paper's M grid (SPEC §6): 1..9, 10..90, 100..900, 1000..9000, limited to ``≤ max_m``."""
    grid = tuple(d * 10**e for e in range(4) for d in range(1, 10))
    return grid if max_m is None else tuple(m for m in grid if m <= max_m)


def default_m_grid(max_m: int | None = None) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, limited to ``≤ max_m``."""
    return DEFAULT_M if max_m is None else tuple(m for m in DEFAULT_M if m <= max_m)


def named_m_grid(M: Any, samples: int) -> Any:
    """``M`` as given, or for ``"paper"`` / ``"default"`` that grid up to ``samples``
    (:func:`paper_m_grid`, :func:`default_m_grid`)."""
    grids = {"paper": paper_m_grid, "default": default_m_grid}
    return grids[M](samples) if isinstance(M, str) and M in grids else M


def default_memory_budget(device: str | torch.device) -> int:
    """The default ``memory_budget`` of a run on ``device``: 1 GiB on the CPU; on a CUDA device a
    quarter of its memory, at least 1 GiB and at most 16 GiB (1 GiB where no CUDA device is
    visible: such a run is refused before any work anyway). Each worker process of a run may use
    that much.

    On an H200 a call of up to 10,000 paper-net samples costs about the same whatever its size
    (2–4 ms of Python and kernel launches), so the CPU's 1 GiB chunks (1,622 ``st`` samples in
    float32) kept it at about a tenth of what it does with 16 GiB chunks (README, "GPU"). A
    quarter leaves room for a second worker process and for what the budget's upper estimate
    does not count."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return DEFAULT_MEMORY_BUDGET
    try:
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
    except (RuntimeError, AssertionError):  # a driver that fails here fails the run up front
        return DEFAULT_MEMORY_BUDGET
    return max(DEFAULT_MEMORY_BUDGET, min(MAX_DEFAULT_CUDA_MEMORY_BUDGET, total // 4))


def parse_size(value: int | str, what: str = "memory_budget") -> int:
    """Bytes from an int or a string such as ``"512MiB"`` (:func:`sbn_bench.units.parse_size`).

    Raises:
        ConfigError: naming ``what`` and the value.
    """
    try:
        return units.parse_size(value, what)
    except ArgumentError as e:
        raise ConfigError(str(e), argument=what, value=value, expected=e.expected) from None


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint of a problem: ``source`` is ``"init"`` (the problem itself) or a problem file,
    used as it is (its parameters, data, loss and noise)."""

    label: str
    source: str = "init"


@dataclass(frozen=True)
class ProblemSpec:
    """Where a problem comes from: exactly one of ``preset``, ``arch`` and ``file``.

    Attributes:
        name: label in the result tables (default: the problem's own name, e.g. ``paper-seed0``).
        preset / arch / file: the source (see :func:`sbn_bench.problems.preset_problem`,
            :func:`~sbn_bench.problems.random_problem`, :func:`~sbn_bench.problems.load_problem`).
        seed, data_points, loss, noise: for ``preset`` (seed) and ``arch`` (all four).
        kl: for ``arch`` with loss ``vae``: ``"analytic"`` or ``"sampled"``
            (:attr:`sbn_bench.problems.Problem.kl`).
        checkpoints: ``(label, "init" | problem file)`` pairs, measured in this order.
    """

    preset: str | None = None
    arch: str | None = None
    file: str | None = None
    seed: int = 0
    data_points: int = problems.DEFAULT_DATA_POINTS
    loss: str = "logistic"
    noise: str = "logistic"
    name: str | None = None
    checkpoints: tuple[Checkpoint, ...] = (Checkpoint("init"),)
    kl: str = "analytic"

    def __post_init__(self) -> None:
        _plain_integers(self)
        given = [k for k in ("preset", "arch", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            what = "none was given" if not given else f"got {' and '.join(given)}"
            raise ConfigError(f"a problem needs exactly one of preset, arch or file ({what})",
                              argument="problem", expected="exactly one of preset, arch or file")
        for k, example in (("preset", "'paper'"), ("arch", "'2-5-5-5-1'"), ("file", "'problem.npz'")):
            v = getattr(self, k)
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"{k}={v!r} must be a string such as {example}", argument=k,
                                  value=v, expected=f"a string such as {example}")
        if self.preset is not None and self.preset not in problems.PRESETS:
            raise ConfigError(f"preset={self.preset!r} is unknown; expected one of "
                              f"{', '.join(problems.PRESETS)}", argument="preset",
                              value=self.preset, expected=f"one of {', '.join(problems.PRESETS)}")
        if self.arch is not None:
            try:
                problems.parse_arch(self.arch)
            except problems.ProblemError as e:
                err = ConfigError(str(e), argument="arch", value=self.arch, expected=e.expected)
                err.usage = e.usage  # a layer list file's content is the file's fault (exit 1)
                raise err from None
        _check_int("seed", self.seed, 0, MAX_SEED)
        _check_int("data_points", self.data_points, 1)
        if self.loss not in LOSS_NAMES:
            raise ConfigError(f"loss={self.loss!r} is unknown; expected one of {', '.join(LOSS_NAMES)}",
                              argument="loss", value=self.loss,
                              expected=f"one of {', '.join(LOSS_NAMES)}")
        if self.noise not in NOISE_NAMES:
            raise ConfigError(f"noise={self.noise!r} is unknown; expected one of "
                              f"{', '.join(NOISE_NAMES)}", argument="noise", value=self.noise,
                              expected=f"one of {', '.join(NOISE_NAMES)}")
        if self.arch is not None:
            try:
                problems.check_arch_loss(self.arch, self.loss)
                problems.network_of(self.arch, self.loss)
            except problems.ProblemError as e:
                raise ConfigError(str(e), argument="arch", value=self.arch,
                                  expected=e.expected) from None
        if self.kl not in problems.KL_MODES:
            raise ConfigError(f"kl={self.kl!r} is unknown; expected one of "
                              f"{', '.join(problems.KL_MODES)}", argument="kl", value=self.kl,
                              expected=f"one of {', '.join(problems.KL_MODES)}")
        if self.arch is not None and self.kl != "analytic" and self.loss != "vae":
            raise ConfigError(f"kl={self.kl!r} applies to loss 'vae' only (this problem's loss is "
                              f"{self.loss!r}); remove kl", argument="kl", value=self.kl,
                              expected="no kl for this loss")
        if self.arch is None:  # fixed by the preset or the file: a value here would be ignored
            source = f"preset {self.preset!r}" if self.preset is not None else f"file {self.file!r}"
            for k, default in (("data_points", problems.DEFAULT_DATA_POINTS), ("loss", "logistic"),
                               ("noise", "logistic"), ("kl", "analytic")):
                if getattr(self, k) != default:
                    raise ConfigError(f"{k}={getattr(self, k)!r} applies to arch problems only; "
                                      f"{source} fixes it (remove {k})", argument=k,
                                      value=getattr(self, k), expected="no value for this problem")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise ConfigError(f"name={self.name!r} must be a non-empty string", argument="name")
        if self.name is not None and (re.search(r"[/\\\x00-\x1f]", self.name)
                                      or self.name.startswith(".")):
            raise ConfigError(f"name={self.name!r} names files of the report: expected no '/', "
                              "'\\' or control character, and no leading '.'", argument="name",
                              value=self.name, expected="a name such as 'paper-seed0'")
        if not isinstance(self.checkpoints, (list, tuple)):
            raise ConfigError(f"checkpoints={self.checkpoints!r} must be a tuple of Checkpoint(label, "
                              "source) items", argument="checkpoints", value=self.checkpoints,
                              expected="Checkpoint items")
        if not self.checkpoints:
            raise ConfigError("checkpoints is empty; expected at least one, e.g. {init = 'init'}",
                              argument="checkpoints", expected="at least one checkpoint")
        bad = [c for c in self.checkpoints if not isinstance(c, Checkpoint)]
        if bad:
            raise ConfigError(f"checkpoints holds {bad[0]!r}, expected Checkpoint(label, source) items, "
                              "e.g. Checkpoint('init', 'init')", argument="checkpoints", value=bad[0],
                              expected="Checkpoint items")
        labels = [c.label for c in self.checkpoints]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ConfigError(f"checkpoint labels must be unique; repeated: {', '.join(dup)}",
                              argument="checkpoints", expected="unique labels")
        for c in self.checkpoints:
            if not isinstance(c.label, str) or not c.label.strip():
                raise ConfigError(f"checkpoint label {c.label!r} must be a non-empty string",
                                  argument="checkpoints", value=c.label,
                                  expected="a non-empty string")
            if not isinstance(c.source, str) or not c.source:
                raise ConfigError(f"checkpoint {c.label!r}: source {c.source!r} must be 'init' or a "
                                  "problem file")

    @property
    def label(self) -> str:
        """The problem's name in the tables: :attr:`name`, else the name its constructor gives
        (``paper-seed0``, ``arch-2-5-5-5-1-seed0``, the file's stem)."""
        if self.name is not None:
            return self.name
        if self.arch is not None:
            return f"arch-{problems.network_of(self.arch, self.loss).arch()}-seed{self.seed}"
        if self.preset is not None:
            return f"{self.preset}-seed{self.seed}"
        return Path(str(self.file)).stem

    def shape(self) -> tuple[tuple[int, ...], int] | None:
        """``(widths, data points)`` of the problem before it is built (None for a file, which must
        be read to know it): size checks run on it first."""
        if self.arch is not None:
            return problems.parse_arch(self.arch), self.data_points
        if self.preset is not None:
            return problems.PRESET_SHAPES[self.preset]
        return None

    def reference_shape(self) -> dict[str, object] | None:
        """What the exact reference's size guard needs before the problem is built (widths, data
        points, loss, the head's hidden widths), or None for a file."""
        shape = self.shape()
        if shape is None:
            return None
        if self.arch is not None:
            net, loss = problems.network_of(self.arch, self.loss), self.loss
        else:
            assert self.preset is not None
            loss = problems.PRESET_LOSS[self.preset]
            arch = problems.DIGITS_ARCHS.get(self.preset)
            net = problems.network_of(arch, loss) if arch else None
        head = tuple(layer.n_out for layer in net.head[:-1] if layer.has_params) if net else ()
        return {"widths": shape[0], "num_data": shape[1], "loss": loss, "head": head,
                "arch": net.arch() if net else None}

    def base_problem(self) -> Problem:
        """The problem this spec names (its ``init`` checkpoint), named :attr:`label`."""
        if self.file is not None:
            p = problems.load_problem(self.file)
        elif self.arch is not None:
            p = problems.random_problem(self.arch, self.seed, data_points=self.data_points,
                                        loss=self.loss, noise=self.noise, kl=self.kl)
        else:
            assert self.preset is not None
            p = problems.preset_problem(self.preset, self.seed)
        return p if self.name is None else p.with_params(p.params, name=self.name)

    def load(self) -> list[tuple[str, Problem]]:
        """``(checkpoint label, problem)`` for every checkpoint, each named like the base problem.

        Raises:
            ProblemError: a problem or checkpoint file that cannot be used, or a checkpoint whose
                architecture differs from the problem's.
        """
        base = self.base_problem()
        out = []
        for c in self.checkpoints:
            if c.source == "init":
                out.append((c.label, base))
                continue
            p = problems.load_problem(c.source)
            if p.widths != base.widths:
                raise problems.ProblemError(
                    f"checkpoint {c.label!r} ({c.source}) has architecture {p.arch}, but problem "
                    f"{base.name!r} has {base.arch}")
            out.append((c.label, p.with_params(p.params, name=base.name)))
        return out


@dataclass(frozen=True)
class ThroughputConfig:
    """Throughput measurement (SPEC §5 "Cost"; method in :mod:`sbn_bench.throughput`): once per
    network shape, every estimator's rounds interleaved, each round at least ``min_round_s``
    seconds (``batch`` samples per call, or calibrated), at least ``rounds`` rounds and more (up to
    ``max_rounds`` and ``max_seconds``) until the confidence interval of the median is within
    ``rel_width``; ``warmup`` untimed calls first. ``rounds`` is the least number of rounds: a
    ``max_rounds`` below it is taken as ``rounds`` (``--rounds 40`` needs no ``max_rounds``)."""

    enabled: bool = True
    warmup: int = 1
    rounds: int = 7
    batch: int | None = None
    max_rounds: int = 30
    min_round_s: float = 0.2
    max_seconds: float = 20.0
    rel_width: float = 0.2

    def __post_init__(self) -> None:
        _plain_integers(self)
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"throughput.enabled={self.enabled!r} must be true or false",
                              argument="throughput.enabled")
        _check_int("throughput.warmup", self.warmup, 0, MAX_ROUNDS)
        _check_int("throughput.rounds", self.rounds, 1, MAX_ROUNDS)
        _check_int("throughput.max_rounds", self.max_rounds, 1, MAX_ROUNDS)
        if self.max_rounds < self.rounds:
            object.__setattr__(self, "max_rounds", self.rounds)
        if self.batch is not None:
            _check_int("throughput.batch", self.batch, 1, MAX_SAMPLES)
        for name in ("min_round_s", "max_seconds", "rel_width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise ConfigError(f"throughput.{name}={v!r} must be a number > 0",
                                  argument=f"throughput.{name}", value=v, expected="a number > 0")
            object.__setattr__(self, name, float(v))


def parse_seeds(text: str) -> tuple[int, ...]:
    """Seeds written as a list and ranges, as ``--seeds`` takes them: ``"0-4"`` → ``(0, 1, 2, 3,
    4)``, ``"0,2,5"``, ``"0-2,7"``; in the order given, each once, at most :data:`MAX_SEEDS`.

    Raises:
        ValueError: not such a list (an empty item included), a range running backwards, more
            than :data:`MAX_SEEDS` seeds, or a seed twice.
    """
    spans: list[tuple[int, int]] = []
    parts = [p.strip() for p in text.split(",")]
    if parts == [""]:
        raise ValueError("no seed given")
    for part in parts:
        lo, sep, hi = part.partition("-")
        if not part:
            raise ValueError("an empty item (two commas, or one at an end)")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise ValueError(f"{part!r} is neither a seed nor a range such as 0-4")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"range {part!r} runs backwards")
        spans.append((a, b))
    count = sum(b - a + 1 for a, b in spans)  # before building the list: 0-99999999999 is refused
    if count > MAX_SEEDS:
        raise ValueError(f"{count} seeds; at most {MAX_SEEDS} in one list")
    out = [s for a, b in spans for s in range(a, b + 1)]
    twice = repeated(out)
    if twice:
        raise ValueError(f"seed(s) {twice} given twice")
    return tuple(out)


def seed_tuple(values: Iterable[Any]) -> tuple[Any, ...]:
    """``values`` (a list, a range, a generator …) as a tuple of at most :data:`MAX_SEEDS`
    items, refused before a longer one is built: ``range(10**11)`` by its length, a generator
    after ``MAX_SEEDS + 1`` items.

    Raises:
        ValueError: ``"has N values; expected at most MAX_SEEDS"``, for the caller to prefix
            with the argument's name; TypeError: ``values`` is not iterable.
    """
    if hasattr(values, "__len__") and len(values) > MAX_SEEDS:  # type: ignore[arg-type]
        raise ValueError(f"has {len(values)} values; expected at most {MAX_SEEDS}")  # type: ignore[arg-type]
    items = tuple(itertools.islice(values, MAX_SEEDS + 1))
    if len(items) > MAX_SEEDS:
        raise ValueError(f"has more than {MAX_SEEDS} values; expected at most {MAX_SEEDS}")
    return items


def repeated(values: Sequence[int]) -> str:
    """The values given more than once, sorted, as ``"1, 3"`` (``""`` when none)."""
    return ", ".join(map(str, sorted(v for v, n in Counter(values).items() if n > 1)))


def _one_or_many(name: str, value: Any) -> tuple[Any, ...]:
    """``seeds`` or ``M`` as a tuple: one integer (any integer type) is one item, a string a comma
    list ("0,1"; seeds also take ranges, "0-4"), anything else iterated; refused naming the
    argument when it is none of these."""
    if isinstance(value, str) and name == "seeds":
        try:
            return parse_seeds(value)
        except ValueError as e:
            raise ConfigError(f"seeds={value!r}: {e}; expected seeds such as '0-4' or '0,2,5'",
                              argument=name, value=value, expected="seeds") from None
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(","))
        except ValueError:
            example = "'1,10,100', 'default' or 'paper'" if name == "M" else "'0,1'"
            raise ConfigError(f"{name}={value!r} is not a comma list of integers (e.g. {example})",
                              argument=name, value=value, expected="integers") from None
    if not isinstance(value, bool):
        try:
            return (operator.index(value),)
        except TypeError:
            pass
    try:
        if name == "seeds":
            try:
                return seed_tuple(value)
            except ValueError as e:
                raise ConfigError(f"seeds {e}", argument=name,
                                  expected=f"≤ {MAX_SEEDS} seeds") from None
        return tuple(value)
    except TypeError:
        raise ConfigError(f"{name}={value!r} must be an integer or a sequence of integers",
                          argument=name, value=value, expected="integers") from None


@dataclass(frozen=True)
class RunConfig:
    """Everything a run measures (see the module docstring for the TOML form).

    Attributes:
        problems: the problems, each with its checkpoints.
        estimators: specs as on the command line (``"concrete:tau=0.1"``); None: the defaults
            (:data:`DEFAULT_ESTIMATORS`), each on the problems it supports (the others are skipped
            with a warning, whereas an estimator asked for by name must support every problem).
        plugins: plugin files for the estimator registry.
        samples: ``S``, single-sample estimates per cell (Monte-Carlo statistics and cosine).
        M: sample counts for ``mse``/``rrmse``/``cosine_*``; ``None``: :func:`default_m_grid` up
            to ``S``. Cosine needs ``M ≤ S``; larger M get mse/rrmse only.
        seeds: sampling seeds; one cell per seed.
        device: ``"cpu"`` or ``"cuda"``; dtype: the dtype the estimators' samples are drawn in
            (float32 by default: about twice as fast, and the metrics agree with float64 within
            their standard errors); the reference and exact-mode enumeration are always float64.
        mode: ``"auto"`` (exact where possible), ``"exact"`` or ``"mc"``.
        max_paths: exact mode only when a data point has ``2^{Σ n_k} ≤ max_paths`` paths.
        chunk: samples per ``estimate()`` call; ``None``: as many as ``memory_budget`` allows.
        memory_budget: bytes the estimator's tensors may take per chunk (an upper estimate; see
            "Memory budget" in the module docstring); requests that cannot fit are refused.
            ``None``: :func:`default_memory_budget` of ``device`` (1 GiB on the CPU).
        max_exact_bytes: memory limit of the exact reference (refused beyond).
        target_rrmse: the target ``t`` of ``samples_to_accuracy`` and ``time_to_accuracy_s``.
        stderr_batches: batches for batch-means standard errors (see :mod:`sbn_bench.metrics`).
        cosine_groups: at most this many independent M-means per M for the cosine metrics.
        throughput: see :class:`ThroughputConfig`.
        out: output folder; resume: continue a run in ``out`` (it may add problems, checkpoints,
            estimators, seeds and plugin files).
        executor: where the cells run: ``"auto"`` (worker processes, one per CPU, for a run
            large enough to repay starting them, else this process:
            :func:`sbn_bench.runner.executors.resolve_auto`), ``"serial"`` (in this process),
            ``"processes[:N]"`` or ``"dask[:ADDRESS]"``
            (:func:`sbn_bench.runner.executors.make_executor`). The numbers do not depend on it.
        threads: torch threads each cell computes with (statistics and throughput cells, and
            the manager's exact references), whatever the executor; one per process suits the
            small networks measured here (more threads mostly spin). Recorded in the manifest
            (``device.torch_threads``) and part of the run's identity (``--resume`` refuses
            another): intra-op parallelism may change the order of floating-point sums, so the
            numbers are the same only for the same thread count.
        cell_timeout: seconds a cell may take before it is stopped and recorded as failed
            (:data:`DEFAULT_CELL_TIMEOUT`); None: no limit.
        reference: the reference gradient (SPEC §8, :func:`parse_reference`): ``"exact"``
            (enumeration; a problem too large is refused), ``"mc[:ESTIMATOR[:N]]"`` (the mean of N
            samples of an unbiased estimator, :mod:`sbn_bench.runner.mcref`) or ``"auto"`` (exact
            where the size guard allows, else Monte Carlo).
        reference_rel_error: the Monte-Carlo reference's target relative error ε (when N is not
            given); reference_target: what it applies to, ``"network"`` (the whole gradient) or
            ``"layers"`` (every parameter group). reference_time_budget: seconds its samples may
            take (refused beyond, before any work). reference_seed: the seed of its samples.
            reference_cache: where Monte-Carlo references are cached (None: ``$SBN_BENCH_CACHE``
            or ``~/.cache/sbn-bench``).
    """

    problems: tuple[ProblemSpec, ...]
    estimators: tuple[str, ...] | None = None
    plugins: tuple[str, ...] = ()
    samples: int = 2000
    M: tuple[int, ...] | None = None
    seeds: tuple[int, ...] = (0,)
    device: str = "cpu"
    dtype: str = "float32"
    mode: str = "auto"
    max_paths: int = DEFAULT_MAX_PATHS
    chunk: int | None = None
    memory_budget: int | None = None
    max_exact_bytes: int = DEFAULT_MAX_BYTES
    target_rrmse: float = 0.1
    stderr_batches: int = 32
    cosine_groups: int = 1000
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)
    budget_defaulted: ClassVar[bool] = False
    """Whether ``memory_budget`` was left to :func:`default_memory_budget` (set per instance; not
    a field, so not in :meth:`to_dict`, ``==`` or the manifest): :meth:`with_` chooses the default
    again for another device, and a resume takes the run's recorded budget."""
    out: str | None = None
    resume: bool = False
    executor: str = "auto"
    cell_timeout: float | None = DEFAULT_CELL_TIMEOUT
    threads: int = 1
    reference: str = "auto"
    reference_rel_error: float = DEFAULT_REFERENCE_REL_ERROR
    reference_target: str = "network"
    reference_time_budget: float = DEFAULT_REFERENCE_TIME_BUDGET
    reference_seed: int = 0
    reference_cache: str | None = None

    def __post_init__(self) -> None:
        _plain_integers(self)
        problems = (self.problems,) if isinstance(self.problems, ProblemSpec) else self.problems
        if isinstance(problems, (str, bytes)) or not isinstance(problems, Iterable):
            raise ConfigError(f"problems={problems!r} must be a ProblemSpec or a list of them",
                              argument="problems", value=problems,
                              expected="a ProblemSpec or a list of ProblemSpec objects")
        object.__setattr__(self, "problems", tuple(problems))
        # one string (or path, or seed) is one item, as on the command line: "psa,st" is two specs,
        # not the characters p, s, a, …
        if isinstance(self.estimators, str):
            try:
                object.__setattr__(self, "estimators", tuple(split_specs(self.estimators)))
            except EstimatorSpecError as e:
                raise ConfigError(str(e), argument="estimators", value=self.estimators) from None
        elif self.estimators is not None:
            if not isinstance(self.estimators, (list, tuple)) or not all(
                    isinstance(e, str) for e in self.estimators):  # b"psa" was read as 112, 115, …
                raise ConfigError(f"estimators={short_repr(self.estimators, 60)} must be a list of "
                                  "estimator specs or one string such as 'psa,st'",
                                  argument="estimators", value=self.estimators,
                                  expected="a list of specs or one string")
            object.__setattr__(self, "estimators", tuple(self.estimators))
        try:  # one path is one file, as load_plugins reads it; b"x.py" is not five files
            plugins = plugin_paths(self.plugins)
        except SbnBenchError as e:
            raise ConfigError(str(e), argument="plugins", value=self.plugins,
                              expected=e.expected) from None
        object.__setattr__(self, "plugins", tuple(os.fspath(p) for p in plugins))
        object.__setattr__(self, "seeds", _one_or_many("seeds", self.seeds))
        if isinstance(self.M, str) and self.M in ("paper", "default"):  # as --M and TOML take it
            _check_int("samples", self.samples, 1, MAX_SAMPLES)
            object.__setattr__(self, "M", named_m_grid(self.M, self.samples))
        if self.M is not None:
            object.__setattr__(self, "M", _one_or_many("M", self.M))
        if not self.problems:
            raise ConfigError("problems is empty; give at least one problem", argument="problems",
                              value=self.problems, expected="at least one ProblemSpec")
        for p in self.problems:
            if not isinstance(p, ProblemSpec):
                raise ConfigError(f"problems must hold ProblemSpec objects, got {type(p).__name__}",
                                  argument="problems", value=p, expected="ProblemSpec objects")
        if self.estimators is not None and not self.estimators:
            raise ConfigError("estimators is empty; expected e.g. 'psa,st,arm'",
                              argument="estimators")
        for e in self.estimators or ():
            if not isinstance(e, str) or not e.strip():
                raise ConfigError(f"estimators: {e!r} is not an estimator spec such as 'psa' or "
                                  "'concrete:tau=0.1'")
        _check_int("samples", self.samples, 1, MAX_SAMPLES)
        if self.M is not None:
            if not self.M:
                raise ConfigError("M is empty; expected sample counts such as 1,10,100",
                                  argument="M")
            for m in self.M:
                _check_int("M", m, 1)
            over = [m for m in self.M if m > self.samples]
            if over:
                raise ConfigError(f"M={list(self.M)} has values above samples={self.samples} "
                                  f"({', '.join(map(str, over))}): an average of M samples needs at "
                                  "least M samples; raise samples or lower M", argument="M",
                                  value=list(self.M), expected=f"values ≤ samples={self.samples}")
            if len(set(self.M)) != len(self.M):
                raise ConfigError(f"M={list(self.M)} has repeated values", argument="M")
        if not self.seeds:
            raise ConfigError("seeds is empty; expected at least one seed", argument="seeds",
                              value=(), expected="at least one seed")
        for s in self.seeds:
            _check_int("seeds", s, 0, MAX_SEED)
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={list(self.seeds)} has repeated values", argument="seeds")
        _check_choice("device", self.device, DEVICES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("mode", self.mode, MODES)
        if not isinstance(self.resume, bool):  # resume="no" would resume
            raise ConfigError(f"resume={self.resume!r} must be true or false", argument="resume",
                              value=self.resume, expected="a bool")
        for name in ("out", "reference_cache"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ConfigError(f"{name}={value!r} must be a folder path", argument=name, value=value,
                                  expected="a str or os.PathLike")
            if value is not None and os.fspath(value) == "":  # pathlib reads '' as '.'
                raise ConfigError(f"{name}={EMPTY_FOLDER}", argument=name, value=value,
                                  expected="a folder path")
        if isinstance(self.reference_cache, os.PathLike):  # a Path, as out takes one
            object.__setattr__(self, "reference_cache", os.fspath(self.reference_cache))
        _check_int("max_paths", self.max_paths, 1)
        if self.chunk is not None:
            _check_int("chunk", self.chunk, 1)
        object.__setattr__(self, "budget_defaulted", self.memory_budget is None)
        if self.memory_budget is None:
            object.__setattr__(self, "memory_budget", default_memory_budget(self.device))
        for name in ("memory_budget", "max_exact_bytes"):  # "1GiB" as --memory-budget and TOML
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, parse_size(getattr(self, name), name))
        _check_int("memory_budget", self.memory_budget, 1)
        _check_int("max_exact_bytes", self.max_exact_bytes, 1)
        if isinstance(self.target_rrmse, bool) or not isinstance(self.target_rrmse, (int, float)) \
                or not math.isfinite(self.target_rrmse) or not 0 < self.target_rrmse <= MAX_TARGET_RRMSE:
            # above the bound t²‖g‖² overflows float64 (every cell failed with OverflowError)
            raise ConfigError(f"target_rrmse={self.target_rrmse!r} must be a number > 0 and ≤ "
                              f"{MAX_TARGET_RRMSE:g}", argument="target_rrmse",
                              value=self.target_rrmse, expected=f"0 < t ≤ {MAX_TARGET_RRMSE:g}")
        object.__setattr__(self, "target_rrmse", float(self.target_rrmse))
        _check_int("stderr_batches", self.stderr_batches, 2)
        _check_int("cosine_groups", self.cosine_groups, 1)
        if not isinstance(self.executor, str) or not self.executor.strip():
            raise ConfigError(f"executor={self.executor!r} must be a non-empty string such as "
                              "'auto' or 'processes:4'", argument="executor")
        _check_int("threads", self.threads, 1, MAX_THREADS)
        if self.cell_timeout is not None:
            if isinstance(self.cell_timeout, bool) or not isinstance(self.cell_timeout, (int, float)) \
                    or not math.isfinite(self.cell_timeout) \
                    or not 0 < self.cell_timeout <= MAX_CELL_TIMEOUT:
                # above the bound the system's timers overflow (every cell failed, or a traceback)
                raise ConfigError(f"cell_timeout={self.cell_timeout!r} must be a number of seconds "
                                  f"> 0 and ≤ {MAX_CELL_TIMEOUT:g} (31 years), or None for no "
                                  "limit", argument="cell_timeout", value=self.cell_timeout,
                                  expected=f"0 < seconds ≤ {MAX_CELL_TIMEOUT:g}")
            object.__setattr__(self, "cell_timeout", float(self.cell_timeout))
        parse_reference(self.reference)
        _check_choice("reference_target", self.reference_target, REFERENCE_TARGETS)
        for name, lo, hi in (("reference_rel_error", 0.0, 1.0),
                             ("reference_time_budget", 0.0, math.inf)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v < hi:
                expected = "a number in (0, 1)" if hi == 1.0 else "seconds > 0"
                raise ConfigError(f"{name}={v!r} must be {expected}", argument=name, value=v,
                                  expected=expected)
            object.__setattr__(self, name, float(v))
        _check_int("reference_seed", self.reference_seed, 0, MAX_SEED)
        if self.reference_cache is not None and (not isinstance(self.reference_cache, str)
                                                 or not self.reference_cache):
            raise ConfigError(f"reference_cache={self.reference_cache!r} must be a folder",
                              argument="reference_cache", expected="a folder path")
        if not isinstance(self.throughput, ThroughputConfig):
            raise ConfigError(f"throughput={self.throughput!r} must be a ThroughputConfig",
                              argument="throughput", value=self.throughput,
                              expected="a ThroughputConfig")
        names = [p.name for p in self.problems if p.name is not None]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"problem names must be unique; repeated: {', '.join(dup)}",
                              argument="problems", expected="unique problem names")
        by_file: dict[str, str] = {}
        for label in (p.label for p in self.problems):
            other = by_file.setdefault(slug(label), label)
            if other != label:  # one report figure file for both problems
                raise ConfigError(f"problem names {other!r} and {label!r} give the same file name "
                                  f"in the report ({slug(label)!r}); rename one", argument="name",
                                  value=label, expected="names that differ in letters or digits")

    @property
    def estimator_specs(self) -> tuple[str, ...]:
        """The estimators to run: :attr:`estimators`, or the defaults when it is None: the
        presets' own lists (:data:`sbn_bench.problems.PRESET_ESTIMATORS`, e.g. the binary-VAE
        literature's for the digits VAEs) for a run of presets that have one, else
        :data:`DEFAULT_ESTIMATORS`."""
        if self.estimators is not None:
            return self.estimators
        out: list[str] = []
        for p in self.problems:
            own = problems.PRESET_ESTIMATORS.get(p.preset or "", DEFAULT_ESTIMATORS)
            out += [e for e in own if e not in out]
        return tuple(out) or DEFAULT_ESTIMATORS

    @property
    def m_grid(self) -> tuple[int, ...]:
        """The M values: ``M`` as given, or :func:`default_m_grid` up to ``S``."""
        return self.M if self.M is not None else default_m_grid(self.samples)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the manifest's ``config``)."""
        d = asdict(self)
        d["problems"] = [{**asdict(p), "checkpoints": [[c.label, c.source] for c in p.checkpoints]}
                         for p in self.problems]
        d["m_grid"] = list(self.m_grid)
        return _jsonable(d)

    def with_(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` (validated again). A default ``memory_budget`` stays the default:
        chosen again for the copy's device (:func:`default_memory_budget`) unless ``changes`` give
        one. (``dataclasses.replace`` keeps the number.)"""
        if self.budget_defaulted and "memory_budget" not in changes:
            changes = {**changes, "memory_budget": None}
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, base: str | Path | None = None,
                  out: str | None = None) -> RunConfig:
        """The inverse of :meth:`to_dict` (e.g. a manifest's ``config``): the same configuration.

        Args:
            d: a dict written by :meth:`to_dict`.
            base: the folder that relative paths (problem, checkpoint and plugin files, ``out``)
                refer to, e.g. the manifest's ``cwd``; None leaves them as they are.
            out: replaces the recorded output folder (a rerun elsewhere).

        Raises:
            ConfigError: a key or value that :class:`RunConfig` does not accept.
        """
        def at(p: Any) -> Any:
            if base is None or not isinstance(p, str) or Path(p).is_absolute():
                return p
            return str(Path(base) / p)

        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"m_grid"})
        if unknown:
            raise ConfigError(f"config has unknown keys {', '.join(map(repr, unknown))} (written by "
                              "another sbn-bench version?)")
        kw = {k: v for k, v in d.items() if k in known}
        try:
            specs = []
            for p in kw.get("problems") or []:
                p = dict(p)
                if p.get("file") is not None:
                    p["file"] = at(p["file"])
                p["checkpoints"] = tuple(Checkpoint(str(lab), src if src == "init" else at(src))
                                         for lab, src in p.get("checkpoints") or [])
                specs.append(ProblemSpec(**p))
            kw["problems"] = tuple(specs)
            if "throughput" in kw:
                kw["throughput"] = ThroughputConfig(**kw["throughput"])
            for k in ("estimators", "seeds"):
                if kw.get(k) is not None:
                    kw[k] = tuple(kw[k])
            if kw.get("M") is not None:
                kw["M"] = tuple(kw["M"])
            kw["plugins"] = tuple(at(p) for p in kw.get("plugins") or ())
            kw["out"] = out if out is not None else at(kw.get("out"))
            kw["resume"] = False
            return cls(**kw)
        except TypeError as e:
            raise ConfigError(f"config cannot be rebuilt: {e}") from None


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _plain_integers(config: Any) -> None:
    """Turn a config's NumPy integers (``np.int64(100)``, a grid from ``np.arange``) into Python
    ints, in its fields and in tuples or lists of them, before the checks: they are integers (as
    :func:`sbn_bench.estimate` takes them), but the manifest's JSON writer would refuse them."""
    def plain(v: Any) -> Any:
        if type(v).__name__ == "ndarray" and v.ndim == 1 and v.dtype.kind in "iu":  # np.arange(…)
            return tuple(int(x) for x in v)
        if isinstance(v, (tuple, list)) and any(plain_int(x) is not x for x in v):
            return type(v)(plain_int(x) for x in v)
        return plain_int(v)

    for f in fields(config):
        v = getattr(config, f.name)
        new = plain(v)
        if new is not v:
            object.__setattr__(config, f.name, new)


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    expected = f"an integer ≥ {minimum}" + (f" and ≤ {maximum}" if maximum is not None else "")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        raise ConfigError(f"{name}={value!r} must be {expected}", argument=name, value=value,
                          expected=expected)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:  # (a list is unhashable in a dict's keys)
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}", argument=name,
                          value=value, expected=f"one of {', '.join(choices)}")


# --------------------------------------------------------------------------------------------
# TOML

_TOP_KEYS = {"estimators", "plugins", "samples", "M", "seeds", "device", "dtype", "mode",
             "max_paths", "chunk", "memory_budget", "max_exact_bytes", "target_rrmse",
             "stderr_batches", "cosine_groups", "out", "throughput", "problem", "executor",
             "cell_timeout", "threads", "sweep", "reference", "reference_rel_error",
             "reference_time_budget", "reference_seed", "reference_cache", "reference_target"}
_PROBLEM_KEYS = {f.name for f in fields(ProblemSpec)}
_THROUGHPUT_KEYS = {f.name for f in fields(ThroughputConfig)}


def _line_of(text: str, key: str, start: int = 0, table: str | None = None, index: int = 0) -> int:
    """Best-effort 1-based line of ``key = …`` (within the ``index``-th ``[[table]]`` / ``[table]``
    when given, else at or after line ``start``); 0 when not found."""
    lines = text.splitlines()
    lo = start
    if table is not None:
        headers = [i for i, ln in enumerate(lines)
                   if re.match(rf"\s*\[\[?\s*{re.escape(table)}\s*\]\]?\s*(#.*)?$", ln)]
        if index < len(headers):
            lo = headers[index]
            if key == "":
                return lo + 1
    for i in range(lo, len(lines)):
        if i > lo and table is not None and re.match(r"\s*\[", lines[i]):
            # the key written as a sub-table of this one: [problem.checkpoints]
            sub = rf"\s*\[\s*{re.escape(table)}\s*\.\s*\"?{re.escape(key)}\"?\s*\]\s*(#.*)?$"
            return i + 1 if key and re.match(sub, lines[i]) else 0
        if re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", lines[i]):
            return i + 1
    return 0


def _suggest(key: str, valid: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=2, cutoff=0.5)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def _rel(base: Path, p: Any, key: str, must_exist: bool = False) -> str:
    if not isinstance(p, str) or not p:
        raise ConfigError(f"{key}={p!r} must be a file path (a string)", argument=key)
    path = Path(p)
    full = path if path.is_absolute() else base / path
    # normalised ("examples/../runs" → "runs") only where it names the same place: "link/../x" is
    # where the system's lookup (which follows the symbolic link) goes, and a lexical "x" could be
    # another file
    lexical = Path(os.path.normpath(full))
    if lexical != full and os.path.realpath(lexical) == os.path.realpath(full):
        full = lexical
    if must_exist and not full.is_file():
        where = "" if path.is_absolute() else " (a relative path is read from the TOML file's folder)"
        what = f"{str(full)!r} is a folder" if full.is_dir() else f"there is no file {str(full)!r}"
        raise ConfigError(f"{key}={p!r}: {what}{where}", argument=key, value=p,
                          expected="an existing problem file (.npz)")
    return str(full)


def _m_value(v: Any) -> tuple[int, ...] | str | None:
    if isinstance(v, str):
        if v == "default":
            return None
        if v == "paper":
            return "paper"
        raise ConfigError(f"M={v!r} must be a list of integers, 'default' or 'paper'", argument="M")
    if not isinstance(v, list):
        raise ConfigError(f"M={v!r} must be a list of integers, 'default' or 'paper'", argument="M")
    return tuple(v)


@dataclass(frozen=True)
class _TomlFile:
    """A TOML file read for :func:`load_config`: its path, text and table, and the errors located
    in it (:meth:`fail`)."""

    path: Path
    text: str
    raw: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> _TomlFile:
        where = f"config file {str(path)!r}"
        if not path.exists():
            raise ConfigError(f"{where} does not exist", argument=str(path),
                              expected="an existing TOML file")
        if not path.is_file():
            raise ConfigError(f"{where} is not a file", argument=str(path),
                              expected="a TOML file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{where} cannot be read ({e.strerror or e})",
                              argument=str(path)) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[:e.start].count(b"\n") + 1
            raise ConfigError(f"{where}, line {line}: not UTF-8 text (byte {data[e.start]:#04x} at "
                              f"offset {e.start}); TOML files are UTF-8", argument=str(path),
                              expected="UTF-8 text") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            msg = str(e)
            if "line" not in msg:  # e.g. "(at end of document)"
                line = getattr(e, "lineno", None) or len(text.splitlines()) or 1
                msg += f" (line {line})"
            raise ConfigError(f"{where}: invalid TOML: {msg}", argument=str(path),
                              expected="valid TOML") from None
        except RecursionError:
            raise ConfigError(f"{where}: invalid TOML: nested too deeply", argument=str(path),
                              expected="valid TOML") from None
        except ValueError as e:  # e.g. an integer of more than 4300 digits
            raise ConfigError(f"{where}: invalid TOML: {e}", argument=str(path),
                              expected="valid TOML") from None
        return cls(path, text, raw)

    def fail(self, msg: str, key: str | None = "", table: str | None = None, index: int = 0
             ) -> ConfigFileError:
        """An error naming the file and the line of ``key`` (within ``[[table]]`` number
        ``index`` when given)."""
        key = key or ""
        line = _line_of(self.text, key, table=table, index=index) if key or table else 0
        where = f"config file {str(self.path)!r}" + (f", line {line}" if line else "")
        return ConfigFileError(f"{where}: {_toml_spelling(msg)}", argument=key or str(self.path))


def _toml_spelling(msg: str) -> str:
    """A message about a TOML file's value with Python's booleans spelled as TOML's (``samples=True``
    → ``samples=true``); Python's other reprs of TOML values (``'a'``, ``[0, 'a']``, ``1.5``,
    ``inf``) are valid TOML already."""
    parts = re.split(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""", msg)  # quoted: the user's text
    return "".join(p if i % 2 else re.sub(r"(?<=[=\[(, ])(True|False)\b",
                                          lambda m: m.group(1).lower(), p)
                   for i, p in enumerate(parts))


def _top_level_value(k: str, v: Any, base: Path) -> Any:
    """A top-level TOML value as a :class:`RunConfig` field (relative paths against ``base``)."""
    if k == "estimators":
        if isinstance(v, str):
            try:
                v = split_specs(v)
            except EstimatorSpecError as e:
                raise ConfigError(str(e), argument="estimators", value=v,
                                  expected=e.expected) from None
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise ConfigError(f"estimators={v!r} must be a list of specs or one string",
                              argument="estimators")
        return tuple(v)
    if k == "plugins":  # a list, or one file (as the Python API and --plugin take it)
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list):
            raise ConfigError(f"plugins={v!r} must be a list of files or one file", argument="plugins")
        return tuple(_rel(base, p, "plugins") for p in v)
    if k == "M":
        return _m_value(v)
    if k == "seeds":  # a list, one seed, or a string of seeds and ranges ("0-4")
        return tuple(v) if isinstance(v, list) else v if isinstance(v, str) else (v,)
    if k in ("memory_budget", "max_exact_bytes"):
        return parse_size(v, k)
    if k == "reference_cache" and isinstance(v, str):
        v = str(Path(v).expanduser())
    if k in ("out", "reference_cache"):
        return _rel(base, v, k)
    return v


def _settings(f: _TomlFile) -> dict[str, Any]:
    """The top-level keys and ``[throughput]`` of a TOML configuration, as RunConfig fields."""
    for k in f.raw:
        if k not in _TOP_KEYS:
            raise f.fail(f"unknown key {k!r}{_suggest(k, _TOP_KEYS)}; valid keys: "
                         f"{', '.join(sorted(_TOP_KEYS))}", k)
    kw: dict[str, Any] = {}
    key = ""
    try:
        for key, v in f.raw.items():
            if key not in ("problem", "throughput", "sweep"):
                kw[key] = _top_level_value(key, v, f.path.parent)
        key = "throughput"
        if "throughput" in f.raw:
            t = f.raw["throughput"]
            if not isinstance(t, dict):
                raise ConfigError(f"throughput must be a table ([throughput]), got {t!r}",
                                  argument="throughput", value=t, expected="a table")
            for tk in t:
                if tk not in _THROUGHPUT_KEYS:
                    raise f.fail(f"[throughput]: unknown key {tk!r}{_suggest(tk, _THROUGHPUT_KEYS)}"
                                 f"; valid keys: {', '.join(sorted(_THROUGHPUT_KEYS))}", tk,
                                 table="throughput")
            try:
                kw["throughput"] = ThroughputConfig(**t)
            except ConfigError as e:
                raise f.fail(str(e), (e.argument or "").removeprefix("throughput."),
                             table="throughput") from None
    except ConfigFileError:
        raise
    except ConfigError as e:
        raise f.fail(str(e), key) from None
    except TypeError as e:
        raise f.fail(f"{key}: {e}", key) from None
    return kw


def _problem_specs(f: _TomlFile, required: bool) -> tuple[ProblemSpec, ...]:
    """The ``[[problem]]`` tables as :class:`ProblemSpec` objects (at least one when ``required``)."""
    tables = f.raw.get("problem")
    if tables is None or tables == []:  # problem = [] names no problem either
        if required:
            raise f.fail("no [[problem]] or [sweep] table; add at least one, e.g. [[problem]] "
                         "preset = 'paper'", "" if tables is None else "problem")
        return ()
    if not isinstance(tables, list):
        raise f.fail("problem must be an array of tables ([[problem]])", "problem")
    specs = []
    for i, p in enumerate(tables):
        label = f"problem {i + 1}"
        if not isinstance(p, dict):
            raise f.fail(f"{label} is {p!r}; each problem must be a table ([[problem]] with keys "
                         f"such as preset, arch or file)", "problem")
        for pk in p:
            if pk not in _PROBLEM_KEYS:
                raise f.fail(f"{label}: unknown key {pk!r}{_suggest(pk, _PROBLEM_KEYS)}; valid "
                             f"keys: {', '.join(sorted(_PROBLEM_KEYS))}", pk, table="problem",
                             index=i)
        args = dict(p)
        key = ""
        try:
            if "file" in args:
                key = "file"
                args["file"] = _rel(f.path.parent, args["file"], "file", must_exist=True)
            if "checkpoints" in args:
                key = "checkpoints"
                args["checkpoints"] = _checkpoints(args["checkpoints"], f.path.parent)
            key = ""
            specs.append(ProblemSpec(**args))
        except ConfigError as e:
            raise f.fail(f"{label}: {e}", key or e.argument, table="problem", index=i) from None
        except TypeError as e:
            raise f.fail(f"{label}: {e}", "", table="problem", index=i) from None
    return tuple(specs)


def _sweep_specs(f: _TomlFile) -> tuple[ProblemSpec, ...]:
    """The problems of the ``[sweep]`` table (or ``[[sweep]]`` tables), :mod:`sbn_bench.sweep`."""
    if "sweep" not in f.raw:
        return ()
    try:
        points = sweep.expand_sweeps(f.raw["sweep"])
    except sweep.SweepError as e:
        raise f.fail(f"[sweep]: {e}", e.argument if e.argument in sweep.SWEEP_KEYS else "",
                     table="sweep") from None
    specs = []
    for p in points:
        try:
            specs.append(ProblemSpec(**p.problem_fields()))
        except ConfigError as e:
            raise f.fail(f"[sweep]: problem {p.name!r}: {e}", e.argument, table="sweep") from None
    return tuple(specs)


def _checkpoints(ck: Any, base: Path) -> tuple[Checkpoint, ...]:
    if not isinstance(ck, dict):
        raise ConfigError(f"checkpoints={ck!r} must be a table {{label = 'init' | 'file.npz', ...}}",
                          argument="checkpoints")
    return tuple(Checkpoint(str(lab), src if src == "init"
                            else _rel(base, src, f"checkpoint {lab}", must_exist=True))
                 for lab, src in ck.items())


def config_file_error(path: str | Path, message: str, key: str) -> ConfigFileError:
    """A :class:`ConfigFileError` for ``key`` of the TOML file ``path`` (the message names the file
    and the key's line): for checks made after :func:`load_config`, such as the runner's of an
    ``executor`` (:func:`sbn_bench.runner.executors.check_executor`)."""
    return _TomlFile.read(Path(path)).fail(message, key)


def load_config(path: str | Path, **overrides: Any) -> RunConfig:
    """Read a TOML run configuration (schema in the module docstring).

    Args:
        path: the ``.toml`` file.
        overrides: :class:`RunConfig` fields that replace the file's values (the command line's).

    Raises:
        ConfigError: naming the file, the line (when known) and the bad key or value.
    """
    check_path(path, "path", error=ConfigError)
    f = _TomlFile.read(Path(path))
    kw = _settings(f)
    swept = _sweep_specs(f)
    specs = _problem_specs(f, required="problems" not in overrides and not swept)
    labels = [s.label for s in specs]
    clash = sorted({s.label for s in swept} & set(labels))
    if clash:
        raise f.fail(f"[sweep] problem {clash[0]!r} is also a [[problem]] table's name; give each "
                     "problem once", "", table="sweep")
    if specs or swept:
        kw["problems"] = specs + swept
    kw.update(overrides)
    if kw.get("M") == "paper":
        samples = kw.get("samples", RunConfig.samples)
        if isinstance(samples, bool) or not isinstance(samples, int):
            raise f.fail(f"samples={samples!r} must be an integer ≥ 1", "samples")
        kw["M"] = named_m_grid("paper", samples)
    try:
        return RunConfig(**kw)
    except ConfigError as e:
        msg = str(e)
        given = [k for k in overrides if k not in ("out", "resume")
                 and (k == e.argument or re.search(rf"\b{re.escape(k)}=", msg))]
        if given:  # a value given beside the file (the command line's) is refused, or takes part
            raise ConfigError(f"{msg} ({', '.join(given)} given beside config file "
                              f"{str(f.path)!r}, the rest read from it)", argument=given[0],
                              value=overrides[given[0]], expected=e.expected) from None
        raise f.fail(msg, e.argument if e.argument in f.raw else "") from None

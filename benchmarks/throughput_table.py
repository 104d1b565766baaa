"""Throughput of estimators on preset problems, one device and dtype: a Markdown table.

Each preset problem is measured once, every estimator that supports it in interleaved rounds
(:func:`sbn_bench.throughput.measure_group`, the method of ``sbn-bench run``: rounds calibrated to
last ``--min-round`` seconds, the median over rounds with its confidence interval, ``wide`` when
the interval is wider than 20%). The batch per call is what ``--memory-budget`` allows (the run's
planner, :func:`sbn_bench.runner.chunk_size`; its default is ``sbn-bench run``'s: 1 GiB on the CPU,
on a GPU a quarter of its memory up to 16 GiB), capped by ``--max-batch``; a round repeats the call
to last ``--min-round`` seconds, and the table gives the samples of one round. Each estimator is
checked before anything is measured: an unknown problem or spec, or a budget that does not hold
one sample, is refused (exit status 2), as ``sbn-bench run`` refuses it.

Usage::

    python benchmarks/throughput_table.py --device cuda --problems paper,digits-conv,digits-vae \
        [--estimators psa,st,...] [--dtype float32] [--threads 1] [--max-batch 100000] \
        [--memory-budget SIZE] [--out t.md]

``benchmarks/gpu.sh`` runs it on a GPU; on a CPU it gives the figures of the README's tables.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sbn_bench import malloc
from sbn_bench.cli.base import without_name
from sbn_bench.config import ProblemSpec, RunConfig
from sbn_bench.errors import SbnBenchError
from sbn_bench.estimators import load_registry
from sbn_bench.fileio import atomic_write_text
from sbn_bench.problems import PRESET_ESTIMATORS, preset_problem
from sbn_bench.runner import chunk_size
from sbn_bench.runner.memory import check_memory
from sbn_bench.runner.plan import check_device, check_distinct
from sbn_bench.throughput import ThroughputSettings, measure_group
from sbn_bench.units import format_bytes


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value
    parse.__name__ = kind.__name__
    return parse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda [default: cpu]")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--problems", default="paper", help="comma-separated preset names")
    ap.add_argument("--estimators", default=None,
                    help="comma-separated specs [default: every built-in supporting the problem]")
    ap.add_argument("--threads", type=_positive(int), default=1)
    ap.add_argument("--max-batch", type=_positive(int), default=100_000)
    ap.add_argument("--memory-budget", default=None,
                    help="memory per estimate() call that sets the batch (sbn-bench run's option and "
                         "default)")
    ap.add_argument("--min-round", type=_positive(float), default=0.2)
    ap.add_argument("--max-seconds", type=_positive(float), default=60.0)
    ap.add_argument("--out", default=None, help="also write the table to this file")
    a = ap.parse_args(argv)
    if a.out is not None and (a.out == "" or Path(a.out).is_dir()):  # before minutes of measuring
        what = "is empty" if a.out == "" else "is a folder"
        return _error(f"--out {a.out!r} {what}; expected a file name such as table.md")
    if a.out and not os.access(Path(a.out).resolve().parent, os.W_OK):
        return _error(f"--out {a.out!r}: its folder does not exist or cannot be written")
    try:  # the device, memory budget and estimators as sbn-bench run checks and parses them
        config = RunConfig(problems=(ProblemSpec(preset="paper"),), device=a.device,
                           memory_budget=a.memory_budget, estimators=a.estimators)
        check_device(config)
    except SbnBenchError as e:  # device='tpu' is not … → --device 'tpu' is not …
        option = f"--{(e.argument or '').replace('_', '-')}"
        return _error(f"{option} {without_name(str(e), e.argument)}" if e.argument else str(e))
    device = torch.device(config.device)
    reg = load_registry()
    groups = []
    try:  # every problem and estimator checked before anything is measured
        for name in a.problems.split(","):
            option = "--problems"
            problem = preset_problem(name.strip())
            option = "--estimators"
            specs = (list(config.estimators) if config.estimators is not None
                     else list(PRESET_ESTIMATORS.get(name, ())) or reg.names())
            ests = [e for e in map(reg.create, specs) if e.supports(problem)]
            check_distinct(ests)  # as sbn-bench run refuses an estimator listed twice
            option = "--memory-budget"
            check_memory(config, [(name, "", problem)], ests)  # one sample fits, as a run refuses
            groups.append((name, problem, ests))
    except SbnBenchError as e:
        return _error(f"{option}: {e}")
    malloc.keep_freed_memory()  # as sbn-bench measures (sbn_bench.malloc)
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {a.threads} thread(s)"
    lines = [f"Device: {where}; torch {torch.__version__}; {a.dtype}; "
             f"memory budget {format_bytes(config.memory_budget)}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             "| problem | estimator | samples per round | samples/s (95% interval) | wide |",
             "|---|---|---|---|---|"]
    for name, problem, ests in groups:
        p = problem.to(device, dtype)
        batches = [min(a.max_batch, chunk_size(config, e, problem)) for e in ests]
        gens = [torch.Generator(device=device).manual_seed(i) for i in range(len(ests))]
        settings = ThroughputSettings(min_round_s=a.min_round, max_seconds=a.max_seconds)
        for e, r in zip(ests, measure_group(ests, p, max_batch=batches, generators=gens,
                                            settings=settings)):
            lines.append(f"| {name} | {e.spec} | {r.batch:,} | {r.samples_per_s:,.0f} "
                         f"({r.samples_per_s_lo:,.0f}–{r.samples_per_s_hi:,.0f}) | "
                         f"{'wide' if r.wide else ''} |")
        print("\n".join(lines[-len(ests):]), flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        atomic_write_text(a.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

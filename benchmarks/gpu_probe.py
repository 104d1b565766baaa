"""Where a device's time goes on the paper net: time per ``estimate()`` call against its batch, a
profiler table of one call, and the time of each cell of ``sbn-bench run --preset paper``.

* ``scaling``: the median of 5 calls (after one untimed) of each estimator at batches from 1 to 3
  million samples (to 1000 on a CPU), in float32; a batch that does not fit is reported and the
  estimator's larger batches skipped. A flat time per call at small batches is the per-call floor
  (Python and kernel launches); samples/s at the largest batches is the device's asymptote.
* ``profile``: torch's profiler on one call of ``st`` and of ``psa`` with 100,000 samples (1000
  on a CPU), sorted by device time (CPU time on a CPU).
* ``cells``: the paper preset with ``--executor serial``, every cell timed (training cached where
  ``$SBN_BENCH_CACHE`` or ``~/.cache/sbn-bench`` holds it).

Usage::

    python benchmarks/gpu_probe.py --device cuda [--what scaling,profile,cells] [--samples 2000]

``benchmarks/gpu.sh`` runs it; the figures of 4 December 2026 on an H200 are in
``benchmarks/gpu-results/h200-2026-12-04/probe.log`` and the README ("GPU").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import click
import torch

from sbn_bench.cli.base import without_name
from sbn_bench.config import ProblemSpec, RunConfig
from sbn_bench.errors import SbnBenchError
from sbn_bench.estimators import estimate, load_registry
from sbn_bench.problems import preset_problem
from sbn_bench.runner.plan import check_device

SCALING_ESTIMATORS = ("st", "tanh", "psa", "reinforce", "arm", "exact")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def scaling(device: torch.device) -> None:
    reg = load_registry()
    problem = preset_problem("paper").to(device, torch.float32)
    batches = ([1, 100, 1000, 10_000, 100_000, 300_000, 1_000_000, 3_000_000] if device.type == "cuda"
               else [1, 100, 1000])
    for name in SCALING_ESTIMATORS:
        est, gen = reg.create(name), torch.Generator(device=device).manual_seed(0)
        for b in batches:
            try:
                estimate(est, problem, b, gen)
                _sync(device)
            except Exception as err:  # noqa: BLE001 - a batch too large for the device ends the row
                print(f"SCALING {name:10s} batch {b:>8} failed: {str(err)[:100]}", flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                break
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                estimate(est, problem, b, gen)
                _sync(device)
                times.append(time.perf_counter() - t0)
            t = sorted(times)[2]
            print(f"SCALING {name:10s} batch {b:>8} {t * 1e3:9.3f} ms/call {b / t:14,.0f} samples/s",
                  flush=True)


def profile(device: torch.device) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    reg = load_registry()
    problem = preset_problem("paper").to(device, torch.float32)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    batch = 100_000 if device.type == "cuda" else 1000
    for name in ("st", "psa"):
        est, gen = reg.create(name), torch.Generator(device=device).manual_seed(0)
        estimate(est, problem, batch, gen)
        _sync(device)
        with torch_profile(activities=acts) as prof:
            estimate(est, problem, batch, gen)
            _sync(device)
        key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(f"PROFILE {name} batch {batch}")
        print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=50), flush=True)


def cells(device: torch.device, samples: int) -> None:
    from sbn_bench.cli import main as cli_main
    from sbn_bench.runner import cells as cells_mod

    times: list[tuple[float, str]] = []
    measure = cells_mod.measure_cell

    def timed(cell, context, **kw):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return measure(cell, context, **kw)
        finally:
            _sync(device)
            times.append((time.perf_counter() - t0, f"{cell.kind} {cell.checkpoint} {cell.estimator}"[:120]))

    for module in list(sys.modules.values()):  # wherever the runner took measure_cell from
        if getattr(module, "__name__", "").startswith("sbn_bench") and \
                getattr(module, "measure_cell", None) is measure:
            module.measure_cell = timed  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        try:
            cli_main(["run", "--preset", "paper", "--samples", str(samples), "--device", device.type,
                      "--executor", "serial", "--no-report", "--out", f"{out}/run", "-q"],
                     standalone_mode=False)
        except click.ClickException as e:  # e.g. --samples 1: the run's own refusal, as its CLI says it
            print(f"error: {e.format_message()}", file=sys.stderr)
            raise SystemExit(2) from None
        wall = time.perf_counter() - t0
    print(f"CELLS run wall {wall:.1f} s; cells {sum(t for t, _ in times):.1f} s")
    for t, c in sorted(times, reverse=True):
        print(f"CELL {t:7.2f} s  {c}")


def _positive_int(text: str) -> int:
    """An integer ≥ 1, checked when the arguments are parsed (before minutes of probing)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer ≥ 1")
    return value


_positive_int.__name__ = "int"  # argparse's "invalid int value: 'x'"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda [default: cpu]")
    ap.add_argument("--what", default="scaling,profile,cells",
                    help="comma-separated: scaling, profile, cells")
    ap.add_argument("--samples", type=_positive_int, default=2000,
                    help="--samples of the timed paper run")
    a = ap.parse_args(argv)
    try:  # the device as sbn-bench run checks it
        config = RunConfig(problems=(ProblemSpec(preset="paper"),), device=a.device)
        check_device(config)
    except SbnBenchError as e:  # device='tpu' is not … → --device 'tpu' is not …
        print(f"error: --device {without_name(str(e), 'device')}", file=sys.stderr)
        return 2
    device = torch.device(config.device)
    what = a.what.split(",")
    unknown = sorted(set(what) - {"scaling", "profile", "cells"})
    if unknown:
        print(f"error: --what {','.join(unknown)}: expected scaling, profile or cells", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    if "scaling" in what:
        scaling(device)
    if "profile" in what:
        profile(device)
    if "cells" in what:
        cells(device, a.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())

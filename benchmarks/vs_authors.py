"""sbn-bench against the PSA authors' own gradient-evaluation code, side by side in one process.

The PSA authors' evaluation code (``gradeval/model.py`` in ``shekhovt/PSA-Neurips2020``) draws one
gradient sample per forward/backward pass over all data points. This script loads one of their
checkpoints (the net and its 200 data points), builds the same problem for sbn-bench, and times
both on it, rounds interleaved (ours A, theirs A, ours B, theirs B, … with the order rotated every
round) so that a noisy machine hits both alike. Each round is calibrated to last at least
``--min-round`` seconds; the table gives the median over rounds with a confidence interval for it
(:func:`sbn_bench.throughput.median_ci`), the ratio of the medians, and the floor: one plain
forward and backward of the same network with per-sample gradients (sbn-bench's ``tanh``, the
deterministic mean-field pass, is exactly that), and how far each estimator is above it.

Usage (a checkout of https://github.com/shekhovt/PSA-Neurips2020 at ``PATH``)::

    python benchmarks/vs_authors.py --authors PATH [--checkpoint chk-100] [--dtype float32]
        [--threads 1] [--their-threads 2] [--rounds 7] [--min-round 0.2] [--out table.md]

Both run under the C allocator policy sbn-bench measures under (:mod:`sbn_bench.malloc`: freed
memory kept for reuse; ``SBN_BENCH_MALLOC=system`` for the system's); it is one process, so their
code gets it too.

Their code needs scipy (``pip install scipy``, which the ``[data]`` extra brings) and imports a
CUDA extension only for convolutions; a stand-in module that raises if called is installed for it.
Their estimators are called exactly as their training loop calls them:
``net.forward(X, method=m, obj=NLL)`` then ``E.mean().backward()``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import pickle
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sbn_bench import malloc
from sbn_bench.estimators import estimate, load_registry
from sbn_bench.problems import Problem
from sbn_bench.throughput import median_ci

# ours ↔ theirs (gradeval/model.py method names and keyword arguments)
PAIRS: list[tuple[str, str, dict]] = [
    ("reinforce", "score", {}),
    ("st", "ST", {}),
    ("psa", "SAH", {}),
    ("arm", "ARM", {}),
    ("concrete:tau=0.1", "concrete", {"tau": 0.1}),
    ("tanh", "AP1", {}),
]
"""The paper's estimators: our name, the authors' ``method`` and its keyword arguments."""

ISSUE_FIGURES = {"reinforce": 2680, "st": 4520, "psa": 840, "arm": 1750, "concrete:tau=0.1": 3900,
                 "tanh": 5600}
"""The authors' samples/s measured when the speed issue was filed (2 threads, a 2-core machine):
the "20×" target is against these."""


def load_authors(path: Path, checkpoint: str) -> tuple[object, torch.Tensor, torch.Tensor, Callable]:
    """The authors' net, inputs ``X [D, 2]``, labels ``Y [D, 1]`` (±1) and their ``NLL``."""
    for p in (path, path / "gradeval"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    if "extensions" not in sys.modules:  # their CUDA extension (convolutions only)
        ext = types.ModuleType("extensions")

        def missing(*args: object, **kwargs: object) -> None:
            raise RuntimeError("the authors' CUDA extension is not built (not needed here)")

        ext.ratio_conv2d_backward = missing  # type: ignore[attr-defined]
        sys.modules["extensions"] = ext
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        their_model = importlib.import_module("model")
    file = path / "exp" / "gradeval" / "5-5-5" / checkpoint / "score.pkl"
    if not file.is_file():
        raise SystemExit(f"error: --checkpoint {checkpoint!r}: {file} not found (expected one of "
                         f"{sorted(p.name for p in file.parent.parent.glob('chk-*'))})")
    with open(file, "rb") as f:
        res = pickle.load(f)
    return res["net"], res["X"], res["Y"], their_model.NLL


def their_layers(net: object) -> list[object]:
    layers = []
    layer = net.next  # type: ignore[attr-defined]
    while layer is not None:
        layers.append(layer)
        layer = layer.next
    return layers


def our_problem(net: object, X: torch.Tensor, Y: torch.Tensor) -> Problem:
    """The same network and data as an sbn-bench problem (float64; {0,1} states as theirs)."""
    params = {}
    layers = their_layers(net)
    for k, layer in enumerate(layers[:-1], start=1):
        params[f"weight_{k}"] = layer.weight.detach().double().clone()
        params[f"bias_{k}"] = layer.bias.detach().double().reshape(-1).clone()
    params["weight_out"] = layers[-1].weight.detach().double().clone()
    params["bias_out"] = layers[-1].bias.detach().double().reshape(-1).clone()
    return Problem(params, X.double().clone(), Y.double().view(-1).clone(), loss="logistic",
                   noise="logistic", name="authors-5-5-5")


@dataclass
class Timer:
    """One side of one pair: ``call()`` produces ``per_call`` gradient samples."""

    label: str
    call: Callable[[], None]
    per_call: int
    threads: int
    reps: int = 1
    rates: list[float] | None = None

    def calibrate(self, min_round: float) -> None:
        torch.set_num_threads(self.threads)
        self.call()
        t0 = time.perf_counter()
        self.call()
        took = max(time.perf_counter() - t0, 1e-9)
        self.reps = max(1, math.ceil(min_round / took))
        self.rates = []

    def round(self) -> None:
        torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        for _ in range(self.reps):
            self.call()
        assert self.rates is not None
        self.rates.append(self.per_call * self.reps / (time.perf_counter() - t0))


def build_timers(args: argparse.Namespace) -> list[tuple[str, Timer, Timer]]:
    dtype = getattr(torch, args.dtype)
    net, X, Y, NLL = load_authors(Path(args.authors), args.checkpoint)
    problem = our_problem(net, X, Y).to("cpu", dtype)
    net.to(dtype=dtype)  # type: ignore[attr-defined]
    Xc, Yc = X.to(dtype), Y.to(dtype)
    reg = load_registry()

    def theirs(method: str, kwargs: dict) -> Callable[[], None]:
        def call() -> None:
            net.zero_grad()  # type: ignore[attr-defined]
            E = net.forward(Xc, method=method, obj=lambda eta: NLL(eta, Yc), **kwargs)  # type: ignore[attr-defined]
            E.mean().backward()
        return call

    def ours(name: str) -> Callable[[], None]:
        est = reg.create(name)
        gen = torch.Generator().manual_seed(0)
        return lambda: estimate(est, problem, args.batch, gen) and None

    return [(name, Timer(f"ours {name}", ours(name), args.batch, args.threads),
             Timer(f"theirs {method}", theirs(method, kw), 1, args.their_threads))
            for name, method, kw in PAIRS if name in args.estimators]


def exact_seconds(args: argparse.Namespace) -> tuple[float, float]:
    """Seconds for the exact gradient: theirs (``method='enumerate'``) and ours (the chain)."""
    from sbn_bench.reference import exact_gradient

    net, X, Y, NLL = load_authors(Path(args.authors), args.checkpoint)
    net.double()  # type: ignore[attr-defined]
    torch.set_num_threads(args.their_threads)
    t0 = time.perf_counter()
    net.zero_grad()  # type: ignore[attr-defined]
    E = net.forward(X.double(), method="enumerate", obj=lambda eta: NLL(eta, Y.double()))  # type: ignore[attr-defined]
    E.mean().backward()
    theirs = time.perf_counter() - t0
    problem = our_problem(net, X, Y)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    exact_gradient(problem)
    return theirs, time.perf_counter() - t0


def summary(rates: list[float], confidence: float) -> tuple[float, float, float]:
    lo, hi, _ = median_ci(rates, confidence)
    return statistics.median(rates), lo, hi


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--authors", required=True, help="a checkout of shekhovt/PSA-Neurips2020")
    ap.add_argument("--checkpoint", default="chk-100", help="their checkpoint folder (chk-1, chk-100)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for ours")
    ap.add_argument("--their-threads", type=int, default=2, help="torch threads for theirs")
    ap.add_argument("--batch", type=int, default=1000, help="our samples per call")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-round", type=float, default=0.2, help="seconds per round, at least")
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--estimators", default=",".join(p[0] for p in PAIRS))
    ap.add_argument("--no-exact", action="store_true", help="skip timing the exact gradients")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    args = ap.parse_args(argv)
    args.estimators = args.estimators.split(",")
    unknown = sorted(set(args.estimators) - {p[0] for p in PAIRS})
    if unknown:
        ap.error(f"--estimators: {unknown} have no counterpart in the authors' code; expected some "
                 f"of {[p[0] for p in PAIRS]}")
    if not (Path(args.authors) / "gradeval" / "model.py").is_file():
        ap.error(f"--authors {args.authors!r}: gradeval/model.py not found (expected a checkout of "
                 "shekhovt/PSA-Neurips2020)")
    if args.threads < 1 or args.their_threads < 1 or args.rounds < 3 or args.batch < 1:
        ap.error("--threads, --their-threads and --batch must be ≥ 1 and --rounds ≥ 3")

    allocator = malloc.keep_freed_memory()  # as sbn-bench runs; one process: theirs alike
    timers = build_timers(args)
    flat = [t for _, ours_t, theirs_t in timers for t in (ours_t, theirs_t)]
    for t in flat:
        t.calibrate(args.min_round)
    for r in range(args.rounds):  # interleaved, the order rotated every round
        k = r % len(flat)
        for t in flat[k:] + flat[:k]:
            t.round()

    floor = next((summary(o.rates, args.confidence)[0] for n, o, _ in timers if n == "tanh"), None)
    lines = [f"Paper net 2-5-5-5-1 from the authors' {args.checkpoint}, D = 200, {args.dtype}; "
             f"ours: batch {args.batch}, {args.threads} thread(s); theirs: one sample per "
             f"forward/backward, {args.their_threads} thread(s); {args.rounds} interleaved rounds "
             f"of ≥ {args.min_round} s; medians with {args.confidence:.0%} intervals; C allocator: "
             f"freed memory {'kept' if allocator == 'kept' else 'as the system does'} "
             f"(`sbn_bench.malloc`).", "",
             "| estimator | ours samples/s | theirs samples/s | ratio | vs the issue's figure | "
             "× floor |", "|---|---|---|---|---|---|"]
    for name, o, t in timers:
        om, olo, ohi = summary(o.rates, args.confidence)
        tm, tlo, thi = summary(t.rates, args.confidence)
        vs_issue = om / ISSUE_FIGURES[name]
        above = f"{floor / om:.2f}" if floor else "—"
        lines.append(f"| {name} | {om:,.0f} ({olo:,.0f}–{ohi:,.0f}) | {tm:,.0f} ({tlo:,.0f}–"
                     f"{thi:,.0f}) | **{om / tm:.1f}×** | {vs_issue:.1f}× of {ISSUE_FIGURES[name]:,} "
                     f"| {above} |")
    lines += ["", "`× floor`: seconds per sample over those of one plain forward and backward "
              "with per-sample gradients (sbn-bench's `tanh`)."]
    if not args.no_exact:
        theirs, ours = exact_seconds(args)
        lines += ["", f"Exact gradient (float64): theirs (enumeration) {theirs:.2f} s, ours "
                      f"(the chain of SPEC §2) {ours:.4f} s, {theirs / ours:,.0f}× faster."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

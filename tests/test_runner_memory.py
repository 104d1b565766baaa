"""Memory: a request over the memory budget is chunked or refused up front with
the estimate.

The chunking rests on :meth:`sbn_bench.estimators.Estimator.memory_per_sample` being an upper bound
of what one sample really takes; that is measured here with torch's profiler (``profile_memory``:
every CPU allocation and free, replayed in time order to find the peak) for every built-in
estimator.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch.profiler import ProfilerActivity, profile

from sbn_bench import problems, runner
from sbn_bench.cli import main
from sbn_bench.config import ProblemSpec, RunConfig, ThroughputConfig
from sbn_bench.estimators import estimate, load_registry
from sbn_bench.estimators.base import default_bytes_per_sample
from sbn_bench.estimators.builtin import BUILTINS
from sbn_bench.metrics import Groups
from sbn_bench.runner import cells
from sbn_bench.units import format_bytes

REG = load_registry()


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Small nets: one torch thread is as fast, and immune to OpenMP threads spinning on cores
    that other processes hold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def peak_bytes(fn) -> int:
    """Peak of the CPU memory allocated by torch while ``fn()`` runs (allocations minus frees)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage),
                    key=lambda e: e.time_range.start)
    now = peak = 0
    for e in events:
        now += e.self_cpu_memory_usage
        peak = max(peak, now)
    return peak


@pytest.mark.parametrize("arch, loss, D", [("2-5-5-5-1", "logistic", 40), ("4-6-5-3", "softmax", 20),
                                           ("3-7-2", "mse", 30)])
def test_bytes_per_sample_bounds_the_real_peak(arch, loss, D):
    p = problems.random_problem(arch, 0, data_points=D, loss=loss)
    S = 32
    specs = [*BUILTINS, "reinforce-loo:k=5", "gr-mc:k=30", "arms:k=8", "double-cv:k=8"]
    for spec in specs:
        est = REG.create(spec)
        if not est.supports(p) or (p.n_layers == 1 and not est.single_layer):
            continue  # the one-layer net is for the estimators the others do not cover
        for dtype in (torch.float32, torch.float64):
            q = p.to(dtype=dtype)
            got = peak_bytes(lambda est=est, q=q: estimate(est, q, S, torch.Generator().manual_seed(0)))
            bound = S * est.memory_per_sample(p.widths, D, torch.finfo(dtype).bits // 8)
            assert 0 < got <= bound, f"{spec} {dtype}: peak {got} B > estimate {bound} B"


def test_chunks_keep_every_call_within_the_budget(tmp_path, monkeypatch):
    p = problems.random_problem("2-5-5-5-1", 0, data_points=30)
    one = REG.create("psa").memory_per_sample(p.widths, 30, 8)
    budget = int(7.5 * one)
    calls: list[tuple[str, int, int]] = []
    real = cells.estimate

    def spy(est, problem, n, gen):
        out = {}
        peak = peak_bytes(lambda: out.update(real(est, problem, n, gen)))
        calls.append((est.spec, n, peak))
        return out

    monkeypatch.setattr(cells, "estimate", spy)
    runner.run(RunConfig(problems=(ProblemSpec(arch="2-5-5-5-1", data_points=30),),
                         estimators=("psa", "arm"), samples=50, M=(1, 10), mode="mc",
                         memory_budget=budget, throughput=ThroughputConfig(enabled=False),
                         out=str(tmp_path / "r"), dtype="float64"))
    psa = [n for s, n, _ in calls if s == "psa"]
    assert psa == [7] * 7 + [1], psa  # ⌊7.5⌋ samples per call
    arm_one = REG.create("arm").memory_per_sample(p.widths, 30, 8)
    assert {n for s, n, _ in calls if s == "arm"} <= {budget // arm_one, 50 % (budget // arm_one)}
    for spec, n, peak in calls:
        assert peak <= budget, f"{spec}: a call of {n} samples peaked at {peak} B > {budget} B"


def _cfg(out, **kw) -> RunConfig:
    base = dict(problems=(ProblemSpec(arch="2-5-5-1", data_points=20),), estimators=("st", "psa"),
                samples=20, M=(1,), throughput=ThroughputConfig(enabled=False), out=str(out),
                dtype="float64")
    base.update(kw)
    return RunConfig(**base)


def test_a_sample_larger_than_the_budget_is_refused_up_front(tmp_path):
    out = tmp_path / "r"
    need = default_bytes_per_sample((2, 5, 5, 1), 20, 8, 1 + 5)  # psa: 1 + n_L evaluations
    with pytest.raises(runner.RunError) as e:
        runner.run(_cfg(out, memory_budget=need - 1))
    msg = str(e.value)
    assert "refused before any work" in msg and f"memory_budget={format_bytes(need - 1)}" in msg
    assert f"psa on arch-2-5-5-1-seed0 (2-5-5-1, D=20, float64): one sample needs about " \
           f"{format_bytes(need)}" in msg
    assert "st on" not in msg  # st's sample fits: only the offender is named
    assert not out.exists()
    res = CliRunner().invoke(main, ["run", "--arch", "2-5-5-1", "--data-points", "20",
                                    "--estimators", "st,psa", "--memory-budget", "1KiB",
                                    "--out", str(out)])
    assert res.exit_code == 2, res.output  # the value of --memory-budget refused: its usage error
    assert "Error: Invalid value for '--memory-budget': refused before any work" in res.output
    assert "one sample needs" in res.output
    assert not out.exists()
    # a chunk given with it shares the blame; with the default budget (or a file's) the chunk
    # alone is at fault (exit status 2 naming it); a budget from a file that one sample exceeds,
    # which no chunk can fix, names no option (exit status 1, below)
    cases = [(["--memory-budget", "1MiB"], 2, "Invalid value for '--memory-budget' / '--chunk': refused"),
             ([], 2, "Invalid value for '--chunk': refused before any work")]
    for extra, code, hint in cases:
        res = CliRunner().invoke(main, ["run", "--arch", "2-5-5-1", "--data-points", "20", "--estimators",
                                        "st", "--chunk", "100000000", *extra, "--out", str(out)])
        assert res.exit_code == code and hint in res.output, res.output
        # the settings it blames are written as the options typed
        assert "--chunk=100000000 samples need" in res.output
        assert "(lower --chunk, or raise --memory-budget)" in res.output, res.output
        assert not out.exists()
    # a batch at fault is named; a chunk given beside it that fits is not
    res = CliRunner().invoke(main, ["run", "--arch", "2-5-5-1", "--data-points", "20", "--estimators",
                                    "st", "--chunk", "10", "--throughput-batch", "100000000",
                                    "--out", str(out)])
    assert res.exit_code == 2 and "Invalid value for '--throughput-batch': refused" in res.output
    assert "(lower --throughput-batch, or raise --memory-budget)" in res.output, res.output
    assert not out.exists()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"estimators = ['psa']\nsamples = 50\nmemory_budget = '1KiB'\nout = '{out}'\n"
                   "[[problem]]\npreset = 'quick'\n")
    res = CliRunner().invoke(main, ["run", "--config", str(cfg), "--chunk", "1"])
    assert res.exit_code == 1 and "--chunk" not in res.output, res.output
    # a chunk from the file keeps the file's word for it
    cfg.write_text(f"estimators = ['st']\nsamples = 50\nchunk = 100000000\nout = '{out}'\n"
                   "[[problem]]\npreset = 'quick'\n")
    res = CliRunner().invoke(main, ["run", "--config", str(cfg)])
    assert res.exit_code == 1 and "(lower chunk, or raise memory_budget)" in res.output, res.output
    assert "--chunk" not in res.output
    assert not out.exists()


def test_explicit_chunk_or_throughput_batch_over_the_budget_is_refused(tmp_path):
    one = default_bytes_per_sample((2, 5, 5, 1), 20, 4, 6)  # psa in float32
    budget = 10 * one
    with pytest.raises(runner.RunError, match=r"psa .*float32\): chunk=11 samples need about .* "
                                              r"\(at most 10 fit\) \(lower chunk, or raise "
                                              r"memory_budget\)$"):  # only the setting at fault
        runner.run(_cfg(tmp_path / "a", dtype="float32", memory_budget=budget, chunk=11))
    with pytest.raises(runner.RunError, match=r"throughput batch=12 samples need .*at most 10 fit"
                                              r"\) \(lower throughput batch, or raise memory_budget"):
        runner.run(_cfg(tmp_path / "b", dtype="float32", memory_budget=budget,
                        throughput=ThroughputConfig(batch=12)))
    res = runner.run(_cfg(tmp_path / "c", dtype="float32", memory_budget=budget, chunk=10,
                          mode="mc"))
    assert res.failures.empty and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_exact_enumeration_must_fit_the_budget(tmp_path):
    p = problems.random_problem("2-4-4-4-1", 0, data_points=3)  # 2^12 paths per data point
    need = runner.exact_enumeration_bytes(p.widths, 3, 8)
    one = REG.create("psa").memory_per_sample(p.widths, 3, 8)
    assert one < need  # a budget between the two: samples fit, the path tables do not
    budget = (one + need) // 2
    spec = (ProblemSpec(arch="2-4-4-4-1", data_points=3),)
    res = runner.run(_cfg(tmp_path / "auto", problems=spec, memory_budget=budget))
    assert set(res.metrics["mode"]) == {"mc"} and res.failures.empty  # auto: Monte Carlo instead
    # exact mode: refused before any work
    with pytest.raises(runner.RunError) as err:
        runner.run(_cfg(tmp_path / "exact", problems=spec, memory_budget=budget, mode="exact"))
    assert not (tmp_path / "exact").exists()
    msg = str(err.value)
    assert f"enumerating the 4096 paths of problem 'arch-2-4-4-4-1-seed0' needs about " \
           f"{format_bytes(need)}, over memory_budget={format_bytes(budget)}" in msg
    res = runner.run(_cfg(tmp_path / "ok", problems=spec, memory_budget=need + one))
    assert set(res.metrics.loc[~res.metrics["metric"].str.startswith("cosine"), "mode"]) == {"exact"}


def test_exact_enumeration_estimate_bounds_the_real_peak():
    """The path tables (paths, states, log-probabilities, weights) of exact mode, without the
    estimator's chunks, stay within :func:`exact_enumeration_bytes`."""
    p = problems.random_problem("2-3-4-3-1", 0, data_points=2)  # 1024 paths per data point
    groups = Groups.of(p.params)
    est = REG.create("st")
    chunk = 256
    got = peak_bytes(lambda: runner.exact_path_moments(est, p, torch.float64, torch.device("cpu"),
                                                       chunk, groups))
    chunks = chunk * est.memory_per_sample(p.widths, 1, 8)
    tables = runner.exact_enumeration_bytes(p.widths, 2, 8)
    assert 0 < got <= tables + chunks, (got, tables, chunks)


@pytest.mark.parametrize("arch, loss, D", [pytest.param("1x4x4-c2k2-c3k2s2-3", "softmax", 12,
                                                        marks=pytest.mark.slow),
                                           ("6-5-6", "vae", 12),
                                           ("6-d4:lrelu-5-d4:lrelu-6", "vae", 10),
                                           ("5-d4:tanh-4-3-d6:relu-3", "softmax", 10),
                                           ("1x4x4-dc2k2:relu-c2k2-4", "bernoulli", 10)])
def test_the_planner_bounds_the_real_peak_on_networks(arch, loss, D):
    """The planner's bytes per sample (:func:`sbn_bench.runner.memory.sample_bytes`: the smaller of
    the estimator's own estimate and the network's) bound what every built-in really takes on
    networks with conv layers, bodies, deep heads and the VAE objective."""
    from sbn_bench.runner.memory import sample_bytes

    p = problems.random_problem(arch, 0, data_points=D, loss=loss)
    S = 16
    checked = 0
    for spec in [*BUILTINS, "arms:k=8"]:
        est = REG.create(spec)
        if not est.supports(p) or est.adapt is not None or spec == "exact":
            continue  # exact: its reference's memory is bounded by --max-exact-bytes, not per sample
        for dtype in (torch.float32, torch.float64):
            q = p.to(dtype=dtype)
            got = peak_bytes(lambda est=est, q=q: estimate(est, q, S, torch.Generator().manual_seed(0)))
            bound = S * sample_bytes(est, p, D, torch.finfo(dtype).bits // 8)
            assert 0 < got <= bound, f"{spec} {dtype}: peak {got} B > planned {bound} B"
        checked += 1
    assert checked >= 8


def test_the_digits_presets_fit_the_default_budget():
    """The network-aware estimate lets every default estimator of the digits presets take at least
    one sample within the default 1 GiB (the flattened-widths estimates asked for 4-112 GiB); psa on
    the nonlinear VAE too, since its 200 flips through the 200-200-64 decoder are evaluated in
    blocks (sbn_bench.estimators.builtin.psa.FLIP_BLOCK; 4.3 GiB per sample otherwise)."""
    from sbn_bench.problems import PRESET_ESTIMATORS
    from sbn_bench.runner.memory import sample_bytes

    for name in ("digits-mlp", "digits-conv", "digits-vae", "digits-vae-nonlinear"):
        p = problems.preset_problem(name)
        for spec in PRESET_ESTIMATORS[name]:
            need = sample_bytes(REG.create(spec), p, p.num_data, 4)
            assert need <= 2**30, f"{name} {spec}: {format_bytes(need)}"


@pytest.mark.parametrize("arch, loss", [("5-d6:lrelu-40-d30:lrelu-d30:lrelu-5", "vae"),
                                        ("4-d5:relu-36-d40:tanh-3", "softmax")])
def test_psa_in_blocks_of_flips_stays_within_the_planned_memory(arch, loss, monkeypatch):
    """Wide last layers under deep heads: PSA holds one block of flips' head activations at a
    time (well under half the memory of all flips at once), and the planner's estimate
    (evals_held) still bounds the real peak."""
    from sbn_bench.estimators.builtin import psa as psa_module
    from sbn_bench.estimators.builtin.psa import FLIP_BLOCK
    from sbn_bench.runner.memory import sample_bytes

    p = problems.random_problem(arch, 0, data_points=24, loss=loss)
    est = REG.create("psa")
    assert p.widths[-2] > 2 * FLIP_BLOCK
    for dtype in (torch.float32, torch.float64):
        q = p.to(dtype=dtype)
        got = peak_bytes(lambda q=q: estimate(est, q, 8, torch.Generator().manual_seed(0)))
        bound = 8 * sample_bytes(est, p, 24, torch.finfo(dtype).bits // 8)
        assert 0 < got <= bound, f"{dtype}: peak {got} B > planned {bound} B"
    with monkeypatch.context() as m:
        m.setattr(psa_module, "FLIP_BLOCK", p.widths[-2])  # every flip at once
        whole = peak_bytes(lambda: estimate(est, q, 8, torch.Generator().manual_seed(0)))
    assert got < whole / 2, (got, whole)


def test_sizes_are_written_in_their_unit_without_an_exponent() -> None:
    """Messages give sizes in the unit that fits, three digits, and no "1e+03 KiB"."""
    from sbn_bench.units import format_gib

    assert format_bytes(10) == "10 bytes" and format_bytes(1) == "1 byte"
    assert format_bytes(1024) == "1 KiB (1,024 bytes)"
    assert format_bytes(1000 * 1024) == "1,000 KiB (1,024,000 bytes)"
    assert format_bytes(1.5 * 2**20) == "1.5 MiB (1,572,864 bytes)"
    assert format_bytes(1.5 * 2**40) == "1,536 GiB (1,649,267,441,664 bytes)"
    assert format_gib(4 * 2**30) == "4 GiB" and format_gib(2**30 * 2e6) == "2e+06 GiB"


# --------------------------------------------------------------------------------------------
# the default budget per device


def fake_gpu(monkeypatch, properties) -> None:
    """torch.cuda as on a machine with one CUDA device whose ``get_device_properties(index)`` is
    ``properties`` (the default budget is tested without a GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)


@pytest.mark.parametrize(("gpu_bytes", "expected"), [
    (143_771 * 2**20, 16 * 2**30),   # an H200: a quarter is 35 GiB, capped at 16 GiB
    (24 * 2**30, 6 * 2**30),         # a 24 GiB card: a quarter
    (2 * 2**30, 2**30),              # a small card: never below the CPU's 1 GiB
])
def test_the_default_budget_on_a_gpu_is_a_quarter_of_its_memory_at_most_16_gib(
        monkeypatch, gpu_bytes, expected):
    """On a GPU the CPU's 1 GiB chunks leave it launch-bound (2–4 ms per call on an H200 up to
    10,000 samples: README, "GPU"); the default takes a quarter of its memory, at most 16 GiB.
    An explicit budget is kept, and the CPU's default stays 1 GiB."""
    from types import SimpleNamespace

    from sbn_bench import config as config_mod

    asked: list[int] = []

    def props(index: int) -> SimpleNamespace:
        asked.append(index)
        return SimpleNamespace(total_memory=gpu_bytes)

    fake_gpu(monkeypatch, props)
    p = (ProblemSpec(preset="quick"),)
    assert config_mod.default_memory_budget("cuda") == expected and asked == [0]
    assert RunConfig(problems=p, device="cuda").memory_budget == expected
    assert RunConfig(problems=p, device="cuda", memory_budget="3GiB").memory_budget == 3 * 2**30
    assert RunConfig(problems=p).memory_budget == config_mod.DEFAULT_MEMORY_BUDGET == 2**30
    assert config_mod.default_memory_budget("cpu") == 2**30


def test_the_default_budget_without_a_cuda_device_is_the_cpus(monkeypatch):
    from sbn_bench import config as config_mod

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config_mod.default_memory_budget("cuda") == 2**30

    def broken(index: int) -> None:
        raise RuntimeError("CUDA driver initialization failed")

    fake_gpu(monkeypatch, broken)
    assert config_mod.default_memory_budget("cuda") == 2**30  # the run's own check reports it
    result = CliRunner().invoke(main, ["run", "--help"], terminal_width=200)
    assert "[default: 1GiB; on cuda a quarter of the GPU's memory, from 1GiB to 16GiB]" in result.output


def test_a_default_budget_follows_the_device_through_with_and_a_resume_keeps_the_recorded_one(
        tmp_path, monkeypatch):
    """with_() chooses the default again for another device (it kept the first device's number),
    and resuming with the default takes the run's recorded budget: the default differs between
    cards, and the finished cells refused the resume for a setting nobody gave (attacker review)."""
    from types import SimpleNamespace

    fake_gpu(monkeypatch, lambda i: SimpleNamespace(total_memory=80 * 2**30))
    p = (ProblemSpec(arch="2-2-1", data_points=5),)
    gpu = RunConfig(problems=p, device="cuda")
    assert gpu.memory_budget == 16 * 2**30 and gpu.with_(device="cpu").memory_budget == 2**30
    assert gpu.with_(samples=10).memory_budget == 16 * 2**30
    assert RunConfig(problems=p).with_(device="cuda").memory_budget == 16 * 2**30
    given = RunConfig(problems=p, device="cuda", memory_budget="3GiB")
    assert given.with_(device="cpu").memory_budget == 3 * 2**30  # a given budget is kept
    monkeypatch.undo()

    out = tmp_path / "run"
    first = RunConfig(problems=p, estimators=("st",), samples=20, seeds=(0,), memory_budget="2GiB",
                      throughput=ThroughputConfig(enabled=False), out=str(out))
    runner.run(first)
    again = RunConfig(problems=p, estimators=("st", "reinforce"), samples=20, seeds=(0,),
                      throughput=ThroughputConfig(enabled=False), out=str(out), resume=True)
    assert again.memory_budget == 2**30  # the default here, not what the run recorded
    runner.run(again)
    import json
    assert json.loads((out / "manifest.json").read_text())["config"]["memory_budget"] == 2 * 2**30
    from sbn_bench.storage import RunDirError
    with pytest.raises(RunDirError, match="memory_budget: 2147483648 → 1073741824"):  # a given one is checked
        runner.run(again.with_(memory_budget="1GiB"))

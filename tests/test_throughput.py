"""The throughput method (sbn_bench.throughput): a distribution-free interval for the median,
calibrated rounds, interleaving, estimators that fail while the others are measured; and the runner
measuring once per network shape. Speed itself is never asserted (it is measured, not tested)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from sbn_bench import runner
from sbn_bench.config import Checkpoint, ProblemSpec, RunConfig, ThroughputConfig
from sbn_bench.estimators import Estimator, load_registry
from sbn_bench.problems import random_problem, save_problem
from sbn_bench.throughput import MemberFailed, ThroughputSettings, measure_group, median_ci

REG = load_registry()


@pytest.mark.parametrize(("n", "j"), [(5, 1), (7, 1), (9, 2), (20, 6), (30, 10)])
def test_median_interval_has_the_binomial_coverage(n: int, j: int) -> None:
    """The interval is ``(x_(j), x_(n+1−j))`` with the largest ``j`` whose coverage
    ``1 − 2 P(Bin(n, ½) ≤ j − 1)`` is ≥ 95 % (or the range when no j reaches it)."""
    values = list(range(100, 100 + n))
    lo, hi, coverage = median_ci(values[::-1])  # order does not matter
    assert (lo, hi) == (values[j - 1], values[n - j])
    below = sum(math.comb(n, i) for i in range(j)) / 2**n
    assert coverage == pytest.approx(1 - 2 * below)
    if j > 1:
        tighter = sum(math.comb(n, i) for i in range(j + 1)) / 2**n
        assert 1 - 2 * tighter < 0.95  # the next order statistic would not cover


def test_the_median_interval_covers_the_median_as_stated() -> None:
    """Over 2000 seeded sets of 9 draws of an exponential (median log 2), the interval contains the
    true median in at least its stated coverage minus 3 binomial standard errors."""
    g = torch.Generator().manual_seed(0)
    hits, cov = 0, 0.0
    for _ in range(2000):
        x = (-torch.log(torch.rand(9, generator=g, dtype=torch.float64))).tolist()
        lo, hi, cov = median_ci(x)
        hits += lo <= math.log(2) <= hi
    p = hits / 2000
    assert p >= cov - 3 * math.sqrt(cov * (1 - cov) / 2000), (p, cov)


def _recording(name: str, log: list[str], fail_after: int | None = None) -> Estimator:
    base = REG.create("tanh")
    calls = []

    def surrogate(problem, params, generator):
        log.append(name)
        calls.append(1)
        if fail_after is not None and len(calls) > fail_after:
            raise RuntimeError("gave up")
        return base.surrogate(problem, params, generator)

    return Estimator(name, surrogate, randomness="none", description=name)


def test_rounds_are_interleaved_and_rotated() -> None:
    log: list[str] = []
    ests = [_recording(n, log) for n in ("a", "b", "c")]
    p = random_problem("2-2-1", 0, data_points=3)
    settings = ThroughputSettings(warmup=0, min_round_s=1e-9, min_rounds=3, max_rounds=3,
                                  batch=2)
    res = measure_group(ests, p, max_batch=[8] * 3, generators=[torch.Generator()] * 3,
                        settings=settings)
    timed = log[-9:]  # after one calibration call each
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [r.rounds for r in res] == [3, 3, 3]
    for r in res:
        assert r.samples_per_s_lo <= r.samples_per_s <= r.samples_per_s_hi
        assert r.seconds_per_sample == pytest.approx(1 / r.samples_per_s)


def test_too_few_rounds_for_the_level_go_on_to_six_or_are_wide() -> None:
    """Three rounds give an interval of the median at level 1 − 2·2⁻³ = 75 %, short of 95 %: the
    rounds go on to 6 (level 96.9 %) where max_rounds allows, and are marked wide where it does
    not, however narrow the interval."""
    p = random_problem("2-2-1", 0, data_points=3)
    est = REG.create("tanh")
    kw = dict(warmup=0, min_round_s=1e-9, min_rounds=3, batch=1, rel_width=math.inf)
    (short,) = measure_group([est], p, max_batch=[4], generators=[torch.Generator()],
                             settings=ThroughputSettings(max_rounds=3, **kw))
    assert short.rounds == 3 and short.ci_level == pytest.approx(0.75) and short.wide
    (enough,) = measure_group([est], p, max_batch=[4], generators=[torch.Generator()],
                              settings=ThroughputSettings(max_rounds=30, **kw))
    assert enough.rounds == 6 and enough.ci_level == pytest.approx(1 - 2 / 64) and not enough.wide


def test_the_level_of_an_interval_and_the_error_it_stands_for() -> None:
    """6 rounds are the fewest whose range reaches 95 % (1 − 2⁻⁵ = 96.9 %; 5 give 93.75 %); an
    interval at level c is ± z_c standard errors (time to accuracy carries the timing's error so:
    it assumed 95 % for the 98.4 % of 7 rounds)."""
    from statistics import NormalDist

    from sbn_bench.runner import interval_stderr
    from sbn_bench.throughput import rounds_for_level
    assert [rounds_for_level(c) for c in (0.5, 0.9, 0.95, 0.97, 0.984375)] == [2, 5, 6, 7, 7]
    assert median_ci(range(6))[2] == pytest.approx(1 - 2 / 64) and median_ci(range(5))[2] < 0.95
    z = NormalDist().inv_cdf(1 - 1 / 128)
    assert interval_stderr(1.0, 3.0, 1 - 2 / 128) == pytest.approx(1.0 / z)
    assert interval_stderr(1.0, 3.0, math.nan) == pytest.approx(1.0 / 1.959964)  # no level: 95 %
    assert interval_stderr(2.0, 2.0, 0.0) == math.inf  # one round: no interval at all


def test_calibration_makes_a_round_last_the_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fake clock where one sample costs 1 ms, a round reaches the 0.05 s minimum: the batch
    grows (up to its cap) and the calls per round make up the rest."""
    import types

    from sbn_bench import throughput

    clock = [0.0]

    def fake_estimate(est, problem, batch, generator):
        clock[0] += 1e-3 * batch

    monkeypatch.setattr(throughput, "estimate", fake_estimate)
    monkeypatch.setattr(throughput, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    p = random_problem("2-5-5-1", 0, data_points=50)
    est = REG.create("st")
    settings = ThroughputSettings(warmup=1, min_round_s=0.05, min_rounds=3, max_rounds=3)
    (small,) = measure_group([est], p, max_batch=[64], generators=[torch.Generator()],
                             settings=settings)
    assert 50 <= small.batch <= 64 and small.samples_per_s == pytest.approx(1000)
    (capped,) = measure_group([est], p, max_batch=[16], generators=[torch.Generator()],
                              settings=settings)
    assert capped.batch == 16 * 4  # 16 samples take 0.016 s: 4 calls make a round of ≥ 0.05 s
    assert capped.rounds == 3 and capped.samples_per_s == pytest.approx(1000)


def test_an_interval_wider_than_rel_width_is_marked_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fake clock whose cost per sample cycles through 1, 1.5 and 2 ms, six one-call rounds
    give rates 1000, 667 and 500 samples/s twice each (in some order): median 667, and the 96.9 %
    interval of six rounds is their range, (500, 1000), 0.75 of the median wide. ``rel_width`` 0.8
    keeps the figure; 0.5 marks it wide (the rounds run on to ``max_rounds`` first). The interval in
    seconds per sample is the reciprocal one: ``lo = 1/hi`` of the rates, ``hi = 1/lo``."""
    import types

    from sbn_bench import throughput

    clock, calls = [0.0], [0]

    def fake_estimate(est, problem, batch, generator):
        clock[0] += (1e-3, 1.5e-3, 2e-3)[calls[0] % 3] * batch
        calls[0] += 1

    monkeypatch.setattr(throughput, "estimate", fake_estimate)
    monkeypatch.setattr(throughput, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    p = random_problem("2-2-1", 0, data_points=3)
    kw = dict(warmup=0, min_round_s=1e-9, min_rounds=6, max_rounds=6, batch=1)
    for rel_width, wide in ((0.8, False), (0.5, True)):
        (r,) = measure_group([REG.create("st")], p, max_batch=[4], generators=[torch.Generator()],
                             settings=ThroughputSettings(rel_width=rel_width, **kw))
        assert r.rounds == 6 and r.ci_level == pytest.approx(1 - 2 / 64)
        assert r.samples_per_s == pytest.approx(1000 / 1.5)
        assert (r.samples_per_s_lo, r.samples_per_s_hi) == (pytest.approx(500), pytest.approx(1000))
        assert r.wide is wide, (rel_width, r)
        assert r.seconds_per_sample_lo == pytest.approx(1e-3)
        assert r.seconds_per_sample == pytest.approx(1.5e-3)
        assert r.seconds_per_sample_hi == pytest.approx(2e-3)


def test_a_member_that_fails_is_named() -> None:
    log: list[str] = []
    ests = [_recording("a", log), _recording("b", log, fail_after=2)]
    p = random_problem("2-2-1", 0, data_points=3)
    settings = ThroughputSettings(warmup=0, min_round_s=1e-9, min_rounds=4, max_rounds=4, batch=1)
    with pytest.raises(MemberFailed) as info:
        measure_group(ests, p, max_batch=[4, 4], generators=[torch.Generator()] * 2,
                      settings=settings)
    assert info.value.index == 1 and "gave up" in str(info.value)


def test_the_runner_measures_once_per_network_and_records_failing_members(tmp_path: Path) -> None:
    """Two checkpoints of one network share one interleaved throughput cell; another network has
    its own; every statistics cell gets its time to accuracy from its network's figure; a member
    that fails is recorded while the others are measured."""
    ck = tmp_path / "ck.npz"
    save_problem(random_problem("2-2-2-1", 9, data_points=3), ck)
    plugin = tmp_path / "slowfail.py"
    plugin.write_text(
        "from sbn_bench.estimators import Estimator\n"
        "def broken(*, exit: int = 0):\n"
        "    def surrogate(problem, params, generator):\n"
        "        if exit:\n"
        "            raise SystemExit(exit)\n"
        "        raise RuntimeError('cannot time me')\n"
        "    return Estimator('broken', surrogate, randomness='none', description='x',\n"
        "                     hyperparams=(('exit', exit),))\n"
        "ESTIMATORS = {'broken': broken}\n")
    cfg = RunConfig(
        problems=(ProblemSpec(arch="2-2-2-1", data_points=3, name="a",
                              checkpoints=(Checkpoint("init"), Checkpoint("later", str(ck)))),
                  ProblemSpec(arch="2-3-1", data_points=3, name="b")),
        estimators=("psa", "st"), samples=16, M=(1,), out=str(tmp_path / "r"),
        throughput=ThroughputConfig(rounds=2, max_rounds=2, min_round_s=0.01, warmup=0))
    res = runner.run(cfg)
    tp = res.throughput
    assert sorted(set(tp["network"])) == ["2-2-2-1/D3/logistic/logistic", "2-3-1/D3/logistic/logistic"]
    assert len(tp) == 4 and set(tp["threads"]) == {1}
    timed = res.timed_metrics
    assert set(zip(timed["problem"], timed["checkpoint"])) == {("a", "init"), ("a", "later"),
                                                               ("b", "init")}
    res2 = runner.run(cfg.with_(estimators=("psa", "broken"), out=str(tmp_path / "s"),
                                plugins=(str(plugin),)))
    f = res2.failures
    assert (f["stage"] == "throughput").any() and "cannot time me" in " ".join(f["error"])
    assert set(res2.throughput["estimator"]) == {"psa"}
    # SystemExit is the member's failure too (it failed the whole cell: psa lost its figure)
    res3 = runner.run(cfg.with_(estimators=("psa", "broken:exit=5"), out=str(tmp_path / "t"),
                                plugins=(str(plugin),)))
    f = res3.failures[res3.failures["stage"] == "throughput"]
    assert set(f["estimator"]) == {"broken:exit=5"} and set(f["error"]) == {"SystemExit: 5"}, f
    assert set(res3.throughput["estimator"]) == {"psa"}


def test_a_wide_figure_is_never_the_fastest(tmp_path: Path) -> None:
    from sbn_bench.reports import load_run
    from sbn_bench.reports.tables import summary_table

    out = tmp_path / "r"
    runner.run(RunConfig(problems=(ProblemSpec(arch="2-2-1", data_points=3),),
                         estimators=("psa", "st"), samples=16, M=(1,), out=str(out),
                         throughput=ThroughputConfig(rounds=6, max_rounds=6, min_round_s=0.005,
                                                     warmup=0)))
    tp = pd.read_csv(out / "throughput.csv")
    tp["wide"] = [True, False]
    tp.loc[0, "samples_per_s"] = 1e12  # the wide one "fastest" by far
    tp.to_csv(out / "throughput.csv", index=False)
    table = summary_table(load_run(out), "arch-2-2-1-seed0", "init")
    col = table.header.index("samples/s")
    cells = {row[1].text: row[col] for row in table.rows if row[0].text == "1"}
    assert cells["psa"].text.endswith("(wide)") and not cells["psa"].strong
    assert cells["st"].strong
    from sbn_bench.reports.tables import throughput_table  # the throughput table marks it too

    tt = throughput_table(load_run(out), "arch-2-2-1-seed0", "init")
    rows = {row[0].text: row[2] for row in tt.rows}
    assert rows["psa"].text.endswith("(wide)") and not rows["psa"].strong and rows["st"].strong
    assert any("(wide)" in n for n in tt.notes)
    # a run made before figures short of 95 % were marked: 3 rounds (75 %), wide False, is wide;
    # a row without its rounds still renders
    tp["wide"], tp["ci_level"] = [False, False], [0.75, 1 - 2 / 64]
    tp["rounds"] = [3.0, math.nan]
    tp.to_csv(out / "throughput.csv", index=False)
    tt = throughput_table(load_run(out), "arch-2-2-1-seed0", "init")
    rows = {row[0].text: row[2] for row in tt.rows}
    assert rows["psa"].text.endswith("(wide)") and not rows["psa"].strong and rows["st"].strong
    assert "at level 96.9%, 75% (3 rounds)." in " ".join(tt.notes), tt.notes


def _benchmark(name: str):  # type: ignore[no-untyped-def]
    """The script ``benchmarks/NAME.py`` as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_throughput_table_script_runs_on_cpu(tmp_path, capsys) -> None:
    """benchmarks/throughput_table.py (what benchmarks/gpu.sh runs on CUDA) works end to end on the CPU."""
    mod = _benchmark("throughput_table")
    out = tmp_path / "t.md"
    assert mod.main(["--problems", "quick", "--estimators", "st,tanh,arm", "--min-round", "0.01",
                     "--max-seconds", "1", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| quick |")]
    assert [r.split("|")[2].strip() for r in rows] == ["st", "tanh", "arm"]
    assert all(float(r.split("|")[4].split("(")[0].replace(",", "")) > 0 for r in rows)
    if not torch.cuda.is_available():
        assert mod.main(["--device", "cuda", "--problems", "quick"]) == 2  # refused, not a CPU table


def test_benchmark_scripts_refuse_bad_arguments_before_measuring(tmp_path, capsys) -> None:
    """Attacker review: throughput_table measured for minutes, then failed to write an --out that
    was a folder, and measured st twice for --estimators st,st; gpu_probe refused --samples 0 after
    its scaling table and profile; compare_metrics given a failures.csv raised KeyError. Each is
    one line and exit status 2 before any work now."""
    table = _benchmark("throughput_table")
    for argv, words in ((["--out", str(tmp_path)], "is a folder"),
                        (["--estimators", "st,st"], "st more than once"),
                        (["--estimators", ""], "empty"),
                        (["--device", "tpu"], "--device 'tpu' is not one of cpu, cuda")):
        assert table.main(["--problems", "quick", *argv]) == 2, argv
        assert words in capsys.readouterr().err, argv
    with pytest.raises(SystemExit) as e:
        _benchmark("gpu_probe").main(["--what", "profile,cells", "--samples", "0"])
    assert e.value.code == 2 and "must be an integer ≥ 1" in capsys.readouterr().err
    good = tmp_path / "metrics.csv"
    pd.DataFrame({c: [] for c in ["problem", "checkpoint", "estimator", "layer", "metric", "M",
                                  "seed", "mode", "value", "stderr"]}).to_csv(good, index=False)
    bad = tmp_path / "failures.csv"
    bad.write_text("problem,checkpoint,estimator,stage,error\n", encoding="utf-8")
    assert _benchmark("compare_metrics").main([str(good), str(bad)]) == 2
    assert "is not a metrics.csv" in capsys.readouterr().err

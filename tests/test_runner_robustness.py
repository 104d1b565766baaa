"""The runner against hostile plugins, damaged run folders and surprising settings: every case
gives either the right numbers or a recorded failure or a one-line refusal, never silently wrong
results or a hang.

The plugins are written by the tests into temporary files, as a user would write them.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch

from sbn_bench import model, provenance, runner
from sbn_bench.config import ConfigError, ProblemSpec, RunConfig, ThroughputConfig
from sbn_bench.estimators import EstimatorSpecError, PluginFileError
from sbn_bench.reports.load import device_of, load_run, run_facts
from sbn_bench.storage import RunDirError, RunStore, diff_dicts, part_problem


def config(out: Path, **kw) -> RunConfig:
    base = dict(problems=(ProblemSpec(arch="2-2-2-1", data_points=3),), estimators=("psa", "st"),
                samples=24, M=(1, 4), throughput=ThroughputConfig(enabled=False), out=str(out))
    base.update(kw)
    return RunConfig(**base)


def plugin(tmp_path: Path, body: str, name: str = "hostile.py") -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return str(p)


MUTATOR = """
    from sbn_bench.estimators.builtin.straight_through import st

    def mutator():
        base = st()

        def surrogate(problem, params, generator):
            problem.params["weight_1"].add_(1.0)  # against the contract: modifies the problem
            return base.surrogate(problem, params, generator)

        import dataclasses
        return dataclasses.replace(base, name="mutator", surrogate=surrogate, path_surrogate=None,
                                   randomness="continuous")

    ESTIMATORS = {"mutator": mutator}
"""


def test_a_plugin_that_modifies_the_problem_cannot_change_other_cells(tmp_path: Path) -> None:
    """Every cell gets a private copy of the problem: the later estimators' numbers are those of a
    run without the plugin, and the plugin's cell is recorded as failed."""
    p = plugin(tmp_path, MUTATOR)
    clean = runner.run(config(tmp_path / "clean", estimators=("psa", "st")))
    dirty = runner.run(config(tmp_path / "dirty", estimators=("mutator", "psa", "st"), plugins=(p,)))
    assert (tmp_path / "clean" / "metrics.csv").read_text() == \
        (tmp_path / "dirty" / "metrics.csv").read_text()
    (err,) = dirty.failures["error"]
    assert "'mutator' modified the problem it was given" in err
    assert set(clean.metrics["estimator"]) == {"psa", "st"}


def test_a_plugin_that_modifies_the_problem_loses_only_its_own_throughput(tmp_path: Path) -> None:
    """The estimators of a network are timed together, each on the same problem: the one that
    writes into it is named and dropped, and the others are measured again on an intact copy
    (before, the whole group lost its figures with "an estimator modified the problem")."""
    p = plugin(tmp_path, MUTATOR)
    tp = ThroughputConfig(rounds=1, warmup=0, min_round_s=0.001, batch=4)
    res = runner.run(config(tmp_path / "r", estimators=("psa", "mutator", "st"), plugins=(p,),
                            throughput=tp))
    assert sorted(res.throughput["estimator"]) == ["psa", "st"]
    assert sorted(zip(res.failures["estimator"], res.failures["stage"])) == [
        ("mutator", "estimate"), ("mutator", "throughput")]  # its statistics cell, its figure
    (err,) = res.failures[res.failures["stage"] == "throughput"]["error"]
    assert "estimator 'mutator' modified the problem it was given" in err


def test_resume_refuses_a_changed_plugin_file(tmp_path: Path) -> None:
    p = plugin(tmp_path, MUTATOR.replace("add_(1.0)", "add_(0.0)"))
    cfg = config(tmp_path / "r", estimators=("mutator",), plugins=(p,))
    runner.run(cfg)
    Path(p).write_text(Path(p).read_text() + "\n# changed\n")
    with pytest.raises(RunDirError, match=r"plugin file '.*hostile.py' \(SHA-256\)"):
        runner.run(cfg.with_(resume=True))


def test_resume_takes_a_moved_plugin_file_of_the_same_content(tmp_path: Path) -> None:
    """The manifest records each plugin file's path and SHA-256: a file moved since is taken
    under its new path when given (the finished cells are kept), and refused, naming it and how
    to go on, when not given or changed."""
    import shutil

    p = plugin(tmp_path, MUTATOR.replace("add_(1.0)", "add_(0.0)"))
    runner.run(config(tmp_path / "r", estimators=("mutator", "psa"), plugins=(p,)))
    moved = shutil.move(p, tmp_path / "moved.py")
    with pytest.raises(RunDirError, match=r"plugin file '.*hostile.py' \(recorded in its manifest\) "
                                          r"does not exist: put it back, or give a file of the same"):
        runner.resume_config(tmp_path / "r")
    cfg = runner.resume_config(tmp_path / "r", plugins=(str(moved),), seeds=(0, 1))
    assert cfg.plugins == (str(moved),)
    res = runner.run(cfg)
    assert res.cells_skipped == 2 and res.cells_run == 2
    assert set(res.metrics["estimator"]) == {"mutator", "psa"}
    # given through a link that is gone since: the manifest recorded the link's target
    real = tmp_path / "real.py"
    shutil.copy(moved, real)
    link = tmp_path / "link.py"
    link.symlink_to(real)
    runner.run(config(tmp_path / "l", estimators=("mutator",), plugins=(str(link),)))
    link.unlink()
    cfg = runner.resume_config(tmp_path / "l", plugins=str(real))  # one file, as RunConfig takes
    assert cfg.plugins == (str(real),) and runner.run(cfg).cells_skipped == 1
    # the run now records the file where it is; a changed content is refused as before
    original = Path(moved).read_text()
    Path(moved).write_text(original + "\n# changed\n")
    with pytest.raises(RunDirError, match=r"plugin file '.*moved.py' \(SHA-256\)"):
        runner.run(runner.resume_config(tmp_path / "r"))
    # ... unless the recorded content is given elsewhere: that copy stands for the edited file
    # (both were loaded, and their estimators clashed: "rename the plugin's estimator")
    copy = tmp_path / "copy.py"
    copy.write_text(original)
    cfg = runner.resume_config(tmp_path / "r", plugins=copy)
    assert cfg.plugins == (str(copy),) and runner.run(cfg).cells_skipped == 4


def _with_trailer(body: str, rows: int) -> str:
    """``body`` with a trailer of its true SHA-256 and the given row count."""
    return f"{body}#rows={rows} sha256={hashlib.sha256(body.encode('utf-8')).hexdigest()}\n"


DAMAGE = {"empty": "the file emptied", "garbage": "bytes that are not a CSV",
          "truncated": "cut in half", "no trailer": "the trailer removed",
          "other cell": "another cell's complete part",
          "edited": "one value changed, the old trailer kept (SHA-256 mismatch)",
          "row deleted": "a row deleted, its SHA-256 made again, the old count kept",
          "header": "the header changed, trailer made again"}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_part_files_are_run_again(tmp_path: Path, damage: str) -> None:
    cfg = config(tmp_path / "r", seeds=(0, 1))
    first = (runner.run(cfg), (tmp_path / "r" / "metrics.csv").read_bytes())
    parts = sorted((tmp_path / "r" / "cells").glob("metrics-*.metrics.csv"))
    victim, other = parts[0], parts[1]
    text = victim.read_text()
    body, trailer = text.rsplit("#rows=", 1)
    n = int(trailer.split()[0].removeprefix("#rows="))
    lines = body.splitlines(keepends=True)
    edited = lines[:]
    edited[1] = edited[1].replace(",cpu,", ",cuda,", 1)  # one field of one row
    assert edited[1] != lines[1]
    victim.write_text({"empty": "", "garbage": "\x00\x01 not a csv\n",
                       "truncated": text[: len(text) // 2],
                       "no trailer": body,
                       "other cell": other.read_text(),
                       "edited": "".join(edited) + "#rows=" + trailer,
                       "row deleted": _with_trailer("".join(lines[:1] + lines[2:]), n),
                       "header": _with_trailer("".join([lines[0].replace("value", "valeur")]
                                                       + lines[1:]), n)}[damage])
    why = part_problem(victim.read_text(), "metrics")
    if damage == "other cell":
        assert why is None  # complete, but keyed to another cell: found by the runner's key
    else:
        assert why is not None and {"edited": "SHA-256", "row deleted": "rows, its trailer says",
                                    "header": "header"}.get(damage, "") in why, why
    res = runner.run(cfg.with_(resume=True))
    assert res.cells_run == 1 and res.manifest["status"] == "complete"
    assert (tmp_path / "r" / "metrics.csv").read_bytes() == first[1]


GLOBAL_RNG = """
    import torch
    from sbn_bench.estimators import Estimator

    def global_rng():
        def surrogate(problem, params, generator):
            noise = torch.rand(params["weight_1"].shape[0], dtype=problem.x.dtype)  # global RNG
            return params["weight_1"].sum((1, 2)) * noise
        return Estimator("global-rng", surrogate, randomness="continuous",
                         description="draws from torch's global generator")

    ESTIMATORS = {"global-rng": global_rng}
"""


def test_a_plugin_drawing_from_the_global_generator_is_reproducible(tmp_path: Path) -> None:
    p = plugin(tmp_path, GLOBAL_RNG)
    torch.manual_seed(123)  # whatever state the caller leaves behind
    runner.run(config(tmp_path / "a", estimators=("global-rng",), plugins=(p,)))
    torch.rand(7)
    runner.run(config(tmp_path / "b", estimators=("global-rng",), plugins=(p,)))
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == \
        (tmp_path / "b" / "metrics.csv").read_bytes()


HANGS_AND_EXITS = """
    import sys, time
    from sbn_bench.estimators.builtin.straight_through import st

    def sleeper():
        base = st()
        def surrogate(problem, params, generator):
            time.sleep(3600)
        import dataclasses
        return dataclasses.replace(base, name="sleeper", surrogate=surrogate, path_surrogate=None,
                                   randomness="continuous")

    def quitter():
        base = st()
        def surrogate(problem, params, generator):
            sys.exit(3)
        import dataclasses
        return dataclasses.replace(base, name="quitter", surrogate=surrogate, path_surrogate=None,
                                   randomness="continuous")

    ESTIMATORS = {"sleeper": sleeper, "quitter": quitter}
"""


def test_a_hung_cell_times_out_and_a_plugin_exit_is_recorded(tmp_path: Path) -> None:
    p = plugin(tmp_path, HANGS_AND_EXITS)
    res = runner.run(config(tmp_path / "r", estimators=("sleeper", "quitter", "st"), plugins=(p,),
                            cell_timeout=1.0))
    f = res.failures.set_index("estimator")
    assert f.loc["sleeper", "stage"] == "timeout" and "time limit of 1 s" in f.loc["sleeper", "error"]
    assert f.loc["quitter", "stage"] == "estimate" and "SystemExit: 3" in f.loc["quitter", "error"]
    assert set(res.metrics["estimator"]) == {"st"} and res.manifest["status"] == "complete"


def test_a_folder_in_use_by_another_run_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "r"
    cfg = config(out)
    runner.run(cfg)
    holder = RunStore.open(out, json.loads((out / "manifest.json").read_text()), resume=True)
    try:
        with pytest.raises(RunDirError, match="in use by another sbn-bench process"):
            runner.run(cfg.with_(resume=True))
    finally:
        holder.close()
    assert runner.run(cfg.with_(resume=True)).cells_skipped == 2  # free again


def test_resume_refuses_another_thread_count(tmp_path: Path) -> None:
    cfg = config(tmp_path / "r")
    before = torch.get_num_threads()
    runner.run(cfg)
    assert torch.get_num_threads() == before  # the run's thread count is restored after it
    with pytest.raises(RunDirError, match=r"device.torch_threads: 1 → 2"):
        runner.run(cfg.with_(resume=True, threads=2))


def test_a_long_list_that_differs_is_shown_where_it_parts(tmp_path: Path) -> None:
    """Two long M grids shortened alike looked identical in the refusal; it names the first
    position where they differ (and the lengths), once (not again as the derived m_grid)."""
    long = tuple(range(1, 25))
    cfg = config(tmp_path / "r", M=long, samples=48)
    runner.run(cfg)
    with pytest.raises(RunDirError) as e:
        runner.run(cfg.with_(resume=True, M=long[:20] + (21, 30, 40)))
    msg = str(e.value)
    assert "config.m_grid[21]: 22 → 30 (24 → 23 items)" in msg and "config.M" not in msg
    assert "(1 difference(s)" in msg
    # the grid decides, not how it was given: the default grid written out is the same run
    cfg = config(tmp_path / "d", samples=48, M=None)
    runner.run(cfg)
    assert runner.run(cfg.with_(resume=True, M=cfg.m_grid)).cells_skipped == 2
    assert diff_dicts({"s": [0]}, {"s": [0, 1]}) == ["s: [0] → [0, 1]"]  # short lists: in full
    a, b = "x" * 100 + "old tail", "x" * 100 + "new tail"  # long strings that part late
    assert diff_dicts({"p": a}, {"p": b}) == ["p from character 100: 'xxxxxxxxxxold tail' → "
                                              "'xxxxxxxxxxnew tail'"]


def test_a_resume_that_leaves_out_finished_cells_says_so(tmp_path: Path) -> None:
    """A resume whose grid omits cells an earlier session finished (here estimator st) warns,
    naming them; their parts stay, and naming them again brings them back."""
    cfg = config(tmp_path / "r")
    runner.run(cfg)
    said: list[str] = []
    res = runner.run(cfg.with_(resume=True, estimators=("psa",), seeds=(0, 1)), warn=said.append)
    assert res.cells_skipped == 1 and res.cells_run == 1
    assert len(said) == 1 and "1 finished cell(s)" in said[0] and "estimator st" in said[0]
    assert "seed 0" in said[0] and "metrics.csv and the report leave them out" in said[0]
    assert said[0] in res.warnings and set(res.metrics["estimator"]) == {"psa"}
    said.clear()
    res = runner.run(cfg.with_(resume=True, seeds=(0, 1)), warn=said.append)
    assert not said and set(res.metrics["estimator"]) == {"psa", "st"} and res.cells_skipped == 3


def test_resume_refuses_another_random_stream(tmp_path: Path) -> None:
    """Cells drawn from another random stream (``model.STREAM_VERSION``: what a seed draws), or
    from an unrecorded one, never join a run's tables."""
    out = tmp_path / "r"
    cfg = config(out)
    runner.run(cfg)
    path = out / "manifest.json"
    man = json.loads(path.read_text())
    assert man["random_stream"] == model.STREAM_VERSION
    old = model.STREAM_VERSION - 1
    path.write_text(json.dumps({**man, "random_stream": old}))
    with pytest.raises(RunDirError, match=f"random_stream: {old} → {model.STREAM_VERSION}"):
        runner.run(cfg.with_(resume=True))
    path.write_text(json.dumps({k: v for k, v in man.items() if k != "random_stream"}))
    with pytest.raises(RunDirError, match=f"random_stream: 'unrecorded' → {model.STREAM_VERSION}"
                                          ".*not a setting.*another output folder"):
        runner.run(cfg.with_(resume=True))
    path.write_text(json.dumps(man))
    assert runner.run(cfg.with_(resume=True)).cells_skipped == 2


def test_the_processor_is_recorded_but_a_resume_elsewhere_is_allowed(tmp_path: Path) -> None:
    """The manifest names the processor and torch's instruction set (results agree across
    processors to rounding, not bit for bit: README, "Reproducible"); like a Dask run's workers, a
    resume on another processor is allowed."""
    out = tmp_path / "r"
    cfg = config(out)
    runner.run(cfg)
    path = out / "manifest.json"
    man = json.loads(path.read_text())
    assert man["device"]["cpu"] == provenance.cpu_model() != ""
    cap = torch.backends.cpu.get_cpu_capability()
    assert man["device"]["cpu_capability"] == cap
    # the report's header names it; a manifest from before it was recorded, the machine type
    assert dict(run_facts(load_run(out)))["device"] == f"cpu {provenance.cpu_model()} ({cap})"
    # ... but --compare matches devices by name, so runs on two kinds of processor compare
    assert device_of(load_run(out)) == f"cpu {man['device']['name']}"
    older = {k: v for k, v in man["device"].items() if k not in ("cpu", "cpu_capability")}
    path.write_text(json.dumps({**man, "device": older}))
    assert dict(run_facts(load_run(out)))["device"] == f"cpu {man['device']['name']}"
    path.write_text(json.dumps({**man, "device": {**man["device"], "cpu": "Another CPU",
                                                  "cpu_capability": "DEFAULT"}}))
    assert runner.run(cfg.with_(resume=True)).cells_skipped == 2
    resumed = json.loads(path.read_text())
    assert resumed["device"]["cpu"] == provenance.cpu_model()
    # the earlier session's processor is kept (its cells are in the tables) and shown
    here = f"{provenance.cpu_model()} ({cap})"
    assert resumed["processors"] == ["Another CPU (DEFAULT)", here]
    assert dict(run_facts(load_run(out)))["device"] == (
        f"cpu {here}; its sessions ran on Another CPU (DEFAULT); {here}")
    assert runner.run(cfg.with_(resume=True)).cells_skipped == 2  # recorded once each
    assert json.loads(path.read_text())["processors"] == ["Another CPU (DEFAULT)", here]


def test_cpu_model_reads_the_model_name_and_falls_back(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    import builtins

    real_open = builtins.open
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t:  Some  CPU @ 2.0GHz\n"
                    "processor\t: 1\nmodel name\t: Some CPU @ 2.0GHz\n")

    def fake(path, *a, **k):
        if path == "/proc/cpuinfo":
            if not info.exists():
                raise FileNotFoundError(path)
            return real_open(info, *a, **k)
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake)
    assert provenance.cpu_model.__wrapped__() == "Some CPU @ 2.0GHz"
    info.unlink()  # no /proc (macOS, Windows): the platform's word, else the machine type
    monkeypatch.setattr(provenance.platform, "processor", lambda: "")
    monkeypatch.setattr(provenance.platform, "machine", lambda: "arm64")
    assert provenance.cpu_model.__wrapped__() == "arm64"


def test_a_manifest_that_is_not_an_object_is_refused_on_resume(tmp_path: Path) -> None:
    cfg = config(tmp_path / "r")
    runner.run(cfg)
    (tmp_path / "r" / "manifest.json").write_text("[1, 2, 3]")
    with pytest.raises(RunDirError, match="holds a JSON list, not an object"):
        runner.run(cfg.with_(resume=True))


def test_a_hyperparameter_a_manifest_cannot_record_is_refused_before_any_write(
        tmp_path: Path) -> None:
    p = plugin(tmp_path, """
        from sbn_bench.estimators.builtin.straight_through import st

        def odd(*, scale: object = None):
            import dataclasses
            return dataclasses.replace(st(), name="odd", hyperparams=(("scale", {1, 2}),))

        ESTIMATORS = {"odd": odd}
    """)
    out = tmp_path / "r"
    # no spec names the value back: a broken factory at load (the registry's check), then a
    # value a spec does name but the manifest cannot record ({1}: read back as the text '{1}')
    with pytest.raises(EstimatorSpecError, match=r"estimator 'odd' failed to load: .*its spec "
                                                  r"'odd:scale=\{1, 2\}' does not name it again"):
        runner.run(config(out, estimators=("odd",), plugins=(p,)))
    assert not out.exists()
    Path(p).write_text(Path(p).read_text().replace("{1, 2}", "{1}"))
    with pytest.raises(runner.RunError, match=r"estimator 'odd.*hyperparameter scale=\{1\} is a "
                                              r"set") as info:
        runner.run(config(out, estimators=("odd",), plugins=(p,)))
    assert info.value.argument == "odd:scale" and not out.exists()
    assert runner.run(config(out, estimators=("st",))).manifest["status"] == "complete"


def test_default_estimators_skip_what_they_cannot_take(tmp_path: Path) -> None:
    warnings: list[str] = []
    res = runner.run(config(tmp_path / "r", estimators=None, samples=8, M=(1,),
                            problems=(ProblemSpec(arch="2-2-1", data_points=3, noise="gaussian"),)),
                     warn=warnings.append)
    assert {"arm"} <= {w.split("'")[1] for w in warnings if "left out" in w}
    assert "arm" not in set(res.metrics["estimator"]) and "psa" in set(res.metrics["estimator"])
    with pytest.raises(runner.RunError, match="not supported"):  # asked for by name: refused
        runner.run(config(tmp_path / "s", estimators=("arm",), samples=8, M=(1,),
                          problems=(ProblemSpec(arch="2-2-1", data_points=3, noise="gaussian"),)))


def test_m_above_samples_and_huge_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"M=\[5000\] has values above samples=100") as info:
        config(tmp_path / "r", samples=100, M=(5000,))
    assert info.value.argument == "M"
    with pytest.raises(ConfigError, match=r"samples=100000000000000000000000 must be an integer ≥ 1 "
                                          r"and ≤ 1000000000"):
        config(tmp_path / "r", samples=10**23, M=(1,))
    with pytest.raises(ConfigError, match="throughput.rounds"):
        ThroughputConfig(rounds=10**23)


def test_ctrl_c_marks_the_manifest_interrupted(tmp_path: Path) -> None:
    out = tmp_path / "r"

    def stop(cell) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(config(out), on_cell_done=stop)
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "interrupted" and man["cells"]["run"] == 1


def test_a_second_ctrl_c_during_the_clean_up_is_ignored(tmp_path: Path, monkeypatch) -> None:
    """A second Ctrl-C while the first one's clean-up assembled the tables escaped it and left the
    manifest "running" for a dead run (attacker review): the clean-up ignores Ctrl-C and SIGTERM,
    and the handlers are put back after."""
    import os
    import signal

    out = tmp_path / "r"
    real, calls = runner._assemble, []

    def assemble(*a):  # the clean-up's assembly: the user presses Ctrl-C again
        calls.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        return real(*a)

    def stop(cell) -> None:
        monkeypatch.setattr(runner, "_assemble", assemble)
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        runner.run(config(out), on_cell_done=stop)
    assert calls and signal.getsignal(signal.SIGINT) is before
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "interrupted" and man["cells"]["run"] == 1, man


@pytest.mark.parametrize("where", ["close", "assemble"])
def test_ctrl_c_after_the_last_cell_still_marks_the_run(tmp_path: Path, monkeypatch, where) -> None:
    """Ctrl-C while the executor shuts down, or during the final assembly of the tables, left the
    manifest "running" (the second with an UnboundLocalError hiding the interrupt): it is marked
    "interrupted", with the tables assembled from the part files, and a resume finishes it."""
    out = tmp_path / "r"
    if where == "close":
        monkeypatch.setattr(runner.SerialExecutor, "close",
                            lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    else:
        real, calls = runner._assemble, []

        def assemble(*a):  # the final one (after every cell) is interrupted, the retry is not
            calls.append(1)
            if len(calls) == 1:
                raise KeyboardInterrupt
            return real(*a)
        monkeypatch.setattr(runner, "_assemble", assemble)
    with pytest.raises(KeyboardInterrupt):
        runner.run(config(out, executor="serial"))
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "interrupted" and man["cells"]["run"] == 2, man
    assert len(pd.read_csv(out / "metrics.csv")) > 0
    monkeypatch.undo()
    res = runner.run(config(out, executor="serial", resume=True))
    assert (res.cells_run, res.cells_skipped) == (0, 2) and res.manifest["status"] == "complete"


def test_resume_may_add_checkpoints_and_estimators(tmp_path: Path) -> None:
    from sbn_bench import problems
    from sbn_bench.config import Checkpoint

    ck = tmp_path / "ck.npz"
    problems.save_problem(problems.random_problem("2-2-2-1", 5, data_points=3), ck)
    cfg = config(tmp_path / "r")
    runner.run(cfg)
    spec = ProblemSpec(arch="2-2-2-1", data_points=3,
                       checkpoints=(Checkpoint("init"), Checkpoint("later", str(ck))))
    res = runner.run(cfg.with_(problems=(spec,), estimators=("psa", "st", "reinforce"), resume=True))
    assert (res.cells_run, res.cells_skipped) == (4, 2)
    assert set(res.metrics["checkpoint"]) == {"init", "later"}


def test_run_in_a_thread_still_works_without_a_time_limit(tmp_path: Path) -> None:
    """Off the main thread no ``SIGALRM`` can stop a cell: the run works, without the limit."""
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(r=runner.run(config(tmp_path / "r",
                                                                       cell_timeout=5.0))))
    t.start()
    t.join(120)
    assert box["r"].manifest["status"] == "complete"


def test_plugin_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(PluginFileError, match="missing.py' does not exist"):
        runner.run(config(tmp_path / "r", plugins=(str(tmp_path / "missing.py"),)))


def test_resume_config_reads_the_run_from_its_manifest_alone(tmp_path: Path) -> None:
    """``runner.resume_config(out)`` (what ``sbn-bench run --out DIR --resume`` calls): the run's
    own configuration, resumed; given settings replace its own, plugins and throughput fields
    extend it; a folder without a readable manifest, or a --preset paper run, is refused naming
    the folder."""
    out = tmp_path / "run"
    first = runner.run(config(out, estimators=("st",)))
    cfg = runner.resume_config(out, estimators=("st", "tanh"))
    assert cfg.resume and cfg.out == str(out) and cfg.estimators == ("st", "tanh")
    assert cfg.problems == config(out).problems and cfg.samples == 24 and cfg.m_grid == (1, 4)
    again = runner.run(cfg)
    assert again.cells_skipped == 1 and set(again.metrics["estimator"]) == {"st", "tanh"}
    assert again.metrics.query("estimator == 'st'").equals(first.metrics)
    other = runner.resume_config(out, M="default", throughput={"rounds": 2, "enabled": True})
    assert other.m_grid == config(out, M=None).m_grid  # the default grid up to the samples
    assert other.throughput.rounds == 2 and other.throughput.enabled
    assert other.throughput.warmup == config(out).throughput.warmup
    with pytest.raises(RunDirError, match="no manifest.json in") as e:
        runner.resume_config(tmp_path / "nothing")
    assert e.value.argument == "out" and e.value.value == str(tmp_path / "nothing")
    man = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**man, "experiment": {"name": "paper"}}))
    with pytest.raises(RunDirError, match="holds a --preset paper run"):
        runner.resume_config(out)
    (out / "manifest.json").write_text("[1]")
    with pytest.raises(RunDirError, match="a JSON array, not an object"):
        runner.resume_config(out)
    (out / "manifest.json").write_text('{"config": {"problems": "x"}}')
    with pytest.raises(ConfigError, match="cannot resume"):
        runner.resume_config(out)


def test_resume_of_a_missing_folder_warns_that_it_starts_a_new_run(tmp_path: Path) -> None:
    """``--resume`` with a mistyped ``--out`` used to restart a long run from nothing silently."""
    said: list[str] = []
    res = runner.run(config(tmp_path / "typo", resume=True), warn=said.append)
    assert res.manifest["status"] == "complete"
    assert said == [f"resume: {str(tmp_path / 'typo')!r} holds no run to resume (it is empty or "
                    "missing); starting a new run there"]
    said.clear()
    runner.run(config(tmp_path / "typo", resume=True), warn=said.append)  # a real resume: no word
    assert said == []


def test_throughput_can_be_added_dropped_and_added_again_on_resume(tmp_path: Path) -> None:
    """A run made with throughput off could never get it (any throughput setting on --resume was
    refused as a difference); a resume without it dropped the figures silently; and the figures
    are measured again, not reused, when throughput comes back with other settings."""
    out = tmp_path / "r"
    fast = dict(rounds=2, max_rounds=2, min_round_s=0.001, warmup=0)
    runner.run(config(out))  # throughput off
    res = runner.run(config(out, resume=True, throughput=ThroughputConfig(**fast)))
    assert (res.cells_run, res.cells_skipped) == (1, 2)
    assert sorted(res.throughput["estimator"]) == ["psa", "st"]
    said: list[str] = []
    res = runner.run(config(out, resume=True), warn=said.append)  # off again
    assert res.throughput.empty and (res.cells_run, res.cells_skipped) == (0, 2)
    assert [w for w in said if w.startswith("the throughput measured earlier")], said
    res = runner.run(config(out, resume=True, throughput=ThroughputConfig(**{**fast, "rounds": 1})))
    assert (res.cells_run, res.cells_skipped) == (1, 2) and len(res.throughput) == 2
    with pytest.raises(RunDirError, match="throughput"):  # measured, then other settings: refused
        runner.run(config(out, resume=True, throughput=ThroughputConfig(**fast)))


def test_summary_marks_values_whose_error_exceeds_them() -> None:
    """A layer against a coarse Monte-Carlo reference printed rrmse 0.0193 (± 1.9 in metrics.csv)
    as the best of the table; :meth:`RunResult.unresolved` marks it, and the CLI prints a '?'.
    A Monte-Carlo value whose error is unknown (NaN) or a clipped Monte-Carlo zero is not
    resolved either (as the report's heatmap and ranking judge it); an exact value is."""
    nan = float("nan")
    rows = [dict(problem="p", checkpoint="c", estimator=e, layer=lay, metric="rrmse", M=1.0,
                 value=v, stderr=se, seed=s, mode=mode)
            for e, lay, v, se, mode in (
                ("st", "1", 0.0193, 1.9, "mc"), ("st", "all", 0.13, 0.01, "mc"),
                ("psa", "1", 0.02, float("inf"), "mc"), ("psa", "all", 0.12, 0.01, "mc"),
                ("arm", "1", 0.5, nan, "mc"), ("arm", "all", 0.0, 0.1, "mc"),
                ("tanh", "1", 0.5, nan, "exact"), ("tanh", "all", 0.4, 0.0, "exact"),
                ("disarm", "1", 0.4, 0.4, "mc"),  # equal to its error: not resolved
                ("disarm", "all", nan, nan, "mc"))  # no value: nothing to mark
            for s in (0, 1)]
    res = runner.RunResult(Path("."), pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame(), {})
    loose = res.unresolved(m=1)
    assert loose.index.equals(res.summary(m=1).index) and list(loose.columns) == ["1", "all"]
    assert loose.to_numpy().tolist() == [[True, False], [True, False], [True, True],
                                         [False, False], [True, False]]
    # the rule is the report's (Estimate.resolved), row by row
    from sbn_bench.reports.ranking import Estimate

    for r in rows:
        e = Estimate(r["value"], r["stderr"], r["mode"])
        assert bool(loose.loc[("p", "c", r["estimator"]), r["layer"]]) == (e.finite and not e.resolved)

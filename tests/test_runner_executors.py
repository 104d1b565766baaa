"""Executors (sbn_bench.runner.executors): the same results wherever the cells run, and the faults
of parallel workers handled cell by cell.

Every parallel run here is compared byte for byte with a serial run of the same configuration.
Faults are real: worker processes are killed by their PID (``SIGKILL`` from this test, while the
cell sleeps in a plugin that wrote its PID to a file), crash (``os._exit(1)`` in a plugin) or hang
past ``cell_timeout`` (a plugin that sleeps, with ``SIGALRM`` blocked or not). The Dask tests run on
real ``LocalCluster``s over loopback with two single-threaded workers: one started by the executor
itself (``dask:2``) and one shared by the module's tests, to which the executor connects by address
(``dask:tcp://127.0.0.1:PORT``). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from sbn_bench import runner
from sbn_bench.cli import main
from sbn_bench.config import ProblemSpec, RunConfig, ThroughputConfig, load_config
from sbn_bench.estimators import PluginSource
from sbn_bench.runner import RunError, dask_executor, executors
from sbn_bench.runner.cells import Cell, CellContext, exact_reference
from sbn_bench.runner.process_executor import ProcessExecutor
from sbn_bench.runner.worker import Recipe, measure_shipped, rebuild

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402 - after the importorskip

PLUGIN = textwrap.dedent('''
    """Estimators that misbehave on purpose; MARKS is the folder where they leave their traces."""
    import os
    import signal
    import time
    from pathlib import Path

    from sbn_bench.estimators import Estimator
    from sbn_bench.estimators.builtin.straight_through import st

    MARKS = Path({marks!r})


    def _mark(name, text):
        tmp = MARKS / f".{{name}}.{{os.getpid()}}.tmp"
        tmp.write_text(text)
        os.replace(tmp, MARKS / name)


    def slow_once():
        """The first call writes its PID to MARKS/slow.pid and sleeps (to be killed); later calls are st."""
        base = st()

        def surrogate(problem, params, generator):
            if not (MARKS / "slow.pid").exists():
                _mark("slow.pid", str(os.getpid()))
                time.sleep(120)
            _mark("slow.retried", str(os.getpid()))
            return base.surrogate(problem, params, generator)
        return Estimator("slow-once", surrogate, randomness="path")


    def crash():
        """Ends its process on every call, after appending a line to MARKS/crash.attempts."""
        def surrogate(problem, params, generator):
            with open(MARKS / "crash.attempts", "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            os._exit(1)
        return Estimator("crash", surrogate, randomness="continuous")


    def hang():
        """Sleeps far past any cell_timeout of the tests."""
        def surrogate(problem, params, generator):
            time.sleep(120)
        return Estimator("hang", surrogate, randomness="continuous")


    def hang_hard():
        """Blocks SIGALRM, then sleeps: only killing its process stops it."""
        def surrogate(problem, params, generator):
            signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM}})
            time.sleep(120)
        return Estimator("hang-hard", surrogate, randomness="continuous")


    def raises():
        """Raises on every call (a recorded failure, in a statistics or a throughput cell)."""
        def surrogate(problem, params, generator):
            raise RuntimeError("raises on purpose")
        return Estimator("raises", surrogate, randomness="continuous")


    def interrupts():
        """Raises KeyboardInterrupt itself (no Ctrl-C was pressed)."""
        def surrogate(problem, params, generator):
            raise KeyboardInterrupt("raised by the plugin")
        return Estimator("interrupts", surrogate, randomness="continuous")


    ESTIMATORS = {{"slow-once": slow_once, "crash": crash, "hang": hang, "hang-hard": hang_hard,
                  "raises": raises, "interrupts": interrupts}}
''')


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    marks = tmp_path / "marks"
    marks.mkdir()
    p = tmp_path / "misbehaving.py"
    p.write_text(PLUGIN.format(marks=str(marks)))
    return p


def config(out: Path, **kw) -> RunConfig:
    base = dict(problems=(ProblemSpec(arch="2-2-2-1", data_points=3),
                          ProblemSpec(arch="2-3-1", data_points=4, seed=2, noise="gaussian")),
                estimators=("psa", "st", "reinforce"), seeds=(0, 1), samples=48, M=(1, 4),
                throughput=ThroughputConfig(enabled=False), out=str(out))
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory) -> Path:
    """The reference: the configuration run serially (12 statistics cells)."""
    out = tmp_path_factory.mktemp("serial") / "run"
    res = runner.run(config(out))
    assert res.cells_run == 12 and res.failures.empty
    return out


def same_results(a: Path, b: Path) -> None:
    for name in ("metrics.csv", "failures.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["device"] == mb["device"] and mb["status"] == "complete"


def kill_when_written(pid_file: Path, timeout: float = 120.0) -> threading.Thread:
    """A thread that waits for ``pid_file`` and sends SIGKILL to the PID in it (bounded wait)."""

    def target() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pid_file.exists():
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
                return
            time.sleep(0.05)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


def failures(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "failures.csv")


# --------------------------------------------------------------------------------------------
# processes


def test_processes_give_byte_identical_metrics_to_serial(tmp_path, serial_run):
    out = tmp_path / "proc"
    res = runner.run(config(out, executor="processes:2"))
    assert res.cells_run == 12
    same_results(serial_run, out)
    man = json.loads((out / "manifest.json").read_text())
    assert man["device"]["torch_threads"] == 1 and man["config"]["executor"] == "processes:2"


def test_processes_start_no_more_workers_than_cells(tmp_path):
    """``processes:N`` with N above the cells starts one worker per cell, not N."""
    started = []

    class Counting(ProcessExecutor):
        def _start(self):
            w = super()._start()
            started.append(w)
            return w

    cfg = config(tmp_path / "few", problems=(ProblemSpec(arch="2-2-2-1", data_points=3),),
                 estimators=("st", "tanh"), seeds=(0,))
    res = runner.run(cfg, executor=Counting(16))
    assert res.cells_run == 2 and res.failures.empty
    assert len(started) == 2, len(started)
    assert res.manifest["executor"] == {"name": "processes", "workers": 16}


def test_processes_record_a_cell_past_its_timeout_and_go_on(tmp_path, plugin):
    """``hang`` is stopped inside its worker (SIGALRM); ``hang-hard`` blocks it and is killed with its
    worker, which is replaced: the ``st`` cells after it still run."""
    cfg = config(tmp_path / "out", problems=(ProblemSpec(arch="2-2-2-1", data_points=3),),
                 estimators=("hang", "hang-hard", "st"), seeds=(0,), plugins=(str(plugin),),
                 executor="processes:2", cell_timeout=3.0)  # far above an st cell, even when busy
    res = runner.run(cfg)
    f = res.failures.set_index("estimator")
    assert set(f.index) == {"hang", "hang-hard"} and set(f["stage"]) == {"timeout"}, f
    assert "time limit of 3 s" in f.loc["hang", "error"]
    assert "did not stop; its worker process was killed and replaced" in f.loc["hang-hard", "error"]
    assert set(res.metrics["estimator"]) == {"st"}


def test_a_keyboard_interrupt_raised_in_a_worker_is_that_cells_failure(tmp_path, plugin):
    """A worker ignores Ctrl-C (the manager stops the workers), so a KeyboardInterrupt there was
    raised by the estimator: it aborted the whole run with the worker's traceback; it is now that
    cell's failure and the others finish."""
    cfg = config(tmp_path / "out", problems=(ProblemSpec(arch="2-2-2-1", data_points=3),),
                 estimators=("interrupts", "st"), seeds=(0,), plugins=(str(plugin),),
                 executor="processes:2")
    res = runner.run(cfg)
    f = res.failures
    assert list(f["estimator"]) == ["interrupts"] and list(f["stage"]) == ["estimate"], f
    assert f["error"].item().startswith("KeyboardInterrupt: raised by the plugin (raised by the "
                                        "estimator in a worker process")
    assert set(res.metrics["estimator"]) == {"st"} and res.manifest["status"] == "complete"


def test_processes_retry_a_crashed_worker_once_then_record_it(tmp_path, plugin):
    cfg = config(tmp_path / "out", problems=(ProblemSpec(arch="2-2-2-1", data_points=3),),
                 estimators=("crash", "st"), seeds=(0,), plugins=(str(plugin),),
                 executor="processes:2")
    res = runner.run(cfg)
    attempts = (plugin.parent / "marks" / "crash.attempts").read_text().split()
    assert len(attempts) == 2 and attempts[0] != attempts[1]  # retried once, in a fresh worker
    f = res.failures
    assert list(f["estimator"]) == ["crash"] and list(f["stage"]) == ["worker"], f
    assert "died 2 times" in f["error"].item() and "exited with status 1" in f["error"].item()
    assert set(res.metrics["estimator"]) == {"st"}


def test_processes_retry_a_worker_killed_mid_cell(tmp_path, plugin):
    cfg = config(tmp_path / "out", problems=(ProblemSpec(arch="2-2-2-1", data_points=3),),
                 estimators=("slow-once", "st"), seeds=(0,), plugins=(str(plugin),),
                 executor="processes:2")
    marks = plugin.parent / "marks"
    killer = kill_when_written(marks / "slow.pid")
    res = runner.run(cfg)
    killer.join(1)
    assert (marks / "slow.retried").read_text() != (marks / "slow.pid").read_text()
    assert res.failures.empty, res.failures
    assert set(res.metrics["estimator"]) == {"slow-once", "st"}


UNGUARDED = textwrap.dedent("""
    # no `if __name__ == "__main__":` guard: each worker process imports this file and runs it
    from sbn_bench import runner
    from sbn_bench.config import ProblemSpec, RunConfig, ThroughputConfig
    runner.run(RunConfig(problems=(ProblemSpec(arch="2-2-1", data_points=3),), estimators=("st",),
                         samples=20, M=(1,), out={out!r}, executor="processes:2",
                         throughput=ThroughputConfig(enabled=False)))
    print("RETURNED")
""")


def test_workers_that_die_as_they_start_stop_the_run_with_the_reason(tmp_path):
    """A script without a main guard: every worker dies as it imports the script. The cells are not
    charged with those deaths (they would be recorded as the estimator's); after STARTUP_DEATHS in
    a row the run stops, naming the guard, instead of starting workers for ever."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED.format(out=str(tmp_path / "out")))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert p.returncode == 1 and "RETURNED" not in p.stdout, (p.stdout, p.stderr[-2000:])
    last = p.stderr.strip().splitlines()[-1]
    assert "worker processes die as they start (3 in a row" in last, last
    assert 'if __name__ == "__main__":' in last and "executor='serial'" in last
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["status"] == "incomplete" and man["cells"]["failed"] == 0, man["cells"]


def test_ctrl_c_stops_the_worker_processes_and_keeps_the_finished_cells(tmp_path):
    ex = ProcessExecutor(2)
    pids: list[int] = []

    def interrupt(cell):
        pids.extend(w.process.pid for w in ex._pool)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(config(tmp_path / "out"), executor=ex, on_cell_done=interrupt)
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["status"] == "interrupted" and len(pd.read_csv(tmp_path / "out" / "metrics.csv")) > 0
    assert len(pids) == 2 and not ex._pool
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        time.sleep(0.05)
    assert not alive, f"worker processes {alive} outlived the run"


def _forkserver_of(pid: int) -> int | None:
    """The PID of the forkserver that process ``pid`` started, if any (Linux ``/proc``)."""
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and \
                    b"forkserver" in (d / "cmdline").read_bytes():
                return int(d.name)
        except (ValueError, OSError, IndexError):
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("moment", ["forkserver", "manifest"])
def test_ctrl_c_while_the_workers_start_stops_the_run_without_a_traceback(tmp_path, moment):
    """The terminal's Ctrl-C reaches the whole process group, the forkserver included, which spends
    its first seconds importing torch: it used to print a KeyboardInterrupt traceback of that
    import beneath the run's own message ("forkserver": sent 0.2 s after the forkserver exists).
    And a Ctrl-C as the workers are being started must stop the run, never be lost ("manifest":
    sent the moment the run's manifest exists; an attempt to hold SIGINT while the forkserver
    started lost it in a process with several threads)."""
    out = tmp_path / "out"
    code = "import sys; from sbn_bench.cli import main; main(sys.argv[1:])"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "run", "--arch", "2-2-1", "--data-points", "3", "--samples",
         "8", "--M", "1,2", "--estimators", "st,psa", "--seeds", "0,1", "--no-throughput",
         "--no-report", "--quiet", "--executor", "processes:2", "--out", str(out)],
        start_new_session=True, stderr=subprocess.PIPE, text=True, env={**os.environ, "CI": "1"})
    deadline = time.monotonic() + 120
    ready = False
    while not ready and proc.poll() is None and time.monotonic() < deadline:
        ready = (out / "manifest.json").is_file() if moment == "manifest" else \
            _forkserver_of(proc.pid) is not None
        time.sleep(0.005)
    assert ready, f"the run ended before its {moment} appeared"
    if moment == "forkserver":
        time.sleep(0.2)  # inside the forkserver's import of torch (about 2 s)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    assert "Interrupted" in err, err
    if moment == "forkserver":
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Stop(Exception):
    pass


def _stopped_after(n: int):
    done = []

    def hook(cell):
        done.append(cell)
        if len(done) == n:
            raise Stop

    return hook


def test_resume_serial_then_processes(tmp_path, serial_run):
    out = tmp_path / "run"
    with pytest.raises(Stop):
        runner.run(config(out), on_cell_done=_stopped_after(4))
    res = runner.run(config(out, resume=True, executor="processes:2"))
    assert res.cells_skipped == 4 and res.cells_run == 8
    same_results(serial_run, out)


# --------------------------------------------------------------------------------------------
# dask


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster over loopback shared by this module's tests: 2 workers, one thread each,
    configured as the executor's own local cluster (a cell retried once when its worker dies)."""
    with dask.config.set(dask_executor.LOCAL_CONFIG):
        c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                     silence_logs=logging.CRITICAL)
    yield c
    c.close(timeout=30)


def test_dask_local_cluster_gives_byte_identical_metrics_to_serial(tmp_path, serial_run):
    out = tmp_path / "dask"
    res = runner.run(config(out, executor="dask:2"))
    assert res.cells_run == 12
    same_results(serial_run, out)


@pytest.mark.slow
def test_dask_retries_a_worker_killed_mid_cell(tmp_path, plugin, cluster):
    cfg = config(tmp_path / "out", problems=(ProblemSpec(arch="2-2-2-1", data_points=3),),
                 estimators=("slow-once", "st"), seeds=(0,), plugins=(str(plugin),),
                 executor=f"dask:{cluster.scheduler_address}")
    marks = plugin.parent / "marks"
    killer = kill_when_written(marks / "slow.pid")
    res = runner.run(cfg)
    killer.join(1)
    assert (marks / "slow.retried").read_text() != (marks / "slow.pid").read_text()
    assert res.failures.empty, res.failures
    assert set(res.metrics["estimator"]) == {"slow-once", "st"}


@pytest.mark.slow
def test_dask_records_a_cell_whose_worker_dies_twice_also_alone_and_spares_its_bystander(
        tmp_path, plugin):
    # one single-threaded worker, so that the st cell waits on it behind the crash cell: the
    # scheduler counts both deaths against both tasks and fails both with KilledWorker (as the
    # shared two-worker cluster did at random when both went to one worker). The st cell must be
    # cleared by running alone; the crash cell, alone too, kills its worker twice more
    with dask.config.set(dask_executor.LOCAL_CONFIG):
        own = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                       silence_logs=logging.CRITICAL)
    try:
        cfg = config(tmp_path / "out", problems=(ProblemSpec(arch="2-2-2-1", data_points=3),),
                     estimators=("crash", "st"), seeds=(0,), plugins=(str(plugin),),
                     executor=f"dask:{own.scheduler_address}")
        res = runner.run(cfg)
    finally:
        own.close(timeout=30)
    assert len((plugin.parent / "marks" / "crash.attempts").read_text().split()) == 4
    f = res.failures
    assert list(f["estimator"]) == ["crash"] and list(f["stage"]) == ["worker"], f
    assert re.search(r"died 2 times .*among other cells, then 2 times .*alone", f["error"].item())
    assert set(res.metrics["estimator"]) == {"st"}


@pytest.mark.slow
def test_dask_cell_past_its_timeout_is_recorded_and_its_worker_restarted(tmp_path, plugin):
    # the limit is far above an st cell even on a loaded machine (5 s was not, at a load of 8); a
    # local cluster of its own (dask:2): on the module's shared cluster, whose workers earlier tests
    # killed, full test runs hung here waiting for workers that did not come back
    cfg = config(tmp_path / "out", problems=(ProblemSpec(arch="2-2-2-1", data_points=3),),
                 estimators=("hang", "st"), seeds=(0, 1), plugins=(str(plugin),),
                 executor="dask:2", cell_timeout=12.0)
    res = runner.run(cfg)
    f = res.failures
    assert set(f["estimator"]) == {"hang"} and set(f["stage"]) == {"timeout"}, list(f["error"])
    assert f["error"].str.contains("was restarted").all()
    assert len(res.metrics[res.metrics["estimator"] == "st"]["seed"].unique()) == 2


@pytest.mark.slow
def test_a_cluster_left_without_workers_stops_the_run_with_an_error_and_a_rerun_resumes(
        tmp_path, plugin, monkeypatch):
    # the scheduler keeps tasks forever when no worker is left: the run must not wait forever
    monkeypatch.setattr(dask_executor, "NO_WORKERS_TIMEOUT_S", 2.0)
    with dask.config.set(dask_executor.LOCAL_CONFIG):
        own = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                       silence_logs=logging.CRITICAL)
    marks = plugin.parent / "marks"
    problems = (ProblemSpec(arch="2-2-2-1", data_points=3),)

    def scale_down_when_sleeping() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (marks / "slow.pid").exists():
            time.sleep(0.05)
        own.scale(0)  # every worker leaves for good

    thread = threading.Thread(target=scale_down_when_sleeping, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        with pytest.raises(RunError, match=r"no worker for 2 s while \d+ cell\(s\) waited.*rerun"):
            runner.run(config(tmp_path / "out", problems=problems, estimators=("slow-once", "st"),
                              seeds=(0,), plugins=(str(plugin),),
                              executor=f"dask:{own.scheduler_address}"))
        assert time.monotonic() - start < 90
    finally:
        thread.join(5)
        own.close(timeout=30)
    res = runner.run(config(tmp_path / "out", problems=problems, estimators=("slow-once", "st"),
                            seeds=(0,), plugins=(str(plugin),), resume=True))
    assert res.failures.empty and set(res.metrics["estimator"]) == {"slow-once", "st"}


@pytest.mark.slow
def test_resume_processes_then_dask(tmp_path, serial_run, cluster):
    out = tmp_path / "run"
    with pytest.raises(Stop):
        runner.run(config(out, executor="processes:2"), on_cell_done=_stopped_after(5))
    res = runner.run(config(out, resume=True, executor=f"dask:{cluster.scheduler_address}"))
    assert res.cells_skipped == 5 and res.cells_run == 7
    same_results(serial_run, out)


@pytest.mark.slow
def test_ctrl_c_closes_the_local_cluster(tmp_path):
    ex = executors.make_executor("dask:2")
    cluster_ = ex.cluster
    with pytest.raises(KeyboardInterrupt):
        runner.run(config(tmp_path / "out"), executor=ex,
                   on_cell_done=lambda cell: (_ for _ in ()).throw(KeyboardInterrupt))
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "interrupted"
    assert ex.cluster is None and ex.client.status == "closed"
    assert cluster_.status.name == "closed"


# --------------------------------------------------------------------------------------------
# what travels to workers


def test_a_worker_rebuilds_plugin_estimators_from_their_text_without_the_file(tmp_path, plugin):
    source = PluginSource(str(tmp_path / "gone" / "misbehaving.py"), plugin.read_text())
    est = rebuild(Recipe("slow-once", "1", (source,)))
    assert est.name == "slow-once"
    assert rebuild(Recipe("slow-once", "1", (source,))) is est  # cached per worker


def test_a_worker_with_other_versions_records_the_cell_as_failed(tmp_path):
    cfg = config(tmp_path / "out")
    problem = cfg.problems[0].base_problem()
    cell = Cell("metrics", problem.name, "init", "st", 0)
    ref = exact_reference(problem, cfg.max_exact_bytes)
    res = measure_shipped(cell, problem, ref, cfg, Recipe("st", "1", (), sbn_bench="0.0.0"))
    assert res.failed and res.rows[0]["stage"] == "worker"
    assert "sbn-bench 0.0.0" in res.rows[0]["error"]
    res = measure_shipped(cell, problem, ref, cfg, Recipe("st", "99", ()))
    assert res.failed and "version '1' on this worker, '99'" in res.rows[0]["error"]
    ok = measure_shipped(cell, problem, ref, cfg, Recipe("st", "1", ()))
    assert not ok.failed and ok.seconds > 0
    from sbn_bench.estimators import load_registry

    direct = runner.measure_cell(cell, CellContext(problem, load_registry().create("st"), ref, cfg))
    assert direct.rows == ok.rows


# --------------------------------------------------------------------------------------------
# bad input, refused before any work


@pytest.mark.parametrize("spec, words", [
    ("threads", "is unknown; expected one of auto, serial, processes[:N], dask[:ADDRESS|:N]"),
    ("processes:0", "N='0' must be a number of workers in 1..1024"),
    ("processes:two", "N='two' must be a number of workers in 1..1024"),
    ("processes:5000", "N='5000' must be a number of workers in 1..1024"),
    ("serial:2", "serial takes no argument"),
    ("auto:2", "auto takes no argument"),
    ("dask:tcp://host:99999", "has port 99999, outside 1..65535"),
    ("dask:tcp://", "is not a scheduler address"),
    ("dask:2:3", "has host '2', neither an IPv4 address nor a name"),
    ("dask:tcp://10.0.0.256:8786", "has host '10.0.0.256', neither"),
    ("dask:01.2.3.4:8786", "has host '01.2.3.4', neither"),  # octal to a resolver: ambiguous
    ("dask:1.2.3:8786", "has host '1.2.3', neither"),
    ("dask:[::1::2]:8786", "has host '[::1::2]', not an IPv6 address"),
    ("dask:[:::]:8786", "has host '[:::]', not an IPv6 address"),
])
def test_bad_executor_specs_are_refused_before_any_work(tmp_path, spec, words):
    with pytest.raises(RunError, match="argument executor=") as e:
        runner.run(config(tmp_path / "out", executor=spec))
    assert words in str(e.value) and e.value.argument == "executor" and e.value.value == spec
    # the message after its argument, for the command line's own naming of the option
    assert str(e.value) == f"argument executor={spec!r}{e.value.detail}" and words in e.value.detail
    assert not (tmp_path / "out").exists()


def test_executor_specs_parse():
    assert executors.parse_executor("processes:4")[1] == {"workers": 4}
    assert executors.parse_executor("dask")[1] == {"address": None}
    assert executors.parse_executor("dask:3")[1] == {"address": None, "workers": 3}
    assert executors.parse_executor("dask:10.0.0.5:8786")[1] == {"address": "tcp://10.0.0.5:8786"}
    assert executors.parse_executor("dask:tls://sched:8786")[1] == {"address": "tls://sched:8786"}
    assert executors.parse_executor("dask:[::1]:8786")[1] == {"address": "tcp://[::1]:8786"}
    assert executors.parse_executor("dask:tcp://[fe80::1:2]:8786")[1] == {
        "address": "tcp://[fe80::1:2]:8786"}
    assert executors.parse_executor("dask:0.0.0.0:1")[1] == {"address": "tcp://0.0.0.0:1"}
    for host in ("[::ffff:1.2.3.4]", "[fe80::1%eth0]"):  # IPv4-mapped, and with a zone
        assert executors.parse_executor(f"dask:{host}:8786")[1] == {"address": f"tcp://{host}:8786"}
    assert executors.parse_executor("dask:node7.cluster:8786")[1] == {"address": "tcp://node7.cluster:8786"}


def test_toml_executor_and_threads(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('executor = "processes:4"\nthreads = 2\n[[problem]]\narch = "2-2-1"\n')
    cfg = load_config(f)
    assert cfg.executor == "processes:4" and cfg.threads == 2


def test_dask_without_the_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if Dask were not installed
    with pytest.raises(RunError, match=r'pip install "sbn-bench\[dask\]"'):
        runner.run(config(tmp_path / "out", executor="dask"))
    assert not (tmp_path / "out").exists()
    r = CliRunner().invoke(main, ["run", "--arch", "2-2-1", "--executor", "dask", "--out",
                                  str(tmp_path / "cli")])
    assert r.exit_code == 2  # the value of --executor refused: a usage error of that option
    lines = [line for line in r.output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and lines[0].startswith("Error: Invalid value for '--executor': 'dask' "
                                                   "needs Dask"), r.output


def _refusing_address() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return f"tcp://127.0.0.1:{port}"


@pytest.mark.slow
def test_a_scheduler_that_refuses_connection_is_one_line_within_the_timeout(tmp_path):
    address = _refusing_address()
    with pytest.raises(RunError, match=f"cannot connect to the Dask scheduler at {address} within 2 s"):
        executors.make_executor(f"dask:{address}", connect_timeout=2.0)
    r = CliRunner().invoke(main, ["run", "--arch", "2-2-1", "--executor", f"dask:{address}",
                                  "--out", str(tmp_path / "cli")])
    assert r.exit_code == 1, r.output  # the cluster failed, not the value: not a usage error
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to the Dask scheduler" in lines[0], r.output
    assert not (tmp_path / "cli").exists()


@contextlib.contextmanager
def _fake_server(reply: bytes | None):
    """A TCP server on 127.0.0.1 that accepts connections and sends ``reply`` (None: nothing)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            if reply is not None:
                with contextlib.suppress(OSError):
                    c.sendall(reply)
    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        srv.close()
        for c in conns:
            c.close()


@pytest.mark.slow
def test_a_server_that_never_answers_or_is_no_scheduler_is_one_line(tmp_path):
    """A port that accepts the connection and stays silent hung the run forever; a web server
    there gave an "out of memory" error about exabytes, and a traceback from Client.__del__."""
    t0 = time.monotonic()
    with _fake_server(None) as address:
        with pytest.raises(RunError, match=f"cannot connect to the Dask scheduler at {address} "
                                           "within 1 s .*accepted the connection and said nothing"):
            executors.make_executor(f"dask:{address}", connect_timeout=1.0)
    assert time.monotonic() - t0 < 30
    with _fake_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4) as address:
        r = CliRunner().invoke(main, ["run", "--arch", "2-2-1", "--executor", f"dask:{address}",
                                      "--out", str(tmp_path / "cli")])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and f"the server at {address} did not answer as a Dask scheduler" \
        in lines[0], r.output
    assert not (tmp_path / "cli").exists()


# --------------------------------------------------------------------------------------------
# progress


def test_eta_is_the_mean_cell_time_times_the_cells_left_over_the_workers():
    assert runner.eta_seconds([], 10, 2) is None
    assert runner.eta_seconds([2.0, 4.0], 10, 2) == 15.0
    assert runner.eta_seconds([2.0, 4.0], 1, 4) == 3.0  # one cell left: one cell's time
    assert runner.eta_seconds([3.0], 0, 2) == 0.0
    # the throughput cells still to run, each alone, come on top (their rounds' least time)
    assert runner.eta_seconds([2.0, 4.0], 10, 2, alone=7.0) == 22.0
    assert runner.eta_seconds([], 0, 2, alone=7.0) == 7.0  # statistics done (or all skipped)
    cfg = RunConfig(problems=(ProblemSpec(arch="2-2-1"),), throughput=ThroughputConfig(rounds=7))
    assert runner.throughput_seconds(cfg, 11) == pytest.approx(1.2 * 11 * 7 * 0.2)


def test_progress_gets_an_eta_after_the_first_measured_cell(tmp_path):
    seen = []
    runner.run(config(tmp_path / "out", executor="processes:2"),
               progress=lambda done, total, cell, status, eta: seen.append((done, total, eta)))
    assert [d for d, _, _ in seen] == list(range(1, 13)) and {t for _, t, _ in seen} == {12}
    assert all(eta is not None and eta >= 0 for _, _, eta in seen) and seen[-1][2] == 0.0


def test_the_eta_counts_the_throughput_cells_still_to_run(tmp_path):
    """Throughput cells run last, each alone: once the statistics are done the time left is
    theirs (it said 0 s while a throughput cell took most of a quick run)."""
    cfg = config(tmp_path / "out", executor="serial",
                 throughput=ThroughputConfig(warmup=0, rounds=1, max_rounds=1, min_round_s=0.01,
                                             batch=4))
    seen = []
    runner.run(cfg, progress=lambda done, total, cell, status, eta: seen.append((cell.kind, eta)))
    assert [k for k, _ in seen[-2:]] == ["throughput", "throughput"]  # one per network shape
    one = runner.throughput_seconds(cfg, 3)  # psa, st, reinforce on each shape
    assert [eta for _, eta in seen[-3:]] == pytest.approx([2 * one, one, 0.0])


def test_progress_bar_shows_the_eta_in_words():
    import importlib

    cli_run = importlib.import_module("sbn_bench.cli.run")
    assert [cli_run._duration(s) for s in (4.4, 65, 7322)] == ["4 s", "1 min 05 s", "2 h 02 min"]


# --------------------------------------------------------------------------------------------
# throughput cells on workers (one per network shape, its estimators interleaved)

QUICK_TP = ThroughputConfig(warmup=0, rounds=2, max_rounds=2, min_round_s=0.01, max_seconds=1.0,
                            batch=4)


@pytest.mark.parametrize("where", ["processes", "dask"])
def test_throughput_groups_run_on_workers_with_the_runs_threads(tmp_path, plugin, cluster, where):
    """A throughput cell's whole group is rebuilt on the worker (plugin estimators from their
    text), measured with the run's ``threads``, and a member that raises comes back as its own
    failure while the others are measured."""
    executor = "processes:2" if where == "processes" else f"dask:{cluster.scheduler_address}"
    res = runner.run(config(tmp_path / "out", problems=(ProblemSpec(arch="2-2-2-1", data_points=3),),
                            estimators=("psa", "st", "raises"), seeds=(0,), plugins=(str(plugin),),
                            throughput=QUICK_TP, threads=2, executor=executor))
    tp = res.throughput
    assert sorted(tp["estimator"]) == ["psa", "st"] and set(tp["threads"]) == {2}, tp
    assert set(tp["network"]) == {"2-2-2-1/D3/logistic/logistic"}
    f = res.failures.set_index("stage")
    assert set(res.failures["estimator"]) == {"raises"} and set(f.index) == {"throughput", "estimate"}
    assert "raises on purpose" in f.loc["throughput", "error"]
    assert set(res.metrics["estimator"]) == {"psa", "st"}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["device"]["torch_threads"] == 2


def test_a_throughput_cells_recipe_names_its_group():
    from sbn_bench.estimators import load_registry
    from sbn_bench.runner.worker import rebuild_group, recipe_of

    reg = load_registry()
    group = (reg.create("psa"), reg.create("st"))
    cfg = config(Path("unused"))
    recipe = recipe_of(CellContext(cfg.problems[0].base_problem(), None, None, cfg, group=group))
    assert recipe.group == (("psa", group[0].version), ("st", group[1].version))
    assert [e.spec for e in rebuild_group(recipe)] == ["psa", "st"]


# --------------------------------------------------------------------------------------------
# threads


def test_the_thread_count_is_part_of_the_run_and_resume_refuses_another(tmp_path):
    from sbn_bench.storage import RunDirError

    out = tmp_path / "out"
    cfg = config(out, problems=(ProblemSpec(arch="2-2-1", data_points=3),), estimators=("st",),
                 threads=2)
    runner.run(cfg)
    assert json.loads((out / "manifest.json").read_text())["device"]["torch_threads"] == 2
    with pytest.raises(RunDirError, match="device.torch_threads: 2 → 1"):
        runner.run(cfg.with_(threads=1, resume=True, executor="processes:2"))

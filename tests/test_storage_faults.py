"""Faults: a run killed at any point resumes to the results of an uninterrupted run,
and a full disk or read-only folder gives a one-line error with the earlier files intact.

Kills are real ``SIGKILL``s of a child process, at chosen moments: after the 1st, 2nd and 5th
finished cell (from the runner's ``on_cell_done`` hook, so the moment is exact), and in the middle
of writing a part file (after its temporary file is written, before the rename). The resumed run
must give a byte-identical ``metrics.csv`` and ``failures.csv`` (throughput is measured, so this
also checks that no measured time leaks into ``metrics.csv``), with every cell exactly once.

A full disk is simulated by making ``os.replace`` fail with ``ENOSPC`` after some writes; a
read-only folder by ``chmod`` where that binds (not as root, where permissions do not stop writes)
and otherwise by making the temporary-file creation fail with ``EROFS``.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from sbn_bench import runner
from sbn_bench.cli import main
from sbn_bench.config import ProblemSpec, RunConfig, ThroughputConfig
from sbn_bench.storage import RunDirError, WriteError, atomic_write_text

KEY = ["problem", "checkpoint", "estimator", "seed", "layer", "metric", "M"]


def config(out: Path, **kw) -> RunConfig:
    base = dict(problems=(ProblemSpec(arch="2-2-2-1", data_points=3),),
                estimators=("psa", "arm", "tanh"), seeds=(0, 1), samples=48, M=(1, 4),
                throughput=ThroughputConfig(rounds=1, warmup=0, batch=8), out=str(out))
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run (7 cells: one throughput cell for the network, every estimator's
    rounds interleaved, and per estimator two statistics cells)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    res = runner.run(config(out))
    assert res.manifest["status"] == "complete" and res.cells_run == 7
    return out


CHILD = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    from sbn_bench import runner
    from sbn_bench.config import ProblemSpec, RunConfig, ThroughputConfig

    out, when, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = RunConfig(problems=(ProblemSpec(arch="2-2-2-1", data_points=3),),
                    estimators=("psa", "arm", "tanh"), seeds=(0, 1), samples=48, M=(1, 4),
                    throughput=ThroughputConfig(rounds=1, warmup=0, batch=8), out=out)
    done = []

    def after_cell(cell):
        done.append(cell)
        if when == "cell" and len(done) == n:
            os.kill(os.getpid(), signal.SIGKILL)

    if when == "write":  # die inside the n-th part-file write, after the temporary file is written
        real, parts = os.replace, []

        def replace(src, dst):
            if "/cells/" in str(dst):
                parts.append(dst)
                if len(parts) == n:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)

        os.replace = replace
    runner.run(cfg, on_cell_done=after_cell)
    print("finished without being killed")
''')


def _killed_run(out: Path, when: str, n: int) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out), when, str(n)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)


def _assert_same_results(ref: Path, out: Path) -> None:
    for name in ("metrics.csv", "failures.csv"):
        assert (ref / name).read_bytes() == (out / name).read_bytes(), name
    m = pd.read_csv(out / "metrics.csv")
    assert not m.duplicated(KEY).any(), "a cell was written twice"
    assert len(m) == len(pd.read_csv(ref / "metrics.csv"))
    for name in ("throughput.csv", "timed_metrics.csv"):  # measured times: same rows, new values
        a, b = pd.read_csv(ref / name), pd.read_csv(out / name)
        cols = [c for c in ("problem", "checkpoint", "estimator", "seed", "layer", "metric")
                if c in a.columns]
        assert a[cols].equals(b[cols]), name
    parts = sorted(p.name for p in (out / "cells").iterdir())
    assert parts == sorted(p.name for p in (ref / "cells").iterdir()), "stray or missing parts"


@pytest.mark.parametrize("when, n", [pytest.param("cell", 1, marks=pytest.mark.slow), ("cell", 2),
                                     pytest.param("cell", 5, marks=pytest.mark.slow),
                                     pytest.param("write", 4, marks=pytest.mark.slow)])
def test_sigkill_then_resume_gives_identical_results(tmp_path, reference, when, n):
    out = tmp_path / "run"
    _killed_run(out, when, n)
    finished = len([p for p in (out / "cells").iterdir() if not p.name.startswith(".")
                    and not p.name.endswith(".timed.csv")])
    if when == "cell":
        assert finished == n, sorted(p.name for p in (out / "cells").iterdir())
    else:  # killed inside the 4th part write
        assert any(p.name.endswith(".tmp") for p in (out / "cells").iterdir())
    res = runner.run(config(out, resume=True))
    assert res.cells_skipped == finished and res.cells_run == 7 - finished
    assert res.manifest["status"] == "complete"
    assert [t.removesuffix("+00:00")[:4] for t in res.manifest["resumed"]]  # the resume is logged
    _assert_same_results(reference, out)


@pytest.mark.slow
def test_killed_cli_run_resumes_from_the_cli(tmp_path, reference):
    """The same through ``sbn-bench run`` in a child process, killed while it works (polling)."""
    args = ["run", "--arch", "2-2-2-1", "--data-points", "3", "--samples", "48", "--M", "1,4",
            "--estimators", "psa,arm,tanh", "--seeds", "0,1", "--rounds", "1", "--warmup", "0",
            "--throughput-batch", "8", "--no-report", "--quiet"]
    full = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "full")])
    assert full.exit_code == 0, full.output
    assert (tmp_path / "full" / "metrics.csv").read_bytes() == \
        (reference / "metrics.csv").read_bytes()
    out = tmp_path / "killed"
    code = textwrap.dedent("""
        import sys, time
        import sbn_bench.runner.cells as r
        real = r.stats_cell_rows
        def slow(*a, **k):  # a slow estimator, so that the kill lands between cells
            time.sleep(0.4)
            return real(*a, **k)
        r.stats_cell_rows = slow
        from sbn_bench.cli import main
        main(sys.argv[1:])
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, *args, "--out", str(out)])
    try:
        import time

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((out / "cells").glob("metrics-*.metrics.csv"))) >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    res = CliRunner().invoke(main, [*args, "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    _assert_same_results(reference, out)


# --------------------------------------------------------------------------------------------
# full disk, read-only folder


def _enospc_after(monkeypatch, n_ok: int) -> list[str]:
    """Let ``n_ok`` renames succeed, then fail every one with ENOSPC (a full disk)."""
    real, done = os.replace, []

    def replace(src, dst):
        if len(done) >= n_ok:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done.append(str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return done


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    atomic_write_text(target, "old,complete\n")
    _enospc_after(monkeypatch, 0)
    with pytest.raises(WriteError) as e:
        atomic_write_text(target, "new")
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    msg = str(e.value)
    assert msg.startswith(f"cannot write {str(target)!r}: No space left on device [ENOSPC]")
    assert "intact" in msg and "--resume" in msg and "\n" not in msg
    assert target.read_text() == "old,complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # the temporary file is gone


@pytest.mark.parametrize("n_ok", [1, pytest.param(6, marks=pytest.mark.slow)])
def test_full_disk_during_a_run_is_one_line_and_resumable(tmp_path, monkeypatch, reference, n_ok):
    out = tmp_path / "run"
    args = ["run", "--arch", "2-2-2-1", "--data-points", "3", "--samples", "48", "--M", "1,4",
            "--estimators", "psa,arm,tanh", "--seeds", "0,1", "--rounds", "1", "--warmup", "0",
            "--throughput-batch", "8", "--no-report", "--quiet", "--out", str(out)]
    done = _enospc_after(monkeypatch, n_ok)  # the manifest, then n_ok − 1 part files
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, res.output
    assert res.output.count("\n") == 1 and res.output.startswith("Error: cannot write "), res.output
    assert "No space left on device [ENOSPC]" in res.output and "Traceback" not in res.output
    # what was written before is complete and equal to the uninterrupted run's parts
    parts = [Path(p) for p in done if "/cells/" in p]
    assert len(parts) == n_ok - 1 and all(p.is_file() for p in parts)
    for p in parts:
        if p.name.endswith(".metrics.csv"):  # (throughput and timed parts hold measured times)
            assert p.read_bytes() == (reference / "cells" / p.name).read_bytes()
    assert not [p for p in (out / "cells").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()  # space is freed
    res = CliRunner().invoke(main, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    _assert_same_results(reference, out)


@pytest.mark.parametrize("again", [[], ["--resume"]])
def test_a_full_disk_at_the_first_manifest_leaves_a_folder_the_same_command_takes(
        tmp_path, monkeypatch, reference, again):
    """The first manifest's write failing (a full disk) or killed left ``.lock``, an empty
    ``cells/`` (and the write's temporary file): the same command, with or without --resume, then
    refused the folder for good ("it holds other files, not a run"). Nothing of a run is there:
    it is taken as empty."""
    out = tmp_path / "run"
    args = ["run", "--arch", "2-2-2-1", "--data-points", "3", "--samples", "48", "--M", "1,4",
            "--estimators", "psa,arm,tanh", "--seeds", "0,1", "--rounds", "1", "--warmup", "0",
            "--throughput-batch", "8", "--no-report", "--quiet", "--out", str(out)]
    _enospc_after(monkeypatch, 0)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "No space left on device [ENOSPC]" in res.output, res.output
    assert sorted(p.name for p in out.iterdir()) == [".lock", "cells"]
    (out / ".manifest.json.k1ll3d.tmp").write_text("{\"sta")  # as a kill in the write leaves it
    monkeypatch.undo()  # space is freed
    res = CliRunner().invoke(main, [*args, *again])
    assert res.exit_code == 0, res.output
    _assert_same_results(reference, out)
    assert not (out / ".manifest.json.k1ll3d.tmp").exists()
    # a folder with anything else in it is still refused
    other = tmp_path / "other"
    (other / "cells").mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    res = CliRunner().invoke(main, [*args[:-1], str(other), *again])
    assert res.exit_code == 1 and "choose another output folder" in res.output, res.output


def _read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` unwritable: chmod where it binds, else fail temporary files with EROFS."""
    if os.geteuid() != 0:
        for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
            d.chmod(0o555)
        return
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)

    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if self.resolve().is_relative_to(folder.resolve()) and not self.exists():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def test_read_only_output_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    out = ro / "run"
    try:
        res = CliRunner().invoke(main, ["run", "--arch", "2-2-1", "--samples", "8",
                                        "--no-throughput", "--no-report", "--out", str(out)])
        with pytest.raises(RunDirError, match="cannot write in output folder"):
            runner.run(config(out))
    finally:
        ro.chmod(0o755)
    assert res.exit_code == 1, res.output
    assert res.output.count("\n") == 1 and "Traceback" not in res.output, res.output
    assert res.output.startswith(f"Error: cannot write in output folder {str(out)!r}: ")
    assert ("Read-only file system" in res.output) or ("Permission denied" in res.output)
    assert not out.exists()


def test_an_unsearchable_output_or_report_folder_is_one_line(tmp_path, monkeypatch):
    """A folder the process may not search (EACCES on stat, which ``Path.exists`` raises) was a
    traceback in the lock check of the run folder and in the report's --out check."""
    from sbn_bench import storage
    from sbn_bench.reports import write_report

    locked = tmp_path / "locked"
    locked.mkdir()
    real_exists, real_read = Path.exists, Path.read_text

    def exists(self, *a, **k):
        if self.parent == locked or self == locked / storage.LOCK:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_exists(self, *a, **k)

    def read_text(self, *a, **k):
        if self.parent == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_read(self, *a, **k)

    good = tmp_path / "good"
    runner.run(config(good))
    monkeypatch.setattr(Path, "exists", exists)
    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(RunDirError, match="Permission denied"):
        storage.RunStore.open(locked, {}, False)
    # the report's check cannot read the folder's files: the writing names the error
    with pytest.raises(WriteError, match="Permission denied"):
        write_report(good, formats=("md",), out_dir=locked / "sub")


@pytest.mark.slow
def test_folder_turning_read_only_mid_run_keeps_the_finished_cells(tmp_path, monkeypatch,
                                                                   reference):
    out = tmp_path / "run"
    cells = []

    def after(cell):
        cells.append(cell)
        if len(cells) == 3:
            _read_only(monkeypatch, out)

    try:
        with pytest.raises(WriteError) as e:
            runner.run(config(out), on_cell_done=after)
    finally:
        out.chmod(0o755)
        (out / "cells").chmod(0o755)
    assert "cannot write" in str(e.value) and e.value.errno in (errno.EROFS, errno.EACCES)
    monkeypatch.undo()
    written = sorted(p.name for p in (out / "cells").iterdir() if p.name.endswith(".metrics.csv"))
    assert len(written) == 3  # the 3 finished statistics cells (the throughput cell runs last)
    assert all((reference / "cells" / n).read_bytes() == (out / "cells" / n).read_bytes()
               for n in written)
    res = runner.run(config(out, resume=True))
    assert res.cells_skipped == 3
    _assert_same_results(reference, out)


def test_training_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    _enospc_after(monkeypatch, 1)  # the initial checkpoint, then nothing
    res = CliRunner().invoke(main, ["train", "--arch", "2-2-1", "--data-points", "4",
                                    "--batch-size", "2", "--epochs", "2", "--estimator", "st",
                                    "--quiet", "--out", str(tmp_path / "t")])
    assert res.exit_code == 1, res.output
    assert res.output.count("\n") == 1 and "No space left on device" in res.output, res.output
    assert "train_log.csv" in res.output and "train again" in res.output
    assert (tmp_path / "t" / "checkpoint_epoch0.npz").is_file()

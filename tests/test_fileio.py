"""Atomic writes give result files the usual mode (0o666 and not the umask), not mkstemp's 0600."""

from __future__ import annotations

import importlib
import os
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from sbn_bench import runner
from sbn_bench.cli import main
from sbn_bench.config import ProblemSpec, RunConfig, ThroughputConfig
from sbn_bench.fileio import WriteError, atomic_write_bytes
from sbn_bench.problems import random_problem, save_problem
from sbn_bench.reports import write_report
from sbn_bench.train import train

cli_run = importlib.import_module("sbn_bench.cli.run")  # the module (sbn_bench.cli.run is the command)


DATA = Path(__file__).parent / "data"


RUN_A, RUN_B = DATA / "run_a", DATA / "run_b"


def invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def tiny_config(out: Path, **kw) -> RunConfig:
    base = dict(problems=(ProblemSpec(arch="2-2-1", data_points=3),), estimators=("psa",),
                samples=16, M=(1, 4), throughput=ThroughputConfig(enabled=False), out=str(out))
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exact") / "run"
    res = runner.run(tiny_config(out, problems=(ProblemSpec(arch="2-3-1", data_points=5),),
                                 estimators=("exact",), samples=50, M=(1, 10, 50),
                                 throughput=ThroughputConfig(rounds=2, warmup=0)))
    assert res.failures.empty and (res.metrics["value"][res.metrics["metric"] == "rrmse"] == 0).all()
    return out


def _renamed_copy(src: Path, dst: Path, old: str, new: str) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        if f.suffix in (".csv", ".json"):
            f.write_text(f.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return dst


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_written_files_get_the_usual_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)  # a umask that neither 0600 nor 0644 satisfies: expect 0640
    try:
        res = runner.run(tiny_config(tmp_path / "run"))
        write_report(res.out, formats=("md",))
        train(random_problem("2-2-1", 0, data_points=4), "st", epochs=1, batch_size=4,
              out_dir=tmp_path / "train", num_threads=None)
        save_problem(random_problem("2-2-1", 0, data_points=4), tmp_path / "p.npz")
    finally:
        os.umask(old)
    files = [*(tmp_path / "run").rglob("*.csv"), tmp_path / "run" / "manifest.json",
             tmp_path / "run" / "report" / "report.md", *(tmp_path / "train").iterdir(),
             tmp_path / "p.npz"]
    modes = {str(f.relative_to(tmp_path)): oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert len(files) >= 10 and set(modes.values()) == {oct(0o640)}, modes


def test_a_file_in_the_way_of_the_folder_is_named(tmp_path: Path) -> None:
    """A regular file where a folder of the path should be is named (mkdir said 'File exists')."""
    (tmp_path / "afile").write_text("x")
    with pytest.raises(WriteError, match=r"Not a directory: '.*afile' is a file, not a folder"):
        atomic_write_bytes(tmp_path / "afile" / "sub" / "x.npz", b"data")
    with pytest.raises(WriteError, match=r"Not a directory: '.*afile' is a file, not a folder"):
        atomic_write_bytes(tmp_path / "afile" / "x.npz", b"data")  # the folder itself
    assert (tmp_path / "afile").read_text() == "x"
    # a symbolic link to nowhere is named as one (it was called a file)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for target in (tmp_path / "dangling" / "x.npz", tmp_path / "dangling" / "sub" / "x.npz"):
        with pytest.raises(WriteError, match=r"'.*dangling' is a symbolic link to '.*nowhere', "
                                             r"which does not exist"):
            atomic_write_bytes(target, b"data")
    assert not (tmp_path / "nowhere").exists()


def test_folder_lock_leaves_nothing_behind_when_its_block_raises(tmp_path: Path) -> None:
    """A refused call (the block raises) removes the lock file and the folder it made; a call
    that ends well keeps the lock file, as a run's folder does; a held lock calls ``busy``."""
    from sbn_bench.fileio import LOCK, folder_lock, try_lock

    class Busy(Exception):
        pass

    fresh = tmp_path / "a" / "b"
    with pytest.raises(ValueError), folder_lock(fresh, Busy):
        assert (fresh / LOCK).is_file()
        raise ValueError
    assert not fresh.exists() and (tmp_path / "a").is_dir()  # only the folder it made (b)
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("x")
    with pytest.raises(ValueError), folder_lock(kept, Busy):
        raise ValueError
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    with folder_lock(fresh, Busy):
        fd = try_lock(fresh)  # another open file description: refused while held
        assert fd is None
        with pytest.raises(Busy), folder_lock(fresh, Busy):
            pass
    assert (fresh / LOCK).is_file()
    fd = try_lock(fresh)  # released
    assert fd is not None
    os.close(fd)
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(WriteError), folder_lock(blocked / "sub", Busy,
                                                lambda e: WriteError(blocked, e, "hint")):
        pass


def test_folder_lock_keeps_its_file_once_written_and_cleans_up_after_an_interrupt(
        tmp_path: Path) -> None:
    """Ctrl-C before anything is written leaves nothing; a block that wrote a file and then
    failed (a training that diverged) keeps the lock file, as a run's folder does."""
    from sbn_bench.fileio import LOCK, folder_lock

    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt), folder_lock(fresh, RuntimeError):
        raise KeyboardInterrupt
    assert not fresh.exists()
    wrote = tmp_path / "wrote"
    with pytest.raises(ValueError), folder_lock(wrote, RuntimeError):
        (wrote / "train_log.csv").write_text("epoch\n")
        raise ValueError
    assert sorted(p.name for p in wrote.iterdir()) == [LOCK, "train_log.csv"]


def test_a_lock_taken_on_a_removed_lock_file_is_taken_again(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder that removes its lock file (a refused call) while another process has it open
    but not yet locked: that process's flock then succeeds on a file no one else can see, and a
    third process would lock a new file beside it. try_lock checks that the file it locked is
    the one at the path, and locks again when it is not."""
    from sbn_bench.fileio import LOCK, try_lock

    real_open = os.open
    removed: list[str] = []

    def racing_open(path, *args):
        fd = real_open(path, *args)
        if not removed and str(path).endswith(LOCK):  # the holder removes it just after this open
            removed.append(str(path))
            os.unlink(path)
        return fd

    monkeypatch.setattr(os, "open", racing_open)
    fd = try_lock(tmp_path)
    monkeypatch.undo()
    assert fd is not None and removed == [str(tmp_path / LOCK)]
    try:
        assert os.fstat(fd).st_ino == os.stat(tmp_path / LOCK).st_ino  # the visible file
        assert try_lock(tmp_path) is None  # and so another process is kept out
    finally:
        os.close(fd)

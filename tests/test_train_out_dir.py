"""sbn-bench train refuses an output folder that holds a previous training, unless asked to overwrite it."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from sbn_bench import runner
from sbn_bench.cli import main
from sbn_bench.config import ProblemSpec, RunConfig, ThroughputConfig
from sbn_bench.problems import random_problem
from sbn_bench.train import TrainArgumentError, train

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


def test_train_refuses_a_folder_with_a_previous_training(tmp_path: Path) -> None:
    p = random_problem("2-2-1", 0, data_points=4)
    out = tmp_path / "t"
    train(p, "st", epochs=3, batch_size=4, checkpoints=(1, 2), out_dir=out, num_threads=None)
    assert (out / "checkpoint_epoch2.npz").is_file()
    with pytest.raises(TrainArgumentError, match=r"already holds the outputs of a training "
                                                 r"\(checkpoint_epoch0\.npz, checkpoint_epoch1\.npz, "
                                                 r"checkpoint_epoch2\.npz, checkpoint_epoch3\.npz, "
                                                 r"train_log\.csv, train_manifest\.json\).*--out") as e:
        train(p, "st", epochs=1, batch_size=4, out_dir=out, num_threads=None)
    assert e.value.argument == "out_dir"
    res = train(p, "st", epochs=1, batch_size=4, out_dir=out, num_threads=None, overwrite=True)
    left = sorted(f.name for f in out.iterdir() if f.name != ".lock")  # the folder's lock file
    assert left == ["checkpoint_epoch0.npz", "checkpoint_epoch1.npz", "loss_curve.png",
                    "train_log.csv", "train_manifest.json"], left  # no stale epoch 2 and 3
    assert sorted(res.checkpoints) == [0, 1]
    # a folder with other files only is fine
    other = tmp_path / "o"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    train(p, "st", epochs=1, batch_size=4, out_dir=other, num_threads=None)


def test_cli_train_refuses_a_used_out_unless_overwrite(tmp_path: Path) -> None:
    args = ["train", "--arch", "2-2-1", "--data-points", "4", "--estimator", "st", "--epochs", "1",
            "--batch-size", "4", "--out", tmp_path / "t", "-q"]
    assert invoke(args).exit_code == 0
    r = invoke(args)
    assert r.exit_code == 1 and r.output.startswith("Error: --out '"), r.output  # a folder: exit 1
    assert "checkpoint_epoch0.npz" in r.output and "--overwrite" in r.output, r.output
    r = invoke([*args, "--overwrite"])
    assert r.exit_code == 0, r.output


def test_an_endless_number_of_epochs_is_refused(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["train", "--arch", "2-2-1", "--data-points", "3", "--epochs",
                                    str(10**23), "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and "--epochs" in res.output and "at most 1,000,000" in res.output
    assert not (tmp_path / "t").exists()


def test_a_study_and_a_single_training_do_not_share_a_folder(tmp_path: Path) -> None:
    """Both wrote into the other's folder and exited 0; the study's epochs are capped as a single
    training's are (1 000 001 epochs started)."""
    from sbn_bench import train_study as ts

    p = random_problem("2-2-1", 0, data_points=4)
    single = tmp_path / "single"
    train(p, "st", epochs=1, batch_size=4, out_dir=single, num_threads=None)
    with pytest.raises(ts.StudyError, match="holds a single training") as err:
        ts.run_study("digits-vae-exact", out=single, estimators=("st",), seeds=(0,),
                     settings=ts.preset_settings("digits-vae-exact", epochs=1))
    assert err.value.argument == "out"
    study = tmp_path / "study"
    study.mkdir()
    (study / ts.STUDY_NAME).write_text("{}")
    for overwrite in (False, True):
        with pytest.raises(TrainArgumentError, match="holds a training study"):
            train(p, "st", epochs=1, batch_size=4, out_dir=study, num_threads=None,
                  overwrite=overwrite)
    with pytest.raises(TrainArgumentError, match="at most 1,000,000"):
        ts.preset_settings("digits-vae-exact", epochs=10**6 + 1).check()


def test_ctrl_c_in_train_says_what_is_saved_and_exits_130(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """It printed click's bare 'Aborted!' and exited 1, as for bad input."""
    from sbn_bench import train as training
    from sbn_bench import train_study as ts

    def interrupted(*args, **kwargs):
        Path(kwargs["out"]).mkdir(parents=True)
        (Path(kwargs["out"]) / ts.STUDY_NAME).write_text("{}")
        raise KeyboardInterrupt
    monkeypatch.setattr(ts, "run_study", interrupted)
    r = invoke(["train", "--preset", "digits-vae-exact", "--estimators", "st", "--seeds", "0",
                "--out", tmp_path / "s"])
    assert r.exit_code == 130 and \
        f"continue with sbn-bench train --out {tmp_path / 's'} --resume" in r.output, r.output

    def interrupted_single(*args, **kwargs):
        if wrote:
            Path(kwargs["out_dir"]).mkdir(parents=True)
            (Path(kwargs["out_dir"]) / "checkpoint_epoch0.npz").write_bytes(b"")
        raise KeyboardInterrupt
    monkeypatch.setattr(training, "train", interrupted_single)
    for wrote, words in ((True, f"written so far are in {tmp_path / 't1'} (a single training does "
                                "not resume"),
                         (False, "before the training wrote anything: nothing is saved")):
        r = invoke(["train", "--arch", "2-2-1", "--data-points", "12", "--epochs", "1", "--out",
                    tmp_path / f"t{int(wrote)}"])
        assert r.exit_code == 130 and words in r.output, r.output


def test_train_refuses_a_run_folder_and_records_its_plugin(tmp_path: Path) -> None:
    """A finished run's folder took a training's checkpoints and log beside its tables; and a
    single training with --plugin did not record the file (a run's manifest and study.json do)."""
    import hashlib
    import json

    run_dir = tmp_path / "run"
    runner.run(tiny_config(run_dir))
    res = invoke(["train", "--arch", "2-3-1", "--data-points", "12", "--epochs", "1", "--out", run_dir])
    assert res.exit_code == 1 and "holds an sbn-bench run" in res.output, res.output
    assert not list(run_dir.glob("checkpoint_epoch*.npz"))
    plug = Path(__file__).resolve().parents[1] / "examples" / "reinforce_baseline.py"
    out = tmp_path / "tr"
    res = invoke(["train", "--arch", "2-3-1", "--data-points", "12", "--epochs", "1", "--plugin", plug,
                  "--estimator", "reinforce-baseline", "--quiet", "--out", out])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "train_manifest.json").read_text())
    assert manifest["plugins"] == [{"path": str(plug),
                                    "sha256": hashlib.sha256(plug.read_bytes()).hexdigest()}]
    # from Python, a spec may name a plugin's estimator when its file is given
    again = train(random_problem((2, 3, 1), 0, data_points=12), "reinforce-baseline", epochs=1,
                  out_dir=tmp_path / "py", plugins=[plug])
    assert again.manifest["plugins"] == manifest["plugins"]


def test_a_training_study_refuses_a_run_folder_and_a_file(tmp_path: Path) -> None:
    """A study wrote study.json, its reports and cells/*.json into a finished run's folder (beside
    its manifest and cells/*.metrics.csv), and a file as --out gave NotADirectoryError."""
    from sbn_bench.train_study import StudyError, run_study

    run_dir = tmp_path / "run"
    runner.run(tiny_config(run_dir))
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    with pytest.raises(StudyError, match="holds an sbn-bench run"):
        run_study("digits-vae-exact", out=run_dir, estimators=["st"], seeds=[0], executor="serial")
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    (run_dir / "manifest.json").unlink()  # the part files alone mark a run too
    with pytest.raises(StudyError, match="holds an sbn-bench run"):
        run_study("digits-vae-exact", out=run_dir, estimators=["st"], seeds=[0], executor="serial")
    (tmp_path / "f").write_text("x")
    with pytest.raises(StudyError, match="exists and is not a folder"):
        run_study("digits-vae-exact", out=tmp_path / "f", estimators=["st"], seeds=[0], executor="serial")
    res = CliRunner().invoke(main, ["train", "--preset", "digits-vae-exact", "--estimators", "st", "--seeds",
                                    "0", "--executor", "serial", "--out", str(run_dir)])
    assert res.exit_code == 1 and res.output.startswith(f"Error: --out '{run_dir}' holds an sbn-bench run"), \
        res.output


def test_a_folder_in_use_is_refused_by_a_training_and_a_study(tmp_path: Path) -> None:
    """Two trainings (or studies) into one --out both ran and exited 0, leaving checkpoints of
    two problems in one folder; the second is now refused while the first holds the folder's
    lock (exit status 1: a folder, not a value), and nothing is written."""
    import os

    from sbn_bench import train_study as ts
    from sbn_bench.fileio import LOCK, try_lock

    p = random_problem("2-2-1", 0, data_points=4)
    out = tmp_path / "t"
    out.mkdir()
    fd = try_lock(out)  # as a training in another process holds it
    assert fd is not None
    try:
        with pytest.raises(TrainArgumentError, match="in use by another sbn-bench process") as e:
            train(p, "st", epochs=1, batch_size=4, out_dir=out, num_threads=None)
        assert e.value.argument == "out_dir"
        with pytest.raises(ts.StudyError, match="in use by another sbn-bench process"):
            ts.run_study("digits-vae-exact", out=out, estimators=("st",), seeds=(0,),
                         settings=ts.preset_settings("digits-vae-exact", epochs=1))
        r = invoke(["train", "--arch", "2-2-1", "--data-points", "4", "--estimator", "st",
                    "--epochs", "1", "--batch-size", "4", "--out", out, "-q"])
        assert r.exit_code == 1 and "in use by another sbn-bench process" in r.output, r.output
        assert [f.name for f in out.iterdir()] == [LOCK]
    finally:
        os.close(fd)
    train(p, "st", epochs=1, batch_size=4, out_dir=out, num_threads=None)  # free again
    assert (out / "checkpoint_epoch1.npz").is_file()
    # a folder in use is refused as such, not as "already holds a training: use --overwrite"
    fd = try_lock(out)
    assert fd is not None
    try:
        with pytest.raises(TrainArgumentError, match="in use by another sbn-bench process"):
            train(p, "st", epochs=1, batch_size=4, out_dir=out, num_threads=None)
    finally:
        os.close(fd)


def test_publish_refuses_a_run_or_training_folder_and_says_how_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--publish wrote its studies into a run's folder; Ctrl-C printed only 'interrupted'."""
    from sbn_bench import train_report
    from sbn_bench.train_study import StudyError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text("{}")
    r = invoke(["train", "--publish", run_dir])
    assert r.exit_code == 1 and "--publish" in r.output and "holds an sbn-bench run" in r.output, \
        r.output
    assert sorted(p.name for p in run_dir.iterdir()) == ["manifest.json"]
    with pytest.raises(StudyError, match="the published benchmark needs its own folder"):
        train_report.publish(run_dir)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_report, "publish", interrupted)
    r = invoke(["train", "--publish", tmp_path / "pub", "--executor", "serial", "--seeds", "0-4"])
    assert r.exit_code == 130 and (f"continue with sbn-bench train --publish {tmp_path / 'pub'} "
                                   "--executor serial --seeds 0-4 (it resumes them)") in r.output, \
        r.output

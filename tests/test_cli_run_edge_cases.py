"""sbn-bench run (and exact, problem) on unusual input: softmax with one output, only exact estimators,
unsupported noise refused before any work, Ctrl-C, sizes, empty estimator items, and the console
summary of problems of different depth.
"""

from __future__ import annotations

import importlib
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sbn_bench import runner
from sbn_bench.cli import main
from sbn_bench.config import ConfigError, ProblemSpec, RunConfig, ThroughputConfig
from sbn_bench.estimators import EstimatorSpecError, split_specs
from sbn_bench.problems import Problem, ProblemError, load_problem, random_problem

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


def test_softmax_with_one_output_is_refused_everywhere(tmp_path: Path) -> None:
    with pytest.raises(ProblemError, match=r"arch='2-3-1' .*weight_out n_out=1.*at least 2.*softmax"):
        random_problem("2-3-1", 0, data_points=4, loss="softmax")
    with pytest.raises(ConfigError, match=r"weight_out n_out=1.*softmax"):
        ProblemSpec(arch="2-3-1", loss="softmax")
    # a problem built from arrays (and a file) with one output and loss softmax: validate refuses it
    ok = random_problem("2-3-2", 0, data_points=4, loss="softmax")
    one = {**ok.params, "weight_out": ok.params["weight_out"][:1], "bias_out": ok.params["bias_out"][:1]}
    with pytest.raises(ProblemError, match=r"array 'weight_out' has 1 output, expected at least 2"):
        Problem(one, ok.x, torch.zeros(4, dtype=torch.int64), loss="softmax")
    f = tmp_path / "p.npz"
    np.savez(f, x=ok.x.numpy(), y=np.zeros(4), loss=np.array("softmax"),
             **{k: v.numpy() for k, v in one.items()})
    with pytest.raises(ProblemError, match=r"p\.npz.*'weight_out'.*at least 2.*softmax"):
        load_problem(f)
    r = invoke(["exact", "--arch", "2-3-1", "--loss", "softmax"])
    assert r.exit_code == 2 and "Error: Invalid value for '--arch': '2-3-1' gives" in r.output, \
        r.output
    assert "softmax" in r.output and "weight_out" in r.output and "objective" not in r.output
    # two classes are fine
    assert random_problem("2-3-2", 0, data_points=4, loss="softmax").widths[-1] == 2


def test_cli_run_with_only_exact_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "r8"
    r = invoke(["run", "--arch", "2-3-1", "--data-points", "5", "--estimators", "exact",
                "--samples", "50", "--rounds", "1", "--out", out])
    assert r.exit_code == 0, r.output
    assert (out / "report" / "report.md").is_file() and (out / "report" / "report.html").is_file()
    r = invoke(["report", out])
    assert r.exit_code == 0 and "wrote" in r.output, r.output


def test_cli_unsupported_noise_is_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "g"
    for extra in ([], ["-q"]):
        r = invoke(["run", "--arch", "2-3-1", "--data-points", "3", "--estimators", "arm,st,disarm",
                    "--noise", "gaussian", "--samples", "8", "--out", out, *extra])
        assert r.exit_code == 2, r.output  # a usage error of --estimators, given
        assert ("Error: Invalid value for '--estimators': refused before any work: 2 (problem/"
                "checkpoint, estimator) pair(s) are not supported") in r.output, r.output
        for pair in ("arch-2-3-1-seed0/init × arm: estimator 'arm' does not support noise 'gaussian'",
                     "arch-2-3-1-seed0/init × disarm: estimator 'disarm' does not support noise"):
            assert pair in r.output, r.output
        assert not out.exists()


def test_prepare_refuses_exact_mode_without_path_surrogate_and_large_references(tmp_path: Path
                                                                                ) -> None:
    cfg = tiny_config(tmp_path / "x", estimators=("psa", "concrete:tau=0.1"), mode="exact")
    with pytest.raises(runner.RunError) as err:
        runner.prepare(cfg)
    msg = str(err.value)
    assert "--mode exact is impossible for 1 (problem/checkpoint, estimator) pair(s): " \
           "arch-2-2-1-seed0/init × concrete:tau=0.1: estimator 'concrete:tau=0.1' has randomness " \
           "'continuous' and no path surrogate" in msg, msg
    assert "use --mode auto" in msg and "× psa" not in msg, msg
    runner.prepare(cfg.with_(mode="auto"))  # auto: concrete goes Monte Carlo
    with pytest.raises(runner.RunError, match=r"exact reference refused for problem "
                                              r"'arch-2-2-1-seed0' \(arch 2-2-1, D=3\): .* limit"):
        runner.prepare(tiny_config(tmp_path / "y", max_exact_bytes=100, reference="exact"))
    # --reference auto (the default) takes it with a Monte-Carlo reference instead
    plan = runner.prepare(tiny_config(tmp_path / "y", max_exact_bytes=100))
    assert set(plan.references.values()) == {"mc"}
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_ctrl_c_says_how_to_resume_and_the_report_warns(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    args = ["run", "--arch", "2-2-1", "--data-points", "3", "--estimators", "psa,st", "--samples",
            "16", "--M", "1,4", "--seeds", "0,1", "--no-throughput", "--no-report", "--out", out]

    def interrupt(self, done, total, cell, status, eta=None):
        if done == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_run._Progress, "__call__", interrupt)
    r = invoke(args)
    assert r.exit_code == 130, (r.exit_code, r.output)
    assert "Interrupted: the finished cells are saved in" in r.stderr and "--resume" in r.stderr
    command = shlex.split(r.stderr.strip().splitlines()[-1])  # the command that continues
    assert command[:2] == ["sbn-bench", "run"] and command[-1] == "--resume", command
    assert sorted(command[2:-1]) == sorted(map(str, args[1:])), command
    assert "Aborted" not in r.output
    monkeypatch.undo()
    # the report of the interrupted run: 2 of 4 cells, said on stderr and at the top of the report
    r = invoke(["report", out, "--format", "md"])
    assert r.exit_code == 0, r.output
    assert "Warning: this run is incomplete: 2 of 4 cells done" in r.stderr, r.stderr
    md = (out / "report" / "report.md").read_text(encoding="utf-8")
    head = md.split("| run |")[0]
    assert "> **Warning:** this run is incomplete: 2 of 4 cells done" in head, head
    assert f"--out {out} --resume" in head
    # resumed to the end with the command it printed: no warning
    r = invoke([*command[1:], "-q"])
    assert r.exit_code == 0, r.output
    r = invoke(["report", out, "--format", "md"])
    assert r.exit_code == 0 and "incomplete" not in r.output, r.output
    assert "incomplete" not in (out / "report" / "report.md").read_text(encoding="utf-8")


def test_max_exact_bytes_takes_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["exact", "--arch", "2-3-1", "--data-points", "100"]  # needs about 38 KB
    assert invoke([*base, "--max-exact-bytes", "1MiB"]).exit_code == 0
    assert invoke([*base, "--max-exact-bytes", "4GiB"]).exit_code == 0
    assert invoke([*base, "--max-exact-bytes", "1000000"]).exit_code == 0  # plain bytes still work
    r = invoke([*base, "--max-exact-bytes", "1KiB"])  # the option's value refused: exit 2
    assert r.exit_code == 2 and "Invalid value for '--max-exact-bytes'" in r.output, r.output
    assert "limit of 1 KiB" in r.output and "(raise it with --max-exact-bytes," in r.output
    r = invoke(["exact", "--arch", "2-30-30-1"])  # the default limit: the problem fails (exit 1)
    # 2.6e10 GiB: raising the limit is not offered where no machine has the memory (new-user
    # review); the Monte-Carlo reference is named with the command that takes it
    assert r.exit_code == 1 and "raise it" not in r.output, r.output
    assert "(use fewer units per layer, or a Monte-Carlo reference: sbn-bench run --reference mc)" \
        in " ".join(r.output.split())
    from sbn_bench.reference import chain

    monkeypatch.setattr(chain, "_physical_memory", lambda: float("inf"))
    r = invoke(["exact", "--arch", "2-30-30-1"])
    assert r.exit_code == 1 and "(raise it with --max-exact-bytes," in r.output, r.output
    # a problem file over its own size limit (load_problem's max_bytes) is that file's failure,
    # whatever --max-exact-bytes says
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (100000, 100000)})
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
        z.writestr("x.npy", header.getvalue())
    r = invoke(["exact", "--problem", tmp_path / "big.npz", "--max-exact-bytes", "10G"])
    assert r.exit_code == 1 and "a problem file may hold (max_bytes)" in r.output, r.output
    assert "--max-exact-bytes" not in r.output
    r = invoke([*base, "--max-exact-bytes", "4XB"])
    assert r.exit_code == 2 and "--max-exact-bytes" in r.output and "'4XB'" in r.output, r.output
    r = invoke(["run", "--arch", "2-2-1", "--data-points", "3", "--estimators", "psa", "--samples",
                "8", "--no-throughput", "--no-report", "-q", "--max-exact-bytes", "2GiB",
                "--out", tmp_path / "run"])
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert man["config"]["max_exact_bytes"] == 2 * 2**30
    r = invoke(["train", "--arch", "2-3-1", "--data-points", "100", "--epochs", "1", "--batch-size",
                "100", "--max-exact-bytes", "1KiB", "--out", tmp_path / "t"])
    assert r.exit_code == 0 and "exact objective not logged" in r.output, r.output
    assert "--max-exact-bytes SIZE" in invoke(["run", "--help"]).output


def test_empty_estimator_items_are_refused(tmp_path: Path) -> None:
    for text in ("psa,,st", "psa,st,", ",psa", "psa, ,st"):
        with pytest.raises(EstimatorSpecError, match=r"argument estimators=.* has an empty item"):
            split_specs(text)
    assert split_specs("") == [] and split_specs("psa, concrete:tau=0.1,k=2") == [
        "psa", "concrete:tau=0.1,k=2"]
    r = invoke(["run", "--arch", "2-2-1", "--estimators", "psa,,st", "--out", tmp_path / "e"])
    assert r.exit_code == 2 and "'--estimators': 'psa,,st' has an empty item" in r.output, r.output
    assert not (tmp_path / "e").exists()


def test_summary_shows_a_dash_for_layers_a_problem_lacks(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('estimators = "psa"\nsamples = 8\nM = [1]\n[throughput]\nenabled = false\n'
                   '[[problem]]\narch = "2-2-1"\ndata_points = 3\n'
                   '[[problem]]\narch = "2-2-2-1"\ndata_points = 3\n')
    r = invoke(["run", "--config", cfg, "--no-report", "--out", tmp_path / "run"])
    assert r.exit_code == 0, r.output
    assert "nan" not in r.output.lower(), r.output
    lines = r.output.splitlines()
    header = next(x for x in lines if x.startswith("problem "))
    assert header.split()[3:] == ["1", "2", "out", "all"], header
    shallow = next(x for x in lines if x.startswith("arch-2-2-1-seed0 "))
    assert shallow.split()[4] == "-", shallow


def test_ctrl_c_after_the_run_exits_130_not_aborted(tmp_path, monkeypatch) -> None:
    """Ctrl-C while a finished run's summary printed gave click's "Aborted!" and status 1."""
    run_cmd = importlib.import_module("sbn_bench.cli.run")  # the module (cli.run is the command)

    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(run_cmd, "_print_summary", stop)
    r = CliRunner().invoke(main, ["run", "--arch", "2-2-1", "--data-points", "3", "--estimators",
                                  "st", "--samples", "20", "--M", "1", "--no-throughput",
                                  "--no-report", "--out", str(tmp_path / "r")])
    assert r.exit_code == 130 and "Aborted" not in r.output, r.output


def test_sigterm_while_a_command_loads_exits_143(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (raised as :class:`~sbn_bench.cli.base.Terminated`) while the command's module
    loads: nothing was done, exit status 143 as after SIGTERM anywhere else (Ctrl-C there: 130)."""
    import sbn_bench.cli as cli_pkg
    from sbn_bench.cli.base import Terminated

    for exc, code in ((Terminated("signal 15"), 143), (KeyboardInterrupt(), 130)):
        def load(name: str, exc: BaseException = exc) -> None:
            raise exc

        monkeypatch.setattr(cli_pkg.importlib, "import_module", load)
        r = invoke(["list"])
        monkeypatch.undo()
        assert r.exit_code == code and "interrupted while loading 'list'" in r.output, r.output


@pytest.mark.parametrize("args, option", [
    (["run", "--arch", "2-2-1", "--no-throughput", "--out", ""], "--out"),
    (["run", "--arch", "2-2-1", "--reference-cache", ""], "--reference-cache"),
    (["train", "--arch", "2-2-1", "--epochs", "1", "--out", ""], "--out"),
    (["report", "RUN", "--out", ""], "--out"),
])
def test_an_empty_folder_option_is_refused_not_read_as_here(tmp_path: Path, monkeypatch,
                                                            exact_run: Path, args: list[str],
                                                            option: str) -> None:
    """pathlib reads '' as '.': `report RUN --out ""` wrote the report into the current folder
    and `run --out ""` ran there (`problem --out ""` was already refused)."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, [str(exact_run) if a == "RUN" else a for a in args])
    assert r.exit_code == 2, r.output
    assert f"Invalid value for '{option}': '' is empty; expected a folder path" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_empty_folder_is_refused_from_python_too(tmp_path: Path, monkeypatch,
                                                    exact_run: Path) -> None:
    from sbn_bench.reports import write_report
    from sbn_bench.train import TrainArgumentError, train
    from sbn_bench.train_study import run_study

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="out='' is empty") as e:
        tiny_config("")
    assert e.value.argument == "out"
    with pytest.raises(ValueError, match="out_dir='' is empty") as e:
        write_report(exact_run, out_dir="")
    assert e.value.argument == "out_dir"
    with pytest.raises(TrainArgumentError, match="out_dir='' is empty"):
        train(random_problem("2-2-1", 0, data_points=4), "st", epochs=1, out_dir="")
    with pytest.raises(TrainArgumentError, match="out='' is empty"):
        run_study("digits-vae-exact", out="", estimators=["st"], seeds=[0])
    assert list(tmp_path.iterdir()) == []

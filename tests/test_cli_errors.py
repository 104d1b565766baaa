"""Bad input never crashes with a traceback and never writes a partial result.

Every refusal here is checked three ways: the exit status (2 for click's option errors, 1 for the
library's), a one-line ``Error: …`` naming the bad thing (no ``Traceback``), and an ``--out`` folder
that was never created (no manifest, no results). The parsers themselves are fuzzed in
``test_problems_fuzz.py`` and ``test_config_fuzz.py``; plugin files, estimator specs,
hyperparameter ranges and problem files are
covered here through the CLI and the Python API.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from sbn_bench import problems, runner
from sbn_bench.cli import main
from sbn_bench.config import ConfigError, ProblemSpec, RunConfig, ThroughputConfig, load_config
from sbn_bench.estimators import EstimatorSpecError, load_registry
from sbn_bench.estimators.registry import PluginFileError, load_plugins

PLUGINS = Path(__file__).parent / "plugins"
SMALL = ["--arch", "2-2-1", "--data-points", "3", "--samples", "8", "--M", "1,2", "--no-throughput",
         "--no-report", "--quiet"]


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(main, args, prog_name="sbn-bench")


def assert_refused(res: Result, code: int, words: list[str], out: Path | None = None) -> None:
    """Exit ``code``, no traceback, a one-line ``Error:`` holding ``words``; nothing written."""
    assert res.exit_code == code, f"exit {res.exit_code}, expected {code}:\n{res.output}"
    assert "Traceback" not in res.output, res.output
    assert isinstance(res.exception, SystemExit), f"uncaught {res.exception!r}"
    err = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1, res.output
    if code == 1:  # library refusals: exactly one line of output
        assert res.output.count("\n") == 1, res.output
    for w in words:
        assert w in err[0], f"{w!r} not in {err[0]!r}"
    if out is not None:
        assert not out.exists(), f"{out} was created by a refused run: {list(out.rglob('*'))}"


# --------------------------------------------------------------------------------------------
# every command as a new user meets it


@pytest.mark.parametrize("cmd", [[], ["run"], ["exact"], ["list"], ["report"], ["train"],
                                 ["problem"]])
def test_every_help_works(cmd):
    res = invoke([*cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("Usage: sbn-bench") and "Traceback" not in res.output


@pytest.mark.parametrize("args, code, words", [
    (["nonsense"], 2, ["No such command 'nonsense'"]),
    (["run", "--arch"], 2, ["--arch", "requires an argument"]),
    (["run", "--bogus"], 2, ["No such option", "--bogus"]),
    (["exact"], 2, ["exactly one of --problem"]),
    (["report"], 2, ["Missing argument 'DIR'"]),
    (["report", ".", "--compare", "/nonexistent-baseline"], 2, ["'--compare'", "/nonexistent-baseline",
                                                              "does not exist"]),
    (["run", "--arch", "2-x-1"], 2, ["token 'x' is not a layer", "expected tokens separated by '-'"]),
    (["run", *SMALL, "--M", "1,x"], 2, ["--M", "'1,x'", "e.g. 1,10,100"]),
    (["problem", "--arch", "2-2-1"], 2, ["--out"]),
    (["run", "--arch", "2-2-1", "--seed", str(2**64)], 2, ["--seed", "18446744073709551616"]),
    (["exact", "--arch", "2-2-1", "--seed", "-1"], 2, ["--seed", "-1"]),
    (["train", "--arch", "2-2-1", "--train-seed", str(2**70), "--out", "x"], 2, ["--train-seed"]),
    (["run", *SMALL, "--memory-budget", "1e999"], 2, ["--memory-budget", "'1e999'", "not a size"]),
    (["run", *SMALL, "--memory-budget", "-1MiB"], 2, ["--memory-budget"]),
    (["exact", "--arch", "2-2-1", "--max-exact-bytes", "1.5"], 2,  # it was taken as 1 byte
     ["--max-exact-bytes", "'1.5'", "not a whole number of bytes"]),
    (["exact", "--arch", "1x8x8-c8k3-c16k3s2-10", "--loss", "softmax"], 1,  # not as 64-288-64-10
     ["(arch 1x8x8-c8k3-c16k3s2-10, D=100)", "exact reference refused"]),
    (["run", *SMALL, "--chunk", "0"], 2, ["--chunk"]),
    (["run", *SMALL, "--max-paths", "0"], 2, ["--max-paths"]),
    (["run", *SMALL, "--rounds", "0"], 2, ["--rounds"]),
    (["run", *SMALL, "--rounds", "3"], 2, ["--rounds sets the throughput cells", "--no-throughput"]),
    (["run", *SMALL, "--seeds", "3-1"], 2, ["--seeds", "range '3-1' runs backwards"]),
    (["run", *SMALL, "--cache-dir", "x"], 2, ["--cache-dir is an option of --preset paper"]),
    (["exact", "--arch", "1x4x4-c2k3-3", "--data-points", "5"], 2, ["'--arch': '1x4x4-c2k3-3' gives",
                                                                       "n_out=3"]),
    (["run", *SMALL, "--seeds", "0,-1"], 2, ["--seeds", "seed -1 is out of range"]),
    (["run", *SMALL, "--seeds", "1,1"], 2, ["--seeds", "seed(s) 1 given twice"]),
    (["run", *SMALL, "--executor", "foo"], 2, ["--executor", "'foo' is unknown", "processes[:N]"]),
    (["run", *SMALL, "--executor", "processes:0"], 2, ["--executor", "1..1024"]),
    (["train", "--preset", "digits-vae", "--seeds", "0", "--executor", "foo", "--out", "x"], 2,
     ["--executor", "'foo' is unknown"]),  # a usage error, as for run
])
def test_wrong_arguments_are_one_line_errors(tmp_path, args, code, words):
    out = tmp_path / "out"
    with_out = args[0] == "run" and args[-1] != "--arch"
    assert_refused(invoke([*args, *(["--out", str(out)] if with_out else [])]), code, words,
                   out if with_out else None)


def test_a_baseline_that_is_not_a_run_is_named_as_the_baseline(tmp_path):
    """``--compare`` a folder that exists but holds no run: the refusal says it is the baseline
    (the report's own DIR gets the same message without that prefix)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    res = invoke(["report", str(empty)])
    assert_refused(res, 1, [f"run directory {str(empty)!r} is empty"])
    assert "--compare" not in res.output
    run = tmp_path / "run"
    assert invoke(["run", "--arch", "2-2-1", "--samples", "8", "--no-throughput", "--estimators",
                   "st", "--out", str(run)]).exit_code == 0
    res = invoke(["report", str(run), "--compare", str(empty)])
    assert_refused(res, 1, ["the baseline run (--compare)",
                            f"run directory {str(empty)!r} is empty"])
    # a damaged table in the baseline is the file's failure, exit 1 as in DIR (it was 2, blamed on
    # the option; attacker review)
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    m = pd.read_csv(damaged / "metrics.csv", dtype=str, keep_default_na=False)
    m.loc[2, "mode"] = "bogus"
    m.to_csv(damaged / "metrics.csv", index=False)
    res = invoke(["report", str(run), "--compare", str(damaged), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 1 and "Usage:" not in res.output and \
        "the baseline run (--compare)" in res.output and "line 4" in res.output, res.output


def test_huge_problems_are_refused_before_allocating(tmp_path):
    out = tmp_path / "out"
    res = invoke(["run", "--arch", "2-2-1", "--data-points", str(10**11), "--out", str(out)])
    assert_refused(res, 1, ["D=100000000000", "its data alone take 1,490 GiB", "--max-exact-bytes=4 GiB"],
                   out)
    res = invoke(["run", "--arch", "2-2-1", "--data-points", str(10**11), "--reference", "exact",
                  "--out", str(out)])
    assert_refused(res, 1, ["D=100000000000", "table entries"], out)
    assert_refused(invoke(["exact", "--arch", "2-3000000000-1"]), 1, ["2-3000000000-1", "GiB"])
    # the reference's size guard runs before the data are built: 5 GB of data never allocated
    res = invoke(["exact", "--arch", "2-5-5-1", "--data-points", str(10**8)])
    assert_refused(res, 1, ["D=100000000", "table entries, over the limit of"])
    # a layer of 1023 units: its 2^1023 states are counted, not overflowed
    assert_refused(invoke(["exact", "--arch", "2-1023-1"]), 1, ["1.798e+310 table entries"])


def test_unwritable_problem_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = invoke(["problem", "--arch", "2-2-1", "--out", str(blocker / "sub" / "p.npz")])
    assert_refused(res, 1, ["cannot write problem file", "p.npz", "is a file, not a folder"])
    # and the output folders of run and train (train raised a traceback)
    res = invoke(["run", "--arch", "2-2-1", "--samples", "8", "--no-throughput", "--out",
                  str(blocker / "sub")])
    assert_refused(res, 1, ["cannot write in output folder", f"{str(blocker)!r} is a file"])
    res = invoke(["train", "--arch", "2-2-1", "--epochs", "1", "--out", str(blocker / "sub")])
    assert_refused(res, 1, ["cannot write", f"{str(blocker)!r} is a file, not a folder"])
    assert list(tmp_path.iterdir()) == [blocker]  # no temporary file left behind


# --------------------------------------------------------------------------------------------
# estimator names and hyperparameters


@pytest.mark.parametrize("spec, words", [
    ("psaa", ["estimator 'psaa' is unknown", "did you mean 'psa'"]),
    ("reinforce_loo", ["'reinforce_loo' is unknown", "'reinforce-loo'"]),
    ("concrete:tua=1", ["no hyperparameter 'tua'", "did you mean 'tau'"]),
    ("reinforce-loo:kk=3", ["no hyperparameter 'kk'", "'k'"]),
    ("psa:tau=1", ["'psa' has no hyperparameter 'tau'", "its hyperparameters: none"]),
    ("concrete:tau=0", ["tau=0.0 must be > 0"]),
    ("concrete:tau=-1", ["tau=-1.0 must be > 0"]),
    ("concrete:tau=nan", ["tau=nan must be > 0 and finite"]),
    ("st-gumbel:tau=inf", ["tau=inf must be > 0 and finite"]),
    ("concrete:tau=abc", ["tau='abc' is not a valid float"]),
    ("reinforce-loo:k=1", ["k=1 must be an integer ≥ 2"]),
    ("reinforce-loo:k=0", ["k=0 must be an integer ≥ 2"]),
    ("reinforce-loo:k=2.5", ["k='2.5' is not a valid int"]),
    ("concrete:tau", ["'tau' is not key=value"]),
    (":tau=1", ["has no name"]),
])
def test_bad_estimator_specs(tmp_path, spec, words):
    out = tmp_path / "out"
    assert_refused(invoke(["run", *SMALL, "--estimators", f"st,{spec}", "--out", str(out)]), 2,
                   words, out)
    with pytest.raises(EstimatorSpecError) as e:  # the same from Python
        load_registry().create(spec)
    for w in words:
        assert w in str(e.value)
    assert_refused(invoke(["train", "--arch", "2-2-1", "--estimator", spec, "--epochs", "1",
                           "--out", str(out)]), 2, words, out)


@pytest.mark.parametrize("kw, words", [
    ({"samples": 0}, ["samples=0", "≥ 1"]),
    ({"samples": -5}, ["samples=-5"]),
    ({"samples": 2.5}, ["samples=2.5"]),
    ({"samples": True}, ["samples=True"]),
    ({"M": (0, 1)}, ["M=0"]),
    ({"seeds": (-1,)}, ["seeds=-1"]),
    ({"seeds": (2**64,)}, ["seeds=18446744073709551616", "≤"]),
    ({"target_rrmse": math.nan}, ["target_rrmse=nan"]),
    ({"resume": "no"}, ["resume='no'", "true or false"]),  # a truthy string resumed
    ({"reference_cache": 123}, ["reference_cache=123", "folder path"]),
    ({"memory_budget": 0}, ["memory_budget=0"]),
    ({"throughput": {"rounds": 0}}, ["throughput.rounds=0"]),
    ({"throughput": {"batch": 0}}, ["throughput.batch=0"]),
])
def test_out_of_range_settings_from_python(tmp_path, kw, words):
    with pytest.raises(ConfigError) as e:
        if "throughput" in kw:
            ThroughputConfig(**kw["throughput"])
        else:
            RunConfig(problems=(ProblemSpec(arch="2-2-1"),), out=str(tmp_path / "o"), **kw)
    for w in words:
        assert w in str(e.value)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, words", [
    (["--samples", "0"], ["--samples", "0"]),
    (["--samples", "-3"], ["--samples", "-3"]),
    (["--target-rrmse", "-1"], ["--target-rrmse"]),
])
def test_out_of_range_settings_from_the_cli(tmp_path, args, words):
    out = tmp_path / "out"
    assert_refused(invoke(["run", *SMALL, *args, "--out", str(out)]), 2, words, out)


# --------------------------------------------------------------------------------------------
# configuration files


@pytest.mark.parametrize("text, line, words", [
    ("samples = 10\n[[problem]]\npreset = 'quick'\nmode = [\n", 4, ["invalid TOML"]),
    ("estimators = 'psa'\nsampels = 3\n[[problem]]\npreset = 'quick'\n", 2,
     ["unknown key 'sampels'", "did you mean 'samples'"]),
    ("[[problem]]\npreset = 'quick'\nnoize = 'gaussian'\n", 3, ["unknown key 'noize'", "'noise'"]),
    ("samples = 0\n[[problem]]\npreset = 'quick'\n", 1, ["samples=0"]),
    ("memory_budget = '1e999'\n[[problem]]\npreset = 'quick'\n", 1, ["memory_budget='1e999'"]),
    ("[[problem]]\narch = {init = 0}\n", 2, ["arch={'init': 0} must be a string"]),
    ("problem = [1, 2]\n", 1, ["problem 1 is 1"]),
    ("samples = 'x'\nM = 'paper'\n[[problem]]\npreset = 'quick'\n", 1, ["samples='x'"]),
    ("seeds = [18446744073709551616]\n[[problem]]\npreset = 'quick'\n", 1, ["seeds="]),
])
def test_malformed_toml_names_file_and_line(tmp_path, text, line, words):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    msg = str(e.value)
    assert str(cfg) in msg and f"line {line}" in msg, msg
    for w in words:
        assert w in msg, msg
    out = tmp_path / "out"
    assert_refused(invoke(["run", "--config", str(cfg), "--out", str(out)]), 1,
                   [str(cfg), f"line {line}", *words], out)


@pytest.mark.parametrize("spec, words", [
    ("processes:0", "N='0' must be a number of workers in 1..1024"),
    ("threads", "is unknown; expected one of auto, serial"),
])
def test_a_bad_executor_in_a_config_file_names_the_file_and_line(tmp_path, spec, words):
    """The executor is checked by the runner (its spellings live there), after the file is read:
    the command still names the file and the line; ``--executor`` replaces the file's."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"samples = 10\nexecutor = '{spec}'\n[[problem]]\npreset = 'quick'\n")
    out = tmp_path / "out"
    assert_refused(invoke(["run", "--config", str(cfg), "--out", str(out)]), 1,
                   [str(cfg), "line 2", "argument executor=", words], out)
    ok = invoke(["run", "--config", str(cfg), "--executor", "serial", "--no-throughput", "--out",
                 str(out), "--quiet", "--no-report"])
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("setting, words", [
    ("estimators = ['psa', 'foo']", "estimator 'foo' is unknown"),
    ("estimators = ['psa', 'psa']", "estimators lists psa more than once"),
    ("reference = 'mc:st'", "reference estimator 'st' is biased"),
    ("plugins = ['nope.py']", "nope.py' does not exist"),
    # a Monte-Carlo reference over its time budget by the file's N (it named no file)
    ("reference = 'mc::100000000000000'", "with the given N=100000000000000"),
])
def test_a_value_of_a_config_file_refused_when_the_run_starts_names_the_file(tmp_path, setting,
                                                                              words):
    """These settings are checked by the registry and the runner, after the file is read (no
    line is known then): the error still names the file; given on the command line, the option."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"{setting}\nsamples = 10\n[[problem]]\narch = '2-2-1'\n")
    out = tmp_path / "out"
    assert_refused(invoke(["run", "--config", str(cfg), "--out", str(out)]), 1,
                   [f"Error: config file {str(cfg)!r}: ", words], out)


def test_a_value_given_beside_a_config_file_is_not_blamed_on_it(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text("samples = 10\nplugins = []\n[[problem]]\narch = '2-2-1'\n")
    res = invoke(["run", "--config", str(cfg), "--estimators", "psa,foo", "--out",
                  str(tmp_path / "out")])
    assert_refused(res, 2, ["Invalid value for '--estimators'", "'foo' is unknown"])
    assert "config file" not in res.output
    # an output folder named like a setting the file sets is still no setting of the file
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "x.txt").write_text("x")
    res = invoke(["run", "--config", str(cfg), "--out", "plugins"])
    assert_refused(res, 1, ["Error: output folder 'plugins' is not empty"])
    # nor is a default the file does not set (the executor: 'processes:0' given nowhere else)
    from sbn_bench.errors import SbnBenchError

    def refuse(*a, **k):
        raise SbnBenchError("argument executor='auto' cannot start", argument="executor")

    monkeypatch.setattr(runner, "make_executor", refuse)
    res = invoke(["run", "--config", str(cfg), "--out", str(tmp_path / "o2"), "--quiet"])
    assert "config file" not in res.output and "cannot start" in res.output, res.output


def test_config_that_is_not_utf8_or_not_a_file(tmp_path):
    cfg = tmp_path / "bin.toml"
    cfg.write_bytes(b"samples = 3\n\xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bin.toml', line 2: not UTF-8 text \(byte 0xff"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(tmp_path)


# --------------------------------------------------------------------------------------------
# problem files


def _arrays() -> dict[str, np.ndarray]:
    p = problems.random_problem("2-3-1", 0, data_points=4)
    return {"x": p.x.numpy(), "y": p.y.numpy(), **{k: v.numpy() for k, v in p.params.items()}}


def _poisoned(name: str, value: float) -> dict[str, np.ndarray]:
    a = _arrays()
    a[name] = a[name].copy()
    a[name].reshape(-1)[0] = value
    return a


BAD_FILES = {
    "truncated": lambda p: p.write_bytes(_npz_bytes(_arrays())[:200]),
    "not_npz": lambda p: p.write_text("x,y\n1,2\n"),
    "empty": lambda p: p.write_bytes(b""),
    "npy": lambda p: np.save(open(p, "wb"), np.zeros(3)),
    "nan": lambda p: np.savez(open(p, "wb"), **_poisoned("x", math.nan)),
    "inf": lambda p: np.savez(open(p, "wb"), **_poisoned("weight_1", math.inf)),
    "wrong_shape": lambda p: np.savez(open(p, "wb"), **{**_arrays(), "weight_1": np.zeros((3, 5))}),
    "missing_array": lambda p: np.savez(open(p, "wb"), **{k: v for k, v in _arrays().items()
                                                         if k != "bias_out"}),
}
WORDS = {"truncated": "not a readable .npz", "not_npz": "does not start with a zip header",
         "empty": "it is empty", "npy": "single .npy array", "nan": "'x' contains NaN or Inf",
         "inf": "'weight_1' contains NaN or Inf", "wrong_shape": "'weight_1' has shape (3, 5)",
         "missing_array": "'bias_out' is missing"}


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_problem_files_are_refused_by_every_command(tmp_path, kind):
    path = tmp_path / f"{kind}.npz"
    BAD_FILES[kind](path)
    out = tmp_path / "out"
    words = [str(path), WORDS[kind]]
    assert_refused(invoke(["run", "--problem", str(path), "--out", str(out)]), 1, words, out)
    assert_refused(invoke(["exact", "--problem", str(path)]), 1, words)
    assert_refused(invoke(["train", "--problem", str(path), "--out", str(out)]), 1, words, out)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[[problem]]\nfile = '{path.name}'\n")
    assert_refused(invoke(["run", "--config", str(cfg), "--out", str(out)]), 1, words, out)
    ckpt = tmp_path / "k.toml"
    ckpt.write_text(f"[[problem]]\narch = '2-3-1'\ncheckpoints = {{init = 'init', "
                    f"late = '{path.name}'}}\n")
    assert_refused(invoke(["run", "--config", str(ckpt), "--out", str(out)]), 1, words, out)


# --------------------------------------------------------------------------------------------
# plugin files: a named file that cannot be loaded is an error before any work


@pytest.mark.parametrize("plugin, code, words", [
    # a path that does not exist is a refused value of --plugin (exit 2); a file that exists
    # but does not load is that file's failure (exit 1)
    ("does_not_exist.py", 2, ["does_not_exist.py", "does not exist"]),
    ("raises_at_import.py", 1, ["raises_at_import.py", "failed to import: ImportError"]),
    ("no_table.py", 1, ["no_table.py", "defines no ESTIMATORS dict"]),
])
def test_unloadable_plugin_file_is_an_error_before_any_work(tmp_path, plugin, code, words):
    path = PLUGINS / plugin
    out = tmp_path / "out"
    assert_refused(invoke(["run", *SMALL, "--estimators", "st", "--plugin", str(path),
                           "--out", str(out)]), code, words, out)
    assert_refused(invoke(["train", "--arch", "2-2-1", "--estimator", "st", "--epochs", "1",
                           "--plugin", str(path), "--out", str(out)]), code, words, out)
    with pytest.raises(PluginFileError) as e:
        runner.run(RunConfig(problems=(ProblemSpec(arch="2-2-1", data_points=3),),
                             estimators=("st",), plugins=(str(path),), samples=4,
                             throughput=ThroughputConfig(enabled=False), out=str(out)))
    for w in words:
        assert w in str(e.value)
    assert not out.exists()


def test_plugin_that_calls_sys_exit_is_refused_not_obeyed(tmp_path):
    p = tmp_path / "exits.py"
    p.write_text("import sys\nsys.exit(3)\n")
    out = tmp_path / "out"
    assert_refused(invoke(["run", *SMALL, "--plugin", str(p), "--out", str(out)]), 1,
                   ["exits.py", "failed to import: SystemExit"], out)


def test_broken_factories_warn_and_fail_only_when_requested(tmp_path):
    broken = PLUGINS / "broken_estimators.py"
    out = tmp_path / "ok"
    res = invoke(["run", *SMALL, "--estimators", "fine-one,st", "--plugin", str(broken),
                  "--out", str(out)])
    assert res.exit_code == 0, res.output
    warnings = [w for w in res.stderr.splitlines() if w.startswith("Warning: ")]
    for name in ("positional", "no-default", "wrong-type", "wrong-name", "raises",
                 "bad-randomness", "not-callable", "psa"):
        assert any(f"'{name}'" in w for w in warnings), (name, res.stderr)
    assert all("broken_estimators.py" in w for w in warnings)
    assert (out / "metrics.csv").is_file()
    # asking for a broken one is an error naming why, before any work
    out2 = tmp_path / "bad"
    assert_refused(invoke(["run", *SMALL, "--estimators", "st,raises", "--plugin", str(broken),
                           "--out", str(out2)]), 1,  # its plugin file's fault
                   ["'raises' failed to load", "this factory always fails"], out2)
    reg, warns = load_plugins([broken], ["raises"])
    assert not any("'raises'" in w for w in warns) and any("'wrong-name'" in w for w in warns)


CONTRACT_BREAKERS = textwrap.dedent('''
    import torch
    from sbn_bench.estimators import Estimator


    def wrong_shape():
        def surrogate(problem, params, generator):
            return params["weight_1"].sum()  # a scalar, not [S]
        return Estimator("wrong-shape", surrogate, randomness="continuous")


    def not_a_tensor():
        return Estimator("not-a-tensor", lambda p, q, g: [1.0], randomness="continuous")


    def factory_raises(*, k: int = 2):
        if k != 2:
            raise RuntimeError("only k=2 is implemented")
        return Estimator("factory-raises", lambda p, q, g: q["weight_1"].flatten(1).sum(1),
                         hyperparams=(("k", k),), randomness="none")


    ESTIMATORS = {"wrong-shape": wrong_shape, "not-a-tensor": not_a_tensor,
                  "factory-raises": factory_raises}
''')


def test_estimators_that_break_the_contract_at_run_time_are_recorded(tmp_path):
    plugin = tmp_path / "breakers.py"
    plugin.write_text(CONTRACT_BREAKERS)
    out = tmp_path / "out"
    res = invoke(["run", *SMALL[:-1], "--estimators", "wrong-shape,not-a-tensor,st",
                  "--plugin", str(plugin), "--out", str(out)])
    assert res.exit_code == 0, res.output
    import pandas as pd

    f = pd.read_csv(out / "failures.csv").set_index("estimator")
    assert "surrogate of shape ()" in f.loc["wrong-shape", "error"]
    assert "ContractError" in f.loc["wrong-shape", "error"]
    assert "expected [S]" in f.loc["not-a-tensor", "error"]
    assert set(pd.read_csv(out / "metrics.csv")["estimator"]) == {"st"}
    assert "2 cell(s) failed" in res.output
    # a factory that raises something other than ValueError/TypeError for a hyperparameter
    out2 = tmp_path / "o2"
    assert_refused(invoke(["run", *SMALL, "--estimators", "factory-raises:k=3", "--plugin",
                           str(plugin), "--out", str(out2)]), 2,
                   ["factory-raises:k=3", "RuntimeError: only k=2 is implemented"], out2)


# --------------------------------------------------------------------------------------------
# options that do not apply, non-finite results, all-failed runs


@pytest.mark.parametrize(("args", "words"), [
    (["exact", "--preset", "quick", "--data-points", "5", "--loss", "softmax"],
     ["--data-points, --loss apply to --arch problems only, not to --preset"]),
    (["exact", "--problem", "PROBLEM", "--seed", "5"], ["--seed does not apply to --problem"]),
    (["exact", "--problem", "PROBLEM", "--noise", "gaussian"],
     ["--noise applies to --arch problems only"]),
    (["problem", "--preset", "paper", "--noise", "gaussian", "--out", "x.npz"],
     ["--noise applies to --arch problems only"]),
    # the paper experiment (which trains first) refused them too: it ran with the preset's own
    (["run", "--preset", "paper", "--noise", "gaussian", "--out", "OUT"],
     ["--noise applies to --arch problems only, not to --preset"]),
    (["run", "--preset", "paper", "--data-points", "50", "--loss", "mse", "--out", "OUT"],
     ["--data-points, --loss apply to --arch problems only"]),
])
def test_options_that_do_not_apply_are_refused(tmp_path, args, words):
    f = tmp_path / "p.npz"
    problems.save_problem(problems.random_problem("2-2-1", 0, data_points=3), f)
    out = tmp_path / "out"
    args = [str(f) if a == "PROBLEM" else str(out) if a == "OUT" else a for a in args]
    assert_refused(invoke(args), 2, words, out)


def _overflowing_problem(tmp_path) -> Path:
    p = problems.random_problem("2-2-1", 0, data_points=3, loss="mse")
    big = p.with_params({**p.params, "weight_out": p.params["weight_out"] * 1e300,
                         "bias_out": p.params["bias_out"] * 1e300})
    return problems.save_problem(big, tmp_path / "big.npz")


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_exact_refuses_a_non_finite_result_and_never_prints_half_json(tmp_path, json_flag):
    res = invoke(["exact", "--problem", str(_overflowing_problem(tmp_path)), *json_flag])
    assert_refused(res, 1, ["is not finite", "overflow float64"])
    assert "{" not in res.output  # no partial JSON before the error


def test_a_run_where_every_cell_failed_exits_non_zero(tmp_path):
    plugin = tmp_path / "boom.py"
    plugin.write_text(textwrap.dedent("""
        from sbn_bench.estimators import Estimator

        def boom():
            def surrogate(problem, params, generator):
                raise RuntimeError("kaput")
            return Estimator("boom", surrogate, randomness="continuous", description="fails")

        ESTIMATORS = {"boom": boom}
    """))
    out = tmp_path / "r"
    res = invoke(["run", "--arch", "2-2-1", "--data-points", "3", "--samples", "8", "--M", "1",
                  "--estimators", "boom", "--plugin", str(plugin), "--no-report", "--out", str(out)])
    assert res.exit_code == 1 and "Error: every statistics cell failed (2 failure(s)" in res.output
    assert (out / "failures.csv").is_file()
    # an estimator that returns NaN: its statistics cell fails while its throughput is measured;
    # no accuracy was measured, so the run still fails
    plugin.write_text(textwrap.dedent("""
        from sbn_bench.estimators import Estimator

        def not_a_number():
            def surrogate(problem, params, generator):
                w = next(iter(params.values()))  # replicas [S, ...]: one surrogate per sample
                return w.reshape(w.shape[0], -1).sum(-1) * float("nan")
            return Estimator("not-a-number", surrogate, randomness="none", description="NaN")

        ESTIMATORS = {"not-a-number": not_a_number}
    """))
    res = invoke(["run", "--arch", "2-2-1", "--data-points", "3", "--samples", "8", "--M", "1",
                  "--estimators", "not-a-number", "--plugin", str(plugin), "--no-report", "--rounds", "2",
                  "--out", str(tmp_path / "n")])
    assert res.exit_code == 1 and "Error: every statistics cell failed (1 failure(s)" in res.output
    assert pd.read_csv(tmp_path / "n" / "throughput.csv")["estimator"].tolist() == ["not-a-number"]


def test_the_cli_refuses_m_above_samples_and_samples_one_with_monte_carlo(tmp_path):
    out = tmp_path / "r"
    assert_refused(invoke(["run", "--arch", "2-2-1", "--data-points", "3", "--samples", "100",
                           "--M", "5000", "--out", str(out)]), 2,
                   ["'--M': [5000] has values above samples=100"], out)
    assert_refused(invoke(["run", "--arch", "2-2-1", "--data-points", "3", "--samples", "1",
                           "--M", "1", "--estimators", "arm,tanh", "--out", str(out)]), 2,
                   ["samples=1", "Monte Carlo"], out)


def test_a_toml_integer_of_thousands_of_digits_is_one_line(tmp_path):
    cfg = tmp_path / "big.toml"
    cfg.write_text("samples = " + "9" * 5000 + "\n[[problem]]\npreset = 'quick'\n")
    assert_refused(invoke(["run", "--config", str(cfg), "--out", str(tmp_path / "r")]), 1,
                   ["big.toml", "invalid TOML", "4300"])


def test_run_seeds_take_ranges_as_train_seeds_do() -> None:
    """``run --seeds 0-2,5`` as ``train --seeds``: ranges in a comma list."""
    import click

    from sbn_bench.cli.run import _seed_list

    param = click.Option(["--seeds"])
    assert _seed_list(None, param, "0-2,5") == (0, 1, 2, 5)  # type: ignore[arg-type]
    assert _seed_list(None, param, "4,1") == (4, 1)  # type: ignore[arg-type]
    with pytest.raises(click.BadParameter, match="given twice"):
        _seed_list(None, param, "0-2,2")  # type: ignore[arg-type]


def test_values_beyond_float32_are_refused_before_any_work_in_a_float32_run(tmp_path: Path) -> None:
    """A finite weight of 1e300 is Inf in float32: every cell failed saying the file held NaN or
    Inf. The run is refused at once, naming the array and --dtype float64, which measures it."""
    src = tmp_path / "p.npz"
    assert invoke(["problem", "--arch", "2-3-1", "--data-points", "4", "--out", str(src)]).exit_code == 0
    arrays = dict(np.load(src))
    arrays["weight_1"] = arrays["weight_1"] * 1e300
    np.savez(tmp_path / "huge.npz", **arrays)
    args = ["run", "--problem", str(tmp_path / "huge.npz"), "--estimators", "st", "--samples", "8",
            "--M", "1", "--no-throughput", "--no-report", "--quiet"]
    res = invoke([*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 1 and "array 'weight_1' holds" in res.output, res.output
    assert "becomes Inf in float32" in res.output
    assert "--dtype float64" in res.output and not (tmp_path / "a").exists()
    res = invoke([*args, "--dtype", "float64", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0 and pd.read_csv(tmp_path / "b" / "failures.csv").empty, res.output


@pytest.mark.parametrize("given, words", [("", "is empty"), ("dir/", "ends with a folder separator"),
                                          ("{tmp}", "is a folder")])
def test_problem_out_must_name_a_file(tmp_path: Path, given: str, words: str, monkeypatch) -> None:
    """``--out ""`` was reported as "'.' exists", and ``--out dir/`` wrote a file named dir."""
    monkeypatch.chdir(tmp_path)
    res = invoke(["problem", "--arch", "2-3-1", "--out", given.format(tmp=tmp_path)])
    assert res.exit_code == 2 and "'--out'" in res.output and words in res.output, res.output
    assert list(tmp_path.iterdir()) == []


def test_files_named_by_options_are_their_own_errors_not_usage_errors(tmp_path: Path) -> None:
    """A bad layer-list file given to --arch, or a plugin whose requested estimator fails to load,
    is the file's fault: exit 1 (a refused value of an option given is exit 2)."""
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = invoke(["problem", "--arch", str(bad), "--out", str(tmp_path / "q.npz")])
    assert_refused(res, 1, ["is not JSON"], tmp_path / "q.npz")
    plugin = tmp_path / "broken.py"
    plugin.write_text("def bad():\n    raise RuntimeError('broken factory')\n\n"
                      "ESTIMATORS = {'bad-est': bad}\n")
    for args in (["run", *SMALL, "--estimators", "bad-est"],
                 ["train", "--arch", "2-2-1", "--estimator", "bad-est", "--epochs", "1"]):
        res = invoke([*args, "--plugin", str(plugin), "--out", str(tmp_path / "o")])
        assert_refused(res, 1, ["'bad-est' failed to load"], tmp_path / "o")
    # a study's --estimators is a usage error like run's
    res = invoke(["train", "--preset", "digits-vae", "--estimators", "nosuch", "--seeds", "0",
                  "--out", str(tmp_path / "s")])
    assert_refused(res, 2, ["'--estimators'", "'nosuch' is unknown"], tmp_path / "s")


def test_the_largest_float32_values_are_not_refused(tmp_path: Path) -> None:
    """Only values that become Inf in float32 are refused: float32's own largest value is kept."""
    src = tmp_path / "p.npz"
    assert invoke(["problem", "--arch", "2-3-1", "--data-points", "4", "--out", str(src)]).exit_code == 0
    arrays = dict(np.load(src))
    arrays["bias_1"] = np.full_like(arrays["bias_1"], float(np.finfo(np.float32).max))
    np.savez(tmp_path / "edge.npz", **arrays)
    res = invoke(["run", "--problem", str(tmp_path / "edge.npz"), "--estimators", "tanh", "--samples",
                  "8", "--M", "1", "--no-throughput", "--no-report", "--quiet", "--out", str(tmp_path / "a")])
    assert "becomes Inf" not in res.output, res.output


def test_a_command_line_value_that_clashes_with_the_config_file_is_a_usage_error(tmp_path) -> None:
    """`--samples 5` beside a file's `M = [1, 10]` was blamed on the file (exit 1)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('samples = 100\nM = [1, 10]\n[[problem]]\narch = "2-2-1"\ndata_points = 3\n')
    r = invoke(["run", "--config", str(cfg), "--samples", "5", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "Invalid value for '--samples'" in r.output, r.output
    assert f"(samples given beside config file {str(cfg)!r}, the rest read from it)" in r.output
    assert not (tmp_path / "o").exists()
    cfg.write_text('samples = 5\nM = [1, 10]\n[[problem]]\narch = "2-2-1"\ndata_points = 3\n')
    r = invoke(["run", "--config", str(cfg), "--out", str(tmp_path / "o")])  # the file's own clash
    assert r.exit_code == 1 and f"config file {str(cfg)!r}" in r.output, r.output


def test_resume_of_a_damaged_manifest_gives_no_dead_end_advice(tmp_path) -> None:
    """An unreadable manifest.json advised giving the run's options, which then failed too."""
    out = tmp_path / "r"
    args = ["--arch", "2-2-1", "--data-points", "3", "--estimators", "st", "--samples", "20",
            "--M", "1", "--no-throughput", "--no-report", "--out", str(out)]
    assert invoke(["run", *args]).exit_code == 0
    (out / "manifest.json").write_text((out / "manifest.json").read_text()[:300])
    for cmd in (["run", "--out", str(out), "--resume"], ["run", *args, "--resume"]):
        r = invoke(cmd)
        assert r.exit_code == 1, r.output
        assert "restore it (e.g. from a backup), or run again in another folder" in r.output
        assert "give the run's problem options" not in r.output


def test_the_command_line_names_a_refused_setting_by_its_option(tmp_path) -> None:
    """A budget refused on the command line says ``--memory-budget`` (what to type), not the
    library's ``memory_budget``; the same budget from a config file keeps the file's key."""
    args = ["run", "--arch", "2-5-5-1", "--estimators", "psa", "--samples", "10", "--no-throughput",
            "--memory-budget", "1KB", "--out", str(tmp_path / "a")]
    res = invoke(args)
    assert_refused(res, 2, ["exceeds --memory-budget=1,000 bytes", "raise --memory-budget to at least"],
                   tmp_path / "a")
    assert "memory_budget" not in res.output
    cfg = tmp_path / "c.toml"
    cfg.write_text("memory_budget = 1000\nsamples = 10\n[[problem]]\narch = '2-5-5-1'\n")
    res = invoke(["run", "--config", str(cfg), "--estimators", "psa", "--out", str(tmp_path / "b")])
    assert_refused(res, 1, ["exceeds memory_budget=1,000 bytes"], tmp_path / "b")
    # a name in quotes is not the setting: a problem called max_exact_bytes keeps its name
    cfg.write_text("[[problem]]\nname = 'max_exact_bytes'\narch = '2-2-1'\ndata_points = 3\n")
    res = invoke(["run", "--config", str(cfg), "--no-throughput", "--max-exact-bytes", "10",
                  "--out", str(tmp_path / "c")])
    assert_refused(res, 2, ["problem 'max_exact_bytes'", "over --max-exact-bytes=10 bytes"],
                   tmp_path / "c")
    # on --resume the budget is the manifest's, which --memory-budget could not change
    small = ["run", "--arch", "2-5-5-1", "--estimators", "reinforce", "--samples", "8", "--M", "1,2",
             "--no-throughput", "--no-report", "-q", "--memory-budget", "250KB", "--out",
             str(tmp_path / "d")]
    assert invoke(small).exit_code == 0
    res = invoke(["run", "--resume", "--out", str(tmp_path / "d"), "--estimators", "reinforce,psa",
                  "-q", "--no-report"])
    assert res.exit_code == 1 and "raise memory_budget to at least" in res.output, res.output


def test_resume_without_out_says_what_it_needs() -> None:
    """``run --resume`` alone asked for a problem ("give exactly one of --problem FILE, …"),
    though a resume needs the run's folder."""
    res = invoke(["run", "--resume"])
    assert res.exit_code == 2 and "--resume continues the run in --out DIR" in res.output, res.output


def test_no_problem_names_every_way_to_give_one(tmp_path: Path) -> None:
    """``run`` with no problem named --problem, --arch and --preset only, not --config or a
    resume (new-user review); the other commands take those three only."""
    res = invoke(["run"])
    assert res.exit_code == 2 and "--preset paper or --config FILE (none was given), or --out DIR " \
        "--resume to continue a run" in " ".join(res.output.split()), res.output
    res = invoke(["exact"])
    assert res.exit_code == 2 and "--arch 2-5-5-5-1 or --preset paper (none was given)" in res.output
    assert "--config" not in res.output


def test_a_missing_arch_file_is_a_usage_error_as_a_missing_problem_file(tmp_path: Path) -> None:
    """``--arch missing.json`` was exit 1 ("cannot read the layer list file") where ``--problem
    missing.npz`` is exit 2; both are now the option's refusal."""
    for cmd in ("exact", "run"):
        res = invoke([cmd, "--arch", str(tmp_path / "missing.json")])
        assert res.exit_code == 2, res.output
        assert "Invalid value for '--arch'" in res.output and "there is no layer list file" in res.output
    (tmp_path / "dir.json").mkdir()
    res = invoke(["exact", "--arch", str(tmp_path / "dir.json")])
    assert res.exit_code == 2 and "(it is a folder)" in res.output, res.output


def test_hints_name_the_option_alone_on_the_command_line(tmp_path: Path) -> None:
    """The library's hints name a setting both ways ("resume that run (resume=True, --resume)");
    the command line shows the option alone (new-user review), the Python API both."""
    from sbn_bench.cli.base import options_only

    args = ["run", "--arch", "2-3-1", "--samples", "50", "--estimators", "st", "--no-throughput",
            "--no-report", "-q", "--out", str(tmp_path / "r")]
    assert invoke(args).exit_code == 0
    res = invoke(args)
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "resume that run (--resume) or choose another output folder " \
        "(--out)" in text and "resume=True" not in text, res.output
    assert options_only("(raise it with max_bytes= / --max-exact-bytes, or)") == \
        "(raise it with --max-exact-bytes, or)"
    assert options_only("pass resume=True (--resume) to finish it, or overwrite=True "
                        "(--overwrite) to remove them") == \
        "pass --resume to finish it, or --overwrite to remove them"
    kept = "a problem named 'resume=True, --resume' or /p/out=…, --out"  # quoted, a path
    assert options_only(kept) == kept
    with pytest.raises(Exception, match=r"\(resume=True, --resume\)"):  # the API keeps both
        runner.run(runner.config_from_manifest(tmp_path / "r" / "manifest.json"))


def test_a_reference_cache_that_cannot_be_written_is_refused_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device or a file as the Monte-Carlo reference's cache failed every cell, the cause in
    failures.csv only (attacker review): refused before any work, nothing written."""
    args = ["run", "--arch", "2-2-1", "--estimators", "st", "--samples", "50", "--no-throughput",
            "--no-report", "-q", "--reference", "mc:reinforce:100"]
    res = invoke([*args, "--reference-cache", "/dev/null", "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "Invalid value for '--reference-cache': '/dev/null': cannot " \
        "write there (Not a directory)" in " ".join(res.output.split()), res.output
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SBN_BENCH_CACHE", str(tmp_path / "file"))
    res = invoke([*args, "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "(from $SBN_BENCH_CACHE or the default): cannot write there" \
        in " ".join(res.output.split()), res.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

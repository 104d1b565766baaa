"""The Python API refuses arguments of the wrong kind or range by name (an ``SbnBenchError`` whose
``argument`` is the parameter), never with an ``AttributeError``/``TypeError``/``KeyError`` from
inside, a silently ignored value or a wrong result. Each case was found by an audit of the API
(a value that passed, or failed deep inside)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sbn_bench as sb
from sbn_bench.config import ConfigError, ProblemSpec, RunConfig
from sbn_bench.errors import SbnBenchError
from sbn_bench.estimators import adapt_estimator, estimate, load_registry
from sbn_bench.runner.mcref import mc_reference
from sbn_bench.train import train


@pytest.fixture(scope="module")
def prob() -> sb.Problem:
    return sb.random_problem("2-3-1", 0, data_points=5)


def _refused(fn, argument: str, *words: str) -> None:
    with pytest.raises(SbnBenchError) as e:
        fn()
    assert e.value.argument == argument, (e.value.argument, str(e.value))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_a_wrong_object_is_refused_by_name(prob, tmp_path) -> None:
    est = load_registry().create("reinforce")
    for fn in (lambda: sb.exact_gradient(None), lambda: sb.exact_objective(None),
               lambda: estimate(est, None, 3, torch.Generator()),
               lambda: mc_reference(None, estimator="reinforce", samples=10),
               lambda: sb.save_problem("abc", tmp_path / "x.npz")):
        _refused(fn, "problem", "expected a Problem")
    _refused(lambda: train(None, "st", epochs=1, batch_size=2, out_dir=tmp_path / "t"), "problem")
    _refused(lambda: train(prob, None, epochs=1, batch_size=2, out_dir=tmp_path / "t"), "estimator")
    _refused(lambda: train(prob, "st", epochs=2, checkpoints=5, batch_size=2, out_dir=tmp_path / "t"),
             "checkpoints", "not a sequence")
    _refused(lambda: adapt_estimator("nvil", prob, 2, 0), "estimator", "expected an Estimator")
    _refused(lambda: sb.run(None), "config", "expected a RunConfig")
    with pytest.raises(SbnBenchError, match="is a NoneType; expected a string"):
        load_registry().create(None)
    _refused(lambda: sb.random_problem(None, 0), "arch")
    _refused(lambda: sb.load_problem(None), "path")
    with pytest.raises(SbnBenchError, match="array 'weight_1' is a ndarray, expected a torch.Tensor"):
        sb.Problem(params={k: v.numpy() for k, v in prob.params.items()}, x=prob.x, y=prob.y)
    with pytest.raises(SbnBenchError, match="array 'x' is a list"):
        sb.Problem(params=prob.params, x=prob.x.tolist(), y=prob.y)
    with pytest.raises(SbnBenchError, match="'reinforce' is not an estimator spec") as e:
        mc_reference(prob, estimator=est, samples=10)
    assert len(str(e.value)) < 200  # not the estimator's whole repr
    assert not (tmp_path / "t").exists() and not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("seed", [-1, 2**64, "x", True, 1.0])
def test_seeds_are_checked_everywhere(prob, seed) -> None:
    from sbn_bench.data import load_digits

    for fn in (lambda: sb.paper_problem(seed), lambda: sb.preset_problem("quick", seed),
               lambda: sb.random_problem("2-3-1", seed), lambda: load_digits("train", "dynamic", seed),
               lambda: mc_reference(prob, estimator="reinforce", samples=10, seed=seed)):
        _refused(fn, "seed", "[0, 2^63)")
    assert sb.paper_problem(np.int64(3)).name == "paper-seed3"  # a numpy integer is a seed


@pytest.mark.parametrize("bad", [math.nan, -1, 0, "1GiB", 1.5])
def test_byte_limits_are_whole_numbers(prob, tmp_path, bad) -> None:
    """nan turned the exact reference's limit off, and a file's limit too."""
    _refused(lambda: sb.exact_gradient(prob, max_bytes=bad), "max_bytes", "whole number of bytes")
    path = sb.save_problem(prob, tmp_path / "p.npz")
    _refused(lambda: sb.load_problem(path, max_bytes=bad), "max_bytes")
    _refused(lambda: mc_reference(prob, estimator="reinforce", samples=10, memory_budget=bad),
             "memory_budget")


def test_a_reference_refuses_an_unknown_device_or_dtype(prob) -> None:
    _refused(lambda: mc_reference(prob, estimator="reinforce", samples=10, dtype="float16"), "dtype")
    _refused(lambda: mc_reference(prob, estimator="reinforce", samples=10, device="bogus"), "device")


def test_values_that_would_be_dropped_or_misread_are_refused(tmp_path) -> None:
    _refused(lambda: sb.random_problem("2-3-1", 0, kl="sampled"), "kl", "loss 'vae' only")
    _refused(lambda: ProblemSpec(arch="2-3-1", kl="sampled"), "kl", "loss 'vae' only")
    assert sb.random_problem("4-3-4", 0, loss="vae", kl="sampled").kl == "sampled"
    _refused(lambda: ProblemSpec(arch="2-3-1", checkpoints=("init",)), "checkpoints", "Checkpoint(")
    spec = (ProblemSpec(arch="2-3-1"),)
    _refused(lambda: RunConfig(problems=spec, resume="no"), "resume", "true or false")
    _refused(lambda: RunConfig(problems=spec, out=123), "out", "folder path")
    _refused(lambda: RunConfig(problems=None), "problems", "a list of them")  # was a TypeError
    _refused(lambda: RunConfig(problems=()), "problems", "at least one problem")
    _refused(lambda: RunConfig(problems=["2-3-1"]), "problems", "ProblemSpec objects, got str")
    assert RunConfig(problems=(s for s in spec)).problems == spec  # any iterable, as before
    _refused(lambda: sb.random_problem("1x4x4-c0k3-1", 0), "arch", "at least one channel")
    _refused(lambda: sb.save_problem(sb.random_problem("2-3-1", 0), tmp_path), "path", "it is a folder")


def test_experiment_settings_of_the_wrong_kind(tmp_path) -> None:
    from sbn_bench.paper import run_paper
    from sbn_bench.train_study import run_study

    _refused(lambda: run_paper(out=tmp_path / "p", samples=10, training={"bogus": 1}), "training", "bogus")
    _refused(lambda: run_study("digits-vae-exact", out=tmp_path / "s", estimators=["st"], seeds=[0],
                               settings={"epochs": 1}), "settings", "StudySettings")
    assert not (tmp_path / "p").exists() and not (tmp_path / "s").exists()


def test_values_that_were_accepted_before_the_checks_still_are(prob, tmp_path) -> None:
    """The checks above refuse what is wrong and nothing that worked: numpy integers and whole
    floats as sizes, ``inf`` as no limit, a ``torch.device``, a numpy array of widths, a Path as
    the reference cache."""
    j = sb.exact_objective(prob)
    for limit in (np.int64(2**30), 4e9, math.inf):
        assert sb.exact_gradient(prob, limit)[0] == j
    path = sb.save_problem(prob, tmp_path / "p.npz")
    assert sb.load_problem(path, max_bytes=1e8).fingerprint() == sb.load_problem(path).fingerprint()
    assert sb.load_problem(path, max_bytes=math.inf).fingerprint() == sb.load_problem(path).fingerprint()
    base = mc_reference(prob, estimator="reinforce", samples=20)
    for kw in ({"memory_budget": np.int64(2**30)}, {"memory_budget": 1e9}, {"device": torch.device("cpu")}):
        ref = mc_reference(prob, estimator="reinforce", samples=20, **kw)
        assert torch.equal(ref.gradient, base.gradient), kw  # the same chunks: the same samples
    assert sb.random_problem(np.array([2, 3, 1]), 0, data_points=5).widths == (2, 3, 1)
    cfg = RunConfig(problems=(ProblemSpec(arch="2-3-1"),), reference_cache=tmp_path / "cache")
    assert cfg.reference_cache == str(tmp_path / "cache")


@pytest.mark.parametrize("make, argument, value", [
    (lambda: ProblemSpec(arch=231), "arch", 231),
    (lambda: ProblemSpec(preset="nope"), "preset", "nope"),
    (lambda: ProblemSpec(arch="2-3-1", loss="hinge"), "loss", "hinge"),
    (lambda: ProblemSpec(arch="2-3-1", seed=-1), "seed", -1),
    (lambda: RunConfig(problems=ProblemSpec(arch="2-3-1"), memory_budget=-1), "memory_budget", -1),
    (lambda: RunConfig(problems=ProblemSpec(arch="2-3-1"), samples=0), "samples", 0),
    (lambda: sb.load_problem("nope.npz"), "path", "nope.npz"),
])
def test_errors_carry_the_value_and_what_was_expected(make, argument, value) -> None:
    """The README's contract: argument, value and expected (these had value UNSET and expected
    None)."""
    with pytest.raises(SbnBenchError) as e:
        make()
    assert (e.value.argument, e.value.value) == (argument, value)
    assert isinstance(e.value.expected, str) and e.value.expected


def test_a_plugin_file_error_names_the_argument_and_the_file(tmp_path) -> None:
    """Its argument was "plugin file 'x.py'" (the value inside the argument's name)."""
    from sbn_bench.estimators.registry import PluginFileError, load_plugins

    missing = tmp_path / "missing.py"
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('no')\n")
    for path in (missing, broken):
        with pytest.raises(PluginFileError) as e:
            load_plugins([path])
        assert (e.value.argument, e.value.value) == ("plugins", str(path)), path
        assert e.value.expected and str(path) in str(e.value)


def test_run_config_takes_what_the_command_line_and_toml_take() -> None:
    """Sizes with units and the named M grids, as --memory-budget 1GiB and --M paper take them
    (they were refused from Python), each checked as there."""
    from sbn_bench.config import default_m_grid, paper_m_grid

    spec = ProblemSpec(arch="2-3-1")
    cfg = RunConfig(problems=spec, memory_budget="1GiB", max_exact_bytes="2GB", samples=2000,
                    M="paper")
    assert (cfg.memory_budget, cfg.max_exact_bytes) == (2**30, 2 * 10**9)
    assert cfg.M == tuple(paper_m_grid(2000))
    assert RunConfig(problems=spec, samples=100, M="default").M == tuple(default_m_grid(100))
    _refused(lambda: RunConfig(problems=spec, memory_budget="1XB"), "memory_budget", "'512MiB'")
    _refused(lambda: RunConfig(problems=spec, M="most"), "M", "'1,10,100', 'default' or 'paper'")
    _refused(lambda: RunConfig(problems=spec, M="paper", samples=0), "samples", "≥ 1")


def test_an_error_without_a_value_says_so_and_keeps_it_across_processes() -> None:
    """``value`` of an error that records none is the falsy singleton ``SbnBenchError.UNSET``,
    written ``UNSET`` (not ``<object object at 0x…>``), still itself after pickling (errors travel
    back from worker processes)."""
    import pickle

    from sbn_bench.errors import ArgumentError, SbnBenchError

    e = ArgumentError("x must be positive", argument="x")
    assert e.value is SbnBenchError.UNSET and repr(e.value) == "UNSET" and not e.value
    assert pickle.loads(pickle.dumps(e)).value is SbnBenchError.UNSET
    assert ArgumentError("x", argument="x", value=None).value is None  # None is a recorded value


@pytest.mark.parametrize("make, argument", [
    (lambda P: RunConfig(problems=P, seeds=()), "seeds"),
    (lambda P: RunConfig(problems=P, throughput={"rounds": 3}), "throughput"),
    (lambda P: ProblemSpec(arch="2-2-1", preset="paper"), "problem"),
    (lambda P: RunConfig(problems=(ProblemSpec(arch="2-2-1", name="a"),
                                   ProblemSpec(arch="2-3-1", name="a"))), "problems"),
])
def test_config_errors_name_their_argument(make, argument: str) -> None:
    """The README says every SbnBenchError carries its argument; these had argument=None."""
    with pytest.raises(ConfigError) as e:
        make((ProblemSpec(arch="2-2-1"),))
    assert e.value.argument == argument, e.value


def test_numpy_integers_are_integers_everywhere(tmp_path) -> None:
    """estimate() took np.int64 sample counts while RunConfig and train refused them ('must be an
    integer'); they are taken as Python ints (the manifests' JSON needs those)."""
    import json

    from sbn_bench import runner
    from sbn_bench.config import ThroughputConfig
    from sbn_bench.train import train

    cfg = RunConfig(problems=(ProblemSpec(arch="2-2-1", data_points=np.int64(4), seed=np.int32(1)),),
                    estimators=("st",), samples=np.int64(20), M=np.array([1, 4]),
                    seeds=np.arange(1), throughput=ThroughputConfig(enabled=False),
                    out=str(tmp_path / "run"))
    assert type(cfg.samples) is int and all(type(m) is int for m in cfg.M)
    assert type(cfg.problems[0].data_points) is int and cfg.seeds == (0,) and type(cfg.seeds[0]) is int
    runner.run(cfg)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["samples"] == 20
    res = train(sb.random_problem("2-3-1", 0, data_points=8), "st", epochs=np.int64(2),
                batch_size=np.int32(4), seed=np.int64(1), out_dir=tmp_path / "t")
    assert res.manifest["config"]["epochs"] == 2 and res.manifest["steps"] == 4
    with pytest.raises(SbnBenchError, match="samples=True"):  # a bool is still no integer
        RunConfig(problems=(ProblemSpec(arch="2-2-1"),), samples=True)


def test_estimate_beyond_the_machines_memory_is_a_clear_error() -> None:
    """``estimate(psa, problem, 10**12, g)`` leaked torch's raw allocation RuntimeError (the README
    calls any other exception a bug; attacker review): an SbnBenchError naming num_samples."""
    import torch

    import sbn_bench as sb
    from sbn_bench.errors import SbnBenchError
    from sbn_bench.estimators import load_registry

    psa = load_registry().create("psa")
    with pytest.raises(SbnBenchError, match=r"num_samples=1000000000000: the estimate of 'psa' "
                                            r"needs more memory than this machine has") as e:
        sb.estimate(psa, sb.random_problem("2-2-1", 0), 10**12, torch.Generator())
    assert e.value.argument == "num_samples" and isinstance(e.value, MemoryError)


def test_paths_params_and_widths_of_the_wrong_kind_are_refused_by_name(prob, tmp_path) -> None:
    """Found by an attacker review: each of these raised a raw TypeError, KeyError, ValueError,
    AttributeError or RuntimeError from inside, or (a string, float or bool widths) went on with
    something else than was given."""
    from sbn_bench.estimators import load_plugins
    from sbn_bench.reports import write_report
    from sbn_bench.train_report import failed_studies, render_published, write_training_report
    from sbn_bench.train_study import load_study, resume_study

    for fn, arg in ((lambda: sb.resume_config(None), "out"), (lambda: sb.load_config(None), "path"),
                    (lambda: resume_study(None), "out"), (lambda: write_training_report(None), "out"),
                    (lambda: render_published(None), "out"), (lambda: failed_studies(None), "out"),
                    (lambda: load_study(5), "out"), (lambda: write_report(None), "run_dir"),
                    (lambda: write_report(b"r1"), "run_dir"),
                    (lambda: write_report(tmp_path, compare_dir=5), "compare_dir"),
                    (lambda: write_report(tmp_path, out_dir=5), "out_dir"),
                    (lambda: write_report(tmp_path, formats=None), "formats"),
                    (lambda: write_report(tmp_path, sigma="3"), "sigma"),
                    (lambda: write_report(tmp_path, sections=5), "sections")):
        _refused(fn, arg)
    for bad in (None, 5, [5], [None], b"x"):
        _refused(lambda bad=bad: load_plugins(bad), "plugins", "a path or a list of paths")
        _refused(lambda bad=bad: load_registry(bad), "plugins")
        _refused(lambda bad=bad: train(prob, "st", epochs=1, out_dir=tmp_path / "t", plugins=bad),
                 "plugins")
    # one path as a string is that file (it was read as its characters, and never raised)
    _refused(lambda: load_plugins(str(tmp_path / "missing.py")), "plugins", "does not exist")
    for arch in (["2-3-1"], [2, 3, None], [2, 3, "x"], [2.5, 3, 1], [True, 3, 1], {2: 1, 3: 1, 1: 1}):
        _refused(lambda arch=arch: sb.random_problem(arch, 0), "arch", "a sequence of integers")
    assert sb.random_problem(np.array([2, 3, 1]), 0).arch == "2-3-1"
    params = dict(prob.params)
    for bad, words in (({}, "has no 'bias_1'"), ({**params, "w": params["bias_1"]}, "unknown 'w'"),
                       ("x", "is a str"), ({k: v.numpy() for k, v in params.items()}, "is a ndarray"),
                       ({**params, "weight_1": params["weight_1"].T}, "has shape (2, 3)"),
                       ({**params, "bias_1": params["bias_1"].long()}, "of torch.int64")):
        _refused(lambda bad=bad: sb.exact_objective(prob, bad), "params", words)
    _refused(lambda: prob.with_params(None), "params", "is a NoneType")
    assert float(sb.exact_objective(prob, params)) == pytest.approx(float(sb.exact_objective(prob)))
    assert not (tmp_path / "t").exists()


def test_more_arguments_of_the_wrong_kind_are_refused_by_name(prob) -> None:
    """The rest of the attacker review's list: raw TypeError/ValueError/IndexError/RuntimeError,
    or (an integer dtype, negative widths or data points) a result that was silently wrong."""
    from sbn_bench.reference import enumerate_paths, estimate_cost, path_log_probs
    from sbn_bench.train_study import preset_settings

    _refused(lambda: load_registry().create_many(None), "estimators", "is a NoneType")
    _refused(lambda: preset_settings("digits-vae-exact", epochs="2"), "epochs", "an integer")
    _refused(lambda: preset_settings("digits-vae-exact", probe_epochs="0,1"), "probe_epochs")
    _refused(lambda: ProblemSpec(arch="2-3-1", checkpoints=5), "checkpoints", "Checkpoint")
    _refused(lambda: prob.to(dtype=torch.int64), "dtype", "floating")
    _refused(lambda: prob.to(dtype="float32"), "dtype", "floating")
    _refused(lambda: prob.to(device="nope"), "device", "is not a torch device")
    for widths in (None, (2,), "2-3-1", (2, -3, 1), (2, 3.0, 1)):
        _refused(lambda widths=widths: estimate_cost(widths, 5), "widths")
    for D in (-1, 0, 2.5, None):
        _refused(lambda D=D: estimate_cost((2, 3, 1), D), "num_data")
    _refused(lambda: path_log_probs(prob, []), "paths", "tensor of 0s and 1s per stochastic layer")
    paths5 = [5 * t for t in enumerate_paths(prob.widths, torch.float64, torch.device("cpu"))]
    _refused(lambda: path_log_probs(prob, paths5), "paths", "0s and 1s")
    paths = enumerate_paths(prob.widths, torch.float64, torch.device("cpu"))
    assert path_log_probs(prob, paths)[1].shape == (2 ** prob.widths[1],)
    assert preset_settings("digits-vae-exact", epochs=2, probe_epochs=[2, 0]).probe_epochs == (0, 2)
    # second review: numpy's numbers are taken where train() takes them; unordered or byte archs,
    # unavailable devices and presets that are not a list are refused by name
    s = preset_settings("digits-vae", epochs=np.int64(2), batch_size=np.int64(10),
                        lr=np.float32(0.01), probe_epochs=np.array([0, 2]))
    assert (s.epochs, s.batch_size, s.probe_epochs) == (2, 10, (0, 2)) and type(s.epochs) is int
    for arch in (b"2-3-1", {5, 3, 2}, (w for w in (2, 3, 1))):
        _refused(lambda arch=arch: sb.random_problem(arch, 0), "arch")
    assert sb.random_problem(torch.tensor([2, 3, 1]), 0).arch == "2-3-1"
    _refused(lambda: prob.to(device="meta"), "device", "holds no data")
    _refused(lambda: prob.to(dtype=torch.float8_e4m3fn), "dtype")
    if not torch.cuda.is_available():
        _refused(lambda: prob.to(device="cuda"), "device", "cannot hold the problem here")
    _refused(lambda: sb.exact_objective(prob, {k: v.to("meta") for k, v in prob.params.items()}),
             "params", "is on meta")
    from sbn_bench.train_report import failed_studies, render_published
    for presets in ("digits-vae", ["st1"], None):
        _refused(lambda presets=presets: failed_studies("reports/training-digits", presets=presets),
                 "presets")
        _refused(lambda presets=presets: render_published("reports/training-digits", presets=presets),
                 "presets")


def test_training_arguments_carry_their_value_and_what_was_expected(prob, tmp_path) -> None:
    """TrainArgumentError named the argument only (value UNSET, expected None), where the README
    says the library's errors carry all three, as ConfigError and ProblemError do."""
    import sbn_bench.train_study as ts

    for kw, arg, value, expected in ((dict(epochs=0), "epochs", 0, "≥ 1"),
                                     (dict(lr=-1.0), "lr", -1.0, "> 0"),
                                     (dict(batch_size=0), "batch_size", 0, "≥ 1"),
                                     (dict(momentum=2.0), "momentum", 2.0, "[0, 1)"),
                                     (dict(plugins=3), "plugins", 3, "path"),
                                     (dict(num_threads=0), "num_threads", 0, "≥ 1"),
                                     (dict(checkpoints=[9]), "checkpoints", [9], "1..1")):
        with pytest.raises(SbnBenchError) as e:
            train(prob, "st", out_dir=tmp_path / "t", **{"epochs": 1, "batch_size": 2, **kw})
        assert (e.value.argument, e.value.value) == (arg, value), kw
        assert expected in (e.value.expected or ""), (kw, e.value.expected)
    for kw, arg in ((dict(lr=0.0), "lr"), (dict(batch_size=0), "batch_size"),
                    (dict(probe_epochs=(0, 10**4)), "probe_epochs")):
        with pytest.raises(SbnBenchError) as e:
            ts.preset_settings("digits-vae-exact", **kw).check()
        assert e.value.argument == arg and e.value.value == kw[arg] and e.value.expected, kw
    with pytest.raises(SbnBenchError) as e:
        ts.run_study("digits-vae-exact", out=tmp_path / "s", seeds=[1, 1])
    assert (e.value.argument, e.value.value) == ("seeds", [1, 1]) and "distinct" in e.value.expected
    assert not (tmp_path / "t").exists() and not (tmp_path / "s").exists()


def test_run_config_reads_plugins_and_estimators_as_train_does(tmp_path) -> None:
    """RunConfig split b"rb.py" into the files '114', '98', …, turned [1, 2] into files '1' and
    '2', took a dict's keys and raised a raw TypeError for None (attacker review); it reads
    plugins as load_plugins, train and run_study do: one path or a list of paths. In a TOML file
    one string is one file as well, as estimators = "psa" is one spec."""
    import os

    from sbn_bench.config import load_config

    class BytesPath(os.PathLike):
        def __fspath__(self):  # type: ignore[no-untyped-def]
            return b"x.py"

    spec = ProblemSpec(arch="2-3-1")
    for bad in (b"rb.py", None, [1, 2], {"rb.py": 1}, (p for p in ["a.py"]), "", [""], BytesPath()):
        _refused(lambda bad=bad: RunConfig(problems=(spec,), plugins=bad), "plugins",
                 "a path or a list of paths")
    for bad in (b"psa", ["psa", 3]):
        _refused(lambda bad=bad: RunConfig(problems=(spec,), estimators=bad), "estimators",
                 "a list of estimator specs")
    assert RunConfig(problems=(spec,), plugins=tmp_path / "a.py").plugins == (str(tmp_path / "a.py"),)
    cfg = tmp_path / "c.toml"
    cfg.write_text("plugins = 'mine.py'\n[[problem]]\narch = '2-3-1'\n", encoding="utf-8")
    assert load_config(cfg).plugins == (str(tmp_path / "mine.py"),)

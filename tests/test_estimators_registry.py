"""The estimator registry: discovery from the entry-point group ``sbn_bench.estimators`` and plugin
files, checking of plugins when they load, and parsing of estimator specs with clear errors."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from sbn_bench.estimators import GROUP, EstimatorSpecError, load_registry, registry, split_specs
from sbn_bench.estimators.builtin import BUILTINS as BUILTIN_FACTORIES

PLUGINS = Path(__file__).parent / "plugins"
BUILTINS = set(BUILTIN_FACTORIES)


@pytest.fixture(scope="module")
def reg() -> registry.Registry:
    return load_registry()


# --------------------------------------------------------------------------------------------
# discovery


def test_builtins_come_from_our_entry_points(reg: registry.Registry) -> None:
    """The package is installed (editable), so its own pyproject registers every built-in through
    the same entry-point group a third party would use, pointing at the factory in its family's
    module (the entry points and ``BUILTINS`` agree)."""
    eps = {ep.name: ep for ep in metadata.entry_points(group=GROUP)}
    assert set(eps) >= BUILTINS
    for name in BUILTINS:
        assert eps[name].value.startswith("sbn_bench.estimators.builtin."), eps[name].value
        assert eps[name].load() is BUILTIN_FACTORIES[name], name
    eps = {name: ep.value for name, ep in eps.items()}
    assert set(reg.names()) >= BUILTINS
    assert reg.errors == []
    for name in BUILTINS:
        assert reg.origins[name] == f"entry point {name} = {eps[name]}", reg.origins[name]


def test_builtins_without_entry_points_fall_back_to_the_module() -> None:
    reg = load_registry(entry_points=False)
    assert set(reg.names()) == BUILTINS
    assert all(reg.origins[n].startswith("built-in sbn_bench.estimators.builtin.") for n in BUILTINS)


def test_plugin_file_registers_its_estimators() -> None:
    path = PLUGINS / "thirdparty_estimators.py"
    reg = load_registry(plugins=[path])
    assert reg.errors == []
    assert set(reg.names()) == BUILTINS | {"reinforce-cb", "mf-noise"}
    assert reg.origins["mf-noise"] == f"plugin file {str(path)!r}"
    est = reg.create("mf-noise:sigma=0.25")
    assert (est.name, dict(est.hyperparams)) == ("mf-noise", {"sigma": 0.25})


def test_broken_plugins_are_recorded_by_name_and_origin_without_stopping_the_others() -> None:
    broken = PLUGINS / "broken_estimators.py"
    at_import = PLUGINS / "raises_at_import.py"
    missing = PLUGINS / "does_not_exist.py"
    no_table = PLUGINS / "no_table.py"
    good = PLUGINS / "thirdparty_estimators.py"
    reg = load_registry(plugins=[broken, at_import, missing, no_table, good])
    # everything valid still loaded, the built-in psa kept against the clashing plugin
    assert set(reg.names()) == BUILTINS | {"fine-one", "reinforce-cb", "mf-noise"}
    assert reg.origins["psa"].startswith("entry point psa")
    errors = {(e.name, e.origin): e.message for e in reg.errors}
    origin = f"plugin file {str(broken)!r}"
    expected = {
        "positional": "parameter 'tau' must be keyword-only with a default",
        "no-default": "parameter 'tau' must be keyword-only with a default",
        "wrong-type": "returned dict, expected an sbn_bench.Estimator",
        "wrong-name": "returned an estimator named 'not-the-registered-name'",
        "raises": "RuntimeError: this factory always fails",
        "bad-randomness": "randomness 'sometimes' is not one of path, continuous, none",
        "not-callable": "is not callable",
        "psa": "name already registered by entry point psa",
    }
    for name, text in expected.items():
        assert text in errors.get((name, origin), ""), (name, errors.get((name, origin)))
    file_errors = {
        ("raises_at_import", f"plugin file {str(at_import)!r}"): "failed to import: ImportError",
        ("does_not_exist", f"plugin file {str(missing)!r}"): "does not exist",
        ("no_table", f"plugin file {str(no_table)!r}"): "defines no ESTIMATORS dict",
    }
    for key, text in file_errors.items():
        assert text in errors.get(key, ""), (key, errors.get(key))
    assert len(reg.errors) == len(expected) + len(file_errors), [str(e) for e in reg.errors]
    # the string form names the estimator and where it came from
    assert str(next(e for e in reg.errors if e.name == "wrong-type")).startswith(
        f"estimator 'wrong-type' from {origin}: ")
    # asking for a broken estimator says why it is missing
    with pytest.raises(EstimatorSpecError, match=r"estimator 'raises' failed to load: .*always fails"):
        reg.create("raises")


def test_broken_entry_point_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    real = list(metadata.entry_points(group=GROUP))
    ghost = metadata.EntryPoint(name="ghost", value="sbn_bench_no_such_module:factory", group=GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: [ghost, *real])
    reg = load_registry()
    assert set(reg.names()) == BUILTINS
    (err,) = reg.errors
    assert err.name == "ghost"
    assert err.origin == "entry point ghost = sbn_bench_no_such_module:factory"
    assert "ModuleNotFoundError" in err.message


# --------------------------------------------------------------------------------------------
# specs


@pytest.mark.parametrize(("spec", "name", "hyperparams"), [
    ("psa", "psa", {}),
    ("concrete:tau=0.1", "concrete", {"tau": 0.1}),
    (" concrete : tau = 0.1 ", "concrete", {"tau": 0.1}),
    ("concrete", "concrete", {"tau": 1.0}),
    ("st-gumbel:tau=2", "st-gumbel", {"tau": 2.0}),
    ("reinforce-loo:k=4", "reinforce-loo", {"k": 4}),
    ("reinforce-loo", "reinforce-loo", {"k": 2}),
])
def test_spec_parsing(reg: registry.Registry, spec: str, name: str, hyperparams: dict) -> None:
    est = reg.create(spec)
    assert (est.name, dict(est.hyperparams)) == (name, hyperparams)
    for key, value in hyperparams.items():
        assert type(dict(est.hyperparams)[key]) is type(value)
    assert reg.create(est.spec).hyperparams == est.hyperparams  # the spec round-trips


def test_spec_lists(reg: registry.Registry) -> None:
    ests = reg.create_many("psa,concrete:tau=0.1,st")
    assert [(e.name, dict(e.hyperparams)) for e in ests] == [("psa", {}), ("concrete", {"tau": 0.1}), ("st",
                                                                                                       {})]
    assert split_specs("reinforce-loo:k=4,concrete:tau=0.5,st") == ["reinforce-loo:k=4", "concrete:tau=0.5",
                                                                     "st"]
    assert [e.spec for e in reg.create_many(["arm", "concrete:tau=0.5"])] == ["arm", "concrete:tau=0.5"]
    with pytest.raises(EstimatorSpecError, match="argument estimators is empty"):
        reg.create_many("")


@pytest.mark.parametrize(("spec", "suggestion"), [
    ("concret", "'concrete'"), ("reinforce-lo", "'reinforce-loo'"), ("disram", "'disarm'"),
    ("st_gumbel", "'st-gumbel'"),
])
def test_unknown_estimator_suggests_close_names(reg: registry.Registry, spec: str, suggestion: str) -> None:
    with pytest.raises(EstimatorSpecError) as info:
        reg.create(spec)
    msg = str(info.value)
    assert f"estimator {spec!r} is unknown" in msg and "did you mean" in msg and suggestion in msg, msg
    assert f"Known estimators: {', '.join(sorted(BUILTINS))}" in msg, msg


def test_unknown_estimator_without_close_name_lists_all(reg: registry.Registry) -> None:
    with pytest.raises(EstimatorSpecError,
                       match=r"'zzzz' is unknown.*Known estimators: ap2, arm, .*tanh") as info:
        reg.create("zzzz")
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize(("spec", "key", "valid"), [
    ("concrete:temp=0.1", "temp", "tau"), ("reinforce-loo:K=4", "K", "k"), ("psa:tau=1", "tau", "none"),
])
def test_unknown_hyperparameter_lists_the_valid_ones(reg: registry.Registry, spec: str, key: str,
                                                     valid: str) -> None:
    with pytest.raises(EstimatorSpecError) as info:
        reg.create(spec)
    msg = str(info.value)
    assert f"has no hyperparameter {key!r}" in msg and f"its hyperparameters: {valid}" in msg, msg


@pytest.mark.parametrize(("spec", "expected"), [
    ("concrete:tau=0", "tau=0.0 must be > 0"),
    ("concrete:tau=-1", "tau=-1.0 must be > 0"),
    ("st-gumbel:tau=0", "tau=0.0 must be > 0"),
    ("concrete:tau=nan", "tau=nan must be"),
    ("concrete:tau=inf", "tau=inf must be"),
    ("reinforce-loo:k=1", "k=1 must be an integer ≥ 2"),
    ("reinforce-loo:k=0", "k=0 must be an integer ≥ 2"),
    ("concrete:tau=abc", "tau='abc' is not a valid float"),
    ("reinforce-loo:k=2.5", "k='2.5' is not a valid int"),
    ("concrete:tau", "'tau' is not key=value"),
    ("concrete:tau=0.1,tau=5", "gives 'tau' twice"),
    (":tau=1", "has no name"),
])
def test_bad_values_are_refused_naming_the_argument(reg: registry.Registry, spec: str, expected: str) -> None:
    with pytest.raises(EstimatorSpecError) as info:
        reg.create(spec)
    assert expected in str(info.value), str(info.value)


# --------------------------------------------------------------------------------------------
# hostile plugins


def _plugin(tmp_path: Path, body: str, name: str = "hostile.py") -> Path:
    import textwrap

    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def test_a_plugin_named_like_a_builtin_is_refused_when_requested(tmp_path: Path) -> None:
    from sbn_bench.estimators import PluginFileError, load_plugins

    p = _plugin(tmp_path, """
        from sbn_bench.estimators.builtin.straight_through import st

        def psa():
            e = st()
            import dataclasses
            return dataclasses.replace(e, name="psa")

        ESTIMATORS = {"psa": psa}
    """)
    with pytest.raises(PluginFileError, match=r"defines estimator 'psa', a name already registered "
                                              r"by entry point psa.*rename") as info:
        load_plugins([p], ["psa"])
    assert (info.value.argument, info.value.value) == ("plugins", str(p))  # "psa" in the message
    reg, warnings = load_plugins([p], ["st"])  # not requested: a warning, and psa is the built-in
    assert any("'psa'" in w and "already registered" in w for w in warnings)
    assert reg.origins["psa"].startswith("entry point psa")
    # a *broken* factory under a taken name clashes too (it was recorded as merely broken, and a
    # run that asked for psa measured the built-in without a word)
    broken = _plugin(tmp_path, """
        def psa(**kw):
            raise ValueError("broken")

        ESTIMATORS = {"psa": psa}
    """, name="broken.py")
    with pytest.raises(PluginFileError, match=r"defines estimator 'psa', a name already registered"):
        load_plugins([broken], ["psa"])


@pytest.mark.parametrize(("flag", "body"), [
    *[("evals_per_sample", b) for b in ("raise ValueError('no')", "return None", "return 0",
                                        "return w[7]")],
    *[("evals_held", b) for b in ("return 0", "return None", "raise ValueError('no')")],
])
def test_a_plugin_whose_evaluation_count_misbehaves_is_recorded_not_fatal(tmp_path: Path,
                                                                          flag: str, body: str
                                                                          ) -> None:
    """``evals_per_sample`` and ``evals_held`` (loss evaluations held in memory at once) are
    checked on several networks when the plugin loads (``w[7]`` fails on the short ones only): the
    factory is recorded as broken, ``list`` still works (the conformance kit refuses more
    evaluations held than made: below)."""
    from click.testing import CliRunner

    from sbn_bench.cli import main

    p = _plugin(tmp_path, f"""
        from sbn_bench.estimators import Estimator

        def count(w):
            {body}

        def bad():
            return Estimator("bad", lambda p, q, g: None, randomness="none", {flag}=count,
                             description="bad count")

        ESTIMATORS = {{"bad": bad}}
    """)
    reg = load_registry([p])
    assert "bad" not in reg.names()
    (err,) = [e for e in reg.errors if e.name == "bad"]
    assert flag in err.message
    res = CliRunner().invoke(main, ["list", "--plugin", str(p)])
    assert res.exit_code == 0 and "psa" in res.output and "failed to load" in res.stderr
    res = CliRunner().invoke(main, ["list", "--plugin", str(p), "--json"])  # on stderr there too
    assert res.exit_code == 0 and "failed to load" in res.stderr and "failed to load" not in res.stdout
    assert [e["name"] for e in json.loads(res.stdout)["errors"]] == ["bad"]


def test_a_plugin_printing_at_import_does_not_corrupt_list_json(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from sbn_bench.cli import main

    p = _plugin(tmp_path, """
        print("hello from the plugin")
        from sbn_bench.estimators.builtin.straight_through import st as _st

        def st2():
            import dataclasses
            print("hello from the factory")
            return dataclasses.replace(_st(), name="st2")

        ESTIMATORS = {"st2": st2}
    """)
    res = CliRunner().invoke(main, ["list", "--json", "--plugin", str(p)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert "st2" in {e["name"] for e in data["estimators"]}
    assert "hello from the plugin" in res.stderr and "hello from the factory" in res.stderr


def test_a_name_no_spec_can_select_is_a_broken_factory(tmp_path: Path) -> None:
    """``--estimators a,b`` is two specs and ``a:b`` a name with a malformed hyperparameter, so
    such names (and the empty one) would be listed yet never measurable."""
    bad = ["a:b", "a,b", "x=y", "", " lead", "trail\t"]  # x=y after a comma: a hyperparameter
    p = _plugin(tmp_path, f"""
        import dataclasses
        from sbn_bench.estimators.builtin.straight_through import st as _st

        def named(n):
            return lambda: dataclasses.replace(_st(), name=n)

        ESTIMATORS = {{n: named(n) for n in {bad!r} + ["st.v2", "ST_2", "<i>", "Foo Bar"]}}
    """)
    reg = load_registry([p])
    assert {"st.v2", "ST_2", "<i>", "Foo Bar"} <= set(reg.names())
    assert reg.create("Foo Bar").name == "Foo Bar"  # selectable: split_specs keeps inner spaces
    for n in bad:
        assert n not in reg.names()
        (err,) = [e for e in reg.errors if e.name == n]
        assert "cannot always be selected" in err.message and "without ':', ','" in err.message


def test_an_estimator_whose_spec_does_not_name_it_again_is_refused(tmp_path: Path) -> None:
    """Worker processes and --resume rebuild an estimator from its spec: a plugin declaring
    hyperparams under another name than its factory's keyword, or a value no spec can spell,
    ran serially and failed in every worker. Its default is a broken factory at load; a
    non-default value that does not round-trip is refused when created (the plugin's fault)."""
    p = _plugin(tmp_path, """
        import dataclasses
        from sbn_bench.estimators.builtin.straight_through import st as _st

        def renamed(*, c: float = 1.0):
            return dataclasses.replace(_st(), name="renamed", hyperparams=(("d", c),))

        def tupled(*, c: tuple = (1, 2)):
            return dataclasses.replace(_st(), name="tupled", hyperparams=(("c", c),))

        def late(*, c: float = 1.0):  # the default round-trips, 2.0 does not
            return dataclasses.replace(_st(), name="late",
                                       hyperparams=(("c", c),) if c == 1.0 else (("e", c),))

        ESTIMATORS = {"renamed": renamed, "tupled": tupled, "late": late}
    """)
    reg = load_registry([p])
    for name, words in (("renamed", "'d' is not a hyperparameter of its factory (those are: c)"),
                        ("tupled", "'2)' is not key=value")):
        assert name not in reg.names()
        (err,) = [e for e in reg.errors if e.name == name]
        assert f"its spec {name}:" in err.message.replace("'", "") and words in err.message
    assert reg.create("late").spec == "late:c=1.0"
    with pytest.raises(EstimatorSpecError, match=r"estimator 'late' \(plugin file .*\): its spec "
                                                 r"'late:e=2.0' does not name it again") as e:
        reg.create("late:c=2.0")
    assert e.value.usage is False
    for name in BUILTIN_FACTORIES:  # every built-in's spec names it again
        assert registry.spec_problem(reg.create(name), reg.factories[name]) is None
    for spec in ("concrete:tau=0.1", "reinforce-loo:k=5", "st-gumbel:tau=3.0", "arms:k=4"):
        est = reg.create(spec)  # (create checks it too)
        assert registry.spec_problem(est, reg.factories[est.name]) is None, spec


def test_list_refuses_a_plugin_file_that_cannot_be_loaded(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sbn_bench.cli import main

    res = CliRunner().invoke(main, ["list", "--plugin", str(tmp_path / "noest.py")])
    # a path that does not exist: a refused value of --plugin (exit 2), no estimator listed
    assert res.exit_code == 2 and "Invalid value for '--plugin'" in res.output and \
        "does not exist" in res.output and "noest" not in res.output.split("does not exist")[1]
    (tmp_path / "noest.py").write_text("raise ImportError('x')\n")  # exists, fails: exit 1
    res = CliRunner().invoke(main, ["list", "--plugin", str(tmp_path / "noest.py")])
    assert res.exit_code == 1 and res.output.startswith("Error: plugin file"), res.output


def test_the_kit_refuses_more_evaluations_held_than_made() -> None:
    import dataclasses

    from sbn_bench.estimators import testing as kit

    base = load_registry().create("psa")
    bad = dataclasses.replace(base, evals_held=lambda w: 10**6)
    with pytest.raises(AssertionError, match="evals_held"):
        kit.check_estimator(lambda: bad)


def test_estimate_and_estimate_on_paths_refuse_bad_arguments_naming_them() -> None:
    """Bad arguments from Python are one ArgumentError naming the argument (they were deep
    TypeErrors, or silently accepted: a states tensor of 0.5s, a missing generator)."""
    import torch

    from sbn_bench.errors import ArgumentError
    from sbn_bench.estimators import estimate, estimate_on_paths
    from sbn_bench.problems import random_problem

    p = random_problem("2-3-1", 0, data_points=4)
    st = load_registry().create("st")
    g = torch.Generator().manual_seed(0)
    for bad in (2.5, True, "3", 0):
        with pytest.raises(ArgumentError, match="num_samples") as e:
            estimate(st, p, bad, g)
        assert e.value.argument == "num_samples"
    import numpy as np
    assert estimate(st, p, np.int64(2), g)["weight_1"].shape[0] == 2  # any integer type
    for gen in (None, 3):
        with pytest.raises(ArgumentError, match="must be a torch.Generator"):
            estimate(st, p, 2, gen)
    with pytest.raises(ArgumentError, match="must be an sbn_bench.Estimator"):
        estimate("st", p, 2, g)
    good = [torch.ones(2, 4, 3, dtype=torch.float64)]
    assert estimate_on_paths(st, p, good)["weight_1"].shape == (2, 3, 2)
    for states in ([torch.ones(2, 4, 3)],                          # float32 on a float64 problem
                   [torch.full((2, 4, 3), 0.5, dtype=torch.float64)],  # not 0s and 1s
                   [torch.ones(2, 4, 2, dtype=torch.float64)],      # wrong width
                   [], torch.ones(2, 4, 3, dtype=torch.float64)):   # no layer; not a sequence
        with pytest.raises(ArgumentError, match=r"argument states=.* must be 1 tensor\(s\) "
                                                r"\[S, 4, n_k\] of 0s and 1s for n_k = 3"):
            estimate_on_paths(st, p, states)


def test_one_string_is_one_item_and_an_unloaded_plugin_file_is_named(tmp_path) -> None:
    """From Python a string is one spec list, one plugin file, an int one seed (they were split into
    characters: 'plugin file 'p' does not exist'); an estimator asked for after its plugin file
    failed to load names that file and why."""
    from sbn_bench.config import ProblemSpec, RunConfig

    plug = str(Path(__file__).resolve().parents[1] / "examples" / "reinforce_baseline.py")
    cfg = RunConfig(problems=(ProblemSpec(arch="2-2-1"),), estimators="psa,st", plugins=plug,
                    seeds=3)
    assert (cfg.estimators, cfg.plugins, cfg.seeds) == (("psa", "st"), (plug,), (3,))
    import numpy as np

    from sbn_bench.config import ConfigError
    one = RunConfig(problems=ProblemSpec(arch="2-2-1"), seeds=np.int64(3), M=4, samples=10)
    assert (len(one.problems), one.seeds, one.M) == (1, (3,), (4,))
    assert RunConfig(problems=ProblemSpec(arch="2-2-1"), seeds="0,1").seeds == (0, 1)
    with pytest.raises(ConfigError, match="seeds='a,b': 'a' is neither a seed nor a range"):
        RunConfig(problems=ProblemSpec(arch="2-2-1"), seeds="a,b")
    assert "reinforce-baseline" in load_registry(plugins=plug).names()
    missing = str(tmp_path / "nothere.py")
    reg = load_registry(plugins=missing)
    with pytest.raises(EstimatorSpecError, match=rf"Plugin files that failed to load \(it may be "
                                                 rf"defined there\): plugin file '{missing}' does "
                                                 r"not exist\.$"):
        reg.create("reinforce-baseline")


def test_a_spec_with_a_string_hyperparameter_round_trips(tmp_path) -> None:
    """``create(est.spec)`` gives the estimator back: a string hyperparameter is written quoted
    (``mode='raise'``) and was read back with its quotes, so worker processes, which rebuild
    estimators from their specs, measured another estimator than the serial executor."""
    plug = tmp_path / "strhp.py"
    plug.write_text("import dataclasses\n"
                    "from sbn_bench.estimators.builtin.straight_through import st\n"
                    "def strhp(*, mode: str = 'a'):\n"
                    "    return dataclasses.replace(st(), name='strhp', hyperparams=(('mode', mode),))\n"
                    "ESTIMATORS = {'strhp': strhp}\n")
    reg = load_registry(plugins=[plug])
    for spec in ("strhp:mode=raise", "strhp:mode='raise'", 'strhp:mode="raise"'):
        est = reg.create(spec)
        assert dict(est.hyperparams)["mode"] == "raise"
        assert reg.create(est.spec) == est and est.spec == "strhp:mode='raise'"


def test_one_plugin_file_under_two_spellings_is_loaded_once(tmp_path: Path, monkeypatch) -> None:
    """--plugin p.py --plugin /abs/p.py was refused as a clash of the file's estimators with
    themselves (attacker review), while the same spelling twice was accepted and recorded twice;
    a file is loaded once, under its first spelling."""
    from sbn_bench.estimators.registry import plugin_paths

    plugin = tmp_path / "p.py"
    plugin.write_text("from sbn_bench.estimators.builtin.straight_through import st\n"
                      "import dataclasses\n"
                      "def mine():\n"
                      "    return dataclasses.replace(st(), name='mine')\n"
                      "ESTIMATORS = {'mine': mine}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    given = ["p.py", str(plugin), "./p.py", "p.py"]
    assert plugin_paths(given) == ("p.py",)
    reg = load_registry(given)
    assert "mine" in reg.names() and not reg.errors

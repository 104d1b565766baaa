"""Fuzzing the TOML configuration parser with hypothesis: :func:`sbn_bench.config.load_config` on
random TOML-like text (valid and broken syntax, undecodable bytes) and on TOML of the right
structure with values of every wrong type or range: it returns a
:class:`~sbn_bench.config.RunConfig` or raises :class:`~sbn_bench.config.ConfigError` whose message
names the file, never another exception.

Every test is derandomised (the same examples on every run) and cheap per example.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sbn_bench.config import ConfigError, RunConfig, load_config

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# --------------------------------------------------------------------------------------------
# TOML configurations


def _toml_value(v) -> str:
    """A minimal TOML serialiser for the fuzzer's values (tomli_w is not a dependency)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else _toml_value(k)


def _dump(top: dict, tables: dict[str, dict], arrays: dict[str, list[dict]]) -> str:
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in top.items()]
    for name, t in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in t.items()]
    for name, items in arrays.items():
        for t in items:
            lines.append(f"[[{name}]]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in t.items()]
    return "\n".join(lines) + "\n"


_scalars = st.one_of(
    st.integers(-3, 5), st.integers(min_value=-2**63, max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.sampled_from(["", "psa", "psa,st", "concrete:tau=0", "paper", "default", "quick",
                     "2-2-1", "2-x-1", "1e999", "1GiB", "-1MiB", "0", "init", "cpu", "cuda",
                     "float32", "exact", "mc", "logistic", "gaussian", "softmax", "nope.npz",
                     "a.py"]),
    st.text(max_size=6))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["init", "a", "", "x y"]), inner,
                                                 max_size=2)), max_leaves=5)

TOP = ["estimators", "plugins", "samples", "M", "seeds", "device", "dtype", "mode", "max_paths",
       "chunk", "memory_budget", "max_exact_bytes", "target_rrmse", "stderr_batches",
       "cosine_groups", "out", "sampels", "problem", "throughput"]
PROBLEM = ["name", "preset", "arch", "file", "seed", "data_points", "loss", "noise", "checkpoints",
           "sed"]
THROUGHPUT = ["enabled", "warmup", "rounds", "batch", "round"]


def _check_config(path: Path) -> None:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert str(path) in str(e), f"the error does not name the file: {e}"
        event("ConfigError")
        return
    event("valid config")
    assert isinstance(cfg, RunConfig) and cfg.problems


@FUZZ
@given(top=st.dictionaries(st.sampled_from(TOP[:-2]), _values, max_size=5),
       tp=st.one_of(st.none(), st.dictionaries(st.sampled_from(THROUGHPUT), _values, max_size=3)),
       probs=st.lists(st.dictionaries(st.sampled_from(PROBLEM), _values, max_size=4), max_size=3),
       valid_problem=st.booleans())
def test_fuzz_config_structure_with_bad_values(fuzz_dir, top, tp, probs, valid_problem):
    if valid_problem:
        probs = [{"preset": "quick"}, *probs]
    text = _dump(top, {"throughput": tp} if tp is not None else {}, {"problem": probs})
    path = fuzz_dir / "structured.toml"
    path.write_text(text, encoding="utf-8")
    _check_config(path)


_fragments = st.sampled_from([
    "samples = 10", "samples = ", "samples = [1, 2", "M = 'paper'", "M = [1, 0]", "seeds = 1",
    "[[problem]]", "[problem]", "[throughput]", "[[throughput]]", "preset = 'quick'",
    "arch = '2-2-1'", "problem = 1", "problem = []", "problem = [1, 2]", "problem = ['a']", "throughput = 3",
    "checkpoints = { init = 'init' }", "checkpoints = 3", "estimators = ''", "= 3", "a.b = 1",
    "[a.b]", "'key' = \"val\"", "memory_budget = '1e999'", "memory_budget = 1.5",
    "samples = 'x'\nM = 'paper'", "x = 1979-05-27T07:32:00Z", "seed = 18446744073709551616",
    "data_points = 0", "# comment", "", "\"\"\"", "[[problem]]\nfile = 3", "a = [[[[[1]]]]]",
])


@FUZZ
@given(parts=st.lists(st.one_of(_fragments, st.text(max_size=20)), max_size=8))
def test_fuzz_config_text(fuzz_dir, parts):
    path = fuzz_dir / "text.toml"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    _check_config(path)


@FUZZ
@given(raw=st.binary(max_size=80), prefix=st.sampled_from([b"", b"[[problem]]\npreset = 'quick'\n"]))
def test_fuzz_config_bytes(fuzz_dir, raw, prefix):
    path = fuzz_dir / "bytes.toml"
    path.write_bytes(prefix + raw)
    _check_config(path)


@pytest.mark.parametrize("kw", [{"dtype": []}, {"device": {}}, {"mode": ["exact"]}])
def test_an_unhashable_choice_is_a_config_error(kw) -> None:
    """Found by the fuzz test above: a list where a choice belongs raised TypeError."""
    from sbn_bench.config import ConfigError, ProblemSpec, RunConfig

    with pytest.raises(ConfigError, match=f"{next(iter(kw))}=.* is not one of"):
        RunConfig(problems=(ProblemSpec(preset="quick"),), **kw)


def test_relative_paths_follow_the_toml_files_folder_through_a_link(tmp_path: Path) -> None:
    """``../x`` in a TOML reached through a symbolic link to its folder is the file the system
    finds from the real folder (a lexical normalisation of ``link/../x`` would pick another)."""
    real = tmp_path / "real"
    (real / "exp").mkdir(parents=True)
    (real / "ck").mkdir()
    (tmp_path / "ck").mkdir()
    (real / "ck" / "p.npz").write_text("meant")
    (tmp_path / "ck" / "p.npz").write_text("decoy")
    (tmp_path / "link").symlink_to(real / "exp", target_is_directory=True)
    (real / "exp" / "cfg.toml").write_text('[[problem]]\nname = "p"\nfile = "../ck/p.npz"\n')
    for where in (real / "exp", tmp_path / "link"):
        spec = load_config(where / "cfg.toml").problems[0]
        assert Path(spec.file).read_text() == "meant", spec.file

    # through the link the path stays as written; from the real folder it is normalised, as it
    # names the same place (the output folder printed as "real/exp/../runs" before)
    (real / "exp" / "cfg.toml").write_text('out = "../runs/a"\n[[problem]]\narch = "2-2-1"\n')
    assert load_config(real / "exp" / "cfg.toml").out == str(real / "runs" / "a")
    assert load_config(tmp_path / "link" / "cfg.toml").out == str(tmp_path / "link" / ".." / "runs" / "a")


def test_a_missing_problem_file_is_refused_naming_the_toml_file_and_line(tmp_path: Path) -> None:
    """A ``file`` or checkpoint that does not exist is refused when the TOML file is read, naming
    that file, the line and where a relative path was looked for (it was refused later, as a
    bare "problem file … does not exist" that did not say which configuration named it)."""
    sub = tmp_path / "sub"
    sub.mkdir()
    cfg = sub / "b.toml"
    cfg.write_text('[[problem]]\narch = "2-2-1"\ncheckpoints = { e1 = "nothere.npz" }\n')
    with pytest.raises(ConfigError, match=rf"config file '{cfg}', line 3: problem 1: checkpoint "
                                          rf"e1='nothere.npz': there is no file '{sub}/nothere.npz' "
                                          r"\(a relative path is read from the TOML file's folder\)"):
        load_config(cfg)
    cfg.write_text('[[problem]]\narch = "2-2-1"\n\n[problem.checkpoints]\ne1 = "x.npz"\n')
    with pytest.raises(ConfigError, match=r"line 4: problem 1: checkpoint e1='x.npz'"):
        load_config(cfg)  # written as a sub-table: its header's line
    cfg.write_text('[[problem]]\nfile = "."\n')
    with pytest.raises(ConfigError, match=rf"file='.': '{sub}' is a folder"):
        load_config(cfg)
    cfg.write_text(f'[[problem]]\nfile = "{tmp_path}/none.npz"\n')
    with pytest.raises(ConfigError, match=rf"line 2: problem 1: file='{tmp_path}/none.npz': there "
                                          rf"is no file '{tmp_path}/none.npz'$"):
        load_config(cfg)


@pytest.mark.parametrize(("key", "ok", "bad"), [("cell_timeout", 1e9, 1e10),
                                                 ("target_rrmse", 1e100, 1e160)])
def test_bounds_beyond_which_every_cell_would_overflow_are_refused(key: str, ok: float,
                                                                   bad: float) -> None:
    """``cell_timeout=1e10`` overflowed the system's timers (every cell failed, or a traceback
    under worker processes) and ``target_rrmse=1e160`` overflowed t²‖g‖² (every cell failed):
    both are refused before any work, naming the bound (attacker review)."""
    from sbn_bench.config import ProblemSpec, RunConfig

    base = dict(problems=(ProblemSpec(arch="2-2-1"),), estimators=("st",))
    assert getattr(RunConfig(**base, **{key: ok}), key) == ok
    with pytest.raises(ConfigError, match=rf"{key}=\S+ must be .*≤ 1e\+(09|100)") as e:
        RunConfig(**base, **{key: bad})
    assert e.value.argument == key

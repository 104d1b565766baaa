"""Fuzzing the two parsers of user files (issue 6, item 1), with hypothesis.

* :func:`sbn_bench.problems.load_problem` on random ``.npz`` archives (random names, shapes, dtypes,
  non-finite values, strings and undecodable bytes), on mutations of a valid problem file
  (truncated, bytes flipped, arrays dropped, reshaped or poisoned) and on raw garbage bytes: it
  either returns a valid :class:`~sbn_bench.problems.Problem` or raises
  :class:`~sbn_bench.problems.ProblemError`, never anything else.
* :func:`sbn_bench.config.load_config` on random TOML-like text (valid and broken syntax, undecodable
  bytes) and on TOML of the right structure with values of every wrong type or range: it returns a
  :class:`~sbn_bench.config.RunConfig` or raises :class:`~sbn_bench.config.ConfigError` whose message
  names the file, never another exception.

Every test is derandomised (the same examples on every run) and cheap per example; together they
generate well over a thousand cases in the default run.
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sbn_bench import problems
from sbn_bench.config import ConfigError, RunConfig, load_config
from sbn_bench.problems import Problem, ProblemError, load_problem

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# --------------------------------------------------------------------------------------------
# problem files


NAMES = ["x", "y", "weight_1", "bias_1", "weight_2", "bias_2", "weight_out", "bias_out", "loss",
         "noise", "weight_0", "bias_3", "weight_3", "junk", "weight_01", "Weight_1", "x "]
REAL_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int8, np.uint8, np.bool_,
               np.dtype(">f8"), np.complex128]


def _check_outcome(path: Path) -> None:
    """The contract: a valid Problem or a ProblemError that names the file."""
    try:
        p = load_problem(path)
    except ProblemError as e:
        assert str(path) in str(e), f"the error does not name the file: {e}"
        event("ProblemError")
        return
    event("valid problem")
    assert isinstance(p, Problem)
    problems.validate(p)  # what was returned is valid
    assert len(p.widths) >= 3 and p.num_data >= 1


def _array(dtype) -> st.SearchStrategy[np.ndarray]:
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
    if np.dtype(dtype).kind == "f":
        elems = st.floats(allow_nan=True, allow_infinity=True, width=np.dtype(dtype).itemsize * 8)
        return hnp.arrays(dtype, shapes, elements=elems)
    return hnp.arrays(dtype, shapes)


def _any_array() -> st.SearchStrategy[np.ndarray]:
    strings = st.one_of(
        st.text(max_size=12).map(np.array),  # 0-d unicode, e.g. a loss name or nonsense
        st.sampled_from(["logistic", "softmax", "mse", "gaussian", ""]).map(np.array),
        st.binary(max_size=8).map(lambda b: np.array(b, dtype="S8")),  # undecodable bytes
        st.lists(st.sampled_from(["logistic", "mse"]), min_size=1, max_size=3).map(np.array),
    )
    return st.one_of(st.sampled_from(REAL_DTYPES).flatmap(_array), strings)


@FUZZ
@given(arrays=st.dictionaries(st.one_of(st.sampled_from(NAMES),
                                        st.text(alphabet="abcdefghiw_0123", min_size=1,
                                                max_size=9)),
                              _any_array(), max_size=10))
def test_fuzz_random_npz_archives(fuzz_dir, arrays):
    path = fuzz_dir / "random.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    _check_outcome(path)


def _valid_arrays(arch: str, loss: str, seed: int) -> dict[str, np.ndarray]:
    p = problems.random_problem(arch, seed, data_points=4, loss=loss)
    out = {"x": p.x.numpy(), "y": p.y.numpy(), "loss": np.array(p.loss), "noise": np.array(p.noise)}
    out.update({k: v.numpy() for k, v in p.params.items()})
    return out


VALID = {(a, loss): _valid_arrays(a, loss, 0) for a, loss in
         [("2-3-1", "logistic"), ("3-2-2-2", "softmax"), ("1-2-3-2", "mse")]}


@st.composite
def _mutated(draw) -> dict[str, np.ndarray]:
    arrays = {k: v.copy() for k, v in draw(st.sampled_from(list(VALID.values()))).items()}
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(arrays)))
        how = draw(st.sampled_from(["drop", "reshape", "poison", "dtype", "replace", "transpose",
                                    "empty", "labels"]))
        a = arrays[name] = np.array(arrays[name])  # hypothesis may give numpy scalars
        if how == "drop":
            del arrays[name]
        elif how == "reshape":
            arrays[name] = a.reshape(-1) if a.ndim != 1 else a.reshape(1, -1)
        elif how == "poison" and a.dtype.kind == "f" and a.size:
            a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(
                st.sampled_from([math.nan, math.inf, -math.inf, 1e308]))
        elif how == "dtype":
            kinds = ["U3", "S3", "U1"] if a.dtype.kind in "US" else REAL_DTYPES + ["U3", "S3"]
            arrays[name] = a.astype(draw(st.sampled_from(kinds)))
        elif how == "replace":
            arrays[name] = draw(_any_array())
        elif how == "transpose" and a.ndim == 2:
            arrays[name] = a.T.copy()
        elif how == "empty" and a.ndim >= 1:
            arrays[name] = a[:0]
        elif how == "labels" and name == "y":
            arrays[name] = a + draw(st.sampled_from([0.5, 2.0, -3.0, 7.0]))
    return arrays


@FUZZ
@given(arrays=_mutated())
def test_fuzz_mutated_valid_problems(fuzz_dir, arrays):
    path = fuzz_dir / "mutated.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    _check_outcome(path)


def _valid_bytes(compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **VALID[("2-3-1", "logistic")])
    return buf.getvalue()


VALID_BYTES = {False: _valid_bytes(False), True: _valid_bytes(True)}


@FUZZ
@given(compressed=st.booleans(), data=st.data())
def test_fuzz_truncated_and_corrupted_files(fuzz_dir, compressed, data):
    raw = bytearray(VALID_BYTES[compressed])
    how = data.draw(st.sampled_from(["truncate", "flip", "both"]))
    if how in ("flip", "both"):
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    if how in ("truncate", "both"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    path = fuzz_dir / "corrupt.npz"
    path.write_bytes(bytes(raw))
    _check_outcome(path)


@FUZZ
@given(prefix=st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY\x01\x00",
                               b"\x80\x04\x95", b"\xef\xbb\xbf"]),
       body=st.binary(max_size=300), suffix=st.sampled_from([".npz", ".npy", ".txt", ""]))
def test_fuzz_garbage_bytes(fuzz_dir, prefix, body, suffix):
    path = fuzz_dir / f"garbage{suffix}"
    path.write_bytes(prefix + body)
    _check_outcome(path)


def test_fuzz_single_npy_and_zip_without_arrays(fuzz_dir):
    """Deterministic corner cases next to the fuzzers: a .npy (one array), a zip of text files."""
    p = fuzz_dir / "one.npy"
    np.save(p, np.zeros(3))
    with pytest.raises(ProblemError, match="not a readable .npz archive.*single .npy"):
        load_problem(p)
    z = fuzz_dir / "text.npz"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("x.npy", "not an array")
    with pytest.raises(ProblemError, match="text.npz"):
        load_problem(z)


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
    "arch = '2-2-1'", "problem = 1", "problem = [1, 2]", "problem = ['a']", "throughput = 3",
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

"""Fuzzing the problem-file parser with hypothesis: :func:`sbn_bench.problems.load_problem` on
random ``.npz`` archives (random names, shapes, dtypes, non-finite values, strings and undecodable
bytes), on mutations of a valid problem file (truncated, bytes flipped, arrays dropped, reshaped or
poisoned) and on raw garbage bytes: it either returns a valid :class:`~sbn_bench.problems.Problem`
or raises :class:`~sbn_bench.problems.ProblemError`, never anything else.

Every test is derandomised (the same examples on every run) and cheap per example.
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



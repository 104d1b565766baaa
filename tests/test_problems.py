"""Problems: constructors, the public ``.npz`` format (round trip, hand-written files), validation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sbn_bench import model, problems
from sbn_bench.problems import (
    Problem,
    ProblemError,
    load_problem,
    parse_arch,
    preset_problem,
    random_problem,
    save_problem,
)

F64 = torch.float64


def _assert_same_problem(a: Problem, b: Problem) -> None:
    """Bit-identical arrays (values, shapes and dtypes), same loss and noise."""
    assert (a.loss, a.noise) == (b.loss, b.noise)
    assert a.widths == b.widths
    assert set(a.params) == set(b.params)
    for name in a.params:
        assert a.params[name].dtype == b.params[name].dtype == F64, name
        assert torch.equal(a.params[name], b.params[name]), name
    for name, s, t in [("x", a.x, b.x), ("y", a.y, b.y)]:
        assert s.dtype == t.dtype, f"{name}: {s.dtype} vs {t.dtype}"
        assert torch.equal(s, t), name


# --------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("arch,loss,noise", [
    ("2-3-1", "logistic", "logistic"),
    ("3-2-4-2-3", "softmax", "gaussian"),
    ("1-2-2", "mse", "gaussian"),
    ("2-1-1-1-1-1", "mse", "logistic"),
])
def test_random_problem_round_trips_exactly(tmp_path: Path, arch: str, loss: str, noise: str) -> None:
    p = random_problem(arch, 7, data_points=9, loss=loss, noise=noise)
    path = save_problem(p, tmp_path / "sub" / "p.npz")
    q = load_problem(path)
    _assert_same_problem(p, q)
    # and a second round trip changes nothing
    _assert_same_problem(q, load_problem(save_problem(q, tmp_path / "again.npz")))


def test_paper_problem_round_trips_exactly(tmp_path: Path, paper: Problem) -> None:
    _assert_same_problem(paper, load_problem(save_problem(paper, tmp_path / "paper.npz")))


def test_a_problem_too_large_for_its_file_is_not_written(tmp_path: Path, monkeypatch) -> None:
    """save_problem refuses what load_problem would refuse (it wrote a 2.4 GB file that no command
    could read): the limit is lowered here instead of making a gigabyte problem."""
    p = random_problem("2-3-1", 0, data_points=100)
    with np.load(save_problem(p, tmp_path / "whole.npz"), allow_pickle=False) as z:
        size = sum(z[k].nbytes for k in z.files)  # what the file's arrays declare
    load_problem(tmp_path / "whole.npz", max_bytes=size)  # the loader's limit, at the boundary
    with pytest.raises(ProblemError, match="over the"):
        load_problem(tmp_path / "whole.npz", max_bytes=size - 1)
    monkeypatch.setattr(problems, "MAX_FILE_BYTES", size)  # the writer agrees on both sides
    save_problem(p, tmp_path / "fits.npz")
    monkeypatch.setattr(problems, "MAX_FILE_BYTES", size - 1)
    with pytest.raises(ProblemError, match=r"GiB a problem file may hold .* fewer data points "
                                           r"\(it has 100\)") as e:
        save_problem(p, tmp_path / "p.npz")
    assert e.value.argument == "problem" and not (tmp_path / "p.npz").exists()


def test_saved_file_follows_the_public_format(tmp_path: Path) -> None:
    p = random_problem("2-3-2-1", 0, data_points=4, noise="gaussian")
    path = save_problem(p, tmp_path / "p.npz")
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(["x", "y", "loss", "noise", "format", "network",
                                          *model.param_names(2)])
        assert str(z["format"]) == "2"  # version 2: the network described beside the arrays
        assert z["x"].shape == (4, 2) and z["y"].shape == (4,)
        assert z["weight_1"].shape == (3, 2) and z["bias_1"].shape == (3,)
        assert z["weight_2"].shape == (2, 3) and z["weight_out"].shape == (1, 2)
        assert z["loss"].shape == () and str(z["loss"]) == "logistic"
        assert str(z["noise"]) == "gaussian"
    assert not list(tmp_path.glob("*.tmp")), "the atomic write left a temporary file"


def test_a_plain_network_description_must_match_the_arrays(tmp_path: Path) -> None:
    """A format-2 file's description of a plain dense network is checked against its arrays (it
    was dropped, so a file with an extra layer's arrays loaded as another, deeper network)."""
    path = save_problem(random_problem("2-3-3-1", 0, data_points=4), tmp_path / "p.npz")
    with np.load(path, allow_pickle=False) as z:
        arrays = dict(z)
    np.savez(tmp_path / "extra.npz", **arrays, weight_3=np.zeros((3, 3)), bias_3=np.zeros(3))
    with pytest.raises(ProblemError, match="describes the network '2-3-3-1', but the arrays are "
                                           "those of '2-3-3-3-1'") as info:
        load_problem(tmp_path / "extra.npz")
    assert info.value.argument == "network"
    assert load_problem(path).arch == "2-3-3-1"
    np.savez(tmp_path / "kl.npz", **arrays, kl=np.array("sampled"))  # kl is a VAE's only
    with pytest.raises(ProblemError, match="only a 'vae' problem's file holds kl"):
        load_problem(tmp_path / "kl.npz")


def _hand_arrays() -> dict[str, np.ndarray]:
    """A 2-2-1-1 problem written by hand, the way a user would: biases [1, n], labels {0,1}, no
    loss/noise arrays (so both default to logistic)."""
    return {
        "x": np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 0.0]]),
        "y": np.array([0, 1, 1]),
        "weight_1": np.array([[0.1, -0.2], [0.3, 0.4]]),
        "bias_1": np.array([[0.05, -0.05]]),
        "weight_2": np.array([[1.5, -2.5]]),
        "bias_2": np.array([[0.25]]),
        "weight_out": np.array([[3.0]]),
        "bias_out": np.array([[-1.0]]),
    }


def test_hand_written_file_with_row_biases_and_01_labels(tmp_path: Path) -> None:
    arrays = _hand_arrays()
    path = tmp_path / "hand.npz"
    np.savez(path, **arrays)
    p = load_problem(path)
    assert (p.loss, p.noise, p.n_layers, p.widths) == ("logistic", "logistic", 2, (2, 2, 1, 1))
    assert torch.equal(p.y, torch.tensor([-1.0, 1.0, 1.0], dtype=F64))  # {0,1} → ±1
    assert torch.equal(p.x, torch.from_numpy(arrays["x"]))
    for name in model.param_names(2):
        expected = torch.from_numpy(arrays[name])
        if name.startswith("bias_"):
            expected = expected[0]  # [1, n] → [n]
        assert p.params[name].shape == expected.shape and torch.equal(p.params[name], expected), name
    # saving writes 1-D biases, and the reloaded problem is the same
    _assert_same_problem(p, load_problem(save_problem(p, tmp_path / "out.npz")))


def test_integer_and_float32_arrays_are_read_as_float64(tmp_path: Path) -> None:
    arrays = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in _hand_arrays().items()}
    arrays["x"] = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int32)
    np.savez(tmp_path / "f32.npz", **arrays)
    p = load_problem(tmp_path / "f32.npz")
    assert all(t.dtype == F64 for t in [p.x, *p.params.values()])
    assert torch.equal(p.params["weight_2"], torch.tensor([[1.5, -2.5]], dtype=F64))


@pytest.mark.parametrize("labels", [[1, 0, 2, 1], [1.0, 2.0, 0.0, 1.0]])
def test_softmax_labels_are_stored_as_int64(tmp_path: Path, labels: list[float]) -> None:
    p = random_problem("2-2-3", 0, data_points=4, loss="softmax")
    arrays = _arrays_of(p)
    arrays["y"] = np.array(labels)
    np.savez(tmp_path / "s.npz", **arrays)
    q = load_problem(tmp_path / "s.npz")
    assert q.y.dtype == torch.int64 and q.y.tolist() == [int(v) for v in labels]


# --------------------------------------------------------------------------------------------
# malformed files


def _arrays_of(p: Problem) -> dict[str, np.ndarray]:
    out = {"x": p.x.numpy(), "y": p.y.numpy(), "loss": np.array(p.loss), "noise": np.array(p.noise)}
    out.update({k: v.numpy() for k, v in p.params.items()})
    return out


def _base(loss: str = "logistic") -> dict[str, np.ndarray]:
    n_out = {"logistic": 1, "softmax": 3, "mse": 2}[loss]
    return _arrays_of(random_problem(f"2-3-2-{n_out}", 0, data_points=4, loss=loss))


def _drop(name: str):
    return lambda a: {k: v for k, v in a.items() if k != name}


def _set(name: str, value):
    return lambda a: {**a, name: value(a) if callable(value) else value}


def _with_nan(name: str, value: float):
    def f(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = np.array(a[name], dtype=np.float64)
        t.flat[0] = value
        return {**a, name: t}
    return f


MALFORMED = [
    # (id, base loss, edit, array the message must name, extra text the message must contain)
    ("missing-x", "logistic", _drop("x"), "x", "missing"),
    ("missing-y", "logistic", _drop("y"), "y", "missing"),
    ("missing-bias_1", "logistic", _drop("bias_1"), "bias_1", "missing"),
    ("missing-weight_out", "logistic", _drop("weight_out"), "weight_out", "missing"),
    ("missing-bias_out", "logistic", _drop("bias_out"), "bias_out", "missing"),
    ("missing-weight_1", "logistic", _drop("weight_1"), "weight_1", "missing"),
    ("weight-inner-shape", "logistic", _set("weight_2", np.zeros((2, 4))), "weight_2", "shape"),
    ("weight-1d", "logistic", _set("weight_1", np.zeros(6)), "weight_1", "shape"),
    ("bias-length", "logistic", _set("bias_1", np.zeros(2)), "bias_1", "shape"),
    ("bias-out-length", "logistic", _set("bias_out", np.zeros(2)), "bias_out", "shape"),
    ("x-1d", "logistic", _set("x", np.zeros(4)), "x", "shape"),
    ("x-wrong-n0", "logistic", _set("x", np.zeros((4, 3))), "weight_1", "shape"),
    ("y-rows", "logistic", _set("y", np.ones(3)), "y", "rows"),
    ("nan-weight", "logistic", _with_nan("weight_2", math.nan), "weight_2", "NaN"),
    ("nan-x", "logistic", _with_nan("x", math.nan), "x", "NaN"),
    ("inf-bias", "logistic", _with_nan("bias_out", math.inf), "bias_out", "Inf"),
    ("inf-y", "mse", _with_nan("y", -math.inf), "y", "Inf"),
    ("unknown-loss", "logistic", _set("loss", np.array("hinge")), "loss", "hinge"),
    ("unknown-noise", "logistic", _set("noise", np.array("uniform")), "noise", "uniform"),
    ("loss-not-string", "logistic", _set("loss", np.array(1.0)), "loss", "string"),
    ("loss-not-0d", "logistic", _set("loss", np.array(["logistic"])), "loss", "0-d"),
    ("string-weight", "logistic", _set("weight_1", np.full((3, 2), "a")), "weight_1", "dtype"),
    ("logistic-label-2", "logistic", _set("y", np.array([1.0, -1.0, 2.0, 1.0])), "y", "logistic"),
    ("logistic-label-mixed", "logistic", _set("y", np.array([0.0, -1.0, 1.0, 1.0])), "y", "logistic"),
    ("logistic-two-outputs", "mse", _set("loss", np.array("logistic")), "weight_out", "expected 1"),
    ("softmax-class-too-big", "softmax", _set("y", np.array([0, 1, 3, 2])), "y", "softmax"),
    ("softmax-negative", "softmax", _set("y", np.array([0, -1, 1, 2])), "y", "softmax"),
    ("softmax-non-integer", "softmax", _set("y", np.array([0.0, 0.5, 1.0, 2.0])), "y", "softmax"),
    ("softmax-2d-labels", "softmax", _set("y", np.zeros((4, 3))), "y", "softmax"),
    ("mse-wrong-width", "mse", _set("y", np.zeros((4, 3))), "y", "mse"),
    ("mse-1d-for-two-outputs", "mse", _set("y", np.zeros(4)), "y", "mse"),
    ("unexpected-name", "logistic", _set("extra", np.zeros(2)), "extra", "unexpected"),
    ("unexpected-layer", "logistic", _set("bias_3", np.zeros(2)), "bias_3", "unexpected"),
    ("gap-in-layers", "logistic", _set("weight_4", np.zeros((1, 1))), "weight_4", "unexpected"),
    ("no-stochastic-layer", "logistic",
     lambda a: {k: v for k, v in a.items() if not k.endswith(("_1", "_2"))}, "weight_1", "missing"),
]


@pytest.mark.parametrize("loss,edit,array,text", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_refused_naming_array_and_file(tmp_path: Path, loss: str, edit, array: str,
                                                         text: str) -> None:
    path = tmp_path / "bad_problem.npz"
    np.savez(path, **edit(_base(loss)))
    with pytest.raises(ProblemError) as info:
        load_problem(path)
    msg = str(info.value)
    assert str(path) in msg, f"message does not name the file: {msg}"
    assert f"'{array}'" in msg, f"message does not name array {array!r}: {msg}"
    assert text in msg, f"message lacks {text!r}: {msg}"


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    good = save_problem(random_problem("2-3-1", 0, data_points=50), tmp_path / "good.npz")
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(ProblemError, match="not a readable .npz") as info:
            load_problem(bad)
        assert str(bad) in str(info.value)


def test_corrupted_member_is_refused(tmp_path: Path) -> None:
    """A zip whose member data is damaged (CRC mismatch) is refused, not silently read."""
    good = save_problem(random_problem("2-3-1", 0, data_points=50), tmp_path / "good.npz")
    data = bytearray(good.read_bytes())
    i = data.index(b"\x93NUMPY", data.index(b"x.npy")) + 200  # inside the x array's values
    data[i] ^= 0xFF
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ProblemError) as info:
        load_problem(bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("content", [b"x,y\n1,2\n", b"", b"\x93NUMPY\x01\x00garbage"])
def test_file_that_is_not_npz_is_refused(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "notes.npz"
    bad.write_bytes(content)
    with pytest.raises(ProblemError, match="not a readable .npz") as info:
        load_problem(bad)
    assert str(bad) in str(info.value)


def test_plain_npy_content_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "array.npz"
    with open(bad, "wb") as f:
        np.save(f, np.zeros((3, 2)))
    with pytest.raises(ProblemError) as info:
        load_problem(bad)
    assert str(bad) in str(info.value)


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ProblemError, match="does not exist") as info:
        load_problem(tmp_path / "nope.npz")
    assert "nope.npz" in str(info.value)
    with pytest.raises(ProblemError):
        load_problem(tmp_path)


def test_a_file_that_is_no_problem_file_names_argument_path(tmp_path: Path) -> None:
    """Whatever is wrong with the file as a whole (missing, a folder, empty, text, a lone .npy,
    cut off), the error's ``argument`` is ``path`` and its ``value`` the path, as for a missing
    file: for an unreadable archive it was the quoted path, which a caller could not branch on."""
    good = tmp_path / "good.npz"
    np.savez(good, **_base())
    data = good.read_bytes()
    cases = {"nope.npz": None, "dir.npz": "dir", "empty.npz": b"", "text.npz": b"hello\n",
             "cut.npz": data[: len(data) // 2]}
    for name, content in cases.items():
        path = tmp_path / name
        if content == "dir":
            path.mkdir()
        elif content is not None:
            path.write_bytes(content)
        with pytest.raises(ProblemError) as info:
            load_problem(path)
        assert (info.value.argument, info.value.value) == ("path", str(path)), (name, info.value)
    npy = tmp_path / "single.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ProblemError) as info:
        load_problem(npy)
    assert (info.value.argument, info.value.value) == ("path", str(npy))


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    """Object arrays need pickle, which could run code: the loader must not unpickle them."""
    arrays = _base()
    arrays["loss"] = np.array("logistic", dtype=object)
    np.savez(tmp_path / "obj.npz", **arrays)
    with pytest.raises(ProblemError) as info:
        load_problem(tmp_path / "obj.npz")
    assert "obj.npz" in str(info.value)


def test_problem_constructor_validates_too() -> None:
    p = random_problem("2-2-1", 0, data_points=3)
    bad = dict(p.params, weight_out=torch.zeros(1, 3, dtype=F64))
    with pytest.raises(ProblemError, match="'weight_out'.*shape"):
        Problem(bad, p.x, p.y, name="handmade")
    with pytest.raises(ProblemError, match="'handmade'"):
        Problem(dict(p.params), p.x, p.y, loss="hinge", name="handmade")


# --------------------------------------------------------------------------------------------
# constructors


def test_parse_arch() -> None:
    assert parse_arch("2-5-5-5-1") == (2, 5, 5, 5, 1)
    assert parse_arch([3, 1, 2]) == (3, 1, 2)
    for bad in ["2-5", "2-x-1", "2--1", "2-0-1", "", "2,5,1", "-2-5-1", "2-5-1.5"]:
        with pytest.raises(ProblemError, match="arch"):
            parse_arch(bad)


def test_random_problem_is_seeded_and_documented() -> None:
    a, b, c = (random_problem("2-4-3-1", s, data_points=20) for s in (3, 3, 4))
    _assert_same_problem(a, b)
    assert not torch.equal(a.params["weight_1"], c.params["weight_1"])
    assert a.widths == (2, 4, 3, 1) and a.num_data == 20 and a.arch == "2-4-3-1"
    # weights and biases U(−1, 1), labels ±1, inputs standard normal (shape only: values are random)
    for t in a.params.values():
        assert t.dtype == F64 and t.abs().max() < 1
    assert set(a.y.tolist()) <= {-1.0, 1.0} and a.x.shape == (20, 2)
    sm = random_problem("2-3-4", 0, data_points=50, loss="softmax")
    assert sm.y.dtype == torch.int64 and 0 <= int(sm.y.min()) and int(sm.y.max()) < 4
    ms = random_problem("2-3-2", 0, data_points=5, loss="mse")
    assert ms.y.shape == (5, 2) and ms.y.dtype == F64


def test_random_problem_refuses_bad_arguments() -> None:
    with pytest.raises(ProblemError, match="data_points"):
        random_problem("2-2-1", 0, data_points=0)
    with pytest.raises(ValueError, match="loss 'hinge'"):
        random_problem("2-2-1", 0, loss="hinge")
    with pytest.raises(ValueError, match="noise 'uniform'"):
        random_problem("2-2-1", 0, noise="uniform")
    with pytest.raises(ProblemError, match="expected 1 for loss 'logistic'"):
        random_problem("2-2-2", 0)


def test_paper_problem_follows_spec(paper: Problem) -> None:
    """SPEC §6: 200 points, 100 per class; class +1 in [−π/2, π/2] × [0, 1]; class −1 below cos x₀;
    net 2-5-5-5-1, logistic noise and loss; layer 1 rescaled to mean 0, variance 1 over the data."""
    assert paper.widths == (2, 5, 5, 5, 1) and (paper.loss, paper.noise) == ("logistic", "logistic")
    x, y = paper.x, paper.y
    assert x.shape == (200, 2) and int((y == 1).sum()) == 100 and int((y == -1).sum()) == 100
    assert (x[:, 0].abs() <= math.pi / 2).all()
    pos, neg = x[y == 1], x[y == -1]
    assert ((pos[:, 1] >= 0) & (pos[:, 1] <= 1)).all()
    assert ((neg[:, 1] >= -1) & (neg[:, 1] < torch.cos(neg[:, 0]))).all()
    # layer 1 sees the deterministic input: its pre-activations are standardised exactly over the
    # data (up to the (N−1)/N of the unbiased std that the rescaling used over S·D copies)
    a1 = model.preactivation(paper.params, 1, x)
    torch.testing.assert_close(a1.mean(0), torch.zeros(5, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(a1.var(0, unbiased=False), torch.ones(5, dtype=F64), rtol=0, atol=1e-3)
    # deeper layers are standardised over sampled states: check only that they are not degenerate
    states, _ = model.sample_states(paper.params, x, paper.noise_dist, 200, torch.Generator().manual_seed(0))
    for k in (2, 3):
        a = model.preactivation(paper.params, k, states[k - 2]).reshape(-1, 5)
        assert (a.mean(0).abs() < 0.3).all() and ((a.var(0) > 0.7) & (a.var(0) < 1.3)).all(), k


def test_presets() -> None:
    assert preset_problem("paper", 1).arch == "2-5-5-5-1"
    _assert_same_problem(preset_problem("quick", 2), preset_problem("quick", 2))
    with pytest.raises(ProblemError, match="preset='nope'.*paper"):
        preset_problem("nope")


def test_to_and_with_params(tiny: Problem) -> None:
    p32 = tiny.to(dtype=torch.float32)
    assert p32.x.dtype == torch.float32 and all(v.dtype == torch.float32 for v in p32.params.values())
    sm = random_problem("2-2-3", 0, data_points=3, loss="softmax").to(dtype=torch.float32)
    assert sm.y.dtype == torch.int64
    new = {k: v + 1 for k, v in tiny.params.items()}
    q = tiny.with_params(new, name="ckpt")
    assert q.name == "ckpt" and torch.equal(q.params["bias_out"], tiny.params["bias_out"] + 1)
    assert torch.equal(q.x, tiny.x)
    new["bias_out"].add_(5)  # the copy is independent of the dict it was made from
    assert torch.equal(q.params["bias_out"], tiny.params["bias_out"] + 1)


def test_fingerprint_changes_with_the_parameters_and_nothing_else():
    p = random_problem("2-2-2-1", 0, data_points=3)
    q = p.with_params({**p.params, "bias_out": p.params["bias_out"] + 1e-12})
    assert p.fingerprint() != q.fingerprint()
    assert p.fingerprint() == random_problem("2-2-2-1", 0, data_points=3).fingerprint()
    assert p.fingerprint() == p.with_params(p.params, name="renamed").fingerprint()


# --------------------------------------------------------------------------------------------
# hostile files: every member is checked (name, header, declared size) before any array is read


def _valid_arrays() -> dict[str, np.ndarray]:
    p = random_problem("2-2-1", 0, data_points=3)
    out = {k: v.numpy() for k, v in p.params.items()}
    out.update(x=p.x.numpy(), y=p.y.numpy())
    return out


def _write_zip(path: Path, members: list[tuple[str, bytes]]) -> None:
    import warnings
    import zipfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we want
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name, data in members:
                z.writestr(name, data)


def _npy(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_duplicate_members_are_refused(tmp_path: Path) -> None:
    arrays = _valid_arrays()
    members = [(f"{k}.npy", _npy(v)) for k, v in arrays.items()]
    members.append(("bias_out.npy", _npy(arrays["bias_out"] + 5)))  # a second bias_out
    path = tmp_path / "dup.npz"
    _write_zip(path, members)
    with pytest.raises(ProblemError, match=r"dup.npz' holds the member\(s\) bias_out.npy more than "
                                           r"once") as info:
        load_problem(path)
    assert (info.value.argument, info.value.value) == ("bias_out", ["bias_out.npy"])


def test_a_zip_bomb_is_refused_before_reading(tmp_path: Path) -> None:
    """An archive of a few hundred kB whose x declares 800 MB: refused from the headers, before any
    decompression (peak memory stays far below the array)."""
    import resource

    arrays = _valid_arrays()
    big = np.zeros((50_000_000, 2))  # 800 MB of zeros compresses to about 800 kB
    members = [(f"{k}.npy", _npy(v)) for k, v in arrays.items() if k != "x"]
    members.append(("x.npy", _npy(big)))
    del big
    path = tmp_path / "bomb.npz"
    _write_zip(path, members)
    assert path.stat().st_size < 2_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ProblemError, match=r"array 'x' declares shape \(50000000, 2\).*over the "
                                           r"134,217,728 bytes") as info:
        load_problem(path, max_bytes=2**27)
    assert info.value.argument == "max_bytes"
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 200_000, f"peak RSS grew by {grown_kb} kB while refusing"


@pytest.mark.parametrize(("member", "data", "words"), [
    ("notes.txt", b"hello", "'notes.txt' is not an .npy array"),
    ("x.npy", b"not an npy header at all", "array 'x' is not an .npy array"),
])
def test_members_that_are_not_npy_arrays_are_refused(tmp_path: Path, member: str, data: bytes,
                                                     words: str) -> None:
    arrays = _valid_arrays()
    members = [(f"{k}.npy", _npy(v)) for k, v in arrays.items() if f"{k}.npy" != member]
    members.append((member, data))
    path = tmp_path / "odd.npz"
    _write_zip(path, members)
    with pytest.raises(ProblemError, match=words):
        load_problem(path)


@pytest.mark.parametrize(("name", "value", "words"), [
    ("y", np.array(1.0), r"array 'y' has shape \(\), expected 1 or 2 dimensions"),
    ("x", np.array([1.0, 2.0]), r"array 'x' has shape \(2,\), expected 2 dimensions"),
])
def test_arrays_of_the_wrong_dimension_are_refused(tmp_path: Path, name: str, value: np.ndarray,
                                                   words: str) -> None:
    arrays = {**_valid_arrays(), name: value}
    path = tmp_path / "dims.npz"
    np.savez(path, **arrays)
    with pytest.raises(ProblemError, match=words):
        load_problem(path)


def test_a_vae_problem_whose_targets_are_not_its_inputs_is_refused(tmp_path: Path) -> None:
    """A 'vae' problem file with y = 1 − x loaded, and its exact objective changed (3.046 →
    2.988): a binary VAE reconstructs its input, so y must be x, in a file and in Python."""
    import dataclasses

    p = random_problem("4-3-4", 0, data_points=6, loss="vae")
    assert torch.equal(p.y, p.x)
    f = tmp_path / "vae.npz"
    save_problem(p, f)
    arrays = dict(np.load(f))
    arrays["y"] = 1 - arrays["x"]
    np.savez(f, **arrays)
    with pytest.raises(ProblemError, match=r"'y' .*differs from x; a binary VAE .* its targets y "
                                           r"are its inputs x"):
        load_problem(f)
    with pytest.raises(ProblemError, match="differs from x"):
        dataclasses.replace(p, y=1 - p.x)


def test_a_problem_prints_as_one_line() -> None:
    """``print(problem)`` dumped every tensor (about 150 lines for the paper's net; new-user
    review): it is one line that says what the problem is."""
    p = problems.random_problem("2-5-5-5-1", seed=0)
    assert repr(p) == ("Problem(name='arch-2-5-5-5-1-seed0', arch='2-5-5-5-1', num_data=100, "
                       "loss='logistic', noise='logistic', dtype=torch.float64, device=cpu)")
    assert "\n" not in str(problems.preset_problem("digits-vae-exact")) and "kl='analytic'" in repr(
        problems.preset_problem("digits-vae-exact"))


def test_save_problem_takes_overwrite_as_a_bool(tmp_path: Path) -> None:
    """``overwrite="no"`` overwrote the file (a truthy string; attacker review): refused."""
    p = problems.random_problem("2-2-1", seed=0)
    problems.save_problem(p, tmp_path / "p.npz")
    before = (tmp_path / "p.npz").read_bytes()
    with pytest.raises(problems.ProblemError, match=r"overwrite='no' must be True or False"):
        problems.save_problem(problems.random_problem("2-2-1", seed=1), tmp_path / "p.npz",
                              overwrite="no")  # type: ignore[arg-type]
    assert (tmp_path / "p.npz").read_bytes() == before

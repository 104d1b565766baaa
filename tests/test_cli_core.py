"""``sbn-bench exact``, ``problem`` and ``list`` through click's test runner."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from sbn_bench.cli import main
from sbn_bench.problems import Problem, load_problem, random_problem
from sbn_bench.reference import exact_gradient

BUILTINS = ["exact", "reinforce", "reinforce-loo", "arm", "disarm", "concrete", "st-gumbel", "tanh", "st",
            "st-identity", "psa", "muprop", "leg", "rebar", "relax", "nvil", "arms", "double-cv", "gr-mc",
            "reinmax", "hard-st", "ap2", "local-reparam"]
"""The estimators of SPEC §3's and §3b's tables."""


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def _ok(*args: str) -> Result:
    r = _invoke(*args)
    assert r.exit_code == 0, f"sbn-bench {' '.join(args)} exited {r.exit_code}:\n{r.output}\n{r.exception!r}"
    return r


def _check_json_gradient(out: str, problem: Problem) -> None:
    """The public contract: {"objective": float, "gradient": {name: nested lists}}, shapes as in the
    problem file (biases 1-D), values equal to ``exact_gradient`` (JSON floats round-trip exactly)."""
    obj = json.loads(out)
    assert set(obj) == {"objective", "gradient"}
    assert isinstance(obj["objective"], float)
    assert list(obj["gradient"]) == problem.param_names
    J, grad = exact_gradient(problem)
    assert obj["objective"] == J
    for name, value in obj["gradient"].items():
        t = torch.tensor(value, dtype=torch.float64)
        assert t.shape == problem.params[name].shape, (name, t.shape)
        assert torch.equal(t, grad[name]), name


# --------------------------------------------------------------------------------------------
# exact


def test_exact_preset_paper_table(paper: Problem) -> None:
    out = _ok("exact", "--preset", "paper").output
    J, grad = exact_gradient(paper)
    m = re.search(r"objective J = (\S+)", out)
    assert m and abs(float(m.group(1)) - J) <= 1e-11 * J, out
    assert "2-5-5-5-1" in out and "D=200" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()}
    for layer in ["1", "2", "3", "out"]:
        w, b = grad[f"weight_{layer}"], grad[f"bias_{layer}"]
        got = [float(v) for v in rows[layer]]
        expected = [float(w.norm()), float(b.norm()), float(torch.cat([w.flatten(), b]).norm())]
        assert all(abs(g - e) <= 1e-5 * e for g, e in zip(got, expected)), (layer, got, expected)
    total = float(torch.cat([g.flatten() for g in grad.values()]).norm())
    assert abs(float(rows["all"][0]) - total) <= 1e-5 * total


def test_exact_json_matches_exact_gradient(paper: Problem) -> None:
    _check_json_gradient(_ok("exact", "--preset", "paper", "--json").output, paper)


@pytest.mark.parametrize("extra", [["--loss", "softmax"], ["--loss", "mse", "--noise", "gaussian"]])
def test_exact_json_arch_options(extra: list[str]) -> None:
    args = ["--arch", "3-2-3-2", "--seed", "4", "--data-points", "7", *extra]
    loss = extra[1]
    noise = extra[3] if len(extra) > 2 else "logistic"
    _check_json_gradient(_ok("exact", *args, "--json").output,
                         random_problem("3-2-3-2", 4, data_points=7, loss=loss, noise=noise))


def test_problem_file_then_exact_gives_the_same_numbers(tmp_path: Path) -> None:
    f = tmp_path / "p.npz"
    r = _ok("problem", "--arch", "2-4-3-1", "--seed", "3", "--data-points", "9", "--noise", "gaussian",
            "--out", str(f))
    assert str(f) in r.output
    direct = random_problem("2-4-3-1", 3, data_points=9, noise="gaussian")
    from_file = load_problem(f)
    assert all(torch.equal(direct.params[k], from_file.params[k]) for k in direct.params)
    out_arch = _ok("exact", "--arch", "2-4-3-1", "--seed", "3", "--data-points", "9", "--noise", "gaussian",
                   "--json").output
    out_file = _ok("exact", "--problem", str(f), "--json").output
    assert json.loads(out_file) == json.loads(out_arch)
    _check_json_gradient(out_file, direct)
    # an existing file (it may be a trained checkpoint) is replaced only with --overwrite
    before = f.read_bytes()
    r = _invoke("problem", "--arch", "2-3-1", "--out", str(f))
    assert r.exit_code == 1 and "exists; pass --overwrite" in r.output and f.read_bytes() == before
    r = _ok("problem", "--arch", "4-d3:relu-3-d3:tanh-1", "--out", str(f), "--overwrite")
    written = load_problem(f)
    assert written.arch == "4-d3:relu-3-d3:tanh-1" and len(written.params) == 8
    assert "8 parameter arrays" in r.output  # every array, the body's and the head's included


def test_exact_max_bytes_refuses_small_limit() -> None:
    r = _invoke("exact", "--arch", "2-3-1", "--max-exact-bytes", "100")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert re.search(r"^Error: .*table entries, about 37.5 KiB \(38,400 bytes\) of memory, over the "
                     r"limit of 100 bytes", r.output, re.M), r.output


def test_exact_size_guard_through_the_cli() -> None:
    r = _invoke("exact", "--arch", "2-30-30-1")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert re.search(r"^Error: .*2-30-30-1.*table entries.*GiB.*limit of 4 GiB", r.output, re.M), r.output


# --------------------------------------------------------------------------------------------
# bad arguments


def _error_lines(r: Result) -> list[str]:
    return [line for line in r.output.splitlines() if line.startswith("Error:")]


@pytest.mark.parametrize("args,names", [
    (["exact"], ["--problem", "--arch", "--preset"]),
    (["exact", "--arch", "2-3-1", "--preset", "paper"], ["--arch", "--preset"]),
    (["exact", "--problem", __file__, "--arch", "2-3-1"], ["--problem", "--arch"]),
    (["exact", "--arch", "2-x-1"], ["arch", "2-x-1"]),
    (["exact", "--arch", "2-1"], ["arch", "2-1"]),
    (["exact", "--problem", "does-not-exist.npz"], ["does-not-exist.npz"]),
    (["exact", "--preset", "nope"], ["--preset", "nope"]),
    (["exact", "--arch", "2-3-1", "--loss", "hinge"], ["--loss", "hinge"]),
    (["exact", "--arch", "2-3-1", "--data-points", "0"], ["--data-points"]),
    (["exact", "--arch", "2-3-2"], ["weight_out", "logistic"]),
    (["problem", "--arch", "2-3-1"], ["--out"]),
])
def test_bad_arguments_give_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                           names: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    r = _invoke(*args)
    assert r.exit_code != 0, r.output
    assert isinstance(r.exception, SystemExit), f"unhandled {r.exception!r}"
    assert "Traceback" not in r.output
    errors = _error_lines(r)
    assert len(errors) == 1, r.output
    for name in names:
        assert name in errors[0], f"{name!r} not in {errors[0]!r}"


def test_bad_problem_file_names_file_and_array(tmp_path: Path) -> None:
    import numpy as np

    f = tmp_path / "broken.npz"
    np.savez(f, x=np.zeros((3, 2)), y=np.ones(3), weight_1=np.zeros((2, 2)), bias_1=np.zeros(2),
             weight_out=np.zeros((1, 2)))
    r = _invoke("exact", "--problem", str(f))
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = _error_lines(r)
    assert str(f) in line and "'bias_out'" in line and "missing" in line


# --------------------------------------------------------------------------------------------
# list


def test_list_shows_every_builtin() -> None:
    out = _ok("list").output
    first_column = {line.split()[0] for line in out.splitlines()[2:] if line.split()}
    missing = [n for n in BUILTINS if n not in first_column]
    assert not missing, f"not listed: {missing}\n{out}"


def test_list_json_has_every_builtin_with_flags() -> None:
    obj = json.loads(_ok("list", "--json").output)
    by_name = {e["name"]: e for e in obj["estimators"]}
    assert set(BUILTINS) <= set(by_name)
    assert obj["errors"] == []
    for name in BUILTINS:
        e = by_name[name]
        assert e["randomness"] in ("path", "continuous", "none") and isinstance(e["unbiased"], bool), name
    # SPEC §3's and §3b's bias column, for the ones it states plainly
    assert all(by_name[n]["unbiased"] for n in ["exact", "reinforce", "reinforce-loo", "arm", "disarm",
                                                  "muprop", "leg", "rebar", "relax", "nvil", "arms",
                                                  "double-cv"])
    biased = ["concrete", "st-gumbel", "tanh", "st", "st-identity", "psa", "gr-mc", "reinmax", "hard-st",
              "ap2", "local-reparam"]
    assert not any(by_name[n]["unbiased"] for n in biased)
    # every flag of the contract is there
    for e in by_name.values():
        assert {"family", "losses", "layers", "single_layer", "adaptive", "hyperparams", "description",
                "origin", "exact_mode", "evals_per_sample", "noises"} <= set(e), e
    assert [n for n, e in by_name.items() if e["adaptive"]] == ["nvil", "rebar", "relax"]
    assert [n for n, e in by_name.items() if e["single_layer"]] == ["double-cv"]
    assert by_name["double-cv"]["hyperparams"] == {"k": 4, "alpha": -1.0}
    assert (by_name["leg"]["family"], by_name["leg"]["evals_per_sample"]) == ("local-expectation", 16)


def test_list_table_shows_the_columns_of_the_json() -> None:
    lines = _ok("list").output.splitlines()
    assert lines[0].split() == ["name", "family", "unbiased", "randomness", "evals", "noises", "losses",
                                "layers", "hyperparams", "description"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert "dense (1 layer)" in rows["double-cv"] and "k=4,alpha=-1.0" in rows["double-cv"]
    assert "continuous, adaptive" in rows["relax"] and "control-variates" in rows["relax"]
    assert "logistic,mse,softmax" in rows["reinmax"] and " logistic " in rows["reinmax"]


def test_help_and_version() -> None:
    out = _ok("--help").output
    for cmd in ["exact", "list", "problem"]:
        assert cmd in out
    assert "--problem" in _ok("exact", "--help").output
    assert re.search(r"sbn-bench, version \d", _ok("--version").output)


def test_the_top_level_help_loads_no_command_and_names_each_commands_own_help() -> None:
    """``sbn-bench --help`` and ``--version`` import no command module (torch takes a second or
    two to load); the one-line help they show is the one each command shows once loaded."""
    import importlib
    import subprocess
    import sys

    code = ("import sys; from sbn_bench.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))")
    for args in (["--help"], ["--version"]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                             check=True).stdout
        assert out.splitlines()[-1] == "[]", (args, out)
    cli = importlib.import_module("sbn_bench.cli")
    help_text = _ok("--help").output
    for name, (module, attribute, short) in cli._COMMANDS.items():
        cmd = cli.main.get_command(None, name)
        assert cmd is getattr(importlib.import_module(module), attribute)
        assert cmd.name == name and cmd.short_help == short
        assert re.search(rf"^  {name} +{re.escape(short)}$", help_text, re.M), name
    assert cli.main.get_command(None, "nope") is None
    # the commands are importable as before the lazy loading (module __getattr__)
    from sbn_bench.cli import exact, list_, run
    assert (exact.name, list_.name, run.name) == ("exact", "list", "run")
    with pytest.raises(ImportError):
        from sbn_bench.cli import nothing  # noqa: F401


@pytest.mark.parametrize("args, groups", [
    (["--arch", "4-d3:relu-3-d3:tanh-1", "--data-points", "5"], ["body", "1", "head", "out"]),
    (["--arch", "6-2-6", "--loss", "vae", "--data-points", "3"], ["1", "out", "prior"]),
])
def test_the_exact_table_has_a_row_for_every_parameter_group(args, groups) -> None:
    """Every group of the gradient gets a row (the body, the head and the VAE's prior were left
    out while ``all`` counted them), and each row's |grad| is that group's norm in ``--json``."""
    rows = [line.split() for line in _ok("exact", *args).output.splitlines()]
    table = {r[0]: r for r in rows[rows.index(["layer", "|grad", "W|", "|grad", "b|", "|grad|"]) + 2:]}
    assert list(table) == [*groups, "all"]
    grad = json.loads(_ok("exact", *args, "--json").output)["gradient"]

    def group(name: str) -> str:
        return name.split("_")[0] if name.startswith(("body_", "head_")) else \
            "prior" if name == "prior_logits" else name.rsplit("_", 1)[1]

    for g in groups:
        want = sum(float(torch.tensor(v).square().sum()) for n, v in grad.items() if group(n) == g)
        assert float(table[g][-1]) == pytest.approx(want ** 0.5, rel=1e-5), g
    total = sum(float(torch.tensor(v).square().sum()) for v in grad.values()) ** 0.5
    assert float(table["all"][-1]) == pytest.approx(total, rel=1e-5)


def test_list_and_problem_are_callable_from_python(tmp_path: Path) -> None:
    """``sbn-bench list --json`` is ``load_registry().describe()``; ``problem`` without
    ``--overwrite`` is ``save_problem(..., overwrite=False)``."""
    from sbn_bench import load_registry, save_problem
    from sbn_bench.problems import ProblemError

    assert json.loads(_ok("list", "--json").output)["estimators"] == \
        json.loads(json.dumps(load_registry().describe()))
    f = tmp_path / "p.npz"
    p = random_problem("2-2-1", 0, data_points=3)
    save_problem(p, f, overwrite=False)
    with pytest.raises(ProblemError, match="exists; pass overwrite=True") as e:
        save_problem(p, f, overwrite=False)
    assert e.value.argument == "path"
    save_problem(p, f)  # the default replaces, as before


def test_problem_out_through_a_symbolic_link_writes_its_target(tmp_path: Path) -> None:
    """A link to nowhere was replaced by a file without --overwrite (exists() is False for it),
    and a link to a file was replaced by a file with it, leaving the target stale: the link is
    now there to refuse, and --overwrite writes through it."""
    target, link = tmp_path / "real.npz", tmp_path / "link.npz"
    link.symlink_to(target)
    r = CliRunner().invoke(main, ["problem", "--arch", "2-3-1", "--out", str(link)])
    assert r.exit_code == 1 and "exists; pass --overwrite" in r.stderr and not target.exists()
    _ok("problem", "--arch", "2-3-1", "--out", str(link), "--overwrite")
    assert link.is_symlink() and load_problem(target).arch == "2-3-1"
    _ok("problem", "--arch", "2-4-1", "--out", str(link), "--overwrite")
    assert link.is_symlink() and load_problem(link).arch == "2-4-1"

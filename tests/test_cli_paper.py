"""``sbn-bench run --preset paper --train-seeds``: the seed lists and ranges it parses, and what it
refuses before any work."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sbn_bench.cli import main
from sbn_bench.config import parse_seeds


@pytest.mark.parametrize("text, want", [
    ("0-4", (0, 1, 2, 3, 4)), ("0,2,5", (0, 2, 5)), ("0-2,7", (0, 1, 2, 7)), ("3", (3,)),
    (" 1 , 4-5 ", (1, 4, 5)), ("5,1", (5, 1)),
])
def test_seed_lists_and_ranges(text: str, want: tuple[int, ...]) -> None:
    assert parse_seeds(text) == want


@pytest.mark.parametrize("text, words", [
    ("4-0", "runs backwards"), ("0-2,1", "given twice"), ("a", "neither a seed nor a range"),
    ("-1", "neither a seed nor a range"), ("", "no seed"), ("1-", "neither"),
    ("0,,1", "empty item"), ("0,1,", "empty item"), ("0-99999999999", "at most 10000"),
])
def test_bad_seed_lists_are_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_seeds(text)


def test_train_seeds_is_an_option_of_the_paper_preset() -> None:
    res = CliRunner().invoke(main, ["run", "--preset", "quick", "--train-seeds", "0-1"])
    assert res.exit_code == 2 and "--train-seeds is an option of --preset paper" in res.output
    res = CliRunner().invoke(main, ["run", "--preset", "paper", "--train-seeds", "2-1"])
    assert res.exit_code == 2 and "runs backwards" in res.output, res.output


@pytest.mark.parametrize("args", [
    ["run", "--arch", "2-3-1", "--seeds", "0-99999999999"],
    ["run", "--arch", "2-3-1", "--seeds", ",".join(map(str, range(10_001)))],
    ["run", "--preset", "paper", "--train-seeds", "0-99999999999"],
    ["train", "--preset", "digits-vae-exact", "--seeds", "0-99999999999"],
])
def test_a_huge_seed_list_is_a_usage_error_before_it_is_built(args: list[str], tmp_path) -> None:
    """It was a MemoryError traceback, or minutes of planning (a quadratic check of repeats)."""
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "seeds" in res.output and "10000" in res.output, res.output
    assert not (tmp_path / "x").exists()


def test_seeds_take_ranges_in_python_and_toml_as_on_the_command_line(tmp_path) -> None:
    from sbn_bench.config import ConfigError, ProblemSpec, RunConfig, load_config
    assert RunConfig(problems=(ProblemSpec(arch="2-3-1"),), seeds="0-2,7").seeds == (0, 1, 2, 7)
    with pytest.raises(ConfigError, match="at most 10000") as e:
        RunConfig(problems=(ProblemSpec(arch="2-3-1"),), seeds=range(10**11))
    assert e.value.argument == "seeds"
    f = tmp_path / "c.toml"
    f.write_text('seeds = "0-2"\n[[problem]]\narch = "2-3-1"\n')
    assert load_config(f).seeds == (0, 1, 2)
    f.write_text('seeds = "0-"\n[[problem]]\narch = "2-3-1"\n')
    with pytest.raises(ConfigError, match="neither a seed nor a range"):
        load_config(f)


def test_huge_seed_lists_are_refused_by_the_library_before_they_are_built(tmp_path) -> None:
    from sbn_bench import paper, train_study
    from sbn_bench.errors import ArgumentError
    with pytest.raises(train_study.TrainArgumentError, match="at most 10000"):
        train_study.run_study("digits-vae-exact", out=tmp_path / "s", seeds=range(10**11))
    with pytest.raises(ArgumentError, match="at most 10000"):
        paper.check_train_seeds(range(10**11))
    assert not (tmp_path / "s").exists()
    # generators still work (read up to one seed past the limit)
    assert paper.check_train_seeds(s for s in range(3)) == (0, 1, 2)
    with pytest.raises(ArgumentError, match="at most 10000"):
        paper.check_train_seeds(s for s in range(10**11))
    with pytest.raises(train_study.TrainArgumentError, match="at most 10000"):
        train_study.run_study("digits-vae-exact", out=tmp_path / "s", seeds=(s for s in range(10**11)))

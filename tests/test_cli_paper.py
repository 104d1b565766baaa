"""``sbn-bench run --preset paper --train-seeds``: the seed lists and ranges it parses, and what it
refuses before any work."""

from __future__ import annotations

import importlib

import pytest
from click.testing import CliRunner

from sbn_bench.cli import main

cli_run = importlib.import_module("sbn_bench.cli.run")  # the module (sbn_bench.cli.run is the command)


@pytest.mark.parametrize("text, want", [
    ("0-4", (0, 1, 2, 3, 4)), ("0,2,5", (0, 2, 5)), ("0-2,7", (0, 1, 2, 7)), ("3", (3,)),
    (" 1 , 4-5 ", (1, 4, 5)), ("5,1", (5, 1)),
])
def test_seed_lists_and_ranges(text: str, want: tuple[int, ...]) -> None:
    assert cli_run.parse_seeds(text) == want


@pytest.mark.parametrize("text, words", [
    ("4-0", "runs backwards"), ("0-2,1", "given twice"), ("a", "neither a seed nor a range"),
    ("-1", "neither a seed nor a range"), ("", "no seed"), ("1-", "neither"),
])
def test_bad_seed_lists_are_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        cli_run.parse_seeds(text)


def test_train_seeds_is_an_option_of_the_paper_preset() -> None:
    res = CliRunner().invoke(main, ["run", "--preset", "quick", "--train-seeds", "0-1"])
    assert res.exit_code == 2 and "--train-seeds is an option of --preset paper" in res.output
    res = CliRunner().invoke(main, ["run", "--preset", "paper", "--train-seeds", "2-1"])
    assert res.exit_code == 2 and "runs backwards" in res.output, res.output

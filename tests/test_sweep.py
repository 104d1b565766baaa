"""Sweeps (sbn_bench.sweep and the TOML ``[sweep]`` table): a grid of problems from one table, with
readable unique names, impossible combinations refused naming them, and sweeps large enough for a
study (hundreds of cells) that plan before any work."""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest
from click.testing import CliRunner

from sbn_bench.cli import main
from sbn_bench.config import ConfigError, ProblemSpec, load_config
from sbn_bench.runner import config_from_manifest, prepare
from sbn_bench.sweep import SweepError, expand_sweep, expand_sweeps


def write(tmp_path, text: str):
    f = tmp_path / "sweep.toml"
    f.write_text(textwrap.dedent(text))
    return f


def test_a_grid_expands_to_every_combination_in_order_with_readable_names():
    points = expand_sweep({"arch": ["2-5-5-1", "3-4-4-4-1"], "noise": ["logistic", "gaussian"],
                           "loss": ["logistic"], "seed": [0, 1, 2], "data_points": 50})
    assert len(points) == 2 * 2 * 1 * 3
    assert points[0].name == "arch-2-5-5-1_noise-logistic_loss-logistic_D50_seed0"
    assert points[-1].name == "arch-3-4-4-4-1_noise-gaussian_loss-logistic_D50_seed2"
    assert len({p.name for p in points}) == len(points)
    assert points[3].problem_fields() == {"arch": "2-5-5-1", "noise": "gaussian", "loss": "logistic",
                                          "data_points": 50, "seed": 0,
                                          "name": "arch-2-5-5-1_noise-gaussian_loss-logistic_D50_seed0"}


def test_presets_vary_by_seed_and_defaults_apply():
    points = expand_sweep({"preset": ["quick", "paper"], "seed": [0, 1]})
    assert [p.name for p in points] == ["quick-seed0", "quick-seed1", "paper-seed0", "paper-seed1"]
    assert points[0].problem_fields() == {"preset": "quick", "seed": 0, "name": "quick-seed0"}
    (only,) = expand_sweep({"arch": "2-3-1"})
    assert only.name == "arch-2-3-1_noise-logistic_loss-logistic_D100_seed0"


@pytest.mark.parametrize("table, words", [
    ({"arch": ["2-5-5-1", "2-5-3"], "loss": ["logistic"]},
     "sweep combination arch='2-5-3', noise='logistic', loss='logistic', data_points=100, seed=0 "
     "is impossible"),
    ({"arch": ["2-5-1"], "loss": ["softmax"], "seed": [4]},
     "arch='2-5-1', noise='logistic', loss='softmax', data_points=100, seed=4 is impossible"),
    ({"arch": ["2-5-1"], "colour": ["red"]}, "unknown key(s) 'colour'"),
    ({"noise": ["gaussian"]}, "needs arch = [...] or preset = [...]"),
    ({"preset": ["paper"], "loss": ["mse"]}, "sweep key loss varies arch problems"),
    ({"arch": []}, "sweep key arch=[] is empty"),
    ({"arch": ["2-3-1", "2-3-1"]}, "repeats 2-3-1"),
    ({"arch": ["2-3-1"], "noise": ["cauchy"]}, "'cauchy' is not one of"),
    ({"arch": ["2-x-1"]}, "sweep key arch:"),
    ({"arch": ["2-3-1"], "seed": [-1]}, "seed: -1 is below 0"),
    ({"arch": ["2-3-1"], "data_points": [True]}, "True is not an integer"),
    ({"arch": [f"2-{n}-1" for n in range(1, 101)], "seed": list(range(1001))},
     "expands to 100100 problems, over the limit"),
])
def test_bad_sweeps_are_refused_naming_what_is_wrong(table, words):
    with pytest.raises(SweepError) as e:
        expand_sweep(table)
    assert words in str(e.value)


def test_impossible_combination_names_the_file_line_and_combination(tmp_path):
    f = write(tmp_path, """\
        samples = 100

        [sweep]
        arch = ["2-4-1", "2-4-3"]
        loss = ["softmax"]
        """)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "sweep.toml', line 3" in msg and "arch='2-4-1'" in msg and "loss='softmax'" in msg


def test_sweep_combines_with_problem_tables_and_several_grids(tmp_path):
    f = write(tmp_path, """\
        estimators = ["psa", "st"]

        [[problem]]
        preset = "quick"

        [[sweep]]
        arch = ["2-3-1"]
        seed = [0, 1]
        data_points = 5

        [[sweep]]
        arch = ["2-3-3"]
        loss = ["softmax", "mse"]
        data_points = 5
        """)
    cfg = load_config(f)
    assert [p.label for p in cfg.problems] == [
        "quick-seed0", "arch-2-3-1_noise-logistic_loss-logistic_D5_seed0",
        "arch-2-3-1_noise-logistic_loss-logistic_D5_seed1",
        "arch-2-3-3_noise-logistic_loss-softmax_D5_seed0", "arch-2-3-3_noise-logistic_loss-mse_D5_seed0"]
    assert cfg.problems[4] == ProblemSpec(arch="2-3-3", loss="mse", data_points=5,
                                          name="arch-2-3-3_noise-logistic_loss-mse_D5_seed0")
    # the manifest records the expanded problems: a rerun gives the same configuration
    again = config_from_manifest({"config": cfg.to_dict()})
    assert again.problems == cfg.problems


def test_a_problem_table_named_like_a_sweep_problem_is_refused(tmp_path):
    f = write(tmp_path, """\
        [[problem]]
        arch = "2-3-1"
        name = "arch-2-3-1_noise-logistic_loss-logistic_D100_seed0"

        [sweep]
        arch = ["2-3-1"]
        """)
    with pytest.raises(ConfigError, match="also a \\[\\[problem\\]\\] table's name"):
        load_config(f)


def test_two_grids_giving_the_same_problem_are_refused():
    with pytest.raises(SweepError, match="comes from more than one sweep table"):
        expand_sweeps([{"arch": ["2-3-1"]}, {"arch": ["2-3-1"], "seed": [0, 1]}])


def test_a_study_of_hundreds_of_cells_plans_before_any_work(tmp_path):
    f = write(tmp_path, """\
        estimators = ["psa", "st", "reinforce"]
        seeds = [0, 1]
        samples = 200
        executor = "processes:2"

        [sweep]
        arch = ["2-3-1", "2-4-4-1", "3-3-3-1", "2-2-2-2-1", "4-5-1"]
        noise = ["logistic", "gaussian"]
        loss = ["logistic", "mse"]
        seed = [0, 1]
        data_points = 20
        """)
    cfg = load_config(f)
    assert len(cfg.problems) == 5 * 2 * 2 * 2 == 40
    plan = prepare(cfg)  # every check of the run, before any work (nothing is measured)
    # one throughput cell per network shape (the two problem seeds share one: 20 shapes, each
    # measuring its 3 estimators together), then one statistics cell per estimator and seed
    kinds = [c.kind for c in plan.cells]
    assert kinds.count("throughput") == 20 and kinds.count("metrics") == 40 * 3 * 2 == 240
    assert len({c.id for c in plan.cells}) == len(plan.cells) == 260


def test_a_small_sweep_runs_from_the_command_line(tmp_path):
    f = write(tmp_path, """\
        estimators = ["st"]
        samples = 16
        M = [1, 4]

        [throughput]
        enabled = false

        [sweep]
        arch = ["2-2-1", "2-2-2"]
        loss = ["mse"]
        data_points = 3
        """)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["run", "--config", str(f), "--out", str(out), "--no-report",
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    m = pd.read_csv(out / "metrics.csv")
    assert list(dict.fromkeys(m["problem"])) == ["arch-2-2-1_noise-logistic_loss-mse_D3_seed0",
                                                 "arch-2-2-2_noise-logistic_loss-mse_D3_seed0"]
    man = json.loads((out / "manifest.json").read_text())
    assert [p["problem"] for p in man["problems"]] == list(dict.fromkeys(m["problem"]))

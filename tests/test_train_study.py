"""The training benchmark (sbn_bench.train_study, sbn_bench.train_report): a small study through the
executors, its resume after a kill, the evaluation and probes against exact values, and the claim
logic on the study's results and on synthetic curves (every verdict exercised)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("sklearn")

from sbn_bench import model, provenance  # noqa: E402
from sbn_bench import train_report as tr  # noqa: E402
from sbn_bench import train_study as ts  # noqa: E402
from sbn_bench.errors import SbnBenchError  # noqa: E402
from sbn_bench.estimators import estimate, load_registry  # noqa: E402
from sbn_bench.problems import Problem, digits_problem  # noqa: E402
from sbn_bench.reference import exact_gradient, objective  # noqa: E402
from sbn_bench.runner.mcref import McReferenceError  # noqa: E402
from sbn_bench.train import TrainArgumentError, _State, _step_gradient  # noqa: E402

ESTIMATORS = ["psa", "st", "disarm"]
SEEDS = [0, 1]


def tiny(preset: str = "digits-conv", **kw: object) -> ts.StudySettings:
    """Settings small enough for a unit test (two epochs, cheap evaluation and probes)."""
    base = dict(epochs=2, eval_every=1, eval_samples=2, iwae_samples=4, probe_epochs=(0, 2),
                probe_batch=8, probe_samples=4, reference_samples=16)
    base.update(kw)
    return ts.preset_settings(preset, **base)


def rows(df: pd.DataFrame) -> pd.DataFrame:
    """The table without its wall times (the only columns that differ between reruns)."""
    return df.drop(columns=[c for c in ("epoch_s", "train_s") if c in df.columns])


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> ts.StudyResult:
    out = tmp_path_factory.mktemp("study") / "conv"
    return ts.run_study("digits-conv", out=out, estimators=ESTIMATORS, seeds=SEEDS,
                        settings=tiny())


def test_pipeline_tables(study: ts.StudyResult) -> None:
    manifest, curves, probes = ts.load_study(study.out)
    assert manifest["status"] == "complete" and study.ran == 6 and study.resumed == 0
    assert list(curves.columns) == ts.CURVE_COLUMNS and list(probes.columns) == ts.PROBE_COLUMNS
    assert len(curves) == len(ESTIMATORS) * len(SEEDS) * 3  # epochs 0, 1, 2
    assert len(probes) == len(ESTIMATORS) * len(SEEDS) * 2  # probe epochs 0 and 2
    assert curves["test_accuracy"].between(0, 1).all() and curves["test_objective"].gt(0).all()
    assert curves["test_iwae"].isna().all()  # a classifier has no IWAE bound
    for _, g in curves.groupby(["estimator", "seed"]):
        assert g["step"].tolist() == [0, 29, 58]  # ceil(1438 / 50) steps per epoch
        assert (np.diff(g["train_s"]) > 0).all()
    # probes: finite, the bias no larger than the RMSE, a Monte-Carlo reference beyond enumeration
    assert (probes["bias"] <= probes["rrmse"] + 1e-12).all()
    assert probes["reference"].eq("mc:disarm:16").all()
    # same seed, same initial parameters for every estimator: identical epoch-0 rows
    e0 = curves[curves["epoch"] == 0].set_index(["seed", "estimator"])["test_objective"]
    for seed in SEEDS:
        assert e0.loc[seed].nunique() == 1
    assert e0.loc[0].iloc[0] != e0.loc[1].iloc[0]


def test_the_probes_table_states_its_reference_error(study: ts.StudyResult) -> None:
    """An exact reference has no error of its own (the note read "0–0"); a Monte-Carlo one gives
    its range, one value once."""
    _, _, probes = ts.load_study(study.out)

    def note(frame: pd.DataFrame) -> str:
        table = tr.probes_table(frame, ESTIMATORS)
        assert table is not None
        return table.notes[-1]

    assert "no error of its own" in note(probes.assign(reference="exact", reference_rel_se=0.0))
    assert "0–0" not in note(probes.assign(reference="exact", reference_rel_se=0.0))
    assert "√(V_R/N)/‖g‖ 0.05 (" in note(probes.assign(reference_rel_se=0.05))
    rel = probes["reference_rel_se"]
    assert f"√(V_R/N)/‖g‖ {rel.min():.2g}–{rel.max():.2g}" in note(probes)


def test_report_written(study: ts.StudyResult) -> None:
    paths = tr.write_training_report(study.out)
    md = paths["md"].read_text()
    assert "The paper's training claims" in md and "Final test figures" in md
    # the verdicts' legend is the run report's, told for a study (it has no exact-mode values)
    assert "95 % Student t intervals over paired seeds" in md and "Exact-mode" not in md
    assert (paths["figures"] / "digits-conv-curves.png").stat().st_size > 10_000
    assert (paths["figures"] / "digits-conv-probes.png").exists()
    assert "data:image/png;base64," in paths["html"].read_text()


def test_claims_on_the_study(study: ts.StudyResult) -> None:
    _, curves, probes = ts.load_study(study.out)
    claims = tr.evaluate_training_claims(curves, probes, "digits-conv")
    assert len(claims) == 4
    for c in claims:
        assert c.verdict in ("confirmed", "not confirmed", "inconclusive")  # data for each
        assert c.evidence and c.criterion


def test_resume_after_kill(study: ts.StudyResult, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    calls = []

    def kill_after_two(done: int, total: int, message: str) -> None:
        calls.append(message)
        if done == 2:
            raise KeyboardInterrupt  # Ctrl-C (or a killed manager) after two cells
    with pytest.raises(KeyboardInterrupt):
        ts.run_study("digits-conv", out=out, estimators=ESTIMATORS, seeds=SEEDS, settings=tiny(),
                     progress=kill_after_two)
    written = sorted(p.name for p in (out / ts.CELLS_DIR).glob("*.json"))
    assert written == ["psa-seed0.json", "psa-seed1.json"]
    killed = json.loads((out / ts.STUDY_NAME).read_text())  # it said "running" forever
    assert killed["status"] == "interrupted" and killed["runs"][0]["interrupted"]
    # an extension interrupted before any cell of its new seed does not hold the study to it
    def stop(done: int, total: int, message: str) -> None:
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        ts.run_study("digits-conv", out=out, estimators=ESTIMATORS[1:] + ESTIMATORS[:1],
                     seeds=(*SEEDS, 7), settings=tiny(), resume=True, progress=stop)  # st seed 0 first
    assert 7 in json.loads((out / ts.STUDY_NAME).read_text())["seeds"]
    assert not list((out / ts.CELLS_DIR).glob("*-seed7.json"))
    # resuming with fewer estimators or seeds would drop cells from the tables: refused
    for kw, what in (({"estimators": ESTIMATORS[:1]}, "estimators"), ({"seeds": SEEDS[:1]}, "seeds")):
        args = {"estimators": ESTIMATORS, "seeds": SEEDS, **kw}
        with pytest.raises(ts.StudyError, match=f"it has {what} .* would be left out") as err:
            ts.run_study("digits-conv", out=out, settings=tiny(), resume=True, **args)
        assert err.value.argument == what
    # a truncated result (a kill during a non-atomic copy, a full disk) is not a result
    st0 = ts.cell_file(out, "st", 0)
    st0.write_text(ts.cell_file(study.out, "st", 0).read_text()[:100])
    with pytest.raises(ts.StudyError, match="resume"):  # not without --resume
        ts.run_study("digits-conv", out=out, estimators=ESTIMATORS, seeds=SEEDS, settings=tiny())
    with pytest.raises(ts.StudyError, match=r"settings differ from these \(lr: [0-9.]+ → 0\.02\)"):
        ts.run_study("digits-conv", out=out, estimators=ESTIMATORS, seeds=SEEDS,
                     settings=tiny(lr=0.02), resume=True)
    # an unreadable study.json is said to be one (it read as "settings differ … (None vs …)")
    manifest = out / ts.STUDY_NAME
    text = manifest.read_text()
    for bad in ('{"trunc', "[1, 2]"):
        manifest.write_text(bad)
        with pytest.raises(ts.StudyError, match=f"its {ts.STUDY_NAME} cannot be read"):
            ts.run_study("digits-conv", out=out, estimators=ESTIMATORS, seeds=SEEDS,
                         settings=tiny(), resume=True)
    manifest.write_text(text)
    ran = []
    res = ts.run_study("digits-conv", out=out, estimators=ESTIMATORS, seeds=SEEDS, settings=tiny(),
                       resume=True, progress=lambda d, n, m: ran.append(m.split(":")[0]))
    assert res.resumed == 2 and res.ran == 4
    assert sorted(ran) == ["disarm seed 0", "disarm seed 1", "st seed 0", "st seed 1"]
    # the resumed study equals the uninterrupted one (all but wall times)
    _, a, pa = ts.load_study(study.out)
    _, b, pb = ts.load_study(out)
    pd.testing.assert_frame_equal(rows(a), rows(b))
    pd.testing.assert_frame_equal(pa, pb)
    # a finished study resumed again runs nothing; its wall time is kept per invocation
    again = ts.run_study("digits-conv", out=out, estimators=ESTIMATORS, seeds=SEEDS,
                         settings=tiny(), resume=True)
    assert again.ran == 0 and again.resumed == 6
    m = json.loads((out / ts.STUDY_NAME).read_text())
    # every invocation counted, the interrupted ones too (st seed 0 twice: truncated above)
    assert [r["ran"] for r in m["runs"]] == [2, 1, 4, 0] and m["cell_seconds"] > 0
    assert [bool(r.get("interrupted")) for r in m["runs"]] == [True, True, False, False]
    # a record without its rows (edited, damaged) is trained again, not left out of the tables
    cell = ts.cell_file(out, "psa", 1)
    rec = json.loads(cell.read_text())
    edits = [{"curves": rec["curves"][:1]}, {"probes": rec["probes"][:1]},
             {"probes": [{**r, "estimator": "st"} for r in rec["probes"]]},
             {"curves": [{k: v for k, v in r.items() if k != "test_objective"} for r in rec["curves"]]}]
    for field in edits:
        cell.write_text(json.dumps({**rec, **field}))
        again_ran: list[str] = []
        res = ts.run_study("digits-conv", out=out, estimators=ESTIMATORS, seeds=SEEDS,
                           settings=tiny(), resume=True,
                           progress=lambda d, n, m, log=again_ran: log.append(m))
        assert res.ran == 1 and again_ran[0].startswith("psa seed 1"), (field, again_ran)
    _, c, pc = ts.load_study(out)
    pd.testing.assert_frame_equal(rows(a), rows(c))
    pd.testing.assert_frame_equal(pa, pc)


def test_resume_refuses_another_random_stream_and_retrains_another_estimator_version(
        study: ts.StudyResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same seed draws other numbers under another random stream, so a study drawn from
    another (or an unrecorded) one is not resumed; a cell of another version of its estimator is
    trained again, the others are kept."""
    out = tmp_path / "copy"
    shutil.copytree(study.out, out)
    path = out / ts.STUDY_NAME
    m = json.loads(path.read_text())
    assert m["versions"]["stream"] == model.STREAM_VERSION
    cell = json.loads(ts.cell_file(out, "psa", 0).read_text())
    assert cell["stream"] == model.STREAM_VERSION and cell["estimator_version"]
    assert cell["processor"] == f"{provenance.cpu_model()} ({provenance.cpu_capability()})"
    kw = dict(estimators=ESTIMATORS, seeds=SEEDS, settings=tiny(), resume=True)
    for was, says in ((model.STREAM_VERSION - 1, f"{model.STREAM_VERSION - 1}"),
                      (None, "not recorded")):
        versions = {k: v for k, v in m["versions"].items() if k != "stream"}
        if was is not None:
            versions["stream"] = was
        path.write_text(json.dumps({**m, "versions": versions}))
        with pytest.raises(ts.StudyError, match=f"random stream {says}.*draws stream "
                                                f"{model.STREAM_VERSION}") as e:
            ts.run_study("digits-conv", out=out, **kw)
        assert e.value.argument == "resume"
    path.write_text(json.dumps(m))
    ts.cell_file(out, "st", 1).write_text(json.dumps({**json.loads(
        ts.cell_file(out, "st", 1).read_text()), "estimator_version": "0"}))
    ran: list[str] = []
    res = ts.run_study("digits-conv", out=out, progress=lambda d, n, msg: ran.append(msg), **kw)
    assert res.ran == 1 and res.resumed == 5 and ran[0].startswith("st seed 1:")
    _, a, pa = ts.load_study(study.out)
    _, b, pb = ts.load_study(out)
    pd.testing.assert_frame_equal(rows(a), rows(b))
    pd.testing.assert_frame_equal(pa, pb)


@pytest.mark.parametrize("executor", ["processes:2", pytest.param("dask:2", marks=pytest.mark.slow),
                                      pytest.param("auto", marks=pytest.mark.slow)])
def test_parallel_executors_same_numbers(study: ts.StudyResult, tmp_path: Path, executor: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Training cells (generic job cells) in worker processes and on a local Dask cluster: the
    same tables as serially (on Dask every seed once trained from the first seed's problem).
    ``auto`` (the default) from the ``sbn-bench`` command on two CPUs: two worker processes for the
    two cells, recorded in the manifest; serial for a study with nothing left to train."""
    if executor.startswith("dask"):
        pytest.importorskip("distributed")
    if executor == "auto":
        from sbn_bench.runner import executors

        monkeypatch.setattr(executors, "main_allows_processes", lambda: True)
        monkeypatch.setattr(executors, "default_workers", lambda: 2)
    out = tmp_path / "parallel"
    ts.run_study("digits-conv", out=out, estimators=["st"], seeds=SEEDS, settings=tiny(),
                 executor=executor)
    if executor == "auto":
        assert json.loads((out / ts.STUDY_NAME).read_text())["executor"] == "processes:2"
        ts.run_study("digits-conv", out=out, estimators=["st"], seeds=SEEDS, settings=tiny(),
                     resume=True)
        again = json.loads((out / ts.STUDY_NAME).read_text())
        assert again["runs"][-1]["executor"] == "serial"  # nothing left to train
        assert again["executor"] == "processes:2"  # what trained the cells
    _, a, pa = ts.load_study(study.out)
    _, b, pb = ts.load_study(out)
    pd.testing.assert_frame_equal(rows(a[a["estimator"] == "st"]).reset_index(drop=True),
                                  rows(b).reset_index(drop=True))
    pd.testing.assert_frame_equal(pa[pa["estimator"] == "st"].reset_index(drop=True), pb)


def test_failed_cell_recorded(tmp_path: Path) -> None:
    # a diverging learning rate is a recorded failure, not a crash; the other cells finish
    out = tmp_path / "diverge"
    res = ts.run_study("digits-vae", out=out, estimators=["st"], seeds=[0],
                       settings=tiny("digits-vae", epochs=1, lr=1e308, probe_epochs=()))
    assert res.failures and res.failures[0]["estimator"] == "st"
    rec = json.loads(ts.cell_file(out, "st", 0).read_text())
    assert rec["status"] == "failed" and "diverged" in rec["error"]


def test_an_estimator_writing_into_the_weights_is_a_failed_cell(tmp_path: Path) -> None:
    """A plugin adding 1 to the weights it was given at every step was listed as an ordinary
    result ('final test −ELBO 38.16'); the cell is now a recorded failure that says why."""
    plugin = tmp_path / "plug.py"
    plugin.write_text(
        "import dataclasses\n"
        "from sbn_bench.estimators.builtin.straight_through import st\n"
        "def mutates():\n"
        "    base = st()\n"
        "    def surrogate(problem, params, generator):\n"
        "        problem.params['weight_1'].add_(1.0)\n"
        "        return base.surrogate(problem, params, generator)\n"
        "    return dataclasses.replace(base, name='mutates', surrogate=surrogate,\n"
        "                               path_surrogate=None)\n"
        "ESTIMATORS = {'mutates': mutates}\n", encoding="utf-8")
    out = tmp_path / "s"
    res = ts.run_study("digits-vae-exact", out=out, estimators=["st", "mutates"], seeds=[0],
                       settings=tiny("digits-vae-exact", epochs=1, probe_epochs=()),
                       plugins=[str(plugin)], executor="serial")
    assert [f["estimator"] for f in res.failures] == ["mutates"]
    rec = json.loads(ts.cell_file(out, "mutates", 0).read_text())
    assert rec["status"] == "failed" and "modified the problem it was given" in rec["error"]
    assert json.loads(ts.cell_file(out, "st", 0).read_text())["status"] != "failed"


@pytest.mark.parametrize("kwargs, argument", [
    (dict(estimators="st"), "estimators"), (dict(seeds=3), "seeds"), (dict(progress=5), "progress"),
    (dict(plugins=5), "plugins"), (dict(estimators=(e for e in ["st"])), "estimators")])
def test_arguments_of_the_wrong_type_are_refused(kwargs: dict, argument: str) -> None:
    """estimators='st' was read letter by letter ("estimator 's' is unknown"), seeds=3 raised a
    raw TypeError, progress=5 a TypeError after the first cell; a generator of estimators was used
    up by the plugins' check and then called empty."""
    with pytest.raises(TrainArgumentError, match=f"argument {argument}=") as e:
        ts.run_study("digits-vae-exact", out="/nonexistent/x",
                     **{"estimators": ["st"], "seeds": [0], "settings": tiny("digits-vae-exact"),
                        **kwargs})
    assert e.value.argument == argument


def test_a_study_whose_every_cell_failed_exits_1(tmp_path: Path) -> None:
    """It exited 0 ('complete with failures'), where a run whose every statistics cell failed exits
    1; the tables and report are written either way."""
    from click.testing import CliRunner

    from sbn_bench.cli import main

    out = tmp_path / "all-failed"
    r = CliRunner().invoke(main, ["train", "--preset", "digits-vae-exact", "--estimators", "st",
                                  "--seeds", "0", "--epochs", "1", "--lr", "1e308", "--executor",
                                  "serial", "--quiet", "--out", str(out)])
    assert r.exit_code == 1 and "every cell of the study failed (1: see" in r.output, r.output
    assert (out / "failures.csv").is_file() and (out / "report.md").is_file()


def test_publish_exits_1_when_every_cell_of_a_study_failed(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``train --publish`` exited 0 when every cell of one of its studies had failed; it now
    writes the reports (the index says how many cells failed) and exits 1 naming the study, as a
    single study does. Two studies (one diverging, one fine) stand in for the published four."""
    import functools

    from click.testing import CliRunner

    from sbn_bench import train_report
    from sbn_bench.cli import main

    real = ts.run_study

    def small(preset: str, *, out: Path, seeds: tuple[int, ...], executor: str, resume: bool,
              progress: object) -> ts.StudyResult:
        lr = 1e308 if preset == "digits-vae-exact" else None
        return real(preset, out=out, estimators=["st"], seeds=seeds, executor="serial",
                    resume=resume, settings=tiny(preset, epochs=1, lr=lr, probe_epochs=()))

    presets = ("digits-vae-exact", "digits-vae")
    monkeypatch.setattr(train_report, "run_study", small)
    monkeypatch.setattr(train_report, "publish",
                        functools.partial(train_report.publish, presets=presets))
    out = tmp_path / "pub"
    r = CliRunner().invoke(main, ["train", "--publish", str(out), "--seeds", "0", "--quiet"])
    assert r.exit_code == 1, r.output
    assert ("every cell of the published study digits-vae-exact failed (see "
            f"{out / 'digits-vae-exact' / 'failures.csv'})") in r.output
    index = (out / "README.md").read_text(encoding="utf-8")
    assert index.count("cells failed") == 1 and "**1 of 1 cells failed**" in index
    assert train_report.failed_studies(out, presets) == ["digits-vae-exact"]


def test_bad_arguments() -> None:
    with pytest.raises(TrainArgumentError, match="probe_epochs"):
        ts.preset_settings("digits-vae", epochs=3, probe_epochs=(5,))
    with pytest.raises(TrainArgumentError, match="no training study"):
        ts.preset_settings("paper")
    with pytest.raises(TrainArgumentError, match="eval_samples"):
        ts.preset_settings("digits-conv", eval_samples=0)
    with pytest.raises(TrainArgumentError, match="twice"):
        ts.run_study("digits-conv", out="/nonexistent/x", estimators=["st", "st"], settings=tiny())
    with pytest.raises(TrainArgumentError, match="seeds"):
        ts.run_study("digits-conv", out="/nonexistent/x", estimators=["st"], seeds=[],
                     settings=tiny())
    # adaptive estimators tune to fixed weights: training would use them untuned, under their name
    with pytest.raises(TrainArgumentError, match="'relax.*' is adaptive") as e:
        ts.run_study("digits-conv", out="/nonexistent/x", estimators=["st", "relax"],
                     settings=tiny())
    assert e.value.argument == "estimators"  # run_study's argument (train's is estimator)


@pytest.mark.parametrize("spec, why", [("st", "biased"), ("nope", "unknown"),
                                       ("nvil", "adapts"), ("reinforce-loo:k=1", "k=1"),
                                       (None, "not an estimator spec"), (5, "not an estimator spec")])
def test_a_bad_reference_estimator_is_refused_before_any_work(tmp_path: Path, spec: object,
                                                             why: str) -> None:
    """Refused by the settings' check, also where the exact reference would serve (the settings
    record it), so that no study trains its cells to fail at their first probe."""
    for preset in ("digits-vae", "digits-vae-exact"):
        with pytest.raises(TrainArgumentError, match=f"reference_estimator={spec!r}: .*{why}") as e:
            dataclasses.replace(ts.preset_settings(preset, epochs=1), reference_estimator=spec).check()
        assert e.value.argument == "reference_estimator"
    out = tmp_path / "study"
    with pytest.raises(TrainArgumentError, match=why):
        ts.run_study("digits-vae", out=out, estimators=["st"], seeds=[0],
                     settings=dataclasses.replace(tiny("digits-vae"), reference_estimator=spec))
    assert not out.exists()


def test_a_non_finite_reference_is_a_numerical_failure_not_a_bad_argument() -> None:
    p = _exact_vae(5)
    params = {k: v.clone() for k, v in p.params.items()}
    params["weight_1"].fill_(1e308)
    bad = ts._subproblem(p, p.x, p.y, params)
    with pytest.raises(McReferenceError, match="NaN/Inf") as e:
        ts.probe_reference(bad, samples=4, max_exact_bytes=1)
    assert not isinstance(e.value, TrainArgumentError)


# --------------------------------------------------------------------------------------------
# the pieces, against exact values


def test_network_step_is_one_estimate() -> None:
    """The training step on a network problem is ``estimate(est, sub, 1, g)`` for the same
    generator state, the VAE's analytic KL included."""
    for preset, spec in (("digits-conv", "psa"), ("digits-vae", "st"), ("digits-vae", "disarm")):
        p = digits_problem(preset, 0).to(dtype=torch.float64)
        sub = copy.copy(p)
        object.__setattr__(sub, "x", p.x[:7])
        object.__setattr__(sub, "y", p.y[:7])
        est = load_registry().create(spec)
        state = _State.of(sub)
        grads, losses = _step_gradient(est, sub, state.leaves, state.views,
                                       torch.Generator().manual_seed(3),
                                       torch.Generator().manual_seed(4))
        ref = estimate(est, sub, 1, torch.Generator().manual_seed(3))
        for g, name in zip(grads, sub.param_names):
            torch.testing.assert_close(g, ref[name][0], rtol=1e-10, atol=1e-12)
        assert losses is not None and losses.shape == (7,)


def _exact_vae(points: int = 12) -> Problem:
    p = digits_problem("digits-vae-exact", 0)
    sub = copy.copy(p)
    object.__setattr__(sub, "x", p.x[:points])
    object.__setattr__(sub, "y", p.y[:points])
    return sub.to(dtype=torch.float64)


def test_evaluate_vae_against_exact_objective() -> None:
    """The sampled negative ELBO agrees with the exact one (enumeration of 2^16 latent states),
    and the IWAE bound with K = 1 is the ELBO again, with K = 64 below it."""
    p = _exact_vae()
    ev = ts.EvalSet(p.x, p.y)
    exact = float(objective(p))
    r = ts.evaluate(p, p.params, ev, 4000, torch.Generator().manual_seed(0), iwae_samples=1)
    # the sampling error of a 4000-draw mean is far below the spread over the data points that
    # objective_se measures, so 1 s.e. is a generous bound (failure rate far below 1e-6)
    assert abs(r["objective"] - exact) < r["objective_se"]
    k1 = ts.evaluate(p, p.params, ev, 1, torch.Generator().manual_seed(1), iwae_samples=1)
    big = ts.evaluate(p, p.params, ev, 1, torch.Generator().manual_seed(1), iwae_samples=64)
    assert abs(k1["iwae"] - exact) < 3 * k1["iwae_se"]
    assert big["iwae"] < exact


def test_probe_reference_exact_and_monte_carlo() -> None:
    p = _exact_vae(5)
    ref = ts.probe_reference(p)
    assert ref.method == "exact" and ref.variance == 0.0 and ref.rel_se == 0.0
    _, grad = exact_gradient(p)
    flat = torch.cat([grad[n].reshape(-1) for n in p.param_names])
    torch.testing.assert_close(ref.gradient, flat, rtol=0, atol=0)
    # beyond the size guard: the mean of N unbiased samples, its error as large as it says
    mc = ts.probe_reference(p, samples=400, max_exact_bytes=1, seed=7)
    assert mc.method == "mc:disarm:400" and 0 < mc.rel_se < 1
    err2 = float((mc.gradient - flat).square().sum())
    assert err2 < 4 * mc.variance  # E err² = V_R/N; seeded
    # it is the Monte-Carlo reference of SPEC §8 (the runner's), drawn in the problem's dtype
    from sbn_bench.runner.mcref import mc_reference
    same = mc_reference(p, estimator="disarm", samples=400, seed=7, dtype="float64")
    torch.testing.assert_close(mc.gradient, same.gradient, rtol=0, atol=0)
    with pytest.raises(TrainArgumentError, match="biased") as e:
        ts.probe_reference(p, estimator="st", max_exact_bytes=1)
    assert e.value.argument == "reference_estimator"
    with pytest.raises(TrainArgumentError, match="samples=1") as e:
        ts.probe_reference(p, samples=1, max_exact_bytes=1)
    assert e.value.argument == "reference_samples"


def test_probe_unbiased_vs_biased() -> None:
    """Against the exact reference: an unbiased estimator's measured bias is within its noise
    floor, ST's (biased on this VAE, by about 2 % at initialisation) is resolved above it with
    enough samples."""
    p = _exact_vae(5)
    ref = ts.probe_reference(p)
    reg = load_registry()
    un = ts.probe(reg.create("disarm"), p, ref, 2000, torch.Generator().manual_seed(0), chunk=1000)
    st = ts.probe(reg.create("st"), p, ref, 20_000, torch.Generator().manual_seed(0), chunk=2000)
    assert un["bias"] < 2 * un["bias_floor"]
    assert st["bias"] > 3 * st["bias_floor"]
    assert st["rrmse"] >= st["bias"] and un["rrmse"] > 0


# --------------------------------------------------------------------------------------------
# the claim logic on synthetic curves: every verdict


def synthetic(finals: dict[str, list[float]], column: str = "test_objective",
              rises: dict[str, list[float]] | None = None) -> pd.DataFrame:
    """Curves with two epochs per (estimator, seed): epoch 1 at ``final + rise``, then epoch 2 at
    ``final`` (``rises`` default 0); epoch 0 at 10 for all."""
    out = []
    for est, vals in finals.items():
        for seed, v in enumerate(vals):
            rise = (rises or {}).get(est, [0.0] * len(vals))[seed]
            for epoch, val in ((0, 10.0), (1, v - rise), (2, v)):
                out.append({"estimator": est, "seed": seed, "epoch": epoch, "train_s": float(epoch),
                            column: val, "test_objective": val if column == "test_objective" else
                            10.0 - epoch, "train_objective": val})
    return pd.DataFrame(out)


def test_t_critical() -> None:
    assert tr.t_critical(2) == 4.303 and tr.t_critical(30) == 2.042
    scipy_stats = pytest.importorskip("scipy.stats")
    for dof in (1, 2, 5, 22, 27, 31, 60, 200):
        assert tr.t_critical(dof) == pytest.approx(scipy_stats.t.ppf(0.975, dof), rel=2e-3)


def test_better_claim_every_verdict() -> None:
    good = synthetic({"psa": [1.0, 1.1, 0.9], "st": [1.0, 1.1, 0.9], "disarm": [2.0, 2.2, 1.9]})
    assert tr.claim_better(good, "psa", "test_objective", "lower", "x").verdict == "confirmed"
    bad = synthetic({"psa": [3.0, 3.1, 2.9], "st": [1.0, 1.1, 0.9], "disarm": [2.0, 2.2, 1.9]})
    assert tr.claim_better(bad, "psa", "test_objective", "lower", "x").verdict == "not confirmed"
    assert tr.claim_better(bad, "st", "test_objective", "lower", "x").verdict == "confirmed"
    noisy = synthetic({"psa": [1.0, 3.0, 2.0], "st": [1.0, 1.0, 1.0], "disarm": [2.1, 1.9, 2.0]})
    assert tr.claim_better(noisy, "psa", "test_objective", "lower", "x").verdict == "inconclusive"
    one_seed = synthetic({"psa": [1.0], "disarm": [2.0]})
    assert tr.claim_better(one_seed, "psa", "test_objective", "lower", "x").verdict == \
        "inconclusive"  # no error estimate from one seed
    none = synthetic({"st": [1.0, 1.1], "disarm": [2.0, 2.1]})
    assert tr.claim_better(none, "psa", "test_objective", "lower", "x").verdict == "no data"
    # higher is better (accuracy); one estimator better, one worse: not confirmed overall
    acc = synthetic({"psa": [0.9, 0.91, 0.92], "disarm": [0.8, 0.81, 0.79],
                     "concrete": [0.95, 0.96, 0.97]}, column="test_accuracy")
    c = tr.claim_better(acc, "psa", "test_accuracy", "higher", "acc")
    assert c.verdict == "not confirmed" and "vs disarm" in c.evidence and "confirmed" in c.evidence
    # the t interval, not 2 s.e.: differences 1.0, 1.2, 0.5 have mean 0.9, s.e. 0.21; 2 s.e.
    # excludes 0, the t interval with 2 degrees of freedom (±0.89) does too, barely
    t = tr.paired({0: 1.0, 1: 1.2, 2: 0.5}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert t.n == 3 and t.se == pytest.approx(np.std([1.0, 1.2, 0.5], ddof=1) / math.sqrt(3))
    assert tr.paired_verdict(t, "higher") == "confirmed"
    t2 = tr.paired({0: 1.0, 1: 1.6, 2: 0.1}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert t2.mean - 2 * t2.se > 0  # a 2-s.e. rule would confirm ...
    assert tr.paired_verdict(t2, "higher") == "inconclusive"  # ... Student's t with 2 dof does not


def test_stable_claim_every_verdict() -> None:
    finals = {"psa": [1.0, 1.0, 1.0], "st": [1.0, 1.0, 1.0], "disarm": [1.0, 1.0, 1.0]}
    calm = synthetic(finals, rises={"psa": [0.0, 0.0, 0.0], "st": [0.0, 0.01, 0.0],
                                    "disarm": [1.0, 1.2, 0.9]})
    assert tr.instability(calm)["disarm"] == pytest.approx({0: 1.0, 1: 1.2, 2: 0.9})
    assert tr.claim_stable(calm).verdict == "confirmed"
    rough = synthetic(finals, rises={"psa": [1.0, 1.2, 0.9], "st": [0.0, 0.0, 0.0],
                                     "disarm": [0.0, 0.0, 0.0]})
    assert tr.claim_stable(rough).verdict == "not confirmed"
    unclear = synthetic(finals, rises={"psa": [0.0, 2.0, 0.0], "st": [0.0, 0.0, 0.0],
                                       "disarm": [0.5, 0.0, 0.6]})
    assert tr.claim_stable(unclear).verdict == "inconclusive"
    assert tr.claim_stable(synthetic({"disarm": [1.0, 1.0]})).verdict == "no data"


def test_bias_claim_every_verdict() -> None:
    def probes(first: list[float], last: list[float], est: str = "st") -> pd.DataFrame:
        return pd.DataFrame([{"estimator": est, "seed": s, "epoch": e, "bias": b, "bias_floor": 0.01}
                             for e, vals in ((0, first), (9, last)) for s, b in enumerate(vals)])
    assert tr.claim_bias_grows(probes([0.1, 0.12, 0.11], [0.5, 0.55, 0.52])).verdict == "confirmed"
    assert tr.claim_bias_grows(probes([0.5, 0.55, 0.52], [0.1, 0.12, 0.11])).verdict == \
        "not confirmed"
    assert tr.claim_bias_grows(probes([0.1, 0.5, 0.3], [0.4, 0.1, 0.35])).verdict == "inconclusive"
    assert tr.claim_bias_grows(probes([0.1], [0.2], est="psa")).verdict == "no data"
    one_epoch = probes([0.1, 0.2], [0.3, 0.4])
    assert tr.claim_bias_grows(one_epoch[one_epoch["epoch"] == 0]).verdict == "no data"
    # a significant change between values under 2× their floor is noise, not a verdict (a study
    # read ST's 0.0288 (floor 0.015) → 0.00535 (floor 0.04) as "not confirmed: it shrinks")
    def floored(first: list[float], last: list[float], floors: tuple[float, float]) -> pd.DataFrame:
        df = probes(first, last)
        return df.assign(bias_floor=[floors[0] if e == 0 else floors[1] for e in df["epoch"]])
    shrink = floored([0.028, 0.029, 0.0285], [0.005, 0.0055, 0.0054], (0.015, 0.04))
    c = tr.claim_bias_grows(shrink)
    assert c.verdict == "inconclusive" and "below 2× its noise floor" in c.evidence, c
    assert tr.claim_bias_grows(floored([0.028, 0.029, 0.0285], [0.005, 0.0055, 0.0054],
                                       (0.01, 0.04))).verdict == "not confirmed"  # 0.0285 ≥ 0.02
    grow = floored([0.1, 0.12, 0.11], [0.5, 0.55, 0.52], (0.01, 0.3))  # 0.52 < 0.6: unresolved
    assert tr.claim_bias_grows(grow).verdict == "inconclusive"
    # an unknown floor leaves the paired verdict; a NaN seed is left out of the mean, as of the pair
    assert tr.claim_bias_grows(floored([0.1, 0.12, 0.11], [0.5, 0.55, 0.52], (0.01, math.nan))
                               ).verdict == "confirmed"
    nan_seed = floored([0.1, 0.12, 0.11], [0.5, math.nan, 0.52], (0.01, 0.2))
    c = tr.claim_bias_grows(nan_seed)
    assert c.verdict == "confirmed" and "nan" not in c.evidence.split("difference")[1], c


def test_time_to_target_and_default_target() -> None:
    c = synthetic({"psa": [1.0, 2.0], "disarm": [3.0, 4.0]})
    target = tr.default_target(c)
    assert target == 3.5  # the worst estimator's final mean
    t = tr.time_to_target(c, target)
    assert t["psa"] == {0: (1.0, 1.0), 1: (1.0, 1.0)}  # reached at epoch 1 (values 1.0, 2.0)
    assert t["disarm"][0] == (1.0, 1.0) and all(math.isnan(x) for x in t["disarm"][1])


def test_cli_study_refusals(tmp_path: Path) -> None:
    """Study options are parsed and refused before any work; single training is unchanged."""
    from click.testing import CliRunner

    from sbn_bench.cli import main

    def run(*args: str) -> tuple[int, str]:
        r = CliRunner().invoke(main, ["train", *args], catch_exceptions=True)
        return r.exit_code, r.output

    code, out = run("--preset", "digits-vae", "--seeds", "0-1", "--momentum", "0.5",
                    "--out", str(tmp_path / "a"))
    assert code == 2 and "--momentum is an option of a single training" in out
    code, out = run("--preset", "paper", "--seeds", "0", "--out", str(tmp_path / "b"))
    assert code == 2 and "has no training study" in out
    code, out = run("--preset", "digits-vae", "--seeds", "2-1", "--out", str(tmp_path / "c"))
    assert code == 2 and "runs backwards" in out
    code, out = run("--preset", "digits-vae", "--estimators", "psa,nosuch", "--out",
                    str(tmp_path / "d"))
    assert code == 2 and "nosuch" in out and "'--estimators'" in out  # a usage error, as for run
    code, out = run("--preset", "digits-vae", "--estimators", "psa,nvil", "--out",
                    str(tmp_path / "d"))  # an estimator that cannot train: the same (it was 1)
    assert code == 2 and "Invalid value for '--estimators'" in out and "is adaptive" in out
    code, out = run("--preset", "paper", "--resume", "--out", str(tmp_path / "e"))
    assert code == 2 and "has no training study" in out
    # no --preset at all: said so, not "None has no training study" (new-user review)
    code, out = run("--estimators", "psa", "--out", str(tmp_path / "e"))
    assert code == 2 and "a training study (--estimators / --seeds) needs --preset, one of " \
        "digits-conv" in out and "None" not in out
    # a list given to the single training's --estimator: pointed to --estimators (it said
    # "estimator 'psa,st' is unknown; did you mean 'psa' or 'st'?")
    code, out = run("--preset", "paper", "--estimator", "psa,st", "--out", str(tmp_path / "e"))
    assert code == 2 and "'psa,st' is a list" in out and "--estimators psa,st" in out
    code, out = run("--executor", "serial", "--out", str(tmp_path / "e"))
    assert code == 2 and "options of a training study" in out
    code, out = run("--preset", "digits-vae", "--seeds", "0", "--plugin", str(tmp_path / "no.py"),
                    "--out", str(tmp_path / "f"))  # a study takes plugins; this one is missing
    assert code == 2 and "Invalid value for '--plugin'" in out and "no.py" in out, out
    assert "Traceback" not in out
    code, out = run("--publish", str(tmp_path / "g"), "--plugin", __file__)
    assert code == 2 and "takes only --executor and --seeds" in out
    assert not any(tmp_path.iterdir())  # nothing written


def test_index_overview(study: ts.StudyResult) -> None:
    table = tr._finals_overview(study.out.parent, [study.out.name])
    assert [r[0].text for r in table.rows] == ESTIMATORS
    assert table.header == ["estimator", "conv: test accuracy"]
    assert all("±" in r[1].text for r in table.rows)  # two seeds: a standard error


def test_bias_story_table() -> None:
    rows = [{"estimator": e, "seed": s, "epoch": ep, "bias": b, "bias_floor": 0.01}
            for e, first, last in (("st", [0.1, 0.11, 0.12], [0.5, 0.52, 0.55]),
                                   ("psa", [0.01, 0.02, 0.015], [0.012, 0.01, 0.02]))
            for ep, vals in ((0, first), (5, last)) for s, b in enumerate(vals)]
    t = tr.bias_story_table(pd.DataFrame(rows), ["st", "psa"])
    assert t is not None and [r[-1].text for r in t.rows] == ["grows", "no significant change"]
    low = pd.DataFrame(rows).assign(bias_floor=0.3)  # st's 0.52 at epoch 5 is under 2 × 0.3
    assert tr.bias_story_table(low, ["st"]).rows[0][-1].text == "not resolved"
    assert tr.bias_story_table(pd.DataFrame(rows[:3]), ["st"]) is None  # one probe epoch


def test_one_seed_is_untestable_and_seconds_per_epoch_count_every_epoch() -> None:
    """One seed: no spread to test a paired difference against ("no" read as tested and equal).
    Seconds per epoch: train_s / epochs of the last row, whether or not every epoch was evaluated
    (the mean over the evaluated epochs' epoch_s was a subsample)."""
    one = synthetic({"psa": [1.0], "disarm": [2.0]})
    t = tr.significance_table(one, ["psa", "disarm"], "digits-vae")
    assert [r[-1].text for r in t.rows] == ["untestable (one seed)"]
    two = synthetic({"psa": [1.0, 1.1], "disarm": [2.0, 2.2]})
    assert tr.significance_table(two, ["psa", "disarm"], "digits-vae").rows[0][-1].text != \
        "untestable (one seed)"
    c = synthetic({"psa": [1.0, 1.2], "disarm": [2.0, 2.1]})
    c = c.assign(epoch_s=[0.0, 5.0, 3.0] * 4, train_s=[0.0, 5.0, 8.0] * 4,  # epochs 1, 2: 5 s, 3 s
                 test_iwae=1.0)
    c = c[c["epoch"] != 1]  # epoch 1 not evaluated: its epoch_s (5 s) is not in the curves
    table = tr.final_table(c, ["psa", "disarm"], "digits-vae", target=10.0)
    col = table.header.index("seconds per epoch")
    assert table.rows[0][col].text.startswith("4"), table.rows[0][col]  # 8 s / 2 epochs
    # a seed whose last row has no train_s is left out, not paired with an earlier epoch's
    # train_s (groupby().last() took each column's last non-NaN value)
    full = synthetic({"psa": [1.0, 1.2], "disarm": [2.0, 2.1]}).assign(test_iwae=1.0)
    gap = full.assign(train_s=[0.0, 5.0, 8.0, 0.0, 6.0, math.nan] * 2)  # seed 1: 6 s / 2 epochs
    gap = tr.final_table(gap, ["psa", "disarm"], "digits-vae", target=10.0)
    assert gap.rows[0][col].text.startswith("4"), gap.rows[0][col]


def test_the_claims_say_which_cells_failed(tmp_path: Path) -> None:
    """A failed cell is left out of the claims' comparisons; the claims table says so."""
    (tmp_path / "failures.csv").write_text("estimator,seed,stage,error\ndisarm,1,job,boom\n")
    curves = synthetic({"psa": [1.0, 1.1], "st": [1.2, 1.3], "disarm": [2.0]}).assign(
        test_iwae=1.0, epoch_s=1.0, test_accuracy=0.5)
    probes = pd.DataFrame(columns=list(ts.PROBE_COLUMNS))
    blocks, _ = tr.study_blocks(tmp_path, {"preset": "digits-vae", "estimators": ["psa", "st", "disarm"]},
                                curves, probes, tmp_path)
    claims = next(b for b in blocks if getattr(b, "anchor", "") == "claims")
    assert any(n.startswith("judged without the failed cells: disarm seed 1") for n in claims.notes)


PLUGIN = '''"""A test plugin: the built-in st under another name (the same numbers)."""
import dataclasses

from sbn_bench.estimators import load_registry


def st_copy():
    return dataclasses.replace(load_registry(entry_points=True).create("st"), name="st-copy")


ESTIMATORS = {"st-copy": st_copy}
'''


def test_plugin_estimators_train_in_a_study(study: ts.StudyResult, tmp_path: Path) -> None:
    """A plugin estimator trains in worker processes that have only the plugin's text (the same
    numbers as the built-in it copies); study.json records the file's SHA-256, and a resume needs
    a file of that content (under any path), before any work."""
    plugin = tmp_path / "st_copy.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "plugin-study"
    kw = dict(estimators=["st-copy"], seeds=SEEDS, settings=tiny())
    ts.run_study("digits-conv", out=out, executor="processes:2", plugins=[plugin], **kw)
    m = json.loads((out / ts.STUDY_NAME).read_text())
    assert m["plugins"] == [{"path": str(plugin.resolve()), "sha256": provenance.file_sha256(plugin)}]
    _, a, pa = ts.load_study(study.out)
    _, b, pb = ts.load_study(out)
    pd.testing.assert_frame_equal(rows(a[a["estimator"] == "st"]).reset_index(drop=True),
                                  rows(b.assign(estimator="st")).reset_index(drop=True))
    # the probes' samples are seeded by the estimator's spec: the same epochs, other draws
    assert pb[["seed", "epoch"]].equals(pa[pa["estimator"] == "st"][["seed", "epoch"]]
                                        .reset_index(drop=True))
    assert np.isfinite(pb["rrmse"]).all()
    changed = tmp_path / "changed.py"
    changed.write_text(PLUGIN + "# edited\n")
    with pytest.raises(ts.StudyError, match="trained with plugin file .*st_copy.py', and no plugin "
                                            "file given now has its content") as e:
        ts.run_study("digits-conv", out=out, plugins=[changed], resume=True, **kw)
    assert e.value.argument == "plugins"
    # the recorded file itself edited (resume_study gives the recorded paths): said as such
    original = plugin.read_text()
    plugin.write_text(PLUGIN + "# edited\n")
    with pytest.raises(ts.StudyError, match="trained with plugin file .*st_copy.py', whose content "
                                            "has changed since"):
        ts.resume_study(out)
    plugin.write_text(original)
    moved = tmp_path / "elsewhere" / "copy.py"
    moved.parent.mkdir()
    moved.write_text(PLUGIN)
    res = ts.run_study("digits-conv", out=out, plugins=[moved], resume=True, **kw)
    assert res.ran == 0 and res.resumed == 2
    assert ts.resume_study(out).resumed == 2  # the recorded file: now the moved one
    moved.unlink()
    with pytest.raises(ts.StudyError, match="plugin file .*copy.py' is missing") as e:
        ts.resume_study(out)
    assert e.value.argument == "plugins"
    # one path is that file (as load_plugins reads it), not one file per character
    with pytest.raises(SbnBenchError, match="copy.py") as e:
        ts.run_study("digits-conv", out=tmp_path / "x", plugins=str(moved), **kw)
    assert e.value.argument == "plugins" and not (tmp_path / "x").exists()


def test_a_study_resumes_with_its_own_settings(study: ts.StudyResult, tmp_path: Path) -> None:
    """``resume_study`` (``sbn-bench train --out DIR --resume``) takes the preset, settings,
    estimators, seeds and plugin files from study.json: nothing repeated; a setting given that
    differs is refused as by run_study."""
    from click.testing import CliRunner

    from sbn_bench.cli import main

    out = tmp_path / "copy"
    shutil.copytree(study.out, out)
    ts.cell_file(out, "disarm", 1).unlink()
    res = ts.resume_study(out, executor="serial")
    assert (res.ran, res.resumed, res.estimators, res.seeds) == (1, 5, tuple(ESTIMATORS), tuple(SEEDS))
    assert res.settings == tiny()
    _, a, _ = ts.load_study(study.out)
    _, b, _ = ts.load_study(out)
    pd.testing.assert_frame_equal(rows(a), rows(b))
    with pytest.raises(ts.StudyError, match="settings differ .*epochs"):
        ts.resume_study(out, epochs=3)
    with pytest.raises(TrainArgumentError, match="nosuch is not a study setting"):
        ts.resume_study(out, nosuch=1)
    with pytest.raises(ts.StudyError, match="holds no training study") as e:
        ts.resume_study(tmp_path / "empty")
    assert e.value.argument == "out" and not (tmp_path / "empty").exists()
    ts.cell_file(out, "psa", 0).unlink()
    r = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--executor", "serial"])
    assert r.exit_code == 0, r.output
    assert "training study digits-conv: 3 estimators x 2 seeds, 1 cells run, 5 resumed" in r.output
    assert "(mean of 2 seeds)" in r.output
    from sbn_bench.cli.train import final_value_line

    assert final_value_line("st", "test accuracy", [0.5]) == "  st: final test accuracy 0.5 (1 seed)"
    assert final_value_line("st", "elbo", [1.0, 2.0]).endswith("1.5 (mean of 2 seeds)")
    r = CliRunner().invoke(main, ["train", "--out", str(out), "--resume", "--executor", "serial",
                                  "--seeds", "0"])  # a typed --seeds that would drop seed 1
    assert r.exit_code == 2 and "Invalid value for '--seeds': cannot resume" in r.output, r.output
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "none"), "--resume"])
    assert r.exit_code == 1 and "holds no training study" in r.output


def test_curve_zoom_keeps_the_late_bands_whole() -> None:
    """The y axis zooms on the bulk of the values (epoch 0's would squash the rest) but never cuts
    a band in the second half of training: a seed that ends far above the others stays in view."""
    rows_ = [{"estimator": e, "seed": s, "epoch": ep, "test_objective": v}
             for e in ("a", "b", "c", "d") for s in range(3) for ep, v in
             ((0, 100.0), *((k, 10.0 - 0.1 * k) for k in range(1, 40)))]
    rows_.append({"estimator": "d", "seed": 2, "epoch": 40, "test_objective": 30.0})  # a late outlier
    c = pd.DataFrame(rows_)
    lo, hi = tr.zoom(c, "test_objective")
    assert hi >= 30.0 and lo <= 6.1 and hi < 100  # the outlier in view, epoch 0 still cut
    assert tr.zoom(c.assign(test_objective=1.0), "test_objective") is None  # no range
    # the caption says the axes zoom only when they do leave a value out
    c["test_accuracy"] = 0.5
    assert tr.zoomed(c, vae=False)
    level = c[c["epoch"] > 0].assign(test_objective=lambda d: 10.0 + 0.1 * (-1.0) ** d["epoch"])
    assert not tr.zoomed(level, vae=False)  # the late values span every value: nothing cut
    # the first panel's dashed train objective counts too: one cut value makes the caption say so
    assert tr.zoomed(level.assign(train_objective=lambda d: 10.0 + 5.0 * (d["epoch"] == 1)), vae=False)
    assert not tr.zoomed(level.assign(train_objective=10.0), vae=False)


def test_claims_list_the_other_estimators_in_the_study_order() -> None:
    """The evidence names the other estimators in the study's order (numpy's quicksort put ties in
    a CPU-dependent order, so the published reports' evidence changed between machines)."""
    finals = {"psa": [1.0, 1.1, 1.2], "st": [1.3, 1.4, 1.5], "disarm": [2.0, 2.1, 2.3],
              "arms:k=4": [2.2, 2.4, 2.5], "concrete:tau=0.5": [3.0, 3.2, 3.3]}
    c = synthetic(finals)
    c = pd.concat([c] + [c[c["epoch"] == 2].assign(epoch=k) for k in range(3, 30)])  # many ties
    c = c.sort_values(["estimator", "seed", "epoch"], key=lambda s: s.map(
        {e: i for i, e in enumerate(finals)}) if s.name == "estimator" else s)
    assert list(tr.final_values(c, "test_objective")) == list(finals)
    claim = tr.claim_better(c, "psa", "test_objective", "lower", "test objective")
    assert [p.split(":")[0] for p in claim.evidence.split("; ")] == ["vs disarm", "vs arms", "vs concrete"]


def test_a_resumed_study_keeps_the_earlier_sessions_from_its_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """study.json was rewritten at a session's start without the earlier sessions' ``runs``,
    which came back only at its end: a session killed outright (SIGKILL) lost them all. A resume
    also left the temporary files of killed writes in the study (a run's resume removes them)."""
    out = tmp_path / "s"
    settings = tiny("digits-vae-exact", epochs=1, probe_epochs=())
    ts.run_study("digits-vae-exact", out=out, estimators=["st"], seeds=[0], settings=settings,
                 executor="serial")
    first = json.loads((out / ts.STUDY_NAME).read_text())["runs"]
    assert len(first) == 1
    stray = out / ts.CELLS_DIR / ".st-seed1.json.k1ll3d.tmp"
    stray.write_text("{")
    report_tmp = out / ".report.md.wr1t1ng.tmp"  # a report being written meanwhile: not the study's
    report_tmp.write_text("# ")
    seen: dict[str, object] = {}

    def killed(kind: str) -> object:  # the session dies once its study.json is written
        seen.update(json.loads((out / ts.STUDY_NAME).read_text()))
        raise RuntimeError("killed")

    monkeypatch.setattr(ts, "make_executor", killed)
    with pytest.raises(RuntimeError, match="killed"):
        ts.run_study("digits-vae-exact", out=out, estimators=["st"], seeds=[0, 1],
                     settings=settings, executor="serial", resume=True)
    assert seen["status"] == "running" and seen["runs"] == first
    assert not stray.exists() and report_tmp.exists()


def test_resume_into_a_missing_folder_warns_as_a_run_does(tmp_path: Path) -> None:
    """``train --resume --out typo`` started a new study without a word, where ``run --resume``
    warns (new-user review): a mistyped folder would start a long study over."""
    said: list[str] = []

    class Stop(Exception):
        pass

    def stop(done: int, total: int, message: str) -> None:
        raise Stop  # the warning comes before any work: nothing more is needed

    with pytest.raises(Stop):
        ts.run_study("digits-vae-exact", out=tmp_path / "typo", estimators=["st"], seeds=[0],
                     settings=tiny("digits-vae-exact", epochs=1, probe_epochs=(0, 1)), resume=True,
                     warn=said.append,
                     progress=stop, executor="serial")
    assert said == [f"resume: {str(tmp_path / 'typo')!r} holds no study to resume (it is empty "
                    "or missing); starting a new study there"]


def test_a_damaged_study_is_refused_by_its_report_with_the_resume(study: ts.StudyResult,
                                                                   tmp_path: Path) -> None:
    """write_training_report (through load_study) on damaged files raised a raw JSONDecodeError,
    TypeError, EmptyDataError or KeyError, or drew a report from the rows before a cut (attacker
    review): each is a StudyError naming the file, with the resume that writes the tables again."""
    for name, text, words in ((ts.STUDY_NAME, "{", "cannot be read"),
                              (ts.STUDY_NAME, "[]", "is a JSON list"),
                              (ts.STUDY_NAME, "{}", "is not a study's record"),
                              (ts.CURVES_NAME, "HEADER", r"lacks the rows of 6 finished cell\(s\)"),
                              (ts.CURVES_NAME, "SEED", "has a seed that is not an integer"),
                              (ts.CURVES_NAME, "", "cannot be read"),
                              (ts.CURVES_NAME, "a,b\n1,2\n", "has no column"),
                              (ts.CURVES_NAME, None, "cut off mid-row"),
                              (ts.PROBES_NAME, "", "cannot be read")):
        d = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
        shutil.copytree(study.out, d)
        f = d / name
        lines = f.read_text().splitlines(keepends=True)
        if text == "HEADER":  # cut at a row boundary: reads as a shorter table (attacker review)
            text = lines[0]
        elif text == "SEED":
            cols = lines[0].rstrip("\n").split(",")
            row = lines[1].rstrip("\n").split(",")
            row[cols.index("seed")] = "zero"
            text = "".join([lines[0], ",".join(row) + "\n", *lines[2:]])
        f.write_text("".join(lines)[:300] if text is None else text)
        with pytest.raises(ts.StudyError, match=words) as e:
            tr.write_training_report(d)
        assert e.value.argument == "out" and name in str(e.value), str(e.value)
        if name != ts.STUDY_NAME:
            assert "--resume writes it again" in str(e.value)


def test_a_study_without_its_data_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without scikit-learn a study was refused only after writing study.json (status
    "interrupted") and cells/, so the same command, scikit-learn installed, was then refused for
    a folder that "already holds a training study"; the data are loaded before any file now."""
    from sbn_bench import data
    from sbn_bench.data import MissingExtra

    def missing() -> None:
        raise MissingExtra("the digits data need scikit-learn, which is not installed")

    monkeypatch.setattr(data, "_raw", missing)
    out = tmp_path / "study"
    with pytest.raises(MissingExtra, match="scikit-learn"):
        ts.run_study("digits-vae-exact", out=out, estimators=["st"], seeds=[0],
                     settings=tiny("digits-vae-exact"), executor="serial")
    assert not out.exists()

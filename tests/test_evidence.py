"""Tests for :mod:`lnsr_viz.viz.evidence`: the notebooks open on stored runs and never train to do so.

Covered:

* no training in the real setting: with the trainer (``FineTuner.fit``) and the run functions (``run_jobs``,
  ``compare``, ``run_sweep``) made to raise, every library call that notebooks 02-06 make to open on the committed
  stores runs (02's comparison and drift, 03's stored theory and theory table, 04's stored diagnosis, projection and
  attributions, 05's every-method evidence, 06's two studies), and what they return is the committed runs'. The
  whole notebooks are not executed here (minutes each on two shared cores): their cells only call these functions,
  and ``tests/test_notebooks.py`` runs them in the quick setting;
* a damaged committed store: the damaged run is named with its problem and skipped, the rest is used (02 falls back
  to saying what is missing and what training it would cost, 04 picks another stored run, 03 reads the others);
  a missing store is said to be missing;
* a checkpoint folder inside a run store must match its run's record: a changed file, an added file and a folder
  added to a run stored without one are refused with the reason; a folder outside a store is accepted;
* ``save_checkpoints`` as a set of seeds keeps only those seeds' models and leaves every run key unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lnsr_viz.viz import evidence as ev
from lnsr_viz.viz import runtime

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "study"
STUDY_V2 = ROOT / "results" / "study-v2"
#: the demo setting's runs in the committed study (pre-trained, vanilla and lnsr[lam=10], seeds 1-3, 500 examples)
DEMO_RUNS_IN_STUDY = ("480289c8033e", "d1389f450ff6", "6fcbff42f80d", "99a95f457fcd", "3b4cfa1da0e1",
                      "4fb451c6e994", "9fc7a844100e")


def _no_training(monkeypatch):
    import lnsr_viz.experiments.runs as runs
    import lnsr_viz.experiments.sweep as sweep
    from lnsr_viz.training.loop import FineTuner

    def boom(*_a, **_k):
        raise AssertionError("a model was trained while opening a notebook on stored runs")

    monkeypatch.setattr(FineTuner, "fit", boom)
    monkeypatch.setattr(runs, "run_jobs", boom)
    monkeypatch.setattr(runs, "compare", boom)
    monkeypatch.setattr(sweep, "run_sweep", boom)
    monkeypatch.setattr(sweep, "run_jobs", boom)


@pytest.fixture
def fresh_clone(monkeypatch, tmp_path):
    """The real setting with an empty demo store (no `make demo` yet), as on a fresh clone."""
    monkeypatch.delenv(runtime.QUICK_ENV, raising=False)
    monkeypatch.delenv(runtime.PROJECT_ENV, raising=False)
    monkeypatch.setenv(runtime.RESULTS_ENV, str(tmp_path / "mine"))
    _no_training(monkeypatch)
    return tmp_path


@pytest.mark.skipif(not (STUDY / "runs").is_dir() or not (STUDY_V2 / "runs").is_dir(),
                    reason="the committed studies are not in this checkout")
def test_notebooks_02_to_06_open_on_the_committed_stores_without_training(fresh_clone):
    # 02: the demo setting from the committed study (same keys but the label), drift from study v2
    comp = ev.comparison_evidence(quick=False)
    assert comp.source == "committed study" and comp.result is not None
    assert set(comp.result.runs["run_id"]) == set(DEMO_RUNS_IN_STUDY)
    assert "lacks 7 of the 7 runs" in comp.note and "TRAIN = True" in comp.note and comp.estimate_seconds > 0
    assert set(comp.result.paired["method"]) == {"lnsr"} and len(comp.result.profile)
    drift, note = ev.comparison_drift(comp)
    assert len(drift) and "study v2" in note and drift["model_b"].str.contains("mean of").all()
    assert set(drift["method"]) == {"vanilla", "lnsr"}
    # 03: stored theory of every study-v2 run, joined to the theory table's gaps
    theory, check = ev.stored_theory()
    assert check.ok and {"jacobian_fro2", "hessian_trace", "identity_ratio"} <= set(theory["quantity"])
    assert (theory.loc[theory["quantity"] == "jacobian_fro2", "value"] > 0).all()
    from lnsr_viz.experiments.theory_runs import theory_table

    table = theory_table(check.path, n_boot=50)
    runs = ev.theory_runs(theory, table.runs)
    assert runs["jacobian_fro2"].notna().all() and runs["method"].str.contains(r"\[").any()
    # 04: no checkpoint anywhere, so a committed run's stored diagnosis, as a Diagnosis
    diag = ev.diagnosis_evidence(quick=False)
    assert not diag.live and diag.run.config["method"] == "lnsr" and diag.run.config["seed"] == 1
    keys = [f.key for f in diag.diagnosis.findings]
    assert keys == ["generalisation_gap", "loss_gap", "stability_vs_base", "drift", "calibration"]
    assert set(diag.diagnosis.profile["model"]) == {"model", "base"} and len(diag.diagnosis.drift)
    assert {"train", "held_out"} <= set(diag.diagnosis.metrics["split"])
    proj = ev.evidence_projections(diag, quick=False)
    assert len(proj) == 1 and set(proj[0]["model"]) == {"base", "model"} and proj[0]["x"].notna().all()
    dash = ev.attribution_dashboard(diag, quick=False)
    assert dash.error is None
    # 05: every method stored so far, with what is missing and its estimated cost
    methods = ev.methods_evidence()
    assert "vanilla" in set(methods.result.runs["method"]) and len(methods.result.paired)
    assert {"lnsr", "l2sp"} <= set(methods.study.runs["method"])
    assert (methods.missing["estimated_hours"] > 0).all() and "Not yet in the store" in methods.note
    # 06: both studies
    from lnsr_viz.experiments.study import load_study

    assert len(load_study(runtime.study_dir(), config=runtime.study_config()).claims)
    assert len(load_study(runtime.study_dir("study-v2"), config=runtime.study_config("study-v2-core")).runs)


@pytest.mark.skipif(not (STUDY / "runs").is_dir(), reason="the committed study is not in this checkout")
def test_a_setting_no_run_covers_is_said_with_an_estimate(fresh_clone):
    settings = runtime.comparison_settings(quick=False)
    more = ev.comparison_evidence({**settings, "seeds": (1, 2, 3, 4, 5)}, quick=False)   # the study has 5 seeds
    assert more.source == "committed study" and set(more.result.runs["seed"].dropna()) == {1, 2, 3, 4, 5}
    none = ev.comparison_evidence({**settings, "train_size": 1000}, quick=False)   # no run of this size anywhere
    assert "lacks 7 of the 7 runs" in none.note and "holds 0 of the 7 runs of this setting" in none.note
    assert "would take about" in none.note and "TRAIN = True" in none.note and none.estimate_seconds > 0
    assert "Showing the demo's setting instead" in none.note   # what is stored, said to be another setting
    assert none.source == "committed study" and set(none.result.runs["run_id"]) == set(DEMO_RUNS_IN_STUDY)


def _copy_runs(src: Path, dest: Path, run_ids) -> None:
    for run_id in run_ids:
        shutil.copytree(src / "runs" / run_id, dest / "runs" / run_id)


def test_missing_store_is_said(tmp_path):
    check = ev.check_store(tmp_path / "nowhere")
    assert check.missing and not check.ok and "no run store at" in check.note()


@pytest.mark.skipif(not (STUDY / "runs").is_dir(), reason="the committed study is not in this checkout")
def test_damaged_committed_study_names_the_run_and_falls_back(monkeypatch, tmp_path):
    _no_training(monkeypatch)
    monkeypatch.delenv(runtime.QUICK_ENV, raising=False)
    monkeypatch.setenv(runtime.RESULTS_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv(runtime.PROJECT_ENV, str(tmp_path))
    study = tmp_path / "results" / "study"
    _copy_runs(STUDY, study, DEMO_RUNS_IN_STUDY)
    damaged = study / "runs" / DEMO_RUNS_IN_STUDY[1]
    (damaged / "metrics.csv").write_text("domain,metric,value\nmovie,accuracy,0.99\n")
    check = ev.check_store(study)
    assert [name for name, _ in check.damaged] == [DEMO_RUNS_IN_STUDY[1]]
    assert "metrics.csv has 40 bytes, record.json says" in check.damaged[0][1] and len(check.runs) == 6
    comp = ev.comparison_evidence(quick=False)   # vanilla seed 1 damaged: the seeds both methods still have
    assert comp.source == "committed study" and set(comp.result.runs["seed"].dropna()) == {2, 3}
    assert DEMO_RUNS_IN_STUDY[1] not in set(comp.result.runs["run_id"]) and "5 of the 7 runs" in comp.note
    assert DEMO_RUNS_IN_STUDY[1] in comp.note and "record.json says" in comp.note and "TRAIN = True" in comp.note
    shutil.rmtree(study)
    comp = ev.comparison_evidence(quick=False)
    assert comp.result is None and "no run store at" in comp.note


@pytest.mark.skipif(not (STUDY_V2 / "runs").is_dir(), reason="the committed study v2 is not in this checkout")
def test_damaged_study_v2_run_is_skipped_by_diagnosis_and_theory(monkeypatch, tmp_path):
    _no_training(monkeypatch)
    monkeypatch.delenv(runtime.QUICK_ENV, raising=False)
    monkeypatch.setenv(runtime.RESULTS_ENV, str(tmp_path / "mine"))
    listing = ev.check_store(STUDY_V2).runs
    pre = listing.loc[(listing["method"] == "pretrained") & (listing["data.train_size"] == 100), "run_id"].iloc[0]
    lnsr = listing[(listing["method"] == "lnsr") & (listing["data.train_size"] == 100)].sort_values("seed")
    chosen = lnsr[lnsr["seed"] == 1]["run_id"].tolist()[:2]   # two settings' seed-1 runs
    store = tmp_path / "v2"
    _copy_runs(STUDY_V2, store, [pre, *chosen])
    (store / "runs" / chosen[0] / "record.json").write_text("{not json")
    check = ev.check_store(store)
    assert [n for n, _ in check.damaged] == [chosen[0]] and "not valid JSON" in check.damaged[0][1]
    diag = ev.diagnosis_evidence(quick=False, store=store)
    assert diag.run.run_id == chosen[1] and chosen[0] in diag.origin
    theory, check = ev.stored_theory(store)
    assert set(theory["run_id"]) == {pre, chosen[1]} and chosen[0] in check.note()


def _store_with_checkpoint(root: Path, *, with_checkpoint: bool = True) -> Path:
    from lnsr_viz.experiments.store import RunStore
    from lnsr_viz.testing import tiny_model

    model, tok = tiny_model("bert", seed=0)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    metrics = pd.DataFrame({"domain": ["toy"], "metric": ["accuracy"], "value": [0.5]})
    path = RunStore(root).save({"method": "vanilla", "seed": 1}, metrics=metrics,
                               checkpoint_fn=write if with_checkpoint else None)
    return path / "checkpoint"


def test_checkpoint_must_match_its_stored_run(tmp_path):
    ckpt = _store_with_checkpoint(tmp_path / "store")
    assert ev.verify_checkpoint(ckpt) == str(ckpt)
    (ckpt / "config.json").write_text((ckpt / "config.json").read_text() + " ")
    with pytest.raises(ValueError, match=r"does not match stored run [0-9a-f]{12}: config.json differs"):
        ev.verify_checkpoint(ckpt)
    with pytest.raises(ValueError, match="does not match stored run"):   # refused before any work
        ev.diagnosis_evidence(ckpt, quick=True)
    ckpt2 = _store_with_checkpoint(tmp_path / "store2")
    (ckpt2 / "extra_weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="not in the run's record: extra_weights.bin"):
        ev.verify_checkpoint(ckpt2)
    bare = _store_with_checkpoint(tmp_path / "store3", with_checkpoint=False)
    shutil.copytree(ckpt2, bare)
    with pytest.raises(ValueError, match="stored without a checkpoint, so this folder was added later"):
        ev.verify_checkpoint(bare)
    outside = tmp_path / "mine"
    shutil.copytree(ckpt2, outside)
    assert ev.verify_checkpoint(outside) == str(outside)   # not in a run store: only config.json is needed


def test_checkpoint_seeds_keep_run_keys(tmp_path):
    from lnsr_viz.experiments.config import ExperimentConfig
    from lnsr_viz.experiments.runs import build_protocol, compare, keeps_checkpoint, run_configs
    from lnsr_viz.experiments.store import RunStore, config_hash

    assert keeps_checkpoint(True, 3) and not keeps_checkpoint(False, 1)
    assert keeps_checkpoint((1,), 1) and not keeps_checkpoint((1,), 2) and not keeps_checkpoint((1,), None)
    settings = runtime.comparison_settings(quick=True, results=tmp_path / "a")
    result = compare(**{**settings, "methods": ("vanilla",)}, save_checkpoints=(1,), progress=False, verbose=False)
    store = RunStore(tmp_path / "a", read_only=True)
    kept = {int(r.seed): store.load(r.run_id).checkpoint_path is not None
            for r in result.runs.dropna(subset=["seed"]).itertuples()}
    assert kept == {1: True, 2: False}
    config = ExperimentConfig().replace(**{k: v for k, v in {**settings, "methods": ("vanilla",)}.items()
                                           if k in ExperimentConfig.field_names()})
    from lnsr_viz.experiments.runs import Job

    jobs = [Job("pretrained", {}, None), *(Job("vanilla", {}, s) for s in config.seeds)]
    ids = [config_hash(c) for c in run_configs(jobs, config, build_protocol(config))]
    assert ids == list(result.runs["run_id"])   # the same keys as runs stored without checkpoints
    assert json.loads((store.run_dir(ids[1]) / "config.json").read_text())["run_id"] == ids[1]


def test_demo_keeps_first_seed_models_by_default():
    from lnsr_viz.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert args.no_checkpoints is False and not args.save_checkpoints
    assert build_parser().parse_args(["demo", "--no-checkpoints"]).no_checkpoints is True


@pytest.mark.parametrize(("extra", "kept"), [([], {1: True, 2: False}), (["--no-checkpoints"], {1: False, 2: False})])
def test_demo_command_keeps_the_first_seeds_model(tmp_path, capsys, extra, kept):
    from lnsr_viz.cli import main
    from lnsr_viz.experiments.store import RunStore

    s = runtime.comparison_settings(quick=True, results=tmp_path / "assets")
    store = tmp_path / "demo"
    argv = ["demo", "--model", s["model"], "--data", s["data"], "--ood", s["ood"]["toy_ood"], "--methods", "vanilla",
            "--seeds", "1,2", "--train-size", "24", "--val-size", "8", "--eval-size", "16", "--epochs", "1",
            "--batch-size", "8", "--max-length", "32", "--probe-n", "8", "--probe-draws", "2", "--results",
            str(store), "--out", str(tmp_path / "demo.html"), "--quiet", *extra]
    assert main(argv) == 0
    runs = RunStore(store, read_only=True)
    found = {int(r.seed): runs.load(r.run_id).checkpoint_path is not None
             for r in runs.list_runs().dropna(subset=["seed"]).itertuples()}
    assert found == kept


def test_training_missing_methods_refuses_unknown_names_before_any_work(monkeypatch, tmp_path):
    _no_training(monkeypatch)
    with pytest.raises(ValueError, match=r"choose methods from .*unknown \['nosuch'\].*unknown \[123\]"):
        ev.train_missing_methods(["nosuch"], [123], results=tmp_path / "mine")
    assert not (tmp_path / "mine").exists()


def test_covered_size_skips_a_size_still_being_filled_in():
    from lnsr_viz.viz.evidence import covered_size

    rows = [(100, m, s) for m in ("vanilla", "lnsr", "smart") for s in (1, 2, 3)]
    rows += [(500, "vanilla", 1), (500, "lnsr", 1), (500, "pretrained", None)]
    table = pd.DataFrame(rows, columns=["train_size", "method", "seed"])
    assert covered_size(table) == 100  # one seed of two methods at 500 is not the comparison
    table = pd.concat([table, pd.DataFrame([(500, m, s) for m in ("vanilla", "lnsr", "smart") for s in (2, 3)]
                                           + [(500, "smart", 1)], columns=["train_size", "method", "seed"])])
    assert covered_size(table) == 500  # now every method has 3 seeds there
    few = pd.DataFrame([(100, "vanilla", 1), (500, "vanilla", 1), (500, "lnsr", 1)],
                       columns=["train_size", "method", "seed"])
    assert covered_size(few) == 500  # nothing has 3 seeds: the size with the most runs
    assert covered_size(few.iloc[:0]) is None

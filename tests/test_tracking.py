"""Tracking (``FineTuner(report_to=...)``, ``run_sweep(tracking=...)``): what a real local MLflow store (SQLite, as
MLflow's default) and a TensorBoard event file hold equals the run store's history, metrics and stability profile;
nothing is reported (and nothing written) by default; unknown tools are refused before any work; tracking never
changes a run's key."""

import numpy as np
import pandas as pd
import pytest

from lnsr_viz.experiments.store import RunStore
from lnsr_viz.experiments.sweep import run_sweep, validate_config
from lnsr_viz.testing import save_tiny_setup, tiny_model, toy_sentences
from lnsr_viz.training.loop import FineTuner

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_setup(tmp_path_factory.mktemp("tracking"))


def _config(root):
    return validate_config({"model": str(root / "model"), "data": str(root / "in.csv"), "ood": [], "train_sizes": [16],
                            "seeds": [1], "val_size": 8, "eval_size": 12, "probe": {"n": 4, "n_draws": 1},
                            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3},
                            "methods": {"lnsr": {"lam": 1.0}}})


def test_nothing_is_reported_by_default_and_unknown_tools_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, tok = tiny_model("bert", seed=0)
    texts, labels = toy_sentences(16, seed=0)
    tuner = FineTuner("vanilla", epochs=1, batch_size=8, progress=False)
    assert tuner.report_to == [] and tuner.tracker_ is None
    tuner.fit(model, tok, {"text": texts, "label": labels})
    assert list(tmp_path.iterdir()) == []  # no runs/ folder, no mlflow.db
    assert FineTuner("vanilla", report_to="none").tracker_ is None
    assert FineTuner("vanilla", report_to="all").report_to == ["tensorboard", "mlflow"]
    with pytest.raises(ValueError, match=r"'report_to' parameter of FineTuner names \['wandb'\]"):
        FineTuner("vanilla", report_to=["tensorboard", "wandb"])
    with pytest.raises(ValueError, match="tracking options of run_sweep are 'report_to' and 'logging_dir'"):
        run_sweep({"methods": {}}, tracking={"report_to": "mlflow", "run_name": "x"})
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ImportError, match=r"report_to='mlflow' needs mlflow-skinny.*'lnsr_viz\[tracking\]'"):
        FineTuner("vanilla", report_to=["tensorboard", "mlflow"])


@pytest.mark.slow
def test_logged_values_equal_the_run_store(tiny, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tracking-test")
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts go to ./mlruns beside the database
    config = _config(tiny)
    plain = run_sweep(config, results=tmp_path / "plain", progress=False, verbose=False)
    runs = run_sweep(config, results=tmp_path / "tracked", progress=False, verbose=False,
                     tracking={"report_to": ["tensorboard", "mlflow"], "logging_dir": str(tmp_path / "tb")})
    assert list(runs["run_id"]) == list(plain["run_id"])  # tracking is not part of any key
    store = RunStore(tmp_path / "tracked", read_only=True)
    run_id = runs.loc[runs["method"] != "pretrained", "run_id"].iloc[0]
    run = store.load(run_id)
    history = run.history
    assert {"repr_effective_rank", "repr_mean_cosine", "reg_to_task_ratio"} <= set(history.columns)

    # MLflow: one run (the pre-trained probe trains nothing, so it is not reported), tagged with the store's run id
    client = MlflowClient()
    experiment = client.get_experiment_by_name("tracking-test")
    found = client.search_runs([experiment.experiment_id])
    assert [r.data.tags["lnsr_viz.run_id"] for r in found] == [run_id]
    mlrun = found[0]
    assert mlrun.info.status == "FINISHED" and mlrun.data.params["method_params.lam"] == "1.0"
    for column in ("train_loss", "train_task_loss", "train_reg_loss", "val_accuracy", "val_loss", "gap",
                   "repr_effective_rank", "repr_mean_cosine", "reg_to_task_ratio"):
        logged = client.get_metric_history(mlrun.info.run_id, column)
        assert [m.step for m in sorted(logged, key=lambda m: m.step)] == list(history["step"])
        np.testing.assert_allclose([m.value for m in sorted(logged, key=lambda m: m.step)], history[column],
                                   rtol=1e-12, err_msg=column)
    steps = client.get_metric_history(mlrun.info.run_id, "train/loss")
    assert sorted(m.step for m in steps) == list(range(1, int(run.extra["steps"]) + 1))
    for row in run.metrics.itertuples():
        assert mlrun.data.metrics[f"metrics/{row.domain}/{row.metric}"] == pytest.approx(row.value, rel=1e-12)
    folder = client.download_artifacts(mlrun.info.run_id, "stability_profile.csv", str(tmp_path / "dl"))
    profile = pd.read_csv(folder)
    np.testing.assert_allclose(profile["change_rel"], run.profile["change_rel"], rtol=1e-12)
    assert list(profile["layer_name"]) == list(run.profile["layer_name"])

    # TensorBoard: the event files of the run's folder, read back (scalars are stored as float32)
    (tb_dir,) = (tmp_path / "tb").iterdir()
    assert run_id in tb_dir.name
    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    for column in ("val_accuracy", "train_task_loss", "train_reg_loss", "repr_effective_rank"):
        scalars = events.Scalars(column)
        assert [s.step for s in scalars] == list(history["step"])
        np.testing.assert_allclose([s.value for s in scalars], history[column], rtol=1e-6, err_msg=column)
    assert len(events.Scalars("train/loss")) == int(run.extra["steps"])
    assert "stability_profile/text_summary" in events.Tags()["tensors"]


def _tensorboard_runs(folder):
    """Every run folder under ``folder`` that holds a TensorBoard event file."""
    return sorted({p.parent.name for p in folder.rglob("events.out.tfevents.*")})


@pytest.mark.slow
def test_compare_and_a_sweep_files_tracking_section_report_each_trained_run_once(tiny, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lnsr_viz.experiments.runs import compare

    monkeypatch.chdir(tmp_path)
    settings = dict(model=str(tiny / "model"), data=str(tiny / "in.csv"), ood=(), train_size=16, val_size=8,
                    eval_size=12, probe_n=4, probe_draws=1, epochs=1, batch_size=8, lr=1e-3, progress=False,
                    verbose=False)
    result = compare(["vanilla"], [1], results=tmp_path / "cmp", report_to="tensorboard",
                     logging_dir=str(tmp_path / "tb"), **settings)
    run_id = result.runs.loc[result.runs["method"] == "vanilla", "run_id"].iloc[0]
    (name,) = _tensorboard_runs(tmp_path / "tb")
    assert run_id in name
    events = EventAccumulator(str(tmp_path / "tb" / name), size_guidance={"scalars": 0})
    events.Reload()
    history = RunStore(tmp_path / "cmp", read_only=True).load(run_id).history
    np.testing.assert_allclose([s.value for s in events.Scalars("val_accuracy")], history["val_accuracy"], rtol=1e-6)
    # a stored run is loaded, not reported again; a plain compare writes no tracking files at all
    compare(["vanilla"], [1], results=tmp_path / "cmp", report_to="tensorboard", logging_dir=str(tmp_path / "tb"),
            **settings)
    assert _tensorboard_runs(tmp_path / "tb") == [name]
    with pytest.raises(ValueError, match="logging_dir is TensorBoard's folder"):
        compare(["vanilla"], [1], results=tmp_path / "x", logging_dir="tb", **settings)
    assert not (tmp_path / "x").exists()

    # the sweep file's tracking section (what --report-to would give), not part of any run key
    config = _config(tiny)
    with_section = validate_config({**config, "tracking": {"report_to": "tensorboard",
                                                           "logging_dir": str(tmp_path / "tb2")}})
    runs = run_sweep(with_section, results=tmp_path / "sw", progress=False, verbose=False)
    assert list(runs["run_id"]) == list(run_sweep(config, results=tmp_path / "sw", progress=False,
                                                  verbose=False)["run_id"])
    trained = runs.loc[runs["method"] != "pretrained", "run_id"].iloc[0]
    (name2,) = _tensorboard_runs(tmp_path / "tb2")
    assert trained in name2
    with pytest.raises(ValueError, match="'tracking' must be a mapping"):
        validate_config({**config, "tracking": "mlflow"})
    with pytest.raises(ValueError, match=r"report_to' parameter of .*tracking names \['wandb'\]"):
        validate_config({**config, "tracking": {"report_to": "wandb"}})

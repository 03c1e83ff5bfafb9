"""Experiments end to end on a tiny model: the CLI writes tables and a report, a second call loads every run from
the store (no retraining, proven by counting trainings), an interrupted grid resumes, and bad input fails early."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from lnsr_viz import cli
from lnsr_viz.experiments.runs import compare
from lnsr_viz.experiments.store import RunStore
from lnsr_viz.testing import save_tiny_setup, tiny_model
from lnsr_viz.training.loop import FineTuner


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    return save_tiny_setup(tmp_path_factory.mktemp("tiny"), (("in", 80, 0), ("ood", 30, 5)),
                           text_column={"ood": "sentence"})


@pytest.fixture
def count_fits(monkeypatch):
    calls = []
    original = FineTuner.fit

    def counting(self, *args, **kwargs):
        calls.append(self.method_.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FineTuner, "fit", counting)
    return calls


def _small(root, results):
    return dict(model=str(root / "model"), data=str(root / "in.csv"), ood={"other": str(root / "in.csv")},
                train_size=24, val_size=8, eval_size=12, epochs=1, batch_size=8, probe_n=6, probe_draws=2,
                results=results, progress=False, verbose=False)


def test_cli_compare_end_to_end_then_cached(tiny_setup, tmp_path, count_fits, capsys):
    root = tiny_setup
    args = ["compare", "--model", str(root / "model"), "--data", str(root / "in.csv"), "--ood", "",
            "--methods", "vanilla,lnsr", "--seeds", "1,2", "--train-size", "24", "--val-size", "8",
            "--eval-size", "12", "--epochs", "1", "--batch-size", "8", "--probe-n", "6", "--probe-draws", "2",
            "--param", "lnsr.lam=2", "--results", str(tmp_path / "store"), "--quiet"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "report:" in out and "Verdicts" in out
    assert count_fits == ["vanilla", "vanilla", "lnsr", "lnsr"]
    html = (tmp_path / "store" / "report.html").read_text()
    assert "Layer stability" in html and "Accuracy per domain" in html
    metrics = pd.read_csv(tmp_path / "store" / "tables" / "metrics.csv")
    assert set(metrics["method"]) == {"vanilla", "lnsr"} and set(metrics["seed"]) == {1, 2}
    profiles = pd.read_csv(tmp_path / "store" / "tables" / "profile.csv")
    assert set(profiles["model"]) == {"pretrained", "vanilla", "lnsr"}
    paired = pd.read_csv(tmp_path / "store" / "tables" / "paired.csv")
    assert (paired["n_pairs"] == 2).all()
    records = sorted((tmp_path / "store" / "runs").glob("*/record.json"))
    stamps = {p: p.stat().st_mtime_ns for p in records}
    # the method parameter reached the run config
    configs = [json.loads((p.parent / "config.json").read_text())["config"] for p in records]
    assert {c["method_params"]["lam"] for c in configs if c["method"] == "lnsr"} == {2.0}

    count_fits.clear()
    assert cli.main(args) == 0
    assert count_fits == []  # nothing retrained
    assert {p: p.stat().st_mtime_ns for p in records} == stamps
    assert "0 runs trained, 5 loaded from the store" in capsys.readouterr().out


def test_interrupted_grid_resumes_where_it_stopped(tiny_setup, tmp_path, monkeypatch, count_fits):
    settings = _small(tiny_setup, tmp_path / "store")
    original = FineTuner.fit
    seen = []

    def dies_on_third(self, *args, **kwargs):
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FineTuner, "fit", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        compare(["vanilla", "lnsr"], [1, 2], **settings)
    monkeypatch.setattr(FineTuner, "fit", original)
    runs_dir = tmp_path / "store" / "runs"
    assert len(list(runs_dir.glob("*/record.json"))) == 3  # pretrained + 2 vanilla runs completed
    count_fits.clear()  # ``original`` is count_fits' counting wrapper
    result = compare(["vanilla", "lnsr"], [1, 2], **settings)
    assert count_fits == ["lnsr", "lnsr"]
    assert result.runs["cached"].tolist() == [True, True, True, False, False]


def test_same_seed_same_metrics(tiny_setup, tmp_path):
    a = compare(["lnsr"], [7], **_small(tiny_setup, tmp_path / "a"))
    b = compare(["lnsr"], [7], **_small(tiny_setup, tmp_path / "b"))
    pd.testing.assert_frame_equal(a.metrics.drop(columns="run_id"), b.metrics.drop(columns="run_id"))


def test_user_model_object_is_not_modified(tiny_setup, tmp_path):
    model, tok = tiny_model("bert", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = _small(tiny_setup, tmp_path / "s")
    settings["model"] = (model, tok)
    compare(["vanilla"], [1], **settings)
    for k, v in model.state_dict().items():
        assert (v == before[k]).all(), k


@pytest.mark.parametrize(("change", "message"), [
    ({"train_size": 10_000}, "train_size=10000 is larger than the"),
    ({"methods": ["vanilla", "lnrs"]}, "Unknown method 'lnrs'"),
    ({"seeds": []}, "seeds is empty"),
    ({"ood": ["mars"]}, "Unknown out-of-domain set 'mars'"),
    ({"lr": 0.0}, "'lr' parameter of FineTuner"),
    ({"method_params": {"lnsr": {"lam": -1}}}, "'lam' parameter of LNSR"),
])
def test_bad_input_fails_before_any_training(tiny_setup, tmp_path, count_fits, change, message):
    settings = _small(tiny_setup, tmp_path / "s")
    methods = change.pop("methods", ["vanilla", "lnsr"])
    seeds = change.pop("seeds", [1])
    settings.update(change)
    with pytest.raises(ValueError, match=message):
        compare(methods, seeds, **settings)
    assert count_fits == []


def test_results_folder_that_cannot_be_written(tiny_setup, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError):
        compare(["vanilla"], [1], **_small(tiny_setup, blocker / "store"))


def test_cli_reports_errors_in_one_line(capsys):
    assert cli.main(["compare", "--methods", "nope", "--quiet"]) == 2
    assert "error: Unknown method 'nope'" in capsys.readouterr().err
    assert cli.main(["probe", "--model", "/nonexistent/folder", "--n", "2", "--out", "/nonexistent/x/p.csv"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_probe_writes_a_profile(tiny_setup, tmp_path):
    out = tmp_path / "profile.csv"
    html = tmp_path / "profile.html"
    assert cli.main(["probe", "--model", str(tiny_setup / "model"), "--data", str(tiny_setup / "in.csv"),
                     "--n", "5", "--draws", "2", "--out", str(out), "--html", str(html), "--quiet"]) == 0
    profile = pd.read_csv(out)
    assert set(profile["injection_layer"]) == {0, 1, 2}
    assert html.exists() and not list(tmp_path.glob("*.tmp*"))
    assert Path(out).read_text().startswith("model,injection_layer,layer")


def test_runs_store_their_drift_from_the_pretrained_model(tiny_setup, tmp_path):
    result = compare(["vanilla", "lnsr"], [1, 2], **_small(tiny_setup, tmp_path / "store"))
    drift = result.drift
    assert set(drift["method"]) == {"vanilla", "lnsr"} and set(drift["model_a"]) == {"pretrained"}
    cka = drift[drift["metric"] == "cka"]
    assert cka["run_id"].nunique() == 4
    assert cka["value"].between(-1e-9, 1 + 1e-9).all()  # a similarity
    moved = drift[(drift["metric"] == "weight_distance") & (drift["layer"] > 0)]
    assert (moved["value"] > 0).all()  # every block was trained
    assert {r.extra["device"] for r in (RunStore(tmp_path / "store").load(i) for i in result.runs["run_id"])} == {
        "cpu"}


def test_a_run_stored_on_one_device_is_reused_on_another(tiny_setup, tmp_path, count_fits):
    """The device is recorded, not keyed: a run made on a GPU is loaded on a CPU (and stays marked as a GPU run)."""
    from lnsr_viz.utils.io import sha256_file

    first = compare(["vanilla"], [1], **_small(tiny_setup, tmp_path / "store"))
    run_id = first.runs.loc[first.runs["method"] == "vanilla", "run_id"].iloc[0]
    folder = tmp_path / "store" / "runs" / run_id
    extra = json.loads((folder / "extra.json").read_text())
    extra["device"] = "cuda:0"  # as if the run had been made on a GPU machine and committed
    (folder / "extra.json").write_text(json.dumps(extra))
    record = json.loads((folder / "record.json").read_text())
    record["files"]["extra.json"] = {"sha256": sha256_file(folder / "extra.json"),
                                     "bytes": (folder / "extra.json").stat().st_size}
    (folder / "record.json").write_text(json.dumps(record))
    del count_fits[:]
    again = compare(["vanilla"], [1], device="cpu", **_small(tiny_setup, tmp_path / "store"))
    assert count_fits == []  # loaded, not trained again
    assert list(again.runs["run_id"]) == list(first.runs["run_id"])
    assert RunStore(tmp_path / "store").load(run_id).extra["device"] == "cuda:0"


def test_a_device_that_is_not_there_is_refused_before_any_work(tiny_setup, tmp_path):
    with pytest.raises(ValueError, match="not a torch device"):
        compare(["vanilla"], [1, 2], device="gpu0", **_small(tiny_setup, tmp_path / "s"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees none"):
            compare(["vanilla"], [1, 2], device="cuda", **_small(tiny_setup, tmp_path / "s"))
    assert not (tmp_path / "s" / "runs").exists() or not any((tmp_path / "s" / "runs").iterdir())

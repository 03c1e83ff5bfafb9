"""Tests for :mod:`lnsr_viz.viz.runtime`, the notebook runtime (settings, folders, stored runs, the notebooks' loops).

Covered:

* the quick switch, the results / reports folders (``LNSR_VIZ_RESULTS``) and that looking never creates a store;
* the project folder: ``LNSR_VIZ_PROJECT`` first, then a checkout above the working directory, then the working
  directory itself (as from an installed wheel, with no ``pyproject.toml`` anywhere above);
* the quick comparison settings and protocol, stored tables and checkpoints, the readable message for a missing
  checkpoint, the benchmark results when absent;
* the helpers that keep loops out of the notebooks: probes over noise x scale, the probe's per-coordinate sigma,
  drift / theory measurements of stored checkpoints (empty when none), joining measurements, notebook 04's data and
  projections, the cost summary, the study's configuration, write-up and scatter choices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lnsr_viz.testing import tiny_model, toy_sentences
from lnsr_viz.viz import runtime

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("", False), ("0", False)])
def test_quick_mode(monkeypatch, value, expected):
    monkeypatch.setenv(runtime.QUICK_ENV, value)
    assert runtime.quick_mode() is expected


def test_results_dir_and_stored_table(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.RESULTS_ENV, str(tmp_path))
    assert runtime.results_dir("demo", quick=True) == tmp_path / "quick" / "demo"
    assert runtime.results_dir("demo", quick=False) == tmp_path / "demo"
    assert runtime.reports_dir(quick=True) == tmp_path / "quick" / "reports"
    assert runtime.stored_table("profile", quick=True).empty
    assert not (tmp_path / "quick").exists()  # looking never creates a store


def test_quick_comparison_settings(tmp_path):
    settings = runtime.comparison_settings(quick=True, results=tmp_path)
    assert settings["results"] == str(tmp_path)
    assert (tmp_path / "assets" / "tiny-bert" / "config.json").is_file()
    assert pd.read_csv(settings["data"]).shape[0] == 80
    full = runtime.comparison_settings(quick=False, results=tmp_path)
    assert full["model"] == "minilm" and full["seeds"] == (1, 2, 3)


def test_check_checkpoint_says_what_to_set(tmp_path):
    with pytest.raises(FileNotFoundError, match="CHECKPOINT is not set. Set CHECKPOINT"):
        runtime.check_checkpoint(None)
    with pytest.raises(FileNotFoundError, match="does not exist. Set CHECKPOINT in the first code cell"):
        runtime.check_checkpoint(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        runtime.check_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert runtime.check_checkpoint(tmp_path) == str(tmp_path)


def test_default_checkpoint_in_the_full_setting_trains_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.RESULTS_ENV, str(tmp_path))
    assert runtime.default_checkpoint(quick=False) is None
    assert runtime.stored_checkpoints(quick=False).empty
    assert not (tmp_path / "demo").exists()


def test_comparison_protocol(tmp_path):
    settings = runtime.comparison_settings(quick=True, results=tmp_path)
    protocol = runtime.comparison_protocol(settings)
    assert len(protocol.train) == settings["train_size"] and len(protocol.validation) == settings["val_size"]
    assert set(protocol.evaluation) == {"toy_in", "toy_ood"} and protocol.in_domain == "toy_in"


def test_benchmark_table_absent_is_empty(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.PROJECT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    rows, info = runtime.benchmark_table("no_such_benchmark")
    assert rows.empty and info["path"].endswith("no_such_benchmark.json")


def test_default_folders_are_under_the_project(monkeypatch):
    monkeypatch.delenv(runtime.RESULTS_ENV, raising=False)
    monkeypatch.delenv(runtime.PROJECT_ENV, raising=False)
    monkeypatch.chdir(ROOT / "notebooks")   # where the notebooks' kernels run
    root = runtime.project_root()
    assert root == ROOT and (root / "pyproject.toml").is_file()
    assert runtime.results_dir("demo", quick=False) == root / "results" / "demo"  # shared with `make demo`
    assert runtime.reports_dir(quick=False) == root / "reports" / "notebooks"  # git-ignored


# ----------------------------------------------------------------------------------------------- the project folder


def test_project_root_env_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.PROJECT_ENV, str(tmp_path / "elsewhere"))
    monkeypatch.delenv(runtime.RESULTS_ENV, raising=False)
    assert runtime.project_root() == tmp_path / "elsewhere"
    assert runtime.results_dir("demo", quick=False) == tmp_path / "elsewhere" / "results" / "demo"
    assert runtime.study_config() == tmp_path / "elsewhere" / "configs" / "study.yaml"


def test_project_root_outside_a_checkout_is_the_working_directory(monkeypatch, tmp_path):
    """From an installed wheel: no pyproject.toml above, so results and reports go under the working directory."""
    monkeypatch.delenv(runtime.PROJECT_ENV, raising=False)
    monkeypatch.delenv(runtime.RESULTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert runtime.project_root() == tmp_path.resolve()
    assert runtime.results_dir("demo", quick=True) == tmp_path.resolve() / "results" / "quick" / "demo"
    assert runtime.reports_dir(quick=False) == tmp_path.resolve() / "reports" / "notebooks"
    assert runtime.stored_table("profile", quick=False).empty and runtime.stored_checkpoints(quick=False).empty
    assert runtime.study_markdown() is None
    with pytest.raises(FileNotFoundError, match="no study run store at"):
        runtime.study_dir()
    assert not (tmp_path / "results").exists()


def test_project_root_search_needs_the_package_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.PROJECT_ENV, raising=False)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'other'\n")
    (tmp_path / "sub").mkdir()
    assert runtime.project_root(tmp_path / "sub") == (tmp_path / "sub").resolve()   # another project: not ours
    (tmp_path / "lnsr_viz").mkdir()
    assert runtime.project_root(tmp_path / "sub") == tmp_path.resolve()


# ----------------------------------------------------------------------------------------------- notebook loops


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("bert", n_layers=2, seed=0)


def test_probe_profiles_stacks_noise_by_scale(tiny):
    model, tok = tiny
    texts = toy_sentences(4, seed=0)[0]
    table = runtime.probe_profiles(model, texts, tokenizer=tok, label="tiny", noises=("gaussian", "in_manifold"),
                                   scales=(0.01, 0.1), injection_layers=0, n_draws=1)
    runs = table[["noise", "scale"]].drop_duplicates().apply(tuple, axis=1).tolist()
    assert runs == [("gaussian", 0.01), ("gaussian", 0.1), ("in_manifold", 0.01), ("in_manifold", 0.1)]
    at_k = table[table["layer"] == 0]
    assert np.allclose(at_k["change_rel"], at_k["scale"], atol=1e-4)   # relative noise: exactly its size where injected


def test_probe_noise_sigma_matches_the_hidden_states(tiny):
    from lnsr_viz.core.adapter import ModelAdapter

    model, tok = tiny
    texts = toy_sentences(4, seed=0)[0]
    hidden = ModelAdapter(model).hidden_states(tok(texts, padding=True, truncation=True, max_length=64,
                                                   return_tensors="pt"))[0]
    expected = float(0.05 * hidden.norm(dim=-1).mean() / hidden.shape[-1] ** 0.5)
    assert runtime.probe_noise_sigma(model, texts, tok, scale=0.05) == pytest.approx(expected)
    assert runtime.probe_noise_sigma(model, texts, tok, scale=0.1) == pytest.approx(2 * expected)


def test_checkpoint_measurements_without_checkpoints_are_empty(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.RESULTS_ENV, str(tmp_path))
    settings = runtime.comparison_settings(quick=True)
    assert runtime.checkpoint_drift(settings, quick=True).empty
    measured = runtime.checkpoint_theory(settings, quick=True)
    assert measured.empty and list(measured.columns) == ["run_id", "method", "seed", *runtime.THEORY_COLUMNS]


def test_join_theory_measurements():
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "noise_sensitivity": [0.1, 0.2, 0.3],
                         "jacobian_fro2": [np.nan] * 3, "hessian_trace": [np.nan] * 3})
    measured = pd.DataFrame({"run_id": ["b", "a"], "method": ["lnsr", "vanilla"], "seed": [1, 1],
                             "jacobian_fro2": [2.0, 1.0], "jacobian_fro2_se": [0.1, 0.1],
                             "hessian_trace": [20.0, 10.0], "hessian_trace_se": [1.0, 1.0]})
    joined = runtime.join_theory_measurements(runs, measured)
    assert joined["run_id"].tolist() == ["a", "b", "c"] and joined["noise_sensitivity"].tolist() == [0.1, 0.2, 0.3]
    assert joined["jacobian_fro2"].tolist()[:2] == [1.0, 2.0] and np.isnan(joined["jacobian_fro2"].iloc[2])
    assert joined["hessian_trace"].tolist()[:2] == [10.0, 20.0]


def test_diagnosis_data_and_projections(tmp_path):
    settings = runtime.comparison_settings(quick=True, results=tmp_path)
    data, in_domain, ood = runtime.diagnosis_data(settings=settings)
    protocol = runtime.comparison_protocol(settings)
    assert in_domain == "toy_in" and set(ood) == {"toy_ood"} and set(data) == {"train", "held_out"}
    assert len(data["train"]) == len(protocol.train) and len(data["held_out"]) == settings["eval_size"]
    own = {"train": "x.csv", "held_out": "y.csv"}
    assert runtime.diagnosis_data(own) == (own, "held_out", {})
    base, model = tiny_model("bert", n_layers=2, seed=0), tiny_model("bert", n_layers=2, seed=1)
    projections = runtime.diagnosis_projections(base, model, data["held_out"], ood, in_domain=in_domain,
                                                n_per_set=6, layers=(0, -1), method="pca", max_length=32)
    assert len(projections) == 2
    for table in projections:
        assert set(table["model"]) == {"base", "model"}
        assert table.groupby("model")["domain"].value_counts().eq(6).all()


def test_run_cost_summary():
    runs = pd.DataFrame({"method": ["pretrained", "vanilla", "vanilla", "lnsr"], "seconds": [np.nan, 10.0, 20.0, 30.0]})
    summary = runtime.run_cost_summary(runs)
    assert summary.to_dict() == {"count": {"lnsr": 1, "vanilla": 2}, "mean": {"lnsr": 30.0, "vanilla": 15.0}}


# ----------------------------------------------------------------------------------------------- the study


def test_study_markdown_and_config(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime.PROJECT_ENV, str(tmp_path))
    assert runtime.study_markdown() is None
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "study.md").write_text("# Study\n![claims](study-claims.svg)\n![gone](study-gone.png)\n"
                                                "[a link](https://example.org/x.svg)\n", encoding="utf-8")
    (tmp_path / "docs" / "study-claims.svg").write_bytes(b"<svg/>")
    write_up = runtime.study_markdown()
    # embedded, so it shows in a lab rooted at notebooks/ (where ../docs/ is not served); a missing one is named
    assert write_up.startswith("# Study\n![claims](data:image/svg+xml;base64,PHN2Zy8+)\n*(figure `docs/study-gone.png`")
    assert write_up.endswith("is missing: rebuild the write-up with `python -m lnsr_viz study configs/study.yaml`)*\n"
                             "[a link](https://example.org/x.svg)\n")


def test_study_scatter_choices():
    runs = pd.DataFrame(columns=["run_id", "accuracy", "top_sensitivity", "ood_accuracy", "seed"])
    choices = runtime.study_scatter_choices(runs)
    assert choices == {"x": ["top_sensitivity", "ood_accuracy", "accuracy"],
                       "y": ["ood_accuracy", "top_sensitivity", "accuracy"]}
    with pytest.raises(ValueError, match="fewer than two"):
        runtime.study_scatter_choices(runs[["run_id", "accuracy"]])


def test_the_committed_study_is_found_from_the_notebooks_folder(monkeypatch):
    monkeypatch.delenv(runtime.PROJECT_ENV, raising=False)
    monkeypatch.chdir(ROOT / "notebooks")
    assert runtime.study_dir() == ROOT / "results" / "study"
    assert runtime.study_config() == ROOT / "configs" / "study.yaml" and runtime.study_config().is_file()
    write_up = runtime.study_markdown()
    assert write_up is not None and "](data:image/svg+xml;base64," in write_up and "](study-" not in write_up
    assert "is missing" not in write_up

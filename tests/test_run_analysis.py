"""Every run's own analysis (``analysis=True``): stored with the run, read back without a model, and right.

Known answers rather than shapes: the diagnosis's held-out accuracy is the run's own in-domain accuracy (two code
paths, one model, the same sentences); the stored representations of the pre-trained run are that model's
mean-pooled top layer; the small-noise identity holds at small sigma; the attributions add up to the change of
probability (captum's completeness); every run of a protocol is analysed on the same sentences.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lnsr_viz.experiments.config import ExperimentConfig
from lnsr_viz.experiments.run_analysis import ANALYSIS_SETTINGS, ANALYSIS_TABLES, top_and_head
from lnsr_viz.experiments.runs import compare
from lnsr_viz.experiments.store import RunStore
from lnsr_viz.testing import save_tiny_setup, tiny_model
from lnsr_viz.training.loop import FineTuner


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return save_tiny_setup(tmp_path_factory.mktemp("analysis"), (("in", 80, 0), ("other", 30, 5)))


def _settings(root, results, **changes):
    base = dict(model=str(root / "model"), data=str(root / "in.csv"), ood={"other": str(root / "other.csv")},
                train_size=24, val_size=8, eval_size=12, max_steps=4, batch_size=8, probe_n=6, probe_draws=2,
                results=results, progress=False, verbose=False, analysis=True,
                method_params={"lnsr": {"injection_layer": 1}})
    base.update(changes)
    return base


@pytest.fixture(scope="module")
def analysed(tiny_root, tmp_path_factory):
    results = tmp_path_factory.mktemp("store")
    result = compare(["vanilla", "lnsr"], [1], **_settings(tiny_root, results))
    store = RunStore(results)
    return result, store


def _runs(result, store):
    return {m: store.load(i) for m, i in zip(result.runs["method"], result.runs["run_id"])}


def test_every_run_stores_its_analysis_and_it_reads_back_without_a_model(analysed):
    result, store = analysed
    runs = _runs(result, store)
    assert set(runs) == {"pretrained", "vanilla", "lnsr"}
    for method, run in runs.items():
        expected = set(ANALYSIS_TABLES) - ({"diagnosis"} if method == "pretrained" else set())
        assert set(run.tables) == expected, method
        assert run.config["analysis"] == ANALYSIS_SETTINGS
        assert run.extra["analysis_seconds"] > 0
    reps = store.load_table("representations")
    assert set(reps["method"]) == {"pretrained", "vanilla", "lnsr"}
    dims = [c for c in reps.columns if c.startswith("d") and c[1:].isdigit()]
    assert len(dims) == 32 and all(reps[c].dtype == np.float16 for c in dims)
    assert set(reps["domain"]) == {"in", "other"}


def test_the_theory_table_covers_the_probe_layer_and_the_methods_own_layer(analysed):
    result, store = analysed
    runs = _runs(result, store)
    lnsr, vanilla = runs["lnsr"].tables["theory"], runs["vanilla"].tables["theory"]
    assert sorted(lnsr["layer"].dropna().unique()) == [0, 1]  # injection_layer=1 of its parameters
    assert sorted(vanilla["layer"].dropna().unique()) == [0]
    for table in (lnsr, vanilla):
        ratio = table[(table["quantity"] == "identity_ratio") & (table["sigma"] == min(ANALYSIS_SETTINGS["sigmas"]))]
        assert np.allclose(ratio["value"], 1.0, atol=0.25)  # the small-noise identity holds at small sigma
        assert (table.loc[table["quantity"] == "jacobian_fro2", "value"] > 0).all()
        assert table["quantity"].eq("hessian_trace").sum() == 1
    at0 = vanilla[(vanilla["layer"] == 0) & (vanilla["quantity"] == "jacobian_fro2")]["value"].iloc[0]
    assert runs["vanilla"].extra["jacobian_fro2"] == pytest.approx(at0)  # what theory_table reads


def test_the_diagnosis_held_out_accuracy_is_the_runs_own_in_domain_accuracy(analysed):
    result, store = analysed
    for method in ("vanilla", "lnsr"):
        run = _runs(result, store)[method]
        diag = run.tables["diagnosis"]
        value = diag.set_index(["finding", "quantity"])["value"]
        m = run.metrics
        own = m[(m["domain"] == "in") & (m["metric"] == "accuracy")]["value"].iloc[0]
        assert value[("metrics", "held_out.accuracy")] == pytest.approx(own)
        gap = value[("generalisation_gap", "value")]
        assert gap == pytest.approx(value[("metrics", "train.accuracy")] - value[("metrics", "held_out.accuracy")])
        assert {"generalisation_gap", "loss_gap", "stability_vs_base", "calibration", "drift"} <= set(diag["finding"])


def test_attributions_add_up_and_every_run_explains_the_same_sentences(analysed):
    result, store = analysed
    runs = _runs(result, store)
    texts = {m: list(r.tables["attributions"].query("position == 0")["text"]) for m, r in runs.items()}
    assert texts["vanilla"] == texts["lnsr"] == texts["pretrained"]
    assert len(texts["vanilla"]) == min(ANALYSIS_SETTINGS["attribution_sentences"], 12)
    attr = runs["vanilla"].tables["attributions"]
    assert attr["convergence_delta"].abs().max() < 1e-2  # completeness: sum of attributions = change of output


def test_the_pretrained_runs_representations_are_the_models_top_layer(analysed, tiny_root):
    from lnsr_viz.analysis.drift import sentence_representations
    from lnsr_viz.data.models import load_model

    result, store = analysed
    reps = _runs(result, store)["pretrained"].tables["representations"]
    net, tok = load_model(str(tiny_root / "model"), num_labels=2, seed=1)
    mine = reps[reps["domain"] == "other"]
    want = sentence_representations(net, list(mine["text"]), tok, layers=-1, max_length=64)
    want = next(iter(want.values())).float().numpy()
    got = mine[[c for c in mine.columns if c.startswith("d") and c[1:].isdigit()]].to_numpy(np.float32)
    assert np.allclose(got, want, atol=2e-2, rtol=1e-2)  # float16 storage


def test_analysis_enters_the_key_only_when_on(tiny_root, tmp_path, monkeypatch):
    calls = []
    original = FineTuner.fit
    monkeypatch.setattr(FineTuner, "fit", lambda self, *a, **k: (calls.append(1), original(self, *a, **k))[1])
    off = compare(["vanilla"], [1], **_settings(tiny_root, tmp_path / "s", analysis=False, method_params={}))
    on = compare(["vanilla"], [1], **_settings(tiny_root, tmp_path / "s", method_params={}))
    assert set(off.runs["run_id"]).isdisjoint(on.runs["run_id"]) and len(calls) == 2
    run = RunStore(tmp_path / "s").load(off.runs["run_id"].iloc[-1])
    assert "analysis" not in run.config and run.tables == {}


def test_a_run_stored_on_one_device_is_reused_on_another(tiny_root, tmp_path, monkeypatch):
    plain = _settings(tiny_root, tmp_path / "s", analysis=False, method_params={})
    first = compare(["vanilla"], [1], device="cpu", **plain)
    run_id = first.runs["run_id"].iloc[-1]
    extra = tmp_path / "s" / "runs" / run_id / "extra.json"
    doc = json.loads(extra.read_text())
    assert doc["device"] == "cpu"
    calls = []
    monkeypatch.setattr(FineTuner, "fit", lambda self, *a, **k: calls.append(1))
    again = compare(["vanilla"], [1], device=None, **plain)
    assert calls == [] and again.runs["cached"].all() and list(again.runs["run_id"]) == list(first.runs["run_id"])


def test_analysis_is_refused_for_qa_before_any_work():
    with pytest.raises(ValueError, match="classification runs only"):
        ExperimentConfig(task="qa", analysis=True)
    with pytest.raises(ValueError, match="analysis must be true or false"):
        ExperimentConfig(analysis="yes")


def test_the_hessian_covers_the_top_block_and_the_head():
    net, _ = tiny_model("bert", seed=0, n_layers=2)
    names = top_and_head(net)
    assert names[0].startswith("bert.encoder.layer.1.") and names[-1].startswith("classifier")
    assert not any(".layer.0." in n or "embeddings" in n for n in names)


def test_weightwatcher_metrics_are_stored_for_every_weight_matrix(analysed):
    result, store = analysed
    ww = _runs(result, store)["vanilla"].tables["weightwatcher"]
    assert len(ww) > 0 and {"alpha", "alpha_weighted", "log_spectral_norm", "stable_rank"} <= set(ww.columns)
    net_linear = ww[ww["M"] > 1]
    assert (net_linear["stable_rank"] >= 1 - 1e-6).all()  # ||W||_F^2 / ||W||_2^2 is at least 1

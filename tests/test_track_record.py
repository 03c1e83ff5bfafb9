"""Tests for diagnose's track record (lnsr_viz.experiments.track_record, lnsr_viz.analysis.validity).

Covers: ROC AUC and Spearman rho against hand-computed values on a small table (ties counted half; the rank AUC
equals sklearn's); the verdicts (predictive / opposite / chance) on a synthetic population with a predictive, an
inverted and a useless number; a warning whose track record does not beat chance is worded as descriptive, one
that points the opposite way is corrected, and the report shows the record; the packaged table loads; WeightWatcher's
summary of a tiny model matches calling weightwatcher directly, and a model it cannot analyse is reported while
the rest go on; fewer than 20 models are refused saying how many are needed; models with missing outcomes are
named; the population is read from a run store (outcomes, split, problems); the CLI writes the write-up.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from lnsr_viz.analysis.validity import (
    Association,
    association,
    chance_verdict,
    rank_auc,
    stratified_association,
)
from lnsr_viz.data.text import TextDataset
from lnsr_viz.experiments.diagnose import diagnose
from lnsr_viz.experiments.store import RunStore
from lnsr_viz.experiments.track_record import (
    FINDING_CLAIMS,
    OVERFIT_DROP,
    WW_METRICS,
    Population,
    finding_table,
    load_track_record,
    population_table,
    split_of,
    track_record,
    track_record_sentence,
    weightwatcher_summaries,
    weightwatcher_summary,
)
from lnsr_viz.testing import tiny_model, toy_sentences


# ------------------------------------------------------------------------------------------------ known answers
def test_rank_auc_and_association_match_hand_computed_values():
    # positives {0.35, 0.8, 0.6} vs negatives {0.1, 0.4, 0.2}: 8 of 9 pairs ordered -> 8/9
    x, y = [0.1, 0.4, 0.35, 0.8, 0.6, 0.2], [0, 0, 1, 1, 1, 0]
    assert rank_auc(x, y) == pytest.approx(8 / 9)
    assert rank_auc(x, y) == pytest.approx(roc_auc_score(y, x))
    # a tie between classes counts one half: {2, 3} vs {1, 2} -> (1 + 0.5 + 1 + 1) / 4
    assert rank_auc([1, 2, 2, 3], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert math.isnan(rank_auc([1, 2], [1, 1]))
    # Spearman: d = (-1, 1, -1, 1, 0), rho = 1 - 6 * 4 / (5 * 24) = 0.8; AUC: {3, 5} vs {1, 2, 4} -> 5/6
    a = association([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], [0, 0, 1, 0, 1], n_boot=200)
    assert a.n == 5 and a.n_positive == 2
    assert a.rho == pytest.approx(0.8) and a.auc == pytest.approx(5 / 6)
    assert a.auc_p == pytest.approx(stats.mannwhitneyu([3, 5], [1, 2, 4]).pvalue)
    assert a.rho_ci_low <= a.rho <= a.rho_ci_high and a.auc_ci_low <= a.auc <= a.auc_ci_high
    # rows with a missing value are dropped first
    b = association([1, 2, 3, 4, 5, np.nan], [2, 1, 4, 3, 5, 9], [0, 0, 1, 0, 1, 1], n_boot=200)
    assert (b.n, b.rho, b.auc) == (5, a.rho, a.auc)


def test_stratified_association_matches_hand_computed_values():
    # group a: rho 0.8 (as above), positives {3, 5} vs {1, 2, 4}: U = 5 of 6 pairs
    # group b: x = (1, 2, 3, 4, 5), outcome reversed: rho -1; positives {1} vs {2, 3, 4, 5}: U = 0 of 4 pairs
    x = [1, 2, 3, 4, 5] + [1, 2, 3, 4, 5]
    out = [2, 1, 4, 3, 5] + [5, 4, 3, 2, 1]
    lab = [0, 0, 1, 0, 1] + [1, 0, 0, 0, 0]
    s = stratified_association(x, out, lab, ["a"] * 5 + ["b"] * 5, n_boot=200)
    assert s.n == 10 and s.n_positive == 3
    assert s.auc == pytest.approx((5 + 0) / (6 + 4))  # only pairs inside a group count
    # Fisher's z weighted by n - 3 = 2 each: tanh((atanh(0.8) + atanh(-1 + eps)) / 2); here the -1 dominates
    z_b = np.arctanh(-1 + 1e-12)
    assert s.rho == pytest.approx(np.tanh((np.arctanh(0.8) * 2 + z_b * 2) / 4))
    # the AUC's p-value: the stratified U's normal approximation = scipy's asymptotic test on one group
    one = stratified_association([1, 2, 2, 3, 3, 3, 4, 8], [1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 0, 1, 1, 0, 0, 1],
                                 ["g"] * 8, n_boot=100)
    pos, neg = [2, 3, 3, 8], [1, 2, 3, 4]
    assert one.auc_p == pytest.approx(stats.mannwhitneyu(pos, neg, method="asymptotic",
                                                         use_continuity=False).pvalue)
    # with one group the point estimates are association's
    a = association([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], [0, 0, 1, 0, 1], n_boot=200)
    b = stratified_association([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], [0, 0, 1, 0, 1], [7] * 5, n_boot=200)
    assert (b.rho, b.auc) == pytest.approx((a.rho, a.auc))
    assert b.rho_ci_low <= b.rho <= b.rho_ci_high and b.auc_ci_low <= b.auc <= b.auc_ci_high
    with pytest.raises(ValueError, match="one length"):
        stratified_association([1, 2], [1, 2], [0, 1], [0])


def test_a_number_that_only_tells_the_sizes_apart_is_not_predictive():
    # Two sizes: at 100 every model over-fits more than at 500, and the number is the size plus noise. Pooled it
    # separates over-fitted models perfectly; within each size it is noise, and the verdict must say so.
    rng = np.random.default_rng(3)
    n = 30
    size = np.repeat([100, 500], n)
    drop = np.where(size == 100, 0.38, 0.20) + rng.normal(0, 0.02, 2 * n)
    pop = _population(2 * n).table
    pop["train_size"] = size
    pop["heldout_drop"] = drop
    pop["over_fitted"] = (drop >= OVERFIT_DROP).astype(float)
    pop["loss_gap"] = np.where(size == 100, 1.0, 0.2) + rng.normal(0, 0.05, 2 * n)   # the size, plus noise
    pop["generalisation_gap"] = drop + rng.normal(0, 0.002, 2 * n)                 # truly predictive
    tr = track_record(Population(pop, pd.DataFrame(columns=["store", "run_id", "problem"])), n_boot=300)
    row = tr.table.set_index("predictor")
    assert tr.within == "train_size"
    assert row.loc["loss_gap", "pooled_verdict"] == "predictive" and row.loc["loss_gap", "verdict"] == "chance"
    assert row.loc["generalisation_gap", "verdict"] == "predictive"
    groups = tr.by_group[tr.by_group["predictor"] == "loss_gap"].set_index("train_size")
    assert list(groups["n"]) == [n, n]
    ft = finding_table(tr, population="synthetic")
    assert (ft["within"] == "train_size").all()
    assert "(synthetic), compared within each training-set size, this number" in track_record_sentence(ft.iloc[0])
    # pooling on request gives the pooled numbers as the verdict
    pooled = track_record(Population(pop, pd.DataFrame(columns=["store", "run_id", "problem"])), n_boot=300,
                          within=None)
    assert pooled.within is None and pooled.by_group.empty
    assert pooled.table.set_index("predictor").loc["loss_gap", "verdict"] == "predictive"
    with pytest.raises(ValueError, match="not a column of the population"):
        track_record(Population(pop, pd.DataFrame()), within="model_size")


def _assoc(rho_ci, auc_ci):
    return Association(30, 15, 0.0, *rho_ci, 0.5, 0.5, *auc_ci, 0.5)


@pytest.mark.parametrize(("rho_ci", "auc_ci", "direction", "verdict"), [
    ((0.2, 0.8), (0.6, 0.9), 1, "predictive"),
    ((-0.1, 0.8), (0.6, 0.9), 1, "chance"),      # rho's CI includes 0
    ((0.2, 0.8), (0.45, 0.9), 1, "chance"),      # AUC's CI includes 0.5
    ((-0.8, -0.2), (0.1, 0.4), 1, "opposite"),
    ((-0.8, -0.2), (0.1, 0.4), -1, "predictive"),
    ((0.2, 0.8), (0.45, 0.9), -1, "opposite"),
    ((0.2, 0.8), (0.6, 0.9), None, "associated"),
    ((0.2, 0.8), (0.4, 0.9), None, "chance"),
])
def test_chance_verdict(rho_ci, auc_ci, direction, verdict):
    assert chance_verdict(_assoc(rho_ci, auc_ci), direction) == verdict


# ------------------------------------------------------------------------------------------------ the track record
def _population(n=24, seed=0):
    rng = np.random.default_rng(seed)
    drop = np.linspace(0.25, 0.45, n)
    ood = rng.uniform(0.0, 0.2, n)
    table = pd.DataFrame({"store": "s", "run_id": [f"r{i:02d}" for i in range(n)], "setting": "vanilla",
                          "seed": np.arange(n), "train_size": 100, "max_steps": 100,
                          "part": [split_of(f"r{i:02d}") for i in range(n)], "train_accuracy": 1.0,
                          "heldout_drop": drop, "ood_drop": ood, "over_fitted": (drop >= 0.35).astype(float)})
    table["generalisation_gap"] = drop + rng.normal(0, 0.005, n)        # predictive
    table["loss_gap"] = rng.permutation(drop)                           # no relation
    table["calibration_ece"] = -drop + rng.normal(0, 0.005, n)          # claimed +, really -
    table["stability_ratio"] = rng.uniform(0.9, 1.1, n)
    table["drift_min_cka"] = rng.uniform(0.2, 0.9, n)
    for finding in FINDING_CLAIMS:
        table[f"{finding}_flagged"] = True
    for metric in WW_METRICS:
        table[f"ww_{metric}"] = rng.normal(size=n)
    return Population(table, pd.DataFrame(columns=["store", "run_id", "problem"]))


def test_track_record_verdicts_follow_the_evidence():
    tr = track_record(_population(), n_boot=300)
    verdict = tr.table.set_index("predictor")["verdict"]
    assert verdict["generalisation_gap"] == "predictive"
    assert verdict["calibration"] == "opposite"
    assert verdict["loss_gap"] == "chance"
    assert set(tr.table["source"]) == {"lnsr_viz", "weightwatcher"} and len(tr.table) == 5 + len(WW_METRICS)
    row = tr.table.set_index("predictor").loc["generalisation_gap"]
    known = _population().table
    assert row["auc"] == pytest.approx(roc_auc_score(known["over_fitted"], known["generalisation_gap"]))
    assert row["rho"] == pytest.approx(stats.spearmanr(known["generalisation_gap"], known["heldout_drop"]).statistic)
    assert (tr.table["rho_p_holm"] >= tr.table["rho_p"] - 1e-15).all()  # Holm never lowers a p-value
    th = tr.thresholds.set_index("predictor")
    assert th.loc["generalisation_gap", "n_selection"] + th.loc["generalisation_gap", "n_check"] == 24
    assert th.loc["generalisation_gap", "diagnose_balanced_accuracy_check"] == 0.5  # flags everything
    ft = finding_table(tr, population="synthetic")
    assert list(ft["finding"]) == list(FINDING_CLAIMS) and (ft["population"] == "synthetic").all()


def test_fewer_than_20_models_are_refused_saying_how_many_are_needed():
    pop = _population(n=12)
    with pytest.raises(ValueError, match=r"needs at least 20 models with known outcomes; the population has 12.*"
                                         r"Add 8 or more runs"):
        track_record(pop)


def test_models_with_missing_outcomes_are_named():
    pop = _population(n=22)
    pop.table.loc[[3, 7], "ood_drop"] = np.nan
    with pytest.warns(UserWarning, match=r"outcomes missing for 2 model\(s\).*r03, r07"):
        tr = track_record(pop, n_boot=100)
    assert tr.missing == ["r03", "r07"] and tr.n_models == 20
    pop.table.loc[[4], "heldout_drop"] = np.nan
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"has 19 \(3 more without outcomes: r03, r04, "
                                                                    r"r07\)"):
        track_record(pop)


# ------------------------------------------------------------------------------------------------ diagnose
def _record(verdict, finding="calibration"):
    return pd.DataFrame([{"finding": finding, "outcome": "heldout_drop", "direction": 1, "n": 24,
                          "n_over_fitted": 12, "rho": -0.12, "rho_ci_low": -0.61, "rho_ci_high": 0.41, "auc": 0.5,
                          "auc_ci_low": 0.24, "auc_ci_high": 0.76, "auc_p_holm": 1.0, "verdict": verdict,
                          "overfit_drop": 0.35, "population": "a test population"}])


@pytest.fixture(scope="module")
def over_confident():
    """A tiny model made over-confident (its head scaled up): ECE far above chance, a calibration warning."""
    base, tok = tiny_model("bert")
    model = copy.deepcopy(base)
    with torch.no_grad():
        model.classifier.weight.mul_(1e3)
    texts, labels = toy_sentences(48)
    data = {"train": TextDataset(texts[:16], labels[:16], "train"),
            "held_out": TextDataset(texts[16:], labels[16:], "held_out")}
    return (model, tok), (base, tok), data


def test_a_finding_without_predictive_value_is_worded_as_descriptive(over_confident):
    model, base, data = over_confident
    raw = diagnose(model, base, data, probe_n=4, track_record=None).finding("calibration")
    assert raw.severity == "warning" and "Track record" not in raw.message
    f = diagnose(model, base, data, probe_n=4, track_record=_record("chance")).finding("calibration")
    assert f.severity == "info" and f.title.endswith("(descriptive)") and f.message.startswith("Descriptive: ")
    assert ("Track record: on 24 runs (a test population) this number separated over-fitted models (held-out "
            "accuracy drop >= 0.35) with ROC AUC 0.50 [0.24, 0.76]") in f.message
    assert "not better than chance" in f.message and "Consider temperature" not in f.message
    assert f.value == raw.value and f.evidence["track_record"]["verdict"] == "chance"


def test_an_opposite_finding_is_corrected_and_a_predictive_one_kept(over_confident):
    model, base, data = over_confident
    f = diagnose(model, base, data, probe_n=4, track_record=_record("opposite")).finding("calibration")
    assert f.severity == "info" and "corrected" in f.title and "opposite way" in f.message
    diag = diagnose(model, base, data, probe_n=4, track_record=_record("predictive"))
    kept = diag.finding("calibration")
    assert kept.severity == "warning" and "Track record: on 24 runs" in kept.message
    from lnsr_viz.viz.reports import diagnosis_report

    assert "Track record of each finding" in diagnosis_report(diag).to_html()


def test_the_packaged_track_record_covers_every_finding():
    table = load_track_record()
    assert set(table["finding"]) == set(FINDING_CLAIMS)
    assert (table["n"] >= 20).all() and set(table["verdict"]) <= {"predictive", "chance", "opposite"}
    with pytest.raises(FileNotFoundError, match="no track-record table at"):
        load_track_record("/nonexistent/track.csv")


# ------------------------------------------------------------------------------------------------ WeightWatcher
def test_weightwatcher_summary_matches_weightwatcher_and_bad_models_are_reported():
    import weightwatcher as ww

    net, _ = tiny_model("bert", hidden=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        watcher = ww.WeightWatcher(model=net)
        details = watcher.analyze()
        expected = watcher.get_summary(details)
    ours = weightwatcher_summary(details)
    assert len(details) > 0 and math.isfinite(ours["alpha"])
    for metric in WW_METRICS:
        assert ours[metric] == pytest.approx(float(expected[metric]), rel=1e-12)
    table, problems = weightwatcher_summaries({"tiny": net, "too_small": torch.nn.Sequential(torch.nn.Linear(3, 2)),
                                               "not_a_model": "nothing"})
    assert list(table["model"]) == ["tiny"]  # the others are reported, the rest goes on
    assert table.iloc[0]["alpha"] == pytest.approx(ours["alpha"], rel=1e-9)
    assert [p.split(":")[0] for p in problems] == ["too_small", "not_a_model"]
    assert "no layer with a finite alpha" in problems[0] and "could not analyse" in problems[1]


# ------------------------------------------------------------------------------------------------ from a store
def _save_run(store, i, *, ood=True, ww=True):
    config = {"method": "vanilla", "seed": i, "data": {"in_domain": "movie", "train_size": 100,
                                                       "evaluation": ["movie", "amazon"] if ood else ["movie"]},
              "train": {"max_steps": 100}}
    metrics = pd.DataFrame({"domain": ["movie", "amazon"] if ood else ["movie"], "metric": "accuracy",
                            "value": [0.6 + 0.01 * i, 0.5] if ood else [0.6 + 0.01 * i]})
    if not ood:  # an evaluation set named in the config without its metric
        config["data"]["evaluation"] = ["movie", "amazon"]
    diag = pd.DataFrame({"finding": ["generalisation_gap", "loss_gap", "metrics"],
                         "severity": ["warning", "ok", ""], "quantity": ["value", "value", "train.accuracy"],
                         "value": [0.4 - 0.01 * i, 0.5, 1.0]})
    tables = {"diagnosis": diag}
    if ww:
        tables["weightwatcher"] = pd.DataFrame({"layer_id": [1, 2], "alpha": [3.0, 5.0 + i],
                                                "log_norm": [1.0, np.nan]})
    return store.save(config, metrics=metrics, tables=tables)


def test_population_is_read_from_a_run_store(tmp_path):
    store = RunStore(tmp_path / "s")
    for i in range(3):
        _save_run(store, i)
    _save_run(store, 3, ood=False)
    _save_run(store, 4, ww=False)
    store.save({"method": "pretrained"}, metrics=pd.DataFrame({"domain": ["movie"], "metric": ["n"], "value": [1]}))
    store.save({"method": "vanilla", "seed": 9}, metrics=pd.DataFrame({"domain": ["movie"], "metric": ["accuracy"],
                                                                       "value": [0.7]}))
    pop = population_table(tmp_path / "s")
    t = pop.table.set_index("seed")
    assert len(t) == 5  # the pre-trained probe and the run without a diagnosis are left out
    assert t.loc[0, "heldout_drop"] == pytest.approx(0.4) and t.loc[0, "ood_drop"] == pytest.approx(0.1)
    assert t.loc[2, "over_fitted"] == 1.0 and t.loc[1, "generalisation_gap_flagged"]
    assert t.loc[0, "ww_alpha"] == pytest.approx(4.0) and t.loc[0, "ww_log_norm"] == pytest.approx(1.0)
    assert math.isnan(t.loc[3, "ood_drop"]) and math.isnan(t.loc[4, "ww_alpha"])
    assert set(t["part"]) <= {"selection", "check"}
    problems = " | ".join(pop.problems["problem"])
    assert "outcome missing: out-of-domain accuracy (amazon)" in problems
    assert "WeightWatcher could not analyse it" in problems and "no stored diagnosis" in problems
    with pytest.raises(ValueError, match="no run store at"):
        population_table(tmp_path / "missing")


def test_cli_track_record_refuses_a_small_population_in_one_line(tmp_path, capsys):
    from lnsr_viz.cli import main

    store = RunStore(tmp_path / "s")
    for i in range(3):
        _save_run(store, i)
    out = tmp_path / "docs" / "diagnose.md"
    assert main(["track-record", str(tmp_path / "s"), "--out", str(out), "--tables", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: a track record needs at least 20 models") and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "t").exists()

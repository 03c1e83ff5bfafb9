"""The study write-up on a hand-built run store with known answers: selection on validation only, the claims'
effect sizes, intervals and verdicts, the collapse flag in tables and figures, the CLI, and the committed write-up
(docs/study.md and its SVG) re-rendered byte for byte from results/study."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lnsr_viz import cli
from lnsr_viz.experiments.store import RunStore
from lnsr_viz.experiments.study import CLAIMS, study_claims, study_runs
from lnsr_viz.viz.reports import write_study
from lnsr_viz.viz.study_figures import plot_sensitivity_vs_ood

SEEDS = [1, 2, 3, 4]
NOISE = {1: -0.02, 2: 0.01, 3: 0.0, 4: 0.012}
JITTER = {1: 0.001, 2: -0.001, 3: 0.002, 4: 0.0}
DOMAINS = ["movie", "amazon", "nyt"]


def _config(method, label, seed, size):
    cfg = {"kind": "classification", "model": "tiny", "method": method, "seed": seed,
           "data": {"in_domain": "movie", "evaluation": sorted(DOMAINS), "train_size": size, "val_size": 50,
                    "eval_size": 100, "split_seed": 0, "neutral_band": 0.0, "fingerprint": "f" * 16},
           "probe": {"n": 8}, "method_params": {"lam": 1.0} if method == "lnsr" else {}, "train": {"epochs": 2}}
    if label != method:
        cfg["label"] = label
    return cfg


def _save(store, method, label, seed, size, *, val, acc, ood, sens, collapsed=False):
    metrics = []
    for d in DOMAINS:
        a = acc if d == "movie" else ood
        metrics += [(d, "accuracy", a), (d, "roc_auc", a + 0.1), (d, "macro_f1", a - 0.01), (d, "ece", 0.05),
                    (d, "positive_rate", 0.5 if d == "movie" else 0.7), (d, "n", 100.0)]
    history = pd.DataFrame({"epoch": [1, 2], "val_accuracy": [val - 0.05, val], "train_accuracy": [0.6, 0.8],
                            "repr_effective_rank": [30.0, 2.0 if collapsed else 28.0],
                            "repr_mean_cosine": [0.2, 0.99 if collapsed else 0.3],
                            "reg_to_task_ratio": [0.1, 0.2], "collapsed": [False, collapsed]})
    profile = pd.DataFrame({"injection_layer": [0, 0, 0, 1], "layer": [0, 1, 2, 2],
                            "change_rel": [0.05, 0.04, sens, 0.9]})
    store.save(_config(method, label, seed, size), metrics=pd.DataFrame(metrics, columns=["domain", "metric", "value"]),
               history=history, profile=profile, extra={"collapsed": collapsed, "seconds": 10.0})


@pytest.fixture()
def store(tmp_path):
    st = RunStore(tmp_path / "study")
    for size in (100, 500):
        for s in SEEDS:
            base_acc, base_ood, base_sens = 0.70 + NOISE[s], 0.60 + NOISE[s], 0.030 + 0.001 * s
            _save(st, "vanilla", "vanilla", s, size, val=0.70, acc=base_acc, ood=base_ood, sens=base_sens)
            # chosen on validation: better in-domain, worse out of domain, less sensitive
            _save(st, "lnsr", "lnsr[lam=1]", s, size, val=0.75, acc=base_acc + 0.05 + JITTER[s],
                  ood=base_ood - 0.03 + JITTER[s], sens=base_sens - 0.005 + JITTER[s] / 100)
            # never chosen (lower validation accuracy) although its test numbers are the best: no peeking
            _save(st, "lnsr", "lnsr[lam=100]", s, size, val=0.60, acc=0.95, ood=0.95, sens=0.001,
                  collapsed=(s == 1))
    return st


def test_study_runs_has_one_row_per_run_with_the_derived_columns(store):
    runs = study_runs(store)
    assert len(runs) == 2 * 3 * len(SEEDS)
    row = runs[(runs.setting == "lnsr[lam=1]") & (runs.seed == 2) & (runs.train_size == 500)].iloc[0]
    assert row["accuracy"] == pytest.approx(0.70 + 0.01 + 0.05 - 0.001)
    assert row["ood_accuracy"] == pytest.approx(0.60 + 0.01 - 0.03 - 0.001)  # mean over amazon and nyt
    assert row["top_sensitivity"] == pytest.approx(0.032 - 0.005 - 0.001 / 100)  # layer 0 -> top layer only
    assert row["val_accuracy"] == pytest.approx(0.75) and row["reg_to_task_ratio"] == pytest.approx(0.2)
    assert runs.loc[runs.collapsed, "setting"].unique().tolist() == ["lnsr[lam=100]"]
    assert runs["collapsed"].sum() == 2  # seed 1 at both sizes


def test_claims_choose_on_validation_and_match_hand_computed_statistics(store):
    res = study_claims(store)
    lnsr = res.chosen[res.chosen.method == "lnsr"]
    assert set(lnsr["chosen"]) == {"lnsr[lam=1]"}
    claims = res.claims.set_index(["claim", "train_size"])
    assert set(claims.index.get_level_values(0)) == set(CLAIMS)
    diffs = np.array([0.05 + JITTER[s] for s in SEEDS])
    b = claims.loc[("b", 100)]
    t = stats.t.ppf(0.975, len(SEEDS) - 1) * diffs.std(ddof=1) / np.sqrt(len(SEEDS))
    assert b["effect"] == pytest.approx(diffs.mean())
    assert (b["ci_low"], b["ci_high"]) == pytest.approx((diffs.mean() - t, diffs.mean() + t))
    assert b["verdict"] == "supported"
    assert claims.loc[("a", 500), "verdict"] == "supported"  # lower sensitivity
    assert claims.loc[("d", 500), "verdict"] == "contradicted"  # worse out of domain
    c = claims.loc[("c", 100)]
    base = np.array([0.70 + NOISE[s] for s in SEEDS])
    cand = base + diffs
    assert c["effect"] == pytest.approx(cand.std(ddof=1) / base.std(ddof=1))
    assert c["p_value"] == pytest.approx(stats.levene(base, cand, center="median").pvalue)
    assert c["verdict"] == "not shown (within noise)"
    settings = res.settings.set_index(["train_size", "setting"])
    assert settings.loc[(100, "lnsr[lam=100]"), "collapsed_runs"] == 1
    assert settings.loc[(100, "lnsr[lam=1]"), "chosen"] and not settings.loc[(100, "lnsr[lam=100]"), "chosen"]
    balance = res.balance.set_index("domain")
    assert balance.loc["amazon", "positive_rate"] == pytest.approx(0.7) and balance.loc["movie", "role"] == \
        "in-domain"


def test_within_noise_when_the_interval_covers_zero(store, tmp_path):
    st = RunStore(tmp_path / "flat")
    for s in SEEDS:
        _save(st, "vanilla", "vanilla", s, 100, val=0.7, acc=0.7 + NOISE[s], ood=0.6, sens=0.03)
        _save(st, "lnsr", "lnsr[lam=1]", s, 100, val=0.7, acc=0.7 + NOISE[s] + JITTER[s], ood=0.6 + JITTER[s],
              sens=0.03)
    claims = study_claims(st).claims.set_index("claim")
    assert claims.loc["b", "verdict"] == "not shown (within noise)"
    assert claims.loc["b", "ci_low"] < 0 < claims.loc["b", "ci_high"]


def test_the_figure_marks_collapsed_runs_and_reports_the_correlation(store):
    runs = study_runs(store)
    fig = plot_sensitivity_vs_ood(runs)
    names = [t.name for t in fig.data]
    assert "collapsed run" in names
    crosses = next(t for t in fig.data if t.name == "collapsed run")
    assert len(crosses.x) == 2
    rho = stats.spearmanr(runs["top_sensitivity"], runs["ood_accuracy"]).statistic
    assert f"rho = {rho:.2f}" in fig.layout.title.text
    with pytest.raises(ValueError, match="top_sensitivity"):
        plot_sensitivity_vs_ood(runs.drop(columns="top_sensitivity"))


def test_the_figure_labels_follow_the_chosen_columns(store):
    runs = study_runs(store)
    fig = plot_sensitivity_vs_ood(runs, x="val_accuracy", y="roc_auc")
    title = fig.layout.title.text
    assert title.startswith("Validation accuracy vs in-domain ROC AUC")
    assert "sensitivity" not in title and "out-of-domain" not in title
    assert fig.layout.xaxis.title.text == "validation accuracy"
    assert fig.layout.yaxis.title.text == "in-domain ROC AUC"
    rho = stats.spearmanr(runs["val_accuracy"], runs["roc_auc"]).statistic
    assert f"rho = {rho:.2f}" in title
    assert "validation accuracy %{x" in fig.data[0].hovertemplate
    # a column without a readable name: the name with spaces
    fig = plot_sensitivity_vs_ood(runs, x="top_sensitivity", y="seconds")
    assert fig.layout.yaxis.title.text == "seconds"
    assert fig.layout.xaxis.title.text.startswith("top-layer noise sensitivity")
    runs = runs.assign(my_new_score=runs["accuracy"])
    assert plot_sensitivity_vs_ood(runs, y="my_new_score").layout.yaxis.title.text == "my new score"


def test_write_study_and_the_cli(store, tmp_path):
    out = tmp_path / "docs" / "study.md"
    out.parent.mkdir()
    path = write_study(store, out, config={"model": "tiny", "train": {"epochs": 2}}, config_path="study.yaml")
    text = path.read_text()
    for key, claim in CLAIMS.items():
        assert f"### ({key}) {claim['title']}" in text
    assert "**supported**" in text and "**contradicted**" in text
    svg = (tmp_path / "docs" / "study-sensitivity-vs-ood.svg").read_text()
    assert svg.lstrip().startswith("<?xml")
    write_study(store, out, config={"model": "tiny", "train": {"epochs": 2}}, config_path="study.yaml")
    assert (tmp_path / "docs" / "study-sensitivity-vs-ood.svg").read_text() == svg  # rerunning changes nothing
    assert set(pd.read_csv(store.root / "tables" / "claims.csv")["claim"]) == set(CLAIMS)
    config = tmp_path / "study.yaml"
    config.write_text(json.dumps({"model": "tiny", "data": "movie", "train_sizes": [100, 500], "seeds": SEEDS,
                                  "methods": {"vanilla": {}, "lnsr": {"lam": [1, 100]}},
                                  "results": str(store.root)}))
    assert cli.main(["study", str(config), "--out", str(tmp_path / "cli.md")]) == 0
    assert (tmp_path / "cli.md").read_text().count("**supported**") >= 2


def test_the_cli_says_when_there_is_no_store(tmp_path, capsys):
    config = tmp_path / "s.yaml"
    config.write_text(json.dumps({"model": "tiny", "data": "movie", "train_sizes": [100], "seeds": [1, 2],
                                  "methods": {"vanilla": {}}, "results": str(tmp_path / "nothing")}))
    assert cli.main(["study", str(config)]) == 2
    assert "run `python -m lnsr_viz sweep" in capsys.readouterr().err


def test_the_committed_write_up_rerenders_byte_for_byte(tmp_path, monkeypatch):
    """``python -m lnsr_viz study configs/study.yaml`` on the committed store reproduces docs/study.md, its SVG and the
    store's tables exactly (the write-up is a template over stored numbers: nothing may drift)."""
    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "results" / "study", tmp_path / "results" / "study")
    shutil.copytree(root / "configs", tmp_path / "configs")
    (tmp_path / "docs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["study", "configs/study.yaml"]) == 0
    for name in ("study.md", "study-sensitivity-vs-ood.svg"):
        assert (tmp_path / "docs" / name).read_bytes() == (root / "docs" / name).read_bytes(), name
    for table in sorted((root / "results" / "study" / "tables").glob("*.csv")):
        assert (tmp_path / "results" / "study" / "tables" / table.name).read_bytes() == table.read_bytes(), table.name

"""Tests for lnsr_viz.experiments.method_table.

A synthetic run table (2 training-set sizes; vanilla, a method clearly better than vanilla in two settings, and a
method identical to vanilla; 5 seeds) is checked against numpy / scipy computed by hand: mean, sd (ddof=1), t CI,
paired difference and its t CI, the paired t p (``scipy.stats.ttest_rel``) and the exact sign-flip p (0.0625 with
5 seeds: the permutation test can never reject at 0.05); the Holm / BH correction over a family (one train_size,
all non-baseline rows x 4 metrics); verdicts; cost ratios; chosen= filtering; seeds without a baseline run;
zero-variance differences (no warning); refusals of bad input.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from lnsr_viz.analysis.stats import bh_adjust, holm_adjust
from lnsr_viz.experiments.method_table import METRICS, TESTS, method_table

SIZES = (100, 400)
SEEDS = (0, 1, 2, 3, 4)
GOOD = ("lnsr", "lam=1")  # clearly better: vanilla + 0.05 + small noise
GOOD2 = ("lnsr", "lam=10")  # a second setting of the same method, also better
SAME = ("copy", "x")  # identical to vanilla, seed by seed
BASE = ("vanilla", "default")


def _runs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for size in SIZES:
        for seed in SEEDS:
            base = {m: 0.7 + 0.05 * rng.standard_normal() for m in METRICS}
            for (method, setting), shift in ((BASE, None), (GOOD, 0.05), (GOOD2, 0.04), (SAME, None)):
                vals = dict(base)
                if shift is not None:
                    vals = {m: v + shift + 0.002 * rng.standard_normal() for m, v in base.items()}
                rows.append({"train_size": size, "method": method, "setting": setting, "seed": seed, **vals})
    return pd.DataFrame(rows)


def _vals(runs: pd.DataFrame, size: int, key: tuple[str, str], metric: str) -> np.ndarray:
    sel = runs[(runs["train_size"] == size) & (runs["method"] == key[0]) & (runs["setting"] == key[1])]
    return sel.sort_values("seed")[metric].to_numpy(dtype=np.float64)


def _row(table: pd.DataFrame, size: int, key: tuple[str, str]) -> pd.Series:
    sel = table[(table["train_size"] == size) & (table["method"] == key[0]) & (table["setting"] == key[1])]
    assert len(sel) == 1
    return sel.iloc[0]


def _t_ci(x: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    return st.t.interval(confidence, df=x.size - 1, loc=np.mean(x), scale=np.std(x, ddof=1) / math.sqrt(x.size))


# ------------------------------------------------------------------------------------------- the numbers
def test_columns_and_rows():
    table = method_table(_runs())
    per_metric = ("mean", "sd", "ci_low", "ci_high", "diff", "diff_ci_low", "diff_ci_high", "p_t", "p_perm", "p",
                  "p_adj", "verdict")
    assert list(table.columns) == [
        "train_size", "method", "setting", "n_seeds", "n_paired",
        *(f"{m}_{s}" for m in METRICS for s in per_metric),
        "cost_ratio", "verdict", "family", "n_comparisons", "correction", "test", "note",
    ]  # fmt: skip
    assert len(table) == 2 * 4  # every setting of every method, per size
    assert set(table["test"]) == {"t"} and set(table["correction"]) == {"holm"}
    assert set(table["n_seeds"]) == {5} and set(table["n_paired"]) == {5}
    assert TESTS == ("t", "permutation")


def test_mean_sd_ci_diff_and_p_by_hand():
    runs = _runs()
    table = method_table(runs)
    for size in SIZES:
        base_row = _row(table, size, BASE)
        for key in (GOOD, GOOD2, SAME, BASE):
            row = _row(table, size, key)
            for m in METRICS:
                x = _vals(runs, size, key, m)
                assert row[f"{m}_mean"] == pytest.approx(np.mean(x), abs=1e-12)
                assert row[f"{m}_sd"] == pytest.approx(np.std(x, ddof=1), abs=1e-12)
                low, high = _t_ci(x)
                assert row[f"{m}_ci_low"] == pytest.approx(low, abs=1e-12)
                assert row[f"{m}_ci_high"] == pytest.approx(high, abs=1e-12)
                if key == BASE:
                    continue
                b = _vals(runs, size, BASE, m)
                d = x - b
                assert row[f"{m}_diff"] == pytest.approx(np.mean(d), abs=1e-12)
                if key == SAME:  # all differences 0: t p is 1 (scipy would give NaN and warn)
                    assert row[f"{m}_diff"] == 0 and row[f"{m}_p_t"] == 1.0 and row[f"{m}_p_perm"] == 1.0
                    continue
                low, high = _t_ci(d)
                assert row[f"{m}_diff_ci_low"] == pytest.approx(low, abs=1e-12)
                assert row[f"{m}_diff_ci_high"] == pytest.approx(high, abs=1e-12)
                assert row[f"{m}_p_t"] == pytest.approx(st.ttest_rel(x, b).pvalue, rel=1e-10, abs=0)
                assert row[f"{m}_p_t"] < 1e-4
                # every difference positive: the exact sign-flip p is its floor, 2 / 2**5
                assert row[f"{m}_p_perm"] == pytest.approx(0.0625, abs=1e-15)
                assert row[f"{m}_p"] == row[f"{m}_p_t"]  # the default test is the t-test
        # the baseline row has no difference from itself
        for m in METRICS:
            assert math.isnan(base_row[f"{m}_diff"]) and math.isnan(base_row[f"{m}_p"])
            assert math.isnan(base_row[f"{m}_p_adj"])


@pytest.mark.parametrize(("correction", "adjust"), [("holm", holm_adjust), ("bh", bh_adjust), ("none", None)])
def test_correction_family_is_one_size(correction, adjust):
    table = method_table(_runs(), correction=correction)
    p_cols = [f"{m}_p" for m in METRICS]
    adj_cols = [f"{m}_p_adj" for m in METRICS]
    for size in SIZES:
        fam = table[(table["train_size"] == size) & (table["method"] != "vanilla")]
        assert len(fam) == 3
        raw = fam[p_cols].to_numpy(dtype=np.float64)
        expected = raw if adjust is None else adjust(raw.ravel()).reshape(raw.shape)
        np.testing.assert_allclose(fam[adj_cols].to_numpy(dtype=np.float64), expected, rtol=1e-12)
        here = table[table["train_size"] == size]
        assert set(here["n_comparisons"]) == {12}  # 3 non-baseline rows x 4 metrics
        assert all(f"train_size={size}" in f and "12 comparisons" in f and correction in f and "t test" in f
                   for f in here["family"])
    # a family is not the whole table: adjusting all 24 p's together would give other numbers (Holm: larger)
    if correction == "holm":
        fam = table[(table["train_size"] == 100) & (table["method"] != "vanilla")]
        everything = table[table["method"] != "vanilla"][p_cols].to_numpy(dtype=np.float64)
        whole = holm_adjust(everything.ravel()).reshape(everything.shape)[: len(fam)]
        good = fam["method"] == "lnsr"
        assert np.all(whole[good.to_numpy()] > fam.loc[good, adj_cols].to_numpy(dtype=np.float64))


def test_verdicts():
    table = method_table(_runs())
    for size in SIZES:
        for key in (GOOD, GOOD2):
            row = _row(table, size, key)
            assert row["verdict"] == "better: " + ", ".join(METRICS)
            assert all(row[f"{m}_verdict"] == "better" for m in METRICS)
            assert all(row[f"{m}_p_adj"] < 0.05 for m in METRICS)
        same = _row(table, size, SAME)
        assert same["verdict"] == "within noise"
        assert all(same[f"{m}_verdict"] == "within noise" for m in METRICS)
        assert all(same[f"{m}_p_adj"] == 1.0 for m in METRICS)
        base = _row(table, size, BASE)
        assert base["verdict"] == "baseline" and base["cost_ratio"] == 1.0
        assert all(base[f"{m}_verdict"] == "baseline" for m in METRICS)
        assert "baseline" in base["note"]


def test_permutation_test_cannot_reject_with_five_seeds():
    table = method_table(_runs(), test="permutation")
    assert set(table["test"]) == {"permutation"}
    assert all("permutation test" in f for f in table["family"])
    for size in SIZES:
        row = _row(table, size, GOOD)
        for m in METRICS:
            assert row[f"{m}_p"] == row[f"{m}_p_perm"] == pytest.approx(0.0625)
            assert row[f"{m}_p_t"] < 1e-4  # still reported
            assert row[f"{m}_p_adj"] >= 0.0625 and row[f"{m}_verdict"] == "within noise"
        assert row["verdict"] == "within noise"
    # the t table keeps the same raw p's: only which one is corrected differs
    t_table = method_table(_runs(), test="t")
    for col in [f"{m}_{s}" for m in METRICS for s in ("p_t", "p_perm", "diff", "mean")]:
        np.testing.assert_array_equal(table[col].to_numpy(), t_table[col].to_numpy())


def test_zero_variance_differences_without_warnings():
    # dyadic values: vanilla + 0.125 is exact, so every difference is exactly 0.125 (zero variance, not zero)
    rows = []
    for seed, v in zip(SEEDS, (0.5, 0.625, 0.75, 0.375, 0.25)):
        vals = dict.fromkeys(METRICS, v)
        rows.append({"train_size": 100, "method": "vanilla", "setting": "d", "seed": seed, **vals})
        rows.append({"train_size": 100, "method": "shift", "setting": "s", "seed": seed,
                     **{m: x + 0.125 for m, x in vals.items()}})
        rows.append({"train_size": 100, "method": "same", "setting": "s", "seed": seed, **vals})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = method_table(pd.DataFrame(rows))
    shift = _row(table, 100, ("shift", "s"))
    same = _row(table, 100, ("same", "s"))
    for m in METRICS:
        assert math.isnan(shift[f"{m}_p_t"]) and math.isnan(shift[f"{m}_p"]) and math.isnan(shift[f"{m}_p_adj"])
        assert shift[f"{m}_diff"] == 0.125 and shift[f"{m}_p_perm"] == pytest.approx(0.0625)
        assert shift[f"{m}_verdict"] == "not testable"
        assert same[f"{m}_p_t"] == 1.0 and same[f"{m}_verdict"] == "within noise"
    assert shift["verdict"] == "not testable"
    assert "zero variance" in shift["note"]
    assert set(table["n_comparisons"]) == {4}  # the NaN t p's are not counted in the family


# ----------------------------------------------------------------------------------- cost, chosen, seeds
def test_cost_ratios():
    table = method_table(_runs(), cost={"lnsr": 1.3, "lam=10": 2.0})
    for size in SIZES:
        assert _row(table, size, GOOD)["cost_ratio"] == 1.3  # the method's entry
        assert _row(table, size, GOOD2)["cost_ratio"] == 2.0  # the setting's entry wins
        assert math.isnan(_row(table, size, SAME)["cost_ratio"])  # neither given
        assert _row(table, size, BASE)["cost_ratio"] == 1.0
    assert table["cost_ratio"].isna().sum() == 2
    assert method_table(_runs())["cost_ratio"].isna().sum() == 6  # no cost: NaN but for the baseline


def test_chosen_keeps_only_the_chosen_settings():
    chosen = pd.DataFrame([{"train_size": s, "method": m, "chosen": c} for s in SIZES
                           for m, c in (("lnsr", "lam=10"), ("copy", "x"), ("vanilla", "default"))])
    table = method_table(_runs(), chosen=chosen)
    assert len(table) == 2 * 3
    assert set(table.loc[table["method"] == "lnsr", "setting"]) == {"lam=10"}
    assert set(table["n_comparisons"]) == {8}  # the family shrinks with the rows: 2 x 4
    full = method_table(_runs())
    for size in SIZES:
        assert _row(table, size, GOOD2)["accuracy_p_t"] == _row(full, size, GOOD2)["accuracy_p_t"]
    # the baseline may be left out of chosen: its only setting is used
    no_base = method_table(_runs(), chosen=chosen[chosen["method"] != "vanilla"])
    assert len(no_base) == 6 and set(no_base.loc[no_base["method"] == "vanilla", "verdict"]) == {"baseline"}
    with pytest.raises(ValueError, match="no runs in the table"):
        method_table(_runs(), chosen=chosen.assign(chosen="lam=99"))
    with pytest.raises(ValueError, match="columns"):
        method_table(_runs(), chosen=chosen.drop(columns="chosen"))


def test_seeds_without_a_baseline_run_are_noted():
    runs = _runs()
    runs = runs[~((runs["train_size"] == 400) & (runs["method"] == "vanilla") & (runs["seed"] == 4))]
    table = method_table(runs)
    row = _row(table, 400, GOOD)
    assert row["n_seeds"] == 5 and row["n_paired"] == 4
    assert "paired on 4 of 5 seeds (seeds [4] lack a baseline run)" in row["note"]
    x = _vals(runs, 400, GOOD, "accuracy")[:4]
    b = _vals(runs, 400, BASE, "accuracy")
    assert row["accuracy_p_t"] == pytest.approx(st.ttest_rel(x, b).pvalue, rel=1e-10)
    assert row["accuracy_p_perm"] == pytest.approx(2 / 2**4)
    assert row["accuracy_mean"] == pytest.approx(np.mean(_vals(runs, 400, GOOD, "accuracy")))  # all 5 seeds
    assert _row(table, 100, GOOD)["note"] == ""


# ------------------------------------------------------------------------------------------------ refusals
def test_refusals():
    runs = _runs()
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['roc_auc'\]"):
        method_table(runs.drop(columns="roc_auc"))
    with pytest.raises(ValueError, match="DataFrame"):
        method_table(runs.to_dict("records"))
    with pytest.raises(ValueError, match="empty"):
        method_table(runs.iloc[:0])
    with pytest.raises(ValueError, match=r"baseline 'nope' has no runs.*'copy', 'lnsr', 'vanilla'"):
        method_table(runs, baseline="nope")
    with pytest.raises(ValueError, match="more than one run"):
        method_table(pd.concat([runs, runs.iloc[[3]]], ignore_index=True))
    with pytest.raises(ValueError, match=r"must be numeric"):
        method_table(runs.assign(accuracy="high"))
    with pytest.raises(ValueError, match=r"correction must be one of \['holm', 'bh', 'none'\]"):
        method_table(runs, correction="bonferroni")
    for bad_test in ("wilcoxon", "T", None):
        with pytest.raises(ValueError, match=r"test must be one of \['t', 'permutation'\]"):
            method_table(runs, test=bad_test)
    for bad_alpha in (0, 1, 1.5, -0.1, "0.05", None):
        with pytest.raises(ValueError, match="alpha must be a number strictly between 0 and 1"):
            method_table(runs, alpha=bad_alpha)
    with pytest.raises(ValueError, match="confidence must be"):
        method_table(runs, confidence=95)
    for bad_cost in ({"lnsr": -1.0}, {"lnsr": 0}, {"lnsr": math.nan}, {"lnsr": math.inf}, {"lnsr": "fast"}):
        with pytest.raises(ValueError, match=r"cost\['lnsr'\] must be a positive finite step-time ratio"):
            method_table(runs, cost=bad_cost)
    with pytest.raises(ValueError, match="cost must be a mapping"):
        method_table(runs, cost=[("lnsr", 1.3)])

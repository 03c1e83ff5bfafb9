"""Tests for lnsr_viz.analysis.stats.

Covers: summarize (mean, ddof=1 sd, Student-t interval checked against scipy.stats.t by hand, n=1 -> NaN, NaN
values dropped); the exact sign test on known cases; the sign-flip permutation test by exact enumeration worked by
hand and by Monte-Carlo; paired_comparison pairing on common seeds only, its columns and errors; verdict wording
(within noise, higher/better, the lower-is-better flip, too few pairs for p < 0.05, not possible with < 2 pairs);
bootstrap_ci reproducibility and coverage of a correlation.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from lnsr_viz.analysis.stats import (
    LOWER_IS_BETTER,
    bh_adjust,
    bootstrap_ci,
    describe_comparison,
    holm_adjust,
    paired_comparison,
    paired_permutation_test,
    sign_test,
    summarize,
)


def _tidy(values: dict[str, list[float]], *, domain="movie", metric="accuracy", seeds=None) -> pd.DataFrame:
    rows = []
    for method, vals in values.items():
        for seed, v in zip(seeds or range(len(vals)), vals):
            rows.append({"method": method, "seed": seed, "domain": domain, "metric": metric, "value": v})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- summarize
def test_summarize_three_values_by_hand():
    df = _tidy({"lnsr": [0.80, 0.84, 0.86]})
    out = summarize(df)
    assert list(out.columns) == ["method", "domain", "metric", "n_seeds", "mean", "sd", "ci_low", "ci_high"]
    row = out.iloc[0]
    # mean 0.8333..., deviations -0.0333, 0.0067, 0.0267 -> sd = sqrt((0.001111+0.0000444+0.000711)/2) = 0.030551
    mean = 2.5 / 3
    sd = math.sqrt(((0.80 - mean) ** 2 + (0.84 - mean) ** 2 + (0.86 - mean) ** 2) / 2)
    half = st.t.ppf(0.975, df=2) * sd / math.sqrt(3)  # t_{0.975, 2} = 4.3027
    assert st.t.ppf(0.975, df=2) == pytest.approx(4.302652729911275)
    assert row["n_seeds"] == 3
    assert row["mean"] == pytest.approx(mean)
    assert row["sd"] == pytest.approx(sd) and sd == pytest.approx(0.0305505, rel=1e-5)
    assert row["ci_low"] == pytest.approx(mean - half) and row["ci_high"] == pytest.approx(mean + half)
    assert row["ci_low"] == pytest.approx(0.757442, rel=1e-5)


def test_summarize_confidence_changes_width_and_groups_sort():
    df = pd.concat([_tidy({"vanilla": [1.0, 2.0, 4.0]}), _tidy({"lnsr": [1.0, 2.0, 4.0]})])
    wide, narrow = summarize(df, confidence=0.99), summarize(df, confidence=0.5)
    assert (wide["ci_high"] - wide["ci_low"] > narrow["ci_high"] - narrow["ci_low"]).all()
    assert wide["method"].tolist() == ["lnsr", "vanilla"]


def test_summarize_single_seed_and_nan_values():
    df = _tidy({"lnsr": [0.7], "vanilla": [0.6, float("nan"), 0.8]})
    out = summarize(df).set_index("method")
    assert out.loc["lnsr", "n_seeds"] == 1 and out.loc["lnsr", "mean"] == 0.7
    assert math.isnan(out.loc["lnsr", "sd"]) and math.isnan(out.loc["lnsr", "ci_low"])
    assert out.loc["vanilla", "n_seeds"] == 2  # the NaN is not a seed's result
    assert out.loc["vanilla", "mean"] == pytest.approx(0.7)


def test_summarize_custom_by_and_errors():
    df = _tidy({"lnsr": [1.0, 3.0]})
    out = summarize(df, by=("method",))
    assert list(out.columns[:2]) == ["method", "n_seeds"]
    with pytest.raises(ValueError, match=r"column\(s\) \['domain'\] not found.*available columns"):
        summarize(df.drop(columns="domain"))
    with pytest.raises(ValueError, match="'confidence' parameter of summarize"):
        summarize(df, confidence=95)


# -------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    ("diffs", "expected"),
    [
        ([0.1, 0.2, 0.3, 0.4, 0.5], 0.0625),  # 5 of 5 positive: 2 * 0.5**5
        ([-1, -2, -3], 0.25),  # 3 of 3 negative: 2 * 0.5**3
        ([1, 1, 1, 1, -1], 0.375),  # 4 of 5: 2 * (1 + 5) / 32
        ([1, 0, 0, 2, 3], 0.25),  # zeros dropped: 3 of 3
        ([0, 0], 1.0),  # nothing left
        ([1, -1], 1.0),
    ],
)
def test_sign_test_known_cases(diffs, expected):
    assert sign_test(diffs) == pytest.approx(expected)


def test_permutation_exact_enumeration_by_hand():
    # d = (1, 2, 3): the 8 signed sums are +-6, +-4, +-2, 0, 0; |sum| >= 6 twice -> p = 2/8
    assert paired_permutation_test([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    # d = (1, -2, 3, 4), observed |sum| = 6. Flipping the subset S of {1,2,3,4} gives |10 - 2 sum(S)|, which is
    # >= 6 iff sum(S) <= 2 or >= 8: S in {}, {1}, {2}, {1,3,4}, {2,3,4}, {1,2,3,4} -> 6 of 16
    assert paired_permutation_test([1.0, -2.0, 3.0, 4.0]) == pytest.approx(6 / 16)
    # float noise must not turn a tie into a miss: 0.1 + 0.2 vs 0.3
    assert paired_permutation_test([0.1, 0.2, -0.3]) == pytest.approx(1.0)
    assert paired_permutation_test([0.0, 0.0, 0.0]) == 1.0


def test_permutation_monte_carlo_is_seeded_and_close_to_exact():
    rng = np.random.RandomState(0)
    d = rng.normal(0.3, 1.0, size=14)
    exact = paired_permutation_test(d, n_permutations=2**14)
    mc1 = paired_permutation_test(d, n_permutations=4000, seed=1)
    mc2 = paired_permutation_test(d, n_permutations=4000, seed=1)
    assert mc1 == mc2
    assert mc1 == pytest.approx(exact, abs=0.03)
    # Monte-Carlo p is never 0: (1 + count) / (1 + n)
    assert paired_permutation_test(np.full(20, 1.0), n_permutations=100) == pytest.approx(1 / 101)


# ---------------------------------------------------------------------------------------- paired comparison
def test_paired_comparison_pairs_on_common_seeds_only():
    df = pd.concat(
        [
            _tidy({"lnsr": [0.82, 0.85, 0.84, 0.90]}, seeds=[1, 2, 3, 4]),
            _tidy({"vanilla": [0.80, 0.81, 0.80, 0.10]}, seeds=[1, 2, 3, 99]),
        ]
    )
    out = paired_comparison(df, method="lnsr", baseline="vanilla")
    assert list(out.columns) == [
        "method",
        "baseline",
        "domain",
        "metric",
        "n_pairs",
        "mean_diff",
        "ci_low",
        "ci_high",
        "p_sign",
        "p_permutation",
        "verdict",
    ]
    row = out.iloc[0]
    d = np.array([0.02, 0.04, 0.04])
    assert row["n_pairs"] == 3
    assert row["mean_diff"] == pytest.approx(d.mean())
    half = st.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert row["ci_low"] == pytest.approx(d.mean() - half) and row["ci_high"] == pytest.approx(d.mean() + half)
    assert row["p_sign"] == pytest.approx(0.25) and row["p_permutation"] == pytest.approx(0.25)


def test_verdict_higher_and_better_with_enough_seeds():
    base = [0.80, 0.81, 0.79, 0.82, 0.80, 0.78, 0.81, 0.80]
    gain = [0.02, 0.03, 0.02, 0.01, 0.02, 0.03, 0.02, 0.025]
    df = _tidy({"lnsr": [b + g for b, g in zip(base, gain)], "vanilla": base})
    row = paired_comparison(df, method="lnsr", baseline="vanilla").iloc[0]
    assert row["ci_low"] > 0
    assert row["p_permutation"] == pytest.approx(2 / 256)  # exact: only all-positive and all-negative reach it
    v = row["verdict"]
    assert v.startswith("lnsr is better than vanilla: accuracy higher by 0.022")
    assert "95% CI of the difference" in v and "p = 0.0078, 8 seeds" in v
    assert "within noise" not in v and "no test can reach" not in v


def test_verdict_lower_is_better_flip():
    assert {"nll", "ece"} <= LOWER_IS_BETTER
    base = [0.50, 0.52, 0.49, 0.51, 0.50, 0.53, 0.48, 0.50]
    df = _tidy({"lnsr": [b + 0.05 + 0.001 * i for i, b in enumerate(base)], "vanilla": base}, metric="nll")
    worse = paired_comparison(df, method="lnsr", baseline="vanilla").iloc[0]["verdict"]
    assert worse.startswith("lnsr is worse than vanilla: nll higher by") and "lower is better" in worse
    better = paired_comparison(df, method="vanilla", baseline="lnsr").iloc[0]["verdict"]
    assert better.startswith("vanilla is better than lnsr: nll lower by")


def test_verdict_neutral_metric_has_no_judgement():
    df = _tidy({"a": [0.6, 0.7, 0.8, 0.9, 1.0, 1.1], "b": [0.5, 0.5, 0.6, 0.7, 0.8, 0.9]}, metric="positive_rate")
    v = paired_comparison(df, method="a", baseline="b").iloc[0]["verdict"]
    assert v.startswith("a is higher than b in positive_rate by") and "better" not in v and "worse" not in v


def test_verdict_within_noise_and_small_n_warning():
    df = _tidy({"lnsr": [0.80, 0.83, 0.79], "vanilla": [0.81, 0.80, 0.82]})
    row = paired_comparison(df, method="lnsr", baseline="vanilla").iloc[0]
    assert row["ci_low"] < 0 < row["ci_high"]
    v = row["verdict"]
    assert v.startswith("within noise: accuracy difference (lnsr - vanilla) -0.003 (95% CI ")
    assert "over 3 seeds" in v
    assert "with 3 pairs no test can reach p < 0.05 (smallest possible p = 0.25)" in v


def test_verdict_ci_excludes_zero_but_too_few_pairs():
    # t interval excludes 0 with 3 consistent seeds, yet p can be no smaller than 0.25: the verdict must say so
    df = _tidy({"lnsr": [0.85, 0.86, 0.85], "vanilla": [0.80, 0.81, 0.81]})
    row = paired_comparison(df, method="lnsr", baseline="vanilla").iloc[0]
    assert row["ci_low"] > 0
    v = row["verdict"]
    assert v.startswith("lnsr is better than vanilla") and "p = 0.25" in v
    assert "with 3 pairs no test can reach p < 0.05" in v and "suggestive" in v


def test_verdict_not_possible_with_fewer_than_two_pairs():
    df = pd.concat([_tidy({"lnsr": [0.8, 0.9]}, seeds=[1, 2]), _tidy({"vanilla": [0.7, 0.7]}, seeds=[2, 3])])
    row = paired_comparison(df, method="lnsr", baseline="vanilla").iloc[0]
    assert row["n_pairs"] == 1 and row["mean_diff"] == pytest.approx(0.2)
    assert math.isnan(row["ci_low"]) and math.isnan(row["p_sign"]) and math.isnan(row["p_permutation"])
    assert row["verdict"].startswith("comparison not possible: lnsr and vanilla have only 1 seed in common")
    assert "at least 2 seeds" in row["verdict"]


def test_paired_comparison_group_present_for_one_method_only():
    df = pd.concat([_tidy({"lnsr": [0.8, 0.9]}, domain="nyt"), _tidy({"vanilla": [0.7, 0.7]}, domain="movie")])
    out = paired_comparison(df, method="lnsr", baseline="vanilla").set_index("domain")
    assert out["n_pairs"].tolist() == [0, 0]
    assert "no seed in common" in out.loc["nyt", "verdict"]


def test_paired_comparison_errors():
    df = _tidy({"lnsr": [0.8, 0.9], "vanilla": [0.7, 0.7]})
    with pytest.raises(ValueError, match=r"'baseline' parameter of paired_comparison must be one of.*'smart'"):
        paired_comparison(df, method="lnsr", baseline="smart")
    with pytest.raises(ValueError, match="must differ"):
        paired_comparison(df, method="lnsr", baseline="lnsr")
    with pytest.raises(ValueError, match="ambiguous"):
        paired_comparison(pd.concat([df, df]), method="lnsr", baseline="vanilla")
    with pytest.raises(ValueError, match=r"\['seed'\] not found"):
        paired_comparison(df.drop(columns="seed"), method="lnsr", baseline="vanilla")


def test_describe_comparison_on_plain_mapping():
    row = {
        "method": "lnsr",
        "baseline": "vanilla",
        "metric": "ece",
        "n_pairs": 10,
        "mean_diff": -0.021,
        "ci_low": -0.038,
        "ci_high": -0.004,
        "p_sign": 0.02,
        "p_permutation": 0.03,
    }
    text = describe_comparison(row)
    assert text == (
        "lnsr is better than vanilla: ece lower by 0.021 (lower is better; 95% CI of the difference -0.038 to "
        "-0.004; p = 0.03, 10 seeds)"
    )
    row["p_permutation"] = 0.2  # interval excludes 0 but the permutation test disagrees: flag it
    assert "does not confirm" in describe_comparison(row)


# ------------------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_ci_reproducible_and_sensible():
    rng = np.random.RandomState(0)
    x = rng.normal(5.0, 1.0, size=200)
    lo, hi = bootstrap_ci(x, confidence=0.95, n_boot=2000, seed=3)
    assert (lo, hi) == bootstrap_ci(x, confidence=0.95, n_boot=2000, seed=3)
    assert lo < x.mean() < hi
    # about the t interval's width (sd / sqrt(n) * 1.96 ~ 0.14 each side)
    assert hi - lo == pytest.approx(2 * 1.96 * x.std(ddof=1) / math.sqrt(200), rel=0.15)
    assert all(math.isnan(v) for v in bootstrap_ci([1.0], confidence=0.95, n_boot=10, seed=0))


def test_bootstrap_ci_correlation_rows_resampled_together():
    rng = np.random.RandomState(1)
    a = rng.normal(size=100)
    pairs = np.column_stack([a, a + rng.normal(scale=0.5, size=100)])
    r = np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]
    lo, hi = bootstrap_ci(
        pairs, confidence=0.9, n_boot=500, seed=0, statistic=lambda s: np.corrcoef(s[:, 0], s[:, 1])[0, 1]
    )
    assert lo < r < hi and lo > 0.7 and hi < 0.95
    with pytest.raises(ValueError, match="pass statistic="):
        bootstrap_ci(pairs, confidence=0.9, n_boot=10, seed=0)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")], confidence=0.9, n_boot=10, seed=0)


# ------------------------------------------------------------------------------------ multiple comparisons
def test_holm_adjust_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4*0.005 = 0.02, 3*0.01 = 0.03, 2*0.03 = 0.06, max(1*0.04, 0.06) = 0.06
    np.testing.assert_allclose(holm_adjust([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    # sorted 0.02, 0.4, 0.9 (m = 3): 3*0.02 = 0.06, 2*0.4 = 0.8, max(0.9, 0.8) = 0.9
    np.testing.assert_allclose(holm_adjust([0.4, 0.9, 0.02]), [0.8, 0.9, 0.06], rtol=1e-12)


def test_holm_adjust_caps_at_one():
    # sorted 0.3, 0.6, 0.7: 3*0.3 = 0.9, 2*0.6 = 1.2 -> 1, max(0.7, 1.2) -> 1
    np.testing.assert_allclose(holm_adjust([0.7, 0.3, 0.6]), [1.0, 0.9, 1.0], rtol=1e-12)
    assert np.all(holm_adjust([0.9, 1.0, 0.8]) == 1.0)


def test_holm_adjust_nan_passed_through_and_not_counted():
    got = holm_adjust([0.01, math.nan, 0.04, 0.03, math.nan, 0.005])
    assert np.isnan(got[1]) and np.isnan(got[4])
    # m = 4, not 6: the same numbers as without the NaNs
    np.testing.assert_allclose(got[[0, 2, 3, 5]], [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    assert np.all(np.isnan(holm_adjust([math.nan, math.nan])))
    assert holm_adjust([]).shape == (0,)
    # any shape: a 2-D family keeps its shape and is adjusted as one family
    grid = holm_adjust(np.array([[0.01, 0.04], [0.03, 0.005]]))
    assert grid.shape == (2, 2)
    np.testing.assert_allclose(grid, [[0.03, 0.06], [0.06, 0.02]], rtol=1e-12)


def test_adjust_does_not_modify_input():
    raw = np.array([0.01, 0.04, math.nan, 0.005])
    before = raw.copy()
    for adjust in (holm_adjust, bh_adjust):
        out = adjust(raw)
        np.testing.assert_array_equal(raw, before)
        assert out is not raw
    as_list = [0.01, 0.04, 0.03]
    holm_adjust(as_list)
    bh_adjust(as_list)
    assert as_list == [0.01, 0.04, 0.03]


def test_bh_adjust_by_hand():
    # p_(i) * m / i = 0.05 for every i: all adjusted values are 0.05
    np.testing.assert_allclose(bh_adjust([0.01, 0.02, 0.03, 0.04, 0.05]), [0.05] * 5, rtol=1e-12)
    # m = 8, p_(i) * 8 / i:
    #   i=1 0.001*8 = 0.008      i=2 0.008*4 = 0.032     i=3 0.039*8/3 = 0.104   i=4 0.041*2 = 0.082
    #   i=5 0.042*8/5 = 0.0672   i=6 0.06*8/6 = 0.08     i=7 0.074*8/7 = 0.08457 i=8 0.205
    # step-up (running minimum from the largest): 0.205, 0.08457, 0.08, 0.0672, 0.0672, 0.0672, 0.032, 0.008
    p = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205]
    expected = [0.008, 0.032, 0.0672, 0.0672, 0.0672, 0.08, 0.074 * 8 / 7, 0.205]
    np.testing.assert_allclose(bh_adjust(p), expected, rtol=1e-12)
    # the input order does not matter: each value gets its own adjusted p
    perm = [5, 0, 7, 2, 4, 1, 6, 3]
    np.testing.assert_allclose(bh_adjust([p[i] for i in perm]), [expected[i] for i in perm], rtol=1e-12)
    assert np.all(bh_adjust(p) >= np.array(p))


def test_bh_adjust_nan_passed_through_and_not_counted():
    got = bh_adjust([0.01, math.nan, 0.02, 0.03, 0.04, 0.05])
    assert np.isnan(got[1])
    np.testing.assert_allclose(np.delete(got, 1), [0.05] * 5, rtol=1e-12)  # m = 5, not 6
    assert np.all(np.isnan(bh_adjust([math.nan])))


@pytest.mark.parametrize("adjust", [holm_adjust, bh_adjust])
@pytest.mark.parametrize("bad", [[0.1, -0.01], [0.1, 1.01], [0.1, math.inf], [-math.inf]])
def test_adjust_refuses_p_outside_unit_interval_or_infinite(adjust, bad):
    with pytest.raises(ValueError, match=r"\[0, 1\]|finite"):
        adjust(bad)


def test_vectorised_rank_statistics_match_scipy_sklearn_and_the_looped_bootstrap():
    from scipy import stats as st
    from sklearn.metrics import roc_auc_score

    from lnsr_viz.analysis.stats import bootstrap_ci, rank_correlation
    from lnsr_viz.analysis.validity import rank_auc, rank_auc_rows

    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(7, 30)), 1)  # ties on purpose
    y = np.round(x + rng.normal(size=(7, 30)), 1)
    label = (y > 0.3).astype(float)
    pairs = np.stack([x, y], axis=-1)
    np.testing.assert_allclose(rank_correlation(pairs), [st.spearmanr(a, b).statistic for a, b in zip(x, y)],
                               rtol=1e-12)
    np.testing.assert_allclose(rank_auc_rows(np.stack([x, label], axis=-1)),
                               [roc_auc_score(lab, a) for a, lab in zip(x, label)], rtol=1e-12)
    assert np.isnan(rank_correlation(np.column_stack([np.ones(5), np.arange(5)])))
    assert np.isnan(rank_auc_rows(np.column_stack([np.arange(5), np.zeros(5)])))
    # the same resamples, so the same interval as one Python call per resample
    one = pairs[0]
    looped = bootstrap_ci(one, statistic=lambda a: st.spearmanr(a[:, 0], a[:, 1]).statistic, n_boot=500, seed=4)
    fast = bootstrap_ci(one, statistic=rank_correlation, vectorized=True, n_boot=500, seed=4)
    np.testing.assert_allclose(fast, looped, rtol=1e-12)
    auc_pairs = np.column_stack([x[1], label[1]])
    np.testing.assert_allclose(
        bootstrap_ci(auc_pairs, statistic=rank_auc_rows, vectorized=True, n_boot=500, seed=4),
        bootstrap_ci(auc_pairs, statistic=lambda a: rank_auc(a[:, 0], a[:, 1]), n_boot=500, seed=4), rtol=1e-12)

"""Statistics over seeds: summaries, paired comparisons and plain-words verdicts.

Fine-tuning results vary a lot from seed to seed, and a regulariser's claimed gain is often smaller than that
variation. This module turns the tidy metrics table (``method, seed, domain, metric, value``; see
``docs/architecture.md``) into

* :func:`summarize`: mean, standard deviation and a Student-t confidence interval per method / domain / metric;
* :func:`paired_comparison`: method minus baseline on the seeds both ran, with a t interval on the paired
  differences, an exact sign test and a paired sign-flip permutation test, and a sentence
  (:func:`describe_comparison`) that says "within noise" whenever the interval contains 0 and warns when there are
  too few seeds for any test to reach p < 0.05;
* :func:`bootstrap_ci`: a percentile bootstrap interval for statistics without a closed form (e.g. correlations);
* :func:`holm_adjust` / :func:`bh_adjust`: p-values adjusted for multiple comparisons (Holm-Bonferroni step-down,
  which controls the family-wise error rate; Benjamini-Hochberg, which controls the false discovery rate);
* :func:`t_interval`: the Student-t interval for a mean that every module uses (defined in
  :mod:`lnsr_viz.utils.intervals`, the bottom layer, so that the probe can use it too).

The tests and intervals are scipy's (``scipy.stats.t``, ``binomtest``, ``permutation_test``, ``bootstrap``) behind
our input checks, conventions for ties and degenerate cases, and plain-words verdicts.

Small-sample facts the verdicts rely on: with ``n`` paired seeds, an exact two-sided sign or sign-flip test can
never give a p-value below ``2 / 2**n`` (0.25 for 3 seeds, 0.125 for 4, 0.0625 for 5), so fewer than 6 seeds can
never be "significant at 5 %", however large the difference.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _st

from ..utils.intervals import TInterval, t_interval
from ..utils.validation import check_number, check_positive_int

__all__ = [
    "rank_correlation",
    "LOWER_IS_BETTER",
    "HIGHER_IS_BETTER",
    "TInterval",
    "t_interval",
    "summarize",
    "paired_comparison",
    "describe_comparison",
    "sign_test",
    "paired_permutation_test",
    "bootstrap_ci",
    "holm_adjust",
    "bh_adjust",
]

#: Metrics for which a smaller value is the better one; verdicts flip "better"/"worse" for them.
LOWER_IS_BETTER: frozenset[str] = frozenset({"nll", "ece", "span_loss"})
#: Metrics for which a larger value is better. Metrics in neither set (``n``, ``positive_rate``, ...) get
#: "higher"/"lower" without a judgement.
HIGHER_IS_BETTER: frozenset[str] = frozenset({"accuracy", "macro_f1", "roc_auc", "f1", "exact_match"})

SUMMARY_COLUMNS = ("n_seeds", "mean", "sd", "ci_low", "ci_high")
COMPARISON_COLUMNS = (
    "n_pairs",
    "mean_diff",
    "ci_low",
    "ci_high",
    "p_sign",
    "p_permutation",
    "verdict",
)

# Differences smaller than this count as ties (zeros) in the sign test.
_ZERO_TOL = 1e-12


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------
def _check_confidence(confidence: Any, owner: str) -> float:
    return float(
        check_number("confidence", confidence, owner=owner, low=0.0, high=1.0, low_closed=False, high_closed=False)
    )


def _check_columns(df: Any, needed: Sequence[str], owner: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{owner} expects a pandas DataFrame; got {type(df).__name__}.")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(
            f"{owner}: column(s) {missing} not found in the DataFrame. Expected the tidy metrics table with "
            f"columns {list(needed)}; available columns are {list(df.columns)}."
        )


def _as_diffs(diffs: Any, owner: str) -> np.ndarray:
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"{owner} expects a 1-D array of paired differences; got shape {d.shape}.")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{owner}: the differences contain NaN or inf; drop unpaired seeds first.")
    return d


def _fmt_num(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    if x != 0 and abs(x) < 0.0005:
        return f"{x:.2g}"
    return f"{x:.3f}"


def _fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "p = n/a"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.2g}"


def _min_exact_p(n: int) -> float:
    """Smallest two-sided p-value an exact sign or sign-flip test can give with ``n`` pairs."""
    return min(1.0, 2.0 / 2.0**n)


# --------------------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------------------
def sign_test(diffs: Sequence[float] | np.ndarray) -> float:
    """Exact two-sided sign test of "median difference = 0".

    Zero differences (ties) are dropped; with ``k`` of the remaining ``m`` differences positive, the p-value is the
    two-sided binomial ``P(|K - m/2| >= |k - m/2|)`` for ``K ~ Binomial(m, 1/2)``. With no non-zero difference the
    p-value is 1. Example: 5 of 5 positive gives ``2 * 0.5**5 = 0.0625``.
    """
    d = _as_diffs(diffs, "sign_test")
    nonzero = d[np.abs(d) > _ZERO_TOL]
    m = nonzero.size
    if m == 0:
        return 1.0
    k = int(np.sum(nonzero > 0))
    return float(_st.binomtest(k, m, 0.5, alternative="two-sided").pvalue)


def paired_permutation_test(
    diffs: Sequence[float] | np.ndarray, *, n_permutations: int = 10000, seed: int = 0
) -> float:
    """Two-sided paired permutation (sign-flip) test of "mean difference = 0".

    Under the null hypothesis each paired difference is as likely to be positive as negative, so the observed
    ``|mean(d)|`` is compared with ``|mean(s * d)|`` over random signs ``s``. When ``2**n <= n_permutations`` all
    ``2**n`` sign vectors are enumerated and the p-value is exact (``count / 2**n``, the observed assignment
    included); otherwise ``n_permutations`` sign vectors are drawn from ``numpy.random.default_rng(seed)`` and the
    p-value is ``(1 + count) / (1 + n_permutations)``, which is never 0 and keeps the test valid.

    The sign flips are ``scipy.stats.permutation_test(permutation_type="samples")``'s (one sample: each observation
    keeps or flips its sign). The count uses our tie tolerance, ``1e-10 * sum(|d|)``, which is wider than scipy's
    (relative to the observed statistic only), so that a sum that is 0 in exact arithmetic (e.g. ``[0.1, 0.2,
    -0.3]``) still ties with its mirror image.
    """
    n_permutations = check_positive_int("n_permutations", n_permutations, owner="paired_permutation_test")
    d = _as_diffs(diffs, "paired_permutation_test")
    n = d.size
    if n == 0:
        return math.nan
    if n == 1:  # both signs give the observed |d|: p = 1 (scipy's permutation_test needs two observations)
        return 1.0
    observed = abs(float(d.sum()))
    tol = 1e-10 * float(np.abs(d).sum())  # float summation order must not turn a tie into a miss
    res = _st.permutation_test(
        (d,), lambda x, axis: np.abs(np.sum(x, axis=axis)), permutation_type="samples", vectorized=True,
        n_resamples=n_permutations, alternative="greater", rng=np.random.default_rng(seed),
    )
    count = int(np.sum(res.null_distribution >= observed - tol))
    if 2**n <= n_permutations:  # scipy enumerated all 2**n sign vectors (the observed one included)
        return count / 2.0**n
    return (1.0 + count) / (1.0 + n_permutations)


def rank_correlation(pairs: np.ndarray) -> np.ndarray | float:
    """Spearman's rho of the two columns of ``pairs`` (shape ``(..., n, 2)``), one per leading index.

    Average ranks for ties, as ``scipy.stats.spearmanr``; NaN where a column is constant. The vectorised statistic
    :func:`bootstrap_ci` takes (``vectorized=True``) for a correlation's interval.
    """
    a = np.asarray(pairs, dtype=np.float64)
    ranks = _st.rankdata(a, axis=-2)
    centred = ranks - ranks.mean(axis=-2, keepdims=True)
    cov = np.sum(centred[..., 0] * centred[..., 1], axis=-1)
    scale = np.sqrt(np.sum(centred[..., 0] ** 2, axis=-1) * np.sum(centred[..., 1] ** 2, axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(scale > 0, cov / np.where(scale > 0, scale, 1.0), np.nan)
    return float(rho) if rho.ndim == 0 else rho


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
    statistic: Callable[[np.ndarray], Any] | None = None,
    vectorized: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval.

    Parameters
    ----------
    values : array of shape (n,) or (n, k)
        The sample. For 2-D input the rows are resampled together, which is what a correlation between two
        columns needs (``statistic=lambda a: np.corrcoef(a[:, 0], a[:, 1])[0, 1]``).
    confidence : float, default=0.95
    n_boot : int, default=10000
        Number of bootstrap resamples.
    seed : int, default=0
        Seed of ``numpy.random.default_rng``; the same seed gives the same interval.
    statistic : callable, optional
        Maps a resample (same ndim as ``values``) to a float. Default: the mean (1-D ``values`` only).
    vectorized : bool, default=False
        ``statistic`` takes a stack of resamples, shape ``(..., n)`` or ``(..., n, k)``, and returns one value per
        resample, shape ``(...)`` (e.g. :func:`rank_correlation`): every resample in one call instead of one Python
        call each, tens of times faster; the resamples, hence the interval, are the same as with ``False``.

    Returns
    -------
    (low, high) : tuple of float
        The ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the bootstrap distribution;
        ``(nan, nan)`` with fewer than 2 values. Resamples on which the statistic is NaN (e.g. a correlation of a
        constant resample) are ignored.

    The resamples are ``scipy.stats.bootstrap``'s (rows drawn with ``numpy.random.default_rng(seed)``); the
    percentiles are taken here, over the finite values of its bootstrap distribution.
    """
    confidence = _check_confidence(confidence, "bootstrap_ci")
    n_boot = check_positive_int("n_boot", n_boot, owner="bootstrap_ci")
    x = np.asarray(values, dtype=np.float64)
    if x.ndim not in (1, 2):
        raise ValueError(f"values must be 1-D (n,) or 2-D (n, k); got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("values contains NaN or inf; drop them before bootstrapping.")
    if statistic is None and x.ndim != 1:
        raise ValueError("The default statistic (the mean) needs 1-D values; pass statistic= for 2-D input.")
    n = x.shape[0]
    if n < 2:
        return math.nan, math.nan
    common = {"n_resamples": n_boot, "confidence_level": confidence, "method": "percentile",
              "rng": np.random.default_rng(seed)}
    with warnings.catch_warnings():  # NaN statistics make scipy's own interval NaN; ours drops them below
        warnings.simplefilter("ignore", _st.DegenerateDataWarning)
        if statistic is None:
            res = _st.bootstrap((x,), np.mean, vectorized=True, **common)
        elif vectorized:  # row numbers of shape (..., n): x[i] is the stack of resamples
            res = _st.bootstrap((np.arange(n),), lambda i, axis=-1: np.asarray(
                statistic(x[np.asarray(i, dtype=np.intp)]), dtype=np.float64), vectorized=True, **common)
        else:  # resample row numbers, so that rows of 2-D values stay together
            res = _st.bootstrap((np.arange(n),), lambda i: float(statistic(x[np.asarray(i, dtype=np.intp)])),
                                vectorized=False, **common)
    boot = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


# --------------------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------------------
def summarize(
    df: pd.DataFrame,
    *,
    by: Sequence[str] = ("method", "domain", "metric"),
    value: str = "value",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean, sd and Student-t confidence interval over seeds.

    Parameters
    ----------
    df : DataFrame
        Tidy metrics (one row per run, domain and metric), e.g. ``RunStore.load_table("metrics")``.
    by : sequence of str, default=("method", "domain", "metric")
        Columns that identify one group; every other varying column (usually ``seed``) is what is averaged over.
    value : str, default="value"
        The numeric column to summarise. NaN values (e.g. an undefined ROC AUC) are left out and not counted.
    confidence : float, default=0.95
        Level of the interval ``mean +- t_{(1+confidence)/2, n-1} * sd / sqrt(n)``.

    Returns
    -------
    DataFrame
        The ``by`` columns, then ``n_seeds, mean, sd, ci_low, ci_high``. ``sd`` uses ddof=1; with one seed the sd
        and the interval are NaN (one run says nothing about seed-to-seed spread).
    """
    confidence = _check_confidence(confidence, "summarize")
    by = [by] if isinstance(by, str) else list(by)
    _check_columns(df, [*by, value], "summarize")
    rows = []
    for keys, group in df.groupby(by, sort=True, dropna=False):
        vals = pd.to_numeric(group[value], errors="raise").to_numpy(dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        mean, sd, low, high, _ = t_interval(vals, confidence)
        rows.append(
            {**dict(zip(by, keys)), "n_seeds": int(vals.size), "mean": mean, "sd": sd, "ci_low": low, "ci_high": high}
        )
    return pd.DataFrame(rows, columns=[*by, *SUMMARY_COLUMNS])


def describe_comparison(row: Mapping[str, Any] | pd.Series, *, confidence: float = 0.95) -> str:
    """One sentence that says what a paired comparison shows, in words a reader cannot misread.

    ``row`` has the columns of :func:`paired_comparison` (``method, baseline, metric, n_pairs, mean_diff, ci_low,
    ci_high, p_sign, p_permutation``; ``domain`` optional). Rules:

    * fewer than 2 pairs: the comparison is not possible, and the sentence says why;
    * the interval contains 0 (or is undefined): "within noise: ...";
    * otherwise the direction, with "better"/"worse" for metrics in :data:`HIGHER_IS_BETTER` or
      :data:`LOWER_IS_BETTER` (for ``nll`` and ``ece`` lower is better) and plain "higher"/"lower" for the rest;
    * with 5 or fewer pairs it adds that no exact test can reach p < 0.05 (the smallest possible p is
      ``2 / 2**n``); with more pairs, a permutation p >= 0.05 next to an interval that excludes 0 is flagged.

    The p-value quoted is the permutation test's (the sign test's if that is missing).
    """
    confidence = _check_confidence(confidence, "describe_comparison")
    get = row.get
    method, baseline = str(get("method", "method")), str(get("baseline", "baseline"))
    metric = str(get("metric", "the metric"))
    domain = get("domain")
    where = f"{metric} on {domain}" if domain is not None else metric
    n = int(get("n_pairs", 0) or 0)
    pct = f"{confidence * 100:g}%"
    if n < 2:
        have = "no seed in common" if n == 0 else "only 1 seed in common"
        return (
            f"comparison not possible: {method} and {baseline} have {have} for {where}; "
            "a paired comparison needs at least 2 seeds that both methods ran."
        )
    diff = float(get("mean_diff"))
    low, high = float(get("ci_low")), float(get("ci_high"))
    p = get("p_permutation")
    p = float(p) if p is not None and math.isfinite(float(p)) else float(get("p_sign", math.nan))
    min_p = _min_exact_p(n)
    small_n = min_p >= 0.05
    small_note = f"with {n} pairs no test can reach p < 0.05 (smallest possible p = {min_p:.2g})"

    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0.0 <= high:
        text = (
            f"within noise: {metric} difference ({method} - {baseline}) {_fmt_num(diff)} "
            f"({pct} CI {_fmt_num(low)} to {_fmt_num(high)}), {_fmt_p(p)} over {n} seeds"
        )
        return text + (f"; {small_note}" if small_n else "")

    direction = "higher" if diff > 0 else "lower"
    if metric in LOWER_IS_BETTER or metric in HIGHER_IS_BETTER:
        better = (diff < 0) if metric in LOWER_IS_BETTER else (diff > 0)
        judged = "better" if better else "worse"
        rule = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        text = (
            f"{method} is {judged} than {baseline}: {metric} {direction} by {_fmt_num(abs(diff))} "
            f"({rule}; {pct} CI of the difference {_fmt_num(low)} to {_fmt_num(high)}; {_fmt_p(p)}, {n} seeds)"
        )
    else:
        text = (
            f"{method} is {direction} than {baseline} in {metric} by {_fmt_num(abs(diff))} "
            f"({pct} CI of the difference {_fmt_num(low)} to {_fmt_num(high)}; {_fmt_p(p)}, {n} seeds)"
        )
    if small_n:
        text += f"; {small_note}, so treat this as suggestive only"
    elif math.isfinite(p) and p >= 0.05:
        text += "; the permutation test does not confirm it (p >= 0.05), so treat this as suggestive only"
    return text


def paired_comparison(
    df: pd.DataFrame,
    *,
    method: str,
    baseline: str,
    by: Sequence[str] = ("domain", "metric"),
    pair_on: str = "seed",
    value: str = "value",
    confidence: float = 0.95,
    n_permutations: int = 10000,
    seed: int = 0,
) -> pd.DataFrame:
    """Compare ``method`` with ``baseline`` seed by seed.

    For each group of ``by`` (default: each domain and metric) the differences ``method - baseline`` are taken
    over the values of ``pair_on`` (seeds) that both methods have (non-NaN); seeds only one method ran are
    ignored. Pairing removes the seed-to-seed variation that both methods share (same data split, same head
    initialisation), which makes the comparison much sharper than comparing two independent means.

    Parameters
    ----------
    df : DataFrame
        Tidy metrics with a ``method`` column, the ``by`` columns, ``pair_on`` and ``value``.
    method, baseline : str
        Values of the ``method`` column; the difference is ``method - baseline``.
    by : sequence of str, default=("domain", "metric")
    pair_on : str, default="seed"
    value : str, default="value"
    confidence : float, default=0.95
        Level of the t interval on the mean difference.
    n_permutations : int, default=10000
        Budget of the permutation test: exact enumeration when ``2**n_pairs <= n_permutations``, else that many
        random sign flips.
    seed : int, default=0
        Seed of the Monte-Carlo permutation test.

    Returns
    -------
    DataFrame
        Columns ``method, baseline, <by...>, n_pairs, mean_diff, ci_low, ci_high, p_sign, p_permutation, verdict``
        (one row per group present for either method). With fewer than 2 pairs the interval and p-values are NaN
        and the verdict says why.

    Raises
    ------
    ValueError
        If a column is missing, a method is absent, or one method has two values for the same group and seed
        (the pairing would be ambiguous).
    """
    confidence = _check_confidence(confidence, "paired_comparison")
    n_permutations = check_positive_int("n_permutations", n_permutations, owner="paired_comparison")
    by = [by] if isinstance(by, str) else list(by)
    _check_columns(df, ["method", pair_on, value, *by], "paired_comparison")
    if method == baseline:
        raise ValueError(f"method and baseline must differ; both are {method!r}.")
    available = sorted(map(str, pd.unique(df["method"])))
    for role, name in (("method", method), ("baseline", baseline)):
        if name not in set(df["method"]):
            raise ValueError(
                f"The {role!r} parameter of paired_comparison must be one of the methods in the table {available}. "
                f"Got {name!r} instead."
            )
    sub = df[df["method"].isin([method, baseline])]
    dup = sub.duplicated(subset=["method", *by, pair_on], keep=False)
    if dup.any():
        example = sub.loc[dup, ["method", *by, pair_on]].iloc[0].to_dict()
        raise ValueError(
            f"paired_comparison found more than one {value!r} for the same method, {by} and {pair_on!r} "
            f"(e.g. {example}), so the pairing is ambiguous. Average or deduplicate the runs first, or add the "
            "distinguishing column to by=."
        )

    rows = []
    for keys, group in sub.groupby(by, sort=True, dropna=False):
        a = group[group["method"] == method].set_index(pair_on)[value].astype(np.float64).dropna()
        b = group[group["method"] == baseline].set_index(pair_on)[value].astype(np.float64).dropna()
        common = sorted(set(a.index) & set(b.index), key=lambda k: (str(type(k)), k))
        d = (a.loc[common].to_numpy() - b.loc[common].to_numpy()) if common else np.empty(0)
        n = int(d.size)
        if n >= 2:
            mean, _sd, low, high, _ = t_interval(d, confidence)
            p_sign = sign_test(d)
            p_perm = paired_permutation_test(d, n_permutations=n_permutations, seed=seed)
        else:
            mean = float(d[0]) if n == 1 else math.nan
            low = high = p_sign = p_perm = math.nan
        row = {
            "method": method,
            "baseline": baseline,
            **dict(zip(by, keys)),
            "n_pairs": n,
            "mean_diff": mean,
            "ci_low": low,
            "ci_high": high,
            "p_sign": p_sign,
            "p_permutation": p_perm,
        }
        row["verdict"] = describe_comparison(row, confidence=confidence)
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", "baseline", *by, *COMPARISON_COLUMNS])


# --------------------------------------------------------------------------------------------------------------
# multiple comparisons
# --------------------------------------------------------------------------------------------------------------
def _as_p_values(p_values: Any, owner: str) -> tuple[np.ndarray, np.ndarray]:
    """The p-values as a float array (any shape) and the mask of the finite ones, checked to lie in [0, 1]."""
    p = np.array(p_values, dtype=np.float64)  # a copy: the caller's array is never changed
    if np.any(np.isinf(p)):
        raise ValueError(f"{owner}: p-values must be finite or NaN; got an infinite value.")
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0.0) | (p[ok] > 1.0)):
        raise ValueError(f"{owner}: p-values must lie in [0, 1]; got values from {p[ok].min()} to {p[ok].max()}.")
    return p, ok


def holm_adjust(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values (family-wise error control), same shape as the input.

    With the ``m`` finite p-values sorted ascending, the ``i``-th (0-based) becomes ``max_{j <= i} (m - j) p_(j)``,
    capped at 1 (so the adjusted values keep the order of the raw ones). NaN entries stay NaN and are not counted in
    ``m``. Example: ``[0.01, 0.04, 0.03, 0.005] -> [0.03, 0.06, 0.06, 0.02]``. Same numbers as statsmodels'
    ``multipletests(method='holm')`` (not a dependency here).
    """
    p, ok = _as_p_values(p_values, "holm_adjust")
    vals = p[ok]
    m = vals.size
    if m == 0:
        return p
    order = np.argsort(vals, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * vals[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    p[ok] = adjusted
    return p


def bh_adjust(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), same shape; NaN passed through, not counted.

    ``scipy.stats.false_discovery_control(method='bh')`` on the finite values.
    """
    p, ok = _as_p_values(p_values, "bh_adjust")
    if ok.any():
        p[ok] = _st.false_discovery_control(p[ok], method="bh")
    return p

"""The all-methods table: every method against the baseline, per training-set size, with CIs and a correction.

:func:`method_table` takes the one-row-per-run table of :func:`lnsr_viz.experiments.study.study_runs` and gives one
row per training-set size, method and setting (by default only the setting chosen on validation accuracy,
:func:`lnsr_viz.experiments.sweep.select_settings`), with, for in-domain and out-of-domain accuracy and ROC AUC:
mean, sd over seeds (ddof=1) and 95% Student-t CI of the mean; the paired difference from the baseline over the seeds
both ran (mean and t CI); two raw p-values of that difference, the paired Student t-test (``<metric>_p_t``,
``scipy.stats.ttest_rel``, two-sided) and the exact sign-flip permutation test (``<metric>_p_perm``, from
:func:`lnsr_viz.analysis.stats.paired_comparison`); the p of the chosen test (``<metric>_p``) adjusted for multiple
comparisons (``<metric>_p_adj``); and a verdict.

**Which test** (``test=``): ``"t"`` (the default) corrects the paired t-test's p, which agrees with the t CI of the
difference the table shows (the CI excludes 0 exactly when ``p_t < 1 - confidence``). ``"permutation"`` corrects the
sign-flip p, which assumes no normality but is discrete: with ``n`` paired seeds it can never be below ``2 / 2**n``,
**0.0625 for 5 seeds**, so with 5 seeds no comparison can be "better" or "worse" at ``alpha=0.05``, corrected or
not. Both raw p's are always in the table.

A pair whose differences have zero variance (all equal: their range at most ``1e-12``, scaled by the largest
``|difference|`` when that exceeds 1) has no t statistic: its t p is NaN ("not testable" under ``test="t"``, and a
note says why), except when all differences are 0 (``|d| <= 1e-12``), where it is 1 (no difference at all). This is
decided before scipy is called, so no warning leaks.

**The family of the correction is one training-set size**: every non-baseline row of that size times the four metrics
(``n_comparisons`` of them; comparisons with no p-value of the chosen test, e.g. fewer than 2 shared seeds or a
zero-variance t-test, are not counted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _st

from ..analysis.stats import bh_adjust, holm_adjust, paired_comparison
from ..utils.intervals import t_interval

__all__ = ["METRICS", "CORRECTIONS", "TESTS", "method_table"]

#: The metrics of the table (all higher-is-better), as columns of ``study_runs``.
METRICS: tuple[str, ...] = ("accuracy", "roc_auc", "ood_accuracy", "ood_roc_auc")
#: Multiple-comparison corrections: Holm-Bonferroni (family-wise error), Benjamini-Hochberg (false discovery
#: rate), or none (raw p-values).
CORRECTIONS: tuple[str, ...] = ("holm", "bh", "none")
#: The paired tests whose p-value is corrected: the Student t-test over the shared seeds, or the exact sign-flip
#: permutation test (which cannot go below 0.0625 with 5 seeds; module docstring).
TESTS: tuple[str, ...] = ("t", "permutation")

_KEYS = ["train_size", "method", "setting"]
_PER_METRIC = ("mean", "sd", "ci_low", "ci_high", "diff", "diff_ci_low", "diff_ci_high", "p_t", "p_perm", "p", "p_adj",
               "verdict")
# differences whose range is at most this (times max(1, max |d|)) have zero variance; all |d| at most this are 0
_ZERO_TOL = 1e-12


def _check_runs(runs: Any, baseline: str) -> pd.DataFrame:
    """The run table with numeric metric columns, or a ValueError that says what is wrong."""
    if not isinstance(runs, pd.DataFrame):
        raise ValueError(f"method_table expects the run table of study_runs (a DataFrame); got {type(runs).__name__}.")
    needed = [*_KEYS, "seed", *METRICS]
    missing = [c for c in needed if c not in runs.columns]
    if missing:
        raise ValueError(f"method_table: the run table lacks column(s) {missing}; it needs {needed} (study_runs "
                         f"gives them). Columns present: {list(runs.columns)}.")
    if runs.empty:
        raise ValueError("method_table: the run table is empty.")
    if baseline not in set(runs["method"]):
        raise ValueError(f"method_table: baseline {baseline!r} has no runs; methods present: "
                         f"{sorted(map(str, set(runs['method'])))}.")
    dup = runs.duplicated(subset=[*_KEYS, "seed"], keep=False)
    if dup.any():
        example = runs.loc[dup, [*_KEYS, "seed"]].iloc[0].to_dict()
        raise ValueError(f"method_table: more than one run for the same size, method, setting and seed (e.g. "
                         f"{example}); deduplicate the runs first.")
    out = runs[[*_KEYS, "seed", *METRICS]].copy()
    for col in METRICS:
        try:
            out[col] = pd.to_numeric(out[col], errors="raise").astype(np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"method_table: column {col!r} must be numeric ({err}).") from None
    return out


def _check_cost(cost: Mapping[str, float] | None) -> dict[str, float]:
    """The step-time ratios as floats, each finite and positive."""
    if cost is None:
        return {}
    if not isinstance(cost, Mapping):
        raise ValueError("cost must be a mapping method -> step-time ratio to the baseline; got "
                         f"{type(cost).__name__}.")
    out = {}
    for name, ratio in cost.items():
        try:
            value = float(ratio)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"cost[{name!r}] must be a positive finite step-time ratio; got {ratio!r}.")
        out[str(name)] = value
    return out


def _pick_rows(runs: pd.DataFrame, chosen: pd.DataFrame | None, baseline: str) -> tuple[pd.DataFrame, dict]:
    """The (size, method, setting) rows of the table and the baseline's setting per size."""
    groups = runs[_KEYS].drop_duplicates()
    if chosen is not None:
        if not isinstance(chosen, pd.DataFrame) or not {"method", "train_size", "chosen"} <= set(chosen.columns):
            raise ValueError("chosen must be the frame of select_settings / StudyResult.chosen, with columns "
                             "method, train_size and chosen (the chosen setting).")
        pick = chosen[["train_size", "method", "chosen"]].rename(columns={"chosen": "setting"})
        pick = pick.astype({"train_size": groups["train_size"].dtype}, errors="ignore")
        absent = pick.merge(groups, how="left", on=_KEYS, indicator=True)
        absent = absent[absent["_merge"] == "left_only"]
        if not absent.empty:
            raise ValueError(f"chosen names settings with no runs in the table, e.g. {absent[_KEYS].iloc[0].to_dict()}"
                             "; were they selected on another store?")
        groups = groups.merge(pick, on=_KEYS)
    base_setting = {}
    for size in sorted(runs["train_size"].unique()):
        here = groups[(groups["train_size"] == size) & (groups["method"] == baseline)]["setting"].tolist()
        if not here and chosen is not None:  # the baseline not in chosen: its only setting at that size, if one
            here = runs[(runs["train_size"] == size) & (runs["method"] == baseline)]["setting"].unique().tolist()
        if len(here) > 1:
            raise ValueError(f"baseline {baseline!r} has several settings at train_size {size} ({sorted(here)}); "
                             "pass chosen= to say which one is the baseline.")
        if here:
            base_setting[size] = here[0]
    base_rows = pd.DataFrame([{"train_size": s, "method": baseline, "setting": b} for s, b in base_setting.items()],
                             columns=_KEYS)
    groups = pd.concat([groups, base_rows]).drop_duplicates()
    return groups.sort_values(_KEYS, kind="stable").reset_index(drop=True), base_setting


def _paired_t_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p of ``a - b`` (``scipy.stats.ttest_rel``); NaN with fewer than 2 pairs or zero
    variance of the differences, 1 when every difference is 0 (decided here, so scipy never warns)."""
    d = a - b
    if d.size < 2:
        return math.nan
    scale = max(1.0, float(np.max(np.abs(d))))
    if float(np.max(np.abs(d))) <= _ZERO_TOL:
        return 1.0
    if float(np.ptp(d)) <= _ZERO_TOL * scale:
        return math.nan
    return float(_st.ttest_rel(a, b, alternative="two-sided").pvalue)


def _verdict(p_adj: float, diff: float, alpha: float) -> str:
    if not math.isfinite(p_adj):
        return "not testable"
    if p_adj < alpha and diff != 0:
        return "better" if diff > 0 else "worse"
    return "within noise"


def _row_stats(mine: pd.DataFrame, base: pd.DataFrame | None, confidence: float) -> dict[str, Any]:
    """Per-metric mean, sd, t CI and the paired comparison with the baseline's runs (raw p only)."""
    row: dict[str, Any] = {"n_seeds": int(mine["seed"].nunique())}
    notes = []
    if row["n_seeds"] < 2:
        notes.append(f"only {row['n_seeds']} seed: no sd or CI")
    for metric in METRICS:
        vals = mine[metric].to_numpy(dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        mean, sd, low, high, _ = t_interval(vals, confidence)
        row.update({f"{metric}_mean": mean, f"{metric}_sd": sd, f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        if 0 < vals.size < 2 <= row["n_seeds"]:
            notes.append(f"{metric}: only {vals.size} defined value: no sd or CI")
    if base is None:
        row["n_paired"] = 0
        for metric in METRICS:
            row.update({f"{metric}_diff": math.nan, f"{metric}_diff_ci_low": math.nan,
                        f"{metric}_diff_ci_high": math.nan, f"{metric}_p_t": math.nan,
                        f"{metric}_p_perm": math.nan})
        notes.append("no baseline runs at this size: no paired difference")
        return {**row, "_notes": notes}
    shared = sorted(set(mine["seed"]) & set(base["seed"]))
    row["n_paired"] = len(shared)
    unshared = sorted(set(mine["seed"]) - set(base["seed"]))
    if unshared:
        notes.append(f"paired on {len(shared)} of {row['n_seeds']} seeds (seeds {unshared} lack a baseline run)")
    if len(shared) < 2:
        notes.append(f"{len(shared)} seed(s) shared with the baseline: no paired CI or p-value")
    tidy = pd.concat([
        frame.melt(id_vars="seed", value_vars=list(METRICS), var_name="metric").assign(method=label)
        for label, frame in (("candidate", mine), ("baseline", base))
    ], ignore_index=True)
    comp = paired_comparison(tidy, method="candidate", baseline="baseline", by=("metric",),
                             confidence=confidence).set_index("metric")
    for metric in METRICS:
        c = comp.loc[metric]
        # the same pairs as paired_comparison's: shared seeds where both values are defined
        pairs = mine[["seed", metric]].merge(base[["seed", metric]], on="seed", suffixes=("", "_base")).dropna()
        p_t = _paired_t_p(pairs[metric].to_numpy(dtype=np.float64), pairs[f"{metric}_base"].to_numpy(dtype=np.float64))
        row.update({f"{metric}_diff": float(c["mean_diff"]), f"{metric}_diff_ci_low": float(c["ci_low"]),
                    f"{metric}_diff_ci_high": float(c["ci_high"]), f"{metric}_p_t": p_t,
                    f"{metric}_p_perm": float(c["p_permutation"])})
        if len(pairs) >= 2 and not math.isfinite(p_t):
            notes.append(f"{metric}: the differences from the baseline have zero variance: no t-test p")
        if 2 <= int(c["n_pairs"]) < len(shared):
            notes.append(f"{metric}: paired on {int(c['n_pairs'])} seeds (undefined values dropped)")
    return {**row, "_notes": notes}


def method_table(runs: pd.DataFrame, *, baseline: str = "vanilla", chosen: pd.DataFrame | None = None,
                 cost: Mapping[str, float] | None = None, correction: str = "holm", alpha: float = 0.05,
                 confidence: float = 0.95, test: str = "t") -> pd.DataFrame:
    """One row per (train_size, method, setting): per-metric mean, sd, t CI, paired difference from ``baseline``,
    raw t and permutation p, the chosen test's adjusted p and verdict; the correction's family is one training-set
    size (module docstring).

    ``chosen`` (:func:`~lnsr_viz.experiments.sweep.select_settings`'s frame) keeps only each method's chosen setting
    per size (None: every setting); ``cost`` maps a setting or method to its step-time ratio to the baseline
    (``cost_ratio``; the setting's entry wins, NaN where neither is given, 1 for the baseline). Columns:
    ``train_size, method, setting, n_seeds, n_paired``, then ``<metric>_{mean, sd, ci_low, ci_high, diff, diff_ci_low,
    diff_ci_high, p_t, p_perm, p, p_adj, verdict}`` for each of :data:`METRICS` (``p`` is ``p_t`` or ``p_perm``,
    as ``test`` says, and ``p_adj`` its corrected value), then ``cost_ratio, verdict`` (the metrics that are better /
    worse after the correction, or "within noise"), ``family, n_comparisons, correction, test, note``.

    ``test`` is ``"t"`` (paired Student t-test, ``scipy.stats.ttest_rel``, two-sided) or ``"permutation"`` (exact
    sign-flip test; never below 0.0625 with 5 seeds); see the module docstring.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {list(CORRECTIONS)}; got {correction!r}.")
    if not isinstance(test, str) or test not in TESTS:
        raise ValueError(f"test must be one of {list(TESTS)} (the paired t-test or the exact sign-flip permutation "
                         f"test); got {test!r}.")
    for name, value in (("alpha", alpha), ("confidence", confidence)):
        if not (isinstance(value, (int, float)) and 0 < float(value) < 1):
            raise ValueError(f"{name} must be a number strictly between 0 and 1; got {value!r}.")
    runs = _check_runs(runs, baseline)
    ratios = _check_cost(cost)
    groups, base_setting = _pick_rows(runs, chosen, baseline)
    rows = []
    for g in groups.itertuples(index=False):
        at_size = runs[runs["train_size"] == g.train_size]
        mine = at_size[(at_size["method"] == g.method) & (at_size["setting"] == g.setting)]
        is_base = g.method == baseline and base_setting.get(g.train_size) == g.setting
        base = None
        if g.train_size in base_setting and not is_base:
            base = at_size[(at_size["method"] == baseline) & (at_size["setting"] == base_setting[g.train_size])]
        row = {"train_size": g.train_size, "method": g.method, "setting": g.setting,
               **_row_stats(mine, base, confidence)}
        if is_base:
            row["n_paired"] = row["n_seeds"]
            row["_notes"].append("baseline")
        row["cost_ratio"] = 1.0 if is_base else ratios.get(str(g.setting), ratios.get(str(g.method), math.nan))
        row["_is_base"] = is_base
        rows.append(row)
    table = pd.DataFrame(rows)
    source = {"t": "p_t", "permutation": "p_perm"}[test]
    for m in METRICS:
        table[f"{m}_p"] = table[f"{m}_{source}"]
    adjust = {"holm": holm_adjust, "bh": bh_adjust, "none": np.asarray}[correction]
    p_cols = [f"{m}_p" for m in METRICS]
    table[[f"{m}_p_adj" for m in METRICS]] = math.nan
    table["n_comparisons"] = 0
    for size, idx in table.groupby("train_size", sort=False).groups.items():
        family = table.loc[idx]
        p = family[p_cols].to_numpy(dtype=np.float64)
        table.loc[idx, [f"{m}_p_adj" for m in METRICS]] = adjust(p.ravel()).reshape(p.shape)
        table.loc[idx, "n_comparisons"] = int(np.isfinite(p).sum())
        table.loc[idx, "family"] = (f"train_size={size}: all non-baseline rows x {len(METRICS)} metrics "
                                    f"({int(np.isfinite(p).sum())} comparisons), {test} test, {correction}")
    table["correction"] = correction
    table["test"] = test
    for m in METRICS:
        table[f"{m}_verdict"] = [("baseline" if b else _verdict(pa, d, alpha)) for b, pa, d in
                                 zip(table["_is_base"], table[f"{m}_p_adj"], table[f"{m}_diff"])]
    table["verdict"] = [_summary(r) for r in table.to_dict("records")]
    table["note"] = ["; ".join(n) for n in table["_notes"]]
    columns = ["train_size", "method", "setting", "n_seeds", "n_paired",
               *(f"{m}_{s}" for m in METRICS for s in _PER_METRIC),
               "cost_ratio", "verdict", "family", "n_comparisons", "correction", "test", "note"]
    return table[columns]


def _summary(row: Mapping[str, Any]) -> str:
    """'better: a, b; worse: c', 'within noise', 'not testable' or 'baseline' from the per-metric verdicts."""
    if row["_is_base"]:
        return "baseline"
    verdicts = {m: row[f"{m}_verdict"] for m in METRICS}
    parts = [f"{v}: {', '.join(m for m in METRICS if verdicts[m] == v)}" for v in ("better", "worse")
             if v in verdicts.values()]
    if parts:
        return "; ".join(parts)
    return "not testable" if all(v == "not testable" for v in verdicts.values()) else "within noise"

"""Across runs: how top-layer noise sensitivity, the theory quantities and the weight spectra relate to the outcomes.

:func:`relation_table` takes the one-row-per-run table of :func:`lnsr_viz.experiments.study.study_runs` and gives,
for every training-set size (runs of different sizes differ in everything, so they are never pooled), every measure
(:data:`MEASURES`) and every outcome (in-domain and out-of-domain accuracy), Spearman's rank correlation over the
runs with a percentile-bootstrap 95% CI (runs resampled), its p-value, and that p-value Holm-adjusted within one
training-set size (all measures x outcomes there). The runs of one setting share their hyper-parameters, so they are
not independent draws of "a model": the CIs describe these runs, not every fine-tuned model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MEASURES", "OUTCOMES", "RELATION_COLUMNS", "relation_table"]

#: The per-run measures related to the outcomes: column of ``study_runs`` -> what it is.
MEASURES: dict[str, str] = {
    "top_sensitivity": "top-layer relative change, 5% Gaussian noise at layer 0 (the probe)",
    "jacobian_fro2": "||J||_F^2 of the top layer w.r.t. layer 0 (Hutchinson)",
    "hessian_trace": "Hessian trace of the training loss, top block and head (Hutchinson)",
    "stability_ratio": "top-layer sensitivity, model / pre-trained base (diagnose)",
    "ww_alpha": "WeightWatcher alpha, mean over layers",
}
#: The outcomes: column of ``study_runs`` -> what it is.
OUTCOMES: dict[str, str] = {"accuracy": "in-domain test accuracy",
                            "ood_accuracy": "out-of-domain accuracy (mean over the sets)"}
#: Columns of :func:`relation_table`.
RELATION_COLUMNS = ("train_size", "measure", "outcome", "n_runs", "rho", "ci_low", "ci_high", "p", "p_holm",
                    "verdict")


def relation_table(runs: pd.DataFrame, *, measures: Mapping[str, str] | Sequence[str] | None = None,
                   outcomes: Mapping[str, str] | Sequence[str] | None = None, alpha: float = 0.05,
                   n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Spearman's rho of each measure with each outcome across runs, per training-set size (module docstring).

    Measures or outcomes that the run table lacks (e.g. runs made without ``analysis=True``) are left out; a
    measure with fewer than 3 runs where it is defined gets NaN. ``verdict``: ``"positive"`` / ``"negative"`` when
    the Holm-adjusted p is below ``alpha``, else ``"within noise"``.
    """
    from scipy import stats

    from ..analysis.stats import bootstrap_ci, holm_adjust, rank_correlation

    if not isinstance(runs, pd.DataFrame) or "train_size" not in runs:
        raise ValueError("relation_table expects the run table of study_runs (with a train_size column).")
    measures = list(measures or MEASURES)
    outcomes = list(outcomes or OUTCOMES)
    measures = [m for m in measures if m in runs and runs[m].notna().any()]
    outcomes = [o for o in outcomes if o in runs and runs[o].notna().any()]
    rows = []
    for size in sorted(runs["train_size"].unique()):
        here = runs[runs["train_size"] == size]
        family = []
        for measure in measures:
            for outcome in outcomes:
                pair = here[[measure, outcome]].apply(pd.to_numeric, errors="coerce").dropna().to_numpy()
                row: dict[str, Any] = {"train_size": int(size), "measure": measure, "outcome": outcome,
                                       "n_runs": len(pair), "rho": math.nan, "ci_low": math.nan,
                                       "ci_high": math.nan, "p": math.nan}
                if len(pair) >= 3 and np.ptp(pair[:, 0]) > 0 and np.ptp(pair[:, 1]) > 0:
                    res = stats.spearmanr(pair[:, 0], pair[:, 1])
                    low, high = bootstrap_ci(pair, statistic=rank_correlation, vectorized=True, n_boot=n_boot,
                                             seed=seed)
                    row.update(rho=float(res.statistic), p=float(res.pvalue), ci_low=low, ci_high=high)
                family.append(row)
        adjusted = holm_adjust([r["p"] for r in family]) if family else []
        for row, p_adj in zip(family, adjusted, strict=True):
            row["p_holm"] = float(p_adj)
            if not math.isfinite(row["p_holm"]):
                row["verdict"] = "not testable"
            elif row["p_holm"] < alpha:
                row["verdict"] = "positive" if row["rho"] > 0 else "negative"
            else:
                row["verdict"] = "within noise"
        rows += family
    return pd.DataFrame(rows, columns=list(RELATION_COLUMNS))

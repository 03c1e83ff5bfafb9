"""Learning curves of a step-budget sweep, and whether the baseline's validation accuracy reached its plateau.

:func:`learning_curves` reads the stored training histories (validation accuracy every ``eval_every`` steps and the
training score on a fixed sample) into one tidy table; :func:`plateau_table` says, per training-set size and setting,
whether the mean validation curve over seeds had stopped rising within the budget. Rule (stated in the write-up):
with the budget cut in thirds, the curve is at its **plateau** when the best mean validation accuracy of the final
third exceeds the best of the first two thirds by no more than ``tolerance`` (default 0.01, one point of accuracy)
or by no more than the standard error over seeds at that point, whichever is larger; otherwise it is **still
rising**. Only histories (validation numbers) are read.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["CURVE_COLUMNS", "PLATEAU_COLUMNS", "learning_curves", "plateau_table"]

#: Columns of :func:`learning_curves`.
CURVE_COLUMNS = ("train_size", "method", "setting", "seed", "run_id", "step", "epoch", "val_accuracy",
                 "train_accuracy", "val_loss", "train_loss", "budget", "kept_step")
#: Columns of :func:`plateau_table`.
PLATEAU_COLUMNS = ("train_size", "method", "setting", "n_seeds", "budget", "best_step", "best_mean", "best_sd",
                   "last_mean", "early_best", "late_best", "late_gain", "allowance", "verdict")


def learning_curves(store: Any) -> pd.DataFrame:
    """One row per stored evaluation point of every fine-tuned run (:data:`CURVE_COLUMNS`), sorted by step.

    ``budget`` is the run's step budget (``train.max_steps``; NaN for epoch-based runs) and ``kept_step`` the step
    whose weights the run kept (``keep_best``; NaN when the last weights were kept).
    """
    from .store import RunStore

    store = store if hasattr(store, "load") else RunStore(store, read_only=True)
    history = store.load_table("history")
    if history.empty:
        raise ValueError(f"{store!r} holds no training histories: run the sweep first.")
    if "step" not in history.columns:
        raise ValueError("the stored histories have no 'step' column: they were made before step budgets existed "
                         "(epoch-based runs); learning curves by step need runs made with train.max_steps.")
    kept = {}
    for run_id in history["run_id"].unique():
        value = store.load(run_id).extra.get("kept_step")
        kept[run_id] = float(value) if isinstance(value, int | float) else math.nan
    out = pd.DataFrame({
        "train_size": history["data.train_size"].astype(int),
        "method": history["method"],
        "setting": history["label"].fillna(history["method"]) if "label" in history else history["method"],
        "seed": history["seed"].astype(int),
        "run_id": history["run_id"],
        "step": history["step"].astype(int),
        "epoch": history["epoch"],
        **{c: pd.to_numeric(history[c], errors="coerce") if c in history else np.nan
           for c in ("val_accuracy", "train_accuracy", "val_loss", "train_loss")},
        "budget": pd.to_numeric(history["train.max_steps"], errors="coerce") if "train.max_steps" in history
        else np.nan,
        "kept_step": history["run_id"].map(kept),
    })
    return out.sort_values(["train_size", "method", "setting", "seed", "step"], kind="stable").reset_index(drop=True)


def plateau_table(curves: pd.DataFrame, *, tolerance: float = 0.01, methods: Any = None) -> pd.DataFrame:
    """Per (train_size, method, setting): did the mean validation curve reach its plateau within the budget?

    See the module docstring for the rule. ``methods`` restricts the rows (e.g. ``['vanilla']``). The budget is the
    runs' ``budget`` (else their last step); points are the steps every seed evaluated.
    """
    if not (isinstance(tolerance, int | float) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number >= 0; got {tolerance!r}.")
    missing = [c for c in ("train_size", "method", "setting", "seed", "step", "val_accuracy") if c not in curves]
    if missing:
        raise ValueError(f"plateau_table needs the columns of learning_curves; missing {missing}.")
    data = curves if methods is None else curves[curves["method"].isin(list(methods))]
    rows = []
    for (size, method, setting), part in data.groupby(["train_size", "method", "setting"], sort=True):
        wide = part.pivot_table(index="step", columns="seed", values="val_accuracy", aggfunc="mean").dropna()
        n = wide.shape[1]
        budget = part["budget"].dropna().max() if "budget" in part and part["budget"].notna().any() else None
        budget = float(budget) if budget is not None else float(wide.index.max())
        row: dict[str, Any] = {"train_size": int(size), "method": method, "setting": setting, "n_seeds": int(n),
                               "budget": budget}
        if wide.empty:
            rows.append({**row, "verdict": "no evaluation shared by all seeds"})
            continue
        mean = wide.mean(axis=1)
        sd = wide.std(axis=1, ddof=1) if n > 1 else pd.Series(np.nan, index=wide.index)
        best = mean.idxmax()
        early, late = mean[mean.index <= budget * 2 / 3], mean[mean.index > budget * 2 / 3]
        row.update(best_step=int(best), best_mean=float(mean[best]), best_sd=float(sd[best]),
                   last_mean=float(mean.iloc[-1]))
        if early.empty or late.empty:
            rows.append({**row, "verdict": "too few evaluations to tell"})
            continue
        late_best_step = late.idxmax()
        gain = float(late.max() - early.max())
        se = float(sd[late_best_step] / math.sqrt(n)) if n > 1 else 0.0
        allowance = max(float(tolerance), se if math.isfinite(se) else 0.0)
        row.update(early_best=float(early.max()), late_best=float(late.max()), late_gain=gain, allowance=allowance,
                   verdict="plateau reached" if gain <= allowance else "still rising")
        rows.append(row)
    return pd.DataFrame(rows, columns=list(PLATEAU_COLUMNS))

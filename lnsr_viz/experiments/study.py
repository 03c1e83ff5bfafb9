"""The study write-up: what a sweep's runs say about LNSR's four claims, with effect sizes, CIs and verdicts.

The paper (Hua et al.) makes four claims for LNSR against plain fine-tuning:

(a) lower top-layer noise sensitivity; (b) higher in-domain accuracy with few training examples; (c) lower variance
over seeds; (d) better out-of-domain accuracy.

:func:`study_runs` reads a sweep's run store into one row per run (its setting, training-set size, seed, in-domain
and out-of-domain metrics, top-layer sensitivity, collapse flag, cost). :func:`study_claims` then picks, for every
training-set size, the LNSR setting with the best mean **validation** accuracy
(:func:`lnsr_viz.experiments.sweep.select_settings`; no test or out-of-domain number is read to choose) and tests each
claim seed by seed against vanilla:

* (a), (b), (d): paired differences over seeds (LNSR - vanilla) with a Student-t 95% CI and the exact paired
  permutation test (:func:`lnsr_viz.analysis.stats.paired_comparison`). **Supported** when the CI excludes zero in the
  claimed direction, **contradicted** when it excludes zero in the other direction, **not shown** (within noise)
  otherwise.
  Top-layer sensitivity is the probe's relative change of the top layer for 5% relative Gaussian noise injected at
  the embedding output (layer 0), averaged over 64 in-domain sentences; out-of-domain accuracy is the mean over the
  out-of-domain sets.
* (c): the seed-to-seed standard deviations of in-domain accuracy, their ratio (LNSR / vanilla) and the
  Brown-Forsythe test of equal spread (Levene's test around the median; with 5 seeds per method it only detects
  large differences). Supported when LNSR's spread is lower with p < 0.05.

:func:`lnsr_viz.viz.reports.write_study` renders the markdown write-up (``docs/study.md``) with its tables, a static
SVG of the sensitivity / out-of-domain figure, and the tidy CSV tables next to the run store;
:func:`lnsr_viz.viz.study_figures.plot_sensitivity_vs_ood` is the interactive (plotly) version of that figure for
notebooks. Every number comes from the stored runs (this module computes them; the presentation lives in viz).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["CLAIMS", "StudyResult", "study_runs", "study_claims", "load_study", "rank_correlation",
           "bench_step_costs", "study_completeness", "check_one_protocol",
           "PROTOCOL_KEYS"]

#: The four claims, as the write-up states them: (measure, column, direction, text).
CLAIMS: dict[str, dict[str, str]] = {
    "a": {"title": "lower top-layer noise sensitivity", "column": "top_sensitivity", "better": "lower"},
    "b": {"title": "higher in-domain accuracy with few training examples", "column": "accuracy", "better": "higher"},
    "c": {"title": "lower variance over seeds (in-domain accuracy)", "column": "accuracy", "better": "lower_sd"},
    "d": {"title": "better out-of-domain accuracy (mean over the out-of-domain sets)", "column": "ood_accuracy",
          "better": "higher"},
}

_RUN_COLUMNS = ["run_id", "method", "setting", "train_size", "seed", "collapsed", "seconds", "val_accuracy",
                "accuracy", "roc_auc", "macro_f1", "ece", "ood_accuracy", "ood_roc_auc", "ood_macro_f1",
                "top_sensitivity", "reg_to_task_ratio", "repr_effective_rank", "repr_mean_cosine", "steps",
                "kept_step", "device", "jacobian_fro2", "hessian_trace", "stability_ratio", "generalisation_gap",
                "calibration_ece", "ww_alpha", "ww_alpha_weighted", "ww_log_spectral_norm"]


@dataclass
class StudyResult:
    """Everything the write-up shows (tidy DataFrames; see each attribute)."""

    #: one row per run (:data:`_RUN_COLUMNS` plus ``<domain>:<metric>`` columns for every evaluation set)
    runs: pd.DataFrame
    #: the chosen setting per method and training-set size, with its mean validation accuracy
    chosen: pd.DataFrame
    #: one row per claim and training-set size: means, sds, difference, CI, p-value, verdict
    claims: pd.DataFrame
    #: one row per setting and training-set size: means over seeds of the main numbers, collapsed runs
    settings: pd.DataFrame
    #: per evaluation set: examples and positive rate (label balance), from the stored metrics
    balance: pd.DataFrame
    #: paired differences of the chosen LNSR setting vs vanilla for every domain and metric
    paired: pd.DataFrame
    #: cost: runs, summed per-run seconds, elapsed wall time between the first and the last stored run
    cost: dict[str, Any] = field(default_factory=dict)
    in_domain: str = ""
    ood: list[str] = field(default_factory=list)
    #: step-budget sweeps only (empty otherwise): the learning curves (:func:`.curves.learning_curves`)
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: whether each setting's mean validation curve reached its plateau (:func:`.curves.plateau_table`)
    plateau: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: every method's chosen setting against the baseline (:func:`~lnsr_viz.experiments.method_table.method_table`)
    methods: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: measures vs outcomes across runs (:func:`~lnsr_viz.experiments.relations.relation_table`)
    relations: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: our ranking beside HyPe's Table 5 (:func:`~lnsr_viz.experiments.rankings.ranking_comparison`)
    ranking: pd.DataFrame = field(default_factory=pd.DataFrame)
    ranking_agreement: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: the step-time ratio to vanilla of each method (from the benchmark JSON), where known
    step_cost: dict[str, float] = field(default_factory=dict)


#: The columns of step-budget (study v2) runs, left out for epoch-based sweeps.
_STEP_RUN_COLUMNS = ("steps", "kept_step", "device", "jacobian_fro2", "hessian_trace", "stability_ratio",
                     "generalisation_gap", "calibration_ece", "ww_alpha", "ww_alpha_weighted", "ww_log_spectral_norm")


def _last(history: pd.DataFrame | None, column: str) -> float:
    if history is None or column not in history or history.empty:
        return math.nan
    values = pd.to_numeric(history.sort_values("epoch")[column], errors="coerce")
    return float(values.iloc[-1]) if len(values) else math.nan


def _validation_at_kept(history: pd.DataFrame | None, extra: dict[str, Any]) -> float:
    """The validation accuracy of the weights the run kept: at ``kept_step`` (keep_best runs), else the last one."""
    kept = extra.get("kept_step")
    if history is not None and "step" in history and isinstance(kept, int | float) and "val_accuracy" in history:
        at = pd.to_numeric(history.loc[history["step"] == kept, "val_accuracy"], errors="coerce").dropna()
        if len(at):
            return float(at.iloc[-1])
    if history is not None and "step" in history and "val_accuracy" in history and len(history):
        ordered = history.sort_values(["epoch", "step"], kind="stable")
        return float(pd.to_numeric(ordered["val_accuracy"], errors="coerce").iloc[-1])
    return _last(history, "val_accuracy")


def _analysis_columns(run: Any) -> dict[str, float]:
    """The per-run numbers of a run's stored analysis (NaN where the run was made without ``analysis=True``)."""
    out = {k: math.nan for k in ("jacobian_fro2", "hessian_trace", "stability_ratio", "generalisation_gap",
                                 "calibration_ece", "ww_alpha", "ww_alpha_weighted", "ww_log_spectral_norm")}
    for key in ("jacobian_fro2", "hessian_trace"):
        value = run.extra.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
    diag = run.tables.get("diagnosis")
    if diag is not None and len(diag):
        values = diag[diag["quantity"] == "value"].set_index("finding")["value"]
        for finding, column in (("stability_vs_base", "stability_ratio"), ("generalisation_gap", "generalisation_gap"),
                                ("calibration", "calibration_ece")):
            if finding in values.index:
                out[column] = float(values[finding])
    ww = run.tables.get("weightwatcher")
    if ww is not None and len(ww):
        for col in ("alpha", "alpha_weighted", "log_spectral_norm"):
            if col in ww:
                vals = pd.to_numeric(ww[col], errors="coerce")
                out[f"ww_{col}"] = float(vals[np.isfinite(vals)].mean())
    return out


def _top_sensitivity(profile: pd.DataFrame | None) -> float:
    """Relative change of the top layer for noise injected at layer 0 (the embedding output)."""
    if profile is None or profile.empty:
        return math.nan
    rows = profile[profile["injection_layer"] == 0]
    if rows.empty:
        return math.nan
    return float(rows.loc[rows["layer"] == rows["layer"].max(), "change_rel"].mean())


#: The parts of a run's configuration that make its protocol: runs of one training-set size must agree on all of them.
PROTOCOL_KEYS = ("model", "data", "probe", "train", "analysis")


def _differing_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the settings where two nested configurations differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differing_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def check_one_protocol(configs: dict[str, dict[str, Any]]) -> None:
    """Refuse a store whose fine-tuned runs of one training-set size were made under different protocols.

    ``configs`` maps run ids to their configurations. A study compares methods under one protocol (model, data,
    probe, training settings, stored analysis); runs of other protocols in the same store would be pooled silently.
    The error names the setting that differs and the runs on each side.
    """
    import json

    groups: dict[tuple[Any, str], list[str]] = {}
    for run_id, cfg in configs.items():
        if cfg.get("method") == "pretrained":
            continue
        protocol = {k: cfg.get(k) for k in PROTOCOL_KEYS}
        size = (cfg.get("data") or {}).get("train_size")
        groups.setdefault((size, json.dumps(protocol, sort_keys=True, default=str)), []).append(run_id)
    by_size: dict[Any, list[tuple[str, list[str]]]] = {}
    for (size, text), ids in groups.items():
        by_size.setdefault(size, []).append((text, sorted(ids)))
    for size, variants in sorted(by_size.items(), key=lambda kv: str(kv[0])):
        if len(variants) < 2:
            continue
        variants.sort(key=lambda v: -len(v[1]))
        differ = _differing_keys(json.loads(variants[0][0]), json.loads(variants[1][0]))
        sides = "; ".join(f"{len(ids)} run(s) such as {', '.join(ids[:3])}" for _, ids in variants)
        raise ValueError(f"the store mixes {len(variants)} protocols at {size} training examples (they differ in "
                         f"{', '.join(differ) or 'their configuration'}): {sides}. A study compares methods under "
                         "one protocol: keep each protocol in its own results folder (the sweep file's results:).")


def study_runs(store: Any) -> pd.DataFrame:
    """One row per stored run of a classification sweep (the pre-trained probe-only runs are left out).

    Reads every table of every run: this is for reporting, after the selection (which reads histories only).
    Refuses a store that mixes protocols at one training-set size (:func:`check_one_protocol`).
    """
    from .store import RunStore

    store = store if hasattr(store, "load") else RunStore(store, read_only=True)
    listing = store.list_runs()
    if listing.empty:
        raise ValueError(f"{store!r} holds no runs: run the sweep first (python -m lnsr_viz sweep CONFIG).")
    rows = []
    loaded = {run_id: store.load(run_id) for run_id in listing["run_id"]}
    check_one_protocol({run_id: run.config for run_id, run in loaded.items()})
    for run_id, run in loaded.items():
        cfg = run.config
        if cfg.get("method") == "pretrained":
            continue
        if cfg.get("kind", "classification") != "classification":
            raise ValueError(f"run {run_id} is a {cfg.get('kind')!r} run; the study covers classification sweeps.")
        data = cfg["data"]
        in_domain = data["in_domain"]
        m = run.metrics
        wide = {f"{d}:{k}": float(v) for d, k, v in zip(m["domain"], m["metric"], m["value"], strict=True)}
        ood = [d for d in data["evaluation"] if d != in_domain]
        row: dict[str, Any] = {
            "run_id": run_id, "method": cfg["method"], "setting": cfg.get("label", cfg["method"]),
            "train_size": int(data["train_size"]), "seed": int(cfg["seed"]),
            "collapsed": bool(run.extra.get("collapsed", False)), "seconds": float(run.extra.get("seconds", np.nan)),
            "val_accuracy": _validation_at_kept(run.history, run.extra),
            "top_sensitivity": _top_sensitivity(run.profile),
            "reg_to_task_ratio": _last(run.history, "reg_to_task_ratio"),
            "repr_effective_rank": _last(run.history, "repr_effective_rank"),
            "repr_mean_cosine": _last(run.history, "repr_mean_cosine"),
            "in_domain": in_domain, "ood_domains": ",".join(sorted(ood)),
            "created_at": run.meta.get("created_at"), "completed_at": run.meta.get("completed_at"),
            "steps": float(run.extra.get("steps", np.nan)), "kept_step": float(run.extra.get("kept_step", np.nan)),
            "device": str(run.extra.get("device", "")),
            **_analysis_columns(run),
        }
        for metric in ("accuracy", "roc_auc", "macro_f1", "ece"):
            row[metric] = wide.get(f"{in_domain}:{metric}", np.nan)
            vals = [wide.get(f"{d}:{metric}", np.nan) for d in ood]
            if metric != "ece":
                row[f"ood_{metric}"] = float(np.nanmean(vals)) if ood and not all(np.isnan(vals)) else np.nan
        row.update(wide)
        rows.append(row)
    if not rows:
        raise ValueError(f"{store!r} holds only pre-trained (probe-only) runs: run the sweep first.")
    df = pd.DataFrame(rows)
    if df["steps"].isna().all():  # epoch-based runs (the first study): its runs.csv keeps the columns it always had
        df = df.drop(columns=[c for c in _STEP_RUN_COLUMNS if c in df])
    front = [c for c in _RUN_COLUMNS if c in df]
    df = df[front + [c for c in df.columns if c not in front]]
    return df.sort_values(["train_size", "method", "setting", "seed"], kind="stable").reset_index(drop=True)


def _verdict(low: float, high: float, better: str) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not testable (fewer than 2 paired seeds)"
    if better == "lower":
        return "supported" if high < 0 else ("contradicted" if low > 0 else "not shown (within noise)")
    return "supported" if low > 0 else ("contradicted" if high < 0 else "not shown (within noise)")


def _brown_forsythe(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan
    return float(stats.levene(a, b, center="median").pvalue)


def _claims_for(runs: pd.DataFrame, size: int, setting: str, role: str, *, baseline: str, method: str,
                metric_cols: list[str], confidence: float) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Claims (a)-(d) for one LNSR setting at one training-set size against the baseline, seed by seed.

    Returns the claim rows and the paired comparison of every domain and metric.
    """
    from ..analysis.stats import paired_comparison

    claim_rows: list[dict[str, Any]] = []

    base = runs[(runs["method"] == baseline) & (runs["train_size"] == size)]
    cand = runs[(runs["setting"] == setting) & (runs["train_size"] == size)]
    tidy = []
    for label, frame in ((baseline, base), (method, cand)):
        for col in ["top_sensitivity", "accuracy", "roc_auc", "ood_accuracy", "ood_roc_auc", *metric_cols]:
            domain, metric = (col.split(":", 1) if ":" in col else
                              ("summary", col))
            tidy.append(pd.DataFrame({"method": label, "seed": frame["seed"].to_numpy(), "domain": domain,
                                      "metric": metric, "value": frame[col].to_numpy(dtype=float)}))
    tidy_df = pd.concat(tidy, ignore_index=True)
    paired = paired_comparison(tidy_df, method=method, baseline=baseline, confidence=confidence)
    paired = paired.assign(train_size=size, setting=setting, role=role)
    for key, claim in CLAIMS.items():
        col = claim["column"]
        a = base[col].to_numpy(dtype=float)
        b = cand[col].to_numpy(dtype=float)
        row: dict[str, Any] = {
            "claim": key, "statement": claim["title"], "train_size": int(size), "setting": setting, "role": role,
            "measure": col, "n_seeds": int(min(np.isfinite(a).sum(), np.isfinite(b).sum())),
            "baseline_mean": float(np.nanmean(a)), "baseline_sd": float(np.nanstd(a, ddof=1)),
            "method_mean": float(np.nanmean(b)), "method_sd": float(np.nanstd(b, ddof=1)),
            "collapsed_runs": int(cand["collapsed"].sum()),
        }
        if claim["better"] == "lower_sd":
            p = _brown_forsythe(a, b)
            ratio = row["method_sd"] / row["baseline_sd"] if row["baseline_sd"] > 0 else math.nan
            row.update(effect=ratio, effect_name="sd ratio (LNSR / vanilla)", ci_low=math.nan, ci_high=math.nan,
                       p_value=p)
            if not np.isfinite(p):
                row["verdict"] = "not testable"
            elif p < 0.05:
                row["verdict"] = "supported" if ratio < 1 else "contradicted"
            else:
                row["verdict"] = "not shown (within noise)"
        else:
            domain = "summary"
            pr = paired[(paired["domain"] == domain) & (paired["metric"] == col)].iloc[0]
            row.update(effect=float(pr["mean_diff"]), effect_name="mean paired difference (LNSR - vanilla)",
                       ci_low=float(pr["ci_low"]), ci_high=float(pr["ci_high"]),
                       p_value=float(pr["p_permutation"]))
            row["verdict"] = _verdict(row["ci_low"], row["ci_high"], claim["better"])
        claim_rows.append(row)
    return claim_rows, paired


def study_claims(store: Any, *, baseline: str = "vanilla", method: str = "lnsr", confidence: float = 0.95,
                 order: Sequence[str] | None = None, step_cost: dict[str, float] | None = None,
                 correction: str = "holm") -> StudyResult:
    """Choose settings on validation accuracy, then test claims (a)-(d) for each training-set size.

    Parameters
    ----------
    store : RunStore or path
        The sweep's run store.
    baseline, method : str
        The method names compared (``method`` - ``baseline``); the chosen ``method`` setting per size is the one
        with the best mean last-epoch validation accuracy over seeds.
    confidence : float
        Level of the confidence intervals.
    order : sequence of str, optional
        The sweep file's settings in order (:func:`lnsr_viz.experiments.sweep.setting_order`): equal validation means
        go to the setting listed first (then to the alphabetically first name).
    step_cost : dict, optional
        Step-time ratio to vanilla per method for the all-methods table (default: :func:`bench_step_costs`).
    correction : {'holm', 'bh', 'none'}
        The all-methods table's multiple-comparison correction (its family: one training-set size).

    For a step-budget sweep (histories with a ``step`` column, e.g. ``configs/study-v2.yaml``) the result also has
    the learning curves and plateau check, the all-methods table, the relations across runs and the comparison with
    HyPe's published ranking; runs that kept their best validation step (``keep_best``) are selected on it.
    """
    from .store import RunStore
    from .sweep import select_settings, sweep_history

    store = store if hasattr(store, "load") else RunStore(store, read_only=True)
    history = sweep_history(store)
    keeps_best = "train.keep_best" in history and history["train.keep_best"].fillna(False).astype(bool).any()
    # reads the training histories only (validation numbers); keep_best runs are judged by the step they kept
    chosen = select_settings(history, order=order, epoch="best" if keeps_best else "last")
    runs = study_runs(store)
    for name in (baseline, method):
        if name not in set(runs["method"]):
            raise ValueError(f"the store has no {name!r} runs; the study compares {method!r} with {baseline!r} "
                             f"(methods present: {sorted(set(runs['method']))}).")
    in_domain = str(runs["in_domain"].iloc[0])
    ood = sorted({d for ds in runs["ood_domains"] for d in ds.split(",") if d})
    claim_rows, paired_frames = [], []
    metric_cols = [c for c in runs.columns if ":" in c and not c.endswith((":n", ":positive_rate"))]
    for size in sorted(runs["train_size"].unique()):
        pick = chosen[(chosen["method"] == method) & (chosen["train_size"] == size)]
        if pick.empty:
            continue
        tied = [t for t in str(pick["tied_with"].iloc[0] if "tied_with" in pick else "").split(", ") if t]
        for role, setting in [("chosen", str(pick["chosen"].iloc[0])), *(("tied", t) for t in tied)]:
            rows, paired = _claims_for(runs, size, setting, role, baseline=baseline, method=method,
                                       metric_cols=metric_cols, confidence=confidence)
            claim_rows += rows
            paired_frames.append(paired)
    claims = pd.DataFrame(claim_rows)
    settings = (runs.groupby(["train_size", "method", "setting"], sort=False)
                .agg(n_runs=("seed", "size"), collapsed_runs=("collapsed", "sum"),
                     val_accuracy=("val_accuracy", "mean"), accuracy=("accuracy", "mean"),
                     accuracy_sd=("accuracy", "std"), roc_auc=("roc_auc", "mean"),
                     ood_accuracy=("ood_accuracy", "mean"), ood_roc_auc=("ood_roc_auc", "mean"),
                     top_sensitivity=("top_sensitivity", "mean"), reg_to_task_ratio=("reg_to_task_ratio", "mean"),
                     repr_effective_rank=("repr_effective_rank", "mean"),
                     repr_mean_cosine=("repr_mean_cosine", "mean"))
                .reset_index())
    chosen_keys = {(int(r.train_size), str(r.chosen)) for r in chosen.itertuples()}
    settings["chosen"] = [(int(s), str(n)) in chosen_keys for s, n in zip(settings["train_size"],
                                                                          settings["setting"], strict=True)]
    balance_rows = []
    for d in [in_domain, *ood]:
        if f"{d}:positive_rate" in runs:
            balance_rows.append({"domain": d, "role": "in-domain" if d == in_domain else "out-of-domain",
                                 "n": int(runs[f"{d}:n"].iloc[0]) if f"{d}:n" in runs else np.nan,
                                 "positive_rate": float(runs[f"{d}:positive_rate"].iloc[0])})
    created = pd.to_datetime(runs["created_at"], errors="coerce", utc=True)
    completed = pd.to_datetime(runs["completed_at"], errors="coerce", utc=True)
    elapsed = (completed.max() - created.min()).total_seconds() if created.notna().any() else math.nan
    cost = {"runs": int(len(runs)), "run_seconds_sum": float(runs["seconds"].sum()),
            "elapsed_seconds": float(elapsed), "first_run": str(created.min()), "last_run": str(completed.max())}
    result = StudyResult(runs=runs, chosen=chosen, claims=claims, settings=settings,
                         balance=pd.DataFrame(balance_rows), paired=pd.concat(paired_frames, ignore_index=True)
                         if paired_frames else pd.DataFrame(), cost=cost, in_domain=in_domain, ood=ood)
    if "step" in history.columns and history["step"].notna().any():  # a step-budget sweep: the v2 write-up's parts
        _add_evidence(result, store, baseline=baseline, step_cost=step_cost, correction=correction)
    return result


def study_completeness(runs: pd.DataFrame, config: dict[str, Any] | None) -> pd.DataFrame:
    """Fine-tuning runs stored and planned (the sweep file's jobs) per training-set size: ``train_size, stored,
    planned, complete``. Without a sweep file, what is stored counts as planned."""
    from .sweep import expand

    stored = runs.groupby("train_size").size().to_dict()
    planned: dict[int, int] = {}
    if config and config.get("methods"):
        for job in expand(config):
            if job.job.method != "pretrained":
                planned[int(job.train_size)] = planned.get(int(job.train_size), 0) + 1
    rows = [{"train_size": int(size), "stored": int(stored.get(size, 0)),
             "planned": int(planned.get(size, stored.get(size, 0)))} for size in sorted(set(stored) | set(planned))]
    out = pd.DataFrame(rows, columns=["train_size", "stored", "planned"])
    out["complete"] = out["stored"] >= out["planned"]
    return out


def bench_step_costs(path: str | os.PathLike[str] | None = None) -> dict[str, float]:
    """Each method's step-time ratio to vanilla from ``make bench``'s JSON (``benchmarks/results/bench_methods.json``
    by default); empty when the file is not there."""
    import json
    from pathlib import Path

    path = Path(path) if path is not None else Path(__file__).resolve().parents[2] / "benchmarks" / "results" / \
        "bench_methods.json"
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text(encoding="utf-8")).get("rows", [])
    return {str(r["method"]): float(r["time_ratio_median"]) for r in rows
            if isinstance(r.get("time_ratio_median"), int | float)}


def _add_evidence(result: StudyResult, store: Any, *, baseline: str, step_cost: dict[str, float] | None,
                  correction: str) -> None:
    """Learning curves, plateau, all-methods table, relations across runs and the published ranking (in place)."""
    from .curves import learning_curves, plateau_table
    from .method_table import method_table
    from .rankings import ranking_comparison
    from .relations import relation_table

    result.curves = learning_curves(store)
    result.plateau = plateau_table(result.curves)
    result.step_cost = dict(bench_step_costs() if step_cost is None else step_cost)
    chosen = result.chosen[result.chosen["train_size"].isin(result.runs["train_size"].unique())]
    result.methods = method_table(result.runs, baseline=baseline, chosen=chosen, cost=result.step_cost,
                                  correction=correction)
    result.relations = relation_table(result.runs)
    result.ranking, result.ranking_agreement = ranking_comparison(result.methods)


def load_study(store: str | os.PathLike[str] | Any, config: str | os.PathLike[str] | None = None,
               **kwargs: Any) -> StudyResult:
    """:func:`study_claims` on a run-store folder, with the tie-break order of the sweep file ``config`` if given."""
    if config is not None and "order" not in kwargs:
        from .sweep import load_sweep_config, setting_order

        kwargs["order"] = setting_order(load_sweep_config(config))
    return study_claims(store, **kwargs)


def rank_correlation(x: pd.Series, y: pd.Series) -> tuple[float, float, int]:
    """Spearman's rank correlation of ``x`` and ``y`` over the rows where both are present: ``(rho, p, n)``.

    NaN ``rho`` and ``p`` with fewer than 3 such rows. The study's figure and write-up quote it for top-layer
    sensitivity against out-of-domain accuracy.
    """
    from scipy import stats

    ok = x.notna() & y.notna()
    if ok.sum() < 3:
        return math.nan, math.nan, int(ok.sum())
    res = stats.spearmanr(x[ok], y[ok])
    return float(res.statistic), float(res.pvalue), int(ok.sum())

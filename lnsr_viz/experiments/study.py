"""The study write-up: what a sweep's runs say about LNSR's four claims, with effect sizes, CIs and verdicts.

The paper (Hua et al.) makes four claims for LNSR against plain fine-tuning:

(a) lower top-layer noise sensitivity; (b) higher in-domain accuracy with few training examples; (c) lower variance
over seeds; (d) better out-of-domain accuracy.

:func:`study_runs` reads a sweep's run store into one row per run (its setting, training-set size, seed, in-domain
and out-of-domain metrics, top-layer sensitivity, collapse flag, cost). :func:`study_claims` then picks, for every
training-set size, the LNSR setting with the best mean **validation** accuracy (:func:`lnsr_viz.experiments.sweep.select_settings`;
no test or out-of-domain number is read to choose) and tests each claim seed by seed against vanilla:

* (a), (b), (d): paired differences over seeds (LNSR - vanilla) with a Student-t 95% CI and the exact paired
  permutation test (:func:`lnsr_viz.analysis.stats.paired_comparison`). **Supported** when the CI excludes zero in the claimed
  direction, **contradicted** when it excludes zero in the other direction, **not shown** (within noise) otherwise.
  Top-layer sensitivity is the probe's relative change of the top layer for 5% relative Gaussian noise injected at
  the embedding output (layer 0), averaged over 64 in-domain sentences; out-of-domain accuracy is the mean over the
  out-of-domain sets.
* (c): the seed-to-seed standard deviations of in-domain accuracy, their ratio (LNSR / vanilla) and the
  Brown-Forsythe test of equal spread (Levene's test around the median; with 5 seeds per method it only detects
  large differences). Supported when LNSR's spread is lower with p < 0.05.

:func:`write_study` renders the markdown write-up (``docs/study.md``) with its tables, a static SVG of the
sensitivity / out-of-domain figure, and the tidy CSV tables next to the run store; :func:`plot_sensitivity_vs_ood`
is the interactive (plotly) version of that figure for notebooks. Every number comes from the stored runs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = ["CLAIMS", "StudyResult", "study_runs", "study_claims", "plot_sensitivity_vs_ood", "write_study",
           "load_study", "setting_colors"]

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
                "top_sensitivity", "reg_to_task_ratio", "repr_effective_rank", "repr_mean_cosine"]


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


def _last(history: pd.DataFrame | None, column: str) -> float:
    if history is None or column not in history or history.empty:
        return math.nan
    values = pd.to_numeric(history.sort_values("epoch")[column], errors="coerce")
    return float(values.iloc[-1]) if len(values) else math.nan


def _top_sensitivity(profile: pd.DataFrame | None) -> float:
    """Relative change of the top layer for noise injected at layer 0 (the embedding output)."""
    if profile is None or profile.empty:
        return math.nan
    rows = profile[profile["injection_layer"] == 0]
    if rows.empty:
        return math.nan
    return float(rows.loc[rows["layer"] == rows["layer"].max(), "change_rel"].mean())


def study_runs(store: Any) -> pd.DataFrame:
    """One row per stored run of a classification sweep (the pre-trained probe-only runs are left out).

    Reads every table of every run: this is for reporting, after the selection (which reads histories only).
    """
    from .store import RunStore

    store = store if hasattr(store, "load") else RunStore(store, read_only=True)
    listing = store.list_runs()
    if listing.empty:
        raise ValueError(f"{store!r} holds no runs: run the sweep first (python -m lnsr_viz sweep CONFIG).")
    rows = []
    for run_id in listing["run_id"]:
        run = store.load(run_id)
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
            "val_accuracy": _last(run.history, "val_accuracy"),
            "top_sensitivity": _top_sensitivity(run.profile),
            "reg_to_task_ratio": _last(run.history, "reg_to_task_ratio"),
            "repr_effective_rank": _last(run.history, "repr_effective_rank"),
            "repr_mean_cosine": _last(run.history, "repr_mean_cosine"),
            "in_domain": in_domain, "ood_domains": ",".join(sorted(ood)),
            "created_at": run.meta.get("created_at"), "completed_at": run.meta.get("completed_at"),
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
                 order: Sequence[str] | None = None) -> StudyResult:
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
        The sweep file's settings in order (:func:`lnsr_viz.experiments.sweep.setting_order`): equal validation means go to the
        setting listed first (then to the alphabetically first name).
    """
    from .store import RunStore
    from .sweep import select_from_store

    store = store if hasattr(store, "load") else RunStore(store, read_only=True)
    chosen = select_from_store(store, order=order)  # reads the training histories only (validation numbers)
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
    return StudyResult(runs=runs, chosen=chosen, claims=claims, settings=settings,
                       balance=pd.DataFrame(balance_rows), paired=pd.concat(paired_frames, ignore_index=True)
                       if paired_frames else pd.DataFrame(), cost=cost, in_domain=in_domain, ood=ood)


def load_study(store: str | os.PathLike[str] | Any, config: str | os.PathLike[str] | None = None,
               **kwargs: Any) -> StudyResult:
    """:func:`study_claims` on a run-store folder, with the tie-break order of the sweep file ``config`` if given."""
    if config is not None and "order" not in kwargs:
        from .sweep import load_sweep_config, setting_order

        kwargs["order"] = setting_order(load_sweep_config(config))
    return study_claims(store, **kwargs)


def _spearman(x: pd.Series, y: pd.Series) -> tuple[float, float, int]:
    from scipy import stats

    ok = x.notna() & y.notna()
    if ok.sum() < 3:
        return math.nan, math.nan, int(ok.sum())
    res = stats.spearmanr(x[ok], y[ok])
    return float(res.statistic), float(res.pvalue), int(ok.sum())


#: Distinct colours for a study's settings (Okabe-Ito, then Paul Tol's muted set); vanilla keeps its usual blue.
_SETTING_PALETTE = ("#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#882255", "#117733", "#999933",
                    "#AA4499", "#44AA99", "#332288", "#DDCC77")


def setting_colors(settings: Any) -> dict[str, str]:
    """One distinct colour per setting, in order of first appearance (``vanilla`` gets the method colour)."""
    from ..viz.figures import color_for

    out: dict[str, str] = {}
    k = 0
    for name in pd.unique(pd.Series(list(settings), dtype=object)):
        if name == "vanilla":
            out[name] = color_for("vanilla")
        else:
            out[name] = _SETTING_PALETTE[k % len(_SETTING_PALETTE)]
            k += 1
    return out


def plot_sensitivity_vs_ood(runs: pd.DataFrame, *, x: str = "top_sensitivity", y: str = "ood_accuracy",
                            title: str | None = None) -> go.Figure:
    """Top-layer noise sensitivity (x) against out-of-domain accuracy (y), one marker per run.

    Colour: the setting; marker: circle / square / diamond per training-set size; collapsed runs are drawn with a
    black cross on top and named in the hover. The title gives Spearman's rank correlation over all runs.
    """
    from ..viz.figures import TEMPLATE

    needed = {x, y, "setting", "train_size", "seed", "collapsed"}
    missing = needed - set(runs.columns)
    if missing:
        raise ValueError(f"plot_sensitivity_vs_ood needs the study_runs columns {sorted(needed)}; missing "
                         f"{sorted(missing)}.")
    symbols = ["circle", "square", "diamond", "triangle-up", "star"]
    sizes = sorted(runs["train_size"].unique())
    colors = setting_colors(runs["setting"])
    fig = go.Figure()
    for setting in pd.unique(runs["setting"]):
        for i, size in enumerate(sizes):
            sub = runs[(runs["setting"] == setting) & (runs["train_size"] == size)]
            if sub.empty:
                continue
            fig.add_trace(go.Scatter(
                x=sub[x], y=sub[y], mode="markers", name=f"{setting}, n={size}", legendgroup=str(setting),
                marker={"color": colors[setting], "symbol": symbols[i % len(symbols)], "size": 9,
                        "line": {"width": 0.5, "color": "white"}},
                customdata=np.column_stack([sub["seed"], sub["collapsed"].map({True: "COLLAPSED", False: ""})]),
                hovertemplate=(f"{setting}<br>train size {size}, seed %{{customdata[0]}}<br>{x} %{{x:.4f}}<br>"
                               f"{y} %{{y:.3f}}<br>%{{customdata[1]}}<extra></extra>")))
    collapsed = runs[runs["collapsed"].astype(bool)]
    if len(collapsed):
        fig.add_trace(go.Scatter(x=collapsed[x], y=collapsed[y], mode="markers", name="collapsed run",
                                 marker={"symbol": "x-thin", "size": 14, "line": {"width": 2, "color": "black"}},
                                 hoverinfo="skip"))
    rho, p, n = _spearman(runs[x], runs[y])
    fig.update_layout(template=TEMPLATE, title=title or (
        f"Top-layer noise sensitivity vs out-of-domain accuracy, {n} runs (Spearman rho = {rho:.2f}, p = {p:.2g})"),
        xaxis_title="top-layer noise sensitivity (relative change, noise at the embeddings)",
        yaxis_title="out-of-domain accuracy (mean over the sets)", legend_title_text="setting, training size")
    return fig


def _svg_scatter(runs: pd.DataFrame, path: Path, *, x: str = "top_sensitivity", y: str = "ood_accuracy") -> Path:
    """The static twin of :func:`plot_sensitivity_vs_ood` (matplotlib SVG) for markdown pages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .store import atomic_write_text

    markers = ["o", "s", "D", "^", "*"]
    sizes = sorted(runs["train_size"].unique())
    colors = setting_colors(runs["setting"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.4), squeeze=False, sharey=True)
    for ax, (i, size) in zip(axes[0], enumerate(sizes), strict=True):
        sub_size = runs[runs["train_size"] == size]
        for setting in pd.unique(runs["setting"]):
            sub = sub_size[sub_size["setting"] == setting]
            if sub.empty:
                continue
            ax.scatter(sub[x], sub[y], c=colors[setting], marker=markers[i % len(markers)], s=36,
                       label=str(setting), edgecolors="white", linewidths=0.5)
        col = sub_size[sub_size["collapsed"].astype(bool)]
        if len(col):
            ax.scatter(col[x], col[y], marker="x", c="black", s=70, linewidths=1.5, label="collapsed run")
        rho, p, n = _spearman(sub_size[x], sub_size[y])
        ax.set_title(f"{size} training examples: Spearman rho = {rho:.2f} (p = {p:.2g}, {n} runs)", fontsize=9)
        ax.set_xlabel("top-layer noise sensitivity (relative change)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("out-of-domain accuracy (mean over sets)")
    handles, labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    ncol = min(3, len(labels))
    rows = math.ceil(len(labels) / ncol)
    fig.set_size_inches(5.2 * len(sizes), 3.9 + 0.22 * rows)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7.5, frameon=False)
    fig.tight_layout(rect=(0, (0.22 * rows + 0.1) / (3.9 + 0.22 * rows), 1, 1))
    import io

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "lnsr_viz-study"}):  # stable element ids: same data, same file
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    return atomic_write_text(path, buf.getvalue())


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 0.1 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def _md_table(df: pd.DataFrame, columns: Mapping[str, str], digits: int = 3) -> str:
    head = "| " + " | ".join(columns.values()) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(_fmt(row[c], digits).replace("|", "/") for c in columns) + " |"
            for _, row in df.iterrows()]
    return "\n".join([head, sep, *body])


def _claim_sentence(row: pd.Series) -> str:
    meas = {"top_sensitivity": "top-layer sensitivity", "accuracy": "in-domain accuracy",
            "ood_accuracy": "out-of-domain accuracy"}[row["measure"]]
    if row["claim"] == "c":
        return (f"in-domain accuracy sd over seeds {row['baseline_sd']:.3f} (vanilla) vs {row['method_sd']:.3f} "
                f"(LNSR), ratio {_fmt(row['effect'], 2)}, Brown-Forsythe p = {_fmt(row['p_value'], 2)}")
    rel = row["effect"] / row["baseline_mean"] if row["baseline_mean"] else math.nan
    return (f"{meas} {row['baseline_mean']:.4g} (vanilla) vs {row['method_mean']:.4g} (LNSR); difference "
            f"{row['effect']:+.3g} ({rel:+.1%} of vanilla's) [95% CI {row['ci_low']:+.3g}, {row['ci_high']:+.3g}], "
            f"paired permutation p = {_fmt(row['p_value'], 2)} over {row['n_seeds']} seeds")


def _verdict_table(claims: pd.DataFrame) -> str:
    """Claims as rows, training-set sizes as columns, the chosen setting's verdict in each cell."""
    main = claims[claims["role"] == "chosen"]
    sizes = sorted(main["train_size"].unique())
    head = "| claim | " + " | ".join(f"{s} examples" for s in sizes) + " |"
    sep = "| --- | " + " | ".join("---" for _ in sizes) + " |"
    body = []
    for key, claim in CLAIMS.items():
        cells = []
        for size in sizes:
            row = main[(main["claim"] == key) & (main["train_size"] == size)]
            cells.append(f"{row['verdict'].iloc[0]} (`{row['setting'].iloc[0]}`)" if len(row) else "–")
        body.append(f"| ({key}) {claim['title']} | " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def write_study(store: str | os.PathLike[str] | Any, out: str | os.PathLike[str] = "docs/study.md", *,
                config: Mapping[str, Any] | None = None, config_path: str | None = None,
                figure: str | os.PathLike[str] | None = None, tables: str | os.PathLike[str] | None = None,
                result: StudyResult | None = None) -> Path:
    """Write the study's markdown write-up, its static figure and its tidy tables; return the markdown path.

    Parameters
    ----------
    store : RunStore or path
        The sweep's run store (e.g. ``results/study``).
    out : path
        The markdown file.
    config, config_path : optional
        The sweep configuration (shown in the write-up) and the file it came from.
    figure : path, optional
        The SVG (default: ``<out stem>-sensitivity-vs-ood.svg`` next to ``out``).
    tables : folder, optional
        Where the tidy CSV tables go (default: ``<store>/tables``).
    """
    from .store import RunStore, atomic_write_csv, atomic_write_text

    store = store if hasattr(store, "load") else RunStore(store, read_only=True)
    res = result or study_claims(store)
    out = Path(out)
    figure = Path(figure) if figure else out.with_name(f"{out.stem}-sensitivity-vs-ood.svg")
    tables = Path(tables) if tables else Path(store.root) / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    for name in ("runs", "chosen", "claims", "settings", "balance", "paired"):
        atomic_write_csv(tables / f"{name}.csv", getattr(res, name))
    _svg_scatter(res.runs, figure)
    runs = res.runs
    rho, p, n = _spearman(runs["top_sensitivity"], runs["ood_accuracy"])
    n_collapsed = int(runs["collapsed"].sum())
    cfg = dict(config or {})
    hours = res.cost["run_seconds_sum"] / 3600
    main = res.claims[res.claims["role"] == "chosen"] if len(res.claims) else res.claims
    n_seeds = int(main["n_seeds"].min()) if len(main) else 0
    lines = [
        "# The study: where LNSR helps and where it does not",
        "",
        "*Generated by `python -m lnsr_viz study "
        f"{config_path or 'CONFIG'}` from the run store `{store.root}`; every number below comes from those runs. "
        "Do not edit by hand: rerun the command.*",
        "",
        "## What was run",
        "",
        f"- {res.cost['runs']} fine-tuning runs (plus one probe-only run of the pre-trained model per training-set "
        f"size): `{cfg.get('model', 'the model')}` fine-tuned on `{res.in_domain}` with training-set sizes "
        f"{', '.join(map(str, sorted(runs['train_size'].unique())))} and seeds "
        f"{', '.join(map(str, sorted(runs['seed'].unique())))}; out-of-domain sets: {', '.join(res.ood)}.",
        f"- Settings: {', '.join(f'`{s}`' for s in pd.unique(runs['setting']))}.",
    ]
    if cfg.get("train"):
        lines.append(f"- Training: {', '.join(f'{k} {v}' for k, v in dict(cfg['train']).items())}.")
    lines += [
        f"- Cost: the runs' own wall-clock times sum to {hours:.2f} hours ({res.cost['run_seconds_sum'] / 60:.0f} "
        f"min); the store's first run started {res.cost['first_run']} and its last finished {res.cost['last_run']} "
        f"({res.cost['elapsed_seconds'] / 3600:.2f} h elapsed, with whatever parallelism was used).",
        "",
        "## Verdicts at a glance",
        "",
        _verdict_table(res.claims),
        "",
        "## Selection rule (no peeking)",
        "",
        "For every training-set size the LNSR setting with the highest **validation** accuracy (last epoch, mean over "
        "seeds) is chosen; ties (equal means) go to the setting listed first in the sweep file. The rule reads the "
        "training histories "
        "only (`lnsr_viz.experiments.sweep.select_settings`; a test proves that it never touches test or out-of-domain numbers). "
        "All claims below compare that chosen setting with vanilla, seed by seed.",
        "",
        _md_table(res.chosen, {"method": "method", "train_size": "train size", "chosen": "chosen setting",
                               "mean_val_accuracy": "mean validation accuracy", "n_seeds": "seeds",
                               "tied_with": "tied with (lost the tie-break)"}),
        "",
        "## The four claims",
        "",
        "Verdicts: **supported** when the 95% CI of the paired difference excludes zero in the claimed direction, "
        "**contradicted** when it excludes zero in the other direction, **not shown (within noise)** otherwise. For "
        "(c) the Brown-Forsythe test of equal spread decides (p < 0.05). "
        f"With {n_seeds} seeds the exact paired permutation test cannot go below p = {2 / 2 ** n_seeds:.3g}, so the "
        f"CI is the deciding criterion. {len(main)} verdicts are drawn here, so at the 5% level about "
        f"{0.05 * len(main):.1f} spurious 'supported' or 'contradicted' verdicts are expected by chance alone.",
        "",
    ]
    for key, claim in CLAIMS.items():
        rows = res.claims[res.claims["claim"] == key]
        lines.append(f"### ({key}) {claim['title']}")
        lines.append("")
        for _, row in rows.iterrows():
            if row["role"] == "chosen":
                lines.append(f"- **{row['train_size']} examples** (`{row['setting']}`): **{row['verdict']}**. "
                             f"{_claim_sentence(row)}."
                             + (f" {row['collapsed_runs']} of the chosen setting's runs collapsed."
                                if row["collapsed_runs"] else ""))
            else:
                lines.append(f"  - The setting that tied on validation accuracy and lost the tie-break, "
                             f"`{row['setting']}`, would read: {row['verdict']}. {_claim_sentence(row)}.")
        lines.append("")
    lines += [
        "## Noise sensitivity and out-of-domain accuracy across all runs",
        "",
        f"![top-layer noise sensitivity vs out-of-domain accuracy]({figure.name})",
        "",
        f"Across all {n} fine-tuned runs (every setting and size), Spearman's rank correlation between top-layer "
        f"noise sensitivity and mean out-of-domain accuracy is rho = {rho:.2f} (p = {_fmt(p, 2)}). Within a "
        "training-set size the panels give their own correlation. A correlation across settings says nothing causal: "
        "settings differ in how far they trained. "
        + (f"Crosses mark the {n_collapsed} runs whose representations collapsed (collapse guard). " if n_collapsed
           else "No run crossed the collapse guard's thresholds (a crossed-out marker would show it). ")
        + "The interactive version is in `notebooks/06_study.ipynb`.",
        "",
        "## Every setting (means over seeds)",
        "",
        "Validation accuracy chose the setting; the other columns were read afterwards. `chosen` marks the chosen "
        "setting; `collapsed` counts runs the collapse guard flagged; `penalty/task` is the regulariser's share of "
        "the task loss at the last epoch; `eff. rank` and `mean cos` describe how spread out the top-layer "
        "sentence representations of 64 validation sentences were after the last epoch (the guard flags a run "
        "when the effective rank falls below a quarter of its value before training or the mean pairwise cosine "
        "exceeds 0.98; thresholds fixed before the study).",
        "",
        _md_table(res.settings, {"train_size": "size", "setting": "setting", "chosen": "chosen",
                                 "n_runs": "runs", "collapsed_runs": "collapsed",
                                 "val_accuracy": "val acc", "accuracy": "in-domain acc", "accuracy_sd": "sd",
                                 "roc_auc": "in-domain AUC", "ood_accuracy": "OOD acc", "ood_roc_auc": "OOD AUC",
                                 "top_sensitivity": "top sensitivity", "reg_to_task_ratio": "penalty/task",
                                 "repr_effective_rank": "eff. rank", "repr_mean_cosine": "mean cos"}),
        "",
        "## Per domain, chosen LNSR setting minus vanilla",
        "",
        "Accuracy depends on the decision threshold; ROC AUC does not (it measures ranking only). The label balance "
        "of each evaluation set is in the next table: where it is far from 0.5, accuracy moves with any shift of "
        "the model's bias, while AUC does not.",
        "",
    ]
    per_domain = res.paired[res.paired["metric"].isin(["accuracy", "roc_auc", "macro_f1", "ece"])
                            & (res.paired["domain"] != "summary") & (res.paired["role"] == "chosen")]
    lines += [
        _md_table(per_domain, {"train_size": "size", "domain": "domain", "metric": "metric", "n_pairs": "seeds",
                               "mean_diff": "difference", "ci_low": "CI low", "ci_high": "CI high",
                               "p_permutation": "p"}),
        "",
        "### Label balance of the evaluation sets",
        "",
        _md_table(res.balance, {"domain": "domain", "role": "role", "n": "examples", "positive_rate": "positive rate"}),
        "",
        "## Tables",
        "",
        f"The tidy CSV tables behind this page are in `{tables.as_posix()}/` (`runs.csv`: one row per run; "
        "`claims.csv`, `settings.csv`, `paired.csv`, `chosen.csv`, `balance.csv`).",
        "",
    ]
    text = "\n".join(lines)
    return atomic_write_text(out, text)

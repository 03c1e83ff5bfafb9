"""The study's figure: top-layer noise sensitivity against out-of-domain accuracy, one marker per run.

:func:`plot_sensitivity_vs_ood` is the interactive (plotly) figure for notebooks; :func:`write_sensitivity_svg` is
its static twin (matplotlib SVG, byte-stable: the same runs give the same file) for the markdown write-up
(:func:`lnsr_viz.viz.reports.write_study`). Both take the table of :func:`lnsr_viz.experiments.study.study_runs`;
the correlation in their titles is :func:`lnsr_viz.experiments.study.rank_correlation`, the same number the
write-up states. :func:`setting_colors` gives every setting of a study its own colour in both.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..experiments.study import rank_correlation
from ..utils.io import atomic_write_text
from .style import TEMPLATE, color_for

__all__ = ["SETTING_PALETTE", "setting_colors", "plot_sensitivity_vs_ood", "write_sensitivity_svg",
           "plot_learning_curves", "write_learning_curves_svg", "claims_view"]

#: Distinct colours for a study's settings (Okabe-Ito, then Paul Tol's muted set); vanilla keeps its usual blue.
SETTING_PALETTE = ("#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#882255", "#117733", "#999933",
                   "#AA4499", "#44AA99", "#332288", "#DDCC77")


def setting_colors(settings: Any) -> dict[str, str]:
    """One distinct colour per setting, in order of first appearance (``vanilla`` gets the method colour)."""
    out: dict[str, str] = {}
    k = 0
    for name in pd.unique(pd.Series(list(settings), dtype=object)):
        if name == "vanilla":
            out[name] = color_for("vanilla")
        else:
            out[name] = SETTING_PALETTE[k % len(SETTING_PALETTE)]
            k += 1
    return out


#: Readable names of the study_runs columns that the scatter may draw (axis titles, title, hover).
STUDY_COLUMN_LABELS: dict[str, str] = {
    "top_sensitivity": "top-layer noise sensitivity",
    "ood_accuracy": "out-of-domain accuracy (mean over sets)",
    "ood_roc_auc": "out-of-domain ROC AUC (mean over sets)",
    "ood_macro_f1": "out-of-domain macro-F1 (mean over sets)",
    "accuracy": "in-domain accuracy",
    "roc_auc": "in-domain ROC AUC",
    "macro_f1": "in-domain macro-F1",
    "ece": "in-domain expected calibration error",
    "val_accuracy": "validation accuracy",
    "reg_to_task_ratio": "regulariser-to-task loss ratio",
    "repr_effective_rank": "effective rank of the representations",
    "repr_mean_cosine": "mean cosine between representations",
    "jacobian_fro2": "Jacobian ||J||²_F per token",
    "hessian_trace": "Hessian trace of the training loss",
    "generalisation_gap": "generalisation gap",
    "stability_ratio": "stability vs the pre-trained model (ratio)",
    "ww_alpha": "WeightWatcher alpha (mean over layers)",
}


def study_column_label(column: str) -> str:
    """The readable name of a study_runs column (:data:`STUDY_COLUMN_LABELS`), else the name with spaces."""
    return STUDY_COLUMN_LABELS.get(column, str(column).replace("_", " "))


def plot_sensitivity_vs_ood(runs: pd.DataFrame, *, x: str = "top_sensitivity", y: str = "ood_accuracy",
                            title: str | None = None) -> go.Figure:
    """Column ``x`` (default: top-layer noise sensitivity) against column ``y`` (default: out-of-domain accuracy),
    one marker per run.

    Colour: the setting; marker: circle / square / diamond per training-set size; collapsed runs are drawn with a
    black cross on top and named in the hover. The title and the axis titles name ``x`` and ``y``
    (:func:`study_column_label`); the title gives Spearman's rank correlation over all runs.
    """
    needed = {x, y, "setting", "train_size", "seed", "collapsed"}
    missing = needed - set(runs.columns)
    if missing:
        raise ValueError(f"plot_sensitivity_vs_ood needs the study_runs columns {sorted(needed)}; missing "
                         f"{sorted(missing)}.")
    x_name, y_name = study_column_label(x), study_column_label(y)
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
                hovertemplate=(f"{setting}<br>train size {size}, seed %{{customdata[0]}}<br>{x_name} %{{x:.4f}}"
                               f"<br>{y_name} %{{y:.3f}}<br>%{{customdata[1]}}<extra></extra>")))
    collapsed = runs[runs["collapsed"].astype(bool)]
    if len(collapsed):
        fig.add_trace(go.Scatter(x=collapsed[x], y=collapsed[y], mode="markers", name="collapsed run",
                                 marker={"symbol": "x-thin", "size": 14, "line": {"width": 2, "color": "black"}},
                                 hoverinfo="skip"))
    rho, p, n = rank_correlation(runs[x], runs[y])
    unit = {"top_sensitivity": " (relative change, noise at the embeddings)"}
    fig.update_layout(template=TEMPLATE, title=title or (
        f"{x_name[:1].upper()}{x_name[1:]} vs {y_name}, {n} runs (Spearman rho = {rho:.2f}, p = {p:.2g})"),
        xaxis_title=x_name + unit.get(x, ""), yaxis_title=y_name + unit.get(y, ""),
        legend_title_text="setting, training size")
    return fig


def write_sensitivity_svg(runs: pd.DataFrame, path: str | Path, *, x: str = "top_sensitivity",
                          y: str = "ood_accuracy") -> Path:
    """Write the static twin of :func:`plot_sensitivity_vs_ood` (matplotlib SVG, one panel per training-set size)
    to ``path`` atomically and return it. Byte-stable: fixed element ids and no date in the file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        rho, p, n = rank_correlation(sub_size[x], sub_size[y])
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
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "lnsr_viz-study"}):  # stable element ids: same data, same file
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    return atomic_write_text(Path(path), buf.getvalue())


def _mean_curves(curves: pd.DataFrame, methods: Any) -> pd.DataFrame:
    """Mean and sd over seeds of the validation accuracy per size, setting and step (the steps every seed has)."""
    data = curves if methods is None else curves[curves["method"].isin(list(methods))]
    stats = (data.groupby(["train_size", "setting", "step"])["val_accuracy"]
             .agg(mean="mean", sd="std", n="count").reset_index())
    full = stats.groupby(["train_size", "setting"])["n"].transform("max")
    return stats[stats["n"] == full]


def plot_learning_curves(curves: pd.DataFrame, *, methods: Any = ("vanilla",)) -> go.Figure:
    """Validation accuracy against optimizer step, mean over seeds with a +-1 sd band, one panel per training-set
    size (``curves``: :func:`lnsr_viz.experiments.curves.learning_curves`; ``methods=None``: every setting)."""
    from plotly.subplots import make_subplots

    stats = _mean_curves(curves, methods)
    sizes = sorted(stats["train_size"].unique())
    colors = setting_colors(stats["setting"])
    fig = make_subplots(rows=1, cols=max(len(sizes), 1), subplot_titles=[f"{s} training examples" for s in sizes])
    for col, size in enumerate(sizes, start=1):
        for setting, part in stats[stats["train_size"] == size].groupby("setting", sort=False):
            sd = part["sd"].fillna(0.0)
            fig.add_trace(go.Scatter(x=list(part["step"]) + list(part["step"][::-1]),
                                     y=list(part["mean"] + sd) + list((part["mean"] - sd)[::-1]), fill="toself",
                                     line={"width": 0}, fillcolor=colors[setting], opacity=0.15, hoverinfo="skip",
                                     showlegend=False), row=1, col=col)
            fig.add_trace(go.Scatter(x=part["step"], y=part["mean"], mode="lines+markers", name=str(setting),
                                     line={"color": colors[setting]}, legendgroup=str(setting),
                                     showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="optimizer step", row=1, col=col)
    fig.update_yaxes(title_text="validation accuracy (mean over seeds, band: ±1 sd)", row=1, col=1)
    fig.update_layout(template=TEMPLATE, title="Learning curves (validation accuracy during training)")
    return fig


def write_learning_curves_svg(curves: pd.DataFrame, path: str | Path, *, methods: Any = ("vanilla",)) -> Path:
    """Static twin of :func:`plot_learning_curves` (matplotlib SVG, byte-stable) for the markdown write-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = _mean_curves(curves, methods)
    sizes = sorted(stats["train_size"].unique())
    colors = setting_colors(stats["setting"])
    fig, axes = plt.subplots(1, max(len(sizes), 1), figsize=(4.6 * max(len(sizes), 1), 3.6), squeeze=False,
                             sharey=True)
    for ax, size in zip(axes[0], sizes, strict=False):
        for setting, part in stats[stats["train_size"] == size].groupby("setting", sort=False):
            sd = part["sd"].fillna(0.0)
            ax.fill_between(part["step"], part["mean"] - sd, part["mean"] + sd, color=colors[setting], alpha=0.15,
                            linewidth=0)
            ax.plot(part["step"], part["mean"], marker="o", markersize=3, color=colors[setting], label=str(setting))
        ax.set_title(f"{size} training examples", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False, loc="lower right")
    axes[0][0].set_ylabel("validation accuracy (mean, ±1 sd)")
    fig.tight_layout()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "lnsr_viz-study"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    return atomic_write_text(Path(path), buf.getvalue())


def claims_view(claims: pd.DataFrame, *, digits: int = 3) -> pd.DataFrame:
    """The study's claims table as a reader needs it at notebook width: the verdict first, then the claim, the
    effect with its CI in one cell, p and the setting; the long ``statement`` and the raw means left out.

    ``claims`` is :func:`lnsr_viz.experiments.study.study_claims`'s ``claims`` table (``claim, verdict, effect,
    ci_low, ci_high``; ``train_size, setting, role, p_value, statement`` used when present).
    """
    from .style import check_frame, format_number

    df = check_frame(claims, "claims", "claims_view", ["claim", "verdict", "effect", "ci_low", "ci_high"])

    def effect(r: pd.Series) -> str:
        value = float(r["effect"])
        if not math.isfinite(value):
            return "–"
        lo, hi = float(r["ci_low"]), float(r["ci_high"])
        ci = f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
        return f"{value:+.{digits}f}{ci}"

    out = pd.DataFrame({"verdict": df["verdict"].astype(str), "claim": df["claim"].astype(str)})
    if "statement" in df.columns:
        out["claim"] = [f"({c}) {s}" for c, s in zip(df["claim"], df["statement"])]
    for col in ("train_size", "setting", "role"):
        if col in df.columns:
            out[col.replace("_", " ")] = df[col].to_numpy()
    out["effect [95% CI]"] = [effect(r) for _, r in df.iterrows()]
    if "p_value" in df.columns:
        out["p"] = [format_number(round(float(p), digits)) if math.isfinite(float(p)) else "–"
                    for p in df["p_value"]]
    return out.reset_index(drop=True)

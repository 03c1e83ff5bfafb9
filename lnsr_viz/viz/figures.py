"""Plot functions: a tidy DataFrame in, a :class:`plotly.graph_objects.Figure` out.

Every function here is pure: it never shows, saves or mutates its input. Figures are
returned so that notebooks, reports (:mod:`lnsr_viz.viz.report`) and dashboards can rewire them,
and so tests can assert on ``fig.data`` / ``fig.layout`` instead of pixels.

Conventions shared by every figure (plotly-express style):

* the same argument names everywhere (``metric``, ``color``, ``noise``, ``scale``,
  ``injection_layer``, ``model``, ``title``, ``in_domain``);
* one colour per method or model label, everywhere (:data:`METHOD_COLORS`, :func:`color_for`; the shared look
  and checks live in :mod:`lnsr_viz.viz.style`);
* a title that says what is shown, axis titles with units, ``template="plotly_white"`` and
  hover text on every data trace;
* inputs are checked first: a missing column raises a ``ValueError`` listing the expected
  and the present columns, an empty frame raises a ``ValueError`` naming what produced nothing.

The input tables follow the contracts in ``docs/architecture.md`` (stability profile,
metrics, history, summary over seeds, paired comparison).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..utils.io import atomic_write_bytes
from ..utils.validation import check_choice
from .style import (
    FALLBACK_COLORS,
    LAYER_AXIS,
    METHOD_COLORS,
    STABILITY_METRICS,
    TEMPLATE,
    aggregate_layers,
    check_frame,
    ci_band,
    color_for,
    format_cell,
    format_number,
    is_weak_evidence,
    legend_below,
    mean_ci,
    metric_label,
    readable,
    select_rows,
    unique,
    wrap_text,
)

__all__ = [
    "history_axis",
    "FALLBACK_COLORS",  # re-exported from lnsr_viz.viz.style, the home of the shared look
    "METHOD_COLORS",
    "TEMPLATE",
    "color_for",
    "plot_generalisation_gap",
    "plot_metric_by_domain",
    "plot_paired_differences",
    "plot_profile_heatmap",
    "plot_stability_curves",
    "plot_training_curves",
    "save_figure",
    "stats_table_figure",
]


_IMAGE_FORMATS = ("png", "svg", "pdf")
_FORMATS = ("html", *_IMAGE_FORMATS)


# --------------------------------------------------------------------------------------------
# layout helpers


def _domain_order(domains: Iterable[Any], in_domain: str | None) -> list[Any]:
    """The in-domain domain first, then the others in the order given."""
    order = unique(domains)
    if in_domain is not None and in_domain in order:
        order.remove(in_domain)
        order.insert(0, in_domain)
    return order


def _offsets(n: int, step: float) -> list[float]:
    """Centred offsets ``[-step*(n-1)/2, ..., +step*(n-1)/2]`` for grouping methods."""
    return [(j - (n - 1) / 2) * step for j in range(n)]


# --------------------------------------------------------------------------------------------
# stability profile


def plot_stability_curves(
    profile: pd.DataFrame,
    *,
    metric: Literal["change_rel", "change_l2"] = "change_rel",
    injection_layer: int | None = 0,
    color: str = "model",
    noise: str | None = None,
    scale: float | None = None,
    log_y: bool = False,
    title: str | None = None,
) -> go.Figure:
    """Noise-propagation curves in the style of Figure 1 of Hua et al. (LNSR).

    For noise injected at ``injection_layer`` (k), plot the mean change of the hidden state at
    every layer l >= k: one line per value of the ``color`` column (``model`` by default, or
    ``method`` for experiment tables) with a semi-transparent 95 % CI band in the line's colour.

    Aggregation. When a ``(color, layer)`` pair has several rows -- e.g. one per seed -- rows
    are first averaged within each seed (if there is a ``seed`` column), then the line is the
    mean over seeds and the band is a 95 % Student-t interval over seeds (the seed-to-seed
    spread, which is what matters when comparing fine-tuning methods). With a single row the
    band is that row's own 95 % CI over examples. The hover text says which of the two it is.

    Parameters
    ----------
    profile : DataFrame
        Stability profile (``docs/architecture.md``): at least ``color``, ``injection_layer``,
        ``layer``, ``noise``, ``scale``, ``{metric}``, ``{metric}_ci_low``, ``{metric}_ci_high``.
    metric : {'change_rel', 'change_l2'}, default='change_rel'
        Relative change ||h~_l - h_l|| / ||h_l|| or absolute L2 change.
    injection_layer : int or None, default=0
        Layer k where noise was injected; None is allowed only if the frame has one k.
    color : str, default='model'
        Column that defines the lines (and their colours, see :func:`color_for`).
    noise, scale : optional
        Keep only this noise kind / scale; required when the frame holds several.
    log_y : bool, default=False
        Logarithmic y axis (bounds <= 0 are not drawn on a log axis).
    title : str, optional
        Overrides the generated title.
    """
    func = "plot_stability_curves"
    check_choice("metric", metric, STABILITY_METRICS, owner=func)
    lo_col, hi_col = f"{metric}_ci_low", f"{metric}_ci_high"
    required = [color, "injection_layer", "layer", "noise", "scale", metric, lo_col, hi_col]
    df = check_frame(profile, "profile", func, list(dict.fromkeys(required)))
    df = select_rows(df, "injection_layer", injection_layer, func=func, param="injection_layer", what="the profile")
    df = select_rows(df, "noise", noise, func=func, param="noise", what="the profile")
    df = select_rows(df, "scale", scale, func=func, param="scale", what="the profile")
    if "scale_kind" in df.columns:
        select_rows(df, "scale_kind", None, func=func, param="scale_kind", what="the profile")
    k = unique(df["injection_layer"])[0]
    noise_v, scale_v = unique(df["noise"])[0], unique(df["scale"])[0]
    scale_kind = unique(df["scale_kind"])[0] if "scale_kind" in df.columns else ""

    fig = go.Figure()
    has_seed = "seed" in df.columns
    for value in unique(df[color]):
        sub = df.loc[df[color] == value]
        rows = aggregate_layers(sub, metric, lo_col, hi_col, has_seed=has_seed)
        line_color = color_for(value)
        band = ci_band(
            rows["layer"], rows["low"], rows["high"], color=line_color, name=f"{value} 95% CI", group=str(value)
        )
        if band is not None:
            fig.add_trace(band)
        custom = [list(t) for t in zip(rows["low"], rows["high"], rows["band_kind"], rows["layer_name"])]
        fig.add_trace(
            go.Scatter(
                x=rows["layer"],
                y=rows["mean"],
                mode="lines+markers",
                name=str(value),
                legendgroup=str(value),
                line={"color": line_color, "width": 2.5},
                marker={"color": line_color, "size": 7},
                customdata=custom,
                hovertemplate=(
                    f"<b>{color}={value}</b><br>layer %{{x}} (%{{customdata[3]}})<br>"
                    f"mean {metric} = %{{y:.4g}}<br>"
                    "band [%{customdata[0]:.4g}, %{customdata[1]:.4g}]: %{customdata[2]}<extra></extra>"
                ),
            )
        )

    fig.add_vline(x=k, line_dash="dot", line_color="#888888", annotation_text=f"noise injected (k={k})")
    kind = f" {scale_kind}" if scale_kind else ""
    default_title = (
        f"How {readable(noise_v)} noise (scale {format_number(scale_v)}{kind}) injected at layer {k} propagates: "
        f"{'relative' if metric == 'change_rel' else 'L2'} change at each higher layer, mean with 95% CI"
    )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title or default_title},
        legend_title_text=readable(color),
        hovermode="closest",
    )
    fig.update_xaxes(title_text=LAYER_AXIS, dtick=1)
    fig.update_yaxes(title_text=metric_label(metric), type="log" if log_y else "linear")
    return fig


def plot_profile_heatmap(
    profile: pd.DataFrame,
    *,
    metric: Literal["change_rel", "change_l2"] = "change_rel",
    model: str | None = None,
    noise: str | None = None,
    scale: float | None = None,
    title: str | None = None,
) -> go.Figure:
    """Heatmap of the full stability profile of one model: injection layer k x measured layer l.

    Each cell is the mean ``metric`` at layer l after noise at layer k (averaged over any
    repeated rows, e.g. seeds). Cells with l < k do not exist and are left blank.

    Parameters
    ----------
    profile : DataFrame
        Stability profile with ``model``, ``injection_layer``, ``layer``, ``noise``, ``scale``, ``{metric}``.
    metric : {'change_rel', 'change_l2'}, default='change_rel'
    model : str, optional
        Which model to show; required when the frame holds several.
    noise, scale : optional
        Keep only this noise kind / scale; required when the frame holds several.
    title : str, optional
    """
    func = "plot_profile_heatmap"
    check_choice("metric", metric, STABILITY_METRICS, owner=func)
    df = check_frame(profile, "profile", func, ["model", "injection_layer", "layer", "noise", "scale", metric])
    df = select_rows(df, "model", model, func=func, param="model", what="the profile")
    df = select_rows(df, "noise", noise, func=func, param="noise", what="the profile")
    df = select_rows(df, "scale", scale, func=func, param="scale", what="the profile")
    model_v, noise_v, scale_v = (unique(df[c])[0] for c in ("model", "noise", "scale"))
    grid = df.pivot_table(index="injection_layer", columns="layer", values=metric, aggfunc="mean", sort=True)
    counts = df.pivot_table(index="injection_layer", columns="layer", values=metric, aggfunc="count", sort=True)
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(dtype=float),
            x=[int(c) for c in grid.columns],
            y=[int(i) for i in grid.index],
            customdata=counts.to_numpy(dtype=float),
            colorscale="Viridis",
            colorbar={"title": {"text": "relative change (ratio)" if metric == "change_rel" else "L2 change"}},
            hoverongaps=False,
            hovertemplate=(
                "noise injected at layer %{y}<br>measured at layer %{x}<br>"
                f"mean {metric} = %{{z:.4g}} (mean of %{{customdata}} rows)<extra>{model_v}</extra>"
            ),
            name=str(model_v),
        )
    )
    default_title = (
        f"Stability profile of {model_v}: mean {metric} at layer l (x) after {noise_v} noise "
        f"(scale {format_number(scale_v)}) injected at layer k (y)"
    )
    fig.update_layout(template=TEMPLATE, title={"text": title or default_title})
    fig.update_xaxes(title_text="layer l where the change is measured (0 = embeddings)", dtick=1)
    fig.update_yaxes(title_text="injection layer k (0 = embeddings)", dtick=1)
    return fig


# --------------------------------------------------------------------------------------------
# metrics per domain


def plot_metric_by_domain(
    metrics: pd.DataFrame,
    *,
    metric: str = "accuracy",
    summary: pd.DataFrame | None = None,
    in_domain: str = "movie",
    title: str | None = None,
) -> go.Figure:
    """One dot per seed and the mean with a 95 % CI, per evaluation domain and method.

    Domains are on the x axis, in-domain first (``in_domain``, default ``movie``), then the
    others in the order they appear. Within a domain each method has its own slot; its seeds
    are spread deterministically around the slot (ordered by seed, no random jitter) and the
    mean sits in the middle with a 95 % CI error bar. Without ``summary`` the mean and the
    Student-t CI are computed here from the dots; with ``summary`` (columns ``method, domain,
    metric, mean, ci_low, ci_high``) its values are used, so the figure agrees with the
    reported statistics.

    Parameters
    ----------
    metrics : DataFrame
        Metrics table: ``method, seed, domain, metric, value`` (``run_id`` optional; a boolean ``collapsed``
        column marks the runs whose representations collapsed with a black cross).
    metric : str, default='accuracy'
        Value of the ``metric`` column to plot.
    summary : DataFrame, optional
        Summary over seeds to take the means and CIs from.
    in_domain : str, default='movie'
    title : str, optional
    """
    func = "plot_metric_by_domain"
    df = check_frame(metrics, "metrics", func, ["method", "seed", "domain", "metric", "value"])
    df = select_rows(df, "metric", metric, func=func, param="metric", what="the metrics table")
    summ = None
    if summary is not None:
        summ = check_frame(summary, "summary", func, ["method", "domain", "metric", "mean", "ci_low", "ci_high"])
        summ = summ.loc[summ["metric"] == metric]
    domains = _domain_order(df["domain"], in_domain)
    methods = unique(df["method"])
    step = min(0.8 / len(methods), 0.25)
    offsets = _offsets(len(methods), step)
    fig = go.Figure()
    collapsed_x: list[float] = []
    collapsed_y: list[float] = []
    for method, off in zip(methods, offsets):
        mcolor = color_for(method)
        dots_x, dots_y, dots_c = [], [], []
        mean_x, mean_y, err_hi, err_lo, mean_c = [], [], [], [], []
        for i, domain in enumerate(domains):
            g = df.loc[(df["method"] == method) & (df["domain"] == domain)].sort_values("seed", kind="stable")
            if g.empty:
                continue
            spread = _offsets(len(g), step * 0.5 / max(len(g) - 1, 1)) if len(g) > 1 else [0.0]
            runs = g["run_id"].astype(str).tolist() if "run_id" in g.columns else [""] * len(g)
            flags = (g["collapsed"].fillna(False).astype(bool).tolist() if "collapsed" in g.columns
                     else [False] * len(g))
            for s, v, seed, run, flag in zip(spread, g["value"], g["seed"], runs, flags):
                dots_x.append(i + off + s)
                dots_y.append(float(v))
                dots_c.append([domain, str(seed), run + (" (COLLAPSED)" if flag else "")])
                if flag:
                    collapsed_x.append(i + off + s)
                    collapsed_y.append(float(v))
            mean, low, high, n = mean_ci(g["value"])
            source = f"95% t-interval over {n} seeds (computed here)" if n >= 2 else "single seed: no CI"
            if summ is not None:
                row = summ.loc[(summ["method"] == method) & (summ["domain"] == domain)]
                if len(row):
                    mean, low, high = (float(row[c].iloc[0]) for c in ("mean", "ci_low", "ci_high"))
                    source = "95% CI from the summary table"
            mean_x.append(i + off)
            mean_y.append(mean)
            err_hi.append(high - mean if np.isfinite(high) else 0.0)
            err_lo.append(mean - low if np.isfinite(low) else 0.0)
            mean_c.append([domain, low, high, n, source])
        fig.add_trace(
            go.Scatter(
                x=dots_x,
                y=dots_y,
                mode="markers",
                name=f"{method} (seeds)",
                legendgroup=str(method),
                showlegend=False,
                marker={"color": mcolor, "size": 7, "opacity": 0.55, "line": {"width": 0}},
                customdata=dots_c,
                hovertemplate=(
                    f"<b>{method}</b> · %{{customdata[0]}}<br>seed %{{customdata[1]}} %{{customdata[2]}}<br>"
                    f"{metric} = %{{y:.4g}}<extra></extra>"
                ),
            )
        )
        fig.add_trace(
            go.Scatter(
                x=mean_x,
                y=mean_y,
                mode="markers",
                name=str(method),
                legendgroup=str(method),
                marker={"color": mcolor, "size": 13, "symbol": "diamond", "line": {"width": 1, "color": "white"}},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": err_hi,
                    "arrayminus": err_lo,
                    "color": mcolor,
                    "thickness": 2,
                    "width": 6,
                },
                customdata=mean_c,
                hovertemplate=(
                    f"<b>{method}</b> · %{{customdata[0]}}<br>mean {metric} = %{{y:.4g}}<br>"
                    "95% CI [%{customdata[1]:.4g}, %{customdata[2]:.4g}], n=%{customdata[3]} seeds<br>"
                    "%{customdata[4]}<extra></extra>"
                ),
            )
        )
    if collapsed_x:  # runs the collapse guard flagged (a ``collapsed`` column), marked wherever they appear
        fig.add_trace(go.Scatter(x=collapsed_x, y=collapsed_y, mode="markers", name="collapsed run",
                                 marker={"symbol": "x-thin", "size": 11, "line": {"width": 2, "color": "black"}},
                                 hoverinfo="skip"))
    ticktext = [f"{d} (in-domain)" if d == in_domain else str(d) for d in domains]
    if len(domains) > 1 and domains[0] == in_domain:
        fig.add_vline(x=0.5, line_dash="dot", line_color="#BBBBBB", annotation_text="out-of-domain →")
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title or f"{metric_label(metric).split(' (')[0]} per domain: one dot per seed, mean ± 95% CI"},
        legend_title_text="method",
        hovermode="closest",
    )
    fig.update_xaxes(
        title_text="evaluation domain (in-domain first)",
        tickvals=list(range(len(domains))),
        ticktext=ticktext,
        range=[-0.5, len(domains) - 0.5],
        showgrid=False,
        zeroline=False,
    )
    fig.update_yaxes(title_text=metric_label(metric))
    return fig


# --------------------------------------------------------------------------------------------
# training history

_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def _run_keys(df: pd.DataFrame) -> list[str]:
    return ["seed", "run_id"] if "run_id" in df.columns else ["seed"]


def _history_xaxis(xcol: str) -> dict[str, Any]:
    """The x-axis settings of a history figure drawn against ``xcol`` (:func:`history_axis`)."""
    return {"title_text": "epoch", "dtick": 1} if xcol == "epoch" else {"title_text": "optimizer step"}


def history_axis(history: pd.DataFrame) -> str:
    """The x column of a training history: ``epoch`` when every run has one row per epoch (1, 2, ..., n), else
    ``step`` (a step-budget protocol evaluates every k steps, so a run has several rows in one epoch, or skips
    epochs: grouping by epoch would average different evaluations as if they were seeds)."""
    if "step" not in history.columns or history["step"].isna().any():
        return "epoch"
    keys = [k for k in ("method", *_run_keys(history)) if k in history.columns]
    for _, run in history.groupby(keys, sort=False):
        epochs = run["epoch"].to_numpy()
        if not np.array_equal(np.sort(epochs), np.arange(1, len(epochs) + 1)):
            return "step"
    return "epoch"


_DASH_WORDS = {"solid": "solid", "dash": "dashed", "dot": "dotted", "dashdot": "dash-dot", "longdash": "long dash",
               "longdashdot": "long dash-dot"}


def _is_regulariser(column: str) -> bool:
    """History columns of the regulariser (its term or its weighted share), drawn on their own axis."""
    return str(column).startswith("train_reg")


def _dash_key(dashes: dict[str, str], shown: Sequence[str]) -> str:
    """'total loss: solid, task loss: dashed' for the curves ``shown`` (their readable names)."""
    return ", ".join(f"{readable(m)}: {_DASH_WORDS[dashes[m]]}" for m in shown)


def plot_training_curves(
    history: pd.DataFrame,
    *,
    metrics: Sequence[str] = ("train_loss", "train_task_loss", "train_reg_loss"),
    title: str | None = None,
) -> go.Figure:
    """Training losses, the regulariser's own panel, and train vs validation accuracy per epoch.

    Colour = method, dash = which curve (each panel's title says which dash is which curve). Each seed is a thin,
    faint line; the mean over seeds of each method is a thick line. The legend has one entry per method, under the
    plot (clicking it hides all that method's curves). The regulariser's columns of ``metrics`` (``train_reg_*``:
    its term or its weighted share, often 100x smaller than the task loss) get their own panel and axis, so they are
    not a flat line at 0 beside the task loss. Curves that are all-NaN for a method (e.g. ``train_reg_loss`` of
    ``vanilla``) are skipped.

    Parameters
    ----------
    history : DataFrame
        History table: ``method, seed, epoch``, the ``metrics`` columns, ``train_accuracy``,
        ``val_accuracy`` (``run_id`` optional).
    metrics : sequence of str
        The loss columns (the regulariser's in a panel of their own).
    title : str, optional
    """
    func = "plot_training_curves"
    if isinstance(metrics, str) or not metrics:
        raise ValueError(
            f"The 'metrics' parameter of {func} must be a non-empty sequence of column names. Got {metrics!r} instead."
        )
    metrics = list(metrics)
    acc = ["train_accuracy", "val_accuracy"]
    df = check_frame(history, "history", func, list(dict.fromkeys(["method", "seed", "epoch", *metrics, *acc])))
    xcol = history_axis(df)
    drawn = [m for m in metrics if df[m].notna().any()]
    losses = [m for m in drawn if not _is_regulariser(m)] or [m for m in metrics if not _is_regulariser(m)]
    reg = [m for m in drawn if _is_regulariser(m)]
    dashes = {m: _DASHES[i % len(_DASHES)] for i, m in enumerate(losses)}
    dashes.update({m: _DASHES[i % len(_DASHES)] for i, m in enumerate(reg)})
    acc_dashes = {"train_accuracy": "dash", "val_accuracy": "solid"}
    # two lines at most per subplot title, so neighbouring titles never overlap at a dashboard's 700 px
    loss_title = wrap_text(f"losses ({_dash_key(dashes, losses)})" if losses else "losses", 34)
    acc_title = wrap_text(f"accuracy ({_dash_key(acc_dashes, ['val_accuracy', 'train_accuracy'])})", 34)
    if reg:
        reg_title = wrap_text(f"{readable(reg[0])} (own scale)" if len(reg) == 1
                              else f"regulariser (own scale; {_dash_key(dashes, reg)})", 34)
        fig = make_subplots(rows=2, cols=2, specs=[[{}, {}], [{"colspan": 2}, None]],
                            subplot_titles=(loss_title, reg_title, acc_title), horizontal_spacing=0.12,
                            vertical_spacing=0.2)
        cells = {"loss": (1, 1), "reg": (1, 2), "acc": (2, 1)}
    else:
        fig = make_subplots(rows=1, cols=2, subplot_titles=(loss_title, acc_title), horizontal_spacing=0.12)
        cells = {"loss": (1, 1), "acc": (1, 2)}
    panels = [("loss", losses, dashes), ("reg", reg, dashes), ("acc", acc, acc_dashes)]
    for method in unique(df["method"]):
        mcolor = color_for(method)
        group = str(method)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=group, legendgroup=group,
                                 line={"color": mcolor, "width": 2.5}, hoverinfo="skip"))
        mdf = df.loc[df["method"] == method].sort_values(xcol, kind="stable")
        for panel, cols, panel_dashes in panels:
            if not cols:
                continue
            row, col = cells[panel]
            for m in cols:
                if mdf[m].isna().all():
                    continue
                for key, run in mdf.groupby(_run_keys(mdf), sort=True):
                    seed = key[0] if isinstance(key, tuple) else key
                    fig.add_trace(
                        go.Scatter(
                            x=run[xcol],
                            y=run[m],
                            mode="lines",
                            name=f"{method} seed {seed} · {m}",
                            legendgroup=group,
                            showlegend=False,
                            opacity=0.35,
                            line={"color": mcolor, "width": 1, "dash": panel_dashes[m]},
                            hovertemplate=(
                                f"<b>{method}</b> seed {seed}<br>{xcol} %{{x}}<br>{readable(m)} = %{{y:.4g}}"
                                "<extra></extra>"
                            ),
                        ),
                        row=row,
                        col=col,
                    )
                mean = mdf.groupby(xcol, sort=True)[m].agg(["mean", "count"])
                fig.add_trace(
                    go.Scatter(
                        x=mean.index.tolist(),
                        y=mean["mean"],
                        mode="lines+markers",
                        name=f"{method} · {m}",
                        legendgroup=group,
                        showlegend=False,
                        line={"color": mcolor, "width": 3, "dash": panel_dashes[m]},
                        marker={"size": 5},
                        customdata=mean["count"],
                        hovertemplate=(
                            f"<b>{method}</b> mean over %{{customdata}} seeds<br>{xcol} %{{x}}<br>"
                            f"{readable(m)} = %{{y:.4g}}<extra></extra>"
                        ),
                    ),
                    row=row,
                    col=col,
                )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title or "Training curves per method: thin lines = seeds, thick = mean over seeds"},
        hovermode="closest",
        height=640 if reg else 460,
    )
    legend_below(fig, title="method")
    fig.update_xaxes(**_history_xaxis(xcol))
    fig.update_yaxes(title_text="loss (nats per example)", row=1, col=1)
    if reg:
        unit = "nats per example" if reg == ["train_reg_contribution"] else "loss units"
        fig.update_yaxes(title_text=f"{readable(reg[0]) if len(reg) == 1 else 'regulariser'} ({unit})", row=1, col=2)
    arow, acol = cells["acc"]
    fig.update_yaxes(title_text="accuracy (fraction correct)", row=arow, col=acol)
    fig.update_annotations(font_size=12)
    return fig


def plot_generalisation_gap(history: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Generalisation gap (train - validation accuracy) per epoch (per evaluation step for step-budget histories,
    :func:`history_axis`): mean over seeds ± 95 % CI.

    One line per method (its colour from :func:`color_for`) with a Student-t band over seeds
    (no band where fewer than 2 seeds), and a zero line: above it the model fits the training
    set better than held-out data.

    Parameters
    ----------
    history : DataFrame
        History table with ``method, seed, epoch, gap``.
    title : str, optional
    """
    func = "plot_generalisation_gap"
    df = check_frame(history, "history", func, ["method", "seed", "epoch", "gap"])
    xcol = history_axis(df)
    fig = go.Figure()
    for method in unique(df["method"]):
        mcolor = color_for(method)
        rows = [(e, *mean_ci(g["gap"])) for e, g in df.loc[df["method"] == method].groupby(xcol, sort=True)]
        epochs = [r[0].item() if isinstance(r[0], np.generic) else r[0] for r in rows]
        mean, low, high, n = ([r[i] for r in rows] for i in range(1, 5))
        band = ci_band(epochs, low, high, color=mcolor, name=f"{method} 95% CI", group=str(method))
        if band is not None:
            fig.add_trace(band)
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=mean,
                mode="lines+markers",
                name=str(method),
                legendgroup=str(method),
                line={"color": mcolor, "width": 2.5},
                customdata=[list(t) for t in zip(low, high, n)],
                hovertemplate=(
                    f"<b>{method}</b><br>{xcol} %{{x}}<br>mean gap = %{{y:.4g}}<br>"
                    "95% t-interval over %{customdata[2]} seeds: [%{customdata[0]:.4g}, %{customdata[1]:.4g}]"
                    "<extra></extra>"
                ),
            )
        )
    fig.add_hline(y=0, line_color="#888888", line_dash="dot")
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title or f"Generalisation gap (train − validation accuracy) per "
                            f"{'epoch' if xcol == 'epoch' else 'evaluation step'}: mean ± 95% CI over seeds"},
        legend_title_text="method",
    )
    fig.update_xaxes(**_history_xaxis(xcol))
    fig.update_yaxes(title_text=metric_label("gap"))
    return fig


# --------------------------------------------------------------------------------------------
# paired comparison

_PAIRED_COLUMNS = (
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
)


def _stated_p(row: Any) -> float:
    """The p-value a paired row's verdict rests on: the corrected one when present, else permutation, else sign."""
    for col in ("p_adj", "p_permutation", "p_sign"):
        if col in row and row[col] is not None and np.isfinite(float(row[col])):
            return float(row[col])
    return float("nan")


def plot_paired_differences(
    paired: pd.DataFrame,
    *,
    metric: str | None = None,
    in_domain: str = "movie",
    title: str | None = None,
) -> go.Figure:
    """Paired differences (method - baseline over matched seeds) per domain, with 95 % CIs.

    One horizontal marker + CI bar per domain (in-domain on top) and comparison, a vertical
    zero line, the verdict and p-values in the hover. When the CI crosses zero, or the stated test's p-value
    (``p_adj`` when the table has it, else ``p_permutation``, else ``p_sign``) is 0.05 or more, the marker is
    hollow and annotated "within noise" (:func:`lnsr_viz.viz.style.is_weak_evidence`): the data do not
    distinguish the method from its baseline there. Colours are the method's (:func:`color_for`).

    Parameters
    ----------
    paired : DataFrame
        Paired-comparison table (``docs/architecture.md``).
    metric : str, optional
        Which metric to show; required when the table holds several.
    in_domain : str, default='movie'
    title : str, optional
    """
    func = "plot_paired_differences"
    df = check_frame(paired, "paired", func, list(_PAIRED_COLUMNS))
    df = select_rows(df, "metric", metric, func=func, param="metric", what="the paired table")
    metric_v = unique(df["metric"])[0]
    domains = _domain_order(df["domain"], in_domain)
    pairs = unique(zip(df["method"], df["baseline"]))
    step = min(0.8 / len(pairs), 0.25)
    fig = go.Figure()
    n_dom = len(domains)
    for (method, baseline), off in zip(pairs, _offsets(len(pairs), step)):
        mcolor = color_for(method)
        sub = df.loc[(df["method"] == method) & (df["baseline"] == baseline)]
        groups: dict[bool, dict[str, list]] = {
            w: {"x": [], "y": [], "hi": [], "lo": [], "c": []} for w in (False, True)
        }
        for i, domain in enumerate(domains):
            for _, r in sub.loc[sub["domain"] == domain].iterrows():
                lo, hi, d = float(r["ci_low"]), float(r["ci_high"]), float(r["mean_diff"])
                # weak evidence (hollow, "within noise"): the CI includes 0 or the stated test's p is >= 0.05
                within = is_weak_evidence(lo, hi, _stated_p(r))
                y = (n_dom - 1 - i) - off
                gr = groups[within]
                gr["x"].append(d)
                gr["y"].append(y)
                gr["hi"].append(hi - d if np.isfinite(hi) else 0.0)
                gr["lo"].append(d - lo if np.isfinite(lo) else 0.0)
                gr["c"].append(
                    [
                        domain,
                        lo,
                        hi,
                        int(r["n_pairs"]),
                        float(r["p_sign"]),
                        float(r["p_permutation"]),
                        str(r["verdict"]),
                    ]
                )
                if within:
                    fig.add_annotation(
                        x=hi if np.isfinite(hi) else d,
                        y=y,
                        text="within noise",
                        showarrow=False,
                        xanchor="left",
                        xshift=8,
                        font={"size": 11, "color": "#666666"},
                    )
        for within, gr in groups.items():
            if not gr["x"]:
                continue
            label = f"{method} − {baseline}" + (": no clear difference (CI includes 0 or p ≥ 0.05)" if within
                                                 else ": clear difference (CI excludes 0, p < 0.05)")
            fig.add_trace(
                go.Scatter(
                    x=gr["x"],
                    y=gr["y"],
                    mode="markers",
                    name=label,
                    legendgroup=f"{method}|{baseline}",
                    marker={
                        "color": mcolor,
                        "size": 12,
                        "symbol": "circle-open" if within else "circle",
                        "line": {"width": 2, "color": mcolor},
                    },
                    error_x={
                        "type": "data",
                        "symmetric": False,
                        "array": gr["hi"],
                        "arrayminus": gr["lo"],
                        "color": mcolor,
                        "thickness": 2,
                        "width": 6,
                    },
                    customdata=gr["c"],
                    hovertemplate=(
                        f"<b>{method} − {baseline}</b> · %{{customdata[0]}}<br>mean difference = %{{x:.4g}}<br>"
                        "95% CI [%{customdata[1]:.4g}, %{customdata[2]:.4g}] over %{customdata[3]} pairs<br>"
                        "p (sign) = %{customdata[4]:.3g}, p (permutation) = %{customdata[5]:.3g}<br>"
                        "%{customdata[6]}<extra></extra>"
                    ),
                )
            )
    fig.add_vline(x=0, line_color="#444444", line_width=1.5)
    ticktext = [f"{d} (in-domain)" if d == in_domain else str(d) for d in domains]
    fig.update_layout(
        template=TEMPLATE,
        title={
            "text": title or f"Paired difference in {readable(metric_v)} vs baseline per domain (95% CI; hollow = "
                             "within noise: CI includes 0 or p ≥ 0.05)"
        },
        hovermode="closest",
    )
    legend_below(fig, title="comparison")  # long entries: under the plot, not beside it
    fig.update_xaxes(title_text=f"difference in {metric_label(metric_v)}: method − baseline")
    fig.update_yaxes(
        title_text="evaluation domain (in-domain on top)",
        tickvals=[n_dom - 1 - i for i in range(n_dom)],
        ticktext=ticktext,
        range=[-0.5, n_dom - 0.5],
        showgrid=False,
        zeroline=False,
    )
    return fig


# --------------------------------------------------------------------------------------------
# tables


def stats_table_figure(
    df: pd.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    title: str | None = None,
    float_format: str = "{:.3f}",
) -> go.Figure:
    """A :class:`plotly.graph_objects.Table` of a summary or paired table, for reports and dashboards.

    Floats are shown with ``float_format``, missing values as an en dash. For a plain HTML table
    in a report, :meth:`lnsr_viz.viz.report.Report.add_table` is lighter.

    Parameters
    ----------
    df : DataFrame
    columns : sequence of str, optional
        Which columns to show, in order (default: all).
    title : str, optional
    float_format : str, default='{:.3f}'
    """
    func = "stats_table_figure"
    cols = list(df.columns) if columns is None and isinstance(df, pd.DataFrame) else list(columns or [])
    df = check_frame(df, "df", func, cols)
    fig = go.Figure(
        go.Table(
            header={"values": [f"<b>{c}</b>" for c in cols], "fill_color": "#E8EDF3", "align": "left"},
            cells={
                "values": [[format_cell(v, float_format) for v in df[c].tolist()] for c in cols],
                "align": ["right" if pd.api.types.is_numeric_dtype(df[c]) else "left" for c in cols],
                "fill_color": "white",
            },
        )
    )
    fig.update_layout(template=TEMPLATE, title={"text": title or f"Table: {len(df)} rows × {len(cols)} columns"})
    return fig


# --------------------------------------------------------------------------------------------
# saving


def _kaleido_available() -> bool:
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return True


def save_figure(
    fig: go.Figure,
    path: str | os.PathLike[str],
    *,
    formats: Sequence[str] = ("html",),
    plotlyjs: Literal["inline", "directory"] = "inline",
) -> list[Path]:
    """Save ``fig`` as interactive HTML (always) and, if possible, static images.

    ``path`` is the file name with or without an extension (``fig``, ``fig.html``, ``fig.png``);
    each format gets its own extension. HTML works offline: plotly.js is embedded inline
    (``plotlyjs='inline'``, ~5 MB per file) or written once as ``plotly.min.js`` next to the
    HTML and referenced by a relative path (``plotlyjs='directory'``, for many figures in one
    folder). Never from a CDN. Static formats (``png``, ``svg``, ``pdf``) need kaleido and a
    Chromium; without them they are skipped with one warning and the HTML is still written.
    Every file is written atomically.

    Returns
    -------
    list of Path
        The files written, HTML first.
    """
    func = "save_figure"
    if not isinstance(fig, go.Figure):
        raise TypeError(f"{func} expects a plotly.graph_objects.Figure. Got {type(fig).__name__} instead.")
    if isinstance(formats, str):
        formats = (formats,)
    for f in formats:
        check_choice("formats", f, _FORMATS, owner=func)
    check_choice("plotlyjs", plotlyjs, ("inline", "directory"), owner=func)
    path = Path(path)
    base = path.with_suffix("") if path.suffix.lstrip(".").lower() in _FORMATS else path
    html_path = base.with_name(base.name + ".html")
    written: list[Path] = []
    if plotlyjs == "directory":
        from plotly.offline import get_plotlyjs

        js = get_plotlyjs().encode("utf-8")
        js_path = html_path.parent / "plotly.min.js"
        if not js_path.exists() or js_path.read_bytes() != js:
            atomic_write_bytes(js_path, js)
        html = fig.to_html(full_html=True, include_plotlyjs="directory")
    else:
        html = fig.to_html(full_html=True, include_plotlyjs=True)
    written.append(atomic_write_bytes(html_path, html.encode("utf-8")))

    static = [f for f in dict.fromkeys(formats) if f != "html"]
    if static:
        reason = None if _kaleido_available() else "kaleido is not installed"
        for fmt in static if reason is None else []:
            try:
                data = fig.to_image(format=fmt)
            except Exception as exc:  # noqa: BLE001 - kaleido without Chromium raises assorted errors; degrade to HTML
                first_line = (str(exc).strip().splitlines() or [""])[0]
                reason = f"kaleido failed ({type(exc).__name__}: {first_line})"
                break
            written.append(atomic_write_bytes(base.with_name(f"{base.name}.{fmt}"), data))
        if reason is not None:
            warnings.warn(
                f"save_figure skipped the static image format(s) {static} for {html_path.name}: {reason}. "
                "To enable PNG/SVG/PDF export run `pip install kaleido` and install a Chromium "
                "(`plotly_get_chrome`, or `kaleido.get_chrome_sync()`). The interactive HTML was written.",
                RuntimeWarning,
                stacklevel=2,
            )
    return written

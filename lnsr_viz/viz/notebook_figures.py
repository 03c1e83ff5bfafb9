"""Plot functions the notebooks need beyond :mod:`lnsr_viz.viz.figures`: a tidy DataFrame in, a plotly figure out.

Same conventions as :mod:`lnsr_viz.viz.figures` (pure functions, titles that say what is shown, axis titles with units,
``plotly_white``, hover text on every data trace, one colour per label from :func:`lnsr_viz.viz.style.color_for`,
inputs checked first with messages that list what is available):

* :func:`plot_noise_types` -- Gaussian vs in-manifold noise of the same size, injected at the same layer: how much
  of the change is due to the *direction* of the noise;
* :func:`plot_scale_response` -- the change at one layer against the noise scale, with the straight line that a
  purely linear (first-order) response would give: where the small-noise identity holds and where it breaks;
* :func:`plot_run_costs` -- seconds per run for each method, one dot per seed (what a method costs);
* :func:`plot_step_costs` -- time per training step and peak memory of each method relative to vanilla, from
  ``benchmarks/bench_methods.py``;
* :func:`wrap_title` -- break a long title over lines so it is not cut off in a notebook-wide figure
  (defined in :mod:`lnsr_viz.viz.style`, re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..utils.validation import check_choice
from .style import (
    LAYER_AXIS,
    STABILITY_METRICS,
    TEMPLATE,
    aggregate_layers,
    check_frame,
    ci_band,
    color_for,
    format_number,
    mean_ci,
    metric_label,
    select_rows,
    unique,
    wrap_title,
)

__all__ = ["plot_noise_types", "plot_scale_response", "plot_run_costs", "plot_step_costs", "wrap_title"]

_NOISE_NAMES = {"gaussian": "Gaussian (isotropic)", "in_manifold": "in-manifold (top principal directions)"}


def plot_noise_types(
    profile: pd.DataFrame,
    *,
    metric: Literal["change_rel", "change_l2"] = "change_rel",
    injection_layer: int | None = 0,
    model: str | None = None,
    scale: float | None = None,
    title: str | None = None,
) -> go.Figure:
    """Per-layer change after Gaussian and after in-manifold noise of the same size, one line each.

    Both noise kinds put exactly the same norm on every token (see :mod:`lnsr_viz.core.noise`); they differ only in
    direction. A gap between the two lines is therefore the effect of the direction alone: noise along the data
    manifold is what the layers were trained to respond to.

    Parameters
    ----------
    profile : DataFrame
        Stability profile(s) with ``model, injection_layer, layer, noise, scale, {metric}, {metric}_ci_low,
        {metric}_ci_high``; typically the concatenation of one Gaussian and one in-manifold probe.
    metric : {'change_rel', 'change_l2'}, default='change_rel'
    injection_layer : int or None, default=0
        Where the noise was added; None only if the frame holds one injection layer.
    model : str, optional
        Which model; required when the frame holds several.
    scale : float, optional
        Which noise scale; required when the frame holds several.
    title : str, optional
    """
    func = "plot_noise_types"
    check_choice("metric", metric, STABILITY_METRICS, owner=func)
    lo_col, hi_col = f"{metric}_ci_low", f"{metric}_ci_high"
    df = check_frame(profile, "profile", func,
                      ["model", "injection_layer", "layer", "noise", "scale", metric, lo_col, hi_col])
    df = select_rows(df, "model", model, func=func, param="model", what="the profile")
    df = select_rows(df, "injection_layer", injection_layer, func=func, param="injection_layer", what="the profile")
    df = select_rows(df, "scale", scale, func=func, param="scale", what="the profile")
    k = unique(df["injection_layer"])[0]
    model_v, scale_v = unique(df["model"])[0], unique(df["scale"])[0]
    kind = unique(df["scale_kind"])[0] if "scale_kind" in df.columns else ""
    fig = go.Figure()
    for noise in unique(df["noise"]):
        sub = df.loc[df["noise"] == noise]
        rows = aggregate_layers(sub, metric, lo_col, hi_col, has_seed="seed" in sub.columns)
        colour = color_for(noise)
        name = _NOISE_NAMES.get(str(noise), str(noise))
        band = ci_band(rows["layer"], rows["low"], rows["high"], color=colour, name=f"{name} 95% CI", group=str(noise))
        if band is not None:
            fig.add_trace(band)
        fig.add_trace(
            go.Scatter(
                x=rows["layer"],
                y=rows["mean"],
                mode="lines+markers",
                name=name,
                legendgroup=str(noise),
                line={"color": colour, "width": 2.5, "dash": "solid" if noise == "gaussian" else "dash"},
                marker={"color": colour, "size": 7},
                customdata=[list(t) for t in zip(rows["low"], rows["high"], rows["band_kind"], rows["layer_name"])],
                hovertemplate=(
                    f"<b>{name}</b><br>layer %{{x}} (%{{customdata[3]}})<br>mean {metric} = %{{y:.4g}}<br>"
                    "band [%{customdata[0]:.4g}, %{customdata[1]:.4g}]: %{customdata[2]}<extra></extra>"
                ),
            )
        )
    fig.add_vline(x=k, line_dash="dot", line_color="#888888", annotation_text=f"noise injected (k={k})")
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title or (f"{model_v}: Gaussian vs in-manifold noise of the same size "
                                 f"(scale {format_number(scale_v)}{' ' + kind if kind else ''}) injected at layer {k}, "
                                 "mean with 95% CI")},
        legend_title_text="noise direction",
        hovermode="closest",
    )
    fig.update_xaxes(title_text=LAYER_AXIS, dtick=1)
    fig.update_yaxes(title_text=metric_label(metric))
    return fig


def plot_scale_response(
    profile: pd.DataFrame,
    *,
    metric: Literal["change_rel", "change_l2"] = "change_rel",
    layer: int | None = None,
    injection_layer: int | None = 0,
    model: str | None = None,
    log_axes: bool = True,
    title: str | None = None,
) -> go.Figure:
    """The change at one layer against the noise scale, per noise type, with the linear-response line.

    For small noise ``e`` the change of layer ``l`` is ``J e`` to first order (``J`` the Jacobian of blocks
    ``k+1..l``), so it grows *linearly* with the scale. The dotted line of each noise type is that straight line,
    through the origin and the point at the smallest scale; where the markers leave it the layers respond
    non-linearly and a first-order (Jacobian) view of stability no longer describes the model.

    Parameters
    ----------
    profile : DataFrame
        Profiles at several scales (``model, injection_layer, layer, noise, scale, {metric}`` and its CI columns).
    metric : {'change_rel', 'change_l2'}, default='change_rel'
    layer : int, optional
        The layer where the change is read; default the last layer in the frame.
    injection_layer : int or None, default=0
    model : str, optional
        Required when the frame holds several models.
    log_axes : bool, default=True
        Logarithmic axes (a straight line through the origin is then a line of slope 1).
    title : str, optional
    """
    func = "plot_scale_response"
    check_choice("metric", metric, STABILITY_METRICS, owner=func)
    lo_col, hi_col = f"{metric}_ci_low", f"{metric}_ci_high"
    df = check_frame(profile, "profile", func,
                      ["model", "injection_layer", "layer", "noise", "scale", metric, lo_col, hi_col])
    df = select_rows(df, "model", model, func=func, param="model", what="the profile")
    df = select_rows(df, "injection_layer", injection_layer, func=func, param="injection_layer", what="the profile")
    layer_v = int(df["layer"].max()) if layer is None else layer
    df = select_rows(df, "layer", layer_v, func=func, param="layer", what="the profile")
    positive = df.loc[df["scale"] > 0]
    if positive.empty:
        raise ValueError(f"{func}: the profile has no rows with scale > 0; probe at least one positive noise scale.")
    k = unique(df["injection_layer"])[0]
    model_v = unique(df["model"])[0]
    kind = unique(df["scale_kind"])[0] if "scale_kind" in df.columns else "relative"
    fig = go.Figure()
    for noise in unique(positive["noise"]):
        sub = positive.loc[positive["noise"] == noise]
        points = []
        for scale, g in sub.groupby("scale", sort=True):
            if len(g) == 1:
                mean, low, high = (float(g[c].iloc[0]) for c in (metric, lo_col, hi_col))
            else:
                mean, low, high, _ = mean_ci(g[metric])
            points.append((float(scale), mean, low, high))
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        colour = color_for(noise)
        name = _NOISE_NAMES.get(str(noise), str(noise))
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=f"{name}: measured",
                legendgroup=str(noise),
                line={"color": colour, "width": 2.5},
                marker={"color": colour, "size": 8},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [p[3] - p[1] if np.isfinite(p[3]) else 0.0 for p in points],
                    "arrayminus": [p[1] - p[2] if np.isfinite(p[2]) else 0.0 for p in points],
                    "color": colour,
                },
                customdata=[[p[2], p[3], p[1] / p[0] * xs[0] / ys[0] if ys[0] else np.nan] for p in points],
                hovertemplate=(
                    f"<b>{name}</b><br>scale %{{x:.3g}} ({kind})<br>{metric} at layer {layer_v} = %{{y:.4g}}<br>"
                    "95% CI [%{customdata[0]:.4g}, %{customdata[1]:.4g}]<br>"
                    "measured / linear prediction = %{customdata[2]:.3f}<extra></extra>"
                ),
            )
        )
        slope = ys[0] / xs[0]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[slope * x for x in xs],
                mode="lines",
                name=f"{name}: linear response",
                legendgroup=str(noise),
                line={"color": colour, "width": 1.5, "dash": "dot"},
                hovertemplate=(
                    f"<b>{name}</b>: linear prediction from the smallest scale<br>scale %{{x:.3g}}<br>"
                    "predicted = %{y:.4g}<extra></extra>"
                ),
            )
        )
    axis = "log" if log_axes else "linear"
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title or (f"{model_v}: change at layer {layer_v} against the noise scale (noise injected at "
                                 f"layer {k}); dotted = linear response through the smallest scale")},
        legend_title_text="noise direction",
        hovermode="closest",
    )
    unit = "fraction of each token's norm" if kind == "relative" else "sigma per coordinate"
    fig.update_xaxes(title_text=f"noise scale ({kind}: {unit})", type=axis)
    fig.update_yaxes(title_text=f"{metric_label(metric)} at layer {layer_v}", type=axis)
    return fig


def plot_run_costs(
    runs: pd.DataFrame,
    *,
    value: str = "seconds",
    methods: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """What each method costs: one dot per run (seed), the mean with a 95% CI, per method.

    Parameters
    ----------
    runs : DataFrame
        One row per run with ``method``, ``seed`` and ``value`` (e.g. ``ComparisonResult.runs``: wall-clock
        seconds of training + evaluation + probe; cached runs report the time of the run that made them).
    value : str, default='seconds'
        The cost column.
    methods : sequence of str, optional
        Which methods, in this order (default: all but ``pretrained``, in order of appearance).
    title : str, optional
    """
    func = "plot_run_costs"
    df = check_frame(runs, "df", func, ["method", "seed", value])
    order = [m for m in unique(df["method"]) if m != "pretrained"] if methods is None else list(methods)
    unknown = [m for m in order if m not in set(df["method"])]
    if unknown:
        raise ValueError(f"{func}: no runs of method(s) {unknown}. Available: {unique(df['method'])}.")
    if not order:
        raise ValueError(f"{func}: no fine-tuning runs to show (only {unique(df['method'])}).")
    fig = go.Figure()
    for i, method in enumerate(order):
        g = df.loc[df["method"] == method].sort_values("seed", kind="stable")
        vals = pd.to_numeric(g[value], errors="coerce").to_numpy(dtype=float)
        mean, low, high, n = mean_ci(vals)
        colour = color_for(method)
        spread = np.linspace(-0.12, 0.12, len(g)) if len(g) > 1 else np.zeros(1)
        fig.add_trace(
            go.Scatter(
                x=i + spread,
                y=vals,
                mode="markers",
                name=f"{method} (runs)",
                legendgroup=str(method),
                showlegend=False,
                marker={"color": colour, "size": 8, "opacity": 0.6},
                customdata=[[str(s)] for s in g["seed"]],
                hovertemplate=f"<b>{method}</b> seed %{{customdata[0]}}<br>{value} = %{{y:.4g}}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Bar(
                x=[i],
                y=[mean],
                name=str(method),
                legendgroup=str(method),
                marker={"color": colour, "opacity": 0.35},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [high - mean if np.isfinite(high) else 0.0],
                    "arrayminus": [mean - low if np.isfinite(low) else 0.0],
                    "color": colour,
                },
                customdata=[[n, low, high]],
                hovertemplate=(
                    f"<b>{method}</b><br>mean {value} = %{{y:.4g}} over %{{customdata[0]}} runs<br>"
                    "95% CI [%{customdata[1]:.4g}, %{customdata[2]:.4g}]<extra></extra>"
                ),
            )
        )
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title or f"Cost per run ({value}) by method: one dot per seed, bar = mean with 95% CI"},
        legend_title_text="method",
        barmode="overlay",
    )
    fig.update_xaxes(title_text="method", tickvals=list(range(len(order))), ticktext=[str(m) for m in order])
    fig.update_yaxes(title_text="seconds per run (wall clock)" if value == "seconds" else value, rangemode="tozero")
    return fig


def plot_step_costs(
    bench: pd.DataFrame,
    *,
    baseline: str = "vanilla",
    title: str | None = None,
) -> go.Figure:
    """Time per training step and peak memory of each method, relative to ``baseline``, side by side.

    Left: the median over rounds of the per-step time ratio to the baseline (measured within each round, so a
    shared machine's load hits both alike), with the min-max range over rounds. Right: the peak tensor memory a
    method adds on top of the model's parameters, as a ratio to the baseline's. A dotted line marks 1 (as costly
    as the baseline).

    Parameters
    ----------
    bench : DataFrame
        One row per method: ``method``, ``time_ratio_median`` and ``memory_ratio``; optionally ``time_ratios``
        (the per-round ratios, a list per row) for the range. ``benchmarks/bench_methods.py`` writes these rows.
    baseline : str, default='vanilla'
        Named in the axis titles; its bars are 1 by construction.
    title : str, optional
    """
    from plotly.subplots import make_subplots

    func = "plot_step_costs"
    df = check_frame(bench, "df", func, ["method", "time_ratio_median", "memory_ratio"])
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("time per training step", "peak memory added by a step"))
    methods = [str(m) for m in df["method"]]
    colours = [color_for(m) for m in methods]
    time_ratio = df["time_ratio_median"].astype(float).to_numpy()
    if "time_ratios" in df.columns:
        low = np.array([min(r) if isinstance(r, (list, tuple)) and r else np.nan for r in df["time_ratios"]])
        high = np.array([max(r) if isinstance(r, (list, tuple)) and r else np.nan for r in df["time_ratios"]])
    else:
        low = high = np.full(len(df), np.nan)
    err_plus = np.where(np.isfinite(high), high - time_ratio, 0.0)
    err_minus = np.where(np.isfinite(low), time_ratio - low, 0.0)
    fig.add_trace(
        go.Bar(
            x=methods,
            y=time_ratio,
            marker={"color": colours},
            name="time per step",
            showlegend=False,
            error_y={"type": "data", "symmetric": False, "array": err_plus, "arrayminus": err_minus,
                     "color": "#444444"},
            customdata=np.column_stack([low, high]),
            hovertemplate=(
                "<b>%{x}</b><br>time per step = %{y:.2f} x " + baseline
                + "<br>range over rounds [%{customdata[0]:.2f}, %{customdata[1]:.2f}]<extra></extra>"
            ),
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=methods,
            y=df["memory_ratio"].astype(float),
            marker={"color": colours, "opacity": 0.75},
            name="peak memory",
            showlegend=False,
            hovertemplate="<b>%{x}</b><br>peak memory = %{y:.2f} x " + baseline + "<extra></extra>",
        ),
        row=1,
        col=2,
    )
    for col in (1, 2):
        fig.add_hline(y=1.0, line_dash="dot", line_color="#888888", row=1, col=col)
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title or f"Cost of each method relative to {baseline}: time per training step (median and "
                                "range over rounds) and peak memory"},
        bargap=0.3,
    )
    fig.update_xaxes(title_text="method", tickangle=-30)
    fig.update_yaxes(title_text=f"seconds per step / {baseline}'s (ratio)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text=f"peak step memory / {baseline}'s (ratio)", rangemode="tozero", row=1, col=2)
    return fig

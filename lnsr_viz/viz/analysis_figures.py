"""Plot functions for the analysis outputs: drift, projections, the theory link, attributions.

Same conventions as :mod:`lnsr_viz.viz.figures`: pure functions (a tidy DataFrame in, a
:class:`plotly.graph_objects.Figure` out, nothing shown, saved or mutated), the same colour per model or method label
(:func:`lnsr_viz.viz.style.color_for`), ``template="plotly_white"``, a title that says what is shown, axis titles with
units, hover text on every data trace, and inputs checked first with messages listing what was expected.

=============================  =============================================================================
function                       input
=============================  =============================================================================
:func:`plot_drift_heatmap`     :func:`lnsr_viz.analysis.drift.representation_drift`
:func:`plot_projection`        :func:`lnsr_viz.analysis.projection.project_representations`
:func:`plot_theory_scatter`    ``theory_table(store).runs`` (:func:`lnsr_viz.experiments.theory_runs.theory_table`)
:func:`plot_small_noise_identity`  :func:`lnsr_viz.analysis.theory.small_noise_identity`
:func:`plot_attributions`      :func:`lnsr_viz.analysis.attribution.token_attributions`
=============================  =============================================================================
"""

from __future__ import annotations

import html
import math
import re
import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..utils.validation import check_choice
from .style import (
    FALLBACK_COLORS,
    METHOD_COLORS,
    TEMPLATE,
    check_frame,
    ci_band,
    color_for,
    mean_ci,
    readable,
    unique,
    wrap_text,
)

__all__ = [
    "plot_drift_heatmap",
    "plot_drift_by_layer",
    "plot_projection",
    "plot_theory_scatter",
    "plot_small_noise_identity",
    "plot_attributions",
]

_THEORY_LABELS: dict[str, str] = {
    "noise_sensitivity": "top-layer noise sensitivity ||h̃_L − h_L|| / ||h_L|| (ratio)",
    "jacobian_fro2": "Jacobian ||J||²_F per token (squared output units per squared input unit)",
    "hessian_trace": "Hessian trace of the training loss (nats per squared weight unit)",
    "generalisation_gap": "generalisation gap: train − validation accuracy (fraction)",
    "ood_gap": "OOD gap: in-domain − mean out-of-domain accuracy (fraction)",
}
_REGIME_COLORS = {"holds": "#009E73", "breaks: nonlinear": "#D55E00", "breaks: round-off": "#E69F00",
                  "breaks": "#7F7F7F"}


def _hover_text(text: str, width: int = 60) -> str:
    """Escape a sentence for plotly hover labels and wrap it with <br>."""
    return "<br>".join(html.escape(line) for line in textwrap.wrap(str(text), width) or [""])


# ------------------------------------------------------------------------------------------------ drift
def plot_drift_heatmap(
    drift: pd.DataFrame,
    *,
    metrics: Sequence[str] | None = None,
    scale_within_metric: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Heat-map of drift: layers (x) by metrics (y), one panel per pair of models.

    Colour shows how far a layer moved: similarities (CKA) are shown as ``1 - similarity`` and distances as they
    are, and with ``scale_within_metric`` each metric's row is divided by its largest value, so rows on very
    different scales (a weight distance of 40 next to a cosine drift of 0.01) are comparable. The cell text and the
    hover always give the raw value and whether it is a similarity or a distance.

    Parameters
    ----------
    drift : DataFrame
        From :func:`lnsr_viz.analysis.drift.representation_drift` (several pairs may be concatenated):
        ``model_a, model_b, layer, metric, kind, value``.
    metrics : sequence of str, optional
        Which metrics to show, in order (default: all present).
    scale_within_metric : bool, default=True
    title : str, optional
    """
    func = "plot_drift_heatmap"
    df = check_frame(drift, "drift", func, ["model_a", "model_b", "layer", "metric", "kind", "value"])
    bad_kind = sorted(set(df["kind"]) - {"similarity", "distance"})
    if bad_kind:
        raise ValueError(f"{func}: the 'kind' column must hold 'similarity' or 'distance'; got {bad_kind}.")
    present = unique(df["metric"])
    if metrics is None:
        metrics = present
    else:
        metrics = list(metrics)
        for m in metrics:
            check_choice("metrics", m, present, owner=func)
    pairs = list(dict.fromkeys(zip(df["model_a"], df["model_b"])))
    fig = make_subplots(rows=len(pairs), cols=1, shared_xaxes=True, vertical_spacing=0.12 if len(pairs) > 1 else 0,
                        subplot_titles=[f"{b} vs {a}" for a, b in pairs])
    from ..analysis.drift import DRIFT_METRICS

    for i, (a, b) in enumerate(pairs, start=1):
        sub = df[(df["model_a"] == a) & (df["model_b"] == b)]
        layers = sorted(int(v) for v in unique(sub["layer"]))
        z, text, custom = [], [], []
        for m in metrics:
            rows = sub[sub["metric"] == m].groupby("layer")["value"].mean()
            kind = str(sub.loc[sub["metric"] == m, "kind"].iloc[0]) if (sub["metric"] == m).any() else "distance"
            raw = [float(rows.get(layer, math.nan)) for layer in layers]
            score = [1.0 - v if kind == "similarity" else v for v in raw]
            if scale_within_metric:
                finite = [abs(v) for v in score if math.isfinite(v)]
                top = max(finite) if finite else 0.0
                score = [v / top if top > 0 and math.isfinite(v) else (0.0 if math.isfinite(v) else math.nan)
                         for v in score]
            z.append(score)
            text.append([f"{v:.3g}" if math.isfinite(v) else "" for v in raw])
            desc = DRIFT_METRICS.get(m, (kind, m))[1]
            custom.append([[kind, f"{v:.6g}", desc] for v in raw])
        fig.add_trace(go.Heatmap(
            z=z, x=layers, y=[readable(m) for m in metrics], text=text, texttemplate="%{text}", customdata=custom,
            colorscale="Viridis", zmin=0, zmax=1 if scale_within_metric else None, hoverongaps=False,
            showscale=i == 1, name=f"{b} vs {a}",
            colorbar={"title": {"text": "drift (share of the row's largest)" if scale_within_metric else "drift"}},
            hovertemplate=("<b>%{y}</b> (%{customdata[0]}) at layer %{x}<br>value = %{customdata[1]}<br>"
                           f"%{{customdata[2]}}<extra>{html.escape(str(b))} vs {html.escape(str(a))}</extra>"),
        ), row=i, col=1)
        fig.update_yaxes(title_text="metric", row=i, col=1)
    fig.update_xaxes(title_text="layer (0 = embeddings)", dtick=1, row=len(pairs), col=1)
    default = ("Drift per layer and metric: colour = how far the layer moved (1 − similarity for CKA, distance "
               "otherwise" + (", scaled within each metric" if scale_within_metric else "") + "); text = raw value")
    fig.update_layout(template=TEMPLATE, title={"text": title or default}, height=max(320, 260 * len(pairs)))
    return fig


# ------------------------------------------------------------------------------------------------ projection
def plot_projection(
    projection: pd.DataFrame,
    *,
    color: str = "label",
    title: str | None = None,
) -> go.Figure:
    """Scatter of a joint UMAP / PCA projection: one panel per model, coloured by label or domain.

    Both panels share their axes (the projection was fitted on both models together), so the same region means the
    same thing in both. Hovering a point shows its sentence.

    Parameters
    ----------
    projection : DataFrame
        From :func:`lnsr_viz.analysis.projection.project_representations`: ``model, x, y, text, method`` and the
        ``color`` column.
    color : {'label', 'domain', 'domain_kind'} or any column, default='label'
        What colours the points. For ``'label'`` the ``label_name`` column is shown when present.
    title : str, optional
    """
    func = "plot_projection"
    df = check_frame(projection, "projection", func, ["model", "x", "y", "text", "method", color])
    shown = "label_name" if color == "label" and "label_name" in df.columns else color
    models = unique(df["model"])
    method = str(df["method"].iloc[0])
    layer = str(df["layer_name"].iloc[0]) if "layer_name" in df.columns else ""
    fig = make_subplots(rows=1, cols=len(models), shared_xaxes=True, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[str(m) for m in models])
    groups = unique(df[shown].astype(str))
    palette = {g: color_for(g) if g.lower() in METHOD_COLORS else FALLBACK_COLORS[i % len(FALLBACK_COLORS)]
               for i, g in enumerate(groups)}
    for j, model in enumerate(models, start=1):
        sub = df[df["model"] == model]
        for g in groups:
            part = sub[sub[shown].astype(str) == g]
            if part.empty:
                continue
            extra = part["domain"].astype(str) if "domain" in part.columns else pd.Series("", index=part.index)
            fig.add_trace(go.Scatter(
                x=part["x"], y=part["y"], mode="markers", name=g, legendgroup=g, showlegend=j == 1,
                marker={"color": palette[g], "size": 7, "opacity": 0.8, "line": {"width": 0.5, "color": "white"}},
                hovertext=[f"{_hover_text(t)}<br><i>{html.escape(shown)}: {html.escape(g)}; domain: "
                           f"{html.escape(d)}</i>" for t, d in zip(part["text"], extra)],
                hovertemplate=f"%{{hovertext}}<extra>{html.escape(str(model))}</extra>",
            ), row=1, col=j)
    # Each panel's x axis gets a short title (long ones overlap their neighbour's at 700 px); the units go in the
    # figure title's second line.
    if method == "pca":
        ratios = projection.attrs.get("explained_variance_ratio") or [math.nan, math.nan]
        xt, yt = f"PC 1 ({ratios[0]:.0%} of variance)", f"PC 2 ({ratios[1]:.0%} of variance)"
        units = "axes in hidden-state units"
    else:
        xt, yt = "UMAP 1", "UMAP 2"
        units = "UMAP axes have no units: only neighbourhoods are meaningful"
    fig.update_xaxes(title_text=xt)
    fig.update_yaxes(title_text=yt, row=1, col=1)
    default = (f"Sentence representations at {layer or 'the chosen layer'} ({method.upper()} fitted jointly on "
               f"{' and '.join(map(str, models))}), coloured by {readable(shown)}<br><sup>{units}</sup>")
    fig.update_layout(template=TEMPLATE, title={"text": title or default}, legend_title_text=readable(shown),
                      hovermode="closest")
    return fig


# ------------------------------------------------------------------------------------------------ theory
def plot_theory_scatter(
    runs: pd.DataFrame,
    *,
    x: str = "noise_sensitivity",
    y: str = "generalisation_gap",
    color: str = "method",
    correlations: pd.DataFrame | None = None,
    title: str | None = None,
) -> go.Figure:
    """Scatter of two per-run quantities of :func:`lnsr_viz.experiments.theory_runs.theory_table`, one point per run.

    With a categorical ``color`` (e.g. ``method``, or an integer column such as ``seed``) every group gets its
    colour from :func:`color_for`; with a float one (e.g. ``generalisation_gap`` while ``x``/``y`` are noise
    sensitivity and Jacobian norm) the points share a colour scale, which shows three quantities at once. Given
    ``correlations`` (the table's ``correlations``), the title quotes Pearson's r and Spearman's rho with their CIs
    for this pair.

    Parameters
    ----------
    runs : DataFrame
        ``theory_table(store).runs``.
    x, y : str
        Columns to plot (any two of noise_sensitivity, jacobian_fro2, hessian_trace, generalisation_gap, ood_gap).
    color : str, default='method'
    correlations : DataFrame, optional
    title : str, optional
    """
    func = "plot_theory_scatter"
    df = check_frame(runs, "runs", func, list(dict.fromkeys(["run_id", x, y, color])))
    df = df.dropna(subset=[x, y])
    if df.empty:
        raise ValueError(f"{func}: no run has both {x!r} and {y!r}; the store lacks one of them (Jacobian norms and "
                         "Hessian traces appear only where theory_measurements() was stored in a run's extra).")
    fig = go.Figure()
    seeds = df["seed"] if "seed" in df.columns else pd.Series("", index=df.index)
    hover = [f"run {r}<br>seed {s}" for r, s in zip(df["run_id"], seeds)]
    numeric = pd.api.types.is_float_dtype(df[color])  # measured quantities: a colour scale; labels, seeds: groups
    if numeric:
        fig.add_trace(go.Scatter(
            x=df[x], y=df[y], mode="markers", name=color, hovertext=hover,
            marker={"color": df[color], "colorscale": "Viridis", "size": 11, "showscale": True,
                    "colorbar": {"title": {"text": _THEORY_LABELS.get(color, color)}}},
            hovertemplate=f"%{{hovertext}}<br>{x} = %{{x:.4g}}<br>{y} = %{{y:.4g}}<br>{color} = "
                          "%{marker.color:.4g}<extra></extra>",
        ))
    else:
        for g in unique(df[color].astype(str)):
            part = df[df[color].astype(str) == g]
            fig.add_trace(go.Scatter(
                x=part[x], y=part[y], mode="markers", name=g,
                hovertext=[hover[i] for i in np.flatnonzero((df[color].astype(str) == g).to_numpy())],
                marker={"color": color_for(g), "size": 11, "line": {"width": 1, "color": "white"}},
                hovertemplate=f"<b>{html.escape(g)}</b><br>%{{hovertext}}<br>{x} = %{{x:.4g}}<br>{y} = %{{y:.4g}}"
                              "<extra></extra>",
            ))
    stat = ""
    if correlations is not None:
        c = check_frame(correlations, "correlations", func, ["x", "y", "pearson_r", "spearman_rho"])
        row = c[((c["x"] == x) & (c["y"] == y)) | ((c["x"] == y) & (c["y"] == x))]
        if len(row):
            r = row.iloc[0]
            stat = (f"<br><sup>Pearson r = {r['pearson_r']:.2f} [{r.get('pearson_ci_low', math.nan):.2f}, "
                    f"{r.get('pearson_ci_high', math.nan):.2f}], Spearman ρ = {r['spearman_rho']:.2f} "
                    f"[{r.get('spearman_ci_low', math.nan):.2f}, {r.get('spearman_ci_high', math.nan):.2f}] "
                    f"(95% bootstrap CIs, n = {int(r.get('n', len(df)))} runs)"
                    + ("; CI includes 0: no clear relation (within noise)"
                       if _includes_zero(r.get("spearman_ci_low", math.nan), r.get("spearman_ci_high", math.nan))
                       else "") + "</sup>")
    default = f"{_short(y)} vs {_short(x)} across {len(df)} stored runs" + stat
    fig.update_layout(template=TEMPLATE, title={"text": title or default},
                      legend_title_text=None if numeric else readable(color))
    fig.update_xaxes(title_text=_THEORY_LABELS.get(x, x))
    fig.update_yaxes(title_text=_THEORY_LABELS.get(y, y))
    return fig


def _includes_zero(low: float, high: float) -> bool:
    """Whether a CI includes 0 or is undefined (weak evidence of a relation)."""
    lo, hi = float(low), float(high)
    return not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0.0 <= hi


def _short(column: str) -> str:
    """The name a title uses for a column: the readable name its dropdown shows."""
    return readable(column)


def plot_small_noise_identity(identity: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """The small-noise identity ``E||f(h+e) - f(h)||^2 ~ sigma^2 ||J||_F^2``: both sides against sigma.

    Points: the measured noise sensitivity divided by ``sigma^2`` (per token, 95% CI over sentences), coloured by
    regime (holds / breaks: nonlinear / breaks: round-off). Dashed line and band: the Hutchinson estimate of
    ``||J||_F^2`` with +-2 standard errors. Where the points sit on the line the identity holds; they leave it at
    large sigma (the network is not linear over the noise) and at tiny sigma (round-off).

    Parameters
    ----------
    identity : DataFrame
        From :func:`lnsr_viz.analysis.theory.small_noise_identity` (several can be concatenated; each
        ``(layer, stop, dtype)`` gets its own line and marker symbol).
    title : str, optional
    """
    func = "plot_small_noise_identity"
    need = ["sigma", "noise_sensitivity", "noise_sensitivity_ci_low", "noise_sensitivity_ci_high", "jacobian_fro2",
            "jacobian_se", "ratio", "regime", "layer", "stop", "dtype"]
    df = check_frame(identity, "identity", func, need)
    if (df["sigma"] <= 0).any():
        raise ValueError(f"{func}: sigma must be > 0 (the x axis is logarithmic); got {sorted(df['sigma'])[:3]}.")
    fig = go.Figure()
    symbols = ("circle", "diamond", "square", "triangle-up", "x")
    lo_x, hi_x = float(df["sigma"].min()) / 2, float(df["sigma"].max()) * 2
    for gi, ((layer, stop, dtype), g) in enumerate(df.groupby(["layer", "stop", "dtype"], sort=True)):
        g = g.sort_values("sigma")
        label = f"h_{stop} w.r.t. h_{layer}, {dtype}"
        jac, se = float(g["jacobian_fro2"].iloc[0]), float(g["jacobian_se"].iloc[0])
        band = 2 * se if math.isfinite(se) else 0.0
        fig.add_trace(go.Scatter(x=[lo_x, hi_x, hi_x, lo_x], y=[jac - band, jac - band, jac + band, jac + band],
                                 fill="toself", fillcolor="rgba(0, 114, 178, 0.15)", line={"width": 0},
                                 mode="lines", hoverinfo="skip", showlegend=False, name=f"{label} ±2 SE"))
        fig.add_trace(go.Scatter(x=[lo_x, hi_x], y=[jac, jac], mode="lines", name=f"||J||²_F ({label})",
                                 line={"color": "#0072B2", "dash": "dash"},
                                 hovertemplate=f"Hutchinson ||J||²_F = {jac:.4g} ± {se:.2g} (SE)<extra>{label}"
                                               "</extra>"))
        for regime in unique(g["regime"]):
            part = g[g["regime"] == regime]
            fig.add_trace(go.Scatter(
                x=part["sigma"], y=part["noise_sensitivity"], mode="markers", name=f"{regime} ({label})",
                marker={"color": _REGIME_COLORS.get(regime, "#7F7F7F"), "size": 10, "symbol": symbols[gi % 5]},
                error_y={"type": "data", "symmetric": False,
                         "array": (part["noise_sensitivity_ci_high"] - part["noise_sensitivity"]).tolist(),
                         "arrayminus": (part["noise_sensitivity"] - part["noise_sensitivity_ci_low"]).tolist()},
                customdata=part[["ratio"]].to_numpy(),
                hovertemplate=("σ = %{x:.2g}<br>E||Δ||² / (σ² T) = %{y:.4g}<br>ratio to ||J||²_F = "
                               f"%{{customdata[0]:.3f}}<br>{regime}<extra>{label}</extra>"),
            ))
    fig.update_xaxes(type="log", title_text="noise standard deviation σ per coordinate (hidden-state units, log)")
    fig.update_yaxes(type="log", title_text="E||f(h+e) − f(h)||² / (σ² T) and ||J||²_F per token (log)")
    default = ("Small-noise identity: noise sensitivity / σ² (points) vs the Jacobian norm ||J||²_F (dashed, ±2 SE) "
               "for shrinking σ")
    fig.update_layout(template=TEMPLATE, title={"text": title or default}, legend_title_text="regime")
    return fig


# ------------------------------------------------------------------------------------------------ attributions
_LABEL_K = re.compile(r"^(?:LABEL_)?(\d+)$")


def _class_name(name: object, target: object, class_names: Sequence[str] | None) -> str:
    """A readable class name: the model's own name unless it is transformers' ``LABEL_k`` (or a bare id), which
    becomes ``class_names[k]`` when given, else ``class k``."""
    text = str(name)
    match = _LABEL_K.match(text) or _LABEL_K.match(str(target))
    if match is None or not (text.startswith("LABEL_") or text == str(target)):
        return text
    k = int(match.group(1))
    if class_names is not None and 0 <= k < len(class_names):
        return str(class_names[k])
    return f"class {k}"


def plot_attributions(
    attributions: pd.DataFrame,
    *,
    value: str = "attribution_norm",
    class_names: Sequence[str] | None = None,
    tokens_per_row: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """Token attributions as coloured words: one panel per model (one above the other), the sentence wrapped into
    rows of tokens, each cell a token (its text shown) coloured by its attribution on a diverging scale centred at 0
    (blue: pushes towards the explained class, red: against it).

    Each panel's title says which class the model explains and with what probability; hovering a cell gives the
    token's position and both values.

    Parameters
    ----------
    attributions : DataFrame
        From :func:`lnsr_viz.analysis.attribution.token_attributions`.
    value : {'attribution_norm', 'attribution'}, default='attribution_norm'
        Normalised (share of the model's total absolute attribution, comparable across models) or raw.
    class_names : sequence of str, optional
        Names of the class ids (e.g. :data:`lnsr_viz.data.text.SENTIMENT_LABELS`), used where a model's config
        names its classes only ``LABEL_k``; without it such a class shows as ``class k``.
    tokens_per_row : int, optional
        Tokens per row (default: as many as fit about 560 px at 7 px per character of the longest token, 4-12).
    title : str, optional
    """
    func = "plot_attributions"
    check_choice("value", value, ("attribution_norm", "attribution"), owner=func)
    df = check_frame(attributions, "attributions", func,
                      ["model", "position", "token", value, "target", "target_prob"])
    models = unique(df["model"])
    n_pos = int(df["position"].max()) + 1
    longest = max((len(str(t)) for t in df["token"]), default=1)
    per_row = int(tokens_per_row) if tokens_per_row else max(4, min(12, 560 // (7 * (longest + 1))))
    if per_row < 1:
        raise ValueError(f"{func}: tokens_per_row must be a positive integer. Got {tokens_per_row!r} instead.")
    n_rows = math.ceil(n_pos / per_row)
    panel_titles = []
    for model in models:
        first = df[df["model"] == model].iloc[0]
        name = _class_name(first["target_name"] if "target_name" in df.columns else first["target"],
                           first["target"], class_names)
        panel_titles.append(f"{html.escape(str(model))}: explains class “{html.escape(name)}” "
                            f"(p = {float(first['target_prob']):.2f})")
    fig = make_subplots(rows=len(models), cols=1, subplot_titles=panel_titles, vertical_spacing=0.12 /
                        max(1, len(models) - 1) if len(models) > 1 else 0.0)
    z_all = [float(v) for v in df[value] if math.isfinite(float(v))]
    limit = max((abs(v) for v in z_all), default=1.0) or 1.0
    unit = "share of total |attribution|" if value == "attribution_norm" else "attribution (change of the output)"
    row_labels = [f"tokens {r * per_row + 1}–{min(n_pos, (r + 1) * per_row)}" if r * per_row + 1 < n_pos
                  else f"token {n_pos}" for r in range(n_rows)]
    for i, model in enumerate(models, start=1):
        sub = df[df["model"] == model].set_index("position")
        z, text, custom = [], [], []
        for r in range(n_rows):
            cells = range(r * per_row, (r + 1) * per_row)
            z.append([float(sub[value].get(p, math.nan)) if p < n_pos else math.nan for p in cells])
            text.append([html.escape(str(sub["token"].get(p, ""))) if p < n_pos else "" for p in cells])
            custom.append([[p, float(sub["attribution"].get(p, math.nan)) if "attribution" in sub.columns
                            else math.nan] for p in cells])
        fig.add_trace(go.Heatmap(
            z=z, x=list(range(per_row)), y=row_labels, text=text, texttemplate="%{text}",
            textfont={"size": 12}, customdata=custom, colorscale="RdBu", zmid=0, zmin=-limit, zmax=limit,
            xgap=2, ygap=4, showscale=i == 1, name=str(model),
            colorbar={"title": {"text": unit, "side": "right"}, "len": 0.9},
            hovertemplate="token <b>%{text}</b> (position %{customdata[0]})<br>" + value + " = %{z:.3g}<br>raw "
                          "attribution = %{customdata[1]:.3g}<extra>" + html.escape(str(model)) + "</extra>",
        ), row=i, col=1)
    sentence = str(df["text"].iloc[0]) if "text" in df.columns else ""
    # the whole sentence under the title, in small lines short enough for a 700 px figure (never cut)
    quoted = [f"<sup>{line}</sup>" for line in _hover_text(f"“{sentence}”", 58).split("<br>")] if sentence else []
    default = "<br>".join([f"Integrated-Gradients attributions ({unit})", *quoted])
    fig.update_layout(template=TEMPLATE, title={"text": title or default},
                      height=170 + len(models) * (40 + 36 * n_rows), margin={"t": 100 + 16 * len(quoted)})
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(autorange="reversed", showgrid=False, tickfont={"size": 10})
    fig.update_annotations(font_size=12)
    return fig


def plot_drift_by_layer(
    drift: pd.DataFrame,
    *,
    metric: str = "cka",
    color: str = "method",
    confidence: float = 0.95,
    title: str | None = None,
) -> go.Figure:
    """Drift from the reference model per layer: one line per ``color`` group, mean over seeds with a t-interval band.

    Parameters
    ----------
    drift : DataFrame
        Rows of :func:`lnsr_viz.analysis.drift.representation_drift` for several runs, with a ``color`` column (e.g.
        ``method``) and optionally ``seed`` (e.g. ``ComparisonResult.drift``): ``layer, metric, kind, value``.
    metric : str, default='cka'
        One of the metrics present (see :data:`lnsr_viz.analysis.drift.DRIFT_METRICS`).
    color : str, default='method'
        The column whose values get one line each.
    confidence : float, default=0.95
        Of the band over seeds (no band with one seed).
    title : str, optional
    """
    from ..analysis.drift import DRIFT_METRICS

    func = "plot_drift_by_layer"
    df = check_frame(drift, "drift", func, ["layer", "metric", "kind", "value", color])
    present = unique(df["metric"])
    check_choice("metric", metric, present, owner=func, hint="(the metrics present in the drift table)")
    sub = df[df["metric"] == metric]
    kind = str(sub["kind"].iloc[0])
    fig = go.Figure()
    for group in unique(sub[color]):
        rows = sub[sub[color] == group]
        layers = sorted(rows["layer"].unique())
        stats = [mean_ci(rows.loc[rows["layer"] == layer, "value"], confidence) for layer in layers]
        col = color_for(group)
        band = ci_band(layers, [st[1] for st in stats], [st[2] for st in stats], color=col, name=str(group),
                     group=str(group))
        if band is not None:
            fig.add_trace(band)
        fig.add_trace(go.Scatter(
            x=layers, y=[st[0] for st in stats], mode="lines+markers", name=str(group), legendgroup=str(group),
            line={"color": col}, customdata=[[st[3]] for st in stats],
            hovertemplate=f"{html.escape(str(group))}<br>layer %{{x}}<br>{metric} %{{y:.4f}} "
                          "(mean of %{customdata[0]} runs)<extra></extra>"))
    meaning = DRIFT_METRICS.get(metric, (kind, metric))[1]
    direction = "1 = unchanged" if kind == "similarity" else "0 = unchanged"
    fig.update_layout(
        template=TEMPLATE,
        title=title or f"Drift from the pre-trained model per layer: {readable(metric)} ({direction})",
        xaxis_title="layer (0 = embeddings)",
        yaxis={"title": {"text": wrap_text(f"{readable(metric)}: {meaning}", 48)}, "automargin": True},  # never cut
        legend_title_text=readable(color),
    )
    fig.update_xaxes(dtick=1)
    return fig

"""What every figure of :mod:`lnsr_viz.viz` shares: the look, the input checks, the per-layer summary.

One home for the helpers that :mod:`~lnsr_viz.viz.figures`, :mod:`~lnsr_viz.viz.analysis_figures`,
:mod:`~lnsr_viz.viz.notebook_figures`, :mod:`~lnsr_viz.viz.study_figures`, the reports and the dashboards all use,
so no module reaches into another's private names:

* the look: :data:`TEMPLATE`, one colour per method or model label (:data:`METHOD_COLORS`,
  :data:`FALLBACK_COLORS`, :func:`color_for`), axis titles with units (:func:`metric_label`), readable names of
  raw column and setting names (:data:`READABLE_NAMES`, :func:`readable`), :func:`wrap_title`, :func:`wrap_text`,
  the legend below the plot (:func:`legend_below`);
* how strong a paired difference is (:func:`is_weak_evidence`): weak evidence is drawn hollow and worded
  "within noise" everywhere;
* the checks: :func:`check_frame` (a non-empty DataFrame with the columns a figure needs; the message lists what
  was expected and what came) and :func:`select_rows` (one value of a column, or insist there is only one);
* shared pieces of figures: :func:`ci_band` (a filled CI band), :func:`unique`, :func:`format_cell`,
  :func:`format_number`;
* the statistics figures show, computed in one place: :func:`mean_ci` (the mean with a Student-t interval over
  seeds, scipy's t quantile) and :func:`aggregate_layers` (one point per layer of a stability curve).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = [
    "TEMPLATE", "METHOD_COLORS", "FALLBACK_COLORS", "METRIC_LABELS", "STABILITY_METRICS", "LAYER_AXIS", "PRODUCERS",
    "color_for", "rgba", "metric_label", "check_frame", "unique", "select_rows", "mean_ci", "aggregate_layers",
    "ci_band", "format_number", "format_cell", "wrap_title", "READABLE_NAMES", "readable", "wrap_text",
    "legend_below", "is_weak_evidence", "ALPHA",
]

TEMPLATE = "plotly_white"

#: Colour of each known method / model label (Okabe-Ito and Paul Tol colour-blind-safe hues).
#: ``pretrained`` is grey because it is the untouched reference, not a fine-tuning method.
METHOD_COLORS: dict[str, str] = {
    "pretrained": "#7F7F7F",
    "vanilla": "#0072B2",
    "lnsr": "#D55E00",
    "l2sp": "#009E73",
    "mixout": "#CC79A7",
    "smart": "#E69F00",
    "r3f": "#56B4E9",
    "rdrop": "#882255",
    "noisytune": "#999933",
    "hype": "#332288",
    "childtuning": "#44AA99",
}

#: Colours for labels not in :data:`METHOD_COLORS`; a label always maps to the same entry.
FALLBACK_COLORS: tuple[str, ...] = (
    "#1B9E77",
    "#7570B3",
    "#E7298A",
    "#66A61E",
    "#A6761D",
    "#6A3D9A",
    "#B15928",
    "#1F78B4",
    "#33A02C",
    "#E31A1C",
    "#FF7F00",
    "#B2DF8A",
)

#: Axis title (with its unit) of each metric or history column.
METRIC_LABELS: dict[str, str] = {
    "change_rel": "relative change ||h̃ₗ − hₗ|| / ||hₗ|| (ratio)",
    "change_l2": "L2 change ||h̃ₗ − hₗ|| (hidden-state units)",
    "accuracy": "accuracy (fraction correct)",
    "macro_f1": "macro-F1 (0–1)",
    "nll": "negative log-likelihood (nats per example)",
    "ece": "expected calibration error (fraction, 0–1)",
    "roc_auc": "ROC AUC (0–1)",
    "f1": "F1 (%, SQuAD official)",
    "exact_match": "exact match (%, SQuAD official)",
    "span_loss": "span loss (nats per window)",
    "train_loss": "training loss (nats per example)",
    "train_task_loss": "task loss (nats per example)",
    "train_reg_loss": "regulariser loss (loss units)",
    "train_reg_contribution": "regulariser's share of the loss: weight x term (nats per example)",
    "train_accuracy": "training accuracy (fraction correct)",
    "val_accuracy": "validation accuracy (fraction correct)",
    "val_loss": "validation loss (nats per example)",
    "gap": "generalisation gap: train − validation accuracy (fraction)",
}

#: The readable name of each raw column, metric or setting name shown to a reader (dropdowns, titles, legends).
READABLE_NAMES: dict[str, str] = {
    "in_manifold": "in-manifold",
    "gaussian": "Gaussian",
    "uniform": "uniform",
    "roc_auc": "ROC AUC",
    "ece": "ECE",
    "nll": "NLL",
    "macro_f1": "macro-F1",
    "f1": "F1",
    "exact_match": "exact match",
    "accuracy": "accuracy",
    "change_rel": "relative change",
    "change_l2": "L2 change",
    "train_loss": "total loss",
    "train_task_loss": "task loss",
    "train_reg_loss": "regulariser term",
    "train_reg_contribution": "regulariser's share",
    "train_accuracy": "train accuracy",
    "val_accuracy": "validation accuracy",
    "gap": "generalisation gap",
    "label_name": "label",
    "domain_kind": "domain kind",
    "noise_sensitivity": "noise sensitivity",
    "jacobian_fro2": "Jacobian norm",
    "hessian_trace": "Hessian trace",
    "generalisation_gap": "generalisation gap",
    "ood_gap": "OOD gap",
    "cka": "CKA",
    "cka_debiased": "debiased CKA",
    "cosine_drift_token": "cosine drift (tokens)",
    "cosine_drift_sentence": "cosine drift (sentences)",
    "weight_distance": "weight distance",
    "weight_distance_rel": "relative weight distance",
    "top_sensitivity": "top-layer noise sensitivity",
    "ood_accuracy": "out-of-domain accuracy",
    "ood_roc_auc": "out-of-domain ROC AUC",
    "reg_to_task_ratio": "regulariser / task loss",
    "repr_effective_rank": "effective rank of representations",
}

#: The significance level below which a (corrected) p-value counts as a clear difference.
ALPHA = 0.05

#: The two change measures of a stability profile.
STABILITY_METRICS = ("change_rel", "change_l2")

#: The x-axis title of every per-layer figure.
LAYER_AXIS = "layer (0 = embeddings)"

#: What produces each table, for "nothing to plot" messages (tables not named here get a plain message).
PRODUCERS: dict[str, str] = {
    "profile": "the stability probe (StabilityProbe.profile)",
    "metrics": "the evaluation (one row per run, domain and metric)",
    "summary": "the summary over seeds (lnsr_viz.analysis.stats)",
    "history": "the training loop (one row per run and epoch)",
    "paired": "the paired comparison (lnsr_viz.analysis.stats)",
    "df": "the caller",
}


# --------------------------------------------------------------------------------------------
# colours and labels


def color_for(label: Hashable) -> str:
    """Return the hex colour of a method or model label, the same in every figure.

    Known labels (:data:`METHOD_COLORS`, matched case-insensitively) get their fixed colour.
    Any other label gets an entry of :data:`FALLBACK_COLORS` chosen from a hash of its text
    (``hashlib``, not Python's salted ``hash``), so it is stable across processes and runs.
    Two unknown labels may share a fallback colour.
    """
    text = str(label)
    if text in METHOD_COLORS:
        return METHOD_COLORS[text]
    key = text.strip().lower()
    if key in METHOD_COLORS:
        return METHOD_COLORS[key]
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    return FALLBACK_COLORS[int.from_bytes(digest[:4], "big") % len(FALLBACK_COLORS)]


def rgba(hex_color: str, alpha: float) -> str:
    """``'#RRGGBB'`` -> ``'rgba(r, g, b, alpha)'`` for semi-transparent CI bands."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r}, {g}, {b}, {alpha})"


def metric_label(metric: str) -> str:
    """The axis title of ``metric`` (:data:`METRIC_LABELS`), or the name itself."""
    return METRIC_LABELS.get(metric, metric)


def readable(name: Any) -> str:
    """The readable name of a raw column / metric / setting name (:data:`READABLE_NAMES`), else the name with
    spaces for underscores (``in_manifold`` -> ``in-manifold``, ``roc_auc`` -> ``ROC AUC``)."""
    text = str(name)
    return READABLE_NAMES.get(text, READABLE_NAMES.get(text.lower(), text.replace("_", " ")))


def wrap_text(text: str, width: int) -> str:
    """``text`` broken with ``<br>`` into lines of at most ``width`` characters (words kept whole; nothing cut)."""
    import textwrap

    return "<br>".join(textwrap.wrap(str(text), width, break_long_words=False)) or str(text)


def legend_below(fig: go.Figure, *, title: str | None = None) -> go.Figure:
    """Put ``fig``'s legend in rows under the plot (horizontal), so a long legend never takes the plot's width."""
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.18, "xanchor": "left", "x": 0,
                              **({"title": {"text": title}} if title is not None else {})})
    bottom = fig.layout.margin.b if fig.layout.margin.b is not None else 60
    fig.update_layout(margin={"b": max(bottom, 110)})
    return fig


def is_weak_evidence(ci_low: float, ci_high: float, p: float | None = None, *, alpha: float = ALPHA) -> bool:
    """True when a difference is weak evidence: its CI includes 0 (or is undefined) or its (corrected) p-value is
    ``alpha`` or more (a NaN / missing p does not count). Such a difference is drawn hollow and worded
    "no clear difference (within noise)"."""
    lo, hi = float(ci_low), float(ci_high)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0.0 <= hi:
        return True
    return p is not None and math.isfinite(float(p)) and float(p) >= alpha


def wrap_title(fig: go.Figure, *, width: int = 90) -> go.Figure:
    """Return a copy of ``fig`` whose title is broken into lines of at most ``width`` characters.

    plotly never wraps titles; a descriptive title of 100+ characters is cut off in a figure of notebook width
    (about 850 px on a laptop screen). Existing ``<br>`` breaks are kept.
    """
    out = go.Figure(fig)
    text = out.layout.title.text
    if not text or len(text) <= width:
        return out
    lines = []
    for part in text.split("<br>"):
        line = ""
        for word in part.split(" "):
            if line and len(line) + 1 + len(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    out.update_layout(title={"text": "<br>".join(lines)})
    if len(lines) > 1:
        top = (out.layout.margin.t if out.layout.margin.t is not None else 80) + 18 * (len(lines) - 1)
        out.update_layout(margin={"t": top})
    return out


# --------------------------------------------------------------------------------------------
# input checks


def check_frame(df: Any, name: str, func: str, required: Sequence[str]) -> pd.DataFrame:
    """Check ``df`` is a non-empty DataFrame holding ``required`` columns; return it.

    ``name`` is the table's name in the messages; for the tables of :data:`PRODUCERS` an empty frame's message
    also says what produced no rows.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{func} expects a pandas DataFrame for {name!r}. Got {type(df).__name__} instead.")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"{func}: {name!r} is missing column(s) {missing}. "
            f"Expected columns {list(required)} but received: {[str(c) for c in df.columns]}."
        )
    if df.empty:
        producer = PRODUCERS.get(name)
        tail = f"; {producer} produced no rows." if producer else "."
        raise ValueError(f"{func}: {name!r} is empty, so there is nothing to plot{tail}")
    return df


def unique(values: Iterable[Any]) -> list[Any]:
    """Unique values in order of first appearance (NaN-free; numpy scalars as Python values)."""
    out = []
    for v in dict.fromkeys(values):
        if isinstance(v, float) and math.isnan(v):
            continue
        out.append(v.item() if isinstance(v, np.generic) else v)
    return out


def select_rows(df: pd.DataFrame, column: str, value: Any, *, func: str, param: str, what: str) -> pd.DataFrame:
    """Keep the rows where ``column == value``; with ``value=None`` insist there is one value.

    Floats are compared with ``np.isclose`` so ``scale=0.05`` matches a stored 0.05000000001.
    """
    available = sorted(unique(df[column]), key=lambda v: (str(type(v)), v))
    if value is None:
        if len(available) > 1:
            raise ValueError(
                f"{func}: {what} holds several {column!r} values {available}; choose one with "
                f"{param}=... (e.g. {param}={available[0]!r}) or filter the frame first."
            )
        return df
    col = df[column]
    if isinstance(value, (float, np.floating)) and pd.api.types.is_numeric_dtype(col):
        mask = np.isclose(col.to_numpy(dtype=float), float(value))
    else:
        mask = (col == value).to_numpy()
    if not mask.any():
        raise ValueError(f"{func}: no rows of {what} with {column}={value!r}. Available values: {available}.")
    return df.loc[mask]


# --------------------------------------------------------------------------------------------
# the statistics a figure shows (computed by lnsr_viz.analysis.stats)


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and two-sided Student-t confidence interval of the finite ``values``: ``(mean, low, high, n)``.

    The bounds are NaN when fewer than 2 values are finite, because a spread cannot be estimated from one value.
    The interval is :func:`lnsr_viz.analysis.stats.t_interval`'s; this adapter drops the non-finite values and
    picks the fields the figures draw.
    """
    from ..analysis.stats import t_interval

    arr = np.asarray(list(values), dtype=float)
    ci = t_interval(arr[np.isfinite(arr)], confidence)
    return ci.mean, ci.low, ci.high, ci.n


def aggregate_layers(sub: pd.DataFrame, metric: str, lo_col: str, hi_col: str, *, has_seed: bool) -> dict[str, list]:
    """Collapse the rows of one stability curve to one point per layer.

    Rows are first averaged within each seed (when several seeds are present), then each layer's point is the mean
    over seeds with a Student-t interval (:func:`mean_ci`); a layer with a single row keeps that row's own CI over
    examples. Returns lists ``layer, mean, low, high, band_kind, layer_name`` (``band_kind`` says which band it is).
    """
    cols = [metric, lo_col, hi_col]
    unit = "rows"
    if has_seed and sub.groupby("layer")["seed"].nunique().max() > 1:
        sub = sub.groupby(["layer", "seed"], sort=True)[cols].mean().reset_index()
        unit = "seeds"
    names = {}
    if "layer_name" in sub.columns:
        names = dict(zip(sub["layer"], sub["layer_name"]))
    out: dict[str, list] = {k: [] for k in ("layer", "mean", "low", "high", "band_kind", "layer_name")}
    for layer, g in sub.groupby("layer", sort=True):
        if len(g) == 1:
            mean, low, high = (float(g[c].iloc[0]) for c in cols)
            n_ex = f", n={int(g['n_examples'].iloc[0])} examples" if "n_examples" in g.columns else ""
            kind = f"95% CI over examples{n_ex}"
        else:
            mean, low, high, n = mean_ci(g[metric])
            kind = f"95% t-interval over {n} {unit}"
        layer_v = layer.item() if isinstance(layer, np.generic) else layer
        out["layer"].append(layer_v)
        out["mean"].append(mean)
        out["low"].append(low)
        out["high"].append(high)
        out["band_kind"].append(kind)
        out["layer_name"].append(str(names.get(layer, "embed" if layer_v == 0 else f"blocks.{layer_v - 1}")))
    return out


# --------------------------------------------------------------------------------------------
# shared pieces of figures and tables


def ci_band(
    x: Sequence[Any], low: Sequence[float], high: Sequence[float], *, color: str, name: str, group: str, **kw: Any
) -> go.Scatter | None:
    """One closed, filled polygon between ``low`` and ``high`` (finite points only), or None."""
    pts = [(xi, lo, hi) for xi, lo, hi in zip(x, low, high) if np.isfinite(lo) and np.isfinite(hi)]
    if not pts:
        return None
    xs = [p[0] for p in pts]
    return go.Scatter(
        x=xs + xs[::-1],
        y=[p[2] for p in pts] + [p[1] for p in pts][::-1],
        fill="toself",
        fillcolor=rgba(color, 0.2),
        line={"width": 0, "color": color},
        mode="lines",
        name=name,
        legendgroup=group,
        showlegend=False,
        hoverinfo="skip",
        **kw,
    )


def format_number(v: Any) -> str:
    """A parameter value in a title: floats in ``%g`` style (``0.05``), everything else as ``str``."""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


def format_cell(value: Any, float_format: str) -> str:
    """Render one table cell: NaN/None as an en dash, floats with ``float_format``, the rest with str."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return float_format.format(float(value))
    if value is pd.NA or value is pd.NaT:
        return "–"
    return str(value)

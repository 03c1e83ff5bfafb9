"""Dashboards: ipywidgets controls wired to the pure plot functions, one plotly ``FigureWidget`` updated in place.

Why a separate module: the figures themselves live in :mod:`lnsr_viz.viz.figures` and
:mod:`lnsr_viz.viz.notebook_figures` (tidy DataFrame in, figure out), the numbers in the probes and experiments. A
dashboard only *wires* them: it reads its controls, calls a library function, and copies the returned figure into
its ``FigureWidget``. Nothing here computes a statistic, so a notebook, a report and a dashboard always show the same
thing.

Every dashboard is an :class:`ipywidgets.VBox` (display it by leaving it as the last expression of a cell) with

* ``controls``: a dict of the control widgets by name (set ``controls[name].value`` to drive it from code);
* ``figure``: the :class:`plotly.graph_objects.FigureWidget`, the *same object* for the dashboard's whole life;
* ``message``: an HTML widget that is empty while all is well, and otherwise explains in words why the current
  combination of controls cannot be drawn (``error`` holds the same text). The figure then keeps its last valid
  state. No traceback ever reaches the dashboard.

A plotly ``FigureWidget`` needs ``anywidget`` (plotly >= 6); JupyterLab 4 renders it with the widget manager that
``jupyterlab_widgets`` provides. See ``notebooks/`` and ``tests/test_browser.py`` for the proof in a real browser.

The notebook runtime (the quick switch, folders, settings, stored runs) is not here: it lives in
:mod:`lnsr_viz.viz.runtime`.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from ..utils.extras import check_available, install_hint, require

__all__ = [
    "Dashboard",
    "DashboardInputError",
    "NoiseExplorer",
    "StabilityCurvesDashboard",
    "MetricsDashboard",
    "TrainingCurvesDashboard",
    "FigureDashboard",
    "DriftDashboard",
    "ProjectionDashboard",
    "TheoryDashboard",
    "AttributionDashboard",
]

_MESSAGE_STYLE = (
    "border-left: 4px solid #D55E00; background: #FFF4EC; padding: 6px 10px; margin: 4px 0; "
    "font-size: 13px; line-height: 1.45; color: #1f2328;"
)
_NOTE_STYLE = "color: #59636e; font-size: 12px; margin: 2px 0;"
_BUSY_HTML = ("<div class='lnsr-viz-busy-on' style='color: #0072B2; font-size: 12px; margin: 2px 0;'>"
              "&#9203; working: computing this setting...</div>")
#: Characters per title line at the dashboards' width (about 700 px at plotly's 17 px title font).
_TITLE_CHARS = 72


def _room_for_subplot_titles(fig: go.Figure) -> None:
    """A title of several lines over subplot titles: more room at the top, so the two never overlap."""
    lines = (fig.layout.title.text or "").count("<br>")
    if lines and len(fig.layout.annotations):
        top = fig.layout.margin.t if fig.layout.margin.t is not None else 80
        fig.update_layout(margin={"t": top + 16 * lines + 10})


def _fit_colorbars(fig: go.Figure) -> None:
    """Colour-bar titles on their side (a long horizontal one is clipped at the right edge of a 700 px figure)."""
    for trace in fig.data:
        bar = getattr(trace, "colorbar", None)
        if bar is not None and bar.title is not None and bar.title.text:
            trace.colorbar.title.side = "right"


def _noise_options(names: Sequence[str]) -> list[tuple[str, str]]:
    """Dropdown options ``(readable label, raw name)`` of noise types (``in_manifold`` shows as in-manifold)."""
    from .style import readable

    return [(readable(n), n) for n in names]


def _metric_options(names: Sequence[str]) -> list[tuple[str, str]]:
    """Dropdown options ``(readable label, raw name)`` of metrics: the axis title in
    :data:`lnsr_viz.viz.style.METRIC_LABELS` without its unit (``roc_auc`` shows as ROC AUC), else the name with
    spaces."""
    from .style import METRIC_LABELS

    return [(METRIC_LABELS[n].split(" (")[0] if n in METRIC_LABELS else str(n).replace("_", " "), n) for n in names]


def _widgets() -> Any:
    """Import ipywidgets, with an install hint (the ``[notebooks]`` extra) if it is missing."""
    return require("ipywidgets", "lnsr_viz.viz.dashboards")


def _figure_widget() -> go.FigureWidget:
    """An empty FigureWidget, or an ImportError that says what is missing."""
    check_available("anywidget", "plotly's FigureWidget (plotly >= 6 builds it on anywidget)")
    try:
        return go.FigureWidget()
    except ImportError as err:  # anywidget is there, but FigureWidget still cannot be built
        hint = install_hint("anywidget", "It")
        raise ImportError(f"plotly's FigureWidget could not be built: {err}. {hint}") from err


class DashboardInputError(ValueError):
    """A combination of controls that cannot be drawn; its text is shown in the dashboard."""


# ------------------------------------------------------------------------------------------------------------------
# base class


class Dashboard(_widgets().VBox):  # type: ignore[misc]
    """Controls + a message line + one FigureWidget that is redrawn in place whenever a control changes.

    Subclasses build their controls, call :meth:`_setup`, and implement :meth:`make_figure`, which returns a plain
    ``go.Figure`` (from a pure plot function) or raises ``ValueError`` / :class:`DashboardInputError` with a
    message for the user.

    Attributes
    ----------
    controls : dict of str to Widget
    figure : plotly.graph_objects.FigureWidget
    message : ipywidgets.HTML
    error : str or None
        The text of the current message, None when the figure shows the current controls.
    n_renders : int
        How many times the figure was redrawn (tests and notebooks check that a control move redraws).
    """

    def _setup(self, controls: Mapping[str, Any], *, rows: Sequence[Sequence[str]] | None = None,
               note: str = "", height: int = 480) -> None:
        w = _widgets()
        self.controls: dict[str, Any] = dict(controls)
        self.figure = _figure_widget()
        self.figure.update_layout(height=height)
        self.message = w.HTML(value="")
        self.busy = w.HTML(value="")
        self.busy.add_class("lnsr-viz-busy")
        self.note = w.HTML(value=f"<div style='{_NOTE_STYLE}'>{html.escape(note)}</div>" if note else "")
        self.error: str | None = None
        self.n_renders = 0
        self._height = height
        rows = rows or [list(self.controls)]
        boxes = [w.HBox([self.controls[name] for name in row]) for row in rows]
        self.children = (*boxes, self.busy, self.message, self.note, self.figure)
        # Stable CSS hooks for the browser test and for users' own styling.
        self.add_class("lnsr-viz-dashboard")
        self.add_class(f"lnsr-viz-{type(self).__name__.lower()}")
        for name, control in self.controls.items():
            control.add_class(f"lnsr-viz-control-{name.replace('_', '-')}")
            control.observe(self._on_change, names="value")
        self.refresh()

    # -- to implement -------------------------------------------------------------------------------------------
    def make_figure(self) -> go.Figure:
        """Return the figure for the current controls (a plain ``go.Figure``)."""
        raise NotImplementedError

    # -- wiring -------------------------------------------------------------------------------------------------
    def _on_change(self, change: Mapping[str, Any]) -> None:
        self.refresh()

    def value(self, name: str) -> Any:
        """The current value of control ``name``."""
        return self.controls[name].value

    def refresh(self) -> bool:
        """Redraw from the current controls; on bad input show the message instead. Returns True if redrawn.

        While it works, :attr:`busy` shows a "working" line (sent to the browser before the work starts)."""
        self.busy.value = _BUSY_HTML
        try:
            return self._redraw()
        finally:
            self.busy.value = ""

    def _redraw(self) -> bool:
        try:
            fig = self.make_figure()
        except (ValueError, TypeError, KeyError, IndexError) as err:  # bad input: a message, not a traceback
            self.show_message(str(err).strip("'\""))
            return False
        except Exception as err:  # noqa: BLE001 - a dashboard must never print a traceback into the page
            self.show_message(f"Unexpected {type(err).__name__}: {err}")
            return False
        self.clear_message()
        from .style import wrap_title

        fig = wrap_title(fig, width=_TITLE_CHARS)
        _room_for_subplot_titles(fig)
        fig.update_layout(height=max(self._height, fig.layout.height or 0))  # a figure that needs more keeps it
        _fit_colorbars(fig)
        # `update(..., overwrite=True)` replaces the traces and the layout of the *same* FigureWidget (updated in
        # place, never re-created, so the output area does not flicker). On the Python side the new layout replaces
        # the old one, but the browser only receives a `Plotly.relayout` of the new layout's properties, which
        # *merges*: a property the new figure lacks (the previous view's subplot titles = annotations, its second
        # axes, shapes, hovermode, ...) would stay on screen. So first unset those properties (a relayout to None
        # removes them in the browser), then send the new layout.
        self._clear_stale_layout(fig.layout)
        self.figure.update(data=fig.data, layout=fig.layout, overwrite=True)
        self.n_renders += 1
        return True

    def _clear_stale_layout(self, new_layout: go.Layout) -> None:
        """Unset (in Python and in the browser) the layout properties that ``new_layout`` does not set: whole
        containers (``xaxis2``, ``annotations``) and, inside a container both set (``xaxis``), its stale keys."""

        def stale(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
            out = []
            for key, value in old.items():
                if key not in new:
                    out.append(prefix + key)
                elif key != "template" and isinstance(value, dict) and isinstance(new[key], dict):
                    out += stale(value, new[key], f"{prefix}{key}.")
            return out

        paths = stale(self.figure.layout.to_plotly_json(), new_layout.to_plotly_json())
        if paths:
            self.figure.plotly_relayout(dict.fromkeys(paths))

    def show_message(self, text: str) -> None:
        """Show ``text`` above the figure (escaped); the figure keeps its last valid state."""
        self.error = text
        after = ("The plot below still shows the last valid setting." if self.n_renders
                 else "Change the controls to draw a plot.")
        self.message.value = (
            f"<div class='lnsr-viz-message' style='{_MESSAGE_STYLE}'><b>Cannot draw this combination.</b> "
            f"{html.escape(text)}<br><i>{after}</i></div>"
        )

    def clear_message(self) -> None:
        """Remove the message."""
        self.error = None
        self.message.value = ""

    def set_note(self, text: str) -> None:
        """A small grey line under the controls (e.g. how long the last update took)."""
        self.note.value = f"<div style='{_NOTE_STYLE}'>{html.escape(text)}</div>"


def _select_multiple(options: Sequence[Any], description: str, *, value: Sequence[Any] | None = None) -> Any:
    w = _widgets()
    options = [str(o) for o in options]
    return w.SelectMultiple(options=options, value=tuple(options if value is None else [str(v) for v in value]),
                            description=description, rows=min(max(len(options), 2), 6),
                            style={"description_width": "initial"})


def _dropdown(options: Sequence[Any], description: str, value: Any = None) -> Any:
    w = _widgets()
    options = list(options)
    if value is None or value not in [o[1] if isinstance(o, tuple) else o for o in options]:
        value = options[0][1] if isinstance(options[0], tuple) else options[0]
    return w.Dropdown(options=options, value=value, description=description, style={"description_width": "initial"})


def _unique(values: Any) -> list[Any]:
    out = []
    for v in pd.unique(pd.Series(values).dropna()):
        out.append(v.item() if hasattr(v, "item") else v)
    return out


def _keep(df: pd.DataFrame, column: str, chosen: Sequence[str], what: str) -> pd.DataFrame:
    """Rows whose ``column`` (as text) is among ``chosen``; an empty choice is a message, not an empty plot."""
    if not chosen:
        raise DashboardInputError(f"No {what} selected: select at least one in the '{what}' list.")
    return df.loc[df[column].astype(str).isin(list(chosen))]


# ------------------------------------------------------------------------------------------------------------------
# noise-propagation explorer


class NoiseExplorer(Dashboard):
    """Inject noise into a model and watch it travel: per-layer change, updated live as the controls move.

    Controls: model, injection layer, noise type, noise scale, scale kind and the change metric. Each change runs
    :class:`~lnsr_viz.core.probe.StabilityProbe` for that one injection layer on a small, fixed batch of sentences and
    redraws :func:`~lnsr_viz.viz.figures.plot_stability_curves`. The caching is
    :class:`lnsr_viz.viz.runtime.ProbeSession`'s (one per model and sentences, shared between explorers): the
    sentences are tokenized once and the clean forward pass is kept, so a new setting costs only the noisy replay
    of the blocks above the injection layer, and every profile is memoised per setting, so going back to a setting
    (or changing only the metric) costs the redraw alone (``benchmarks/bench_explorer.py`` measures both).

    Parameters
    ----------
    models : mapping of str to model
        Label -> ``(model, tokenizer)`` pair or anything :func:`lnsr_viz.data.models.load_model` accepts
        (``"minilm"``, a Hugging Face id, a checkpoint folder). Models of different depths may be mixed: the
        injection-layer slider goes up to the deepest one, and a layer above the chosen model's last layer shows a
        message instead of a plot.
    texts : sequence of str
        The sentences to probe (keep it small: 8-32).
    injection_layer, noise, scale, scale_kind, metric
        Initial values of the controls.
    n_draws : int, default=4
        Noise draws per sentence.
    max_length : int, default=64
        Tokenizer truncation length.
    seed : int, default=0
        Noise seed: the same setting always gives the same curve.
    max_scale : float, default=0.5
        Upper end of the scale slider.
    prefetch : bool, default=False
        After each redraw, compute the neighbouring settings (:meth:`neighbours`) in a background thread while the
        user looks, so the next move is usually answered from the memo (:meth:`ProbeSession.prefetch`). Off by
        default: the background probe attaches its noise hooks to the shared model, so another cell that runs the
        same model while it works would pass through them; turn it on in a notebook that only explores. On a
        2-core machine it also competes with the redraws for the CPU (make bench: bench_explorer).
    """

    def __init__(self, models: Mapping[str, Any], texts: Sequence[str], *, injection_layer: int = 0,
                 noise: str = "gaussian", scale: float = 0.05, scale_kind: str = "relative",
                 metric: str = "change_rel", n_draws: int = 4, max_length: int = 64, seed: int = 0,
                 max_scale: float = 0.5, prefetch: bool = False) -> None:
        super().__init__()
        from ..core.inputs import texts_of
        from ..core.noise import NOISE_TYPES
        from ..data.models import load_model
        from .runtime import probe_session

        if not isinstance(models, Mapping) or not models:
            raise ValueError("NoiseExplorer needs models={label: model}, e.g. {'minilm': 'minilm'}; got none.")
        self.texts = texts_of(list(texts), owner="NoiseExplorer")
        self.n_draws = int(n_draws)
        self.max_length = int(max_length)
        self.seed = int(seed)
        self.prefetch = bool(prefetch)
        # One ProbeSession per model (lnsr_viz.viz.runtime): tokenised once, clean pass cached, profiles memoised,
        # and shared with any other explorer over the same model and sentences.
        self._sessions: dict[str, Any] = {}
        for label, spec in models.items():
            model, tok = load_model(spec) if not isinstance(spec, tuple) else load_model(tuple(spec))
            self._sessions[str(label)] = probe_session(model, tok, self.texts, max_length=self.max_length)
        self.profile_: pd.DataFrame | None = None
        self.last_seconds: float = float("nan")
        w = _widgets()
        deepest = max(session.n_layers for session in self._sessions.values())
        style = {"description_width": "initial"}
        controls = {
            "model": _dropdown(list(self._sessions), "model"),
            "injection_layer": w.IntSlider(value=int(injection_layer), min=0, max=deepest, step=1,
                                           description="injection layer k", style=style, continuous_update=False),
            "noise": _dropdown(_noise_options(NOISE_TYPES), "noise", noise),
            "scale": w.FloatSlider(value=float(scale), min=0.0, max=float(max_scale), step=0.01,
                                   description="noise scale", readout_format=".2f", style=style,
                                   continuous_update=False),
            "scale_kind": _dropdown([("relative (fraction of ||h||)", "relative"), ("absolute (sigma)", "absolute")],
                                    "scale kind", scale_kind),
            "metric": _dropdown([("relative change", "change_rel"), ("L2 change", "change_l2")], "show", metric),
        }
        self._setup(controls, rows=[["model", "injection_layer", "noise"], ["scale", "scale_kind", "metric"]],
                    note=f"{len(self.texts)} sentences x {self.n_draws} noise draws; clean pass cached per model.")

    def adapter(self, label: str | None = None) -> Any:
        """The (caching) ModelAdapter of model ``label`` (default: the selected one)."""
        return self._sessions[label or self.value("model")].adapter

    def probe(self) -> pd.DataFrame:
        """The stability profile for the current controls (memoised); raises ValueError on a bad combination."""
        label, k = self.value("model"), int(self.value("injection_layer"))
        noise, scale, kind = self.value("noise"), float(self.value("scale")), self.value("scale_kind")
        session = self._sessions[label]
        if k > session.n_layers:
            raise DashboardInputError(
                f"Injection layer k={k} is above the last layer of '{label}', which has {session.n_layers} blocks "
                f"(layers 0-{session.n_layers}; 0 is the embedding output). Move the injection-layer slider to "
                f"{session.n_layers} or below, or pick a deeper model."
            )
        if scale <= 0:
            what = "of each token's norm" if kind == "relative" else "per coordinate"
            raise DashboardInputError(
                f"Noise scale {scale:g} ({kind}, i.e. {scale:.0%} {what}) adds no noise, so every layer's change is "
                "exactly 0 and the curve says nothing. Move the scale slider above 0 (the paper uses 0.05 = 5% of "
                "each token's norm)."
            )
        profile = session.profile(injection_layer=k, noise=noise, scale=scale, scale_kind=kind, n_draws=self.n_draws,
                                  seed=self.seed, label=label)
        self.last_seconds = session.last_seconds
        return profile

    def make_figure(self) -> go.Figure:
        from .figures import plot_stability_curves

        profile = self.probe()
        self.profile_ = profile
        session = self._sessions[self.value("model")]
        how = ("stored" if session.last_memoised and self.last_seconds == 0 else
               "precomputed in the background" if session.last_memoised else "clean pass cached")
        self.set_note(f"{len(self.texts)} sentences x {self.n_draws} noise draws; this update took "
                      f"{self.last_seconds:.2f} s ({how}).")
        fig = plot_stability_curves(profile, metric=self.value("metric"),
                                    injection_layer=int(self.value("injection_layer")), color="model")
        if self.prefetch:  # starts once the user has paused for half a second
            session.prefetch(self.neighbours(), idle_s=0.5)
        return fig

    def neighbours(self, *, max_settings: int = 6) -> list[dict[str, Any]]:
        """The settings a user is likely to move to next, nearest first, at most ``max_settings``: the injection
        layers one and two either side, the other noise types and scale kind at this layer, the scale 0.05 either
        side. Few on purpose: on 2 busy cores a long background queue slows the foreground's redraws."""
        from ..core.noise import NOISE_TYPES

        k, noise = int(self.value("injection_layer")), self.value("noise")
        scale, kind = float(self.value("scale")), self.value("scale_kind")
        base = {"injection_layer": k, "noise": noise, "scale": scale, "scale_kind": kind, "n_draws": self.n_draws,
                "seed": self.seed}
        n_layers = self._sessions[self.value("model")].n_layers
        layers = [j for j in (k + 1, k - 1, k + 2, k - 2) if 0 <= j <= n_layers]
        out = [{**base, "injection_layer": j} for j in layers[:2]]
        out += [{**base, "noise": other} for other in NOISE_TYPES if other != noise]
        out += [{**base, "injection_layer": j} for j in layers[2:]]
        out += [{**base, "scale_kind": other} for other in ("relative", "absolute") if other != kind]
        top = float(self.controls["scale"].max)
        out += [{**base, "scale": round(v, 10)} for v in (scale + 0.05, scale - 0.05) if 0 < v <= top]
        return out[:max_settings]


# ------------------------------------------------------------------------------------------------------------------
# dashboards over stored tables


class StabilityCurvesDashboard(Dashboard):
    """Stability curves of several models (paper Figure 1 style) with CI bands, from a profile table.

    Controls: which lines to show, injection layer, noise type, scale, the change metric and a log axis. The
    lines are the values of ``color`` (``model`` for probe profiles; experiment profiles label each fine-tuned
    model by its method). Wires :func:`lnsr_viz.viz.figures.plot_stability_curves`.

    Parameters
    ----------
    profile : DataFrame
        A stability profile (``docs/architecture.md``), e.g. ``ComparisonResult.profile``.
    color : str, default='model'
    injection_layer : int, default=0
    """

    def __init__(self, profile: pd.DataFrame, *, color: str = "model", injection_layer: int = 0) -> None:
        super().__init__()
        from .style import check_frame as _check_frame

        self.profile = _check_frame(profile, "profile", "StabilityCurvesDashboard",
                                     [color, "injection_layer", "layer", "noise", "scale"])
        self.color = color
        w = _widgets()
        df = self.profile
        layers = sorted(int(k) for k in _unique(df["injection_layer"]))
        controls = {
            "lines": _select_multiple(_unique(df[color]), color),
            "injection_layer": _dropdown(layers, "injection layer k", injection_layer),
            "noise": _dropdown(_noise_options(_unique(df["noise"])), "noise"),
            "scale": _dropdown(sorted(float(s) for s in _unique(df["scale"])), "scale", 0.05),
            "metric": _dropdown([("relative change", "change_rel"), ("L2 change", "change_l2")], "show"),
            "log_y": w.Checkbox(value=False, description="log y axis", indent=False),
        }
        self._setup(controls, rows=[["lines", "injection_layer", "noise"], ["scale", "metric", "log_y"]])

    def make_figure(self) -> go.Figure:
        from .figures import plot_stability_curves

        df = _keep(self.profile, self.color, self.value("lines"), self.color)
        return plot_stability_curves(df, metric=self.value("metric"), injection_layer=self.value("injection_layer"),
                                     color=self.color, noise=self.value("noise"), scale=self.value("scale"),
                                     log_y=self.value("log_y"))


class MetricsDashboard(Dashboard):
    """Accuracy (or any metric) per domain and method: one dot per seed, mean with 95% CI.

    Wires :func:`lnsr_viz.viz.figures.plot_metric_by_domain`. Controls: the metric and the methods shown.

    Parameters
    ----------
    metrics : DataFrame
        Metrics table ``method, seed, domain, metric, value``.
    summary : DataFrame, optional
        Summary over seeds; when given, the means and CIs come from it.
    in_domain : str, default='movie'
    """

    def __init__(self, metrics: pd.DataFrame, *, summary: pd.DataFrame | None = None,
                 in_domain: str = "movie") -> None:
        super().__init__()
        from .style import check_frame as _check_frame

        self.metrics = _check_frame(metrics, "metrics", "MetricsDashboard",
                                    ["method", "seed", "domain", "metric", "value"])
        self.summary = summary
        self.in_domain = in_domain
        names = [m for m in _unique(self.metrics["metric"]) if m not in ("n", "positive_rate")]
        controls = {
            "metric": _dropdown(_metric_options(names), "metric", "accuracy"),
            "methods": _select_multiple(_unique(self.metrics["method"]), "methods"),
        }
        self._setup(controls, rows=[["metric", "methods"]])

    def make_figure(self) -> go.Figure:
        from .figures import plot_metric_by_domain

        df = _keep(self.metrics, "method", self.value("methods"), "methods")
        return plot_metric_by_domain(df, metric=self.value("metric"), summary=self.summary, in_domain=self.in_domain)


class TrainingCurvesDashboard(Dashboard):
    """Training curves per method (total loss, task loss, the regulariser's share, accuracies) or the gap.

    The regulariser's share is ``train_loss - train_task_loss`` (its weight times its term, as in the comparison
    report), so the three loss curves add up.

    Wires :func:`lnsr_viz.viz.figures.plot_training_curves` and :func:`lnsr_viz.viz.figures.plot_generalisation_gap`.

    Parameters
    ----------
    history : DataFrame
        History table (one row per run and epoch).
    """

    VIEWS = (("losses and accuracy", "curves"), ("generalisation gap", "gap"))

    def __init__(self, history: pd.DataFrame) -> None:
        super().__init__()
        from .style import check_frame as _check_frame

        self.history = _check_frame(history, "history", "TrainingCurvesDashboard", ["method", "seed", "epoch"])
        self.loss_columns: tuple[str, ...] = ("train_loss", "train_task_loss", "train_reg_loss")
        if {"train_loss", "train_task_loss"} <= set(self.history.columns):
            # The regulariser's share of the loss (its weight x its term), as in the comparison report; the
            # unweighted term stays in train_reg_loss.
            self.history = self.history.assign(
                train_reg_contribution=self.history["train_loss"] - self.history["train_task_loss"])
            self.loss_columns = ("train_loss", "train_task_loss", "train_reg_contribution")
        controls = {
            "view": _dropdown(list(self.VIEWS), "view"),
            "methods": _select_multiple(_unique(self.history["method"]), "methods"),
        }
        self._setup(controls, rows=[["view", "methods"]], height=640)  # two rows of panels

    def make_figure(self) -> go.Figure:
        from .figures import plot_generalisation_gap, plot_training_curves

        df = _keep(self.history, "method", self.value("methods"), "methods")
        if self.value("view") == "gap":
            return plot_generalisation_gap(df)
        return plot_training_curves(df, metrics=self.loss_columns)


class FigureDashboard(Dashboard):
    """A generic dashboard: any pure plot function, with dropdowns over some of its keyword arguments.

    Used for figures whose controls are plain choices (e.g. which model of a drift table to show).

    Parameters
    ----------
    plot : callable
        ``plot(data, **kwargs) -> go.Figure``.
    data : DataFrame
    choices : mapping of str to sequence
        Keyword argument -> its options (a dropdown each; the first option is the initial value).
    fixed : mapping, optional
        Keyword arguments passed unchanged.
    """

    def __init__(self, plot: Callable[..., go.Figure], data: pd.DataFrame, *, choices: Mapping[str, Sequence[Any]],
                 fixed: Mapping[str, Any] | None = None, height: int = 480) -> None:
        super().__init__()
        self.plot = plot
        self.data = data
        self.fixed = dict(fixed or {})
        controls = {name: _dropdown(list(opts), name) for name, opts in choices.items()}
        self._setup(controls, height=height)

    def make_figure(self) -> go.Figure:
        kwargs = {name: c.value for name, c in self.controls.items()}
        return self.plot(self.data, **self.fixed, **kwargs)


# ------------------------------------------------------------------------------------------------------------------
# analysis dashboards (drift, projections, theory, attributions): wiring over lnsr_viz.viz.analysis_figures


class DriftDashboard(Dashboard):
    """Drift heat-map (layers x metrics, one panel per pair of models) with the metrics and pairs as controls.

    Wires :func:`lnsr_viz.viz.analysis_figures.plot_drift_heatmap`.

    Parameters
    ----------
    drift : DataFrame
        :func:`lnsr_viz.analysis.drift.representation_drift` output (several pairs may be concatenated).
    """

    def __init__(self, drift: pd.DataFrame) -> None:
        super().__init__()
        from .style import check_frame as _check_frame

        self.drift = _check_frame(drift, "df", "DriftDashboard", ["model_a", "model_b", "layer", "metric", "kind",
                                                                   "value"])
        w = _widgets()
        self._pairs = {f"{b} vs {a}": (a, b) for a, b in dict.fromkeys(zip(self.drift["model_a"],
                                                                              self.drift["model_b"]))}
        controls = {
            "pairs": _select_multiple(list(self._pairs), "models"),
            "metrics": _select_multiple(_unique(self.drift["metric"]), "metrics"),
            "scale_within_metric": w.Checkbox(value=True, description="scale each metric to its largest value",
                                              indent=False),
        }
        self._setup(controls, rows=[["pairs", "metrics", "scale_within_metric"]],
                    height=max(360, 280 * len(self._pairs)))

    def make_figure(self) -> go.Figure:
        from .analysis_figures import plot_drift_heatmap

        chosen = self.value("pairs")
        if not chosen:
            raise DashboardInputError("No model pair selected: select at least one in the 'models' list.")
        keep = {self._pairs[c] for c in chosen}
        df = self.drift[[pair in keep for pair in zip(self.drift["model_a"], self.drift["model_b"])]]
        metrics = list(self.value("metrics"))
        if not metrics:
            raise DashboardInputError("No metric selected: select at least one in the 'metrics' list.")
        return plot_drift_heatmap(df, metrics=metrics, scale_within_metric=self.value("scale_within_metric"))


class ProjectionDashboard(Dashboard):
    """UMAP / PCA scatter of sentence representations, coloured by label or domain, hover = the sentence.

    Wires :func:`lnsr_viz.viz.analysis_figures.plot_projection`. Pass one projection per layer
    (``project_representations`` once per layer) to make the layer a control; each is kept as it is, so its
    settings in ``DataFrame.attrs`` (e.g. PCA's explained variance) stay with it.

    Parameters
    ----------
    projections : DataFrame or sequence of DataFrame
        :func:`lnsr_viz.analysis.projection.project_representations` output, one frame per layer.
    """

    def __init__(self, projections: pd.DataFrame | Sequence[pd.DataFrame]) -> None:
        super().__init__()
        from .style import check_frame as _check_frame

        frames = [projections] if isinstance(projections, pd.DataFrame) else list(projections)
        if not frames:
            raise ValueError("ProjectionDashboard needs at least one projection (project_representations(...)).")
        self.projections: dict[int, pd.DataFrame] = {}
        names: dict[int, str] = {}
        for frame in frames:
            frame = _check_frame(frame, "df", "ProjectionDashboard", ["model", "x", "y", "text", "method", "layer"])
            for layer in _unique(frame["layer"]):
                part = frame[frame["layer"] == layer]
                part.attrs = dict(frame.attrs)
                self.projections[int(layer)] = part
                names[int(layer)] = str(part["layer_name"].iloc[0]) if "layer_name" in part.columns else str(layer)
        first = next(iter(self.projections.values()))
        from .style import readable

        colors = [(readable(c), c) for c in ("label", "domain", "domain_kind") if c in first.columns]
        layers = [(names[k], k) for k in sorted(self.projections)]
        controls = {
            "color": _dropdown(colors or [("model", "model")], "colour by"),
            "layer": _dropdown(layers, "layer", layers[-1][1]),
        }
        self._setup(controls, rows=[["color", "layer"]], height=520)

    def make_figure(self) -> go.Figure:
        from .analysis_figures import plot_projection

        return plot_projection(self.projections[self.value("layer")], color=self.value("color"))


class TheoryDashboard(Dashboard):
    """The theory scatter across runs: any two of noise sensitivity, Jacobian norm, Hessian trace, generalisation
    gap and OOD gap, coloured by method or by a third quantity.

    Wires :func:`lnsr_viz.viz.analysis_figures.plot_theory_scatter`.

    Parameters
    ----------
    runs : DataFrame
        ``theory_table(store).runs``.
    correlations : DataFrame, optional
        ``theory_table(store).correlations`` (quoted in the title).
    """

    QUANTITIES = ("noise_sensitivity", "jacobian_fro2", "hessian_trace", "generalisation_gap", "ood_gap")

    def __init__(self, runs: pd.DataFrame, *, correlations: pd.DataFrame | None = None,
                 x: str = "noise_sensitivity", y: str = "generalisation_gap") -> None:
        super().__init__()
        from .style import check_frame as _check_frame

        self.runs = _check_frame(runs, "df", "TheoryDashboard", ["run_id", "method"])
        self.correlations = correlations
        present = [q for q in self.QUANTITIES if q in self.runs.columns]
        measured = [q for q in present if self.runs[q].notna().any()] or present
        from .style import readable

        options = [(readable(q), q) for q in measured]
        controls = {
            "x": _dropdown(options, "x", x),
            "y": _dropdown(options, "y", y),
            "color": _dropdown([("method", "method"), *options], "colour by"),
        }
        self._setup(controls, rows=[["x", "y", "color"]])

    def make_figure(self) -> go.Figure:
        from .analysis_figures import plot_theory_scatter

        x, y = self.value("x"), self.value("y")
        if x == y:
            raise DashboardInputError(f"x and y are both {x!r}: choose two different quantities.")
        return plot_theory_scatter(self.runs, x=x, y=y, color=self.value("color"), correlations=self.correlations)


class AttributionDashboard(Dashboard):
    """Integrated-Gradients token attributions of two models side by side, for a sentence chosen from a list.

    Attributions are computed on demand with :func:`lnsr_viz.analysis.attribution.token_attributions` (memoised per
    sentence) and drawn with :func:`lnsr_viz.viz.analysis_figures.plot_attributions`.

    Parameters
    ----------
    model_a, model_b : model, (model, tokenizer) or str
        E.g. the pre-trained base and the fine-tuned model.
    sentences : sequence of str
    tokenizer : tokenizer, optional
    names : (str, str), optional
        Row labels of the two models.
    n_steps : int, default=32
        Integration steps (fewer is faster; the convergence delta in the table says how exact it is).
    class_names : sequence of str or None, default=lnsr_viz.data.text.SENTIMENT_LABELS
        Names of the class ids, shown where a model's config names its classes only ``LABEL_k`` (the packaged
        data's ``negative`` / ``positive``); None shows such a class as ``class k``.
    """

    def __init__(self, model_a: Any, model_b: Any, sentences: Sequence[str], *, tokenizer: Any = None,
                 names: Sequence[str] | None = None, n_steps: int = 32, max_length: int = 64,
                 class_names: Sequence[str] | None | str = "sentiment") -> None:
        super().__init__()
        if isinstance(class_names, str):
            from ..data.text import SENTIMENT_LABELS

            class_names = SENTIMENT_LABELS
        self.class_names = None if class_names is None else tuple(str(c) for c in class_names)
        self.model_a, self.model_b, self.tokenizer = model_a, model_b, tokenizer
        self.names = names
        self.n_steps, self.max_length = int(n_steps), int(max_length)
        self.sentences = [str(t) for t in sentences]
        if not self.sentences:
            raise ValueError("AttributionDashboard needs at least one sentence.")
        self._cache: dict[str, pd.DataFrame] = {}
        self.attributions_: pd.DataFrame | None = None
        options = [(t if len(t) <= 70 else t[:67] + "...", t) for t in self.sentences]
        controls = {
            "sentence": _dropdown(options, "sentence"),
            "value": _dropdown([("share of total |attribution|", "attribution_norm"),
                                ("raw attribution", "attribution")], "show"),
        }
        self._setup(controls, rows=[["sentence", "value"]], height=420)

    def attributions(self, sentence: str) -> pd.DataFrame:
        """Token attributions of ``sentence`` under both models (memoised)."""
        from ..analysis.attribution import token_attributions

        if sentence not in self._cache:
            self._cache[sentence] = token_attributions(self.model_a, self.model_b, sentence, self.tokenizer,
                                                       names=self.names, n_steps=self.n_steps,
                                                       max_length=self.max_length)
        return self._cache[sentence]

    def make_figure(self) -> go.Figure:
        from .analysis_figures import plot_attributions

        self.attributions_ = self.attributions(self.value("sentence"))
        return plot_attributions(self.attributions_, value=self.value("value"), class_names=self.class_names)


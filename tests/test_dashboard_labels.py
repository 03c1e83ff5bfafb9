"""Every dashboard control, switched through its choices: the figure's title, axis titles and legend follow the data.

For each :class:`~lnsr_viz.viz.dashboards.Dashboard` subclass, on the tiny / toy tables of ``tests/test_widgets.py``,
every control is moved through its options (dropdowns: every option; lists: each single item, then all; check
boxes: both states; sliders: a few values). After each move the test checks, from the data the figure draws:

* the labels the widget shows (title, every axis title, subplot titles, legend entries) are those of a figure made
  afresh from the current controls: nothing of an earlier view is left;
* the legend lists exactly the groups drawn (the chosen methods / models / labels), and the title or axis titles
  name the chosen quantity in its readable form (``in-manifold``, ``ROC AUC``), never a raw column name;
* the attribution view shows the words as cell text, and class names that are readable (never ``LABEL_k``).

A move the dashboard cannot draw shows its message instead; those are counted, and must stay a minority.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
from test_widgets import (  # the quick tables the dashboard tests use
    make_drift,
    make_history,
    make_metrics,
    make_profile,
    make_projection,
    make_theory_runs,
)

from lnsr_viz.testing import tiny_model, toy_sentences
from lnsr_viz.viz import dashboards
from lnsr_viz.viz.dashboards import (
    AttributionDashboard,
    Dashboard,
    DriftDashboard,
    FigureDashboard,
    MetricsDashboard,
    NoiseExplorer,
    ProjectionDashboard,
    StabilityCurvesDashboard,
    TheoryDashboard,
    TrainingCurvesDashboard,
)
from lnsr_viz.viz.figures import plot_generalisation_gap
from lnsr_viz.viz.style import metric_label, readable, wrap_title

#: Raw names a reader must never see in a title, an axis title or the legend.
RAW = re.compile(r"\b(in_manifold|roc_auc|label_name|domain_kind|change_rel|change_l2|train_reg_\w+|LABEL_\d+)\b")


def _flat(text: str | None) -> str:
    return (text or "").replace("<br>", " ")


def labels(fig) -> dict:
    """Title, axis titles, subplot titles / annotations and legend entries of a figure (text, <br> as spaces)."""
    layout = fig.layout
    axes = {}
    for name in layout.to_plotly_json():
        if name.startswith(("xaxis", "yaxis")):
            axes[name] = _flat(layout[name].title.text)
    legend = [t.name for t in fig.data if t.showlegend is not False and getattr(t, "showlegend", True) is not False
              and t.name and not getattr(t, "fill", None)]
    return {"title": _flat(layout.title.text), "axes": axes,
            "annotations": [_flat(a.text) for a in layout.annotations], "legend": legend}


def moves(dash: Dashboard) -> Iterator[tuple[str, object]]:
    """(control, value) pairs that take every control through its choices."""
    for name, control in dash.controls.items():
        kind = type(control).__name__
        if kind == "Dropdown":
            values = [o[1] if isinstance(o, tuple) else o for o in control.options]
            start = control.value
            for v in [v for v in values if v != start] + [start]:  # every other option, then back
                yield name, v
        elif kind == "SelectMultiple":
            options = list(control.options)
            for o in options:
                yield name, (o,)
            yield name, tuple(options)
        elif kind == "Checkbox":
            yield name, not control.value
            yield name, not control.value
        elif kind in ("IntSlider", "FloatSlider"):
            lo, hi = control.min, control.max
            values = sorted({control.value, hi, lo + (hi - lo) // 2 if kind == "IntSlider" else round(hi / 2, 2)})
            for v in values + [control.value]:
                yield name, v
        else:  # pragma: no cover - a new control type must be added here
            raise AssertionError(f"no moves for a {kind} control")


def check_follows(dash: Dashboard, expect) -> tuple[int, int]:
    """Switch every control; after each drawable move, the widget's labels are a fresh figure's and ``expect``
    holds. Returns (moves drawn, moves refused with a message)."""
    drawn = refused = 0
    for name, value in moves(dash):
        dash.controls[name].value = value
        if dash.error is not None:
            refused += 1
            continue
        drawn += 1
        fresh = wrap_title(dash.make_figure(), width=dashboards._TITLE_CHARS)
        dashboards._room_for_subplot_titles(fresh)
        got = labels(dash.figure)
        assert got == labels(fresh), f"{type(dash).__name__}: stale labels after {name} = {value!r}"
        text = " ".join([got["title"], *got["axes"].values(), *got["annotations"], *map(str, got["legend"])])
        assert not RAW.search(text), f"{type(dash).__name__}: raw name in {text!r} after {name} = {value!r}"
        assert got["title"], f"{type(dash).__name__}: no title after {name} = {value!r}"
        expect(dash, got)
    assert drawn > refused, f"{type(dash).__name__}: most moves were refused ({refused} of {drawn + refused})"
    return drawn, refused


def _drawn_groups(dash: Dashboard) -> set[str]:
    return {t.legendgroup or t.name for t in dash.figure.data if t.legendgroup or t.name}


# ------------------------------------------------------------------------------------------------ table dashboards


def test_stability_dashboard_labels_follow_every_control():
    def expect(dash, got):
        assert set(got["legend"]) == set(dash.value("lines"))
        assert readable(dash.value("noise")) in got["title"]
        assert f"scale {dash.value('scale'):g}" in got["title"]
        assert f"injected at layer {dash.value('injection_layer')}" in got["title"]
        assert got["axes"]["yaxis"] == metric_label(dash.value("metric"))
        assert dash.figure.layout.yaxis.type == ("log" if dash.value("log_y") else "linear")

    check_follows(StabilityCurvesDashboard(make_profile(noises=("gaussian", "in_manifold"), scales=(0.05, 0.1))),
                  expect)


def test_metrics_dashboard_labels_follow_every_control():
    def expect(dash, got):
        assert got["axes"]["yaxis"] == metric_label(dash.value("metric"))
        assert got["title"].startswith(metric_label(dash.value("metric")).split(" (")[0])
        assert {g for g in _drawn_groups(dash)} == set(dash.value("methods"))

    check_follows(MetricsDashboard(make_metrics()), expect)


def test_training_dashboard_labels_follow_every_control():
    def expect(dash, got):
        assert set(got["legend"]) == set(dash.value("methods"))  # one legend entry per method shown
        if dash.value("view") == "gap":
            assert got["axes"] == {"xaxis": "epoch", "yaxis": metric_label("gap")} and not got["annotations"]
        else:
            assert len(got["annotations"]) == 3  # losses, the regulariser's own panel, accuracy
            assert got["axes"]["yaxis2"].startswith("regulariser's share")
            assert got["axes"]["yaxis3"] == "accuracy (fraction correct)"
            reg = [t for t in dash.figure.data if t.yaxis == "y2"]
            assert reg and all(t.yaxis == "y2" for t in reg)  # the share on its own axis, not beside the loss

    check_follows(TrainingCurvesDashboard(make_history()), expect)


def test_figure_dashboard_labels_follow_its_choices():
    def plot(history, method):
        return plot_generalisation_gap(history[history["method"] == method], title=f"gap of {method}")

    def expect(dash, got):
        assert got["title"] == f"gap of {dash.value('method')}" and got["legend"] == [dash.value("method")]

    check_follows(FigureDashboard(plot, make_history(), choices={"method": ["vanilla", "lnsr"]}), expect)


# ------------------------------------------------------------------------------------------------ analysis dashboards


def test_drift_dashboard_labels_follow_every_control():
    def expect(dash, got):
        assert got["annotations"][:len(dash.value("pairs"))] == list(dash.value("pairs"))  # one panel per pair
        shown = {str(v) for t in dash.figure.data for v in t.y}
        assert shown == {readable(m) for m in dash.value("metrics")}

    check_follows(DriftDashboard(make_drift()), expect)


def test_projection_dashboard_labels_follow_every_control():
    def expect(dash, got):
        color = dash.value("color")
        frame = dash.projections[dash.value("layer")]
        column = "label_name" if color == "label" and "label_name" in frame else color
        assert set(got["legend"]) == set(frame[column].astype(str))
        assert f"coloured by {readable(column)}" in got["title"]
        assert str(frame["layer_name"].iloc[0]) in got["title"]
        assert got["axes"]["xaxis"] == got["axes"]["xaxis2"] and len(got["axes"]["xaxis"]) <= 30  # short: no overlap

    frames = [part for _, part in make_projection().groupby("layer")]
    for frame in frames:
        frame.attrs["explained_variance_ratio"] = [0.5, 0.25]
    check_follows(ProjectionDashboard(frames), expect)


def test_theory_dashboard_labels_follow_every_control():
    def expect(dash, got):
        x, y = dash.value("x"), dash.value("y")
        assert got["title"].startswith(f"{readable(y)} vs {readable(x)} across")  # the names the dropdowns show
        assert readable(x).split()[0].lower() in got["axes"]["xaxis"].lower()
        assert readable(y).split()[0].lower() in got["axes"]["yaxis"].lower()
        if dash.value("color") == "method":
            assert set(got["legend"]) == set(dash.runs["method"])

    drawn, refused = check_follows(TheoryDashboard(make_theory_runs()), expect)
    assert refused >= 1  # x == y is refused with a message


# ------------------------------------------------------------------------------------------------ model dashboards


@pytest.fixture(scope="module")
def models():
    return {"deep": tiny_model("bert", n_layers=4, seed=0), "shallow": tiny_model("bert", n_layers=2, seed=1)}


def test_noise_explorer_labels_follow_every_control(models):
    def expect(dash, got):
        assert got["legend"] == [dash.value("model")]
        assert readable(dash.value("noise")) in got["title"] and dash.value("scale_kind") in got["title"]
        assert f"scale {dash.value('scale'):g}" in got["title"]
        assert f"injected at layer {dash.value('injection_layer')}" in got["title"]
        assert got["axes"]["yaxis"] == metric_label(dash.value("metric"))
        assert list(dash.figure.data[-1].x)[0] == dash.value("injection_layer")

    dash = NoiseExplorer(models, toy_sentences(4, seed=0)[0], n_draws=1, prefetch=False)
    check_follows(dash, expect)


@pytest.mark.slow
def test_attribution_dashboard_shows_the_words_and_readable_classes(models):
    sentences = toy_sentences(2, seed=0)[0]

    def expect(dash, got):
        att = dash.attributions_
        words = [str(t) for t in att[att["model"] == "base"].sort_values("position")["token"]]
        cells = [c for row in dash.figure.data[0].text for c in row if c]
        assert cells == [w.replace("<", "&lt;").replace(">", "&gt;") for w in words]  # every token, as text
        assert dash.figure.layout.xaxis.showticklabels is False  # no position numbers over the words
        assert [a.split(":")[0] for a in got["annotations"]] == ["base", "model"]
        assert all(re.search(r"class “(negative|positive)”", a) for a in got["annotations"])
        assert "share of total" in dash.figure.data[0].colorbar.title.text or dash.value("value") == "attribution"

    dash = AttributionDashboard(models["shallow"], tiny_model("bert", n_layers=2, seed=2), sentences,
                                names=("base", "model"), n_steps=4)
    check_follows(dash, expect)


def test_every_dashboard_class_is_covered():
    covered = {StabilityCurvesDashboard, MetricsDashboard, TrainingCurvesDashboard, FigureDashboard, DriftDashboard,
               ProjectionDashboard, TheoryDashboard, NoiseExplorer, AttributionDashboard}
    defined = {obj for obj in vars(dashboards).values()
               if isinstance(obj, type) and issubclass(obj, Dashboard) and obj is not Dashboard}
    assert defined == covered


def test_the_busy_indicator_shows_while_a_dashboard_works(models):
    seen = []
    dash = MetricsDashboard(make_metrics())
    original = dash.make_figure

    def spy():
        seen.append(dash.busy.value)
        return original()

    dash.make_figure = spy
    dash.controls["metric"].value = "roc_auc"
    assert seen and "working" in seen[0]  # on while it works
    assert dash.busy.value == "" and dash.busy in dash.children  # off once the figure is drawn
    assert np.isfinite(len(dash.figure.data))


def test_the_claims_view_puts_the_verdict_first_and_states_the_effect_with_its_ci():
    import pandas as pd

    from lnsr_viz.viz.study_figures import claims_view

    claims = pd.DataFrame([{"claim": "a", "statement": "lower top-layer noise sensitivity", "train_size": 100,
                            "setting": "lnsr[lam=1]", "role": "chosen", "baseline_mean": 0.1, "method_mean": 0.08,
                            "effect": -0.02, "ci_low": -0.03, "ci_high": -0.01, "p_value": 0.0625,
                            "verdict": "supported"}])
    view = claims_view(claims)
    assert list(view.columns)[0] == "verdict" and view["verdict"].tolist() == ["supported"]
    assert view["effect [95% CI]"].tolist() == ["-0.020 [-0.030, -0.010]"]
    assert view["claim"].tolist() == ["(a) lower top-layer noise sensitivity"]
    assert "baseline_mean" not in view.columns and len(view.columns) <= 7  # fits the notebook's width

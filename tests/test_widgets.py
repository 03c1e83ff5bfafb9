"""Tests for :mod:`lnsr_viz.viz.dashboards` (dashboard wiring) and :mod:`lnsr_viz.viz.notebook_figures` (their figures).

Covered:

* the noise-propagation explorer on tiny models: moving the injection-layer slider, the noise dropdown, the scale
  slider or the model dropdown changes the FigureWidget's data *in place* (same object); the clean pass is
  computed once per model and settings are memoised; impossible combinations (injection layer above the chosen
  model's last layer, scale 0) show a readable message, leave the figure untouched, and clear when fixed;
* the table dashboards (stability curves, metrics per domain, training curves, the generic one) and the analysis
  dashboards (drift heat-map, projection scatter, theory scatter, attributions side by side): a control change
  redraws with different data; an empty selection or an unavailable combination is a message, not an exception;
* the dashboards module holds dashboards only (the notebook runtime is :mod:`lnsr_viz.viz.runtime`, tested in
  ``tests/test_runtime.py``);
* the notebook plot functions: traces, titles, axis titles, colours, errors.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.io.json import to_json_plotly

from lnsr_viz.testing import tiny_model, toy_sentences
from lnsr_viz.viz import dashboards, runtime
from lnsr_viz.viz.dashboards import (
    AttributionDashboard,
    DriftDashboard,
    FigureDashboard,
    MetricsDashboard,
    NoiseExplorer,
    ProjectionDashboard,
    StabilityCurvesDashboard,
    TheoryDashboard,
    TrainingCurvesDashboard,
)
from lnsr_viz.viz.figures import color_for, plot_stability_curves
from lnsr_viz.viz.notebook_figures import (
    plot_noise_types,
    plot_run_costs,
    plot_scale_response,
    plot_step_costs,
    wrap_title,
)

# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def explorer_models():
    return {"deep": tiny_model("bert", n_layers=4, seed=0), "shallow": tiny_model("bert", n_layers=2, seed=1)}


@pytest.fixture
def explorer(explorer_models):
    return NoiseExplorer(explorer_models, toy_sentences(6, seed=0)[0], n_draws=2)


def _curve(fig: go.Figure) -> go.Scatter:
    """The mean line (the last scatter with markers) of a one-line stability figure."""
    return [t for t in fig.data if t.mode == "lines+markers"][-1]


def _title(fig: go.Figure) -> str:
    """The title as one line (dashboards break long titles with <br>)."""
    return fig.layout.title.text.replace("<br>", " ")


def make_profile(models=("pretrained", "vanilla", "lnsr"), ks=(0, 1), n_layers=3, noises=("gaussian",),
                 scales=(0.05,), seeds=(1, 2)) -> pd.DataFrame:
    rows = []
    for m_i, model in enumerate(models):
        for k in ks:
            for noise in noises:
                for scale in scales:
                    for seed in seeds:
                        for layer in range(k, n_layers + 1):
                            v = scale * (1 + m_i) * (1 + layer - k) * (1.5 if noise == "in_manifold" else 1.0)
                            v *= 1 + 0.05 * seed
                            rows.append({"model": model, "seed": seed, "injection_layer": k, "layer": layer,
                                         "layer_name": "embed" if layer == 0 else f"blocks.{layer - 1}",
                                         "noise": noise, "scale": scale, "scale_kind": "relative",
                                         "change_rel": v, "change_rel_ci_low": v * 0.9, "change_rel_ci_high": v * 1.1,
                                         "change_l2": 10 * v, "change_l2_ci_low": 9 * v, "change_l2_ci_high": 11 * v,
                                         "n_examples": 8, "n_draws": 2})
    return pd.DataFrame(rows)


def make_metrics() -> pd.DataFrame:
    rows = []
    for method, base in (("vanilla", 0.8), ("lnsr", 0.82)):
        for seed in (1, 2, 3):
            for d_i, domain in enumerate(("movie", "amazon", "tweets")):
                for metric, off in (("accuracy", 0.0), ("roc_auc", 0.1)):
                    rows.append({"run_id": f"{method}{seed}", "method": method, "seed": seed, "domain": domain,
                                 "metric": metric, "value": base + off - 0.05 * d_i + 0.01 * seed})
    return pd.DataFrame(rows)


def make_history() -> pd.DataFrame:
    rows = []
    for method in ("vanilla", "lnsr"):
        for seed in (1, 2):
            for epoch in (1, 2, 3):
                task = 0.7 / epoch
                reg = 0.0 if method == "vanilla" else 0.01 / epoch
                rows.append({"run_id": f"{method}{seed}", "method": method, "seed": seed, "epoch": epoch,
                             "train_loss": task + reg, "train_task_loss": task, "train_reg_loss": reg,
                             "train_accuracy": 0.6 + 0.1 * epoch, "val_accuracy": 0.55 + 0.08 * epoch,
                             "val_loss": 0.8 / epoch, "gap": 0.05 + 0.02 * epoch})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- explorer


def test_explorer_starts_with_a_figure_and_no_message(explorer):
    assert explorer.error is None and explorer.message.value == ""
    assert isinstance(explorer.figure, go.FigureWidget)
    assert explorer.n_renders == 1
    line = _curve(explorer.figure)
    assert list(line.x) == [0, 1, 2, 3, 4]
    assert line.y[0] == pytest.approx(0.05, abs=1e-4)  # relative noise: exactly the scale where injected
    assert explorer.figure in explorer.children


def test_moving_the_injection_layer_slider_redraws_in_place(explorer):
    fig = explorer.figure
    before = list(_curve(fig).x)
    explorer.controls["injection_layer"].value = 2
    assert explorer.figure is fig  # same FigureWidget object, updated in place
    assert explorer.n_renders == 2 and explorer.error is None
    assert list(_curve(fig).x) == [2, 3, 4] != before
    assert explorer.profile_["injection_layer"].unique().tolist() == [2]
    assert "injected at layer 2" in _title(fig)


@pytest.mark.parametrize(("control", "value", "in_title"), [
    ("noise", "in_manifold", "in-manifold"),
    ("scale", 0.2, "scale 0.2"),
    ("scale_kind", "absolute", "absolute"),
])
def test_noise_controls_change_the_data(explorer, control, value, in_title):
    before = np.array(_curve(explorer.figure).y)
    explorer.controls[control].value = value
    after = np.array(_curve(explorer.figure).y)
    assert explorer.error is None
    assert in_title in _title(explorer.figure)
    assert not np.allclose(before, after)


def test_metric_dropdown_switches_to_l2(explorer):
    explorer.controls["metric"].value = "change_l2"
    assert "L2 change" in explorer.figure.layout.yaxis.title.text


def test_model_dropdown_switches_model(explorer):
    explorer.controls["model"].value = "shallow"
    assert list(_curve(explorer.figure).x) == [0, 1, 2]
    assert explorer.profile_["model"].unique().tolist() == ["shallow"]


def test_clean_pass_is_cached_and_settings_memoised(explorer):
    for k in (1, 2, 3, 0):
        explorer.controls["injection_layer"].value = k
    assert explorer.adapter("deep").clean_passes == 1  # tokenized once, one clean forward pass for all moves
    first = np.array(_curve(explorer.figure).y)
    explorer.controls["injection_layer"].value = 1
    explorer.controls["injection_layer"].value = 0
    assert explorer.last_seconds == 0.0  # memoised
    assert np.array_equal(first, np.array(_curve(explorer.figure).y))


def test_a_second_explorer_over_the_same_model_and_sentences_reuses_the_session(explorer):
    from lnsr_viz.viz.dashboards import NoiseExplorer

    session = explorer._sessions["deep"]
    passes = session.adapter.clean_passes
    spec = (session.model, session.tokenizer)
    again = NoiseExplorer({"deep": spec}, explorer.texts, n_draws=explorer.n_draws, seed=explorer.seed)
    assert again._sessions["deep"] is session  # tokenised inputs, clean pass and profiles shared
    assert session.adapter.clean_passes == passes
    assert again.last_seconds == 0.0  # its first setting was computed by the first explorer


def test_the_session_profile_is_the_probes_profile():
    from lnsr_viz.core.probe import StabilityProbe
    from lnsr_viz.testing import tiny_model, toy_sentences
    from lnsr_viz.viz.runtime import probe_session

    model, tok = tiny_model("bert", n_layers=3, seed=3)
    texts = toy_sentences(8, seed=1)[0]
    session = probe_session(model, tok, texts, max_length=32)
    assert probe_session(model, tok, list(texts), max_length=32) is session
    assert probe_session(model, tok, texts[:4], max_length=32) is not session  # other sentences: another session
    got = session.profile(injection_layer=1, noise="in_manifold", scale=0.1, n_draws=3, seed=2, label="m")
    assert not session.last_memoised
    assert session.probe_texts == list(texts) and session.bucket_size == 8  # one batch of all the sentences
    want = StabilityProbe("in_manifold", scale=0.1, injection_layers=[1], n_draws=3, batch_size=8, seed=2,
                          max_length=32, progress=False).run(model, texts, tokenizer=tok, label="m")
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    again = session.profile(injection_layer=1, noise="in_manifold", scale=0.1, n_draws=3, seed=2, label="other")
    assert session.last_memoised and session.last_seconds == 0.0
    assert again["model"].unique().tolist() == ["other"] and got["model"].unique().tolist() == ["m"]
    assert session.adapter.clean_passes == 1
    # in length-sorted batches: the same as the probe on those batches, one clean pass per batch
    bucketed = runtime.ProbeSession(model, tok, texts, max_length=32, bucket_size=3)
    lengths = [len(tok(t, truncation=True, max_length=32)["input_ids"]) for t in bucketed.probe_texts]
    assert lengths == sorted(lengths) and sorted(bucketed.probe_texts) == sorted(texts)
    got = bucketed.profile(injection_layer=1, n_draws=2, seed=1, label="m")
    want = StabilityProbe("gaussian", injection_layers=[1], n_draws=2, batch_size=3, seed=1, max_length=32,
                          progress=False).run(model, bucketed.probe_texts, tokenizer=tok, label="m")
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
    bucketed.profile(injection_layer=0, n_draws=2, seed=1)
    assert bucketed.adapter.clean_passes == 3  # 8 sentences in batches of 3: three clean passes, then cached


def test_prefetch_computes_the_neighbouring_settings_in_the_background():
    model, tok = tiny_model("bert", n_layers=3, seed=4)
    session = runtime.ProbeSession(model, tok, toy_sentences(6, seed=2)[0], max_length=32)
    settings = [{"injection_layer": k, "n_draws": 2} for k in (1, 2, 3, 9)]  # 9 is above the last layer: skipped
    assert session.prefetch(settings, idle_s=0.0) == 3
    assert session.wait_prefetch(timeout=120)
    assert session.n_prefetched == 3 and all(session.is_memoised(injection_layer=k, n_draws=2) for k in (1, 2, 3))
    direct = runtime.ProbeSession(model, tok, toy_sentences(6, seed=2)[0], max_length=32)
    for k in (1, 2, 3):  # the same numbers as computed on request
        pd.testing.assert_frame_equal(session.profile(injection_layer=k, n_draws=2, label="m"),
                                      direct.profile(injection_layer=k, n_draws=2, label="m"))
        assert session.last_memoised
    assert session.prefetch(settings[:3]) == 0  # all memoised: nothing queued


def test_the_explorer_prefetches_its_neighbours(explorer_models):
    dash = NoiseExplorer({"deep": explorer_models["deep"]}, toy_sentences(5, seed=3)[0], n_draws=1, prefetch=True)
    session = dash._sessions["deep"]
    assert session.wait_prefetch(timeout=120)
    near = dash.neighbours()
    assert [s["injection_layer"] for s in near[:2]] == [1, 2] and len(near) <= 6  # the nearest layers first
    assert {s["noise"] for s in near} >= {"gaussian", "in_manifold"}
    assert all(session.is_memoised(**s) for s in near)
    dash.controls["injection_layer"].value = 2
    assert session.last_memoised and ("background" in dash.note.value or "stored" in dash.note.value)


def test_layer_above_the_last_layer_shows_a_message(explorer):
    explorer.controls["model"].value = "shallow"
    data_before = [t.to_plotly_json() for t in explorer.figure.data]
    renders = explorer.n_renders
    explorer.controls["injection_layer"].value = 4  # the slider goes to the deepest model's last layer
    assert explorer.error is not None
    assert "Injection layer k=4 is above the last layer of 'shallow'" in explorer.error
    assert "layers 0-2" in explorer.error and "to 2 or below" in explorer.error
    assert "Cannot draw this combination" in explorer.message.value
    assert "Traceback" not in explorer.message.value
    assert explorer.n_renders == renders
    assert [t.to_plotly_json() for t in explorer.figure.data] == data_before  # last valid figure kept
    explorer.controls["model"].value = "deep"  # the same k is valid for the deeper model: message clears
    assert explorer.error is None and explorer.message.value == ""
    assert list(_curve(explorer.figure).x) == [4]


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_scale_zero_shows_a_message(explorer, kind):
    explorer.controls["scale_kind"].value = kind
    explorer.controls["scale"].value = 0.0
    assert "adds no noise" in explorer.error and f"({kind}" in explorer.error
    assert "Move the scale slider above 0" in explorer.error
    explorer.controls["scale"].value = 0.05
    assert explorer.error is None


def test_explorer_rejects_no_models():
    with pytest.raises(ValueError, match="NoiseExplorer needs models"):
        NoiseExplorer({}, ["a sentence"])


def test_unexpected_errors_become_messages(explorer, monkeypatch):
    def boom():
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(explorer, "probe", boom)
    assert explorer.refresh() is False
    assert explorer.error == "Unexpected RuntimeError: disk on fire"


# ----------------------------------------------------------------------------------------------- table dashboards


def test_stability_dashboard_controls_redraw():
    dash = StabilityCurvesDashboard(make_profile())
    assert dash.error is None
    names = {t.name for t in dash.figure.data if t.mode == "lines+markers"}
    assert names == {"pretrained", "vanilla", "lnsr"}
    assert all(list(t.x)[0] == 0 for t in dash.figure.data if t.mode == "lines+markers")
    dash.controls["injection_layer"].value = 1
    assert all(list(t.x) == [1, 2, 3] for t in dash.figure.data if t.mode == "lines+markers")
    dash.controls["lines"].value = ("lnsr",)
    assert {t.name for t in dash.figure.data if t.mode == "lines+markers"} == {"lnsr"}
    assert _curve(dash.figure).line.color == color_for("lnsr")
    y_rel = np.array(_curve(dash.figure).y)
    dash.controls["metric"].value = "change_l2"
    assert np.allclose(np.array(_curve(dash.figure).y), 10 * y_rel)
    dash.controls["log_y"].value = True
    assert dash.figure.layout.yaxis.type == "log"


def test_stability_dashboard_matches_the_plot_function():
    profile = make_profile()
    dash = StabilityCurvesDashboard(profile)
    expected = plot_stability_curves(profile, injection_layer=0, noise="gaussian", scale=0.05)
    assert [t.to_plotly_json()["y"] for t in dash.figure.data] == [t.to_plotly_json()["y"] for t in expected.data]
    assert _title(dash.figure) == expected.layout.title.text


def test_stability_dashboard_messages():
    dash = StabilityCurvesDashboard(make_profile(noises=("gaussian", "in_manifold"), ks=(0, 1)))
    dash.controls["lines"].value = ()
    assert "No model selected" in dash.error
    dash.controls["lines"].value = ("vanilla",)
    assert dash.error is None


def test_stability_dashboard_unavailable_combination():
    profile = pd.concat([make_profile(noises=("gaussian",), ks=(0, 1)), make_profile(noises=("in_manifold",),
                                                                                      ks=(0,))])
    dash = StabilityCurvesDashboard(profile)
    dash.controls["noise"].value = "in_manifold"
    assert dash.error is None
    dash.controls["injection_layer"].value = 1
    assert dash.error is not None and "no rows of the profile" in dash.error and "Available values" in dash.error


def test_stability_dashboard_needs_a_profile():
    with pytest.raises(ValueError, match="missing column"):
        StabilityCurvesDashboard(pd.DataFrame({"model": ["a"]}))


def test_metrics_dashboard():
    dash = MetricsDashboard(make_metrics(), in_domain="movie")
    assert dash.error is None
    acc = [list(t.y) for t in dash.figure.data]
    dash.controls["metric"].value = "roc_auc"
    assert [list(t.y) for t in dash.figure.data] != acc
    assert "ROC AUC" in dash.figure.layout.yaxis.title.text
    dash.controls["methods"].value = ("lnsr",)
    assert {t.legendgroup for t in dash.figure.data} == {"lnsr"}
    dash.controls["methods"].value = ()
    assert "No methods selected" in dash.error


def test_dropdowns_show_readable_labels_and_keep_the_raw_values():
    dash = MetricsDashboard(make_metrics())
    metric = dash.controls["metric"]
    assert metric.options == (("accuracy", "accuracy"), ("ROC AUC", "roc_auc"))
    metric.value = "roc_auc"  # driven from code by the raw name, as before
    assert metric.label == "ROC AUC" and dash.error is None
    stab = StabilityCurvesDashboard(make_profile(noises=("gaussian", "in_manifold")))
    assert stab.controls["noise"].options == (("Gaussian", "gaussian"), ("in-manifold", "in_manifold"))
    stab.controls["noise"].value = "in_manifold"
    assert stab.error is None
    assert dashboards._metric_options(["ece", "positive_rate"]) == [("expected calibration error", "ece"),
                                                                     ("positive rate", "positive_rate")]


def test_training_dashboard_views():
    dash = TrainingCurvesDashboard(make_history())
    n_curves = len(dash.figure.data)
    reg = [t for t in dash.figure.data if t.name == "lnsr · train_reg_contribution"]
    assert len(reg) == 1 and np.allclose(reg[0].y, [0.01 / e for e in (1, 2, 3)])  # the share: loss - task loss
    dash.controls["view"].value = "gap"
    assert len(dash.figure.data) != n_curves
    assert "Generalisation gap" in _title(dash.figure)


def _shown_layout(dash, action) -> dict:
    """The layout a browser shows after ``action``: the layout it showed before, with every layout message the
    widget sends meanwhile applied as plotly.js applies it (a relayout *merges*: a path set to None is removed)."""
    shown = json.loads(to_json_plotly(dash.figure.layout.to_plotly_json()))

    def apply(change):
        msg = change["new"]
        data = (msg or {}).get("relayout_data", (msg or {}).get("layout_data")) or {}
        for path, value in json.loads(to_json_plotly(data)).items():
            *parents, leaf = path.split(".")
            node = shown
            for part in parents:
                node = node.setdefault(part, {})
            if value is None:
                node.pop(leaf, None)
            else:
                node[leaf] = value

    names = ["_py2js_relayout", "_py2js_update"]
    dash.figure.observe(apply, names=names)
    try:
        action()
    finally:
        dash.figure.unobserve(apply, names=names)
    return shown


def _labels(layout) -> dict:
    """Title, every axis title and the annotations' texts of a layout (a plotly Layout or its JSON)."""
    layout = layout if isinstance(layout, dict) else json.loads(to_json_plotly(layout.to_plotly_json()))
    axes = {k: (v.get("title") or {}).get("text") for k, v in layout.items() if k[:5] in ("xaxis", "yaxis")}
    return {"title": (layout.get("title") or {}).get("text"), "axes": axes,
            "annotations": [a.get("text") for a in layout.get("annotations", [])]}


@pytest.mark.parametrize("first, second", [("curves", "gap"), ("gap", "curves")])
def test_switching_the_view_replaces_the_layout_in_place(first, second):
    from lnsr_viz.viz.figures import plot_generalisation_gap, plot_training_curves

    dash = TrainingCurvesDashboard(make_history())
    dash.controls["view"].value = first
    widget = dash.figure

    def switch():
        dash.controls["view"].value = second

    shown = _shown_layout(dash, switch)
    assert dash.figure is widget and dash.error is None
    new = (plot_generalisation_gap(dash.history) if second == "gap"
           else plot_training_curves(dash.history, metrics=dash.loss_columns))
    new = wrap_title(new, width=dashboards._TITLE_CHARS).update_layout(height=dash._height)
    dashboards._room_for_subplot_titles(new)
    expected = json.loads(to_json_plotly(new.layout.to_plotly_json()))
    # in Python: the widget's layout is the new figure's
    assert _labels(dash.figure.layout) == _labels(new.layout)
    # in the browser: no subplot title, second axis or shape of the previous view is left
    assert _labels(shown) == _labels(expected)
    assert shown == expected
    if second == "gap":
        assert "xaxis2" not in shown and not shown.get("annotations")
    else:
        # losses, the regulariser's own panel, accuracy: three subplot titles
        assert "xaxis3" in shown and len(shown["annotations"]) == 3


def test_figure_dashboard_wires_any_plot_function():
    profile = make_profile()
    dash = FigureDashboard(plot_stability_curves, profile, choices={"injection_layer": [0, 1]},
                           fixed={"noise": "gaussian"})
    assert list(_curve(dash.figure).x) == [0, 1, 2, 3]
    dash.controls["injection_layer"].value = 1
    assert list(_curve(dash.figure).x) == [1, 2, 3]


# ----------------------------------------------------------------------------------------------- notebook plots


def test_plot_noise_types():
    fig = plot_noise_types(make_profile(models=("m",), noises=("gaussian", "in_manifold"), seeds=(1,)))
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.legendgroup for t in lines] == ["gaussian", "in_manifold"]
    assert lines[0].line.color == color_for("gaussian")
    assert np.allclose(np.array(lines[1].y), 1.5 * np.array(lines[0].y))
    assert "Gaussian vs in-manifold" in fig.layout.title.text
    assert fig.layout.xaxis.title.text and "ratio" in fig.layout.yaxis.title.text
    assert all(t.hovertemplate or t.hoverinfo == "skip" for t in fig.data)


def test_plot_noise_types_needs_one_model():
    with pytest.raises(ValueError, match="several 'model' values"):
        plot_noise_types(make_profile(models=("a", "b")))


def test_plot_scale_response_linear_line():
    profile = make_profile(models=("m",), scales=(0.01, 0.05, 0.2), seeds=(1,))
    fig = plot_scale_response(profile)
    measured, linear = fig.data[0], fig.data[1]
    assert list(measured.x) == [0.01, 0.05, 0.2]
    # the hand-built profile is exactly linear in the scale, so the line goes through every point
    assert np.allclose(measured.y, linear.y)
    assert fig.layout.xaxis.type == "log" and "noise scale" in fig.layout.xaxis.title.text
    assert "at layer 3" in fig.layout.yaxis.title.text


def test_plot_scale_response_needs_positive_scales():
    with pytest.raises(ValueError, match="scale > 0"):
        plot_scale_response(make_profile(models=("m",), scales=(0.0,), seeds=(1,)))


def test_plot_run_costs():
    runs = pd.DataFrame({"method": ["pretrained", "vanilla", "vanilla", "lnsr", "lnsr"],
                         "seed": [None, 1, 2, 1, 2], "seconds": [1.0, 10.0, 12.0, 20.0, 22.0]})
    fig = plot_run_costs(runs)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [b.name for b in bars] == ["vanilla", "lnsr"]
    assert [b.y[0] for b in bars] == [11.0, 21.0]
    assert bars[1].marker.color == color_for("lnsr")
    assert "seconds" in fig.layout.yaxis.title.text
    with pytest.raises(ValueError, match="no runs of method"):
        plot_run_costs(runs, methods=["smart"])


def test_wrap_title():
    fig = go.Figure(layout={"title": {"text": "word " * 40}})
    wrapped = wrap_title(fig, width=50)
    lines = wrapped.layout.title.text.split("<br>")
    assert len(lines) > 1 and all(len(line) <= 50 for line in lines)
    assert " ".join(lines).split() == ("word " * 40).split()
    assert fig.layout.title.text == "word " * 40  # the input is not changed
    assert wrap_title(go.Figure(layout={"title": {"text": "short"}})).layout.title.text == "short"


# ----------------------------------------------------------------------------------------------- analysis dashboards


def make_drift() -> pd.DataFrame:
    rows = []
    for b in ("vanilla", "lnsr"):
        for layer in range(3):
            for metric, kind, v in (("cka", "similarity", 1 - 0.1 * layer), ("weight_distance", "distance",
                                                                              2.0 * layer + (b == "lnsr"))):
                rows.append({"model_a": "base", "model_b": b, "layer": layer, "layer_name": f"l{layer}",
                             "layer_b": layer, "metric": metric, "kind": kind, "value": v, "n": 8,
                             "n_of": "sentences"})
    return pd.DataFrame(rows)


def test_drift_dashboard():
    dash = DriftDashboard(make_drift())
    assert dash.error is None and len(dash.figure.data) == 2  # one panel per pair
    dash.controls["pairs"].value = ("lnsr vs base",)
    assert len(dash.figure.data) == 1
    dash.controls["metrics"].value = ("cka",)
    assert list(dash.figure.data[0].y) == ["CKA"]  # the readable name
    dash.controls["metrics"].value = ()
    assert "No metric selected" in dash.error
    dash.controls["metrics"].value = ("weight_distance",)
    dash.controls["pairs"].value = ()
    assert "No model pair selected" in dash.error


def make_projection() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for layer, name in ((0, "embed"), (2, "blocks.1")):
        for model in ("base", "model"):
            for i in range(6):
                rows.append({"model": model, "example": i, "x": rng.normal(), "y": rng.normal() + layer,
                             "method": "pca", "layer": layer, "layer_name": name, "text": f"sentence {i}",
                             "label": i % 2, "label_name": ["negative", "positive"][i % 2],
                             "domain": "movie" if i < 3 else "amazon",
                             "domain_kind": "in-domain" if i < 3 else "out-of-domain"})
    return pd.DataFrame(rows)


def test_projection_dashboard():
    frames = [part for _, part in make_projection().groupby("layer")]
    frames[0].attrs["explained_variance_ratio"] = [0.5, 0.25]
    dash = ProjectionDashboard(frames)
    assert dash.projections[0].attrs["explained_variance_ratio"] == [0.5, 0.25]  # attrs kept per layer
    assert dash.error is None
    assert dash.controls["layer"].value == 2  # the last layer first
    ys = sorted(v for t in dash.figure.data for v in t.y)
    dash.controls["layer"].value = 0
    assert sorted(v for t in dash.figure.data for v in t.y) != ys
    assert {t.name for t in dash.figure.data} == {"negative", "positive"}
    assert "50% of variance" in dash.figure.layout.xaxis.title.text
    dash.controls["color"].value = "domain"
    assert {t.name for t in dash.figure.data} == {"movie", "amazon"}
    assert any("sentence" in h for t in dash.figure.data for h in t.hovertext)
    assert ProjectionDashboard(make_projection()).controls["layer"].options == (("embed", 0), ("blocks.1", 2))


def make_theory_runs() -> pd.DataFrame:
    return pd.DataFrame({"run_id": [f"r{i}" for i in range(6)], "method": ["vanilla"] * 3 + ["lnsr"] * 3,
                         "seed": [1, 2, 3] * 2, "noise_sensitivity": [0.05, 0.06, 0.055, 0.03, 0.032, 0.031],
                         "generalisation_gap": [0.1, 0.12, 0.11, 0.08, 0.07, 0.075],
                         "ood_gap": [0.2, 0.21, 0.19, 0.15, 0.16, 0.17], "jacobian_fro2": [30, 31, 32, 20, 21, 22],
                         "hessian_trace": [np.nan] * 6})


def test_theory_dashboard():
    dash = TheoryDashboard(make_theory_runs())
    assert dash.error is None
    assert "hessian_trace" not in [v for _, v in dash.controls["x"].options]  # never measured: not offered
    x_before = [list(t.x) for t in dash.figure.data]
    dash.controls["x"].value = "jacobian_fro2"
    assert [list(t.x) for t in dash.figure.data] != x_before
    assert {t.name for t in dash.figure.data} == {"vanilla", "lnsr"}
    dash.controls["y"].value = "jacobian_fro2"
    assert "choose two different quantities" in dash.error


@pytest.mark.slow
def test_attribution_dashboard(explorer_models):
    sentences = toy_sentences(3, seed=0)[0]
    dash = AttributionDashboard(explorer_models["shallow"], tiny_model("bert", n_layers=2, seed=2), sentences,
                                names=("base", "model"), n_steps=8)
    assert dash.error is None
    assert [t.name for t in dash.figure.data] == ["base", "model"]  # one panel per model
    assert [a.text.split(":")[0] for a in dash.figure.layout.annotations] == ["base", "model"]
    assert "LABEL_" not in " ".join(a.text for a in dash.figure.layout.annotations)  # readable class names
    first = np.array(dash.figure.data[0].z, dtype=float)
    dash.controls["sentence"].value = sentences[1]
    assert dash.attributions_["text"].iloc[0] == sentences[1]
    assert np.array(dash.figure.data[0].z, dtype=float).shape != first.shape or not np.allclose(
        np.array(dash.figure.data[0].z, dtype=float), first, equal_nan=True)
    dash.controls["value"].value = "attribution"
    assert dash.error is None
    assert "change of the output" in dash.figure.data[0].colorbar.title.text


# ----------------------------------------------------------------------------------------------- notebook plots


def test_plot_step_costs():
    bench = pd.DataFrame({"method": ["vanilla", "lnsr", "smart"], "time_ratio_median": [1.0, 1.9, 2.5],
                          "time_ratios": [[1.0, 1.0], [1.8, 2.0], [2.4, 2.6]], "memory_ratio": [1.0, 1.6, 1.55]})
    fig = plot_step_costs(bench)
    time_bar, memory_bar = fig.data
    assert list(time_bar.y) == [1.0, 1.9, 2.5] and list(memory_bar.y) == [1.0, 1.6, 1.55]
    assert np.allclose(time_bar.error_y.array, [0.0, 0.1, 0.1])
    assert list(time_bar.marker.color) == [color_for(m) for m in ("vanilla", "lnsr", "smart")]
    assert "ratio" in fig.layout.yaxis.title.text and "ratio" in fig.layout.yaxis2.title.text
    with pytest.raises(ValueError, match="missing column"):
        plot_step_costs(bench.drop(columns="memory_ratio"))


def test_dashboards_hold_no_notebook_runtime():
    runtime_names = {"quick_mode", "setup_notebook", "results_dir", "reports_dir", "study_dir", "stored_table",
                     "stored_checkpoints", "check_checkpoint", "default_checkpoint", "comparison_protocol",
                     "comparison_settings", "benchmark_table", "probe_sentences", "explorer_models", "QUICK_ENV",
                     "RESULTS_ENV", "_project_root", "project_root"}
    assert not runtime_names & set(vars(dashboards)), runtime_names & set(vars(dashboards))
    assert all(name.endswith(("Dashboard", "Error", "Explorer")) for name in dashboards.__all__), dashboards.__all__

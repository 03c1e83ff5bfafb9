"""Tests for :mod:`lnsr_viz.viz.figures`: tidy frames in, plotly figures out.

Covered (always on ``fig.data`` / ``fig.layout``, never pixels):

* stability curves: one line per model with the hand-built y values, CI bands built from the
  ``*_ci_low`` / ``*_ci_high`` columns, filtering by injection layer / noise / scale, the errors
  for ambiguous noise or scale, unknown values, missing columns and empty frames, and the
  t-interval over seeds when several seeds are given;
* the colour scheme: fixed colours for known methods, a deterministic fallback, and the same
  colour for a method in two different figures;
* every figure: a title, axis titles with units, ``plotly_white``, hover text on data traces;
* the profile heatmap, metrics per domain (one marker per seed plus the mean and its CI,
  in-domain first, ``summary`` override), training curves, generalisation gap, paired
  differences ("within noise"), the table figure, and ``save_figure`` (offline HTML, atomic
  writes, one warning when static export is unavailable).
"""

from __future__ import annotations

import math
import os
import re
import warnings

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from numpy.testing import assert_allclose
from scipy import stats

from lnsr_viz.viz import figures as plots
from lnsr_viz.viz.figures import (
    FALLBACK_COLORS,
    METHOD_COLORS,
    color_for,
    plot_generalisation_gap,
    plot_metric_by_domain,
    plot_paired_differences,
    plot_profile_heatmap,
    plot_stability_curves,
    plot_training_curves,
    save_figure,
    stats_table_figure,
)

# ----------------------------------------------------------------------------- fixtures


def _value(model: str, k: int, layer: int, seed: int = 0, noise: str = "gaussian", scale: float = 0.05) -> float:
    """A known, distinct value for every cell of the hand-built profile."""
    base = {"pretrained": 1.0, "vanilla": 2.0, "lnsr": 0.5}[model]
    return base * (layer - k + 1) * 0.1 * (1 + 0.1 * seed) * (2.0 if noise == "in_manifold" else 1.0) * scale / 0.05


def make_profile(
    models=("pretrained", "vanilla", "lnsr"),
    ks=(0, 1),
    n_layers=3,
    seeds=None,
    noises=("gaussian",),
    scales=(0.05,),
) -> pd.DataFrame:
    rows = []
    for model in models:
        for seed in seeds if seeds is not None else [None]:
            for noise in noises:
                for scale in scales:
                    for k in ks:
                        for layer in range(k, n_layers + 1):
                            v = _value(model, k, layer, seed or 0, noise, scale)
                            row = {
                                "model": model,
                                "injection_layer": k,
                                "layer": layer,
                                "layer_name": "embed" if layer == 0 else f"blocks.{layer - 1}",
                                "noise": noise,
                                "scale": scale,
                                "scale_kind": "relative",
                                "change_l2": 10 * v,
                                "change_l2_ci_low": 10 * v - 0.5,
                                "change_l2_ci_high": 10 * v + 0.5,
                                "change_rel": v,
                                "change_rel_ci_low": v - 0.01,
                                "change_rel_ci_high": v + 0.02,
                                "n_examples": 64,
                                "n_draws": 2,
                            }
                            if seed is not None:
                                row["seed"] = seed
                            rows.append(row)
    return pd.DataFrame(rows)


def make_metrics(methods=("vanilla", "lnsr"), seeds=(0, 1, 2), domains=("amazon", "movie", "tweets", "nyt")):
    rows = []
    for method in methods:
        for seed in seeds:
            for d_i, domain in enumerate(domains):
                for metric in ("accuracy", "nll"):
                    value = 0.7 + 0.05 * d_i + 0.01 * seed + (0.02 if method == "lnsr" else 0.0)
                    rows.append(
                        {
                            "run_id": f"{method}-s{seed}",
                            "method": method,
                            "seed": seed,
                            "domain": domain,
                            "metric": metric,
                            "value": value if metric == "accuracy" else 1 - value,
                        }
                    )
    return pd.DataFrame(rows)


def make_history(methods=("vanilla", "lnsr"), seeds=(0, 1, 2), epochs=(1, 2, 3)):
    rows = []
    for method in methods:
        for seed in seeds:
            for e in epochs:
                tr, va = 0.7 + 0.06 * e + 0.01 * seed, 0.68 + 0.03 * e
                rows.append(
                    {
                        "run_id": f"{method}-s{seed}",
                        "method": method,
                        "seed": seed,
                        "epoch": e,
                        "train_loss": 1.0 / e + 0.01 * seed,
                        "train_task_loss": 0.9 / e,
                        "train_reg_loss": 0.1 / e if method == "lnsr" else np.nan,
                        "train_accuracy": tr,
                        "val_accuracy": va,
                        "val_loss": 0.6,
                        "gap": tr - va,
                    }
                )
    return pd.DataFrame(rows)


def make_paired():
    base = {"method": "lnsr", "baseline": "vanilla", "metric": "accuracy", "n_pairs": 5}
    rows = [
        {"domain": "amazon", "mean_diff": 0.01, "ci_low": -0.02, "ci_high": 0.04, "verdict": "no clear difference"},
        {"domain": "movie", "mean_diff": 0.03, "ci_low": 0.01, "ci_high": 0.05, "verdict": "lnsr better"},
        {"domain": "nyt", "mean_diff": -0.04, "ci_low": -0.06, "ci_high": -0.02, "verdict": "lnsr worse"},
    ]
    return pd.DataFrame([{**base, **r, "p_sign": 0.06, "p_permutation": 0.03} for r in rows])


def lines(fig: go.Figure) -> list[go.Scatter]:
    return [t for t in fig.data if t.mode == "lines+markers"]


def bands(fig: go.Figure) -> list[go.Scatter]:
    return [t for t in fig.data if getattr(t, "fill", None) == "toself"]


def all_figures() -> dict[str, go.Figure]:
    return {
        "stability": plot_stability_curves(make_profile()),
        "heatmap": plot_profile_heatmap(make_profile(), model="lnsr"),
        "by_domain": plot_metric_by_domain(make_metrics()),
        "training": plot_training_curves(make_history()),
        "gap": plot_generalisation_gap(make_history()),
        "paired": plot_paired_differences(make_paired()),
    }


# ----------------------------------------------------------------------------- stability curves


def test_stability_one_line_per_model_with_profile_values():
    fig = plot_stability_curves(make_profile())
    assert [t.name for t in lines(fig)] == ["pretrained", "vanilla", "lnsr"]
    for t in lines(fig):
        assert list(t.x) == [0, 1, 2, 3]
        assert_allclose(t.y, [_value(t.name, 0, layer) for layer in range(4)], rtol=1e-12)


def test_stability_ci_band_uses_ci_columns():
    profile = make_profile()
    fig = plot_stability_curves(profile)
    assert len(bands(fig)) == 3
    for band, line in zip(bands(fig), lines(fig)):
        sub = profile[(profile.model == line.name) & (profile.injection_layer == 0)].sort_values("layer")
        expected = list(sub.change_rel_ci_high) + list(sub.change_rel_ci_low)[::-1]
        assert_allclose(band.y, expected, rtol=1e-12)
        assert list(band.x) == list(sub.layer) + list(sub.layer)[::-1]
        assert band.fillcolor.startswith("rgba(") and band.fillcolor.endswith(", 0.2)")
        assert band.showlegend is False
    assert "95% CI over examples" in lines(fig)[0].customdata[0][2]


def test_stability_l2_metric_uses_its_own_columns_and_units():
    fig = plot_stability_curves(make_profile(), metric="change_l2")
    assert_allclose(lines(fig)[0].y, [10 * _value("pretrained", 0, layer) for layer in range(4)])
    assert_allclose(bands(fig)[0].y[0], 10 * _value("pretrained", 0, 0) + 0.5)
    assert "units" in fig.layout.yaxis.title.text


def test_stability_filter_by_injection_layer():
    fig = plot_stability_curves(make_profile(), injection_layer=1)
    for t in lines(fig):
        assert list(t.x) == [1, 2, 3]
        assert_allclose(t.y, [_value(t.name, 1, layer) for layer in (1, 2, 3)])
    assert "injected at layer 1" in fig.layout.title.text
    assert fig.layout.shapes[0].x0 == 1  # the "noise injected" marker


def test_stability_unknown_injection_layer_lists_available():
    with pytest.raises(ValueError, match=r"injection_layer=7.*Available values: \[0, 1\]"):
        plot_stability_curves(make_profile(), injection_layer=7)


def test_stability_injection_layer_none_needs_a_single_k():
    with pytest.raises(ValueError, match=r"several 'injection_layer' values \[0, 1\]"):
        plot_stability_curves(make_profile(), injection_layer=None)
    fig = plot_stability_curves(make_profile(ks=(2,)), injection_layer=None)
    assert list(lines(fig)[0].x) == [2, 3]


def test_stability_ambiguous_noise_asks_to_choose():
    profile = make_profile(noises=("gaussian", "in_manifold"))
    with pytest.raises(ValueError, match=r"several 'noise' values \['gaussian', 'in_manifold'\].*noise="):
        plot_stability_curves(profile)
    fig = plot_stability_curves(profile, noise="in_manifold")
    assert_allclose(lines(fig)[0].y, [_value("pretrained", 0, layer, noise="in_manifold") for layer in range(4)])


def test_stability_ambiguous_scale_asks_to_choose():
    profile = make_profile(scales=(0.05, 0.1))
    with pytest.raises(ValueError, match=r"several 'scale' values \[0.05, 0.1\].*scale="):
        plot_stability_curves(profile)
    fig = plot_stability_curves(profile, scale=0.1)
    assert_allclose(lines(fig)[1].y, [_value("vanilla", 0, layer, scale=0.1) for layer in range(4)])
    with pytest.raises(ValueError, match=r"scale=0.2.*Available values"):
        plot_stability_curves(profile, scale=0.2)


def test_stability_aggregates_seeds_with_t_interval():
    fig = plot_stability_curves(make_profile(models=("lnsr",), seeds=(0, 1, 2)))
    (line,), (band,) = lines(fig), bands(fig)
    for i, layer in enumerate(range(4)):
        vals = np.array([_value("lnsr", 0, layer, seed) for seed in (0, 1, 2)])
        half = stats.t.ppf(0.975, 2) * vals.std(ddof=1) / math.sqrt(3)
        assert_allclose(line.y[i], vals.mean(), rtol=1e-12)
        assert_allclose(line.customdata[i][:2], [vals.mean() - half, vals.mean() + half], rtol=1e-9)
        assert line.customdata[i][2] == "95% t-interval over 3 seeds"
    assert_allclose(band.y[0], line.customdata[0][1])


def test_stability_color_column_and_log_axis():
    profile = make_profile(models=("vanilla", "lnsr")).assign(method=lambda d: d.model + "-m")
    fig = plot_stability_curves(profile, color="method", log_y=True)
    assert [t.name for t in lines(fig)] == ["vanilla-m", "lnsr-m"]
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.legend.title.text == "method"


def test_stability_missing_columns_lists_expected_and_present():
    profile = make_profile().drop(columns=["change_rel_ci_high"])
    with pytest.raises(
        ValueError, match=r"missing column\(s\) \['change_rel_ci_high'\]\. Expected columns \[.*received"
    ):
        plot_stability_curves(profile)


def test_stability_empty_frame_says_what_produced_nothing():
    with pytest.raises(ValueError, match=r"'profile' is empty.*stability probe.*produced no rows"):
        plot_stability_curves(make_profile().iloc[:0])


def test_stability_bad_metric_and_type():
    with pytest.raises(ValueError, match=r"The 'metric' parameter of plot_stability_curves must be one of"):
        plot_stability_curves(make_profile(), metric="accuracy")
    with pytest.raises(TypeError, match=r"expects a pandas DataFrame"):
        plot_stability_curves(make_profile().to_dict())


# ----------------------------------------------------------------------------- colours


def test_known_colours_and_deterministic_fallback():
    assert color_for("pretrained") == METHOD_COLORS["pretrained"] == "#7F7F7F"
    for name in ("vanilla", "lnsr", "l2sp", "mixout", "smart", "r3f", "rdrop", "noisytune", "hype", "childtuning"):
        assert color_for(name) == METHOD_COLORS[name]
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS)
    assert color_for("LNSR") == METHOD_COLORS["lnsr"]
    assert color_for("my-new-method") == color_for("my-new-method") in FALLBACK_COLORS


def test_same_method_same_colour_in_two_figures():
    stab = plot_stability_curves(make_profile(models=("vanilla", "lnsr")))
    dom = plot_metric_by_domain(make_metrics(methods=("lnsr", "vanilla")))
    gap = plot_generalisation_gap(make_history())
    stab_colour = {t.name: t.line.color for t in lines(stab)}
    dom_colour = {t.name: t.marker.color for t in dom.data if t.showlegend is not False}
    gap_colour = {t.name: t.line.color for t in lines(gap)}
    for method in ("vanilla", "lnsr"):
        assert stab_colour[method] == dom_colour[method] == gap_colour[method] == color_for(method)
    assert stab_colour["vanilla"] != stab_colour["lnsr"]


# ----------------------------------------------------------------------------- shared layout


@pytest.mark.parametrize("name", ["stability", "heatmap", "by_domain", "training", "gap", "paired"])
def test_every_figure_has_title_units_template_and_hover(name):
    fig = all_figures()[name]
    assert isinstance(fig, go.Figure)
    assert fig.layout.title.text
    assert fig.layout.template == go.Figure(layout={"template": "plotly_white"}).layout.template
    axes = [k for k in fig.layout if re.fullmatch(r"[xy]axis\d*", k)]
    assert axes
    for ax in axes:
        text = fig.layout[ax].title.text
        assert text, f"{name}.{ax} has no title"
        assert "(" in text or text == "epoch", f"{name}.{ax} title {text!r} gives no unit"
    for t in fig.data:
        if getattr(t, "hoverinfo", None) == "skip":
            continue  # CI bands
        assert t.hovertemplate, f"{name}: trace {t.name!r} has no hover text"


def test_axis_titles_of_stability_curves():
    fig = plot_stability_curves(make_profile())
    assert fig.layout.xaxis.title.text == "layer (0 = embeddings)"
    assert fig.layout.yaxis.title.text == "relative change ||h̃ₗ − hₗ|| / ||hₗ|| (ratio)"
    assert fig.layout.template.layout.plot_bgcolor == "white"


# ----------------------------------------------------------------------------- heatmap


def test_heatmap_full_profile_for_one_model():
    fig = plot_profile_heatmap(make_profile(ks=(0, 1, 2)), model="vanilla")
    (hm,) = fig.data
    assert list(hm.x) == [0, 1, 2, 3] and list(hm.y) == [0, 1, 2]
    z = np.asarray(hm.z, dtype=float)
    for k in range(3):
        for layer in range(4):
            if layer < k:
                assert np.isnan(z[k, layer])
            else:
                assert_allclose(z[k, layer], _value("vanilla", k, layer))
    assert "vanilla" in fig.layout.title.text
    assert "injection layer" in fig.layout.yaxis.title.text


def test_heatmap_needs_a_model_when_several():
    with pytest.raises(ValueError, match=r"several 'model' values \['lnsr', 'pretrained', 'vanilla'\].*model="):
        plot_profile_heatmap(make_profile())
    with pytest.raises(ValueError, match=r"model='bert'.*Available values"):
        plot_profile_heatmap(make_profile(), model="bert")


# ----------------------------------------------------------------------------- metrics per domain


def _dots(fig):
    return {t.legendgroup: t for t in fig.data if t.showlegend is False}


def _means(fig):
    return {t.name: t for t in fig.data if t.showlegend is not False}


def test_metric_by_domain_one_marker_per_seed_and_the_mean():
    metrics = make_metrics()
    fig = plot_metric_by_domain(metrics)
    dots, means = _dots(fig), _means(fig)
    assert set(dots) == set(means) == {"vanilla", "lnsr"}
    for method in ("vanilla", "lnsr"):
        assert len(dots[method].y) == 3 * 4  # 3 seeds x 4 domains
        assert len(means[method].y) == 4
        acc = metrics[(metrics.method == method) & (metrics.metric == "accuracy")]
        movie = acc[acc.domain == "movie"].value
        assert_allclose(means[method].y[0], movie.mean())
        half = stats.t.ppf(0.975, 2) * movie.std(ddof=1) / math.sqrt(3)
        assert_allclose(means[method].error_y.array[0], half, rtol=1e-9)
        assert_allclose(means[method].error_y.arrayminus[0], half, rtol=1e-9)
        assert sorted(dots[method].y[:3]) == pytest.approx(sorted(movie))


def test_metric_by_domain_puts_in_domain_first_then_given_order():
    fig = plot_metric_by_domain(make_metrics())
    assert list(fig.layout.xaxis.ticktext) == ["movie (in-domain)", "amazon", "tweets", "nyt"]
    assert fig.layout.yaxis.title.text == "accuracy (fraction correct)"
    # the seeds of one method sit around the method's slot, not on the slot of another method
    dots, means = _dots(fig), _means(fig)
    assert all(abs(x - means["lnsr"].x[0]) < 0.2 for x in dots["lnsr"].x[:3])
    assert means["lnsr"].x[0] != means["vanilla"].x[0]


def test_metric_by_domain_uses_summary_when_given():
    summary = pd.DataFrame(
        [
            {
                "method": "lnsr",
                "domain": "movie",
                "metric": "accuracy",
                "n_seeds": 3,
                "mean": 0.9,
                "sd": 0.1,
                "ci_low": 0.8,
                "ci_high": 0.95,
            }
        ]
    )
    fig = plot_metric_by_domain(make_metrics(), summary=summary)
    lnsr = _means(fig)["lnsr"]
    assert lnsr.y[0] == 0.9
    assert_allclose([lnsr.error_y.array[0], lnsr.error_y.arrayminus[0]], [0.05, 0.1])
    assert "summary table" in lnsr.customdata[0][4]
    assert "computed here" in lnsr.customdata[1][4]  # no summary row for amazon: computed from the dots


def test_metric_by_domain_errors():
    with pytest.raises(ValueError, match=r"metric='f1'.*Available values: \['accuracy', 'nll'\]"):
        plot_metric_by_domain(make_metrics(), metric="f1")
    with pytest.raises(ValueError, match=r"'metrics' is missing column\(s\) \['seed'\]"):
        plot_metric_by_domain(make_metrics().drop(columns="seed"))
    with pytest.raises(ValueError, match=r"'metrics' is empty.*evaluation.*produced no rows"):
        plot_metric_by_domain(make_metrics().iloc[:0])
    with pytest.raises(ValueError, match=r"'summary' is missing column\(s\) \['ci_low', 'ci_high'\]"):
        plot_metric_by_domain(
            make_metrics(),
            summary=pd.DataFrame({"method": ["x"], "domain": ["movie"], "metric": ["accuracy"], "mean": [0.5]}),
        )


def test_metric_by_domain_single_seed_has_no_ci():
    fig = plot_metric_by_domain(make_metrics(seeds=(0,)))
    lnsr = _means(fig)["lnsr"]
    assert list(lnsr.error_y.array) == [0.0] * 4
    assert lnsr.customdata[0][4] == "single seed: no CI"


# ----------------------------------------------------------------------------- training history


def test_training_curves_seed_lines_thin_mean_thick_and_accuracy_subplot():
    fig = plot_training_curves(make_history())
    # losses (x), the regulariser's own panel (x2, its own y axis: not a flat line beside the task loss), accuracy (x3)
    assert fig.layout.yaxis3.title.text == "accuracy (fraction correct)"
    assert fig.layout.yaxis2.title.text.startswith("regulariser term")
    thin = [t for t in fig.data if t.line.width == 1]
    thick = [t for t in fig.data if t.line.width == 3]
    # losses: vanilla has 2 curves (its reg loss is all NaN, skipped), lnsr 3; accuracy: 2 each
    assert len(thick) == (2 + 2) + (3 + 2)
    assert len(thin) == 3 * len(thick)
    assert all(t.showlegend is False for t in thin + thick)
    # one legend entry per method (under the plot), each toggling all that method's curves
    legend = [t for t in fig.data if t.showlegend is not False]
    assert [t.name for t in legend] == ["vanilla", "lnsr"] and fig.layout.legend.orientation == "h"
    assert {t.legendgroup for t in fig.data} == {"vanilla", "lnsr"}
    mean_val = [t for t in thick if t.name == "lnsr · val_accuracy"][0]
    assert mean_val.xaxis == "x3"
    assert_allclose(mean_val.y, [0.68 + 0.03 * e for e in (1, 2, 3)])
    mean_reg = [t for t in thick if t.name == "lnsr · train_reg_loss"][0]
    assert mean_reg.yaxis == "y2"
    mean_loss = [t for t in thick if t.name == "vanilla · train_loss"][0]
    assert_allclose(mean_loss.y, [1.0 / e + 0.01 for e in (1, 2, 3)])
    assert not [t for t in fig.data if t.name and t.name.startswith("vanilla") and "train_reg_loss" in t.name]
    # the subplot titles say which dash is which curve, in readable names, two lines at most
    titles = [a.text for a in fig.layout.annotations]
    assert "total loss: solid" in titles[0].replace("<br>", " ") and all(t.count("<br>") <= 1 for t in titles)
    # without a regulariser column there are two panels
    plain = plot_training_curves(make_history(), metrics=("train_loss", "train_task_loss"))
    assert plain.layout.yaxis2.title.text == "accuracy (fraction correct)"
    assert "xaxis3" not in plain.layout.to_plotly_json()


def test_training_curves_errors():
    with pytest.raises(ValueError, match=r"'history' is missing column\(s\) \['val_accuracy'\]"):
        plot_training_curves(make_history().drop(columns="val_accuracy"))
    with pytest.raises(ValueError, match=r"The 'metrics' parameter of plot_training_curves"):
        plot_training_curves(make_history(), metrics="train_loss")
    with pytest.raises(ValueError, match=r"'history' is empty.*training loop"):
        plot_training_curves(make_history().iloc[:0])


def test_generalisation_gap_mean_and_band_over_seeds():
    history = make_history()
    fig = plot_generalisation_gap(history)
    line, band = lines(fig)[0], bands(fig)[0]
    assert line.name == "vanilla"
    gaps = history[(history.method == "vanilla") & (history.epoch == 2)].gap
    assert_allclose(line.y[1], gaps.mean())
    half = stats.t.ppf(0.975, 2) * gaps.std(ddof=1) / math.sqrt(3)
    assert_allclose(band.y[1], gaps.mean() + half, rtol=1e-9)
    assert any(s.y0 == 0 and s.y1 == 0 for s in fig.layout.shapes)  # zero line
    with pytest.raises(ValueError, match=r"missing column\(s\) \['gap'\]"):
        plot_generalisation_gap(history.drop(columns="gap"))


# ----------------------------------------------------------------------------- paired differences


def test_paired_marks_within_noise():
    fig = plot_paired_differences(make_paired())
    by_name = {t.name: t for t in fig.data}
    within = by_name["lnsr − vanilla: no clear difference (CI includes 0 or p ≥ 0.05)"]
    clear = by_name["lnsr − vanilla: clear difference (CI excludes 0, p < 0.05)"]
    assert list(within.x) == [0.01]
    assert within.customdata[0][0] == "amazon"
    assert within.marker.symbol == "circle-open"
    assert sorted(clear.x) == [-0.04, 0.03]
    assert [a.text for a in fig.layout.annotations] == ["within noise"]
    assert fig.layout.annotations[0].y == within.y[0]
    assert within.marker.color == clear.marker.color == color_for("lnsr")
    assert "no clear difference" in within.customdata[0]
    assert any(s.x0 == 0 and s.x1 == 0 for s in fig.layout.shapes)  # zero line
    assert list(fig.layout.yaxis.ticktext) == ["movie (in-domain)", "amazon", "nyt"]
    assert_allclose([within.error_x.array[0], within.error_x.arrayminus[0]], [0.03, 0.03])


def test_paired_with_a_large_p_is_drawn_hollow_although_its_ci_excludes_zero():
    # 3 seeds: the exact permutation test cannot go below p = 0.25, so a CI that excludes 0 is still weak evidence
    paired = make_paired().assign(n_pairs=3, p_permutation=0.25, p_sign=0.25)
    fig = plot_paired_differences(paired)
    assert [t.name for t in fig.data] == ["lnsr − vanilla: no clear difference (CI includes 0 or p ≥ 0.05)"]
    assert fig.data[0].marker.symbol == "circle-open" and len(fig.data[0].x) == 3
    assert [a.text for a in fig.layout.annotations] == ["within noise"] * 3
    # a corrected p, where the table has one, is the one that decides
    corrected = make_paired().assign(p_adj=[0.5, 0.01, 0.2])
    names = {t.name: sorted(t.x) for t in plot_paired_differences(corrected).data}
    assert names["lnsr − vanilla: clear difference (CI excludes 0, p < 0.05)"] == [0.03]


def test_paired_errors():
    paired = pd.concat([make_paired(), make_paired().assign(metric="nll")])
    with pytest.raises(ValueError, match=r"several 'metric' values \['accuracy', 'nll'\]"):
        plot_paired_differences(paired)
    assert plot_paired_differences(paired, metric="nll").layout.title.text.startswith("Paired difference in NLL")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['verdict'\]"):
        plot_paired_differences(make_paired().drop(columns="verdict"))


# ----------------------------------------------------------------------------- table figure


def test_stats_table_figure_formats_cells():
    fig = stats_table_figure(make_paired(), columns=["domain", "mean_diff", "verdict"], title="Paired")
    (table,) = fig.data
    assert isinstance(table, go.Table)
    assert list(table.header.values) == ["<b>domain</b>", "<b>mean_diff</b>", "<b>verdict</b>"]
    assert list(table.cells.values[1]) == ["0.010", "0.030", "-0.040"]
    assert fig.layout.title.text == "Paired"
    with pytest.raises(ValueError, match=r"missing column\(s\) \['nope'\]"):
        stats_table_figure(make_paired(), columns=["nope"])


# ----------------------------------------------------------------------------- saving


def test_save_figure_html_offline_and_atomic(tmp_path):
    fig = plot_stability_curves(make_profile())
    written = save_figure(fig, tmp_path / "sub" / "curves.html")
    assert written == [tmp_path / "sub" / "curves.html"]
    text = written[0].read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*src=[\"']?https?:", text)
    assert "plotly.js v" in text  # inlined
    assert sorted(os.listdir(tmp_path / "sub")) == ["curves.html"]  # no temporary file left


def test_save_figure_directory_mode_writes_one_local_plotlyjs(tmp_path):
    fig = plot_generalisation_gap(make_history())
    save_figure(fig, tmp_path / "a")
    a = save_figure(fig, tmp_path / "a", plotlyjs="directory")[0]
    b = save_figure(fig, tmp_path / "b", plotlyjs="directory")[0]
    assert sorted(os.listdir(tmp_path)) == ["a.html", "b.html", "plotly.min.js"]
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in b.read_text(encoding="utf-8")
    assert a.stat().st_size < 1_000_000


def test_save_figure_skips_png_with_one_warning_without_kaleido(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "_kaleido_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = save_figure(go.Figure(), tmp_path / "f", formats=("html", "png", "svg"))
    assert written == [tmp_path / "f.html"]
    assert len(caught) == 1
    assert re.search(r"pip install kaleido.*Chromium", str(caught[0].message))


def test_save_figure_warns_when_kaleido_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "_kaleido_available", lambda: True)

    def broken(self, *args, **kwargs):
        raise RuntimeError("Chrome not found\nmore")

    monkeypatch.setattr(go.Figure, "to_image", broken)
    with pytest.warns(RuntimeWarning, match=r"kaleido failed \(RuntimeError: Chrome not found\)"):
        written = save_figure(go.Figure(), tmp_path / "f.png", formats=("png",))
    assert written == [tmp_path / "f.html"]


def test_save_figure_writes_png_when_export_works(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "_kaleido_available", lambda: True)
    monkeypatch.setattr(go.Figure, "to_image", lambda self, format: b"\x89PNG fake")
    written = save_figure(go.Figure(), tmp_path / "f", formats=("png",))
    assert written == [tmp_path / "f.html", tmp_path / "f.png"]
    assert (tmp_path / "f.png").read_bytes() == b"\x89PNG fake"


def test_save_figure_failed_write_leaves_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.html"
    target.write_text("old", encoding="utf-8")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_figure(go.Figure(), target)
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["f.html"]


def test_save_figure_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match=r"The 'formats' parameter of save_figure must be one of"):
        save_figure(go.Figure(), tmp_path / "f", formats=("gif",))


def test_metric_by_domain_marks_collapsed_runs():
    rows = [{"method": m, "seed": s, "domain": d, "metric": "accuracy", "value": 0.5 + 0.01 * s,
             "collapsed": m == "lnsr" and s == 2}
            for m in ("vanilla", "lnsr") for s in (1, 2, 3) for d in ("movie", "amazon")]
    fig = plot_metric_by_domain(pd.DataFrame(rows), in_domain="movie")
    crosses = [t for t in fig.data if t.name == "collapsed run"]
    assert len(crosses) == 1 and list(crosses[0].y) == [0.52, 0.52]  # the collapsed run in both domains
    dots = next(t for t in fig.data if t.name == "lnsr (seeds)")
    assert sum("COLLAPSED" in c[2] for c in dots.customdata) == 2
    clean = plot_metric_by_domain(pd.DataFrame(rows).drop(columns="collapsed"), in_domain="movie")
    assert not [t for t in clean.data if t.name == "collapsed run"]


def test_step_budget_histories_are_drawn_against_the_step_not_a_repeated_epoch():
    from lnsr_viz.viz.figures import history_axis, plot_generalisation_gap, plot_training_curves

    # a step-budget run at 500 examples: evaluations every 20 steps, 32 steps per epoch (epochs repeat)
    steps = np.arange(20, 201, 20)
    rows = [{"method": m, "seed": s, "step": int(st), "epoch": int(np.ceil(st / 32)), "gap": 0.01 * i + s,
             "train_loss": 1.0, "train_task_loss": 1.0, "train_reg_loss": np.nan, "train_accuracy": 0.8,
             "val_accuracy": 0.7} for m in ("vanilla", "lnsr") for s in (1, 2) for i, st in enumerate(steps)]
    df = pd.DataFrame(rows)
    assert history_axis(df) == "step"
    fig = plot_generalisation_gap(df)
    line = next(t for t in fig.data if t.name == "vanilla")
    assert list(line.x) == list(steps)  # one point per evaluation, each the mean of the 2 seeds at that step
    np.testing.assert_allclose(line.y, [0.01 * i + 1.5 for i in range(len(steps))])
    assert fig.layout.xaxis.title.text == "optimizer step" and "evaluation step" in fig.layout.title.text
    assert plot_training_curves(df).layout.xaxis.title.text == "optimizer step"
    per_epoch = df[df["step"] % 40 == 0].assign(epoch=lambda d: d["step"] // 40)  # one row per epoch 1..5
    assert history_axis(per_epoch) == "epoch" and history_axis(per_epoch.drop(columns="step")) == "epoch"
    assert plot_generalisation_gap(per_epoch).layout.xaxis.title.text == "epoch"

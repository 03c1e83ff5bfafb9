"""Plot functions for the analysis outputs: figure properties (traces, z values, hover text, axis titles with
units, titles that say what is shown), never pixels; and input validation with messages naming what is missing."""

import math
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from lnsr_viz.analysis.drift import DRIFT_METRICS
from lnsr_viz.viz.analysis_figures import (
    plot_attributions,
    plot_drift_by_layer,
    plot_drift_heatmap,
    plot_projection,
    plot_small_noise_identity,
    plot_theory_scatter,
)
from lnsr_viz.viz.figures import color_for
from lnsr_viz.viz.style import readable


def _drift(pairs=(("pre", "ft"),)):
    rows = []
    for a, b in pairs:
        for layer in range(3):
            for metric, (kind, _) in DRIFT_METRICS.items():
                value = 1 - 0.1 * layer if kind == "similarity" else 10.0 * layer
                rows.append({"model_a": a, "model_b": b, "layer": layer, "layer_name": f"l{layer}",
                             "layer_b": layer, "metric": metric, "kind": kind, "value": value, "n": 5,
                             "n_of": "sentences"})
    return pd.DataFrame(rows)


def test_drift_heatmap_scales_within_metric_and_shows_raw_values():
    fig = plot_drift_heatmap(_drift())
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    hm = fig.data[0]
    assert list(hm.y) == [readable(m) for m in DRIFT_METRICS] and list(hm.x) == [0, 1, 2]  # readable names
    assert list(hm.y)[:2] == ["CKA", "debiased CKA"]
    z = np.array(hm.z, dtype=float)
    np.testing.assert_allclose(z[0], [0.0, 0.5, 1.0])  # cka: 1 - similarity, scaled to the row's largest
    np.testing.assert_allclose(z[4], [0.0, 0.5, 1.0])  # weight distance 0, 10, 20
    assert hm.text[4][2] == "20" and hm.text[0][1] == "0.9"
    assert "similarity" in hm.customdata[0][0][0]
    assert "layer (0 = embeddings)" in fig.layout.xaxis.title.text
    assert "Drift per layer" in fig.layout.title.text
    raw = plot_drift_heatmap(_drift(), scale_within_metric=False, metrics=["weight_distance"])
    np.testing.assert_allclose(np.array(raw.data[0].z, dtype=float)[0], [0.0, 10.0, 20.0])


def test_drift_heatmap_one_panel_per_pair():
    fig = plot_drift_heatmap(_drift((("pre", "vanilla"), ("pre", "lnsr"))))
    assert len(fig.data) == 2
    assert [a.text for a in fig.layout.annotations] == ["vanilla vs pre", "lnsr vs pre"]


def test_drift_heatmap_validation():
    with pytest.raises(ValueError, match=r"missing column\(s\) \['kind'\]"):
        plot_drift_heatmap(_drift().drop(columns="kind"))
    bad = _drift()
    bad.loc[0, "kind"] = "score"
    with pytest.raises(ValueError, match="must hold 'similarity' or 'distance'"):
        plot_drift_heatmap(bad)
    with pytest.raises(ValueError, match="'metrics' parameter of plot_drift_heatmap must be one of"):
        plot_drift_heatmap(_drift(), metrics=["svcca"])
    with pytest.raises(ValueError, match="is empty"):
        plot_drift_heatmap(_drift().iloc[:0])
    with pytest.raises(TypeError, match="expects a pandas DataFrame"):
        plot_drift_heatmap([1, 2])


def _projection(method="pca"):
    rows = []
    for model in ("pretrained", "fine-tuned"):
        for i in range(6):
            rows.append({"model": model, "example": i, "x": float(i), "y": float(-i), "method": method, "layer": 2,
                         "layer_name": "blocks.1", "text": f"sentence <b>{i}</b> " + "word " * 20,
                         "label": i % 2, "label_name": ("negative", "positive")[i % 2],
                         "domain": "movie" if i < 4 else "amazon", "domain_kind": "in-domain"})
    df = pd.DataFrame(rows)
    df.attrs["explained_variance_ratio"] = [0.6, 0.2]
    return df


def test_projection_plot_facets_models_colours_labels_and_hovers_the_sentence():
    fig = plot_projection(_projection())
    assert {t.name for t in fig.data} == {"negative", "positive"}
    assert len(fig.data) == 4 and sum(bool(t.showlegend) for t in fig.data) == 2
    first = fig.data[0]
    assert "sentence &lt;b&gt;0&lt;/b&gt;" in first.hovertext[0] and "<br>" in first.hovertext[0]  # escaped, wrapped
    assert fig.data[0].marker.color != fig.data[1].marker.color
    assert fig.layout.xaxis.title.text == fig.layout.xaxis2.title.text == "PC 1 (60% of variance)"  # short: no overlap
    assert "hidden-state units" in fig.layout.title.text
    assert "coloured by label" in fig.layout.title.text and "PCA fitted jointly" in fig.layout.title.text
    by_domain = plot_projection(_projection("umap"), color="domain")
    assert {t.name for t in by_domain.data} == {"movie", "amazon"}
    assert "UMAP 1" in by_domain.layout.xaxis.title.text
    with pytest.raises(ValueError, match=r"missing column\(s\) \['split'\]"):
        plot_projection(_projection(), color="split")


def _runs():
    return pd.DataFrame({"run_id": [f"r{i}" for i in range(6)], "method": ["vanilla", "lnsr"] * 3,
                         "seed": [1, 1, 2, 2, 3, 3], "noise_sensitivity": np.linspace(0.1, 0.3, 6),
                         "generalisation_gap": np.linspace(0.0, 0.2, 6), "ood_gap": [0.1] * 6,
                         "jacobian_fro2": np.linspace(5, 9, 6), "hessian_trace": [math.nan] * 6})


def test_theory_scatter_categorical_and_numeric_colour_and_the_correlation_in_the_title():
    corr = pd.DataFrame([{"x": "noise_sensitivity", "y": "generalisation_gap", "n": 6, "pearson_r": 0.9,
                          "pearson_ci_low": 0.5, "pearson_ci_high": 1.0, "spearman_rho": 0.8,
                          "spearman_ci_low": 0.2, "spearman_ci_high": 1.0}])
    fig = plot_theory_scatter(_runs(), correlations=corr)
    assert [t.name for t in fig.data] == ["vanilla", "lnsr"]
    assert fig.data[0].marker.color == color_for("vanilla")
    assert "Pearson r = 0.90 [0.50, 1.00]" in fig.layout.title.text and "n = 6 runs" in fig.layout.title.text
    assert "(ratio)" in fig.layout.xaxis.title.text and "(fraction)" in fig.layout.yaxis.title.text
    three = plot_theory_scatter(_runs(), x="noise_sensitivity", y="jacobian_fro2", color="generalisation_gap")
    assert len(three.data) == 1 and three.data[0].marker.showscale
    with pytest.raises(ValueError, match="no run has both 'noise_sensitivity' and 'hessian_trace'"):
        plot_theory_scatter(_runs(), y="hessian_trace")


def _identity():
    rows = []
    for sigma, value, regime in ((1.0, 20.0, "breaks: nonlinear"), (1e-2, 30.0, "holds"), (1e-4, 30.5, "holds"),
                                 (1e-8, 900.0, "breaks: round-off")):
        rows.append({"layer": 0, "stop": 2, "sigma": sigma, "noise_sensitivity": value,
                     "noise_sensitivity_ci_low": value * 0.9, "noise_sensitivity_ci_high": value * 1.1,
                     "jacobian_fro2": 30.2, "jacobian_se": 0.1, "ratio": value / 30.2, "regime": regime,
                     "n_examples": 8, "n_draws": 8, "n_probes": 16, "dtype": "float32"})
    return pd.DataFrame(rows)


def test_small_noise_identity_plot_log_axes_regimes_and_jacobian_line():
    fig = plot_small_noise_identity(_identity())
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    names = [t.name for t in fig.data]
    assert any(n.startswith("||J||²_F") for n in names)
    points = [t for t in fig.data if t.mode == "markers"]
    assert {t.name.split(" (")[0] for t in points} == {"holds", "breaks: nonlinear", "breaks: round-off"}
    holds = next(t for t in points if t.name.startswith("holds"))
    assert list(holds.x) == [1e-4, 1e-2] or list(holds.x) == [1e-2, 1e-4]
    assert "σ" in fig.layout.xaxis.title.text and "hidden-state units" in fig.layout.xaxis.title.text
    bad = _identity()
    bad.loc[0, "sigma"] = 0.0
    with pytest.raises(ValueError, match=r"sigma must be > 0"):
        plot_small_noise_identity(bad)


def _attributions():
    rows = []
    for model, sign in (("pretrained", 1), ("fine-tuned", -1)):
        for pos, tok in enumerate(["[CLS]", "great", "<fun>", "[SEP]"]):
            value = sign * (0.1 * pos if 0 < pos < 3 else 0.0)
            rows.append({"model": model, "position": pos, "token": tok, "token_id": pos, "attribution": value,
                         "attribution_norm": value / 0.3, "target": 1, "target_name": "positive",
                         "target_prob": 0.9 if sign > 0 else 0.6, "predicted": 1, "output": "probability",
                         "convergence_delta": 0.0, "text": "great <fun>"})
    return pd.DataFrame(rows)


def test_attribution_plot_one_panel_per_model_with_tokens_as_text():
    fig = plot_attributions(_attributions())
    assert len(fig.data) == 2 and [t.name for t in fig.data] == ["pretrained", "fine-tuned"]
    hm = fig.data[0]
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["pretrained: explains class “positive” (p = 0.90)", "fine-tuned: explains class “positive” "
                                                                          "(p = 0.60)"]
    assert list(hm.text[0])[:4] == ["[CLS]", "great", "&lt;fun&gt;", "[SEP]"]  # the words, as cell text
    assert hm.texttemplate == "%{text}" and hm.textfont.size >= 10
    assert fig.layout.xaxis.showticklabels is False  # no position numbers under the words
    assert hm.zmid == 0 and hm.zmax == -hm.zmin
    np.testing.assert_allclose(fig.data[1].z[0][:4], [0.0, -1 / 3, -2 / 3, 0.0])
    assert "share of total |attribution|" in hm.colorbar.title.text and fig.data[1].showscale is False
    assert "great &lt;fun&gt;" in fig.layout.title.text
    raw = plot_attributions(_attributions(), value="attribution")
    np.testing.assert_allclose(raw.data[0].z[0][:4], [0.0, 0.1, 0.2, 0.0])
    with pytest.raises(ValueError, match="'value' parameter of plot_attributions must be one of"):
        plot_attributions(_attributions(), value="saliency")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['target_prob'\]"):
        plot_attributions(_attributions().drop(columns="target_prob"))


def test_attribution_plot_wraps_a_long_sentence_into_rows_and_names_label_k_classes():
    words = [f"w{i}" for i in range(30)]
    rows = [{"model": "m", "position": p, "token": w, "attribution": 0.01 * p, "attribution_norm": 0.01 * p,
             "target": 0, "target_name": "LABEL_0", "target_prob": 0.7, "text": " ".join(words)}
            for p, w in enumerate(words)]
    fig = plot_attributions(pd.DataFrame(rows), tokens_per_row=10)
    hm = fig.data[0]
    assert len(hm.z) == 3 and all(len(r) == 10 for r in hm.z)  # 30 tokens in 3 rows of 10
    assert [t for row in hm.text for t in row] == words  # every word shown, in order
    assert list(hm.y) == ["tokens 1–10", "tokens 11–20", "tokens 21–30"]
    assert "class “class 0”" in fig.layout.annotations[0].text  # LABEL_0 is never shown
    named = plot_attributions(pd.DataFrame(rows), class_names=("negative", "positive"))
    assert "class “negative”" in named.layout.annotations[0].text
    assert len(named.data[0].z[0]) <= 12  # the default fits the row into the figure's width
    shown = re.sub(r"</?sup>", "", named.layout.title.text).replace("<br>", " ")
    assert " ".join(words) in shown  # the whole sentence, not cut


def test_plots_accept_real_outputs():
    from lnsr_viz.analysis.attribution import token_attributions
    from lnsr_viz.analysis.drift import representation_drift
    from lnsr_viz.testing import tiny_model, toy_sentences

    model, tok = tiny_model("bert")
    other, _ = tiny_model("bert", seed=1)
    texts, _ = toy_sentences(8)
    assert isinstance(plot_drift_heatmap(representation_drift(model, other, texts, tok)), go.Figure)
    assert isinstance(plot_attributions(token_attributions(model, other, texts[0], tok, n_steps=8)), go.Figure)


def test_drift_by_layer_plots_the_mean_over_seeds_with_a_band():
    rows = []
    for method, base in (("vanilla", 0.9), ("lnsr", 0.95)):
        for seed, off in ((1, -0.01), (2, 0.0), (3, 0.01)):
            for layer in range(3):
                rows.append({"method": method, "seed": seed, "layer": layer, "metric": "cka", "kind": "similarity",
                             "value": base - 0.1 * layer + off})
    fig = plot_drift_by_layer(pd.DataFrame(rows))
    lines = {t.name: t for t in fig.data if t.mode == "lines+markers"}
    assert set(lines) == {"vanilla", "lnsr"}
    np.testing.assert_allclose(lines["lnsr"].y, [0.95, 0.85, 0.75])
    assert len(fig.data) == 4  # a band and a line per method
    assert "1 = unchanged" in fig.layout.title.text and "CKA" in fig.layout.title.text
    # the axis title holds the metric's whole meaning, wrapped into lines, never cut with "[...]"
    y_title = fig.layout.yaxis.title.text
    assert "[...]" not in y_title and DRIFT_METRICS["cka"][1] in y_title.replace("<br>", " ")
    assert all(len(line) <= 48 for line in y_title.split("<br>"))
    with pytest.raises(ValueError, match="metric"):
        plot_drift_by_layer(pd.DataFrame(rows), metric="weight_distance")
    with pytest.raises(ValueError, match="method"):
        plot_drift_by_layer(pd.DataFrame(rows).drop(columns="method"))

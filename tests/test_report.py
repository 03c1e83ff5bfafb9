"""Tests for :mod:`lnsr_viz.viz.report`: self-contained, offline HTML reports.

Covered: plotly.js is embedded exactly once even with several figures (and not at all without
figures); no script, stylesheet or font is loaded over the network; every heading appears in the
page and in the table of contents, with unique anchors; user text (title, headings, table cells,
key/value pairs, captions) is escaped; the markdown subset of ``add_text`` and the ``html=True``
pass-through; table number formatting; the footer with the version (and its "unknown" fallback);
and ``save``: parent folders created, the path returned, no temporary file left, and an existing
file left untouched when writing fails. The page comes from the packaged Jinja2 templates (autoescaped HTML,
unescaped markdown, undefined names refused); the probe report (:mod:`lnsr_viz.viz.reports`).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from lnsr_viz.viz import report as report_module
from lnsr_viz.viz.report import Report

PLOTLY_JS_HEAD = get_plotlyjs()[:300]


def _fig(y):
    return go.Figure(go.Scatter(x=[0, 1, 2], y=y, name="line"), layout={"title": {"text": "toy"}})


def three_figure_report() -> Report:
    rep = Report("Stability <study>", subtitle="3 seeds & 4 domains")
    rep.add_text("Intro paragraph.", heading="Overview")
    for i in range(3):
        rep.add_figure(_fig([i, i + 1, i + 2]), heading=f"Figure {i}", caption=f"How to read figure **{i}**.")
    return rep


def test_plotly_js_embedded_exactly_once_with_three_figures():
    html = three_figure_report().to_html()
    assert html.count(PLOTLY_JS_HEAD) == 1
    assert html.count("Plotly.newPlot(") == 3
    # plotly.js is loaded before the first figure script runs
    assert html.index(PLOTLY_JS_HEAD) < html.index("Plotly.newPlot(")


def test_no_plotly_js_without_figures():
    rep = Report("Tables only").add_table(pd.DataFrame({"a": [1.0]}))
    html = rep.to_html()
    assert PLOTLY_JS_HEAD not in html
    assert len(html) < 20_000


def test_offline_safe_no_remote_scripts_styles_or_fonts():
    html = three_figure_report().to_html()
    assert not re.search(r"<script[^>]*\bsrc\s*=", html)  # no script is loaded from anywhere
    assert not re.search(r"<script[^>]*src=[\"']?https?:", html)
    assert "<link" not in html
    assert "@import" not in html and "@font-face" not in html


def test_each_heading_in_page_and_table_of_contents():
    rep = three_figure_report()
    rep.add_table(pd.DataFrame({"x": [1]}), heading="Figure 0")  # duplicate heading text
    html = rep.to_html()
    for heading, anchor in [
        ("Overview", "overview"),
        ("Figure 0", "figure-0"),
        ("Figure 1", "figure-1"),
        ("Figure 2", "figure-2"),
        ("Figure 0", "figure-0-2"),
    ]:
        assert f'<section class="block" id="{anchor}"><h2>{heading}</h2>' in html
        assert f'<a href="#{anchor}">{heading}</a>' in html
    assert html.index('<nav class="toc">') < html.index("<main>")


def test_title_subtitle_and_captions_are_escaped():
    html = three_figure_report().to_html()
    assert "<title>Stability &lt;study&gt;</title>" in html
    assert "<h1>Stability &lt;study&gt;</h1>" in html
    assert "3 seeds &amp; 4 domains" in html
    assert "<figcaption>How to read figure <strong>1</strong>.</figcaption>" in html


def test_table_cell_script_is_escaped():
    df = pd.DataFrame({"method": ["<script>alert(1)</script>", "lnsr"], "<b>col</b>": [0.123456, float("nan")]})
    html = Report("t").add_table(df, heading="Table").to_html()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;col&lt;/b&gt;" in html
    assert '<td class="num">0.123</td>' in html
    assert '<td class="num">–</td>' in html  # missing value


def test_table_float_format_index_and_empty():
    df = pd.DataFrame({"mean": [0.5, 0.25]}, index=pd.Index(["movie", "nyt"], name="domain"))
    html = Report("t").add_table(df, float_format="{:.1%}", caption="CI over `seeds`").to_html()
    assert '<th scope="col">domain</th>' in html and "<td>movie</td>" in html
    assert '<td class="num">50.0%</td>' in html
    assert '<p class="caption">CI over <code>seeds</code></p>' in html
    empty = Report("t").add_table(pd.DataFrame({"a": []})).to_html()
    assert "(no rows)" in empty


def test_key_values_are_rendered_and_escaped():
    html = (
        Report("t")
        .add_key_values({"lr": 2e-5, "model": "<minilm>", "domains": ["movie", "nyt"], "seed": 3}, heading="Config")
        .to_html()
    )
    assert '<tr><th scope="row">lr</th><td>2e-05</td></tr>' in html
    assert "<td>&lt;minilm&gt;</td>" in html
    assert "<td>[&quot;movie&quot;, &quot;nyt&quot;]</td>" in html
    assert '<tr><th scope="row">seed</th><td>3</td></tr>' in html


def test_markdown_subset_and_html_passthrough():
    text = "First **bold** and `a<b` code.\nSame paragraph.\n\n- one\n- two **2**\n\nAfter <i>x</i>."
    html = Report("t").add_text(text).to_html()
    assert "<p>First <strong>bold</strong> and <code>a&lt;b</code> code. Same paragraph.</p>" in html
    assert "<ul><li>one</li><li>two <strong>2</strong></li></ul>" in html
    assert "<p>After &lt;i&gt;x&lt;/i&gt;.</p>" in html
    raw = Report("t").add_text("<p class='x'>raw</p>", html=True).to_html()
    assert "<p class='x'>raw</p>" in raw


def test_footer_has_version_and_time(monkeypatch):
    html = Report("t").to_html()
    assert re.search(r"<footer>Generated by lnsr_viz \S+ on \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", html)

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert "Generated by lnsr_viz unknown on" in Report("t").to_html()


def test_bad_inputs_raise_type_errors():
    rep = Report("t")
    with pytest.raises(TypeError, match="expects a plotly.graph_objects.Figure"):
        rep.add_figure({"data": []})
    with pytest.raises(TypeError, match="expects a pandas DataFrame"):
        rep.add_table([[1, 2]])
    with pytest.raises(TypeError, match="expects a mapping"):
        rep.add_key_values([("a", 1)])
    with pytest.raises(TypeError, match="'heading' parameter of Report must be a str"):
        rep.add_text("x", heading=3)


def test_save_creates_folders_returns_path_and_leaves_no_tmp(tmp_path):
    target = tmp_path / "reports" / "run1" / "report.html"
    out = three_figure_report().save(target)
    assert out == target
    text = target.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.count(PLOTLY_JS_HEAD) == 1
    assert os.listdir(target.parent) == ["report.html"]
    Report("second").save(target)  # overwrite in place
    assert "<h1>second</h1>" in target.read_text(encoding="utf-8")
    assert os.listdir(target.parent) == ["report.html"]


def test_save_failure_in_replace_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("old report", encoding="utf-8")

    def boom(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated crash"):
        Report("new").save(target)
    assert target.read_text(encoding="utf-8") == "old report"
    assert os.listdir(tmp_path) == ["report.html"]


def test_save_failure_mid_write_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("old report", encoding="utf-8")

    def boom(fd):
        raise OSError("simulated crash while writing")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="simulated crash while writing"):
        Report("new").add_text("body").save(target)
    assert target.read_text(encoding="utf-8") == "old report"
    assert os.listdir(tmp_path) == ["report.html"]


def test_save_failure_while_rendering_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("old report", encoding="utf-8")

    def boom(self):
        raise RuntimeError("render failed")

    monkeypatch.setattr(report_module.Report, "to_html", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        Report("new").save(target)
    assert target.read_text(encoding="utf-8") == "old report"


def test_pages_come_from_the_packaged_templates_with_autoescape():
    import lnsr_viz.viz

    folder = Path(lnsr_viz.viz.__file__).parent / "templates"
    env = report_module.template_environment()
    names = set(env.list_templates())
    assert {"report.html.j2", "blocks.html.j2", "report.css.j2", "study.md.j2"} <= names
    assert all((folder / n).is_file() for n in names)
    assert env.from_string("{{ x }}").render(x="<b>'&\"") == "&lt;b&gt;&#x27;&amp;&quot;"  # html.escape's entities
    md = report_module.template_environment(markdown=True)
    assert md.from_string("{{ x }}").render(x="<b>") == "<b>"  # markdown is not HTML-escaped
    with pytest.raises(Exception, match="undefined"):
        env.from_string("{{ missing }}").render()
    # the stylesheet in the page is the packaged one
    css = (folder / "report.css.j2").read_text(encoding="utf-8").split("\n", 1)[1]
    assert css in Report("t").to_html()


def _profile(ks=(0, 1)) -> pd.DataFrame:
    rows = []
    for k in ks:
        for layer in range(k, 3):
            v = 0.1 * (layer - k + 1)
            rows.append({"model": "tiny", "injection_layer": k, "layer": layer, "noise": "gaussian", "scale": 0.05,
                         "change_rel": v, "change_rel_ci_low": v - 0.01, "change_rel_ci_high": v + 0.01,
                         "change_l2": v, "change_l2_ci_low": v, "change_l2_ci_high": v})
    return pd.DataFrame(rows)


def test_probe_report_shows_the_curve_and_with_every_layer_the_heatmap(tmp_path):
    from lnsr_viz.viz.reports import probe_report

    html = probe_report(_profile(), model="tiny").to_html()
    assert "<title>Noise-stability profile of tiny</title>" in html
    assert 'id="stability-curve"' in html and 'id="full-profile"' in html and 'id="profile"' in html
    assert "Noise injected at layer 0" in html
    one = probe_report(_profile(ks=(1,)), model="tiny", layer=1).save(tmp_path / "p.html").read_text()
    assert "Noise injected at layer 1" in one and 'id="full-profile"' not in one


# ----------------------------------------------------------------------------- the comparison report's wording


def _comparison_result():
    """A ComparisonResult-like object with the tables the report reads: 3 seeds, one clear-looking but weak row."""
    from types import SimpleNamespace

    from lnsr_viz.analysis.stats import describe_comparison

    base = {"method": "lnsr", "baseline": "vanilla", "n_pairs": 3, "p_sign": 0.25, "p_permutation": 0.25}
    rows = [{**base, "domain": "movie", "metric": "accuracy", "mean_diff": -0.02, "ci_low": -0.03, "ci_high": -0.01},
            {**base, "domain": "amazon", "metric": "accuracy", "mean_diff": 0.01, "ci_low": -0.02, "ci_high": 0.04}]
    paired = pd.DataFrame([{**r, "verdict": describe_comparison(r)} for r in rows])
    drift = pd.DataFrame([{"method": m, "seed": s, "layer": layer, "metric": metric, "kind": kind,
                           "value": v + 0.01 * s}
                          for m in ("vanilla", "lnsr") for s in (1, 2, 3) for layer in range(3)
                          for metric, kind, v in (("cka", "similarity", 0.9), ("weight_distance_rel", "distance",
                                                                                 0.1))])
    cfg = {"model": "minilm", "data": {"train_size": 500, "in_domain": "movie"}, "methods": ["vanilla", "lnsr"],
           "seeds": [1, 2, 3], "results": "results/demo", "train": {"epochs": 3}, "probe": {"n": 64},
           "method_params": {"vanilla": {}, "lnsr": {"lam": 10.0, "noise": "gaussian", "scale": 0.05}}}
    empty = pd.DataFrame()
    return SimpleNamespace(config=cfg, runs=pd.DataFrame({"run_id": ["a"], "method": ["lnsr"], "seed": [1]}),
                           paired=paired, profile=empty, metrics=empty, label_balance=empty, history=empty,
                           drift=drift, summary=empty, timings={"total_s": 1.0})


def test_comparison_report_words_and_draws_weak_evidence_as_weak():
    from lnsr_viz.viz.reports import comparison_report

    html_text = comparison_report(_comparison_result()).to_html()
    verdicts = html_text.split("Verdicts in plain words", 1)[1].split("</ul>", 1)[0]
    # p = 0.25 over 3 seeds: never "worse", although the t-interval excludes 0
    assert "is worse than" not in verdicts
    assert verdicts.count("no clear difference between lnsr and vanilla (within noise)") == 2
    assert "p = 0.25 over 3 seeds" in verdicts
    # the figure draws it hollow; no "CI excludes 0" marker
    assert "CI excludes 0" not in html_text.replace("CI excludes 0 *and*", "").replace("CI excludes 0 <em>and</em>",
                                                                                     "")
    assert "circle-open" in html_text and "clear difference (CI excludes 0, p < 0.05)" not in html_text


def test_comparison_report_states_the_paired_rule_once_and_explains_the_lnsr_setting():
    from lnsr_viz.viz.reports import comparison_report

    result = _comparison_result()
    html_text = comparison_report(result).to_html()
    table = html_text.split("Paired comparison table", 2)[-1]
    # the long verdict sentence is not repeated per row: a short evidence cell, the rule once in the caption
    for sentence in result.paired["verdict"]:
        assert sentence not in table
    assert table.count("within noise</td>") == 2
    assert html_text.count("so a comparison over 5 seeds or fewer is never called clear") == 2  # verdicts + caption
    # the drift axis titles are whole (wrapped, never cut with [...]; plotly.js itself holds "[...]")
    titles = re.findall(r'"yaxis":\{"title":\{"text":"([^"]*)"', html_text)
    drift = [t for t in titles if "CKA" in t or "weight distance" in t]
    assert len(drift) == 2 and not any("[...]" in t for t in drift)
    assert "1 = identical up to rotation and isotropic scale" in drift[0].replace("\\u003cbr\\u003e", " ")
    # why LNSR's weight here may differ from the study's chosen one
    assert "LNSR ran with lam = 10, noise = gaussian, scale = 0.05" in html_text
    assert "fixed before any run" in html_text and "docs/study-v2.md" in html_text

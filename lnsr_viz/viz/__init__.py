"""Stage 6, presentation: pure figures from tidy tables, reports from Jinja2 templates, dashboards, notebook runtime.

Modules: :mod:`~lnsr_viz.viz.style` (the shared look and checks), :mod:`~lnsr_viz.viz.figures`,
:mod:`~lnsr_viz.viz.analysis_figures`, :mod:`~lnsr_viz.viz.notebook_figures`, :mod:`~lnsr_viz.viz.study_figures`
(DataFrame in, plotly figure out), :mod:`~lnsr_viz.viz.report` (the HTML page) and :mod:`~lnsr_viz.viz.reports`
(every report, from ``templates/``), :mod:`~lnsr_viz.viz.dashboards` (ipywidgets wired to figures),
:mod:`~lnsr_viz.viz.runtime` (what the notebooks need besides figures), :mod:`~lnsr_viz.viz.notebook_sources`
(``.ipynb`` from the Jupytext sources).
"""

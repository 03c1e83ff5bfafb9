"""Stage 3, analysis of models and runs: metrics, statistics, drift, projections, the theory link, attributions.

Modules: :mod:`~lnsr_viz.analysis.evaluation` (classification metrics per domain),
:mod:`~lnsr_viz.analysis.qa_evaluation` (SQuAD EM / F1 of a model), :mod:`~lnsr_viz.analysis.stats` (over seeds:
summaries, paired tests, verdicts), :mod:`~lnsr_viz.analysis.drift` (CKA, cosine drift, weight distance),
:mod:`~lnsr_viz.analysis.projection` (UMAP / PCA), :mod:`~lnsr_viz.analysis.theory` (Jacobian norms, the
small-noise identity, Hessian traces), :mod:`~lnsr_viz.analysis.attribution` (captum).
"""

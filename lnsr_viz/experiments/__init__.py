"""Stage 5, experiments: one configuration, the run store, comparisons, sweeps, the study, the diagnosis.

Modules: :mod:`~lnsr_viz.experiments.config` (``ExperimentConfig``, the one source of defaults),
:mod:`~lnsr_viz.experiments.store` (``RunStore``, keyed by configuration hashes), :mod:`~lnsr_viz.experiments.runs`
(``compare``), :mod:`~lnsr_viz.experiments.sweep`, :mod:`~lnsr_viz.experiments.study`,
:mod:`~lnsr_viz.experiments.theory_runs` (the theory table of a store), :mod:`~lnsr_viz.experiments.diagnose`.
"""

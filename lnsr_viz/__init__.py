"""lnsr_viz: noise stability of fine-tuned transformers — probes, the LNSR regulariser, experiments and reports.

The public names are imported lazily so that ``import lnsr_viz`` is fast and the command line starts quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    # model adapter, noise, probe
    "ModelAdapter", "GaussianNoise", "InManifoldNoise", "make_noise", "StabilityProbe",
    # methods and training
    "LNSR", "Vanilla", "Method", "LossParts", "get_method", "lnsr_penalty", "FineTuner", "TrainerCallback",
    "TrainState", "L2SP", "Mixout", "SMART", "R3F", "RDrop", "NoisyTune", "HyPe", "ChildTuning", "Combined",
    "compose", "RegularizedTrainer", "CollapseGuard",
    # data and models
    "TextDataset", "load_domain", "load_splits", "split_dataset", "subsample", "as_dataset", "load_model",
    "ensure_asset",
    # evaluation, statistics, store, experiments
    "evaluate", "predict_proba", "classification_metrics", "summarize", "paired_comparison", "RunStore",
    "compare", "ComparisonResult", "run_sweep", "load_sweep_config", "merge_stores", "select_from_store",
    "load_study", "write_study",
    # analysis: drift, projections, theory, attributions, diagnosis
    "linear_cka", "representation_drift", "weight_distance", "project_representations", "jacobian_norm",
    "small_noise_identity", "hessian_trace", "theory_table", "token_attributions", "attribution_stability",
    "diagnose",
    # question answering
    "load_squad", "squad_metrics", "topic_split",
    # figures and reports
    "Report", "plot_stability_curves", "plot_profile_heatmap", "plot_metric_by_domain", "plot_training_curves",
    "plot_generalisation_gap", "plot_paired_differences", "save_figure",
]

_WHERE = {
    "ModelAdapter": "core.adapter", "GaussianNoise": "core.noise", "InManifoldNoise": "core.noise", "make_noise": "core.noise",
    "StabilityProbe": "core.probe", "LNSR": "methods.base", "Vanilla": "methods.base", "Method": "methods.base",
    "LossParts": "methods.base", "get_method": "methods.base", "lnsr_penalty": "methods.base",
    "FineTuner": "training.loop", "TrainerCallback": "training.loop", "TrainState": "training.loop", "TextDataset": "data.text",
    "load_domain": "data.text", "load_splits": "data.text", "split_dataset": "data.text", "subsample": "data.text",
    "as_dataset": "data.text", "load_model": "data.models", "ensure_asset": "data.assets", "evaluate": "analysis.evaluation",
    "predict_proba": "analysis.evaluation", "classification_metrics": "analysis.evaluation", "summarize": "analysis.stats",
    "paired_comparison": "analysis.stats", "RunStore": "experiments.store", "compare": "experiments.runs",
    "ComparisonResult": "experiments.runs", "Report": "viz.report", "plot_stability_curves": "viz.figures",
    "plot_profile_heatmap": "viz.figures", "plot_metric_by_domain": "viz.figures", "plot_training_curves": "viz.figures",
    "plot_generalisation_gap": "viz.figures", "plot_paired_differences": "viz.figures", "save_figure": "viz.figures",
    "linear_cka": "analysis.drift", "representation_drift": "analysis.drift", "weight_distance": "analysis.drift",
    "project_representations": "analysis.projection", "jacobian_norm": "analysis.theory", "small_noise_identity": "analysis.theory",
    "hessian_trace": "analysis.theory", "theory_table": "analysis.theory", "token_attributions": "analysis.attribution",
    "attribution_stability": "analysis.attribution", "load_squad": "data.squad", "squad_metrics": "data.squad", "topic_split": "data.squad",
    "L2SP": "methods.rivals", "Mixout": "methods.rivals", "SMART": "methods.rivals", "R3F": "methods.rivals", "RDrop": "methods.rivals",
    "NoisyTune": "methods.rivals", "HyPe": "methods.rivals", "ChildTuning": "methods.rivals", "Combined": "methods.base",
    "compose": "methods.base", "RegularizedTrainer": "training.hf_trainer", "CollapseGuard": "training.collapse", "run_sweep": "experiments.sweep",
    "load_sweep_config": "experiments.sweep", "merge_stores": "experiments.sweep", "select_from_store": "experiments.sweep", "load_study": "experiments.study",
    "write_study": "experiments.study",
}


def _diagnose_module() -> Any:
    # ``lnsr_viz.experiments.diagnose`` is a callable module: ``lnsr_viz.experiments.diagnose(model, base, data)`` runs the diagnosis and
    # ``import lnsr_viz.experiments.diagnose`` keeps working, so the package attribute must be the module itself.
    return importlib.import_module(".experiments.diagnose", __name__)


def __getattr__(name: str) -> Any:
    if name == "diagnose":
        return _diagnose_module()
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lnsr_viz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

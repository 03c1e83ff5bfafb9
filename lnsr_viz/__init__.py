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
    "ModelAdapter": "adapter", "GaussianNoise": "noise", "InManifoldNoise": "noise", "make_noise": "noise",
    "StabilityProbe": "probe", "LNSR": "regularizers", "Vanilla": "regularizers", "Method": "regularizers",
    "LossParts": "regularizers", "get_method": "regularizers", "lnsr_penalty": "regularizers",
    "FineTuner": "training", "TrainerCallback": "training", "TrainState": "training", "TextDataset": "data",
    "load_domain": "data", "load_splits": "data", "split_dataset": "data", "subsample": "data",
    "as_dataset": "data", "load_model": "models", "ensure_asset": "assets", "evaluate": "evaluation",
    "predict_proba": "evaluation", "classification_metrics": "evaluation", "summarize": "stats",
    "paired_comparison": "stats", "RunStore": "store", "compare": "experiments",
    "ComparisonResult": "experiments", "Report": "report", "plot_stability_curves": "plots",
    "plot_profile_heatmap": "plots", "plot_metric_by_domain": "plots", "plot_training_curves": "plots",
    "plot_generalisation_gap": "plots", "plot_paired_differences": "plots", "save_figure": "plots",
    "linear_cka": "drift", "representation_drift": "drift", "weight_distance": "drift",
    "project_representations": "projection", "jacobian_norm": "theory", "small_noise_identity": "theory",
    "hessian_trace": "theory", "theory_table": "theory", "token_attributions": "attribution",
    "attribution_stability": "attribution", "load_squad": "qa", "squad_metrics": "qa", "topic_split": "qa",
    "L2SP": "baselines", "Mixout": "baselines", "SMART": "baselines", "R3F": "baselines", "RDrop": "baselines",
    "NoisyTune": "baselines", "HyPe": "baselines", "ChildTuning": "baselines", "Combined": "regularizers",
    "compose": "regularizers", "RegularizedTrainer": "hf", "CollapseGuard": "collapse", "run_sweep": "sweep",
    "load_sweep_config": "sweep", "merge_stores": "sweep", "select_from_store": "sweep", "load_study": "study",
    "write_study": "study",
}


def _diagnose_module() -> Any:
    # ``lnsr_viz.diagnose`` is a callable module: ``lnsr_viz.diagnose(model, base, data)`` runs the diagnosis and
    # ``import lnsr_viz.diagnose`` keeps working, so the package attribute must be the module itself.
    return importlib.import_module(".diagnose", __name__)


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

"""lnsr_viz: noise stability of fine-tuned transformers — probes, the LNSR regulariser, experiments and reports.

The package is the pipeline, one stage per subpackage, each importing only the ones before it
(``docs/architecture.md`` draws it)::

    utils -> data -> core -> methods, analysis -> training -> experiments -> viz -> cli

The names below are the everyday API (a probe, a fine-tune, a comparison, a diagnosis and their reports); everything
else is reached through its subpackage, e.g. ``lnsr_viz.analysis.theory.jacobian_norm`` or
``lnsr_viz.methods.SMART``. Names are imported lazily so that ``import lnsr_viz`` and the command line start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it (relative to this package).
_WHERE = {
    # data: the packaged model and labelled text, or yours
    "load_model": "data.models",
    "load_domain": "data.text",
    "as_dataset": "data.text",
    "TextDataset": "data.text",
    # core: the adapter, noise and the probe
    "ModelAdapter": "core.adapter",
    "GaussianNoise": "core.noise",
    "InManifoldNoise": "core.noise",
    "StabilityProbe": "core.probe",
    # methods and training
    "LNSR": "methods",
    "get_method": "methods",
    "FineTuner": "training.loop",
    "RegularizedTrainer": "training.hf_trainer",
    "CollapseGuard": "training.collapse",
    # analysis
    "representation_drift": "analysis.drift",
    # experiments
    "ExperimentConfig": "experiments.config",
    "compare": "experiments.runs",
    "RunStore": "experiments.store",
    "run_sweep": "experiments.sweep",
    "diagnose": "experiments.diagnose",
    # figures and reports
    "plot_stability_curves": "viz.figures",
    "comparison_report": "viz.reports",
    "diagnosis_report": "viz.reports",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(
        f"module 'lnsr_viz' has no attribute {name!r}; the top level holds {len(__all__)} everyday names "
        "(dir(lnsr_viz)), the rest lives in the subpackages (utils, data, core, methods, analysis, training, "
        "experiments, viz)"
    )


def __dir__() -> list[str]:
    return sorted(__all__)

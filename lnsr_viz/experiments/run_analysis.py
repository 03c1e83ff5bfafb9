"""Every run's own analysis, measured while its model is in memory and stored with it, so nothing needs a checkpoint.

:func:`analyse_run` measures, on fixed inputs that every run of one protocol shares (:func:`analysis_inputs`):

* ``theory``: at each given injection layer ``k``, the Jacobian norm ``||J||_F^2`` of the top layer with respect to
  ``h_k`` (Hutchinson) and the small-noise identity ``E||f(h+e)-f(h)||^2 / sigma^2`` against it at a few absolute
  ``sigma`` (:func:`lnsr_viz.analysis.theory.small_noise_identity`), and the Hessian trace of the training loss on a
  fixed sample of training examples (:func:`lnsr_viz.analysis.theory.hessian_trace`) with respect to the parameters
  of the top block and the head only: over all parameters it costs about 8x more on MiniLM (55 s per run with 8
  probes) and Hutchinson's estimate stays as noisy (its standard error, stored beside it, is of the order of the
  value either way);
* ``diagnosis``: the numbers behind every finding of :func:`lnsr_viz.experiments.diagnose.diagnose` (train /
  held-out accuracy and loss gaps, top-layer stability against the pre-trained base, calibration, drift) with the
  model's training set as train and its in-domain test set as held-out (fine-tuned runs only);
* ``attributions``: Integrated-Gradients token attributions of a fixed set of in-domain sentences
  (:func:`lnsr_viz.analysis.attribution.token_attributions`, probability of the model's predicted class; the
  sentence's text on its first row only, to keep the table small);
* ``weightwatcher``: WeightWatcher's per-layer spectral metrics of the weights alone (the power-law exponent
  ``alpha`` of each weight matrix's eigenvalue spectrum, ``alpha_weighted``, ``log_norm``, ``log_spectral_norm``,
  ``stable_rank``; ``weightwatcher.WeightWatcher(model).analyze()`` with its defaults), the anchor that ``diagnose``
  is compared with;
* ``representations``: the top-layer sentence representations (mean-pooled, float16) of a fixed, small sample of
  every evaluation domain, for the UMAP / PCA views (:func:`lnsr_viz.analysis.projection` fits them later).

How many sentences each part uses is :data:`ANALYSIS_SETTINGS`; it enters the key of every run made with
``ExperimentConfig(analysis=True)``, so a change of it makes new runs, never mixes old and new analyses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ANALYSIS_SETTINGS", "ANALYSIS_TABLES", "WEIGHTWATCHER_COLUMNS", "THEORY_COLUMNS", "DIAGNOSIS_COLUMNS",
           "AnalysisInputs", "analysis_inputs", "analyse_run", "top_and_head"]

#: What every stored analysis is measured on (part of the run key of ``analysis=True`` runs).
ANALYSIS_SETTINGS: dict[str, Any] = {
    "version": 1,
    "theory_sentences": 32,          # in-domain evaluation sentences (the probe's first ones)
    "theory_probes": 8,              # Hutchinson probes of the Jacobian and the Hessian
    "sigmas": [0.1, 0.01, 0.001],    # absolute noise of the small-noise identity
    "identity_draws": 4,
    "hessian_examples": 64,          # training examples (stratified, seed 0) of the Hessian's loss
    "hessian_params": "top block and head",  # the top transformer block, the pooler and the classifier
    "diagnose_examples": 300,        # per split, diagnose's max_examples
    "diagnose_drift": 128,           # held-out sentences of diagnose's drift
    "attribution_sentences": 8,      # in-domain evaluation sentences (stratified, seed 0)
    "attribution_steps": 32,         # Integrated-Gradients steps
    "representation_sentences": 32,  # per evaluation domain (stratified, seed 0)
    "weightwatcher": "0.7 analyze() defaults",
}
#: The tables :func:`analyse_run` returns (``RunStore.save(tables=...)`` names).
ANALYSIS_TABLES: tuple[str, ...] = ("theory", "diagnosis", "attributions", "weightwatcher", "representations")
#: The columns of WeightWatcher's per-layer frame that the ``weightwatcher`` table keeps.
WEIGHTWATCHER_COLUMNS = ("layer_id", "name", "longname", "N", "M", "alpha", "alpha_weighted", "log_alpha_norm",
                         "log_norm", "log_spectral_norm", "stable_rank", "num_pl_spikes", "warning")
#: Columns of the ``theory`` table: one row per quantity (and sigma, for the identity).
THEORY_COLUMNS = ("layer", "quantity", "sigma", "value", "se", "ci_low", "ci_high", "n_examples", "n_probes")
#: Columns of the ``diagnosis`` table: one row per number (a finding's value and evidence, or a split metric).
DIAGNOSIS_COLUMNS = ("finding", "severity", "quantity", "value")


@dataclass(frozen=True)
class AnalysisInputs:
    """The fixed inputs of every run's analysis on one protocol (the same for every method and seed)."""

    theory_texts: list[str]
    hessian_data: Any
    attribution_texts: list[str]
    representation_sets: dict[str, Any]
    train: Any
    held_out: Any


def analysis_inputs(protocol: Any, settings: Mapping[str, Any] = ANALYSIS_SETTINGS) -> AnalysisInputs:
    """The fixed sentences of :func:`analyse_run` on ``protocol`` (a classification protocol of ``runs``)."""
    from ..data.text import subsample

    if protocol.task != "classification":
        raise ValueError("analysis=True is implemented for classification runs only (the attributions, the "
                         "diagnosis and the representation sets need labelled sentences); turn it off for QA.")
    in_domain = protocol.evaluation[protocol.in_domain]

    def sample(ds: Any, n: int) -> Any:
        return ds if len(ds) <= n else subsample(ds, n, seed=0)

    return AnalysisInputs(
        theory_texts=protocol.probe_texts[: int(settings["theory_sentences"])],
        hessian_data=sample(protocol.train, int(settings["hessian_examples"])),
        attribution_texts=list(sample(in_domain, int(settings["attribution_sentences"])).texts),
        representation_sets={name: sample(ds, int(settings["representation_sentences"]))
                             for name, ds in protocol.evaluation.items()},
        train=protocol.train,
        held_out=in_domain,
    )


def top_and_head(net: Any) -> list[str]:
    """The names of the parameters of the top transformer block and of everything after it (pooler, classifier)."""
    from ..core.adapter import ModelAdapter

    adapter = ModelAdapter(net)
    top_block = adapter.blocks[-1]
    inside = {id(p) for p in top_block.parameters()}
    names = [n for n, p in net.named_parameters()]
    ids = [id(p) for _, p in net.named_parameters()]
    first = next(i for i, pid in enumerate(ids) if pid in inside)
    return names[first:]


def _theory(net: Any, tokenizer: Any, inputs: AnalysisInputs, layers: Sequence[int], settings: Mapping[str, Any],
            seed: int, max_length: int) -> pd.DataFrame:
    from ..analysis.theory import hessian_trace, small_noise_identity

    n_probes = int(settings["theory_probes"])
    rows = []
    for layer in layers:
        ident = small_noise_identity(net, inputs.theory_texts, tokenizer, layer=int(layer),
                                     sigmas=tuple(settings["sigmas"]), n_draws=int(settings["identity_draws"]),
                                     n_probes=n_probes, seed=seed, max_length=max_length)
        first = ident.iloc[0]
        rows.append({"layer": int(layer), "quantity": "jacobian_fro2", "sigma": math.nan,
                     "value": float(first["jacobian_fro2"]), "se": float(first["jacobian_se"]),
                     "ci_low": math.nan, "ci_high": math.nan, "n_examples": int(first["n_examples"]),
                     "n_probes": n_probes})
        for r in ident.itertuples(index=False):
            rows.append({"layer": int(layer), "quantity": "noise_sensitivity", "sigma": float(r.sigma),
                         "value": float(r.noise_sensitivity), "se": math.nan,
                         "ci_low": float(r.noise_sensitivity_ci_low), "ci_high": float(r.noise_sensitivity_ci_high),
                         "n_examples": int(r.n_examples), "n_probes": n_probes})
            rows.append({"layer": int(layer), "quantity": "identity_ratio", "sigma": float(r.sigma),
                         "value": float(r.ratio), "se": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                         "n_examples": int(r.n_examples), "n_probes": n_probes})
    hess = hessian_trace(net, inputs.hessian_data, tokenizer, params=top_and_head(net), n_probes=n_probes,
                         seed=seed, max_length=max_length)
    rows.append({"layer": math.nan, "quantity": "hessian_trace", "sigma": math.nan, "value": float(hess.trace),
                 "se": float(hess.se), "ci_low": math.nan, "ci_high": math.nan,
                 "n_examples": len(inputs.hessian_data), "n_probes": n_probes})
    return pd.DataFrame(rows, columns=list(THEORY_COLUMNS))


def _numbers(prefix: str, obj: Any) -> list[tuple[str, float]]:
    """The finite numbers of a (nested) evidence dict as ``(dotted name, value)``."""
    if isinstance(obj, Mapping):
        out = []
        for k, v in obj.items():
            out += _numbers(f"{prefix}.{k}" if prefix else str(k), v)
        return out
    if isinstance(obj, bool):
        return [(prefix, float(obj))]
    if isinstance(obj, int | float | np.integer | np.floating) and math.isfinite(float(obj)):
        return [(prefix, float(obj))]
    return []


def _diagnosis(net: Any, reference: Any, tokenizer: Any, inputs: AnalysisInputs, settings: Mapping[str, Any],
               seed: int, max_length: int, probe_n: int, probe_draws: int) -> pd.DataFrame:
    import warnings

    from .diagnose import diagnose

    with warnings.catch_warnings():
        # the run's own data carry the very class ids the model was trained on, so the warning that a model without
        # class names had the data's labels numbered in sorted order says nothing here
        warnings.filterwarnings("ignore", message="the model's classes have no names", category=UserWarning)
        result = diagnose((net, tokenizer), (reference, tokenizer),
                          {"train": inputs.train, "held_out": inputs.held_out},
                          max_examples=int(settings["diagnose_examples"]), probe_n=probe_n, probe_draws=probe_draws,
                          n_drift=int(settings["diagnose_drift"]), max_length=max_length, seed=seed,
                          track_record=None)  # the raw rules: the track record is built from these
    rows = []
    for f in result.findings:
        if f.value is not None and math.isfinite(float(f.value)):
            rows.append((f.key, f.severity, "value", float(f.value)))
        if f.threshold is not None and math.isfinite(float(f.threshold)):
            rows.append((f.key, f.severity, "threshold", float(f.threshold)))
        rows += [(f.key, f.severity, name, value) for name, value in _numbers("", f.evidence)]
    for r in result.metrics.itertuples(index=False):
        if isinstance(r.value, int | float) and math.isfinite(float(r.value)):
            rows.append(("metrics", "", f"{r.split}.{r.metric}", float(r.value)))
    return pd.DataFrame(rows, columns=list(DIAGNOSIS_COLUMNS))


def _attributions(net: Any, tokenizer: Any, inputs: AnalysisInputs, settings: Mapping[str, Any], name: str,
                  max_length: int) -> pd.DataFrame:
    from ..analysis.attribution import token_attributions

    parts = []
    for i, text in enumerate(inputs.attribution_texts):
        part = token_attributions((net, tokenizer), None, text, names=(name,),
                                  n_steps=int(settings["attribution_steps"]), max_length=max_length)
        part = part.drop(columns=["model", "output"]).assign(sentence=i)
        part["text"] = [text if pos == 0 else "" for pos in part["position"]]  # the sentence once, not per token
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    return out[["sentence", *[c for c in out.columns if c != "sentence"]]]


def _weightwatcher(net: Any) -> pd.DataFrame:
    """WeightWatcher's per-layer metrics (:data:`WEIGHTWATCHER_COLUMNS`), its console chatter silenced."""
    import contextlib
    import io
    import logging
    import warnings

    from ..utils.extras import require

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        ww = require("weightwatcher", "analysis=True (the weightwatcher table)")
        frame = ww.WeightWatcher(model=net).analyze()
    frame = frame[[c for c in WEIGHTWATCHER_COLUMNS if c in frame.columns]].copy()
    if "warning" in frame.columns:
        frame["warning"] = frame["warning"].fillna("").astype(str)
    return frame.reset_index(drop=True)


def _representations(net: Any, tokenizer: Any, inputs: AnalysisInputs, max_length: int) -> pd.DataFrame:
    from ..analysis.drift import sentence_representations
    from ..core.adapter import ModelAdapter

    adapter = ModelAdapter(net)
    top = adapter.n_layers
    frames = []
    for domain, ds in inputs.representation_sets.items():
        reps = sentence_representations(adapter, list(ds.texts), tokenizer, layers=top,
                                        max_length=max_length)[top].float().numpy()
        frame = pd.DataFrame(reps.astype(np.float16), columns=[f"d{j}" for j in range(reps.shape[1])])
        frame.insert(0, "domain", domain)
        frame.insert(1, "example", np.arange(len(ds)))
        frame.insert(2, "label", np.asarray(ds.labels, dtype=np.int64))
        frame.insert(3, "layer", top)
        frame.insert(4, "text", list(ds.texts))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def analyse_run(net: Any, tokenizer: Any, *, reference: Any, protocol: Any, inputs: AnalysisInputs | None = None,
                layers: Sequence[int] = (0,), name: str = "model", fine_tuned: bool = True, seed: int = 0,
                max_length: int = 64, probe_n: int = 64, probe_draws: int = 4,
                settings: Mapping[str, Any] = ANALYSIS_SETTINGS) -> dict[str, pd.DataFrame]:
    """Measure a run's analysis tables (:data:`ANALYSIS_TABLES`; ``diagnosis`` only when ``fine_tuned``).

    ``reference`` is the pre-trained base (the diagnosis's stability and drift are against it); ``layers`` are the
    injection layers of the theory quantities (the probe's and the method's own); ``inputs`` the protocol's fixed
    sentences (:func:`analysis_inputs`, computed here when not given). The model is left in the mode it came in.
    """
    from ..core.inputs import eval_mode

    inputs = inputs or analysis_inputs(protocol, settings)
    layers = sorted({int(k) for k in layers})
    with eval_mode(net):
        tables = {"theory": _theory(net, tokenizer, inputs, layers, settings, seed, max_length)}
        if fine_tuned:
            tables["diagnosis"] = _diagnosis(net, reference, tokenizer, inputs, settings, seed, max_length,
                                             probe_n, probe_draws)
        tables["attributions"] = _attributions(net, tokenizer, inputs, settings, name, max_length)
        tables["weightwatcher"] = _weightwatcher(net)
        tables["representations"] = _representations(net, tokenizer, inputs, max_length)
    return tables

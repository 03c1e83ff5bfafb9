# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Diagnose your model
#
# **What you will learn**
#
# * how to point lnsr_viz at any fine-tuned checkpoint and labelled data and get a diagnosis: the generalisation
#   gap, noise stability against the pre-trained base, drift per layer and calibration, each as a sentence with the
#   number, the threshold and where the threshold comes from;
# * how to look closer: the stability curves of model and base, the drift heat-map, a UMAP of the sentence
#   representations coloured by label or domain, and token attributions of base and model side by side;
# * how to save it all as one HTML report.
#
# **Time on a laptop CPU:** on a fresh clone, seconds: with no checkpoint it reads a committed run's stored
# diagnosis (`results/study-v2`: findings, stability, drift, attributions and representations stored with the run).
# With a checkpoint (yours, or the LNSR model `make demo` keeps) it diagnoses live: about a minute on two cores
# (MiniLM, 500 training and 600 held-out movie snippets, a projection of 400 sentences). About 10 s in the quick
# setting.
#
# **Your own model:** set `CHECKPOINT` below (or the environment variable `LNSR_VIZ_CHECKPOINT`) to a folder with
# `config.json` and the weights (anything saved with `save_pretrained`), and `DATA` to labelled data: a CSV path with
# `text` and `label` columns (and optionally a `split` column with `train` / `test`), a DataFrame, or
# `{"train": ..., "held_out": ...}`. The base model is read from the checkpoint's config unless you set
# `BASE_MODEL`. By default the notebook diagnoses the LNSR checkpoint (seed 1) that `make demo` keeps, and without one
# the stored diagnosis of a committed LNSR run; the first code cell says which. A checkpoint folder inside a run
# store must match its run's record file for file, or it is refused with the reason.

# %% [markdown]
# **Quick setting.** With the environment variable `LNSR_VIZ_QUICK=1` (the tests set it) every notebook uses tiny
# random models and toy sentences and finishes in seconds; the numbers then mean nothing, only the mechanics are
# exercised. Leave it unset for the real thing: the packaged all-MiniLM-L6-v2 and the VADER sentiment data, both
# offline (`make assets` fetched them).

# %%
import os

from lnsr_viz.viz.dashboards import DriftDashboard, ProjectionDashboard
from lnsr_viz.viz.evidence import attribution_dashboard, diagnosis_evidence, evidence_projections
from lnsr_viz.viz.figures import plot_stability_curves
from lnsr_viz.viz.notebook_figures import wrap_title
from lnsr_viz.viz.reports import diagnosis_report
from lnsr_viz.viz.runtime import check_checkpoint, reports_dir, setup_notebook

QUICK = setup_notebook()

CHECKPOINT = os.environ.get("LNSR_VIZ_CHECKPOINT")   # a folder with config.json, or None: make demo's, else stored
BASE_MODEL = None                                     # None: read from the checkpoint's config
DATA = None                                           # None: the data the checkpoint was trained on

# a checkpoint (given, or kept by `make demo`) is diagnosed live; without one a committed run's stored diagnosis
evidence = diagnosis_evidence(CHECKPOINT, base_model=BASE_MODEL, data=DATA)
diagnosis = evidence.diagnosis
print("diagnosis:", evidence.origin)

# %% [markdown]
# A wrong path does not end in a traceback from deep inside transformers; it says what to set:

# %%
try:
    check_checkpoint("/no/such/checkpoint")
except FileNotFoundError as err:
    print(err)
    assert "Set CHECKPOINT" in str(err)

# %% [markdown]
# ## 1 · The diagnosis

# %%
print(diagnosis.summary())
keys = [f.key for f in diagnosis.findings]
assert keys == ["generalisation_gap", "loss_gap", "stability_vs_base", "drift", "calibration"], keys
assert diagnosis.profile.groupby("model")["layer"].min().eq(0).all()   # both curves start at the injection layer

# %%
diagnosis.metrics.pivot_table(index="metric", columns="split", values="value", sort=False).round(4)

# %% [markdown]
# ## 2 · Stability of the model vs its base
#
# 5% relative Gaussian noise at the embedding output; a fine-tuned curve above the base at the top layers means
# its top layers are less stable than the pre-trained ones.

# %%
wrap_title(plot_stability_curves(diagnosis.profile, injection_layer=0, color="model"))

# %% [markdown]
# ## 3 · How far fine-tuning moved each layer
#
# Colour: how far each layer moved (1 − CKA for the similarities, the distance otherwise), scaled within each metric
# so that rows on different scales are comparable; the cell text is the raw value. Choose metrics in the dashboard.

# %%
drift = DriftDashboard(diagnosis.drift)
assert drift.error is None, drift.error
drift

# %% [markdown]
# ## 4 · Where the sentences sit: a joint projection of base and model
#
# The sentence representations (mean over real tokens) of both models are projected together (PCA: linear,
# deterministic, distance-faithful along its axes), so the two panels share one coordinate system. Colour by label
# to see whether fine-tuning separated the classes, or by domain to see where out-of-domain sentences land. Hover a
# point to read its sentence. A stored run kept its top layer's representations of 32 sentences per domain; a live
# diagnosis projects the embedding output and the last layer of 100 sentences per set. For UMAP (neighbourhoods
# rather than distances) write `evidence_projections(evidence, method="umap")`: about 30 s more on two cores.

# %%
projections = evidence_projections(evidence)   # one joint projection per layer
projection = ProjectionDashboard(projections)
assert projection.error is None, projection.error
projection

# %% [markdown]
# ## 5 · Which words decide? Attributions of base and model side by side
#
# Integrated Gradients on the word embeddings: each token's contribution to the predicted class's probability,
# for the base (with its untrained head) and the fine-tuned model. Pick a sentence (a stored run kept the
# attributions of 8 in-domain sentences).

# %%
attributions = attribution_dashboard(evidence)
assert attributions.error is None, attributions.error
attributions

# %% [markdown]
# ## 6 · The report

# %%
report_path = diagnosis_report(diagnosis).save(reports_dir() / "04_diagnosis.html")
assert report_path.stat().st_size > 50_000
print(report_path)

# %% [markdown]
# ## 7 · Does each finding predict over-fitting? Its track record, beside WeightWatcher
#
# *(Section added for issue 18; it reads only the committed run stores.)* Every committed study-v2 run stored the
# numbers behind each finding and WeightWatcher's metrics of its weights, next to what happened to the model. The
# track record puts them side by side: Spearman's rho with the outcome each number claims to predict and ROC AUC
# for "over-fitted" (a held-out accuracy drop of at least 0.35) vs not, with bootstrap 95% CIs and Holm-adjusted
# p-values. The population mixes training-set sizes, and the size moves both the outcome and most numbers, so the
# rho and AUC are measured *within* each size and combined (`record.within`); the pooled ones are in the `pooled_*`
# columns, and each size on its own in `record.by_group`. `diagnose` words a warning whose record does not beat
# chance as descriptive. The full write-up is `docs/diagnose.md` (`python -m lnsr_viz track-record
# results/study-v2 results/diagnose-population results/study-v2-pilot/budget-2000x300`).

# %%
from lnsr_viz.experiments.track_record import population_table, track_record  # noqa: E402 (this section's own)
from lnsr_viz.viz.runtime import study_dir  # noqa: E402

track_stores = [study_dir("study-v2")]
for extra in ("diagnose-population", "study-v2-pilot/budget-2000x300"):   # the over-fit arm; the 300-step pilot
    if (study_dir("study-v2").parent / extra / "runs").is_dir():
        track_stores.append(study_dir(extra))
record = track_record(population_table(track_stores), n_boot=200 if QUICK else 2000)
print(f"{record.n_models} models from {', '.join(str(s) for s in track_stores)}")
assert record.n_models >= 20
print(f"measured within each {record.within}" if record.within else "pooled over every model")
record.table[["predictor", "source", "outcome", "n", "rho", "rho_ci_low", "rho_ci_high", "auc", "auc_ci_low",
              "auc_ci_high", "auc_p_holm", "verdict"]
             + (["pooled_verdict"] if record.within else [])].round(3)

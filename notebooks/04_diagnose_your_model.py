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
# **Time on a laptop CPU:** under a minute in the full setting (MiniLM, 500 training and 600 held-out movie
# snippets, UMAP of 400 sentences: measured 39 s on two cores); about 10 s in the quick setting.
#
# **Your own model:** set `CHECKPOINT` below (or the environment variable `LNSR_VIZ_CHECKPOINT`) to a folder with
# `config.json` and the weights (anything saved with `save_pretrained`), and `DATA` to labelled data: a CSV path with
# `text` and `label` columns (and optionally a `split` column with `train` / `test`), a DataFrame, or
# `{"train": ..., "held_out": ...}`. The base model is read from the checkpoint's config unless you set
# `BASE_MODEL`. By default the notebook diagnoses an LNSR checkpoint stored by notebook 02.

# %% [markdown]
# **Quick setting.** With the environment variable `LNSR_VIZ_QUICK=1` (the tests set it) every notebook uses tiny
# random models and toy sentences and finishes in seconds; the numbers then mean nothing, only the mechanics are
# exercised. Leave it unset for the real thing: the packaged all-MiniLM-L6-v2 and the VADER sentiment data, both
# offline (`make assets` fetched them).

# %%
import os

from lnsr_viz import load_model
from lnsr_viz.experiments.diagnose import diagnose
from lnsr_viz.viz.dashboards import AttributionDashboard, DriftDashboard, ProjectionDashboard
from lnsr_viz.viz.figures import plot_stability_curves
from lnsr_viz.viz.notebook_figures import wrap_title
from lnsr_viz.viz.reports import diagnosis_report
from lnsr_viz.viz.runtime import (
    check_checkpoint,
    comparison_settings,
    default_checkpoint,
    diagnosis_data,
    diagnosis_projections,
    reports_dir,
    setup_notebook,
)

QUICK = setup_notebook()

CHECKPOINT = os.environ.get("LNSR_VIZ_CHECKPOINT")   # a folder with config.json, or None for a stored one
BASE_MODEL = None                                     # None: read from the checkpoint's config
DATA = None                                           # None: the data the stored checkpoint was trained on

if CHECKPOINT is None:   # an LNSR checkpoint stored by notebook 02; its base is the comparison's model
    CHECKPOINT = default_checkpoint("lnsr")
    BASE_MODEL = BASE_MODEL or comparison_settings()["model"]
CHECKPOINT = check_checkpoint(CHECKPOINT)   # a missing or wrong folder stops here with what to set
print("diagnosing", CHECKPOINT)

# %% [markdown]
# A wrong path does not end in a traceback from deep inside transformers; it says what to set:

# %%
try:
    check_checkpoint("/no/such/checkpoint")
except FileNotFoundError as err:
    print(err)
    assert "Set CHECKPOINT" in str(err)

# %%
# DATA None: the stored checkpoint's own protocol (its training set, held-out in-domain and out-of-domain sets)
DATA, IN_DOMAIN, OOD = diagnosis_data(DATA)

# %% [markdown]
# ## 1 · The diagnosis

# %%
diagnosis = diagnose(CHECKPOINT, BASE_MODEL, DATA, max_examples=200 if QUICK else 600,
                     probe_n=16 if QUICK else 64, n_drift=32 if QUICK else 300, max_length=64)
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
# The sentence representations (mean over real tokens) of both models are projected together (UMAP in the full
# setting, PCA in the quick one), so the two panels share one coordinate system. Colour by label to see whether
# fine-tuning separated the classes, or by domain to see where out-of-domain sentences land. Hover a point to read
# its sentence.

# %%
model, tokenizer = load_model(CHECKPOINT)
base, base_tokenizer = load_model(diagnosis.settings["base_model"])
projections = diagnosis_projections(   # one joint projection per layer: the embedding output and the last layer
    (base, base_tokenizer), (model, tokenizer), DATA["held_out"], OOD, in_domain=IN_DOMAIN,
    n_per_set=24 if QUICK else 100, layers=(0, -1), method="pca" if QUICK else "umap", max_length=64)
projection = ProjectionDashboard(projections)
assert projection.error is None, projection.error
projection

# %% [markdown]
# ## 5 · Which words decide? Attributions of base and model side by side
#
# Integrated Gradients on the word embeddings: each token's contribution to the predicted class's probability,
# for the base (with its untrained head) and the fine-tuned model. Pick a sentence.

# %%
sentences = list(DATA["held_out"].texts[:6])
attributions = AttributionDashboard((base, base_tokenizer), (model, tokenizer), sentences, names=("base", "model"),
                                    n_steps=16 if QUICK else 32)
assert attributions.error is None, attributions.error
attributions

# %% [markdown]
# ## 6 · The report

# %%
report_path = diagnosis_report(diagnosis).save(reports_dir() / "04_diagnosis.html")
assert report_path.stat().st_size > 50_000
print(report_path)

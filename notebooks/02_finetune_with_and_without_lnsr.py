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
# # 02 · Fine-tuning with and without LNSR
#
# **What you will learn**
#
# * how to run (or load) the comparison: each method fine-tuned with several seeds on the same data, evaluated
#   in-domain (movie snippets) and out-of-domain (Amazon reviews, tweets, NYT editorials);
# * how stable each fine-tuned model is (the paper's Figure 1 with confidence bands over seeds);
# * in-domain and out-of-domain accuracy with one dot per seed, training curves with the regulariser's share;
# * whether a difference is real: paired comparisons over seeds with confidence intervals and a verdict in words;
# * how far fine-tuning moved each layer (representation drift);
# * how to write the whole thing as a self-contained HTML report.
#
# **Time on a laptop CPU:** seconds; nothing is trained. The notebook opens on stored runs: the demo's own store
# (`results/demo`, after `make demo`) when it holds every run, else the committed study's runs of exactly the demo's
# setting (`results/study`: vanilla and LNSR, 500 examples, 4 epochs, seeds 1-3, the same run keys). The first cell
# below says which, what is missing and how long training it would take; set `TRAIN = True` to train it (the six
# fine-tunings took 23 to 55 minutes on two CPU cores). Quick setting: about 10 s.

# %% [markdown]
# **Quick setting.** With the environment variable `LNSR_VIZ_QUICK=1` (the tests set it) every notebook uses tiny
# random models and toy sentences and finishes in seconds; the numbers then mean nothing, only the mechanics are
# exercised. Leave it unset for the real thing: the packaged all-MiniLM-L6-v2 and the VADER sentiment data, both
# offline (`make assets` fetched them).

# %%
from IPython.display import display

from lnsr_viz.viz.dashboards import DriftDashboard, MetricsDashboard, StabilityCurvesDashboard, TrainingCurvesDashboard
from lnsr_viz.viz.evidence import comparison_drift, comparison_evidence
from lnsr_viz.viz.figures import plot_paired_differences
from lnsr_viz.viz.notebook_figures import wrap_title
from lnsr_viz.viz.reports import comparison_report
from lnsr_viz.viz.runtime import comparison_settings, reports_dir, setup_notebook

QUICK = setup_notebook()
SETTINGS = comparison_settings()
TRAIN = False   # True: train the runs this setting's store lacks (minutes to an hour on a CPU) instead of loading
SETTINGS

# %% [markdown]
# ## 1 · Load (or run) the comparison
#
# Every run is keyed by a hash of its full configuration in a run store, so a stored run is found by its setting.
# `comparison_evidence` looks in this setting's store first and, where runs are missing, in the committed study;
# it never trains unless you set `TRAIN = True` above (then `lnsr_viz.compare` trains what is missing, keeps the
# seed-1 models, and an interrupted run resumes where it stopped). The note says where the runs came from.

# %%
evidence = comparison_evidence(SETTINGS, train=TRAIN)
print(evidence.note)
assert evidence.result is not None, "no stored runs of this setting: set TRAIN = True to train them"
result = evidence.result
SETTINGS = {**SETTINGS, "seeds": tuple(result.config["seeds"])}
IN_DOMAIN = result.config["data"]["in_domain"]
result.runs

# %%
# Checks: every method x seed is there, plus the pre-trained reference.
expected = {(m, s) for m in SETTINGS["methods"] for s in SETTINGS["seeds"]}
tuned = result.runs.dropna(subset=["seed"])
assert set(zip(tuned["method"], tuned["seed"].astype(int))) >= expected
assert "pretrained" in set(result.runs["method"])

# %% [markdown]
# ## 2 · Stability of the fine-tuned models (Figure 1 style)
#
# 5% relative Gaussian noise at the embedding output; the curves show the relative change at every higher layer.
# The bands are 95% confidence intervals over seeds (over sentences for the single pre-trained model). A lower
# curve at the top layers means a more noise-stable model. Use the controls to switch the metric, the lines or a
# log axis.

# %%
stability = StabilityCurvesDashboard(result.profile, color="model")
prof = result.profile
assert (prof.groupby(["run_id", "injection_layer"])["layer"].min()
        == prof.groupby(["run_id", "injection_layer"])["injection_layer"].first()).all()   # curves start at k
assert (abs(prof.loc[prof["layer"] == prof["injection_layer"], "change_rel"] - 0.05) < 1e-3).all()
assert stability.error is None, stability.error
stability

# %% [markdown]
# ## 3 · Accuracy in and out of domain
#
# One dot per seed; the diamond is the mean with its 95% CI over seeds (from the summary table). The in-domain set
# is first; the others are out-of-domain. Switch the metric to ROC AUC, macro-F1, NLL or ECE with the dropdown.

# %%
accuracy = MetricsDashboard(result.metrics, summary=result.summary, in_domain=IN_DOMAIN)
acc = result.metrics[result.metrics["metric"] == "accuracy"]["value"]
assert acc.between(0, 1).all() and accuracy.error is None
accuracy

# %% [markdown]
# ## 4 · Training curves and the regulariser's share
#
# Left: training loss per epoch, split into the task loss and the regulariser's share of it (its weight times its
# term; zero for vanilla), so the two parts add up to the total. Right: training vs validation accuracy. Thin lines
# are seeds, thick lines their mean. Switch the view to the generalisation gap (train minus validation accuracy).

# %%
training = TrainingCurvesDashboard(result.history)
reg = result.history.groupby("method")["train_reg_loss"].max()
assert reg.get("vanilla", 0) == 0 or reg.isna().get("vanilla", True)   # vanilla has no regulariser
assert reg["lnsr"] > 0                                                # LNSR's penalty is active
training

# %% [markdown]
# ## 5 · Is the difference real? Paired statistics over seeds
#
# Each LNSR run is paired with the vanilla run of the same seed (same head initialisation, same data order), and
# the difference is summarised with a 95% t-interval, a sign test and a permutation test. An interval that
# includes zero means **within noise**: the data do not distinguish the methods there.

# %%
paired = result.paired[result.paired["metric"].isin(["accuracy", "roc_auc"])]
for row in paired.itertuples():
    print(f"{row.domain:>8} {row.metric:>8}: {row.verdict}")
wrap_title(plot_paired_differences(result.paired, metric="accuracy", in_domain=IN_DOMAIN))

# %% [markdown]
# ## 6 · How far fine-tuning moved each layer
#
# Representation drift of each fine-tuned model from the pre-trained model, on the 64 in-domain probe sentences:
# linear CKA (and its debiased version) of the sentence representations, cosine drift of the token and sentence
# states, and the weight distance per block. Fine-tuning usually moves the top layers most; a method that keeps the
# upper layers stable under noise need not keep them close to the pre-trained ones. Every run stores its drift on
# the probe sentences (`drift.csv`), so no checkpoint is needed; shown is the mean over seeds (the note says which
# runs it comes from).

# %%
drift_table, drift_note = comparison_drift(evidence)
print(drift_note)
if len(drift_table):
    drift = DriftDashboard(drift_table)
    assert drift.error is None, drift.error
    display(drift)

# %% [markdown]
# ## 7 · The report
#
# Everything above, as one self-contained interactive HTML file (works offline, plotly.js embedded once).

# %%
report_path = comparison_report(result).save(reports_dir() / "02_finetune_with_and_without_lnsr.html")
assert report_path.stat().st_size > 50_000
print(report_path)

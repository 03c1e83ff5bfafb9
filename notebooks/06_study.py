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
# # 06 · The study: where LNSR helps and where it does not
#
# **What you will learn**
#
# * what the committed study (`configs/study.yaml`: vanilla and seven LNSR settings, 100 and 500 training
#   examples, 5 seeds each) says about the paper's four claims: (a) lower top-layer noise sensitivity, (b) higher
#   in-domain accuracy with few examples, (c) lower variance over seeds, (d) better out-of-domain accuracy;
# * how the settings were chosen without peeking (validation accuracy only), and what every setting did;
# * whether a model that is less sensitive to noise is also better out of domain, run by run;
# * how to run the same study on your own model and data.
#
# **Time on a laptop CPU:** seconds. Nothing is trained here: the notebook reads the committed run store
# `results/study` (the sweep itself took the CPU hours stated in `docs/study.md`).
#
# This notebook reads the same runs in the quick setting: there is nothing to make quicker.

# %%
from IPython.display import Markdown, display

from lnsr_viz.experiments.study import load_study
from lnsr_viz.viz.dashboards import FigureDashboard
from lnsr_viz.viz.runtime import setup_notebook, study_config, study_dir, study_markdown, study_scatter_choices
from lnsr_viz.viz.study_figures import claims_view, plot_sensitivity_vs_ood

QUICK = setup_notebook()
STUDY = study_dir()
study = load_study(STUDY, config=study_config())
cost = study.cost
print(f"{cost['runs']} fine-tuning runs in {STUDY}; their own wall-clock times sum to "
      f"{cost['run_seconds_sum'] / 3600:.2f} h")

# %% [markdown]
# ## 1 · The selection rule
#
# Per training-set size, the LNSR setting with the best mean **validation** accuracy (last epoch, over seeds) is
# chosen; test and out-of-domain numbers are read only afterwards (`lnsr_viz.experiments.sweep.select_settings`).

# %%
study.chosen

# %% [markdown]
# ## 2 · The four claims
#
# Each row compares the chosen LNSR setting (`role` = chosen; a setting that tied with it on validation accuracy
# and lost the tie-break is shown too, `role` = tied) with vanilla, seed by seed. `effect` is the mean paired difference
# (LNSR - vanilla) with its 95% CI for (a), (b) and (d), and the ratio of the standard deviations over seeds for (c).
# *Supported* / *contradicted*: the CI excludes zero in / against the claimed direction; otherwise *not shown*.

# %%
claims_view(study.claims)  # the verdict first; the full table, with the means, is study.claims

# %% [markdown]
# ## 3 · Noise sensitivity against out-of-domain accuracy, run by run
#
# One marker per run: colour = setting, shape = training-set size; crosses mark runs whose representations
# collapsed. Choose other columns of the runs table for either axis.

# %%
scatter = FigureDashboard(plot_sensitivity_vs_ood, study.runs, choices=study_scatter_choices(study.runs))
assert scatter.error is None, scatter.error
scatter

# %% [markdown]
# ## 4 · Every setting, and the label balance of the evaluation sets

# %%
study.settings.round(4)

# %%
study.balance

# %% [markdown]
# ## 5 · The write-up
#
# `docs/study.md` is generated from the same store by `python -m lnsr_viz study configs/study.yaml`; it is shown
# below as committed. To run the study on your own model or data, copy `configs/study.yaml`, change `model`, `data`
# and `ood`, and run `python -m lnsr_viz sweep YOUR.yaml` (add `--shard 1/2` and `2/2` to use two processes or
# machines, then `merge`), then `python -m lnsr_viz study YOUR.yaml --out your-study.md`.

# %%
write_up = study_markdown()   # docs/study.md, its figures embedded (they show wherever the lab is rooted)
if write_up is not None:
    display(Markdown(write_up))
else:
    print("docs/study.md is not there yet: run `python -m lnsr_viz study configs/study.yaml`")

# %% [markdown]
# ## 6 · Study v2 (in progress): every rival, a step budget, every run's analysis stored
#
# `configs/study-v2-core.yaml` trains vanilla, LNSR, L2-SP, Mixout and SMART under one step-budget protocol with
# the best validation step kept, and stores every run's own analysis (theory quantities, diagnosis numbers,
# attributions, WeightWatcher metrics, representations). The sweep is resumable and its finished runs are committed
# as they complete, so what follows shows whatever part of it is stored; `docs/study-v2.md` is its write-up.

# %%
from lnsr_viz.experiments.study import study_completeness  # noqa: E402
from lnsr_viz.experiments.sweep import load_sweep_config  # noqa: E402
from lnsr_viz.viz.study_figures import plot_learning_curves  # noqa: E402

v2_config = study_config("study-v2-core")
v2 = load_study(study_dir("study-v2"), config=v2_config)
study_completeness(v2.runs, load_sweep_config(v2_config))

# %% [markdown]
# Did vanilla's validation accuracy reach its plateau within the budget at each size (the rule is in the write-up)?

# %%
display(plot_learning_curves(v2.curves, methods=("vanilla",)))
v2.plateau[v2.plateau["method"] == "vanilla"].round(4)

# %% [markdown]
# Every method's chosen setting against vanilla (paired by seed; p adjusted by Holm within each size), and the
# relation of each per-run measure with in-domain and out-of-domain accuracy across runs.

# %%
keep = ["train_size", "method", "setting", "n_seeds", "accuracy_mean", "accuracy_diff", "accuracy_p_adj",
        "ood_accuracy_mean", "ood_accuracy_diff", "ood_accuracy_p_adj", "cost_ratio", "verdict"]
v2.methods[keep].round(4)

# %%
v2.relations.round(3)

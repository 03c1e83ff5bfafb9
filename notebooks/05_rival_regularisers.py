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
# # 05 · Rival regularisers side by side
#
# **What you will learn**
#
# * how LNSR compares with the other fine-tuning regularisers on the same data, seeds and budget: L2-SP, Mixout,
#   SMART, R3F, R-Drop, NoisyTune, HyPe and Child-Tuning, against vanilla fine-tuning;
# * each method's stability curve, accuracy in and out of domain, and paired differences from vanilla with
#   verdicts in plain words;
# * what each method costs in time;
# * that with a few seeds most differences are **within noise**, and how to read that honestly.
#
# **Time on a laptop CPU:** seconds to a minute; nothing is trained. The notebook reads the committed study v2
# (`results/study-v2`: every method under one step-budget protocol, 5 seeds, its settings fixed in advance) and
# shows each method's chosen setting (best mean validation accuracy) at the largest training size at which every
# method has at least 3 stored seeds (`methods_evidence(train_size=...)` picks another).
# The first cell says which methods and sizes are not in the store yet and how long training them would take;
# `TRAIN = True` trains the ones you name (hours on a CPU). The quick setting reads the same store.

# %% [markdown]
# **Quick setting.** With the environment variable `LNSR_VIZ_QUICK=1` (the tests set it) every notebook uses tiny
# random models and toy sentences and finishes in seconds; the numbers then mean nothing, only the mechanics are
# exercised. Leave it unset for the real thing: the packaged all-MiniLM-L6-v2 and the VADER sentiment data, both
# offline (`make assets` fetched them).

# %%
from IPython.display import display

from lnsr_viz.methods import METHODS
from lnsr_viz.viz.dashboards import MetricsDashboard, StabilityCurvesDashboard, TrainingCurvesDashboard
from lnsr_viz.viz.evidence import methods_evidence, train_missing_methods
from lnsr_viz.viz.figures import plot_paired_differences
from lnsr_viz.viz.notebook_figures import plot_run_costs, plot_step_costs, wrap_title
from lnsr_viz.viz.reports import comparison_report
from lnsr_viz.viz.runtime import benchmark_table, reports_dir, run_cost_summary, setup_notebook

QUICK = setup_notebook()
print("methods in lnsr_viz:", ", ".join(METHODS))
TRAIN = False               # True: train TRAIN_METHODS at TRAIN_SIZES (hours on a CPU) into results/study-v2-mine
TRAIN_METHODS = ["smart"]   # e.g. a rival the store lacks
TRAIN_SIZES = [100]

# %% [markdown]
# ## 1 · Load every method from the committed study
#
# Same data, seeds, step budget and learning rate for every method; each method's settings were fixed in
# `configs/study-v2.yaml` before any run, and the one shown per method is chosen on validation accuracy only. The
# note says what is stored, what is not yet, and what training the rest would cost.

# %%
STORE = train_missing_methods(TRAIN_METHODS, TRAIN_SIZES) if TRAIN else None   # None: the committed study v2
evidence = methods_evidence(STORE)
print(evidence.note)
result = evidence.result
IN_DOMAIN = result.config["data"]["in_domain"]
assert "vanilla" in set(result.runs["method"]) and len(result.paired)
evidence.missing[["method", "setting", "train_size", "stored", "planned", "estimated_hours"]]

# %% [markdown]
# Every method's chosen setting against vanilla at this size (paired over seeds, t-test with Holm's correction
# over the methods; cost as the step-time ratio to vanilla from `make bench`):

# %%
evidence.study.methods[evidence.study.methods["train_size"] == evidence.train_size].round(4)

# %% [markdown]
# ## 2 · What each method costs
#
# Wall-clock seconds per stored run (fine-tuning with its evaluations, the stability probe and the stored analysis),
# one dot per seed, as measured when the run was made (two CPU cores shared by two sweep shards). Methods that add
# a second forward pass (LNSR, SMART, R3F, R-Drop) cost more than those that only change the weights, the
# gradients or the hidden states of the one pass (L2-SP, Mixout, NoisyTune, HyPe, Child-Tuning).

# %%
runs = result.runs.dropna(subset=["seconds"])   # the pre-trained reference row has no training time
run_cost_summary(runs)

# %%
wrap_title(plot_run_costs(runs))

# %% [markdown]
# Wall-clock seconds of whole runs depend on what else the machine was doing. `benchmarks/bench_methods.py`
# measures the cost of one training step of each method on MiniLM, interleaved in rounds so that a shared machine's
# load hits every method alike, and reports it as a ratio to vanilla, with the peak memory a step adds. If its
# results file is present it is shown here (run `python benchmarks/bench_methods.py` to make or refresh it).

# %%
bench, bench_info = benchmark_table("bench_methods")
if len(bench):
    machine = bench_info.get("machine", {})
    print(f"measured on {machine.get('cpu')} ({machine.get('cores')} cores, torch threads "
          f"{machine.get('torch_threads')}), settings {bench_info.get('settings')}")
    display(wrap_title(plot_step_costs(bench)))
else:
    print(f"no benchmark results at {bench_info['path']}: run `python benchmarks/bench_methods.py` to measure")

# %% [markdown]
# ## 3 · Stability of every method

# %%
stability = StabilityCurvesDashboard(result.profile, color="model")
assert stability.error is None, stability.error
stability

# %% [markdown]
# ## 4 · Accuracy in and out of domain

# %%
accuracy = MetricsDashboard(result.metrics, summary=result.summary, in_domain=IN_DOMAIN)
assert accuracy.error is None, accuracy.error
accuracy

# %% [markdown]
# ## 5 · Paired differences from vanilla
#
# Every method minus vanilla, seed by seed, with 95% CIs; hollow markers are within noise.

# %%
wrap_title(plot_paired_differences(result.paired, metric="accuracy", in_domain=IN_DOMAIN))

# %%
verdicts = result.paired[result.paired["metric"] == "accuracy"][["method", "domain", "mean_diff", "ci_low",
                                                                 "ci_high", "verdict"]]
verdicts.round(4)

# %% [markdown]
# ## 6 · Training curves

# %%
training = TrainingCurvesDashboard(result.history)
assert training.error is None, training.error
training

# %%
report_path = comparison_report(result, title="lnsr_viz: LNSR and its rivals").save(
    reports_dir() / "05_rival_regularisers.html")
print(report_path)

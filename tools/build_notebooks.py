"""Write the tutorial notebooks in ``notebooks/`` from the cell lists below (outputs stripped, stable cell ids).

Why a generator: the notebooks are the product's face, so they must be reproducible and reviewable as plain Python.
Every notebook is written with nbformat, without outputs or execution counts, with deterministic cell ids; running
this script twice gives byte-identical files, and ``--check`` fails if a committed notebook differs from what this
script would write (the test suite runs it).

Usage::

    python tools/build_notebooks.py            # (re)write notebooks/*.ipynb
    python tools/build_notebooks.py --check    # exit 1 if any notebook is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

Cell = tuple[str, str]  # ("md" | "code", source)


def md(text: str) -> Cell:
    return ("md", text.strip("\n"))


def code(text: str) -> Cell:
    return ("code", text.strip("\n"))


QUICK_NOTE = (
    "**Quick setting.** With the environment variable `LNSR_VIZ_QUICK=1` (the tests set it) every notebook uses "
    "tiny random models and toy sentences and finishes in seconds; the numbers then mean nothing, only the "
    "mechanics are exercised. Leave it unset for the real thing: the packaged all-MiniLM-L6-v2 and the VADER "
    "sentiment data, both offline (`make assets` fetched them)."
)

# ------------------------------------------------------------------------------------------------------------------
# 01

NB01: list[Cell] = [
    md("""
# 01 · Noise propagation: inject noise into a pre-trained model and watch it travel

**What you will learn**

* how the stability probe works: add noise to the hidden states of one layer *k*, run the layers above it again,
  and measure how much every higher layer's output changes;
* what the change looks like layer by layer (the paper's Figure 1), and where you inject it matters;
* Gaussian noise vs *in-manifold* noise of exactly the same size: the direction of a perturbation matters;
* when the response to noise is linear in its size (the small-noise regime the theory of notebook 03 is about);
* how to explore all of this live with the noise-propagation dashboard, and how to export a figure.

**Time on a laptop CPU:** about half a minute in the full setting (MiniLM, 32 movie snippets: measured 30 s on
two cores, 2.5 minutes when they were shared with other jobs), about 10 s in the quick setting. Nothing is
trained here; notebook 02 fine-tunes.
"""),
    md(QUICK_NOTE),
    code("""
import pandas as pd

from lnsr_viz import StabilityProbe, plot_profile_heatmap, plot_stability_curves, save_figure
from lnsr_viz.viz.notebook_figures import plot_noise_types, plot_scale_response, wrap_title
from lnsr_viz.viz.dashboards import (
    NoiseExplorer,
    StabilityCurvesDashboard,
    explorer_models,
    probe_sentences,
    reports_dir,
    results_dir,
    setup_notebook,
    stored_table,
)

QUICK = setup_notebook()
N_SENTENCES = 8 if QUICK else 32   # sentences to probe
N_DRAWS = 2 if QUICK else 4        # noise draws per sentence
"""),
    md("""
## 1 · A model and a few sentences

`explorer_models()` gives the packaged pre-trained **all-MiniLM-L6-v2** (a 6-block BERT encoder, hidden size 384)
and, for contrast, a tiny 2-block randomly initialised BERT. The sentences are the first movie snippets of the
VADER data (toy sentences in the quick setting).
"""),
    code("""
models = explorer_models()
LABEL = next(iter(models))
model, tokenizer = models[LABEL]
texts = probe_sentences(N_SENTENCES)
print(f"model: {LABEL}; {len(texts)} sentences, e.g.:")
for t in texts[:3]:
    print("  -", t)
"""),
    md("""
## 2 · One probe: 5% Gaussian noise at the embedding output

Layer 0 is the embedding output (the input of the first block); layer *l* ≥ 1 is the output of block *l*. The
probe adds to every real token *t* of layer *k* = 0 a random vector whose norm is exactly 5% of that token's norm
(`scale=0.05`, `scale_kind="relative"`, the paper's Figure 1 setting), replays blocks 1…L from the noisy state,
and reports for every layer the mean over tokens of the relative change ‖h̃ₗ − hₗ‖ / ‖hₗ‖ (and the absolute L2
change), averaged over noise draws, with a 95% confidence interval over sentences.
"""),
    code("""
probe = StabilityProbe("gaussian", scale=0.05, injection_layers=0, n_draws=N_DRAWS, progress=False)
profile = probe.run(model, texts, tokenizer=tokenizer, label=LABEL)
profile[["layer", "layer_name", "change_rel", "change_rel_ci_low", "change_rel_ci_high", "change_l2"]].round(4)
"""),
    code("""
# Checks on the result: the curve starts at the injection layer, and there the relative change is exactly the
# requested 5% (the noise is scaled per token); no layer is left out.
assert profile["injection_layer"].unique().tolist() == [0]
assert profile["layer"].tolist() == list(range(0, profile["layer"].max() + 1))
assert abs(profile.loc[profile["layer"] == 0, "change_rel"].item() - 0.05) < 1e-4
"""),
    code("""
fig_curve = wrap_title(plot_stability_curves(profile, injection_layer=0))   # wrap_title: no cut-off titles
fig_curve
"""),
    md("""
**Reading the curve.** The relative change starts at 5% where the noise enters. Each block then either damps it
(the curve falls) or amplifies it (the curve rises). In the full setting, pre-trained MiniLM's first block damps
random noise to about 3% of the norm, the middle blocks keep it there, and the last block amplifies it again.
Fine-tuning moves the top layers most, and that is where LNSR (notebook 02) penalises the change.

**Sanity check: zero noise gives zero change.** With `scale=0` the replay must reproduce the clean pass exactly,
at every layer and for any injection layer. This guards the probe's replay machinery.
"""),
    code("""
zero = StabilityProbe("gaussian", scale=0.0, injection_layers=[0, 1], n_draws=1, progress=False).run(
    model, texts, tokenizer=tokenizer, label=LABEL)
assert zero["change_l2"].abs().max() < 1e-5, zero["change_l2"].abs().max()
first_layer = zero.groupby("injection_layer")["layer"].min()
assert (first_layer.index == first_layer.values).all()   # each curve starts at its injection layer
print(f"largest change with zero noise: {zero['change_l2'].abs().max():.2e} (hidden-state units)")
"""),
    md("""
## 3 · Where you inject matters: the full profile

Injecting at every layer *k* = 0…L gives a triangle: row *k* is the curve of noise injected at layer *k*. The
probe reuses one clean pass for all rows and replays only the blocks above *k*.
"""),
    code("""
full = StabilityProbe("gaussian", scale=0.05, n_draws=N_DRAWS, progress=False).run(
    model, texts, tokenizer=tokenizer, label=LABEL)
starts = full.groupby("injection_layer")["layer"].min()
assert (starts.index == starts.values).all()   # every curve starts at its own injection layer
wrap_title(plot_profile_heatmap(full))
"""),
    md("""
## 4 · Gaussian vs in-manifold noise of the same size

Gaussian noise points in a uniformly random direction of the 384-dimensional space. *In-manifold* noise is
restricted to the top principal directions of the batch's token states (the directions in which real data vary)
and then rescaled to exactly the same per-token norm, so the two differ **only in direction**. The layers were
trained on data that vary along the manifold: in the full setting MiniLM damps random directions (about 3% left at
the last layer) but passes on more of the in-manifold noise (about 4%). A model is most sensitive exactly along
the directions in which real inputs differ.
"""),
    code("""
noise_profiles = pd.concat([
    StabilityProbe(noise, scale=0.05, injection_layers=0, n_draws=N_DRAWS, progress=False).run(
        model, texts, tokenizer=tokenizer, label=LABEL)
    for noise in ("gaussian", "in_manifold")
], ignore_index=True)
at_k = noise_profiles[noise_profiles["layer"] == 0].set_index("noise")["change_rel"]
assert (abs(at_k - 0.05) < 1e-4).all()          # same size where injected: only the direction differs
top = noise_profiles[noise_profiles["layer"] == noise_profiles["layer"].max()].set_index("noise")["change_rel"]
print("relative change at the last layer:", top.round(4).to_dict())
wrap_title(plot_noise_types(noise_profiles))
"""),
    md("""
## 5 · How the change grows with the noise size

For small noise *e* the change of layer *l* is *J e* to first order (*J* the Jacobian of the blocks above *k*), so
it grows **linearly** with the scale: on log-log axes the measured points follow the dotted line of slope 1.
Where they leave it, the network responds non-linearly, and a first-order (Jacobian) view of stability stops
describing the model. In the full setting MiniLM stays linear for Gaussian noise up to 50% of the token norm, but
in-manifold noise leaves the line above about 10%. Notebook 03 builds on this.
"""),
    code("""
SCALES = (0.01, 0.05, 0.2) if QUICK else (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
sweep = pd.concat([
    StabilityProbe(noise, scale=s, injection_layers=0, n_draws=N_DRAWS, progress=False).run(
        model, texts, tokenizer=tokenizer, label=LABEL)
    for noise in ("gaussian", "in_manifold") for s in SCALES
], ignore_index=True)
assert sorted(sweep["scale"].unique()) == sorted(SCALES)
wrap_title(plot_scale_response(sweep))
"""),
    md("""
## 6 · The paper's Figure 1: pre-trained vs fine-tuned

Figure 1 of Hua et al. compares these curves for the pre-trained model and for models fine-tuned with and
without LNSR. The fine-tuned models come from the run store of notebook 02 (or `make demo`, which uses the same
store). If it is empty, run notebook 02 first; until then only the pre-trained curve is shown.
"""),
    code("""
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
"""),
    md("""
## 7 · Explore it live

The dashboard below re-runs the probe whenever you move a control: the model, the injection layer *k*, the
noise type, its scale and scale kind, and whether to show the relative or the absolute change. The sentences are
tokenized once and the clean forward pass is cached, so a move costs only the noisy replay of the blocks above
*k* (about a second for MiniLM on a laptop CPU; going back to a setting you have seen is instant).

Try an impossible combination: choose the 2-block model and move *k* above 2, or set the scale to 0. The
dashboard says what is wrong instead of failing.
"""),
    code("""
explorer = NoiseExplorer(models, texts[:16], n_draws=2)
explorer
"""),
    code("""
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
"""),
    md("""
## 8 · Export a figure

`save_figure` always writes a self-contained interactive HTML file (plotly.js embedded, works offline). PNG/SVG/PDF
need the optional `kaleido` package and a Chromium; without them they are skipped with one warning and the HTML
is still written.
"""),
    code("""
import warnings

out = reports_dir() / "figures" / "01_noise_propagation_curve"
with warnings.catch_warnings(record=True):
    warnings.simplefilter("always")
    written = save_figure(fig_curve, out, formats=("html", "png"))
assert written[0].suffix == ".html" and written[0].stat().st_size > 10_000
print("written:", *written, sep="\\n  ")
"""),
]

# ------------------------------------------------------------------------------------------------------------------
# 02

NB02: list[Cell] = [
    md("""
# 02 · Fine-tuning with and without LNSR

**What you will learn**

* how to run (or load) the comparison: each method fine-tuned with several seeds on the same data, evaluated
  in-domain (movie snippets) and out-of-domain (Amazon reviews, tweets, NYT editorials);
* how stable each fine-tuned model is (the paper's Figure 1 with confidence bands over seeds);
* in-domain and out-of-domain accuracy with one dot per seed, training curves with the regulariser's share;
* whether a difference is real: paired comparisons over seeds with confidence intervals and a verdict in words;
* how far fine-tuning moved each layer (representation drift);
* how to write the whole thing as a self-contained HTML report.

**Time on a laptop CPU:** the first time, the full setting fine-tunes 6 models (2 methods x 3 seeds, 500
examples, 4 epochs): measured 55 minutes on two CPU cores shared with other jobs (6-12 minutes per run, LNSR runs
about 1.3x vanilla's). The runs are stored, so afterwards this notebook loads them and finishes in under half a
minute (measured 17 s). `make demo` uses the same run store: if you ran it, nothing is retrained. Quick setting:
about 10 s.
"""),
    md(QUICK_NOTE),
    code("""
import pandas as pd
from IPython.display import display

from lnsr_viz import compare, load_model
from lnsr_viz.analysis.drift import representation_drift
from lnsr_viz.viz.notebook_figures import wrap_title
from lnsr_viz.viz.figures import plot_paired_differences
from lnsr_viz.viz.dashboards import (
    DriftDashboard,
    MetricsDashboard,
    StabilityCurvesDashboard,
    TrainingCurvesDashboard,
    comparison_protocol,
    comparison_settings,
    reports_dir,
    setup_notebook,
    stored_checkpoints,
)

QUICK = setup_notebook()
SETTINGS = comparison_settings()
SETTINGS
"""),
    md("""
## 1 · Run or load the comparison

`compare` keys every run by a hash of its full configuration in the run store: a run that exists is loaded, a
missing one is trained, so an interrupted sweep resumes where it stopped. The first line of output says how many
runs were trained and how many were loaded.
"""),
    code("""
result = compare(**SETTINGS, save_checkpoints=True, progress=False, verbose=True)
IN_DOMAIN = result.config["data"]["in_domain"]
print(f"{result.timings['trained_runs']} runs trained, {result.timings['cached_runs']} loaded from "
      f"{SETTINGS['results']} in {result.timings['total_seconds']:.0f} s")
result.runs
"""),
    code("""
# Checks: every method x seed is there, plus the pre-trained reference.
expected = {(m, s) for m in SETTINGS["methods"] for s in SETTINGS["seeds"]}
tuned = result.runs.dropna(subset=["seed"])
assert set(zip(tuned["method"], tuned["seed"].astype(int))) >= expected
assert "pretrained" in set(result.runs["method"])
"""),
    md("""
## 2 · Stability of the fine-tuned models (Figure 1 style)

5% relative Gaussian noise at the embedding output; the curves show the relative change at every higher layer.
The bands are 95% confidence intervals over seeds (over sentences for the single pre-trained model). A lower
curve at the top layers means a more noise-stable model. Use the controls to switch the metric, the lines or a
log axis.
"""),
    code("""
stability = StabilityCurvesDashboard(result.profiles, color="model")
prof = result.profiles
assert (prof.groupby(["run_id", "injection_layer"])["layer"].min()
        == prof.groupby(["run_id", "injection_layer"])["injection_layer"].first()).all()   # curves start at k
assert (abs(prof.loc[prof["layer"] == prof["injection_layer"], "change_rel"] - 0.05) < 1e-3).all()
assert stability.error is None, stability.error
stability
"""),
    md("""
## 3 · Accuracy in and out of domain

One dot per seed; the diamond is the mean with its 95% CI over seeds (from the summary table). The in-domain set
is first; the others are out-of-domain. Switch the metric to ROC AUC, macro-F1, NLL or ECE with the dropdown.
"""),
    code("""
accuracy = MetricsDashboard(result.metrics, summary=result.summary, in_domain=IN_DOMAIN)
acc = result.metrics[result.metrics["metric"] == "accuracy"]["value"]
assert acc.between(0, 1).all() and accuracy.error is None
accuracy
"""),
    md("""
## 4 · Training curves and the regulariser's share

Left: training loss per epoch, split into the task loss and the regulariser's share of it (its weight times its
term; zero for vanilla), so the two parts add up to the total. Right: training vs validation accuracy. Thin lines
are seeds, thick lines their mean. Switch the view to the generalisation gap (train minus validation accuracy).
"""),
    code("""
training = TrainingCurvesDashboard(result.history)
reg = result.history.groupby("method")["train_reg_loss"].max()
assert reg.get("vanilla", 0) == 0 or reg.isna().get("vanilla", True)   # vanilla has no regulariser
assert reg["lnsr"] > 0                                                # LNSR's penalty is active
training
"""),
    md("""
## 5 · Is the difference real? Paired statistics over seeds

Each LNSR run is paired with the vanilla run of the same seed (same head initialisation, same data order), and
the difference is summarised with a 95% t-interval, a sign test and a permutation test. An interval that
includes zero means **within noise**: the data do not distinguish the methods there.
"""),
    code("""
paired = result.paired[result.paired["metric"].isin(["accuracy", "roc_auc"])]
for row in paired.itertuples():
    print(f"{row.domain:>8} {row.metric:>8}: {row.verdict}")
wrap_title(plot_paired_differences(result.paired, metric="accuracy", in_domain=IN_DOMAIN))
"""),
    md("""
## 6 · How far fine-tuning moved each layer

Representation drift of each fine-tuned model (seed 1 of each method) from the pre-trained model, on held-out
in-domain sentences: linear CKA (and its debiased version) of the sentence representations, cosine drift of the
token and sentence states, and the weight distance per block. Fine-tuning usually moves the top layers most; a
method that keeps the upper layers stable under noise need not keep them close to the pre-trained ones. This
needs the stored checkpoints (this notebook stores them; runs made by `make demo` without `--save-checkpoints`
have none).
"""),
    code("""
checkpoints = stored_checkpoints()
checkpoints = checkpoints[checkpoints["method"].isin(SETTINGS["methods"])]
first_seed = checkpoints.sort_values("seed").groupby("method", sort=False).head(1)
if len(first_seed):
    base = load_model(SETTINGS["model"])
    held_out = comparison_protocol(SETTINGS).evaluation[IN_DOMAIN].texts[: 32 if QUICK else 256]
    drift_table = pd.concat([
        representation_drift(base, row.path, held_out, names=("pretrained", f"{row.method} (seed {row.seed})"),
                             max_length=SETTINGS["max_length"])
        for row in first_seed.itertuples()
    ], ignore_index=True)
    drift = DriftDashboard(drift_table)
    assert drift.error is None, drift.error
    display(drift)
else:
    print("No checkpoints stored with these runs (made by `make demo` without --save-checkpoints?): drift needs "
          "the fine-tuned weights. Run the demo with --save-checkpoints into a new results folder, or set "
          "LNSR_VIZ_RESULTS to a fresh folder and rerun this notebook.")
"""),
    md("""
## 7 · The report

Everything above, as one self-contained interactive HTML file (works offline, plotly.js embedded once).
"""),
    code("""
report_path = result.report(reports_dir() / "02_finetune_with_and_without_lnsr.html")
assert report_path.stat().st_size > 50_000
print(report_path)
"""),
]

# ------------------------------------------------------------------------------------------------------------------
# 03

NB03: list[Cell] = [
    md("""
# 03 · From theory to practice: noise stability, the Jacobian, the Hessian and generalisation

**What you will learn**

* the **small-noise identity** behind LNSR: for Gaussian noise *e* ~ N(0, σ²I) on layer *k* and the upper
  sub-network *f* (blocks *k*+1…L), E‖f(h+e) − f(h)‖² ≈ σ² ‖J_f(h)‖²_F. Penalising the change under small noise
  penalises the Jacobian: the upper layers become flat around the training data;
* how to check it on a model with a known answer, then on a real transformer, and where it breaks (large σ: the
  network is not linear over the noise; tiny σ: floating-point round-off);
* two classic correlates of generalisation measured on every stored fine-tuned model: the Jacobian norm and the
  trace of the loss Hessian (flat minima);
* how noise stability relates to the generalisation gap and the out-of-domain gap **across runs**, with
  confidence intervals, and why a handful of runs proves little.

**Time on a laptop CPU:** about 12 minutes in the full setting once notebook 02's runs are stored (measured
12.5 minutes on two cores, most of it the Hessian traces of the six checkpoints; without stored runs `compare`
below trains them first, see notebook 02); about 10 s in the quick setting.
"""),
    md(QUICK_NOTE),
    code("""
import pandas as pd
import torch

from lnsr_viz import compare, load_model
from lnsr_viz.core.adapter import ModelAdapter
from lnsr_viz.viz.analysis_figures import plot_small_noise_identity
from lnsr_viz.viz.notebook_figures import wrap_title
from lnsr_viz.testing import LinearStack
from lnsr_viz.analysis.theory import jacobian_norm, small_noise_identity, theory_measurements, theory_table
from lnsr_viz.viz.dashboards import (
    TheoryDashboard,
    comparison_protocol,
    comparison_settings,
    probe_sentences,
    setup_notebook,
    stored_checkpoints,
)

QUICK = setup_notebook()
SETTINGS = comparison_settings()
N_SENTENCES = 8 if QUICK else 16
N_PROBES = 4 if QUICK else 8        # Hutchinson probes per Jacobian / Hessian estimate
"""),
    md("""
## 1 · A model with a known answer

`LinearStack` (from `lnsr_viz.testing`) is a purely linear "transformer": block *l* multiplies every token by
gain *g_l* times an orthogonal matrix. Its Jacobian from layer 0 to the top is known exactly:
‖J‖²_F = d · (g₁g₂g₃)² per token. The Hutchinson estimate must find it, and because the network is linear the
identity must hold at every σ.
"""),
    code("""
stack = LinearStack(dim=8, gains=(2.0, 0.5, 1.5))
stack_adapter = ModelAdapter(stack, blocks=stack.blocks)
ids = torch.randint(0, 50, (6, 5), generator=torch.Generator().manual_seed(0))
stack_inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

exact = stack.jacobian_fro(0, 3) ** 2
estimate = jacobian_norm(stack_adapter, stack_inputs, layer=0, n_probes=N_PROBES)
print(f"||J||_F^2 exact = {exact:.6f}, Hutchinson estimate = {estimate.fro2:.6f} ± {estimate.se:.1e}")
assert abs(estimate.fro2 - exact) < 1e-6 * exact

stack_identity = small_noise_identity(stack_adapter, stack_inputs, layer=0, sigmas=(1.0, 1e-2, 1e-4, 1e-6))
assert (stack_identity["regime"] == "holds").all(), stack_identity[["sigma", "ratio", "regime"]]
stack_identity[["sigma", "noise_sensitivity", "jacobian_fro2", "ratio", "regime"]]
"""),
    md("""
## 2 · The identity on a real transformer

Now the pre-trained model (MiniLM; a tiny random BERT in the quick setting), noise on the embedding output,
*f* = all blocks. Points: the measured noise sensitivity E‖Δ‖²/(σ²T) per token with a 95% CI over sentences;
dashed line: the Hutchinson estimate of ‖J‖²_F (band ±2 standard errors). The points sit on the line over a wide
range of σ (in the full setting MiniLM's identity holds from about 1e-5 up to 1). For large enough σ they leave it
because the network is not linear over the noise (LayerNorm, GELU, softmax); at tiny σ float32 round-off in
f(h+e) − f(h) dominates.
"""),
    code("""
model, tokenizer = load_model(SETTINGS["model"])
texts = probe_sentences(N_SENTENCES)
identity = small_noise_identity(model, texts, tokenizer, layer=0, n_probes=2 * N_PROBES, max_length=64)
assert (identity["regime"] == "holds").any(), "the identity should hold somewhere in the middle range of sigma"
held = identity.loc[identity["regime"] == "holds", "sigma"]
print(f"the identity holds (ratio within 10%) for sigma from {held.min():.0e} to {held.max():.0e}")
wrap_title(plot_small_noise_identity(identity))
"""),
    md("""
**How big is the probe's noise on this scale?** The stability probe of notebooks 01 and 02 adds noise with 5% of
each token's norm. For a hidden size *d* that is a per-coordinate σ of about 0.05‖h‖/√d, computed below from the
embedding output of these sentences: it falls inside the range where the identity holds, so the probe's curves
measure the Jacobian of the upper layers.
"""),
    code("""
hidden = ModelAdapter(model).hidden_states(tokenizer(texts, padding=True, truncation=True, max_length=64,
                                                     return_tensors="pt"))[0]
sigma_probe = float(0.05 * hidden.norm(dim=-1).mean() / hidden.shape[-1] ** 0.5)
print(f"5% relative noise ~ sigma = {sigma_probe:.2g} per coordinate")
"""),
    md("""
## 3 · Jacobian norm and Hessian trace of every fine-tuned model

The comparison of notebook 02 is loaded from the run store (trained first if it is missing). For every stored
checkpoint we measure the Jacobian norm of the top layer with respect to the embedding output (Hutchinson,
`N_PROBES` probes) and the trace of the Hessian of the training loss (Hutchinson with Hessian-vector products by
double backward), on the training examples the model was fine-tuned on.
"""),
    code("""
result = compare(**SETTINGS, save_checkpoints=True, progress=False, verbose=False)
protocol = comparison_protocol(SETTINGS)
train_small = protocol.train.subset(range(min(32, len(protocol.train))))
checkpoints = stored_checkpoints()
if checkpoints.empty:
    print("No checkpoints stored with these runs (made by `make demo` without --save-checkpoints?): the Jacobian "
          "norms and Hessian traces need the fine-tuned weights, so they are left out below. Set LNSR_VIZ_RESULTS "
          "to a fresh folder and run notebook 02 to store runs with checkpoints.")
measured = pd.DataFrame([
    {"run_id": row.run_id, **theory_measurements(net, train_small, tok, layer=0, n_probes=N_PROBES,
                                                 max_length=SETTINGS["max_length"])}
    for row in checkpoints.itertuples()
    for net, tok in [load_model(row.path)]
], columns=["run_id", "jacobian_fro2", "jacobian_fro2_se", "hessian_trace", "hessian_trace_se"])
checkpoints.merge(measured, on="run_id")[["method", "seed", "jacobian_fro2", "jacobian_fro2_se", "hessian_trace",
                                          "hessian_trace_se"]].round(4)
"""),
    md("""
## 4 · Across runs: does stability go with generalisation?

`theory_table` reads every stored run: the top-layer noise sensitivity (the probe's relative change at the last
layer, Figure 1's quantity), the generalisation gap (last epoch's train minus validation accuracy) and the
out-of-domain gap (in-domain minus mean out-of-domain accuracy), with Pearson and Spearman correlations and
bootstrap CIs. The Jacobian norms and Hessian traces measured above join the table. Pick the axes and the colour
in the dashboard: e.g. noise sensitivity vs Jacobian norm coloured by the generalisation gap shows three
quantities at once.

After notebook 02 alone (2 methods x 3 seeds) there are only six fine-tuned runs: a correlation is weak
evidence here, and the bootstrap intervals say how weak. More seeds or methods (notebook 05 stores its runs in
the same place) add points.
"""),
    code("""
theory = theory_table(SETTINGS["results"])
runs = theory.runs.drop(columns=["jacobian_fro2", "hessian_trace"]).merge(
    measured[["run_id", "jacobian_fro2", "hessian_trace"]], on="run_id", how="left")
tuned = runs[runs["method"] != "pretrained"]
assert tuned["noise_sensitivity"].notna().all() and tuned["generalisation_gap"].notna().all()
assert tuned["jacobian_fro2"].notna().sum() == len(measured)
theory_dashboard = TheoryDashboard(runs, correlations=theory.correlations)
assert theory_dashboard.error is None, theory_dashboard.error
theory_dashboard
"""),
    code("""
cols = ["x", "y", "n", "pearson_r", "pearson_ci_low", "pearson_ci_high", "spearman_rho", "spearman_ci_low",
        "spearman_ci_high"]
theory.correlations[cols].round(3)
"""),
]

# ------------------------------------------------------------------------------------------------------------------
# 04

NB04: list[Cell] = [
    md("""
# 04 · Diagnose your model

**What you will learn**

* how to point lnsr_viz at any fine-tuned checkpoint and labelled data and get a diagnosis: the generalisation
  gap, noise stability against the pre-trained base, drift per layer and calibration, each as a sentence with the
  number, the threshold and where the threshold comes from;
* how to look closer: the stability curves of model and base, the drift heat-map, a UMAP of the sentence
  representations coloured by label or domain, and token attributions of base and model side by side;
* how to save it all as one HTML report.

**Time on a laptop CPU:** under a minute in the full setting (MiniLM, 500 training and 600 held-out movie
snippets, UMAP of 400 sentences: measured 39 s on two cores); about 10 s in the quick setting.

**Your own model:** set `CHECKPOINT` below (or the environment variable `LNSR_VIZ_CHECKPOINT`) to a folder with
`config.json` and the weights (anything saved with `save_pretrained`), and `DATA` to labelled data: a CSV path with
`text` and `label` columns (and optionally a `split` column with `train` / `test`), a DataFrame, or
`{"train": ..., "held_out": ...}`. The base model is read from the checkpoint's config unless you set
`BASE_MODEL`. By default the notebook diagnoses an LNSR checkpoint stored by notebook 02.
"""),
    md(QUICK_NOTE),
    code("""
import os

from lnsr_viz import load_model
from lnsr_viz.experiments.diagnose import diagnose
from lnsr_viz.viz.notebook_figures import wrap_title
from lnsr_viz.viz.figures import plot_stability_curves
from lnsr_viz.analysis.projection import project_representations
from lnsr_viz.viz.dashboards import (
    AttributionDashboard,
    DriftDashboard,
    ProjectionDashboard,
    check_checkpoint,
    comparison_protocol,
    comparison_settings,
    default_checkpoint,
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
"""),
    md("""
A wrong path does not end in a traceback from deep inside transformers; it says what to set:
"""),
    code("""
try:
    check_checkpoint("/no/such/checkpoint")
except FileNotFoundError as err:
    print(err)
    assert "Set CHECKPOINT" in str(err)
"""),
    code("""
if DATA is None:   # the stored checkpoint's own protocol: its training set, held-out in-domain and OOD sets
    protocol = comparison_protocol(comparison_settings())
    IN_DOMAIN = protocol.in_domain
    DATA = {"train": protocol.train, "held_out": protocol.evaluation[IN_DOMAIN]}
    OOD = {name: ds for name, ds in protocol.evaluation.items() if name != IN_DOMAIN}
else:
    IN_DOMAIN, OOD = "held_out", {}
"""),
    md("""
## 1 · The diagnosis
"""),
    code("""
diagnosis = diagnose(CHECKPOINT, BASE_MODEL, DATA, max_examples=200 if QUICK else 600,
                     n_probe=16 if QUICK else 64, n_drift=32 if QUICK else 300, max_length=64)
print(diagnosis.summary())
keys = [f.key for f in diagnosis.findings]
assert keys == ["generalisation_gap", "loss_gap", "stability_vs_base", "drift", "calibration"], keys
assert diagnosis.profile.groupby("model")["layer"].min().eq(0).all()   # both curves start at the injection layer
"""),
    code("""
diagnosis.metrics.pivot_table(index="metric", columns="split", values="value", sort=False).round(4)
"""),
    md("""
## 2 · Stability of the model vs its base

5% relative Gaussian noise at the embedding output; a fine-tuned curve above the base at the top layers means
its top layers are less stable than the pre-trained ones.
"""),
    code("""
wrap_title(plot_stability_curves(diagnosis.profile, injection_layer=0, color="model"))
"""),
    md("""
## 3 · How far fine-tuning moved each layer

Colour: how far each layer moved (1 − CKA for the similarities, the distance otherwise), scaled within each metric
so that rows on different scales are comparable; the cell text is the raw value. Choose metrics in the dashboard.
"""),
    code("""
drift = DriftDashboard(diagnosis.drift)
assert drift.error is None, drift.error
drift
"""),
    md("""
## 4 · Where the sentences sit: a joint projection of base and model

The sentence representations (mean over real tokens) of both models are projected together (UMAP in the full
setting, PCA in the quick one), so the two panels share one coordinate system. Colour by label to see whether
fine-tuning separated the classes, or by domain to see where out-of-domain sentences land. Hover a point to read
its sentence.
"""),
    code("""
model, tokenizer = load_model(CHECKPOINT)
base, base_tokenizer = load_model(diagnosis.settings["base_model"])
n_per_set = 24 if QUICK else 100
sets = {IN_DOMAIN: DATA["held_out"].subset(range(min(n_per_set, len(DATA["held_out"]))))}
sets.update({name: ds.subset(range(min(n_per_set, len(ds)))) for name, ds in OOD.items()})
projections = [   # one joint projection per layer: the embedding output and the last layer
    project_representations((base, base_tokenizer), (model, tokenizer), sets, layer=layer,
                            method="pca" if QUICK else "umap", names=("base", "model"), max_length=64)
    for layer in (0, -1)
]
projection = ProjectionDashboard(projections)
assert projection.error is None, projection.error
projection
"""),
    md("""
## 5 · Which words decide? Attributions of base and model side by side

Integrated Gradients on the word embeddings: each token's contribution to the predicted class's probability,
for the base (with its untrained head) and the fine-tuned model. Pick a sentence.
"""),
    code("""
sentences = list(DATA["held_out"].texts[:6])
attributions = AttributionDashboard((base, base_tokenizer), (model, tokenizer), sentences, names=("base", "model"),
                                    n_steps=16 if QUICK else 32)
assert attributions.error is None, attributions.error
attributions
"""),
    md("""
## 6 · The report
"""),
    code("""
report_path = diagnosis.report(reports_dir() / "04_diagnosis.html")
assert report_path.stat().st_size > 50_000
print(report_path)
"""),
]

# ------------------------------------------------------------------------------------------------------------------
# 05

NB05: list[Cell] = [
    md("""
# 05 · Rival regularisers side by side

**What you will learn**

* how LNSR compares with the other fine-tuning regularisers on the same data, seeds and budget: L2-SP, Mixout,
  SMART, R3F, R-Drop, NoisyTune, HyPe and Child-Tuning, against vanilla fine-tuning;
* each method's stability curve, accuracy in and out of domain, and paired differences from vanilla with
  verdicts in plain words;
* what each method costs in time;
* that with a few seeds most differences are **within noise**, and how to read that honestly.

**Time on a laptop CPU:** the full setting fine-tunes 8 rival methods x 3 seeds on top of notebook 02's runs
(which are reused): 24 MiniLM fine-tunings, an estimated 4 hours on two CPU cores the first time (from notebook
02's measured 6-10 minutes per vanilla run and each method's per-step cost relative to vanilla in
`benchmarks/bench_methods.py`: up to 2.5x for SMART), seconds afterwards (every run is stored). Quick setting:
about 10 s (16 tiny fine-tunings).
"""),
    md(QUICK_NOTE),
    code("""
from IPython.display import display

from lnsr_viz import compare
from lnsr_viz.viz.notebook_figures import plot_run_costs, plot_step_costs, wrap_title
from lnsr_viz.viz.figures import plot_paired_differences
from lnsr_viz.methods.base import METHODS
from lnsr_viz.viz.dashboards import (
    MetricsDashboard,
    StabilityCurvesDashboard,
    TrainingCurvesDashboard,
    benchmark_table,
    comparison_settings,
    reports_dir,
    setup_notebook,
)

QUICK = setup_notebook()
ALL_METHODS = tuple(METHODS)   # vanilla, lnsr and every rival registered in lnsr_viz
SETTINGS = comparison_settings(methods=ALL_METHODS)
print("methods:", ", ".join(ALL_METHODS))
"""),
    md("""
## 1 · Run or load every method

Same data, seeds, epochs and learning rate for every method; each method's own hyper-parameters are its
defaults (see `lnsr_viz.methods.rivals`), chosen a priori, not tuned here. Runs already stored (e.g. vanilla and LNSR
from notebook 02) are loaded.
"""),
    code("""
result = compare(**SETTINGS, progress=False, verbose=not QUICK)
IN_DOMAIN = result.config["data"]["in_domain"]
print(f"{result.timings['trained_runs']} runs trained, {result.timings['cached_runs']} loaded")
assert set(result.runs["method"]) == {"pretrained", *ALL_METHODS}
assert set(result.paired["method"]) == set(ALL_METHODS) - {"vanilla"}
"""),
    md("""
## 2 · What each method costs

Wall-clock seconds per run (fine-tuning, evaluation and the stability probe), one dot per seed. Methods that add
a second forward pass (LNSR, SMART, R3F, R-Drop) cost more than those that only change the weights, the
gradients or the hidden states of the one pass (L2-SP, Mixout, NoisyTune, HyPe, Child-Tuning). Runs loaded from
the store report the time of the run that made them.
"""),
    code("""
runs = result.runs.dropna(subset=["seconds"])
runs.groupby("method")["seconds"].agg(["count", "mean"]).round(1)
"""),
    code("""
wrap_title(plot_run_costs(runs))
"""),
    md("""
Wall-clock seconds of whole runs depend on what else the machine was doing. `benchmarks/bench_methods.py`
measures the cost of one training step of each method on MiniLM, interleaved in rounds so that a shared machine's
load hits every method alike, and reports it as a ratio to vanilla, with the peak memory a step adds. If its
results file is present it is shown here (run `python benchmarks/bench_methods.py` to make or refresh it).
"""),
    code("""
bench, bench_info = benchmark_table("bench_methods")
if len(bench):
    machine = bench_info.get("machine", {})
    print(f"measured on {machine.get('cpu')} ({machine.get('cores')} cores, torch threads "
          f"{machine.get('torch_threads')}), settings {bench_info.get('settings')}")
    display(wrap_title(plot_step_costs(bench)))
else:
    print(f"no benchmark results at {bench_info['path']}: run `python benchmarks/bench_methods.py` to measure")
"""),
    md("""
## 3 · Stability of every method
"""),
    code("""
stability = StabilityCurvesDashboard(result.profiles, color="model")
assert stability.error is None, stability.error
stability
"""),
    md("""
## 4 · Accuracy in and out of domain
"""),
    code("""
accuracy = MetricsDashboard(result.metrics, summary=result.summary, in_domain=IN_DOMAIN)
assert accuracy.error is None, accuracy.error
accuracy
"""),
    md("""
## 5 · Paired differences from vanilla

Every method minus vanilla, seed by seed, with 95% CIs; hollow markers are within noise.
"""),
    code("""
wrap_title(plot_paired_differences(result.paired, metric="accuracy", in_domain=IN_DOMAIN))
"""),
    code("""
verdicts = result.paired[result.paired["metric"] == "accuracy"][["method", "domain", "mean_diff", "ci_low",
                                                                 "ci_high", "verdict"]]
verdicts.round(4)
"""),
    md("""
## 6 · Training curves
"""),
    code("""
training = TrainingCurvesDashboard(result.history)
assert training.error is None, training.error
training
"""),
    code("""
report_path = result.report(reports_dir() / "05_rival_regularisers.html",
                            title="lnsr_viz: LNSR and its rivals")
print(report_path)
"""),
]

# ------------------------------------------------------------------------------------------------------------------
# 06

NB06: list[Cell] = [
    md("""
# 06 · The study: where LNSR helps and where it does not

**What you will learn**

* what the committed study (`configs/study.yaml`: vanilla and seven LNSR settings, 100 and 500 training
  examples, 5 seeds each) says about the paper's four claims: (a) lower top-layer noise sensitivity, (b) higher
  in-domain accuracy with few examples, (c) lower variance over seeds, (d) better out-of-domain accuracy;
* how the settings were chosen without peeking (validation accuracy only), and what every setting did;
* whether a model that is less sensitive to noise is also better out of domain, run by run;
* how to run the same study on your own model and data.

**Time on a laptop CPU:** seconds. Nothing is trained here: the notebook reads the committed run store
`results/study` (the sweep itself took the CPU hours stated in `docs/study.md`).

This notebook reads the same runs in the quick setting: there is nothing to make quicker.
"""),
    code("""
from IPython.display import Markdown, display

from lnsr_viz.experiments.study import load_study, plot_sensitivity_vs_ood
from lnsr_viz.viz.dashboards import FigureDashboard, setup_notebook, study_dir

QUICK = setup_notebook()
STUDY = study_dir()
study = load_study(STUDY, config=STUDY.parent.parent / "configs" / "study.yaml")
cost = study.cost
print(f"{cost['runs']} fine-tuning runs in {STUDY}; their own wall-clock times sum to "
      f"{cost['run_seconds_sum'] / 3600:.2f} h")
"""),
    md("""
## 1 · The selection rule

Per training-set size, the LNSR setting with the best mean **validation** accuracy (last epoch, over seeds) is
chosen; test and out-of-domain numbers are read only afterwards (`lnsr_viz.experiments.sweep.select_settings`).
"""),
    code("""
study.chosen
"""),
    md("""
## 2 · The four claims

Each row compares the chosen LNSR setting (`role` = chosen; a setting that tied with it on validation accuracy
and lost the tie-break is shown too, `role` = tied) with vanilla, seed by seed. `effect` is the mean paired difference
(LNSR - vanilla) with its 95% CI for (a), (b) and (d), and the ratio of the standard deviations over seeds for (c).
*Supported* / *contradicted*: the CI excludes zero in / against the claimed direction; otherwise *not shown*.
"""),
    code("""
cols = ["claim", "statement", "train_size", "setting", "role", "baseline_mean", "method_mean", "effect", "ci_low",
        "ci_high", "p_value", "verdict"]
study.claims[cols].round(4)
"""),
    md("""
## 3 · Noise sensitivity against out-of-domain accuracy, run by run

One marker per run: colour = setting, shape = training-set size; crosses mark runs whose representations
collapsed. Choose other columns of the runs table for either axis.
"""),
    code("""
numeric = [c for c in ["top_sensitivity", "ood_accuracy", "ood_roc_auc", "accuracy", "roc_auc", "val_accuracy",
                       "reg_to_task_ratio", "repr_effective_rank"] if c in study.runs]
scatter = FigureDashboard(plot_sensitivity_vs_ood, study.runs,
                          choices={"x": numeric, "y": [numeric[1], *[c for c in numeric if c != numeric[1]]]})
assert scatter.error is None, scatter.error
scatter
"""),
    md("""
## 4 · Every setting, and the label balance of the evaluation sets
"""),
    code("""
study.settings.round(4)
"""),
    code("""
study.balance
"""),
    md("""
## 5 · The write-up

`docs/study.md` is generated from the same store by `python -m lnsr_viz study configs/study.yaml`; it is shown
below as committed. To run the study on your own model or data, copy `configs/study.yaml`, change `model`, `data`
and `ood`, and run `python -m lnsr_viz sweep YOUR.yaml` (add `--shard 1/2` and `2/2` to use two processes or
machines, then `merge`), then `python -m lnsr_viz study YOUR.yaml --out your-study.md`.
"""),
    code("""
doc = STUDY.parent.parent / "docs" / "study.md"
if doc.is_file():
    display(Markdown(doc.read_text(encoding="utf-8").replace("](study-", "](../docs/study-")))
else:
    print(f"{doc} is not there yet: run `python -m lnsr_viz study configs/study.yaml`")
"""),
]

NOTEBOOKS_SPEC: dict[str, list[Cell]] = {
    "01_noise_propagation.ipynb": NB01,
    "02_finetune_with_and_without_lnsr.ipynb": NB02,
    "03_theory_to_practice.ipynb": NB03,
    "04_diagnose_your_model.ipynb": NB04,
    "05_rival_regularisers.ipynb": NB05,
    "06_study.ipynb": NB06,
}


def build(name: str, cells: list[Cell]) -> nbformat.NotebookNode:
    """The notebook ``name`` from its cells: no outputs, deterministic ids, the project's Python 3 kernel."""
    stem = name.split(".")[0]
    nb_cells = []
    for i, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell["id"] = f"{stem[:2]}-{i:02d}"
        nb_cells.append(cell)
    nb = new_notebook(cells=nb_cells)
    nb["metadata"] = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "version": "3.11"},
    }
    nbformat.validate(nb)
    return nb


def render(name: str, cells: list[Cell]) -> str:
    return nbformat.writes(build(name, cells)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the notebooks are up to date")
    args = parser.parse_args(argv)
    stale = []
    NOTEBOOKS.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS_SPEC.items():
        path = NOTEBOOKS / name
        text = render(name, cells)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        elif not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"out of date (run `python tools/build_notebooks.py`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

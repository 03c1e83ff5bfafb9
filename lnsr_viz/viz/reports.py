"""Every report of the toolkit, built in one place: the comparison, the diagnosis, the probe, the study write-up.

The HTML reports are :class:`~lnsr_viz.viz.report.Report` pages (Jinja2 templates, self-contained and offline):

=============================  ==============================================================================
builder                        what it shows
=============================  ==============================================================================
:func:`comparison_report`      a :func:`lnsr_viz.experiments.runs.compare` result: verdicts in words, stability
                               curves, metrics per domain, training curves, drift, paired statistics, the protocol
:func:`diagnosis_report`       a :func:`lnsr_viz.experiments.diagnose.diagnose` result: findings with their numbers
                               and thresholds, stability against the base, drift, calibration
:func:`probe_report`           a stability profile (``python -m lnsr_viz probe --html``)
:func:`write_study`            the study's markdown write-up (``docs/study.md``, from ``templates/study.md.j2``),
                               its static SVG figure and its tidy CSV tables
:func:`write_track_record`     the track record of diagnose's findings beside WeightWatcher (``docs/diagnose.md``,
                               from ``templates/track_record.md.j2``) and its tidy tables
=============================  ==============================================================================

Each HTML builder returns the report; ``.save(path)`` writes it atomically. Nothing here computes a statistic: the
numbers come from the result objects of :mod:`lnsr_viz.experiments` and :mod:`lnsr_viz.analysis`.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .report import Report, md_number, template_environment
from .style import format_number, is_weak_evidence, readable

__all__ = ["comparison_report", "diagnosis_report", "probe_report", "write_study", "write_track_record",
           "DEFAULT_COMPARISON_TITLE"]

#: The comparison report's title unless one is given.
DEFAULT_COMPARISON_TITLE = "lnsr_viz: fine-tuning with and without LNSR"


# ------------------------------------------------------------------------------------------------ comparison
def _machine() -> dict[str, Any]:
    """The machine the report was rendered on (Python, torch, CPU, cores, torch threads)."""
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or
            platform.machine(), "cores": os.cpu_count(), "torch threads": torch.get_num_threads()}


#: How the comparison report words a paired difference: stated once, under the verdicts and the paired table.
_EVIDENCE_RULE = ("A difference counts as clear only when its 95% CI excludes 0 *and* the permutation test's p is "
                  "below 0.05; otherwise it is *no clear difference (within noise)*, drawn as a hollow marker. With "
                  "n paired seeds no exact test can go below p = 2 / 2^n (0.25 with 3 seeds, 0.0625 with 5), so a "
                  "comparison over 5 seeds or fewer is never called clear.")


def _stated_p(row: Mapping[str, Any]) -> float:
    """The p-value the evidence rests on: the permutation test's, else the sign test's."""
    for col in ("p_adj", "p_permutation", "p_sign"):
        value = row.get(col)
        if value is not None and math.isfinite(float(value)):
            return float(value)
    return math.nan


def _direction(row: Mapping[str, Any]) -> str:
    """'lnsr better' / 'lnsr worse' (or 'higher' / 'lower' for a metric with no better side)."""
    from ..analysis.stats import HIGHER_IS_BETTER, LOWER_IS_BETTER

    diff, metric, method = float(row["mean_diff"]), str(row["metric"]), str(row["method"])
    if metric in HIGHER_IS_BETTER or metric in LOWER_IS_BETTER:
        better = diff < 0 if metric in LOWER_IS_BETTER else diff > 0
        return f"{method} {'better' if better else 'worse'}"
    return f"{method} {'higher' if diff > 0 else 'lower'}"


def _evidence_label(row: Mapping[str, Any]) -> str:
    """The paired table's short evidence cell: 'within noise' or 'clear: lnsr better'."""
    if int(row.get("n_pairs", 0) or 0) < 2:
        return "not comparable (fewer than 2 paired seeds)"
    if is_weak_evidence(row["ci_low"], row["ci_high"], _stated_p(row)):
        return "within noise"
    return f"clear: {_direction(row)}"


def _headline(row: Mapping[str, Any]) -> str:
    """One verdict line: weak evidence (CI includes 0 or p >= 0.05) is 'no clear difference (within noise)' with
    its numbers; a clear difference keeps the statistics module's sentence."""
    n = int(row.get("n_pairs", 0) or 0)
    if n < 2 or not is_weak_evidence(row["ci_low"], row["ci_high"], _stated_p(row)):
        return str(row["verdict"])
    p = _stated_p(row)
    p_text = f"p = {p:.2g}" if math.isfinite(p) else "no p-value"
    return (f"no clear difference between {row['method']} and {row['baseline']} (within noise): "
            f"{row['method']} − {row['baseline']} = {float(row['mean_diff']):+.3g} (95% CI "
            f"{float(row['ci_low']):+.3g} to {float(row['ci_high']):+.3g}), {p_text} over {n} seeds")


def _lnsr_setting_note(cfg: Mapping[str, Any]) -> str:
    """Why LNSR's weight here may differ from the one the study chose: these runs' setting was fixed in advance."""
    if "lnsr" not in cfg.get("methods", ()):
        return ""
    params = dict(cfg.get("method_params", {}).get("lnsr", {}))
    shown = ", ".join(f"{k} = {format_number(v)}" for k, v in params.items() if k in ("lam", "noise", "scale",
                                                                                    "injection_layer"))
    return (f"LNSR ran with {shown or 'its defaults'} (all its parameters are in the settings table at the bottom). "
            "This setting was fixed before any run (the demo's is `ExperimentConfig.demo()` with LNSR's default "
            "parameters), never tuned on these results. The study (`docs/study-v2.md`) instead chooses LNSR's "
            "weight per training-set size on validation accuracy from a grid fixed in advance (its 'chosen setting' "
            "table), so the weight it chose can differ from the one used here: the two answer different questions "
            "(a setting fixed a priori vs the best setting on validation data).")


def comparison_report(result: Any, *, title: str = DEFAULT_COMPARISON_TITLE) -> Report:
    """The HTML report of a comparison (a :class:`~lnsr_viz.experiments.runs.ComparisonResult`): figures,
    statistics in plain words, the protocol. ``comparison_report(result).save("reports/mine.html")`` writes it."""
    from . import figures as plots
    from .analysis_figures import plot_drift_by_layer

    cfg = result.config
    rep = Report(title, subtitle=f"{cfg.get('model')} fine-tuned on {cfg['data']['train_size']} "
                                 f"{cfg['data']['in_domain']} examples; methods {', '.join(cfg['methods'])}; "
                                 f"seeds {', '.join(map(str, cfg['seeds']))}")
    in_domain = cfg["data"]["in_domain"]
    qa = cfg.get("task") == "qa"
    headline = ["f1", "exact_match"] if qa else ["accuracy", "roc_auc"]
    rep.add_text(
        "Every number on this page comes from the runs listed at the bottom (stored in the run store "
        f"`{cfg['results']}`). Each method was fine-tuned once per seed on the same training subset; the seeds vary "
        "the head initialisation, data order, dropout and noise. Differences are reported with 95% confidence "
        "intervals over seeds and paired tests; a difference whose interval includes zero is **within noise**.",
        heading="What this report shows")
    collapsed = result.runs[result.runs["collapsed"].fillna(False).astype(bool)] if "collapsed" in result.runs else []
    if len(collapsed):
        rep.add_text("**Collapsed runs** (the collapse guard saw the top-layer representations lose their spread; "
                     "their numbers are in every table and figure below but measure a degenerate model): "
                     + ", ".join(f"{r.method} seed {r.seed}" for r in collapsed.itertuples()),
                     heading="Warning: collapsed runs")
    if len(result.paired):
        verdicts = result.paired[result.paired["metric"].isin(headline)]
        lines = "\n".join(f"- **{r['domain']}, {readable(r['metric'])}**: {_headline(r)}"
                          for r in verdicts.to_dict("records"))
        rep.add_text(lines + "\n\n" + _EVIDENCE_RULE, heading="Verdicts in plain words")
    lnsr_note = _lnsr_setting_note(cfg)
    if lnsr_note:
        rep.add_text(lnsr_note, heading="LNSR's setting in these runs")
    if len(result.profile):
        prof = result.profile
        rep.add_figure(plots.plot_stability_curves(prof, metric="change_rel", injection_layer=0, color="model"),
                       heading="Layer stability (paper Figure 1 style)",
                       caption="Gaussian noise with 5% of each token's norm is added to the embedding output (layer "
                               "0); each curve shows how much every higher layer's output changes, relative to its "
                               "norm (mean over sentences; bands: 95% CI over seeds, or over sentences for the single "
                               "pre-trained model). Lower curves at the top layers mean a more noise-stable model.")
        rep.add_figure(plots.plot_stability_curves(prof, metric="change_l2", injection_layer=0, color="model"),
                       heading="Layer stability, absolute change",
                       caption="The same probe in absolute units: the L2 norm of the change of each layer's output. "
                               "A model can look stable here simply by shrinking its representations; compare with "
                               "the relative curve above.")
    if len(result.metrics):
        panels = ((("f1", "F1 per domain"), ("exact_match", "Exact match per domain")) if qa else
                  (("accuracy", "Accuracy per domain"), ("roc_auc", "ROC AUC per domain")))
        for metric, name in panels:
            sub = result.metrics[result.metrics["metric"] == metric]
            if len(sub):
                rep.add_figure(plots.plot_metric_by_domain(result.metrics, metric=metric, in_domain=in_domain),
                               heading=name,
                               caption=f"One dot per seed; the larger marker is the mean with its 95% CI over seeds. "
                                       f"{in_domain} is in-domain (held-out test split); the others are "
                                       "out-of-domain. " + (
                                           "SQuAD's official metrics in percent (answers normalised; the best "
                                           "match over the reference answers)." if qa else
                                           "ROC AUC ranks examples without a decision threshold, so a shifted "
                                           "threshold lowers accuracy but not AUC."))
    if len(result.label_balance):
        if qa:
            rep.add_table(result.label_balance, heading="Evaluation sets",
                          caption="Questions (n) and articles per evaluation set; the in-domain set holds held-out "
                                  "questions on the training articles, the others come from other topic groups.")
        else:
            rep.add_table(result.label_balance, heading="Evaluation sets and their label balance",
                          caption="positive_rate: the fraction of positive examples; accuracy must be read "
                                  "against it.")
    labels = cfg.get("labels") or {}
    if labels.get("classes") and not qa:
        classes = ", ".join(f"{k} = {v}" for k, v in labels["classes"].items())
        lmap = labels.get("label_map")
        rep.add_text(f"The classes come from the training data ({labels.get('from')}) only: {classes}. Every "
                     "evaluation set's labels were matched with them (by name; class ids as ids). "
                     + ("Label map applied to every file: " + ", ".join(f"`{k}` → `{v}`" for k, v in lmap.items())
                        + "." if lmap else "No label map was given."),
                     heading="Classes and label map")
    if len(result.history):
        history = result.history.assign(
            train_reg_contribution=result.history["train_loss"] - result.history["train_task_loss"])
        rep.add_figure(plots.plot_training_curves(
            history, metrics=("train_loss", "train_task_loss", "train_reg_contribution")), heading="Training curves",
                       caption="Training loss per epoch, split into the task loss and the regulariser's share of it "
                               "(its weight times its term; zero for vanilla), and training vs validation accuracy "
                               "(measured in eval mode at the end of each epoch). The unweighted term is in the "
                               "history table's train_reg_loss column.")
        rep.add_figure(plots.plot_generalisation_gap(result.history), heading="Generalisation gap",
                       caption="Training accuracy minus validation accuracy per epoch; mean and 95% CI over seeds.")
    if len(result.drift):
        rep.add_figure(plot_drift_by_layer(result.drift, metric="cka"), heading="Drift from the pre-trained model",
                       caption="Linear CKA between each layer's mean-pooled representations of the probe inputs in "
                               "the pre-trained and the fine-tuned model (1 = unchanged up to rotation and scale); "
                               "mean and 95% CI over seeds. Layers that fine-tuning moved more sit lower.")
        rep.add_figure(plot_drift_by_layer(result.drift, metric="weight_distance_rel"), caption=(
            "The same per layer in weight space: ||W_ft - W_pre||_F / ||W_pre||_F."))
    if len(result.paired):
        rep.add_figure(plots.plot_paired_differences(result.paired, metric=headline[0], in_domain=in_domain),
                       heading=f"Paired differences ({headline[0]})",
                       caption="Method minus baseline, seed by seed; the bar is the 95% CI of the mean difference. "
                               "Hollow markers: the CI includes zero (within noise).")
        table = result.paired[["method", "baseline", "domain", "metric", "n_pairs", "mean_diff", "ci_low",
                               "ci_high", "p_sign", "p_permutation"]].copy()
        table["evidence"] = [_evidence_label(r) for r in result.paired.to_dict("records")]
        rep.add_table(table, heading="Paired comparison table",
                      caption="mean_diff: method minus baseline, seed by seed; ci_low / ci_high: its 95% CI; p_sign / "
                              "p_permutation: the exact sign and sign-flip permutation tests. " + _EVIDENCE_RULE)
    if len(result.summary):
        rep.add_table(result.summary, heading="Mean, sd and 95% CI over seeds",
                      caption="nll and ece: lower is better; the others: higher is better.")
    rep.add_key_values({"model": cfg["model"], **{f"data.{k}": v for k, v in cfg["data"].items()},
                        **{f"train.{k}": v for k, v in cfg["train"].items()},
                        **{f"probe.{k}": v for k, v in cfg["probe"].items()},
                        **{f"{m}.params": str(p) for m, p in cfg["method_params"].items()},
                        **{f"time.{k}": (round(v, 1) if isinstance(v, float) else v)
                           for k, v in result.timings.items()},
                        **{f"machine.{k}": v for k, v in _machine().items()}},
                       heading="Protocol, settings and machine")
    rep.add_table(result.runs, heading="Runs", caption="cached: loaded from the run store instead of retrained.")
    return rep


# ------------------------------------------------------------------------------------------------ diagnosis
def diagnosis_report(diag: Any) -> Report:
    """The HTML report of a :class:`~lnsr_viz.experiments.diagnose.Diagnosis`: the findings with the number, the
    threshold and its source behind each, accuracy / loss / calibration by split, stability against the base, drift,
    reliability and the settings."""
    from ..experiments.diagnose import json_safe
    from . import figures as plots
    from .analysis_figures import plot_drift_heatmap

    s = diag.settings
    rep = Report(f"Diagnosis of {os.path.basename(str(s.get('model', 'model')).rstrip('/')) or 'model'}",
                 subtitle=f"base model: {s.get('base_model')} ({s.get('base_source')}); {s.get('n_train')} training "
                          f"and {s.get('n_held_out')} held-out examples ({s.get('split')})")
    marks = {"warning": "**Warning**", "ok": "OK", "info": "Note"}
    lines = [f"- {marks[f.severity]} — **{f.title}**: {f.message}" for f in diag.findings]
    rep.add_text("\n".join(lines), heading="Findings")
    rep.add_table(pd.DataFrame([{"finding": f.title, "severity": f.severity, "value": f.value,
                                 "threshold": f.threshold, "threshold and its source": f.threshold_source}
                                for f in diag.findings]),
                  heading="The numbers behind each finding",
                  caption="Every verdict compares a measured value with a stated threshold; descriptive findings "
                          "have none.")
    records = [dict(f.evidence["track_record"], title=f.title) for f in diag.findings
               if isinstance(f.evidence.get("track_record"), Mapping)]
    if records:
        rep.add_table(pd.DataFrame([{"finding": r["title"], "verdict": r.get("verdict"), "models": r.get("n"),
                                     "ROC AUC": r.get("auc"), "AUC 95% CI low": r.get("auc_ci_low"),
                                     "AUC 95% CI high": r.get("auc_ci_high"), "rho": r.get("rho"),
                                     "rho 95% CI low": r.get("rho_ci_low"), "rho 95% CI high": r.get("rho_ci_high"),
                                     "outcome": r.get("outcome"), "population": r.get("population")}
                                    for r in records]),
                      heading="Track record of each finding",
                      caption="How well each finding's number separated over-fitted models (ROC AUC) and ranked the "
                              "outcome it claims to predict (Spearman rho) on a population of stored runs "
                              "(docs/diagnose.md). A warning whose record does not beat chance is worded as "
                              "descriptive.")
    if len(diag.metrics):
        wide = diag.metrics.pivot_table(index="metric", columns="split", values="value", sort=False).reset_index()
        rep.add_table(wide, heading="Accuracy, loss and calibration by split",
                      caption="nll: mean cross-entropy (nats); ece: expected calibration error; both lower is "
                              "better.")
    if len(diag.profile):
        rep.add_figure(plots.plot_stability_curves(diag.profile, metric="change_rel", injection_layer=0,
                                                   color="model"),
                       heading="Layer stability: model vs base",
                       caption="Gaussian noise with 5% of each token's norm added to the embedding output; each "
                               "curve is the relative change of every higher layer (mean over sentences, band: 95% "
                               "CI). A fine-tuned curve above the base at the top layers means less stable top "
                               "layers.")
    if len(diag.drift):
        rep.add_figure(plot_drift_heatmap(diag.drift), heading="Drift from the base per layer",
                       caption="Colour: how far each layer moved, scaled within each metric (similarities shown as "
                               "1 - similarity); cell text: the raw value.")
        rep.add_table(diag.drift.drop(columns=["model_a", "model_b"]), heading="Drift table", float_format="{:.4g}")
    if len(diag.calibration):
        rep.add_table(diag.calibration, heading="Reliability (held-out)",
                      caption="Per confidence bin: how many predictions, their mean confidence and their accuracy. "
                              "A calibrated model has accuracy close to confidence in every bin.")
    flat = {k: (json.dumps(json_safe(v)) if isinstance(v, Mapping) else v) for k, v in s.items()}
    rep.add_key_values(flat, heading="Settings")
    return rep


# ------------------------------------------------------------------------------------------------ probe
def probe_report(profile: pd.DataFrame, *, model: str, layer: int | None = None) -> Report:
    """The HTML report of a stability profile of ``model``: the curve for noise at ``layer`` (0 when None), and
    with ``layer=None`` (noise at every layer) the full profile heatmap; then the profile table."""
    from . import figures as plots

    rep = Report(f"Noise-stability profile of {model}")
    k = 0 if layer is None else layer
    rep.add_figure(plots.plot_stability_curves(profile, injection_layer=k), heading="Stability curve",
                   caption=f"Noise injected at layer {k}; relative change of every higher layer.")
    if layer is None:
        rep.add_figure(plots.plot_profile_heatmap(profile), heading="Full profile",
                       caption="Relative change at every layer (x) for noise injected at every layer (y).")
    rep.add_table(profile, heading="Profile")
    return rep


# ------------------------------------------------------------------------------------------------ study
def _study_context(res: Any, *, store_root: Any, config: Mapping[str, Any], config_path: str | None,
                   figure: Path, tables: Path) -> dict[str, Any]:
    """What ``study.md.j2`` shows, read off the :class:`~lnsr_viz.experiments.study.StudyResult`."""
    from ..experiments.study import CLAIMS, rank_correlation

    runs = res.runs
    rho, p, n = rank_correlation(runs["top_sensitivity"], runs["ood_accuracy"])
    main = res.claims[res.claims["role"] == "chosen"] if len(res.claims) else res.claims
    verdicts: dict[tuple[str, int], dict[str, Any]] = {}
    for row in main.to_dict("records"):
        verdicts.setdefault((row["claim"], int(row["train_size"])), row)
    claim_rows: dict[str, list[dict[str, Any]]] = {}
    for key in CLAIMS:
        rows = res.claims[res.claims["claim"] == key].to_dict("records") if len(res.claims) else []
        for row in rows:
            row["relative_effect"] = row["effect"] / row["baseline_mean"] if row["baseline_mean"] else math.nan
        claim_rows[key] = rows
    per_domain = res.paired[res.paired["metric"].isin(["accuracy", "roc_auc", "macro_f1", "ece"])
                            & (res.paired["domain"] != "summary") & (res.paired["role"] == "chosen")]
    return {
        "res": res, "claims": CLAIMS, "store_root": store_root, "config_path": config_path or "CONFIG",
        "model": config.get("model", "the model"), "train": dict(config.get("train") or {}),
        "sizes": sorted(runs["train_size"].unique()), "seeds": sorted(runs["seed"].unique()),
        "settings": list(pd.unique(runs["setting"])),
        "verdict_sizes": [int(s) for s in sorted(main["train_size"].unique())] if len(main) else [],
        "verdicts": verdicts, "claim_rows": claim_rows,
        "measures": {"top_sensitivity": "top-layer sensitivity", "accuracy": "in-domain accuracy",
                     "ood_accuracy": "out-of-domain accuracy"},
        "n_seeds": int(main["n_seeds"].min()) if len(main) else 0, "n_verdicts": len(main),
        "rho": rho, "p": p, "n_runs": n, "n_collapsed": int(runs["collapsed"].sum()),
        "figure_name": figure.name, "per_domain": per_domain, "tables": tables.as_posix(),
    }


def _cell(mean: float, sd: float, low: float, high: float) -> str:
    """'0.812 ± 0.013 [0.796, 0.828]' (mean ± sd over seeds [95% t-CI of the mean])."""
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(sd):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {sd:.3f} [{low:.3f}, {high:.3f}]"


def _diff_cell(diff: float, low: float, high: float, p_adj: float) -> str:
    """'+0.012 [-0.004, +0.028], p_adj 0.62' (paired difference from the baseline, CI, corrected p)."""
    if not math.isfinite(diff):
        return "–"
    ci = f" [{low:+.3f}, {high:+.3f}]" if math.isfinite(low) else ""
    p = f", p_adj {p_adj:.2g}" if math.isfinite(p_adj) else ""
    return f"{diff:+.3f}{ci}{p}"


def _evidence_context(res: Any, *, config: Mapping[str, Any], curves_figure: Path | None) -> dict[str, Any]:
    """What the step-budget (v2) sections of ``study.md.j2`` show: completeness, curves, methods, relations, ranking."""
    if not len(res.methods):
        return {"v2": False}
    from ..experiments.study import study_completeness

    completeness = study_completeness(res.runs, config)
    complete_all = bool(completeness["complete"].all())
    completeness["complete"] = completeness["complete"].map({True: "yes", False: "no"})
    plateau = res.plateau[res.plateau["method"] == "vanilla"].copy() if len(res.plateau) else res.plateau
    if len(plateau):
        plateau["budget"] = plateau["budget"].map(lambda b: f"{b:.0f}")
    ranking = res.ranking.copy()
    for col in ("our_rank", "published_rank"):
        if col in ranking:
            ranking[col] = ranking[col].map(lambda r: f"{r:g}")
    if "published" in ranking:
        ranking["published"] = ranking["published"].map(lambda v: f"{v:.2f}")
    agreement = res.ranking_agreement.copy()
    for col in ("train_size", "n_methods"):
        if col in agreement:
            agreement[col] = agreement[col].map(lambda v: f"{v:.0f}")
    train = dict(config.get("train") or {})
    if train.get("max_steps") is not None:
        train.pop("epochs", None)  # a step budget: the number of passes has no effect
    rows = []
    for r in res.methods.to_dict("records"):
        row = {"size": r["train_size"], "setting": r["setting"], "seeds": r["n_seeds"]}
        for metric, label in (("accuracy", "in-domain acc"), ("ood_accuracy", "OOD acc"), ("roc_auc", "in-domain AUC"),
                              ("ood_roc_auc", "OOD AUC")):
            row[label] = _cell(r[f"{metric}_mean"], r[f"{metric}_sd"], r[f"{metric}_ci_low"], r[f"{metric}_ci_high"])
            if metric in ("accuracy", "ood_accuracy"):
                row[f"{label} - vanilla"] = ("baseline" if r["verdict"] == "baseline" else
                                             _diff_cell(r[f"{metric}_diff"], r[f"{metric}_diff_ci_low"],
                                                        r[f"{metric}_diff_ci_high"], r[f"{metric}_p_adj"]))
        row["step time x vanilla"] = f"{r['cost_ratio']:.2f}" if math.isfinite(r["cost_ratio"]) else "–"
        row["verdict"] = r["verdict"]
        rows.append(row)
    first = res.methods.iloc[0]
    still = res.plateau[res.plateau["verdict"] == "still rising"] if len(res.plateau) else res.plateau
    kept = res.runs["kept_step"] / res.runs["steps"]
    devices = sorted({d for d in res.runs.get("device", pd.Series(dtype=str)).dropna() if d})
    return {
        "v2": True, "completeness": completeness, "complete_all": complete_all, "train": train,
        "protocol_notes": list(config.get("protocol_notes") or []),
        "methods_display": pd.DataFrame(rows), "methods_columns": {c: c for c in (rows[0] if rows else {})},
        "method_family": str(first["family"]), "method_test": str(first.get("test", "t")),
        "method_correction": str(first["correction"]), "n_comparisons": int(res.methods["n_comparisons"].max()),
        "plateau_vanilla": plateau, "still_rising": still, "curves_figure_name": curves_figure.name
        if curves_figure else None, "relations": res.relations, "ranking": ranking,
        "ranking_agreement": agreement, "kept_fraction_median": float(kept.median()),
        "kept_at_end": int((res.runs["kept_step"] == res.runs["steps"]).sum()), "devices": devices,
        "gpu_runs": int(res.runs.get("device", pd.Series(dtype=str)).astype(str).str.startswith("cuda").sum()),
    }


def write_study(store: str | os.PathLike[str] | Any, out: str | os.PathLike[str] = "docs/study.md", *,
                config: Mapping[str, Any] | None = None, config_path: str | None = None,
                figure: str | os.PathLike[str] | None = None, tables: str | os.PathLike[str] | None = None,
                result: Any = None) -> Path:
    """Write the study's markdown write-up, its static figure and its tidy tables; return the markdown path.

    Parameters
    ----------
    store : RunStore or path
        The sweep's run store (e.g. ``results/study``).
    out : path
        The markdown file (rendered from ``templates/study.md.j2``).
    config, config_path : optional
        The sweep configuration (shown in the write-up) and the file it came from.
    figure : path, optional
        The SVG (default: ``<out stem>-sensitivity-vs-ood.svg`` next to ``out``;
        :func:`lnsr_viz.viz.study_figures.write_sensitivity_svg`).
    tables : folder, optional
        Where the tidy CSV tables go (default: ``<store>/tables``).
    result : StudyResult, optional
        The claims already computed (default: :func:`lnsr_viz.experiments.study.study_claims` of ``store``).
    """
    from ..experiments.store import RunStore
    from ..experiments.study import study_claims
    from ..utils.io import atomic_write_csv, atomic_write_text
    from .study_figures import write_learning_curves_svg, write_sensitivity_svg

    store = store if hasattr(store, "load") else RunStore(store, read_only=True)
    res = result or study_claims(store)
    out = Path(out)
    figure = Path(figure) if figure else out.with_name(f"{out.stem}-sensitivity-vs-ood.svg")
    tables = Path(tables) if tables else Path(store.root) / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    names = ["runs", "chosen", "claims", "settings", "balance", "paired"]
    if len(res.methods):  # a step-budget study (v2): its further tables
        names += ["curves", "plateau", "methods", "relations", "ranking", "ranking_agreement"]
    for name in names:
        atomic_write_csv(tables / f"{name}.csv", getattr(res, name))
    write_sensitivity_svg(res.runs, figure)
    curves_figure = None
    if len(res.curves):
        curves_figure = out.with_name(f"{out.stem}-learning-curves.svg")
        write_learning_curves_svg(res.curves, curves_figure, methods=None)
    env = template_environment(markdown=True)
    context = _study_context(res, store_root=store.root, config=dict(config or {}), config_path=config_path,
                             figure=figure, tables=tables)
    context.update(_evidence_context(res, config=dict(config or {}), curves_figure=curves_figure))
    return atomic_write_text(out, env.get_template("study.md.j2").render(context))


# ------------------------------------------------------------------------------------------------ track record
def _ci_cell(value: float, low: float, high: float, spec: str) -> str:
    """'0.94 [0.82, 1.00]' with ``spec``; an en dash for NaN."""
    if not math.isfinite(value):
        return "–"
    return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def _track_lines(tab: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The write-up's summary lines and its lnsr_viz-vs-WeightWatcher lines, read off the track-record table."""
    from ..experiments.track_record import OUTCOMES

    def said(r: Any) -> str:
        return (f"`{r.predictor}` (rho {r.rho:+.2f} [{r.rho_ci_low:+.2f}, {r.rho_ci_high:+.2f}] with the "
                f"{OUTCOMES[r.outcome]}, ROC AUC {r.auc:.2f} [{r.auc_ci_low:.2f}, {r.auc_ci_high:.2f}])")

    summary = []
    for verdict, text in (("predictive", "Predicts over-fitting as it claims"),
                          ("opposite", "Points the opposite way from its claim"),
                          ("associated", "Associated with over-fitting (no claimed direction)")):
        rows = [said(r) for r in tab[tab["verdict"] == verdict].itertuples()]
        if rows:
            summary.append(f"{text}: " + "; ".join(rows) + ".")
    chance = [f"`{r.predictor}`" for r in tab[tab["verdict"] == "chance"].itertuples()]
    if chance:
        summary.append("Not better than chance on this population: " + ", ".join(chance) + ".")
    half = [said(r) for r in tab[(tab["verdict"] == "chance") & tab["direction"].notna()].itertuples()
            if r.rho_side == r.direction]
    if half:
        summary.append("Of these, some rank their claimed outcome beyond chance but do not separate over-fitted "
                       "from other models, so their verdict stays chance: " + "; ".join(half) + ".")
    ranked = [f"`{r.predictor}` ({r.rho:+.2f}, Holm p {md_number(r.rho_p_holm, 2)})" for r in tab.itertuples()
              if math.isfinite(r.rho_p_holm) and r.rho_p_holm < 0.05]
    summary.append("Rank correlations with their claimed outcome that survive the Holm correction: "
                   + (", ".join(ranked) if ranked else "none") + ".")
    others = [f"`{r.predictor}` with the {OUTCOMES[r.other_outcome]} ({r.rho_other:+.2f} [{r.rho_other_ci_low:+.2f}, "
              f"{r.rho_other_ci_high:+.2f}], Holm p {md_number(r.rho_other_p_holm, 2)})" for r in tab.itertuples()
              if math.isfinite(r.rho_other_p_holm) and r.rho_other_p_holm < 0.05]
    summary.append("Rank correlations with the *other* outcome (not the one the number claims) that survive the Holm "
                   "correction: " + (", ".join(others) if others else "none") + ".")
    versus = []
    for source, name in (("lnsr_viz", "lnsr_viz's findings"), ("weightwatcher", "WeightWatcher's metrics")):
        part = tab[(tab["source"] == source) & tab["auc"].notna()]
        if not len(part):
            versus.append(f"{name}: none could be measured.")
            continue
        best = part.loc[(part["auc"] - 0.5).abs().idxmax()]
        n_ok = int((part["verdict"] == "predictive").sum())
        versus.append(f"{name}: {n_ok} of {len(part)} predictive; the one farthest from chance in separating "
                      f"over-fitted models is `{best['predictor']}` (ROC AUC {best['auc']:.2f} "
                      f"[{best['auc_ci_low']:.2f}, {best['auc_ci_high']:.2f}]).")
    return summary, versus


def _track_context(tr: Any, *, stores: list[str], out: Path, n_boot: int, seed: int, preliminary: bool
                   ) -> dict[str, Any]:
    """What ``track_record.md.j2`` shows, read off a :class:`~lnsr_viz.experiments.track_record.TrackRecord`."""
    from ..experiments.track_record import OUTCOMES, WITHIN_NAMES, finding_table

    pop = tr.population.table
    known = pop[pop["run_id"].isin(set(pop["run_id"]) - set(tr.missing))]
    tab = tr.table.copy()
    claims = {1: "more over-fitting", -1: "less over-fitting"}
    tab["claim"] = [claims.get(d, "(no claimed sign)") if d == d and d is not None else "(no claimed sign)"
                    for d in tab["direction"]]
    tab["outcome_text"] = tab["outcome"].map(OUTCOMES)
    tab["rho_cell"] = [_ci_cell(r.rho, r.rho_ci_low, r.rho_ci_high, "+.2f") for r in tab.itertuples()]
    tab["auc_cell"] = [_ci_cell(r.auc, r.auc_ci_low, r.auc_ci_high, ".2f") for r in tab.itertuples()]
    tab["other_cell"] = [f"{OUTCOMES[r.other_outcome]}: " + _ci_cell(r.rho_other, r.rho_other_ci_low,
                                                                      r.rho_other_ci_high, "+.2f")
                         for r in tab.itertuples()]
    summary, versus = _track_lines(tr.table)
    pooled_rows, group_rows, changed = [], [], []
    if tr.within is not None:
        pooled = tab.copy()
        pooled["rho_cell"] = [_ci_cell(r.pooled_rho, r.pooled_rho_ci_low, r.pooled_rho_ci_high, "+.2f")
                              for r in pooled.itertuples()]
        pooled["auc_cell"] = [_ci_cell(r.pooled_auc, r.pooled_auc_ci_low, r.pooled_auc_ci_high, ".2f")
                              for r in pooled.itertuples()]
        pooled["within_verdict"] = pooled["verdict"]
        pooled_rows = pooled
        changed = [f"`{r.predictor}` ({r.pooled_verdict} pooled, {r.verdict} within each "
                   f"{WITHIN_NAMES.get(tr.within, tr.within)})"
                   for r in tab.itertuples() if r.pooled_verdict != r.verdict]
        g = tr.by_group.copy()
        g["outcome_text"] = g["outcome"].map(OUTCOMES)
        g["rho_cell"] = [_ci_cell(r.rho, r.rho_ci_low, r.rho_ci_high, "+.2f") for r in g.itertuples()]
        g["auc_cell"] = [_ci_cell(r.auc, r.auc_ci_low, r.auc_ci_high, ".2f") for r in g.itertuples()]
        g["group"] = g[tr.within].astype(int) if tr.within == "train_size" else g[tr.within]
        group_rows = g
    ft = finding_table(tr, population="")
    finding_rows = [{"finding": r.finding, "verdict": r.verdict,
                     "effect": ("descriptive by design (it never warns); it now carries its track record."
                                if r.finding == "drift" else
                                {"predictive": "keeps its verdict, with its track record.",
                                 "chance": "a warning from it is worded as descriptive.",
                                 "opposite": "a warning from it is corrected."}[r.verdict])}
                    for r in ft.itertuples()]
    th = tr.thresholds
    better = th[(th["chosen_balanced_accuracy_check"] > th["diagnose_balanced_accuracy_check"] + 0.1)
                & th["predictor"].isin(ft.loc[ft["verdict"] == "predictive", "finding"])]
    decision = ("No finding's chosen cut beats diagnose's own rule by more than 0.1 balanced accuracy on the check "
                "part while its track record is predictive, so diagnose's thresholds are kept.") if not len(better) \
        else ("On the check part the chosen cut beats diagnose's rule by more than 0.1 balanced accuracy for "
              + ", ".join(f"`{p}`" for p in better["predictor"]) + ". diagnose's thresholds are kept all the same, "
              "and the cuts are reported here: a cut is chosen against this population's over-fitted label, a "
              "held-out drop fixed for this regime (small training sets that nearly every model fits), so it "
              "would carry that regime into every user's diagnosis; and the generalisation gap's cut is close to "
              "the label's own definition (the gap is measured on half of the test sentences that define the "
              "drop), so its check-part score is largely by construction.")
    train_acc = known["train_accuracy"].dropna()
    return {
        "tr": tr, "stores": stores, "out_name": out.as_posix(), "preliminary": preliminary, "summary": summary,
        "versus": versus, "main": tab, "thresholds": th, "threshold_decision": decision,
        "finding_rows": finding_rows, "n_boot": n_boot, "seed": seed, "n_tests": 3 * len(tab),
        "pooled": pooled_rows, "by_group": group_rows, "changed": changed,
        "within_name": WITHIN_NAMES.get(tr.within, tr.within) if tr.within else None,
        "group_over": (known.groupby(tr.within)["over_fitted"].agg(["sum", "size"]).reset_index()
                       .rename(columns={tr.within: "group"}).to_dict("records") if tr.within else []),
        "store_counts": known.groupby("store").size().reset_index(name="n").to_dict("records"),
        "setting_counts": known.groupby("setting").size().reset_index(name="n").to_dict("records"),
        "sizes": sorted(int(s) for s in known["train_size"].dropna().unique()),
        "steps": sorted(int(s) for s in known["max_steps"].dropna().unique()),
        "noise_counts": (known[known["label_noise"] > 0].groupby("label_noise").size().reset_index(name="n")
                         .to_dict("records") if "label_noise" in known else []),
        "protocols": max(1, len(known.groupby(["store", "max_steps"], dropna=False))),
        "problems": tr.population.problems.to_dict("records"),
        "ood": ["amazon", "tweets", "nyt"], "overfit_drop": tr.population.overfit_drop,
        "n_over": int(known["over_fitted"].sum()), "n_selection": int((known["part"] == "selection").sum()),
        "n_check": int((known["part"] == "check").sum()),
        "train_acc_median": float(train_acc.median()) if len(train_acc) else math.nan,
        "train_acc_range": (f"{train_acc.min():.2f}" if train_acc.min() == train_acc.max()
                            else f"{train_acc.min():.2f} to {train_acc.max():.2f}") if len(train_acc) else "–",
    }


def write_track_record(tr: Any, out: str | os.PathLike[str] = "docs/diagnose.md", *,
                       tables: str | os.PathLike[str] | None = None, n_boot: int = 2000, seed: int = 0,
                       preliminary: bool = False) -> Path:
    """Write the track-record write-up (``docs/diagnose.md``, from ``templates/track_record.md.j2``) of a
    :class:`~lnsr_viz.experiments.track_record.TrackRecord`, and with ``tables`` its tidy CSV tables
    (``population``, ``track_record``, ``thresholds``, ``problems``); return the markdown path."""
    from ..utils.io import atomic_write_csv, atomic_write_text

    out = Path(out)
    if tables is not None:
        tables = Path(tables)
        tables.mkdir(parents=True, exist_ok=True)
        for name, frame in (("population", tr.population.table), ("track_record", tr.table),
                            ("track_record_by_group", tr.by_group), ("thresholds", tr.thresholds),
                            ("problems", tr.population.problems)):
            atomic_write_csv(tables / f"{name}.csv", frame)
    context = _track_context(tr, stores=list(tr.population.stores), out=out, n_boot=n_boot, seed=seed,
                             preliminary=preliminary)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out, template_environment(markdown=True).get_template("track_record.md.j2")
                             .render(context))

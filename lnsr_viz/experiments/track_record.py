"""The track record of :func:`~lnsr_viz.experiments.diagnose.diagnose`: does each finding predict over-fitting?

Every run made with ``analysis: true`` stores the numbers behind each finding of ``diagnose`` (its ``diagnosis``
table, measured on the run's 100 training sentences against 300 of its in-domain test sentences, against the
pre-trained base) and WeightWatcher's per-layer metrics of its weights (its ``weightwatcher`` table), beside what
actually happened to the model (``metrics.csv``). This module puts them side by side:

* :func:`population_table`: one row per fine-tuned run of one or more run stores: each finding's value and whether
  ``diagnose`` flagged it (its raw rule, before any track record), WeightWatcher's summary metrics (the mean over
  layers, as ``WeightWatcher.get_summary`` computes it: :func:`weightwatcher_summary`), and the outcomes:

  - ``heldout_drop`` = train accuracy (diagnose's, on the training set) - in-domain test accuracy (600 sentences);
  - ``ood_drop`` = in-domain test accuracy - mean accuracy over the out-of-domain sets;
  - ``over_fitted`` = ``heldout_drop >= overfit_drop`` (:data:`OVERFIT_DROP`, 0.35, fixed before any finding was
    compared with it; see the constant);
  - ``part``: the fixed split, ``selection`` or ``check``, from a hash of the run key (:func:`split_of`).

* :func:`track_record`: for every finding and every WeightWatcher metric, Spearman's rho with the outcome it claims
  to predict and ROC AUC for over-fitted vs not, with bootstrap 95% CIs and Holm-adjusted p-values over the whole
  table (:mod:`lnsr_viz.analysis.validity`), a verdict (``predictive``, ``opposite``, ``chance``). When the
  population mixes training-set sizes these are measured *within* each size and combined
  (:func:`~lnsr_viz.analysis.validity.stratified_association`): a larger training set lowers the held-out drop and
  moves most numbers too, so pooled across sizes a number can look predictive by telling the sizes apart; the
  pooled numbers are kept beside them (``pooled_*``) and each size's own in ``by_group``. Then thresholds
  chosen on the ``selection`` part (Youden's J) checked on the ``check`` part beside ``diagnose``'s own rule. It
  refuses fewer than :data:`MIN_MODELS` models with known outcomes, names the models whose outcomes are missing and
  the models WeightWatcher could not analyse, and goes on with the rest.

* :func:`finding_table` / :func:`load_track_record`: the small per-finding table ``diagnose`` reads (the packaged
  ``lnsr_viz/data/track_record.csv`` by default) to attach each finding's track record and to word a finding whose
  record does not beat chance as descriptive.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MIN_MODELS", "OVERFIT_DROP", "FINDING_CLAIMS", "WW_METRICS", "Population", "TrackRecord", "split_of",
           "weightwatcher_summary", "weightwatcher_summaries", "population_table", "track_record", "finding_table",
           "load_track_record", "PACKAGED_TRACK_RECORD", "track_record_sentence"]

#: Fewest models with known outcomes for which a track record is claimed.
MIN_MODELS = 20
#: The over-fitted label: a held-out accuracy drop (train - in-domain test accuracy) of at least this. Set from the
#: outcome alone before any finding was compared with it: on study v2's first 22 fine-tuned runs at 100 examples
#: (train accuracy 0.99-1.0 in nearly all) the drop ran from 0.32 to 0.43 with median 0.36; 0.35 marks the more
#: over-fitted half ("35 points worse on new in-domain sentences than on its own training sentences").
OVERFIT_DROP = 0.35
#: Each finding: the column of its number, the outcome it claims to predict, and the claimed sign (+1: a larger
#: number means more over-fitting; -1: a smaller one does).
FINDING_CLAIMS: dict[str, dict[str, Any]] = {
    "generalisation_gap": {"column": "generalisation_gap", "outcome": "heldout_drop", "direction": 1},
    "loss_gap": {"column": "loss_gap", "outcome": "heldout_drop", "direction": 1},
    "stability_vs_base": {"column": "stability_ratio", "outcome": "ood_drop", "direction": 1},
    "calibration": {"column": "calibration_ece", "outcome": "heldout_drop", "direction": 1},
    "drift": {"column": "drift_min_cka", "outcome": "ood_drop", "direction": -1},
}
#: WeightWatcher's summary metrics (the means ``get_summary`` returns, of the columns the runs store) and the sign
#: WeightWatcher's papers give them (smaller = better-trained layers, better test accuracy); ``stable_rank`` has
#: no claimed sign.
WW_METRICS: dict[str, int | None] = {"alpha": 1, "alpha_weighted": 1, "log_alpha_norm": 1, "log_norm": 1,
                                     "log_spectral_norm": 1, "stable_rank": None}
OUTCOMES = {"heldout_drop": "held-out accuracy drop", "ood_drop": "out-of-domain drop"}
#: Words for the columns a track record can be measured within.
WITHIN_NAMES = {"train_size": "training-set size", "max_steps": "step budget", "store": "run store"}
#: The track-record table shipped with the package (read by ``diagnose`` by default).
PACKAGED_TRACK_RECORD = "track_record.csv"


def split_of(run_id: str) -> str:
    """The fixed part of a run: ``selection`` when the first byte of sha256(run id) is even, else ``check``."""
    return "selection" if hashlib.sha256(str(run_id).encode("utf-8")).digest()[0] % 2 == 0 else "check"


def weightwatcher_summary(details: pd.DataFrame) -> dict[str, float]:
    """The mean over layers of each WeightWatcher metric, as ``WeightWatcher.get_summary(details)`` computes it
    (``details[metric].mean()``, NaN layers skipped); NaN for a metric the frame lacks."""
    out = {}
    for metric in WW_METRICS:
        if metric in details.columns:
            out[metric] = float(pd.to_numeric(details[metric], errors="coerce").mean())
        else:
            out[metric] = math.nan
    return out


def weightwatcher_summaries(models: Mapping[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """WeightWatcher's summary of each model (``analyze()`` with its defaults): ``(table, problems)``.

    One row per model that WeightWatcher could analyse (``model`` and the :data:`WW_METRICS`); a model it fails on
    (an exception, or no layer with a finite alpha) is named in ``problems`` and skipped.
    """
    import contextlib
    import io
    import logging

    from ..utils.extras import require

    ww = require("weightwatcher", "the WeightWatcher metrics of a track record")
    logging.getLogger("weightwatcher").setLevel(logging.CRITICAL + 1)  # failures are reported in problems
    rows, problems = [], []
    for name, net in models.items():
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                details = ww.WeightWatcher(model=net).analyze()
        except Exception as exc:  # noqa: BLE001 - any failure of the third-party analysis: report, go on
            problems.append(f"{name}: WeightWatcher could not analyse it ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'})")
            continue
        summary = weightwatcher_summary(details)
        if not math.isfinite(summary["alpha"]):
            problems.append(f"{name}: WeightWatcher found no layer with a finite alpha")
            continue
        rows.append({"model": name, **summary})
    return pd.DataFrame(rows, columns=["model", *WW_METRICS]), problems


# ------------------------------------------------------------------------------------------------ population
@dataclass
class Population:
    """The population table (one row per fine-tuned run) and what could not be used (``problems``: ``store,
    run_id, problem``)."""

    table: pd.DataFrame
    problems: pd.DataFrame
    stores: list[str] = field(default_factory=list)
    overfit_drop: float = OVERFIT_DROP


def _diagnosis_numbers(diag: pd.DataFrame) -> dict[str, Any]:
    values = diag[diag["quantity"] == "value"].drop_duplicates("finding").set_index("finding")
    row: dict[str, Any] = {}
    for finding, claim in FINDING_CLAIMS.items():
        row[claim["column"]] = float(values.loc[finding, "value"]) if finding in values.index else math.nan
        row[f"{finding}_flagged"] = (bool(values.loc[finding, "severity"] == "warning") if finding in values.index
                                     else None)
    metrics = diag[diag["finding"] == "metrics"].set_index("quantity")["value"]
    row["train_accuracy"] = float(metrics["train.accuracy"]) if "train.accuracy" in metrics.index else math.nan
    return row


def _outcomes(run: Any, row: dict[str, Any]) -> list[str]:
    """Fill the outcome columns of ``row`` from the run's metrics; return what is missing."""
    data = run.config.get("data", {})
    in_domain = data.get("in_domain")
    acc = run.metrics[run.metrics["metric"] == "accuracy"].set_index("domain")["value"]
    ood = [d for d in data.get("evaluation", acc.index) if d != in_domain]
    missing = []
    row["test_accuracy"] = float(acc[in_domain]) if in_domain in acc.index else math.nan
    if not math.isfinite(row["test_accuracy"]):
        missing.append(f"in-domain ({in_domain}) test accuracy")
    ood_values = [float(acc[d]) for d in ood if d in acc.index]
    row["ood_accuracy"] = float(np.mean(ood_values)) if ood_values and len(ood_values) == len(ood) else math.nan
    if not math.isfinite(row["ood_accuracy"]):
        missing.append(f"out-of-domain accuracy ({', '.join(d for d in ood if d not in acc.index) or 'no sets'})")
    if not math.isfinite(row["train_accuracy"]):
        missing.append("train accuracy (diagnosis table)")
    row["heldout_drop"] = row["train_accuracy"] - row["test_accuracy"]
    row["ood_drop"] = row["test_accuracy"] - row["ood_accuracy"]
    return missing


def _run_row(store_name: str, run: Any, overfit_drop: float, problems: list[dict[str, str]]) -> dict[str, Any] | None:
    cfg = run.config
    diag = run.tables.get("diagnosis")
    if diag is None or not len(diag):
        problems.append({"store": store_name, "run_id": run.run_id,
                         "problem": "no stored diagnosis (made without analysis: true); left out"})
        return None
    row: dict[str, Any] = {"store": store_name, "run_id": run.run_id, "method": cfg.get("method"),
                           "setting": cfg.get("label") or cfg.get("method"), "seed": cfg.get("seed"),
                           "train_size": cfg.get("data", {}).get("train_size"),
                           "max_steps": cfg.get("train", {}).get("max_steps"),
                           "label_noise": float(cfg.get("data", {}).get("label_noise", 0.0)),
                           "part": split_of(run.run_id)}
    row.update(_diagnosis_numbers(diag))
    ww = run.tables.get("weightwatcher")
    summary = weightwatcher_summary(ww) if ww is not None and len(ww) else {m: math.nan for m in WW_METRICS}
    if not math.isfinite(summary["alpha"]):
        problems.append({"store": store_name, "run_id": run.run_id,
                         "problem": "WeightWatcher could not analyse it (no layer with a finite alpha stored); its "
                                    "WeightWatcher metrics are left empty"})
    row.update({f"ww_{k}": v for k, v in summary.items()})
    missing = _outcomes(run, row)
    if missing:
        problems.append({"store": store_name, "run_id": run.run_id,
                         "problem": "outcome missing: " + "; ".join(missing)})
    drop = row["heldout_drop"]
    row["over_fitted"] = (float(drop >= overfit_drop) if math.isfinite(drop) else math.nan)
    return row


def population_table(stores: Sequence[str | os.PathLike[str] | Any] | str | os.PathLike[str] | Any, *,
                     overfit_drop: float = OVERFIT_DROP) -> Population:
    """The population of fine-tuned runs of one or more run stores (see the module docstring for the columns).

    Runs without a stored diagnosis (the pre-trained probe, runs made without ``analysis: true``) are left out;
    fine-tuned ones among them, runs with missing outcomes and runs WeightWatcher could not analyse are listed in
    ``problems``.
    """
    from .store import RunStore

    if isinstance(stores, str | os.PathLike) or hasattr(stores, "load"):
        stores = [stores]
    if not stores:
        raise ValueError("population_table needs at least one run store (e.g. results/study-v2).")
    opened = []
    for s in stores:  # every store checked before any is read
        if hasattr(s, "load"):
            opened.append(s)
            continue
        if not (Path(s) / "runs").is_dir():
            raise ValueError(f"no run store at {os.fspath(s)!r} (no runs/ folder): pass the folder of a sweep's "
                             "results, e.g. results/study-v2.")
        opened.append(RunStore(s, read_only=True))
    rows: list[dict[str, Any]] = []
    problems: list[dict[str, str]] = []
    for store in opened:
        name = os.fspath(store.root)
        listed = store.list_runs()
        for run_id, method in zip(listed["run_id"], listed.get("method", pd.Series(index=listed.index)),
                                  strict=True):
            if method == "pretrained":
                continue
            row = _run_row(name, store.load(run_id), overfit_drop, problems)
            if row is not None:
                rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values(["store", "setting", "seed", "run_id"], kind="stable").reset_index(drop=True)
    return Population(table, pd.DataFrame(problems, columns=["store", "run_id", "problem"]),
                      [os.fspath(s.root) for s in opened], float(overfit_drop))


# ------------------------------------------------------------------------------------------------ track record
@dataclass
class TrackRecord:
    """The result of :func:`track_record`."""

    #: one row per predictor (finding or WeightWatcher metric): rho, AUC, CIs, p-values (raw and Holm), verdict
    table: pd.DataFrame
    #: one row per predictor: the rule chosen on the selection part, checked on the check part, beside diagnose's
    thresholds: pd.DataFrame
    population: Population
    #: the models left out because an outcome is missing (run ids)
    missing: list[str] = field(default_factory=list)
    n_models: int = 0
    #: the column the main table's numbers were measured within (``"train_size"``), or None when pooled (the
    #: population has one value of it, or ``within=None`` was asked for)
    within: str | None = None
    #: one row per value of ``within`` and predictor: the same measures on that group alone (empty when pooled)
    by_group: pd.DataFrame = field(default_factory=pd.DataFrame)


def _predictors() -> list[dict[str, Any]]:
    out = [{"predictor": finding, "source": "lnsr_viz", "column": c["column"], "outcome": c["outcome"],
            "direction": c["direction"]} for finding, c in FINDING_CLAIMS.items()]
    out += [{"predictor": f"ww_{metric}", "source": "weightwatcher", "column": f"ww_{metric}",
             "outcome": "heldout_drop", "direction": sign} for metric, sign in WW_METRICS.items()]
    return out


def _youden(x: np.ndarray, y: np.ndarray, direction: int) -> float:
    """The cut maximising sensitivity + specificity - 1 for "over-fitted when direction * x >= direction * cut"."""
    from sklearn.metrics import roc_curve

    if len(np.unique(y)) < 2:
        return math.nan
    fpr, tpr, cuts = roc_curve(y, direction * x)
    finite = np.isfinite(cuts)
    best = int(np.argmax((tpr - fpr)[finite]))
    return float(direction * cuts[finite][best])


def _balanced(y: np.ndarray, flagged: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    if len(y) == 0 or len(np.unique(y)) < 2:
        return math.nan
    return float(balanced_accuracy_score(y.astype(int), flagged.astype(int)))


def _threshold_rows(table: pd.DataFrame, predictors: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for p in predictors:
        d = p["direction"] or 1
        ok = table[p["column"]].notna() & table["over_fitted"].notna()
        sel, chk = table[ok & (table["part"] == "selection")], table[ok & (table["part"] == "check")]
        cut = _youden(sel[p["column"]].to_numpy(float), sel["over_fitted"].to_numpy(int), d)
        row = {"predictor": p["predictor"], "n_selection": len(sel), "n_check": len(chk), "chosen_cut": cut,
               "chosen_rule": (f"over-fitted when {p['column']} {'>=' if d > 0 else '<='} {cut:.4g}"
                               if math.isfinite(cut) else "none (one class in the selection part)")}
        for part, frame in (("selection", sel), ("check", chk)):
            x, y = frame[p["column"]].to_numpy(float), frame["over_fitted"].to_numpy(int)
            row[f"chosen_balanced_accuracy_{part}"] = (_balanced(y, d * x >= d * cut) if math.isfinite(cut)
                                                       else math.nan)
            flag_col = f"{p['predictor']}_flagged"
            if flag_col in frame:
                flags = frame[flag_col].astype(float).to_numpy()
                row[f"diagnose_flagged_{part}"] = float(np.nanmean(flags)) if len(flags) else math.nan
                row[f"diagnose_balanced_accuracy_{part}"] = _balanced(y, flags >= 0.5)
            else:
                row[f"diagnose_flagged_{part}"] = row[f"diagnose_balanced_accuracy_{part}"] = math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def track_record(population: Population | pd.DataFrame, *, min_models: int = MIN_MODELS, n_boot: int = 2000,
                 seed: int = 0, confidence: float = 0.95, within: str | None = "train_size") -> TrackRecord:
    """Each finding's and each WeightWatcher metric's track record on a population (see the module docstring).

    ``within``: a column of the population (default the training-set size); when it holds more than one value the
    rank correlations and AUCs are measured within each value and combined, and the verdicts follow those; the
    pooled ones are kept as ``pooled_*`` columns. ``None`` pools every model.

    Raises
    ------
    ValueError
        Fewer than ``min_models`` models with known outcomes (the message says how many there are and how many
        are needed).
    """
    from ..analysis.stats import holm_adjust
    from ..analysis.validity import association, chance_verdict, interval_side, stratified_association
    from ..utils.validation import check_positive_int

    min_models = check_positive_int("min_models", min_models, owner="track_record")
    pop = population if isinstance(population, Population) else Population(
        population, pd.DataFrame(columns=["store", "run_id", "problem"]))
    table = pop.table
    needed = ["heldout_drop", "ood_drop", "over_fitted"]
    if len(table) and any(c not in table for c in needed):
        raise ValueError(f"the population table lacks the outcome column(s) "
                         f"{[c for c in needed if c not in table]}; build it with population_table(stores).")
    known = table[table[needed].notna().all(axis=1)] if len(table) else table
    missing = [] if not len(table) else sorted(set(table["run_id"]) - set(known["run_id"]))
    if missing:
        warnings.warn(f"outcomes missing for {len(missing)} model(s), left out of the track record: "
                      f"{', '.join(missing)}", UserWarning, stacklevel=2)
    if len(known) < min_models:
        raise ValueError(f"a track record needs at least {min_models} models with known outcomes; the population "
                         f"has {len(known)}" + (f" ({len(missing)} more without outcomes: {', '.join(missing)})"
                                                if missing else "") +
                         f". Add {min_models - len(known)} or more runs made with analysis: true (e.g. python -m "
                         "lnsr_viz sweep configs/diagnose-population.yaml) and pass their store too.")
    if within is not None and within not in known:
        raise ValueError(f"track_record: within={within!r} is not a column of the population table; pass one of its "
                         f"columns (e.g. 'train_size') or within=None to pool every model.")
    groups = None
    if within is not None and known[within].nunique(dropna=True) > 1:
        if known[within].isna().any():
            raise ValueError(f"track_record: {int(known[within].isna().sum())} model(s) have no {within!r}; "
                             f"measure within a column every model has, or pass within=None.")
        groups = known[within].to_numpy()
    predictors = [p for p in _predictors() if p["column"] in known]
    kw = {"n_boot": n_boot, "seed": seed, "confidence": confidence}

    def measure(frame: pd.DataFrame, column: str, outcome: str, grouped: np.ndarray | None) -> Any:
        if grouped is None:
            return association(frame[column], frame[outcome], frame["over_fitted"], **kw)
        return stratified_association(frame[column], frame[outcome], frame["over_fitted"], grouped, **kw)

    rows, by_group = [], []
    for p in predictors:
        head = {k: p[k] for k in ("predictor", "source", "outcome", "direction")}
        other = "ood_drop" if p["outcome"] == "heldout_drop" else "heldout_drop"
        a = measure(known, p["column"], p["outcome"], groups)
        b = measure(known, p["column"], other, groups)
        row = {**head, **a.to_dict(), "verdict": chance_verdict(a, p["direction"]),
               "rho_side": interval_side(a.rho_ci_low, a.rho_ci_high, 0.0),
               "auc_side": interval_side(a.auc_ci_low, a.auc_ci_high, 0.5), "other_outcome": other,
               "rho_other": b.rho,
               "rho_other_ci_low": b.rho_ci_low, "rho_other_ci_high": b.rho_ci_high, "rho_other_p": b.rho_p}
        if groups is not None:
            pooled = measure(known, p["column"], p["outcome"], None)
            row.update({f"pooled_{k}": v for k, v in pooled.to_dict().items() if k not in ("n", "n_positive")})
            row["pooled_verdict"] = chance_verdict(pooled, p["direction"])
            for value, frame in known.groupby(within, sort=True):
                g = measure(frame, p["column"], p["outcome"], None)
                by_group.append({within: value, **head, **g.to_dict(), "verdict": chance_verdict(g, p["direction"])})
        rows.append(row)
    out = pd.DataFrame(rows)
    flat = np.concatenate([out["rho_p"], out["auc_p"], out["rho_other_p"]]).astype(float)
    adjusted = holm_adjust(flat)
    k = len(out)
    out["rho_p_holm"], out["auc_p_holm"] = adjusted[:k], adjusted[k:2 * k]
    out["rho_other_p_holm"] = adjusted[2 * k:]
    return TrackRecord(out, _threshold_rows(known, predictors), pop, missing, len(known),
                       within if groups is not None else None, pd.DataFrame(by_group))


# ------------------------------------------------------------------------------------------------ for diagnose
def finding_table(record: TrackRecord, *, population: str) -> pd.DataFrame:
    """The per-finding rows of a track record that ``diagnose`` reads (``population`` says in words where the
    models came from, e.g. ``"lnsr_viz study v2, MiniLM on 100 movie sentences"``).

    Its AUC is in the claimed direction (for ``drift``, whose claimed sign is -1, it is 1 - AUC of the raw number),
    so above 0.5 always means "works as the finding claims"; rho stays the raw rank correlation."""
    rows = record.table[record.table["source"] == "lnsr_viz"]
    cols = ["predictor", "outcome", "direction", "n", "n_positive", "rho", "rho_ci_low", "rho_ci_high", "auc",
            "auc_ci_low", "auc_ci_high", "auc_p_holm", "verdict"]
    out = rows[cols].rename(columns={"predictor": "finding", "n_positive": "n_over_fitted"}).copy()
    flip = out["direction"] < 0  # AUC in the claimed direction: a smaller number taken as the sign
    low, high = out["auc_ci_low"].copy(), out["auc_ci_high"].copy()
    out.loc[flip, "auc"] = 1.0 - out.loc[flip, "auc"]
    out.loc[flip, "auc_ci_low"], out.loc[flip, "auc_ci_high"] = 1.0 - high[flip], 1.0 - low[flip]
    out["overfit_drop"] = record.population.overfit_drop
    out["population"] = population
    out["within"] = record.within or ""
    return out.reset_index(drop=True)


def load_track_record(source: str | os.PathLike[str] | pd.DataFrame | None = None) -> pd.DataFrame:
    """A per-finding track-record table (:func:`finding_table`): the packaged one by default, or a CSV / frame."""
    if isinstance(source, pd.DataFrame):
        table = source
    elif source is None:
        from importlib.resources import files

        table = pd.read_csv(files("lnsr_viz.data").joinpath(PACKAGED_TRACK_RECORD).open("r", encoding="utf-8"))
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no track-record table at {str(path)!r}: write one with `python -m lnsr_viz "
                                    "track-record STORE --finding-table PATH`, or pass track_record=None.")
        table = pd.read_csv(path)
    need = {"finding", "outcome", "n", "auc", "auc_ci_low", "auc_ci_high", "rho", "rho_ci_low", "rho_ci_high",
            "verdict", "population", "overfit_drop"}
    if need - set(table.columns):
        raise ValueError(f"the track-record table lacks the column(s) {sorted(need - set(table.columns))}; write it "
                         "with lnsr_viz.experiments.track_record.finding_table.")
    return table


def track_record_sentence(row: Mapping[str, Any]) -> str:
    """One sentence: how the finding's number did on its population (``row``: one row of :func:`finding_table`)."""
    verdict = {"predictive": "better than chance", "opposite": "the opposite way round from what the finding says",
               "chance": "not better than chance"}.get(str(row["verdict"]), str(row["verdict"]))
    outcome = OUTCOMES.get(str(row["outcome"]), str(row["outcome"]))
    within = row.get("within")
    within = "" if not isinstance(within, str) or not within else (
        f", compared within each {WITHIN_NAMES.get(within, within)},")
    return (f"Track record: on {int(row['n'])} runs ({row['population']}){within} this number separated over-fitted "
            f"models "
            f"(held-out accuracy drop >= {float(row['overfit_drop']):.2f}) with ROC AUC {float(row['auc']):.2f} "
            f"[{float(row['auc_ci_low']):.2f}, {float(row['auc_ci_high']):.2f}], and its rank correlation with the "
            f"{outcome} was {float(row['rho']):+.2f} [{float(row['rho_ci_low']):+.2f}, "
            f"{float(row['rho_ci_high']):+.2f}] (95% bootstrap CIs): {verdict}.")

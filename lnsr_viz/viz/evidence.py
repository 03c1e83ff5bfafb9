"""The stored evidence the notebooks open on: committed and demo runs, read without training or a checkpoint.

Notebooks 02-05 call this module first. Each helper reads runs that are already stored, says where they came from
and what is missing, and trains nothing (only an explicit ``train=True`` does, and the notebooks leave it off):

* :func:`check_store`: a run store's complete runs, and which folders are damaged and why (they are skipped), or
  that the store is missing;
* :func:`comparison_evidence` (notebook 02): the demo's comparison from the demo's store (``make demo``) when it holds
  every run, else the same runs from the committed study (``results/study`` stores the demo's exact setting: same
  run keys but for the sweep's setting label), with the estimated time to train what is missing;
* :func:`stored_theory` (notebook 03): the theory quantities every committed study-v2 run stored (Jacobian norm,
  small-noise identity, Hessian trace) beside the gaps of :func:`~lnsr_viz.experiments.theory_runs.theory_table`;
* :func:`diagnosis_evidence` (notebook 04): a live diagnosis of a checkpoint (yours, or the one ``make demo`` kept,
  checked against its run's record), else a committed run's stored diagnosis, profile, drift, attributions and
  representations, as the same :class:`~lnsr_viz.experiments.diagnose.Diagnosis` object;
* :func:`methods_evidence` (notebook 05): every method of the committed study v2 (its chosen setting per method),
  with measured and benchmarked costs, and which methods and sizes the store does not hold yet, with an estimate.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .runtime import comparison_settings, project_root, quick_mode, results_dir

__all__ = ["StoreCheck", "check_store", "ComparisonEvidence", "comparison_evidence", "stored_theory",
           "DiagnosisEvidence", "diagnosis_evidence", "verify_checkpoint", "MethodsEvidence", "methods_evidence",
           "plot_stored_attributions", "train_missing_methods"]

_SKIPPED = re.compile(r"Skipping run folder '(?P<path>[^']+)': (?P<problem>.*?)\. Delete the folder")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


# ------------------------------------------------------------------------------------------------------------------
# stores
@dataclass
class StoreCheck:
    """What a run store holds: its complete runs (``list_runs``), its damaged folders and why, or that it is missing."""

    path: Path
    runs: pd.DataFrame
    damaged: list[tuple[str, str]] = field(default_factory=list)
    missing: bool = False

    @property
    def ok(self) -> bool:
        """True when the store exists and holds at least one complete run."""
        return not self.missing and len(self.runs) > 0

    def note(self) -> str:
        """One or two sentences: how many runs, which folders were skipped and why (empty when all is well)."""
        if self.missing:
            return f"no run store at {self.path} (missing: check out the committed results or run the sweep)."
        lines = []
        if self.damaged:
            lines.append(f"{len(self.damaged)} damaged run folder(s) in {self.path} skipped: " + "; ".join(
                f"{name} ({problem})" for name, problem in self.damaged) + ". The other runs are used.")
        if not len(self.runs):
            lines.append(f"{self.path} holds no complete run.")
        return " ".join(lines)


def check_store(path: str | os.PathLike[str]) -> StoreCheck:
    """Open ``path`` read-only and list its complete runs; damaged folders are reported (which and why), not used."""
    from ..experiments.store import CorruptRunWarning, RunStore

    path = Path(path)
    if not (path / "runs").is_dir():
        return StoreCheck(path, pd.DataFrame(columns=["run_id"]), missing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CorruptRunWarning)
        runs = RunStore(path, read_only=True).list_runs()
    damaged = []
    for w in caught:
        if issubclass(w.category, CorruptRunWarning):
            m = _SKIPPED.search(str(w.message))
            damaged.append((Path(m["path"]).name, m["problem"]) if m else ("?", str(w.message)))
    return StoreCheck(path, runs, damaged=damaged)


def _quiet_store(path: Path) -> Any:
    """A read-only RunStore whose damaged-run warnings (already reported by :func:`check_store`) are silenced."""
    from ..experiments.store import RunStore

    warnings.filterwarnings("ignore", message=r"Skipping run folder .*" + re.escape(str(path)))
    return RunStore(path, read_only=True)


def _drop_label(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k != "label"}


# ------------------------------------------------------------------------------------------------------------------
# notebook 02: the comparison
@dataclass
class ComparisonEvidence:
    """The comparison a notebook shows and where it came from.

    ``result`` is None only when no store holds the runs (then ``note`` says so and what training would cost).
    ``missing`` lists the runs of the requested setting that its own store lacks (``"method seed s"``).
    """

    result: Any
    source: str
    note: str
    missing: list[str] = field(default_factory=list)
    estimate_seconds: float = math.nan
    store: Path | None = None


def _jobs(config: Any) -> list[Any]:
    from ..experiments.runs import Job

    return [Job("pretrained", {}, None)] + [Job(m, config.method_params.get(m, {}), s)
                                            for m in config.methods for s in config.seeds]


def _collected(store: Any, rows: list[dict[str, Any]], config: Any, protocol: Any) -> Any:
    from ..experiments.runs import collect_comparison, comparison_config, label_balance

    runs = pd.DataFrame(rows, columns=["run_id", "method", "seed", "cached", "seconds", "collapsed"])
    runs["seed"] = runs["seed"].astype("Int64")
    result = collect_comparison(store, runs, baseline=config.baseline, methods=list(config.methods))
    result.config = comparison_config(config, protocol)
    result.label_balance = label_balance(protocol)
    result.timings = {"total_seconds": 0.0, "trained_runs": 0, "cached_runs": len(runs)}
    return result


def _rows(store: Any, jobs: Sequence[Any], ids: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for job, run_id in zip(jobs, ids, strict=True):
        extra = store.load(run_id).extra
        rows.append({"run_id": run_id, "method": job.name, "seed": job.seed, "cached": True,
                     "seconds": extra.get("seconds", math.nan), "collapsed": extra.get("collapsed")})
    return rows


def comparison_evidence(settings: Mapping[str, Any] | None = None, *, quick: bool | None = None,
                        train: bool = False, study: str = "study") -> ComparisonEvidence:
    """The demo's comparison without training: from its own store if complete, else from the committed study.

    ``settings`` (default :func:`~lnsr_viz.viz.runtime.comparison_settings`) names the runs and their store. When that
    store lacks some, the committed ``results/<study>`` is searched for the demo's runs by key (the sweep's setting
    label aside, the keys are the demo's own); the note says which were missing, where the runs shown come from, and
    how long training the missing ones would take (the stored runs' measured seconds). ``train=True`` trains them
    (:func:`~lnsr_viz.experiments.runs.compare`, keeping the seed-1 checkpoints) instead of falling back. In the
    quick setting, where no store holds the runs (outside a checkout), its tiny runs are trained (seconds).
    """
    from ..experiments.config import ExperimentConfig
    from ..experiments.runs import build_protocol, compare, run_configs
    from ..experiments.store import config_hash

    quick = quick_mode() if quick is None else quick
    settings = dict(settings or comparison_settings(quick=quick))
    own = ExperimentConfig().replace(**{k: v for k, v in settings.items() if k in ExperimentConfig.field_names()})
    protocol = build_protocol(own)
    jobs = _jobs(own)
    configs = run_configs(jobs, own, protocol)
    own_check = check_store(own.results)
    have = set(own_check.runs["run_id"]) if own_check.ok else set()
    ids = [config_hash(c) for c in configs]
    missing = [f"{j.name} seed {j.seed}" if j.seed is not None else "pretrained probe"
               for j, i in zip(jobs, ids, strict=True) if i not in have]
    if train and missing:
        result = compare(**settings, save_checkpoints=(min(own.seeds),), progress=False, verbose=True)
        return ComparisonEvidence(result, "trained", f"trained {result.timings['trained_runs']} run(s) into "
                                  f"{own.results}.", [], math.nan, Path(own.results))
    damaged = (own_check.note() + " ") if own_check.damaged else ""
    if not missing:
        store = _quiet_store(Path(own.results))
        note = f"{damaged}All {len(ids)} runs loaded from {own.results} (nothing trained)."
        return ComparisonEvidence(_collected(store, _rows(store, jobs, ids), own, protocol), "own store", note,
                                  [], 0.0, Path(own.results))
    # the committed study, matched by key: this setting's runs (the demo's in the quick setting, whose tiny models
    # no committed run has)
    target = ExperimentConfig.demo() if quick else own
    target_protocol = build_protocol(target) if quick else protocol
    target_jobs = _jobs(target)
    wanted = {config_hash(c): k for k, c in enumerate(run_configs(target_jobs, target, target_protocol))}
    study_path = project_root() / "results" / study
    study_check = check_store(study_path)
    found: dict[int, str] = {}
    seconds: dict[tuple[str, int], list[float]] = {}
    if study_check.ok:
        store = _quiet_store(study_path)
        for run_id in study_check.runs["run_id"]:
            run = store.load(run_id)
            cfg = run.config
            key = (str(cfg.get("method")), int(cfg.get("data", {}).get("train_size", -1)))
            seconds.setdefault(key, []).append(float(run.extra.get("seconds", math.nan)))
            k = wanted.get(config_hash(_drop_label(cfg)))
            if k is not None:
                found[k] = run_id

    def cost_of(job: Any) -> float:  # the committed runs' measured seconds: same method and size, else same method
        same = seconds.get((job.method, int(own.train_size))) or [v for (m, _), vs in seconds.items()
                                                                   if m == job.method for v in vs]
        return float(np.nanmean(same)) if same else math.nan

    estimate = math.nan if quick else float(sum(cost_of(j) for j, i in zip(jobs, ids, strict=True) if i not in have))
    cost = (f" Training the {len(missing)} missing run(s) would take about {_minutes(estimate)} on a CPU like ours "
            f"(the committed runs' measured time per run of the same method); set TRAIN = True to train them into "
            f"{own.results}." if np.isfinite(estimate) and estimate > 0 else
            f" Set TRAIN = True to train the {len(missing)} missing run(s) into {own.results}.")
    what = "the demo's setting" if quick else "this setting"
    head = (f"{damaged}{own.results} lacks {len(missing)} of the {len(ids)} runs of this setting "
            f"({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}).")
    # what the study covers: the pre-trained probe and the seeds that every method has
    seeds = [s for s in target.seeds if all(
        any(target_jobs[k].method == m and target_jobs[k].seed == s for k in found) for m in target.methods)]
    keep = sorted(k for k in found if target_jobs[k].seed is None or target_jobs[k].seed in seeds)
    if seeds and any(target_jobs[k].seed is None for k in keep):
        store = _quiet_store(study_path)
        shown = target.replace(seeds=seeds)
        part = "exactly" if len(keep) == len(wanted) else f"{len(keep)} of the {len(wanted)} runs of"
        note = (f"{head} Showing the committed study's runs of {part} {what} instead ({study_path}: seeds "
                f"{', '.join(map(str, seeds))}; the same keys but for the sweep's setting label; nothing "
                f"trained).{cost}")
        if study_check.damaged:
            note += " " + study_check.note()
        return ComparisonEvidence(_collected(store, _rows(store, [target_jobs[k] for k in keep],
                                                          [found[k] for k in keep]), shown, target_protocol),
                                  "committed study", note, missing, estimate, study_path)
    where = study_check.note() or f"{study_path} holds {len(found)} of the {len(wanted)} runs of {what}."
    note = f"{head} {where}{cost}"
    demo_settings = comparison_settings(quick=quick)
    if {k: v for k, v in settings.items() if k != "results"} != \
            {k: v for k, v in demo_settings.items() if k != "results"}:  # a changed setting: show the demo's
        shown = comparison_evidence(demo_settings, quick=quick, study=study)
        if shown.result is not None:
            return ComparisonEvidence(shown.result, shown.source, f"{note} Showing the demo's setting instead, "
                                      f"which is stored: {shown.note}", missing, estimate, shown.store)
    if quick:  # the quick setting's tiny random models (seconds), e.g. outside a checkout with committed results
        result = compare(**settings, save_checkpoints=(min(own.seeds),), progress=False, verbose=False)
        return ComparisonEvidence(result, "trained", f"{note} Quick setting: trained the {len(missing)} tiny runs "
                                  f"instead (seconds; their numbers mean nothing).", missing, estimate,
                                  Path(own.results))
    return ComparisonEvidence(None, "none", note, missing, estimate, None)


def mean_drift(drift: pd.DataFrame) -> pd.DataFrame:
    """Stored per-run drift (``drift.csv`` of each run, as :attr:`ComparisonResult.drift`) averaged over seeds.

    One pair per method: ``model_a`` the pre-trained model, ``model_b`` ``"<method> (mean of n seeds)"``.
    """
    if drift is None or drift.empty:
        return pd.DataFrame()
    keys = ["model_a", "method", "layer", "layer_name", "metric", "kind"]
    keys = [k for k in keys if k in drift.columns]
    out = drift.groupby(keys, sort=False, dropna=False).agg(value=("value", "mean"), seeds=("seed", "nunique"))
    out = out.reset_index()
    out["model_b"] = [f"{m} (mean of {int(n)} seeds)" for m, n in zip(out["method"], out["seeds"], strict=True)]
    return out.drop(columns=["seeds"])


# ------------------------------------------------------------------------------------------------------------------
# notebook 03: the stored theory quantities
def stored_theory(store: str | os.PathLike[str] | None = None) -> tuple[pd.DataFrame, StoreCheck]:
    """Every run's stored ``theory`` table (study v2: ``analysis=True``) with its setting, size and seed.

    One row per run and quantity (``jacobian_fro2``, ``noise_sensitivity`` and ``identity_ratio`` per sigma,
    ``hessian_trace``), with ``run_id, method, setting, train_size, seed``; runs stored without the table are left
    out. Returns the table and the :class:`StoreCheck` of the store (missing or damaged runs said there).
    """
    path = Path(store) if store is not None else project_root() / "results" / "study-v2"
    check = check_store(path)
    if not check.ok:
        return pd.DataFrame(), check
    table = _quiet_store(path).load_table("theory")
    if table.empty:
        return table, check
    table["setting"] = table["label"].fillna(table["method"]) if "label" in table else table["method"]
    table["train_size"] = table["data.train_size"]
    keep = ["run_id", "method", "setting", "train_size", "seed", "layer", "quantity", "sigma", "value", "se",
            "ci_low", "ci_high", "n_examples", "n_probes"]
    return table[keep].sort_values(["train_size", "setting", "seed", "quantity"], kind="stable",
                                   na_position="first").reset_index(drop=True), check


def theory_runs(theory: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` (``theory_table(...).runs``) with the stored setting label as ``method`` and the stored identity
    ratio at the smallest sigma (``identity_ratio``) joined by ``run_id``."""
    if theory.empty:
        return runs
    labels = theory.drop_duplicates("run_id").set_index("run_id")["setting"]
    ratio = theory[theory["quantity"] == "identity_ratio"]
    ratio = ratio[ratio["sigma"] == ratio["sigma"].min()].groupby("run_id")["value"].mean().rename("identity_ratio")
    out = runs.copy()
    out["method"] = [labels.get(r, m) for r, m in zip(out["run_id"], out["method"], strict=True)]
    return out.merge(ratio, left_on="run_id", right_index=True, how="left")


# ------------------------------------------------------------------------------------------------------------------
# notebook 04: a diagnosis
def verify_checkpoint(path: str | os.PathLike[str]) -> str:
    """Return ``path`` if it is a model folder that matches its stored run, else raise saying why.

    A checkpoint inside a run store (``.../runs/<run_id>/checkpoint``) must match its run's ``record.json`` file for
    file (same names, sizes and sha256): a folder that was changed, replaced or copied from another run is refused,
    naming the first file that differs, because its numbers would not be that run's. A folder outside a run store
    only needs ``config.json`` (:func:`~lnsr_viz.viz.runtime.check_checkpoint`).
    """
    import json

    from ..utils.io import sha256_file
    from .runtime import check_checkpoint

    folder = Path(check_checkpoint(path))
    record_path = folder.parent / "record.json"
    if folder.name != "checkpoint" or not record_path.is_file():
        return str(folder)
    run_id = folder.parent.name
    why = f"checkpoint folder {str(folder)!r} does not match stored run {run_id}"
    fix = ("Use the run's own checkpoint (retrain it: delete the run folder and run `make demo` again) or point "
           "CHECKPOINT at a folder outside the run store.")
    try:
        files = json.loads(record_path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{why}: its record.json cannot be read ({exc}). {fix}") from None
    listed = {rel[len("checkpoint/"):]: info for rel, info in files.items() if rel.startswith("checkpoint/")}
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    if not listed:
        raise ValueError(f"{why}: the run was stored without a checkpoint, so this folder was added later. {fix}")
    extra = sorted(present - set(listed))
    lost = sorted(set(listed) - present)
    if lost or extra:
        raise ValueError(f"{why}: " + "; ".join(
            ([f"missing {', '.join(lost)}"] if lost else []) + ([f"not in the run's record: {', '.join(extra)}"]
                                                                 if extra else [])) + f". {fix}")
    for rel, info in sorted(listed.items()):
        fp = folder / rel
        if fp.stat().st_size != info.get("bytes") or sha256_file(fp) != info.get("sha256"):
            raise ValueError(f"{why}: {rel} differs from the file stored with the run (size or sha256). {fix}")
    return str(folder)


@dataclass
class DiagnosisEvidence:
    """A diagnosis and where it came from (``live``: measured now on a checkpoint; else read from a stored run)."""

    diagnosis: Any
    origin: str
    live: bool
    checkpoint: str | None = None
    data: Any = None
    in_domain: str = ""
    ood: dict[str, Any] = field(default_factory=dict)
    run: Any = None
    base_run: Any = None


def _stored_findings(table: pd.DataFrame) -> list[Any]:
    from ..experiments.diagnose import Finding

    findings = []
    for key, part in table[table["finding"] != "metrics"].groupby("finding", sort=False):
        values = dict(zip(part["quantity"], part["value"], strict=True))
        severity = str(part["severity"].iloc[0])
        value, threshold = values.pop("value", None), values.pop("threshold", None)
        shown = {k: v for k, v in values.items() if "_by_layer." not in k}
        words = ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
        cmp = f" (threshold {threshold:.4g})" if threshold is not None else ""
        message = (f"stored value {value:.4g}{cmp}" if value is not None else "no value stored") + \
            (f"; {words}" if words else "")
        findings.append(Finding(str(key), severity, str(key).replace("_", " "), message,
                                None if value is None else float(value),
                                None if threshold is None else float(threshold),
                                "as stored with the run by its own analysis (lnsr_viz.experiments.run_analysis)",
                                {k: float(v) for k, v in values.items()}))
    return findings


def _stored_diagnosis(run: Any, base: Any, label: str, store: Path) -> Any:
    from ..experiments.diagnose import Diagnosis

    table = run.tables["diagnosis"]
    metrics = table[table["finding"] == "metrics"]
    split_metric = metrics["quantity"].str.split(".", n=1, expand=True)
    metrics = pd.DataFrame({"split": split_metric[0], "metric": split_metric[1], "value": metrics["value"]})
    profiles = []
    for r, name in ((run, "model"), (base, "base")):
        if r is not None and r.profile is not None:
            p = r.profile[r.profile["injection_layer"] == 0].copy()
            p["model"] = name
            profiles.append(p)
    drift = run.drift if run.drift is not None else pd.DataFrame()
    n = metrics.set_index(["split", "metric"])["value"]
    settings = {"model": f"{label} (stored run {run.run_id})", "base_model": run.config.get("model"),
                "base_source": f"the pre-trained run {base.run_id if base is not None else '(not stored)'}",
                "n_train": int(n.get(("train", "n"), 0)), "n_held_out": int(n.get(("held_out", "n"), 0)),
                "split": "the run's training set and in-domain test set", "store": str(store)}
    return Diagnosis(findings=_stored_findings(table), metrics=metrics.reset_index(drop=True),
                     profile=pd.concat(profiles, ignore_index=True) if profiles else pd.DataFrame(),
                     drift=drift, calibration=pd.DataFrame(columns=["bin_low", "bin_high", "n", "mean_confidence",
                                                                    "accuracy"]),
                     settings=settings)


def _base_run(store: Any, listing: pd.DataFrame, run: Any) -> Any:
    """The pre-trained run of the same data and probe as ``run`` (None when not stored)."""
    for run_id in listing.loc[listing["method"] == "pretrained", "run_id"]:
        cand = store.load(run_id)
        if cand.config.get("data") == run.config.get("data") and cand.config.get("probe") == run.config.get("probe"):
            return cand
    return None


#: Seeds every method needs at a training size before the notebooks show that size by default.
MIN_SEEDS_SHOWN = 3


def covered_size(table: pd.DataFrame, *, size: str = "train_size", method: str = "method", seed: str = "seed",
                 min_seeds: int = MIN_SEEDS_SHOWN) -> int | None:
    """The largest training size at which every method the table holds (at any size) has at least ``min_seeds``
    seeds; else the size with the most runs (None for an empty table). A study being filled in size by size has a
    first few runs at its next size: showing those alone would pass one seed of two methods off as the comparison."""
    if table is None or not len(table):
        return None
    rows = table[table[method] != "pretrained"] if method in table else table
    if not len(rows):
        return None
    methods = set(rows[method])
    seeds = rows.groupby([size, method])[seed].nunique()
    full = [int(sz) for sz, part in seeds.groupby(level=0)
            if set(part.index.get_level_values(1)) >= methods and int(part.min()) >= min_seeds]
    if full:
        return max(full)
    counts = rows.groupby(size).size()
    return int(counts.idxmax())


def _pick_stored_run(check: StoreCheck, method: str) -> tuple[Any, Any, str]:
    """The committed run to show: ``method``'s chosen setting (tables/chosen.csv, else the first), seed 1 (else the
    lowest), at the training size :func:`covered_size` picks for the store (else the largest with such runs)."""
    store = _quiet_store(check.path)
    listing = check.runs.copy()
    if "label" not in listing:
        listing["label"] = np.nan
    listing["setting"] = listing["label"].fillna(listing["method"])
    rows = listing[(listing["method"] == method) & listing["run_id"].isin(
        [r for r in listing["run_id"] if (check.path / "runs" / r / "tables" / "diagnosis.csv").is_file()])]
    if rows.empty:
        raise LookupError(f"{check.path} holds no {method!r} run with a stored diagnosis.")
    covered = covered_size(listing[listing["method"] != "pretrained"], size="data.train_size")
    size = covered if covered in set(rows["data.train_size"]) else rows["data.train_size"].max()
    rows = rows[rows["data.train_size"] == size]
    chosen_path = check.path / "tables" / "chosen.csv"
    if chosen_path.is_file():
        chosen = pd.read_csv(chosen_path)
        pick = chosen[(chosen["method"] == method) & (chosen["train_size"] == size)]["chosen"]
        if len(pick) and (rows["setting"] == pick.iloc[0]).any():
            rows = rows[rows["setting"] == pick.iloc[0]]
    rows = rows.sort_values(["setting", "seed"], kind="stable")
    row = rows.iloc[0]
    run = store.load(row["run_id"])
    label = f"{row['setting']}, seed {int(row['seed'])}, {int(size)} training examples"
    return run, _base_run(store, listing, run), label


def diagnosis_evidence(checkpoint: str | os.PathLike[str] | None = None, *, base_model: Any = None,
                       data: Any = None, method: str = "lnsr", quick: bool | None = None,
                       store: str | os.PathLike[str] | None = None) -> DiagnosisEvidence:
    """Notebook 04's diagnosis: live on a checkpoint when there is one, else a committed run's stored one.

    In this order: ``checkpoint`` if given (checked by :func:`verify_checkpoint`); else the ``method`` checkpoint
    (lowest seed) that ``make demo`` kept in the demo's store (checked against its run's record); in the quick setting
    the quick comparison's tiny checkpoint (trained in seconds); else the committed study-v2 run of ``method``
    (its chosen setting, seed 1), whose stored diagnosis, profile, drift, attributions and representations are read
    into the same :class:`~lnsr_viz.experiments.diagnose.Diagnosis`. Nothing here trains a real model.
    """
    from .runtime import default_checkpoint, diagnosis_data

    quick = quick_mode() if quick is None else quick
    origin = ""
    if checkpoint is None or str(checkpoint).strip() == "":
        checkpoint = default_checkpoint(method, quick=quick)
        if checkpoint is not None:
            base_model = base_model or comparison_settings(quick=quick)["model"]
            origin = f"the {method} checkpoint (seed 1) kept by `make demo` in {results_dir('demo', quick=quick)}"
    if checkpoint is not None:
        from ..experiments.diagnose import diagnose

        checkpoint = verify_checkpoint(checkpoint)
        given, in_domain, ood = diagnosis_data(data)
        diag = diagnose(checkpoint, base_model, given, max_examples=200 if quick else 600,
                        probe_n=16 if quick else 64, n_drift=32 if quick else 300, max_length=64)
        return DiagnosisEvidence(diag, f"live diagnosis of {origin or checkpoint}", True, checkpoint, given,
                                 in_domain, ood)
    path = Path(store) if store is not None else project_root() / "results" / "study-v2"
    check = check_store(path)
    if not check.ok:
        raise FileNotFoundError(
            f"no checkpoint to diagnose and no committed run to read: {check.note()} Run `make demo` (it keeps one "
            "checkpoint per method) or set CHECKPOINT to a model folder.")
    run, base, label = _pick_stored_run(check, method)
    diag = _stored_diagnosis(run, base, label, path)
    origin = (f"the stored diagnosis of the committed run {run.run_id} ({label}) in {path}: no checkpoint was "
              "given and `make demo` kept none here, so nothing is measured live (run `make demo` for a live one)")
    if check.damaged:
        origin += ". " + check.note()
    return DiagnosisEvidence(diag, origin, False, None, None, str(run.config["data"]["in_domain"]), {}, run, base)


def stored_projection(model_reps: pd.DataFrame, base_reps: pd.DataFrame | None, *, method: str = "pca",
                      names: Sequence[str] = ("base", "model"), seed: int = 0) -> pd.DataFrame:
    """A joint 2-D projection of two runs' stored representations (``representations`` tables), in
    :func:`~lnsr_viz.analysis.projection.project_representations`'s format (one layer: the top one stored)."""
    from ..analysis.projection import PROJECTION_COLUMNS
    from ..core.adapter import layer_name

    parts = [(names[0], base_reps), (names[1], model_reps)] if base_reps is not None else [(names[1], model_reps)]
    dims = [c for c in model_reps.columns if re.fullmatch(r"d\d+", c)]
    joint = np.concatenate([r[dims].to_numpy(dtype=np.float64) for _, r in parts])
    attrs: dict[str, Any] = {"method": method, "seed": seed, "stored": True}
    if method == "umap":
        from ..utils.extras import require

        coords = require("umap", "stored_projection(method='umap')").UMAP(
            n_components=2, n_neighbors=15, min_dist=0.1, random_state=int(seed)).fit_transform(joint)
    else:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, svd_solver="full")
        coords = pca.fit_transform(joint)
        attrs["explained_variance_ratio"] = [float(v) for v in pca.explained_variance_ratio_]
    in_domain = str(model_reps["domain"].iloc[0])
    out, start = [], 0
    for name, reps in parts:
        n = len(reps)
        lay = int(reps["layer"].iloc[0])
        out.append(pd.DataFrame({
            "model": name, "example": reps["example"].to_numpy(), "x": coords[start:start + n, 0],
            "y": coords[start:start + n, 1], "method": method, "layer": lay, "layer_name": layer_name(lay),
            "text": reps["text"].to_numpy(), "label": reps["label"].astype(float).to_numpy(),
            "label_name": reps["label"].astype(int).astype(str).to_numpy(), "domain": reps["domain"].to_numpy(),
            "domain_kind": np.where(reps["domain"] == in_domain, "in-domain", "out-of-domain")}))
        start += n
    frame = pd.concat(out, ignore_index=True)[list(PROJECTION_COLUMNS)]
    frame.attrs.update(attrs)
    return frame


def stored_attributions(run: Any, base: Any, *, names: Sequence[str] = ("base", "model")) -> pd.DataFrame:
    """The stored Integrated-Gradients attributions of a run and of its pre-trained base, in
    :func:`~lnsr_viz.analysis.attribution.token_attributions`'s format with a ``sentence`` index column."""
    parts = []
    for name, r in ((names[0], base), (names[1], run)):
        if r is not None and "attributions" in r.tables:
            part = r.tables["attributions"].copy()
            part["text"] = part.groupby("sentence")["text"].transform("first")
            parts.append(part.assign(model=name))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def plot_stored_attributions(attributions: pd.DataFrame, *, sentence: int = 0,
                             value: str = "attribution_norm") -> Any:
    """:func:`~lnsr_viz.viz.analysis_figures.plot_attributions` of one stored sentence (``sentence`` index)."""
    from .analysis_figures import plot_attributions

    part = attributions[attributions["sentence"] == int(sentence)]
    if part.empty:
        raise ValueError(f"sentence={sentence} is not stored; stored: {sorted(set(attributions['sentence']))}.")
    return plot_attributions(part, value=value)


def evidence_projections(evidence: DiagnosisEvidence, *, quick: bool | None = None,
                         method: str | None = None) -> list[pd.DataFrame]:
    """The joint projections notebook 04 shows: live (embedding output and last layer of base and model) or from the
    stored top-layer representations; PCA unless ``method='umap'`` (UMAP's first call in a kernel spends about
    30 s on 2 CPU cores compiling and fitting, which would double the notebook's time)."""
    from ..data.models import load_model
    from .runtime import diagnosis_projections

    quick = quick_mode() if quick is None else quick
    if not evidence.live:
        reps = evidence.run.tables.get("representations")
        if reps is None:
            return []
        base = evidence.base_run.tables.get("representations") if evidence.base_run is not None else None
        return [stored_projection(reps, base, method=method or "pca")]
    model = load_model(evidence.checkpoint)
    base = load_model(evidence.diagnosis.settings["base_model"])
    return diagnosis_projections(base, model, evidence.data["held_out"], evidence.ood, in_domain=evidence.in_domain,
                                 n_per_set=24 if quick else 100, layers=(0, -1),
                                 method=method or "pca", max_length=64)


def attribution_dashboard(evidence: DiagnosisEvidence, *, quick: bool | None = None) -> Any:
    """Notebook 04's attribution view: live Integrated Gradients of base and model, or the stored attributions."""
    from .dashboards import AttributionDashboard, FigureDashboard

    quick = quick_mode() if quick is None else quick
    if not evidence.live:
        table = stored_attributions(evidence.run, evidence.base_run)
        texts = table.drop_duplicates("sentence")
        options = [(t if len(t) <= 70 else t[:67] + "...", int(i)) for i, t in zip(texts["sentence"], texts["text"],
                                                                                   strict=True)]
        return FigureDashboard(plot_stored_attributions, table,
                               choices={"sentence": options, "value": ["attribution_norm", "attribution"]},
                               height=380)
    from ..data.models import load_model

    sentences = list(evidence.data["held_out"].texts[:6])
    return AttributionDashboard(load_model(evidence.diagnosis.settings["base_model"]),
                                load_model(evidence.checkpoint), sentences, names=("base", "model"),
                                n_steps=16 if quick else 32)


# ------------------------------------------------------------------------------------------------------------------
# notebook 05: every method
@dataclass
class MethodsEvidence:
    """Every method of the committed study v2 (see :func:`methods_evidence`)."""

    study: Any
    result: Any
    train_size: int
    coverage: pd.DataFrame
    missing: pd.DataFrame
    note: str
    check: StoreCheck


def _train_seconds(store: Any, run_ids: Sequence[str]) -> pd.DataFrame:
    rows = [{"run_id": r, "train_seconds": store.load(r).extra.get("train_seconds", math.nan)} for r in run_ids]
    return pd.DataFrame(rows, columns=["run_id", "train_seconds"])


def methods_evidence(store: str | os.PathLike[str] | None = None, config: str | os.PathLike[str] | None = None,
                     *, train_size: int | None = None) -> MethodsEvidence:
    """Every method of the committed study v2, its chosen setting per method at one training size, and what is missing.

    ``study``: :func:`~lnsr_viz.experiments.study.load_study` of the store (the all-methods table with the step
    costs of ``make bench``); ``result``: a :class:`~lnsr_viz.experiments.runs.ComparisonResult` of each method's
    chosen setting at ``train_size`` (default: :func:`covered_size`, the largest size at which every method has
    :data:`MIN_SEEDS_SHOWN` seeds), labelled by setting;
    ``coverage``: runs stored and planned per method and size (the sweep file's grid); ``missing``: the settings and
    sizes with fewer runs than planned, with an estimate of their training time (measured seconds per step of the
    stored runs, times the planned steps, plus the measured per-run analysis cost; for a method with no stored run,
    vanilla's per-step time times the benchmark's step-time ratio).
    """
    from ..experiments.config import ExperimentConfig
    from ..experiments.runs import build_protocol
    from ..experiments.study import load_study
    from ..experiments.sweep import expand, experiment_config, load_sweep_config, per_size

    path = Path(store) if store is not None else project_root() / "results" / "study-v2"
    config = Path(config) if config is not None else project_root() / "configs" / "study-v2.yaml"
    check = check_store(path)
    if not check.ok:
        raise FileNotFoundError(f"the committed study v2 is not readable: {check.note()}")
    sweep = load_sweep_config(config) if config.is_file() else None
    st = _quiet_store(path)
    study = load_study(st, config if sweep is not None else None)
    runs = study.runs
    size = int(train_size if train_size is not None else covered_size(runs))
    chosen = study.chosen[study.chosen["train_size"] == size]
    picks = {"vanilla": "vanilla", **{r.method: r.chosen for r in chosen.itertuples() if r.method != "vanilla"}}
    shown = runs[(runs["train_size"] == size) & runs["setting"].isin(list(picks.values()))]
    listing = check.runs
    pre = listing[(listing["method"] == "pretrained") & (listing["data.train_size"] == size)]["run_id"].tolist()
    rows = [{"run_id": pre[0], "method": "pretrained", "seed": None, "cached": True, "seconds": math.nan,
             "collapsed": None}] if pre else []
    rows += [{"run_id": r.run_id, "method": r.setting, "seed": int(r.seed), "cached": True, "seconds": r.seconds,
              "collapsed": bool(r.collapsed)} for r in shown.itertuples()]
    methods = list(dict.fromkeys(["vanilla", *[s for s in picks.values() if s != "vanilla"]]))
    experiment = experiment_config(sweep, size) if sweep is not None else ExperimentConfig(train_size=size)
    experiment = experiment.replace(methods=sorted(set(shown["method"]) | {"vanilla"}), method_params={},
                                    results=str(path))
    from ..experiments.runs import collect_comparison, comparison_config, label_balance

    runs_df = pd.DataFrame(rows, columns=["run_id", "method", "seed", "cached", "seconds", "collapsed"])
    runs_df["seed"] = runs_df["seed"].astype("Int64")
    result = collect_comparison(st, runs_df, baseline="vanilla", methods=methods)
    protocol = build_protocol(experiment)
    result.config = comparison_config(experiment, protocol)
    first = shown.drop_duplicates("setting").set_index("setting")["run_id"]
    result.config["methods"] = methods
    result.config["method_params"] = {m: st.load(first[m]).config.get("method_params", {}) for m in methods
                                      if m in first.index}
    result.label_balance = label_balance(protocol)
    result.timings = {"total_seconds": 0.0, "trained_runs": 0, "cached_runs": len(runs_df)}
    # coverage and the estimate of what is missing
    stored = runs.groupby(["method", "setting", "train_size"]).size().rename("stored")
    planned = pd.Series(dtype=float, name="planned")
    steps_by_size: dict[int, float] = {}
    if sweep is not None:
        grid = [j for j in expand(sweep) if j.job.method != "pretrained"]
        planned = pd.Series([1] * len(grid), index=pd.MultiIndex.from_tuples(
            [(j.job.method, j.job.name, j.train_size) for j in grid], names=["method", "setting", "train_size"])
        ).groupby(level=[0, 1, 2]).sum().rename("planned")
        for s in sweep["train_sizes"]:
            steps_by_size[int(s)] = float(per_size(sweep.get("train", {}), int(s)).get("max_steps") or math.nan)
    coverage = pd.concat([stored, planned], axis=1).fillna(0).astype(int).reset_index()
    costs = runs.merge(_train_seconds(st, list(runs["run_id"])), on="run_id", how="left")
    costs["per_step"] = costs["train_seconds"] / costs["steps"]
    costs["fixed"] = costs["seconds"] - costs["train_seconds"]
    per_step = costs.groupby("setting")["per_step"].mean()
    fixed = float(costs["fixed"].mean())
    ratio = dict(study.step_cost)
    vanilla_step = float(per_step.get("vanilla", math.nan))
    missing = coverage[coverage["stored"] < coverage["planned"]].copy()
    est = []
    for r in missing.itertuples():
        step = per_step.get(r.setting, math.nan)
        if not np.isfinite(step):
            step = vanilla_step * ratio.get(r.method, math.nan)
        est.append((r.planned - r.stored) * (step * steps_by_size.get(int(r.train_size), math.nan) + fixed))
    missing["missing_runs"] = missing["planned"] - missing["stored"]
    missing["estimated_hours"] = np.round(np.asarray(est, dtype=float) / 3600, 2)
    absent_methods = sorted(set(missing["method"]) - set(runs["method"]))
    absent_sizes = sorted(set(coverage["train_size"]) - set(runs["train_size"]))
    total = float(np.nansum(missing["estimated_hours"])) if len(missing) else 0.0
    note = (f"{len(runs)} fine-tuned runs stored in {path} ({', '.join(sorted(set(runs['method'])))}); showing each "
            f"method's chosen setting at {size} training examples")
    partial = sorted(int(z) for z in set(runs["train_size"]) if int(z) > size)
    if train_size is None and partial:
        note += (f" (the largest size at which every method has at least {MIN_SEEDS_SHOWN} seeds; the runs at "
                 f"{', '.join(map(str, partial))} examples are a size still being filled in: methods_evidence("
                 f"train_size={partial[-1]}) shows them)")
    note += ". "
    if len(missing):
        note += (f"Not yet in the store: {len(missing)} setting x size cells ({int(missing['missing_runs'].sum())} "
                 f"runs), among them the methods {', '.join(absent_methods) or 'none'} entirely and the sizes "
                 f"{', '.join(map(str, absent_sizes)) or 'none'}; training them would take about {total:.0f} h on a "
                 "CPU like ours (estimated from the stored runs' measured seconds per step and the benchmark's "
                 "step-cost ratios; an upper estimate, since the per-step time includes each run's 10 evaluations, "
                 "which do not grow with the budget). Set TRAIN = True (and TRAIN_METHODS / TRAIN_SIZES) to train "
                 "some.")
    if check.damaged:
        note += " " + check.note()
    return MethodsEvidence(study, result, size, coverage, missing.reset_index(drop=True), note, check)


def train_missing_methods(methods: Sequence[str], sizes: Sequence[int], *,
                          config: str | os.PathLike[str] | None = None,
                          results: str | os.PathLike[str] | None = None) -> Path:
    """Train (or load) the sweep file's runs of ``methods`` at ``sizes`` (only on request: hours on a CPU).

    The committed ``results/study-v2`` is first copied into ``results`` (default: ``results_dir('study-v2-mine')``,
    git-ignored; the committed store is never written), so its runs are loaded, not retrained, and the returned store
    holds both: pass it to :func:`methods_evidence`. The sweep file is ``configs/study-v2.yaml`` unless ``config``
    names another. Unknown methods or sizes are refused before any work.
    """
    from ..experiments.sweep import load_sweep_config, merge_stores, run_sweep

    config = Path(config) if config is not None else project_root() / "configs" / "study-v2.yaml"
    sweep = load_sweep_config(config)
    bad = sorted(set(methods) - set(sweep["methods"]))
    bad_sizes = sorted({int(s) for s in sizes} - {int(s) for s in sweep["train_sizes"]})
    if bad or bad_sizes or not methods or not sizes:
        raise ValueError(f"train_missing_methods: choose methods from {sorted(sweep['methods'])} and sizes from "
                         f"{sweep['train_sizes']}; got methods {list(methods)} (unknown {bad}) and sizes "
                         f"{list(sizes)} (unknown {bad_sizes}).")
    dest = Path(results) if results is not None else results_dir("study-v2-mine")
    committed = project_root() / "results" / "study-v2"
    if check_store(committed).ok:
        merge_stores([committed], dest)
    keep = ["vanilla", *[m for m in methods if m != "vanilla"]]   # the baseline of every comparison
    sub = {**sweep, "methods": {m: sweep["methods"][m] for m in keep}, "train_sizes": [int(s) for s in sizes]}
    run_sweep(sub, results=dest, progress=False)
    return dest


def comparison_drift(evidence: ComparisonEvidence, *, study: str = "study-v2") -> tuple[pd.DataFrame, str]:
    """The drift to show beside a comparison: its runs' stored ``drift.csv`` averaged over seeds, else (runs stored
    before drift was) the same methods' stored drift in the committed study v2, said so in the note."""
    result = evidence.result
    if result is not None and result.drift is not None and len(result.drift):
        return mean_drift(result.drift), f"stored drift of the runs shown ({evidence.store}), mean over seeds."
    methods = list(result.config.get("methods", ["vanilla", "lnsr"])) if result is not None else ["vanilla", "lnsr"]
    path = project_root() / "results" / study
    check = check_store(path)
    if not check.ok:
        return pd.DataFrame(), f"the runs shown have no stored drift and {check.note()}"
    table = _quiet_store(path).load_table("drift")
    if table.empty:
        return table, f"neither the runs shown nor {path} store drift."
    table = table[table["method"].isin(methods)]
    demo_params = {m: p for m, p in (result.config.get("method_params", {}) if result is not None else {}).items()}
    keep = []
    for run_id, part in table.groupby("run_id", sort=False):
        method = part["method"].iloc[0]
        same = all(part.get(f"method_params.{k}", pd.Series([v])).iloc[0] == v
                   for k, v in demo_params.get(method, {}).items() if not isinstance(v, Mapping | list))
        if same:
            keep.append(run_id)
    table = table[table["run_id"].isin(keep)]
    size = covered_size(table.drop_duplicates("run_id"), size="data.train_size") if len(table) else None
    table = table[table["data.train_size"] == size]
    note = (f"The runs shown were stored before runs kept their drift, so this is the stored drift of the same "
            f"methods and parameters in the committed study v2 ({path}, {size} training examples, a step-budget "
            "protocol: not the runs above), mean over seeds.")
    return mean_drift(table), note

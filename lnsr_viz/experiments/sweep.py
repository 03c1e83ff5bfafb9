"""Sweeps: grids over methods, their parameters, training-set sizes and seeds, resumable and shardable.

A sweep is described by a small YAML or TOML file::

    model: minilm
    data: movie
    ood: [amazon, tweets, nyt]
    train_sizes: [100, 500, 2000]
    seeds: [1, 2, 3, 4, 5]
    train: {epochs: 4, batch_size: 32, lr: 5.0e-5, max_length: 64}
    eval_size: 600
    analysis: true                # store every run's own analysis (lnsr_viz.experiments.run_analysis)
    tracking: {report_to: mlflow} # optional: report every trained run (not part of any key; --report-to overrides)
    methods:
      vanilla: {}
      lnsr:                       # every list is a grid axis; scalars are fixed
        lam: [1, 10, 100]
        scale: [0.05, 0.2]
        noise: [gaussian, in_manifold]
      # or a list of grids whose settings are pooled (one-at-a-time variations):
      # lnsr: [{lam: [1, 10, 100]}, {lam: 10, noise: in_manifold}, {lam: 10, injection_layer: 3}]

``expand(config)`` turns it into a list of jobs (train size x method setting x seed), in a fixed order. A job whose
configuration is stored is loaded, not retrained (resume); ``--shard i/n`` runs every n-th job starting at the i-th
(1-based), so n processes or machines can share a grid, and ``merge_stores`` combines their run stores, refusing
stores written by different code versions or on different data. ``run_sweep(executor='ray')`` instead runs every job
as a Ray task on a local instance or a cluster (:mod:`lnsr_viz.experiments.ray_executor`); both take their jobs from
:func:`shard_jobs`, so they cannot disagree about what a grid contains.

Selection protocol (no peeking): hyper-parameters are chosen on the in-domain **validation** split only, from the
training histories; test and out-of-domain metrics are never read during selection (``select_settings`` takes only
the history table), and are reported for the chosen setting afterwards. Ties go to the setting the sweep file lists
first (``order=setting_order(config)``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import ParameterGrid

from ..methods import METHODS, get_method
from .config import ExperimentConfig
from .runs import Job, build_protocol, check_model_fit, run_jobs

__all__ = ["load_sweep_config", "validate_config", "expand", "parse_shard", "run_sweep", "merge_stores",
           "select_settings", "select_from_store", "sweep_history", "setting_order", "experiment_config", "shard_jobs",
           "sweep_results", "SWEEP_KEYS", "EXECUTORS"]

#: The :class:`~lnsr_viz.experiments.config.ExperimentConfig` settings a sweep file may give at its top level (the
#: ``train:`` and ``probe:`` sections hold the others a sweep sets; ``methods`` holds grids, not a list).
SWEEP_SETTINGS = ("model", "data", "ood", "seeds", "eval_size", "val_size", "split_seed", "neutral_band",
                  "label_noise", "analysis", "results")
#: Every key of a sweep file.
SWEEP_KEYS = {*SWEEP_SETTINGS, "train_sizes", "methods", "train", "probe", "name", "tracking", "protocol_notes"}
#: Keys of a sweep file that say how its runs are made or reported, not what they are (no part of a run's key).
NOT_KEYED = ("train_sizes", "methods", "name", "tracking", "protocol_notes")


def load_sweep_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a sweep file (``.yaml``/``.yml`` or ``.toml``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep config {path} not found.")
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"sweep config {path} must end in .yaml, .yml or .toml.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"sweep config {path} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    if path.suffix == ".toml":
        import tomllib

        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"sweep config {path} is not valid TOML: {exc}.") from None
    else:
        import yaml

        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"sweep config {path} is not valid YAML{where}: {problem}.") from None
    if not isinstance(config, Mapping):
        raise ValueError(f"sweep config {path} must be a mapping of settings; got {type(config).__name__}.")
    return validate_config(dict(config), source=str(path))


def validate_config(config: dict[str, Any], *, source: str = "sweep config") -> dict[str, Any]:
    """Check keys, methods and parameters before any work; fill defaults (read off ``ExperimentConfig()``)."""
    unknown = set(config) - SWEEP_KEYS
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}; allowed keys are {sorted(SWEEP_KEYS)}.")
    if "protocol_notes" in config:  # how the protocol was chosen, in words: shown by the study write-up, never keyed
        notes = config["protocol_notes"]
        notes = [notes] if isinstance(notes, str) else notes
        if not isinstance(notes, list) or not notes or not all(isinstance(n, str) and n.strip() for n in notes):
            raise ValueError(f"{source}: 'protocol_notes' must be a sentence or a list of sentences (how the "
                             f"protocol was chosen, shown in the study's write-up); got {config['protocol_notes']!r}.")
        config["protocol_notes"] = [" ".join(n.split()) for n in notes]
    if "tracking" in config:
        from ..training.tracking import check_tracking

        if not isinstance(config["tracking"], Mapping):
            raise ValueError(f"{source}: 'tracking' must be a mapping such as {{report_to: mlflow}} or "
                             f"{{report_to: tensorboard, logging_dir: runs}}; got {config['tracking']!r}.")
        config["tracking"] = dict(config["tracking"])
        check_tracking(config["tracking"], owner=f"{source}'s tracking")
    methods = config.get("methods")
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError(f"{source}: 'methods' must map at least one method name to its parameters, e.g. "
                         "{'vanilla': {}, 'lnsr': {'lam': [1, 10]}}.")
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"{source}: unknown method {name!r}; expected one of {sorted(METHODS)}.")
    base = ExperimentConfig()
    defaults = {**base.to_dict(), "data": base.in_domain_data(), "ood": list(base.ood_data())}
    train = dict(config.get("train") or {})
    allowed = {f.name for f in ExperimentConfig.keyed("train")}  # precision too, though fp32 is left out of keys
    bad = set(train) - allowed
    if bad:
        raise ValueError(f"{source}: unknown key(s) {sorted(bad)} under 'train'; allowed: {sorted(allowed)}.")
    config["train"] = {**defaults["train"], **train}
    config["probe"] = {**defaults["probe"], **dict(config.get("probe") or {})}
    for key in ("train_sizes", "seeds"):
        values = config.get(key)
        if not isinstance(values, Sequence) or isinstance(values, str) or not values:
            raise ValueError(f"{source}: {key!r} must be a non-empty list (the grid would be empty).")
        bad_values = [v for v in values if isinstance(v, bool) or not isinstance(v, int)]
        if bad_values:
            raise ValueError(f"{source}: {key!r} must hold whole numbers; got {bad_values} (1.5 would silently "
                             "become 1).")
        if len(set(values)) != len(values):
            raise ValueError(f"{source}: {key} must be distinct; got {list(values)} (a repeated value would run "
                             "the same jobs twice).")
    for key in SWEEP_SETTINGS:
        if key not in ("seeds", "results"):
            config.setdefault(key, defaults[key])
    expand(config)  # every method setting is checked here (unknown parameter, out-of-range value)
    for size in config["train_sizes"]:  # sizes, seeds, training and probe settings, as compare checks them
        experiment_config(config, size, source=source)
    return config


def experiment_config(config: Mapping[str, Any], train_size: int, *, source: str = "sweep config"
                      ) -> ExperimentConfig:
    """The :class:`~lnsr_viz.experiments.config.ExperimentConfig` of one training-set size of a sweep.

    Its ``methods`` are the sweep's method names (each job carries its own parameters); a refusal names ``source``.
    """
    values = {k: v for k, v in config.items() if k not in NOT_KEYED}
    values["train"] = per_size(values.get("train") or {}, train_size, source=source)
    try:
        return ExperimentConfig.from_dict({**values, "methods": list(config["methods"]), "train_size": train_size},
                                          source=source)
    except ValueError as err:
        message = str(err)
        raise ValueError(message if message.startswith(source) else f"{source}: {message}") from None


def per_size(train: Mapping[str, Any], train_size: int, *, source: str = "sweep config") -> dict[str, Any]:
    """The ``train:`` section for one training-set size: a value given as ``{size: value}`` (e.g. a step budget
    ``max_steps: {100: 150, 500: 250}``) is read at ``train_size``; a size the mapping lacks is refused."""
    out = {}
    for key, value in train.items():
        if isinstance(value, Mapping):
            by_size = {int(k): v for k, v in value.items()}
            if int(train_size) not in by_size:
                raise ValueError(f"{source}: train.{key} gives values for sizes {sorted(by_size)} but not for "
                                 f"train size {train_size}; give one value per size in train_sizes.")
            value = by_size[int(train_size)]
        out[key] = value
    return out


def _settings(method: str, params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The method's settings: the product of its parameter lists, or the union of several such grids (a list)."""
    if isinstance(params, Sequence) and not isinstance(params, str):
        if not params:
            raise ValueError(f"method {method!r} has an empty list of grids: the grid would be empty.")
        out: list[dict[str, Any]] = []
        for grid in params:
            for setting in _settings(method, grid):
                if setting not in out:
                    out.append(setting)
        return out
    if params is not None and not isinstance(params, Mapping):
        raise ValueError(f"method {method!r}: parameters must be a mapping or a list of mappings; got {params!r}.")
    axes = {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in dict(params or {}).items()}
    if any(len(v) == 0 for v in axes.values()):
        raise ValueError(f"method {method!r} has an empty parameter list: the grid would be empty.")
    # sklearn's grid: keys in sorted order, the last key varying fastest (itertools.product over the sorted keys)
    return [dict(setting) for setting in ParameterGrid(axes)]


@dataclass(frozen=True)
class SweepJob:
    """One grid point: a training-set size and a :class:`~lnsr_viz.experiments.runs.Job`."""

    train_size: int
    job: Job


def _label(method: str, params: Mapping[str, Any]) -> str:
    if not params:
        return method
    return method + "[" + ",".join(f"{k}={params[k]}" for k in sorted(params)) + "]"


def expand(config: Mapping[str, Any]) -> list[SweepJob]:
    """Every grid point in a fixed order: train size, then method setting, then seed.

    Each train size starts with a ``pretrained`` job (the pre-trained model's stability probe, no training)."""
    jobs: list[SweepJob] = []
    for size in config["train_sizes"]:
        jobs.append(SweepJob(int(size), Job("pretrained", {}, None)))  # the pre-trained model's probe
        for method, params in config["methods"].items():
            for setting in _settings(method, params):
                get_method(method, **setting)  # raises a clear error for a bad parameter
                for seed in config["seeds"]:
                    jobs.append(SweepJob(int(size), Job(method, setting, int(seed), _label(method, setting))))
    if not jobs:
        raise ValueError("the sweep grid is empty.")
    return jobs


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``'i/n'`` -> (i, n) with 1 <= i <= n; None -> (1, 1)."""
    if spec is None:
        return 1, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 1/4); got {spec!r}.") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard {spec}: i must be between 1 and n (shard {i} of {n} does not exist).")
    return i, n


def sweep_results(config: Mapping[str, Any], results: str | Path | None = None) -> Path:
    """The sweep's run-store folder: ``results`` if given, else the file's ``results``, else ``results/sweep``."""
    return Path(results or config.get("results") or "results/sweep")


def shard_jobs(config: Mapping[str, Any], shard: str | None = None) -> list[SweepJob]:
    """The jobs of one shard (``'i/n'``: every n-th job from the i-th; None: all of them), in the grid's order.

    A shard that would get no job (more shards than jobs) is refused.
    """
    i, n = parse_shard(shard)
    jobs = expand(config)
    if i > len(jobs):
        raise ValueError(f"--shard {i}/{n} gets no jobs: the grid has only {len(jobs)} jobs, so use at most "
                         f"{len(jobs)} shards (i/n with n <= {len(jobs)}).")
    return [j for k, j in enumerate(jobs) if k % n == i - 1]


#: The executors of :func:`run_sweep`: this process, or one Ray task per job (``lnsr_viz[ray]``).
EXECUTORS = ("local", "ray")


def run_sweep(config: Mapping[str, Any], *, results: str | Path | None = None, shard: str | None = None,
              progress: bool = True, verbose: bool = True, device: str | None = None, executor: str = "local",
              tracking: Mapping[str, Any] | None = None, **ray_options: Any) -> pd.DataFrame:
    """Run this shard's jobs of the grid (loading stored ones) and return one row per job.

    ``device`` (e.g. ``'cuda'``) is where the models train; it is a property of the machine, not of the study, so it
    is not part of the run keys (it is recorded in each run's ``extra.json``). ``executor='ray'`` runs every job as
    a Ray task (:func:`lnsr_viz.experiments.ray_executor.run_jobs_ray`; ``ray_options``: ``address``,
    ``cpus_per_run``, ``gpus_per_run``, ``max_retries``, ``before_job``); both executors run the jobs of
    :func:`shard_jobs`. ``tracking`` (e.g. ``{'report_to': 'mlflow'}``) reports every trained run to TensorBoard /
    MLflow; default: the sweep file's ``tracking:`` section, if any. It is not part of any key.
    """
    from ..training.tracking import check_tracking
    from ..utils.validation import check_choice, check_device
    from .store import RunStore

    check_choice("executor", executor, EXECUTORS, owner="run_sweep")
    if executor == "ray":
        from .ray_executor import check_ray_request, run_jobs_ray

        device = check_ray_request(device=device, **ray_options)  # Ray installed, resources sensible
    elif ray_options:
        raise ValueError(f"run_sweep: {sorted(ray_options)} are options of executor='ray'; the one-process "
                         "executor takes none of them.")
    else:
        device = check_device(device, owner="run_sweep")
    if tracking is None:
        tracking = config.get("tracking") or None
    check_tracking(tracking, owner="run_sweep")
    store = RunStore(sweep_results(config, results))  # checks it can write there; creates nothing yet
    mine = shard_jobs(config, shard)
    by_size: dict[int, list[Job]] = {}
    for sj in mine:
        by_size.setdefault(sj.train_size, []).append(sj.job)
    experiments = {size: experiment_config(config, size) for size in by_size}
    for size, jobs in by_size.items():  # the model's limits (layers, positions), before any size is run
        check_model_fit(experiments[size], jobs)
    if executor == "ray":
        return run_jobs_ray(mine, experiments, store=store, progress=progress, verbose=verbose, device=device,
                            tracking=tracking, **ray_options)
    frames = []
    for size, jobs in by_size.items():
        experiment = experiments[size]
        runs = run_jobs(jobs, experiment, protocol=build_protocol(experiment), store=store, progress=progress,
                        verbose=verbose, device=device, tracking=tracking)
        frames.append(runs.assign(train_size=size))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _check_same_data(runs: Sequence[Any]) -> None:
    """Refuse runs with the same data settings but different data fingerprints (other data behind the same names)."""
    fingerprints: dict[str, tuple[str, str]] = {}
    for run in runs:
        data = dict(run.config.get("data", {}))
        fp = data.pop("fingerprint", None)
        key = json.dumps(data, sort_keys=True)
        if key in fingerprints and fingerprints[key][0] != fp:
            raise ValueError(f"runs {fingerprints[key][1]} and {run.path} use the same data settings but "
                             f"different data (fingerprints {fingerprints[key][0]} vs {fp}); refusing to merge.")
        fingerprints.setdefault(key, (fp, str(run.path)))


def merge_stores(sources: Sequence[str | Path], dest: str | Path) -> int:
    """Copy the complete runs of several stores (e.g. shards) into ``dest``; return how many were copied.

    Refuses, naming the runs, stores written by different lnsr_viz versions, and runs of the same data settings whose
    data fingerprints differ (different data behind the same names), among the sources and against the runs that
    ``dest`` already holds. Each run is copied under its lock (:meth:`RunStore.import_run`), so a merge that was
    killed leaves only a temporary folder, which the next merge removes.
    """
    from .store import RunStore

    stores = [RunStore(s, read_only=True) for s in sources]
    target = RunStore(dest)
    held = RunStore(dest, read_only=True) if target.runs_dir.is_dir() else None
    seen_versions: dict[str, str] = {}
    todo, present = [], []
    for store in ([held] if held is not None else []) + stores:
        for run_id in store.list_runs().get("run_id", []):
            run = store.load(run_id)
            seen_versions.setdefault(str(run.meta.get("lnsr_viz_version")), str(run.path))
            (present if store is held else todo).append(run)
    _check_same_data([*present, *todo])
    if len(seen_versions) > 1:
        described = ", ".join(f"{v} (e.g. {p})" for v, p in seen_versions.items())
        raise ValueError(f"the stores were written by different lnsr_viz versions: {described}; refusing to merge.")
    return sum(target.import_run(run.path) for run in todo)


def sweep_history(store: Any) -> pd.DataFrame:
    """The stored training histories with ``method``, ``setting`` and ``train_size`` columns (nothing else read)."""
    history = store.load_table("history")
    if history.empty:
        raise ValueError(f"{store!r} holds no training histories: run the sweep first.")
    history = history.rename(columns={"data.train_size": "train_size"})
    history["setting"] = history["label"].fillna(history["method"]) if "label" in history else history["method"]
    return history


def select_from_store(store: Any, **kwargs: Any) -> pd.DataFrame:
    """:func:`select_settings` on a run store's histories; reads no test or out-of-domain metric."""
    return select_settings(sweep_history(store), **kwargs)


def setting_order(config: Mapping[str, Any]) -> list[str]:
    """The settings of a sweep in the order its file lists them (the tie-break order of :func:`select_settings`)."""
    return list(dict.fromkeys(j.job.name for j in expand(config)))


def select_settings(history: pd.DataFrame, *, score: str = "val_accuracy", group: Sequence[str] = ("method",
                    "train_size"), setting: str = "setting", epoch: str = "last",
                    order: Sequence[str] | None = None) -> pd.DataFrame:
    """Choose, per method and training-set size, the setting with the best mean validation score over seeds.

    Only the history table (training-time validation numbers) is read: test and out-of-domain metrics cannot
    influence the choice. Rule: for each run take the validation score at its last epoch (``epoch='last'``) or its
    best epoch (``'best'``); average over seeds per setting; pick the highest mean; ties (means equal to 1e-12) go to
    the setting listed first in ``order`` (the sweep file's order, :func:`setting_order`), then to the
    alphabetically first name, so the choice never depends on the order in which runs were stored. Returns one row
    per group with the chosen setting, its mean score and seed count, and ``tied_with`` (the settings with the same
    mean that lost the tie-break, comma-separated; empty when there was no tie).
    """
    needed = {score, "epoch", setting, "seed", *group}
    missing = needed - set(history.columns)
    if missing:
        raise ValueError(f"select_settings needs the history columns {sorted(needed)}; missing {sorted(missing)}.")
    if epoch not in ("last", "best"):
        raise ValueError(f"epoch must be 'last' or 'best'; got {epoch!r}.")
    order_by = ["epoch", "step"] if "step" in history.columns else ["epoch"]  # step-budget runs: several per epoch
    per_run = history.sort_values(order_by, kind="stable").groupby([*group, setting, "seed"], sort=False)[score]
    run_scores = (per_run.last() if epoch == "last" else per_run.max()).reset_index()
    means = run_scores.groupby([*group, setting], sort=True)[score].agg(["mean", "count"]).reset_index()
    rank = {name: i for i, name in enumerate(order or [])}
    means["_rank"] = [rank.get(name, len(rank)) for name in means[setting]]
    means["_name"] = means[setting].astype(str)
    rows = []
    for _, g in means.groupby(list(group), sort=True):
        best = g["mean"].max()
        tied = g[g["mean"] >= best - 1e-12].sort_values(["_rank", "_name"], kind="stable")
        row = tied.iloc[0].copy()
        row["tied_with"] = ", ".join(map(str, tied[setting].iloc[1:]))
        rows.append(row)
    chosen = pd.DataFrame(rows).drop(columns=["_rank", "_name"])
    return chosen.rename(columns={"mean": f"mean_{score}", "count": "n_seeds", setting: "chosen"}).reset_index(
        drop=True)

"""Experiments: fine-tune every method over seeds, evaluate in and out of domain, probe, compare, report.

``compare(...)`` runs the grid methods x seeds on one data protocol, keyed in a :class:`~lnsr_viz.experiments.store.RunStore`
by the hash of each run's full configuration: a run that is already stored is loaded, not retrained, so an
interrupted sweep resumes where it stopped and a second call re-renders in seconds.

Protocol (documented, fixed by ``split_seed``): the in-domain data are split once into train / validation / test
(:func:`lnsr_viz.data.text.split_dataset`); the training set is a stratified subsample of ``train_size`` examples of the
train part, the validation set ``val_size`` examples of the validation part, and every evaluation set (the in-domain
test part and each out-of-domain set) a stratified subsample of at most ``eval_size`` examples. These subsets are the
same for every method and seed; the seeds vary the head initialisation, the shuffling, dropout and the noise. The
stability probe runs on the first ``probe_n`` examples of the in-domain evaluation set, for the pre-trained model and
every fine-tuned one.
"""

from __future__ import annotations

import copy
import hashlib
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..methods.base import METHODS, get_method
from ..utils.validation import check_number, check_positive_int

__all__ = ["compare", "ComparisonResult", "DEMO_SETTINGS", "build_report", "Protocol"]

# The demo's headline setting (the paper's regime: few examples). Chosen a priori, never tuned on results.
DEMO_SETTINGS: dict[str, Any] = dict(
    methods=("vanilla", "lnsr"), seeds=(1, 2, 3), train_size=500, val_size=300, eval_size=600, epochs=4,
    batch_size=32, lr=5e-5, max_length=64, probe_n=64, probe_draws=4,
)


@dataclass
class Protocol:
    """The fixed data subsets of one experiment."""

    train: Any
    validation: Any
    evaluation: dict[str, Any]
    in_domain: str
    fingerprint: str
    task: str = "classification"
    qa_stride: int = 64

    @property
    def n_probe_examples(self) -> int:
        return len(self.evaluation[self.in_domain])

    @property
    def probe_texts(self) -> list[str]:
        """The in-domain evaluation sentences (classification), in order; the probe uses the first ones."""
        return list(self.evaluation[self.in_domain].texts)

    def probe_inputs(self, n: int, tokenizer: Any, max_length: int, model: Any) -> Any:
        """What the stability probe runs on: the first ``n`` in-domain sentences, or their QA windows."""
        if self.task == "classification":
            return self.probe_texts[:n]
        from ..data.squad import feature_batches, prepare_features

        data = self.evaluation[self.in_domain].subset(range(n))
        feats = prepare_features(data, tokenizer, max_length=max_length, stride=min(self.qa_stride, max_length // 2),
                                 with_labels=False)
        return feature_batches(feats, list(range(len(feats["input_ids"]))), with_labels=False, model=model,
                               device=next(model.parameters()).device)

    def n_labels(self) -> int:
        if self.task != "classification":
            return 2
        return int(max(self.train.labels.max(), *(d.labels.max() for d in self.evaluation.values())) + 1)

    def evaluate(self, model: Any, tokenizer: Any, max_length: int) -> pd.DataFrame:
        """The tidy ``domain, metric, value`` table of every evaluation set."""
        if self.task == "classification":
            from ..analysis.evaluation import evaluate

            return evaluate(model, tokenizer, self.evaluation, max_length=max_length)
        from ..data.squad import evaluate_qa

        return evaluate_qa(model, tokenizer, self.evaluation, max_length=max_length,
                           stride=min(self.qa_stride, max_length // 2))


def _fingerprint(datasets: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(datasets):
        ds = datasets[name]
        h.update(name.encode())
        if hasattr(ds, "examples"):  # QA: question ids identify the data
            for ex in ds.examples:
                h.update(ex.id.encode())
            continue
        for text, label in zip(ds.texts, ds.labels, strict=True):
            h.update(text.encode("utf-8", "replace"))
            h.update(str(int(label)).encode())
    return h.hexdigest()[:16]


def make_protocol(data: Any = "movie", *, ood: Sequence[Any] | Mapping[str, Any] = ("amazon", "tweets", "nyt"),
                  train_size: int = 500, val_size: int = 300, eval_size: int | None = 600, split_seed: int = 0,
                  neutral_band: float = 0.0, text_column: str = "text", label_column: str = "label") -> Protocol:
    """Build the fixed train / validation / evaluation subsets (see the module docstring)."""
    from ..data.text import DOMAINS, as_dataset, load_domain, split_dataset, subsample

    if isinstance(data, str) and data in DOMAINS:
        in_name = data
        full = load_domain(data, neutral_band=neutral_band)
    else:
        full = as_dataset(data, text_column=text_column, label_column=label_column)
        in_name = full.name or "in_domain"
    splits = split_dataset(full, seed=split_seed)
    if train_size > len(splits["train"]):
        raise ValueError(f"train_size={train_size} is larger than the {len(splits['train'])} examples in the train "
                         f"part of {in_name!r}; use train_size <= {len(splits['train'])}.")
    train = subsample(splits["train"], train_size, seed=split_seed)
    validation = subsample(splits["validation"], min(val_size, len(splits["validation"])), seed=split_seed)

    def cap(ds: Any) -> Any:
        if eval_size is None or len(ds) <= eval_size:
            return ds
        return subsample(ds, eval_size, seed=split_seed)

    evaluation = {in_name: cap(splits["test"])}
    items = ood.items() if isinstance(ood, Mapping) else ((o, o) for o in ood)
    for name, source in items:
        if isinstance(source, str) and source in DOMAINS:
            ds = load_domain(source, neutral_band=neutral_band)
        elif isinstance(source, str) and not Path(source).exists():
            raise ValueError(f"Unknown out-of-domain set {source!r}: expected one of {sorted(DOMAINS)} or a CSV path.")
        else:
            ds = as_dataset(source, text_column=text_column, label_column=label_column)
        name = str(name)
        if name in evaluation:
            raise ValueError(f"Evaluation set name {name!r} appears twice; give each domain a distinct name.")
        evaluation[name] = cap(ds)
    fp = _fingerprint({"train": train, "validation": validation, **evaluation})
    return Protocol(train=train, validation=validation, evaluation=evaluation, in_domain=in_name, fingerprint=fp)


def make_qa_protocol(data: Any = "squad", *, ood: Sequence[Any] = (), train_group: str = "science",
                     train_size: int = 2000, val_size: int = 300, eval_size: int | None = 500, split_seed: int = 0,
                     stride: int = 64) -> Protocol:
    """Fixed QA subsets: topic groups of SQuAD v1.1 (``data='squad'``) or a random split of any SQuAD file.

    With the packaged SQuAD, the ``train_group`` articles' questions are split (:func:`lnsr_viz.data.squad.topic_split`)
    into a training pool and held-out questions; ``train_size`` questions are drawn from the pool, the held-out
    questions give the validation set (``val_size``) and the in-group test set (the rest, at most ``eval_size``), and
    every other topic group is an out-of-domain test set (at most ``eval_size`` questions each). With another SQuAD
    file, its questions are split at random the same way and ``ood`` lists further SQuAD files.
    """
    from ..data.squad import load_squad, topic_split

    if isinstance(data, str) and data == "squad":
        split = topic_split(load_squad("train"), train_group=train_group, held_out=0.3, seed=split_seed)
        pool, held = split.pop("train"), split.pop(f"test:{train_group}")
        others = {name.split(":", 1)[1]: ds for name, ds in split.items()}
        in_name = train_group
    else:
        full = data if hasattr(data, "examples") else load_squad(data)
        perm = np.random.default_rng(split_seed).permutation(len(full))
        n_held = int(round(0.3 * len(full)))
        held, pool = full.subset(sorted(perm[:n_held].tolist())), full.subset(sorted(perm[n_held:].tolist()))
        others = {}
        for path in ood:
            ds = path if hasattr(path, "examples") else load_squad(path)
            others[ds.name] = ds
        in_name = full.name
    if train_size > len(pool):
        raise ValueError(f"train_size={train_size} is larger than the {len(pool)} training questions of {in_name!r}.")
    train = pool.sample(train_size, seed=split_seed)
    order = np.random.default_rng(split_seed + 1).permutation(len(held))
    n_val = min(val_size, len(held) // 2)
    validation = held.subset(sorted(order[:n_val].tolist()), name=f"{in_name}/validation")
    test = held.subset(sorted(order[n_val:].tolist()), name=f"{in_name}/test")

    def cap(ds: Any) -> Any:
        return ds if eval_size is None or len(ds) <= eval_size else ds.sample(eval_size, seed=split_seed)

    evaluation = {in_name: cap(test), **{name: cap(ds) for name, ds in others.items()}}
    fp = _fingerprint({"train": train, "validation": validation, **evaluation})
    return Protocol(train=train, validation=validation, evaluation=evaluation, in_domain=in_name, fingerprint=fp,
                    task="qa", qa_stride=stride)


@dataclass
class ComparisonResult:
    """Tidy results of :func:`compare` (see ``docs/architecture.md`` for the columns)."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    history: pd.DataFrame
    profiles: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    config: dict[str, Any]
    label_balance: pd.DataFrame = field(default_factory=pd.DataFrame)
    timings: dict[str, float] = field(default_factory=dict)
    drift: pd.DataFrame = field(default_factory=pd.DataFrame)

    def report(self, path: str | Path, *, title: str = "lnsr_viz: fine-tuning with and without LNSR") -> Path:
        """Write the self-contained interactive HTML report and return its path."""
        return build_report(self, title=title).save(path)


def _model_label(model: Any) -> str:
    if isinstance(model, str):
        return model
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "_name_or_path", "") or type(model).__name__)


def _validate(methods: Sequence[str], seeds: Sequence[int], method_params: Mapping[str, Mapping[str, Any]]) -> None:
    if isinstance(methods, str):
        raise ValueError("methods must be a list of method names, e.g. ['vanilla', 'lnsr'].")
    if not methods:
        raise ValueError("methods is empty: give at least one method, e.g. ['vanilla', 'lnsr'].")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"Unknown method {m!r}. Expected one of {sorted(METHODS)}.")
        get_method(m, **dict(method_params.get(m, {})))  # parameters checked before any work
    unknown = set(method_params) - set(methods)
    if unknown:
        raise ValueError(f"method_params names methods that are not run: {sorted(unknown)}.")
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed (three or more to measure spread).")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct; got {list(seeds)}.")
    for s in seeds:
        check_number("seed", s, owner="compare", low=0, integer=True)


@dataclass(frozen=True)
class Job:
    """One run of a grid: a method with its parameters and a seed (``method='pretrained'``: probe only)."""

    method: str
    params: Mapping[str, Any]
    seed: int | None
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or self.method


def _split_cfg(train_size: int, val_size: int, eval_size: int | None, split_seed: int,
               neutral_band: float) -> dict[str, Any]:
    return {"train_size": train_size, "val_size": val_size, "eval_size": eval_size, "split_seed": split_seed,
            "neutral_band": neutral_band}


def _data_cfg(protocol: Protocol, split: Mapping[str, Any]) -> dict[str, Any]:
    return {"in_domain": protocol.in_domain, "evaluation": sorted(protocol.evaluation), **split,
            "fingerprint": protocol.fingerprint}


def _probe_cfg(probe: Mapping[str, Any], protocol: Protocol, max_length: int) -> dict[str, Any]:
    n = min(int(probe["n"]), protocol.n_probe_examples)
    return {"n": n, "n_draws": probe["n_draws"], "noise": probe["noise"], "scale": probe["scale"],
            "scale_kind": "relative", "injection_layers": "all", "max_length": max_length}


def run_config(job: Job, *, model_label: str, data_cfg: Mapping[str, Any], train: Mapping[str, Any],
               probe_cfg: Mapping[str, Any], task: str = "classification") -> dict[str, Any]:
    """The full configuration of one run, as hashed by the run store."""
    cfg: dict[str, Any] = {"kind": task, "model": model_label, "method": job.method, "seed": job.seed,
                           "data": dict(data_cfg), "probe": dict(probe_cfg)}
    if job.method != "pretrained":
        cfg["method_params"] = get_method(job.method, **dict(job.params)).params()
        cfg["train"] = dict(train)
    if job.label and job.label != job.method:  # a named setting of a sweep
        cfg["label"] = job.label
    return cfg


def _reference_model(model: Any, task: str, n_labels: int, device: str | None) -> Any:
    """The pre-trained model that drift is measured from (its head is never read: drift covers layers 0..L)."""
    from ..data.models import load_model

    ref, _ = load_model(model, task=task, num_labels=n_labels, seed=0)
    if device is not None:
        ref.to(device)
    return ref.eval()


def run_jobs(jobs: Sequence[Job], *, protocol: Protocol, model: Any, store: Any, train: Mapping[str, Any],
             probe: Mapping[str, Any], split: Mapping[str, Any], save_checkpoints: bool = False,
             progress: bool = True, verbose: bool = True, callbacks: Sequence[Any] = (),
             device: str | None = None) -> pd.DataFrame:
    """Run (or load from ``store``) every job on one data protocol; one row per job.

    A job whose configuration is already stored is loaded, not retrained: this is how interrupted grids resume.
    ``device`` (e.g. ``'cuda'``) is where each model trains; it is recorded with the run (``extra.json``) but is not
    part of the run's key, so a stored run is reused whichever device made it.
    """
    from tqdm.auto import tqdm

    from ..analysis.drift import representation_drift
    from ..core.probe import StabilityProbe
    from ..data.models import load_model
    from ..training.loop import FineTuner
    from ..utils.validation import check_device

    device = check_device(device, owner="run_jobs")
    max_length = int(train["max_length"])
    probe_cfg = _probe_cfg(probe, protocol, max_length)
    n_labels = protocol.n_labels()
    model_label = _model_label(model)
    data_cfg = _data_cfg(protocol, split)
    prober = StabilityProbe(probe_cfg["noise"], scale=probe_cfg["scale"], n_draws=probe_cfg["n_draws"],
                            max_length=max_length, seed=0, progress=False)
    train_kw = {k: train[k] for k in ("epochs", "batch_size", "lr", "max_length", "warmup_ratio", "weight_decay",
                                      "max_grad_norm")}
    say = tqdm.write if verbose else (lambda *_a, **_k: None)
    reference = None  # the pre-trained model, loaded once when the first fine-tuned run needs it
    if not isinstance(model, (str, Path)):  # a user's model object: drift is measured from it as given
        reference = copy.deepcopy(model)
        if device is not None and hasattr(reference, "to"):
            reference.to(device)
    rows = []
    outer = tqdm(jobs, desc="runs", unit="run", disable=not progress)
    for job in outer:
        cfg = run_config(job, model_label=model_label, data_cfg=data_cfg, train=train_kw, probe_cfg=probe_cfg,
                         task=protocol.task)
        what = "pre-trained model" if job.method == "pretrained" else f"{job.name}, seed {job.seed}"
        if store.exists(cfg):
            run = store.load(cfg)
            rows.append({"run_id": run.run_id, "method": job.name, "seed": job.seed, "cached": True,
                         "seconds": run.extra.get("seconds", float("nan")), "collapsed": run.extra.get("collapsed")})
            say(f"  {what}: loaded from the run store ({run.run_id})")
            continue
        t0 = time.perf_counter()
        net, tokenizer = load_model(model, task=protocol.task, num_labels=n_labels, seed=job.seed or 0)
        if not isinstance(model, (str, Path)):  # a user's model object: every run starts from its own copy
            net = copy.deepcopy(net)
        if device is not None:
            net.to(device)
        extra: dict[str, Any] = {"device": str(next(net.parameters()).device)}
        metrics = pd.DataFrame(columns=["domain", "metric", "value"])
        history = None
        if job.method != "pretrained":
            say(f"  {what}: fine-tuning on {len(protocol.train)} examples ...")
            guards = []
            if protocol.task == "classification":  # watch the representations' spread (collapse guard)
                from ..training.collapse import CollapseGuard

                guards = [CollapseGuard(list(protocol.validation.texts[:64]), tokenizer, max_length=max_length)]
            tuner = FineTuner(job.method, method_params=dict(job.params), seed=job.seed or 0, progress=progress,
                              callbacks=[*guards, *callbacks], **train_kw)
            tuner.fit(net, tokenizer, protocol.train, protocol.validation)
            history = tuner.history_
            extra["train_seconds"] = tuner.state_.seconds
            if guards:
                extra["collapsed"] = bool(guards[0].collapsed)
                if guards[0].collapsed:
                    say(f"  {what}: WARNING: the representations collapsed (see the history's collapse columns)")
            say(f"  {what}: evaluating on {', '.join(protocol.evaluation)} ...")
            metrics = protocol.evaluate(net, tokenizer, max_length)
        say(f"  {what}: stability probe ({probe_cfg['n']} examples, {probe_cfg['n_draws']} draws) ...")
        probe_inputs = protocol.probe_inputs(probe_cfg["n"], tokenizer, max_length, net)
        profile = prober.run(net, probe_inputs, tokenizer=tokenizer, label=job.name)
        drift = None
        if job.method != "pretrained":  # how far each layer moved from the pre-trained model, on the probe inputs
            if reference is None:
                reference = _reference_model(model, protocol.task, n_labels, device)
            drift = representation_drift(reference, net, probe_inputs, tokenizer, names=("pretrained", job.name),
                                         max_length=max_length)
        extra["seconds"] = time.perf_counter() - t0
        checkpoint_fn = None
        if save_checkpoints and job.method != "pretrained":
            def checkpoint_fn(folder: Path, net: Any = net, tokenizer: Any = tokenizer) -> None:
                from .diagnose import save_checkpoint

                # records the base model in config.json so that `diagnose` can find it later
                save_checkpoint(net, tokenizer, folder, base_model=model_label)
        store.save(cfg, metrics=metrics, history=history, profile=profile, extra=extra, drift=drift,
                   checkpoint_fn=checkpoint_fn)
        rows.append({"run_id": store.run_id(cfg), "method": job.name, "seed": job.seed, "cached": False,
                     "seconds": extra["seconds"], "collapsed": extra.get("collapsed")})
        say(f"  {what}: done in {extra['seconds']:.0f} s")
    outer.close()
    runs = pd.DataFrame(rows, columns=["run_id", "method", "seed", "cached", "seconds", "collapsed"])
    runs["seed"] = runs["seed"].astype("Int64")
    return runs


def compare(methods: Sequence[str] = ("vanilla", "lnsr"), seeds: Sequence[int] = (1, 2, 3), *,
            model: Any = "minilm", data: Any = "movie", ood: Sequence[Any] | Mapping[str, Any] = ("amazon", "tweets",
                                                                                                  "nyt"),
            train_size: int = 500, val_size: int = 300, eval_size: int | None = 600, epochs: int = 4,
            batch_size: int = 32, lr: float = 5e-5, max_length: int = 64, warmup_ratio: float = 0.1,
            weight_decay: float = 0.01, max_grad_norm: float = 1.0,
            method_params: Mapping[str, Mapping[str, Any]] | None = None, probe_n: int = 64, probe_draws: int = 4,
            probe_noise: str = "gaussian", probe_scale: float = 0.05, results: str | Path = "results",
            split_seed: int = 0, neutral_band: float = 0.0, text_column: str = "text", label_column: str = "label",
            baseline: str = "vanilla", save_checkpoints: bool = False, progress: bool = True,
            verbose: bool = True, task: str = "classification", qa_group: str = "science",
            device: str | None = None) -> ComparisonResult:
    """Fine-tune each method with each seed, evaluate in / out of domain, probe, and compare over seeds.

    Parameters
    ----------
    methods : sequence of str
        Method names (``vanilla``, ``lnsr``, ...).
    seeds : sequence of int
        One run per method and seed; at least 3 to measure spread.
    model : str or path
        ``minilm`` (the packaged default), a Hugging Face id, or a local checkpoint folder.
    data : str, path, DataFrame or datasets.Dataset
        The in-domain data: a packaged domain name or any labelled text data.
    ood : sequence or mapping
        Out-of-domain evaluation sets: packaged domain names, or ``{name: data}``.
    train_size, val_size, eval_size : int
        Sizes of the fixed subsets (see the module docstring); ``eval_size=None`` evaluates on everything.
    epochs, batch_size, lr, max_length, warmup_ratio, weight_decay, max_grad_norm
        Passed to :class:`~lnsr_viz.training.loop.FineTuner`.
    method_params : mapping, optional
        ``{method: {param: value}}``, e.g. ``{'lnsr': {'lam': 10.0}}``.
    probe_n, probe_draws, probe_noise, probe_scale
        The stability probe's examples, draws, noise type and relative scale.
    results : str or path
        The run store's folder.
    baseline : str
        The method every other method is compared with, seed by seed.
    progress, verbose : bool
        Progress bars; one status line per run step.
    task : {'classification', 'qa'}
        ``'qa'``: extractive question answering; ``data='squad'`` (the packaged SQuAD v1.1 with its topic groups,
        trained on ``qa_group``) or a SQuAD-format file, ``ood`` further SQuAD files (see :func:`make_qa_protocol`).
    device : str, optional
        Where to train and evaluate (``'cuda'``, ``'cuda:1'``, ...); default: the CPU. Not part of the run key.
    """
    from ..training.loop import FineTuner
    from ..utils.validation import check_device
    from .store import RunStore

    t_start = time.perf_counter()
    method_params = {k: dict(v) for k, v in (method_params or {}).items()}
    methods = list(methods)
    seeds = [int(s) for s in seeds]
    _validate(methods, seeds, method_params)
    check_positive_int("train_size", train_size, owner="compare")
    check_positive_int("val_size", val_size, owner="compare")
    if eval_size is not None:
        check_positive_int("eval_size", eval_size, owner="compare")
    check_positive_int("probe_n", probe_n, owner="compare")
    # Trainer parameters are checked here, before any data or model is loaded.
    FineTuner("vanilla", epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length,
              warmup_ratio=warmup_ratio, weight_decay=weight_decay, max_grad_norm=max_grad_norm, progress=False)
    if task not in ("classification", "qa"):
        raise ValueError(f"task must be 'classification' or 'qa'; got {task!r}.")
    device = check_device(device, owner="compare")
    store = RunStore(results)
    split = _split_cfg(train_size, val_size, eval_size, split_seed, neutral_band)
    if task == "qa":
        if isinstance(data, str) and data == "movie":  # the classification defaults mean "the packaged SQuAD"
            data = "squad"
        if not isinstance(ood, Mapping) and tuple(ood) == ("amazon", "tweets", "nyt"):
            ood = ()
        protocol = make_qa_protocol(data, ood=ood, train_group=qa_group, train_size=train_size, val_size=val_size,
                                    eval_size=eval_size, split_seed=split_seed)
    else:
        protocol = make_protocol(data, ood=ood, train_size=train_size, val_size=val_size, eval_size=eval_size,
                                 split_seed=split_seed, neutral_band=neutral_band, text_column=text_column,
                                 label_column=label_column)
    train_cfg = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "max_length": max_length,
                 "warmup_ratio": warmup_ratio, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm}
    probe_cfg = {"n": probe_n, "n_draws": probe_draws, "noise": probe_noise, "scale": probe_scale}
    jobs = [Job("pretrained", {}, None)] + [Job(m, method_params.get(m, {}), s) for m in methods for s in seeds]
    runs = run_jobs(jobs, protocol=protocol, model=model, store=store, train=train_cfg, probe=probe_cfg,
                    split=split, save_checkpoints=save_checkpoints, progress=progress, verbose=verbose, device=device)
    model_label = _model_label(model)
    data_cfg = _data_cfg(protocol, split)
    probe_cfg = _probe_cfg(probe_cfg, protocol, max_length)
    result = _collect(store, runs, baseline=baseline, methods=methods)
    if task == "qa":
        balance = pd.DataFrame([{"domain": name, "n": len(ds), "articles": len(ds.titles)}
                                for name, ds in protocol.evaluation.items()])
    else:
        balance = pd.DataFrame([{"domain": name, "n": len(ds), "positive_rate": float(np.mean(ds.labels == 1))}
                                for name, ds in protocol.evaluation.items()])
    config = {"task": task, "model": model_label, "methods": methods, "seeds": seeds, "method_params": {
        m: get_method(m, **method_params.get(m, {})).params() for m in methods}, "data": data_cfg,
        "train": train_cfg, "probe": probe_cfg, "results": str(results), "baseline": baseline}
    result.config = config
    result.label_balance = balance
    result.timings = {"total_seconds": time.perf_counter() - t_start,
                      "trained_runs": int((~runs["cached"]).sum()), "cached_runs": int(runs["cached"].sum())}
    return result


def _collect(store: Any, runs: pd.DataFrame, *, baseline: str, methods: Sequence[str]) -> ComparisonResult:
    """Gather the stored tables of ``runs`` and compute the statistics over seeds."""
    from ..analysis.stats import paired_comparison, summarize

    metrics, history, profiles, drifts = [], [], [], []
    for row in runs.itertuples():
        run = store.load(row.run_id)
        flag = getattr(row, "collapsed", None)  # None / NaN for probe-only runs and runs without the guard
        ids = {"run_id": row.run_id, "method": row.method, "seed": row.seed,
               "collapsed": bool(flag) if isinstance(flag, (bool, np.bool_)) else False}
        if run.drift is not None and len(run.drift):
            drifts.append(run.drift.assign(**ids))
        if run.metrics is not None and len(run.metrics):
            metrics.append(run.metrics.assign(**ids))
        if run.history is not None and len(run.history):
            history.append(run.history.assign(**ids))
        if run.profile is not None and len(run.profile):
            profiles.append(run.profile.assign(**ids))
    metrics_df = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(
        columns=["domain", "metric", "value", "run_id", "method", "seed"])
    history_df = pd.concat(history, ignore_index=True) if history else pd.DataFrame()
    profiles_df = pd.concat(profiles, ignore_index=True) if profiles else pd.DataFrame()
    drift_df = pd.concat(drifts, ignore_index=True) if drifts else pd.DataFrame()
    scored = metrics_df[~metrics_df["metric"].isin(["n", "positive_rate"])]
    summary = summarize(scored) if len(scored) else pd.DataFrame()
    paired = []
    if baseline in methods:
        for m in methods:
            if m != baseline:
                paired.append(paired_comparison(scored, method=m, baseline=baseline))
    paired_df = pd.concat(paired, ignore_index=True) if paired else pd.DataFrame()
    return ComparisonResult(runs=runs, metrics=metrics_df, history=history_df, profiles=profiles_df,
                            summary=summary, paired=paired_df, config={}, drift=drift_df)


def _machine() -> dict[str, Any]:
    import os

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or
            platform.machine(), "cores": os.cpu_count(), "torch threads": torch.get_num_threads()}


def build_report(result: ComparisonResult, *, title: str) -> Any:
    """Assemble the HTML report of a comparison (figures, statistics in plain words, the protocol)."""
    from ..viz import figures as plots
    from ..viz.report import Report

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
        lines = "\n".join(f"- **{r.domain}, {r.metric}**: {r.verdict}" for r in verdicts.itertuples())
        rep.add_text(lines, heading="Verdicts in plain words")
    if len(result.profiles):
        prof = result.profiles
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
        from ..viz.analysis_figures import plot_drift_by_layer

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
        rep.add_table(result.paired[["method", "baseline", "domain", "metric", "n_pairs", "mean_diff", "ci_low",
                                     "ci_high", "p_sign", "p_permutation", "verdict"]],
                      heading="Paired comparison table")
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

"""Experiments: fine-tune every method over seeds, evaluate in and out of domain, probe, compare (the report of a
comparison is :func:`lnsr_viz.viz.reports.comparison_report`).

``compare(...)`` runs the grid methods x seeds on one data protocol, keyed in a
:class:`~lnsr_viz.experiments.store.RunStore` by the hash of each run's full configuration: a run that is already stored
is loaded, not retrained, so an interrupted sweep resumes where it stopped and a second call re-renders in seconds.

Protocol (documented, fixed by ``split_seed``): the in-domain data are split once into train / validation / test
(:func:`lnsr_viz.data.text.split_dataset`); the training set is a stratified subsample of ``train_size`` examples of the
train part, the validation set ``val_size`` examples of the validation part, and every evaluation set (the in-domain
test part and each out-of-domain set) a stratified subsample of at most ``eval_size`` examples. These subsets are the
same for every method and seed; the seeds vary the head initialisation, the shuffling, dropout and the noise. The
stability probe runs on the first ``probe_n`` examples of the in-domain evaluation set, for the pre-trained model and
every fine-tuned one. Every setting, with its default, is a field of
:class:`~lnsr_viz.experiments.config.ExperimentConfig`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.text import IN_DOMAIN, OOD_DOMAINS, parse_data_spec
from ..methods import get_method
from .config import ExperimentConfig

__all__ = ["compare", "ComparisonResult", "Protocol", "build_protocol", "check_model_fit", "probe_key", "run_config",
           "run_configs", "run_jobs", "train_key", "Job", "collect_comparison", "keeps_checkpoint"]

_DEMO_KEYS = ("methods", "seeds", "train_size", "val_size", "eval_size", "epochs", "batch_size", "lr", "max_length",
              "probe_n", "probe_draws")


def __getattr__(name: str) -> Any:
    """``DEMO_SETTINGS``: the demo's headline setting as ``compare`` keywords, read off :meth:`ExperimentConfig.demo`
    (kept for callers that spread it into ``compare(**DEMO_SETTINGS)``; built on first use, not at import)."""
    if name == "DEMO_SETTINGS":
        demo = ExperimentConfig.demo()
        return {k: getattr(demo, k) for k in _DEMO_KEYS}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    #: The training data's classes (names, or the number of class ids) and the label map applied to every file;
    #: stored with every run (``extra.json``), not part of its key.
    labels: dict[str, Any] = field(default_factory=dict)

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
        """The model's number of classes: the training data's, never widened by an evaluation set."""
        if self.task != "classification":
            return 2
        if self.labels.get("classes"):
            return len(self.labels["classes"])
        return int(self.train.n_classes)

    def evaluate(self, model: Any, tokenizer: Any, max_length: int, *, precision: str = "fp32") -> pd.DataFrame:
        """The tidy ``domain, metric, value`` table of every evaluation set (forward passes in ``precision``)."""
        if self.task == "classification":
            from ..analysis.evaluation import evaluate

            return evaluate(model, tokenizer, self.evaluation, max_length=max_length, precision=precision)
        from ..analysis.qa_evaluation import evaluate_qa
        from ..core.inputs import model_device
        from ..utils.precision import autocast

        with autocast(precision, model_device(model)):
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


def make_protocol(data: Any = IN_DOMAIN, *, ood: Sequence[Any] | Mapping[str, Any] = OOD_DOMAINS,
                  train_size: int = 500, val_size: int = 300, eval_size: int | None = 600, split_seed: int = 0,
                  neutral_band: float = 0.0, text_column: str = "text", label_column: str = "label",
                  label_map: Mapping[Any, Any] | None = None, encoding: str | None = None,
                  label_noise: float = 0.0) -> Protocol:
    """Build the fixed train / validation / evaluation subsets (see the module docstring).

    The classes come from the training data only (:func:`lnsr_viz.data.text.training_classes`) and every evaluation
    set is expressed in them (string labels by name, class ids as ids); an evaluation set with a label the training
    data lacks is refused unless ``label_map`` maps it. Out-of-domain sets given as a list are named as ``data`` is
    (a domain's name, a file's stem); an out-of-domain set whose texts occur in the in-domain data is warned about.
    ``label_noise`` flips that fraction of the training labels (:func:`lnsr_viz.data.text.flip_labels`, seeded by
    ``split_seed``); the validation and evaluation sets keep theirs, and the flipped rows are recorded in
    ``labels['label_noise']``.
    """
    from ..data.text import (
        DOMAINS,
        as_dataset,
        check_label_map,
        flip_labels,
        load_domain,
        split_dataset,
        subsample,
        training_classes,
    )

    lmap = check_label_map(label_map)
    if isinstance(data, str) and data in DOMAINS:
        in_name = data
        full = load_domain(data, neutral_band=neutral_band)
        if lmap:
            full = as_dataset(full, label_map=lmap)
    else:
        full = as_dataset(data, text_column=text_column, label_column=label_column, label_map=lmap,
                          encoding=encoding)
        in_name = full.name or "in_domain"
    classes = training_classes(full)
    splits = split_dataset(full, seed=split_seed)
    if train_size > len(splits["train"]):
        raise ValueError(f"train_size={train_size} is larger than the {len(splits['train'])} examples in the train "
                         f"part of {in_name!r}; use train_size <= {len(splits['train'])}.")
    train = subsample(splits["train"], train_size, seed=split_seed)
    flipped = None
    if label_noise:
        train, rows = flip_labels(train, label_noise, seed=split_seed)
        flipped = {"fraction": float(label_noise), "n_flipped": int(len(rows)), "rows": [int(r) for r in rows]}
    validation = subsample(splits["validation"], min(val_size, len(splits["validation"])), seed=split_seed)

    def cap(ds: Any) -> Any:
        if eval_size is None or len(ds) <= eval_size:
            return ds
        return subsample(ds, eval_size, seed=split_seed)

    evaluation = {in_name: cap(splits["test"])}
    items = ood.items() if isinstance(ood, Mapping) else ((None, o) for o in ood)
    seen = set(full.texts)
    for name, source in items:
        if isinstance(source, str) and source in DOMAINS:
            ds = as_dataset(load_domain(source, neutral_band=neutral_band), classes=classes, label_map=lmap)
        elif isinstance(source, str) and not Path(parse_data_spec(source)[0]).expanduser().exists():
            raise ValueError(f"Unknown out-of-domain set {source!r}: expected one of {sorted(DOMAINS)} or a CSV path.")
        else:
            ds = as_dataset(source, text_column=text_column, label_column=label_column, classes=classes,
                            label_map=lmap, encoding=encoding)
        name = ds.name if name is None else str(name)
        if name in evaluation:
            raise ValueError(f"Evaluation set name {name!r} appears twice; give each domain a distinct name.")
        _warn_leakage(name, ds, seen, in_name)
        evaluation[name] = cap(ds)
    fp = _fingerprint({"train": train, "validation": validation, **evaluation})
    names = list(classes) if isinstance(classes, tuple) else [str(k) for k in range(classes)]
    labels = {"classes": {str(k): v for k, v in enumerate(names)}, "named": isinstance(classes, tuple),
              "from": in_name, "label_map": lmap}
    if flipped is not None:
        labels["label_noise"] = flipped
    return Protocol(train=train, validation=validation, evaluation=evaluation, in_domain=in_name, fingerprint=fp,
                    labels=labels)


def _warn_leakage(name: str, ds: Any, seen: set[str], in_name: str) -> None:
    """Warn when an out-of-domain set shares texts with the in-domain data (e.g. the training file given twice)."""
    import warnings

    shared = sum(t in seen for t in ds.texts)
    if shared:
        same = " (the same texts as the in-domain file)" if shared == len(ds) else ""
        warnings.warn(f"leakage: {shared} of {len(ds)} texts of the out-of-domain set {name!r} also occur in the "
                      f"in-domain data {in_name!r}{same}; its scores are not out-of-domain.", UserWarning,
                      stacklevel=3)


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
    profile: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    config: dict[str, Any]
    label_balance: pd.DataFrame = field(default_factory=pd.DataFrame)
    timings: dict[str, float] = field(default_factory=dict)
    drift: pd.DataFrame = field(default_factory=pd.DataFrame)


def _model_label(model: Any) -> str:
    if isinstance(model, str):
        return model
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "_name_or_path", "") or type(model).__name__)


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


def build_protocol(config: ExperimentConfig) -> Protocol:
    """The fixed data subsets of ``config`` (:func:`make_protocol`, or :func:`make_qa_protocol` for QA)."""
    if config.task == "qa":
        return make_qa_protocol(config.in_domain_data(), ood=config.ood_data(), train_group=config.qa_group,
                                train_size=config.train_size, val_size=config.val_size, eval_size=config.eval_size,
                                split_seed=config.split_seed)
    return make_protocol(config.in_domain_data(), ood=config.ood_data(), train_size=config.train_size,
                         val_size=config.val_size, eval_size=config.eval_size, split_seed=config.split_seed,
                         neutral_band=config.neutral_band, text_column=config.text_column,
                         label_column=config.label_column, label_map=config.label_map, encoding=config.encoding,
                         label_noise=config.label_noise)


def data_key(protocol: Protocol, config: ExperimentConfig) -> dict[str, Any]:
    """The ``data`` part of a run's key: the data's names, the split's settings and the data's fingerprint."""
    return {"in_domain": protocol.in_domain, "evaluation": sorted(protocol.evaluation), **config.split_params(),
            "fingerprint": protocol.fingerprint}


#: The probe's parameters that a run's key records (the others, such as its batch size, do not change a profile).
PROBE_KEY_PARAMS = ("n_draws", "noise", "scale", "scale_kind", "injection_layers", "max_length")


def _probe_params(prober: Any) -> dict[str, Any]:
    """The probe's own parameters (its ``get_params()`` where it has one), with the noise as its name and scale."""
    from ..core.noise import NoiseInjector

    if hasattr(prober, "get_params"):
        params = dict(prober.get_params())
    else:
        params = {"n_draws": prober.n_draws, "noise": prober.injector, "injection_layers": prober.injection_layers,
                  "max_length": prober.max_length}
    noise = params.get("noise", getattr(prober, "injector", None))
    if isinstance(noise, NoiseInjector):  # the injector's own parameters, under the probe's names
        params.update(noise=noise.name, scale=noise.scale, scale_kind=noise.scale_kind)
    return params


def probe_key(prober: Any, n: int) -> dict[str, Any]:
    """The ``probe`` part of a run's key: ``n`` probed examples and the parameters of the probe that ran on them.

    ``injection_layers=None`` (every layer) is recorded as ``'all'``; a precision other than ``'fp32'`` is
    recorded as ``precision`` (float32 adds nothing). For a float32 probe made by :meth:`ExperimentConfig.make_probe`
    this is the dict the run store has always hashed, key for key.
    """
    from ..utils.precision import DEFAULT_PRECISION

    params = _probe_params(prober)
    key = {"n": int(n), **{name: params[name] for name in PROBE_KEY_PARAMS}}
    if key["injection_layers"] is None:
        key["injection_layers"] = "all"
    precision = params.get("precision", DEFAULT_PRECISION)
    if precision != DEFAULT_PRECISION:
        key["precision"] = precision
    return key


def train_key(config: ExperimentConfig) -> dict[str, Any]:
    """The ``train`` part of a run's key: the trainer's settings, ``precision`` only where it is not ``'fp32'``.

    Float32 runs keep the key they had before precision existed (the committed stores are checked by
    ``tests/test_config.py``); a bf16 run gets its own key.
    """
    from ..utils.precision import DEFAULT_PRECISION

    params = config.train_params()  # already without a default precision; made sure of here, where keys are built
    if params.get("precision", DEFAULT_PRECISION) == DEFAULT_PRECISION:
        params.pop("precision", None)
    return params


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


def run_configs(jobs: Sequence[Job], config: ExperimentConfig, protocol: Protocol) -> list[dict[str, Any]]:
    """The configuration of every job (what the run store hashes into its run id), in order.

    The ``train`` part is ``config``'s trainer settings, the ``probe`` part the parameters of
    :meth:`ExperimentConfig.make_probe`'s probe (:func:`probe_key`), the ``data`` part :func:`data_key`.
    """
    n = min(int(config.probe_n), protocol.n_probe_examples)
    parts = {"model_label": _model_label(config.model), "data_cfg": data_key(protocol, config),
             "train": train_key(config), "probe_cfg": probe_key(config.make_probe(), n), "task": protocol.task}
    configs = [run_config(job, **parts) for job in jobs]
    if config.analysis:  # what the stored analysis was measured on; absent (old keys unchanged) without it
        from .run_analysis import ANALYSIS_SETTINGS

        for cfg in configs:
            cfg["analysis"] = copy.deepcopy(ANALYSIS_SETTINGS)
    return configs


def _injection_layers(params: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Every ``injection_layer`` in a method's parameters (a combination nests its parts' parameters)."""
    found = []
    for name, value in params.items():
        if isinstance(value, Mapping):
            found += [(f"{name}.{k}", v) for k, v in _injection_layers(value)]
        elif name == "injection_layer":
            found.append((name, value))
    return found


def check_model_fit(config: ExperimentConfig, jobs: Sequence[Job] = (), *, n_labels: int | None = None) -> None:
    """Refuse, before any work, settings that the model's configuration rules out.

    ``max_length`` above the model's learned position embeddings; an ``injection_layer`` (of ``config``'s method
    parameters or of ``jobs``) at or above the model's number of blocks; a local model folder without a tokenizer;
    with ``n_labels``, a checkpoint whose classification head has another number of classes. Only the model's
    ``config.json`` is read (:func:`lnsr_viz.data.models.model_limits`).
    """
    from ..data.models import check_tokenizer_folder, model_limits

    limits = model_limits(config.model)
    label = _model_label(config.model)
    if limits.folder is not None:
        check_tokenizer_folder(limits.folder)
    if n_labels is not None and limits.head_labels is not None and config.task == "classification" \
            and limits.head_labels != n_labels:
        raise ValueError(f"The checkpoint {label!r} has a classification head with {limits.head_labels} classes, "
                         f"but the training data have {n_labels}: its head cannot be reused. Use data with the "
                         "checkpoint's classes (see --label-map / label_map=), or start from the pre-trained base "
                         "model, which gets a fresh head.")
    if limits.max_length is not None and int(config.max_length) > limits.max_length:
        raise ValueError(f"max_length={config.max_length} (--max-length) is above the {limits.max_length} positions "
                         f"of model {label!r}; use max_length <= {limits.max_length}.")
    if limits.n_layers is None:
        return
    settings = [(m, config.method_params.get(m, {})) for m in config.methods]
    settings += [(job.method, job.params) for job in jobs if job.method != "pretrained"]
    for method, params in settings:
        for name, layer in _injection_layers(get_method(method, **dict(params)).params()):
            if isinstance(layer, int) and layer > limits.n_layers - 1:
                raise ValueError(f"{method} {name}={layer} (--param {method}.{name.split('.')[-1]}) does not exist "
                                 f"in model {label!r}: it has {limits.n_layers} blocks, so the noise can be injected "
                                 f"at layers 0..{limits.n_layers - 1} (0 is the embedding output).")


def _reference_model(model: Any, task: str, n_labels: int, device: str | None) -> Any:
    """The pre-trained model that drift is measured from (its head is never read: drift covers layers 0..L)."""
    from ..data.models import load_model

    ref, _ = load_model(model, task=task, num_labels=n_labels, seed=0)
    if device is not None:
        ref.to(device)
    return ref.eval()


def _stored_analysis(job: Job, cfg: Mapping[str, Any], net: Any, tokenizer: Any, *, reference: Any,
                     protocol: Protocol, inputs: Any, config: ExperimentConfig,
                     extra: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """A run's own analysis tables (:func:`~lnsr_viz.experiments.run_analysis.analyse_run`) at the probe's layer 0 and
    the method's own injection layers; the Jacobian norm and Hessian trace also go to ``extra`` (theory_table)."""
    from .run_analysis import analyse_run

    t1 = time.perf_counter()
    layers = {0, *(int(v) for _, v in _injection_layers(cfg.get("method_params", {})) if v is not None)}
    tables = analyse_run(net, tokenizer, reference=reference, protocol=protocol, inputs=inputs, layers=sorted(layers),
                         name=job.name, fine_tuned=job.method != "pretrained", seed=0,
                         max_length=int(config.max_length), probe_n=int(config.probe_n),
                         probe_draws=int(config.probe_draws))
    theory = tables["theory"]
    at0 = theory[theory["layer"] == 0].set_index("quantity")
    extra["jacobian_fro2"] = float(at0.loc["jacobian_fro2", "value"])
    extra["hessian_trace"] = float(theory.loc[theory["quantity"] == "hessian_trace", "value"].iloc[0])
    extra["theory_layer"] = 0
    extra["analysis_seconds"] = time.perf_counter() - t1
    return tables


def keeps_checkpoint(save_checkpoints: bool | Sequence[int], seed: int | None) -> bool:
    """Whether a fine-tuned run of ``seed`` stores its model: ``save_checkpoints`` is True/False or the seeds that do.

    The checkpoint is not part of a run's key: keeping it or not never changes which run is which."""
    if isinstance(save_checkpoints, bool):
        return save_checkpoints
    return seed is not None and int(seed) in {int(s) for s in save_checkpoints}


def _fine_tune(job: Job, net: Any, tokenizer: Any, protocol: Protocol, config: ExperimentConfig, *,
               train_kw: Mapping[str, Any], callbacks: Sequence[Any], progress: bool, extra: dict[str, Any],
               say: Any, what: str, run_id: str) -> tuple[pd.DataFrame, Any]:
    """Fine-tune one job's model in place (with the collapse guard); fill ``extra``; return its history and the
    tracker (:class:`~lnsr_viz.training.tracking.Tracker` when ``train_kw`` asks to report, else None)."""
    from ..training.loop import FineTuner

    guards = []
    if protocol.task == "classification":  # watch the representations' spread (collapse guard)
        from ..training.collapse import CollapseGuard

        guards = [CollapseGuard(list(protocol.validation.texts[:64]), tokenizer, max_length=int(config.max_length))]
    kwargs = dict(train_kw)
    if kwargs.get("report_to"):
        kwargs.setdefault("run_name", f"{job.name}-seed{job.seed}-{run_id}")
    tuner = FineTuner(job.method, method_params=dict(job.params), seed=job.seed or 0, progress=progress,
                      callbacks=[*guards, *callbacks], **kwargs)
    if tuner.tracker_ is not None:
        tuner.tracker_.tags.update({"lnsr_viz.run_id": run_id, "lnsr_viz.method": job.name})
    tuner.fit(net, tokenizer, protocol.train, protocol.validation)
    extra["train_seconds"] = tuner.state_.seconds
    extra["steps"] = tuner.state_.global_step
    if config.keep_best:  # the step whose weights were kept (and evaluated, probed, analysed)
        extra["kept_step"] = tuner.state_.best_step
    if guards:
        extra["collapsed"] = bool(guards[0].collapsed)
        if guards[0].collapsed:
            say(f"  {what}: WARNING: the representations collapsed (see the history's collapse columns)")
    return tuner.history_, tuner.tracker_


def _track_results(tracker: Any, metrics: pd.DataFrame, profile: pd.DataFrame | None) -> None:
    """Report a stored run's evaluation metrics (``metrics/<domain>/<metric>``) and stability profile (a table)."""
    if tracker is None:
        return
    tracker.log_metrics({f"metrics/{r.domain}/{r.metric}": r.value for r in metrics.itertuples()})
    if profile is not None:
        tracker.log_table("stability_profile", profile)
    tracker.close()


def run_jobs(jobs: Sequence[Job], config: ExperimentConfig, *, protocol: Protocol, store: Any,
             save_checkpoints: bool | Sequence[int] = False, progress: bool = True, verbose: bool = True,
             callbacks: Sequence[Any] = (), device: str | None = None,
             tracking: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Run (or load from ``store``) every job on one data protocol; one row per job.

    ``config`` gives the model, the training and the probe settings (its methods, seeds and method parameters are
    not read: the jobs carry theirs). A job whose configuration is already stored is loaded, not retrained: this is
    how interrupted grids resume. ``device`` (e.g. ``'cuda'``) is where each model trains; it is recorded with the run
    (``extra.json``) but is not part of the run's key, so a stored run is reused whichever device made it.
    ``tracking`` (``{'report_to': 'mlflow', 'logging_dir': ...}``, :class:`~lnsr_viz.training.loop.FineTuner`'s
    options) reports every run it trains to TensorBoard / MLflow, with its test metrics and stability profile; like
    ``device`` it is not part of any run's key.
    """
    import torch
    from tqdm.auto import tqdm

    from ..analysis.drift import representation_drift
    from ..data.models import load_model
    from ..utils.precision import require_precision
    from ..utils.validation import check_device

    device = check_device(device, owner="run_jobs")
    require_precision(config.precision, device or "cpu", owner="run_jobs")  # bf16 hardware, before any work
    model = config.model
    max_length = int(config.max_length)
    prober = config.make_probe()
    configs = run_configs(jobs, config, protocol)
    probe_cfg = probe_key(prober, min(int(config.probe_n), protocol.n_probe_examples))
    n_labels = protocol.n_labels()
    model_label = _model_label(model)
    train_kw = config.train_params()
    say = tqdm.write if verbose else (lambda *_a, **_k: None)
    reference = None  # the pre-trained model, loaded once when the first fine-tuned run needs it
    if not isinstance(model, (str, Path)):  # a user's model object: drift is measured from it as given
        reference = copy.deepcopy(model)
        if device is not None and hasattr(reference, "to"):
            reference.to(device)
    check_model_fit(config, jobs, n_labels=n_labels if protocol.task == "classification" else None)

    inputs = None  # the analysis's fixed sentences, built when the first run needs them

    def analyse(job: Job, cfg: Mapping[str, Any], net: Any, tokenizer: Any, what: str,
                extra: dict[str, Any]) -> dict[str, pd.DataFrame]:
        nonlocal inputs, reference
        from .run_analysis import analysis_inputs

        say(f"  {what}: analysis (theory, diagnosis, attributions, weight spectra, representations) ...")
        inputs = inputs or analysis_inputs(protocol)
        if reference is None:
            reference = _reference_model(model, protocol.task, n_labels, device)
        return _stored_analysis(job, cfg, net, tokenizer, reference=reference, protocol=protocol, inputs=inputs,
                                config=config, extra=extra)

    def loaded(job: Job, cfg: Mapping[str, Any], what: str) -> dict[str, Any]:
        run = store.load(cfg)
        say(f"  {what}: loaded from the run store ({run.run_id})")
        return {"run_id": run.run_id, "method": job.name, "seed": job.seed, "cached": True,
                "seconds": run.extra.get("seconds", float("nan")), "collapsed": run.extra.get("collapsed")}

    def make(job: Job, cfg: Mapping[str, Any], what: str) -> dict[str, Any]:
        nonlocal reference
        t0 = time.perf_counter()
        net, tokenizer = load_model(model, task=protocol.task, num_labels=n_labels, seed=job.seed or 0)
        if not isinstance(model, (str, Path)):  # a user's model object: every run starts from its own copy
            net = copy.deepcopy(net)
        if device is not None:
            net.to(device)
        extra: dict[str, Any] = {"device": str(next(net.parameters()).device)}
        extra["torch_threads"] = torch.get_num_threads()  # can change the last digits of some metrics; not keyed
        if protocol.labels:  # the classes and label map the run was made with (not part of its key)
            extra["labels"] = protocol.labels
        metrics = pd.DataFrame(columns=["domain", "metric", "value"])
        history = None
        tracker = None
        if job.method != "pretrained":
            say(f"  {what}: fine-tuning on {len(protocol.train)} examples ...")
            history, tracker = _fine_tune(job, net, tokenizer, protocol, config, train_kw={**train_kw, **(
                tracking or {})}, callbacks=callbacks, progress=progress, extra=extra, say=say, what=what,
                run_id=store.run_id(cfg))
            say(f"  {what}: evaluating on {', '.join(protocol.evaluation)} ...")
            metrics = protocol.evaluate(net, tokenizer, max_length, precision=config.precision)
        say(f"  {what}: stability probe ({probe_cfg['n']} examples, {probe_cfg['n_draws']} draws) ...")
        probe_inputs = protocol.probe_inputs(probe_cfg["n"], tokenizer, max_length, net)
        profile = prober.run(net, probe_inputs, tokenizer=tokenizer, label=job.name)
        drift = None
        if job.method != "pretrained":  # how far each layer moved from the pre-trained model, on the probe inputs
            if reference is None:
                reference = _reference_model(model, protocol.task, n_labels, device)
            drift = representation_drift(reference, net, probe_inputs, tokenizer, names=("pretrained", job.name),
                                         max_length=max_length)
        tables = None
        if config.analysis:
            tables = analyse(job, cfg, net, tokenizer, what, extra)
        extra["seconds"] = time.perf_counter() - t0
        checkpoint_fn = None
        if job.method != "pretrained" and keeps_checkpoint(save_checkpoints, job.seed):
            def checkpoint_fn(folder: Path, net: Any = net, tokenizer: Any = tokenizer) -> None:
                from .diagnose import save_checkpoint

                # records the base model in config.json so that `diagnose` can find it later
                names = list(protocol.labels["classes"].values()) if protocol.labels.get("named") else None
                save_checkpoint(net, tokenizer, folder, base_model=model_label, class_names=names)
        store.save(cfg, metrics=metrics, history=history, profile=profile, extra=extra, drift=drift,
                   checkpoint_fn=checkpoint_fn, tables=tables)
        _track_results(tracker, metrics, profile)
        say(f"  {what}: done in {extra['seconds']:.0f} s")
        return {"run_id": store.run_id(cfg), "method": job.name, "seed": job.seed, "cached": False,
                "seconds": extra["seconds"], "collapsed": extra.get("collapsed")}

    # Several processes may share the store (the same grid started twice, shards): a run whose lock another process
    # holds is skipped and come back to after the others (then waited for), and a run stored meanwhile is loaded.
    writing = getattr(store, "writing", None)
    rows: dict[int, dict[str, Any]] = {}
    outer = tqdm(total=len(jobs), desc="runs", unit="run", disable=not progress)
    pending, wait = list(range(len(jobs))), False
    while pending:
        busy = []
        for i in pending:
            job, cfg = jobs[i], configs[i]
            what = "pre-trained model" if job.method == "pretrained" else f"{job.name}, seed {job.seed}"
            with writing(cfg, wait=wait) if writing else contextlib.nullcontext(True) as mine:
                if not mine:
                    busy.append(i)
                    continue
                if store.exists(cfg):
                    rows[i] = loaded(job, cfg, what)
                else:
                    try:
                        rows[i] = make(job, cfg, what)
                    except FileExistsError:  # stored meanwhile by a writer that does not take the lock
                        rows[i] = loaded(job, cfg, what)
            outer.update(1)
        if busy:
            say(f"  waiting for {len(busy)} run(s) that another process is making ...")
        pending, wait = busy, True
    outer.close()
    runs = pd.DataFrame([rows[i] for i in range(len(jobs))],
                        columns=["run_id", "method", "seed", "cached", "seconds", "collapsed"])
    runs["seed"] = runs["seed"].astype("Int64")
    return runs


#: ``compare``'s own keywords: how it runs, not what it runs (none is part of a run's key).
RUN_OPTIONS = ("save_checkpoints", "progress", "verbose", "device", "report_to", "logging_dir")


def compare(methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None, *,
            config: ExperimentConfig | None = None, save_checkpoints: bool | Sequence[int] = False,
            progress: bool = True,
            verbose: bool = True, device: str | None = None, report_to: str | Sequence[str] | None = None,
            logging_dir: str | Path | None = None, **settings: Any) -> ComparisonResult:
    """Fine-tune each method with each seed, evaluate in / out of domain, probe, and compare over seeds.

    Parameters
    ----------
    methods, seeds : optional
        Method names (``vanilla``, ``lnsr``, ...) and seeds (one run per method and seed; at least 3 to measure
        spread); default: the config's (``('vanilla', 'lnsr')`` and ``(1, 2, 3)``).
    config : ExperimentConfig, optional
        The experiment; default: ``ExperimentConfig()``. Every setting is documented there.
    **settings
        Changes to ``config`` (any :class:`~lnsr_viz.experiments.config.ExperimentConfig` field: ``model``, ``data``,
        ``ood``, ``train_size``, ``epochs``, ``method_params``, ``probe_n``, ``results``, ``task``, ...), applied with
        :meth:`ExperimentConfig.replace`; an unknown name is refused, listing the valid ones.
    save_checkpoints : bool or sequence of int
        Also store each fine-tuned model (so that ``diagnose`` can read it later); a sequence of seeds stores only
        those seeds' models (``make demo`` keeps seed 1's). Not part of the run key; a run already stored without a
        checkpoint is loaded as it is (it gets none).
    progress, verbose : bool
        Progress bars; one status line per run step.
    device : str, optional
        Where to train and evaluate (``'cuda'``, ``'cuda:1'``, ...); default: the CPU. Not part of the run key.
    report_to, logging_dir : optional
        Report every run it trains to ``'tensorboard'``, ``'mlflow'``, both (a list) or ``'all'``, as the Hugging
        Face ``Trainer`` does (``pip install 'lnsr_viz[tracking]'``); ``logging_dir`` is TensorBoard's folder.
        Never by default; not part of the run key (a stored run is loaded, not reported again).

    Every setting is checked before any data or model is loaded.
    """
    from ..training.tracking import check_tracking
    from ..utils.validation import check_device
    from .store import RunStore

    t_start = time.perf_counter()
    ExperimentConfig.check_names(settings, owner="compare", also=("methods", "seeds", "config", *RUN_OPTIONS))
    given = {k: v for k, v in (("methods", methods), ("seeds", seeds)) if v is not None}
    config = (config if config is not None else ExperimentConfig()).replace(**given, **settings)
    device = check_device(device, owner="compare")
    if logging_dir is not None and not report_to:
        raise ValueError("compare: logging_dir is TensorBoard's folder; it needs report_to='tensorboard'.")
    tracking = {"report_to": report_to, "logging_dir": logging_dir} if report_to else None
    check_tracking(tracking, owner="compare")  # a missing package is refused before any work
    from ..utils.precision import require_precision

    require_precision(config.precision, device or "cpu", owner="compare")  # bf16 hardware, before any work
    store = RunStore(config.results)  # checks that it can write there; creates nothing before the first run
    jobs = [Job("pretrained", {}, None)] + [Job(m, config.method_params.get(m, {}), s)
                                            for m in config.methods for s in config.seeds]
    check_model_fit(config, jobs)  # the model's limits, before the data are loaded
    protocol = build_protocol(config)
    runs = run_jobs(jobs, config, protocol=protocol, store=store, save_checkpoints=save_checkpoints,
                    progress=progress, verbose=verbose, device=device, tracking=tracking)
    result = _collect(store, runs, baseline=config.baseline, methods=list(config.methods))
    result.config = comparison_config(config, protocol)
    result.label_balance = label_balance(protocol)
    result.timings = {"total_seconds": time.perf_counter() - t_start,
                      "trained_runs": int((~runs["cached"]).sum()), "cached_runs": int(runs["cached"].sum())}
    return result


def comparison_config(config: ExperimentConfig, protocol: Protocol) -> dict[str, Any]:
    """What :attr:`ComparisonResult.config` records: the settings, with the parts of the runs' keys."""
    methods = list(config.methods)
    return {"task": config.task, "model": _model_label(config.model), "methods": methods,
            "seeds": list(config.seeds),
            "method_params": {m: get_method(m, **config.method_params.get(m, {})).params() for m in methods},
            "data": data_key(protocol, config), "train": train_key(config),
            "probe": probe_key(config.make_probe(), min(int(config.probe_n), protocol.n_probe_examples)),
            "results": str(config.results), "baseline": config.baseline, "labels": protocol.labels}


def label_balance(protocol: Protocol) -> pd.DataFrame:
    """One row per evaluation set: its size and positive rate (QA: its questions and articles)."""
    if protocol.task == "qa":
        return pd.DataFrame([{"domain": name, "n": len(ds), "articles": len(ds.titles)}
                             for name, ds in protocol.evaluation.items()])
    return pd.DataFrame([{"domain": name, "n": len(ds), "positive_rate": float(np.mean(ds.labels == 1))}
                         for name, ds in protocol.evaluation.items()])


def collect_comparison(store: Any, runs: pd.DataFrame, *, baseline: str, methods: Sequence[str]) -> ComparisonResult:
    """A :class:`ComparisonResult` of stored runs only (nothing is trained): ``runs`` has ``run_id, method, seed,
    collapsed`` (``method`` is the label the tables and statistics use); its ``config`` is left empty."""
    return _collect(store, runs, baseline=baseline, methods=methods)


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
    return ComparisonResult(runs=runs, metrics=metrics_df, history=history_df, profile=profiles_df,
                            summary=summary, paired=paired_df, config={}, drift=drift_df)

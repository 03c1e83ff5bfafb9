"""One configuration object for an experiment: :class:`ExperimentConfig`, the single source of its defaults.

``compare``, the sweeps (:mod:`lnsr_viz.experiments.sweep`), the command line and the notebooks all build one of these;
its defaults are the only place where the protocol's numbers (500 training examples, 4 epochs, a 64-sentence probe,
...) are written down. A config is validated when it is made, with the same messages ``compare`` has always given,
so a bad setting is refused before any data or model is loaded. It is frozen: :meth:`ExperimentConfig.replace`
returns a changed, re-validated copy.

The fields are flat (the keyword names of ``compare``). Their ``metadata`` says which part of a run's key each one
enters: ``"data"`` (the split sizes and seeds), ``"train"`` (the trainer's settings) or ``"probe"`` (the stability
probe, under its short name in the sweep files' ``probe:`` section). :meth:`ExperimentConfig.to_dict` writes the sweep
files' form (``train:`` and ``probe:`` sections) and :meth:`ExperimentConfig.from_dict` reads it (and the flat form).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..data.text import IN_DOMAIN, OOD_DOMAINS
from ..methods import METHODS, get_method
from ..utils.validation import check_number, check_positive_int

__all__ = ["ExperimentConfig", "TASKS"]

TASKS = ("classification", "qa")
#: The largest seed (torch's and numpy's seeds are unsigned 32-bit numbers).
MAX_SEED = 2**32 - 1


def _data(default: Any) -> Any:
    return field(default=default, metadata={"key": "data"})


def _late_data(default: Any) -> Any:
    """A data setting added after runs were stored: left out of a run's key while it has its default."""
    return field(default=default, metadata={"key": "data", "late": True})


def _train(default: Any) -> Any:
    return field(default=default, metadata={"key": "train"})


def _late_train(default: Any) -> Any:
    """A trainer setting added after runs were stored: left out of a run's key while it has its default."""
    return field(default=default, metadata={"key": "train", "late": True})


def _probe(default: Any, short: str) -> Any:
    return field(default=default, metadata={"key": "probe", "short": short})


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a comparison: methods x seeds, the model, the data protocol, training and the probe.

    Parameters
    ----------
    methods : sequence of str
        Method names (``vanilla``, ``lnsr``, ...).
    seeds : sequence of int
        One run per method and seed; at least 3 to measure spread.
    method_params : mapping
        ``{method: {param: value}}``, e.g. ``{'lnsr': {'lam': 10.0}}``; only for methods that are run.
    baseline : str
        The method every other method is compared with, seed by seed.
    model : str, path or (model, tokenizer)
        ``minilm`` (the packaged default), a Hugging Face id, or a local checkpoint folder.
    task : {'classification', 'qa'}
        ``'qa'``: extractive question answering (see :func:`lnsr_viz.experiments.runs.make_qa_protocol`).
    data : str, path, DataFrame or datasets.Dataset, optional
        The in-domain data; default (None): ``movie`` for classification, the packaged SQuAD for QA.
    ood : sequence or mapping, optional
        Out-of-domain evaluation sets (packaged domain names, paths, or ``{name: data}``); default (None):
        :data:`lnsr_viz.data.text.OOD_DOMAINS` for classification, none beyond the other SQuAD topic groups for QA.
    train_size, val_size, eval_size : int
        Sizes of the fixed subsets; ``eval_size=None`` evaluates on everything.
    split_seed, neutral_band, text_column, label_column, qa_group
        The data split's seed, the packaged domains' neutral band, a CSV's columns (a file given as
        ``'PATH:TEXT:LABEL'`` names its own), the SQuAD topic group trained on.
    label_noise : float, default=0.0
        The fraction of the *training* examples whose label is flipped to another class (fixed by ``split_seed``,
        the same for every method and seed; :func:`lnsr_viz.data.text.flip_labels`); validation and evaluation sets
        keep their labels. For making models that memorise wrong labels (diagnose's over-fit arm). Part of the
        run's key only when not 0.
    label_map : mapping, optional
        Label -> class id or class name, applied to every data file before its labels are matched with the training
        data's classes (e.g. ``{'negative': 'rotten', 'positive': 'fresh'}``); recorded with every run, not part of
        its key (the labels it produces are).
    encoding : str, optional
        The data files' text encoding (default: UTF-8, strictly; a file with other bytes is refused).
    epochs, batch_size, lr, max_length, warmup_ratio, weight_decay, max_grad_norm
        Passed to :class:`~lnsr_viz.training.loop.FineTuner`.
    precision : {'fp32', 'bf16'}
        Training, evaluation and the probe in float32 (the default) or bfloat16 mixed precision (where the hardware
        has it; checked before any work). Part of a run's key only when it is not ``'fp32'``, so float32 runs keep
        the keys they always had.
    max_steps, eval_every, keep_best, train_eval_size, group_by_length
        Study v2's protocol (see :class:`~lnsr_viz.training.loop.FineTuner`): a budget in optimizer steps (then
        ``epochs`` is ignored and left out of the key), validation every ``eval_every`` steps, the best validation
        step kept, the training score on a fixed sample, length-grouped batches. Like ``precision``, each enters a
        run's key only when it is not its default, so the runs stored before they existed keep their keys.
    probe_n, probe_draws, probe_noise, probe_scale
        The stability probe's examples, draws, noise type and relative scale.
    analysis : bool, default=False
        Store every run's own analysis with it (theory quantities, diagnosis measurements, attributions and
        top-layer representations on fixed sentences: :mod:`lnsr_viz.experiments.run_analysis`), so that no
        checkpoint is needed afterwards. Classification only. When True the analysis settings enter the run's key.
    results : str or path
        The run store's folder.
    """

    methods: Sequence[str] = ("vanilla", "lnsr")
    seeds: Sequence[int] = (1, 2, 3)
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    baseline: str = "vanilla"
    model: Any = "minilm"
    task: str = "classification"
    data: Any = None
    ood: Sequence[Any] | Mapping[str, Any] | None = None
    train_size: int = _data(500)
    val_size: int = _data(300)
    eval_size: int | None = _data(600)
    split_seed: int = _data(0)
    neutral_band: float = _data(0.0)
    label_noise: float = _late_data(0.0)
    text_column: str = "text"
    label_column: str = "label"
    qa_group: str = "science"
    label_map: Mapping[str, Any] | None = None
    encoding: str | None = None
    epochs: int = _train(4)
    batch_size: int = _train(32)
    lr: float = _train(5e-5)
    max_length: int = _train(64)
    warmup_ratio: float = _train(0.1)
    weight_decay: float = _train(0.01)
    max_grad_norm: float = _train(1.0)
    precision: str = _late_train("fp32")
    max_steps: int | None = _late_train(None)
    eval_every: int | None = _late_train(None)
    keep_best: bool = _late_train(False)
    train_eval_size: int | None = _late_train(None)
    group_by_length: bool = _late_train(False)
    probe_n: int = _probe(64, "n")
    probe_draws: int = _probe(4, "n_draws")
    probe_noise: str = _probe("gaussian", "noise")
    probe_scale: float = _probe(0.05, "scale")
    analysis: bool = False
    results: str | Path = "results"

    #: The owner named in the refusals (``compare`` has always been the one that checked these settings).
    owner: ClassVar[str] = "compare"

    def __post_init__(self) -> None:
        methods, seeds = self.methods, self.seeds
        if isinstance(methods, str):
            raise ValueError("methods must be a list of method names, e.g. ['vanilla', 'lnsr'].")
        if isinstance(seeds, (str, int)):
            raise ValueError(f"seeds must be a list of integers, e.g. [1, 2, 3]; got {seeds!r}.")
        set_ = object.__setattr__  # frozen: normalise once, here
        set_(self, "methods", tuple(methods))
        for s in seeds:  # before int(): 1.5 must not become seed 1, nor 2**70 fail deep inside torch
            check_number("seed", s, owner=self.owner, low=0, high=MAX_SEED, integer=True,
                         hint="Seeds are whole numbers from 0 to 2**32 - 1 (torch's and numpy's seed range).")
        set_(self, "seeds", tuple(int(s) for s in seeds))
        set_(self, "method_params", {str(k): dict(v) for k, v in dict(self.method_params or {}).items()})
        if isinstance(self.ood, Mapping):
            set_(self, "ood", dict(self.ood))
        elif self.ood is not None:
            if isinstance(self.ood, str):
                raise ValueError(f"ood must be a list of domains or paths, e.g. {list(OOD_DOMAINS)}; got {self.ood!r}.")
            set_(self, "ood", tuple(self.ood))
        from ..data.text import check_label_map

        set_(self, "label_map", check_label_map(self.label_map))
        self._validate()

    def _validate(self) -> None:
        """Every refusal ``compare`` makes before loading anything, with its message."""
        owner = self.owner
        if not self.methods:
            raise ValueError("methods is empty: give at least one method, e.g. ['vanilla', 'lnsr'].")
        twice = sorted({m for m in self.methods if list(self.methods).count(m) > 1})
        if twice:
            raise ValueError(f"methods names {twice} more than once; give each method once (a second setting of "
                             "the same method is a sweep: see lnsr_viz.experiments.sweep).")
        for m in self.methods:
            if m not in METHODS:
                raise ValueError(f"Unknown method {m!r}. Expected one of {sorted(METHODS)}.")
            get_method(m, **self.method_params.get(m, {}))  # parameters checked before any work
        unknown = set(self.method_params) - set(self.methods)
        if unknown:
            raise ValueError(f"method_params names methods that are not run: {sorted(unknown)}.")
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one seed (three or more to measure spread).")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct; got {list(self.seeds)}.")
        check_positive_int("train_size", self.train_size, owner=owner)
        check_positive_int("val_size", self.val_size, owner=owner)
        if self.eval_size is not None:
            check_positive_int("eval_size", self.eval_size, owner=owner)
        check_positive_int("probe_n", self.probe_n, owner=owner)
        check_number("label_noise", self.label_noise, owner=owner, low=0.0, high=1.0, high_closed=False,
                     hint="The fraction of training labels flipped to another class, e.g. 0.2; 0 for none.")
        if self.label_noise and self.task != "classification":
            raise ValueError("label_noise is for classification runs only (it flips class labels); set it to 0 "
                             "for QA.")
        from ..training.loop import FineTuner

        # Trainer parameters are checked here, before any data or model is loaded.
        FineTuner("vanilla", **self.train_params(), progress=False)
        if self.task not in TASKS:
            raise ValueError(f"task must be 'classification' or 'qa'; got {self.task!r}.")
        if not isinstance(self.analysis, bool):
            raise ValueError(f"analysis must be true or false; got {self.analysis!r}.")
        if self.analysis and self.task != "classification":
            raise ValueError("analysis=True is implemented for classification runs only (its diagnosis, attributions "
                             "and representation sets need labelled sentences); set analysis to false for QA.")
        if self.analysis:  # its optional packages, before any work
            from ..utils.extras import check_available

            check_available("captum", "analysis=True (the attributions)")
            check_available("weightwatcher", "analysis=True (the weightwatcher table)")
        self.make_probe()  # the probe's draws, noise type and scale
        self._validate_data_names()

    def _validate_data_names(self) -> None:
        """Distinct evaluation-set names (a list of files is named by their stems) and a known encoding."""
        from ..data.text import data_name

        if self.encoding is not None:
            import codecs

            try:
                codecs.lookup(str(self.encoding))
            except LookupError:
                raise ValueError(f"unknown encoding={self.encoding!r}; e.g. 'utf-8', 'latin-1', 'cp1252'.") from None
        if self.task != "classification":
            return
        ood = self.ood_data()
        names = list(ood) if isinstance(ood, Mapping) else [data_name(o) for o in ood]
        in_name = data_name(self.in_domain_data())
        seen: dict[str, int] = {}
        for name in names:
            if name is not None:
                seen[str(name)] = seen.get(str(name), 0) + 1
        twice = sorted(n for n, c in seen.items() if c > 1)
        if twice:
            raise ValueError(f"out-of-domain sets named twice: {twice} (a file is named by its stem); give each "
                             "evaluation set once, or distinct names (ood={name: path}).")
        if in_name is not None and in_name in seen:
            raise ValueError(f"the out-of-domain set {in_name!r} has the in-domain data's name; the in-domain test "
                             "split is always evaluated, so drop it from ood or rename the file.")

    # ------------------------------------------------------------------------------------------------------------
    # the parts of a run's key, and what they configure
    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def keyed(cls, part: str) -> tuple[dataclasses.Field, ...]:
        """The fields that enter the ``part`` (``'data'``, ``'train'`` or ``'probe'``) of a run's key, in order."""
        return tuple(f for f in dataclasses.fields(cls) if f.metadata.get("key") == part)

    def train_params(self) -> dict[str, Any]:
        """The trainer's settings (the ``train`` part of a run's key), as given; the settings added later
        (``precision``, ``max_steps``, ...) only when not at their defaults, ``epochs`` only without ``max_steps``.

        Leaving those defaults out keeps every float32 run's key, the sweep files' ``train:`` defaults and
        the study write-up exactly as they were before precision existed.
        """
        params = {}
        for f in self.keyed("train"):
            value = getattr(self, f.name)
            if f.metadata.get("late") and value == f.default:
                continue
            params[f.name] = value
        if self.max_steps is not None:  # a step budget: the number of passes has no effect
            params.pop("epochs", None)
        return params

    def split_params(self) -> dict[str, Any]:
        """The split's sizes and seeds (with the data's names and fingerprint, the ``data`` part of a run's key)."""
        return {f.name: getattr(self, f.name) for f in self.keyed("data")
                if not (f.metadata.get("late") and getattr(self, f.name) == f.default)}

    def probe_params(self) -> dict[str, Any]:
        """The probe's settings under their short names (``n``, ``n_draws``, ``noise``, ``scale``)."""
        return {f.metadata["short"]: getattr(self, f.name) for f in self.keyed("probe")}

    def make_probe(self) -> Any:
        """The :class:`~lnsr_viz.core.probe.StabilityProbe` every run of this experiment is probed with."""
        from ..core.probe import StabilityProbe

        return StabilityProbe(self.probe_noise, scale=self.probe_scale, n_draws=self.probe_draws,
                              max_length=self.max_length, seed=0, progress=False, precision=self.precision)

    def in_domain_data(self) -> Any:
        """``data``, or the task's default (``movie``; ``squad`` for QA)."""
        if self.data is not None:
            return self.data
        return "squad" if self.task == "qa" else IN_DOMAIN

    def ood_data(self) -> Sequence[Any] | Mapping[str, Any]:
        """``ood``, or the task's default (:data:`~lnsr_viz.data.text.OOD_DOMAINS`; none for QA)."""
        if self.ood is not None:
            return self.ood
        return () if self.task == "qa" else OOD_DOMAINS

    # ------------------------------------------------------------------------------------------------------------
    # changing, writing and reading
    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check_names(cls, names: Any, *, owner: str = "ExperimentConfig", also: Sequence[str] = ()) -> None:
        """Refuse names that are not settings, listing the valid ones (``also``: the caller's own keywords)."""
        unknown = sorted(set(names) - set(cls.field_names()) - set(also))
        if unknown:
            raise TypeError(f"{owner} got unknown setting(s) {unknown}; valid settings are "
                            f"{sorted([*cls.field_names(), *also])}.")

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with ``changes`` applied (validated again); unknown names are refused."""
        self.check_names(changes, owner="ExperimentConfig.replace")
        return dataclasses.replace(self, **changes)

    @classmethod
    def demo(cls) -> ExperimentConfig:
        """The demo's headline setting (the paper's regime: few examples), chosen a priori, never tuned on results:
        vanilla vs LNSR, seeds 1-3, 500 movie examples, stored in ``results/demo``."""
        return cls(results="results/demo")

    def to_dict(self) -> dict[str, Any]:
        """Plain values in the sweep files' form: top-level settings, then ``train:`` and ``probe:`` sections."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("key") in ("train", "probe"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, dict):
                value = {k: dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}
            out[f.name] = value
        out["train"] = self.train_params()
        out["probe"] = self.probe_params()
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "ExperimentConfig") -> ExperimentConfig:
        """Build from :meth:`to_dict`'s form (or flat keyword names); unknown keys are refused, naming the valid."""
        flat: dict[str, Any] = {}
        sections = {"train": {f.name: f.name for f in cls.keyed("train")},
                    "probe": {f.metadata["short"]: f.name for f in cls.keyed("probe")}}
        for key, value in values.items():
            if key in sections and isinstance(value, Mapping):
                allowed = sections[key]
                bad = set(value) - set(allowed)
                if bad:
                    raise ValueError(f"{source}: unknown key(s) {sorted(bad)} under {key!r}; allowed: "
                                     f"{sorted(allowed)}.")
                flat.update({allowed[k]: v for k, v in value.items()})
            else:
                flat[key] = value
        unknown = set(flat) - set(cls.field_names())
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}; allowed keys are "
                             f"{sorted([*cls.field_names(), *sections])}.")
        return cls(**flat)

"""The notebook runtime: settings, folders and small data helpers, so that the tutorial notebooks hold no logic.

Why one module: the notebooks (``notebooks/NN_*.py``, built into ``.ipynb``) only call the library. Everything a
notebook needs besides the figures and dashboards lives here: the quick switch (:func:`quick_mode`, environment
variable ``LNSR_VIZ_QUICK``), the folders it reads and writes (:func:`results_dir`, :func:`reports_dir`,
:func:`study_dir`), the comparison settings and data (:func:`comparison_settings`, :func:`comparison_protocol`,
:func:`probe_sentences`, :func:`explorer_models`), the stored runs and checkpoints (:func:`stored_table`,
:func:`stored_checkpoints`, :func:`default_checkpoint`) and the few loops over checkpoints or settings that the
notebooks show the result of (:func:`probe_profiles`, :func:`checkpoint_drift`, :func:`checkpoint_theory`, ...).

**Where the folders are.** :func:`project_root` is, in this order: ``$LNSR_VIZ_PROJECT`` if set; else the nearest
folder at or above the working directory that holds ``pyproject.toml`` and ``lnsr_viz/`` (a checkout of this
repository: the notebooks run from ``notebooks/`` and find it); else the working directory itself. So from an
installed wheel nothing requires the checkout: results and reports go under the working directory (or
``$LNSR_VIZ_RESULTS``, see :func:`results_dir`), and helpers that read committed files (the study, the benchmark
results, ``docs/study.md``) say where they looked when the file is not there.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "QUICK_ENV",
    "EXPLORER_BUCKET_SIZE",
    "RESULTS_ENV",
    "PROJECT_ENV",
    "quick_mode",
    "setup_notebook",
    "project_root",
    "results_dir",
    "study_dir",
    "reports_dir",
    "stored_table",
    "stored_checkpoints",
    "check_checkpoint",
    "default_checkpoint",
    "comparison_protocol",
    "comparison_settings",
    "benchmark_table",
    "probe_sentences",
    "explorer_models",
    "probe_profiles",
    "probe_noise_sigma",
    "cached_capture_adapter",
    "ProbeSession",
    "probe_session",
    "checkpoint_drift",
    "checkpoint_theory",
    "join_theory_measurements",
    "diagnosis_data",
    "diagnosis_projections",
    "run_cost_summary",
    "study_config",
    "study_markdown",
    "study_scatter_choices",
]

#: Environment variable that switches the notebooks to their quick setting (tiny models, few sentences/epochs).
QUICK_ENV = "LNSR_VIZ_QUICK"
#: Environment variable that overrides the run-store folder the notebooks use.
RESULTS_ENV = "LNSR_VIZ_RESULTS"
#: Environment variable naming the project folder (``results/``, ``reports/``, ``configs/``, ``docs/``,
#: ``benchmarks/``); without it the checkout above the working directory, else the working directory.
PROJECT_ENV = "LNSR_VIZ_PROJECT"



def quick_mode() -> bool:
    """True when ``LNSR_VIZ_QUICK`` is set to 1/true/yes: the notebooks then use tiny models and few sentences.

    The tests set it; a user leaves it unset to get the packaged MiniLM and the real data.
    """
    return os.environ.get(QUICK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def setup_notebook(*, threads: int | None = None) -> bool:
    """Prepare a notebook session and return :func:`quick_mode`.

    Hides transformers' per-load progress bars (our own messages say what happens), turns off tokenizer
    parallelism warnings, optionally caps torch's CPU threads, and prints the setting in use.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
    quick = quick_mode()
    what = f"QUICK (tiny models, toy data; {QUICK_ENV}=1)" if quick else "FULL (packaged MiniLM, VADER data)"
    print(f"lnsr_viz notebook setting: {what}")
    return quick


def project_root(start: str | os.PathLike[str] | None = None) -> Path:
    """The project folder the notebooks read from and write to (never created here).

    In this order: ``$LNSR_VIZ_PROJECT`` if set; else the nearest folder at or above ``start`` (default: the
    working directory) that holds ``pyproject.toml`` and ``lnsr_viz/`` (a checkout of this repository); else
    ``start`` itself. The upward search is a convenience for a checkout, not a requirement: from an installed
    wheel the working directory (or the environment variable) is the project folder.
    """
    env = os.environ.get(PROJECT_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "lnsr_viz").is_dir():
            return folder
    return here


def results_dir(name: str = "demo", *, quick: bool | None = None) -> Path:
    """The run-store folder a notebook uses.

    ``$LNSR_VIZ_RESULTS`` if set; otherwise ``<project>/results/<name>`` (``results/demo`` is where
    ``make demo`` stores its runs, so the notebooks load them instead of retraining) or
    ``<project>/results/quick/<name>`` in the quick setting. ``<project>`` is :func:`project_root` (a checkout
    above the working directory, ``$LNSR_VIZ_PROJECT``, or the working directory).
    """
    quick = quick_mode() if quick is None else quick
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env).expanduser() / ("quick" if quick else "") / name
    root = project_root()
    return root / "results" / ("quick" if quick else "") / name


def study_dir(name: str = "study") -> Path:
    """The committed study's run store: ``<project>/results/<name>`` (written by ``python -m lnsr_viz sweep``)."""
    root = project_root()
    path = root / "results" / name
    if not (path / "runs").is_dir():
        raise FileNotFoundError(f"no study run store at {path}: run `python -m lnsr_viz sweep configs/study.yaml` "
                                "(about 2 hours on 2 CPU cores) or check out the committed results/study folder.")
    return path


def reports_dir(*, quick: bool | None = None) -> Path:
    """Where the notebooks write HTML reports and exported figures.

    ``$LNSR_VIZ_RESULTS/reports`` if set (``.../quick/reports`` in the quick setting), otherwise
    ``<project>/reports/notebooks`` (git-ignored), with a ``quick`` subfolder in the quick setting.
    """
    quick = quick_mode() if quick is None else quick
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env).expanduser() / ("quick" if quick else "") / "reports"
    root = project_root()
    return root / "reports" / "notebooks" / ("quick" if quick else "")


def stored_table(table: str = "profile", *, name: str = "demo", quick: bool | None = None) -> pd.DataFrame:
    """One table (``profile``, ``metrics`` or ``history``) of every run in ``results_dir(name)``.

    Returns an empty DataFrame when there is no store yet (e.g. before notebook 02 or ``make demo`` ran), so a
    notebook can show cached runs when present and say how to make them otherwise. Never creates a folder.
    """
    from ..experiments.store import RunStore

    folder = results_dir(name, quick=quick)
    if not (folder / "runs").is_dir():
        return pd.DataFrame()
    return RunStore(folder, read_only=True).load_table(table)


def stored_checkpoints(*, name: str = "demo", quick: bool | None = None) -> pd.DataFrame:
    """The fine-tuned checkpoints kept in ``results_dir(name)``: ``run_id, method, seed, path`` (one row each).

    Runs are stored with a checkpoint when :func:`~lnsr_viz.experiments.runs.compare` ran with
    ``save_checkpoints`` (``make demo`` keeps each method's first seed). Empty when there are none.
    """
    from ..experiments.store import RunStore

    folder = results_dir(name, quick=quick)
    rows = []
    if (folder / "runs").is_dir():
        store = RunStore(folder, read_only=True)
        for run_id in store.list_runs()["run_id"]:
            run = store.load(run_id)
            if run.checkpoint_path is not None:
                rows.append({"run_id": run_id, "method": run.config.get("method"), "seed": run.config.get("seed"),
                             "path": str(run.checkpoint_path)})
    out = pd.DataFrame(rows, columns=["run_id", "method", "seed", "path"])
    return out.sort_values(["method", "seed"], kind="stable").reset_index(drop=True)


def check_checkpoint(path: str | os.PathLike[str] | None, *, variable: str = "CHECKPOINT") -> str:
    """Return ``path`` if it is a model folder (with ``config.json``), else raise saying what to set.

    Used by notebook 04 so that a wrong or missing checkpoint gives a readable instruction, not a traceback from
    deep inside transformers.
    """
    how = (f"Set {variable} in the first code cell (or the environment variable LNSR_VIZ_{variable}) to a folder "
           "holding config.json and the model weights (any model saved with save_pretrained()), e.g. the one "
           f"`make demo` keeps under {results_dir('demo')}/runs/<run_id>/checkpoint (each method's first seed).")
    if path is None or str(path).strip() == "":
        raise FileNotFoundError(f"{variable} is not set. {how}")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"{variable} = {str(path)!r} does not exist. {how}")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{variable} = {str(path)!r} is not a model folder: it has no config.json. {how}")
    return str(folder)


def default_checkpoint(method: str = "lnsr", *, quick: bool | None = None) -> str | None:
    """A stored fine-tuned checkpoint of ``method`` (lowest seed), for notebooks that need one.

    In the quick setting, when none is stored yet, the quick comparison (:func:`comparison_settings`) is run once
    with ``save_checkpoints=True`` (seconds). In the full setting nothing is trained here: None is returned, and
    :func:`check_checkpoint` then says what to set.
    """
    quick = quick_mode() if quick is None else quick
    found = stored_checkpoints(quick=quick)
    if found.empty and quick:
        from ..experiments.runs import compare

        compare(**comparison_settings(quick=True), save_checkpoints=True, progress=False, verbose=False)
        found = stored_checkpoints(quick=quick)
    rows = found[found["method"] == method]
    return None if rows.empty else str(rows["path"].iloc[0])


def comparison_protocol(settings: Mapping[str, Any]) -> Any:
    """The fixed data subsets (train / validation / evaluation sets) of a :func:`comparison_settings` dict."""
    from ..experiments.config import ExperimentConfig
    from ..experiments.runs import build_protocol

    config = ExperimentConfig()
    return build_protocol(config.replace(**{k: v for k, v in settings.items() if k in config.field_names()}))


def benchmark_table(name: str = "bench_methods") -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows and the machine / settings of ``benchmarks/results/<name>.json``, or an empty frame if absent.

    ``benchmarks/bench_methods.py`` writes the per-method cost of a training step there.
    """
    path = project_root() / "benchmarks" / "results" / f"{name}.json"
    if not path.is_file():
        return pd.DataFrame(), {"path": str(path)}
    doc = json.loads(path.read_text(encoding="utf-8"))
    return pd.DataFrame(doc.get("rows", [])), {"path": str(path), **{k: v for k, v in doc.items() if k != "rows"}}


def probe_sentences(n: int = 16, *, quick: bool | None = None, domain: str = "movie") -> list[str]:
    """``n`` sentences to probe: the first ``n`` of a packaged domain, or toy sentences in the quick setting."""
    quick = quick_mode() if quick is None else quick
    if quick:
        from ..testing import toy_sentences

        return toy_sentences(n, seed=0)[0]
    from ..data.text import load_domain

    return list(load_domain(domain).texts[:n])


def explorer_models(*, quick: bool | None = None) -> dict[str, Any]:
    """Models for the noise-propagation explorer.

    Full setting: the packaged pre-trained MiniLM (6 blocks) and a tiny 2-block random BERT, so that the
    explorer also shows what a too-high injection layer looks like. Quick setting: two tiny random BERTs
    (2 and 4 blocks).
    """
    quick = quick_mode() if quick is None else quick
    from ..testing import tiny_model

    if quick:
        return {"tiny-bert-4": tiny_model("bert", n_layers=4, seed=0), "tiny-bert-2": tiny_model("bert", seed=1)}
    from ..data.models import load_model

    return {"minilm (pre-trained)": load_model("minilm"), "tiny-bert-2 (random)": tiny_model("bert", seed=1)}


def comparison_settings(*, quick: bool | None = None, results: str | os.PathLike[str] | None = None,
                        methods: Sequence[str] = ("vanilla", "lnsr")) -> dict[str, Any]:
    """Keyword arguments for :func:`lnsr_viz.experiments.runs.compare` in the notebooks.

    Full setting: exactly the demo's (:data:`~lnsr_viz.experiments.runs.DEMO_SETTINGS`, MiniLM, movie in-domain,
    amazon / tweets / nyt out-of-domain) in ``results_dir('demo')``, so runs made by ``make demo`` are loaded,
    not retrained. Quick setting: a tiny random BERT saved once under the store folder, toy sentences as in- and
    out-of-domain data, 2 seeds and 1 epoch (seconds).
    """
    quick = quick_mode() if quick is None else quick
    store = Path(results) if results is not None else results_dir("demo", quick=quick)
    if not quick:
        from ..experiments.config import ExperimentConfig
        from ..experiments.runs import DEMO_SETTINGS

        demo = ExperimentConfig.demo()
        return {**DEMO_SETTINGS, "methods": tuple(methods), "model": demo.model, "data": demo.in_domain_data(),
                "ood": tuple(demo.ood_data()), "results": str(store)}
    from ..testing import tiny_model, toy_sentences

    assets = store / "assets"
    model_dir = assets / "tiny-bert"
    if not (model_dir / "config.json").is_file():
        model, tok = tiny_model("bert", seed=0)
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    paths = {}
    for name, (n, seed) in {"toy_in": (80, 0), "toy_ood": (40, 5)}.items():
        path = assets / f"{name}.csv"
        if not path.is_file():
            texts, labels = toy_sentences(n, seed=seed)
            pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
        paths[name] = str(path)
    return {"methods": tuple(methods), "seeds": (1, 2), "model": str(model_dir), "data": paths["toy_in"],
            "ood": {"toy_ood": paths["toy_ood"]}, "train_size": 24, "val_size": 8, "eval_size": 16, "epochs": 2,
            "batch_size": 8, "lr": 5e-4, "max_length": 32, "probe_n": 8, "probe_draws": 2, "results": str(store)}


# ------------------------------------------------------------------------------------------------------------------
# the loops the notebooks show the results of (probes over settings, measurements over stored checkpoints)


def probe_profiles(model: Any, texts: Sequence[str], *, tokenizer: Any = None, label: str | None = None,
                   noises: Sequence[str] = ("gaussian",), scales: Sequence[float] = (0.05,),
                   injection_layers: Any = 0, n_draws: int = 4) -> pd.DataFrame:
    """The stability profiles of ``model`` for every noise type x scale, stacked in one tidy table.

    One :class:`~lnsr_viz.core.probe.StabilityProbe` run per (noise, scale), in that order (noise outer), with the
    given injection layers and draws; the table's ``noise`` and ``scale`` columns tell the runs apart.
    """
    from ..core.probe import StabilityProbe

    return pd.concat([
        StabilityProbe(noise, scale=scale, injection_layers=injection_layers, n_draws=n_draws,
                       progress=False).run(model, texts, tokenizer=tokenizer, label=label)
        for noise in noises for scale in scales
    ], ignore_index=True)


# ------------------------------------------------------------------------------------------------------------------
# the live explorers' caches: tokenisation, clean pass and profiles, kept here so the dashboards only wire


def _batch_key(inputs: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """A content key of a tokenised batch (its ids and mask), or None when it has no ``input_ids``."""
    import hashlib

    ids = inputs.get("input_ids")
    if ids is None:
        return None
    digest = hashlib.sha1()
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        tensor = inputs.get(name)
        if tensor is not None:
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return (tuple(ids.shape), str(ids.device), digest.hexdigest())


def _capture_class() -> type:
    from ..core.adapter import ModelAdapter

    class _CachedCaptureAdapter(ModelAdapter):
        """A ModelAdapter that remembers the clean captures of a few batches (see :func:`cached_capture_adapter`)."""

        def __init__(self, model: Any, max_batches: int = 16) -> None:
            super().__init__(model)
            self._captures: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
            self._max_batches = int(max_batches)
            self.clean_passes = 0

        def capture(self, inputs: Mapping[str, Any], *, record_rng: bool = False, stop_at: int | None = None,
                    **kwargs: Any) -> Any:
            plain = not record_rng and stop_at is None and not kwargs
            key = _batch_key(inputs) if plain else None
            if key is not None and key in self._captures:
                self._captures.move_to_end(key)
                return self._captures[key]
            cap = super().capture(inputs, record_rng=record_rng, stop_at=stop_at, **kwargs)
            self.clean_passes += 1
            if key is not None:
                self._captures[key] = cap
                while len(self._captures) > self._max_batches:
                    self._captures.popitem(last=False)
            return cap

    return _CachedCaptureAdapter


def cached_capture_adapter(model: Any, *, max_batches: int = 16) -> Any:
    """A :class:`~lnsr_viz.core.adapter.ModelAdapter` that remembers the clean captures of a few fixed batches.

    An explorer probes the same few sentences again and again; only the noise changes. The probe asks the adapter
    for the clean pass every time, so reusing it saves one full forward pass per batch and control change. A
    capture is reused only for a batch with the very same token ids and mask (a content hash), for at most
    ``max_batches`` batches (least recently used out); ``clean_passes`` counts the real clean passes. The model's
    weights must not change while the adapter is in use.
    """
    return _capture_class()(model, max_batches=max_batches)


class ProbeSession:
    """One model on one fixed set of sentences, probed again and again with different noise settings.

    Tokenises the sentences once (as one padded batch by default; with ``bucket_size`` in batches of that many
    sentences sorted by token count, which replays fewer padding tokens: with MiniLM and 32 movie sentences on the
    2-core AMD EPYC, two batches of 16 answered a new setting in a median 0.75 s against 1.05 s for one batch, and
    four of 8 in 0.58 s; on the 2-core Xeon of 2026-12-03 it was not faster), keeps their clean forward passes
    (a :func:`cached_capture_adapter`) and memoises every profile it has computed per (injection
    layer, noise, scale, scale kind, draws, seed), least recently used first out beyond ``max_profiles``.
    :meth:`prefetch` computes settings in a background thread while the user looks at the figure (one probe at a
    time; a request for a setting being prefetched waits for it instead of starting again). Build it with
    :func:`probe_session`, which also shares one session between explorers over the same model and sentences.

    Attributes
    ----------
    model, tokenizer, adapter
        The model, its tokenizer and the caching adapter.
    probe_texts : list of str
        The sentences in the order probed (as given, or sorted by token count with a ``bucket_size``); profiles are
        means over them, so the order changes no value, only which noise draw meets which sentence.
    last_seconds : float
        Seconds the last :meth:`profile` call spent probing or waiting for a prefetch (0.0 when it was memoised).
    last_memoised : bool
        Whether the last :meth:`profile` call was answered from the memo (a finished prefetch counts).
    n_prefetched : int
        Profiles computed in the background so far.
    """

    def __init__(self, model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int = 64,
                 max_profiles: int = 256, bucket_size: int | None = None) -> None:
        import threading

        from ..core.inputs import texts_of

        self.model, self.tokenizer = model, tokenizer
        self.texts = texts_of(list(texts), owner="ProbeSession")
        self.max_length = int(max_length)
        self.max_profiles = int(max_profiles)
        self.bucket_size = len(self.texts) if bucket_size is None else min(len(self.texts), max(1, int(bucket_size)))
        self.probe_texts = list(self.texts)
        if self.bucket_size < len(self.texts):
            lengths = [len(ids) for ids in tokenizer(list(self.texts), truncation=True,
                                                      max_length=self.max_length)["input_ids"]]
            self.probe_texts = [self.texts[i] for i in sorted(range(len(self.texts)), key=lambda i: lengths[i])]
        n_batches = -(-len(self.texts) // self.bucket_size)
        self.adapter = cached_capture_adapter(model, max_batches=max(16, n_batches))
        self._profiles: OrderedDict[tuple[Any, ...], pd.DataFrame] = OrderedDict()
        self.last_seconds = float("nan")
        self.last_memoised = False
        self.n_prefetched = 0
        self._lock = threading.RLock()  # one probe at a time (the model is shared)
        self._state = threading.Condition()
        self._queue: list[tuple[Any, ...]] = []
        self._running: tuple[Any, ...] | None = None
        self._last_request = 0.0
        self._worker: threading.Thread | None = None

    @property
    def n_layers(self) -> int:
        """Number of blocks L of the model (layers 0..L)."""
        return int(self.adapter.n_layers)

    @staticmethod
    def key(*, injection_layer: int, noise: str = "gaussian", scale: float = 0.05, scale_kind: str = "relative",
            n_draws: int = 4, seed: int = 0) -> tuple[Any, ...]:
        """The memo key of one setting."""
        return (int(injection_layer), str(noise), round(float(scale), 10), str(scale_kind), int(n_draws), int(seed))

    def is_memoised(self, **setting: Any) -> bool:
        """Whether the profile of ``setting`` (the keywords of :meth:`profile`) is already computed."""
        return self.key(**setting) in self._profiles

    def profile(self, *, injection_layer: int, noise: str = "gaussian", scale: float = 0.05,
                scale_kind: str = "relative", n_draws: int = 4, seed: int = 0, label: str = "model") -> pd.DataFrame:
        """The stability profile for one injection layer and noise setting (memoised; a copy per label)."""
        key = self.key(injection_layer=injection_layer, noise=noise, scale=scale, scale_kind=scale_kind,
                       n_draws=n_draws, seed=seed)
        t0 = time.perf_counter()
        with self._state:
            self._last_request = t0
            if key in self._queue:
                self._queue.remove(key)
            while self._running == key:  # being prefetched: wait for it rather than compute it twice
                self._state.wait(0.05)
        if key in self._profiles:
            self._profiles.move_to_end(key)
            waited = time.perf_counter() - t0
            self.last_seconds, self.last_memoised = (waited if waited > 1e-3 else 0.0), True
            return self._relabel(self._profiles[key], label)
        profile = self._compute(key, label)
        self.last_seconds, self.last_memoised = time.perf_counter() - t0, False
        with self._state:
            self._last_request = time.perf_counter()
        return profile

    def _compute(self, key: tuple[Any, ...], label: str) -> pd.DataFrame:
        from ..core.probe import StabilityProbe

        k, noise, scale, scale_kind, n_draws, seed = key
        with self._lock:
            if key in self._profiles:
                return self._relabel(self._profiles[key], label)
            probe = StabilityProbe(noise, scale=float(scale), scale_kind=scale_kind, injection_layers=[k],
                                   n_draws=n_draws, batch_size=self.bucket_size,
                                   max_rows=max(256, n_draws * self.bucket_size), max_length=self.max_length,
                                   seed=seed, progress=False)
            profile = probe.run(self.adapter, self.probe_texts, tokenizer=self.tokenizer, label=label)
            self._profiles[key] = profile
            while len(self._profiles) > self.max_profiles:
                self._profiles.popitem(last=False)
        return profile

    # -- background precomputation ---------------------------------------------------------------------------
    def prefetch(self, settings: Sequence[Mapping[str, Any]], *, idle_s: float = 0.25) -> int:
        """Compute ``settings`` (keyword dicts of :meth:`profile`) in a background thread, in order, replacing any
        queue; each starts once no :meth:`profile` request came for ``idle_s`` seconds. Returns how many were
        queued (settings already memoised are skipped)."""
        import threading

        keys = [self.key(**{k: v for k, v in st.items() if k != "label"}) for st in settings]
        keys = [k for k in dict.fromkeys(keys) if k not in self._profiles and 0 <= k[0] <= self.n_layers]
        with self._state:
            self._queue = keys
            self._idle_s = float(idle_s)
            if keys and (self._worker is None or not self._worker.is_alive()):
                self._worker = threading.Thread(target=self._work, name="lnsr-viz-prefetch", daemon=True)
                _PREFETCHING.add(self)
                self._worker.start()
            self._state.notify_all()
        return len(keys)

    def cancel_prefetch(self) -> None:
        """Drop the settings still queued (one being computed finishes)."""
        with self._state:
            self._queue = []

    def wait_prefetch(self, timeout: float = 60.0) -> bool:
        """Block until the queue is done (for benchmarks and tests); False on timeout."""
        end = time.perf_counter() + timeout
        with self._state:
            while self._queue or self._running is not None:
                if time.perf_counter() > end:
                    return False
                self._state.wait(0.05)
        return True

    def _work(self) -> None:
        while True:
            with self._state:
                if not self._queue:
                    return
                quiet = time.perf_counter() - self._last_request
                if quiet < self._idle_s:
                    self._state.wait(self._idle_s - quiet)
                    continue
                key = self._queue.pop(0)
                if key in self._profiles:
                    continue
                self._running = key
            try:
                self._compute(key, "model")
                self.n_prefetched += 1
            except Exception:  # noqa: BLE001 - a failed prefetch is simply recomputed (and reported) on request
                pass
            finally:
                with self._state:
                    self._running = None
                    self._state.notify_all()

    @staticmethod
    def _relabel(profile: pd.DataFrame, label: str) -> pd.DataFrame:
        if (profile["model"] == label).all():
            return profile
        out = profile.copy()
        out["model"] = label
        return out


_SESSIONS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], ProbeSession]] = weakref.WeakKeyDictionary()
#: Sessions that started a prefetch thread: at interpreter exit their queues are dropped and the probe in flight is
#: waited for, so no thread is inside torch while the interpreter shuts down.
_PREFETCHING: weakref.WeakSet[ProbeSession] = weakref.WeakSet()


def _stop_prefetching() -> None:
    for session in list(_PREFETCHING):
        session.cancel_prefetch()
        worker = session._worker
        if worker is not None and worker.is_alive():
            worker.join(timeout=60)


import atexit  # noqa: E402  (registered next to what it stops)

atexit.register(_stop_prefetching)


#: Sentences per length-sorted batch of the explorers' sessions (:func:`probe_session`): 32 probe sentences are
#: replayed as two batches of 16, which keeps a new setting under 1 s on 2 cores (see :class:`ProbeSession`), while
#: in-manifold noise still takes its principal directions from 16 sentences' tokens (each batch's own).
EXPLORER_BUCKET_SIZE = 16


def probe_session(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int = 64,
                  bucket_size: int | None = EXPLORER_BUCKET_SIZE) -> ProbeSession:
    """The :class:`ProbeSession` of ``model`` on ``texts``: one per (model object, sentences, max_length, buckets).

    A second explorer (or a re-run notebook cell) over the same model object and sentences reuses the tokenised
    inputs, the clean pass and every profile already computed. Sessions live as long as their model does.
    ``bucket_size``: sentences per length-sorted batch (None: one batch of all of them).
    """
    key = (id(tokenizer), tuple(texts), int(max_length), bucket_size)
    per_model = _SESSIONS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = ProbeSession(model, tokenizer, texts, max_length=max_length, bucket_size=bucket_size)
    return per_model[key]


def probe_noise_sigma(model: Any, texts: Sequence[str], tokenizer: Any, *, scale: float = 0.05, layer: int = 0,
                      max_length: int = 64) -> float:
    """The per-coordinate sigma that relative noise of size ``scale`` amounts to at ``layer``.

    ``scale * mean_t ||h_t|| / sqrt(d)`` over the tokens of ``texts`` (padding included, as the batch is), the
    Gaussian sigma with the same expected norm as the probe's noise: notebook 03 compares it with the range of
    sigma where the small-noise identity holds.
    """
    from ..core.adapter import ModelAdapter
    from ..core.inputs import tokenize

    batch = tokenize(tokenizer, texts, max_length=max_length, model=model)
    hidden = ModelAdapter(model).hidden_states(batch)[layer]
    return float(scale * hidden.norm(dim=-1).mean() / hidden.shape[-1] ** 0.5)


def _first_seed_checkpoints(methods: Sequence[str] | None, quick: bool | None) -> pd.DataFrame:
    """The stored checkpoint of the lowest seed of each of ``methods`` (all stored methods when None)."""
    found = stored_checkpoints(quick=quick)
    if methods is not None:
        found = found[found["method"].isin(list(methods))]
    return found.sort_values("seed", kind="stable").groupby("method", sort=False).head(1)


def checkpoint_drift(settings: Mapping[str, Any], *, n_texts: int = 256, quick: bool | None = None) -> pd.DataFrame:
    """Representation drift from the pre-trained model of each method's first-seed stored checkpoint.

    For every method of ``settings["methods"]`` with a stored checkpoint (lowest seed),
    :func:`~lnsr_viz.analysis.drift.representation_drift` against ``settings["model"]`` on the first ``n_texts``
    held-out in-domain sentences of the comparison's protocol; the models are named ``pretrained`` and
    ``"<method> (seed <s>)"``. Empty when no checkpoint is stored (runs made without ``save_checkpoints``).
    """
    first_seed = _first_seed_checkpoints(settings["methods"], quick)
    if first_seed.empty:
        return pd.DataFrame()
    from ..analysis.drift import representation_drift
    from ..data.models import load_model

    base = load_model(settings["model"])
    protocol = comparison_protocol(settings)
    held_out = protocol.evaluation[protocol.in_domain].texts[:n_texts]
    return pd.concat([
        representation_drift(base, row.path, held_out, names=("pretrained", f"{row.method} (seed {row.seed})"),
                             max_length=settings["max_length"])
        for row in first_seed.itertuples()
    ], ignore_index=True)


THEORY_COLUMNS = ["jacobian_fro2", "jacobian_fro2_se", "hessian_trace", "hessian_trace_se"]


def checkpoint_theory(settings: Mapping[str, Any], *, n_train: int = 32, n_probes: int = 8, layer: int = 0,
                      quick: bool | None = None) -> pd.DataFrame:
    """Jacobian norm and Hessian trace of every stored checkpoint: ``run_id, method, seed`` and the estimates.

    :func:`~lnsr_viz.analysis.theory.theory_measurements` of each checkpoint in :func:`stored_checkpoints`, on the
    first ``n_train`` training examples of the comparison's protocol (the data the models were fine-tuned on),
    with ``n_probes`` Hutchinson probes. Empty (with these columns) when no checkpoint is stored.
    """
    from ..analysis.theory import theory_measurements
    from ..data.models import load_model

    checkpoints = stored_checkpoints(quick=quick)
    train = comparison_protocol(settings).train
    train_small = train.subset(range(min(n_train, len(train))))
    rows = []
    for row in checkpoints.itertuples():
        net, tok = load_model(row.path)
        rows.append({"run_id": row.run_id, **theory_measurements(net, train_small, tok, layer=layer,
                                                                 n_probes=n_probes,
                                                                 max_length=settings["max_length"])})
    measured = pd.DataFrame(rows, columns=["run_id", *THEORY_COLUMNS])
    return checkpoints[["run_id", "method", "seed"]].merge(measured, on="run_id")


def join_theory_measurements(runs: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    """``runs`` (a :func:`~lnsr_viz.experiments.theory_runs.theory_table`'s) with the Jacobian / Hessian columns
    replaced by those of ``measured`` (:func:`checkpoint_theory`), matched on ``run_id``; runs not measured get NaN."""
    keep = [c for c in ("jacobian_fro2", "hessian_trace") if c in measured]
    return runs.drop(columns=[c for c in keep if c in runs]).merge(measured[["run_id", *keep]], on="run_id",
                                                                   how="left")


def diagnosis_data(data: Any = None, *, settings: Mapping[str, Any] | None = None) -> tuple[Any, str, dict[str, Any]]:
    """``(data, in_domain, ood)`` for :func:`~lnsr_viz.experiments.diagnose.diagnose` in notebook 04.

    ``data=None``: the stored checkpoint's own protocol (``settings``, default :func:`comparison_settings`): its
    training set and held-out in-domain set as ``{"train": ..., "held_out": ...}``, the in-domain name and the
    out-of-domain sets by name. Otherwise ``data`` unchanged, ``"held_out"`` and no out-of-domain sets.
    """
    if data is not None:
        return data, "held_out", {}
    protocol = comparison_protocol(settings if settings is not None else comparison_settings())
    in_domain = protocol.in_domain
    ood = {name: ds for name, ds in protocol.evaluation.items() if name != in_domain}
    return {"train": protocol.train, "held_out": protocol.evaluation[in_domain]}, in_domain, ood


def diagnosis_projections(base: Any, model: Any, held_out: Any, ood: Mapping[str, Any], *, in_domain: str,
                          n_per_set: int = 100, layers: Sequence[int] = (0, -1), method: str = "umap",
                          max_length: int = 64) -> list[pd.DataFrame]:
    """One joint projection of ``base`` and ``model`` per layer, over the first ``n_per_set`` sentences of each set.

    The sets are ``held_out`` (named ``in_domain``) and every out-of-domain set; ``base`` and ``model`` are
    ``(model, tokenizer)`` pairs. Each entry is :func:`~lnsr_viz.analysis.projection.project_representations`'s
    table for one of ``layers``, ready for :class:`~lnsr_viz.viz.dashboards.ProjectionDashboard`.
    """
    from ..analysis.projection import project_representations

    sets = {name: ds.subset(range(min(n_per_set, len(ds)))) for name, ds in {in_domain: held_out, **ood}.items()}
    return [project_representations(base, model, sets, layer=layer, method=method, names=("base", "model"),
                                    max_length=max_length) for layer in layers]


def run_cost_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs and mean wall-clock seconds per method (runs without a time, such as the pre-trained row, left out)."""
    return runs.dropna(subset=["seconds"]).groupby("method")["seconds"].agg(["count", "mean"]).round(1)


def study_config(name: str = "study") -> Path:
    """The committed study's configuration, ``<project>/configs/<name>.yaml`` (see :func:`project_root`)."""
    return project_root() / "configs" / f"{name}.yaml"


_IMAGE_MIME = {".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_IMAGE_LINK = re.compile(r"(!\[[^\]]*\])\(([^)\s:]+)\)")  # ![alt](relative/path), never a URL or data URI


def study_markdown(name: str = "study") -> str | None:
    """The committed write-up ``<project>/docs/<name>.md`` with its figures embedded (data URIs), so they show
    wherever the lab is rooted (``make lab`` serves only ``notebooks/``); a missing figure is named in its place.

    None when the file is not there (run ``python -m lnsr_viz study configs/study.yaml`` to write it).
    """
    doc = project_root() / "docs" / f"{name}.md"
    if not doc.is_file():
        return None

    def embed(link: re.Match[str]) -> str:
        path = doc.parent / link.group(2)
        mime = _IMAGE_MIME.get(path.suffix.lower())
        if mime is None or not path.is_file():
            return (f"*(figure `docs/{link.group(2)}` is missing: rebuild the write-up with "
                    f"`python -m lnsr_viz study configs/{name}.yaml`)*")
        return f"{link.group(1)}(data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')})"

    return _IMAGE_LINK.sub(embed, doc.read_text(encoding="utf-8"))


#: Columns of the study's runs table offered as scatter axes (in this order, where present).
STUDY_SCATTER_COLUMNS = ("top_sensitivity", "ood_accuracy", "ood_roc_auc", "accuracy", "roc_auc", "val_accuracy",
                         "reg_to_task_ratio", "repr_effective_rank")


def study_scatter_choices(runs: pd.DataFrame) -> dict[str, list[str]]:
    """The ``x`` / ``y`` choices of notebook 06's scatter: the numeric run columns present, ``y`` led by the second."""
    numeric = [c for c in STUDY_SCATTER_COLUMNS if c in runs]
    if len(numeric) < 2:
        raise ValueError(f"the study's runs table has fewer than two of the columns {list(STUDY_SCATTER_COLUMNS)}")
    return {"x": numeric, "y": [numeric[1], *[c for c in numeric if c != numeric[1]]]}

"""Diagnose a fine-tuned model: generalisation gap, noise stability against its base, drift, calibration.

``diagnose(model, base_model, data)`` loads a fine-tuned checkpoint and its pre-trained base (inferred from the
checkpoint's config when not given) and measures, on the user's labelled data:

* train vs held-out **accuracy and loss** (the generalisation gap);
* the **layer stability profile** of both models (the paper's Figure 1 probe: 5% relative Gaussian noise at the
  embedding output, relative change of every higher layer) and the top-layer ratio model / base;
* **drift** per layer (linear and debiased CKA, cosine drift, weight distance; :mod:`lnsr_viz.analysis.drift`);
* **calibration** (expected calibration error on held-out data).

Every finding is a plain-language sentence with the number behind it, the threshold it was compared with and where
that threshold comes from; where no principled threshold exists the finding only describes (no verdict without a
number). The thresholds:

=====================  ==========================================================================================
finding                threshold and source
=====================  ==========================================================================================
generalisation gap     0, with the 95% Newcombe (Wilson score) interval of a difference of two independent
                       proportions (Newcombe 1998, method 10): flagged when train accuracy exceeds held-out accuracy
                       by more than sampling noise on these sample sizes.
loss gap               0, with a 95% Welch t-interval on the difference of mean per-example loss (held-out - train).
stability vs base      top-layer sensitivity ratio model / base, flagged when its 95% paired percentile bootstrap
                       interval over the probe sentences lies above 1 and the ratio reaches ``stability_margin``
                       (default 1.2, a materiality convention of this toolkit, not from the paper); Hua et al.
                       (LNSR) report lower top-layer curves for better-generalising models.
calibration            the 95th percentile of the ECE that a perfectly calibrated model with the same confidences
                       would show on this many examples by chance (consistency resampling, Broecker & Smith 2007).
drift                  descriptive (no accepted CKA cut-off exists); "no drift" only when every weight distance is
                       exactly 0.
=====================  ==========================================================================================

The base model is read from the checkpoint's ``config.json``: a ``base_model`` field (written by
:func:`save_checkpoint`) or else ``_name_or_path``. Nothing is downloaded when the Hub is switched off
(``HF_HUB_OFFLINE=1``): a base that is neither a local folder, a packaged alias nor in the local Hugging Face cache is
a clear error that says what to pass instead.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from torch import nn

from ..utils.validation import check_number, check_positive_int

__all__ = ["Finding", "Diagnosis", "diagnose", "infer_base_model", "model_class_names", "save_checkpoint",
           "newcombe_interval", "ece_null_threshold", "json_safe"]

Severity = Literal["warning", "ok", "info"]
_HELD_OUT_NAMES = ("held_out", "heldout", "validation", "val", "dev", "test")


# ------------------------------------------------------------------------------------------------ results
@dataclass
class Finding:
    """One plain-language finding with the evidence behind it.

    Attributes
    ----------
    key : str
        Stable identifier (``generalisation_gap``, ``loss_gap``, ``stability_vs_base``, ``drift``,
        ``calibration``).
    severity : {'warning', 'ok', 'info'}
        ``warning``: a sign of a problem beyond sampling noise; ``ok``: checked, no problem; ``info``: descriptive or
        not measurable with the data given.
    title : str
    message : str
        The sentence a practitioner reads, with the number in it.
    value : float or None
        The number behind the finding.
    threshold : float or None
        What it was compared with (None for descriptive findings).
    threshold_source : str
        Where the threshold comes from.
    evidence : dict
        The supporting numbers (intervals, sample sizes, ...).
    """

    key: str
    severity: Severity
    title: str
    message: str
    value: float | None
    threshold: float | None
    threshold_source: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"[{self.severity}] {self.title}: {self.message}"


def json_safe(obj: Any) -> Any:
    """``obj`` made JSON-safe: NaN/inf -> None, numpy scalars -> Python, tuples -> lists (mappings recursively).

    The summary (:meth:`Diagnosis.to_dict`) and the report's settings table
    (:func:`lnsr_viz.viz.reports.diagnosis_report`) use it."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    return obj


@dataclass
class Diagnosis:
    """The result of :func:`diagnose`.

    Attributes
    ----------
    findings : list of Finding
    metrics : DataFrame
        ``split, metric, value`` for the fine-tuned model (``train`` and ``held_out``; accuracy, macro_f1, nll, ece,
        roc_auc, positive_rate, n).
    profile : DataFrame
        Stability profiles of the model and the base (``model`` column ``'model'`` / ``'base'``).
    drift : DataFrame
        :func:`lnsr_viz.analysis.drift.representation_drift` of the model from the base.
    calibration : DataFrame
        Reliability table of the held-out predictions: ``bin_low, bin_high, n, mean_confidence, accuracy``.
    settings : dict
        What was loaded and how it was measured.
    """

    findings: list[Finding]
    metrics: pd.DataFrame
    profile: pd.DataFrame
    drift: pd.DataFrame
    calibration: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    def finding(self, key: str) -> Finding:
        """The finding with this key."""
        for f in self.findings:
            if f.key == key:
                return f
        raise KeyError(f"no finding {key!r}; available: {[f.key for f in self.findings]}")

    def summary(self) -> str:
        """The findings as plain text, one per line."""
        return "\n".join(str(f) for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary: settings, findings, metrics, top-layer stability, drift, calibration."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            pkg_version = version("lnsr_viz")
        except PackageNotFoundError:
            pkg_version = "unknown"
        return json_safe({
            "lnsr_viz_version": pkg_version,
            "settings": self.settings,
            "findings": [asdict(f) for f in self.findings],
            "metrics": self.metrics.to_dict(orient="records"),
            "stability_top_layer": self.settings.get("stability_top_layer", {}),
            "drift": self.drift.to_dict(orient="records"),
            "calibration": self.calibration.to_dict(orient="records"),
        })

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The JSON summary as text; with ``path``, also written there atomically."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        if path is not None:
            from ..utils.io import atomic_write_text

            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
        return text


# ------------------------------------------------------------------------------------------------ statistics
def _wilson(x: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of the proportion ``x / n`` (scipy's ``binomtest(...).proportion_ci``)."""
    from scipy.stats import binomtest

    ci = binomtest(x, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, *, confidence: float = 0.95) -> tuple[float, float, float]:
    """Difference of two independent proportions ``x1/n1 - x2/n2`` with Newcombe's hybrid score interval.

    Newcombe (1998), method 10: Wilson score intervals of each proportion, combined. Unlike the Wald interval it
    behaves at proportions of 0 or 1 (a training accuracy of 100%).

    Returns
    -------
    (difference, low, high) : tuple of float
    """
    for name, x, n in (("1", x1, n1), ("2", x2, n2)):
        if n < 1 or not 0 <= x <= n:
            raise ValueError(f"newcombe_interval: need 0 <= x{name} <= n{name} and n{name} >= 1; got x={x}, n={n}.")
        if x != int(x) or n != int(n):
            raise ValueError(f"newcombe_interval: x{name} and n{name} are counts and must be whole numbers; "
                             f"got x={x}, n={n}.")
    x1, n1, x2, n2 = int(x1), int(n1), int(x2), int(n2)
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = _wilson(x1, n1, confidence)
    l2, u2 = _wilson(x2, n2, confidence)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _ece_from(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE with equal-width bins (0, 1/B], ... for rows of ``correct`` (shape (..., n)); vectorised."""
    inner = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.searchsorted(inner, conf, side="left")
    onehot = np.zeros((conf.size, n_bins))
    onehot[np.arange(conf.size), bins] = 1.0
    gap = (correct - conf) @ onehot  # (..., n_bins): sum over the bin of (correct - confidence)
    return np.abs(gap).sum(axis=-1) / conf.size


def ece_null_threshold(probs: np.ndarray, *, n_bins: int = 15, quantile: float = 0.95, n_resamples: int = 2000,
                       seed: int = 0) -> float:
    """The ``quantile`` of the ECE a perfectly calibrated model with these confidences shows by chance.

    Consistency resampling (Broecker & Smith, 2007): keep each example's confidence ``c_i`` (its top probability),
    draw "correct" with probability ``c_i``, compute the ECE; repeat. An observed ECE above the 95th percentile is
    miscalibration beyond what the sample size explains.
    """
    p = np.asarray(probs, dtype=np.float64)
    conf = p.max(axis=1)
    rng = np.random.default_rng(seed)
    draws = (rng.random((n_resamples, conf.size)) < conf).astype(np.float64)
    return float(np.quantile(_ece_from(conf, draws, n_bins), quantile))


def _reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> pd.DataFrame:
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], conf, side="left")
    rows = []
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            rows.append({"bin_low": edges[b], "bin_high": edges[b + 1], "n": int(sel.sum()),
                         "mean_confidence": float(conf[sel].mean()), "accuracy": float(correct[sel].mean())})
    return pd.DataFrame(rows, columns=["bin_low", "bin_high", "n", "mean_confidence", "accuracy"])


# ------------------------------------------------------------------------------------------------ loading
def _config_path(path: Path) -> Path:
    if path.is_file():
        raise ValueError(f"{str(path)!r} is a file; pass the checkpoint folder (the one holding config.json).")
    if not path.is_dir():
        raise FileNotFoundError(f"No checkpoint folder at {str(path)!r}. Pass the folder that model.save_pretrained "
                                "(or lnsr_viz.experiments.diagnose.save_checkpoint) wrote.")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ValueError(
            f"The checkpoint folder {str(path)!r} has no config.json, so it is not a transformers checkpoint. Point "
            "at the folder that holds config.json and the weights; save one with "
            "lnsr_viz.experiments.diagnose.save_checkpoint(model, tokenizer, folder, base_model=...) or "
            "model.save_pretrained()."
        )
    return cfg


def infer_base_model(model: nn.Module | str | os.PathLike[str]) -> tuple[str, str]:
    """The pre-trained base of a fine-tuned model, from its config: ``(name_or_path, which_field)``.

    Reads the ``base_model`` field (written by :func:`save_checkpoint`), else ``_name_or_path`` (written by older
    transformers versions, and set in memory by ``from_pretrained``). A value that points back at the checkpoint
    itself says nothing about the base and is ignored.

    Raises
    ------
    ValueError
        No config.json in the folder, or no usable field: pass ``base_model=`` explicitly.
    """
    if isinstance(model, str | os.PathLike):
        folder = Path(model).expanduser()
        cfg = json.loads(_config_path(folder).read_text(encoding="utf-8"))
        own = folder.resolve()
    else:
        config = getattr(model, "config", None)
        cfg = {"base_model": getattr(config, "base_model", None),
               "_name_or_path": getattr(config, "_name_or_path", None)}
        own = None
        folder = None
    for key in ("base_model", "_name_or_path"):
        value = cfg.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        candidate = Path(value).expanduser()
        if own is not None and candidate.exists() and candidate.resolve() == own:
            continue
        return value, key
    where = f"{str(folder)!r}/config.json" if folder is not None else "the model's config"
    raise ValueError(
        f"Cannot infer the base model: {where} has neither a 'base_model' nor a usable '_name_or_path' field. Pass "
        "the pre-trained model explicitly (base_model='minilm', a local folder or a Hugging Face id; on the command "
        "line --base), and save future checkpoints with "
        "lnsr_viz.experiments.diagnose.save_checkpoint(..., base_model=...)."
    )


def save_checkpoint(model: nn.Module, tokenizer: Any, folder: str | os.PathLike[str], *,
                    base_model: str | os.PathLike[str], class_names: Sequence[str] | None = None) -> Path:
    """Save a fine-tuned model and its tokenizer, recording ``base_model`` in config.json for :func:`diagnose`.

    transformers no longer writes ``_name_or_path`` into config.json, so without this field the base of a saved
    checkpoint cannot be inferred.

    Parameters
    ----------
    model : nn.Module
        A transformers ``PreTrainedModel`` (its ``config`` gets the ``base_model`` attribute).
    tokenizer : tokenizer or None
    folder : path-like
        Created if missing.
    base_model : str or path-like
        The pre-trained model it was fine-tuned from: an alias (``'minilm'``), a local folder or a Hub id.
    class_names : sequence of str, optional
        The name of each class id (the training data's labels), written as the config's ``id2label`` /
        ``label2id`` so that :func:`diagnose` matches string labels to the model's classes by name.

    Returns
    -------
    Path
        ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.base_model = os.fspath(base_model)
    if class_names is not None:
        names = [str(n) for n in class_names]
        if len(names) != int(getattr(model.config, "num_labels", len(names))):
            raise ValueError(f"class_names has {len(names)} names but the model has {model.config.num_labels} "
                             "classes.")
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {n: k for k, n in enumerate(names)}
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def _try_tokenizer(path: str) -> Any:
    from ..data.models import load_tokenizer

    try:
        return load_tokenizer(path)
    except (OSError, ValueError, TypeError):
        return None


def _load_base(base: Any, *, source: str, num_labels: int, tokenizer: Any) -> tuple[nn.Module, Any, str]:
    """Load the base model (a module, a pair, or a name/folder) offline-aware; returns (model, tokenizer, label)."""
    from ..data.models import load_model, resolve_model

    if isinstance(base, tuple | list) and len(base) == 2 and isinstance(base[0], nn.Module):
        return base[0], base[1], "base"
    if isinstance(base, nn.Module):
        return base, tokenizer, "base"
    name = os.fspath(base)
    fix = ("Pass base_model= (on the command line --base) as a local folder holding the pre-trained config.json and "
           "weights, or 'minilm' (the packaged all-MiniLM-L6-v2)")
    try:
        resolve_model(name)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"The base model folder {name!r} ({source}) does not exist. {fix}.") from exc
    except OSError as exc:
        reason = str(exc).split(" (", 1)[-1].split(")", 1)[0] if " (" in str(exc) else str(exc)
        raise OSError(
            f"The base model {name!r} ({source}) cannot be found offline: it is not a local folder, not a packaged "
            f"alias and not in the local Hugging Face cache ({reason}). {fix}; or download it once with the Hub "
            "enabled."
        ) from exc
    try:
        model, tok = load_model(name, num_labels=num_labels)
    except OSError as exc:
        raise OSError(f"The base model {name!r} ({source}) could not be loaded ({str(exc).splitlines()[0]}). "
                      f"{fix}.") from exc
    return model, tok, name


def _load_model(model: Any, tokenizer: Any) -> tuple[nn.Module, Any, str]:
    """The fine-tuned model: (model, its tokenizer or None, label)."""
    from ..core.inputs import load_named_model

    if isinstance(model, tuple | list) and len(model) == 2 and isinstance(model[0], nn.Module):
        return model[0], tokenizer if tokenizer is not None else model[1], "model"
    if isinstance(model, nn.Module):
        return model, tokenizer, "model"
    if not isinstance(model, str | os.PathLike):
        raise TypeError(f"model must be a checkpoint folder, a model name, an nn.Module or (model, tokenizer); got "
                        f"{type(model).__name__}.")
    name = os.fspath(model)
    path = Path(name).expanduser()
    if not (path.exists() or name.startswith((".", "/", "~"))):
        net, tok = load_named_model(name)
        return net, tokenizer if tokenizer is not None else tok, name
    _config_path(path)
    from transformers import AutoModelForSequenceClassification

    net, info = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True,
                                                                   output_loading_info=True)
    prefix = getattr(net, "base_model_prefix", "") or ""
    head_missing = [k for k in info.get("missing_keys", ()) if not (prefix and k.startswith(prefix + "."))]
    if head_missing:
        raise ValueError(
            f"The checkpoint {str(path)!r} has no trained classification head (missing {sorted(head_missing)[:4]}), "
            "so its predictions would come from a random head. Diagnose the fine-tuned classifier: save it with "
            "lnsr_viz.experiments.diagnose.save_checkpoint(model, tokenizer, folder, base_model=...)."
        )
    net.eval()
    tok = tokenizer if tokenizer is not None else _try_tokenizer(str(path))
    return net, tok, str(path)


# ------------------------------------------------------------------------------------------------ data
def _in_classes(train: Any, held: Any, classes: tuple[str, ...] | int) -> tuple[Any, Any]:
    """Both splits expressed in ``classes`` (names matched by name, ids as ids); an unknown label is refused."""
    from ..data.text import as_dataset

    return (None if train is None else as_dataset(train, classes=classes)), as_dataset(held, classes=classes)


def model_class_names(model: Any) -> tuple[str, ...] | None:
    """The model's class names from its config's ``id2label``, or None when they are transformers' ``LABEL_k``."""
    cfg = getattr(model, "config", None)
    id2label = dict(getattr(cfg, "id2label", None) or {})
    n = int(getattr(cfg, "num_labels", len(id2label)) or 0)
    names = [str(id2label.get(k, id2label.get(str(k), f"LABEL_{k}"))) for k in range(n)]
    if not names or all(re.fullmatch(r"LABEL_\d+", name) for name in names):
        return None
    return tuple(names)


def _in_model_classes(train: Any, held: Any, net: nn.Module) -> tuple[Any, Any]:
    """Match string labels to the model's named classes; say so when the model's classes have no names."""
    names = model_class_names(net)
    named = [d for d in (train, held) if d is not None and d.label_names is not None]
    if not named:
        return train, held
    if names is not None:
        return _in_classes(train, held, names)
    order = ", ".join(f"{n}={k}" for k, n in enumerate(named[0].label_names))
    warnings.warn(f"the model's classes have no names (its config says LABEL_0, LABEL_1, ...), so the data's labels "
                  f"were numbered in sorted order: {order}. If the model was trained with another order, pass "
                  "label_map= (--label-map), e.g. label_map={'negative': 0, 'positive': 1}.", UserWarning,
                  stacklevel=3)
    return train, held


def _split_data(data: Any, held_out: Any, text_column: str, label_column: str, split_column: str, *,
                label_map: Mapping[Any, Any] | None = None, encoding: str | None = None) -> tuple[Any, Any, str]:
    """(train or None, held-out, how the split was found)."""
    from ..data.text import TextDataset, as_dataset

    def ds(obj: Any, name: str) -> TextDataset:
        if isinstance(obj, TextDataset) and not label_map:
            return obj
        return as_dataset(obj, text_column=text_column, label_column=label_column, name=name, label_map=label_map,
                          encoding=encoding)

    if data is None:
        raise ValueError("diagnose needs data=: labelled examples (a CSV with text and label columns, a DataFrame, "
                         "a TextDataset, or {'train': ..., 'held_out': ...}).")
    if held_out is not None:
        return ds(data, "train"), ds(held_out, "held_out"), "data = train, held_out = held-out"
    if isinstance(data, Mapping) and not (text_column in data and label_column in data):
        keys = {str(k).lower(): k for k in data}
        train_key = keys.get("train")
        held_key = next((keys[k] for k in _HELD_OUT_NAMES if k in keys), None)
        if held_key is None:
            raise ValueError(f"data has splits {list(data)}; diagnose needs a held-out one named one of "
                             f"{list(_HELD_OUT_NAMES)} (and 'train' for the gap).")
        train = ds(data[train_key], "train") if train_key is not None else None
        return train, ds(data[held_key], str(held_key)), f"splits {train_key!r} and {held_key!r} of data"
    full = ds(data, "data")
    meta = full.meta
    if meta is not None and split_column in meta.columns:
        split = meta[split_column].astype(str).str.lower().to_numpy()
        train_rows = np.flatnonzero(split == "train")
        held_rows = np.flatnonzero(np.isin(split, _HELD_OUT_NAMES))
        if len(held_rows) == 0:
            raise ValueError(f"the {split_column!r} column has no held-out rows (values {sorted(set(split))}); mark "
                             f"them with one of {list(_HELD_OUT_NAMES)}.")
        train = full.subset(train_rows, name="train") if len(train_rows) else None
        return train, full.subset(held_rows, name="held_out"), f"the {split_column!r} column of the data"
    return None, full, "no split given: all data treated as held-out"


def _cap(data: Any, n: int | None, seed: int) -> Any:
    from ..data.text import subsample

    if data is None or n is None or len(data) <= n:
        return data
    return subsample(data, n, seed=seed)


# ------------------------------------------------------------------------------------------------ findings
def _gap_finding(train_probs: np.ndarray | None, train_y: np.ndarray | None, held_probs: np.ndarray,
                 held_y: np.ndarray) -> Finding:
    source = ("0 (no gap), judged with the 95% Newcombe hybrid score interval for a difference of two independent "
              "proportions (Newcombe 1998): flagged when the whole interval is above 0, i.e. the gap is larger "
              "than sampling noise on these sample sizes")
    held_acc = float(np.mean(held_probs.argmax(1) == held_y))
    if train_probs is None:
        return Finding("generalisation_gap", "info", "Generalisation gap not measured",
                       f"Held-out accuracy is {held_acc:.3f} on {len(held_y)} examples, but no training examples "
                       "were given, so the gap cannot be measured: pass held_out= (or a 'split' column with 'train' "
                       "rows) to compare with the training data.", None, 0.0, source,
                       {"held_out_accuracy": held_acc, "n_held_out": len(held_y)})
    x1 = int(np.sum(train_probs.argmax(1) == train_y))
    x2 = int(np.sum(held_probs.argmax(1) == held_y))
    d, lo, hi = newcombe_interval(x1, len(train_y), x2, len(held_y))
    ev = {"train_accuracy": x1 / len(train_y), "held_out_accuracy": x2 / len(held_y), "n_train": len(train_y),
          "n_held_out": len(held_y), "gap_ci_low": lo, "gap_ci_high": hi}
    text = (f"training accuracy {x1 / len(train_y):.3f} ({x1}/{len(train_y)}) vs held-out {x2 / len(held_y):.3f} "
            f"({x2}/{len(held_y)}): gap {d:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}]")
    if lo > 0:
        return Finding("generalisation_gap", "warning", "Generalisation gap",
                       f"The model fits its training data better than new data: {text}. The interval excludes 0, "
                       "so this is over-fitting beyond sampling noise; consider fewer epochs, early stopping on "
                       "held-out accuracy, more data, or a stability regulariser (LNSR).", d, 0.0, source, ev)
    return Finding("generalisation_gap", "ok", "Generalisation gap",
                   f"No gap beyond sampling noise: {text}; the interval includes 0.", d, 0.0, source, ev)


def _per_example_nll(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))


def _loss_finding(train_probs: np.ndarray | None, train_y: np.ndarray | None, held_probs: np.ndarray,
                  held_y: np.ndarray) -> Finding:
    from scipy import stats

    source = ("0 (same mean loss), judged with a 95% Welch t-interval on the difference of mean per-example "
              "cross-entropy (held-out - train)")
    held = _per_example_nll(held_probs, held_y)
    if train_probs is None:
        return Finding("loss_gap", "info", "Loss gap not measured",
                       f"Held-out loss (mean cross-entropy) is {held.mean():.3f} nats on {len(held)} examples; no "
                       "training examples were given to compare with.", None, 0.0, source,
                       {"held_out_loss": float(held.mean())})
    train = _per_example_nll(train_probs, train_y)
    d = float(held.mean() - train.mean())
    va = held.var(ddof=1) / len(held) if len(held) > 1 else 0.0
    vb = train.var(ddof=1) / len(train) if len(train) > 1 else 0.0
    if va + vb > 0:
        terms = (va**2 / (len(held) - 1) if va > 0 else 0.0) + (vb**2 / (len(train) - 1) if vb > 0 else 0.0)
        half = float(stats.t.ppf(0.975, (va + vb) ** 2 / terms)) * math.sqrt(va + vb)
    else:
        half = 0.0
    lo, hi = d - half, d + half
    ev = {"train_loss": float(train.mean()), "held_out_loss": float(held.mean()), "loss_gap_ci_low": lo,
          "loss_gap_ci_high": hi, "n_train": len(train), "n_held_out": len(held)}
    text = (f"mean cross-entropy {held.mean():.3f} nats held-out vs {train.mean():.3f} on training data "
            f"(difference {d:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}])")
    if lo > 0:
        return Finding("loss_gap", "warning", "Loss gap",
                       f"The loss on new data is higher than on training data: {text}. A training loss near 0 with "
                       "a much larger held-out loss means confident mistakes on new data.", d, 0.0, source, ev)
    return Finding("loss_gap", "ok", "Loss gap", f"No loss gap beyond sampling noise: {text}.", d, 0.0, source, ev)


def _stability_finding(model_top: np.ndarray, base_top: np.ndarray, *, top_layer: int, scale: float,
                       seed: int, margin: float) -> tuple[Finding, dict[str, Any]]:
    from ..analysis.stats import bootstrap_ci

    source = (f"ratio {margin:g}: flagged when the 95% paired percentile bootstrap interval over the probe sentences "
              f"lies above 1 (reliably more sensitive than the pre-trained base) and the ratio reaches {margin:g} "
              f"(stability_margin, our materiality convention, not from the paper); Hua et al. (LNSR, Figure 1) "
              "find lower top-layer curves for better-generalising models")
    mb, bb = float(model_top.mean()), float(base_top.mean())
    ratio = mb / bb if bb > 0 else math.nan
    pairs = np.column_stack([model_top, base_top])
    lo, hi = bootstrap_ci(pairs, n_boot=2000, seed=seed,
                          statistic=lambda a: a[:, 0].mean() / a[:, 1].mean() if a[:, 1].mean() > 0 else math.nan)
    if np.array_equal(model_top, base_top):
        lo = hi = 1.0
    ev = {"model_change_rel": mb, "base_change_rel": bb, "ratio_ci_low": lo, "ratio_ci_high": hi,
          "n_sentences": int(model_top.size), "top_layer": top_layer, "noise": f"gaussian, {scale:g} relative",
          "injection_layer": 0}
    how = (f"with {scale:.0%} Gaussian noise added to the embedding output, the top layer (layer {top_layer}) changes "
           f"by {mb:.3g} of its norm in the fine-tuned model vs {bb:.3g} in the base: ratio {ratio:.2f}, 95% CI "
           f"[{lo:.2f}, {hi:.2f}] over {model_top.size} sentences")
    if lo > 1 and ratio >= margin:
        finding = Finding(
            "stability_vs_base", "warning", "Top layers less noise-stable than the base",
            f"The top layers are {ratio:.2f}x more sensitive than the base model: {how}. This is a sign of "
            "over-fitting; consider LNSR fine-tuning (lnsr_viz.FineTuner('lnsr', method_params={'lam': ...}); "
            "sweep lam, e.g. 0.1 to 10, and watch for collapsing representations).", ratio, margin, source, ev)
    elif lo > 1:
        finding = Finding(
            "stability_vs_base", "info", "Top layers slightly less noise-stable than the base",
            f"The top layers are reliably but only slightly more sensitive than the base model: {how}. The ratio is "
            f"below the margin {margin:g}, so it is not flagged.", ratio, margin, source, ev)
    elif hi < 1:
        finding = Finding("stability_vs_base", "ok", "Top layers more noise-stable than the base",
                          f"The top layers are {1 / ratio:.2f}x less sensitive than the base model: {how}.", ratio,
                          margin, source, ev)
    else:
        finding = Finding("stability_vs_base", "ok", "Noise stability as the base",
                          f"No difference from the base beyond sampling noise: {how}; the interval includes 1.",
                          ratio, margin, source, ev)
    return finding, {"ratio": ratio, "ratio_ci_low": lo, "ratio_ci_high": hi, "model": mb, "base": bb,
                     "layer": top_layer}


def _drift_finding(drift: pd.DataFrame) -> Finding:
    wd = drift[drift["metric"] == "weight_distance"]
    cka = drift[drift["metric"] == "cka"].set_index("layer")["value"]
    dcka = drift[drift["metric"] == "cka_debiased"].set_index("layer")["value"]
    rel = drift[drift["metric"] == "weight_distance_rel"].set_index("layer")["value"]
    max_wd = float(wd["value"].max()) if len(wd) else math.nan
    ev = {"cka_by_layer": cka.to_dict(), "cka_debiased_by_layer": dcka.to_dict(),
          "weight_distance_rel_by_layer": rel.to_dict()}
    if len(wd) and max_wd == 0.0:
        return Finding("drift", "ok", "No drift",
                       f"The weights equal the base's at every layer (weight distance 0) and the lowest linear CKA "
                       f"over the layers is {cka.min():.3f} (1 = identical representations).", max_wd, 0.0,
                       "exact: identical weights have weight distance 0", ev)
    low = int(cka.idxmin()) if len(cka) else None
    high = int(cka.idxmax()) if len(cka) else None
    parts = []
    if low is not None:
        parts.append(f"representations moved most at layer {low} (linear CKA with the base {cka[low]:.3f}"
                     + (f", debiased {dcka[low]:.3f}" if low in dcka else "") + f") and least at layer {high} "
                     f"(CKA {cka[high]:.3f})")
    if len(rel):
        top = int(rel.idxmax())
        parts.append(f"the largest relative weight change is at layer {top} ({rel[top]:.2%} of the base norm)")
    return Finding("drift", "info", "Drift from the base",
                   "Descriptive: " + "; ".join(parts) + ". Fine-tuning usually moves the top layers most; CKA has no "
                   "accepted cut-off, so no verdict is drawn.", float(cka.min()) if len(cka) else None, None,
                   "descriptive, no threshold (there is no established CKA cut-off for 'too much' drift)", ev)


def _calibration_finding(probs: np.ndarray, y: np.ndarray, n_bins: int, seed: int) -> Finding:
    from ..analysis.evaluation import expected_calibration_error

    ece = expected_calibration_error(probs, y, n_bins=n_bins)
    threshold = ece_null_threshold(probs, n_bins=n_bins, seed=seed)
    conf = float(probs.max(1).mean())
    acc = float(np.mean(probs.argmax(1) == y))
    source = (f"the 95th percentile of the ECE that a perfectly calibrated model with these confidences shows on "
              f"{len(y)} examples by chance (consistency resampling, Broecker & Smith 2007; {n_bins} equal-width "
              "bins)")
    ev = {"ece": ece, "mean_confidence": conf, "accuracy": acc, "n": len(y), "n_bins": n_bins}
    if ece > threshold:
        kind = "over-confident" if conf > acc else "under-confident"
        return Finding("calibration", "warning", "Miscalibrated",
                       f"The model is {kind}: expected calibration error {ece:.3f} on held-out data exceeds "
                       f"{threshold:.3f}, what chance alone would give a calibrated model (mean confidence "
                       f"{conf:.3f} vs accuracy {acc:.3f}). Consider temperature scaling on held-out data.", ece,
                       threshold, source, ev)
    return Finding("calibration", "ok", "Calibration",
                   f"Expected calibration error {ece:.3f} is within what chance gives a calibrated model ("
                   f"<= {threshold:.3f}); mean confidence {conf:.3f} vs accuracy {acc:.3f}.", ece, threshold, source,
                   ev)


def _read_track_record(source: Any) -> pd.DataFrame | None:
    """diagnose's ``track_record=``: the packaged table, a CSV / frame, or None."""
    if source is None:
        return None
    from .track_record import load_track_record

    return load_track_record(None if isinstance(source, str) and source == "packaged" else source)


def _with_track_record(finding: Finding, record: pd.DataFrame) -> Finding:
    """The finding with its track record attached (evidence and a sentence); a warning whose record does not beat
    chance becomes a description, one whose record points the other way is corrected (both severity ``info``)."""
    from .track_record import track_record_sentence

    rows = record[record["finding"] == finding.key]
    if not len(rows) or finding.value is None:
        return finding
    row = rows.iloc[0]
    sentence = track_record_sentence(row)
    evidence = {**finding.evidence, "track_record": {k: json_safe(row[k]) for k in row.index}}
    verdict = str(row["verdict"])
    if finding.severity != "warning" or verdict == "predictive":
        return Finding(finding.key, finding.severity, finding.title, f"{finding.message} {sentence}", finding.value,
                       finding.threshold, finding.threshold_source, evidence)
    first = re.split(r"(?<=[.)])\s+(?=[A-Z])", finding.message, maxsplit=1)[0]
    if verdict == "opposite":
        why = ("On that population the number pointed the opposite way from a sign of over-fitting, so it is not read "
               "as one here: treat it as a description of this model.")
        title = f"{finding.title} (corrected: not a sign of over-fitting here)"
    else:
        why = "That is not better than chance, so this is reported as a description, not as a warning."
        title = f"{finding.title} (descriptive)"
    return Finding(finding.key, "info", title, f"Descriptive: {first} {sentence} {why}", finding.value,
                   finding.threshold, finding.threshold_source + "; worded by its track record", evidence)


# ------------------------------------------------------------------------------------------------ steps
@dataclass
class _Pair:
    """The fine-tuned model and its base, loaded, with one tokenizer each (checked to agree)."""

    net: nn.Module
    tok: Any
    model_label: str
    base_net: nn.Module
    base_tok: Any
    base_label: str
    base_source: str
    num_labels: int


def _check_same_width(net: nn.Module, base_net: nn.Module, model_label: str, base_label: str, source: str) -> None:
    """Refuse a base whose hidden size differs: it cannot be the model's base, and CKA across widths would mislead."""
    widths = [getattr(getattr(m, "config", None), "hidden_size", None) for m in (net, base_net)]
    if all(isinstance(w, int) for w in widths) and widths[0] != widths[1]:
        raise ValueError(f"the base model {base_label!r} ({source}) has hidden size {widths[1]}, but the model "
                         f"{model_label!r} has {widths[0]}: it cannot be the model's pre-trained base. Pass the base "
                         "the model was fine-tuned from (--base / base_model=).")


def _load_pair(model: Any, base_model: Any, tokenizer: Any, *, held: Any, max_length: int) -> _Pair:
    """Load the model and its base (inferred from the checkpoint config when not given); refuse a missing or a
    different tokenizer."""
    from ..analysis.drift import check_same_tokenizer

    base_source = "given as base_model"
    if base_model is None:
        target = model[0] if isinstance(model, tuple | list) else model
        base_name, field_name = infer_base_model(target)
        base_model = base_name
        base_source = f"inferred from the {field_name!r} field of the checkpoint config"
    net, tok, model_label = _load_model(model, tokenizer)
    num_labels = int(getattr(getattr(net, "config", None), "num_labels", 2) or 2)
    base_net, base_tok, base_label = _load_base(base_model, source=base_source, num_labels=num_labels,
                                                tokenizer=tok)
    if tok is None:
        tok = base_tok
    if base_tok is None:
        base_tok = tok
    if tok is None:
        raise ValueError("diagnose needs a tokenizer: pass tokenizer=..., or a checkpoint folder that holds one.")
    check_same_tokenizer(tok, base_tok, names=("the model", "the base model"), texts=held.texts[:32],
                         max_length=max_length)
    _check_same_width(net, base_net, model_label, base_label, base_source)
    return _Pair(net, tok, model_label, base_net, base_tok, base_label, base_source, num_labels)


def _split_metrics(pair: _Pair, train_c: Any, held_c: Any, *, n_bins: int, batch_size: int, max_length: int,
                   progress: bool) -> tuple[pd.DataFrame, np.ndarray | None, np.ndarray | None]:
    """The model's predicted probabilities on both splits and its metrics (``split, metric, value``)."""
    from ..analysis.evaluation import classification_metrics, predict_proba

    def probs_of(ds: Any) -> np.ndarray | None:
        if ds is None:
            return None
        return predict_proba(pair.net, pair.tok, ds.texts, batch_size=batch_size, max_length=max_length,
                             progress=progress)

    train_p, held_p = probs_of(train_c), probs_of(held_c)
    metric_rows = []
    for split, ds, p in (("train", train_c, train_p), ("held_out", held_c, held_p)):
        if ds is not None and p is not None:
            for name, value in classification_metrics(p, ds.labels, n_bins=n_bins).items():
                metric_rows.append({"split": split, "metric": name, "value": float(value)})
    return pd.DataFrame(metric_rows, columns=["split", "metric", "value"]), train_p, held_p


def _probe_pair(pair: _Pair, probe_texts: list[str], *, scale: float, draws: int, batch_size: int, max_length: int,
                seed: int, progress: bool) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, int]:
    """The stability profiles of model and base (noise at the embeddings) and their per-sentence top-layer change:
    ``(profile, model_top, base_top, top_layer)``."""
    from ..core.probe import StabilityProbe

    probe = StabilityProbe("gaussian", scale=scale, injection_layers=0, n_draws=draws,
                           batch_size=batch_size, max_length=max_length, seed=seed, progress=progress)
    prof_model = probe.run(pair.net, probe_texts, tokenizer=pair.tok, label="model")
    per_model = probe.per_example_
    prof_base = probe.run(pair.base_net, probe_texts, tokenizer=pair.base_tok, label="base")
    per_base = probe.per_example_
    top = int(per_model["layer"].max())
    model_top = per_model[per_model["layer"] == top].sort_values("example")["change_rel"].to_numpy()
    base_top = per_base[per_base["layer"] == per_base["layer"].max()].sort_values("example")["change_rel"].to_numpy()
    return pd.concat([prof_model, prof_base], ignore_index=True), model_top, base_top, top


def _drift_of(pair: _Pair, drift_texts: list[str], *, batch_size: int, max_length: int) -> pd.DataFrame:
    """Drift of the model from its base, per layer."""
    from ..analysis.drift import representation_drift

    metrics_wanted = None if len(drift_texts) >= 4 else ["cka", "cosine_drift_token", "cosine_drift_sentence",
                                                         "weight_distance", "weight_distance_rel"]
    drift = representation_drift((pair.base_net, pair.base_tok), (pair.net, pair.tok), drift_texts,
                                 names=("base", "model"), metrics=metrics_wanted, batch_size=batch_size,
                                 max_length=max_length)
    return drift


def _refuse_self_base(pair: _Pair) -> None:
    """Refuse, before any work, an inferred base whose shared weights all equal the model's: the checkpoint's config
    then points at the checkpoint itself (or at a copy of it), not at its pre-trained base."""
    import torch

    if not pair.base_source.startswith("inferred") or pair.base_net is pair.net:
        return
    mine = dict(pair.net.named_parameters())
    shared = [(p, mine[name]) for name, p in pair.base_net.named_parameters()
              if name in mine and mine[name].shape == p.shape]
    if shared and all(torch.equal(a.detach().cpu(), b.detach().cpu()) for a, b in shared):
        raise ValueError(
            f"The inferred base model {pair.base_label!r} ({pair.base_source}) has exactly the weights of the model, "
            "so the checkpoint's config points at the checkpoint itself rather than at its pre-trained base. Pass "
            "base_model= (--base) explicitly."
        )


# ------------------------------------------------------------------------------------------------ main
def diagnose(
    model: Any,
    base_model: Any = None,
    data: Any = None,
    *,
    tokenizer: Any = None,
    held_out: Any = None,
    text_column: str = "text",
    label_column: str = "label",
    split_column: str = "split",
    max_examples: int | None = 2000,
    probe_n: int = 64,
    probe_draws: int = 4,
    probe_scale: float = 0.05,
    stability_margin: float = 1.2,
    n_drift: int = 512,
    n_bins: int = 15,
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 0,
    progress: bool = False,
    label_map: Mapping[Any, Any] | None = None,
    encoding: str | None = None,
    n_probe: None = None,
    track_record: str | os.PathLike[str] | pd.DataFrame | None = "packaged",
) -> Diagnosis:
    """Diagnose a fine-tuned model against its pre-trained base on labelled data.

    Parameters
    ----------
    model : str, path, nn.Module or (nn.Module, tokenizer)
        The fine-tuned model: a checkpoint folder (with config.json), a Hugging Face id, or a model object.
    base_model : str, path, nn.Module or (nn.Module, tokenizer), optional
        The pre-trained base. Default: read from the checkpoint's config (``base_model``, else ``_name_or_path``).
    data : CSV/TSV path, DataFrame, TextDataset, or mapping {'train': ..., 'held_out'/'validation'/'test': ...}
        Labelled examples. The train / held-out split comes from ``held_out=`` (then ``data`` is the training
        set), from the mapping's keys, or from a ``split_column`` with values ``train`` and
        ``validation``/``test``/``held_out``. Without a split, all data is held-out and the gap is not measured.
    tokenizer : tokenizer, optional
        Default: the checkpoint's own tokenizer, else the base's.
    held_out : same forms as ``data``, optional
    text_column, label_column, split_column : str
    max_examples : int or None, default=2000
        At most this many examples per split are evaluated (a stratified, seeded subsample).
    probe_n : int, default=64
        Held-out sentences for the stability probe, a seeded sample stratified by label (the name ``compare`` and
        ``ExperimentConfig`` use; the old ``n_probe`` is refused with a message naming it).
    probe_draws : int, default=4
        Noise draws per sentence.
    probe_scale : float, default=0.05
        Relative noise scale (the paper's 5%).
    stability_margin : float, default=1.2
        The top-layer sensitivity ratio (model / base) from which a reliable increase is flagged as a warning. A
        materiality convention of this toolkit (20% more change than the base), not a value from the paper; below
        it a reliable increase is reported as a note.
    n_drift : int, default=512
        Held-out sentences for the drift measures (sampled as the probe's are).
    n_bins : int, default=15
        Bins of the expected calibration error.
    batch_size, max_length : int
    seed : int, default=0
        Seeds the probe's noise, the subsamples and the resampling.
    progress : bool, default=False
    label_map : mapping, optional
        Label value -> class id or class name, applied to every split first (as in ``compare``).
    encoding : str, optional
        The files' text encoding; default UTF-8, strictly (other bytes are refused, never replaced).
    track_record : 'packaged', path, DataFrame or None, default='packaged'
        Each finding's track record on a population of runs (:mod:`lnsr_viz.experiments.track_record`; the
        packaged ``lnsr_viz/data/track_record.csv`` by default). Every finding it covers gets a sentence saying how
        well its number predicted over-fitting there; a warning whose record does not beat chance is worded as a
        description (severity ``info``), and one that pointed the opposite way is corrected. None: no track record.

    String labels are matched to the model's classes by name when its config names them (``id2label``, as
    :func:`save_checkpoint` writes it); otherwise both splits take the training split's classes, numbered in
    sorted order, and a warning says so, since the model's own order cannot be checked then.

    Returns
    -------
    Diagnosis

    Raises
    ------
    ValueError
        A checkpoint folder without config.json; a base that cannot be inferred; different tokenizers or layer
        counts of model and base; labels outside the model's classes.
    OSError
        The base cannot be found offline.
    """
    owner = "diagnose"
    if n_probe is not None:
        raise TypeError("diagnose: n_probe was renamed probe_n (the name compare and ExperimentConfig use); "
                        f"pass probe_n={n_probe!r}.")
    record = _read_track_record(track_record)  # read (and checked) before any work
    probe_n = check_positive_int("probe_n", probe_n, owner=owner)
    n_drift = check_positive_int("n_drift", n_drift, owner=owner)
    probe_scale = float(check_number("probe_scale", probe_scale, owner=owner, low=0.0, low_closed=False))
    stability_margin = float(check_number("stability_margin", stability_margin, owner=owner, low=1.0))
    if max_examples is not None:
        max_examples = check_positive_int("max_examples", max_examples, owner=owner)
    train, held, split_how = _split_data(data, held_out, text_column, label_column, split_column,
                                         label_map=label_map, encoding=encoding)
    if train is not None:  # one set of classes for both splits (each file alone would number its own labels)
        from ..data.text import training_classes

        train, held = _in_classes(train, held, training_classes(train))

    pair = _load_pair(model, base_model, tokenizer, held=held, max_length=max_length)
    _refuse_self_base(pair)
    train, held = _in_model_classes(train, held, pair.net)
    num_labels = pair.num_labels
    for ds in (train, held):
        if ds is not None and int(ds.labels.max()) >= num_labels:
            raise ValueError(f"the data has label {int(ds.labels.max())} but the model has num_labels={num_labels}; "
                             f"check label_column={label_column!r} (labels must be class ids 0..{num_labels - 1}).")
    train_c, held_c = _cap(train, max_examples, seed), _cap(held, max_examples, seed)
    metrics, train_p, held_p = _split_metrics(pair, train_c, held_c, n_bins=n_bins, batch_size=batch_size,
                                              max_length=max_length, progress=progress)
    from ..data.text import sample_texts

    # a seeded, stratified sample: a file's first rows are often one class or one topic
    probe_texts, _ = sample_texts(held_c, probe_n, seed=seed)
    profile, model_top, base_top, top = _probe_pair(pair, probe_texts, scale=probe_scale, draws=probe_draws,
                                                    batch_size=batch_size, max_length=max_length, seed=seed,
                                                    progress=progress)
    drift_texts, _ = sample_texts(held_c, n_drift, seed=seed)
    drift = _drift_of(pair, drift_texts, batch_size=batch_size, max_length=max_length)
    stab, stab_summary = _stability_finding(model_top, base_top, top_layer=top, scale=probe_scale, seed=seed,
                                            margin=stability_margin)
    findings = [
        _gap_finding(train_p, None if train_c is None else train_c.labels, held_p, held_c.labels),
        _loss_finding(train_p, None if train_c is None else train_c.labels, held_p, held_c.labels),
        stab,
        _drift_finding(drift),
        _calibration_finding(held_p, held_c.labels, n_bins, seed),
    ]
    findings = [f if record is None else _with_track_record(f, record) for f in findings]
    settings = {
        "model": pair.model_label, "base_model": pair.base_label, "base_source": pair.base_source, "split": split_how,
        "n_train": 0 if train_c is None else len(train_c), "n_held_out": len(held_c),
        "n_train_total": 0 if train is None else len(train), "n_held_out_total": len(held),
        "max_examples": max_examples, "probe": {"noise": "gaussian", "scale": probe_scale, "scale_kind": "relative",
                                                "injection_layer": 0, "n_sentences": len(probe_texts),
                                                "n_draws": probe_draws},
        "stability_margin": stability_margin, "n_drift_sentences": len(drift_texts), "n_bins": n_bins, "seed": seed,
        "max_length": max_length,
        "stability_top_layer": stab_summary,
    }
    return Diagnosis(findings=findings, metrics=metrics, profile=profile, drift=drift,
                     calibration=_reliability(held_p, held_c.labels, n_bins), settings=settings)


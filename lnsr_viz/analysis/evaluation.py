"""Predictions and per-domain classification metrics.

Two layers, kept apart on purpose:

* **Pure metric functions** on numpy arrays (``probs`` of shape ``(n, C)`` whose rows sum to 1, ``labels`` of
  shape ``(n,)`` with class indices in ``[0, C)``): :func:`accuracy`, :func:`macro_f1`, :func:`nll`,
  :func:`expected_calibration_error`, :func:`roc_auc`, :func:`label_balance` and the bundle
  :func:`classification_metrics`. Accuracy, macro-F1, log-loss and ROC AUC are ``sklearn.metrics``
  (``accuracy_score``, ``f1_score(average="macro")``, ``log_loss``, ``roc_auc_score``) behind our input checks and
  conventions (clipping, the NaN of an undefined AUC); the expected calibration error is ours, as scikit-learn has
  none. They need no model, so they are cheap to test against hand-worked values.
* **Model-facing helpers**: :func:`predict_proba` runs a Hugging Face style sequence classifier over a list of
  texts, and :func:`evaluate` turns a mapping ``{domain: dataset}`` into the tidy metrics table of
  ``docs/architecture.md`` (columns ``domain, metric, value``).

Examples
--------
>>> import numpy as np
>>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
>>> labels = np.array([0, 1, 1, 0])
>>> float(accuracy(probs, labels))
0.5
>>> round(expected_calibration_error(probs, labels, n_bins=2), 3)
0.25
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

from ..utils.validation import check_positive_int

__all__ = [
    "METRIC_NAMES",
    "accuracy",
    "macro_f1",
    "nll",
    "expected_calibration_error",
    "roc_auc",
    "label_balance",
    "classification_metrics",
    "predict_proba",
    "evaluate",
]

#: Order of the rows that :func:`evaluate` writes for each domain (and keys of :func:`classification_metrics`).
METRIC_NAMES: tuple[str, ...] = ("accuracy", "macro_f1", "nll", "ece", "roc_auc", "positive_rate", "n")

#: Probabilities are clipped to ``[_NLL_EPS, 1]`` before the log so that one confident mistake gives a large but
#: finite loss (``-log(1e-12) ~ 27.6``) instead of ``inf``.
_NLL_EPS = 1e-12

#: Tolerance on ``sum(probs[i]) == 1``; generous enough for float32 softmax output.
_ROW_SUM_ATOL = 1e-3


# --------------------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------------------
def _check_probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(probs, labels)`` as float64 ``(n, C)`` and int64 ``(n,)`` arrays, or raise a ``ValueError``.

    Every message says what is wrong and how to fix it, because these functions are usually fed the output of
    someone else's code (logits instead of probabilities, string labels, a transposed array).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(
            f"probs must be a 2-D array of shape (n_examples, n_classes); got shape {p.shape}. "
            "For a binary classifier that gives one positive-class probability per example, "
            "pass np.column_stack([1 - p, p])."
        )
    if p.shape[0] == 0:
        raise ValueError("probs has no rows (n_examples=0); metrics need at least one example.")
    if p.shape[1] == 0:
        raise ValueError("probs has no columns (n_classes=0); pass one column per class.")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values; check the model output before computing metrics.")
    if p.min() < 0:
        raise ValueError(
            f"probs must be non-negative; got a minimum of {p.min():.4g}. "
            "If these are logits, apply a softmax first (scipy.special.softmax(logits, axis=1))."
        )
    sums = p.sum(axis=1)
    if not np.allclose(sums, 1.0, rtol=0.0, atol=_ROW_SUM_ATOL):
        raise ValueError(
            f"Each row of probs must sum to 1 (tolerance {_ROW_SUM_ATOL}); got row sums from {sums.min():.4g} "
            f"to {sums.max():.4g}. If these are logits, apply a softmax first (scipy.special.softmax(logits, axis=1))."
        )

    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(
            f"labels must be a 1-D array of class indices; got shape {y.shape}. "
            "If you have one-hot labels, pass labels.argmax(axis=1)."
        )
    if y.shape[0] != p.shape[0]:
        raise ValueError(
            f"probs and labels must have the same number of examples; got {p.shape[0]} rows of probs "
            f"and {y.shape[0]} labels. Check that both come from the same dataset split."
        )
    if y.dtype.kind == "b" or y.dtype.kind not in "iuf":
        raise ValueError(
            f"labels must be integer class indices in [0, {p.shape[1]}); got dtype {y.dtype}. "
            "Map your labels to 0..n_classes-1 first (e.g. with pandas.factorize)."
        )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(
                "labels must be integer class indices; got non-integer float values. "
                "Map your labels to 0..n_classes-1 first."
            )
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= p.shape[1])
    if bad.any():
        shown = sorted(set(y[bad].tolist()))[:5]
        raise ValueError(
            f"labels must be class indices in [0, n_classes={p.shape[1]}); got out-of-range values {shown}. "
            "Map your labels to 0..n_classes-1, or check that probs has one column per class."
        )
    return p, y


def _check_labels(labels: Any) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty 1-D array of class indices; got shape {y.shape}.")
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(y == np.round(y))):
        raise ValueError(
            f"labels must be integer class indices; got dtype {y.dtype}. Map your labels to 0..n_classes-1 first."
        )
    return y.astype(np.int64)


# --------------------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------------------
def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of examples whose arg-max class equals the label.

    Parameters
    ----------
    probs : ndarray of shape (n, C)
        Class probabilities, rows summing to 1.
    labels : ndarray of shape (n,)
        Class indices in ``[0, C)``.
    """
    p, y = _check_probs_labels(probs, labels)
    return float(accuracy_score(y, p.argmax(axis=1)))


def macro_f1(probs: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 of the arg-max predictions.

    The mean runs over the classes that occur in the labels or in the predictions (scikit-learn's
    ``f1_score(average="macro")`` convention), so a class that neither occurs nor is predicted does not drag the
    score to zero. Per class, ``F1 = 2 TP / (2 TP + FP + FN)``.
    """
    p, y = _check_probs_labels(probs, labels)
    # labels=None: sklearn averages over the union of the classes in y and in the predictions, as documented above
    return float(f1_score(y, p.argmax(axis=1), average="macro"))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class, ``-mean(log p[i, y_i])``.

    Probabilities are clipped to ``[1e-12, 1]`` first, so a confidently wrong prediction costs at most
    ``-log(1e-12) ~ 27.6`` nats instead of making the mean infinite (``sklearn.metrics.log_loss`` alone clips at the
    float64 machine epsilon, ~36 nats). The rows are not renormalised, so float32 softmax output counts as it is.
    """
    p, y = _check_probs_labels(probs, labels)
    clipped = np.clip(p, _NLL_EPS, 1.0)
    if clipped.shape[1] == 1:  # log_loss needs two labels; a zero column adds nothing (0 * log(...) is 0)
        clipped = np.column_stack([clipped, np.zeros(len(y))])
    with warnings.catch_warnings():
        # our row-sum tolerance (_ROW_SUM_ATOL) is wider than log_loss's; the check above already ran
        warnings.filterwarnings("ignore", message="The y_prob values do not sum to one", category=UserWarning)
        return float(log_loss(y, clipped, labels=np.arange(clipped.shape[1])))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins (Guo et al., 2017).

    The confidence of an example is its top-class probability. Examples are put into ``n_bins`` equal-width bins
    ``(0, 1/B], (1/B, 2/B], ..., ((B-1)/B, 1]``; the ECE is ``sum_b (n_b / n) * |acc_b - conf_b|`` where ``acc_b``
    is the accuracy and ``conf_b`` the mean confidence of bin ``b``. 0 means perfectly calibrated.

    Parameters
    ----------
    probs : ndarray of shape (n, C)
    labels : ndarray of shape (n,)
    n_bins : int, default=15
        Number of bins. Few bins hide miscalibration that cancels within a bin; many bins make the estimate noisy
        on small test sets.
    """
    n_bins = check_positive_int("n_bins", n_bins, owner="expected_calibration_error")
    p, y = _check_probs_labels(probs, labels)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    # searchsorted(side="left") counts the inner edges strictly below conf, i.e. bins are (lo, hi].
    bins = np.searchsorted(inner_edges, conf, side="left")
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    # sum_b (n_b/n) |acc_b - conf_b| = sum_b |acc_sum_b - conf_sum_b| / n  (empty bins contribute 0)
    return float(np.sum(np.abs(acc_sum - conf_sum)) / count.sum())


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of one score column against a boolean target (ties count one half); both classes must occur."""
    return float(roc_auc_score(positive, scores))


def roc_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve.

    * Two classes: ``sklearn.metrics.roc_auc_score(labels == 1, probs[:, 1])``, the AUC of the positive-class
      probability (tied scores count one half, as in the Mann-Whitney U).
    * More classes: one-vs-rest AUC of ``probs[:, c]`` for each class, averaged without weights (macro), as
      ``roc_auc_score(multi_class="ovr", average="macro")`` does; but classes with no positive or no negative
      example are left out of the mean, with a warning, where scikit-learn would raise.

    When no class can be scored (e.g. every label is the same) the AUC is undefined: the function warns and
    returns NaN rather than raising, so one degenerate evaluation domain does not crash a whole sweep.
    """
    p, y = _check_probs_labels(probs, labels)
    n_classes = p.shape[1]
    present = np.unique(y)
    if present.size < 2:
        warnings.warn(
            f"roc_auc is undefined when only one class is present in labels (found only class {present.tolist()} "
            f"in {y.size} examples); returning NaN. Evaluate on a set that contains both classes.",
            RuntimeWarning,
            stacklevel=2,
        )
        return math.nan
    if n_classes == 2:
        return _binary_auc(p[:, 1], y == 1)
    scored = [c for c in range(n_classes) if 0 < np.sum(y == c) < y.size]
    skipped = sorted(set(range(n_classes)) - set(scored))
    if skipped:
        warnings.warn(
            f"roc_auc: classes {skipped} have no positive examples in labels, so their one-vs-rest AUC is undefined; "
            f"the macro average runs over classes {scored} only.",
            RuntimeWarning,
            stacklevel=2,
        )
    return float(np.mean([_binary_auc(p[:, c], y == c) for c in scored]))


def label_balance(labels: np.ndarray, *, positive: int = 1) -> float:
    """Fraction of labels equal to ``positive`` (the positive rate of a binary task).

    Reported next to accuracy because an accuracy of 0.80 means little on a domain that is 80 % positive.
    """
    y = _check_labels(labels)
    return float(np.mean(y == positive))


def classification_metrics(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> dict[str, float]:
    """All metrics of one prediction set, as ``{name: value}`` in the order of :data:`METRIC_NAMES`.

    Keys: ``accuracy, macro_f1, nll, ece, roc_auc, positive_rate, n`` (``n`` is the number of examples, as a
    float so that every value fits the ``value`` column of the tidy table).
    """
    p, y = _check_probs_labels(probs, labels)
    return {
        "accuracy": accuracy(p, y),
        "macro_f1": macro_f1(p, y),
        "nll": nll(p, y),
        "ece": expected_calibration_error(p, y, n_bins=n_bins),
        "roc_auc": roc_auc(p, y),
        "positive_rate": label_balance(y),
        "n": float(y.size),
    }


# --------------------------------------------------------------------------------------------------------------
# model-facing helpers
# --------------------------------------------------------------------------------------------------------------
def predict_proba(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 128,
    device: Any = None,
    progress: bool = False,
    precision: str = "fp32",
) -> np.ndarray:
    """Class probabilities of a sequence classifier for a list of texts.

    The model runs in eval mode (dropout off) under ``torch.no_grad()``. Texts are processed in batches sorted by
    length, so each batch is padded only to its own longest text; the rows of the result are put back in the
    order of ``texts``. The model's previous train/eval mode (and, if ``device`` moved it, its device) is
    restored afterwards, even when the forward pass raises.

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(**tokenizer(batch, ...))``; its output must have ``.logits`` of shape ``(batch, C)``.
    tokenizer : callable
        A Hugging Face tokenizer (called with ``padding=True, truncation=True, max_length=max_length,
        return_tensors="pt"``).
    texts : sequence of str
    batch_size : int, default=64
    max_length : int, default=128
        Longer texts are truncated to this many tokens.
    device : str or torch.device, optional
        Where to run. ``None`` uses the device of the model's parameters. If given and different, the model is
        moved there for the call and moved back afterwards.
    progress : bool, default=False
        Show a ``tqdm.auto`` progress bar over batches.
    precision : {'fp32', 'bf16'}, default='fp32'
        'bf16' runs the forward passes under bfloat16 autocast (checked against the hardware before any work, see
        :mod:`lnsr_viz.utils.precision`); the softmax is always taken in float64.

    Returns
    -------
    ndarray of shape (len(texts), C), float64
        Softmax of the logits; each row sums to 1.
    """
    import torch

    batch_size = check_positive_int("batch_size", batch_size, owner="predict_proba")
    max_length = check_positive_int("max_length", max_length, owner="predict_proba")
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a single string; wrap it in a list: [text].")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; predict_proba needs at least one text.")
    not_str = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if not_str:
        i = not_str[0]
        raise ValueError(
            f"texts must all be strings; item {i} is {type(texts[i]).__name__} ({texts[i]!r}). "
            "Convert missing values to '' or drop them first."
        )

    from ..core.inputs import eval_mode, model_device, to_device, tokenize
    from ..utils.precision import autocast, require_precision

    original_device = model_device(model)
    target = original_device if device is None else torch.device(device)
    precision = require_precision(precision, target, owner="predict_proba")

    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    order = np.argsort(-lengths, kind="stable")  # longest first: an out-of-memory error shows up at once
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches_iter = tqdm(batches, desc="predict", unit="batch")
    else:
        batches_iter = batches

    out: np.ndarray | None = None
    moved = target != original_device
    with eval_mode(model):
        try:
            if moved:
                model.to(target)
            with torch.no_grad():
                for idx in batches_iter:
                    enc = tokenize(tokenizer, [texts[i] for i in idx], max_length=max_length, model=model)
                    with autocast(precision, target):
                        logits = model(**to_device(enc, target)).logits
                    if logits.ndim != 2 or logits.shape[0] != len(idx):
                        raise ValueError(
                            f"model(...).logits must have shape (batch, n_classes); got {tuple(logits.shape)} for "
                            f"a batch of {len(idx)} texts. predict_proba expects a sequence-classification model."
                        )
                    probs = torch.softmax(logits.detach().to(torch.float64), dim=-1).cpu().numpy()
                    if out is None:
                        out = np.empty((len(texts), probs.shape[1]), dtype=np.float64)
                    out[idx] = probs
        finally:
            if moved:
                model.to(original_device)
    assert out is not None  # texts is non-empty, so at least one batch ran
    return out


def evaluate(
    model: Any,
    tokenizer: Any,
    datasets: Mapping[str, Any],
    *,
    batch_size: int = 64,
    max_length: int = 128,
    device: Any = None,
    progress: bool = False,
    n_bins: int = 15,
    precision: str = "fp32",
) -> pd.DataFrame:
    """Evaluate one model on several domains and return the tidy metrics table.

    Parameters
    ----------
    model, tokenizer
        As for :func:`predict_proba`.
    datasets : mapping of str to dataset
        ``{domain: dataset}``; each dataset needs ``.texts`` (list of str) and ``.labels`` (int array), e.g. a
        :class:`lnsr_viz.data.text.TextDataset`.
    batch_size, max_length, device, progress, precision
        Passed to :func:`predict_proba` (``precision='bf16'``: bfloat16 autocast forward passes; the metrics are
        computed from float64 probabilities either way).
    n_bins : int, default=15
        Bins of the expected calibration error.

    Returns
    -------
    DataFrame
        Columns ``domain, metric, value``: one row per domain and metric, metrics in the order of
        :data:`METRIC_NAMES` (``accuracy, macro_f1, nll, ece, roc_auc, positive_rate, n``).
    """
    if not isinstance(datasets, Mapping):
        raise ValueError(
            f"datasets must be a mapping {{domain name: dataset}}; got {type(datasets).__name__}. "
            "Wrap a single dataset as {'test': dataset}."
        )
    if not datasets:
        raise ValueError("datasets is empty; pass at least one {domain name: dataset}.")
    from ..core.inputs import model_device
    from ..utils.precision import require_precision

    require_precision(precision, device if device is not None else model_device(model), owner="evaluate")
    rows: list[dict[str, Any]] = []
    for domain, ds in datasets.items():
        if not (hasattr(ds, "texts") and hasattr(ds, "labels")):
            raise ValueError(
                f"datasets[{domain!r}] must have .texts and .labels (like lnsr_viz.data.text.TextDataset); "
                f"got {type(ds).__name__}."
            )
        probs = predict_proba(
            model, tokenizer, ds.texts, batch_size=batch_size, max_length=max_length, device=device, progress=progress,
            precision=precision,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                metrics = classification_metrics(probs, np.asarray(ds.labels), n_bins=n_bins)
            except ValueError as exc:
                raise ValueError(f"Cannot score domain {domain!r}: {exc}") from exc
        for w in caught:  # re-issue with the domain named, so the user knows which set is degenerate
            warnings.warn(f"domain {domain!r}: {w.message}", w.category, stacklevel=2)
        rows.extend({"domain": str(domain), "metric": name, "value": float(v)} for name, v in metrics.items())
    return pd.DataFrame(rows, columns=["domain", "metric", "value"])


"""Training data for each task behind one small interface, so the trainer and every method serve both tasks.

:class:`~lnsr_viz.training.loop.FineTuner` only needs, from its data: how many training items there are, a batch of
model inputs *with labels* for some of them, and a score and loss for the per-epoch history. Sequence
classification (``TextDataset``: items are sentences, score = accuracy) and extractive question answering
(``QADataset``: items are the sliding windows of the question/context pairs, score = SQuAD F1 / 100, loss = the span
loss) provide exactly that; the methods (LNSR, its rivals) see only the model's inputs and loss and so work
unchanged for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["ClassificationData", "QAData", "as_task_data"]


class ClassificationData:
    """A labelled text dataset as training data: items are sentences, the score is accuracy."""

    task = "classification"
    score_name = "accuracy"

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.name = dataset.name

    def __len__(self) -> int:
        return len(self.dataset)

    def check(self, model: nn.Module, *, role: str) -> None:
        """Labels must fit the model's head; training data needs two classes."""
        labels = self.dataset.labels
        n_labels = getattr(getattr(model, "config", None), "num_labels", None)
        if n_labels is not None and int(labels.max()) >= n_labels:
            raise ValueError(f"dataset {self.name!r} has label {int(labels.max())} but the model has "
                             f"num_labels={n_labels}; load the model with num_labels={int(labels.max()) + 1}.")
        if role == "train" and len(np.unique(labels)) < 2:
            raise ValueError(f"training data {self.name!r} has only one class ({int(labels[0])}); "
                             "classification needs at least two.")

    def batch(self, tokenizer: Any, rows: Sequence[int], model: nn.Module, max_length: int) -> dict[str, Any]:
        from ..core.inputs import tokenize

        enc = tokenize(tokenizer, [self.dataset.texts[i] for i in rows], max_length=max_length, model=model)
        enc["labels"] = torch.as_tensor(self.dataset.labels[np.asarray(rows)], dtype=torch.long,
                                        device=enc["input_ids"].device)
        return enc

    def evaluate(self, model: nn.Module, tokenizer: Any, *, batch_size: int, max_length: int) -> tuple[float, float]:
        """(accuracy, negative log-likelihood) in eval mode."""
        from ..analysis.evaluation import accuracy, nll, predict_proba

        probs = predict_proba(model, tokenizer, self.dataset.texts, batch_size=batch_size, max_length=max_length)
        return accuracy(probs, self.dataset.labels), nll(probs, self.dataset.labels)

    def lengths(self, tokenizer: Any, max_length: int) -> list[int]:
        """Each sentence's number of tokens after truncation (what length-grouped batching sorts by)."""
        enc = tokenizer(list(self.dataset.texts), truncation=True, max_length=max_length)
        return [len(ids) for ids in enc["input_ids"]]

    def subset(self, rows: Sequence[int]) -> ClassificationData:
        """The same data restricted to ``rows`` (e.g. the fixed sample the training accuracy is measured on)."""
        return ClassificationData(self.dataset.subset(np.asarray(rows), name=self.name))


class QAData:
    """A SQuAD-style dataset as training data: items are sliding windows, the score is F1 / 100.

    Parameters
    ----------
    dataset : QADataset
    stride : int, default=64
        Overlap of consecutive windows (``max_length`` comes from the trainer).
    """

    task = "qa"
    score_name = "f1"

    def __init__(self, dataset: Any, *, stride: int = 64) -> None:
        self.dataset = dataset
        self.name = dataset.name
        self.stride = int(stride)
        self._features: dict[str, Any] | None = None
        self._key: tuple[int, int] | None = None

    def features(self, tokenizer: Any, max_length: int) -> dict[str, Any]:
        from ..data.squad import prepare_features

        key = (id(tokenizer), max_length)
        if self._features is None or self._key != key:
            self._features = prepare_features(self.dataset, tokenizer, max_length=max_length,
                                              stride=min(self.stride, max_length // 2))
            self._key = key
        return self._features

    def __len__(self) -> int:
        if self._features is None:
            raise RuntimeError("QAData needs its features first: call features(tokenizer, max_length).")
        return len(self._features["input_ids"])

    def check(self, model: nn.Module, *, role: str) -> None:
        inner = getattr(model, "module", model)
        if "start_positions" not in __import__("inspect").signature(inner.forward).parameters:
            raise ValueError(f"QA data {self.name!r} needs a question-answering model (start/end logits); load it "
                             "with load_model(..., task='qa').")

    def batch(self, tokenizer: Any, rows: Sequence[int], model: nn.Module, max_length: int) -> dict[str, Any]:
        from ..data.squad import feature_batches

        device = next(model.parameters()).device
        return feature_batches(self.features(tokenizer, max_length), list(rows), device=device, model=model)

    def evaluate(self, model: nn.Module, tokenizer: Any, *, batch_size: int, max_length: int) -> tuple[float, float]:
        """(F1 / 100, mean span loss over windows) in eval mode."""
        from ..analysis.qa_evaluation import predict_spans
        from ..data.squad import squad_metrics

        preds, loss = predict_spans(model, tokenizer, self.dataset, max_length=max_length,
                                    stride=min(self.stride, max_length // 2), batch_size=batch_size)
        return squad_metrics(preds, self.dataset)["f1"] / 100.0, loss

    def lengths(self, tokenizer: Any, max_length: int) -> list[int]:
        """Each window's number of real (unpadded) tokens."""
        return [int(sum(mask)) for mask in self.features(tokenizer, max_length)["attention_mask"]]

    def subset(self, rows: Sequence[int]) -> QAData:
        """QA scores whole questions, not windows: the training score is always measured on all of them."""
        return self


def as_task_data(data: Any, name: str) -> ClassificationData | QAData:
    """Wrap a dataset as training data of its task (QADataset -> QA, anything else -> classification)."""
    from ..data.squad import QADataset

    if isinstance(data, (ClassificationData, QAData)):
        return data
    if isinstance(data, QADataset):
        return QAData(data)
    from ..data.text import as_dataset

    return ClassificationData(as_dataset(data, name=name))

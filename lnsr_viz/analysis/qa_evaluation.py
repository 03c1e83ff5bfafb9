"""Extractive QA evaluation: a model's answer spans over sliding windows, then the official SQuAD metrics.

The data side (features, span decoding, exact match and F1) is :mod:`lnsr_viz.data.squad`; this module runs the
model over the windows in eval mode (:func:`lnsr_viz.core.inputs.eval_mode`) and returns the tidy
``domain, metric, value`` table the run store keeps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.inputs import eval_mode, model_device
from ..data.squad import QADataset, QAExample, feature_batches, postprocess_predictions, prepare_features, squad_metrics

__all__ = ["predict_spans", "evaluate_qa"]


def predict_spans(model: Any, tokenizer: Any, data: QADataset | Sequence[QAExample], *, max_length: int = 192,
                  stride: int = 64, batch_size: int = 32, n_best: int = 20, max_answer_length: int = 30,
                  progress: bool = False) -> tuple[dict[str, str], float]:
    """Predicted answer text per question, and the mean span loss over windows (eval mode, no gradient)."""
    feats = prepare_features(data, tokenizer, max_length=max_length, stride=stride, with_labels=True)
    n = len(feats["input_ids"])
    device = model_device(model)
    width = len(feats["input_ids"][0])
    start = np.full((n, width), -1e4, dtype=np.float32)
    end = np.full((n, width), -1e4, dtype=np.float32)
    losses = []
    with eval_mode(model), torch.no_grad():
        for lo in tqdm(range(0, n, batch_size), desc="predict spans", disable=not progress, leave=False):
            rows = list(range(lo, min(n, lo + batch_size)))
            batch = feature_batches(feats, rows, device=device, model=model)
            out = model(**batch)
            w = out.start_logits.shape[1]
            start[lo:lo + len(rows), :w] = out.start_logits.float().cpu().numpy()
            end[lo:lo + len(rows), :w] = out.end_logits.float().cpu().numpy()
            losses.append(float(out.loss) * len(rows))
    preds = postprocess_predictions(data, feats, start, end, n_best=n_best, max_answer_length=max_answer_length)
    return preds, float(np.sum(losses) / n)


def evaluate_qa(model: Any, tokenizer: Any, datasets: Mapping[str, QADataset], **kwargs: Any) -> pd.DataFrame:
    """Tidy ``domain, metric, value`` table (exact_match, f1 in percent, span loss, n) per evaluation set."""
    rows = []
    for name, data in datasets.items():
        preds, loss = predict_spans(model, tokenizer, data, **kwargs)
        metrics = squad_metrics(preds, data)
        rows += [{"domain": name, "metric": "exact_match", "value": metrics["exact_match"]},
                 {"domain": name, "metric": "f1", "value": metrics["f1"]},
                 {"domain": name, "metric": "span_loss", "value": loss},
                 {"domain": name, "metric": "n", "value": metrics["n"]}]
    return pd.DataFrame(rows, columns=["domain", "metric", "value"])

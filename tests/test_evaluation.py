"""Tests for lnsr_viz.analysis.evaluation.

Covers: every metric against values worked out by hand on tiny arrays (and against scikit-learn where it has the
same metric: macro-F1, ROC AUC with ties and one-vs-rest, log loss); ECE binning; NaN + warning for single-class
ROC AUC; input validation messages; predict_proba's order restoration, eval/no-grad behaviour and mode
restoration (with a fake model and with a tiny real BERT); evaluate's tidy table.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from numpy.testing import assert_allclose
from sklearn.metrics import f1_score, log_loss, roc_auc_score

from lnsr_viz.analysis.evaluation import (
    METRIC_NAMES,
    accuracy,
    classification_metrics,
    evaluate,
    expected_calibration_error,
    label_balance,
    macro_f1,
    nll,
    predict_proba,
    roc_auc,
)

# Four examples: top-class confidences 0.9, 0.8, 0.6, 0.7; arg-max predictions 0, 0, 1, 1; labels 0, 1, 1, 0,
# so the predictions are right, wrong, right, wrong.
PROBS4 = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
LABELS4 = np.array([0, 1, 1, 0])


# ---------------------------------------------------------------------------------------------------- metrics
def test_accuracy_hand():
    assert accuracy(PROBS4, LABELS4) == 0.5


def test_macro_f1_hand_and_sklearn():
    # class 0: TP=1 (ex 0), FP=1 (ex 1), FN=1 (ex 3) -> F1 = 2/(2+1+1) = 0.5; class 1 likewise -> macro 0.5
    assert macro_f1(PROBS4, LABELS4) == pytest.approx(0.5)
    rng = np.random.RandomState(0)
    probs = rng.dirichlet(np.ones(3), size=50)
    labels = rng.randint(0, 3, size=50)
    assert macro_f1(probs, labels) == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))


def test_macro_f1_ignores_class_never_seen_nor_predicted():
    # 3 columns but class 2 never occurs and is never predicted: average over classes {0, 1} only (sklearn rule)
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    assert macro_f1(probs, np.array([0, 1])) == 1.0


def test_nll_hand_and_clipping():
    expected = -(math.log(0.9) + math.log(0.2) + math.log(0.6) + math.log(0.3)) / 4
    assert nll(PROBS4, LABELS4) == pytest.approx(expected, rel=1e-12)
    assert nll(PROBS4, LABELS4) == pytest.approx(log_loss(LABELS4, PROBS4), rel=1e-9)
    # a zero probability on the true class is clipped at 1e-12, so the loss is large but finite
    assert nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(1e-12))


def test_ece_hand_worked():
    # n_bins=2: bins (0, 0.5] and (0.5, 1]. All four confidences fall into the upper bin:
    #   accuracy 2/4 = 0.5, mean confidence (0.9+0.8+0.6+0.7)/4 = 0.75  -> ECE = |0.5 - 0.75| = 0.25
    assert expected_calibration_error(PROBS4, LABELS4, n_bins=2) == pytest.approx(0.25)
    # n_bins=15 (width 1/15): 0.6, 0.7, 0.8, 0.9 land in four different bins, so
    #   ECE = (|1-0.9| + |0-0.8| + |1-0.6| + |0-0.7|) / 4 = (0.1 + 0.8 + 0.4 + 0.7) / 4 = 0.5
    assert expected_calibration_error(PROBS4, LABELS4) == pytest.approx(0.5)


def test_ece_perfect_and_bin_edges():
    # confidence 1.0 and always right -> 0; confidence exactly 0.5 belongs to bin (0, 0.5], not (0.5, 1]
    assert expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])) == 0.0
    probs = np.array([[0.5, 0.5], [0.9, 0.1]])
    labels = np.array([1, 0])  # ex 0: pred 0 (ties -> first), wrong, conf 0.5; ex 1: right, conf 0.9
    # bins (0,0.5], (0.5,1]: bin0 |0 - 0.5| * 1/2 + bin1 |1 - 0.9| * 1/2 = 0.25 + 0.05
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.3)


def test_ece_rejects_bad_n_bins():
    with pytest.raises(ValueError, match="'n_bins' parameter of expected_calibration_error"):
        expected_calibration_error(PROBS4, LABELS4, n_bins=0)


def test_roc_auc_hand():
    # classic example: of the 4 (pos, neg) pairs, 3 are ordered correctly -> 0.75
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    probs = np.column_stack([1 - scores, scores])
    assert roc_auc(probs, np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    # one positive and one negative with the same score: a tie counts one half
    assert roc_auc(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([0, 1])) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn_with_ties(seed):
    rng = np.random.RandomState(seed)
    scores = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], size=40)  # only 5 distinct values: many ties
    labels = rng.randint(0, 2, size=40)
    probs = np.column_stack([1 - scores, scores])
    assert roc_auc(probs, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_multiclass_ovr_matches_sklearn():
    rng = np.random.RandomState(0)
    probs = rng.dirichlet(np.ones(4), size=60).round(2)
    probs /= probs.sum(1, keepdims=True)
    labels = rng.randint(0, 4, size=60)
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert roc_auc(probs, labels) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_single_class_is_nan_with_warning():
    with pytest.warns(RuntimeWarning, match="only one class"):
        value = roc_auc(PROBS4, np.array([1, 1, 1, 1]))
    assert math.isnan(value)


def test_roc_auc_multiclass_missing_class_warns_and_averages_the_rest():
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]])
    labels = np.array([0, 1, 0, 1])
    with pytest.warns(RuntimeWarning, match=r"classes \[2\]"):
        value = roc_auc(probs, labels)
    assert value == pytest.approx(1.0)


def test_label_balance():
    assert label_balance(np.array([1, 0, 1, 1])) == 0.75
    assert label_balance(np.array([2, 0, 2]), positive=2) == pytest.approx(2 / 3)


def test_classification_metrics_keys_and_values():
    m = classification_metrics(PROBS4, LABELS4)
    assert list(m) == list(METRIC_NAMES)
    assert m["accuracy"] == 0.5 and m["positive_rate"] == 0.5 and m["n"] == 4.0
    assert m["ece"] == pytest.approx(0.5)
    # scores: class-1 probabilities 0.1, 0.2, 0.6, 0.7 for labels 0, 1, 1, 0 -> pairs (pos, neg):
    # (0.2 vs 0.1) yes, (0.2 vs 0.7) no, (0.6 vs 0.1) yes, (0.6 vs 0.7) no -> 0.5
    assert m["roc_auc"] == pytest.approx(0.5)
    assert all(isinstance(v, float) for v in m.values())


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.array([0.2, 0.8]), np.array([0, 1]), "2-D array"),
        (np.array([[0.2, 0.9], [0.5, 0.5]]), np.array([0, 1]), "sum to 1.*softmax"),
        (np.array([[2.0, -1.0], [0.5, 0.5]]), np.array([0, 1]), "non-negative"),
        (PROBS4, np.array([0, 1, 1]), "same number of examples; got 4 rows of probs and 3 labels"),
        (PROBS4, np.array([0, 1, 2, 0]), r"\[0, n_classes=2\).*\[2\]"),
        (PROBS4, np.array([0, -1, 1, 0]), "out-of-range values"),
        (PROBS4, np.array(["a", "b", "a", "b"]), "integer class indices"),
        (PROBS4, np.array([[0, 1], [1, 0], [0, 1], [1, 0]]), "one-hot"),
        (np.empty((0, 2)), np.empty(0, dtype=int), "no rows"),
    ],
)
def test_validation_messages(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        accuracy(probs, labels)


def test_float_labels_with_integer_values_are_accepted():
    assert accuracy(PROBS4, LABELS4.astype(float)) == 0.5
    with pytest.raises(ValueError, match="non-integer"):
        accuracy(PROBS4, np.array([0.0, 0.5, 1.0, 0.0]))


# ------------------------------------------------------------------------------------- model-facing helpers
class FakeTokenizer:
    """Encodes each text as its character codes (padded with 0); records the batches it saw."""

    def __init__(self):
        self.batches = []

    def __call__(self, texts, *, padding, truncation, max_length, return_tensors):
        assert padding is True and truncation is True and return_tensors == "pt"
        self.batches.append(list(texts))
        width = min(max(len(t) for t in texts), max_length)
        ids = torch.zeros(len(texts), width, dtype=torch.long)
        mask = torch.zeros(len(texts), width, dtype=torch.long)
        for i, t in enumerate(texts):
            codes = [ord(c) for c in t[:width]]
            ids[i, : len(codes)] = torch.tensor(codes, dtype=torch.long)
            mask[i, : len(codes)] = 1
        return {"input_ids": ids, "attention_mask": mask}


@dataclass
class _Out:
    logits: torch.Tensor


class FakeModel(torch.nn.Module):
    """logits = [0, number of real tokens]: a known answer that depends only on the text itself."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen_training = []
        self.seen_grad = []

    def forward(self, input_ids, attention_mask):
        self.seen_training.append(self.training)
        self.seen_grad.append(torch.is_grad_enabled())
        length = attention_mask.sum(1).to(torch.float32) * self.w
        return _Out(torch.stack([torch.zeros_like(length), length / 4], dim=1))


def _expected(texts):
    z = np.array([len(t) / 4 for t in texts])
    p1 = 1 / (1 + np.exp(-z))
    return np.column_stack([1 - p1, p1])


def test_predict_proba_restores_order_and_mode():
    texts = ["a", "abcdef", "abc", "", "abcdefghij", "ab", "abcd"]
    model, tok = FakeModel(), FakeTokenizer()
    model.train()
    probs = predict_proba(model, tok, texts, batch_size=3)
    assert_allclose(probs, _expected(texts), rtol=0, atol=1e-6)
    assert model.training is True  # previous mode restored
    assert model.seen_training == [False, False, False]  # eval during prediction
    assert model.seen_grad == [False, False, False]  # no autograd graph
    # batches were sorted by length, longest first: the first batch holds the 3 longest texts
    assert tok.batches[0] == ["abcdefghij", "abcdef", "abcd"]
    assert probs.dtype == np.float64 and probs.shape == (7, 2)


def test_predict_proba_keeps_eval_mode_and_restores_mode_after_error():
    model, tok = FakeModel(), FakeTokenizer()
    model.eval()
    predict_proba(model, tok, ["abc"])
    assert model.training is False

    class Boom(FakeModel):
        def forward(self, input_ids, attention_mask):
            raise RuntimeError("boom")

    broken = Boom()
    broken.train()
    with pytest.raises(RuntimeError, match="boom"):
        predict_proba(broken, tok, ["abc"])
    assert broken.training is True


def test_predict_proba_truncates_and_validates():
    model, tok = FakeModel(), FakeTokenizer()
    probs = predict_proba(model, tok, ["abcdefghij"], max_length=4)
    assert_allclose(probs, _expected(["abcd"]), atol=1e-6)
    with pytest.raises(ValueError, match="not a single string"):
        predict_proba(model, tok, "abc")
    with pytest.raises(ValueError, match="item 1 is float"):
        predict_proba(model, tok, ["abc", float("nan")])
    with pytest.raises(ValueError, match="empty"):
        predict_proba(model, tok, [])
    with pytest.raises(ValueError, match="'batch_size' parameter of predict_proba"):
        predict_proba(model, tok, ["abc"], batch_size=0)


def test_predict_proba_progress_bar_runs(capsys):
    probs = predict_proba(FakeModel(), FakeTokenizer(), ["ab", "abc"], batch_size=1, progress=True)
    assert probs.shape == (2, 2)


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "the", "very", "a", "plot"]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
        hidden_dropout_prob=0.5,
    )
    return BertForSequenceClassification(cfg), tok


def test_predict_proba_real_bert_batching_does_not_change_results():
    model, tok = _tiny_bert()
    model.train()  # dropout 0.5: results would be random if predict_proba did not switch to eval mode
    texts = ["good movie", "the very bad movie a plot plot", "bad", "a good plot", "movie"]
    batched = predict_proba(model, tok, texts, batch_size=2)
    one_by_one = np.vstack([predict_proba(model, tok, [t], batch_size=1) for t in texts])
    assert_allclose(batched, one_by_one, rtol=0, atol=1e-5)
    assert_allclose(batched.sum(1), 1.0, atol=1e-12)
    assert model.training is True


@dataclass
class _DS:
    texts: list
    labels: np.ndarray
    name: str = "toy"


def test_evaluate_tidy_table():
    texts = ["a", "abcdefgh", "abc", "abcdefghijkl"]
    datasets = {"in_domain": _DS(texts, np.array([0, 1, 0, 1])), "ood": _DS(texts[:2], np.array([1, 1]))}
    with pytest.warns(RuntimeWarning, match="domain 'ood'.*only one class"):
        df = evaluate(FakeModel(), FakeTokenizer(), datasets, batch_size=2)
    assert list(df.columns) == ["domain", "metric", "value"]
    assert len(df) == 2 * len(METRIC_NAMES)
    assert df["domain"].tolist() == ["in_domain"] * 7 + ["ood"] * 7
    assert df["metric"].tolist() == list(METRIC_NAMES) * 2
    table = df.set_index(["domain", "metric"])["value"]
    expected = classification_metrics(_expected(texts), np.array([0, 1, 0, 1]))
    for name, value in expected.items():
        assert table[("in_domain", name)] == pytest.approx(value)
    assert math.isnan(table[("ood", "roc_auc")])
    assert table[("ood", "positive_rate")] == 1.0 and table[("ood", "n")] == 2.0
    assert pd.api.types.is_float_dtype(df["value"])


def test_evaluate_validation():
    with pytest.raises(ValueError, match="mapping"):
        evaluate(FakeModel(), FakeTokenizer(), [_DS(["a"], np.array([0]))])
    with pytest.raises(ValueError, match=r"datasets\['x'\] must have .texts and .labels"):
        evaluate(FakeModel(), FakeTokenizer(), {"x": object()})
    with pytest.raises(ValueError, match="Cannot score domain 'x'.*2 rows of probs and 3 labels"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate(FakeModel(), FakeTokenizer(), {"x": _DS(["a", "b"], np.array([0, 1, 1]))})

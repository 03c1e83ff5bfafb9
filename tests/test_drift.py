"""Representation drift: linear CKA and debiased CKA against independent Gram-matrix references and their
invariances, cosine drift and weight distances with known answers, the tidy table, and the mismatch errors
(different tokenizers, different depths, too few sentences for debiased CKA)."""

import copy
import time

import numpy as np
import pandas as pd
import pytest
import torch

from lnsr_viz.analysis.drift import (
    DRIFT_COLUMNS,
    DRIFT_METRICS,
    check_same_tokenizer,
    cosine_drift,
    linear_cka,
    mean_pool,
    representation_drift,
    sentence_representations,
)
from lnsr_viz.testing import tiny_model, tiny_tokenizer, toy_sentences


# ------------------------------------------------------------------------------------------------ references
def _gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Straightforward Gram-matrix linear CKA in float64: HSIC(K, L) = tr(K H L H) (Kornblith et al. 2019, eq. 3)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h)

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def _hsic_u(k: np.ndarray, l_: np.ndarray) -> float:
    """Song et al. (2012) unbiased HSIC estimator, written out from the paper's formula."""
    n = k.shape[0]
    kt, lt = k.copy(), l_.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    term = np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2)) \
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return term / (n * (n - 3))


def _gram_cka_debiased(x: np.ndarray, y: np.ndarray) -> float:
    k, l_ = x @ x.T, y @ y.T
    return _hsic_u(k, l_) / np.sqrt(_hsic_u(k, k) * _hsic_u(l_, l_))


def _rng_data(n=60, dx=12, dy=7, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(n, dx)
    y = x[:, :dy] @ rng.randn(dy, dy) + 0.5 * rng.randn(n, dy) + 3.0  # related, shifted
    return x, y


# ------------------------------------------------------------------------------------------------ CKA
@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cka_of_a_representation_with_itself_is_one(debiased, dtype):
    x, _ = _rng_data()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert linear_cka(x, x, debiased=debiased, dtype=dtype) == pytest.approx(1.0, abs=tol)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_is_invariant_to_orthogonal_transforms_isotropic_scaling_and_shifts(debiased):
    x, y = _rng_data()
    q, _ = np.linalg.qr(np.random.RandomState(1).randn(x.shape[1], x.shape[1]))
    moved = 7.5 * x @ q + 2.0
    assert linear_cka(x, moved, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    ref = linear_cka(x, y, debiased=debiased)
    assert linear_cka(moved, y, debiased=debiased) == pytest.approx(ref, abs=1e-12)
    assert linear_cka(x, 0.01 * y, debiased=debiased) == pytest.approx(ref, abs=1e-12)
    # ... but not to anisotropic scaling (a sanity check that the test can fail)
    stretched = x * np.linspace(0.1, 10, x.shape[1])
    assert abs(linear_cka(stretched, y, debiased=debiased) - ref) > 1e-3


@pytest.mark.parametrize("shape", [(60, 12, 7), (20, 50, 30)])  # n > d and n < d
def test_cka_matches_the_gram_matrix_implementation(shape):
    n, dx, dy = shape
    x, y = _rng_data(n, dx, dy, seed=3)
    assert linear_cka(x, y) == pytest.approx(_gram_cka(x, y), rel=1e-10)
    assert linear_cka(x, y, debiased=True) == pytest.approx(_gram_cka_debiased(x, y), rel=1e-8)


def test_debiased_cka_of_independent_data_is_near_zero_while_plain_cka_is_biased():
    rng = np.random.RandomState(5)
    x, y = rng.randn(300, 100), rng.randn(300, 100)
    plain = linear_cka(x, y)
    debiased = linear_cka(x, y, debiased=True)
    assert abs(debiased) < 0.02
    assert plain > 0.2  # plain CKA of unrelated wide data is far from 0: what debiasing is for


def test_cka_in_float32_agrees_with_float64_at_benchmark_size():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, 384, generator=g)
    y = x @ torch.randn(384, 384, generator=g) * 0.1 + torch.randn(10_000, 384, generator=g)
    t0 = time.perf_counter()
    exact = linear_cka(x, y)
    assert time.perf_counter() - t0 < 10  # generous: timing is for benchmarks/bench_drift.py
    assert linear_cka(x, y, dtype=torch.float32) == pytest.approx(exact, abs=1e-5)


def test_debiased_cka_needs_four_examples():
    x = np.random.RandomState(0).randn(3, 5)
    with pytest.raises(ValueError, match=r"debiased CKA needs at least 4 examples.*got n=3.*debiased=False"):
        linear_cka(x, x, debiased=True)
    assert linear_cka(x, x) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 examples"):
        linear_cka(x[:1], x[:1])


def test_cka_input_errors():
    x = np.random.RandomState(0).randn(10, 4)
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(x, x[:9])
    with pytest.raises(ValueError, match=r"2-D array \(n_examples, n_features\)"):
        linear_cka(x[None], x[None])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        linear_cka(bad, x)
    with pytest.warns(RuntimeWarning, match="no variance"):
        assert np.isnan(linear_cka(np.ones((10, 4)), x))


# ------------------------------------------------------------------------------------------------ pooling, cosine
def test_mean_pool_ignores_padding():
    h = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    pooled = mean_pool(h, mask)
    torch.testing.assert_close(pooled[0], h[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], h[1].mean(0))


def test_cosine_drift_known_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 0.0], [2.0, 0.0], [-1.0, -1.0]])
    total, count = cosine_drift(a, b)
    assert count == 3 and total == pytest.approx(0.0 + 1.0 + 2.0)
    total, count = cosine_drift(a, b, mask=torch.tensor([True, False, True]))
    assert count == 2 and total == pytest.approx(2.0)
    assert cosine_drift(a, a) == (0.0, 3)


def test_padded_batches_give_the_same_sentence_representations_as_single_sentences():
    model, tok = tiny_model("bert")
    texts, _ = toy_sentences(6)
    batched = sentence_representations(model, texts, tok, batch_size=6)
    single = sentence_representations(model, texts, tok, batch_size=1)
    for layer in batched:
        torch.testing.assert_close(batched[layer], single[layer], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ the table
def test_a_model_against_itself_shows_zero_drift():
    model, tok = tiny_model("bert", n_layers=3)
    texts, _ = toy_sentences(12)
    df = representation_drift(model, copy.deepcopy(model), texts, tok)
    assert list(df.columns) == list(DRIFT_COLUMNS)
    assert len(df) == 4 * len(DRIFT_METRICS)
    assert set(df["layer"]) == {0, 1, 2, 3} and (df["layer"] == df["layer_b"]).all()
    for metric, (kind, _) in DRIFT_METRICS.items():
        rows = df[df["metric"] == metric]
        assert (rows["kind"] == kind).all()
        expected = 1.0 if kind == "similarity" else 0.0
        np.testing.assert_allclose(rows["value"], expected, atol=1e-9)
    assert set(df["n_of"]) == {"sentences", "tokens", "parameters"}


def test_pretokenized_inputs_give_the_same_drift_as_the_texts():
    model, tok = tiny_model("bert", n_layers=3)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.bert.encoder.layer[0].output.dense.weight.mul_(1.5)
    texts, _ = toy_sentences(10)
    from_texts = representation_drift(model, moved, texts, tok, batch_size=4, max_length=32)
    enc = dict(tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt"))
    enc["start_positions"] = torch.zeros(len(texts), dtype=torch.long)  # labels in the mapping are ignored
    from_ids = representation_drift(model, moved, enc, tok, batch_size=4, max_length=32)
    pd.testing.assert_frame_equal(from_texts, from_ids, atol=1e-6, rtol=1e-6)
    assert from_ids.loc[from_ids.metric == "cka", "value"].iloc[-1] < 1.0


def test_weight_distance_has_the_known_value_and_only_the_changed_block_moves():
    model, tok = tiny_model("bert", n_layers=3)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.bert.encoder.layer[1].attention.self.query.weight[0, 0] += 0.5  # layer 2 = blocks.1
    texts, _ = toy_sentences(12)
    df = representation_drift(model, moved, texts, tok, names=("pre", "ft"))
    wd = df[df["metric"] == "weight_distance"].set_index("layer")["value"]
    assert wd[2] == pytest.approx(0.5, abs=1e-7)
    assert (wd.drop(2) == 0).all()
    norm = float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in model.bert.encoder.layer[1].parameters())))
    rel = df[df["metric"] == "weight_distance_rel"].set_index("layer")["value"]
    assert rel[2] == pytest.approx(0.5 / norm, rel=1e-6)
    # representations below the changed block are untouched, above it they move
    cos = df[df["metric"] == "cosine_drift_token"].set_index("layer")["value"]
    assert cos[0] == 0 and cos[1] == 0 and cos[2] > 0 and cos[3] > 0
    cka = df[df["metric"] == "cka"].set_index("layer")["value"]
    assert cka[1] == pytest.approx(1.0) and cka[3] < 1.0
    assert set(df["model_a"]) == {"pre"} and set(df["model_b"]) == {"ft"}


def test_metrics_subset_and_unknown_metric():
    model, tok = tiny_model("bert")
    texts, _ = toy_sentences(8)
    df = representation_drift(model, model, texts, tok, metrics=["cka", "weight_distance"])
    assert set(df["metric"]) == {"cka", "weight_distance"}
    with pytest.raises(ValueError, match="must be one of"):
        representation_drift(model, model, texts, tok, metrics=["procrustes"])


def test_too_few_sentences_for_debiased_cka():
    model, tok = tiny_model("bert")
    with pytest.raises(ValueError, match=r"debiased CKA needs at least 4 sentences.*got 3"):
        representation_drift(model, model, ["good film", "bad film", "fun"], tok)
    df = representation_drift(model, model, ["good film", "bad film", "fun"], tok, metrics=["cka"])
    assert len(df) == 3


# ------------------------------------------------------------------------------------------------ mismatches
def _other_tokenizer(*, lowercase: bool = True, extra_words: tuple[str, ...] = ("zebra", "quokka")):
    """A word-level tokenizer like tiny_tokenizer's, with some words swapped (or without lower-casing)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = dict(tiny_tokenizer().get_vocab())
    for word, new in zip(("film", "movie"), extra_words):
        vocab[new] = vocab.pop(word)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_input_names=["input_ids", "attention_mask"])


def test_different_tokenizers_are_refused_saying_how_the_vocabularies_differ():
    model, tok = tiny_model("bert")
    other = _other_tokenizer()
    texts, _ = toy_sentences(8)
    with pytest.raises(ValueError, match=r"different tokenizers.*2 only in model_a.*'film'.*2 only in model_b.*"
                                         r"'quokka'.*own pre-trained base"):
        representation_drift((model, tok), (copy.deepcopy(model), other), texts)


def test_same_vocabulary_but_different_tokenization_is_refused():
    tok = tiny_tokenizer()
    cased = _other_tokenizer(lowercase=False, extra_words=("film", "movie"))
    assert cased.get_vocab() == tok.get_vocab()
    check_same_tokenizer(tok, cased, texts=["the film was good"])  # lower-case text: same ids
    with pytest.raises(ValueError, match=r"same vocabulary but tokenize text 0 differently.*lower-casing"):
        check_same_tokenizer(tok, cased, texts=["The Film was GOOD"])


def test_different_layer_counts_are_refused_unless_matching_is_asked_for():
    shallow, tok = tiny_model("bert", n_layers=2)
    deep, _ = tiny_model("bert", n_layers=4, seed=1)
    texts, _ = toy_sentences(8)
    with pytest.raises(ValueError, match=r"different numbers of layers: 2 vs 4 transformer blocks.*"
                                         r"match_layers='first'.*'proportional'"):
        representation_drift(shallow, deep, texts, tok)
    first = representation_drift(shallow, deep, texts, tok, match_layers="first", metrics=["cka"])
    assert list(zip(first["layer"], first["layer_b"])) == [(0, 0), (1, 1), (2, 2)]
    prop = representation_drift(shallow, deep, texts, tok, match_layers="proportional", metrics=["cka"])
    assert list(zip(prop["layer"], prop["layer_b"])) == [(0, 0), (1, 2), (2, 4)]
    explicit = representation_drift(shallow, deep, texts, tok, match_layers=[(2, 4)], metrics=["cka"])
    assert list(zip(explicit["layer"], explicit["layer_b"])) == [(2, 4)]
    with pytest.raises(ValueError, match=r"pair \(3, 4\) is out of range"):
        representation_drift(shallow, deep, texts, tok, match_layers=[(3, 4)])
    # same block architecture at every depth: weight distances of matched layers are defined
    full = representation_drift(shallow, deep, texts, tok, match_layers="first")
    wd = full.loc[full["metric"] == "weight_distance", "value"]
    assert len(wd) == 3 and (wd > 0).all()


def test_different_widths_keep_cka_and_drop_cosine_with_a_warning():
    narrow, tok = tiny_model("bert", hidden=32)
    wide, _ = tiny_model("bert", hidden=48)
    texts, _ = toy_sentences(8)
    with pytest.warns(RuntimeWarning, match="different hidden sizes"):
        df = representation_drift(narrow, wide, texts, tok, metrics=["cka", "cosine_drift_token"])
    assert set(df["metric"]) == {"cka"}


def test_a_tokenizer_is_needed_for_modules():
    model, _ = tiny_model("bert")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        representation_drift(model, model, ["good film"] * 4)

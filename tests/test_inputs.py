"""lnsr_viz.core.inputs, the one home of model inputs: tokenize gives what the tokenizer gives, keeps token_type_ids
exactly for models whose forward names them (BERT yes, DistilBERT no, also through a DDP-style wrapper), and moves
tensors to the model's device; eval_mode restores the training mode and requires_grad flags, also after an error;
texts_of, iter_batches, forward_inputs and the model normalisers with their refusals."""

import pandas as pd
import pytest
import torch
from torch import nn

from lnsr_viz.core.adapter import ModelAdapter
from lnsr_viz.core.inputs import (
    eval_mode,
    forward_inputs,
    iter_batches,
    model_and_tokenizer,
    model_device,
    model_label,
    named_models,
    texts_of,
    tokenize,
    train_mode,
    unwrap,
)
from lnsr_viz.data.text import TextDataset
from lnsr_viz.testing import tiny_model, tiny_tokenizer, toy_sentences

TEXTS = ["the film was good", "a bad plot", "i loved it and the music was great"]


def _typed_tokenizer():
    """tiny_tokenizer, asked to return token_type_ids as BERT's own tokenizer does."""
    tok = tiny_tokenizer()
    tok.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    return tok


class _Wrapper(nn.Module):
    """Keeps the model in ``.module`` with a ``forward(*args, **kwargs)``, like DistributedDataParallel."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


# ------------------------------------------------------------------------------------------------ tokenize
@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_tokenize_gives_what_the_tokenizer_gives(family):
    model, tok = tiny_model(family)
    direct = tok(TEXTS, padding=True, truncation=True, max_length=6, return_tensors="pt")
    for enc in (tokenize(tok, TEXTS, max_length=6), tokenize(tok, TEXTS, max_length=6, model=model)):
        assert list(enc) == ["input_ids", "attention_mask"]
        assert torch.equal(enc["input_ids"], direct["input_ids"])
        assert torch.equal(enc["attention_mask"], direct["attention_mask"])
    assert enc["input_ids"].shape == (3, 6)  # truncated to max_length, padded to the longest
    assert enc["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 0]  # [CLS] a bad plot [SEP] + one pad


def test_token_type_ids_are_kept_exactly_when_the_forward_names_them():
    tok = _typed_tokenizer()
    bert, _ = tiny_model("bert")
    distil, _ = tiny_model("distilbert")
    direct = tok(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    kept = tokenize(tok, TEXTS, max_length=16, model=bert)
    assert list(kept) == ["input_ids", "token_type_ids", "attention_mask"]
    assert torch.equal(kept["token_type_ids"], direct["token_type_ids"])
    dropped = tokenize(tok, TEXTS, max_length=16, model=distil)
    assert list(dropped) == ["input_ids", "attention_mask"]  # DistilBERT's forward has **kwargs but no token_type_ids
    distil(**dropped)  # and the batch runs
    # a DDP-style wrapper is looked through: its forward(*args, **kwargs) does not hide BERT's signature
    assert "token_type_ids" in tokenize(tok, TEXTS, max_length=16, model=_Wrapper(bert))
    assert "token_type_ids" not in tokenize(tok, TEXTS, max_length=16, model=_Wrapper(distil))
    assert "token_type_ids" in tokenize(tok, TEXTS, max_length=16)  # no model: the tokenizer's output as it is


def test_tensors_land_on_the_models_device():
    model, tok = tiny_model("bert")
    assert model_device(model) == torch.device("cpu") and model_device(nn.ReLU()) == torch.device("cpu")
    meta = model.to("meta")  # a second device that every machine has
    enc = tokenize(_typed_tokenizer(), TEXTS, max_length=16, model=meta)
    assert {v.device.type for v in enc.values()} == {"meta"}
    assert model_device(_Wrapper(meta)).type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_tensors_land_on_the_gpu():
    model, tok = tiny_model("bert")
    model.cuda()
    enc = tokenize(tok, TEXTS, max_length=16, model=model)
    assert {v.device.type for v in enc.values()} == {"cuda"}
    batches = list(iter_batches(TextDataset(TEXTS, [0, 1, 1], "t"), tok, model, batch_size=2, max_length=16,
                                with_labels=True))
    assert {v.device.type for b in batches for v in b.values()} == {"cuda"}


def test_forward_inputs_keeps_what_the_forward_takes():
    model, tok = tiny_model("distilbert")
    enc = tokenize(_typed_tokenizer(), TEXTS, max_length=16)
    batch = {**enc, "labels": torch.tensor([0, 1, 1]), "offset_mapping": torch.zeros(3, 2), "note": "x"}
    assert list(forward_inputs(batch, model)) == ["input_ids", "attention_mask"]


# ------------------------------------------------------------------------------------------------ eval mode
def test_eval_mode_restores_training_and_requires_grad():
    model, _ = tiny_model("bert")
    model.train()
    frozen = model.bert.embeddings.word_embeddings.weight
    frozen.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with eval_mode(model):
        assert not model.training and not any(m.training for m in model.modules())
        assert [p.requires_grad for p in model.parameters()] == flags  # no freeze: flags untouched
    assert model.training
    with eval_mode(model, freeze=True) as same:
        assert same is model and not model.training
        assert not any(p.requires_grad for p in model.parameters())
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert frozen.requires_grad is False  # a parameter frozen before stays frozen


def test_eval_mode_restores_also_when_the_body_raises():
    model, _ = tiny_model("bert")
    model.train()
    model.classifier.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model, freeze=True):
        raise RuntimeError("boom")
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    model.eval()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert not model.training  # an eval-mode model stays in eval mode


def test_eval_mode_nests_on_one_model():
    net = nn.Dropout(0.5).train()
    with eval_mode(net), eval_mode(net):
        assert not net.training
    assert net.training


# ------------------------------------------------------------------------------------------------ texts, batches
def test_texts_of_reads_sequences_datasets_and_frames():
    assert texts_of(TEXTS) == TEXTS and texts_of(tuple(TEXTS)) == TEXTS
    assert texts_of(TextDataset(TEXTS, [0, 1, 1], "t")) == TEXTS
    frame = pd.DataFrame({"text": TEXTS, "label": [0, 1, 1]})
    assert texts_of(frame, load=True) == TEXTS
    assert texts_of({"text": TEXTS}, load=True) == TEXTS


def test_texts_of_refusals():
    with pytest.raises(ValueError, match="not a single string; wrap it in a list"):
        texts_of("the film was good", owner="The probe")
    with pytest.raises(ValueError, match="The probe got no texts"):
        texts_of([], owner="The probe")
    with pytest.raises(ValueError, match="must hold strings .*got a int: 3"):
        texts_of(["a", 3])


def test_iter_batches_from_texts_datasets_and_tokens():
    model, tok = tiny_model("bert")
    texts, labels = toy_sentences(5)
    plain = list(iter_batches(texts, tok, model, batch_size=2, max_length=16))
    assert [len(b["input_ids"]) for b in plain] == [2, 2, 1] and "labels" not in plain[0]
    assert torch.equal(plain[0]["input_ids"], tokenize(tok, texts[:2], max_length=16)["input_ids"])
    labelled = list(iter_batches(TextDataset(texts, labels, "t"), tok, model, batch_size=2, max_length=16,
                                 with_labels=True))
    assert torch.cat([b["labels"] for b in labelled]).tolist() == list(labels)
    assert labelled[0]["labels"].dtype == torch.long
    tokens = {**tokenize(tok, texts, max_length=16), "labels": torch.tensor(labels)}
    cut = list(iter_batches(tokens, None, model, batch_size=3, max_length=16, with_labels=True))
    assert [len(b["labels"]) for b in cut] == [3, 2] and torch.equal(cut[1]["input_ids"], tokens["input_ids"][3:])


def test_iter_batches_refusals():
    model, tok = tiny_model("bert")
    with pytest.raises(ValueError, match="theory needs tokenizer="):
        next(iter_batches(TEXTS, None, model, batch_size=2, max_length=16, owner="theory"))
    with pytest.raises(ValueError, match="needs labelled data"):
        next(iter_batches(TEXTS, tok, model, batch_size=2, max_length=16, with_labels=True))
    with pytest.raises(ValueError, match="no 'labels' tensor"):
        next(iter_batches(tokenize(tok, TEXTS, max_length=16), tok, model, batch_size=2, max_length=16,
                          with_labels=True))


# ------------------------------------------------------------------------------------------------ models
def test_model_and_tokenizer_normalises_its_forms():
    model, tok = tiny_model("bert")
    other = tiny_tokenizer()
    assert model_and_tokenizer(model, None, which="model_a") == (model, None)
    assert model_and_tokenizer((model, tok), None, which="model_a") == (model, tok)
    assert model_and_tokenizer((model, tok), other, which="model_a") == (model, other)  # explicit wins
    assert model_and_tokenizer(ModelAdapter(model), tok, which="model_a") == (model, tok)
    with pytest.raises(TypeError, match="model_b must be a model .*got int"):
        model_and_tokenizer(3, tok, which="model_b")
    assert unwrap(_Wrapper(model)) is model and unwrap(model) is model


def test_labels_of_models():
    model, tok = tiny_model("bert")
    model.config._name_or_path = "/tmp/checkpoints/my-model/"
    assert model_label(model, "model_a") == "my-model" and model_label(nn.ReLU(), "model_a") == "model_a"
    same = named_models((model, tok), (model, tok), None, None, owner="x")
    assert [n for n, _, _ in same] == ["my-model (a)", "my-model (b)"]
    assert [n for n, _, _ in named_models((model, tok), None, None, ["base"], owner="x")] == ["base"]
    with pytest.raises(ValueError, match="one label per model"):
        named_models((model, tok), None, None, ["a", "b"], owner="x")
    with pytest.raises(ValueError, match="x: a tokenizer is needed for model_a"):
        named_models(model, None, None, None, owner="x")


def test_train_mode_switches_dropout_on_and_restores_eval():
    model, _ = tiny_model("bert")
    model.eval()
    with pytest.raises(RuntimeError, match="boom"), train_mode(model) as same:
        assert same is model and all(m.training for m in model.modules())
        raise RuntimeError("boom")
    assert not any(m.training for m in model.modules())

"""Tiny models with known answers, shared by the tests, the notebooks' quick mode and the benchmarks.

Nothing here downloads anything: the tiny transformers are randomly initialised from configs, the tokenizer is a
word-level vocabulary built in memory, and :class:`LinearStack` is a purely linear "transformer" whose noise response
has a closed form.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["TINY_FAMILIES", "tiny_config", "tiny_model", "tiny_tokenizer", "LinearStack", "toy_sentences",
           "save_tiny_setup"]

TINY_FAMILIES = ("bert", "roberta", "distilbert", "electra", "albert", "mpnet", "deberta-v2", "gpt2")

_WORDS = (
    "the a an and or but not no very really quite too so is was are were be been it this that these those film movie "
    "story plot acting actor actors cast script scene scenes director music ending book product phone service food "
    "good great fine best better excellent wonderful love loved lovely fun funny enjoyable brilliant moving charming "
    "bad worst worse awful terrible boring dull poor hate hated waste mess weak slow stupid annoying disappointing "
    "i you he she we they my your his her our their of in on at to for with from by as about than more most less "
    "one two all some any every time people way year day thing work life world new old little long big"
).split()
_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def tiny_tokenizer() -> Any:
    """A fast word-level BERT-style tokenizer over a small fixed vocabulary (``[CLS] ... [SEP]``, pad id 0)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIALS + tuple(dict.fromkeys(_WORDS)) + tuple(".,!?'"))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_max_length=64,
                                   model_input_names=["input_ids", "attention_mask"])


def tiny_config(family: str, *, n_layers: int = 2, hidden: int = 32, **overrides: Any) -> Any:
    """A transformers config for a tiny model of ``family`` (one of ``TINY_FAMILIES``)."""
    import transformers as tf

    vocab = len(tiny_tokenizer())
    common = dict(vocab_size=vocab, pad_token_id=0)
    if family == "distilbert":
        cfg = tf.DistilBertConfig(dim=hidden, n_layers=n_layers, n_heads=2, hidden_dim=2 * hidden,
                                  max_position_embeddings=64, **common)
    elif family == "gpt2":
        cfg = tf.GPT2Config(n_embd=hidden, n_layer=n_layers, n_head=2, n_positions=64, bos_token_id=2,
                            eos_token_id=3, **common)
    else:
        kw = dict(hidden_size=hidden, num_hidden_layers=n_layers, num_attention_heads=2, intermediate_size=2 * hidden,
                  max_position_embeddings=64, **common)
        if family == "bert":
            cfg = tf.BertConfig(**kw)
        elif family == "roberta":
            cfg = tf.RobertaConfig(**kw)
        elif family == "electra":
            cfg = tf.ElectraConfig(embedding_size=hidden // 2, **kw)
        elif family == "albert":
            cfg = tf.AlbertConfig(embedding_size=hidden // 2, **kw)
        elif family == "mpnet":
            cfg = tf.MPNetConfig(**kw)
        elif family == "deberta-v2":
            cfg = tf.DebertaV2Config(relative_attention=True, position_buckets=8, max_relative_positions=16,
                                     pos_att_type=["p2c", "c2p"], **kw)
        else:
            raise ValueError(f"family must be one of {list(TINY_FAMILIES)}. Got {family!r} instead.")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(family: str = "bert", *, num_labels: int = 2, seed: int = 0, n_layers: int = 2, hidden: int = 32,
               task: str = "classification", **overrides: Any) -> tuple[nn.Module, Any]:
    """A randomly initialised tiny ``family`` model with a classification (or QA) head, and its tokenizer."""
    import transformers as tf

    cfg = tiny_config(family, n_layers=n_layers, hidden=hidden, num_labels=num_labels, **overrides)
    torch.manual_seed(seed)
    auto = tf.AutoModelForQuestionAnswering if task == "qa" else tf.AutoModelForSequenceClassification
    model = auto.from_config(cfg)
    model.eval()
    return model, tiny_tokenizer()


def toy_sentences(n: int = 32, *, seed: int = 0) -> tuple[list[str], list[int]]:
    """``n`` short labelled sentences from the tiny vocabulary (label 1 = positive words dominate)."""
    import random

    rng = random.Random(seed)
    pos = "good great excellent wonderful loved fun brilliant charming enjoyable best".split()
    neg = "bad awful terrible boring dull poor hated waste mess worst".split()
    filler = "the film story acting was very really quite and it is a movie plot".split()
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = [rng.choice(filler) for _ in range(rng.randint(2, 9))]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(pos if label else neg))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def save_tiny_setup(root: Any, csvs: Any = (("in", 80, 0),), *, text_column: Any = "text") -> Any:
    """Save a tiny BERT classifier (``root/model``, with its tokenizer) and labelled toy CSVs ``root/<name>.csv``.

    ``csvs`` lists ``(name, n, seed)``; ``text_column`` is one column name for all, or a mapping name -> column (the
    others use ``"text"``). Returns ``root`` as a :class:`pathlib.Path`. The folder the tests and benchmarks use for an
    end-to-end run on files, as a user's model and data would be.
    """
    from pathlib import Path

    import pandas as pd

    root = Path(root)
    model, tokenizer = tiny_model("bert", seed=0)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    for name, n, seed in csvs:
        column = text_column.get(name, "text") if isinstance(text_column, dict) else text_column
        texts, labels = toy_sentences(n, seed=seed)
        pd.DataFrame({column: texts, "label": labels}).to_csv(root / f"{name}.csv", index=False)
    return root


class _LinearBlock(nn.Module):
    """``h -> c * Q h`` with Q orthogonal: scales every vector's norm by exactly ``c``."""

    def __init__(self, dim: int, gain: float, generator: torch.Generator) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        self.linear = nn.Linear(dim, dim, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.linear.weight.copy_(gain * q)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(hidden_states)


class LinearStack(nn.Module):
    """A purely linear block stack with known noise response (float64).

    Block ``l`` multiplies by ``gains[l-1]`` times an orthogonal matrix, so noise ``e`` injected at layer ``k`` shows
    up at layer ``l`` with norm exactly ``||e|| * prod(gains[k:l])``, and the Jacobian of blocks ``k+1..l`` has
    Frobenius norm ``sqrt(dim) * prod(gains[k:l])``.
    """

    def __init__(self, dim: int = 8, gains: tuple[float, ...] = (2.0, 0.5, 1.5), *, vocab: int = 50, seed: int = 0,
                 num_labels: int = 2) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.gains = tuple(float(g) for g in gains)
        self.embed = nn.Embedding(vocab, dim, dtype=torch.float64)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab, dim, generator=gen, dtype=torch.float64))
        self.blocks = nn.ModuleList(_LinearBlock(dim, g, gen) for g in self.gains)
        self.head = nn.Linear(dim, num_labels, dtype=torch.float64)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h, attention_mask)
        logits = self.head(h[:, 0])
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out

    def jacobian_fro(self, start: int, stop: int) -> float:
        """Exact ||J||_F of blocks ``start+1..stop`` (per token)."""
        prod = 1.0
        for g in self.gains[start:stop]:
            prod *= g
        return prod * self.dim**0.5

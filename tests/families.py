"""A registry of tiny random models of many families, built from transformers configs (no downloads).

Each :class:`Family` builds a 2-layer, hidden-32 model with a sequence-classification head and a padded batch of
direct ``input_ids`` (no tokenizer needed), and says what the adapter must do with it: ``supported`` (replay exact,
zero noise gives zero change, one LNSR step gives finite gradients) or ``refused`` (with a message matching
``refusal``). ``kind`` groups the families as the docs do: encoder, decoder (rotary / ALiBi / learned positions),
encoder-decoder, local (local / block-sparse attention that pads internally), seq-first ((seq, batch, dim) layout)
and nested (stacks of stacks with pooling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

VOCAB = 99
PAD, CLS, EOS = 0, 2, 3


@dataclass(frozen=True)
class Family:
    """One family: how to build its tiny model and what the adapter must do with it."""

    name: str
    kind: str
    build: Callable[[], nn.Module]
    seq_len: int = 12
    refusal: str | None = None  # a regex the refusal message must match; None = supported
    top_norm: bool = False  # the top layer is the last block's output before a final norm
    stack_path: str | None = None  # where describe() must say the stack is (relative to the base model)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def supported(self) -> bool:
        return self.refusal is None


def family_batch(family: Family, *, batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A padded batch: ``[CLS] w ... w [EOS] [PAD] ...`` with different lengths (one row full length)."""
    gen = torch.Generator().manual_seed(seed)
    seq = family.seq_len
    ids = torch.full((batch, seq), PAD, dtype=torch.long)
    mask = torch.zeros(batch, seq, dtype=torch.long)
    lengths = [seq] + [max(4, seq - 3 - 2 * i) for i in range(1, batch)]
    for row, n in enumerate(lengths):
        ids[row, 0] = CLS
        ids[row, 1:n - 1] = torch.randint(5, VOCAB, (n - 2,), generator=gen)
        ids[row, n - 1] = EOS
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _seq_cls(config: Any) -> nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    config.num_labels = 2
    model = tf.AutoModelForSequenceClassification.from_config(config)
    return model.eval()


_COMMON = dict(vocab_size=VOCAB, pad_token_id=PAD, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64)


def _cfg(name: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers as tf

        return _seq_cls(getattr(tf, name)(**kw))

    return build


def _encoder(name: str, **extra: Any) -> Callable[[], nn.Module]:
    return _cfg(name, **{**_COMMON, **extra})


def _decoder(name: str, **extra: Any) -> Callable[[], nn.Module]:
    kw = {**_COMMON, "bos_token_id": CLS, "eos_token_id": EOS, **extra}
    return _cfg(name, **kw)


class SeqFirstEncoder(nn.Module):
    """A custom model on torch's ``nn.TransformerEncoderLayer(batch_first=False)``: hidden states (seq, batch, dim)."""

    def __init__(self, vocab: int = VOCAB, dim: int = 32, n_layers: int = 2, num_labels: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=False)
                                    for _ in range(n_layers))
        self.head = nn.Linear(dim, num_labels)
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.embed(input_ids).transpose(0, 1)  # (seq, batch, dim)
        pad = None if attention_mask is None else attention_mask == 0
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=pad)
        logits = self.head(h[0])
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def _t5() -> nn.Module:
    import transformers as tf

    return _seq_cls(tf.T5Config(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=3,
                                num_heads=2, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD,
                                relative_attention_num_buckets=8))


def _bart() -> nn.Module:
    import transformers as tf

    # a decoder deeper than the encoder: the adapter must still probe the encoder
    return _seq_cls(tf.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=4,
                                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                  decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=PAD,
                                  bos_token_id=CLS, eos_token_id=EOS, decoder_start_token_id=EOS))


def _bigbird() -> nn.Module:
    import transformers as tf

    return _seq_cls(tf.BigBirdConfig(**_COMMON, attention_type="block_sparse", block_size=2, num_random_blocks=1))


def _reformer() -> nn.Module:
    import transformers as tf

    return _seq_cls(tf.ReformerConfig(vocab_size=VOCAB, pad_token_id=PAD, hidden_size=32, attention_head_size=16,
                                      num_attention_heads=2, feed_forward_size=64, attn_layers=["local", "local"],
                                      axial_pos_embds=False, max_position_embeddings=64, local_attn_chunk_length=8,
                                      is_decoder=False))


def _funnel() -> nn.Module:
    import transformers as tf

    return _seq_cls(tf.FunnelConfig(vocab_size=VOCAB, pad_token_id=PAD, d_model=32, n_head=2, d_head=16,
                                    d_inner=64, block_sizes=[1, 1], num_decoder_layers=1))


def _xlnet() -> nn.Module:
    import transformers as tf

    return _seq_cls(tf.XLNetConfig(vocab_size=VOCAB, pad_token_id=PAD, d_model=32, n_layer=2, n_head=2,
                                   d_inner=64))


FAMILIES: tuple[Family, ...] = (
    # encoders
    Family("bert", "encoder", _encoder("BertConfig"), stack_path="encoder.layer"),
    Family("roberta", "encoder", _encoder("RobertaConfig", max_position_embeddings=80)),
    Family("deberta-v2", "encoder", _encoder("DebertaV2Config", relative_attention=True, position_buckets=8,
                                             max_relative_positions=16, pos_att_type=["p2c", "c2p"])),
    Family("electra", "encoder", _encoder("ElectraConfig", embedding_size=16)),
    Family("albert", "encoder", _encoder("AlbertConfig", embedding_size=16)),
    Family("distilbert", "encoder", _cfg("DistilBertConfig", vocab_size=VOCAB, pad_token_id=PAD, dim=32, n_layers=2,
                                         n_heads=2, hidden_dim=64, max_position_embeddings=64)),
    # decoder-only: rotary, ALiBi, learned positions
    Family("llama", "decoder", _decoder("LlamaConfig", num_key_value_heads=1), top_norm=True, stack_path="layers"),
    Family("qwen2", "decoder", _decoder("Qwen2Config", num_key_value_heads=1), top_norm=True),
    Family("gpt_neox", "decoder", _decoder("GPTNeoXConfig"), top_norm=True),
    Family("bloom", "decoder", _cfg("BloomConfig", vocab_size=VOCAB, pad_token_id=PAD, hidden_size=32, n_layer=2,
                                    n_head=2, bos_token_id=CLS, eos_token_id=EOS), top_norm=True),
    Family("mpt", "decoder", _cfg("MptConfig", vocab_size=VOCAB, pad_token_id=PAD, d_model=32, n_layers=2, n_heads=2,
                                  max_seq_len=64, bos_token_id=CLS, eos_token_id=EOS), top_norm=True),
    Family("falcon-alibi", "decoder", _cfg("FalconConfig", vocab_size=VOCAB, pad_token_id=PAD, hidden_size=32,
                                           num_hidden_layers=2, num_attention_heads=2, alibi=True,
                                           bos_token_id=CLS, eos_token_id=EOS), top_norm=True),
    Family("gpt2", "decoder", _cfg("GPT2Config", vocab_size=VOCAB, pad_token_id=PAD, n_embd=32, n_layer=2, n_head=2,
                                   n_positions=64, bos_token_id=CLS, eos_token_id=EOS), top_norm=True),
    Family("opt", "decoder", _cfg("OPTConfig", vocab_size=VOCAB, pad_token_id=PAD, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=32, bos_token_id=CLS,
                                  eos_token_id=EOS), top_norm=True, stack_path="decoder.layers"),
    # encoder-decoder: the encoder is probed
    Family("t5", "encoder-decoder", _t5, top_norm=True, stack_path="encoder.block"),
    Family("bart", "encoder-decoder", _bart, stack_path="encoder.layers"),
    # local / block-sparse attention that pads the sequence internally
    Family("longformer", "local", _encoder("LongformerConfig", attention_window=8, max_position_embeddings=80),
           seq_len=13),
    Family("big_bird", "local", _bigbird, seq_len=19),
    Family("reformer", "local", _reformer, seq_len=12, refusal="reversible"),
    # (seq, batch, dim) layout
    Family("xlnet", "seq-first", _xlnet),
    Family("torch-seq-first", "seq-first", SeqFirstEncoder, stack_path="layers"),
    # stacks of stacks with pooling between them
    Family("funnel", "nested", _funnel, refusal="Funnel|nested|pool"),
)

BY_NAME = {f.name: f for f in FAMILIES}

"""The adapter, the probe and LNSR on tiny random models of many families (tests/families.py).

For every supported family: the replay is exact with padding in the batch (also with stacked noise draws and against
re-running the whole model), zero noise gives zero change, and one LNSR step gives finite gradients. For every refused
family the refusal comes at once, says why, and does not send the user to ``blocks=``.
"""

import warnings

import numpy as np
import pytest
import torch
from families import BY_NAME, FAMILIES, family_batch

from lnsr_viz.core.adapter import AdapterError, ModelAdapter
from lnsr_viz.core.probe import StabilityProbe
from lnsr_viz.methods.lnsr import LNSR

SUPPORTED = [f for f in FAMILIES if f.supported]
REFUSED = [f for f in FAMILIES if not f.supported]
KINDS = {"encoder", "decoder", "encoder-decoder", "local", "seq-first", "nested"}


@pytest.fixture(autouse=True)
def _quiet():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # Longformer / BigBird announce their internal padding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    hf_logging.set_verbosity(level)


def _model(family):
    return family.build()


def test_the_registry_covers_every_kind_the_issue_names():
    assert len(FAMILIES) >= 12 and {f.kind for f in FAMILIES} == KINDS
    for name in ("bert", "roberta", "deberta-v2", "electra", "albert", "distilbert", "llama", "qwen2", "gpt_neox",
                 "bloom", "mpt", "t5", "bart", "longformer", "big_bird", "xlnet"):
        assert name in BY_NAME


def _reference(model, family, enc):
    """The model's own hidden states (encoder's for seq2seq), or None where the model returns none."""
    try:
        out = model(**enc, output_hidden_states=True)
    except TypeError:
        return None
    return getattr(out, "encoder_hidden_states", None) or out.hidden_states


@pytest.mark.parametrize("family", SUPPORTED, ids=lambda f: f.name)
def test_replay_is_exact_with_padding_in_the_batch(family):
    model = _model(family)
    enc = family_batch(family)
    assert (enc["attention_mask"] == 0).any()
    adapter = ModelAdapter(model)
    assert adapter.n_layers == 2
    seq = enc["input_ids"].shape[1]
    with torch.no_grad():
        cap = adapter.capture(enc)
        assert cap.mask.shape == cap.hidden[0].shape[:2]  # internal padding is part of the mask
        assert torch.equal(cap.mask[:, :seq], enc["attention_mask"].bool()) and not cap.mask[:, seq:].any()
        reference = _reference(model, family, enc)
        if reference is not None:
            # the model's last entry is after the final norm where there is one (the top layer is before it)
            n = len(reference) - 1 if family.top_norm else len(reference)
            for layer in range(n):
                torch.testing.assert_close(cap.hidden[layer][:, :seq], reference[layer][:, :seq], rtol=0, atol=1e-5)
        for k in range(adapter.n_layers):
            for i, h in enumerate(adapter.replay(cap, cap.hidden[k], start=k)):
                torch.testing.assert_close(h, cap.hidden[k + 1 + i], rtol=0, atol=1e-5)
        # stacked noise draws: every copy replays exactly (batch-leading arguments, e.g. ALiBi, are expanded)
        b = cap.batch_size
        stacked = adapter.replay(cap, cap.hidden[0].repeat(3, 1, 1), start=0, expand=3)
        for d in range(3):
            torch.testing.assert_close(stacked[-1][d * b:(d + 1) * b], cap.hidden[-1], rtol=0, atol=1e-5)
        # a perturbed replay equals re-running the whole model with the perturbation added by a hook
        gen = torch.Generator().manual_seed(0)
        e = 0.1 * torch.randn(cap.hidden[1].shape, generator=gen) * cap.mask.unsqueeze(-1)
        fast = adapter.replay(cap, cap.hidden[1] + e, start=1)
        slow = adapter.forward_with_injection(enc, 1, lambda h: h + e)
    torch.testing.assert_close(fast[-1], slow.hidden[-1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fast[-1], cap.hidden[-1])


@pytest.mark.parametrize("family", SUPPORTED, ids=lambda f: f.name)
def test_zero_noise_gives_zero_change_and_noise_gives_a_finite_profile(family):
    model = _model(family)
    enc = family_batch(family)
    zero = StabilityProbe(scale=0.0, n_draws=2, progress=False).run(model, enc)
    assert (zero["change_l2"] == 0).all() and (zero["change_rel"] == 0).all()
    some = StabilityProbe(scale=0.05, n_draws=2, progress=False, injection_layers=0).run(model, enc)
    assert np.isfinite(some["change_rel"]).all() and (some["change_rel"] > 0).all()
    assert some.attrs["top_layer"].startswith("layer 2 (blocks.1)")
    assert list(some["layer_name"]) == ["embed", "blocks.0", "blocks.1"]


@pytest.mark.parametrize("family", SUPPORTED, ids=lambda f: f.name)
def test_one_lnsr_step_gives_finite_gradients(family):
    model = _model(family)
    model.train()
    batch = {**family_batch(family), "labels": torch.tensor([0, 1, 0, 1])}
    lnsr = LNSR(lam=1.0, injection_layer=0)
    lnsr.setup(model, seed=0)
    parts = lnsr.compute_loss(model, batch)
    assert torch.isfinite(parts.loss) and parts.reg_loss > 0
    parts.loss.backward()
    # parameters the forward does not use (XLNet's segment embeddings without token_type_ids) get no gradient
    grads = [p.grad for block in ModelAdapter(model).blocks for p in block.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() > 0 for g in grads) > len(grads) // 2


@pytest.mark.parametrize("family", REFUSED, ids=lambda f: f.name)
def test_unsupported_families_are_refused_at_once_with_the_reason(family):
    model = _model(family)
    with pytest.raises(AdapterError, match=family.refusal) as err:
        ModelAdapter(model)
    message = str(err.value)
    assert "blocks= cannot help" in message  # never sends the user to an option that cannot work
    with pytest.raises(ValueError, match=family.refusal):  # LNSR refuses in setup, before any training step
        LNSR().setup(model)


@pytest.mark.parametrize("family", SUPPORTED, ids=lambda f: f.name)
def test_describe_says_which_stack_and_what_the_top_layer_is(family):
    adapter = ModelAdapter(_model(family))
    d = adapter.describe()
    assert set(d) >= {"family", "kind", "stack", "n_blocks", "n_layers", "layout", "final_norm", "top_layer"}
    if family.stack_path is not None:
        assert d["stack"].endswith(family.stack_path)
    assert (d["final_norm"] is not None) == family.top_norm
    assert ("before the final norm" in d["top_layer"]) == family.top_norm
    if family.kind == "encoder-decoder":
        assert d["kind"] == "encoder-decoder" and "encoder" in d["stack"] and "decoder" not in d["stack"]
        assert "decoder is not probed" in d["top_layer"]
    if family.kind == "seq-first":
        assert d["layout"] == "seq_first"
    assert d["stack"] in adapter.summary()


def test_an_encoder_decoder_of_an_unknown_family_gets_its_encoder_not_its_deeper_decoder():
    model = BY_NAME["bart"].build()  # encoder 2 layers, decoder 4
    model.config.model_type = "mystery-seq2seq"  # not on the list of known paths: the discovery must still choose
    adapter = ModelAdapter(model)
    assert adapter.n_layers == 2 and adapter.stack_path == "model.encoder.layers"
    assert all(b in list(model.model.encoder.layers) for b in adapter.blocks)
    assert adapter.describe()["kind"] == "encoder-decoder"


def test_alibi_bias_shaped_batch_times_heads_is_expanded_for_draws():
    """BLOOM passes alibi as (batch x heads, 1, seq): the probe's default n_draws > 1 must replay each draw exactly."""
    family = BY_NAME["bloom"]
    model = _model(family)
    enc = family_batch(family)
    adapter = ModelAdapter(model)
    with torch.no_grad():
        cap = adapter.capture(enc)
        assert cap.calls[0].kwargs["alibi"].shape[0] == cap.batch_size * model.config.n_head
        fast = StabilityProbe(n_draws=3, progress=False, seed=1).run(adapter, enc)
        slow = StabilityProbe(n_draws=3, progress=False, seed=1, strategy="naive").run(adapter, enc)
    np.testing.assert_allclose(fast["change_l2"], slow["change_l2"], rtol=1e-5)


@pytest.mark.parametrize("name,batch", [("bloom", 2), ("llama", 12), ("xlnet", 3)])
def test_draws_stay_exact_where_the_batch_size_is_ambiguous(name, batch):
    """Batch == heads (bloom, 2), batch == seq length (llama, 12) or seq-first: one block call per draw instead."""
    family = BY_NAME[name]
    model = _model(family)
    enc = family_batch(family, batch=batch)
    adapter = ModelAdapter(model)
    with torch.no_grad():
        cap = adapter.capture(enc)
        stacked = adapter.replay(cap, cap.hidden[0].repeat(2, 1, 1), start=0, expand=2)
    for d in range(2):
        torch.testing.assert_close(stacked[-1][d * batch:(d + 1) * batch], cap.hidden[-1], rtol=0, atol=1e-5)


def test_internal_padding_is_masked_and_the_probe_runs():
    """Longformer pads 13 tokens to its window of 8 (16): the 3 added positions are padding, never counted."""
    family = BY_NAME["longformer"]
    model = _model(family)
    enc = family_batch(family)
    adapter = ModelAdapter(model)
    with torch.no_grad():
        cap = adapter.capture(enc)
    assert cap.n_pad == 3 and cap.hidden[0].shape[1] == 16 and not cap.mask[:, 13:].any()


def test_seq_first_layout_is_detected_and_states_are_batch_first():
    family = BY_NAME["torch-seq-first"]
    model = _model(family)
    enc = family_batch(family, batch=5)
    adapter = ModelAdapter(model)
    with torch.no_grad():
        cap = adapter.capture(enc)
    assert cap.layout == "seq_first" and cap.hidden[0].shape == (5, family.seq_len, 32)
    torch.testing.assert_close(cap.hidden[0], model.embed(enc["input_ids"]), rtol=0, atol=0)


def test_a_wrong_layout_or_stack_is_refused_on_the_first_pass_saying_what_was_found():
    family = BY_NAME["torch-seq-first"]
    model = _model(family)
    with pytest.raises(AdapterError, match=r"that is seq_first, but layout='batch_first' was given"):
        ModelAdapter(model, layout="batch_first").capture(family_batch(family))
    with pytest.raises(AdapterError, match="layout must be one of"):
        ModelAdapter(model, layout="time_major")


def test_qkv_passed_as_separate_arguments_are_all_replaced_on_replay():
    """A block taking query, key and value apart, fed the same hidden state: every alias is replaced."""
    from torch import nn

    class QKVBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, query, key, value, key_padding_mask=None):
            return query + self.attn(query, key, value, key_padding_mask=key_padding_mask, need_weights=False)[0]

    class QKVModel(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(99, 8)
            self.layers = nn.ModuleList(QKVBlock() for _ in range(2))

        def forward(self, input_ids, attention_mask):
            h = self.embed(input_ids)
            for layer in self.layers:
                h = layer(h, h, h, key_padding_mask=attention_mask == 0)
            return {"logits": h[:, 0]}

    model = QKVModel().eval()
    enc = family_batch(BY_NAME["bert"])
    adapter = ModelAdapter(model)
    with torch.no_grad():
        cap = adapter.capture(enc)
        assert cap.calls[0].aliases == (1, 2)
        e = 0.1 * torch.randn(cap.hidden[0].shape) * cap.mask.unsqueeze(-1)
        fast = adapter.replay(cap, cap.hidden[0] + e, start=0)
        slow = adapter.forward_with_injection(enc, 0, lambda h: h + e)
    torch.testing.assert_close(fast[-1], slow.hidden[-1], rtol=1e-5, atol=1e-6)


def test_a_stack_that_changes_the_sequence_length_is_refused_on_the_first_pass():
    from torch import nn

    class Pool(nn.Module):
        def forward(self, hidden_states):
            return hidden_states[:, ::2]

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(99, 8)
            self.layers = nn.ModuleList([Pool(), Pool()])

        def forward(self, input_ids, attention_mask=None):
            h = self.embed(input_ids)
            for layer in self.layers:
                h = layer(h)
            return {"logits": h[:, 0]}

    with pytest.raises(AdapterError, match=r"changes the sequence length.*blocks= cannot help|blocks that change"):
        ModelAdapter(Pooled()).capture(family_batch(BY_NAME["bert"]))


def test_a_nested_stack_found_by_the_fallback_is_refused():
    from torch import nn

    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            self.groups = nn.ModuleList(nn.ModuleList([nn.Linear(4, 4)]) for _ in range(2))

    with pytest.raises(AdapterError, match="list of lists.*blocks= cannot help"):
        ModelAdapter(Nested())


def test_the_cli_turns_an_adapter_refusal_into_one_error_line(tmp_path, capsys):
    """A Funnel checkpoint on disk: `probe` ends with one `error:` line, no traceback, status 2, no output file."""
    from lnsr_viz.cli import main
    from lnsr_viz.testing import tiny_tokenizer

    model = BY_NAME["funnel"].build()
    folder = tmp_path / "funnel"
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    data = tmp_path / "d.csv"
    data.write_text("text,label\ngood film,1\nbad film,0\n")
    out = tmp_path / "p.csv"
    rc = main(["probe", "--model", str(folder), "--data", str(data), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "Funnel" in lines[-1] and "Traceback" not in err

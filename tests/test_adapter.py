"""The model adapter: block discovery, exact replay of blocks k+1..L, hooks hygiene, and errors.

Replay must reproduce the model's own hidden states exactly (same arguments, same masks) for every supported
architecture, with padding in the batch, and a perturbed replay must equal the slow reference path that re-runs the
whole model with the perturbation added by a hook.
"""

import pytest
import torch
from torch import nn

from lnsr_viz.core.adapter import AdapterError, ModelAdapter, layer_name
from lnsr_viz.core.inputs import tokenize
from lnsr_viz.testing import TINY_FAMILIES, LinearStack, tiny_model, toy_sentences


def _batch(model, tok, n=6):
    texts, _ = toy_sentences(n, seed=1)
    enc = tokenize(tok, texts, max_length=64, model=model)
    assert (enc["attention_mask"] == 0).any(), "the test batch must contain padding"
    return enc


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_replay_reproduces_the_models_hidden_states(family):
    model, tok = tiny_model(family, n_layers=3)
    adapter = ModelAdapter(model)
    assert adapter.n_layers == 3
    enc = _batch(model, tok)
    with torch.no_grad():
        cap = adapter.capture(enc)
        reference = model(**enc, output_hidden_states=True).hidden_states
        # GPT-2 applies a final LayerNorm to the last entry of hidden_states; compare the block outputs below it.
        n_compare = len(reference) - 1 if family == "gpt2" else len(reference)
        for layer in range(n_compare):
            torch.testing.assert_close(cap.hidden[layer], reference[layer], rtol=0, atol=1e-6)
        for k in range(adapter.n_layers):
            replayed = adapter.replay(cap, cap.hidden[k], start=k)
            for i, h in enumerate(replayed):
                torch.testing.assert_close(h, cap.hidden[k + 1 + i], rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_perturbed_replay_equals_rerunning_the_whole_model(family):
    model, tok = tiny_model(family, n_layers=3)
    adapter = ModelAdapter(model)
    enc = _batch(model, tok)
    k = 1
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cap = adapter.capture(enc)
        e = 0.1 * torch.randn(cap.hidden[k].shape, generator=gen) * cap.mask.unsqueeze(-1)
        fast = adapter.replay(cap, cap.hidden[k] + e, start=k)
        slow = adapter.forward_with_injection(enc, k, lambda h: h + e)
    for layer in range(k):  # below the injection layer nothing changes
        torch.testing.assert_close(slow.hidden[layer], cap.hidden[layer], rtol=0, atol=0)
    assert not torch.allclose(slow.hidden[k + 1], cap.hidden[k + 1])
    for i, h in enumerate(fast):
        torch.testing.assert_close(h, slow.hidden[k + 1 + i], rtol=1e-5, atol=1e-5)


def test_batched_draws_replay_each_copy_exactly():
    model, tok = tiny_model("bert", n_layers=2)
    adapter = ModelAdapter(model)
    enc = _batch(model, tok)
    with torch.no_grad():
        cap = adapter.capture(enc)
        stacked = adapter.replay(cap, cap.hidden[0].repeat(3, 1, 1), start=0, expand=3)
    b = cap.batch_size
    for d in range(3):
        torch.testing.assert_close(stacked[-1][d * b:(d + 1) * b], cap.hidden[-1], rtol=0, atol=1e-6)


def test_albert_shared_block_is_called_once_per_layer():
    model, tok = tiny_model("albert", n_layers=4)
    adapter = ModelAdapter(model)
    assert len(set(map(id, adapter.blocks))) == 1
    cap = adapter.capture(_batch(model, tok))
    assert len(cap.calls) == 4 and len(cap.hidden) == 5


def test_same_dropout_replay_matches_clean_pass_in_training_mode():
    model, tok = tiny_model("bert", n_layers=2, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    model.train()
    adapter = ModelAdapter(model)
    enc = _batch(model, tok)
    cap = adapter.capture(enc, record_rng=True)
    state_after_clean_pass = torch.get_rng_state()
    replayed = adapter.replay(cap, cap.hidden[0], start=0, same_dropout=True)
    torch.testing.assert_close(replayed[-1], cap.hidden[-1], rtol=0, atol=1e-6)
    assert torch.equal(torch.get_rng_state(), state_after_clean_pass)  # the replay leaves the RNG where it was
    # without it the noisy pass draws its own dropout masks
    other = adapter.replay(cap, cap.hidden[0], start=0, same_dropout=False)
    assert not torch.allclose(other[-1], cap.hidden[-1])


def test_hooks_are_removed_even_when_the_forward_raises():
    model, tok = tiny_model("bert")
    adapter = ModelAdapter(model)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with adapter.hooks(pre=boom):
            model(**_batch(model, tok))
    for block in adapter.blocks:
        assert not block._forward_pre_hooks and not block._forward_hooks


def test_layer_names_and_range_errors():
    model, _ = tiny_model("bert", n_layers=2)
    adapter = ModelAdapter(model)
    assert adapter.layer_names == ["embed", "blocks.0", "blocks.1"]
    assert layer_name(0) == "embed"
    with pytest.raises(ValueError, match=r"injection_layer=3 must be an int between 0 and 2"):
        adapter.check_layer(3)
    with pytest.raises(ValueError, match="between 0 and 1"):
        adapter.check_layer(2, allow_last=False)


def test_unknown_architecture_errors_and_explicit_blocks_work():
    class NoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

    with pytest.raises(AdapterError, match="Supported families.*blocks="):
        ModelAdapter(NoBlocks())
    stack = LinearStack(dim=4, gains=(1.0, 2.0))
    adapter = ModelAdapter(stack, blocks="blocks")
    assert adapter.n_layers == 2
    with pytest.raises(AdapterError, match="not a submodule"):
        ModelAdapter(stack, blocks="nope")
    assert adapter.describe()["stack"] == "blocks" and adapter.describe()["kind"] == "custom"


@pytest.mark.parametrize("family,stack,norm", [("bert", "bert.encoder.layer", None),
                                               ("gpt2", "transformer.h", "transformer.ln_f"),
                                               ("albert", "albert.encoder.albert_layer_groups", None)])
def test_describe_names_the_stack_and_the_top_layer(family, stack, norm):
    model, _ = tiny_model(family, n_layers=2)
    d = ModelAdapter(model).describe()
    assert d["stack"] == stack and d["final_norm"] == norm and d["n_layers"] == 2
    assert d["top_layer"].startswith("layer 2 (blocks.1) is the last block's output")
    assert ("before the final norm" in d["top_layer"]) == (norm is not None)


def test_a_block_call_count_mismatch_is_an_adapter_error():
    model, tok = tiny_model("bert", n_layers=2)
    with pytest.raises(AdapterError, match="made 2 block calls, expected n_layers=3"):
        ModelAdapter(model, n_layers=3).capture(_batch(model, tok))


@pytest.mark.slow
def test_replay_is_exact_on_the_packaged_minilm():
    """The real default model: 6 BERT blocks, hidden 384; replay from every layer reproduces its hidden states."""
    from lnsr_viz.data.models import load_model
    from lnsr_viz.data.text import load_domain

    model, tok = load_model("minilm")
    adapter = ModelAdapter(model)
    assert adapter.n_layers == 6
    enc = tokenize(tok, load_domain("movie").texts[:8], max_length=64, model=model)
    assert (enc["attention_mask"] == 0).any()
    with torch.no_grad():
        cap = adapter.capture(enc)
        reference = model(**enc, output_hidden_states=True).hidden_states
        for layer, h in enumerate(reference):
            torch.testing.assert_close(cap.hidden[layer], h, rtol=0, atol=1e-5)
        for k in range(6):
            for i, h in enumerate(adapter.replay(cap, cap.hidden[k], start=k)):
                torch.testing.assert_close(h, cap.hidden[k + 1 + i], rtol=0, atol=1e-5)

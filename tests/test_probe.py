"""The stability probe: known answers on a linear stack, invariants on tiny transformers, tidy output, errors."""

import numpy as np
import pytest
import torch

from lnsr_viz.core.probe import PROFILE_COLUMNS, StabilityProbe
from lnsr_viz.testing import LinearStack, tiny_model, toy_sentences


def _linear_inputs(n=10, seq=5, vocab=50):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, seq), generator=gen)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[::3, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("strategy", ["replay", "naive"])
def test_linear_stack_matches_the_analytic_answer(strategy):
    """Blocks scale norms by exactly their gain: change at l = r * ||h_k|| * prod(gains[k:l]); relative change = r."""
    from lnsr_viz.core.adapter import ModelAdapter

    stack = LinearStack(dim=8, gains=(2.0, 0.5, 3.0))
    inputs = _linear_inputs()
    probe = StabilityProbe(scale=0.1, n_draws=2, progress=False, strategy=strategy)
    profile = probe.run(ModelAdapter(stack, blocks="blocks"), inputs, label="linear")
    assert list(profile.columns) == list(PROFILE_COLUMNS)
    assert len(profile) == sum(3 - k + 1 for k in range(4))
    np.testing.assert_allclose(profile["change_rel"], 0.1, rtol=1e-9)
    # exact per-example L2 change: mean over real tokens of 0.1 * ||h_k|| * prod(gains)
    with torch.no_grad():
        h = [stack.embed(inputs["input_ids"])]
        for block in stack.blocks:
            h.append(block(h[-1]))
    mask = inputs["attention_mask"].bool()
    per_ex = probe.per_example_
    for k in range(4):
        norms = h[k].norm(dim=-1)
        for layer in range(k, 4):
            gain = float(np.prod(stack.gains[k:layer]))
            expected = ((0.1 * norms * gain * mask).sum(1) / mask.sum(1)).numpy()
            got = per_ex.query("injection_layer == @k and layer == @layer").sort_values("example")["change_l2"]
            np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-9)


def test_zero_noise_gives_zero_change_and_rows_start_at_the_injection_layer():
    model, tok = tiny_model("roberta", n_layers=3)
    texts, _ = toy_sentences(10)
    profile = StabilityProbe(scale=0.0, n_draws=2, batch_size=4, progress=False).run(model, texts, tokenizer=tok)
    assert (profile["change_l2"] == 0).all() and (profile["change_rel"] == 0).all()
    assert (profile["layer"] >= profile["injection_layer"]).all()
    assert set(profile["injection_layer"]) == {0, 1, 2, 3}


def test_replay_and_naive_strategies_agree_on_a_transformer():
    model, tok = tiny_model("bert", n_layers=3)
    texts, _ = toy_sentences(9)
    kw = dict(scale=0.05, n_draws=3, batch_size=4, progress=False, seed=3)
    fast = StabilityProbe(**kw).run(model, texts, tokenizer=tok)
    slow = StabilityProbe(strategy="naive", **kw).run(model, texts, tokenizer=tok)
    np.testing.assert_allclose(fast["change_l2"], slow["change_l2"], rtol=1e-5)
    np.testing.assert_allclose(fast["change_rel"], slow["change_rel"], rtol=1e-5)


def test_results_are_seeded_and_independent_of_which_layers_are_probed():
    model, tok = tiny_model("bert", n_layers=3)
    texts, _ = toy_sentences(8)
    full = StabilityProbe(n_draws=2, progress=False, seed=1).run(model, texts, tokenizer=tok)
    one = StabilityProbe(n_draws=2, progress=False, seed=1, injection_layers=2).run(model, texts, tokenizer=tok)
    again = StabilityProbe(n_draws=2, progress=False, seed=1, injection_layers=[2]).run(model, texts, tokenizer=tok)
    other = StabilityProbe(n_draws=2, progress=False, seed=2, injection_layers=[2]).run(model, texts, tokenizer=tok)
    sub = full[full.injection_layer == 2].reset_index(drop=True)
    np.testing.assert_allclose(sub["change_l2"], one["change_l2"], rtol=1e-12)
    np.testing.assert_allclose(one["change_l2"], again["change_l2"], rtol=0)
    assert not np.allclose(one["change_l2"].iloc[1:], other["change_l2"].iloc[1:])


def test_bounded_draw_groups_give_the_same_answer():
    """max_rows splits the draws into groups; the noise stream and so the result must not change."""
    model, tok = tiny_model("distilbert", n_layers=2)
    texts, _ = toy_sentences(6)
    a = StabilityProbe(n_draws=4, max_rows=1000, progress=False).run(model, texts, tokenizer=tok)
    b = StabilityProbe(n_draws=4, max_rows=6, progress=False).run(model, texts, tokenizer=tok)
    np.testing.assert_allclose(a["change_l2"], b["change_l2"], rtol=1e-6)


def test_confidence_interval_is_a_t_interval_over_examples():
    from scipy import stats

    model, tok = tiny_model("bert", n_layers=2)
    texts, _ = toy_sentences(12)
    probe = StabilityProbe(n_draws=2, progress=False, injection_layers=0)
    profile = probe.run(model, texts, tokenizer=tok)
    row = profile[profile.layer == 2].iloc[0]
    values = probe.per_example_.query("layer == 2")["change_rel"].to_numpy()
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    assert row["change_rel_ci_high"] == pytest.approx(values.mean() + half)
    assert row["n_examples"] == 12


def test_probe_restores_training_mode():
    model, tok = tiny_model("bert")
    model.train()
    StabilityProbe(n_draws=1, progress=False, injection_layers=0).run(model, ["good film"] * 2, tokenizer=tok)
    assert model.training


def test_bad_input_is_refused_before_any_work():
    model, tok = tiny_model("bert", n_layers=2)
    with pytest.raises(ValueError, match="injection_layer=5 must be an int between 0 and 2"):
        StabilityProbe(injection_layers=5, progress=False).run(model, ["a"], tokenizer=tok)
    with pytest.raises(ValueError, match="no texts"):
        StabilityProbe(progress=False).run(model, [], tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer="):
        StabilityProbe(progress=False).run(model, ["good"])
    with pytest.raises(ValueError, match="'scale' parameter"):
        StabilityProbe(scale=-1)
    with pytest.raises(ValueError, match="'noise' parameter of StabilityProbe must be one of"):
        StabilityProbe(noise="laplace")
    with pytest.raises(ValueError, match="'n_draws' parameter"):
        StabilityProbe(n_draws=0)


def test_the_profile_says_what_the_top_layer_is_and_keeps_the_layer_names():
    """GPT-2's top layer is the last block's output before ln_f: the profile says so; layer names are unchanged."""
    model, tok = tiny_model("gpt2", n_layers=2)
    probe = StabilityProbe(n_draws=1, progress=False, injection_layers=0)
    profile = probe.run(model, ["good film", "a very bad movie"], tokenizer=tok)
    assert list(profile["layer_name"]) == ["embed", "blocks.0", "blocks.1"]
    assert "before the final norm transformer.ln_f" in profile.attrs["top_layer"]
    assert probe.adapter_description_["stack"] == "transformer.h"

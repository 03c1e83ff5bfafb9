"""Attributions with captum: IG completeness (attributions add up to F(x) - F(baseline)), special tokens get
nothing, LayerIntegratedGradients on the embedding layer equals IG on inputs_embeds (which the stability measure
relies on), the tidy two-model table, attribution stability under the same injected noise (zero noise -> zero change,
captum's sensitivity_max equals our own maximum), and errors."""

import numpy as np
import pandas as pd
import pytest
import torch

from lnsr_viz.analysis.attribution import (
    ATTRIBUTION_COLUMNS,
    STABILITY_COLUMNS,
    attribution_stability,
    token_attributions,
)
from lnsr_viz.testing import tiny_model

SENTENCE = "the movie was great fun"


def test_token_attributions_are_tidy_and_complete():
    base, tok = tiny_model("bert")
    tuned, _ = tiny_model("bert", seed=1)
    df = token_attributions(base, tuned, SENTENCE, tok, names=("pretrained", "fine-tuned"), n_steps=64)
    assert list(df.columns) == list(ATTRIBUTION_COLUMNS)
    n_tokens = len(tok(SENTENCE)["input_ids"])
    assert len(df) == 2 * n_tokens
    assert df[df["model"] == "pretrained"]["token"].tolist() == ["[CLS]", "the", "movie", "was", "great", "fun",
                                                                 "[SEP]"]
    for name, model in (("pretrained", base), ("fine-tuned", tuned)):
        rows = df[df["model"] == name]
        assert (rows.loc[rows["token"].isin(["[CLS]", "[SEP]"]), "attribution"] == 0).all()
        target = int(rows["target"].iloc[0])
        enc = tok(SENTENCE, return_tensors="pt")
        ids = enc["input_ids"]
        baseline = torch.where(torch.isin(ids, torch.tensor([2, 3])), ids, torch.zeros_like(ids))
        with torch.no_grad():
            p_x = torch.softmax(model(**enc).logits, -1)[0, target]
            p_b = torch.softmax(model(input_ids=baseline, attention_mask=enc["attention_mask"]).logits,
                                -1)[0, target]
        assert rows["attribution"].sum() == pytest.approx(float(p_x - p_b), abs=1e-6)  # completeness
        assert abs(rows["convergence_delta"].iloc[0]) < 1e-6
        assert rows["attribution_norm"].abs().sum() == pytest.approx(1.0)
        assert rows["target_prob"].iloc[0] == pytest.approx(float(p_x), abs=1e-6)
        assert target == int(rows["predicted"].iloc[0])


def test_layer_integrated_gradients_equals_ig_on_inputs_embeds():
    from captum.attr import IntegratedGradients

    model, tok = tiny_model("bert")
    df = token_attributions(model, None, SENTENCE, tok, target=1, output="logit", n_steps=40)
    enc = tok(SENTENCE, return_tensors="pt")
    emb = model.get_input_embeddings()
    baseline_ids = torch.tensor([[2, 0, 0, 0, 0, 0, 3]])

    def f(embeds, mask):
        return model(inputs_embeds=embeds, attention_mask=mask).logits

    with torch.no_grad():
        x, b = emb(enc["input_ids"]), emb(baseline_ids)
    ig = IntegratedGradients(f).attribute(x, baselines=b, target=1, n_steps=40,
                                          additional_forward_args=(enc["attention_mask"],))
    np.testing.assert_allclose(df["attribution"].to_numpy(), ig.sum(-1)[0].numpy(), rtol=1e-4, atol=1e-7)


def test_zero_noise_leaves_attributions_unchanged():
    model, tok = tiny_model("bert")
    df = attribution_stability(model, None, [SENTENCE, "awful boring plot"], tok, scale=0.0, n_perturb=2,
                               n_steps=8)
    assert list(df.columns) == list(STABILITY_COLUMNS)
    values = df.pivot_table(index="sentence", columns="metric", values="value")
    np.testing.assert_allclose(values["relative_change_mean"], 0.0, atol=1e-12)
    np.testing.assert_allclose(values["sensitivity_max"], 0.0, atol=1e-12)
    np.testing.assert_allclose(values["top_token_kept"], 1.0)
    np.testing.assert_allclose(values["rank_correlation_mean"], 1.0)


def test_attribution_stability_uses_the_same_noise_for_both_models_and_agrees_with_captum():
    model, tok = tiny_model("bert")
    df = attribution_stability(model, model, [SENTENCE], tok, names=("a", "b"), n_perturb=4, n_steps=16)
    wide = df.pivot_table(index="model", columns="metric", values="value")
    pd.testing.assert_series_equal(wide.loc["a"], wide.loc["b"], check_names=False)  # same draws
    assert wide.loc["a", "relative_change_max"] == pytest.approx(wide.loc["a", "sensitivity_max"], rel=1e-5)
    assert wide.loc["a", "relative_change_max"] >= wide.loc["a", "relative_change_mean"] > 0
    bigger = attribution_stability(model, None, [SENTENCE], tok, scale=0.5, n_perturb=4, n_steps=16)
    assert bigger.set_index("metric").loc["relative_change_mean", "value"] > wide.loc["a", "relative_change_mean"]
    assert set(df["noise"]) == {"gaussian"} and set(df["scale"]) == {0.05}


def test_in_manifold_noise_and_other_families():
    for family in ("gpt2", "distilbert"):
        model, tok = tiny_model(family)
        df = attribution_stability(model, None, SENTENCE, tok, noise="in_manifold", n_perturb=2, n_steps=8,
                                   use_captum=False)
        assert "sensitivity_max" not in set(df["metric"]) and np.isfinite(df["value"]).all()
        att = token_attributions(model, None, SENTENCE, tok, n_steps=16)
        assert abs(att["convergence_delta"].iloc[0]) < 1e-4


def test_attribution_errors():
    model, tok = tiny_model("bert")
    with pytest.raises(ValueError, match=r"target=5 must be a class index in \[0, 2\)"):
        token_attributions(model, None, SENTENCE, tok, target=5)
    with pytest.raises(ValueError, match="needs one non-empty sentence"):
        token_attributions(model, None, "  ", tok)
    with pytest.raises(ValueError, match="a tokenizer is needed for model_a"):
        token_attributions(model, None, SENTENCE)
    with pytest.raises(ValueError, match="'noise' parameter of attribution_stability must be one of"):
        attribution_stability(model, None, SENTENCE, tok, noise="uniform")
    with pytest.raises(ValueError, match="names must give one label per model"):
        token_attributions(model, model, SENTENCE, tok, names=("only one",))

"""The theory link: the Hutchinson Jacobian estimator against LinearStack's closed form and against exact Jacobians
(torch.autograd.functional.jacobian) of a tiny nonlinear token-mixing stack and a tiny BERT; the small-noise identity
and where it breaks; the Hutchinson Hessian trace against exact traces of quadratics and of a classifier head's
Hessian; theory_table across a synthetic run store; and the errors."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lnsr_viz.analysis.theory import (
    IDENTITY_COLUMNS,
    hessian_trace,
    hutchinson_trace,
    jacobian_norm,
    small_noise_identity,
    theory_table_from_tables,
)
from lnsr_viz.core.adapter import ModelAdapter
from lnsr_viz.data.text import TextDataset
from lnsr_viz.experiments.store import RunStore
from lnsr_viz.experiments.theory_runs import theory_table
from lnsr_viz.testing import LinearStack, tiny_model, toy_sentences


def _ids(n=6, seq=5, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[::2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# ------------------------------------------------------------------------------------------------ Jacobian
@pytest.mark.parametrize("mode", ["vjp", "jvp"])
@pytest.mark.parametrize("layer,stop", [(0, 3), (1, 3), (0, 2), (2, 3)])
def test_jacobian_estimate_matches_the_linear_stack_closed_form(mode, layer, stop):
    stack = LinearStack(dim=8, gains=(2.0, 0.5, 1.5))
    est = jacobian_norm(ModelAdapter(stack, blocks="blocks"), _ids(), layer=layer, stop=stop, n_probes=3, mode=mode)
    assert est.fro2 == pytest.approx(stack.jacobian_fro(layer, stop) ** 2, rel=1e-10)
    assert est.fro == pytest.approx(stack.jacobian_fro(layer, stop), rel=1e-10)
    assert est.n_examples == 6 and est.per_example.shape == (6,)


class _MixBlock(nn.Module):
    """h -> tanh(h W + mean over real tokens of h U): nonlinear and mixes tokens, so J is not block-diagonal."""

    def __init__(self, dim: int, gen: torch.Generator) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim, dim, generator=gen, dtype=torch.float64) / dim**0.5)
        self.u = nn.Parameter(torch.randn(dim, dim, generator=gen, dtype=torch.float64) / dim**0.5)

    def forward(self, hidden_states, attention_mask=None):
        m = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
        pooled = (hidden_states * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
        return torch.tanh(hidden_states @ self.w + pooled @ self.u)


class _MixStack(nn.Module):
    def __init__(self, dim=6, n_blocks=2, vocab=30, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim, dtype=torch.float64)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab, dim, generator=gen, dtype=torch.float64))
        self.blocks = nn.ModuleList(_MixBlock(dim, gen) for _ in range(n_blocks))

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h, attention_mask)
        return {"logits": h[:, 0]}


def _exact_per_token_fro2(adapter, inputs, layer, stop):
    """Mean over examples of ||M J P||_F^2 / T from the full Jacobian (torch.autograd.functional.jacobian)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    values = []
    for i in range(inputs["input_ids"].shape[0]):
        one = {k: v[i:i + 1] for k, v in inputs.items()}  # keeps the batch's padding
        with torch.no_grad():
            cap = adapter.capture(one)
        real = cap.mask[0].bool()

        def f(x, cap=cap):
            return adapter.replay(cap, x[None], start=layer, stop=stop)[-1][0]

        with sdpa_kernel(SDPBackend.MATH):  # vmap over the fused CPU attention kernel is not supported
            jac = torch.autograd.functional.jacobian(f, cap.hidden[layer][0].detach(), vectorize=True)
        jac = jac[real][:, :, real]  # (seq, d, seq, d) -> real tokens only
        values.append(float((jac.double() ** 2).sum()) / int(real.sum()))
    return float(np.mean(values))


@pytest.mark.parametrize("mode", ["vjp", "jvp"])
def test_jacobian_estimate_matches_the_exact_jacobian_of_a_nonlinear_token_mixing_stack(mode):
    stack = _MixStack()
    adapter = ModelAdapter(stack, blocks="blocks")
    inputs = _ids(n=4, seq=5, vocab=30)
    exact = _exact_per_token_fro2(adapter, inputs, 0, 2)
    est = jacobian_norm(adapter, inputs, n_probes=600, mode=mode, seed=1, max_rows=2400)
    assert abs(est.fro2 - exact) < 4 * est.se
    assert est.se < 0.03 * exact


def test_jacobian_estimate_matches_the_exact_jacobian_of_a_tiny_bert_with_padding():
    model, tok = tiny_model("bert", n_layers=2, hidden=16)
    texts = ["good film", "the acting was really quite bad and boring"]
    est = jacobian_norm(model, texts, tok, layer=0, n_probes=200, seed=2, dtype=torch.float64, max_rows=400)
    enc = dict(tok(texts, padding=True, return_tensors="pt"))
    m64 = ModelAdapter(model.double())
    exact = _exact_per_token_fro2(m64, enc, 0, 2)
    assert abs(est.fro2 - exact) < 4 * est.se
    assert est.se < 0.05 * exact
    assert next(model.parameters()).dtype == torch.float64  # (we cast it ourselves above, for the reference)


def test_jacobian_estimate_leaves_the_model_as_it_was():
    model, tok = tiny_model("bert")
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    jacobian_norm(model, ["good film"], tok, n_probes=2)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_jacobian_errors():
    model, tok = tiny_model("bert", n_layers=2)
    with pytest.raises(ValueError, match=r"stop=1 must be above layer=1"):
        jacobian_norm(model, ["good"], tok, layer=1, stop=1)
    with pytest.raises(ValueError, match=r"layer=2 must be an int between 0 and 1"):
        jacobian_norm(model, ["good"], tok, layer=2)
    with pytest.raises(ValueError, match="'mode' parameter of jacobian_norm must be one of"):
        jacobian_norm(model, ["good"], tok, mode="exact")
    with pytest.raises(ValueError, match="needs tokenizer="):
        jacobian_norm(model, ["good"])


# ------------------------------------------------------------------------------------------------ identity
def test_small_noise_identity_holds_at_every_sigma_for_a_linear_stack():
    stack = LinearStack(dim=8, gains=(2.0, 0.5, 1.5))
    df = small_noise_identity(ModelAdapter(stack, blocks="blocks"), _ids(n=12), sigmas=(10.0, 1.0, 1e-3, 1e-6),
                              n_draws=32, tolerance=0.1)
    assert list(df.columns) == list(IDENTITY_COLUMNS)
    assert (df["regime"] == "holds").all()
    np.testing.assert_allclose(df["jacobian_fro2"], 18.0)
    assert list(df["sigma"]) == [10.0, 1.0, 1e-3, 1e-6]


def test_small_noise_identity_breaks_for_large_noise_and_for_float32_round_off():
    model, tok = tiny_model("bert", n_layers=2)
    texts, _ = toy_sentences(8)
    sigmas = (1.0, 1e-2, 1e-4, 1e-8)
    f32 = small_noise_identity(model, texts, tok, sigmas=sigmas, n_probes=32).set_index("sigma")
    assert f32.loc[1e-2, "regime"] == "holds" and f32.loc[1e-4, "regime"] == "holds"
    assert abs(f32.loc[1e-2, "ratio"] - 1) < 0.1
    assert f32.loc[1.0, "regime"] == "breaks: nonlinear"
    assert f32.loc[1e-8, "regime"] == "breaks: round-off" and f32.loc[1e-8, "ratio"] > 2
    f64 = small_noise_identity(model, texts, tok, sigmas=sigmas, n_probes=32, dtype=torch.float64).set_index("sigma")
    assert f64.loc[1e-8, "regime"] == "holds"  # float64 pushes the round-off floor far down
    assert (f64["dtype"] == "float64").all() and (f32["dtype"] == "float32").all()
    assert next(model.parameters()).dtype == torch.float32  # the cast ran on a copy


def test_small_noise_identity_errors():
    model, tok = tiny_model("bert")
    with pytest.raises(ValueError, match="non-empty sequence of positive floats"):
        small_noise_identity(model, ["good"], tok, sigmas=0.1)
    with pytest.raises(ValueError, match=r"The 'sigmas' parameter of small_noise_identity must be a float in the "
                                         r"range \(0.0, inf\)"):
        small_noise_identity(model, ["good"], tok, sigmas=(0.1, 0.0))


# ------------------------------------------------------------------------------------------------ Hessian
def test_hutchinson_trace_is_exact_for_a_diagonal_quadratic_with_rademacher_probes():
    diag = torch.linspace(-2.0, 5.0, 20, dtype=torch.float64)
    x = torch.randn(20, dtype=torch.float64, requires_grad=True)
    est = hutchinson_trace(lambda: 0.5 * (diag * x * x).sum() + x.sum(), [x], n_probes=3)
    assert est.trace == pytest.approx(float(diag.sum()), abs=1e-10)
    assert est.se == pytest.approx(0.0, abs=1e-10)


def test_hutchinson_trace_matches_the_trace_of_a_general_quadratic():
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(15, 15, generator=gen, dtype=torch.float64)
    a = b @ b.T / 15 + torch.diag(torch.linspace(0, 3, 15, dtype=torch.float64))
    x = nn.Parameter(torch.randn(5, 3, generator=gen, dtype=torch.float64))  # the Hessian is over all 15 entries
    y = nn.Parameter(torch.randn(2, generator=gen, dtype=torch.float64))  # enters linearly: zero Hessian block

    def loss():
        v = x.reshape(-1)
        return 0.5 * v @ a @ v + (y * v[:2]).sum()

    est = hutchinson_trace(loss, [x, y], n_probes=2000, seed=3)
    exact = float(torch.trace(a))
    assert abs(est.trace - exact) < 4 * est.se and est.se < 0.05 * exact
    assert est.n_params == 17
    # weighted terms: 0.25 * loss + 0.75 * loss has the same Hessian
    split = hutchinson_trace(lambda: [(0.25, loss()), (0.75, loss())], [x, y], n_probes=2000, seed=3)
    assert split.trace == pytest.approx(est.trace, rel=1e-10)


def test_hessian_trace_of_a_classifier_head_matches_the_exact_hessian():
    from torch.func import functional_call

    model, tok = tiny_model("bert", n_layers=2, hidden=16)
    model.double()
    texts, labels = toy_sentences(10)
    data = TextDataset(texts, np.array(labels), "toy")
    est = hessian_trace(model, data, tok, params="classifier", n_probes=300, seed=1, batch_size=5)
    assert est.param_names == ["classifier.weight", "classifier.bias"]
    enc = dict(tok(texts, padding=True, return_tensors="pt"))
    enc["labels"] = torch.tensor(labels)
    names = est.param_names
    shapes = [dict(model.named_parameters())[n].shape for n in names]
    flat0 = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in names])

    def loss(flat):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            parts[n] = flat[i:i + k].reshape(s)
            i += k
        return functional_call(model, parts, kwargs=enc).loss

    model.eval()
    exact = float(torch.trace(torch.autograd.functional.hessian(loss, flat0)))
    assert abs(est.trace - exact) < 4 * est.se and est.se < 0.1 * abs(exact)
    assert est.n_params == flat0.numel()


def test_hessian_trace_parameter_selection_and_errors():
    model, tok = tiny_model("bert")
    texts, labels = toy_sentences(4)
    data = TextDataset(texts, np.array(labels), "toy")
    est = hessian_trace(model, data, tok, params=["*.layer.1.output.*"], n_probes=2)
    assert est.param_names and all(".layer.1.output." in n for n in est.param_names)
    est = hessian_trace(model, data, tok, params=lambda n: n.endswith("bias") and "classifier" in n, n_probes=2)
    assert est.param_names == ["classifier.bias"]
    with pytest.raises(ValueError, match=r"params='classifer' matches none of the model's .* parameter tensors; "
                                         r"names look like \['bert.embeddings"):
        hessian_trace(model, data, tok, params="classifer")
    with pytest.raises(ValueError, match="needs labelled data"):
        hessian_trace(model, texts, tok)
    assert all(p.requires_grad for p in model.parameters()) and not model.training


# ------------------------------------------------------------------------------------------------ across runs
def _fake_store(root, n_runs=5):
    store = RunStore(root)
    for i in range(n_runs):
        sens = 0.1 + 0.05 * i
        gap = 0.02 + 0.03 * i + (0.01 if i == 2 else 0.0)
        cfg = {"method": "vanilla" if i % 2 else "lnsr", "seed": i, "data": {"in_domain": "movie"}}
        metrics = pd.DataFrame({"domain": ["movie", "amazon", "tweets"], "metric": "accuracy",
                                "value": [0.8, 0.8 - 0.1 * i, 0.7 - 0.1 * i]})
        history = pd.DataFrame({"epoch": [1, 2], "gap": [0.5, gap], "train_accuracy": [0.9, 0.95],
                                "val_accuracy": [0.4, 0.95 - gap]})
        profile = pd.DataFrame({"model": "m", "injection_layer": [0, 0, 0, 1, 1], "layer": [0, 1, 2, 1, 2],
                                "noise": "gaussian", "scale": 0.05,
                                "change_rel": [0.05, 0.07, sens, 0.05, 9.0]})
        store.save(cfg, metrics=metrics, history=history, profile=profile,
                   extra={"jacobian_fro2": 10 * sens + 1, "seconds": 1.0})
    store.save({"method": "pretrained", "seed": None}, metrics=pd.DataFrame(columns=["domain", "metric", "value"]),
               profile=pd.DataFrame({"model": "p", "injection_layer": [0], "layer": [2], "noise": "gaussian",
                                     "scale": 0.05, "change_rel": [0.2]}))
    return store


def test_theory_table_relates_stability_and_gaps_across_runs(tmp_path):
    store = _fake_store(tmp_path)
    result = theory_table(store, n_boot=300)
    runs = result.runs
    assert len(runs) == 6
    lnsr = runs[runs["seed"] == 4].iloc[0]
    assert lnsr["noise_sensitivity"] == pytest.approx(0.3)  # top layer, injection layer 0 (not 9.0 from layer 1)
    assert lnsr["generalisation_gap"] == pytest.approx(0.14)  # last epoch
    assert lnsr["ood_gap"] == pytest.approx(0.8 - np.mean([0.4, 0.3]))
    assert lnsr["jacobian_fro2"] == pytest.approx(4.0)
    assert math.isnan(lnsr["hessian_trace"])
    pre = runs[runs["method"] == "pretrained"].iloc[0]
    assert pre["noise_sensitivity"] == pytest.approx(0.2) and math.isnan(pre["generalisation_gap"])
    corr = result.correlations.set_index(["x", "y"])
    row = corr.loc[("noise_sensitivity", "jacobian_fro2")]
    assert row["n"] == 6 - 1 and row["pearson_r"] == pytest.approx(1.0)
    assert row["pearson_ci_low"] == pytest.approx(1.0) and row["spearman_rho"] == pytest.approx(1.0)
    gap = corr.loc[("noise_sensitivity", "generalisation_gap")]
    assert gap["spearman_rho"] == pytest.approx(1.0) and 0.9 < gap["pearson_r"] < 1.0
    assert gap["pearson_ci_low"] <= gap["pearson_r"] <= gap["pearson_ci_high"]
    ood = corr.loc[("noise_sensitivity", "ood_gap")]
    assert ood["pearson_r"] == pytest.approx(1.0)
    assert ("hessian_trace", "ood_gap") not in corr.index  # never stored
    assert result.settings["injection_layer"] == 0


def test_theory_table_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no complete runs"):
        theory_table(RunStore(tmp_path / "empty"))
    store = _fake_store(tmp_path / "s")
    store.save({"method": "x", "seed": 9}, metrics=pd.DataFrame(columns=["domain", "metric", "value"]),
               profile=pd.DataFrame({"model": "p", "injection_layer": [0], "layer": [2], "noise": "gaussian",
                                     "scale": 0.1, "change_rel": [0.2]}))
    with pytest.raises(ValueError, match=r"several 'scale' values \[0.05, 0.1\]; choose one with scale="):
        theory_table(store)
    assert len(theory_table(store, scale=0.05, n_boot=50).runs) == 7
    with pytest.raises(ValueError, match="no stored profile rows with scale=0.2"):
        theory_table(store, scale=0.2)


def test_theory_table_from_plain_tables_needs_no_store():
    runs = pd.DataFrame({"run_id": ["r1", "r2", "r3", "r4"], "method": ["a", "b", "c", "d"], "seed": [0, 1, 2, 3],
                         "data.in_domain": "movie"})
    profile = pd.DataFrame({"run_id": np.repeat(["r1", "r2", "r3", "r4"], 2), "injection_layer": 0,
                            "layer": [0, 2] * 4, "change_rel": [0.0, 0.1, 0.0, 0.2, 0.0, 0.3, 0.0, 0.4]})
    history = pd.DataFrame({"run_id": ["r1", "r2", "r3", "r4"], "epoch": 1, "gap": [0.05, 0.10, 0.15, 0.20]})
    metrics = pd.DataFrame({"run_id": np.repeat(["r1", "r2", "r3", "r4"], 2), "domain": ["movie", "nyt"] * 4,
                            "metric": "accuracy", "value": [0.9, 0.8, 0.9, 0.7, 0.9, 0.6, 0.9, 0.5]})
    extras = pd.DataFrame({"run_id": ["r1", "r2", "r3", "r4"], "jacobian_fro2": [1.0, 2.0, math.inf, 4.0],
                           "hessian_trace": ["x", None, 3.0, 4.0]})
    result = theory_table_from_tables(runs, profile=profile, history=history, metrics=metrics, extras=extras,
                                      n_boot=50)
    table = result.runs.set_index("run_id")
    assert table["noise_sensitivity"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert table["ood_gap"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert table["jacobian_fro2"].iloc[:2].tolist() == [1.0, 2.0] and math.isnan(table.loc["r3", "jacobian_fro2"])
    assert table["hessian_trace"].isna().tolist() == [True, True, False, False]  # a string or None is no number
    corr = result.correlations.set_index(["x", "y"])
    assert corr.loc[("noise_sensitivity", "generalisation_gap"), "pearson_r"] == pytest.approx(1.0)
    assert corr.loc[("noise_sensitivity", "jacobian_fro2"), "n"] == 3
    with pytest.raises(ValueError, match="no runs to relate"):
        theory_table_from_tables(runs.iloc[:0], profile=profile, history=history, metrics=metrics)


def test_the_store_wrapper_gives_what_the_tables_give(tmp_path):
    from lnsr_viz.experiments.theory_runs import stored_extras

    store = _fake_store(tmp_path)
    runs = store.list_runs()
    direct = theory_table_from_tables(runs, profile=store.load_table("profile"), history=store.load_table("history"),
                                      metrics=store.load_table("metrics"),
                                      extras=stored_extras(store, runs["run_id"]), n_boot=100)
    via_store = theory_table(tmp_path, n_boot=100)  # a path is opened read-only
    pd.testing.assert_frame_equal(direct.runs, via_store.runs)
    pd.testing.assert_frame_equal(direct.correlations, via_store.correlations)


def test_theory_measurements_give_the_extra_entries_theory_table_reads():
    from lnsr_viz.analysis.theory import EXTRA_KEYS, theory_measurements

    model, tok = tiny_model("bert")
    texts, labels = toy_sentences(6)
    extra = theory_measurements(model, TextDataset(texts, np.array(labels), "toy"), tok, n_probes=2,
                                hessian_params="classifier")
    assert set(EXTRA_KEYS) <= set(extra) and extra["jacobian_fro2"] > 0 and math.isfinite(extra["hessian_trace"])


@pytest.mark.slow
def test_the_small_noise_identity_on_the_packaged_minilm(lnsr_home):
    from lnsr_viz.data.models import load_model
    from lnsr_viz.data.text import load_domain

    model, tok = load_model("minilm")
    texts = load_domain("movie").texts[:4]
    df = small_noise_identity(model, texts, tok, sigmas=(1e-2, 1e-7), n_probes=32, n_draws=16).set_index("sigma")
    assert df.loc[1e-2, "regime"] == "holds"  # |ratio - 1| <= 0.1
    assert df.loc[1e-7, "regime"] == "breaks: round-off" and df.loc[1e-7, "ratio"] > 5  # float32 round-off

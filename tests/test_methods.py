"""The LNSR regulariser: the penalty's known value on a linear stack, its gradient against finite differences,
invariants (zero noise -> zero penalty even with dropout; lam = 0 -> vanilla loss), and parameter errors."""

import pytest
import torch

from lnsr_viz.core.inputs import tokenize
from lnsr_viz.methods import LNSR, Vanilla, get_method
from lnsr_viz.testing import LinearStack, tiny_model, toy_sentences


def _linear_batch(n=6, seq=5):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (n, seq), generator=gen)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[::2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(n) % 2}


@pytest.mark.parametrize(("k", "weights"), [(0, "uniform"), (1, "increasing"), (0, [0.0, 0.0, 1.0])])
def test_penalty_on_a_linear_stack_has_the_closed_form_value(k, weights):
    stack = LinearStack(dim=8, gains=(2.0, 0.5, 3.0))
    batch = _linear_batch()
    lnsr = LNSR(lam=1.0, injection_layer=k, scale=0.1, layer_weights=weights, relative=False)
    lnsr.setup(stack)  # a plain module: the adapter finds its ModuleList of blocks
    assert lnsr._adapter.n_layers == 3
    parts = lnsr(stack, batch)
    with torch.no_grad():
        h_k = stack.embed(batch["input_ids"])
        for block in stack.blocks[:k]:
            h_k = block(h_k)
    mask = batch["attention_mask"].bool()
    sq_norm = h_k.pow(2).sum(-1)[mask]  # per real token
    n = 3 - k
    if weights == "uniform":
        w = [1 / n] * n
    elif weights == "increasing":
        w = [i / sum(range(1, n + 1)) for i in range(1, n + 1)]
    else:
        w = weights
    expected = 0.0
    for i in range(n):
        gain2 = torch.prod(torch.tensor(stack.gains[k:k + i + 1], dtype=torch.float64) ** 2)
        expected += w[i] * float((0.1**2 * sq_norm * gain2 / 8).mean())  # mean over 8 dims, then over tokens
    assert float(parts.reg_loss) == pytest.approx(expected, rel=1e-9)
    assert float(parts.loss.detach()) == pytest.approx(float(parts.task_loss) + expected, rel=1e-9)


def test_gradient_matches_finite_differences_on_a_tiny_transformer():
    model, tok = tiny_model("bert", n_layers=2, hidden=16)
    model.double().eval()
    texts, labels = toy_sentences(4)
    batch = tokenize(tok, texts, max_length=32, model=model)
    batch["labels"] = torch.tensor(labels)
    lnsr = LNSR(lam=3.0, injection_layer=0, scale=0.2, scale_kind="absolute", relative=False, seed=0)
    lnsr.setup(model)

    def loss_value():
        lnsr._generator.manual_seed(123)  # the same noise draw every evaluation
        return lnsr(model, batch).loss

    loss = loss_value()
    model.zero_grad()
    loss.backward()
    params = [model.bert.encoder.layer[0].attention.self.query.weight, model.bert.encoder.layer[1].output.dense.bias,
              model.bert.embeddings.word_embeddings.weight]
    eps = 1e-6
    for p in params:
        flat = p.data.view(-1)
        for idx in (0, flat.numel() // 2, flat.numel() - 1):
            old = flat[idx].item()
            with torch.no_grad():
                flat[idx] = old + eps
                up = loss_value().item()
                flat[idx] = old - eps
                down = loss_value().item()
                flat[idx] = old
            numeric = (up - down) / (2 * eps)
            assert p.grad.view(-1)[idx].item() == pytest.approx(numeric, rel=1e-4, abs=1e-8)


def test_zero_noise_gives_zero_penalty_even_with_dropout_in_training_mode():
    model, tok = tiny_model("bert", n_layers=2, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    model.train()
    texts, labels = toy_sentences(6)
    batch = tokenize(tok, texts, max_length=32, model=model)
    batch["labels"] = torch.tensor(labels)
    same = LNSR(scale=0.0)
    same.setup(model)
    assert float(same(model, batch).reg_loss) == 0.0
    independent = LNSR(scale=0.0, dropout="independent")
    independent.setup(model)
    assert float(independent(model, batch).reg_loss) > 0.0


def test_lam_zero_equals_vanilla_and_penalty_grows_with_noise():
    model, tok = tiny_model("electra", n_layers=2)
    texts, labels = toy_sentences(6)
    batch = tokenize(tok, texts, max_length=32, model=model)
    batch["labels"] = torch.tensor(labels)
    vanilla = Vanilla()(model, batch)
    lnsr0 = LNSR(lam=0.0)
    lnsr0.setup(model)
    parts = lnsr0(model, batch)
    assert float(parts.loss) == pytest.approx(float(vanilla.loss), rel=1e-12)
    regs = []
    for scale in (0.01, 0.05, 0.2):
        m = LNSR(scale=scale)
        m.setup(model)
        regs.append(float(m(model, batch).reg_loss))
    assert regs[0] < regs[1] < regs[2]


def test_relative_and_sum_normalisations():
    model, tok = tiny_model("bert", n_layers=2, hidden=32)
    texts, labels = toy_sentences(6)
    batch = tokenize(tok, texts, max_length=32, model=model)
    batch["labels"] = torch.tensor(labels)
    values = {}
    for reduction in ("mean", "sum"):
        m = LNSR(reduction=reduction, relative=False, seed=1)
        m.setup(model)
        values[reduction] = float(m(model, batch).reg_loss)
    assert values["sum"] == pytest.approx(32 * values["mean"], rel=1e-5)
    rel = LNSR(relative=True, scale=0.05, seed=1)
    rel.setup(model)
    # a relative penalty of a 5% perturbation is of order 0.05^2, whatever the hidden-state norms are
    assert 1e-5 < float(rel(model, batch).reg_loss) < 0.05


def test_lnsr_and_method_errors():
    with pytest.raises(ValueError, match="'lam' parameter of LNSR must be a float in the range"):
        LNSR(lam=-1)
    with pytest.raises(ValueError, match="'noise' parameter of LNSR must be one of"):
        LNSR(noise="pink")
    with pytest.raises(ValueError, match="'layer_weights' parameter"):
        LNSR(layer_weights="decreasing")
    model, _ = tiny_model("bert", n_layers=2)
    with pytest.raises(ValueError, match="injection_layer=2 must be an int between 0 and 1"):
        LNSR(injection_layer=2).setup(model)
    with pytest.raises(ValueError, match="2 finite non-negative entries"):
        LNSR(layer_weights=[1.0]).setup(model)
    with pytest.raises(ValueError, match="Unknown method 'lnrs'. Expected one of"):
        get_method("lnrs")
    with pytest.raises(ValueError, match="Bad parameters for method 'lnsr'"):
        get_method("lnsr", sigma=0.1)
    assert get_method("lnsr", lam=2.0).params()["lam"] == 2.0

"""The rival methods of lnsr_viz.methods (L2-SP, Mixout, SMART, R3F, R-Drop, NoisyTune, HyPe, ChildTuning).

Covered, one invariant per method that a wrong implementation would fail:
Mixout with p=0 trains exactly like vanilla, and its mixed weights are the documented two-valued mixture with the
right mean; L2-SP is zero at the pre-trained point, its gradient is alpha * (w - w0), the new head is excluded;
SMART's ascent step increases the divergence it maximises and moves by the documented step; R3F / R-Drop terms are
exactly zero with noise / dropout off and positive otherwise; NoisyTune moves every matrix by at most
0.5 * lambda * std(w), spread like a uniform; ChildTuning-F keeps a binomially plausible fraction p of gradient
entries scaled by 1/p, ChildTuning-D keeps the top-p Fisher entries of the blocks only; HyPe changes the output in
training mode only. Then: combinations (names, parameter routing, refusals, LNSR + Mixout replaying the same masks),
every method through FineTuner leaving no hooks behind, and every documented bad input.
"""

import json
import math

import numpy as np
import pytest
import torch

from lnsr_viz.core.inputs import tokenize
from lnsr_viz.data.text import TextDataset
from lnsr_viz.methods import (
    L2SP,
    LNSR,
    METHODS,
    R3F,
    RIVALS,
    SMART,
    ChildTuning,
    Combined,
    HyPe,
    Mixout,
    NoisyTune,
    RDrop,
    Vanilla,
    compose,
    get_method,
)
from lnsr_viz.methods.base import pretrained_parameters, symmetric_kl
from lnsr_viz.testing import tiny_model, toy_sentences
from lnsr_viz.training.loop import FineTuner

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _batch(model, tok, n=6, seed=0):
    texts, labels = toy_sentences(n, seed=seed)
    batch = tokenize(tok, texts, max_length=32, model=model)
    batch["labels"] = torch.tensor(labels)
    return batch


def _data(n=16, seed=0):
    texts, labels = toy_sentences(n, seed=seed)
    return TextDataset(texts=texts, labels=np.array(labels), name="toy")


def _fit(method, params=None, *, family="bert", seed=3, **model_kw):
    model, tok = tiny_model(family, seed=0, **model_kw)
    FineTuner(method, method_params=params or {}, epochs=1, batch_size=8, lr=1e-3, seed=seed,
              progress=False).fit(model, tok, _data())
    return model


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ------------------------------------------------------------------------------------------------ Mixout
def test_mixout_with_p_zero_trains_exactly_like_vanilla_even_with_dropout():
    vanilla = _fit("vanilla")
    mixout0 = _fit("mixout", {"p": 0.0})
    assert _same_weights(vanilla, mixout0)
    mixout = _fit("mixout", {"p": 0.5})
    assert not _same_weights(vanilla, mixout)


@pytest.mark.parametrize("granularity", ["neuron", "element"])
def test_mixout_mixture_has_the_documented_values_frequency_and_mean(granularity):
    torch.manual_seed(0)
    p = 0.3
    w0 = torch.randn(64, 48, dtype=torch.float64)
    w = w0 + torch.randn(64, 48, dtype=torch.float64)
    mix = Mixout(p=p, granularity=granularity)
    draws = torch.stack([mix.mix(w, w0, input_dim=1) for _ in range(400)])
    replaced = torch.isclose(draws, w0.expand_as(draws))
    kept = torch.isclose(draws, ((w - p * w0) / (1 - p)).expand_as(draws))
    assert bool((replaced | kept).all())  # every entry is the pre-trained value or the rescaled current one
    if granularity == "neuron":  # one draw per input unit, shared by all output units
        assert bool((replaced == replaced[:, :1, :]).all())
    n = replaced[:, 0, :].numel()
    frac = float(replaced[:, 0, :].double().mean())
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)
    # E[w_used] = w: the Monte-Carlo mean is within 5 standard errors of w for (nearly) every entry
    se = draws.std(dim=0) / math.sqrt(draws.shape[0])
    assert float(((draws.mean(dim=0) - w).abs() <= 5 * se + 1e-12).double().mean()) > 0.99


def test_mixout_eval_mode_is_the_plain_model_and_teardown_restores_it():
    model, tok = tiny_model("gpt2")  # Conv1D layers, not nn.Linear
    batch = _batch(model, tok)
    model.eval()
    before = model(**batch).logits
    mix = Mixout(p=0.9)
    mix.setup(model)
    assert mix.n_layers_ > 0
    assert torch.equal(model(**batch).logits, before)
    model.train()
    assert not torch.allclose(model(**batch).logits, before)  # (same weights, but mixing is on in training)
    mix.teardown(model)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_mixout_disable_dropout_is_restored():
    model, _ = tiny_model("bert")
    mix = Mixout(p=0.5, disable_dropout=True)
    mix.setup(model)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    mix.teardown(model)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}


# ------------------------------------------------------------------------------------------------ L2-SP
def test_l2sp_is_zero_at_the_pretrained_point_and_its_gradient_is_alpha_times_the_shift():
    model, tok = tiny_model("bert")
    model.double()
    l2sp = L2SP(alpha=0.7)
    l2sp.setup(model)
    assert not any(n.startswith("classifier") for n in l2sp.pretrained_names_)
    assert {n for n, _ in pretrained_parameters(model)} == set(l2sp.pretrained_names_)
    assert float(l2sp.penalty(model).detach()) == 0.0
    parts = l2sp(model, _batch(model, tok))
    assert float(parts.reg_loss) == 0.0
    assert float(parts.loss.detach()) == pytest.approx(float(parts.task_loss), rel=1e-12)

    gen = torch.Generator().manual_seed(1)
    shifts = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            shifts[name] = 0.01 * torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.add_(shifts[name])
    weighted, term = l2sp.weighted_penalty(model)
    expected = 0.5 * sum(float(shifts[n].pow(2).sum()) for n in l2sp.pretrained_names_)
    assert float(term.detach()) == pytest.approx(expected, rel=1e-10)
    assert float(weighted.detach()) == pytest.approx(0.7 * expected, rel=1e-10)
    model.zero_grad()
    weighted.backward()
    for name, p in model.named_parameters():
        if name in l2sp.pretrained_names_:
            torch.testing.assert_close(p.grad, 0.7 * shifts[name], rtol=1e-10, atol=1e-14)
        else:  # the new head is not pulled towards anything
            assert p.grad is None


# ------------------------------------------------------------------------------------------------ SMART
@pytest.mark.parametrize(("norm", "radius"), [("inf", None), ("l2", None), ("inf", 1.5e-2)])
def test_smart_ascent_step_increases_the_divergence_it_maximises(norm, radius):
    model, tok = tiny_model("bert", **NO_DROPOUT)
    model.double().train()
    batch = _batch(model, tok, n=8)
    smart = SMART(noise_var=1e-4, step_size=1e-2, norm=norm, radius=radius, seed=0)
    smart.setup(model)
    with torch.no_grad():
        clean = model(**batch).logits
    v0, v = smart.adversarial_perturbation(model, batch, clean)
    emb = model.get_input_embeddings()

    def divergence(delta):
        handle = emb.register_forward_hook(lambda m, a, out: out + delta)
        try:
            with torch.no_grad():
                return float(smart.divergence(model(**batch).logits, clean))
        finally:
            handle.remove()

    assert divergence(v) > 2 * divergence(v0) > 0
    step = (v - v0).abs().amax(dim=-1) if norm == "inf" else (v - v0).norm(dim=-1)
    real = batch["attention_mask"].bool()
    if radius is None:  # a normalised step of exactly step_size per real token; padding has no gradient
        torch.testing.assert_close(step[real], torch.full_like(step[real], 1e-2), rtol=1e-9, atol=0)
        assert float(step[~real].abs().max()) == 0.0
    else:
        assert float(v.abs().max()) <= radius


def test_smart_loss_parts_and_lam_zero():
    model, tok = tiny_model("bert", **NO_DROPOUT)
    model.train()
    batch = _batch(model, tok)
    vanilla = Vanilla()(model, batch)
    smart = SMART(lam=0.0, seed=0)
    smart.setup(model)
    parts = smart(model, batch)
    assert float(parts.loss.detach()) == pytest.approx(float(vanilla.loss.detach()), rel=1e-6)
    assert float(parts.reg_loss) > 0


def test_smart_bregman_teacher_is_a_moving_average():
    model, tok = tiny_model("bert", **NO_DROPOUT)
    smart = SMART(bregman=True, beta=0.9, seed=0)
    smart.setup(model)
    parts = smart(model.train(), _batch(model, tok))
    assert parts.extras["bregman"] == pytest.approx(0.0, abs=1e-6)  # teacher == student at the start
    w = model.classifier.weight
    old = w.detach().clone()
    shift = torch.zeros_like(old)
    shift[0] = 1.0  # one class only (a shift of every class would not change the softmax)
    with torch.no_grad():
        w.add_(shift)
    smart.before_optimizer_step(model)
    torch.testing.assert_close(smart._ema["classifier.weight"], 0.9 * old + 0.1 * (old + shift))
    assert smart(model, _batch(model, tok)).extras["bregman"] > 0


# ------------------------------------------------------------------------------------------------ R3F, R-Drop
def test_r3f_term_is_zero_without_noise_and_dropout_and_positive_with_noise():
    model, tok = tiny_model("bert", **NO_DROPOUT)
    model.train()
    batch = _batch(model, tok)
    off = R3F(eps=0.0, seed=0)
    off.setup(model)
    assert float(off(model, batch).reg_loss) == 0.0
    on = R3F(eps=1e-2, seed=0)
    on.setup(model)
    parts = on(model, batch)
    assert float(parts.reg_loss) > 0
    assert float(parts.loss.detach()) == pytest.approx(float(parts.task_loss) + float(parts.reg_loss), rel=1e-6)


def test_r3f_gives_regression_heads_no_term():
    model, tok = tiny_model("bert", num_labels=1)
    batch = _batch(model, tok)
    batch["labels"] = batch["labels"].double().float()
    r3f = R3F(eps=1e-2, seed=0)
    r3f.setup(model)
    assert float(r3f(model.train(), batch).reg_loss) == 0.0


def test_rdrop_term_is_zero_without_dropout_and_positive_with_it():
    model, tok = tiny_model("bert", **NO_DROPOUT)
    batch = _batch(model, tok)
    parts = RDrop(alpha=1.0)(model.train(), batch)
    assert float(parts.reg_loss) == 0.0
    dropout_model, _ = tiny_model("bert", hidden_dropout_prob=0.3)
    parts = RDrop(alpha=2.0)(dropout_model.train(), batch)
    assert float(parts.reg_loss) > 0
    assert float(parts.loss.detach()) == pytest.approx(float(parts.task_loss) + 2.0 * float(parts.reg_loss), rel=1e-6)
    a = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    b = torch.tensor([[0.0, 0.0], [1.0, 1.5]])
    assert float(symmetric_kl(a, b, reduction="sum")) == pytest.approx(2 * float(symmetric_kl(a, b)), rel=1e-6)


# ------------------------------------------------------------------------------------------------ NoisyTune
def test_noisytune_moves_every_matrix_by_the_documented_amount():
    from scipy import stats

    model, _ = tiny_model("bert", hidden=64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tune = NoisyTune(lam=0.15, seed=0)
    tune.setup(model)
    assert set(tune.perturbed_) == {n for n, p in before.items() if p.numel() >= 2}
    for name, p in model.named_parameters():
        delta = p.detach() - before[name]
        if name not in tune.perturbed_:
            assert torch.equal(delta, torch.zeros_like(delta))
            continue
        bound = 0.5 * 0.15 * float(before[name].std())
        assert float(delta.abs().max()) <= bound * (1 + 1e-5) + 1e-12
        if before[name].numel() >= 4096 and bound > 0:  # spread: U(-0.5, 0.5) * lam * std(w)
            u = (delta.flatten().double() / (0.15 * float(before[name].std()))).numpy()
            assert abs(u.mean()) < 0.02 and abs(u.var() - 1 / 12) < 0.01
            assert stats.kstest(u, stats.uniform(loc=-0.5, scale=1).cdf).pvalue > 1e-3
            assert u.min() < -0.49 and u.max() > 0.49  # the whole interval is used


def test_noisytune_is_reproducible_and_can_spare_the_head():
    a, _ = tiny_model("bert")
    b, _ = tiny_model("bert")
    NoisyTune(seed=5).setup(a)
    NoisyTune(seed=5).setup(b, rank=1)  # the same perturbation on every process
    assert _same_weights(a, b)
    c, _ = tiny_model("bert")
    head = c.classifier.weight.detach().clone()
    NoisyTune(include_head=False).setup(c)
    assert torch.equal(c.classifier.weight, head)


# ------------------------------------------------------------------------------------------------ ChildTuning
def test_childtuning_f_keeps_a_binomial_fraction_of_gradient_entries_scaled_by_one_over_p():
    model, _ = tiny_model("bert")
    p = 0.3
    ct = ChildTuning(p=p, seed=0)
    ct.setup(model)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    ct.before_optimizer_step(model)
    grads = torch.cat([param.grad.flatten() for param in model.parameters()])
    kept = grads != 0
    n = grads.numel()
    assert abs(float(kept.double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close(grads[kept], torch.full_like(grads[kept], 1 / p))
    # masks are the same on every process (they act on gradients DDP has already averaged) and new every step
    other = ChildTuning(p=p, seed=0)
    other.setup(model, rank=1)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    other.before_optimizer_step(model)
    assert torch.equal(torch.cat([q.grad.flatten() for q in model.parameters()]), grads)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    ct.before_optimizer_step(model)
    assert not torch.equal(torch.cat([q.grad.flatten() for q in model.parameters()]), grads)


def test_childtuning_d_masks_the_top_fisher_fraction_of_the_blocks_only():
    model, tok = tiny_model("bert")
    p = 0.2
    ct = ChildTuning(p=p, variant="D")
    assert ct.needs_data and not ChildTuning().needs_data
    ct.setup(model)
    ct.setup_data(model, [_batch(model, tok, seed=s) for s in range(3)])
    block_params = {id(q) for q in model.bert.encoder.parameters()}
    assert {id(q) for q in ct._masks} == block_params
    assert ct.child_fraction_ == pytest.approx(p, abs=2e-3)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    ct.before_optimizer_step(model)
    for name, param in model.named_parameters():
        if id(param) in block_params:
            assert set(param.grad.unique().tolist()) <= {0.0, 1.0}  # masked, not rescaled
        else:
            assert bool((param.grad == 1).all()), name
    with pytest.raises(RuntimeError, match="call setup_data"):
        fresh = ChildTuning(variant="D")
        fresh.setup(model)
        fresh.before_optimizer_step(model)


def test_childtuning_d_through_the_finetuner_uses_the_data_hook():
    model = _fit("childtuning", {"variant": "D", "p": 0.5})
    assert all(torch.isfinite(q).all() for q in model.parameters())


# ------------------------------------------------------------------------------------------------ HyPe
def test_hype_adds_noise_in_training_mode_only():
    model, tok = tiny_model("bert", **NO_DROPOUT)
    batch = _batch(model, tok)
    with torch.no_grad():
        model.train()
        clean_train = model(**batch).logits
        model.eval()
        clean_eval = model(**batch).logits
    hype = HyPe(eps=1e-3, seed=0)
    hype.setup(model)
    with torch.no_grad():
        assert torch.equal(model.eval()(**batch).logits, clean_eval)
        noisy = model.train()(**batch).logits
    assert not torch.equal(noisy, clean_train)
    assert float((noisy - clean_train).abs().max()) < 0.05  # small noise, small change
    hype.teardown(model)
    assert all(not block._forward_pre_hooks for block in model.bert.encoder.layer)
    with torch.no_grad():
        assert torch.equal(model.train()(**batch).logits, clean_train)


def test_hype_with_zero_eps_is_the_plain_model():
    model, tok = tiny_model("albert", classifier_dropout_prob=0.0, **NO_DROPOUT)  # one shared block
    batch = _batch(model, tok)
    model.train()
    with torch.no_grad():
        clean = model(**batch).logits
    hype = HyPe(eps=0.0)
    hype.setup(model)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, clean)


# ------------------------------------------------------------------------------------------------ composition
def test_combination_names_parameters_and_loss():
    combo = get_method("mixout+lnsr", lam=2.0, p=0.5)
    assert isinstance(combo, Combined) and combo.name == "lnsr+mixout"
    assert combo.params()["lnsr"]["lam"] == 2.0 and combo.params()["mixout"]["p"] == 0.5
    json.dumps(combo.params())
    assert "lnsr+mixout" in METHODS and "lnsr+nope" not in METHODS
    routed = get_method("lnsr+l2sp", **{"lnsr.seed": 4}, l2sp={"alpha": 2.0})
    assert routed.params()["lnsr"]["seed"] == 4 and routed.params()["l2sp"]["alpha"] == 2.0
    assert compose(LNSR(lam=1.0), L2SP(alpha=1.0)).name == "lnsr+l2sp"

    model, tok = tiny_model("bert", **NO_DROPOUT)
    batch = _batch(model, tok)
    combo = compose("lnsr", "l2sp", lam=3.0, alpha=5.0, **{"lnsr.seed": 0})
    combo.setup(model)
    with torch.no_grad():
        model.classifier.weight.add_(0.1)
        model.bert.pooler.dense.weight.add_(0.1)
    parts = combo(model.train(), batch)
    sp = 0.5 * 0.01 * model.bert.pooler.dense.weight.numel()
    assert parts.extras["l2sp.reg"] == pytest.approx(sp, rel=1e-4)
    lnsr_reg = parts.extras["lnsr.reg"]
    assert lnsr_reg > 0
    assert float(parts.reg_loss) == pytest.approx(3.0 * lnsr_reg + 5.0 * sp, rel=1e-4)
    assert float(parts.loss.detach()) == pytest.approx(float(parts.task_loss) + float(parts.reg_loss), rel=1e-5)


def test_lnsr_plus_mixout_replays_the_same_mixout_masks():
    """With zero noise the LNSR penalty is exactly 0 although Mixout and dropout draw new masks in every pass."""
    model, tok = tiny_model("bert", hidden_dropout_prob=0.2)
    combo = get_method("lnsr+mixout", scale=0.0, p=0.5)
    combo.setup(model)
    with torch.no_grad():  # move away from the pre-trained point so that the mixing changes the weights
        for q in model.parameters():
            q.add_(0.05)
    assert combo(model.train(), _batch(model, tok)).extras["lnsr.reg"] == 0.0
    combo.teardown(model)


@pytest.mark.parametrize(("name", "match"), [
    ("lnsr+smart", "each runs the model's forward pass its own way"),
    ("rdrop+r3f", "each runs the model's forward pass its own way"),
    ("lnsr+lnsr", "appears twice"),
    ("vanilla+lnsr", "vanilla is the absence of a regulariser"),
    ("lnsr+hype", "HyPe perturbs the input of every block"),
    ("lnsr+mixup", "Unknown method 'mixup' in 'lnsr\\+mixup'"),
])
def test_nonsense_combinations_are_refused(name, match):
    with pytest.raises(ValueError, match=match):
        get_method(name)


def test_combination_parameter_errors():
    with pytest.raises(ValueError, match="'seed' is ambiguous in 'lnsr\\+hype'|Cannot combine"):
        get_method("lnsr+hype", seed=1)
    with pytest.raises(ValueError, match="'seed' is ambiguous in 'smart\\+noisytune'"):
        get_method("smart+noisytune", seed=1)
    with pytest.raises(ValueError, match="No method in 'lnsr\\+mixout' takes a parameter 'alpha'"):
        get_method("lnsr+mixout", alpha=1.0)
    with pytest.raises(ValueError, match="names 'l2sp', which is not part of"):
        get_method("lnsr+mixout", **{"l2sp.alpha": 1.0})
    with pytest.raises(ValueError, match="'p' parameter of Mixout must be a float in the range \\[0.0, 1.0\\)"):
        get_method("lnsr+mixout", p=1.0)


# ------------------------------------------------------------------------------------------------ every method
@pytest.mark.parametrize("name", [*RIVALS, "lnsr+mixout+l2sp+childtuning", "noisytune+smart"])
def test_every_method_trains_through_the_finetuner_and_leaves_no_hooks(name):
    model = _fit(name)
    assert all(torch.isfinite(q).all() for q in model.parameters())
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    method = get_method(name)
    json.dumps(method.params())
    assert method.name == name or "+" in name


@pytest.mark.parametrize(("method", "params", "match"), [
    ("mixout", {"p": 1.0}, "The 'p' parameter of Mixout must be a float in the range \\[0.0, 1.0\\). Got 1.0"),
    ("mixout", {"p": -0.1}, "The 'p' parameter of Mixout must be"),
    ("mixout", {"granularity": "row"}, "The 'granularity' parameter of Mixout must be one of"),
    ("childtuning", {"p": 0.0}, "The 'p' parameter of ChildTuning must be a float in the range \\(0.0, 1.0\\]"),
    ("childtuning", {"variant": "E"}, "The 'variant' parameter of ChildTuning must be one of \\['F', 'D'\\]"),
    ("l2sp", {"alpha": -1.0}, "The 'alpha' parameter of L2SP must be a float in the range \\[0.0, inf\\)"),
    ("noisytune", {"lam": -0.15}, "The 'lam' parameter of NoisyTune must be"),
    ("smart", {"lam": -1}, "The 'lam' parameter of SMART must be"),
    ("smart", {"step_size": -1e-3}, "The 'step_size' parameter of SMART must be"),
    ("smart", {"beta": 1.0}, "The 'beta' parameter of SMART must be a float in the range \\[0.0, 1.0\\)"),
    ("smart", {"n_steps": 0}, "The 'n_steps' parameter of SMART must be an int"),
    ("smart", {"norm": "l1"}, "The 'norm' parameter of SMART must be one of"),
    ("r3f", {"eps": -1e-5}, "The 'eps' parameter of R3F must be a float in the range \\[0.0, inf\\)"),
    ("r3f", {"noise": "pink"}, "The 'noise' parameter of R3F must be one of"),
    ("rdrop", {"alpha": -1}, "The 'alpha' parameter of RDrop must be"),
    ("rdrop", {"reduction": "mean"}, "The 'reduction' parameter of RDrop must be one of \\['sum', 'batchmean'\\]"),
    ("hype", {"eps": -1e-5}, "The 'eps' parameter of HyPe must be"),
    ("hype", {"noise": "pink"}, "The 'noise' parameter of HyPe must be one of"),
    ("smart", {"sigma": 1.0}, "Bad parameters for method 'smart'"),
    ("nope", {}, "Unknown method 'nope'. Expected one of"),
])
def test_bad_parameters_fail_before_training(method, params, match):
    with pytest.raises(ValueError, match=match):
        FineTuner(method, method_params=params)


def test_methods_needing_embeddings_say_so():
    from lnsr_viz.testing import LinearStack

    with pytest.raises(ValueError, match="SMART perturbs the input embeddings and needs a model with "
                                         "get_input_embeddings"):
        SMART().setup(LinearStack(dim=4, gains=(1.0, 1.0)))

"""LNSR's cheaper estimators: the batched pass is exact, the sub-batch estimate is unbiased, ``every=m`` penalises
exactly the m-th steps with ``m x lam``, bad values are refused before any work, and defaults keep run keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lnsr_viz.core.inputs import tokenize
from lnsr_viz.experiments.store import config_hash
from lnsr_viz.methods import LNSR, get_method
from lnsr_viz.testing import tiny_model, toy_sentences

ROOT = Path(__file__).resolve().parents[1]


def _batch(tok, n=8, max_length=12):
    texts, labels = toy_sentences(n, seed=1)
    enc = dict(tokenize(tok, texts, max_length=max_length))
    enc["labels"] = torch.tensor(labels)
    return enc


def _model64(family="bert", n_layers=3):
    model, tok = tiny_model(family, n_layers=n_layers)
    return model.double(), tok


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(method, model, batch, seed=0):
    method.setup(model, seed=seed)
    model.zero_grad()
    parts = method(model, batch)
    parts.loss.backward()
    return parts, _grads(model)


@pytest.mark.parametrize(("k", "fraction", "family"), [(0, 1.0, "bert"), (1, 1.0, "bert"), (0, 0.5, "bert"),
                                                       (0, 1.0, "gpt2")])
def test_batched_pass_gives_the_serial_penalty_and_gradients(k, fraction, family):
    model, tok = _model64(family)
    batch = _batch(tok)
    common = {"lam": 3.0, "injection_layer": k, "dropout": "independent", "fraction": fraction, "seed": 5}
    serial, g_serial = _step(LNSR(**common), model, batch)
    batched_m = LNSR(batched=True, **common)
    batched, g_batched = _step(batched_m, model, batch)
    assert batched_m._adapter is not None
    torch.testing.assert_close(batched.reg_loss, serial.reg_loss, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(batched.task_loss, serial.task_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(batched.logits, serial.logits, rtol=1e-12, atol=1e-14)
    assert float(serial.reg_loss) > 0
    assert g_serial.keys() == g_batched.keys() and len(g_serial) > 10
    for name, g in g_serial.items():
        torch.testing.assert_close(g_batched[name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_batched_capture_returns_the_models_own_output_and_clean_states():
    from lnsr_viz.core.adapter import ModelAdapter

    model, tok = _model64()
    batch = _batch(tok)
    adapter = ModelAdapter(model)
    plain = adapter.capture(batch)
    extra = {}

    def fork(h):
        extra["h"] = h
        return h[:3] * 1.5, torch.tensor([0, 2, 5])

    forked = adapter.capture(batch, fork=(1, fork))
    torch.testing.assert_close(forked.output.logits, plain.output.logits)
    for a, b in zip(forked.hidden, plain.hidden, strict=True):
        torch.testing.assert_close(a, b)
    replayed = adapter.replay(plain, extra["h"][:3] * 1.5, start=1, rows=torch.tensor([0, 2, 5]))
    assert forked.forked is not None and len(forked.forked) == 2
    for a, b in zip(forked.forked, replayed, strict=True):
        torch.testing.assert_close(a, b)


def test_sub_batch_estimate_is_unbiased_for_the_full_penalty():
    model, tok = _model64()
    batch = _batch(tok, n=8)
    # padding varies per sentence, so a ratio-of-means estimate would be biased; the estimator must not be
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 2
    full = LNSR(dropout="independent", scale=0.2)
    sub = LNSR(dropout="independent", scale=0.2, fraction=0.25)
    diffs, estimates = [], []
    with torch.no_grad():
        for seed in range(300):  # the same noise for both (noise first, then the subset, from one generator)
            full.setup(model, seed=seed)
            sub.setup(model, seed=seed)
            f = float(full(model, batch).reg_loss)
            e = float(sub(model, batch).reg_loss)
            diffs.append(e - f)
            estimates.append(e)
    d = torch.tensor(diffs, dtype=torch.float64)
    se = d.std() / len(diffs) ** 0.5
    assert d.std() > 0  # the subsets really vary
    assert abs(float(d.mean())) < 4 * float(se), (float(d.mean()), float(se))
    assert len(set(round(x, 12) for x in estimates)) > 20


def test_sub_batch_mean_over_all_subsets_is_exactly_the_full_penalty():
    # fraction 1/B keeps one sentence per step; for the same noise, the mean over the B subsets is the full penalty
    model, tok = _model64()
    batch = _batch(tok, n=4)
    full = LNSR(dropout="independent", seed=3)
    one = LNSR(dropout="independent", fraction=0.25, seed=3)
    full.setup(model)
    values = []
    with torch.no_grad():
        target = float(full(model, batch).reg_loss)
        for i in range(4):
            one.setup(model)
            one._rows = lambda b, device, i=i: torch.tensor([i], device=device)  # type: ignore[method-assign]
            values.append(float(one(model, batch).reg_loss))
    assert len(set(values)) == 4
    assert sum(values) / 4 == pytest.approx(target, rel=1e-10)


def test_every_m_penalises_exactly_the_m_th_steps_with_m_times_lam():
    model, tok = _model64()
    batch = _batch(tok)
    model.train()
    for m in model.modules():  # no dropout: the penalised steps can be compared with the full method's value
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    lam, m = 2.0, 3
    every = LNSR(lam=lam, every=m, seed=1)
    every.setup(model)
    ref = LNSR(lam=lam, seed=1)
    ref.setup(model)
    applied = []
    for step in range(1, 10):
        parts = every(model, batch)
        if step % m == 0:
            full = ref(model, batch)
            reg = float(full.reg_loss)
            assert reg > 0
            applied.append(step)
            assert float(parts.loss) == pytest.approx(float(full.task_loss) + lam * m * reg, rel=1e-10)
            assert float(parts.reg_loss) == pytest.approx(m * reg, rel=1e-10)
            assert "top_change_rel" in parts.extras
        else:
            assert float(parts.reg_loss) == 0.0
            assert float(parts.loss) == pytest.approx(float(parts.task_loss), rel=1e-12)
            assert parts.extras == {}
    assert applied == [3, 6, 9]
    every.setup(model)  # setup restarts the count
    assert float(every(model, batch).reg_loss) == 0.0
    model.eval()  # eval mode: every call computes the penalty with weight lam
    parts = every(model, batch)
    assert float(parts.reg_loss) > 0 and float(parts.loss) == pytest.approx(
        float(parts.task_loss) + lam * float(parts.reg_loss), rel=1e-10)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"fraction": 0.0}, r"'fraction' parameter of LNSR"),
    ({"fraction": 1.5}, r"'fraction' parameter of LNSR"),
    ({"fraction": -0.2}, r"'fraction' parameter of LNSR"),
    ({"fraction": float("nan")}, r"'fraction' parameter of LNSR"),
    ({"every": 0}, r"'every' parameter of LNSR"),
    ({"every": 1.5}, r"'every' parameter of LNSR"),
    ({"batched": "yes"}, r"'batched' parameter of LNSR must be True or False"),
    ({"batched": True}, r"needs dropout='independent'"),
    ({"fraction": 0.5}, r"needs dropout='independent'"),
])
def test_bad_options_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LNSR(**kwargs)


def test_bad_options_are_refused_before_any_work_from_the_config():
    from lnsr_viz.experiments.config import ExperimentConfig

    with pytest.raises(ValueError, match="'fraction' parameter of LNSR"):
        ExperimentConfig(methods=["vanilla", "lnsr"], method_params={"lnsr": {"fraction": 2.0}})


def test_new_parameters_at_their_defaults_keep_the_run_keys():
    record = json.loads((ROOT / "results/study/runs/027fb239b40b/config.json").read_text())
    stored = record["config"]["method_params"]
    plain = get_method("lnsr", lam=10.0, scale=0.1, scale_kind="absolute")
    spelled = get_method("lnsr", lam=10.0, scale=0.1, scale_kind="absolute", batched=False, fraction=1, every=1)
    assert plain.params() == spelled.params() == stored
    assert {"batched", "fraction", "every"} <= set(plain.get_params())
    key = config_hash({"method": "lnsr", "method_params": plain.params()})
    for change in ({"every": 2}, {"fraction": 0.5, "dropout": "independent"},
                   {"batched": True, "dropout": "independent"}):
        other = get_method("lnsr", lam=10.0, scale=0.1, scale_kind="absolute", **change)
        assert config_hash({"method": "lnsr", "method_params": other.params()}) != key
        assert LNSR(**other.get_params()).params() == other.params()
    combo = get_method("lnsr+mixout")
    assert "every" not in combo.params()["lnsr"] and "every" in combo.get_params()["lnsr"]

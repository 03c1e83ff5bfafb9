"""Hugging Face Trainer integration (lnsr_viz.training.hf_trainer): a tiny run through ``transformers.Trainer``
logs the regulariser next to the loss and reproduces the toolkit's own FineTuner on the same seed;
evaluation keeps the plain task loss; the methods' hooks are removed after training;
bad methods fail before the Trainer is built.

Why the FineTuner and the Trainer runs are comparable exactly: both shuffle the first epoch with
``torch.randperm(n, generator seeded with seed)`` (Trainer through Accelerate's SeedableRandomSampler), pad each
batch to its longest sentence, use torch's AdamW (``optim='adamw_torch'``; Trainer's default fused kernel differs
in the last bits) with bias and LayerNorm weights excluded from weight decay, linear decay without warm-up (the two
warm-up formulas differ) and clipping at ``max_grad_norm``, and the method seeds its noise from the same seed.
Dropout is off because its masks come from torch's global generator, which Trainer's DataLoader also draws from
(one number per epoch for worker seeding), so the two dropout streams are offset; for the same reason Mixout, whose
masks come from that generator too, is not among the compared methods. One epoch is compared: later epochs differ
by design (Trainer reseeds its sampler with ``seed + epoch``, FineTuner continues one generator).
"""

import copy

import numpy as np
import pytest
import torch
from transformers import DataCollatorWithPadding, TrainingArguments

from lnsr_viz.core.inputs import tokenize
from lnsr_viz.data.text import TextDataset
from lnsr_viz.methods import Vanilla
from lnsr_viz.testing import tiny_model, toy_sentences
from lnsr_viz.training.hf_trainer import RegularizationMixin, RegularizedTrainer
from lnsr_viz.training.loop import FineTuner, FineTunerCallback

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
SEED, LR, BATCH, N = 3, 1e-3, 8, 24


class _Tokenized(torch.utils.data.Dataset):
    """Pre-tokenized examples (no padding: the collator pads each batch to its longest, like FineTuner)."""

    def __init__(self, tok, texts, labels):
        enc = tok(list(texts), truncation=True, max_length=64)
        self.items = [{**{k: v[i] for k, v in enc.items()}, "labels": int(labels[i])} for i in range(len(texts))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _Steps(FineTunerCallback):
    def __init__(self):
        self.parts = []

    def on_step_end(self, state, **kw):
        self.parts.append((float(kw["parts"].task_loss), float(kw["parts"].reg_loss)))


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                per_device_train_batch_size=BATCH, num_train_epochs=1, learning_rate=LR, weight_decay=0.01,
                warmup_steps=0, lr_scheduler_type="linear", max_grad_norm=1.0, seed=SEED, optim="adamw_torch",
                disable_tqdm=True, dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


def _trainer(model, tok, tmp_path, method, params=None, **kw):
    texts, labels = toy_sentences(N)
    return RegularizedTrainer(model=model, args=_args(tmp_path, **kw), train_dataset=_Tokenized(tok, texts, labels),
                              processing_class=tok, data_collator=DataCollatorWithPadding(tok), method=method,
                              method_params=params)


@pytest.mark.parametrize(("method", "params"), [
    ("lnsr", {"lam": 5.0}),
    ("smart", {"lam": 3.0, "noise_var": 1e-4, "step_size": 1e-2}),
    ("childtuning", {"p": 0.5}),
    ("lnsr+l2sp", {"lam": 5.0, "alpha": 10.0}),
])
def test_trainer_logs_the_regulariser_and_matches_the_finetuner(tmp_path, method, params):
    model0, tok = tiny_model("bert", seed=0, **NO_DROPOUT)
    texts, labels = toy_sentences(N)
    steps = _Steps()
    ours = copy.deepcopy(model0)
    FineTuner(method, method_params=params, epochs=1, batch_size=BATCH, lr=LR, warmup_ratio=0.0, weight_decay=0.01,
              max_grad_norm=1.0, seed=SEED, progress=False, callbacks=[steps]).fit(
        ours, tok, TextDataset(texts=texts, labels=np.array(labels), name="toy"))

    theirs = copy.deepcopy(model0)
    trainer = _trainer(theirs, tok, tmp_path, method, params)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "reg_loss" in h]
    assert len(logged) == N // BATCH == len(steps.parts)
    for h, (task, reg) in zip(logged, steps.parts):
        assert {"loss", "task_loss", "reg_loss", "learning_rate"} <= set(h)
        assert h["task_loss"] == pytest.approx(task, rel=1e-6)
        assert h["reg_loss"] == pytest.approx(reg, rel=1e-6, abs=1e-12)
    if method != "childtuning":
        assert all(h["reg_loss"] > 0 for h in logged)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_evaluation_reports_the_plain_task_loss(tmp_path):
    model, tok = tiny_model("bert", seed=0)
    texts, labels = toy_sentences(12, seed=4)
    trainer = _trainer(model, tok, tmp_path, "lnsr", {"lam": 5.0}, per_device_eval_batch_size=12)
    metrics = trainer.evaluate(_Tokenized(tok, texts, labels))
    batch = tokenize(tok, texts, max_length=64, model=model)
    batch["labels"] = torch.tensor(labels)
    with torch.no_grad():
        expected = float(Vanilla()(model.eval(), batch).loss)
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)


def test_hooks_are_removed_after_training_and_data_hook_runs(tmp_path):
    model, tok = tiny_model("bert", seed=0)
    trainer = _trainer(model, tok, tmp_path, "hype+childtuning", {"eps": 1e-3, "variant": "D", "p": 0.5})
    trainer.train()
    assert trainer.method.methods[1].child_fraction_ == pytest.approx(0.5, abs=0.01)
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert any("reg_loss" in h for h in trainer.state.log_history)


def test_the_mixin_works_with_another_trainer_subclass(tmp_path):
    from transformers import Trainer

    class Base(Trainer):
        pass

    class Mine(RegularizationMixin, Base):
        pass

    model, tok = tiny_model("bert", seed=0)
    texts, labels = toy_sentences(8)
    trainer = Mine(model=model, args=_args(tmp_path), train_dataset=_Tokenized(tok, texts, labels),
                   processing_class=tok, method="r3f", method_params={"eps": 1e-3})
    trainer.train()
    assert [h for h in trainer.state.log_history if "reg_loss" in h]


@pytest.mark.parametrize(("method", "params", "match"), [
    ("lnrs", {}, "Unknown method 'lnrs'"),
    ("mixout", {"p": 1.5}, "The 'p' parameter of Mixout must be"),
    ("lnsr+smart", {}, "Cannot combine 'lnsr' and 'smart'"),
])
def test_bad_methods_fail_before_the_trainer_is_built(tmp_path, method, params, match):
    model, tok = tiny_model("bert", seed=0)
    with pytest.raises(ValueError, match=match):
        RegularizedTrainer(model=model, args=_args(tmp_path), method=method, method_params=params)


def test_collapse_guard_runs_inside_the_trainer(tmp_path):
    from lnsr_viz.training.collapse import CollapseGuard

    model, tok = tiny_model("bert", seed=0)
    texts, labels = toy_sentences(N)
    guard = CollapseGuard(texts[:8], tok)
    trainer = RegularizedTrainer(model=model, args=_args(tmp_path, num_train_epochs=2),
                                 train_dataset=_Tokenized(tok, texts, labels), processing_class=tok,
                                 data_collator=DataCollatorWithPadding(tok), method="lnsr", method_params={"lam": 5.0},
                                 callbacks=[guard])
    trainer.train()
    rows = [h for h in trainer.state.log_history if "repr_effective_rank" in h]
    assert [round(r["epoch"]) for r in rows] == [1, 2]
    assert guard.initial_rank is not None and guard.initial_rank > 1.0
    rank, cosine = guard.measure(model)  # the last row is the model as training left it
    assert rows[-1]["repr_effective_rank"] == pytest.approx(rank, rel=1e-9)
    assert rows[-1]["repr_mean_cosine"] == pytest.approx(cosine, rel=1e-9)
    logged = [h for h in trainer.state.log_history if "task_loss" in h and round(h["epoch"], 6) <= 1.0]
    loss, task = np.mean([h["loss"] for h in logged]), np.mean([h["task_loss"] for h in logged])
    assert rows[0]["reg_to_task_ratio"] == pytest.approx((loss - task) / task, rel=1e-6)
    assert rows[0]["collapsed"] is False


def test_a_finetuner_callback_is_refused_by_the_trainer(tmp_path):
    model, tok = tiny_model("bert", seed=0)
    with pytest.raises(TypeError, match="FineTunerCallback"):
        RegularizedTrainer(model=model, args=_args(tmp_path), method="lnsr", callbacks=[_Steps()])

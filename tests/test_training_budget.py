"""The step budget of study v2: exactly ``max_steps`` optimizer steps with the schedule laid over them, evaluations
every ``eval_every`` steps, the best validation step's weights kept, a fixed training-score sample, length grouping."""

import numpy as np
import pytest
import torch

from lnsr_viz.data.text import TextDataset
from lnsr_viz.testing import tiny_model, toy_sentences
from lnsr_viz.training.loop import FineTuner, FineTunerCallback


def _data(n=24, seed=0, name="toy"):
    texts, labels = toy_sentences(n, seed=seed)
    return TextDataset(texts=texts, labels=np.array(labels), name=name)


class _Recorder(FineTunerCallback):
    def __init__(self):
        self.lrs, self.snapshots = [], {}

    def on_step_end(self, state, **kw):
        self.lrs.append(state.learning_rate)

    def on_epoch_end(self, state, **kw):  # every evaluation point
        self.snapshots[state.global_step] = {k: v.detach().clone() for k, v in kw["model"].state_dict().items()}


def _fit(validation=True, **kw):
    model, tok = tiny_model("bert", seed=0)
    rec = _Recorder()
    tuner = FineTuner("vanilla", batch_size=8, lr=3e-3, seed=5, progress=False, callbacks=[rec], **kw)
    tuner.fit(model, tok, _data(), _data(16, seed=1, name="val") if validation else None)
    return tuner, model, rec


def test_max_steps_runs_exactly_the_budget_and_the_schedule_uses_it():
    tuner, _, rec = _fit(max_steps=10, epochs=1, warmup_ratio=0.2)  # epochs is ignored: 24 examples = 3 steps/pass
    assert tuner.state_.global_step == 10 and tuner.state_.max_steps == 10
    assert tuner.state_.epoch == 4  # 3 + 3 + 3 + 1 steps
    warmup = 2
    # step s (from 0) has factor (s + 1) / (warmup + 1) while warming up, then (total - s) / (total - warmup);
    # read after each step, it is the rate of the next one (s = 1..10)
    expected = [3e-3 * ((s + 1) / (warmup + 1) if s < warmup else (10 - s) / (10 - warmup)) for s in range(1, 11)]
    np.testing.assert_allclose(rec.lrs, expected, rtol=1e-12, atol=1e-15)
    assert rec.lrs[-1] == 0.0


def test_eval_every_gives_one_history_row_per_point_and_the_last_step():
    tuner, _, _ = _fit(max_steps=10, eval_every=4)
    assert tuner.history_["step"].tolist() == [4, 8, 10]
    assert tuner.history_["epoch"].tolist() == [2, 3, 4]
    assert tuner.history_["val_accuracy"].notna().all()


def test_keep_best_restores_the_best_validation_step():
    tuner, model, rec = _fit(max_steps=12, eval_every=2, keep_best=True)
    h = tuner.history_
    best = int(h["step"][int(np.argmax(h["val_accuracy"].to_numpy()))])  # argmax: the first of equal ones
    assert tuner.state_.best_step == best
    kept = rec.snapshots[best]
    for name, value in model.state_dict().items():
        assert torch.equal(value, kept[name]), name


def test_without_keep_best_the_last_step_stays():
    tuner, model, rec = _fit(max_steps=12, eval_every=2)
    for name, value in model.state_dict().items():
        assert torch.equal(value, rec.snapshots[12][name]), name


def test_epoch_mode_is_a_budget_of_whole_passes():
    a, _, _ = _fit(epochs=2)
    b, _, _ = _fit(max_steps=6)
    cols = ["step", "train_loss", "val_accuracy"]
    np.testing.assert_array_equal(a.history_[cols].to_numpy(), b.history_[cols].to_numpy())


def test_train_eval_size_measures_a_fixed_sample():
    full, _, _ = _fit(max_steps=6, eval_every=3)
    all_rows, _, _ = _fit(max_steps=6, eval_every=3, train_eval_size=24)  # the whole set: the same numbers
    np.testing.assert_array_equal(full.history_["train_accuracy"], all_rows.history_["train_accuracy"])
    part, _, _ = _fit(max_steps=6, eval_every=3, train_eval_size=5)
    scores = part.history_["train_accuracy"].to_numpy() * 5
    np.testing.assert_allclose(scores, np.round(scores))  # accuracies of 5 examples
    sample = FineTuner(train_eval_size=5, progress=False)._train_score_data(
        __import__("lnsr_viz.training.tasks", fromlist=["x"]).as_task_data(_data(), "t"))
    assert len(sample) == 5


def test_group_by_length_is_a_permutation_sorted_within_mega_batches():
    tuner = FineTuner(batch_size=4, group_by_length=True, progress=False)
    lengths = list(np.random.default_rng(0).integers(3, 60, size=80))
    order = tuner._order(range(80), torch.Generator().manual_seed(1), lengths)
    assert sorted(order.tolist()) == list(range(80))
    mega = 80 // (4 * 4) * 4  # transformers' default: 4 mega-batches (at most 50 batches each)
    for start in range(0, 80, mega):
        chunk = [lengths[i] for i in order[start:start + mega]][1:]  # the first may be swapped with the longest
        assert chunk == sorted(chunk, reverse=True)
    _fit(max_steps=4, group_by_length=True)  # trains


@pytest.mark.parametrize("kw, match", [({"max_steps": 0}, "max_steps"), ({"eval_every": 0}, "eval_every"),
                                       ({"train_eval_size": -1}, "train_eval_size"),
                                       ({"keep_best": "yes"}, "keep_best")])
def test_bad_budget_settings_are_refused(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        FineTuner(progress=False, **kw)


def test_keep_best_needs_validation():
    with pytest.raises(ValueError, match="keep_best needs validation"):
        _fit(validation=False, max_steps=3, keep_best=True)


def test_budget_settings_enter_the_key_only_when_set():
    from lnsr_viz.experiments.config import ExperimentConfig

    base = ExperimentConfig().train_params()
    assert not {"max_steps", "eval_every", "keep_best", "train_eval_size", "group_by_length", "precision"} & set(base)
    v2 = ExperimentConfig(max_steps=200, eval_every=25, keep_best=True, group_by_length=True).train_params()
    assert v2["max_steps"] == 200 and v2["keep_best"] is True and "epochs" not in v2  # a budget makes epochs moot
    with pytest.raises(ValueError, match="max_steps"):
        ExperimentConfig(max_steps=0)


def test_a_sweep_gives_a_step_budget_per_training_size():
    from lnsr_viz.experiments.sweep import experiment_config, per_size

    train = {"lr": 5e-5, "max_steps": {100: 150, 500: 250}, "eval_every": {100: 15, 500: 25}}
    assert per_size(train, 500) == {"lr": 5e-5, "max_steps": 250, "eval_every": 25}
    with pytest.raises(ValueError, match="not for train size 2000"):
        per_size(train, 2000)
    cfg = {"methods": {"vanilla": {}}, "seeds": [1], "train_sizes": [100], "train": train}
    assert experiment_config(cfg, 100).max_steps == 150

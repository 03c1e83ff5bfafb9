"""The fine-tuning loop: determinism, the exact callback event sequence, the history's columns and parts,
early stopping, and errors raised before any training starts."""

import numpy as np
import pandas as pd
import pytest

from lnsr_viz.data.text import TextDataset
from lnsr_viz.testing import tiny_model, toy_sentences
from lnsr_viz.training.loop import HISTORY_COLUMNS, FineTuner, FineTunerCallback


def _data(n=24, seed=0, name="toy"):
    texts, labels = toy_sentences(n, seed=seed)
    return TextDataset(texts=texts, labels=np.array(labels), name=name)


def _fit(method="vanilla", seed=3, **kw):
    model, tok = tiny_model("bert", seed=0)
    tuner = FineTuner(method, epochs=2, batch_size=8, lr=1e-3, seed=seed, progress=False, **kw)
    tuner.fit(model, tok, _data(), _data(12, seed=1, name="val"))
    return tuner, model


def test_same_seed_gives_identical_history_and_weights():
    a, model_a = _fit("lnsr", seed=3)
    b, model_b = _fit("lnsr", seed=3)
    pd.testing.assert_frame_equal(a.history_.drop(columns="seconds"), b.history_.drop(columns="seconds"))
    for (name, pa), (_, pb) in zip(model_a.named_parameters(), model_b.named_parameters(), strict=True):
        assert np.array_equal(pa.detach().numpy(), pb.detach().numpy()), name
    c, _ = _fit("lnsr", seed=4)
    assert not np.allclose(a.history_["train_loss"], c.history_["train_loss"])


def test_history_records_task_and_regulariser_parts():
    vanilla, _ = _fit("vanilla")
    lnsr, _ = _fit("lnsr", method_params={"lam": 5.0})
    assert list(vanilla.history_.columns) == list(HISTORY_COLUMNS)
    assert (vanilla.history_["train_reg_loss"] == 0).all()
    assert (lnsr.history_["train_reg_loss"] > 0).all()
    h = lnsr.history_
    np.testing.assert_allclose(h["train_loss"], h["train_task_loss"] + 5.0 * h["train_reg_loss"], rtol=1e-5)
    np.testing.assert_allclose(h["gap"], h["train_accuracy"] - h["val_accuracy"])
    assert h["val_accuracy"].between(0, 1).all()


class EventRecorder(FineTunerCallback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, state, **kw):
        self.events.append("on_train_begin")

    def on_epoch_begin(self, state, **kw):
        self.events.append("on_epoch_begin")

    def on_step_end(self, state, **kw):
        self.events.append(f"on_step_end:{state.global_step}")

    def on_epoch_end(self, state, **kw):
        self.events.append("on_epoch_end")
        assert set(HISTORY_COLUMNS) <= set(kw["record"])

    def on_train_end(self, state, **kw):
        self.events.append("on_train_end")


def test_callbacks_see_the_exact_event_sequence():
    recorder = EventRecorder()
    model, tok = tiny_model("bert")
    FineTuner(epochs=1, batch_size=12, progress=False, callbacks=[recorder]).fit(model, tok, _data(24))
    assert recorder.events == ["on_train_begin", "on_epoch_begin", "on_step_end:1", "on_step_end:2",
                               "on_epoch_end", "on_train_end"]


def test_a_callback_can_stop_training_and_state_is_serialisable():
    import json

    class StopAfterFirstEpoch(FineTunerCallback):
        def on_epoch_end(self, state, **kw):
            state.should_stop = True

    model, tok = tiny_model("bert")
    tuner = FineTuner(epochs=5, batch_size=8, progress=False, callbacks=[StopAfterFirstEpoch()])
    tuner.fit(model, tok, _data())
    assert len(tuner.history_) == 1
    json.dumps(tuner.state_.to_dict())


def test_early_stopping_restores_the_best_epoch():
    class ForceWorse(FineTunerCallback):
        """Validation accuracy can only go down after epoch 1 when we corrupt the weights at each epoch start."""

        def on_epoch_begin(self, state, **kw):
            if state.epoch > 1:
                import torch

                with torch.no_grad():
                    kw["model"].classifier.weight.mul_(-1)

    from lnsr_viz.analysis.evaluation import accuracy, predict_proba

    model, tok = tiny_model("bert")
    val = _data(12, seed=1, name="val")
    tuner = FineTuner(epochs=6, batch_size=8, lr=1e-3, progress=False, early_stopping_patience=2,
                      callbacks=[ForceWorse()])
    tuner.fit(model, tok, _data(), val)
    h = tuner.history_
    best = int(h["val_accuracy"].idxmax())
    assert tuner.state_.best_epoch == h["epoch"][best]
    # training stopped once patience ran out after the best epoch ...
    assert len(h) == 6 or len(h) == tuner.state_.best_epoch + 2
    # ... and the model holds the best epoch's weights again
    final = accuracy(predict_proba(model, tok, val.texts, max_length=64), val.labels)
    assert final == pytest.approx(tuner.state_.best_val_accuracy)


def test_bad_input_fails_before_training():
    model, tok = tiny_model("bert")
    with pytest.raises(ValueError, match="'lr' parameter of FineTuner must be a float in the range \\(0.0, inf\\)"):
        FineTuner(lr=0)
    with pytest.raises(ValueError, match="Unknown method 'lnrs'"):
        FineTuner("lnrs")
    with pytest.raises(ValueError, match="'epochs' parameter"):
        FineTuner(epochs=0)
    one_class = TextDataset(texts=["good", "great"], labels=np.array([1, 1]), name="ones")
    with pytest.raises(ValueError, match="only one class"):
        FineTuner(progress=False).fit(model, tok, one_class)
    three = TextDataset(texts=["a", "b", "c"], labels=np.array([0, 1, 2]), name="three")
    with pytest.raises(ValueError, match="num_labels=2"):
        FineTuner(progress=False).fit(model, tok, three)
    with pytest.raises(ValueError, match="needs validation data"):
        FineTuner(progress=False, early_stopping_patience=1).fit(model, tok, _data())

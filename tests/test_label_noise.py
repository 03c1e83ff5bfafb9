"""Tests for label noise (lnsr_viz.data.text.flip_labels, ExperimentConfig.label_noise, make_protocol).

Covers: the exact number of labels flipped, every flipped label wrong and every other kept, the same rows for the
same seed; a fraction that leaves labels without information refused in one clear message; the protocol flips
training labels only (validation and evaluation sets keep theirs) and records the rows; a run's key is unchanged
at 0 and changes with the noise; bad settings refused when the config is made.
"""

from __future__ import annotations

import numpy as np
import pytest

from lnsr_viz.data.text import TextDataset, flip_labels
from lnsr_viz.experiments.config import ExperimentConfig
from lnsr_viz.experiments.runs import make_protocol
from lnsr_viz.testing import toy_sentences


def _data(n: int = 40, k: int = 2) -> TextDataset:
    return TextDataset([f"sentence {i}" for i in range(n)], np.arange(n) % k, "toy")


@pytest.mark.parametrize("k", [2, 3])
def test_flip_labels_flips_exactly_that_many_and_each_one_is_wrong(k):
    data = _data(40, k)
    noisy, rows = flip_labels(data, 0.25, seed=7)
    assert len(rows) == 10 and list(rows) == sorted(set(rows.tolist()))
    changed = np.flatnonzero(noisy.labels != data.labels)
    assert list(changed) == list(rows)                       # every flipped label differs, no other one does
    assert noisy.texts == data.texts and noisy.n_classes == k
    assert set(noisy.labels.tolist()) <= set(range(k))
    again, rows2 = flip_labels(data, 0.25, seed=7)
    assert list(rows2) == list(rows) and (again.labels == noisy.labels).all()
    other, rows3 = flip_labels(data, 0.25, seed=8)
    assert list(rows3) != list(rows)
    same, none = flip_labels(data, 0.0, seed=7)
    assert same is data and len(none) == 0


def test_flip_labels_refuses_a_fraction_that_leaves_no_information():
    with pytest.raises(ValueError, match=r"label_noise.*With 2 classes a fraction of 1 - 1/2 or more"):
        flip_labels(_data(), 0.5, seed=0)
    with pytest.raises(ValueError, match="one class"):
        flip_labels(TextDataset(["a", "b"], [0, 0], "one"), 0.1, seed=0)


def test_the_protocol_flips_training_labels_only_and_records_them():
    texts, labels = toy_sentences(120)
    data = TextDataset(texts, labels, "toy")
    clean = make_protocol(data, ood=[], train_size=40, val_size=20, eval_size=None)
    noisy = make_protocol(data, ood=[], train_size=40, val_size=20, eval_size=None, label_noise=0.2)
    assert clean.train.texts == noisy.train.texts
    flipped = np.flatnonzero(clean.train.labels != noisy.train.labels)
    assert len(flipped) == 8 and noisy.labels["label_noise"] == {"fraction": 0.2, "n_flipped": 8,
                                                                  "rows": flipped.tolist()}
    assert (clean.validation.labels == noisy.validation.labels).all()
    for name in clean.evaluation:
        assert (clean.evaluation[name].labels == noisy.evaluation[name].labels).all()
    assert "label_noise" not in clean.labels and clean.fingerprint != noisy.fingerprint


def test_label_noise_enters_the_key_only_when_set_and_bad_values_are_refused():
    assert "label_noise" not in ExperimentConfig().split_params()   # every stored run keeps its key
    assert ExperimentConfig(label_noise=0.2).split_params()["label_noise"] == 0.2
    assert ExperimentConfig.from_dict({"label_noise": 0.3}).label_noise == 0.3
    with pytest.raises(ValueError, match="label_noise"):
        ExperimentConfig(label_noise=-0.1)
    with pytest.raises(ValueError, match="label_noise"):
        ExperimentConfig(label_noise=1.0)
    with pytest.raises(ValueError, match="classification runs only"):
        ExperimentConfig(task="qa", label_noise=0.1)

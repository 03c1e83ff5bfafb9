"""The collapse guard: its two spread measures against hand-computed values, and a collapsed toy run is flagged
(with a warning and a history column) while a normal run is not."""

import math
import warnings

import numpy as np
import pytest

from lnsr_viz.data.text import TextDataset
from lnsr_viz.testing import tiny_model, toy_sentences
from lnsr_viz.training.collapse import CollapseGuard, CollapseWarning, effective_rank, mean_pairwise_cosine
from lnsr_viz.training.loop import FineTuner


def test_effective_rank_by_hand():
    # centred rows (+-3, 0) and (0, +-1): singular values 3*sqrt(2) and sqrt(2) -> p = (0.75, 0.25)
    x = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(x) == pytest.approx(expected, rel=1e-12)
    assert effective_rank(np.ones((5, 3))) == 1.0  # all rows equal: nothing left after centring
    assert effective_rank(np.eye(4) * 2) == pytest.approx(3.0)  # centred identity: 3 equal singular values
    with pytest.raises(ValueError, match="at least 2 rows"):
        effective_rank(np.ones((1, 3)))


def test_mean_pairwise_cosine_by_hand():
    # pairs: (e1,e2)=0, (e1,(e1+e2)/sqrt2)=1/sqrt2, (e2,...)=1/sqrt2 -> mean sqrt(2)/3
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert mean_pairwise_cosine(x) == pytest.approx(math.sqrt(2) / 3)
    assert mean_pairwise_cosine(np.tile([[1.0, 2.0]], (4, 1))) == pytest.approx(1.0)


def _train(method_params, lr, epochs=3):
    model, tok = tiny_model("bert", seed=0)
    texts, labels = toy_sentences(32)
    data = TextDataset(texts=texts, labels=np.array(labels), name="toy")
    guard = CollapseGuard(texts[:16], tok)
    tuner = FineTuner("lnsr", method_params=method_params, epochs=epochs, batch_size=8, lr=lr, progress=False,
                      callbacks=[guard])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.fit(model, tok, data)
    return tuner, guard, [w for w in caught if issubclass(w.category, CollapseWarning)]


def test_a_collapsed_run_is_flagged_and_a_normal_one_is_not():
    # an absurd weight on an absolute penalty: the cheapest way to satisfy it is a constant map
    tuner, guard, warned = _train({"lam": 1e5, "relative": False, "scale": 1.0, "scale_kind": "absolute"}, lr=3e-3,
                                  epochs=4)
    h = tuner.history_
    assert {"repr_effective_rank", "repr_mean_cosine", "reg_to_task_ratio", "collapsed"} <= set(h.columns)
    assert guard.collapsed and h["collapsed"].iloc[-1]
    assert warned and "collapsed" in str(warned[0].message)
    assert h["repr_effective_rank"].iloc[-1] < 0.25 * guard.initial_rank or h["repr_mean_cosine"].iloc[-1] > 0.98

    tuner, guard, warned = _train({"lam": 0.0}, lr=1e-4)
    assert not guard.collapsed and not warned
    assert not tuner.history_["collapsed"].any()

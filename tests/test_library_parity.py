"""The library-backed jobs (sklearn, scipy, transformers, filelock) against the hand-written versions they replaced.

``tests/oracles.py`` keeps the old implementations. Where the library gives the same numbers by construction
(metrics, the t-interval, the exact tests, the grid, the schedule, the seeding) the test asks for equality; where
the library draws its own random numbers (the Monte-Carlo permutation test, used from 14 seeds on) it asks for
agreement within Monte-Carlo error; the enumerated cases still match exactly.
"""

from __future__ import annotations

import math
import random
import threading
import time

import numpy as np
import oracles
import pytest
import torch

from lnsr_viz.analysis import evaluation, stats
from lnsr_viz.experiments import diagnose, sweep
from lnsr_viz.training.loop import FineTuner, set_seed
from lnsr_viz.utils.intervals import t_interval


def _probs(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    logits = rng.normal(size=(n, c)) * 2.0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n_classes", [2, 3, 5])
@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_the_hand_written_versions(n_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    p = _probs(rng, n, n_classes)
    y = rng.integers(0, n_classes, size=n)
    y[:n_classes] = np.arange(n_classes)  # every class occurs, so the AUC is defined
    if seed % 2:  # ties in the scores and a confident miss that hits the log clip
        p = np.round(p, 1)
        p = p / p.sum(axis=1, keepdims=True)
        p[0] = 0.0
        p[0, (y[0] + 1) % n_classes] = 1.0
    assert evaluation.accuracy(p, y) == oracles.accuracy(p, y)
    assert evaluation.macro_f1(p, y) == pytest.approx(oracles.macro_f1(p, y), abs=1e-15)
    assert evaluation.nll(p, y) == pytest.approx(oracles.nll(p, y), rel=1e-12)
    assert evaluation.roc_auc(p, y) == pytest.approx(oracles.roc_auc(p, y), abs=1e-12)


def test_macro_f1_averages_over_predicted_classes_too() -> None:
    # class 2 is predicted but never true: both versions count its F1 of 0
    p = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    y = np.array([0, 1, 1])
    assert evaluation.macro_f1(p, y) == pytest.approx(oracles.macro_f1(p, y)) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_one_class_auc_is_nan_in_both() -> None:
    p = _probs(np.random.default_rng(0), 8, 2)
    y = np.zeros(8, dtype=int)
    with pytest.warns(RuntimeWarning, match="only one class"):
        assert math.isnan(evaluation.roc_auc(p, y))
    assert math.isnan(oracles.roc_auc(p, y))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 40])
@pytest.mark.parametrize("confidence", [0.8, 0.95])
def test_the_one_t_interval_gives_each_old_copy_its_numbers(n: int, confidence: float) -> None:
    values = np.random.default_rng(n).normal(size=n)
    got = t_interval(values, confidence)
    old = oracles.stats_t_interval(values, confidence)
    np.testing.assert_equal(tuple(got)[:4], old)  # bit for bit, NaNs in the same places
    assert got.n == n
    fig = oracles.figures_t_interval(values, confidence)
    np.testing.assert_equal((got.mean, got.low, got.high, got.n), fig)
    if n:
        np.testing.assert_allclose((got.mean, got.low, got.high), oracles.theory_t_ci(values, confidence),
                                   rtol=1e-14)
        np.testing.assert_allclose((got.mean, got.low, got.high), oracles.probe_t_ci(values, confidence),
                                   rtol=1e-14)
    if n >= 2:  # and it is scipy's one-sample t interval
        ci = __import__("scipy").stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
        assert (got.low, got.high) == pytest.approx((ci.low, ci.high), rel=1e-12)


@pytest.mark.parametrize("d", [[0.1, 0.2, -0.3], [1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 1.0], [-2.0, 0.5],
                               [0.3], list(np.random.default_rng(1).normal(0.2, 1.0, size=12))])
def test_exact_tests_are_unchanged(d: list[float]) -> None:
    arr = np.asarray(d)
    assert stats.sign_test(arr) == oracles.sign_test(arr)
    assert stats.paired_permutation_test(arr) == pytest.approx(oracles.paired_permutation_test(arr), abs=1e-15)


def test_monte_carlo_permutation_p_value_agrees_within_its_error() -> None:
    d = np.random.default_rng(3).normal(0.3, 1.0, size=16)  # 2**16 > 10000: sampled, not enumerated
    new = stats.paired_permutation_test(d, n_permutations=20000, seed=0)
    old = oracles.paired_permutation_test(d, n_permutations=20000, seed=0)
    se = math.sqrt(old * (1 - old) / 20000)
    assert abs(new - old) < 5 * se + 1e-4
    assert new > 0


@pytest.mark.parametrize("paired", [False, True])
def test_bootstrap_interval_is_unchanged(paired: bool) -> None:
    # scipy.stats.bootstrap draws its resamples as rng.integers(0, n, (n_boot, n)), the old code's draw exactly
    rng = np.random.default_rng(5)
    if paired:
        x = rng.normal(size=(40, 2))
        x[:, 1] += x[:, 0]

        def stat(v: np.ndarray) -> float:
            return float(np.corrcoef(v[:, 0], v[:, 1])[0, 1])
    else:
        x = rng.normal(1.0, 2.0, size=40)
        stat = None
    new = stats.bootstrap_ci(x, n_boot=4000, seed=0, statistic=stat)
    old = oracles.bootstrap_ci(x, n_boot=4000, seed=0, statistic=stat)
    assert new == pytest.approx(old, rel=1e-12)


@pytest.mark.parametrize("counts", [(30, 50, 20, 50), (0, 10, 5, 10), (10, 10, 0, 10), (1, 3, 2, 7)])
def test_newcombe_interval_is_unchanged(counts: tuple[int, int, int, int]) -> None:
    got = diagnose.newcombe_interval(*counts)
    assert got == pytest.approx(oracles.newcombe_interval(*counts), abs=1e-12)


@pytest.mark.parametrize("params", [None, {}, {"lam": [1.0, 10.0]}, {"lam": [1, 2], "injection_layer": [0, 3, 5]},
                                    {"z": [1, 2], "a": 3, "m": ["x", "y"]},
                                    [{"lam": [1, 2]}, {"lam": [2, 3], "p": 0.1}, {"lam": 1}]])
def test_the_grid_keeps_its_order(params) -> None:
    assert sweep._settings("lnsr", params) == oracles.sweep_settings(params)


@pytest.mark.parametrize("total", [1, 2, 7, 50, 333])
@pytest.mark.parametrize("warmup_ratio", [0.0, 0.1, 0.5, 1.0])
def test_schedule_factor_is_unchanged_at_every_step(total: int, warmup_ratio: float) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    tuner = FineTuner(warmup_ratio=warmup_ratio, progress=False)
    scheduler = tuner._schedule(optimizer, total)
    for step in range(total):
        assert optimizer.param_groups[0]["lr"] == oracles.warmup_decay_factor(step, total, warmup_ratio), step
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("seed", [0, 7, 2**32 - 1])
def test_set_seed_gives_the_same_draws(seed: int) -> None:
    def draws() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    oracles.set_seed(seed)
    old = draws()
    set_seed(seed)
    assert draws() == old


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5])
def test_set_seed_refuses_seeds_numpy_cannot_take(seed) -> None:
    with pytest.raises(ValueError, match="seed"):
        set_seed(seed)


def test_asset_lock_serialises_two_threads(tmp_path, monkeypatch) -> None:
    from lnsr_viz.data import assets

    calls: list[tuple[str, float]] = []

    def slow_fetch(asset, home, final, *, progress):
        calls.append(("start", time.monotonic()))
        time.sleep(0.3)
        final.mkdir()
        calls.append(("end", time.monotonic()))

    monkeypatch.setattr(assets, "_fetch_into_place", slow_fetch)
    monkeypatch.setattr(assets, "_read_marker", lambda final, asset: final if final.exists() else None)
    threads = [threading.Thread(target=assets.ensure_asset, args=("vader",), kwargs={"home": tmp_path})
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [c[0] for c in calls] == ["start", "end"]  # the second waited, then found the work done

"""Test oracles: the hand-written implementations that lnsr_viz used before it called sklearn, scipy, transformers
and filelock for the same jobs (issue 13, "libraries where libraries exist").

They are kept verbatim (input validation left out) so that the tests can check, on random and degenerate inputs,
that the library-backed versions give today's numbers. Not part of the package; imported only by the tests.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as _st
from scipy.stats import rankdata

_NLL_EPS = 1e-12
_ZERO_TOL = 1e-12


# ---------------------------------------------------------------------------- analysis/evaluation.py (metrics)
def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(p.argmax(axis=1) == y))


def macro_f1(p: np.ndarray, y: np.ndarray) -> float:
    pred = p.argmax(axis=1)
    classes = np.union1d(y, pred)
    scores = []
    for c in classes:
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        scores.append(2.0 * tp / (2.0 * tp + fp + fn))
    return float(np.mean(scores))


def nll(p: np.ndarray, y: np.ndarray) -> float:
    true_p = np.clip(p[np.arange(len(y)), y], _NLL_EPS, 1.0)
    return float(-np.mean(np.log(true_p)))


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    ranks = rankdata(scores, method="average")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(p: np.ndarray, y: np.ndarray) -> float:
    """Without the warnings: NaN for one class, macro over the classes with positives and negatives."""
    n_classes = p.shape[1]
    if np.unique(y).size < 2:
        return math.nan
    if n_classes == 2:
        return _binary_auc(p[:, 1], y == 1)
    scored = [c for c in range(n_classes) if 0 < np.sum(y == c) < y.size]
    return float(np.mean([_binary_auc(p[:, c], y == c) for c in scored]))


# ---------------------------------------------------------------------------- the five Student-t intervals
def stats_t_interval(values: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    """analysis/stats.py::_t_interval -> (mean, sd, low, high)."""
    n = values.size
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(np.mean(values))
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(np.std(values, ddof=1))
    half = float(_st.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def figures_t_interval(values: Any, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """viz/figures.py::_t_interval -> (mean, low, high, n) over the finite values."""
    arr = np.asarray(list(values), dtype=float)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(arr.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * float(arr.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, n


def theory_t_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """analysis/theory.py::_t_ci -> (mean, low, high)."""
    mean = float(np.mean(values))
    n = values.size
    if n < 2:
        return mean, math.nan, math.nan
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half


def probe_t_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """core/probe.py::summarize_examples, one metric -> (mean, low, high)."""
    n = values.size
    mean = float(values.mean())
    if n > 1:
        half = float(_st.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / np.sqrt(n))
    else:
        half = float("nan")
    return mean, mean - half, mean + half


# ---------------------------------------------------------------------------- analysis/stats.py (tests)
def sign_test(d: np.ndarray) -> float:
    nonzero = d[np.abs(d) > _ZERO_TOL]
    m = nonzero.size
    if m == 0:
        return 1.0
    k = int(np.sum(nonzero > 0))
    return float(_st.binomtest(k, m, 0.5, alternative="two-sided").pvalue)


def paired_permutation_test(d: np.ndarray, *, n_permutations: int = 10000, seed: int = 0) -> float:
    n = d.size
    if n == 0:
        return math.nan
    observed = abs(float(d.sum()))
    tol = 1e-10 * float(np.abs(d).sum())
    if 2**n <= n_permutations:
        codes = np.arange(2**n, dtype=np.int64)[:, None]
        signs = ((codes >> np.arange(n, dtype=np.int64)) & 1) * 2.0 - 1.0
        stats = np.abs(signs @ d)
        return float(np.mean(stats >= observed - tol))
    rng = np.random.default_rng(seed)
    count = 0
    chunk = 4096
    remaining = n_permutations
    while remaining > 0:
        size = min(chunk, remaining)
        signs = rng.integers(0, 2, size=(size, n)) * 2.0 - 1.0
        count += int(np.sum(np.abs(signs @ d) >= observed - tol))
        remaining -= size
    return (1.0 + count) / (1.0 + n_permutations)


def bootstrap_ci(values: Any, *, confidence: float = 0.95, n_boot: int = 10000, seed: int = 0,
                 statistic: Callable[[np.ndarray], float] | None = None) -> tuple[float, float]:
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    if statistic is None:
        boot = x[idx].mean(axis=1)
    else:
        boot = np.array([float(statistic(x[i])) for i in idx])
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


# ---------------------------------------------------------------------------- experiments/diagnose.py
def wilson(x: float, n: int, z: float) -> tuple[float, float]:
    p = x / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, *, confidence: float = 0.95) -> tuple[float, float, float]:
    z = float(_st.norm.ppf(0.5 + confidence / 2))
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


# ---------------------------------------------------------------------------- experiments/sweep.py (grid)
def sweep_settings(params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The grid expansion of sweep._settings (without its error checks)."""
    if isinstance(params, Sequence) and not isinstance(params, str):
        out: list[dict[str, Any]] = []
        for grid in params:
            for setting in sweep_settings(grid):
                if setting not in out:
                    out.append(setting)
        return out
    axes = {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in dict(params or {}).items()}
    keys = sorted(axes)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(axes[k] for k in keys))]


# ---------------------------------------------------------------------------- training/loop.py
def warmup_decay_factor(step: int, total: int, warmup_ratio: float) -> float:
    """FineTuner._schedule's multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
    warmup = int(round(warmup_ratio * total))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

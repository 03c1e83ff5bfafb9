"""Predictive validity of a number: does it rank and separate the models it claims to describe?

:func:`association` measures one predictor against one continuous outcome and one binary label over a population
of models: Spearman's rank correlation with the outcome (``scipy.stats.spearmanr``) and the ROC AUC of the label
(``sklearn.metrics.roc_auc_score``; the p-value is the two-sided Mann-Whitney U test's, since AUC = U / (n1 n0)),
each with a percentile bootstrap 95% interval over models (:func:`lnsr_viz.analysis.stats.bootstrap_ci`, rows
resampled together, seeded). :func:`rank_auc` is the same AUC computed from ranks (ties counted half), the fast form
the bootstrap uses. :func:`chance_verdict` turns the intervals into a verdict: ``predictive`` (both intervals exclude
chance in the claimed direction), ``opposite`` (one excludes chance in the other direction) or ``chance``.

:func:`stratified_association` is the same measure *within* groups (e.g. training-set sizes), for a population
where the group itself drives both the predictor and the outcome: Spearman's rho inside each group, combined by
Fisher's z weighted by n - 3 (the fixed-effect meta-analytic mean); ROC AUC from the pairs inside each group only
(the sum of the groups' Mann-Whitney U over the sum of their n1 n0, so a group with one class adds nothing); the
p-values from the combined z and from the stratified U's normal approximation (tie-corrected); the intervals from a
bootstrap that resamples models within each group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

__all__ = ["Association", "association", "stratified_association", "rank_auc", "rank_auc_rows", "chance_verdict",
           "interval_side"]


@dataclass(frozen=True)
class Association:
    """How one predictor relates to an outcome (Spearman) and to a binary label (ROC AUC) over ``n`` models."""

    n: int
    n_positive: int
    rho: float
    rho_ci_low: float
    rho_ci_high: float
    rho_p: float
    auc: float
    auc_ci_low: float
    auc_ci_high: float
    auc_p: float

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (one row of a track-record table)."""
        return asdict(self)


def rank_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """ROC AUC of ``labels`` (0/1) ranked by ``scores`` from the Mann-Whitney U statistic (ties count 1/2).

    Equal to ``sklearn.metrics.roc_auc_score(labels, scores)``; NaN when one class is absent.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = _st.rankdata(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def rank_auc_rows(pairs: np.ndarray) -> np.ndarray | float:
    """:func:`rank_auc` of ``pairs[..., :, 1]`` (0/1 labels) ranked by ``pairs[..., :, 0]``, one per leading index
    (shape ``(..., n, 2)``): the vectorised statistic of the AUC's bootstrap interval; NaN where a class is absent."""
    a = np.asarray(pairs, dtype=np.float64)
    y = a[..., 1] > 0.5
    n1 = y.sum(axis=-1)
    n0 = y.shape[-1] - n1
    ranks = _st.rankdata(a[..., 0], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where((n1 > 0) & (n0 > 0),
                       (np.sum(ranks * y, axis=-1) - n1 * (n1 + 1) / 2.0) / np.maximum(n1 * n0, 1), np.nan)
    return float(auc) if auc.ndim == 0 else auc


def association(predictor: Sequence[float] | np.ndarray, outcome: Sequence[float] | np.ndarray,
                label: Sequence[int] | np.ndarray, *, n_boot: int = 2000, seed: int = 0,
                confidence: float = 0.95) -> Association:
    """Spearman rho of ``predictor`` with ``outcome`` and ROC AUC of ``label`` by ``predictor``, with bootstrap CIs.

    Rows where any of the three is missing are dropped first. AUC above 0.5 means larger predictor values go with
    ``label == 1``. With fewer than 3 rows, or one class only, the affected numbers are NaN.
    """
    from sklearn.metrics import roc_auc_score

    from .stats import bootstrap_ci, rank_correlation

    x = np.asarray(predictor, dtype=np.float64)
    out = np.asarray(outcome, dtype=np.float64)
    lab = np.asarray(label, dtype=np.float64)
    if not x.shape == out.shape == lab.shape or x.ndim != 1:
        raise ValueError(f"association: predictor, outcome and label must be 1-D of one length; got shapes "
                         f"{x.shape}, {out.shape}, {lab.shape}.")
    ok = np.isfinite(x) & np.isfinite(out) & np.isfinite(lab)
    x, out, lab = x[ok], out[ok], lab[ok]
    if np.any((lab != 0) & (lab != 1)):
        raise ValueError("association: label must hold 0/1 (or True/False) values.")
    n, n_pos = int(x.size), int(lab.sum())
    nan = math.nan
    rho = rho_p = auc = auc_p = nan
    rho_ci = auc_ci = (nan, nan)
    if n >= 3:
        if np.ptp(x) > 0 and np.ptp(out) > 0:
            res = _st.spearmanr(x, out)
            rho, rho_p = float(res.statistic), float(res.pvalue)
            pairs = np.column_stack([x, out])
            rho_ci = bootstrap_ci(pairs, n_boot=n_boot, seed=seed, confidence=confidence,
                                  statistic=rank_correlation, vectorized=True)
        if 0 < n_pos < n:
            auc = float(roc_auc_score(lab.astype(int), x))
            auc_p = float(_st.mannwhitneyu(x[lab == 1], x[lab == 0], alternative="two-sided").pvalue)
            pairs = np.column_stack([x, lab])
            auc_ci = bootstrap_ci(pairs, n_boot=n_boot, seed=seed, confidence=confidence,
                                  statistic=rank_auc_rows, vectorized=True)
    return Association(n, n_pos, rho, rho_ci[0], rho_ci[1], rho_p, auc, auc_ci[0], auc_ci[1], auc_p)


#: Fewest models a group needs for its rank correlation to enter :func:`stratified_association` (Fisher's z weight
#: is n - 3).
MIN_STRATUM = 4


def _mann_whitney_u(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """U of the positives (ties half), n1 n0, and U's null variance (tie-corrected), per leading index."""
    n = x.shape[-1]
    ranks = _st.rankdata(x, axis=-1)
    n1 = y.sum(axis=-1)
    pairs = n1 * (n - n1)
    u = np.sum(ranks * y, axis=-1) - n1 * (n1 + 1) / 2.0
    if n < 2:
        return u, pairs.astype(np.float64), np.zeros(x.shape[:-1])
    # sum over tie groups of t^3 - t = sum over values of t^2 - 1 (t: the size of the value's tie group)
    t = np.sum(x[..., :, None] == x[..., None, :], axis=-1).astype(np.float64)
    ties = np.sum(t ** 2 - 1.0, axis=-1)
    var = pairs / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    return u, pairs.astype(np.float64), var


def _within(xs: list[np.ndarray], outs: list[np.ndarray], labs: list[np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Combined rho and AUC (and their z statistics) over groups; arrays of shape ``(...)`` (one per resample)."""
    from .stats import rank_correlation

    z_sum = w_sum = u_sum = pair_sum = var_sum = 0.0
    for x, out, lab in zip(xs, outs, labs, strict=True):
        n = x.shape[-1]
        if n >= MIN_STRATUM:
            r = rank_correlation(np.stack([x, out], axis=-1))
            r = np.clip(np.asarray(r, dtype=np.float64), -1 + 1e-12, 1 - 1e-12)
            ok = np.isfinite(r)
            z_sum = z_sum + np.where(ok, np.arctanh(np.where(ok, r, 0.0)) * (n - 3), 0.0)
            w_sum = w_sum + np.where(ok, n - 3.0, 0.0)
        u, pairs, var = _mann_whitney_u(x, lab)
        u_sum, pair_sum, var_sum = u_sum + u, pair_sum + pairs, var_sum + var
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.asarray(w_sum, dtype=np.float64)
        rho = np.where(w > 0, np.tanh(z_sum / np.where(w > 0, w, 1.0)), np.nan)
        z_rho = np.where(w > 0, z_sum / np.sqrt(np.where(w > 0, w, 1.0)), np.nan)
        pairs = np.asarray(pair_sum, dtype=np.float64)
        auc = np.where(pairs > 0, u_sum / np.where(pairs > 0, pairs, 1.0), np.nan)
        var = np.asarray(var_sum, dtype=np.float64)
        z_auc = np.where(var > 0, (u_sum - pairs / 2.0) / np.sqrt(np.where(var > 0, var, 1.0)), np.nan)
    return rho, auc, z_rho, z_auc


def stratified_association(predictor: Sequence[float] | np.ndarray, outcome: Sequence[float] | np.ndarray,
                           label: Sequence[int] | np.ndarray, groups: Sequence[Any] | np.ndarray, *,
                           n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> Association:
    """:func:`association` within ``groups``: rank correlation and ROC AUC computed inside each group and combined
    (see the module docstring), so that a difference *between* groups (e.g. training-set sizes that differ in both
    the predictor and the outcome) cannot pass for predictive value.

    With one group the point estimates equal :func:`association`'s (rho, AUC); groups with fewer than
    :data:`MIN_STRATUM` models add no rank correlation; a group with one class adds no pairs to the AUC.
    """
    from ..utils.validation import check_number, check_positive_int

    confidence = float(check_number("confidence", confidence, owner="stratified_association", low=0.0, high=1.0,
                                    low_closed=False, high_closed=False))
    n_boot = check_positive_int("n_boot", n_boot, owner="stratified_association")
    x = np.asarray(predictor, dtype=np.float64)
    out = np.asarray(outcome, dtype=np.float64)
    lab = np.asarray(label, dtype=np.float64)
    g = np.asarray(groups, dtype=object)
    if not x.shape == out.shape == lab.shape == g.shape or x.ndim != 1:
        raise ValueError(f"stratified_association: predictor, outcome, label and groups must be 1-D of one length; "
                         f"got shapes {x.shape}, {out.shape}, {lab.shape}, {g.shape}.")
    ok = np.isfinite(x) & np.isfinite(out) & np.isfinite(lab) & np.array([v is not None and v == v for v in g])
    x, out, lab, g = x[ok], out[ok], lab[ok], g[ok]
    if np.any((lab != 0) & (lab != 1)):
        raise ValueError("stratified_association: label must hold 0/1 (or True/False) values.")
    keys = list(dict.fromkeys(g.tolist()))
    idx = [np.flatnonzero(g == k) for k in keys]
    rho, auc, z_rho, z_auc = (float(v) for v in _within([x[i] for i in idx], [out[i] for i in idx],
                                                         [lab[i] for i in idx]))
    rho_p = float(2 * _st.norm.sf(abs(z_rho))) if math.isfinite(z_rho) else math.nan
    auc_p = float(2 * _st.norm.sf(abs(z_auc))) if math.isfinite(z_auc) else math.nan
    rng = np.random.default_rng(seed)
    draws = [i[rng.integers(0, i.size, size=(n_boot, i.size))] for i in idx]  # models resampled within groups
    b_rho, b_auc, _, _ = _within([x[d] for d in draws], [out[d] for d in draws], [lab[d] for d in draws])
    tail = (1 - confidence) / 2 * 100

    def ci(boot: np.ndarray, point: float) -> tuple[float, float]:
        finite = boot[np.isfinite(boot)]
        if not math.isfinite(point) or finite.size == 0:
            return math.nan, math.nan
        return float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))

    rho_ci, auc_ci = ci(np.atleast_1d(b_rho), rho), ci(np.atleast_1d(b_auc), auc)
    return Association(int(x.size), int(lab.sum()), rho, rho_ci[0], rho_ci[1], rho_p, auc, auc_ci[0], auc_ci[1],
                       auc_p)


def interval_side(low: float, high: float, centre: float) -> int:
    """+1 when the interval ``[low, high]`` lies above ``centre``, -1 when below, 0 when it includes it (or is NaN)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0
    return 1 if low > centre else (-1 if high < centre else 0)


def chance_verdict(assoc: Association, direction: int | None) -> str:
    """``predictive``, ``opposite`` or ``chance`` for a predictor claimed to rise with the outcome (``direction=1``)
    or to fall with it (``-1``); ``direction=None`` (no claimed direction) gives ``associated`` or ``chance``.

    Predictive: the rho interval excludes 0 and the AUC interval excludes 0.5, both on the claimed side. Opposite:
    either interval excludes chance on the other side. Otherwise (an interval that includes chance, or NaN):
    chance.
    """
    sides = (interval_side(assoc.rho_ci_low, assoc.rho_ci_high, 0.0),
             interval_side(assoc.auc_ci_low, assoc.auc_ci_high, 0.5))
    if direction is None:
        return "associated" if all(s != 0 for s in sides) and sides[0] == sides[1] else "chance"
    if any(s == -direction for s in sides):
        return "opposite"
    if all(s == direction for s in sides):
        return "predictive"
    return "chance"

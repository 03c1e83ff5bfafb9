"""The Student-t confidence interval for a mean: the one implementation every stage uses.

It lives in the bottom layer because the probe (``core``) needs it as well as the statistics (``analysis``), the
theory checks and the figures; :mod:`lnsr_viz.analysis.stats` re-exports it as its public
:func:`~lnsr_viz.analysis.stats.t_interval`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .validation import check_number

__all__ = ["TInterval", "t_interval"]


class TInterval(NamedTuple):
    """Mean, standard deviation (ddof=1), interval bounds and number of values of :func:`t_interval`."""

    mean: float
    sd: float
    low: float
    high: float
    n: int


def t_interval(values: Any, confidence: float = 0.95) -> TInterval:
    """Two-sided Student-t confidence interval for the mean of ``values``.

    ``mean +- t_{(1 + confidence) / 2, n - 1} * sd / sqrt(n)`` with ``t`` from ``scipy.stats.t`` and ``sd`` with
    ddof=1; the same interval as ``scipy.stats.ttest_1samp(values, 0).confidence_interval(confidence)``, computed
    in this order so that the numbers stored by earlier versions are reproduced bit for bit.

    Values are used as given (callers drop NaN first where they must). With one value the sd and the bounds are
    NaN (one value says nothing about spread); with none, the mean is NaN too.

    Parameters
    ----------
    values : array-like of shape (n,)
    confidence : float, default=0.95
        Level of the interval, strictly between 0 and 1.

    Returns
    -------
    TInterval
        ``(mean, sd, low, high, n)``.
    """
    from scipy import stats

    confidence = float(check_number("confidence", confidence, owner="t_interval", low=0.0, high=1.0,
                                    low_closed=False, high_closed=False))
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"t_interval expects a 1-D array of values; got shape {x.shape}.")
    n = int(x.size)
    if n == 0:
        return TInterval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(np.mean(x))
    if n < 2:
        return TInterval(mean, math.nan, math.nan, math.nan, n)
    sd = float(np.std(x, ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * sd / math.sqrt(n)
    return TInterval(mean, sd, mean - half, mean + half, n)

"""Our ranking of the methods beside a published one (HyPe's Table 5), over the methods both include.

The published numbers (``../shared/notes/method.md``): Yuan et al., *HyPe: Better Pre-trained Language Model
Fine-tuning with Hidden Representation Perturbation*, ACL 2023, Table 5: BERT-large on GLUE dev (average over STS-B,
CoLA, MRPC and RTE, 3 seeds). Their LNSR row is quoted from Xu et al. 2021, not from the LNSR authors; their
ChildTuning row is ChildTuning-D and their HyPe row HyPe-N. A different model, different tasks and in-domain dev
scores: a rank correlation with ours says whether the methods' order carries over to this setting, nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = ["HYPE_TABLE5", "HYPE_SOURCE", "ranking_comparison"]

#: HyPe (ACL 2023) Table 5, GLUE average (STS-B / CoLA / MRPC / RTE), BERT-large: method -> score.
HYPE_TABLE5: dict[str, float] = {"vanilla": 79.15, "mixout": 79.26, "lnsr": 78.85, "childtuning": 79.97,
                                 "noisytune": 80.06, "r3f": 80.52, "rdrop": 80.60, "hype": 80.75}
HYPE_SOURCE = ("HyPe (Yuan et al., ACL 2023), Table 5: BERT-large, GLUE dev average over STS-B, CoLA, MRPC, RTE, "
               "3 seeds (their LNSR row quoted from Xu et al. 2021; ChildTuning-D; HyPe-N)")


def ranking_comparison(table: pd.DataFrame, *, metric: str = "accuracy_mean",
                       published: Mapping[str, float] = HYPE_TABLE5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rank the methods of ``table`` (one row per train_size, method: e.g. the chosen settings of
    :func:`~lnsr_viz.experiments.method_table.method_table`) by ``metric`` beside the published ranking.

    Returns ``(ranks, agreement)``: ``ranks`` has one row per size and shared method (our value and rank, the
    published score and rank; rank 1 = best, computed over the shared methods only); ``agreement`` one row per
    size with Kendall's tau between the two rankings, its p-value and the number of shared methods.
    """
    from scipy import stats

    needed = {"train_size", "method", metric}
    if not isinstance(table, pd.DataFrame) or not needed <= set(table.columns):
        raise ValueError(f"ranking_comparison needs a table with columns {sorted(needed)}.")
    if table.duplicated(["train_size", "method"]).any():
        raise ValueError("ranking_comparison needs one row per train_size and method (e.g. the chosen settings).")
    rank_rows, agree_rows = [], []
    for size, part in table.groupby("train_size", sort=True):
        shared = part[part["method"].isin(list(published))].dropna(subset=[metric])
        if shared.empty:
            continue
        ours = shared[metric].to_numpy(dtype=np.float64)
        theirs = np.array([published[m] for m in shared["method"]], dtype=np.float64)
        our_rank = stats.rankdata(-ours, method="average")
        their_rank = stats.rankdata(-theirs, method="average")
        for m, s, v, r, pv, pr in zip(shared["method"], shared.get("setting", shared["method"]), ours, our_rank,
                                      theirs, their_rank, strict=True):
            rank_rows.append({"train_size": int(size), "method": m, "setting": s, "ours": float(v),
                              "our_rank": float(r), "published": float(pv), "published_rank": float(pr)})
        tau, p = (stats.kendalltau(ours, theirs) if len(shared) >= 3 else (math.nan, math.nan))
        agree_rows.append({"train_size": int(size), "n_methods": len(shared), "kendall_tau": float(tau),
                           "p": float(p)})
    return pd.DataFrame(rank_rows), pd.DataFrame(agree_rows, columns=["train_size", "n_methods", "kendall_tau", "p"])

"""The theory link across stored runs: :func:`theory_table` reads a run store and relates stability to the gaps.

The statistics live in :func:`lnsr_viz.analysis.theory.theory_table_from_tables`, which takes plain tables; this
module only reads them from a :class:`~lnsr_viz.experiments.store.RunStore`: the list of complete runs, the stored
``profile``, ``history`` and ``metrics`` tables, and the Jacobian norm / Hessian trace that
:func:`~lnsr_viz.analysis.theory.theory_measurements` put into a run's ``extra``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import pandas as pd

from ..analysis.theory import TheoryTable, theory_table_from_tables
from ..utils.validation import check_choice
from .store import RunStore

__all__ = ["theory_table", "stored_extras"]

#: The keys of a run's ``extra`` that the theory table uses.
_EXTRA_COLUMNS = ("jacobian_fro2", "hessian_trace")


def stored_extras(store: RunStore, run_ids: Any) -> pd.DataFrame:
    """One row per run: ``run_id`` and the finite numbers stored as ``jacobian_fro2`` / ``hessian_trace`` (else NaN)."""
    rows = []
    for run_id in run_ids:
        extra = store.load(run_id).extra
        row: dict[str, Any] = {"run_id": run_id}
        for key in _EXTRA_COLUMNS:
            value = extra.get(key)
            row[key] = float(value) if isinstance(value, int | float) and math.isfinite(value) else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["run_id", *_EXTRA_COLUMNS])


def theory_table(
    store: RunStore | str | os.PathLike[str],
    *,
    injection_layer: int = 0,
    metric: Literal["change_rel", "change_l2"] = "change_rel",
    noise: str | None = None,
    scale: float | None = None,
    in_domain: str | None = None,
    gap_metric: str = "accuracy",
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> TheoryTable:
    """Relate noise stability, Jacobian norm and Hessian trace to the generalisation and OOD gaps across stored runs.

    Every complete run of ``store`` is one row; what each column means, and the correlations with their bootstrap
    confidence intervals, are described in :func:`lnsr_viz.analysis.theory.theory_table_from_tables`, which gets
    the store's run list, its ``profile``, ``history`` and ``metrics`` tables and the runs' stored extras.

    Parameters
    ----------
    store : RunStore or path
        A path is opened read-only.
    injection_layer, metric, noise, scale, in_domain, gap_metric, confidence, n_boot, seed
        See :func:`lnsr_viz.analysis.theory.theory_table_from_tables`.

    Returns
    -------
    TheoryTable

    Raises
    ------
    ValueError
        The store holds no complete runs; an unknown ``metric``; several noise kinds or scales stored and none
        chosen, or a chosen one that is not stored.
    """
    owner = "theory_table"
    check_choice("metric", metric, ("change_rel", "change_l2"), owner=owner)
    if not isinstance(store, RunStore):
        store = RunStore(store, read_only=True)
    runs = store.list_runs()
    if runs.empty:
        raise ValueError(f"{owner}: {store!r} holds no complete runs; run lnsr_viz.compare(...) first.")
    return theory_table_from_tables(
        runs, profile=store.load_table("profile"), history=store.load_table("history"),
        metrics=store.load_table("metrics"), extras=stored_extras(store, runs["run_id"]),
        injection_layer=injection_layer, metric=metric, noise=noise, scale=scale, in_domain=in_domain,
        gap_metric=gap_metric, confidence=confidence, n_boot=n_boot, seed=seed,
    )

"""Reporting a fine-tuning run to the tracking tools the Hugging Face ``Trainer`` reports to: TensorBoard and MLflow.

``FineTuner(report_to=...)`` (names as ``TrainingArguments.report_to``: ``'tensorboard'``, ``'mlflow'``, a list of
them, ``'all'``; ``None`` / ``'none'``, the default, reports nothing) adds a :class:`Tracker` callback. Our loop is not
a ``transformers.Trainer``, whose ``TensorBoardCallback`` / ``MLflowCallback`` need ``TrainingArguments`` and a
``TrainerState``, so the tracker logs through the libraries' own public APIs instead: ``torch.utils.tensorboard``'s
``SummaryWriter`` (what ``TensorBoardCallback`` uses) and ``mlflow.MlflowClient`` (no global active run, so several
runs may log from one process or from several workers at once).

What is logged, under these names:

- every optimizer step: ``train/loss``, ``train/task_loss``, ``train/reg_loss`` (the regulariser's unweighted term);
- every evaluation (one history row): each numeric history column under its own name (``train_loss``,
  ``train_task_loss``, ``train_reg_loss``, ``train_accuracy``, ``val_accuracy``, ``val_loss``, ``gap``, and the
  collapse guard's ``repr_effective_rank``, ``repr_mean_cosine``, ``reg_to_task_ratio``, ``collapsed`` as 0/1),
  at the row's optimizer step, so the logged values equal the run store's ``history.csv``;
- on request, after training (:meth:`Tracker.log_metrics`, :meth:`Tracker.log_table`): the evaluation metrics
  (``metrics/<domain>/<metric>``) and tables such as the stability profile (an MLflow table artifact
  ``<name>.json`` plus ``<name>.csv``; a TensorBoard text summary ``<name>`` holding the table).

Where: TensorBoard writes event files under ``logging_dir/<run name>`` (default ``runs/``, as ``SummaryWriter``);
MLflow uses its tracking URI (``MLFLOW_TRACKING_URI``, else MLflow's default, the SQLite file ``mlflow.db`` in the
working directory) and the experiment ``MLFLOW_EXPERIMENT_NAME`` (default ``lnsr_viz``). Only rank 0 of a
distributed run reports. Needs ``pip install 'lnsr_viz[tracking]'``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..utils.extras import check_available, require

__all__ = ["Tracker", "REPORT_TO", "normalize_report_to", "check_tracking"]

#: The tools ``report_to`` may name.
REPORT_TO = ("tensorboard", "mlflow")
_MODULES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy")}


def normalize_report_to(report_to: str | Sequence[str] | None, *, owner: str = "FineTuner") -> list[str]:
    """``report_to`` as a list of tool names (``None``, ``'none'`` and ``[]``: nothing; ``'all'``: every tool);
    an unknown name, or a tool whose package is missing, is refused here, before any work."""
    if report_to is None or report_to == "none":
        return []
    names = list(REPORT_TO) if report_to == "all" else [report_to] if isinstance(report_to, str) else list(report_to)
    bad = [n for n in names if n not in REPORT_TO]
    if bad:
        raise ValueError(f"The 'report_to' parameter of {owner} names {bad}; it takes 'tensorboard', 'mlflow', a "
                         "list of them, 'all', or None (report nothing).")
    for name in dict.fromkeys(names):
        for module in _MODULES[name]:
            check_available(module, f"report_to={name!r}")
    return list(dict.fromkeys(names))


def check_tracking(tracking: Mapping[str, Any] | None, *, owner: str) -> None:
    """Refuse, before any work, sweep tracking options other than ``report_to`` / ``logging_dir``, or a tool whose
    package is missing."""
    bad = set(tracking or {}) - {"report_to", "logging_dir"}
    if bad:
        raise ValueError(f"The tracking options of {owner} are 'report_to' and 'logging_dir'; got {sorted(bad)}.")
    normalize_report_to((tracking or {}).get("report_to"), owner=owner)


def _plain(value: Any) -> float | None:
    """A history value as a float to log (booleans as 0/1), or None for text and missing values."""
    if isinstance(value, bool):
        return float(value)
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


class Tracker:
    """A :class:`~lnsr_viz.training.loop.FineTunerCallback` (its five events; the loop imports this module, so it
    does not subclass it) that reports the run to TensorBoard and / or MLflow.

    Parameters
    ----------
    report_to : str or list of str
        ``'tensorboard'``, ``'mlflow'``, a list of them or ``'all'`` (see :func:`normalize_report_to`).
    run_name : str, optional
        The run's name in MLflow and its TensorBoard sub-folder (default ``'run'``).
    logging_dir : str or path, optional
        TensorBoard's folder (default ``runs``); each run writes into ``logging_dir/<run_name>``.
    params : mapping, optional
        Settings logged once as MLflow parameters / a TensorBoard text summary.
    tags : mapping, optional
        MLflow tags (e.g. the run store's ``run_id``).
    """

    def __init__(self, report_to: str | Sequence[str], *, run_name: str | None = None,
                 logging_dir: str | os.PathLike[str] | None = None, params: Mapping[str, Any] | None = None,
                 tags: Mapping[str, Any] | None = None) -> None:
        self.report_to = normalize_report_to(report_to, owner="Tracker")
        self.run_name = str(run_name or "run")
        self.logging_dir = Path(logging_dir or "runs")
        self.params = dict(params or {})
        self.tags = {str(k): str(v) for k, v in dict(tags or {}).items()}
        self.enabled = True
        self.mlflow_run_id: str | None = None
        self.tensorboard_dir: Path | None = None
        self._writer: Any = None
        self._client: Any = None

    # ---- opening and closing ---------------------------------------------------------------------------------------
    def _open(self) -> None:
        if "tensorboard" in self.report_to and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard_dir = self.logging_dir / re.sub(r"[^A-Za-z0-9_.=+-]+", "_", self.run_name)
            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir))
        if "mlflow" in self.report_to and self._client is None:
            self._client = require("mlflow", "report_to='mlflow'").MlflowClient()
            if self.mlflow_run_id is None:
                name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "lnsr_viz")
                experiment = self._client.get_experiment_by_name(name)
                if experiment is None:
                    try:
                        experiment_id = self._client.create_experiment(name)
                    except Exception:  # another process created it meanwhile
                        experiment_id = self._client.get_experiment_by_name(name).experiment_id
                else:
                    experiment_id = experiment.experiment_id
                run = self._client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
                self.mlflow_run_id = run.info.run_id

    def close(self) -> None:
        """Flush TensorBoard and mark the MLflow run finished; later ``log_*`` calls reopen them."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._client is not None and self.mlflow_run_id is not None:
            self._client.set_terminated(self.mlflow_run_id)
            self._client = None

    # ---- logging ---------------------------------------------------------------------------------------------------
    def log_metrics(self, values: Mapping[str, Any], *, step: int = 0) -> None:
        """Log numeric ``values`` (text and missing ones are skipped) at optimizer step ``step``."""
        if not self.enabled:
            return
        self._open()
        plain = {str(k): v for k, v in ((k, _plain(v)) for k, v in values.items()) if v is not None}
        if self._writer is not None:
            for key, value in plain.items():
                self._writer.add_scalar(key, value, global_step=step)
        if self._client is not None:
            import time

            Metric = require("mlflow.entities", "report_to='mlflow'").Metric
            now = int(time.time() * 1000)
            metrics = [Metric(key=k, value=v, timestamp=now, step=int(step)) for k, v in plain.items()]
            for start in range(0, len(metrics), 500):
                self._client.log_batch(self.mlflow_run_id, metrics=metrics[start:start + 500])

    def log_table(self, name: str, table: pd.DataFrame) -> None:
        """Log a tidy table: an MLflow table artifact (``name.json``, and ``name.csv``), a TensorBoard text summary."""
        if not self.enabled:
            return
        self._open()
        if self._writer is not None:
            self._writer.add_text(name, table.to_csv(index=False).replace("\n", "  \n"), global_step=0)
            self._writer.flush()
        if self._client is not None:
            self._client.log_table(self.mlflow_run_id, data=table, artifact_file=f"{name}.json")
            self._client.log_text(self.mlflow_run_id, table.to_csv(index=False), f"{name}.csv")

    def _log_params(self) -> None:
        flat = {k: str(v) for k, v in _flatten(self.params).items()}
        if not flat:
            return
        if self._client is not None:
            Param = require("mlflow.entities", "report_to='mlflow'").Param
            items = [Param(k[:250], v[:6000]) for k, v in flat.items()]
            for start in range(0, len(items), 100):
                self._client.log_batch(self.mlflow_run_id, params=items[start:start + 100])
        if self._writer is not None:
            self._writer.add_text("params", "  \n".join(f"{k}: {v}" for k, v in flat.items()), global_step=0)

    # ---- the FineTuner events --------------------------------------------------------------------------------------
    def on_train_begin(self, state: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        self.enabled = not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)
        if self.enabled:
            self._open()
            self._log_params()

    def on_step_end(self, state: Any, **kwargs: Any) -> None:
        parts = kwargs.get("parts")
        if parts is None or not self.enabled:
            return
        self.log_metrics({"train/loss": float(parts.loss.detach()), "train/task_loss": float(parts.task_loss),
                          "train/reg_loss": float(parts.reg_loss)}, step=state.global_step)

    def on_epoch_end(self, state: Any, **kwargs: Any) -> None:
        record = kwargs.get("record") or {}
        values = {k: v for k, v in record.items() if k not in ("epoch", "step", "seconds")}
        self.log_metrics(values, step=int(record.get("step", state.global_step)))

    def on_epoch_begin(self, state: Any, **kwargs: Any) -> None: ...

    def on_train_end(self, state: Any, **kwargs: Any) -> None:
        self.close()  # a later log_metrics / log_table (e.g. the test metrics, the profile) reopens the run


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out

"""A collapse guard: notice when a regulariser is being satisfied by making every representation the same.

The cheapest way to be perfectly "noise-stable" is a constant map, and a pilot reconstruction of LNSR with a large
lambda fell to chance exactly that way. The guard measures, at the end of every epoch, how spread out the clean
sentence representations of a fixed batch are at the top layer:

* **effective rank** (Roy & Vetterli, 2007): ``exp(H(p))`` with ``p`` the singular values of the centred
  representation matrix normalised to sum to 1 — between 1 (everything on one line) and min(n, d);
* **mean pairwise cosine** of the (uncentred) representations — 1 when all sentences map to the same direction;

and the ratio of the regulariser's share of the loss to the task loss. A run is marked *collapsed* when the effective
rank falls below ``min_rank_fraction`` of its value before training, or the mean pairwise cosine rises above
``max_mean_cosine``; a warning says so, and the epoch's history row carries the numbers and the flag.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..utils.validation import check_number, check_positive_int
from .loop import FineTunerCallback, TrainState

__all__ = ["effective_rank", "mean_pairwise_cosine", "CollapseGuard", "CollapseWarning"]


class CollapseWarning(UserWarning):
    """The representations of a run collapsed (see :class:`CollapseGuard`)."""


def effective_rank(x: np.ndarray | torch.Tensor) -> float:
    """``exp`` of the entropy of the normalised singular values of the centred matrix ``x`` (n x d)."""
    m = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float64)
    if m.dim() != 2 or m.shape[0] < 2:
        raise ValueError(f"effective_rank needs a 2-D matrix with at least 2 rows; got shape {tuple(m.shape)}.")
    s = torch.linalg.svdvals(m - m.mean(dim=0, keepdim=True))
    total = s.sum()
    if total <= 0:
        return 1.0
    p = s / total
    p = p[p > 0]
    return float(math.exp(-(p * p.log()).sum()))


def mean_pairwise_cosine(x: np.ndarray | torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct rows of ``x`` (n x d)."""
    m = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float64)
    if m.dim() != 2 or m.shape[0] < 2:
        raise ValueError(f"mean_pairwise_cosine needs at least 2 rows; got shape {tuple(m.shape)}.")
    u = m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = u.shape[0]
    total = (u.sum(dim=0) ** 2).sum() - (u * u).sum()  # sum over i != j of <u_i, u_j>
    return float(total / (n * (n - 1)))


class CollapseGuard(FineTunerCallback):
    """Record representation spread each epoch and warn when it collapses.

    A :class:`~lnsr_viz.training.loop.FineTuner` callback; ``RegularizedTrainer(callbacks=[guard])`` accepts it
    too (wrapped in :class:`~lnsr_viz.training.hf_trainer.CollapseCallback`, its rows go to ``state.log_history``).

    Parameters
    ----------
    texts : sequence of str
        A fixed batch of sentences (e.g. 64 validation sentences).
    tokenizer : tokenizer
    min_rank_fraction : float, default=0.25
        Collapsed when the effective rank falls below this fraction of its value before training.
    max_mean_cosine : float, default=0.98
        Collapsed when the mean pairwise cosine exceeds this.
    max_length : int, default=64
    """

    def __init__(self, texts: Sequence[str], tokenizer: Any, *, min_rank_fraction: float = 0.25,
                 max_mean_cosine: float = 0.98, max_length: int = 64) -> None:
        self.texts = list(texts)
        if len(self.texts) < 2:
            raise ValueError("CollapseGuard needs at least 2 sentences to measure spread.")
        self.tokenizer = tokenizer
        self.min_rank_fraction = check_number("min_rank_fraction", min_rank_fraction, owner="CollapseGuard",
                                              low=0.0, high=1.0)
        self.max_mean_cosine = check_number("max_mean_cosine", max_mean_cosine, owner="CollapseGuard", low=-1.0,
                                            high=1.0)
        self.max_length = check_positive_int("max_length", max_length, owner="CollapseGuard")
        self.initial_rank: float | None = None
        self.collapsed = False

    def _top_layer(self, model: Any) -> torch.Tensor:
        from ..analysis.drift import mean_pool
        from ..core.adapter import ModelAdapter
        from ..core.inputs import eval_mode, tokenize

        adapter = ModelAdapter(model)
        with eval_mode(model), torch.no_grad():
            enc = tokenize(self.tokenizer, self.texts, max_length=self.max_length, model=adapter.model)
            cap = adapter.capture(enc)
            return mean_pool(cap.hidden[-1], cap.mask)

    def measure(self, model: Any) -> tuple[float, float]:
        """(effective rank, mean pairwise cosine) of the top-layer sentence representations."""
        reps = self._top_layer(model)
        return effective_rank(reps), mean_pairwise_cosine(reps)

    def on_train_begin(self, state: TrainState, **kwargs: Any) -> None:
        self.initial_rank, _ = self.measure(kwargs["model"])
        self.collapsed = False

    def check(self, model: Any, *, epoch: int, train_loss: float, task_loss: float) -> dict[str, Any]:
        """Measure the spread now, warn on the first collapse, and return the history columns it adds.

        ``train_loss`` and ``task_loss`` are the epoch's mean total and task losses (NaN when unknown); their
        difference over the task loss is the regulariser's share, ``reg_to_task_ratio``.
        """
        rank, cosine = self.measure(model)
        share = train_loss - task_loss
        ratio = share / task_loss if task_loss > 0 else float("nan")
        collapsed = bool((self.initial_rank and rank < self.min_rank_fraction * self.initial_rank)
                         or cosine > self.max_mean_cosine)
        if collapsed and not self.collapsed:
            warnings.warn(
                f"representations collapsed at epoch {epoch}: effective rank {rank:.1f} (was "
                f"{self.initial_rank:.1f} before training; threshold {self.min_rank_fraction:.0%} of it), mean "
                f"pairwise cosine {cosine:.3f} (threshold {self.max_mean_cosine}); {self._advice(share, ratio)}",
                CollapseWarning, stacklevel=3)
        self.collapsed = self.collapsed or collapsed
        return {"repr_effective_rank": rank, "repr_mean_cosine": cosine, "reg_to_task_ratio": ratio,
                "collapsed": collapsed}

    @staticmethod
    def _advice(share: float, ratio: float) -> str:
        """What to change: a regulariser's weight only when a regulariser adds to the loss (not for vanilla)."""
        if math.isfinite(share) and abs(share) > 1e-12 and math.isfinite(ratio):
            return (f"the regulariser's share is {ratio:.2f}x the task loss. Lower its weight (or the learning "
                    "rate).")
        return ("no regulariser adds to the loss (e.g. vanilla), so the task loss alone collapsed them. Lower the "
                "learning rate or train for fewer epochs.")

    def on_epoch_end(self, state: TrainState, **kwargs: Any) -> None:
        record = kwargs["record"]
        record.update(self.check(kwargs["model"], epoch=state.epoch, train_loss=record["train_loss"],
                                 task_loss=record["train_task_loss"]))

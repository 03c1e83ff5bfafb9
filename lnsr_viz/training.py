"""Fine-tuning a sequence classifier with any :class:`~lnsr_viz.regularizers.Method` (vanilla, LNSR, ...).

The loop is deliberately plain: AdamW with linear warm-up and decay, gradient clipping, seeded shuffling and noise
(same seed and config give the same metrics on CPU), ``tqdm.auto`` progress, optional early stopping on validation
accuracy. Callbacks receive a small, JSON-serialisable :class:`TrainState` at fixed events (``on_train_begin``,
``on_epoch_begin``, ``on_step_end``, ``on_epoch_end``, ``on_train_end``), in the manner of Hugging Face's
``TrainerCallback``; the method decides *what* the loss is, callbacks decide *when* something else happens.

Per epoch the history records the training loss (total, and its task and regulariser parts, averaged over the
epoch's steps), the training and validation accuracy and loss measured in eval mode at the end of the epoch
(dropout off, so the gap is not inflated by dropout), and the generalisation gap = train accuracy - validation
accuracy.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ._validation import check_number, check_positive_int
from .regularizers import Method, get_method

__all__ = ["FineTuner", "TrainState", "TrainerCallback", "set_seed", "HISTORY_COLUMNS"]

HISTORY_COLUMNS = ("epoch", "train_loss", "train_task_loss", "train_reg_loss", "train_accuracy", "val_accuracy",
                   "val_loss", "gap", "seconds")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """The trainer's state, passed to callbacks and saved with a run (JSON-serialisable)."""

    epoch: int = 0
    global_step: int = 0
    max_steps: int = 0
    last_loss: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_accuracy: float = float("-inf")
    best_epoch: int = 0
    should_stop: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainerCallback:
    """Base class for callbacks: every event is a no-op with the signature ``(self, state, **kwargs)``.

    ``kwargs`` carries ``model`` and, where it applies, ``parts`` (the step's :class:`LossParts`) or ``record`` (the
    epoch's history row). Setting ``state.should_stop = True`` ends training after the current epoch.
    """

    def on_train_begin(self, state: TrainState, **kwargs: Any) -> None: ...
    def on_epoch_begin(self, state: TrainState, **kwargs: Any) -> None: ...
    def on_step_end(self, state: TrainState, **kwargs: Any) -> None: ...
    def on_epoch_end(self, state: TrainState, **kwargs: Any) -> None: ...
    def on_train_end(self, state: TrainState, **kwargs: Any) -> None: ...


def _prepare(data: Any, name: str) -> Any:
    from .data import as_dataset

    return as_dataset(data, name=name)


def _no_decay(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith("bias") or "layernorm" in lowered or "layer_norm" in lowered or ".ln_" in lowered


class FineTuner:
    """Fine-tune a sequence classifier with a method (``'vanilla'``, ``'lnsr'``, ... or a Method instance).

    Parameters
    ----------
    method : str or Method, default='vanilla'
    method_params : dict, optional
        Parameters for the method when given by name, e.g. ``{'lam': 10.0, 'injection_layer': 0}``.
    epochs : int, default=4
    batch_size : int, default=32
    lr : float, default=5e-5
        Peak learning rate of AdamW.
    weight_decay : float, default=0.01
        Not applied to biases and LayerNorm weights.
    warmup_ratio : float, default=0.1
        Fraction of the steps with a linear warm-up; the rest decays linearly to 0.
    max_grad_norm : float, default=1.0
        Gradient clipping (0 disables).
    max_length : int, default=64
        Tokenizer truncation length.
    seed : int, default=0
        Seeds shuffling, dropout and the method's noise.
    early_stopping_patience : int or None, default=None
        Stop when validation accuracy has not improved for this many epochs and restore the best epoch's weights.
    eval_batch_size : int, default=64
    callbacks : sequence of TrainerCallback
    progress : bool, default=True

    Attributes
    ----------
    history_ : DataFrame
        One row per epoch with the columns of ``HISTORY_COLUMNS``.
    state_ : TrainState
    method_ : Method
    """

    def __init__(self, method: str | Method = "vanilla", *, method_params: Mapping[str, Any] | None = None,
                 epochs: int = 4, batch_size: int = 32, lr: float = 5e-5, weight_decay: float = 0.01,
                 warmup_ratio: float = 0.1, max_grad_norm: float = 1.0, max_length: int = 64, seed: int = 0,
                 early_stopping_patience: int | None = None, eval_batch_size: int = 64,
                 callbacks: Sequence[TrainerCallback] = (), progress: bool = True) -> None:
        owner = "FineTuner"
        self.method = method
        self.method_params = dict(method_params or {})
        self.epochs = check_positive_int("epochs", epochs, owner=owner)
        self.batch_size = check_positive_int("batch_size", batch_size, owner=owner)
        self.lr = check_number("lr", lr, owner=owner, low=0.0, low_closed=False,
                               hint="A typical value for BERT-sized models is 2e-5 to 5e-5.")
        self.weight_decay = check_number("weight_decay", weight_decay, owner=owner, low=0.0)
        self.warmup_ratio = check_number("warmup_ratio", warmup_ratio, owner=owner, low=0.0, high=1.0)
        self.max_grad_norm = check_number("max_grad_norm", max_grad_norm, owner=owner, low=0.0)
        self.max_length = check_positive_int("max_length", max_length, owner=owner)
        self.seed = int(check_number("seed", seed, owner=owner, integer=True))
        if early_stopping_patience is not None:
            check_positive_int("early_stopping_patience", early_stopping_patience, owner=owner)
        self.early_stopping_patience = early_stopping_patience
        self.eval_batch_size = check_positive_int("eval_batch_size", eval_batch_size, owner=owner)
        self.callbacks = list(callbacks)
        self.progress = bool(progress)
        # Build the method now so a bad name or parameter fails before any work.
        self.method_ = get_method(method, **self.method_params)

    # ------------------------------------------------------------------ helpers
    def _collate(self, tokenizer: Any, texts: list[str], labels: np.ndarray, model: nn.Module) -> dict[str, Any]:
        from .probe import _tokenize

        enc = _tokenize(tokenizer, texts, self.max_length, model)
        enc["labels"] = torch.as_tensor(labels, dtype=torch.long, device=enc["input_ids"].device)
        return enc

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (no_decay if _no_decay(name) else decay).append(param)
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.lr)

    def _schedule(self, optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
        warmup = int(round(self.warmup_ratio * total))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _emit(self, event: str, **kwargs: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self.state_, **kwargs)

    def _eval(self, model: nn.Module, tokenizer: Any, data: Any) -> tuple[float, float]:
        from .evaluation import accuracy, nll, predict_proba

        probs = predict_proba(model, tokenizer, data.texts, batch_size=self.eval_batch_size,
                              max_length=self.max_length)
        return accuracy(probs, data.labels), nll(probs, data.labels)

    # ------------------------------------------------------------------ fit
    def fit(self, model: nn.Module, tokenizer: Any, train: Any, validation: Any = None) -> FineTuner:
        """Fine-tune ``model`` in place on ``train``; evaluate on ``validation`` after every epoch."""
        train = _prepare(train, "train")
        validation = _prepare(validation, "validation") if validation is not None else None
        n_labels = getattr(getattr(model, "config", None), "num_labels", None)
        for ds in (train, validation):
            if ds is not None and n_labels is not None and int(ds.labels.max()) >= n_labels:
                raise ValueError(f"dataset {ds.name!r} has label {int(ds.labels.max())} but the model has "
                                 f"num_labels={n_labels}; load the model with num_labels={int(ds.labels.max()) + 1}.")
        if len(np.unique(train.labels)) < 2:
            raise ValueError(f"training data {train.name!r} has only one class ({int(train.labels[0])}); "
                             "classification needs at least two.")
        if self.early_stopping_patience is not None and validation is None:
            raise ValueError("early_stopping_patience needs validation data: pass validation= to fit().")

        set_seed(self.seed)
        method = self.method_
        method.setup(model, seed=self.seed)
        optimizer = self._optimizer(model)
        steps_per_epoch = (len(train) + self.batch_size - 1) // self.batch_size
        total = steps_per_epoch * self.epochs
        scheduler = self._schedule(optimizer, total)
        self.state_ = TrainState(max_steps=total)
        shuffler = torch.Generator().manual_seed(self.seed)
        best_state: dict[str, torch.Tensor] | None = None
        patience_left = self.early_stopping_patience
        start_time = time.perf_counter()
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"fine-tune {method.name} (seed {self.seed})", unit="step",
                   disable=not self.progress, leave=False)
        self._emit("on_train_begin", model=model)
        try:
            for epoch in range(1, self.epochs + 1):
                self.state_.epoch = epoch
                self._emit("on_epoch_begin", model=model)
                epoch_start = time.perf_counter()
                order = torch.randperm(len(train), generator=shuffler).numpy()
                sums = {"loss": 0.0, "task": 0.0, "reg": 0.0}
                model.train()
                for step in range(steps_per_epoch):
                    idx = order[step * self.batch_size:(step + 1) * self.batch_size]
                    batch = self._collate(tokenizer, [train.texts[i] for i in idx], train.labels[idx], model)
                    parts = method.compute_loss(model, batch)
                    if not torch.isfinite(parts.loss):
                        raise FloatingPointError(
                            f"the loss became {float(parts.loss)} at epoch {epoch}, step {step + 1} "
                            f"(task {float(parts.task_loss):.4g}, regulariser {float(parts.reg_loss):.4g}); "
                            "lower the learning rate or the regulariser's weight.")
                    parts.loss.backward()
                    method.after_backward(model)
                    if self.max_grad_norm > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    self.state_.global_step += 1
                    self.state_.last_loss = float(parts.loss.detach())
                    sums["loss"] += float(parts.loss.detach())
                    sums["task"] += float(parts.task_loss)
                    sums["reg"] += float(parts.reg_loss)
                    bar.update(1)
                    bar.set_postfix(loss=f"{self.state_.last_loss:.3f}", reg=f"{float(parts.reg_loss):.2g}")
                    self._emit("on_step_end", model=model, parts=parts)
                train_acc, _ = self._eval(model, tokenizer, train)
                record = {
                    "epoch": epoch,
                    "train_loss": sums["loss"] / steps_per_epoch,
                    "train_task_loss": sums["task"] / steps_per_epoch,
                    "train_reg_loss": sums["reg"] / steps_per_epoch,
                    "train_accuracy": train_acc,
                    "val_accuracy": float("nan"),
                    "val_loss": float("nan"),
                    "gap": float("nan"),
                }
                if validation is not None:
                    val_acc, val_loss = self._eval(model, tokenizer, validation)
                    record.update(val_accuracy=val_acc, val_loss=val_loss, gap=train_acc - val_acc)
                    if val_acc > self.state_.best_val_accuracy:
                        self.state_.best_val_accuracy = val_acc
                        self.state_.best_epoch = epoch
                        patience_left = self.early_stopping_patience
                        if self.early_stopping_patience is not None:
                            best_state = copy.deepcopy(model.state_dict())
                    elif patience_left is not None:
                        patience_left -= 1
                        if patience_left <= 0:
                            self.state_.should_stop = True
                record["seconds"] = time.perf_counter() - epoch_start
                self.state_.history.append(record)
                self._emit("on_epoch_end", model=model, record=record)
                if self.state_.should_stop:
                    break
        finally:
            bar.close()
            method.teardown(model)
            model.eval()
        if best_state is not None and self.state_.best_epoch != self.state_.epoch:
            model.load_state_dict(best_state)
        self.state_.seconds = time.perf_counter() - start_time
        self._emit("on_train_end", model=model)
        self.history_ = pd.DataFrame(self.state_.history, columns=list(HISTORY_COLUMNS))
        return self

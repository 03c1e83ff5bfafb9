"""Hugging Face ``Trainer`` integration: add LNSR or any rival method to an existing ``transformers`` training script.

Replace ``Trainer`` with :class:`RegularizedTrainer` and name the method; everything else (``TrainingArguments``,
datasets, collators, callbacks, ``accelerate launch`` / ``torchrun``) stays as it is::

    from lnsr_viz import RegularizedTrainer

    trainer = RegularizedTrainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                                 processing_class=tokenizer, method="lnsr", method_params={"lam": 10.0})
    trainer.train()   # the logs now hold task_loss and reg_loss next to loss

Why a subclass and not ``compute_loss_func``: Trainer calls ``compute_loss_func(outputs, labels,
num_items_in_batch=...)`` with the outputs of one forward pass only, while LNSR (capture and replay of the blocks),
SMART, R3F and R-Drop need the model and the inputs to run further passes, and ChildTuning must act between
gradient clipping and the optimizer step. The subclass overrides exactly the documented extension points:

* ``compute_loss`` (training mode only; evaluation keeps Trainer's own loss, so ``eval_loss`` is the plain task loss),
* ``training_step`` (calls the method's ``after_backward`` after each backward pass),
* a callback on ``on_train_begin`` (``setup``, and ``setup_data`` with the training dataloader for ChildTuning-D),
  ``on_pre_optimizer_step`` (``before_optimizer_step``: after Trainer's clipping, before the optimizer step) and
  ``on_train_end`` (``teardown``),
* ``log`` (adds ``task_loss`` and ``reg_loss``, averaged like ``loss`` over the steps since the last log and over
  processes).

:class:`RegularizationMixin` carries all of it, for projects that already subclass ``Trainer`` (``class
MyTrainer(RegularizationMixin, MyBaseTrainer)``).

Behaviour that follows from Trainer (transformers 5.x) and is worth knowing:

* The method's loss is a per-batch mean, so ``loss_is_scaled_for_ga = False``: Trainer divides it by the number of
  gradient-accumulation steps and DistributedDataParallel averages it over processes. ``reg_loss`` is logged
  unweighted (as in :class:`~lnsr_viz.training.loop.FineTuner`'s history), ``loss = task_loss + weight * reg_loss``.
* ``setup`` runs when training begins (after a ``model_init`` model is built), on the bare model, with
  ``seed=args.seed``, ``rank=args.process_index`` and ``world_size=args.world_size``; per-process noise is therefore
  independent and reproducible. ``after_backward`` is called after every micro-batch's backward pass.
* The same seed, data order and optimizer settings give the same run as :class:`~lnsr_viz.training.loop.FineTuner`
  (checked in ``tests/test_hf.py``): both shuffle the first epoch with ``torch.randperm(n, seed)``, use AdamW
  with bias/LayerNorm excluded from weight decay, linear decay and clipping at ``max_grad_norm``. They differ in
  the warm-up formula (FineTuner's first step already has a non-zero learning rate), in later epochs' order
  (Trainer reseeds its sampler with ``seed + epoch``) and, with the default ``optim='adamw_torch_fused'``, in
  the last bits of the update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from ..methods import Method, get_method, unwrap_model
from ..utils.extras import check_available
from .collapse import CollapseGuard
from .loop import FineTunerCallback

__all__ = ["RegularizedTrainer", "RegularizationMixin", "MethodCallback", "CollapseCallback"]


class CollapseCallback(TrainerCallback):
    """Runs a :class:`~lnsr_viz.training.collapse.CollapseGuard` at the end of every Trainer epoch.

    Its columns (``repr_effective_rank``, ``repr_mean_cosine``, ``reg_to_task_ratio``, ``collapsed``) are appended
    to ``state.log_history`` as one row per epoch; the regulariser's share comes from the ``loss`` and ``task_loss``
    that :class:`RegularizationMixin` logs (averaged over the epoch's log rows; NaN when none was logged).
    :class:`RegularizationMixin` wraps a guard passed in ``callbacks=`` in this class itself.
    """

    def __init__(self, guard: CollapseGuard) -> None:
        if not isinstance(guard, CollapseGuard):
            raise TypeError(f"CollapseCallback wraps a CollapseGuard; got {type(guard).__name__}.")
        self.guard = guard
        self._losses: list[tuple[float, float]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.guard.on_train_begin(state, model=unwrap_model(kwargs["model"]))
        self._losses = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, float] | None = None,
               **kwargs: Any) -> None:
        if logs and "loss" in logs and "task_loss" in logs:
            self._losses.append((float(logs["loss"]), float(logs["task_loss"])))

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        loss, task = (tuple(float(v) for v in torch.tensor(self._losses, dtype=torch.float64).mean(0))
                      if self._losses else (float("nan"), float("nan")))
        self._losses = []
        row = self.guard.check(unwrap_model(kwargs["model"]), epoch=int(round(state.epoch or 0)), train_loss=loss,
                               task_loss=task)
        state.log_history.append({"epoch": state.epoch, "step": state.global_step, **row})


def _trainer_callbacks(callbacks: Any) -> Any:
    """Trainer's ``callbacks=`` with each CollapseGuard wrapped; other FineTuner callbacks are refused, said why."""
    if callbacks is None:
        return None
    out = []
    for cb in callbacks:
        if isinstance(cb, CollapseGuard):
            out.append(CollapseCallback(cb))
        elif isinstance(cb, FineTunerCallback):
            raise TypeError(
                f"{type(cb).__name__} is a FineTunerCallback (events take (state, **kwargs)); Trainer's callbacks "
                "are transformers.TrainerCallback (args, state, control, **kwargs). Subclass that one instead."
            )
        else:
            out.append(cb)
    return out


class MethodCallback(TrainerCallback):
    """Calls a method's ``setup`` / ``setup_data`` / ``before_optimizer_step`` / ``teardown`` at Trainer's events.

    Added by :class:`RegularizationMixin`; not meant to be added by hand.
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._setup_method(kwargs.get("train_dataloader"))

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.method.before_optimizer_step(self.trainer.model)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._teardown_method()


class RegularizationMixin:
    """Adds a fine-tuning method to any ``transformers.Trainer`` subclass (put it first in the bases).

    Parameters
    ----------
    *args, **kwargs
        Passed to the Trainer.
    method : str or Method, default='lnsr'
        A registered name (``'lnsr'``, ``'smart'``, ``'lnsr+mixout'``, ...; see
        ``lnsr_viz.methods.METHODS``) or a Method instance.
    method_params : mapping, optional
        Parameters of the method when given by name, e.g. ``{'lam': 10.0}``. Checked before anything else.

    Attributes
    ----------
    method : Method
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, method: str | Method = "lnsr", method_params: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        self.method = get_method(method, **dict(method_params or {}))  # fails before Trainer does any work
        check_available("accelerate", f"{type(self).__name__} (transformers' Trainer)")
        self._method_ready = False
        self._reg_sums: torch.Tensor | None = None  # (task_loss, reg_loss) summed since the last log, on device
        self._reg_count = 0
        if "callbacks" in kwargs:
            kwargs["callbacks"] = _trainer_callbacks(kwargs["callbacks"])
        super().__init__(*args, **kwargs)
        self.add_callback(MethodCallback(self))

    # ------------------------------------------------------------------ lifecycle
    def _setup_method(self, train_dataloader: Any = None) -> None:
        if self._method_ready:
            return
        args = self.args
        model = unwrap_model(self.model)
        self.method.setup(model, seed=int(args.seed), rank=int(args.process_index), world_size=int(args.world_size))
        self._method_ready = True
        if self.method.needs_data:
            loader = train_dataloader if train_dataloader is not None else self.get_train_dataloader()
            self.method.setup_data(model, (self._prepare_inputs(batch) for batch in loader))

    def _teardown_method(self) -> None:
        if self._method_ready:
            self.method.teardown(unwrap_model(self.model))
            self._method_ready = False

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer's ``train``; the method's hooks are removed even when training fails."""
        try:
            return super().train(*args, **kwargs)
        finally:
            self._teardown_method()

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        """The method's loss in training mode; Trainer's own loss in evaluation (``eval_loss`` = task loss)."""
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if not self._method_ready:
            self._setup_method()
        parts = self.method.compute_loss(model, inputs)
        step = torch.stack([parts.task_loss.detach().to(torch.float64),
                            parts.reg_loss.detach().to(device=parts.task_loss.device, dtype=torch.float64)])
        self._reg_sums = step if self._reg_sums is None else self._reg_sums + step  # no device sync per step
        self._reg_count += 1
        if return_outputs:
            return parts.loss, {"loss": parts.loss, "logits": parts.logits}
        return parts.loss

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.method.after_backward(unwrap_model(model))
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's ``log``, with ``task_loss`` and ``reg_loss`` next to ``loss`` (mean over processes)."""
        if "loss" in logs and self._reg_sums is not None and self._reg_count > 0:
            values = self.accelerator.reduce(self._reg_sums / self._reg_count, reduction="mean")
            logs["task_loss"], logs["reg_loss"] = (float(v) for v in values.tolist())
            self._reg_sums, self._reg_count = None, 0
        super().log(logs, start_time)


class RegularizedTrainer(RegularizationMixin, Trainer):
    """``transformers.Trainer`` with a fine-tuning method (LNSR, SMART, ...) and the regulariser in the logs.

    Parameters
    ----------
    *args, **kwargs
        Exactly those of ``transformers.Trainer`` (model, args, train_dataset, ...).
    method : str or Method, default='lnsr'
        Any name of ``lnsr_viz.methods.METHODS`` or a combination (``'lnsr+mixout'``), or a Method instance.
    method_params : mapping, optional
        The method's parameters, e.g. ``{'lam': 10.0, 'injection_layer': 0}``.
    callbacks : list, optional
        Trainer's callbacks; a :class:`~lnsr_viz.training.collapse.CollapseGuard` among them is run at each epoch's
        end through :class:`CollapseCallback`.

    Examples
    --------
    >>> from transformers import TrainingArguments
    >>> args = TrainingArguments(output_dir="out", learning_rate=5e-5, num_train_epochs=3, logging_steps=10,
    ...                          report_to=[])                                              # doctest: +SKIP
    >>> trainer = RegularizedTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
    ...                              method="smart", method_params={"lam": 1.0})            # doctest: +SKIP
    >>> trainer.train()                                                                      # doctest: +SKIP
    >>> [h["reg_loss"] for h in trainer.state.log_history if "reg_loss" in h]               # doctest: +SKIP

    See the module docstring for what is overridden, and why a subclass rather than ``compute_loss_func``.
    """

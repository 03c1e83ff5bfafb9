"""Fine-tuning a sequence classifier with any :class:`~lnsr_viz.methods.base.Method` (vanilla, LNSR, ...).

The loop is deliberately plain: AdamW with linear warm-up and decay, gradient clipping, seeded shuffling and noise
(same seed and config give the same metrics on CPU), ``tqdm.auto`` progress, optional early stopping on validation
accuracy. Callbacks receive a small, JSON-serialisable :class:`TrainState` at fixed events (``on_train_begin``,
``on_epoch_begin``, ``on_step_end``, ``on_epoch_end``, ``on_train_end``), in the manner of Hugging Face's
``FineTunerCallback``; the method decides *what* the loss is, callbacks decide *when* something else happens.

Per epoch the history records the training loss (total, and its task and regulariser parts, averaged over the
epoch's steps), the training and validation accuracy and loss measured in eval mode at the end of the epoch
(dropout off, so the gap is not inflated by dropout), and the generalisation gap = train accuracy - validation
accuracy. For question answering (a ``QADataset``) the training items are the sliding windows, and the
"accuracy" columns hold the SQuAD F1 divided by 100 (a ``score`` column says ``f1``).

Several processes (DistributedDataParallel)
-------------------------------------------
The same script runs unchanged under ``torchrun --nproc_per_node N script.py`` (CPU or GPUs) or, on GPUs,
``accelerate launch --multi_gpu --num_processes N script.py`` (Accelerate's multi-CPU mode launches through
``mpirun`` instead; use torchrun on CPUs): when the launcher's environment says ``WORLD_SIZE > 1`` (or a process
group already exists), :meth:`FineTuner.fit` joins the process group (gloo on CPU, NCCL with one GPU per process,
``cuda:LOCAL_RANK``), wraps the model in ``DistributedDataParallel`` and gives every process a
``DistributedSampler``-style share of each global batch of ``batch_size`` examples (positions ``rank::world_size``;
every process draws the same shuffled order from the seed). DDP averages the gradients, so a step equals the
single-process step on the whole global batch (exactly so for LNSR's token-mean penalty and for per-example means
when ``batch_size`` is a multiple of the number of processes). The method's noise and the dropout masks are
independent per process and reproducible from ``seed``; the logged losses are averaged over processes; every process
evaluates on the full training and validation data, so early stopping decides the same everywhere; only rank 0
shows a progress bar. The process group is left open for the script's later calls (see
:func:`lnsr_viz.training.distributed.cleanup_distributed`).

Mixed precision
---------------
``precision='bf16'`` runs each step's forward pass and loss (``Method.compute_loss``) and the per-epoch evaluations
under ``torch.autocast(device_type, dtype=torch.bfloat16)``; the backward pass, gradient clipping and the AdamW
update run outside it, and the parameters, gradients and optimizer state stay float32 (bfloat16 keeps float32's
exponent range, so no ``GradScaler`` is needed). The hardware is checked when :meth:`FineTuner.fit` starts, before any
work: a CPU needs bfloat16 instructions (avx512_bf16 / amx_bf16), a GPU ``torch.cuda.is_bf16_supported()``
(:func:`lnsr_viz.utils.precision.require_precision`). The default, ``'fp32'``, is the loop as it always was.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import transformers
from torch import nn

from ..methods import LossParts, Method, get_method
from ..utils.precision import DEFAULT_PRECISION, autocast, check_precision, require_precision
from ..utils.validation import check_bool, check_number, check_positive_int
from .tasks import QAData, as_task_data

__all__ = ["FineTuner", "TrainState", "FineTunerCallback", "set_seed", "HISTORY_COLUMNS"]

HISTORY_COLUMNS = ("epoch", "step", "train_loss", "train_task_loss", "train_reg_loss", "train_accuracy", "val_accuracy",
                   "val_loss", "gap", "seconds")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) with ``transformers.set_seed``; ``seed`` in ``[0, 2**32)``."""
    seed = int(check_number("seed", seed, owner="set_seed", integer=True, low=0, high=2**32 - 1))
    transformers.set_seed(seed)


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
    #: the optimizer step of the best validation evaluation (the step whose weights ``keep_best`` restores)
    best_step: int = 0
    #: the learning rate the next optimizer step will use (after the schedule's step)
    learning_rate: float = float("nan")
    should_stop: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FineTunerCallback:
    """Base class for :class:`FineTuner` callbacks: every event is a no-op, ``(self, state, **kwargs)``.

    Not ``transformers.TrainerCallback`` (whose events take ``(args, state, control, **kwargs)``): for
    :class:`~lnsr_viz.training.hf_trainer.RegularizedTrainer` use transformers' callbacks, or pass a
    :class:`~lnsr_viz.training.collapse.CollapseGuard`, which it adapts.

    ``kwargs`` carries ``model`` and, where it applies, ``parts`` (the step's :class:`LossParts`) or ``record`` (the
    epoch's history row). Setting ``state.should_stop = True`` ends training after the current epoch.
    """

    def on_train_begin(self, state: TrainState, **kwargs: Any) -> None: ...
    def on_epoch_begin(self, state: TrainState, **kwargs: Any) -> None: ...
    def on_step_end(self, state: TrainState, **kwargs: Any) -> None: ...
    def on_epoch_end(self, state: TrainState, **kwargs: Any) -> None: ...
    def on_train_end(self, state: TrainState, **kwargs: Any) -> None: ...


def _no_decay(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith("bias") or "layernorm" in lowered or "layer_norm" in lowered or ".ln_" in lowered


class FineTuner:
    """Fine-tune a sequence classifier with a method (``'vanilla'``, ``'lnsr'``, ... or a Method instance).

    Parameters
    ----------
    method : str or Method, default='vanilla'
        A name of ``lnsr_viz.methods.METHODS`` (vanilla, lnsr, l2sp, mixout, smart, r3f, rdrop, noisytune, hype,
        childtuning), a combination such as ``'lnsr+mixout'``, or a Method instance.
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
        Stop when validation accuracy has not improved for this many evaluations (epochs, unless ``eval_every``)
        and restore the best evaluation's weights.
    max_steps : int or None, default=None
        A budget in optimizer steps: train for exactly this many steps (reshuffling the data at every pass) and
        ignore ``epochs``, as ``transformers.TrainingArguments.max_steps`` does. The schedule's warm-up and decay
        are laid over these steps.
    eval_every : int or None, default=None
        Evaluate (training score, validation accuracy and loss: one history row) every this many optimizer steps
        and after the last; default: at the end of every epoch.
    keep_best : bool, default=False
        At the end, restore the weights of the evaluation with the best validation accuracy (the first of equal
        ones), like ``load_best_model_at_end``; ``state_.best_step`` says which step was kept. Needs validation.
    train_eval_size : int or None, default=None
        Measure the training score of each history row on a fixed sample of this many training examples (drawn
        once with seed 0, the same for every method and seed) instead of all of them: cheaper on large data.
    group_by_length : bool, default=False
        Batch sentences of similar length together (``transformers.trainer_pt_utils.get_length_grouped_indices``,
        as ``TrainingArguments.group_by_length``): shuffled mega-batches of about 50 batches sorted by length, so
        less padding is computed. Same data and epochs; a different batch composition than plain shuffling.
    eval_batch_size : int, default=64
    callbacks : sequence of FineTunerCallback
    progress : bool, default=True
    precision : {'fp32', 'bf16'}, default='fp32'
        'bf16': bfloat16 autocast around the forward pass and loss of every step and around the evaluations;
        parameters and optimizer stay float32 (see the module docstring). Checked against the hardware in :meth:`fit`.
    report_to : str, list of str or None, default=None
        Report the run to ``'tensorboard'``, ``'mlflow'``, a list of them or ``'all'`` (the names of
        ``TrainingArguments.report_to``): the step losses, every history row (validation metrics, the collapse
        guard's numbers) at its step (:class:`~lnsr_viz.training.tracking.Tracker`, then ``tracker_``). None or
        ``'none'`` reports nothing. Needs ``pip install 'lnsr_viz[tracking]'``; checked here, before any work.
    logging_dir : str or path, optional
        TensorBoard's folder (default ``runs``): the run writes into ``logging_dir/<run_name>``.
    run_name : str, optional
        The run's name in the tracking tools (default ``'<method>-seed<seed>'``).

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
                 callbacks: Sequence[FineTunerCallback] = (), progress: bool = True,
                 precision: str = DEFAULT_PRECISION, max_steps: int | None = None, eval_every: int | None = None,
                 keep_best: bool = False, train_eval_size: int | None = None,
                 group_by_length: bool = False, report_to: str | Sequence[str] | None = None,
                 logging_dir: str | None = None, run_name: str | None = None) -> None:
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
        self.seed = int(check_number("seed", seed, owner=owner, integer=True, low=0, high=2**32 - 1))
        if early_stopping_patience is not None:
            check_positive_int("early_stopping_patience", early_stopping_patience, owner=owner)
        self.early_stopping_patience = early_stopping_patience
        self.eval_batch_size = check_positive_int("eval_batch_size", eval_batch_size, owner=owner)
        self.callbacks = list(callbacks)
        self.progress = bool(progress)
        self.precision = check_precision(precision, owner=owner)
        budget_hint = "A budget in optimizer steps, e.g. max_steps=200; None trains for `epochs` passes."
        self.max_steps = None if max_steps is None else check_positive_int("max_steps", max_steps, owner=owner,
                                                                            hint=budget_hint)
        self.eval_every = None if eval_every is None else check_positive_int(
            "eval_every", eval_every, owner=owner, hint="Evaluate every N optimizer steps, e.g. eval_every=25.")
        self.keep_best = check_bool("keep_best", keep_best, owner=owner)
        self.train_eval_size = None if train_eval_size is None else check_positive_int(
            "train_eval_size", train_eval_size, owner=owner)
        self.group_by_length = check_bool("group_by_length", group_by_length, owner=owner)
        # Build the method now so a bad name or parameter fails before any work.
        self.method_ = get_method(method, **self.method_params)
        from .tracking import Tracker, normalize_report_to

        self.report_to = normalize_report_to(report_to, owner=owner)  # a missing package is refused here
        self.logging_dir = logging_dir
        self.run_name = run_name
        self.tracker_ = None
        if self.report_to:
            self.tracker_ = Tracker(self.report_to, run_name=run_name or f"{self.method_.name}-seed{self.seed}",
                                    logging_dir=logging_dir, params={"method": self.method_.name,
                                    "method_params": self.method_.params(), "train": self._tracked_settings()})

    # ------------------------------------------------------------------ helpers

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (no_decay if _no_decay(name) else decay).append(param)
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.lr)

    def _schedule(self, optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
        """Linear warm-up over ``round(warmup_ratio * total)`` steps, then linear decay to 0 at step ``total``.

        This is ``transformers.get_linear_schedule_with_warmup`` read one step ahead, so that the first update is
        not taken at learning rate 0: step ``s`` gets factor ``(s + 1) / (warmup + 1)`` while warming up, then
        ``(total - s) / (total - warmup)``, the factors lnsr_viz has always used (the test checks every step).
        """
        warmup = int(round(self.warmup_ratio * total))
        scheduler = transformers.get_linear_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup + 1, num_training_steps=total + 1
        )
        with warnings.catch_warnings():  # stepping once before any optimizer.step() is the point here
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            scheduler.step()
        return scheduler

    def _tracked_settings(self) -> dict[str, Any]:
        """The training settings a tracker logs as parameters."""
        names = ("epochs", "batch_size", "lr", "weight_decay", "warmup_ratio", "max_grad_norm", "max_length", "seed",
                 "max_steps", "eval_every", "keep_best", "precision")
        return {n: getattr(self, n) for n in names}

    def _emit(self, event: str, **kwargs: Any) -> None:
        # the tracker comes last, so it sees the columns the other callbacks (the collapse guard) add to a record
        for cb in [*self.callbacks, *([self.tracker_] if self.tracker_ is not None else [])]:
            getattr(cb, event)(self.state_, **kwargs)

    def _eval(self, model: nn.Module, tokenizer: Any, data: Any) -> tuple[float, float]:
        with autocast(self.precision, next(model.parameters()).device):
            return data.evaluate(model, tokenizer, batch_size=self.eval_batch_size, max_length=self.max_length)

    def _batches(self, tokenizer: Any, data: Any, model: nn.Module, *,
                 shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, Any]]:
        """The training data in order, in batches of ``batch_size`` (this process's share of each)."""
        from .distributed import shard_indices

        rank, world = shard
        order = np.arange(len(data))
        for start in range(0, len(data), self.batch_size):
            idx = shard_indices(order[start:start + self.batch_size], rank, world)
            yield data.batch(tokenizer, idx, model, self.max_length)

    @staticmethod
    def _wrap(model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False)

    def training_step(self, model: nn.Module, batch: Mapping[str, Any], optimizer: torch.optim.Optimizer, *,
                      train_model: nn.Module | None = None) -> LossParts:
        """One optimisation step exactly as :meth:`fit` runs it (without the learning-rate schedule).

        ``compute_loss`` (under bf16 autocast when ``precision='bf16'``) -> ``backward`` -> ``after_backward`` ->
        gradient clipping -> ``before_optimizer_step`` -> ``optimizer.step()`` -> ``zero_grad``. The method must have
        been set up on ``model``; ``train_model`` is what the loss is computed through (``model`` itself, or its
        DistributedDataParallel wrapper). Used by :meth:`fit` and by ``benchmarks/bench_methods.py``.
        """
        method = self.method_
        with autocast(self.precision, next(model.parameters()).device):
            parts = method.compute_loss(model if train_model is None else train_model, batch)
        if not torch.isfinite(parts.loss):
            loss, task, reg = (float(torch.as_tensor(v).detach()) for v in (parts.loss, parts.task_loss,
                                                                             parts.reg_loss))
            fix = "lower the learning rate" + (" or the regulariser's weight" if reg != 0 else "")
            raise FloatingPointError(f"the loss became {loss} (task {task:.4g}, regulariser {reg:.4g}); {fix}")
        parts.loss.backward()
        method.after_backward(model)
        if self.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
        method.before_optimizer_step(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return parts

    # ------------------------------------------------------------------ fit
    def _plan(self, n_items: int) -> tuple[int, int, list[int]]:
        """(steps per pass over the data, total optimizer steps, the steps after which to evaluate)."""
        steps_per_epoch = (n_items + self.batch_size - 1) // self.batch_size
        total = self.max_steps if self.max_steps is not None else steps_per_epoch * self.epochs
        every = self.eval_every if self.eval_every is not None else steps_per_epoch
        points = list(range(every, total + 1, every))
        if not points or points[-1] != total:
            points.append(total)
        return steps_per_epoch, total, points

    def _order(self, train: Any, shuffler: torch.Generator, lengths: list[int] | None) -> np.ndarray:
        """One pass's order of the training items: a seeded permutation, or length-grouped mega-batches."""
        if lengths is None:
            return torch.randperm(len(train), generator=shuffler).numpy()
        from transformers.trainer_pt_utils import get_length_grouped_indices

        return np.asarray(get_length_grouped_indices(lengths, self.batch_size, generator=shuffler))

    def _train_score_data(self, train: Any) -> Any:
        """The training data the history's training score is measured on (all, or the fixed sample)."""
        if self.train_eval_size is None or self.train_eval_size >= len(train):
            return train
        rows = np.sort(np.random.default_rng(0).permutation(len(train))[:self.train_eval_size])
        return train.subset(rows)

    def _prepare(self, model: nn.Module, tokenizer: Any, train: Any, validation: Any) -> tuple[Any, Any]:
        """Wrap and check the data before any work; refuse settings that need validation data without it."""
        require_precision(self.precision, next(model.parameters()).device, owner="FineTuner")  # before any work
        train = as_task_data(train, "train")
        validation = as_task_data(validation, "validation") if validation is not None else None
        if validation is not None and type(validation) is not type(train):
            raise ValueError(f"train is {train.task} data but validation is {validation.task} data.")
        train.check(model, role="train")
        if validation is not None:
            validation.check(model, role="validation")
        if isinstance(train, QAData):
            train.features(tokenizer, self.max_length)  # the windows are the training items
        if self.early_stopping_patience is not None and validation is None:
            raise ValueError("early_stopping_patience needs validation data: pass validation= to fit().")
        if self.keep_best and validation is None:
            raise ValueError("keep_best needs validation data to choose the best step: pass validation= to fit().")
        return train, validation

    def _evaluate_point(self, model: nn.Module, tokenizer: Any, train_score: Any, validation: Any,
                        record: dict[str, Any]) -> bool:
        """Fill ``record``'s scores; update the best evaluation. True when this evaluation is a new best."""
        train_acc, _ = self._eval(model, tokenizer, train_score)
        record["train_accuracy"] = train_acc
        if train_score.score_name != "accuracy":  # QA: the accuracy columns hold F1 / 100
            record["score"] = train_score.score_name
        if validation is None:
            return False
        val_acc, val_loss = self._eval(model, tokenizer, validation)
        record.update(val_accuracy=val_acc, val_loss=val_loss, gap=train_acc - val_acc)
        if val_acc > self.state_.best_val_accuracy:
            self.state_.best_val_accuracy = val_acc
            self.state_.best_epoch = self.state_.epoch
            self.state_.best_step = self.state_.global_step
            return True
        return False

    def fit(self, model: nn.Module, tokenizer: Any, train: Any, validation: Any = None) -> FineTuner:
        """Fine-tune ``model`` in place on ``train``; evaluate on ``validation`` after every epoch (or every
        ``eval_every`` steps), for ``epochs`` passes or exactly ``max_steps`` optimizer steps."""
        train, validation = self._prepare(model, tokenizer, train, validation)
        from .distributed import all_reduce_mean, init_distributed, shard_indices

        dist = init_distributed()
        rank, world = dist.rank, dist.world_size
        if world > 1 and torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
            model.to(torch.device("cuda", dist.local_rank))
            require_precision(self.precision, next(model.parameters()).device, owner="FineTuner")
        set_seed(self.seed)
        method = self.method_
        method.setup(model, seed=self.seed, rank=rank, world_size=world)
        try:
            if method.needs_data:
                method.setup_data(model, self._batches(tokenizer, train, model, shard=(rank, world)))
            optimizer = self._optimizer(model)
            train_model = self._wrap(model) if world > 1 else model
        except BaseException:
            method.teardown(model)
            raise
        if world > 1:  # dropout (and Mixout) masks: independent per process, reproducible from the seed
            torch.manual_seed(self.seed + 1_000_003 * rank)
        steps_per_epoch, total, points = self._plan(len(train))
        lengths = train.lengths(tokenizer, self.max_length) if self.group_by_length else None
        train_score = self._train_score_data(train)
        scheduler = self._schedule(optimizer, total)
        self.state_ = TrainState(max_steps=total)
        shuffler = torch.Generator().manual_seed(self.seed)
        best_state: dict[str, torch.Tensor] | None = None
        patience_left = self.early_stopping_patience
        start_time = time.perf_counter()
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"fine-tune {method.name} (seed {self.seed})", unit="step",
                   disable=not self.progress or rank != 0, leave=False)
        self._emit("on_train_begin", model=model)
        sums, n_summed, since = {"loss": 0.0, "task": 0.0, "reg": 0.0}, 0, time.perf_counter()
        try:
            while self.state_.global_step < total and not self.state_.should_stop:
                self.state_.epoch += 1
                self._emit("on_epoch_begin", model=model)
                order = self._order(train, shuffler, lengths)
                model.train()
                for step in range(steps_per_epoch):
                    if self.state_.global_step >= total:
                        break
                    idx = order[step * self.batch_size:(step + 1) * self.batch_size]
                    if world > 1:
                        idx = shard_indices(idx, rank, world)
                    batch = train.batch(tokenizer, idx, model, self.max_length)
                    try:
                        parts = self.training_step(model, batch, optimizer, train_model=train_model)
                    except FloatingPointError as err:
                        raise FloatingPointError(f"at epoch {self.state_.epoch}, step {step + 1}: {err}") from None
                    scheduler.step()
                    self.state_.learning_rate = float(scheduler.get_last_lr()[0])
                    loss_v, task_v, reg_v = (float(parts.loss.detach()), float(parts.task_loss),
                                             float(parts.reg_loss))
                    if world > 1:
                        loss_v, task_v, reg_v = all_reduce_mean(
                            torch.tensor([loss_v, task_v, reg_v], dtype=torch.float64,
                                         device=parts.loss.device)).tolist()
                    self.state_.global_step += 1
                    self.state_.last_loss = loss_v
                    sums["loss"] += loss_v
                    sums["task"] += task_v
                    sums["reg"] += reg_v
                    n_summed += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{self.state_.last_loss:.3f}", reg=f"{reg_v:.2g}")
                    self._emit("on_step_end", model=model, parts=parts)
                    if self.state_.global_step not in points:
                        continue
                    record = {"epoch": self.state_.epoch, "step": self.state_.global_step,
                              "train_loss": sums["loss"] / n_summed, "train_task_loss": sums["task"] / n_summed,
                              "train_reg_loss": sums["reg"] / n_summed, "train_accuracy": float("nan"),
                              "val_accuracy": float("nan"), "val_loss": float("nan"), "gap": float("nan")}
                    improved = self._evaluate_point(model, tokenizer, train_score, validation, record)
                    if improved:
                        patience_left = self.early_stopping_patience
                        if self.early_stopping_patience is not None or self.keep_best:
                            best_state = copy.deepcopy(model.state_dict())
                    elif validation is not None and patience_left is not None:
                        patience_left -= 1
                        if patience_left <= 0:
                            self.state_.should_stop = True
                    record["seconds"] = time.perf_counter() - since
                    self.state_.history.append(record)
                    self._emit("on_epoch_end", model=model, record=record)
                    sums, n_summed, since = {"loss": 0.0, "task": 0.0, "reg": 0.0}, 0, time.perf_counter()
                    model.train()
                    if self.state_.should_stop:
                        break
        except BaseException:
            if self.tracker_ is not None:
                self.tracker_.close()
            raise
        finally:
            bar.close()
            method.teardown(model)
            del train_model  # a DDP wrapper releases its gradient hooks
            model.eval()
        if best_state is not None and self.state_.best_step != self.state_.global_step:
            model.load_state_dict(best_state)
        self.state_.seconds = time.perf_counter() - start_time
        self._emit("on_train_end", model=model)
        extra = [c for c in dict.fromkeys(k for row in self.state_.history for k in row) if c not in HISTORY_COLUMNS]
        # columns added by callbacks (e.g. the collapse guard) come after the standard ones
        self.history_ = pd.DataFrame(self.state_.history, columns=[*HISTORY_COLUMNS, *extra])
        return self

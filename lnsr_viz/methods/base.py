"""The :class:`Method` interface every fine-tuning method implements, and the helpers several methods share.

Hooks, in the order a trainer calls them (:class:`~lnsr_viz.training.loop.FineTuner` and
:class:`~lnsr_viz.training.hf_trainer.RegularizedTrainer` both follow it)::

    setup(model, seed=, rank=, world_size=)     once, before the optimizer is built and before DDP wraps the model
    setup_data(model, batches)                  once, only if ``needs_data`` (ChildTuning-D's Fisher pass)
    per step:  compute_loss(model, batch) -> loss.backward() -> after_backward(model)
               -> gradient clipping -> before_optimizer_step(model) -> optimizer.step()
    teardown(model)                             once, when training ends (also after an error)

Distributed training: ``setup`` receives the process ``rank`` and ``world_size``. Noise that augments the examples
(LNSR, SMART, R3F, HyPe; dropout and Mixout masks come from torch's global generator, which the trainer seeds per
process) is drawn independently per process but reproducibly from the seed; what must be identical on every process
(NoisyTune's one-off perturbation, ChildTuning's gradient masks) is seeded from the seed alone. Under
``world_size > 1`` LNSR divides its summed per-token distances by the *global* batch's token count (one all-reduce of
a scalar per step; token counts are reduced, not means), so that the gradient DistributedDataParallel averages, and
the mean of the logged values over processes, equal the single-process penalty of the whole batch exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.params import GetParams

__all__ = ["LossParts", "Method", "unwrap_model", "task_forward", "output_logits", "method_generator",
           "pretrained_parameters", "pretrained_module_ids", "symmetric_kl", "is_regression", "input_embeddings",
           "perturbed_embeddings", "draw_noise", "prediction_logits", "logits_of", "without_labels"]


@dataclass
class LossParts:
    """What one training step's loss is made of."""

    loss: torch.Tensor
    task_loss: torch.Tensor
    reg_loss: torch.Tensor
    logits: torch.Tensor | None = None
    extras: dict[str, float] = field(default_factory=dict)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / Accelerate wrappers (or ``model`` itself)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def task_forward(model: nn.Module, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, Any]:
    out = model(**inputs)
    loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None:
        keys = list(out.keys()) if isinstance(out, Mapping) else type(out).__name__
        raise ValueError(f"The model did not return a loss from the inputs (got {keys}); pass labels in the batch.")
    return loss, out


def output_logits(out: Any) -> torch.Tensor | None:
    if isinstance(out, Mapping):
        return out.get("logits")
    return getattr(out, "logits", None)


def method_generator(seed: int, rank: int | None, salt: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (seed, rank, salt); ``rank=None`` gives the same stream on every process."""
    value = (int(seed) * 7919 + 17 + 1_000_003 * int(salt)) if rank is None else \
        (int(seed) * 7919 + 104_729 * int(rank) + 17 + 1_000_003 * int(salt))
    return torch.Generator(device=device).manual_seed(value % (2**63 - 1))


class Method(GetParams):
    """Base class of fine-tuning methods. Subclasses set ``name`` and override ``compute_loss`` (and hooks).

    ``get_params()`` (alias ``params()``) reads the constructor parameters back from the instance, scikit-learn
    style: every ``__init__`` parameter is stored under its own name, so a run-store key cannot miss one.

    Attributes
    ----------
    name : str
        Registry name (``get_method(name)``).
    role : {'forward', 'penalty', 'passive'}
        How the method composes (see :class:`Combined`): ``'forward'`` methods run the model's forward pass their
        own way (LNSR's capture/replay, SMART's adversarial passes, ...) and at most one of them can be in a
        combination; ``'penalty'`` methods add a term that needs only the weights (:meth:`weighted_penalty`);
        ``'passive'`` methods act through ``setup`` and the gradient hooks and leave the loss alone.
    needs_data : bool
        True if :meth:`setup_data` must be called with the training batches before the first step.
    """

    name: ClassVar[str] = "method"
    role: ClassVar[Literal["forward", "penalty", "passive"]] = "forward"
    setup_priority: ClassVar[int] = 0  # Combined runs setups in increasing order (NoisyTune first)
    needs_data: bool = False

    def params(self) -> dict[str, Any]:
        """The constructor parameters, JSON-serialisable: what keys a run in the store.

        That is :meth:`get_params` less the parameters of ``late_defaults`` left at their defaults (added after
        runs were stored; see :mod:`lnsr_viz.utils.params`), so those runs keep their keys.
        """
        return self.key_params()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Prepare for training ``model`` (called once, before the first step, before DDP wraps the model).

        ``rank`` is the process index and ``world_size`` the number of processes (1 without distributed training).
        """

    def setup_data(self, model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> None:
        """Look at the training data once before training (only called when ``needs_data`` is True)."""

    def after_backward(self, model: nn.Module) -> None:
        """Called after ``loss.backward()`` and before clipping and the optimizer step."""

    def before_optimizer_step(self, model: nn.Module) -> None:
        """Called after gradient clipping, right before ``optimizer.step()`` (e.g. to mask gradients)."""

    def teardown(self, model: nn.Module) -> None:
        """Undo anything ``setup`` attached to the model (hooks, wrappers); called when training ends. Idempotent."""

    def weighted_penalty(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight * term, term)`` of a ``'penalty'`` method: a loss term that depends on the weights only."""
        raise NotImplementedError(f"{type(self).__name__} is not a penalty method (role={self.role!r}).")

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        raise NotImplementedError

    def __call__(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        return self.compute_loss(model, inputs)


# ---------------------------------------------------------------------------------------------------- helpers
def pretrained_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters that come from the pre-trained checkpoint: those of ``model.base_model``.

    A Hugging Face task model keeps the pre-trained network in ``base_model`` (``model.bert``, ...) and the new head
    (``classifier``, ``qa_outputs``, ...) outside it. A plain module without a distinct ``base_model`` counts as
    pre-trained in full. Names are those of ``model.named_parameters()``.
    """
    inner = unwrap_model(model)
    base = getattr(inner, "base_model", None)
    if not isinstance(base, nn.Module) or base is inner:
        return list(inner.named_parameters())
    ids = {id(p) for p in base.parameters()}
    return [(n, p) for n, p in inner.named_parameters() if id(p) in ids]


def pretrained_module_ids(model: nn.Module) -> set[int]:
    inner = unwrap_model(model)
    base = getattr(inner, "base_model", None)
    root = base if isinstance(base, nn.Module) and base is not inner else inner
    return {id(m) for m in root.modules()}


def _kl_sum(q_logits: torch.Tensor, p_logits: torch.Tensor) -> torch.Tensor:
    """``sum KL(P || Q)`` over batch and classes, ``P = softmax(p_logits)``, ``Q = softmax(q_logits)``.

    Both log-probabilities come from ``log_softmax`` (``log_target=True``), so identical logits give exactly 0.
    """
    return F.kl_div(F.log_softmax(q_logits.float(), dim=-1), F.log_softmax(p_logits.float(), dim=-1),
                    reduction="sum", log_target=True)


def symmetric_kl(a: torch.Tensor, b: torch.Tensor, *, detach_targets: bool = False,
                 reduction: Literal["batchmean", "sum"] = "batchmean") -> torch.Tensor:
    """``KL(P_b || P_a) + KL(P_a || P_b)`` between the class distributions of two logit tensors (batch, classes).

    Parameters
    ----------
    a, b : Tensor (batch, classes)
    detach_targets : bool, default=False
        Detach the probability that each KL term is taken against (SMART's ``SymKlCriterion`` in mt-dnn); the
        gradient then flows through the log-probabilities only. False: full gradient (R3F in fairseq).
    reduction : {'batchmean', 'sum'}
        Divide the sum over the batch by the batch size, or not.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> float(symmetric_kl(x, x))
    0.0
    """
    pa, pb = (a.detach(), b.detach()) if detach_targets else (a, b)
    total = _kl_sum(a, pb) + _kl_sum(b, pa)
    return total / a.shape[0] if reduction == "batchmean" else total


def is_regression(logits: torch.Tensor) -> bool:
    return logits.dim() >= 1 and logits.shape[-1] == 1


def input_embeddings(model: nn.Module, owner: str) -> nn.Module:
    inner = unwrap_model(model)
    get = getattr(inner, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if not isinstance(emb, nn.Module):
        raise ValueError(f"{owner} perturbs the input embeddings and needs a model with get_input_embeddings() "
                         f"(any Hugging Face model); {type(inner).__name__} has none.")
    return emb


@contextlib.contextmanager
def perturbed_embeddings(model: nn.Module, perturb: Callable[[torch.Tensor], torch.Tensor],
                          owner: str) -> Iterator[None]:
    """Within the block, the output of the input-embedding module is replaced by ``perturb(output)``."""
    emb = input_embeddings(model, owner)
    handle = emb.register_forward_hook(lambda module, args, output: perturb(output))
    try:
        yield
    finally:
        handle.remove()


def draw_noise(shape: torch.Size, like: torch.Tensor, generator: torch.Generator, kind: str) -> torch.Tensor:
    """Standard normal (``'normal'``) or U(-1, 1) (``'uniform'``) draws shaped like ``like``, from ``generator``."""
    if kind == "normal":
        out = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    else:
        out = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32).mul_(2).sub_(1)
    return out.to(device=like.device, dtype=like.dtype)


def prediction_logits(out: Any) -> torch.Tensor | None:
    """The predicted distributions' logits: ``logits`` (batch, classes), or for extractive QA the start and end
    logits stacked along the batch, ``(2 * batch, tokens)``: each example then contributes two distributions over
    token positions (where the answer starts and where it ends), and divergences average over both."""
    logits = output_logits(out)
    if logits is not None:
        return logits
    get = out.get if isinstance(out, Mapping) else (lambda k: getattr(out, k, None))
    start, end = get("start_logits"), get("end_logits")
    if start is not None and end is not None:
        return torch.cat([start, end], dim=0)
    return None


def logits_of(model: nn.Module, inputs: Mapping[str, Any], owner: str) -> torch.Tensor:
    logits = prediction_logits(model(**inputs))
    if logits is None:
        raise ValueError(f"{owner} compares predictions and needs a model that returns logits.")
    return logits


def without_labels(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if k != "labels"}

"""ChildTuning: update only a "child network" by masking gradients before every optimizer step."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from ..core.adapter import ModelAdapter
from ..core.inputs import model_device, train_mode
from ..utils.validation import check_choice, check_number
from .base import LossParts, Method, method_generator, output_logits, task_forward, unwrap_model
from .registry import register

__all__ = ["ChildTuning"]


# ---------------------------------------------------------------------------------------------------- ChildTuning
@register
class ChildTuning(Method):
    """ChildTuning: update only a "child network" by masking gradients before every optimizer step.

    Xu, Luo, Huang, Wang, Chang, Huang, Tan & Huang, "Raise a Child in Large Language Model: Towards Effective and
    Generalizable Fine-tuning", EMNLP 2021 (``ChildTuningAdamW``).

    * ``variant='F'`` (task-free): every gradient entry is kept with probability ``p`` and scaled by ``1/p``
      (``grad *= Bernoulli(p) / p``), a new mask every step, for every parameter.
    * ``variant='D'`` (task-driven): before training, the Fisher information of the transformer blocks' weights
      (mean squared gradient over the training batches, each parameter's gradient clipped to
      ``fisher_max_grad_norm`` first) picks the top ``p`` fraction as the child network; only those entries of the
      block weights are updated, without rescaling. Embeddings and the head are updated in full.

    Parameters
    ----------
    p : float in (0, 1], default=0.3
        Reserve probability (F) or child-network fraction (D). 1 is vanilla fine-tuning.
    variant : {'F', 'D'}, default='F'
    fisher_max_grad_norm : float, default=1.0
        Per-parameter gradient clipping in the Fisher pass (D only).
    seed : int or None, default=None
        Seed of the F masks; None takes the trainer's. The same on every process (the masks apply to gradients
        that DistributedDataParallel has already averaged, so they must agree everywhere).

    Notes
    -----
    Masks are applied in ``before_optimizer_step``, i.e. after gradient clipping, as ``ChildTuningAdamW`` does
    inside the optimizer step. The D variant needs the training data (``needs_data``): the trainers call
    ``setup_data`` with the training batches; under distributed training the Fisher sums are all-reduced so every
    process gets the same child network.
    """

    name = "childtuning"
    role = "passive"

    def __init__(self, p: float = 0.3, *, variant: Literal["F", "D"] = "F", fisher_max_grad_norm: float = 1.0,
                 seed: int | None = None) -> None:
        owner = "ChildTuning"
        self.p = float(check_number("p", p, owner=owner, low=0.0, low_closed=False, high=1.0,
                                    hint="p is the fraction of gradient entries kept; p=1 is vanilla."))
        self.variant = check_choice("variant", variant, ("F", "D"), owner=owner)
        self.fisher_max_grad_norm = float(check_number("fisher_max_grad_norm", fisher_max_grad_norm, owner=owner,
                                                       low=0.0))
        self.seed = None if seed is None else int(check_number("seed", seed, owner=owner, integer=True))
        self._generator: torch.Generator | None = None
        self._masks: dict[nn.Parameter, torch.Tensor] = {}
        self._world_size = 1

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return self.variant == "D"

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        base = self.seed if self.seed is not None else seed
        self._generator = method_generator(base, None, 5, model_device(model))
        self._world_size = int(world_size)
        self._masks = {}

    def setup_data(self, model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> None:
        """D variant: the Fisher pass over ``batches`` and the child-network masks."""
        if self.variant != "D":
            return
        import numpy as np

        inner = unwrap_model(model)
        params = [p for block in dict.fromkeys(ModelAdapter(inner).blocks) for p in block.parameters()
                  if p.requires_grad]
        params = list(dict.fromkeys(params))
        fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        n = 0
        with train_mode(inner):
            try:
                for batch in batches:
                    inner.zero_grad(set_to_none=True)
                    loss, _ = task_forward(inner, batch)
                    loss.backward()
                    for p, f in zip(params, fisher):
                        if p.grad is not None:
                            if self.fisher_max_grad_norm > 0:
                                nn.utils.clip_grad_norm_([p], self.fisher_max_grad_norm)
                            f.add_(p.grad.detach().float().pow(2))
                    n += 1
            finally:
                inner.zero_grad(set_to_none=True)
        count = torch.tensor(float(n), device=fisher[0].device if fisher else "cpu")
        if self._world_size > 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                for f in fisher:
                    dist.all_reduce(f)
                dist.all_reduce(count)
        if float(count) == 0:
            raise ValueError("ChildTuning-D needs at least one training batch for its Fisher pass; got none.")
        flat = torch.cat([f.flatten() for f in fisher]).div_(float(count)).cpu().numpy()
        polar = float(np.percentile(flat, (1.0 - self.p) * 100.0))
        self._masks = {p: (f.div(float(count)) >= polar).to(p.dtype) for p, f in zip(params, fisher)}
        self.child_fraction_ = float(sum(float(m.sum()) for m in self._masks.values()) / max(1, flat.size))

    def before_optimizer_step(self, model: nn.Module) -> None:
        """Mask (and for F rescale) the gradients in place."""
        if self.variant == "D":
            if not self._masks:
                raise RuntimeError("ChildTuning-D has no child network yet: call setup_data(model, batches) after "
                                   "setup (the FineTuner and RegularizedTrainer do this).")
            for p, mask in self._masks.items():
                if p.grad is not None:
                    p.grad.mul_(mask.to(p.grad.device))
            return
        if self.p == 1.0:
            return
        if self._generator is None:
            self.setup(model)
        assert self._generator is not None
        for p in unwrap_model(model).parameters():
            if p.grad is None:
                continue
            # Bernoulli(p) as U(0, 1) < p: the same distribution, half the time of bernoulli_ on CPU
            drop = torch.rand(p.grad.shape, generator=self._generator, device=self._generator.device) >= self.p
            p.grad.masked_fill_(drop.to(p.grad.device), 0.0).mul_(1.0 / self.p)

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        loss, out = task_forward(model, inputs)
        return LossParts(loss=loss, task_loss=loss.detach(), reg_loss=torch.zeros((), device=loss.device),
                         logits=output_logits(out))

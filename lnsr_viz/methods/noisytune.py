"""NoisyTune: before fine-tuning, ``w += U(-0.5, 0.5) * lam * std(w)`` once for every parameter matrix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..utils.validation import check_bool, check_number
from .base import LossParts, Method, method_generator, output_logits, pretrained_parameters, task_forward, unwrap_model
from .registry import register

__all__ = ["NoisyTune"]


# ---------------------------------------------------------------------------------------------------- NoisyTune
@register
class NoisyTune(Method):
    """NoisyTune: before fine-tuning, ``w += U(-0.5, 0.5) * lam * std(w)`` once for every parameter matrix.

    Wu, Wu, Qi, Huang & Xie, "NoisyTune: A Little Noise Can Help You Finetune Pretrained Language Models
    Better", ACL 2022. ``std(w)`` is the (unbiased) standard deviation of that parameter tensor before the
    perturbation, so ``|delta| <= 0.5 * lam * std(w)``. Training itself is vanilla.

    Parameters
    ----------
    lam : float, default=0.15
        Noise intensity (the paper's lambda).
    include_head : bool, default=True
        Also perturb the new head's parameters (the public code perturbs every named parameter).
    seed : int or None, default=None
        Seed of the perturbation; None takes the trainer's. The same on every process (it is part of the starting
        point, which distributed training requires to be identical everywhere).

    Notes
    -----
    Tensors with fewer than 2 elements (no standard deviation) are left alone. Every call of ``setup``
    perturbs the weights again; ``perturbed_`` lists the names of the perturbed tensors.
    """

    name = "noisytune"
    role = "passive"
    setup_priority = -10

    def __init__(self, lam: float = 0.15, *, include_head: bool = True, seed: int | None = None) -> None:
        self.lam = float(check_number("lam", lam, owner="NoisyTune", low=0.0))
        self.include_head = check_bool("include_head", include_head, owner="NoisyTune")
        self.seed = None if seed is None else int(check_number("seed", seed, owner="NoisyTune", integer=True))

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Perturb the weights in place (identically on every process)."""
        base = self.seed if self.seed is not None else seed
        gen = method_generator(base, None, 3)  # CPU: the same draws on any device
        inner = unwrap_model(model)
        pretrained = {id(p) for _, p in pretrained_parameters(inner)}
        self.perturbed_: list[str] = []
        with torch.no_grad():
            for name, param in inner.named_parameters():
                if not param.is_floating_point() or param.numel() < 2:
                    continue
                if not self.include_head and id(param) not in pretrained:
                    continue
                std = param.detach().float().std()
                u = torch.rand(param.shape, generator=gen, dtype=torch.float32)
                param.add_(((u - 0.5) * self.lam * std.cpu()).to(device=param.device, dtype=param.dtype))
                self.perturbed_.append(name)

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        loss, out = task_forward(model, inputs)
        return LossParts(loss=loss, task_loss=loss.detach(), reg_loss=torch.zeros((), device=loss.device),
                         logits=output_logits(out))

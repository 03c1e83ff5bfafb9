"""Plain fine-tuning: the task loss only (the reference every other method is compared with)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .base import LossParts, Method, output_logits, task_forward
from .registry import register

__all__ = ["Vanilla"]


@register
class Vanilla(Method):
    """Plain fine-tuning: the task loss only."""

    name = "vanilla"

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        loss, out = task_forward(model, inputs)
        return LossParts(loss=loss, task_loss=loss.detach(), reg_loss=torch.zeros((), device=loss.device),
                         logits=output_logits(out))

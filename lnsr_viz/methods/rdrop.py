"""R-Drop: two forward passes with different dropout masks; task loss + ``alpha`` x bidirectional KL."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from torch import nn

from ..utils.validation import check_choice, check_number
from .base import LossParts, Method, is_regression, output_logits, prediction_logits, symmetric_kl, task_forward
from .registry import register

__all__ = ["RDrop"]


# ---------------------------------------------------------------------------------------------------- R-Drop
@register
class RDrop(Method):
    """R-Drop: two forward passes with different dropout masks; task loss + ``alpha`` x bidirectional KL.

    Liang, Wu, Li, Wang, Meng, Qin, Chen, Zhang & Liu, "R-Drop: Regularized Dropout for Neural Networks",
    NeurIPS 2021. As in the official code: ``task = (CE_1 + CE_2) / 2`` and
    ``reg = (KL(P_2 || P_1) + KL(P_1 || P_2)) / 2`` summed over the batch (``reduction='sum'``).

    Parameters
    ----------
    alpha : float, default=1.0
        Weight of the KL term.
    reduction : {'sum', 'batchmean'}, default='sum'
        ``'sum'`` (official code) makes the term grow with the batch size; ``'batchmean'`` divides by it (and is
        invariant to how a global batch is split over processes).

    Notes
    -----
    Regression heads use the squared difference of the two predictions. The two passes are separate calls (not
    one call on a doubled batch), so that with dropout off they are bit-identical and the term is exactly 0.
    """

    name = "rdrop"
    role = "forward"

    def __init__(self, alpha: float = 1.0, *, reduction: Literal["sum", "batchmean"] = "sum") -> None:
        self.alpha = float(check_number("alpha", alpha, owner="RDrop", low=0.0))
        self.reduction = check_choice("reduction", reduction, ("sum", "batchmean"), owner="RDrop")

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        loss1, out1 = task_forward(model, inputs)
        loss2, out2 = task_forward(model, inputs)
        a, b = prediction_logits(out1), prediction_logits(out2)
        if a is None or b is None:
            raise ValueError("R-Drop compares predictions and needs a model that returns logits (or start and end "
                             "logits).")
        if is_regression(a):
            reg = (a.float() - b.float()).pow(2).sum()
            reg = reg / a.shape[0] if self.reduction == "batchmean" else reg
        else:
            reg = 0.5 * symmetric_kl(a, b, reduction=self.reduction)
        task = 0.5 * (loss1 + loss2)
        return LossParts(loss=task + self.alpha * reg, task_loss=task.detach(), reg_loss=reg.detach().to(task.dtype),
                         logits=output_logits(out1))

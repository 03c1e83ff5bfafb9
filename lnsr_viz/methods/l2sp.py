"""L2-SP: ``loss = task + alpha * 0.5 * ||w - w_pre||^2`` over the pre-trained weights only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..core.inputs import model_device
from ..utils.validation import check_number
from .base import LossParts, Method, output_logits, pretrained_parameters, task_forward
from .registry import register

__all__ = ['L2SP']


def _half_squared_distance(params: list[torch.Tensor], anchors: list[torch.Tensor],
                           chunk: int = 1 << 20) -> torch.Tensor:
    """``0.5 * sum_i ||p_i - a_i||^2`` without materialising all differences at once.

    Small tensors go through fused ``foreach`` kernels in groups of at most ``chunk`` elements, large ones chunk by
    chunk, so the temporary memory is ``chunk`` elements, not a copy of the model (which would sit on top of the
    activations, since the term is evaluated after the forward pass).
    """
    dtype = torch.promote_types(params[0].dtype, torch.float32)  # at least float32 for the sum of squares
    parts: list[torch.Tensor] = []
    group_p: list[torch.Tensor] = []
    group_a: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        nonlocal group_p, group_a, size
        if group_p:
            norms = torch._foreach_norm(torch._foreach_sub(group_p, group_a))
            parts.append(torch.stack([v.to(dtype) for v in norms]).pow(2).sum())
        group_p, group_a, size = [], [], 0

    for p, a in zip(params, anchors):
        n = p.numel()
        if n > chunk:
            fp, fa = p.reshape(-1), a.reshape(-1)
            for start in range(0, n, chunk):
                parts.append((fp[start:start + chunk] - fa[start:start + chunk]).to(dtype).pow(2).sum())
            continue
        if size + n > chunk:
            flush()
        group_p.append(p)
        group_a.append(a)
        size += n
    flush()
    return 0.5 * torch.stack(parts).sum()


class _SquaredDistance(torch.autograd.Function):
    """``0.5 * sum_i ||p_i - a_i||^2`` with gradient ``p_i - a_i``; nothing stored for backward but the inputs."""

    @staticmethod
    def forward(ctx: Any, n: int, *tensors: torch.Tensor) -> torch.Tensor:
        params, anchors = list(tensors[:n]), list(tensors[n:])
        ctx.n = n
        ctx.save_for_backward(*params, *anchors)
        return _half_squared_distance(params, anchors)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        saved = ctx.saved_tensors
        params, anchors = list(saved[:ctx.n]), list(saved[ctx.n:])
        diffs = torch._foreach_sub(params, anchors)  # these become the parameters' gradient contributions
        torch._foreach_mul_(diffs, grad.to(params[0].dtype))
        return (None, *diffs, *([None] * ctx.n))


# ---------------------------------------------------------------------------------------------------- L2-SP
@register
class L2SP(Method):
    """L2-SP: ``loss = task + alpha * 0.5 * ||w - w_pre||^2`` over the pre-trained weights only.

    The new task head is not pulled anywhere by this term: it gets the trainer's plain weight decay, as in
    the paper (Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
    Networks", ICML 2018). The pre-trained point ``w_pre`` is taken in :meth:`setup`.

    Parameters
    ----------
    alpha : float, default=0.1
        Weight of the penalty (the paper's recommended alpha). ``reg_loss`` is the unweighted
        ``0.5 * ||w - w_pre||^2``; its gradient is ``alpha * (w - w_pre)``.

    Notes
    -----
    The trainer's decoupled AdamW weight decay still applies to every weight; set ``weight_decay=0`` for the
    textbook L2-SP in which pre-trained weights are decayed towards ``w_pre`` only. Pre-trained parameters are
    those of ``model.base_model`` (see :func:`pretrained_parameters`). Memory: one copy of the pre-trained weights
    (the anchor); the term is computed in chunks and keeps nothing for the backward pass.
    """

    name = "l2sp"
    role = "penalty"

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = float(check_number("alpha", alpha, owner="L2SP", low=0.0))
        self._params: list[nn.Parameter] = []
        self._anchors: list[torch.Tensor] = []

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Snapshot the pre-trained weights ``w_pre``."""
        named = [(n, p) for n, p in pretrained_parameters(model) if p.requires_grad]
        self.pretrained_names_ = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._anchors = [p.detach().clone() for p in self._params]

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``0.5 * sum ||w - w_pre||^2`` (differentiable)."""
        if not self._params:
            self.setup(model)
        if not self._params:
            return torch.zeros((), device=model_device(model))
        if self._anchors[0].device != self._params[0].device:
            self._anchors = [a.to(p.device) for a, p in zip(self._anchors, self._params)]
        return _SquaredDistance.apply(len(self._params), *self._params, *self._anchors)

    def weighted_penalty(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        term = self.penalty(model)
        return self.alpha * term, term

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        # The term is built *before* the forward pass: autograd runs later-built nodes first, so its gradient
        # (a weight-sized tensor) is produced at the end of the backward pass, after the activations are freed,
        # instead of at the start, on top of them.
        weighted, term = self.weighted_penalty(model)
        loss, out = task_forward(model, inputs)
        return LossParts(loss=loss + weighted, task_loss=loss.detach(), reg_loss=term.detach().to(loss.dtype),
                         logits=output_logits(out))

    def teardown(self, model: nn.Module) -> None:
        self._params, self._anchors = [], []

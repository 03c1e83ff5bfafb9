"""HyPe: small noise added to every transformer block's input hidden states, in training mode only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from ..core.adapter import HIDDEN_KWARG_NAMES, ModelAdapter
from ..core.inputs import model_device
from ..utils.validation import check_choice, check_number
from .base import LossParts, Method, draw_noise, method_generator, output_logits, task_forward
from .registry import register

__all__ = ["HyPe"]


# ---------------------------------------------------------------------------------------------------- HyPe
@register
class HyPe(Method):
    """HyPe: small noise added to every transformer block's input hidden states, in training mode only.

    Yuan, Yuan, Tan, Huang & Huang, "HyPe: Better Pre-trained Language Model Fine-tuning with Hidden
    Representation Perturbation", ACL 2023. No extra loss term: the model simply trains on perturbed hidden
    states (``N(0, eps^2)``: HyPe-N, or ``U(-eps, eps)``: HyPe-U), and evaluates on clean ones.

    Parameters
    ----------
    eps : float, default=1e-5
        Noise scale (standard deviation for ``'normal'``, half-width for ``'uniform'``).
    noise : {'normal', 'uniform'}, default='normal'
    seed : int or None, default=None
        Seed of the noise; None takes the trainer's (independent per process).

    Notes
    -----
    Implemented with forward pre-hooks on the blocks that :class:`~lnsr_viz.core.adapter.ModelAdapter` finds (any
    supported architecture; ALBERT's shared block is perturbed at each of its calls), attached in ``setup`` and
    removed in ``teardown``. The hooks do nothing when the block is in eval mode.
    """

    name = "hype"
    role = "passive"

    def __init__(self, eps: float = 1e-5, *, noise: Literal["normal", "uniform"] = "normal",
                 seed: int | None = None) -> None:
        self.eps = float(check_number("eps", eps, owner="HyPe", low=0.0))
        self.noise = check_choice("noise", noise, ("normal", "uniform"), owner="HyPe")
        self.seed = None if seed is None else int(check_number("seed", seed, owner="HyPe", integer=True))
        self._handles: list[Any] = []
        self._generator: torch.Generator | None = None

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not module.training or self.eps == 0.0 or self._generator is None:
            return None
        if args and torch.is_tensor(args[0]):
            h = args[0]
            return (h + self.eps * draw_noise(h.shape, h, self._generator, self.noise), *args[1:]), kwargs
        for key in HIDDEN_KWARG_NAMES:
            h = kwargs.get(key)
            if torch.is_tensor(h):
                return args, {**kwargs, key: h + self.eps * draw_noise(h.shape, h, self._generator, self.noise)}
        return None

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Attach the pre-hooks to every block and seed the noise (per process)."""
        self.teardown(model)
        adapter = ModelAdapter(model)
        base = self.seed if self.seed is not None else seed
        self._generator = method_generator(base, rank, 4, model_device(model))
        for block in dict.fromkeys(adapter.blocks):
            self._handles.append(block.register_forward_pre_hook(self._hook, with_kwargs=True))

    def teardown(self, model: nn.Module) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        loss, out = task_forward(model, inputs)
        return LossParts(loss=loss, task_loss=loss.detach(), reg_loss=torch.zeros((), device=loss.device),
                         logits=output_logits(out))

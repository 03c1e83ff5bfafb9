"""Mixout(p): every linear layer's weight is mixed with its pre-trained value in each training forward pass."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.validation import check_bool, check_choice, check_number
from .base import LossParts, Method, output_logits, pretrained_module_ids, task_forward, unwrap_model
from .registry import register

__all__ = ["Mixout"]


# ---------------------------------------------------------------------------------------------------- Mixout
def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


@register
class Mixout(Method):
    """Mixout(p): every linear layer's weight is mixed with its pre-trained value in each training forward pass.

    ``w_used = ((1 - m) * w_pre + m * w - p * w_pre) / (1 - p)``, ``m ~ Bernoulli(1 - p)``, so that
    ``E[w_used] = w``: each weight is replaced by its pre-trained value with probability ``p`` and the result is
    rescaled (Lee, Cho & Kang, "Mixout: Effective Regularization to Finetune Large-scale Pretrained Language
    Models", ICLR 2020). In eval mode the current weight ``w`` is used; biases are not mixed.

    Parameters
    ----------
    p : float in [0, 1), default=0.9
        Mix probability (the paper's strongest setting on GLUE). ``p = 0`` is exactly vanilla fine-tuning.
    granularity : {'neuron', 'element'}, default='neuron'
        ``'neuron'`` draws one mask entry per *input* unit and shares it over the output units (the public
        implementation: mixing whole incoming connections, as dropout drops whole units); ``'element'`` draws one
        per weight.
    include_head : bool, default=True
        Also apply ``mixout(w_0, p)`` to linear layers outside the pre-trained network (the new head), with its
        initial weights as ``w_0``, as the paper does for the output layer.
    disable_dropout : bool, default=False
        Set every ``nn.Dropout`` to p=0 during training (the public Hugging Face example replaces dropout with
        mixout); restored in ``teardown``.

    Notes
    -----
    Linear layers (``nn.Linear`` and GPT-2's ``Conv1D``) get a replacement ``forward`` in ``setup``, removed in
    ``teardown``; parameters, state dict and optimizer are untouched. Masks come from torch's global generator (as
    dropout's do), so the trainer's seed makes them reproducible and LNSR's ``dropout='same'`` replay reuses them.
    The gradient is the exact derivative of the formula, ``m / (1 - p)`` times the output gradient; the public
    implementation omits the ``1 / (1 - p)`` factor in its backward pass.
    """

    name = "mixout"
    role = "passive"

    def __init__(self, p: float = 0.9, *, granularity: Literal["neuron", "element"] = "neuron",
                 include_head: bool = True, disable_dropout: bool = False) -> None:
        self.p = float(check_number("p", p, owner="Mixout", low=0.0, high=1.0, high_closed=False,
                                    hint="p is the probability of mixing in the pre-trained weight; p=0 is vanilla."))
        self.granularity = check_choice("granularity", granularity, ("neuron", "element"), owner="Mixout")
        self.include_head = check_bool("include_head", include_head, owner="Mixout")
        self.disable_dropout = check_bool("disable_dropout", disable_dropout, owner="Mixout")
        self._patched: list[tuple[nn.Module, bool, Any]] = []
        self._dropouts: list[tuple[nn.Dropout, float]] = []

    def mix(self, weight: torch.Tensor, target: torch.Tensor, *, input_dim: int) -> torch.Tensor:
        """The mixed weight for one training forward pass (``input_dim``: the axis of the input units)."""
        if self.p == 0.0:
            return weight
        if self.granularity == "neuron":
            shape = [1] * weight.dim()
            shape[input_dim] = weight.shape[input_dim]
        else:
            shape = list(weight.shape)
        keep = torch.empty(shape, device=weight.device, dtype=weight.dtype).bernoulli_(1.0 - self.p)
        return (keep * weight + (1.0 - keep - self.p) * target) / (1.0 - self.p)

    def _make_forward(self, module: nn.Module, target: torch.Tensor) -> Callable[..., torch.Tensor]:
        conv1d = not isinstance(module, nn.Linear)
        store = {"target": target}

        def forward(x: torch.Tensor) -> torch.Tensor:
            weight = module.weight
            if module.training and self.p > 0.0:
                tgt = store["target"]
                if tgt.device != weight.device or tgt.dtype != weight.dtype:
                    tgt = store["target"] = tgt.to(device=weight.device, dtype=weight.dtype)
                weight = self.mix(weight, tgt, input_dim=0 if conv1d else 1)
            if conv1d:
                size_out = x.size()[:-1] + (module.nf,)
                return torch.addmm(module.bias, x.view(-1, x.size(-1)), weight).view(size_out)
            return F.linear(x, weight, module.bias)

        return forward

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Take every linear layer's current weight as its mixing target and patch its forward."""
        self.teardown(model)
        inner = unwrap_model(model)
        pretrained = pretrained_module_ids(inner)
        for module in inner.modules():
            if not _is_linear(module) or (not self.include_head and id(module) not in pretrained):
                continue
            had_own = "forward" in module.__dict__
            self._patched.append((module, had_own, module.__dict__.get("forward")))
            module.forward = self._make_forward(module, module.weight.detach().clone())
        if self.disable_dropout:
            for module in inner.modules():
                if isinstance(module, nn.Dropout):
                    self._dropouts.append((module, module.p))
                    module.p = 0.0
        self.n_layers_ = len(self._patched)

    def teardown(self, model: nn.Module) -> None:
        for module, had_own, previous in reversed(self._patched):
            if had_own:
                module.forward = previous
            else:
                module.__dict__.pop("forward", None)
        for module, p in self._dropouts:
            module.p = p
        self._patched, self._dropouts = [], []

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        loss, out = task_forward(model, inputs)
        return LossParts(loss=loss, task_loss=loss.detach(), reg_loss=torch.zeros((), device=loss.device),
                         logits=output_logits(out))

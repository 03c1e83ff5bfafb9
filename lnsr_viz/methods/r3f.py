"""R3F: task loss + ``lam`` x symmetric KL between predictions on clean and noised token embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from ..core.inputs import model_device
from ..utils.validation import check_choice, check_number
from .base import (
    LossParts,
    Method,
    draw_noise,
    input_embeddings,
    is_regression,
    logits_of,
    method_generator,
    output_logits,
    perturbed_embeddings,
    prediction_logits,
    symmetric_kl,
    task_forward,
    without_labels,
)
from .registry import register

__all__ = ['R3F']


# ---------------------------------------------------------------------------------------------------- R3F
@register
class R3F(Method):
    """R3F: task loss + ``lam`` x symmetric KL between predictions on clean and noised token embeddings.

    Aghajanyan, Shrivastava, Gupta, Goyal, Zettlemoyer & Gupta, "Better Fine-Tuning by Reducing Representational
    Collapse", ICLR 2021 (fairseq's ``sentence_prediction_r3f``): noise ``U(-eps, eps)`` (or ``N(0, eps^2)``) is
    added to the word-embedding output, the model runs once on the clean and once on the noised input (dropout on
    in both), and ``symKL = (KL(P_n || P) + KL(P || P_n)) / batch`` (no stop-gradient). Regression heads get no
    R3F term (as in fairseq).

    Parameters
    ----------
    lam : float, default=1.0
        Weight of the symmetric KL.
    eps : float, default=1e-5
        Noise scale. 0 gives no noise: with dropout off the term is then exactly 0.
    noise : {'uniform', 'normal'}, default='uniform'
    seed : int or None, default=None
        Seed of the noise; None takes the trainer's (independent per process).
    """

    name = "r3f"
    role = "forward"

    def __init__(self, lam: float = 1.0, *, eps: float = 1e-5, noise: Literal["uniform", "normal"] = "uniform",
                 seed: int | None = None) -> None:
        self.lam = float(check_number("lam", lam, owner="R3F", low=0.0))
        self.eps = float(check_number("eps", eps, owner="R3F", low=0.0))
        self.noise = check_choice("noise", noise, ("uniform", "normal"), owner="R3F")
        self.seed = None if seed is None else int(check_number("seed", seed, owner="R3F", integer=True))
        self._generator: torch.Generator | None = None

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        input_embeddings(model, "R3F")
        base = self.seed if self.seed is not None else seed
        self._generator = method_generator(base, rank, 2, model_device(model))

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        if self._generator is None:
            self.setup(model, seed=self.seed or 0)
        assert self._generator is not None
        loss, out = task_forward(model, inputs)
        logits = prediction_logits(out)
        if logits is None:
            raise ValueError("R3F compares predictions and needs a model that returns logits (or start and end "
                             "logits).")
        if is_regression(logits):
            reg = torch.zeros((), device=loss.device)
        else:
            gen = self._generator

            def perturb(embedded: torch.Tensor) -> torch.Tensor:
                return embedded + draw_noise(embedded.shape, embedded, gen, self.noise) * self.eps

            with perturbed_embeddings(model, perturb, "R3F"):
                noised = logits_of(model, without_labels(inputs), "R3F")
            reg = symmetric_kl(noised, logits)
        return LossParts(loss=loss + self.lam * reg, task_loss=loss.detach(), reg_loss=reg.detach().to(loss.dtype),
                         logits=output_logits(out))

"""SMART: task loss + ``lam`` x the symmetric KL at an adversarial perturbation of the input embeddings."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from ..core.inputs import eval_mode, model_device
from ..utils.validation import check_bool, check_choice, check_number, check_positive_int
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
    unwrap_model,
    without_labels,
)
from .registry import register

__all__ = ["SMART"]


# ---------------------------------------------------------------------------------------------------- SMART
@register
class SMART(Method):
    """SMART: task loss + ``lam`` x the symmetric KL at an adversarial perturbation of the input embeddings.

    Jiang, He, Chen, Liu, Gao & Zhao, "SMART: Robust and Efficient Fine-Tuning for Pre-trained Natural Language
    Models through Principled Regularized Optimization", ACL 2020 (Algorithm 1). Per step::

        logits = f(x)                                   clean pass (task loss)
        v ~ N(0, noise_var)  on the word-embedding output
        repeat n_steps:  g = grad_v symKL(f(x + v), detach(logits));  v = v + step_size * g / ||g||_token
                         (optionally projected onto ||v||_inf <= radius)
        loss = task + lam * symKL(f(x + v), logits)    (+ mu * symKL(f(x), f_teacher(x)) with bregman=True)

    Parameters
    ----------
    lam : float, default=1.0
        Weight of the smoothness term (lambda_s).
    noise_var : float, default=1e-5
        Variance of the initial Gaussian perturbation.
    step_size : float, default=1e-3
        Ascent step (eta).
    n_steps : int, default=1
        Ascent steps (T_x~).
    norm : {'inf', 'l2'}, default='inf'
        Per-token normalisation of the ascent gradient.
    radius : float or None, default=None
        Project the perturbation onto ``||v||_inf <= radius`` (``||v||_2`` per token for ``norm='l2'``) after each
        step, as the paper's algorithm; None (default) does not project, as the public mt-dnn code.
    bregman : bool, default=False
        Add the momentum Bregman proximal term: ``mu`` x symmetric KL between the model and a teacher whose
        weights are an exponential moving average of the model's (``beta``), evaluated in eval mode (no dropout).
    mu : float, default=1.0
        Weight of the Bregman term.
    beta : float in [0, 1), default=0.99
        Momentum of the teacher's moving average (updated before every optimizer step).
    seed : int or None, default=None
        Seed of the perturbation; None takes the trainer's (independent per process).

    Notes
    -----
    The ascent direction is the gradient divided by its per-token norm, as in the paper, so every token with a
    non-zero gradient moves by exactly ``step_size`` (padding tokens, whose gradient is zero, do not move); mt-dnn
    instead normalises ``v + step_size * g`` and adds 1e-6 to the norm. The final term is mt-dnn's
    ``SymKlCriterion``: each KL's target distribution is detached, the gradient flows through both
    log-probabilities. Regression heads (one output) use the squared error instead of the KL. Cost: the clean pass,
    ``n_steps`` forward+backward passes to the perturbation, one adversarial pass with its backward, and (bregman)
    one teacher forward without gradient; memory adds a weight copy for the teacher.
    """

    name = "smart"
    role = "forward"

    def __init__(self, lam: float = 1.0, *, noise_var: float = 1e-5, step_size: float = 1e-3, n_steps: int = 1,
                 norm: Literal["inf", "l2"] = "inf", radius: float | None = None, bregman: bool = False,
                 mu: float = 1.0, beta: float = 0.99, seed: int | None = None) -> None:
        owner = "SMART"
        self.lam = float(check_number("lam", lam, owner=owner, low=0.0))
        self.noise_var = float(check_number("noise_var", noise_var, owner=owner, low=0.0))
        self.step_size = float(check_number("step_size", step_size, owner=owner, low=0.0))
        self.n_steps = check_positive_int("n_steps", n_steps, owner=owner)
        self.norm = check_choice("norm", norm, ("inf", "l2"), owner=owner)
        self.radius = None if radius is None else float(check_number("radius", radius, owner=owner, low=0.0,
                                                                     low_closed=False))
        self.bregman = check_bool("bregman", bregman, owner="SMART")
        self.mu = float(check_number("mu", mu, owner=owner, low=0.0))
        self.beta = float(check_number("beta", beta, owner=owner, low=0.0, high=1.0, high_closed=False))
        self.seed = None if seed is None else int(check_number("seed", seed, owner=owner, integer=True))
        self._generator: torch.Generator | None = None
        self._ema: dict[str, torch.Tensor] = {}

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Seed the perturbation (per process) and, with ``bregman``, copy the weights into the teacher."""
        input_embeddings(model, "SMART")
        base = self.seed if self.seed is not None else seed
        self._generator = method_generator(base, rank, 1, model_device(model))
        self._ema = {}
        if self.bregman:
            self._ema = {n: p.detach().clone() for n, p in unwrap_model(model).named_parameters()}

    def teardown(self, model: nn.Module) -> None:
        self._ema = {}

    def divergence(self, a: torch.Tensor, b: torch.Tensor, *, detach_targets: bool = True) -> torch.Tensor:
        """The symmetric KL (batch mean) between two logit tensors; squared error for regression heads."""
        if is_regression(a):
            return (a.float() - b.float()).pow(2).sum() / a.shape[0]
        return symmetric_kl(a, b, detach_targets=detach_targets)

    def _normalise(self, g: torch.Tensor) -> torch.Tensor:
        tiny = torch.finfo(g.dtype).tiny  # tokens without gradient (padding) stay put, the others move a full step
        if self.norm == "inf":
            return g / g.abs().amax(dim=-1, keepdim=True).clamp_min(tiny)
        return g / g.norm(dim=-1, keepdim=True).clamp_min(tiny)

    def _project(self, v: torch.Tensor) -> torch.Tensor:
        if self.radius is None:
            return v
        if self.norm == "inf":
            return v.clamp(-self.radius, self.radius)
        norm = v.norm(dim=-1, keepdim=True).clamp_min(self.radius)
        return v * (self.radius / norm)

    def adversarial_perturbation(self, model: nn.Module, inputs: Mapping[str, Any],
                                 clean_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The initial perturbation ``v0`` and the adversarial one after ``n_steps`` ascent steps.

        Parameters
        ----------
        inputs : mapping
            Model inputs (labels are ignored).
        clean_logits : Tensor (batch, classes)
            Predictions on the clean input (treated as constants).

        Returns
        -------
        (v0, v) : Tensor (batch, seq, embedding_dim) each, without gradient.
        """
        if self._generator is None:
            self.setup(model, seed=self.seed or 0)
        assert self._generator is not None
        inputs = without_labels(inputs)
        target = clean_logits.detach()
        state: dict[str, torch.Tensor] = {}

        def perturb(embedded: torch.Tensor) -> torch.Tensor:
            if "v" not in state:
                v0 = draw_noise(embedded.shape, embedded, self._generator, "normal") * math.sqrt(self.noise_var)
                state["v0"] = v0
                state["v"] = v0.clone().requires_grad_(True)
            return embedded.detach() + state["v"]

        for _ in range(self.n_steps):
            with perturbed_embeddings(model, perturb, "SMART"):
                adv = logits_of(model, inputs, "SMART")
            (grad,) = torch.autograd.grad(self.divergence(adv, target), state["v"])
            if not torch.isfinite(grad).all():
                break
            v = self._project(state["v"].detach() + self.step_size * self._normalise(grad))
            state["v"] = v.requires_grad_(True)
        return state["v0"], state["v"].detach()

    def _teacher_logits(self, model: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
        inner = unwrap_model(model)
        with eval_mode(inner), torch.no_grad():
            params = {n: self._ema.get(n, p) for n, p in inner.named_parameters()}
            out = torch.func.functional_call(inner, params, args=(), kwargs=dict(inputs), strict=False)
        logits = prediction_logits(out)
        assert logits is not None
        return logits

    def before_optimizer_step(self, model: nn.Module) -> None:
        """Move the teacher towards the current weights: ``teacher = beta * teacher + (1 - beta) * w``."""
        if not self._ema:
            return
        names, ema, current = [], [], []
        for n, p in unwrap_model(model).named_parameters():
            if n in self._ema:
                names.append(n)
                ema.append(self._ema[n])
                current.append(p.detach())
        torch._foreach_lerp_(ema, current, 1.0 - self.beta)

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        loss, out = task_forward(model, inputs)
        logits = prediction_logits(out)
        if logits is None:
            raise ValueError("SMART compares predictions and needs a model that returns logits (or start and end "
                             "logits).")
        _, v = self.adversarial_perturbation(model, inputs, logits)
        with perturbed_embeddings(model, lambda e: e + v, "SMART"):
            adv = logits_of(model, without_labels(inputs), "SMART")
        reg = self.divergence(logits, adv)
        total = loss + self.lam * reg
        extras = {"perturbation_max": float(v.abs().amax())}
        if self.bregman:
            teacher = self._teacher_logits(model, without_labels(inputs))
            breg = self.divergence(logits, teacher)
            total = total + self.mu * breg
            extras["bregman"] = float(breg.detach())
        return LossParts(loss=total, task_loss=loss.detach(), reg_loss=reg.detach().to(loss.dtype),
                         logits=output_logits(out), extras=extras)

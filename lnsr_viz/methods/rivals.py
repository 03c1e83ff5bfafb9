"""The rival fine-tuning methods, behind the same :class:`~lnsr_viz.methods.base.Method` interface as LNSR.

Each class follows its paper and public implementation; where the two disagree, or the paper leaves a choice open,
the class docstring says which one is followed and the other is a parameter. Definitions and defaults are those of
the project's method notes (``docs`` / ``shared/notes/method.md``).

===============  =======  ====================================================================================
name             role     what it does
===============  =======  ====================================================================================
``l2sp``         penalty  ``alpha/2 * ||w - w_pre||^2`` over the pre-trained weights (Li et al., ICML 2018)
``mixout``       passive  linear weights mixed with their pre-trained values (Lee et al., ICLR 2020)
``smart``        forward  adversarial smoothness on the input embeddings, + Bregman option (Jiang et al., ACL 2020)
``r3f``          forward  symmetric KL, clean vs noised-embedding predictions (Aghajanyan et al., ICLR 2021)
``rdrop``        forward  two dropout passes, task loss + bidirectional KL (Liang et al., NeurIPS 2021)
``noisytune``    passive  one uniform perturbation of every weight matrix before training (Wu et al., ACL 2022)
``hype``         passive  small noise on every block's input hidden states in training (Yuan et al., ACL 2023)
``childtuning``  passive  gradient masks: Bernoulli(p)/p (F) or a Fisher child network (D) (Xu et al., EMNLP 2021)
===============  =======  ====================================================================================

Roles decide how methods combine (see :class:`~lnsr_viz.methods.base.Combined`). Every class registers itself in
``lnsr_viz.methods.base.METHODS`` when this module is imported (``regularizers`` imports it), so ``get_method``,
``compare(methods=...)`` and ``--methods`` know every name.

Conventions shared by all methods: ``LossParts.reg_loss`` is the regulariser's unweighted term and
``loss = task_loss + weight * reg_loss``; perturbations of the input embeddings (SMART, R3F) are added to the output
of ``model.get_input_embeddings()`` by a forward hook, so the model is still called with ``input_ids`` (position ids,
padding detection and heads that locate tokens from the ids behave as usual); random draws come from a generator
seeded from the trainer's seed (and the process rank where noise must differ per process), except Mixout's masks,
which use torch's global generator like dropout.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.adapter import _HIDDEN_KWARG_NAMES, ModelAdapter
from ..utils.validation import check_choice, check_number, check_positive_int
from .base import (
    METHODS,
    LossParts,
    Method,
    _logits,
    _method_generator,
    _model_device,
    _task_forward,
    unwrap_model,
)

__all__ = ["L2SP", "Mixout", "SMART", "R3F", "RDrop", "NoisyTune", "HyPe", "ChildTuning", "BASELINES",
           "symmetric_kl", "pretrained_parameters"]


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


def _pretrained_module_ids(model: nn.Module) -> set[int]:
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


def _regression(logits: torch.Tensor) -> bool:
    return logits.dim() >= 1 and logits.shape[-1] == 1


def _input_embeddings(model: nn.Module, owner: str) -> nn.Module:
    inner = unwrap_model(model)
    get = getattr(inner, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if not isinstance(emb, nn.Module):
        raise ValueError(f"{owner} perturbs the input embeddings and needs a model with get_input_embeddings() "
                         f"(any Hugging Face model); {type(inner).__name__} has none.")
    return emb


@contextlib.contextmanager
def _perturbed_embeddings(model: nn.Module, perturb: Callable[[torch.Tensor], torch.Tensor],
                          owner: str) -> Iterator[None]:
    """Within the block, the output of the input-embedding module is replaced by ``perturb(output)``."""
    emb = _input_embeddings(model, owner)
    handle = emb.register_forward_hook(lambda module, args, output: perturb(output))
    try:
        yield
    finally:
        handle.remove()


def _draw(shape: torch.Size, like: torch.Tensor, generator: torch.Generator, kind: str) -> torch.Tensor:
    """Standard normal (``'normal'``) or U(-1, 1) (``'uniform'``) draws shaped like ``like``, from ``generator``."""
    if kind == "normal":
        out = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    else:
        out = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32).mul_(2).sub_(1)
    return out.to(device=like.device, dtype=like.dtype)


def _prediction_logits(out: Any) -> torch.Tensor | None:
    """The predicted distributions' logits: ``logits`` (batch, classes), or for extractive QA the start and end
    logits stacked along the batch, ``(2 * batch, tokens)``: each example then contributes two distributions over
    token positions (where the answer starts and where it ends), and divergences average over both."""
    logits = _logits(out)
    if logits is not None:
        return logits
    get = out.get if isinstance(out, Mapping) else (lambda k: getattr(out, k, None))
    start, end = get("start_logits"), get("end_logits")
    if start is not None and end is not None:
        return torch.cat([start, end], dim=0)
    return None


def _logits_of(model: nn.Module, inputs: Mapping[str, Any], owner: str) -> torch.Tensor:
    logits = _prediction_logits(model(**inputs))
    if logits is None:
        raise ValueError(f"{owner} compares predictions and needs a model that returns logits.")
    return logits


def _without_labels(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if k != "labels"}


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
    _param_names = ("alpha",)

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
            return torch.zeros((), device=_model_device(model))
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
        loss, out = _task_forward(model, inputs)
        return LossParts(loss=loss + weighted, task_loss=loss.detach(), reg_loss=term.detach().to(loss.dtype),
                         logits=_logits(out))

    def teardown(self, model: nn.Module) -> None:
        self._params, self._anchors = [], []


# ---------------------------------------------------------------------------------------------------- Mixout
def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


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
    _param_names = ("p", "granularity", "include_head", "disable_dropout")

    def __init__(self, p: float = 0.9, *, granularity: Literal["neuron", "element"] = "neuron",
                 include_head: bool = True, disable_dropout: bool = False) -> None:
        self.p = float(check_number("p", p, owner="Mixout", low=0.0, high=1.0, high_closed=False,
                                    hint="p is the probability of mixing in the pre-trained weight; p=0 is vanilla."))
        self.granularity = check_choice("granularity", granularity, ("neuron", "element"), owner="Mixout")
        self.include_head = bool(include_head)
        self.disable_dropout = bool(disable_dropout)
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
        pretrained = _pretrained_module_ids(inner)
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
        loss, out = _task_forward(model, inputs)
        return LossParts(loss=loss, task_loss=loss.detach(), reg_loss=torch.zeros((), device=loss.device),
                         logits=_logits(out))


# ---------------------------------------------------------------------------------------------------- SMART
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
    _param_names = ("lam", "noise_var", "step_size", "n_steps", "norm", "radius", "bregman", "mu", "beta", "seed")

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
        self.bregman = bool(bregman)
        self.mu = float(check_number("mu", mu, owner=owner, low=0.0))
        self.beta = float(check_number("beta", beta, owner=owner, low=0.0, high=1.0, high_closed=False))
        self.seed = None if seed is None else int(check_number("seed", seed, owner=owner, integer=True))
        self._generator: torch.Generator | None = None
        self._ema: dict[str, torch.Tensor] = {}

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Seed the perturbation (per process) and, with ``bregman``, copy the weights into the teacher."""
        _input_embeddings(model, "SMART")
        base = self.seed if self.seed is not None else seed
        self._generator = _method_generator(base, rank, 1, _model_device(model))
        self._ema = {}
        if self.bregman:
            self._ema = {n: p.detach().clone() for n, p in unwrap_model(model).named_parameters()}

    def teardown(self, model: nn.Module) -> None:
        self._ema = {}

    def divergence(self, a: torch.Tensor, b: torch.Tensor, *, detach_targets: bool = True) -> torch.Tensor:
        """The symmetric KL (batch mean) between two logit tensors; squared error for regression heads."""
        if _regression(a):
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
        inputs = _without_labels(inputs)
        target = clean_logits.detach()
        state: dict[str, torch.Tensor] = {}

        def perturb(embedded: torch.Tensor) -> torch.Tensor:
            if "v" not in state:
                v0 = _draw(embedded.shape, embedded, self._generator, "normal") * math.sqrt(self.noise_var)
                state["v0"] = v0
                state["v"] = v0.clone().requires_grad_(True)
            return embedded.detach() + state["v"]

        for _ in range(self.n_steps):
            with _perturbed_embeddings(model, perturb, "SMART"):
                adv = _logits_of(model, inputs, "SMART")
            (grad,) = torch.autograd.grad(self.divergence(adv, target), state["v"])
            if not torch.isfinite(grad).all():
                break
            v = self._project(state["v"].detach() + self.step_size * self._normalise(grad))
            state["v"] = v.requires_grad_(True)
        return state["v0"], state["v"].detach()

    def _teacher_logits(self, model: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
        inner = unwrap_model(model)
        was_training = inner.training
        inner.eval()
        try:
            with torch.no_grad():
                params = {n: self._ema.get(n, p) for n, p in inner.named_parameters()}
                out = torch.func.functional_call(inner, params, args=(), kwargs=dict(inputs), strict=False)
        finally:
            inner.train(was_training)
        logits = _prediction_logits(out)
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
        loss, out = _task_forward(model, inputs)
        logits = _prediction_logits(out)
        if logits is None:
            raise ValueError("SMART compares predictions and needs a model that returns logits (or start and end "
                             "logits).")
        _, v = self.adversarial_perturbation(model, inputs, logits)
        with _perturbed_embeddings(model, lambda e: e + v, "SMART"):
            adv = _logits_of(model, _without_labels(inputs), "SMART")
        reg = self.divergence(logits, adv)
        total = loss + self.lam * reg
        extras = {"perturbation_max": float(v.abs().amax())}
        if self.bregman:
            teacher = self._teacher_logits(model, _without_labels(inputs))
            breg = self.divergence(logits, teacher)
            total = total + self.mu * breg
            extras["bregman"] = float(breg.detach())
        return LossParts(loss=total, task_loss=loss.detach(), reg_loss=reg.detach().to(loss.dtype),
                         logits=_logits(out), extras=extras)


# ---------------------------------------------------------------------------------------------------- R3F
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
    _param_names = ("lam", "eps", "noise", "seed")

    def __init__(self, lam: float = 1.0, *, eps: float = 1e-5, noise: Literal["uniform", "normal"] = "uniform",
                 seed: int | None = None) -> None:
        self.lam = float(check_number("lam", lam, owner="R3F", low=0.0))
        self.eps = float(check_number("eps", eps, owner="R3F", low=0.0))
        self.noise = check_choice("noise", noise, ("uniform", "normal"), owner="R3F")
        self.seed = None if seed is None else int(check_number("seed", seed, owner="R3F", integer=True))
        self._generator: torch.Generator | None = None

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        _input_embeddings(model, "R3F")
        base = self.seed if self.seed is not None else seed
        self._generator = _method_generator(base, rank, 2, _model_device(model))

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        if self._generator is None:
            self.setup(model, seed=self.seed or 0)
        assert self._generator is not None
        loss, out = _task_forward(model, inputs)
        logits = _prediction_logits(out)
        if logits is None:
            raise ValueError("R3F compares predictions and needs a model that returns logits (or start and end "
                             "logits).")
        if _regression(logits):
            reg = torch.zeros((), device=loss.device)
        else:
            gen = self._generator

            def perturb(embedded: torch.Tensor) -> torch.Tensor:
                return embedded + _draw(embedded.shape, embedded, gen, self.noise) * self.eps

            with _perturbed_embeddings(model, perturb, "R3F"):
                noised = _logits_of(model, _without_labels(inputs), "R3F")
            reg = symmetric_kl(noised, logits)
        return LossParts(loss=loss + self.lam * reg, task_loss=loss.detach(), reg_loss=reg.detach().to(loss.dtype),
                         logits=_logits(out))


# ---------------------------------------------------------------------------------------------------- R-Drop
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
    _param_names = ("alpha", "reduction")

    def __init__(self, alpha: float = 1.0, *, reduction: Literal["sum", "batchmean"] = "sum") -> None:
        self.alpha = float(check_number("alpha", alpha, owner="RDrop", low=0.0))
        self.reduction = check_choice("reduction", reduction, ("sum", "batchmean"), owner="RDrop")

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        loss1, out1 = _task_forward(model, inputs)
        loss2, out2 = _task_forward(model, inputs)
        a, b = _prediction_logits(out1), _prediction_logits(out2)
        if a is None or b is None:
            raise ValueError("R-Drop compares predictions and needs a model that returns logits (or start and end "
                             "logits).")
        if _regression(a):
            reg = (a.float() - b.float()).pow(2).sum()
            reg = reg / a.shape[0] if self.reduction == "batchmean" else reg
        else:
            reg = 0.5 * symmetric_kl(a, b, reduction=self.reduction)
        task = 0.5 * (loss1 + loss2)
        return LossParts(loss=task + self.alpha * reg, task_loss=task.detach(), reg_loss=reg.detach().to(task.dtype),
                         logits=_logits(out1))


# ---------------------------------------------------------------------------------------------------- NoisyTune
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
    _param_names = ("lam", "include_head", "seed")

    def __init__(self, lam: float = 0.15, *, include_head: bool = True, seed: int | None = None) -> None:
        self.lam = float(check_number("lam", lam, owner="NoisyTune", low=0.0))
        self.include_head = bool(include_head)
        self.seed = None if seed is None else int(check_number("seed", seed, owner="NoisyTune", integer=True))

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Perturb the weights in place (identically on every process)."""
        base = self.seed if self.seed is not None else seed
        gen = _method_generator(base, None, 3)  # CPU: the same draws on any device
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
        loss, out = _task_forward(model, inputs)
        return LossParts(loss=loss, task_loss=loss.detach(), reg_loss=torch.zeros((), device=loss.device),
                         logits=_logits(out))


# ---------------------------------------------------------------------------------------------------- HyPe
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
    _param_names = ("eps", "noise", "seed")

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
            return (h + self.eps * _draw(h.shape, h, self._generator, self.noise), *args[1:]), kwargs
        for key in _HIDDEN_KWARG_NAMES:
            h = kwargs.get(key)
            if torch.is_tensor(h):
                return args, {**kwargs, key: h + self.eps * _draw(h.shape, h, self._generator, self.noise)}
        return None

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Attach the pre-hooks to every block and seed the noise (per process)."""
        self.teardown(model)
        adapter = ModelAdapter(model)
        base = self.seed if self.seed is not None else seed
        self._generator = _method_generator(base, rank, 4, _model_device(model))
        for block in dict.fromkeys(adapter.blocks):
            self._handles.append(block.register_forward_pre_hook(self._hook, with_kwargs=True))

    def teardown(self, model: nn.Module) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        loss, out = _task_forward(model, inputs)
        return LossParts(loss=loss, task_loss=loss.detach(), reg_loss=torch.zeros((), device=loss.device),
                         logits=_logits(out))


# ---------------------------------------------------------------------------------------------------- ChildTuning
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
    _param_names = ("p", "variant", "fisher_max_grad_norm", "seed")

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
        self._generator = _method_generator(base, None, 5, _model_device(model))
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
        was_training = inner.training
        inner.train()
        n = 0
        try:
            for batch in batches:
                inner.zero_grad(set_to_none=True)
                loss, _ = _task_forward(inner, batch)
                loss.backward()
                for p, f in zip(params, fisher):
                    if p.grad is not None:
                        if self.fisher_max_grad_norm > 0:
                            nn.utils.clip_grad_norm_([p], self.fisher_max_grad_norm)
                        f.add_(p.grad.detach().float().pow(2))
                n += 1
        finally:
            inner.zero_grad(set_to_none=True)
            inner.train(was_training)
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
        loss, out = _task_forward(model, inputs)
        return LossParts(loss=loss, task_loss=loss.detach(), reg_loss=torch.zeros((), device=loss.device),
                         logits=_logits(out))


#: The rival methods by registry name (also registered in ``lnsr_viz.methods.base.METHODS``).
BASELINES: dict[str, type[Method]] = {
    "l2sp": L2SP, "mixout": Mixout, "smart": SMART, "r3f": R3F, "rdrop": RDrop, "noisytune": NoisyTune,
    "hype": HyPe, "childtuning": ChildTuning,
}
METHODS.update(BASELINES)

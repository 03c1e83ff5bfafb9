"""Fine-tuning methods behind one interface: a task loss plus (optionally) a regulariser.

Every method is a :class:`Method` with one verb, ``compute_loss(model, inputs) -> LossParts`` (also ``__call__``):
the total loss to back-propagate, its task and regulariser parts (logged separately), and the logits. ``setup(model)``
is called once before training (methods that need the pre-trained weights read them there).

LNSR (Hua et al., NAACL 2021 / TNNLS 2023) — what is from the papers and what is our reconstruction
---------------------------------------------------------------------------------------------------
From the papers: inject Gaussian or "in-manifold" noise into a hidden representation and penalise how much the
representations of the layers above it change, so the upper sub-network becomes stable (low Jacobian norm) around the
training data; total loss = task loss + lambda * penalty.

Reconstructed here (the exact choices were not available to us; each is a parameter, defaults documented below)::

    h_0 = embeddings(x);  h_l = f_l(h_{l-1})                 clean pass, l = 1..L (the model's own forward)
    h~_k = h_k + e,  e ~ noise(h_k)                          inject at layer k (0 = embedding output)
    h~_l = f_l(h~_{l-1})  for l > k                         noisy pass: only blocks k+1..L, same dropout masks
    R = sum_{l>k} w_l * mean_{real tokens} d(h~_l, h_l)      padding never counted
    loss = task_loss + lambda * R

with ``d = mean over hidden dims of (h~ - h)^2`` (``reduction='mean'``; ``'sum'`` sums the dims instead, which makes
the penalty ``hidden_size`` times larger), divided by ``||h_l||^2 / hidden_size`` of the clean token by default
(``relative=True``: a scale-free penalty; ``relative=False`` keeps the plain squared change), uniform layer weights
``w_l = 1 / (L - k)`` by default, clean targets not detached by default, and the noisy pass replaying the clean
pass's dropout masks (so the penalty measures the noise's effect, not dropout's).
The extra cost is one pass over blocks k+1..L and its backward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ._validation import check_choice, check_number
from .adapter import ModelAdapter
from .noise import NOISE_TYPES, NoiseInjector, make_noise

__all__ = ["LossParts", "Method", "Vanilla", "LNSR", "lnsr_penalty", "get_method", "METHODS"]


@dataclass
class LossParts:
    """What one training step's loss is made of."""

    loss: torch.Tensor
    task_loss: torch.Tensor
    reg_loss: torch.Tensor
    logits: torch.Tensor | None = None
    extras: dict[str, float] = field(default_factory=dict)


def _task_forward(model: nn.Module, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, Any]:
    out = model(**inputs)
    loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None:
        keys = list(out.keys()) if isinstance(out, Mapping) else type(out).__name__
        raise ValueError(f"The model did not return a loss from the inputs (got {keys}); pass labels in the batch.")
    return loss, out


def _logits(out: Any) -> torch.Tensor | None:
    if isinstance(out, Mapping):
        return out.get("logits")
    return getattr(out, "logits", None)


class Method:
    """Base class of fine-tuning methods. Subclasses set ``name`` and override ``compute_loss``.

    ``params()`` returns the constructor parameters as a JSON-serialisable dict (used for run-store keys).
    """

    name: ClassVar[str] = "method"
    _param_names: ClassVar[tuple[str, ...]] = ()

    def params(self) -> dict[str, Any]:
        """Constructor parameters, JSON-serialisable."""
        return {p: getattr(self, p) for p in self._param_names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0) -> None:
        """Prepare for training ``model`` (called once, before the first step; ``rank`` is the process index)."""

    def after_backward(self, model: nn.Module) -> None:
        """Called after ``loss.backward()`` and before clipping and the optimizer step (e.g. to mask gradients)."""

    def teardown(self, model: nn.Module) -> None:
        """Undo anything ``setup`` attached to the model (hooks, wrappers); called when training ends."""

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        raise NotImplementedError

    def __call__(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        return self.compute_loss(model, inputs)


class Vanilla(Method):
    """Plain fine-tuning: the task loss only."""

    name = "vanilla"

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        loss, out = _task_forward(model, inputs)
        return LossParts(loss=loss, task_loss=loss.detach(), reg_loss=torch.zeros((), device=loss.device),
                         logits=_logits(out))


def _layer_weights(spec: str | Sequence[float], n: int) -> torch.Tensor:
    if isinstance(spec, str):
        if spec == "uniform":
            w = torch.ones(n, dtype=torch.float64)
        elif spec == "increasing":
            w = torch.arange(1, n + 1, dtype=torch.float64)
        else:
            raise ValueError(f"layer_weights must be 'uniform', 'increasing' or a list of {n} floats. Got {spec!r}.")
        return w / w.sum()
    w = torch.as_tensor(list(spec), dtype=torch.float64)
    if w.numel() != n or not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"layer_weights must have {n} finite non-negative entries (one per layer above the "
                         f"injection layer); got {list(spec)!r}.")
    return w


def lnsr_penalty(clean: Sequence[torch.Tensor], noisy: Sequence[torch.Tensor], mask: torch.Tensor,
                 weights: torch.Tensor, *, reduction: Literal["mean", "sum"] = "mean",
                 relative: bool = False) -> torch.Tensor:
    """The LNSR penalty ``sum_l w_l * mean_{real tokens} d(h~_l, h_l)`` (see the module docstring).

    Parameters
    ----------
    clean, noisy : sequences of Tensor (batch, seq, dim)
        Layers k+1..L of the clean and noisy passes.
    mask : Tensor (batch, seq), bool
        Real tokens.
    weights : Tensor (len(clean),)
    """
    maskf = mask.to(clean[0].dtype)
    n_tokens = maskf.sum().clamp_min(1.0)
    total = clean[0].new_zeros(())
    for w, h, h_noisy in zip(weights.tolist(), clean, noisy, strict=True):
        sq = (h_noisy - h).pow(2)
        d = sq.mean(dim=-1) if reduction == "mean" else sq.sum(dim=-1)
        if relative:
            ref = h.detach().pow(2)
            ref = ref.mean(dim=-1) if reduction == "mean" else ref.sum(dim=-1)
            d = d / ref.clamp_min(1e-12)
        total = total + w * (d * maskf).sum() / n_tokens
    return total


class LNSR(Method):
    """Layerwise Noise Stability Regularization: task loss + ``lam`` x the noise-stability penalty.

    Parameters
    ----------
    lam : float, default=10.0
        Weight of the penalty (lambda). 0 gives vanilla fine-tuning (the noisy pass still runs). The default was
        chosen a priori, not tuned on results: with the other defaults the penalty starts at about 1% of the task
        loss on all-MiniLM-L6-v2 (penalty ~0.001 x 10 vs cross-entropy ~0.69). Sweep it for your model.
    injection_layer : int, default=0
        Layer k where noise is added (0 = embedding output). Must be below the last layer.
    noise : {'gaussian', 'in_manifold'} or NoiseInjector, default='gaussian'
    scale : float, default=0.05
        Noise scale: with ``scale_kind='relative'`` the noise norm is this fraction of each token's norm.
    scale_kind : {'relative', 'absolute'}, default='relative'
    layer_weights : 'uniform', 'increasing' or list of float, default='uniform'
        Weights ``w_l`` for layers k+1..L; the named schemes sum to 1.
    reduction : {'mean', 'sum'}, default='mean'
        Over hidden dimensions, per token.
    relative : bool, default=True
        Divide each token's squared change by its clean squared norm: a scale-free penalty that cannot be met by
        shrinking the representations (False gives the plain squared change of the papers' formula).
    detach_clean : bool, default=False
        Treat the clean states as fixed targets (no gradient through them).
    dropout : {'same', 'independent'}, default='same'
        The noisy pass reuses the clean pass's dropout masks ('same') or draws its own.
    n_components : int, default=16
        Subspace size for in-manifold noise.
    seed : int or None, default=None
        Seed of the noise generator; None takes it from ``setup(seed=...)`` (the trainer's seed).

    Examples
    --------
    In your own PyTorch loop::

        lnsr = LNSR(lam=10.0, injection_layer=0, scale=0.05)
        lnsr.setup(model, seed=0)
        for batch in loader:                      # batch has input_ids, attention_mask, labels
            parts = lnsr(model, batch)            # parts.loss = task loss + lam * penalty
            parts.loss.backward(); optimizer.step(); optimizer.zero_grad()
    """

    name = "lnsr"
    _param_names = ("lam", "injection_layer", "noise", "scale", "scale_kind", "layer_weights", "reduction",
                    "relative", "detach_clean", "dropout", "n_components", "seed")

    def __init__(self, lam: float = 10.0, *, injection_layer: int = 0, noise: str | NoiseInjector = "gaussian",
                 scale: float = 0.05, scale_kind: Literal["relative", "absolute"] = "relative",
                 layer_weights: str | Sequence[float] = "uniform", reduction: Literal["mean", "sum"] = "mean",
                 relative: bool = True, detach_clean: bool = False,
                 dropout: Literal["same", "independent"] = "same", n_components: int = 16,
                 seed: int | None = None) -> None:
        owner = "LNSR"
        self.lam = float(check_number("lam", lam, owner=owner, low=0.0))
        self.injection_layer = int(check_number("injection_layer", injection_layer, owner=owner, low=0,
                                                integer=True))
        if isinstance(noise, str):
            check_choice("noise", noise, NOISE_TYPES, owner=owner)
        self.injector = make_noise(noise, scale=scale, scale_kind=scale_kind, n_components=n_components)
        self.noise = self.injector.name
        self.scale = self.injector.scale
        self.scale_kind = self.injector.scale_kind
        self.n_components = int(n_components)
        if isinstance(layer_weights, str):
            check_choice("layer_weights", layer_weights, ("uniform", "increasing"), owner=owner,
                         hint="Or pass a list with one weight per layer above the injection layer.")
            self.layer_weights: str | list[float] = layer_weights
        else:
            self.layer_weights = [float(w) for w in layer_weights]
        self.reduction = check_choice("reduction", reduction, ("mean", "sum"), owner=owner)
        self.relative = bool(relative)
        self.detach_clean = bool(detach_clean)
        self.dropout = check_choice("dropout", dropout, ("same", "independent"), owner=owner)
        self.seed = seed if seed is None else int(seed)
        self._adapter: ModelAdapter | None = None
        self._generator: torch.Generator | None = None
        self._weights: torch.Tensor | None = None

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0) -> None:
        """Bind to ``model``: find its blocks, check the injection layer, seed the noise (per process ``rank``)."""
        self._adapter = ModelAdapter(model)
        self._adapter.check_layer(self.injection_layer, allow_last=False)
        base_seed = self.seed if self.seed is not None else seed
        # Independent noise per process, reproducible from the seed.
        self._generator = torch.Generator().manual_seed(int(base_seed) * 7919 + 104_729 * int(rank) + 17)
        self._weights = _layer_weights(self.layer_weights, self._adapter.n_layers - self.injection_layer)

    def _ensure(self, model: nn.Module) -> ModelAdapter:
        if self._adapter is None or self._adapter.model is not model:
            self.setup(model, seed=self.seed or 0)
        assert self._adapter is not None
        return self._adapter

    def penalty(self, model: nn.Module, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, Any, dict[str, float]]:
        """Run the clean pass (returns the model output) and the noisy pass; return (penalty, output, extras)."""
        adapter = self._ensure(model)
        k = self.injection_layer
        same = self.dropout == "same" and model.training
        cap = adapter.capture(inputs, record_rng=same)
        h_k = cap.hidden[k]
        noise = self.injector.inject(h_k, cap.mask, generator=self._generator)
        start = (h_k.detach() if self.detach_clean else h_k) + noise
        noisy = adapter.replay(cap, start, start=k, same_dropout=same)
        clean = cap.hidden[k + 1:]
        if self.detach_clean:
            clean = [h.detach() for h in clean]
        assert self._weights is not None
        reg = lnsr_penalty(clean, noisy, cap.mask, self._weights, reduction=self.reduction, relative=self.relative)
        with torch.no_grad():
            top = cap.hidden[-1].detach()
            extras = {"noise_norm": float(noise.norm(dim=-1)[cap.mask].mean()),
                      "top_change_rel": float(((noisy[-1].detach() - top).norm(dim=-1)
                                               / top.norm(dim=-1).clamp_min(1e-12))[cap.mask].mean())}
        return reg, cap.output, extras

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        reg, out, extras = self.penalty(model, inputs)
        loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", None)
        if loss is None:
            raise ValueError("The model did not return a loss from the inputs; pass labels in the batch.")
        total = loss + self.lam * reg
        return LossParts(loss=total, task_loss=loss.detach(), reg_loss=reg.detach(), logits=_logits(out),
                         extras=extras)


METHODS: dict[str, type[Method]] = {"vanilla": Vanilla, "lnsr": LNSR}


def get_method(method: str | Method, **params: Any) -> Method:
    """Build a method from its name and parameters (or return a Method instance unchanged)."""
    if isinstance(method, Method):
        if params:
            raise ValueError("Pass parameters to the Method's constructor, not to get_method, when giving an instance.")
        return method
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}. Expected one of {sorted(METHODS)}.")
    try:
        return METHODS[method](**params)
    except TypeError as err:
        raise ValueError(f"Bad parameters for method {method!r}: {err}. "
                         f"See help(lnsr_viz.{METHODS[method].__name__}).") from None

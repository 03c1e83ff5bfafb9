"""LNSR: the task loss plus lambda x how much noise injected at layer k changes every layer above it.

Like every method, :class:`LNSR` is a :class:`~lnsr_viz.methods.base.Method` with one verb,
``compute_loss(model, inputs) -> LossParts``; :func:`lnsr_penalty` is the penalty alone.

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
from typing import Any, Literal

import torch
from torch import nn

from ..core.adapter import ModelAdapter
from ..core.inputs import model_device
from ..core.noise import NOISE_TYPES, NoiseInjector, make_noise
from ..utils.validation import check_bool, check_choice, check_number
from .base import LossParts, Method, method_generator, output_logits, unwrap_model
from .registry import register

__all__ = ["lnsr_penalty", "LNSR"]


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
                 relative: bool = False, normalizer: torch.Tensor | float | None = None) -> torch.Tensor:
    """The LNSR penalty ``sum_l w_l * mean_{real tokens} d(h~_l, h_l)`` (see the module docstring).

    Parameters
    ----------
    clean, noisy : sequences of Tensor (batch, seq, dim)
        Layers k+1..L of the clean and noisy passes.
    mask : Tensor (batch, seq), bool
        Real tokens.
    weights : Tensor (len(clean),)
    reduction : {'mean', 'sum'}, default='mean'
        Over hidden dimensions, per token.
    relative : bool, default=False
        Divide each token's squared change by its clean squared norm (same reduction).
    normalizer : Tensor or float, optional
        What the summed per-token distances are divided by. Default: the number of real tokens in ``mask``. In
        distributed training LNSR passes ``global_tokens / world_size``, so that the mean over processes of the
        per-process values is exactly the penalty of the global batch.

    Returns
    -------
    Tensor ()
    """
    maskf = mask.to(clean[0].dtype)
    n_tokens = maskf.sum().clamp_min(1.0) if normalizer is None else normalizer
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


@register
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
        self.relative = check_bool("relative", relative, owner="LNSR")
        self.detach_clean = check_bool("detach_clean", detach_clean, owner="LNSR")
        self.dropout = check_choice("dropout", dropout, ("same", "independent"), owner=owner)
        self.seed = seed if seed is None else int(seed)
        self._adapter: ModelAdapter | None = None
        self._generator: torch.Generator | None = None
        self._weights: torch.Tensor | None = None

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Bind to ``model``: find its blocks, check the injection layer, seed the noise (per process ``rank``).

        A model whose blocks the adapter cannot replay (Funnel, Reformer, ...) is refused here, before any training
        step, with :class:`~lnsr_viz.core.adapter.AdapterError` (a ``ValueError``) saying why.
        """
        self._adapter = ModelAdapter(model)
        self._adapter.check_layer(self.injection_layer, allow_last=False)
        base_seed = self.seed if self.seed is not None else seed
        # Independent noise per process, reproducible from the seed. The generator lives on the model's device, so
        # the noise is drawn where it is used (no host-to-device copy per step on a GPU; the same draws on CPU).
        self._generator = method_generator(int(base_seed), int(rank), 0, model_device(model))
        self._weights = _layer_weights(self.layer_weights, self._adapter.n_layers - self.injection_layer)
        self._world_size = int(world_size)

    _world_size: int = 1

    def _ensure(self, model: nn.Module) -> ModelAdapter:
        adapter = self._adapter
        if adapter is not None and adapter.model is not model and unwrap_model(adapter.model) is unwrap_model(model):
            adapter.model = model  # set up on the bare model, now called through its DDP / Accelerate wrapper
        if adapter is None or adapter.model is not model:
            self.setup(model, seed=self.seed or 0)
        assert self._adapter is not None
        return self._adapter

    def _normalizer(self, mask: torch.Tensor) -> torch.Tensor | None:
        """``global real tokens / world_size`` under distributed training (one scalar all-reduce), else None."""
        if self._world_size <= 1:
            return None
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return None
        count = mask.sum().to(torch.float64)
        dist.all_reduce(count)  # token counts, not means, are reduced: the global mean is then exact
        return count.clamp_min(1.0) / self._world_size

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
        normalizer = self._normalizer(cap.mask)
        if normalizer is not None:
            normalizer = normalizer.to(device=clean[0].device, dtype=clean[0].dtype)
        reg = lnsr_penalty(clean, noisy, cap.mask, self._weights, reduction=self.reduction, relative=self.relative,
                           normalizer=normalizer)
        with torch.no_grad():  # diagnostics: two means over real tokens, read back to the host in one transfer
            top = cap.hidden[-1].detach()
            maskf = cap.mask.to(top.dtype)
            count = maskf.sum().clamp_min(1.0)
            rel = (noisy[-1].detach() - top).norm(dim=-1) / top.norm(dim=-1).clamp_min(1e-12)
            values = torch.stack([(noise.norm(dim=-1) * maskf).sum(), (rel * maskf).sum()]) / count
            noise_norm, top_change = values.tolist()
        return reg, cap.output, {"noise_norm": noise_norm, "top_change_rel": top_change}

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        reg, out, extras = self.penalty(model, inputs)
        loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", None)
        if loss is None:
            raise ValueError("The model did not return a loss from the inputs; pass labels in the batch.")
        total = loss + self.lam * reg
        return LossParts(loss=total, task_loss=loss.detach(), reg_loss=reg.detach(), logits=output_logits(out),
                         extras=extras)

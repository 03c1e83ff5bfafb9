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

Three cheaper ways to the same penalty (constructor parameters; all off by default)::

    batched=True    the clean and noisy rows go through blocks k+1..L as ONE batch inside the model's own forward
                    (clean rows first; the head sees the clean rows only): the same mathematics in fewer, larger
                    kernels. Exact (same penalty, same gradients) wherever the blocks draw no dropout (eval mode, or
                    dropout p = 0); in training each row draws its own masks, so it needs dropout='independent'.
    fraction=f      the noisy pass runs on a uniformly drawn subset of round(f * B) of the B sequences (at least 1,
                    drawn from the method's generator): R^ = (B / n) * sum_{sampled tokens} w_l d / N, with N the
                    real tokens of the whole batch, an unbiased estimate of R (E[R^ | noise] = R for the same noise,
                    which is drawn for the whole batch as before). Cost about 1 + f passes. Also needs
                    dropout='independent' in training (the noisy sub-batch cannot replay the full batch's masks).
    every=m         the penalty on every m-th training step only (steps m, 2m, ...), weighted lam * m: the same
                    penalty weight per step in expectation over steps, at cost 1 + 1/m on average.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..core.adapter import AdapterError, ModelAdapter
from ..core.inputs import model_device
from ..core.noise import NOISE_TYPES, NoiseInjector, make_noise
from ..utils.validation import check_bool, check_choice, check_number
from .base import LossParts, Method, method_generator, output_logits, task_forward, unwrap_model
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
    batched : bool, default=False
        Run the clean and the noisy rows through blocks k+1..L as one batch, inside the model's own forward (the
        clean rows first; the model's head and loss see the clean rows only), instead of the clean forward plus a
        serial replay. The same mathematics: exact (same penalty and gradients, to float tolerance) where the
        blocks draw no dropout (eval mode, dropout p = 0). In training mode each row of the batched pass draws its
        own dropout masks, so the noisy rows cannot reuse the clean rows' masks: ``batched=True`` requires
        ``dropout='independent'`` (refused otherwise). Models whose block arguments are ambiguous by shape (seq-first
        blocks; a batch size equal to the sequence length or a head count) fall back to the serial replay.
    fraction : float in (0, 1], default=1.0
        Estimate the penalty on ``max(1, round(fraction * B))`` of the batch's B sequences, drawn uniformly without
        replacement from the method's generator at every step; the noise is drawn for the whole batch as before.
        The sum over the sampled sequences' real tokens is divided by ``N * n / B`` (N = real tokens of the whole
        batch), so the estimate is unbiased for the full penalty: its mean over subsets, for the same noise, is
        exactly the full penalty. The noisy pass costs about ``fraction`` of the full one. With ``fraction < 1``
        the noisy sub-batch draws its own dropout masks in training mode: requires ``dropout='independent'``.
        1 is the full penalty.
    every : int >= 1, default=1
        Apply the penalty on every ``every``-th call of :meth:`compute_loss` in training mode only (calls m, 2m, ...
        counted from ``setup``; a micro-batch under gradient accumulation counts as a call), with the weight
        ``lam * every``: the expected penalty weight per step is unchanged. The other steps are plain fine-tuning
        steps (one forward; ``reg_loss`` 0, logged ``reg_loss`` is ``every * penalty`` on penalised steps, so its
        mean over steps estimates the penalty). In eval mode every call computes the penalty, weight ``lam``.

    The cheaper options combine (``batched=True, fraction=0.25, every=2``). Left at their defaults they are not part
    of the run-store key (``late_defaults``), so runs stored before they existed keep their keys.

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
    late_defaults = {"batched": False, "fraction": 1.0, "every": 1}

    def __init__(self, lam: float = 10.0, *, injection_layer: int = 0, noise: str | NoiseInjector = "gaussian",
                 scale: float = 0.05, scale_kind: Literal["relative", "absolute"] = "relative",
                 layer_weights: str | Sequence[float] = "uniform", reduction: Literal["mean", "sum"] = "mean",
                 relative: bool = True, detach_clean: bool = False,
                 dropout: Literal["same", "independent"] = "same", n_components: int = 16,
                 seed: int | None = None, batched: bool = False, fraction: float = 1.0, every: int = 1) -> None:
        owner = "LNSR"
        self.batched = check_bool("batched", batched, owner=owner)
        self.fraction = float(check_number("fraction", fraction, owner=owner, low=0.0, high=1.0, low_closed=False,
                                           hint="The share of the batch's sequences the penalty is estimated on; "
                                                "1 is the full penalty."))
        self.every = int(check_number("every", every, owner=owner, low=1, integer=True,
                                      hint="The penalty is applied every `every`-th step; 1 is every step."))
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
        if self.dropout == "same" and (self.batched or self.fraction < 1.0):
            what = "batched=True" if self.batched else f"fraction={self.fraction:g}"
            raise ValueError(f"LNSR({what}) needs dropout='independent': in training mode the noisy rows then draw "
                             "their own dropout masks (they cannot replay the clean pass's masks in a batch of "
                             f"another shape). Pass dropout='independent' with {what}, or leave it at its default.")
        self._calls = 0
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
        self._calls = 0

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

    def _rows(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """The sequences the penalty is estimated on this step (sorted), or None for all of them."""
        if self.fraction >= 1.0:
            return None
        n = max(1, min(batch, round(self.fraction * batch)))
        if n >= batch:
            return None
        assert self._generator is not None
        perm = torch.randperm(batch, generator=self._generator, device=self._generator.device)
        return perm[:n].sort().values.to(device)

    def penalty(self, model: nn.Module, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, Any, dict[str, float]]:
        """Run the clean pass (returns the model output) and the noisy pass; return (penalty, output, extras).

        With ``batched=True`` both run in one forward; with ``fraction < 1`` the noisy pass covers the sampled rows
        and the penalty is the unbiased estimate described in the class docstring.
        """
        adapter = self._ensure(model)
        k = self.injection_layer
        same = self.dropout == "same" and model.training
        drawn: dict[str, Any] = {}

        def noisy_rows(h_k: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            noise = self.injector.inject(h_k, mask, generator=self._generator)  # for the whole batch, as always
            rows = self._rows(h_k.shape[0], h_k.device)
            start = (h_k.detach() if self.detach_clean else h_k) + noise
            drawn.update(noise=noise, rows=rows)
            return (start, rows) if rows is None else (start.index_select(0, rows), rows)

        cap = None
        if self.batched:
            def fork(h_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                start, rows = noisy_rows(h_k, adapter.token_mask(inputs, h_k))
                return start, torch.arange(h_k.shape[0], device=h_k.device) if rows is None else rows

            cap = adapter.capture(inputs, record_rng=same, fork=(k, fork))
            noisy = cap.forked
        if cap is None or cap.forked is None:  # serial (or the batched capture could not fork: replay instead)
            cap = adapter.capture(inputs, record_rng=same) if cap is None else cap
            start, rows = noisy_rows(cap.hidden[k], cap.mask)
            noisy = None
            if rows is not None:
                try:
                    noisy = adapter.replay(cap, start, start=k, same_dropout=same, rows=rows)
                except AdapterError:  # arguments not selectable by row: replay every row, keep the sampled ones
                    full_start = (cap.hidden[k].detach() if self.detach_clean else cap.hidden[k]) + drawn["noise"]
                    noisy = [h.index_select(0, rows) for h in adapter.replay(cap, full_start, start=k,
                                                                             same_dropout=same)]
            if noisy is None:
                noisy = adapter.replay(cap, start, start=k, same_dropout=same)
        assert noisy is not None
        noise, rows = drawn["noise"], drawn["rows"]
        clean = cap.hidden[k + 1:]
        mask = cap.mask
        if rows is not None:
            clean = [h.index_select(0, rows) for h in clean]
            mask = mask.index_select(0, rows)
            noise = noise.index_select(0, rows)
        if self.detach_clean:
            clean = [h.detach() for h in clean]
        assert self._weights is not None
        normalizer: torch.Tensor | None = self._normalizer(cap.mask)
        if rows is not None:  # the whole batch's token count x n / B: unbiased (a ratio of sampled means is not)
            base = cap.mask.sum().to(torch.float64).clamp_min(1.0) if normalizer is None else normalizer
            normalizer = base * (rows.numel() / cap.mask.shape[0])
        if normalizer is not None:
            normalizer = normalizer.to(device=clean[0].device, dtype=clean[0].dtype)
        reg = lnsr_penalty(clean, noisy, mask, self._weights, reduction=self.reduction, relative=self.relative,
                           normalizer=normalizer)
        with torch.no_grad():  # diagnostics: two means over real tokens, read back to the host in one transfer
            top = clean[-1].detach()
            maskf = mask.to(top.dtype)
            count = maskf.sum().clamp_min(1.0)
            rel = (noisy[-1].detach() - top).norm(dim=-1) / top.norm(dim=-1).clamp_min(1e-12)
            values = torch.stack([(noise.norm(dim=-1) * maskf).sum(), (rel * maskf).sum()]) / count
            noise_norm, top_change = values.tolist()
        return reg, cap.output, {"noise_norm": noise_norm, "top_change_rel": top_change}

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        weight = self.lam
        if self.every > 1 and model.training:
            self._ensure(model)
            self._calls += 1
            if self._calls % self.every:  # not a penalised step: a plain fine-tuning step
                loss, out = task_forward(model, inputs)
                return LossParts(loss=loss, task_loss=loss.detach(), reg_loss=loss.new_zeros(()),
                                 logits=output_logits(out))
            weight = self.lam * self.every
        reg, out, extras = self.penalty(model, inputs)
        loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", None)
        if loss is None:
            raise ValueError("The model did not return a loss from the inputs; pass labels in the batch.")
        total = loss + weight * reg
        scale = weight / self.lam if self.lam else 1.0
        return LossParts(loss=total, task_loss=loss.detach(), reg_loss=(reg * scale).detach(),
                         logits=output_logits(out), extras=extras)

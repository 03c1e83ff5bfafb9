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

Rival methods and combinations
------------------------------
The rival methods (L2-SP, Mixout, SMART, R3F, R-Drop, NoisyTune, HyPe, ChildTuning) live in
:mod:`lnsr_viz.methods.rivals` and are registered in :data:`METHODS` when this module is imported. Methods combine with
``+`` (``get_method("lnsr+mixout")``, :func:`compose`) where that is meaningful; see :class:`Combined`.

Hooks, in the order a trainer calls them (:class:`~lnsr_viz.training.loop.FineTuner` and
:class:`~lnsr_viz.training.hf_trainer.RegularizedTrainer` both follow it)::

    setup(model, seed=, rank=, world_size=)     once, before the optimizer is built and before DDP wraps the model
    setup_data(model, batches)                  once, only if ``needs_data`` (ChildTuning-D's Fisher pass)
    per step:  compute_loss(model, batch) -> loss.backward() -> after_backward(model)
               -> gradient clipping -> before_optimizer_step(model) -> optimizer.step()
    teardown(model)                             once, when training ends (also after an error)

Distributed training: ``setup`` receives the process ``rank`` and ``world_size``. Noise that augments the examples
(LNSR, SMART, R3F, HyPe; dropout and Mixout masks come from torch's global generator, which the trainer seeds per
process) is drawn independently per process but reproducibly from the seed; what must be identical on every process
(NoisyTune's one-off perturbation, ChildTuning's gradient masks) is seeded from the seed alone. Under
``world_size > 1`` LNSR divides its summed per-token distances by the *global* batch's token count (one all-reduce of
a scalar per step; token counts are reduced, not means), so that the gradient DistributedDataParallel averages, and
the mean of the logged values over processes, equal the single-process penalty of the whole batch exactly.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..core.adapter import ModelAdapter
from ..core.noise import NOISE_TYPES, NoiseInjector, make_noise
from ..utils.validation import check_choice, check_number

__all__ = ["LossParts", "Method", "Vanilla", "LNSR", "lnsr_penalty", "get_method", "METHODS", "Combined", "compose",
           "unwrap_model"]


@dataclass
class LossParts:
    """What one training step's loss is made of."""

    loss: torch.Tensor
    task_loss: torch.Tensor
    reg_loss: torch.Tensor
    logits: torch.Tensor | None = None
    extras: dict[str, float] = field(default_factory=dict)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / Accelerate wrappers (or ``model`` itself)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


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


def _model_device(model: nn.Module) -> torch.device:
    param = next(unwrap_model(model).parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _method_generator(seed: int, rank: int | None, salt: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (seed, rank, salt); ``rank=None`` gives the same stream on every process."""
    value = (int(seed) * 7919 + 17 + 1_000_003 * int(salt)) if rank is None else \
        (int(seed) * 7919 + 104_729 * int(rank) + 17 + 1_000_003 * int(salt))
    return torch.Generator(device=device).manual_seed(value % (2**63 - 1))


class Method:
    """Base class of fine-tuning methods. Subclasses set ``name`` and override ``compute_loss`` (and hooks).

    ``params()`` returns the constructor parameters as a JSON-serialisable dict (used for run-store keys).

    Attributes
    ----------
    name : str
        Registry name (``get_method(name)``).
    role : {'forward', 'penalty', 'passive'}
        How the method composes (see :class:`Combined`): ``'forward'`` methods run the model's forward pass their
        own way (LNSR's capture/replay, SMART's adversarial passes, ...) and at most one of them can be in a
        combination; ``'penalty'`` methods add a term that needs only the weights (:meth:`weighted_penalty`);
        ``'passive'`` methods act through ``setup`` and the gradient hooks and leave the loss alone.
    needs_data : bool
        True if :meth:`setup_data` must be called with the training batches before the first step.
    """

    name: ClassVar[str] = "method"
    role: ClassVar[Literal["forward", "penalty", "passive"]] = "forward"
    setup_priority: ClassVar[int] = 0  # Combined runs setups in increasing order (NoisyTune first)
    needs_data: bool = False
    _param_names: ClassVar[tuple[str, ...]] = ()

    def params(self) -> dict[str, Any]:
        """Constructor parameters, JSON-serialisable."""
        return {p: getattr(self, p) for p in self._param_names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Prepare for training ``model`` (called once, before the first step, before DDP wraps the model).

        ``rank`` is the process index and ``world_size`` the number of processes (1 without distributed training).
        """

    def setup_data(self, model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> None:
        """Look at the training data once before training (only called when ``needs_data`` is True)."""

    def after_backward(self, model: nn.Module) -> None:
        """Called after ``loss.backward()`` and before clipping and the optimizer step."""

    def before_optimizer_step(self, model: nn.Module) -> None:
        """Called after gradient clipping, right before ``optimizer.step()`` (e.g. to mask gradients)."""

    def teardown(self, model: nn.Module) -> None:
        """Undo anything ``setup`` attached to the model (hooks, wrappers); called when training ends. Idempotent."""

    def weighted_penalty(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight * term, term)`` of a ``'penalty'`` method: a loss term that depends on the weights only."""
        raise NotImplementedError(f"{type(self).__name__} is not a penalty method (role={self.role!r}).")

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

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        """Bind to ``model``: find its blocks, check the injection layer, seed the noise (per process ``rank``)."""
        self._adapter = ModelAdapter(model)
        self._adapter.check_layer(self.injection_layer, allow_last=False)
        base_seed = self.seed if self.seed is not None else seed
        # Independent noise per process, reproducible from the seed. The generator lives on the model's device, so
        # the noise is drawn where it is used (no host-to-device copy per step on a GPU; the same draws on CPU).
        self._generator = _method_generator(int(base_seed), int(rank), 0, _model_device(model))
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
        return LossParts(loss=total, task_loss=loss.detach(), reg_loss=reg.detach(), logits=_logits(out),
                         extras=extras)


class _Registry(dict):
    """Name -> Method class. ``"a+b" in METHODS`` is True when every part is registered (a combination name)."""

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str) and "+" in key:
            parts = key.split("+")
            return len(parts) >= 2 and all(dict.__contains__(self, part) for part in parts)
        return dict.__contains__(self, key)


#: Registered methods by name; :mod:`lnsr_viz.methods.rivals` adds the rival methods when this module is imported.
METHODS: dict[str, type[Method]] = _Registry({"vanilla": Vanilla, "lnsr": LNSR})

# Pairs that are refused even though their roles would allow them, with the reason shown to the user.
_INCOMPATIBLE: dict[frozenset[str], str] = {
    frozenset({"lnsr", "hype"}): (
        "HyPe perturbs the input of every block, including LNSR's replay of blocks k+1..L, so the LNSR penalty "
        "would measure HyPe's noise as well as its own; both are hidden-state noise methods, use one of them"),
}


class Combined(Method):
    """Several methods trained together: their loss terms are summed and their setup-time changes all applied.

    At most one component may run the forward pass its own way (``role='forward'``: LNSR, SMART, R3F, R-Drop);
    the others add a weight-only term (L2-SP) or act through setup and the gradient hooks (Mixout, NoisyTune,
    HyPe, ChildTuning). Build one with ``get_method("lnsr+mixout", ...)`` or :func:`compose`.

    Parameters
    ----------
    methods : sequence of Method
        Two or more distinct methods. Refused with a ``ValueError`` before training: ``vanilla`` (it is the absence
        of a method), duplicates, two forward-owning methods (each needs the whole forward pass its own way), and
        the pairs in ``_INCOMPATIBLE`` (LNSR + HyPe).

    Notes
    -----
    * The name is canonical: the forward-owning method first, then the others in registry order
      (``compose('mixout', 'lnsr').name == 'lnsr+mixout'``).
    * ``setup`` runs NoisyTune first, so that anchors taken by other methods (L2-SP's and Mixout's pre-trained
      weights) are the weights training starts from; ``teardown`` runs in reverse order.
    * ``LossParts.reg_loss`` of a combination is the *weighted* sum of all regulariser terms (so that
      ``loss = task_loss + reg_loss``); each component's own unweighted term is in ``extras['<name>.reg']``.
    * Mixout draws its masks from torch's global generator, like dropout, so LNSR's ``dropout='same'`` replay reuses
      the clean pass's Mixout masks too: in ``lnsr+mixout`` the LNSR penalty measures LNSR's noise only.

    Examples
    --------
    >>> from lnsr_viz.methods.base import get_method
    >>> get_method("mixout+lnsr", lam=2.0, p=0.5).name
    'lnsr+mixout'
    """

    role = "forward"

    def __init__(self, methods: Sequence[Method]) -> None:
        methods = list(methods)
        flat: list[Method] = []
        for m in methods:
            if not isinstance(m, Method):
                raise ValueError(f"Combined takes Method instances; got {type(m).__name__}.")
            flat.extend(m.methods if isinstance(m, Combined) else [m])
        if len(flat) < 2:
            raise ValueError("A combination needs at least two methods, e.g. 'lnsr+mixout'.")
        names = [m.name for m in flat]
        if "vanilla" in names:
            raise ValueError(f"Cannot combine 'vanilla' with other methods ({'+'.join(names)}): vanilla is the "
                             "absence of a regulariser. Drop it from the combination.")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"Method {dupes[0]!r} appears twice in {'+'.join(names)!r}; give each method once "
                             "(set its parameters instead of repeating it).")
        owners = [m.name for m in flat if m.role == "forward"]
        if len(owners) > 1:
            raise ValueError(f"Cannot combine {' and '.join(repr(o) for o in owners)}: each runs the model's forward "
                             "pass its own way (clean/noisy or adversarial passes), so their losses cannot be summed "
                             "over one forward pass. Combine at most one of lnsr, smart, r3f, rdrop with l2sp, "
                             "mixout, noisytune, hype or childtuning.")
        for pair, reason in _INCOMPATIBLE.items():
            if pair <= set(names):
                raise ValueError(f"Cannot combine {' and '.join(sorted(pair))}: {reason}.")
        order = list(METHODS)
        rank = {n: (0 if n in owners else 1, order.index(n) if n in order else len(order)) for n in names}
        self.methods: list[Method] = sorted(flat, key=lambda m: rank[m.name])
        self.name = "+".join(m.name for m in self.methods)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Combined([{', '.join(repr(m) for m in self.methods)}])"

    def params(self) -> dict[str, Any]:
        """``{component name: its params()}``."""
        return {m.name: m.params() for m in self.methods}

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return any(m.needs_data for m in self.methods)

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        for m in sorted(self.methods, key=lambda m: m.setup_priority):
            m.setup(model, seed=seed, rank=rank, world_size=world_size)

    def setup_data(self, model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> None:
        batches = list(batches) if sum(m.needs_data for m in self.methods) > 1 else batches
        for m in self.methods:
            if m.needs_data:
                m.setup_data(model, batches)

    def after_backward(self, model: nn.Module) -> None:
        for m in self.methods:
            m.after_backward(model)

    def before_optimizer_step(self, model: nn.Module) -> None:
        for m in self.methods:
            m.before_optimizer_step(model)

    def teardown(self, model: nn.Module) -> None:
        for m in reversed(sorted(self.methods, key=lambda m: m.setup_priority)):
            m.teardown(model)

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        # Weight-only terms first: their gradients are then computed last in the backward pass (see L2SP).
        penalties = [(m, *m.weighted_penalty(model)) for m in self.methods if m.role == "penalty"]
        owner = next((m for m in self.methods if m.role == "forward"), None)
        parts = (owner or Vanilla()).compute_loss(model, inputs)
        loss = parts.loss
        reg = parts.loss.detach() - parts.task_loss
        extras = {f"{owner.name}.{k}": v for k, v in parts.extras.items()} if owner is not None else {}
        if owner is not None:
            extras[f"{owner.name}.reg"] = float(parts.reg_loss)
        for m, weighted, term in penalties:
            loss = loss + weighted
            reg = reg + weighted.detach()
            extras[f"{m.name}.reg"] = float(term.detach())
        return LossParts(loss=loss, task_loss=parts.task_loss, reg_loss=reg, logits=parts.logits, extras=extras)


def _init_params(cls: type[Method]) -> set[str]:
    return {n for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _route_params(names: Sequence[str], params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Send each parameter of a combination to its method: ``lam=`` (unambiguous), ``'lnsr.lam'`` or ``lnsr={...}``."""
    combo = "+".join(names)
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in params.items():
        if key in out and isinstance(value, Mapping):
            out[key].update(value)
            continue
        if "." in key:
            comp, sub = key.split(".", 1)
            if comp not in out:
                raise ValueError(f"Parameter {key!r} names {comp!r}, which is not part of {combo!r}; expected one "
                                 f"of {list(names)}.")
            out[comp][sub] = value
            continue
        owners = [n for n in names if key in _init_params(METHODS[n])]
        if not owners:
            raise ValueError(f"No method in {combo!r} takes a parameter {key!r}. See help() of "
                             f"{', '.join('lnsr_viz.' + METHODS[n].__name__ for n in names)}.")
        if len(owners) > 1:
            raise ValueError(f"Parameter {key!r} is ambiguous in {combo!r}: {' and '.join(owners)} both take it. "
                             f"Write it as '{owners[0]}.{key}' (CLI: --param {combo}.{owners[0]}.{key}=...).")
        out[owners[0]][key] = value
    return out


def _build(name: str, params: Mapping[str, Any]) -> Method:
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}. Expected one of {sorted(METHODS)} or a combination such as "
                         "'lnsr+mixout'.")
    try:
        return METHODS[name](**params)
    except TypeError as err:
        raise ValueError(f"Bad parameters for method {name!r}: {err}. "
                         f"See help(lnsr_viz.{METHODS[name].__name__}).") from None


def compose(*methods: str | Method, **params: Any) -> Combined:
    """Combine methods (names or instances) into one :class:`Combined`; ``params`` are routed by name.

    Parameters
    ----------
    *methods : str or Method
        E.g. ``compose('lnsr', 'mixout')`` or ``compose(LNSR(lam=2), Mixout(p=0.5))``.
    **params
        Parameters of the named methods: a name only one of them takes (``lam=2``), a dotted name
        (``**{'mixout.p': 0.5}``) or a dict per method (``mixout={'p': 0.5}``).
    """
    names = [m for m in methods if isinstance(m, str)]
    routed = _route_params(names, params) if names else {}
    if params and not names:
        raise ValueError("Pass parameters to the Methods' constructors when composing instances.")
    built = [_build(m, routed.get(m, {})) if isinstance(m, str) else m for m in methods]
    return Combined(built)


def get_method(method: str | Method, **params: Any) -> Method:
    """Build a method from its name and parameters (or return a Method instance unchanged).

    Parameters
    ----------
    method : str or Method
        A registered name (``sorted(METHODS)``), a combination joined by ``+`` (``'lnsr+mixout'``; see
        :class:`Combined`), or a Method instance.
    **params
        Constructor parameters; for a combination see :func:`compose` for how they are routed.

    Raises
    ------
    ValueError
        Unknown name, bad or out-of-range parameter, or a combination that makes no sense.
    """
    if isinstance(method, Method):
        if params:
            raise ValueError("Pass parameters to the Method's constructor, not to get_method, when giving an instance.")
        return method
    if not isinstance(method, str):
        raise ValueError(f"method must be a name such as 'lnsr' or a Method instance; got {type(method).__name__}.")
    if "+" in method:
        parts = [part.strip() for part in method.split("+")]
        for part in parts:
            if part not in METHODS:
                raise ValueError(f"Unknown method {part!r} in {method!r}. Expected one of {sorted(METHODS)}.")
        return compose(*parts, **params)
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}. Expected one of {sorted(METHODS)}.")
    return _build(method, params)


# The rival methods register themselves into METHODS when lnsr_viz.methods.rivals is imported. The import sits at the bottom
# because baselines imports this module's names; it works whichever of the two modules is imported first.
from . import rivals as _baselines  # noqa: E402, F401

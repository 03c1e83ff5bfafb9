"""The stability probe: inject noise at layer k, measure how much every later layer's output changes.

For injection layer ``k`` (0 = embedding output), a noise type and scale and ``S`` noise draws, the probe reports
for every layer ``l >= k``

* the L2 change ``||h~_l - h_l||`` averaged over real tokens (padding never counted), and
* the relative change ``||h~_l - h_l|| / ||h_l||`` averaged over real tokens,

per example (averaged over the draws), then the mean and a 95% Student-t confidence interval over examples. A full
profile over all ``k`` reuses the clean activations of one forward pass per batch (the layers below ``k`` are never
re-run), stacks the ``S`` draws into one batch, runs without gradients, and bounds memory by processing examples in
chunks of ``batch_size`` and draws in groups of at most ``max_rows`` sequences. This reproduces the paper's
Figure 1 (5% relative Gaussian noise, one curve per model) for any model.

Precision: ``precision='bf16'`` runs the clean pass and the replays under bfloat16 autocast (see
:mod:`lnsr_viz.utils.precision`); the changes are taken in float32 and accumulated in float64 as in fp32. In bf16 the
clean reference of layers k+1..L is not the clean pass's state but an unperturbed copy replayed in the same batched
call as the noisy draws, so clean and noisy go through identical bfloat16 computation: zero noise gives exactly zero
change, and bf16 rounding that differs between the full forward and a replay is never counted as noise response.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..utils.intervals import t_interval
from ..utils.params import constructor_params
from ..utils.precision import DEFAULT_PRECISION, autocast, check_precision, require_precision
from ..utils.validation import check_choice, check_positive_int
from .adapter import ModelAdapter, layer_name
from .inputs import eval_mode, model_device, texts_of, to_device, tokenize
from .noise import NOISE_TYPES, NoiseInjector, make_noise

__all__ = ["StabilityProbe", "PROFILE_COLUMNS", "summarize_examples"]

PROFILE_COLUMNS = (
    "model", "injection_layer", "layer", "layer_name", "noise", "scale", "scale_kind",
    "change_l2", "change_l2_ci_low", "change_l2_ci_high",
    "change_rel", "change_rel_ci_low", "change_rel_ci_high", "n_examples", "n_draws",
)


def summarize_examples(per_example: pd.DataFrame, *, confidence: float = 0.95) -> pd.DataFrame:
    """Mean and Student-t CI over examples of ``change_l2`` and ``change_rel`` per (injection_layer, layer)."""
    keys = [c for c in ("model", "injection_layer", "layer") if c in per_example.columns]
    rows = []
    for key, group in per_example.groupby(keys, sort=True):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        n = len(group)
        for metric in ("change_l2", "change_rel"):
            ci = t_interval(group[metric].to_numpy(dtype=np.float64), confidence)
            row.update({metric: ci.mean, f"{metric}_ci_low": ci.low, f"{metric}_ci_high": ci.high})
        row["n_examples"] = n
        rows.append(row)
    return pd.DataFrame(rows)


class StabilityProbe:
    """Measure how noise injected at layer k propagates to every layer above it.

    Parameters
    ----------
    noise : {'gaussian', 'in_manifold'} or NoiseInjector, default='gaussian'
    scale : float, default=0.05
        Noise scale; with ``scale_kind='relative'`` a fraction of each token's hidden-state norm (the paper's 5%).
    scale_kind : {'relative', 'absolute'}, default='relative'
    injection_layers : int, sequence of int or None, default=None
        Where to inject; None means every layer 0..L (a full profile).
    n_draws : int, default=4
        Noise draws per example; the per-example change is the mean over draws.
    batch_size : int, default=32
        Examples per forward pass.
    max_rows : int, default=256
        At most this many sequences (draws x examples) go through the blocks at once: bounds memory.
    max_length : int, default=128
        Tokenizer truncation length.
    seed : int, default=0
        Seeds the noise; results are identical for the same seed, data and batch_size, and the noise at layer k
        does not depend on which other layers are probed.
    strategy : {'replay', 'naive'}, default='replay'
        'replay' reuses the clean activations and runs only blocks k+1..L per draw; 'naive' re-runs the whole model
        for every injection layer and draw (the slow reference, kept for tests and benchmarks).
    n_components : int, default=16
        Subspace size for in-manifold noise.
    progress : bool, default=True
        Show a tqdm progress bar.
    precision : {'fp32', 'bf16'}, default='fp32'
        'bf16' runs the forward passes under bfloat16 autocast (CPUs with bfloat16 instructions, CUDA GPUs that
        support it; checked when :meth:`run` starts). Each replay then carries one unperturbed copy of the batch as
        the clean reference (about ``1 / n_draws`` more rows), which keeps zero noise at exactly zero change.

    Attributes
    ----------
    per_example_ : DataFrame
        After :meth:`run`: one row per example, injection layer and layer.
    adapter_description_ : dict
        After :meth:`run`: :meth:`ModelAdapter.describe` of the probed model (which stack, layout, and what the top
        layer is: the last block's output, before any final norm). The profile carries the same text in
        ``profile.attrs['top_layer']``; its ``layer_name`` values stay ``embed``, ``blocks.0``, ...
    """

    def __init__(self, noise: str | NoiseInjector = "gaussian", *, scale: float = 0.05,
                 scale_kind: Literal["relative", "absolute"] = "relative",
                 injection_layers: int | Sequence[int] | None = None, n_draws: int = 4, batch_size: int = 32,
                 max_rows: int = 256, max_length: int = 128, seed: int = 0,
                 strategy: Literal["replay", "naive"] = "replay", n_components: int = 16,
                 progress: bool = True, precision: str = DEFAULT_PRECISION) -> None:
        owner = "StabilityProbe"
        if isinstance(noise, str):
            check_choice("noise", noise, NOISE_TYPES, owner=owner)
        self.injector = make_noise(noise, scale=scale, scale_kind=scale_kind, n_components=n_components)
        self.injection_layers = injection_layers
        self.n_draws = check_positive_int("n_draws", n_draws, owner=owner)
        self.batch_size = check_positive_int("batch_size", batch_size, owner=owner)
        self.max_rows = check_positive_int("max_rows", max_rows, owner=owner)
        self.max_length = check_positive_int("max_length", max_length, owner=owner)
        self.seed = int(seed)
        self.strategy = check_choice("strategy", strategy, ("replay", "naive"), owner=owner)
        self.progress = bool(progress)
        self.precision = check_precision(precision, owner=owner)
        self.n_components = getattr(self.injector, "n_components", check_positive_int(
            "n_components", n_components, owner=owner))

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, read back (scikit-learn style); the noise by its name and its own settings.

        ``StabilityProbe(**probe.get_params())`` builds an equal probe; the run store keys runs from these values.
        """
        inj = self.injector
        params = {"noise": inj.name, "scale": inj.scale, "scale_kind": inj.scale_kind,
                  "injection_layers": self.injection_layers, "n_draws": self.n_draws, "batch_size": self.batch_size,
                  "max_rows": self.max_rows, "max_length": self.max_length, "seed": self.seed,
                  "strategy": self.strategy, "n_components": self.n_components, "progress": self.progress,
                  "precision": self.precision}
        missing = set(constructor_params(type(self))) ^ set(params)
        if missing:  # a new constructor parameter must be read back here, or it would drop out of run keys
            raise AttributeError(f"StabilityProbe.get_params() is out of step with __init__: {sorted(missing)}")
        return params

    def __repr__(self) -> str:
        return (f"StabilityProbe({self.injector!r}, injection_layers={self.injection_layers!r}, "
                f"n_draws={self.n_draws}, batch_size={self.batch_size}, seed={self.seed}, strategy={self.strategy!r}"
                + (f", precision={self.precision!r})" if self.precision != DEFAULT_PRECISION else ")"))

    def _layers(self, adapter: ModelAdapter) -> list[int]:
        layers = self.injection_layers
        if layers is None:
            return list(range(adapter.n_layers + 1))
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = [layers]
        if not isinstance(layers, Iterable) or isinstance(layers, str):
            raise ValueError(f"injection_layers must be None, an int or a list of ints. Got {layers!r} instead.")
        out = sorted({adapter.check_layer(k) for k in layers})
        if not out:
            raise ValueError("injection_layers is empty: pass None for every layer, or the layers to probe.")
        return out

    def noise_generator(self, chunk: int, layer: int) -> torch.Generator:
        """The generator of the noise for batch ``chunk`` (0-based) injected at ``layer``: a fixed function of the
        probe's ``seed``, so any re-implementation (e.g. a benchmark's peer) can draw exactly the probe's noise."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + chunk * 1_009 + layer)

    def run(self, model: nn.Module | ModelAdapter, data: Any, *, tokenizer: Any = None,
            label: str = "model") -> pd.DataFrame:
        """Probe ``model`` on ``data`` (texts, a TextDataset, or a tokenized batch) and return the tidy profile.

        Parameters
        ----------
        model : nn.Module or ModelAdapter
        data : sequence of str, TextDataset, or mapping of tensors
            A mapping (``input_ids``, ``attention_mask``) is used as one pre-tokenized set of examples.
        tokenizer : tokenizer, optional
            Required when ``data`` holds texts.
        label : str
            The value of the ``model`` column.
        """
        adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
        device = model_device(adapter.model)
        require_precision(self.precision, device, owner="StabilityProbe")  # before any work
        layers = self._layers(adapter)
        if isinstance(data, Mapping):  # pre-tokenized: moved to the model's device (it may be on a GPU)
            batches = [to_device(data, device)]
            n_total = int(next(iter(data.values())).shape[0])
            chunks: list[Any] = [None]
        else:
            texts = texts_of(data, owner="The probe")
            if tokenizer is None:
                raise ValueError("StabilityProbe.run needs tokenizer= when data holds texts.")
            chunks = [texts[i:i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
            batches = []
            n_total = len(texts)
        net = adapter.model
        records: list[np.ndarray] = []
        from tqdm.auto import tqdm

        bar = tqdm(total=n_total * len(layers), desc=f"probe {label}", unit="ex x layer", disable=not self.progress,
                   leave=False)
        offset = 0
        try:
            with eval_mode(net), torch.no_grad():
                for ci, chunk in enumerate(chunks):
                    inputs = (batches[ci] if chunk is None
                              else tokenize(tokenizer, chunk, max_length=self.max_length, model=net))
                    records.append(self._probe_batch(adapter, inputs, layers, ci, offset))
                    n = int(inputs["input_ids"].shape[0])
                    offset += n
                    bar.update(n * len(layers))
        finally:
            bar.close()
        per_example = pd.DataFrame(np.concatenate(records, axis=0),
                                   columns=["example", "injection_layer", "layer", "change_l2", "change_rel"])
        for col in ("example", "injection_layer", "layer"):
            per_example[col] = per_example[col].astype(int)
        per_example.insert(0, "model", label)
        self.per_example_ = per_example
        profile = summarize_examples(per_example)
        profile["layer_name"] = profile["layer"].map(layer_name)
        profile["noise"] = self.injector.name
        profile["scale"] = self.injector.scale
        profile["scale_kind"] = self.injector.scale_kind
        profile["n_draws"] = self.n_draws
        profile = profile[list(PROFILE_COLUMNS)]
        self.adapter_description_ = adapter.describe()
        profile.attrs["top_layer"] = self.adapter_description_["top_layer"]
        profile.attrs["adapter"] = adapter.summary()
        return profile

    def _probe_batch(self, adapter: ModelAdapter, inputs: Mapping[str, torch.Tensor], layers: list[int], chunk: int,
                     offset: int) -> np.ndarray:
        """Rows (example, k, l, change_l2, change_rel) for one batch of examples."""
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        device = model_device(adapter.model)
        with autocast(self.precision, device):
            cap = adapter.capture(model_inputs)
        mask = cap.mask
        batch = mask.shape[0]
        n_tokens = mask.sum(dim=1).clamp_min(1).to(torch.float64)  # (batch,)
        maskf = mask.to(torch.float64)
        clean_norms = [_norms(h) for h in cap.hidden]
        # bf16 replays carry one clean copy of the batch (the reference), so one row of max_rows less for the draws
        own_clean = self.precision != DEFAULT_PRECISION and self.strategy == "replay"
        room = max(self.max_rows // max(batch, 1) - int(own_clean), 1)
        draws_per_pass = max(1, min(self.n_draws, room))
        rows = []
        for k in layers:
            gen = self.noise_generator(chunk, k)
            n_layers_out = adapter.n_layers - k + 1
            sum_l2 = torch.zeros(n_layers_out, batch, dtype=torch.float64, device=mask.device)
            sum_rel = torch.zeros(n_layers_out, batch, dtype=torch.float64, device=mask.device)
            done = 0
            while done < self.n_draws:
                s = min(draws_per_pass, self.n_draws - done)
                noise = self.injector.inject_draws(cap.hidden[k], mask, s, generator=gen)  # float32, outside autocast
                with autocast(self.precision, device):
                    cleans, outs = self._noisy_layers(adapter, cap, model_inputs, k, noise, s, own_clean=own_clean)
                for i, h_noisy in enumerate(outs):  # i = l - k
                    clean = cleans[i]
                    norms = clean_norms[k + i] if cleans[i] is cap.hidden[k + i] else _norms(clean)
                    diff = (_wide(h_noisy).reshape(s, batch, *clean.shape[1:]) - _wide(clean)).norm(dim=-1)
                    diff = diff.to(torch.float64)
                    sum_l2[i] += ((diff * maskf).sum(dim=-1) / n_tokens).sum(dim=0)
                    sum_rel[i] += ((diff / norms * maskf).sum(dim=-1) / n_tokens).sum(dim=0)
                done += s
            for i in range(n_layers_out):
                ex = np.arange(offset, offset + batch)
                rows.append(np.column_stack([
                    ex, np.full(batch, k), np.full(batch, k + i),
                    (sum_l2[i] / self.n_draws).cpu().numpy(), (sum_rel[i] / self.n_draws).cpu().numpy(),
                ]))
        return np.concatenate(rows, axis=0)

    def _noisy_layers(self, adapter: ModelAdapter, cap: Any, inputs: Mapping[str, torch.Tensor], k: int,
                      noise: torch.Tensor, s: int, *, own_clean: bool = False,
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Clean references and noisy states of layers k..L for ``s`` stacked draws (draw-major).

        The references are the clean pass's states, or, with ``own_clean`` (bf16), layer k's clean state and the
        outputs of an unperturbed copy of the batch replayed in the same call as the draws.
        """
        batch = cap.batch_size
        start = cap.hidden[k].repeat(s, 1, 1) + noise
        if self.strategy == "replay" and own_clean:
            outs = adapter.replay(cap, torch.cat([cap.hidden[k], start], dim=0), start=k, expand=s + 1)
            return [cap.hidden[k], *(h[:batch] for h in outs)], [start, *(h[batch:] for h in outs)]
        cleans = list(cap.hidden[k:])
        if self.strategy == "replay":
            return cleans, [start, *adapter.replay(cap, start, start=k, expand=s)]
        # Naive reference: the whole model once per draw, noise added by a hook at layer k.
        per_draw = []
        for d in range(s):
            e = noise[d * batch:(d + 1) * batch]
            run = adapter.forward_with_injection(inputs, k, lambda h, e=e: h + e)
            per_draw.append(run.hidden[k:])
        return cleans, [torch.cat([p[i] for p in per_draw], dim=0) for i in range(len(per_draw[0]))]


def _wide(h: torch.Tensor) -> torch.Tensor:
    """``h`` in at least float32 (a bfloat16 / float16 state is widened before differences are taken)."""
    return h.float() if h.dtype in (torch.bfloat16, torch.float16) else h


def _norms(h: torch.Tensor) -> torch.Tensor:
    """Per-token L2 norms in float64, floored at 1e-12 (the relative change's denominator)."""
    return _wide(h).norm(dim=-1).to(torch.float64).clamp_min(1e-12)

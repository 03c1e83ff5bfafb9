"""The model adapter: one addressable view of any Hugging Face transformer's block stack.

A transformer is read as ``h_0 = embed(x)`` followed by ``h_l = block_l(h_{l-1}, ...)`` for ``l = 1..L``.
The adapter finds the ordered block stack, records during a clean forward pass the *exact* arguments the
model itself passes to every block (attention masks in the model's own 4-D form, position ids, relative position
tensors, ...), and can then replay blocks ``k+1..L`` from any hidden state ``h_k``. Recording the real call arguments
(forward pre-hooks with kwargs) instead of rebuilding masks by hand keeps the replay exact across architectures and
transformers versions.

Layer names follow one scheme (see ``docs/architecture.md``): layer 0 is ``embed`` (the hidden state entering the
first block, after any embedding projection), layer ``l >= 1`` is ``blocks.{l-1}``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ModelAdapter", "Capture", "BlockCall", "SUPPORTED_FAMILIES", "layer_name"]

# Where each family keeps its block stack, relative to ``model.base_model``.
# ALBERT keeps *one* shared layer group that the encoder calls ``num_hidden_layers`` times: the adapter records
# calls, not modules, so shared weights are handled the same way as distinct blocks.
_BLOCK_PATHS: dict[str, str] = {
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
    "xlm-roberta": "encoder.layer",
    "camembert": "encoder.layer",
    "electra": "encoder.layer",
    "mpnet": "encoder.layer",
    "deberta": "encoder.layer",
    "deberta-v2": "encoder.layer",
    "distilbert": "transformer.layer",
    "albert": "encoder.albert_layer_groups",
    "gpt2": "h",
    "gpt_neo": "h",
    "gptj": "h",
    "bloom": "h",
    "opt": "decoder.layers",
    "llama": "layers",
    "mistral": "layers",
    "qwen2": "layers",
    "gemma": "layers",
    "t5": "encoder.block",
}
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(sorted(_BLOCK_PATHS))
HIDDEN_KWARG_NAMES = ("hidden_states", "hidden_state", "x", "inputs_embeds")


def layer_name(layer: int) -> str:
    """Return the addressable name of layer ``layer`` (``embed`` or ``blocks.{layer-1}``)."""
    return "embed" if layer == 0 else f"blocks.{layer - 1}"


def _first_tensor(output: Any) -> torch.Tensor:
    """A block returns a tensor, or a tuple / ModelOutput whose first element is the hidden state."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    if isinstance(output, Mapping) and "hidden_states" in output:
        return output["hidden_states"]
    raise TypeError(f"cannot find the hidden state in a block output of type {type(output).__name__}")


def _get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


@dataclass
class BlockCall:
    """One recorded call of a block: the module, its positional and keyword arguments, and where h sits."""

    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    hidden_pos: int | str  # index into args, or the kwarg name holding the hidden state
    rng_state: torch.Tensor | None = None

    def call(self, hidden: torch.Tensor, *, expand: int = 1, batch_size: int | None = None) -> torch.Tensor:
        """Run the block on ``hidden`` with the recorded arguments (batch-expanded ``expand`` times)."""
        args = list(self.args)
        kwargs = dict(self.kwargs)
        if expand > 1:
            args = [_expand(a, expand, batch_size) for a in args]
            kwargs = {k: _expand(v, expand, batch_size) for k, v in kwargs.items()}
        if isinstance(self.hidden_pos, int):
            args[self.hidden_pos] = hidden
        else:
            kwargs[self.hidden_pos] = hidden
        return _first_tensor(self.module(*args, **kwargs))


def _expand(value: Any, times: int, batch_size: int | None) -> Any:
    """Repeat a batch-shaped tensor ``times`` along dim 0 (draw-major: [d0 b0..bB, d1 b0..bB, ...])."""
    if torch.is_tensor(value) and value.dim() >= 1 and batch_size is not None and value.shape[0] == batch_size:
        return value.repeat(times, *([1] * (value.dim() - 1)))
    if isinstance(value, tuple):
        return tuple(_expand(v, times, batch_size) for v in value)
    if isinstance(value, list):
        return [_expand(v, times, batch_size) for v in value]
    return value


@dataclass
class Capture:
    """Everything a clean pass recorded: hidden states ``h_0..h_L``, the block calls, the token mask, the output.

    Attributes
    ----------
    hidden : list of Tensor, each (batch, seq, hidden)
        ``hidden[l]`` is layer ``l`` (0 = embedding output entering block 1).
    calls : list of BlockCall
        ``calls[l-1]`` is the call that produced ``hidden[l]``.
    mask : Tensor (batch, seq), bool
        True for real tokens, False for padding.
    output : Any
        What the model's forward returned (logits, loss, ...).
    """

    hidden: list[torch.Tensor]
    calls: list[BlockCall]
    mask: torch.Tensor
    output: Any = None
    rng_after: torch.Tensor | None = field(default=None, repr=False)

    @property
    def n_layers(self) -> int:
        return len(self.calls)

    @property
    def batch_size(self) -> int:
        return self.hidden[0].shape[0]


class ModelAdapter:
    """Read any Hugging Face transformer as embeddings + an ordered stack of blocks, and replay the blocks.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face ``PreTrainedModel`` (any head) or a plain module.
    blocks : nn.ModuleList, sequence of modules, or str, optional
        The block stack, or its dotted path inside ``model``. Needed only for architectures the adapter does not
        know (see ``SUPPORTED_FAMILIES``).
    n_layers : int, optional
        How many block *calls* one forward pass makes. Defaults to ``config.num_hidden_layers`` (ALBERT calls one
        shared block that many times) or the number of blocks.

    Examples
    --------
    >>> from lnsr_viz.testing import tiny_model
    >>> model, tok = tiny_model("bert")
    >>> adapter = ModelAdapter(model)
    >>> adapter.n_layers, adapter.layer_names[:2]
    (2, ['embed', 'blocks.0'])
    """

    def __init__(self, model: nn.Module, *, blocks: nn.Module | Sequence[nn.Module] | str | None = None,
                 n_layers: int | None = None) -> None:
        self.model = model
        inner = model.module if isinstance(getattr(model, "module", None), nn.Module) else model  # DDP / wrappers
        self.blocks = self._find_blocks(inner, blocks)
        config = getattr(inner, "config", None)
        if n_layers is None:
            n_layers = getattr(config, "num_hidden_layers", None) if len(self.blocks) == 1 else None
            n_layers = n_layers or len(self.blocks)
        self.n_layers = int(n_layers)
        self._accepts_use_cache = "use_cache" in inspect.signature(inner.forward).parameters

    # ------------------------------------------------------------------ discovery
    @staticmethod
    def _find_blocks(model: nn.Module, blocks: nn.Module | Sequence[nn.Module] | str | None) -> list[nn.Module]:
        if blocks is not None:
            if isinstance(blocks, str):
                found = _get_submodule(model, blocks)
                if found is None:
                    raise ValueError(f"blocks={blocks!r} is not a submodule of {type(model).__name__}.")
                blocks = found
            seq = list(blocks) if isinstance(blocks, (nn.ModuleList, list, tuple, nn.Sequential)) else [blocks]
            if not seq or not all(isinstance(b, nn.Module) for b in seq):
                raise ValueError("blocks must be a non-empty sequence of nn.Module (or a dotted path to one).")
            return seq
        base = getattr(model, "base_model", model)
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        path = _BLOCK_PATHS.get(model_type or "")
        if path is not None:
            found = _get_submodule(base, path)
            if isinstance(found, nn.ModuleList) and len(found) > 0:
                return list(found)
        # Fallback: the largest ModuleList of same-typed modules within two levels of the base model.
        best: list[nn.Module] = []
        for name, module in base.named_modules():
            if isinstance(module, nn.ModuleList) and name.count(".") <= 1 and len(module) > len(best):
                if len({type(m) for m in module}) == 1:
                    best = list(module)
        if best:
            return best
        raise ValueError(
            f"Cannot find the transformer block stack of {type(model).__name__} (model_type={model_type!r}). "
            f"Supported families: {', '.join(SUPPORTED_FAMILIES)}. For another architecture pass the blocks "
            "explicitly, e.g. ModelAdapter(model, blocks='encoder.layer') or blocks=model.encoder.layer."
        )

    @property
    def layer_names(self) -> list[str]:
        """Names of layers 0..L: ``embed``, ``blocks.0``, ..., ``blocks.{L-1}``."""
        return [layer_name(layer) for layer in range(self.n_layers + 1)]

    def check_layer(self, layer: int, *, name: str = "injection_layer", allow_last: bool = True) -> int:
        """Validate a layer index against this model's depth, with a message that says the valid range."""
        high = self.n_layers if allow_last else self.n_layers - 1
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= high:
            model_name = getattr(getattr(self.model, "config", None), "name_or_path", "") or type(self.model).__name__
            raise ValueError(
                f"{name}={layer!r} must be an int between 0 and {high} for {model_name} "
                f"(n_layers={self.n_layers}; 0 is the embedding output)."
            )
        return layer

    # ------------------------------------------------------------------ hooks
    @contextlib.contextmanager
    def hooks(self, pre: Callable | None = None, post: Callable | None = None) -> Iterator[None]:
        """Attach a forward pre-hook / forward hook (with kwargs) to every block; always removed on exit."""
        handles = []
        try:
            for block in dict.fromkeys(self.blocks):  # shared blocks (ALBERT) get one hook, fired per call
                if pre is not None:
                    handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
                if post is not None:
                    handles.append(block.register_forward_hook(post, with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _model_kwargs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = dict(inputs)
        if self._accepts_use_cache:
            kwargs.setdefault("use_cache", False)
        return kwargs

    @staticmethod
    def token_mask(inputs: Mapping[str, Any], hidden: torch.Tensor) -> torch.Tensor:
        """Real-token mask (batch, seq) from ``attention_mask``; all True when the inputs carry none."""
        mask = inputs.get("attention_mask")
        if mask is None:
            return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return mask.to(device=hidden.device).bool()

    # ------------------------------------------------------------------ clean pass
    def capture(self, inputs: Mapping[str, Any], *, record_rng: bool = False, stop_at: int | None = None) -> Capture:
        """Run the model once, recording every block's call arguments and output.

        Parameters
        ----------
        inputs : mapping
            Model inputs (``input_ids``, ``attention_mask``, labels, ...).
        record_rng : bool
            Record the CPU (and current CUDA) RNG state before each block call, so that a replay can reuse the
            exact dropout masks of the clean pass (used by the LNSR regulariser in training mode).
        stop_at : int, optional
            Stop the forward pass after layer ``stop_at`` is computed (saves the blocks above it when only the
            lower layers are needed). ``output`` is None then.
        """
        calls: list[BlockCall] = []
        hidden: list[torch.Tensor] = []

        class _Stop(Exception):
            pass

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if args and torch.is_tensor(args[0]):
                pos: int | str = 0
                h = args[0]
            else:
                name = next((n for n in HIDDEN_KWARG_NAMES if torch.is_tensor(kwargs.get(n))), None)
                if name is None:
                    raise TypeError(f"cannot find the hidden state among the arguments of {type(module).__name__}")
                pos, h = name, kwargs[name]
            if not hidden:
                hidden.append(h)
            rng = _get_rng_state(h.device) if record_rng else None
            calls.append(BlockCall(module, tuple(args), dict(kwargs), pos, rng))

        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            hidden.append(_first_tensor(output))
            if stop_at is not None and len(hidden) > stop_at:
                raise _Stop

        output = None
        with self.hooks(pre, post):
            try:
                output = self.model(**self._model_kwargs(inputs))
            except _Stop:
                pass
        if stop_at is None and len(calls) != self.n_layers:
            raise RuntimeError(
                f"{type(self.model).__name__} made {len(calls)} block calls, expected n_layers={self.n_layers}. "
                "Pass n_layers= or blocks= to ModelAdapter explicitly."
            )
        return Capture(hidden=hidden, calls=calls, mask=self.token_mask(inputs, hidden[0]), output=output,
                       rng_after=_get_rng_state(hidden[0].device) if record_rng else None)

    # ------------------------------------------------------------------ replay
    def replay(self, capture: Capture, hidden: torch.Tensor, *, start: int, stop: int | None = None,
               expand: int = 1, same_dropout: bool = False) -> list[torch.Tensor]:
        """Run blocks ``start+1..stop`` from ``hidden`` (a layer-``start`` state) with the recorded arguments.

        Parameters
        ----------
        capture : Capture
            From :meth:`capture` on the same inputs.
        hidden : Tensor (expand * batch, seq, hidden)
            The state to start from (e.g. ``capture.hidden[start]`` plus noise). With ``expand > 1`` it holds
            ``expand`` copies of the batch, draw-major.
        start, stop : int
            Replay layers ``start+1`` to ``stop`` (default: the last layer).
        expand : int
            Number of stacked copies of the batch in ``hidden`` (batched noise draws).
        same_dropout : bool
            Restore the RNG state recorded before each block's clean call so dropout masks match the clean pass
            (requires ``capture(record_rng=True)``); the RNG state after the clean pass is restored at the end.

        Returns
        -------
        list of Tensor
            ``out[i]`` is layer ``start + 1 + i``.
        """
        stop = capture.n_layers if stop is None else stop
        outputs: list[torch.Tensor] = []
        h = hidden
        batch = capture.batch_size
        for call in capture.calls[start:stop]:
            if same_dropout and call.rng_state is not None:
                _set_rng_state(call.rng_state, h.device)
            h = call.call(h, expand=expand, batch_size=batch)
            outputs.append(h)
        if same_dropout and capture.rng_after is not None:
            _set_rng_state(capture.rng_after, hidden.device)
        return outputs

    def hidden_states(self, inputs: Mapping[str, Any]) -> list[torch.Tensor]:
        """Clean hidden states ``h_0..h_L`` (no gradient); a convenience over :meth:`capture`."""
        with torch.no_grad():
            return self.capture(inputs).hidden

    def forward_with_injection(self, inputs: Mapping[str, Any], layer: int,
                               perturb: Callable[[torch.Tensor], torch.Tensor]) -> Capture:
        """Run the *whole model* with ``perturb`` applied to layer ``layer``'s output, recording every layer.

        This is the slow reference path (re-runs every layer); :meth:`replay` is the fast one. Tests use this to
        check that the replay equals the real model.
        """
        self.check_layer(layer, name="layer")
        hidden: list[torch.Tensor] = []
        state = {"first": True}

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
            if not state["first"]:
                return None
            state["first"] = False
            h = args[0] if args and torch.is_tensor(args[0]) else next(
                kwargs[n] for n in HIDDEN_KWARG_NAMES if torch.is_tensor(kwargs.get(n)))
            if layer == 0:
                h = perturb(h)
            hidden.append(h)
            if args and torch.is_tensor(args[0]):
                return (h, *args[1:]), kwargs
            name = next(n for n in HIDDEN_KWARG_NAMES if torch.is_tensor(kwargs.get(n)))
            return args, {**kwargs, name: h}

        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            h = _first_tensor(output)
            if len(hidden) == layer:
                h_new = perturb(h)
                hidden.append(h_new)
                if torch.is_tensor(output):
                    return h_new
                return (h_new, *output[1:])
            hidden.append(h)
            return None

        with self.hooks(pre, post):
            output = self.model(**self._model_kwargs(inputs))
        return Capture(hidden=hidden, calls=[], mask=self.token_mask(inputs, hidden[0]), output=output)


def _get_rng_state(device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)

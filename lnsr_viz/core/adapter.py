"""The model adapter: one addressable view of any Hugging Face transformer's block stack.

A transformer is read as ``h_0 = embed(x)`` followed by ``h_l = block_l(h_{l-1}, ...)`` for ``l = 1..L``.
The adapter finds the ordered block stack, records during a clean forward pass the *exact* arguments the
model itself passes to every block (attention masks in the model's own 4-D form, position ids, relative position
tensors, ALiBi biases, ...), and can then replay blocks ``k+1..L`` from any hidden state ``h_k``. Recording the real
call arguments (forward pre-hooks with kwargs) instead of rebuilding masks by hand keeps the replay exact across
architectures and transformers versions.

What the adapter reads and what it refuses (``describe()`` says what it chose for a given model):

* **Which stack.** A known path per family (``SUPPORTED_FAMILIES``), else, for an encoder-decoder model, the
  largest stack *inside the encoder* (the stack that carries the input; the decoder is never probed), else the
  largest stack of same-typed modules. Stacks nested as lists of lists with pooling between them (Funnel) and
  reversible two-stream blocks (Reformer) are refused at once, since no ``blocks=`` choice can make them one
  per-token stack.
* **Which layout.** Hidden states ``(batch, seq, dim)`` or ``(seq, batch, dim)`` (XLNet, torch's
  ``nn.TransformerEncoderLayer(batch_first=False)``), detected on the first block call against the inputs' shape;
  :class:`Capture` always holds them as ``(batch, seq, dim)``.
* **Internal padding.** Models that pad the sequence to a multiple of a window or block size inside their forward
  (Longformer, BigBird block-sparse) are read at the padded length: the token mask is extended with padding, so the
  added positions are never perturbed or counted.
* **Batched noise draws.** Every argument whose leading dimension is the batch, or batch x heads (BLOOM's ALiBi
  bias), is repeated for the stacked draws; where the layout of an argument cannot be told apart (seq-first models,
  a batch size equal to the sequence length or to a head count), the block is called once per draw instead, which
  is always exact.
* **Blocks that take query, key and value separately** are supported when the model feeds the same hidden state
  to all of them (every alias is replaced on replay).

Layer names follow one scheme (see ``docs/architecture.md``): layer 0 is ``embed`` (the hidden state entering the
first block, after any embedding projection), layer ``l >= 1`` is ``blocks.{l-1}``. The top layer ``L`` is the last
block's output, *before* any final norm (decoder-only models' ``norm`` / ``ln_f``, T5's encoder
``final_layer_norm``); ``describe()["top_layer"]`` says which for a given model.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["ModelAdapter", "Capture", "BlockCall", "AdapterError", "SUPPORTED_FAMILIES", "LAYOUTS", "layer_name"]

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
    "longformer": "encoder.layer",
    "big_bird": "encoder.layer",
    "distilbert": "transformer.layer",
    "albert": "encoder.albert_layer_groups",
    "xlnet": "layer",
    "gpt2": "h",
    "gpt_neo": "h",
    "gptj": "h",
    "bloom": "h",
    "falcon": "h",
    "mpt": "blocks",
    "gpt_neox": "layers",
    "opt": "decoder.layers",
    "llama": "layers",
    "mistral": "layers",
    "qwen2": "layers",
    "gemma": "layers",
    "t5": "encoder.block",
    "bart": "encoder.layers",
    "mbart": "encoder.layers",
    "pegasus": "encoder.layers",
    "marian": "encoder.layers",
}
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(sorted(_BLOCK_PATHS))
HIDDEN_KWARG_NAMES = ("hidden_states", "hidden_state", "x", "inputs_embeds", "src", "output_h")
LAYOUTS = ("batch_first", "seq_first")
_DECODER_TYPES = frozenset({"gpt2", "gpt_neo", "gptj", "bloom", "falcon", "mpt", "gpt_neox", "opt", "llama",
                            "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi", "phi3", "ctrl", "mixtral"})
_HEAD_ATTRS = ("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
               "num_key_value_heads")

_NO_ESCAPE = "blocks= cannot help with this model"
# Families whose stacks cannot be read as one per-token block stack, whatever blocks= says.
_REFUSED: dict[str, str] = {
    "funnel": (
        "Funnel nests its blocks as a list of lists (encoder.blocks) and pools the sequence between the groups, "
        "and its blocks take query, key and value separately with a pooled query: its layers do not share one "
        f"token axis, so a per-token noise profile cannot be replayed. {_NO_ESCAPE}; use a model with one flat "
        "stack of blocks (BERT, RoBERTa, DeBERTa-v2, ...)."
    ),
    "reformer": (
        "Reformer's blocks are reversible: each carries two streams (prev_attn_output and hidden_states) instead of "
        f"one hidden state per layer, so noise cannot be injected into one layer and replayed. {_NO_ESCAPE}; use a "
        "model whose blocks pass one hidden state (e.g. Longformer or BigBird for long inputs)."
    ),
}


class AdapterError(ValueError):
    """The adapter cannot read or replay this model; the message says what was found and what to do.

    A ``ValueError`` so that the command line turns it into one ``error:`` line.
    """


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
    raise AdapterError(f"cannot find the hidden state in a block output of type {type(output).__name__}: the "
                       "adapter reads blocks that return a tensor, or a tuple whose first element is the hidden state.")


def _get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _find_hidden(module: nn.Module, args: tuple, kwargs: dict) -> tuple[int | str, torch.Tensor]:
    """Where a block call carries its hidden state: positional 0, or a kwarg named like one."""
    if args and torch.is_tensor(args[0]):
        return 0, args[0]
    name = next((n for n in HIDDEN_KWARG_NAMES if torch.is_tensor(kwargs.get(n))), None)
    if name is None:
        raise AdapterError(
            f"cannot find the hidden state among the arguments of {type(module).__name__}: the adapter expects it as "
            f"the first positional argument or as one of {', '.join(HIDDEN_KWARG_NAMES)}. Check which stack was "
            "chosen (ModelAdapter(model).describe()) and pass blocks= with the stack that carries the tokens.")
    return name, kwargs[name]


def _aliases(h: torch.Tensor, hidden_pos: int | str, args: tuple, kwargs: dict) -> tuple[int | str, ...]:
    """Other arguments that are the very same tensor as the hidden state (query, key and value passed apart)."""
    found: list[int | str] = [i for i, a in enumerate(args) if a is h and i != hidden_pos]
    found += [k for k, v in kwargs.items() if v is h and k != hidden_pos]
    return tuple(found)


def _to_batch_first(h: torch.Tensor, layout: str) -> torch.Tensor:
    return h.transpose(0, 1) if layout == "seq_first" else h


def _expand(value: Any, times: int, batch_size: int | None, heads: Sequence[int] = ()) -> Any:
    """Repeat a batch-leading tensor ``times`` along dim 0 (draw-major: [d0 b0..bB, d1 b0..bB, ...]).

    Batch-leading means a leading dimension of ``batch_size`` or of ``batch_size x heads`` (batch-major, as BLOOM's
    ALiBi bias): repeating dim 0 keeps the draw-major order in both cases. Other tensors are shared by every draw.
    """
    if torch.is_tensor(value) and value.dim() >= 1 and batch_size is not None:
        lead = value.shape[0]
        if lead == batch_size or (value.dim() >= 2 and any(lead == batch_size * h for h in heads if h > 1)):
            return value.repeat(times, *([1] * (value.dim() - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_expand(v, times, batch_size, heads) for v in value)
    if isinstance(value, list):
        return [_expand(v, times, batch_size, heads) for v in value]
    return value


def _take(value: Any, rows: torch.Tensor, batch_size: int, heads: Sequence[int] = ()) -> Any:
    """Select the batch rows ``rows`` of a batch-leading tensor (see :func:`_expand`); others are shared."""
    if torch.is_tensor(value) and value.dim() >= 1:
        lead = value.shape[0]
        if lead == batch_size:
            return value.index_select(0, rows.to(value.device))
        per = next((h for h in heads if h > 1 and lead == batch_size * h), None)
        if value.dim() >= 2 and per is not None:  # batch-major (batch x heads) leading dimension
            grouped = value.reshape(batch_size, per, *value.shape[1:])
            return grouped.index_select(0, rows.to(value.device)).reshape(-1, *value.shape[1:])
        return value
    if isinstance(value, tuple):
        return tuple(_take(v, rows, batch_size, heads) for v in value)
    if isinstance(value, list):
        return [_take(v, rows, batch_size, heads) for v in value]
    return value


def _rows_ambiguous(layout: str, batch_size: int, seq_len: int, heads: Sequence[int]) -> bool:
    """Whether batch-leading arguments cannot be told apart from others by their shape (see BlockCall.call)."""
    return layout == "seq_first" or batch_size == seq_len or batch_size in heads


@dataclass
class BlockCall:
    """One recorded call of a block: the module, its positional and keyword arguments, and where h sits.

    ``aliases`` are the other arguments that received the same hidden state (query / key / value passed apart);
    ``layout`` is ``'batch_first'`` or ``'seq_first'``: how the block itself sees its hidden state.
    """

    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    hidden_pos: int | str  # index into args, or the kwarg name holding the hidden state
    rng_state: torch.Tensor | None = None
    aliases: tuple[int | str, ...] = ()
    layout: str = "batch_first"

    def _run(self, hidden: torch.Tensor, args: list[Any], kwargs: dict[str, Any]) -> torch.Tensor:
        native = hidden.transpose(0, 1) if self.layout == "seq_first" else hidden
        for pos in (self.hidden_pos, *self.aliases):
            if isinstance(pos, int):
                args[pos] = native
            else:
                kwargs[pos] = native
        return _to_batch_first(_first_tensor(self.module(*args, **kwargs)), self.layout)

    def call(self, hidden: torch.Tensor, *, expand: int = 1, batch_size: int | None = None,
             heads: Sequence[int] = (), restore: Callable[[], None] | None = None,
             rows: torch.Tensor | None = None) -> torch.Tensor:
        """Run the block on ``hidden`` (batch-first, ``expand`` stacked copies of the batch) with the recorded args.

        With ``expand > 1`` the batch-leading arguments are repeated (see :func:`_expand`); where an argument's
        layout is ambiguous (seq-first blocks, a batch size equal to the sequence length or to a head count) or the
        repeated call fails, the block runs once per copy with the recorded arguments instead (always exact).
        ``restore`` is called before each per-copy call (the replay's dropout-mask restore).

        With ``rows`` (indices into the recorded batch of ``batch_size``), ``hidden`` holds those rows only and the
        batch-leading arguments are indexed alike; where that is ambiguous or fails, :class:`AdapterError` is raised
        (the caller can replay the whole batch instead).
        """
        if rows is not None:
            if batch_size is None or _rows_ambiguous(self.layout, batch_size, hidden.shape[1], heads):
                raise AdapterError("cannot select batch rows of this block's arguments (seq-first layout, or a batch "
                                   "size equal to the sequence length or a head count)")
            args = [_take(a, rows, batch_size, heads) for a in self.args]
            kwargs = {k: _take(v, rows, batch_size, heads) for k, v in self.kwargs.items()}
            try:
                out = self._run(hidden, args, kwargs)
            except (RuntimeError, IndexError, ValueError, AssertionError) as exc:
                raise AdapterError(f"the block refused a row selection of its arguments ({exc})") from exc
            if out.shape[0] != hidden.shape[0]:
                raise AdapterError("the block returned another number of rows than it was given")
            return out
        if expand <= 1 or batch_size is None:
            return self._run(hidden, list(self.args), dict(self.kwargs))
        ambiguous = (self.layout == "seq_first" or batch_size == hidden.shape[1] or batch_size in heads)
        if not ambiguous:
            args = [_expand(a, expand, batch_size, heads) for a in self.args]
            kwargs = {k: _expand(v, expand, batch_size, heads) for k, v in self.kwargs.items()}
            try:
                out = self._run(hidden, args, kwargs)
            except (RuntimeError, IndexError, ValueError, AssertionError):
                out = None
            if out is not None and out.shape[0] == hidden.shape[0]:
                return out
        outs = []
        for d in range(expand):
            if restore is not None:
                restore()
            outs.append(self._run(hidden[d * batch_size:(d + 1) * batch_size], list(self.args), dict(self.kwargs)))
        return torch.cat(outs, dim=0)


@dataclass
class Capture:
    """Everything a clean pass recorded: hidden states ``h_0..h_L``, the block calls, the token mask, the output.

    Attributes
    ----------
    hidden : list of Tensor, each (batch, seq, hidden)
        ``hidden[l]`` is layer ``l`` (0 = embedding output entering block 1), always batch-first (a seq-first model's
        states are transposed views) and at the length the blocks see (with any internal padding).
    calls : list of BlockCall
        ``calls[l-1]`` is the call that produced ``hidden[l]``.
    mask : Tensor (batch, seq), bool
        True for real tokens, False for padding (including positions the model padded internally).
    output : Any
        What the model's forward returned (logits, loss, ...).
    layout : {'batch_first', 'seq_first'}
        How the blocks themselves hold their hidden states.
    n_pad : int
        Positions the model appended internally (to a multiple of its attention window / block size).
    forked : list of Tensor or None
        With ``capture(fork=...)``: the extra rows' states at layers ``k+1..L`` (batch-first), computed in the same
        block calls as the clean rows; None when no fork ran (see :meth:`ModelAdapter.capture`).
    """

    hidden: list[torch.Tensor]
    calls: list[BlockCall]
    mask: torch.Tensor
    output: Any = None
    rng_after: torch.Tensor | None = field(default=None, repr=False)
    layout: str = "batch_first"
    n_pad: int = 0
    forked: list[torch.Tensor] | None = None

    @property
    def n_layers(self) -> int:
        return len(self.calls)

    @property
    def batch_size(self) -> int:
        return self.hidden[0].shape[0]


def _qualname(root: nn.Module, module: nn.Module) -> str | None:
    return next((name for name, m in root.named_modules() if m is module), None)


def _stacks(root: nn.Module, depth: int = 1) -> list[tuple[str, nn.ModuleList]]:
    """Non-empty ModuleLists of same-typed modules within ``depth`` dots of ``root``.

    A list of lists of blocks (Funnel's groups with pooling between them) is refused when it holds more blocks than
    the largest flat stack, since it would otherwise have been taken for the stack.
    """
    flat, nested = [], []
    for name, module in root.named_modules():
        if isinstance(module, nn.ModuleList) and name and name.count(".") <= depth and len(module) > 0:
            if all(isinstance(m, (nn.ModuleList, nn.Sequential)) for m in module):
                nested.append((name, sum(len(m) for m in module)))
            elif len({type(m) for m in module}) == 1:
                flat.append((name, module))
    largest = max((len(m) for _, m in flat), default=0)
    for name, size in nested:
        if size > largest:
            raise AdapterError(
                f"{type(root).__name__}.{name} is a list of lists of blocks (a nested stack, as in Funnel, which "
                "pools the sequence between groups): its layers do not share one token axis, so a per-token "
                f"noise profile cannot be replayed. {_NO_ESCAPE} unless one flat group of blocks is a meaningful "
                "stack on its own.")
    return flat


def _final_norm(root: nn.Module, stack_path: str, stop: str) -> str | None:
    """The first norm registered after the stack in its parent (or an ancestor up to ``stop``): the final norm.

    Norms named after embeddings, or registered right after an embedding (DeBERTa's relative-position norm), are
    not final norms.
    """
    path = stack_path
    while path and path != stop:
        parent_path, _, child = path.rpartition(".")
        parent = root.get_submodule(parent_path) if parent_path else root
        names = list(parent._modules)
        after = names[names.index(child) + 1:] if child in names else []
        prev: nn.Module | None = None
        for name in names:
            module = parent._modules[name]
            is_norm = module is not None and "Norm" in type(module).__name__ and "emb" not in name.lower()
            # registered after the stack (not right after an embedding), or named as a final norm (OPT registers
            # its final_layer_norm before its layers)
            if is_norm and ((name in after and not isinstance(prev, nn.Embedding))
                            or re.search(r"final|ln_f|norm_f|^norm$", name)):
                return f"{parent_path}.{name}" if parent_path else name
            prev = module
        path = parent_path
    return None


class ModelAdapter:
    """Read any Hugging Face transformer as embeddings + an ordered stack of blocks, and replay the blocks.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face ``PreTrainedModel`` (any head) or a plain module.
    blocks : nn.ModuleList, sequence of modules, or str, optional
        The block stack, or its dotted path inside ``model``. Needed only for architectures the adapter does not
        know (see ``SUPPORTED_FAMILIES``); :meth:`describe` says which stack was chosen otherwise.
    n_layers : int, optional
        How many block *calls* one forward pass makes. Defaults to ``config.num_hidden_layers`` (ALBERT calls one
        shared block that many times) or the number of blocks.
    layout : {'batch_first', 'seq_first'}, optional
        How the blocks hold their hidden states, ``(batch, seq, dim)`` or ``(seq, batch, dim)``. Default: detected
        on the first block call of each clean pass from the inputs' ``(batch, seq)`` shape (when batch equals the
        sequence length, the layout learned earlier, or batch-first).

    Raises
    ------
    AdapterError
        A model whose stack cannot be read as one per-token block stack (Funnel's nested, pooled stacks; Reformer's
        reversible two-stream blocks), or no stack found. Refused here, before any work.

    Examples
    --------
    >>> from lnsr_viz.testing import tiny_model
    >>> model, tok = tiny_model("bert")
    >>> adapter = ModelAdapter(model)
    >>> adapter.n_layers, adapter.layer_names[:2]
    (2, ['embed', 'blocks.0'])
    >>> adapter.describe()["stack"]
    'bert.encoder.layer'
    """

    def __init__(self, model: nn.Module, *, blocks: nn.Module | Sequence[nn.Module] | str | None = None,
                 n_layers: int | None = None, layout: Literal["batch_first", "seq_first"] | None = None) -> None:
        self.model = model
        inner = model.module if isinstance(getattr(model, "module", None), nn.Module) else model  # DDP / wrappers
        config = getattr(inner, "config", None)
        model_type = getattr(config, "model_type", None)
        self.family: str = model_type or type(inner).__name__
        if model_type in _REFUSED:
            raise AdapterError(f"{type(inner).__name__} (model_type={model_type!r}) is not supported: "
                               f"{_REFUSED[model_type]}")
        if layout is not None and layout not in LAYOUTS:
            raise AdapterError(f"layout must be one of {list(LAYOUTS)} or None (detect). Got {layout!r} instead.")
        self.kind: str = ("encoder-decoder" if getattr(config, "is_encoder_decoder", False)
                          else "decoder" if model_type in _DECODER_TYPES or getattr(config, "is_decoder", False)
                          else "encoder" if config is not None else "custom")
        self.blocks, self.stack_path = self._find_blocks(inner, blocks)
        if self.kind == "encoder" and "Decoder" in type(self.blocks[0]).__name__:  # decoder-only families not listed
            self.kind = "decoder"
        if n_layers is None:
            n_layers = getattr(config, "num_hidden_layers", None) if len(self.blocks) == 1 else None
            n_layers = n_layers or len(self.blocks)
        self.n_layers = int(n_layers)
        self._accepts_use_cache = "use_cache" in inspect.signature(inner.forward).parameters
        self._layout_forced = layout is not None
        static = "seq_first" if model_type == "xlnet" or all(
            isinstance(b, nn.TransformerEncoderLayer) and not b.self_attn.batch_first for b in self.blocks) else None
        self.layout: str = layout or static or "batch_first"
        self._layout_known = layout is not None or static is not None
        self._heads = tuple(sorted({int(v) for a in _HEAD_ATTRS if isinstance(v := getattr(config, a, None), int)
                                    and not isinstance(v, bool) and v > 1}))
        base = getattr(inner, "base_model", inner)
        base_path = _qualname(inner, base) or ""
        stop = base_path
        if self.kind == "encoder-decoder":
            stop = self.stack_path.rpartition(".")[0]
        self.final_norm: str | None = (_final_norm(inner, self.stack_path, stop)
                                       if self.stack_path and not self.stack_path.startswith("<") else None)

    # ------------------------------------------------------------------ discovery
    @staticmethod
    def _find_blocks(model: nn.Module, blocks: nn.Module | Sequence[nn.Module] | str | None
                     ) -> tuple[list[nn.Module], str]:
        if blocks is not None:
            path = blocks if isinstance(blocks, str) else None
            if isinstance(blocks, str):
                found = _get_submodule(model, blocks)
                if found is None:
                    raise AdapterError(f"blocks={blocks!r} is not a submodule of {type(model).__name__}.")
                blocks = found
            seq = list(blocks) if isinstance(blocks, (nn.ModuleList, list, tuple, nn.Sequential)) else [blocks]
            if not seq or not all(isinstance(b, nn.Module) for b in seq):
                raise AdapterError("blocks must be a non-empty sequence of nn.Module (or a dotted path to one).")
            if path is None:
                path = _qualname(model, blocks) if isinstance(blocks, nn.Module) else None
            if path is None:  # a list of modules: the ModuleList they are, in order, else a plain description
                first = _qualname(model, seq[0]) or ""
                parent = _get_submodule(model, first.rpartition(".")[0]) if "." in first else None
                if isinstance(parent, nn.ModuleList) and list(parent) == seq:
                    path = first.rpartition(".")[0]
                else:
                    path = f"<{len(seq)} given blocks from {first or type(seq[0]).__name__}>"
            return seq, path
        base = getattr(model, "base_model", model)
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        prefix = _qualname(model, base) or ""
        prefix = f"{prefix}." if prefix else ""
        path = _BLOCK_PATHS.get(model_type or "")
        if path is not None:
            found = _get_submodule(base, path)
            if isinstance(found, nn.ModuleList) and len(found) > 0:
                return list(found), prefix + path
        # Encoder-decoder: the stack that carries the input is in the encoder, never the (maybe deeper) decoder.
        encoder = None
        if getattr(config, "is_encoder_decoder", False) or isinstance(getattr(base, "encoder", None), nn.Module):
            get_encoder = getattr(base, "get_encoder", None)
            encoder = get_encoder() if callable(get_encoder) else getattr(base, "encoder", None)
        if isinstance(encoder, nn.Module):
            stacks = _stacks(encoder, depth=1)
            if stacks:
                name, best = max(stacks, key=lambda item: len(item[1]))
                return list(best), f"{_qualname(model, encoder)}.{name}"
            if getattr(config, "is_encoder_decoder", False):
                raise AdapterError(
                    f"{type(model).__name__} is an encoder-decoder model, but no block stack was found in its encoder "
                    f"({type(encoder).__name__}). Pass the encoder's blocks, e.g. blocks='encoder.layers'.")
        # Fallback: the largest ModuleList of same-typed modules within two levels of the base model.
        stacks = _stacks(base, depth=1)
        if stacks:
            name, best = max(stacks, key=lambda item: len(item[1]))
            return list(best), prefix + name
        raise AdapterError(
            f"Cannot find the transformer block stack of {type(model).__name__} (model_type={model_type!r}). "
            f"Supported families: {', '.join(SUPPORTED_FAMILIES)}. For another architecture pass the blocks "
            "explicitly, e.g. ModelAdapter(model, blocks='encoder.layer') or blocks=model.encoder.layer."
        )

    @property
    def layer_names(self) -> list[str]:
        """Names of layers 0..L: ``embed``, ``blocks.0``, ..., ``blocks.{L-1}``."""
        return [layer_name(layer) for layer in range(self.n_layers + 1)]

    @property
    def top_layer(self) -> str:
        """What the top layer ``L`` is for this model, in words (the last block's output, before any final norm)."""
        top = f"layer {self.n_layers} ({layer_name(self.n_layers)}) is the "
        top += "encoder's last block output" if self.kind == "encoder-decoder" else "last block's output"
        if self.final_norm is not None:
            top += f", before the final norm {self.final_norm} (the head reads the normed state)"
        else:
            top += " (no final norm follows the stack)"
        if self.kind == "encoder-decoder":
            top += "; the decoder is not probed"
        return top

    def describe(self) -> dict[str, Any]:
        """Which stack was chosen and how it is read: family, kind, stack path, blocks, layout, the top layer.

        Returns
        -------
        dict
            ``family`` (``config.model_type`` or the class name), ``kind`` (encoder, decoder, encoder-decoder or
            custom), ``stack`` (dotted path of the block stack inside the model), ``n_blocks`` (distinct modules),
            ``n_layers`` (block calls per pass), ``layout`` (``batch_first`` / ``seq_first``), ``layout_checked``
            (False until a clean pass or the family confirmed it), ``final_norm`` (dotted path or None) and
            ``top_layer`` (a sentence).
        """
        return {"family": self.family, "kind": self.kind, "stack": self.stack_path,
                "n_blocks": len(dict.fromkeys(self.blocks)), "n_layers": self.n_layers, "layout": self.layout,
                "layout_checked": self._layout_known, "final_norm": self.final_norm, "top_layer": self.top_layer}

    def summary(self) -> str:
        """:meth:`describe` as one line, as the command line prints it."""
        d = self.describe()
        shape = "(batch, seq, dim)" if d["layout"] == "batch_first" else "(seq, batch, dim)"
        return (f"{d['family']} ({d['kind']}): {d['n_layers']} layers of {d['n_blocks']} block(s) at {d['stack']}, "
                f"hidden states {shape}; top layer: {d['top_layer']}")

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
        """Real-token mask (batch, seq) from ``attention_mask``; all True when the inputs carry none.

        ``hidden`` is batch-first; when it is longer than the inputs (the model padded internally) the extra
        positions are padding.
        """
        mask = inputs.get("attention_mask")
        if mask is None:
            shape = _input_shape(inputs) or tuple(hidden.shape[:2])
            mask = torch.ones(shape, dtype=torch.bool, device=hidden.device)
        mask = mask.to(device=hidden.device).bool()
        extra = hidden.shape[1] - mask.shape[1]
        if extra > 0:
            mask = torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)
        return mask

    def _resolve_layout(self, h: torch.Tensor, inputs: Mapping[str, Any]) -> str:
        """The layout of the first block's hidden state ``h``, checked against the inputs' (batch, seq) shape."""
        where = f"{type(self.model).__name__}: the first block ({type(self.blocks[0]).__name__})"
        if h.dim() != 3:
            raise AdapterError(f"{where} receives a hidden state of shape {tuple(h.shape)}; the adapter reads 3-D "
                               "hidden states, (batch, seq, dim) or (seq, batch, dim).")
        shape = _input_shape(inputs)
        if shape is None:
            return self.layout
        batch, seq = shape
        first = h.shape[0] == batch and h.shape[1] >= seq
        second = h.shape[1] == batch and h.shape[0] >= seq
        if first and second:  # batch == seq length: keep the layout forced, known or assumed
            return self.layout
        if not (first or second):
            raise AdapterError(
                f"{where} receives hidden states of shape {tuple(h.shape)}, but the inputs are (batch, seq) = "
                f"({batch}, {seq}): that is neither (batch, seq, dim) nor (seq, batch, dim), even allowing for "
                f"padding to a longer length. The stack chosen was {self.stack_path}; if it does not carry the "
                "input tokens, pass blocks= with the one that does.")
        found = "batch_first" if first else "seq_first"
        if self._layout_forced and found != self.layout:
            raise AdapterError(f"{where} receives hidden states of shape {tuple(h.shape)} for inputs of shape "
                               f"({batch}, {seq}): that is {found}, but layout={self.layout!r} was given.")
        self.layout, self._layout_known = found, True
        return found

    # ------------------------------------------------------------------ clean pass
    def capture(self, inputs: Mapping[str, Any], *, record_rng: bool = False, stop_at: int | None = None,
                fork: tuple[int, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] | None = None
                ) -> Capture:
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
        fork : (k, make_rows), optional
            Run blocks ``k+1..L`` of the model's own forward on a larger batch: ``make_rows(h_k)`` (``h_k`` the
            clean batch-first layer-k state) returns ``(extra, rows)``, ``extra`` (n, seq, dim) states to carry
            through the same block calls and ``rows`` (n,) the batch row each belongs to (its attention mask and
            other batch-leading arguments are indexed by it). The clean rows come first in every call; the model's
            head sees the clean rows only, so ``output`` is what the model returns without the fork, and
            ``Capture.forked`` holds the extra rows' layers ``k+1..L``. Where the batch-leading arguments are
            ambiguous (seq-first blocks, a batch size equal to the sequence length or a head count) no fork runs,
            ``make_rows`` is not called and ``forked`` is None. The recorded calls keep the clean arguments, so
            :meth:`replay` works as after a plain capture. Dropout draws its masks for the larger batch (the clean
            rows' masks come from the same distribution but not the same draws as without the fork).

        Raises
        ------
        AdapterError
            The blocks' hidden states do not match the inputs in any layout, change shape between blocks (pooling),
            or the model made another number of block calls than ``n_layers``.
        """
        if fork is not None and stop_at is not None:
            raise ValueError("capture(fork=...) runs every block; it cannot be combined with stop_at.")
        calls: list[BlockCall] = []
        hidden: list[torch.Tensor] = []
        state: dict[str, Any] = {}
        forked: list[torch.Tensor] = []
        fork_at = None if fork is None else int(fork[0])

        class _Stop(Exception):
            pass

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
            pos, h = _find_hidden(module, args, kwargs)
            if not hidden:
                state["layout"] = self._resolve_layout(h, inputs)
                state["shape"] = tuple(h.shape)
                hidden.append(_to_batch_first(h, state["layout"]))
            elif tuple(h.shape) != state.get("fork_shape", state["shape"]):
                raise AdapterError(
                    f"block call {len(calls)} ({type(module).__name__}) receives hidden states of shape "
                    f"{tuple(h.shape)}, the first block {state['shape']}: the sequence changes length between blocks "
                    f"(pooling), so the layers do not share one token axis and cannot be replayed. {_NO_ESCAPE}.")
            rng = _get_rng_state(h.device) if record_rng else None
            aliases = _aliases(h, pos, args, kwargs)
            calls.append(BlockCall(module, tuple(args), dict(kwargs), pos, rng, aliases, state["layout"]))
            j = len(calls) - 1  # this call makes layer j + 1
            if fork_at is None or j < fork_at:
                return None
            batch = state["shape"][0]
            if j == fork_at:
                if _rows_ambiguous(state["layout"], batch, state["shape"][1], self._heads):
                    state["no_fork"] = True
                    return None
                extra, rows = fork[1](hidden[fork_at])
                state["rows"] = torch.cat([torch.arange(batch, device=rows.device), rows.to(torch.long)])
                h = torch.cat([h, extra.to(h.dtype)], dim=0)
                state["fork_shape"] = tuple(h.shape)
            elif state.get("no_fork"):
                return None
            new_args = [_take(a, state["rows"], batch, self._heads) for a in args]
            new_kwargs = {k: _take(v, state["rows"], batch, self._heads) for k, v in kwargs.items()}
            for p in (pos, *aliases):
                if isinstance(p, int):
                    new_args[p] = h
                else:
                    new_kwargs[p] = h
            return tuple(new_args), new_kwargs

        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            out = _first_tensor(output)
            forking = "fork_shape" in state
            if tuple(out.shape) != state.get("fork_shape", state["shape"]):
                raise AdapterError(
                    f"block call {len(calls) - 1} ({type(module).__name__}) returns a state of shape "
                    f"{tuple(out.shape)} from one of shape {state['shape']}: blocks that change the sequence length "
                    f"or the width cannot be replayed. {_NO_ESCAPE}.")
            if not forking:
                hidden.append(_to_batch_first(out, state["layout"]))
                if stop_at is not None and len(hidden) > stop_at:
                    raise _Stop
                return None
            batch = state["shape"][0]
            hidden.append(out[:batch])
            forked.append(out[batch:])
            if len(calls) < self.n_layers:
                return None  # the larger batch flows on into the next block
            state.pop("fork_shape")  # the last block: the model's head sees the clean rows only
            if torch.is_tensor(output):
                return out[:batch]
            if isinstance(output, tuple):
                return (out[:batch], *output[1:])
            if isinstance(output, list):
                return [out[:batch], *output[1:]]
            raise AdapterError(f"{type(module).__name__} returns a {type(output).__name__}: a forked capture needs "
                               "blocks that return a tensor or a tuple.")

        output = None
        with self.hooks(pre, post):
            try:
                output = self.model(**self._model_kwargs(inputs))
            except _Stop:
                pass
        if not hidden:
            raise AdapterError(
                f"{type(self.model).__name__} made no call to the blocks at {self.stack_path}: that stack is not "
                "used by its forward. Pass blocks= with the stack that the forward runs.")
        if stop_at is None and len(calls) != self.n_layers:
            raise AdapterError(
                f"{type(self.model).__name__} made {len(calls)} block calls, expected n_layers={self.n_layers}. "
                "Pass n_layers= or blocks= to ModelAdapter explicitly."
            )
        mask = self.token_mask(inputs, hidden[0])
        seq = (_input_shape(inputs) or tuple(hidden[0].shape[:2]))[1]
        return Capture(hidden=hidden, calls=calls, mask=mask, output=output,
                       rng_after=_get_rng_state(hidden[0].device) if record_rng else None,
                       layout=state["layout"], n_pad=int(hidden[0].shape[1] - seq),
                       forked=forked if "rows" in state else None)

    # ------------------------------------------------------------------ replay
    def replay(self, capture: Capture, hidden: torch.Tensor, *, start: int, stop: int | None = None,
               expand: int = 1, same_dropout: bool = False, rows: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Run blocks ``start+1..stop`` from ``hidden`` (a layer-``start`` state) with the recorded arguments.

        Parameters
        ----------
        capture : Capture
            From :meth:`capture` on the same inputs.
        hidden : Tensor (expand * batch, seq, hidden)
            The state to start from (e.g. ``capture.hidden[start]`` plus noise), batch-first whatever the model's
            layout. With ``expand > 1`` it holds ``expand`` copies of the batch, draw-major.
        start, stop : int
            Replay layers ``start+1`` to ``stop`` (default: the last layer).
        expand : int
            Number of stacked copies of the batch in ``hidden`` (batched noise draws).
        same_dropout : bool
            Restore the RNG state recorded before each block's clean call so dropout masks match the clean pass
            (requires ``capture(record_rng=True)``); the RNG state after the clean pass is restored at the end.
        rows : Tensor (n,), optional
            ``hidden`` holds only these rows of the batch (a sub-batch); the recorded batch-leading arguments are
            indexed alike. Raises :class:`AdapterError` where they cannot be told apart by shape (see
            :meth:`BlockCall.call`); replay the whole batch then.

        Returns
        -------
        list of Tensor
            ``out[i]`` is layer ``start + 1 + i``, batch-first.
        """
        stop = capture.n_layers if stop is None else stop
        outputs: list[torch.Tensor] = []
        h = hidden
        batch = capture.batch_size
        for call in capture.calls[start:stop]:
            restore = None
            if same_dropout and call.rng_state is not None:
                def restore(state: torch.Tensor = call.rng_state, device: torch.device = h.device) -> None:
                    _set_rng_state(state, device)

                restore()
            h = call.call(h, expand=expand, batch_size=batch, heads=self._heads, restore=restore, rows=rows)
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
        check that the replay equals the real model. ``perturb`` takes and returns batch-first states.
        """
        self.check_layer(layer, name="layer")
        hidden: list[torch.Tensor] = []
        state: dict[str, Any] = {"first": True}

        def apply(h: torch.Tensor) -> torch.Tensor:
            return _to_batch_first(perturb(_to_batch_first(h, state["layout"])), state["layout"])

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
            if not state["first"]:
                return None
            state["first"] = False
            pos, h = _find_hidden(module, args, kwargs)
            state["layout"] = self._resolve_layout(h, inputs)
            aliases = _aliases(h, pos, args, kwargs)
            if layer == 0:
                h = apply(h)
            hidden.append(_to_batch_first(h, state["layout"]))
            args, kwargs = list(args), dict(kwargs)
            for p in (pos, *aliases):
                if isinstance(p, int):
                    args[p] = h
                else:
                    kwargs[p] = h
            return tuple(args), kwargs

        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            h = _first_tensor(output)
            if len(hidden) == layer:
                h_new = apply(h)
                hidden.append(_to_batch_first(h_new, state["layout"]))
                if torch.is_tensor(output):
                    return h_new
                return (h_new, *output[1:])
            hidden.append(_to_batch_first(h, state["layout"]))
            return None

        with self.hooks(pre, post):
            output = self.model(**self._model_kwargs(inputs))
        return Capture(hidden=hidden, calls=[], mask=self.token_mask(inputs, hidden[0]), output=output,
                       layout=state["layout"])


def _input_shape(inputs: Mapping[str, Any]) -> tuple[int, int] | None:
    """(batch, seq) of the inputs: from ``input_ids``, ``inputs_embeds`` or ``attention_mask``."""
    for key in ("input_ids", "inputs_embeds", "attention_mask"):
        value = inputs.get(key)
        if torch.is_tensor(value) and value.dim() >= 2:
            return int(value.shape[0]), int(value.shape[1])
    return None


def _get_rng_state(device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)

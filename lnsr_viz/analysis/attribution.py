"""Token attributions under two models side by side, and how stable they are under injected noise (captum 0.9).

* :func:`token_attributions`: Integrated Gradients (Sundararajan et al., 2017) through captum's
  ``LayerIntegratedGradients`` on the input (word) embedding layer: the path runs from a baseline sentence, in which
  every ordinary token is replaced by the padding token (special tokens such as ``[CLS]``/``[SEP]`` are kept), to the
  sentence, and each token's attribution is the sum over embedding dimensions. By IG's completeness axiom the
  attributions add up to ``F(sentence) - F(baseline)``, where ``F`` is the target class's probability (or logit);
  captum's convergence delta, the error of that sum, is reported with every row as a self-check.
* :func:`attribution_stability`: the same attributions after the *same* noise is added to the word embeddings of
  each model (the project's injectors, :mod:`lnsr_viz.core.noise`: by default Gaussian with 5% of each token's norm, the
  paper's Figure 1 setting, drawn from one seeded generator so that both models get the same draws). Reported per
  model and sentence: captum's ``sensitivity_max`` (the largest ``||A(x+e) - A(x)|| / ||A(x)||`` over the draws), the
  mean of that ratio, the mean Spearman rank correlation between clean and noisy token attributions, and how often
  the most important token stays the most important. IG on the word embeddings given as ``inputs_embeds`` is the
  same function as ``LayerIntegratedGradients`` on the embedding layer, so the noisy and clean attributions are
  comparable.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.inputs import eval_mode, named_models, texts_of, tokenize
from ..core.noise import NOISE_TYPES, make_noise
from ..utils.extras import require
from ..utils.validation import check_choice, check_positive_int

__all__ = ["ATTRIBUTION_COLUMNS", "STABILITY_COLUMNS", "token_attributions", "attribution_stability"]

#: Columns of :func:`token_attributions`.
ATTRIBUTION_COLUMNS = ("model", "position", "token", "token_id", "attribution", "attribution_norm", "target",
                       "target_name", "target_prob", "predicted", "output", "convergence_delta", "text")
#: Columns of :func:`attribution_stability`.
STABILITY_COLUMNS = ("model", "sentence", "text", "metric", "value", "target", "noise", "scale", "scale_kind",
                     "n_perturb", "n_steps")

Output = Literal["probability", "logit"]


def _sentences(sentences: Any, owner: str) -> list[str]:
    """One sentence (a str) or the texts of a sequence / dataset (:func:`lnsr_viz.core.inputs.texts_of`)."""
    return [sentences] if isinstance(sentences, str) else texts_of(sentences, owner=owner)


class _Encoded:
    """One tokenized sentence: ids, the baseline ids, the extra forward arguments, and the tokens."""

    def __init__(self, model: nn.Module, tokenizer: Any, text: str, max_length: int, baseline: str) -> None:
        enc = tokenize(tokenizer, [text], max_length=max_length, model=model)
        self.input_ids = enc["input_ids"]
        self.attention_mask = enc.get("attention_mask", torch.ones_like(self.input_ids))
        self.token_type_ids = enc.get("token_type_ids")
        ids = self.input_ids[0].tolist()
        self.tokens = tokenizer.convert_ids_to_tokens(ids)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        fill = {"pad": tokenizer.pad_token_id, "unk": tokenizer.unk_token_id,
                "mask": getattr(tokenizer, "mask_token_id", None)}[baseline]
        if fill is None:
            raise ValueError(f"baseline={baseline!r} needs the tokenizer to have a {baseline} token; it has none. "
                             "Use baseline='pad' or 'unk'.")
        base = [i if i in special and i != fill else fill for i in ids]
        self.special = torch.tensor([[i in special for i in ids]], device=self.input_ids.device)
        self.baseline_ids = torch.tensor([base], dtype=self.input_ids.dtype, device=self.input_ids.device)

    def extra(self) -> tuple[torch.Tensor, ...]:
        return (self.attention_mask,) if self.token_type_ids is None else (self.attention_mask, self.token_type_ids)


def _forward(model: nn.Module, output: Output, *, embeds: bool) -> Any:
    """``f(x, attention_mask[, token_type_ids]) -> (batch, n_classes)`` for captum (ids, or word embeddings)."""
    key = "inputs_embeds" if embeds else "input_ids"

    def f(x: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {key: x, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = model(**kwargs)
        logits = out["logits"] if isinstance(out, dict) else out.logits
        return torch.softmax(logits, dim=-1) if output == "probability" else logits

    return f


def _embedding_layer(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_input_embeddings", None)
    layer = get() if callable(get) else None
    if layer is None:
        raise ValueError(f"{type(model).__name__} has no input embedding layer (get_input_embeddings()); token "
                         "attributions need one.")
    return layer


def _check_embeds_supported(model: nn.Module) -> None:
    if "inputs_embeds" not in inspect.signature(model.forward).parameters:
        raise ValueError(f"{type(model).__name__}.forward takes no inputs_embeds, so noise cannot be added to its "
                         "word embeddings; attribution stability needs a Hugging Face model that accepts them.")


def _predict(model: nn.Module, enc: _Encoded) -> torch.Tensor:
    """Class probabilities of the clean sentence, shape (n_classes,)."""
    with torch.no_grad():
        return _forward(model, "probability", embeds=False)(enc.input_ids, *enc.extra())[0]


def _target_for(target: int | None, probs: torch.Tensor, name: str) -> int:
    n_classes = probs.shape[-1]
    if target is None:
        return int(probs.argmax())
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < n_classes:
        raise ValueError(f"target={target!r} must be a class index in [0, {n_classes}) for {name}, or None for the "
                         "predicted class.")
    return target


def token_attributions(
    model_a: Any,
    model_b: Any = None,
    sentence: str = "",
    tokenizer: Any = None,
    *,
    target: int | None = None,
    output: Output = "probability",
    n_steps: int = 50,
    baseline: Literal["pad", "unk", "mask"] = "pad",
    names: Sequence[str] | None = None,
    max_length: int = 128,
    internal_batch_size: int | None = None,
) -> pd.DataFrame:
    """Integrated-Gradients token attributions of one sentence under one or two models.

    Parameters
    ----------
    model_a, model_b : nn.Module, (model, tokenizer) or str
        E.g. the pre-trained and the fine-tuned model (``model_b=None`` for one model).
    sentence : str
    tokenizer : tokenizer, optional
        For models given as modules.
    target : int, optional
        The class to explain; default: each model's own predicted class.
    output : {'probability', 'logit'}, default='probability'
        What ``F`` is: the target's softmax probability (attributions add up to a change of probability) or logit.
    n_steps : int, default=50
        Riemann steps of the integral (Gauss-Legendre, captum's default); more steps shrink the convergence delta.
    baseline : {'pad', 'unk', 'mask'}, default='pad'
        The token that replaces every ordinary token in the baseline (special tokens stay).
    names : (str, str), optional
        Labels for the ``model`` column.
    max_length : int, default=128
    internal_batch_size : int, optional
        Passed to captum, to bound memory for long sentences.

    Returns
    -------
    DataFrame
        Columns :data:`ATTRIBUTION_COLUMNS`: one row per model and token. ``attribution`` is the token's IG
        attribution (sum over embedding dimensions), ``attribution_norm`` the same divided by the sum of absolute
        attributions of that model (comparable across models), ``target_prob`` the model's probability of the
        target, ``convergence_delta`` captum's completeness error.
    """
    LayerIntegratedGradients = require("captum.attr", "token_attributions").LayerIntegratedGradients

    owner = "token_attributions"
    check_choice("output", output, ("probability", "logit"), owner=owner)
    check_choice("baseline", baseline, ("pad", "unk", "mask"), owner=owner)
    n_steps = check_positive_int("n_steps", n_steps, owner=owner)
    if not isinstance(sentence, str) or not sentence.strip():
        raise ValueError(f"{owner} needs one non-empty sentence (a str); got {sentence!r}.")
    rows = []
    for name, net, tok in named_models(model_a, model_b, tokenizer, names, owner=owner):
        with eval_mode(net):
            enc = _Encoded(net, tok, sentence, max_length, baseline)
            probs = _predict(net, enc)
            tgt = _target_for(target, probs, name)
            lig = LayerIntegratedGradients(_forward(net, output, embeds=False), _embedding_layer(net))
            attrs, delta = lig.attribute(enc.input_ids, baselines=enc.baseline_ids, target=tgt,
                                         additional_forward_args=enc.extra(), n_steps=n_steps,
                                         internal_batch_size=internal_batch_size, return_convergence_delta=True)
        per_token = attrs.sum(dim=-1)[0].detach().to(torch.float64).cpu().numpy()
        total = float(np.abs(per_token).sum())
        label_names = getattr(getattr(net, "config", None), "id2label", None) or {}
        for pos, (token, tid, value) in enumerate(zip(enc.tokens, enc.input_ids[0].tolist(), per_token)):
            rows.append({"model": name, "position": pos, "token": token, "token_id": int(tid),
                         "attribution": float(value), "attribution_norm": float(value / total) if total > 0 else 0.0,
                         "target": tgt, "target_name": str(label_names.get(tgt, tgt)),
                         "target_prob": float(probs[tgt]), "predicted": int(probs.argmax()), "output": output,
                         "convergence_delta": float(delta.reshape(-1)[0]), "text": sentence})
    return pd.DataFrame(rows, columns=list(ATTRIBUTION_COLUMNS))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b)[0])


def _perturber(injector: Any, mask: torch.Tensor, seed: int) -> Any:
    """``perturb(inputs)``: inputs + noise from a generator seeded afresh on every call (the same draws each time).

    One positional parameter only: captum passes ``perturb_radius`` to perturbation functions that take two.
    """

    def perturb(inputs: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return inputs + injector.inject(inputs, mask.expand(inputs.shape[0], -1), generator=gen)

    return perturb


def attribution_stability(
    model_a: Any,
    model_b: Any = None,
    sentences: str | Sequence[str] = (),
    tokenizer: Any = None,
    *,
    noise: str = "gaussian",
    scale: float = 0.05,
    scale_kind: Literal["relative", "absolute"] = "relative",
    n_perturb: int = 8,
    n_steps: int = 32,
    target: int | None = None,
    output: Output = "probability",
    baseline: Literal["pad", "unk", "mask"] = "pad",
    use_captum: bool = True,
    seed: int = 0,
    names: Sequence[str] | None = None,
    max_length: int = 128,
) -> pd.DataFrame:
    """How much each model's token attributions change when the same noise is added to its word embeddings.

    For every model and sentence: the clean IG attributions ``A(x)`` (as :func:`token_attributions`, target fixed
    to the clean prediction unless given), then ``n_perturb`` noisy versions ``A(x + e_j)``, where ``e_j`` are drawn
    by the project's injector from a generator seeded with ``seed`` and the sentence index, so every model sees the
    same draws. The noise goes on the ordinary tokens only: special tokens (``[CLS]``, ``[SEP]``) are part of the
    baseline, so they keep a zero attribution. The baseline embedding is the clean one.

    Parameters
    ----------
    model_a, model_b, tokenizer, names, target, output, baseline, max_length
        As for :func:`token_attributions`.
    sentences : str or sequence of str
    noise : {'gaussian', 'in_manifold'}, default='gaussian'
    scale : float, default=0.05
        Relative: a fraction of each token embedding's norm (5% as in the paper's Figure 1); absolute: sigma.
    scale_kind : {'relative', 'absolute'}, default='relative'
    n_perturb : int, default=8
        Noise draws per sentence.
    n_steps : int, default=32
        IG steps for every attribution.
    use_captum : bool, default=True
        Also compute captum's ``sensitivity_max`` with the same draws (it must equal ``relative_change_max``; the
        two are computed independently as a check).
    seed : int, default=0

    Returns
    -------
    DataFrame
        Columns :data:`STABILITY_COLUMNS`, one row per model, sentence and metric: ``relative_change_mean`` and
        ``relative_change_max`` of ``||A(x+e) - A(x)|| / ||A(x)||`` (0 = unchanged), ``sensitivity_max`` (captum),
        ``rank_correlation_mean`` (Spearman between clean and noisy token attributions; 1 = same order),
        ``top_token_kept`` (fraction of draws whose most important token is the clean one).
    """
    IntegratedGradients = require("captum.attr", "attribution_stability").IntegratedGradients

    owner = "attribution_stability"
    check_choice("noise", noise, NOISE_TYPES, owner=owner)
    check_choice("output", output, ("probability", "logit"), owner=owner)
    check_choice("baseline", baseline, ("pad", "unk", "mask"), owner=owner)
    n_perturb = check_positive_int("n_perturb", n_perturb, owner=owner)
    n_steps = check_positive_int("n_steps", n_steps, owner=owner)
    injector = make_noise(noise, scale=scale, scale_kind=scale_kind)
    texts = _sentences(sentences, owner)
    rows = []
    for name, net, tok in named_models(model_a, model_b, tokenizer, names, owner=owner):
        _check_embeds_supported(net)
        with eval_mode(net):
            for si, text in enumerate(texts):
                enc = _Encoded(net, tok, text, max_length, baseline)
                probs = _predict(net, enc)
                tgt = _target_for(target, probs, name)
                emb_layer = _embedding_layer(net)
                with torch.no_grad():
                    clean = emb_layer(enc.input_ids)
                    base = emb_layer(enc.baseline_ids)
                # Special tokens equal the baseline; noise there would only give them spurious attributions.
                mask = enc.attention_mask.bool() & ~enc.special
                ig = IntegratedGradients(_forward(net, output, embeds=True))

                def explain(inputs: torch.Tensor | tuple[torch.Tensor, ...], *, baselines: torch.Tensor,
                            additional_forward_args: tuple, target: int,
                            ig: Any = ig) -> torch.Tensor | tuple[torch.Tensor]:
                    # captum's metrics pass the clean inputs as a 1-tuple and expect a tuple back
                    as_tuple = isinstance(inputs, tuple)
                    x = inputs[0] if as_tuple else inputs
                    out = ig.attribute(x, baselines=baselines, additional_forward_args=additional_forward_args,
                                       target=target, n_steps=n_steps).sum(dim=-1)
                    return (out,) if as_tuple else out

                perturb = _perturber(injector, mask, int(seed) * 1_000_003 + si)

                kwargs = {"baselines": base, "additional_forward_args": enc.extra(), "target": tgt}
                a0 = explain(clean, **kwargs)[0].detach().to(torch.float64)
                noisy_in = perturb(clean.repeat(n_perturb, 1, 1))
                extra = tuple(t.repeat(n_perturb, 1) for t in enc.extra())
                a_noisy = explain(noisy_in, baselines=base.repeat(n_perturb, 1, 1), additional_forward_args=extra,
                                  target=tgt).detach().to(torch.float64)
                norm0 = float(a0.norm())
                rel = ((a_noisy - a0).norm(dim=-1) / (norm0 if norm0 > 0 else 1.0)).cpu().numpy()
                a0n, an = a0.cpu().numpy(), a_noisy.cpu().numpy()
                top = int(np.argmax(np.abs(a0n)))
                values = {
                    "relative_change_mean": float(rel.mean()),
                    "relative_change_max": float(rel.max()),
                    "rank_correlation_mean": float(np.nanmean([_spearman(a0n, a) for a in an]))
                    if a0n.size > 1 else math.nan,
                    "top_token_kept": float(np.mean([int(np.argmax(np.abs(a))) == top for a in an])),
                }
                if use_captum:
                    sensitivity_max = require("captum.metrics", owner).sensitivity_max
                    sens = sensitivity_max(explain, clean, perturb_func=perturb, n_perturb_samples=n_perturb,
                                           **kwargs)
                    values["sensitivity_max"] = float(sens.reshape(-1)[0])
                for metric, value in values.items():
                    rows.append({"model": name, "sentence": si, "text": text, "metric": metric, "value": value,
                                 "target": tgt, "noise": noise, "scale": float(scale), "scale_kind": scale_kind,
                                 "n_perturb": n_perturb, "n_steps": n_steps})
    return pd.DataFrame(rows, columns=list(STABILITY_COLUMNS))

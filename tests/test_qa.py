"""Question answering: the official metric on hand-worked answers, sliding windows that map back to the answer
text, the CLS label for windows without the answer, span decoding, topic groups, and malformed SQuAD input."""

import json

import numpy as np
import pytest

from lnsr_viz.data.squad import (
    TOPIC_GROUPS,
    QADataset,
    QAExample,
    exact_match_score,
    f1_score,
    load_squad,
    normalize_answer,
    parse_squad,
    postprocess_predictions,
    prepare_features,
    squad_metrics,
    topic_split,
)


def test_normalisation_and_metrics_by_hand():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert exact_match_score("the Eiffel tower.", "Eiffel Tower") == 1.0
    # prediction "eiffel tower paris" vs truth "eiffel tower": precision 2/3, recall 1 -> F1 = 0.8
    assert f1_score("Eiffel Tower, Paris", "the Eiffel Tower") == pytest.approx(0.8)
    assert f1_score("London", "Paris") == 0.0
    ex = [QAExample("q1", "t", "where?", "ctx", ("Paris", "in Paris, France"), (0, 0)),
          QAExample("q2", "t", "who?", "ctx", ("Marie Curie",), (0,))]
    # q1: best over references: "Paris" exact -> EM 1, F1 1; q2: "Curie" -> EM 0, F1 = 2*(1*0.5)/(1.5) = 2/3
    m = squad_metrics({"q1": "paris", "q2": "Curie"}, ex)
    assert m["exact_match"] == pytest.approx(50.0)
    assert m["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="no prediction for 1 questions"):
        squad_metrics({"q1": "x"}, ex)


def _squad(context, answer, start, qid="q1"):
    return {"data": [{"title": "T", "paragraphs": [{"context": context, "qas": [
        {"id": qid, "question": "What?", "answers": [{"text": answer, "answer_start": start}]}]}]}]}


def test_malformed_squad_names_the_question(tmp_path):
    with pytest.raises(ValueError, match="question 'q7': answer_start=3 does not point at the answer text 'blue'"):
        parse_squad(_squad("The sky is blue.", "blue", 3, qid="q7"))
    bad = _squad("The sky is blue.", "blue", 11)
    del bad["data"][0]["paragraphs"][0]["qas"][0]["question"]
    with pytest.raises(ValueError, match=r"question 'q1' \(article 'T'\) lacks \['question'\]"):
        parse_squad(bad)
    with pytest.raises(ValueError, match="'data' list"):
        parse_squad({"version": "1.1"})
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_squad(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_squad(tmp_path / "missing.json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_squad("The sky is blue.", "blue", 11)))
    assert len(load_squad(good)) == 1


@pytest.fixture(scope="module")
def tokenizer():
    from lnsr_viz.data.models import load_tokenizer

    return load_tokenizer("minilm")


def _long_example():
    filler = " ".join(f"word{i}" for i in range(150))
    context = f"{filler} The capital of France is Paris and it is large. {filler}"
    start = context.index("Paris")
    return QAExample("long", "T", "What is the capital of France?", context, ("Paris",), (start,))


def test_every_window_maps_back_to_the_answer_or_to_cls(tokenizer):
    ex = _long_example()
    feats = prepare_features([ex], tokenizer, max_length=64, stride=24)
    n = len(feats["input_ids"])
    assert n > 3  # the context needs several windows
    with_answer = 0
    for i in range(n):
        s, e = feats["start_positions"][i], feats["end_positions"][i]
        offsets = feats["offset_mapping"][i]
        if s == 0:  # CLS label: the answer is not (entirely) inside this window
            assert e == 0
            covered = [o for o in offsets if o is not None]
            assert not (covered[0][0] <= ex.answer_starts[0] and covered[-1][1] >= ex.answer_starts[0] + 5)
        else:
            with_answer += 1
            assert ex.context[offsets[s][0]:offsets[e][1]] == "Paris"
    assert with_answer >= 1
    assert set(feats["example_index"]) == {0}


def test_postprocess_recovers_spans_and_respects_limits(tokenizer):
    ex = _long_example()
    feats = prepare_features([ex], tokenizer, max_length=64, stride=24)
    n, width = len(feats["input_ids"]), len(feats["input_ids"][0])
    start, end = np.full((n, width), -5.0), np.full((n, width), -5.0)
    for i, (s, e) in enumerate(zip(feats["start_positions"], feats["end_positions"], strict=True)):
        if s:
            start[i, s], end[i, e] = 5.0, 5.0
    start[:, 0] = end[:, 0] = 50.0  # CLS / question tokens are never returned as answers
    assert postprocess_predictions([ex], feats, start, end) == {"long": "Paris"}
    assert postprocess_predictions([ex], feats, start, end, max_answer_length=0) == {"long": ""}


def test_topic_groups_are_disjoint_and_split_reproducibly():
    data = load_squad("train")
    groups = [set(v) for v in TOPIC_GROUPS.values()]
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1:])
    split = topic_split(data, train_group="science", seed=0)
    assert set(split) == {"train", "test:science", "test:places", "test:people"}
    assert not {e.id for e in split["train"].examples} & {e.id for e in split["test:science"].examples}
    assert set(split["train"].titles) == set(TOPIC_GROUPS["science"])
    assert len(split["train"]) + len(split["test:science"]) == 4451
    again = topic_split(data, train_group="science", seed=0)
    assert [e.id for e in again["train"].examples] == [e.id for e in split["train"].examples]
    with pytest.raises(ValueError, match="expected one of"):
        topic_split(data, train_group="sports")
    with pytest.raises(ValueError, match="defined on SQuAD v1.1's training set"):
        topic_split(QADataset(data.examples[:10]), train_group="science")

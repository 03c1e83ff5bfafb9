"""Question answering through the same trainer, methods, probe and experiments as classification: a tiny
end-to-end run on a synthetic SQuAD file (tiny random model, word-level tokenizer)."""

import json
import random

import pandas as pd
import pytest

from lnsr_viz.data.squad import load_squad
from lnsr_viz.experiments.runs import compare
from lnsr_viz.testing import tiny_model
from lnsr_viz.training.loop import FineTuner
from lnsr_viz.viz.reports import comparison_report

WORDS = "the film story acting music ending plot scene actor director".split()
ANSWERS = "good great awful boring brilliant dull charming terrible".split()


def _synthetic_squad(path, n=40, seed=0):
    rng = random.Random(seed)
    qas_by_title = {}
    for i in range(n):
        subject, answer = rng.choice(WORDS), rng.choice(ANSWERS)
        filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        context = f"{filler} the {subject} was {answer} and {filler}"
        start = context.index(f"the {subject} was {answer}") + len(f"the {subject} was ")
        qas_by_title.setdefault(f"T{i % 4}", []).append({"context": context, "qas": [{
            "id": f"q{seed}-{i}", "question": f"how was the {subject} ?",
            "answers": [{"text": answer, "answer_start": start}]}]})
    data = {"data": [{"title": t, "paragraphs": ps} for t, ps in qas_by_title.items()]}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def qa_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    model, tok = tiny_model("bert", task="qa", seed=0)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root, _synthetic_squad(root / "train.json"), _synthetic_squad(root / "other.json", n=20, seed=1)


def test_finetuner_trains_a_qa_model_with_lnsr(qa_setup):
    root, train_path, _ = qa_setup
    model, tok = tiny_model("bert", task="qa", seed=0)
    data = load_squad(train_path)
    tuner = FineTuner("lnsr", epochs=2, batch_size=8, lr=1e-3, max_length=32, progress=False)
    tuner.fit(model, tok, data.subset(range(30)), data.subset(range(30, 40)))
    h = tuner.history_
    assert (h["score"] == "f1").all()
    assert h["train_accuracy"].between(0, 1).all() and (h["train_reg_loss"] > 0).all()
    assert h["train_task_loss"].iloc[-1] < h["train_task_loss"].iloc[0]


def test_a_classification_model_is_refused_for_qa_data(qa_setup):
    _, train_path, _ = qa_setup
    model, tok = tiny_model("bert")
    with pytest.raises(ValueError, match="question-answering model"):
        FineTuner(progress=False).fit(model, tok, load_squad(train_path))


def test_compare_runs_qa_end_to_end(qa_setup, tmp_path):
    root, train_path, other = qa_setup
    result = compare(["vanilla", "lnsr"], [1, 2], task="qa", model=str(root / "model"), data=str(train_path),
                     ood=[str(other)], train_size=16, val_size=6, eval_size=10, epochs=1, batch_size=8,
                     max_length=32, probe_n=4, probe_draws=1, results=tmp_path / "store", progress=False,
                     verbose=False)
    metrics = result.metrics
    assert {"f1", "exact_match", "span_loss"} <= set(metrics["metric"])
    assert set(metrics["domain"]) == {"train", "other"}
    assert metrics.loc[metrics.metric == "f1", "value"].between(0, 100).all()
    assert set(result.profile["model"]) == {"pretrained", "vanilla", "lnsr"}
    assert set(result.paired["metric"]) >= {"f1", "exact_match"}
    # drift from the pre-trained model, per layer, measured on the probe's QA windows, for every fine-tuned run
    drift = result.drift
    assert set(drift["method"]) == {"vanilla", "lnsr"} and set(drift["model_a"]) == {"pretrained"}
    cka = drift[drift.metric == "cka"]
    assert cka["run_id"].nunique() == 4 and cka.groupby("run_id")["layer"].apply(lambda s: sorted(s) == list(
        range(len(s)))).all()
    assert cka["value"].between(-1e-9, 1 + 1e-9).all()
    html = comparison_report(result).save(tmp_path / "qa.html").read_text()
    assert "F1 per domain" in html and "Exact match per domain" in html
    assert "Drift from the pre-trained model" in html
    again = compare(["vanilla", "lnsr"], [1, 2], task="qa", model=str(root / "model"), data=str(train_path),
                    ood=[str(other)], train_size=16, val_size=6, eval_size=10, epochs=1, batch_size=8,
                    max_length=32, probe_n=4, probe_draws=1, results=tmp_path / "store", progress=False,
                    verbose=False)
    assert again.runs["cached"].all()
    pd.testing.assert_frame_equal(result.metrics, again.metrics)


@pytest.mark.parametrize("method", [m for m in __import__("lnsr_viz.methods", fromlist=["METHODS"]).METHODS])
def test_every_method_trains_a_qa_model(qa_setup, method):
    """One interface: each regulariser runs on an AutoModelForQuestionAnswering model (start/end logits)."""
    import math

    root, train_path, _ = qa_setup
    model, tok = tiny_model("bert", task="qa", seed=0)
    data = load_squad(train_path)
    tuner = FineTuner(method, epochs=1, batch_size=8, lr=1e-3, max_length=32, progress=False, seed=1)
    tuner.fit(model, tok, data.subset(range(16)), data.subset(range(30, 36)))
    h = tuner.history_
    assert len(h) == 1 and math.isfinite(h["train_loss"].iloc[0]) and h["train_reg_loss"].iloc[0] >= 0
    assert h["val_accuracy"].between(0, 1).all()


def test_prediction_divergences_on_qa_use_the_start_and_end_distributions(qa_setup):
    import torch

    from lnsr_viz.data.squad import feature_batches, prepare_features
    from lnsr_viz.methods import RDrop
    from lnsr_viz.methods.base import prediction_logits

    _, train_path, _ = qa_setup
    model, tok = tiny_model("bert", task="qa", seed=0)
    data = load_squad(train_path).subset(range(6))
    batch = feature_batches(prepare_features(data, tok, max_length=32, stride=16), list(range(6)), model=model)
    out = model(**{k: v for k, v in batch.items() if k not in ("start_positions", "end_positions")})
    stacked = prediction_logits(out)
    assert stacked.shape == (12, out.start_logits.shape[1])
    torch.testing.assert_close(stacked[:6], out.start_logits)
    torch.testing.assert_close(stacked[6:], out.end_logits)
    model.eval()  # dropout off: the two passes agree and R-Drop's term is exactly zero
    assert float(RDrop(alpha=1.0).compute_loss(model, batch).reg_loss) == 0.0
    model.train()
    parts = RDrop(alpha=1.0, reduction="batchmean").compute_loss(model, batch)
    assert float(parts.reg_loss) > 0

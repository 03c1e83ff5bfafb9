"""diagnose(): an over-fitted tiny model is flagged (gap, loss gap, calibration), an unchanged model shows zero drift
and the same stability as its base, the base is inferred from the checkpoint config, the JSON summary and HTML report
are written, the CLI works; the statistics behind the thresholds (Newcombe interval, ECE null threshold) have known
values; bad input (no config.json, a base that is not available offline, no way to infer the base, different
tokenizers or depths, a checkpoint without a trained head) gives clear errors."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from lnsr_viz.data.text import TextDataset
from lnsr_viz.experiments.diagnose import (
    Diagnosis,
    diagnose,
    ece_null_threshold,
    infer_base_model,
    newcombe_interval,
    save_checkpoint,
)
from lnsr_viz.testing import tiny_model, toy_sentences
from lnsr_viz.viz.reports import diagnosis_report


def _random_label_data(n_train=16, n_held=48, seed=0):
    texts, _ = toy_sentences(n_train + n_held, seed=seed)
    labels = np.random.default_rng(seed).integers(0, 2, n_train + n_held)
    return (TextDataset(texts[:n_train], labels[:n_train], "train"),
            TextDataset(texts[n_train:], labels[n_train:], "held_out"))


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    model, tok = tiny_model("bert")
    folder = tmp_path_factory.mktemp("base")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------------ statistics
def test_newcombe_interval_reproduces_the_published_examples():
    # Newcombe (1998), Stat Med 17:873, Table II, method 10
    d, lo, hi = newcombe_interval(56, 70, 48, 80)
    assert (round(d, 4), round(lo, 4), round(hi, 4)) == (0.2, 0.0524, 0.3339)
    _, lo, hi = newcombe_interval(5, 56, 0, 29)
    assert (round(lo, 4), round(hi, 4)) == (-0.0381, 0.1926)
    d, lo, hi = newcombe_interval(16, 16, 8, 16)  # a training accuracy of 100% is handled
    assert d == 0.5 and 0 < lo < 0.5 < hi <= 1
    with pytest.raises(ValueError, match="need 0 <= x1 <= n1"):
        newcombe_interval(5, 4, 1, 2)


def test_ece_null_threshold_bounds_the_ece_of_calibrated_predictions():
    from lnsr_viz.analysis.evaluation import expected_calibration_error

    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1.0, 400)
    probs = np.column_stack([conf, 1 - conf])
    threshold = ece_null_threshold(probs, seed=2)
    hits = []
    for i in range(40):  # labels drawn from the stated confidences: a perfectly calibrated model
        labels = np.where(np.random.default_rng(100 + i).random(400) < conf, 0, 1)
        hits.append(expected_calibration_error(probs, labels) <= threshold)
    assert 0.85 <= np.mean(hits) <= 1.0
    small = ece_null_threshold(probs[:40], seed=2)
    assert small > threshold  # fewer examples, more chance miscalibration


# ------------------------------------------------------------------------------------------------ diagnose
@pytest.mark.slow
def test_an_over_fitted_model_is_flagged():
    from lnsr_viz.training.loop import FineTuner

    base, tok = tiny_model("bert")
    model = copy.deepcopy(base)
    train, held = _random_label_data()
    FineTuner("vanilla", epochs=40, batch_size=8, lr=2e-3, warmup_ratio=0.0, seed=0, progress=False).fit(
        model, tok, train)
    # the raw rules (no track record): tests/test_track_record.py covers how a track record rewords them
    diag = diagnose((model, tok), (base, tok), train, held_out=held, probe_n=32, track_record=None)
    gap = diag.finding("generalisation_gap")
    assert gap.severity == "warning" and gap.value > 0.3
    assert gap.evidence["train_accuracy"] == 1.0 and gap.evidence["gap_ci_low"] > 0
    assert gap.threshold == 0.0 and "Newcombe" in gap.threshold_source
    assert "over-fitting" in gap.message and f"{gap.value:+.3f}" in gap.message
    assert diag.finding("loss_gap").severity == "warning"
    assert diag.finding("calibration").severity == "warning" and "over-confident" in diag.finding(
        "calibration").message
    drift = diag.finding("drift")
    assert drift.severity == "info" and drift.threshold is None  # descriptive: no verdict without a number
    metrics = diag.metrics.set_index(["split", "metric"])["value"]
    assert metrics[("train", "accuracy")] == 1.0 and metrics[("held_out", "accuracy")] < 0.75


def test_an_unchanged_model_shows_zero_drift_and_the_stability_of_its_base():
    model, tok = tiny_model("bert")
    train, held = _random_label_data(n_held=24)
    diag = diagnose((model, tok), (copy.deepcopy(model), tok), train, held_out=held, probe_n=16)
    distances = diag.drift[diag.drift["kind"] == "distance"]["value"]
    similarities = diag.drift[diag.drift["kind"] == "similarity"]["value"]
    np.testing.assert_allclose(distances, 0.0, atol=1e-12)
    np.testing.assert_allclose(similarities, 1.0, atol=1e-9)
    drift = diag.finding("drift")
    assert drift.severity == "ok" and drift.value == 0.0 and drift.message.startswith("The weights equal")
    stab = diag.finding("stability_vs_base")
    assert stab.value == pytest.approx(1.0) and stab.severity == "ok"
    assert stab.evidence["ratio_ci_low"] == stab.evidence["ratio_ci_high"] == 1.0
    assert set(diag.profile["model"]) == {"model", "base"}
    for f in diag.findings:  # every finding carries the number behind it and where its threshold comes from
        assert f.threshold_source and f.message
        assert f.value is not None or f.severity == "info"


def test_the_base_is_inferred_from_the_checkpoint_and_the_outputs_are_written(tmp_path, base_folder):
    base, tok = tiny_model("bert")
    model = copy.deepcopy(base)
    with torch.no_grad():
        for p in model.bert.encoder.layer[1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = save_checkpoint(model, tok, tmp_path / "ckpt", base_model=base_folder)
    assert infer_base_model(ckpt) == (str(base_folder), "base_model")
    texts, labels = toy_sentences(24)
    frame = pd.DataFrame({"text": texts, "label": labels, "split": ["train"] * 12 + ["test"] * 12})
    diag = diagnose(ckpt, data=frame, probe_n=8)
    assert isinstance(diag, Diagnosis)
    assert diag.settings["base_model"] == str(base_folder)
    assert "inferred from the 'base_model' field" in diag.settings["base_source"]
    assert diag.settings["n_train"] == 12 and diag.settings["n_held_out"] == 12
    wd = diag.drift[diag.drift["metric"] == "weight_distance"].set_index("layer")["value"]
    assert wd[0] == 0 and wd[1] == 0 and wd[2] > 0
    summary = json.loads(diag.to_json(tmp_path / "out" / "summary.json"))
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    assert [f["key"] for f in summary["findings"]] == ["generalisation_gap", "loss_gap", "stability_vs_base",
                                                       "drift", "calibration"]
    assert all("threshold_source" in f for f in summary["findings"])
    html = diagnosis_report(diag).save(tmp_path / "out" / "report.html").read_text()
    assert "Findings" in html and "Drift from the base per layer" in html and "Layer stability" in html


def test_without_a_split_the_gap_is_not_measured_and_says_so():
    model, tok = tiny_model("bert")
    _, held = _random_label_data(n_held=12)
    diag = diagnose((model, tok), (model, tok), held, probe_n=4)
    gap = diag.finding("generalisation_gap")
    assert gap.severity == "info" and gap.value is None and "no training examples" in gap.message
    assert list(diag.metrics["split"].unique()) == ["held_out"]


def test_mapping_data_with_named_splits():
    model, tok = tiny_model("bert")
    train, held = _random_label_data(n_train=8, n_held=8)
    diag = diagnose((model, tok), (model, tok), {"train": train, "validation": held}, probe_n=4)
    assert diag.settings["split"] == "splits 'train' and 'validation' of data"
    with pytest.raises(ValueError, match=r"needs a held-out one named one of"):
        diagnose((model, tok), (model, tok), {"train": train, "other": held})


# ------------------------------------------------------------------------------------------------ bad input
def test_a_checkpoint_folder_without_config_is_refused(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"")
    _, held = _random_label_data(n_held=8)
    with pytest.raises(ValueError, match=r"has no config.json.*save_checkpoint"):
        diagnose(tmp_path / "ckpt", base_model="minilm", data=held)
    with pytest.raises(ValueError, match="has no config.json"):
        infer_base_model(tmp_path / "ckpt")


def test_a_base_that_cannot_be_found_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = tiny_model("bert")
    ckpt = save_checkpoint(model, tok, tmp_path / "ckpt", base_model="some-org/not-a-cached-model")
    _, held = _random_label_data(n_held=8)
    with pytest.raises(OSError, match=r"'some-org/not-a-cached-model' \(inferred from the 'base_model' field of the "
                                      r"checkpoint config\) cannot be found offline.*--base"):
        diagnose(ckpt, data=held)
    with pytest.raises(FileNotFoundError, match=r"base model folder .*nowhere' \(given as base_model\) does not exist"):
        diagnose(ckpt, base_model=str(tmp_path / "nowhere"), data=held)


def test_a_base_that_cannot_be_inferred_asks_for_base_model(tmp_path):
    model, tok = tiny_model("bert")
    model.save_pretrained(tmp_path / "plain")
    tok.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match=r"Cannot infer the base model.*neither a 'base_model' nor a usable "
                                         r"'_name_or_path'.*--base"):
        diagnose(tmp_path / "plain", data=_random_label_data(n_held=8)[1])


def test_a_config_pointing_at_the_checkpoint_itself_is_not_taken_for_the_base(tmp_path):
    model, tok = tiny_model("bert")
    ckpt = save_checkpoint(model, tok, tmp_path / "ckpt", base_model=tmp_path / "ckpt")
    with pytest.raises(ValueError, match="Cannot infer the base model"):
        infer_base_model(ckpt)


def test_an_inferred_base_with_the_models_own_weights_is_refused_before_any_work(tmp_path, monkeypatch):
    import lnsr_viz.experiments.diagnose as diagnose_module

    model, tok = tiny_model("bert")
    copy_of_it = save_checkpoint(model, tok, tmp_path / "copy", base_model="some-org/base")
    ckpt = save_checkpoint(model, tok, tmp_path / "ckpt", base_model=copy_of_it)
    texts, labels = toy_sentences(24)
    data = {"train": TextDataset(texts[:12], labels[:12], "train"),
            "held_out": TextDataset(texts[12:], labels[12:], "held_out")}

    def no_work(*args, **kwargs):
        raise AssertionError("the model was evaluated before the bad base was refused")

    monkeypatch.setattr(diagnose_module, "_split_metrics", no_work)
    with pytest.raises(ValueError, match=r"has exactly the weights of the model.*Pass base_model= \(--base\)"):
        diagnose(str(ckpt), data=data, probe_n=4)


def _other_tokenizer():
    """tiny_tokenizer's vocabulary with two words swapped for others."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from lnsr_viz.testing import tiny_tokenizer

    vocab = dict(tiny_tokenizer().get_vocab())
    vocab["zebra"], vocab["quokka"] = vocab.pop("film"), vocab.pop("movie")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   model_input_names=["input_ids", "attention_mask"])


def test_model_and_base_with_different_tokenizers_or_depths_are_refused():
    model, tok = tiny_model("bert")
    _, held = _random_label_data(n_held=8)
    with pytest.raises(ValueError, match=r"the model and the base model use different tokenizers"):
        diagnose((model, tok), (copy.deepcopy(model), _other_tokenizer()), held)
    deep, _ = tiny_model("bert", n_layers=3)
    with pytest.raises(ValueError, match=r"different numbers of layers: 3 vs 2"):
        diagnose((model, tok), (deep, tok), held)


def test_a_checkpoint_without_a_trained_head_is_refused(tmp_path):
    from transformers import BertModel

    _, tok = tiny_model("bert")
    from lnsr_viz.testing import tiny_config

    encoder = BertModel(tiny_config("bert"))
    encoder.save_pretrained(tmp_path / "enc")
    with pytest.raises(ValueError, match=r"has no trained classification head"):
        diagnose(tmp_path / "enc", base_model=tmp_path / "enc", data=_random_label_data(n_held=8)[1], tokenizer=tok)


def test_labels_outside_the_model_classes_are_refused():
    model, tok = tiny_model("bert")
    texts, _ = toy_sentences(8)
    data = TextDataset(texts, np.arange(8) % 3, "three")
    with pytest.raises(ValueError, match="label 2 but the model has num_labels=2"):
        diagnose((model, tok), (model, tok), data)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_diagnose_writes_report_and_summary(tmp_path, base_folder, capsys):
    from lnsr_viz.cli import main

    model, tok = tiny_model("bert", seed=3)
    ckpt = save_checkpoint(model, tok, tmp_path / "ckpt", base_model=base_folder)
    texts, labels = toy_sentences(16)
    split = ["train", "train", "test", "test"] * 4  # both classes in both splits
    pd.DataFrame({"text": texts, "label": labels, "split": split}).to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "diag"
    rc = main(["diagnose", "--model", str(ckpt), "--data", str(tmp_path / "d.csv"), "--out", str(out),
               "--probe-n", "4", "--quiet"])
    assert rc == 0
    assert (out / "report.html").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["base_model"] == str(base_folder)
    assert "Generalisation gap" in capsys.readouterr().out
    rc = main(["diagnose", "--model", str(tmp_path / "missing"), "--data", str(tmp_path / "d.csv"), "--out",
               str(out), "--quiet"])
    assert rc == 2
    assert "No checkpoint folder" in capsys.readouterr().err


def test_lnsr_viz_diagnose_is_the_function_even_after_the_module_is_imported():
    import lnsr_viz
    import lnsr_viz.experiments.diagnose  # noqa: F401  (binds the module to lnsr_viz.experiments.diagnose)

    assert callable(lnsr_viz.diagnose) and lnsr_viz.diagnose.__module__ == "lnsr_viz.experiments.diagnose"

    model, tok = tiny_model("bert")
    _, held = _random_label_data(n_held=8)
    diag = lnsr_viz.diagnose((model, tok), (model, tok), held, probe_n=4)
    assert isinstance(diag, Diagnosis)


@pytest.mark.slow
def test_a_minilm_checkpoint_is_diagnosed_against_the_packaged_base(tmp_path, lnsr_home):
    from lnsr_viz.data.models import load_model

    model, tok = load_model("minilm")
    with torch.no_grad():
        for p in model.bert.encoder.layer[5].parameters():
            p.mul_(1.5)
    ckpt = save_checkpoint(model, tok, tmp_path / "ckpt", base_model="minilm")
    texts = ["a gripping, beautifully acted film", "dull and far too long", "an utter mess", "charming and funny",
             "the plot never comes together", "one of the best films of the year"]
    data = pd.DataFrame({"text": texts, "label": [1, 0, 0, 1, 0, 1], "split": ["train", "test"] * 3})
    diag = diagnose(ckpt, data=data, probe_n=3)
    assert diag.settings["base_model"] == "minilm"
    wd = diag.drift[diag.drift["metric"] == "weight_distance_rel"].set_index("layer")["value"]
    assert (wd.drop(6) == 0).all() and wd[6] == pytest.approx(0.5, rel=1e-3)  # only the top block was scaled
    assert diag.finding("stability_vs_base").value > 0


# ------------------------------------------------------------------------------------------------ labels
def _named_model(names):
    model, tok = tiny_model("bert")
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: k for k, n in enumerate(names)}
    return model, tok


def _string_labelled(n, seed, vocab):
    texts, labels = toy_sentences(n, seed=seed)
    return pd.DataFrame({"text": texts, "label": [vocab[int(y)] for y in labels]}), np.asarray(labels)


def test_string_labels_are_matched_to_the_models_class_names():
    from lnsr_viz.experiments.diagnose import model_class_names

    model, tok = _named_model(["positive", "negative"])  # the reverse of the sorted order
    assert model_class_names(model) == ("positive", "negative")
    assert model_class_names(tiny_model("bert")[0]) is None  # transformers' LABEL_0, LABEL_1
    train, y_train = _string_labelled(16, 0, ["negative", "positive"])
    held, y_held = _string_labelled(24, 1, ["negative", "positive"])
    diag = diagnose((model, tok), (model, tok), train, held_out=held, probe_n=4, n_drift=8)
    # class 0 of the model is 'positive': a held-out 'positive' (toy label 1) must count as class 0
    with torch.no_grad():
        from lnsr_viz.analysis.evaluation import predict_proba

        p = predict_proba(model, tok, list(held["text"]), max_length=128)
    expected = float(np.mean(p.argmax(1) == (1 - y_held)))
    got = diag.metrics.query("split == 'held_out' and metric == 'accuracy'")["value"].iloc[0]
    assert got == pytest.approx(expected)


def test_a_held_out_label_the_model_does_not_have_is_refused_before_work():
    model, tok = _named_model(["negative", "positive"])
    train, _ = _string_labelled(16, 0, ["negative", "positive"])
    held, _ = _string_labelled(24, 1, ["negative", "neutral"])
    with pytest.raises(ValueError, match=r"neutral"):
        diagnose((model, tok), (model, tok), train, held_out=held, probe_n=4, n_drift=8)


def test_unnamed_classes_with_string_labels_warn_about_the_order():
    model, tok = tiny_model("bert")
    train, _ = _string_labelled(16, 0, ["neg", "pos"])
    held, _ = _string_labelled(24, 1, ["neg", "pos"])
    with pytest.warns(UserWarning, match=r"numbered in sorted order: neg=0, pos=1"):
        diagnose((model, tok), (model, tok), train, held_out=held, probe_n=4, n_drift=8)

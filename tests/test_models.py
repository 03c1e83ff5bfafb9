"""Tests for lnsr_viz.data.models: loading the packaged MiniLM with no network, seeded head initialisation, local
folders, Hugging Face ids while offline, passing in ready-made models, the load-report filter, and every error.

Most tests use a tiny BERT saved to tmp_path (fast); the ones marked ``slow`` load the real packaged MiniLM.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

from lnsr_viz.data import models
from lnsr_viz.data.models import MODEL_ALIASES, load_model, load_tokenizer, resolve_model

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "a"]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A 2-layer BERT encoder checkpoint (no task head) with a word-piece vocabulary, like a pre-trained model."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    from transformers import BertTokenizer

    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


@pytest.fixture
def report_records():
    """Records that transformers' loggers emit at WARNING or above (its library root does not propagate)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_tiny_folder_loads_in_eval_mode_with_its_tokenizer(tiny_folder, offline):
    model, tok = load_model(tiny_folder, num_labels=3)
    assert not model.training
    assert model.classifier.out_features == 3 and model.config.num_hidden_layers == 2
    assert tok("a good film")["input_ids"] == [2, 8, 5, 7, 3]
    qa, _ = load_model(str(tiny_folder), task="qa")
    assert qa.qa_outputs.out_features == 2


def test_head_initialisation_is_seeded_and_leaves_global_rng_alone(tiny_folder, offline):
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    a, _ = load_model(tiny_folder, seed=0)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is untouched
    b, _ = load_model(tiny_folder, seed=0)
    c, _ = load_model(tiny_folder, seed=1)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    assert torch.equal(a.bert.encoder.layer[0].output.dense.weight, c.bert.encoder.layer[0].output.dense.weight)


def test_new_head_report_is_hidden_but_other_reports_are_shown(tiny_folder, tmp_path, offline, report_records):
    load_model(tiny_folder)
    assert not [r for r in report_records if "LOAD REPORT" in r.getMessage()]
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        (broken / name).write_bytes((tiny_folder / name).read_bytes())
    weights = load_file(tiny_folder / "model.safetensors")
    dropped = [k for k in weights if "layer.1.output.dense" in k]
    save_file({k: v for k, v in weights.items() if k not in dropped}, broken / "model.safetensors")
    load_model(broken)
    reports = [r.getMessage() for r in report_records if "LOAD REPORT" in r.getMessage()]
    assert len(reports) == 1 and "layer.1.output.dense" in reports[0] and "classifier" in reports[0]


def test_report_explaining_a_failed_load_is_shown(tiny_folder, tmp_path, offline, report_records):
    model, tok = load_model(tiny_folder, num_labels=2)
    model.save_pretrained(tmp_path / "tuned")
    with pytest.raises(ValueError, match="has 2 classes, but the training data have 3: its head cannot be reused"):
        load_model(tmp_path / "tuned", num_labels=3)  # one readable error (was transformers' RuntimeError)
    reports = [r.getMessage() for r in report_records if "LOAD REPORT" in r.getMessage()]
    assert len(reports) == 1 and "MISMATCH" in reports[0]


def test_resolve_model_local_folder(tiny_folder, offline):
    assert resolve_model(tiny_folder) == str(tiny_folder)
    assert set(MODEL_ALIASES) == {"minilm"}


def test_folder_without_config_json(tmp_path, offline):
    with pytest.raises(ValueError, match="has no config.json, so it is not a transformers model folder"):
        resolve_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file; pass the model folder that contains config.json"):
        load_model(tmp_path / "weights.bin")


def test_missing_local_path(offline):
    with pytest.raises(FileNotFoundError, match=r"No model folder at './no/such/model'\. Pass an existing folder"):
        load_model("./no/such/model")


@pytest.mark.parametrize("name", ["nobody-here/no-such-model-xyz", "no-such-model-xyz"])
def test_unknown_hub_id_offline_says_what_to_do(offline, name):
    expected = f"Model '{name}' was not found locally and could not be downloaded.*local folder.*'minilm'"
    with pytest.raises(OSError, match=expected):
        load_model(name)
    with pytest.raises(OSError, match=expected):
        load_tokenizer(name)


def test_invalid_hub_id(offline):
    with pytest.raises(OSError, match="not a valid Hugging Face id.*'minilm'"):
        resolve_model("not a model!")


def test_hub_failure_is_reworded(monkeypatch):
    """Without the offline switch, a download failure from transformers becomes the same actionable error."""

    class Unreachable:
        @staticmethod
        def from_pretrained(name, **kwargs):
            assert kwargs["local_files_only"] is False
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    with pytest.raises(OSError, match=r"'org/model' was not found locally and could not be downloaded \(We couldn't"):
        models._from_pretrained(Unreachable, "org/model", "org/model")


def test_ready_made_models_are_passed_through(tiny_folder, offline):
    module = torch.nn.Linear(2, 2)
    tok = object()
    assert load_model(module, tokenizer=tok) == (module, tok)
    assert load_model((module, tok)) == (module, tok)
    model, loaded_tok = load_model(module, tokenizer=tiny_folder)
    assert model is module and loaded_tok.vocab_size == len(VOCAB)
    with pytest.raises(ValueError, match="got a Linear object but no tokenizer: pass tokenizer="):
        load_model(module)


def test_parameter_errors(tiny_folder, offline):
    with pytest.raises(
        ValueError, match=r"The 'task' parameter of load_model must be one of \['classification', 'qa'\]"
    ):
        load_model(tiny_folder, task="ner")
    with pytest.raises(ValueError, match="The 'num_labels' parameter of load_model must be an int"):
        load_model(tiny_folder, num_labels=0)
    with pytest.raises(ValueError, match="The 'seed' parameter of load_model"):
        load_model(tiny_folder, seed=-3)


@pytest.mark.slow
def test_packaged_minilm_loads_offline(lnsr_home, offline, monkeypatch):
    monkeypatch.setenv("LNSR_VIZ_HOME", str(lnsr_home))
    assert resolve_model("minilm") == str(lnsr_home / "minilm")
    model, tok = load_model()
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (6, 384, 12)
    assert sum(p.numel() for p in model.bert.parameters()) == 22_713_216
    assert not model.training and model.classifier.out_features == 2
    batch = tok(["a gorgeous, moving film", "dull and lifeless"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    again, _ = load_model("minilm", seed=0)
    assert torch.equal(model.classifier.weight, again.classifier.weight)

"""Data an outside user brings (issue 14): one label vocabulary fixed by the training data for every file, classes
from the training data only, strict text decoding, seeded stratified samples for --n, and clear refusals of files
that cannot be read correctly (empty, binary, .txt, other delimiters), per-file columns, names by stem, leakage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lnsr_viz import cli
from lnsr_viz.data.text import (
    as_dataset,
    data_name,
    parse_data_spec,
    read_table,
    sample_texts,
    split_dataset,
    training_classes,
)
from lnsr_viz.experiments.config import ExperimentConfig
from lnsr_viz.experiments.runs import compare, make_protocol
from lnsr_viz.testing import tiny_model, toy_sentences


def _write(path, texts, labels, text_col="text", label_col="label", **kw):
    pd.DataFrame({text_col: texts, label_col: labels}).to_csv(path, index=False, **kw)
    return path


@pytest.fixture
def sentiment_files(tmp_path):
    """Training labels fresh / rotten (fresh = positive) and an OOD file that says negative / positive."""
    texts, labels = toy_sentences(60, seed=0)
    train = _write(tmp_path / "reviews.csv", texts, ["fresh" if y else "rotten" for y in labels])
    texts, labels = toy_sentences(30, seed=7)
    ood = _write(tmp_path / "tweets_x.csv", texts, ["positive" if y else "negative" for y in labels])
    return train, ood, np.asarray(labels)


# ---------------------------------------------------------------------------------------------------- labels
def test_string_labels_of_an_ood_file_are_refused_naming_file_unknown_and_known_labels(sentiment_files):
    train, ood, _ = sentiment_files
    with pytest.raises(ValueError, match=r"tweets_x.csv.*label\(s\) \['negative', 'positive'\] that the model "
                                         r"does not know.*\['fresh', 'rotten'\].*label_map=") as err:
        make_protocol(train, ood=[ood], train_size=20, val_size=4, eval_size=None)
    assert "..." in str(err.value)  # the hint shows the syntax; it never guesses which class is which


def test_a_label_map_maps_the_ood_labels_onto_the_training_classes(sentiment_files):
    train, ood, truth = sentiment_files
    proto = make_protocol(train, ood=[ood], train_size=20, val_size=4, eval_size=None,
                          label_map={"negative": "rotten", "positive": "fresh"})
    ds = proto.evaluation["tweets_x"]
    assert ds.label_names == ("fresh", "rotten") == proto.train.label_names
    # positive -> fresh = class 0; numbered per file it would have been class 1 (the flipped labels of the issue)
    assert ds.labels.tolist() == [0 if y else 1 for y in truth]
    assert proto.labels["label_map"] == {"negative": "rotten", "positive": "fresh"}
    assert proto.labels["classes"] == {"0": "fresh", "1": "rotten"} and proto.n_labels() == 2
    # class ids work too, and the same map leaves the training file's own labels alone
    by_id = make_protocol(train, ood=[ood], train_size=20, val_size=4, eval_size=None,
                          label_map={"negative": 1, "positive": 0})
    assert by_id.evaluation["tweets_x"].labels.tolist() == ds.labels.tolist()


def test_integer_ood_labels_are_ids_and_named_ood_sets_match_by_name(tmp_path):
    texts, labels = toy_sentences(40, seed=0)
    train = _write(tmp_path / "train.csv", texts, labels)  # ids 0/1, no names
    _write(tmp_path / "ids.csv", texts[:10], labels[:10])
    proto = make_protocol(train, ood=[tmp_path / "ids.csv"], train_size=10, val_size=4, eval_size=None)
    assert proto.evaluation["ids"].labels.tolist() == list(labels[:10])
    _write(tmp_path / "names.csv", texts[:10], ["pos" if y else "neg" for y in labels[:10]])
    with pytest.raises(ValueError, match=r"label\(s\) \['neg', 'pos'\] that the model does not know.*\[0, 1\]"):
        make_protocol(train, ood=[tmp_path / "names.csv"], train_size=10, val_size=4, eval_size=None)
    mapped = make_protocol(train, ood=[tmp_path / "names.csv"], train_size=10, val_size=4, eval_size=None,
                           label_map={"neg": 0, "pos": 1})
    assert mapped.evaluation["names"].labels.tolist() == list(labels[:10])


def test_the_number_of_classes_comes_from_the_training_data_only(tmp_path):
    texts, labels = toy_sentences(40, seed=0)
    train = _write(tmp_path / "train.csv", texts, labels)
    _write(tmp_path / "three.csv", texts[:9], [0, 1, 2] * 3)
    with pytest.raises(ValueError, match=r"'three'.*label\(s\) \[2\] that the model does not know.*\[0, 1\]"):
        make_protocol(train, ood=[tmp_path / "three.csv"], train_size=10, val_size=4, eval_size=None)
    proto = make_protocol(train, ood=[tmp_path / "three.csv"], train_size=10, val_size=4, eval_size=None,
                          label_map={"2": 1})
    assert proto.n_labels() == 2 and proto.evaluation["three"].labels.tolist() == [0, 1, 1] * 3


def test_the_packaged_domains_keep_their_classes(lnsr_home, monkeypatch):
    monkeypatch.setenv("LNSR_VIZ_HOME", str(lnsr_home))
    proto = make_protocol("movie", ood=["tweets"], train_size=20, val_size=10, eval_size=50)
    assert proto.n_labels() == 2 and proto.labels["classes"] == {"0": "negative", "1": "positive"}
    assert list(proto.evaluation) == ["movie", "tweets"]


@pytest.mark.parametrize(("labels", "message"), [
    ([1, 2, 1, 2], r"got \[1, 2\], so class 0 has no example.*label_map=\{1: 0, 2: 1\}"),
    ([0, 2, 0, 2], r"got \[0, 2\], so class 1 has no example.*label_map=\{0: 0, 2: 1\}"),
])
def test_class_ids_with_a_gap_are_refused_or_mapped(labels, message):
    with pytest.raises(ValueError, match=message):
        as_dataset({"text": list("abcd"), "label": labels})
    present = sorted(set(labels))
    data = as_dataset({"text": list("abcd"), "label": labels}, label_map={present[0]: 0, present[1]: 1})
    assert data.labels.tolist() == [0, 1, 0, 1] and data.n_classes == 2


def test_a_training_set_with_an_empty_class_is_refused():
    from lnsr_viz.data.text import TextDataset

    data = TextDataset(["a", "b"], np.array([1, 2]), "gappy")
    with pytest.raises(ValueError, match=r"training data 'gappy' has no example of class 0"):
        training_classes(data)
    assert training_classes(as_dataset({"text": ["a", "b"], "label": ["x", "y"]})) == ("x", "y")


def test_a_datasets_split_is_matched_by_class_name():
    import datasets

    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["bad", "neutral", "good"])})
    split = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [2, 0, 2]}, features=feats)
    with pytest.raises(ValueError, match=r"label\(s\) \['bad', 'good'\] that the model does not know"):
        as_dataset(split, classes=("negative", "positive"))
    data = as_dataset(split, classes=("negative", "positive"), label_map={"bad": "negative", "good": "positive"})
    assert data.labels.tolist() == [1, 0, 1] and data.label_names == ("negative", "positive")


# ---------------------------------------------------------------------------------------------------- encodings
def test_a_latin1_file_is_refused_with_the_rows_counted_then_read_with_its_encoding(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncafé au lait,1\nplain,0\nnaïve,1\nok,0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv' is not UTF-8: 2 of 6 lines hold bytes .*line 2.*"
                                         r"nothing was replaced.*encoding='latin-1'"):
        as_dataset(path)
    data = as_dataset(path, encoding="latin-1")
    assert data.texts == ["café au lait", "plain", "naïve", "ok"]
    assert not any("\ufffd" in t for t in data.texts)
    with pytest.raises(ValueError, match="unknown encoding='klingon'"):
        as_dataset(path, encoding="klingon")
    utf8 = tmp_path / "bom.csv"
    utf8.write_bytes("text,label\ncafé,1\nb,0\n".encode("utf-8-sig"))
    assert as_dataset(utf8).texts == ["café", "b"]


# ---------------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("sep", ["\t", ";"])
def test_the_delimiter_of_a_csv_file_is_read_off_its_header(tmp_path, sep):
    path = _write(tmp_path / "odd.csv", ["good, really", "bad; sadly"], [1, 0], sep=sep)
    data = as_dataset(path)
    assert data.texts == ["good, really", "bad; sadly"] and data.labels.tolist() == [1, 0]


@pytest.mark.parametrize(("content", "message"), [
    (b"", r"empty.csv' is empty \(0 bytes\); expected a table with a header row"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"looks binary \(it holds NUL bytes, first at byte 8\)"),
    (b'text,label\n"unclosed,1\n', r"cannot be read as a comma-separated table"),
])
def test_empty_binary_and_broken_files_get_clear_messages(tmp_path, content, message):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        as_dataset(path)


@pytest.mark.parametrize("name", ["sentences.txt", "data.json", "noext"])
def test_a_file_of_another_format_is_told_what_format_is_expected(tmp_path, name):
    path = tmp_path / name
    path.write_text('He said "hi" and left\nanother line\n')
    with pytest.raises(ValueError, match=r"has (suffix '\.\w+'|no suffix); expected a table with a header row: "
                                         r"\.csv \(comma-, tab- or semicolon-separated"):
        read_table(path)


def test_per_file_columns_and_names_by_stem(tmp_path):
    texts, labels = toy_sentences(40, seed=0)
    train = _write(tmp_path / "train.csv", texts, labels, text_col="sentence", label_col="y")
    (tmp_path / "sub").mkdir()
    other = _write(tmp_path / "sub" / "shifted.v2.csv", texts[:8], labels[:8], text_col="review", label_col="stars")
    assert parse_data_spec(f"{train}:sentence:y") == (str(train), "sentence", "y")
    assert parse_data_spec(f"{train}:sentence") == (str(train), "sentence", None)
    assert parse_data_spec("movie") == ("movie", None, None) and data_name(f"{other}:review:stars") == "shifted"
    proto = make_protocol(f"{train}:sentence:y", ood=[f"{other}:review:stars"], train_size=10, val_size=4,
                          eval_size=None)
    assert list(proto.evaluation) == ["train", "shifted"]  # stems, not paths
    assert proto.evaluation["shifted"].texts == list(texts[:8])


def test_duplicate_ood_names_are_refused_before_any_work(tmp_path, sentiment_files):
    with pytest.raises(ValueError, match=r"out-of-domain sets named twice: \['amazon'\]"):
        ExperimentConfig(ood=["amazon", "amazon", "nyt"])
    _, ood, _ = sentiment_files
    (tmp_path / "b").mkdir()
    copy = tmp_path / "b" / ood.name
    copy.write_bytes(ood.read_bytes())
    with pytest.raises(ValueError, match=r"named twice: \['tweets_x'\]"):
        ExperimentConfig(ood=[str(ood), str(copy)])
    with pytest.raises(ValueError, match=r"the out-of-domain set 'movie' has the in-domain data's name"):
        ExperimentConfig(ood=["movie"])


def test_an_ood_file_identical_to_the_training_file_gets_a_leakage_warning(tmp_path):
    texts, labels = toy_sentences(40, seed=0)
    train = _write(tmp_path / "train.csv", texts, labels)
    same = _write(tmp_path / "again.csv", texts, labels)
    with pytest.warns(UserWarning, match=r"leakage: 40 of 40 texts of the out-of-domain set 'again' also occur in "
                                         r"the in-domain data 'train' \(the same texts"):
        make_protocol(train, ood=[same], train_size=10, val_size=4, eval_size=None)


# ---------------------------------------------------------------------------------------------------- samples
def test_sample_texts_is_seeded_and_stratified_where_there_are_labels(tmp_path):
    texts = [f"neg {i}" for i in range(40)] + [f"pos {i}" for i in range(40)]  # the first 40 rows: one class
    path = _write(tmp_path / "sorted.csv", texts, [0] * 40 + [1] * 40)
    got, how = sample_texts(path, 10, seed=0)
    assert sum(t.startswith("pos") for t in got) == 5 and len(set(got)) == 10
    assert "stratified by label (seed 0)" in how
    assert sample_texts(path, 10, seed=0)[0] == got and sample_texts(path, 10, seed=1)[0] != got
    everything, how = sample_texts(path, 500, seed=0)
    assert everything == texts and how == "all 80 rows"


def test_sample_texts_needs_texts_only(tmp_path):
    path = tmp_path / "texts.csv"
    pd.DataFrame({"sentence": [f"s {i}" for i in range(30)]}).to_csv(path, index=False)
    got, how = sample_texts(path, 5, seed=3, text_column="sentence")
    assert len(set(got)) == 5 and set(got) <= {f"s {i}" for i in range(30)} and "no label column" in how
    with pytest.raises(ValueError, match=r"has no column 'text'; its columns are \['sentence'\]"):
        sample_texts(path, 5)


# ---------------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinydata")
    model, tok = tiny_model("bert", seed=0)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root


def test_cli_probe_takes_a_text_only_csv_and_samples_it(tiny_folder, tmp_path, capsys):
    path = tmp_path / "texts.csv"
    pd.DataFrame({"text": [f"the film was fine {i}" for i in range(20)]}).to_csv(path, index=False)
    out = tmp_path / "p.csv"
    assert cli.main(["probe", "--model", str(tiny_folder / "model"), "--data", str(path), "--n", "6", "--layer",
                     "0", "--draws", "1", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "probe sentences: 6 of 20 rows at random (seed 0; no label column)" in printed
    assert pd.read_csv(out)["n_examples"].eq(6).all()


def test_cli_errors_name_the_flags_and_refuse_before_any_folder(tiny_folder, sentiment_files, tmp_path, capsys):
    train, ood, _ = sentiment_files
    results = tmp_path / "store"
    base = ["compare", "--model", str(tiny_folder / "model"), "--data", str(train), "--methods", "vanilla",
            "--seeds", "1", "--train-size", "20", "--val-size", "4", "--eval-size", "0", "--results", str(results),
            "--quiet"]
    assert cli.main([*base, "--ood", str(ood)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data 'tweets_x'") and len(err.splitlines()) == 1
    assert "--label-map negative=CLASS,positive=CLASS" in err and "label_map=" not in err
    assert cli.main([*base, "--ood", f"{ood},{ood}"]) == 2
    assert "named twice: ['tweets_x']" in capsys.readouterr().err
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncafé,1\nb,0\n".encode("latin-1"))
    assert cli.main([*base, "--ood", str(latin)]) == 2
    assert "--encoding latin-1" in capsys.readouterr().err
    assert cli.main([*base, "--ood", "", "--text-column", "sentence"]) == 2
    assert "Pass --text-column and --label-column to choose" in capsys.readouterr().err
    assert not results.exists()


def test_label_map_syntax():
    assert cli._label_map("negative=0,positive=1") == {"negative": 0, "positive": 1}
    assert cli._label_map("fresh=positive, -1=0") == {"fresh": "positive", "-1": 0}
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="expected LABEL=CLASS pairs"):
        cli._label_map("negative")


def test_the_flipped_labels_give_the_right_accuracy_end_to_end(tiny_folder, tmp_path):
    """The OOD file holds the in-domain test sentences with the other vocabulary: mapped, its scores equal the
    in-domain ones exactly (numbered per file, accuracy and positive rate would be flipped)."""
    texts, labels = toy_sentences(120, seed=0)
    keep = [i for i, y in enumerate(labels) if y or i % 3 == 0]  # 2 positive for 1 negative: a rate far from 0.5
    texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    train = _write(tmp_path / "movies.csv", texts, ["fresh" if y else "rotten" for y in labels])
    test = split_dataset(as_dataset(train), seed=0)["test"]
    _write(tmp_path / "shifted.csv", test.texts,
           ["positive" if test.label_names[k] == "fresh" else "negative" for k in test.labels])
    lmap = {"negative": "rotten", "positive": "fresh"}
    with pytest.warns(UserWarning, match="leakage"):
        result = compare(["vanilla"], [1], model=str(tiny_folder / "model"), data=str(train),
                         ood=[str(tmp_path / "shifted.csv")], label_map=lmap, train_size=24, val_size=8,
                         eval_size=None, epochs=2, batch_size=8, probe_n=4, probe_draws=1,
                         results=tmp_path / "store", progress=False, verbose=False)
    m = result.metrics[result.metrics["method"] == "vanilla"].pivot(index="metric", columns="domain", values="value")
    assert m.loc["positive_rate", "movies"] != 0.5 and m.loc["accuracy", "movies"] != 0.5
    assert m.loc["accuracy", "shifted"] == m.loc["accuracy", "movies"]
    assert m.loc["positive_rate", "shifted"] == m.loc["positive_rate", "movies"]
    assert m.loc["roc_auc", "shifted"] == pytest.approx(m.loc["roc_auc", "movies"], abs=1e-12)
    run_id = result.runs["run_id"][result.runs["method"] == "vanilla"].iloc[0]
    extra = json.loads((tmp_path / "store" / "runs" / run_id / "extra.json").read_text())
    assert extra["labels"]["label_map"] == lmap and extra["labels"]["classes"] == {"0": "fresh", "1": "rotten"}
    from lnsr_viz.viz.reports import comparison_report

    html = comparison_report(result).save(tmp_path / "r.html").read_text()
    assert "Classes and label map" in html and "negative" in html and "rotten" in html

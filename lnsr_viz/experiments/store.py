"""The run store: one folder per training run, keyed by a hash of its configuration.

Why: a sweep over methods x seeds takes hours. Asking for a run that already exists must load it instead of
retraining, and a sweep that was interrupted must pick up where it stopped, without ever reading a half-written or
damaged run as if it were good. The store gives both:

* the run id is :func:`config_hash` of the configuration (canonical JSON, sha256, 12 hex characters), so the same
  configuration always maps to the same folder, in any process and whatever the key order;
* :meth:`RunStore.save` writes everything into a hidden ``runs/.tmp-<run_id>-<uuid>/`` folder and moves it into
  place with one ``os.replace``; ``record.json`` (the list of files with their sha256) is written last, inside the
  temporary folder. A run folder is therefore either complete or absent. A crash leaves only a ``.tmp-*`` folder,
  which readers ignore; the next save of that run, :meth:`RunStore.cleanup` and ``merge_stores`` remove it (only
  when no live process holds the run's lock, so an in-progress save is never touched);
* several processes may write to one store at once (the same grid started twice, shards, a multi-worker executor):
  every save takes the run's lock (a ``filelock.FileLock`` in ``root/.locks/<run_id>.lock``), and
  :meth:`RunStore.writing` lets a caller hold it while it *makes* the run, so that another process asking for the
  same run waits (or skips it and comes back) and then loads the stored run instead of training it again;
* nothing is created on disk until the first run is written, so a command that is refused leaves no empty store;
* readers check every run: a folder with no ``record.json``, bad JSON or a checksum mismatch is reported with a
  :class:`CorruptRunWarning` naming the folder and the problem, and skipped, never silently used.

Layout::

    root/runs/<run_id>/config.json    {"run_id", "schema_version", "lnsr_viz_version", "created_at", "config": {...}}
                       metrics.csv    tidy: domain, metric, value
                       history.csv    one row per epoch (optional)
                       profile.csv    stability profile (optional)
                       extra.json     any JSON-serialisable extras (optional)
                       tables/<name>.csv  further named tidy tables (optional, ``tables=``)
                       tables/<name>.npz  a named table with float16 columns, stored compactly (optional)
                       checkpoint/    whatever checkpoint_fn wrote (optional)
                       record.json    written last: {"run_id", "schema_version", "completed_at", "files": {...}}

Intended use (this is what makes a sweep resumable)::

    store = RunStore("results")
    for cfg in grid:
        if store.exists(cfg):
            run = store.load(cfg)              # cache hit: no training
        else:
            model, metrics, history = train(cfg)
            store.save(cfg, metrics=metrics, history=history, profile=None)
    metrics = store.load_table("metrics")      # run_id + config columns + domain, metric, value

``load_table`` prepends ``run_id`` and the flattened configuration (nested keys joined with ``"."``), so a config
with top-level ``method`` and ``seed`` keys yields the ``run_id, method, seed, domain, metric, value`` table of
``docs/architecture.md``.

Only plain JSON values (dict with str keys, list, tuple, str, int, float, bool, None, and numpy scalars) may appear
in a configuration: anything else (a ``Path``, a model object, NaN) is refused with a message saying what to do,
because a value without a canonical text form cannot give a stable run id.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from ..utils.io import atomic_write_json, dumps_json, sha256_file
from ..utils.validation import check_choice

__all__ = [
    "SCHEMA_VERSION",
    "TABLES",
    "CorruptRunWarning",
    "TABLE_NAME_PATTERN",
    "Run",
    "RunStore",
    "config_hash",
    "canonical_json",
    "flatten_config",
]

#: Version of the on-disk layout; bump it when the layout changes incompatibly.
SCHEMA_VERSION = 1
#: The per-run tables and their file names.
TABLES: dict[str, str] = {"metrics": "metrics.csv", "history": "history.csv", "profile": "profile.csv",
                          "drift": "drift.csv"}
_METRICS_COLUMNS = ("domain", "metric", "value")
#: What a name of ``RunStore.save(tables=...)`` may look like (it becomes a file name inside ``tables/``).
TABLE_NAME_PATTERN = r"^[a-z0-9_]+$"
_TABLE_NAME_RE = re.compile(TABLE_NAME_PATTERN)
_TABLES_DIR = "tables"
_TABLE_SUFFIXES = (".csv", ".npz")
# the float16 block and the column order inside a compact (.npz) table
_NPZ_VALUES, _NPZ_VALUE_COLUMNS, _NPZ_COLUMNS = "__values__", "__value_columns__", "__columns__"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: the same table always gives the same bytes
_RUN_ID_RE = re.compile(r"^[0-9a-f]{12}$")
_TMP_PREFIX = ".tmp-"
# the run id inside a temporary folder's name: .tmp-<id>-<uuid>[-old] (saves) or .tmp-merge-<id>[-<uuid>] (merges)
_TMP_RUN_ID_RE = re.compile(r"^\.tmp-(?:merge-)?([0-9a-f]{12})(?:-|$)")
_LOCKS = ".locks"
_RECORD = "record.json"
_CONFIG = "config.json"
_EXTRA = "extra.json"
_CHECKPOINT = "checkpoint"


class CorruptRunWarning(UserWarning):
    """A run folder is incomplete or damaged and was skipped."""


# --------------------------------------------------------------------------------------------------------------
# canonical configuration and hashing
# --------------------------------------------------------------------------------------------------------------
def _canonical(value: Any, where: str) -> Any:
    """Turn ``value`` into plain JSON types, or raise a ``TypeError`` naming where the offending value sits."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        if isinstance(value, (np.bool_, np.integer, np.floating)):
            return _canonical(value.item(), where)
        raise TypeError(f"{where} is a numpy {type(value).__name__}, which has no JSON form; use a plain value.")
    if isinstance(value, int):
        return int(value)  # int subclasses (IntEnum) become plain ints
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(
                f"{where} is {value!r}; NaN and infinity are not valid JSON and cannot key a run. Use None or a "
                "string such as 'inf'."
            )
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(
                    f"{where} has a key {k!r} of type {type(k).__name__}; configuration keys must be strings "
                    "(JSON would silently turn 1 and '1' into the same key)."
                )
            out[k] = _canonical(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    hint = " Convert it with str(...) first." if isinstance(value, os.PathLike) else ""
    raise TypeError(
        f"{where} is a {type(value).__name__} ({value!r:.80}), which is not JSON-serialisable, so it cannot be part "
        f"of a run configuration. Use str, int, float, bool, None, list or dict values.{hint}"
    )


def canonical_json(config: Mapping[str, Any]) -> str:
    """The canonical JSON text of a configuration: sorted keys, no whitespace, tuples as lists, ASCII only.

    Floats are written with Python's shortest round-trip ``repr`` (``1e-05``, ``0.1``), which is the same in every
    process and on every platform; ``1`` and ``1.0`` stay different because they are different types in JSON.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (e.g. a dict); got {type(config).__name__}.")
    plain = _canonical(config, "config")
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(config: Mapping[str, Any]) -> str:
    """First 12 hex characters of the sha256 of :func:`canonical_json` (the run id).

    Stable across processes, Python sessions and key order; any change of a value changes it.

    >>> config_hash({"method": "lnsr", "seed": 1}) == config_hash({"seed": 1, "method": "lnsr"})
    True
    """
    return hashlib.sha256(canonical_json(config).encode("ascii")).hexdigest()[:12]


def flatten_config(config: Mapping[str, Any], *, sep: str = ".") -> dict[str, Any]:
    """Flatten nested mappings into one level, joining keys with ``sep`` (``{"a": {"b": 1}} -> {"a.b": 1}``).

    Lists become tuples so that the values can be used as DataFrame group keys.
    """
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{prefix}{sep}{k}" if prefix else str(k), v)
        elif isinstance(value, list):
            out[prefix] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            out[prefix] = value

    for key, val in config.items():
        walk(str(key), val)
    return out


def _read_csv(path: Path) -> pd.DataFrame:
    # keep_default_na=False: a domain called "NA" or "null" stays a string; only empty cells are missing values.
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:  # a DataFrame without columns was saved
        return pd.DataFrame()


def _write_durable(path: Path, text: str) -> None:
    """Write and fsync a new file (inside a save's temporary folder, where atomicity comes from the folder)."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _check_table_name(name: Any) -> str:
    """Return a valid extra-table name, or raise ``ValueError`` saying what a name may be."""
    if not isinstance(name, str) or not _TABLE_NAME_RE.match(name):
        raise ValueError(
            f"table name {name!r} is not allowed: names of tables= become file names, so they may use only lowercase "
            "letters, digits and underscores (e.g. 'theory', 'representations')."
        )
    if name in TABLES:
        raise ValueError(
            f"table name {name!r} is one of the built-in tables {sorted(TABLES)}; pass it as {name}= instead, or "
            "choose another name."
        )
    return name


def _is_compact(table: pd.DataFrame) -> bool:
    """A table with float16 columns is stored as ``.npz`` (float16 kept as float16), any other as CSV."""
    return any(dtype == np.float16 for dtype in table.dtypes)


def _npz_column(table: pd.DataFrame, column: str, where: str) -> np.ndarray:
    """One non-float16 column as a numpy array that ``np.load(allow_pickle=False)`` can read back."""
    values = table[column].to_numpy()
    if values.dtype == object:
        if not all(isinstance(v, str) for v in values):
            raise ValueError(
                f"{where}: column {column!r} mixes types or holds missing values; a table with float16 columns is "
                "stored as .npz, where every other column must be all numbers, all booleans or all strings."
            )
        return values.astype(str)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{where}: column {column!r} has dtype {values.dtype}; a table with float16 columns can "
                         "also hold only numeric, boolean or string columns.")
    return values


def _write_npz(path: Path, table: pd.DataFrame, where: str) -> None:
    """Write a table with float16 columns as an uncompressed-member ``.npz`` with fixed timestamps; fsync it."""
    import io
    import zipfile

    columns = [str(c) for c in table.columns]
    if len(set(columns)) != len(columns) or not all(isinstance(c, str) for c in table.columns):
        raise ValueError(f"{where}: column names must be distinct strings; got {list(table.columns)[:8]}.")
    value_cols = [c for c in table.columns if table[c].dtype == np.float16]
    arrays = {
        _NPZ_COLUMNS: np.array(columns, dtype=str),
        _NPZ_VALUE_COLUMNS: np.array(value_cols, dtype=str),
        _NPZ_VALUES: table[value_cols].to_numpy(dtype=np.float16).reshape(len(table), len(value_cols)),
    }
    others = [c for c in table.columns if c not in set(value_cols)]
    for i, c in enumerate(others):
        arrays[f"col{i}"] = _npz_column(table, c, where)
    with open(path, "wb") as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())


def _read_npz(path: Path) -> pd.DataFrame:
    """Read a table written by :func:`_write_npz` (float16 columns come back as float16)."""
    with np.load(path, allow_pickle=False) as z:
        columns = [str(c) for c in z[_NPZ_COLUMNS]]
        value_cols = [str(c) for c in z[_NPZ_VALUE_COLUMNS]]
        values = z[_NPZ_VALUES]
        others = [c for c in columns if c not in set(value_cols)]
        data: dict[str, Any] = {c: z[f"col{i}"] for i, c in enumerate(others)}
    for j, c in enumerate(value_cols):
        data[c] = values[:, j]
    frame = pd.DataFrame(data, index=pd.RangeIndex(len(values)))
    for c in others:
        if frame[c].dtype.kind == "U":
            frame[c] = frame[c].astype(object)
    return frame[columns]


def _extra_tables(files: Mapping[str, Any]) -> dict[str, str]:
    """``{name: relative file}`` of the extra tables a run's record lists (``tables/<name>.csv`` or ``.npz``)."""
    out = {}
    for rel in files:
        parts = rel.split("/")
        if len(parts) == 2 and parts[0] == _TABLES_DIR:
            stem, dot, suffix = parts[1].rpartition(".")
            if dot and f".{suffix}" in _TABLE_SUFFIXES and _TABLE_NAME_RE.match(stem) and stem not in TABLES:
                out[stem] = rel
    return dict(sorted(out.items()))


def _read_table(path: Path) -> pd.DataFrame:
    return _read_npz(path) if path.suffix == ".npz" else _read_csv(path)


def _package_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("lnsr_viz")
    except PackageNotFoundError:
        module = sys.modules.get("lnsr_viz")
        return str(getattr(module, "__version__", "unknown"))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One complete, verified run loaded from a :class:`RunStore`.

    Attributes
    ----------
    run_id : str
    path : Path
        The run folder.
    config : dict
        The configuration as it was hashed (``config_hash(run.config) == run.run_id``).
    metrics : DataFrame
        Tidy ``domain, metric, value``.
    history, profile, drift : DataFrame or None
        ``None`` when the run was saved without them (``drift``: per-layer drift from the pre-trained model).
    extra : dict
        ``extra=`` of :meth:`RunStore.save` (empty if none).
    tables : dict of str to DataFrame
        ``tables=`` of :meth:`RunStore.save`, by name (empty for runs saved without them, e.g. every run stored
        before tables existed). Float16 columns of a compact table come back as float16.
    meta : dict
        ``schema_version``, ``lnsr_viz_version``, ``created_at``, ``completed_at``.
    """

    run_id: str
    path: Path
    config: dict[str, Any]
    metrics: pd.DataFrame
    history: pd.DataFrame | None = None
    profile: pd.DataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    drift: pd.DataFrame | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def checkpoint_path(self) -> Path | None:
        """The ``checkpoint/`` folder, or ``None`` if the run was saved without one."""
        p = self.path / _CHECKPOINT
        return p if p.is_dir() else None


class _BadRun(Exception):
    """Internal: why a run folder cannot be used."""


class RunStore:
    """A folder of runs keyed by configuration hash.

    Parameters
    ----------
    root : str or path-like
        The store folder; runs live in ``root/runs/``. Created when the first run is saved, not before (a refused
        command leaves nothing behind).
    read_only : bool, default=False
        Open an existing store for reading only (e.g. results on a read-only mount). Otherwise the constructor
        checks that it can create and delete a file in ``root/runs/`` (or, when it does not exist yet, in the
        nearest existing folder above it) and raises ``PermissionError`` at once if it cannot, instead of failing
        after hours of training at the first ``save``.

    Several processes may use one store at the same time: see :meth:`writing`.

    See the module docstring for the layout and the intended cache / resume pattern.
    """

    def __init__(self, root: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.read_only = bool(read_only)
        self.runs_dir = self.root / "runs"
        self._locks: dict[str, FileLock] = {}
        if self.read_only:
            if not self.runs_dir.is_dir():
                raise FileNotFoundError(
                    f"RunStore(read_only=True) needs an existing store, but {self.runs_dir} is not a folder. "
                    "Check the path, or open it with read_only=False to create it."
                )
            return
        try:
            folder = self.runs_dir
            while not folder.exists() and folder != folder.parent:  # the folder the first save will create in
                folder = folder.parent
            if not folder.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(folder))
            probe = folder / f".write-probe-{uuid.uuid4().hex}"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as exc:
            raise PermissionError(
                f"RunStore root {str(self.root)!r} is not writable: cannot create files in {str(self.runs_dir)!r} "
                f"({type(exc).__name__}: {exc}). Pass a folder you can write to, or RunStore(root, read_only=True) "
                "to only read existing runs."
            ) from exc

    def __repr__(self) -> str:
        ro = ", read_only=True" if self.read_only else ""
        return f"RunStore({str(self.root)!r}{ro})"

    # ---- several writers -------------------------------------------------------------------------------------
    def _lock(self, run_id: str) -> FileLock:
        """The run's lock (one object per run id and process: ``FileLock`` is reentrant for its holder)."""
        lock = self._locks.get(run_id)
        if lock is None:
            folder = self.root / _LOCKS
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                (folder / ".gitignore").write_text("*\n", encoding="utf-8")  # lock files are never results
            lock = FileLock(str(folder / f"{run_id}.lock"), is_singleton=True)
            self._locks[run_id] = lock
        return lock

    @contextlib.contextmanager
    def writing(self, config_or_run_id: Mapping[str, Any] | str, *, wait: bool = True) -> Iterator[bool]:
        """Hold the run's lock while this process makes the run (trains it, then :meth:`save`).

        Yields ``True`` once the lock is held. With ``wait=False`` it yields ``False`` at once when another process
        holds it (that process is making the run: skip it and come back later, with ``wait=True``). Inside the
        block, check :meth:`exists` first: a run that another process finished meanwhile is then loaded, not made
        again. :meth:`save` takes the same lock, so it works with or without this block. A read-only store takes
        no lock (and yields ``True``): it can load runs but not save them.

        >>> with store.writing(config, wait=False) as mine:          # doctest: +SKIP
        ...     if mine and not store.exists(config):
        ...         store.save(config, metrics=train(config))
        """
        if self.read_only:  # nothing can be written here, so there is nothing to guard (save() refuses)
            yield True
            return
        lock = self._lock(self._resolve_id(config_or_run_id))
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def _remove_stale_temporaries(self, run_id: str) -> None:
        """Remove this run's temporary folders; the caller holds the run's lock, so no live writer owns them."""
        if not self.runs_dir.is_dir():
            return
        for p in self.runs_dir.glob(f"{_TMP_PREFIX}*"):
            m = _TMP_RUN_ID_RE.match(p.name)
            if m and m.group(1) == run_id and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)

    # ---- ids and paths -------------------------------------------------------------------------------------
    def run_id(self, config: Mapping[str, Any]) -> str:
        """The run id of ``config`` (:func:`config_hash`)."""
        return config_hash(config)

    def _resolve_id(self, config_or_run_id: Mapping[str, Any] | str) -> str:
        if isinstance(config_or_run_id, str):
            if not _RUN_ID_RE.match(config_or_run_id):
                raise ValueError(
                    f"{config_or_run_id!r} is not a run id (12 lowercase hex characters). Pass a run id from "
                    "list_runs()['run_id'] or the configuration mapping itself."
                )
            return config_or_run_id
        return config_hash(config_or_run_id)

    def run_dir(self, config_or_run_id: Mapping[str, Any] | str) -> Path:
        """The folder where the run of this configuration (or run id) lives or would live."""
        return self.runs_dir / self._resolve_id(config_or_run_id)

    def _run_folders(self) -> Iterator[Path]:
        if not self.runs_dir.is_dir():
            return
        for p in sorted(self.runs_dir.iterdir()):
            if p.name.startswith("."):  # .tmp-* of a save in progress or interrupted; hidden files
                continue
            if p.is_dir():
                yield p

    # ---- verification --------------------------------------------------------------------------------------
    def _verify(self, path: Path, *, checkpoint_hashes: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return ``(config_doc, record)`` of a complete, intact run, or raise ``_BadRun`` saying what is wrong.

        Every listed file must exist with the recorded size; files outside ``checkpoint/`` are also re-hashed
        (they are small). Checkpoint files are re-hashed only with ``checkpoint_hashes=True`` because a model
        checkpoint can be hundreds of megabytes.
        """
        record_path = path / _RECORD
        if not record_path.is_file():
            raise _BadRun("record.json is missing, so the run never finished saving (incomplete)")
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _BadRun(f"record.json is not valid JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
            raise _BadRun("record.json has no 'files' table")
        version = record.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise _BadRun(
                f"record.json has schema_version {version!r}; this lnsr_viz reads up to {SCHEMA_VERSION} "
                "(written by a newer lnsr_viz?)"
            )
        if record.get("run_id") != path.name:
            raise _BadRun(f"record.json belongs to run {record.get('run_id')!r}, not to folder {path.name!r}")
        files = record["files"]
        for name in (_CONFIG, TABLES["metrics"]):
            if name not in files:
                raise _BadRun(f"record.json does not list {name}")
        for rel, info in files.items():
            if not isinstance(info, dict) or rel.startswith("/") or ".." in rel.split("/"):
                raise _BadRun(f"record.json has a malformed entry for {rel!r}")
            fp = path / rel
            if not fp.is_file():
                raise _BadRun(f"{rel} is listed in record.json but missing")
            if fp.stat().st_size != info.get("bytes"):
                raise _BadRun(f"{rel} has {fp.stat().st_size} bytes, record.json says {info.get('bytes')}")
            if (checkpoint_hashes or not rel.startswith(_CHECKPOINT + "/")) and sha256_file(fp) != info.get("sha256"):
                raise _BadRun(f"checksum mismatch for {rel} (the file changed after the run was saved)")
        try:
            doc = json.loads((path / _CONFIG).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _BadRun(f"config.json is not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
            raise _BadRun("config.json has no 'config' mapping")
        try:
            actual = config_hash(doc["config"])
        except TypeError as exc:
            raise _BadRun(f"config.json holds a configuration that cannot be hashed ({exc})") from None
        if actual != path.name:
            raise _BadRun(f"the stored configuration hashes to {actual}, not to the folder name")
        return doc, record

    def _warn(self, path: Path, problem: str) -> None:
        warnings.warn(
            f"Skipping run folder {str(path)!r}: {problem}. Delete the folder to redo this run "
            "(or save it again with overwrite=True).",
            CorruptRunWarning,
            stacklevel=3,
        )

    def _complete_runs(self) -> Iterator[tuple[Path, dict[str, Any], dict[str, Any]]]:
        for path in self._run_folders():
            try:
                doc, record = self._verify(path)
            except _BadRun as exc:
                self._warn(path, str(exc))
                continue
            yield path, doc, record

    # ---- public API ----------------------------------------------------------------------------------------
    def exists(self, config_or_run_id: Mapping[str, Any] | str) -> bool:
        """Whether a complete, intact run of this configuration is stored (the cache-hit test).

        A damaged run counts as absent (with a :class:`CorruptRunWarning`), so a resumed sweep redoes it and
        :meth:`save` replaces it.
        """
        path = self.run_dir(config_or_run_id)
        if not path.is_dir():
            return False
        try:
            self._verify(path)
        except _BadRun as exc:
            self._warn(path, str(exc))
            return False
        return True

    def save(
        self,
        config: Mapping[str, Any],
        *,
        metrics: pd.DataFrame,
        history: pd.DataFrame | None = None,
        profile: pd.DataFrame | None = None,
        extra: Mapping[str, Any] | None = None,
        drift: pd.DataFrame | None = None,
        checkpoint_fn: Callable[[Path], None] | None = None,
        overwrite: bool = False,
        tables: Mapping[str, pd.DataFrame] | None = None,
    ) -> Path:
        """Store one run atomically and return its folder.

        Parameters
        ----------
        config : mapping
            JSON-serialisable configuration; its :func:`config_hash` is the run id.
        metrics : DataFrame
            Tidy metrics with at least the columns ``domain, metric, value``.
        history, profile, drift : DataFrame, optional
            Per-epoch history, stability profile and per-layer drift (any columns).
        extra : mapping, optional
            Any other JSON-serialisable results (numpy values are converted), stored in ``extra.json``.
        tables : mapping of str to DataFrame, optional
            Further named tidy tables (e.g. a run's own analysis), stored as ``tables/<name>.csv`` and read back
            as ``Run.tables[name]`` and by :meth:`load_table`. Names use lowercase letters, digits and underscores
            and may not be a built-in table's name (``metrics``, ``history``, ``profile``, ``drift``). A table with
            float16 columns (e.g. sentence representations) is stored compactly as ``tables/<name>.npz`` instead:
            the float16 block as one array, the other columns (numbers, booleans or strings) beside it.
        checkpoint_fn : callable, optional
            Called as ``checkpoint_fn(folder)`` with an existing empty ``checkpoint/`` folder inside the temporary
            run folder, e.g. ``lambda p: model.save_pretrained(p)``.
        overwrite : bool, default=False
            Replace an existing complete run. Without it, saving a run that exists raises ``FileExistsError``
            (a damaged or incomplete folder of the same id is always replaced).

        Everything is written into ``runs/.tmp-<run_id>-<uuid>/``, ``record.json`` last, and the folder is then
        moved into place with ``os.replace``. If anything raises (including ``checkpoint_fn``), the temporary folder
        is removed and nothing becomes visible. The save holds the run's lock (:meth:`writing`); temporary folders
        of the same run left by a killed process are removed first.
        """
        if self.read_only:
            raise PermissionError(f"{self!r} is read-only; open it with read_only=False to save runs.")
        run_id = config_hash(config)  # also validates the configuration
        plain_config = _canonical(config, "config")  # plain JSON types, the caller's key order kept for listings
        if not isinstance(metrics, pd.DataFrame):
            raise ValueError(f"metrics must be a pandas DataFrame; got {type(metrics).__name__}.")
        missing = [c for c in _METRICS_COLUMNS if c not in metrics.columns]
        if missing:
            raise ValueError(
                f"metrics must be the tidy table with columns {list(_METRICS_COLUMNS)}; missing {missing} "
                f"(got {list(metrics.columns)}). lnsr_viz.analysis.evaluation.evaluate returns this shape."
            )
        for name, table in (("history", history), ("profile", profile), ("drift", drift)):
            if table is not None and not isinstance(table, pd.DataFrame):
                raise ValueError(f"{name} must be a pandas DataFrame or None; got {type(table).__name__}.")
        if extra is not None and not isinstance(extra, Mapping):
            raise ValueError(f"extra must be a mapping or None; got {type(extra).__name__}.")
        if tables is not None and not isinstance(tables, Mapping):
            raise ValueError(f"tables must be a mapping {{name: DataFrame}} or None; got {type(tables).__name__}.")
        for name, table in (tables or {}).items():
            _check_table_name(name)
            if not isinstance(table, pd.DataFrame):
                raise ValueError(f"tables[{name!r}] must be a pandas DataFrame; got {type(table).__name__}.")

        with self.writing(run_id):
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries(run_id)
            return self._save_locked(run_id, plain_config, metrics=metrics, history=history, profile=profile,
                                     extra=extra, drift=drift, checkpoint_fn=checkpoint_fn, overwrite=overwrite,
                                     tables=tables)

    def _save_locked(self, run_id: str, plain_config: dict[str, Any], *, metrics: pd.DataFrame,
                     history: pd.DataFrame | None, profile: pd.DataFrame | None, extra: Mapping[str, Any] | None,
                     drift: pd.DataFrame | None, checkpoint_fn: Callable[[Path], None] | None,
                     overwrite: bool, tables: Mapping[str, pd.DataFrame] | None = None) -> Path:
        final = self.runs_dir / run_id
        if final.exists() and not overwrite:
            try:
                self._verify(final)
            except _BadRun as exc:
                warnings.warn(f"Replacing damaged run folder {str(final)!r} ({exc}).", CorruptRunWarning, stacklevel=3)
            else:
                raise FileExistsError(
                    f"Run {run_id} already exists in {str(final)!r}. Load it with store.load(config), or pass "
                    "overwrite=True to replace it."
                )

        tmp = self.runs_dir / f"{_TMP_PREFIX}{run_id}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            doc = {
                "run_id": run_id,
                "schema_version": SCHEMA_VERSION,
                "lnsr_viz_version": _package_version(),
                "created_at": _now(),
                "config": plain_config,
            }
            _write_durable(tmp / _CONFIG, dumps_json(doc, sort_keys=False))
            for name, table in (("metrics", metrics), ("history", history), ("profile", profile), ("drift", drift)):
                if table is not None:
                    _write_durable(tmp / TABLES[name], table.to_csv(index=False, lineterminator="\n"))
            if extra is not None:
                _write_durable(tmp / _EXTRA, dumps_json(dict(extra)))
            if tables:
                (tmp / _TABLES_DIR).mkdir()
                for name, table in tables.items():
                    if _is_compact(table):
                        _write_npz(tmp / _TABLES_DIR / f"{name}.npz", table, f"tables[{name!r}]")
                    else:
                        _write_durable(tmp / _TABLES_DIR / f"{name}.csv",
                                       table.to_csv(index=False, lineterminator="\n"))
            if checkpoint_fn is not None:
                ckpt = tmp / _CHECKPOINT
                ckpt.mkdir()
                checkpoint_fn(ckpt)
                if not any(ckpt.iterdir()):
                    ckpt.rmdir()
            files = {}
            for fp in sorted(p for p in tmp.rglob("*") if p.is_file()):
                rel = fp.relative_to(tmp).as_posix()
                files[rel] = {"sha256": sha256_file(fp), "bytes": fp.stat().st_size}
            record = {"run_id": run_id, "schema_version": SCHEMA_VERSION, "completed_at": _now(), "files": files}
            atomic_write_json(tmp / _RECORD, record)
            self._move_into_place(tmp, final, run_id)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _move_into_place(self, tmp: Path, final: Path, run_id: str) -> None:
        old = None
        if final.exists():
            # os.replace cannot replace a non-empty folder: move the old one aside (as a hidden .tmp-* folder that
            # readers ignore), put the new one in place, then delete the old one.
            old = self.runs_dir / f"{_TMP_PREFIX}{run_id}-{uuid.uuid4().hex}-old"
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError as exc:
            if old is not None and not final.exists():
                os.replace(old, final)
            raise FileExistsError(
                f"Could not move run {run_id} into {str(final)!r} ({exc}); another process may have saved the same "
                "run at the same time. Check store.exists(config)."
            ) from exc
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, config_or_run_id: Mapping[str, Any] | str, *, verify_checkpoint: bool = False) -> Run:
        """Load a complete run by configuration or run id.

        Parameters
        ----------
        config_or_run_id : mapping or str
        verify_checkpoint : bool, default=False
            Also re-hash the checkpoint files (slow for big models). Tables and JSON files are always verified.

        Raises
        ------
        FileNotFoundError
            No run of that id.
        ValueError
            The run folder is incomplete or damaged (the message says what is wrong).
        """
        run_id = self._resolve_id(config_or_run_id)
        path = self.runs_dir / run_id
        if not path.is_dir():
            raise FileNotFoundError(
                f"No run {run_id} in {str(self.runs_dir)!r}. Check store.exists(config) first, or train and "
                "store.save(config, ...) it."
            )
        try:
            doc, record = self._verify(path, checkpoint_hashes=verify_checkpoint)
        except _BadRun as exc:
            raise ValueError(
                f"Run folder {str(path)!r} cannot be used: {exc}. Delete it and run again, or save it with "
                "overwrite=True."
            ) from None
        files = record["files"]
        tables = {name: _read_csv(path / fname) if fname in files else None for name, fname in TABLES.items()}
        extra = json.loads((path / _EXTRA).read_text(encoding="utf-8")) if _EXTRA in files else {}
        named = {name: _read_table(path / rel) for name, rel in _extra_tables(files).items()}
        meta = {
            "schema_version": record.get("schema_version"),
            "lnsr_viz_version": doc.get("lnsr_viz_version"),
            "created_at": doc.get("created_at"),
            "completed_at": record.get("completed_at"),
        }
        return Run(
            run_id=run_id,
            path=path,
            config=doc["config"],
            metrics=tables["metrics"],
            history=tables["history"],
            profile=tables["profile"],
            extra=extra,
            meta=meta,
            drift=tables["drift"],
            tables=named,
        )

    def list_runs(self) -> pd.DataFrame:
        """One row per complete run: ``run_id`` and the flattened configuration (nested keys joined with ".").

        Damaged or incomplete folders are reported with a :class:`CorruptRunWarning` and left out; ``.tmp-*``
        folders are ignored. Configurations may have different keys; missing entries are NaN.
        """
        rows = [{"run_id": path.name, **flatten_config(doc["config"])} for path, doc, _ in self._complete_runs()]
        if not rows:
            return pd.DataFrame(columns=["run_id"])
        return pd.DataFrame(rows)

    def load_table(self, name: str) -> pd.DataFrame:
        """Concatenate one table over all complete runs: a built-in one (``"metrics"``, ``"history"``, ``"profile"``
        or ``"drift"``) or a named one saved with ``tables=`` (e.g. ``"theory"``).

        Each run's rows get ``run_id`` and the flattened configuration prepended (e.g. ``method``, ``seed``), so
        the result can go straight into :func:`lnsr_viz.analysis.stats.summarize`. A configuration key that is already a
        column of the stored table keeps the table's values. Runs saved without the table are skipped; damaged
        runs are reported with a :class:`CorruptRunWarning` and skipped. A name that is neither built in nor stored
        by any run is refused, listing the names there are.
        """
        owner = "RunStore.load_table"
        runs = list(self._complete_runs())
        if name not in TABLES:
            stored = sorted({n for _, _, record in runs for n in _extra_tables(record["files"])})
            check_choice("name", name, [*TABLES, *stored], owner=owner)
        parts = []
        for path, doc, record in runs:
            rel = TABLES[name] if name in TABLES else _extra_tables(record["files"]).get(name)
            if rel is None or rel not in record["files"]:
                continue
            table = _read_table(path / rel)
            if "run_id" in table.columns:  # the folder name is the authority on the run id
                table = table.drop(columns="run_id")
            front = {"run_id": path.name}
            front.update({k: v for k, v in flatten_config(doc["config"]).items() if k not in table.columns})
            # lists of values (not scalars) so that tuple-valued config entries are not broadcast as arrays
            front_df = pd.DataFrame({k: [v] * len(table) for k, v in front.items()}, index=table.index)
            parts.append(pd.concat([front_df, table], axis=1))
        if not parts:
            return pd.DataFrame(columns=["run_id", *(_METRICS_COLUMNS if name == "metrics" else ())])
        return pd.concat(parts, ignore_index=True, sort=False)

    def cleanup(self, *, older_than_s: float = 0.0) -> list[Path]:
        """Remove the ``.tmp-*`` folders left by interrupted saves and merges, and return their paths.

        A folder whose run's lock is held by a live process (a save or merge in progress) is left alone, so this is
        safe while other processes write to the store; ``older_than_s`` also spares folders touched more recently.
        """
        if self.read_only:
            raise PermissionError(f"{self!r} is read-only; cleanup() needs read_only=False.")
        removed: list[Path] = []
        if not self.runs_dir.is_dir():
            return removed
        now = time.time()
        for p in sorted(self.runs_dir.glob(f"{_TMP_PREFIX}*")):
            if not p.is_dir() or now - p.stat().st_mtime < older_than_s:
                continue
            m = _TMP_RUN_ID_RE.match(p.name)
            if m is None:  # not one of ours: only its age speaks for it
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
                continue
            with self.writing(m.group(1), wait=False) as free:
                if free:
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
        return removed

    def import_run(self, source: str | os.PathLike[str]) -> bool:
        """Copy a complete run folder of another store into this one (``merge``); ``False`` if it is already here.

        The copy goes through a temporary folder under the run's lock, like :meth:`save`, so a killed merge leaves
        only a temporary folder that the next merge of that run (or :meth:`cleanup`) removes.
        """
        if self.read_only:
            raise PermissionError(f"{self!r} is read-only; import_run() needs read_only=False.")
        source = Path(source)
        run_id = source.name
        self._resolve_id(run_id)  # a run folder's name is its id
        with self.writing(run_id):
            if self.exists(run_id):
                return False
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries(run_id)
            tmp = self.runs_dir / f"{_TMP_PREFIX}merge-{run_id}-{uuid.uuid4().hex}"
            try:
                shutil.copytree(source, tmp)  # the caller verified the source (RunStore.load)
                self._move_into_place(tmp, self.runs_dir / run_id, run_id)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return True

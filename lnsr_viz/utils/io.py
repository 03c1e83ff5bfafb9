"""Files written whole or not at all, and file digests: the one home of the package's atomic writers and sha256.

Every file the package writes for others to read (run records, tables, figures, reports, the study's outputs) goes
through :func:`atomic_write_bytes`: a temporary file in the same folder (same file system), flushed and fsync'ed,
then ``os.replace``-d over the target, so that a reader sees either the old file or the complete new one, and a
failure leaves the old file untouched and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_csv", "atomic_write_json", "dumps_json",
           "sha256_file"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one.

    The bytes go to a temporary file in the same folder, are flushed and fsync'ed, and the file is then
    ``os.replace``-d over ``path``. Parent folders are created. A file that is replaced keeps its permissions; a new
    file gets the usual ones (``0o666`` minus the umask). If anything fails, the temporary file is removed and the
    previous file (if any) is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = (path.stat().st_mode & 0o777) if path.exists() else None
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open(path, "w")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` atomically (see :func:`atomic_write_bytes`), byte for byte: no newline translation."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_csv(path: str | os.PathLike[str], df: Any, *, index: bool = False) -> Path:
    """Write a DataFrame as CSV atomically (see :func:`atomic_write_text`). Missing values are written as ``""``."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"atomic_write_csv expects a pandas DataFrame; got {type(df).__name__}.")
    return atomic_write_text(path, df.to_csv(index=index, lineterminator="\n"))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON-serialisable.")


def dumps_json(obj: Any, *, sort_keys: bool = True) -> str:
    """Indented JSON text ending in a newline; numpy scalars/arrays, sets and paths are converted, NaN allowed."""
    return json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default, allow_nan=True) + "\n"


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON (:func:`dumps_json`) atomically."""
    return atomic_write_text(path, dumps_json(obj))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 digest of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

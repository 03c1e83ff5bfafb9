"""Tests for the packaging files: requirements.lock, environment.yml (generated from it), pyproject.toml's ranges,
the Makefile's targets and the CI script.

They catch drift: a lock that no longer matches the tested environment, an environment.yml not regenerated, or a
dependency range in pyproject.toml that excludes the version actually pinned and tested.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _lock() -> dict[str, Version]:
    pins = {}
    for raw in (ROOT / "requirements.lock").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _sync_module():
    spec = importlib.util.spec_from_file_location("sync_environment", ROOT / "tools" / "sync_environment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_pins_torch_cpu_and_excludes_the_project():
    pins = _lock()
    assert pins["torch"] == Version("2.13.0") and "+cpu" not in str(pins["torch"])
    assert "lnsr-viz" not in pins
    assert len(pins) > 100


def test_environment_yml_agrees_with_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    from_env = {canonicalize_name(p.split("==")[0]): Version(p.split("==")[1]) for p in pip_section}
    assert from_env == _lock()
    sync = _sync_module()
    assert (ROOT / "environment.yml").read_text() == sync.render_environment(sync.read_lock(ROOT / "requirements.lock"))


def test_pyproject_ranges_admit_the_pinned_versions():
    project = _pyproject()["project"]
    pins = _lock()
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not pinned in requirements.lock"
        assert req.specifier, f"{text}: give a compatible range, not a bare name"
        assert req.specifier.contains(pins[name], prereleases=True), f"{text} excludes the pinned {pins[name]}"
    names = {canonicalize_name(Requirement(t).name) for t in project["dependencies"]}
    assert {"torch", "transformers", "captum", "umap-learn", "plotly", "datasets"} <= names


def test_pyproject_metadata():
    config = _pyproject()
    assert config["project"]["requires-python"] == ">=3.11"
    assert config["project"]["scripts"] == {"lnsr-viz": "lnsr_viz.cli:main"}
    assert config["tool"]["setuptools"]["packages"] == ["lnsr_viz"]
    assert config["tool"]["ruff"]["line-length"] == 120
    pytest_cfg = config["tool"]["pytest"]["ini_options"]
    assert pytest_cfg["testpaths"] == ["tests"]
    assert {m.split(":")[0] for m in pytest_cfg["markers"]} == {"slow", "browser"}


def test_lock_matches_the_running_environment():
    """The lock must describe the environment the tests run in (refresh it after changing the venv)."""
    mismatched = {}
    for name, pinned in _lock().items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            mismatched[name] = "not installed"
            continue
        if Version(installed.base_version) != Version(pinned.base_version) or (pinned.local and pinned != installed):
            mismatched[name] = str(installed)
    assert mismatched == {}, f"installed versions differ from requirements.lock: {mismatched}"


@pytest.mark.parametrize("target", ["install", "assets", "test", "demo", "lint", "clean"])
def test_makefile_targets_dry_run(target, tmp_path):
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    if target in {"install", "test", "demo"}:
        assert f"{venv}/bin/python -m pip install -r requirements.lock" in result.stdout
        assert f"{venv}/bin/python -m pip install --no-deps -e ." in result.stdout
    if target in {"test", "demo", "assets"}:
        assert f"{venv}/bin/python -m lnsr_viz assets" in result.stdout


def test_ci_script():
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text and "make test" in text

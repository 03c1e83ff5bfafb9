"""Tests for the packaging files: requirements.lock, environment.yml (generated from it), pyproject.toml's ranges and
extras, the Makefile's targets, the CI script, and the built wheel itself.

They catch drift: a lock that no longer matches the tested environment, an environment.yml not regenerated, a
dependency range in pyproject.toml that excludes the version actually pinned and tested, a third-party import that
is not declared (or a declared dependency that nothing imports), and a wheel that leaves out a subpackage or the
templates or only works from the checkout.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
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


def _requirements(project: dict) -> list[Requirement]:
    """Every requirement of the core and of each extra, except the extras' references to the project itself."""
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts += extra
    reqs = [Requirement(t) for t in texts]
    return [r for r in reqs if canonicalize_name(r.name) != canonicalize_name(project["name"])]


def test_pyproject_ranges_admit_the_pinned_versions():
    project = _pyproject()["project"]
    pins = _lock()
    for req in _requirements(project):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not pinned in requirements.lock"
        assert req.specifier, f"{req}: give a compatible range, not a bare name"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req} excludes the pinned {pins[name]}"
        assert any(s.operator == ">=" for s in req.specifier), f"{req}: give a floor (the oldest release tested)"
        assert any(s.operator == "<" for s in req.specifier), f"{req}: give an upper bound (the next major release)"
    names = {canonicalize_name(Requirement(t).name) for t in project["dependencies"]}
    assert {"torch", "transformers", "plotly", "matplotlib", "jinja2", "filelock"} <= names


def test_extras_keep_the_core_light_and_all_and_dev_have_everything():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    assert set(extras) == {"analysis", "notebooks", "hf", "ray", "tracking", "all", "dev", "bench"}
    core = {canonicalize_name(Requirement(t).name) for t in project["dependencies"]}
    optional = {"captum", "umap-learn", "ipywidgets", "anywidget", "jupyterlab", "accelerate", "jupytext", "ray",
                "mlflow-skinny", "tensorboard"}
    assert not core & optional, f"in the core install but only one part needs them: {core & optional}"
    assert extras["all"] == ["lnsr_viz[analysis,notebooks,hf,ray,tracking]"]
    assert "lnsr_viz[all]" in extras["dev"]
    from lnsr_viz.utils.extras import EXTRAS

    for module, (dist, extra) in EXTRAS.items():
        assert dist in {canonicalize_name(Requirement(t).name) for t in extras[extra]}, f"{module}: not in [{extra}]"


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level third-party module -> the lnsr_viz files that import it (module level or inside functions)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "lnsr_viz").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in {"lnsr_viz", "__future__"}:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_declared_dependencies_are_what_the_package_imports():
    """Every third-party import is declared (core, or the extra that ``lnsr_viz.utils.extras`` names for it), and
    every core dependency is imported somewhere: the core install carries nothing the code never uses."""
    from lnsr_viz.utils.extras import EXTRAS

    project = _pyproject()["project"]
    core = {canonicalize_name(Requirement(t).name) for t in project["dependencies"]}
    declared = {canonicalize_name(r.name) for r in _requirements(project)}
    to_dist = importlib.metadata.packages_distributions()
    imports = _third_party_imports()
    # kaleido is optional on purpose: without it save_figure writes the interactive HTML and says so.
    not_declared = {m: files for m, files in imports.items()
                    if m != "kaleido" and not {canonicalize_name(d) for d in to_dist.get(m, [m])} & declared}
    assert not_declared == {}, f"imported but not declared in pyproject.toml: {not_declared}"
    optional_imported = {m: files for m, files in imports.items() if m in EXTRAS}
    assert optional_imported == {}, (
        f"import optional packages through lnsr_viz.utils.extras.require (one error naming the extra): "
        f"{optional_imported}")
    imported_dists = {canonicalize_name(d) for m in imports for d in to_dist.get(m, [m])}
    assert core - imported_dists == set(), f"core dependencies that lnsr_viz never imports: {core - imported_dists}"


def _blocked(monkeypatch, *modules: str) -> None:
    """Make ``modules`` look uninstalled (``import`` fails, ``find_spec`` returns None) for one test."""
    for name in list(sys.modules):
        if name.partition(".")[0] in modules:
            monkeypatch.delitem(sys.modules, name)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_a_missing_extra_fails_once_with_the_pip_command(monkeypatch):
    from lnsr_viz.analysis.attribution import attribution_stability, token_attributions
    from lnsr_viz.analysis.projection import project_representations
    from lnsr_viz.testing import tiny_model
    from lnsr_viz.training.hf_trainer import RegularizedTrainer
    from lnsr_viz.utils.extras import install_hint, require
    from lnsr_viz.viz import dashboards

    model, tok = tiny_model("bert", seed=0)
    _blocked(monkeypatch, "captum", "umap", "ipywidgets", "anywidget", "accelerate", "jupytext")
    with pytest.raises(ImportError, match=r"token_attributions needs captum.*pip install 'lnsr_viz\[analysis\]'"):
        token_attributions(model, None, "a good film", tokenizer=tok)
    with pytest.raises(ImportError, match=r"attribution_stability needs captum.*lnsr_viz\[analysis\]"):
        attribution_stability(model, None, ["a good film"], tokenizer=tok)
    with pytest.raises(ImportError, match=r"method='umap'\) needs umap-learn.*lnsr_viz\[analysis\]"):
        project_representations(model, None, ["a good film"] * 4, tokenizer=tok, method="umap")
    with pytest.raises(ImportError, match=r"RegularizedTrainer .* needs accelerate.*lnsr_viz\[hf\]"):
        RegularizedTrainer(model=model, method="lnsr")
    with pytest.raises(ImportError, match=r"dashboards needs ipywidgets.*lnsr_viz\[notebooks\]"):
        dashboards._widgets()
    with pytest.raises(ImportError, match=r"FigureWidget.*needs anywidget.*lnsr_viz\[notebooks\]"):
        dashboards._figure_widget()
    with pytest.raises(ImportError, match=r"notebooks.*needs jupytext.*lnsr_viz\[dev\]"):
        require("jupytext", "Building the notebooks")
    with pytest.raises(KeyError, match="not an optional dependency"):
        install_hint("numpy", "x")


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


# Run by the fresh venv from tmp (not the checkout): a probe on a tiny model, then a small comparison and its report.
_WHEEL_PROBE = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    # The core install: none of the extras' packages (import fails, find_spec says not installed).
    for name in ("captum", "umap", "ipywidgets", "anywidget", "accelerate", "jupytext"):
        sys.modules[name] = None

    import pandas as pd

    import lnsr_viz as lv
    from lnsr_viz.analysis.attribution import token_attributions
    from lnsr_viz.testing import tiny_model, toy_sentences

    work = Path(sys.argv[1])
    model, tok = tiny_model("bert", seed=0)
    texts, labels = toy_sentences(48, seed=0)
    profile = lv.StabilityProbe(scale=0.05, n_draws=2, progress=False).run(model, texts[:8], tokenizer=tok)
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    pd.DataFrame({"text": texts, "label": labels}).to_csv(work / "in.csv", index=False)
    result = lv.compare(["vanilla", "lnsr"], [1], model=str(work / "model"), data=str(work / "in.csv"),
                        ood={"other": str(work / "in.csv")}, train_size=16, val_size=8, eval_size=12, epochs=1,
                        batch_size=8, probe_n=6, probe_draws=2, results=str(work / "store"), progress=False,
                        verbose=False)
    report = lv.comparison_report(result).save(work / "report.html")
    try:
        token_attributions(model, None, "a good film", tokenizer=tok)
        missing_extra = ""
    except ImportError as err:
        missing_extra = str(err)
    print(json.dumps({
        "package": lv.__file__,
        "modules": sorted(m for m in sys.modules if m.startswith("lnsr_viz")),
        "probe_rows": len(profile),
        "methods": sorted(set(result.summary["method"])),
        "report": str(report),
        "missing_extra": missing_extra,
    }))
""")


def _copy_source(dest: Path) -> Path:
    """What the wheel is built from (pyproject, README, the package), copied so that the build leaves the checkout
    untouched (no build/ or egg-info written into it)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "lnsr_viz", dest / "lnsr_viz", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _fresh_venv(where: Path) -> Path:
    """A new venv whose site-packages reuse this venv's third-party packages (a ``.pth`` line: no network, no
    copies). A path added by a ``.pth`` line is not scanned for ``.pth`` files itself, so this venv's editable
    install of lnsr_viz (a ``.pth`` hook pointing at the checkout) does not come along."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "_lnsr_viz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return python


@pytest.mark.slow
def test_wheel_installs_and_runs(tmp_path):
    """Build the wheel, install it (no dependencies) in a fresh venv, and use it from a folder outside the checkout:
    every module and template is in the wheel, the import comes from the venv, and a probe, a comparison and its
    HTML report work there."""
    source = _copy_source(tmp_path / "src")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(source)],
                   check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("lnsr_viz-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    sources = [p for p in (ROOT / "lnsr_viz").rglob("*.py") if "__pycache__" not in p.parts]
    expected = {p.relative_to(ROOT).as_posix() for p in sources}
    expected |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "lnsr_viz" / "viz").glob("templates/*.j2")}
    assert expected - in_wheel == set(), f"left out of the wheel: {sorted(expected - in_wheel)}"
    assert {"lnsr_viz/data/__init__.py", "lnsr_viz/experiments/runs.py", "lnsr_viz/viz/figures.py"} <= in_wheel
    metadata = next(n for n in in_wheel if n.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(wheel) as archive:
        meta = archive.read(metadata).decode()
    assert {"Provides-Extra: analysis", "Provides-Extra: notebooks", "Provides-Extra: hf"} <= set(meta.splitlines())

    python = _fresh_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_NO_INDEX="1", MPLBACKEND="Agg")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", "--disable-pip-version-check", str(wheel)], check=True, env=env, cwd=tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "probe.py").write_text(_WHEEL_PROBE, encoding="utf-8")
    done = subprocess.run([str(python), str(tmp_path / "probe.py"), str(work)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    package = Path(out["package"]).resolve()
    assert package.is_relative_to((tmp_path / "venv").resolve()), f"lnsr_viz imported from {package}"
    assert not package.is_relative_to(ROOT)
    installed = package.parent
    for name in expected:
        assert (installed.parent / name).is_file(), f"{name} not installed"
    assert {"lnsr_viz.core.probe", "lnsr_viz.experiments.runs", "lnsr_viz.viz.report"} <= set(out["modules"])
    assert out["probe_rows"] > 0 and out["methods"] == ["lnsr", "vanilla"]
    # the probe, the comparison and its report ran with none of the extras; a part that needs one names it
    assert "pip install 'lnsr_viz[analysis]'" in out["missing_extra"], out["missing_extra"]
    html = Path(out["report"]).read_text(encoding="utf-8")
    assert "Layer stability" in html and "Accuracy per domain" in html
    assert len(list((work / "store" / "runs").glob("*/record.json"))) == 3  # pretrained, vanilla, lnsr
    cli = subprocess.run([str(tmp_path / "venv" / "bin" / "lnsr-viz"), "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=False)
    assert cli.returncode == 0 and "compare" in cli.stdout, cli.stderr

"""Every tutorial notebook executes headless, in its quick setting, with the assertions inside it passing.

Covered:

* every notebook has its Jupytext percent-format source ``notebooks/NN_name.py`` and vice versa, and the committed
  ``.ipynb`` is exactly what :mod:`lnsr_viz.viz.notebook_sources` builds from it (``make notebooks``): the same cells,
  sources and stable ids ``NN-ii``, byte for byte; rebuilding is deterministic and a changed source is caught;
* the notebooks carry no outputs or execution counts;
* each notebook runs top to bottom in a fresh ``python3`` kernel with nbclient, ``LNSR_VIZ_QUICK=1`` and a private
  run store (``LNSR_VIZ_RESULTS`` under a temporary folder), in numbered order so that later notebooks find the
  runs that earlier ones stored, as a user would; a failing cell fails the test with the cell's error;
* no cell writes to stderr a Python traceback (a widget callback error would show up there, not as a failure).

Each notebook is a separate test; all of them together take under a minute on two idle CPU cores (2-4 minutes
when the cores are shared with other jobs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from lnsr_viz.viz.notebook_sources import build_notebook, notebook_sources, notebook_text, sync_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
TIMEOUT_S = 300  # per cell


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert names[:2] == ["01_noise_propagation.ipynb", "02_finetune_with_and_without_lnsr.ipynb"], names


def test_every_notebook_has_its_source():
    sources = notebook_sources(NOTEBOOK_DIR)
    assert [p.stem for p in sources] == [p.stem for p in NOTEBOOKS]
    for source in sources:
        header = source.read_text(encoding="utf-8").split("\n# ---\n", 1)[0]
        assert header.startswith("# ---\n# jupyter:") and "format_name: percent" in header, source.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_in_step_with_its_source(path):
    built = build_notebook(path.with_suffix(".py"))
    committed = nbformat.read(path, as_version=4)
    assert [c.cell_type for c in committed.cells] == [c.cell_type for c in built.cells], \
        f"{path.name}: the cells differ from {path.stem}.py; run `make notebooks`"
    for i, (have, want) in enumerate(zip(committed.cells, built.cells)):
        assert have.source == want.source, f"{path.name} cell {i} differs from {path.stem}.py; run `make notebooks`"
        assert have.get("id") == want.get("id") == f"{path.stem[:2]}-{i:02d}", f"{path.name} cell {i}: id"
    assert path.read_text(encoding="utf-8") == notebook_text(path.with_suffix(".py")), \
        f"{path.name} is not byte for byte what `make notebooks` writes"


def test_notebook_build_is_deterministic_and_catches_a_changed_source(tmp_path):
    source = tmp_path / "01_check.py"
    source.write_text((NOTEBOOK_DIR / "01_noise_propagation.py").read_text(encoding="utf-8"), encoding="utf-8")
    assert sync_notebooks(tmp_path) == [tmp_path / "01_check.ipynb"]   # written: it was missing
    first = (tmp_path / "01_check.ipynb").read_text(encoding="utf-8")
    assert sync_notebooks(tmp_path, check=True) == [] and notebook_text(source) == first   # no random ids
    nb = nbformat.reads(first, as_version=4)
    assert [c.id for c in nb.cells][:3] == ["01-00", "01-01", "01-02"]
    source.write_text(source.read_text(encoding="utf-8") + "\n# %%\nprint('a new cell')\n", encoding="utf-8")
    assert sync_notebooks(tmp_path, check=True) == [tmp_path / "01_check.ipynb"]
    assert (tmp_path / "01_check.ipynb").read_text(encoding="utf-8") == first   # check writes nothing
    proc = subprocess.run([sys.executable, "-m", "lnsr_viz.viz.notebook_sources", str(tmp_path), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "make notebooks" in proc.stderr, proc.stderr
    assert sync_notebooks(tmp_path) == [tmp_path / "01_check.ipynb"]
    rebuilt = nbformat.read(tmp_path / "01_check.ipynb", as_version=4)
    assert rebuilt.cells[-1].source == "print('a new cell')" and rebuilt.cells[-1].id == f"01-{len(nb.cells):02d}"


def test_notebooks_are_stripped():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"
        first = nb.cells[0].source
        assert "What you will learn" in first and "Time on a laptop CPU" in first, path.name


def _export_cell(monkeypatch, tmp_path, kaleido: bool) -> tuple[list, str]:
    """Run notebook 01's export cell (its own source) on a small figure; return (files written, printed text)."""
    import contextlib
    import io
    import warnings

    import plotly.graph_objects as go

    from lnsr_viz.viz import figures

    cell = next(c.source for c in build_notebook(NOTEBOOK_DIR / "01_noise_propagation.py").cells
                if c.cell_type == "code" and "save_figure(fig_curve" in c.source)
    monkeypatch.setattr(figures, "_kaleido_available", lambda: kaleido)
    if kaleido:
        monkeypatch.setattr(go.Figure, "to_image", lambda self, format: b"\x89PNG fake")
    namespace = {"warnings": warnings, "save_figure": figures.save_figure, "reports_dir": lambda: tmp_path,
                 "fig_curve": go.Figure(go.Scatter(y=[1, 2, 3]))}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(cell, "01_noise_propagation export cell", "exec"), namespace)
    return namespace["written"], printed.getvalue()


def test_notebook_01_export_says_why_no_png_was_written(monkeypatch, tmp_path):
    written, printed = _export_cell(monkeypatch, tmp_path, kaleido=False)
    assert [p.suffix for p in written] == [".html"]
    assert "PNG not written" in printed and "kaleido" in printed and "HTML was written instead" in printed
    assert "pip install kaleido" in printed   # how to enable it


def test_notebook_01_export_writes_the_png_when_kaleido_works(monkeypatch, tmp_path):
    written, printed = _export_cell(monkeypatch, tmp_path, kaleido=True)
    assert [p.suffix for p in written] == [".html", ".png"]
    assert "PNG not written" not in printed and ".png" in printed


@pytest.fixture(scope="module")
def quick_env(tmp_path_factory):
    """Environment for the kernels: quick setting, a private run store shared by the notebooks of this module."""
    results = tmp_path_factory.mktemp("notebook-results")
    saved = {k: os.environ.get(k) for k in ("LNSR_VIZ_QUICK", "LNSR_VIZ_RESULTS", "OMP_NUM_THREADS")}
    os.environ.update({"LNSR_VIZ_QUICK": "1", "LNSR_VIZ_RESULTS": str(results), "OMP_NUM_THREADS": "2"})
    yield results
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path, quick_env):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:  # the message holds the failing cell's source and traceback
        pytest.fail(f"{path.name} failed in quick mode:\n{err}", pytrace=False)
    seconds = time.perf_counter() - t0
    print(f"{path.name}: {seconds:.1f} s in quick mode")
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                assert "Traceback" not in out.get("text", ""), f"{path.name}: traceback on stderr:\n{out['text']}"
            assert out.get("output_type") != "error", f"{path.name}: error output {out}"

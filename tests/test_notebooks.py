"""Every tutorial notebook executes headless, in its quick setting, with the assertions inside it passing.

Covered:

* the committed notebooks are exactly what ``tools/build_notebooks.py`` writes (so they are reproducible) and carry
  no outputs or execution counts;
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

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
TIMEOUT_S = 300  # per cell


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert names[:2] == ["01_noise_propagation.ipynb", "02_finetune_with_and_without_lnsr.ipynb"], names


def test_notebooks_are_generated_and_stripped():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_notebooks.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs"
        first = nb.cells[0].source
        assert "What you will learn" in first and "Time on a laptop CPU" in first, path.name


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

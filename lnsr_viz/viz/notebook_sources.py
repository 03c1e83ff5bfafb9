"""The tutorial notebooks' ``.ipynb`` files, built from their Jupytext percent-format sources ``notebooks/NN_*.py``.

Why: the ``.py`` files are what people edit, review and lint (``ruff check notebooks``); the ``.ipynb`` files are
what JupyterLab opens and the tests execute. :func:`build_notebook` turns one source into its notebook with

* no outputs and no execution counts;
* stable cell ids ``NN-ii`` (the notebook's two-digit number and the cell's index): Jupytext alone gives every
  cell a random id on each conversion, which would make every rebuild a diff;
* the project's Python 3 kernel and a fixed ``language_info``, whatever kernel the source's header names.

Rebuilding twice gives byte-identical files. ``make notebooks`` (or ``python -m lnsr_viz.viz.notebook_sources``)
rewrites the notebooks that are out of step; ``--check`` only reports them (exit status 1). Needs ``jupytext``
and ``nbformat`` (development tools, imported only here).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..utils.extras import require

__all__ = ["KERNELSPEC", "LANGUAGE_INFO", "build_notebook", "notebook_text", "notebook_sources", "sync_notebooks"]

#: The kernel every notebook names: the environment's own ``python3`` (``make lab`` runs it from the venv).
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
#: The language block every notebook carries.
LANGUAGE_INFO = {"name": "python", "version": "3.11"}


def _jupytext() -> Any:
    return require("jupytext", "Building the notebooks from their sources")


def notebook_sources(folder: str | Path) -> list[Path]:
    """The percent-format sources ``NN_*.py`` in ``folder``, in numbered order."""
    return sorted(Path(folder).glob("[0-9][0-9]_*.py"))


def build_notebook(source: str | Path) -> Any:
    """The notebook (an ``nbformat.NotebookNode``) of one percent-format source, validated.

    Cell ``i`` of ``NN_name.py`` gets the id ``f"NN-{i:02d}"``; code cells have empty outputs and no execution
    count; the metadata is :data:`KERNELSPEC` and :data:`LANGUAGE_INFO` only (Jupytext's own header is dropped).
    """
    import nbformat

    source = Path(source)
    nb = _jupytext().reads(source.read_text(encoding="utf-8"), fmt="py:percent")
    prefix = source.stem[:2]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{prefix}-{i:02d}"
        cell["metadata"] = {}
        if cell.cell_type == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    nb["metadata"] = {"kernelspec": dict(KERNELSPEC), "language_info": dict(LANGUAGE_INFO)}
    nb["nbformat"], nb["nbformat_minor"] = 4, 5
    nbformat.validate(nb)
    return nb


def notebook_text(source: str | Path) -> str:
    """The ``.ipynb`` file's text for ``source``, exactly as :func:`sync_notebooks` writes it."""
    import nbformat

    return nbformat.writes(build_notebook(source)) + "\n"


def sync_notebooks(folder: str | Path, *, check: bool = False) -> list[Path]:
    """Rewrite every ``NN_*.ipynb`` in ``folder`` that differs from its ``.py`` source; return those out of step.

    With ``check=True`` nothing is written. A source without a notebook counts as out of step (and is written).
    """
    stale = []
    for source in notebook_sources(folder):
        target = source.with_suffix(".ipynb")
        text = notebook_text(source)
        if target.is_file() and target.read_text(encoding="utf-8") == text:
            continue
        stale.append(target)
        if not check:
            target.write_text(text, encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m lnsr_viz.viz.notebook_sources [FOLDER] [--check]``."""
    parser = argparse.ArgumentParser(description="Build notebooks/NN_*.ipynb from their Jupytext sources NN_*.py.")
    parser.add_argument("folder", nargs="?", default="notebooks", help="folder of the sources (default: notebooks)")
    parser.add_argument("--check", action="store_true", help="only report notebooks out of step (exit 1 if any)")
    args = parser.parse_args(argv)
    if not notebook_sources(args.folder):
        print(f"no notebook sources NN_*.py in {args.folder}", file=sys.stderr)
        return 2
    stale = sync_notebooks(args.folder, check=args.check)
    for path in stale:
        print(f"{'out of step' if args.check else 'wrote'}: {path}")
    if args.check and stale:
        print("run `make notebooks` to rebuild them from their .py sources", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

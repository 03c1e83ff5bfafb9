"""Optional dependencies: import one, or fail with one clear error that names the pip extra that provides it.

Why: the core install (probe, methods, training loop, experiments, figures, reports, command line) needs only the
packages in ``[project].dependencies``. Attributions and UMAP projections (``[analysis]``), the notebook dashboards
(``[notebooks]``), the Hugging Face ``Trainer`` integration (``[hf]``) and the notebook build (``[dev]``) need more;
``pip install 'lnsr_viz[all]'`` (or ``make install``, from the lock) has everything.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["EXTRAS", "install_hint", "require", "check_available"]

#: Which extra provides each optional import (module name -> (distribution, extra)).
EXTRAS: dict[str, tuple[str, str]] = {
    "captum": ("captum", "analysis"),
    "umap": ("umap-learn", "analysis"),
    "weightwatcher": ("weightwatcher", "analysis"),
    "ipywidgets": ("ipywidgets", "notebooks"),
    "anywidget": ("anywidget", "notebooks"),
    "accelerate": ("accelerate", "hf"),
    "jupytext": ("jupytext", "dev"),
    "ray": ("ray", "ray"),
    "mlflow": ("mlflow-skinny", "tracking"),
    "sqlalchemy": ("sqlalchemy", "tracking"),
    "tensorboard": ("tensorboard", "tracking"),
}


def install_hint(module: str, feature: str) -> str:
    """The error text for a missing optional ``module``: what needs it, and the pip command that installs it."""
    if module not in EXTRAS:
        raise KeyError(f"{module!r} is not an optional dependency; known: {sorted(EXTRAS)}")
    dist, extra = EXTRAS[module]
    return (f"{feature} needs {dist}, which the core install of lnsr_viz leaves out: "
            f"pip install 'lnsr_viz[{extra}]' (or 'lnsr_viz[all]').")


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` (e.g. ``'captum.attr'``); a missing package raises ImportError with :func:`install_hint`.

    ``feature`` says what needs it, e.g. ``'token_attributions'``.
    """
    top = module.partition(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and err.name.partition(".")[0] != top:
            raise  # the optional package is there but one of its own dependencies is not: let that error speak
        raise ImportError(install_hint(top, feature)) from err


def check_available(module: str, feature: str) -> None:
    """Raise the :func:`require` error now, before any work, if ``module`` is not installed (it is not imported)."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(install_hint(module, feature))

"""Shared test set-up: no network to a model hub, deterministic tokenizers, two torch threads, the asset home."""

from __future__ import annotations

import os

# Before transformers / huggingface_hub are imported anywhere: they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def lnsr_home() -> Path:
    """The real asset home ($LNSR_VIZ_HOME or ~/.cache/lnsr_viz), with every packaged asset present (fetched once)."""
    from lnsr_viz.data.assets import ASSETS, ensure_asset, lnsr_viz_home

    home = lnsr_viz_home()
    for name in ASSETS:
        ensure_asset(name, home=home)
    return home

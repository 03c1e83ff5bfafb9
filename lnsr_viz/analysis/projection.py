"""2-D projections of sentence representations, for two models fitted jointly.

A sentence's representation at layer ``l`` is its hidden state mean-pooled over the real tokens (padding excluded),
as in :mod:`lnsr_viz.analysis.drift`. :func:`project_representations` collects them for one or two models (typically the
pre-trained base and the fine-tuned model) on the same sentences and fits **one** projection on all of them together,
so the two models' points share one coordinate system (fitting one model and transforming the other's points later
shifts them; see ``../shared/notes/method.md``).

* ``method='umap'`` (umap-learn): neighbourhood-preserving; seeded with ``random_state=seed``, which makes it
  reproducible and single-threaded. Distances between far-apart clusters mean little in UMAP.
* ``method='pca'``: the top two principal directions of the centred joint cloud (scikit-learn, full SVD,
  deterministic): fast, linear and distance-faithful along its axes; the fallback when UMAP is too slow or the
  sample is small.

The result is a tidy DataFrame, one row per model and sentence, carrying the sentence text (for hover), its label
and its domain (in-domain vs each out-of-domain set) so that plots can colour by either
(:func:`lnsr_viz.viz.analysis_figures.plot_projection`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from ..core.adapter import ModelAdapter, layer_name
from ..core.inputs import named_models, texts_of
from ..utils.extras import check_available, require
from ..utils.validation import check_choice, check_number, check_positive_int
from .drift import sentence_representations

__all__ = ["PROJECTION_COLUMNS", "project_representations"]

#: Columns of :func:`project_representations`.
PROJECTION_COLUMNS = ("model", "example", "x", "y", "method", "layer", "layer_name", "text", "label", "label_name",
                      "domain", "domain_kind")


def _collect(data: Any, in_domain: str | None) -> tuple[pd.DataFrame, str | None]:
    """One row per sentence: text, label, label_name, domain; and the in-domain name."""
    from ..data.text import TextDataset, as_dataset

    def rows_of(obj: Any, domain: str) -> pd.DataFrame:
        if isinstance(obj, str | os.PathLike) or isinstance(obj, pd.DataFrame):
            obj = as_dataset(obj)
        if isinstance(obj, TextDataset):
            frame = pd.DataFrame({"text": obj.texts, "label": obj.labels.astype(float)})
            names = obj.label_names
            frame["label_name"] = [names[int(k)] if names is not None else str(int(k)) for k in obj.labels]
            if obj.meta is not None and "domain" in obj.meta.columns and domain is None:
                frame["domain"] = obj.meta["domain"].astype(str).to_numpy()
            else:
                frame["domain"] = domain if domain is not None else obj.name
            return frame
        texts = texts_of(obj, load=True, owner="project_representations")
        return pd.DataFrame({"text": texts, "label": np.nan, "label_name": "", "domain": domain or "data"})

    if isinstance(data, Mapping) and not ("text" in data and "label" in data):
        if not data:
            raise ValueError("data is an empty mapping; pass {domain name: sentences} with at least one domain.")
        parts = [rows_of(obj, str(name)) for name, obj in data.items()]
        frame = pd.concat(parts, ignore_index=True)
        in_name = str(next(iter(data))) if in_domain is None else in_domain
    else:
        if isinstance(data, Mapping):
            data = as_dataset(dict(data))
        frame = rows_of(data, None)
        in_name = in_domain if in_domain is not None else str(frame["domain"].iloc[0]) if len(frame) else None
    if in_name is not None and in_name not in set(frame["domain"]):
        raise ValueError(f"in_domain={in_name!r} is not one of the domains {sorted(set(frame['domain']))}.")
    frame["domain_kind"] = np.where(frame["domain"] == in_name, "in-domain", "out-of-domain")
    return frame, in_name


def _resolve_layer(adapter: ModelAdapter, layer: int, which: str) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"layer must be an int (0 = embeddings, -1 = the last layer); got {layer!r}.")
    resolved = adapter.n_layers + 1 + layer if layer < 0 else layer
    if not 0 <= resolved <= adapter.n_layers:
        raise ValueError(f"layer={layer} is out of range for {which}, which has layers 0..{adapter.n_layers} "
                         f"(negative values count from the top: -1 = {adapter.n_layers}).")
    return resolved


def project_representations(
    model_a: Any,
    model_b: Any = None,
    data: Any = None,
    tokenizer: Any = None,
    *,
    layer: int = -1,
    method: Literal["umap", "pca"] = "umap",
    names: Sequence[str] | None = None,
    in_domain: str | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    standardize: bool = False,
    seed: int = 0,
    batch_size: int = 32,
    max_length: int = 128,
    max_examples: int | None = None,
) -> pd.DataFrame:
    """Project the sentence representations of one or two models at ``layer`` into 2-D, fitted jointly.

    Parameters
    ----------
    model_a : nn.Module, (model, tokenizer) or str
        E.g. the pre-trained base.
    model_b : same as ``model_a``, optional
        E.g. the fine-tuned model; None projects ``model_a`` alone.
    data : mapping {domain: data}, TextDataset, sequence of str, CSV path or DataFrame
        The sentences. A mapping gives each set a domain name (the first is in-domain unless ``in_domain`` says
        otherwise), e.g. ``{'movie': test, 'amazon': amazon, 'tweets': tweets}``.
    tokenizer : tokenizer, optional
        For models given as modules; defaults to the tokenizer that came with each model.
    layer : int, default=-1
        Which layer (0 = embedding output, -1 = the last layer, counted for each model).
    method : {'umap', 'pca'}, default='umap'
    names : (str, str), optional
        Labels of the models in the ``model`` column.
    in_domain : str, optional
        Which domain is in-domain (default: the first).
    n_neighbors, min_dist : int, float
        UMAP's neighbourhood size and minimum distance (ignored by PCA). ``n_neighbors`` must be smaller than the
        number of points (sentences x models).
    standardize : bool, default=False
        Scale every coordinate of the joint cloud to unit variance before fitting.
    seed : int, default=0
        UMAP's ``random_state``.
    batch_size, max_length, max_examples : int
        Batching, truncation, and an optional cap on the number of sentences (the first ones).

    Returns
    -------
    DataFrame
        Columns :data:`PROJECTION_COLUMNS`; ``attrs`` holds the method's settings and, for PCA, the explained
        variance ratio of the two axes (``attrs['explained_variance_ratio']``).

    Raises
    ------
    ValueError
        Bad layer, too few sentences for UMAP's ``n_neighbors``, models of different widths (one joint
        projection needs one space), an unknown method.
    """
    owner = "project_representations"
    check_choice("method", method, ("umap", "pca"), owner=owner, hint="'pca' is the fast fallback.")
    if method == "umap":
        check_available("umap", f"{owner}(method='umap')")
    n_neighbors = check_positive_int("n_neighbors", n_neighbors, owner=owner)
    min_dist = float(check_number("min_dist", min_dist, owner=owner, low=0.0))
    if data is None:
        raise ValueError(f"{owner} needs data=: the sentences to project.")
    frame, in_name = _collect(data, in_domain)
    if max_examples is not None:
        frame = frame.iloc[: check_positive_int("max_examples", max_examples, owner=owner)].reset_index(drop=True)
    models = named_models(model_a, model_b, tokenizer, names, owner=owner)
    names = [name for name, _, _ in models]
    texts = frame["text"].tolist()
    reps, layers = [], []
    for (_, net, tok), which in zip(models, ("model_a", "model_b"), strict=False):
        adapter = ModelAdapter(net)
        lay = _resolve_layer(adapter, layer, which)
        reps.append(sentence_representations(adapter, texts, tok, layers=lay, batch_size=batch_size,
                                             max_length=max_length)[lay].to(torch.float64).numpy())
        layers.append(lay)
    if len({r.shape[1] for r in reps}) > 1:
        raise ValueError(f"the models have different hidden sizes ({[r.shape[1] for r in reps]}), so their "
                         "representations do not live in one space and cannot be projected jointly; project each "
                         "model separately (model_b=None).")
    joint = np.concatenate(reps, axis=0)
    if standardize:
        sd = joint.std(axis=0)
        joint = (joint - joint.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    n_points = joint.shape[0]
    attrs: dict[str, Any] = {"method": method, "layer": layers, "seed": seed, "standardize": standardize,
                             "in_domain": in_name}
    if method == "umap":
        if n_neighbors >= n_points:
            raise ValueError(
                f"{owner}: n_neighbors={n_neighbors} must be smaller than the number of points ({n_points} = "
                f"{len(frame)} sentences x {len(models)} model(s)); use more sentences, a smaller n_neighbors, or "
                "method='pca'."
            )
        umap = require("umap", f"{owner}(method='umap')")

        reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, random_state=int(seed))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs value .* overridden.*")
            coords = reducer.fit_transform(joint)
        attrs.update(n_neighbors=n_neighbors, min_dist=min_dist)
    else:
        if n_points < 3:
            raise ValueError(f"{owner}: PCA to 2-D needs at least 3 points; got {n_points}.")
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, svd_solver="full")
        coords = pca.fit_transform(joint)
        attrs["explained_variance_ratio"] = [float(v) for v in pca.explained_variance_ratio_]
    parts = []
    n = len(frame)
    for i, (name, lay) in enumerate(zip(names, layers)):
        part = frame.copy()
        part.insert(0, "model", name)
        part.insert(1, "example", np.arange(n))
        part["x"] = coords[i * n:(i + 1) * n, 0]
        part["y"] = coords[i * n:(i + 1) * n, 1]
        part["method"] = method
        part["layer"] = lay
        part["layer_name"] = layer_name(lay)
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)[list(PROJECTION_COLUMNS)]
    out.attrs.update(attrs)
    return out

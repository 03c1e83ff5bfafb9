"""Joint 2-D projections: tidy output with text, label and domain; one fit for both models (checked against
scikit-learn's PCA on the stacked representations); seeded UMAP is reproducible; errors."""

import numpy as np
import pytest
from sklearn.decomposition import PCA

from lnsr_viz.analysis.drift import sentence_representations
from lnsr_viz.analysis.projection import PROJECTION_COLUMNS, project_representations
from lnsr_viz.data.text import TextDataset
from lnsr_viz.testing import tiny_model, toy_sentences


def _domains():
    t1, l1 = toy_sentences(12, seed=0)
    t2, l2 = toy_sentences(8, seed=1)
    return {"movie": TextDataset(t1, np.array(l1), "movie", label_names=("negative", "positive")),
            "amazon": TextDataset(t2, np.array(l2), "amazon", label_names=("negative", "positive"))}


def test_pca_projection_is_tidy_with_text_labels_and_domains():
    base, tok = tiny_model("bert")
    tuned, _ = tiny_model("bert", seed=1)
    data = _domains()
    df = project_representations(base, tuned, data, tok, method="pca", names=("pretrained", "fine-tuned"))
    assert list(df.columns) == list(PROJECTION_COLUMNS)
    assert len(df) == 2 * 20
    assert list(df["model"].unique()) == ["pretrained", "fine-tuned"]
    movie = df[(df["model"] == "pretrained") & (df["domain"] == "movie")]
    assert movie["text"].tolist() == data["movie"].texts
    assert (movie["domain_kind"] == "in-domain").all()
    assert (df.loc[df["domain"] == "amazon", "domain_kind"] == "out-of-domain").all()
    assert set(df["label_name"]) == {"negative", "positive"}
    assert (df["layer"] == 2).all() and (df["layer_name"] == "blocks.1").all()
    assert len(df.attrs["explained_variance_ratio"]) == 2


def test_the_projection_is_fitted_on_both_models_together():
    base, tok = tiny_model("bert")
    tuned, _ = tiny_model("bert", seed=1)
    texts, _ = toy_sentences(15)
    df = project_representations(base, tuned, texts, tok, method="pca", layer=1)
    joint = np.concatenate([sentence_representations(m, texts, tok, layers=1)[1].double().numpy()
                            for m in (base, tuned)])
    expected = PCA(n_components=2, svd_solver="full").fit_transform(joint)
    np.testing.assert_allclose(df[["x", "y"]].to_numpy(), expected, rtol=1e-6, atol=1e-8)
    # the same model twice lands on the same points: one coordinate system for both
    same = project_representations(base, base, texts, tok, method="pca")
    a, b = (same[same["model"] == m][["x", "y"]].to_numpy() for m in same["model"].unique())
    np.testing.assert_allclose(a, b)


def test_umap_is_seeded_and_reproducible():
    base, tok = tiny_model("bert")
    tuned, _ = tiny_model("bert", seed=1)
    texts, labels = toy_sentences(20)
    data = TextDataset(texts, np.array(labels), "toy")
    a = project_representations(base, tuned, data, tok, method="umap", n_neighbors=5, seed=3)
    b = project_representations(base, tuned, data, tok, method="umap", n_neighbors=5, seed=3)
    np.testing.assert_array_equal(a[["x", "y"]].to_numpy(), b[["x", "y"]].to_numpy())
    assert a.attrs["n_neighbors"] == 5 and (a["method"] == "umap").all()
    assert np.isfinite(a[["x", "y"]].to_numpy()).all()


def test_single_model_and_layer_choice():
    model, tok = tiny_model("bert", n_layers=3)
    texts, _ = toy_sentences(6)
    df = project_representations(model, None, texts, tok, method="pca", layer=0)
    assert len(df) == 6 and (df["layer_name"] == "embed").all() and (df["domain"] == "data").all()
    assert (project_representations(model, None, texts, tok, method="pca", layer=-2)["layer"] == 2).all()


def test_projection_errors():
    model, tok = tiny_model("bert")
    wide, _ = tiny_model("bert", hidden=48)
    texts, _ = toy_sentences(6)
    with pytest.raises(ValueError, match=r"n_neighbors=15 must be smaller than the number of points \(12 = 6 "
                                         r"sentences x 2 model\(s\)\).*method='pca'"):
        project_representations(model, model, texts, tok)
    with pytest.raises(ValueError, match=r"'method' parameter of project_representations must be one of"):
        project_representations(model, model, texts, tok, method="tsne")
    with pytest.raises(ValueError, match=r"layer=5 is out of range for model_a, which has layers 0..2"):
        project_representations(model, model, texts, tok, method="pca", layer=5)
    with pytest.raises(ValueError, match="different hidden sizes"):
        project_representations(model, wide, texts, tok, method="pca")
    with pytest.raises(ValueError, match="in_domain='nyt' is not one of the domains"):
        project_representations(model, None, _domains(), tok, method="pca", in_domain="nyt")
    with pytest.raises(ValueError, match="needs data="):
        project_representations(model, tokenizer=tok)

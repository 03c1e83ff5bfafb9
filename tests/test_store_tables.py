"""Tests for the named extra tables of lnsr_viz.experiments.store (``RunStore.save(tables=...)``).

Covers: round trip of a CSV table and of a compact float16 table (.npz) with string, int and bool columns (values,
dtypes and column order; float16 stays float16); byte-identical .npz files for the same table saved in two stores;
bad names, built-in names and non-DataFrame values refused before anything is written; a float16 table with a
mixed-object column refused (nothing left behind); load_table over runs with and without the table, config columns
prepended; an unknown name refused listing the stored ones; runs without tables load with ``tables == {}``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from lnsr_viz.experiments import store as store_mod
from lnsr_viz.experiments.store import TABLES, RunStore

CFG_A = {"method": "lnsr", "seed": 1, "model": {"name": "minilm"}}
CFG_B = {"method": "vanilla", "seed": 2, "model": {"name": "minilm"}}


def _metrics() -> pd.DataFrame:
    return pd.DataFrame({"domain": ["movie"], "metric": ["accuracy"], "value": [0.8]})


def _csv_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": [1, 2, 3],
            "name": ["x", "NA", "y"],  # "NA" must stay a string
            "value": [0.1, float("nan"), 0.123456789012345678],
            "ok": [True, False, True],
        }
    )


def _f16_table() -> pd.DataFrame:
    # float16 columns interleaved with the others, so that the column order is really tested
    return pd.DataFrame(
        {
            "text": ["a", "bb", "NA"],
            "v0": np.array([0.1, 0.2, 65504.0], dtype=np.float16),
            "layer": np.array([1, 2, 3], dtype=np.int64),
            "v1": np.array([-1.0, np.nan, 3.5], dtype=np.float16),
            "flag": [True, False, True],
        }
    )


def _run_folders(store: RunStore) -> list[str]:
    if not store.runs_dir.exists():
        return []
    return sorted(p.name for p in store.runs_dir.iterdir())


# ---------------------------------------------------------------------------------------------- round trips
def test_csv_table_round_trip(tmp_path):
    store = RunStore(tmp_path / "s")
    path = store.save(CFG_A, metrics=_metrics(), tables={"theory": _csv_table()})
    assert (path / "tables" / "theory.csv").is_file()
    assert not (path / "tables" / "theory.npz").exists()
    run = store.load(CFG_A)
    assert list(run.tables) == ["theory"]
    got = run.tables["theory"]
    assert list(got.columns) == ["layer", "name", "value", "ok"]
    assert_frame_equal(got, _csv_table())  # values and dtypes (int, str, float with NaN, bool)
    assert got["name"].tolist() == ["x", "NA", "y"]


def test_float16_table_round_trip(tmp_path):
    store = RunStore(tmp_path / "s")
    table = _f16_table()
    path = store.save(CFG_A, metrics=_metrics(), tables={"reps": table, "theory": _csv_table()})
    assert (path / "tables" / "reps.npz").is_file()
    assert not (path / "tables" / "reps.csv").exists()
    run = store.load(CFG_A)
    assert list(run.tables) == ["reps", "theory"]
    got = run.tables["reps"]
    assert list(got.columns) == ["text", "v0", "layer", "v1", "flag"]
    assert got["v0"].dtype == np.float16 and got["v1"].dtype == np.float16
    assert got["layer"].dtype == np.int64 and got["flag"].dtype == bool
    assert_frame_equal(got, table)
    # the float16 values are bit for bit those saved (NaN in place), not a float32/float64 re-rounding
    np.testing.assert_array_equal(got["v0"].to_numpy().view(np.uint16), table["v0"].to_numpy().view(np.uint16))
    np.testing.assert_array_equal(np.isnan(got["v1"].to_numpy()), [False, True, False])
    assert got["text"].tolist() == ["a", "bb", "NA"]
    assert_frame_equal(run.tables["theory"], _csv_table())


def test_npz_bytes_identical_across_stores(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "_now", lambda: "2024-01-01T00:00:00+00:00")
    paths = []
    for folder in ("one", "two"):
        store = RunStore(tmp_path / folder)
        paths.append(store.save(CFG_A, metrics=_metrics(), tables={"reps": _f16_table()}))
    first, second = ((p / "tables" / "reps.npz").read_bytes() for p in paths)
    assert first == second
    assert (paths[0] / "config.json").read_bytes() == (paths[1] / "config.json").read_bytes()


def test_runs_without_tables_load_empty(tmp_path):
    store = RunStore(tmp_path / "s")
    path = store.save(CFG_A, metrics=_metrics())
    assert not (path / "tables").exists()
    assert store.load(CFG_A).tables == {}
    store.save(CFG_B, metrics=_metrics(), tables={})  # an empty mapping is the same as none
    assert store.load(CFG_B).tables == {}
    assert not (store.run_dir(CFG_B) / "tables").exists()


# ------------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("Theory", "lowercase letters, digits and underscores"),
        ("a/b", "lowercase letters, digits and underscores"),
        ("", "lowercase letters, digits and underscores"),
        ("../x", "lowercase letters, digits and underscores"),
        (1, "lowercase letters, digits and underscores"),
        *((built_in, "built-in tables") for built_in in TABLES),
    ],
)
def test_bad_table_names_refused_before_writing(tmp_path, name, match):
    store = RunStore(tmp_path / "s")
    with pytest.raises(ValueError, match=match):
        store.save(CFG_A, metrics=_metrics(), tables={name: _csv_table()})
    assert _run_folders(store) == []
    assert not store.root.exists()  # not even the runs or locks folder was created


@pytest.mark.parametrize("value", [None, [1, 2], {"a": [1]}, pd.Series([1.0]), np.zeros(3)])
def test_non_dataframe_tables_refused_before_writing(tmp_path, value):
    store = RunStore(tmp_path / "s")
    with pytest.raises(ValueError, match=r"tables\['theory'\] must be a pandas DataFrame"):
        store.save(CFG_A, metrics=_metrics(), tables={"other": _csv_table(), "theory": value})
    assert _run_folders(store) == []
    assert not store.root.exists()


def test_tables_not_a_mapping_refused(tmp_path):
    store = RunStore(tmp_path / "s")
    with pytest.raises(ValueError, match="tables must be a mapping"):
        store.save(CFG_A, metrics=_metrics(), tables=[("theory", _csv_table())])
    assert not store.root.exists()


def test_float16_table_with_mixed_objects_refused(tmp_path):
    store = RunStore(tmp_path / "s")
    bad = _f16_table().assign(mixed=pd.Series(["a", 1, None], dtype=object))
    with pytest.raises(ValueError, match=r"tables\['reps'\].*'mixed' mixes types"):
        store.save(CFG_A, metrics=_metrics(), tables={"reps": bad})
    assert _run_folders(store) == []  # the temporary folder was removed, no run became visible
    assert not store.exists(CFG_A)


# --------------------------------------------------------------------------------------------- load_table
def test_load_table_over_runs_with_and_without_the_table(tmp_path):
    store = RunStore(tmp_path / "s")
    store.save(CFG_A, metrics=_metrics(), tables={"theory": _csv_table(), "reps": _f16_table()})
    store.save(CFG_B, metrics=_metrics())  # no tables: skipped by load_table("theory")
    theory = store.load_table("theory")
    assert list(theory.columns) == ["run_id", "method", "seed", "model.name", "layer", "name", "value", "ok"]
    assert len(theory) == 3
    assert set(theory["run_id"]) == {store.run_id(CFG_A)}
    assert theory["method"].tolist() == ["lnsr"] * 3 and theory["seed"].tolist() == [1] * 3
    assert_frame_equal(theory[["layer", "name", "value", "ok"]], _csv_table())

    reps = store.load_table("reps")
    assert list(reps.columns) == ["run_id", "method", "seed", "model.name", "text", "v0", "layer", "v1", "flag"]
    assert reps["v0"].dtype == np.float16

    # a second run with the table: rows of both, in their own runs
    cfg_c = {**CFG_B, "seed": 3}
    store.save(cfg_c, metrics=_metrics(), tables={"theory": _csv_table().iloc[:2]})
    both = store.load_table("theory")
    assert len(both) == 5
    assert both.groupby("seed").size().to_dict() == {1: 3, 3: 2}
    assert set(both.loc[both["seed"] == 3, "method"]) == {"vanilla"}
    assert set(both["run_id"]) == {store.run_id(CFG_A), store.run_id(cfg_c)}


def test_load_table_unknown_name_lists_stored(tmp_path):
    store = RunStore(tmp_path / "s")
    store.save(CFG_A, metrics=_metrics(), tables={"theory": _csv_table(), "reps": _f16_table()})
    with pytest.raises(ValueError, match="nope") as info:
        store.load_table("nope")
    msg = str(info.value)
    for name in ("theory", "reps", *TABLES):
        assert repr(name) in msg

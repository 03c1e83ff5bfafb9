"""Tests for lnsr_viz.experiments.store.

Covers: config_hash (stable under key order and across processes, sensitive to values and types, tuples ==
lists, refuses values without a JSON form); atomic file helpers; RunStore save / exists / load round trip and the
cache-hit pattern; refusal to overwrite without overwrite=True; atomicity (a checkpoint_fn that raises leaves
nothing visible, a leftover .tmp-* folder is ignored and cleanup() removes it); damaged runs (missing record,
bad JSON, checksum mismatch, edited config) reported with CorruptRunWarning and skipped, then replaced by save;
list_runs flattening; load_table concatenation with run_id and config columns; non-writable roots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from lnsr_viz.experiments import store as store_mod
from lnsr_viz.experiments.store import (
    CorruptRunWarning,
    RunStore,
    canonical_json,
    config_hash,
    flatten_config,
)
from lnsr_viz.utils import io as io_mod
from lnsr_viz.utils.io import atomic_write_csv, atomic_write_json, atomic_write_text, sha256_file

CFG = {"method": "lnsr", "seed": 1, "lr": 2e-5, "model": {"name": "minilm", "layers": (1, 2)}, "domain": "movie"}


def _metrics(acc: float = 0.8) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "domain": ["movie", "movie", "NA"],  # "NA" must survive the CSV round trip as a string
            "metric": ["accuracy", "roc_auc", "accuracy"],
            "value": [acc, float("nan"), 0.123456789012345678],
        }
    )


def _history() -> pd.DataFrame:
    return pd.DataFrame({"epoch": [1, 2], "train_loss": [0.7, 0.5], "val_accuracy": [0.6, 0.7]})


# -------------------------------------------------------------------------------------------------- hashing
def test_config_hash_key_order_and_values():
    reordered = {"domain": "movie", "model": {"layers": [1, 2], "name": "minilm"}, "lr": 2e-5, "seed": 1,
                 "method": "lnsr"}  # fmt: skip
    h = config_hash(CFG)
    assert len(h) == 12 and all(c in "0123456789abcdef" for c in h)
    assert config_hash(reordered) == h  # key order and tuple-vs-list do not matter
    assert config_hash({**CFG, "seed": 2}) != h
    assert config_hash({**CFG, "lr": 2.00001e-5}) != h
    assert config_hash({**CFG, "seed": 1.0}) != h  # int and float are different JSON values
    assert config_hash({**CFG, "seed": np.int64(1)}) == h  # numpy scalars count as their Python value
    assert config_hash({**CFG, "lr": 0.00002}) == h  # same float, written differently


def test_config_hash_is_stable_across_processes():
    code = (
        "from lnsr_viz.experiments.store import config_hash;"
        "print(config_hash({'method': 'lnsr', 'seed': 1, 'lr': 2e-5, 'model': {'name': 'minilm', 'layers': (1, 2)},"
        " 'domain': 'movie'}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == config_hash(CFG)


def test_canonical_json_form():
    assert canonical_json({"b": (1, 2.5), "a": None, "c": True}) == '{"a":null,"b":[1,2.5],"c":true}'


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"path": Path("/tmp/x")}, r"config\['path'\] is a PosixPath.*str\(\.\.\.\)"),
        ({"model": {"obj": object()}}, r"config\['model'\]\['obj'\] is a object.*not JSON-serialisable"),
        ({"lr": float("nan")}, "NaN and infinity"),
        ({1: "a"}, "keys must be strings"),
        ({"s": {1, 2}}, "set"),
    ],
)
def test_config_hash_refuses_non_json_values(bad, match):
    with pytest.raises(TypeError, match=match):
        config_hash(bad)


def test_flatten_config():
    assert flatten_config(CFG) == {
        "method": "lnsr",
        "seed": 1,
        "lr": 2e-5,
        "model.name": "minilm",
        "model.layers": (1, 2),
        "domain": "movie",
    }


# ------------------------------------------------------------------------------------------ atomic helpers
def test_atomic_writers(tmp_path):
    p = atomic_write_text(tmp_path / "a.txt", "hello")
    assert p.read_text() == "hello"
    atomic_write_text(p, "again")
    assert p.read_text() == "again"
    df = pd.DataFrame({"x": [1, 2], "y": ["a", "b"]})
    atomic_write_csv(tmp_path / "t.csv", df)
    assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), df, check_dtype=False)
    atomic_write_json(tmp_path / "j.json", {"v": np.float64(0.5), "a": np.arange(2)})
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": [0, 1], "v": 0.5}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.txt", "j.json", "t.csv"]  # no temp files left


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "a.txt"
    p.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]


# ---------------------------------------------------------------------------------------------- round trip
def test_save_load_round_trip_and_cache_hit(tmp_path):
    store = RunStore(tmp_path / "results")
    assert not store.exists(CFG)
    ckpt_calls = []

    def checkpoint_fn(folder: Path) -> None:
        ckpt_calls.append(folder)
        assert folder.is_dir() and folder.name == "checkpoint"
        (folder / "weights.bin").write_bytes(b"\x00\x01" * 100)

    path = store.save(
        CFG,
        metrics=_metrics(),
        history=_history(),
        profile=None,
        extra={"train_seconds": np.float64(12.5)},
        checkpoint_fn=checkpoint_fn,
    )
    assert path == tmp_path / "results" / "runs" / config_hash(CFG)
    assert store.exists(CFG) and store.exists(store.run_id(CFG))
    assert sorted(p.name for p in path.iterdir()) == [
        "checkpoint",
        "config.json",
        "extra.json",
        "history.csv",
        "metrics.csv",
        "record.json",
    ]

    run = store.load(CFG)
    assert run.run_id == config_hash(CFG) and run.path == path
    assert config_hash(run.config) == run.run_id  # the stored config is the hashed config
    assert run.config["model"]["layers"] == [1, 2]
    assert_frame_equal(run.metrics, _metrics())
    assert_frame_equal(run.history, _history())
    assert run.profile is None
    assert run.extra == {"train_seconds": 12.5}
    assert run.checkpoint_path == path / "checkpoint"
    assert run.meta["schema_version"] == store_mod.SCHEMA_VERSION and run.meta["created_at"]
    doc = json.loads((path / "config.json").read_text())
    assert doc["run_id"] == run.run_id and "lnsr_viz_version" in doc and doc["schema_version"] == 1
    record = json.loads((path / "record.json").read_text())
    assert set(record["files"]) == {"config.json", "metrics.csv", "history.csv", "extra.json", "checkpoint/weights.bin"}
    assert store.load(run.run_id).run_id == run.run_id
    assert store.load(run.run_id, verify_checkpoint=True).run_id == run.run_id

    # the cache pattern from the module docstring: the second pass trains nothing
    trained = []
    for cfg in (CFG, {**CFG, "seed": 2}):
        if store.exists(cfg):
            store.load(cfg)
        else:
            trained.append(cfg["seed"])
            store.save(cfg, metrics=_metrics(0.7))
    assert trained == [2]


def test_save_refuses_overwrite_unless_asked(tmp_path):
    store = RunStore(tmp_path)
    store.save(CFG, metrics=_metrics(0.8))
    with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
        store.save(CFG, metrics=_metrics(0.9))
    assert store.load(CFG).metrics["value"].iloc[0] == 0.8
    store.save(CFG, metrics=_metrics(0.9), overwrite=True)
    assert store.load(CFG).metrics["value"].iloc[0] == 0.9
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [config_hash(CFG)]  # old copy removed


def test_save_validates_inputs(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(ValueError, match=r"missing \['value'\]"):
        store.save(CFG, metrics=pd.DataFrame({"domain": ["a"], "metric": ["accuracy"]}))
    with pytest.raises(ValueError, match="history must be a pandas DataFrame or None"):
        store.save(CFG, metrics=_metrics(), history={"epoch": [1]})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        store.save({"model": object()}, metrics=_metrics())
    assert list(tmp_path.iterdir()) == []  # a refused save creates nothing, not even runs/


def test_load_missing_and_bad_id(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(FileNotFoundError, match="No run"):
        store.load(CFG)
    with pytest.raises(ValueError, match="not a run id"):
        store.load("lnsr-seed-1")


# ---------------------------------------------------------------------------------------------- atomicity
def test_crash_mid_save_leaves_nothing_visible(tmp_path):
    store = RunStore(tmp_path)

    def crashing_checkpoint(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"\x00" * 10)
        raise RuntimeError("out of disk while saving the model")

    with pytest.raises(RuntimeError, match="out of disk"):
        store.save(CFG, metrics=_metrics(), history=_history(), checkpoint_fn=crashing_checkpoint)
    assert list((tmp_path / "runs").iterdir()) == []
    assert not store.exists(CFG)
    assert store.list_runs().empty and list(store.list_runs().columns) == ["run_id"]
    assert store.load_table("metrics").empty


def test_leftover_tmp_folder_is_ignored_and_cleaned(tmp_path, recwarn):
    store = RunStore(tmp_path)
    store.save(CFG, metrics=_metrics())
    # simulate a process killed mid-save: a .tmp-* folder with partial content and no record.json
    leftover = tmp_path / "runs" / f".tmp-{config_hash({**CFG, 'seed': 9})}-deadbeef"
    leftover.mkdir()
    (leftover / "metrics.csv").write_text("domain,metric,value\nmovie,accuracy,0.1\n")
    runs = store.list_runs()
    assert runs["run_id"].tolist() == [config_hash(CFG)]
    assert len(store.load_table("metrics")) == 3
    assert not [w for w in recwarn.list if issubclass(w.category, CorruptRunWarning)]
    assert store.cleanup(older_than_s=3600) == []  # too recent to be an abandoned save
    assert store.cleanup() == [leftover]
    assert not leftover.exists() and store.exists(CFG)


# ------------------------------------------------------------------------------------------ damaged runs
def _corrupt_missing_record(path: Path) -> None:
    (path / "record.json").unlink()


def _corrupt_bad_json(path: Path) -> None:
    (path / "record.json").write_text("{not json")


def _corrupt_checksum(path: Path) -> None:
    text = (path / "metrics.csv").read_text().replace("0.8", "0.9")
    (path / "metrics.csv").write_text(text)  # same size, different content


def _corrupt_config_edit(path: Path) -> None:
    # a consistent hand edit (config and record both updated) still cannot pass: the hash no longer matches
    doc = json.loads((path / "config.json").read_text())
    doc["config"]["seed"] = 5
    (path / "config.json").write_text(json.dumps(doc))
    record = json.loads((path / "record.json").read_text())
    record["files"]["config.json"] = {
        "sha256": sha256_file(path / "config.json"),
        "bytes": (path / "config.json").stat().st_size,
    }
    (path / "record.json").write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (_corrupt_missing_record, "record.json is missing"),
        (_corrupt_bad_json, "record.json is not valid JSON"),
        (_corrupt_checksum, "checksum mismatch for metrics.csv"),
        (_corrupt_config_edit, "hashes to"),
    ],
)
def test_damaged_run_is_reported_and_skipped(tmp_path, corrupt, problem):
    store = RunStore(tmp_path)
    good = {**CFG, "seed": 2}
    store.save(CFG, metrics=_metrics(0.8))
    store.save(good, metrics=_metrics(0.7))
    bad_path = store.run_dir(CFG)
    corrupt(bad_path)

    with pytest.warns(CorruptRunWarning, match=f"{bad_path.name}.*{problem}"):
        runs = store.list_runs()
    assert runs["run_id"].tolist() == [config_hash(good)]
    with pytest.warns(CorruptRunWarning, match=problem):
        table = store.load_table("metrics")
    assert set(table["run_id"]) == {config_hash(good)}
    with pytest.warns(CorruptRunWarning, match=problem):
        assert not store.exists(CFG)
    with pytest.raises(ValueError, match=f"cannot be used: .*{problem}"):
        store.load(CFG)

    # resuming the sweep: the damaged run is redone and replaces the broken folder
    with pytest.warns(CorruptRunWarning, match="Replacing damaged run folder"):
        store.save(CFG, metrics=_metrics(0.85))
    assert store.load(CFG).metrics["value"].iloc[0] == 0.85


def test_checkpoint_damage_detected_on_request(tmp_path):
    store = RunStore(tmp_path)
    store.save(CFG, metrics=_metrics(), checkpoint_fn=lambda p: (p / "w.bin").write_bytes(b"abcd"))
    (store.run_dir(CFG) / "checkpoint" / "w.bin").write_bytes(b"abce")  # same size: only the hash can tell
    assert store.load(CFG).run_id  # default: checkpoint files are size-checked, not re-hashed
    with pytest.raises(ValueError, match="checksum mismatch for checkpoint/w.bin"):
        store.load(CFG, verify_checkpoint=True)
    (store.run_dir(CFG) / "checkpoint" / "w.bin").write_bytes(b"abc")  # truncated: caught cheaply
    with pytest.warns(CorruptRunWarning, match="checkpoint/w.bin has 3 bytes"):
        assert not store.exists(CFG)


# ------------------------------------------------------------------------------------------- listing tables
def test_list_runs_and_load_table(tmp_path):
    store = RunStore(tmp_path)
    configs = [{"method": m, "seed": s, "model": {"name": "minilm"}} for m in ("lnsr", "vanilla") for s in (1, 2)]
    for i, cfg in enumerate(configs):
        history = _history() if cfg["method"] == "lnsr" else None
        store.save(cfg, metrics=_metrics(0.5 + i / 10), history=history)
    runs = store.list_runs()
    assert list(runs.columns) == ["run_id", "method", "seed", "model.name"]
    assert len(runs) == 4 and set(runs["run_id"]) == {config_hash(c) for c in configs}

    metrics = store.load_table("metrics")
    assert list(metrics.columns) == ["run_id", "method", "seed", "model.name", "domain", "metric", "value"]
    assert len(metrics) == 4 * 3
    one = metrics[(metrics["method"] == "vanilla") & (metrics["seed"] == 2)]
    assert one["value"].iloc[0] == pytest.approx(0.8)
    assert (one["run_id"] == config_hash(configs[3])).all()

    history = store.load_table("history")  # only the runs that saved a history
    assert sorted(set(history["method"])) == ["lnsr"] and len(history) == 4
    assert list(history.columns[:4]) == ["run_id", "method", "seed", "model.name"]
    assert store.load_table("profile").empty
    with pytest.raises(ValueError, match=r"'name' parameter of RunStore.load_table must be one of"):
        store.load_table("predictions")


def test_load_table_keeps_table_columns_over_config(tmp_path):
    store = RunStore(tmp_path)
    metrics = _metrics().assign(method="from-table", run_id="bogus")
    store.save({"method": "lnsr", "seed": 1}, metrics=metrics)
    table = store.load_table("metrics")
    assert table.columns.tolist().count("method") == 1 and (table["method"] == "from-table").all()
    assert (table["run_id"] == config_hash({"method": "lnsr", "seed": 1})).all()


# -------------------------------------------------------------------------------------------- writability
def test_root_under_a_regular_file_is_refused(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("I am a file, not a folder")
    with pytest.raises(PermissionError, match=r"RunStore root .*results/store.* is not writable.*read_only=True"):
        RunStore(blocker / "store")


def test_unwritable_runs_folder_is_refused(tmp_path, monkeypatch):
    # root can run as root in CI, where chmod does not stop writes; simulate the kernel's refusal instead, at the
    # exact call the probe makes, so the test fails if the constructor stops probing.
    (tmp_path / "runs").mkdir()
    real_open = os.open

    def deny_probe(path, flags, mode=0o777, *args, **kwargs):
        if ".write-probe-" in os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(store_mod.os, "open", deny_probe)
    with pytest.raises(PermissionError, match="is not writable.*Permission denied"):
        RunStore(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permission bits")
def test_chmod_read_only_root_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs").chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="is not writable"):
            RunStore(tmp_path)
    finally:
        (tmp_path / "runs").chmod(0o755)


def test_read_only_store_reads_but_does_not_write(tmp_path):
    RunStore(tmp_path).save(CFG, metrics=_metrics())
    ro = RunStore(tmp_path, read_only=True)
    assert ro.exists(CFG) and len(ro.list_runs()) == 1
    with pytest.raises(PermissionError, match="read-only"):
        ro.save({**CFG, "seed": 3}, metrics=_metrics())
    with pytest.raises(FileNotFoundError, match="needs an existing store"):
        RunStore(tmp_path / "nowhere", read_only=True)

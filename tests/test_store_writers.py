"""Several writers on one run store, and the leftovers of killed writers (issue 14).

Real processes throughout: a CLI ``compare`` that meets a run another process is making skips it, makes the others,
waits, then loads it; two copies of the same grid started at the same moment make every run exactly once and both
succeed; a save killed with SIGKILL leaves a ``.tmp-*`` folder that is spared while its writer lives and removed once
it is dead (by ``cleanup`` and by the next save of that run); a stale ``.tmp-merge-<id>`` no longer blocks ``merge``;
a refused save or command creates no folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from lnsr_viz.experiments.config import ExperimentConfig
from lnsr_viz.experiments.runs import Job, build_protocol, run_configs, run_jobs
from lnsr_viz.experiments.store import RunStore, config_hash
from lnsr_viz.experiments.sweep import merge_stores
from lnsr_viz.testing import save_tiny_setup

ROOT = Path(__file__).resolve().parents[1]
METRICS = pd.DataFrame({"domain": ["d"], "metric": ["accuracy"], "value": [0.5]})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_setup(tmp_path_factory.mktemp("writers"))


def _settings(root: Path, results: Path) -> dict:
    return dict(model=str(root / "model"), data=str(root / "in.csv"), ood=(), methods=("vanilla",), seeds=(1, 2),
                train_size=24, val_size=8, eval_size=12, epochs=1, batch_size=8, probe_n=6, probe_draws=2,
                results=str(results))


def _cli_args(root: Path, results: Path) -> list[str]:
    return ["compare", "--model", str(root / "model"), "--data", str(root / "in.csv"), "--ood", "",
            "--methods", "vanilla", "--seeds", "1,2", "--train-size", "24", "--val-size", "8", "--eval-size", "12",
            "--epochs", "1", "--batch-size", "8", "--probe-n", "6", "--probe-draws", "2", "--results", str(results),
            "--quiet"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def test_a_run_another_process_is_making_is_skipped_waited_for_and_loaded(tiny, tmp_path):
    results = tmp_path / "store"
    config = ExperimentConfig(**_settings(tiny, results))
    protocol = build_protocol(config)
    jobs = [Job("pretrained", {}, None), Job("vanilla", {}, 1), Job("vanilla", {}, 2)]
    cfgs = run_configs(jobs, config, protocol)
    store = RunStore(results)
    with store.writing(cfgs[0]):  # this process is "making" the pre-trained probe
        proc = subprocess.Popen([sys.executable, "-m", "lnsr_viz", *_cli_args(tiny, results)], cwd=tmp_path,
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 240
        while not all(store.exists(c) for c in cfgs[1:]):  # the other process made the runs it could
            if proc.poll() is not None:
                pytest.fail(f"compare ended while a run was locked:\n{proc.stdout.read()}")
            assert time.monotonic() < deadline, "the other process never made the unlocked runs"
            time.sleep(0.2)
        time.sleep(0.5)
        assert not store.exists(cfgs[0])  # it did not make the locked run itself
        assert proc.poll() is None  # it waits for it
        run_jobs(jobs[:1], config, protocol=protocol, store=store, progress=False, verbose=False)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert "pre-trained model: loaded from the run store" in out
    assert "2 runs trained, 1 loaded from the store" in out
    assert {p.name for p in (results / "runs").iterdir()} == {config_hash(c) for c in cfgs}


_RACER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from lnsr_viz.core.probe import StabilityProbe
    from lnsr_viz.experiments.runs import compare
    made = []  # every run that is made (not loaded) is probed exactly once
    original = StabilityProbe.run
    def counting(self, *args, **kwargs):
        made.append(kwargs.get("label"))
        return original(self, *args, **kwargs)
    StabilityProbe.run = counting
    settings, go = json.loads(sys.argv[1]), Path(sys.argv[2])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    result = compare(**settings, progress=False, verbose=False)
    print(json.dumps({**result.timings, "made": len(made)}), flush=True)
""")


def test_the_same_grid_started_twice_makes_every_run_once(tiny, tmp_path):
    results = tmp_path / "store"
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in _settings(tiny, results).items()}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, json.dumps(settings), str(go)], cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:  # both have imported everything: start them at the same moment
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    go.touch()
    timings = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err  # before: "Run ... already exists" in one of them
        timings.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(t["made"] for t in timings) == 3  # every run made once, by one of the two
    assert sum(t["trained_runs"] for t in timings) == 3
    assert all(t["trained_runs"] + t["cached_runs"] == 3 for t in timings)
    assert len([p for p in (results / "runs").iterdir() if not p.name.startswith(".")]) == 3


_KILLED_SAVE = textwrap.dedent("""
    import sys, time
    import pandas as pd
    from lnsr_viz.experiments.store import RunStore

    def checkpoint(folder):
        (folder / "weights.bin").write_bytes(b"x" * 100)
        print("saving", flush=True)
        time.sleep(600)

    metrics = pd.DataFrame({"domain": ["d"], "metric": ["accuracy"], "value": [0.5]})
    RunStore(sys.argv[1]).save({"seed": int(sys.argv[2])}, metrics=metrics, checkpoint_fn=checkpoint)
""")


def _start_killable_save(root: Path, seed: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(root), str(seed)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving", proc.stderr.read()
    return proc


def _temporaries(root: Path) -> list[Path]:
    return sorted((root / "runs").glob(".tmp-*"))


def test_sigkill_during_a_save_leaves_a_temporary_that_the_store_cleans(tmp_path):
    store = RunStore(tmp_path)
    proc = _start_killable_save(tmp_path, 1)
    try:
        [live] = _temporaries(tmp_path)
        assert store.cleanup() == [] and live.is_dir()  # its writer is alive: spared
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert _temporaries(tmp_path) == [live]  # the kill left it behind
    assert store.cleanup() == [live] and not live.exists()

    proc = _start_killable_save(tmp_path, 2)  # killed again; this time the next save of that run cleans up
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert len(_temporaries(tmp_path)) == 1
    store.save({"seed": 2}, metrics=METRICS)
    assert _temporaries(tmp_path) == [] and store.exists({"seed": 2})


def test_a_stale_merge_temporary_does_not_block_merge(tmp_path):
    src = RunStore(tmp_path / "shard")
    cfg = {"seed": 1, "data": {"in_domain": "x", "fingerprint": "aaaa"}}
    src.save(cfg, metrics=METRICS)
    dest = tmp_path / "merged"
    stale = dest / "runs" / f".tmp-merge-{config_hash(cfg)}"  # what an interrupted merge left
    stale.mkdir(parents=True)
    (stale / "metrics.csv").write_text("half")
    assert merge_stores([tmp_path / "shard"], dest) == 1
    assert not stale.exists() and RunStore(dest).exists(cfg)
    assert merge_stores([tmp_path / "shard"], dest) == 0  # already there


def test_merge_into_a_store_with_other_data_behind_the_same_names_is_refused(tmp_path):
    RunStore(tmp_path / "dest").save({"seed": 1, "data": {"in_domain": "x", "fingerprint": "aaaa"}},
                                     metrics=METRICS)
    RunStore(tmp_path / "shard").save({"seed": 2, "data": {"in_domain": "x", "fingerprint": "bbbb"}},
                                      metrics=METRICS)
    with pytest.raises(ValueError, match="same data settings but different data"):
        merge_stores([tmp_path / "shard"], tmp_path / "dest")
    assert len(RunStore(tmp_path / "dest").list_runs()) == 1


def test_a_store_is_created_by_its_first_run_not_before(tmp_path):
    store = RunStore(tmp_path / "results")
    assert not (tmp_path / "results").exists()
    assert store.list_runs().empty and store.cleanup() == []
    store.save({"seed": 1}, metrics=METRICS)
    assert store.exists({"seed": 1})

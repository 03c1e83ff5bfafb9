"""The Ray executor of sweeps: the same job list as the one-process executor and the shards, the same stored metrics
bit for bit, a worker killed mid-way (the store complete, nothing run twice), stored runs not submitted, and the
refusals before any work (Ray missing, ray options without Ray, an address that does not answer, resources no node
has, GPUs on a CPU-only cluster). The tests that start Ray use one local 2-CPU instance (no dashboard, a small object
store) and are marked slow; the refusals and the resource arithmetic need no Ray instance."""

import os
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from lnsr_viz.cli import main
from lnsr_viz.experiments.ray_executor import SweepFailed, check_address, check_resources, runs_at_once
from lnsr_viz.experiments.store import RunStore
from lnsr_viz.experiments.sweep import expand, run_sweep, shard_jobs, validate_config
from lnsr_viz.testing import save_tiny_setup


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_setup(tmp_path_factory.mktemp("ray_sweep"))


def _config(root):
    return validate_config({"model": str(root / "model"), "data": str(root / "in.csv"), "ood": [], "train_sizes": [16],
                            "seeds": [1, 2], "val_size": 8, "eval_size": 12, "probe": {"n": 4, "n_draws": 1},
                            "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
                            "methods": {"vanilla": {}, "lnsr": {"lam": [1.0]}}})


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers get this file's hooks by value
    options = {"num_cpus": 2, "include_dashboard": False, "object_store_memory": 80 * 1024**2, "log_to_driver": False,
               "configure_logging": False}
    try:
        ray.init(**options)
    except Exception as err:  # Ray gives its raylet 30 s to start: on a busy 2-core machine, try once more
        if "timed out during startup" not in str(err):
            raise
        ray.shutdown()
        ray.init(**options)
    yield ray
    ray.shutdown()


class CrashOnce:
    """A ``before_job`` hook: records every attempt in ``folder`` and kills the worker (``os._exit``) the first time
    it starts ``victim`` (a job name and seed)."""

    def __init__(self, folder, victim=None):
        self.folder, self.victim = str(folder), victim

    def __call__(self, train_size, job):
        folder = Path(self.folder)
        (folder / f"start--{job.name}--{job.seed}--{uuid.uuid4().hex}").touch()
        if self.victim == (job.name, job.seed) and not (folder / "crashed").exists():
            (folder / "crashed").touch()
            os._exit(1)  # the worker process dies mid-way, as on a lost node


def ray_is_running():
    """Whether this process already holds a Ray instance (the executor then uses it and ignores --address)."""
    return "ray" in sys.modules and sys.modules["ray"] is not None and sys.modules["ray"].is_initialized()


def _starts(folder):
    names = [p.name.split("--")[1:3] for p in Path(folder).glob("start--*")]
    return pd.Series([f"{m}/{s}" for m, s in names]).value_counts().to_dict()


# ---- without a Ray instance ----------------------------------------------------------------------------------------
def test_the_shards_and_the_full_grid_are_one_job_list(tiny):
    config = _config(tiny)
    full = shard_jobs(config)
    assert full == expand(config) and len(full) == 5
    shards = [shard_jobs(config, f"{i}/3") for i in (1, 2, 3)]
    interleaved = [shards[k % 3][k // 3] for k in range(len(full))]
    assert interleaved == full


def test_resource_arithmetic_and_refusals():
    gpu_node = {"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}}
    cpu_node = {"Alive": True, "Resources": {"CPU": 8.0}}
    dead = {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}
    assert runs_at_once([gpu_node], cpus_per_run=1, gpus_per_run=0.25) == 8  # four runs per GPU, two GPUs
    assert runs_at_once([gpu_node], cpus_per_run=4, gpus_per_run=0.25) == 4  # the CPUs bind first
    assert runs_at_once([gpu_node, cpu_node], cpus_per_run=2) == 12
    assert check_resources([gpu_node, cpu_node, dead], cpus_per_run=1, gpus_per_run=0.25) == 8
    with pytest.raises(ValueError, match="no node of the local Ray instance has one"):
        check_resources([cpu_node, dead], cpus_per_run=1, gpus_per_run=0.25)
    with pytest.raises(ValueError, match="--cpus-per-run 32 is more than any node"):
        check_resources([gpu_node, cpu_node], cpus_per_run=32)
    with pytest.raises(ValueError, match="--gpus-per-run 4 is more than any node"):
        check_resources([gpu_node], cpus_per_run=1, gpus_per_run=4)


def test_an_address_that_does_not_answer_is_refused_at_once():
    import socket

    with socket.socket() as s:  # a local port that nothing listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port} did not answer"):
        check_address(f"127.0.0.1:{port}")
    with pytest.raises(ConnectionError, match="did not answer within 1 s"):  # TEST-NET-1: no reply, the timeout
        check_address("ray://192.0.2.1:10001", timeout=1.0)
    with pytest.raises(ValueError, match="must look like host:port"):
        check_address("my-cluster")


def test_cli_refuses_ray_when_it_is_missing_and_ray_options_without_ray(tiny, tmp_path, monkeypatch, capsys):
    import yaml

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in _config(tiny).items()}), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--results", str(out), "--gpus-per-run", "0.25"]) == 2
    assert "--gpus-per-run only apply with --executor ray" in capsys.readouterr().err
    if not ray_is_running():  # an address that does not answer: one error line, nothing written
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        assert main(["sweep", str(path), "--results", str(out), "--executor", "ray", "--address",
                     f"127.0.0.1:{port}", "--quiet"]) == 2
        assert f"the Ray cluster at --address 127.0.0.1:{port} did not answer" in capsys.readouterr().err
        assert not out.exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["sweep", str(path), "--results", str(out), "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --executor ray needs ray") and "pip install 'lnsr_viz[ray]'" in err
    assert not out.exists()  # refused before any work


def test_bad_ray_requests_are_refused_before_any_work(tiny, tmp_path):
    config = _config(tiny)
    for kwargs, message in (({"cpus_per_run": 0}, "'cpus_per_run' parameter"),
                            ({"gpus_per_run": 1.5}, "only in fractions below 1"),
                            ({"device": "cuda"}, "needs --gpus-per-run"),
                            ({"device": "cuda:1", "gpus_per_run": 1}, "not a GPU number"),
                            ({"max_retries": -1}, "'max_retries' parameter")):
        with pytest.raises(ValueError, match=message):
            run_sweep(config, results=tmp_path / "r", executor="ray", progress=False, verbose=False, **kwargs)
    with pytest.raises(ValueError, match="options of executor='ray'"):
        run_sweep(config, results=tmp_path / "r", gpus_per_run=0.25)
    import torch

    if not torch.cuda.is_available() and not ray_is_running():  # refused without starting a local Ray instance
        with pytest.raises(ValueError, match="--gpus-per-run 0.25 asks for GPUs, but this machine has none"):
            run_sweep(config, results=tmp_path / "r", executor="ray", gpus_per_run=0.25)
    assert not (tmp_path / "r").exists()


# ---- on a local 2-CPU Ray instance ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_and_one_process_give_the_same_runs_and_a_killed_worker_is_retried(tiny, tmp_path, ray_instance):
    import torch

    config = _config(tiny)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the Ray tasks run with cpus_per_run=1 thread
    try:
        local = run_sweep(config, results=tmp_path / "local", progress=False, verbose=False)
    finally:
        torch.set_num_threads(threads)
    marks = tmp_path / "marks"
    marks.mkdir()
    hook = CrashOnce(marks, victim=("lnsr[lam=1.0]", 2))
    runs = run_sweep(config, results=tmp_path / "ray", executor="ray", progress=False, verbose=False,
                     cpus_per_run=1, max_retries=2, before_job=hook)
    # the same job list, in the same order, with the same run ids
    assert list(runs["run_id"]) == list(local["run_id"])
    assert list(runs["method"]) == list(local["method"]) and not runs["cached"].any()
    assert runs["error"].isna().all()
    # the store is complete, and nothing ran twice: one attempt per job, two for the one whose worker died
    store = RunStore(tmp_path / "ray", read_only=True)
    assert sorted(store.list_runs()["run_id"]) == sorted(local["run_id"])
    assert (marks / "crashed").exists()
    starts = _starts(marks)
    assert starts.pop("lnsr[lam=1.0]/2") == 2
    assert set(starts.values()) == {1} and len(starts) == len(runs) - 1
    assert not list((tmp_path / "ray" / "runs").glob(".tmp-*"))
    # identical stored metrics, histories (but their wall-clock seconds) and profiles, bit for bit
    mine = RunStore(tmp_path / "local", read_only=True)
    for table in ("metrics", "history", "profile"):
        a, b = (s.load_table(table).sort_values(["run_id"], kind="stable").reset_index(drop=True).drop(
            columns=["seconds"], errors="ignore") for s in (mine, store))
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    # a second call finds every run stored and submits nothing (the hook is never called)
    again = run_sweep(config, results=tmp_path / "ray", executor="ray", progress=False, verbose=False,
                      before_job=CrashOnce(tmp_path))
    assert again["cached"].all() and not list(tmp_path.glob("start--*"))


@pytest.mark.slow
def test_a_job_that_keeps_failing_is_reported_by_name_and_the_rest_are_stored(tiny, tmp_path, ray_instance):
    config = _config(tiny)
    expected = r"1 of 5 run\(s\) failed after 1 retries \(4 stored\).*vanilla seed 2 \(train size 16\)"
    with pytest.raises(SweepFailed, match=expected) as info:
        run_sweep(config, results=tmp_path / "r", executor="ray", progress=False, verbose=False, max_retries=1,
                  before_job=FailVanilla2())
    runs = info.value.runs
    assert runs["error"].notna().sum() == 1 and "RuntimeError: refused on purpose" in runs["error"].dropna().iloc[0]
    assert len(RunStore(tmp_path / "r", read_only=True).list_runs()) == 4


class FailVanilla2:
    """A ``before_job`` hook that fails vanilla seed 2 on every attempt."""

    def __call__(self, train_size, job):
        if job.name == "vanilla" and job.seed == 2:
            raise RuntimeError("refused on purpose")


@pytest.mark.slow
def test_gpus_on_a_cpu_only_cluster_are_refused_before_submitting(tiny, tmp_path, ray_instance):
    with pytest.raises(ValueError, match="--gpus-per-run 0.25 asks for GPUs, but no node"):
        run_sweep(_config(tiny), results=tmp_path / "r", executor="ray", gpus_per_run=0.25, progress=False,
                  verbose=False)
    with pytest.raises(ValueError, match="--cpus-per-run 3 is more than any node"):
        run_sweep(_config(tiny), results=tmp_path / "r", executor="ray", cpus_per_run=3, progress=False,
                  verbose=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_ctrl_c_cancels_what_is_queued_and_leaves_the_store_consistent(tiny, tmp_path, ray_instance, monkeypatch):
    config = _config(tiny)
    real_wait, calls = ray_instance.wait, []

    def wait_then_interrupt(*args, **kwargs):  # Ctrl-C in the driver once the first run has come back
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(ray_instance, "wait", wait_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, results=tmp_path / "r", executor="ray", progress=False, verbose=False)
    monkeypatch.setattr(ray_instance, "wait", real_wait)
    store = RunStore(tmp_path / "r", read_only=True)
    assert len(store.list_runs()) == 1  # the run that came back, complete; nothing half-written
    assert not list((tmp_path / "r" / "runs").glob(".tmp-*"))
    again = run_sweep(config, results=tmp_path / "r", executor="ray", progress=False, verbose=False)
    assert int(again["cached"].sum()) == 1 and len(RunStore(tmp_path / "r", read_only=True).list_runs()) == 5

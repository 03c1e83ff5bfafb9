"""Sweeps on Ray: every job of a grid becomes a Ray task with its own resources (``run_sweep(executor='ray')``).

The job list is :func:`lnsr_viz.experiments.sweep.shard_jobs`, the same function the one-process executor and
``--shard`` use, so the executors can never disagree about what a grid contains. On one machine a local Ray instance
is started (and shut down at the end); with ``address`` the driver joins an existing cluster (``'auto'``,
``'host:6379'``, ``'ray://host:10001'``). A Ray instance the caller already started (``ray.init(...)``) is used as
it is (``address`` is then not read).

Where results go, and why: **workers send their runs back to the driver, which writes them into the one run store.**
Each task trains its job into a private temporary run store on the worker's own disk
(:func:`~lnsr_viz.experiments.runs.run_jobs`, the same code the one-process executor runs) and returns the run
folder's files (a few hundred kB: tables and JSON, no checkpoint); the driver checks them against their sha256
record and moves them into the store with :meth:`~lnsr_viz.experiments.store.RunStore.import_run` (a temporary folder
and one ``os.replace`` under the run's lock). So the cluster needs no shared filesystem, workers never write to the
store (a worker that dies leaves nothing in it), and the store is consistent whatever is interrupted.

- Runs already stored are not submitted (they are counted on the progress bar at once).
- A task that raises, or whose worker dies, is retried up to ``max_retries`` times (Ray's ``max_retries`` with
  ``retry_exceptions=True``); a job that still fails is reported by name in :class:`SweepFailed` after every other
  job has finished.
- Progress is one ``tqdm`` bar over the whole grid (stored + finished).
- Ctrl-C cancels every task still queued or running (``ray.cancel``); runs that came back before are in the store,
  nothing half-written is.
- Resources: ``cpus_per_run`` CPUs (also the task's torch threads) and ``gpus_per_run`` GPUs per task; a fraction
  packs several runs on one GPU (``0.25``: four). Requests no node can meet, and GPUs on a cluster without any,
  are refused before anything is submitted.

Same grid, same runs: a task runs exactly the code of the one-process executor with the same configuration, so on
CPU (with the same number of torch threads) the stored metrics are identical, bit for bit.
"""

from __future__ import annotations

import math
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..utils.validation import check_number
from .runs import Job, build_protocol, run_configs, run_jobs

__all__ = ["run_jobs_ray", "check_ray_request", "run_job_task", "check_resources", "runs_at_once", "check_address",
           "SweepFailed", "RAY_HINT", "ADDRESS_TIMEOUT_S"]

#: How to install the optional Ray executor.
RAY_HINT = "pip install 'lnsr_viz[ray]'"
#: Seconds the driver waits for a cluster address to answer before it gives up.
ADDRESS_TIMEOUT_S = 5.0
_ROW_COLUMNS = ["run_id", "method", "seed", "cached", "seconds", "collapsed", "train_size"]


class SweepFailed(RuntimeError):
    """Some jobs of a sweep failed after their retries; ``runs`` holds one row per job (``error`` says why)."""

    def __init__(self, message: str, runs: pd.DataFrame) -> None:
        super().__init__(message)
        self.runs = runs


def require_ray() -> Any:
    """Import ``ray``, or raise ImportError saying how to install it (before any work)."""
    from ..utils.extras import require

    try:
        return require("ray", "--executor ray")
    except ImportError as err:
        raise ImportError(f"{err} Without it, use the default one-process executor or --shard i/n, which need "
                          "nothing more.") from err.__cause__


def check_address(address: str, *, timeout: float = ADDRESS_TIMEOUT_S) -> None:
    """Refuse, within ``timeout`` seconds, a cluster address (``host:port`` or ``ray://host:port``) that does not
    answer; ``'auto'`` (Ray's own discovery) is left to Ray."""
    if address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--address {address!r} must look like host:port (e.g. 10.0.0.5:6379), "
                         "ray://host:10001 or auto.")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConnectionError(f"the Ray cluster at --address {address} did not answer within {timeout:.0f} s "
                              f"({type(exc).__name__}: {exc}); check the address and that `ray start --head` runs "
                              "there, or leave --address out to start a local Ray instance.") from None


def _node_totals(nodes: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """CPUs and GPUs of every live node of ``ray.nodes()``."""
    return [{"CPU": float(n.get("Resources", {}).get("CPU", 0.0)), "GPU": float(n.get("Resources", {}).get("GPU", 0.0))}
            for n in nodes if n.get("Alive", True)]


def runs_at_once(nodes: Sequence[Mapping[str, Any]], *, cpus_per_run: float, gpus_per_run: float = 0.0) -> int:
    """How many runs the cluster can hold at the same time: per node, whole tasks by CPU and by GPU, summed."""
    total = 0
    eps = 1e-9
    for node in _node_totals(nodes):
        by_cpu = math.floor(node["CPU"] / cpus_per_run + eps)
        by_gpu = math.floor(node["GPU"] / gpus_per_run + eps) if gpus_per_run > 0 else by_cpu
        total += min(by_cpu, by_gpu)
    return total


def check_resources(nodes: Sequence[Mapping[str, Any]], *, cpus_per_run: float, gpus_per_run: float = 0.0,
                    where: str = "the local Ray instance") -> int:
    """Refuse resources that no node has (before anything is submitted); return :func:`runs_at_once`."""
    totals = _node_totals(nodes)
    if not totals:
        raise ValueError(f"{where} has no live node; start one (`ray start --head`) or leave --address out.")
    max_cpu = max(n["CPU"] for n in totals)
    max_gpu = max(n["GPU"] for n in totals)
    if gpus_per_run > 0 and max_gpu == 0:
        raise ValueError(f"--gpus-per-run {gpus_per_run:g} asks for GPUs, but no node of {where} has one "
                         f"({len(totals)} node(s), CPUs only); leave --gpus-per-run at 0 to train on CPUs.")
    if gpus_per_run > max_gpu:
        raise ValueError(f"--gpus-per-run {gpus_per_run:g} is more than any node of {where} has (at most "
                         f"{max_gpu:g} GPUs on one node); use --gpus-per-run <= {max_gpu:g}.")
    if cpus_per_run > max_cpu:
        raise ValueError(f"--cpus-per-run {cpus_per_run:g} is more than any node of {where} has (at most "
                         f"{max_cpu:g} CPUs on one node); use --cpus-per-run <= {max_cpu:g}.")
    fitting = runs_at_once(nodes, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run)
    if fitting == 0:
        raise ValueError(f"no node of {where} has {cpus_per_run:g} CPUs and {gpus_per_run:g} GPUs at once; "
                         "lower --cpus-per-run or --gpus-per-run.")
    return fitting


def check_ray_request(*, device: str | None = None, address: str | None = None, cpus_per_run: float = 1.0,
                      gpus_per_run: float = 0.0, max_retries: int = 2, before_job: Any = None) -> str | None:
    """Check, before any work, that Ray is installed and the per-run resources and device make sense; return the
    device the tasks train on (``'cuda'`` when ``gpus_per_run > 0``). ``address`` and ``before_job`` are not checked
    here (the address is tried when the executor connects)."""
    ray = require_ray()
    owner = "run_sweep(executor='ray')"
    check_number("cpus_per_run", cpus_per_run, owner=owner, low=0.0, low_closed=False,
                 hint="Each run needs some CPU, e.g. cpus_per_run=1 (--cpus-per-run 1).")
    check_number("gpus_per_run", gpus_per_run, owner=owner, low=0.0,
                 hint="0 trains on CPUs; 0.25 packs four runs onto one GPU.")
    check_number("max_retries", max_retries, owner=owner, integer=True, low=0)
    if gpus_per_run > 1 and float(gpus_per_run) != int(gpus_per_run):
        raise ValueError(f"--gpus-per-run {gpus_per_run:g}: Ray shares a GPU only in fractions below 1; above 1 "
                         "give a whole number of GPUs.")
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"--device {device} with --executor ray: Ray assigns each task its GPU, so give --device "
                         "cuda (with --gpus-per-run) or cpu, not a GPU number.")
    if device == "cuda" and gpus_per_run == 0:
        raise ValueError("--device cuda with --executor ray needs --gpus-per-run (e.g. 1, or 0.25 for four runs "
                         "per GPU): Ray gives a task no GPU otherwise.")
    if device == "cpu" and gpus_per_run > 0:
        raise ValueError(f"--device cpu contradicts --gpus-per-run {gpus_per_run:g}; drop one of them.")
    if gpus_per_run > 0 and address is None and not ray.is_initialized():
        import torch

        if not torch.cuda.is_available():  # the local Ray instance would have no GPU: refuse without starting it
            raise ValueError(f"--gpus-per-run {gpus_per_run:g} asks for GPUs, but this machine has none (a local "
                             "Ray instance would have no GPU); leave --gpus-per-run at 0 to train on CPUs, or give "
                             "--address of a Ray cluster with GPUs.")
    return "cuda" if gpus_per_run > 0 else device


_PROTOCOLS: dict[str, Any] = {}  # per worker process: the data protocol of each training-set size, built once


def run_job_task(experiment: Any, train_size: int, job: Job, *, device: str | None = None, threads: int = 1,
                 before_job: Callable[[int, Job], None] | None = None,
                 tracking: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Make one run of ``experiment`` (the job's training-set size's ExperimentConfig) in a private temporary store and
    return its row and its folder's files (the Ray task's body).

    ``before_job(train_size, job)`` is called first, on every attempt (a hook, e.g. for tests that kill a worker).
    """
    import json

    import torch

    from .store import RunStore

    torch.set_num_threads(max(1, int(threads)))
    if before_job is not None:
        before_job(train_size, job)
    key = json.dumps(experiment.to_dict(), sort_keys=True, default=str)
    protocol = _PROTOCOLS.get(key)
    if protocol is None:
        protocol = _PROTOCOLS[key] = build_protocol(experiment)
    with tempfile.TemporaryDirectory(prefix="lnsr_viz-ray-") as tmp:
        store = RunStore(tmp)
        row = run_jobs([job], experiment, protocol=protocol, store=store, progress=False, verbose=False,
                       device=device, tracking=tracking).iloc[0].to_dict()
        folder = store.run_dir(str(row["run_id"]))
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    row["seed"] = None if pd.isna(row["seed"]) else int(row["seed"])
    return {"row": row, "files": files}


def _store_result(store: Any, result: Mapping[str, Any]) -> bool:
    """Write a task's run folder into ``store`` (checked against its sha256 record first); False if already there."""
    from .store import RunStore

    run_id = str(result["row"]["run_id"])
    with tempfile.TemporaryDirectory(prefix="lnsr_viz-ray-in-") as tmp:
        folder = Path(tmp) / "runs" / run_id
        for rel, data in result["files"].items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        RunStore(tmp, read_only=True).load(run_id)  # raises if a file does not match its record
        return store.import_run(folder)


def _connect(ray: Any, address: str | None) -> bool:
    """Start a local Ray instance or join ``address``; True when this call initialised Ray (and must shut it)."""
    if ray.is_initialized():
        return False
    if address is not None:
        check_address(address)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        ray.init(address=address, **kwargs)
    except Exception as err:  # Ray gives a local raylet 30 s to start; on a busy machine, try once more
        if address is not None or "timed out during startup" not in str(err):
            raise
        ray.shutdown()
        ray.init(**kwargs)
    return True


def _failure_text(err: BaseException) -> str:
    """The first line of a task's error (Ray wraps the worker's exception)."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else '(no message)'}"


def run_jobs_ray(jobs: Sequence[Any], experiments: Mapping[int, Any], *, store: Any, address: str | None = None,
                 cpus_per_run: float = 1.0, gpus_per_run: float = 0.0, max_retries: int = 2, progress: bool = True,
                 verbose: bool = True, device: str | None = None,
                 before_job: Callable[[int, Job], None] | None = None,
                 tracking: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Run a grid's jobs (``SweepJob``s of :func:`~lnsr_viz.experiments.sweep.shard_jobs`, with the
    :class:`~lnsr_viz.experiments.config.ExperimentConfig` of each training-set size) as Ray tasks; one row per job,
    like the one-process executor. ``run_sweep(executor='ray')`` checks everything and calls this.

    ``tracking`` is passed to every task (:func:`~lnsr_viz.experiments.runs.run_jobs`): the workers report to
    TensorBoard / MLflow themselves, so use an MLflow tracking server (``MLFLOW_TRACKING_URI``) or a ``logging_dir``
    that every node can reach. Raises :class:`SweepFailed` (its ``runs`` holding every row, ``error`` set for the
    failed ones) when some jobs still failed after ``max_retries`` retries; every other job is stored by then.
    """
    from tqdm.auto import tqdm

    ray = require_ray()
    by_size: dict[int, list[Job]] = {}
    for sj in jobs:
        by_size.setdefault(sj.train_size, []).append(sj.job)
    keys = {size: iter(run_configs(size_jobs, experiments[size], build_protocol(experiments[size])))
            for size, size_jobs in by_size.items()}  # each size's run keys, in the grid's order
    rows: dict[int, dict[str, Any]] = {}
    todo = []
    for k, sj in enumerate(jobs):
        cfg = next(keys[sj.train_size])
        if store.exists(cfg):
            run = store.load(cfg)
            rows[k] = {"run_id": run.run_id, "method": sj.job.name, "seed": sj.job.seed, "cached": True,
                       "seconds": run.extra.get("seconds", float("nan")), "collapsed": run.extra.get("collapsed")}
        else:
            todo.append(k)
    say = tqdm.write if verbose else (lambda *_a, **_k: None)
    failures: dict[int, str] = {}
    if todo:
        started = _connect(ray, address)
        try:
            where = f"the Ray cluster at {address}" if address else "the local Ray instance"
            at_once = check_resources(ray.nodes(), cpus_per_run=float(cpus_per_run),
                                      gpus_per_run=float(gpus_per_run), where=where)
            say(f"Ray: {len(todo)} of {len(jobs)} runs to make, up to {at_once} at once "
                f"({cpus_per_run:g} CPU, {gpus_per_run:g} GPU each); {len(jobs) - len(todo)} already stored")
            _submit_and_collect(ray, experiments, jobs, todo, store, rows, failures, device=device,
                                cpus_per_run=float(cpus_per_run), gpus_per_run=float(gpus_per_run),
                                max_retries=int(max_retries), before_job=before_job, progress=progress, say=say,
                                tracking=tracking)
        finally:
            if started:
                ray.shutdown()
    runs = _runs_frame(jobs, rows, failures)
    if failures:
        names = "; ".join(f"{jobs[k].job.name} seed {jobs[k].job.seed} (train size {jobs[k].train_size}): "
                          f"{failures[k]}" for k in sorted(failures))
        raise SweepFailed(f"{len(failures)} of {len(jobs)} run(s) failed after {max_retries} retries "
                          f"({len(jobs) - len(failures)} stored): {names}", runs)
    return runs


def _submit_and_collect(ray: Any, experiments: Mapping[int, Any], jobs: Sequence[Any], todo: Sequence[int], store: Any,
                        rows: dict[int, dict[str, Any]], failures: dict[int, str], *, device: str | None,
                        cpus_per_run: float, gpus_per_run: float, max_retries: int,
                        before_job: Callable[[int, Job], None] | None, progress: bool,
                        say: Callable[..., None], tracking: Mapping[str, Any] | None = None) -> None:
    """Submit one task per job of ``todo``; store each result as it comes back; cancel the rest on Ctrl-C."""
    from tqdm.auto import tqdm

    task = ray.remote(run_job_task).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=max_retries,
                                            retry_exceptions=True)
    pending = {task.remote(experiments[jobs[k].train_size], jobs[k].train_size, jobs[k].job, device=device,
                           threads=max(1, int(cpus_per_run)), before_job=before_job, tracking=tracking): k
               for k in todo}
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="runs", unit="run", disable=not progress)
    t0 = time.perf_counter()
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                k = pending.pop(ref)
                sj = jobs[k]
                try:
                    result = ray.get(ref)
                except Exception as err:  # the task raised, or its worker died, on every attempt
                    failures[k] = _failure_text(err)
                    say(f"  {sj.job.name} seed {sj.job.seed}: FAILED after {max_retries} retries: {failures[k]}")
                else:
                    fresh = _store_result(store, result)
                    rows[k] = {**result["row"], "cached": not fresh}
                    say(f"  {sj.job.name} seed {sj.job.seed} (train size {sj.train_size}): stored "
                        f"({result['row']['run_id']}, {result['row']['seconds']:.0f} s)")
                bar.update(1)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=False)
        say(f"  interrupted: cancelled {len(pending)} queued or running run(s); {len(rows)} stored runs are kept "
            f"({time.perf_counter() - t0:.0f} s)")
        raise
    finally:
        bar.close()


def _runs_frame(jobs: Sequence[Any], rows: Mapping[int, Mapping[str, Any]], failures: Mapping[int, str]
                ) -> pd.DataFrame:
    """One row per job in the grid's order (``error`` filled for failed jobs)."""
    out = []
    for k, sj in enumerate(jobs):
        row = dict(rows.get(k) or {"run_id": None, "method": sj.job.name, "seed": sj.job.seed, "cached": False,
                                   "seconds": float("nan"), "collapsed": None})
        row["train_size"] = sj.train_size
        row["error"] = failures.get(k)
        out.append(row)
    runs = pd.DataFrame(out, columns=[*_ROW_COLUMNS, "error"])
    runs["seed"] = runs["seed"].astype("Int64")
    return runs

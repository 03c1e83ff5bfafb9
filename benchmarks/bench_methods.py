"""Cost of every fine-tuning method: seconds per training step and peak step memory, each as a ratio to vanilla.

One run measures every method on the same model (the packaged all-MiniLM-L6-v2 with a 2-class head), the same
batch (``--batch-size`` movie snippets padded to ``--seq-len`` tokens) and the same machine, with each method's
default parameters and the step :meth:`lnsr_viz.training.loop.FineTuner.training_step` runs (loss, backward, the
method's hooks, clipping, AdamW). Nothing here is a test; it measures and prints.

Time: wall-clock seconds per step, and the process's CPU seconds per step (on a machine shared with other jobs the
CPU time is the steadier measure of work). ``--reps`` rounds; in each round every method (in a rotated order, so
slow drifts of a shared machine hit all methods alike) gets a fresh copy of the model, its ``setup`` and optimizer,
``--warmup`` untimed steps, then ``--steps`` timed steps. A round's figure is the median step time; the table shows
the median over rounds with the min-max range, and the ratio to vanilla computed within each round (median and
range over rounds).

Memory: the peak of the tensor memory a method's set-up and two training steps allocate on top of the model's
parameters: gradients, AdamW state, activations kept for the backward pass, the method's own copies of weights and
temporaries. On CPU it is read from the torch profiler's allocation events (every allocation and free in time
order; the process's resident size would mix in allocator caches and thread stacks), on CUDA from
``torch.cuda.max_memory_allocated``. It does not depend on the machine's load, unlike the times.

``lnsr-floor`` is a reference, not a method: the clean pass plus one replay of blocks 1..L from the clean embedding
output and the backward through both, with no noise, penalty or dropout replay, i.e. the floor of LNSR's cost at
``injection_layer=0``.

LNSR's cheaper options (``--lnsr-options``, see :data:`LNSR_OPTIONS` and the ``LNSR`` docstring) are timed as
further rows, e.g. ``lnsr-batched`` (one batched pass), ``lnsr-f0.25`` (penalty on a quarter of the sequences),
``lnsr-every4`` (penalty every 4th step, weight x4). For an ``every=m`` option a round times a multiple of m steps
and takes their mean (the median would pick the cheap unpenalised steps); memory covers m + 1 steps.
``lnsr-indep`` (the full penalty with ``dropout='independent'``) is the reference for the options that need it.

Usage::

    python benchmarks/bench_methods.py                       # all methods, 3 rounds x 3 steps, batch 16 x 64
    python benchmarks/bench_methods.py --threads 1           # on a machine shared with other jobs
    python benchmarks/bench_methods.py --methods vanilla,lnsr --reps 5 --out /tmp/bench.json
    python benchmarks/bench_methods.py --lnsr-options --batch-size 32 --no-memory   # LNSR's cheaper options only
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from machine import machine  # noqa: E402  (benchmarks/machine.py; scripts run from this folder)

from lnsr_viz.core.adapter import ModelAdapter  # noqa: E402
from lnsr_viz.methods import METHODS, LossParts, Method  # noqa: E402
from lnsr_viz.training.loop import FineTuner  # noqa: E402

FLOOR = "lnsr-floor"

#: LNSR's cheaper estimators, as benchmark rows: name -> ``LNSR`` parameters (shared with bench_lnsr_estimators.py).
LNSR_OPTIONS: dict[str, dict[str, Any]] = {
    "lnsr-indep": {"dropout": "independent"},
    "lnsr-batched": {"batched": True, "dropout": "independent"},
    "lnsr-f0.5": {"fraction": 0.5, "dropout": "independent"},
    "lnsr-f0.25": {"fraction": 0.25, "dropout": "independent"},
    "lnsr-batched-f0.25": {"batched": True, "fraction": 0.25, "dropout": "independent"},
    "lnsr-every2": {"every": 2},
    "lnsr-every4": {"every": 4},
}


def _period(name: str) -> int:
    """Steps after which a method's cost repeats (``every`` of an LNSR option, else 1)."""
    return int(LNSR_OPTIONS.get(name, {}).get("every", 1))


class ReplayFloor(Method):
    """The floor of LNSR's cost: clean pass + a replay of blocks 1..L + backward through both, nothing else."""

    name = FLOOR

    def setup(self, model: torch.nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.adapter = ModelAdapter(model)

    def compute_loss(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        cap = self.adapter.capture(inputs)
        replayed = self.adapter.replay(cap, cap.hidden[0], start=0)
        task = cap.output.loss
        loss = task + 0.0 * replayed[-1].sum()  # keeps the replay in the graph: its backward runs in full
        return LossParts(loss=loss, task_loss=task.detach(), reg_loss=torch.zeros(()), logits=cap.output.logits)


def _method(name: str) -> FineTuner:
    if name in LNSR_OPTIONS:
        from lnsr_viz.methods import LNSR

        return FineTuner(LNSR(**LNSR_OPTIONS[name]), progress=False)
    return FineTuner(ReplayFloor() if name == FLOOR else name, progress=False)


def _batch(tokenizer: Any, batch_size: int, seq_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    from lnsr_viz.data.text import load_domain

    data = load_domain("movie")
    texts = [str(t) for t in data.texts[:batch_size]]
    enc = dict(tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"))
    enc["labels"] = torch.as_tensor(data.labels[:batch_size], dtype=torch.long)
    return {k: v.to(device) for k, v in enc.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_round(name: str, pristine: torch.nn.Module, batch: dict[str, torch.Tensor], *, warmup: int, steps: int,
                 device: torch.device) -> tuple[float, float]:
    """Median wall-clock and process-CPU seconds of ``steps`` training steps (after ``warmup`` untimed ones).

    For an option with a period m > 1 (``every=m``): the mean over ``ceil(steps / m) * m`` steps, started on a
    period boundary, so penalised and plain steps are counted in their true proportion.
    """
    period = _period(name)
    if period > 1:
        steps = -(-steps // period) * period
        warmup = -(-warmup // period) * period
    model = copy.deepcopy(pristine).to(device)
    model.train()
    tuner = _method(name)
    tuner.method_.setup(model, seed=0)
    try:
        optimizer = tuner._optimizer(model)
        for _ in range(warmup):
            tuner.training_step(model, batch, optimizer)
        wall, cpu = [], []
        for _ in range(steps):
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            tuner.training_step(model, batch, optimizer)
            _sync(device)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    finally:
        tuner.method_.teardown(model)
    del model, optimizer
    gc.collect()
    if period > 1:
        return statistics.fmean(wall), statistics.fmean(cpu)
    return statistics.median(wall), statistics.median(cpu)


# ------------------------------------------------------------------------------------------------ memory
def _memory(name: str, pristine: torch.nn.Module, batch: dict[str, torch.Tensor], *,
            device: torch.device) -> dict[str, Any]:
    """Peak of the tensor memory that ``name``'s set-up and two training steps allocate on top of the model (MiB)."""
    model = copy.deepcopy(pristine).to(device)
    model.train()
    tuner = _method(name)
    gc.collect()

    def run() -> None:
        tuner.method_.setup(model, seed=0)
        optimizer = tuner._optimizer(model)
        for _ in range(max(2, _period(name) + 1)):  # an every=m option: up to its first penalised step and one more
            tuner.training_step(model, batch, optimizer)

    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            run()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
            how = "torch.cuda.max_memory_allocated over set-up + 2 steps, minus the memory allocated before"
        else:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                run()
            events = sorted((e for e in prof.profiler.kineto_results.events()
                             if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")),
                            key=lambda e: e.start_ns())
            live = peak = 0
            for event in events:  # allocations (+) and frees (-) in time order
                live += event.nbytes()
                peak = max(peak, live)
            how = ("peak of live CPU tensor bytes allocated during set-up + 2 steps (torch profiler memory "
                   "events), on top of the model's own parameters")
    finally:
        tuner.method_.teardown(model)
    return {"method": name, "added_mib": peak / 2**20, "how": how}


# ------------------------------------------------------------------------------------------------ main
def _range(values: list[float], fmt: str) -> str:
    return f"{format(min(values), fmt)}-{format(max(values), fmt)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(["vanilla", "lnsr", FLOOR, *[m for m in METHODS
                                                                                  if m not in ("vanilla", "lnsr")]]),
                        help="comma-separated methods (default: all registered, plus the lnsr-floor reference)")
    parser.add_argument("--lnsr-options", action="store_true",
                        help="time LNSR's cheaper options (vanilla, lnsr, lnsr-floor and " + ", ".join(LNSR_OPTIONS)
                        + ") instead of --methods")
    parser.add_argument("--reps", type=int, default=3, help="timing rounds (default 3)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per round (default 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="(default 16)")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sentence, padded (default 64)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "bench_methods.json"),
                        help="JSON output (default: benchmarks/results/bench_methods.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    from lnsr_viz.data.models import load_model

    hf_logging.disable_progress_bar()
    methods = ["vanilla", "lnsr", FLOOR, *LNSR_OPTIONS] if args.lnsr_options else \
        [m.strip() for m in args.methods.split(",") if m.strip()]
    if "vanilla" not in methods:
        methods.insert(0, "vanilla")
    for m in methods:
        if m != FLOOR:
            _method(m)  # unknown names and bad options fail here, before any measurement
    device = torch.device(args.device)
    host = machine(device)
    torch.manual_seed(0)
    pristine, tokenizer = load_model("minilm")
    batch = _batch(tokenizer, args.batch_size, args.seq_len, device)
    print(f"machine: {host['cpu']}, {host['cores']} cores, torch {host['torch']} with "
          f"{host['torch_threads']} threads, device {host['device']}"
          + (f" ({host['gpu']})" if "gpu" in host else "")
          + (f", load average {host['load_average_at_start']}" if "load_average_at_start" in host else ""))
    print(f"model: all-MiniLM-L6-v2 + 2-class head; batch {args.batch_size} x {args.seq_len} tokens; "
          f"{args.reps} rounds x {args.steps} timed steps (+{args.warmup} warm-up)")

    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    t0 = time.perf_counter()
    for rep in range(args.reps):
        order = methods[rep % len(methods):] + methods[:rep % len(methods)]
        for m in order:
            wall, proc = _timed_round(m, pristine, batch, warmup=args.warmup, steps=args.steps, device=device)
            times[m].append(wall)
            cpu[m].append(proc)
            print(f"  round {rep + 1}/{args.reps} {m:18s} {wall:.3f} s/step (process CPU {proc:.3f} s)", flush=True)
    ratios = {m: [t / v for t, v in zip(times[m], times["vanilla"])] for m in methods}
    cpu_ratios = {m: [t / v for t, v in zip(cpu[m], cpu["vanilla"])] for m in methods}
    memory: dict[str, dict[str, Any]] = {}
    if not args.no_memory:
        for m in methods:
            memory[m] = _memory(m, pristine, batch, device=device)
            print(f"  memory {m:12s} +{memory[m]['added_mib']:.0f} MiB", flush=True)

    rows = []
    for m in methods:
        row = {"method": m, "lnsr_params": LNSR_OPTIONS.get(m),
               "seconds_per_step_median": statistics.median(times[m]), "seconds_per_step": times[m],
               "time_ratio_median": statistics.median(ratios[m]), "time_ratios": ratios[m],
               "cpu_seconds_per_step": cpu[m], "cpu_ratio_median": statistics.median(cpu_ratios[m]),
               "cpu_ratios": cpu_ratios[m]}
        if memory:
            row["memory_added_mib"] = memory[m]["added_mib"]
            row["memory_ratio"] = memory[m]["added_mib"] / memory["vanilla"]["added_mib"]
        rows.append(row)

    print()
    header = ("| method | s / step, wall (median, range) | s / step, CPU (median, range) | CPU time / vanilla "
              "(median, range) | wall time / vanilla (median) |")
    header += " step memory MiB | memory / vanilla |" if memory else ""
    print(header)
    print("|---|---|---|---|---|" + ("---|---|" if memory else ""))
    for r in rows:
        cpu_s = r["cpu_seconds_per_step"]
        line = (f"| {r['method']} | {r['seconds_per_step_median']:.2f} ({_range(r['seconds_per_step'], '.2f')}) | "
                f"{statistics.median(cpu_s):.2f} ({_range(cpu_s, '.2f')}) | "
                f"{r['cpu_ratio_median']:.2f}x ({_range(r['cpu_ratios'], '.2f')}) | {r['time_ratio_median']:.2f}x |")
        if memory:
            line += f" {r['memory_added_mib']:.0f} | {r['memory_ratio']:.2f}x |"
        print(line)
    print(f"\nmemory: {next(iter(memory.values()))['how']}" if memory else "")
    result = {"machine": host, "settings": {"model": "minilm", "batch_size": args.batch_size,
                                               "seq_len": args.seq_len, "reps": args.reps, "steps": args.steps,
                                               "warmup": args.warmup},
              "rows": rows, "seconds_total": time.perf_counter() - t0}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

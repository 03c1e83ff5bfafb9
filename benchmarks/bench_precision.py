"""bf16 mixed precision against float32: step time, probe time and values, and the effect on the results.

Three measurements on the packaged all-MiniLM-L6-v2 (2-class head), the same machine and inputs:

1. **Training step** (``FineTuner.training_step``: loss under autocast, backward, clipping, AdamW) for vanilla and
   LNSR, batch ``--batch-size`` movie snippets padded to ``--seq-len`` tokens: median seconds per step over
   ``--reps`` rounds (each: a fresh model copy, ``--warmup`` untimed steps, ``--steps`` timed ones; the precisions in
   a rotated order), and the speed-up fp32 / bf16 within each round.
2. **Stability probe**: the full profile (every injection layer, 4 draws) on ``--probe-n`` movie sentences, seconds
   per run in each precision, and how far the bf16 profile is from the fp32 one (max absolute and relative
   difference of ``change_rel`` and ``change_l2``; the top layer's ``change_rel`` for noise at the embeddings).
3. **Results** (``--seeds``, default 1-5): ``compare(['vanilla', 'lnsr'], ...)`` in each precision with the same
   protocol (``--train-size``, ``--epochs``; the demo's LNSR setting), stored in the run store ``--results`` so an
   interrupted measurement resumes where it stopped. Per precision and method: the last epoch's validation accuracy,
   the in-domain test accuracy and the top layer's relative change, mean over seeds; the bf16 - fp32 difference seed
   by seed (mean, 95% t-interval); and LNSR - vanilla in each precision (does bf16 change the conclusion?).

bf16 needs bfloat16 hardware (``lnsr_viz.utils.precision``); without it the script says so and stops. Writes
``--json`` (default ``benchmarks/results/precision.json``). Nothing here is a test.

Usage::

    python benchmarks/bench_precision.py                         # everything, 5 seeds (tens of minutes on 2 cores)
    python benchmarks/bench_precision.py --seeds 1 --train-size 32 --epochs 1 --probe-n 8 --reps 1   # smoke
    python benchmarks/bench_precision.py --skip-results          # step and probe only (a few minutes)
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
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import machine  # noqa: E402  (benchmarks/machine.py; scripts run from this folder)

from lnsr_viz.utils.precision import PRECISIONS, bf16_support, require_precision  # noqa: E402

HERE = Path(__file__).resolve().parent
METHODS = ("vanilla", "lnsr")


def _batch(tokenizer: Any, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    from lnsr_viz.data.text import load_domain

    data = load_domain("movie")
    texts = [str(t) for t in data.texts[:batch_size]]
    enc = dict(tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"))
    enc["labels"] = torch.as_tensor(data.labels[:batch_size], dtype=torch.long)
    return enc


def _step_round(method: str, precision: str, pristine: torch.nn.Module, batch: dict[str, torch.Tensor], *,
                warmup: int, steps: int) -> float:
    """Median seconds of ``steps`` training steps after ``warmup`` untimed ones, on a fresh copy of the model."""
    from lnsr_viz.training.loop import FineTuner

    model = copy.deepcopy(pristine)
    model.train()
    tuner = FineTuner(method, progress=False, precision=precision)
    tuner.method_.setup(model, seed=0)
    try:
        optimizer = tuner._optimizer(model)  # the loop's own AdamW groups, as bench_methods.py uses them
        for _ in range(warmup):
            tuner.training_step(model, batch, optimizer)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            tuner.training_step(model, batch, optimizer)
            times.append(time.perf_counter() - t0)
    finally:
        tuner.method_.teardown(model)
    del model
    gc.collect()
    return statistics.median(times)


def measure_steps(model: torch.nn.Module, tokenizer: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seconds per step in each precision, and the speed-up fp32 / bf16 per round (median and range)."""
    batch = _batch(tokenizer, args.batch_size, args.seq_len)
    rows = []
    for method in METHODS:
        per = {p: [] for p in PRECISIONS}
        for r in range(args.reps):
            order = PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]
            for precision in order:
                per[precision].append(_step_round(method, precision, model, batch, warmup=args.warmup,
                                                  steps=args.steps))
        speedups = [a / b for a, b in zip(per["fp32"], per["bf16"], strict=True)]
        row = {"method": method, "batch_size": args.batch_size, "seq_len": args.seq_len,
               **{f"{p}_s_per_step": statistics.median(v) for p, v in per.items()},
               "speedup_fp32_over_bf16": statistics.median(speedups),
               "speedup_range": [min(speedups), max(speedups)], "rounds": per}
        rows.append(row)
        print(f"step {method:8s} fp32 {row['fp32_s_per_step']:.3f} s  bf16 {row['bf16_s_per_step']:.3f} s  "
              f"speed-up x{row['speedup_fp32_over_bf16']:.2f} [{min(speedups):.2f}, {max(speedups):.2f}]", flush=True)
    return rows


def measure_probe(model: torch.nn.Module, tokenizer: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The full profile in each precision: seconds (median over reps) and the bf16 profile's distance from fp32."""
    from lnsr_viz.core.probe import StabilityProbe
    from lnsr_viz.data.text import load_domain

    texts = [str(t) for t in load_domain("movie").texts[:args.probe_n]]
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    profiles = {}
    for r in range(args.reps):
        for precision in (PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]):
            probe = StabilityProbe(scale=0.05, n_draws=4, max_length=args.seq_len, progress=False,
                                   precision=precision)
            t0 = time.perf_counter()
            profiles[precision] = probe.run(model, texts, tokenizer=tokenizer)
            seconds[precision].append(time.perf_counter() - t0)
    a, b = profiles["fp32"], profiles["bf16"]
    out: dict[str, Any] = {"n_sentences": len(texts), "n_draws": 4, "max_length": args.seq_len,
                           **{f"{p}_s": statistics.median(v) for p, v in seconds.items()},
                           "speedup_fp32_over_bf16": statistics.median(seconds["fp32"]) / statistics.median(
                               seconds["bf16"])}
    for col in ("change_rel", "change_l2"):
        diff = (b[col] - a[col]).abs()
        out[f"{col}_max_abs_diff"] = float(diff.max())
        out[f"{col}_max_rel_diff"] = float((diff / a[col].abs().clip(lower=1e-12)).max())
        # the CI half-width over sentences, for scale: a difference well inside it changes no reading of the curve
        out[f"{col}_median_ci_half_width"] = float(((a[f"{col}_ci_high"] - a[f"{col}_ci_low"]) / 2).median())
    top = int(a["layer"].max())
    pick = (a["injection_layer"] == 0) & (a["layer"] == top)
    out["top_change_rel"] = {"fp32": float(a.loc[pick, "change_rel"].iloc[0]),
                             "bf16": float(b.loc[pick, "change_rel"].iloc[0])}
    print(f"probe fp32 {out['fp32_s']:.2f} s  bf16 {out['bf16_s']:.2f} s  speed-up x{out['speedup_fp32_over_bf16']:.2f}"
          f"; change_rel max abs diff {out['change_rel_max_abs_diff']:.2e}, max rel diff "
          f"{out['change_rel_max_rel_diff']:.2%} (median CI half-width {out['change_rel_median_ci_half_width']:.2e})",
          flush=True)
    return out


def _mean_ci(values: list[float]) -> dict[str, float]:
    from lnsr_viz.utils.intervals import t_interval

    arr = np.asarray(values, dtype=np.float64)
    if arr.size < 2:
        return {"mean": float(arr.mean()), "ci_low": float("nan"), "ci_high": float("nan"), "n": int(arr.size)}
    ci = t_interval(arr, 0.95)
    return {"mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "n": int(arr.size)}


def measure_results(args: argparse.Namespace) -> dict[str, Any]:
    """compare(vanilla, lnsr) over the seeds in each precision (resumable); per-seed figures and the differences."""
    from lnsr_viz.experiments.runs import compare

    per: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    timings = {}
    for precision in PRECISIONS:
        t0 = time.perf_counter()
        result = compare(list(METHODS), args.seeds, precision=precision, train_size=args.train_size,
                         val_size=args.val_size, eval_size=args.eval_size, epochs=args.epochs, probe_n=args.probe_n,
                         ood=args.ood, method_params={"lnsr": {}}, results=args.results,
                         progress=False, verbose=True)
        timings[precision] = {"seconds": time.perf_counter() - t0, **result.timings}
        hist = result.history.sort_values("epoch").groupby(["method", "seed"]).tail(1)
        metrics = result.metrics
        in_domain = result.config["data"]["in_domain"]
        prof = result.profile
        top = int(prof["layer"].max())
        table: dict[str, dict[int, dict[str, float]]] = {}
        for method in METHODS:
            table[method] = {}
            for seed in args.seeds:
                h = hist[(hist["method"] == method) & (hist["seed"] == seed)]
                m = metrics[(metrics["method"] == method) & (metrics["seed"] == seed)
                            & (metrics["domain"] == in_domain) & (metrics["metric"] == "accuracy")]
                p = prof[(prof["method"] == method) & (prof["seed"] == seed) & (prof["injection_layer"] == 0)
                         & (prof["layer"] == top)]
                table[method][seed] = {"val_accuracy": float(h["val_accuracy"].iloc[0]),
                                       "test_accuracy": float(m["value"].iloc[0]),
                                       "top_change_rel": float(p["change_rel"].iloc[0])}
        per[precision] = table
    out: dict[str, Any] = {"settings": {"seeds": list(args.seeds), "train_size": args.train_size,
                                        "val_size": args.val_size, "eval_size": args.eval_size, "epochs": args.epochs,
                                        "probe_n": args.probe_n, "ood": list(args.ood), "results": str(args.results)},
                           "per_seed": per, "timings": timings, "bf16_minus_fp32": {}, "lnsr_minus_vanilla": {}}
    for method in METHODS:
        out["bf16_minus_fp32"][method] = {
            key: _mean_ci([per["bf16"][method][s][key] - per["fp32"][method][s][key] for s in args.seeds])
            for key in ("val_accuracy", "test_accuracy", "top_change_rel")}
    for precision in PRECISIONS:
        out["lnsr_minus_vanilla"][precision] = {
            key: _mean_ci([per[precision]["lnsr"][s][key] - per[precision]["vanilla"][s][key] for s in args.seeds])
            for key in ("val_accuracy", "test_accuracy", "top_change_rel")}
    for method in METHODS:
        d = out["bf16_minus_fp32"][method]
        print(f"results {method:8s} bf16 - fp32: val acc {d['val_accuracy']['mean']:+.4f} "
              f"[{d['val_accuracy']['ci_low']:+.4f}, {d['val_accuracy']['ci_high']:+.4f}], test acc "
              f"{d['test_accuracy']['mean']:+.4f}, top change_rel {d['top_change_rel']['mean']:+.5f}", flush=True)
    for precision in PRECISIONS:
        d = out["lnsr_minus_vanilla"][precision]
        print(f"results {precision}: lnsr - vanilla val acc {d['val_accuracy']['mean']:+.4f} "
              f"[{d['val_accuracy']['ci_low']:+.4f}, {d['val_accuracy']['ci_high']:+.4f}], top change_rel "
              f"{d['top_change_rel']['mean']:+.5f} [{d['top_change_rel']['ci_low']:+.5f}, "
              f"{d['top_change_rel']['ci_high']:+.5f}]", flush=True)
    return out


def _int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (also the probe's max_length)")
    parser.add_argument("--reps", type=int, default=3, help="rounds of the step and probe timings")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--probe-n", type=int, default=64, help="sentences of the probe (timing and results)")
    parser.add_argument("--seeds", type=_int_list, default=[1, 2, 3, 4, 5])
    parser.add_argument("--train-size", type=int, default=500)
    parser.add_argument("--val-size", type=int, default=300)
    parser.add_argument("--eval-size", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--ood", type=lambda s: [t for t in s.split(",") if t], default=[],
                        help="out-of-domain sets of the results part (default: none; the in-domain test and the "
                             "validation accuracy are what is compared)")
    parser.add_argument("--results", default="results/bench-precision",
                        help="run store of the results part (resumable; default: results/bench-precision)")
    parser.add_argument("--skip-results", action="store_true", help="only the step and probe timings")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", default=str(HERE / "results" / "precision.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ok, what = bf16_support("cpu")
    try:
        require_precision("bf16", "cpu", owner="bench_precision")
    except ValueError as err:
        print(f"bench_precision: {err}", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    from lnsr_viz.data.models import load_model

    hf_logging.disable_progress_bar()
    info = machine("cpu")
    info["bf16"] = {"supported": ok, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    print(f"machine: {info}", flush=True)
    t_start = time.perf_counter()
    model, tokenizer = load_model("minilm")
    out: dict[str, Any] = {"machine": info, "date": time.strftime("%Y-%m-%d"), "model": "minilm (all-MiniLM-L6-v2)"}
    out["step"] = measure_steps(model, tokenizer, args)
    out["probe"] = measure_probe(model, tokenizer, args)
    if not args.skip_results:
        out["results"] = measure_results(args)
    out["total_seconds"] = time.perf_counter() - t_start
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=float))
    print(f"wrote {path} ({out['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

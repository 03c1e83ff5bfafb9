"""Benchmark: the stability probe's full profile against the naive baseline, and its memory on many sentences.

The naive baseline re-runs the whole model for every injection layer and noise draw (``strategy='naive'``); the
probe reuses one clean pass per batch and runs only blocks k+1..L per draw (``strategy='replay'``). In layer-forward
units a full profile over k = 0..L with S draws costs the replay ``(L+1) + S * L(L+1)/2`` layer passes against the
naive ``(L+1) * S * (L+1)`` (embedding counted as one layer), about half for large L.

Run: ``python benchmarks/bench_probe.py [--n 64] [--draws 4] [--reps 3] [--big 10000] [--json out.json]``.
Prints the figures and the machine; never used as a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py (scripts run from this folder)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict[str, object]:
    from lnsr_viz.core.probe import StabilityProbe
    from lnsr_viz.data.models import load_model
    from lnsr_viz.data.text import load_domain

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="sentences for the timing comparison")
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--big", type=int, default=10000, help="sentences for the memory run (0 to skip)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    model, tok = load_model("minilm")
    texts = load_domain("movie").texts
    L = 6
    results: dict[str, object] = {"machine": machine(), "n": args.n, "draws": args.draws}
    times: dict[str, list[float]] = {"replay": [], "naive": []}
    for _ in range(args.reps):
        for strategy in ("replay", "naive"):
            probe = StabilityProbe(n_draws=args.draws, strategy=strategy, progress=False, max_length=64)
            t0 = time.perf_counter()
            probe.run(model, texts[: args.n], tokenizer=tok)
            times[strategy].append(time.perf_counter() - t0)
    for strategy, values in times.items():
        results[f"{strategy}_median_s"] = statistics.median(values)
        results[f"{strategy}_spread_s"] = max(values) - min(values)
    results["ratio_replay_to_naive"] = results["replay_median_s"] / results["naive_median_s"]
    replay_units = (L + 1) + args.draws * L * (L + 1) // 2
    naive_units = (L + 1) * args.draws * (L + 1)
    results["layer_forward_units"] = {"replay": replay_units, "naive": naive_units,
                                      "ratio": replay_units / naive_units}
    if args.big:
        before = _peak_rss_mb()
        probe = StabilityProbe(n_draws=2, injection_layers=0, progress=True, max_length=64, batch_size=64)
        t0 = time.perf_counter()
        big = texts[: args.big]
        probe.run(model, big, tokenizer=tok)
        results["big"] = {"sentences": len(big), "seconds": time.perf_counter() - t0,
                          "peak_rss_mb_before": before, "peak_rss_mb_after": _peak_rss_mb()}

    print(f"machine: {results['machine']}")
    print(f"full profile, {args.n} sentences x {args.draws} draws, {args.reps} repetitions (median, spread):")
    for strategy in ("replay", "naive"):
        median, spread = results[f"{strategy}_median_s"], results[f"{strategy}_spread_s"]
        print(f"  {strategy:>6}: {median:.2f} s (spread {spread:.2f})")
    u = results["layer_forward_units"]
    print(f"  replay / naive: {results['ratio_replay_to_naive']:.2f} measured, {u['ratio']:.2f} in layer-forward "
          f"units ({u['replay']} vs {u['naive']})")
    if args.big:
        b = results["big"]
        print(f"memory: {b['sentences']} sentences (k=0, 2 draws) in {b['seconds']:.0f} s; peak RSS "
              f"{b['peak_rss_mb_before']:.0f} MB before, {b['peak_rss_mb_after']:.0f} MB after")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()

"""Benchmark: how fast the notebooks' noise explorer answers a control change (MiniLM, 32 sentences).

Builds :class:`lnsr_viz.viz.dashboards.NoiseExplorer` on the packaged MiniLM and ``--n`` movie sentences (the
tokenisation and the clean pass are cached per model and sentences, profiles per setting, in
:mod:`lnsr_viz.viz.runtime`), then moves each control the way a user would and times the whole answer: the probe
(or the memo), the figure and the in-place update of the FigureWidget. New settings and settings seen before are
reported apart. The goal is under 0.5 s per change on 2 CPU cores. Never a test; ``tests/test_browser.py`` logs the
same time as measured in a real JupyterLab.

Run: ``python benchmarks/bench_explorer.py [--n 32] [--draws 4] [--threads 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402  (benchmarks/machine.py)

#: (control, value) moves in order; the last ones return to settings already seen.
MOVES: list[tuple[str, Any]] = [
    ("scale", 0.10), ("scale", 0.15), ("injection_layer", 1), ("injection_layer", 3), ("noise", "in_manifold"),
    ("scale_kind", "absolute"), ("metric", "change_l2"), ("scale_kind", "relative"), ("noise", "gaussian"),
    ("injection_layer", 0), ("scale", 0.10), ("metric", "change_rel"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from lnsr_viz.data.models import load_model
    from lnsr_viz.viz.dashboards import NoiseExplorer
    from lnsr_viz.viz.runtime import probe_sentences

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="sentences")
    parser.add_argument("--draws", type=int, default=4, help="noise draws per sentence")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the goal is for 2 cores)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {"minilm": load_model("minilm")}
    texts = probe_sentences(args.n, quick=False)
    t0 = time.perf_counter()
    explorer = NoiseExplorer(models, texts, n_draws=args.draws)
    build_s = time.perf_counter() - t0
    rows = []
    for control, value in MOVES:
        t0 = time.perf_counter()
        explorer.controls[control].value = value
        seconds = time.perf_counter() - t0
        rows.append({"control": control, "value": value, "seconds": seconds, "probe_s": explorer.last_seconds,
                     "memoised": explorer.last_seconds == 0.0, "error": explorer.error})
    new = [r["seconds"] for r in rows if not r["memoised"]]
    seen = [r["seconds"] for r in rows if r["memoised"]]
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "n": args.n, "draws": args.draws,
              "build_s": build_s, "moves": rows, "new_median_s": statistics.median(new) if new else None,
              "new_max_s": max(new) if new else None, "seen_max_s": max(seen) if seen else None, "goal_s": 0.5}
    print(f"machine: {result['machine']}")
    print(f"NoiseExplorer, MiniLM, {args.n} sentences x {args.draws} draws: built in {build_s:.2f} s")
    for r in rows:
        how = "memoised" if r["memoised"] else f"probe {r['probe_s']:.3f} s"
        print(f"  {r['control']:>15} -> {r['value']!s:<12} {r['seconds']:.3f} s ({how})")
    print(f"new setting: median {result['new_median_s']:.3f} s, max {result['new_max_s']:.3f} s; setting seen "
          f"before: max {result['seen_max_s']:.3f} s (goal: under 0.5 s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()

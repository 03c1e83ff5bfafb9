"""Benchmark: how fast the notebooks' noise explorer answers a control change (MiniLM, 32 sentences).

Builds :class:`lnsr_viz.viz.dashboards.NoiseExplorer` on the packaged MiniLM and ``--n`` movie sentences (the
tokenisation and the clean pass are cached per model and sentences, profiles per setting, in
:mod:`lnsr_viz.viz.runtime`), then moves each control the way a user would and times the whole answer: the probe
(or the memo), the figure and the in-place update of the FigureWidget. New settings and settings seen before are
reported apart, first with every new setting computed on request, then with the explorer's background prefetching
of neighbouring settings and a pause between moves (``--think``, a user reading the figure). The goals on 2 CPU
cores: a stored setting in under 0.5 s, a new one in under 1 s. Prints the latencies and the ratio stored /
uncached. Never a test; ``tests/test_browser.py`` logs the same time as measured in a real JupyterLab.

Run: ``python benchmarks/bench_explorer.py [--n 32] [--draws 4] [--threads 2] [--think 2] [--json out.json]``.
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


def _moves(explorer: Any, think_s: float) -> list[dict[str, Any]]:
    """Play :data:`MOVES` on ``explorer``, ``think_s`` seconds apart (a user looking at the figure), timing each."""
    rows = []
    for control, value in MOVES:
        if think_s:
            time.sleep(think_s)
        session = explorer._sessions[explorer.value("model")]
        t0 = time.perf_counter()
        explorer.controls[control].value = value
        seconds = time.perf_counter() - t0
        rows.append({"control": control, "value": value, "seconds": seconds, "probe_s": explorer.last_seconds,
                     "memoised": bool(session.last_memoised), "error": explorer.error})
    return rows


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    new = [r["seconds"] for r in rows if not r["memoised"]]
    seen = [r["seconds"] for r in rows if r["memoised"]]
    return {"moves": rows, "new_n": len(new), "new_median_s": statistics.median(new) if new else None,
            "new_max_s": max(new) if new else None, "stored_n": len(seen),
            "stored_median_s": statistics.median(seen) if seen else None, "stored_max_s": max(seen) if seen else None,
            "all_median_s": statistics.median(r["seconds"] for r in rows),
            "all_max_s": max(r["seconds"] for r in rows)}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f} s"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from lnsr_viz.data.models import load_model
    from lnsr_viz.viz.dashboards import NoiseExplorer
    from lnsr_viz.viz.runtime import probe_sentences

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="sentences")
    parser.add_argument("--draws", type=int, default=4, help="noise draws per sentence")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the goal is for 2 cores)")
    parser.add_argument("--think", type=float, default=2.0,
                        help="seconds between moves in the prefetching run (a user reading the figure)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    texts = probe_sentences(args.n, quick=False)
    result: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "n": args.n,
                              "draws": args.draws, "think_s": args.think, "goal_stored_s": 0.5, "goal_new_s": 1.0}
    # 1. no background work: every new setting is computed on request (uncached), settings seen before are stored
    # 2. prefetching (the default): neighbouring settings are computed while the user looks for --think seconds
    for name, prefetch, think in (("on_request", False, 0.0), ("prefetch", True, args.think)):
        models = {"minilm": load_model("minilm")}  # a fresh model object: a fresh session, nothing memoised
        t0 = time.perf_counter()
        explorer = NoiseExplorer(models, texts, n_draws=args.draws, prefetch=prefetch)
        build_s = time.perf_counter() - t0
        result[name] = {"build_s": build_s, **_summary(_moves(explorer, think))}
        if prefetch:
            result[name]["prefetched"] = explorer._sessions["minilm"].n_prefetched
        explorer._sessions["minilm"].cancel_prefetch()
    req, pre = result["on_request"], result["prefetch"]
    ratio = (req["stored_median_s"] / req["new_median_s"]) if req["stored_median_s"] and req["new_median_s"] else None
    result["stored_vs_uncached_ratio"] = ratio
    print(f"machine: {result['machine']}")
    print(f"NoiseExplorer, MiniLM, {args.n} sentences x {args.draws} draws")
    for name, label in (("on_request", "computed on request (no prefetch)"),
                        ("prefetch", f"prefetching, {args.think:g} s between moves")):
        res = result[name]
        print(f"  {label}: built in {res['build_s']:.2f} s")
        for r in res["moves"]:
            how = "stored" if r["memoised"] else f"probe {r['probe_s']:.3f} s"
            print(f"    {r['control']:>15} -> {r['value']!s:<12} {r['seconds']:.3f} s ({how})")
    print(f"latency: new setting computed on request: median {_fmt(req['new_median_s'])}, max "
          f"{_fmt(req['new_max_s'])} (goal under 1 s); stored setting: median {_fmt(req['stored_median_s'])}, max "
          f"{_fmt(req['stored_max_s'])} (goal under 0.5 s); stored / uncached = "
          + (f"{ratio:.3f}" if ratio is not None else "-"))
    print(f"latency with prefetching ({args.think:g} s between moves): every move median {_fmt(pre['all_median_s'])}, "
          f"max {_fmt(pre['all_max_s'])}; {pre['stored_n']} of {len(pre['moves'])} answered from the memo; "
          f"{pre['prefetched']} settings precomputed in the background")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()

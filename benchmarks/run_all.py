"""`make bench`: every benchmark in one run on one machine, figures printed and written as JSON.

Runs, each in its own process (so one's memory does not inflate another's):

1. ``bench_methods.py`` — seconds per training step and peak step memory of every method, as ratios to vanilla;
   then ``bench_methods.py --lnsr-options`` at batch 32 x 64 tokens — LNSR's cheaper estimators (batched pass,
   sub-batch fraction, every m-th step) as step-time ratios to vanilla;
2. ``bench_probe.py`` — the stability probe's full profile against the naive re-run-everything baseline, and its
   memory on 10,000 sentences;
3. ``bench_drift.py`` at n = 2,000 and n = 10,000 — linear CKA in feature space against the Gram-matrix form;
3a. ``bench_peers.py`` — every measurement beside its public peer on the same inputs (the probe vs plain forward
   hooks and nnsight, CKA vs torch-cka, the Hessian trace vs PyHessian, the Jacobian norm vs torch.func.jacrev),
   as time ratios with the agreement; a missing peer is reported and skipped (``benchmarks/results/peers.json``);
3b. ``bench_explorer.py`` — the notebooks' noise explorer: seconds per control change, MiniLM, 32 sentences
   (``benchmarks/results/explorer.json``);
3c. ``bench_precision.py --skip-results`` — bf16 against fp32: step time of vanilla and LNSR (batch 32 x 64 tokens),
   the probe's time and how far its values move (``benchmarks/results/precision.json``); skipped, saying why, on
   hardware without bfloat16; with ``--precision-results`` also the effect on the results over 5 seeds (resumable
   run store ``results/bench-precision``; tens of minutes);
3d. ``bench_diagnose.py`` — ``python -m lnsr_viz diagnose`` on a MiniLM checkpoint with 100 training and 300
   held-out sentences, as a fresh command and as a call on loaded models (goal: well under a minute;
   ``benchmarks/results/bench_diagnose.json``);
4. with ``--demo``: ``python -m lnsr_viz demo`` end to end into a fresh run store (minutes), then again (re-render
   from the store);
5. with ``--qa``: ``bench_qa.py`` — the QA comparison's training steps, evaluation and probe on this CPU, and the
   projected wall time of the README's QA command.

Results go to ``benchmarks/results/*.json`` and a summary ``benchmarks/results/summary.json``. Never a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _run(args: list[str]) -> float:
    print(f"\n$ {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every lnsr_viz benchmark.")
    parser.add_argument("--demo", action="store_true", help="also time `python -m lnsr_viz demo` end to end")
    parser.add_argument("--qa", action="store_true", help="also measure the QA comparison's cost (bench_qa.py)")
    parser.add_argument("--precision-results", action="store_true",
                        help="also measure bf16's effect on validation accuracy over 5 seeds (bench_precision.py)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a rough look, not for the README)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    reps = "1" if args.quick else "3"
    summary: dict[str, object] = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick}
    summary["methods_s"] = _run([str(HERE / "bench_methods.py"), "--reps", reps,
                                 "--out", str(RESULTS / "bench_methods.json")])
    summary["lnsr_options_s"] = _run([str(HERE / "bench_methods.py"), "--lnsr-options", "--batch-size", "32",
                                      "--seq-len", "64", "--reps", reps,
                                      "--out", str(RESULTS / "bench_lnsr_options.json")])
    summary["probe_s"] = _run([str(HERE / "bench_probe.py"), "--reps", reps,
                               "--big", "2000" if args.quick else "10000", "--json", str(RESULTS / "bench_probe.json")])
    for n in (2000, 10000):
        summary[f"drift_{n}_s"] = _run([str(HERE / "bench_drift.py"), "--n", str(n), "--reps", reps,
                                         "--json", str(RESULTS / f"bench_drift_{n}.json")])
    summary["peers_s"] = _run([str(HERE / "bench_peers.py"), "--reps", reps,
                               "--json", str(RESULTS / "peers.json")])
    summary["explorer_s"] = _run([str(HERE / "bench_explorer.py"), "--json", str(RESULTS / "explorer.json")])
    summary["diagnose_s"] = _run([str(HERE / "bench_diagnose.py"), "--reps", reps,
                                  "--json", str(RESULTS / "bench_diagnose.json")])
    precision = [str(HERE / "bench_precision.py"), "--reps", reps, "--json", str(RESULTS / "precision.json")]
    try:  # exits 2, saying why, where the hardware has no bfloat16
        summary["precision_s"] = _run(precision + ([] if args.precision_results else ["--skip-results"]))
    except subprocess.CalledProcessError as err:
        summary["precision_s"] = f"skipped (exit {err.returncode}: no bf16 hardware?)"
    if args.qa:
        summary["qa_s"] = _run([str(HERE / "bench_qa.py"), "--out", str(RESULTS / "bench_qa.json")])
    if args.demo:
        with tempfile.TemporaryDirectory() as tmp:
            demo = ["-m", "lnsr_viz", "demo", "--results", f"{tmp}/store", "--out", f"{tmp}/demo.html", "--quiet"]
            summary["demo_first_s"] = _run(demo)
            summary["demo_second_s"] = _run(demo)
        print(f"\ndemo end to end: {summary['demo_first_s']:.0f} s; second call (from the store): "
              f"{summary['demo_second_s']:.1f} s")
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {RESULTS}/*.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

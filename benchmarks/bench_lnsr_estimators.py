"""The EFFECT of LNSR's cheaper estimators: top-layer sensitivity reduction and validation accuracy vs the full penalty.

For the full penalty and each cheaper option of :data:`bench_methods.LNSR_OPTIONS` (batched pass, sub-batch
``fraction``, penalty ``every`` m-th step; ``lnsr-indep`` is the full penalty with ``dropout='independent'``, the
reference for the options that need it), a short fine-tuning of the packaged MiniLM with
:func:`lnsr_viz.experiments.runs.compare` (vanilla + that option, the same seeds, one run store), then, per seed:

* top-layer sensitivity: the stored stability profile's relative change ``change_rel`` at the top layer for noise
  injected at layer 0 (the probe of every run: Gaussian, 5% of each token's norm);
* its reduction vs vanilla of the same seed: ``1 - top(option) / top(vanilla)``;
* validation accuracy (the last epoch's ``val_accuracy``) and in-domain accuracy on the held-out evaluation set.

Reported: mean and standard deviation over seeds, and the fraction of the full penalty's mean sensitivity reduction
each option keeps (``mean reduction(option) / mean reduction(lnsr)``). Written to
``benchmarks/results/lnsr_estimators.json`` and printed as a table. Never a test.

The runs go to a run store (``--results``, default ``results/lnsr_estimators`` at the repository root): an
interrupted measurement resumes, and shards by seed can run one after the other or side by side (``--seeds 1,2``
then ``--seeds 3,4,5``); ``--report-only`` rebuilds the table from what is stored, without training.

Usage::

    python benchmarks/bench_lnsr_estimators.py                                # 5 seeds, the default protocol
    python benchmarks/bench_lnsr_estimators.py --seeds 1,2                    # one shard
    python benchmarks/bench_lnsr_estimators.py --report-only                  # the table from what is stored
    python benchmarks/bench_lnsr_estimators.py --seeds 1 --train-size 32 --epochs 1 --val-size 32 \\
        --eval-size 32 --probe-n 8 --options lnsr,lnsr-every2 --results /tmp/smoke --out /tmp/smoke.json   # smoke
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

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from bench_methods import LNSR_OPTIONS  # noqa: E402  (benchmarks/bench_methods.py; scripts run from this folder)
from machine import machine  # noqa: E402

from lnsr_viz.experiments.runs import compare  # noqa: E402
from lnsr_viz.experiments.store import RunStore  # noqa: E402
from lnsr_viz.methods import LNSR  # noqa: E402

HERE = Path(__file__).resolve().parent
FULL = "lnsr"
OPTIONS: dict[str, dict[str, Any]] = {FULL: {}, **LNSR_OPTIONS}


def _floats(values: list[float]) -> dict[str, float | None]:
    return {"mean": statistics.fmean(values) if values else None,
            "sd": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def _top_change(profile: pd.DataFrame) -> float:
    """``change_rel`` at the top layer for noise injected at layer 0."""
    rows = profile[profile["injection_layer"] == 0]
    return float(rows.loc[rows["layer"].idxmax(), "change_rel"])


def _per_run(store: RunStore, run_id: str) -> dict[str, float]:
    run = store.load(run_id)
    history = run.history.sort_values("epoch")
    in_domain = run.config.get("data", {}).get("in_domain")
    metrics = run.metrics
    acc = metrics[(metrics["metric"] == "accuracy") & (metrics["domain"] == in_domain)]["value"]
    return {"top_change_rel": _top_change(run.profile), "val_accuracy": float(history["val_accuracy"].iloc[-1]),
            "accuracy": float(acc.iloc[0]) if len(acc) else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated seeds (default 1,2,3,4,5)")
    parser.add_argument("--options", default=",".join(OPTIONS),
                        help=f"comma-separated options (default all: {', '.join(OPTIONS)})")
    parser.add_argument("--train-size", type=int, default=200, help="training examples (default 200)")
    parser.add_argument("--epochs", type=int, default=2, help="(default 2)")
    parser.add_argument("--val-size", type=int, default=200, help="validation examples (default 200)")
    parser.add_argument("--eval-size", type=int, default=200, help="held-out in-domain examples (default 200)")
    parser.add_argument("--probe-n", type=int, default=64, help="probe sentences (default 64)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--results", default=str(HERE.parent / "results" / "lnsr_estimators"),
                        help="run store (default: results/lnsr_estimators at the repository root; resumable)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; report what the store holds")
    parser.add_argument("--out", default=str(HERE / "results" / "lnsr_estimators.json"),
                        help="JSON output (default benchmarks/results/lnsr_estimators.json)")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers; got {args.seeds!r}")
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    unknown = [o for o in options if o not in OPTIONS]
    if unknown or not seeds:
        parser.error(f"unknown option(s) {unknown}; choose from {', '.join(OPTIONS)}" if unknown else "no seeds")
    if FULL not in options:
        options.insert(0, FULL)
    for o in options:
        LNSR(**OPTIONS[o])  # bad parameters fail here, before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"train_size": args.train_size, "epochs": args.epochs, "val_size": args.val_size,
                "eval_size": args.eval_size, "ood": (), "probe_n": args.probe_n, "results": args.results}
    host = machine(torch.device("cpu"))
    print(f"machine: {host['cpu']}, {host['cores']} cores, torch {host['torch']} with {host['torch_threads']} "
          f"threads; protocol: MiniLM, {args.train_size} training examples, {args.epochs} epochs, seeds {seeds}")

    t0 = time.perf_counter()
    run_ids: dict[str, dict[int, str]] = {}  # option -> seed -> run id, vanilla under "vanilla"
    for o in ([] if args.report_only else options):
        t = time.perf_counter()
        result = compare(["vanilla", "lnsr"], seeds, method_params={"lnsr": OPTIONS[o]}, progress=False,
                         verbose=False, **settings)
        for row in result.runs.itertuples():
            if row.method in ("vanilla", "lnsr") and not pd.isna(row.seed):
                run_ids.setdefault("vanilla" if row.method == "vanilla" else o, {})[int(row.seed)] = row.run_id
        print(f"  {o}: {time.perf_counter() - t:.0f} s ({int((~result.runs['cached']).sum())} run(s) trained)",
              flush=True)
    if args.report_only:
        run_ids = _stored_run_ids(RunStore(args.results), options, seeds, settings)
        if not run_ids:
            parser.error(f"no run of these options and seeds is stored in {args.results!r}")

    store = RunStore(args.results)
    per: dict[str, dict[int, dict[str, float]]] = {name: {s: _per_run(store, rid) for s, rid in ids.items()}
                                                   for name, ids in run_ids.items()}
    van = per.get("vanilla", {})
    rows = []
    for name in ["vanilla", *options]:
        got = per.get(name, {})
        common = sorted(s for s in got if s in van)
        reductions = [1 - got[s]["top_change_rel"] / van[s]["top_change_rel"] for s in common]
        rows.append({"option": name, "lnsr_params": OPTIONS.get(name), "seeds": common,
                     "top_change_rel": _floats([got[s]["top_change_rel"] for s in common]),
                     "sensitivity_reduction": _floats(reductions),
                     "val_accuracy": _floats([got[s]["val_accuracy"] for s in common]),
                     "accuracy": _floats([got[s]["accuracy"] for s in common]),
                     "per_seed": {str(s): got[s] for s in common}})
    full = next(r for r in rows if r["option"] == FULL)["sensitivity_reduction"]["mean"]
    for r in rows:
        mean = r["sensitivity_reduction"]["mean"]
        r["reduction_kept"] = None if r["option"] == "vanilla" or mean is None or not full else mean / full

    def fmt(stat: dict[str, float | None], pct: bool = False) -> str:
        if stat["mean"] is None:
            return "-"
        f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
        return f(stat["mean"]) + (f" ± {f(stat['sd'])}" if stat["sd"] is not None else "")

    print("\n| option | seeds | top-layer change_rel | sensitivity reduction vs vanilla | kept of full | "
          "val accuracy | in-domain accuracy |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        kept = "-" if r["reduction_kept"] is None else f"{100 * r['reduction_kept']:.0f}%"
        print(f"| {r['option']} | {len(r['seeds'])} | {fmt(r['top_change_rel'])} | "
              f"{fmt(r['sensitivity_reduction'], pct=True)} | {kept} | {fmt(r['val_accuracy'])} | "
              f"{fmt(r['accuracy'])} |")
    result_doc = {"machine": host, "date": time.strftime("%Y-%m-%d"), "settings": {**settings, "ood": [],
                  "seeds": seeds, "options": options, "model": "minilm"},
                  "how": "per seed: 1 - top-layer change_rel (injection layer 0) of the option / of vanilla; mean "
                         "and sd over seeds; kept = mean reduction of the option / of the full penalty (lnsr)",
                  "rows": rows, "seconds_total": time.perf_counter() - t0}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result_doc, indent=2))
    print(f"\nwrote {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


def _stored_run_ids(store: RunStore, options: list[str], seeds: list[int],
                    settings: dict[str, Any]) -> dict[str, dict[int, str]]:
    """The run ids the measurement would make, for the runs that are stored (``--report-only``)."""
    from lnsr_viz.experiments.config import ExperimentConfig
    from lnsr_viz.experiments.runs import Job, build_protocol, run_configs

    out: dict[str, dict[int, str]] = {}
    for o in options:
        config = ExperimentConfig().replace(methods=("vanilla", "lnsr"), seeds=tuple(seeds),
                                            method_params={"lnsr": OPTIONS[o]}, **settings)
        jobs = [Job(m, config.method_params.get(m, {}), s) for m in ("vanilla", "lnsr") for s in seeds]
        configs = run_configs(jobs, config, build_protocol(config))
        for job, cfg in zip(jobs, configs, strict=True):
            if store.exists(cfg):
                out.setdefault("vanilla" if job.method == "vanilla" else o, {})[int(job.seed)] = store.run_id(cfg)
    return out


if __name__ == "__main__":
    sys.exit(main())

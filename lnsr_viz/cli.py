"""Command line: ``python -m lnsr_viz {probe, compare, demo, sweep, merge, diagnose, assets}`` (``lnsr-viz``).

Every option is checked before any model or data is loaded; errors print one readable line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 1,2,3; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer, e.g. 1,2,3")
    return values


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _params(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """Parse ``--param lnsr.lam=10 --param lnsr.noise=in_manifold`` into ``{'lnsr': {'lam': 10.0, ...}}``."""
    import json

    out: dict[str, dict[str, Any]] = {}
    for item in items or ():
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--param expects METHOD.NAME=VALUE, e.g. lnsr.lam=10; got {item!r}.")
        key, raw = item.split("=", 1)
        method, name = key.split(".", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(method, {})[name] = value
    return out


def _experiment(args: argparse.Namespace) -> Any:
    """The :class:`~lnsr_viz.experiments.config.ExperimentConfig` that ``compare`` / ``demo`` options describe."""
    from .experiments.config import ExperimentConfig

    names = set(ExperimentConfig.field_names())
    given = {k: v for k, v in vars(args).items() if k in names}
    # '' and 0 on the command line mean "the task's default data" and "evaluate on everything"
    return ExperimentConfig(**{**given, "data": args.data or None, "eval_size": args.eval_size or None,
                               "method_params": _params(args.param)})


def _add_common_data(p: argparse.ArgumentParser, defaults: Any = None) -> None:
    from .experiments.config import ExperimentConfig

    defaults = defaults or ExperimentConfig()
    p.add_argument("--model", default=defaults.model,
                   help=f"'minilm' (the packaged all-MiniLM-L6-v2), a Hugging Face model id, or a local checkpoint "
                        f"folder (default: {defaults.model})")
    p.add_argument("--data", default=None,
                   help="a packaged domain (movie, amazon, tweets, nyt) or a CSV/TSV file with text and label "
                        "columns (default: movie); with --task qa: 'squad' (the packaged SQuAD v1.1, default) or a "
                        "SQuAD-format JSON file")
    p.add_argument("--text-column", default=defaults.text_column,
                   help=f"text column of a CSV (default: {defaults.text_column})")
    p.add_argument("--label-column", default=defaults.label_column,
                   help=f"label column of a CSV (default: {defaults.label_column})")
    p.add_argument("--max-length", type=int, default=defaults.max_length,
                   help=f"tokenizer truncation length (default: {defaults.max_length})")


def _add_compare_options(p: argparse.ArgumentParser, defaults: Any) -> None:
    """The options of ``compare`` and ``demo``: one per :class:`ExperimentConfig` field, defaults read off it."""
    from .experiments.config import TASKS

    _add_common_data(p, defaults)
    p.add_argument("--methods", type=_str_list, default=list(defaults.methods),
                   help=f"comma-separated methods (default: {','.join(defaults.methods)})")
    p.add_argument("--seeds", type=_int_list, default=list(defaults.seeds),
                   help=f"comma-separated seeds, one run per method and seed (default: "
                        f"{','.join(map(str, defaults.seeds))})")
    p.add_argument("--ood", type=_str_list, default=None,
                   help=f"comma-separated out-of-domain sets: packaged domains or CSV paths (default: "
                        f"{','.join(defaults.ood_data())}; pass '' for none); with "
                        "--task qa: further SQuAD files (the packaged SQuAD's other topic groups are always used)")
    p.add_argument("--task", choices=list(TASKS), default=defaults.task,
                   help=f"sequence classification or extractive question answering (default: {defaults.task})")
    p.add_argument("--qa-group", default=defaults.qa_group,
                   help=f"with --task qa and the packaged SQuAD: the topic group to train on (science, places, "
                        f"people; default: {defaults.qa_group})")
    p.add_argument("--train-size", type=int, default=defaults.train_size,
                   help=f"training examples (default: {defaults.train_size})")
    p.add_argument("--val-size", type=int, default=defaults.val_size,
                   help=f"validation examples (default: {defaults.val_size})")
    p.add_argument("--eval-size", type=int, default=defaults.eval_size,
                   help=f"at most this many examples per evaluation set (default: {defaults.eval_size}; 0 = all)")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help=f"(default: {defaults.epochs})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"(default: {defaults.batch_size})")
    p.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default: {defaults.lr})")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE",
                   help="a method parameter, repeatable, e.g. --param lnsr.lam=10 --param lnsr.injection_layer=2")
    p.add_argument("--probe-n", type=int, default=defaults.probe_n,
                   help=f"sentences for the stability probe (default: {defaults.probe_n})")
    p.add_argument("--probe-draws", type=int, default=defaults.probe_draws,
                   help=f"noise draws per sentence in the probe (default: {defaults.probe_draws})")
    p.add_argument("--split-seed", type=int, default=defaults.split_seed,
                   help=f"seed of the fixed data split and subsets (default: {defaults.split_seed})")
    p.add_argument("--neutral-band", type=float, default=defaults.neutral_band,
                   help=f"drop packaged-domain sentences with |sentiment| <= this (default: {defaults.neutral_band:g}, "
                        "drops only exact 0)")
    p.add_argument("--results", default=str(defaults.results), help=f"run-store folder (default: {defaults.results})")
    p.add_argument("--out", default=None, help="HTML report path (default: RESULTS/report.html)")
    p.add_argument("--save-checkpoints", action="store_true", help="also store each fine-tuned model")
    p.add_argument("--device", default=None,
                   help="where to train: cpu (default), cuda, cuda:N; recorded with each run, not part of its key")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m lnsr_viz``."""
    from .experiments.config import ExperimentConfig

    parser = argparse.ArgumentParser(prog="python -m lnsr_viz",
                                     description="Noise stability of fine-tuned transformers: probes, LNSR, reports.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("probe", help="write the noise-stability profile of a model",
                       description="Inject noise at every layer (or one) and record the change at every later layer.")
    _add_common_data(p)
    p.add_argument("--n", type=int, default=64, help="number of sentences (default: 64)")
    p.add_argument("--noise", choices=["gaussian", "in_manifold"], default="gaussian", help="(default: gaussian)")
    p.add_argument("--scale", type=float, default=0.05,
                   help="noise scale; relative: fraction of each token's norm (default: 0.05, the paper's 5%%)")
    p.add_argument("--scale-kind", choices=["relative", "absolute"], default="relative", help="(default: relative)")
    p.add_argument("--layer", type=int, default=None, help="one injection layer (default: all layers)")
    p.add_argument("--draws", type=int, default=4, help="noise draws per sentence (default: 4)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--out", default="profile.csv", help="CSV output path (default: profile.csv)")
    p.add_argument("--html", default=None, help="also write an HTML report with the curves here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("compare", help="fine-tune methods over seeds and compare them",
                       description="Fine-tune every method with every seed, evaluate in and out of domain, probe "
                                   "stability, and write the tidy tables and an HTML report. Stored runs are reused.")
    _add_compare_options(p, ExperimentConfig())

    p = sub.add_parser("demo", help="the headline experiment on the packaged defaults (what `make demo` runs)",
                       description="vanilla vs LNSR fine-tuning of all-MiniLM-L6-v2 on 500 movie snippets, 3 seeds, "
                                   "evaluated on movie (in-domain) and Amazon, tweets, NYT (out-of-domain), with "
                                   "stability profiles; writes reports/demo.html. A second run re-renders from the "
                                   "run store.")
    _add_compare_options(p, ExperimentConfig.demo())
    p.set_defaults(out="reports/demo.html")

    p = sub.add_parser("sweep", help="run a grid of methods x parameters x training sizes x seeds",
                       description="Run (or resume) the grid described by a YAML/TOML file; stored runs are reused. "
                                   "With --shard i/n only every n-th job from the i-th runs, so shards can run as "
                                   "separate processes or machines; merge their stores with `merge`. Ends with the "
                                   "settings chosen on validation accuracy only.")
    p.add_argument("config", help="the sweep file (.yaml, .yml or .toml)")
    p.add_argument("--results", default=None, help="run-store folder (default: the file's 'results' or "
                                                   "results/sweep)")
    p.add_argument("--shard", default=None, help="i/n: run the i-th of n shards (1-based)")
    p.add_argument("--dry-run", action="store_true", help="list the jobs and exit")
    p.add_argument("--device", default=None,
                   help="where to train: cpu (default), cuda, cuda:N; recorded with each run, not part of its key")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("study", help="write the study's write-up (claims a-d) from a sweep's run store",
                       description="Choose each method's setting on validation accuracy only, test the four LNSR "
                                   "claims against vanilla seed by seed, and write the markdown write-up, its figure "
                                   "and the tidy tables. Run the sweep first; nothing is trained here.")
    p.add_argument("config", help="the sweep file the runs came from")
    p.add_argument("--results", default=None, help="run-store folder (default: the file's 'results')")
    p.add_argument("--out", default="docs/study.md", help="markdown output (default: docs/study.md)")

    p = sub.add_parser("merge", help="merge run stores (e.g. sweep shards) into one",
                       description="Copy every complete run of the given stores into --into; refuses stores written "
                                   "by different lnsr_viz versions or on different data.")
    p.add_argument("stores", nargs="+", help="run-store folders")
    p.add_argument("--into", required=True, help="the destination store")

    from .data.assets import ASSETS, HOME_ENV

    p = sub.add_parser("assets", help="fetch the offline model and data once",
                       description="Fetch lnsr_viz's offline model and data from pinned PyPI wheels (once) into the "
                                   "asset home and print where each one lies.")
    p.add_argument("--home", help=f"asset folder (default: ${HOME_ENV} or ~/.cache/lnsr_viz)")
    p.add_argument("--only", action="append", choices=sorted(ASSETS), metavar="NAME",
                   help=f"fetch only this asset; repeatable. One of: {', '.join(sorted(ASSETS))}")
    p.add_argument("--quiet", action="store_true", help="print only the resulting paths")

    p = sub.add_parser("diagnose", help="diagnose a fine-tuned checkpoint against its pre-trained base",
                       description="Train vs held-out accuracy and loss, layer stability compared with the base, "
                                   "drift per layer and calibration, with plain-language findings; writes "
                                   "OUT/report.html and OUT/summary.json.")
    p.add_argument("--model", required=True, help="the fine-tuned checkpoint folder (with config.json)")
    p.add_argument("--base", default=None,
                   help="the pre-trained base: a folder, a Hugging Face id or 'minilm' (default: read from the "
                        "checkpoint's config.json)")
    p.add_argument("--data", required=True,
                   help="labelled CSV/TSV (text and label columns); a 'split' column with train / validation / "
                        "test rows gives the train vs held-out gap")
    p.add_argument("--held-out", default=None, help="a separate held-out CSV (then --data is the training data)")
    p.add_argument("--text-column", default="text", help="(default: text)")
    p.add_argument("--label-column", default="label", help="(default: label)")
    p.add_argument("--split-column", default="split", help="(default: split)")
    p.add_argument("--max-examples", type=int, default=2000, help="at most this many examples per split "
                                                                   "(default: 2000)")
    p.add_argument("--probe-n", "--n-probe", dest="probe_n", type=int, default=64,
                   help="sentences for the stability probe (default: 64; --n-probe: its old name)")
    p.add_argument("--max-length", type=int, default=128, help="tokenizer truncation length (default: 128)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--out", default="diagnosis", help="output folder (default: diagnosis)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _load_probe_data(args: argparse.Namespace) -> Any:
    from .data.text import DOMAINS, as_dataset, load_domain

    data = args.data or "movie"
    if data in DOMAINS:
        return load_domain(data)
    return as_dataset(data, text_column=args.text_column, label_column=args.label_column)


def _cmd_probe(args: argparse.Namespace) -> int:
    from .core.adapter import ModelAdapter
    from .core.probe import StabilityProbe
    from .data.models import load_model
    from .utils.io import atomic_write_csv

    if args.n < 1:
        raise ValueError(f"--n must be >= 1; got {args.n}.")
    probe = StabilityProbe(args.noise, scale=args.scale, scale_kind=args.scale_kind, injection_layers=args.layer,
                           n_draws=args.draws, batch_size=args.batch_size, max_length=args.max_length,
                           seed=args.seed, progress=not args.quiet)
    out = Path(args.out)
    if not out.parent.exists():
        raise ValueError(f"--out folder {out.parent} does not exist; create it first.")
    data = _load_probe_data(args)
    texts = list(data.texts)[: args.n]
    model, tokenizer = load_model(args.model)
    adapter = ModelAdapter(model)
    if args.layer is not None:
        adapter.check_layer(args.layer, name="--layer")
    t0 = time.perf_counter()
    profile = probe.run(adapter, texts, tokenizer=tokenizer, label=str(args.model))
    atomic_write_csv(out, profile)
    print(f"wrote {out} ({len(profile)} rows, {len(texts)} sentences, {time.perf_counter() - t0:.1f} s)")
    if args.html:
        from .viz.reports import probe_report

        print(f"wrote {probe_report(profile, model=str(args.model), layer=args.layer).save(args.html)}")
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from .experiments.runs import compare

    if args.out is None:
        args.out = str(Path(args.results) / "report.html")
    t0 = time.perf_counter()
    qa = args.task == "qa"
    result = compare(config=_experiment(args), save_checkpoints=args.save_checkpoints, progress=not args.quiet,
                     device=args.device)
    from .utils.io import atomic_write_csv

    tables = Path(args.results) / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    for name in ("metrics", "history", "profile", "summary", "paired", "drift"):
        atomic_write_csv(tables / f"{name}.csv", getattr(result, name))
    from .viz.reports import comparison_report

    path = comparison_report(result).save(args.out)
    if len(result.paired):
        headline = "f1" if qa else "accuracy"
        print(f"\nVerdicts ({headline}):")
        for row in result.paired[result.paired["metric"] == headline].itertuples():
            print(f"  {row.domain}: {row.verdict}")
    print(f"\ntables: {tables}/")
    print(f"report: {path.resolve()}")
    print(f"total: {time.perf_counter() - t0:.1f} s ({result.timings['trained_runs']} runs trained, "
          f"{result.timings['cached_runs']} loaded from the store)")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from .experiments.diagnose import diagnose

    for name in ("max_examples", "probe_n", "max_length"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder for report.html and summary.json.")
    t0 = time.perf_counter()
    diag = diagnose(args.model, args.base, args.data, held_out=args.held_out, text_column=args.text_column,
                    label_column=args.label_column, split_column=args.split_column,
                    max_examples=args.max_examples, probe_n=args.probe_n, max_length=args.max_length,
                    seed=args.seed, progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    from .viz.reports import diagnosis_report

    report = diagnosis_report(diag).save(out / "report.html")
    diag.to_json(out / "summary.json")
    print(diag.summary())
    print(f"\nreport: {report.resolve()}\nsummary: {(out / 'summary.json').resolve()}")
    print(f"total: {time.perf_counter() - t0:.1f} s")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments.store import RunStore
    from .experiments.sweep import (
        expand,
        load_sweep_config,
        parse_shard,
        run_sweep,
        select_from_store,
        setting_order,
        shard_jobs,
        sweep_results,
    )

    config = load_sweep_config(args.config)
    i, n = parse_shard(args.shard)
    jobs = shard_jobs(config, args.shard)
    print(f"{len(jobs)} jobs in shard {i}/{n} of {len(expand(config))}")
    if args.dry_run:
        for j in jobs:
            print(f"  train_size={j.train_size} {j.job.name} seed={j.job.seed}")
        return 0
    results = str(sweep_results(config, args.results))
    runs = run_sweep(config, results=results, shard=args.shard, progress=not args.quiet, device=args.device)
    print(f"{int((~runs['cached']).sum())} runs trained, {int(runs['cached'].sum())} loaded from {results}")
    chosen = select_from_store(RunStore(results), order=setting_order(config))
    print("\nChosen on validation accuracy only (last epoch, mean over seeds):")
    print(chosen.to_string(index=False))
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .experiments.study import study_claims
    from .experiments.sweep import load_sweep_config, setting_order, sweep_results
    from .viz.reports import write_study

    config = load_sweep_config(args.config)
    results = str(sweep_results(config, args.results))
    if not (Path(results) / "runs").is_dir():
        raise ValueError(f"no run store at {results!r}: run `python -m lnsr_viz sweep {args.config}` first.")
    result = study_claims(results, order=setting_order(config))
    path = write_study(results, args.out, config=config, config_path=args.config, result=result)
    for row in result.claims.itertuples():
        tie = "" if row.role == "chosen" else "  [tied on validation, not chosen]"
        print(f"  ({row.claim}) {row.train_size} examples, {row.setting}: {row.verdict}{tie}")
    print(f"wrote {path} (figure and tables beside it and in {results}/tables)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "assets":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bars say what is happening
    try:
        if args.command == "probe":
            return _cmd_probe(args)
        if args.command in ("compare", "demo"):
            return _run_compare(args)
        if args.command == "diagnose":
            return _cmd_diagnose(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "study":
            return _cmd_study(args)
        if args.command == "merge":
            from .experiments.sweep import merge_stores

            print(f"merged {merge_stores(args.stores, args.into)} runs into {args.into}")
            return 0
        if args.command == "assets":
            from .data.assets import ASSETS, ensure_asset

            for name in args.only or list(ASSETS):
                print(f"{name}\t{ensure_asset(name, home=args.home, progress=not args.quiet)}")
            return 0
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2

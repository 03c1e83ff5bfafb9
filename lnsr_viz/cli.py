"""Command line: ``python -m lnsr_viz {probe, compare, demo, sweep, merge, diagnose, assets}`` (``lnsr-viz``).

Every option is checked before any model or data is loaded; errors print one readable line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
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


def _label_map(text: str) -> dict[str, int | str]:
    """Parse ``--label-map negative=0,positive=1`` (or ``pos=positive``): label -> class id or class name."""
    out: dict[str, int | str] = {}
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        label, sep, target = item.rpartition("=")
        if not sep or not label or not target:
            raise argparse.ArgumentTypeError(f"expected LABEL=CLASS pairs separated by commas, e.g. "
                                             f"negative=0,positive=1 or fresh=positive; got {item!r}")
        target = target.strip()
        out[label.strip()] = int(target) if target.lstrip("-").isdigit() else target
    if not out:
        raise argparse.ArgumentTypeError("expected at least one LABEL=CLASS pair, e.g. negative=0,positive=1")
    return out


#: Python argument names in error messages -> the command line's flags.
#: Set (to anything) to let an unexpected error show its traceback instead of one ``error:`` line.
DEBUG_ENV = "LNSR_VIZ_DEBUG"

_CLI_FLAGS = {"text_column": "--text-column", "label_column": "--label-column", "label_map": "--label-map",
              "encoding": "--encoding"}


def _cli_message(message: str) -> str:
    """An error message with the Python argument names it gives turned into this command line's flags."""
    import ast
    import re

    def flag_map(match: re.Match[str]) -> str:
        try:
            pairs = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            return match.group(0)
        return "--label-map " + ",".join(f"{k}={'CLASS' if v is Ellipsis else v}" for k, v in pairs.items())

    message = re.sub(r"\blabel_map=(\{[^{}]*\})", flag_map, message)
    message = message.replace("(each ... one of", "(each CLASS one of")
    message = re.sub(r"\bencoding=(['\"])([^'\"]+)\1", r"--encoding \2", message)
    message = re.sub(r"\b(text_column|label_column|label_map|encoding)=", lambda m: _CLI_FLAGS[m.group(1)], message)
    return re.sub(r"\blabel_map\b", "--label-map", message)


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
        out.setdefault(method, {})[name] = _param_value(method, name, value, item)
    return out


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _param_value(method: str, name: str, value: Any, item: str) -> Any:
    """A boolean parameter (its default is True/False) from true/false/1/0/yes/no/on/off; anything else refused.

    Without this, ``--param lnsr.relative=False`` would pass the string ``'False'``, which Python reads as true.
    """
    import inspect

    from .methods import METHODS

    cls = METHODS.get(method)
    if cls is None or isinstance(value, bool):
        return value
    param = inspect.signature(cls).parameters.get(name)
    if param is None or not isinstance(param.default, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"--param {item}: {method}.{name} is true or false; give one of "
                     f"{', '.join(_TRUE + _FALSE)}.")


def _seed(text: str) -> int:
    """A seed option: a whole number from 0 to 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 2**32 - 1; got {text!r}") from None
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"a seed must be from 0 to 2**32 - 1 = {2**32 - 1}; got {value}")
    return value


def _check_output(path: str | os.PathLike[str], flag: str, *, folder: bool = False,
                  created: str | os.PathLike[str] | None = None) -> Path:
    """Refuse, before any work, an output path that cannot be written: one line naming the option.

    A file output must not be an existing folder and its folder must exist (``created``: a folder this command
    makes itself, such as the run store, may be missing); ``folder=True``: an output folder must not be a file.
    The nearest existing folder must be writable (checked by creating and deleting a file there).
    """
    import uuid

    out = Path(path).expanduser()
    if folder:
        if out.exists() and not out.is_dir():
            raise ValueError(f"{flag} {out} is a file; pass a folder.")
    elif out.is_dir():
        raise ValueError(f"{flag} {out} is a folder; pass a file path, e.g. {out / 'report.html'}.")
    parent = out if folder else out.parent
    inside_created = created is not None and (parent == Path(created) or Path(created) in parent.parents)
    if not folder and not inside_created and not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist; create it first"
        raise ValueError(f"{flag} {out}: the folder {parent} {what}.")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {out}: {existing} is a file, not a folder.")
    probe = existing / f".write-probe-{uuid.uuid4().hex}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"{flag} {out}: cannot write in {existing} ({exc.strerror or exc}); pass a path you can "
                         "write to.") from None
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
                   help="a packaged domain (movie, amazon, tweets, nyt) or a data file with text and label columns "
                        "(default: movie): .csv (comma, tab or semicolon separated, header row), .tsv/.tab, "
                        "optionally .gz/.bz2/.xz/.zip; PATH:TEXT_COLUMN:LABEL_COLUMN names that file's columns "
                        "(e.g. reviews.csv:review:stars); with --task qa: 'squad' (the packaged SQuAD v1.1, default) "
                        "or a SQuAD-format JSON file")
    p.add_argument("--text-column", default=defaults.text_column,
                   help=f"text column of every data file that does not name its own with PATH:TEXT:LABEL "
                        f"(default: {defaults.text_column})")
    p.add_argument("--label-column", default=defaults.label_column,
                   help=f"label column of every data file that does not name its own (default: "
                        f"{defaults.label_column})")
    p.add_argument("--encoding", default=None,
                   help="text encoding of the data files, e.g. latin-1 or cp1252 (default: UTF-8, strictly: a file "
                        "with bytes that are not UTF-8 is refused, saying how many lines hold them)")
    p.add_argument("--max-length", type=int, default=defaults.max_length,
                   help=f"tokenizer truncation length (default: {defaults.max_length})")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=defaults.precision,
                   help=f"forward passes of training, evaluation and the probe in float32 or bfloat16 mixed precision "
                        f"(bf16 needs a CPU with avx512_bf16/amx_bf16 or a GPU with bf16, checked before any work; "
                        f"part of a run's key only when bf16; default: {defaults.precision})")


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
                   help=f"comma-separated out-of-domain sets: packaged domains or data files, each named by its "
                        f"stem in tables and verdicts, PATH:TEXT:LABEL for its own columns (default: "
                        f"{','.join(defaults.ood_data())}; pass '' for none); their labels are matched with the "
                        "training data's classes, and a label the training data lacks is refused (see --label-map); "
                        "with --task qa: further SQuAD files (the packaged SQuAD's other topic groups are always "
                        "used)")
    p.add_argument("--label-map", type=_label_map, default=None, metavar="LABEL=CLASS,...",
                   help="rename labels in every data file before they are matched with the training data's classes: "
                        "CLASS is a class id or a training label, e.g. --label-map negative=0,positive=1 or "
                        "--label-map negative=rotten,positive=fresh. The classes come from the training data only; "
                        "the map is recorded with every run and shown in the report")
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
    p.add_argument("--label-noise", type=float, default=defaults.label_noise,
                   help="flip this fraction of the training labels to another class, e.g. 0.2 (default: 0); "
                        "validation and test labels are kept")
    p.add_argument("--results", default=str(defaults.results), help=f"run-store folder (default: {defaults.results})")
    p.add_argument("--out", default=None, help="HTML report path (default: RESULTS/report.html)")
    p.add_argument("--save-checkpoints", action="store_true", help="also store each fine-tuned model")
    p.add_argument("--device", default=None,
                   help="where to train: cpu (default), cuda, cuda:N; recorded with each run, not part of its key")
    _add_tracking_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_tracking_options(p: argparse.ArgumentParser) -> None:
    """``--report-to`` and ``--logging-dir`` (compare, demo, sweep): report trained runs, as the HF Trainer does."""
    p.add_argument("--report-to", default=None,
                   help="report every trained run to tensorboard, mlflow, both (tensorboard,mlflow) or all (pip "
                        "install 'lnsr_viz[tracking]'); MLflow uses MLFLOW_TRACKING_URI, else ./mlflow.db")
    p.add_argument("--logging-dir", default=None, help="TensorBoard's folder for --report-to (default runs/)")


def _tracking(args: argparse.Namespace, owner: str) -> dict[str, Any] | None:
    """The tracking options of ``args`` (None when --report-to is not given), checked before any work."""
    if args.report_to is None:
        if args.logging_dir is not None:
            raise ValueError("--logging-dir is TensorBoard's folder: it needs --report-to tensorboard.")
        return None
    from .training.tracking import check_tracking

    tracking = {"report_to": args.report_to.split(",") if "," in args.report_to else args.report_to,
                "logging_dir": args.logging_dir}
    check_tracking(tracking, owner=f"{owner} --report-to")
    return tracking


def _methods_epilog() -> str:
    """``compare --help``'s list of the methods it accepts, one line each (their docstrings' first lines)."""
    from .methods import METHODS

    width = max(len(name) for name in METHODS)
    lines = [f"  {name:<{width}}  {(cls.__doc__ or '').strip().splitlines()[0].replace('``', '')}"
             for name, cls in METHODS.items()]
    return ("methods (--methods; 'a+b' combines two, e.g. lnsr+mixout; --param METHOD.NAME=VALUE sets a "
            "parameter,\nsee help(lnsr_viz.methods.<Class>) for each one's parameters):\n" + "\n".join(lines))


def _sweep_epilog() -> str:
    """``sweep --help``'s summary of the sweep file, with a pointer to its reference."""
    import textwrap

    from .experiments.config import ExperimentConfig

    train = ", ".join(f.name for f in ExperimentConfig.keyed("train"))
    probe = ", ".join(f.metadata["short"] for f in ExperimentConfig.keyed("probe"))
    text = ("The sweep file (YAML or TOML): top-level settings such as model, data, ood, train_sizes, seeds, "
            f"eval_size, val_size, split_seed, label_noise, analysis, results; a train: section ({train}), a probe: "
            f"section ({probe}) and "
            "methods: {NAME: {PARAM: value or [grid values]}} (or a list of such grids); unknown keys are refused. "
            "Reference and example: the docstring of lnsr_viz.experiments.sweep (python -c 'import "
            "lnsr_viz.experiments.sweep as s; help(s)'), the README's 'Sweeps and the study', and configs/study.yaml.")
    return textwrap.fill(text, 100)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m lnsr_viz``."""
    from .experiments.config import ExperimentConfig

    parser = argparse.ArgumentParser(prog="python -m lnsr_viz",
                                     description="Noise stability of fine-tuned transformers: probes, LNSR, reports.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("probe", help="write the noise-stability profile of a model",
                       description="Inject noise at every layer (or one) and record the change at every later layer.")
    _add_common_data(p)
    p.add_argument("--n", type=int, default=64,
                   help="number of sentences, drawn at random (seeded by --sample-seed), stratified by label when "
                        "the data have a label column; a text-only file works (default: 64; all rows if fewer)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the --n sample (default: 0)")
    p.add_argument("--noise", choices=["gaussian", "in_manifold"], default="gaussian", help="(default: gaussian)")
    p.add_argument("--scale", type=float, default=0.05,
                   help="noise scale; relative: fraction of each token's norm (default: 0.05, the paper's 5%%)")
    p.add_argument("--scale-kind", choices=["relative", "absolute"], default="relative", help="(default: relative)")
    p.add_argument("--layer", type=int, default=None, help="one injection layer (default: all layers)")
    p.add_argument("--draws", type=int, default=4, help="noise draws per sentence (default: 4)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    p.add_argument("--seed", type=_seed, default=0, help="noise seed, 0 to 2**32 - 1 (default: 0)")
    p.add_argument("--out", default="profile.csv", help="CSV output path; its folder must exist (default: profile.csv)")
    p.add_argument("--html", default=None, help="also write an HTML report with the curves here; its folder must "
                                                "exist, as for --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("compare", help="fine-tune methods over seeds and compare them",
                       description="Fine-tune every method with every seed, evaluate in and out of domain, probe "
                                   "stability, and write the tidy tables and an HTML report. Stored runs are reused.",
                       epilog=_methods_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_compare_options(p, ExperimentConfig())

    p = sub.add_parser("demo", help="the headline experiment on the packaged defaults (what `make demo` runs)",
                       description="vanilla vs LNSR fine-tuning of all-MiniLM-L6-v2 on 500 movie snippets, 3 seeds, "
                                   "evaluated on movie (in-domain) and Amazon, tweets, NYT (out-of-domain), with "
                                   "stability profiles; writes reports/demo.html. A second run re-renders from the "
                                   "run store.")
    _add_compare_options(p, ExperimentConfig.demo())
    p.add_argument("--no-checkpoints", action="store_true",
                   help="keep no fine-tuned model (by default the demo keeps each method's first-seed model, about "
                        "90 MB each, for the notebooks' diagnosis, drift and attribution sections)")
    p.set_defaults(out="reports/demo.html")

    p = sub.add_parser("sweep", help="run a grid of methods x parameters x training sizes x seeds",
                       description="Run (or resume) the grid described by a YAML/TOML file; stored runs are reused. "
                                   "With --shard i/n only every n-th job from the i-th runs, so shards can run as "
                                   "separate processes or machines; merge their stores with `merge`. Ends with the "
                                   "settings chosen on validation accuracy only.",
                       epilog=_sweep_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the sweep file (.yaml, .yml or .toml)")
    p.add_argument("--results", default=None, help="run-store folder (default: the file's 'results' or "
                                                   "results/sweep)")
    p.add_argument("--shard", default=None, help="i/n: run the i-th of n shards (1-based)")
    p.add_argument("--dry-run", action="store_true", help="list the jobs and exit")
    p.add_argument("--device", default=None,
                   help="where to train: cpu (default), cuda, cuda:N; recorded with each run, not part of its key")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local (default): every job in this process (with --shard: this process's share); ray: "
                        "every job a Ray task, on a local Ray instance or --address's cluster (pip install "
                        "'lnsr_viz[ray]')")
    p.add_argument("--address", default=None,
                   help="ray: join this Ray cluster (host:6379, ray://host:10001 or auto) instead of starting one")
    p.add_argument("--cpus-per-run", type=float, default=None, help="ray: CPUs (and torch threads) per run (1)")
    p.add_argument("--gpus-per-run", type=float, default=None,
                   help="ray: GPUs per run (0); a fraction packs runs onto a GPU, 0.25 = four per GPU")
    p.add_argument("--max-retries", type=int, default=None,
                   help="ray: retries of a run that fails or whose worker dies (2), then it is reported by name")
    _add_tracking_options(p)

    p = sub.add_parser("study", help="write the study's write-up (claims a-d) from a sweep's run store",
                       description="Choose each method's setting on validation accuracy only, test the four LNSR "
                                   "claims against vanilla seed by seed, and write the markdown write-up, its figure "
                                   "and the tidy tables. Run the sweep first; nothing is trained here.")
    p.add_argument("config", help="the sweep file the runs came from")
    p.add_argument("--results", default=None, help="run-store folder (default: the file's 'results')")
    p.add_argument("--out", default="docs/study.md", help="markdown output (default: docs/study.md)")

    p = sub.add_parser("track-record", help="check diagnose's findings against what happened to stored runs",
                       description="Build the population of fine-tuned runs of one or more run stores (each run's "
                                   "stored diagnosis, WeightWatcher metrics and outcomes), measure how well each "
                                   "finding and each WeightWatcher metric predicts over-fitting (Spearman rho, ROC "
                                   "AUC, bootstrap CIs, Holm), and write the markdown write-up. Nothing is trained.")
    p.add_argument("stores", nargs="+", help="run-store folders (e.g. results/study-v2)")
    p.add_argument("--out", default="docs/diagnose.md", help="markdown output (default: docs/diagnose.md)")
    p.add_argument("--tables", default="results/diagnose",
                   help="folder for the tidy CSV tables (default: results/diagnose)")
    p.add_argument("--finding-table", default=None,
                   help="also write the per-finding table diagnose reads (the packaged one is "
                        "lnsr_viz/data/track_record.csv)")
    p.add_argument("--population-name", default=None,
                   help="how the finding table names the population (default: the stores and the model count)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    p.add_argument("--preliminary", action="store_true", help="mark the write-up as a preliminary population")

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
    p.add_argument("--encoding", default=None,
                   help="text encoding of the data files, e.g. latin-1 (default: UTF-8, strictly: other bytes are "
                        "refused, never replaced)")
    p.add_argument("--label-map", type=_label_map, default=None, metavar="LABEL=CLASS,...",
                   help="rename labels before they are matched with the model's classes: CLASS is a class id or a "
                        "class name, e.g. --label-map neg=0,pos=1. String labels are matched by name when the "
                        "checkpoint's config names its classes (id2label, as compare --save-checkpoints writes it); "
                        "otherwise they are numbered in sorted order, with a warning")
    p.add_argument("--max-examples", type=int, default=2000, help="at most this many examples per split "
                                                                   "(default: 2000)")
    p.add_argument("--probe-n", "--n-probe", dest="probe_n", type=int, default=64,
                   help="sentences for the stability probe (default: 64; --n-probe: its old name)")
    p.add_argument("--max-length", type=int, default=128, help="tokenizer truncation length (default: 128)")
    p.add_argument("--seed", type=_seed, default=0, help="0 to 2**32 - 1 (default: 0)")
    p.add_argument("--out", default="diagnosis", help="output folder (default: diagnosis)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _cmd_probe(args: argparse.Namespace) -> int:
    from .core.adapter import ModelAdapter
    from .core.probe import StabilityProbe
    from .data.models import load_model
    from .utils.io import atomic_write_csv
    from .utils.precision import require_precision

    if args.n < 1:
        raise ValueError(f"--n must be >= 1; got {args.n}.")
    probe = StabilityProbe(args.noise, scale=args.scale, scale_kind=args.scale_kind, injection_layers=args.layer,
                           n_draws=args.draws, batch_size=args.batch_size, max_length=args.max_length,
                           seed=args.seed, progress=not args.quiet, precision=args.precision)
    require_precision(args.precision, "cpu", owner="probe")  # bf16 hardware, before the model is loaded
    out = _check_output(args.out, "--out")
    if args.html:
        _check_output(args.html, "--html")
    _check_max_length(args.model, args.max_length)
    from .data.text import sample_texts

    texts, how = sample_texts(args.data or "movie", args.n, seed=args.sample_seed, text_column=args.text_column,
                              label_column=args.label_column, encoding=args.encoding)
    print(f"probe sentences: {how}")
    model, tokenizer = load_model(args.model)
    adapter = ModelAdapter(model)
    print(f"model: {adapter.summary()}")  # which stack is probed, its layout, and what the top layer is
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


def _check_max_length(model: str, max_length: int) -> None:
    """Refuse ``--max-length`` above the model's position embeddings (read from its config.json only)."""
    from .data.models import model_limits

    limit = model_limits(model).max_length
    if limit is not None and max_length > limit:
        raise ValueError(f"--max-length {max_length} is above the {limit} positions of model {model!r}; use "
                         f"--max-length {limit} or less.")


def _run_compare(args: argparse.Namespace) -> int:
    from .experiments.runs import compare

    if args.out is None:
        args.out = str(Path(args.results) / "report.html")
    _check_output(args.out, "--out", created=args.results)  # RESULTS is made with the first run
    _check_output(args.results, "--results", folder=True)
    tracking = _tracking(args, args.command) or {}
    t0 = time.perf_counter()
    qa = args.task == "qa"
    keep = args.save_checkpoints  # the demo keeps its first seed's models for the notebooks (not part of the keys)
    if not keep and args.command == "demo" and not args.no_checkpoints:
        keep = (min(args.seeds),)
    result = compare(config=_experiment(args), save_checkpoints=keep, progress=not args.quiet,
                     device=args.device, **tracking)
    if keep and not isinstance(keep, bool):  # runs stored earlier without a model keep none: say which
        from .experiments.store import RunStore

        store = RunStore(args.results, read_only=True)
        for row in result.runs[result.runs["seed"].isin(list(keep)).fillna(False)].itertuples():
            if store.load(row.run_id).checkpoint_path is None:
                print(f"note: run {row.run_id} ({row.method}, seed {row.seed}) was stored without its model, so "
                      f"notebook 04 cannot diagnose it live; delete {store.run_dir(row.run_id)} and run the demo "
                      "again to keep it.")
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
    out = _check_output(args.out, "--out", folder=True)
    t0 = time.perf_counter()
    diag = diagnose(args.model, args.base, args.data, held_out=args.held_out, text_column=args.text_column,
                    label_column=args.label_column, split_column=args.split_column,
                    max_examples=args.max_examples, probe_n=args.probe_n, max_length=args.max_length,
                    seed=args.seed, progress=not args.quiet, label_map=args.label_map, encoding=args.encoding)
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

    ray_options = {k: v for k, v in (("address", args.address), ("cpus_per_run", args.cpus_per_run),
                                     ("gpus_per_run", args.gpus_per_run), ("max_retries", args.max_retries))
                   if v is not None}
    if args.executor == "ray":
        from .experiments.ray_executor import require_ray

        try:
            require_ray()
        except ImportError as err:
            raise ValueError(str(err)) from None
    elif ray_options:
        flags = ", ".join("--" + k.replace("_", "-") for k in ray_options)
        raise ValueError(f"{flags} only apply with --executor ray; add --executor ray or drop them.")
    tracking = _tracking(args, "sweep")  # None: the sweep file's tracking section, if any
    config = load_sweep_config(args.config)
    i, n = parse_shard(args.shard)
    jobs = shard_jobs(config, args.shard)
    print(f"{len(jobs)} jobs in shard {i}/{n} of {len(expand(config))}")
    if args.dry_run:
        for j in jobs:
            print(f"  train_size={j.train_size} {j.job.name} seed={j.job.seed}")
        return 0
    results = str(sweep_results(config, args.results))
    args.results = results  # for the Ctrl-C message: what was kept, and where
    _check_output(results, "--results", folder=True)
    from .experiments.ray_executor import SweepFailed

    try:
        runs = run_sweep(config, results=results, shard=args.shard, progress=not args.quiet, device=args.device,
                         executor=args.executor, tracking=tracking, **ray_options)
    except SweepFailed as err:
        failed = err.runs[err.runs["error"].notna()]
        print(f"{int((err.runs['error'].isna() & ~err.runs['cached']).sum())} runs trained, "
              f"{int(err.runs['cached'].sum())} loaded from {results}, {len(failed)} failed")
        for _, row in failed.iterrows():
            print(f"error: run {row['method']} seed {row['seed']} (train size {row['train_size']}) failed: "
                  f"{row['error']}", file=sys.stderr)
        print("error: the other runs are stored; fix the cause and run the same command again to make the failed "
              "ones (stored runs are reused).", file=sys.stderr)
        return 1
    print(f"{int((~runs['cached']).sum())} runs trained, {int(runs['cached'].sum())} loaded from {results}")
    chosen = select_from_store(RunStore(results), order=setting_order(config))
    print("\nChosen on validation accuracy only (last epoch, mean over seeds):")
    print(chosen.to_string(index=False))
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .experiments.study import study_claims, study_completeness
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
    for row in result.methods.itertuples():  # a step-budget study: every method's chosen setting vs the baseline
        print(f"  {row.train_size} examples, {row.setting}: {row.verdict} ({row.n_seeds} seeds)")
    incomplete = [f"{r.train_size} ({r.stored}/{r.planned})" for r in study_completeness(result.runs, config)
                  .itertuples() if r.stored < r.planned]
    if incomplete:
        print(f"  not complete: runs stored/planned at train size {', '.join(incomplete)}; resume with "
              f"`python -m lnsr_viz sweep {args.config}`")
    print(f"wrote {path} (figure and tables beside it and in {results}/tables)")
    return 0


def _cmd_track_record(args: argparse.Namespace) -> int:
    from .experiments.track_record import finding_table, population_table, track_record
    from .utils.io import atomic_write_csv
    from .viz.reports import write_track_record

    if args.n_boot < 100:
        raise ValueError(f"--n-boot must be at least 100 for a 95% interval; got {args.n_boot}.")
    for folder in args.stores:  # every store checked before any work
        if not (Path(folder) / "runs").is_dir():
            raise ValueError(f"no run store at {folder!r} (no runs/ folder): pass a sweep's results folder, e.g. "
                             "results/study-v2.")
    record = track_record(population_table(args.stores), n_boot=args.n_boot)
    path = write_track_record(record, args.out, tables=args.tables, n_boot=args.n_boot,
                              preliminary=args.preliminary)
    for row in record.table.itertuples():
        print(f"  {row.predictor}: {row.verdict} (rho {row.rho:+.2f}, ROC AUC {row.auc:.2f}, n {row.n})")
    if args.finding_table:
        name = args.population_name or f"{record.n_models} runs of {', '.join(args.stores)}"
        atomic_write_csv(Path(args.finding_table), finding_table(record, population=name))
        print(f"wrote {args.finding_table}")
    print(f"wrote {path} (tables in {args.tables})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "assets":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bars say what is happening
    shown = warnings.showwarning
    if argv is None:  # the process's own command line (not a caller's, e.g. a test recording warnings)
        warnings.showwarning = _warning_line
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
        if args.command == "track-record":
            return _cmd_track_record(args)
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
        print(f"error: {_cli_message(str(err))}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # a loss that became NaN / inf: the message says what to change
        print(f"error: training diverged: {err}. {_kept(args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted. {_kept(args)}", file=sys.stderr)
        return 130
    except Exception as err:  # anything else (e.g. raised inside a model's own forward): still one line
        if os.environ.get(DEBUG_ENV):
            raise
        first = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else "(no message)"
        print(f"error: {type(err).__name__} in {args.command}: {_cli_message(first)}. {_kept(args)} Set "
              f"{DEBUG_ENV}=1 to see the traceback.", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown
    parser.error(f"unknown command {args.command!r}")
    return 2


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """Warnings as one ``warning:`` line on stderr (the CLI user needs the message, not the source location)."""
    print(f"warning: {_cli_message(str(message))}", file=file or sys.stderr)


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted or failed command kept: the complete runs of its store (the unfinished one is dropped)."""
    results = getattr(args, "results", None) if args.command in ("compare", "demo", "sweep") else None
    if not results:
        return "Nothing was written."
    runs = Path(results) / "runs"
    n = sum(1 for p in runs.iterdir() if (p / "record.json").is_file()) if runs.is_dir() else 0
    return (f"{n} complete run(s) are kept in {runs} (the run in progress was discarded); the same command "
            "resumes from them.")

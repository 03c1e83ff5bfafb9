"""Cost of the QA comparison on this machine: windows, seconds per training step, seconds per evaluated question.

The README's QA command (``compare --task qa`` on 2,000 SQuAD questions of the ``science`` topic group) ran on a
GPU; this script measures what it costs on the CPU and projects the command's wall time from its parts:

* the sliding windows (``max_length``, stride 64) of the training, validation and evaluation questions;
* ``--steps`` timed training steps (after one untimed) of vanilla and of LNSR on ``--batch-size`` real training
  windows, with the step :meth:`lnsr_viz.training.loop.FineTuner.training_step` runs, in alternating order;
* the evaluation throughput (``lnsr_viz.analysis.qa_evaluation.evaluate_qa``: forward pass, span decoding,
  EM/F1) on 64 questions;
* one stability probe of the pre-trained model on the probe's 64 questions.

Projected per run: training steps x step time + per epoch the F1 on the training and validation questions + the
final evaluation of every evaluation set + the probe. The projection is printed next to its parts; nothing here is a
test. Results go to ``benchmarks/results/bench_qa.json``.

Usage::

    python benchmarks/bench_qa.py                    # the README's settings
    python benchmarks/bench_qa.py --threads 2 --steps 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from machine import machine  # noqa: E402  (benchmarks/machine.py; scripts run from this folder)

from lnsr_viz.analysis.qa_evaluation import evaluate_qa  # noqa: E402
from lnsr_viz.core.probe import StabilityProbe  # noqa: E402
from lnsr_viz.data.models import load_model  # noqa: E402
from lnsr_viz.data.squad import feature_batches, prepare_features  # noqa: E402
from lnsr_viz.experiments.runs import make_qa_protocol  # noqa: E402
from lnsr_viz.training.loop import FineTuner  # noqa: E402


def _step_seconds(name: str, model: torch.nn.Module, batch: dict, steps: int) -> list[float]:
    import copy

    net = copy.deepcopy(model)
    net.train()
    tuner = FineTuner(name, progress=False)
    tuner.method_.setup(net, seed=0)
    optimizer = tuner._optimizer(net)
    times = []
    try:
        tuner.training_step(net, batch, optimizer)  # untimed
        for _ in range(steps):
            t0 = time.perf_counter()
            tuner.training_step(net, batch, optimizer)
            times.append(time.perf_counter() - t0)
    finally:
        tuner.method_.teardown(net)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=300)
    parser.add_argument("--eval-size", type=int, default=500)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3, help="runs per method in the projected command")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per method")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_qa.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine("cpu")
    print(f"machine: {info}")
    protocol = make_qa_protocol("squad", train_group="science", train_size=args.train_size, val_size=args.val_size,
                                eval_size=args.eval_size)
    model, tok = load_model("minilm", task="qa", seed=0)
    stride = min(64, args.max_length // 2)

    def windows(ds) -> int:
        return len(prepare_features(ds, tok, max_length=args.max_length, stride=stride)["input_ids"])

    n_train_windows = windows(protocol.train)
    n_eval_questions = sum(len(ds) for ds in protocol.evaluation.values())
    print(f"windows: {n_train_windows} training windows from {len(protocol.train)} questions; "
          f"{len(protocol.validation)} validation and {n_eval_questions} evaluation questions")

    feats = prepare_features(protocol.train, tok, max_length=args.max_length, stride=stride)
    batch = feature_batches(feats, list(range(args.batch_size)), model=model)
    steps: dict[str, list[float]] = {"vanilla": [], "lnsr": []}
    for name in ("vanilla", "lnsr", "vanilla", "lnsr"):  # alternating, so a drifting load hits both
        steps[name] += _step_seconds(name, model, batch, math.ceil(args.steps / 2))
    step_s = {k: statistics.median(v) for k, v in steps.items()}
    for k, v in steps.items():
        print(f"training step, {k}: median {step_s[k]:.2f} s over {len(v)} steps ({args.batch_size} windows of "
              f"<= {args.max_length} tokens)")

    sample = protocol.validation.subset(range(min(64, len(protocol.validation))))
    model.eval()
    t0 = time.perf_counter()
    evaluate_qa(model, tok, {"sample": sample}, max_length=args.max_length, stride=stride)
    eval_s = (time.perf_counter() - t0) / len(sample)
    print(f"evaluation: {eval_s * 1000:.0f} ms per question (forward, decoding, EM/F1)")

    probe = StabilityProbe("gaussian", scale=0.05, n_draws=4, max_length=args.max_length, seed=0, progress=False)
    inputs = protocol.probe_inputs(min(64, protocol.n_probe_examples), tok, args.max_length, model)
    t0 = time.perf_counter()
    probe.run(model, inputs, tokenizer=tok, label="pretrained")
    probe_s = time.perf_counter() - t0
    print(f"stability probe (64 questions, 4 draws, every injection layer): {probe_s:.1f} s")

    n_steps = math.ceil(n_train_windows / args.batch_size) * args.epochs
    per_epoch_eval = (len(protocol.train) + len(protocol.validation)) * eval_s
    run_s = {k: n_steps * step_s[k] + args.epochs * per_epoch_eval + n_eval_questions * eval_s + probe_s
             for k in step_s}
    total = probe_s + args.seeds * sum(run_s.values())
    for k, v in run_s.items():
        print(f"projected run, {k}: {v / 60:.1f} min ({n_steps} steps, {args.epochs} x F1 on "
              f"{len(protocol.train) + len(protocol.validation)} questions, final evaluation, probe)")
    print(f"projected command ({args.seeds} seeds x vanilla + LNSR, plus the pre-trained probe): "
          f"{total / 3600:.2f} h on this machine")
    out = {"machine": info, "settings": vars(args), "train_windows": n_train_windows,
           "step_seconds": step_s, "step_samples": steps, "eval_seconds_per_question": eval_s,
           "probe_seconds": probe_s, "projected_run_seconds": run_s, "projected_total_seconds": total}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

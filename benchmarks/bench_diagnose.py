"""Benchmark: how long ``diagnose`` takes on a MiniLM-sized model, as one command (issue 18's goal: well under a
minute on 2 CPU cores).

Saves the packaged MiniLM with a two-class head as a checkpoint (``save_checkpoint``, base ``minilm``), writes the
study's diagnosis setting as CSV files (100 movie training sentences, 300 held-out ones), then times

* the command a user types, ``python -m lnsr_viz diagnose --model CKPT --data train.csv --held-out held.csv --out
  DIR`` (a fresh process: imports, loading both models, every finding, the report), ``--reps`` times;
* the library call ``diagnose(model, base, data)`` in this process on models already loaded (the findings alone).

The weights are the pre-trained ones moved by small random noise (diagnose refuses a base with the model's own
weights), so the findings' values mean nothing here; their cost does not depend on the weights. Never a
test. Run: ``python benchmarks/bench_diagnose.py [--reps 3] [--threads 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402  (benchmarks/machine.py)

#: The goal the README states for one diagnosis of a MiniLM-sized model on 2 CPU cores, in seconds.
GOAL_S = 60.0


def _data(folder: Path, n_train: int, n_held: int) -> tuple[Path, Path]:
    from lnsr_viz.data.text import load_domain, split_dataset, subsample

    splits = split_dataset(load_domain("movie"), seed=0)
    paths = []
    for name, ds, n in (("train", splits["train"], n_train), ("held_out", splits["test"], n_held)):
        part = subsample(ds, n, seed=0)
        path = folder / f"{name}.csv"
        part.to_frame()[["text", "label"]].to_csv(path, index=False)
        paths.append(path)
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", type=int, default=100, help="training sentences (default: 100, the study's)")
    parser.add_argument("--held-out", type=int, default=300, help="held-out sentences (default: 300)")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lnsr_viz.data.models import load_model
    from lnsr_viz.experiments.diagnose import diagnose, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, tok = load_model("minilm", num_labels=2, seed=0)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # stands in for fine-tuning: diagnose refuses a "base" with the model's own weights
            for p in model.parameters():
                p.add_(1e-3 * torch.randn(p.shape, generator=gen))
        ckpt = save_checkpoint(model, tok, tmp / "ckpt", base_model="minilm", class_names=["0", "1"])
        train, held = _data(tmp, args.train, args.held_out)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        command = [sys.executable, "-m", "lnsr_viz", "diagnose", "--model", str(ckpt), "--data", str(train),
                   "--held-out", str(held)]
        cli = []
        for rep in range(args.reps):
            t0 = time.perf_counter()
            subprocess.run([*command, "--out", str(tmp / f"out{rep}")], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            cli.append(time.perf_counter() - t0)
            print(f"command, rep {rep + 1}: {cli[-1]:.1f} s", flush=True)
        base = load_model("minilm", num_labels=2, seed=0)
        data = {"train": str(train), "held_out": str(held)}
        call = []
        for rep in range(args.reps):
            t0 = time.perf_counter()
            diagnose((model, tok), base, data)
            call.append(time.perf_counter() - t0)
            print(f"diagnose() on loaded models, rep {rep + 1}: {call[-1]:.1f} s", flush=True)
    out = {"machine": machine(), "train": args.train, "held_out": args.held_out, "reps": args.reps,
           "goal_s": GOAL_S, "command_s": cli, "command_median_s": statistics.median(cli),
           "call_s": call, "call_median_s": statistics.median(call),
           "command_median_over_goal": statistics.median(cli) / GOAL_S}
    print(f"\ndiagnose, MiniLM, {args.train} train + {args.held_out} held-out sentences, {args.threads} threads: "
          f"the command {out['command_median_s']:.1f} s (median of {args.reps}; {out['command_median_over_goal']:.2f}"
          f" x the {GOAL_S:.0f} s goal), the call on loaded models {out['call_median_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The learning-rate pilot of study v2 (issue 16): vanilla only, seed 1, on validation accuracy only.

Made once, before any study-v2 run, to choose the one learning rate every method then uses (5e-5 and 1e-4 were
within noise; 5e-5 kept). Writes ``lr_pilot.csv`` next to this file. Run from the project root:
``python results/study-v2-pilot/lr_pilot.py`` (about 40 minutes on 2 CPU cores).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from lnsr_viz.data.models import load_model
from lnsr_viz.experiments.config import ExperimentConfig
from lnsr_viz.experiments.runs import build_protocol
from lnsr_viz.training.loop import FineTuner

#: (training-set size, optimizer steps, learning rate)
PILOT = [(100, 150, 1e-4), (500, 250, 1e-4), (100, 150, 5e-5), (500, 250, 5e-5)]


def main() -> None:
    """Train vanilla once per pilot setting and store every validation point."""
    rows = []
    for size, steps, lr in PILOT:
        protocol = build_protocol(ExperimentConfig(train_size=size, val_size=300, eval_size=600))
        net, tokenizer = load_model("minilm", num_labels=2, seed=1)
        tuner = FineTuner("vanilla", batch_size=16, lr=lr, max_steps=steps, eval_every=steps // 10, keep_best=True,
                          train_eval_size=300, group_by_length=True, seed=1, progress=False)
        t0 = time.perf_counter()
        tuner.fit(net, tokenizer, protocol.train, protocol.validation)
        history = tuner.history_.assign(size=size, lr=lr, total_seconds=time.perf_counter() - t0)
        rows.append(history)
        print(size, lr, history[["step", "train_accuracy", "val_accuracy"]].round(3).to_dict("list"), flush=True)
    pd.concat(rows).to_csv(Path(__file__).with_name("lr_pilot.csv"), index=False)


if __name__ == "__main__":
    main()

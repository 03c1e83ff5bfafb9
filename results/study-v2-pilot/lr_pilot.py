import time, json, sys
from lnsr_viz.experiments.config import ExperimentConfig
from lnsr_viz.experiments.runs import build_protocol
from lnsr_viz.data.models import load_model
from lnsr_viz.training.loop import FineTuner
rows = []
for size, steps, lr in [(100, 150, 1e-4), (500, 250, 1e-4), (100, 150, 5e-5), (500, 250, 5e-5)]:
    p = build_protocol(ExperimentConfig(train_size=size, val_size=300, eval_size=600))
    net, tok = load_model("minilm", num_labels=2, seed=1)
    ft = FineTuner("vanilla", batch_size=16, lr=lr, max_steps=steps, eval_every=steps // 10, keep_best=True,
                   train_eval_size=300, group_by_length=True, seed=1, progress=False)
    t = time.perf_counter(); ft.fit(net, tok, p.train, p.validation); sec = time.perf_counter() - t
    h = ft.history_; h["size"] = size; h["lr"] = lr; h["total_seconds"] = sec
    rows.append(h)
    print(size, lr, round(sec), h[["step", "train_accuracy", "val_accuracy"]].round(3).to_dict("list"), flush=True)
import pandas as pd; pd.concat(rows).to_csv("/tmp/pilot/pilot.csv", index=False)

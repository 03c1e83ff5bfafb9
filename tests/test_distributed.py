"""Training through the toolkit under ``torchrun --nproc_per_node 2`` (gloo, CPU, DistributedDataParallel).

This file is also the worker script: the test launches ``python -m torch.distributed.run --standalone
--nproc_per_node 2 tests/test_distributed.py --worker OUT`` and compares what the two processes wrote with
single-process computations in the test process. Checked:

(a) after two optimizer steps on global batches of 8 (each process gets 4 examples), the parameters and the logged
    losses equal the single-process run on the same global batches, for vanilla, L2-SP and LNSR (float64, dropout
    off; LNSR's noise is a deterministic function of the hidden state so that both runs inject the same noise);
(b) the LNSR penalty computed by 2 processes on the two halves of a batch (which hold different numbers of real
    tokens) and averaged over processes equals the single-process penalty of the whole batch, while the naive mean
    of the two halves' own penalties does not;
(c) methods with several forward passes per step (R-Drop, SMART), ChildTuning-D's all-reduced Fisher pass and
    Mixout's per-process masks run under DDP and leave identical weights on both processes;
(d) the noise differs between the processes and each process's draws are reproducible from the seed and rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lnsr_viz.core.inputs import tokenize
from lnsr_viz.core.noise import NoiseInjector
from lnsr_viz.data.text import TextDataset
from lnsr_viz.methods import L2SP, LNSR
from lnsr_viz.testing import tiny_model, toy_sentences
from lnsr_viz.training.loop import FineTuner

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


class DeterministicNoise(NoiseInjector):
    """Noise whose direction is a fixed function of the hidden state (so two runs inject the same noise)."""

    name = "deterministic"

    def _draw(self, hidden, mask, generator):
        return hidden.detach().roll(1, dims=-1) - 0.5 * hidden.detach()


def _lnsr(world_size=1):
    return LNSR(lam=50.0, noise=DeterministicNoise(0.2), relative=False)


FIT_METHODS = {"vanilla": lambda: "vanilla", "l2sp": lambda: L2SP(alpha=20.0), "lnsr": _lnsr}


def _setting():
    model, tok = tiny_model("bert", seed=0, **NO_DROPOUT)
    model.double()
    texts, labels = toy_sentences(16, seed=1)
    return model, tok, TextDataset(texts=texts, labels=np.array(labels), name="toy")


def _fit(method):
    model, tok, data = _setting()
    tuner = FineTuner(method, epochs=1, batch_size=8, lr=1e-2, warmup_ratio=0.0, seed=0, progress=False)
    tuner.fit(model, tok, data)
    return model, tuner.history_


def _penalty(texts, *, world_size=1):
    model, tok, _ = _setting()
    lnsr = _lnsr()
    lnsr.setup(model, world_size=world_size)
    batch = tokenize(tok, texts, max_length=64, model=model)
    batch["labels"] = torch.zeros(len(texts), dtype=torch.long)
    return lnsr(model.train(), batch).reg_loss


def _penalty_texts():
    texts, _ = toy_sentences(8, seed=2)
    return texts


# ------------------------------------------------------------------------------------------------ worker
def _worker(out: Path) -> None:
    import torch.distributed as dist

    from lnsr_viz.training.distributed import all_reduce_mean, cleanup_distributed, init_distributed, shard_indices

    torch.set_num_threads(1)
    info = init_distributed()
    assert info.world_size == 2, info
    results: dict[str, object] = {"world_size": info.world_size}
    for name, make in FIT_METHODS.items():
        model, history = _fit(make())
        if info.is_main:
            torch.save(model.state_dict(), out / f"{name}.pt")
            results[f"{name}.history"] = history.drop(columns="seconds").to_dict(orient="list")
    texts = _penalty_texts()
    mine = [texts[i] for i in shard_indices(np.arange(len(texts)), info.rank, info.world_size)]
    local = _penalty(mine, world_size=info.world_size)
    results["penalty"] = float(all_reduce_mean(local))
    checks = {}
    for name, params in (("rdrop", {}), ("smart", {}), ("childtuning", {"variant": "D", "p": 0.5}),
                         ("lnsr+mixout", {"p": 0.5})):
        model, tok = tiny_model("bert", seed=0)
        texts, labels = toy_sentences(16, seed=3)
        FineTuner(name, method_params=params, epochs=1, batch_size=8, lr=1e-3, seed=0, progress=False).fit(
            model, tok, TextDataset(texts=texts, labels=np.array(labels), name="toy"))
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [None, None]
        dist.all_gather_object(gathered, flat.tolist())
        checks[name] = bool(torch.isfinite(flat).all()) and gathered[0] == gathered[1]
    results["ddp_checks"] = checks
    lnsr = LNSR()
    lnsr.setup(tiny_model("bert")[0], seed=7, rank=info.rank, world_size=info.world_size)
    draws = [None, None]
    dist.all_gather_object(draws, torch.randn(4, generator=lnsr._generator).tolist())
    results["noise_draws"] = draws
    if info.is_main:
        (out / "results.json").write_text(json.dumps(results))
    dist.barrier()  # nobody tears the group down while the other process still uses it
    cleanup_distributed()


# ------------------------------------------------------------------------------------------------ test
@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), "--worker", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("name", list(FIT_METHODS))
def test_two_process_training_equals_single_process_on_the_same_global_batches(two_processes, name):
    out, results = two_processes
    assert results["world_size"] == 2
    model, history = _fit(FIT_METHODS[name]())
    theirs = torch.load(out / f"{name}.pt")
    # Updates are ~lr = 1e-2; a wrong reduction shows at ~1e-5. atol 1e-9 leaves room for the attention key biases,
    # whose true gradient is zero: Adam turns their round-off gradients (~1e-17) into ~1e-11 steps.
    for key, value in model.state_dict().items():
        torch.testing.assert_close(theirs[key], value, rtol=1e-9, atol=1e-9, msg=key)
    logged = results[f"{name}.history"]
    for column in ("train_loss", "train_task_loss", "train_reg_loss", "train_accuracy"):
        np.testing.assert_allclose(logged[column], history[column], rtol=1e-9, atol=1e-14)
    if name != "vanilla":
        assert history["train_reg_loss"].iloc[0] > 0


def test_lnsr_term_reduced_over_two_processes_equals_the_whole_batch(two_processes):
    _, results = two_processes
    texts = _penalty_texts()
    whole = float(_penalty(texts))
    assert results["penalty"] == pytest.approx(whole, rel=1e-10)
    halves = [[texts[i] for i in range(r, len(texts), 2)] for r in range(2)]
    naive = float(np.mean([float(_penalty(h)) for h in halves]))  # mean of the halves' own token means
    assert abs(naive - whole) > 1e-6 * abs(whole)  # ... which is not the same, so the test can fail


def test_noise_is_independent_per_process_and_reproducible_from_the_seed(two_processes):
    _, results = two_processes
    rank0, rank1 = results["noise_draws"]
    assert rank0 != rank1
    for rank, drawn in enumerate((rank0, rank1)):
        lnsr = LNSR()
        lnsr.setup(tiny_model("bert")[0], seed=7, rank=rank)
        assert torch.randn(4, generator=lnsr._generator).tolist() == drawn


def test_multi_pass_methods_and_shared_masks_run_under_ddp(two_processes):
    _, results = two_processes
    assert results["ddp_checks"] == {"rdrop": True, "smart": True, "childtuning": True, "lnsr+mixout": True}


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker(Path(sys.argv[sys.argv.index("--worker") + 1]))
    # Skip the interpreter's teardown: gloo's background threads can abort the process at exit ("terminate called
    # without an active exception", seen once in CI) after all the work is done and written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

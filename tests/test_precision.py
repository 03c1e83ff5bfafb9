"""bf16 mixed precision: the probe's zero-noise guarantee, agreement with float32, a bf16 training step, refusals
(an unknown precision; bf16 on hardware without it, before any work) and run keys that stay those of float32.

The numeric tests run wherever torch runs: the hardware check is patched to say yes (torch emulates bfloat16 on a
CPU without bfloat16 instructions, slowly but with the same rounding), so they do not depend on the machine.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lnsr_viz.utils.precision as precision_mod
from lnsr_viz import cli
from lnsr_viz.analysis.evaluation import evaluate, predict_proba
from lnsr_viz.core.probe import StabilityProbe
from lnsr_viz.data.text import TextDataset
from lnsr_viz.experiments.config import ExperimentConfig
from lnsr_viz.experiments.runs import Job, compare, run_configs
from lnsr_viz.experiments.store import config_hash
from lnsr_viz.testing import tiny_model, toy_sentences
from lnsr_viz.training.loop import FineTuner
from lnsr_viz.utils.precision import PRECISIONS, autocast, bf16_support, require_precision


@pytest.fixture
def bf16_cpu(monkeypatch):
    """The CPU counts as having bfloat16 instructions (whatever this machine has)."""
    monkeypatch.setattr(precision_mod, "cpu_bf16_supported", lambda: True)


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    """The CPU counts as lacking bfloat16 instructions."""
    monkeypatch.setattr(precision_mod, "cpu_bf16_supported", lambda: False)


def _data(n=16, seed=0, name="toy"):
    texts, labels = toy_sentences(n, seed=seed)
    return TextDataset(texts=texts, labels=np.array(labels), name=name)


# ----------------------------------------------------------------------------------------------------------------
# the probe
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "strategy", "noise"), [
    ("bert", "replay", "gaussian"), ("bert", "naive", "gaussian"), ("bert", "replay", "in_manifold"),
    ("roberta", "replay", "gaussian"), ("gpt2", "replay", "gaussian"), ("deberta-v2", "replay", "gaussian"),
])
def test_bf16_zero_noise_gives_exactly_zero_change(bf16_cpu, family, strategy, noise):
    model, tok = tiny_model(family, n_layers=3)
    texts, _ = toy_sentences(6)
    # batch_size 4 over 6 texts: a short last chunk; max_rows 8: the draws split over several replays
    probe = StabilityProbe(noise, scale=0.0, n_draws=3, batch_size=4, max_rows=8, n_components=4, progress=False,
                           precision="bf16", strategy=strategy)
    profile = probe.run(model, texts, tokenizer=tok)
    assert (profile["change_l2"] == 0).all() and (profile["change_rel"] == 0).all()
    assert set(profile["injection_layer"]) == {0, 1, 2, 3}


def test_bf16_probe_really_runs_in_bfloat16(bf16_cpu):
    model, tok = tiny_model("bert", n_layers=2)
    seen = []
    hook = model.bert.encoder.layer[0].attention.self.query.register_forward_hook(
        lambda m, a, out: seen.append(out.dtype))
    try:
        StabilityProbe(n_draws=1, progress=False, precision="bf16").run(model, toy_sentences(4)[0], tokenizer=tok)
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights are not converted


@pytest.mark.parametrize("family", ["bert", "albert", "gpt2"])
def test_bf16_probe_values_are_close_to_float32(bf16_cpu, family):
    """bf16 profile vs fp32 profile, same noise draws.

    Tolerance: bfloat16 keeps 8 significand bits (unit roundoff 2**-8 ~ 0.4%). Clean and noisy states pass through
    the same bf16 matrix products, so most of their rounding cancels in the difference; on these 3-layer models the
    relative deviation measured 0 to 0.7% (albert, the most). rtol=5% leaves a 7x margin while still catching a
    real error (a wrong reference, an unwidened difference, noise drawn in bf16), which moves values by far more.
    """
    model, tok = tiny_model(family, n_layers=3)
    texts, _ = toy_sentences(12)
    kw = dict(scale=0.05, n_draws=3, batch_size=6, seed=5, progress=False)
    fp32 = StabilityProbe(**kw).run(model, texts, tokenizer=tok)
    bf16 = StabilityProbe(**kw, precision="bf16").run(model, texts, tokenizer=tok)
    keys = ["injection_layer", "layer"]
    assert fp32[keys].equals(bf16[keys])
    for col in ("change_l2", "change_rel"):
        np.testing.assert_allclose(bf16[col], fp32[col], rtol=0.05, err_msg=col)
    assert bf16.attrs["top_layer"] == fp32.attrs["top_layer"]


def test_fp32_probe_is_the_probe_as_before():
    model, tok = tiny_model("bert", n_layers=2)
    texts, _ = toy_sentences(8)
    default = StabilityProbe(n_draws=2, progress=False).run(model, texts, tokenizer=tok)
    explicit = StabilityProbe(n_draws=2, progress=False, precision="fp32").run(model, texts, tokenizer=tok)
    assert default.equals(explicit)
    assert StabilityProbe().get_params()["precision"] == "fp32"
    assert StabilityProbe(**StabilityProbe(precision="bf16").get_params()).precision == "bf16"
    assert "precision" not in repr(StabilityProbe()) and "precision='bf16'" in repr(StabilityProbe(precision="bf16"))


# ----------------------------------------------------------------------------------------------------------------
# training and evaluation
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["vanilla", "lnsr"])
def test_bf16_training_step_gives_a_finite_loss_and_keeps_fp32_parameters(bf16_cpu, method):
    model, tok = tiny_model("bert", n_layers=2)
    tuner = FineTuner(method, batch_size=8, lr=1e-3, progress=False, precision="bf16")
    tuner.method_.setup(model, seed=0)
    optimizer = tuner._optimizer(model)  # noqa: SLF001 - the loop's own optimizer, as fit() builds it
    data = _data(8)
    batch = {**tok(data.texts, padding=True, return_tensors="pt"), "labels": torch.as_tensor(data.labels)}
    seen = []
    hook = model.bert.encoder.layer[0].output.dense.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    try:
        parts = tuner.training_step(model, batch, optimizer)
    finally:
        hook.remove()
        tuner.method_.teardown(model)
    assert torch.bfloat16 in seen  # the forward ran in bf16
    assert torch.isfinite(parts.loss) and torch.isfinite(torch.as_tensor(parts.task_loss))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in optimizer.state.values())  # AdamW's state too
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))  # it stepped


def test_bf16_fit_and_evaluation_run_and_stay_close_to_fp32(bf16_cpu):
    train, val = _data(16), _data(8, seed=1, name="val")
    history = {}
    for prec in PRECISIONS:
        model, tok = tiny_model("bert", n_layers=2, seed=0)
        tuner = FineTuner("lnsr", epochs=1, batch_size=8, lr=1e-3, seed=2, progress=False, precision=prec)
        tuner.fit(model, tok, train, val)
        history[prec] = tuner.history_
        assert all(p.dtype == torch.float32 for p in model.parameters())
        table = evaluate(model, tok, {"val": val}, precision=prec)
        assert np.isfinite(table["value"]).all()
        probs = predict_proba(model, tok, val.texts, precision=prec)
        assert probs.dtype == np.float64 and np.allclose(probs.sum(axis=1), 1.0)
    for col in ("train_loss", "train_task_loss", "val_loss"):
        # one epoch of two steps from the same start: bf16 rounding moves the losses by well under 5%
        np.testing.assert_allclose(history["bf16"][col], history["fp32"][col], rtol=0.05, err_msg=col)


def test_autocast_is_a_no_op_for_fp32():
    with autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["fp16", "bfloat16", "FP32", None, 16])
def test_an_unknown_precision_is_refused_everywhere(bad):
    match = r"The 'precision' parameter of .* must be one of \['fp32', 'bf16'\]"
    with pytest.raises(ValueError, match=match):
        FineTuner(precision=bad)
    with pytest.raises(ValueError, match=match):
        StabilityProbe(precision=bad)
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(precision=bad)
    model, tok = tiny_model("bert")
    with pytest.raises(ValueError, match=match):
        predict_proba(model, tok, ["a film"], precision=bad)
    with pytest.raises(ValueError, match=match):
        evaluate(model, tok, {"toy": _data(4)}, precision=bad)


def test_the_cli_refuses_an_unknown_precision(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["compare", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["compare", "--precision", "bf16"])
    assert cli._experiment(args).precision == "bf16"  # noqa: SLF001
    assert cli.build_parser().parse_args(["probe"]).precision == "fp32"


def test_bf16_without_hardware_is_refused_before_any_work(no_bf16_cpu, tmp_path, capsys):
    msg = r"precision='bf16' needs bfloat16 hardware, and this CPU .* lacks it; use precision='fp32'"
    model, tok = tiny_model("bert", n_layers=2)
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=msg):
        FineTuner(epochs=1, progress=False, precision="bf16").fit(model, tok, _data(8))
    with pytest.raises(ValueError, match=msg):
        StabilityProbe(progress=False, precision="bf16").run(model, toy_sentences(4)[0], tokenizer=tok)
    with pytest.raises(ValueError, match=msg):
        predict_proba(model, tok, ["a film"], precision="bf16")
    with pytest.raises(ValueError, match=msg):
        evaluate(model, tok, {"toy": _data(4)}, precision="bf16")
    hook.remove()
    assert not calls  # no forward pass ran
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    with pytest.raises(ValueError, match=msg):
        compare(["vanilla"], [1], precision="bf16", train_size=8, results=tmp_path / "store", progress=False,
                verbose=False)
    assert not (tmp_path / "store").exists()  # refused before the store, the data or the model
    out = tmp_path / "p.csv"
    assert cli.main(["probe", "--precision", "bf16", "--out", str(out), "--quiet"]) == 2
    assert "needs bfloat16 hardware" in capsys.readouterr().err and not out.exists()
    # float32 is never refused
    assert require_precision("fp32", "cpu", owner="x") == "fp32"


def test_bf16_is_refused_on_a_gpu_without_it_and_on_other_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Old GPU")
    with pytest.raises(ValueError, match=r"needs bfloat16 hardware, and cuda \(Old GPU\) lacks it; use "
                                         r"precision='fp32'"):
        require_precision("bf16", "cuda", owner="FineTuner")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert bf16_support("cuda:0")[0] and require_precision("bf16", "cuda", owner="x") == "bf16"
    with pytest.raises(ValueError, match="the mps device .*CPUs and CUDA GPUs only"):
        require_precision("bf16", "mps", owner="x")


def test_the_cpu_check_reads_the_bf16_flags(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    real_open = open

    def opener(path, *a, **k):
        return real_open(fake if path == "/proc/cpuinfo" else path, *a, **k)

    monkeypatch.setattr("builtins.open", opener)
    for flags, expected in [("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True),
                            ("fpu amx_tile amx_bf16", True)]:
        fake.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        precision_mod.cpu_bf16_supported.cache_clear()
        assert precision_mod.cpu_bf16_supported() is expected, flags
    fake.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")  # ARM
    precision_mod.cpu_bf16_supported.cache_clear()
    assert precision_mod.cpu_bf16_supported() is True
    precision_mod.cpu_bf16_supported.cache_clear()


# ----------------------------------------------------------------------------------------------------------------
# run keys
# ----------------------------------------------------------------------------------------------------------------
def _keys(config):
    protocol = SimpleNamespace(in_domain="movie", evaluation=dict.fromkeys(["movie", "amazon"]), fingerprint="f" * 16,
                               n_probe_examples=600, task="classification")
    jobs = [Job("pretrained", {}, None), Job("vanilla", {}, 1), Job("lnsr", {"lam": 10.0}, 1)]
    return run_configs(jobs, config, protocol)


def test_fp32_keeps_the_run_keys_and_bf16_gets_its_own():
    default, fp32, bf16 = (_keys(ExperimentConfig()), _keys(ExperimentConfig(precision="fp32")),
                           _keys(ExperimentConfig(precision="bf16")))
    assert json.dumps(default) == json.dumps(fp32)
    assert "precision" not in json.dumps(fp32)  # float32 adds nothing to any part of the key
    for a, b in zip(fp32, bf16, strict=True):
        assert config_hash(a) != config_hash(b)  # every bf16 run, the pre-trained probe included, is its own
        assert b["probe"] == {**a["probe"], "precision": "bf16"}
        if "train" in a:
            assert b["train"] == {**a["train"], "precision": "bf16"}
    assert ExperimentConfig(precision="bf16").make_probe().precision == "bf16"
    # the trainer gets the setting (train_params is what FineTuner is built from); fp32 is left out, as before
    assert ExperimentConfig(precision="bf16").train_params()["precision"] == "bf16"
    assert "precision" not in ExperimentConfig().train_params() and "precision" not in ExperimentConfig().to_dict()
    bf16 = ExperimentConfig(precision="bf16")
    assert ExperimentConfig.from_dict(bf16.to_dict()) == bf16 and bf16.to_dict()["train"]["precision"] == "bf16"

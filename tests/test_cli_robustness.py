"""Bad and odd input at the command line and in the Python API (issue 14, the run-store / sweep / CLI part).

Every refusal is one ``error:`` line, comes before any work (no probe, no training) and leaves no results folder;
failures during the work (a loss that became NaN, Ctrl-C) end with one line saying what was kept.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch

from lnsr_viz import cli
from lnsr_viz.core.probe import StabilityProbe
from lnsr_viz.experiments.config import ExperimentConfig
from lnsr_viz.experiments.diagnose import diagnose
from lnsr_viz.experiments.runs import compare
from lnsr_viz.experiments.store import RunStore
from lnsr_viz.experiments.sweep import load_sweep_config
from lnsr_viz.testing import tiny_model, toy_sentences
from lnsr_viz.training.collapse import CollapseGuard, CollapseWarning
from lnsr_viz.training.loop import FineTuner


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    model, tok = tiny_model("bert", seed=0)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    model.save_pretrained(root / "no_tokenizer")
    three, _ = tiny_model("bert", num_labels=3, seed=0)
    three.save_pretrained(root / "three_classes")
    tok.save_pretrained(root / "three_classes")
    wide, _ = tiny_model("bert", hidden=64, seed=0)
    wide.save_pretrained(root / "wide")
    tok.save_pretrained(root / "wide")
    for name, doc in (("not_a_model", {"hidden": 3}), ("unknown_type", {"model_type": "no-such-family"})):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(doc))
    texts, labels = toy_sentences(80, seed=0)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(root / "in.csv", index=False)
    return root


@pytest.fixture
def work(monkeypatch):
    """Counts the expensive steps: probes and fine-tunings."""
    calls = []
    probe_run, fit = StabilityProbe.run, FineTuner.fit

    def counting_probe(self, *args, **kwargs):
        calls.append("probe")
        return probe_run(self, *args, **kwargs)

    def counting_fit(self, *args, **kwargs):
        calls.append("fit")
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(StabilityProbe, "run", counting_probe)
    monkeypatch.setattr(FineTuner, "fit", counting_fit)
    return calls


def _compare(root, results, *extra, model="model"):
    return ["compare", "--model", str(root / model), "--data", str(root / "in.csv"), "--ood", "",
            "--methods", "vanilla", "--seeds", "1", "--train-size", "24", "--val-size", "8", "--eval-size", "12",
            "--epochs", "1", "--batch-size", "8", "--probe-n", "6", "--probe-draws", "2", "--results", str(results),
            "--quiet", *extra]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("error: ")
    return lines[-1]


# ------------------------------------------------------------------------- refused before any work, nothing written
@pytest.mark.parametrize(("extra", "model", "message"), [
    (["--methods", "lnsr", "--param", "lnsr.injection_layer=99"], "model",
     r"injection_layer=99 .* it has 2 blocks, so the noise can be injected at layers 0..1"),
    (["--max-length", "200"], "model", r"max_length=200 .* above the 64 positions"),
    (["--seeds", str(2**64)], "model", r"'seed' parameter of compare must be an int in the range \[0, 4294967295\]"),
    (["--methods", "vanilla,vanilla"], "model", r"methods names \['vanilla'\] more than once"),
    (["--methods", "lnsr", "--param", "lnsr.relative=maybe"], "model", r"lnsr.relative is true or false"),
    ([], "no_tokenizer", r"has no tokenizer .* tokenizer.save_pretrained"),
    ([], "not_a_model", r"has no 'model_type', so .* is not a transformers model folder"),
    ([], "unknown_type", r"names model_type 'no-such-family', which transformers .* does not know"),
    ([], "three_classes", r"head with 3 classes, but the training data have 2"),
    (["--logging-dir", "tb"], "model", r"--logging-dir is TensorBoard's folder: it needs --report-to tensorboard"),
    (["--report-to", "wandb"], "model", r"'report_to' parameter of compare --report-to names \['wandb'\]"),
])
def test_refused_compare_does_no_work_and_leaves_no_folder(tiny, tmp_path, work, capsys, extra, model, message):
    results = tmp_path / "results"
    assert cli.main(_compare(tiny, results, *extra, model=model)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert re.search(message, line), line
    assert work == []  # not even the pre-trained probe
    assert not results.exists()


def test_out_that_is_a_folder_or_not_writable_is_refused_up_front(tiny, tmp_path, work, capsys, monkeypatch):
    results = tmp_path / "results"
    (tmp_path / "taken").mkdir()
    assert cli.main(_compare(tiny, results, "--out", str(tmp_path / "taken"))) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: --out ") and "is a folder; pass a file path" in line
    # a read-only folder (root ignores permission bits, so the kernel's refusal is simulated at the probe write)
    (tmp_path / "ro").mkdir()
    real_open = cli.os.open

    def deny(path, flags, mode=0o777, *args, **kwargs):
        if ".write-probe-" in str(path) and str(tmp_path / "ro") in str(path):
            raise PermissionError(30, "Read-only file system", str(path))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(cli.os, "open", deny)
    assert cli.main(_compare(tiny, results, "--out", str(tmp_path / "ro" / "report.html"))) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "cannot write in" in line and "Read-only file system" in line and ".write-probe" not in line
    assert work == [] and not results.exists()


def test_probe_checks_out_html_seed_scale_and_max_length_before_work(tiny, tmp_path, work, capsys):
    base = ["probe", "--model", str(tiny / "model"), "--data", str(tiny / "in.csv"), "--n", "4", "--quiet"]
    out = tmp_path / "p.csv"
    # --html refuses a missing folder, as --out does (it used to create it)
    assert cli.main([*base, "--out", str(out), "--html", str(tmp_path / "new" / "p.html")]) == 2
    assert "does not exist" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists() and not out.exists()
    assert cli.main([*base, "--out", str(tmp_path)]) == 2
    assert "is a folder" in _one_error_line(capsys.readouterr().err)
    assert cli.main([*base, "--out", str(out), "--max-length", "100"]) == 2
    assert "above the 64 positions" in _one_error_line(capsys.readouterr().err)
    assert cli.main([*base, "--out", str(out), "--scale-kind", "absolute", "--scale", "1e30"]) == 2
    assert "overflow" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(SystemExit) as exc:
        cli.main([*base, "--out", str(out), "--seed", str(2**64)])
    assert exc.value.code == 2 and "a seed must be from 0 to 2**32 - 1" in capsys.readouterr().err
    assert work == [] and not out.exists()


# ------------------------------------------------------------------------------- failures during the work: one line
def test_nan_loss_is_one_line_saying_what_was_kept(tiny, tmp_path, capsys):
    results = tmp_path / "results"
    assert cli.main(_compare(tiny, results, "--lr", "1e6")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "training diverged" in line and "lower the learning rate" in line
    assert "regulariser's weight" not in line  # vanilla has none
    assert "1 complete run(s) are kept" in line  # the pre-trained probe


def test_ctrl_c_is_one_line_saying_what_was_kept(tiny, tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    fit = FineTuner.fit

    def interrupted(self, *args, **kwargs):
        if self.seed == 2:
            raise KeyboardInterrupt
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(FineTuner, "fit", interrupted)
    assert cli.main(_compare(tiny, results, "--seeds", "1,2")) == 130
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: interrupted. 2 complete run(s) are kept in")
    assert len(RunStore(results).list_runs()) == 2
    assert not list((results / "runs").glob(".tmp-*"))


# ------------------------------------------------------------------------------------------------------ sweeps
def _sweep_file(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("model: minilm\nseeds: [1, 2\ntrain_sizes: [10]\n", r"not valid YAML at line \d+, column \d+"),
    ("seeds: [1.5, 2]\ntrain_sizes: [10]\nmethods: {vanilla: {}}\n", r"'seeds' must hold whole numbers"),
    ("seeds: [1, 1]\ntrain_sizes: [10]\nmethods: {vanilla: {}}\n", r"seeds must be distinct"),
    ("seeds: [1]\ntrain_sizes: [10, 10]\nmethods: {vanilla: {}}\n", r"train_sizes must be distinct"),
    ("seeds: [1]\ntrain_sizes: [10]\nprobe: {n: 8, layers: [0]}\nmethods: {vanilla: {}}\n",
     r"unknown key\(s\) \['layers'\] under 'probe'"),
    ("seeds: [1]\ntrain_sizes: [10]\ntrain: {lr: 0}\nmethods: {vanilla: {}}\n", r"'lr' parameter of FineTuner"),
])
def test_bad_sweep_files_are_one_line(tmp_path, capsys, text, message):
    path = _sweep_file(tmp_path, text)
    assert cli.main(["sweep", str(path), "--results", str(tmp_path / "r"), "--dry-run"]) == 2
    assert re.search(message, _one_error_line(capsys.readouterr().err))
    assert not (tmp_path / "r").exists()


def test_a_shard_without_jobs_is_refused(tmp_path, capsys):
    path = _sweep_file(tmp_path, "seeds: [1]\ntrain_sizes: [10]\nmethods: {vanilla: {}}\n")
    assert len(load_sweep_config(path)["seeds"]) == 1
    assert cli.main(["sweep", str(path), "--shard", "9/9", "--results", str(tmp_path / "r")]) == 2
    assert "--shard 9/9 gets no jobs: the grid has only 2 jobs" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------ the Python API
def test_compare_given_a_string_or_float_seeds_refuses_clearly(tmp_path):
    with pytest.raises(ValueError, match="methods must be a list of method names"):
        compare("vanilla", results=str(tmp_path / "r"))
    with pytest.raises(ValueError, match=r"Got 1.5 instead"):
        compare(["vanilla"], [1.5, 2], results=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_param_booleans_are_parsed_not_taken_as_truthy_strings():
    parsed = cli._params(["lnsr.relative=False", "lnsr.detach_clean=yes", "mixout.include_head=0", "lnsr.lam=1"])
    assert parsed == {"lnsr": {"relative": False, "detach_clean": True, "lam": 1}, "mixout": {"include_head": False}}
    assert ExperimentConfig(methods=["lnsr"], method_params={"lnsr": parsed["lnsr"]}).method_params["lnsr"][
        "relative"] is False
    with pytest.raises(ValueError, match="true or false"):
        cli._params(["lnsr.relative=False-ish"])


def test_torch_threads_are_recorded_with_each_run_not_in_its_key(tiny, tmp_path):
    result = compare(["vanilla"], [1], model=str(tiny / "model"), data=str(tiny / "in.csv"), ood=(), train_size=24,
                     val_size=8, eval_size=12, epochs=1, batch_size=8, probe_n=6, probe_draws=2,
                     results=str(tmp_path / "r"), progress=False, verbose=False)
    store = RunStore(tmp_path / "r")
    for run_id in result.runs["run_id"]:
        run = store.load(run_id)
        assert run.extra["torch_threads"] == torch.get_num_threads()
        assert "torch_threads" not in json.dumps(run.config)


def test_diagnose_refuses_a_base_of_another_width_before_work(tiny, work):
    with pytest.raises(ValueError, match="has hidden size 64, but the model .* has 32"):
        diagnose(str(tiny / "model"), str(tiny / "wide"), str(tiny / "in.csv"), held_out=str(tiny / "in.csv"),
                 max_examples=16, probe_n=4)
    assert work == []


def test_vanilla_collapse_warning_does_not_ask_for_a_regulariser_weight():
    guard = CollapseGuard(["a b", "c d"], tokenizer=None)
    guard.measure = lambda model: (1.0, 0.999)  # collapsed: every sentence points the same way
    guard.initial_rank = 10.0
    with pytest.warns(CollapseWarning) as record:
        guard.check(None, epoch=1, train_loss=0.4, task_loss=0.4)  # vanilla: total loss == task loss
    message = str(record[0].message)
    assert "no regulariser adds to the loss" in message and "Lower its weight" not in message
    guard.collapsed = False
    with pytest.warns(CollapseWarning, match=r"share is 0.50x the task loss. Lower its weight"):
        guard.check(None, epoch=1, train_loss=0.6, task_loss=0.4)


def test_help_lists_the_methods_and_points_to_the_sweep_reference(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    out = capsys.readouterr().out
    for name in ("vanilla", "lnsr", "l2sp", "mixout", "childtuning"):
        assert f"\n  {name} " in out
    assert "Plain fine-tuning: the task loss only." in out
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    out = capsys.readouterr().out
    assert "lnsr_viz.experiments.sweep" in out and "configs/study.yaml" in out


def test_an_unexpected_error_is_one_line_unless_debugging(monkeypatch, capsys, tmp_path):
    def boom(args):
        raise RuntimeError("shape mismatch inside the model's forward\nsecond line of detail")

    monkeypatch.setattr(cli, "_cmd_probe", boom)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert cli.main(["probe", "--model", "minilm", "--out", str(tmp_path / "p.csv")]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "RuntimeError in probe: shape mismatch inside the model's forward" in line
    assert "second line" not in line and cli.DEBUG_ENV in line
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli.main(["probe", "--model", "minilm", "--out", str(tmp_path / "p.csv")])


def test_the_command_line_shows_warnings_as_warning_lines(monkeypatch, capsys, tmp_path):
    import warnings

    def warns(args):
        warnings.warn("leakage: 3 of 3 texts also occur in the in-domain data", UserWarning, stacklevel=2)
        return 0

    before = warnings.showwarning
    monkeypatch.setattr(cli, "_cmd_probe", warns)
    monkeypatch.setattr("sys.argv", ["lnsr-viz", "probe", "--model", "minilm", "--out", str(tmp_path / "p.csv")])
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.main() == 0
    err = capsys.readouterr().err
    assert "warning: leakage: 3 of 3 texts" in err and "UserWarning" not in err and ".py:" not in err
    assert warnings.showwarning is before  # restored for whatever runs next in the process

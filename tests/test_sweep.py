"""Sweeps: config validation, grid expansion, shards that merge to the unsharded result, merge refusals, and a
selection protocol that provably reads only validation numbers."""

import pandas as pd
import pytest

from lnsr_viz.experiments.store import RunStore
from lnsr_viz.experiments.sweep import (
    expand,
    experiment_config,
    load_sweep_config,
    merge_stores,
    parse_shard,
    run_sweep,
    select_from_store,
    select_settings,
    validate_config,
)
from lnsr_viz.testing import save_tiny_setup, toy_sentences


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_setup(tmp_path_factory.mktemp("sweep"))


def _config(root, **over):
    cfg = {"model": str(root / "model"), "data": str(root / "in.csv"), "ood": [], "train_sizes": [16, 24],
           "seeds": [1, 2], "val_size": 8, "eval_size": 12, "probe": {"n": 4, "n_draws": 1},
           "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
           "methods": {"vanilla": {}, "lnsr": {"lam": [1.0, 5.0]}}}
    cfg.update(over)
    return validate_config(cfg)


def test_yaml_and_toml_configs_and_their_errors(tmp_path):
    (tmp_path / "s.yaml").write_text("train_sizes: [100]\nseeds: [1]\nmethods:\n  lnsr: {lam: [1, 10]}\n")
    cfg = load_sweep_config(tmp_path / "s.yaml")
    assert len(expand(cfg)) == 1 + 2 and cfg["train"]["epochs"] == 4
    (tmp_path / "s.toml").write_text("train_sizes = [100]\nseeds = [1, 2]\n[methods.vanilla]\n")
    assert len(expand(load_sweep_config(tmp_path / "s.toml"))) == 1 + 2
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\]"):
        validate_config({"learning_rate": 1, "train_sizes": [1], "seeds": [1], "methods": {"vanilla": {}}})
    with pytest.raises(ValueError, match="unknown method 'lnrs'"):
        validate_config({"train_sizes": [1], "seeds": [1], "methods": {"lnrs": {}}})
    with pytest.raises(ValueError, match="'seeds' must be a non-empty list"):
        validate_config({"train_sizes": [1], "seeds": [], "methods": {"vanilla": {}}})
    with pytest.raises(ValueError, match="empty parameter list"):
        validate_config({"train_sizes": [1], "seeds": [1], "methods": {"lnsr": {"lam": []}}})
    with pytest.raises(ValueError, match="'lam' parameter of LNSR"):
        validate_config({"train_sizes": [1], "seeds": [1], "methods": {"lnsr": {"lam": [-1]}}})
    with pytest.raises(ValueError, match="unknown key"):
        validate_config({"train_sizes": [1], "seeds": [1], "methods": {"vanilla": {}}, "train": {"lrate": 1}})


def test_protocol_notes_are_checked_and_never_part_of_a_run_key(tiny):
    plain = _config(tiny)
    noted = _config(tiny, protocol_notes="  The learning rate was\n chosen on vanilla's validation accuracy.  ")
    assert noted["protocol_notes"] == ["The learning rate was chosen on vanilla's validation accuracy."]
    for size in plain["train_sizes"]:  # the same experiment, so the same run keys
        assert experiment_config(plain, size) == experiment_config(noted, size)
    for bad in ([], [""], [1], {"a": "b"}):
        with pytest.raises(ValueError, match="'protocol_notes' must be a sentence or a list of sentences"):
            _config(tiny, protocol_notes=bad)


def test_grid_order_and_shards():
    cfg = validate_config({"train_sizes": [100, 500], "seeds": [1, 2, 3],
                           "methods": {"vanilla": {}, "lnsr": {"lam": [1, 10], "scale": 0.1}}})
    jobs = expand(cfg)
    assert len(jobs) == 2 * (1 + (1 + 2) * 3)
    assert jobs[0].job.method == "pretrained"
    assert jobs[4].job.name == "lnsr[lam=1,scale=0.1]" and jobs[4].train_size == 100
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/2", "0/2", "a/b", "1"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_sharded_runs_merge_to_the_unsharded_table(tiny, tmp_path):
    cfg = _config(tiny, seeds=[3])
    whole = run_sweep(cfg, results=tmp_path / "whole", progress=False, verbose=False)
    assert len(whole) == len(expand(cfg)) == 2 * (1 + 3)  # per size: the pre-trained probe + 3 settings x 1 seed
    parts = [run_sweep(cfg, results=tmp_path / f"s{i}", shard=f"{i}/2", progress=False, verbose=False)
             for i in (1, 2)]
    assert sum(len(p) for p in parts) == len(whole)
    assert merge_stores([tmp_path / "s1", tmp_path / "s2"], tmp_path / "merged") == len(whole)
    a = RunStore(tmp_path / "whole").load_table("metrics").sort_values(["run_id", "domain", "metric"])
    b = RunStore(tmp_path / "merged").load_table("metrics").sort_values(["run_id", "domain", "metric"])
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    # resuming: nothing left to train
    again = run_sweep(cfg, results=tmp_path / "merged", progress=False, verbose=False)
    assert again["cached"].all()


def test_merge_refuses_other_versions_and_other_data(tiny, tmp_path, monkeypatch):
    import lnsr_viz.experiments.store as store_mod

    cfg = _config(tiny, train_sizes=[16], seeds=[1], methods={"vanilla": {}})
    run_sweep(cfg, results=tmp_path / "a", progress=False, verbose=False)
    monkeypatch.setattr(store_mod, "_package_version", lambda: "9.9.9")
    run_sweep(cfg, results=tmp_path / "b", progress=False, verbose=False, shard="1/1")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="different lnsr_viz versions"):
        merge_stores([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    other = tmp_path / "other"
    other.mkdir()
    texts, labels = toy_sentences(80, seed=9)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(other / "in.csv", index=False)
    run_sweep(_config(tiny, data=str(other / "in.csv"), train_sizes=[16], seeds=[1], methods={"vanilla": {}}),
              results=tmp_path / "c", progress=False, verbose=False)
    with pytest.raises(ValueError, match="same data settings but different data"):
        merge_stores([tmp_path / "a", tmp_path / "c"], tmp_path / "m2")


class NoPeekingStore(RunStore):
    """A store that refuses to hand out anything but training histories."""

    def load_table(self, name):
        if name != "history":
            raise AssertionError(f"selection read the {name!r} table")
        return super().load_table(name)

    def load(self, *args, **kwargs):
        raise AssertionError("selection loaded a whole run (with its test metrics)")


def test_selection_reads_only_validation_histories(tiny, tmp_path):
    cfg = _config(tiny, train_sizes=[16], seeds=[1, 2])
    run_sweep(cfg, results=tmp_path / "s", progress=False, verbose=False)
    chosen = select_from_store(NoPeekingStore(tmp_path / "s"))
    assert set(chosen["method"]) == {"vanilla", "lnsr"}
    assert chosen.loc[chosen.method == "lnsr", "chosen"].iloc[0] in {"lnsr[lam=1.0]", "lnsr[lam=5.0]"}
    assert (chosen["n_seeds"] == 2).all()


def test_selection_rule_by_hand():
    history = pd.DataFrame({
        "method": ["lnsr"] * 8, "train_size": [100] * 8,
        "setting": ["a", "a", "a", "a", "b", "b", "b", "b"], "seed": [1, 1, 2, 2, 1, 1, 2, 2],
        "epoch": [1, 2, 1, 2, 1, 2, 1, 2], "val_accuracy": [0.9, 0.6, 0.9, 0.6, 0.5, 0.7, 0.5, 0.7]})
    last = select_settings(history)
    assert last["chosen"].iloc[0] == "b" and last["mean_val_accuracy"].iloc[0] == pytest.approx(0.7)
    best = select_settings(history, epoch="best")
    assert best["chosen"].iloc[0] == "a"


def test_ties_go_to_the_setting_the_file_lists_first_whatever_the_store_order():
    rows = []
    for name in ("b-later-in-file", "a-first-in-file", "worse"):  # stored in this order
        for seed in (1, 2):
            score = 0.5 if name == "worse" else (0.7 if seed == 1 else 0.6)
            rows.append({"method": "lnsr", "train_size": 100, "setting": name, "seed": seed, "epoch": 1,
                         "val_accuracy": score})
    history = pd.DataFrame(rows)
    chosen = select_settings(history, order=["a-first-in-file", "b-later-in-file", "worse"])
    assert chosen["chosen"].tolist() == ["a-first-in-file"]
    assert chosen["tied_with"].tolist() == ["b-later-in-file"]
    reordered = select_settings(history, order=["b-later-in-file", "a-first-in-file"])
    assert reordered["chosen"].tolist() == ["b-later-in-file"]
    no_order = select_settings(history.iloc[::-1])  # without the file's order: alphabetical, not storage order
    assert no_order["chosen"].tolist() == ["a-first-in-file"]
    untied = select_settings(history[history.setting != "b-later-in-file"])
    assert untied["tied_with"].tolist() == [""]


def test_a_sweep_may_set_the_precision_and_fp32_stays_out_of_its_train_section():
    from lnsr_viz.experiments.sweep import validate_config

    cfg = validate_config({"methods": {"vanilla": None}, "train_sizes": [16], "seeds": [1],
                           "train": {"precision": "bf16"}})
    assert cfg["train"]["precision"] == "bf16"
    plain = validate_config({"methods": {"vanilla": None}, "train_sizes": [16], "seeds": [1]})
    assert "precision" not in plain["train"]
    with pytest.raises(ValueError, match="precision"):
        validate_config({"methods": {"vanilla": None}, "train_sizes": [16], "seeds": [1],
                         "train": {"precision": "fp8"}})

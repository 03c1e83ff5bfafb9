"""Study v2's sweep files: the core is a part of the full study (identical run keys, one store), the protocol is the
step budget of every size, and the grid is the one fixed in advance."""

from pathlib import Path

import pytest

from lnsr_viz.experiments.runs import build_protocol, run_configs
from lnsr_viz.experiments.store import config_hash
from lnsr_viz.experiments.sweep import expand, experiment_config, load_sweep_config

ROOT = Path(__file__).resolve().parents[1]


def _keys(path):
    config = load_sweep_config(ROOT / path)
    keys = {}
    for size in config["train_sizes"]:
        experiment = experiment_config(config, size)
        jobs = [sj.job for sj in expand(config) if sj.train_size == size]
        for job, cfg in zip(jobs, run_configs(jobs, experiment, build_protocol(experiment)), strict=True):
            keys[(size, job.label, job.seed)] = config_hash(cfg)
    return config, keys


@pytest.mark.slow
def test_the_core_is_part_of_the_full_study():
    full_cfg, full = _keys("configs/study-v2.yaml")
    core_cfg, core = _keys("configs/study-v2-core.yaml")
    assert core_cfg["results"] == full_cfg["results"]
    assert core.items() <= full.items()  # same jobs, same run ids: the core's runs are the study's runs
    assert len(full) == 21 * 3 * 5 + 3  # 21 settings x 3 sizes x 5 seeds, and the pre-trained probe per size


def test_the_protocol_is_a_step_budget_per_size():
    config = load_sweep_config(ROOT / "configs/study-v2.yaml")
    budgets = {size: experiment_config(config, size).max_steps for size in config["train_sizes"]}
    assert budgets == {100: 100, 500: 200, 2000: 600}
    for size in config["train_sizes"]:
        experiment = experiment_config(config, size)
        assert experiment.keep_best and experiment.eval_every * 10 == experiment.max_steps
        assert "epochs" not in experiment.train_params()


# ------------------------------------------------------------------------------------------------ the write-up's parts
@pytest.fixture(scope="module")
def tiny_v2(tmp_path_factory):
    """A step-budget sweep on a tiny model: 2 sizes x (vanilla, lnsr at 2 weights) x 3 seeds, analysed (on
    fewer attribution sentences and steps than the real study, for speed: captum's per-call cost dominates here)."""

    from lnsr_viz.experiments.run_analysis import ANALYSIS_SETTINGS
    from lnsr_viz.experiments.study import study_claims
    from lnsr_viz.experiments.sweep import run_sweep
    from lnsr_viz.testing import save_tiny_setup

    root = save_tiny_setup(tmp_path_factory.mktemp("v2"), (("in", 120, 0), ("other", 40, 5)))
    config = {"model": str(root / "model"), "data": str(root / "in.csv"), "ood": [str(root / "other.csv")],
              "train_sizes": [16, 32], "seeds": [1, 2, 3], "val_size": 12, "eval_size": 16, "analysis": True,
              "train": {"batch_size": 8, "max_steps": {16: 6, 32: 9}, "eval_every": {16: 2, 32: 3},
                        "keep_best": True, "train_eval_size": 8},
              "probe": {"n": 6, "n_draws": 2}, "results": str(root / "store"),
              "methods": {"vanilla": {}, "lnsr": {"lam": [1, 10]}}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ANALYSIS_SETTINGS, "attribution_sentences", 2)
        mp.setitem(ANALYSIS_SETTINGS, "attribution_steps", 8)
        run_sweep(config, progress=False, verbose=False)
    return root, study_claims(root / "store", step_cost={"lnsr": 1.9})


@pytest.mark.slow
def test_the_study_reads_every_stored_analysis_without_a_model(tiny_v2):
    _, res = tiny_v2
    runs = res.runs
    assert len(runs) == 2 * 3 * 3
    for col in ("jacobian_fro2", "hessian_trace", "stability_ratio", "generalisation_gap", "ww_alpha"):
        assert runs[col].notna().all(), col
    assert (runs["kept_step"] <= runs["steps"]).all()
    # the kept step's validation accuracy is the best one of the run's curve (keep_best)
    best = res.curves.groupby("run_id")["val_accuracy"].max()
    assert runs.set_index("run_id")["val_accuracy"].to_dict() == pytest.approx(best.to_dict())


@pytest.mark.slow
def test_the_learning_curves_and_the_plateau_rule(tiny_v2):
    _, res = tiny_v2
    curves = res.curves
    assert set(curves.groupby("train_size")["step"].max()) == {6, 9}  # the budgets
    assert (curves.groupby("run_id")["budget"].first().isin([6, 9])).all()
    plateau = res.plateau
    assert set(plateau["verdict"]) <= {"plateau reached", "still rising"}
    row = plateau[(plateau["train_size"] == 16) & (plateau["setting"] == "vanilla")].iloc[0]
    van = curves[(curves["train_size"] == 16) & (curves["setting"] == "vanilla")]
    mean = van.groupby("step")["val_accuracy"].mean()
    assert row["early_best"] == pytest.approx(mean[mean.index <= 4].max())
    assert row["late_gain"] == pytest.approx(mean[mean.index > 4].max() - mean[mean.index <= 4].max())


@pytest.mark.slow
def test_the_write_up_states_the_protocol_and_how_it_was_chosen(tiny_v2, tmp_path):
    from lnsr_viz.viz.reports import write_study

    root, res = tiny_v2
    config = {"train": {"batch_size": 8, "max_steps": {16: 6, 32: 9}}, "protocol_notes": ["Budget raised at 32."]}
    text = write_study(root / "store", tmp_path / "s.md", config=config, result=res,
                       tables=tmp_path / "tables").read_text()
    assert "max_steps {16: 6, 32: 9}" in text
    assert "How the protocol was chosen (the sweep file's `protocol_notes`):\n\n- Budget raised at 32.\n" in text
    assert "protocol_notes" not in write_study(root / "store", tmp_path / "t.md", config={"train": {}}, result=res,
                                               tables=tmp_path / "tables").read_text()


@pytest.mark.slow
def test_the_methods_table_has_one_chosen_row_per_method_and_size(tiny_v2):
    from lnsr_viz.analysis.stats import holm_adjust

    _, res = tiny_v2
    table = res.methods
    assert table.groupby("train_size")["method"].apply(sorted).tolist() == [["lnsr", "vanilla"]] * 2
    lnsr = table[table["method"] == "lnsr"]
    chosen = res.chosen[res.chosen["method"] == "lnsr"].set_index("train_size")["chosen"]
    assert (lnsr.set_index("train_size")["setting"] == chosen).all()  # the setting chosen on validation
    assert set(table.loc[table["method"] == "lnsr", "cost_ratio"]) == {1.9}
    fam = table[(table["train_size"] == 16) & (table["method"] != "vanilla")]
    raw = fam[[f"{m}_p" for m in ("accuracy", "roc_auc", "ood_accuracy", "ood_roc_auc")]].to_numpy().ravel()
    adj = fam[[f"{m}_p_adj" for m in ("accuracy", "roc_auc", "ood_accuracy", "ood_roc_auc")]].to_numpy().ravel()
    assert adj == pytest.approx(holm_adjust(raw), nan_ok=True)


@pytest.mark.slow
def test_relations_and_ranking_are_per_size(tiny_v2):
    _, res = tiny_v2
    rel = res.relations
    assert set(rel["train_size"]) == {16, 32} and (rel["n_runs"] <= 9).all()
    ok = rel.dropna(subset=["rho"])
    assert ((ok["ci_low"] <= ok["rho"] + 1e-9) & (ok["rho"] <= ok["ci_high"] + 1e-9)).all()
    assert (rel["p_holm"].fillna(1) >= rel["p"].fillna(1) - 1e-12).all()
    assert set(res.ranking["method"]) == {"vanilla", "lnsr"}  # the methods HyPe's table shares with this sweep


def _cfg(method, size, lr, seed=1):
    return {"method": method, "seed": seed, "model": "minilm", "data": {"train_size": size, "in_domain": "movie"},
            "probe": {"n": 64}, "train": {"lr": lr, "max_steps": 100}, "analysis": None}


def test_a_store_that_mixes_protocols_is_refused_naming_the_runs():
    from lnsr_viz.experiments.study import check_one_protocol

    same = {"a1": _cfg("vanilla", 100, 5e-5), "a2": _cfg("lnsr", 100, 5e-5, 2), "b1": _cfg("vanilla", 500, 1e-4),
            "p": {"method": "pretrained", "model": "minilm"}}
    check_one_protocol(same)  # one protocol per size (sizes may differ from one another)
    mixed = {**same, "odd": _cfg("lnsr", 100, 1e-4)}
    with pytest.raises(ValueError, match=r"mixes 2 protocols at 100 training examples \(they differ in train\.lr\)"
                                         r": 2 run\(s\) such as a1, a2; 1 run\(s\) such as odd"):
        check_one_protocol(mixed)

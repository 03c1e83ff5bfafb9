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
    assert budgets == {100: 100, 500: 200, 2000: 300}
    for size in config["train_sizes"]:
        experiment = experiment_config(config, size)
        assert experiment.keep_best and experiment.eval_every * 10 == experiment.max_steps
        assert "epochs" not in experiment.train_params()

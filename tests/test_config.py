"""The experiment configuration: one source of defaults, validated on construction with compare's messages, replace /
to_dict / from_dict, and run keys that stay those of the committed run stores (results/study, results/qa*)."""

import dataclasses
import inspect
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from lnsr_viz import cli
from lnsr_viz.data.text import OOD_DOMAINS
from lnsr_viz.experiments import runs
from lnsr_viz.experiments.config import ExperimentConfig
from lnsr_viz.experiments.runs import Job, build_protocol, compare, make_protocol, run_configs
from lnsr_viz.experiments.store import RunStore, config_hash
from lnsr_viz.experiments.study import load_study
from lnsr_viz.experiments.sweep import expand, experiment_config, load_sweep_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
STORES = ("study", "qa", "qa-2epochs", "qa-cpu")


# ----------------------------------------------------------------------------------------------------------------
# one source of defaults
# ----------------------------------------------------------------------------------------------------------------
def test_the_defaults_live_in_the_dataclass_and_everyone_reads_them():
    cfg = ExperimentConfig()
    assert cfg.ood_data() is OOD_DOMAINS and cfg.in_domain_data() == "movie"
    assert cfg.replace(task="qa").in_domain_data() == "squad" and cfg.replace(task="qa").ood_data() == ()
    assert inspect.signature(make_protocol).parameters["ood"].default is OOD_DOMAINS
    # the CLI's compare and demo options are the dataclass's defaults
    parser = cli.build_parser()
    assert cli._experiment(parser.parse_args(["compare"])) == cfg
    demo = parser.parse_args(["demo"])
    assert cli._experiment(demo) == ExperimentConfig.demo() and demo.results == "results/demo"
    # the sweep files' defaults
    sweep = validate_config({"train_sizes": [100], "seeds": [1], "methods": {"vanilla": {}}})
    assert sweep["train"] == cfg.train_params() and list(sweep["train"]) == list(cfg.train_params())
    assert sweep["probe"] == {"n": 64, "n_draws": 4, "noise": "gaussian", "scale": 0.05} == cfg.probe_params()
    assert sweep["ood"] == list(OOD_DOMAINS) and sweep["eval_size"] == cfg.eval_size == 600
    # the demo's keywords, for callers that spread them into compare
    assert runs.DEMO_SETTINGS["train_size"] == 500 and runs.DEMO_SETTINGS["methods"] == ("vanilla", "lnsr")


def test_replace_to_dict_and_from_dict():
    cfg = ExperimentConfig(methods=["vanilla", "lnsr"], seeds=[1, 2], method_params={"lnsr": {"lam": 2.0}},
                           ood={"other": "x.csv"}, probe_n=8, epochs=2, results=Path("somewhere"))
    assert cfg.methods == ("vanilla", "lnsr") and cfg.seeds == (1, 2)
    changed = cfg.replace(lr=1e-4, train_size=100)
    assert changed.lr == 1e-4 and changed.train_size == 100 and cfg.lr == 5e-5  # a copy; the original is unchanged
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    d = cfg.to_dict()
    assert d["train"]["epochs"] == 2 and d["probe"]["n"] == 8 and d["results"] == "somewhere"
    assert "probe_n" not in d and "epochs" not in d
    json.dumps(d)  # plain values
    assert ExperimentConfig.from_dict(d).replace(results=Path("somewhere")) == cfg
    assert ExperimentConfig.from_dict({"probe_n": 8, "epochs": 2}) == ExperimentConfig.from_dict(
        {"probe": {"n": 8}, "train": {"epochs": 2}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['draws'\] under 'probe'; allowed: \['n', 'n_draws'"):
        ExperimentConfig.from_dict({"probe": {"draws": 2}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\]; allowed keys are"):
        ExperimentConfig.from_dict({"learning_rate": 1})


def test_unknown_names_are_refused_listing_the_valid_ones(tmp_path):
    with pytest.raises(TypeError, match=r"ExperimentConfig.replace got unknown setting\(s\) \['n_epochs'\]; valid "
                                        r"settings are \[.*'epochs'"):
        ExperimentConfig().replace(n_epochs=3)
    with pytest.raises(TypeError, match=r"compare got unknown setting\(s\) \['trainsize'\]; valid settings are "
                                        r"\[.*'device'.*'train_size'"):
        compare(["vanilla"], [1], trainsize=10, results=tmp_path / "s")
    assert not (tmp_path / "s").exists()  # refused before any work


@pytest.mark.parametrize(("change", "message"), [
    ({"methods": "lnsr"}, r"methods must be a list of method names"),
    ({"methods": []}, "methods is empty"),
    ({"methods": ["vanilla", "lnrs"]}, "Unknown method 'lnrs'"),
    ({"method_params": {"lnsr": {"lam": -1}}}, "'lam' parameter of LNSR"),
    ({"method_params": {"l2sp": {}}}, r"method_params names methods that are not run: \['l2sp'\]"),
    ({"seeds": []}, "seeds is empty"),
    ({"seeds": [1, 1]}, "seeds must be distinct"),
    ({"seeds": [-1]}, "'seed' parameter of compare"),
    ({"train_size": 0}, "'train_size' parameter of compare"),
    ({"eval_size": 0}, "'eval_size' parameter of compare"),
    ({"probe_n": 0}, "'probe_n' parameter of compare"),
    ({"lr": 0.0}, "'lr' parameter of FineTuner"),
    ({"epochs": 0}, "'epochs' parameter of FineTuner"),
    ({"task": "ner"}, "task must be 'classification' or 'qa'"),
    ({"probe_draws": 0}, "'n_draws' parameter of StabilityProbe"),
    ({"probe_noise": "pink"}, "'noise' parameter of StabilityProbe"),
])
def test_every_refusal_happens_on_construction(change, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig(**change)
    with pytest.raises(ValueError, match=message):
        ExperimentConfig().replace(**change)


def test_a_sweep_refuses_what_compare_refuses_naming_its_file():
    with pytest.raises(ValueError, match=r"s.yaml: seeds must be distinct"):
        validate_config({"train_sizes": [10], "seeds": [1, 1], "methods": {"vanilla": {}}}, source="s.yaml")
    with pytest.raises(ValueError, match=r"s.yaml: .*'lr' parameter of FineTuner"):
        validate_config({"train_sizes": [10], "seeds": [1], "methods": {"vanilla": {}}, "train": {"lr": 0}},
                        source="s.yaml")
    with pytest.raises(ValueError, match=r"s.yaml: unknown key\(s\) \['draws'\] under 'probe'"):
        validate_config({"train_sizes": [10], "seeds": [1], "methods": {"vanilla": {}}, "probe": {"draws": 1}},
                        source="s.yaml")


# ----------------------------------------------------------------------------------------------------------------
# run keys: the committed stores keep theirs
# ----------------------------------------------------------------------------------------------------------------
def _stored(store: str) -> list[dict]:
    paths = sorted((ROOT / "results" / store / "runs").glob("*/config.json"))
    assert paths, f"results/{store} has no runs"
    return [json.loads(p.read_text()) for p in paths]


@pytest.mark.parametrize("store", STORES)
def test_every_committed_run_keeps_its_key_through_the_config(store):
    for record in _stored(store):
        stored = record["config"]
        assert config_hash(stored) == record["run_id"]
        data, probe = stored["data"], stored["probe"]
        max_length = stored.get("train", {}).get("max_length", probe["max_length"])
        cfg = ExperimentConfig.from_dict({
            "model": stored["model"], "task": stored["kind"], "max_length": max_length,
            **{k: data[k] for k in ("train_size", "val_size", "eval_size", "split_seed", "neutral_band")},
            "train": stored.get("train", {}), "probe": {k: probe[k] for k in ("n", "n_draws", "noise", "scale")}})
        protocol = SimpleNamespace(in_domain=data["in_domain"], evaluation=dict.fromkeys(data["evaluation"]),
                                   fingerprint=data["fingerprint"], n_probe_examples=probe["n"], task=stored["kind"])
        job = Job(stored["method"], stored.get("method_params", {}), stored["seed"], stored.get("label"))
        rebuilt = run_configs([job], cfg, protocol)[0]
        assert rebuilt == stored and json.dumps(rebuilt) == json.dumps(stored)  # same keys in the same order
        assert config_hash(rebuilt) == record["run_id"]


def test_the_study_file_expands_to_exactly_the_committed_runs():
    config = load_sweep_config(ROOT / "configs" / "study.yaml")
    jobs = expand(config)
    ids = []
    for size in config["train_sizes"]:
        experiment = experiment_config(config, size)
        mine = [j.job for j in jobs if j.train_size == size]
        ids += [config_hash(c) for c in run_configs(mine, experiment, build_protocol(experiment))]
    stored = {p.name for p in (ROOT / "results" / "study" / "runs").iterdir() if p.is_dir()}
    assert len(ids) == len(set(ids)) == len(stored) == 82
    assert set(ids) == stored


def _same_table(got: pd.DataFrame, path: Path, drop: tuple[str, ...] = ()) -> None:
    want = pd.read_csv(path)
    got = pd.read_csv(pd.io.common.StringIO(got.to_csv(index=False)))  # the CSV round trip the CLI writes
    got = got.drop(columns=[c for c in drop if c in got and c not in want])
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)


@pytest.mark.parametrize(("store", "settings"), [
    ("qa-cpu", {"train_size": 500, "epochs": 2, "lr": 1e-4, "seeds": [1, 2, 3]}),
    ("qa", {"train_size": 2000, "epochs": 4, "lr": 1e-4, "seeds": [1, 2, 3]}),
    ("qa-2epochs", {"train_size": 2000, "epochs": 2, "lr": 5e-5, "seeds": [1, 2, 3, 4, 5]}),
])
def test_compare_on_the_committed_qa_stores_gives_their_tables(tmp_path, store, settings):
    shutil.copytree(ROOT / "results" / store, tmp_path / store)
    result = compare(["vanilla", "lnsr"], task="qa", qa_group="science", val_size=300, eval_size=500,
                     max_length=192, results=tmp_path / store, progress=False, verbose=False, **settings)
    assert result.timings["trained_runs"] == 0 and result.timings["cached_runs"] == 1 + 2 * len(settings["seeds"])
    for name in ("metrics", "history", "profile", "summary", "paired", "drift"):
        # results/qa's tables were written before the runs table had its collapse flag
        _same_table(getattr(result, name), ROOT / "results" / store / "tables" / f"{name}.csv", drop=("collapsed",))


def test_the_committed_study_gives_its_tables(tmp_path):
    shutil.copytree(ROOT / "results" / "study", tmp_path / "study")
    res = load_study(tmp_path / "study", ROOT / "configs" / "study.yaml")
    for name in ("runs", "chosen", "claims", "settings", "balance", "paired"):
        _same_table(getattr(res, name), ROOT / "results" / "study" / "tables" / f"{name}.csv")
    # compare finds the study's vanilla runs (the same keys) and trains nothing
    store = RunStore(tmp_path / "study", read_only=True)
    for size in (100, 500):
        result = compare(["vanilla"], [1, 2, 3, 4, 5], train_size=size, results=tmp_path / "study",
                         progress=False, verbose=False)
        assert result.timings["trained_runs"] == 0
        expected = res.runs[(res.runs["method"] == "vanilla") & (res.runs["train_size"] == size)]
        assert set(result.runs["run_id"][result.runs["method"] == "vanilla"]) == set(expected["run_id"])
        stored = pd.concat([store.load(i).metrics.assign(run_id=i) for i in expected["run_id"]])
        got = result.metrics[result.metrics["method"] == "vanilla"]
        assert len(got) == len(stored) and got["value"].sum() == pytest.approx(stored["value"].sum(), rel=1e-12)


def test_probe_n_is_the_one_name_and_the_old_one_is_refused_clearly():
    from lnsr_viz.experiments.diagnose import diagnose

    assert "probe_n" in inspect.signature(diagnose).parameters and "probe_n" in ExperimentConfig.field_names()
    with pytest.raises(TypeError, match=r"n_probe was renamed probe_n .*pass probe_n=4"):
        diagnose("no-such-checkpoint", n_probe=4)
    parser = cli.build_parser()
    assert parser.parse_args(["diagnose", "--model", "m", "--data", "d.csv", "--probe-n", "8"]).probe_n == 8
    assert parser.parse_args(["diagnose", "--model", "m", "--data", "d.csv", "--n-probe", "8"]).probe_n == 8


def test_the_probe_key_comes_from_the_probes_own_parameters():
    from lnsr_viz.experiments.runs import probe_key

    cfg = ExperimentConfig(probe_draws=2, probe_noise="in_manifold", probe_scale=0.1, max_length=32)
    prober = cfg.make_probe()
    expected = {"n": 8, "n_draws": 2, "noise": "in_manifold", "scale": 0.1, "scale_kind": "relative",
                "injection_layers": "all", "max_length": 32}
    assert probe_key(prober, 8) == expected and list(probe_key(prober, 8)) == list(expected)

    class WithParams:  # a probe that reports its constructor's parameters (scikit-learn's get_params)
        def get_params(self):
            return {"noise": "in_manifold", "scale": 0.1, "scale_kind": "relative", "injection_layers": None,
                    "n_draws": 2, "batch_size": 32, "max_rows": 256, "max_length": 32, "seed": 0,
                    "strategy": "replay", "n_components": 16, "progress": False}

    assert probe_key(WithParams(), 8) == expected

"""Parameters read off the constructors: every method, noise and probe round-trips through get_params and the run key.

A parameter that a constructor takes but ``get_params()`` forgets would silently drop out of the run store's hash
(two different runs would share a key); these tests fail when that happens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lnsr_viz.core.noise import GaussianNoise, InManifoldNoise
from lnsr_viz.core.probe import StabilityProbe
from lnsr_viz.experiments.store import config_hash
from lnsr_viz.methods import METHODS, get_method
from lnsr_viz.utils.params import GetParams, constructor_params

ROOT = Path(__file__).resolve().parents[1]


def _changed(value):
    """A different valid-looking value of the same simple type (None when there is no obvious one)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value else 0.25
    return None


def _key(method) -> str:
    return config_hash({"method": method.name, "method_params": method.params()})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_round_trips_through_get_params(name):
    m = get_method(name)
    params = m.get_params()
    assert tuple(params) == constructor_params(type(m)), "get_params must list every __init__ parameter, in order"
    late = type(m).late_defaults  # parameters added after runs were stored: out of the key at their defaults
    assert m.params() == {k: v for k, v in params.items() if not (k in late and v == late[k])}
    again = get_method(name, **params)
    assert again.get_params() == params
    assert _key(again) == _key(m)
    json.dumps(params)  # JSON-serialisable: it is hashed into the run key


@pytest.mark.parametrize("name", sorted(METHODS))
def test_changing_any_simple_parameter_changes_the_run_key(name):
    base = get_method(name)
    changed = 0
    for param, value in base.get_params().items():
        new = _changed(value)
        if new is None or param == "seed" and value is None:
            continue
        try:
            other = get_method(name, **{param: new})
        except ValueError:  # out of range for this parameter (e.g. a probability of 1.0 * 0.5 is fine, 2 is not)
            continue
        assert other.get_params()[param] == new
        assert _key(other) != _key(base), f"{name}.{param} does not reach the run key"
        changed += 1
    assert changed or not base.get_params(), f"no parameter of {name} could be varied"


def test_a_parameter_not_stored_under_its_name_is_refused():
    class Forgetful(GetParams):
        def __init__(self, alpha: float = 1.0, beta: int = 2) -> None:
            self.alpha = alpha
            self._beta = beta

    with pytest.raises(AttributeError, match="'beta'"):
        Forgetful().get_params()


def test_combinations_key_each_component():
    combo = get_method("lnsr+mixout", lam=2.0, p=0.3)
    params = combo.get_params()
    assert set(params) == {"lnsr", "mixout"}
    assert params["lnsr"]["lam"] == 2.0 and params["mixout"]["p"] == 0.3
    assert get_method("lnsr+mixout", lnsr=params["lnsr"], mixout=params["mixout"]).get_params() == params


def test_committed_lnsr_run_has_exactly_the_constructor_parameters():
    # A known answer: an LNSR run of the committed study stores these method parameters in its key.
    record = json.loads((ROOT / "results/study/runs/027fb239b40b/config.json").read_text())
    stored = record["config"]["method_params"]
    assert get_method("lnsr", lam=10.0, scale=0.1, scale_kind="absolute").params() == stored


@pytest.mark.parametrize("cls", [GaussianNoise, InManifoldNoise])
def test_noise_round_trips(cls):
    noise = cls(scale=0.2, scale_kind="absolute")
    params = noise.get_params()
    assert tuple(params) == constructor_params(cls)
    assert cls(**params).get_params() == params


def test_probe_round_trips_and_reads_its_noise_back():
    probe = StabilityProbe("in_manifold", scale=0.1, n_draws=2, n_components=4, injection_layers=[0, 1], seed=3)
    params = probe.get_params()
    assert set(params) == set(constructor_params(StabilityProbe))
    assert params["noise"] == "in_manifold" and params["scale"] == 0.1 and params["n_components"] == 4
    assert StabilityProbe(**params).get_params() == params
    assert StabilityProbe().get_params()["n_components"] == 16


def test_every_boolean_parameter_refuses_a_string():
    import inspect

    checked = 0
    for name, cls in METHODS.items():
        for param in inspect.signature(cls.__init__).parameters.values():
            if isinstance(param.default, bool):
                with pytest.raises(ValueError, match=rf"'{param.name}' parameter of .* must be True or False"):
                    get_method(name, **{param.name: "False"})
                assert get_method(name, **{param.name: 0}).get_params()[param.name] is False
                checked += 1
    assert checked >= 6  # LNSR relative / detach_clean, Mixout x2, NoisyTune, SMART bregman

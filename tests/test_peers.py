"""The public peers of the benchmark (benchmarks/bench_peers.py) agree with lnsr_viz's numbers on a tiny model.

The hooks probe and the jacrev Jacobian need no extra package and always run; the nnsight, torch-cka and PyHessian
tests are skipped, with the reason, only when their peer is not importable (``pip install '.[bench]'``). Nothing
here is timed: the time ratios are the benchmark's.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lnsr_viz.analysis.drift import linear_cka
from lnsr_viz.analysis.theory import hessian_trace, jacobian_norm
from lnsr_viz.core.inputs import tokenize
from lnsr_viz.core.probe import StabilityProbe
from lnsr_viz.testing import tiny_model, toy_sentences

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench_peers():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_peers", BENCH / "bench_peers.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


peers = _bench_peers()


def _skip_unless(peer: str) -> None:
    why = peers.peer_missing(peer)
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model("bert", n_layers=3, seed=0)
    texts, labels = toy_sentences(6, seed=0)
    inputs = tokenize(tok, texts, max_length=32, model=model)
    assert not inputs["attention_mask"].bool().all(), "the batch must hold padding"
    return model, {**inputs}, torch.as_tensor(labels)


def _probe(n: int) -> StabilityProbe:
    return StabilityProbe(n_draws=3, batch_size=n, max_rows=3 * n, progress=False, seed=7)


def test_the_hooks_probe_gives_the_probes_full_profile(tiny):
    model, inputs, _ = tiny
    probe = _probe(6)
    ours = peers.ours_profile(model, inputs, probe)
    theirs = peers.hooks_profile(model, inputs, probe)
    agreement = peers.profile_agreement(ours, theirs)
    assert agreement["values"] == 2 * 6 * sum(range(1, 5))  # 2 metrics x 6 sentences x (k, l >= k) pairs
    assert agreement["max_rel_diff"] < 1e-5, agreement


def test_the_nnsight_probe_gives_the_probes_full_profile(tiny):
    _skip_unless("nnsight")
    model, inputs, _ = tiny
    probe = _probe(6)
    agreement = peers.profile_agreement(peers.ours_profile(model, inputs, probe),
                                        peers.nnsight_profile(model, inputs, probe))
    assert agreement["max_rel_diff"] < 1e-5, agreement
    assert all(p.requires_grad for p in model.parameters())  # the peer gives the flags back


def test_debiased_cka_equals_torch_cka():
    _skip_unless("torch-cka")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 12, generator=gen)
    for y in (x @ torch.randn(12, 7, generator=gen) + 0.5 * torch.randn(60, 7, generator=gen),
              torch.randn(60, 9, generator=gen)):
        assert peers.torch_cka_value(x, y) == pytest.approx(linear_cka(x, y, debiased=True), abs=1e-5)


def test_the_exact_head_trace_is_the_trace_of_the_full_head_hessian(tiny):
    model, inputs, labels = tiny
    labelled = {**inputs, "labels": labels}
    params = dict(model.classifier.named_parameters())

    def loss(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {"classifier.weight": w, "classifier.bias": b}, (),
                                          labelled).loss

    model.eval()
    hw, hb = torch.func.hessian(loss, argnums=(0, 1))(params["weight"], params["bias"])
    exact = float(hw[0].reshape(params["weight"].numel(), -1).diagonal().sum() + hb[1].diagonal().sum())
    assert peers.exact_head_trace(model, labelled) == pytest.approx(exact, rel=1e-5)


def test_our_hessian_trace_and_pyhessians_agree_with_the_exact_trace(tiny):
    _skip_unless("pyhessian")
    model, inputs, labels = tiny
    labelled = {**inputs, "labels": labels}
    exact = peers.exact_head_trace(model, labelled)
    ours = hessian_trace(model, labelled, params="classifier", n_probes=400, batch_size=6)
    theirs, se = peers.pyhessian_trace(model, labelled, n_probes=400, seed=0)
    assert abs(ours.trace - exact) < 5 * ours.se
    assert abs(theirs - exact) < 5 * se
    assert abs(ours.trace - theirs) < 5 * float(np.hypot(ours.se, se))
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


def test_our_jacobian_norm_agrees_with_the_exact_jacrev_value(tiny):
    model, inputs, _ = tiny
    exact = peers.jacrev_fro2(model, inputs, layer=1)
    est = jacobian_norm(model, inputs, layer=1, n_probes=256, batch_size=6, max_rows=256 * 6)
    assert est.per_example.shape == exact.shape
    assert abs(est.fro2 - exact.mean()) < 5 * est.se
    assert est.fro2 == pytest.approx(exact.mean(), rel=0.05)


def test_a_missing_peer_is_named_with_its_install_command(monkeypatch):
    monkeypatch.setitem(peers.PEERS, "nnsight", ("no_such_module_xyz", "nnsight==0.8.1"))
    why = peers.peer_missing("nnsight")
    assert why.startswith("peer nnsight not installed: pip install nnsight==0.8.1")

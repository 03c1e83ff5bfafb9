"""Benchmark: every lnsr_viz measurement beside its public peer, in one run on the same inputs.

What a user would otherwise use, and what is compared (each pair on the same model, sentences and noise draws):

* the stability probe (:class:`lnsr_viz.core.probe.StabilityProbe`, full profile k = 0..L) against
  - **hooks**: the same probe written with plain PyTorch forward hooks, as a user would (one full forward pass per
    injection layer and draw, a hook adding the noise at layer k, hooks recording layers k..L);
  - **nnsight** (``nnsight.NNsight``): one ``trace`` per injection layer and draw, an intervention at layer k
    (``envoy.output[:] += noise``) and ``.save()`` of layers k..L;
  the noise is the probe's own (same injector, same seeded generator), so the numbers must agree to float
  round-off;
* debiased linear CKA (:func:`lnsr_viz.analysis.drift.linear_cka`, ``debiased=True``) against **torch-cka**
  (``torch_cka.CKA`` with one batch holding every example: its unbiased HSIC is the same estimator), on mean-pooled
  MiniLM representations of two layers and on ``--cka-n`` random features;
* the Hessian trace (:func:`lnsr_viz.analysis.theory.hessian_trace`) against **PyHessian**
  (``pyhessian.hessian(...).trace``), both Hutchinson estimates over the classifier head, beside the exact trace
  (closed form of the softmax cross-entropy Hessian of a linear head); they agree within their standard errors;
* the Jacobian norm (:func:`lnsr_viz.analysis.theory.jacobian_norm`, Hutchinson) against the exact per-token
  ``||J||_F^2`` from **torch.func.jacrev** on a tiny BERT (the full Jacobian of h_L with respect to h_k, restricted to
  real tokens); they agree within the estimate's standard error.

Peers are benchmark-only dependencies (``pip install '.[bench]'``). A peer that is missing or fails is reported
("peer X not installed: pip install ...") and the rest goes on. Results: printed as time ratios (ours / peer) with
the agreement, and written to ``--json`` (``make bench``: ``benchmarks/results/peers.json``). Never a test;
``tests/test_peers.py`` checks the agreement on a tiny model without timing anything.

Run: ``python benchmarks/bench_peers.py [--n 32] [--draws 4] [--reps 3] [--cka-n 2000] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # torch-cka draws a progress bar per compare()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402  (benchmarks/machine.py)

#: peer -> (import name, pip requirement): what `pip install '.[bench]'` adds.
PEERS: dict[str, tuple[str, str]] = {
    "nnsight": ("nnsight", "nnsight==0.8.1"),
    "torch-cka": ("torch_cka", "torch-cka==0.21"),
    "pyhessian": ("pyhessian", "pyhessian==0.1"),
}


def peer_missing(peer: str) -> str | None:
    """None when ``peer`` imports, else why not (with the pip command that installs it)."""
    module, requirement = PEERS[peer]
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - an ImportError, or a peer that breaks at import time
        return f"peer {peer} not installed: pip install {requirement} (or pip install '.[bench]'); {err}"
    return None


def peer_version(peer: str) -> str:
    """The installed distribution's version, or 'missing'."""
    try:
        return importlib.metadata.version(PEERS[peer][1].split("==")[0])
    except importlib.metadata.PackageNotFoundError:
        return "missing"


# ------------------------------------------------------------------------------------------------------------------
# stability probe peers: what a user of forward hooks or of nnsight would write


def _first(output: Any) -> torch.Tensor:
    """The hidden state in a module's output (a tensor, or a tuple whose first element is it)."""
    return output if torch.is_tensor(output) else output[0]


def _layer_modules(model: nn.Module) -> list[nn.Module]:
    """Layer 0 (embedding output) and layers 1..L (block outputs) of a BERT-style model, by attribute path."""
    base = getattr(model, model.base_model_prefix)
    return [base.embeddings, *base.encoder.layer]


def probe_noise(probe: Any, hidden_k: torch.Tensor, mask: torch.Tensor, k: int, chunk: int = 0) -> torch.Tensor:
    """The probe's own noise draws at layer ``k`` (draw-major, shape (draws * batch, seq, dim)).

    The same injector with the same seeded generator as :meth:`StabilityProbe._probe_batch`, so a peer sees
    exactly the noise the probe saw (this needs ``max_rows >= n_draws * batch``, one stacked draw per layer).
    """
    return probe.injector.inject_draws(hidden_k, mask, probe.n_draws, generator=probe.noise_generator(chunk, k))


def _changes(noisy: Sequence[torch.Tensor], clean: Sequence[torch.Tensor], mask: torch.Tensor
             ) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean over real tokens of ||h~ - h|| and ||h~ - h|| / ||h||, one row per layer."""
    maskf = mask.to(torch.float64)
    n_tok = maskf.sum(dim=1).clamp_min(1)
    l2, rel = [], []
    for h_noisy, h in zip(noisy, clean):
        diff = (h_noisy - h).norm(dim=-1).to(torch.float64)
        norm = h.norm(dim=-1).to(torch.float64).clamp_min(1e-12)
        l2.append(((diff * maskf).sum(dim=1) / n_tok).numpy())
        rel.append(((diff / norm * maskf).sum(dim=1) / n_tok).numpy())
    return np.stack(l2), np.stack(rel)


def _peer_profile(run_draw: Callable[[int, torch.Tensor], list[torch.Tensor]], clean: Sequence[torch.Tensor],
                  mask: torch.Tensor, probe: Any) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """{(k, l): (change_l2, change_rel) per example}, from ``run_draw(k, noise) -> [h~_k, ..., h~_L]``."""
    batch = mask.shape[0]
    out: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for k in range(len(clean)):
        noise = probe_noise(probe, clean[k], mask, k)
        sum_l2 = sum_rel = 0.0
        for d in range(probe.n_draws):
            noisy = run_draw(k, noise[d * batch:(d + 1) * batch])
            l2, rel = _changes(noisy, clean[k:], mask)
            sum_l2, sum_rel = sum_l2 + l2, sum_rel + rel
        for i in range(len(clean) - k):
            out[(k, k + i)] = (sum_l2[i] / probe.n_draws, sum_rel[i] / probe.n_draws)
    return out


def hooks_profile(model: nn.Module, inputs: Mapping[str, torch.Tensor], probe: Any
                  ) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """The full stability profile with plain forward hooks: one forward pass per injection layer and draw."""
    layers = _layer_modules(model)
    mask = inputs["attention_mask"].bool()
    model.eval()
    with torch.no_grad():
        clean = list(model(**inputs, output_hidden_states=True).hidden_states)

        def run_draw(k: int, e: torch.Tensor) -> list[torch.Tensor]:
            seen: dict[int, torch.Tensor] = {}

            def add_noise(module: nn.Module, args: Any, output: Any) -> Any:
                if torch.is_tensor(output):
                    return output + e
                return (output[0] + e, *output[1:])

            def record(i: int) -> Callable[..., None]:
                def hook(module: nn.Module, args: Any, output: Any) -> None:
                    seen[i] = _first(output)
                return hook

            handles = [layers[k].register_forward_hook(add_noise)]
            handles += [layers[i].register_forward_hook(record(i)) for i in range(k, len(layers))]
            try:
                model(**inputs)
            finally:
                for h in handles:
                    h.remove()
            return [seen[i] for i in range(k, len(layers))]

        return _peer_profile(run_draw, clean, mask, probe)


def nnsight_profile(model: nn.Module, inputs: Mapping[str, torch.Tensor], probe: Any
                    ) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """The full stability profile with nnsight: one ``trace`` per injection layer and draw, intervening at layer k."""
    from nnsight import NNsight

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BERT blocks have a submodule named `output`; nnsight warns about it
        net = NNsight(model)
        base = getattr(net, model.base_model_prefix)
        envoys = [base.embeddings, *[base.encoder.layer[i] for i in range(len(_layer_modules(model)) - 1)]]
    mask = inputs["attention_mask"].bool()
    model.eval()
    grad_flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)  # nnsight runs the model outside the caller's no_grad: no autograd graphs
    try:
        clean: list[torch.Tensor] = []
        with net.trace(**inputs):
            for envoy in envoys:
                clean.append(_first(envoy.output).save())

        def run_draw(k: int, e: torch.Tensor) -> list[torch.Tensor]:
            saved: list[torch.Tensor] = []
            with net.trace(**inputs):
                _first(envoys[k].output)[:] += e
                for envoy in envoys[k:]:
                    saved.append(_first(envoy.output).save())
            return saved

        return _peer_profile(run_draw, [c.clone() for c in clean], mask, probe)
    finally:
        for p, flag in zip(model.parameters(), grad_flags):
            p.requires_grad_(flag)


def ours_profile(model: nn.Module, inputs: Mapping[str, torch.Tensor], probe: Any
                 ) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """The probe's per-example profile in the peers' shape."""
    probe.run(model, inputs)
    out: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for (k, layer), rows in probe.per_example_.groupby(["injection_layer", "layer"]):
        rows = rows.sort_values("example")
        out[(int(k), int(layer))] = (rows["change_l2"].to_numpy(), rows["change_rel"].to_numpy())
    return out


def profile_agreement(ours: Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray]],
                      peer: Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Largest absolute and relative difference over every (k, l, example) of both metrics."""
    if set(ours) != set(peer):
        raise ValueError(f"the profiles cover different (k, l): {sorted(set(ours) ^ set(peer))}")
    a = np.concatenate([np.concatenate(ours[key]) for key in sorted(ours)])
    b = np.concatenate([np.concatenate(peer[key]) for key in sorted(ours)])
    return {"max_abs_diff": float(np.max(np.abs(a - b))),
            "max_rel_diff": float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))), "values": int(a.size)}


# ------------------------------------------------------------------------------------------------------------------
# CKA: torch-cka on the same feature matrices


class _Lookup(nn.Module):
    """A "layer" whose output for a batch of example indices is their rows of a fixed feature matrix."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("features", features)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.features[index]


def torch_cka_value(x: torch.Tensor, y: torch.Tensor) -> float:
    """torch-cka's CKA between feature matrices ``x`` and ``y`` (one batch holding all n examples)."""
    from torch.utils.data import DataLoader, TensorDataset
    from torch_cka import CKA

    loader = DataLoader(TensorDataset(torch.arange(x.shape[0])), batch_size=x.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cka = CKA(nn.Sequential(_Lookup(x.float())), nn.Sequential(_Lookup(y.float())), model1_name="x",
                  model2_name="y", model1_layers=["0"], model2_layers=["0"], device="cpu")
        with torch.no_grad():
            cka.compare(loader, loader)
    return float(cka.export()["CKA"][0, 0])


# ------------------------------------------------------------------------------------------------------------------
# Hessian trace: PyHessian over the classifier head, and the exact trace


class _LogitsOf(nn.Module):
    """``input_ids -> logits`` with a fixed attention mask: the ``model(inputs)`` PyHessian calls."""

    def __init__(self, model: nn.Module, attention_mask: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.attention_mask = attention_mask

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=self.attention_mask).logits


def _only_head_trainable(model: nn.Module, head: str) -> list[tuple[nn.Parameter, bool]]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(head + "."))
    return flags


def pyhessian_trace(model: nn.Module, inputs: Mapping[str, torch.Tensor], *, head: str = "classifier",
                    n_probes: int = 64, seed: int = 0) -> tuple[float, float]:
    """PyHessian's Hutchinson trace of the mean cross-entropy's Hessian over the ``head`` parameters: (mean, se)."""
    from pyhessian import hessian

    flags = _only_head_trainable(model, head)
    try:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # PyHessian draws its Rademacher probes from the global generator
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyHessian uses backward(create_graph=True); torch warns about it
            comp = hessian(_LogitsOf(model, inputs["attention_mask"]), nn.CrossEntropyLoss(),
                           data=(inputs["input_ids"], inputs["labels"]), cuda=False)
        samples = comp.trace(maxIter=n_probes, tol=0.0)  # tol=0: always n_probes probes
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in flags:
            p.requires_grad_(flag)
    return float(np.mean(samples)), float(np.std(samples, ddof=1) / math.sqrt(len(samples)))


def exact_head_trace(model: nn.Module, inputs: Mapping[str, torch.Tensor], *, head: str = "classifier") -> float:
    """Exact trace of the mean cross-entropy's Hessian over a linear head ``W f + b`` (eval mode).

    For one example with softmax p and head input f: tr(H_W) = ||f||^2 (1 - sum p^2), tr(H_b) = 1 - sum p^2.
    """
    module = model.get_submodule(head)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        model.eval()
        with torch.no_grad():
            logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.to(torch.float64)
    finally:
        handle.remove()
    p = logits.softmax(dim=-1)
    curvature = 1 - p.pow(2).sum(dim=-1)
    f2 = seen[0].to(torch.float64).pow(2).sum(dim=-1)
    return float(((f2 + (1.0 if module.bias is not None else 0.0)) * curvature).mean())


# ------------------------------------------------------------------------------------------------------------------
# Jacobian norm: the exact per-token ||J||_F^2 from torch.func.jacrev


def jacrev_fro2(model: nn.Module, inputs: Mapping[str, torch.Tensor], *, layer: int = 0,
                stop: int | None = None) -> np.ndarray:
    """Exact per-example ``||M J P||_F^2 / T`` of h_stop with respect to h_layer (real tokens only), by jacrev.

    As a user would: a forward hook replaces layer ``layer``'s output by the differentiated input, another reads
    layer ``stop``; :func:`torch.func.jacrev` gives the whole (seq x dim) x (seq x dim) Jacobian per example.
    """
    layers = _layer_modules(model)
    stop = len(layers) - 1 if stop is None else stop
    model.eval()
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        clean = model(**{k: v for k, v in inputs.items() if k != "labels"}, output_hidden_states=True).hidden_states
    out = []
    for i in range(mask.shape[0]):
        one = {"input_ids": inputs["input_ids"][i:i + 1], "attention_mask": inputs["attention_mask"][i:i + 1]}

        def f(x: torch.Tensor, one: dict[str, torch.Tensor] = one) -> torch.Tensor:
            seen: list[torch.Tensor] = []
            h1 = layers[layer].register_forward_hook(
                lambda m, a, o: x if torch.is_tensor(o) else (x, *o[1:]))
            h2 = layers[stop].register_forward_hook(lambda m, a, o: seen.append(_first(o)))
            try:
                model(**one)
            finally:
                h1.remove()
                h2.remove()
            return seen[0]

        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            jac = torch.func.jacrev(f)(clean[layer][i:i + 1].detach())  # (1, seq, dim, 1, seq, dim)
        m = mask[i]
        sub = jac[0][m][:, :, 0][:, :, m]  # real output tokens x dim x real input tokens x dim
        out.append(float(sub.detach().to(torch.float64).pow(2).sum()) / int(m.sum()))
    return np.asarray(out)


# ------------------------------------------------------------------------------------------------------------------
# the run


def _median_time(fn: Callable[[], Any], reps: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def _try(section: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one peer; a peer that cannot run is recorded (and printed) with the reason, and the run goes on."""
    try:
        section[name] = fn()
    except Exception as err:  # noqa: BLE001 - one broken peer must not stop the others
        section[name] = {"error": f"peer {name} failed: {type(err).__name__}: {err}"}
        print(f"  {section[name]['error']}")


def bench_probe(model: nn.Module, inputs: Mapping[str, torch.Tensor], *, draws: int, reps: int) -> dict[str, Any]:
    """The probe's full profile against the hooks and nnsight peers: time ratios and agreement."""
    from lnsr_viz.core.probe import StabilityProbe

    n = int(inputs["input_ids"].shape[0])
    probe = StabilityProbe(n_draws=draws, batch_size=n, max_rows=draws * n, progress=False)
    ours_s, ours = _median_time(lambda: ours_profile(model, inputs, probe), reps)
    result: dict[str, Any] = {"ours_s": ours_s, "n": n, "draws": draws}
    print(f"stability probe, full profile (k = 0..L), {n} sentences x {draws} draws: ours {ours_s:.2f} s")
    peers: dict[str, Callable[..., Any]] = {"hooks": hooks_profile, "nnsight": nnsight_profile}
    for name, fn in peers.items():
        why = peer_missing(name) if name in PEERS else None
        if why:
            result[name] = {"skipped": why}
            print(f"  {why}")
            continue

        def run(fn: Callable[..., Any] = fn) -> dict[str, Any]:
            seconds, theirs = _median_time(lambda: fn(model, inputs, probe), reps)
            return {"seconds": seconds, "ours_over_peer": ours_s / seconds, **profile_agreement(ours, theirs)}

        _try(result, name, run)
        r = result[name]
        if "seconds" in r:
            print(f"  vs {name}: {r['seconds']:.2f} s, ours / {name} = {r['ours_over_peer']:.2f}; agreement: max "
                  f"|diff| {r['max_abs_diff']:.1e}, max rel diff {r['max_rel_diff']:.1e} over {r['values']} values")
    return result


def _pooled(model: nn.Module, inputs: Mapping[str, torch.Tensor], layers: Sequence[int]) -> list[torch.Tensor]:
    from lnsr_viz.analysis.drift import mean_pool

    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states
    return [mean_pool(hs[i], inputs["attention_mask"]) for i in layers]


def bench_cka(model: nn.Module, inputs: Mapping[str, torch.Tensor], *, cka_n: int, reps: int) -> dict[str, Any]:
    """Debiased linear CKA against torch-cka on real pooled representations and on ``cka_n`` random features."""
    from lnsr_viz.analysis.drift import linear_cka

    n_layers = len(_layer_modules(model)) - 1
    x_real, y_real = _pooled(model, inputs, [n_layers // 2, n_layers])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cka_n, 384, generator=gen)
    y = 0.1 * x @ torch.randn(384, 384, generator=gen) + torch.randn(cka_n, 384, generator=gen)
    result: dict[str, Any] = {}
    why = peer_missing("torch-cka")
    print(f"debiased linear CKA vs torch-cka (version {peer_version('torch-cka')}):")
    pairs = {f"minilm pooled layers {n_layers // 2} vs {n_layers}, n={x_real.shape[0]}": (x_real, y_real),
             f"random, n={cka_n} x 384": (x, y)}
    for label, (a, b) in pairs.items():
        ours_s, ours = _median_time(lambda a=a, b=b: linear_cka(a, b, debiased=True), reps)
        row: dict[str, Any] = {"ours_s": ours_s, "ours": ours, "ours_plain": linear_cka(a, b)}
        if why:
            row["skipped"] = why
        else:
            def run(a: torch.Tensor = a, b: torch.Tensor = b, ours_s: float = ours_s, ours: float = ours
                    ) -> dict[str, Any]:
                seconds, theirs = _median_time(lambda: torch_cka_value(a, b), reps)
                return {"seconds": seconds, "value": theirs, "ours_over_peer": ours_s / seconds,
                        "abs_diff": abs(ours - theirs)}

            _try(row, "torch-cka", run)
        result[label] = row
        peer = row.get("torch-cka", {})
        tail = (f"torch-cka {peer['value']:.8f} in {peer['seconds']:.4f} s, ours / torch-cka = "
                f"{peer['ours_over_peer']:.3f}, |diff| {peer['abs_diff']:.1e}" if "value" in peer
                else row.get("skipped", peer.get("error", "")))
        print(f"  {label}: ours {ours:.8f} in {ours_s:.4f} s; {tail}")
    return result


def bench_hessian(model: nn.Module, inputs: Mapping[str, torch.Tensor], *, probes: int, reps: int) -> dict[str, Any]:
    """Hessian trace over the classifier head: ours and PyHessian (Hutchinson) beside the exact closed form."""
    from lnsr_viz.analysis.theory import hessian_trace

    exact = exact_head_trace(model, inputs)
    ours_s, est = _median_time(lambda: hessian_trace(model, inputs, params="classifier", n_probes=probes,
                                                     batch_size=int(inputs["input_ids"].shape[0])), reps)
    result: dict[str, Any] = {"exact": exact, "ours": est.trace, "ours_se": est.se, "ours_s": ours_s,
                              "n_params": est.n_params, "probes": probes,
                              "ours_z_vs_exact": (est.trace - exact) / est.se if est.se > 0 else math.nan}
    print(f"Hessian trace over the classifier head ({est.n_params} parameters, {probes} probes): exact {exact:.6f}; "
          f"ours {est.trace:.6f} ± {est.se:.6f} in {ours_s:.2f} s")
    why = peer_missing("pyhessian")
    if why:
        result["pyhessian"] = {"skipped": why}
        print(f"  {why}")
        return result

    def run() -> dict[str, Any]:
        seconds, (value, se) = _median_time(lambda: pyhessian_trace(model, inputs, n_probes=probes), reps)
        return {"seconds": seconds, "value": value, "se": se, "ours_over_peer": ours_s / seconds,
                "z_vs_exact": (value - exact) / se if se > 0 else math.nan,
                "z_ours_vs_peer": (est.trace - value) / math.hypot(est.se, se)}

    _try(result, "pyhessian", run)
    r = result["pyhessian"]
    if "value" in r:
        print(f"  PyHessian {peer_version('pyhessian')}: {r['value']:.6f} ± {r['se']:.6f} in {r['seconds']:.2f} s, "
              f"ours / PyHessian = {r['ours_over_peer']:.2f}; ours - PyHessian = {r['z_ours_vs_peer']:+.2f} "
              f"combined se; vs exact: ours {result['ours_z_vs_exact']:+.2f} se, PyHessian {r['z_vs_exact']:+.2f} se")
    return result


def bench_jacobian(*, n: int, probes: int, reps: int) -> dict[str, Any]:
    """Per-token ||J||_F^2 of a tiny BERT: our Hutchinson estimate against the exact value from jacrev."""
    from lnsr_viz.analysis.theory import jacobian_norm
    from lnsr_viz.core.inputs import tokenize
    from lnsr_viz.testing import tiny_model, toy_sentences

    model, tok = tiny_model("bert", n_layers=2, seed=0)
    inputs = tokenize(tok, toy_sentences(n, seed=0)[0], max_length=32, model=model)
    ours_s, est = _median_time(lambda: jacobian_norm(model, inputs, n_probes=probes, batch_size=n,
                                                     max_rows=probes * n), reps)
    peer_s, exact = _median_time(lambda: jacrev_fro2(model, inputs), reps)
    result = {"model": "tiny-bert (2 blocks, hidden 32)", "n": n, "probes": probes, "ours": est.fro2,
              "ours_se": est.se, "exact": float(exact.mean()), "ours_s": ours_s, "jacrev_s": peer_s,
              "ours_over_peer": ours_s / peer_s, "z": (est.fro2 - float(exact.mean())) / est.se,
              "rel_diff": abs(est.fro2 - float(exact.mean())) / float(exact.mean())}
    print(f"Jacobian ||J||_F^2 per token, tiny BERT, {n} sentences: exact (jacrev) {result['exact']:.5f} in "
          f"{peer_s:.2f} s; ours ({probes} probes) {est.fro2:.5f} ± {est.se:.5f} in {ours_s:.2f} s, ours / jacrev = "
          f"{result['ours_over_peer']:.2f}; diff {result['z']:+.2f} se ({result['rel_diff']:.1%})")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from lnsr_viz.core.inputs import tokenize
    from lnsr_viz.data.models import load_model
    from lnsr_viz.data.text import load_domain

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="sentences (probe, CKA on MiniLM, Hessian)")
    parser.add_argument("--draws", type=int, default=4, help="noise draws per sentence (probe)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions; the median time is reported")
    parser.add_argument("--cka-n", type=int, default=2000, help="random examples for the CKA timing")
    parser.add_argument("--probes", type=int, default=64, help="Hutchinson probes (Hessian trace, Jacobian)")
    parser.add_argument("--jac-n", type=int, default=4, help="sentences for the exact jacrev Jacobian (tiny BERT)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model, tok = load_model("minilm")
    data = load_domain("movie")
    inputs = tokenize(tok, list(data.texts[: args.n]), max_length=64, model=model)
    labelled = {**inputs, "labels": torch.as_tensor(list(data.labels[: args.n]))}
    results: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "model": "minilm",
                               "peer_versions": {p: peer_version(p) for p in PEERS}, "args": vars(args)}
    print(f"machine: {results['machine']}\npeers: {results['peer_versions']}")
    results["probe"] = bench_probe(model, inputs, draws=args.draws, reps=args.reps)
    results["cka"] = bench_cka(model, inputs, cka_n=args.cka_n, reps=args.reps)
    results["hessian"] = bench_hessian(model, labelled, probes=args.probes, reps=args.reps)
    results["jacobian"] = bench_jacobian(n=args.jac_n, probes=args.probes, reps=args.reps)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()

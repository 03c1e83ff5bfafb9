"""The theory link, measured: Jacobian norms, the small-noise identity, Hessian traces, and their relation to gaps.

LNSR's argument (Hua et al.; Bishop 1995 for the classic link) is that penalising the change of the upper layers under
small input noise penalises the Jacobian of the upper sub-network: for ``f`` = blocks ``k+1..L`` acting on ``h_k``,

    E ||f(h + e) - f(h)||^2  ~  sigma^2 ||J_f(h)||_F^2        for e ~ N(0, sigma^2 I) and small sigma.

This module measures both sides and where the identity holds:

* :func:`jacobian_norm`: a Hutchinson-style estimate of ``||J||_F^2`` of blocks ``k+1..stop`` with respect to
  ``h_k``, per token (``||M J P||_F^2 / T`` with ``P``/``M`` restricting inputs/outputs to the ``T`` real tokens of
  a sentence, averaged over sentences). With Rademacher probes ``v`` (real tokens only), ``E ||J v||^2 =
  E ||J^T v||^2 = ||J||_F^2``: one backward pass per probe (``mode='vjp'``, works for every architecture) or one
  forward-mode pass (``mode='jvp'``). Returned with a Monte Carlo standard error.
* :func:`small_noise_identity`: the noise sensitivity ``E ||f(h+e) - f(h)||^2 / (sigma^2 T)`` for shrinking absolute
  ``sigma`` (Gaussian noise from :class:`lnsr_viz.core.noise.GaussianNoise`, the probe's injector, replayed through the
  probe's block replay), next to the Jacobian estimate, with a column saying whether the identity holds or breaks,
  and why: at large ``sigma`` the network is not linear over the noise (LayerNorm, GELU, softmax); at tiny ``sigma``
  floating-point round-off in ``f(h+e) - f(h)`` dominates (float32 carries ~7 digits).
* :func:`hutchinson_trace` / :func:`hessian_trace`: ``tr(H)`` of the training loss, Hutchinson's estimator with
  Rademacher vectors and Hessian-vector products by double backward, over all or a subset of the parameters.
* :func:`theory_table_from_tables`: across runs (the tables of a run store; the store-reading wrapper is
  :func:`lnsr_viz.experiments.theory_runs.theory_table`), top-layer noise sensitivity (profile), generalisation gap
  (history), out-of-domain gap (metrics) and, where stored in a run's ``extra`` (see :func:`theory_measurements`),
  the Jacobian norm and Hessian trace, with Pearson and Spearman correlations and percentile-bootstrap confidence
  intervals.

Double backward and forward-mode AD are not implemented for PyTorch's fused CPU attention kernel, so every
derivative here is taken with the math attention backend (``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``),
which computes the same function.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.adapter import ModelAdapter, layer_name
from ..core.inputs import eval_mode, iter_batches
from ..core.noise import GaussianNoise
from ..utils.validation import check_choice, check_number, check_positive_int
from .stats import t_interval

__all__ = [
    "JacobianEstimate",
    "TraceEstimate",
    "TheoryTable",
    "IDENTITY_COLUMNS",
    "EXTRA_KEYS",
    "jacobian_norm",
    "small_noise_identity",
    "hutchinson_trace",
    "hessian_trace",
    "theory_measurements",
    "theory_table_from_tables",
]

#: Columns of :func:`small_noise_identity`.
IDENTITY_COLUMNS = (
    "layer", "stop", "sigma", "noise_sensitivity", "noise_sensitivity_ci_low", "noise_sensitivity_ci_high",
    "jacobian_fro2", "jacobian_se", "ratio", "regime", "n_examples", "n_draws", "n_probes", "dtype",
)

#: Keys of a run's ``extra`` that :func:`theory_table_from_tables` reads (written by :func:`theory_measurements`).
EXTRA_KEYS = ("jacobian_fro2", "jacobian_fro2_se", "hessian_trace", "hessian_trace_se")


# ------------------------------------------------------------------------------------------------ helpers
@contextlib.contextmanager
def _math_attention() -> Iterator[None]:
    """Use the math SDPA backend: the fused CPU kernel has no forward-mode AD and no double backward."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


def _adapter_for(model: Any, dtype: torch.dtype | None) -> ModelAdapter:
    """An adapter over ``model``, or over a copy cast to ``dtype`` (the same blocks, found by name)."""
    adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model)
    if dtype is None:
        return adapter
    current = next(adapter.model.parameters()).dtype
    if current == dtype:
        return adapter
    names = {id(m): n for n, m in adapter.model.named_modules()}
    paths = [names[id(b)] for b in adapter.blocks]
    clone = copy.deepcopy(adapter.model).to(dtype)
    return ModelAdapter(clone, blocks=[clone.get_submodule(p) for p in paths], n_layers=adapter.n_layers)


def _rademacher(shape: Sequence[int], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    bits = torch.randint(0, 2, tuple(shape), generator=gen, dtype=torch.int8)
    return (bits.to(like.dtype) * 2 - 1).to(like.device)


def _strip_labels(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if k != "labels"}


# ------------------------------------------------------------------------------------------------ (a) Jacobian
@dataclass
class JacobianEstimate:
    """A Hutchinson estimate of the per-token squared Frobenius norm of the Jacobian of blocks ``layer+1..stop``.

    Attributes
    ----------
    fro2 : float
        Mean over sentences of ``||M J P||_F^2 / T`` (``T`` real tokens): the average squared Frobenius norm per
        token. For a network that acts on each token separately this is the per-token ``||J_t||_F^2``.
    se : float
        Monte Carlo standard error of ``fro2`` over the random probes, for these sentences (NaN with one probe).
    se_examples : float
        Standard error over sentences (sentence-to-sentence spread plus probe noise): use it to generalise beyond
        these sentences.
    per_example : ndarray of shape (n_examples,)
        Each sentence's estimate (mean over probes).
    layer, stop : int
        The Jacobian is of ``h_stop`` with respect to ``h_layer``.
    n_examples, n_probes : int
    mode : {'vjp', 'jvp'}
    """

    fro2: float
    se: float
    se_examples: float
    per_example: np.ndarray = field(repr=False)
    layer: int = 0
    stop: int = 0
    n_examples: int = 0
    n_probes: int = 0
    mode: str = "vjp"

    @property
    def fro(self) -> float:
        """``sqrt(fro2)``: the per-token Frobenius norm."""
        return math.sqrt(self.fro2) if self.fro2 >= 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (the per-example values as a list)."""
        out = asdict(self)
        out["per_example"] = [float(v) for v in self.per_example]
        return out


def _probe_samples(adapter: ModelAdapter, cap: Any, layer: int, stop: int, n_probes: int, mode: str,
                   gen: torch.Generator, max_rows: int) -> np.ndarray:
    """Hutchinson samples ``||M J P v||^2 / T`` of one batch: shape (n_probes, batch)."""
    h = cap.hidden[layer].detach()
    mask = cap.mask
    batch = h.shape[0]
    tokens = mask.sum(dim=1).clamp_min(1).to(torch.float64)
    out = np.empty((n_probes, batch))
    per_pass = max(1, min(n_probes, max_rows // max(batch, 1)))
    done = 0
    while done < n_probes:
        g = min(per_pass, n_probes - done)
        m = mask.repeat(g, 1).unsqueeze(-1).to(h.dtype)
        start = h.repeat(g, 1, 1)
        v = _rademacher(start.shape, gen, start) * m

        def f(x: torch.Tensor, g: int = g) -> torch.Tensor:
            return adapter.replay(cap, x, start=layer, stop=stop, expand=g)[-1]

        if mode == "jvp":
            _, jv = torch.func.jvp(f, (start,), (v,))
            proj = jv * m
        else:
            x = start.clone().requires_grad_(True)
            (proj,) = torch.autograd.grad(f(x), x, grad_outputs=v)
            proj = proj * m
        sq = proj.detach().to(torch.float64).pow(2).sum(dim=(1, 2)).view(g, batch) / tokens
        out[done:done + g] = sq.cpu().numpy()
        done += g
    return out


def jacobian_norm(
    model: nn.Module | ModelAdapter,
    data: Any,
    tokenizer: Any = None,
    *,
    layer: int = 0,
    stop: int | None = None,
    n_probes: int = 8,
    mode: Literal["vjp", "jvp"] = "vjp",
    seed: int = 0,
    batch_size: int = 16,
    max_rows: int = 64,
    max_length: int = 128,
    dtype: torch.dtype | None = None,
) -> JacobianEstimate:
    """Estimate the per-token ``||J||_F^2`` of blocks ``layer+1..stop`` with respect to ``h_layer``.

    Parameters
    ----------
    model : nn.Module or ModelAdapter
        Pass a :class:`ModelAdapter` for models the adapter cannot read by itself (e.g. ``LinearStack``).
    data : sequence of str, TextDataset, or mapping of tensors
        Sentences (tokenized with ``tokenizer``) or pre-tokenized inputs (``input_ids``, ``attention_mask``).
    tokenizer : tokenizer, optional
        Required for texts.
    layer : int, default=0
        ``k``: the Jacobian is taken with respect to ``h_k`` (0 = embedding output).
    stop : int, optional
        The output layer (default: the last, ``L``); must be > ``layer``.
    n_probes : int, default=8
        Rademacher probe vectors per sentence. The standard error falls as ``1/sqrt(n_probes)``; at least 2 give a
        standard error.
    mode : {'vjp', 'jvp'}, default='vjp'
        ``'vjp'``: ``||J^T v||^2`` by one backward pass per probe. ``'jvp'``: ``||J v||^2`` by forward-mode AD
        (``torch.func.jvp``). Both are unbiased for ``||J||_F^2``.
    seed : int, default=0
        Seeds the probes.
    batch_size : int, default=16
        Sentences per forward pass.
    max_rows : int, default=64
        At most this many sequences (probes x sentences) go through the blocks at once.
    max_length : int, default=128
    dtype : torch.dtype, optional
        Run a copy of the model in this precision (e.g. ``torch.float64``); default: the model's own.

    Returns
    -------
    JacobianEstimate
    """
    owner = "jacobian_norm"
    n_probes = check_positive_int("n_probes", n_probes, owner=owner)
    check_choice("mode", mode, ("vjp", "jvp"), owner=owner)
    batch_size = check_positive_int("batch_size", batch_size, owner=owner)
    max_rows = check_positive_int("max_rows", max_rows, owner=owner)
    adapter = _adapter_for(model, dtype)
    layer, stop = _check_span(adapter, layer, stop, owner)
    batches = iter_batches(data, tokenizer, adapter.model, batch_size=batch_size, max_length=max_length, owner=owner)
    return _jacobian_from_batches(adapter, batches, layer=layer, stop=stop, n_probes=n_probes, mode=mode, seed=seed,
                                  max_rows=max_rows)


def _jacobian_from_batches(adapter: ModelAdapter, batches: Iterable[Mapping[str, torch.Tensor]], *, layer: int,
                           stop: int, n_probes: int, mode: str, seed: int, max_rows: int) -> JacobianEstimate:
    gen = torch.Generator().manual_seed(int(seed))
    samples = []
    with eval_mode(adapter.model, freeze=True), _math_attention():
        for inputs in batches:
            with torch.no_grad():
                cap = adapter.capture(_strip_labels(inputs), stop_at=stop)
            samples.append(_probe_samples(adapter, cap, layer, stop, n_probes, mode, gen, max_rows))
    if not samples:
        raise ValueError("jacobian_norm got no examples: pass at least one sentence.")
    s = np.concatenate(samples, axis=1)  # (n_probes, n_examples)
    per_example = s.mean(axis=0)
    n = per_example.size
    se = math.sqrt(float(np.sum(s.var(axis=0, ddof=1)) / n_probes)) / n if n_probes > 1 else math.nan
    se_examples = float(np.std(per_example, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return JacobianEstimate(fro2=float(per_example.mean()), se=se, se_examples=se_examples, per_example=per_example,
                            layer=layer, stop=stop, n_examples=n, n_probes=n_probes, mode=mode)


def _check_span(adapter: ModelAdapter, layer: int, stop: int | None, owner: str) -> tuple[int, int]:
    layer = adapter.check_layer(layer, name="layer", allow_last=False)
    stop = adapter.n_layers if stop is None else stop
    adapter.check_layer(stop, name="stop")
    if stop <= layer:
        raise ValueError(f"{owner}: stop={stop} must be above layer={layer} (the Jacobian is of h_stop with respect "
                         f"to h_layer; the model has layers 0..{adapter.n_layers}).")
    return layer, stop


# ------------------------------------------------------------------------------------------------ identity
def small_noise_identity(
    model: nn.Module | ModelAdapter,
    data: Any,
    tokenizer: Any = None,
    *,
    layer: int = 0,
    stop: int | None = None,
    sigmas: Sequence[float] = (1.0, 0.3, 0.1, 0.03, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8),
    n_draws: int = 8,
    n_probes: int = 16,
    tolerance: float = 0.1,
    seed: int = 0,
    batch_size: int = 16,
    max_length: int = 128,
    dtype: torch.dtype | None = None,
) -> pd.DataFrame:
    """Compare ``E ||f(h+e) - f(h)||^2 / sigma^2`` with ``||J_f||_F^2`` for shrinking absolute ``sigma``.

    ``f`` is blocks ``layer+1..stop``; ``e ~ N(0, sigma^2 I)`` on every real token of ``h_layer`` (the probe's
    Gaussian injector with ``scale_kind='absolute'``). Both sides are per token: the squared change summed over the
    real tokens of a sentence and divided by their number, averaged over draws and sentences.

    Parameters
    ----------
    model, data, tokenizer, layer, stop, batch_size, max_length, dtype
        As for :func:`jacobian_norm`. ``dtype=torch.float64`` pushes the round-off floor far below float32's.
    sigmas : sequence of float
        Absolute noise standard deviations (per coordinate), in hidden-state units.
    n_draws : int, default=8
        Noise draws per sentence and sigma.
    n_probes : int, default=16
        Probes of the Jacobian estimate (computed once, on the same sentences).
    tolerance : float, default=0.1
        The identity "holds" at a sigma when ``|ratio - 1| <= tolerance``.
    seed : int, default=0

    Returns
    -------
    DataFrame
        Columns :data:`IDENTITY_COLUMNS`, one row per sigma (decreasing). ``noise_sensitivity`` is
        ``E||f(h+e)-f(h)||^2 / (sigma^2 T)`` with a 95% t-interval over sentences; ``jacobian_fro2`` and
        ``jacobian_se`` the Hutchinson estimate and its Monte Carlo standard error; ``ratio`` their quotient;
        ``regime`` is ``'holds'``, ``'breaks: nonlinear'`` (sigma above the range where it holds: the network is
        not linear over the noise), ``'breaks: round-off'`` (sigma below it: float round-off in ``f(h+e) - f(h)``
        dominates) or ``'breaks'`` (no sigma holds).
    """
    owner = "small_noise_identity"
    if isinstance(sigmas, int | float) or not len(sigmas):
        raise ValueError(f"The 'sigmas' parameter of {owner} must be a non-empty sequence of positive floats. "
                         f"Got {sigmas!r} instead.")
    sig = [float(check_number("sigmas", s, owner=owner, low=0.0, low_closed=False)) for s in sigmas]
    sig = sorted(set(sig), reverse=True)
    n_draws = check_positive_int("n_draws", n_draws, owner=owner)
    tolerance = float(check_number("tolerance", tolerance, owner=owner, low=0.0, low_closed=False))
    batch_size = check_positive_int("batch_size", batch_size, owner=owner)
    adapter = _adapter_for(model, dtype)
    layer, stop = _check_span(adapter, layer, stop, owner)
    batches = list(iter_batches(data, tokenizer, adapter.model, batch_size=batch_size, max_length=max_length,
                                owner=owner))
    jac = _jacobian_from_batches(adapter, batches, layer=layer, stop=stop,
                                 n_probes=check_positive_int("n_probes", n_probes, owner=owner), mode="vjp",
                                 seed=seed, max_rows=64)
    per_sigma: dict[float, list[np.ndarray]] = {s: [] for s in sig}
    net = adapter.model
    with eval_mode(net, freeze=True), torch.no_grad():
        for bi, inputs in enumerate(batches):
            cap = adapter.capture(_strip_labels(inputs), stop_at=stop)
            h, mask = cap.hidden[layer], cap.mask
            batch = h.shape[0]
            tokens = mask.sum(dim=1).clamp_min(1).to(torch.float64)
            keep = mask.to(torch.float64)
            for si, s in enumerate(sig):
                gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + bi * 1_009 + si)
                noise = GaussianNoise(s, scale_kind="absolute").inject_draws(h, mask, n_draws, generator=gen)
                # One replay holds a clean copy and the noisy copies, so both go through identical kernels.
                start = torch.cat([h, h.repeat(n_draws, 1, 1) + noise], dim=0)
                out = adapter.replay(cap, start, start=layer, stop=stop, expand=n_draws + 1)[-1]
                clean = out[:batch].to(torch.float64)
                noisy = out[batch:].to(torch.float64).view(n_draws, batch, *out.shape[1:])
                sq = ((noisy - clean).pow(2).sum(dim=-1) * keep).sum(dim=-1) / tokens  # (n_draws, batch)
                per_sigma[s].append((sq.mean(dim=0) / s**2).cpu().numpy())
    rows = []
    for s in sig:
        values = np.concatenate(per_sigma[s])
        mean, _sd, lo, hi, _n = t_interval(values)
        rows.append({"layer": layer, "stop": stop, "sigma": s, "noise_sensitivity": mean,
                     "noise_sensitivity_ci_low": lo, "noise_sensitivity_ci_high": hi, "jacobian_fro2": jac.fro2,
                     "jacobian_se": jac.se, "ratio": mean / jac.fro2 if jac.fro2 > 0 else math.nan,
                     "n_examples": values.size, "n_draws": n_draws, "n_probes": jac.n_probes,
                     "dtype": str(next(net.parameters()).dtype).replace("torch.", "")})
    holds = [abs(r["ratio"] - 1.0) <= tolerance for r in rows]
    held = [r["sigma"] for r, ok in zip(rows, holds) if ok]
    for r, ok in zip(rows, holds):
        if ok:
            r["regime"] = "holds"
        elif not held:
            r["regime"] = "breaks"
        elif r["sigma"] > max(held):
            r["regime"] = "breaks: nonlinear"
        elif r["sigma"] < min(held):
            r["regime"] = "breaks: round-off"
        else:
            r["regime"] = "breaks"
    return pd.DataFrame(rows, columns=list(IDENTITY_COLUMNS))


# ------------------------------------------------------------------------------------------------ (b) Hessian
@dataclass
class TraceEstimate:
    """A Hutchinson estimate of the trace of a Hessian.

    Attributes
    ----------
    trace : float
        Mean of ``v^T H v`` over the Rademacher probes ``v``.
    se : float
        Its standard error over the probes (NaN with one probe).
    samples : ndarray of shape (n_probes,)
        The individual ``v^T H v``.
    n_probes, n_params : int
        Probes used and the number of scalar parameters the Hessian is over.
    param_names : list of str
        Names of the parameter tensors included.
    """

    trace: float
    se: float
    samples: np.ndarray = field(repr=False)
    n_probes: int = 0
    n_params: int = 0
    param_names: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        out = asdict(self)
        out["samples"] = [float(v) for v in self.samples]
        return out


LossTerms = Callable[[], torch.Tensor | Iterable[tuple[float, torch.Tensor]]]


def hutchinson_trace(loss_fn: LossTerms, params: Sequence[torch.Tensor], *, n_probes: int = 16, seed: int = 0,
                     names: Sequence[str] | None = None) -> TraceEstimate:
    """Hutchinson's estimate of ``tr(H)``, ``H`` the Hessian of a scalar loss with respect to ``params``.

    ``tr(H) = E[v^T H v]`` for Rademacher ``v`` (independent +-1 entries); each ``H v`` is a Hessian-vector product
    by double backward, so ``H`` is never formed.

    Parameters
    ----------
    loss_fn : callable
        Called with no arguments; returns the scalar loss, or an iterable of ``(weight, loss)`` terms (e.g. one per
        batch, weighted by its share of the examples) whose weighted sum is the loss. Called once: each term's
        gradient graph is reused for all probes.
    params : sequence of Tensor
        The parameters (each ``requires_grad``) the Hessian is over.
    n_probes : int, default=16
    seed : int, default=0
        Seeds the probes; probe ``p`` is the same vector for every term.
    names : sequence of str, optional
        Parameter names, kept in the result.

    Returns
    -------
    TraceEstimate
    """
    owner = "hutchinson_trace"
    n_probes = check_positive_int("n_probes", n_probes, owner=owner)
    params = list(params)
    if not params:
        raise ValueError(f"{owner}: params is empty; pass the parameters the Hessian is over.")
    if not all(p.requires_grad for p in params):
        raise ValueError(f"{owner}: every parameter must have requires_grad=True.")
    totals = np.zeros(n_probes)
    with _math_attention():  # the forward pass too: its graph must support double backward
        result = loss_fn()
        terms = [(1.0, result)] if torch.is_tensor(result) else result
        for weight, loss in terms:
            if loss.dim() != 0:
                raise ValueError(f"{owner}: the loss must be a scalar; got shape {tuple(loss.shape)}.")
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            pairs = [(p, g) for p, g in zip(params, grads) if g is not None and g.requires_grad]
            if not pairs:
                continue
            ps, gs = [p for p, _ in pairs], [g for _, g in pairs]
            index = {id(p): i for i, p in enumerate(params)}
            for probe in range(n_probes):
                vs = _probe_vectors(params, seed, probe)
                v_used = [vs[index[id(p)]] for p in ps]
                hv = torch.autograd.grad(gs, ps, grad_outputs=v_used, retain_graph=True, allow_unused=True)
                totals[probe] += float(weight) * float(sum(
                    (v.to(torch.float64) * h.to(torch.float64)).sum() for v, h in zip(v_used, hv) if h is not None))
            del grads, gs
    se = float(np.std(totals, ddof=1) / math.sqrt(n_probes)) if n_probes > 1 else math.nan
    return TraceEstimate(trace=float(totals.mean()), se=se, samples=totals, n_probes=n_probes,
                         n_params=sum(int(p.numel()) for p in params), param_names=list(names or []))


def _probe_vectors(params: Sequence[torch.Tensor], seed: int, probe: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + probe)
    return [_rademacher(p.shape, gen, p) for p in params]


def _select_params(model: nn.Module, params: Any) -> tuple[list[str], list[torch.Tensor]]:
    named = list(model.named_parameters())
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
    elif callable(params):
        chosen = [(n, p) for n, p in named if params(n)]
    else:
        patterns = [params] if isinstance(params, str) else list(params)
        if not patterns or not all(isinstance(x, str) for x in patterns):
            raise ValueError(f"params must be None, a glob pattern, a list of glob patterns, or a callable "
                             f"name -> bool; got {params!r}.")
        chosen = [(n, p) for n, p in named if any(fnmatch.fnmatchcase(n, pat) or n.startswith(pat + ".")
                                                  or n == pat for pat in patterns)]
    if not chosen:
        examples = [n for n, _ in named[:3]] + [n for n, _ in named[-2:]]
        raise ValueError(f"params={params!r} matches none of the model's {len(named)} parameter tensors; names look "
                         f"like {examples}. Use glob patterns such as 'classifier.*' or '*.layer.1.*', or a module "
                         "prefix such as 'classifier'.")
    return [n for n, _ in chosen], [p for _, p in chosen]


def hessian_trace(
    model: nn.Module,
    data: Any,
    tokenizer: Any = None,
    *,
    params: str | Sequence[str] | Callable[[str], bool] | None = None,
    n_probes: int = 16,
    seed: int = 0,
    batch_size: int = 16,
    max_length: int = 128,
) -> TraceEstimate:
    """Hutchinson estimate of the trace of the Hessian of the training loss (mean cross-entropy over ``data``).

    The model runs in eval mode (dropout off), so the loss is a deterministic function of the weights. A flat
    minimum (small trace) is the other classic correlate of generalisation.

    Parameters
    ----------
    model : nn.Module
        A sequence classifier that returns ``.loss`` when given ``labels``.
    data : TextDataset, CSV path, DataFrame, or mapping of tensors with ``labels``
        Labelled examples (the loss needs the classes).
    tokenizer : tokenizer, optional
        Required unless ``data`` is tokenized.
    params : None, str, sequence of str or callable, default=None
        Which parameters the Hessian is over: None = all trainable ones; glob patterns or module prefixes
        (``'classifier'``, ``'*.encoder.layer.5.*'``); or a predicate on the parameter name.
    n_probes, seed
        See :func:`hutchinson_trace`.
    batch_size, max_length : int

    Returns
    -------
    TraceEstimate
    """
    owner = "hessian_trace"
    batch_size = check_positive_int("batch_size", batch_size, owner=owner)
    names, chosen = _select_params(model, params)
    batches = list(iter_batches(data, tokenizer, model, batch_size=batch_size, max_length=max_length,
                                with_labels=True, owner=owner))
    n_total = sum(int(b["input_ids"].shape[0]) for b in batches)
    flags = [(p, p.requires_grad) for p in chosen]

    def terms() -> Iterator[tuple[float, torch.Tensor]]:
        for b in batches:
            out = model(**b)
            loss = out["loss"] if isinstance(out, Mapping) else out.loss
            yield int(b["input_ids"].shape[0]) / n_total, loss

    with eval_mode(model):
        try:
            for p in chosen:
                p.requires_grad_(True)
            with _math_attention():
                return hutchinson_trace(terms, chosen, n_probes=n_probes, seed=seed, names=names)
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def theory_measurements(model: nn.Module, data: Any, tokenizer: Any = None, *, layer: int = 0,
                        n_probes: int = 8, hessian_params: Any = None, seed: int = 0,
                        max_length: int = 128) -> dict[str, float]:
    """The Jacobian norm and Hessian trace of a fine-tuned model: the ``extra`` entries the theory table reads.

    Store them with a run: ``store.save(cfg, ..., extra={**extra, **theory_measurements(model, train, tok)})``.
    ``data`` must be labelled (for the loss); the Jacobian is of the top layer with respect to ``h_layer``.

    Returns
    -------
    dict
        ``jacobian_fro2``, ``jacobian_fro2_se``, ``hessian_trace``, ``hessian_trace_se`` (:data:`EXTRA_KEYS`) and
        the settings used (``theory_layer``, ``theory_n_probes``).
    """
    from ..data.text import TextDataset, as_dataset

    ds = data if isinstance(data, TextDataset) or isinstance(data, Mapping) else as_dataset(data)
    texts = ds if isinstance(ds, Mapping) else list(ds.texts)
    jac = jacobian_norm(model, texts, tokenizer, layer=layer, n_probes=n_probes, seed=seed, max_length=max_length)
    hess = hessian_trace(model, ds, tokenizer, params=hessian_params, n_probes=n_probes, seed=seed,
                         max_length=max_length)
    return {"jacobian_fro2": jac.fro2, "jacobian_fro2_se": jac.se, "hessian_trace": hess.trace,
            "hessian_trace_se": hess.se, "theory_layer": layer, "theory_n_probes": n_probes}


# ------------------------------------------------------------------------------------------------ (c) across runs
@dataclass
class TheoryTable:
    """What :func:`theory_table_from_tables` returns.

    Attributes
    ----------
    runs : DataFrame
        One row per stored run: ``run_id, method, seed, noise_sensitivity, generalisation_gap, ood_gap,
        jacobian_fro2, hessian_trace`` (NaN where a run lacks the table or the extra).
    correlations : DataFrame
        One row per pair of quantities: ``x, y, n, pearson_r, pearson_ci_low, pearson_ci_high, pearson_p,
        spearman_rho, spearman_ci_low, spearman_ci_high, spearman_p``.
    settings : dict
        Which profile rows and domains were used.
    """

    runs: pd.DataFrame
    correlations: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)


_STABILITY = ("noise_sensitivity", "jacobian_fro2", "hessian_trace")
_GAPS = ("generalisation_gap", "ood_gap")
CORRELATION_COLUMNS = ("x", "y", "n", "pearson_r", "pearson_ci_low", "pearson_ci_high", "pearson_p",
                       "spearman_rho", "spearman_ci_low", "spearman_ci_high", "spearman_p")


def _pick(df: pd.DataFrame, column: str, value: Any, param: str) -> pd.DataFrame:
    present = sorted(df[column].dropna().unique().tolist(), key=str)
    if value is None:
        if len(present) > 1:
            raise ValueError(f"theory_table: the stored profiles hold several {column!r} values {present}; choose "
                             f"one with {param}=... (e.g. {param}={present[0]!r}).")
        return df
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    mask = np.isclose(df[column].astype(float), float(value)) if numeric else df[column] == value
    if not mask.any():
        raise ValueError(f"theory_table: no stored profile rows with {column}={value!r}; available: {present}.")
    return df[mask]


def theory_table_from_tables(
    runs: pd.DataFrame,
    *,
    profile: pd.DataFrame,
    history: pd.DataFrame,
    metrics: pd.DataFrame,
    extras: pd.DataFrame | None = None,
    injection_layer: int = 0,
    metric: Literal["change_rel", "change_l2"] = "change_rel",
    noise: str | None = None,
    scale: float | None = None,
    in_domain: str | None = None,
    gap_metric: str = "accuracy",
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> TheoryTable:
    """Relate noise stability, Jacobian norm and Hessian trace to the generalisation and OOD gaps across runs.

    The tables are those of a run store (:func:`lnsr_viz.experiments.theory_runs.theory_table` reads them from one),
    each with a ``run_id`` column. Per run (every row of ``runs``):

    * ``noise_sensitivity``: the ``profile``'s ``metric`` at the top layer for noise injected at
      ``injection_layer`` (the paper's Figure 1 quantity);
    * ``generalisation_gap``: the last epoch's ``gap`` (train - validation accuracy) of the ``history``;
    * ``ood_gap``: in-domain minus mean out-of-domain ``gap_metric`` from the ``metrics`` (the in-domain set is
      the run's ``data.in_domain`` column, or ``in_domain``);
    * ``jacobian_fro2``, ``hessian_trace``: from ``extras`` when given (:func:`theory_measurements`).

    Correlations (Pearson and Spearman, with scipy's p-values and percentile-bootstrap CIs from
    :func:`lnsr_viz.analysis.stats.bootstrap_ci`, resampling runs) are computed for every stability quantity
    against every gap, and for noise sensitivity against the Jacobian norm, on the runs where both values exist
    (at least 3).

    Parameters
    ----------
    runs : DataFrame
        One row per run: ``run_id`` and, where known, ``method``, ``seed``, ``data.in_domain``.
    profile, history, metrics : DataFrame
        The stored tables of all runs, with ``run_id`` (empty frames where none was stored).
    extras : DataFrame, optional
        One row per run: ``run_id`` and ``jacobian_fro2`` / ``hessian_trace`` (missing or non-finite: NaN).
    injection_layer : int, default=0
    metric : {'change_rel', 'change_l2'}, default='change_rel'
    noise, scale : optional
        Which profile rows to use when the profiles hold several noise kinds or scales.
    in_domain : str, optional
        The in-domain set, if the runs do not say.
    gap_metric : str, default='accuracy'
    confidence : float, default=0.95
    n_boot : int, default=2000
    seed : int, default=0

    Returns
    -------
    TheoryTable
    """
    from scipy import stats

    from .stats import bootstrap_ci

    owner = "theory_table"
    check_choice("metric", metric, ("change_rel", "change_l2"), owner=owner)
    if runs.empty:
        raise ValueError(f"{owner}: no runs to relate; run lnsr_viz.compare(...) first.")
    table = runs[["run_id"]].copy()
    for col in ("method", "seed"):
        table[col] = runs[col] if col in runs.columns else None

    sens: dict[str, float] = {}
    if len(profile) and metric in profile.columns:
        prof = profile[profile["injection_layer"] == injection_layer]
        if "noise" in prof.columns:
            prof = _pick(prof, "noise", noise, "noise")
        if "scale" in prof.columns:
            prof = _pick(prof, "scale", scale, "scale")
        for run_id, g in prof.groupby("run_id"):
            top = g[g["layer"] == g["layer"].max()]
            sens[str(run_id)] = float(top[metric].mean())
    table["noise_sensitivity"] = table["run_id"].map(sens).astype(float)

    gaps: dict[str, float] = {}
    if len(history) and "gap" in history.columns:
        for run_id, g in history.groupby("run_id"):
            g = g.sort_values("epoch") if "epoch" in g.columns else g
            gaps[str(run_id)] = float(g["gap"].iloc[-1])
    table["generalisation_gap"] = table["run_id"].map(gaps).astype(float)

    ood: dict[str, float] = {}
    in_col = runs.set_index("run_id")["data.in_domain"] if "data.in_domain" in runs.columns else None
    if len(metrics):
        sub = metrics[metrics["metric"] == gap_metric]
        for run_id, g in sub.groupby("run_id"):
            ind = in_domain if in_domain is not None else (in_col.get(run_id) if in_col is not None else None)
            if ind is None or ind not in set(g["domain"]):
                continue
            others = g[g["domain"] != ind]["value"].astype(float)
            if len(others):
                ood[str(run_id)] = float(g[g["domain"] == ind]["value"].astype(float).mean() - others.mean())
    table["ood_gap"] = table["run_id"].map(ood).astype(float)

    for key in ("jacobian_fro2", "hessian_trace"):
        values: dict[str, float] = {}
        if extras is not None and key in extras.columns:
            column = pd.to_numeric(extras[key], errors="coerce").astype(float)
            values = {str(r): float(v) for r, v in zip(extras["run_id"], column) if math.isfinite(v)}
        table[key] = table["run_id"].map(values).astype(float)

    pairs = [(x, y) for x in _STABILITY for y in _GAPS] + [("noise_sensitivity", "jacobian_fro2")]
    rows = []
    for x, y in pairs:
        both = table[[x, y]].dropna()
        n = len(both)
        if n < 3:
            continue
        values = both.to_numpy(dtype=float)
        row: dict[str, Any] = {"x": x, "y": y, "n": n}
        for name, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
            key = "pearson_r" if name == "pearson" else "spearman_rho"
            if np.ptp(values[:, 0]) == 0 or np.ptp(values[:, 1]) == 0:
                row.update({key: math.nan, f"{name}_p": math.nan, f"{name}_ci_low": math.nan,
                            f"{name}_ci_high": math.nan})
                continue
            res = fn(values[:, 0], values[:, 1])
            row[key] = float(res[0])
            row[f"{name}_p"] = float(res[1])

            def stat(a: np.ndarray, fn: Any = fn) -> float:
                if np.ptp(a[:, 0]) == 0 or np.ptp(a[:, 1]) == 0:
                    return math.nan
                return float(fn(a[:, 0], a[:, 1])[0])

            lo, hi = bootstrap_ci(values, confidence=confidence, n_boot=n_boot, seed=seed, statistic=stat)
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = lo, hi
        rows.append(row)
    correlations = pd.DataFrame(rows, columns=list(CORRELATION_COLUMNS))
    settings = {"injection_layer": injection_layer, "layer_name": layer_name(injection_layer), "metric": metric,
                "noise": noise, "scale": scale, "gap_metric": gap_metric, "confidence": confidence,
                "n_boot": n_boot}
    return TheoryTable(runs=table.reset_index(drop=True), correlations=correlations, settings=settings)

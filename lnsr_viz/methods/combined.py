"""Methods trained together (``get_method('lnsr+mixout')``, :func:`compose`) and the factory that builds any
registered method from its name and parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from .base import LossParts, Method
from .registry import METHODS
from .vanilla import Vanilla

__all__ = ["Combined", "compose", "get_method"]


# Pairs that are refused even though their roles would allow them, with the reason shown to the user.
_INCOMPATIBLE: dict[frozenset[str], str] = {
    frozenset({"lnsr", "hype"}): (
        "HyPe perturbs the input of every block, including LNSR's replay of blocks k+1..L, so the LNSR penalty "
        "would measure HyPe's noise as well as its own; both are hidden-state noise methods, use one of them"),
}


class Combined(Method):
    """Several methods trained together: their loss terms are summed and their setup-time changes all applied.

    At most one component may run the forward pass its own way (``role='forward'``: LNSR, SMART, R3F, R-Drop);
    the others add a weight-only term (L2-SP) or act through setup and the gradient hooks (Mixout, NoisyTune,
    HyPe, ChildTuning). Build one with ``get_method("lnsr+mixout", ...)`` or :func:`compose`.

    Parameters
    ----------
    methods : sequence of Method
        Two or more distinct methods. Refused with a ``ValueError`` before training: ``vanilla`` (it is the absence
        of a method), duplicates, two forward-owning methods (each needs the whole forward pass its own way), and
        the pairs in ``_INCOMPATIBLE`` (LNSR + HyPe).

    Notes
    -----
    * The name is canonical: the forward-owning method first, then the others in registry order
      (``compose('mixout', 'lnsr').name == 'lnsr+mixout'``).
    * ``setup`` runs NoisyTune first, so that anchors taken by other methods (L2-SP's and Mixout's pre-trained
      weights) are the weights training starts from; ``teardown`` runs in reverse order.
    * ``LossParts.reg_loss`` of a combination is the *weighted* sum of all regulariser terms (so that
      ``loss = task_loss + reg_loss``); each component's own unweighted term is in ``extras['<name>.reg']``.
    * Mixout draws its masks from torch's global generator, like dropout, so LNSR's ``dropout='same'`` replay reuses
      the clean pass's Mixout masks too: in ``lnsr+mixout`` the LNSR penalty measures LNSR's noise only.

    Examples
    --------
    >>> from lnsr_viz.methods.base import get_method
    >>> get_method("mixout+lnsr", lam=2.0, p=0.5).name
    'lnsr+mixout'
    """

    role = "forward"

    def __init__(self, methods: Sequence[Method]) -> None:
        methods = list(methods)
        flat: list[Method] = []
        for m in methods:
            if not isinstance(m, Method):
                raise ValueError(f"Combined takes Method instances; got {type(m).__name__}.")
            flat.extend(m.methods if isinstance(m, Combined) else [m])
        if len(flat) < 2:
            raise ValueError("A combination needs at least two methods, e.g. 'lnsr+mixout'.")
        names = [m.name for m in flat]
        if "vanilla" in names:
            raise ValueError(f"Cannot combine 'vanilla' with other methods ({'+'.join(names)}): vanilla is the "
                             "absence of a regulariser. Drop it from the combination.")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"Method {dupes[0]!r} appears twice in {'+'.join(names)!r}; give each method once "
                             "(set its parameters instead of repeating it).")
        owners = [m.name for m in flat if m.role == "forward"]
        if len(owners) > 1:
            raise ValueError(f"Cannot combine {' and '.join(repr(o) for o in owners)}: each runs the model's forward "
                             "pass its own way (clean/noisy or adversarial passes), so their losses cannot be summed "
                             "over one forward pass. Combine at most one of lnsr, smart, r3f, rdrop with l2sp, "
                             "mixout, noisytune, hype or childtuning.")
        for pair, reason in _INCOMPATIBLE.items():
            if pair <= set(names):
                raise ValueError(f"Cannot combine {' and '.join(sorted(pair))}: {reason}.")
        order = list(METHODS)
        rank = {n: (0 if n in owners else 1, order.index(n) if n in order else len(order)) for n in names}
        self.methods: list[Method] = sorted(flat, key=lambda m: rank[m.name])
        self.name = "+".join(m.name for m in self.methods)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Combined([{', '.join(repr(m) for m in self.methods)}])"

    def get_params(self) -> dict[str, Any]:
        """``{component name: its get_params()}``."""
        return {m.name: m.get_params() for m in self.methods}

    def key_params(self) -> dict[str, Any]:
        """``{component name: its key_params()}`` (what keys a run)."""
        return {m.name: m.key_params() for m in self.methods}

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return any(m.needs_data for m in self.methods)

    def setup(self, model: nn.Module, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        for m in sorted(self.methods, key=lambda m: m.setup_priority):
            m.setup(model, seed=seed, rank=rank, world_size=world_size)

    def setup_data(self, model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> None:
        batches = list(batches) if sum(m.needs_data for m in self.methods) > 1 else batches
        for m in self.methods:
            if m.needs_data:
                m.setup_data(model, batches)

    def after_backward(self, model: nn.Module) -> None:
        for m in self.methods:
            m.after_backward(model)

    def before_optimizer_step(self, model: nn.Module) -> None:
        for m in self.methods:
            m.before_optimizer_step(model)

    def teardown(self, model: nn.Module) -> None:
        for m in reversed(sorted(self.methods, key=lambda m: m.setup_priority)):
            m.teardown(model)

    def compute_loss(self, model: nn.Module, inputs: Mapping[str, Any]) -> LossParts:
        # Weight-only terms first: their gradients are then computed last in the backward pass (see L2SP).
        penalties = [(m, *m.weighted_penalty(model)) for m in self.methods if m.role == "penalty"]
        owner = next((m for m in self.methods if m.role == "forward"), None)
        parts = (owner or Vanilla()).compute_loss(model, inputs)
        loss = parts.loss
        reg = parts.loss.detach() - parts.task_loss
        extras = {f"{owner.name}.{k}": v for k, v in parts.extras.items()} if owner is not None else {}
        if owner is not None:
            extras[f"{owner.name}.reg"] = float(parts.reg_loss)
        for m, weighted, term in penalties:
            loss = loss + weighted
            reg = reg + weighted.detach()
            extras[f"{m.name}.reg"] = float(term.detach())
        return LossParts(loss=loss, task_loss=parts.task_loss, reg_loss=reg, logits=parts.logits, extras=extras)


def _init_params(cls: type[Method]) -> set[str]:
    return {n for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _route_params(names: Sequence[str], params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Send each parameter of a combination to its method: ``lam=`` (unambiguous), ``'lnsr.lam'`` or ``lnsr={...}``."""
    combo = "+".join(names)
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in params.items():
        if key in out and isinstance(value, Mapping):
            out[key].update(value)
            continue
        if "." in key:
            comp, sub = key.split(".", 1)
            if comp not in out:
                raise ValueError(f"Parameter {key!r} names {comp!r}, which is not part of {combo!r}; expected one "
                                 f"of {list(names)}.")
            out[comp][sub] = value
            continue
        owners = [n for n in names if key in _init_params(METHODS[n])]
        if not owners:
            raise ValueError(f"No method in {combo!r} takes a parameter {key!r}. See help() of "
                             f"{', '.join('lnsr_viz.' + METHODS[n].__name__ for n in names)}.")
        if len(owners) > 1:
            raise ValueError(f"Parameter {key!r} is ambiguous in {combo!r}: {' and '.join(owners)} both take it. "
                             f"Write it as '{owners[0]}.{key}' (CLI: --param {combo}.{owners[0]}.{key}=...).")
        out[owners[0]][key] = value
    return out


def _build(name: str, params: Mapping[str, Any]) -> Method:
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}. Expected one of {sorted(METHODS)} or a combination such as "
                         "'lnsr+mixout'.")
    try:
        return METHODS[name](**params)
    except TypeError as err:
        raise ValueError(f"Bad parameters for method {name!r}: {err}. "
                         f"See help(lnsr_viz.{METHODS[name].__name__}).") from None


def compose(*methods: str | Method, **params: Any) -> Combined:
    """Combine methods (names or instances) into one :class:`Combined`; ``params`` are routed by name.

    Parameters
    ----------
    *methods : str or Method
        E.g. ``compose('lnsr', 'mixout')`` or ``compose(LNSR(lam=2), Mixout(p=0.5))``.
    **params
        Parameters of the named methods: a name only one of them takes (``lam=2``), a dotted name
        (``**{'mixout.p': 0.5}``) or a dict per method (``mixout={'p': 0.5}``).
    """
    names = [m for m in methods if isinstance(m, str)]
    routed = _route_params(names, params) if names else {}
    if params and not names:
        raise ValueError("Pass parameters to the Methods' constructors when composing instances.")
    built = [_build(m, routed.get(m, {})) if isinstance(m, str) else m for m in methods]
    return Combined(built)


def get_method(method: str | Method, **params: Any) -> Method:
    """Build a method from its name and parameters (or return a Method instance unchanged).

    Parameters
    ----------
    method : str or Method
        A registered name (``sorted(METHODS)``), a combination joined by ``+`` (``'lnsr+mixout'``; see
        :class:`Combined`), or a Method instance.
    **params
        Constructor parameters; for a combination see :func:`compose` for how they are routed.

    Raises
    ------
    ValueError
        Unknown name, bad or out-of-range parameter, or a combination that makes no sense.
    """
    if isinstance(method, Method):
        if params:
            raise ValueError("Pass parameters to the Method's constructor, not to get_method, when giving an instance.")
        return method
    if not isinstance(method, str):
        raise ValueError(f"method must be a name such as 'lnsr' or a Method instance; got {type(method).__name__}.")
    if "+" in method:
        parts = [part.strip() for part in method.split("+")]
        for part in parts:
            if part not in METHODS:
                raise ValueError(f"Unknown method {part!r} in {method!r}. Expected one of {sorted(METHODS)}.")
        return compose(*parts, **params)
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}. Expected one of {sorted(METHODS)}.")
    return _build(method, params)

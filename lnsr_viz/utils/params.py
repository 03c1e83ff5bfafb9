"""Parameters read off constructors (scikit-learn's ``get_params`` idea), shared by methods, noise and the probe.

A class that mixes in :class:`GetParams` stores every named ``__init__`` parameter as an attribute of the same name;
``get_params()`` then reads them back, so what keys a run in the store can never drift apart from what the
constructor takes (a parameter missing as an attribute is an error, not a silent omission).

Parameters added after runs were stored: a class lists them with their defaults in ``late_defaults``, and
:meth:`GetParams.key_params` (what run keys are built from) leaves each one out while it has that default, so the
runs stored before it existed keep their keys; set to anything else, it enters the key like any other parameter.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

__all__ = ["GetParams", "constructor_params"]


def constructor_params(cls: type) -> tuple[str, ...]:
    """The named parameters of ``cls.__init__`` in signature order (no ``self``, ``*args`` or ``**kwargs``)."""
    init = cls.__init__
    if init is object.__init__:
        return ()
    return tuple(name for name, p in inspect.signature(init).parameters.items()
                 if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


class GetParams:
    """Mixin: ``get_params()`` returns ``{name: value}`` for every constructor parameter, read from the instance.

    Attributes
    ----------
    late_defaults : dict
        ``{parameter: default}`` of parameters added after runs were stored; :meth:`key_params` omits each one
        while it equals its default (``get_params()`` always lists every parameter).
    """

    late_defaults: ClassVar[dict[str, Any]] = {}

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters of this instance, in signature order."""
        out: dict[str, Any] = {}
        for name in constructor_params(type(self)):
            if not hasattr(self, name):
                raise AttributeError(f"{type(self).__name__} takes the parameter {name!r} but does not store it as "
                                     f"self.{name}; get_params() (and run-store keys) need every parameter stored "
                                     "under its own name.")
            out[name] = getattr(self, name)
        return out

    def key_params(self) -> dict[str, Any]:
        """:meth:`get_params` without the ``late_defaults`` parameters that have their default: what keys a run."""
        late = type(self).late_defaults
        return {name: value for name, value in self.get_params().items()
                if not (name in late and _same(value, late[name]))}


def _same(value: Any, default: Any) -> bool:
    """``value == default`` with the type respected (``True`` is not the integer default ``1``)."""
    return type(value) is type(default) and value == default

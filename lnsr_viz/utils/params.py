"""Parameters read off constructors (scikit-learn's ``get_params`` idea), shared by methods, noise and the probe.

A class that mixes in :class:`GetParams` stores every named ``__init__`` parameter as an attribute of the same name;
``get_params()`` then reads them back, so what keys a run in the store can never drift apart from what the
constructor takes (a parameter missing as an attribute is an error, not a silent omission).
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["GetParams", "constructor_params"]


def constructor_params(cls: type) -> tuple[str, ...]:
    """The named parameters of ``cls.__init__`` in signature order (no ``self``, ``*args`` or ``**kwargs``)."""
    init = cls.__init__
    if init is object.__init__:
        return ()
    return tuple(name for name, p in inspect.signature(init).parameters.items()
                 if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


class GetParams:
    """Mixin: ``get_params()`` returns ``{name: value}`` for every constructor parameter, read from the instance."""

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

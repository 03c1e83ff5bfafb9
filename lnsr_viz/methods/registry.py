"""The registry of fine-tuning methods: name -> :class:`~lnsr_viz.methods.base.Method` class.

Each method module decorates its class with :func:`register`; importing :mod:`lnsr_viz.methods` imports every
method module, so the registry is full whenever anything in the subpackage is used. The registration order is the
canonical order of names in a combination (``'lnsr+mixout'``).
"""

from __future__ import annotations

from typing import TypeVar

from .base import Method

__all__ = ["METHODS", "RIVALS", "register"]

M = TypeVar("M", bound=type[Method])


class _Registry(dict):
    """Name -> Method class. ``"a+b" in METHODS`` is True when every part is registered (a combination name)."""

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str) and "+" in key:
            parts = key.split("+")
            return len(parts) >= 2 and all(dict.__contains__(self, part) for part in parts)
        return dict.__contains__(self, key)


#: Registered methods by name, in registration order (vanilla, lnsr, then the rivals).
METHODS: dict[str, type[Method]] = _Registry()

#: The names of the rival methods (everything registered but vanilla and LNSR), filled by :func:`register`.
RIVALS: list[str] = []


def register(cls: M) -> M:
    """Class decorator: add ``cls`` to :data:`METHODS` under ``cls.name`` (refusing a name given twice)."""
    name = cls.name
    if not isinstance(name, str) or not name or name == Method.name or "+" in name:
        raise ValueError(f"{cls.__name__}.name must be a new registry name without '+'; got {name!r}.")
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(f"A method named {name!r} is already registered ({METHODS[name].__name__}).")
    METHODS[name] = cls
    if name not in ("vanilla", "lnsr") and name not in RIVALS:
        RIVALS.append(name)
    return cls

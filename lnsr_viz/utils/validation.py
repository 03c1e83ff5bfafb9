"""Parameter validation with one message template (scikit-learn style).

Every public object checks its parameters once, before any work starts, and raises a
``ValueError`` that names the parameter, the owner, what was expected and what was given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["check_number", "check_choice", "check_positive_int", "check_bool"]


def _fmt_range(low: float | None, high: float | None, low_closed: bool, high_closed: bool) -> str:
    left = "[" if (low is not None and low_closed) else "("
    right = "]" if (high is not None and high_closed) else ")"
    lo = "-inf" if low is None else repr(low)
    hi = "inf" if high is None else repr(high)
    return f"{left}{lo}, {hi}{right}"


def check_number(
    name: str,
    value: Any,
    *,
    owner: str,
    low: float | None = None,
    high: float | None = None,
    low_closed: bool = True,
    high_closed: bool = True,
    integer: bool = False,
    hint: str = "",
) -> float:
    """Return ``value`` if it is a finite number in the range, else raise a readable ``ValueError``."""
    kind = "an int" if integer else "a float"
    expected = f"{kind} in the range {_fmt_range(low, high, low_closed, high_closed)}"
    msg = f"The {name!r} parameter of {owner} must be {expected}. Got {value!r} instead."
    if hint:
        msg += f" {hint}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        # numpy scalars are accepted through float()/int() conversion below
        try:
            import numpy as np

            if isinstance(value, np.generic) and not isinstance(value, np.bool_):
                value = value.item()
            else:
                raise ValueError(msg)
        except ImportError:  # pragma: no cover
            raise ValueError(msg) from None
        if integer and not isinstance(value, int):
            raise ValueError(msg)
    if not math.isfinite(value):
        raise ValueError(msg)
    if low is not None and (value < low or (value == low and not low_closed)):
        raise ValueError(msg)
    if high is not None and (value > high or (value == high and not high_closed)):
        raise ValueError(msg)
    return value


def check_positive_int(name: str, value: Any, *, owner: str, hint: str = "") -> int:
    """Return ``value`` if it is an int >= 1."""
    return int(check_number(name, value, owner=owner, low=1, integer=True, hint=hint))


def check_choice(name: str, value: Any, choices: Iterable[Any], *, owner: str, hint: str = "") -> Any:
    """Return ``value`` if it is one of ``choices``, else raise listing the valid choices."""
    choices = list(choices)
    if value not in choices:
        msg = f"The {name!r} parameter of {owner} must be one of {choices}. Got {value!r} instead."
        if hint:
            msg += f" {hint}"
        raise ValueError(msg)
    return value


def check_bool(name: str, value: Any, *, owner: str) -> bool:
    """Return ``value`` as a bool if it is one (or numpy's bool, or the integers 0 / 1); refuse anything else.

    A string such as ``"False"`` is refused rather than taken as true, as ``bool("False")`` would.
    """
    import numpy as np

    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"The {name!r} parameter of {owner} must be True or False. Got {value!r} "
                     f"({type(value).__name__}) instead.")


def check_device(device: Any, *, owner: str) -> str | None:
    """Validate a torch device name (``'cpu'``, ``'cuda'``, ``'cuda:1'``, ``'mps'``) before any work starts."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{owner}: device={device!r} is not a torch device name; use 'cpu', 'cuda' or "
                         "'cuda:N'.") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{owner}: device={device!r} asks for a GPU but torch sees none "
                             f"(torch {torch.__version__}); leave the device out to run on the CPU.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{owner}: device={device!r} but torch sees {torch.cuda.device_count()} GPU(s).")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{owner}: device='mps' but the MPS backend is not available here.")
    return str(dev)

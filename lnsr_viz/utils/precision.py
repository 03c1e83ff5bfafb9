"""Numeric precision of the forward passes: ``'fp32'`` (the default) or ``'bf16'`` mixed precision.

``precision='bf16'`` runs the model's forward passes (and, in training, the loss) under
``torch.autocast(device_type, dtype=torch.bfloat16)``: matrix products run in bfloat16, while the parameters, the
optimizer's state, the gradients, normalisations and every statistic the toolkit accumulates stay in float32 /
float64. bfloat16 has float32's exponent range, so no loss scaling (``GradScaler``) is needed.

bf16 is only offered where the hardware has it, and checked before any work starts (:func:`require_precision`):

* **CPU**: the processor must have bfloat16 instructions: the ``avx512_bf16`` or ``amx_bf16`` flags on x86
  (``/proc/cpuinfo``), ``bf16`` on ARM (``/proc/cpuinfo`` ``Features``, or macOS's ``hw.optional.arm.FEAT_BF16``).
  Without them torch would emulate bfloat16, slower than float32.
* **CUDA**: ``torch.cuda.is_bf16_supported()`` (Ampere and newer).
* Any other device (MPS, ...) is refused for bf16.

Where the hardware lacks bf16 the error says so and to use ``precision='fp32'``.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import subprocess
from typing import Any

from .validation import check_choice

__all__ = ["PRECISIONS", "DEFAULT_PRECISION", "check_precision", "cpu_bf16_supported", "bf16_support",
           "require_precision", "autocast"]

#: The precisions every stage accepts.
PRECISIONS = ("fp32", "bf16")
#: The default: float32 everywhere (the committed results were made with it).
DEFAULT_PRECISION = "fp32"

#: CPU feature flags that mean native bfloat16 arithmetic (x86: AVX512-BF16, AMX-BF16; ARM: FEAT_BF16).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def check_precision(precision: Any, *, owner: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise the toolkit's ``ValueError``."""
    return check_choice("precision", precision, PRECISIONS, owner=owner,
                        hint="'fp32' is float32 everywhere (the default); 'bf16' is bfloat16 mixed precision.")


@functools.lru_cache(maxsize=1)
def cpu_bf16_supported() -> bool:
    """Whether this machine's CPU has bfloat16 instructions (see the module docstring); False when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    if set(value.split()) & set(CPU_BF16_FLAGS):
                        return True
        return False
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                 timeout=5, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return False
        return out == "1"
    return False


def bf16_support(device: Any) -> tuple[bool, str]:
    """``(supported, what)``: whether ``device`` (a torch device or its name) runs bfloat16 natively, and what it is.

    ``what`` names the hardware for the messages (e.g. ``'this CPU (AVX512)'``, ``'cuda:0 (NVIDIA T4)'``).
    """
    import torch

    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cpu":
        capability = torch.backends.cpu.get_cpu_capability()
        return cpu_bf16_supported(), f"this CPU (torch sees {capability}; no avx512_bf16 / amx_bf16 / bf16 flag)"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return False, f"{dev} (torch sees no GPU)"
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return bool(torch.cuda.is_bf16_supported()), f"{dev} ({torch.cuda.get_device_name(index)})"
    return False, f"the {dev.type} device (lnsr_viz offers bf16 on CPUs and CUDA GPUs only)"


def require_precision(precision: Any, device: Any, *, owner: str) -> str:
    """Check ``precision`` and, for ``'bf16'``, that ``device`` has bfloat16 hardware; call before any work.

    Raises
    ------
    ValueError
        An unknown precision, or ``'bf16'`` on hardware without bfloat16 instructions (the message says to use
        ``precision='fp32'``), as :func:`~lnsr_viz.utils.validation.check_device` refuses a missing GPU.
    """
    precision = check_precision(precision, owner=owner)
    if precision == "bf16":
        ok, what = bf16_support(device)
        if not ok:
            raise ValueError(f"{owner}: precision='bf16' needs bfloat16 hardware, and {what} lacks it; use "
                               "precision='fp32' (--precision fp32) on this machine.")
    return precision


def autocast(precision: str, device: Any) -> contextlib.AbstractContextManager[Any]:
    """The context for forward passes in ``precision`` on ``device``: ``torch.autocast`` for bf16, a no-op for fp32.

    Nothing is checked here (see :func:`require_precision`); fp32 gives ``contextlib.nullcontext()``, so the float32
    path is exactly what it was before precision existed.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dev = torch.device(device if device is not None else "cpu")
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)


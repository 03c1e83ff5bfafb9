"""The machine a benchmark ran on (printed and stored with every figure): CPU model, cores, torch threads, device."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine(device: torch.device | str = "cpu") -> dict[str, object]:
    """CPU model, cores, torch threads and versions; the GPU's name when ``device`` is CUDA."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, object] = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                               "torch": torch.__version__, "python": platform.python_version(),
                               "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:  # a shared machine's load inflates wall times: record it
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info

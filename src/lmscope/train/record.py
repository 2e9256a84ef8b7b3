"""The training record saved beside the model: config, data manifest, metrics, time, hardware."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from lmscope import __version__


def hardware(device: torch.device, precision: str, world_size: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "precision": precision,
        "world_size": world_size,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lmscope": __version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = round(
            torch.cuda.get_device_properties(device).total_memory / 2**30, 1
        )
    return info


def new_history() -> dict[str, list[dict[str, Any]]]:
    return {"train": [], "eval": [], "samples": []}

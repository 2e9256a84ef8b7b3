"""The training record saved beside the model: config, data manifest, metrics, time, hardware."""

from __future__ import annotations

import math
import os
import platform
from typing import TYPE_CHECKING, Any

import torch

from lmscope import __version__
from lmscope.train.session import count_parameters

if TYPE_CHECKING:
    from lmscope.train.trainer import Trainer


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


def training_record(
    trainer: Trainer,
    stopped: str,
    final_val: float | None,
    test_loss: float | None,
    exported_weights: str,
) -> dict[str, Any]:
    """Everything about a finished run, saved as training_record.json and in the model's
    metadata."""
    c, loop = trainer.config, trainer.loop
    return {
        "config": c.to_dict(),
        "model_source": trainer.model_source,
        "model_config": trainer.core.cfg.to_dict(),
        "parameters": count_parameters(trainer.core),
        "data_manifest": trainer.manifest,
        "metrics": loop.history,
        "final": {
            "step": loop.step,
            "stopped": stopped,
            "train_loss": loop.last_loss,
            "val_loss": final_val,
            "val_perplexity": None if final_val is None else math.exp(min(final_val, 700.0)),
            "test_loss": test_loss,
            "test_perplexity": None if test_loss is None else math.exp(min(test_loss, 700.0)),
            "best_step": loop.best_step,
            "best_val_loss": loop.best_val_loss,
            "exported_weights": exported_weights,
        },
        "tokens_seen": loop.tokens_seen,
        "clip_count": loop.clip_count,
        "resumed_from_steps": loop.resumed_from,
        "wall_time_s": loop.wall_time_s,
        "hardware": hardware(trainer.device, trainer.precision, trainer.dist.world_size),
        "finetune": {
            "init_from": c.init_from,
            "lora": None if c.finetune.lora is None else c.finetune.lora.model_dump(),
            "freeze_layers": c.finetune.freeze_layers,
            "freeze_embeddings": c.finetune.freeze_embeddings,
            "unfreeze_every": c.finetune.unfreeze_every,
        },
    }

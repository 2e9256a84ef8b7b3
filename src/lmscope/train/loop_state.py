"""The loop's own state (what resuming restores beyond weights, optimizer and RNG), the result of
a run, and the hooks for tests and tools."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmscope.train.batches import StreamPosition
from lmscope.train.errors import TrainConfigError
from lmscope.train.record import new_history

if TYPE_CHECKING:
    from lmscope.train.trainer import Trainer


class Callback:
    """Hooks for tests and tools; every method is optional."""

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None: ...

    def on_checkpoint(self, trainer: Trainer, step: int, path: Path) -> None: ...


@dataclass
class LoopState:
    """Everything about the loop (beyond weights, optimizer and RNG) that resuming restores."""

    step: int = 0
    position: StreamPosition = field(default_factory=StreamPosition)
    tokens_seen: int = 0
    clip_count: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    eval_count: int = 0
    interval_loss: float = 0.0  # loss sum and targets since the last log line
    interval_targets: int = 0
    last_loss: float | None = None
    wall_time_s: float = 0.0
    history: dict[str, list[dict[str, Any]]] = field(default_factory=new_history)
    resumed_from: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "position"}
        data["position"] = {"epoch": self.position.epoch, "cursor": self.position.cursor}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        position = known.pop("position", {"epoch": 0, "cursor": 0})
        return cls(position=StreamPosition(**position), **known)


@dataclass
class TrainResult:
    out_dir: Path
    model_dir: Path | None  # a full checkpoint lmscope can load (None: LoRA without merging)
    adapter_dir: Path | None
    record: dict[str, Any]
    rank: int = 0  # under torchrun, only rank 0 writes files
    checkpoint: Path | None = None  # the newest step checkpoint
    interrupted: bool = False  # stopped by Ctrl-C/SIGTERM: saved, not exported; resumable


def choose_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError(f"train.device is {requested!r} but no CUDA device is available")
    return device


def choose_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if supported else "fp32"
    return requested

"""Training-state files: optimizer, RNG and loop position, without pickle.

    optimizer.safetensors   every tensor of the optimizer state ("state.{index}.{key}")
    optimizer.json          parameter groups' settings, the parameter names per index, scalars
    rng.safetensors         torch RNG states per process (CPU, and CUDA where present)
    trainer_state.json      step, data position, best validation loss, history, python RNG, ...

trainer_state.json is written last: a checkpoint directory without it is incomplete.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmscope.train.errors import ResumeError

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
RNG_FILE = "rng.safetensors"
TRAINER_STATE = "trainer_state.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def save_optimizer(
    optimizer: torch.optim.Optimizer, names: list[list[str]], directory: Path
) -> None:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = _jsonable(value)
    save_file(tensors, str(directory / OPTIMIZER_TENSORS))
    meta = {
        "type": type(optimizer).__name__,
        "param_groups": _jsonable(state["param_groups"]),
        "param_names": names,
        "scalars": scalars,
    }
    (directory / OPTIMIZER_META).write_text(json.dumps(meta, indent=1))


def load_optimizer(
    optimizer: torch.optim.Optimizer, names: list[list[str]], directory: Path
) -> None:
    try:
        meta = json.loads((directory / OPTIMIZER_META).read_text())
        tensors = load_file(str(directory / OPTIMIZER_TENSORS))
    except (OSError, ValueError) as err:
        raise ResumeError(f"cannot read the optimizer state in {directory}: {err}") from err
    except Exception as err:  # safetensors' own error type
        raise ResumeError(f"cannot read the optimizer state in {directory}: {err}") from err
    if meta.get("param_names") != names:
        raise ResumeError(
            f"the checkpoint in {directory} optimised other parameters than this run "
            "(a different architecture, freezing or LoRA setting); resume with the config that "
            "wrote it, or start a fresh out_dir"
        )
    current = optimizer.state_dict()
    groups = meta["param_groups"]
    if len(groups) != len(current["param_groups"]):
        raise ResumeError(f"the optimizer in {directory} has a different number of groups")
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for key, value in meta.get("scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def capture_rng() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda.{i}"] = s
    return states


def save_rng(per_rank: list[dict[str, torch.Tensor]], directory: Path) -> None:
    tensors = {
        f"rank{rank}.{name}": t.contiguous()
        for rank, states in enumerate(per_rank)
        for name, t in states.items()
    }
    save_file(tensors, str(directory / RNG_FILE))


def restore_rng(directory: Path, rank: int) -> None:
    path = directory / RNG_FILE
    try:
        tensors = load_file(str(path))
    except Exception as err:  # missing or damaged file
        raise ResumeError(f"cannot read the RNG state {path}: {err}") from err
    prefix = f"rank{rank}."
    mine = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if "cpu" not in mine:
        raise ResumeError(
            f"{path} holds no RNG state for process {rank}: the run that wrote it used fewer "
            "processes; resume with the same number of processes"
        )
    torch.set_rng_state(mine["cpu"])
    cuda = [mine[f"cuda.{i}"] for i in range(len(mine) - 1) if f"cuda.{i}" in mine]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def python_rng_state() -> list[Any]:
    return _jsonable(random.getstate())  # type: ignore[no-any-return]


def restore_python_rng(state: list[Any]) -> None:
    version, internal, gauss = state
    random.setstate((version, tuple(internal), gauss))


def write_trainer_state(directory: Path, state: dict[str, Any]) -> None:
    (directory / TRAINER_STATE).write_text(json.dumps(state, indent=1))


def read_trainer_state(directory: Path) -> dict[str, Any]:
    path = directory / TRAINER_STATE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ResumeError(f"cannot read {path}: {err}; the checkpoint is incomplete") from err
    if not isinstance(data, dict) or "step" not in data:
        raise ResumeError(f"{path} is not a trainer state")
    return data

"""The layer table of a PyTorch module: path, type, shapes, parameters, multiply-adds.

Shapes are measured, not guessed: one forward pass with hooks on every module records the input
and output shapes. Multiply-adds (MACs) count the products of matrix multiplications and
convolutions (elementwise work such as norms and activations counts 0), divided by the number of
positions the pass ran on (tokens for a language model, 1 example otherwise). Parameters are
counted where they are owned (`recurse=False`) and a tensor shared by two modules (tied
embeddings) is counted once, at the first module that owns it; the second shows `tied_to`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Modules that hold neither parameters nor a computation worth a row (by class name, so hook
# points and containers of any library are left out).
_SKIP_NAMES = frozenset(
    {"Dropout", "Identity", "HookPoint", "ModuleDict", "ParameterDict", "ModuleList"}
)


def _shape(value: Any) -> list[int] | None:
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return list(value[0].shape)
    return None


def _macs(module: nn.Module, out_shape: list[int] | None) -> int:
    """Multiply-accumulates of one call, from the module's kind and its output shape."""
    if out_shape is None:
        return 0
    out_numel = 1
    for d in out_shape:
        out_numel *= d
    if isinstance(module, nn.Linear):
        return out_numel * module.in_features
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        return out_numel * (module.in_channels // module.groups) * kernel
    return 0


def _owned(module: nn.Module, seen: dict[int, str], prefix: str) -> tuple[int, int, str | None]:
    """(parameters, trainable, tied_to) of the tensors `module` owns directly."""
    count = trainable = 0
    tied = None
    for name, param in module.named_parameters(recurse=False):
        key = id(param)
        if key in seen:
            tied = seen[key]
            continue
        seen[key] = f"{prefix}.{name}" if prefix else name
        count += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return count, trainable, tied


def layer_table(
    module: nn.Module,
    run: Callable[[], Any] | None,
    positions: int,
    extra_macs: Callable[[str, nn.Module], int] | None = None,
) -> list[dict[str, Any]]:
    """One row per module that owns parameters or does work.

    run: calls the module once (None: no forward, shapes stay unknown).
    positions: what MACs are divided by (tokens of the pass, or 1).
    extra_macs: MACs of a module's own arithmetic that no child does (attention scores).
    """
    shapes: dict[str, tuple[list[int] | None, list[int] | None]] = {}
    calls: dict[str, int] = {}
    handles = []
    named = list(module.named_modules())
    if run is not None:
        for path, sub in named:

            def hook(mod: nn.Module, args: Any, out: Any, path: str = path) -> None:
                shapes.setdefault(path, (_shape(args), _shape(out)))
                calls[path] = calls.get(path, 0) + _macs(mod, _shape(out))

            handles.append(sub.register_forward_hook(hook))
        try:
            with torch.no_grad():
                run()
        finally:
            for handle in handles:
                handle.remove()
    rows: list[dict[str, Any]] = []
    seen: dict[int, str] = {}
    for path, sub in named:
        own, trainable, tied = _owned(sub, seen, path)
        leaf = not any(True for _ in sub.children())
        extra = extra_macs(path, sub) if extra_macs else 0
        skip = type(sub).__name__ in _SKIP_NAMES and not own and not tied
        if skip or (not own and not tied and not extra and not leaf):
            continue
        if not path:
            continue
        inp, out = shapes.get(path, (None, None))
        macs = calls.get(path, 0)
        row: dict[str, Any] = {
            "path": path,
            "type": _type_name(sub),
            "input_shape": inp,
            "output_shape": out,
            "parameters": own,
            "macs_per_position": round(macs / positions) + extra if run is not None else None,
            "trainable": None if own == 0 else trainable == own,
        }
        if tied:
            row["tied_to"] = tied
        if ".lora_" in f".{path}":
            row["adapter"] = "lora"
        if 0 < trainable < own:
            row["trainable_parameters"] = trainable
        rows.append(row)
    return rows


def _type_name(module: nn.Module) -> str:
    cls = type(module)
    origin = cls.__module__.split(".")[0]
    return cls.__name__ if origin in ("torch", "lmscope") else f"{origin}.{cls.__name__}"


def total_parameters(module: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters, each shared tensor counted once."""
    seen: set[int] = set()
    total = trainable = 0
    for param in module.parameters():  # parameters() already de-duplicates shared tensors
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return total, trainable

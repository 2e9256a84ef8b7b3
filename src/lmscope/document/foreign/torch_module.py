"""Facts of a PyTorch nn.Module given as `package.module:factory` (opt-in: this imports and
runs user code). Shapes come from one forward pass on zeros of `--input-shape`, if given;
multiply-adds are per example (divided by the first dimension, the batch)."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from lmscope.document.errors import DocError
from lmscope.document.skeleton import new_facts


def load_factory(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise DocError(f"cannot import {module_name!r} for {spec!r}: {err}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise DocError(f"{module_name!r} has no callable {attr!r}")
    return factory


def module_facts(spec: str, input_shape: list[int] | None) -> dict[str, Any]:
    import torch
    from torch import nn

    from lmscope.document.layers import layer_table, total_parameters

    built = load_factory(spec)()
    if not isinstance(built, nn.Module):
        raise DocError(f"{spec} returned {type(built).__name__}, not a torch.nn.Module")
    built.eval()
    run: Callable[[], Any] | None = None
    if input_shape:
        example = torch.zeros(*input_shape)
        run = functools.partial(built, example)

    try:
        rows = layer_table(built, run, input_shape[0] if input_shape else 1)
    except (RuntimeError, TypeError, ValueError) as err:
        raise DocError(f"{spec} failed on an input of shape {input_shape}: {err}") from None
    total, trainable = total_parameters(built)
    types: dict[str, int] = {}
    for row in rows:
        types[row["type"]] = types.get(row["type"], 0) + 1
    facts = new_facts(spec, "torch-module", spec, False)
    buffers = sum(b.numel() for b in built.buffers())
    facts["overview"].update(
        family=type(built).__name__,
        parameters={"total": total, "trainable": trainable, "buffers": buffers},
        dtype=str(next(built.parameters()).dtype).replace("torch.", "") if total else None,
    )
    facts["layers"] = {
        "positions": 1 if run is not None else None,
        "macs_unit": "per example",
        "rows": rows,
    }
    facts["architecture"] = {
        "kind": "PyTorch module",
        "class": f"{type(built).__module__}.{type(built).__name__}",
        "layer_types": dict(sorted(types.items(), key=lambda kv: -kv[1])),
        "input_shape": input_shape,
        "imports_user_code": True,
    }
    return facts

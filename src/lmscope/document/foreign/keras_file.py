"""Facts of a Keras 3 `.keras` file, read as a zip without TensorFlow or Keras.

The archive's config.json describes the layers (each with its `build_config.input_shape`) and
the compile settings (optimiser, loss, metrics); parameters follow each layer type's published
formula. Output shapes come from the next layer's recorded input (Sequential models) or from
the layer's shape rule.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

from lmscope.document.errors import DocError
from lmscope.document.skeleton import new_facts

Shape = list[Any]


def _units_in(shape: Shape | None) -> int:
    if not shape or shape[-1] is None:
        raise DocError("a Keras layer with weights has no known input width")
    return int(shape[-1])


def _rnn(cls: str, c: dict[str, Any], fan_in: int) -> int:
    u, bias = int(c["units"]), bool(c.get("use_bias", True))
    if cls == "LSTM":
        return 4 * (u * (fan_in + u) + (u if bias else 0))
    if cls == "GRU":
        per_bias = (2 if c.get("reset_after", True) else 1) * u if bias else 0
        return 3 * (u * (fan_in + u) + per_bias)
    return u * (fan_in + u) + (u if bias else 0)  # SimpleRNN


def layer_params(cls: str, c: dict[str, Any], shape: Shape | None) -> tuple[int, int]:
    """(trainable, non-trainable) parameters of one layer."""
    if cls == "Dense":
        n = _units_in(shape)
        return n * int(c["units"]) + (int(c["units"]) if c.get("use_bias", True) else 0), 0
    if cls.startswith("Conv") and cls[-2:] in ("1D", "2D", "3D") and "Transpose" not in cls:
        kernel = math.prod(c["kernel_size"])
        channels = _units_in(shape) // int(c.get("groups", 1))
        filters = int(c["filters"])
        return kernel * channels * filters + (filters if c.get("use_bias", True) else 0), 0
    if cls == "Embedding":
        return int(c["input_dim"]) * int(c["output_dim"]), 0
    if cls in ("LSTM", "GRU", "SimpleRNN"):
        return _rnn(cls, c, _units_in(shape)), 0
    if cls == "Bidirectional":
        inner = c["layer"]
        trainable, fixed = layer_params(inner["class_name"], inner["config"], shape)
        return 2 * trainable, 2 * fixed
    if cls == "BatchNormalization":
        ch = _units_in(shape)
        learned = int(bool(c.get("scale", True))) + int(bool(c.get("center", True)))
        return learned * ch, 2 * ch
    if cls == "LayerNormalization":
        ch = _units_in(shape)
        return (int(bool(c.get("scale", True))) + int(bool(c.get("center", True)))) * ch, 0
    return 0, 0


def _out_shape(cls: str, c: dict[str, Any], shape: Shape | None) -> Shape | None:
    if shape is None:
        return None
    if cls == "Dense":
        return [*shape[:-1], c["units"]]
    if cls == "Embedding":
        return [*shape, c["output_dim"]]
    if cls in ("LSTM", "GRU", "SimpleRNN"):
        return (
            [shape[0], shape[1], c["units"]]
            if c.get("return_sequences")
            else [shape[0], c["units"]]
        )
    if cls == "Flatten":
        rest = shape[1:]
        return [shape[0], math.prod(rest) if all(isinstance(d, int) for d in rest) else None]
    if cls.startswith("Conv") and cls[-2:] in ("1D", "2D", "3D"):
        strides = c.get("strides", [1] * len(c["kernel_size"]))
        spatial: list[int | None] = []
        for size, k, s in zip(shape[1:-1], c["kernel_size"], strides, strict=False):
            if size is None:
                spatial.append(None)
            elif c.get("padding", "valid") == "same":
                spatial.append(-(-size // s))
            else:
                spatial.append((size - k) // s + 1)
        return [shape[0], *spatial, c["filters"]]
    if cls in ("Dropout", "Activation", "BatchNormalization", "LayerNormalization", "ReLU"):
        return list(shape)
    return None


def read_archive(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            names = archive.namelist()
            meta = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
    except (zipfile.BadZipFile, KeyError, OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DocError(
            f"{path} is not a readable .keras file (a zip with config.json): {err}"
        ) from None
    if not isinstance(config, dict) or "config" not in config:
        raise DocError(f"{path}: config.json does not describe a Keras model")
    return config, meta


def keras_facts(path: Path) -> dict[str, Any]:
    config, meta = read_archive(path)
    layers = config["config"].get("layers") or []
    rows: list[dict[str, Any]] = []
    total = trainable = 0
    types: dict[str, int] = {}
    for i, layer in enumerate(layers):
        cls, c = layer.get("class_name", "?"), layer.get("config") or {}
        if cls == "InputLayer":
            continue
        shape = (layer.get("build_config") or {}).get("input_shape")
        learned, fixed = layer_params(cls, c, shape)
        nxt = (
            layers[i + 1].get("build_config", {}).get("input_shape")
            if i + 1 < len(layers)
            else None
        )
        out = _out_shape(cls, c, shape) or (
            nxt if config.get("class_name") == "Sequential" else None
        )
        rows.append({"path": c.get("name", f"layer_{i}"), "type": cls, "input_shape": shape,
                     "output_shape": out, "parameters": learned + fixed,
                     "macs_per_position": None, "trainable": bool(c.get("trainable", True))})  # fmt: skip
        total += learned + fixed
        trainable += learned if c.get("trainable", True) else 0
        types[cls] = types.get(cls, 0) + 1
    compile_cfg = config.get("compile_config") or {}
    optimizer = compile_cfg.get("optimizer") or {}
    facts = new_facts(path.stem, "keras", str(path), False)
    facts["overview"].update(
        family=f"keras {config.get('class_name', 'Model')}",
        parameters={"total": total, "trainable": trainable, "non_trainable": total - trainable},
        file_size_bytes=path.stat().st_size,
    )
    facts["layers"] = {"positions": None, "macs_unit": "per example", "rows": rows}
    facts["architecture"] = {
        "kind": f"Keras {config.get('class_name', 'model')}",
        "layer_types": types,
        "keras_version": meta.get("keras_version"),
        "optimizer": optimizer.get("class_name") if isinstance(optimizer, dict) else optimizer,
        "learning_rate": (optimizer.get("config") or {}).get("learning_rate")
        if isinstance(optimizer, dict)
        else None,
        "loss": compile_cfg.get("loss"),
        "metrics": compile_cfg.get("metrics"),
    }
    return facts

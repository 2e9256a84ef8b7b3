"""Shared builders for the document tests (no tests here): tiny checkpoints, a trained run, a
hand-made .keras file, an eval report, and an independent number extractor."""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmscope.model.config import ModelConfig
from lmscope.model.presets import TINY_FAMILIES
from lmscope.model.transformer import Transformer
from lmscope.zoo.checkpoint import save_checkpoint

ONNX_PUBLISHED = {  # parameters as published for the original networks
    "light_bvlc_alexnet.onnx": 60_965_224,
    "light_vgg19.onnx": 143_667_240,
    "light_resnet50.onnx": 25_557_032,
    "light_inception_v1.onnx": 6_998_552,
    "light_squeezenet.onnx": 1_235_496,  # SqueezeNet 1.1
}


def onnx_light_dir() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def tiny_checkpoint(root: Path, preset: str, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    out = root / preset
    save_checkpoint(Transformer(ModelConfig.from_name(preset)), out)
    return out


def all_tiny_checkpoints(root: Path) -> list[Path]:
    return [tiny_checkpoint(root, name) for name in TINY_FAMILIES]


def trained_checkpoint(root: Path, steps: int = 20) -> Path:
    """A 2-layer model trained for `steps` steps on a small corpus: model dir with its record."""
    from lmscope.data.prepare import PrepareConfig, prepare
    from lmscope.train.config import config_from_dict
    from lmscope.train.trainer import Trainer

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis"]
    (root / "corpus.txt").write_text(
        "\n\n".join(" ".join(rng.choice(words, 40)) for _ in range(120))
    )
    prepare(PrepareConfig(inputs=[str(root / "corpus.txt")], out=str(root / "data"),
                          vocab_size=300, progress=False))  # fmt: skip
    config = {
        "out_dir": str(root / "run"),
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2},
        "data": {"dir": str(root / "data"), "context": 32},
        "train": {"max_steps": steps, "batch_size": 4, "seed": 1},
        "optim": {"lr": 3e-3, "weight_decay": 0.05},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "eval": {"every": 10, "batches": 2},
        "checkpoint": {"every": 10, "keep_last": 2},
        "log": {"every": 5, "tensorboard": False, "progress": False, "mlflow": "off"},
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Trainer(config_from_dict(config)).run()
    finally:
        torch.set_num_threads(threads)
    assert result.model_dir is not None
    return Path(result.model_dir)


def eval_report(directory: Path, imbalanced: bool = True) -> Path:
    """A report.json in the `lmscope eval` schema, with a classification task."""
    support = {"pos": 90, "neg": 10} if imbalanced else {"pos": 50, "neg": 50}
    report = {
        "schema": 1,
        "model": {"name": "tiny"},
        "tasks": [
            {"name": "wikitext-mini", "kind": "perplexity", "n_items": 40, "data_hash": "ab12",
             "settings": {}, "metrics": {"bits_per_byte": {"value": 1.84, "ci95": [1.71, 1.97], "n": 40}},
             "details": {}},
            {"name": "sentiment", "kind": "classification", "n_items": 100, "data_hash": "cd34",
             "settings": {}, "metrics": {"accuracy": {"value": 0.82, "ci95": [0.74, 0.89], "n": 100}},
             "details": {"labels": ["pos", "neg"], "confusion": [[80, 10], [8, 2]],
                         "per_class": {"pos": {"precision": 0.91, "recall": 0.89, "f1": 0.9, "support": support["pos"]},
                                       "neg": {"precision": 0.17, "recall": 0.2, "f1": 0.18, "support": support["neg"]}},
                         "label_distribution": support}},
        ],
    }  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "report.json"
    path.write_text(json.dumps(report))
    return path


# A Keras 3 Sequential model as `model.save("m.keras")` writes its config, with the expected
# parameters of each layer worked out by hand from Keras' layer formulas.
KERAS_LAYERS: list[tuple[dict[str, Any], int]] = [
    ({"class_name": "InputLayer", "config": {"name": "input", "batch_shape": [None, 28, 28, 1]}}, 0),
    ({"class_name": "Conv2D", "config": {"name": "conv", "filters": 8, "kernel_size": [3, 3],
      "strides": [1, 1], "padding": "valid", "use_bias": True, "trainable": True},
      "build_config": {"input_shape": [None, 28, 28, 1]}}, 3 * 3 * 1 * 8 + 8),
    ({"class_name": "BatchNormalization", "config": {"name": "bn", "trainable": True},
      "build_config": {"input_shape": [None, 26, 26, 8]}}, 4 * 8),
    ({"class_name": "Flatten", "config": {"name": "flat"}, "build_config": {"input_shape": [None, 26, 26, 8]}}, 0),
    ({"class_name": "Dense", "config": {"name": "dense", "units": 16, "use_bias": True, "trainable": True},
      "build_config": {"input_shape": [None, 5408]}}, 5408 * 16 + 16),
    ({"class_name": "Dropout", "config": {"name": "drop", "rate": 0.5}, "build_config": {"input_shape": [None, 16]}}, 0),
    ({"class_name": "Dense", "config": {"name": "out", "units": 10, "use_bias": True, "trainable": True},
      "build_config": {"input_shape": [None, 16]}}, 16 * 10 + 10),
]  # fmt: skip
KERAS_RNN_LAYERS: list[tuple[dict[str, Any], int]] = [
    ({"class_name": "Embedding", "config": {"name": "emb", "input_dim": 1000, "output_dim": 16},
      "build_config": {"input_shape": [None, 20]}}, 16000),
    ({"class_name": "LSTM", "config": {"name": "lstm", "units": 32, "return_sequences": True, "use_bias": True},
      "build_config": {"input_shape": [None, 20, 16]}}, 4 * (32 * (16 + 32) + 32)),
    ({"class_name": "GRU", "config": {"name": "gru", "units": 8, "use_bias": True, "reset_after": True},
      "build_config": {"input_shape": [None, 20, 32]}}, 3 * (8 * (32 + 8) + 2 * 8)),
    ({"class_name": "Dense", "config": {"name": "out", "units": 1},
      "build_config": {"input_shape": [None, 8]}}, 9),
]  # fmt: skip


def keras_file(path: Path, layers: list[tuple[dict[str, Any], int]] = KERAS_LAYERS) -> int:
    """Write a .keras zip (config.json, metadata.json, an empty weights file); return the
    expected parameter count."""
    config = {
        "module": "keras", "class_name": "Sequential",
        "config": {"name": "sequential", "layers": [layer for layer, _ in layers]},
        "compile_config": {"optimizer": {"class_name": "Adam", "config": {"learning_rate": 0.001}},
                           "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]},
    }  # fmt: skip
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.4.1"}))
        archive.writestr("model.weights.h5", b"")
    return sum(n for _, n in layers)


# ---- an independent number check (not the verifier's code) ------------------------------------

_NUM = re.compile(r"\d+(?:[.,]\d+)*")


def fact_numbers(facts: Any) -> list[float]:
    """Every number in the facts: numeric leaves, numbers written in strings, list lengths."""
    found: list[float] = []

    def walk(v: Any) -> None:
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, (int, float)):
            found.append(float(v))
        elif isinstance(v, str):
            found.extend(float(m.replace(",", "")) for m in re.findall(r"\d+(?:\.\d+)?", v))
        elif isinstance(v, dict):
            found.append(float(len(v)))
            for k, item in v.items():
                walk(str(k))
                walk(item)
        elif isinstance(v, list):
            found.append(float(len(v)))
            for item in v:
                walk(item)

    walk(facts)
    return found


def unsupported_numbers(sentence: str, facts: Any) -> list[str]:
    """Numbers in `sentence` that no fact number explains, allowing for the rounding shown and
    for k/M/B, % and minute/hour scalings (signs are not compared: '-' also joins ranges)."""
    values = [abs(v) for v in fact_numbers(facts)]
    bad = []
    for literal in _NUM.findall(sentence):
        text = literal.replace(",", "")
        if text.count(".") > 1:
            bad.append(literal)
            continue
        x = float(text)
        decimals = len(text.split(".")[1]) if "." in text else 0
        tol = 0.5 * 10.0**-decimals + 1e-9
        scales = (1.0, 1e3, 1e6, 1e9, 0.01, 60.0, 3600.0, 1e-3)
        if not any(math.isclose(v, x * s, abs_tol=tol * s) or abs(v - x * s) <= tol * s
                   for v in values for s in scales):  # fmt: skip
            bad.append(literal)
    return bad

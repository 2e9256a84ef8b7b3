"""Where the facts came from: source files with their hashes, lmscope's version, when."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmscope import __version__

# Files that carry a model's weights or its description, in the order they are reported.
MODEL_FILE_PATTERNS = (
    "config.json",
    "metadata.json",
    "training_record.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "*.gguf",
    "*.onnx",
    "*.keras",
)
_CHUNK = 1 << 22
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".onnx", ".keras")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(source: Path) -> list[Path]:
    """The files of a model directory worth hashing (or the file itself)."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        return []
    found: list[Path] = []
    for pattern in MODEL_FILE_PATTERNS:
        for path in sorted(source.glob(pattern)):
            if path.is_file() and path not in found:
                found.append(path)
    return found


def file_entries(paths: list[Path]) -> list[dict[str, Any]]:
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in paths]


def weights_checksum(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One checksum for the weights: the sha256 of the weight file, or of the sorted hashes of
    several (sharded) weight files."""
    weights = [e for e in entries if e["path"].endswith(WEIGHT_SUFFIXES)]
    if not weights:
        return None
    if len(weights) == 1:
        return {"algorithm": "sha256", "value": weights[0]["sha256"], "of": weights[0]["path"]}
    joined = "".join(sorted(e["sha256"] for e in weights)).encode()
    return {
        "algorithm": "sha256",
        "value": hashlib.sha256(joined).hexdigest(),
        "of": f"{len(weights)} weight files (sha256 of their sorted sha256s)",
    }


def provenance(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "files": entries,
        "lmscope_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

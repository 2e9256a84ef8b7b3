"""Parameters as stored in a Hugging Face directory's safetensors files, read from the file
headers only (no tensor is loaded). This is the count `num_parameters()` gives for the original
model (save_pretrained writes a tied tensor once), which can differ from the converted canonical
model: OPT, for one, keeps 2 reserved rows in its position table that the converter drops."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

_HEADER_LIMIT = 100 << 20


def safetensors_numel(path: Path) -> int | None:
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > _HEADER_LIMIT:
                return None
            header = json.loads(handle.read(size))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return sum(
        math.prod(info["shape"])
        for name, info in header.items()
        if name != "__metadata__" and isinstance(info, dict)
    )


def stored_parameters(directory: Path) -> int | None:
    """Sum over the directory's safetensors files, or None when there are none (or one is
    unreadable)."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    counts = [safetensors_numel(f) for f in files]
    if any(c is None for c in counts):
        return None
    return sum(c for c in counts if c is not None)

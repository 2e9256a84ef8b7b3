"""The data manifest: what went in, what was done to it, and what came out (with hashes).

Training copies it into its record, so a model's documentation can describe its data pipeline.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lmscope import __version__
from lmscope.data.errors import DataError
from lmscope.files import atomic_write_text

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


def new_manifest() -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lmscope_version": __version__,
        "python": platform.python_version(),
    }


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    path = directory / MANIFEST_FILE
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise DataError(
            f"{directory} is not a prepared data directory (no {MANIFEST_FILE}); "
            "create one with `lmscope data prepare FILES --out DIR`"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if not isinstance(manifest, dict):
        raise DataError(f"{path} must hold a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path} has an unknown format (format_version {manifest.get('format_version')!r}); "
            "prepare the data again with this version of lmscope"
        )
    return manifest

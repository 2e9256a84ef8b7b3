"""The base of every typed explain result: a dataclass that serialises to JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonResult:
    """Mixin for result dataclasses: `to_dict()` (plain JSON types) and `to_json()`."""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every result overrides it
        raise NotImplementedError

    def to_json(self, path: str | Path | None = None, *, indent: int | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text)
        return text


def rounded(values: Any, digits: int = 7) -> Any:
    """Floats (or nested lists of floats) rounded for compact JSON."""
    if isinstance(values, float):
        return round(values, digits)
    if isinstance(values, list):
        return [rounded(v, digits) for v in values]
    return values

"""Cleaning: Unicode normalisation, control characters, deduplication and length filters.

Works on records (see `lmscope.data.sources`): the text fields of a record are "text",
"prompt", "completion" and each message's "content"; everything else passes through untouched.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from lmscope.data.errors import DataError

NormalForm = Literal["NFC", "NFKC", "NFD", "NFKD", "none"]
Dedup = Literal["none", "lines", "documents", "both"]
NORMAL_FORMS = ("NFC", "NFKC", "NFD", "NFKD", "none")
DEDUP_MODES = ("none", "lines", "documents", "both")
# Unicode category Cc (C0, DEL, C1) except newline and tab, plus the byte-order mark.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")


@dataclass
class CleanSettings:
    normalize: str = "NFC"
    strip_control: bool = True
    dedup: str = "none"
    dedup_line_min_chars: int = 1  # line deduplication ignores shorter lines (e.g. speaker names)
    min_chars: int = 1
    max_chars: int | None = None

    def validate(self) -> None:
        if self.normalize not in NORMAL_FORMS:
            raise DataError(f"normalize must be one of {NORMAL_FORMS}, got {self.normalize!r}")
        if self.dedup not in DEDUP_MODES:
            raise DataError(f"dedup must be one of {DEDUP_MODES}, got {self.dedup!r}")
        if self.min_chars < 0:
            raise DataError(f"min_chars must be >= 0, got {self.min_chars}")
        if self.max_chars is not None and self.max_chars < max(self.min_chars, 1):
            raise DataError(
                f"max_chars ({self.max_chars}) must be at least min_chars ({self.min_chars})"
            )


@dataclass
class CleanStats:
    records_in: int = 0
    records_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    control_chars_removed: int = 0
    duplicate_lines_removed: int = 0
    duplicate_records_removed: int = 0
    too_short_removed: int = 0
    too_long_removed: int = 0
    removed_by_source: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_text(text: str, settings: CleanSettings, stats: CleanStats | None = None) -> str:
    """Normalise line ends and Unicode, drop control characters (keeping newlines and tabs)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if settings.normalize != "none":
        text = unicodedata.normalize(settings.normalize, text)  # type: ignore[arg-type]
    if settings.strip_control:
        text, removed = _CONTROL.subn("", text)
        if stats is not None:
            stats.control_chars_removed += removed
    return text


def map_text_fields(record: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """A copy of `record` with `fn` applied to every text field."""
    out = dict(record)
    for key in ("text", "prompt", "completion"):
        if key in out:
            if not isinstance(out[key], str):
                raise DataError(f"field '{key}' must be a string{_where(record)}")
            out[key] = fn(out[key])
    if "messages" in out:
        messages = out["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DataError(
                f"'messages' must be a list of {{role, content}} objects{_where(record)}"
            )
        out["messages"] = [{**m, "content": fn(str(m.get("content", "")))} for m in messages]
    return out


def text_length(record: dict[str, Any]) -> int:
    total = sum(len(record[key]) for key in ("text", "prompt", "completion") if key in record)
    return total + sum(len(m["content"]) for m in record.get("messages", []))


def record_key(record: dict[str, Any]) -> str:
    """A content hash of a record's text fields: equal records share a key."""
    payload = {k: record[k] for k in ("text", "prompt", "completion", "messages") if k in record}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def _where(record: dict[str, Any]) -> str:
    if "_line" in record:
        return f" ({record.get('_source')}:{record['_line']})"
    return ""


def _dedup_lines(text: str, seen: set[str], min_chars: int, stats: CleanStats) -> str:
    kept = []
    for line in text.split("\n"):
        key = line.strip()
        if len(key) >= max(min_chars, 1):
            if key in seen:
                stats.duplicate_lines_removed += 1
                continue
            seen.add(key)
        kept.append(line)
    return "\n".join(kept)


def clean_records(
    records: list[dict[str, Any]], settings: CleanSettings
) -> tuple[list[dict[str, Any]], CleanStats]:
    """Clean, deduplicate and filter records, keeping their order."""
    settings.validate()
    stats = CleanStats(records_in=len(records))
    seen_lines: set[str] = set()
    seen_records: set[str] = set()
    out: list[dict[str, Any]] = []

    def drop(record: dict[str, Any], counter: str) -> None:
        setattr(stats, counter, getattr(stats, counter) + 1)
        source = str(record.get("_source", "?"))
        stats.removed_by_source[source] = stats.removed_by_source.get(source, 0) + 1

    for record in records:
        stats.chars_in += text_length(map_text_fields(record, str))  # also checks field types
        cleaned = map_text_fields(record, lambda t: clean_text(t, settings, stats))
        if settings.dedup in ("lines", "both"):
            cleaned = map_text_fields(
                cleaned,
                lambda t: _dedup_lines(t, seen_lines, settings.dedup_line_min_chars, stats),
            )
        if "text" in cleaned:  # plain documents lose outer whitespace; completions keep theirs
            cleaned["text"] = cleaned["text"].strip()
        length = text_length(cleaned)
        if length < max(settings.min_chars, 1):
            drop(record, "too_short_removed")
            continue
        if settings.max_chars is not None and length > settings.max_chars:
            drop(record, "too_long_removed")
            continue
        if settings.dedup in ("documents", "both"):
            key = record_key(cleaned)
            if key in seen_records:
                drop(record, "duplicate_records_removed")
                continue
            seen_records.add(key)
        stats.chars_out += length
        out.append(cleaned)
    stats.records_out = len(out)
    return out, stats

"""Read corpora into records: plain-text files or JSONL, refusing binary or empty input.

A record is one document (a dict with at least "text") or one instruction example (a dict with
"prompt"/"completion" or "messages"). Text files are cut into documents by `doc_split`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmscope.data.errors import DataError

FileFormat = Literal["auto", "text", "jsonl"]
DocSplit = Literal["file", "paragraph", "line"]
FILE_FORMATS = ("auto", "text", "jsonl")
DOC_SPLITS = ("file", "paragraph", "line")

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")
_BINARY_PROBE = 8192


@dataclass(frozen=True)
class SourceFile:
    """One input file as read: its path, size in bytes and format."""

    path: Path
    size: int
    format: str


def detect_format(path: Path, requested: str) -> str:
    if requested not in FILE_FORMATS:
        raise DataError(f"format must be one of {FILE_FORMATS}, got {requested!r}")
    if requested != "auto":
        return requested
    return "jsonl" if path.suffix.lower() in {".jsonl", ".ndjson"} else "text"


def read_text_file(path: Path) -> str:
    """The file's text; a clear DataError for a missing, binary or non-UTF-8 file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"corpus file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory; give the text or JSONL files inside it") from None
    except OSError as err:
        raise DataError(f"cannot read corpus file {path}: {err}") from err
    nul = raw.find(b"\x00", 0, _BINARY_PROBE)
    if nul >= 0:
        raise DataError(
            f"{path} looks binary (NUL byte at offset {nul}); give UTF-8 text or JSONL files"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`) or check that it is not a binary file"
        ) from None


def split_documents(text: str, doc_split: str) -> list[str]:
    """Cut one file's text into documents."""
    if doc_split == "file":
        return [text]
    if doc_split == "paragraph":
        return _PARAGRAPH_BREAK.split(text)
    if doc_split == "line":
        return text.splitlines()
    raise DataError(f"doc_split must be one of {DOC_SPLITS}, got {doc_split!r}")


def _jsonl_records(path: Path, text: str, text_key: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict):
            raise DataError(f"{path}:{number}: each JSONL line must be an object or a string")
        if text_key != "text" and text_key in item:
            item = {**item, "text": item[text_key]}
        if not any(key in item for key in ("text", "prompt", "messages")):
            raise DataError(
                f"{path}:{number}: no '{text_key}', 'prompt'/'completion' or 'messages' field; "
                "set --text-key to the field that holds the text"
            )
        item["_line"] = number
        yield item


def read_records(
    paths: Sequence[str | Path],
    *,
    file_format: str = "auto",
    doc_split: str = "paragraph",
    text_key: str = "text",
) -> tuple[list[dict[str, Any]], list[SourceFile]]:
    """All records from `paths`, in order, and a description of each file read."""
    if not paths:
        raise DataError("no input files given; pass one or more text or JSONL files")
    if doc_split not in DOC_SPLITS:
        raise DataError(f"doc_split must be one of {DOC_SPLITS}, got {doc_split!r}")
    records: list[dict[str, Any]] = []
    files: list[SourceFile] = []
    for raw_path in paths:
        path = Path(raw_path)
        fmt = detect_format(path, file_format)
        text = read_text_file(path)
        files.append(SourceFile(path=path, size=path.stat().st_size, format=fmt))
        if fmt == "jsonl":
            for item in _jsonl_records(path, text, text_key):
                item["_source"] = str(path)
                records.append(item)
        else:
            records.extend(
                {"text": doc, "_source": str(path)} for doc in split_documents(text, doc_split)
            )
    return records, files

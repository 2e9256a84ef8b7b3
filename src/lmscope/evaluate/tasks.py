"""Task files: what to evaluate and on which items.

A task file is plain YAML (one task, or `tasks: [...]`); a `.txt` file given in place of a task
file means "the perplexity of this text". Data comes from the task file itself (`items:`), a
JSONL file, or a text file split into documents. Every task carries a content hash of its items,
so that a number is never shown without knowing exactly what it was computed on.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmscope.evaluate.errors import EvalError

TaskKind = Literal["perplexity", "generation", "classification", "qa"]
GENERATION_METRICS = ("bleu", "chrf", "ter")
QA_METRICS = ("exact_match", "contains")
HEADING = re.compile(r"^ = [^=].* = $")  # a WikiText top-level heading line


class TaskSpec(BaseModel):
    """One evaluation task. Paths are relative to the task file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: TaskKind
    data: str | None = Field(default=None, description="a .jsonl or .txt file")
    items: list[dict[str, Any]] | None = None
    limit: int | None = Field(default=None, ge=1, description="use the first N items only")
    # perplexity
    split: Literal["none", "lines", "paragraphs", "headings"] = "none"
    text_field: str = "text"
    window: int | None = Field(default=None, ge=2, description="tokens per window (default n_ctx)")
    stride: int | None = Field(default=None, ge=1, description="sliding window step")
    # generation, classification, qa
    prompt_field: str = "prompt"
    reference_field: str = "reference"
    prompt_template: str = "{prompt}"
    max_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    stop: list[str] = Field(default_factory=list)
    metrics: list[str] | None = None
    # classification
    labels: list[str] | None = None
    label_field: str = "label"
    method: Literal["loglik", "generate"] = "loglik"
    label_prefix: str = " "
    samples: int = Field(default=5, ge=0, description="generation samples kept in the report")
    base_dir: str = Field(default=".", exclude=True)

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if (self.data is None) == (self.items is None):
            raise ValueError("give exactly one of `data` (a file) or `items` (a list)")
        if self.kind == "classification":
            if not self.labels or len(self.labels) < 2:
                raise ValueError("a classification task needs `labels` with at least two entries")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("`labels` has duplicates")
        allowed = {"generation": GENERATION_METRICS, "qa": QA_METRICS}.get(self.kind)
        if self.metrics is not None:
            if allowed is None:
                raise ValueError(f"`metrics` is only for generation and qa tasks, not {self.kind}")
            unknown = sorted(set(self.metrics) - set(allowed))
            if unknown:
                raise ValueError(f"unknown metrics {unknown}; choose from {list(allowed)}")
        if self.stride is not None and self.window is not None and self.stride > self.window:
            raise ValueError("`stride` cannot exceed `window`")
        return self

    def chosen_metrics(self) -> tuple[str, ...]:
        if self.metrics:
            return tuple(self.metrics)
        return {"generation": GENERATION_METRICS, "qa": QA_METRICS}.get(self.kind, ())

    def load_items(self) -> list[dict[str, Any]]:
        """The task's items, validated for the fields its kind needs."""
        items = list(self.items) if self.items is not None else self._read_data()
        if self.limit is not None:
            items = items[: self.limit]
        if not items:
            raise EvalError(f"task {self.name!r}: no items to evaluate")
        for number, item in enumerate(items, 1):
            for name in self._needed_fields():
                value = item.get(name)
                if not isinstance(value, str) or (name != self.text_field and not value.strip()):
                    raise EvalError(
                        f"task {self.name!r}: item {number} has no text in field {name!r}; "
                        f"every item needs {self._needed_fields()}"
                    )
            if self.kind == "classification" and item[self.label_field] not in (self.labels or []):
                raise EvalError(
                    f"task {self.name!r}: item {number} has label {item[self.label_field]!r}, "
                    f"which is not one of {self.labels}"
                )
        return items

    def _needed_fields(self) -> list[str]:
        if self.kind == "perplexity":
            return [self.text_field]
        named = [f for _, f, _, _ in string.Formatter().parse(self.prompt_template) if f]
        fields = [self.prompt_field if f == "prompt" else f for f in dict.fromkeys(named)]
        last = self.label_field if self.kind == "classification" else self.reference_field
        return [*fields, last]

    def _read_data(self) -> list[dict[str, Any]]:
        assert self.data is not None
        path = Path(self.base_dir) / self.data
        if not path.is_file():
            raise EvalError(f"task {self.name!r}: data file {path} does not exist")
        if path.suffix == ".jsonl":
            return _read_jsonl(path, self.name)
        text = _read_text(path)
        return [{self.text_field: doc} for doc in split_documents(text, self.split)]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise EvalError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def _read_jsonl(path: Path, task: str) -> list[dict[str, Any]]:
    items = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalError(
                f"task {task!r}: {path} line {number} is not JSON ({err.msg})"
            ) from None
        if not isinstance(item, dict):
            raise EvalError(f"task {task!r}: {path} line {number} is not a JSON object")
        items.append(item)
    return items


def split_documents(text: str, how: str) -> list[str]:
    """Split a text into documents: whole, by line, by blank-line paragraph, or at WikiText's
    top-level headings (` = Title = `), dropping empty ones."""
    docs: list[str]
    if how == "none":
        docs = [text]
    elif how == "lines":
        docs = text.splitlines()
    elif how == "paragraphs":
        docs = re.split(r"\n\s*\n", text)
    else:
        docs = []
        current: list[str] = []
        for line in text.splitlines(keepends=True):
            if HEADING.match(line.rstrip("\n")) and any(part.strip() for part in current):
                docs.append("".join(current))
                current = []
            current.append(line)
        docs.append("".join(current))
    return [doc for doc in docs if doc.strip()]


def content_hash(items: list[dict[str, Any]]) -> str:
    """sha256 of the items as canonical JSON: equal hashes mean equal data."""
    blob = json.dumps(items, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()


def load_tasks(path: str | Path) -> list[TaskSpec]:
    """Task specs from a YAML task file, or a perplexity task for a plain text file."""
    path = Path(path)
    if not path.exists():
        raise EvalError(f"task file {path} does not exist")
    if path.suffix in (".txt", ".md", ".text"):
        return [
            TaskSpec(name=path.stem, kind="perplexity", data=path.name, base_dir=str(path.parent))
        ]
    if path.suffix == ".jsonl":
        raise EvalError(f"{path} is data, not a task file; name it in a task file's `data:` field")
    try:
        raw = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as err:
        raise EvalError(f"task file {path} is not valid YAML: {err}") from None
    if raw is None:
        raise EvalError(f"task file {path} is empty; see examples/tasks/ for the format")
    entries = raw.get("tasks", [raw]) if isinstance(raw, dict) else raw
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise EvalError(f"task file {path}: expected a mapping or `tasks:` with a list of mappings")
    if not any("kind" in entry for entry in entries):
        raise EvalError(
            f"{path} is not a task file (no task has a `kind:`); see examples/tasks/ for the "
            "format, or give a .txt file for its perplexity"
        )
    specs = []
    for entry in entries:
        try:
            specs.append(TaskSpec(**{**entry, "base_dir": str(path.parent)}))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "task"
            name = entry.get("name", "?")
            raise EvalError(f"task file {path}, task {name!r}: {where}: {first['msg']}") from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise EvalError(f"task file {path}: task names must be unique, got {names}")
    return specs

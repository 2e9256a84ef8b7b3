"""pydantic's validation errors as one line that names the dotted key and says what to do.

`describe(err, TrainConfig)` turns the first error into e.g.
    unknown config key 'optim.learning_rate'; did you mean 'optim.lr'? (known keys here: ...)
    train.batch_size must be >= 1, got 0
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

# Names people bring from other trainers -> ours, for "did you mean" hints.
ALIASES = {
    "learning_rate": "lr",
    "batch": "batch_size",
    "micro_batch_size": "batch_size",
    "steps": "max_steps",
    "max_iters": "max_steps",
    "gradient_accumulation_steps": "grad_accum",
    "warmup": "warmup_steps",
    "max_grad_norm": "grad_clip",
    "clip": "grad_clip",
    "block_size": "context",
    "seq_len": "context",
}


def section_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`LoraSection | None` -> LoraSection)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            found = section_class(option)
            if found is not None:
                return found
    return None


def section_at(root: type[BaseModel], keys: list[str]) -> type[BaseModel] | None:
    """The section class reached by following `keys` from `root` (None: not a section)."""
    cls: type[BaseModel] | None = root
    for key in keys:
        if cls is None or key not in cls.model_fields:
            return None
        cls = section_class(cls.model_fields[key].annotation)
    return cls


def dotted(loc: tuple[int | str, ...]) -> str:
    """('optim', 'betas', 0) -> 'optim.betas[0]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def unknown_key_message(where: str, key: str, known: list[str]) -> str:
    """`unknown config key 'a.b'; did you mean 'a.c'? (known keys here: ...)`."""
    # the closest known key, or the known key behind the closest alias (lerning_rate -> lr)
    candidates = {k: k for k in known} | {a: t for a, t in ALIASES.items() if t in known}
    close = [candidates[c] for c in difflib.get_close_matches(key, list(candidates), n=1)]
    full = f"{where}.{key}" if where else key
    hint = f"; did you mean '{f'{where}.{close[0]}' if where else close[0]}'?" if close else ""
    return f"unknown config key '{full}'{hint} (known keys here: {', '.join(known)})"


def _bound(kind: str, bound: Any) -> str:
    if kind == "gt" and bound == 0:
        return "must be a positive number"
    return f"must be {dict(gt='>', ge='>=', lt='<', le='<=')[kind]} {bound}"


def _what(error: Any) -> str:
    """The 'must be ...' part of one pydantic error."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind.startswith(("int_", "float_", "bool_", "string_", "list_", "dict_", "model_")):
        if kind == "int_from_float":
            return "must be a whole number"
        if kind == "string_too_short":
            return "must not be empty"
        for prefix, text in (
            ("int_", "must be an integer"),
            ("float_", "must be a number"),
            ("bool_", "must be true or false"),
            ("string_", "must be a string"),
            ("list_", "must be a list"),
        ):
            if kind.startswith(prefix):
                return text
        return "must be a mapping of keys"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt"}.get(kind, "le")
        return _bound(op, ctx[op])
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"]).lower()


def describe(err: ValidationError, root: type[BaseModel], prefix: str = "") -> str:
    """The first error of `err` as one line; `prefix` is the dotted path of `root` itself."""
    error = err.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    if prefix:
        loc = (*prefix.split("."), *loc)
    where = dotted(loc)
    if error["type"] == "extra_forbidden":
        parents = [str(p) for p in loc[:-1]]
        own = parents[len(prefix.split(".")) :] if prefix else parents
        section = section_at(root, own)
        known = list(section.model_fields) if section is not None else []
        return unknown_key_message(".".join(parents), str(loc[-1]), known)
    if error["type"] == "missing":
        return f"{where} is required"
    what = _what(error)
    return f"{where} {what}, got {error['input']!r}"

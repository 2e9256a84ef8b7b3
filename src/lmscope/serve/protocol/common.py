"""Field types and the error object every protocol module shares.

Numbers and flags are strict: JSON `true` is not the integer 1 and `1` is not `true`; NaN and
infinity are not numbers a request can carry. Text is
checked for lone UTF-16 surrogates (`"\\ud800"` is valid JSON but not Unicode text a tokenizer
can encode), so such input is refused at validation time with the field named.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Annotated, Any

from pydantic import AllowInfNan, BaseModel, BeforeValidator, Field, Strict

__all__ = [
    "ErrorBody",
    "ErrorResponse",
    "FieldError",
    "NonEmptyText",
    "Number",
    "StrictBool",
    "StrictInt",
    "Text",
    "Usage",
    "given",
    "json_numbers",
    "new_id",
    "now",
]


class FieldError(ValueError):
    """A request that is well formed JSON but wrong in one field; `param` names that field
    (dotted path, OpenAI style: `messages.[0].content`)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def _unicode_text(value: Any) -> Any:
    """Runs before the type and length checks: pydantic cannot even measure such a string and
    would say only "unable to parse raw data as a unicode string"."""
    if not isinstance(value, str):
        return value  # the strict type check names what is wrong
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"contains a lone UTF-16 surrogate at character {err.start}; send valid Unicode text"
        ) from None
    return value


def json_numbers(data: Any, int_fields: frozenset[str]) -> Any:
    """A model's `mode="before"` pass over a JSON body's top-level numbers: NaN and infinity
    are refused with the field named, and 1.0 counts as the integer 1 in `int_fields` (JSON
    Schema's `integer` accepts it). Field types stay strict, so their constraints stay in the
    OpenAPI document as minimum/maximum."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for key, value in data.items():
        if not isinstance(value, float):
            continue
        if math.isnan(value):
            raise FieldError(f"{key}: NaN is not a number; send a finite number", key)
        if math.isinf(value):
            raise FieldError(f"{key}: infinity is not allowed; send a finite number", key)
        if key in int_fields and value.is_integer():
            out[key] = int(value)
    return out


StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]
Number = Annotated[float, Strict(), AllowInfNan(False)]
Text = Annotated[str, Strict(), BeforeValidator(_unicode_text)]
NonEmptyText = Annotated[str, Strict(), Field(min_length=1), BeforeValidator(_unicode_text)]


def given(field: str) -> dict[str, Any]:
    """JSON Schema for "`field` is present and not null"."""
    return {"required": [field], "properties": {field: {"not": {"type": "null"}}}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The OpenAI error object: every non-2xx answer has this shape."""

    error: ErrorBody


MAX_TOKENS_LIMIT = 32768
LOGPROBS_LIMIT = 20
N_LIMIT = 16
STOP_LIMIT = 4
PROMPTS_LIMIT = 64  # prompts in one /v1/completions list

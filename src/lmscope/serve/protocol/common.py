"""Field types and the error object every protocol module shares.

Numbers and flags are strict: JSON `true` is not the integer 1 and `1` is not `true`. Text is
checked for lone UTF-16 surrogates (`"\\ud800"` is valid JSON but not Unicode text a tokenizer
can encode), so such input is refused at validation time with the field named.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, Strict

__all__ = [
    "ErrorBody",
    "ErrorResponse",
    "FieldError",
    "Number",
    "StrictBool",
    "StrictInt",
    "Text",
    "Usage",
    "new_id",
    "now",
]


class FieldError(ValueError):
    """A request that is well formed JSON but wrong in one field; `param` names that field
    (dotted path, OpenAI style: `messages.[0].content`)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def _unicode_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"contains a lone UTF-16 surrogate at character {err.start}; send valid Unicode text"
        ) from None
    return value


def _finite_number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("NaN is not a number; send a finite number")
    if isinstance(value, float) and math.isinf(value):
        raise ValueError("infinity is not allowed; send a finite number")
    return value


StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]
Number = Annotated[float, Strict(), BeforeValidator(_finite_number)]
Text = Annotated[str, Strict(), AfterValidator(_unicode_text)]


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

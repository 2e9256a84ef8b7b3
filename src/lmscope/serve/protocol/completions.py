"""/v1/completions: the request (text, texts or token ids), the response and its stream chunks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from lmscope.serve.protocol.common import (
    LOGPROBS_LIMIT,
    PROMPTS_LIMIT,
    FieldError,
    StrictBool,
    StrictInt,
    Text,
    Usage,
    new_id,
    now,
)
from lmscope.serve.protocol.sampling import (
    STREAM_OPTIONS_RULE,
    FinishReason,
    SamplingRequest,
    TokenIds,
    not_together,
)

PromptInput = (
    Text
    | Annotated[list[Text], Field(min_length=1, max_length=PROMPTS_LIMIT)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1, max_length=PROMPTS_LIMIT)]
)


def _token_ids(values: list[Any]) -> list[int] | None:
    """The list as token ids if every item is an integer (1.0 counts, true does not)."""
    out = []
    for v in values:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if type(v) is not int:
            return None
        out.append(v)
    return out


def _check_prompt_shape(value: Any) -> Any:
    """One clear message for a prompt of the wrong shape (instead of one per union member)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise FieldError("prompt must be a string, a list of strings or token ids", "prompt")
    if not value:
        raise FieldError("prompt must not be an empty list", "prompt")
    ids = _token_ids(value)
    if ids is not None:
        return ids
    if len(value) > PROMPTS_LIMIT:
        raise FieldError(f"at most {PROMPTS_LIMIT} prompts per request", "prompt")
    if all(isinstance(v, str) for v in value):
        return value
    if all(isinstance(v, list) for v in value):
        lists = [_token_ids(v) for v in value]
        for i, item in enumerate(lists):
            if not item:
                raise FieldError(
                    "each token id list must be a non-empty list of integers", f"prompt.[{i}]"
                )
        return lists
    kinds = sorted({type(v).__name__ for v in value})
    raise FieldError(
        "prompt lists hold strings, integers (token ids) or lists of token ids; this one holds "
        + ", ".join(kinds),
        "prompt",
    )


class CompletionRequest(SamplingRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                STREAM_OPTIONS_RULE,
                not_together(
                    {
                        "stream": {"const": True},
                        "echo": {"const": True},
                        "logprobs": {"type": "integer"},
                    }
                ),
            ]
        }
    )

    prompt: PromptInput = Field(
        description=f"text, a list of texts, token ids, or a list of token id lists "
        f"(at most {PROMPTS_LIMIT} prompts)"
    )
    echo: StrictBool = False
    logprobs: Annotated[StrictInt, Field(ge=0, le=LOGPROBS_LIMIT)] | None = None
    # OpenAI fields this server does not implement: refused when they would change the answer,
    # never silently ignored.
    suffix: Text | None = Field(
        default=None, json_schema_extra={"maxLength": 0}, description="not supported"
    )
    best_of: StrictInt | None = Field(
        default=None, json_schema_extra={"minimum": 1, "maximum": 1}, description="only 1"
    )

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        return _check_prompt_shape(value)

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise FieldError(
                "suffix is not supported (this server does not insert text); leave it out",
                "suffix",
            )
        return value

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise FieldError(
                f"best_of={value} is not supported; ask for n choices and pick by logprobs",
                "best_of",
            )
        return value

    @model_validator(mode="after")
    def _echo_scores_not_streamed(self) -> CompletionRequest:
        if self.stream and self.echo and self.logprobs is not None:
            raise FieldError("echo with logprobs is not supported while streaming", "stream")
        return self

    def max_new_tokens(self) -> int:
        return 16 if self.max_tokens is None else self.max_tokens


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionChunk(BaseModel):
    """One server-sent event of a streamed completion (the usage chunk has no choices)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None

"""What completions and chat completions share: the sampling fields, their checks, and
`to_sampling_params`, which turns a request into the engine's SamplingParams.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from lmscope.engine.sampling import SamplingParams
from lmscope.serve.protocol.common import (
    MAX_TOKENS_LIMIT,
    N_LIMIT,
    STOP_LIMIT,
    FieldError,
    NonEmptyText,
    Number,
    StrictBool,
    StrictInt,
    Text,
    json_numbers,
)

TokenId = Annotated[StrictInt, Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
TOKEN_ID_KEY = r"^[0-9]{1,9}$"
LogitBias = Annotated[
    dict[
        Annotated[str, StringConstraints(pattern=TOKEN_ID_KEY)],
        Annotated[Number, Field(ge=-100.0, le=100.0)],
    ],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": TOKEN_ID_KEY},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        }
    ),
]
MaxTokens = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS_LIMIT)]
Penalty = Annotated[Number, Field(ge=-2.0, le=2.0)]


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


def needs_flag(field: str, field_type: str, flag: str) -> dict[str, Any]:
    """JSON Schema for "`field` (when not null) needs `flag: true`"."""
    return {
        "if": {"properties": {field: {"type": field_type}}, "required": [field]},
        "then": {"properties": {flag: {"const": True}}, "required": [flag]},
    }


def needs_list(field: str, needed: str) -> dict[str, Any]:
    """JSON Schema for "`field` (when not null) needs a non-empty `needed` list"."""
    return {
        "if": {
            "properties": {field: {"not": {"type": "null"}}},
            "required": [field],
        },
        "then": {"properties": {needed: {"type": "array", "minItems": 1}}, "required": [needed]},
    }


def not_together(fields: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema for "not all of these fields with these values at once"."""
    return {"not": {"properties": fields, "required": list(fields)}}


STREAM_OPTIONS_RULE = needs_flag("stream_options", "object", "stream")


class SamplingRequest(BaseModel):
    """Options shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"allOf": [STREAM_OPTIONS_RULE]})

    model: Text | None = None
    max_tokens: MaxTokens | None = None
    temperature: Annotated[Number, Field(ge=0.0, le=100.0)] = 1.0
    top_p: Annotated[Number, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[StrictInt, Field(ge=0, description="lmscope extension: 0 disables top-k")] = 0
    repetition_penalty: Annotated[
        Number, Field(gt=0.0, le=10.0, description="lmscope extension (HF semantics)")
    ] = 1.0
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: LogitBias | None = Field(
        default=None, description="token id (as a string) -> bias added to its logit"
    )
    ignore_eos: StrictBool = Field(
        default=False, description="lmscope/vLLM extension: keep going past EOS"
    )
    n: Annotated[StrictInt, Field(ge=1, le=N_LIMIT)] = 1
    stop: NonEmptyText | Annotated[list[NonEmptyText], Field(max_length=STOP_LIMIT)] | None = None
    seed: Annotated[StrictInt, Field(ge=0, description="any size; used modulo 2**63")] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = Field(default=None, description="only with stream: true")
    user: Text | None = None

    _INT_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "max_tokens",
            "top_k",
            "n",
            "seed",
            "logprobs",
            "top_logprobs",
            "max_completion_tokens",
            "best_of",
        }
    )

    @model_validator(mode="before")
    @classmethod
    def _json_numbers(cls, data: Any) -> Any:
        return json_numbers(data, cls._INT_FIELDS)

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingRequest:
        if self.stream_options is not None and not self.stream:
            raise FieldError("stream_options is only allowed when stream is true", "stream_options")
        return self

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def to_sampling_params(
        self,
        max_tokens: int,
        *,
        logprobs: int | None,
        choice: int = 0,
        processors: tuple[Any, ...] = (),
    ) -> SamplingParams:
        """The engine's parameters for choice `choice` (seeded choices get distinct seeds).
        processors: per-sequence logits processors (a grammar), fresh for each choice."""
        seed = None if self.seed is None else (self.seed + choice) % (2**63)
        return SamplingParams(
            max_new_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            stop=self.stop_list(),
            seed=seed,
            logprobs=logprobs,
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            logits_processors=processors,
        )


FinishReason = Literal["stop", "length", "abort", "tool_calls", "function_call"]

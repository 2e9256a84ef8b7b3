"""The OpenAI subset lmscope serves, typed: completions, chat completions, models.

Every request converts itself to the engine's `SamplingParams` (`to_sampling_params`); every
response and every stream chunk is a model here, so routes never build raw dicts.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

from lmscope.engine.sampling import SamplingParams
from lmscope.serve.protocol.common import (
    LOGPROBS_LIMIT,
    MAX_TOKENS_LIMIT,
    N_LIMIT,
    PROMPTS_LIMIT,
    STOP_LIMIT,
    FieldError,
    NonEmptyText,
    Number,
    StrictBool,
    StrictInt,
    Text,
    Usage,
    json_numbers,
    new_id,
    now,
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


FunctionName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionDef(BaseModel):
    """A function the model may call: its name, what it does, and a JSON schema of its
    arguments."""

    name: FunctionName
    description: Text | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="JSON schema of the arguments object"
    )
    strict: StrictBool | None = None


class ToolDef(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    name: FunctionName


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: FunctionName
    description: Text | None = None
    json_schema: dict[str, Any] = Field(alias="schema", description="a JSON schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    """`{"type": "text" | "json_object"}` or `{"type": "json_schema", "json_schema": {...}}`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise FieldError(
                "response_format needs json_schema exactly when its type is 'json_schema'",
                "response_format",
            )
        return self

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "properties": {"type": {"enum": ["text", "json_object"]}},
                    "not": {"required": ["json_schema"]},
                },
                {
                    "properties": {
                        "type": {"const": "json_schema"},
                        "json_schema": {"type": "object"},
                    },
                    "required": ["json_schema"],
                },
            ]
        }
    )


def _needs(field: str, field_type: str, flag: str) -> dict[str, Any]:
    """JSON Schema for "`field` (when not null) needs `flag: true`"."""
    return {
        "if": {"properties": {field: {"type": field_type}}, "required": [field]},
        "then": {"properties": {flag: {"const": True}}, "required": [flag]},
    }


def _needs_list(field: str, needed: str) -> dict[str, Any]:
    """JSON Schema for "`field` (when not null) needs a non-empty `needed` list"."""
    return {
        "if": {
            "properties": {field: {"not": {"type": "null"}}},
            "required": [field],
        },
        "then": {"properties": {needed: {"type": "array", "minItems": 1}}, "required": [needed]},
    }


def _not_together(fields: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema for "not all of these fields with these values at once"."""
    return {"not": {"properties": fields, "required": list(fields)}}


STREAM_OPTIONS_RULE = _needs("stream_options", "object", "stream")


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
        {"max_tokens", "top_k", "n", "seed", "logprobs", "top_logprobs", "max_completion_tokens"}
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


# ---- /v1/completions ------------------------------------------------------------------------
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
                _not_together(
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

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        return _check_prompt_shape(value)

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


FinishReason = Literal["stop", "length", "abort", "tool_calls", "function_call"]


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


# ---- /v1/chat/completions -------------------------------------------------------------------
class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: Text | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def for_template(self) -> dict[str, Any]:
        """The message as a chat template reads it."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


class ChatCompletionRequest(SamplingRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                STREAM_OPTIONS_RULE,
                _needs("top_logprobs", "integer", "logprobs"),
                _not_together({"tools": {"type": "array"}, "functions": {"type": "array"}}),
                _needs_list("tool_choice", "tools"),
                _needs_list("function_call", "functions"),
            ]
        }
    )

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=LOGPROBS_LIMIT)] | None = Field(
        default=None, description="only with logprobs: true"
    )
    max_completion_tokens: MaxTokens | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolDef], Field(min_length=1)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        default=None, description="only with tools"
    )
    parallel_tool_calls: StrictBool | None = None
    functions: Annotated[list[FunctionDef], Field(min_length=1)] | None = Field(
        default=None, description="deprecated by OpenAI; use tools"
    )
    function_call: Literal["none", "auto"] | NamedFunction | None = Field(
        default=None, description="deprecated by OpenAI; use tool_choice; only with functions"
    )

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise FieldError("top_logprobs is only allowed when logprobs is true", "top_logprobs")
        return self

    def token_limit(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def structured_fields(self) -> list[str]:
        """The structured-output and tool fields this request sets (in OpenAI's order)."""
        names = ("response_format", "tools", "tool_choice", "functions", "function_call")
        set_fields = [name for name in names if getattr(self, name) is not None]
        if (
            set_fields == ["response_format"]
            and self.response_format is not None
            and self.response_format.type == "text"
        ):
            return []  # plain text is what we do anyway
        return set_fields


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    """The reply; `tool_calls` and `function_call` appear only when the model made a call."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _calls_only_when_made(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        for key in ("tool_calls", "function_call"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class DeltaMessage(BaseModel):
    """What a chunk adds to a choice's message; unset fields are left out of the JSON."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    function_call: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: Usage | None = None


# ---- /v1/models -----------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "lmscope"
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

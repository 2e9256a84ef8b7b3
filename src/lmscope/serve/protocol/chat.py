"""/v1/chat/completions: messages, the request, the response and its stream chunks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from lmscope.serve.protocol.common import (
    LOGPROBS_LIMIT,
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
    MaxTokens,
    SamplingRequest,
    needs_flag,
    needs_list,
    not_together,
)
from lmscope.serve.protocol.tools import (
    FunctionDef,
    NamedFunction,
    NamedToolChoice,
    ResponseFormat,
    ToolDef,
)


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
                needs_flag("top_logprobs", "integer", "logprobs"),
                not_together({"tools": {"type": "array"}, "functions": {"type": "array"}}),
                needs_list("tool_choice", "tools"),
                needs_list("function_call", "functions"),
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

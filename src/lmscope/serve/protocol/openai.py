"""The OpenAI subset lmscope serves, typed: completions (`completions`), chat completions
(`chat`, with `tools` for structured output), the options they share (`sampling`), and the
model list (here).

Every request converts itself to the engine's `SamplingParams` (`to_sampling_params`); every
response and every stream chunk is a model, so routes never build raw dicts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lmscope.serve.protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessage,
    ChatStreamChoice,
    ChatTokenLogprob,
    DeltaMessage,
    TextPart,
    TopLogprob,
)
from lmscope.serve.protocol.common import now
from lmscope.serve.protocol.completions import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from lmscope.serve.protocol.sampling import SamplingRequest, StreamOptions
from lmscope.serve.protocol.tools import ResponseFormat

__all__ = [
    "AssistantMessage",
    "ChatChoice",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatLogprobs",
    "ChatMessage",
    "ChatStreamChoice",
    "ChatTokenLogprob",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionLogprobs",
    "CompletionRequest",
    "CompletionResponse",
    "DeltaMessage",
    "ModelCard",
    "ModelList",
    "ResponseFormat",
    "SamplingRequest",
    "StreamOptions",
    "TextPart",
    "TopLogprob",
]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "lmscope"
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

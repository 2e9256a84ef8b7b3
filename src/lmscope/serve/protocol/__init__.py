"""Every HTTP request, response and stream chunk the server speaks, as typed models.

The OpenAI-compatible subset: `completions`, `chat` (with `tools`), the options they share
(`sampling`, each request converting itself to the engine's `SamplingParams`) and the model
list (`openai`); `common` holds the shared field types and the OpenAI error object; explain and
feedback requests live in `explain` and `feedback`. Routes never build raw dicts.
"""

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
    TopLogprob,
)
from lmscope.serve.protocol.common import (
    ErrorBody,
    ErrorResponse,
    FieldError,
    Number,
    StrictBool,
    StrictInt,
    Text,
    Usage,
    new_id,
)
from lmscope.serve.protocol.completions import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from lmscope.serve.protocol.openai import ModelCard, ModelList
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
    "ErrorBody",
    "ErrorResponse",
    "FieldError",
    "ModelCard",
    "ModelList",
    "Number",
    "ResponseFormat",
    "SamplingRequest",
    "StreamOptions",
    "StrictBool",
    "StrictInt",
    "Text",
    "TopLogprob",
    "Usage",
    "new_id",
]

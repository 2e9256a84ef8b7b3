"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions. Each route
only hands its typed request to a serving class (`serving_completions`, `serving_chat`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from lmscope.serve.openapi_doc import error_responses, streamed
from lmscope.serve.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from lmscope.serve.serving import server_state
from lmscope.serve.serving_chat import OpenAIServingChat
from lmscope.serve.serving_completions import OpenAIServingCompletion

router = APIRouter(tags=["openai"])


@router.get("/v1/models", response_model=ModelList, responses=error_responses(401))
async def list_models(request: Request) -> ModelList:
    """The served model ids and route aliases (never where a model was loaded from)."""
    state = server_state(request)
    cards = [ModelCard(id=spec.id, root=spec.id) for spec in state.settings.models]
    cards += [ModelCard(id=alias, root="route") for alias in state.router.routes]
    return ModelList(data=cards)


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses=streamed(CompletionResponse, "The completion, or its chunks when streamed"),
)
async def completions(
    body: CompletionRequest, request: Request
) -> CompletionResponse | StreamingResponse:
    return await OpenAIServingCompletion(body, request).create()


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses=streamed(ChatCompletionResponse, "The chat completion, or its chunks when streamed"),
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request
) -> ChatCompletionResponse | StreamingResponse:
    return await OpenAIServingChat(body, request).create()

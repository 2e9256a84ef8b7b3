"""`GET /v1/models/{model_id}/card`: a served model's documentation (see `lmscope.document`),
as Markdown (the Hugging Face model card), HTML, the facts JSON or JSON-LD, by `Accept`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from lmscope.serve.errors import APIError
from lmscope.serve.openapi_doc import error_responses
from lmscope.serve.serving import server_state

router = APIRouter(tags=["documentation"])
CARD_TYPES = ("text/markdown", "text/html", "application/json", "application/ld+json")


@router.get(
    "/v1/models/{model_id}/card",
    response_class=Response,
    responses={
        200: {"content": {media: {"schema": {"type": "string"}} for media in CARD_TYPES}},
        **error_responses(401, 404, 503),
    },
)
async def model_card(model_id: str, request: Request) -> Response:
    """The model card of a served model (template sentences only: every number in it is a
    fact computed from the model; `lmscope doc` writes the LLM-written version offline)."""
    from lmscope.document.output import card_response
    from lmscope.zoo.registry import LoadedModel

    state = server_state(request)
    served = state.models.get(model_id) if state.ready.is_set() else None
    if served is None:
        if not state.ready.is_set():
            raise APIError(503, "the server is still loading its models; retry shortly")
        raise APIError(
            404,
            f"model {model_id!r} is not served here; served: {', '.join(state.models)}",
            param="model_id",
            code="model_not_found",
        )
    loaded = LoadedModel(served.id, served.model, served.tokenizer, served.source)
    accept = request.headers.get("accept")
    content, media_type = await asyncio.to_thread(card_response, loaded, accept)
    return Response(content, media_type=media_type)

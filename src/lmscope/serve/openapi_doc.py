"""Make the OpenAPI document describe what the server really answers.

FastAPI documents a 422 `HTTPValidationError` for every route with a body; this server answers
400 with the OpenAI error object instead (see `serve.errors`). Streams are `text/event-stream`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from lmscope.serve.protocol import ErrorResponse

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for a route: each status answered with the OpenAI error object."""
    descriptions = {
        400: "Invalid request (OpenAI error object naming the `param`)",
        401: "Missing or invalid API key",
        404: "Unknown model",
        408: "Request timed out",
        413: "Request body too large",
        415: "Content-Type is not application/json",
        429: "Queue full; retry after `Retry-After` seconds",
        499: "Client closed the request",
        500: "The model failed while generating",
        503: "Models still loading",
    }
    return {
        status: {"model": ErrorResponse, "description": descriptions.get(status, "Error")}
        for status in statuses
    }


GENERATION_ERRORS = error_responses(400, 401, 404, 408, 413, 415, 429, 500, 503)


def streamed(model: type, summary: str) -> dict[int | str, dict[str, Any]]:
    """A 200 that is JSON, or a server-sent event stream when the request sets `stream`."""
    return {
        200: {
            "model": model,
            "description": summary,
            "content": {
                "text/event-stream": {
                    "schema": {
                        "type": "object",
                        "description": "with stream: true, one server-sent event per chunk "
                        "(`data: <chunk JSON>`), ending in `data: [DONE]`",
                        "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                        "required": ["data"],
                    }
                }
            },
        },
        **GENERATION_ERRORS,
    }


def install_openapi(app: FastAPI) -> None:
    """Replace every documented 422 by the 400 OpenAI error object."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.get("responses", {})
                if "422" in responses:
                    del responses["422"]
                    responses.setdefault(
                        "400",
                        {
                            "description": "Invalid request (OpenAI error object)",
                            "content": {"application/json": {"schema": ERROR_REF}},
                        },
                    )
        components = schema.get("components", {}).get("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

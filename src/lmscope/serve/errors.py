"""One error shape for every failure: the OpenAI error object.

`param` always comes from structure (a FieldError's `param`, a validation error's location),
never from the text of a message.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmscope.serve.protocol.common import FieldError

log = logging.getLogger("lmscope.serve")

STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    499: "cancelled",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error answered to the client as an OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    @classmethod
    def invalid(cls, err: FieldError) -> APIError:
        """A 400 for a request wrong in one field."""
        return cls(400, str(err), param=err.param, code="invalid_value")


def error_payload(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": STATUS_TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            ),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_payload(status, message, param, code), status_code=status, headers=headers
    )


def param_path(loc: tuple[Any, ...]) -> str | None:
    """A validation location as an OpenAI `param`: `messages.[0].content`. Union member tags
    (`list[int]`, `function-after[...]`) and the leading `body` are not fields and are dropped."""
    parts: list[str] = []
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif isinstance(part, str) and part.isidentifier():
            parts.append(part)
    return ".".join(parts) or None


def _clean(message: str) -> str:
    return message.removeprefix("Value error, ")


def _union_key(loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The field a union member's error is about (its location up to the member's tag), or
    None for an error outside any union."""
    for i, part in enumerate(loc):
        if isinstance(part, str) and part != "body" and not part.isidentifier():
            return tuple(loc[:i])
    return None


def _without_type_noise(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drops the "should be a valid string" errors of union members whose type did not match
    when another member of the same union matched the type and failed on the value (a token
    id of -1 is then "greater than or equal to 0", not "a valid string")."""

    def is_type(item: dict[str, Any]) -> bool:
        return str(item.get("type", "")).endswith("_type")

    def key(item: dict[str, Any]) -> tuple[Any, ...] | None:
        return _union_key(tuple(item.get("loc", ())))

    matched = {key(item) for item in errors if not is_type(item)} - {None}
    return [item for item in errors if not (is_type(item) and key(item) in matched)]


def describe_validation(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One message and the first field's `param` for a list of pydantic errors; each field is
    reported once."""
    seen: dict[str | None, str] = {}
    errors = _without_type_noise(errors)
    # A union reports every member's failure; when a validator said what is wrong, the
    # members whose type did not even match are noise.
    explained = [item for item in errors if (item.get("ctx") or {}).get("error") is not None]
    if explained and not any(item.get("type") == "json_invalid" for item in errors):
        errors = explained
    for item in errors:
        cause = (item.get("ctx") or {}).get("error")
        if item.get("type") == "json_invalid":
            return f"the body is not valid JSON: {item.get('msg', 'invalid')}", None
        param = cause.param if isinstance(cause, FieldError) else param_path(item.get("loc", ()))
        if param not in seen:
            seen[param] = _clean(str(cause) if cause is not None else item.get("msg", "invalid"))
    parts = [
        f"{param}: {msg}" if param and not msg.startswith(param) else msg
        for param, msg in seen.items()
    ]
    return "; ".join(parts) or "invalid request", next(iter(seen), None)


async def _content_type_error(
    request: Request, errors: list[dict[str, Any]]
) -> JSONResponse | None:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    body_whole = any(tuple(item.get("loc", ())) == ("body",) for item in errors)
    if not media and body_whole and await request.body():
        # Without a Content-Type the body is not read as JSON at all.
        return error_response(
            415,
            "the request has no Content-Type; send the JSON body with "
            "Content-Type: application/json",
            code="unsupported_media_type",
        )
    if media and media != "application/json" and not media.endswith("+json") and body_whole:
        return error_response(
            415,
            f"Content-Type must be application/json, got {content_type!r}",
            code="unsupported_media_type",
        )
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, err: APIError) -> JSONResponse:
        return error_response(
            err.status, err.message, param=err.param, code=err.code, headers=err.headers
        )

    @app.exception_handler(FieldError)
    async def _field_error(_: Request, err: FieldError) -> JSONResponse:
        return error_response(400, str(err), param=err.param, code="invalid_value")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = list(err.errors())
        wrong_type = await _content_type_error(request, errors)
        if wrong_type is not None:
            return wrong_type
        message, param = describe_validation(errors)
        return error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(
            err.status_code, str(err.detail), headers=getattr(err, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(
            500, "internal server error; the server log has the details", code="internal_error"
        )

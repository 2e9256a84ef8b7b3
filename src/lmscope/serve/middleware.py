"""ASGI middleware: body size limit, API key, request ids with one JSON log line per request."""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmscope.serve.errors import error_payload
from lmscope.serve.metrics import ServerMetrics

access_log = logging.getLogger("lmscope.access")

PUBLIC_PATHS = ("/health", "/metrics", "/docs", "/openapi.json", "/redoc")


async def send_json_error(
    send: Send, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps(error_payload(status, message)).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass


class LimitsAndAuth:
    """Rejects oversized bodies (413) and, when an API key is set, unauthenticated /v1 calls (401)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, api_key: str | None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key

    def _authorised(self, scope: Scope) -> bool:
        if not self.api_key or not scope["path"].startswith("/v1"):
            return True
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        token = (
            auth[7:]
            if auth.lower().startswith("bearer ")
            else headers.get(b"x-api-key", b"").decode("latin-1")
        )
        return bool(token) and secrets.compare_digest(token, self.api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorised(scope):
            await send_json_error(
                send,
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                {"www-authenticate": "Bearer"},
            )
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await send_json_error(
                send,
                413,
                f"request body of {int(declared)} bytes exceeds the limit of {self.max_body_bytes}",
            )
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await send_json_error(
                    send, 413, f"request body exceeds the limit of {self.max_body_bytes} bytes"
                )


class AccessLog:
    """Adds an x-request-id and writes one JSON line per request when the response ends."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            state: dict[str, Any] = scope.get("state", {})
            record = {
                "event": "request",
                "id": request_id,
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "latency_ms": round((time.perf_counter() - start) * 1000, 2),
                **state.get("log", {}),
            }
            self.metrics.requests.labels(
                route=route_label(scope.get("path", "")), status=str(status)
            ).inc()
            access_log.info(json.dumps(record))


KNOWN_ROUTES = {
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/health",
    "/metrics",
    "/",
}


def route_label(path: str) -> str:
    """A bounded set of metric labels: known routes by name, explain endpoints by name, else
    `other` (so arbitrary paths cannot grow the metric's cardinality)."""
    if path in KNOWN_ROUTES or (path.startswith("/v1/explain") and path.count("/") <= 3):
        return path
    return "other"

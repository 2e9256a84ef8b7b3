"""ASGI middleware: request limits, the API key, and one JSON log line and metric per request.

The API key guards every route except the public ones below: the explorer page and its static
files (the page sends the key the user gives it with every API call), the API documentation,
`/health` and `/metrics` (for load balancers and Prometheus, as vLLM does). Deny by default: a
route added later is guarded unless it is listed here, and unknown paths answer 401 to a client
without the key, so they do not reveal which routes exist.

Limits: a body over `max_body_bytes` is refused with 413 whether it declares its length or
arrives chunked; request headers over `MAX_HEADER_BYTES` with 431 (`serve.http11` answers in the
same OpenAI shape when the HTTP parser itself refuses a request).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmscope.serve.errors import error_payload
from lmscope.serve.metrics import ServerMetrics

access_log = logging.getLogger("lmscope.access")

PUBLIC_PATHS = frozenset({"/", "/health", "/metrics", "/docs", "/openapi.json"})
PUBLIC_PREFIXES = ("/static/", "/docs-assets/")
MAX_HEADER_BYTES = 16 * 1024
OTHER_ROUTE = "other"


async def send_json_error(
    send: Send,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    code: str | None = None,
) -> None:
    body = json.dumps(error_payload(status, message, code=code)).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def is_public(path: str) -> bool:
    """Whether a path is served without the API key (see the module docstring)."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def header_bytes(scope: Scope) -> int:
    """Bytes of the request's header lines as sent (`name: value\\r\\n`)."""
    return sum(len(name) + len(value) + 4 for name, value in scope.get("headers") or [])


class LimitsAndAuth:
    """Refuses oversized headers (431) and bodies (413), and requests without the API key (401)
    when one is set."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, api_key: str | None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key

    def _authorised(self, scope: Scope) -> bool:
        if not self.api_key or is_public(scope["path"]):
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
        size = header_bytes(scope)
        if size > MAX_HEADER_BYTES:
            await send_json_error(
                send,
                431,
                f"the request headers are {size} bytes, over the limit of {MAX_HEADER_BYTES}; "
                "send fewer or shorter headers",
                code="request_header_fields_too_large",
            )
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
            await self._too_large(send, f"the request body of {int(declared)} bytes")
            return
        await self.app(scope, *self._limited(receive, send))

    async def _too_large(self, send: Send, what: str) -> None:
        await send_json_error(
            send, 413, f"{what} exceeds the limit of {self.max_body_bytes} bytes; send less"
        )

    def _limited(self, receive: Receive, send: Send) -> tuple[Receive, Send]:
        """receive/send for the app that count body bytes as they arrive (a chunked body has no
        declared length). Past the limit the client gets 413 at once and the app sees the
        client disconnect, so whatever it answers to that is dropped."""
        received = 0
        started = refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    refused = True
                    if not started:
                        await self._too_large(send, "the request body")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        return limited_receive, guarded_send


def route_label(scope: Scope) -> str:
    """The metric label of a request: the path template of the route that served it (the mount
    point for static files), else `other`, so arbitrary paths cannot grow the label set."""
    route = scope.get("route")  # set by the router when a route matched
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    probe = {"type": "http", "path": scope.get("path", ""), "method": scope.get("method", "GET")}
    for candidate in getattr(scope.get("app"), "routes", ()):
        match, child = candidate.matches({**probe, "root_path": ""})
        if match is not Match.NONE:  # a mount, or a request refused before routing
            path = getattr(child.get("route", candidate), "path", None)
            if isinstance(path, str) and path:
                return path
    return OTHER_ROUTE


class AccessLog:
    """Adds an x-request-id and writes one JSON line per request when the response ends.

    Routes put what they know about a request (model, token counts) in `request.state.log`;
    that dict is merged into the line, whatever the outcome (a client that hung up is 499)."""

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
            self.metrics.requests.labels(route=route_label(scope), status=str(status)).inc()
            access_log.info(json.dumps(record))
            _complete_experiment(scope, state, record, status, self.metrics)


def _complete_experiment(
    scope: Scope, state: dict[str, Any], record: dict[str, Any], status: int, metrics: ServerMetrics
) -> None:
    """An answer recorded for an A/B test gets its latency, tokens and outcome, and counts in
    the per-version metrics."""
    tag = state.get("experiment")
    app = scope.get("app")
    experiments = getattr(getattr(app, "state", None), "lm", None)
    experiments = getattr(experiments, "experiments", None)
    if tag is None or experiments is None:
        return
    outcome = "ok" if status < 400 else "error"
    metrics.ab_requests.labels(
        alias=tag["alias"] or "", model_name=tag["model"], outcome=outcome
    ).inc()
    experiments.complete_later(
        tag["response_id"],
        record["latency_ms"] / 1000,
        int(record.get("tokens_in", 0)),
        int(record.get("tokens_out", 0)),
        status,
    )

"""uvicorn's HTTP/1.1 protocol, answering requests its parser refuses with the OpenAI error object.

The parser (h11) refuses a malformed request, or request line and headers that arrive in pieces
and grow past its buffer, before the app sees anything; uvicorn then answers a plain-text 400.
This protocol answers the same 400 as JSON in the OpenAI shape. Its buffer is set well above
`middleware.MAX_HEADER_BYTES`, so headers over that limit normally reach the middleware and get
its 431, however the bytes arrive; only far larger ones are refused here.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from lmscope.serve.errors import error_payload
from lmscope.serve.middleware import MAX_HEADER_BYTES

PARSER_BUFFER_BYTES = 4 * MAX_HEADER_BYTES


class OpenAIErrorH11Protocol(H11Protocol):
    """H11Protocol whose parser errors are OpenAI error objects."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps(
            error_payload(
                400,
                "the HTTP request could not be parsed: it is malformed, or its request line and "
                f"headers exceed {PARSER_BUFFER_BYTES} bytes",
                code="invalid_http_request",
            )
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def uvicorn_options() -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run`/`uvicorn.Config` that make every refusal, even the
    HTTP parser's, an OpenAI error object."""
    return {"http": OpenAIErrorH11Protocol, "h11_max_incomplete_event_size": PARSER_BUFFER_BYTES}

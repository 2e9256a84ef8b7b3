"""The server's request limits, API key guard and request metrics, over raw sockets and HTTP
against a real uvicorn server (the limits depend on how the bytes arrive)."""

from __future__ import annotations

import json
import logging
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Mount

from lmscope.serve.app import create_app
from lmscope.serve.middleware import MAX_HEADER_BYTES, is_public
from lmscope.serve.routing import ModelSpec
from lmscope.serve.state import ServeSettings
from serve_support import running_app

KEY = "sekret"
BODY_LIMIT = 1000


@pytest.fixture(scope="module")
def served(tiny_checkpoint: Path) -> Iterator[tuple[str, FastAPI]]:
    settings = ServeSettings(
        models=[ModelSpec("tiny", str(tiny_checkpoint))],
        max_seq_len=128,
        api_key=KEY,
        max_body_bytes=BODY_LIMIT,
    )
    app = create_app(settings)
    with running_app(app) as base:
        yield base, app


AUTH = {"Authorization": f"Bearer {KEY}"}


def raw_exchange(base: str, pieces: list[bytes], pause: float = 0.0) -> tuple[int, bytes, bytes]:
    """Send `pieces` one by one (stopping early if the server answers), then read the answer:
    (status, raw head, body)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        for piece in pieces:
            if select.select([sock], [], [], 0)[0]:
                break  # answered (and about to close): sending more would reset the connection
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            if pause:
                time.sleep(pause)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before a response: {data!r}"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-body"
            body += chunk
    return int(head.split(b" ", 2)[1]), head, body


def openai_error(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    return error


def request_head(path: str = "/v1/models", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {KEY}\r\n{extra}\r\n"
    ).encode()


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# ---- limits ----------------------------------------------------------------------------------
def test_chunked_body_over_the_limit_is_413(served: tuple[str, FastAPI]) -> None:
    base, _ = served
    head = (
        "POST /v1/explain HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b'{"prompt": "' + b"x" * 600 + b'"}'
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 3 + [b"0\r\n\r\n"]
    status, _, body = raw_exchange(base, [head, *chunks], pause=0.05)
    assert status == 413, body
    assert "limit of 1000 bytes" in openai_error(body)["message"]
    # A declared length over the limit is refused the same way, before the body is read.
    declared = head.replace(b"Transfer-Encoding: chunked", b"Content-Length: 5000")
    status, _, body = raw_exchange(base, [declared])
    assert status == 413 and openai_error(body)["type"] == "invalid_request_error"


def test_chunked_body_under_the_limit_is_served(served: tuple[str, FastAPI]) -> None:
    base, _ = served
    payload = json.dumps({"model": "tiny", "prompt": "The quick", "max_tokens": 2}).encode()
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunks = [b"%x\r\n%s\r\n" % (len(p), p) for p in split(payload, 20)] + [b"0\r\n\r\n"]
    status, _, body = raw_exchange(base, [head, *chunks])
    assert status == 200, body
    assert json.loads(body)["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("piece", [None, 700], ids=["at-once", "in-pieces"])
def test_oversized_headers_are_an_openai_431(
    served: tuple[str, FastAPI], piece: int | None
) -> None:
    base, _ = served
    data = request_head(extra=f"X-Padding: {'a' * (MAX_HEADER_BYTES + 100)}\r\n")
    pieces = [data] if piece is None else split(data, piece)
    status, head, body = raw_exchange(base, pieces, pause=0.002)
    assert status == 431, head
    assert openai_error(body)["code"] == "request_header_fields_too_large"


def test_headers_past_the_parser_buffer_are_an_openai_400(served: tuple[str, FastAPI]) -> None:
    base, _ = served
    data = request_head(extra="".join(f"X-H{i}: {'b' * 1000}\r\n" for i in range(100)))
    status, head, body = raw_exchange(base, split(data, 2000), pause=0.005)
    assert status in (400, 431), head
    assert b"application/json" in head.lower()
    assert openai_error(body)["type"] == "invalid_request_error"


def test_headers_under_the_limit_are_served(served: tuple[str, FastAPI]) -> None:
    base, _ = served
    data = request_head(extra=f"X-Padding: {'a' * (MAX_HEADER_BYTES // 2)}\r\n")
    status, _, body = raw_exchange(base, split(data, 700), pause=0.002)
    assert status == 200 and json.loads(body)["data"], body


# ---- the API key -------------------------------------------------------------------------------
EXPECTED_PUBLIC = {"/", "/health", "/metrics", "/docs", "/openapi.json", "/static", "/docs-assets"}


def app_routes(app: FastAPI) -> list[tuple[str, Any]]:
    """(path, route) of every route, those of included routers too."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)  # FastAPI >= 0.165
    if contexts is None:
        return [(r.path, r) for r in app.routes]
    return [(c.path, c.original_route) for c in contexts(app.routes)]


def test_the_api_key_guards_every_route_but_the_public_ones(served: tuple[str, FastAPI]) -> None:
    """The decision, route by route: adding a route makes this test ask whether it is public."""
    base, app = served
    public, paths = set(), set()
    for path, route in app_routes(app):
        paths.add(path)
        mount = isinstance(route, Mount)
        url = base + (f"{path}/index.html" if mount else path)
        method = "GET" if mount else sorted(route.methods - {"HEAD"})[0]
        response = httpx.request(method, url, timeout=30)
        guarded = response.status_code == 401
        assert guarded != is_public(url.removeprefix(base)), (path, response.status_code)
        if guarded:
            assert openai_error(response.content)["type"] == "authentication_error"
            assert response.headers["www-authenticate"] == "Bearer"
        else:
            public.add(path)
    assert {"/health", "/metrics", "/", "/static", "/v1/explain"} <= paths
    assert public <= EXPECTED_PUBLIC and {"/health", "/metrics", "/", "/static"} <= public
    assert all(p.startswith("/v1/") for p in paths - EXPECTED_PUBLIC), paths


@pytest.mark.parametrize("path", ["/v1/explain/nope", "/nope", "/static-evil", "/healthz"])
def test_unknown_paths_need_the_key_too(served: tuple[str, FastAPI], path: str) -> None:
    base, _ = served
    assert httpx.get(base + path, timeout=30).status_code == 401
    assert httpx.get(base + path, headers=AUTH, timeout=30).status_code == 404
    assert httpx.get(base + path, headers={"x-api-key": KEY}, timeout=30).status_code == 404
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(base + path, headers=wrong, timeout=30).status_code == 401


# ---- metrics --------------------------------------------------------------------------------
def route_labels(base: str) -> set[str]:
    text = httpx.get(base + "/metrics", timeout=30).text
    return {
        sample.labels["route"]
        for family in text_string_to_metric_families(text)
        if family.name == "lmscope:http_requests"
        for sample in family.samples
    }


def test_unknown_paths_share_one_metric_label(served: tuple[str, FastAPI]) -> None:
    base, app = served
    for path in ("/v1/explain/a", "/v1/explain/b", "/v1/explain/a/b", "/x", "/v1/zzz"):
        httpx.post(base + path, json={}, timeout=30)
        httpx.post(base + path, json={}, headers=AUTH, timeout=30)
    ok = httpx.post(
        base + "/v1/explain/routes",
        json={"model": "tiny", "prompt": "The quick"},
        headers=AUTH,
        timeout=60,
    )
    assert ok.status_code == 200, ok.text
    labels = route_labels(base)
    assert "other" in labels and "/v1/explain/routes" in labels
    assert labels <= {path for path, _ in app_routes(app)} | {"other"}, labels


# ---- the access log ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/completions", {"prompt": "The quick brown"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
    ],
)
def test_a_request_whose_client_hangs_up_is_logged_with_model_and_tokens(
    served: tuple[str, FastAPI],
    caplog: pytest.LogCaptureFixture,
    path: str,
    payload: dict[str, Any],
) -> None:
    base, app = served
    caplog.set_level(logging.INFO, logger="lmscope.access")
    model = app.state.lm.models["tiny"].model
    forwards = [0]

    def slow(*_: Any) -> None:  # 100 tokens take seconds: the client leaves long before
        forwards[0] += 1
        time.sleep(0.02)

    handle = model.register_forward_pre_hook(slow)
    body = json.dumps({"model": "tiny", "max_tokens": 100, "ignore_eos": True, **payload})
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    host, port = base.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall((head + body).encode())
            wait_for(lambda: forwards[0] >= 5, "generation to start")
        wait_for(lambda: bool(access_lines(caplog, path)), "the request's log line")
    finally:
        handle.remove()
    (line,) = access_lines(caplog, path)
    assert line["status"] == 499
    assert line["model"] == "tiny" and line["tokens_in"] > 0 and line["tokens_out"] >= 1, line


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def access_lines(caplog: pytest.LogCaptureFixture, path: str) -> list[dict[str, Any]]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lmscope.access"]
    return [line for line in lines if line["path"] == path]

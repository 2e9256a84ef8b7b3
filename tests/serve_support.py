"""A real uvicorn server on a free loopback port, for tests that need HTTP end to end."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from lmscope.serve.app import create_app
from lmscope.serve.http11 import uvicorn_options
from lmscope.serve.state import ServeSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(settings: ServeSettings, *, wait_ready: bool = True) -> Iterator[str]:
    """Serve `settings` on a background thread; yields the base URL."""
    with running_app(create_app(settings), wait_ready=wait_ready) as base:
        yield base


@contextmanager
def tiny_server(checkpoint: Path, **options: Any) -> Iterator[str]:
    """Serve the tiny test model (as "tiny") with these `ServeSettings` options; yields the
    base URL."""
    from lmscope.serve.routing import ModelSpec

    settings = ServeSettings(models=[ModelSpec("tiny", str(checkpoint))], **options)
    with running_server(settings) as base:
        yield base


@contextmanager
def running_app(app: FastAPI, *, wait_ready: bool = True) -> Iterator[str]:
    """Serve an app made by `create_app` on a background thread; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_options()
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            status = httpx.get(base + "/health", timeout=2).status_code
            if status == 200 or (not wait_ready and status == 503):
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    else:
        raise RuntimeError("server did not become ready")
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def hold_explanations(
    monkeypatch: pytest.MonkeyPatch, wait_s: float = 60
) -> tuple[threading.Event, threading.Event]:
    """Explanations on an in-process server wait inside `explain_traced` until `release` is
    set; `started` is set once one is held. Returns (started, release)."""
    from lmscope.serve import serving_explain

    started, release = threading.Event(), threading.Event()
    real = serving_explain.explain_traced

    def held(*args: Any, **kwargs: Any) -> Any:
        started.set()
        assert release.wait(wait_s), "the test never released the explanation"
        return real(*args, **kwargs)

    monkeypatch.setattr(serving_explain, "explain_traced", held)
    return started, release

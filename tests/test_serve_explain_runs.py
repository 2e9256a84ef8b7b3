"""How explanation requests run: cancelled when their client leaves or their time is up, and
waiting for a worker without holding a thread. Over real HTTP on the tiny model; the model's
forward passes are counted (and slowed) by a hook, so assertions are about work done, not time."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from lmscope.serve import serving_explain
from lmscope.serve.app import create_app
from lmscope.serve.routing import ModelSpec
from lmscope.serve.state import ServeSettings
from serve_support import hold_explanations, running_app

PROMPT = "The quick brown fox jumps over"
N_STEPS = 512  # one path point per pass below: 512 passes if nothing stops them


@pytest.fixture(scope="module")
def served(tiny_checkpoint: Path) -> Iterator[tuple[str, FastAPI]]:
    settings = ServeSettings(models=[ModelSpec("tiny", str(tiny_checkpoint))], max_seq_len=128)
    app = create_app(settings)
    with running_app(app) as base:
        yield base, app


@pytest.fixture
def forwards(served: tuple[str, FastAPI], monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the served model's forward passes, each slowed by 20 ms; integrated gradients runs
    one path point per pass."""
    monkeypatch.setattr(serving_explain, "IG_MEMORY_BUDGET", 1)
    model = served[1].state.lm.models["tiny"].model
    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1
        time.sleep(0.02)

    handle = model.register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def ig_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "tiny",
        "prompt": PROMPT,
        "method": "integrated_gradients",
        "n_steps": N_STEPS,
        **extra,
    }


def access_records(caplog: pytest.LogCaptureFixture, path: str) -> list[dict[str, Any]]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lmscope.access"]
    return [line for line in lines if line["path"] == path]


def test_ig_stops_when_the_client_disconnects(
    served: tuple[str, FastAPI], forwards: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    base, _ = served
    caplog.set_level(logging.INFO, logger="lmscope.access")
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps(ig_body()).encode()
    head = (
        f"POST /v1/explain/saliency HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body)
        wait_for(lambda: forwards[0] >= 5, "integrated gradients to start")
    # The client is gone: the request ends as 499 between two passes, long before 512.
    wait_for(lambda: bool(access_records(caplog, "/v1/explain/saliency")), "the 499 log line")
    passes = forwards[0]
    assert passes < N_STEPS // 4, passes
    (line,) = access_records(caplog, "/v1/explain/saliency")
    assert line["status"] == 499
    assert line["model"] == "tiny" and line["tokens_in"] > 0 and line["tokens_out"] == 0
    # The worker is free again: the next (cheap, cached) request is answered, and nothing
    # kept running in the background.
    cheap = httpx.post(
        base + "/v1/explain/routes", json={"model": "tiny", "prompt": PROMPT}, timeout=60
    )
    assert cheap.status_code == 200, cheap.text
    assert forwards[0] == passes


def test_ig_obeys_the_request_timeout(
    served: tuple[str, FastAPI], forwards: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, app = served
    monkeypatch.setattr(app.state.lm.settings, "request_timeout", 1.0)
    response = httpx.post(base + "/v1/explain/saliency", json=ig_body(foil=3), timeout=60)
    assert response.status_code == 408, response.text
    assert response.json()["error"]["code"] == "timeout"
    assert forwards[0] < N_STEPS // 4, forwards[0]


def test_waiting_explanations_hold_no_threads(
    served: tuple[str, FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    """More explanations queue than the shared thread pool has threads (40), yet a request that
    needs that pool (tokenizing) is still answered while they wait."""
    base, app = served
    started, release = hold_explanations(monkeypatch, wait_s=60)
    n_waiting = 45

    def post(path: str, payload: dict[str, Any]) -> httpx.Response:
        return httpx.post(base + path, json={"model": "tiny", **payload}, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(n_waiting + 1) as pool:
        first = pool.submit(post, "/v1/explain", {"prompt": "To be, or not to be"})
        assert started.wait(60)
        queued = [
            pool.submit(post, "/v1/explain/routes", {"prompt": PROMPT, "tau": 0.1 + i / 100})
            for i in range(n_waiting)
        ]
        runner = app.state.explain_serving.runner
        wait_for(lambda: runner.waiting == n_waiting, "the requests to queue")
        try:
            probe = httpx.post(
                base + "/v1/explain/routes",
                json={"model": "tiny", "prompt": PROMPT, "target": 99},
                timeout=30,
            )
            assert probe.status_code == 400 and probe.json()["error"]["param"] == "target"
        finally:
            release.set()
        assert first.result(timeout=120).status_code == 200
        assert all(f.result(timeout=120).status_code == 200 for f in queued)


def test_explanations_leave_the_served_model_in_eval_mode(served: tuple[str, FastAPI]) -> None:
    base, app = served
    model = app.state.lm.models["tiny"].model
    assert not model.training
    for path, extra in (
        ("/v1/explain", {}),
        ("/v1/explain/saliency", {"method": "integrated_gradients", "n_steps": 4}),
        ("/v1/explain/saliency", {"method": "gradient_x_input"}),
    ):
        payload = {"model": "tiny", "prompt": "To be, or not", **extra}
        assert httpx.post(base + path, json=payload, timeout=60).status_code == 200
        assert not model.training, path
        assert not any(m.training for m in model.modules()), path

"""Server hardening (issue 10): engine failures are 500 OpenAI errors, a full queue is a 429
before any work or streaming, one refused prompt cancels its siblings, chat choices stream
together, and nothing internal (file paths, exception text) leaks to clients."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from lmscope.engine.errors import QueueFullError
from lmscope.engine.sampling import SamplingParams
from lmscope.serve.app import create_app
from lmscope.serve.errors import APIError
from lmscope.serve.routing import ModelSpec
from lmscope.serve.serving import Job, run_jobs
from lmscope.serve.state import ServeSettings
from serve_support import running_app, running_server, tiny_server

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "To be or not"}]


def sse_chunks(response: httpx.Response) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:])
        for line in response.iter_lines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


@pytest.fixture(scope="module")
def broken(tiny_checkpoint: Path) -> Iterator[tuple[str, FastAPI]]:
    """A server whose model raises in every forward (a bug or a broken model, not the user)."""
    settings = ServeSettings(models=[ModelSpec("tiny", str(tiny_checkpoint))], prepack=False)
    app = create_app(settings)
    with running_app(app) as base:

        def boom(*args: object, **kwargs: object) -> None:
            raise RuntimeError("secret internal detail")

        app.state.lm.models["tiny"].model.forward = boom
        yield base, app


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (COMPLETIONS, {"prompt": "hi", "max_tokens": 3}),
        (COMPLETIONS, {"prompt": ["hi", "there"], "max_tokens": 3, "stream": True}),
        (CHAT, {"messages": MESSAGES, "max_tokens": 3}),
        (CHAT, {"messages": MESSAGES, "max_tokens": 3, "stream": True, "n": 2}),
    ],
)
def test_engine_failure_is_a_500_error_object(
    broken: tuple[str, FastAPI], path: str, body: dict[str, Any]
) -> None:
    base, _ = broken
    r = httpx.post(base + path, json=body, timeout=60)
    assert r.status_code == 500, r.text[:300]
    error = r.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "secret internal detail" not in r.text and "engine error" not in r.text


@pytest.fixture(scope="module")
def no_queue(tiny_checkpoint: Path) -> Iterator[str]:
    with tiny_server(tiny_checkpoint, max_queue=0) as base:
        yield base


def test_chat_stream_refused_by_a_full_queue_is_a_429(no_queue: str) -> None:
    body = {"messages": MESSAGES, "max_tokens": 3, "stream": True}
    r = httpx.post(no_queue + CHAT, json=body, timeout=60)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "rate_limit_error"


def test_echoed_completion_stream_refused_by_a_full_queue_is_a_429(no_queue: str) -> None:
    body = {"prompt": "hi", "max_tokens": 3, "stream": True, "echo": True}
    r = httpx.post(no_queue + COMPLETIONS, json=body, timeout=60)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"


def test_queue_is_checked_before_the_prompt_is_tokenized(no_queue: str) -> None:
    """An id outside the vocabulary would be a 400, but a full queue answers first."""
    r = httpx.post(no_queue + COMPLETIONS, json={"prompt": [10**9], "max_tokens": 1}, timeout=60)
    assert r.status_code == 429


def test_a_refused_prompt_leaves_no_sibling_generating(tiny_checkpoint: Path) -> None:
    with tiny_server(tiny_checkpoint, max_queue=1, max_batch=1) as base:
        body = {"prompt": ["one", "two"], "max_tokens": 20, "ignore_eos": True}
        r = httpx.post(base + COMPLETIONS, json=body, timeout=60)
        assert r.status_code == 429
        # the server is idle again: one more request finishes, and it is the only one that did
        r = httpx.post(base + COMPLETIONS, json={"prompt": "x", "max_tokens": 1}, timeout=60)
        assert r.status_code == 200
        finished = [
            line
            for line in httpx.get(base + "/metrics").text.splitlines()
            if line.startswith("lmscope:request_success_total{")
        ]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in finished) == 1.0, finished


class QueueingEngine:
    """The second request finds the queue full; the others wait in the queue until closed."""

    def __init__(self) -> None:
        self.calls = 0
        self.closed: list[int] = []

    async def generate(self, prompt: list[int], params: Any, **_: Any) -> AsyncIterator[Any]:
        self.calls += 1
        number = self.calls
        if number == 2:
            raise QueueFullError("full")
        try:
            await asyncio.sleep(3600)  # waiting in the queue
            yield None
        finally:
            self.closed.append(number)


def test_run_jobs_cancels_queued_siblings_when_one_is_refused() -> None:
    engine = QueueingEngine()
    served = SimpleNamespace(id="fake", engine=engine)
    jobs = [Job(i, [1], SamplingParams()) for i in range(3)]

    async def consume() -> None:
        async for _ in run_jobs(served, jobs, timeout=60):  # type: ignore[arg-type]
            pass

    with pytest.raises(APIError) as info:
        asyncio.run(asyncio.wait_for(consume(), 30))
    assert info.value.status == 429
    assert sorted(engine.closed) == [1, 3]  # both queued siblings were withdrawn


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    with tiny_server(tiny_checkpoint, max_batch=4) as base:
        yield base


def test_chat_stream_with_n_runs_the_choices_together(server: str) -> None:
    body = {
        "messages": MESSAGES,
        "max_tokens": 12,
        "ignore_eos": True,
        "stream": True,
        "n": 2,
        "seed": 1,
    }
    with httpx.stream("POST", server + CHAT, json=body, timeout=60) as r:
        assert r.status_code == 200
        chunks = sse_chunks(r)
    order = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["delta"].get("content")]
    assert sorted(set(order)) == [0, 1]
    assert order != sorted(order), "choice 1 only started after choice 0 had finished"
    roles = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["delta"].get("role")]
    assert sorted(roles) == [0, 1]


def test_models_list_no_server_paths(server: str, tiny_checkpoint: Path) -> None:
    text = httpx.get(server + "/v1/models").text
    assert str(tiny_checkpoint) not in text and str(tiny_checkpoint.parent) not in text


def test_health_does_not_leak_the_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    settings = ServeSettings(models=[ModelSpec("gone", str(missing))])
    with running_server(settings, wait_ready=False) as base:
        for _ in range(200):
            body = httpx.get(base + "/health").json()
            if body["status"] == "error":
                break
            asyncio.run(asyncio.sleep(0.05))
        assert body["status"] == "error"
        assert str(missing) not in json.dumps(body) and "Error" not in body["error"]


def test_openapi_describes_the_server(server: str) -> None:
    doc = httpx.get(server + "/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(doc)
    for path in (COMPLETIONS, CHAT):
        responses = doc["paths"][path]["post"]["responses"]
        assert "422" not in responses
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorResponse"
        )
        assert "text/event-stream" in responses["200"]["content"]
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_docs_work_offline(server: str) -> None:
    page = httpx.get(server + "/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "/docs-assets/swagger-ui-bundle.js" in page.text
    assert httpx.get(server + "/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_a_broken_explain_module_stops_the_app() -> None:
    """If the explain routes cannot be imported the server must not start without them."""
    code = (
        "import sys; sys.modules['lmscope.serve.explain_routes'] = None\n"
        "from lmscope.serve.app import create_app; create_app()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "explain_routes" in result.stderr


def test_logit_bias_is_honoured_not_ignored(server: str) -> None:
    forced = 42
    body = {
        "prompt": "hello",
        "max_tokens": 4,
        "temperature": 0,
        "ignore_eos": True,
        "logit_bias": {str(forced): 100},
        "logprobs": 0,
    }
    r = httpx.post(server + COMPLETIONS, json=body, timeout=60)
    assert r.status_code == 200, r.text
    logprobs = r.json()["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == 4
    forced_text = httpx.post(
        server + COMPLETIONS, json={"prompt": [forced], "max_tokens": 0, "echo": True}, timeout=60
    ).json()["choices"][0]["text"]
    assert logprobs["tokens"] == [forced_text] * 4


def test_penalties_reach_the_engine() -> None:
    from lmscope.serve.protocol import ChatCompletionRequest

    body = ChatCompletionRequest.model_validate(
        {
            "messages": MESSAGES,
            "presence_penalty": 0.5,
            "frequency_penalty": -1.5,
            "logit_bias": {"7": -100},
            "seed": 3,
        }
    )
    params = body.to_sampling_params(5, logprobs=None, choice=2)
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -1.5)
    assert dict(params.logit_bias) == {7: -100.0}
    assert (params.max_new_tokens, params.seed) == (5, 5)


def test_official_client_sees_a_rate_limit_on_a_full_chat_stream(no_queue: str) -> None:
    """The openai package raises RateLimitError (and would retry) instead of reading a 200."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=no_queue + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, stream=True)

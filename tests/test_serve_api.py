"""The OpenAI-compatible API end to end over real HTTP, checked against in-process computations."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from lmscope.serve.routing import ModelSpec
from lmscope.serve.state import ServeSettings
from lmscope.zoo.registry import load
from serve_support import running_server, tiny_server


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    settings = ServeSettings(
        models=[ModelSpec("tiny", str(tiny_checkpoint)), ModelSpec("tiny-b", str(tiny_checkpoint))],
        routes=["chat=tiny:1,tiny-b:0"],
        max_batch=4,
        max_seq_len=128,
    )
    with running_server(settings) as base:
        yield base


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path):  # type: ignore[no-untyped-def]
    return load(str(tiny_checkpoint))


def greedy_reference(loaded, prompt_ids: list[int], n: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Greedy continuation by full forwards without any cache: an independent decode."""
    ids = list(prompt_ids)
    eos = loaded.tokenizer.eos_token_id
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(loaded.model(torch.tensor([ids]))[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
            ids.append(nxt)
    return out


def post(base: str, path: str, payload: object, **kw: object) -> httpx.Response:
    return httpx.post(base + path, json=payload, timeout=60, **kw)  # type: ignore[arg-type]


def test_health_models_and_metrics(server: str) -> None:
    assert httpx.get(server + "/health").json()["status"] == "ok"
    ids = [m["id"] for m in httpx.get(server + "/v1/models").json()["data"]]
    assert ids == ["tiny", "tiny-b", "chat"]
    post(server, "/v1/completions", {"model": "tiny", "prompt": "The quick", "max_tokens": 3})
    text = httpx.get(server + "/metrics").text
    for name in (
        "lmscope:prompt_tokens_total",
        "lmscope:generation_tokens_total",
        "lmscope:time_to_first_token_seconds_bucket",
        "lmscope:time_per_output_token_seconds_bucket",
        "lmscope:e2e_request_latency_seconds_count",
        "lmscope:num_requests_running",
        "lmscope:num_requests_waiting",
    ):
        assert name in text, name
    assert 'model_name="tiny"' in text


def test_greedy_completion_matches_independent_decode(server: str, reference) -> None:  # type: ignore[no-untyped-def]
    prompt = "To be, or not"
    body = post(
        server,
        "/v1/completions",
        {"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0},
    ).json()
    ids = reference.tokenizer.encode(prompt)
    expected = reference.tokenizer.decode(
        greedy_reference(reference, ids, 8), skip_special_tokens=True
    )
    choice = body["choices"][0]
    assert choice["text"] == expected
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert (
        body["usage"]["total_tokens"]
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert body["model"] == "tiny" and body["object"] == "text_completion"


def test_echo_logprobs_scoring_matches_log_softmax(server: str, reference) -> None:  # type: ignore[no-untyped-def]
    text = "In the beginning God created"
    body = post(
        server,
        "/v1/completions",
        {"model": "tiny", "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 2},
    ).json()
    choice = body["choices"][0]
    ids = reference.tokenizer.encode(text)
    with torch.no_grad():
        logprobs = torch.log_softmax(reference.model(torch.tensor([ids]))[0], -1)
    expected = [None] + [float(logprobs[i, ids[i + 1]]) for i in range(len(ids) - 1)]
    got = choice["logprobs"]["token_logprobs"]
    assert got[0] is None and len(got) == len(ids)
    assert got[1:] == pytest.approx(expected[1:], abs=1e-4)
    assert choice["text"] == text
    assert len(choice["logprobs"]["top_logprobs"][1]) <= 2
    assert body["usage"]["completion_tokens"] == 0


def sse_events(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_streaming_completion_equals_non_streaming(server: str) -> None:
    payload = {"model": "tiny", "prompt": "The quick brown", "max_tokens": 10, "temperature": 0}
    whole = post(server, "/v1/completions", payload).json()["choices"][0]["text"]
    with httpx.stream(
        "POST",
        server + "/v1/completions",
        json={**payload, "stream": True, "stream_options": {"include_usage": True}},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == whole
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    assert any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks)


def test_chat_completion_and_stream(server: str, reference) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "To be or not"}]
    body = post(
        server,
        "/v1/chat/completions",
        {"model": "tiny", "messages": messages, "max_tokens": 6, "temperature": 0},
    ).json()
    prompt = reference.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    ids = reference.tokenizer.encode(prompt, add_special_tokens=False)
    expected = reference.tokenizer.decode(
        greedy_reference(reference, ids, 6), skip_special_tokens=True
    )
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected}
    assert body["usage"]["prompt_tokens"] == len(ids)
    with httpx.stream(
        "POST",
        server + "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": messages,
            "max_tokens": 6,
            "temperature": 0,
            "stream": True,
        },
        timeout=60,
    ) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected


def test_seeded_sampling_is_reproducible_and_n_gives_choices(server: str) -> None:
    payload = {
        "model": "tiny",
        "prompt": "The lazy",
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 7,
        "n": 2,
    }
    a, b = (
        post(server, "/v1/completions", payload).json(),
        post(server, "/v1/completions", payload).json(),
    )
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1]


def test_concurrent_requests_batch_without_changing_answers(server: str) -> None:
    prompts = [
        "The quick",
        "To be",
        "In the beginning God",
        "brown fox jumps over",
        "question",
        "heaven and",
    ]
    payloads = [{"model": "tiny", "prompt": p, "max_tokens": 12, "temperature": 0} for p in prompts]
    alone = [post(server, "/v1/completions", p).json()["choices"][0]["text"] for p in payloads]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        together = list(
            pool.map(
                lambda p: post(server, "/v1/completions", p).json()["choices"][0]["text"], payloads
            )
        )
    assert together == alone


def test_stop_strings_cut_the_text(server: str) -> None:
    payload = {"model": "tiny", "prompt": "The quick", "max_tokens": 20, "temperature": 0}
    full = post(server, "/v1/completions", payload).json()["choices"][0]["text"]
    # The fixture model's greedy text is fixed; a stop string needs some of it to cut.
    assert len(full) >= 4, f"greedy text {full!r} is too short to test a stop string"
    stop = full[2:4]
    cut = post(server, "/v1/completions", {**payload, "stop": [stop]}).json()["choices"][0]
    assert cut["text"] == full[: full.index(stop)]
    assert cut["finish_reason"] == "stop"


def test_route_alias_answers_with_the_version(server: str) -> None:
    body = post(
        server, "/v1/completions", {"model": "chat", "prompt": "The", "max_tokens": 1}
    ).json()
    assert body["model"] == "tiny"  # weight 1 : 0


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10**9}, 400, "max_tokens"),
        ({"prompt": "x", "temperature": -0.5}, 400, "temperature"),
        ({"prompt": 12}, 400, "prompt"),
        ({"prompt": "x", "model": "gpt3"}, 404, "available: tiny"),
        ({"prompt": "word " * 400, "model": "tiny"}, 400, "maximum context length"),
        ({"prompt": [999999]}, 400, "outside the vocabulary"),
        ({"prompt": []}, 400, "prompt"),
    ],
)
def test_bad_completion_requests_get_openai_errors(
    server: str, payload: dict, status: int, needle: str
) -> None:
    response = post(server, "/v1/completions", {"model": "tiny", **payload})
    assert response.status_code == status
    error = response.json()["error"]
    assert needle in error["message"] and error["type"]


def test_malformed_bodies(server: str) -> None:
    for content in (b"{not json", b"\xff\xfe\xfd", b'{"prompt": "\xff"}'):
        r = httpx.post(
            server + "/v1/completions",
            content=content,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400, content
        assert "error" in r.json()
    r = post(server, "/v1/chat/completions", {"model": "tiny", "messages": []})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    big = b'{"prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    r = httpx.post(
        server + "/v1/completions", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert httpx.get(server + "/health").status_code == 200  # still serving


def test_api_key_and_full_queue(tiny_checkpoint: Path) -> None:
    with tiny_server(tiny_checkpoint, api_key="sekret", max_queue=0) as base:
        payload = {"prompt": "hi", "max_tokens": 1}
        r = post(base, "/v1/completions", payload)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(base + "/health").status_code == 200  # health needs no key
        r = post(base, "/v1/completions", payload, headers={"Authorization": "Bearer sekret"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"


def test_disconnected_stream_is_cancelled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A client that hangs up mid-stream stops its generation (finish reason `abort`), and the
    request's log line still counts the tokens it was sent.

    The request asks for far more tokens than can be generated before the hang-up is noticed,
    so it cannot finish on its own first.
    """
    import json
    import logging
    import time

    caplog.set_level(logging.INFO, logger="lmscope")

    from conftest import build_tiny_tokenizer
    from lmscope.model.config import ModelConfig
    from lmscope.model.transformer import Transformer
    from lmscope.zoo.checkpoint import save_checkpoint

    tokenizer = build_tiny_tokenizer()
    cfg = ModelConfig(vocab_size=len(tokenizer), d_model=64, n_layers=2, n_heads=4, n_ctx=2048)
    save_checkpoint(Transformer(cfg).eval(), tmp_path / "long", tokenizer=tokenizer)
    settings = ServeSettings(models=[ModelSpec("long", str(tmp_path / "long"))], max_seq_len=2048)
    with running_server(settings) as base:
        payload = {"prompt": "The", "max_tokens": 2000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", base + "/v1/completions", json=payload, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    break  # one chunk, then hang up
        aborted = 'lmscope:request_success_total{finished_reason="abort",model_name="long"} 1.0'
        deadline = time.time() + 20
        while time.time() < deadline:
            metrics = httpx.get(base + "/metrics").text
            if aborted in metrics:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the abandoned request was not aborted")
        assert 'finished_reason="length",model_name="long"' not in metrics

        def completion_log() -> dict[str, object] | None:
            for record in caplog.records:
                if record.getMessage().startswith("{") and "/v1/completions" in record.getMessage():
                    return dict(json.loads(record.getMessage()))
            return None

        while time.time() < deadline and completion_log() is None:
            time.sleep(0.05)
        line = completion_log()
        assert line is not None and line["model"] == "long"
        assert line["tokens_in"] == 1 and int(str(line["tokens_out"])) >= 1

"""Bad input gets a 400 OpenAI error object whose `param` names the field (issue 10's catalogue):
lone surrogates, booleans posing as integers, NaN, malformed JSON, wrong content types, options
that need another option, empty prompts, over-long prompt lists."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serve_support import tiny_server


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    with tiny_server(tiny_checkpoint, max_batch=2, max_seq_len=96) as base:
        yield base


def raw(
    base: str, path: str, content: bytes, content_type: str = "application/json"
) -> httpx.Response:
    return httpx.post(
        base + path, content=content, headers={"content-type": content_type}, timeout=60
    )


def error_of(response: httpx.Response, status: int = 400) -> dict[str, object]:
    assert response.status_code == status, response.text[:300]
    error: dict[str, object] = response.json()["error"]
    assert error["type"] and error["message"]
    return error


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.mark.parametrize(
    ("path", "body", "param", "needle"),
    [
        # JSON escapes for a lone surrogate: valid JSON, not valid Unicode text
        (COMPLETIONS, b'{"prompt": "ab\\ud800cd"}', "prompt", "surrogate"),
        (COMPLETIONS, b'{"prompt": ["ok", "ab\\udfffcd"]}', "prompt.[1]", "surrogate"),
        (
            CHAT,
            b'{"messages": [{"role": "user", "content": "ab\\ud800cd"}]}',
            "messages.[0].content",
            "surrogate",
        ),
        (
            CHAT,
            b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
            "messages.[0].content.[0].text",
            "surrogate",
        ),
        # booleans are not integers
        (COMPLETIONS, b'{"prompt": [true, false]}', "prompt", "bool"),
        (
            CHAT,
            b'{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": false}',
            "max_completion_tokens",
            "integer",
        ),
        (COMPLETIONS, b'{"prompt": "hi", "n": true}', "n", "integer"),
        # NaN says it is not a number
        (COMPLETIONS, b'{"prompt": "hi", "temperature": NaN}', "temperature", "not a number"),
        # options that need another option, as in OpenAI's API
        (
            COMPLETIONS,
            b'{"prompt": "hi", "stream_options": {"include_usage": true}}',
            "stream_options",
            "stream",
        ),
        (
            CHAT,
            b'{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}',
            "top_logprobs",
            "logprobs",
        ),
        # malformed JSON names no field
        (COMPLETIONS, b'{"prompt": "hi", "max_tokens": 3,,}', None, "not valid JSON"),
        (COMPLETIONS, b'{"prompt": [[1, 2], "a"]}', "prompt", "token ids"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    server: str, path: str, body: bytes, param: str | None, needle: str
) -> None:
    error = error_of(raw(server, path, body))
    assert error["param"] == param
    assert needle in str(error["message"])


def test_too_many_prompts_in_one_request(server: str) -> None:
    body = {"prompt": ["hi"] * 65, "max_tokens": 1}
    error = error_of(httpx.post(server + COMPLETIONS, json=body, timeout=60))
    assert error["param"] == "prompt" and "at most 64" in str(error["message"])
    # within the protocol's cap but more than this server queues per request
    body = {"prompt": ["hi"] * 20, "n": 4, "max_tokens": 1}
    error = error_of(httpx.post(server + COMPLETIONS, json=body, timeout=60))
    assert error["param"] == "n"  # prompts x n


def test_wrong_content_type_says_so(server: str) -> None:
    error = error_of(raw(server, COMPLETIONS, b'{"prompt": "hi"}', "text/plain"), 415)
    assert "Content-Type" in str(error["message"]) and "text/plain" in str(error["message"])


def test_empty_prompt_starts_from_the_boundary_token(server: str) -> None:
    """OpenAI's API accepts an empty prompt; it is not a context-length error on max_tokens."""
    r = httpx.post(server + COMPLETIONS, json={"prompt": "", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 1


def test_prompt_alone_too_long_names_the_prompt(server: str) -> None:
    r = httpx.post(
        server + COMPLETIONS, json={"prompt": "word " * 200, "max_tokens": 1}, timeout=60
    )
    error = error_of(r)
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    r = httpx.post(server + COMPLETIONS, json={"prompt": "word", "max_tokens": 95}, timeout=60)
    assert error_of(r)["param"] == "max_tokens"


def test_structured_fields_without_support_are_refused(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the structured-output module, response_format/tools are a 400, never ignored."""
    from lmscope.serve import serving_chat

    monkeypatch.setattr(serving_chat, "apply_structured", None)
    messages = [{"role": "user", "content": "hi"}]
    for field, value in (
        ("response_format", {"type": "json_object"}),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("functions", [{"name": "f"}]),
    ):
        r = httpx.post(server + CHAT, json={"messages": messages, field: value}, timeout=60)
        error = error_of(r)
        assert error["param"] == field and "not supported" in str(error["message"])
    r = httpx.post(
        server + CHAT,
        json={"messages": messages, "response_format": {"type": "text"}, "max_tokens": 1},
        timeout=60,
    )
    assert r.status_code == 200  # plain text is what the server does anyway

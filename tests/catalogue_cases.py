"""The bad-input catalogue: hostile or mistaken HTTP requests and the answer each must get.

Every case states the acceptable answer: the status (or the few acceptable statuses), and for
errors the OpenAI error object's `param` and, where it matters, its `code` and a phrase of its
message. `catalogue_cases_routes` has the other routes' cases; `tests/test_serve_catalogue.py` sends them to a real server. Bodies are sent as
`json.dumps` writes them (ASCII escapes, so a lone surrogate travels as `\\ud800`, and NaN or
infinity as the bare `NaN`/`Infinity` that Python's JSON reader accepts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ANY = object()  # the field is not checked
SURROGATE = "ab\ud800cd"
NAN, INF = float("nan"), float("inf")
LONG_TEXT = "The quick brown fox jumps over the lazy dog. " * 120  # far past any context here

C, H, M, F = "/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/feedback"
E = "/v1/explain"
USER = [{"role": "user", "content": "To be or not"}]
PROMPT = "The quick brown fox"


@dataclass
class Case:
    name: str
    path: str
    body: Any = None  # JSON-encoded unless `raw` is given
    status: int | tuple[int, ...] = 400
    param: Any = ANY
    code: Any = ANY
    says: str | None = None  # a phrase the error message must hold (case-insensitive)
    method: str = "POST"
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    key: bool = True  # send the API key


def bad(name: str, path: str, body: Any, param: Any, **kw: Any) -> Case:
    return Case(name, path, body, param=param, **kw)


def ok(name: str, path: str, body: Any = None, **kw: Any) -> Case:
    return Case(name, path, body, status=200, **kw)


def completions(**over: Any) -> dict[str, Any]:
    return {"prompt": "hi", "max_tokens": 2, **over}


def chat(**over: Any) -> dict[str, Any]:
    return {"messages": USER, "max_tokens": 2, **over}


def explain(**over: Any) -> dict[str, Any]:
    return {"prompt": PROMPT, **over}


def completion_cases() -> list[Case]:
    c = completions
    p = "prompt"
    return [
        bad("c/prompt missing", C, {"max_tokens": 2}, p),
        bad("c/prompt null", C, c(prompt=None), p),
        bad("c/prompt int", C, c(prompt=123), p),
        bad("c/prompt object", C, c(prompt={"text": "hi"}), p),
        bad("c/prompt []", C, c(prompt=[]), p),
        bad("c/prompt booleans", C, c(prompt=[True, False]), p),
        bad("c/prompt float ids", C, c(prompt=[1.5, 2]), p),
        bad("c/prompt [[]]", C, c(prompt=[[]]), "prompt.[0]"),
        bad("c/prompt mixed list", C, c(prompt=[[1, 2], "a"]), p),
        bad("c/prompt negative id", C, c(prompt=[-1]), "prompt.[0]"),
        bad("c/prompt nested negative id", C, c(prompt=[[1], [-2]]), "prompt.[1].[0]"),
        bad("c/prompt id out of vocab", C, c(prompt=[5, 10**9]), p, code="invalid_token_id"),
        bad("c/prompt nested id out of vocab", C, c(prompt=[[5], [10**9]]), "prompt.[1]"),
        bad("c/prompt surrogate", C, c(prompt=SURROGATE), p, says="surrogate"),
        bad("c/prompt list surrogate", C, c(prompt=["ok", SURROGATE]), "prompt.[1]"),
        bad("c/prompt 65 prompts", C, c(prompt=["a"] * 65), p),
        bad("c/prompt too long", C, c(prompt=LONG_TEXT), p, code="context_length_exceeded"),
        bad("c/prompt long ids", C, c(prompt=[5] * 5000), p, code="context_length_exceeded"),
        ok("c/prompt empty string", C, c(prompt="")),
        ok("c/prompt ids as 5.0", C, c(prompt=[5.0, 6])),
        bad("c/model int", C, c(model=123), "model"),
        bad("c/model unknown", C, c(model="gpt-17"), "model", status=404, code="model_not_found"),
        bad("c/model surrogate", C, c(model=SURROGATE), "model"),
        bad("c/model list", C, c(model=["tiny"]), "model"),
        bad("c/max_tokens -1", C, c(max_tokens=-1), "max_tokens"),
        bad("c/max_tokens huge", C, c(max_tokens=10**12), "max_tokens"),
        bad("c/max_tokens 10**40", C, c(max_tokens=10**40), "max_tokens"),
        bad("c/max_tokens string", C, c(max_tokens="5"), "max_tokens"),
        bad("c/max_tokens true", C, c(max_tokens=True), "max_tokens"),
        bad("c/max_tokens 2.5", C, c(max_tokens=2.5), "max_tokens"),
        bad("c/max_tokens NaN", C, c(max_tokens=NAN), "max_tokens", says="NaN"),
        ok("c/max_tokens 2.0", C, c(max_tokens=2.0)),
        ok("c/max_tokens 0", C, c(max_tokens=0)),
        bad("c/temperature NaN", C, c(temperature=NAN), "temperature", says="not a number"),
        bad("c/temperature inf", C, c(temperature=INF), "temperature", says="infinity"),
        bad("c/temperature -inf", C, c(temperature=-INF), "temperature"),
        bad("c/temperature -1", C, c(temperature=-1), "temperature"),
        bad("c/temperature string", C, c(temperature="hot"), "temperature"),
        bad("c/temperature true", C, c(temperature=True), "temperature"),
        bad(
            "c/temperature 1e400",
            C,
            raw=b'{"prompt": "hi", "temperature": 1e400}',
            body=None,
            param="temperature",
        ),
        bad("c/top_p 0", C, c(top_p=0), "top_p"),
        bad("c/top_p 1.5", C, c(top_p=1.5), "top_p"),
        bad("c/top_k -1", C, c(top_k=-1), "top_k"),
        bad("c/top_k 1.5", C, c(top_k=1.5), "top_k"),
        bad("c/repetition_penalty 0", C, c(repetition_penalty=0), "repetition_penalty"),
        bad("c/presence_penalty 3", C, c(presence_penalty=3), "presence_penalty"),
        bad("c/frequency_penalty -3", C, c(frequency_penalty=-3), "frequency_penalty"),
        bad("c/frequency_penalty NaN", C, c(frequency_penalty=NAN), "frequency_penalty"),
        bad("c/logit_bias 101", C, c(logit_bias={"5": 101}), "logit_bias"),
        bad("c/logit_bias -101", C, c(logit_bias={"5": -101}), "logit_bias"),
        bad("c/logit_bias word key", C, c(logit_bias={"abc": 1}), ("logit_bias", "logit_bias.abc")),
        bad("c/logit_bias negative key", C, c(logit_bias={"-1": 1}), "logit_bias"),
        bad("c/logit_bias out of vocab", C, c(logit_bias={"999999999": 1}), "logit_bias"),
        bad("c/logit_bias list", C, c(logit_bias=[5, 1]), "logit_bias"),
        bad("c/logit_bias NaN", C, c(logit_bias={"5": NAN}), "logit_bias"),
        bad("c/logit_bias bool", C, c(logit_bias={"5": True}), "logit_bias"),
        bad("c/n 0", C, c(n=0), "n"),
        bad("c/n 17", C, c(n=17), "n"),
        bad("c/n true", C, c(n=True), "n"),
        bad(
            "c/n x prompts over the cap",
            C,
            c(prompt=["a"] * 64, n=16),
            ("n", "prompt"),
            code="too_many_completions",
        ),
        bad("c/logprobs 21", C, c(logprobs=21), "logprobs"),
        bad("c/logprobs -1", C, c(logprobs=-1), "logprobs"),
        bad("c/logprobs true", C, c(logprobs=True), "logprobs"),
        bad("c/echo string", C, c(echo="yes"), "echo"),
        bad("c/echo 1", C, c(echo=1), "echo"),
        bad("c/stream string", C, c(stream="true"), "stream"),
        bad("c/stream 1", C, c(stream=1), "stream"),
        bad(
            "c/stream_options without stream",
            C,
            c(stream_options={"include_usage": True}),
            "stream_options",
        ),
        bad("c/stream_options string", C, c(stream=True, stream_options="yes"), "stream_options"),
        bad(
            "c/stream_options.include_usage 1",
            C,
            c(stream=True, stream_options={"include_usage": 1}),
            "stream_options.include_usage",
        ),
        bad("c/stream echo logprobs", C, c(stream=True, echo=True, logprobs=1), "stream"),
        bad("c/stop empty", C, c(stop=""), "stop"),
        bad("c/stop 5 strings", C, c(stop=["a", "b", "c", "d", "e"]), "stop"),
        bad("c/stop mixed", C, c(stop=["a", 5]), "stop"),
        bad("c/stop surrogate", C, c(stop=SURROGATE), "stop", says="surrogate"),
        bad("c/seed -1", C, c(seed=-1), "seed"),
        bad("c/seed string", C, c(seed="1"), "seed"),
        ok("c/seed 2**70", C, c(seed=2**70)),
        bad("c/user int", C, c(user=5), "user"),
        bad("c/user surrogate", C, c(user=SURROGATE), "user"),
        bad("c/ignore_eos string", C, c(ignore_eos="no"), "ignore_eos"),
        bad("c/suffix", C, c(suffix=" end"), "suffix"),
        bad("c/best_of 2", C, c(best_of=2), "best_of"),
        ok("c/best_of 1", C, c(best_of=1)),
        ok("c/suffix empty", C, c(suffix="")),
        ok("c/unknown extra field", C, c(metadata_xyz={"a": 1})),
    ]


def chat_cases() -> list[Case]:
    h = chat
    m0 = "messages.[0]"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    return [
        bad("h/messages missing", H, {"max_tokens": 2}, "messages"),
        bad("h/messages []", H, h(messages=[]), "messages"),
        bad("h/messages object", H, h(messages={"role": "user"}), "messages"),
        bad("h/messages string", H, h(messages="hi"), "messages"),
        bad("h/messages [1]", H, h(messages=[1]), m0),
        bad("h/messages nested list", H, h(messages=[USER]), m0),
        bad("h/role missing", H, h(messages=[{"content": "hi"}]), f"{m0}.role"),
        bad("h/role unknown", H, h(messages=[{"role": "wizard", "content": "hi"}]), f"{m0}.role"),
        bad("h/role int", H, h(messages=[{"role": 5, "content": "hi"}]), f"{m0}.role"),
        bad("h/content int", H, h(messages=[{"role": "user", "content": 5}]), f"{m0}.content"),
        bad(
            "h/content surrogate",
            H,
            h(messages=[{"role": "user", "content": SURROGATE}]),
            f"{m0}.content",
            says="surrogate",
        ),
        bad(
            "h/content part surrogate",
            H,
            h(messages=[{"role": "user", "content": [{"type": "text", "text": SURROGATE}]}]),
            f"{m0}.content.[0].text",
        ),
        bad(
            "h/content image part",
            H,
            h(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
            f"{m0}.content.[0].type",
        ),
        bad(
            "h/name surrogate",
            H,
            h(messages=[{"role": "user", "content": "x", "name": SURROGATE}]),
            f"{m0}.name",
        ),
        bad(
            "h/tool_call_id surrogate",
            H,
            h(messages=[{"role": "tool", "content": "x", "tool_call_id": SURROGATE}]),
            f"{m0}.tool_call_id",
        ),
        bad(
            "h/second message surrogate",
            H,
            h(messages=[*USER, {"role": "assistant", "content": SURROGATE}]),
            "messages.[1].content",
        ),
        bad(
            "h/too long",
            H,
            h(messages=[{"role": "user", "content": LONG_TEXT}]),
            "messages",
            code="context_length_exceeded",
        ),
        bad("h/model unknown", H, h(model="nope"), "model", status=404, code="model_not_found"),
        bad("h/model surrogate", H, h(model=SURROGATE), "model"),
        bad(
            "h/max_completion_tokens false",
            H,
            h(max_completion_tokens=False),
            "max_completion_tokens",
        ),
        bad("h/max_completion_tokens -5", H, h(max_completion_tokens=-5), "max_completion_tokens"),
        bad("h/max_tokens NaN", H, h(max_tokens=NAN), "max_tokens"),
        bad("h/logprobs int", H, h(logprobs=5), "logprobs"),
        bad("h/top_logprobs without logprobs", H, h(top_logprobs=3), "top_logprobs"),
        bad("h/top_logprobs 21", H, h(logprobs=True, top_logprobs=21), "top_logprobs"),
        bad("h/top_logprobs -1", H, h(logprobs=True, top_logprobs=-1), "top_logprobs"),
        bad("h/n 0", H, h(n=0), "n"),
        bad("h/n 17", H, h(n=17), "n"),
        bad("h/temperature NaN", H, h(temperature=NAN), "temperature", says="not a number"),
        bad("h/presence_penalty inf", H, h(presence_penalty=INF), "presence_penalty"),
        bad("h/logit_bias -1 key", H, h(logit_bias={"-1": 5}), "logit_bias"),
        bad("h/logit_bias out of range", H, h(logit_bias={"5": -101}), "logit_bias"),
        bad("h/seed 1.5", H, h(seed=1.5), "seed"),
        bad("h/stream yes", H, h(stream="yes"), "stream"),
        bad(
            "h/stream_options without stream",
            H,
            h(stream_options={"include_usage": True}),
            "stream_options",
        ),
        bad("h/stop list surrogate", H, h(stop=[SURROGATE]), "stop.[0]", says="surrogate"),
        bad("h/user surrogate", H, h(user=SURROGATE), "user"),
        bad("h/parallel_tool_calls string", H, h(parallel_tool_calls="yes"), "parallel_tool_calls"),
        bad("h/tools []", H, h(tools=[]), "tools"),
        bad("h/tools without function", H, h(tools=[{"type": "function"}]), "tools.[0].function"),
        bad(
            "h/tools wrong type",
            H,
            h(tools=[{"type": "retrieval", "function": {"name": "f"}}]),
            "tools.[0].type",
        ),
        bad(
            "h/tools bad name",
            H,
            h(tools=[{"type": "function", "function": {"name": "bad name!"}}]),
            "tools.[0].function.name",
        ),
        bad(
            "h/tools template without tools",
            H,
            h(tools=[{"type": "function", "function": {"name": "f", "parameters": schema}}]),
            "tools",
        ),
        bad("h/tool_choice without tools", H, h(tool_choice="auto"), "tool_choice"),
        bad("h/tool_choice unknown", H, h(tool_choice="sometimes"), "tool_choice"),
        bad("h/function_call without functions", H, h(function_call="auto"), "function_call"),
        bad("h/functions bad name", H, h(functions=[{"name": ""}]), "functions.[0].name"),
        bad("h/response_format xml", H, h(response_format={"type": "xml"}), "response_format.type"),
        bad("h/response_format string", H, h(response_format="json"), "response_format"),
        bad(
            "h/json_schema missing",
            H,
            h(response_format={"type": "json_schema"}),
            "response_format",
        ),
        bad(
            "h/json_object with a schema",
            H,
            h(response_format={"type": "json_object", "json_schema": {"name": "x", "schema": {}}}),
            "response_format",
        ),
        bad(
            "h/json_schema without name",
            H,
            h(response_format={"type": "json_schema", "json_schema": {"schema": schema}}),
            "response_format.json_schema.name",
        ),
        bad(
            "h/json_schema schema not object",
            H,
            h(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}),
            "response_format.json_schema.schema",
        ),
        bad(
            "h/json_schema invalid schema",
            H,
            h(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                }
            ),
            ("response_format.json_schema.schema", "response_format"),
        ),
        bad(
            "h/json_schema dangling $ref",
            H,
            h(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}},
                }
            ),
            ("response_format.json_schema.schema", "response_format"),
        ),
        ok("h/response_format text", H, h(response_format={"type": "text"})),
        ok("h/unknown extra field", H, h(metadata_xyz=1)),
        ok(
            "h/content parts",
            H,
            h(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
        ),
    ]

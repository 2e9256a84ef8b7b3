"""Structured output and tools end to end: a real server, sampling at temperature 1, checked
with an independent JSON-schema validator and with the official openai client."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from pydantic import BaseModel, Field

from lmscope.serve.routing import ModelSpec
from lmscope.serve.state import ServeSettings
from serve_support import running_server
from test_structured_constraints import SCHEMAS as GRAMMAR_SCHEMAS
from test_structured_plan import TOOL_TEMPLATE, WEATHER

pytest.importorskip("llguidance")
jsonschema_rs = pytest.importorskip("jsonschema_rs")

SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": GRAMMAR_SCHEMAS["nested"],  # the grammar tests' nested object, end to end
    "enums": {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "ok": {"type": "boolean"},
            "score": {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]},
        },
        "required": ["colour", "ok", "score"],
        "additionalProperties": False,
    },
    "array": {
        "type": "array",
        "items": {"enum": ["a", "b", "c"]},
        "minItems": 1,
        "maxItems": 5,
    },
}
MESSAGES = [{"role": "user", "content": "Answer in JSON."}]


@pytest.fixture(scope="module")
def tool_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model again, with a chat template that shows tools."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tools") / "tiny-tools"
    shutil.copytree(tiny_checkpoint, path)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    tokenizer.chat_template = TOOL_TEMPLATE
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tool_checkpoint: Path) -> Iterator[str]:
    settings = ServeSettings(
        models=[ModelSpec("tiny", str(tiny_checkpoint)), ModelSpec("tools", str(tool_checkpoint))],
        max_batch=4,
        max_seq_len=256,
    )
    with running_server(settings) as base:
        yield base


def chat(base: str, **body: Any) -> httpx.Response:
    payload = {"model": "tiny", "messages": MESSAGES, "max_tokens": 120, **body}
    return httpx.post(base + "/v1/chat/completions", json=payload, timeout=120)


def schema_format(schema: dict[str, Any], strict: bool | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "answer", "schema": schema}
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_sampled_choice_is_valid_json_for_the_schema(server: str, name: str) -> None:
    schema = SCHEMAS[name]
    r = chat(server, response_format=schema_format(schema), temperature=1.0, n=4, seed=7)
    assert r.status_code == 200, r.text
    validator = jsonschema_rs.validator_for(schema)
    for choice in r.json()["choices"]:
        assert choice["finish_reason"] == "stop"
        assert validator.is_valid(json.loads(choice["message"]["content"]))


def test_greedy_answers_are_constrained_too(server: str) -> None:
    schema = SCHEMAS["nested"]
    r = chat(server, response_format=schema_format(schema, strict=True), temperature=0)
    assert r.status_code == 200, r.text
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "stop", choice
    assert jsonschema_rs.is_valid(schema, json.loads(choice["message"]["content"]))


def test_a_streamed_answer_is_valid_json(server: str) -> None:
    schema = SCHEMAS["nested"]
    body = {
        "model": "tiny",
        "messages": MESSAGES,
        "max_tokens": 120,
        "stream": True,
        "response_format": schema_format(schema),
    }
    text, finish = "", None
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                text += choice["delta"].get("content") or ""
                finish = choice["finish_reason"] or finish
    assert finish == "stop"
    assert jsonschema_rs.is_valid(schema, json.loads(text))


class Pet(BaseModel):
    kind: Literal["cat", "dog", "fish"]
    name: str = Field(max_length=6)


class Owner(BaseModel):
    adult: bool
    age: int = Field(ge=0, le=120)
    pets: list[Pet] = Field(max_length=2)


def test_the_openai_client_parses_a_pydantic_model(server: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)
    for seed in range(3):
        completion = client.chat.completions.parse(
            model="tiny",
            messages=MESSAGES,
            response_format=Owner,
            temperature=1.0,
            max_tokens=200,
            seed=seed,
        )
        parsed = completion.choices[0].message.parsed
        assert isinstance(parsed, Owner)
        assert 0 <= parsed.age <= 120 and len(parsed.pets) <= 2


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"response_format": schema_format({"type": "foo"})}, "response_format", "foo"),
        (
            {"response_format": schema_format({"type": "object", "properties": {}}, True)},
            "response_format",
            "additionalProperties",
        ),
        (
            {"response_format": schema_format({"type": "array", "uniqueItems": True}, True)},
            "response_format",
            "uniqueItems",
        ),
        ({"tools": [WEATHER]}, "tools", "does not support tools"),
        ({"functions": [WEATHER["function"]]}, "functions", "does not support tools"),
        ({"model": "tools", "tool_choice": "required"}, "tool_choice", "only allowed"),
    ],
)
def test_requests_that_cannot_be_honoured_are_400(
    server: str, body: dict[str, Any], param: str, needle: str
) -> None:
    r = chat(server, **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and needle in error["message"], error


def test_a_required_tool_call_comes_back_as_tool_calls(server: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)
    completion = client.chat.completions.create(
        model="tools",
        messages=MESSAGES,
        tools=[WEATHER],
        tool_choice="required",
        temperature=1.0,
        max_tokens=120,
        n=3,
    )
    for choice in completion.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather"
        arguments = json.loads(call.function.arguments)
        assert jsonschema_rs.is_valid(WEATHER["function"]["parameters"], arguments)


def test_a_streamed_tool_call_accumulates_in_the_openai_client(server: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)
    with client.chat.completions.stream(
        model="tools",
        messages=MESSAGES,
        tools=[openai.pydantic_function_tool(Owner, name="record_owner")],
        tool_choice="required",
        max_tokens=150,
    ) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "record_owner"
    assert isinstance(call.function.parsed_arguments, Owner)


@pytest.mark.slow
def test_smollm2_answers_json_objects_and_pydantic_models() -> None:
    """The embedded default model, sampled at temperature 1: a JSON object, and a parsed model."""
    openai = pytest.importorskip("openai")
    settings = ServeSettings(models=[ModelSpec("smollm2-135m", "smollm2-135m")], max_batch=4)
    ask = [{"role": "user", "content": "Describe a cat as JSON with its name and age."}]
    with running_server(settings) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
        reply = client.chat.completions.create(
            model="smollm2-135m",
            messages=ask,
            response_format={"type": "json_object"},
            temperature=1.0,
            max_tokens=160,
            n=2,
            seed=1,
        )
        for choice in reply.choices:
            if choice.finish_reason == "stop":
                assert isinstance(json.loads(choice.message.content or ""), dict)
            else:  # cut by max_tokens: still the start of an object
                assert choice.finish_reason == "length"
                assert (choice.message.content or "").startswith("{")
        for seed in range(2):
            parsed = client.chat.completions.parse(
                model="smollm2-135m",
                messages=ask,
                response_format=Owner,
                temperature=1.0,
                max_tokens=160,
                seed=seed,
            )
            assert isinstance(parsed.choices[0].message.parsed, Owner)

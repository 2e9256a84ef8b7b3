"""apply_structured: response_format, tools/tool_choice and functions/function_call, planned
and refused with a 400 naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from conftest import build_tiny_tokenizer
from lmscope.serve.errors import APIError
from lmscope.serve.structured import apply_structured, parse_tool_calls, template_supports_tools

pytest.importorskip("llguidance")

# A template that lists the tools in a system turn (short: the tiny test model has 256 positions).
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t['function']['name'] }}"
    "{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 6},
                "unit": {"enum": ["c", "f"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def tool_tok():  # type: ignore[no-untyped-def]
    tok = build_tiny_tokenizer()
    tok.chat_template = TOOL_TEMPLATE
    return tok


def run(tok, processors, seed=0, limit=300) -> str:  # type: ignore[no-untyped-def]
    """Sample random logits through the processors until EOS; the text."""
    generator = torch.Generator().manual_seed(seed)
    generated: list[int] = []
    for _ in range(limit):
        logits = torch.randn(len(tok), generator=generator)
        for processor in processors:
            logits = processor(generated, logits)
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        if token == tok.eos_token_id:
            return str(tok.decode(generated))
        generated.append(token)
    raise AssertionError("no end")


def refused(tok, body: dict[str, Any], param: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(APIError) as err:
        apply_structured({"messages": MESSAGES, **body}, tok)
    assert err.value.status == 400
    assert err.value.param == param, err.value.message
    assert "\n" not in err.value.message
    return err.value.message


def test_no_fields_and_text_format_plan_nothing(tok) -> None:  # type: ignore[no-untyped-def]
    for body in ({}, {"response_format": None}, {"response_format": {"type": "text"}}):
        plan = apply_structured({"messages": MESSAGES, **body}, tok)
        assert not plan.active and plan.processors() == () and plan.template_kwargs == {}
        assert plan.message("hello", "stop") == ({"content": "hello"}, "stop")


def test_json_object_gives_an_object_per_choice(tok) -> None:  # type: ignore[no-untyped-def]
    plan = apply_structured({"response_format": {"type": "json_object"}}, tok)
    first, second = plan.processors(), plan.processors()
    assert first[0] is not second[0]  # one state per choice
    for seed in range(3):
        text = run(tok, plan.processors(), seed=seed, limit=2000)
        assert isinstance(json.loads(text), dict)


def test_json_schema_output_validates(tok) -> None:  # type: ignore[no-untyped-def]
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 4},
            "n": {"type": "integer", "minimum": 1, "maximum": 9},
        },
        "required": ["tags", "n"],
        "additionalProperties": False,
    }
    body = {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "T", "schema": schema, "strict": True},
        }
    }
    plan = apply_structured(body, tok)
    for seed in range(4):
        assert jsonschema_rs.is_valid(schema, json.loads(run(tok, plan.processors(), seed=seed)))


def test_pydantic_strict_schemas_from_the_openai_client_are_accepted(tok) -> None:  # type: ignore[no-untyped-def]
    """The schema `client.chat.completions.parse()` sends for a nested pydantic model."""
    pydantic_helpers = pytest.importorskip("openai.lib._pydantic")
    from typing import Literal

    from pydantic import BaseModel

    class Address(BaseModel):
        city: str
        zip: str | None

    class Person(BaseModel):
        kind: Literal["cat", "dog"]
        address: Address
        tags: list[str]

    schema = pydantic_helpers.to_strict_json_schema(Person)
    fmt = {"type": "json_schema", "json_schema": {"name": "P", "schema": schema, "strict": True}}
    plan = apply_structured({"response_format": fmt}, tok)
    assert plan.constraint is not None


@pytest.mark.parametrize(
    ("fmt", "needle"),
    [
        ("json", "must be an object"),
        ({"type": "xml"}, "'xml'"),
        ({"type": "json_schema"}, "needs a 'json_schema' object"),
        ({"type": "json_schema", "json_schema": {"schema": {}}}, "name"),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}, "name"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}}, "an array"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}, "foo"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/no"}}},
            "/no",
        ),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": "yes"},
            },
            "strict",
        ),
    ],
)
def test_bad_response_formats_are_400(tok, fmt, needle) -> None:  # type: ignore[no-untyped-def]
    assert needle in refused(tok, {"response_format": fmt}, "response_format")


def test_strict_needs_closed_objects_and_enforceable_keywords(tok) -> None:  # type: ignore[no-untyped-def]
    def fmt(schema: dict[str, Any], strict: bool) -> dict[str, Any]:
        spec = {"name": "x", "schema": schema, "strict": strict}
        return {"response_format": {"type": "json_schema", "json_schema": spec}}

    open_object = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    message = refused(tok, fmt(open_object, True), "response_format")
    assert "additionalProperties" in message
    partly_required = {**open_object, "required": [], "additionalProperties": False}
    assert "missing a" in refused(tok, fmt(partly_required, True), "response_format")
    nested = {
        "type": "object",
        "properties": {"b": {"type": "object", "properties": {}}},
        "required": ["b"],
        "additionalProperties": False,
    }
    assert "'properties', 'b'" in refused(tok, fmt(nested, True), "response_format")
    unique = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    assert "uniqueItems" in refused(tok, fmt(unique, True), "response_format")
    # without strict the same schemas are enforced as far as the grammar can
    for schema in (open_object, partly_required, unique):
        assert apply_structured(fmt(schema, False), tok).constraint is not None


def test_tools_need_a_template_that_reads_them(tok, tool_tok) -> None:  # type: ignore[no-untyped-def]
    assert not template_supports_tools(tok) and template_supports_tools(tool_tok)
    assert "does not support tools" in refused(tok, {"tools": [WEATHER]}, "tools")
    functions = [WEATHER["function"]]
    assert "does not support tools" in refused(tok, {"functions": functions}, "functions")


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"tool_choice": "auto"}, "tool_choice", "only allowed"),
        ({"function_call": "auto"}, "function_call", "only allowed"),
        ({"tools": []}, "tools", "non-empty"),
        ({"tools": [{"type": "function"}]}, "tools", "tools[0].function"),
        ({"tools": [{"type": "code", "function": {}}]}, "tools", "tools[0]"),
        ({"tools": [WEATHER, WEATHER]}, "tools", "unique"),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice", "'required'"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
            "'x'",
        ),
        ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "functions", "not both"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 1}}}]},
            "tools",
            "'f'",
        ),
    ],
)
def test_bad_tool_fields_are_400(tool_tok, body, param, needle) -> None:  # type: ignore[no-untyped-def]
    assert needle in refused(tool_tok, body, param)


def test_tools_reach_the_template_unless_choice_is_none(tool_tok) -> None:  # type: ignore[no-untyped-def]
    plan = apply_structured({"tools": [WEATHER, TIME]}, tool_tok)
    assert plan.tool_mode == "auto" and plan.processors() == ()
    prompt = tool_tok.apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=True, **plan.template_kwargs
    )
    assert "Tools: get_weather get_time<|im_end|>" in prompt
    none = apply_structured({"tools": [WEATHER], "tool_choice": "none"}, tool_tok)
    assert not none.active and none.template_kwargs == {}


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_a_required_tool_call_is_constrained_and_returned_as_tool_calls(tool_tok, choice) -> None:  # type: ignore[no-untyped-def]
    plan = apply_structured({"tools": [WEATHER, TIME], "tool_choice": choice}, tool_tok)
    names = set()
    for seed in range(4):
        text = run(tool_tok, plan.processors(), seed=seed)
        message, finish = plan.message(text, "stop")
        assert finish == "tool_calls" and message["content"] is None
        (call,) = message["tool_calls"]
        assert call["type"] == "function" and call["id"].startswith("call_")
        arguments = json.loads(call["function"]["arguments"])
        names.add(call["function"]["name"])
        if call["function"]["name"] == "get_weather":
            assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("c", "f")
    if choice != "required":
        assert names == {"get_weather"}


def test_legacy_functions_answer_with_function_call(tool_tok) -> None:  # type: ignore[no-untyped-def]
    body = {"functions": [WEATHER["function"]], "function_call": {"name": "get_weather"}}
    plan = apply_structured(body, tool_tok)
    message, finish = plan.message(run(tool_tok, plan.processors()), "stop")
    assert finish == "function_call" and message["content"] is None
    assert message["function_call"]["name"] == "get_weather"
    assert json.loads(message["function_call"]["arguments"])["unit"] in ("c", "f")


def test_auto_mode_recognises_calls_in_free_text(tool_tok) -> None:  # type: ignore[no-untyped-def]
    plan = apply_structured({"tools": [WEATHER]}, tool_tok)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    message, finish = plan.message(call, "stop")
    assert finish == "tool_calls"
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert plan.message("It is sunny.", "stop") == ({"content": "It is sunny."}, "stop")
    assert plan.message(call, "length") == ({"content": call}, "length")


def test_parse_tool_calls() -> None:
    names = ["a", "b"]
    assert parse_tool_calls('{"name": "a", "parameters": {"x": 1}}', names) == [("a", {"x": 1})]
    two = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {"y": 2}}</tool_call>'
    assert parse_tool_calls(two, names) == [("a", {}), ("b", {"y": 2})]
    assert parse_tool_calls('{"name": "c", "arguments": {}}', names) == []
    assert parse_tool_calls('{"name": "a", "arguments": "x"}', names) == []
    assert parse_tool_calls("<tool_call>{oops</tool_call>", names) == []
    assert parse_tool_calls("plain words", names) == []


def test_stream_deltas_number_their_tool_calls(tool_tok) -> None:  # type: ignore[no-untyped-def]
    plan = apply_structured({"tools": [WEATHER, TIME]}, tool_tok)
    two = (
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    )
    fields, finish = plan.delta(two, "stop")
    assert finish == "tool_calls"
    assert [c["index"] for c in fields["tool_calls"]] == [0, 1]
    assert [c["function"]["name"] for c in fields["tool_calls"]] == ["get_time", "get_weather"]
    assert "index" not in plan.message(two, "stop")[0]["tool_calls"][0]
    single = apply_structured({"tools": [WEATHER, TIME], "parallel_tool_calls": False}, tool_tok)
    assert len(single.message(two, "stop")[0]["tool_calls"]) == 1
    assert plan.delta("hi", "stop") == ({"content": "hi"}, "stop")


def test_tool_parameters_with_local_refs_keep_working_inside_the_call(tool_tok) -> None:  # type: ignore[no-untyped-def]
    """`$ref`s of a tool's parameters point into its place in the call schema (pydantic emits
    `#/$defs/...`)."""
    parameters = {
        "$defs": {"Unit": {"enum": ["c", "f"]}},
        "type": "object",
        "properties": {"unit": {"$ref": "#/$defs/Unit"}},
        "required": ["unit"],
        "additionalProperties": False,
    }
    tools = [
        {"type": "function", "function": {"name": name, "parameters": parameters}}
        for name in ("a", "b")
    ]
    for choice in ("required", {"type": "function", "function": {"name": "b"}}):
        plan = apply_structured({"tools": tools, "tool_choice": choice}, tool_tok)
        message, _ = plan.message(run(tool_tok, plan.processors()), "stop")
        assert json.loads(message["tool_calls"][0]["function"]["arguments"])["unit"] in ("c", "f")


def test_without_the_grammar_engine_the_answer_says_what_to_install(tok, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from lmscope.engine import constraints

    monkeypatch.setattr(constraints, "llguidance", None)
    message = refused(tok, {"response_format": {"type": "json_object"}}, "response_format")
    assert "pip install" in message and "llguidance" in message

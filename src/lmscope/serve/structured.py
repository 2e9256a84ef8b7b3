"""OpenAI `response_format`, `tools`/`tool_choice` and legacy `functions`/`function_call`.

`apply_structured` reads those fields of a request body, refuses what cannot be honoured with a
400 naming the field, and returns a `StructuredPlan`: the grammar processors for each choice,
the extra chat-template arguments, and how to turn the generated text into the assistant
message (plain content, or `tool_calls` / `function_call`).

Semantics:
- `{"type": "json_object"}`: the output is a JSON object. `{"type": "json_schema", ...}`: a JSON
  value matching the schema. With `"strict": true` the schema must be in OpenAI's strict subset
  (every object has `additionalProperties: false` and lists all its properties in `required`)
  and use only keywords the grammar engine enforces; without it, unenforceable keywords (`not`,
  `uniqueItems`, ...) are dropped and the rest is still enforced.
- Tools need a chat template that reads `tools`; other models answer 400. `tool_choice`
  "required" or a named function constrains the output to one call
  `{"name": ..., "arguments": {...}}`; "auto" leaves the model free and recognises a call in its
  text (`<tool_call>{...}</tool_call>` blocks, or the whole reply being such an object); "none"
  does not show the tools to the model.
- A completion cut by max_tokens ends where it was cut and may not parse (finish "length").
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jinja2
import jinja2.meta

from lmscope.engine.constraints import (
    Constraint,
    ConstraintError,
    any_json_object_grammar,
    json_schema_grammar,
)
from lmscope.serve.errors import APIError

Processor = Callable[[Any, Any], Any]
ToolMode = Literal["none", "auto", "forced"]

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
EMPTY_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {},
    "additionalProperties": False,
}


@dataclass
class StructuredPlan:
    """What one request's structured-output fields ask of generation (see `apply_structured`)."""

    constraint: Constraint | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    tool_mode: ToolMode = "none"
    tool_names: tuple[str, ...] = ()
    legacy_functions: bool = False
    parallel_tool_calls: bool = True

    @property
    def active(self) -> bool:
        """Whether anything differs from a plain chat completion."""
        return self.constraint is not None or self.tool_mode != "none"

    def processors(self) -> tuple[Processor, ...]:
        """Fresh logits processors for ONE sequence: call once per choice (they keep state)."""
        return () if self.constraint is None else (self.constraint.processor(),)

    def message(self, text: str, finish_reason: str) -> tuple[dict[str, Any], str]:
        """The assistant message fields and finish_reason for a generated text.

        Returns ({"content": text}, finish_reason) unless the text is a tool call, then
        ({"content": None, "tool_calls": [...]}, "tool_calls") - or, for legacy `functions`,
        ({"content": None, "function_call": {...}}, "function_call"). A text cut by the length
        limit is always returned as content.
        """
        calls = None
        if self.tool_mode != "none" and finish_reason != "length":
            calls = parse_tool_calls(text, self.tool_names)
        if not calls:
            return {"content": text}, finish_reason
        if not self.parallel_tool_calls:
            calls = calls[:1]
        if self.legacy_functions:
            name, arguments = calls[0]
            return {"content": None, "function_call": _function(name, arguments)}, "function_call"
        tool_calls = [
            {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": _function(n, a)}
            for n, a in calls
        ]
        return {"content": None, "tool_calls": tool_calls}, "tool_calls"

    def delta(self, text: str, finish_reason: str) -> tuple[dict[str, Any], str]:
        """`message` for a stream's closing chunk: each tool call also carries its `index`, as
        OpenAI's stream deltas do (clients accumulate calls by it)."""
        fields, reason = self.message(text, finish_reason)
        if fields.get("tool_calls"):
            fields["tool_calls"] = [{"index": i, **c} for i, c in enumerate(fields["tool_calls"])]
        return fields, reason


def _function(name: str, arguments: Any) -> dict[str, str]:
    return {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}


def apply_structured(
    body: Any,
    tokenizer: Any,
    *,
    eos_token_ids: Iterable[int] | None = None,
    model_id: str = "this model",
) -> StructuredPlan:
    """Read `response_format`, `tools`, `tool_choice`, `functions`, `function_call` of a chat
    request and plan them. The contract for the chat route:

    - body: the request as a mapping (or a pydantic model; it is dumped). Absent or null fields
      mean "not asked"; a body without any of them gives an inactive plan.
    - eos_token_ids: the ids that end a completion in the engine (default: the tokenizer's
      eos_token_id); the grammar allows them only where the output is complete.
    - Raises APIError(400, one line, param=<field>) for anything that cannot be honoured: a bad
      shape, an invalid or unsupported schema, strict-mode violations, tools on a model whose
      chat template ignores them, tool_choice without tools or naming an unknown function, and a
      missing grammar engine (with the install hint).
    - The route then: passes `plan.template_kwargs` to `tokenizer.apply_chat_template` (they
      hold `tools` when the model should see them); sets
      `SamplingParams(logits_processors=plan.processors())` for EACH choice; and builds each
      choice's message from `plan.message(text, finish_reason)`.
    """
    fields = _as_mapping(body)
    eos = _eos_ids(tokenizer, eos_token_ids)
    plan = StructuredPlan()
    tools, choice, legacy = _tools_and_choice(fields)
    if tools:
        if not template_supports_tools(tokenizer):
            param = "functions" if legacy else "tools"
            raise APIError(
                400,
                f"{param}: the chat template of {model_id} does not support tools (it never "
                f"reads 'tools'); remove '{param}' or use a model whose template renders them",
                param=param,
            )
        plan.legacy_functions = legacy
        plan.parallel_tool_calls = fields.get("parallel_tool_calls") is not False
        plan.tool_names = tuple(t["name"] for t in tools)
        if choice != "none":
            plan.template_kwargs["tools"] = [
                {"type": "function", "function": _template_function(t)} for t in tools
            ]
        if choice == "auto":
            plan.tool_mode = "auto"
        elif choice != "none":
            plan.tool_mode = "forced"
            chosen = [t for t in tools if choice == "required" or t["name"] == choice]
            param = "function_call" if legacy else "tool_choice"
            plan.constraint = _compile(
                _call_schema(chosen), _lenient(chosen), tokenizer, eos, param
            )
            return plan
    grammar = _response_format(fields.get("response_format"))
    if grammar is not None:
        plan.constraint = _compile_grammar(grammar, tokenizer, eos, "response_format")
    return plan


# ---- response_format ----------------------------------------------------------------------------
def _response_format(value: Any) -> str | None:
    """The grammar text for response_format (None for plain text)."""
    param = "response_format"
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _bad(param, 'must be an object such as {"type": "json_object"}')
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return _grammar(any_json_object_grammar, param)
    if kind != "json_schema":
        raise _bad(param, f"type must be 'text', 'json_object' or 'json_schema', not {kind!r}")
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise _bad(param, "type 'json_schema' needs a 'json_schema' object with a name and schema")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise _bad(param, "json_schema.name must be 1-64 letters, digits, '_' or '-'")
    schema = spec.get("schema", {})
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _bad(param, "json_schema.strict must be true, false or null")
    if not isinstance(schema, (Mapping, bool)):
        raise _bad(param, f"json_schema.schema must be a JSON schema object, not {_kind(schema)}")
    where = f"invalid schema for response_format {name!r}"
    if strict:
        _check_strict(schema, where, param)
    return _grammar(lambda: json_schema_grammar(_plain(schema), lenient=not strict), param, where)


def _check_strict(schema: Any, where: str, param: str, path: tuple[str, ...] = ()) -> None:
    """OpenAI's strict subset: every object closes `additionalProperties` and requires all of
    its properties."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            _check_strict(item, where, param, (*path, str(i)))
        return
    if not isinstance(schema, Mapping):
        return
    props = schema.get("properties")
    is_object = schema.get("type") == "object" or isinstance(props, Mapping)
    if is_object:
        if schema.get("additionalProperties") is not False:
            raise _bad(
                param,
                f"{where}: in context {path or '(root)'}, strict mode needs "
                "'additionalProperties': false",
            )
        missing = sorted(set(props or {}) - set(schema.get("required") or ()))
        if missing:
            raise _bad(
                param,
                f"{where}: in context {path or '(root)'}, strict mode needs every property in "
                f"'required'; missing {', '.join(missing)}",
            )
    for key, sub in schema.items():
        if key in ("properties", "$defs", "definitions") and isinstance(sub, Mapping):
            for name, child in sub.items():
                _check_strict(child, where, param, (*path, key, str(name)))
        elif key in ("items", "anyOf", "allOf", "oneOf", "prefixItems", "additionalProperties"):
            _check_strict(sub, where, param, (*path, key))


# ---- tools ----------------------------------------------------------------------------------------
def _tools_and_choice(fields: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str, bool]:
    """(functions as {name, description, parameters, strict}, choice, legacy): choice is 'none',
    'auto', 'required' or a function name."""
    tools, functions = fields.get("tools"), fields.get("functions")
    if tools is not None and functions is not None:
        raise _bad("functions", "give 'tools' or the older 'functions', not both")
    legacy = functions is not None
    list_param, choice_param = (
        ("functions", "function_call") if legacy else ("tools", "tool_choice")
    )
    raw = functions if legacy else tools
    choice = fields.get(choice_param)
    if raw is None:
        other = fields.get("function_call" if not legacy else "tool_choice")
        for param, value in ((choice_param, choice), ("function_call", other)):
            if value is not None:
                raise _bad(param, f"'{param}' is only allowed when '{list_param}' are given")
        return [], "none", legacy
    if not isinstance(raw, list) or not raw:
        raise _bad(list_param, "must be a non-empty list (omit it for no tools)")
    specs = [_tool_spec(item, f"{list_param}[{i}]", legacy) for i, item in enumerate(raw)]
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise _bad(list_param, "function names must be unique")
    return specs, _choice(choice, names, choice_param), legacy


def _tool_spec(item: Any, where: str, legacy: bool) -> dict[str, Any]:
    param = where.split("[")[0]
    if not legacy:
        if not isinstance(item, Mapping) or item.get("type") != "function":
            raise _bad(param, f'{where} must be {{"type": "function", "function": {{...}}}}')
        item, where = item.get("function"), f"{where}.function"
    if not isinstance(item, Mapping):
        raise _bad(param, f"{where} must be an object with a name and parameters")
    name = item.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise _bad(param, f"{where}.name must be 1-64 letters, digits, '_' or '-'")
    parameters = item.get("parameters", EMPTY_PARAMETERS)
    if not isinstance(parameters, Mapping):
        raise _bad(param, f"{where}.parameters must be a JSON schema object")
    strict = item.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _bad(param, f"{where}.strict must be true, false or null")
    context = f"invalid schema for function {name!r}"
    if strict:
        _check_strict(parameters, context, param)
    _grammar(lambda: json_schema_grammar(_plain(parameters), lenient=not strict), param, context)
    description = item.get("description")
    if description is not None and not isinstance(description, str):
        raise _bad(param, f"{where}.description must be a string")
    return {
        "name": name,
        "description": description,
        "parameters": _plain(parameters),
        "strict": bool(strict),
    }


def _choice(value: Any, names: list[str], param: str) -> str:
    if value is None:
        return "auto"
    if value in ("none", "auto") or (value == "required" and param == "tool_choice"):
        return str(value)
    named = value.get("name") if param == "function_call" and isinstance(value, Mapping) else None
    if param == "tool_choice" and isinstance(value, Mapping) and value.get("type") == "function":
        function = value.get("function")
        named = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(named, str):
        allowed = "'none', 'auto', 'required'" if param == "tool_choice" else "'none', 'auto'"
        shape = (
            '{"type": "function", "function": {"name": ...}}'
            if param == "tool_choice"
            else '{"name": ...}'
        )
        raise _bad(param, f"must be {allowed} or {shape}")
    if named not in names:
        raise _bad(param, f"names function {named!r}, which is not among {', '.join(names)}")
    return named


def _template_function(spec: Mapping[str, Any]) -> dict[str, Any]:
    out = {"name": spec["name"], "parameters": spec["parameters"]}
    if spec.get("description"):
        out["description"] = spec["description"]
    return out


def _call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """One call of one of `tools`: {"name": <that name>, "arguments": <its parameters>}."""
    single = len(tools) == 1
    options = []
    for i, tool in enumerate(tools):
        at = "#/properties/arguments" if single else f"#/anyOf/{i}/properties/arguments"
        options.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": tool["name"]},
                    "arguments": _rebase_refs(tool["parameters"], at),
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return options[0] if single else {"anyOf": options}


def _rebase_refs(schema: Any, at: str) -> Any:
    """The schema with its local `$ref`s ("#", "#/$defs/X") pointing into its new place `at`."""
    if isinstance(schema, list):
        return [_rebase_refs(item, at) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _rebase_refs(value, at) for key, value in schema.items()}
    ref = schema.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        out["$ref"] = at + ref[1:]
    return out


def _lenient(tools: list[dict[str, Any]]) -> bool:
    return not all(t["strict"] for t in tools)


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template reads a `tools` variable (so it can show them)."""
    template = getattr(tokenizer, "chat_template", None)
    sources = list(template.values()) if isinstance(template, Mapping) else [template]
    env = jinja2.Environment()
    for source in sources:
        if not isinstance(source, str):
            continue
        try:
            if "tools" in jinja2.meta.find_undeclared_variables(env.parse(source)):
                return True
        except jinja2.TemplateError:
            continue
    return False


def parse_tool_calls(text: str, names: Iterable[str]) -> list[tuple[str, Any]]:
    """The (name, arguments) calls in a generated text: `<tool_call>{...}</tool_call>` blocks, or
    the whole text as one {"name", "arguments" | "parameters"} object. [] when it is not a call."""
    known = set(names)
    blocks = TOOL_CALL_BLOCK.findall(text)
    candidates = blocks if blocks else [text.strip()]
    calls = []
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            return []
        if not isinstance(value, dict) or value.get("name") not in known:
            return []
        arguments = value.get("arguments", value.get("parameters"))
        if not isinstance(arguments, dict):
            return []
        calls.append((str(value["name"]), arguments))
    return calls


# ---- helpers --------------------------------------------------------------------------------------
def _as_mapping(body: Any) -> Mapping[str, Any]:
    if hasattr(body, "model_dump"):
        dumped = body.model_dump(exclude_none=True)
        extra = getattr(body, "model_extra", None) or {}
        return {**extra, **dumped}
    return body if isinstance(body, Mapping) else {}


def _eos_ids(tokenizer: Any, eos_token_ids: Iterable[int] | None) -> list[int]:
    if eos_token_ids is not None:
        return [int(t) for t in eos_token_ids]
    eos = getattr(tokenizer, "eos_token_id", None)
    return [int(eos)] if isinstance(eos, int) else []


def _plain(schema: Any) -> Any:
    """A JSON round trip: plain dicts and lists, and a clear error for values JSON cannot hold."""
    return json.loads(json.dumps(schema))


def _grammar(build: Callable[[], str], param: str, where: str = "") -> str:
    try:
        return build()
    except ConstraintError as err:
        raise _bad(param, f"{where}: {err}" if where else str(err)) from None


def _compile(
    schema: Mapping[str, Any], lenient: bool, tokenizer: Any, eos: list[int], param: str
) -> Constraint:
    text = _grammar(lambda: json_schema_grammar(schema, lenient=lenient), param)
    return _compile_grammar(text, tokenizer, eos, param)


def _compile_grammar(text: str, tokenizer: Any, eos: list[int], param: str) -> Constraint:
    try:
        return Constraint(text, tokenizer, eos)
    except ConstraintError as err:
        raise _bad(param, str(err)) from None


def _bad(param: str, message: str) -> APIError:
    prefix = "" if message.startswith(param) else f"{param}: "
    return APIError(400, f"{prefix}{message}", param=param)


def _kind(value: Any) -> str:
    return "an array" if isinstance(value, list) else type(value).__name__

"""The facts document's JSON schema (versioned) and a validator for the subset it uses.

Every consumer (card, verifier, diff, server) reads facts through this contract. A new field is
added without bumping the version; renaming or removing one bumps FACTS_SCHEMA_VERSION.
"""

from __future__ import annotations

from typing import Any

from lmscope.document.errors import DocError

FACTS_SCHEMA_VERSION = 1
FACTS_SCHEMA_ID = "https://lmscope.dev/schemas/facts-v1.json"

_NULLABLE_OBJECT = {"type": ["object", "null"]}
_SHAPE = {"type": ["array", "null"], "items": {"type": ["integer", "string"]}}

FACTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": FACTS_SCHEMA_ID,
    "title": "lmscope model facts",
    "type": "object",
    "required": ["schema", "schema_version", "model", "overview", "layers", "architecture",
                 "provenance", "missing"],
    "properties": {
        "schema": {"const": "lmscope.facts"},
        "schema_version": {"const": FACTS_SCHEMA_VERSION},
        "model": {
            "type": "object",
            "required": ["name", "kind"],
            "properties": {
                "name": {"type": "string"},
                "kind": {"enum": ["lmscope", "hf-config", "onnx", "keras", "torch-module"]},
                "source": {"type": ["string", "null"]},
                "runnable": {"type": "boolean"},
            },
        },
        "overview": {
            "type": "object",
            "required": ["family", "task", "parameters"],
            "properties": {
                "family": {"type": ["string", "null"]},
                "task": {"type": ["string", "null"]},
                "parameters": {
                    "type": "object",
                    "required": ["total"],
                    "properties": {
                        "total": {"type": ["integer", "null"]},
                        "trainable": {"type": ["integer", "null"]},
                        "by_component": {"type": "object"},
                    },
                },
                "context_length": {"type": ["integer", "null"]},
                "vocab_size": {"type": ["integer", "null"]},
                "dtype": {"type": ["string", "null"]},
                "file_size_bytes": {"type": ["integer", "null"]},
                "checksum": _NULLABLE_OBJECT,
            },
        },
        "layers": {
            "type": "object",
            "required": ["rows"],
            "properties": {
                "positions": {"type": ["integer", "null"]},
                "macs_unit": {"type": "string"},
                "rows": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["path", "type", "parameters"],
                        "properties": {
                            "path": {"type": "string"},
                            "type": {"type": "string"},
                            "input_shape": _SHAPE,
                            "output_shape": _SHAPE,
                            "parameters": {"type": "integer"},
                            "macs_per_position": {"type": ["integer", "null"]},
                            "trainable": {"type": ["boolean", "null"]},
                        },
                    },
                },
            },
        },
        "architecture": {"type": "object"},
        "training": _NULLABLE_OBJECT,
        "data": _NULLABLE_OBJECT,
        "evaluation": _NULLABLE_OBJECT,
        "interpretability": _NULLABLE_OBJECT,
        "provenance": {
            "type": "object",
            "required": ["files", "lmscope_version", "created"],
            "properties": {"files": {"type": "array"}, "lmscope_version": {"type": "string"},
                           "created": {"type": "string"}},
        },
        "missing": {"type": "object"},
    },
}  # fmt: skip

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _type_ok(value: Any, kinds: str | list[str]) -> bool:
    for kind in [kinds] if isinstance(kinds, str) else kinds:
        if isinstance(value, bool) and kind in ("integer", "number"):
            continue
        if isinstance(value, _TYPES[kind]):
            return True
    return False


def schema_errors(value: Any, schema: dict[str, Any] = FACTS_SCHEMA, at: str = "$") -> list[str]:
    """Violations of `schema` (type, const, enum, required, properties, items)."""
    errors: list[str] = []
    if "type" in schema and not _type_ok(value, schema["type"]):
        return [f"{at}: expected {schema['type']}, got {type(value).__name__}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{at}: expected {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        errors += [f"{at}: missing {k!r}" for k in schema.get("required", ()) if k not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, f"{at}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{at}[{i}]")
    return errors


def check_facts(facts: Any) -> dict[str, Any]:
    """`facts` if it follows the schema, else DocError listing the first violations."""
    errors = schema_errors(facts)
    if errors:
        raise DocError("not an lmscope facts document: " + "; ".join(errors[:5]))
    return facts  # type: ignore[no-any-return]

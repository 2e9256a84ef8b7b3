"""The grammar logits processor on its own: masks, end-of-sequence, vocab padding, errors."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import build_tiny_tokenizer

pytest.importorskip("llguidance")

from lmscope.engine.constraints import (
    Constraint,
    ConstraintError,
    any_json_object_grammar,
    json_schema_grammar,
)

jsonschema_rs = pytest.importorskip("jsonschema_rs")

SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 5},
                    "zip": {"type": "integer", "minimum": 0, "maximum": 99999},
                },
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "enum_and_bool": {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "ok": {"type": "boolean"},
            "nothing": {"type": "null"},
        },
        "required": ["colour", "ok", "nothing"],
        "additionalProperties": False,
    },
    "array": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": -5, "maximum": 5}},
            "required": ["n"],
            "additionalProperties": False,
        },
        "minItems": 1,
        "maxItems": 3,
    },
    "refs_and_anyof": {
        "$defs": {"Pet": {"enum": ["cat", "dog"]}},
        "type": "object",
        "properties": {
            "pet": {"$ref": "#/$defs/Pet"},
            "age": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 30}, {"type": "null"}]},
        },
        "required": ["pet", "age"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return build_tiny_tokenizer()


def sample(tok, constraint, logits_fn, limit=400, seed=0):  # type: ignore[no-untyped-def]
    """Sample from logits_fn(generator) through a fresh processor until EOS; the generated ids."""
    processor = constraint.processor()
    generator = torch.Generator().manual_seed(seed)
    generated: list[int] = []
    for _ in range(limit):
        logits = processor(generated, logits_fn(generator))
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        if token == tok.eos_token_id:
            return generated
        generated.append(token)
    raise AssertionError(f"no end after {limit} tokens: {tok.decode(generated)!r}")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_random_logits_always_give_schema_valid_json(tok, name) -> None:  # type: ignore[no-untyped-def]
    schema = SCHEMAS[name]
    constraint = Constraint(json_schema_grammar(schema), tok, [tok.eos_token_id])
    validator = jsonschema_rs.validator_for(schema)
    for seed in range(5):
        ids = sample(tok, constraint, lambda g: 3 * torch.randn(len(tok), generator=g), seed=seed)
        value = json.loads(tok.decode(ids))
        assert validator.is_valid(value), (name, value)


def test_eos_is_allowed_only_where_the_grammar_accepts(tok) -> None:  # type: ignore[no-untyped-def]
    """A model that always wants to stop still produces a complete object: EOS stays masked
    until the grammar accepts, then it wins at once."""
    schema = SCHEMAS["nested"]
    constraint = Constraint(json_schema_grammar(schema), tok, [tok.eos_token_id])

    def eager_to_stop(g: torch.Generator) -> torch.Tensor:
        logits = torch.randn(len(tok), generator=g)
        logits[tok.eos_token_id] = 50.0
        return logits

    ids = sample(tok, constraint, eager_to_stop)
    text = tok.decode(ids)
    assert jsonschema_rs.validator_for(schema).is_valid(json.loads(text))
    assert text.endswith("}}")
    for cut in range(len(ids)):  # no shorter prefix parses as the whole answer
        with pytest.raises(ValueError):
            value = json.loads(tok.decode(ids[:cut]))
            if not isinstance(value, dict):
                raise ValueError


@pytest.mark.parametrize("target", ['"quick brown"', '"question"'])
def test_masks_agree_with_an_independent_prefix_check(tok, target) -> None:  # type: ignore[no-untyped-def]
    """For an enum, every allowed token extends the text to a prefix of an option (soundness),
    some allowed token leads on towards each option (completeness), and EOS comes exactly at
    the end."""
    options = ['"quick brown"', '"question"']
    enum = {"enum": [o.strip('"') for o in options]}
    processor = Constraint(json_schema_grammar(enum), tok, [tok.eos_token_id]).processor()
    pieces = {t: tok.decode([t]) for t in range(len(tok)) if t not in set(tok.all_special_ids)}
    generated: list[int] = []
    while True:
        allowed = processor.allowed(len(tok))
        prefix = tok.decode(generated)
        ok = {
            t
            for t in pieces
            if pieces[t] and any(o.startswith(prefix + pieces[t]) for o in options)
        }
        chosen = {t for t in range(len(tok)) if allowed[t]}
        if prefix == target:
            assert chosen == {tok.eos_token_id}
            break
        assert chosen and chosen <= ok, prefix
        onward = [t for t in chosen if target.startswith(prefix + pieces[t])]
        assert onward, (prefix, target)
        generated.append(max(onward, key=lambda t: len(pieces[t])))
        processor(generated, torch.zeros(len(tok)))
    assert len(generated) >= 3


def test_ids_beyond_the_tokenizer_are_masked(tok) -> None:  # type: ignore[no-untyped-def]
    constraint = Constraint(any_json_object_grammar(), tok, [tok.eos_token_id])
    logits = torch.zeros(len(tok) + 37)
    logits[len(tok) :] = 100.0
    out = constraint.processor()([], logits)
    assert out.shape == logits.shape
    assert torch.isinf(out[len(tok) :]).all()
    assert tok.decode([int(out.argmax())]).startswith("{")


def test_a_forbidden_token_leaves_only_eos(tok) -> None:  # type: ignore[no-untyped-def]
    constraint = Constraint(any_json_object_grammar(), tok, [tok.eos_token_id])
    processor = constraint.processor()
    bad = tok.encode("x", add_special_tokens=False)
    out = processor(bad, torch.zeros(len(tok)))
    assert processor.error
    assert torch.isfinite(out).nonzero().flatten().tolist() == [tok.eos_token_id]


def test_processors_are_independent_and_follow_a_rewind(tok) -> None:  # type: ignore[no-untyped-def]
    constraint = Constraint(json_schema_grammar({"enum": ["yes", "no"]}), tok, [tok.eos_token_id])
    first, second = constraint.processor(), constraint.processor()
    ids = tok.encode('"yes"', add_special_tokens=False)
    first(ids, torch.zeros(len(tok)))
    assert first.accepting and not second.accepting
    fresh = second.allowed(len(tok))
    first([], torch.zeros(len(tok)))  # the sequence was rewound to nothing
    assert not first.accepting
    assert first.allowed(len(tok)).tolist() == fresh.tolist()


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ({"type": "foo"}, "foo"),
        ({"$ref": "#/nothing"}, "/nothing"),
        ({"type": "string", "pattern": "("}, "regex"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ([1, 2], "list"),
        (False, "no value"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "Unsatisfiable"),
        ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "Unsatisfiable"),
    ],
)
def test_bad_schemas_fail_with_one_line(schema, needle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConstraintError) as err:
        json_schema_grammar(schema)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_lenient_drops_unenforceable_keywords(tok) -> None:  # type: ignore[no-untyped-def]
    schema = {"type": "array", "items": {"type": "boolean"}, "maxItems": 2, "uniqueItems": True}
    constraint = Constraint(json_schema_grammar(schema, lenient=True), tok, [tok.eos_token_id])
    ids = sample(tok, constraint, lambda g: torch.randn(len(tok), generator=g))
    value = json.loads(tok.decode(ids))
    assert isinstance(value, list) and len(value) <= 2 and all(isinstance(v, bool) for v in value)


def test_a_slow_tokenizer_is_refused() -> None:
    class Slow:
        eos_token_id = 0

    with pytest.raises(ConstraintError, match="fast tokenizer"):
        Constraint(any_json_object_grammar(), Slow(), [0])


def test_the_true_schema_allows_any_json_value(tok) -> None:  # type: ignore[no-untyped-def]
    constraint = Constraint(json_schema_grammar(True), tok, [tok.eos_token_id])
    values = []
    for seed in range(3):
        logits = lambda g: torch.randn(len(tok), generator=g)  # noqa: E731
        ids = sample(tok, constraint, logits, limit=3000, seed=seed)
        values.append(json.loads(tok.decode(ids)))
    assert len({json.dumps(v) for v in values}) == 3

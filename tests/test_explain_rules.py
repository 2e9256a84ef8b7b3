"""Rule-based explanations: a decision known in advance is recovered as a rule with fidelity 1,
rule fidelities are recounted by hand, model decisions match direct argmaxes, and a missing
scikit-learn is one clear line."""

from __future__ import annotations

import sys

import pytest
import torch

from lmscope.explain.errors import ExplainInputError
from lmscope.explain.rules import MissingExtraError, featurize, fit_rules, model_decisions
from test_explain_support import CharTokenizer, tiny_model

pytest.importorskip("sklearn")

SUBJECTS = ["the film", "this movie", "the play", "that show", "the book", "our trip"]
PREDICATES = ["was good", "was not good", "felt great", "was not great", "is fine", "is not fine"]
PROMPTS = [f"{s} {p} today at home" for s in SUBJECTS for p in PREDICATES] * 2


def _truth(prompt: str) -> str:
    return "negative" if " not " in prompt else "positive"


def test_a_known_rule_is_recovered() -> None:
    decisions = [_truth(p) for p in PROMPTS]
    result = fit_rules(PROMPTS, decisions, max_depth=2, seed=0)
    assert result.fidelity == 1.0 and result.n_test + result.n_train == len(PROMPTS)
    text = result.text()
    assert "the prompt contains 'not', the model answers 'negative'" in text
    for rule in result.rules:  # each rule's fidelity recounted on the held-out prompts
        if rule.support:
            assert rule.fidelity == 1.0
    assert sum(r.support for r in result.rules) == result.n_test
    assert result.to_dict()["rules"][0]["text"].startswith("if ")


def test_features() -> None:
    x, names = featurize(["a b c", "a d", "e a b c d"], min_count=2)
    assert names == [
        "contains:a",
        "contains:b",
        "contains:c",
        "contains:d",
        "ends_with:a",
        "ends_with:b",
        "ends_with:c",
        "ends_with:d",
        "length",
    ]
    assert x[2].tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 5]


def test_model_decisions_are_the_argmax() -> None:
    model, tok = tiny_model("gpt2"), CharTokenizer()
    prompts = ["abc", "hello", "zz top"]
    got = model_decisions(model, tok.encode, tok.decode_one, prompts)
    for p, d in zip(prompts, got, strict=True):
        with torch.no_grad():
            top = int(model(torch.tensor([tok.encode(p)]))[0, -1].argmax())
        assert d == tok.decode_one(top)
    labels = model_decisions(model, tok.encode, tok.decode_one, prompts, labels=["x", "yz"])
    assert set(labels) <= {"x", "yz"}


def test_missing_sklearn_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.tree", None)
    with pytest.raises(MissingExtraError, match="pip install scikit-learn"):
        fit_rules(PROMPTS, [_truth(p) for p in PROMPTS])


def test_bad_input() -> None:
    with pytest.raises(ExplainInputError, match="one per prompt"):
        fit_rules(PROMPTS, ["x"])
    with pytest.raises(ExplainInputError, match="at least 4 prompts"):
        fit_rules(PROMPTS[:2], ["a", "b"])

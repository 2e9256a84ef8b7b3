"""Rule-based explanations: a shallow decision tree that mimics the model's decisions on a prompt
set, read back as plain-text rules ("if the prompt contains 'not' and ..., the model answers
'negative'"), with its fidelity (agreement with the model) on held-out prompts.

Decisions: the model's top next token, or, given `labels` (continuations such as " positive" /
" negative"), the most probable label. Features are interpretable: the presence of each word
seen in at least `min_count` prompts (lower-cased, split on non-letters), the presence of each
word among the last three words, and the prompt's length in words.

Needs scikit-learn (an optional dependency): without it, a clear error says how to install it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmscope.explain.bias import continuation_probs
from lmscope.explain.errors import ExplainInputError, check_tokens
from lmscope.explain.results import JsonResult
from lmscope.model.modes import eval_mode
from lmscope.model.transformer import Transformer

WORD = re.compile(r"[a-z']+")
INSTALL_HINT = "rule-based explanations need scikit-learn: pip install scikit-learn"


class MissingExtraError(ExplainInputError):
    """An optional dependency that a feature needs is not installed (the message says which)."""


def model_decisions(
    model: Transformer,
    encode: Callable[[str], Sequence[int]],
    decode: Callable[[int], str],
    prompts: Sequence[str],
    labels: Sequence[str] | None = None,
) -> list[str]:
    """The model's decision on each prompt: its top next token (decoded), or the most probable
    of `labels`."""
    label_ids = [list(encode(lab)) for lab in labels] if labels else None
    out = []
    for text in prompts:
        ids = list(encode(text))
        check_tokens(len(ids), model.cfg.n_ctx)
        with eval_mode(model), torch.no_grad():
            last = model(torch.tensor([ids], device=model.device), last_only=True)[0, -1]
        if label_ids is None or labels is None:
            out.append(decode(int(last.argmax())))
        else:
            probs = continuation_probs(model, ids, label_ids, last)
            out.append(labels[max(range(len(probs)), key=probs.__getitem__)])
    return out


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def featurize(
    prompts: Sequence[str], vocabulary: list[str] | None = None, min_count: int = 2
) -> tuple[torch.Tensor, list[str]]:
    """[N, F] features and their names (see module docstring); `vocabulary` reuses a training
    set's words for held-out prompts."""
    split = [words(p) for p in prompts]
    if vocabulary is None:
        counts = Counter(w for ws in split for w in set(ws))
        vocabulary = sorted(w for w, n in counts.items() if n >= min_count)
    names = [f"contains:{w}" for w in vocabulary] + [f"ends_with:{w}" for w in vocabulary]
    names.append("length")
    index = {w: i for i, w in enumerate(vocabulary)}
    n = len(vocabulary)
    x = torch.zeros(len(prompts), 2 * n + 1)
    for row, ws in enumerate(split):
        for w in ws:
            if w in index:
                x[row, index[w]] = 1.0
        for w in ws[-3:]:
            if w in index:
                x[row, n + index[w]] = 1.0
        x[row, -1] = len(ws)
    return x, names


def _condition(name: str, threshold: float, right: bool) -> str:
    """Plain text of one split: binary features are split at 0.5 (right = present)."""
    kind, _, word = name.partition(":")
    if kind == "length":
        return f"the prompt has {'more than' if right else 'at most'} {int(threshold)} words"
    if kind == "contains":
        return f"the prompt {'contains' if right else 'does not contain'} '{word}'"
    return f"'{word}' is {'' if right else 'not '}among the last 3 words"


@dataclass
class Rule:
    conditions: list[str]
    answer: str
    support: int  # held-out prompts that reach this rule
    fidelity: float | None  # share of them where the model answers `answer`

    def text(self) -> str:
        cond = " and ".join(self.conditions) if self.conditions else "always"
        fid = (
            f" (fidelity {self.fidelity:.2f} on {self.support} prompts)"
            if self.fidelity is not None
            else " (no held-out prompt reaches it)"
        )
        return f"if {cond}, the model answers {self.answer!r}{fid}"


@dataclass
class RuleExplanation(JsonResult):
    rules: list[Rule]
    fidelity: float  # agreement of the tree with the model on the held-out prompts
    n_train: int
    n_test: int
    meta: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        head = f"fidelity {self.fidelity:.2f} on {self.n_test} held-out prompts"
        return "\n".join([head, *(r.text() for r in self.rules)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "fidelity": self.fidelity,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "rules": [
                {
                    "conditions": r.conditions,
                    "answer": r.answer,
                    "support": r.support,
                    "fidelity": r.fidelity,
                    "text": r.text(),
                }
                for r in self.rules
            ],
            "meta": self.meta,
        }


def fit_rules(
    prompts: Sequence[str],
    decisions: Sequence[str],
    *,
    max_depth: int = 3,
    test_fraction: float = 0.3,
    min_count: int = 2,
    seed: int = 0,
) -> RuleExplanation:
    """Fit the tree on a random (1 - test_fraction) of the prompts and report the rules with
    their fidelity on the rest."""
    try:
        from sklearn.tree import DecisionTreeClassifier
    except ImportError:
        raise MissingExtraError(INSTALL_HINT) from None
    if len(prompts) != len(decisions):
        raise ExplainInputError(
            f"got {len(prompts)} prompts but {len(decisions)} decisions; give one per prompt"
        )
    if len(prompts) < 4:
        raise ExplainInputError("rules need at least 4 prompts (some are held out for fidelity)")
    if not 0.0 < test_fraction < 1.0 or max_depth < 1:
        raise ExplainInputError("test_fraction must be in (0, 1) and max_depth at least 1")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, round(test_fraction * len(prompts)))
    test, train = order[:n_test], order[n_test:]
    x_train, names = featurize([prompts[i] for i in train], min_count=min_count)
    x_test, _ = featurize([prompts[i] for i in test], names_vocab(names))
    y_train = [decisions[i] for i in train]
    y_test = [decisions[i] for i in test]
    tree = DecisionTreeClassifier(max_depth=max_depth, random_state=seed)
    tree.fit(x_train.numpy(), y_train)
    predicted = list(tree.predict(x_test.numpy()))
    leaves = tree.apply(x_test.numpy())
    fidelity = sum(p == y for p, y in zip(predicted, y_test, strict=True)) / n_test
    rules = _rules(tree, names, leaves, y_test)
    return RuleExplanation(rules, fidelity, len(train), n_test, {"max_depth": max_depth})


def names_vocab(names: list[str]) -> list[str]:
    return [n.partition(":")[2] for n in names if n.startswith("contains:")]


def _rules(tree: Any, names: list[str], leaves: Any, y_test: list[str]) -> list[Rule]:
    t = tree.tree_
    out: list[Rule] = []

    def walk(node: int, conditions: list[str]) -> None:
        left, right = int(t.children_left[node]), int(t.children_right[node])
        if left == right:  # a leaf
            answer = str(tree.classes_[int(t.value[node][0].argmax())])
            reached = [y for leaf, y in zip(leaves, y_test, strict=True) if leaf == node]
            fid = sum(y == answer for y in reached) / len(reached) if reached else None
            out.append(Rule(conditions, answer, len(reached), fid))
            return
        name, threshold = names[int(t.feature[node])], float(t.threshold[node])
        walk(left, [*conditions, _condition(name, threshold, False)])
        walk(right, [*conditions, _condition(name, threshold, True)])

    walk(0, [])
    return out

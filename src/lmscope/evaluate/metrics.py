"""Metric definitions, each an aggregate over items (so every one gets a bootstrap interval).

Perplexity follows lm-evaluation-harness exactly: per document the summed log-likelihood `ll`,
its words (`len(re.split(r"\\s+", doc))`) and UTF-8 bytes; then
`word_perplexity = exp(-Σll / Σwords)`, `byte_perplexity = exp(-Σll / Σbytes)`,
`bits_per_byte = -Σll / Σbytes / ln 2`, and token perplexity `exp(-Σll / Σtokens)`.
Classification follows scikit-learn's definitions (a class never predicted has precision 0).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

ArrayLike = Sequence[int] | np.ndarray
Floats = Sequence[float] | np.ndarray


def word_count(doc: str) -> int:
    """Words as lm-evaluation-harness counts them."""
    return len(re.split(r"\s+", doc))


def byte_count(doc: str) -> int:
    return len(doc.encode("utf-8"))


class PerplexityItems:
    """Per-document sums from which every perplexity metric is an aggregate."""

    def __init__(
        self,
        ll: Floats,
        tokens: ArrayLike,
        words: ArrayLike,
        n_bytes: ArrayLike,
    ) -> None:
        self.ll = np.asarray(ll, dtype=np.float64)
        self.tokens = np.asarray(tokens, dtype=np.float64)
        self.words = np.asarray(words, dtype=np.float64)
        self.bytes = np.asarray(n_bytes, dtype=np.float64)

    @classmethod
    def from_docs(cls, ll: Floats, tokens: ArrayLike, docs: Sequence[str]) -> PerplexityItems:
        return cls(ll, tokens, [word_count(d) for d in docs], [byte_count(d) for d in docs])

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any]]) -> PerplexityItems:
        """From a report's per-item records (`ll`, `tokens`, `words`, `bytes`)."""
        return cls(*([r[key] for r in records] for key in ("ll", "tokens", "words", "bytes")))

    def __len__(self) -> int:
        return len(self.ll)

    def token_perplexity(self, idx: np.ndarray) -> float:
        return math.exp(-self.ll[idx].sum() / self.tokens[idx].sum())

    def word_perplexity(self, idx: np.ndarray) -> float:
        return math.exp(-self.ll[idx].sum() / self.words[idx].sum())

    def byte_perplexity(self, idx: np.ndarray) -> float:
        return math.exp(-self.ll[idx].sum() / self.bytes[idx].sum())

    def bits_per_byte(self, idx: np.ndarray) -> float:
        return float(-self.ll[idx].sum() / self.bytes[idx].sum() / math.log(2))

    def aggregates(self, per_byte_only: bool = False) -> dict[str, Any]:
        names = ["bits_per_byte", "byte_perplexity"]
        if not per_byte_only:
            names += ["word_perplexity", "token_perplexity"]
        return {name: getattr(self, name) for name in names}


def confusion_matrix(truth: ArrayLike, predicted: ArrayLike, n_classes: int) -> np.ndarray:
    """counts[i, j]: items of true class i predicted as class j. A prediction of `n_classes`
    (no label recognised in a generated answer) lands in an extra last column."""
    counts = np.zeros((n_classes, n_classes + 1), dtype=np.int64)
    np.add.at(counts, (np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return counts


def _safe_divide(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    n = counts.shape[0]
    tp = np.diag(counts[:, :n]).astype(np.float64)
    predicted = counts[:, :n].sum(axis=0).astype(np.float64)
    support = counts.sum(axis=1).astype(np.float64)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def averaged_scores(counts: np.ndarray) -> dict[str, float]:
    """Accuracy and macro / micro / weighted precision, recall and F1, with scikit-learn's
    definitions for `labels=range(n_classes)` (unrecognised answers count against recall)."""
    n = counts.shape[0]
    scores = per_class_scores(counts)
    support = scores["support"]
    total = support.sum()
    tp = float(np.trace(counts[:, :n]))
    micro_p = float(_safe_divide(tp, counts[:, :n].sum()))
    micro_r = float(_safe_divide(tp, total))
    out = {
        "accuracy": float(_safe_divide(tp, total)),
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": float(_safe_divide(2 * micro_p * micro_r, micro_p + micro_r)),
    }
    for name in ("precision", "recall", "f1"):
        values = scores[name]
        out[f"macro_{name}"] = float(values.mean())
        out[f"weighted_{name}"] = float(_safe_divide((values * support).sum(), total))
    return out


def classification_aggregates(
    truth: ArrayLike, predicted: ArrayLike, n_classes: int
) -> dict[str, Any]:
    """One aggregate over item indices for each averaged score."""
    t, p = np.asarray(truth), np.asarray(predicted)

    def make(name: str) -> Any:
        return lambda idx: averaged_scores(confusion_matrix(t[idx], p[idx], n_classes))[name]

    return {name: make(name) for name in averaged_scores(confusion_matrix(t, p, n_classes))}


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation or articles, single spaces (SQuAD's normalisation)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def contains(prediction: str, reference: str) -> float:
    return float(normalize_answer(reference) in normalize_answer(prediction))

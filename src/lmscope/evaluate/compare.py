"""Paired comparison of two evaluation reports on the same items.

Tests per kind: perplexity - paired bootstrap over documents of bits per byte (and of word and
token perplexity when both models share a tokenizer); classification and QA - McNemar's exact
test for accuracy / exact match, paired bootstrap for the F1 averages; generation - sacrebleu's
paired bootstrap for BLEU, chrF and TER. Each difference is B - A with its 95% interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmscope.evaluate.errors import EvalError
from lmscope.evaluate.metrics import PerplexityItems, classification_aggregates
from lmscope.evaluate.stats import PairedDifference, mcnemar, paired_bootstrap
from lmscope.evaluate.textgen import paired_tests

LOWER_IS_BETTER = {
    "bits_per_byte", "byte_perplexity", "word_perplexity", "token_perplexity", "ter",
}  # fmt: skip
TOP_DISAGREEMENTS = 5


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Compare every task the two reports share (same name and same data hash)."""
    tasks_b = {t["name"]: t for t in b["tasks"]}
    same_tokenizer = a["model"].get("tokenizer_hash") == b["model"].get("tokenizer_hash")
    out = []
    for task_a in a["tasks"]:
        task_b = tasks_b.get(task_a["name"])
        if task_b is None:
            continue
        if task_a["data_hash"] != task_b["data_hash"]:
            raise EvalError(
                f"task {task_a['name']!r} was evaluated on different data for A and B "
                f"({task_a['data_hash'][:19]} vs {task_b['data_hash'][:19]}); re-run both"
            )
        out.append(compare_task(task_a, task_b, same_tokenizer))
    if not out:
        raise EvalError("the two reports share no task; evaluate both on the same task files")
    return {
        "schema": 1,
        "a": a["model"],
        "b": b["model"],
        "same_tokenizer": same_tokenizer,
        "tasks": out,
    }


def compare_task(a: dict[str, Any], b: dict[str, Any], same_tokenizer: bool) -> dict[str, Any]:
    kind = a["kind"]
    items_a, items_b = a["items"], b["items"]
    n = len(items_a)
    notes: list[str] = []
    if kind == "perplexity":
        pa, pb = PerplexityItems.from_records(items_a), PerplexityItems.from_records(items_b)
        aggregates_a = pa.aggregates(per_byte_only=not same_tokenizer)
        aggregates_b = pb.aggregates(per_byte_only=not same_tokenizer)
        if not same_tokenizer:
            notes.append("different tokenizers: only per-byte metrics are comparable")
        diffs = [
            paired_bootstrap(name, aggregates_a[name], aggregates_b[name], n)
            for name in aggregates_a
        ]
        per_item = [
            (rb["ll"] - ra["ll"]) / max(ra["bytes"], 1) / -np.log(2)  # bpb(B) - bpb(A)
            for ra, rb in zip(items_a, items_b, strict=True)
        ]
    elif kind in ("classification", "qa"):
        diffs, per_item = _compare_discrete(kind, a, items_a, items_b)
    else:
        names = list(a["metrics"])
        diffs = paired_tests(
            names,
            [r["output"] for r in items_a],
            [r["output"] for r in items_b],
            [r["reference"] for r in items_a],
        )
        per_item = [
            float(ra["output"] != rb["output"]) for ra, rb in zip(items_a, items_b, strict=True)
        ]
    order = np.argsort(-np.abs(np.asarray(per_item, dtype=np.float64)))[:TOP_DISAGREEMENTS]
    disagreements = [
        {"index": int(i), "difference": float(per_item[i]), "a": items_a[i], "b": items_b[i]}
        for i in order
        if per_item[i] != 0
    ]
    return {
        "name": a["name"],
        "kind": kind,
        "n_items": n,
        "differences": [d.as_dict() for d in diffs],
        "verdicts": [verdict(d) for d in diffs],
        "per_item_difference": [float(x) for x in per_item],
        "disagreements": disagreements,
        "notes": notes,
    }


def _compare_discrete(
    kind: str, a: dict[str, Any], items_a: list[dict[str, Any]], items_b: list[dict[str, Any]]
) -> tuple[list[PairedDifference], list[float]]:
    if kind == "qa":
        diffs = []
        for name in a["metrics"]:
            ca = [bool(r[name]) for r in items_a]
            cb = [bool(r[name]) for r in items_b]
            diffs.append(mcnemar(name, ca, cb))
        first = next(iter(a["metrics"]))
        return diffs, [
            float(rb[first]) - float(ra[first]) for ra, rb in zip(items_a, items_b, strict=True)
        ]
    labels = a["details"]["labels"]
    names = [*labels, "(no label)"]
    truth = [labels.index(r["label"]) for r in items_a]
    pred_a = [names.index(r["predicted"]) for r in items_a]
    pred_b = [names.index(r["predicted"]) for r in items_b]
    diffs = [mcnemar("accuracy", [r["correct"] for r in items_a], [r["correct"] for r in items_b])]
    agg_a = classification_aggregates(truth, pred_a, len(labels))
    agg_b = classification_aggregates(truth, pred_b, len(labels))
    n = len(truth)
    diffs += [paired_bootstrap(m, agg_a[m], agg_b[m], n) for m in ("macro_f1", "weighted_f1")]
    per_item = [
        float(rb["correct"]) - float(ra["correct"]) for ra, rb in zip(items_a, items_b, strict=True)
    ]
    return diffs, per_item


def verdict(d: PairedDifference) -> str:
    """One sentence: which model is better on the metric, by how much, and whether it holds."""
    if d.difference == 0:
        return f"{d.metric}: no difference on {d.n} items"
    better = "B" if (d.difference < 0) == (d.metric in LOWER_IS_BETTER) else "A"
    head = f"{better} is better" if d.significant else "no significant difference"
    return (
        f"{d.metric}: {head}, B - A = {d.difference:+.4g} "
        f"(95% CI {d.low:+.4g} to {d.high:+.4g}), p = {d.p_value:.3g} "
        f"({d.test}, {d.n} items)"
    )

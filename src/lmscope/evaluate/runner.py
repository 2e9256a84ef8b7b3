"""Run tasks on a loaded model: per-item records, then metrics with intervals.

A task result is a JSON-ready dict (the report schema, version 1):
`{"name", "kind", "n_items", "data_hash", "settings", "metrics": {name: {"value", "ci95", "n"}},
"details", "items": [...per-item records...], "samples": [...]}`. The per-item records are what
`compare` pairs between two models.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from lmscope.evaluate.backends import Backend, LocalBackend
from lmscope.evaluate.diagnose import diagnose
from lmscope.evaluate.errors import EvalError
from lmscope.evaluate.loglik import Window, continuation_windows, rolling_windows
from lmscope.evaluate.metrics import (
    PerplexityItems,
    classification_aggregates,
    confusion_matrix,
    contains,
    exact_match,
    normalize_answer,
    per_class_scores,
)
from lmscope.evaluate.stats import bootstrap, mean_of
from lmscope.evaluate.tasks import TaskSpec, content_hash
from lmscope.evaluate.textgen import corpus_scores

Progress = Callable[[int], None]
REPORT_SCHEMA = 1


def run_task(lm: Backend, spec: TaskSpec, progress: Progress | None = None) -> dict[str, Any]:
    """Evaluate one task on a backend (a local model or an endpoint)."""
    items = spec.load_items()
    runners = {
        "perplexity": _perplexity,
        "classification": _classification,
        "generation": _generation,
        "qa": _qa,
    }
    result = runners[spec.kind](lm, spec, items, progress)
    return {
        "name": spec.name,
        "kind": spec.kind,
        "n_items": len(items),
        "data_hash": content_hash(items),
        **result,
    }


def _encode(tokenizer: Any, text: str, special: bool = True) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=special))


def _prefix_token(tokenizer: Any) -> int | None:
    """The token that starts a document, as lm-eval uses it (end of text, else begin)."""
    for value in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(tokenizer, "bos_token_id", None),
    ):
        if isinstance(value, int):
            return value
    return None


def _perplexity(
    lm: Backend, spec: TaskSpec, items: list[dict[str, Any]], progress: Progress | None
) -> dict[str, Any]:
    n_ctx = lm.n_ctx
    window = min(spec.window or n_ctx, n_ctx)
    prefix = _prefix_token(lm.tokenizer)
    docs = [item[spec.text_field] for item in items]
    windows: list[Window] = []
    for owner, doc in enumerate(docs):
        ids = _encode(lm.tokenizer, doc, special=False)
        windows += rolling_windows(ids, window, prefix, owner, stride=spec.stride)
    scores = lm.score(windows, progress)
    ll = np.zeros(len(docs))
    tokens = np.zeros(len(docs), dtype=np.int64)
    for w, s in zip(windows, scores, strict=True):
        ll[w.owner] += float(s.sum())
        tokens[w.owner] += w.n_scored
    per_doc = PerplexityItems.from_docs(ll, tokens, docs)
    metrics = {
        name: bootstrap(fn, len(per_doc)).as_dict() for name, fn in per_doc.aggregates().items()
    }
    records = [
        {"ll": float(ll[i]), "tokens": int(tokens[i]), "words": int(per_doc.words[i]),
         "bytes": int(per_doc.bytes[i])}
        for i in range(len(docs))
    ]  # fmt: skip
    settings = {
        "window": window,
        "stride": spec.stride,
        "prefix_token": prefix,
        "windows": len(windows),
    }
    return {"settings": settings, "metrics": metrics, "items": records, "details": {}}


def _prompts(spec: TaskSpec, items: list[dict[str, Any]]) -> list[str]:
    try:
        return [
            spec.prompt_template.format(**{**item, "prompt": item.get(spec.prompt_field, "")})
            for item in items
        ]
    except (KeyError, IndexError) as err:
        raise EvalError(
            f"task {spec.name!r}: prompt_template names a field the items lack: {err}"
        ) from None


def _classification(
    lm: Backend, spec: TaskSpec, items: list[dict[str, Any]], progress: Progress | None
) -> dict[str, Any]:
    labels = list(spec.labels or [])
    prompts = _prompts(spec, items)
    truth = [labels.index(item[spec.label_field]) for item in items]
    if spec.method == "loglik":
        predicted, scores = _classify_by_loglik(lm, spec, prompts, labels, progress)
    else:
        outputs = _generate(lm, spec, prompts)
        predicted = [_match_label(out, labels) for out in outputs]
        scores = [[] for _ in items]
    counts = confusion_matrix(truth, predicted, len(labels))
    per_class = per_class_scores(counts)
    metrics = {
        name: bootstrap(fn, len(items)).as_dict()
        for name, fn in classification_aggregates(truth, predicted, len(labels)).items()
    }
    names = [*labels, "(no label)"]
    records = [
        {"label": labels[t], "predicted": names[p], "correct": t == p, "label_logliks": s}
        for t, p, s in zip(truth, predicted, scores, strict=True)
    ]
    details = {
        "labels": labels,
        "confusion": {"rows": labels, "columns": names, "counts": counts.tolist()},
        "per_class": {
            label: {key: float(per_class[key][i]) for key in per_class}
            for i, label in enumerate(labels)
        },
        "label_distribution": {label: int(counts[i].sum()) for i, label in enumerate(labels)},
    }
    settings = {"method": spec.method, "label_prefix": spec.label_prefix}
    if spec.method == "generate":
        settings.update(_decoding_settings(spec))
    return {"settings": settings, "metrics": metrics, "items": records, "details": details}


def _classify_by_loglik(
    lm: Backend, spec: TaskSpec, prompts: list[str], labels: list[str], progress: Progress | None
) -> tuple[list[int], list[list[float]]]:
    tokenizer, n_ctx = lm.tokenizer, lm.n_ctx
    label_ids = []
    for label in labels:
        ids = _encode(tokenizer, spec.label_prefix + label, special=False)
        if not ids:
            raise EvalError(f"task {spec.name!r}: label {label!r} tokenizes to nothing")
        label_ids.append(ids)
    windows = []
    for i, prompt in enumerate(prompts):
        context = _encode(tokenizer, prompt) or [_prefix_token(tokenizer) or 0]
        for j, ids in enumerate(label_ids):
            windows.append(continuation_windows(context, ids, n_ctx, owner=i * len(labels) + j))
    scores = lm.score(windows, progress)
    totals = np.array([float(s.sum()) for s in scores]).reshape(len(prompts), len(labels))
    return [int(k) for k in totals.argmax(axis=1)], totals.tolist()


def _match_label(output: str, labels: list[str]) -> int:
    """The label a generated answer names (exact after normalising, else the first label it
    starts with); len(labels) when it names none."""
    answer = normalize_answer(output)
    normalized = [normalize_answer(label) for label in labels]
    if answer in normalized:
        return normalized.index(answer)
    for i, label in sorted(enumerate(normalized), key=lambda p: -len(p[1])):
        if label and answer.startswith(label):
            return i
    return len(labels)


def _decoding_settings(spec: TaskSpec) -> dict[str, Any]:
    return {"max_tokens": spec.max_tokens, "temperature": spec.temperature, "stop": spec.stop}


def _generate(lm: Backend, spec: TaskSpec, prompts: list[str]) -> list[str]:
    return lm.complete(prompts, spec.max_tokens, spec.temperature, spec.stop)


def _answers(lm: Backend, spec: TaskSpec, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per item: the prompt, the reference and the model's answer."""
    prompts = _prompts(spec, items)
    outputs = [out.strip() for out in _generate(lm, spec, prompts)]
    references = [item[spec.reference_field] for item in items]
    return [
        {"prompt": p, "reference": r, "output": o}
        for p, r, o in zip(prompts, references, outputs, strict=True)
    ]


def _generated_result(
    spec: TaskSpec, records: list[dict[str, Any]], metrics: dict[str, Any]
) -> dict[str, Any]:
    return {
        "settings": _decoding_settings(spec),
        "metrics": metrics,
        "items": records,
        "details": {},
        "samples": records[: spec.samples],
    }


def _generation(
    lm: Backend, spec: TaskSpec, items: list[dict[str, Any]], progress: Progress | None
) -> dict[str, Any]:
    records = _answers(lm, spec, items)
    outputs, references = [r["output"] for r in records], [r["reference"] for r in records]
    return _generated_result(
        spec, records, corpus_scores(spec.chosen_metrics(), outputs, references)
    )


def _qa(
    lm: Backend, spec: TaskSpec, items: list[dict[str, Any]], progress: Progress | None
) -> dict[str, Any]:
    records = _answers(lm, spec, items)
    scorers = {"exact_match": exact_match, "contains": contains}
    metrics = {}
    for name in spec.chosen_metrics():
        for record in records:
            record[name] = scorers[name](record["output"], record["reference"])
        values = np.array([rec[name] for rec in records], dtype=np.float64)
        metrics[name] = bootstrap(mean_of(values), len(values)).as_dict()
    return _generated_result(spec, records, metrics)


def run_tasks(
    lm: Backend | Any, specs: list[TaskSpec], progress: Callable[[str], Progress] | None = None
) -> dict[str, Any]:
    """Evaluate every task; the whole report (schema version REPORT_SCHEMA), with the
    error analysis and learning curves when the model carries a training record."""
    backend = lm if hasattr(lm, "score") else LocalBackend(lm)  # a LoadedModel is local
    results = [run_task(backend, spec, progress(spec.name) if progress else None) for spec in specs]
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "model": {"name": backend.name, "source": backend.source, **backend.info(),
                  "tokenizer_hash": tokenizer_hash(backend.tokenizer)},
        "tasks": results,
    }  # fmt: skip
    record = training_record_of(backend)
    report["diagnosis"] = diagnose(report, record)
    if record is not None:
        history = record.get("metrics") or {}
        report["learning_curves"] = {
            "train": [[e["step"], e["loss"]] for e in history.get("train", [])],
            "validation": [[e["step"], e["val_loss"]] for e in history.get("eval", [])],
        }
    return report


def training_record_of(backend: Backend) -> dict[str, Any] | None:
    """The training record saved in a checkpoint's metadata by `lmscope train`, if any."""
    from pathlib import Path

    from lmscope.zoo.checkpoint import CheckpointError, read_metadata

    source = Path(backend.source)
    if not source.is_dir():
        return None
    try:
        metadata = read_metadata(source)
    except CheckpointError:
        return None
    training = (metadata or {}).get("training")
    return training if isinstance(training, dict) else None


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of the vocabulary: equal hashes mean token-level metrics are comparable."""
    vocab = sorted(tokenizer.get_vocab().items())
    return "sha256:" + hashlib.sha256(json.dumps(vocab).encode("utf-8")).hexdigest()

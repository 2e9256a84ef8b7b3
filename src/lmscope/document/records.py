"""The records beside a model, read tolerantly: training record, data manifest, eval report.

Each reader returns the facts it found, or None when the record is absent; a record that exists
but cannot be read is reported under `problems` instead of raising, so a card still renders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EVAL_REPORT_NAMES = ("eval-out/report.json", "report.json", "eval/report.json")
CURVE_POINTS = 200  # learning curves are thinned to at most this many points


def read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(f"cannot read {path}: {err}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path} does not hold a JSON object")
        return None
    return data


def find_training_record(source: Path, problems: list[str]) -> dict[str, Any] | None:
    """metadata.json's "training" (our checkpoints), or a training_record.json beside or above."""
    if not source.is_dir():
        return None
    meta_path = source / "metadata.json"
    if meta_path.is_file():
        meta = read_json(meta_path, problems)
        if meta and isinstance(meta.get("training"), dict):
            return dict(meta["training"])
    for candidate in (source / "training_record.json", source.parent / "training_record.json"):
        if candidate.is_file():
            return read_json(candidate, problems)
    return None


def _thin(points: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = [p for p in points if isinstance(p, dict) and "step" in p]
    if len(rows) > CURVE_POINTS:
        stride = -(-len(rows) // CURVE_POINTS)
        rows = rows[::stride] + ([rows[-1]] if (len(rows) - 1) % stride else [])
    return [{k: p[k] for k in ("step", *keys) if p.get(k) is not None} for p in rows]


def _gap(train: Any, val: Any) -> float | None:
    """Validation minus training loss at the end (the over/underfitting signal), rounded as the
    card states it."""
    if isinstance(train, (int, float)) and isinstance(val, (int, float)):
        return round(float(val) - float(train), 4)
    return None


def training_facts(record: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters, outcome, curves and fine-tuning strategy from a training record."""
    config = record.get("config") or {}
    train, optim = config.get("train") or {}, config.get("optim") or {}
    schedule, data = config.get("schedule") or {}, config.get("data") or {}
    final = record.get("final") or {}
    hardware = record.get("hardware") or {}
    metrics = record.get("metrics") or {}
    batch = train.get("batch_size")
    accum = train.get("grad_accum")
    world = hardware.get("world_size") or 1
    finetune = record.get("finetune") or {}
    lora = finetune.get("lora")
    if lora:
        strategy = "lora"
    elif finetune.get("freeze_layers") or finetune.get("freeze_embeddings"):
        strategy = "partial (frozen layers)"
    elif finetune.get("init_from"):
        strategy = "full fine-tune"
    else:
        strategy = "from scratch"
    hyper = {
        "optimizer": optim.get("name", "AdamW"),
        "learning_rate": optim.get("lr"),
        "weight_decay": optim.get("weight_decay"),
        "betas": optim.get("betas"),
        "grad_clip": optim.get("grad_clip"),
        "schedule": schedule.get("kind"),
        "warmup_steps": schedule.get("warmup_steps"),
        "min_lr_ratio": schedule.get("min_lr_ratio"),
        "batch_size": batch,
        "grad_accum": accum,
        "effective_batch_rows": batch * accum * world if batch and accum else None,
        "context": data.get("context"),
        "max_steps": train.get("max_steps"),
        "precision": hardware.get("precision"),
        "seed": train.get("seed"),
        "dropout": (record.get("model_config") or {}).get("dropout"),
    }
    steps = final.get("step")
    clips = record.get("clip_count")
    return {
        "hyperparameters": {k: v for k, v in hyper.items() if v is not None},
        "outcome": {
            "steps": steps,
            "stopped": final.get("stopped"),
            "tokens_seen": record.get("tokens_seen"),
            "wall_time_s": record.get("wall_time_s"),
            "clip_count": clips,
            "clip_share": round(clips / steps, 4) if clips is not None and steps else None,
            "train_loss": final.get("train_loss"),
            "val_loss": final.get("val_loss"),
            "val_minus_train_loss": _gap(final.get("train_loss"), final.get("val_loss")),
            "val_perplexity": final.get("val_perplexity"),
            "test_loss": final.get("test_loss"),
            "test_perplexity": final.get("test_perplexity"),
            "best_step": final.get("best_step"),
            "best_val_loss": final.get("best_val_loss"),
            "final_weights": final.get("exported_weights"),
        },
        "hardware": {
            k: hardware.get(k)
            for k in ("device", "gpu", "world_size", "cpu_count", "torch", "lmscope")
            if hardware.get(k) is not None
        },
        "curves": {
            "train": _thin(metrics.get("train") or [], ("loss", "lr", "grad_norm")),
            "eval": _thin(metrics.get("eval") or [], ("val_loss",)),
        },
        "finetune": {
            "strategy": strategy,
            "init_from": finetune.get("init_from"),
            "lora": lora,
            "freeze_layers": finetune.get("freeze_layers"),
            "freeze_embeddings": finetune.get("freeze_embeddings"),
            "unfreeze_every": finetune.get("unfreeze_every"),
            "curriculum": data.get("curriculum"),
        },
    }


def data_facts(manifest: dict[str, Any]) -> dict[str, Any]:
    """Sources, cleaning, tokenizer, splits and packing from a data manifest."""
    settings = manifest.get("settings") or {}
    tokenizer = manifest.get("tokenizer") or {}
    splits = manifest.get("splits") or {}
    cleaning = manifest.get("cleaning") or {}
    return {
        "kind": manifest.get("kind"),
        "sources": [
            {k: s.get(k) for k in ("path", "bytes", "format", "sha256")}
            for s in manifest.get("sources") or []
            if isinstance(s, dict)
        ],
        "cleaning": {k: v for k, v in cleaning.items() if isinstance(v, (int, float, str))},
        "tokenizer": {
            "source": tokenizer.get("source") or "trained BPE",
            "vocab_size": tokenizer.get("vocab_size"),
            "special_tokens": tokenizer.get("special_tokens"),
            "sha256": tokenizer.get("sha256"),
        },
        "splits": {
            name: {k: v for k, v in info.items() if k in ("documents", "tokens", "loss_tokens")}
            for name, info in splits.items()
            if isinstance(info, dict)
        },
        "split_rule": manifest.get("split"),
        "leakage_guarantee": "splits are drawn per document and identical documents share a "
        "split, so no document appears in two splits",
        "settings": {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool))},
    }


def find_eval_report(source: Path | None, explicit: Path | None) -> Path | None:
    """`--eval` (a report.json or a directory holding one), else a report beside the model."""
    if explicit is not None:
        if explicit.is_dir():
            for name in ("report.json", "eval-out/report.json"):
                if (explicit / name).is_file():
                    return explicit / name
            return None
        return explicit
    if source is None or not source.is_dir():
        return None
    for name in EVAL_REPORT_NAMES:
        if (source / name).is_file():
            return source / name
    return None


def eval_facts(report: dict[str, Any]) -> dict[str, Any]:
    """Tasks with their metrics (value, ci95, n) and classification details."""
    tasks = []
    for task in report.get("tasks") or []:
        if not isinstance(task, dict):
            continue
        metrics = {}
        for name, m in (task.get("metrics") or {}).items():
            if isinstance(m, dict) and isinstance(m.get("value"), (int, float)):
                metrics[name] = {k: m.get(k) for k in ("value", "ci95", "n")}
        details = task.get("details") or {}
        entry: dict[str, Any] = {
            "name": task.get("name"),
            "kind": task.get("kind"),
            "n_items": task.get("n_items"),
            "data_hash": task.get("data_hash"),
            "metrics": metrics,
        }
        if isinstance(details.get("per_class"), dict):
            entry["per_class"] = details["per_class"]
            entry["label_distribution"] = details.get("label_distribution")
        tasks.append(entry)
    return {"schema": report.get("schema"), "tasks": tasks}

"""Error analysis: what the numbers say about fit and class imbalance, and only that.

`fit_diagnosis(record)` reads a training record's learning curves (train loss every log
interval, validation loss every evaluation) and gives a verdict with the numbers behind it:
overfitting (validation loss rose from its best while training loss kept falling), underfitting
(both losses were still falling at the end, so the run stopped early), or neither.
`imbalance_findings(task)` compares a classification task's class sizes with per-class recall.
Each finding carries its evidence and a suggestion; nothing is said without a number.
"""

from __future__ import annotations

from typing import Any

# A rise of the validation loss from its best larger than this (relative) is not noise.
OVERFIT_RISE = 0.02
# Both losses falling by more than this (relative) over the last quarter of training: not done.
STILL_FALLING = 0.02
IMBALANCE_RATIO = 2.0  # largest class / smallest class
RECALL_GAP = 0.1  # minority recall this much below majority recall


def _train_loss_near(train: list[dict[str, Any]], step: int) -> float | None:
    """Mean training loss of the log intervals up to `step` within the last few logs."""
    before = [e["loss"] for e in train if e["step"] <= step][-3:]
    return sum(before) / len(before) if before else None


def fit_diagnosis(record: dict[str, Any]) -> dict[str, Any] | None:
    """A fit verdict from a training record (None when it has no validation curve)."""
    history = record.get("metrics") or {}
    train, evals = history.get("train") or [], history.get("eval") or []
    if len(evals) < 2 or not train:
        return None
    best = min(evals, key=lambda e: e["val_loss"])
    last = evals[-1]
    train_best = _train_loss_near(train, best["step"])
    train_last = _train_loss_near(train, last["step"])
    if train_best is None or train_last is None:
        return None
    quarter = evals[int(len(evals) * 0.75) :] if len(evals) >= 4 else evals[-2:]
    first_q, last_q = quarter[0], quarter[-1]
    train_q = _train_loss_near(train, first_q["step"]) or train_last
    evidence = {
        "best_step": best["step"],
        "best_val_loss": best["val_loss"],
        "final_step": last["step"],
        "final_val_loss": last["val_loss"],
        "final_train_loss": train_last,
        "gap": last["val_loss"] - train_last,
        "val_rise_since_best": last["val_loss"] - best["val_loss"],
        "train_change_since_best": train_last - train_best,
        "val_change_last_quarter": last_q["val_loss"] - first_q["val_loss"],
        "train_change_last_quarter": train_last - train_q,
        "evaluations": len(evals),
    }
    rise = evidence["val_rise_since_best"] / best["val_loss"]
    if rise > OVERFIT_RISE and evidence["train_change_since_best"] < 0:
        verdict = "overfitting"
        summary = (
            f"validation loss rose {evidence['val_rise_since_best']:.4g} ({rise:.1%}) from its "
            f"best {best['val_loss']:.4g} at step {best['step']} to {last['val_loss']:.4g} at "
            f"step {last['step']}, while training loss fell {-evidence['train_change_since_best']:.4g}"
        )
        suggestions = [
            f"keep the weights from step {best['step']} (early stopping on validation loss)",
            "add data, or regularise: dropout, weight decay, a smaller model",
        ]
    elif (
        -evidence["val_change_last_quarter"] / first_q["val_loss"] > STILL_FALLING
        and -evidence["train_change_last_quarter"] / train_q > STILL_FALLING
    ):
        verdict = "underfitting"
        summary = (
            f"both losses were still falling at the end: validation "
            f"{first_q['val_loss']:.4g} -> {last_q['val_loss']:.4g} and training "
            f"{train_q:.4g} -> {train_last:.4g} over the last steps "
            f"{first_q['step']}-{last_q['step']}"
        )
        suggestions = ["train longer (more steps or tokens)", "or raise the learning rate"]
    else:
        verdict = "no clear over- or underfitting"
        summary = (
            f"validation loss {last['val_loss']:.4g} at the end, {rise:.1%} above its best "
            f"{best['val_loss']:.4g}; train/validation gap {evidence['gap']:.4g}"
        )
        suggestions = []
    return {
        "verdict": verdict,
        "summary": summary,
        "evidence": evidence,
        "suggestions": suggestions,
    }


def imbalance_findings(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Class imbalance against per-class recall for one classification task result."""
    details = task.get("details") or {}
    sizes: dict[str, int] = details.get("label_distribution") or {}
    per_class: dict[str, dict[str, float]] = details.get("per_class") or {}
    present = {label: n for label, n in sizes.items() if n > 0}
    if len(present) < 2:
        return []
    largest = max(present, key=present.__getitem__)
    smallest = min(present, key=present.__getitem__)
    ratio = present[largest] / present[smallest]
    if ratio < IMBALANCE_RATIO:
        return []
    findings = []
    for label, n in sorted(present.items(), key=lambda p: p[1]):
        recall = per_class[label]["recall"]
        gap = per_class[largest]["recall"] - recall
        if label == largest or gap < RECALL_GAP:
            continue
        findings.append(
            {
                "task": task["name"],
                "class": label,
                "support": n,
                "recall": recall,
                "largest_class": largest,
                "largest_support": present[largest],
                "largest_recall": per_class[largest]["recall"],
                "summary": (
                    f"class {label!r} has {n} of {sum(present.values())} items "
                    f"({present[largest] / n:.1f}x fewer than {largest!r}) and recall "
                    f"{recall:.2f} against {per_class[largest]['recall']:.2f}"
                ),
                "suggestions": [
                    f"weight the loss by class (about {present[largest] / n:.1f}x for {label!r})",
                    f"oversample {label!r} or collect more examples of it",
                ],
            }
        )
    return findings


def diagnose(report: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """Every finding for an evaluation report (and the model's training record, if any)."""
    fit = fit_diagnosis(record) if record else None
    classes = [
        finding
        for task in report["tasks"]
        if task["kind"] == "classification"
        for finding in imbalance_findings(task)
    ]
    notes = []
    if record is None:
        notes.append(
            "no training record: fit cannot be judged (models trained by lmscope have one)"
        )
    elif fit is None:
        notes.append("the training record has fewer than two evaluations: fit cannot be judged")
    return {"fit": fit, "class_imbalance": classes, "notes": notes}

"""Error analysis: fit verdicts from learning curves and class-imbalance findings, each with
the numbers that support it, and nothing when the numbers do not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import build_tiny_tokenizer
from lmscope.evaluate.diagnose import diagnose, fit_diagnosis, imbalance_findings
from lmscope.evaluate.runner import run_tasks
from lmscope.evaluate.tasks import TaskSpec
from lmscope.model.config import ModelConfig
from lmscope.model.transformer import Transformer
from lmscope.zoo.checkpoint import save_checkpoint
from lmscope.zoo.registry import load


def _record(train: list[float], val: list[float], every: int = 10) -> dict:  # type: ignore[type-arg]
    """Train losses logged at every step and validation every `every` steps."""
    return {
        "metrics": {
            "train": [{"step": i + 1, "loss": v} for i, v in enumerate(train)],
            "eval": [{"step": (i + 1) * every, "val_loss": v} for i, v in enumerate(val)],
        }
    }


def test_overfitting_names_the_best_step_and_the_rise() -> None:
    train = [4.0 - 0.03 * i for i in range(80)]  # keeps falling
    val = [3.8, 3.5, 3.3, 3.25, 3.3, 3.4, 3.5, 3.6]  # best at step 40, then rises
    fit = fit_diagnosis(_record(train, val))
    assert fit is not None and fit["verdict"] == "overfitting"
    assert fit["evidence"]["best_step"] == 40
    assert fit["evidence"]["val_rise_since_best"] == pytest.approx(0.35)
    assert "step 40" in fit["summary"] and "3.25" in fit["summary"]


def test_underfitting_when_both_losses_still_fall() -> None:
    train = [5.0 - 0.02 * i for i in range(80)]
    val = [5.0 - 0.2 * i for i in range(8)]
    fit = fit_diagnosis(_record(train, val))
    assert fit is not None and fit["verdict"] == "underfitting"


def test_a_flat_finish_is_neither() -> None:
    train = [3.0] * 80
    val = [3.1, 3.05, 3.04, 3.04, 3.05, 3.04, 3.05, 3.04]
    fit = fit_diagnosis(_record(train, val))
    assert fit is not None and fit["verdict"] == "no clear over- or underfitting"
    assert fit["suggestions"] == []


def test_too_few_evaluations_give_no_verdict() -> None:
    assert fit_diagnosis(_record([3.0] * 10, [3.0])) is None


def _task(sizes: dict[str, int], recalls: dict[str, float]) -> dict:  # type: ignore[type-arg]
    return {
        "name": "t",
        "kind": "classification",
        "details": {
            "label_distribution": sizes,
            "per_class": {
                k: {"recall": r, "precision": 0.5, "f1": 0.5} for k, r in recalls.items()
            },
        },
    }


def test_imbalance_is_reported_only_with_a_recall_gap() -> None:
    findings = imbalance_findings(_task({"Old": 300, "New": 100}, {"Old": 0.9, "New": 0.4}))
    assert len(findings) == 1
    assert findings[0]["class"] == "New" and findings[0]["support"] == 100
    assert "3.0x" in findings[0]["suggestions"][0]
    # imbalanced but equally well recalled: nothing to say
    assert imbalance_findings(_task({"Old": 300, "New": 100}, {"Old": 0.9, "New": 0.85})) == []
    # balanced: nothing to say either
    assert imbalance_findings(_task({"Old": 100, "New": 90}, {"Old": 0.9, "New": 0.1})) == []


def test_eval_report_of_a_trained_checkpoint_carries_the_diagnosis(tmp_path: Path) -> None:
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(tokenizer), d_model=32, n_layers=1, n_heads=2, n_ctx=32)
    train = [4.0 - 0.03 * i for i in range(80)]
    val = [3.8, 3.5, 3.3, 3.25, 3.3, 3.4, 3.5, 3.6]
    metadata = {"producer": "lmscope train", "training": _record(train, val)}
    save_checkpoint(Transformer(cfg).eval(), tmp_path / "m", tokenizer=tokenizer, metadata=metadata)
    lm = load(tmp_path / "m")
    spec = TaskSpec(name="p", kind="perplexity", items=[{"text": "The quick brown fox."}])
    report = run_tasks(lm, [spec])
    assert report["diagnosis"]["fit"]["verdict"] == "overfitting"
    assert report["learning_curves"]["validation"][3] == [40, 3.25]
    assert diagnose(report, None)["notes"][0].startswith("no training record")

"""One trial: sample the space, train the resulting config for real (its own output directory,
seed and training record), report validation losses to the pruner, and return the objectives.

A trial that raises is recorded as failed with its error; a pruned one keeps its checkpoints and
intermediate losses. Every trial leaves `trial.json` beside its training output.
"""

from __future__ import annotations

import copy
import json
import math
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from lmscope.files import atomic_write_text
from lmscope.train.config import apply_overrides, config_from_dict
from lmscope.train.loop_state import Callback
from lmscope.tune.evaluation import evaluate_model
from lmscope.tune.search import Search

if TYPE_CHECKING:
    from lmscope.train.trainer import Trainer

TRIAL_FILE = "trial.json"


@dataclass
class TrialOutcome:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | INTERRUPTED
    params: dict[str, Any]
    overrides: list[str]
    seed: int
    out_dir: str
    values: list[float] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    intermediate: list[tuple[int, float]] = field(default_factory=list)
    tokens: int = 0
    train_s: float = 0.0  # inside the trainer, set-up included
    error: str | None = None
    overhead_s: float | None = None  # the tuning layer's time around the training run


class _Reporter(Callback):
    """Feeds each validation loss to Optuna's pruner; raises TrialPruned to stop the run."""

    def __init__(self, trial: optuna.Trial, prune: bool, max_steps: int, scale: str) -> None:
        self.trial, self.prune, self.max_steps, self.scale = trial, prune, max_steps, scale
        self.seen = 0
        self.tokens = 0
        self.intermediate: list[tuple[int, float]] = []

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        self.tokens = trainer.loop.tokens_seen
        evals = trainer.loop.history["eval"]
        if len(evals) == self.seen or evals[-1]["step"] != step:
            return
        self.seen = len(evals)
        value = float(evals[-1]["val_loss"])
        if self.scale == "perplexity":
            value = math.exp(min(value, 700.0))
        self.intermediate.append((step, value))
        if not self.prune or not math.isfinite(value):
            return
        self.trial.report(value, step)
        if step < self.max_steps and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (validation {value:.4f})")


def trial_seed(search: Search, number: int) -> int:
    base = int(search.base.get("train", {}).get("seed", 0))
    return base + number if search.trial_seed == "per_trial" else base


def metric_values(record: dict[str, Any], train_s: float) -> dict[str, float | None]:
    """Every objective metric from a training record."""
    final = record.get("final", {})
    best = final.get("best_val_loss", final.get("val_loss"))
    return {
        "val_loss": best,
        "final_val_loss": final.get("val_loss"),
        "val_perplexity": None if best is None else math.exp(min(best, 700.0)),
        "test_loss": final.get("test_loss"),
        "train_loss": final.get("train_loss"),
        "tokens": float(record.get("tokens_seen", 0)),
        "seconds": float(record.get("wall_time_s", train_s)),
        "parameters": float(record.get("parameters", {}).get("total", 0)),
    }


def trial_config(search: Search, overrides: list[str], out_dir: Path, seed: int) -> Any:
    data = apply_overrides(copy.deepcopy(search.base), overrides)
    data["out_dir"] = str(out_dir)
    data.setdefault("train", {})["seed"] = seed
    data.setdefault("log", {})["progress"] = False  # the tune loop prints one line per trial
    return config_from_dict(data)


def run_trial(search: Search, trial: optuna.Trial, study_dir: Path) -> TrialOutcome:
    """Train one trial; never raises for a failing training run (the outcome says FAIL)."""
    from lmscope.train.trainer import Trainer

    params = search.space.suggest(trial)
    overrides = search.space.overrides(params)
    seed = trial_seed(search, trial.number)
    out_dir = study_dir / "trials" / f"trial-{trial.number:04d}"
    outcome = TrialOutcome(trial.number, "FAIL", params, overrides, seed, str(out_dir))
    objective = search.objectives[0].metric
    scale = "perplexity" if objective == "val_perplexity" else "loss"
    max_steps = int(search.base.get("train", {}).get("max_steps", 1000))
    reporter = _Reporter(trial, search.pruner != "none", max_steps, scale)
    start = time.perf_counter()
    try:
        config = trial_config(search, overrides, out_dir, seed)
        result = Trainer(config, resume=False, callbacks=[reporter]).run()
        outcome.train_s = time.perf_counter() - start
        if result.interrupted:
            step = result.record["final"]["step"]
            outcome.state, outcome.error = "INTERRUPTED", f"interrupted at step {step}"
        else:
            outcome.metrics = metric_values(result.record, outcome.train_s)
            if search.evaluation is not None:
                if result.model_dir is None:
                    raise ValueError("eval objectives need a full model: set finetune.merge_lora")
                outcome.metrics.update(evaluate_model(result.model_dir, search.evaluation))
            values = [outcome.metrics.get(o.metric) for o in search.objectives]
            missing = [
                o.metric for o, v in zip(search.objectives, values, strict=True) if v is None
            ]
            if missing and missing[0].startswith("eval:"):
                known = sorted(k for k in outcome.metrics if k.startswith("eval:"))
                outcome.error = f"no metric {missing[0]}; the tasks gave: {', '.join(known)}"
            elif missing:
                outcome.error = (
                    f"the run has no {missing[0]} (does the data have a validation/test split "
                    "and the config evaluate?)"
                )
            else:
                outcome.values = [float(v) for v in values if v is not None]
                outcome.state = "COMPLETE"
        outcome.tokens = int(result.record.get("tokens_seen", reporter.tokens))
    except optuna.TrialPruned as pruned:
        outcome.state, outcome.error = "PRUNED", str(pruned)
    except Exception as err:  # a crashing trial is recorded; the study goes on
        outcome.error = f"{type(err).__name__}: {err}"
        tail = traceback.format_exc().strip().splitlines()[-6:]
        outcome.metrics["traceback"] = "\n".join(tail)
    if not outcome.train_s:
        outcome.train_s = time.perf_counter() - start
    outcome.tokens = outcome.tokens or reporter.tokens
    outcome.intermediate = list(reporter.intermediate)
    write_outcome(out_dir, outcome)
    return outcome


def write_outcome(out_dir: Path, outcome: TrialOutcome) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / TRIAL_FILE, json.dumps(asdict(outcome), indent=2, default=str))

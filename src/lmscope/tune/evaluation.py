"""Objectives from `lmscope eval` tasks: after a trial trains, its model is evaluated on the
search file's task file, and metrics are named `eval:TASK:METRIC` (e.g.
`eval:shakespeare_speaker:accuracy`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmscope.tune.errors import TuneError

PREFIX = "eval:"


@dataclass(frozen=True)
class EvalSettings:
    tasks: Path  # a task file as `lmscope eval` takes it
    limit: int | None = None  # the first N items of each task


def split_metric(metric: str) -> tuple[str, str]:
    """`eval:TASK:METRIC` -> (TASK, METRIC)."""
    parts = metric.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise TuneError(f"objective '{metric}' must look like eval:TASK:METRIC")
    return parts[1], parts[2]


def parse_eval(raw: Any, folder: Path, metrics: list[str]) -> EvalSettings | None:
    """The `eval:` section: {tasks: FILE, limit: N}; the tasks named by objectives must be in
    the file."""
    wanted = [m for m in metrics if m.startswith(PREFIX)]
    if raw is None:
        if wanted:
            raise TuneError(f"objective '{wanted[0]}' needs `eval: {{tasks: TASK_FILE}}`")
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), str):
        raise TuneError("eval must be a mapping: {tasks: TASK_FILE, limit: N}")
    unknown = sorted(set(raw) - {"tasks", "limit"})
    if unknown:
        raise TuneError(f"unknown eval key '{unknown[0]}'; use tasks and limit")
    limit = raw.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TuneError(f"eval.limit must be a positive whole number, got {limit!r}")
    path = Path(raw["tasks"])
    if not path.is_absolute() and not path.exists():
        path = folder / path
    names = {spec.name for spec in _specs(EvalSettings(path.resolve(), limit))}
    for metric in wanted:
        task, _ = split_metric(metric)
        if task not in names:
            raise TuneError(f"objective '{metric}': no task '{task}' in {path}; it has: "
                            f"{', '.join(sorted(names))}")  # fmt: skip
    return EvalSettings(path.resolve(), limit)


def _specs(settings: EvalSettings) -> list[Any]:
    from lmscope.evaluate.errors import EvalError
    from lmscope.evaluate.tasks import load_tasks

    try:
        specs = load_tasks(settings.tasks)
    except EvalError as err:
        raise TuneError(f"eval.tasks: {err}") from None
    if settings.limit is not None:
        limit = settings.limit
        specs = [s.model_copy(update={"limit": min(limit, s.limit or limit)}) for s in specs]
    return specs


def evaluate_model(model_dir: Path, settings: EvalSettings) -> dict[str, float]:
    """Every metric of every task for a trained model, as `eval:TASK:METRIC` -> value."""
    from lmscope.evaluate.runner import run_tasks
    from lmscope.zoo.registry import load

    report = run_tasks(load(str(model_dir)), _specs(settings))
    return {
        f"{PREFIX}{task['name']}:{name}": float(metric["value"])
        for task in report["tasks"]
        for name, metric in task["metrics"].items()
        if isinstance(metric, dict) and isinstance(metric.get("value"), int | float)
    }

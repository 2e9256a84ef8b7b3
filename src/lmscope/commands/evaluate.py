"""`lmscope eval MODEL TASKS...` and `lmscope compare A B TASKS...`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from lmscope.commands.common import DEVICE_OPTION, UsageError, user_errors

console = Console(stderr=True)


@dataclass(frozen=True)
class Endpoint:
    url: str
    tokenizer: str | None
    context: int
    api_key: str | None


def _load_specs(tasks: list[Path]) -> list[Any]:
    from lmscope.evaluate.errors import EvalError
    from lmscope.evaluate.tasks import load_tasks

    specs = [spec for path in tasks for spec in load_tasks(path)]
    names = [s.name for s in specs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise EvalError(f"task names {duplicated} appear in more than one task file; rename them")
    return specs


def _progress_factory() -> tuple[Any, Callable[[str], Callable[[int], None]]]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        TextColumn("{task.completed} tokens"),
        BarColumn(bar_width=None),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )

    def for_task(name: str) -> Callable[[int], None]:
        task_id = progress.add_task(name, total=None)
        return lambda done: progress.advance(task_id, done)

    return progress, for_task


def _evaluate(
    model: str,
    specs: list[Any],
    limit: int | None,
    threads: int | None,
    endpoint: Endpoint | None = None,
    quantize: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    import torch

    from lmscope.evaluate.runner import run_tasks
    from lmscope.zoo.registry import load

    if threads is not None:
        torch.set_num_threads(max(1, threads))
    if model.endswith(".json") and Path(model).is_file():
        return dict(json.loads(Path(model).read_text(encoding="utf-8")))
    lm: Any
    if endpoint is not None:
        from lmscope.evaluate.backends import EndpointBackend, endpoint_tokenizer

        tokenizer = endpoint_tokenizer(endpoint.tokenizer or model)
        lm = EndpointBackend(endpoint.url, model, tokenizer, endpoint.context, endpoint.api_key)
    else:
        from lmscope.train.distributed import init_distributed

        lm = load(model, device=device)
        if quantize is not None:  # scored with the int8 weights, as `serve --quantize` serves
            from lmscope.model.quantized import quantize_for_decoding

            quantize_for_decoding(lm.model, quantize)
        info = init_distributed(lm.model.device.type)
        if info.enabled:  # started by torchrun: each process takes a share of the work
            from lmscope.evaluate.backends import ShardedBackend

            lm = ShardedBackend(lm, info)
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--limit must be at least 1, got {limit}")
        specs = [s.model_copy(update={"limit": min(limit, s.limit or limit)}) for s in specs]
    if not _is_main_process():
        return run_tasks(lm, specs)
    progress, for_task = _progress_factory()
    with progress:
        report = run_tasks(lm, specs, progress=for_task)
    if quantize is not None:
        report["model"]["weights"] = quantize
    return report


def _is_main_process() -> bool:
    """False in every torchrun process but rank 0 (which alone prints and writes)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _print_report(report: dict[str, Any]) -> None:
    from lmscope.evaluate.report import metric_line

    for task in report["tasks"]:
        print(f"{task['name']} ({task['kind']}, {task['n_items']} items, {task['data_hash'][:19]})")
        for name, m in task["metrics"].items():
            print(f"  {metric_line(name, m)}")
            if "signature" in m:
                print(f"    sacrebleu signature: {m['signature']}")
    diagnosis = report.get("diagnosis") or {}
    if diagnosis.get("fit"):
        fit = diagnosis["fit"]
        print(f"fit: {fit['verdict']}: {fit['summary']}")
        for suggestion in fit["suggestions"]:
            print(f"  suggestion: {suggestion}")
    for finding in diagnosis.get("class_imbalance", []):
        print(f"imbalance in {finding['task']}: {finding['summary']}")
        for suggestion in finding["suggestions"]:
            print(f"  suggestion: {suggestion}")


@user_errors
def eval_command(
    model: str = typer.Argument(..., help="Model name (see `lmscope models`) or path."),
    tasks: list[Path] = typer.Argument(
        ..., help="Task files (YAML), or plain .txt files for their perplexity."
    ),
    out: Path = typer.Option(Path("eval-out"), "--out", help="Directory for report.json/.html."),
    limit: int | None = typer.Option(None, help="Evaluate only the first N items of each task."),
    threads: int | None = typer.Option(None, help="CPU threads for torch."),
    device: str = DEVICE_OPTION,
    endpoint: str | None = typer.Option(
        None, help="Evaluate MODEL as served by this OpenAI-compatible URL (echo + logprobs)."
    ),
    tokenizer: str | None = typer.Option(
        None, help="With --endpoint: the model's tokenizer (a checkpoint dir or embedded name)."
    ),
    context: int = typer.Option(2048, help="With --endpoint: the served context length."),
    api_key: str | None = typer.Option(None, envvar="OPENAI_API_KEY", help="With --endpoint."),
    quantize: str | None = typer.Option(
        None, "--quantize", help="int8: evaluate the weights `serve --quantize int8` serves."
    ),
) -> None:
    """Evaluate MODEL on TASKS: every metric with its 95% CI and item count, JSON + HTML."""
    from lmscope.evaluate.report import write_report

    if quantize is not None:
        from lmscope.model.quantized import check_quantize_mode

        check_quantize_mode(quantize)
    specs = _load_specs(tasks)
    served = Endpoint(endpoint, tokenizer, context, api_key) if endpoint else None
    report = _evaluate(model, specs, limit, threads, served, quantize, device)
    if not _is_main_process():
        return
    _print_report(report)
    for path in write_report(report, out, "report"):
        print(f"wrote {path}")


@user_errors
def compare_command(
    model_a: str = typer.Argument(..., help="Version A: a model, or a report.json of `eval`."),
    model_b: str = typer.Argument(..., help="Version B: a model, or a report.json of `eval`."),
    tasks: list[Path] = typer.Argument(..., help="Task files both are evaluated on."),
    out: Path = typer.Option(Path("compare-out"), "--out", help="Directory for the reports."),
    limit: int | None = typer.Option(None, help="Evaluate only the first N items of each task."),
    threads: int | None = typer.Option(None, help="CPU threads for torch."),
    device: str = DEVICE_OPTION,
) -> None:
    """Compare A and B on the same items: paired differences with CIs, p-values, a verdict."""
    from lmscope.evaluate.compare import compare_reports
    from lmscope.evaluate.report import write_report

    specs = _load_specs(tasks)
    report_a = _evaluate(model_a, specs, limit, threads, device=device)
    report_b = _evaluate(model_b, specs, limit, threads, device=device)
    comparison = compare_reports(report_a, report_b)
    for task in comparison["tasks"]:
        print(f"{task['name']} ({task['kind']}, {task['n_items']} items)")
        for line in task["verdicts"] + task["notes"]:
            print(f"  {line}")
    written = write_report(report_a, out, "a") + write_report(report_b, out, "b")
    written += write_report(comparison, out, "compare")
    for path in written:
        print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("compare")(compare_command)

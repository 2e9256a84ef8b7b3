"""`lmscope drift report`: a one-file HTML drift report, from a running server, from a saved
GET /v1/drift answer, or offline from a reference and a file of prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from lmscope.commands.common import UsageError, user_errors

drift_app = typer.Typer(help="Drift monitoring: reports of how served prompts compare.")


def fetch_snapshot(url: str, api_key: str | None) -> dict[str, Any]:
    import httpx

    target = url.rstrip("/")
    if not target.endswith("/v1/drift"):
        target += "/v1/drift"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(target, headers=headers, timeout=30)
    except httpx.HTTPError as err:
        raise UsageError(f"cannot reach {target}: {err}") from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise UsageError(f"{target} answered {response.status_code}: {message}")
    snapshot: dict[str, Any] = response.json()
    return snapshot


def read_snapshot(path: Path) -> dict[str, Any]:
    try:
        snapshot = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"cannot read drift snapshot {path}: {err}") from None
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("models"), list):
        raise UsageError(f"{path} is not a GET /v1/drift answer (no 'models' list)")
    return snapshot


def offline_snapshot(reference: str, prompts: str, model_name: str) -> dict[str, Any]:
    """Prompt signals of every line of `prompts` against `reference`, scored by the model
    in process (no server; output signals need generations, so they are left out)."""
    from lmscope.engine.observer import RequestRecord
    from lmscope.serve.drift import PROMPT_SIGNALS, DriftHub, DriftSettings
    from lmscope.serve.drift_reference import mean_logprobs, reference_samples
    from lmscope.zoo.registry import load

    loaded = load(model_name)
    if loaded.tokenizer is None:
        raise UsageError(f"model {model_name} has no tokenizer; drift needs one")
    live = reference_samples(prompts, loaded.tokenizer, max_samples=10**9)
    settings = DriftSettings(reference, window=len(live), min_samples=min(30, len(live)))
    hub = DriftHub(settings)
    monitor = hub.attach(model_name, loaded.model, loaded.tokenizer)
    scores = mean_logprobs(loaded.model, [ids[-settings.max_tokens :] for ids in live])
    for ids, score in zip(live, scores, strict=True):
        monitor.on_request(model_name, RequestRecord(ids, score, 0, "none"))
    snapshot = hub.snapshot()
    for model in snapshot["models"]:
        model["signals"] = [s for s in model["signals"] if s["name"] in PROMPT_SIGNALS]
        model["drift"] = any(s["drift"] for s in model["signals"])
    snapshot["drift"] = any(m["drift"] for m in snapshot["models"])
    return snapshot


@drift_app.command("report")
@user_errors
def report(
    source: str | None = typer.Argument(
        None, help="A server URL (http://host:port) or a saved GET /v1/drift JSON file."
    ),
    out: Path = typer.Option(Path("drift_report.html"), "--out", "-o", help="HTML file to write."),
    reference: str | None = typer.Option(
        None, help="Offline: the reference text or data directory (instead of SOURCE)."
    ),
    prompts: str | None = typer.Option(
        None, help="Offline: a text file of prompts, one per line, to compare with --reference."
    ),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Offline: the model."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="LMSCOPE_API_KEY", help="Bearer key for a server URL."
    ),
) -> None:
    """Write an HTML report with the reference and current distributions side by side."""
    from lmscope.files import atomic_path
    from lmscope.serve.drift_reference import DriftReferenceError
    from lmscope.serve.drift_report import render_report

    if source is not None and (reference or prompts):
        raise UsageError("give SOURCE or --reference with --prompts, not both")
    if source is None:
        if not (reference and prompts):
            raise UsageError(
                "give a server URL or saved /v1/drift JSON as SOURCE, or --reference and "
                "--prompts for an offline report"
            )
        try:
            snapshot = offline_snapshot(reference, prompts, model)
        except DriftReferenceError as err:
            raise UsageError(str(err)) from None
    elif source.startswith(("http://", "https://")):
        snapshot = fetch_snapshot(source, api_key)
    else:
        snapshot = read_snapshot(Path(source))
    page = render_report(snapshot)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    verdict = "drift detected" if snapshot.get("drift") else "no drift"
    typer.echo(f"lmscope: {verdict}; report written to {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(drift_app, name="drift")

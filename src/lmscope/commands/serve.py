"""`lmscope serve`: the OpenAI-compatible API and the web explorer."""

from __future__ import annotations

import logging
import os

import typer

from lmscope.commands.common import user_errors


@user_errors
def serve(
    model: list[str] = typer.Option(
        ["smollm2-135m"],
        "--model",
        "-m",
        help="Model to serve: NAME_OR_PATH or ID=NAME_OR_PATH; repeat for several.",
    ),
    route: list[str] = typer.Option(
        [], "--route", help="Weighted alias, e.g. chat=v1:0.8,v2:0.2 (A/B routing)."
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="Port to bind."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="LMSCOPE_API_KEY",
        help="Require 'Authorization: Bearer KEY' on /v1.",
    ),
    max_batch: int = typer.Option(8, help="Sequences decoded together per model."),
    max_queue: int = typer.Option(64, help="Waiting requests before answering 429."),
    max_seq_len: int = typer.Option(2048, help="Prompt + completion tokens per sequence."),
    prefill_chunk: int | None = typer.Option(
        None,
        help="Prompts longer than this are prefilled this many tokens per decode step, so "
        "running streams keep flowing (default 256).",
    ),
    timeout: float = typer.Option(600.0, help="Per-request timeout in seconds."),
    max_body_mb: float = typer.Option(4.0, help="Largest accepted request body, in MiB."),
    dtype: str = typer.Option("float32", help="float32 or bfloat16."),
    prepack: bool = typer.Option(
        True,
        help="Prepack float32 weights for faster CPU decoding (costs one more copy of the "
        "weights in memory).",
    ),
) -> None:
    """Serve models over an OpenAI-compatible HTTP API, with explanations and the web explorer."""
    import uvicorn

    from lmscope.serve.app import create_app
    from lmscope.serve.routing import parse_model_spec
    from lmscope.serve.state import DTYPES, ServeSettings

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}")
    for name, value in (
        ("--max-batch", max_batch),
        ("--max-queue", max_queue),
        ("--max-seq-len", max_seq_len),
        ("--prefill-chunk", 1 if prefill_chunk is None else prefill_chunk),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1")
    settings = ServeSettings(
        models=[parse_model_spec(m) for m in model],
        routes=list(route),
        api_key=api_key or os.environ.get("LMSCOPE_API_KEY") or None,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_batch=max_batch,
        max_queue=max_queue,
        max_seq_len=max_seq_len,
        request_timeout=timeout,
        dtype=dtype,
        prepack=prepack,
    )
    if prefill_chunk is not None:
        settings.prefill_chunk = prefill_chunk
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = create_app(settings)
    typer.echo(
        f"lmscope: serving on http://{host}:{port} (explorer at /, API at /v1, docs at /docs)"
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)

"""`lmscope serve`: the OpenAI-compatible API and the web explorer."""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

import typer

from lmscope.commands.common import DEVICE_OPTION, UsageError, fail, user_errors

if TYPE_CHECKING:
    from lmscope.serve.drift import DriftSettings


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is loaded, so a port in use is one line."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0-65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on {host} is already in use; stop what is using it or pick "
                "another with --port"
            ) from None
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


@user_errors
def serve(
    model: list[str] = typer.Option(
        ["smollm2-135m"],
        "--model",
        "-m",
        help="Model to serve: NAME_OR_PATH or ID=NAME_OR_PATH; repeat for several.",
    ),
    route: list[str] = typer.Option(
        [],
        "--route",
        help="Weighted alias, e.g. chat=v1:0.8,v2:0.2: an A/B test (users stay on one version).",
    ),
    shadow: list[str] = typer.Option(
        [], "--shadow", help="ALIAS=ID: ID also answers the alias's requests, logged, not returned."
    ),
    feedback_db: str | None = typer.Option(
        None,
        "--feedback-db",
        help="Store of answers and feedback: sqlite:///PATH or postgresql://... (default with "
        "--route: experiments.sqlite3 in the lmscope cache).",
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
    device: str = DEVICE_OPTION,
    threads: int | None = typer.Option(
        None, help="CPU threads for torch (default: torch's choice, usually the core count)."
    ),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="int8: weights quantized once at load (float32 on the CPU; about 3x faster "
        "decoding, bits per byte within 1%); explanations use the dequantised int8 weights.",
    ),
    drift_reference: str | None = typer.Option(
        None,
        help="Monitor drift against this calibration text (one sample per line) or prepared "
        "data directory: GET /v1/drift and lmscope:drift_* in /metrics.",
    ),
    drift_window: int = typer.Option(200, help="Requests per drift window."),
) -> None:
    """Serve models over an OpenAI-compatible HTTP API, with explanations and the web explorer."""
    import torch
    import uvicorn

    from lmscope.serve.app import create_app, swagger_assets
    from lmscope.serve.http11 import uvicorn_options
    from lmscope.serve.routing import parse_model_spec
    from lmscope.serve.state import DTYPES, ServeSettings

    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}")
    if quantize is not None:
        from lmscope.model.quantized import check_quantize_mode

        check_quantize_mode(quantize, dtype)
    for name, value in (
        ("--max-batch", max_batch),
        ("--max-queue", max_queue),
        ("--max-seq-len", max_seq_len),
        ("--prefill-chunk", 1 if prefill_chunk is None else prefill_chunk),
        ("--threads", 1 if threads is None else threads),
    ):
        if value < 1:
            raise UsageError(f"{name} must be at least 1")
    from lmscope.zoo.registry import check_device

    check_device(device)  # before binding the port or loading anything
    settings = ServeSettings(
        models=[parse_model_spec(m) for m in model],
        routes=list(route),
        device=device,
        shadows=list(shadow),
        feedback_db=feedback_db,
        api_key=api_key or os.environ.get("LMSCOPE_API_KEY") or None,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_batch=max_batch,
        max_queue=max_queue,
        max_seq_len=max_seq_len,
        request_timeout=timeout,
        dtype=dtype,
        prepack=prepack,
        quantize=quantize,
    )
    if prefill_chunk is not None:
        settings.prefill_chunk = prefill_chunk
    if drift_reference is not None:
        settings.drift = drift_settings(drift_reference, drift_window)
    if threads is not None:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    failure: list[str] = []
    server: uvicorn.Server | None = None

    def load_failed(message: str) -> None:
        failure.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_error=load_failed)  # checks the settings, loads nothing
    sock = bind_socket(host, port)
    config = uvicorn.Config(app, log_level="warning", access_log=False, **uvicorn_options())
    server = uvicorn.Server(config)
    n_threads = torch.get_num_threads()
    typer.echo(
        f"lmscope: serving on http://{host}:{port} with {n_threads} CPU "
        f"thread{'' if n_threads == 1 else 's'} "
        f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}); explorer at /, "
        f"API at /v1, {'docs at /docs' if swagger_assets() else 'OpenAPI at /openapi.json'}"
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failure:
        sys.stdout.flush()
        raise fail(f"could not load the model: {failure[0]}")


def drift_settings(reference: str, window: int) -> DriftSettings:
    """--drift-reference/--drift-window as settings (at least half a window before a flag)."""
    from pathlib import Path

    from lmscope.serve.drift import DriftSettings

    if not Path(reference).exists():
        raise UsageError(
            f"--drift-reference {reference} does not exist; give a text file (one sample per "
            "line) or a directory made by `lmscope data prepare`"
        )
    settings = DriftSettings(reference, window=window, min_samples=min(30, max(1, window // 2)))
    try:
        settings.check()
    except ValueError as err:
        raise UsageError(f"--drift-window: {err}") from None
    return settings


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)

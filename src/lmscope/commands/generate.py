"""`lmscope generate MODEL PROMPT`: stream a completion to the terminal."""

from __future__ import annotations

import re
import sys
import time
from enum import Enum

import typer

from lmscope.commands.common import DEVICE_OPTION, user_errors

ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """Shell-friendly escapes for stop strings: \\n, \\t and \\\\."""
    return re.sub(r"\\([nt\\])", lambda m: ESCAPES[m.group(1)], text)


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


@user_errors
def generate(
    model: str = typer.Argument(..., help="Model name (see `lmscope models`) or path."),
    prompt: str = typer.Argument(..., help="The prompt; '-' reads it from standard input."),
    max_tokens: int = typer.Option(128, "--max-tokens", "-n", help="Most new tokens to generate."),
    temperature: float = typer.Option(0.7, help="0 for greedy decoding; higher is more random."),
    top_k: int = typer.Option(
        0, "--top-k", help="Sample only from the k likeliest tokens (0: off)."
    ),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1: off)."),
    repetition_penalty: float = typer.Option(
        1.0, "--repetition-penalty", help="> 1 discourages tokens already in the text."
    ),
    seed: int | None = typer.Option(None, help="Seed for reproducible sampling."),
    stop: list[str] = typer.Option(
        [], "--stop", help="Stop before this string (repeatable; \\n and \\t are understood)."
    ),
    chat: bool = typer.Option(
        False, "--chat", help="Send the prompt as a user message through the chat template."
    ),
    system: str | None = typer.Option(None, help="System message (with --chat)."),
    truncate: bool = typer.Option(
        False, "--truncate", help="Drop the oldest prompt tokens instead of failing when too long."
    ),
    dtype: DType = typer.Option(DType.float32, help="Weights dtype."),
    threads: int | None = typer.Option(None, help="CPU threads for torch (default: torch's)."),
    device: str = DEVICE_OPTION,
    prepack: bool = typer.Option(
        True,
        help="Prepack float32 weights for faster CPU decoding (costs one more copy of the "
        "weights in memory).",
    ),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="int8: weights quantized once at load (float32 CPU models; about 3x faster "
        "decoding, bits per byte within 1%).",
    ),
    stats: bool = typer.Option(True, help="Print token counts and speed to stderr at the end."),
) -> None:
    """Generate text from MODEL, streaming it to the terminal as it is produced."""
    import torch

    from lmscope.engine import GenerationError, PromptTooLongError, SamplingParams, stream
    from lmscope.model.decoding import prepare_for_decoding
    from lmscope.model.quantized import check_quantize_mode
    from lmscope.zoo.registry import load

    if threads is not None:
        if threads < 1:
            raise GenerationError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    if seed is not None and seed < 0:
        raise GenerationError(f"--seed must be 0 or more, got {seed}")
    if quantize is not None:
        check_quantize_mode(quantize, dtype.value)  # before loading anything
    text = sys.stdin.read() if prompt == "-" else prompt
    params = SamplingParams(
        max_new_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        stop=tuple(unescape(s) for s in stop),
        seed=seed,
    )
    loaded = load(model, dtype=getattr(torch, dtype.value), device=device)
    if loaded.tokenizer is None:
        raise GenerationError(
            f"model {model!r} has no tokenizer; save one with the checkpoint to generate text"
        )
    prepare_for_decoding(loaded.model, quantize=quantize, prepack=prepack)
    messages = None
    if chat:
        messages = [{"role": "user", "content": text}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
    elif system is not None:
        raise GenerationError("--system needs --chat")
    start = time.perf_counter()
    try:
        deltas = stream(
            loaded.model,
            loaded.tokenizer,
            messages if messages is not None else text,
            params,
            truncate="left" if truncate else None,
        )
    except PromptTooLongError as err:
        raise GenerationError(
            f"the prompt has {err.prompt_tokens} tokens but the model's context window is "
            f"{err.limit} tokens; shorten it or pass --truncate to drop its oldest tokens"
        ) from None
    try:
        for delta in deltas:
            sys.stdout.write(delta)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        raise typer.Exit(code=130) from None
    sys.stdout.write("\n")
    result = deltas.result
    if stats and result is not None:
        elapsed = time.perf_counter() - start
        print(
            f"[{result.prompt_tokens} prompt + {result.completion_tokens} new tokens, "
            f"finish: {result.finish_reason}, {elapsed:.2f} s, {torch.get_num_threads()} "
            f"thread{'' if torch.get_num_threads() == 1 else 's'}, "
            f"{result.completion_tokens / max(elapsed, 1e-9):.1f} tokens/s]",
            file=sys.stderr,
        )


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)

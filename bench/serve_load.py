"""Serving figures against a real server on loopback, compared with the same engine in-process.

    python bench/serve_load.py [--model smollm2-135m] [--max-tokens 64] [--soak-minutes 10]

Prints: in-process single-stream decode tok/s; how long a running stream stalls while a
1536-token prompt is prefilled, whole and in chunks (in process); HTTP single-stream decode
tok/s (and the ratio); aggregate generated tok/s at 1, 4 and 8 concurrent streaming clients (and
the ratio to one stream); p50/p99 time to first token at each concurrency; optionally a soak at
8 clients with error count and server memory growth. With `--quantize int8` the figures are
printed for the float32 server and then for `serve --quantize int8`, old vs new in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The most important thing to know about machine learning is",
    "Write a short note about the history of Paris:",
    "In the beginning God created the heaven and the earth. And",
    "To be, or not to be, that is the question:",
    "A recipe for a simple tomato soup:",
    "The three laws of thermodynamics are",
    "My favourite programming language is",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def load_as_served(model_name: str, quantize: str | None = None) -> Any:
    from lmscope.model.decoding import prepare_for_decoding
    from lmscope.zoo.registry import load

    loaded = load(model_name)
    choice = prepare_for_decoding(loaded.model, quantize=quantize, batch=8)  # as the server does
    print(f"decoding path: {choice.path} ({choice.reason})")
    return loaded


def engine_for(loaded: Any, **options: Any) -> Any:
    from lmscope.engine import Engine
    from lmscope.serve.metrics import ServerMetrics

    engine = Engine(
        loaded.model, loaded.tokenizer, name="bench", metrics=ServerMetrics(), **options
    )
    engine.start()
    return engine


def in_process_decode(loaded: Any, max_tokens: int) -> float:
    """Single-stream decode tok/s through the same Engine the server uses, without HTTP."""
    from lmscope.engine import SamplingParams

    engine = engine_for(loaded, max_batch=8)

    async def run() -> float:
        rates = []
        for prompt in PROMPTS[:3]:
            ids = loaded.tokenizer.encode(prompt)
            params = SamplingParams(max_new_tokens=max_tokens, temperature=0.0, ignore_eos=True)
            times = []
            async for event in engine.generate(ids, params):
                if event.token_id is not None:
                    times.append(time.perf_counter())
            rates.append((len(times) - 1) / (times[-1] - times[0]))
        return statistics.median(rates)

    try:
        return asyncio.run(run())
    finally:
        engine.stop()


# One client for the whole run (it is thread-safe): a fresh httpx client per request builds an
# SSL context and a connection pool first, which costs ~25 ms of client CPU and would be counted
# as server time to first token, growing with the number of client threads.
CLIENT = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))


def long_prompt_stall(loaded: Any, prefill_chunk: int) -> tuple[float, float, float]:
    """(longest and median gap between a running stream's tokens, TTFT of the long prompt)
    while a 1536-token prompt arrives, with the engine's prefill chunk set as given."""
    from lmscope.engine import SamplingParams

    text = SHAKESPEARE.read_text()[:20000] if SHAKESPEARE.is_file() else " ".join(PROMPTS) * 40
    long_ids = loaded.tokenizer.encode(text)[:1536]
    engine = engine_for(loaded, prefill_chunk=prefill_chunk)

    async def run() -> tuple[float, float, float]:
        stamps: list[float] = []

        async def running_stream() -> None:
            params = SamplingParams(max_new_tokens=120, temperature=0, ignore_eos=True)
            async for event in engine.generate(loaded.tokenizer.encode(PROMPTS[0]), params):
                if event.token_id is not None:
                    stamps.append(time.perf_counter())

        task = asyncio.create_task(running_stream())
        while len(stamps) < 10:
            await asyncio.sleep(0.01)
        start = time.perf_counter()
        ttft = float("nan")
        async for event in engine.generate(long_ids, SamplingParams(max_new_tokens=1)):
            if event.token_id is not None:
                ttft = time.perf_counter() - start
        await task
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        return max(gaps), statistics.median(gaps), ttft

    try:
        return asyncio.run(run())
    finally:
        engine.stop()


def stream_once(base: str, prompt: str, max_tokens: int) -> tuple[float, float, int, float]:
    """(ttft, decode seconds after the first token, tokens, end-to-end) of one streaming request."""
    payload = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    tokens = 0
    with CLIENT.stream("POST", base + "/v1/completions", json=payload) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                now = time.perf_counter()
                first = first or now
                last = now
    end = time.perf_counter()
    assert first is not None and last is not None
    return first - start, last - first, tokens, end - start


def concurrent_round(base: str, clients: int, max_tokens: int) -> tuple[float, list[float]]:
    """Aggregate generated tok/s and the TTFTs of `clients` simultaneous streams."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(clients)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda p: stream_once(base, p, max_tokens), prompts))
    wall = time.perf_counter() - start
    return sum(r[2] for r in results) / wall, [r[0] for r in results]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(model: str, port: int, quantize: str | None = None) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-c",
        "from lmscope.cli import main; main()",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        *(["--quantize", quantize] if quantize else []),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--soak-minutes", type=float, default=0.0)
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="run the figures for the float32 server, then again with `serve --quantize`",
    )
    parser.add_argument("--skip-stall", action="store_true", help="skip the long-prompt figures")
    args = parser.parse_args()

    print(f"model {args.model}, {args.max_tokens} tokens per request, {os.cpu_count()} CPUs")
    for quantize in [None, args.quantize] if args.quantize else [None]:
        print(f"\n== weights: {quantize or 'float32'} ==")
        run_variant(args, quantize)


def run_variant(args: argparse.Namespace, quantize: str | None) -> None:
    loaded = load_as_served(args.model, quantize)
    local = in_process_decode(loaded, args.max_tokens)
    print(f"in-process single-stream decode: {local:.1f} tok/s")
    for label, chunk in (("whole", 1 << 30), ("in 256-token chunks", 256)):
        if args.skip_stall:
            break
        worst, median, ttft = long_prompt_stall(loaded, chunk)
        print(
            f"1536-token prompt prefilled {label}: a running stream's longest token gap "
            f"{worst * 1000:.0f} ms (median {median * 1000:.0f} ms); its own TTFT {ttft:.2f} s"
        )
    del loaded

    server = start_server(args.model, args.port, quantize)
    base = f"http://127.0.0.1:{args.port}"
    try:
        stream_once(base, PROMPTS[0], 8)  # warm-up
        singles = [stream_once(base, PROMPTS[i], args.max_tokens) for i in range(3)]
        http_rate = statistics.median((r[2] - 1) / r[1] for r in singles)
        print(
            f"HTTP single-stream decode:       {http_rate:.1f} tok/s  ({http_rate / local:.2f}x in-process)"
        )
        aggregate_one = None
        print("clients  aggregate tok/s  vs 1 stream  TTFT p50 ms  TTFT p99 ms")
        for clients in (1, 4, 8):
            rates, ttfts = [], []
            for _ in range(args.rounds):
                rate, firsts = concurrent_round(base, clients, args.max_tokens)
                rates.append(rate)
                ttfts += firsts
            rate = statistics.median(rates)
            aggregate_one = aggregate_one or rate
            print(
                f"{clients:>7}  {rate:>15.1f}  {rate / aggregate_one:>10.2f}x  "
                f"{percentile(ttfts, 50) * 1000:>11.0f}  {percentile(ttfts, 99) * 1000:>11.0f}"
            )
        if args.soak_minutes > 0:
            soak(base, server.pid, args.soak_minutes, args.max_tokens)
    finally:
        server.terminate()
        server.wait(timeout=30)


def soak(base: str, pid: int, minutes: float, max_tokens: int) -> None:
    deadline = time.time() + minutes * 60
    errors = 0
    done = 0
    samples: list[tuple[float, float]] = []
    start = time.time()

    def client(index: int) -> None:
        nonlocal errors, done
        while time.time() < deadline:
            try:
                stream_once(base, PROMPTS[index % len(PROMPTS)], max_tokens)
                done += 1
            except Exception:
                errors += 1

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client, i) for i in range(8)]
        while time.time() < deadline:
            samples.append((time.time() - start, rss_mb(pid)))
            time.sleep(10)
        for future in futures:
            future.result()
    baseline = statistics.median(m for t, m in samples if t <= 60) if samples else float("nan")
    final = samples[-1][1] if samples else float("nan")
    print(
        f"soak {minutes:g} min at 8 clients: {done} requests, {errors} errors, server RSS "
        f"{baseline:.0f} MB after the first minute -> {final:.0f} MB at the end "
        f"({(final / baseline - 1) * 100:+.1f}%)"
    )


if __name__ == "__main__":
    main()

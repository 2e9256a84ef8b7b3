"""The server's engine (the one Scheduler on a thread): prompts that arrive together are
prefilled together, unchanged; long prompts are chunked; errors reach the consumer typed."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
import torch

from lmscope.engine import Engine, Request, SamplingParams, Sequence, generate
from lmscope.engine.scheduler import PREFILL_TOKEN_BUDGET, prefill_groups
from lmscope.serve.metrics import ServerMetrics
from test_generate_fixtures import GPT2_LIKE, tiny_model, tiny_tokenizer

PROMPTS = [
    "The quick brown fox",
    "To be",
    "In the beginning God created the heaven",
    "brown fox jumps",
    "question",
]


def request(length: int) -> Request:
    return Request(Sequence(list(range(length)), SamplingParams()))


def test_prefill_groups_keep_padding_and_size_bounded() -> None:
    similar = [request(n) for n in (10, 12, 11, 9)]
    groups = prefill_groups([similar[0], request(200), request(2), *similar[1:]])
    lengths = sorted(sorted(len(r.prompt) for r in g) for g in groups)
    assert lengths == [[2, 9, 10, 11, 12], [200]]  # 2 pads to 12 within the slack
    assert sum(len(g) for g in prefill_groups([request(n) for n in (3, 40)])) == 2
    assert len(prefill_groups([request(n) for n in (3, 40)])) == 2  # too much padding
    many = [request(100) for _ in range(30)]
    sizes = [len(g) for g in prefill_groups(many)]
    assert sum(sizes) == 30 and max(sizes) * 100 <= PREFILL_TOKEN_BUDGET


async def run_engine(engine: Engine, prompts: list[list[int]], params: SamplingParams) -> list[Any]:
    async def consume(prompt: list[int]) -> list[int]:
        return [e.token_id async for e in engine.generate(prompt, params) if e.token_id is not None]

    tasks = [asyncio.create_task(consume(p)) for p in prompts]
    await asyncio.sleep(0.05)  # every request is queued before the loop's first turn
    engine.start()
    try:
        return await asyncio.gather(*tasks)
    finally:
        engine.stop()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("fast", [False, True], ids=["reference", "prepacked"])
def test_prompts_prefilled_together_get_their_one_by_one_tokens(family: str, fast: bool) -> None:
    tok = tiny_tokenizer()
    model = tiny_model(**(GPT2_LIKE if family == "gpt2" else {}))
    if fast:
        model.enable_prepacked()
    params = SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True)
    alone = [generate(model, tok, p, params, eos_token_ids=()).token_ids for p in PROMPTS]
    metrics = ServerMetrics()
    engine = Engine(model, tok, name="tiny", metrics=metrics, max_batch=8)
    grouped: list[int] = []
    original = engine.scheduler._prefill_together

    def spy(requests: list[Request], *args: Any, **kwargs: Any) -> None:
        grouped.append(len(requests))
        original(requests, *args, **kwargs)

    engine.scheduler._prefill_together = spy  # type: ignore[method-assign]
    ids = [tok.encode(p) for p in PROMPTS]
    together = asyncio.run(run_engine(engine, ids, params))
    assert together == alone
    assert grouped and max(grouped) >= 2  # the grouped path really ran
    with torch.no_grad():
        assert engine.scheduler._slots.n_active == 0  # every row was retired
    # the engine reports to the server's metrics through the observer protocol
    value = metrics.registry.get_sample_value
    labels = {"model_name": "tiny"}
    assert value("lmscope:prompt_tokens_total", labels) == sum(map(len, ids))
    assert value("lmscope:generation_tokens_total", labels) == 10 * len(PROMPTS)
    assert value("lmscope:time_to_first_token_seconds_count", labels) == len(PROMPTS)
    assert value("lmscope:time_per_output_token_seconds_count", labels) == 9 * len(PROMPTS)
    finished = {"model_name": "tiny", "finished_reason": "length"}
    assert value("lmscope:request_success_total", finished) == len(PROMPTS)
    assert value("lmscope:num_requests_running", labels) == 0


def test_chunked_prefill_gives_the_same_tokens_and_scores_and_lets_others_decode() -> None:
    tok = tiny_tokenizer()
    model = tiny_model()
    params = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True, logprobs=1)
    long_text = "In the beginning God created the heaven"
    long_ids = tok.encode(long_text)
    assert len(long_ids) > 12
    want = generate(model, tok, long_text, params, eos_token_ids=()).token_ids
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([long_ids]))[0, :-1], dim=-1)
    engine = Engine(model, tok, name="tiny", metrics=ServerMetrics(), prefill_chunk=6)
    short = tok.encode("To be")
    assert len(short) <= 6  # prefilled at once; the long prompt takes several chunks
    calls: list[str] = []
    for name in ("_prefill_chunk", "_decode_step"):
        original = getattr(engine.scheduler, name)

        def spy(*args: Any, _name: str = name, _original: Any = original) -> Any:
            if _name == "_decode_step" or engine.scheduler._chunked:
                calls.append(_name)
            return _original(*args)

        setattr(engine.scheduler, name, spy)

    async def scenario() -> tuple[list[int], list[Any], list[int]]:
        engine.start()
        try:
            running = engine.generate(short, replace(params, max_new_tokens=40))
            await running.__anext__()  # decoding before the long prompt arrives
            scored = [e async for e in engine.generate(long_ids, params, prompt_logprobs=True)]
            rest = [e.token_id async for e in running if e.token_id is not None]
            return [e.token_id for e in scored if e.token_id is not None], scored, rest
        finally:
            engine.stop()

    tokens, events, rest = asyncio.run(scenario())
    assert tokens == want
    scores = next(e.prompt_logprobs for e in events if e.prompt_logprobs is not None)
    assert scores[0] is None and len(scores) == len(long_ids)
    for i, score in enumerate(scores[1:]):
        assert abs(score.logprob - float(reference[i, long_ids[i + 1]])) < 1e-4
    chunks = [i for i, c in enumerate(calls) if c == "_prefill_chunk"]
    assert len(chunks) == -(-len(long_ids) // 6)  # the prompt went in 6 tokens at a time...
    between = calls[chunks[0] : chunks[-1]]
    assert between.count("_decode_step") >= len(chunks) - 1  # ...with decode steps in between
    assert len(rest) == 39


def test_an_engine_error_during_prefill_ends_the_waiting_requests() -> None:
    tok = tiny_tokenizer()
    engine = Engine(tiny_model(), tok, name="tiny", metrics=ServerMetrics())

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("prefill exploded")

    engine.scheduler._prefill_together = broken  # type: ignore[method-assign]
    params = SamplingParams(max_new_tokens=4, temperature=0)

    async def scenario() -> list[list[Any]]:
        async def consume(prompt: str) -> list[Any]:
            return [e async for e in engine.generate(tok.encode(prompt), params)]

        tasks = [asyncio.create_task(consume(p)) for p in PROMPTS[:3]]
        await asyncio.sleep(0.05)
        engine.start()
        try:
            return await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
        finally:
            engine.stop()

    for events in asyncio.run(scenario()):
        assert events[-1].finish_reason == "error"
        assert isinstance(events[-1].error, RuntimeError)
        assert "prefill exploded" in str(events[-1].error)
    assert engine.scheduler.running == 0 and engine.scheduler._slots.n_active == 0


def test_an_error_while_decoding_ends_the_running_requests_and_the_loop_serves_on() -> None:
    tok = tiny_tokenizer()
    model = tiny_model()
    engine = Engine(model, tok, name="tiny", metrics=ServerMetrics())
    params = SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True)
    original = engine.scheduler._decode_step
    failures = [RuntimeError("decode exploded")]

    def flaky(*args: Any) -> None:
        if failures:
            raise failures.pop()
        original(*args)

    engine.scheduler._decode_step = flaky  # type: ignore[method-assign]

    async def scenario() -> tuple[list[Any], list[Any]]:
        engine.start()
        try:
            first = [e async for e in engine.generate(tok.encode(PROMPTS[0]), params)]
            second = [e async for e in engine.generate(tok.encode(PROMPTS[0]), params)]
            return first, second
        finally:
            engine.stop()

    first, second = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert first[-1].finish_reason == "error" and "decode exploded" in str(first[-1].error)
    want = generate(model, tok, PROMPTS[0], params, eos_token_ids=()).token_ids
    assert [e.token_id for e in second if e.token_id is not None] == want
    assert second[-1].finish_reason == "length" and second[-1].error is None

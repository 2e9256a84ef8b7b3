"""The engine's scheduling: prompts that arrive together are prefilled together, unchanged."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from lmscope.model.generate import generate
from lmscope.model.sampling import SamplingParams
from lmscope.serve.engine import PREFILL_TOKEN_BUDGET, Engine, _Request, prefill_groups
from lmscope.serve.metrics import ServerMetrics
from test_generate_fixtures import GPT2_LIKE, tiny_model, tiny_tokenizer

PROMPTS = [
    "The quick brown fox",
    "To be",
    "In the beginning God created the heaven",
    "brown fox jumps",
    "question",
]


def request(length: int, *, prompt_logprobs: bool = False) -> _Request:
    sequence: Any = type("FakeSequence", (), {"prompt_ids": list(range(length))})()
    return _Request(sequence, lambda event: None, 0.0, prompt_logprobs)


def test_prefill_groups_keep_padding_and_size_bounded() -> None:
    scored = request(5, prompt_logprobs=True)
    similar = [request(n) for n in (10, 12, 11, 9)]
    long = request(200)
    groups = prefill_groups([similar[0], scored, long, *similar[1:]])
    lengths = sorted(sorted(len(r.prompt) for r in g) for g in groups)
    assert lengths == [[5], [9, 10, 11, 12], [200]]  # scoring alone; the long prompt alone
    assert [scored] in groups
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
@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast-path"])
def test_prompts_prefilled_together_get_their_one_by_one_tokens(family: str, fast: bool) -> None:
    tok = tiny_tokenizer()
    model = tiny_model(**(GPT2_LIKE if family == "gpt2" else {}))
    if fast:
        model.enable_fast_path()
    params = SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True)
    alone = [generate(model, tok, p, params, eos_token_ids=()).token_ids for p in PROMPTS]
    engine = Engine(model, tok, name="tiny", metrics=ServerMetrics(), max_batch=8)
    grouped: list[int] = []
    original = engine._prefill_together

    def spy(requests: list[_Request]) -> None:
        grouped.append(len(requests))
        original(requests)

    engine._prefill_together = spy  # type: ignore[method-assign]
    ids = [tok.encode(p) for p in PROMPTS]
    together = asyncio.run(run_engine(engine, ids, params))
    assert together == alone
    assert grouped and max(grouped) >= 2  # the grouped path really ran
    with torch.no_grad():
        assert engine._slots.n_active == 0  # every row was retired

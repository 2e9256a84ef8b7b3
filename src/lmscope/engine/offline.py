"""The in-process API: generate, generate_batch, stream and score, each driving the one
Scheduler synchronously in the caller's thread (as vLLM's offline `LLM` drives its engine).

>>> generate(model, tokenizer, "The capital of France is", max_new_tokens=8, temperature=0)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from collections.abc import Sequence as SequenceABC
from dataclasses import replace
from typing import Any

from lmscope.engine.errors import GenerationError, PromptTooLongError
from lmscope.engine.outputs import GenerationResult, ScoredText, TokenLogprob, token_text
from lmscope.engine.prompts import Prompt, Truncate, prepare_prompt, prompt_token_ids
from lmscope.engine.sampling import SamplingParams
from lmscope.engine.scheduler import Request, Scheduler
from lmscope.engine.sequence import Sequence
from lmscope.model.transformer import Transformer

__all__ = [
    "DEFAULT_MAX_BATCH",
    "LLM",
    "GenerationStream",
    "generate",
    "generate_batch",
    "score",
    "score_batch",
    "stream",
]

Tokenizer = Any
DEFAULT_MAX_BATCH = 32  # sequences decoded together in process; more wait for a free slot
Params = SamplingParams | SequenceABC[SamplingParams] | None


def _params_list(count: int, params: Params, overrides: dict[str, Any]) -> list[SamplingParams]:
    if params is None or isinstance(params, SamplingParams):
        base = params or SamplingParams()
        one = replace(base, **overrides) if overrides else base
        return [one] * count
    if len(params) != count:
        raise GenerationError(f"{len(params)} SamplingParams for {count} prompts")
    return [replace(p, **overrides) if overrides else p for p in params]


def _scheduler(
    model: Transformer,
    tokenizer: Tokenizer,
    work: SequenceABC[Sequence | Request],
    max_seq_len: int,
    max_batch_size: int | None,
    eos_token_ids: Iterable[int] | None,
) -> Scheduler:
    """A scheduler with all of `work` added: at most max_batch_size (default 32) run together,
    no slot is longer than `max_seq_len`."""
    limit = DEFAULT_MAX_BATCH if max_batch_size is None else max_batch_size
    if limit < 1:
        raise GenerationError(f"max_batch_size must be at least 1, got {max_batch_size}")
    scheduler = Scheduler(
        model,
        tokenizer,
        max_batch=max(1, min(limit, len(work))),
        max_seq_len=max_seq_len,
        eos_token_ids=eos_token_ids,
    )
    for item in work:
        scheduler.add(item)
    return scheduler


def _decoding(
    model: Transformer,
    tokenizer: Tokenizer,
    sequences: list[Sequence],
    max_batch_size: int | None,
    eos_token_ids: Iterable[int] | None,
) -> Scheduler:
    """A scheduler for generating these sequences: no slot longer than the longest needs."""
    longest = max(len(s.prompt_ids) + max(s.params.max_new_tokens, 1) for s in sequences)
    max_seq_len = min(model.cfg.n_ctx, longest)
    return _scheduler(model, tokenizer, sequences, max_seq_len, max_batch_size, eos_token_ids)


def _sequence(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: Prompt,
    params: SamplingParams,
    truncate: Truncate,
    request_id: int | None = None,
) -> Sequence:
    """A prompt's ids (checked, and truncated as asked, to leave room for the new tokens)."""
    ids = prepare_prompt(
        tokenizer,
        prompt,
        n_ctx=model.cfg.n_ctx,
        max_new_tokens=params.max_new_tokens,
        truncate=truncate,
        vocab_size=model.cfg.vocab_size,
    )
    return Sequence(ids, params, request_id=request_id)


def _run(scheduler: Scheduler) -> None:
    while scheduler.has_work():
        scheduler.step()


def generate_batch(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: SequenceABC[Prompt],
    params: Params = None,
    *,
    truncate: Truncate = None,
    max_batch_size: int | None = None,
    eos_token_ids: Iterable[int] | None = None,
    **overrides: Any,
) -> list[GenerationResult]:
    """Complete several prompts together; results come back in prompt order.

    params: one SamplingParams for all prompts or one per prompt; keyword overrides (e.g.
    max_new_tokens=20, temperature=0) apply on top. At most max_batch_size sequences (default
    32) decode together; waiting prompts join as earlier ones finish. Every sequence gets the
    tokens it would get alone.
    """
    plist = _params_list(len(prompts), params, overrides)
    if not prompts:
        return []
    sequences = [
        _sequence(model, tokenizer, p, sp, truncate, request_id=i)
        for i, (p, sp) in enumerate(zip(prompts, plist, strict=True))
    ]
    _run(_decoding(model, tokenizer, sequences, max_batch_size, eos_token_ids))
    return [s.result() for s in sequences]


def generate(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: Prompt,
    params: SamplingParams | None = None,
    *,
    truncate: Truncate = None,
    eos_token_ids: Iterable[int] | None = None,
    **overrides: Any,
) -> GenerationResult:
    """Complete one prompt (text, token ids, or chat messages through the chat template)."""
    return generate_batch(
        model,
        tokenizer,
        [prompt],
        params,
        truncate=truncate,
        eos_token_ids=eos_token_ids,
        **overrides,
    )[0]


class GenerationStream(Iterator[str]):
    """Text deltas of one completion as they become final; `result` is set once exhausted."""

    def __init__(self, scheduler: Scheduler, sequence: Sequence) -> None:
        self.sequence = sequence
        self.result: GenerationResult | None = None
        self._deltas = self._run(scheduler)

    def __next__(self) -> str:
        return next(self._deltas)

    def _run(self, scheduler: Scheduler) -> Iterator[str]:
        while scheduler.has_work():
            for _, event in scheduler.step():
                if event.text:
                    yield event.text
        self.result = self.sequence.result()


def stream(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: Prompt,
    params: SamplingParams | None = None,
    *,
    truncate: Truncate = None,
    eos_token_ids: Iterable[int] | None = None,
    **overrides: Any,
) -> GenerationStream:
    """Like `generate`, but an iterator of text deltas (prompt errors are raised right away)."""
    sp = _params_list(1, params, overrides)[0]
    sequence = _sequence(model, tokenizer, prompt, sp, truncate)
    return GenerationStream(_decoding(model, tokenizer, [sequence], 1, eos_token_ids), sequence)


def score_batch(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: SequenceABC[Prompt],
    *,
    top_logprobs: int = 0,
    max_batch_size: int | None = None,
) -> list[ScoredText]:
    """Per-token log-probabilities of several existing texts, prefilled together through the
    scheduler's scoring path (short texts in padded groups, long ones chunk by chunk)."""
    n_ctx = model.cfg.n_ctx
    params = SamplingParams(max_new_tokens=0, logprobs=top_logprobs)
    requests: list[Request] = []
    for prompt in prompts:
        ids = prompt_token_ids(tokenizer, prompt, vocab_size=model.cfg.vocab_size)
        if not ids:
            raise GenerationError("nothing to score: the text has no tokens")
        if len(ids) > n_ctx:
            raise PromptTooLongError(len(ids), n_ctx)
        requests.append(Request(Sequence(ids, params), prompt_logprobs=True))
    if not requests:
        return []
    longest = max(len(r.prompt) for r in requests)
    scheduler = _scheduler(model, tokenizer, requests, longest, max_batch_size, ())
    scores: dict[int, list[TokenLogprob | None]] = {}
    while scheduler.has_work():
        for request, event in scheduler.step():
            if event.prompt_logprobs is not None:
                scores[id(request)] = event.prompt_logprobs
    return [
        ScoredText(r.prompt, [token_text(tokenizer, i) for i in r.prompt], scores[id(r)])
        for r in requests
    ]


def score(
    model: Transformer, tokenizer: Tokenizer, prompt: Prompt, *, top_logprobs: int = 0
) -> ScoredText:
    """Log-probability of every token of an existing text given the tokens before it (what
    OpenAI's echo + logprobs + max_tokens=0 returns). The first token has none."""
    return score_batch(model, tokenizer, [prompt], top_logprobs=top_logprobs)[0]


class LLM:
    """A model and its tokenizer with the in-process API as methods.

    >>> llm = LLM(model, tokenizer)
    >>> [r.text for r in llm.generate(["Hello", "The sky is"], max_new_tokens=8)]
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        *,
        max_batch_size: int | None = None,
        eos_token_ids: Iterable[int] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.eos_token_ids = None if eos_token_ids is None else tuple(eos_token_ids)

    def generate(
        self, prompts: SequenceABC[Prompt], params: Params = None, **kwargs: Any
    ) -> list[GenerationResult]:
        """Complete a list of prompts (see `generate_batch`)."""
        kwargs.setdefault("max_batch_size", self.max_batch_size)
        kwargs.setdefault("eos_token_ids", self.eos_token_ids)
        return generate_batch(self.model, self.tokenizer, prompts, params, **kwargs)

    def stream(
        self, prompt: Prompt, params: SamplingParams | None = None, **kwargs: Any
    ) -> GenerationStream:
        """Text deltas of one completion (see `stream`)."""
        kwargs.setdefault("eos_token_ids", self.eos_token_ids)
        return stream(self.model, self.tokenizer, prompt, params, **kwargs)

    def score(self, prompts: SequenceABC[Prompt], *, top_logprobs: int = 0) -> list[ScoredText]:
        """Per-token log-probabilities of a list of texts (see `score_batch`)."""
        return score_batch(
            self.model,
            self.tokenizer,
            prompts,
            top_logprobs=top_logprobs,
            max_batch_size=self.max_batch_size,
        )

"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from lmscope.model.generate import TokenLogprob
from lmscope.model.sampling import GenerationError, SamplingParams
from lmscope.serve.engine import ContextLengthError, Event, QueueFullError
from lmscope.serve.errors import APIError, error_payload
from lmscope.serve.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    SamplingFields,
    TopLogprob,
    Usage,
    new_id,
)
from lmscope.serve.state import ServedModel, ServerState

router = APIRouter()


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.lm
    return state


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    state = server_state(request)
    cards = [ModelCard(id=spec.id, root=spec.source) for spec in state.settings.models]
    cards += [ModelCard(id=alias, root="route") for alias in state.router.routes]
    return ModelList(data=cards)


# ---- shared plumbing ----------------------------------------------------------------------------
def _params(
    body: SamplingFields, max_tokens: int, logprobs: int | None, seed_offset: int
) -> SamplingParams:
    seed = None if body.seed is None else (body.seed + seed_offset) % (2**63)
    try:
        return SamplingParams(
            max_new_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            repetition_penalty=body.repetition_penalty,
            stop=tuple(body.stop_list()),
            seed=seed,
            logprobs=logprobs,
            ignore_eos=body.ignore_eos,
        )
    except GenerationError as err:
        raise APIError(400, str(err), code="invalid_value") from None


def _encode_text(served: ServedModel, text: str) -> list[int]:
    return list(served.tokenizer.encode(text, add_special_tokens=True))


def _check_ids(served: ServedModel, ids: list[int]) -> list[int]:
    vocab = served.model.cfg.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise APIError(
            400, f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})", param="prompt"
        )
    return ids


async def _run(
    served: ServedModel,
    prompt: list[int],
    params: SamplingParams,
    timeout: float,
    prompt_logprobs: bool = False,
) -> AsyncIterator[Event]:
    """Engine events with the server's error mapping and an overall timeout."""
    try:
        stream = served.engine.generate(prompt, params, prompt_logprobs=prompt_logprobs)
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise APIError(408, f"request timed out after {timeout:g} s", code="timeout")
                try:
                    event = await asyncio.wait_for(anext(stream), remaining)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise APIError(
                        408, f"request timed out after {timeout:g} s", code="timeout"
                    ) from None
                yield event
        finally:
            await stream.aclose()
    except QueueFullError as err:
        raise APIError(
            429, f"server busy: {err}; retry later", headers={"Retry-After": "1"}
        ) from None
    except ContextLengthError as err:
        raise _context_length_error(err) from None


def _context_length_error(err: ContextLengthError) -> APIError:
    return APIError(400, str(err), param="max_tokens", code="context_length_exceeded")


def json_logprob(value: float) -> float:
    """JSON cannot carry -inf (a token the model rules out); OpenAI clients expect -9999."""
    return value if math.isfinite(value) else -9999.0


def _token_text(served: ServedModel, token_id: int) -> str:
    return str(served.tokenizer.decode([token_id]))


def _note(
    request: Request, served: ServedModel, prompt_tokens: int, completion_tokens: int
) -> None:
    request.state.log = {
        "model": served.id,
        "tokens_in": prompt_tokens,
        "tokens_out": completion_tokens,
    }


async def _watch_disconnect(request: Request, task: asyncio.Task[Any]) -> None:
    while not task.done():
        if await request.is_disconnected():
            task.cancel()
            return
        await asyncio.sleep(0.25)


async def _unless_disconnected(request: Request, work: Any) -> Any:
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_watch_disconnect(request, task))
    try:
        return await task
    except asyncio.CancelledError:
        raise APIError(499, "client closed the request") from None
    finally:
        watcher.cancel()


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _usage_chunk(
    rid: str, created: int, model: str, kind: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The last streamed chunk when `stream_options.include_usage` is set: no choices."""
    return {
        "id": rid,
        "object": kind,
        "created": created,
        "model": model,
        "choices": [],
        "usage": _usage(prompt_tokens, completion_tokens).model_dump(),
    }


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _sse_stream(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield _sse(chunk)
    except APIError as err:
        yield _sse(error_payload(err.status, err.message, err.param, err.code))
    yield "data: [DONE]\n\n"


async def _first_then_rest(stream: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Pull the first chunk before the response starts, so early errors become real HTTP errors."""
    first = await anext(stream)

    async def rest() -> AsyncIterator[dict[str, Any]]:
        yield first
        async for chunk in stream:
            yield chunk

    return rest()


# ---- /v1/completions ------------------------------------------------------------------------------
def _completion_prompts(served: ServedModel, prompt: Any) -> list[list[int]]:
    if isinstance(prompt, str):
        return [_encode_text(served, prompt)]
    if all(isinstance(p, int) for p in prompt):
        return [_check_ids(served, list(prompt))]
    if all(isinstance(p, str) for p in prompt):
        return [_encode_text(served, p) for p in prompt]
    return [_check_ids(served, list(p)) for p in prompt]


def _completion_logprobs(
    served: ServedModel,
    scored: list[TokenLogprob | None],
    prompt_ids: list[int] | None,
) -> CompletionLogprobs:
    out = CompletionLogprobs(top_logprobs=[])
    offset = 0
    items: list[tuple[int, TokenLogprob | None]] = []
    if prompt_ids is not None:
        items = list(zip(prompt_ids, scored[: len(prompt_ids)], strict=True))
        scored = scored[len(prompt_ids) :]
    items += [(score.token_id, score) for score in scored if score is not None]
    assert out.top_logprobs is not None
    for token_id, score in items:
        text = _token_text(served, token_id)
        out.tokens.append(text)
        out.text_offset.append(offset)
        offset += len(text)
        out.token_logprobs.append(None if score is None else json_logprob(score.logprob))
        if score is None:
            out.top_logprobs.append(None)
        else:
            out.top_logprobs.append({alt.token: json_logprob(alt.logprob) for alt in score.top})
    return out


@router.post("/v1/completions", response_model=CompletionResponse)
async def completions(body: CompletionRequest, request: Request) -> Any:
    state = server_state(request)
    served = state.resolve(body.model)
    prompts = _completion_prompts(served, body.prompt)
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    want_prompt_scores = body.echo and body.logprobs is not None
    if body.stream and want_prompt_scores:
        raise APIError(400, "echo with logprobs is not supported while streaming", param="stream")
    jobs = [(i * body.n + j, p) for i, p in enumerate(prompts) for j in range(body.n)]
    response_id = new_id("cmpl")
    created = int(time.time())
    timeout = state.settings.request_timeout

    async def one(choice: int, prompt: list[int]) -> tuple[CompletionChoice, int, int]:
        params = _params(body, max_tokens, body.logprobs, choice)
        text: list[str] = []
        reason: str | None = None
        scored: list[TokenLogprob] = []
        prompt_scores: list[TokenLogprob | None] | None = None
        completion_tokens = 0
        async for event in _run(served, prompt, params, timeout, want_prompt_scores):
            if event.prompt_logprobs is not None:
                prompt_scores = event.prompt_logprobs
            text.append(event.text)
            if event.logprob is not None:
                scored.append(event.logprob)
            completion_tokens = max(completion_tokens, event.completion_tokens)
            reason = event.finish_reason or reason
        prompt_text = served.tokenizer.decode(prompt) if body.echo else ""
        logprobs = None
        if body.logprobs is not None:
            all_scores: list[TokenLogprob | None] = list(scored)
            if body.echo:
                all_scores = list(prompt_scores or [None] * len(prompt)) + all_scores
            logprobs = _completion_logprobs(served, all_scores, prompt if body.echo else None)
        choice_obj = CompletionChoice(
            index=choice, text=prompt_text + "".join(text), logprobs=logprobs, finish_reason=reason
        )
        return choice_obj, len(prompt), completion_tokens

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            totals = [0, 0]
            queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()

            async def pump(choice: int, prompt: list[int]) -> None:
                try:
                    params = _params(body, max_tokens, body.logprobs, choice)
                    if body.echo:
                        await queue.put(
                            _completion_chunk(
                                response_id,
                                created,
                                served.id,
                                choice,
                                served.tokenizer.decode(prompt),
                                None,
                            )
                        )
                    totals[0] += len(prompt)  # counted as they come: a log line after a
                    completion_tokens = 0  # disconnect still says what was generated
                    async for event in _run(served, prompt, params, timeout):
                        if event.completion_tokens > completion_tokens:
                            totals[1] += event.completion_tokens - completion_tokens
                            completion_tokens = event.completion_tokens
                        if event.text or event.finish_reason:
                            await queue.put(
                                _completion_chunk(
                                    response_id,
                                    created,
                                    served.id,
                                    choice,
                                    event.text,
                                    event.finish_reason,
                                )
                            )
                    await queue.put(None)
                except BaseException as err:  # forwarded to the consumer
                    await queue.put(err)

            tasks = [asyncio.ensure_future(pump(c, p)) for c, p in jobs]
            try:
                remaining = len(tasks)
                while remaining:
                    item = await queue.get()
                    if item is None:
                        remaining -= 1
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        yield item
            finally:
                for task in tasks:
                    task.cancel()
                _note(request, served, totals[0], totals[1])
            if include_usage:
                yield _usage_chunk(
                    response_id, created, served.id, "text_completion", totals[0], totals[1]
                )

        return _streaming(await _first_then_rest(chunks()), served)

    results = await _unless_disconnected(request, asyncio.gather(*(one(c, p) for c, p in jobs)))
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(r[2] for r in results)
    _note(request, served, prompt_tokens, completion_tokens)
    return CompletionResponse(
        id=response_id,
        created=created,
        model=served.id,
        choices=[r[0] for r in results],
        usage=_usage(prompt_tokens, completion_tokens),
    )


def _completion_chunk(
    rid: str, created: int, model: str, index: int, text: str, finish: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def _streaming(chunks: AsyncIterator[dict[str, Any]], served: ServedModel) -> StreamingResponse:
    return StreamingResponse(
        _sse_stream(chunks),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "x-lmscope-model": served.id},
    )


# ---- /v1/chat/completions ---------------------------------------------------------------------------
def _chat_prompt(served: ServedModel, body: ChatCompletionRequest) -> list[int]:
    if not getattr(served.tokenizer, "chat_template", None):
        raise APIError(
            400, f"model {served.id} has no chat template; use /v1/completions", param="messages"
        )
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        text = served.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
    except Exception as err:
        raise APIError(400, f"cannot apply the chat template: {err}", param="messages") from None
    return list(served.tokenizer.encode(text, add_special_tokens=False))


def _chat_logprobs(served: ServedModel, scored: list[TokenLogprob]) -> ChatLogprobs:
    content = []
    for score in scored:
        content.append(
            ChatTokenLogprob(
                token=score.token,
                logprob=json_logprob(score.logprob),
                bytes=list(score.token.encode()),
                top_logprobs=[
                    TopLogprob(
                        token=alt.token,
                        logprob=json_logprob(alt.logprob),
                        bytes=list(alt.token.encode()),
                    )
                    for alt in score.top
                ],
            )
        )
    return ChatLogprobs(content=content)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    state = server_state(request)
    served = state.resolve(body.model)
    prompt = _chat_prompt(served, body)
    limit = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    max_tokens = (
        limit
        if limit is not None
        else max(1, min(512, state.settings.max_seq_len - len(prompt) - 1))
    )
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    response_id = new_id("chatcmpl")
    created = int(time.time())
    timeout = state.settings.request_timeout

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            completion_tokens = 0
            for choice in range(body.n):
                yield _chat_chunk(
                    response_id,
                    created,
                    served.id,
                    choice,
                    {"role": "assistant", "content": ""},
                    None,
                )
            try:
                for choice in range(body.n):
                    params = _params(body, max_tokens, logprobs, choice)
                    this_choice = 0  # counted as they come, for the log line after a disconnect
                    async for event in _run(served, prompt, params, timeout):
                        if event.completion_tokens > this_choice:
                            completion_tokens += event.completion_tokens - this_choice
                            this_choice = event.completion_tokens
                        if event.text or event.finish_reason:
                            delta = {"content": event.text} if event.text else {}
                            chunk = _chat_chunk(
                                response_id, created, served.id, choice, delta, event.finish_reason
                            )
                            if event.logprob is not None and logprobs is not None:
                                chunk["choices"][0]["logprobs"] = _chat_logprobs(
                                    served, [event.logprob]
                                ).model_dump()
                            yield chunk
            finally:
                _note(request, served, len(prompt), completion_tokens)
            if include_usage:
                yield _usage_chunk(
                    response_id,
                    created,
                    served.id,
                    "chat.completion.chunk",
                    len(prompt),
                    completion_tokens,
                )

        try:
            served.engine.check_fits(len(prompt), max_tokens)
        except ContextLengthError as err:
            raise _context_length_error(err) from None
        return _streaming(chunks(), served)

    async def one(choice: int) -> tuple[ChatChoice, int]:
        params = _params(body, max_tokens, logprobs, choice)
        text, reason, scored, completion_tokens = [], None, [], 0
        async for event in _run(served, prompt, params, timeout):
            text.append(event.text)
            if event.logprob is not None:
                scored.append(event.logprob)
            completion_tokens = max(completion_tokens, event.completion_tokens)
            reason = event.finish_reason or reason
        return (
            ChatChoice(
                index=choice,
                message=AssistantMessage(content="".join(text)),
                logprobs=_chat_logprobs(served, scored) if logprobs is not None else None,
                finish_reason=reason,
            ),
            completion_tokens,
        )

    results = await _unless_disconnected(request, asyncio.gather(*(one(c) for c in range(body.n))))
    completion_tokens = sum(r[1] for r in results)
    _note(request, served, len(prompt), completion_tokens)
    return ChatCompletionResponse(
        id=response_id,
        created=created,
        model=served.id,
        choices=[r[0] for r in results],
        usage=_usage(len(prompt), completion_tokens),
    )


def _chat_chunk(
    rid: str, created: int, model: str, index: int, delta: dict[str, Any], finish: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }

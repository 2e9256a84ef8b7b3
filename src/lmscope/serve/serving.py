"""What the completion and chat serving classes share: running engine requests (several choices
together, with the server's error mapping), the request log note, disconnect handling, and
server-sent events of typed chunks."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from lmscope.engine.errors import ContextLengthError, GenerationError, QueueFullError
from lmscope.engine.sampling import SamplingParams
from lmscope.serve.errors import APIError, error_payload
from lmscope.serve.protocol import FieldError, SamplingRequest
from lmscope.serve.state import ServedModel, ServerState

T = TypeVar("T")
log = logging.getLogger("lmscope.serve")


@dataclass
class Job:
    """One engine request: a prompt and how to sample one choice from it."""

    choice: int
    prompt: list[int]
    params: SamplingParams
    prompt_logprobs: bool = False


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.lm
    return state


def busy(served: ServedModel, detail: str) -> APIError:
    return APIError(429, f"server busy: {detail}; retry later", headers={"Retry-After": "1"})


def check_capacity(served: ServedModel, jobs: int, param: str = "n") -> None:
    """Refuse before any work (tokenizing included) when the jobs cannot all be queued;
    `param` names the field that multiplied them."""
    engine = served.engine
    if jobs > engine.max_queue + engine.max_batch:
        raise APIError(
            400,
            f"this request asks for {jobs} completions (prompts x n); this server takes at most "
            f"{engine.max_queue + engine.max_batch} per request",
            param=param,
            code="too_many_completions",  # a cap of this server's settings, not of the schema
        )
    if engine.waiting + jobs > engine.max_queue:
        raise busy(served, f"{served.id}: {engine.waiting} requests already waiting")


def invalid_token_id(message: str, param: str) -> APIError:
    """A token id outside the model's vocabulary (a limit the OpenAPI document cannot state:
    it depends on the model)."""
    return APIError(400, message, param=param, code="invalid_token_id")


def check_logit_bias(served: ServedModel, body: SamplingRequest) -> None:
    vocab = served.model.cfg.vocab_size
    bad = sorted(int(k) for k in body.logit_bias or {} if int(k) >= vocab)
    if bad:
        raise invalid_token_id(
            f"logit_bias names token ids {bad[:5]} outside the vocabulary [0, {vocab})",
            "logit_bias",
        )


def sampling_params(
    body: SamplingRequest,
    max_tokens: int,
    logprobs: int | None,
    choice: int,
    processors: tuple[Any, ...] = (),
) -> SamplingParams:
    try:
        return body.to_sampling_params(
            max_tokens, logprobs=logprobs, choice=choice, processors=processors
        )
    except FieldError as err:
        raise APIError.invalid(err) from None
    except GenerationError as err:
        raise APIError(400, str(err), code="invalid_value") from None


def check_fits(served: ServedModel, prompts: list[list[int]], max_tokens: int, what: str) -> None:
    """400 context_length_exceeded, naming the prompt when it alone is too long, else max_tokens."""
    limit = served.engine.max_seq_len
    for ids in prompts:
        if len(ids) + max_tokens <= limit:
            continue
        param = what if len(ids) >= limit else "max_tokens"
        raise APIError(
            400,
            f"this model's maximum context length is {limit} tokens, but the prompt has "
            f"{len(ids)} tokens and max_tokens asks for {max_tokens} more; shorten the prompt "
            "or lower max_tokens",
            param=param,
            code="context_length_exceeded",
        )


def engine_failure() -> APIError:
    return APIError(
        500,
        "the model failed while generating; the server log has the details",
        code="internal_error",
    )


async def _one(
    served: ServedModel, job: Job, deadline: float, timeout: float
) -> AsyncIterator[Any]:
    """The events of one engine request with the server's error mapping and a deadline."""
    try:
        stream = served.engine.generate(job.prompt, job.params, prompt_logprobs=job.prompt_logprobs)
    except QueueFullError as err:
        raise busy(served, str(err)) from None
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
            except QueueFullError as err:
                raise busy(served, str(err)) from None
            except ContextLengthError as err:
                raise APIError(
                    400, str(err), param="max_tokens", code="context_length_exceeded"
                ) from None
            if event.error is not None or event.finish_reason == "error":
                log.error(
                    json.dumps({"event": "engine_error", "model": served.id}), exc_info=event.error
                )
                raise engine_failure()
            yield event
    finally:
        await stream.aclose()


async def run_jobs(
    served: ServedModel, jobs: list[Job], timeout: float
) -> AsyncIterator[tuple[int, Any]]:
    """(choice, event) pairs of several engine requests, interleaved as they come. The first
    error (a full queue, a timeout, an engine failure) cancels every sibling, queued ones
    included, and is raised; closing this iterator cancels them too."""
    deadline = time.monotonic() + timeout
    queue: asyncio.Queue[tuple[int, Any] | BaseException] = asyncio.Queue()
    done = object()

    async def pump(job: Job) -> None:
        try:
            async for event in _one(served, job, deadline, timeout):
                queue.put_nowait((job.choice, event))
            queue.put_nowait((job.choice, done))
        except BaseException as err:  # forwarded to the consumer
            queue.put_nowait(err)
            if isinstance(err, asyncio.CancelledError):
                raise

    tasks = [asyncio.ensure_future(pump(job)) for job in jobs]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item[1] is done:
                remaining -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def first_then_rest(stream: AsyncIterator[T]) -> AsyncIterator[T]:
    """Pull the first item before a response starts, so early errors (a full queue) become
    real HTTP errors instead of an error event after a 200."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = None

    async def rest() -> AsyncIterator[T]:
        if first is not None:
            yield first
        async for item in stream:
            yield item

    return rest()


def note(request: Request, served: ServedModel, prompt_tokens: int, completion_tokens: int) -> None:
    """The model and token counts for the request's log line."""
    request.state.log = {
        "model": served.id,
        "tokens_in": prompt_tokens,
        "tokens_out": completion_tokens,
    }


def experiment_user(request: Request, body: Any) -> str | None:
    """Who is asking, for sticky A/B assignment: the OpenAI `user` field, else a header."""
    from lmscope.serve.experiments import USER_HEADER

    return getattr(body, "user", None) or request.headers.get(USER_HEADER) or None


async def start_experiment(
    request: Request, state: ServerState, served: ServedModel, alias: str | None,
    user: str | None, response_id: str,
) -> None:  # fmt: skip
    """Record the answer's id, version and alias before generating (so feedback can name it at
    once); the access log fills in latency, tokens and errors when the response ends."""
    experiments = state.experiments
    if experiments is None:
        return
    from lmscope.serve.experiments import user_hash
    from lmscope.serve.feedback import ResponseRecord

    await experiments.record(ResponseRecord(response_id, alias, served.id, user_hash(user)))
    request.state.experiment = {"response_id": response_id, "alias": alias, "model": served.id}


async def shadow_answer(
    state: ServerState, model_id: str, prompts: list[list[int]], jobs: list[Job]
) -> tuple[str, int, int]:
    """The shadow version's answer to the same prompts (same sampling, no constraints):
    (text of the first choice, prompt tokens, completion tokens)."""
    served = state.models[model_id]
    shadow_jobs = [
        Job(
            job.choice, prompts[min(i, len(prompts) - 1)], replace(job.params, logits_processors=())
        )
        for i, job in enumerate(jobs)
    ]
    texts: dict[int, list[str]] = {}
    counts: dict[int, int] = {}
    async for choice, event in run_jobs(served, shadow_jobs, state.settings.request_timeout):
        texts.setdefault(choice, []).append(event.text)
        counts[choice] = max(counts.get(choice, 0), event.completion_tokens)
    prompt_tokens = sum(len(p) for p in prompts)
    return "".join(texts.get(0, [])), prompt_tokens, sum(counts.values())


async def _watch_disconnect(request: Request, task: asyncio.Future[Any]) -> None:
    while not task.done():
        if await request.is_disconnected():
            task.cancel()
            return
        await asyncio.sleep(0.25)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (and answering 499) if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_watch_disconnect(request, task))
    try:
        return await task
    except asyncio.CancelledError:
        raise APIError(499, "client closed the request") from None
    finally:
        watcher.cancel()


def json_logprob(value: float) -> float:
    """JSON cannot carry -inf (a token the model rules out); OpenAI clients expect -9999."""
    return value if math.isfinite(value) else -9999.0


def token_text(served: ServedModel, token_id: int) -> str:
    return str(served.tokenizer.decode([token_id]))


async def _sse(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {chunk.model_dump_json(exclude_unset=False)}\n\n"
    except APIError as err:
        payload = error_payload(err.status, err.message, err.param, err.code)
        yield f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
    yield "data: [DONE]\n\n"


def streaming_response(chunks: AsyncIterator[BaseModel], served: ServedModel) -> StreamingResponse:
    return StreamingResponse(
        _sse(chunks),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "x-lmscope-model": served.id},
    )

"""/v1/chat/completions: messages in, assistant messages out (whole or streamed).

Structured output (`response_format`) and tools are planned by `serve.structured`; a request
that uses them on a server without that module is refused with a 400 naming the field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi.responses import StreamingResponse

from lmscope.engine.prompts import encode_text
from lmscope.serve.errors import APIError
from lmscope.serve.prompts import chat_prompt, encode_locked
from lmscope.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatStreamChoice,
    ChatTokenLogprob,
    DeltaMessage,
    TopLogprob,
    Usage,
)
from lmscope.serve.serving import (
    Job,
    check_capacity,
    check_fits,
    check_logit_bias,
    experiment_user,
    first_then_rest,
    json_logprob,
    note,
    run_jobs,
    sampling_params,
    start_experiment,
    streaming_response,
    unless_disconnected,
)
from lmscope.serve.serving_base import OpenAIServing
from lmscope.serve.state import ServedModel

try:
    from lmscope.serve.structured import StructuredPlan, apply_structured
except ImportError:  # pragma: no cover - structured output is an optional module
    apply_structured = None  # type: ignore[assignment]
    StructuredPlan = None  # type: ignore[assignment,misc]

DEFAULT_CHAT_TOKENS = 512


def chat_logprobs(scored: list[Any]) -> ChatLogprobs:
    def top(alt: Any) -> TopLogprob:
        return TopLogprob(
            token=alt.token, logprob=json_logprob(alt.logprob), bytes=list(alt.token.encode())
        )

    return ChatLogprobs(
        content=[
            ChatTokenLogprob(**top(score).model_dump(), top_logprobs=[top(a) for a in score.top])
            for score in scored
        ]
    )


async def _plan(served: ServedModel, body: ChatCompletionRequest) -> Any:
    """The structured-output plan of a request, or None when it asks for nothing special."""
    fields = body.structured_fields()
    if not fields:
        return None
    if apply_structured is None:
        raise APIError(
            400,
            f"{fields[0]} is not supported by this server",
            param=fields[0],
            code="unsupported_parameter",
        )
    dumped = body.model_dump(
        include=set(fields) | {"parallel_tool_calls"}, exclude_none=True, by_alias=True
    )

    def plan() -> Any:
        return apply_structured(
            dumped, served.tokenizer, eos_token_ids=served.engine.eos_ids, model_id=served.id
        )

    result = await anyio.to_thread.run_sync(encode_locked, served.tokenizer_lock, plan)
    return result if result.active else None


def _renderer(plan: Any) -> Any:
    """Renders the chat template with the plan's extra arguments (e.g. the tools)."""
    if plan is None or not plan.template_kwargs:
        return None
    kwargs = dict(plan.template_kwargs)

    def render(tokenizer: Any, chat: list[dict[str, Any]]) -> list[int]:
        text = tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True, **kwargs
        )
        return encode_text(tokenizer, str(text), add_special_tokens=False)

    return render


def check_grammar_ended(jobs: list[Job]) -> None:
    """A 400 when a response_format grammar had no way to continue (its schema admits no finite
    JSON value): the text it ended is not valid, so it is not returned as an answer."""
    for job in jobs:
        if any(getattr(p, "dead_end", False) for p in job.params.logits_processors):
            raise APIError(
                400,
                "the response_format schema admits no finite JSON value (for example a required "
                "property that is the schema itself); make that property optional",
                param="response_format",
                code="invalid_value",
            )


class OpenAIServingChat(OpenAIServing[ChatCompletionRequest]):
    """Serves one chat completion request; `create` answers it."""

    id_prefix = "chatcmpl"

    async def create(self) -> ChatCompletionResponse | StreamingResponse:
        body = self.body
        user = experiment_user(self.request, body)
        served, alias = self.state.assign(body.model, user)
        check_capacity(served, body.n)  # before any tokenizing
        check_logit_bias(served, body)
        plan = await _plan(served, body)
        prompt = await chat_prompt(served, body.messages, _renderer(plan))
        limit = body.token_limit()
        room = served.engine.max_seq_len - len(prompt) - 1
        max_tokens = limit if limit is not None else max(1, min(DEFAULT_CHAT_TOKENS, room))
        check_fits(served, [prompt], max_tokens, "messages")
        jobs = [
            Job(
                c,
                prompt,
                sampling_params(
                    body,
                    max_tokens,
                    body.logprobs_k(),
                    c,
                    plan.processors() if plan is not None else (),
                ),
            )
            for c in range(body.n)
        ]
        await start_experiment(self.request, self.state, served, alias, user, self.id)

        async def shadow_prompts(shadow: ServedModel) -> list[list[int]]:
            return [await chat_prompt(shadow, body.messages, _renderer(plan))]

        self.shadow(alias, shadow_prompts, jobs[:1])
        if body.stream:
            chunks = await first_then_rest(self._stream(served, jobs, plan))
            return streaming_response(chunks, served)
        return await unless_disconnected(self.request, self._whole(served, jobs, plan))

    def _chunk(
        self,
        served: ServedModel,
        choice: int,
        delta: DeltaMessage,
        finish: Any = None,
        logprobs: ChatLogprobs | None = None,
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            **self.head(served),
            choices=[
                ChatStreamChoice(index=choice, delta=delta, logprobs=logprobs, finish_reason=finish)
            ],
        )

    async def _stream(
        self, served: ServedModel, jobs: list[Job], plan: Any
    ) -> AsyncIterator[ChatCompletionChunk]:
        """Every choice runs at once; a tool-calling plan holds each choice's text back until
        it ends, since only the whole text tells a tool call from a reply."""
        body = self.body
        prompt_tokens = len(jobs[0].prompt)
        counts = [0] * len(jobs)
        held: list[list[str]] = [[] for _ in jobs]
        hold = plan is not None and plan.tool_mode != "none"
        started = False
        try:
            events = run_jobs(served, jobs, self.state.settings.request_timeout)
            async for choice, event in events:
                if not started:  # the engine took every choice: now the stream begins
                    started = True
                    for job in jobs:
                        yield self._chunk(
                            served, job.choice, DeltaMessage(role="assistant", content="")
                        )
                counts[choice] = max(counts[choice], event.completion_tokens)
                if hold:
                    held[choice].append(event.text)
                    if event.finish_reason:
                        fields, reason = plan.delta("".join(held[choice]), event.finish_reason)
                        yield self._chunk(served, choice, DeltaMessage(**fields), reason)
                    continue
                if event.text or event.finish_reason:
                    logprobs = None
                    if event.logprob is not None and body.logprobs:
                        logprobs = chat_logprobs([event.logprob])
                    delta = DeltaMessage(content=event.text) if event.text else DeltaMessage()
                    yield self._chunk(served, choice, delta, event.finish_reason, logprobs)
        finally:
            note(self.request, served, prompt_tokens, sum(counts))
        check_grammar_ended(jobs)  # raised into the stream as an error event
        if body.include_usage():
            yield ChatCompletionChunk(
                **self.head(served), choices=[], usage=Usage.of(prompt_tokens, sum(counts))
            )

    async def _whole(
        self, served: ServedModel, jobs: list[Job], plan: Any
    ) -> ChatCompletionResponse:
        body = self.body
        prompt_tokens = len(jobs[0].prompt)
        got = await self.gather(served, jobs, prompt_tokens)
        check_grammar_ended(jobs)
        choices = []
        for c in range(len(jobs)):
            text, reason = got.text(c), got.reasons[c]
            fields: dict[str, Any] = {"content": text}
            if plan is not None:
                fields, reason = plan.message(text, reason)
            choices.append(
                ChatChoice(
                    index=c,
                    message=AssistantMessage(**fields),
                    logprobs=chat_logprobs(got.scores[c]) if body.logprobs else None,
                    finish_reason=reason,
                )
            )
        return ChatCompletionResponse(
            **self.head(served), choices=choices, usage=Usage.of(prompt_tokens, sum(got.counts))
        )

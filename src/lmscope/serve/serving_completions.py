"""/v1/completions: prompts in, choices out (whole or streamed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from lmscope.serve.prompts import completion_prompts
from lmscope.serve.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Usage,
    new_id,
)
from lmscope.serve.protocol.common import now
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
    server_state,
    shadow_answer,
    start_experiment,
    streaming_response,
    token_text,
    unless_disconnected,
)
from lmscope.serve.state import ServedModel


def _prompt_count(body: CompletionRequest) -> int:
    prompt = body.prompt
    if isinstance(prompt, str) or all(isinstance(p, int) for p in prompt):
        return 1
    return len(prompt)


def _logprobs(
    served: ServedModel, scored: list[Any], prompt_ids: list[int] | None
) -> CompletionLogprobs:
    """OpenAI's legacy logprobs object; with echo, the prompt's tokens come first."""
    out = CompletionLogprobs()
    items: list[tuple[int, Any]] = []
    if prompt_ids is not None:
        items = list(zip(prompt_ids, scored[: len(prompt_ids)], strict=True))
        scored = scored[len(prompt_ids) :]
    items += [(score.token_id, score) for score in scored if score is not None]
    offset = 0
    for token_id, score in items:
        text = token_text(served, token_id)
        out.tokens.append(text)
        out.text_offset.append(offset)
        offset += len(text)
        out.token_logprobs.append(None if score is None else json_logprob(score.logprob))
        out.top_logprobs.append(
            None if score is None else {alt.token: json_logprob(alt.logprob) for alt in score.top}
        )
    return out


class OpenAIServingCompletion:
    """Serves one completion request; `create` answers it."""

    def __init__(self, body: CompletionRequest, request: Request) -> None:
        self.body = body
        self.request = request
        self.state = server_state(request)
        self.id = new_id("cmpl")
        self.created = now()

    async def create(self) -> CompletionResponse | StreamingResponse:
        body = self.body
        user = experiment_user(self.request, body)
        served, alias = self.state.assign(body.model, user)
        max_tokens = body.max_new_tokens()
        count = _prompt_count(body)
        check_capacity(served, count * body.n, "n" if body.n > 1 else "prompt")  # before tokenizing
        check_logit_bias(served, body)
        prompts = await completion_prompts(served, body.prompt)
        check_fits(served, prompts, max_tokens, "prompt")
        scored_prompt = body.echo and body.logprobs is not None
        jobs = [
            Job(
                i * body.n + j,
                prompt,
                sampling_params(body, max_tokens, body.logprobs, i * body.n + j),
                scored_prompt,
            )
            for i, prompt in enumerate(prompts)
            for j in range(body.n)
        ]
        await start_experiment(self.request, self.state, served, alias, user, self.id)
        self._shadow(alias, jobs)
        if body.stream:
            chunks = await first_then_rest(self._stream(served, jobs))
            return streaming_response(chunks, served)
        return await unless_disconnected(self.request, self._whole(served, jobs))

    def _shadow(self, alias: str | None, jobs: list[Job]) -> None:
        """The alias's shadow version answers the same prompts in the background."""
        experiments = self.state.experiments
        if experiments is None:
            return

        async def run(model_id: str) -> tuple[str, int, int]:
            shadow = self.state.models[model_id]
            prompts = await completion_prompts(shadow, self.body.prompt)
            return await shadow_answer(self.state, model_id, prompts, jobs[:: self.body.n])

        experiments.shadow(alias, self.id, run)

    def _chunk(self, served: ServedModel, choice: int, text: str, finish: Any) -> CompletionChunk:
        return CompletionChunk(
            id=self.id,
            created=self.created,
            model=served.id,
            choices=[CompletionChoice(index=choice, text=text, finish_reason=finish)],
        )

    async def _stream(self, served: ServedModel, jobs: list[Job]) -> AsyncIterator[CompletionChunk]:
        """Chunks of every choice as they come. Tokens are counted as they come, so the log
        line of a hang-up says what was sent; echoed prompts follow the engine's first event,
        so a full queue is still an HTTP 429 rather than an error event after the echo."""
        body = self.body
        prompt_tokens = sum(len(job.prompt) for job in jobs[:: body.n])
        completion_tokens = [0] * len(jobs)
        echo = body.echo
        try:
            async for choice, event in run_jobs(served, jobs, self.state.settings.request_timeout):
                if echo:
                    echo = False
                    for job in jobs:
                        text = served.tokenizer.decode(job.prompt)
                        yield self._chunk(served, job.choice, text, None)
                completion_tokens[choice] = max(completion_tokens[choice], event.completion_tokens)
                if event.text or event.finish_reason:
                    yield self._chunk(served, choice, event.text, event.finish_reason)
        finally:
            note(self.request, served, prompt_tokens, sum(completion_tokens))
        if body.include_usage():
            yield CompletionChunk(
                id=self.id,
                created=self.created,
                model=served.id,
                choices=[],
                usage=Usage.of(prompt_tokens, sum(completion_tokens)),
            )

    async def _whole(self, served: ServedModel, jobs: list[Job]) -> CompletionResponse:
        body = self.body
        texts: list[list[str]] = [[] for _ in jobs]
        scores: list[list[Any]] = [[] for _ in jobs]
        prompt_scores: list[list[Any] | None] = [None] * len(jobs)
        reasons: list[Any] = [None] * len(jobs)
        counts = [0] * len(jobs)
        prompt_tokens = sum(len(job.prompt) for job in jobs[:: body.n])
        note(self.request, served, prompt_tokens, 0)  # kept current: a hang-up is logged too
        async for choice, event in run_jobs(served, jobs, self.state.settings.request_timeout):
            if event.prompt_logprobs is not None:
                prompt_scores[choice] = event.prompt_logprobs
            texts[choice].append(event.text)
            if event.logprob is not None:
                scores[choice].append(event.logprob)
            counts[choice] = max(counts[choice], event.completion_tokens)
            note(self.request, served, prompt_tokens, sum(counts))
            reasons[choice] = event.finish_reason or reasons[choice]
        choices = []
        for job in jobs:
            c = job.choice
            prompt_text = served.tokenizer.decode(job.prompt) if body.echo else ""
            logprobs = None
            if body.logprobs is not None:
                all_scores = list(scores[c])
                if body.echo:
                    all_scores = list(prompt_scores[c] or [None] * len(job.prompt)) + all_scores
                logprobs = _logprobs(served, all_scores, job.prompt if body.echo else None)
            choices.append(
                CompletionChoice(
                    index=c,
                    text=prompt_text + "".join(texts[c]),
                    logprobs=logprobs,
                    finish_reason=reasons[c],
                )
            )
        return CompletionResponse(
            id=self.id,
            created=self.created,
            model=served.id,
            choices=choices,
            usage=Usage.of(prompt_tokens, sum(counts)),
        )

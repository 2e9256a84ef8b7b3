"""/v1/completions: prompts in, choices out (whole or streamed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from lmscope.serve.prompts import completion_prompts
from lmscope.serve.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
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
    token_text,
    unless_disconnected,
)
from lmscope.serve.serving_base import OpenAIServing
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


class OpenAIServingCompletion(OpenAIServing[CompletionRequest]):
    """Serves one completion request; `create` answers it."""

    id_prefix = "cmpl"

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

        async def shadow_prompts(shadow: ServedModel) -> list[list[int]]:
            return await completion_prompts(shadow, body.prompt)

        self.shadow(alias, shadow_prompts, jobs[:: body.n])
        if body.stream:
            chunks = await first_then_rest(self._stream(served, jobs))
            return streaming_response(chunks, served)
        return await unless_disconnected(self.request, self._whole(served, jobs))

    def _chunk(self, served: ServedModel, choice: int, text: str, finish: Any) -> CompletionChunk:
        return CompletionChunk(
            **self.head(served),
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
                **self.head(served),
                choices=[],
                usage=Usage.of(prompt_tokens, sum(completion_tokens)),
            )

    async def _whole(self, served: ServedModel, jobs: list[Job]) -> CompletionResponse:
        body = self.body
        prompt_tokens = sum(len(job.prompt) for job in jobs[:: body.n])
        got = await self.gather(served, jobs, prompt_tokens)
        choices = []
        for job in jobs:
            c = job.choice
            prompt_text = served.tokenizer.decode(job.prompt) if body.echo else ""
            logprobs = None
            if body.logprobs is not None:
                all_scores = list(got.scores[c])
                if body.echo:
                    all_scores = list(got.prompt_scores[c] or [None] * len(job.prompt)) + all_scores
                logprobs = _logprobs(served, all_scores, job.prompt if body.echo else None)
            choices.append(
                CompletionChoice(
                    index=c,
                    text=prompt_text + got.text(c),
                    logprobs=logprobs,
                    finish_reason=got.reasons[c],
                )
            )
        return CompletionResponse(
            **self.head(served), choices=choices, usage=Usage.of(prompt_tokens, sum(got.counts))
        )

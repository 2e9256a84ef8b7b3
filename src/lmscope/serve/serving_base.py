"""The base of the completion and chat serving classes: one request's id and time, the shadow
answer, the fields every response and chunk repeats, and gathering a whole (non-streamed) answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from fastapi import Request

from lmscope.serve.protocol import SamplingRequest, new_id
from lmscope.serve.protocol.common import now
from lmscope.serve.serving import Job, note, run_jobs, server_state, shadow_answer
from lmscope.serve.state import ServedModel

Body = TypeVar("Body", bound=SamplingRequest)


@dataclass
class Gathered:
    """Every choice's events of a whole answer, by choice index."""

    texts: list[list[str]]
    scores: list[list[Any]]
    prompt_scores: list[list[Any] | None]
    reasons: list[Any]
    counts: list[int]

    def text(self, choice: int) -> str:
        return "".join(self.texts[choice])


class OpenAIServing(Generic[Body]):
    """Serves one request; subclasses set `id_prefix` and answer it in `create`."""

    id_prefix: ClassVar[str]

    def __init__(self, body: Body, request: Request) -> None:
        self.body = body
        self.request = request
        self.state = server_state(request)
        self.id = new_id(self.id_prefix)
        self.created = now()

    def head(self, served: ServedModel) -> dict[str, Any]:
        """The fields every response and stream chunk of this request repeats."""
        return {"id": self.id, "created": self.created, "model": served.id}

    def shadow(
        self,
        alias: str | None,
        prompts: Callable[[ServedModel], Awaitable[list[list[int]]]],
        jobs: list[Job],
    ) -> None:
        """The alias's shadow version answers the same prompts (its own tokenizing: `prompts`)
        in the background; `jobs` are one per prompt."""
        experiments = self.state.experiments
        if experiments is None:
            return

        async def run(model_id: str) -> tuple[str, int, int]:
            shadow = self.state.models[model_id]
            return await shadow_answer(self.state, model_id, await prompts(shadow), jobs)

        experiments.shadow(alias, self.id, run)

    async def gather(self, served: ServedModel, jobs: list[Job], prompt_tokens: int) -> Gathered:
        """Runs every choice to its end; the request's log note is kept current throughout, so
        a hang-up is logged with what was generated."""
        n = len(jobs)
        out = Gathered([[] for _ in jobs], [[] for _ in jobs], [None] * n, [None] * n, [0] * n)
        note(self.request, served, prompt_tokens, 0)
        async for c, event in run_jobs(served, jobs, self.state.settings.request_timeout):
            if event.prompt_logprobs is not None:
                out.prompt_scores[c] = event.prompt_logprobs
            out.texts[c].append(event.text)
            if event.logprob is not None:
                out.scores[c].append(event.logprob)
            out.counts[c] = max(out.counts[c], event.completion_tokens)
            note(self.request, served, prompt_tokens, sum(out.counts))
            out.reasons[c] = event.finish_reason or out.reasons[c]
        return out

"""One prompt being completed: its tokens, text, sampling state, stop strings and finish.

The scheduler feeds a Sequence one row of logits at a time (`choose`, then `accept`); the
Sequence decides the token, turns it into safe-to-show text, and says when it is done.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import Any

import torch

from lmscope.engine.detokenize import IncrementalDetokenizer
from lmscope.engine.errors import GenerationError
from lmscope.engine.outputs import FinishReason, GenerationResult, TokenLogprob, token_logprob
from lmscope.engine.sampling import SamplingParams, SequenceSampler
from lmscope.model.transformer import Transformer

__all__ = ["Sequence", "StepOutput"]


@dataclass
class StepOutput:
    """What one sequence produced in one step: its new token, the text that became safe to show,
    and, on its last step, why it finished. token_id is None for a sequence that finished
    without generating (max_new_tokens=0)."""

    sequence: Sequence
    token_id: int | None
    text: str
    logprob: TokenLogprob | None
    finish_reason: FinishReason | None


def _stop_prefix_overlap(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class Sequence:
    """One prompt being completed.

    Build it from prompt token ids (see `prepare_prompt`) and hand it to a Scheduler, which
    attaches it to the model and fills in the rest.
    """

    def __init__(
        self, prompt_ids: SequenceABC[int], params: SamplingParams, request_id: Any = None
    ) -> None:
        if not prompt_ids:
            raise GenerationError("the prompt is empty; give at least one token")
        self.prompt_ids = [int(t) for t in prompt_ids]
        self.params = params
        self.request_id = request_id
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.text = ""
        self.finish_reason: FinishReason | None = None
        self.stop_reason: str | int | None = None
        self._emitted = 0
        self._tokenizer: Any = None
        self._detok: IncrementalDetokenizer | None = None
        self._sampler: SequenceSampler | None = None
        self._end_ids: frozenset[int] = frozenset()
        self._n_ctx = 0

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.request_id!r}, prompt={len(self.prompt_ids)} tokens, "
            f"generated={len(self.token_ids)}, finish={self.finish_reason!r})"
        )

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def attached(self) -> bool:
        return self._detok is not None

    def result(self) -> GenerationResult:
        if self.finish_reason is None:
            raise GenerationError("the sequence has not finished yet")
        return GenerationResult(
            text=self.text,
            token_ids=list(self.token_ids),
            finish_reason=self.finish_reason,
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=len(self.token_ids),
            prompt_token_ids=list(self.prompt_ids),
            logprobs=None if self.logprobs is None else list(self.logprobs),
            stop_reason=self.stop_reason,
        )

    # ---- used by the scheduler ------------------------------------------------------------
    def attach(
        self,
        model: Transformer,
        tokenizer: Any,
        eos_ids: frozenset[int],
        n_ctx: int | None = None,
    ) -> None:
        """Bind to a model and tokenizer before decoding (n_ctx: a tighter length limit)."""
        if self._detok is not None:
            raise GenerationError(f"{self!r} was already added to a scheduler")
        params = self.params
        self._sampler = SequenceSampler(params, self.prompt_ids, model.cfg.vocab_size, model.device)
        self._tokenizer = tokenizer
        self._detok = IncrementalDetokenizer(tokenizer, self.prompt_ids, params.skip_special_tokens)
        end = set(params.stop_token_ids)
        if not params.ignore_eos:
            end |= eos_ids
        self._end_ids = frozenset(end)
        self._n_ctx = min(model.cfg.n_ctx, n_ctx or model.cfg.n_ctx)

    def choose(self, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        """The next token from this sequence's row of logits [V], and its log-probability."""
        assert self._sampler is not None, "sequence is not attached to a scheduler"
        token = self._sampler.choose(logits, self.token_ids)
        return token, self._logprob(logits, token)

    def _logprob(self, logits: torch.Tensor, token: int) -> TokenLogprob | None:
        if self.params.logprobs is None:
            return None
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        return token_logprob(self._tokenizer, logprobs, token, self.params.logprobs)

    def accept(self, token: int, logprob: TokenLogprob | None) -> StepOutput:
        """Record a new token; decide whether the sequence is done; return the safe new text."""
        assert self._detok is not None and self._sampler is not None, "sequence is not attached"
        self.token_ids.append(token)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        self._sampler.observe(token)
        ends = token in self._end_ids
        if not ends:
            self._append_text(self._detok.push(token))
        if self.finish_reason is None:
            if ends:
                self.finish("stop", token)
            elif len(self.token_ids) >= self.params.max_new_tokens or (
                len(self.prompt_ids) + len(self.token_ids) >= self._n_ctx
            ):
                self.finish("length")
        if self.finish_reason is not None and not isinstance(self.stop_reason, str):
            self._append_text(self._detok.flush())
        return StepOutput(self, token, self._release(), logprob, self.finish_reason)

    def finish(self, reason: FinishReason, stop_reason: str | int | None = None) -> None:
        """Mark the sequence finished (the first reason wins)."""
        if self.finish_reason is None:
            self.finish_reason = reason
            self.stop_reason = stop_reason

    def _append_text(self, piece: str) -> None:
        if not piece or isinstance(self.stop_reason, str):
            return
        start = len(self.text)
        self.text += piece
        stops = self.params.stop
        if not stops:
            return
        longest = max(len(s) for s in stops)
        search_from = max(0, start - longest + 1)
        hits = [(at, s) for s in stops if (at := self.text.find(s, search_from)) != -1]
        if hits:
            at, stop = min(hits)
            self.text = self.text[:at]
            self.finish_reason = None  # a stop string outranks a simultaneous length finish
            self.finish("stop", stop)

    def _release(self) -> str:
        """Text not handed out yet, minus an end that may still become a stop string."""
        end = len(self.text)
        if self.finish_reason is None and self.params.stop:
            end -= _stop_prefix_overlap(self.text, self.params.stop)
        end = max(end, self._emitted)
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta

"""What the engine hands back: per-token log-probabilities, finished results, scored texts, and
the events of one request as the scheduler produces them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = [
    "Event",
    "FinishReason",
    "GenerationResult",
    "ScoredText",
    "TokenLogprob",
    "token_logprob",
    "token_text",
]

Tokenizer = Any  # a transformers PreTrainedTokenizerBase (fast or slow)
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class TokenLogprob:
    """A token, its text and its log-probability; `top` holds the most likely alternatives."""

    token_id: int
    token: str
    logprob: float
    top: tuple[TokenLogprob, ...] = ()


@dataclass
class GenerationResult:
    """One finished completion.

    token_ids are the generated tokens, including a final end-of-sequence token when one ended
    the completion (it counts in completion_tokens, not in text). text stops before a matched
    stop string. stop_reason names what ended a "stop" finish: the stop string or token id.
    """

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    prompt_token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    stop_reason: str | int | None = None


@dataclass
class ScoredText:
    """Per-token log-probabilities of an existing sequence (the first token has none)."""

    token_ids: list[int]
    tokens: list[str]
    logprobs: list[TokenLogprob | None]

    @property
    def total_logprob(self) -> float:
        return sum(lp.logprob for lp in self.logprobs if lp is not None)


@dataclass
class Event:
    """One step of a request: new text, the token behind it, the prompt's scores, or the end.

    finish_reason is "stop", "length", "abort" (cancelled) or "error"; on "error", `error`
    holds the exception that ended the request (a bug or a broken model, not a user mistake).
    """

    text: str = ""
    token_id: int | None = None
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    return str(tokenizer.decode([token_id], clean_up_tokenization_spaces=False))


def token_logprob(
    tokenizer: Tokenizer, logprobs: torch.Tensor, token_id: int, n_top: int
) -> TokenLogprob:
    """TokenLogprob of token_id from a row of log-probabilities [V], with n_top alternatives."""
    top: tuple[TokenLogprob, ...] = ()
    if n_top > 0:
        values, ids = torch.topk(logprobs, min(n_top, logprobs.shape[-1]))
        top = tuple(
            TokenLogprob(i, token_text(tokenizer, i), v)
            for i, v in zip(ids.tolist(), values.tolist(), strict=True)
        )
    return TokenLogprob(token_id, token_text(tokenizer, token_id), float(logprobs[token_id]), top)

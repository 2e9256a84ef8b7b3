"""From next-token logits to a choice: repetition penalty, temperature, top-k, top-p, sampling.

The order and semantics follow Hugging Face's logits processors (penalty, then temperature, then
top-k, then top-p). Every function works on one row of logits [V], so each sequence of a batch can
carry its own settings and its own random generator: a seeded sequence draws the same tokens
whether it runs alone or inside a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOP_P_FIRST_K = 64  # top-p sorts this many of the likeliest tokens first, more only if needed


class GenerationError(ValueError):
    """A generation request that cannot be served as asked (a user error, not a bug)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the tokens of one completion.

    temperature 0 means greedy decoding; top_k 0 and top_p 1 switch those filters off.
    repetition_penalty > 1 discourages every token already in the prompt or the completion (HF
    semantics: positive logits are divided by it, negative ones multiplied).
    logprobs: None for no log-probabilities; n >= 0 for the chosen token's log-probability
    under the model (before any penalty or filter) plus its n most likely alternatives.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        checks = [
            (self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (
                self.repetition_penalty > 0,
                f"repetition_penalty must be > 0, got {self.repetition_penalty}",
            ),
            (
                self.logprobs is None or self.logprobs >= 0,
                f"logprobs must be None or >= 0, got {self.logprobs}",
            ),
            (all(self.stop), "stop strings must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise GenerationError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that reads the logits row by row (batched argmax suffices)."""
        return self.greedy and self.repetition_penalty == 1.0 and self.logprobs is None


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """logits [..., V]; seen [..., V] bool marks the tokens already in the sequence."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of a row [V] (ties at the k-th value are kept), -inf elsewhere."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter of a row [V]: keep the most likely tokens, in order, until their
    probability reaches p (the token that crosses p is kept); -inf elsewhere."""
    if p >= 1.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    vocab = probs.shape[-1]
    k = min(TOP_P_FIRST_K, vocab)
    top_probs, top_ids = torch.topk(probs, k)  # the nucleus is usually inside a small head
    if k < vocab and float(top_probs.sum()) < p:
        top_probs, top_ids = torch.sort(probs, descending=True)
    mass_before = top_probs.cumsum(-1) - top_probs
    keep = top_ids[mass_before < p]
    keep = keep if keep.numel() else top_ids[:1]
    out = torch.full_like(logits, float("-inf"))
    out[keep] = logits[keep]
    return out


def processed_logits(
    logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """One row of logits [V] after penalty, temperature, top-k and top-p (float32)."""
    out = logits.float()
    if params.repetition_penalty != 1.0 and seen is not None:
        out = apply_repetition_penalty(out, seen, params.repetition_penalty)
    if params.greedy:
        return out
    if params.temperature != 1.0:
        out = out / params.temperature
    out = top_k_filter(out, params.top_k)
    return top_p_filter(out, params.top_p)


def sample_from_probs(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """Inverse-CDF draw from probabilities [V] (unnormalised is fine), using one uniform number.

    One draw per step keeps a seeded generator in step however the batch around it changes.
    """
    cdf = probs.cumsum(-1)
    u = torch.rand((), generator=generator, dtype=cdf.dtype, device=cdf.device)
    index = int(torch.searchsorted(cdf, (u * cdf[-1]).reshape(1), right=True))
    if index >= probs.shape[-1]:  # u * total rounded up to the total
        index = int(torch.nonzero(probs > 0)[-1])
    return index


def next_token(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> int:
    """Choose the next token from one row of logits [V]."""
    out = processed_logits(logits, params, seen)
    if params.greedy:
        return int(out.argmax())
    return sample_from_probs(torch.softmax(out, dim=-1), generator)

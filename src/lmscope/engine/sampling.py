"""From next-token logits to a choice: logits processors, logit bias, penalties, temperature,
top-k, top-p, sampling.

The order follows vLLM and Hugging Face: custom processors (e.g. a grammar mask) and
`logit_bias` first, then the penalties (repetition, presence, frequency), then temperature,
top-k and top-p. Every function works on one row of logits [V], so each sequence of a batch
carries its own settings and its own random generator: a seeded sequence draws the same tokens
whether it runs alone or inside a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lmscope.engine.errors import GenerationError

__all__ = [
    "GenerationError",
    "LogitsProcessor",
    "SamplingParams",
    "SequenceSampler",
    "apply_presence_frequency",
    "apply_repetition_penalty",
    "next_token",
    "processed_logits",
    "sample_from_probs",
    "top_k_filter",
    "top_p_filter",
]

TOP_P_FIRST_K = 64  # top-p sorts this many of the likeliest tokens first, more only if needed
LOGIT_BIAS_LIMIT = 100.0  # OpenAI's range for logit_bias values
PENALTY_LIMIT = 2.0  # OpenAI's range for presence_penalty and frequency_penalty

# (generated token ids so far, logits row [V] float32) -> logits row [V]. Called once per step
# per sequence; a stateful processor (a grammar matcher) must belong to one sequence only.
LogitsProcessor = Callable[[Sequence[int], torch.Tensor], torch.Tensor]


def _logit_bias(raw: Mapping[Any, Any] | None) -> dict[int, float]:
    """logit_bias as {token id: bias}; keys may be ints or digit strings (JSON object keys)."""
    out: dict[int, float] = {}
    for key, value in (raw or {}).items():
        if isinstance(key, bool) or not (
            isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit())
        ):
            raise GenerationError(f"logit_bias keys must be token ids, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GenerationError(f"logit_bias values must be numbers, got {value!r}")
        if not -LOGIT_BIAS_LIMIT <= value <= LOGIT_BIAS_LIMIT:  # also refuses NaN
            raise GenerationError(f"logit_bias values must be in [-100, 100], got {value!r}")
        out[int(key)] = float(value)
    return out


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the tokens of one completion.

    temperature 0 means greedy decoding; top_k 0 and top_p 1 switch those filters off.
    repetition_penalty > 1 discourages every token already in the prompt or the completion (HF
    semantics: positive logits are divided by it, negative ones multiplied).
    presence_penalty and frequency_penalty (OpenAI semantics, in [-2, 2]) subtract
    `presence * (count > 0) + frequency * count` from each token's logit, where count is how
    often the token appears in the completion so far (not the prompt).
    logit_bias: {token id: bias in [-100, 100]} added to the logits (-100 all but bans a token).
    logits_processors: callables (generated ids, logits row) -> logits row, applied first.
    logprobs: None for no log-probabilities; n >= 0 for the chosen token's log-probability
    under the model (before any processor, penalty or filter) plus its n most likely alternatives.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    logits_processors: tuple[LogitsProcessor, ...] = ()
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
        if any(isinstance(t, bool) for t in self.stop_token_ids):
            raise GenerationError("stop_token_ids must be token ids, not booleans")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))
        object.__setattr__(self, "logits_processors", tuple(self.logits_processors))
        for name in (
            "temperature",
            "top_p",
            "repetition_penalty",
            "presence_penalty",
            "frequency_penalty",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise GenerationError(f"{name} must be a number, got {value!r}")
            if math.isnan(value):
                raise GenerationError(f"{name} is not a number (NaN); give a finite value")
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
                abs(self.presence_penalty) <= PENALTY_LIMIT,
                f"presence_penalty must be in [-2, 2], got {self.presence_penalty}",
            ),
            (
                abs(self.frequency_penalty) <= PENALTY_LIMIT,
                f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}",
            ),
            (
                self.logprobs is None or self.logprobs >= 0,
                f"logprobs must be None or >= 0, got {self.logprobs}",
            ),
            (all(self.stop), "stop strings must not be empty"),
            (
                all(callable(p) for p in self.logits_processors),
                "logits_processors must be callable",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise GenerationError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def counts_output(self) -> bool:
        """Whether the presence or frequency penalty needs the completion's token counts."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that reads the logits row by row (batched argmax suffices)."""
        return (
            self.greedy
            and self.repetition_penalty == 1.0
            and not self.counts_output
            and not self.logit_bias
            and not self.logits_processors
            and self.logprobs is None
        )


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """logits [..., V]; seen [..., V] bool marks the tokens already in the sequence."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def apply_presence_frequency(
    logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's penalties: logits - presence * (counts > 0) - frequency * counts.
    counts [V] float: how often each token occurs in the completion so far."""
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts


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
    logits: torch.Tensor,
    params: SamplingParams,
    seen: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
    generated: Sequence[int] = (),
) -> torch.Tensor:
    """One row of logits [V] after processors, bias, penalties, temperature, top-k and top-p
    (float32). seen: [V] bool, tokens of prompt and completion (repetition penalty); counts:
    [V] float, completion token counts (presence/frequency; built from `generated` if None)."""
    out = logits.float()
    for processor in params.logits_processors:
        out = processor(generated, out)
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=out.device)
        if int(ids.max()) >= out.shape[-1]:
            raise GenerationError(
                f"logit_bias names token {int(ids.max())}, outside the vocabulary "
                f"[0, {out.shape[-1]})"
            )
        values = torch.tensor(list(params.logit_bias.values()), device=out.device)
        out = out.index_add(0, ids, values.to(out.dtype))
    if params.repetition_penalty != 1.0 and seen is not None:
        out = apply_repetition_penalty(out, seen, params.repetition_penalty)
    if params.counts_output:
        if counts is None:
            counts = torch.zeros_like(out)
            if generated:
                counts.index_add_(
                    0,
                    torch.tensor(list(generated), device=out.device),
                    torch.ones(len(generated), device=out.device),
                )
        out = apply_presence_frequency(
            out, counts, params.presence_penalty, params.frequency_penalty
        )
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
    counts: torch.Tensor | None = None,
    generated: Sequence[int] = (),
) -> int:
    """Choose the next token from one row of logits [V]."""
    out = processed_logits(logits, params, seen, counts, generated)
    if params.greedy:
        return int(out.argmax())
    return sample_from_probs(torch.softmax(out, dim=-1), generator)


class SequenceSampler:
    """The sampling state of one sequence: its random generator, the tokens it has seen
    (repetition penalty) and its completion's token counts (presence/frequency penalty).

    A seeded sequence owns a generator of its own; an unseeded one is seeded from torch's
    global generator when the sampler is built.
    """

    def __init__(
        self,
        params: SamplingParams,
        prompt_ids: Sequence[int],
        vocab_size: int,
        device: torch.device,
    ) -> None:
        self.params = params
        bad = [t for t in params.logit_bias if not 0 <= t < vocab_size]
        if bad:
            raise GenerationError(
                f"logit_bias names token {bad[0]}, outside the vocabulary [0, {vocab_size})"
            )
        self.generator: torch.Generator | None = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            seed = params.seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)))
            self.generator.manual_seed(seed)
        self.seen: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(list(prompt_ids), dtype=torch.long, device=device)] = True
        self.counts: torch.Tensor | None = None
        if params.counts_output:
            self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)

    def choose(self, logits: torch.Tensor, generated: Sequence[int]) -> int:
        """The next token from this sequence's row of logits [V]."""
        return next_token(logits, self.params, self.generator, self.seen, self.counts, generated)

    def observe(self, token: int) -> None:
        """Record a chosen token for the penalties."""
        if self.seen is not None:
            self.seen[token] = True
        if self.counts is not None:
            self.counts[token] += 1

"""Text generation with the canonical transformer.

Three layers, each usable on its own:

- `generate`, `generate_batch`, `stream` and `score`: one call from a prompt (text, token ids or
  chat messages) to a typed result.
- `DecodeBatch` and `Sequence`: the step-level loop underneath. `add` prefills new sequences and
  picks their first token; `step` picks one more token for every unfinished sequence; finished
  sequences leave the batch at once, so a server can keep adding requests between steps
  (continuous batching).
- `lmscope.model.sampling`: the per-row choice of the next token.

The batch lives in a left-padded KV cache: every row ends at the same cache column, shorter
rows are padded on the left and masked, and each row keeps its own positions, so a prompt gets
the same tokens alone or in a batch. Without padding (one sequence, or equal lengths) a decoding
step passes no mask at all.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from lmscope.model.cache import KVCache
from lmscope.model.prepacked import optimize_for_decoding
from lmscope.model.sampling import GenerationError, SamplingParams, next_token
from lmscope.model.transformer import Transformer

__all__ = [
    "DecodeBatch",
    "GenerationError",
    "GenerationResult",
    "GenerationStream",
    "PromptTooLongError",
    "SamplingParams",
    "ScoredText",
    "Sequence",
    "StepOutput",
    "TokenLogprob",
    "default_eos_ids",
    "generate",
    "generate_batch",
    "optimize_for_decoding",
    "prepare_prompt",
    "score",
    "stream",
]

Tokenizer = Any  # a transformers PreTrainedTokenizerBase (fast or slow)
Messages = SequenceABC[Mapping[str, Any]]
Prompt = str | SequenceABC[int] | Messages
FinishReason = Literal["stop", "length"]
Truncate = Literal["left"] | None

# End-of-turn tokens of common chat formats: generation stops on them when the tokenizer has them
# as special tokens, even if its eos_token is another one.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")
DETOKENIZER_CONTEXT = 4  # prompt tokens decoded with the first new ones (keeps leading spaces)
DETOKENIZER_MAX_PENDING = 8  # tokens held back waiting for a character to complete, at most


class PromptTooLongError(GenerationError):
    """The prompt does not leave room for a single new token in the model's context window."""

    def __init__(self, prompt_tokens: int, limit: int) -> None:
        super().__init__(
            f"the prompt has {prompt_tokens} tokens but the model's context window is {limit} "
            f"tokens, with room needed for at least one new token; shorten the prompt or ask "
            f"for truncation (truncate='left')"
        )
        self.prompt_tokens = prompt_tokens
        self.limit = limit


# ---- results -----------------------------------------------------------------------------------


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
class StepOutput:
    """What one sequence produced in one step: its new token, the text that became safe to show,
    and, on its last step, why it finished. token_id is None for a sequence that finished
    without generating (max_new_tokens=0)."""

    sequence: Sequence
    token_id: int | None
    text: str
    logprob: TokenLogprob | None
    finish_reason: FinishReason | None


# ---- prompts -----------------------------------------------------------------------------------


def _is_messages(prompt: object) -> bool:
    return (
        isinstance(prompt, SequenceABC)
        and not isinstance(prompt, str)
        and len(prompt) > 0
        and isinstance(prompt[0], Mapping)
    )


def encode_messages(tokenizer: Tokenizer, messages: Messages) -> list[int]:
    """Chat messages -> token ids through the tokenizer's chat template, ready for the reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise GenerationError(
            "this model's tokenizer has no chat template; send a plain text prompt instead"
        )
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer.encode(text, add_special_tokens=False))


def prepare_prompt(
    tokenizer: Tokenizer,
    prompt: Prompt,
    *,
    n_ctx: int,
    max_new_tokens: int = 0,
    truncate: Truncate = None,
) -> list[int]:
    """Token ids of a prompt (text, token ids or chat messages), checked against the window.

    Without truncation, a prompt that leaves no room for one new token raises
    PromptTooLongError; generation stops early ("length") when the window fills up.
    truncate="left" drops the oldest tokens so that the prompt plus max_new_tokens fit.
    """
    if truncate not in (None, "left"):
        raise GenerationError(f"truncate must be None or 'left', got {truncate!r}")
    if isinstance(prompt, str):
        ids = list(tokenizer.encode(prompt)) if prompt else []
    elif _is_messages(prompt):
        ids = encode_messages(tokenizer, prompt)  # type: ignore[arg-type]
    else:
        ids = [int(t) for t in prompt]  # type: ignore[arg-type]
    if not ids:
        start = getattr(tokenizer, "bos_token_id", None)
        if start is None:
            start = getattr(tokenizer, "eos_token_id", None)
        if start is None:
            raise GenerationError("the prompt is empty; give at least one token")
        ids = [int(start)]  # GPT-2 convention: an empty prompt starts from the boundary token
    if truncate == "left" and len(ids) + max_new_tokens > n_ctx:
        ids = ids[-max(1, n_ctx - max(max_new_tokens, 1)) :]
    if len(ids) >= n_ctx:
        raise PromptTooLongError(len(ids), n_ctx)
    return ids


def default_eos_ids(model: Transformer, tokenizer: Tokenizer) -> frozenset[int]:
    """Token ids that end a completion: the tokenizer's and the config's end-of-sequence ids, and
    the usual end-of-turn tokens when the tokenizer has them as special tokens."""
    ids: set[int] = set()
    for value in (
        getattr(tokenizer, "eos_token_id", None),
        model.cfg.eos_token_id,
        model.cfg.extra.get("eos_token_ids"),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    special = set(getattr(tokenizer, "all_special_tokens", ()))
    for token in END_OF_TURN_TOKENS:
        if token in special:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id >= 0:
                ids.add(token_id)
    return frozenset(i for i in ids if 0 <= i < model.cfg.vocab_size)


# ---- text out ----------------------------------------------------------------------------------


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decodes a short window of recent tokens and emits what the newest token added, so a
    character split over several byte-level tokens appears once it is complete, and merged or
    space-prefixed tokens decode as they would in the whole sequence.
    """

    def __init__(
        self, tokenizer: Tokenizer, prompt_ids: SequenceABC[int], skip_special_tokens: bool
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids = list(prompt_ids[-DETOKENIZER_CONTEXT:])
        if self._decode(self._ids).endswith("\ufffd"):  # context ends inside a character
            self._ids = []
        self._prefix = 0  # window start
        self._read = len(self._ids)  # tokens before this have been emitted

    def _decode(self, ids: list[int]) -> str:
        text = self._tokenizer.decode(
            ids, skip_special_tokens=self._skip, clean_up_tokenization_spaces=False
        )
        return str(text)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        stuck = len(self._ids) - self._read > DETOKENIZER_MAX_PENDING  # invalid bytes, give up
        if len(after) > len(before) and (stuck or not after.endswith("\ufffd")):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]


def _stop_prefix_overlap(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


def token_logprob(
    tokenizer: Tokenizer, logprobs: torch.Tensor, token_id: int, n_top: int
) -> TokenLogprob:
    """TokenLogprob of token_id from a row of log-probabilities [V], with n_top alternatives."""
    top: tuple[TokenLogprob, ...] = ()
    if n_top > 0:
        values, ids = torch.topk(logprobs, min(n_top, logprobs.shape[-1]))
        top = tuple(
            TokenLogprob(i, _token_text(tokenizer, i), v)
            for i, v in zip(ids.tolist(), values.tolist(), strict=True)
        )
    return TokenLogprob(token_id, _token_text(tokenizer, token_id), float(logprobs[token_id]), top)


def _token_text(tokenizer: Tokenizer, token_id: int) -> str:
    return str(tokenizer.decode([token_id], clean_up_tokenization_spaces=False))


# ---- one sequence ------------------------------------------------------------------------------


class Sequence:
    """One prompt being completed: its tokens, text, sampling state and finish.

    Build it from prompt token ids (see `prepare_prompt`) and hand it to a DecodeBatch, which
    fills in the rest. A seeded sequence owns a generator of its own, so its draws do not
    depend on the rest of the batch; an unseeded one is seeded from torch's global generator.
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
        self._tokenizer: Tokenizer = None
        self._detok: IncrementalDetokenizer | None = None
        self._end_ids: frozenset[int] = frozenset()
        self._n_ctx = 0
        self._generator: torch.Generator | None = None
        self._seen: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.request_id!r}, prompt={len(self.prompt_ids)} tokens, "
            f"generated={len(self.token_ids)}, finish={self.finish_reason!r})"
        )

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

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

    # ---- used by a decoding driver (DecodeBatch, the server's engine) -------------------------------------------------------------------
    def attach(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        eos_ids: frozenset[int],
        n_ctx: int | None = None,
    ) -> None:
        """Bind to a model and tokenizer before decoding (n_ctx: a tighter length limit)."""
        params = self.params
        self._tokenizer = tokenizer
        self._detok = IncrementalDetokenizer(tokenizer, self.prompt_ids, params.skip_special_tokens)
        end = set(params.stop_token_ids)
        if not params.ignore_eos:
            end |= eos_ids
        self._end_ids = frozenset(end)
        self._n_ctx = min(model.cfg.n_ctx, n_ctx or model.cfg.n_ctx)
        device = model.device
        if not params.greedy:
            self._generator = torch.Generator(device=device)
            seed = params.seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)))
            self._generator.manual_seed(seed)
        if params.repetition_penalty != 1.0:
            self._seen = torch.zeros(model.cfg.vocab_size, dtype=torch.bool, device=device)
            self._seen[torch.tensor(self.prompt_ids, device=device)] = True

    def choose(self, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        """The next token from this sequence's row of logits [V], and its log-probability."""
        token = next_token(logits, self.params, self._generator, self._seen)
        return token, self._logprob(logits, token)

    def _logprob(self, logits: torch.Tensor, token: int) -> TokenLogprob | None:
        if self.params.logprobs is None:
            return None
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        return token_logprob(self._tokenizer, logprobs, token, self.params.logprobs)

    def accept(self, token: int, logprob: TokenLogprob | None) -> StepOutput:
        """Record a new token; decide whether the sequence is done; return the safe new text."""
        assert self._detok is not None, "sequence is not attached to a DecodeBatch"
        self.token_ids.append(token)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        if self._seen is not None:
            self._seen[token] = True
        ends = token in self._end_ids
        if not ends:
            self._append_text(self._detok.push(token))
        if self.finish_reason is None:
            if ends:
                self._finish("stop", token)
            elif len(self.token_ids) >= self.params.max_new_tokens or (
                len(self.prompt_ids) + len(self.token_ids) >= self._n_ctx
            ):
                self._finish("length")
        if self.finish_reason is not None and not isinstance(self.stop_reason, str):
            self._append_text(self._detok.flush())
        return StepOutput(self, token, self._release(), logprob, self.finish_reason)

    def _finish(self, reason: FinishReason, stop_reason: str | int | None = None) -> None:
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
            self._finish("stop", stop)

    def _release(self) -> str:
        """Text not handed out yet, minus an end that may still become a stop string."""
        end = len(self.text)
        if self.finish_reason is None and self.params.stop:
            end -= _stop_prefix_overlap(self.text, self.params.stop)
        end = max(end, self._emitted)
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta


# ---- the batch ---------------------------------------------------------------------------------


class _BatchCache(KVCache):
    """A KVCache whose rows can be merged, dropped and left-trimmed between decoding steps."""

    @classmethod
    def empty_like(cls, model: Transformer, batch: int, capacity: int) -> _BatchCache:
        cfg = model.cfg
        return cls(
            cfg.n_layers, batch, cfg.kv_heads, capacity, cfg.head_dim, model.dtype, model.device
        )

    def place(self, rows: slice, other: KVCache, end: int) -> None:
        """Copy `other`'s filled columns into `rows`, right-aligned to column `end`; zero the
        columns before them (masked padding must hold finite numbers: 0 * NaN is NaN)."""
        n = other.length
        self.keys[:, rows, :, : end - n].zero_()
        self.values[:, rows, :, : end - n].zero_()
        self.keys[:, rows, :, end - n : end] = other.keys[:, :, :, :n]
        self.values[:, rows, :, end - n : end] = other.values[:, :, :, :n]

    def trim_left(self, columns: int) -> None:
        """Forget the first `columns` columns (padding that no row needs any more), copy-free."""
        self.keys = self.keys[:, :, :, columns:]
        self.values = self.values[:, :, :, columns:]
        self.length -= columns
        self.max_len -= columns


class DecodeBatch:
    """Sequences decoded together, one token each per step, in a left-padded KV cache.

    >>> batch = DecodeBatch(model, tokenizer)
    >>> outputs = batch.add([Sequence(ids, SamplingParams(temperature=0))])  # first tokens
    >>> while batch:
    ...     outputs = batch.step()  # one more token per unfinished sequence
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        *,
        eos_token_ids: Iterable[int] | None = None,
        pad_token_id: int = 0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = (
            default_eos_ids(model, tokenizer) if eos_token_ids is None else frozenset(eos_token_ids)
        )
        self.pad_token_id = pad_token_id
        self.sequences: list[Sequence] = []
        self._cache: _BatchCache | None = None
        self._mask = torch.empty(0, 0, dtype=torch.long)  # [b, capacity]: 1 real, 0 padding
        self._lengths: list[int] = []  # real tokens per row, all ending at cache column `length`
        self._positions = torch.empty(0, dtype=torch.long)  # [b] position of the next token
        self._last = torch.empty(0, 1, dtype=torch.long)  # [b, 1] tokens to feed next
        self._padded = False

    def __len__(self) -> int:
        return len(self.sequences)

    def __bool__(self) -> bool:
        return bool(self.sequences)

    # ---- adding ----------------------------------------------------------------------------------
    def add(self, sequences: Sequence | Iterable[Sequence]) -> list[StepOutput]:
        """Prefill new sequences (together, left-padded) and pick their first tokens."""
        new = [sequences] if isinstance(sequences, Sequence) else list(sequences)
        outputs: list[StepOutput] = []
        group: list[Sequence] = []
        n_ctx = self.model.cfg.n_ctx
        for seq in new:  # check them all before touching any
            if seq._detok is not None:
                raise GenerationError(f"{seq!r} was already added to a batch")
            if len(seq.prompt_ids) >= n_ctx:
                raise PromptTooLongError(len(seq.prompt_ids), n_ctx)
        if len({id(seq) for seq in new}) != len(new):
            raise GenerationError("the same Sequence appears twice")
        for seq in new:
            seq.attach(self.model, self.tokenizer, self.eos_ids)
            if seq.params.max_new_tokens == 0:
                seq._finish("length")
                outputs.append(StepOutput(seq, None, "", None, "length"))
            else:
                group.append(seq)
        if group:
            with torch.inference_mode():
                logits = self._prefill(group)
                outputs += self._advance(logits, first_row=len(self.sequences) - len(group))
        return outputs

    def _capacity(self, columns: int, sequences: Iterable[Sequence]) -> int:
        """Columns the cache needs from here on: every row ends at the last column, and none
        grows past its budget or the context window."""
        left = max(s.params.max_new_tokens - len(s.token_ids) for s in sequences)
        return max(columns + 1, min(self.model.cfg.n_ctx, columns + left))

    def _prefill(self, group: list[Sequence]) -> torch.Tensor:
        device = self.model.device
        lengths = [len(s.prompt_ids) for s in group]
        width = max(lengths)
        tokens = torch.full((len(group), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for row, seq in enumerate(group):
            tokens[row, width - lengths[row] :] = torch.tensor(seq.prompt_ids)
            mask[row, width - lengths[row] :] = 1
        tokens, mask = tokens.to(device), mask.to(device)
        padded = min(lengths) < width
        first = not self.sequences
        if first:  # the prefill cache becomes the batch cache: give it room to decode into
            cache = _BatchCache.empty_like(self.model, len(group), self._capacity(width, group))
        else:
            cache = _BatchCache.empty_like(self.model, len(group), width)
        positions = (mask.cumsum(-1) - 1).clamp(min=0) if padded else None
        logits = self.model(
            tokens,
            positions=positions,
            attention_mask=mask if padded else None,
            cache=cache,
            last_only=True,
        )[:, 0]
        if first:
            self._cache = cache
            self._mask = torch.ones(len(group), cache.max_len, dtype=torch.long, device=device)
            self._mask[:, :width] = mask
            self._lengths = lengths
            self._positions = torch.tensor(lengths, device=device)
            self.sequences = list(group)
        else:
            self._merge(group, cache, mask, lengths)
        self._padded = min(self._lengths) < self._cache_length
        return logits

    @property
    def _cache_length(self) -> int:
        return 0 if self._cache is None else self._cache.length

    def _merge(
        self, group: list[Sequence], cache: KVCache, mask: torch.Tensor, lengths: list[int]
    ) -> None:
        """Right-align the running rows and the new ones in one fresh cache."""
        old = self._cache
        assert old is not None
        b_old, device = len(self.sequences), self.model.device
        end = max(old.length, cache.length)
        everyone = self.sequences + group
        merged = _BatchCache.empty_like(self.model, len(everyone), self._capacity(end, everyone))
        merged.place(slice(0, b_old), old, end)
        merged.place(slice(b_old, None), cache, end)
        merged.length = end
        merged_mask = torch.ones(len(everyone), merged.max_len, dtype=torch.long, device=device)
        merged_mask[:b_old, : end - old.length] = 0
        merged_mask[:b_old, end - old.length : end] = self._mask[:, : old.length]
        merged_mask[b_old:, : end - cache.length] = 0
        merged_mask[b_old:, end - cache.length : end] = mask
        self._cache, self._mask = merged, merged_mask
        self.sequences = everyone
        self._lengths = self._lengths + lengths
        self._positions = torch.cat([self._positions, torch.tensor(lengths, device=device)])
        self._last = torch.cat(
            [self._last, torch.zeros(len(group), 1, dtype=torch.long, device=device)]
        )

    # ---- decoding --------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """One token for every sequence in the batch; finished sequences leave it."""
        if not self.sequences:
            return []
        cache = self._cache
        assert cache is not None
        with torch.inference_mode():
            if cache.length + 1 > cache.max_len:
                self._grow()
                cache = self._cache
                assert cache is not None
            if self._padded:
                logits = self.model(
                    self._last,
                    positions=self._positions[:, None],
                    attention_mask=self._mask[:, : cache.length + 1],
                    cache=cache,
                    last_only=True,
                )
            else:
                logits = self.model(self._last, cache=cache, last_only=True)
            self._positions += 1
            self._lengths = [n + 1 for n in self._lengths]
            return self._advance(logits[:, 0], first_row=0)

    def _grow(self) -> None:
        """More cache columns (only needed when a budget estimate fell short)."""
        old = self._cache
        assert old is not None
        bigger = _BatchCache.empty_like(
            self.model, len(self.sequences), max(old.length + 1, 2 * old.max_len)
        )
        bigger.place(slice(None), old, old.length)
        bigger.length = old.length
        mask = torch.ones(
            len(self.sequences), bigger.max_len, dtype=torch.long, device=self.model.device
        )
        mask[:, : old.length] = self._mask[:, : old.length]
        self._cache, self._mask = bigger, mask

    def _advance(self, logits: torch.Tensor, first_row: int) -> list[StepOutput]:
        """Choose tokens for rows first_row.. from logits [rows, V]; drop finished rows."""
        rows = self.sequences[first_row:]
        plain = [seq.params.plain_greedy for seq in rows]
        greedy: list[int] = logits.argmax(-1).tolist() if any(plain) else []
        outputs = []
        for i, seq in enumerate(rows):
            if plain[i]:
                outputs.append(seq.accept(greedy[i], None))
            else:
                outputs.append(seq.accept(*seq.choose(logits[i])))
        tokens = [seq.token_ids[-1] for seq in rows]
        new_last = torch.tensor(tokens, device=self._last.device)[:, None]
        if first_row == 0:
            self._last = new_last.to(self.model.device)
        else:
            self._last[first_row:] = new_last
        if any(out.finish_reason is not None for out in outputs):
            self._drop_finished()
        return outputs

    def remove(self, sequence: Sequence) -> None:
        """Take an unfinished sequence out of the batch (a cancelled request)."""
        if sequence in self.sequences:
            with torch.inference_mode():
                self._keep([i for i, s in enumerate(self.sequences) if s is not sequence])

    def _drop_finished(self) -> None:
        self._keep([i for i, s in enumerate(self.sequences) if not s.finished])

    def _keep(self, rows: list[int]) -> None:
        if len(rows) == len(self.sequences):
            return
        self.sequences = [self.sequences[i] for i in rows]
        self._lengths = [self._lengths[i] for i in rows]
        if not rows:
            self._cache = None
            self._padded = False
            return
        cache = self._cache
        assert cache is not None
        index = torch.tensor(rows, device=self.model.device)
        cache.select(index)
        self._mask = self._mask[index]
        self._positions = self._positions[index]
        self._last = self._last[index]
        unused = cache.length - max(self._lengths)
        if unused > 0:
            cache.trim_left(unused)
            self._mask = self._mask[:, unused:]
        self._padded = min(self._lengths) < cache.length


# ---- one-call helpers ----------------------------------------------------------------------------


def _params_list(
    count: int,
    params: SamplingParams | SequenceABC[SamplingParams] | None,
    overrides: dict[str, Any],
) -> list[SamplingParams]:
    if params is None or isinstance(params, SamplingParams):
        base = params or SamplingParams()
        one = replace(base, **overrides) if overrides else base
        return [one] * count
    if len(params) != count:
        raise GenerationError(f"{len(params)} SamplingParams for {count} prompts")
    return [replace(p, **overrides) if overrides else p for p in params]


def generate_batch(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: SequenceABC[Prompt],
    params: SamplingParams | SequenceABC[SamplingParams] | None = None,
    *,
    truncate: Truncate = None,
    max_batch_size: int | None = None,
    eos_token_ids: Iterable[int] | None = None,
    **overrides: Any,
) -> list[GenerationResult]:
    """Complete several prompts together; results come back in prompt order.

    params: one SamplingParams for all prompts or one per prompt; keyword overrides (e.g.
    max_new_tokens=20, temperature=0) apply on top. With max_batch_size, waiting prompts join
    the batch as earlier ones finish.
    """
    plist = _params_list(len(prompts), params, overrides)
    n_ctx = model.cfg.n_ctx
    seqs = [
        Sequence(
            prepare_prompt(
                tokenizer, p, n_ctx=n_ctx, max_new_tokens=sp.max_new_tokens, truncate=truncate
            ),
            sp,
            request_id=i,
        )
        for i, (p, sp) in enumerate(zip(prompts, plist, strict=True))
    ]
    limit = max_batch_size if max_batch_size is not None else math.inf
    if limit < 1:
        raise GenerationError(f"max_batch_size must be at least 1, got {max_batch_size}")
    batch = DecodeBatch(model, tokenizer, eos_token_ids=eos_token_ids)
    waiting = deque(seqs)
    while waiting or batch:
        room = limit - len(batch)
        if waiting and room > 0:
            batch.add([waiting.popleft() for _ in range(int(min(room, len(waiting))))])
        batch.step()
    return [seq.result() for seq in seqs]


def generate(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: Prompt,
    params: SamplingParams | None = None,
    *,
    truncate: Truncate = None,
    eos_token_ids: Iterable[int] | None = None,
    **overrides: Any,
) -> GenerationResult:
    """Complete one prompt (text, token ids, or chat messages through the chat template).

    >>> generate(model, tokenizer, "The capital of France is", max_new_tokens=8, temperature=0)
    """
    return generate_batch(
        model,
        tokenizer,
        [prompt],
        params,
        truncate=truncate,
        eos_token_ids=eos_token_ids,
        **overrides,
    )[0]


class GenerationStream(Iterator[str]):
    """Text deltas of one completion as they become final; `result` is set once exhausted."""

    def __init__(self, batch: DecodeBatch, sequence: Sequence) -> None:
        self.sequence = sequence
        self.result: GenerationResult | None = None
        self._deltas = self._run(batch, sequence)

    def __next__(self) -> str:
        return next(self._deltas)

    def _run(self, batch: DecodeBatch, sequence: Sequence) -> Iterator[str]:
        outputs = batch.add([sequence])
        while True:
            for out in outputs:
                if out.text:
                    yield out.text
            if sequence.finished:
                break
            outputs = batch.step()
        self.result = sequence.result()


def stream(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt: Prompt,
    params: SamplingParams | None = None,
    *,
    truncate: Truncate = None,
    eos_token_ids: Iterable[int] | None = None,
    **overrides: Any,
) -> GenerationStream:
    """Like `generate`, but an iterator of text deltas (prompt errors are raised right away)."""
    sp = _params_list(1, params, overrides)[0]
    ids = prepare_prompt(
        tokenizer,
        prompt,
        n_ctx=model.cfg.n_ctx,
        max_new_tokens=sp.max_new_tokens,
        truncate=truncate,
    )
    batch = DecodeBatch(model, tokenizer, eos_token_ids=eos_token_ids)
    return GenerationStream(batch, Sequence(ids, sp))


def score(
    model: Transformer, tokenizer: Tokenizer, prompt: Prompt, *, top_logprobs: int = 0
) -> ScoredText:
    """Log-probability of every token of an existing text given the tokens before it (what
    OpenAI's echo + logprobs + max_tokens=0 returns). The first token has none."""
    if isinstance(prompt, str):
        ids = list(tokenizer.encode(prompt))
    elif _is_messages(prompt):
        ids = encode_messages(tokenizer, prompt)  # type: ignore[arg-type]
    else:
        ids = [int(t) for t in prompt]  # type: ignore[arg-type]
    if not ids:
        raise GenerationError("nothing to score: the text has no tokens")
    if len(ids) > model.cfg.n_ctx:
        raise PromptTooLongError(len(ids), model.cfg.n_ctx)
    with torch.inference_mode():
        logits = model(torch.tensor([ids], device=model.device))[0]
        scored: list[TokenLogprob | None] = [None]
        for pos in range(1, len(ids)):
            logprobs = torch.log_softmax(logits[pos - 1].float(), dim=-1)
            scored.append(token_logprob(tokenizer, logprobs, ids[pos], top_logprobs))
    return ScoredText(ids, [_token_text(tokenizer, i) for i in ids], scored)

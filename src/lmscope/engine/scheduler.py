"""The one decode scheduler: continuous batching over a slot KV cache, synchronously.

`add` queues requests; each `step` admits waiting requests into free slots (short prompts that
arrived together are prefilled together, left-padded, in groups of similar length; a prompt
longer than `prefill_chunk` is prefilled one chunk per step so running sequences keep decoding),
then decodes one token for every active sequence in a single batched forward, and returns the
events of that step. A finished sequence leaves its slot at once (the last row moves into it).

The in-process API drives a Scheduler in a loop; the server drives the same Scheduler from its
engine thread (`lmscope.engine.server`). Per-sequence choices (sampling, stop strings,
detokenising) belong to `Sequence`; this module only schedules.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from lmscope.engine.errors import PromptTooLongError
from lmscope.engine.observer import EngineObserver, NullObserver, RequestMonitor, RequestRecord
from lmscope.engine.outputs import Event, TokenLogprob, token_logprob
from lmscope.engine.prompts import default_eos_ids
from lmscope.engine.sequence import Sequence
from lmscope.model.cache import KVCache, SlotKVCache
from lmscope.model.transformer import Transformer

__all__ = [
    "PREFILL_CHUNK",
    "PREFILL_TOKEN_BUDGET",
    "Request",
    "Scheduler",
    "prefill_groups",
    "prompt_tail_logprob",
    "target_logprob_sum",
]

PREFILL_TOKEN_BUDGET = 1024  # padded prompt tokens per grouped prefill forward
PREFILL_CHUNK = 256  # longer prompts are prefilled this many tokens per step
PREFILL_PADDING_SLACK = 16  # padding a group may carry beyond a quarter of its real tokens
# A monitored prefill scores a prompt's last tokens only: the unembedding of every position would
# cost more than the drift signal is worth on long prompts (see prompt_tail_logprob).
PROMPT_SCORE_TOKENS = 32

Output = tuple["Request", Event]


@dataclass(eq=False)
class Request:
    """One sequence in the scheduler, with what the scheduler tracks about it.

    prompt_logprobs: also score the prompt tokens (OpenAI `echo` with `logprobs`); set
    `cancelled` from any thread to have it dropped at the next step.
    """

    sequence: Sequence
    prompt_logprobs: bool = False
    arrival: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    first_token_at: float | None = None
    last_token_at: float | None = None
    prompt_logprob: float | None = None  # mean over the prompt's last tokens, when monitored

    @property
    def prompt(self) -> list[int]:
        return self.sequence.prompt_ids


class _ChunkedPrefill:
    """A prompt being prefilled a chunk at a time into its own cache."""

    def __init__(self, request: Request, model: Transformer) -> None:
        self.request = request
        self.cache = model.new_cache(1, len(request.prompt))  # its length: tokens done
        self.scores: list[TokenLogprob | None] = [None]  # the first token has no score
        self.tail_sum = 0.0  # monitored: log-likelihood of the prompt's last tokens so far
        self.tail_count = 0


class Scheduler:
    """Continuous batching of one model over `max_batch` slots of `max_seq_len` positions."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Any,
        *,
        max_batch: int = 8,
        max_seq_len: int | None = None,
        prefill_chunk: int = PREFILL_CHUNK,
        eos_token_ids: Iterable[int] | None = None,
        name: str = "model",
        observer: EngineObserver | None = None,
        monitor: RequestMonitor | None = None,
    ) -> None:
        self.model = model
        self.monitor = monitor  # gets a RequestRecord per finished request
        self.tokenizer = tokenizer
        self.name = name
        self.observer: EngineObserver = observer or NullObserver()
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.max_seq_len = min(max_seq_len or model.cfg.n_ctx, model.cfg.n_ctx)
        self.eos_ids = (
            default_eos_ids(model, tokenizer) if eos_token_ids is None else frozenset(eos_token_ids)
        )
        self._waiting: collections.deque[Request] = collections.deque()
        self._rows: list[Request] = []  # decoding, row i of the slot cache
        self._chunked: collections.deque[_ChunkedPrefill] = collections.deque()
        self._admitted: list[Request] = []  # admitted this step (failed with the rest on error)
        self._slot_cache: SlotKVCache | None = None  # allocated on first use, or by reserve()

    @property
    def _slots(self) -> SlotKVCache:
        if self._slot_cache is None:
            self._slot_cache = self.model.new_slot_cache(self.max_batch, self.max_seq_len)
        return self._slot_cache

    def reserve(self) -> None:
        """Allocate the slot cache now (max_batch x max_seq_len positions) rather than at the
        first prefill, so that a server finds out at start-up whether it fits in memory."""
        self._slots  # noqa: B018 - the property allocates

    # ---- state ------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._rows)

    @property
    def busy(self) -> int:
        """Requests holding (or about to hold) a row: decoding or part-way through prefill."""
        return len(self._rows) + len(self._chunked)

    @property
    def free(self) -> int:
        """Requests that the next step could admit besides those waiting already."""
        return max(0, self.max_batch - self.busy - len(self._waiting))

    def has_work(self) -> bool:
        return bool(self._waiting or self._rows or self._chunked)

    # ---- adding -----------------------------------------------------------------------------
    def add(self, request: Request | Sequence) -> Request:
        """Queue a request (or a bare Sequence); it is prefilled at the next step. A sequence
        is attached to the model here unless it already is (the server attaches on its own
        thread, so that a bad request fails there)."""
        if isinstance(request, Sequence):
            request = Request(request)
        sequence = request.sequence
        needed = len(sequence.prompt_ids) + (1 if sequence.params.max_new_tokens > 0 else 0)
        if needed > self.max_seq_len:
            raise PromptTooLongError(len(sequence.prompt_ids), self.max_seq_len)
        if not sequence.attached:
            sequence.attach(self.model, self.tokenizer, self.eos_ids, n_ctx=self.max_seq_len)
        self._waiting.append(request)
        return request

    # ---- one step ---------------------------------------------------------------------------
    def step(self) -> list[Output]:
        """Drop cancelled requests, admit waiting ones, prefill one chunk, decode one token for
        every running sequence; returns the events of this step in order."""
        out: list[Output] = []
        with torch.inference_mode():
            self._drop_cancelled(out)
            self._admitted = []
            while self._waiting and self.busy + len(self._admitted) < self.max_batch:
                request = self._waiting.popleft()
                if request.cancelled:
                    continue
                self._admitted.append(request)
            self._admit(self._admitted, out)
            self._admitted = []
            self._prefill_chunk(out)
            if self._rows:
                self._decode_step(out)
        return out

    def fail_all(self, err: BaseException) -> list[Output]:
        """End every request this scheduler holds (after an exception in `step`), including
        those admitted in the failed step; waiting requests stay queued."""
        chunked = [c.request for c in self._chunked]
        held = {id(r): r for r in [*self._rows, *self._admitted, *chunked]}
        while self._slot_cache is not None and self._slot_cache.n_active:
            self._slot_cache.remove(self._slot_cache.n_active - 1)
        self._rows.clear()
        self._chunked.clear()
        self._admitted = []
        return [(r, Event(finish_reason="error", error=err)) for r in held.values()]

    def _admit(self, admit: list[Request], out: list[Output]) -> None:
        """Short prompts are prefilled now, in groups (prompts to be scored in groups of their
        own); long prompts join the chunked prefill, which advances one chunk per step."""
        plain: list[Request] = []
        scored: list[Request] = []
        for request in admit:
            if len(request.prompt) > self.prefill_chunk:
                self._chunked.append(_ChunkedPrefill(request, self.model))
            else:
                (scored if request.prompt_logprobs else plain).append(request)
        for group in prefill_groups(plain):
            self._prefill_together(group, out, scoring=False)
        for group in prefill_groups(scored):
            self._prefill_together(group, out, scoring=True)

    def _prefill_chunk(self, out: list[Output]) -> None:
        """Advance the oldest chunked prefill by one chunk, so that a long prompt delays the
        running sequences by one chunk's forward per token rather than by its whole prefill."""
        while self._chunked and self._chunked[0].request.cancelled:
            self._chunked.popleft()
        if not self._chunked:
            return
        job = self._chunked[0]
        request = job.request
        start = job.cache.length
        stop = min(start + self.prefill_chunk, len(request.prompt))
        chunk = torch.tensor([request.prompt[start:stop]], device=self.model.device)
        scoring = request.prompt_logprobs
        # monitored: the positions of this chunk that predict one of the prompt's last tokens
        first = max(start, len(request.prompt) - PROMPT_SCORE_TOKENS)
        need = stop - first if self.monitor is not None else 0
        if scoring:
            logits = self.model(chunk, cache=job.cache)[0]
        elif need > 0:
            logits = self.model(chunk, cache=job.cache, last_n=need)[0]
        else:
            logits = self.model(chunk, cache=job.cache, last_only=True)[0]
        self.observer.on_prompt_tokens(self.name, stop - start)
        targets = request.prompt[start + 1 : stop + 1]  # what each chunk position predicts
        if scoring:
            job.scores += self._scores(logits[: len(targets)], targets, request)
        if need > 0:
            tail_targets = request.prompt[first + 1 : stop + 1]
            job.tail_sum += target_logprob_sum(logits[len(logits) - need :], tail_targets)
            job.tail_count += len(tail_targets)
        if stop < len(request.prompt):
            return
        self._chunked.popleft()
        if job.tail_count:
            request.prompt_logprob = job.tail_sum / job.tail_count
        if scoring:
            out.append((request, Event(prompt_logprobs=job.scores, prompt_tokens=stop)))
        self._start(request, job.cache, 0, 0, logits[-1], out)

    def _prefill_together(self, requests: list[Request], out: list[Output], scoring: bool) -> None:
        """One forward for several prompts, left-padded; positions restart at each prompt's
        first token, so every row gets the keys and values (and logits) it would get alone."""
        device = self.model.device
        lengths = [len(r.prompt) for r in requests]
        width = max(lengths)
        pads = [width - n for n in lengths]
        tokens = torch.zeros(len(requests), width, dtype=torch.long)
        for i, request in enumerate(requests):
            tokens[i, pads[i] :] = torch.tensor(request.prompt)
        tokens = tokens.to(device)
        cache = self.model.new_cache(len(requests), width)
        measuring = self.monitor is not None
        n_out = width if scoring else min(width, PROMPT_SCORE_TOKENS) if measuring else 1
        if min(pads) == max(pads):  # nothing to pad
            logits = self.model(tokens, cache=cache, last_n=n_out)
        else:
            pad = torch.tensor(pads, device=device)[:, None]
            columns = torch.arange(width, device=device)[None]
            mask = (columns >= pad).long()
            positions = (columns - pad).clamp(min=0)
            logits = self.model(
                tokens, positions=positions, attention_mask=mask, cache=cache, last_n=n_out
            )
        self.observer.on_prompt_tokens(self.name, sum(lengths))
        for i, request in enumerate(requests):
            if measuring:
                real = min(lengths[i], n_out)  # positions of this row that are not padding
                request.prompt_logprob = prompt_tail_logprob(
                    logits[i, n_out - real :], request.prompt
                )
            if scoring:
                targets = request.prompt[1:]
                scores = [None, *self._scores(logits[i, pads[i] : width - 1], targets, request)]
                out.append((request, Event(prompt_logprobs=scores, prompt_tokens=lengths[i])))
            self._start(request, cache, i, pads[i], logits[i, -1], out)

    def _scores(
        self, logits: torch.Tensor, targets: list[int], request: Request
    ) -> list[TokenLogprob | None]:
        """Log-probabilities of `targets` under rows of logits [len(targets), V]."""
        k = request.sequence.params.logprobs or 0
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        return [token_logprob(self.tokenizer, logprobs[i], t, k) for i, t in enumerate(targets)]

    def _start(
        self,
        request: Request,
        cache: KVCache,
        row: int,
        start: int,
        logits: torch.Tensor,
        out: list[Output],
    ) -> None:
        """A prefilled request takes a slot and its first token (or finishes at once)."""
        if request.sequence.params.max_new_tokens == 0:
            request.sequence.finish("length")
            self._finish(request, "length", out)
            return
        self._slots.insert(cache, row=row, start=start)
        self._rows.append(request)
        self._accept(len(self._rows) - 1, logits, None, out)

    # ---- decoding ---------------------------------------------------------------------------
    def _decode_step(self, out: list[Output]) -> None:
        rows = self._rows
        last = torch.tensor([[r.sequence.token_ids[-1]] for r in rows], device=self.model.device)
        logits = self.model(last, cache=self._slots)[:, 0]
        plain = [r.sequence.params.plain_greedy for r in rows]
        greedy: list[int] = logits.argmax(-1).tolist() if any(plain) else []
        for row in range(len(rows) - 1, -1, -1):  # retiring a row moves only later rows
            self._accept(row, logits[row], greedy[row] if plain[row] else None, out)

    def _accept(self, row: int, logits: torch.Tensor, token: int | None, out: list[Output]) -> None:
        """Choose the next token of `row` (unless given), emit it, retire the row if done."""
        request = self._rows[row]
        sequence = request.sequence
        logprob = None
        if token is None:
            token, logprob = sequence.choose(logits)
        step = sequence.accept(token, logprob)
        now = time.perf_counter()
        if request.first_token_at is None:
            request.first_token_at = now
            self.observer.on_token(self.name, now - request.arrival, None)
        else:
            last = request.last_token_at or now
            self.observer.on_token(self.name, None, now - last)
        request.last_token_at = now
        event = Event(
            text=step.text,
            token_id=token,
            logprob=logprob,
            prompt_tokens=len(sequence.prompt_ids),
            completion_tokens=len(sequence.token_ids),
        )
        out.append((request, event))
        if step.finish_reason is not None:
            self._retire(row, step.finish_reason, out)

    def _retire(self, row: int, reason: str, out: list[Output]) -> None:
        request = self._rows[row]
        moved = self._slots.remove(row)
        if moved is not None:
            self._rows[row] = self._rows[moved]
        self._rows.pop()
        self._finish(request, reason, out)

    def _finish(self, request: Request, reason: str, out: list[Output]) -> None:
        event = Event(
            finish_reason=reason,
            prompt_tokens=len(request.prompt),
            completion_tokens=len(request.sequence.token_ids),
        )
        out.append((request, event))
        self.observer.on_finished(self.name, reason, time.perf_counter() - request.arrival)
        if self.monitor is not None:
            record = RequestRecord(
                list(request.prompt),
                request.prompt_logprob,
                len(request.sequence.token_ids),
                reason,
            )
            self.monitor.on_request(self.name, record)

    def _drop_cancelled(self, out: list[Output]) -> None:
        for row in range(len(self._rows) - 1, -1, -1):
            if self._rows[row].cancelled:
                self._retire(row, "abort", out)


def prefill_groups(requests: list[Request]) -> list[list[Request]]:
    """Split requests into prefill groups of similar prompt length, so that padding stays
    under a quarter of the real tokens (plus a little slack) and a group fits the token budget."""
    groups: list[list[Request]] = []
    group: list[Request] = []
    for request in sorted(requests, key=_prompt_length):
        candidate = [*group, request]
        width, real = len(request.prompt), sum(map(_prompt_length, candidate))
        padded = width * len(candidate)
        if group and (
            padded - real > real // 4 + PREFILL_PADDING_SLACK or padded > PREFILL_TOKEN_BUDGET
        ):
            groups.append(group)
            candidate = [request]
        group = candidate
    if group:
        groups.append(group)
    return groups


def _prompt_length(request: Request) -> int:
    return len(request.prompt)


def prompt_tail_logprob(logits: torch.Tensor, ids: list[int]) -> float | None:
    """Mean log p(token | prefix) over the last PROMPT_SCORE_TOKENS - 1 tokens of `ids`, from
    `logits` [n, V], the logits of the last n positions of `ids`; None when nothing is predicted
    (one token). The drift monitor's prompt signal, live and for its reference alike."""
    n = min(len(logits), len(ids), PROMPT_SCORE_TOKENS)
    if n < 2:
        return None
    return target_logprob_sum(
        logits[len(logits) - n : len(logits) - 1], ids[len(ids) - n + 1 :]
    ) / (n - 1)


def target_logprob_sum(logits: torch.Tensor, targets: list[int]) -> float:
    """Sum of log p(targets[i]) under rows logits[i] ([>= len(targets), V]); natural log."""
    if not targets:
        return 0.0
    rows = logits[: len(targets)].float()
    index = torch.tensor(targets, device=rows.device)[:, None]
    picked = rows.gather(-1, index)[:, 0]
    return float((picked - torch.logsumexp(rows, dim=-1)).sum())

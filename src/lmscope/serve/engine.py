"""Continuous batching: one decode loop per model, on its own thread.

Requests wait in a bounded queue. Each loop turn admits waiting requests into free slots of a
SlotKVCache (short prompts that arrived together are prefilled together, left-padded, in groups
of similar length; a long prompt, or one to be scored, is prefilled one chunk per turn), then
decodes one token for every active sequence in a single batched forward. Per-sequence choices
(sampling, stop strings, detokenising) belong to `lmscope.model.generate.Sequence`; this module only schedules. Tokens flow back to the asyncio
side through per-request queues; a request whose consumer went away (client disconnect,
timeout) is dropped at the next turn.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import torch

from lmscope.model.generate import Sequence, TokenLogprob, default_eos_ids, token_logprob
from lmscope.model.sampling import SamplingParams
from lmscope.model.transformer import Transformer
from lmscope.serve.metrics import ServerMetrics

__all__ = ["ContextLengthError", "Engine", "Event", "QueueFullError", "SamplingParams"]

PREFILL_TOKEN_BUDGET = 1024  # padded prompt tokens per grouped prefill forward
PREFILL_CHUNK = 256  # longer prompts are prefilled this many tokens per loop turn
PREFILL_PADDING_SLACK = 16  # padding a group may carry beyond a quarter of its real tokens


class QueueFullError(Exception):
    """The engine's waiting queue is full; the client should retry later."""


class ContextLengthError(ValueError):
    """Prompt plus requested tokens do not fit the served context."""


@dataclass
class Event:
    """One step of a request: new text, the token behind it, or the end."""

    text: str = ""
    token_id: int | None = None
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class _Request:
    sequence: Sequence
    emit: Callable[[Event], None]
    arrival: float
    prompt_logprobs: bool
    cancelled: bool = False
    first_token_at: float | None = None
    last_token_at: float | None = None

    @property
    def prompt(self) -> list[int]:
        return self.sequence.prompt_ids


class _ChunkedPrefill:
    """A prompt being prefilled a chunk at a time into its own cache."""

    def __init__(self, request: _Request, model: Transformer) -> None:
        self.request = request
        self.cache = model.new_cache(1, len(request.prompt))  # its length: tokens done
        self.scores: list[TokenLogprob | None] = [None]  # the first token has no score


class Engine:
    """The decode loop of one served model."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Any,
        *,
        name: str,
        metrics: ServerMetrics,
        max_batch: int = 8,
        max_queue: int = 64,
        max_seq_len: int = 2048,
        prefill_chunk: int = PREFILL_CHUNK,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.metrics = metrics
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.max_queue = max_queue
        self.max_seq_len = min(max_seq_len, model.cfg.n_ctx)
        self.eos_ids = default_eos_ids(model, tokenizer)
        self._pending: collections.deque[_Request] = collections.deque()
        self._rows: list[_Request] = []  # decoding, row i of the slot cache
        self._chunked: collections.deque[_ChunkedPrefill] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._slots = model.new_slot_cache(max_batch, self.max_seq_len)

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        return len(self._rows)

    # ---- the asyncio side -------------------------------------------------------------------
    def check_fits(self, prompt_len: int, max_tokens: int) -> None:
        if prompt_len == 0:
            raise ContextLengthError("the prompt is empty; send at least one token")
        if prompt_len + max_tokens > self.max_seq_len:
            raise ContextLengthError(
                f"this model's maximum context length is {self.max_seq_len} tokens, but the "
                f"prompt has {prompt_len} tokens and max_tokens asks for {max_tokens} more; "
                "shorten the prompt or lower max_tokens"
            )

    async def generate(
        self, prompt: list[int], params: SamplingParams, *, prompt_logprobs: bool = False
    ) -> AsyncGenerator[Event, None]:
        """Stream the events of one request; closing the iterator cancels the request.

        prompt_logprobs: also score the prompt tokens (OpenAI `echo` with `logprobs`).
        """
        self.check_fits(len(prompt), params.max_new_tokens)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        sequence = Sequence(prompt, params)
        sequence.attach(self.model, self.tokenizer, self.eos_ids, n_ctx=self.max_seq_len)
        request = _Request(sequence, emit, time.perf_counter(), prompt_logprobs)
        with self._cv:
            if len(self._pending) >= self.max_queue:
                self.metrics.rejected.labels(model_name=self.name).inc()
                raise QueueFullError(f"{self.name}: {len(self._pending)} requests already waiting")
            self._pending.append(request)
            self.metrics.waiting.labels(model_name=self.name).set(len(self._pending))
            self._cv.notify()
        try:
            while True:
                event = await queue.get()
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            request.cancelled = True

    # ---- the engine thread ------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._stopping and not self._pending and not self._busy:
                        self._cv.wait()
                    if self._stopping:
                        return
                    admit: list[_Request] = []
                    while self._pending and self._busy + len(admit) < self.max_batch:
                        admit.append(self._pending.popleft())
                    self.metrics.waiting.labels(model_name=self.name).set(len(self._pending))
                try:
                    self._admit(admit)
                    self._prefill_chunk()
                    self._drop_cancelled()
                    if self._rows:
                        self._decode_step()
                except Exception as err:  # never let one bad step kill the loop silently
                    self._fail_all(err, admit)
                self.metrics.running.labels(model_name=self.name).set(self._busy)

    @property
    def _busy(self) -> int:
        """Requests holding (or about to hold) a row: decoding or part-way through prefill."""
        return len(self._rows) + len(self._chunked)

    def _admit(self, admit: list[_Request]) -> None:
        """Short prompts are prefilled now, in groups; long prompts and prompts to be scored
        join the chunked prefill, which advances one chunk per loop turn."""
        short = []
        for request in admit:
            if request.prompt_logprobs or len(request.prompt) > self.prefill_chunk:
                self._chunked.append(_ChunkedPrefill(request, self.model))
            else:
                short.append(request)
        for group in prefill_groups(short):
            self._prefill_together(group)

    def _fail_all(self, err: Exception, admitted: list[_Request]) -> None:
        """End every request this engine holds, including those admitted this turn that had
        not reached a row yet (each once; a request already finished ignores the event)."""
        chunked = [c.request for c in self._chunked]
        held = {id(r): r for r in [*self._rows, *admitted, *chunked]}
        for request in held.values():
            request.emit(Event(finish_reason="error", text=f"engine error: {err}"))
        while self._slots.n_active:
            self._slots.remove(self._slots.n_active - 1)
        self._rows.clear()
        self._chunked.clear()

    def _prefill_chunk(self) -> None:
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
        logits = self.model(chunk, cache=job.cache, last_only=not scoring)[0]
        self.metrics.prompt_tokens.labels(model_name=self.name).inc(stop - start)
        if scoring:
            k = request.sequence.params.logprobs or 0
            targets = request.prompt[start + 1 : stop + 1]  # what each chunk position predicts
            logprobs = torch.log_softmax(logits[: len(targets)].float(), dim=-1)
            job.scores += [
                token_logprob(self.tokenizer, logprobs[i], tok, k) for i, tok in enumerate(targets)
            ]
        if stop < len(request.prompt):
            return
        self._chunked.popleft()
        if scoring:
            request.emit(Event(prompt_logprobs=job.scores, prompt_tokens=len(request.prompt)))
        if request.sequence.params.max_new_tokens == 0:
            self._finish(request, "length")
            return
        self._slots.insert(job.cache)
        self._rows.append(request)
        self._accept(len(self._rows) - 1, logits[-1])

    def _prefill_together(self, requests: list[_Request]) -> None:
        """One forward for several prompts, left-padded; positions restart at each prompt's
        first token, so every row gets the keys and values it would get alone."""
        requests = [r for r in requests if not r.cancelled]
        if not requests:
            return
        device = self.model.device
        lengths = torch.tensor([len(r.prompt) for r in requests], device=device)
        width = int(lengths.max())
        pads = width - lengths
        tokens = torch.zeros(len(requests), width, dtype=torch.long, device=device)
        for i, request in enumerate(requests):
            tokens[i, int(pads[i]) :] = torch.tensor(request.prompt, device=device)
        cache = self.model.new_cache(len(requests), width)
        if len(requests) == 1:
            logits = self.model(tokens, cache=cache, last_only=True)
        else:
            columns = torch.arange(width, device=device)[None]
            mask = (columns >= pads[:, None]).long()
            positions = (columns - pads[:, None]).clamp(min=0)
            logits = self.model(
                tokens, positions=positions, attention_mask=mask, cache=cache, last_only=True
            )
        self.metrics.prompt_tokens.labels(model_name=self.name).inc(int(lengths.sum()))
        for i, request in enumerate(requests):
            if request.sequence.params.max_new_tokens == 0:
                self._finish(request, "length")
                continue
            self._slots.insert(cache, row=i, start=int(pads[i]))
            self._rows.append(request)
            self._accept(len(self._rows) - 1, logits[i, 0])

    def _decode_step(self) -> None:
        last = [[r.sequence.token_ids[-1]] for r in self._rows]
        logits = self.model(torch.tensor(last, device=self.model.device), cache=self._slots)
        for row in range(len(self._rows) - 1, -1, -1):  # retiring a row moves only later rows
            self._accept(row, logits[row, 0])

    def _accept(self, row: int, logits: torch.Tensor) -> None:
        """Choose the next token of `row`, emit it, and retire the row if it is done."""
        request = self._rows[row]
        sequence = request.sequence
        token, logprob = sequence.choose(logits)
        step = sequence.accept(token, logprob)
        now = time.perf_counter()
        if request.first_token_at is None:
            request.first_token_at = now
            self.metrics.ttft.labels(model_name=self.name).observe(now - request.arrival)
        elif request.last_token_at is not None:
            self.metrics.inter_token.labels(model_name=self.name).observe(
                now - request.last_token_at
            )
        request.last_token_at = now
        self.metrics.generation_tokens.labels(model_name=self.name).inc()
        request.emit(
            Event(
                text=step.text,
                token_id=token,
                logprob=logprob,
                prompt_tokens=len(sequence.prompt_ids),
                completion_tokens=len(sequence.token_ids),
            )
        )
        if step.finish_reason is not None:
            self._retire(row, step.finish_reason)

    def _retire(self, row: int, reason: str) -> None:
        request = self._rows[row]
        moved = self._slots.remove(row)
        if moved is not None:
            self._rows[row] = self._rows[moved]
        self._rows.pop()
        self._finish(request, reason)

    def _finish(self, request: _Request, reason: str) -> None:
        request.emit(
            Event(
                finish_reason=reason,
                prompt_tokens=len(request.prompt),
                completion_tokens=len(request.sequence.token_ids),
            )
        )
        self.metrics.request_success.labels(model_name=self.name, finished_reason=reason).inc()
        self.metrics.e2e.labels(model_name=self.name).observe(time.perf_counter() - request.arrival)

    def _drop_cancelled(self) -> None:
        for row in range(len(self._rows) - 1, -1, -1):
            if self._rows[row].cancelled:
                self._retire(row, "abort")


def prefill_groups(requests: list[_Request]) -> list[list[_Request]]:
    """Split requests into prefill groups of similar prompt length, so that padding stays
    under a quarter of the real tokens (plus a little slack) and a group fits the token budget."""
    groups: list[list[_Request]] = []
    group: list[_Request] = []
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


def _prompt_length(request: _Request) -> int:
    return len(request.prompt)

"""Continuous batching: one decode loop per model, on its own thread.

Requests wait in a bounded queue. Each loop turn admits waiting requests into free slots of a
SlotKVCache (prefilling each alone), then decodes one token for every active sequence in a
single batched forward. Per-sequence choices (sampling, stop strings, detokenising) belong to
`lmscope.model.generate.Sequence`; this module only schedules. Tokens flow back to the asyncio
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
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_seq_len = min(max_seq_len, model.cfg.n_ctx)
        self.eos_ids = default_eos_ids(model, tokenizer)
        self._pending: collections.deque[_Request] = collections.deque()
        self._rows: list[_Request] = []
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
                    while not self._stopping and not self._pending and not self._rows:
                        self._cv.wait()
                    if self._stopping:
                        return
                    admit: list[_Request] = []
                    while self._pending and len(self._rows) + len(admit) < self.max_batch:
                        admit.append(self._pending.popleft())
                    self.metrics.waiting.labels(model_name=self.name).set(len(self._pending))
                try:
                    for request in admit:
                        self._prefill(request)
                    self._drop_cancelled()
                    if self._rows:
                        self._decode_step()
                except Exception as err:  # never let one bad step kill the loop silently
                    self._fail_all(err)
                self.metrics.running.labels(model_name=self.name).set(len(self._rows))

    def _fail_all(self, err: Exception) -> None:
        for request in self._rows:
            request.emit(Event(finish_reason="error", text=f"engine error: {err}"))
        while self._slots.n_active:
            self._slots.remove(self._slots.n_active - 1)
        self._rows.clear()

    def _prefill(self, request: _Request) -> None:
        if request.cancelled:
            return
        prompt = torch.tensor([request.prompt], device=self.model.device)
        single = self.model.new_cache(1, len(request.prompt))
        logits = self.model(prompt, cache=single, last_only=not request.prompt_logprobs)[0]
        self.metrics.prompt_tokens.labels(model_name=self.name).inc(len(request.prompt))
        if request.prompt_logprobs:
            k = request.sequence.params.logprobs or 0
            logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
            scores: list[TokenLogprob | None] = [None]
            scores += [
                token_logprob(self.tokenizer, logprobs[i], tok, k)
                for i, tok in enumerate(request.prompt[1:])
            ]
            request.emit(Event(prompt_logprobs=scores, prompt_tokens=len(request.prompt)))
        if request.sequence.params.max_new_tokens == 0:
            self._finish(request, "length")
            return
        self._slots.insert(single)
        self._rows.append(request)
        self._accept(len(self._rows) - 1, logits[-1])

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

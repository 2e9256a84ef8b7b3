"""Continuous batching: one decode loop per model, on its own thread.

Requests wait in a bounded queue. Each loop turn admits waiting requests into free slots of a
SlotKVCache (prefilling each alone), then decodes one token for every active sequence in a
single batched forward. Tokens flow back to the asyncio side through per-request queues; a
request whose consumer went away (client disconnect, timeout) is dropped at the next turn.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lmscope.model.transformer import Transformer
from lmscope.serve.metrics import ServerMetrics


class QueueFullError(Exception):
    """The engine's waiting queue is full; the client should retry later."""


class ContextLengthError(ValueError):
    """Prompt plus requested tokens do not fit the served context."""


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None  # None: no logprobs; k: chosen token plus k alternatives
    prompt_logprobs: bool = False  # echo + logprobs: score the prompt tokens too
    ignore_eos: bool = False


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


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
    prompt: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    arrival: float
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)
    emitted_chars: int = 0
    cancelled: bool = False
    first_token_at: float | None = None
    last_token_at: float | None = None


def _top_logprobs(logprobs: torch.Tensor, chosen: int, k: int) -> TokenLogprob:
    top: list[tuple[int, float]] = []
    if k > 0:
        values, ids = logprobs.topk(k)
        top = [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    return TokenLogprob(chosen, float(logprobs[chosen]), top)


def sample_row(
    logits: torch.Tensor,
    params: SamplingParams,
    history: list[int],
    generator: torch.Generator | None,
) -> int:
    """Pick the next token from one row of logits [V] under the request's own settings."""
    if params.repetition_penalty != 1.0 and history:
        seen = torch.tensor(sorted(set(history)), device=logits.device)
        picked = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(
            picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty
        )
    if params.temperature == 0.0:
        return int(logits.argmax())
    logits = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= params.top_p  # keep the token crossing p
        logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


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
        self.stop_ids: set[int] = set()
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is not None:
            self.stop_ids.add(int(eos))
        if model.cfg.eos_token_id is not None:
            self.stop_ids.add(int(model.cfg.eos_token_id))
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
        self, prompt: list[int], params: SamplingParams
    ) -> AsyncGenerator[Event, None]:
        """Stream the events of one request; closing the iterator cancels the request."""
        self.check_fits(len(prompt), params.max_tokens)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        generator = None
        if params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        request = _Request(list(prompt), params, emit, time.perf_counter(), generator)
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
        want_prompt = request.params.prompt_logprobs
        logits = self.model(prompt, cache=single, last_only=not want_prompt)[0].float()
        self.metrics.prompt_tokens.labels(model_name=self.name).inc(len(request.prompt))
        prompt_scores: list[TokenLogprob | None] | None = None
        if want_prompt:
            k = request.params.logprobs or 0
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            prompt_scores = [None] + [
                _top_logprobs(logprobs[i], tok, k) for i, tok in enumerate(request.prompt[1:])
            ]
            request.emit(Event(prompt_logprobs=prompt_scores, prompt_tokens=len(request.prompt)))
        if request.params.max_tokens == 0:
            self._finish(request, "length")
            return
        self._slots.insert(single)
        self._rows.append(request)
        self._accept(len(self._rows) - 1, logits[-1])

    def _decode_step(self) -> None:
        tokens = torch.tensor([[r.generated[-1]] for r in self._rows], device=self.model.device)
        logits = self.model(tokens, cache=self._slots)[:, 0].float()
        for row in range(len(self._rows) - 1, -1, -1):
            self._accept(row, logits[row])

    def _accept(self, row: int, logits: torch.Tensor) -> None:
        """Sample the next token of `row`, emit it, and retire the row if it is done."""
        request = self._rows[row]
        params = request.params
        token = sample_row(logits, params, request.prompt + request.generated, request.generator)
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
        logprob = None
        if params.logprobs is not None:
            logprob = _top_logprobs(torch.log_softmax(logits, -1), token, params.logprobs)
        finish = None
        if token in self.stop_ids and not params.ignore_eos:
            finish = "stop"
        else:
            request.generated.append(token)
        if (finish is None and len(request.generated) >= params.max_tokens) or (
            finish is None and len(request.prompt) + len(request.generated) >= self.max_seq_len
        ):
            finish = "length"
        text, stopped = self._new_text(request, final=finish is not None)
        if stopped:
            finish = "stop"
        request.emit(
            Event(
                text=text,
                token_id=token,
                logprob=logprob,
                prompt_tokens=len(request.prompt),
                completion_tokens=len(request.generated),
            )
        )
        if finish is not None:
            self._retire(row, finish)

    def _new_text(self, request: _Request, *, final: bool) -> tuple[str, bool]:
        """Text not yet emitted; holds back a possible stop-string prefix or a split character."""
        text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        for stop in request.params.stop:
            at = text.find(stop)
            if at != -1:
                out = text[request.emitted_chars : at]
                request.emitted_chars = max(request.emitted_chars, at)
                return out, True
        end = len(text)
        if not final:
            if text.endswith("\ufffd"):
                end -= 1
            hold = max((len(s) - 1 for s in request.params.stop), default=0)
            end = max(request.emitted_chars, end - hold)
        out = text[request.emitted_chars : end]
        request.emitted_chars = max(request.emitted_chars, end)
        return out, False

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
                completion_tokens=len(request.generated),
            )
        )
        self.metrics.request_success.labels(model_name=self.name, finished_reason=reason).inc()
        self.metrics.e2e.labels(model_name=self.name).observe(time.perf_counter() - request.arrival)

    def _drop_cancelled(self) -> None:
        for row in range(len(self._rows) - 1, -1, -1):
            if self._rows[row].cancelled:
                self._retire(row, "abort")


def safe_float(value: float) -> float | None:
    """JSON cannot carry -inf; OpenAI clients expect a very negative number instead."""
    if math.isfinite(value):
        return value
    return -9999.0 if value < 0 else None

"""The server's engine: the one Scheduler on its own thread, with an asyncio face.

Requests wait in a bounded queue. Each loop turn moves waiting requests into the scheduler's
free slots and runs one scheduler step; the step's events flow back to the asyncio side through
per-request queues. A request whose consumer went away (client disconnect, timeout) is dropped at
the next turn. An exception inside a step ends the requests it touched with an Event whose
finish_reason is "error" and whose `error` holds the exception; the loop keeps running.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from lmscope.engine.errors import ContextLengthError, QueueFullError
from lmscope.engine.observer import EngineObserver, NullObserver, RequestMonitor
from lmscope.engine.outputs import Event
from lmscope.engine.sampling import SamplingParams
from lmscope.engine.scheduler import PREFILL_CHUNK, Output, Request, Scheduler
from lmscope.engine.sequence import Sequence
from lmscope.model.transformer import Transformer

__all__ = ["AsyncEngine", "ContextLengthError", "Engine", "Event", "QueueFullError"]


@dataclass(eq=False)
class _ServedRequest(Request):
    emit: Callable[[Event], None] = lambda event: None


class AsyncEngine:
    """The decode loop of one served model (`metrics`: any EngineObserver; `monitor`: a
    RequestMonitor that gets one record per finished request, e.g. for drift monitoring)."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Any,
        *,
        name: str,
        metrics: EngineObserver | None = None,
        max_batch: int = 8,
        max_queue: int = 64,
        max_seq_len: int = 2048,
        prefill_chunk: int = PREFILL_CHUNK,
        monitor: RequestMonitor | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.metrics: EngineObserver = metrics or NullObserver()
        self.max_queue = max_queue
        self.scheduler = Scheduler(
            model,
            tokenizer,
            max_batch=max_batch,
            max_seq_len=max_seq_len,
            prefill_chunk=prefill_chunk,
            name=name,
            observer=self.metrics,
            monitor=monitor,
        )
        self.scheduler.reserve()
        self.max_seq_len = self.scheduler.max_seq_len
        self._pending: collections.deque[_ServedRequest] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

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
    def max_batch(self) -> int:
        return self.scheduler.max_batch

    @property
    def prefill_chunk(self) -> int:
        return self.scheduler.prefill_chunk

    @property
    def eos_ids(self) -> frozenset[int]:
        return self.scheduler.eos_ids

    @property
    def waiting(self) -> int:
        return len(self._pending) + self.scheduler.waiting

    @property
    def running(self) -> int:
        return self.scheduler.running

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
        sequence.attach(self.model, self.tokenizer, self.scheduler.eos_ids, self.max_seq_len)
        request = _ServedRequest(sequence, prompt_logprobs=prompt_logprobs, emit=emit)
        with self._cv:
            if len(self._pending) >= self.max_queue:
                self.metrics.on_rejected(self.name)
                raise QueueFullError(f"{self.name}: {len(self._pending)} requests already waiting")
            self._pending.append(request)
            self.metrics.on_waiting(self.name, len(self._pending))
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
        scheduler = self.scheduler
        while True:
            with self._cv:
                while not self._stopping and not self._pending and not scheduler.has_work():
                    self._cv.wait()
                if self._stopping:
                    return
                for _ in range(min(scheduler.free, len(self._pending))):
                    scheduler.add(self._pending.popleft())
                self.metrics.on_waiting(self.name, len(self._pending))
            try:
                outputs = scheduler.step()
            except Exception as err:  # never let one bad step kill the loop silently
                outputs = scheduler.fail_all(err)
            self._deliver(outputs)
            self.metrics.on_running(self.name, scheduler.busy)

    def _deliver(self, outputs: list[Output]) -> None:
        for request, event in outputs:
            if isinstance(request, _ServedRequest):
                request.emit(event)


Engine = AsyncEngine  # the name the server has always used

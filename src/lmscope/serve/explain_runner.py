"""How explanations run: on a few dedicated threads, stopped when nobody waits for them.

Explanations run on a dedicated pool of `workers` threads, entered through an asyncio
semaphore: a request waiting for its turn waits on the event loop and holds no thread, so queued
explanations cannot starve the thread pool that tokenizing and the rest of the server share. A
running explanation gets a `should_stop` callable that turns True when its client disconnects or
its time is up; the explain library checks it between batches and raises ExplanationCancelled,
answered 499 (client gone) or 408 (timed out).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Request

from lmscope.explain.errors import ExplainInputError, ExplanationCancelled
from lmscope.serve.errors import APIError

DISCONNECT_POLL_S = 0.1

T = TypeVar("T")
ShouldStop = Callable[[], bool]
Work = Callable[[ShouldStop], T]


async def _disconnected(request: Request) -> None:
    """Return once the client has gone."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


class ExplainRunner:
    """A few worker threads for explanations, and the slots that lead to them."""

    def __init__(self, workers: int) -> None:
        workers = max(1, workers)
        self._slots = asyncio.Semaphore(workers)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="lmscope-explain")
        self.waiting = 0  # requests waiting for a slot (on the event loop, holding no thread)

    async def run(self, request: Request, timeout: float, work: Work[T]) -> T:
        """`work(should_stop)` on a worker once a slot is free, within `timeout` seconds of now
        (waiting included)."""
        deadline = time.monotonic() + timeout
        gone = threading.Event()
        watcher = asyncio.ensure_future(_disconnected(request))
        watcher.add_done_callback(lambda _: gone.set())
        try:
            await self._acquire(watcher, deadline)
            try:

                def should_stop() -> bool:
                    return gone.is_set() or time.monotonic() >= deadline

                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, work, should_stop)
            except ExplanationCancelled:
                if gone.is_set():
                    raise APIError(499, "client closed the request") from None
                raise APIError(
                    408, f"the explanation timed out after {timeout:g} s", code="timeout"
                ) from None
            except ExplainInputError as err:  # fields are checked first; this is a last resort
                raise APIError(400, str(err), code="invalid_value") from None
            finally:
                self._slots.release()
        finally:
            watcher.cancel()

    async def _acquire(self, watcher: asyncio.Future[None], deadline: float) -> None:
        """Wait on the event loop for a slot: 429 at the deadline, 499 if the client leaves
        first."""
        acquire: asyncio.Future[Any] = asyncio.ensure_future(self._slots.acquire())
        remaining = max(0.0, deadline - time.monotonic())
        waiting: set[asyncio.Future[Any]] = {acquire, watcher}
        self.waiting += 1
        try:
            await asyncio.wait(waiting, timeout=remaining, return_when="FIRST_COMPLETED")
        finally:
            self.waiting -= 1
        if acquire.done():
            return
        acquire.cancel()  # a cancelled Semaphore.acquire never holds the slot
        if watcher.done():
            raise APIError(499, "client closed the request")
        raise APIError(429, "explanations are busy; retry shortly", headers={"Retry-After": "2"})

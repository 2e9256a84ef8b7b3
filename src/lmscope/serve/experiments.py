"""Online A/B tests on the server: who gets which version, what each answer was, and shadow
answers. The statistics live in `lmscope.evaluate.abtest`; the store in `serve.feedback`.

Every answered completion or chat request that went through an alias route is recorded when its
access-log line is written (id, alias, version, a hash of the user, latency, tokens, error), so
feedback can name it. A shadow version (`--shadow ALIAS=ID`) gets the same prompt in the
background; its answer is recorded beside the real one and never returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from lmscope.serve.feedback import FeedbackStore, ResponseRecord, open_store
from lmscope.serve.routing import RoutingError

log = logging.getLogger("lmscope.serve")
USER_HEADER = "x-lmscope-user"


def parse_shadows(texts: list[str], routes: dict[str, Any], known: set[str]) -> dict[str, str]:
    """`ALIAS=ID` (or a bare ID for every alias): which version shadows which experiment."""
    shadows: dict[str, str] = {}
    for text in texts:
        alias, eq, model_id = (part.strip() for part in text.rpartition("="))
        if model_id not in known:
            raise RoutingError(
                f"--shadow {text!r}: unknown model id {model_id!r}; served ids: "
                + ", ".join(sorted(known))
            )
        targets = [alias] if eq else list(routes)
        for target in targets:
            if target not in routes:
                raise RoutingError(f"--shadow {text!r}: {target!r} is not a --route alias")
            shadows[target] = model_id
    return shadows


def user_hash(user: str | None) -> str | None:
    """Users are stored as a salted-free short hash: enough to count them, not to name them."""
    return None if not user else hashlib.sha256(user.encode()).hexdigest()[:16]


@dataclass
class Experiments:
    store: FeedbackStore
    shadows: dict[str, str] = field(default_factory=dict)
    _pending: set[asyncio.Task[Any]] = field(default_factory=set)

    @classmethod
    def open(cls, url: str, routes: dict[str, Any], shadows: dict[str, str]) -> Experiments:
        store = open_store(url)
        for alias, route in routes.items():
            store.start_experiment(alias, dict(route.targets))
        return cls(store, shadows)

    async def record(self, record: ResponseRecord) -> None:
        """Store one answered request (off the event loop; committed when this returns)."""
        await asyncio.to_thread(self.store.record_response, record)

    def complete_later(
        self, response_id: str, latency_s: float, tokens_in: int, tokens_out: int, status: int
    ) -> None:
        """Fill in the outcome of a recorded response without holding up the request."""
        error = None if status < 400 else f"HTTP {status}"
        work = asyncio.to_thread(
            self.store.complete_response, response_id, latency_s, tokens_in, tokens_out, error
        )
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                json.dumps({"event": "experiment_record_failed", "error": str(task.exception())})
            )

    def shadow(self, alias: str | None, answered_id: str, run: Any) -> None:
        """Run `run(shadow_model_id)` (a coroutine giving (text, prompt, completion tokens)) in
        the background when the alias has a shadow, and record its answer."""
        if alias is None or alias not in self.shadows:
            return
        model_id = self.shadows[alias]

        async def go() -> None:
            start = time.perf_counter()
            error = None
            text, prompt_tokens, completion_tokens = "", 0, 0
            try:
                text, prompt_tokens, completion_tokens = await run(model_id)
            except Exception as err:  # a shadow's failure must never reach the user
                error = type(err).__name__
            latency = time.perf_counter() - start
            log.info(json.dumps({"event": "shadow", "alias": alias, "model": model_id,
                                 "shadow_of": answered_id, "latency_s": round(latency, 4),
                                 "tokens_out": completion_tokens, "error": error,
                                 "text": text[:500]}))  # fmt: skip
            await self.record(
                ResponseRecord(
                    f"shadow-{answered_id}", alias, model_id, None, latency, prompt_tokens,
                    completion_tokens, error, shadow_of=answered_id,
                )
            )  # fmt: skip

        task = asyncio.ensure_future(go())
        self._pending.add(task)
        task.add_done_callback(self._done)

    async def drain(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def close(self) -> None:
        self.store.close()

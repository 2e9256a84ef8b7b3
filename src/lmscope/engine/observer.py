"""What the engine reports while it works, for whoever wants to count it (the server's
Prometheus metrics implement this protocol); the default observer ignores everything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["EngineObserver", "NullObserver", "RequestMonitor", "RequestRecord"]


class EngineObserver(Protocol):
    """Callbacks from the engine, all labelled with the served model's name. They run on the
    engine's thread (or the caller's, for `on_waiting`/`on_rejected`), so keep them cheap."""

    def on_waiting(self, model: str, waiting: int) -> None: ...

    def on_running(self, model: str, running: int) -> None: ...

    def on_rejected(self, model: str) -> None: ...

    def on_prompt_tokens(self, model: str, count: int) -> None: ...

    def on_token(self, model: str, ttft: float | None, inter_token: float | None) -> None:
        """One generated token; ttft on a request's first token, inter_token on later ones."""

    def on_finished(self, model: str, reason: str, e2e: float) -> None: ...


class NullObserver:
    """Ignores every report (the in-process API's observer)."""

    def on_waiting(self, model: str, waiting: int) -> None:
        pass

    def on_running(self, model: str, running: int) -> None:
        pass

    def on_rejected(self, model: str) -> None:
        pass

    def on_prompt_tokens(self, model: str, count: int) -> None:
        pass

    def on_token(self, model: str, ttft: float | None, inter_token: float | None) -> None:
        pass

    def on_finished(self, model: str, reason: str, e2e: float) -> None:
        pass


@dataclass(frozen=True)
class RequestRecord:
    """What a finished request looked like, for drift monitoring.

    prompt_logprob: the model's mean log-likelihood per prompt token (natural log), from the
    prefill's own logits; None for a one-token prompt (nothing is predicted)."""

    prompt_ids: list[int]
    prompt_logprob: float | None
    completion_tokens: int
    finish_reason: str


class RequestMonitor(Protocol):
    """Called on the engine's thread once per finished request. Giving a scheduler a monitor
    makes its prefill keep every prompt position's logits (to score the prompt), so only pass
    one when something reads the records."""

    def on_request(self, model: str, record: RequestRecord) -> None: ...

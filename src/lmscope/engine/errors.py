"""The engine's errors: user mistakes (GenerationError and its kinds) and a full queue."""

from __future__ import annotations

__all__ = ["ContextLengthError", "GenerationError", "PromptTooLongError", "QueueFullError"]


class GenerationError(ValueError):
    """A generation request that cannot be served as asked (a user error, not a bug)."""


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


class ContextLengthError(ValueError):
    """Prompt plus requested tokens do not fit the served context."""


class QueueFullError(Exception):
    """The engine's waiting queue is full; the client should retry later."""

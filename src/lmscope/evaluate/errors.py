"""The one error type of `lmscope.evaluate`: a user mistake in a task, its data or the models."""

from __future__ import annotations


class EvalError(ValueError):
    """A task file, its data or a comparison that cannot be evaluated; the message says why."""

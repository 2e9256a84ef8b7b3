"""Errors of the explainers: bad input (ValueErrors whose message says what to do), a model
they cannot read, and cancellation."""

from __future__ import annotations


class ExplainInputError(ValueError):
    """Input that the explainers cannot work with (the message says how to fix it)."""


class EmptyPromptError(ExplainInputError):
    pass


class TargetOutOfRangeError(ExplainInputError):
    pass


class ThresholdError(ExplainInputError):
    pass


class PromptTooLongError(ExplainInputError):
    pass


def check_position(position: int, n_tokens: int, what: str = "target") -> int:
    """Resolve a (possibly negative) token position; raise TargetOutOfRangeError if outside."""
    if isinstance(position, bool) or not isinstance(position, int):
        raise TargetOutOfRangeError(f"{what} must be an integer token position, got {position!r}")
    if not -n_tokens <= position < n_tokens:
        raise TargetOutOfRangeError(
            f"{what} position {position} is out of range for a prompt of {n_tokens} tokens; "
            f"use 0..{n_tokens - 1} (or -1 for the last token)"
        )
    return position % n_tokens


def check_tau(tau: float) -> float:
    try:
        value = float(tau)
    except (TypeError, ValueError):
        raise ThresholdError(f"tau must be a number in [0, 1], got {tau!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ThresholdError(
            f"tau must be in [0, 1] (it is a share of a node's total contribution), got {tau}; "
            "try 0.04"
        )
    return value


def check_tokens(n_tokens: int, n_ctx: int) -> None:
    if n_tokens == 0:
        raise EmptyPromptError("the prompt is empty (it has no tokens); give some text to explain")
    if n_tokens > n_ctx:
        raise PromptTooLongError(
            f"the prompt has {n_tokens} tokens but the model's context window is {n_ctx}; "
            f"shorten the prompt to at most {n_ctx} tokens"
        )


class ExplanationCancelled(RuntimeError):
    """The caller's `should_stop` asked an explanation to stop (a client left or timed out)."""


class UnsupportedModelError(TypeError):
    """A model object the explainers cannot read (e.g. a Hugging Face model not yet converted)."""


def check_model(model: object, expected: type) -> None:
    """Raise UnsupportedModelError unless `model` is an instance of `expected` (the canonical
    Transformer; passed in so that this module imports nothing from the model)."""
    if isinstance(model, expected):
        return
    kind = type(model)
    if any(c.__module__.split(".")[0] == "transformers" for c in kind.__mro__):
        raise UnsupportedModelError(
            f"explain() was given a Hugging Face {kind.__name__}; convert it first with "
            "lmscope.zoo.hf.from_hf(model) (or load a checkpoint directory with "
            "lmscope.zoo.registry.load(path)) and explain the result"
        )
    raise UnsupportedModelError(
        f"explain() needs an lmscope Transformer or a loaded model (lmscope.zoo.registry.load), "
        f"got {kind.__module__}.{kind.__name__}"
    )

"""What every subcommand shares: turning user mistakes into one clear line, not a traceback.

Only lmscope's typed user errors (and a missing file) are user mistakes; any other exception,
a plain KeyError or ValueError included, is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

P = ParamSpec("P")
R = TypeVar("R")

# The --device option of every command that runs a model (checked by zoo.registry.check_device).
DEVICE_OPTION = typer.Option("cpu", "--device", help="cpu or cuda (cuda:N) when a GPU is present.")


class UsageError(ValueError):
    """A command-line option or argument that cannot be used as given."""


# (module, class) of every user-error family; imported only when an error needs classifying, so
# that `lmscope --help` does not import torch.
USER_ERROR_CLASSES = (
    ("lmscope.model.config", "ConfigError"),
    ("lmscope.engine.errors", "GenerationError"),
    ("lmscope.engine.errors", "ContextLengthError"),
    ("lmscope.engine.constraints", "ConstraintError"),
    ("lmscope.zoo.errors", "ZooError"),
    ("lmscope.zoo.gguf", "GGUFError"),
    ("lmscope.zoo.default", "DefaultModelError"),
    ("lmscope.zoo.registry", "UnknownModelError"),
    ("lmscope.explain.errors", "ExplainInputError"),
    ("lmscope.train.errors", "TrainError"),
    ("lmscope.data.errors", "DataError"),
    ("lmscope.evaluate.errors", "EvalError"),
    ("lmscope.serve.routing", "RoutingError"),
    ("lmscope.serve.feedback", "FeedbackStoreError"),
    ("lmscope.tune.errors", "TuneError"),
    ("lmscope.document.errors", "DocError"),
)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes reported as `error: ...` (those whose module imports)."""
    found: list[type[BaseException]] = [UsageError, FileNotFoundError]
    for module_name, class_name in USER_ERROR_CLASSES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # an area not installed or mid-move: its errors cannot occur
            continue
        cls = getattr(module, class_name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, user_error_types())


def fail(message: object) -> typer.Exit:
    """Print `error: message` and give the exit (code 2) to raise."""
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code=2)


def user_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Report lmscope's user errors as `error: ...` with exit code 2; let bugs raise."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except Exception as err:
            if not is_user_error(err):
                raise
            raise fail(err) from None

    return wrapper

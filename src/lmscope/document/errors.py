"""Errors of `lmscope doc`: inputs it cannot document and writers it cannot reach."""

from __future__ import annotations


class DocError(ValueError):
    """A user mistake: a file that is not a model, a corrupt graph, an unreachable writer."""


class MissingExtraError(DocError):
    """An optional package a foreign format needs is not installed."""

    def __init__(self, package: str, what: str) -> None:
        super().__init__(
            f"{what} needs the optional package {package!r}: run `pip install {package}` "
            f"(or `pip install 'lmscope[doc]'`)"
        )


class WriterError(DocError):
    """The prose writer could not be reached or answered nothing usable."""
